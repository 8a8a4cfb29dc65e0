//! The contract tests of eth-input, grout's way: each of the stage's next stages and
//! drop reasons, checked on crafted frames run through the stage alone.
use crate::ip4::L3;
use crate::pipeline::stage::{run_alone, Ctx, Features};
use crate::pipeline::{DropReason, Meta, Next, StageId, WorkerCounters};
use crate::port::{PortEntry, PortMap};
use crate::services::ServiceTable;
use crate::wire::ipv4;
use podpath_proto::{EndpointSpec, NodeSpec, ServiceSpec};

const POD_A: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0, 2];
const POD_B: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0, 3];

/// Ethernet + IPv4 (header checksum filled) from POD_A's MAC, carrying `l4`.
fn ip4(dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    crate::pipeline::fixture::ip4(dst_mac, POD_A, src, dst, proto, 0, l4)
}

fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 0x50;
    t[13] = 0x02; // SYN
    t
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    crate::pipeline::fixture::udp(sport, dport, payload)
}

/// Refills the IPv4 header checksum after an edit.
fn refill(mut f: Vec<u8>) -> Vec<u8> {
    ipv4::Packet::new_unchecked(&mut f[14..]).fill_checksum();
    f
}

fn on(port: u16) -> Meta {
    Meta {
        in_port: port,
        ..Meta::default()
    }
}

fn node() -> NodeSpec {
    crate::pipeline::fixture::node_spec()
}

#[test]
fn eth_input_sends_each_kind_of_frame_to_its_declared_next() {
    let l3 = crate::pipeline::fixture::l3(true);
    let router = l3.node.as_ref().unwrap().router_mac.0;
    let ports = crate::pipeline::fixture::ports(2);
    let (services, counters) = (ServiceTable::default(), WorkerCounters::default());
    let mut feat = Features::for_tests();
    let cx = crate::pipeline::fixture::ctx(&l3, &ports, &services, &counters);
    let (pod, node_ip) = ([10, 244, 0, 2], [192, 168, 77, 11]);
    let arp = crate::ip4::arp::request(crate::wire::MacAddr(POD_A), 0x0af4_0002, 0x0af4_0001);
    let udp_to = |dst: [u8; 4]| ip4(router, pod, dst, 17, &udp(5000, 53, b"hello"));
    let tcp_to = |dst_mac: [u8; 6], dst: [u8; 4]| ip4(dst_mac, pod, dst, 6, &tcp(41000, 80));
    let uplink = |src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]| {
        (ip4([2, 0, 0, 0, 0, 0], src, dst, proto, l4), on(0))
    };
    let ipv6 = {
        let mut v = vec![0x33, 0x33, 0, 0, 0, 1, 0x0a, 0x58, 0, 0, 0, 2, 0x86, 0xdd];
        v.extend_from_slice(&[0x60; 40]);
        v
    };
    // Malformed frames, each as eth-input's own tests make them.
    let vlan_cut = {
        let mut v = udp_to([8, 8, 8, 8])[..12].to_vec();
        v.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]); // a tag, then nothing
        v
    };
    let mut arp_hw6 = arp.to_vec();
    arp_hw6[15] = 6; // hardware type 6
    let mut version3 = udp_to([8, 8, 8, 8]);
    version3[14] = 0x35;
    let mut bad_sum = udp_to([8, 8, 8, 8]);
    bad_sum[24] ^= 0xff;
    // A 24-byte header whose option claims 9 bytes.
    let mut bad_options = udp_to([8, 8, 8, 8]);
    bad_options.splice(34..34, [148u8, 9, 0, 0]);
    bad_options[14] = 0x46;
    let total = u16::try_from(bad_options.len() - 14).unwrap();
    bad_options[16..18].copy_from_slice(&total.to_be_bytes());
    let mut offset3 = tcp(41000, 80);
    offset3[12] = 0x30;
    let routed = |proto: u8, l4: &[u8]| (ip4(router, pod, [8, 8, 8, 8], proto, l4), on(2));
    let (mut udp_long, mut udp_short) = (udp(5000, 53, b"hello"), udp(5000, 53, b"hello"));
    udp_long[4..6].copy_from_slice(&400u16.to_be_bytes());
    udp_short[4..6].copy_from_slice(&4u16.to_be_bytes());
    let got = run_alone(
        StageId::EthInput,
        &cx,
        &mut feat,
        vec![
            // Pod port: ARP, routed, into the Service range, to another pod.
            (arp.to_vec(), on(2)),
            (udp_to([8, 8, 8, 8]), on(2)),
            (tcp_to(router, [10, 96, 0, 10]), on(2)),
            (tcp_to(POD_B, [10, 244, 0, 3]), on(2)),
            // Uplink: VXLAN to the node, other traffic to the node, to someone else.
            uplink([192, 168, 77, 12], node_ip, 17, &udp(50000, 4789, &[0; 8])),
            uplink([203, 0, 113, 10], node_ip, 6, &tcp(443, 32768)),
            uplink([203, 0, 113, 10], [192, 168, 77, 50], 6, &tcp(443, 80)),
            // Host port: IPv6.
            (ipv6.clone(), on(1)),
            // Malformed, on the pod port.
            (udp_to([8, 8, 8, 8])[..10].to_vec(), on(2)),
            (vlan_cut, on(2)),
            (arp[..30].to_vec(), on(2)),
            (arp_hw6, on(2)),
            (udp_to([8, 8, 8, 8])[..30].to_vec(), on(2)),
            (refill(version3), on(2)),
            (bad_sum, on(2)),
            (refill(bad_options), on(2)),
            routed(6, &tcp(41000, 80)[..10]), // half a TCP header
            routed(6, &offset3),
            routed(17, &udp_long),
            routed(17, &udp_short),
            routed(1, &[8, 0, 0, 0]), // half an ICMP header
        ],
    );
    assert_eq!(
        got,
        [
            Next::Stage(StageId::Arp),
            Next::Stage(StageId::Ip4Lookup),
            Next::Stage(StageId::Lb),
            Next::Stage(StageId::Bridge),
            Next::Stage(StageId::VxlanDecap),
            Next::Stage(StageId::SnatReply),
            Next::Drop(DropReason::UplinkNotForUs),
            Next::Drop(DropReason::HostNotIp4),
            Next::Drop(DropReason::EthTruncated),
            Next::Drop(DropReason::VlanMalformed),
            Next::Drop(DropReason::ArpTruncated),
            Next::Drop(DropReason::ArpMalformed),
            Next::Drop(DropReason::Ip4Truncated),
            Next::Drop(DropReason::Ip4Malformed),
            Next::Drop(DropReason::Ip4BadChecksum),
            Next::Drop(DropReason::Ip4BadOptions),
            Next::Drop(DropReason::TcpTruncated),
            Next::Drop(DropReason::TcpBadOffset),
            Next::Drop(DropReason::UdpTruncated),
            Next::Drop(DropReason::UdpBadLength),
            Next::Drop(DropReason::IcmpTruncated),
        ]
    );

    // With Services: an external IP routed to the node from the uplink, and an
    // endpoint's reply bridged to a client on its own subnet, both pass lb.
    let web = ServiceSpec {
        external_ips: vec!["198.51.100.50".into()],
        ..ServiceSpec::new(
            "default/web",
            "10.96.0.10",
            80,
            "tcp",
            vec![EndpointSpec::ready("10.244.0.3", 8080)],
        )
    };
    let services = ServiceTable::build(&[web], None).unwrap();
    let reply = ip4(POD_A, [10, 244, 0, 3], pod, 6, &tcp(8080, 41000));
    let with = Ctx {
        services: &services,
        ..cx
    };
    let got = run_alone(
        StageId::EthInput,
        &with,
        &mut feat,
        vec![
            uplink([203, 0, 113, 10], [198, 51, 100, 50], 6, &tcp(6000, 80)),
            (reply, on(3)),
        ],
    );
    assert_eq!(got, [Next::Stage(StageId::Lb), Next::Stage(StageId::Lb)]);

    // Without a node identity the dataplane is a plain bridge.
    let none = L3::empty();
    let bare = Ctx { l3: &none, ..cx };
    let got = run_alone(
        StageId::EthInput,
        &bare,
        &mut feat,
        vec![(udp_to([8, 8, 8, 8]), on(2)), (ipv6, on(1))],
    );
    assert_eq!(
        got,
        [Next::Stage(StageId::Bridge), Next::Stage(StageId::Bridge)]
    );
    // Not produced here: eth-chained (a MemFrame is one contiguous buffer).
}

#[test]
fn a_chained_buffer_is_dropped_by_name() {
    use crate::pipeline::stage::run_alone_frames;
    use crate::pipeline::Frame;
    let l3 = L3::build(&node(), &[]).unwrap();
    let ports = PortMap::build(
        vec![PortEntry {
            id: 2,
            name: "pod-a".into(),
            bd: Some(1),
            mac: crate::wire::MacAddr([2, 0, 0, 0, 0, 2]),
            rx_queues: 1,
            mtu: 1500,
        }],
        1,
    );
    let (services, counters) = (ServiceTable::default(), WorkerCounters::default());
    let cx = crate::pipeline::fixture::ctx(&l3, &ports, &services, &counters);
    let frame = ip4(
        POD_B,
        [10, 244, 0, 2],
        [10, 244, 0, 3],
        17,
        &udp(5000, 53, b"x"),
    );
    let mut chained = crate::port::MemFrame::chained(&frame);
    *chained.meta_mut() = on(2);
    let mut whole = crate::port::MemFrame::from_bytes(&frame);
    *whole.meta_mut() = on(2);
    let got = run_alone_frames(
        StageId::EthInput,
        &cx,
        &mut Features::for_tests(),
        vec![chained, whole],
    );
    assert_eq!(
        got,
        [
            Next::Drop(DropReason::EthChained),
            Next::Stage(StageId::Bridge)
        ]
    );
}

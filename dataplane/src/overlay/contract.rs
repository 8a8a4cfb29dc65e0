//! The contract tests of vxlan-decap and vxlan-encap, grout's way: each stage's next
//! stages and drop reasons, checked on crafted frames run through the stage alone.
use crate::ip4::L3;
use crate::pipeline::stage::{run_alone, Ctx, Features};
use crate::pipeline::{DropReason, Meta, Next, StageId, WorkerCounters};
use crate::port::PortMap;
use crate::services::ServiceTable;
use podpath_proto::{EndpointSpec, ServiceSpec};

const UPLINK_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0];
const VTEP_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01];
const NODE: [u8; 4] = [192, 168, 77, 11];
const NODE2: [u8; 4] = [192, 168, 77, 12];

/// Ethernet + IPv4 (header checksum filled) carrying `l4`; `frag` is the flags and
/// fragment offset field (0x4000: DF, 0x2000: MF).
fn ip4(dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], frag: u16, l4: &[u8]) -> Vec<u8> {
    crate::pipeline::fixture::ip4(dst_mac, VTEP_MAC, src, dst, 17, frag, l4)
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    crate::pipeline::fixture::udp(sport, dport, payload)
}

/// An inner frame: UDP from `src` to `dst`.
fn inner(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    ip4([2, 0, 0, 0, 0, 1], src, dst, 0, &udp(5000, 53, b"hello"))
}

/// VXLAN from `outer_src` to the node: `flags` (0x08: the I flag), `vni`, `inner`.
fn vxlan(outer_src: [u8; 4], frag: u16, flags: u8, vni: u32, inner: &[u8]) -> (Vec<u8>, Meta) {
    let mut v = vec![flags, 0, 0, 0];
    v.extend_from_slice(&(vni << 8).to_be_bytes());
    v.extend_from_slice(inner);
    let f = ip4(UPLINK_MAC, outer_src, NODE, frag, &udp(50000, 4789, &v));
    // As eth-input leaves it: UDP to the node's VXLAN port, on the uplink.
    let m = Meta {
        in_port: 0,
        l3: 14,
        l4: 34,
        ethertype: 0x0800,
        proto: 17,
        ..Meta::default()
    };
    (f, m)
}

/// Node 1 with node 2 as its remote; the uplink, the host port and 1 pod port(s).
fn setup() -> (L3, PortMap) {
    (
        crate::pipeline::fixture::l3(true),
        crate::pipeline::fixture::ports(1),
    )
}

#[test]
fn vxlan_decap_sends_each_kind_of_packet_to_its_declared_next() {
    let (l3, ports) = setup();
    // 10.244.1.5, a pod of node2, is a Service's endpoint: its replies pass lb.
    let services = ServiceTable::build(
        &[ServiceSpec::new(
            "default/web",
            "10.96.0.10",
            80,
            "tcp",
            vec![EndpointSpec::ready("10.244.1.5", 8080)],
        )],
        None,
    )
    .unwrap();
    let counters = WorkerCounters::default();
    let mut feat = Features::for_tests();
    let cx = crate::pipeline::fixture::ctx(&l3, &ports, &services, &counters);
    let (pod, remote_pod, endpoint) = ([10, 244, 0, 2], [10, 244, 1, 6], [10, 244, 1, 5]);
    let good = inner(remote_pod, pod);
    let ipv6 = {
        let mut v = vec![0x33, 0x33, 0, 0, 0, 1, 0x0a, 0x58, 0, 0, 0, 2, 0x86, 0xdd];
        v.extend_from_slice(&[0x60; 40]);
        v
    };
    let got = run_alone(
        StageId::VxlanDecap,
        &cx,
        &mut feat,
        vec![
            vxlan(NODE2, 0, 0x08, 1, &good), // node2's pod to ours
            vxlan(NODE2, 0, 0x08, 1, &inner(endpoint, pod)), // an endpoint's reply
            vxlan(NODE2, 0, 0x08, 2, &good), // another VNI
            vxlan(NODE2, 0, 0x00, 1, &good), // no I flag
            vxlan([192, 168, 77, 99], 0, 0x08, 1, &good), // no node of ours
            vxlan(NODE2, 0, 0x08, 1, &good[..10]), // inner cut short
            vxlan(NODE2, 0, 0x08, 1, &ipv6), // inner IPv6
            vxlan(NODE2, 0x2000, 0x08, 1, &good), // outer MF
            vxlan(NODE2, 0, 0x08, 1, &inner([10, 244, 5, 5], pod)), // not node2's pod
            vxlan(NODE2, 0, 0x08, 1, &inner(remote_pod, [10, 244, 1, 9])), // not ours
        ],
    );
    assert_eq!(
        got,
        [
            Next::Stage(StageId::Ip4Lookup),
            Next::Stage(StageId::Lb),
            Next::Drop(DropReason::VxlanWrongVni),
            Next::Drop(DropReason::VxlanBadHeader),
            Next::Drop(DropReason::VxlanUnknownVtep),
            Next::Drop(DropReason::VxlanInnerMalformed),
            Next::Drop(DropReason::VxlanInnerNotIp4),
            Next::Drop(DropReason::VxlanOuterFragment),
            Next::Drop(DropReason::VxlanInnerBadSource),
            Next::Drop(DropReason::VxlanInnerNotLocal),
        ]
    );
    let none = L3::empty();
    let cx = Ctx { l3: &none, ..cx };
    let got = run_alone(
        StageId::VxlanDecap,
        &cx,
        &mut feat,
        vec![vxlan(NODE2, 0, 0x08, 1, &good)],
    );
    assert_eq!(got, [Next::Drop(DropReason::Ip4NoNode)]);
}

#[test]
fn vxlan_encap_sends_each_kind_of_packet_to_its_declared_next() {
    let (l3, ports) = setup();
    let (services, counters) = (ServiceTable::default(), WorkerCounters::default());
    let mut feat = Features::for_tests();
    let cx = crate::pipeline::fixture::ctx(&l3, &ports, &services, &counters);
    // As ip4-lookup leaves a packet for node2's pod: IPv4 at 14, the remote named.
    let to_remote = |frag: u16, payload: usize, remote: u16| {
        let f = ip4(
            [2, 0, 0, 0, 0, 2],
            [10, 244, 0, 2],
            [10, 244, 1, 5],
            frag,
            &udp(5000, 53, &vec![0; payload]),
        );
        let m = Meta {
            in_port: 2,
            l3: 14,
            l4: 34,
            ethertype: 0x0800,
            proto: 17,
            remote,
            ..Meta::default()
        };
        (f, m)
    };
    // 1432 bytes of payload: an inner packet of 1460, 1510 with the outer headers.
    let got = run_alone(
        StageId::VxlanEncap,
        &cx,
        &mut feat,
        vec![
            to_remote(0, 100, 0),       // node2's VTEP not resolved yet: held, ARP
            to_remote(0x4000, 1432, 0), // too big for the uplink with DF
            to_remote(0, 1432, 0),      // too big, DF clear: split
            to_remote(0, 100, 7),       // no such remote node
        ],
    );
    assert_eq!(
        got,
        [
            Next::Resolve,
            Next::Stage(StageId::IcmpError),
            Next::Fragment,
            Next::Drop(DropReason::VxlanNoUplink),
        ]
    );
    // node2 answers ARP on the uplink (arp learns it), then the packet goes out.
    let mut reply =
        crate::ip4::arp::request(crate::wire::MacAddr(VTEP_MAC), 0xc0a8_4d0c, 0xc0a8_4d0b);
    reply[0..6].copy_from_slice(&UPLINK_MAC);
    reply[21] = 2; // reply
    reply[32..38].copy_from_slice(&UPLINK_MAC);
    let arp_meta = Meta {
        in_port: 0,
        l3: 14,
        ethertype: 0x0806,
        ..Meta::default()
    };
    let got = run_alone(
        StageId::Arp,
        &cx,
        &mut feat,
        vec![(reply.to_vec(), arp_meta)],
    );
    assert_eq!(got, [Next::Drop(DropReason::ArpReplyLearned)]);
    let got = run_alone(
        StageId::VxlanEncap,
        &cx,
        &mut feat,
        vec![to_remote(0, 100, 0)],
    );
    assert_eq!(got, [Next::Port(0)]);
    let none = L3::empty();
    let cx = Ctx { l3: &none, ..cx };
    let got = run_alone(
        StageId::VxlanEncap,
        &cx,
        &mut feat,
        vec![to_remote(0, 100, 0)],
    );
    assert_eq!(got, [Next::Drop(DropReason::Ip4NoNode)]);
    // Not produced here: vxlan-no-headroom (a MemFrame always has 128 bytes of
    // headroom and room for any frame eth-input accepts).
}

#[test]
fn vxlan_encap_without_headroom_drops_by_name() {
    use crate::pipeline::stage::run_alone_frames;
    use crate::pipeline::Frame;
    let (l3, ports) = setup();
    let (services, counters) = (ServiceTable::default(), WorkerCounters::default());
    let cx = crate::pipeline::fixture::ctx(&l3, &ports, &services, &counters);
    let frame = ip4(
        [2, 0, 0, 0, 0, 2],
        [10, 244, 0, 2],
        [10, 244, 1, 5],
        0,
        &udp(5000, 53, b"x"),
    );
    let meta = Meta {
        in_port: 2,
        l3: 14,
        l4: 34,
        ethertype: 0x0800,
        proto: 17,
        remote: 0,
        ..Meta::default()
    };
    // 49 bytes in front: one short of the outer headers; 50 is enough.
    let mut frames = Vec::new();
    for headroom in [49, 50] {
        let mut f = crate::port::MemFrame::with_room(&frame, headroom, 0);
        *f.meta_mut() = meta;
        frames.push(f);
    }
    let got = run_alone_frames(StageId::VxlanEncap, &cx, &mut Features::for_tests(), frames);
    assert_eq!(
        got,
        [Next::Drop(DropReason::VxlanNoHeadroom), Next::Resolve]
    );
}

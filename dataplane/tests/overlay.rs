//! The overlay stages on the memory backend: two node pipelines wired back to back
//! (node 1's uplink output is node 2's uplink input), crafted frames in, frames and
//! drop reasons out.
use std::sync::Arc;

use crossbeam::channel::bounded;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use podpath_dataplane::ip4::arp;
use podpath_dataplane::ip4::l3::gateway_mac;
use podpath_dataplane::ip4::L3;
use podpath_dataplane::pipeline::counters::get;
use podpath_dataplane::pipeline::{
    DropReason, Pipeline, PipelineConfig, PortIo, StageId, Tracer, WorkerCounters,
};
use podpath_dataplane::port::PortEntry;
use podpath_dataplane::port::PortMap;
use podpath_dataplane::port::{MemFrame, MemIo};
use podpath_dataplane::wire::MacAddr;
use podpath_proto::{validate, EndpointSpec, NodeSpec, RemoteSpec, ServiceSpec};
use proptest::prelude::*;

const UPLINK: u16 = 0;
const HOST: u16 = 1;
const POD_A: u16 = 2;
const POD_B: u16 = 3;
const HZ: u64 = 1_000_000_000;

fn ip(s: &str) -> u32 {
    validate::ipv4(s).unwrap()
}

fn uplink_mac(node: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0xee, node])
}

fn pod_mac(node: u8, pod: u8) -> [u8; 6] {
    [0x0a, 0x58, 10, 244, node - 1, pod]
}

/// Node `k` (1 or 2) with the other as its remote.
fn node(k: u8) -> (Pipeline<MemFrame>, MemIo) {
    node_with(k, |_| {})
}

/// `node`, with its pipeline configuration edited first.
fn node_with(k: u8, edit: impl FnOnce(&mut PipelineConfig)) -> (Pipeline<MemFrame>, MemIo) {
    let other = 3 - k;
    let spec = NodeSpec {
        node_ip: format!("192.168.77.{}", 10 + k),
        underlay_cidr: "192.168.77.0/24".into(),
        underlay_gateway: None,
        pod_cidr: format!("10.244.{}.0/24", k - 1),
        cluster_cidr: "10.244.0.0/16".into(),
        bridge: 1,
        uplink: "uplink".into(),
        host: Some("host".into()),
        vni: 1,
        vxlan_port: 4789,
        service_cidr: Some("10.96.0.0/12".into()),
    };
    let remote = RemoteSpec {
        name: format!("node{other}"),
        node_ip: format!("192.168.77.{}", 10 + other),
        vtep_mac: gateway_mac(ip(&format!("10.244.{}.1", other - 1))).to_string(),
        pod_cidr: format!("10.244.{}.0/24", other - 1),
    };
    let l3 = L3::build(&spec, &[remote]).unwrap();
    let port = |id: u16, name: &str, bd: Option<u16>, mac: MacAddr, mtu: u16| PortEntry {
        id,
        name: name.into(),
        bd,
        mac,
        rx_queues: 1,
        mtu,
    };
    let map = PortMap::build(
        vec![
            port(UPLINK, "uplink", None, uplink_mac(k), 1500),
            port(HOST, "host", None, MacAddr([2, 0, 0, 0, 0xff, k]), 1450),
            port(POD_A, "pod-a", Some(1), MacAddr([2, 0, 0, 0, 2, k]), 1450),
            port(POD_B, "pod-b", Some(1), MacAddr([2, 0, 0, 0, 3, k]), 1450),
        ],
        1,
    )
    .with_roles(Some("uplink"), Some("host"));
    let mut cfg = PipelineConfig {
        worker: 0,
        mac_capacity: 64,
        mac_ageing_ticks: 300 * HZ,
        tsc_hz: HZ,
        conntrack: Default::default(),
        nat_range: (32768, 60999),
        workers: 1,
    };
    edit(&mut cfg);
    let mut p = Pipeline::new(
        &cfg,
        Arc::new(map),
        Arc::new(WorkerCounters::default()),
        Tracer::new(0, None),
    );
    p.set_l3(Arc::new(l3));
    p.set_now(1);
    (p, MemIo::default())
}

fn rx(p: &mut Pipeline<MemFrame>, io: &mut MemIo, port: u16, frames: &[Vec<u8>]) {
    for f in frames {
        io.push_rx(port, f);
    }
    let mut buf = Vec::with_capacity(32);
    while io.rx_burst(port, 0, &mut buf, 32) > 0 {
        p.run(io, port, &mut buf);
    }
    p.flush(io);
}

fn drops(p: &Pipeline<MemFrame>, r: DropReason) -> u64 {
    p.counters.drops_for(r)
}

fn balanced(p: &Pipeline<MemFrame>) -> bool {
    let c = &p.counters;
    c.rx_total() + get(&c.replicated) == c.tx_total() + c.drops_total()
}

/// An ARP reply from (mac, ip) to (dst mac, dst ip).
/// Two workers of node 1 (NAT range split between them, hand-off rings wired both
/// ways), with a Service table when given.
fn two_workers(
    services: Option<Arc<podpath_dataplane::services::table::ServiceTable>>,
) -> (Pipeline<MemFrame>, MemIo, Pipeline<MemFrame>, MemIo) {
    let (base, _) = node(1);
    let mk = |w: u16| {
        let cfg = PipelineConfig {
            worker: w,
            mac_capacity: 64,
            mac_ageing_ticks: 300 * HZ,
            tsc_hz: HZ,
            conntrack: Default::default(),
            nat_range: (40000, 40999),
            workers: 2,
        };
        let mut p = Pipeline::new(
            &cfg,
            Arc::clone(&base.ports),
            Arc::new(WorkerCounters::default()),
            Tracer::new(w, None),
        );
        p.set_l3(Arc::clone(&base.l3));
        if let Some(t) = &services {
            p.set_services(Arc::clone(t));
        }
        p.set_now(HZ);
        p
    };
    let (mut w0, mut w1) = (mk(0), mk(1));
    let mut ends = podpath_dataplane::pipeline::handoff::mesh(2, 64).into_iter();
    w0.set_handoff(ends.next().unwrap());
    w1.set_handoff(ends.next().unwrap());
    (w0, MemIo::default(), w1, MemIo::default())
}

fn arp_reply(mac: MacAddr, ip_: u32, to_mac: MacAddr, to_ip: u32) -> Vec<u8> {
    let mut f = arp::request(mac, ip_, to_ip).to_vec();
    f[0..6].copy_from_slice(&to_mac.0);
    f[21] = 2; // reply
    f[32..38].copy_from_slice(&to_mac.0);
    f
}

fn icmp_echo(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, ttl)
        .icmpv4_echo_request(7, 1)
        .write(&mut v, &[0x55; 56])
        .unwrap();
    v
}

#[test]
fn pod_to_remote_pod_round_trip_through_vxlan() {
    let (mut n1, mut io1) = node(1);
    let (mut n2, mut io2) = node(2);
    let gw1 = gateway_mac(ip("10.244.0.1"));
    // Pod a on node 1 asks for its gateway; the dataplane answers with the gateway MAC.
    rx(
        &mut n1,
        &mut io1,
        POD_A,
        &[arp::request(MacAddr(pod_mac(1, 2)), ip("10.244.0.2"), ip("10.244.0.1")).to_vec()],
    );
    let reply = io1.take_tx(POD_A);
    assert_eq!(reply.len(), 1);
    assert_eq!(
        &reply[0][6..12],
        &gw1.0,
        "ARP answered from the gateway MAC"
    );
    assert_eq!(reply[0][21], 2);
    // Ping a pod on node 2: held while node 2's uplink MAC resolves.
    let ping = icmp_echo(pod_mac(1, 2), gw1.0, [10, 244, 0, 2], [10, 244, 1, 3], 64);
    rx(&mut n1, &mut io1, POD_A, &[ping]);
    let req = io1.take_tx(UPLINK);
    assert_eq!(req.len(), 1, "one ARP request for the remote node");
    assert_eq!(&req[0][38..42], &[192, 168, 77, 12]);
    resolve_node_2(&mut n1, &mut io1);
    let out = io1.take_tx(UPLINK);
    assert_eq!(out.len(), 1, "the held packet left once resolved");
    let v = &out[0];
    assert_eq!(v.len(), 98 + 50);
    // Outer headers.
    let s = SlicedPacket::from_ethernet(v).unwrap();
    let Some(etherparse::NetSlice::Ipv4(o)) = s.net.as_ref() else {
        panic!()
    };
    assert_eq!(o.header().source(), [192, 168, 77, 11]);
    assert_eq!(o.header().destination(), [192, 168, 77, 12]);
    assert!(o.header().dont_fragment());
    let Some(TransportSlice::Udp(u)) = s.transport.as_ref() else {
        panic!()
    };
    assert_eq!(u.destination_port(), 4789);
    assert!(u.source_port() >= 49152);
    assert_eq!(
        &v[42..50],
        &[0x08, 0, 0, 0, 0, 0, 1, 0],
        "VXLAN I flag, VNI 1"
    );
    assert_eq!(&v[..6], &uplink_mac(2).0);
    assert_eq!(
        &v[50..56],
        &gateway_mac(ip("10.244.1.1")).0,
        "inner to the remote VTEP"
    );
    assert_eq!(v[50 + 14 + 8], 63, "TTL decremented");
    // Node 2 decapsulates and delivers to its pod b (after resolving it).
    rx(&mut n2, &mut io2, UPLINK, std::slice::from_ref(v));
    let asks: Vec<Vec<u8>> = io2
        .take_tx(POD_A)
        .into_iter()
        .chain(io2.take_tx(POD_B))
        .collect();
    assert_eq!(asks.len(), 2, "ARP for the pod flooded to the pods");
    assert!(io2.take_tx(HOST).is_empty() && io2.take_tx(UPLINK).is_empty());
    let gw2 = gateway_mac(ip("10.244.1.1"));
    rx(
        &mut n2,
        &mut io2,
        POD_B,
        &[arp_reply(
            MacAddr(pod_mac(2, 3)),
            ip("10.244.1.3"),
            gw2,
            ip("10.244.1.1"),
        )],
    );
    let got = io2.take_tx(POD_B);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0][..6], &pod_mac(2, 3));
    assert_eq!(&got[0][6..12], &gw2.0);
    assert_eq!(
        &got[0][26..30],
        &[10, 244, 0, 2],
        "the receiver sees the sender's pod IP"
    );
    assert_eq!(got[0][22], 62, "one more hop");
    // Resolved now: the next ping is encapsulated at once, from the pre-built headers,
    // with the inner DSCP/ECN copied out and a valid outer checksum.
    let mut ping = icmp_echo(pod_mac(1, 2), gw1.0, [10, 244, 0, 2], [10, 244, 1, 3], 64);
    ping[15] = 0xb8; // DSCP EF
    let c = podpath_dataplane::wire::checksum::checksum(&{
        let mut h = ping[14..34].to_vec();
        h[10..12].copy_from_slice(&[0, 0]);
        h
    });
    ping[24..26].copy_from_slice(&c.to_be_bytes());
    rx(&mut n1, &mut io1, POD_A, &[ping]);
    let out = io1.take_tx(UPLINK);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0][15], 0xb8, "outer TOS copied from the inner packet");
    assert!(podpath_dataplane::wire::checksum::verify(&out[0][14..34]));
    assert_eq!(&out[0][16..18], &(98u16 + 50 - 14).to_be_bytes());
    assert_eq!(
        &out[0][38..40],
        &(98u16 + 50 - 34).to_be_bytes(),
        "UDP length"
    );
    assert!(balanced(&n1) && balanced(&n2));
}

#[test]
fn bad_vxlan_is_dropped_by_reason() {
    let (mut n1, mut io1) = node(1);
    let inner = icmp_echo(
        [2; 6],
        gateway_mac(ip("10.244.0.1")).0,
        [10, 244, 1, 3],
        [10, 244, 0, 2],
        64,
    );
    let vx = |src: [u8; 4], vni: u32, inner: &[u8]| {
        let mut payload = vec![0x08, 0, 0, 0];
        payload.extend_from_slice(&(vni << 8).to_be_bytes());
        payload.extend_from_slice(inner);
        let mut v = Vec::new();
        PacketBuilder::ethernet2(uplink_mac(2).0, uplink_mac(1).0)
            .ipv4(src, [192, 168, 77, 11], 64)
            .udp(50000, 4789)
            .write(&mut v, &payload)
            .unwrap();
        v
    };
    let spoofed = icmp_echo([2; 6], [2; 6], [10, 244, 7, 3], [10, 244, 0, 2], 64);
    let to_host = icmp_echo([2; 6], [2; 6], [10, 244, 1, 3], [192, 168, 77, 11], 64);
    rx(
        &mut n1,
        &mut io1,
        UPLINK,
        &[
            vx([192, 168, 77, 99], 1, &inner),
            vx([192, 168, 77, 12], 2, &inner),
            vx([192, 168, 77, 12], 1, &spoofed),
            vx([192, 168, 77, 12], 1, &to_host),
            vx([192, 168, 77, 12], 1, &inner[..20]),
        ],
    );
    assert_eq!(drops(&n1, DropReason::VxlanUnknownVtep), 1);
    assert_eq!(drops(&n1, DropReason::VxlanWrongVni), 1);
    assert_eq!(drops(&n1, DropReason::VxlanInnerBadSource), 1);
    assert_eq!(drops(&n1, DropReason::VxlanInnerNotLocal), 1);
    assert_eq!(drops(&n1, DropReason::VxlanInnerMalformed), 1);
    assert!(balanced(&n1));
}

#[test]
fn ttl_expiry_and_too_big_answer_with_icmp() {
    let (mut n1, mut io1) = node(1);
    let gw = gateway_mac(ip("10.244.0.1"));
    // The pod's MAC is learned from its ARP for the gateway.
    rx(
        &mut n1,
        &mut io1,
        POD_A,
        &[arp::request(MacAddr(pod_mac(1, 2)), ip("10.244.0.2"), ip("10.244.0.1")).to_vec()],
    );
    io1.take_tx(POD_A);
    rx(
        &mut n1,
        &mut io1,
        POD_A,
        &[icmp_echo(
            pod_mac(1, 2),
            gw.0,
            [10, 244, 0, 2],
            [10, 244, 1, 3],
            1,
        )],
    );
    let back = io1.take_tx(POD_A);
    assert_eq!(back.len(), 1, "time exceeded back to the pod");
    let e = &back[0];
    assert_eq!(&e[26..30], &[10, 244, 0, 1], "from the gateway");
    assert_eq!((e[34], e[35]), (11, 0));
    assert_eq!(
        &e[42 + 12..42 + 16],
        &[10, 244, 0, 2],
        "quotes the original header"
    );
    // 1500-byte packet with DF to a remote pod: fragmentation needed, MTU 1450.
    let mut big = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1, 2), gw.0)
        .ipv4([10, 244, 0, 2], [10, 244, 1, 3], 64)
        .icmpv4_echo_request(7, 2)
        .write(&mut big, &[0u8; 1472])
        .unwrap();
    big[20] |= 0x40; // DF
    let csum_at = 24;
    big[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
    let c = podpath_dataplane::wire::checksum::checksum(&big[14..34]);
    big[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    rx(&mut n1, &mut io1, POD_A, &[big]);
    let back = io1.take_tx(POD_A);
    assert_eq!(back.len(), 1);
    assert_eq!((back[0][34], back[0][35]), (3, 4));
    assert_eq!(u16::from_be_bytes([back[0][40], back[0][41]]), 1450);
    // An echo to the gateway is answered.
    rx(
        &mut n1,
        &mut io1,
        POD_A,
        &[icmp_echo(
            pod_mac(1, 2),
            gw.0,
            [10, 244, 0, 2],
            [10, 244, 0, 1],
            64,
        )],
    );
    let back = io1.take_tx(POD_A);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0][34], 0, "echo reply");
    assert!(balanced(&n1));
}

#[test]
fn workers_share_what_arp_taught_them() {
    let (mut w0, mut io0) = node(1);
    let (mut w1, mut io1) = node(1);
    let (tx0, rx0) = bounded(16);
    let (tx1, rx1) = bounded(16);
    w0.set_peer_bus(vec![tx1], rx0);
    w1.set_peer_bus(vec![tx0], rx1);
    // Worker 0 needs node 2's uplink MAC and asks; the answer lands on worker 1.
    let gw = gateway_mac(ip("10.244.0.1"));
    rx(
        &mut w0,
        &mut io0,
        POD_A,
        &[icmp_echo(
            pod_mac(1, 2),
            gw.0,
            [10, 244, 0, 2],
            [10, 244, 1, 3],
            64,
        )],
    );
    assert_eq!(io0.take_tx(UPLINK).len(), 1, "ARP request");
    resolve_node_2(&mut w1, &mut io1);
    assert!(io0.take_tx(UPLINK).is_empty());
    w0.absorb_peers(&mut io0);
    w0.flush(&mut io0);
    assert_eq!(
        io0.take_tx(UPLINK).len(),
        1,
        "worker 0 sent its held packet with worker 1's answer"
    );
}

/// Two workers of node 1 (NAT range split between them) where a pod's UDP to the
/// external host left through worker 1: returns them and the NAT port it got.
fn masqueraded_on_worker_1() -> (Pipeline<MemFrame>, MemIo, Pipeline<MemFrame>, MemIo, u16) {
    let (w0, io0, mut w1, mut io1) = two_workers(None);
    // Worker 1 knows the pod and the external host; the pod's UDP leaves through it.
    let gw = gateway_mac(ip("10.244.0.1"));
    rx(
        &mut w1,
        &mut io1,
        POD_A,
        &[arp::request(MacAddr(pod_mac(1, 2)), ip("10.244.0.2"), ip("10.244.0.1")).to_vec()],
    );
    io1.take_tx(POD_A);
    resolve_ext(&mut w1, &mut io1);
    // Client port 5558 belongs to worker 1 (client_owner): its flow is translated there.
    let mut out = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1, 2), gw.0)
        .ipv4([10, 244, 0, 2], [192, 168, 77, 100], 64)
        .udp(5558, 53)
        .write(&mut out, b"query")
        .unwrap();
    rx(&mut w1, &mut io1, POD_A, &[out]);
    let sent = io1.take_tx(UPLINK);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        &sent[0][26..30],
        &[192, 168, 77, 11],
        "masqueraded to the node IP"
    );
    let natport = u16::from_be_bytes([sent[0][34], sent[0][35]]);
    assert!(
        (40500..=40999).contains(&natport),
        "worker 1's slice: {natport}"
    );
    (w0, io0, w1, io1, natport)
}

/// Both workers' counters balance: rx + replicated + handed in = tx + dropped + handed out.
fn balanced_pair(w0: &Pipeline<MemFrame>, w1: &Pipeline<MemFrame>) -> bool {
    let total = |f: &dyn Fn(&WorkerCounters) -> u64| f(&w0.counters) + f(&w1.counters);
    total(&|c| c.rx_total() + get(&c.replicated) + get(&c.handoff_in))
        == total(&|c| c.tx_total() + c.drops_total() + get(&c.handoff_out))
}

#[test]
fn replies_on_the_wrong_worker_are_handed_to_the_owner() {
    let (mut w0, mut io0, mut w1, mut io1, natport) = masqueraded_on_worker_1();
    // The answer arrives on worker 0, which does not own the connection.
    let mut answer = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x64], uplink_mac(1).0)
        .ipv4([192, 168, 77, 100], [192, 168, 77, 11], 64)
        .udp(53, natport)
        .write(&mut answer, b"answer")
        .unwrap();
    rx(&mut w0, &mut io0, UPLINK, &[answer]);
    assert!(
        io0.take_tx(HOST).is_empty(),
        "not given to the node's kernel"
    );
    assert_eq!(get(&w0.counters.handoff_out), 1);
    assert_eq!(w1.run_handed_off(&mut io1), 1);
    w1.flush(&mut io1);
    let got = io1.take_tx(POD_A);
    assert_eq!(got.len(), 1, "the owner translated it back to the pod");
    assert_eq!(&got[0][30..34], &[10, 244, 0, 2]);
    assert_eq!(u16::from_be_bytes([got[0][36], got[0][37]]), 5558);
    // Totals balance across the two workers.
    assert!(balanced_pair(&w0, &w1));
}

#[test]
fn icmp_errors_on_the_wrong_worker_are_handed_to_the_owner() {
    let (mut w0, mut io0, mut w1, mut io1, natport) = masqueraded_on_worker_1();
    // The external host's port unreachable about node:natport -> server:53 lands on
    // worker 0, whose table does not know the flow.
    let mut quoted = Vec::new();
    PacketBuilder::ipv4([192, 168, 77, 11], [192, 168, 77, 100], 63)
        .udp(natport, 53)
        .write(&mut quoted, b"query")
        .unwrap();
    let mut err = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x64], uplink_mac(1).0)
        .ipv4([192, 168, 77, 100], [192, 168, 77, 11], 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut err, &quoted)
        .unwrap();
    rx(&mut w0, &mut io0, UPLINK, &[err]);
    assert!(
        io0.take_tx(HOST).is_empty(),
        "the error about a pod's flow went to the node's kernel"
    );
    assert_eq!(get(&w0.counters.handoff_out), 1, "handed to worker 1");
    assert_eq!(w1.run_handed_off(&mut io1), 1);
    w1.flush(&mut io1);
    let got = io1.take_tx(POD_A);
    assert_eq!(got.len(), 1, "the owner translated the error to the pod");
    let e = &got[0];
    assert_eq!(&e[30..34], &[10, 244, 0, 2], "outer destination is the pod");
    assert_eq!((e[34], e[35]), (3, 3), "port unreachable");
    assert_eq!(
        &e[42 + 12..42 + 16],
        &[10, 244, 0, 2],
        "quotes the pod's packet"
    );
    assert_eq!(
        u16::from_be_bytes([e[62], e[63]]),
        5558,
        "with the pod's port"
    );
    assert!(balanced_pair(&w0, &w1));
}

#[test]
fn a_full_handoff_ring_drops_by_reason_and_balances() {
    let (mut w0, mut io0, _w1, _io1, natport) = masqueraded_on_worker_1();
    // Worker 1 does not poll: its ring (64) fills, and the rest are dropped, counted.
    let answers: Vec<Vec<u8>> = (0..80u8)
        .map(|k| {
            let mut a = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x64], uplink_mac(1).0)
                .ipv4([192, 168, 77, 100], [192, 168, 77, 11], 64)
                .udp(53, natport)
                .write(&mut a, &[k])
                .unwrap();
            a
        })
        .collect();
    rx(&mut w0, &mut io0, UPLINK, &answers);
    assert_eq!(get(&w0.counters.handoff_out), 64, "the ring holds 64");
    assert_eq!(drops(&w0, DropReason::HandoffFull), 16);
    assert!(io0.take_tx(HOST).is_empty() && io0.take_tx(POD_A).is_empty());
    let c = &w0.counters;
    assert_eq!(
        c.rx_total() + get(&c.replicated),
        c.tx_total() + c.drops_total() + get(&c.handoff_out)
    );
}

#[test]
fn service_connections_live_on_their_clients_worker() {
    use podpath_dataplane::nat::snat::client_owner;
    use podpath_dataplane::services::table::ServiceTable;
    let svc = podpath_proto::ServiceSpec::new(
        "default/web",
        "10.96.0.10",
        80,
        "udp",
        vec![podpath_proto::EndpointSpec::ready("10.244.0.3", 8080)],
    );
    let table = Arc::new(ServiceTable::build(&[svc], None).unwrap());
    let (mut w0, mut io0, mut w1, mut io1) = two_workers(Some(table));
    let gw = gateway_mac(ip("10.244.0.1"));
    // Both workers know both pods (their ARP for the gateway).
    for (w, io) in [(&mut w0, &mut io0), (&mut w1, &mut io1)] {
        rx(
            w,
            io,
            POD_A,
            &[arp::request(MacAddr(pod_mac(1, 2)), ip("10.244.0.2"), ip("10.244.0.1")).to_vec()],
        );
        rx(
            w,
            io,
            POD_B,
            &[arp::request(MacAddr(pod_mac(1, 3)), ip("10.244.0.3"), ip("10.244.0.1")).to_vec()],
        );
        io.take_tx(POD_A);
        io.take_tx(POD_B);
    }
    // A client port owned by worker 1, its first packet arriving on worker 0.
    let sport = (1000u16..)
        .find(|&p| client_owner(ip("10.244.0.2"), p, 2) == 1)
        .unwrap();
    let mut q = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1, 2), gw.0)
        .ipv4([10, 244, 0, 2], [10, 96, 0, 10], 64)
        .udp(sport, 80)
        .write(&mut q, b"q")
        .unwrap();
    rx(&mut w0, &mut io0, POD_A, &[q]);
    assert_eq!(
        get(&w0.counters.handoff_out),
        1,
        "handed to the client's worker"
    );
    w1.run_handed_off(&mut io1);
    w1.flush(&mut io1);
    let to_ep = io1.take_tx(POD_B);
    assert_eq!(to_ep.len(), 1);
    assert_eq!(
        &to_ep[0][30..34],
        &[10, 244, 0, 3],
        "balanced to the endpoint by worker 1"
    );
    // The endpoint's answer lands on worker 0 (pod b's port): handed over, restored.
    let mut a = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1, 3), gw.0)
        .ipv4([10, 244, 0, 3], [10, 244, 0, 2], 64)
        .udp(8080, sport)
        .write(&mut a, b"a")
        .unwrap();
    rx(&mut w0, &mut io0, POD_B, &[a]);
    assert_eq!(get(&w0.counters.handoff_out), 2);
    w1.run_handed_off(&mut io1);
    w1.flush(&mut io1);
    let back = io1.take_tx(POD_A);
    assert_eq!(back.len(), 1);
    assert_eq!(&back[0][26..30], &[10, 96, 0, 10], "from the virtual IP");
    assert_eq!(u16::from_be_bytes([back[0][34], back[0][35]]), 80);
}

// ---- Drop reasons as a contract: each one provoked and counted under its name. ----

/// Node 1 with pod a's MAC learned (its ARP for the gateway).
fn node_with_pod_a(k: u8) -> (Pipeline<MemFrame>, MemIo) {
    let (mut n, mut io) = node(k);
    learn_pod_a(&mut n, &mut io);
    (n, io)
}

fn learn_pod_a(n: &mut Pipeline<MemFrame>, io: &mut MemIo) {
    learn_pod(n, io, POD_A, 2);
}

/// Node 1's pod 10.244.0.`host` on `port` has its MAC learned (its ARP for the
/// gateway).
fn learn_pod(n: &mut Pipeline<MemFrame>, io: &mut MemIo, port: u16, host: u8) {
    let me = ip(&format!("10.244.0.{host}"));
    rx(
        n,
        io,
        port,
        &[arp::request(MacAddr(pod_mac(1, host)), me, ip("10.244.0.1")).to_vec()],
    );
    io.take_tx(port);
}

/// Pod b's MAC learned (its ARP for the gateway).
fn learn_pod_b(n: &mut Pipeline<MemFrame>, io: &mut MemIo) {
    learn_pod(n, io, POD_B, 3);
}

/// Node 2's uplink MAC resolved (its ARP reply on the uplink).
fn resolve_node_2(n: &mut Pipeline<MemFrame>, io: &mut MemIo) {
    rx(
        n,
        io,
        UPLINK,
        &[arp_reply(
            uplink_mac(2),
            ip("192.168.77.12"),
            uplink_mac(1),
            ip("192.168.77.11"),
        )],
    );
}

/// The external host's MAC resolved.
fn resolve_ext(n: &mut Pipeline<MemFrame>, io: &mut MemIo) {
    rx(
        n,
        io,
        UPLINK,
        &[arp_reply(
            MacAddr([2, 0, 0, 0, 0, 0x64]),
            ip("192.168.77.100"),
            uplink_mac(1),
            ip("192.168.77.11"),
        )],
    );
}

/// Sets the IPv4 header checksum of an Ethernet frame (after an edit).
fn fix_ip_checksum(f: &mut [u8]) {
    let hl = usize::from(f[14] & 0x0f) * 4;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = podpath_dataplane::wire::checksum::checksum(&f[14..14 + hl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

fn udp_from_pod_a(dst: [u8; 4], sport: u16, dport: u16, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1, 2), gateway_mac(ip("10.244.0.1")).0)
        .ipv4([10, 244, 0, 2], dst, ttl)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

fn the_only_drop_is(p: &Pipeline<MemFrame>, r: DropReason, n: u64) {
    assert_eq!(drops(p, r), n, "{}", r.name());
    let others: Vec<(&str, u64)> = DropReason::ALL
        .iter()
        .filter(|&&x| x != r && x != DropReason::ArpReplyLearned)
        .map(|&x| (x.name(), drops(p, x)))
        .filter(|&(_, c)| c > 0)
        .collect();
    assert!(
        others.is_empty(),
        "other drops besides {}: {others:?}",
        r.name()
    );
}

#[test]
fn snat_ports_exhausted_is_counted_when_the_slice_is_used_up() {
    // Two NAT ports: a third flow to the same server:port has none left.
    let (mut n, mut io) = node_with(1, |c| c.nat_range = (40000, 40001));
    learn_pod_a(&mut n, &mut io);
    resolve_ext(&mut n, &mut io);
    let flows: Vec<Vec<u8>> = (1..=3)
        .map(|s| udp_from_pod_a([192, 168, 77, 100], 5000 + s, 53, 64, b"q"))
        .collect();
    rx(&mut n, &mut io, POD_A, &flows);
    assert_eq!(io.take_tx(UPLINK).len(), 2, "two flows translated");
    the_only_drop_is(&n, DropReason::SnatPortsExhausted, 1);
    assert!(balanced(&n));
}

#[test]
fn arp_queue_full_and_arp_timeout() {
    let (mut n, mut io) = node_with_pod_a(1);
    // Ten packets for node 2, whose uplink MAC nobody answers: eight are held (the
    // per-next-hop share of the queue), two refused.
    let pings: Vec<Vec<u8>> = (0..10)
        .map(|_| udp_from_pod_a([10, 244, 1, 3], 4000, 4001, 64, b"x"))
        .collect();
    rx(&mut n, &mut io, POD_A, &pings);
    the_only_drop_is(&n, DropReason::ArpQueueFull, 2);
    // A second later nobody has answered: the held ones expire.
    n.set_now(1 + 2 * HZ);
    n.expire(&mut io);
    assert_eq!(drops(&n, DropReason::ArpTimeout), 8);
    assert!(
        io.take_tx(UPLINK).iter().all(|f| f[12..14] == [0x08, 0x06]),
        "only ARP left"
    );
    assert!(balanced(&n));
}

#[test]
fn arp_no_buffer_when_no_buffer_is_left_for_the_request() {
    let (mut n, mut io) = node_with_pod_a(1);
    // No buffer for a copy: the packet for node 2 is held, but the ARP request that
    // would resolve its next hop cannot be built.
    io.copy_budget = Some(0);
    rx(
        &mut n,
        &mut io,
        POD_A,
        &[udp_from_pod_a([10, 244, 1, 3], 4000, 4001, 64, b"x")],
    );
    the_only_drop_is(&n, DropReason::ArpNoBuffer, 1);
    assert_eq!(n.parked(), 1, "the packet itself is held");
    assert!(io.take_tx(UPLINK).is_empty(), "no request went out");
}

/// A NodePort Service (policy Local) whose only endpoint is on node 2.
fn node_port_local_elsewhere() -> Arc<podpath_dataplane::services::table::ServiceTable> {
    use podpath_dataplane::services::table::{NodeInfo, ServiceTable};
    let svc = ServiceSpec {
        node_port: Some(30080),
        external_traffic_policy: Some("Local".into()),
        ..ServiceSpec::new(
            "default/web",
            "10.96.0.10",
            80,
            "tcp",
            vec![EndpointSpec::ready("10.244.1.2", 8080)],
        )
    };
    let info = NodeInfo {
        node_ip: ip("192.168.77.11"),
        pod_net: (ip("10.244.0.0"), 24),
    };
    Arc::new(ServiceTable::build(&[svc], Some(info)).unwrap())
}

#[test]
fn lb_no_endpoint_for_a_local_node_port_without_a_local_endpoint() {
    let (mut n, mut io) = node(1);
    n.set_services(node_port_local_elsewhere());
    let mut syn = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x64], uplink_mac(1).0)
        .ipv4([192, 168, 77, 100], [192, 168, 77, 11], 64)
        .tcp(45000, 30080, 1, 1000)
        .syn()
        .write(&mut syn, &[])
        .unwrap();
    rx(&mut n, &mut io, UPLINK, &[syn]);
    the_only_drop_is(&n, DropReason::LbNoEndpoint, 1);
    assert!(io.take_tx(UPLINK).is_empty(), "no answer, no reset");
    assert!(balanced(&n));
}

/// A DF datagram too big for the overlay, from pod a to a pod on node 2.
fn too_big_for_the_overlay() -> Vec<u8> {
    // etherparse sets DF already.
    udp_from_pod_a([10, 244, 1, 3], 4000, 4001, 64, &[0u8; 1472])
}

#[test]
fn icmp_rate_limited_past_the_burst() {
    let (mut n, mut io) = node_with_pod_a(1);
    // 60 at one instant: the bucket holds 50 errors, the other 10 are limited.
    let frames: Vec<Vec<u8>> = (0..60).map(|_| too_big_for_the_overlay()).collect();
    rx(&mut n, &mut io, POD_A, &frames);
    assert_eq!(io.take_tx(POD_A).len(), 50, "50 fragmentation-needed");
    the_only_drop_is(&n, DropReason::IcmpRateLimited, 10);
    assert!(balanced(&n));
}

#[test]
fn no_icmp_error_about_an_icmp_error_nor_a_later_fragment() {
    let (mut n, mut io) = node_with_pod_a(1);
    // An ICMP error from the pod, TTL 1: its time exceeded would be about an error.
    let mut quoted = Vec::new();
    PacketBuilder::ipv4([10, 244, 1, 3], [10, 244, 0, 2], 64)
        .udp(1, 2)
        .write(&mut quoted, &[0; 8])
        .unwrap();
    let mut err = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1, 2), gateway_mac(ip("10.244.0.1")).0)
        .ipv4([10, 244, 0, 2], [10, 244, 1, 3], 1)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut err, &quoted[..28])
        .unwrap();
    rx(&mut n, &mut io, POD_A, &[err]);
    the_only_drop_is(&n, DropReason::IcmpAboutIcmpError, 1);
    assert!(balanced(&n));
    // A non-first fragment with TTL 1: RFC 1122 forbids an error about it.
    let (mut n, mut io) = node_with_pod_a(1);
    let mut frag = udp_from_pod_a([10, 244, 1, 3], 4000, 4001, 1, &[0; 32]);
    frag[20..22].copy_from_slice(&(0x2000u16 | 100).to_be_bytes()); // MF, offset 800
    fix_ip_checksum(&mut frag);
    rx(&mut n, &mut io, POD_A, &[frag]);
    the_only_drop_is(&n, DropReason::IcmpNotAllowed, 1);
    assert!(io.take_tx(POD_A).is_empty());
    assert!(balanced(&n));
}

/// VXLAN from node 2 to node 1 with `flags` and `inner`, as an Ethernet frame.
fn vxlan_from_node_2(flags: u8, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![flags, 0, 0, 0, 0, 0, 1, 0];
    payload.extend_from_slice(inner);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(uplink_mac(2).0, uplink_mac(1).0)
        .ipv4([192, 168, 77, 12], [192, 168, 77, 11], 64)
        .udp(50000, 4789)
        .write(&mut v, &payload)
        .unwrap();
    v
}

#[test]
fn vxlan_bad_header_and_outer_fragment() {
    let inner = icmp_echo(
        [2; 6],
        gateway_mac(ip("10.244.0.1")).0,
        [10, 244, 1, 3],
        [10, 244, 0, 2],
        64,
    );
    let (mut n, mut io) = node(1);
    // No I flag; and a header cut short (4 of its 8 bytes).
    let mut short = vxlan_from_node_2(0x08, &[]);
    short.truncate(42 + 4);
    short[16..18].copy_from_slice(&(20u16 + 8 + 4).to_be_bytes());
    short[38..40].copy_from_slice(&(8u16 + 4).to_be_bytes());
    short[40..42].copy_from_slice(&[0, 0]);
    fix_ip_checksum(&mut short);
    rx(
        &mut n,
        &mut io,
        UPLINK,
        &[vxlan_from_node_2(0x00, &inner), short],
    );
    the_only_drop_is(&n, DropReason::VxlanBadHeader, 2);
    assert!(balanced(&n));
    // The first fragment of a fragmented outer packet (MF set).
    let (mut n, mut io) = node(1);
    let mut f = vxlan_from_node_2(0x08, &inner);
    f[20] |= 0x20;
    fix_ip_checksum(&mut f);
    rx(&mut n, &mut io, UPLINK, &[f]);
    the_only_drop_is(&n, DropReason::VxlanOuterFragment, 1);
    assert!(balanced(&n));
}

// ---- The whole node (overlay, SNAT, Services) under random and mutated input. ----

/// Node 1 with a remote, Services (ClusterIP + NodePort), pod a known, the external
/// host and node 2 resolved, and a masqueraded UDP and TCP flow: returns the node and
/// templates that reach every stage (VXLAN in, SNAT replies, ICMP errors quoting a
/// translated flow, a Service SYN, a NodePort SYN).
/// Frames and the port each arrives on.
type Templates = Vec<(u16, Vec<u8>)>;

fn full_node() -> (Pipeline<MemFrame>, MemIo, Templates) {
    use podpath_dataplane::services::table::{NodeInfo, ServiceTable};
    let (mut n, mut io) = node_with_pod_a(1);
    let ep = |ip: &str| EndpointSpec::ready(ip, 8080);
    let svc = ServiceSpec {
        affinity_timeout: Some(60),
        node_port: Some(30080),
        ..ServiceSpec::new(
            "default/web",
            "10.96.0.10",
            80,
            "tcp",
            vec![ep("10.244.0.3"), ep("10.244.1.2")],
        )
    };
    let dns = ServiceSpec::new("default/dns", "10.96.0.12", 53, "udp", vec![]);
    let info = NodeInfo {
        node_ip: ip("192.168.77.11"),
        pod_net: (ip("10.244.0.0"), 24),
    };
    let empty = ServiceSpec {
        name: "default/empty".into(),
        vip: "10.96.0.11".into(),
        port: 80,
        protocol: "tcp".into(),
        ..dns.clone()
    };
    n.set_services(Arc::new(
        ServiceTable::build(&[svc, dns, empty], Some(info)).unwrap(),
    ));
    let ext_mac = [2, 0, 0, 0, 0, 0x64];
    for (mac, a) in [
        (ext_mac, "192.168.77.100"),
        (uplink_mac(2).0, "192.168.77.12"),
    ] {
        rx(
            &mut n,
            &mut io,
            UPLINK,
            &[arp_reply(
                MacAddr(mac),
                ip(a),
                uplink_mac(1),
                ip("192.168.77.11"),
            )],
        );
    }
    rx(
        &mut n,
        &mut io,
        POD_A,
        &[udp_from_pod_a([192, 168, 77, 100], 5555, 53, 64, b"q")],
    );
    let out = io.take_tx(UPLINK);
    let natport = u16::from_be_bytes([out[0][34], out[0][35]]);
    let from_ext =
        |l4: &dyn Fn(etherparse::PacketBuilderStep<etherparse::IpHeaders>) -> Vec<u8>| {
            l4(PacketBuilder::ethernet2(ext_mac, uplink_mac(1).0).ipv4(
                [192, 168, 77, 100],
                [192, 168, 77, 11],
                64,
            ))
        };
    let reply = from_ext(&|b| {
        let mut v = Vec::new();
        b.udp(53, natport).write(&mut v, b"answer").unwrap();
        v
    });
    let mut quoted = Vec::new();
    PacketBuilder::ipv4([192, 168, 77, 11], [192, 168, 77, 100], 63)
        .udp(natport, 53)
        .write(&mut quoted, b"q")
        .unwrap();
    let icmp_err = from_ext(&|b| {
        let mut v = Vec::new();
        b.icmpv4(etherparse::Icmpv4Type::TimeExceeded(
            etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
        ))
        .write(&mut v, &quoted)
        .unwrap();
        v
    });
    let node_port_syn = from_ext(&|b| {
        let mut v = Vec::new();
        b.tcp(45000, 30080, 1, 1000)
            .syn()
            .write(&mut v, &[])
            .unwrap();
        v
    });
    let mut svc_syn = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1, 2), gateway_mac(ip("10.244.0.1")).0)
        .ipv4([10, 244, 0, 2], [10, 96, 0, 10], 64)
        .tcp(40000, 80, 1, 1000)
        .syn()
        .write(&mut svc_syn, &[])
        .unwrap();
    let mut empty_syn = svc_syn.clone();
    empty_syn[33] = 11; // to 10.96.0.11
    fix_ip_checksum(&mut empty_syn);
    let inner = icmp_echo(
        [2; 6],
        gateway_mac(ip("10.244.0.1")).0,
        [10, 244, 1, 3],
        [10, 244, 0, 2],
        64,
    );
    let templates = vec![
        (UPLINK, vxlan_from_node_2(0x08, &inner)),
        (UPLINK, reply),
        (UPLINK, icmp_err),
        (UPLINK, node_port_syn),
        (POD_A, svc_syn),
        (POD_A, udp_from_pod_a([10, 96, 0, 12], 5000, 53, 64, b"q")),
        (POD_A, too_big_for_the_overlay()),
        (
            HOST,
            icmp_echo(
                [2, 0, 0, 0, 0xff, 1],
                [2; 6],
                [192, 168, 77, 11],
                [10, 244, 0, 2],
                64,
            ),
        ),
        (POD_A, empty_syn),
    ];
    (n, io, templates)
}

#[test]
fn the_full_node_templates_reach_the_deep_stages() {
    // Unmutated, each template does what it is there for, so the properties below
    // feed random input to VXLAN decap, SNAT replies, ICMP error translation, the
    // Service stage and its refusals (TCP reset, port unreachable).
    let (mut n, mut io, templates) = full_node();
    for (port, f) in &templates {
        rx(&mut n, &mut io, *port, std::slice::from_ref(f));
    }
    let to_pod = io.take_tx(POD_A);
    let icmp = |t: u8, c: u8| {
        to_pod
            .iter()
            .any(|f| f[23] == 1 && f[34] == t && f[35] == c)
    };
    assert!(
        icmp(11, 0)
            && to_pod.iter().any(|f| f[23] == 1
                && f[34] == 11
                && f[30..34] == [10, 244, 0, 2]
                && u16::from_be_bytes([f[62], f[63]]) == 5555),
        "router error translated to the pod"
    );
    assert!(icmp(3, 3), "port unreachable for the empty UDP Service");
    assert!(icmp(3, 4), "fragmentation needed");
    assert!(
        icmp(0, 0) || to_pod.iter().any(|f| f[23] == 1 && f[34] == 8),
        "VXLAN's inner echo delivered"
    );
    assert!(
        to_pod.iter().any(|f| f[23] == 6 && f[47] & 0x04 != 0),
        "reset for the empty TCP Service"
    );
    assert!(
        to_pod
            .iter()
            .any(|f| f[23] == 17 && u16::from_be_bytes([f[36], f[37]]) == 5555),
        "SNAT reply restored"
    );
    let stage =
        |s: podpath_dataplane::pipeline::StageId| get(&n.counters.stages[s.index()].packets);
    use podpath_dataplane::pipeline::StageId;
    for s in [
        StageId::VxlanDecap,
        StageId::SnatReply,
        StageId::Lb,
        StageId::IcmpError,
        StageId::Snat,
    ] {
        assert!(stage(s) > 0, "{} saw nothing", s.name());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Mutated frames of every kind the node handles, on the port they belong to:
    /// never a panic, every packet accounted for.
    #[test]
    fn a_full_node_survives_mutated_frames_and_balances(
        which in proptest::collection::vec(0usize..9, 1..8),
        edits in proptest::collection::vec((0usize..200, any::<u8>()), 0..8),
        cut in 14usize..400,
    ) {
        let (mut n, mut io, templates) = full_node();
        for (k, w) in which.iter().enumerate() {
            let (port, base) = &templates[*w];
            let mut f = base.clone();
            for &(i, v) in edits.iter().skip(k % 3) {
                let len = f.len();
                f[i % len] = v;
            }
            f.truncate(cut.max(14));
            rx(&mut n, &mut io, *port, &[f]);
        }
        n.set_now(1 + 5 * HZ);
        n.expire(&mut io);
        prop_assert!(balanced(&n));
    }

    /// Random bytes on every port kind.
    #[test]
    fn a_full_node_survives_random_frames_and_balances(
        frames in proptest::collection::vec((0u16..4, proptest::collection::vec(any::<u8>(), 0..300)), 1..30),
    ) {
        let (mut n, mut io, _) = full_node();
        for (port, f) in &frames {
            rx(&mut n, &mut io, *port, std::slice::from_ref(f));
        }
        prop_assert!(balanced(&n));
    }
}

#[test]
fn affinity_sticks_to_its_endpoint_and_lets_go_when_the_endpoint_goes() {
    use podpath_dataplane::services::table::{NodeInfo, ServiceTable};
    let (mut n, mut io) = node_with_pod_a(1);
    // Pod b (a local endpoint) and node 2 (behind the remote one) are resolved.
    learn_pod_b(&mut n, &mut io);
    resolve_node_2(&mut n, &mut io);
    let ep = |ip: &str| EndpointSpec::ready(ip, 8080);
    let spec = |eps: Vec<EndpointSpec>| ServiceSpec {
        affinity_timeout: Some(60),
        ..ServiceSpec::new("default/web", "10.96.0.10", 80, "tcp", eps)
    };
    let info = || NodeInfo {
        node_ip: ip("192.168.77.11"),
        pod_net: (ip("10.244.0.0"), 24),
    };
    let both = spec(vec![ep("10.244.0.3"), ep("10.244.1.2")]);
    n.set_services(Arc::new(
        ServiceTable::build(&[both], Some(info())).unwrap(),
    ));
    // Where each new connection (a SYN from its own client port) was sent.
    let mut connect = |n: &mut Pipeline<MemFrame>, sport: u16| -> [u8; 4] {
        let mut syn = Vec::new();
        PacketBuilder::ethernet2(pod_mac(1, 2), gateway_mac(ip("10.244.0.1")).0)
            .ipv4([10, 244, 0, 2], [10, 96, 0, 10], 64)
            .tcp(sport, 80, 1, 1000)
            .syn()
            .write(&mut syn, &[])
            .unwrap();
        rx(n, &mut io, POD_A, &[syn]);
        let local = io.take_tx(POD_B);
        let remote = io.take_tx(UPLINK);
        match (local.as_slice(), remote.as_slice()) {
            ([f], []) => f[30..34].try_into().unwrap(),
            ([], [f]) => f[50 + 14 + 16..50 + 14 + 20].try_into().unwrap(),
            _ => panic!(
                "SYN from {sport}: {} local, {} remote",
                local.len(),
                remote.len()
            ),
        }
    };
    let first = connect(&mut n, 41000);
    // Without affinity Maglev would spread these 16 over both endpoints.
    for sport in 41001..41017 {
        assert_eq!(
            connect(&mut n, sport),
            first,
            "client port {sport} left its endpoint"
        );
    }
    // The endpoint goes: the client's next connection goes to the other one, and
    // sticks there.
    let rest = if first == [10, 244, 0, 3] {
        "10.244.1.2"
    } else {
        "10.244.0.3"
    };
    n.set_services(Arc::new(
        ServiceTable::build(&[spec(vec![ep(rest)])], Some(info())).unwrap(),
    ));
    for sport in 42000..42004 {
        assert_eq!(
            connect(&mut n, sport),
            ip(rest).to_be_bytes(),
            "still sent to the gone endpoint"
        );
    }
}

#[test]
fn a_decapsulated_reply_handed_to_its_owner_is_restored() {
    use podpath_dataplane::nat::snat::client_owner;
    use podpath_dataplane::services::table::ServiceTable;
    // A Service whose endpoint is on node 2; the client's connection lives on worker 1.
    let svc = ServiceSpec::new(
        "default/web",
        "10.96.0.10",
        80,
        "tcp",
        vec![EndpointSpec::ready("10.244.1.2", 8080)],
    );
    let table = Arc::new(ServiceTable::build(&[svc], None).unwrap());
    let (mut w0, mut io0, mut w1, mut io1) = two_workers(Some(table));
    learn_pod_a(&mut w1, &mut io1);
    resolve_node_2(&mut w1, &mut io1);
    let sport = (1000u16..)
        .find(|&p| client_owner(ip("10.244.0.2"), p, 2) == 1)
        .unwrap();
    let mut syn = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1, 2), gateway_mac(ip("10.244.0.1")).0)
        .ipv4([10, 244, 0, 2], [10, 96, 0, 10], 64)
        .tcp(sport, 80, 1, 1000)
        .syn()
        .write(&mut syn, &[])
        .unwrap();
    rx(&mut w1, &mut io1, POD_A, &[syn]);
    let out = io1.take_tx(UPLINK);
    assert_eq!(out.len(), 1, "the SYN went to node 2 over VXLAN");
    assert_eq!(&out[0][50 + 30..50 + 34], &[10, 244, 1, 2]);
    // The endpoint's SYN-ACK comes back over VXLAN onto worker 0's uplink queue.
    let mut inner = Vec::new();
    PacketBuilder::ethernet2(
        gateway_mac(ip("10.244.1.1")).0,
        gateway_mac(ip("10.244.0.1")).0,
    )
    .ipv4([10, 244, 1, 2], [10, 244, 0, 2], 63)
    .tcp(8080, sport, 7, 1000)
    .syn()
    .ack(2)
    .write(&mut inner, &[])
    .unwrap();
    rx(
        &mut w0,
        &mut io0,
        UPLINK,
        &[vxlan_from_node_2(0x08, &inner)],
    );
    assert_eq!(
        get(&w0.counters.handoff_out),
        1,
        "decapsulated, then handed over"
    );
    assert_eq!(w1.run_handed_off(&mut io1), 1);
    w1.flush(&mut io1);
    assert_eq!(
        drops(&w1, DropReason::UplinkNotForUs),
        0,
        "the inner frame was taken for an uplink frame"
    );
    let back = io1.take_tx(POD_A);
    assert_eq!(back.len(), 1, "the SYN-ACK reached the client");
    assert_eq!(&back[0][26..30], &[10, 96, 0, 10], "from the virtual IP");
    assert_eq!(u16::from_be_bytes([back[0][34], back[0][35]]), 80);
    assert!(balanced_pair(&w0, &w1));
}

#[test]
fn more_drop_reasons_each_counted_alone() {
    // UDP to the pods' gateway: the dataplane answers only ICMP echo there.
    let (mut n, mut io) = node_with_pod_a(1);
    rx(
        &mut n,
        &mut io,
        POD_A,
        &[udp_from_pod_a([10, 244, 0, 1], 4000, 53, 64, b"x")],
    );
    the_only_drop_is(&n, DropReason::Ip4LocalUnsupported, 1);
    assert!(balanced(&n));
    // Leaving the cluster: a protocol without ports (GRE), and a later fragment
    // whose first one was never seen (a first fragment is translated, with its
    // later ones: see the fragment tests).
    let (mut n, mut io) = node_with_pod_a(1);
    let mut gre = udp_from_pod_a([192, 168, 77, 100], 4000, 53, 64, b"x");
    gre[23] = 47;
    fix_ip_checksum(&mut gre);
    let mut frag = udp_from_pod_a([192, 168, 77, 100], 4000, 53, 64, &[0; 32]);
    frag[20..22].copy_from_slice(&0x0004u16.to_be_bytes()); // offset 32, no first
    fix_ip_checksum(&mut frag);
    rx(&mut n, &mut io, POD_A, &[gre]);
    the_only_drop_is(&n, DropReason::SnatUnsupported, 1);
    rx(&mut n, &mut io, POD_A, &[frag]);
    assert_eq!(drops(&n, DropReason::SnatFragment), 1);
    assert!(balanced(&n));
    // The host port carries ARP and IPv4 only.
    let (mut n, mut io) = node(1);
    let mut v6 = icmp_echo(
        [2, 0, 0, 0, 0xff, 1],
        [2; 6],
        [192, 168, 77, 11],
        [10, 244, 0, 2],
        64,
    );
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    rx(&mut n, &mut io, HOST, &[v6]);
    the_only_drop_is(&n, DropReason::HostNotIp4, 1);
    assert!(balanced(&n));
}

#[test]
fn with_two_workers_one_worker_owns_every_connection_of_an_affinity_client() {
    use podpath_dataplane::services::table::ServiceTable;
    let svc = ServiceSpec {
        affinity_timeout: Some(60),
        ..ServiceSpec::new(
            "default/web",
            "10.96.0.10",
            80,
            "udp",
            ["10.244.0.3", "10.244.0.4", "10.244.0.5"]
                .iter()
                .map(|e| EndpointSpec::ready(e, 8080))
                .collect(),
        )
    };
    let table = Arc::new(ServiceTable::build(&[svc], None).unwrap());
    let (mut w0, mut io0, mut w1, mut io1) = two_workers(Some(table));
    for (w, io) in [(&mut w0, &mut io0), (&mut w1, &mut io1)] {
        learn_pod_a(w, io);
    }
    // Sixteen client ports, arriving on both workers' queues alternately (as a
    // NIC's hash would spread them): one worker takes them all, one endpoint serves.
    for (k, sport) in (41000u16..41016).enumerate() {
        let q = udp_from_pod_a([10, 96, 0, 10], sport, 80, 64, b"q");
        if k % 2 == 0 {
            rx(&mut w0, &mut io0, POD_A, &[q]);
        } else {
            rx(&mut w1, &mut io1, POD_A, &[q]);
        }
    }
    w0.run_handed_off(&mut io0);
    w1.run_handed_off(&mut io1);
    w0.flush(&mut io0);
    w1.flush(&mut io1);
    let made = |w: &Pipeline<MemFrame>| get(&w.counters.ct_inserted);
    w0.expire_connections();
    w1.expire_connections();
    assert!(
        (made(&w0), made(&w1)) == (16, 0) || (made(&w0), made(&w1)) == (0, 16),
        "connections split over the workers: {} and {}",
        made(&w0),
        made(&w1)
    );
    // Each endpoint is asked for by ARP (not resolved here): the ARP requests name
    // the one endpoint every connection went to.
    let asked: std::collections::BTreeSet<[u8; 4]> = [io0.take_tx(POD_B), io1.take_tx(POD_B)]
        .concat()
        .iter()
        .filter(|f| f[12..14] == [0x08, 0x06])
        .map(|f| f[38..42].try_into().unwrap())
        .collect();
    assert_eq!(asked.len(), 1, "affinity split over endpoints: {asked:?}");
}

#[test]
fn a_client_port_reused_after_time_wait_gets_the_endpoint_picked_now() {
    use podpath_dataplane::services::table::ServiceTable;
    use podpath_dataplane::wire::tcp::flags::{ACK, FIN, SYN};
    let (mut n, mut io) = node_with_pod_a(1);
    // Pod b (endpoint A, local) and node 2 (behind endpoint B) are resolved.
    learn_pod_b(&mut n, &mut io);
    resolve_node_2(&mut n, &mut io);
    let web = |eps: Vec<EndpointSpec>| {
        Arc::new(
            ServiceTable::build(
                &[ServiceSpec::new(
                    "default/web",
                    "10.96.0.10",
                    80,
                    "tcp",
                    eps,
                )],
                None,
            )
            .unwrap(),
        )
    };
    let seg = |src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8| {
        let mut v = Vec::new();
        let mut b = PacketBuilder::ethernet2(pod_mac(1, 2), gateway_mac(ip("10.244.0.1")).0)
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 1, 1000);
        if flags & SYN != 0 {
            b = b.syn();
        }
        if flags & ACK != 0 {
            b = b.ack(1);
        }
        if flags & FIN != 0 {
            b = b.fin();
        }
        b.write(&mut v, &[]).unwrap();
        v
    };
    let (client, vip, a) = ([10, 244, 0, 2], [10, 96, 0, 10], [10, 244, 0, 3]);
    // A whole connection to endpoint A (the only one), closed: TIME_WAIT.
    n.set_services(web(vec![EndpointSpec::ready("10.244.0.3", 8080)]));
    rx(&mut n, &mut io, POD_A, &[seg(client, vip, 40000, 80, SYN)]);
    assert_eq!(io.take_tx(POD_B).len(), 1, "the SYN reached endpoint A");
    let mut from_a = seg(a, client, 8080, 40000, SYN | ACK);
    from_a[6..12].copy_from_slice(&pod_mac(1, 3));
    rx(&mut n, &mut io, POD_B, &[from_a]);
    for (src, dst, sp, dp, f, port) in [
        (client, vip, 40000, 80, ACK, POD_A),
        (client, vip, 40000, 80, FIN | ACK, POD_A),
        (a, client, 8080, 40000, FIN | ACK, POD_B),
        (client, vip, 40000, 80, ACK, POD_A),
    ] {
        let mut f_ = seg(src, dst, sp, dp, f);
        if port == POD_B {
            f_[6..12].copy_from_slice(&pod_mac(1, 3));
        }
        rx(&mut n, &mut io, port, &[f_]);
    }
    io.take_tx(POD_A);
    assert_eq!(
        io.take_tx(POD_B).len(),
        3,
        "the rest of the connection reached A"
    );
    // Endpoint B comes with weight 1000: Maglev now picks B for nearly every flow
    // (a fresh client port shows it), A stays (its connections are not swept).
    n.set_services(web(vec![
        EndpointSpec::ready("10.244.0.3", 8080),
        EndpointSpec {
            weight: 1000,
            ..EndpointSpec::ready("10.244.1.2", 8080)
        },
    ]));
    rx(&mut n, &mut io, POD_A, &[seg(client, vip, 40001, 80, SYN)]);
    assert_eq!(io.take_tx(UPLINK).len(), 1, "a new client port goes to B");
    // The client reuses port 40000: a new connection, so the endpoint picked now.
    rx(&mut n, &mut io, POD_A, &[seg(client, vip, 40000, 80, SYN)]);
    assert!(
        io.take_tx(POD_B).is_empty(),
        "the reopened port went to the old endpoint"
    );
    assert_eq!(io.take_tx(UPLINK).len(), 1, "the reopened port went to B");
}

#[test]
fn removing_an_endpoint_sweeps_its_udp_connections_keeps_tcp_and_settles_after_the_sweep() {
    use podpath_dataplane::services::table::ServiceTable;
    use podpath_dataplane::snapshot::Snapshot;
    use podpath_dataplane::wire::tcp::flags::{ACK, SYN};
    use std::sync::atomic::Ordering;
    let (mut n, mut io) = node_with_pod_a(1);
    learn_pod_b(&mut n, &mut io);
    let table = |eps: Vec<EndpointSpec>| {
        Arc::new(
            ServiceTable::build(
                &[
                    ServiceSpec::new("default/web", "10.96.0.10", 80, "tcp", eps.clone()),
                    ServiceSpec::new("default/dns", "10.96.0.10", 53, "udp", eps),
                ],
                None,
            )
            .unwrap(),
        )
    };
    let snap = |n: &Pipeline<MemFrame>, services| Snapshot {
        services,
        ..n.snapshot()
    };
    let tcp = |flags: u8| {
        let mut v = Vec::new();
        let b = PacketBuilder::ethernet2(pod_mac(1, 2), gateway_mac(ip("10.244.0.1")).0)
            .ipv4([10, 244, 0, 2], [10, 96, 0, 10], 64)
            .tcp(40000, 80, 1, 1000);
        let b = if flags & SYN != 0 { b.syn() } else { b.ack(1) };
        b.write(&mut v, &[]).unwrap();
        v
    };
    let old = n.install(
        &mut io,
        snap(&n, table(vec![EndpointSpec::ready("10.244.0.3", 8080)])),
        1,
    );
    drop(old);
    n.expire_connections();
    assert_eq!(n.counters.settled_gen.load(Ordering::Acquire), 1);
    rx(&mut n, &mut io, POD_A, &[tcp(SYN)]);
    rx(
        &mut n,
        &mut io,
        POD_A,
        &[udp_from_pod_a([10, 96, 0, 10], 5353, 53, 64, b"q")],
    );
    assert_eq!(io.take_tx(POD_B).len(), 2, "both reached endpoint A");
    assert_eq!(n.features.nat.conntrack.len(), 2);

    // The endpoint goes. Installed, the generation is applied but not settled until
    // the sweep has been over the table.
    let _old = n.install(&mut io, snap(&n, table(vec![])), 2);
    assert_eq!(n.counters.settled_gen.load(Ordering::Acquire), 1);
    assert_eq!(
        n.features.nat.conntrack.len(),
        2,
        "the sweep runs at the next poll"
    );
    n.expire_connections();
    assert_eq!(n.counters.settled_gen.load(Ordering::Acquire), 2);
    let now = n.seconds();
    let left: Vec<u8> = n
        .features
        .nat
        .conntrack
        .entries(now)
        .map(|e| e.orig.proto)
        .collect();
    assert_eq!(left, vec![6], "the UDP entry is swept, the TCP one kept");
    // The established TCP connection keeps its endpoint (kube-proxy does not cut it).
    rx(&mut n, &mut io, POD_A, &[tcp(ACK)]);
    let out = io.take_tx(POD_B);
    assert_eq!(out.len(), 1, "the TCP connection still reaches A");
    assert_eq!(&out[0][30..34], &[10, 244, 0, 3]);
    // A new UDP datagram has no endpoint now: refused (port unreachable).
    rx(
        &mut n,
        &mut io,
        POD_A,
        &[udp_from_pod_a([10, 96, 0, 10], 5353, 53, 64, b"q")],
    );
    assert!(io.take_tx(POD_B).is_empty(), "UDP no longer reaches A");
}

#[test]
fn the_service_range_refuses_undefined_ports_and_drops_unallocated_addresses() {
    use podpath_dataplane::services::table::ServiceTable;
    let (mut n, mut io) = node_with_pod_a(1);
    // No Service at all: the range is unallocated, dropped silently.
    rx(
        &mut n,
        &mut io,
        POD_A,
        &[udp_from_pod_a([10, 96, 5, 5], 5000, 53, 64, b"q")],
    );
    assert!(io.take_tx(POD_A).is_empty() && io.take_tx(UPLINK).is_empty());
    the_only_drop_is(&n, DropReason::LbUnallocatedClusterIp, 1);
    n.set_services(Arc::new(
        ServiceTable::build(
            &[ServiceSpec::new(
                "default/web",
                "10.96.0.10",
                80,
                "tcp",
                vec![EndpointSpec::ready("10.244.1.2", 8080)],
            )],
            None,
        )
        .unwrap(),
    ));
    // The ClusterIP on a port no ServicePort defines: TCP gets a reset from it.
    let mut syn = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1, 2), gateway_mac(ip("10.244.0.1")).0)
        .ipv4([10, 244, 0, 2], [10, 96, 0, 10], 64)
        .tcp(40000, 81, 7, 1000)
        .syn()
        .write(&mut syn, &[])
        .unwrap();
    rx(&mut n, &mut io, POD_A, &[syn]);
    let out = io.take_tx(POD_A);
    assert_eq!(out.len(), 1, "no reset back to the pod");
    let p = SlicedPacket::from_ethernet(&out[0]).unwrap();
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("not TCP: {:?}", p.transport)
    };
    assert!(t.rst() && t.ack() && t.source_port() == 81 && t.acknowledgment_number() == 8);
    assert_eq!(
        &out[0][26..30],
        &[10, 96, 0, 10],
        "the reset comes from the ClusterIP"
    );
    // UDP and ICMP echo to it: ICMP port unreachable from the ClusterIP.
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1, 2), gateway_mac(ip("10.244.0.1")).0)
        .ipv4([10, 244, 0, 2], [10, 96, 0, 10], 64)
        .icmpv4_echo_request(9, 1)
        .write(&mut echo, b"ping")
        .unwrap();
    rx(
        &mut n,
        &mut io,
        POD_A,
        &[udp_from_pod_a([10, 96, 0, 10], 5000, 53, 64, b"q"), echo],
    );
    let out = io.take_tx(POD_A);
    assert_eq!(out.len(), 2, "two port unreachables");
    for f in &out {
        assert_eq!(&f[26..30], &[10, 96, 0, 10]);
        assert_eq!((f[34], f[35]), (3, 3), "destination unreachable, port");
    }
    // Another address of the range: dropped, no answer.
    rx(
        &mut n,
        &mut io,
        POD_A,
        &[udp_from_pod_a([10, 96, 0, 11], 5000, 53, 64, b"q")],
    );
    assert!(io.take_tx(POD_A).is_empty() && io.take_tx(UPLINK).is_empty());
    the_only_drop_is(&n, DropReason::LbUnallocatedClusterIp, 2);
    assert!(balanced(&n));
}

#[test]
fn an_endpoints_icmp_error_reaches_the_client_from_the_virtual_ip_about_what_it_sent() {
    use podpath_dataplane::services::table::ServiceTable;
    use podpath_dataplane::wire::checksum::{fold, sum};
    let (mut n, mut io) = node_with_pod_a(1);
    learn_pod_b(&mut n, &mut io);
    n.set_services(Arc::new(
        ServiceTable::build(
            &[
                ServiceSpec::new(
                    "default/web",
                    "10.96.0.10",
                    80,
                    "tcp",
                    vec![EndpointSpec::ready("10.244.0.3", 8080)],
                ),
                ServiceSpec::new(
                    "default/dns",
                    "10.96.0.10",
                    53,
                    "udp",
                    vec![EndpointSpec::ready("10.244.0.3", 5353)],
                ),
            ],
            None,
        )
        .unwrap(),
    ));
    let mut syn = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1, 2), gateway_mac(ip("10.244.0.1")).0)
        .ipv4([10, 244, 0, 2], [10, 96, 0, 10], 64)
        .tcp(40000, 80, 7, 1000)
        .syn()
        .write(&mut syn, &[])
        .unwrap();
    for (request, sport, vport) in [
        (syn, 40000u16, 80u16),
        (
            udp_from_pod_a([10, 96, 0, 10], 5000, 53, 64, b"query"),
            5000,
            53,
        ),
    ] {
        let sent = request.clone();
        rx(&mut n, &mut io, POD_A, &[request]);
        let at_ep = io.take_tx(POD_B);
        assert_eq!(at_ep.len(), 1);
        // The endpoint's kernel answers port unreachable about what it got.
        let quote = &at_ep[0][14..14 + 20 + 8];
        let mut err = Vec::new();
        PacketBuilder::ethernet2(pod_mac(1, 3), pod_mac(1, 2))
            .ipv4([10, 244, 0, 3], [10, 244, 0, 2], 64)
            .icmpv4_raw(3, 3, [0; 4])
            .write(&mut err, quote)
            .unwrap();
        rx(&mut n, &mut io, POD_B, &[err]);
        let out = io.take_tx(POD_A);
        assert_eq!(out.len(), 1, "the error did not reach the client");
        let f = &out[0];
        assert_eq!(&f[26..30], &[10, 96, 0, 10], "outer source: the virtual IP");
        assert_eq!(&f[30..34], &[10, 244, 0, 2]);
        let q = &f[42..];
        assert_eq!(&q[12..16], &[10, 244, 0, 2], "quoted source: the client");
        assert_eq!(
            &q[16..20],
            &[10, 96, 0, 10],
            "quoted destination: the virtual IP"
        );
        assert_eq!(u16::from_be_bytes([q[20], q[21]]), sport);
        assert_eq!(
            u16::from_be_bytes([q[22], q[23]]),
            vport,
            "the Service port"
        );
        assert_eq!(fold(sum(&f[14..34])), 0xffff, "outer IPv4 checksum");
        assert_eq!(fold(sum(&q[..20])), 0xffff, "quoted IPv4 checksum");
        assert_eq!(fold(sum(&f[34..])), 0xffff, "ICMP checksum");
        // The quoted 8 bytes of transport are what the client sent (UDP: its
        // checksum too, so the client's stack can match it).
        assert_eq!(&q[20..28], &sent[34..42], "quoted transport header");
    }
    assert!(balanced(&n));
}

#[test]
fn too_big_for_the_overlay_on_a_node_port_the_error_goes_to_the_client_about_what_it_sent() {
    use podpath_dataplane::services::table::{NodeInfo, ServiceTable};
    use podpath_dataplane::wire::checksum::{fold, sum};
    let (mut n, mut io) = node(1);
    resolve_ext(&mut n, &mut io);
    resolve_node_2(&mut n, &mut io);
    // NodePort 30053/udp, policy Cluster, its endpoint on node 2.
    let svc = ServiceSpec {
        node_port: Some(30053),
        ..ServiceSpec::new(
            "default/dns",
            "10.96.0.53",
            53,
            "udp",
            vec![EndpointSpec::ready("10.244.1.2", 5353)],
        )
    };
    let info = NodeInfo {
        node_ip: ip("192.168.77.11"),
        pod_net: (ip("10.244.0.0"), 24),
    };
    n.set_services(Arc::new(ServiceTable::build(&[svc], Some(info)).unwrap()));
    // 1 500 bytes with DF from an external host: translated, it does not fit the
    // overlay (1 500 + 50 on a 1 500 uplink).
    let mut big = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x64], uplink_mac(1).0)
        .ipv4([192, 168, 77, 100], [192, 168, 77, 11], 64)
        .udp(5000, 30053)
        .write(&mut big, &[7u8; 1472])
        .unwrap();
    let sent = big.clone();
    rx(&mut n, &mut io, UPLINK, &[big]);
    let out = io.take_tx(UPLINK);
    assert_eq!(out.len(), 1, "no fragmentation-needed on the uplink");
    let f = &out[0];
    assert_eq!(
        (f[34], f[35]),
        (3, 4),
        "destination unreachable, fragmentation needed"
    );
    assert_eq!(
        &f[30..34],
        &[192, 168, 77, 100],
        "to the client, not the node"
    );
    assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 0x64], "on the client's MAC");
    let q = &f[42..];
    assert_eq!(
        &q[12..20],
        &sent[26..34],
        "quoted addresses: as the client sent them"
    );
    assert_eq!(
        &q[20..28],
        &sent[34..42],
        "quoted ports and checksum: as sent"
    );
    assert_eq!(u16::from_be_bytes([f[40], f[41]]), 1450, "the next-hop MTU");
    assert_eq!(fold(sum(&f[14..34])), 0xffff);
    assert_eq!(fold(sum(&q[..20])), 0xffff);
    assert_eq!(fold(sum(&f[34..])), 0xffff);
    assert!(balanced(&n));
}

/// A UDP datagram of `len` payload bytes split into two IPv4 fragments (the first
/// carrying 1 200 bytes of IP payload), DF clear, identifier `id`.
fn two_fragments(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    id: u16,
    len: usize,
) -> [Vec<u8>; 2] {
    let mut whole = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(ports.0, ports.1)
        .write(&mut whole, &vec![0x5a; len])
        .unwrap();
    let ip_payload = &whole[34..];
    let frag = |data: &[u8], offset: usize, more: bool| {
        let mut f = whole[..34].to_vec();
        f.extend_from_slice(data);
        let total = u16::try_from(20 + data.len()).unwrap();
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[18..20].copy_from_slice(&id.to_be_bytes());
        let fo = u16::try_from(offset / 8).unwrap() | if more { 0x2000 } else { 0 };
        f[20..22].copy_from_slice(&fo.to_be_bytes());
        fix_ip_checksum(&mut f);
        f
    };
    [
        frag(&ip_payload[..1200], 0, true),
        frag(&ip_payload[1200..], 1200, false),
    ]
}

#[test]
fn fragments_of_a_service_datagram_follow_the_first_ones_translation_both_ways() {
    use podpath_dataplane::services::table::ServiceTable;
    use podpath_dataplane::wire::checksum::{fold, sum};
    let (mut n, mut io) = node_with_pod_a(1);
    learn_pod_b(&mut n, &mut io);
    n.set_services(Arc::new(
        ServiceTable::build(
            &[ServiceSpec::new(
                "default/dns",
                "10.96.0.10",
                53,
                "udp",
                vec![EndpointSpec::ready("10.244.0.3", 5353)],
            )],
            None,
        )
        .unwrap(),
    ));
    let gw = gateway_mac(ip("10.244.0.1")).0;
    let req = two_fragments(
        pod_mac(1, 2),
        gw,
        [10, 244, 0, 2],
        [10, 96, 0, 10],
        (5000, 53),
        0x1234,
        2000,
    );
    rx(&mut n, &mut io, POD_A, &req);
    let out = io.take_tx(POD_B);
    assert_eq!(out.len(), 2, "both fragments reach the endpoint");
    for f in &out {
        assert_eq!(&f[30..34], &[10, 244, 0, 3], "to the endpoint");
        assert_eq!(fold(sum(&f[14..34])), 0xffff, "IPv4 checksum");
    }
    assert_eq!(
        u16::from_be_bytes([out[0][36], out[0][37]]),
        5353,
        "the first carries the port"
    );
    // The endpoint's answer, fragmented too: both from the virtual IP.
    let reply = two_fragments(
        pod_mac(1, 3),
        pod_mac(1, 2),
        [10, 244, 0, 3],
        [10, 244, 0, 2],
        (5353, 5000),
        0x4321,
        1800,
    );
    rx(&mut n, &mut io, POD_B, &reply);
    let back = io.take_tx(POD_A);
    assert_eq!(back.len(), 2, "both reply fragments reach the client");
    for f in &back {
        assert_eq!(&f[26..30], &[10, 96, 0, 10], "from the virtual IP");
        assert_eq!(fold(sum(&f[14..34])), 0xffff);
    }
    // Fragments that are no Service's pass untouched (pod to pod).
    let plain = two_fragments(
        pod_mac(1, 2),
        pod_mac(1, 3),
        [10, 244, 0, 2],
        [10, 244, 0, 3],
        (6000, 7000),
        0x5555,
        1500,
    );
    rx(&mut n, &mut io, POD_A, &plain);
    let p = io.take_tx(POD_B);
    assert_eq!(p.len(), 2);
    assert_eq!(p[0], plain[0]);
    assert_eq!(p[1], plain[1]);
    assert!(balanced(&n));
}

#[test]
fn with_two_workers_a_fragment_on_either_gets_the_translation_its_first_one_got() {
    use podpath_dataplane::nat::snat::client_owner;
    use podpath_dataplane::services::table::ServiceTable;
    let table = Arc::new(
        ServiceTable::build(
            &[ServiceSpec::new(
                "default/dns",
                "10.96.0.10",
                53,
                "udp",
                vec![EndpointSpec::ready("10.244.0.3", 5353)],
            )],
            None,
        )
        .unwrap(),
    );
    let (mut w0, mut io0, mut w1, mut io1) = two_workers(Some(table));
    let (t0, r0) = bounded(64);
    let (t1, r1) = bounded(64);
    w0.set_peer_bus(vec![t1], r0);
    w1.set_peer_bus(vec![t0], r1);
    let gw = gateway_mac(ip("10.244.0.1"));
    for (w, io) in [(&mut w0, &mut io0), (&mut w1, &mut io1)] {
        rx(
            w,
            io,
            POD_B,
            &[arp::request(MacAddr(pod_mac(1, 3)), ip("10.244.0.3"), ip("10.244.0.1")).to_vec()],
        );
        io.take_tx(POD_B);
    }
    // A client port owned by worker 1; the first fragment arrives on worker 0.
    let sport = (1000u16..)
        .find(|&p| client_owner(ip("10.244.0.2"), p, 2) == 1)
        .unwrap();
    let [first, later] = two_fragments(
        pod_mac(1, 2),
        gw.0,
        [10, 244, 0, 2],
        [10, 96, 0, 10],
        (sport, 53),
        0x7777,
        2000,
    );
    rx(&mut w0, &mut io0, POD_A, &[first]);
    w1.run_handed_off(&mut io1);
    w1.flush(&mut io1);
    assert_eq!(
        io1.take_tx(POD_B).len(),
        1,
        "worker 1 translated the first fragment"
    );
    // Worker 0 hears of it between bursts; the later fragment is fine on either.
    w0.absorb_peers(&mut io0);
    for (w, io) in [(&mut w0, &mut io0), (&mut w1, &mut io1)] {
        rx(w, io, POD_A, std::slice::from_ref(&later));
        let out = io.take_tx(POD_B);
        assert_eq!(
            out.len(),
            1,
            "the later fragment did not reach the endpoint"
        );
        assert_eq!(&out[0][30..34], &[10, 244, 0, 3]);
    }
}

#[test]
fn fragments_of_a_masqueraded_datagram_follow_the_first_ones_translation_both_ways() {
    use podpath_dataplane::wire::checksum::{fold, sum};
    let (mut n, mut io) = node_with_pod_a(1);
    resolve_ext(&mut n, &mut io);
    let gw = gateway_mac(ip("10.244.0.1")).0;
    let out = two_fragments(
        pod_mac(1, 2),
        gw,
        [10, 244, 0, 2],
        [192, 168, 77, 100],
        (5000, 53),
        0x2468,
        2000,
    );
    rx(&mut n, &mut io, POD_A, &out);
    let up = io.take_tx(UPLINK);
    assert_eq!(up.len(), 2, "both fragments leave");
    for f in &up {
        assert_eq!(&f[26..30], &[192, 168, 77, 11], "from the node");
        assert_eq!(fold(sum(&f[14..34])), 0xffff);
    }
    let nat_port = u16::from_be_bytes([up[0][34], up[0][35]]);
    // The server's answer, fragmented, to the node's NAT port: both to the pod.
    let back = two_fragments(
        [2, 0, 0, 0, 0, 0x64],
        uplink_mac(1).0,
        [192, 168, 77, 100],
        [192, 168, 77, 11],
        (53, nat_port),
        0x1357,
        1800,
    );
    rx(&mut n, &mut io, UPLINK, &back);
    let to_pod = io.take_tx(POD_A);
    assert_eq!(to_pod.len(), 2, "both reply fragments reach the pod");
    for f in &to_pod {
        assert_eq!(&f[30..34], &[10, 244, 0, 2]);
        assert_eq!(fold(sum(&f[14..34])), 0xffff);
    }
    assert_eq!(
        u16::from_be_bytes([to_pod[0][36], to_pod[0][37]]),
        5000,
        "the pod's port"
    );
    assert!(balanced(&n));
}

/// A UDP datagram from pod a with DF clear (etherparse sets DF: cleared here) and a
/// payload of `len` bytes that counts up.
fn big_from_pod_a(dst: [u8; 4], len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect();
    let mut big = udp_from_pod_a(dst, 4000, 4001, 64, &payload);
    big[20] &= !0x40;
    fix_ip_checksum(&mut big);
    big
}

/// Reassembles IPv4 fragments (Ethernet frames, IPv4 at `l3`) as a receiver would:
/// checks each header and returns the whole IPv4 payload.
fn reassemble(pieces: &[Vec<u8>], l3: usize, mtu: usize) -> Vec<u8> {
    let mut whole = Vec::new();
    let mut last_seen = false;
    for p in pieces {
        let h = etherparse::Ipv4HeaderSlice::from_slice(&p[l3..]).unwrap();
        assert!(usize::from(h.total_len()) <= mtu, "a piece fits {mtu}");
        assert!(!h.dont_fragment());
        assert!(podpath_dataplane::wire::checksum::verify(
            &p[l3..l3 + h.slice().len()]
        ));
        let off = usize::from(h.fragments_offset().value()) * 8;
        let body = &p[l3 + h.slice().len()..l3 + usize::from(h.total_len())];
        if whole.len() < off + body.len() {
            whole.resize(off + body.len(), 0);
        }
        whole[off..off + body.len()].copy_from_slice(body);
        last_seen |= !h.more_fragments();
    }
    assert!(last_seen, "a last fragment");
    whole
}

#[test]
fn too_big_for_the_overlay_without_df_is_split_and_each_piece_encapsulated() {
    let (mut n1, mut io1) = node_with_pod_a(1);
    resolve_node_2(&mut n1, &mut io1);
    io1.take_tx(UPLINK);
    // 3 000 bytes of UDP (a datagram the kernel behind an af_packet port reassembled).
    let big = big_from_pod_a([10, 244, 1, 3], 3000);
    rx(&mut n1, &mut io1, POD_A, std::slice::from_ref(&big));
    let out = io1.take_tx(UPLINK);
    assert_eq!(
        out.len(),
        3,
        "3 008 bytes in 1 424-byte pieces (1 450 less 20)"
    );
    for v in &out {
        assert!(
            v.len() <= 1514,
            "each VXLAN packet fits the uplink: {}",
            v.len()
        );
        assert_eq!(&v[36..38], &4789u16.to_be_bytes());
        assert_eq!(u16::from_be_bytes([v[16], v[17]]) as usize, v.len() - 14);
    }
    let inner: Vec<Vec<u8>> = out.iter().map(|v| v[50..].to_vec()).collect();
    assert_eq!(reassemble(&inner, 14, 1450), big[34..].to_vec());
    assert_eq!(
        get(&n1.counters.stages[StageId::Ip4Fragment.index()].packets),
        1
    );
    assert!(io1.take_tx(POD_A).is_empty(), "no ICMP without DF");
    assert!(balanced(&n1));
    // Node 2 decapsulates each piece to pod b.
    let (mut n2, mut io2) = node(2);
    rx(
        &mut n2,
        &mut io2,
        POD_B,
        &[arp::request(MacAddr(pod_mac(2, 3)), ip("10.244.1.3"), ip("10.244.1.1")).to_vec()],
    );
    io2.take_tx(POD_B);
    rx(&mut n2, &mut io2, UPLINK, &out);
    let got = io2.take_tx(POD_B);
    assert_eq!(got.len(), 3, "drops: {:?}", nonzero_drops(&n2));
    assert_eq!(reassemble(&got, 14, 1450), big[34..].to_vec());
    assert!(balanced(&n2));
}

#[test]
fn a_datagram_bigger_than_the_output_port_is_fragmented_after_its_translation() {
    // Masqueraded to the external host: the uplink (1 500) takes it in three pieces,
    // and the UDP checksum snat fixed covers the whole datagram.
    let (mut n, mut io) = node_with_pod_a(1);
    resolve_ext(&mut n, &mut io);
    io.take_tx(UPLINK);
    let big = big_from_pod_a([192, 168, 77, 100], 4000);
    rx(&mut n, &mut io, POD_A, std::slice::from_ref(&big));
    let out = io.take_tx(UPLINK);
    assert_eq!(out.len(), 3, "drops: {:?}", nonzero_drops(&n));
    for v in &out {
        assert_eq!(&v[26..30], &[192, 168, 77, 11], "from the node IP");
        assert_eq!(&v[..6], &[2, 0, 0, 0, 0, 0x64]);
    }
    let udp = reassemble(&out, 14, 1500);
    assert_eq!(&udp[8..], &big[42..], "the payload, whole");
    let mut pseudo = vec![192, 168, 77, 11, 192, 168, 77, 100, 0, 17];
    pseudo.extend_from_slice(&u16::try_from(udp.len()).unwrap().to_be_bytes());
    pseudo.extend_from_slice(&udp);
    assert_eq!(
        podpath_dataplane::wire::checksum::checksum(&pseudo),
        0,
        "the UDP checksum verifies over the reassembled datagram"
    );
    assert_eq!(
        get(&n.counters.replicated),
        2,
        "two copies, the original last"
    );
    assert!(balanced(&n));
    // With DF, routed: fragmentation needed to the pod, nothing leaves.
    let mut df = big.clone();
    df[20] |= 0x40;
    fix_ip_checksum(&mut df);
    rx(&mut n, &mut io, POD_A, &[df]);
    assert!(io.take_tx(UPLINK).is_empty());
    let err = io.take_tx(POD_A);
    assert_eq!(err.len(), 1);
    assert_eq!((err[0][34], err[0][35]), (3, 4), "fragmentation needed");
    assert!(balanced(&n));
}

#[test]
fn bridged_frames_bigger_than_the_pod_port_split_or_drop_by_reason() {
    // Pod a to pod b (1 450): DF clear is split, DF set is dropped (a bridge sends no
    // ICMP), a big non-IPv4 frame is dropped.
    let (mut n, mut io) = node_with_pod_a(1);
    learn_pod_b(&mut n, &mut io);
    let to_b = |df: bool| {
        let payload: Vec<u8> = (0..3000).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let mut v = Vec::new();
        PacketBuilder::ethernet2(pod_mac(1, 2), pod_mac(1, 3))
            .ipv4([10, 244, 0, 2], [10, 244, 0, 3], 64)
            .udp(4000, 4001)
            .write(&mut v, &payload)
            .unwrap();
        if !df {
            v[20] &= !0x40;
            fix_ip_checksum(&mut v);
        }
        v
    };
    let big = to_b(false);
    rx(&mut n, &mut io, POD_A, std::slice::from_ref(&big));
    let got = io.take_tx(POD_B);
    assert_eq!(got.len(), 3, "drops: {:?}", nonzero_drops(&n));
    assert_eq!(reassemble(&got, 14, 1450), big[34..].to_vec());
    rx(&mut n, &mut io, POD_A, &[to_b(true)]);
    the_only_drop_is(&n, DropReason::Ip4FragDontFragment, 1);
    let mut arp_big = vec![0u8; 2000];
    arp_big[..6].copy_from_slice(&pod_mac(1, 3));
    arp_big[6..12].copy_from_slice(&pod_mac(1, 2));
    arp_big[12..14].copy_from_slice(&[0x88, 0xb5]);
    rx(&mut n, &mut io, POD_A, &[arp_big]);
    assert_eq!(drops(&n, DropReason::Ip4FragNotIp4), 1);
    assert!(io.take_tx(POD_B).is_empty());
    assert!(balanced(&n));
}

fn nonzero_drops(p: &Pipeline<MemFrame>) -> Vec<(&'static str, u64)> {
    DropReason::ALL
        .iter()
        .map(|&r| (r.name(), drops(p, r)))
        .filter(|&(_, c)| c > 0)
        .collect()
}

#[test]
fn a_pods_egress_on_the_wrong_worker_is_handed_to_its_clients_worker() {
    let (mut w0, mut io0, mut w1, mut io1) = two_workers(None);
    let gw = gateway_mac(ip("10.244.0.1"));
    for (w, io) in [(&mut w0, &mut io0), (&mut w1, &mut io1)] {
        rx(
            w,
            io,
            POD_A,
            &[arp::request(MacAddr(pod_mac(1, 2)), ip("10.244.0.2"), ip("10.244.0.1")).to_vec()],
        );
        io.take_tx(POD_A);
        resolve_ext(w, io);
    }
    // Client port 5558 belongs to worker 1; its first packet arrives at worker 0.
    let mut out = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1, 2), gw.0)
        .ipv4([10, 244, 0, 2], [192, 168, 77, 100], 64)
        .udp(5558, 53)
        .write(&mut out, b"query")
        .unwrap();
    rx(&mut w0, &mut io0, POD_A, &[out]);
    assert!(
        io0.take_tx(UPLINK).is_empty(),
        "worker 0 did not translate it"
    );
    assert_eq!(get(&w0.counters.handoff_out), 1, "handed to worker 1");
    assert_eq!(w0.features.nat.conntrack.len(), 0);
    assert_eq!(w1.run_handed_off(&mut io1), 1);
    w1.flush(&mut io1);
    let sent = io1.take_tx(UPLINK);
    assert_eq!(sent.len(), 1, "the owner masqueraded it");
    assert_eq!(&sent[0][26..30], &[192, 168, 77, 11]);
    let natport = u16::from_be_bytes([sent[0][34], sent[0][35]]);
    assert!(
        (40500..=40999).contains(&natport),
        "worker 1's slice: {natport}"
    );
    assert_eq!(w1.features.nat.conntrack.len(), 1);
    assert!(balanced_pair(&w0, &w1));
}

#[test]
fn arp_between_pods_is_bridged_not_answered() {
    let (mut n, mut io) = node(1);
    learn_pod_b(&mut n, &mut io);
    // Pod a asks for pod b (not the gateway): the bridge carries the request.
    rx(
        &mut n,
        &mut io,
        POD_A,
        &[arp::request(MacAddr(pod_mac(1, 2)), ip("10.244.0.2"), ip("10.244.0.3")).to_vec()],
    );
    assert!(io.take_tx(POD_A).is_empty(), "the dataplane did not answer");
    let got = io.take_tx(POD_B);
    assert_eq!(got.len(), 1, "flooded to pod b");
    assert_eq!(
        u16::from_be_bytes([got[0][20], got[0][21]]),
        1,
        "the request itself"
    );
    assert!(balanced(&n));
}

/// Every edge a stage declares (`pipeline/registry.rs`) is taken by some scenario
/// of this file: the declarations are not stale. (The runner asserts the converse,
/// that no stage takes an edge it does not declare, in every debug build.) Runs the
/// scenarios again on this thread, whose edges the runner records.
#[cfg(debug_assertions)]
#[test]
fn every_declared_edge_is_taken() {
    use podpath_dataplane::pipeline::registry::seen;
    pod_to_remote_pod_round_trip_through_vxlan();
    bad_vxlan_is_dropped_by_reason();
    ttl_expiry_and_too_big_answer_with_icmp();
    workers_share_what_arp_taught_them();
    replies_on_the_wrong_worker_are_handed_to_the_owner();
    icmp_errors_on_the_wrong_worker_are_handed_to_the_owner();
    a_full_handoff_ring_drops_by_reason_and_balances();
    service_connections_live_on_their_clients_worker();
    snat_ports_exhausted_is_counted_when_the_slice_is_used_up();
    arp_queue_full_and_arp_timeout();
    lb_no_endpoint_for_a_local_node_port_without_a_local_endpoint();
    icmp_rate_limited_past_the_burst();
    no_icmp_error_about_an_icmp_error_nor_a_later_fragment();
    vxlan_bad_header_and_outer_fragment();
    affinity_sticks_to_its_endpoint_and_lets_go_when_the_endpoint_goes();
    a_decapsulated_reply_handed_to_its_owner_is_restored();
    more_drop_reasons_each_counted_alone();
    with_two_workers_one_worker_owns_every_connection_of_an_affinity_client();
    a_client_port_reused_after_time_wait_gets_the_endpoint_picked_now();
    removing_an_endpoint_sweeps_its_udp_connections_keeps_tcp_and_settles_after_the_sweep();
    the_service_range_refuses_undefined_ports_and_drops_unallocated_addresses();
    an_endpoints_icmp_error_reaches_the_client_from_the_virtual_ip_about_what_it_sent();
    too_big_for_the_overlay_on_a_node_port_the_error_goes_to_the_client_about_what_it_sent();
    fragments_of_a_service_datagram_follow_the_first_ones_translation_both_ways();
    with_two_workers_a_fragment_on_either_gets_the_translation_its_first_one_got();
    fragments_of_a_masqueraded_datagram_follow_the_first_ones_translation_both_ways();
    too_big_for_the_overlay_without_df_is_split_and_each_piece_encapsulated();
    a_datagram_bigger_than_the_output_port_is_fragmented_after_its_translation();
    bridged_frames_bigger_than_the_pod_port_split_or_drop_by_reason();
    a_pods_egress_on_the_wrong_worker_is_handed_to_its_clients_worker();
    arp_between_pods_is_bridged_not_answered();
    let missing: Vec<String> = StageId::ALL
        .iter()
        .flat_map(|&st| st.successors().into_iter().map(move |to| (st, to)))
        .filter(|&(st, to)| !seen::taken(st, to))
        .map(|(st, to)| format!("{} -> {}", st.name(), to.name()))
        .collect();
    assert!(
        missing.is_empty(),
        "declared edges no scenario takes: {missing:?}"
    );
}

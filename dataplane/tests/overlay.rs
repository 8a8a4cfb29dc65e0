//! The overlay stages on the memory backend: two node pipelines wired back to back
//! (node 1's uplink output is node 2's uplink input), crafted frames in, frames and
//! drop reasons out.
use std::sync::Arc;

use crossbeam::channel::bounded;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use podpath_dataplane::pipeline::counters::get;
use podpath_dataplane::pipeline::{
    DropReason, Pipeline, PipelineConfig, PortIo, Tracer, WorkerCounters,
};
use podpath_dataplane::port::{MemFrame, MemIo};
use podpath_dataplane::stages::arp;
use podpath_dataplane::tables::l3::gateway_mac;
use podpath_dataplane::tables::{PortEntry, PortMap, L3};
use podpath_dataplane::wire::MacAddr;
use podpath_proto::{validate, NodeSpec, RemoteSpec};

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
    let cfg = PipelineConfig {
        worker: 0,
        mac_capacity: 64,
        mac_ageing_ticks: 300 * HZ,
        tsc_hz: HZ,
        conntrack: Default::default(),
        nat_range: (32768, 60999),
        workers: 1,
    };
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
    get(&p.counters.drops[r.index()])
}

fn balanced(p: &Pipeline<MemFrame>) -> bool {
    let c = &p.counters;
    c.rx_total() + get(&c.replicated) == c.tx_total() + c.drops_total()
}

/// An ARP reply from (mac, ip) to (dst mac, dst ip).
/// Two workers of node 1 (NAT range split between them, hand-off rings wired both
/// ways), with a Service table when given.
fn two_workers(
    services: Option<Arc<podpath_dataplane::tables::services::ServiceTable>>,
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
    let (t0, r0) = bounded(64);
    let (t1, r1) = bounded(64);
    w0.set_handoff(vec![None, Some(t1)], r0);
    w1.set_handoff(vec![Some(t0), None], r1);
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
    rx(
        &mut n1,
        &mut io1,
        UPLINK,
        &[arp_reply(
            uplink_mac(2),
            ip("192.168.77.12"),
            uplink_mac(1),
            ip("192.168.77.11"),
        )],
    );
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
    w0.set_neighbor_bus(vec![tx1], rx0);
    w1.set_neighbor_bus(vec![tx0], rx1);
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
    rx(
        &mut w1,
        &mut io1,
        UPLINK,
        &[arp_reply(
            uplink_mac(2),
            ip("192.168.77.12"),
            uplink_mac(1),
            ip("192.168.77.11"),
        )],
    );
    assert!(io0.take_tx(UPLINK).is_empty());
    w0.absorb_neighbors(&mut io0);
    w0.flush(&mut io0);
    assert_eq!(
        io0.take_tx(UPLINK).len(),
        1,
        "worker 0 sent its held packet with worker 1's answer"
    );
}

#[test]
fn replies_on_the_wrong_worker_are_handed_to_the_owner() {
    // Two workers of node 1 with the NAT range split between them.
    let (mut w0, mut io0, mut w1, mut io1) = two_workers(None);
    // Worker 1 knows the pod and the external host; the pod's UDP leaves through it.
    let gw = gateway_mac(ip("10.244.0.1"));
    rx(
        &mut w1,
        &mut io1,
        POD_A,
        &[arp::request(MacAddr(pod_mac(1, 2)), ip("10.244.0.2"), ip("10.244.0.1")).to_vec()],
    );
    io1.take_tx(POD_A);
    rx(
        &mut w1,
        &mut io1,
        UPLINK,
        &[arp_reply(
            MacAddr([2, 0, 0, 0, 0, 0x64]),
            ip("192.168.77.100"),
            uplink_mac(1),
            ip("192.168.77.11"),
        )],
    );
    let mut out = Vec::new();
    PacketBuilder::ethernet2(pod_mac(1, 2), gw.0)
        .ipv4([10, 244, 0, 2], [192, 168, 77, 100], 64)
        .udp(5555, 53)
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
    let mut buf = Vec::with_capacity(32);
    assert_eq!(w1.run_handed_off(&mut io1, &mut buf), 1);
    w1.flush(&mut io1);
    let got = io1.take_tx(POD_A);
    assert_eq!(got.len(), 1, "the owner translated it back to the pod");
    assert_eq!(&got[0][30..34], &[10, 244, 0, 2]);
    assert_eq!(u16::from_be_bytes([got[0][36], got[0][37]]), 5555);
    // Totals balance across the two workers.
    let total = |f: &dyn Fn(&WorkerCounters) -> u64| f(&w0.counters) + f(&w1.counters);
    assert_eq!(
        total(&|c| c.rx_total() + get(&c.replicated) + get(&c.handoff_in)),
        total(&|c| c.tx_total() + c.drops_total() + get(&c.handoff_out))
    );
}

#[test]
fn service_connections_live_on_their_clients_worker() {
    use podpath_dataplane::stages::lb::client_owner;
    use podpath_dataplane::tables::services::ServiceTable;
    let svc = podpath_proto::ServiceSpec {
        name: "default/web".into(),
        vip: "10.96.0.10".into(),
        port: 80,
        protocol: "udp".into(),
        endpoints: vec![podpath_proto::EndpointSpec {
            ip: "10.244.0.3".into(),
            port: 8080,
            weight: 1,
            ready: true,
            terminating: false,
        }],
        affinity_timeout: None,
        node_port: None,
        external_traffic_policy: None,
    };
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
    let mut buf = Vec::with_capacity(32);
    w1.run_handed_off(&mut io1, &mut buf);
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
    w1.run_handed_off(&mut io1, &mut buf);
    w1.flush(&mut io1);
    let back = io1.take_tx(POD_A);
    assert_eq!(back.len(), 1);
    assert_eq!(&back[0][26..30], &[10, 96, 0, 10], "from the virtual IP");
    assert_eq!(u16::from_be_bytes([back[0][34], back[0][35]]), 80);
}

//! The contract tests of arp, ip4-local, icmp-error and ip4-rewrite, grout's way:
//! each stage's next stages and drop reasons, checked on crafted frames run through
//! the stage alone (ip4-lookup's own is in `lookup.rs`).
use crate::ip4::L3;
use crate::pipeline::stage::{run_alone, Ctx, Features};
use crate::pipeline::{
    DropReason, IcmpKind, Meta, Next, StageId, WorkerCounters, FRAG_FIRST, OUT_BRIDGE,
};
use crate::port::PortMap;
use crate::services::ServiceTable;
use crate::wire::MacAddr;

const POD_A: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0, 2];
const POD_B: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0, 3];
const POD: [u8; 4] = [10, 244, 0, 2];
const GATEWAY: [u8; 4] = [10, 244, 0, 1];

/// Ethernet + IPv4 (header checksum filled) carrying `l4`; `frag` is the flags and
/// fragment offset field (0x4000: DF, 0x2000: MF).
fn ip4(src: [u8; 4], dst: [u8; 4], proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    crate::pipeline::fixture::ip4(
        [0x0a, 0x58, 0x0a, 0xf4, 0, 1],
        POD_A,
        src,
        dst,
        proto,
        frag,
        l4,
    )
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    crate::pipeline::fixture::udp(sport, dport, payload)
}

/// An ICMP message of this type (echo identifier 7), with 8 bytes of data.
fn icmp(kind: u8) -> Vec<u8> {
    vec![kind, 0, 0, 0, 0, 7, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8]
}

/// The metadata eth-input gives an unfragmented IPv4 packet (ip4-lookup keeps it).
fn parsed(in_port: u16, proto: u8) -> Meta {
    Meta {
        in_port,
        l3: 14,
        l4: 34,
        ethertype: 0x0800,
        proto,
        ..Meta::default()
    }
}

/// An ARP request from (`mac`, `ip`) for `target`, as eth-input leaves it.
fn who_has(in_port: u16, mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) -> (Vec<u8>, Meta) {
    let f = crate::ip4::arp::request(
        MacAddr(mac),
        u32::from_be_bytes(ip),
        u32::from_be_bytes(target),
    );
    let m = Meta {
        in_port,
        l3: 14,
        ethertype: 0x0806,
        ..Meta::default()
    };
    (f.to_vec(), m)
}

/// Node 1 with node 2 as its remote; the uplink, the host port and 2 pod port(s).
fn setup() -> (L3, PortMap) {
    (
        crate::pipeline::fixture::l3(true),
        crate::pipeline::fixture::ports(2),
    )
}

use crate::pipeline::fixture::ctx;

#[test]
fn arp_sends_each_kind_of_message_to_its_declared_next() {
    let (l3, ports) = setup();
    let (services, counters) = (ServiceTable::default(), WorkerCounters::default());
    let cx = ctx(&l3, &ports, &services, &counters);
    let mut feat = Features::for_tests();
    let (node, node2) = ([192, 168, 77, 11], [192, 168, 77, 12]);
    let node2_mac = [0x0a, 0x58, 0x0a, 0xf4, 1, 1];
    let mut reply = who_has(0, node2_mac, node2, node);
    reply.0[21] = 2; // a reply to the node
    let mut tagged = who_has(2, POD_A, POD, GATEWAY);
    tagged.0.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
    tagged.1.l3 = 18;
    let mut bad = who_has(2, POD_A, POD, GATEWAY);
    bad.0[15] = 6; // hardware type 6 (eth-input drops it first)
    let got = run_alone(
        StageId::Arp,
        &cx,
        &mut feat,
        vec![
            who_has(2, POD_A, POD, GATEWAY), // the pods' gateway: answered
            who_has(2, POD_A, POD, [10, 244, 0, 3]), // another pod: bridged
            who_has(0, node2_mac, node2, node), // the node IP on the uplink
            who_has(0, node2_mac, node2, [192, 168, 77, 50]), // someone else's
            reply,
            who_has(1, [2, 0, 0, 0, 0, 9], node, [10, 244, 1, 5]), // the kernel: proxy
            tagged,
            bad,
        ],
    );
    assert_eq!(
        got,
        [
            Next::Port(2),
            Next::Stage(StageId::Bridge),
            Next::Port(0),
            Next::Drop(DropReason::ArpNotForUs),
            Next::Drop(DropReason::ArpReplyLearned),
            Next::Port(1),
            Next::Drop(DropReason::ArpVlanTagged),
            Next::Drop(DropReason::ArpMalformed),
        ]
    );
    assert!(
        feat.ip4.neighbors.lookup(0xc0a8_4d0c, 1).is_some(),
        "learned"
    );
    // Without a node identity ARP is bridged.
    let none = L3::empty();
    let cx = Ctx { l3: &none, ..cx };
    let got = run_alone(
        StageId::Arp,
        &cx,
        &mut feat,
        vec![who_has(2, POD_A, POD, GATEWAY)],
    );
    assert_eq!(got, [Next::Stage(StageId::Bridge)]);
    // Not produced here: arp-queue-full, arp-timeout and arp-no-buffer are the
    // runner's, for the packets it holds (Next::Resolve) and the requests it sends.
}

#[test]
fn ip4_local_sends_each_kind_of_packet_to_its_declared_next() {
    let (l3, ports) = setup();
    let (services, counters) = (ServiceTable::default(), WorkerCounters::default());
    let cx = ctx(&l3, &ports, &services, &counters);
    let mut feat = Features::for_tests();
    let echo = |frag: u16| ip4(POD, GATEWAY, 1, frag, &icmp(8));
    let first = Meta {
        frag: FRAG_FIRST,
        ..parsed(2, 1)
    };
    let not_echo = ip4(POD, GATEWAY, 17, 0, &udp(5000, 53, b"x"));
    let got = run_alone(
        StageId::Ip4Local,
        &cx,
        &mut feat,
        vec![
            (echo(0), parsed(2, 1)), // ping: answered
            (not_echo, parsed(2, 17)),
            (ip4(POD, GATEWAY, 1, 0, &icmp(0)), parsed(2, 1)), // an echo reply
            (echo(0x2000), first),                             // fragmented
        ],
    );
    assert_eq!(
        got,
        [
            Next::Stage(StageId::Ip4Lookup),
            Next::Drop(DropReason::Ip4LocalUnsupported),
            Next::Drop(DropReason::Ip4LocalUnsupported),
            Next::Drop(DropReason::Ip4LocalFragment),
        ]
    );
}

#[test]
fn icmp_error_sends_each_kind_of_packet_to_its_declared_next() {
    let (l3, ports) = setup();
    let (services, counters) = (ServiceTable::default(), WorkerCounters::default());
    let cx = ctx(&l3, &ports, &services, &counters);
    let mut feat = Features::for_tests();
    let asking = |dst: [u8; 4], proto: u8, frag: u16, kind: IcmpKind| {
        let l4 = if proto == 1 {
            icmp(11)
        } else {
            udp(5000, 33434, b"probe")
        };
        let mut m = parsed(2, proto);
        m.set_icmp(kind);
        (ip4(POD, dst, proto, frag, &l4), m)
    };
    let ttl = |dst| asking(dst, 17, 0, IcmpKind::TimeExceeded);
    let got = run_alone(
        StageId::IcmpError,
        &cx,
        &mut feat,
        vec![
            ttl([10, 244, 1, 5]), // time exceeded
            asking([203, 0, 113, 10], 17, 0x4000, IcmpKind::FragNeeded(1450)), // too big
            ttl([255, 255, 255, 255]), // a broadcast
            asking([10, 244, 1, 5], 17, 185, IcmpKind::TimeExceeded), // a later fragment
            asking([10, 244, 1, 5], 1, 0, IcmpKind::TimeExceeded), // an ICMP error
        ],
    );
    assert_eq!(
        got,
        [
            Next::Stage(StageId::Ip4Lookup),
            Next::Stage(StageId::Ip4Lookup),
            Next::Drop(DropReason::IcmpNotAllowed),
            Next::Drop(DropReason::IcmpNotAllowed),
            Next::Drop(DropReason::IcmpAboutIcmpError),
        ]
    );
    // The worker's bucket holds 50 errors (two spent above); then time exceeded is
    // counted as such, and other errors as rate-limited.
    let got = run_alone(
        StageId::IcmpError,
        &cx,
        &mut feat,
        (0..32).map(|_| ttl([10, 244, 1, 5])).collect(),
    );
    assert_eq!(got, vec![Next::Stage(StageId::Ip4Lookup); 32]);
    let mut last: Vec<_> = (0..16).map(|_| ttl([10, 244, 1, 5])).collect();
    last.push(ttl([10, 244, 1, 5]));
    last.push(asking(
        [203, 0, 113, 10],
        17,
        0x4000,
        IcmpKind::FragNeeded(1450),
    ));
    let got = run_alone(StageId::IcmpError, &cx, &mut feat, last);
    let mut want = vec![Next::Stage(StageId::Ip4Lookup); 16];
    want.push(Next::Drop(DropReason::Ip4TtlExpired));
    want.push(Next::Drop(DropReason::IcmpRateLimited));
    assert_eq!(got, want);
    let none = L3::empty();
    let cx = Ctx { l3: &none, ..cx };
    let got = run_alone(
        StageId::IcmpError,
        &cx,
        &mut feat,
        vec![ttl([10, 244, 1, 5])],
    );
    assert_eq!(got, [Next::Drop(DropReason::Ip4NoNode)]);
    // icmp-no-room: a_buffer_too_small_for_the_error_drops_by_name.
}

#[test]
fn a_buffer_too_small_for_the_error_drops_by_name() {
    use crate::pipeline::stage::run_alone_frames;
    use crate::pipeline::Frame;
    let (l3, ports) = setup();
    let (services, counters) = (ServiceTable::default(), WorkerCounters::default());
    let cx = ctx(&l3, &ports, &services, &counters);
    let frame = ip4(POD, [10, 244, 1, 5], 17, 0, &udp(5000, 33434, b"probe"));
    let mut m = parsed(2, 17);
    m.set_icmp(IcmpKind::TimeExceeded);
    // The error (Ethernet, IPv4, ICMP, the quoted header and 8 bytes) is 70 bytes,
    // longer than the 47-byte probe: no room behind it, then just enough.
    let room = 14 + 20 + 8 + 28 - frame.len();
    let mut frames = Vec::new();
    for tail in [room - 1, room] {
        let mut f = crate::port::MemFrame::with_room(&frame, 128, tail);
        *f.meta_mut() = m;
        frames.push(f);
    }
    let got = run_alone_frames(StageId::IcmpError, &cx, &mut Features::for_tests(), frames);
    assert_eq!(
        got,
        [
            Next::Drop(DropReason::IcmpNoRoom),
            Next::Stage(StageId::Ip4Lookup)
        ]
    );
}

#[test]
fn ip4_rewrite_sends_each_kind_of_packet_to_its_declared_next() {
    let (l3, ports) = setup();
    let (services, counters) = (ServiceTable::default(), WorkerCounters::default());
    let cx = ctx(&l3, &ports, &services, &counters);
    let mut feat = Features::for_tests();
    // As ip4-lookup leaves them: to a local pod (resolved on the bridge), to the
    // node's kernel (on the host port).
    let routed = |dst: [u8; 4], frag: u16, payload: usize, nh: [u8; 4], out: u16| {
        let m = Meta {
            nh_ip: u32::from_be_bytes(nh),
            out,
            ..parsed(2, 17)
        };
        (
            ip4(POD, dst, 17, frag, &udp(5000, 53, &vec![0; payload])),
            m,
        )
    };
    let pod_b = [10, 244, 0, 3];
    let node = [192, 168, 77, 11];
    let got = run_alone(
        StageId::Ip4Rewrite,
        &cx,
        &mut feat,
        vec![
            routed(pod_b, 0, 10, pod_b, OUT_BRIDGE),
            routed(node, 0, 10, node, 1),
        ],
    );
    assert_eq!(got, [Next::Resolve, Next::Resolve]);
    // Pod b asks for its gateway: arp learns it behind port 3.
    let got = run_alone(
        StageId::Arp,
        &cx,
        &mut feat,
        vec![who_has(3, POD_B, pod_b, GATEWAY)],
    );
    assert_eq!(got, [Next::Port(3)]);
    // 1472 bytes of payload: 1500 of IPv4, the port's MTU; 1473 is one too many.
    let got = run_alone(
        StageId::Ip4Rewrite,
        &cx,
        &mut feat,
        vec![
            routed(pod_b, 0, 10, pod_b, OUT_BRIDGE),
            routed(pod_b, 0x4000, 1472, pod_b, OUT_BRIDGE),
            routed(pod_b, 0x4000, 1473, pod_b, OUT_BRIDGE), // DF: fragmentation needed
            routed(pod_b, 0, 1473, pod_b, OUT_BRIDGE),      // the runner splits it
        ],
    );
    assert_eq!(
        got,
        [
            Next::Port(3),
            Next::Port(3),
            Next::Stage(StageId::IcmpError),
            Next::Port(3),
        ]
    );
    // ip4-rewrite declares no drop reason.
    assert!(StageId::Ip4Rewrite.drops().is_empty());
}

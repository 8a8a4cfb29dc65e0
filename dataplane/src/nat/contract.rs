//! The contract tests of snat and snat-reply, grout's way: each stage's next stages
//! and drop reasons, checked on crafted frames run through the stage alone.
use crate::ip4::L3;
use crate::nat::snat::{client_owner, NatPorts};
use crate::pipeline::stage::{run_alone, Ctx, Features};
use crate::pipeline::{DropReason, Meta, Next, StageId, WorkerCounters, FRAG_LATER};
use crate::port::PortMap;
use crate::services::ServiceTable;
use crate::wire::ipv4;
use podpath_proto::{EndpointSpec, NodeSpec, ServiceSpec};

const POD: [u8; 4] = [10, 244, 0, 2];
const NODE: [u8; 4] = [192, 168, 77, 11];
const SERVER: [u8; 4] = [203, 0, 113, 10];
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;

/// Ethernet + IPv4 (header checksum filled) carrying `l4`; `frag` is the flags and
/// fragment offset field.
fn ip4(src: [u8; 4], dst: [u8; 4], proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    crate::pipeline::fixture::ip4(
        [2, 0, 0, 0, 0, 0],
        [0x0a, 0x58, 0x0a, 0xf4, 0, 2],
        src,
        dst,
        proto,
        frag,
        l4,
    )
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    crate::pipeline::fixture::tcp(sport, dport, flags)
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    crate::pipeline::fixture::udp(sport, dport, &[0; 4])
}

/// As eth-input and ip4-lookup leave a packet: parsed, IPv4 at 14, L4 at 34 (none
/// for a later fragment), out of the uplink via the underlay gateway.
fn packet(in_port: u16, src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> (Vec<u8>, Meta) {
    let m = Meta {
        in_port,
        l3: 14,
        l4: 34,
        ethertype: 0x0800,
        proto,
        nh_ip: 0xc0a8_4d01,
        out: 0,
        ..Meta::default()
    };
    (ip4(src, dst, proto, 0, l4), m)
}

/// Pod egress through snat.
fn out(l4: &[u8], proto: u8) -> (Vec<u8>, Meta) {
    packet(2, POD, SERVER, proto, l4)
}

/// The server's answer to the node, on the uplink, for snat-reply.
fn back(dport: u16, flags: u8) -> (Vec<u8>, Meta) {
    packet(0, SERVER, NODE, 6, &tcp(443, dport, flags))
}

fn later_fragment() -> (Vec<u8>, Meta) {
    let (mut f, mut m) = out(&[0; 16], 17);
    f[20..22].copy_from_slice(&185u16.to_be_bytes());
    ipv4::Packet::new_unchecked(&mut f[14..]).fill_checksum();
    m.l4 = 0;
    m.frag = FRAG_LATER;
    (f, m)
}

fn setup() -> (L3, PortMap) {
    // The fixture's node, with an underlay gateway (SNAT's replies come from it).
    let node = NodeSpec {
        underlay_gateway: Some("192.168.77.1".into()),
        ..crate::pipeline::fixture::node_spec()
    };
    let l3 = L3::build(&node, &[]).unwrap();
    let ports = crate::pipeline::fixture::ports(1);
    (l3, ports)
}

/// One worker's state as worker 0 of two.
fn first_of_two() -> Features {
    let mut feat = Features::for_tests();
    feat.nat.owners.workers = 2;
    feat.nat.ports = NatPorts::for_worker(32768, 60999, 0, 2);
    feat
}

#[test]
fn snat_sends_each_kind_of_packet_to_its_declared_next() {
    let (l3, ports) = setup();
    let (services, counters) = (ServiceTable::default(), WorkerCounters::default());
    let cx = crate::pipeline::fixture::ctx(&l3, &ports, &services, &counters);
    let mut feat = Features::for_tests();
    let got = run_alone(
        StageId::Snat,
        &cx,
        &mut feat,
        vec![
            out(&tcp(40000, 443, SYN), 6),       // a new TCP connection
            out(&udp(40001, 53), 17),            // UDP
            out(&[8, 0, 0, 0, 0, 7, 0, 1], 1),   // ICMP echo
            out(&tcp(40002, 443, SYN | FIN), 6), // flags no connection carries
            out(&[0; 8], 47),                    // GRE: no ports
            out(&[3, 1, 0, 0, 0, 0, 0, 0], 1),   // an ICMP error: no identifier
            later_fragment(),                    // first fragment never seen
        ],
    );
    assert_eq!(
        got,
        [
            Next::Stage(StageId::Ip4Rewrite),
            Next::Stage(StageId::Ip4Rewrite),
            Next::Stage(StageId::Ip4Rewrite),
            Next::Drop(DropReason::CtInvalid),
            Next::Drop(DropReason::SnatUnsupported),
            Next::Drop(DropReason::SnatUnsupported),
            Next::Drop(DropReason::SnatFragment),
        ]
    );

    // Two workers: a flow whose client belongs to the other one is handed to it.
    let mut two = first_of_two();
    let theirs = (40000..)
        .find(|&p| client_owner(0x0af4_0002, p, 2) == 1)
        .unwrap();
    let mine = (40000..)
        .find(|&p| client_owner(0x0af4_0002, p, 2) == 0)
        .unwrap();
    let got = run_alone(
        StageId::Snat,
        &cx,
        &mut two,
        vec![out(&udp(theirs, 53), 17), out(&udp(mine, 53), 17)],
    );
    assert_eq!(got, [Next::Handoff(1), Next::Stage(StageId::Ip4Rewrite)]);

    // A slice of one NAT port: a second flow to the same server port finds none.
    let mut one = Features::for_tests();
    one.nat.ports = NatPorts::for_worker(40000, 40000, 0, 1);
    let got = run_alone(
        StageId::Snat,
        &cx,
        &mut one,
        vec![out(&udp(5000, 53), 17), out(&udp(5001, 53), 17)],
    );
    assert_eq!(
        got,
        [
            Next::Stage(StageId::Ip4Rewrite),
            Next::Drop(DropReason::SnatPortsExhausted)
        ]
    );

    // A full table: one established (assured) connection, room for one only.
    let mut full = Features::for_tests();
    let step = |feat: &mut Features, st, p: (Vec<u8>, Meta)| run_alone(st, &cx, feat, vec![p]);
    assert_eq!(
        step(&mut full, StageId::Snat, out(&tcp(40000, 443, SYN), 6)),
        [Next::Stage(StageId::Ip4Rewrite)]
    );
    assert_eq!(
        step(&mut full, StageId::SnatReply, back(32768, SYN | ACK)),
        [Next::Stage(StageId::Ip4Lookup)]
    );
    assert_eq!(
        step(&mut full, StageId::Snat, out(&tcp(40000, 443, ACK), 6)),
        [Next::Stage(StageId::Ip4Rewrite)]
    );
    assert!(full.nat.conntrack.set_capacity(1));
    assert_eq!(
        step(&mut full, StageId::Snat, out(&tcp(40001, 443, SYN), 6)),
        [Next::Drop(DropReason::CtTableFull)]
    );

    let none = L3::empty();
    let cx = Ctx { l3: &none, ..cx };
    let got = run_alone(
        StageId::Snat,
        &cx,
        &mut feat,
        vec![out(&udp(40003, 53), 17)],
    );
    assert_eq!(got, [Next::Drop(DropReason::Ip4NoNode)]);
    // Not produced here: handoff-full (the runner's, when the owner's ring is full).
}

#[test]
fn snat_reply_sends_each_kind_of_packet_to_its_declared_next() {
    let (l3, ports) = setup();
    let (services, counters) = (ServiceTable::default(), WorkerCounters::default());
    let cx = crate::pipeline::fixture::ctx(&l3, &ports, &services, &counters);
    let mut feat = Features::for_tests();
    // The pod's connection, masqueraded by snat: node:32768, the slice's first port.
    let got = run_alone(
        StageId::Snat,
        &cx,
        &mut feat,
        vec![out(&tcp(40000, 443, SYN), 6)],
    );
    assert_eq!(got, [Next::Stage(StageId::Ip4Rewrite)]);
    let got = run_alone(
        StageId::SnatReply,
        &cx,
        &mut feat,
        vec![
            back(32768, SYN | ACK), // the server's answer: restored to the pod
            back(32768, SYN | FIN), // flags no connection carries
            back(22, SYN),          // for the node's kernel
        ],
    );
    assert_eq!(
        got,
        [
            Next::Stage(StageId::Ip4Lookup),
            Next::Drop(DropReason::CtInvalid),
            Next::Stage(StageId::Ip4Lookup),
        ]
    );

    // With Services, what no masqueraded connection claims may be a NodePort's: lb.
    let services = ServiceTable::build(
        &[ServiceSpec::new(
            "default/web",
            "10.96.0.10",
            80,
            "tcp",
            vec![EndpointSpec::ready("10.244.0.3", 8080)],
        )],
        None,
    )
    .unwrap();
    let with = Ctx {
        services: &services,
        ..cx
    };
    let got = run_alone(StageId::SnatReply, &with, &mut feat, vec![back(22, SYN)]);
    assert_eq!(got, [Next::Stage(StageId::Lb)]);

    // Two workers: a reply to a port of the other worker's slice is handed to it.
    let mut two = first_of_two();
    let got = run_alone(
        StageId::SnatReply,
        &cx,
        &mut two,
        vec![back(60000, SYN | ACK)],
    );
    assert_eq!(got, [Next::Handoff(1)]);
    // Not produced here: handoff-full (the runner's, when the owner's ring is full).
}

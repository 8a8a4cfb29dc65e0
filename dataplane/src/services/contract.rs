//! The contract tests of lb, grout's way: the stage's next stages and drop reasons,
//! checked on crafted frames run through the stage alone.
use crate::ip4::L3;
use crate::nat::snat::{client_owner, NatPorts};
use crate::pipeline::stage::{run_alone, Features};
use crate::pipeline::{DropReason, Meta, Next, StageId, WorkerCounters, FRAG_LATER};
use crate::port::PortMap;
use crate::services::table::NodeInfo;
use crate::services::ServiceTable;
use podpath_proto::{EndpointSpec, NodeSpec, ServiceSpec};

const CLIENT: [u8; 4] = [10, 244, 0, 2];
const ENDPOINT: [u8; 4] = [10, 244, 0, 3];
const CLIENT_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0, 2];
const ENDPOINT_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0, 3];
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

/// Ethernet + IPv4 (header checksum filled) carrying `l4`; `frag` is the flags and
/// fragment offset field.
fn ip4(dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    crate::pipeline::fixture::ip4(dst_mac, [2, 0, 0, 0, 0, 9], src, dst, proto, frag, l4)
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    crate::pipeline::fixture::tcp(sport, dport, flags)
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    crate::pipeline::fixture::udp(sport, dport, &[0; 4])
}

fn meta(in_port: u16, proto: u8) -> Meta {
    Meta {
        in_port,
        l3: 14,
        l4: 34,
        ethertype: 0x0800,
        proto,
        ..Meta::default()
    }
}

/// TCP as eth-input leaves it, from `in_port`, to `dst_mac`.
fn seg(
    in_port: u16,
    dst_mac: [u8; 6],
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    flags: u8,
) -> (Vec<u8>, Meta) {
    let f = ip4(dst_mac, src.0, dst.0, 6, 0, &tcp(src.1, dst.1, flags));
    (f, meta(in_port, 6))
}

fn setup() -> (L3, PortMap, ServiceTable) {
    // The fixture's node, with an underlay gateway (SNAT's replies come from it).
    let node = NodeSpec {
        underlay_gateway: Some("192.168.77.1".into()),
        ..crate::pipeline::fixture::node_spec()
    };
    let l3 = L3::build(&node, &[]).unwrap();
    let port = crate::pipeline::fixture::port;
    let ports = PortMap::build(
        vec![
            port(0, "uplink", None),
            port(1, "host", None),
            port(2, "pod-a", Some(1)),
            port(3, "pod-b", Some(1)),
        ],
        1,
    )
    .with_roles(Some("uplink"), Some("host"));
    let ready = |ip: &str| vec![EndpointSpec::ready(ip, 8080)];
    let specs = [
        // On a LoadBalancer IP too, for sources in 10.0.0.0/8 only.
        ServiceSpec {
            load_balancer_ips: vec!["198.51.100.60".into()],
            load_balancer_source_ranges: vec!["10.0.0.0/8".into()],
            ..ServiceSpec::new("default/web", "10.96.0.10", 80, "tcp", ready("10.244.0.3"))
        },
        // The same endpoint behind another ClusterIP.
        ServiceSpec::new("default/web2", "10.96.0.11", 80, "tcp", ready("10.244.0.3")),
        ServiceSpec::new("default/dns", "10.96.0.20", 53, "udp", vec![]),
        ServiceSpec::new("default/empty", "10.96.0.20", 80, "tcp", vec![]),
        // internalTrafficPolicy Local, its only endpoint on another node.
        ServiceSpec {
            internal_traffic_policy: Some("Local".into()),
            ..ServiceSpec::new(
                "default/local",
                "10.96.0.30",
                80,
                "tcp",
                ready("10.244.1.5"),
            )
        },
    ];
    let info = NodeInfo {
        node_ip: 0xc0a8_4d0b,
        pod_net: (0x0af4_0000, 24),
    };
    let services = ServiceTable::build(&specs, Some(info)).unwrap();
    (l3, ports, services)
}

#[test]
fn lb_sends_each_kind_of_packet_to_its_declared_next() {
    let (l3, ports, services) = setup();
    let counters = WorkerCounters::default();
    let cx = crate::pipeline::fixture::ctx(&l3, &ports, &services, &counters);
    let router = l3.node.as_ref().unwrap().router_mac.0;
    let web = ([10, 96, 0, 10], 80);
    // From the client pod, routed to the gateway's MAC.
    let to =
        |sport: u16, dst: ([u8; 4], u16), flags: u8| seg(2, router, (CLIENT, sport), dst, flags);
    let later = {
        let f = ip4(router, CLIENT, [10, 96, 0, 20], 17, 185, &[0; 16]);
        let m = Meta {
            l4: 0,
            frag: FRAG_LATER,
            ..meta(2, 17)
        };
        (f, m)
    };
    let dns = (
        ip4(router, CLIENT, [10, 96, 0, 20], 17, 0, &udp(5001, 53)),
        meta(2, 17),
    );
    let lb_ip = ([198, 51, 100, 60], 80);
    let outside = seg(0, [2, 0, 0, 0, 0, 0], ([203, 0, 113, 5], 6000), lb_ip, SYN);
    let direct = seg(2, ENDPOINT_MAC, (CLIENT, 5008), (ENDPOINT, 8080), SYN);
    let mut feat = Features::for_tests();
    let got = run_alone(
        StageId::Lb,
        &cx,
        &mut feat,
        vec![
            to(5000, web, SYN),                   // a new connection: to the endpoint
            dns,                                  // no endpoint, UDP: port unreachable
            to(5002, ([10, 96, 0, 20], 80), RST), // no endpoint, and no reset for a reset
            to(5003, ([10, 96, 0, 10], 81), SYN), // a ClusterIP's undefined port: a reset
            to(5004, ([10, 96, 0, 10], 81), RST), // ... unless it is one
            to(5005, ([10, 96, 0, 99], 80), SYN), // no ClusterIP at all
            to(5006, web, SYN | FIN),             // flags no connection carries
            to(5000, ([10, 96, 0, 11], 80), SYN), // the endpoint's reply tuple is taken
            to(5007, ([10, 96, 0, 30], 80), SYN), // Local, no endpoint on this node
            later,                                // its first fragment was never seen
            outside,                              // the LoadBalancer IP, from outside its ranges
            direct,                               // bridged to a pod, no Service's
        ],
    );
    assert_eq!(
        got,
        [
            Next::Stage(StageId::Ip4Lookup),
            Next::Stage(StageId::IcmpError),
            Next::Drop(DropReason::LbNoEndpoint),
            Next::Stage(StageId::Ip4Lookup),
            Next::Drop(DropReason::LbNoServicePort),
            Next::Drop(DropReason::LbUnallocatedClusterIp),
            Next::Drop(DropReason::CtInvalid),
            Next::Drop(DropReason::LbTupleClash),
            Next::Drop(DropReason::LbNoLocalEndpoint),
            Next::Drop(DropReason::LbFragmentUnknown),
            Next::Drop(DropReason::LbSourceNotAllowed),
            Next::Stage(StageId::Bridge),
        ]
    );
    // The reply path of the translated connection: the endpoint answers the client
    // on its own subnet (bridged, from the virtual IP again); the client's ACK goes
    // to the same endpoint.
    let got = run_alone(
        StageId::Lb,
        &cx,
        &mut feat,
        vec![seg(
            3,
            CLIENT_MAC,
            (ENDPOINT, 8080),
            (CLIENT, 5000),
            SYN | ACK,
        )],
    );
    assert_eq!(got, [Next::Stage(StageId::Bridge)]);
    let got = run_alone(StageId::Lb, &cx, &mut feat, vec![to(5000, web, ACK)]);
    assert_eq!(got, [Next::Stage(StageId::Ip4Lookup)]);
    // That connection is established (assured, never evicted): a table with room
    // for one refuses the next.
    assert!(feat.nat.conntrack.set_capacity(1));
    let got = run_alone(StageId::Lb, &cx, &mut feat, vec![to(5009, web, SYN)]);
    assert_eq!(got, [Next::Drop(DropReason::CtTableFull)]);

    // Two workers: a new connection of the other worker's client is handed to it.
    let mut two = Features::for_tests();
    two.nat.owners.workers = 2;
    two.nat.ports = NatPorts::for_worker(32768, 60999, 0, 2);
    let client = u32::from_be_bytes(CLIENT);
    let theirs = (5000..).find(|&p| client_owner(client, p, 2) == 1).unwrap();
    let mine = (5000..).find(|&p| client_owner(client, p, 2) == 0).unwrap();
    let got = run_alone(
        StageId::Lb,
        &cx,
        &mut two,
        vec![to(theirs, web, SYN), to(mine, web, SYN)],
    );
    assert_eq!(got, [Next::Handoff(1), Next::Stage(StageId::Ip4Lookup)]);

    // Hairpin (the endpoint through its own Service) takes a NAT port: with a slice
    // of one, a second such connection finds none.
    let mut one = Features::for_tests();
    one.nat.ports = NatPorts::for_worker(40000, 40000, 0, 1);
    let got = run_alone(
        StageId::Lb,
        &cx,
        &mut one,
        vec![
            seg(3, router, (ENDPOINT, 7000), web, SYN),
            seg(3, router, (ENDPOINT, 7001), web, SYN),
        ],
    );
    assert_eq!(
        got,
        [
            Next::Stage(StageId::Ip4Lookup),
            Next::Drop(DropReason::SnatPortsExhausted),
        ]
    );
    // Not produced here: handoff-full (the runner's, when the owner's ring is full).
}

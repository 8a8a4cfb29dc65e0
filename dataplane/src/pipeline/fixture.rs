//! What the stages' contract tests share: the test node (its identity, node2, the
//! ports), the stage context, and frame builders. One place, so each feature's
//! `contract.rs` holds only its own cases.
use crate::ip4::L3;
use crate::pipeline::stage::Ctx;
use crate::pipeline::WorkerCounters;
use crate::port::{PortEntry, PortMap};
use crate::services::ServiceTable;
use crate::wire::{ipv4, MacAddr};
use podpath_proto::{NodeSpec, RemoteSpec};

/// Node 1: 192.168.77.11 on the underlay, pods 10.244.0.0/24, bridge 1, uplink and
/// host ports, VNI 1 on 4789, Services in 10.96.0.0/12.
pub fn node_spec() -> NodeSpec {
    NodeSpec {
        node_ip: "192.168.77.11".into(),
        underlay_cidr: "192.168.77.0/24".into(),
        underlay_gateway: None,
        pod_cidr: "10.244.0.0/24".into(),
        cluster_cidr: "10.244.0.0/16".into(),
        bridge: 1,
        uplink: "uplink".into(),
        host: Some("host".into()),
        vni: 1,
        vxlan_port: 4789,
        service_cidr: Some("10.96.0.0/12".into()),
    }
}

/// Node 2: 192.168.77.12, pods 10.244.1.0/24.
pub fn node2() -> RemoteSpec {
    RemoteSpec {
        name: "node2".into(),
        node_ip: "192.168.77.12".into(),
        vtep_mac: "0a:58:0a:f4:01:01".into(),
        pod_cidr: "10.244.1.0/24".into(),
    }
}

/// Node 1's L3 view, with node 2 as its remote when `with_node2`.
pub fn l3(with_node2: bool) -> L3 {
    let remotes = if with_node2 { vec![node2()] } else { vec![] };
    L3::build(&node_spec(), &remotes).expect("the test node builds")
}

/// A port: MAC 02:00:00:00:00:<id>, one rx queue, MTU 1500.
pub fn port(id: u16, name: &str, bd: Option<u16>) -> PortEntry {
    PortEntry {
        id,
        name: name.into(),
        bd,
        mac: MacAddr([2, 0, 0, 0, 0, u8::try_from(id).unwrap_or(0)]),
        rx_queues: 1,
        mtu: 1500,
    }
}

/// The uplink (0), the host port (1) and pod ports 2.. in bridge 1, one worker.
pub fn ports(pods: u16) -> PortMap {
    let mut v = vec![port(0, "uplink", None), port(1, "host", None)];
    for k in 0..pods {
        let name = format!("pod-{}", char::from(b'a' + u8::try_from(k).unwrap_or(0)));
        v.push(port(2 + k, &name, Some(1)));
    }
    PortMap::build(v, 1).with_roles(Some("uplink"), Some("host"))
}

/// The stage context at TSC 1.
pub fn ctx<'a>(
    l3: &'a L3,
    ports: &'a PortMap,
    services: &'a ServiceTable,
    counters: &'a WorkerCounters,
) -> Ctx<'a> {
    Ctx {
        ports,
        l3,
        services,
        now: 1,
        now_ms: 0,
        seconds: 0,
        counters,
    }
}

/// Ethernet + IPv4 (header checksum filled) carrying `l4`; `frag` is the flags and
/// fragment offset field (0x4000: DF, 0x2000: MF).
pub fn ip4(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    frag: u16,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; 34];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let total = u16::try_from(20 + l4.len()).unwrap_or(u16::MAX);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[20..22].copy_from_slice(&frag.to_be_bytes());
    f[22] = 64;
    f[23] = proto;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    f.extend_from_slice(l4);
    ipv4::Packet::new_unchecked(&mut f[14..]).fill_checksum();
    f
}

/// A TCP header (no options) with these flags.
pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t
}

/// A UDP datagram (checksum 0: none) carrying `payload`.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&u16::try_from(8 + payload.len()).unwrap_or(8).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

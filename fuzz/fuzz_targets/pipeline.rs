//! The whole pipeline on the memory backend, as one node of two with a Service, fed
//! an arbitrary sequence of frames on every port kind (uplink, host, two pods) with
//! time moving between bursts. Nothing may panic, and every frame is accounted for:
//! received + replicated = transmitted + dropped + still parked (waiting for ARP).
//!
//! Input: records of [port: u8][length: u8][bytes]; a port byte with the top bit
//! set moves the clock on by its low bits (seconds) and expires connections.
#![no_main]
use libfuzzer_sys::fuzz_target;
use podpath_dataplane::pipeline::{
    Pipeline, PipelineConfig, PortIo, Tracer, WorkerCounters, BURST,
};
use podpath_dataplane::port::{MemFrame, MemIo};
use podpath_dataplane::services::table::ServiceTable;
use podpath_dataplane::port::PortEntry;
use podpath_dataplane::port::PortMap;
use podpath_dataplane::ip4::L3;
use podpath_dataplane::wire::MacAddr;
use podpath_proto::{EndpointSpec, NodeSpec, RemoteSpec, ServiceSpec};
use std::sync::Arc;

const HZ: u64 = 1_000_000_000;

/// The node's immutable tables (routes, Services with their Maglev tables, ports):
/// built once per process and shared, as workers share a snapshot; building the
/// Maglev tables for every input would cost more than the input.
struct Tables {
    map: Arc<PortMap>,
    l3: Arc<L3>,
    services: Arc<ServiceTable>,
}

static TABLES: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();

fn tables() -> &'static Tables {
    TABLES.get_or_init(build_tables)
}

fn build_tables() -> Tables {
    let node = NodeSpec {
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
    };
    let remote = RemoteSpec {
        name: "node2".into(),
        node_ip: "192.168.77.12".into(),
        vtep_mac: "02:00:00:00:01:02".into(),
        pod_cidr: "10.244.1.0/24".into(),
    };
    let port = |id: u16, name: &str, bd: Option<u16>| PortEntry {
        id,
        name: name.into(),
        bd,
        mac: MacAddr([2, 0, 0, 0, 9, id as u8]),
        rx_queues: 1,
        mtu: 1500,
    };
    let map = PortMap::build(
        vec![
            port(0, "uplink", None),
            port(1, "host", None),
            port(2, "pod-a", Some(1)),
            port(3, "pod-b", Some(1)),
        ],
        1,
    )
    .with_roles(Some("uplink"), Some("host"));
    let svc = |name: &str, proto: &str| {
        ServiceSpec::new(
            name,
            "10.96.0.10",
            80,
            proto,
            vec![
                EndpointSpec::ready("10.244.0.3", 8080),
                EndpointSpec::ready("10.244.1.5", 8080),
            ],
        )
    };
    let services = ServiceTable::build(&[svc("f/tcp", "tcp"), svc("f/udp", "udp")], None).unwrap();
    Tables {
        map: Arc::new(map),
        l3: Arc::new(L3::build(&node, &[remote]).unwrap()),
        services: Arc::new(services),
    }
}

fn node() -> (Pipeline<MemFrame>, MemIo) {
    let t = tables();
    let cfg = PipelineConfig {
        worker: 0,
        mac_capacity: 64,
        mac_ageing_ticks: 300 * HZ,
        tsc_hz: HZ,
        conntrack: podpath_dataplane::pipeline::ConntrackConfig {
            capacity: 64,
            ..Default::default()
        },
        nat_range: (30000, 30063),
        workers: 1,
    };
    let mut p = Pipeline::new(
        &cfg,
        Arc::clone(&t.map),
        Arc::new(WorkerCounters::default()),
        Tracer::new(0, None),
    );
    p.set_l3(Arc::clone(&t.l3));
    p.set_services(Arc::clone(&t.services));
    let mut io = MemIo::default();
    for port in &mut io.ports {
        port.discard_tx = true;
    }
    (p, io)
}

fuzz_target!(|d: &[u8]| {
    let (mut p, mut io) = node();
    let mut now = HZ;
    p.set_now(now);
    let mut rx: Vec<MemFrame> = Vec::with_capacity(BURST);
    let mut i = 0;
    while i + 2 <= d.len() {
        let (sel, len) = (d[i], usize::from(d[i + 1]));
        i += 2;
        if sel & 0x80 != 0 {
            now += u64::from(sel & 0x7f) * HZ;
            p.set_now(now);
            p.expire_connections();
            p.expire(&mut io);
            continue;
        }
        let end = (i + len).min(d.len());
        let port = u16::from(sel % 4);
        io.push_rx(port, &d[i..end]);
        i = end;
        io.rx_burst(port, 0, &mut rx, BURST);
        p.run(&mut io, port, &mut rx);
        p.flush(&mut io);
    }
    let c = &p.counters;
    let rx = c.rx_total();
    let replicated = podpath_dataplane::pipeline::counters::get(&c.replicated);
    let out = c.tx_total() + c.drops_total() + p.parked() as u64;
    assert_eq!(rx + replicated, out, "frames unaccounted for");
});

//! Benchmark fixtures: one node's pipeline on the memory backend, fed pre-built frames
//! for one path at a time, so a path's cost is measured without kernel I/O. Used by
//! the criterion benchmark (`benches/pipeline.rs`) and by the instruction counter
//! (`src/bin/pipeline-count.rs`, under callgrind).
use std::sync::Arc;

use etherparse::PacketBuilder;
use podpath_dataplane::ip4::arp;
use podpath_dataplane::ip4::l3::gateway_mac;
use podpath_dataplane::ip4::L3;
use podpath_dataplane::pipeline::{
    Pipeline, PipelineConfig, PortIo, Tracer, WorkerCounters, BURST,
};
use podpath_dataplane::port::PortEntry;
use podpath_dataplane::port::PortMap;
use podpath_dataplane::port::{MemFrame, MemIo};
use podpath_dataplane::wire::MacAddr;
use podpath_proto::{validate, NodeSpec, RemoteSpec};

pub const UPLINK: u16 = 0;
pub const HOST: u16 = 1;
pub const POD_A: u16 = 2;
pub const POD_B: u16 = 3;

/// The paths a packet can take through a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Pod to pod on one node, at L2.
    Bridge,
    /// Pod to pod on one node, routed through the gateway (ip4-lookup, ip4-rewrite).
    Route,
    /// Pod to a pod on another node (ip4-lookup, vxlan-encap).
    VxlanEncap,
    /// From another node to a local pod (vxlan-decap, ip4-lookup, ip4-rewrite).
    VxlanDecap,
    /// Pod to a host outside the cluster, connection known (snat, ip4-rewrite).
    SnatEstablished,
    /// The same, every packet a new connection (port allocation, table insert).
    SnatNew,
    /// Pod to a Service whose endpoint is on the other node, connection known (lb,
    /// ip4-lookup, vxlan-encap).
    ServiceEstablished,
    /// The same, every packet a new connection (Maglev pick, table insert).
    ServiceNew,
    /// A Kubernetes node's mix, established flows, with a Service installed (its
    /// packets and its endpoints' replies pass `lb`, the rest skip it by the Service
    /// prefilter): of each 20 pod packets 8 bridged, 6 to a remote pod,
    /// 3 masqueraded, 3 to a Service; and every fifth burst arrives from the other
    /// node (VXLAN to a local pod).
    Mixed,
}

impl Path {
    pub const ALL: [Path; 9] = [
        Path::Bridge,
        Path::Route,
        Path::VxlanEncap,
        Path::VxlanDecap,
        Path::SnatEstablished,
        Path::SnatNew,
        Path::ServiceEstablished,
        Path::ServiceNew,
        Path::Mixed,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Path::Bridge => "l2-bridge",
            Path::Route => "ip4-route",
            Path::VxlanEncap => "vxlan-encap",
            Path::VxlanDecap => "vxlan-decap",
            Path::SnatEstablished => "snat-established",
            Path::SnatNew => "snat-new",
            Path::ServiceEstablished => "service-established",
            Path::ServiceNew => "service-new",
            Path::Mixed => "mixed",
        }
    }
    /// Paths whose every packet opens a connection (flows are not repeated).
    pub fn is_new(self) -> bool {
        matches!(self, Path::SnatNew | Path::ServiceNew)
    }
    pub fn parse(s: &str) -> Option<Path> {
        Path::ALL.into_iter().find(|p| p.name() == s)
    }
}

fn ip(s: &str) -> u32 {
    validate::ipv4(s).expect("address")
}

const POD_A_MAC: [u8; 6] = [0x0a, 0x58, 10, 244, 0, 2];
const POD_B_MAC: [u8; 6] = [0x0a, 0x58, 10, 244, 0, 3];
const UPLINK_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0xee, 1]);
const REMOTE_UPLINK_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0xee, 2]);

fn udp(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(sport, 5000)
        .write(&mut v, &[0u8; 18])
        .expect("build frame");
    v
}

/// One node (node 1 of a two-node cluster) with its neighbours already resolved, and
/// the frames of one path, `flows` distinct 5-tuples, cycled.
pub struct Rig {
    pub io: MemIo,
    pub p: Pipeline<MemFrame>,
    port: u16,
    frames: Vec<Vec<u8>>,
    next: usize,
    /// The mixed profile's bursts from the other node.
    uplink_frames: Vec<Vec<u8>>,
    next_uplink: usize,
    bursts: u64,
    rx: Vec<MemFrame>,
    /// Drops during set-up (the consumed ARP reply), not counted against a path.
    setup_drops: u64,
    /// With more than one worker: the others (worker 1, ...), each with its I/O.
    /// Every burst arrives at worker 0 (`p`), as one rx queue would deliver it; what
    /// another worker owns is handed to it and run there in the same step.
    pub others: Vec<(Pipeline<MemFrame>, MemIo)>,
}

impl Rig {
    pub fn new(path: Path, flows: usize) -> Rig {
        Rig::with_workers(path, flows, 1)
    }

    /// The rig with `workers` pipelines joined by hand-off rings, as the dataplane
    /// runs them: the NAT port range is split between them and each connection is
    /// its client's worker's.
    pub fn with_workers(path: Path, flows: usize, workers: u16) -> Rig {
        let workers = workers.max(1);
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
            vtep_mac: gateway_mac(ip("10.244.1.1")).to_string(),
            pod_cidr: "10.244.1.0/24".into(),
        };
        let l3 = L3::build(&node, &[remote]).expect("node builds");
        let port = |id: u16, name: &str, bd: Option<u16>, mac: MacAddr| PortEntry {
            id,
            name: name.into(),
            bd,
            mac,
            rx_queues: 1,
            mtu: 1500,
        };
        let map = PortMap::build(
            vec![
                port(UPLINK, "uplink", None, UPLINK_MAC),
                port(HOST, "host", None, MacAddr([2, 0, 0, 0, 0xff, 1])),
                port(POD_A, "pod-a", Some(1), MacAddr([2, 0, 0, 0, 2, 1])),
                port(POD_B, "pod-b", Some(1), MacAddr([2, 0, 0, 0, 3, 1])),
            ],
            1,
        )
        .with_roles(Some("uplink"), Some("host"));
        let hz = 2_000_000_000;
        let cfg = PipelineConfig {
            worker: 0,
            mac_capacity: 1 << 16,
            mac_ageing_ticks: u64::MAX / 4,
            tsc_hz: hz,
            conntrack: podpath_dataplane::pipeline::ConntrackConfig {
                capacity: flows.max(1) + 1024,
                ..Default::default()
            },
            // A wide range: "new" paths open many connections to one server port.
            nat_range: (1024, 65535),
            workers,
        };
        let (map, l3) = (Arc::new(map), Arc::new(l3));
        let mk = |w: u16| {
            let cfg = PipelineConfig {
                worker: w,
                ..cfg.clone()
            };
            let mut p = Pipeline::new(
                &cfg,
                Arc::clone(&map),
                Arc::new(WorkerCounters::default()),
                Tracer::new(w, None),
            );
            p.set_l3(Arc::clone(&l3));
            p.set_now(1);
            let mut io = MemIo::default();
            for port in &mut io.ports {
                port.discard_tx = true;
            }
            (p, io)
        };
        let mut ends =
            podpath_dataplane::pipeline::handoff::mesh(usize::from(workers), 1024).into_iter();
        let (mut p, io) = mk(0);
        let mut others: Vec<_> = (1..workers).map(mk).collect();
        if workers > 1 {
            p.set_handoff(ends.next().expect("an end per worker"));
            for (o, _) in &mut others {
                o.set_handoff(ends.next().expect("an end per worker"));
            }
        }
        let mut r = Rig {
            io,
            p,
            port: POD_A,
            frames: Vec::new(),
            next: 0,
            uplink_frames: Vec::new(),
            next_uplink: 0,
            bursts: 0,
            rx: Vec::with_capacity(BURST),
            setup_drops: 0,
            others,
        };
        // Resolve everything first: pods ask for their gateway, node 2 answers ARP.
        let gw = ip("10.244.0.1");
        r.once(
            POD_A,
            &arp::request(MacAddr(POD_A_MAC), ip("10.244.0.2"), gw),
        );
        r.once(
            POD_B,
            &arp::request(MacAddr(POD_B_MAC), ip("10.244.0.3"), gw),
        );
        let mut reply =
            arp::request(REMOTE_UPLINK_MAC, ip("192.168.77.12"), ip("192.168.77.11")).to_vec();
        reply[0..6].copy_from_slice(&UPLINK_MAC.0);
        reply[21] = 2;
        reply[32..38].copy_from_slice(&UPLINK_MAC.0);
        r.once(UPLINK, &reply);
        // And the external host.
        let mut reply = arp::request(
            MacAddr([2, 0, 0, 0, 0, 0x64]),
            ip("192.168.77.100"),
            ip("192.168.77.11"),
        )
        .to_vec();
        reply[0..6].copy_from_slice(&UPLINK_MAC.0);
        reply[21] = 2;
        reply[32..38].copy_from_slice(&UPLINK_MAC.0);
        r.once(UPLINK, &reply);
        if matches!(
            path,
            Path::ServiceEstablished | Path::ServiceNew | Path::Mixed
        ) {
            let svc = podpath_proto::ServiceSpec::new(
                "bench/web",
                "10.96.0.10",
                80,
                "udp",
                vec![podpath_proto::EndpointSpec::ready("10.244.1.5", 8080)],
            );
            let t = Arc::new(
                podpath_dataplane::services::table::ServiceTable::build(&[svc], None)
                    .expect("service builds"),
            );
            r.p.set_services(Arc::clone(&t));
            for (o, _) in &mut r.others {
                o.set_services(Arc::clone(&t));
            }
        }
        // Bridge learning of both pods.
        r.once(
            POD_B,
            &udp(POD_B_MAC, POD_A_MAC, [10, 244, 0, 3], [10, 244, 0, 2], 1),
        );
        let n = flows.max(1);
        r.frames = if path == Path::Mixed {
            // At least one frame per slot of the mix, so that every flow count carries
            // the whole mix: slot i % 20 picks the path, i % flows the flow.
            (0..n.max(20)).map(|i| mixed_frame(i, i % n)).collect()
        } else {
            (0..n).map(|i| frame(path, i)).collect()
        };
        if path == Path::Mixed {
            r.uplink_frames = (0..n).map(|i| frame(Path::VxlanDecap, i)).collect();
        }
        r.port = if path == Path::VxlanDecap {
            UPLINK
        } else {
            POD_A
        };
        r.setup_drops = r.p.counters.drops_total()
            + r.others
                .iter()
                .map(|(o, _)| o.counters.drops_total())
                .sum::<u64>();
        r
    }

    /// A set-up frame, seen by every worker (each learns its neighbours and MACs;
    /// the dataplane shares them over its peer bus).
    fn once(&mut self, port: u16, frame: &[u8]) {
        self.io.push_rx(port, frame);
        self.io.rx_burst(port, 0, &mut self.rx, BURST);
        self.p.run(&mut self.io, port, &mut self.rx);
        self.p.flush(&mut self.io);
        for (o, io) in &mut self.others {
            io.push_rx(port, frame);
            io.rx_burst(port, 0, &mut self.rx, BURST);
            o.run(io, port, &mut self.rx);
            o.flush(io);
        }
    }

    /// The other workers run what worker 0 handed them.
    fn run_others(&mut self) {
        for (o, io) in &mut self.others {
            o.run_handed_off(io);
            o.flush(io);
            // One pool for all, as a mempool: worker 0 receives into what the
            // others sent.
            io.give_recycled(&mut self.io);
        }
    }

    /// One burst of 32 through the pipeline (frames copied in as a NIC would DMA
    /// them, transmitted frames recycled). Returns the packets transmitted so far.
    pub fn step(&mut self) -> u64 {
        self.bursts += 1;
        let port = if !self.uplink_frames.is_empty() && self.bursts.is_multiple_of(5) {
            for _ in 0..BURST {
                let f = &self.uplink_frames[self.next_uplink];
                self.next_uplink = (self.next_uplink + 1) % self.uplink_frames.len();
                self.io.push_rx(UPLINK, f);
            }
            UPLINK
        } else {
            for _ in 0..BURST {
                let f = &self.frames[self.next];
                self.next = (self.next + 1) % self.frames.len();
                self.io.push_rx(self.port, f);
            }
            self.port
        };
        self.io.rx_burst(port, 0, &mut self.rx, BURST);
        self.p.run(&mut self.io, port, &mut self.rx);
        self.p.flush(&mut self.io);
        if !self.others.is_empty() {
            self.run_others();
        }
        self.io.ports.iter().map(|p| p.tx_count).sum::<u64>()
            + self
                .others
                .iter()
                .flat_map(|(_, io)| io.ports.iter().map(|p| p.tx_count))
                .sum::<u64>()
    }

    /// Drops since set-up (a benchmark whose packets are dropped measures nothing).
    pub fn dropped(&self) -> u64 {
        self.p.counters.drops_total()
            + self
                .others
                .iter()
                .map(|(o, _)| o.counters.drops_total())
                .sum::<u64>()
            - self.setup_drops
    }

    /// Packets handed from one worker to another so far.
    pub fn handed_off(&self) -> u64 {
        podpath_dataplane::pipeline::counters::get(&self.p.counters.handoff_out)
    }
}

/// Frame `i` of a path (`i` picks the flow: source port, and addresses where a path
/// has more flows than ports).
fn frame(path: Path, i: usize) -> Vec<u8> {
    let gw_mac = gateway_mac(ip("10.244.0.1")).0;
    let flow = |i: usize| u16::try_from(1024 + i % 60000).unwrap_or(1024);
    match path {
        Path::Mixed => mixed_frame(i, i),

        Path::Bridge => udp(
            POD_A_MAC,
            POD_B_MAC,
            [10, 244, 0, 2],
            [10, 244, 0, 3],
            flow(i),
        ),
        Path::Route => udp(POD_A_MAC, gw_mac, [10, 244, 0, 2], [10, 244, 0, 3], flow(i)),
        Path::VxlanEncap => {
            let dst = [10, 244, 1, u8::try_from(2 + i % 250).unwrap_or(2)];
            udp(POD_A_MAC, gw_mac, [10, 244, 0, 2], dst, flow(i))
        }
        Path::SnatEstablished | Path::SnatNew => {
            // At most 60 000 flows per server port: each needs its own NAT port.
            let mut v = Vec::new();
            PacketBuilder::ethernet2(POD_A_MAC, gw_mac)
                .ipv4([10, 244, 0, 2], [192, 168, 77, 100], 64)
                .udp(flow(i), 5000 + u16::try_from(i / 60000).unwrap_or(0))
                .write(&mut v, &[0u8; 18])
                .expect("build frame");
            v
        }
        Path::ServiceEstablished | Path::ServiceNew => {
            let src = [10, 244, 0, u8::try_from(2 + (i / 60000) % 250).unwrap_or(2)];
            let mut v = Vec::new();
            PacketBuilder::ethernet2(POD_A_MAC, gw_mac)
                .ipv4(src, [10, 96, 0, 10], 64)
                .udp(flow(i), 80)
                .write(&mut v, &[0u8; 18])
                .expect("build frame");
            v
        }
        Path::VxlanDecap => {
            let src = [10, 244, 1, u8::try_from(2 + i % 250).unwrap_or(2)];
            let inner = udp(
                [2; 6],
                gateway_mac(ip("10.244.1.1")).0,
                src,
                [10, 244, 0, 3],
                flow(i),
            );
            let mut payload = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
            payload.extend_from_slice(&inner);
            let mut v = Vec::new();
            PacketBuilder::ethernet2(REMOTE_UPLINK_MAC.0, UPLINK_MAC.0)
                .ipv4([192, 168, 77, 12], [192, 168, 77, 11], 64)
                .udp(49152 + flow(i) % 16384, 4789)
                .write(&mut v, &payload)
                .expect("build frame");
            v
        }
    }
}

/// Frame `slot` of the mixed profile, of flow `flow` of its path: of each 20, 8 bridged,
/// 6 to a remote pod, 3 masqueraded, 3 to a Service.
fn mixed_frame(slot: usize, flow: usize) -> Vec<u8> {
    match slot % 20 {
        0..=7 => frame(Path::Bridge, flow),
        8..=13 => frame(Path::VxlanEncap, flow),
        14..=16 => frame(Path::SnatEstablished, flow),
        _ => frame(Path::ServiceEstablished, flow),
    }
}

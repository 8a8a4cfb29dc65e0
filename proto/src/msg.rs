//! Every message of the protocol. See `docs/protocol.md`.
use serde::{Deserialize, Serialize};

/// A request or response with the id that pairs them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: u64,
    pub body: T,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// First message of a connection.
    Hello {
        version: u32,
        client: String,
    },
    /// Plug in a device and attach it as a port.
    PortAttach(PortSpec),
    /// Detach a port by name and unplug its device.
    PortDetach {
        name: String,
    },
    PortList,
    /// Add a static MAC entry to a bridge domain.
    MacAdd {
        bridge: u16,
        mac: String,
        port: String,
    },
    /// The MAC tables of every worker.
    MacList,
    /// Counters: per worker, stage, drop reason and port.
    Stats,
    /// Trace the next `count` packets each worker receives.
    TraceStart {
        count: u32,
    },
    /// Collect (and remove) the trace records gathered so far.
    TraceDump,
    /// Remove a static MAC entry.
    MacDel {
        bridge: u16,
        mac: String,
    },
    /// Liveness check; answered with `Done`.
    Ping,
    /// The control service's desired state (control service only).
    StateShow,
    /// Set this node's L3/overlay identity (node IP, pod CIDR, uplink, VXLAN).
    NodeSet(NodeSpec),
    /// Add (or replace, by name) a remote node: its VTEP and pod CIDR.
    RemoteAdd(RemoteSpec),
    /// Remove a remote node by name (withdraws its route and VTEP).
    RemoteDel {
        name: String,
    },
    /// The routing table.
    RouteList,
    /// The neighbour (ARP) tables of every worker.
    NeighborList,
    /// Tracked connections, optionally filtered (all given filters must match).
    ConntrackList(ConntrackFilter),
    /// Forget every tracked connection.
    ConntrackFlush,
    /// Change connection-tracking knobs at run time: each field given replaces the
    /// current value (timeouts apply to each connection at its next packet; the
    /// capacity up to the size reserved at start).
    ConntrackSet(ConntrackSettings),
    /// The knobs in force.
    ConntrackSettingsShow,
    /// Add or replace (by name) a Service.
    ServiceSet(ServiceSpec),
    /// Remove a Service by name.
    ServiceDel {
        name: String,
    },
    ServiceList,
    /// Several changes applied as one: RemoteAdd, RemoteDel, ServiceSet and
    /// ServiceDel, in order, then one snapshot (one acknowledgement, one persisted
    /// state). For resyncs: n changes cost one rebuild, not n. All or nothing: a bad
    /// entry refuses the whole batch and changes nothing.
    Batch(Vec<Request>),
    /// The control service's events numbered above `after` (0: all it keeps), oldest
    /// first; answered at once (podpathctl events polls).
    Events {
        after: u64,
    },
    /// Packet capture (the dataplane's): start one (replacing any running), read
    /// what the workers took, stop.
    CaptureStart(crate::CaptureSpec),
    CaptureRead,
    CaptureStop,
}

impl Request {
    /// Whether the request only reads (served on the control service's read-only
    /// socket). Tracing and capture are not: they arm the workers, and a capture
    /// shows packets' contents.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Hello { .. }
                | Request::Ping
                | Request::PortList
                | Request::MacList
                | Request::Stats
                | Request::StateShow
                | Request::RouteList
                | Request::NeighborList
                | Request::ConntrackList(_)
                | Request::ConntrackSettingsShow
                | Request::ServiceList
                | Request::Events { .. }
        )
    }
}

fn default_weight() -> u32 {
    1
}

fn default_true() -> bool {
    true
}

/// A Service: a virtual IP and port with endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// "namespace/name".
    pub name: String,
    /// The ClusterIP.
    pub vip: String,
    pub port: u16,
    /// "tcp" or "udp".
    pub protocol: String,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// Session affinity by client IP: a client's new connections go to the endpoint
    /// its last one used, for this many seconds (kube-proxy's default is 10800).
    #[serde(default)]
    pub affinity_timeout: Option<u32>,
    /// Also open this port on the node IP (a NodePort Service).
    #[serde(default)]
    pub node_port: Option<u16>,
    /// For the NodePort: "Cluster" (default; any endpoint, client source translated
    /// to the node) or "Local" (this node's endpoints only, client source kept).
    #[serde(default)]
    pub external_traffic_policy: Option<String>,
    /// For the ClusterIP, from pods and the node: "Cluster" (default; any endpoint)
    /// or "Local" (this node's endpoints only; none: a silent drop).
    #[serde(default)]
    pub internal_traffic_policy: Option<String>,
    /// spec.externalIPs: more addresses the Service answers on at its port, routed
    /// to the nodes by the network; handled as the NodePort is (its
    /// external_traffic_policy), and as the ClusterIP for traffic from pods.
    #[serde(default)]
    pub external_ips: Vec<String>,
    /// status.loadBalancer.ingress IPs: as external IPs, and only sources within
    /// `load_balancer_source_ranges` (when any is given) may use them.
    #[serde(default)]
    pub load_balancer_ips: Vec<String>,
    #[serde(default)]
    pub load_balancer_source_ranges: Vec<String>,
    /// spec.healthCheckNodePort (externalTrafficPolicy Local): the node answers
    /// HTTP on it, 200 when it has endpoints for the Service, else 503.
    #[serde(default)]
    pub health_check_node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub ip: String,
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Not ready endpoints get no traffic.
    #[serde(default = "default_true")]
    pub ready: bool,
    /// Terminating endpoints keep their connections and get no new ones (unless no
    /// endpoint is ready: then the serving terminating ones take them).
    #[serde(default)]
    pub terminating: bool,
    /// EndpointSlice's `serving`: ready, whether terminating or not. Absent: the
    /// same as `ready` (as Kubernetes says consumers should read a missing one).
    #[serde(default)]
    pub serving: Option<bool>,
}

impl ServiceSpec {
    /// A Service with these endpoints and nothing else set: no affinity, no
    /// NodePort, the default traffic policy.
    pub fn new(
        name: &str,
        vip: &str,
        port: u16,
        protocol: &str,
        endpoints: Vec<EndpointSpec>,
    ) -> Self {
        ServiceSpec {
            name: name.into(),
            vip: vip.into(),
            port,
            protocol: protocol.into(),
            endpoints,
            affinity_timeout: None,
            node_port: None,
            external_traffic_policy: None,
            internal_traffic_policy: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            health_check_node_port: None,
        }
    }
}

impl EndpointSpec {
    /// A ready endpoint of weight 1 (the defaults a request without them gets).
    pub fn ready(ip: &str, port: u16) -> Self {
        EndpointSpec {
            ip: ip.into(),
            port,
            weight: default_weight(),
            ready: true,
            terminating: false,
            serving: None,
        }
    }

    /// EndpointSlice's `serving`; absent, the same as `ready`.
    pub fn is_serving(&self) -> bool {
        self.serving.unwrap_or(self.ready)
    }
}

/// Of `eps`, those that take new connections (weight above 0): the ready ones
/// (ready and not terminating); when none is, the serving terminating ones
/// (kube-proxy's fallback). One rule for the dataplane's tables and the control
/// service's health checks; `spec` finds each item's endpoint.
pub fn taking_new_connections<T>(eps: &[T], spec: impl Fn(&T) -> &EndpointSpec) -> Vec<&T> {
    let ready: Vec<&T> = eps
        .iter()
        .filter(|x| {
            let e = spec(x);
            e.weight > 0 && e.ready && !e.terminating
        })
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.iter()
        .filter(|x| {
            let e = spec(x);
            e.weight > 0 && e.terminating && e.is_serving()
        })
        .collect()
}

/// Filters for `ConntrackList`: protocol number, an address or a port on either side.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConntrackFilter {
    pub proto: Option<u8>,
    pub addr: Option<String>,
    pub port: Option<u16>,
}

/// Connection-tracking knobs (seconds; capacity in connections per worker). In a
/// `ConntrackSet`, absent fields keep their value; in an answer, all are given and
/// `max_capacity` says how far `capacity` may grow without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackSettings {
    pub capacity: Option<u32>,
    pub max_capacity: Option<u32>,
    pub tcp_syn_sent: Option<u32>,
    pub tcp_syn_recv: Option<u32>,
    pub tcp_established: Option<u32>,
    pub tcp_fin_wait: Option<u32>,
    pub tcp_close_wait: Option<u32>,
    pub tcp_last_ack: Option<u32>,
    pub tcp_time_wait: Option<u32>,
    pub tcp_close: Option<u32>,
    pub udp: Option<u32>,
    pub udp_stream: Option<u32>,
    pub icmp: Option<u32>,
}

impl ConntrackSettings {
    /// `self` with every field `newer` gives replaced.
    pub fn merged(&self, newer: &ConntrackSettings) -> ConntrackSettings {
        let m = |a: Option<u32>, b: Option<u32>| b.or(a);
        ConntrackSettings {
            capacity: m(self.capacity, newer.capacity),
            max_capacity: m(self.max_capacity, newer.max_capacity),
            tcp_syn_sent: m(self.tcp_syn_sent, newer.tcp_syn_sent),
            tcp_syn_recv: m(self.tcp_syn_recv, newer.tcp_syn_recv),
            tcp_established: m(self.tcp_established, newer.tcp_established),
            tcp_fin_wait: m(self.tcp_fin_wait, newer.tcp_fin_wait),
            tcp_close_wait: m(self.tcp_close_wait, newer.tcp_close_wait),
            tcp_last_ack: m(self.tcp_last_ack, newer.tcp_last_ack),
            tcp_time_wait: m(self.tcp_time_wait, newer.tcp_time_wait),
            tcp_close: m(self.tcp_close, newer.tcp_close),
            udp: m(self.udp, newer.udp),
            udp_stream: m(self.udp_stream, newer.udp_stream),
            icmp: m(self.icmp, newer.icmp),
        }
    }

    /// The timeouts given, by their configuration names.
    pub fn timeouts(&self) -> [(&'static str, Option<u32>); 11] {
        [
            ("tcp_syn_sent", self.tcp_syn_sent),
            ("tcp_syn_recv", self.tcp_syn_recv),
            ("tcp_established", self.tcp_established),
            ("tcp_fin_wait", self.tcp_fin_wait),
            ("tcp_close_wait", self.tcp_close_wait),
            ("tcp_last_ack", self.tcp_last_ack),
            ("tcp_time_wait", self.tcp_time_wait),
            ("tcp_close", self.tcp_close),
            ("udp", self.udp),
            ("udp_stream", self.udp_stream),
            ("icmp", self.icmp),
        ]
    }
}

/// One tracked connection, both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnInfo {
    pub worker: u16,
    pub proto: u8,
    /// Seconds until it expires.
    pub timeout: u32,
    /// TCP state ("ESTABLISHED", ...); None for UDP and ICMP.
    pub state: Option<String>,
    /// Original direction: source, destination, source port (ICMP: id), destination port.
    pub orig: (String, String, u16, u16),
    /// Reply direction as it arrives (after NAT).
    pub reply: (String, String, u16, u16),
    pub assured: bool,
    pub seen_reply: bool,
}

fn default_vni() -> u32 {
    1
}

fn default_vxlan_port() -> u16 {
    4789
}

fn default_bridge() -> u16 {
    1
}

/// This node in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The node's address on the underlay, carried by the uplink port.
    pub node_ip: String,
    /// The underlay subnet reachable directly on the uplink, e.g. "192.168.77.0/24".
    pub underlay_cidr: String,
    /// Next hop for underlay destinations outside that subnet.
    #[serde(default)]
    pub underlay_gateway: Option<String>,
    /// This node's pods, e.g. "10.244.0.0/24"; the first address is their gateway.
    pub pod_cidr: String,
    /// All pods of the cluster, e.g. "10.244.0.0/16".
    pub cluster_cidr: String,
    /// The pods' bridge domain.
    #[serde(default = "default_bridge")]
    pub bridge: u16,
    /// The uplink port's name.
    pub uplink: String,
    /// The host port's name (a tap to the node's kernel).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_vni")]
    pub vni: u32,
    /// 4789 (IANA) by default; 8472 to interoperate with flannel.
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    /// The cluster's Service range (kube-apiserver's --service-cluster-ip-range),
    /// e.g. "10.96.0.0/12": a ClusterIP's undefined ports are refused, unallocated
    /// addresses in it dropped, instead of leaving by the default route.
    #[serde(default)]
    pub service_cidr: Option<String>,
}

/// Another node of the cluster, reached over VXLAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSpec {
    pub name: String,
    pub node_ip: String,
    /// The MAC written as the inner frame's destination (the remote VTEP's).
    pub vtep_mac: String,
    pub pod_cidr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    pub prefix: String,
    pub via: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighborInfo {
    pub worker: u16,
    pub ip: String,
    pub mac: String,
    pub port: String,
    pub age_ms: u64,
}

/// A static MAC entry of the desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticMac {
    pub bridge: u16,
    pub mac: String,
    pub port: String,
}

/// What the control service wants the dataplane to hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DesiredState {
    pub ports: Vec<PortSpec>,
    pub macs: Vec<StaticMac>,
    pub node: Option<NodeSpec>,
    pub remotes: Vec<RemoteSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Whether the dataplane currently matches it.
    pub in_sync: bool,
    /// Changes applied since the service started (for operators and tests).
    pub generation: u64,
}

/// A port to attach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// The operator's name for the port (e.g. "pod-a"); unique.
    pub name: String,
    /// DPDK device arguments, e.g. "net_tap1,iface=eth0".
    pub device: String,
    /// Probe the device inside this network namespace (a path such as
    /// /var/run/netns/pod-a): a tap is created there, an af_packet socket binds there.
    pub netns: Option<String>,
    /// Bridge domain to join.
    pub bridge: Option<u16>,
    /// Rx/tx queue pairs (default: one per worker).
    pub queues: Option<u16>,
    pub mtu: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Hello {
        version: u32,
        server: String,
        dpdk: String,
    },
    /// The request was applied.
    Done,
    /// The change is in force: every worker of the dataplane runs snapshot
    /// `generation` (and has swept what the change made stale).
    Applied {
        generation: u64,
    },
    Ports(Vec<PortInfo>),
    Macs(Vec<MacInfo>),
    Stats(Stats),
    Trace(Vec<TraceLine>),
    State(DesiredState),
    Routes(Vec<RouteInfo>),
    Neighbors(Vec<NeighborInfo>),
    Conntrack(Vec<ConnInfo>),
    Services(Vec<ServiceSpec>),
    ConntrackSettings(ConntrackSettings),
    Error(ErrorReply),
    Events(Vec<EventInfo>),
    /// Captured packets since the last read; `done` once every worker has taken its
    /// count (or the capture was stopped); `lost`: taken but not kept (a full ring).
    Captured {
        packets: Vec<crate::CapturedPacket>,
        done: bool,
        lost: u64,
    },
}

/// Something that changed on a node, as the control service saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    /// 1, 2, ...: a gap before the first one a client gets means it missed some
    /// (the service keeps the last [`EVENTS_KEPT`]).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// What happened: port-attached, port-detached, port-reattached,
    /// remote-added, remote-withdrawn, service-set, service-deleted, node-set,
    /// mac-added, mac-deleted, conntrack-settings, generation-applied,
    /// dataplane-connected, dataplane-lost, reconciled, table-full.
    pub kind: String,
    pub detail: String,
}

/// How many events the control service keeps.
pub const EVENTS_KEPT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request is malformed or names an invalid value.
    BadRequest,
    /// Versions differ.
    Version,
    NotFound,
    AlreadyExists,
    /// DPDK refused (probe, queue setup, ...).
    Device,
    /// The dataplane cannot do it now (e.g. a worker did not answer).
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    pub id: u16,
    pub name: String,
    pub device: String,
    pub driver: String,
    pub netns: Option<String>,
    pub bridge: Option<u16>,
    pub mac: String,
    pub link_up: bool,
    pub speed_mbps: u32,
    pub mtu: u16,
    pub queues: u16,
    pub xstats: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacInfo {
    pub worker: u16,
    pub bridge: u16,
    pub mac: String,
    pub port: String,
    pub age_ms: u64,
    pub is_static: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StageStat {
    pub name: String,
    pub packets: u64,
    pub calls: u64,
    pub cycles: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DropStat {
    /// The stage that dropped the packets.
    pub stage: String,
    pub reason: String,
    pub count: u64,
    /// "drop" (a loss) or "event" (consumed as it should be, e.g. an ARP reply once
    /// learned); both count in `dropped`.
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PortStat {
    pub id: u16,
    pub name: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WorkerStat {
    pub id: u16,
    pub lcore: u32,
    pub polls: u64,
    pub idle_polls: u64,
    pub sleeps: u64,
    pub busy_cycles: u64,
    pub total_cycles: u64,
    pub rx: u64,
    pub tx: u64,
    pub dropped: u64,
    pub replicated: u64,
    pub mac_learned: u64,
    pub mac_moved: u64,
    pub mac_aged: u64,
    pub mac_table_full: u64,
    /// Neighbours not learned / clients without affinity: those tables were full.
    #[serde(default)]
    pub neighbor_table_full: u64,
    #[serde(default)]
    pub affinity_table_full: u64,
    /// First fragments whose translation was not remembered: that table was full.
    #[serde(default)]
    pub frag_table_full: u64,
    pub trace_lost: u64,
    /// Connection table: entries now; inserted, expired, evicted early, refused.
    #[serde(default)]
    pub ct_entries: u64,
    #[serde(default)]
    pub ct_inserted: u64,
    #[serde(default)]
    pub ct_expired: u64,
    #[serde(default)]
    pub ct_early_dropped: u64,
    #[serde(default)]
    pub ct_refused_full: u64,
    /// Connections resumed from the state file when this dataplane started.
    #[serde(default)]
    pub ct_resumed: u64,
    /// Packets handed to / taken from other workers (connection owners).
    #[serde(default)]
    pub handoff_out: u64,
    #[serde(default)]
    pub handoff_in: u64,
    /// The snapshot generation this worker has applied, and settled (its sweep done).
    #[serde(default)]
    pub applied_generation: u64,
    #[serde(default)]
    pub settled_generation: u64,
    pub stages: Vec<StageStat>,
    pub drops: Vec<DropStat>,
}

/// All counters. Totals sum the workers; `drops` lists every reason (zero ones too).
/// At rest, `rx + replicated == tx + dropped`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Stats {
    pub tsc_hz: u64,
    /// Times the control service restarted a dead dataplane (`dataplane_command`);
    /// filled in by the control service, 0 from the dataplane's own socket.
    #[serde(default)]
    pub dataplane_restarts: u64,
    /// The snapshot generation every worker has applied (the one in force).
    #[serde(default)]
    pub generation: u64,
    pub rx: u64,
    pub tx: u64,
    pub dropped: u64,
    pub replicated: u64,
    pub stages: Vec<StageStat>,
    pub drops: Vec<DropStat>,
    pub ports: Vec<PortStat>,
    pub workers: Vec<WorkerStat>,
}

/// One trace record, formatted by the dataplane's control thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceLine {
    pub worker: u16,
    pub packet: u32,
    /// Nanoseconds since the packet's first record.
    pub ns: u64,
    pub stage: String,
    pub next: String,
    pub detail: String,
}

/// One of each message, for round-trip tests.
pub fn sample_requests() -> Vec<Request> {
    vec![
        Request::Hello {
            version: 1,
            client: "test".into(),
        },
        Request::PortAttach(PortSpec {
            name: "pod-a".into(),
            device: "net_tap0,iface=eth0".into(),
            netns: Some("/var/run/netns/a".into()),
            bridge: Some(1),
            queues: Some(2),
            mtu: Some(1450),
        }),
        Request::PortDetach {
            name: "pod-a".into(),
        },
        Request::PortList,
        Request::MacAdd {
            bridge: 1,
            mac: "0a:58:0a:f4:00:02".into(),
            port: "pod-a".into(),
        },
        Request::MacList,
        Request::Stats,
        Request::TraceStart { count: 10 },
        Request::TraceDump,
        Request::MacDel {
            bridge: 1,
            mac: "0a:58:0a:f4:00:02".into(),
        },
        Request::Ping,
        Request::StateShow,
        Request::NodeSet(sample_node()),
        Request::RemoteAdd(sample_remote()),
        Request::RemoteDel {
            name: "node2".into(),
        },
        Request::RouteList,
        Request::NeighborList,
        Request::ConntrackList(ConntrackFilter {
            proto: Some(6),
            addr: Some("10.244.0.2".into()),
            port: Some(80),
        }),
        Request::ConntrackFlush,
        Request::ConntrackSet(ConntrackSettings {
            tcp_established: Some(86_400),
            ..ConntrackSettings::default()
        }),
        Request::ConntrackSettingsShow,
        Request::ServiceSet(sample_service()),
        Request::ServiceDel {
            name: "default/web".into(),
        },
        Request::ServiceList,
        Request::Events { after: 7 },
        Request::CaptureStart(crate::CaptureSpec {
            point: "rx".into(),
            port: Some("pod-a".into()),
            stage: None,
            count: 10,
            snaplen: 256,
            filter: "icmp".into(),
        }),
        Request::CaptureRead,
        Request::CaptureStop,
    ]
}

/// One of each response, for round-trip tests.
pub fn sample_responses() -> Vec<Response> {
    vec![
        Response::Hello {
            version: 1,
            server: "podpath-dataplane".into(),
            dpdk: "DPDK 22.11.11".into(),
        },
        Response::Done,
        Response::Applied { generation: 7 },
        Response::Ports(vec![PortInfo {
            id: 0,
            name: "pod-a".into(),
            device: "net_tap0,iface=eth0".into(),
            driver: "net_tap".into(),
            netns: None,
            bridge: Some(1),
            mac: "02:00:00:00:00:01".into(),
            link_up: true,
            speed_mbps: 10000,
            mtu: 1450,
            queues: 1,
            xstats: vec![("rx_good_packets".into(), 3)],
        }]),
        Response::Macs(vec![MacInfo {
            worker: 0,
            bridge: 1,
            mac: "0a:58:0a:f4:00:02".into(),
            port: "pod-a".into(),
            age_ms: 12,
            is_static: false,
        }]),
        Response::Stats(Stats {
            dataplane_restarts: 0,
            tsc_hz: 2_450_000_000,
            generation: 3,
            rx: 10,
            tx: 9,
            dropped: 1,
            replicated: 0,
            stages: vec![StageStat {
                name: "bridge".into(),
                packets: 9,
                calls: 2,
                cycles: 900,
            }],
            drops: vec![DropStat {
                stage: "eth-input".into(),
                reason: "eth-truncated".into(),
                count: 1,
                kind: "drop".into(),
            }],
            ports: vec![PortStat {
                id: 0,
                name: "pod-a".into(),
                ..Default::default()
            }],
            workers: vec![WorkerStat {
                id: 0,
                lcore: 1,
                ..Default::default()
            }],
        }),
        Response::Trace(vec![TraceLine {
            worker: 0,
            packet: 1,
            ns: 0,
            stage: "bridge".into(),
            next: "port 1".into(),
            detail: "learned".into(),
        }]),
        Response::Services(vec![sample_service()]),
        Response::ConntrackSettings(ConntrackSettings {
            capacity: Some(65_536),
            udp: Some(30),
            ..ConntrackSettings::default()
        }),
        Response::Conntrack(vec![ConnInfo {
            worker: 0,
            proto: 6,
            timeout: 431_999,
            state: Some("ESTABLISHED".into()),
            orig: ("10.244.0.2".into(), "192.168.77.100".into(), 40000, 80),
            reply: ("192.168.77.100".into(), "192.168.77.11".into(), 80, 32768),
            assured: true,
            seen_reply: true,
        }]),
        Response::Routes(vec![RouteInfo {
            prefix: "10.244.1.0/24".into(),
            via: "vxlan to node2".into(),
        }]),
        Response::Neighbors(vec![NeighborInfo {
            worker: 0,
            ip: "10.244.0.2".into(),
            mac: "0a:58:0a:f4:00:02".into(),
            port: "pod-a".into(),
            age_ms: 3,
        }]),
        Response::State(DesiredState {
            node: Some(sample_node()),
            remotes: vec![sample_remote()],
            services: vec![sample_service()],
            ports: vec![],
            macs: vec![StaticMac {
                bridge: 1,
                mac: "0a:58:0a:f4:00:02".into(),
                port: "pod-a".into(),
            }],
            in_sync: true,
            generation: 3,
        }),
        Response::Error(ErrorReply {
            kind: ErrorKind::NotFound,
            message: "no port x".into(),
        }),
        Response::Events(vec![EventInfo {
            seq: 8,
            unix_ms: 1_764_600_000_000,
            kind: "port-attached".into(),
            detail: "pod-a (net_tap0,iface=eth0)".into(),
        }]),
        Response::Captured {
            packets: vec![crate::CapturedPacket {
                unix_ns: 1,
                worker: 0,
                port: "pod-a".into(),
                orig_len: 98,
                data: vec![0; 14],
            }],
            done: false,
            lost: 0,
        },
    ]
}

/// A node spec for tests and examples.
pub fn sample_node() -> NodeSpec {
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

/// A remote node spec for tests and examples.
pub fn sample_remote() -> RemoteSpec {
    RemoteSpec {
        name: "node2".into(),
        node_ip: "192.168.77.12".into(),
        vtep_mac: "0a:58:0a:f4:01:01".into(),
        pod_cidr: "10.244.1.0/24".into(),
    }
}

/// A Service spec for tests and examples.
pub fn sample_service() -> ServiceSpec {
    ServiceSpec {
        name: "default/web".into(),
        vip: "10.96.0.10".into(),
        port: 80,
        protocol: "tcp".into(),
        endpoints: vec![EndpointSpec {
            ip: "10.244.1.5".into(),
            port: 8080,
            weight: 1,
            ready: true,
            terminating: false,
            serving: None,
        }],
        affinity_timeout: None,
        node_port: None,
        external_traffic_policy: Some("Cluster".into()),
        internal_traffic_policy: Some("Local".into()),
        external_ips: vec!["203.0.113.50".into()],
        load_balancer_ips: vec!["203.0.113.60".into()],
        load_balancer_source_ranges: vec!["192.168.77.0/24".into()],
        health_check_node_port: None,
    }
}

/// The MAC the dataplane answers for a node's pods' gateway, which is also the node's
/// VTEP MAC (the inner destination other nodes write; flannel's `VtepMAC`): 0a:58
/// and the gateway's address, the convention of Kubernetes' bridge plugins. One rule
/// for the dataplane, the agent that announces it, and the lab.
pub fn gateway_mac(gw: std::net::Ipv4Addr) -> [u8; 6] {
    let o = gw.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// [`gateway_mac`] as text ("0a:58:0a:f4:00:01").
pub fn gateway_mac_text(gw: std::net::Ipv4Addr) -> String {
    gateway_mac(gw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A pod CIDR's gateway: its first address ("10.244.1.0/24" -> 10.244.1.1).
pub fn pod_gateway(pod_cidr: &str) -> Option<std::net::Ipv4Addr> {
    let (a, _) = pod_cidr.split_once('/')?;
    let a: std::net::Ipv4Addr = a.parse().ok()?;
    Some(std::net::Ipv4Addr::from(u32::from(a).wrapping_add(1)))
}

/// Where a part of a node's desired state came from, read from its name: each
/// source names what it makes in its own way, so `podpathctl state` can say it and
/// each source touches only its own entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// podpath-cni's ports: "pp" and 8 hex digits.
    Cni,
    /// The agent's etcd source: remotes "etcd-<subnet>".
    Etcd,
    /// The agent's Kubernetes source: remotes "k8s-<node>", Services
    /// "namespace/name:port/protocol".
    Kubernetes,
    /// The configuration file or podpathctl.
    Config,
}

impl Origin {
    pub fn of_port(name: &str) -> Origin {
        let hex = name.len() == 10
            && name.starts_with("pp")
            && name[2..].chars().all(|c| c.is_ascii_hexdigit());
        if hex {
            Origin::Cni
        } else {
            Origin::Config
        }
    }

    pub fn of_remote(name: &str) -> Origin {
        if name.starts_with("etcd-") {
            Origin::Etcd
        } else if name.starts_with("k8s-") {
            Origin::Kubernetes
        } else {
            Origin::Config
        }
    }

    pub fn of_service(name: &str) -> Origin {
        if is_kubernetes_service_name(name) {
            Origin::Kubernetes
        } else {
            Origin::Config
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Origin::Cni => "cni",
            Origin::Etcd => "etcd",
            Origin::Kubernetes => "kubernetes",
            Origin::Config => "config",
        }
    }
}

/// The names the agent's Kubernetes source gives Service entries:
/// "namespace/name:port/protocol".
pub fn is_kubernetes_service_name(n: &str) -> bool {
    n.split_once('/')
        .and_then(|(_, rest)| rest.rsplit_once(':'))
        .and_then(|(_, pp)| pp.split_once('/'))
        .is_some_and(|(port, proto)| {
            port.parse::<u16>().is_ok() && (proto == "tcp" || proto == "udp")
        })
}

#[cfg(test)]
mod origin_tests {
    use super::*;

    #[test]
    fn each_source_is_told_by_its_names() {
        assert_eq!(Origin::of_port("pp0a1b2c3d"), Origin::Cni);
        assert_eq!(Origin::of_port("pod-a"), Origin::Config);
        assert_eq!(Origin::of_port("ppxyz12345"), Origin::Config);
        assert_eq!(Origin::of_remote("etcd-10.244.1.0-24"), Origin::Etcd);
        assert_eq!(Origin::of_remote("k8s-node2"), Origin::Kubernetes);
        assert_eq!(Origin::of_remote("node2"), Origin::Config);
        assert_eq!(Origin::of_service("shop/web:80/tcp"), Origin::Kubernetes);
        assert_eq!(Origin::of_service("default/web"), Origin::Config);
        assert_eq!(Origin::of_service("d/a:http"), Origin::Config);
    }
}

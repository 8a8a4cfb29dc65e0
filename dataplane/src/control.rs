//! The control thread: owns the ports and the published port map, serves the Unix
//! socket, and talks to workers only by message. It never runs on a worker lcore.
//!
//! Publishing follows RCU: a new `PortMap` snapshot goes to every worker; each one
//! installs it between bursts and stores the generation in `applied_gen` (its
//! quiescent point). Only when every worker has passed that point does the control
//! thread stop and unplug a detached port; old snapshots come back over a channel and
//! are freed here, never on a worker.
//!
//! This file is the thread's core: ports (attach, detach, queue grants), publishing,
//! requests' dispatch, stats, traces and captures. Each feature's part of the
//! handler lives in its folder as an `impl Control`: `bridge/control.rs` (MAC
//! table), `ip4/control.rs` (node, remotes, neighbours), `nat/control.rs`
//! (connection table), `services/control.rs` (the Service table).
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Receiver, Sender};
use podpath_proto::{
    DropStat, ErrorKind, ErrorReply, NodeSpec, PortInfo, PortSpec, PortStat, RemoteSpec, Request,
    Response, RouteInfo, ServiceSpec, StageStat, Stats, TraceLine, WorkerStat, PROTOCOL_VERSION,
};
use ringbuf::traits::Consumer;
use ringbuf::HeapCons;

use crate::config::validate_port;
use crate::dpdk::{self, netns, EthPort, Grant, Mempool, PortSetup};
use crate::ip4::L3;
use crate::pipeline::counters::get;
use crate::pipeline::ConntrackConfig;
use crate::pipeline::{DropReason, Next, StageId, TraceDetail, TraceRecord, WorkerCounters};
use crate::port::PortEntry;
use crate::port::PortMap;
use crate::snapshot::{Settings, Snapshot};
use crate::wire::MacAddr;
use crate::worker::{Retired, WorkerMsg};

/// The control thread's view of one worker.
pub struct WorkerHandle {
    pub id: u16,
    pub lcore: u32,
    pub tx: Sender<WorkerMsg<Grant>>,
    pub counters: Arc<WorkerCounters>,
    pub trace: HeapCons<TraceRecord>,
}

pub(crate) struct Attached {
    pub(crate) spec: PortSpec,
    pub(crate) port: EthPort,
    pub(crate) queues: u16,
}

pub struct Control {
    pub(crate) pool: Mempool,
    /// Buffers for af_packet ports' frames (up to `max_frame`), made at the first
    /// af_packet attach.
    pub(crate) jumbo: Option<Mempool>,
    pub(crate) max_frame: u32,
    pub(crate) workers: Vec<WorkerHandle>,
    /// Whether the workers run. Before (the configuration file's ports and node
    /// being applied), a change waits for no acknowledgement: each worker starts
    /// from the snapshot current at its launch.
    pub(crate) launched: bool,
    pub(crate) ports: Vec<Attached>,
    /// The connection-tracking settings in force (what `snap.settings` holds), and
    /// the reservation that bounds the capacity.
    pub(crate) conntrack: ConntrackConfig,
    /// The generation of `snap`, the last snapshot published.
    pub(crate) gen: u64,
    pub(crate) snap: Snapshot,
    pub(crate) node: Option<NodeSpec>,
    pub(crate) remotes: Vec<RemoteSpec>,
    pub(crate) services: Vec<ServiceSpec>,
    pub(crate) retired: Receiver<Retired>,
    pub(crate) tsc_hz: u64,
    pub(crate) rx_desc: u16,
    pub(crate) tx_desc: u16,
    /// TCP endpoints that left their Services, since when: their connections live on
    /// (kube-proxy keeps them), so the tables keep naming them for reply ownership
    /// until the established timeout has passed.
    pub(crate) departed: HashMap<Departed, (bool, Instant)>,
    pub(crate) departed_ttl: Duration,
    /// Each Service's identity (`Service::uid`), by name; a deleted Service's goes
    /// with it, so one created later under any name gets a fresh one.
    pub(crate) uids: hashbrown::HashMap<String, u32>,
    pub(crate) next_uid: u32,
    /// Connections refused because a table was full, as last logged, and when.
    pub(crate) refused_logged: u64,
    pub(crate) refused_logged_at: Option<Instant>,
    /// Port counters at attach time, by port id: DPDK reuses ids after a detach, and
    /// a port's counters start from its attach.
    pub(crate) port_base: HashMap<u16, [u64; 5]>,
    /// A running packet capture's readers.
    pub(crate) capture: Option<Capturing>,
}

/// A packet capture seen from the control thread: each worker's ring and counts,
/// and the clock to turn TSC stamps into wall time.
pub(crate) struct Capturing {
    rings: Vec<HeapCons<crate::pipeline::capture::CaptureRecord>>,
    taken: Vec<Arc<std::sync::atomic::AtomicU64>>,
    lost: Vec<Arc<std::sync::atomic::AtomicU64>>,
    count: u32,
    unix_ns0: u64,
    tsc0: u64,
    last_read: Instant,
}

/// A tap's devargs with `persist`: the interface outlives the process (a crash, an
/// upgrade), so a pod keeps its eth0, address and routes, and the restarted
/// dataplane opens the same interface again. A detach leaves it too (the pod's
/// namespace, deleted with the pod, takes it; a re-attach finds it addressed).
pub(crate) fn persistent_tap(device: &str) -> String {
    let is_tap = device.starts_with("net_tap") && !device.starts_with("net_tun");
    if is_tap
        && !device
            .split(',')
            .any(|a| a == "persist" || a.starts_with("persist="))
    {
        format!("{device},persist")
    } else {
        device.to_string()
    }
}

/// Records each worker's capture ring holds: the reader drains it every 50 ms.
pub(crate) const CAPTURE_RING: usize = 512;
/// A capture nobody reads for this long is stopped (podpathctl was killed).
pub const CAPTURE_IDLE: Duration = Duration::from_secs(10);

/// At most one "connection table full" log line this often.
pub(crate) const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// The longest timeout a knob may take (ten years).
pub(crate) const MAX_TIMEOUT_S: u32 = 315_360_000;

/// Something that left the Service table while TCP connections to it may live on:
/// an endpoint, or a whole Service's virtual IP, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Departed {
    Endpoint(u32, u16, u8),
    Vip(u32, u16, u8),
}

/// Departed TCP endpoints and Services remembered at most (see `Control::departed`).
pub(crate) const DEPARTED_MAX: usize = 16_384;

/// How long a change waits for every worker to apply it.
pub(crate) const ACK_WAIT: Duration = Duration::from_secs(5);

/// What the Service table needs of the node (its local endpoints and NodePorts).
pub(crate) fn node_info(l3: &L3) -> Option<crate::services::table::NodeInfo> {
    l3.node.as_ref().map(|n| crate::services::table::NodeInfo {
        node_ip: n.node_ip,
        pod_net: n.pod_net,
    })
}

/// Waits until every worker has applied generation `gen` and settled it; false when
/// `timeout` passed first.
pub fn wait_settled(workers: &[&WorkerCounters], gen: u64, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if workers.iter().all(|c| {
            c.applied_gen.load(Ordering::Acquire) >= gen
                && c.settled_gen.load(Ordering::Acquire) >= gen
        }) {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The answer to a change: the snapshot generation every worker now runs.
/// A list edited by name (a batch's remotes or Services): replace in place, delete by
/// tombstone, both O(1), with an undo log to give the original list back.
pub(crate) struct ByName<T> {
    items: Vec<Option<T>>,
    at: hashbrown::HashMap<String, usize>,
    /// (slot, what it held) for every edit, and the length before the batch.
    undo: Vec<(usize, Option<T>)>,
    len: usize,
}

impl<T> ByName<T> {
    /// Indexes the entries named in `touched` only (the batch's names).
    pub(crate) fn new(
        v: Vec<T>,
        name: impl Fn(&T) -> &str,
        touched: &hashbrown::HashSet<String>,
    ) -> Self {
        let at = v
            .iter()
            .enumerate()
            .filter(|(_, x)| touched.contains(name(x)))
            .map(|(i, x)| (name(x).to_string(), i))
            .collect();
        let len = v.len();
        ByName {
            items: v.into_iter().map(Some).collect(),
            at,
            undo: Vec::new(),
            len,
        }
    }

    pub(crate) fn set(&mut self, name: &str, x: T) {
        match self.at.get(name) {
            Some(&i) => {
                let old = self.items[i].replace(x);
                self.undo.push((i, old));
            }
            None => {
                self.at.insert(name.to_string(), self.items.len());
                self.items.push(Some(x));
            }
        }
    }

    pub(crate) fn del(&mut self, name: &str) {
        if let Some(i) = self.at.remove(name) {
            let old = self.items[i].take();
            self.undo.push((i, old));
        }
    }

    /// The list as edited, by reference.
    pub(crate) fn current(&self) -> Vec<&T> {
        self.items.iter().flatten().collect()
    }

    pub(crate) fn into_vec(self) -> Vec<T> {
        self.items.into_iter().flatten().collect()
    }

    /// The list from before the edits.
    pub(crate) fn rollback(mut self) -> Vec<T> {
        while let Some((i, old)) = self.undo.pop() {
            self.items[i] = old;
        }
        self.items.truncate(self.len);
        self.items.into_iter().flatten().collect()
    }
}

pub(crate) fn applied(generation: u64) -> Response {
    Response::Applied { generation }
}

pub use crate::config::{JUMBO_MBUFS, MBUF_DATA_ROOM, MBUF_HEADROOM};

pub(crate) fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        kind,
        message: message.into(),
    }
}

/// Names a trace line gives ports and remote nodes (the features' trace formatters
/// ask).
impl crate::pipeline::trace::Names for Control {
    fn port(&self, id: u16) -> String {
        self.port_name(id)
    }

    fn remote(&self, index: u16) -> String {
        self.snap
            .l3
            .remotes
            .get(usize::from(index))
            .map_or_else(|| "?".to_string(), |x| x.name.clone())
    }
}

impl Control {
    pub fn new(
        pool: Mempool,
        retired: Receiver<Retired>,
        tsc_hz: u64,
        rx_desc: u16,
        tx_desc: u16,
        conntrack: ConntrackConfig,
    ) -> Control {
        let settings = Arc::new(Settings {
            conntrack_capacity: conntrack.capacity,
            timeouts: conntrack.timeouts,
        });
        Control {
            conntrack,
            pool,
            jumbo: None,
            max_frame: crate::config::DEFAULT_MAX_FRAME,
            workers: Vec::new(),
            launched: false,
            ports: Vec::new(),
            gen: 0,
            snap: Snapshot {
                settings,
                ..Snapshot::default()
            },
            node: None,
            remotes: Vec::new(),
            services: Vec::new(),
            retired,
            tsc_hz,
            rx_desc,
            tx_desc,
            port_base: HashMap::new(),
            departed: HashMap::new(),
            departed_ttl: Duration::from_secs(432_000),
            uids: hashbrown::HashMap::new(),
            next_uid: 1,
            refused_logged: 0,
            refused_logged_at: None,
            capture: None,
        }
    }

    /// Starts a packet capture on every worker (replacing one that runs).
    pub fn capture_start(&mut self, spec: &podpath_proto::CaptureSpec) -> Result<(), ErrorReply> {
        use crate::pipeline::capture::{Capture, Point};
        let bad = |m: String| err(ErrorKind::BadRequest, m);
        let filter = podpath_proto::CaptureFilter::parse(&spec.filter).map_err(bad)?;
        let port = match spec.port.as_deref() {
            None => None,
            Some(name) => Some(
                self.ports
                    .iter()
                    .find(|a| a.spec.name == name)
                    .map(|a| a.port.id())
                    .ok_or_else(|| err(ErrorKind::NotFound, format!("no port {name:?}")))?,
            ),
        };
        let stage = match spec.stage.as_deref() {
            None => None,
            Some(name) => Some(
                StageId::ALL
                    .iter()
                    .copied()
                    .find(|s| s.name() == name)
                    .ok_or_else(|| {
                        let names: Vec<&str> = StageId::ALL.iter().map(|s| s.name()).collect();
                        bad(format!("no stage {name:?} (stages: {})", names.join(", ")))
                    })?,
            ),
        };
        let point = match (spec.point.as_str(), port, stage) {
            ("rx", Some(p), None) => Point::Rx(p),
            ("tx", Some(p), None) => Point::Tx(p),
            ("before", p, Some(s)) => Point::Before(s, p),
            ("after", p, Some(s)) => Point::After(s, p),
            ("rx" | "tx", None, _) => return Err(bad("rx and tx captures need a port".into())),
            ("before" | "after", _, None) => {
                return Err(bad("before and after need a stage".into()))
            }
            (p, _, _) => return Err(bad(format!("capture point {p:?}: rx, tx, before or after"))),
        };
        if spec.count == 0 {
            return Err(bad("capture count must be at least 1".into()));
        }
        self.capture_stop();
        let mut c = Capturing {
            rings: Vec::new(),
            taken: Vec::new(),
            lost: Vec::new(),
            count: spec.count,
            unix_ns0: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0)),
            tsc0: dpdk::rdtsc(),
            last_read: Instant::now(),
        };
        for w in &self.workers {
            use ringbuf::traits::Split;
            let (prod, cons) = ringbuf::HeapRb::new(CAPTURE_RING).split();
            let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let lost = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let cap = Capture::new(
                point,
                filter,
                spec.snaplen,
                spec.count,
                prod,
                Arc::clone(&taken),
                Arc::clone(&lost),
            );
            if !Self::tell(w, WorkerMsg::Capture(Some(cap))) {
                return Err(err(
                    ErrorKind::Unavailable,
                    format!("worker {} did not take the capture", w.id),
                ));
            }
            c.rings.push(cons);
            c.taken.push(taken);
            c.lost.push(lost);
        }
        self.capture = Some(c);
        Ok(())
    }

    /// What the workers took since the last read; done once each took its count.
    pub fn capture_read(&mut self) -> Response {
        let hz = self.tsc_hz.max(1);
        let mut packets = Vec::new();
        let Some(c) = self.capture.as_mut() else {
            return Response::Captured {
                packets,
                done: true,
                lost: 0,
            };
        };
        c.last_read = Instant::now();
        let mut names = HashMap::new();
        for (w, ring) in c.rings.iter_mut().enumerate() {
            while let Some(r) = ring.try_pop() {
                let dt = u128::from(r.tsc.wrapping_sub(c.tsc0)) * 1_000_000_000 / u128::from(hz);
                let port = names
                    .entry(r.port)
                    .or_insert_with(|| {
                        self.snap
                            .ports
                            .port(r.port)
                            .map_or_else(|| format!("port{}", r.port), |p| p.name.clone())
                    })
                    .clone();
                packets.push(podpath_proto::CapturedPacket {
                    unix_ns: c.unix_ns0 + u64::try_from(dt).unwrap_or(0),
                    worker: u16::try_from(w).unwrap_or(0),
                    port,
                    orig_len: r.orig_len,
                    data: r.data[..usize::from(r.len)].to_vec(),
                });
            }
        }
        packets.sort_by_key(|p| p.unix_ns);
        let done = c
            .taken
            .iter()
            .all(|t| t.load(Ordering::Relaxed) >= u64::from(c.count));
        let lost = c.lost.iter().map(|l| l.load(Ordering::Relaxed)).sum();
        Response::Captured {
            packets,
            done,
            lost,
        }
    }

    /// Stops the capture on every worker.
    pub fn capture_stop(&mut self) {
        if self.capture.take().is_some() {
            for w in &self.workers {
                let _ = Self::tell(w, WorkerMsg::Capture(None));
            }
        }
    }

    /// Stops a capture nobody has read for [`CAPTURE_IDLE`] (called periodically).
    pub fn capture_housekeeping(&mut self) {
        if self
            .capture
            .as_ref()
            .is_some_and(|c| c.last_read.elapsed() > CAPTURE_IDLE)
        {
            self.capture_stop();
        }
    }

    /// A log line when connection tables refused new connections since the last
    /// one: at most one per `REFUSED_LOG_EVERY` (workers never log; the counters
    /// say it, the control thread reads them).
    pub fn watch(&mut self) -> Option<String> {
        let refused: u64 = self
            .workers
            .iter()
            .map(|w| get(&w.counters.ct_refused_full))
            .sum();
        if refused <= self.refused_logged
            || self
                .refused_logged_at
                .is_some_and(|t| t.elapsed() < REFUSED_LOG_EVERY)
        {
            return None;
        }
        let n = refused - self.refused_logged;
        let cap: u64 = self
            .workers
            .iter()
            .map(|w| get(&w.counters.ct_capacity))
            .sum();
        self.refused_logged = refused;
        self.refused_logged_at = Some(Instant::now());
        Some(format!(
            "connection table full: {n} new connection(s) refused (ct-table-full) since the last report; {cap} entries in all workers' tables and none unassured to evict; raise [conntrack] capacity"
        ))
    }

    /// A port's counters summed over the workers.
    pub(crate) fn port_sums(&self, id: u16) -> [u64; 5] {
        let mut v = [0u64; 5];
        for w in &self.workers {
            if let Some(pc) = w.counters.ports.get(usize::from(id)) {
                v[0] += get(&pc.rx_packets);
                v[1] += get(&pc.rx_bytes);
                v[2] += get(&pc.tx_packets);
                v[3] += get(&pc.tx_bytes);
                v[4] += get(&pc.tx_dropped);
            }
        }
        v
    }

    pub fn n_workers(&self) -> usize {
        self.workers.len().max(1)
    }

    pub fn set_workers(&mut self, w: Vec<WorkerHandle>) {
        self.workers = w;
    }

    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// The workers run: from now on a change is in force only once every worker
    /// acknowledged it.
    pub fn set_launched(&mut self) {
        self.launched = true;
    }

    /// The map for the current set of ports.
    pub fn build_map(&self, workers: usize) -> Arc<PortMap> {
        let entries = self
            .ports
            .iter()
            .map(|a| PortEntry {
                id: a.port.id(),
                name: a.spec.name.clone(),
                bd: a.spec.bridge,
                mac: MacAddr(a.port.mac()),
                rx_queues: a.queues,
                mtu: a.port.mtu(),
            })
            .collect();
        let (uplink, host) = match &self.node {
            Some(n) => (Some(n.uplink.as_str()), n.host.as_deref()),
            None => (None, None),
        };
        Arc::new(PortMap::build(entries, workers).with_roles(uplink, host))
    }

    /// The queue tokens worker `w` uses with `map`: the rx queues the map gives it,
    /// and its own tx queue (its index) on every port of the map.
    pub fn grant(&self, map: &PortMap, w: usize) -> Grant {
        let attached = |p: u16| self.ports.iter().find(|a| a.port.id() == p);
        let rx = map
            .rx_of(w)
            .iter()
            .filter_map(|&(p, q)| attached(p)?.port.rx_queue(q))
            .collect();
        let tx = u16::try_from(w).map_or_else(
            |_| Vec::new(),
            |q| {
                self.ports
                    .iter()
                    .filter(|a| map.port(a.port.id()).is_some())
                    .filter_map(|a| a.port.tx_queue(q))
                    .collect()
            },
        );
        Grant { rx, tx }
    }

    /// Asks every worker for a copy of something it owns (MAC, neighbour, connection
    /// tables) and collects the answers, giving each `wait` to reply.
    pub(crate) fn gather<T>(
        &self,
        ask: impl Fn(Sender<Vec<T>>) -> WorkerMsg<Grant>,
        wait: Duration,
    ) -> Result<Vec<Vec<T>>, ErrorReply> {
        let mut all = Vec::with_capacity(self.workers.len());
        for w in &self.workers {
            let (tx, rx) = bounded::<Vec<T>>(1);
            if !Self::tell(w, ask(tx)) {
                return Err(err(
                    ErrorKind::Unavailable,
                    format!("worker {} is not taking messages", w.id),
                ));
            }
            all.push(rx.recv_timeout(wait).map_err(|_| {
                err(
                    ErrorKind::Unavailable,
                    format!("worker {} did not answer", w.id),
                )
            })?);
        }
        Ok(all)
    }

    /// Sends a message to a worker, waiting at most a second: a stuck worker must
    /// not hang the control thread. False when the worker did not take it.
    pub(crate) fn tell(w: &WorkerHandle, msg: WorkerMsg<Grant>) -> bool {
        w.tx.send_timeout(msg, Duration::from_secs(1)).is_ok()
    }

    /// Publishes `next` to every worker as a new generation and waits until every
    /// worker has applied it and finished what it implies (`settled_gen`). Err when
    /// one did not within `ACK_WAIT`: the snapshot is published (it will be applied
    /// when the worker gets to it) but the change is not known to be in force.
    pub(crate) fn publish(&mut self, next: Snapshot) -> Result<u64, ErrorReply> {
        self.gen += 1;
        let gen = self.gen;
        if !Arc::ptr_eq(&next.ports, &self.snap.ports) {
            // Each worker's queue tokens for the new map, ahead of it: a port leaves
            // a worker's hands with its old grant, so it can be stopped once every
            // worker acknowledged.
            for (k, w) in self.workers.iter().enumerate() {
                let _ = Self::tell(w, WorkerMsg::Queues(self.grant(&next.ports, k)));
            }
        }
        for w in &self.workers {
            // A worker that misses it never reaches `gen`: the wait below says so.
            let _ = Self::tell(w, WorkerMsg::Snapshot(next.clone(), gen));
        }
        self.snap = next;
        if !self.launched || self.wait_settled(gen, ACK_WAIT) {
            Ok(gen)
        } else {
            Err(err(
                ErrorKind::Unavailable,
                format!(
                    "generation {gen} is published but not every worker applied it within {} s",
                    ACK_WAIT.as_secs()
                ),
            ))
        }
    }

    /// The current snapshot with the port map rebuilt from the attached ports.
    pub(crate) fn with_ports(&self) -> Snapshot {
        Snapshot {
            ports: self.build_map(self.n_workers()),
            ..self.snap.clone()
        }
    }

    /// The generation every worker has applied (the one in force).
    pub fn applied_generation(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| w.counters.applied_gen.load(Ordering::Acquire))
            .min()
            .unwrap_or(self.gen)
    }

    pub fn generation(&self) -> u64 {
        self.gen
    }

    pub fn current_snapshot(&self) -> Snapshot {
        self.snap.clone()
    }

    /// Waits until every worker has applied generation `gen` and settled it.
    pub(crate) fn wait_settled(&self, gen: u64, timeout: Duration) -> bool {
        let counters: Vec<&WorkerCounters> = self.workers.iter().map(|w| &*w.counters).collect();
        wait_settled(&counters, gen, timeout)
    }

    /// Frees the snapshots workers handed back.
    pub fn reclaim(&self) {
        while self.retired.try_recv().is_ok() {}
    }

    /// Applies remote and Service changes together and publishes one snapshot.
    pub(crate) fn batch(&mut self, reqs: Vec<Request>) -> Result<u64, ErrorReply> {
        // Checked before anything moves: a batch that cannot apply changes nothing.
        podpath_proto::batch::check(
            &reqs,
            self.remotes.iter().map(|r| r.name.as_str()),
            self.services.iter().map(|s| s.name.as_str()),
        )?;
        let wanted: hashbrown::HashSet<&str> = reqs
            .iter()
            .filter_map(|r| match r {
                Request::RemoteAdd(x) => Some(x.name.as_str()),
                Request::ServiceSet(x) => Some(x.name.as_str()),
                Request::RemoteDel { name } | Request::ServiceDel { name } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        // The lists are edited in place, not copied (they may hold 100 000
        // endpoints), with an undo log for a build that fails.
        let names: hashbrown::HashSet<String> = wanted.iter().map(|n| n.to_string()).collect();
        drop(wanted);
        let mut remotes = ByName::new(
            std::mem::take(&mut self.remotes),
            |r: &RemoteSpec| &r.name,
            &names,
        );
        let mut services = ByName::new(
            std::mem::take(&mut self.services),
            |s: &ServiceSpec| &s.name,
            &names,
        );
        let mut changed: std::collections::HashSet<String> = std::collections::HashSet::new();
        let (mut l3_changed, mut svc_changed) = (false, false);
        for r in reqs {
            match r {
                Request::RemoteAdd(r) => {
                    l3_changed = true;
                    let name = r.name.clone();
                    remotes.set(&name, r);
                }
                Request::RemoteDel { name } => {
                    l3_changed = true;
                    remotes.del(&name);
                }
                Request::ServiceSet(s) => {
                    svc_changed = true;
                    let name = s.name.clone();
                    services.set(&name, s);
                    changed.insert(name);
                }
                Request::ServiceDel { name } => {
                    svc_changed = true;
                    services.del(&name);
                    changed.insert(name);
                }
                _ => {}
            }
        }
        let (new_remotes, new_services) = (remotes.current(), services.current());
        let built = (|| {
            let l3 = if l3_changed {
                let node = self.node.clone().ok_or_else(|| {
                    err(
                        ErrorKind::BadRequest,
                        "set the node first (NodeSet): remote nodes need its underlay and VNI",
                    )
                })?;
                Arc::new(
                    L3::build(
                        &node,
                        &new_remotes.iter().map(|r| (*r).clone()).collect::<Vec<_>>(),
                    )
                    .map_err(|e| err(ErrorKind::BadRequest, e.to_string()))?,
                )
            } else {
                Arc::clone(&self.snap.l3)
            };
            let table = if svc_changed || (l3_changed && !new_services.is_empty()) {
                self.build_services(&new_services, &l3, &|n| !changed.contains(n))?
            } else {
                Arc::clone(&self.snap.services)
            };
            Ok::<_, ErrorReply>((l3, table))
        })();
        drop((new_remotes, new_services));
        match built {
            Ok((l3, table)) => {
                self.remotes = remotes.into_vec();
                self.services = services.into_vec();
                self.publish(Snapshot {
                    l3,
                    services: table,
                    ..self.snap.clone()
                })
            }
            Err(e) => {
                self.remotes = remotes.rollback();
                self.services = services.rollback();
                Err(e)
            }
        }
    }

    /// The largest frame an af_packet port takes whole (`dataplane.max_frame`).
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame;
    }

    /// What to probe a port's device with, and the pool its rx queues fill from:
    /// af_packet ports get ring frames and buffers for `max_frame` (the kernel hands
    /// them reassembled datagrams); other devices use the common pool.
    pub(crate) fn devargs_and_pool(
        &mut self,
        spec: &PortSpec,
        queues: u16,
    ) -> Result<(String, Mempool), ErrorReply> {
        if !dpdk::af_packet::is_af_packet(&spec.device) {
            return Ok((persistent_tap(&spec.device), self.pool));
        }
        let (devargs, frame) = dpdk::af_packet::devargs(&spec.device, self.max_frame, queues)
            .map_err(|m| err(ErrorKind::BadRequest, format!("port {}: {m}", spec.name)))?;
        if dpdk::af_packet::data_room(frame, MBUF_HEADROOM) <= u32::from(MBUF_DATA_ROOM) {
            return Ok((devargs, self.pool));
        }
        if let Some(j) = self.jumbo {
            return Ok((devargs, j));
        }
        let room =
            dpdk::af_packet::data_room(dpdk::af_packet::ring_frame(self.max_frame), MBUF_HEADROOM);
        let j = Mempool::new(
            "podpath_jumbo",
            JUMBO_MBUFS,
            64,
            u16::try_from(room).unwrap_or(u16::MAX),
        )
        .map_err(|e| {
            err(
                ErrorKind::Device,
                format!(
                    "port {}: no buffers for af_packet frames of {} bytes ({e}): raise eal.memory_mb by {} MiB or lower dataplane.max_frame",
                    spec.name,
                    self.max_frame,
                    (u64::from(JUMBO_MBUFS) * u64::from(room)) >> 20
                ),
            )
        })?;
        self.jumbo = Some(j);
        Ok((devargs, j))
    }

    /// What this dataplane has been told (ports, node, remotes, Services), as the
    /// requests that would tell it again: saved in the state directory after every
    /// change, so a restarted dataplane forwards before its control service speaks.
    pub fn applied(&self) -> Vec<Request> {
        let mut v: Vec<Request> = self
            .ports
            .iter()
            .map(|a| Request::PortAttach(a.spec.clone()))
            .collect();
        if let Some(n) = &self.node {
            v.push(Request::NodeSet(n.clone()));
        }
        v.extend(self.remotes.iter().cloned().map(Request::RemoteAdd));
        v.extend(self.services.iter().cloned().map(Request::ServiceSet));
        v
    }

    /// Replays `applied()` of an earlier process: what is already there (from the
    /// configuration file) stays; a port that cannot be opened any more (its pod
    /// went while nothing ran) is skipped and named. The control service then
    /// reconciles as usual and finds little or nothing to change.
    pub fn replay(&mut self, reqs: Vec<Request>) -> Vec<String> {
        let mut problems = Vec::new();
        for r in reqs {
            let what = match &r {
                Request::PortAttach(p) if self.ports.iter().any(|a| a.spec.name == p.name) => {
                    continue
                }
                Request::NodeSet(_) if self.node.is_some() => continue,
                Request::RemoteAdd(x) if self.remotes.iter().any(|y| y.name == x.name) => continue,
                Request::PortAttach(p) => format!("port {}", p.name),
                Request::NodeSet(_) => "the node".to_string(),
                Request::RemoteAdd(x) => format!("remote {}", x.name),
                Request::ServiceSet(x) => format!("service {}", x.name),
                _ => continue,
            };
            if let Response::Error(e) = self.handle(r) {
                problems.push(format!("{what}: {}", e.message));
            }
        }
        problems
    }

    /// Plugs in and starts a port, then publishes it to the workers.
    pub fn attach(&mut self, spec: PortSpec) -> Result<PortInfo, ErrorReply> {
        validate_port(&spec).map_err(|m| err(ErrorKind::BadRequest, m))?;
        if self.ports.iter().any(|a| a.spec.name == spec.name) {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!("a port named {:?} is already attached", spec.name),
            ));
        }
        let dev = spec.device.split(',').next().unwrap_or("");
        if self.ports.iter().any(|a| a.port.device_name() == dev) {
            return Err(err(ErrorKind::AlreadyExists, format!("device {dev:?} is already attached; give each port its own device name (net_tap0, net_tap1, ...)")));
        }
        let workers = u16::try_from(self.n_workers()).unwrap_or(1);
        let queues = spec.queues.unwrap_or(workers);
        let setup = PortSetup {
            rx_queues: queues,
            tx_queues: workers,
            rx_desc: self.rx_desc,
            tx_desc: self.tx_desc,
            mtu: spec.mtu,
        };
        let (devargs, pool) = self.devargs_and_pool(&spec, setup.rx_queues.max(setup.tx_queues))?;
        let bring_up = || -> Result<EthPort, dpdk::PortError> {
            let mut p = EthPort::probe(&devargs)?;
            p.configure(&setup, &pool)?;
            p.start()?;
            Ok(p)
        };
        let port = match &spec.netns {
            Some(ns) => netns::with_netns(Path::new(ns), bring_up)
                .map_err(|e| err(ErrorKind::Device, format!("port {}: {e}", spec.name)))?,
            None => bring_up(),
        }
        .map_err(|e| err(ErrorKind::Device, format!("port {}: {e}", spec.name)))?;
        if usize::from(port.id()) >= crate::pipeline::MAX_PORTS {
            return Err(err(
                ErrorKind::Device,
                format!(
                    "port id {} is beyond the supported {}",
                    port.id(),
                    crate::pipeline::MAX_PORTS
                ),
            ));
        }
        let id = port.id();
        self.port_base.insert(id, self.port_sums(id));
        self.ports.push(Attached { spec, port, queues });
        // A worker that is slow to apply it only polls the new port later.
        let _ = self.publish(self.with_ports());
        let a = self.ports.last().expect("just pushed");
        Ok(port_info(a, false))
    }

    /// Withdraws a port from the workers, waits for them to pass a quiescent point,
    /// then stops and unplugs it.
    pub fn detach(&mut self, name: &str) -> Result<(), ErrorReply> {
        let i = self
            .ports
            .iter()
            .position(|a| a.spec.name == name)
            .ok_or_else(|| {
                err(
                    ErrorKind::NotFound,
                    format!("no port named {name:?} (see `podpathctl port list`)"),
                )
            })?;
        let a = self.ports.remove(i);
        if self.publish(self.with_ports()).is_err() {
            // A worker is stuck: unplugging now could pull the device from under it.
            self.ports.insert(i, a);
            let _ = self.publish(self.with_ports());
            return Err(err(
                ErrorKind::Unavailable,
                format!(
                    "workers did not acknowledge the change within {} s; port kept",
                    ACK_WAIT.as_secs()
                ),
            ));
        }
        let Attached { spec, port, .. } = a;
        let res = match &spec.netns {
            // A pod's namespace may be gone already (deleted before the detach): then
            // its tap went with it, and the port is removed from here.
            Some(ns) if Path::new(ns).exists() => {
                netns::with_netns(Path::new(ns), || port.remove())
                    .map_err(|e| err(ErrorKind::Device, e.to_string()))?
            }
            _ => port.remove(),
        };
        self.reclaim();
        res.map_err(|e| err(ErrorKind::Device, e.to_string()))
    }

    pub fn port_list(&self, xstats: bool) -> Vec<PortInfo> {
        self.ports.iter().map(|a| port_info(a, xstats)).collect()
    }

    pub(crate) fn port_name(&self, id: u16) -> String {
        self.snap
            .ports
            .port(id)
            .map_or_else(|| format!("port{id}"), |p| p.name.clone())
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            tsc_hz: self.tsc_hz,
            generation: self.applied_generation(),
            ..Stats::default()
        };
        let mut ports: HashMap<u16, PortStat> = HashMap::new();
        s.stages = StageId::ALL
            .iter()
            .map(|st| StageStat {
                name: st.name().into(),
                ..Default::default()
            })
            .collect();
        // One line per (stage, reason) a stage declares: where the drop was decided.
        let declared: Vec<(StageId, DropReason)> = StageId::ALL
            .iter()
            .flat_map(|&st| st.drops().iter().map(move |&r| (st, r)))
            .collect();
        s.drops = declared
            .iter()
            .map(|&(st, r)| DropStat {
                stage: st.name().into(),
                reason: r.name().into(),
                count: 0,
                kind: r.kind().name().into(),
            })
            .collect();
        for w in &self.workers {
            let c = &w.counters;
            let mut ws = WorkerStat {
                id: w.id,
                lcore: w.lcore,
                polls: get(&c.polls),
                idle_polls: get(&c.idle_polls),
                sleeps: get(&c.sleeps),
                busy_cycles: get(&c.busy_cycles),
                total_cycles: get(&c.total_cycles),
                rx: c.rx_total(),
                tx: c.tx_total(),
                dropped: c.drops_total(),
                replicated: get(&c.replicated),
                mac_learned: get(&c.mac_learned),
                mac_moved: get(&c.mac_moved),
                mac_aged: get(&c.mac_aged),
                mac_table_full: get(&c.mac_table_full),
                neighbor_table_full: get(&c.neighbor_table_full),
                affinity_table_full: get(&c.affinity_table_full),
                frag_table_full: get(&c.frag_table_full),
                trace_lost: get(&c.trace_lost),
                ct_entries: get(&c.ct_entries),
                ct_inserted: get(&c.ct_inserted),
                ct_expired: get(&c.ct_expired),
                ct_early_dropped: get(&c.ct_early_dropped),
                ct_refused_full: get(&c.ct_refused_full),
                ct_resumed: get(&c.ct_restored),
                handoff_out: get(&c.handoff_out),
                handoff_in: get(&c.handoff_in),
                applied_generation: c.applied_gen.load(Ordering::Acquire),
                settled_generation: c.settled_gen.load(Ordering::Acquire),
                ..Default::default()
            };
            for (k, st) in StageId::ALL.iter().enumerate() {
                let sc = &c.stages[st.index()];
                let v = StageStat {
                    name: st.name().into(),
                    packets: get(&sc.packets),
                    calls: get(&sc.calls),
                    cycles: get(&sc.cycles),
                };
                s.stages[k].packets += v.packets;
                s.stages[k].calls += v.calls;
                s.stages[k].cycles += v.cycles;
                ws.stages.push(v);
            }
            for (k, &(st, r)) in declared.iter().enumerate() {
                let n = c.drops_at(st, r);
                s.drops[k].count += n;
                if n > 0 {
                    ws.drops.push(DropStat {
                        stage: st.name().into(),
                        reason: r.name().into(),
                        count: n,
                        kind: r.kind().name().into(),
                    });
                }
            }
            s.rx += ws.rx;
            s.tx += ws.tx;
            s.dropped += ws.dropped;
            s.replicated += ws.replicated;
            s.workers.push(ws);
        }
        // Per port: the attached ports, counted since their attach.
        for a in &self.ports {
            let id = a.port.id();
            let now = self.port_sums(id);
            let base = self.port_base.get(&id).copied().unwrap_or_default();
            let d: Vec<u64> = now
                .iter()
                .zip(base)
                .map(|(n, b)| n.saturating_sub(b))
                .collect();
            ports.insert(
                id,
                PortStat {
                    id,
                    name: a.spec.name.clone(),
                    rx_packets: d[0],
                    rx_bytes: d[1],
                    tx_packets: d[2],
                    tx_bytes: d[3],
                    tx_dropped: d[4],
                },
            );
        }
        let mut p: Vec<PortStat> = ports.into_values().collect();
        p.sort_by_key(|p| p.id);
        s.ports = p;
        s
    }

    pub fn trace_start(&self, n: u32) {
        for w in &self.workers {
            let _ = Self::tell(w, WorkerMsg::Trace(n));
        }
    }

    pub fn trace_dump(&mut self) -> Vec<TraceLine> {
        let mut recs: Vec<TraceRecord> = Vec::new();
        for w in &mut self.workers {
            while let Some(r) = w.trace.try_pop() {
                recs.push(r);
            }
        }
        recs.sort_by_key(|r| (r.worker, r.packet, r.tsc));
        let mut first: HashMap<(u16, u32), u64> = HashMap::new();
        let hz = self.tsc_hz.max(1);
        recs.iter()
            .map(|r| {
                let t0 = *first.entry((r.worker, r.packet)).or_insert(r.tsc);
                TraceLine {
                    worker: r.worker,
                    packet: r.packet,
                    ns: r.tsc.saturating_sub(t0).saturating_mul(1_000_000_000) / hz,
                    stage: if matches!(r.detail, TraceDetail::Rx { .. }) {
                        "rx".into()
                    } else {
                        r.stage.name().into()
                    },
                    next: self.format_next(r.next),
                    detail: self.format_detail(&r.detail),
                }
            })
            .collect()
    }

    pub(crate) fn format_next(&self, n: Next) -> String {
        crate::pipeline::trace::describe_next(n, self)
    }

    pub(crate) fn format_detail(&self, d: &TraceDetail) -> String {
        d.describe(self)
    }

    /// Executes one request.
    pub fn handle(&mut self, req: Request) -> Response {
        let r = match req {
            Request::Hello { version, .. } => {
                if version == PROTOCOL_VERSION {
                    Ok(Response::Hello {
                        version: PROTOCOL_VERSION,
                        server: format!("podpath-dataplane {}", env!("CARGO_PKG_VERSION")),
                        dpdk: dpdk::version(),
                    })
                } else {
                    Err(err(ErrorKind::Version, format!("protocol version {version} is not supported (this dataplane speaks {PROTOCOL_VERSION})")))
                }
            }
            Request::PortAttach(spec) => self.attach(spec).map(|p| Response::Ports(vec![p])),
            Request::PortDetach { name } => self.detach(&name).map(|()| Response::Done),
            Request::PortList => Ok(Response::Ports(self.port_list(true))),
            Request::MacAdd { bridge, mac, port } => {
                self.mac_add(bridge, &mac, &port).map(|()| Response::Done)
            }
            Request::MacList => self.mac_list().map(Response::Macs),
            Request::Stats => Ok(Response::Stats(self.stats())),
            Request::TraceStart { count } => {
                self.trace_start(count);
                Ok(Response::Done)
            }
            Request::TraceDump => Ok(Response::Trace(self.trace_dump())),
            Request::CaptureStart(spec) => self.capture_start(&spec).map(|()| Response::Done),
            Request::CaptureRead => Ok(self.capture_read()),
            Request::CaptureStop => {
                self.capture_stop();
                Ok(Response::Done)
            }
            Request::Events { .. } => Err(ErrorReply {
                kind: ErrorKind::BadRequest,
                message: "events are the control service's: ask podpath-control's socket".into(),
            }),
            Request::MacDel { bridge, mac } => self.mac_del(bridge, &mac).map(|()| Response::Done),
            Request::Ping => Ok(Response::Done),
            Request::NodeSet(n) => self.node_set(n).map(applied),
            Request::RemoteAdd(r) => self.remote_add(r).map(applied),
            Request::RemoteDel { name } => self.remote_del(&name).map(applied),
            Request::RouteList => Ok(Response::Routes(
                self.snap
                    .l3
                    .describe()
                    .into_iter()
                    .map(|(prefix, via)| RouteInfo { prefix, via })
                    .collect(),
            )),
            Request::NeighborList => self.neighbor_list().map(Response::Neighbors),
            Request::ConntrackList(f) => self.conntrack_list(&f).map(Response::Conntrack),
            Request::ServiceSet(s) => {
                let mut all = self.services.clone();
                let name = s.name.clone();
                match all.iter_mut().find(|x| x.name == s.name) {
                    Some(x) => *x = s,
                    None => all.push(s),
                }
                self.set_services(all, &name).map(applied)
            }
            Request::ServiceDel { name } => {
                if self.services.iter().any(|x| x.name == name) {
                    let all = self.services.iter().filter(|x| x.name != name).cloned().collect();
                    self.set_services(all, &name).map(applied)
                } else {
                    Err(err(ErrorKind::NotFound, format!("no service {name:?}")))
                }
            }
            Request::ServiceList => Ok(Response::Services(self.services.clone())),
            Request::Batch(reqs) => self.batch(reqs).map(applied),
            Request::ConntrackSet(s) => self.conntrack_set(&s).map(applied),
            Request::ConntrackSettingsShow => Ok(Response::ConntrackSettings(self.conntrack_settings())),
            Request::ConntrackFlush => {
                for w in &self.workers {
                    let _ = Self::tell(w, WorkerMsg::FlushConntrack);
                }
                Ok(Response::Done)
            }
            Request::StateShow => Err(err(
                ErrorKind::BadRequest,
                "the dataplane holds no desired state: ask podpath-control (its socket, not the dataplane's)",
            )),
        };
        r.unwrap_or_else(Response::Error)
    }

    /// Stops and unplugs every port (at shutdown, after the workers returned).
    pub fn detach_all(&mut self) {
        for a in self.ports.drain(..) {
            let Attached { spec, port, .. } = a;
            let _ = match &spec.netns {
                Some(ns) => netns::with_netns(Path::new(ns), || port.remove()).map(|_| ()),
                None => port.remove().map_err(|_| ()).or(Ok(())),
            };
        }
    }
}

pub(crate) fn port_info(a: &Attached, xstats: bool) -> PortInfo {
    let link = a.port.link();
    PortInfo {
        id: a.port.id(),
        name: a.spec.name.clone(),
        device: a.spec.device.clone(),
        driver: a.port.driver(),
        netns: a.spec.netns.clone(),
        bridge: a.spec.bridge,
        mac: MacAddr(a.port.mac()).to_string(),
        link_up: link.up,
        speed_mbps: link.speed_mbps,
        mtu: a.port.mtu(),
        queues: a.queues,
        xstats: if xstats { a.port.xstats() } else { Vec::new() },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    pub(crate) fn taps_persist_and_nothing_else_changes() {
        use super::persistent_tap as p;
        assert_eq!(p("net_tap1,iface=eth0"), "net_tap1,iface=eth0,persist");
        assert_eq!(
            p("net_tap1,iface=eth0,persist"),
            "net_tap1,iface=eth0,persist"
        );
        assert_eq!(p("net_af_packet0,iface=eth0"), "net_af_packet0,iface=eth0");
        assert_eq!(p("net_tun0,iface=x"), "net_tun0,iface=x");
    }

    use super::*;

    #[test]
    pub(crate) fn a_batch_edits_lists_in_place_and_rolls_back_exactly() {
        let v = vec![("a", 1), ("b", 2), ("c", 3)];
        let touched: hashbrown::HashSet<String> = ["a", "b", "d", "e"].map(String::from).into();
        let mut l = ByName::new(v.clone(), |x: &(&str, i32)| x.0, &touched);
        l.set("b", ("b", 20));
        l.del("a");
        l.set("d", ("d", 4));
        l.del("d");
        l.set("e", ("e", 5));
        assert_eq!(l.current(), [&("b", 20), &("c", 3), &("e", 5)]);
        assert_eq!(l.rollback(), v, "the list from before, in order");
        let mut l = ByName::new(v, |x: &(&str, i32)| x.0, &touched);
        l.set("a", ("a", 10));
        assert_eq!(
            l.into_vec(),
            [("a", 10), ("b", 2), ("c", 3)],
            "replaced in place"
        );
    }

    #[test]
    pub(crate) fn a_change_waits_for_every_worker_to_apply_and_settle_it() {
        let (a, b) = (WorkerCounters::default(), WorkerCounters::default());
        a.applied_gen.store(3, Ordering::Release);
        a.settled_gen.store(3, Ordering::Release);
        b.applied_gen.store(3, Ordering::Release);
        // b applied 3 but its sweep is still running: not in force.
        b.settled_gen.store(2, Ordering::Release);
        let short = Duration::from_millis(20);
        assert!(!wait_settled(&[&a, &b], 3, short));
        assert!(wait_settled(&[&a, &b], 2, short));
        // b settles while the control thread waits.
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(30));
                b.settled_gen.store(3, Ordering::Release);
            });
            assert!(wait_settled(&[&a, &b], 3, Duration::from_secs(5)));
        });
        // No workers: nothing to wait for.
        assert!(wait_settled(&[], 9, short));
    }
}

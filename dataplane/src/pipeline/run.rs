//! The burst runner: feeds a burst through the stages in graph order, fans packets
//! out by their decisions, counts and traces, and transmits in bursts per port.
use std::sync::Arc;

use super::counters::add;
use super::{
    DropReason, Frame, Meta, Next, PortIo, StageId, TraceDetail, Tracer, WorkerCounters, BURST,
};
// The runner knows the stages only through the registry and builds the features'
// state through Features::new. What leaves a burst other than to a port goes to
// the feature whose decision it is: a flood to the bridge, a hold to arp, a split
// for the overlay to vxlan-encap; tx.rs sends.
use super::tx::{Out, Tx};
use crate::dpdk::rdtsc;
use crate::ip4::arp::Holds;
use crate::ip4::L3;
use crate::nat::conntrack::Timeouts;
use crate::pipeline::stage::{Ctx, Features, PeerUpdate, Vector};
use crate::port::PortMap;
use crate::services::table::ServiceTable;
use crossbeam::channel::{Receiver, Sender};

use super::handoff::{HandedOff, Handoff};

/// Sizes and times for one worker's pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// This worker's index; it is also the tx queue it uses on every port.
    pub worker: u16,
    pub mac_capacity: usize,
    /// MAC ageing time in TSC ticks.
    pub mac_ageing_ticks: u64,
    /// TSC ticks per second (neighbour ageing, ARP retries, ICMP rate limit).
    pub tsc_hz: u64,
    /// Connection-table size and timeouts.
    pub conntrack: ConntrackConfig,
    /// The NAT port range (all workers'); each worker takes its slice of it.
    pub nat_range: (u16, u16),
    /// How many workers share the range.
    pub workers: u16,
}

/// Connection tracking settings (`[conntrack]` in the configuration).
#[derive(Debug, Clone, Copy, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackConfig {
    /// Connections per worker.
    pub capacity: usize,
    /// Room reserved per worker, so `capacity` can grow at run time (podpathctl
    /// conntrack set) up to it; default 4 x capacity (address space, not memory,
    /// until used).
    pub max_capacity: Option<usize>,
    pub timeouts: Timeouts,
}

impl ConntrackConfig {
    pub fn reserved(&self) -> usize {
        self.max_capacity
            .unwrap_or(self.capacity.saturating_mul(4))
            .max(self.capacity)
    }
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            capacity: 65_536,
            max_capacity: None,
            timeouts: Timeouts::default(),
        }
    }
}

/// How many passes over the stages one burst may take (an ICMP error goes back to
/// `ip4-lookup` once); beyond, packets are dropped rather than looping.
const MAX_PASSES: usize = 4;

/// The stages' context, from the pipeline's fields (a macro, so the callers can
/// borrow other fields mutably beside it).
macro_rules! ctx {
    ($s:ident, $c:expr) => {
        Ctx {
            ports: &$s.ports,
            l3: &$s.l3,
            services: &$s.services,
            now: $s.now,
            now_ms: $s.now_ms,
            seconds: seconds_of($s.now, $s.tsc_hz),
            counters: $c,
        }
    };
}

/// The transmit side, from the pipeline's fields (as `ctx!`).
macro_rules! out {
    ($s:ident, $io:expr, $c:expr) => {
        Out {
            io: $io,
            tx: &mut $s.tx,
            ports: &$s.ports,
            counters: $c,
            tracer: &mut $s.tracer,
            capture: &mut $s.capture,
        }
    };
}

/// Seconds on the connection table's clock at TSC `now`.
#[inline(always)]
fn seconds_of(now: u64, tsc_hz: u64) -> u32 {
    u32::try_from(now / tsc_hz.max(1)).unwrap_or(u32::MAX)
}

/// One worker's pipeline: the runner's state and, beside it, the worker's
/// counters. Apart, so the runner borrows the counters while it changes itself,
/// with no reference-count traffic per burst or poll; the runner's fields and
/// methods are reached through it (`Deref`).
pub struct Pipeline<F: Frame> {
    pub counters: Arc<WorkerCounters>,
    runner: Runner<F>,
}

impl<F: Frame> std::ops::Deref for Pipeline<F> {
    type Target = Runner<F>;
    fn deref(&self) -> &Runner<F> {
        &self.runner
    }
}

impl<F: Frame> std::ops::DerefMut for Pipeline<F> {
    fn deref_mut(&mut self) -> &mut Runner<F> {
        &mut self.runner
    }
}

impl<F: Frame> Pipeline<F> {
    pub fn new(
        cfg: &PipelineConfig,
        ports: Arc<PortMap>,
        counters: Arc<WorkerCounters>,
        tracer: Tracer,
    ) -> Self {
        Pipeline {
            counters,
            runner: Runner::new(cfg, ports, tracer),
        }
    }

    /// Runs one received burst (all from `in_port`) through the pipeline. `rx` is left
    /// empty; its frames are queued for transmission or dropped.
    #[inline]
    pub fn run<P: PortIo<Frame = F>>(&mut self, io: &mut P, in_port: u16, rx: &mut Vec<F>) {
        self.runner.run_from(io, in_port, rx, true, &self.counters);
    }

    /// Runs the packets other workers handed to this one (their connections are
    /// ours), each resuming at the stage that handed it over: at most four bursts
    /// per poll. Returns how many.
    #[inline]
    pub fn run_handed_off<P: PortIo<Frame = F>>(&mut self, io: &mut P) -> usize {
        self.runner.run_handed_off(io, &self.counters)
    }

    /// Learns what the other workers learned (neighbours, fragment translations),
    /// and sends what it can now send.
    pub fn absorb_peers<P: PortIo<Frame = F>>(&mut self, io: &mut P) {
        self.runner.absorb_peers(io, &self.counters);
    }

    /// Frees every held packet and transmits what is queued (the worker is stopping).
    pub fn drain<P: PortIo<Frame = F>>(&mut self, io: &mut P) {
        self.runner.drain(io, &self.counters);
    }

    /// Sends or expires held packets (called every poll iteration while any wait).
    #[inline]
    pub fn expire<P: PortIo<Frame = F>>(&mut self, io: &mut P) {
        self.runner.expire(io, &self.counters);
    }

    /// Transmits everything queued. Called at the end of every poll iteration.
    #[inline]
    pub fn flush<P: PortIo<Frame = F>>(&mut self, io: &mut P) {
        self.runner.flush(io, &self.counters);
    }

    /// Installs a new port map (after flushing what is queued for the old one) and
    /// forgets MACs learned behind ports that are gone.
    pub fn set_ports<P: PortIo<Frame = F>>(
        &mut self,
        io: &mut P,
        ports: Arc<PortMap>,
    ) -> Arc<PortMap> {
        self.runner.set_ports(io, ports, &self.counters)
    }

    /// Installs a snapshot (the parts that changed), as generation `gen`; returns the
    /// old one for the control thread to free. The caller stores `gen` in
    /// `applied_gen`; `settled_gen` follows once a Service change's sweep is done.
    pub fn install<P: PortIo<Frame = F>>(
        &mut self,
        io: &mut P,
        snap: crate::snapshot::Snapshot,
        gen: u64,
    ) -> crate::snapshot::Snapshot {
        self.runner.install(io, snap, gen, &self.counters)
    }

    /// The features' upkeep between bursts (bounded: connections expired, a Service
    /// change's sweep advanced) and their tables' counters published.
    pub fn expire_connections(&mut self) {
        self.runner.expire_connections(&self.counters);
    }
}

/// The burst runner's state: the burst, the features, the snapshot parts it runs,
/// the transmit side.
pub struct Runner<F: Frame> {
    /// The burst's frames, in arrival order, each with its metadata; they stay here
    /// while the stages run (a stage only writes `next`) and leave at `finish`.
    burst: Vec<F>,
    next: [Next; BURST],
    /// Where each packet ended (a port, a flood, a drop, ARP, a split, another
    /// worker) and the stage that decided: carried out at `finish`.
    fate: [(Next, StageId); BURST],
    detail: [TraceDetail; BURST],
    queue: [[u8; BURST]; StageId::COUNT],
    queue_len: [usize; StageId::COUNT],
    /// Whether any packet of the current burst is traced (dispatch's fast path skips
    /// the per-packet trace check when none is).
    burst_traced: bool,
    /// Output queues and the frames to free.
    tx: Tx<F>,
    /// arp's packets held for a next hop.
    holds: Holds<F>,
    pub ports: Arc<PortMap>,
    pub l3: Arc<L3>,
    pub services: Arc<ServiceTable>,
    /// Where the sweep for connections whose endpoint went away has got to.
    svc_sweep: Option<usize>,
    /// The snapshot generation installed last; stored in `settled_gen` when no sweep
    /// is left to do for it.
    installed_gen: u64,
    peers: Vec<Sender<PeerUpdate>>,
    inbox: Option<Receiver<PeerUpdate>>,
    /// Every feature's per-worker state (tables the stages own).
    pub features: Features,
    /// The connection-tracking knobs in force (from the snapshot).
    settings: Arc<crate::snapshot::Settings>,
    /// This worker's ends of the hand-off rings (none with one worker).
    handoff: Option<Handoff<F>>,
    pub tracer: Tracer,
    /// A running packet capture (`podpathctl capture`), or none.
    pub capture: Option<super::capture::Capture>,
    now: u64,
    /// `now` in milliseconds (affinity), computed once per poll.
    now_ms: u64,
    tsc_hz: u64,
}

impl<F: Frame> Runner<F> {
    fn new(cfg: &PipelineConfig, ports: Arc<PortMap>, tracer: Tracer) -> Self {
        Runner {
            burst: Vec::with_capacity(BURST),
            next: [Next::Drop(DropReason::EthTruncated); BURST],
            fate: [(Next::Drop(DropReason::GraphLoop), StageId::Tx); BURST],
            detail: [TraceDetail::None; BURST],
            queue: [[0; BURST]; StageId::COUNT],
            queue_len: [0; StageId::COUNT],
            burst_traced: false,
            tx: Tx::new(Holds::<F>::CAPACITY),
            holds: Holds::default(),
            ports,
            l3: Arc::new(L3::empty()),
            services: Arc::new(ServiceTable::default()),
            svc_sweep: None,
            installed_gen: 0,
            peers: Vec::new(),
            inbox: None,
            features: Features::new(cfg),
            settings: Arc::new(crate::snapshot::Settings {
                conntrack_capacity: cfg.conntrack.capacity,
                timeouts: cfg.conntrack.timeouts,
            }),
            handoff: None,
            tracer,
            capture: None,
            now: 0,
            now_ms: 0,
            tsc_hz: cfg.tsc_hz,
        }
    }

    /// Packets parked until their next hop resolves (they are neither sent nor
    /// dropped yet: the accounting identity counts them apart).
    pub fn parked(&self) -> usize {
        self.holds.len()
    }

    /// Seconds on the connection table's clock.
    #[inline]
    pub fn seconds(&self) -> u32 {
        seconds_of(self.now, self.tsc_hz)
    }

    fn expire_connections(&mut self, c: &WorkerCounters) {
        let now = self.seconds();
        let was = self.svc_sweep.is_some();
        self.features
            .upkeep(now, &self.services, &mut self.svc_sweep, c);
        if was && self.svc_sweep.is_none() {
            c.settled_gen
                .store(self.installed_gen, std::sync::atomic::Ordering::Release);
        }
    }

    fn install<P: PortIo<Frame = F>>(
        &mut self,
        io: &mut P,
        snap: crate::snapshot::Snapshot,
        gen: u64,
        c: &WorkerCounters,
    ) -> crate::snapshot::Snapshot {
        let old = self.snapshot();
        let ch = snap.changes(&old);
        if ch.ports {
            self.set_ports(io, snap.ports, c);
        }
        if ch.l3 {
            self.set_l3(snap.l3);
        }
        if ch.services {
            self.set_services(snap.services);
        }
        if ch.settings {
            self.features.set(&snap.settings);
            self.settings = snap.settings;
        }
        self.installed_gen = gen;
        if self.svc_sweep.is_none() {
            c.settled_gen
                .store(gen, std::sync::atomic::Ordering::Release);
        }
        old
    }

    /// The snapshot this worker runs.
    pub fn snapshot(&self) -> crate::snapshot::Snapshot {
        crate::snapshot::Snapshot {
            ports: Arc::clone(&self.ports),
            l3: Arc::clone(&self.l3),
            services: Arc::clone(&self.services),
            settings: Arc::clone(&self.settings),
        }
    }

    /// The generation the parts set one by one (at start) make up.
    pub fn set_installed_gen(&mut self, gen: u64) {
        self.installed_gen = gen;
    }

    /// Installs a new Service table; returns the old one (for the control thread to free).
    pub fn set_services(&mut self, s: Arc<ServiceTable>) -> Arc<ServiceTable> {
        // UDP connections to endpoints that are gone must go too (a UDP client keeps
        // sending into a dead endpoint otherwise): swept a little at every poll.
        self.svc_sweep = Some(0);
        std::mem::replace(&mut self.services, s)
    }

    /// Installs a new L3 view; returns the old one (for the control thread to free).
    pub fn set_l3(&mut self, l3: Arc<L3>) -> Arc<L3> {
        std::mem::replace(&mut self.l3, l3)
    }

    /// Sets the time (TSC) stages see for this iteration.
    #[inline(always)]
    pub fn set_now(&mut self, now: u64) {
        self.now = now;
        self.now_ms = now / (self.tsc_hz / 1000).max(1);
    }

    /// `run`, for received packets (`received`: counted as rx on the port) or packets
    /// another worker handed over (counted as hand-offs instead).
    fn run_from<P: PortIo<Frame = F>>(
        &mut self,
        io: &mut P,
        in_port: u16,
        rx: &mut Vec<F>,
        received: bool,
        c: &WorkerCounters,
    ) {
        let n = rx.len().min(BURST);
        if let Some(pc) = c.ports.get(usize::from(in_port)).filter(|_| received) {
            let bytes: usize = rx.iter().take(n).map(Frame::data_len).sum();
            add(&pc.rx_packets, n as u64);
            add(&pc.rx_bytes, bytes as u64);
        }
        self.queue_len = [0; StageId::COUNT];
        self.burst_traced = false;
        for (i, mut f) in rx.drain(..n).enumerate() {
            let trace = self.tracer.take();
            if trace != 0 {
                self.burst_traced = true;
                let len = u16::try_from(f.data().len()).unwrap_or(u16::MAX);
                self.tracer.record(
                    c,
                    trace,
                    StageId::EthInput,
                    Next::Stage(StageId::EthInput),
                    TraceDetail::Rx { port: in_port, len },
                );
            }
            *f.meta_mut() = Meta::rx(in_port, trace);
            self.burst.push(f);
            self.fate[i] = (Next::Drop(DropReason::GraphLoop), StageId::Tx);
            // i < BURST (32), so it fits a u8 index.
            self.queue[StageId::EthInput.index()][i] = u8::try_from(i).unwrap_or(0);
        }
        self.queue_len[StageId::EthInput.index()] = n;
        if self.capture.is_some() {
            self.capture_rx(in_port, n);
        }
        self.run_passes(c, io);
    }

    /// Capture at a port's rx: the burst as received.
    #[cold]
    fn capture_rx(&mut self, in_port: u16, n: usize) {
        let Some(cap) = self.capture.as_mut() else {
            return;
        };
        if cap.point != super::capture::Point::Rx(in_port) {
            return;
        }
        let t = rdtsc();
        for f in &self.burst[..n] {
            cap.take(t, in_port, f.data());
        }
    }

    /// Capture before or after `stage`: the packets it is given (before) or still
    /// holds once it ran (after: rewritten, not yet sent on).
    #[cold]
    fn capture_stage(&mut self, after: bool, stage: StageId, idx: &[u8]) {
        use super::capture::Point;
        let Some(cap) = self.capture.as_mut() else {
            return;
        };
        let port = match cap.point {
            Point::Before(s, p) if !after && s == stage => p,
            Point::After(s, p) if after && s == stage => p,
            _ => return,
        };
        let t = rdtsc();
        for &i in idx {
            let i = usize::from(i);
            let f = &self.burst[i];
            let in_port = f.meta().in_port;
            if port.is_some_and(|p| p != in_port) {
                continue;
            }
            cap.take(t, in_port, f.data());
        }
    }

    /// Runs the stages over the queued packets until every one has left (a packet
    /// re-entering an earlier stage takes another pass, at most `MAX_PASSES`).
    fn run_passes<P: PortIo<Frame = F>>(&mut self, c: &WorkerCounters, io: &mut P) {
        for pass in 0..MAX_PASSES {
            let mut ran = false;
            for &stage in StageId::ALL {
                let s = stage.index();
                let len = self.queue_len[s];
                if len == 0 || stage == StageId::Tx || stage == StageId::Ip4Fragment {
                    continue;
                }
                ran = true;
                self.queue_len[s] = 0;
                let idx = self.queue[s];
                let idx = &idx[..len];
                if self.capture.is_some() {
                    self.capture_stage(false, stage, idx);
                }
                let t0 = rdtsc();
                self.run_stage(c, stage, idx);
                let sc = &c.stages[s];
                add(&sc.packets, len as u64);
                add(&sc.calls, 1);
                add(&sc.cycles, rdtsc().wrapping_sub(t0));
                if self.capture.is_some() {
                    self.capture_stage(true, stage, idx);
                }
                self.dispatch(c, stage, idx);
            }
            if !ran {
                break;
            }
            if pass + 1 == MAX_PASSES {
                // Whatever is still queued has looped too often: drop it, counted.
                for q in 0..StageId::COUNT {
                    let n = std::mem::take(&mut self.queue_len[q]);
                    for k in 0..n {
                        let i = usize::from(self.queue[q][k]);
                        c.count_drop(StageId::Tx, DropReason::GraphLoop, 1);
                        self.fate[i] = (Next::Drop(DropReason::GraphLoop), StageId::Tx);
                    }
                }
            }
        }
        self.finish(c, io);
        if self.features.has_news() {
            let learned = !self.features.ip4.learned.is_empty();
            let peers = &self.peers;
            self.features.for_peers(self.now, |u| {
                // A full peer misses it (it resolves the neighbour itself; that
                // datagram's later fragments are dropped there).
                for p in peers {
                    let _ = p.try_send(u);
                }
            });
            if learned {
                self.release_held(c, io);
            }
        }
        if self.handoff.as_ref().is_some_and(Handoff::any_staged) {
            self.publish_handoff(c);
        }
        out!(self, io, c).free_dropped();
    }

    /// Calls one stage on the packets queued for it, through its registry entry.
    fn run_stage(&mut self, c: &WorkerCounters, stage: StageId, idx: &[u8]) {
        let cx = ctx!(self, c);
        let mut v = Vector {
            pkts: idx,
            frames: &mut self.burst,
            next: &mut self.next,
            detail: &mut self.detail,
        };
        (stage.node::<F>())(&cx, &mut self.features, &mut v);
    }

    /// Sends the held packets whose next hop resolved (arp's holds).
    fn release_held<P: PortIo<Frame = F>>(&mut self, c: &WorkerCounters, io: &mut P) {
        let cx = ctx!(self, c);
        let mut out = out!(self, io, c);
        self.holds.release(&cx, &mut self.features.ip4, &mut out);
    }

    /// Connects this worker to the others: what it learns (neighbours, fragment
    /// translations) goes to `peers`, what they learn arrives on `inbox`. Lock-free
    /// channels; a full peer misses an update (it resolves the neighbour itself).
    pub fn set_peer_bus(&mut self, peers: Vec<Sender<PeerUpdate>>, inbox: Receiver<PeerUpdate>) {
        self.peers = peers;
        self.inbox = Some(inbox);
    }

    /// Learns what the other workers learned (neighbours, fragment translations),
    /// and sends what it can now send.
    fn absorb_peers<P: PortIo<Frame = F>>(&mut self, io: &mut P, c: &WorkerCounters) {
        let Some(inbox) = self.inbox.as_ref() else {
            return;
        };
        let mut any = false;
        while let Ok(u) = inbox.try_recv() {
            any |= self.features.from_peer(u, self.now, self.now_ms);
        }
        if any && !self.holds.is_empty() {
            self.release_held(c, io);
            out!(self, io, c).free_dropped();
        }
    }

    /// Connects this worker to the hand-off rings (its element of `handoff::mesh`).
    pub fn set_handoff(&mut self, ends: Handoff<F>) {
        self.handoff = Some(ends);
    }

    /// Publishes the packets this burst handed to other workers, a vector per
    /// worker; what a full ring refuses is dropped (`handoff-full`, under the stage
    /// that handed it over).
    fn publish_handoff(&mut self, c: &WorkerCounters) {
        let Some(h) = self.handoff.as_mut() else {
            return;
        };
        let dropped = &mut self.tx.dropped;
        let sent = h.publish(|x| {
            c.count_drop(x.stage, DropReason::HandoffFull, 1);
            dropped.push(x.frame);
        });
        add(&c.handoff_out, sent);
    }

    /// Runs the packets other workers handed to this one (their connections are
    /// ours), each resuming at the stage that handed it over: at most four bursts
    /// per poll. Returns how many.
    fn run_handed_off<P: PortIo<Frame = F>>(&mut self, io: &mut P, c: &WorkerCounters) -> usize {
        let Some(mut ends) = self.handoff.take() else {
            return 0;
        };
        let mut total = 0;
        for _ in 0..4 {
            self.queue_len = [0; StageId::COUNT];
            self.burst_traced = false;
            let mut n = 0;
            ends.take(
                &mut |h| {
                    // Trace ids are per worker: this one's tracer decides.
                    let trace = self.tracer.take();
                    if trace != 0 {
                        self.burst_traced = true;
                        let len = u16::try_from(h.frame.data().len()).unwrap_or(u16::MAX);
                        let port = h.frame.meta().in_port;
                        self.tracer.record(
                            c,
                            trace,
                            h.stage,
                            Next::Stage(h.stage),
                            TraceDetail::Rx { port, len },
                        );
                    }
                    let mut f = h.frame;
                    f.meta_mut().trace = trace;
                    self.burst.push(f);
                    self.fate[n] = (Next::Drop(DropReason::GraphLoop), StageId::Tx);
                    let q = h.stage.index();
                    // n < BURST (32), so it fits a u8 index.
                    self.queue[q][self.queue_len[q]] = u8::try_from(n).unwrap_or(0);
                    self.queue_len[q] += 1;
                    n += 1;
                },
                BURST,
            );
            if n == 0 {
                break;
            }
            total += n;
            add(&c.handoff_in, n as u64);
            // The owner runs them; it never hands them on (its own `handoff` is out).
            self.run_passes(c, io);
            if n < BURST {
                break;
            }
        }
        self.handoff = Some(ends);
        total
    }

    /// Frees every parked packet (the worker is stopping).
    fn drain<P: PortIo<Frame = F>>(&mut self, io: &mut P, c: &WorkerCounters) {
        let mut out = out!(self, io, c);
        self.holds.drop_all(&mut out);
        out.flush();
    }

    /// Sends or expires parked packets (called every poll iteration while any wait).
    fn expire<P: PortIo<Frame = F>>(&mut self, io: &mut P, c: &WorkerCounters) {
        if self.holds.is_empty() {
            return;
        }
        self.release_held(c, io);
        out!(self, io, c).free_dropped();
    }

    /// Fans the packets a stage decided on out to their next place.
    fn dispatch(&mut self, c: &WorkerCounters, stage: StageId, idx: &[u8]) {
        // VPP's speculative enqueue: a stage mostly sends its whole burst on to one
        // next stage; then the index list moves in one copy.
        if let (Some(&first), false) = (idx.first(), self.burst_traced) {
            if let Next::Stage(t) = self.next[usize::from(first)] {
                debug_assert!(
                    stage.allows(Next::Stage(t)),
                    "{stage:?} sent a packet to {t:?}, which it does not declare"
                );
                #[cfg(debug_assertions)]
                super::registry::seen::record(stage, t);
                let same = Next::Stage(t);
                if idx.iter().all(|&i| self.next[usize::from(i)] == same) {
                    let q = t.index();
                    let at = self.queue_len[q];
                    if let Some(dst) = self.queue[q].get_mut(at..at + idx.len()) {
                        dst.copy_from_slice(idx);
                        self.queue_len[q] += idx.len();
                        return;
                    }
                }
            }
        }
        for &i in idx {
            let i = usize::from(i);
            let next = self.next[i];
            debug_assert!(
                stage.allows(next),
                "{stage:?} decided {next:?}, which it does not declare"
            );
            #[cfg(debug_assertions)]
            if let Ok(to) = stage.edge(next) {
                super::registry::seen::record(stage, to);
            }
            let trace = self.burst[i].meta().trace;
            if trace != 0 {
                let d = std::mem::replace(&mut self.detail[i], TraceDetail::None);
                self.tracer.record(c, trace, stage, next, d);
            }
            match next {
                Next::Stage(t) => {
                    debug_assert!(t != StageId::Tx, "{stage:?} sent a packet to the tx stage");
                    let q = t.index();
                    self.queue[q][self.queue_len[q]] = u8::try_from(i).unwrap_or(0);
                    self.queue_len[q] += 1;
                }
                Next::Drop(r) => {
                    c.count_drop(stage, r, 1);
                    self.fate[i] = (next, stage);
                }
                _ => self.fate[i] = (next, stage),
            }
        }
    }

    /// Carries out where each packet of the burst ended, in arrival order (so a
    /// flow's packets leave in the order they came): queued for its port, flooded,
    /// parked for ARP, split, handed to its owner, or freed.
    fn finish<P: PortIo<Frame = F>>(&mut self, c: &WorkerCounters, io: &mut P) {
        let t0 = rdtsc();
        let mut to_tx = 0u64;
        // Taken out for the loop (the outputs borrow the pipeline) and put back: the
        // vector keeps its capacity, no allocation.
        let mut burst = std::mem::take(&mut self.burst);
        let cx = ctx!(self, c);
        let mut out = out!(self, io, c);
        for (i, f) in burst.drain(..).enumerate() {
            let (next, stage) = self.fate[i];
            match next {
                Next::Port(p) => {
                    to_tx += 1;
                    let trace = f.meta().trace;
                    out.send(p, f, trace);
                }
                Next::Flood => {
                    to_tx += 1;
                    crate::bridge::flood(&mut out, f);
                }
                Next::Resolve => {
                    self.holds
                        .hold(&cx, &mut self.features.ip4, &mut out, self.tsc_hz, f);
                }
                Next::Fragment => crate::overlay::vxlan_encap::fragment(
                    &cx,
                    &mut self.features.ip4,
                    &mut self.holds,
                    &mut out,
                    self.tsc_hz,
                    f,
                ),
                Next::Handoff(w) => {
                    let h = HandedOff { frame: f, stage };
                    let refused = match self.handoff.as_mut() {
                        Some(ends) => ends.stage(w, h).err(),
                        None => Some(h),
                    };
                    if let Some(h) = refused {
                        out.drop(h.frame, stage, DropReason::HandoffFull);
                    }
                }
                // Counted where decided.
                Next::Drop(_) | Next::Stage(_) => out.free(f),
            }
        }
        self.burst = burst;
        if to_tx > 0 {
            let sc = &c.stages[StageId::Tx.index()];
            add(&sc.packets, to_tx);
            add(&sc.calls, 1);
            add(&sc.cycles, rdtsc().wrapping_sub(t0));
        }
    }

    /// Transmits everything queued. Called at the end of every poll iteration.
    fn flush<P: PortIo<Frame = F>>(&mut self, io: &mut P, c: &WorkerCounters) {
        out!(self, io, c).flush();
    }

    /// Installs a new port map (after flushing what is queued for the old one) and
    /// forgets MACs learned behind ports that are gone.
    fn set_ports<P: PortIo<Frame = F>>(
        &mut self,
        io: &mut P,
        ports: Arc<PortMap>,
        c: &WorkerCounters,
    ) -> Arc<PortMap> {
        self.flush(io, c);
        let keep = Arc::clone(&ports);
        self.features.retain_ports(|p| keep.port(p).is_some());
        std::mem::replace(&mut self.ports, ports)
    }
}

//! The burst runner: feeds a burst through the stages in graph order, fans packets
//! out by their decisions, counts and traces, and transmits in bursts per port.
use std::sync::Arc;

use super::counters::add;
use super::{
    DropReason, Frame, Meta, Next, PortIo, StageId, TraceDetail, Tracer, WorkerCounters, BURST,
    MAX_PORTS,
};
use crate::dpdk::rdtsc;
use crate::stages::{bridge::Bridge, eth_input, Ctx};
use crate::tables::PortMap;

/// Sizes and times for one worker's pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// This worker's index; it is also the tx queue it uses on every port.
    pub worker: u16,
    pub mac_capacity: usize,
    /// MAC ageing time in TSC ticks.
    pub mac_ageing_ticks: u64,
}

/// Packets waiting to be transmitted on one port; flushed when a burst is full and at
/// the end of every poll iteration.
const TX_CAP: usize = 2 * BURST;

pub struct Pipeline<F: Frame> {
    slots: [Option<F>; BURST],
    meta: [Meta; BURST],
    next: [Next; BURST],
    detail: [TraceDetail; BURST],
    queue: [[u8; BURST]; StageId::COUNT],
    queue_len: [usize; StageId::COUNT],
    tx: Vec<Vec<F>>,
    tx_dirty: u32,
    dropped: Vec<F>,
    pub ports: Arc<PortMap>,
    pub bridge: Bridge,
    pub counters: Arc<WorkerCounters>,
    pub tracer: Tracer,
    tx_queue: u16,
    now: u64,
}

impl<F: Frame> Pipeline<F> {
    pub fn new(
        cfg: &PipelineConfig,
        ports: Arc<PortMap>,
        counters: Arc<WorkerCounters>,
        tracer: Tracer,
    ) -> Self {
        Pipeline {
            slots: std::array::from_fn(|_| None),
            meta: [Meta::default(); BURST],
            next: [Next::Drop(DropReason::EthTruncated); BURST],
            detail: [TraceDetail::None; BURST],
            queue: [[0; BURST]; StageId::COUNT],
            queue_len: [0; StageId::COUNT],
            tx: (0..MAX_PORTS).map(|_| Vec::with_capacity(TX_CAP)).collect(),
            tx_dirty: 0,
            dropped: Vec::with_capacity(TX_CAP + BURST),
            ports,
            bridge: Bridge::new(cfg.mac_capacity, cfg.mac_ageing_ticks),
            counters,
            tracer,
            tx_queue: cfg.worker,
            now: 0,
        }
    }

    /// Sets the time (TSC) stages see for this iteration.
    #[inline(always)]
    pub fn set_now(&mut self, now: u64) {
        self.now = now;
    }

    /// Runs one received burst (all from `in_port`) through the pipeline. `rx` is left
    /// empty; its frames are queued for transmission or dropped.
    pub fn run<P: PortIo<Frame = F>>(&mut self, io: &mut P, in_port: u16, rx: &mut Vec<F>) {
        let n = rx.len().min(BURST);
        let c = Arc::clone(&self.counters);
        if let Some(pc) = c.ports.get(usize::from(in_port)) {
            let bytes: usize = rx.iter().take(n).map(|f| f.data().len()).sum();
            add(&pc.rx_packets, n as u64);
            add(&pc.rx_bytes, bytes as u64);
        }
        for (i, f) in rx.drain(..n).enumerate() {
            let trace = self.tracer.take();
            if trace != 0 {
                let len = u16::try_from(f.data().len()).unwrap_or(u16::MAX);
                self.tracer.record(
                    &c,
                    trace,
                    StageId::EthInput,
                    Next::Stage(StageId::EthInput),
                    TraceDetail::Rx { port: in_port, len },
                );
            }
            self.slots[i] = Some(f);
            self.meta[i] = Meta {
                in_port,
                trace,
                ..Meta::default()
            };
            // i < BURST (32), so it fits a u8 index.
            self.queue[StageId::EthInput.index()][i] = u8::try_from(i).unwrap_or(0);
        }
        self.queue_len[StageId::EthInput.index()] = n;

        for &stage in StageId::ALL {
            let s = stage.index();
            let len = self.queue_len[s];
            if len == 0 || stage == StageId::Tx {
                continue;
            }
            self.queue_len[s] = 0;
            let idx = self.queue[s];
            let idx = &idx[..len];
            let t0 = rdtsc();
            {
                let cx = Ctx {
                    ports: &self.ports,
                    now: self.now,
                    counters: &c,
                };
                match stage {
                    StageId::EthInput => eth_input::process(
                        &cx,
                        idx,
                        &self.slots,
                        &mut self.meta,
                        &mut self.next,
                        &mut self.detail,
                    ),
                    StageId::Bridge => self.bridge.process(
                        &cx,
                        idx,
                        &self.slots,
                        &mut self.meta,
                        &mut self.next,
                        &mut self.detail,
                    ),
                    StageId::Tx => {}
                }
            }
            let sc = &c.stages[s];
            add(&sc.packets, len as u64);
            add(&sc.calls, 1);
            add(&sc.cycles, rdtsc().wrapping_sub(t0));
            self.dispatch(stage, idx, io);
        }
        if !self.dropped.is_empty() {
            io.free_bulk(&mut self.dropped);
        }
    }

    /// Fans the packets a stage decided on out to their next place.
    fn dispatch<P: PortIo<Frame = F>>(&mut self, stage: StageId, idx: &[u8], io: &mut P) {
        let c = Arc::clone(&self.counters);
        let t0 = rdtsc();
        let mut to_tx = 0u64;
        for &i in idx {
            let i = usize::from(i);
            let next = self.next[i];
            let trace = self.meta[i].trace;
            if trace != 0 {
                let d = std::mem::replace(&mut self.detail[i], TraceDetail::None);
                self.tracer.record(&c, trace, stage, next, d);
            }
            match next {
                Next::Stage(t) => {
                    let q = t.index();
                    self.queue[q][self.queue_len[q]] = u8::try_from(i).unwrap_or(0);
                    self.queue_len[q] += 1;
                }
                Next::Drop(r) => {
                    c.count_drop(r, 1);
                    if let Some(f) = self.slots[i].take() {
                        self.dropped.push(f);
                    }
                }
                Next::Port(p) => {
                    to_tx += 1;
                    if let Some(f) = self.slots[i].take() {
                        self.output(io, p, f, trace);
                    }
                }
                Next::Flood => {
                    to_tx += 1;
                    if let Some(f) = self.slots[i].take() {
                        self.flood(io, i, f);
                    }
                }
            }
        }
        if to_tx > 0 {
            let sc = &c.stages[StageId::Tx.index()];
            add(&sc.packets, to_tx);
            add(&sc.calls, 1);
            add(&sc.cycles, rdtsc().wrapping_sub(t0));
        }
    }

    #[inline]
    fn output<P: PortIo<Frame = F>>(&mut self, io: &mut P, port: u16, f: F, trace: u32) {
        let p = usize::from(port);
        if self.ports.port(port).is_none() || p >= MAX_PORTS {
            self.counters.count_drop(DropReason::TxNoPort, 1);
            self.dropped.push(f);
            return;
        }
        if trace != 0 {
            let c = Arc::clone(&self.counters);
            self.tracer.record(
                &c,
                trace,
                StageId::Tx,
                Next::Port(port),
                TraceDetail::Out { port },
            );
        }
        self.tx[p].push(f);
        self.tx_dirty |= 1 << p;
        if self.tx[p].len() >= BURST {
            self.flush_port(io, port);
        }
    }

    /// Copies a frame to every other port of its bridge domain; the original goes to
    /// the last one.
    fn flood<P: PortIo<Frame = F>>(&mut self, io: &mut P, i: usize, f: F) {
        let ports = Arc::clone(&self.ports);
        let m = self.meta[i];
        let Some(bd) = ports.bridge(m.bd) else {
            self.counters.count_drop(DropReason::BridgeNoDomain, 1);
            self.dropped.push(f);
            return;
        };
        let mut targets = bd
            .members
            .iter()
            .copied()
            .filter(|&p| p != m.in_port)
            .peekable();
        let mut copies = 0u16;
        let mut sent_to = 0u16;
        let mut original = Some(f);
        while let Some(p) = targets.next() {
            sent_to += 1;
            let frame = if targets.peek().is_none() {
                original.take()
            } else {
                match original.as_ref().and_then(|o| io.copy_frame(o.data())) {
                    Some(c) => {
                        copies += 1;
                        Some(c)
                    }
                    None => {
                        self.counters.count_drop(DropReason::TxNoBuffer, 1);
                        None
                    }
                }
            };
            if let Some(fr) = frame {
                self.output(io, p, fr, 0);
            }
        }
        add(&self.counters.replicated, u64::from(copies));
        if m.trace != 0 {
            let c = Arc::clone(&self.counters);
            self.tracer.record(
                &c,
                m.trace,
                StageId::Tx,
                Next::Flood,
                TraceDetail::Flood { ports: sent_to },
            );
        }
        if let Some(o) = original {
            // No target at all: cannot happen (the bridge checked), but never leak.
            self.dropped.push(o);
        }
    }

    fn flush_port<P: PortIo<Frame = F>>(&mut self, io: &mut P, port: u16) {
        let p = usize::from(port);
        let q = &mut self.tx[p];
        if q.is_empty() {
            return;
        }
        let total = q.len();
        let bytes_before: usize = q.iter().map(|f| f.data().len()).sum();
        let sent = io.tx_burst(port, self.tx_queue, q);
        let bytes_left: usize = q.iter().map(|f| f.data().len()).sum();
        let pc = &self.counters.ports[p];
        add(&pc.tx_packets, sent as u64);
        add(&pc.tx_bytes, (bytes_before - bytes_left) as u64);
        let unsent = total - sent;
        if unsent > 0 {
            add(&pc.tx_dropped, unsent as u64);
            self.counters.count_drop(DropReason::TxFull, unsent as u64);
            self.dropped.append(q);
        }
        self.tx_dirty &= !(1 << p);
    }

    /// Transmits everything queued. Called at the end of every poll iteration.
    pub fn flush<P: PortIo<Frame = F>>(&mut self, io: &mut P) {
        while self.tx_dirty != 0 {
            let p = self.tx_dirty.trailing_zeros();
            self.flush_port(io, u16::try_from(p).unwrap_or(0));
        }
        if !self.dropped.is_empty() {
            io.free_bulk(&mut self.dropped);
        }
    }

    /// Installs a new port map (after flushing what is queued for the old one) and
    /// forgets MACs learned behind ports that are gone.
    pub fn set_ports<P: PortIo<Frame = F>>(
        &mut self,
        io: &mut P,
        ports: Arc<PortMap>,
    ) -> Arc<PortMap> {
        self.flush(io);
        let keep = Arc::clone(&ports);
        self.bridge.macs.retain_ports(|p| keep.port(p).is_some());
        std::mem::replace(&mut self.ports, ports)
    }
}

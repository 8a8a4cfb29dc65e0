//! The worker: one run-to-completion poll loop per worker lcore.
//!
//! Each iteration: apply control messages (rare), receive a burst from each of this
//! worker's rx queues and run it through the pipeline, flush the tx buffers, and, when
//! nothing arrived for a while and idle back-off is on, sleep with a bounded,
//! doubling period. No allocation, lock, syscall or log line per packet: the only
//! syscall is the idle sleep.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender};

use crate::dpdk::rdtsc;
use crate::pipeline::counters::add;
use crate::pipeline::{Pipeline, PortIo, WorkerCounters, BURST};
use crate::snapshot::Snapshot;
use crate::wire::MacAddr;

/// Idle back-off: after `empty_polls` polls that received nothing, sleep, starting at
/// `min_sleep_us` and doubling up to `max_sleep_us`; any packet resets it.
#[derive(Debug, Clone, Copy, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdleConfig {
    pub enabled: bool,
    pub empty_polls: u32,
    pub min_sleep_us: u32,
    pub max_sleep_us: u32,
}

impl Default for IdleConfig {
    /// Off: a production worker busy-polls its core.
    fn default() -> Self {
        IdleConfig {
            enabled: false,
            empty_polls: 256,
            min_sleep_us: 10,
            max_sleep_us: 1000,
        }
    }
}

/// One row of a worker's MAC table, for `podpathctl bridge macs`.
#[derive(Debug, Clone)]
pub struct MacRow {
    pub worker: u16,
    pub bd: u16,
    pub mac: MacAddr,
    pub port: u16,
    pub age_ticks: u64,
    pub is_static: bool,
}

/// A snapshot a worker replaced, handed back for the control thread to free.
pub struct Retired(pub Snapshot);

/// One row of a worker's neighbour table.
#[derive(Debug, Clone)]
pub struct NeighborRow {
    pub worker: u16,
    pub ip: u32,
    pub mac: MacAddr,
    pub port: u16,
    pub age_ticks: u64,
}

/// One connection of a worker's table.
#[derive(Debug, Clone)]
pub struct ConnRow {
    pub worker: u16,
    pub entry: crate::nat::conntrack::Entry,
    pub timeout: u32,
}

/// Messages from the control thread. A worker applies them between bursts. `Q` is
/// what its port I/O is granted queues with ([`PortIo::Queues`]).
pub enum WorkerMsg<Q = ()> {
    /// The queues this worker may use with the next port map (sent just before it):
    /// the old grant's tokens are let go.
    Queues(Q),
    /// A new snapshot, generation `gen`: after installing it the worker stores `gen`
    /// in `applied_gen` (its quiescent point) and returns the old one for the control
    /// thread to free.
    Snapshot(Snapshot, u64),
    /// Send a copy of the neighbour table.
    DumpNeighbors(Sender<Vec<NeighborRow>>),
    /// Send a copy of the connection table.
    DumpConntrack(Sender<Vec<ConnRow>>),
    /// Forget every connection.
    FlushConntrack,
    /// Trace the next N received packets.
    Trace(u32),
    /// Start (Some) or stop (None) a packet capture.
    Capture(Option<crate::pipeline::capture::Capture>),
    /// Send a copy of the MAC table.
    DumpMacs(Sender<Vec<MacRow>>),
    /// Add a static MAC entry.
    StaticMac { bd: u16, mac: MacAddr, port: u16 },
    /// Remove a static MAC entry.
    DelStaticMac { bd: u16, mac: MacAddr },
}

pub struct Worker<P: PortIo> {
    pub id: u16,
    pub io: P,
    pub pipeline: Pipeline<P::Frame>,
    rx: Vec<P::Frame>,
    ctl: Receiver<WorkerMsg<P::Queues>>,
    retired: Sender<Retired>,
    stop: Arc<AtomicBool>,
    idle: IdleConfig,
    /// How often (TSC ticks) to sweep aged MACs.
    age_every: u64,
    next_age: u64,
    /// TSC ticks a partial transmit burst may wait (0: flush every poll).
    tx_drain: u64,
    last_drain: u64,
}

impl<P: PortIo> Worker<P> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u16,
        io: P,
        pipeline: Pipeline<P::Frame>,
        ctl: Receiver<WorkerMsg<P::Queues>>,
        retired: Sender<Retired>,
        stop: Arc<AtomicBool>,
        idle: IdleConfig,
        age_every: u64,
        tx_drain: u64,
    ) -> Self {
        Worker {
            id,
            io,
            pipeline,
            rx: Vec::with_capacity(BURST),
            ctl,
            retired,
            stop,
            idle,
            age_every,
            next_age: 0,
            tx_drain,
            last_drain: 0,
        }
    }

    fn counters(&self) -> &WorkerCounters {
        &self.pipeline.counters
    }

    fn apply(&mut self, msg: WorkerMsg<P::Queues>) {
        match msg {
            WorkerMsg::Queues(q) => self.io.grant(q),
            WorkerMsg::Snapshot(snap, gen) => {
                let old = self.pipeline.install(&mut self.io, snap, gen);
                self.counters().applied_gen.store(gen, Ordering::Release);
                // The control thread frees it: never a large free on a worker.
                let _ = self.retired.send(Retired(old));
            }
            WorkerMsg::DumpNeighbors(reply) => {
                let now = rdtsc();
                let rows = self
                    .pipeline
                    .features
                    .ip4
                    .neighbors
                    .entries()
                    .map(|(ip, n)| NeighborRow {
                        worker: self.id,
                        ip,
                        mac: n.mac,
                        port: n.port,
                        age_ticks: now.wrapping_sub(n.seen),
                    })
                    .collect();
                let _ = reply.send(rows);
            }
            WorkerMsg::DumpConntrack(reply) => {
                let now = self.pipeline.seconds();
                let rows = self
                    .pipeline
                    .features
                    .nat
                    .conntrack
                    .entries(now)
                    .map(|e| ConnRow {
                        worker: self.id,
                        entry: *e,
                        timeout: e.expires.saturating_sub(now),
                    })
                    .collect();
                let _ = reply.send(rows);
            }
            WorkerMsg::FlushConntrack => self.pipeline.features.nat.conntrack.flush(),
            WorkerMsg::Trace(n) => self.pipeline.tracer.arm(n),
            WorkerMsg::Capture(c) => self.pipeline.capture = c,
            WorkerMsg::DumpMacs(reply) => {
                let now = rdtsc();
                let rows = self
                    .pipeline
                    .features
                    .bridge
                    .macs
                    .entries()
                    .map(|(bd, mac, e)| MacRow {
                        worker: self.id,
                        bd,
                        mac,
                        port: e.port,
                        age_ticks: if e.is_static {
                            0
                        } else {
                            now.wrapping_sub(e.seen)
                        },
                        is_static: e.is_static,
                    })
                    .collect();
                let _ = reply.send(rows);
            }
            WorkerMsg::StaticMac { bd, mac, port } => {
                self.pipeline.features.bridge.macs.add_static(bd, mac, port);
            }
            WorkerMsg::DelStaticMac { bd, mac } => {
                self.pipeline.features.bridge.macs.remove_static(bd, mac);
            }
        }
    }

    /// One iteration of the loop; returns the packets received.
    #[inline]
    pub fn poll_once(&mut self) -> usize {
        while let Ok(m) = self.ctl.try_recv() {
            self.apply(m);
        }
        let t0 = rdtsc();
        self.pipeline.set_now(t0);
        self.pipeline.absorb_peers(&mut self.io);
        let mut got = self.pipeline.run_handed_off(&mut self.io);
        let me = usize::from(self.id);
        // Indexing (not iterating) the map lets `run` borrow the pipeline mutably
        // without cloning the shared Arc on every poll.
        for k in 0..self.pipeline.ports.rx_of(me).len() {
            let (port, queue) = self.pipeline.ports.rx_of(me)[k];
            let n = self.io.rx_burst(port, queue, &mut self.rx, BURST);
            if n > 0 {
                got += n;
                self.pipeline.run(&mut self.io, port, &mut self.rx);
            }
        }
        self.pipeline.expire(&mut self.io);
        self.pipeline.expire_connections();
        // DPDK l3fwd's BURST_TX_DRAIN_US: with a drain interval, a partial transmit
        // burst waits up to that long for company, so a device whose transmit costs a
        // syscall (af_packet, tap) pays it per burst rather than per packet. Full
        // bursts leave at once (the pipeline sends a queue as soon as it holds 32).
        if t0.wrapping_sub(self.last_drain) >= self.tx_drain {
            self.pipeline.flush(&mut self.io);
            self.last_drain = t0;
        }
        let t1 = rdtsc();
        let c = &self.pipeline.counters;
        add(&c.polls, 1);
        add(&c.total_cycles, t1.wrapping_sub(t0));
        if got > 0 {
            add(&c.busy_cycles, t1.wrapping_sub(t0));
        } else {
            add(&c.idle_polls, 1);
        }
        if t0 >= self.next_age {
            let aged = self.pipeline.features.age(t0);
            add(&self.pipeline.counters.mac_aged, aged as u64);
            self.next_age = t0.wrapping_add(self.age_every);
        }
        got
    }

    /// The poll loop, until `stop` is set.
    pub fn run(mut self) -> i32 {
        let mut empty = 0u32;
        let mut sleep_us = self.idle.min_sleep_us.max(1);
        while !self.stop.load(Ordering::Relaxed) {
            if self.poll_once() > 0 {
                empty = 0;
                sleep_us = self.idle.min_sleep_us.max(1);
                continue;
            }
            empty = empty.saturating_add(1);
            if self.idle.enabled && empty >= self.idle.empty_polls {
                // Nothing waits in a transmit queue while the worker sleeps.
                self.pipeline.flush(&mut self.io);
                add(&self.pipeline.counters.sleeps, 1);
                std::thread::sleep(Duration::from_micros(u64::from(sleep_us)));
                sleep_us = sleep_us
                    .saturating_mul(2)
                    .min(self.idle.max_sleep_us.max(1));
            }
        }
        self.pipeline.drain(&mut self.io);
        0
    }
}

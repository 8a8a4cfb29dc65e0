//! Per-worker counters, readable by the control thread while the worker runs.
//!
//! Each worker is the only writer of its own `WorkerCounters`, so an increment is a
//! plain load and store (no locked instruction); readers see a consistent-enough
//! snapshot of monotonic values.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::{DropReason, StageId, MAX_PORTS};

/// Adds `n` to a counter this thread alone writes.
#[inline(always)]
pub fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

#[inline(always)]
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}

#[derive(Default)]
pub struct PortCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Packets the device's tx queue refused (also counted as drop `tx-full`).
    pub tx_dropped: AtomicU64,
}

#[derive(Default)]
pub struct StageCounters {
    /// Packets the stage processed.
    pub packets: AtomicU64,
    /// Times the stage ran (one per burst that had packets for it).
    pub calls: AtomicU64,
    /// TSC cycles spent in the stage.
    pub cycles: AtomicU64,
}

/// Everything one worker counts.
pub struct WorkerCounters {
    pub stages: [StageCounters; StageId::COUNT],
    /// Drops by the stage that decided them and why (`drops[stage][reason]`).
    pub drops: [[AtomicU64; DropReason::COUNT]; StageId::COUNT],
    pub ports: [PortCounters; MAX_PORTS],
    /// Extra frames made by flooding (one packet flooded to 3 ports adds 2).
    pub replicated: AtomicU64,
    pub mac_learned: AtomicU64,
    pub mac_moved: AtomicU64,
    pub mac_aged: AtomicU64,
    /// Sources not learned because the MAC table was full.
    pub mac_table_full: AtomicU64,
    /// Neighbours not learned, and clients given no affinity, because those tables
    /// were full (published with the connection counters).
    pub neighbor_table_full: AtomicU64,
    pub affinity_table_full: AtomicU64,
    /// First fragments whose translation was not remembered (table full).
    pub frag_table_full: AtomicU64,
    /// Trace records lost because the trace ring was full.
    pub trace_lost: AtomicU64,
    /// The connection table: entries now, and since start inserted, expired,
    /// evicted early (table full), refused (full, nothing to evict).
    pub ct_entries: AtomicU64,
    pub ct_inserted: AtomicU64,
    pub ct_expired: AtomicU64,
    pub ct_early_dropped: AtomicU64,
    pub ct_refused_full: AtomicU64,
    /// Connections resumed from the state file at start (set once).
    pub ct_restored: AtomicU64,
    /// The connection table's capacity (set once).
    pub ct_capacity: AtomicU64,
    /// Packets handed to another worker (the owner of their connection), and taken
    /// from others. Summed over workers, the two are equal at rest, so totals keep
    /// rx + replicated = tx + dropped.
    pub handoff_out: AtomicU64,
    pub handoff_in: AtomicU64,
    /// Loop iterations, and those that received nothing.
    pub polls: AtomicU64,
    pub idle_polls: AtomicU64,
    /// Times the worker slept in idle back-off.
    pub sleeps: AtomicU64,
    /// TSC cycles of iterations that received packets, and of all iterations.
    pub busy_cycles: AtomicU64,
    pub total_cycles: AtomicU64,
    /// The configuration generation this worker runs with: it stores it after applying
    /// an update, which is its quiescent point for that update.
    pub applied_gen: AtomicU64,
    /// The generation whose follow-up work is done as well (the sweep of connections
    /// whose Service endpoint went away): `applied_gen` once that sweep finished.
    pub settled_gen: AtomicU64,
}

impl Default for WorkerCounters {
    fn default() -> Self {
        WorkerCounters {
            stages: std::array::from_fn(|_| StageCounters::default()),
            drops: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            ports: std::array::from_fn(|_| PortCounters::default()),
            replicated: AtomicU64::new(0),
            mac_learned: AtomicU64::new(0),
            mac_moved: AtomicU64::new(0),
            mac_aged: AtomicU64::new(0),
            mac_table_full: AtomicU64::new(0),
            neighbor_table_full: AtomicU64::new(0),
            affinity_table_full: AtomicU64::new(0),
            frag_table_full: AtomicU64::new(0),
            trace_lost: AtomicU64::new(0),
            ct_entries: AtomicU64::new(0),
            ct_inserted: AtomicU64::new(0),
            ct_expired: AtomicU64::new(0),
            ct_early_dropped: AtomicU64::new(0),
            ct_refused_full: AtomicU64::new(0),
            ct_restored: AtomicU64::new(0),
            ct_capacity: AtomicU64::new(0),
            handoff_out: AtomicU64::new(0),
            handoff_in: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            idle_polls: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
            busy_cycles: AtomicU64::new(0),
            total_cycles: AtomicU64::new(0),
            applied_gen: AtomicU64::new(0),
            settled_gen: AtomicU64::new(0),
        }
    }
}

impl WorkerCounters {
    /// Counts `n` packets `stage` dropped for `r` (a reason it declares).
    #[inline(always)]
    pub fn count_drop(&self, stage: StageId, r: DropReason, n: u64) {
        debug_assert!(
            stage.declares(r),
            "{} dropped for {}, a reason it does not declare",
            stage.name(),
            r.name()
        );
        add(&self.drops[stage.index()][r.index()], n);
    }

    /// Drops for `r`, whichever stage counted them.
    pub fn drops_for(&self, r: DropReason) -> u64 {
        self.drops.iter().map(|s| get(&s[r.index()])).sum()
    }

    /// Drops `stage` counted for `r`.
    pub fn drops_at(&self, stage: StageId, r: DropReason) -> u64 {
        get(&self.drops[stage.index()][r.index()])
    }

    pub fn drops_total(&self) -> u64 {
        self.drops.iter().flatten().map(get).sum()
    }

    pub fn rx_total(&self) -> u64 {
        self.ports.iter().map(|p| get(&p.rx_packets)).sum()
    }

    pub fn tx_total(&self) -> u64 {
        self.ports.iter().map(|p| get(&p.tx_packets)).sum()
    }
}

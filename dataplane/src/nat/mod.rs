//! Connection-tracked NAT: the per-worker connection table (`conntrack/`, with its
//! state file), SNAT masquerade of pod egress and its replies (`snat`,
//! `snat-reply`: `snat.rs`, with the NAT port slices), ICMP errors about translated
//! connections (`icmp.rs`), and the translations of fragmented datagrams (`frag.rs`).
pub mod conntrack;
#[cfg(test)]
mod contract;
#[cfg(feature = "dpdk")]
mod control;
pub mod frag;
pub mod icmp;
pub mod snat;

/// NAT's per-worker state: this worker's connections and NAT ports.
pub struct Nat {
    pub conntrack: conntrack::Conntrack,
    /// This worker's slice of the NAT port range.
    pub ports: snat::NatPorts,
    /// Which worker owns which connection.
    pub owners: snat::Owners,
    /// Translations of fragmented datagrams (this worker's and the others'), and
    /// this burst's new ones, to tell the others.
    pub frags: frag::Fragments,
}

impl Nat {
    /// Expires up to `budget` connections at `now` (seconds), between bursts.
    pub fn expire(&mut self, now: u32, budget: usize) {
        self.conntrack.expire(now, budget);
    }

    /// Publishes the connection table's and the fragment table's counters.
    pub fn publish(&self, c: &crate::pipeline::WorkerCounters) {
        use std::sync::atomic::Ordering::Relaxed;
        let ct = &self.conntrack;
        let s = ct.stats;
        c.ct_entries.store(ct.len() as u64, Relaxed);
        c.ct_inserted.store(s.inserted, Relaxed);
        c.ct_expired.store(s.expired, Relaxed);
        c.ct_early_dropped.store(s.early_dropped, Relaxed);
        c.ct_refused_full.store(s.refused_full, Relaxed);
        c.ct_capacity.store(ct.capacity() as u64, Relaxed);
        c.frag_table_full.store(self.frags.table.full, Relaxed);
    }

    /// Takes the connection-tracking knobs of a new snapshot (checked against the
    /// reservation by the control thread).
    pub fn set(&mut self, s: &crate::snapshot::Settings) {
        self.conntrack.timeouts = s.timeouts;
        self.conntrack.set_capacity(s.conntrack_capacity);
    }
}

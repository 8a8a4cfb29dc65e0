//! IPv4: the node's L3 view (`l3.rs`: its identity, routes by longest prefix in
//! `lpm.rs`, remote nodes), the stages that route (`ip4-lookup`: `lookup.rs`,
//! `ip4-rewrite`: `rewrite.rs`, `ip4-local`: `local.rs`, `icmp-error`:
//! `icmp_error.rs`, `ip4-fragment`: `fragment.rs`), and ARP (`arp`: `arp.rs`, the
//! responder, learning and the packets held for resolution) with its neighbour table
//! (`neighbor.rs`).
pub mod arp;
#[cfg(test)]
mod contract;
#[cfg(feature = "dpdk")]
mod control;
pub mod fragment;
pub mod icmp_error;
pub mod l3;
pub mod local;
pub mod lookup;
pub mod lpm;
pub mod neighbor;
pub mod rewrite;

pub use l3::{NextHop, NextHopKind, L3};
pub use neighbor::NeighborTable;

/// IPv4's per-worker state.
pub struct Ip4 {
    /// Neighbours (ARP), learned by `arp`, read by `ip4-rewrite` and `vxlan-encap`.
    pub neighbors: NeighborTable,
    /// Addresses this burst's ARP taught us (for the packets held and the peers).
    pub learned: Vec<u32>,
    /// ICMP errors sent (`icmp-error`), and ARP requests asked, per second.
    pub icmp_limit: icmp_error::RateLimit,
    pub arp_limit: icmp_error::RateLimit,
}

impl Ip4 {
    /// Publishes IPv4's counters.
    pub fn publish(&self, c: &crate::pipeline::WorkerCounters) {
        c.neighbor_table_full
            .store(self.neighbors.full, std::sync::atomic::Ordering::Relaxed);
    }
}

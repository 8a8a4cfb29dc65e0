//! Kubernetes Services: the Service table of the snapshot (`table.rs`), Maglev
//! endpoint selection (`maglev.rs`), the `lb` stage (`lb.rs`: DNAT of ClusterIPs,
//! NodePorts, external and LoadBalancer IPs, session affinity, replies restored), and
//! the prefilter that lets traffic of no Service skip `lb` (`prefilter.rs`).
#[cfg(test)]
mod contract;
pub mod lb;
pub mod maglev;
pub mod prefilter;
pub mod table;

pub use table::ServiceTable;

/// The Services' per-worker state (the table itself is the snapshot's).
pub struct Services {
    /// Session affinity: the endpoint each client was given, until when.
    pub affinity: lb::Affinity,
    pub frag_scratch: lb::FragScratch,
}

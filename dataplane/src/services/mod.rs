//! Kubernetes Services: the Service table of the snapshot (`table.rs`), Maglev
//! endpoint selection (`maglev.rs`), the `lb` stage (`lb.rs`: DNAT of ClusterIPs,
//! NodePorts, external and LoadBalancer IPs, session affinity, replies restored), and
//! the prefilter that lets traffic of no Service skip `lb` (`prefilter.rs`).
#[cfg(test)]
mod contract;
#[cfg(feature = "dpdk")]
mod control;
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

impl Services {
    /// Publishes the Services' counters.
    pub fn publish(&self, c: &crate::pipeline::WorkerCounters) {
        c.affinity_table_full
            .store(self.affinity.full, std::sync::atomic::Ordering::Relaxed);
    }
}

/// After a Service change: removes UDP connections whose endpoint is gone, 256
/// slab entries from `from` per call (bounded work between bursts). Returns where
/// to go on, or None when the sweep is done. UDP only, as kube-proxy clears them:
/// a TCP connection to a removed endpoint lives on (until the pod goes and the
/// client sees a reset or times out), it is not cut by the dataplane.
pub fn sweep_departed(
    ct: &mut crate::nat::conntrack::Conntrack,
    services: &ServiceTable,
    from: usize,
) -> Option<usize> {
    let next = ct.sweep(from, 256, |e| {
        e.is_dnat()
            && e.orig.proto == 17
            && !services.endpoint_exists(
                e.orig.dst,
                e.orig.dport,
                e.orig.proto,
                table::Endpoint {
                    ip: e.reply.src,
                    port: e.reply.sport,
                },
            )
    });
    (next < ct.slab_len()).then_some(next)
}

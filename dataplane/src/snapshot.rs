//! The snapshot: everything the workers read of the control plane (ports, L3 view,
//! Services), published as one value with one generation.
//!
//! The control thread builds a new snapshot (parts that did not change are the same
//! `Arc`, so they cost nothing), sends it to every worker and waits until each one has
//! acknowledged the generation: a worker stores it in `applied_gen` when it installed
//! the snapshot between two bursts, and in `settled_gen` once the work the change
//! implies is done too (the sweep of connections whose Service endpoint is gone).
//! Two workers therefore never run on different tables once a change has returned,
//! and "applied" in an answer means applied by all.
use std::sync::Arc;

use crate::ip4::L3;
use crate::nat::conntrack::Timeouts;
use crate::port::PortMap;
use crate::services::table::ServiceTable;

#[derive(Clone)]
pub struct Snapshot {
    pub ports: Arc<PortMap>,
    pub l3: Arc<L3>,
    pub services: Arc<ServiceTable>,
    pub settings: Arc<Settings>,
}

/// Knobs the workers apply at run time.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Connections per worker (within what each table reserved at start).
    pub conntrack_capacity: usize,
    pub timeouts: Timeouts,
}

impl Default for Snapshot {
    /// No ports, no node identity, no Services: what a dataplane starts with.
    fn default() -> Self {
        Snapshot {
            ports: Arc::new(PortMap::default()),
            l3: Arc::new(L3::empty()),
            services: Arc::new(ServiceTable::default()),
            settings: Arc::new(Settings {
                conntrack_capacity: 65_536,
                timeouts: Timeouts::default(),
            }),
        }
    }
}

impl Snapshot {
    /// Which parts differ from `old` (by identity: a part that was not rebuilt is the
    /// same allocation).
    pub fn changes(&self, old: &Snapshot) -> Changes {
        Changes {
            ports: !Arc::ptr_eq(&self.ports, &old.ports),
            l3: !Arc::ptr_eq(&self.l3, &old.l3),
            services: !Arc::ptr_eq(&self.services, &old.services),
            settings: !Arc::ptr_eq(&self.settings, &old.settings),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    pub ports: bool,
    pub l3: bool,
    pub services: bool,
    pub settings: bool,
}

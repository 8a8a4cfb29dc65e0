//! Ports: the port map the workers read (`map.rs`, part of the snapshot: roles,
//! bridge domains, MTUs), and the backends, DPDK ethdev ports and plain memory (no
//! EAL) for unit tests and benchmarks, both implementing
//! [`PortIo`](crate::pipeline::PortIo).
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod map;
pub mod memory;

pub use map::{BridgeDomain, PortEntry, PortMap, Role};

#[cfg(feature = "dpdk")]
pub use self::dpdk::{DpdkIo, Grant};
pub use memory::{MemFrame, MemIo};

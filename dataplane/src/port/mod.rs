//! Port backends: DPDK ethdev ports, and plain memory (no EAL) for unit tests and
//! benchmarks. Both implement [`PortIo`](crate::pipeline::PortIo).
pub mod dpdk;
pub mod memory;

pub use self::dpdk::DpdkIo;
pub use memory::{MemFrame, MemIo};

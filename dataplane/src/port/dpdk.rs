//! Burst I/O on DPDK ports: [`DpdkIo`] lives in the `dpdk` module, beside the unsafe
//! calls whose contract it upholds.
pub use crate::dpdk::io::DpdkIo;

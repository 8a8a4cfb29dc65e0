//! The one safe wrapper over DPDK (crate `dpdk-sys`). Every `unsafe` block of the
//! dataplane lives in this module; everything above it is safe Rust.
//!
//! - [`eal`]: EAL start-up from the dataplane's configuration, worker lcores, launch.
//! - [`mbuf`]: owned packet buffers ([`Mbuf`]) and mempools.
//! - [`ethdev`]: ports: hot-plug of virtual devices, queues, start/stop, MAC, link,
//!   xstats, and the burst I/O the workers use.
//! - [`af_packet`]: the af_packet PMD's ring geometry from `dataplane.max_frame`.
//! - [`netns`]: running a probe inside another network namespace.
//! - [`region`]: memory mappings tables keep state in (anonymous, or a file that
//!   outlives the process); needs no EAL.
pub mod af_packet;
pub mod eal;
pub mod ethdev;
pub mod io;
pub mod mbuf;
pub mod netns;
pub mod region;

pub use eal::{Eal, EalError};
pub use ethdev::{EthPort, PortError, PortSetup, SoloPort};
pub use io::DpdkIo;
pub use mbuf::{Mbuf, Mempool};

use std::ffi::CStr;

/// DPDK's message for an error number (`rte_strerror`), as an owned string.
pub fn strerror(errnum: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated
    // string for any errnum; we copy it out before the next call can change it.
    let msg = unsafe { CStr::from_ptr(dpdk_sys::rte_strerror(errnum)) };
    msg.to_string_lossy().into_owned()
}

/// `rte_errno` of the calling thread (it is thread-local, so it is read through the shim).
pub fn last_errno() -> i32 {
    // SAFETY: pp_errno only reads the thread-local rte_errno.
    unsafe { dpdk_sys::pp_errno() }
}

/// The time stamp counter, for cycle accounting. Works without EAL.
#[inline(always)]
pub fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions on x86_64; it only reads a counter.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: pp_rdtsc reads the architecture's cycle counter.
        unsafe { dpdk_sys::pp_rdtsc() }
    }
}

/// Prefetch a cache line into all cache levels (a hint; never faults).
#[inline(always)]
pub fn prefetch(data: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: PREFETCHT0 is a hint that never faults, whatever the address.
        unsafe {
            core::arch::x86_64::_mm_prefetch(
                data.as_ptr().cast::<i8>(),
                core::arch::x86_64::_MM_HINT_T0,
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// DPDK's version string, e.g. "DPDK 22.11.11".
pub fn version() -> String {
    // SAFETY: rte_version returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(dpdk_sys::rte_version()) }
        .to_string_lossy()
        .into_owned()
}

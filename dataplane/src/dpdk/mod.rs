//! The one safe wrapper over DPDK (crate `dpdk-sys`). Every `unsafe` block of the
//! dataplane lives in this module; everything above it is safe Rust. With the
//! `dpdk` feature off only what needs no DPDK is here: `region`, `af_packet`'s ring
//! arithmetic, `rdtsc`, `prefetch`.
//!
//! - [`eal`]: EAL start-up from the dataplane's configuration, worker lcores, launch.
//! - [`mbuf`]: owned packet buffers ([`Mbuf`]) with a private area for what travels
//!   with a packet, and mempools.
//! - [`ethdev`]: ports: hot-plug of virtual devices, queues, start/stop, MAC, link,
//!   xstats, and the queue tokens ([`RxQueue`], [`TxQueue`]) burst I/O goes through:
//!   made when a port starts, and the port is not stopped while one is out.
//! - [`io`]: a worker's I/O ([`DpdkIo`]): the tokens it was granted, its mempool.
//!   It names nothing of the pipeline; `port::dpdk` makes it the pipeline's `PortIo`.
//! - [`af_packet`]: the af_packet PMD's ring geometry from `dataplane.max_frame`.
//! - [`netns`]: running a probe inside another network namespace.
//! - [`region`]: memory mappings tables keep state in (anonymous, or a file that
//!   outlives the process); needs no EAL. `plain_struct!` declares the types they
//!   (and mbuf private areas) hold.
pub mod af_packet;
#[cfg(feature = "dpdk")]
pub mod eal;
#[cfg(feature = "dpdk")]
pub mod ethdev;
#[cfg(feature = "dpdk")]
pub mod io;
#[cfg(feature = "dpdk")]
pub mod mbuf;
#[cfg(feature = "dpdk")]
pub mod netns;
pub mod region;

#[cfg(feature = "dpdk")]
pub use eal::{Eal, EalError};
#[cfg(feature = "dpdk")]
pub use ethdev::{EthPort, PortError, PortSetup, RxQueue, SoloPort, TxQueue};
#[cfg(feature = "dpdk")]
pub use io::{DpdkIo, Grant};
#[cfg(feature = "dpdk")]
pub use mbuf::{Mbuf, Mempool};

#[cfg(feature = "dpdk")]
use std::ffi::CStr;

/// DPDK's message for an error number (`rte_strerror`), as an owned string.
#[cfg(feature = "dpdk")]
pub fn strerror(errnum: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated
    // string for any errnum; we copy it out before the next call can change it.
    let msg = unsafe { CStr::from_ptr(dpdk_sys::rte_strerror(errnum)) };
    msg.to_string_lossy().into_owned()
}

/// `rte_errno` of the calling thread (it is thread-local, so it is read through the shim).
#[cfg(feature = "dpdk")]
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
    #[cfg(all(not(target_arch = "x86_64"), feature = "dpdk"))]
    {
        // SAFETY: pp_rdtsc reads the architecture's cycle counter.
        unsafe { dpdk_sys::pp_rdtsc() }
    }
    #[cfg(all(not(target_arch = "x86_64"), not(feature = "dpdk")))]
    {
        // Nanoseconds since the first call: a monotonic stand-in for the counter.
        static T0: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        T0.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
    }
}

/// Prefetch the cache line holding `*r` into all cache levels (a hint).
#[inline(always)]
pub fn prefetch_ref<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: PREFETCHT0 is a hint that never faults, whatever the address; the
        // pointer comes from a reference and is not dereferenced.
        unsafe {
            core::arch::x86_64::_mm_prefetch(
                (r as *const T).cast::<i8>(),
                core::arch::x86_64::_MM_HINT_T0,
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
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
#[cfg(feature = "dpdk")]
pub fn version() -> String {
    // SAFETY: rte_version returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(dpdk_sys::rte_version()) }
        .to_string_lossy()
        .into_owned()
}

//! Owned packet buffers and mempools.
use std::ffi::CString;
use std::ptr::NonNull;

use dpdk_sys::{rte_mbuf, rte_mempool};

use super::region::Plain;

/// Bytes of private area every mbuf of our pools carries after its header, for what
/// travels with a packet (the pipeline's metadata). DPDK wants a multiple of 8.
pub const PRIV_SIZE: u16 = 64;
const PRIV_ALIGN: usize = 8;

/// One packet buffer, owned: it is freed exactly once, when dropped, unless ownership
/// passed to a device by a transmit. It cannot be copied or freed twice.
#[repr(transparent)]
pub struct Mbuf(NonNull<rte_mbuf>);

// SAFETY: an mbuf is a plain buffer; its owner may move it to another thread (that is
// how DPDK pipelines hand packets over). Freeing returns it to a thread-safe mempool.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Takes ownership of a buffer a PMD or a mempool gave us.
    ///
    /// # Safety
    /// `raw` must be a valid, single-segment-or-chained mbuf that nobody else owns,
    /// from a pool made by [`Mempool::new`] (directly, or by a PMD whose rx queue
    /// was set up with one), so it has [`PRIV_SIZE`] bytes of private area.
    #[inline(always)]
    pub(crate) unsafe fn from_raw(raw: NonNull<rte_mbuf>) -> Mbuf {
        Mbuf(raw)
    }

    #[inline(always)]
    fn m(&self) -> &rte_mbuf {
        // SAFETY: we own a valid mbuf for our whole lifetime.
        unsafe { self.0.as_ref() }
    }

    /// The first segment's bytes.
    #[inline(always)]
    pub fn data(&self) -> &[u8] {
        let m = self.m();
        // SAFETY: buf_addr + data_off .. + data_len lies inside the mbuf's data room,
        // which DPDK guarantees for a valid mbuf; we own it, so nobody writes it now.
        unsafe {
            std::slice::from_raw_parts(
                m.buf_addr.cast::<u8>().add(usize::from(m.data_off)),
                usize::from(m.data_len),
            )
        }
    }

    /// The first segment's bytes, writable.
    #[inline(always)]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let m = self.m();
        let (addr, off, len) = (m.buf_addr.cast::<u8>(), m.data_off, m.data_len);
        // SAFETY: as in data(); &mut self gives exclusive access to the buffer.
        unsafe { std::slice::from_raw_parts_mut(addr.add(usize::from(off)), usize::from(len)) }
    }

    /// The private area, which every mbuf of our pools has right after its header
    /// (DPDK's `rte_mbuf_to_priv`): the pipeline keeps its per-packet metadata there.
    #[inline(always)]
    fn private_ptr<T: Plain>(&self) -> *mut T {
        const {
            assert!(
                std::mem::size_of::<T>() <= PRIV_SIZE as usize
                    && std::mem::align_of::<T>() <= PRIV_ALIGN
            );
        }
        debug_assert!(self.m().priv_size >= PRIV_SIZE);
        self.0
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(std::mem::size_of::<rte_mbuf>())
            .cast::<T>()
    }

    /// The private area as a `T`.
    #[inline(always)]
    pub fn private<T: Plain>(&self) -> &T {
        // SAFETY: the mbuf has PRIV_SIZE bytes of private area after its header
        // (from_raw's contract), which T fits (checked at compile time), aligned: the
        // header is cache-line aligned and 128 bytes long. Every bit pattern is a T
        // (Plain), so whatever a previous user left there is a value. We own the mbuf.
        unsafe { &*self.private_ptr::<T>() }
    }

    /// The private area as a `T`, writable.
    #[inline(always)]
    pub fn private_mut<T: Plain>(&mut self) -> &mut T {
        // SAFETY: as in private(); &mut self gives exclusive access.
        unsafe { &mut *self.private_ptr::<T>() }
    }

    /// The first segment's bytes and the private area at once (disjoint memory: the
    /// private area ends where the buffer's headroom starts).
    #[inline(always)]
    pub fn data_and_private_mut<T: Plain>(&mut self) -> (&mut [u8], &mut T) {
        let p = self.private_ptr::<T>();
        let m = self.m();
        let (addr, off, len) = (m.buf_addr.cast::<u8>(), m.data_off, m.data_len);
        // SAFETY: as in data_mut() and private_mut(); the two ranges do not overlap
        // (the data room starts after the private area), so two &mut are sound.
        unsafe {
            (
                std::slice::from_raw_parts_mut(addr.add(usize::from(off)), usize::from(len)),
                &mut *p,
            )
        }
    }

    /// Total packet length over all segments.
    #[inline(always)]
    pub fn pkt_len(&self) -> u32 {
        self.m().pkt_len
    }

    /// True when the whole packet is in the first segment.
    #[inline(always)]
    pub fn is_contiguous(&self) -> bool {
        self.m().nb_segs == 1
    }

    /// What the NIC found when it checked the IPv4 header checksum: Some(good or
    /// not), or None when it did not check (no offload, or NONE from a virtual
    /// sender): then the checksum is checked in software.
    #[inline(always)]
    pub fn rx_ip_checksum_ok(&self) -> Option<bool> {
        let f = self.m().ol_flags & u64::from(dpdk_sys::RTE_MBUF_F_RX_IP_CKSUM_MASK);
        if f == u64::from(dpdk_sys::RTE_MBUF_F_RX_IP_CKSUM_GOOD) {
            Some(true)
        } else if f == u64::from(dpdk_sys::RTE_MBUF_F_RX_IP_CKSUM_BAD) {
            Some(false)
        } else {
            None
        }
    }

    /// The port the PMD received this buffer on.
    #[inline(always)]
    pub fn port(&self) -> u16 {
        self.m().port
    }

    /// Grows the packet at the front by `len` bytes (for encapsulation) and returns the
    /// whole new data area; None when the headroom is too small.
    pub fn prepend(&mut self, len: u16) -> Option<&mut [u8]> {
        // SAFETY: we own the mbuf; rte_pktmbuf_prepend only moves data_off/lengths.
        let p = unsafe { dpdk_sys::pp_pktmbuf_prepend(self.0.as_ptr(), len) };
        if p.is_null() {
            None
        } else {
            Some(self.data_mut())
        }
    }

    /// Removes `len` bytes from the front (for decapsulation). False when shorter.
    pub fn adj(&mut self, len: u16) -> bool {
        // SAFETY: we own the mbuf; rte_pktmbuf_adj only moves data_off/lengths.
        !unsafe { dpdk_sys::pp_pktmbuf_adj(self.0.as_ptr(), len) }.is_null()
    }

    /// Grows the packet at the end by `len` bytes (for building replies).
    pub fn append(&mut self, len: u16) -> Option<&mut [u8]> {
        // SAFETY: we own the mbuf; rte_pktmbuf_append only moves lengths.
        let p = unsafe { dpdk_sys::pp_pktmbuf_append(self.0.as_ptr(), len) };
        if p.is_null() {
            None
        } else {
            Some(self.data_mut())
        }
    }

    /// Shortens the packet at the end by `len` bytes. False when shorter.
    pub fn trim(&mut self, len: u16) -> bool {
        // SAFETY: we own the mbuf; rte_pktmbuf_trim only changes lengths.
        unsafe { dpdk_sys::pp_pktmbuf_trim(self.0.as_ptr(), len) == 0 }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf and never use it again.
        unsafe { dpdk_sys::pp_pktmbuf_free(self.0.as_ptr()) }
    }
}

/// Frees a batch of owned buffers with one call.
pub fn free_bulk(bufs: &mut Vec<Mbuf>) {
    // SAFETY: Mbuf is repr(transparent) over NonNull<rte_mbuf>, so the vector's storage
    // is an array of valid owned mbuf pointers; set_len(0) hands their ownership to
    // rte_pktmbuf_free_bulk, which frees each exactly once.
    unsafe {
        let n = bufs.len();
        let ptr = bufs.as_mut_ptr().cast::<*mut rte_mbuf>();
        bufs.set_len(0);
        dpdk_sys::pp_pktmbuf_free_bulk(ptr, u32::try_from(n).unwrap_or(u32::MAX));
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot create mbuf pool {name:?} of {count} buffers: {reason} (reserve hugepages, or raise eal.memory_mb, or lower dataplane.mbufs)")]
pub struct MempoolError {
    pub name: String,
    pub count: u32,
    pub reason: String,
}

/// A pool of packet buffers. Lives as long as the process (DPDK may hold buffers of
/// it in device rings until the ports are closed).
#[derive(Clone, Copy)]
pub struct Mempool(NonNull<rte_mempool>);

// SAFETY: DPDK mempools are multi-producer/multi-consumer safe.
unsafe impl Send for Mempool {}
// SAFETY: as above.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a packet-buffer pool of `count` buffers with `cache` buffers per lcore and
    /// `data_room` bytes (headroom included) each.
    pub fn new(
        name: &str,
        count: u32,
        cache: u32,
        data_room: u16,
    ) -> Result<Mempool, MempoolError> {
        let err = |reason: String| MempoolError {
            name: name.to_owned(),
            count,
            reason,
        };
        if !super::eal::is_up() {
            return Err(err("the EAL is not running".into()));
        }
        let c = CString::new(name).map_err(|_| err("name contains a NUL byte".into()))?;
        // SAFETY: c is a valid name; the EAL is initialised (this type is only built
        // after Eal::init by the dataplane); SOCKET_ID_ANY lets DPDK choose memory.
        let p = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create(c.as_ptr(), count, cache, PRIV_SIZE, data_room, -1)
        };
        NonNull::new(p)
            .map(Mempool)
            .ok_or_else(|| err(super::strerror(super::last_errno())))
    }

    pub(crate) fn as_ptr(&self) -> *mut rte_mempool {
        self.0.as_ptr()
    }

    /// A fresh, empty buffer.
    #[inline]
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is valid for the life of the process.
        let p = unsafe { dpdk_sys::pp_pktmbuf_alloc(self.0.as_ptr()) };
        // SAFETY: a freshly allocated mbuf is owned by nobody else.
        NonNull::new(p).map(|p| unsafe { Mbuf::from_raw(p) })
    }

    /// A new buffer holding a copy of `data`.
    #[inline]
    pub fn alloc_copy(&self, data: &[u8]) -> Option<Mbuf> {
        let mut m = self.alloc()?;
        let len = u16::try_from(data.len()).ok()?;
        m.append(len)?.copy_from_slice(data);
        Some(m)
    }

    /// Buffers currently free in the pool.
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is valid; the count is a racy snapshot, which is all we claim.
        unsafe { dpdk_sys::pp_mempool_avail_count(self.0.as_ptr()) }
    }
}

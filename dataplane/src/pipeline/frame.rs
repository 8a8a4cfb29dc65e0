//! What the pipeline needs from packet buffers and ports, so that it runs the same on
//! DPDK mbufs and on plain memory (unit tests, benchmarks).
use super::Meta;

/// A packet buffer the pipeline can read and rewrite.
pub trait Frame: Send + 'static {
    fn data(&self) -> &[u8];
    /// The packet's metadata, which travels with it (an mbuf's private area).
    fn meta(&self) -> &Meta;
    fn meta_mut(&mut self) -> &mut Meta;
    /// The bytes and the metadata at once, for a stage that rewrites the frame.
    fn data_meta_mut(&mut self) -> (&mut [u8], &mut Meta);
    /// The first segment's length (cheaper than `data().len()` for counting bytes).
    fn data_len(&self) -> usize {
        self.data().len()
    }
    /// What the NIC found checking the IPv4 header checksum, when it checked.
    fn rx_ip_checksum(&self) -> RxChecksum {
        RxChecksum::Unknown
    }
    fn data_mut(&mut self) -> &mut [u8];
    /// False for chained (multi-segment) buffers, which the pipeline does not handle.
    fn is_contiguous(&self) -> bool;
    /// Grows the frame by `n` bytes at the front (encapsulation); false without room.
    fn prepend(&mut self, n: usize) -> bool;
    /// Removes `n` bytes from the front (decapsulation); false when shorter.
    fn strip(&mut self, n: usize) -> bool;
    /// Sets the length, growing or shrinking at the end; false without room.
    fn set_len(&mut self, len: usize) -> bool;
}

/// The receive side's verdict on a frame's IPv4 header checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxChecksum {
    /// Not checked (no offload, or not IPv4): eth-input checks in software.
    Unknown,
    Good,
    Bad,
}

/// Burst I/O on ports, and buffers for copies.
pub trait PortIo {
    type Frame: Frame;
    /// What the control thread grants a worker to use its queues with (DPDK: queue
    /// tokens made when a port starts); `()` in memory.
    type Queues: Send + 'static;
    /// Receives up to `max` frames from `(port, queue)`, appended to `out`.
    fn rx_burst(&mut self, port: u16, queue: u16, out: &mut Vec<Self::Frame>, max: usize) -> usize;
    /// Transmits from the front of `frames` on this worker's own tx queue of `port`;
    /// the sent ones leave the vector.
    fn tx_burst(&mut self, port: u16, frames: &mut Vec<Self::Frame>) -> usize;
    /// Takes the queues granted with a new port map, in place of the old ones.
    fn grant(&mut self, _q: Self::Queues) {}
    /// A new buffer holding a copy of `data` (for flooding); None when out of buffers.
    fn copy_frame(&mut self, data: &[u8]) -> Option<Self::Frame>;
    /// Frees dropped frames in bulk (the vector is left empty).
    fn free_bulk(&mut self, frames: &mut Vec<Self::Frame>) {
        frames.clear();
    }
}

#[cfg(feature = "dpdk")]
impl Frame for crate::dpdk::Mbuf {
    #[inline(always)]
    fn data(&self) -> &[u8] {
        crate::dpdk::Mbuf::data(self)
    }
    #[inline(always)]
    fn meta(&self) -> &Meta {
        self.private()
    }
    #[inline(always)]
    fn meta_mut(&mut self) -> &mut Meta {
        self.private_mut()
    }
    #[inline(always)]
    fn data_meta_mut(&mut self) -> (&mut [u8], &mut Meta) {
        self.data_and_private_mut()
    }
    #[inline(always)]
    fn data_mut(&mut self) -> &mut [u8] {
        crate::dpdk::Mbuf::data_mut(self)
    }
    #[inline(always)]
    fn data_len(&self) -> usize {
        crate::dpdk::Mbuf::data(self).len()
    }
    #[inline(always)]
    fn rx_ip_checksum(&self) -> RxChecksum {
        match crate::dpdk::Mbuf::rx_ip_checksum_ok(self) {
            Some(true) => RxChecksum::Good,
            Some(false) => RxChecksum::Bad,
            None => RxChecksum::Unknown,
        }
    }
    #[inline(always)]
    fn is_contiguous(&self) -> bool {
        crate::dpdk::Mbuf::is_contiguous(self)
    }
    #[inline]
    fn prepend(&mut self, n: usize) -> bool {
        u16::try_from(n).is_ok_and(|n| crate::dpdk::Mbuf::prepend(self, n).is_some())
    }
    #[inline]
    fn strip(&mut self, n: usize) -> bool {
        u16::try_from(n).is_ok_and(|n| crate::dpdk::Mbuf::adj(self, n))
    }
    #[inline]
    fn set_len(&mut self, len: usize) -> bool {
        let cur = self.data().len();
        match len.cmp(&cur) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Less => u16::try_from(cur - len).is_ok_and(|n| self.trim(n)),
            std::cmp::Ordering::Greater => {
                u16::try_from(len - cur).is_ok_and(|n| self.append(n).is_some())
            }
        }
    }
}

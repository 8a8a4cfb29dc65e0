//! A worker's burst I/O on DPDK ports.
use super::{ethdev, mbuf, Mbuf, Mempool};
use crate::pipeline::PortIo;

/// A worker's I/O. The ports are global to DPDK; the mempool supplies flood copies.
pub struct DpdkIo {
    pool: Mempool,
}

impl DpdkIo {
    pub fn new(pool: Mempool) -> DpdkIo {
        DpdkIo { pool }
    }
}

// The burst calls' contract (started port, configured queue, one poller per queue)
// holds by construction of the port map, which is the only source of (port, queue)
// pairs a worker uses: the control thread lists a port only after starting it, gives
// each rx queue to exactly one worker and each worker its own tx queue (its index),
// and stops a port only after every worker acknowledged a map without it.
impl PortIo for DpdkIo {
    type Frame = Mbuf;

    #[inline(always)]
    fn rx_burst(&mut self, port: u16, queue: u16, out: &mut Vec<Mbuf>, max: usize) -> usize {
        // SAFETY: (port, queue) comes from the published port map; see above.
        unsafe { ethdev::rx_burst(port, queue, out, max) }
    }

    #[inline(always)]
    fn tx_burst(&mut self, port: u16, queue: u16, frames: &mut Vec<Mbuf>) -> usize {
        // SAFETY: as for rx_burst; queue is this worker's own tx queue.
        unsafe { ethdev::tx_burst(port, queue, frames) }
    }

    #[inline]
    fn copy_frame(&mut self, data: &[u8]) -> Option<Mbuf> {
        self.pool.alloc_copy(data)
    }

    #[inline]
    fn free_bulk(&mut self, frames: &mut Vec<Mbuf>) {
        mbuf::free_bulk(frames);
    }
}

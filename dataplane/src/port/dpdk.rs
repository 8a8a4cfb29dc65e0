//! Burst I/O on DPDK ports.
use crate::dpdk::{ethdev, mbuf, Mbuf, Mempool};
use crate::pipeline::PortIo;

/// A worker's I/O: the ports are global to DPDK; the mempool supplies flood copies.
pub struct DpdkIo {
    pub pool: Mempool,
}

impl PortIo for DpdkIo {
    type Frame = Mbuf;

    #[inline(always)]
    fn rx_burst(&mut self, port: u16, queue: u16, out: &mut Vec<Mbuf>, max: usize) -> usize {
        ethdev::rx_burst(port, queue, out, max)
    }

    #[inline(always)]
    fn tx_burst(&mut self, port: u16, queue: u16, frames: &mut Vec<Mbuf>) -> usize {
        ethdev::tx_burst(port, queue, frames)
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

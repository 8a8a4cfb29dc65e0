//! The pipeline's port I/O on DPDK: [`DpdkIo`] (in the `dpdk` wrapper, with the
//! queue tokens it holds) seen as a [`PortIo`].
pub use crate::dpdk::io::{DpdkIo, Grant};
use crate::dpdk::Mbuf;
use crate::pipeline::PortIo;

impl PortIo for DpdkIo {
    type Frame = Mbuf;
    type Queues = Grant;

    #[inline(always)]
    fn rx_burst(&mut self, port: u16, queue: u16, out: &mut Vec<Mbuf>, max: usize) -> usize {
        DpdkIo::rx_burst(self, port, queue, out, max)
    }

    #[inline(always)]
    fn tx_burst(&mut self, port: u16, frames: &mut Vec<Mbuf>) -> usize {
        DpdkIo::tx_burst(self, port, frames)
    }

    #[inline]
    fn copy_frame(&mut self, data: &[u8]) -> Option<Mbuf> {
        DpdkIo::copy_frame(self, data)
    }

    #[inline]
    fn free_bulk(&mut self, frames: &mut Vec<Mbuf>) {
        DpdkIo::free_bulk(frames);
    }

    fn grant(&mut self, q: Grant) {
        DpdkIo::grant(self, q);
    }
}

//! A worker's burst I/O on DPDK ports: the queue tokens it was granted, and the
//! mempool its copies come from.
use super::{mbuf, Mbuf, Mempool, RxQueue, TxQueue};

/// The queues one worker may use, as the control thread grants them with each port
/// map: a token per rx queue it polls, and its own tx queue on every port.
#[derive(Default)]
pub struct Grant {
    pub rx: Vec<RxQueue>,
    pub tx: Vec<TxQueue>,
}

/// A worker's I/O: only queues it holds a token for can be polled or sent on.
pub struct DpdkIo {
    pool: Mempool,
    rx: Vec<RxQueue>,
    /// By port id.
    tx: Vec<Option<TxQueue>>,
}

impl DpdkIo {
    pub fn new(pool: Mempool) -> DpdkIo {
        DpdkIo {
            pool,
            rx: Vec::new(),
            tx: Vec::new(),
        }
    }

    /// Takes a new grant in place of the old one, whose tokens are let go here (so a
    /// port withdrawn from this worker can be stopped once every worker took its
    /// new grant).
    pub fn grant(&mut self, g: Grant) {
        self.rx = g.rx;
        self.tx.clear();
        for t in g.tx {
            let p = usize::from(t.port());
            if self.tx.len() <= p {
                self.tx.resize_with(p + 1, || None);
            }
            self.tx[p] = Some(t);
        }
    }

    /// Receives from rx queue `queue` of `port`, if this worker holds its token.
    #[inline(always)]
    pub fn rx_burst(&mut self, port: u16, queue: u16, out: &mut Vec<Mbuf>, max: usize) -> usize {
        match self
            .rx
            .iter_mut()
            .find(|q| q.port() == port && q.queue() == queue)
        {
            Some(q) => q.burst(out, max),
            None => 0,
        }
    }

    /// Transmits on this worker's tx queue of `port`; nothing when it holds none.
    #[inline(always)]
    pub fn tx_burst(&mut self, port: u16, frames: &mut Vec<Mbuf>) -> usize {
        match self.tx.get_mut(usize::from(port)).and_then(Option::as_mut) {
            Some(q) => q.burst(frames),
            None => 0,
        }
    }

    #[inline]
    pub fn copy_frame(&mut self, data: &[u8]) -> Option<Mbuf> {
        self.pool.alloc_copy(data)
    }

    #[inline]
    pub fn free_bulk(frames: &mut Vec<Mbuf>) {
        mbuf::free_bulk(frames);
    }
}

//! A port backend in plain memory: frames in, frames out, no EAL. The pipeline runs on
//! it in unit tests and benchmarks exactly as it runs on mbufs.
use std::collections::VecDeque;

use crate::pipeline::{Frame, Meta, PortIo, MAX_PORTS};

/// Headroom kept in front of a frame (as an mbuf has), for encapsulation.
pub const HEADROOM: usize = 128;
pub const BUF_SIZE: usize = 2048 + HEADROOM;

/// A frame in a heap buffer with headroom. Shaped like an mbuf: a pointer to a
/// header (offsets, the metadata an mbuf keeps in its private area) that points to
/// the bytes, so moving a frame moves one pointer, as on DPDK.
pub struct MemFrame(Box<MemBuf>);

struct MemBuf {
    start: usize,
    len: usize,
    meta: Meta,
    /// Claims to be one segment of a chain (tests of the chained-buffer drop).
    chained: bool,
    buf: Box<[u8]>,
}

impl MemFrame {
    pub fn from_bytes(data: &[u8]) -> MemFrame {
        let mut buf = vec![0u8; BUF_SIZE.max(HEADROOM + data.len())].into_boxed_slice();
        buf[HEADROOM..HEADROOM + data.len()].copy_from_slice(data);
        MemFrame(Box::new(MemBuf {
            buf,
            start: HEADROOM,
            len: data.len(),
            meta: Meta::default(),
            chained: false,
        }))
    }

    /// A frame with exactly `headroom` bytes in front and `tailroom` behind (tests
    /// of what a stage does without room).
    pub fn with_room(data: &[u8], headroom: usize, tailroom: usize) -> MemFrame {
        let mut buf = vec![0u8; headroom + data.len() + tailroom].into_boxed_slice();
        buf[headroom..headroom + data.len()].copy_from_slice(data);
        MemFrame(Box::new(MemBuf {
            buf,
            start: headroom,
            len: data.len(),
            meta: Meta::default(),
            chained: false,
        }))
    }

    /// A frame that says it is the first segment of a chain, as a multi-segment
    /// mbuf would.
    pub fn chained(data: &[u8]) -> MemFrame {
        let mut f = MemFrame::from_bytes(data);
        f.0.chained = true;
        f
    }
}

impl Frame for MemFrame {
    #[inline(always)]
    fn data(&self) -> &[u8] {
        &self.0.buf[self.0.start..self.0.start + self.0.len]
    }
    #[inline(always)]
    fn meta(&self) -> &Meta {
        &self.0.meta
    }
    #[inline(always)]
    fn meta_mut(&mut self) -> &mut Meta {
        &mut self.0.meta
    }
    #[inline(always)]
    fn data_meta_mut(&mut self) -> (&mut [u8], &mut Meta) {
        (
            &mut self.0.buf[self.0.start..self.0.start + self.0.len],
            &mut self.0.meta,
        )
    }
    #[inline(always)]
    fn data_len(&self) -> usize {
        self.0.len
    }
    #[inline(always)]
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.0.buf[self.0.start..self.0.start + self.0.len]
    }
    #[inline(always)]
    fn is_contiguous(&self) -> bool {
        !self.0.chained
    }
    #[inline(always)]
    fn prepend(&mut self, n: usize) -> bool {
        if n > self.0.start {
            return false;
        }
        self.0.start -= n;
        self.0.len += n;
        true
    }
    #[inline(always)]
    fn strip(&mut self, n: usize) -> bool {
        if n > self.0.len {
            return false;
        }
        self.0.start += n;
        self.0.len -= n;
        true
    }
    #[inline(always)]
    fn set_len(&mut self, len: usize) -> bool {
        if self.0.start + len > self.0.buf.len() {
            return false;
        }
        self.0.len = len;
        true
    }
}

/// One memory port: a queue of frames to receive, and what was transmitted.
#[derive(Default)]
pub struct MemPort {
    pub rx: VecDeque<MemFrame>,
    pub tx: Vec<Vec<u8>>,
    /// Refuse transmission beyond this many frames per burst (to test tx-full).
    pub tx_limit: Option<usize>,
    /// When set, transmitted frames are counted and recycled, not kept (benchmarks).
    pub discard_tx: bool,
    /// When set, transmitted frames are queued for receiving on this port instead
    /// (benchmarks loop the same buffers forever).
    pub loop_to: Option<u16>,
    pub tx_count: u64,
}

/// Memory ports, indexed by port id.
pub struct MemIo {
    pub ports: Vec<MemPort>,
    /// Copies allowed before `copy_frame` reports exhaustion (None: unlimited).
    pub copy_budget: Option<usize>,
    recycled: Vec<MemFrame>,
}

impl Default for MemIo {
    fn default() -> Self {
        MemIo {
            ports: (0..MAX_PORTS).map(|_| MemPort::default()).collect(),
            copy_budget: None,
            recycled: Vec::new(),
        }
    }
}

impl MemIo {
    pub fn push_rx(&mut self, port: u16, data: &[u8]) {
        let f = self.frame(data);
        self.ports[usize::from(port)].rx.push_back(f);
    }

    /// Re-queues a frame for receiving (benchmarks loop pre-built frames this way).
    pub fn requeue(&mut self, port: u16, f: MemFrame) {
        self.ports[usize::from(port)].rx.push_back(f);
    }

    /// Gives this I/O's freed buffers to `other` (a benchmark's workers share one
    /// pool, as DPDK's workers share a mempool).
    pub fn give_recycled(&mut self, other: &mut MemIo) {
        other.recycled.append(&mut self.recycled);
    }

    pub fn take_tx(&mut self, port: u16) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.ports[usize::from(port)].tx)
    }

    fn frame(&mut self, data: &[u8]) -> MemFrame {
        match self.recycled.pop() {
            Some(mut f) if f.0.buf.len() >= HEADROOM + data.len() => {
                f.0.start = HEADROOM;
                f.0.len = data.len();
                f.0.buf[HEADROOM..HEADROOM + data.len()].copy_from_slice(data);
                f
            }
            _ => MemFrame::from_bytes(data),
        }
    }
}

impl PortIo for MemIo {
    type Frame = MemFrame;
    type Queues = ();

    fn rx_burst(&mut self, port: u16, _queue: u16, out: &mut Vec<MemFrame>, max: usize) -> usize {
        let Some(p) = self.ports.get_mut(usize::from(port)) else {
            return 0;
        };
        let n = max.min(p.rx.len());
        out.extend(p.rx.drain(..n));
        n
    }

    fn tx_burst(&mut self, port: u16, frames: &mut Vec<MemFrame>) -> usize {
        let Some(p) = self.ports.get_mut(usize::from(port)) else {
            return 0;
        };
        let n = p.tx_limit.map_or(frames.len(), |l| l.min(frames.len()));
        p.tx_count += n as u64;
        let (loop_to, discard) = (p.loop_to, p.discard_tx);
        if let Some(to) = loop_to {
            if let Some(dst) = self.ports.get_mut(usize::from(to)) {
                dst.rx.extend(frames.drain(..n));
                return n;
            }
        }
        for f in frames.drain(..n) {
            if discard {
                self.recycled.push(f);
            } else {
                self.ports[usize::from(port)].tx.push(f.data().to_vec());
            }
        }
        n
    }

    fn copy_frame(&mut self, data: &[u8]) -> Option<MemFrame> {
        if let Some(b) = self.copy_budget.as_mut() {
            if *b == 0 {
                return None;
            }
            *b -= 1;
        }
        Some(self.frame(data))
    }

    fn free_bulk(&mut self, frames: &mut Vec<MemFrame>) {
        self.recycled.append(frames);
    }
}

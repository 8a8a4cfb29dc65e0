//! `tx`: the transmit side. Frames wait in a queue per output port and leave in
//! bursts (a full queue at once, the rest at the end of a poll iteration); dropped
//! frames are freed in bulk. The features that send frames outside a stage's
//! decisions (the bridge's floods, ARP requests and released holds, ip4-fragment's
//! pieces) do it through [`Out`], a borrow of this for one call.
use super::counters::add;
use super::{DropReason, Frame, Next, PortIo, StageId, TraceDetail, Tracer, WorkerCounters};
use super::{BURST, MAX_PORTS};
use crate::dpdk::rdtsc;
use crate::port::PortMap;
use crate::wire::ethernet;

/// Packets waiting to be transmitted on one port; flushed when a burst is full and
/// at the end of every poll iteration.
const TX_CAP: usize = 2 * BURST;

/// A worker's transmit queues and the frames it is about to free.
pub struct Tx<F> {
    queues: Vec<Vec<F>>,
    /// Ports with frames queued (bit per port).
    dirty: u32,
    pub(crate) dropped: Vec<F>,
    /// ip4-fragment's pieces of the datagram being split, reused.
    pub(crate) pieces: Vec<F>,
}

impl<F> Tx<F> {
    /// `spare`: how many frames may be freed at once beyond two bursts (packets held
    /// for ARP expiring together).
    pub fn new(spare: usize) -> Tx<F> {
        Tx {
            queues: (0..MAX_PORTS).map(|_| Vec::with_capacity(TX_CAP)).collect(),
            dirty: 0,
            // Burst drops plus `spare`: never grows.
            dropped: Vec::with_capacity(2 * BURST + spare),
            pieces: Vec::with_capacity(crate::ip4::fragment::MAX_PIECES),
        }
    }
}

/// What sends frames, for one call: the I/O, the transmit queues, the port map,
/// the counters and the tracer.
pub struct Out<'a, F: Frame, P: PortIo<Frame = F>> {
    pub io: &'a mut P,
    pub tx: &'a mut Tx<F>,
    pub ports: &'a PortMap,
    pub counters: &'a WorkerCounters,
    pub tracer: &'a mut Tracer,
    pub capture: &'a mut Option<super::capture::Capture>,
}

impl<F: Frame, P: PortIo<Frame = F>> Out<'_, F, P> {
    /// Sends `f` on `port`: checked against the port's MTU (a bigger IPv4 frame is
    /// split by ip4-fragment), traced, queued. Inlined where the runner sends a
    /// burst's packets (out of line it paid a call's saves per packet).
    #[inline(always)]
    pub fn send(&mut self, port: u16, f: F, trace: u32) {
        let p = usize::from(port);
        let Some(mtu) = self
            .ports
            .port(port)
            .filter(|_| p < MAX_PORTS)
            .map(|p| p.mtu)
        else {
            self.drop(f, StageId::Tx, DropReason::TxNoPort);
            return;
        };
        // Room for the Ethernet header and one VLAN tag; the exact check is the
        // fragmenter's (rare: frames are rarely bigger than their port's MTU).
        if f.data_len() > usize::from(mtu) + ethernet::HEADER_LEN {
            crate::ip4::fragment::on_output(self, port, mtu, f, trace);
            return;
        }
        if trace != 0 {
            self.tracer.record(
                self.counters,
                trace,
                StageId::Tx,
                Next::Port(port),
                TraceDetail::Out { port },
            );
        }
        self.queue(port, f);
    }

    /// Queues a frame on a port known to exist, of a size known to fit; a full
    /// burst goes at once.
    #[inline(always)]
    pub fn queue(&mut self, port: u16, f: F) {
        let p = usize::from(port);
        self.tx.queues[p].push(f);
        self.tx.dirty |= 1 << p;
        if self.tx.queues[p].len() >= BURST {
            self.flush_port(port);
        }
    }

    /// Sends a frame the dataplane made (an ARP request), counted as replicated so
    /// the accounting identity holds; `stage` is charged with `reason` when no
    /// buffer is left.
    pub fn send_new(&mut self, port: u16, bytes: &[u8], stage: StageId, reason: DropReason) {
        add(&self.counters.replicated, 1);
        match self.io.copy_frame(bytes) {
            Some(f) => self.send(port, f, 0),
            None => self.counters.count_drop(stage, reason, 1),
        }
    }

    /// A new buffer holding a copy of `data`.
    #[inline]
    pub fn copy(&mut self, data: &[u8]) -> Option<F> {
        self.io.copy_frame(data)
    }

    /// Frees `f` (already counted).
    #[inline]
    pub fn free(&mut self, f: F) {
        self.tx.dropped.push(f);
    }

    /// Drops `f`, counted under `stage` and `reason`.
    #[inline]
    pub fn drop(&mut self, f: F, stage: StageId, reason: DropReason) {
        self.counters.count_drop(stage, reason, 1);
        self.tx.dropped.push(f);
    }

    /// Records what `stage` did with a traced packet.
    #[inline]
    pub fn trace(&mut self, trace: u32, stage: StageId, next: Next, detail: TraceDetail) {
        if trace != 0 {
            self.tracer
                .record(self.counters, trace, stage, next, detail);
        }
    }

    /// Transmits what is queued for `port`; what the device refuses is dropped
    /// (`tx-full`).
    pub fn flush_port(&mut self, port: u16) {
        let p = usize::from(port);
        self.tx.dirty &= !(1 << p);
        let q = &mut self.tx.queues[p];
        if q.is_empty() {
            return;
        }
        let total = q.len();
        if let Some(cap) = self
            .capture
            .as_mut()
            .filter(|c| c.point == super::capture::Point::Tx(port))
        {
            let t = rdtsc();
            for f in q.iter() {
                cap.take(t, port, f.data());
            }
        }
        let bytes_before: usize = q.iter().map(Frame::data_len).sum();
        let sent = self.io.tx_burst(port, q);
        // Usually everything went: no second pass over the frames.
        let bytes_left: usize = if q.is_empty() {
            0
        } else {
            q.iter().map(Frame::data_len).sum()
        };
        let pc = &self.counters.ports[p];
        add(&pc.tx_packets, sent as u64);
        add(&pc.tx_bytes, (bytes_before - bytes_left) as u64);
        let unsent = total - sent;
        if unsent > 0 {
            add(&pc.tx_dropped, unsent as u64);
            self.counters
                .count_drop(StageId::Tx, DropReason::TxFull, unsent as u64);
            // Freed at once, so `dropped` never grows beyond its reserved size.
            self.io.free_bulk(q);
        }
    }

    /// Transmits everything queued and frees what was dropped.
    pub fn flush(&mut self) {
        while self.tx.dirty != 0 {
            let p = self.tx.dirty.trailing_zeros();
            self.flush_port(u16::try_from(p).unwrap_or(0));
        }
        self.free_dropped();
    }

    /// Frees the dropped frames in bulk.
    #[inline]
    pub fn free_dropped(&mut self) {
        if !self.tx.dropped.is_empty() {
            self.io.free_bulk(&mut self.tx.dropped);
        }
    }
}

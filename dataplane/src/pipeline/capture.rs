//! Packet capture: copies of the packets at one point of the pipeline (a port's rx
//! or tx, before or after a stage), taken by the workers into a ring the control
//! thread reads (`podpathctl capture`, pcap). Off, it costs one `Option` test per
//! burst and per stage call; on, a filter test and a copy of at most the snap
//! length per packet at that point, into records allocated when the capture
//! started. Bounded: each worker stops by itself after its count.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ringbuf::traits::Producer;
use ringbuf::HeapProd;

use podpath_proto::{CaptureFilter, SNAP_MAX};

use super::StageId;

/// Where packets are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Rx(u16),
    Tx(u16),
    /// Before or after a stage; with a port, only packets that entered on it.
    Before(StageId, Option<u16>),
    After(StageId, Option<u16>),
}

/// One packet taken (fixed size: the ring is allocated once).
#[derive(Clone, Copy)]
pub struct CaptureRecord {
    pub tsc: u64,
    pub port: u16,
    pub orig_len: u32,
    pub len: u16,
    pub data: [u8; SNAP_MAX],
}

/// A worker's capture.
pub struct Capture {
    pub point: Point,
    filter: CaptureFilter,
    snaplen: usize,
    left: u32,
    ring: HeapProd<CaptureRecord>,
    /// Shared with the control thread: packets taken, and of those not kept (the
    /// ring was full: the reader is behind).
    taken: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
}

impl Capture {
    pub fn new(
        point: Point,
        filter: CaptureFilter,
        snaplen: u16,
        count: u32,
        ring: HeapProd<CaptureRecord>,
        taken: Arc<AtomicU64>,
        lost: Arc<AtomicU64>,
    ) -> Capture {
        Capture {
            point,
            filter,
            snaplen: usize::from(snaplen).clamp(64, SNAP_MAX),
            left: count,
            ring,
            taken,
            lost,
        }
    }

    /// Whether the worker has taken its count.
    pub fn done(&self) -> bool {
        self.left == 0
    }

    /// Takes `frame` (seen on `port`) if it passes the filter.
    pub fn take(&mut self, tsc: u64, port: u16, frame: &[u8]) {
        if self.left == 0 || !self.filter.matches(frame) {
            return;
        }
        let len = frame.len().min(self.snaplen);
        let mut rec = CaptureRecord {
            tsc,
            port,
            orig_len: u32::try_from(frame.len()).unwrap_or(u32::MAX),
            len: u16::try_from(len).unwrap_or(0),
            data: [0; SNAP_MAX],
        };
        rec.data[..len].copy_from_slice(&frame[..len]);
        if self.ring.try_push(rec).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        self.taken.fetch_add(1, Ordering::Relaxed);
        self.left -= 1;
    }
}

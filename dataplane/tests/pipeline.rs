//! The pipeline on the memory backend: bridging, flooding, drops by reason, tx
//! failures, ageing, trace, and the accounting identity, on crafted and random frames.
use std::sync::Arc;

use etherparse::PacketBuilder;
use podpath_dataplane::pipeline::counters::get;
use podpath_dataplane::pipeline::{
    DropReason, Pipeline, PipelineConfig, PortIo, StageId, TraceRecord, Tracer, WorkerCounters,
};
use podpath_dataplane::port::PortEntry;
use podpath_dataplane::port::PortMap;
use podpath_dataplane::port::{MemFrame, MemIo};
use podpath_dataplane::wire::MacAddr;
use proptest::prelude::*;
use ringbuf::traits::{Consumer, Split};
use ringbuf::{HeapCons, HeapRb};

const A: [u8; 6] = [0x0a, 0x58, 0, 0, 0, 0xa];
const B: [u8; 6] = [0x0a, 0x58, 0, 0, 0, 0xb];
const C: [u8; 6] = [0x0a, 0x58, 0, 0, 0, 0xc];
const BCAST: [u8; 6] = [0xff; 6];
const AGEING: u64 = 1_000_000;

struct Rig {
    io: MemIo,
    p: Pipeline<MemFrame>,
    trace: HeapCons<TraceRecord>,
    now: u64,
}

/// Ports 0, 1, 2 in bridge domain 1; port 3 in no domain.
fn rig() -> Rig {
    let entries = (0..4u16)
        .map(|id| PortEntry {
            id,
            name: format!("p{id}"),
            bd: if id < 3 { Some(1) } else { None },
            mac: MacAddr([2, 0, 0, 0, 0, u8::try_from(id).unwrap()]),
            rx_queues: 1,
            mtu: 1500,
        })
        .collect();
    let map = Arc::new(PortMap::build(entries, 1));
    let (prod, cons) = HeapRb::new(256).split();
    let cfg = PipelineConfig {
        worker: 0,
        mac_capacity: 64,
        mac_ageing_ticks: AGEING,
        tsc_hz: 1_000_000_000,
        conntrack: Default::default(),
        nat_range: (32768, 60999),
        workers: 1,
    };
    let p = Pipeline::new(
        &cfg,
        map,
        Arc::new(WorkerCounters::default()),
        Tracer::new(0, Some(prod)),
    );
    Rig {
        io: MemIo::default(),
        p,
        trace: cons,
        now: 1,
    }
}

impl Rig {
    /// Receives `frames` on `port` as one burst and flushes.
    fn rx(&mut self, port: u16, frames: &[Vec<u8>]) {
        for f in frames {
            self.io.push_rx(port, f);
        }
        let mut buf = Vec::with_capacity(32);
        while self.io.rx_burst(port, 0, &mut buf, 32) > 0 {
            self.p.set_now(self.now);
            self.p.run(&mut self.io, port, &mut buf);
        }
        self.p.flush(&mut self.io);
    }
    fn tx(&mut self, port: u16) -> Vec<Vec<u8>> {
        self.io.take_tx(port)
    }
    fn c(&self) -> &WorkerCounters {
        &self.p.counters
    }
    fn drops(&self, r: DropReason) -> u64 {
        self.c().drops_for(r)
    }
    /// rx + replicated == tx + dropped, with nothing in flight.
    fn balanced(&self) -> bool {
        let c = self.c();
        c.rx_total() + get(&c.replicated) == c.tx_total() + c.drops_total()
    }
}

fn udp(src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src, dst)
        .ipv4([10, 244, 0, 2], [10, 244, 0, 3], 64)
        .udp(4000, 5000)
        .write(&mut v, b"payload")
        .unwrap();
    v
}

#[test]
fn unknown_unicast_floods_then_learned_unicast_goes_to_one_port() {
    let mut r = rig();
    r.rx(0, &[udp(A, B)]);
    assert_eq!(r.tx(1).len(), 1);
    assert_eq!(r.tx(2).len(), 1);
    assert!(r.tx(0).is_empty(), "never back out of the input port");
    assert_eq!(get(&r.c().replicated), 1);
    // B answers from port 1: A is known, so exactly one copy to port 0.
    r.rx(1, &[udp(B, A)]);
    assert_eq!(r.tx(0), vec![udp(B, A)]);
    assert!(r.tx(2).is_empty());
    // Now both are known.
    r.rx(0, &[udp(A, B)]);
    assert_eq!(r.tx(1).len(), 1);
    assert!(r.tx(2).is_empty());
    assert_eq!(get(&r.c().mac_learned), 2);
    assert!(r.balanced());
    let s = &r.c().stages[StageId::Bridge.index()];
    assert_eq!(get(&s.packets), 3);
}

#[test]
fn a_mac_learned_mid_burst_changes_the_lookups_after_it() {
    // The bridge caches its last lookup within a burst; learning must invalidate it.
    let mut r = rig();
    r.rx(0, &[udp(A, B), udp(A, B), udp(B, C), udp(A, B)]);
    // The first two flood (B unknown; one lookup, cached), B then shows up behind
    // port 0, so the last A -> B stays on port 0: dropped, not flooded.
    assert_eq!((r.tx(1).len(), r.tx(2).len()), (3, 3));
    assert_eq!(r.drops(DropReason::BridgeSamePort), 1);
    assert_eq!(get(&r.c().mac_learned), 2);
    assert!(r.balanced());
}

#[test]
fn tx_drain_holds_a_partial_burst_until_its_time() {
    use podpath_dataplane::worker::{IdleConfig, Worker};
    use std::sync::atomic::AtomicBool;
    // 0: sent at the end of the poll; a long interval: still queued after it.
    for (drain, at_once) in [(0u64, true), (u64::MAX / 4, false)] {
        let r = rig();
        let (_ctl, ctl_rx) = crossbeam::channel::unbounded();
        let (retired, _keep) = crossbeam::channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let idle = IdleConfig::default();
        let mut w = Worker::new(
            0,
            r.io,
            r.p,
            ctl_rx,
            retired,
            stop,
            idle,
            u64::MAX / 4,
            drain,
        );
        w.io.push_rx(0, &udp(A, BCAST));
        assert_eq!(w.poll_once(), 1);
        assert_eq!(w.io.take_tx(1).len(), usize::from(at_once));
        w.pipeline.flush(&mut w.io);
        assert_eq!(
            w.io.take_tx(1).len(),
            usize::from(!at_once),
            "queued, not lost"
        );
    }
}

#[test]
fn broadcast_floods_and_macs_move() {
    let mut r = rig();
    r.rx(0, &[udp(A, BCAST)]);
    assert_eq!((r.tx(1).len(), r.tx(2).len()), (1, 1));
    // A moves to port 2.
    r.rx(2, &[udp(A, BCAST)]);
    assert_eq!(get(&r.c().mac_moved), 1);
    r.rx(1, &[udp(B, A)]);
    assert_eq!(r.tx(2).len(), 1, "A now lives behind port 2");
    assert!(r.balanced());
}

#[test]
fn same_port_and_no_domain_and_multicast_source_are_dropped_by_reason() {
    let mut r = rig();
    r.rx(0, &[udp(A, BCAST), udp(B, BCAST)]); // both behind port 0
    r.tx(1);
    r.tx(2);
    r.rx(0, &[udp(A, B)]);
    assert_eq!(r.drops(DropReason::BridgeSamePort), 1);
    r.rx(3, &[udp(C, A)]);
    assert_eq!(r.drops(DropReason::BridgeNoDomain), 1);
    r.rx(0, &[udp([0x01, 0, 0x5e, 0, 0, 1], A)]);
    assert_eq!(r.drops(DropReason::BridgeSrcMulticast), 1);
    assert!(r.balanced());
}

#[test]
fn malformed_frames_are_dropped_with_their_reason_and_never_sent() {
    let mut r = rig();
    let good = udp(A, B);
    let mut bad_csum = good.clone();
    bad_csum[24] ^= 0x55;
    let mut bad_udp = good.clone();
    bad_udp[38..40].copy_from_slice(&3u16.to_be_bytes());
    r.rx(
        0,
        &[good[..9].to_vec(), good[..20].to_vec(), bad_csum, bad_udp],
    );
    assert_eq!(r.drops(DropReason::EthTruncated), 1);
    assert_eq!(r.drops(DropReason::Ip4Truncated), 1);
    assert_eq!(r.drops(DropReason::Ip4BadChecksum), 1);
    assert_eq!(r.drops(DropReason::UdpBadLength), 1);
    assert!(r.tx(1).is_empty() && r.tx(2).is_empty());
    assert!(r.balanced());
}

#[test]
fn refused_transmissions_are_freed_and_counted() {
    let mut r = rig();
    r.io.ports[1].tx_limit = Some(0);
    r.rx(0, &[udp(A, B), udp(A, B), udp(A, B)]);
    assert_eq!(r.drops(DropReason::TxFull), 3);
    assert_eq!(get(&r.c().ports[1].tx_dropped), 3);
    assert_eq!(r.tx(2).len(), 3);
    assert!(r.balanced());
}

#[test]
fn flood_copy_without_buffers_is_counted() {
    let mut r = rig();
    r.io.copy_budget = Some(0);
    r.rx(0, &[udp(A, BCAST)]);
    assert_eq!(r.drops(DropReason::TxNoBuffer), 1);
    // The original still goes out on the last port.
    assert_eq!(r.tx(1).len() + r.tx(2).len(), 1);
}

#[test]
fn aged_entries_flood_again() {
    let mut r = rig();
    r.rx(1, &[udp(B, BCAST)]);
    r.tx(0);
    r.tx(2);
    r.rx(0, &[udp(A, B)]);
    assert_eq!((r.tx(1).len(), r.tx(2).len()), (1, 0));
    r.now += AGEING + 1;
    r.rx(0, &[udp(A, B)]);
    assert_eq!(
        (r.tx(1).len(), r.tx(2).len()),
        (1, 1),
        "B aged out: flooded"
    );
    assert_eq!(r.p.features.bridge.macs.age(r.now + AGEING + 1), 2);
}

#[test]
fn detached_port_is_forgotten() {
    let mut r = rig();
    r.rx(1, &[udp(B, BCAST)]);
    r.tx(0);
    r.tx(2);
    let entries = [0u16, 2]
        .iter()
        .map(|&id| PortEntry {
            id,
            name: format!("p{id}"),
            bd: Some(1),
            mac: MacAddr([2, 0, 0, 0, 0, 0]),
            rx_queues: 1,
            mtu: 1500,
        })
        .collect();
    let mut io = MemIo::default();
    r.p.set_ports(&mut io, Arc::new(PortMap::build(entries, 1)));
    r.rx(0, &[udp(A, B)]);
    assert_eq!(
        r.tx(2).len(),
        1,
        "B's entry went with port 1: flooded to what is left"
    );
    assert!(r.tx(1).is_empty());
}

#[test]
fn trace_records_only_the_armed_packets() {
    let mut r = rig();
    r.p.tracer.arm(2);
    r.rx(0, &[udp(A, BCAST), udp(A, BCAST), udp(A, BCAST)]);
    let mut recs = Vec::new();
    while let Some(x) = r.trace.try_pop() {
        recs.push(x);
    }
    let packets: std::collections::BTreeSet<u32> = recs.iter().map(|x| x.packet).collect();
    assert_eq!(packets.len(), 2);
    // Each traced packet: rx, eth-input, bridge, flood.
    assert_eq!(recs.len(), 8, "{recs:?}");
    assert!(recs.iter().any(|x| x.stage == StageId::Bridge));
}

fn mutate(mut f: Vec<u8>, edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    for &(i, v) in edits {
        if !f.is_empty() {
            let n = f.len();
            f[i % n] = v;
        }
    }
    f.truncate(cut.max(1));
    f
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_frames_never_panic_and_balance(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..40)) {
        let mut r = rig();
        r.rx(0, &frames);
        prop_assert!(r.balanced());
    }

    #[test]
    fn mutated_frames_never_panic_and_balance(
        edits in proptest::collection::vec((0usize..80, any::<u8>()), 0..6),
        cut in 0usize..120,
        tcp in any::<bool>(),
    ) {
        let base = if tcp {
            let mut v = Vec::new();
            PacketBuilder::ethernet2(A, B).ipv4([10, 244, 0, 2], [1, 1, 1, 1], 64).tcp(1, 2, 3, 4).write(&mut v, b"x").unwrap();
            v
        } else {
            udp(A, B)
        };
        let mut r = rig();
        r.rx(0, &[mutate(base, &edits, cut)]);
        prop_assert!(r.balanced());
    }
}

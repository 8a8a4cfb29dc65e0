//! Benchmark fixtures: a pipeline on the memory backend with pre-built frames, so a
//! path's cost is measured without kernel I/O.
use std::sync::Arc;

use etherparse::PacketBuilder;
use podpath_dataplane::pipeline::{
    Pipeline, PipelineConfig, PortIo, Tracer, WorkerCounters, BURST,
};
use podpath_dataplane::port::{MemFrame, MemIo};
use podpath_dataplane::tables::{PortEntry, PortMap};
use podpath_dataplane::wire::MacAddr;

/// A UDP frame between two pods, `flow` varying the source port.
pub fn pod_frame(src: [u8; 6], dst: [u8; 6], flow: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src, dst)
        .ipv4([10, 244, 0, 2], [10, 244, 0, 3], 64)
        .udp(10_000 + flow, 5000)
        .write(&mut v, &[0u8; 18])
        .expect("build frame");
    v
}

/// The L2 bridge path: two ports in one domain, both MACs learned, `frames` frames
/// of `flows` flows queued on port 0 and recycled after transmission.
pub struct BridgeRig {
    pub io: MemIo,
    pub p: Pipeline<MemFrame>,
    rx: Vec<MemFrame>,
}

impl BridgeRig {
    pub fn new(frames: usize, flows: u16) -> BridgeRig {
        let entries = (0..2u16)
            .map(|id| PortEntry {
                id,
                name: format!("p{id}"),
                bd: Some(1),
                mac: MacAddr([2, 0, 0, 0, 0, 0]),
                rx_queues: 1,
                mtu: 1500,
            })
            .collect();
        let cfg = PipelineConfig {
            worker: 0,
            mac_capacity: 1024,
            mac_ageing_ticks: u64::MAX,
            tsc_hz: 1_000_000_000,
        };
        let p = Pipeline::new(
            &cfg,
            Arc::new(PortMap::build(entries, 1)),
            Arc::new(WorkerCounters::default()),
            Tracer::new(0, None),
        );
        let mut io = MemIo::default();
        io.ports[0].discard_tx = true;
        let a = [0x0a, 0x58, 0, 0, 0, 2];
        let b = [0x0a, 0x58, 0, 0, 0, 3];
        let mut r = BridgeRig {
            io,
            p,
            rx: Vec::with_capacity(BURST),
        };
        // Teach the bridge both MACs, then loop port 1's output back into port 0.
        r.io.push_rx(1, &pod_frame(b, a, 0));
        r.step_port(1);
        r.io.ports[1].loop_to = Some(0);
        for i in 0..frames {
            let f = pod_frame(
                a,
                b,
                u16::try_from(i % usize::from(flows.max(1))).unwrap_or(0),
            );
            r.io.push_rx(0, &f);
        }
        r
    }

    fn step_port(&mut self, port: u16) -> usize {
        let n = self.io.rx_burst(port, 0, &mut self.rx, BURST);
        self.p.run(&mut self.io, port, &mut self.rx);
        self.p.flush(&mut self.io);
        n
    }

    /// One burst through the pipeline; port 1's output is queued again as port 0's
    /// input, so the rig runs forever on the same buffers. Returns the packets
    /// processed.
    pub fn step(&mut self) -> usize {
        self.step_port(0)
    }
}

//! What a stage is given besides its packets ([`Ctx`]), and the helpers several
//! stages share. A stage lives in its feature's folder (`bridge/`, `ip4/`,
//! `overlay/`, `nat/`, `services/`, `eth/`); it reads the packets queued for it and
//! writes one [`Next`](crate::pipeline::Next) per packet, one its registry entry
//! declares (`pipeline/registry.rs`); it never frees or sends packets itself.
use crate::ip4::l3::NodeL3;
use crate::ip4::L3;
use crate::pipeline::{DropReason, Frame, Next, TraceDetail, WorkerCounters};
use crate::port::PortMap;
use crate::services::table::ServiceTable;

/// What every stage may look at besides the packets.
pub struct Ctx<'a> {
    pub ports: &'a PortMap,
    pub l3: &'a L3,
    pub services: &'a ServiceTable,
    /// TSC at the start of this poll iteration.
    pub now: u64,
    /// The same instant in milliseconds (affinity timeouts).
    pub now_ms: u64,
    /// And in seconds: the connection table's clock.
    pub seconds: u32,
    pub counters: &'a WorkerCounters,
}

/// The packets queued for a stage (`pkts`, indices into the burst) and the burst's
/// per-packet arrays: the frames (each with its metadata, `Frame::meta`), the
/// decisions the stage writes, and trace details.
pub struct Vector<'a, F> {
    pub pkts: &'a [u8],
    pub frames: &'a mut [F],
    pub next: &'a mut [Next],
    pub detail: &'a mut [TraceDetail],
}

impl<'a, F> Vector<'a, F> {
    /// The parts, for a stage body that indexes them.
    #[inline(always)]
    pub fn parts(&mut self) -> (&'a [u8], &mut [F], &mut [Next], &mut [TraceDetail]) {
        (
            self.pkts,
            &mut *self.frames,
            &mut *self.next,
            &mut *self.detail,
        )
    }
}

/// Every feature's per-worker state, each owned by its feature's folder. A stage
/// reaches its own feature's, and the one its feature builds on (`lb` translates
/// with `nat`'s connection table; `eth-input` asks it for the prefilter).
pub struct Features {
    pub bridge: crate::bridge::Bridge,
    pub ip4: crate::ip4::Ip4,
    pub nat: crate::nat::Nat,
    pub services: crate::services::Services,
}

impl Features {
    /// Every feature's state for one worker, sized by its configuration.
    pub fn new(cfg: &super::PipelineConfig) -> Features {
        Features {
            bridge: crate::bridge::Bridge::new(cfg.mac_capacity, cfg.mac_ageing_ticks),
            ip4: crate::ip4::Ip4 {
                // Neighbours live 5 minutes; a missing one is asked for at most
                // once a second.
                neighbors: crate::ip4::NeighborTable::new(
                    4096,
                    cfg.tsc_hz.saturating_mul(300),
                    cfg.tsc_hz,
                ),
                learned: Vec::with_capacity(super::BURST + 1),
                icmp_limit: crate::ip4::icmp_error::RateLimit::new(100, 50, cfg.tsc_hz),
                // ARP requests: 100 a second, bursts of 20, per worker.
                arp_limit: crate::ip4::icmp_error::RateLimit::new(100, 20, cfg.tsc_hz),
            },
            nat: crate::nat::Nat {
                conntrack: crate::nat::conntrack::Conntrack::with_reserve(
                    cfg.conntrack.capacity,
                    cfg.conntrack.reserved(),
                    cfg.conntrack.timeouts,
                    0,
                ),
                ports: crate::nat::snat::NatPorts::for_worker(
                    cfg.nat_range.0,
                    cfg.nat_range.1,
                    cfg.worker,
                    cfg.workers,
                ),
                owners: crate::nat::snat::Owners {
                    lo: cfg.nat_range.0,
                    hi: cfg.nat_range.1,
                    workers: cfg.workers.max(1),
                    me: cfg.worker,
                },
                frags: crate::nat::frag::Fragments::new(4096, super::BURST),
            },
            services: crate::services::Services {
                affinity: crate::services::lb::Affinity::new(65_536),
                frag_scratch: crate::services::lb::FragScratch::default(),
            },
        }
    }
}

/// A neighbour one worker learned, for the others.
#[derive(Debug, Clone, Copy)]
pub struct NeighborUpdate {
    pub ip: u32,
    pub mac: crate::wire::MacAddr,
    pub port: u16,
}

/// What one worker tells the others between bursts: a neighbour it learned, or the
/// translation of a datagram whose first fragment it translated.
#[derive(Debug, Clone, Copy)]
pub enum PeerUpdate {
    Neighbor(NeighborUpdate),
    Frag(crate::nat::frag::FragUpdate),
}

/// What the runner asks of the features between bursts; each feature does its part
/// in its own folder.
impl Features {
    /// Bounded upkeep between bursts: connections expired, and a Service change's
    /// sweep advanced (`sweep`: where it has got to, None when none runs). Then the
    /// tables' counters are published.
    pub fn upkeep(
        &mut self,
        seconds: u32,
        services: &ServiceTable,
        sweep: &mut Option<usize>,
        c: &WorkerCounters,
    ) {
        self.nat.expire(seconds, EXPIRE_BUDGET);
        if let Some(from) = *sweep {
            *sweep = crate::services::sweep_departed(&mut self.nat.conntrack, services, from);
        }
        self.nat.publish(c);
        self.ip4.publish(c);
        self.services.publish(c);
    }

    /// Ages what was learned (MACs, neighbours) at TSC `now`; returns the MACs aged
    /// out.
    pub fn age(&mut self, now: u64) -> usize {
        self.ip4.neighbors.age(now);
        self.bridge.macs.age(now)
    }

    /// A new port map: forget what was learned behind ports that are gone.
    pub fn retain_ports(&mut self, keep: impl Fn(u16) -> bool) {
        self.bridge.macs.retain_ports(&keep);
        self.ip4.neighbors.retain_ports(&keep);
    }

    /// New settings from the snapshot.
    pub fn set(&mut self, s: &crate::snapshot::Settings) {
        self.nat.set(s);
    }

    /// What this burst taught us that the other workers need: the neighbours ARP
    /// learned, the fragment translations made.
    pub fn for_peers(&mut self, now: u64, mut send: impl FnMut(PeerUpdate)) {
        for &ip in &self.ip4.learned {
            if let Some(n) = self.ip4.neighbors.lookup(ip, now) {
                send(PeerUpdate::Neighbor(NeighborUpdate {
                    ip,
                    mac: n.mac,
                    port: n.port,
                }));
            }
        }
        for f in self.nat.frags.news.drain(..) {
            send(PeerUpdate::Frag(f));
        }
    }

    /// Whether this burst has anything for the other workers.
    pub fn has_news(&self) -> bool {
        !self.ip4.learned.is_empty() || !self.nat.frags.news.is_empty()
    }

    /// Takes what another worker learned; true when it was a neighbour (packets
    /// held for it may go now).
    pub fn from_peer(&mut self, u: PeerUpdate, now: u64, now_ms: u64) -> bool {
        match u {
            PeerUpdate::Neighbor(u) => {
                self.ip4.neighbors.learn(u.ip, u.mac, u.port, now);
                true
            }
            PeerUpdate::Frag(f) => {
                self.nat.frags.table.remember(f.key, f.nat, now_ms);
                false
            }
        }
    }
}

/// Connections the table may expire per poll iteration.
const EXPIRE_BUDGET: usize = 64;

/// A stage's entry point, named in its registry line (`pipeline/registry.rs`): the
/// runner calls it with the packets queued for the stage and knows nothing else of
/// it.
pub type Node<F> = fn(&Ctx, &mut Features, &mut Vector<F>);

/// The entry of `ip4-fragment` and `tx`, which the runner does itself (output and
/// `Next::Fragment`): never called with packets.
pub fn by_runner<F: Frame>(_cx: &Ctx, _f: &mut Features, _v: &mut Vector<F>) {}

/// This node's L3 identity; without one, every packet of the burst is dropped as
/// `ip4-no-node` (the stages that need it share this prologue).
pub fn node_or_drop<'a>(cx: &'a Ctx, pkts: &[u8], next: &mut [Next]) -> Option<&'a NodeL3> {
    let node = cx.l3.node.as_ref();
    if node.is_none() {
        for &i in pkts {
            next[usize::from(i)] = Next::Drop(DropReason::Ip4NoNode);
        }
    }
    node
}

/// The stages' per-burst cache of their last table read (VPP's way): a burst mostly
/// repeats one key (one pod, one next hop), so the table is read once per run of
/// equal keys. `last` lives for one call of a stage; set it to None when the table
/// changes under it.
#[inline(always)]
pub fn last_or<K: PartialEq + Copy, V: Copy>(
    last: &mut Option<(K, V)>,
    key: K,
    read: impl FnOnce() -> V,
) -> V {
    match *last {
        Some((k, v)) if k == key => v,
        _ => {
            let v = read();
            *last = Some((key, v));
            v
        }
    }
}

/// Flow hash of an IPv4 5-tuple (for the VXLAN source port): cheap, and the same for
/// every packet of a flow.
#[inline(always)]
pub fn flow_hash(src: u32, dst: u32, proto: u8, ports: u32) -> u32 {
    let mut h = u64::from(src) << 32 | u64::from(dst);
    h ^= u64::from(ports) << 8 | u64::from(proto);
    h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let b = h.to_be_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) ^ u32::from_be_bytes([b[4], b[5], b[6], b[7]])
}

#[cfg(test)]
impl Features {
    /// One worker's state, small, for the stages' contract tests.
    pub fn for_tests() -> Features {
        Features::new(&super::PipelineConfig {
            worker: 0,
            mac_capacity: 16,
            mac_ageing_ticks: 1_000_000,
            tsc_hz: 1_000_000_000,
            conntrack: Default::default(),
            nat_range: (32768, 60999),
            workers: 1,
        })
    }
}

/// Runs one stage alone on frames, grout's way of testing a node: the stage's
/// decisions, and the trace details it wrote, for a stage's contract tests. Each
/// decision is also checked against the stage's declaration.
#[cfg(test)]
pub fn run_alone(
    stage: super::StageId,
    cx: &Ctx,
    feat: &mut Features,
    frames: Vec<(Vec<u8>, super::Meta)>,
) -> Vec<Next> {
    use crate::port::MemFrame;
    let slots = frames
        .into_iter()
        .map(|(d, m)| {
            let mut f = MemFrame::from_bytes(&d);
            *f.meta_mut() = m;
            f
        })
        .collect();
    run_alone_frames(stage, cx, feat, slots)
}

/// `run_alone` on frames made by the caller (with their metadata set): a chained
/// buffer, one without headroom or tailroom.
#[cfg(test)]
pub fn run_alone_frames(
    stage: super::StageId,
    cx: &Ctx,
    feat: &mut Features,
    mut slots: Vec<crate::port::MemFrame>,
) -> Vec<Next> {
    use crate::port::MemFrame;
    let n = slots.len();
    assert!(n <= super::BURST);
    let pkts: Vec<u8> = (0..u8::try_from(n).unwrap_or(0)).collect();
    let mut next = vec![Next::Drop(DropReason::GraphLoop); n];
    let mut detail = vec![TraceDetail::None; n];
    let mut v = Vector {
        pkts: &pkts,
        frames: &mut slots,
        next: &mut next,
        detail: &mut detail,
    };
    (stage.node::<MemFrame>())(cx, feat, &mut v);
    for d in &next {
        assert!(
            stage.allows(*d),
            "{} decided {d:?}, undeclared",
            stage.name()
        );
    }
    next
}

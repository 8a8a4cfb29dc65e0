//! Packet trace: the dataplane's own packet walk.
//!
//! `podpathctl trace start N` arms every worker for its next N received packets. A
//! traced packet gets an id at input; each stage that handles it appends a small
//! `Copy` record (what it saw, what it decided, what it rewrote) to the worker's
//! lock-free trace ring. Formatting happens on the control thread, off the fast path,
//! by the formatter of the feature that recorded it (`describe` in each feature's
//! folder); untraced packets cost one branch per stage.
use ringbuf::traits::Producer;
use ringbuf::HeapProd;

use super::{counters, IcmpKind, Next, StageId, WorkerCounters};
use crate::ip4::NextHop;
use crate::wire::{Ipv4Addr, MacAddr};

/// What a stage records about a traced packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceDetail {
    /// Entered on `port`, `len` bytes.
    Rx {
        port: u16,
        len: u16,
    },
    /// Parsed Ethernet and, for IPv4, the 5-tuple (ports 0 when none).
    Parsed {
        src: MacAddr,
        dst: MacAddr,
        ethertype: u16,
        vlan: u16,
        ip: Option<(Ipv4Addr, Ipv4Addr, u8, u16, u16)>,
    },
    /// Bridge: learned (or refreshed) `src` on the input port; looked `dst` up.
    Bridge {
        bd: u16,
        learned: bool,
        dst: MacAddr,
        hit: Option<u16>,
    },
    /// ip4-lookup: destination, TTL seen, the route's next hop (None: no route).
    Route {
        dst: Ipv4Addr,
        ttl: u8,
        via: Option<NextHop>,
    },
    /// vxlan-encap: outer addresses, UDP source port, VNI.
    Encap {
        to: Ipv4Addr,
        sport: u16,
        vni: u32,
    },
    /// vxlan-decap: the VTEP it came from, its VNI.
    Decap {
        from: Ipv4Addr,
        vni: u32,
    },
    /// ip4-rewrite (or encap): the next hop's MAC and port; unresolved when None.
    Rewrite {
        nh: Ipv4Addr,
        mac: Option<MacAddr>,
        port: u16,
    },
    /// arp: the message, and whether the dataplane answered it.
    Arp {
        request: bool,
        sender: Ipv4Addr,
        target: Ipv4Addr,
        answered: bool,
    },
    /// icmp-error / ip4-local: what was sent back, to whom.
    Icmp {
        kind: IcmpKind,
        to: Ipv4Addr,
    },
    /// snat / snat-reply: the address and port written (source for egress,
    /// destination for replies).
    Nat {
        src: bool,
        to: Ipv4Addr,
        port: u16,
    },
    /// Output: queued on `port`.
    Out {
        port: u16,
    },
    /// ip4-fragment: split into `pieces` fragments of at most `mtu` bytes of IPv4.
    Fragment {
        pieces: u16,
        mtu: u16,
    },
    /// Flooded to `ports` ports (`ports - 1` copies and the original).
    Flood {
        ports: u16,
    },
    None,
}

/// What a formatter needs to name things (the control thread's port map and L3 view).
pub trait Names {
    fn port(&self, id: u16) -> String;
    fn remote(&self, index: u16) -> String;
}

impl TraceDetail {
    /// The record in words, by the feature that made it.
    pub fn describe(&self, n: &dyn Names) -> String {
        match *self {
            TraceDetail::Rx { port, len } => format!("rx on {} ({len} bytes)", n.port(port)),
            TraceDetail::Parsed {
                src,
                dst,
                ethertype,
                vlan,
                ip,
            } => crate::eth::input::describe(src, dst, ethertype, vlan, ip),
            TraceDetail::Bridge {
                bd,
                learned,
                dst,
                hit,
            } => crate::bridge::describe(n, bd, learned, dst, hit),
            TraceDetail::Route { dst, ttl, via } => crate::ip4::lookup::describe(n, dst, ttl, via),
            TraceDetail::Encap { to, sport, vni } => {
                crate::overlay::vxlan_encap::describe(to, sport, vni)
            }
            TraceDetail::Decap { from, vni } => crate::overlay::vxlan_decap::describe(from, vni),
            TraceDetail::Rewrite { nh, mac, port } => {
                crate::ip4::rewrite::describe(n, nh, mac, port)
            }
            TraceDetail::Arp {
                request,
                sender,
                target,
                answered,
            } => crate::ip4::arp::describe(request, sender, target, answered),
            TraceDetail::Icmp { kind, to } => crate::ip4::icmp_error::describe(kind, to),
            TraceDetail::Nat { src, to, port } => crate::nat::snat::describe(src, to, port),
            // The runner's own: output, flooding, fragmentation.
            TraceDetail::Out { port } => format!("queued on {}", n.port(port)),
            TraceDetail::Flood { ports } => format!("flooded to {ports} port(s)"),
            TraceDetail::Fragment { pieces, mtu } => {
                format!("split into {pieces} fragments of at most {mtu} bytes")
            }
            TraceDetail::None => String::new(),
        }
    }
}

/// A decision in words.
pub fn describe_next(next: Next, n: &dyn Names) -> String {
    match next {
        Next::Stage(s) => format!("-> {}", s.name()),
        Next::Port(p) => format!("-> port {}", n.port(p)),
        Next::Flood => "-> flood".into(),
        Next::Fragment => "-> ip4-fragment (each piece encapsulated)".into(),
        Next::Drop(r) => format!("drop {}", r.name()),
        Next::Resolve => "-> hold for ARP".into(),
        Next::Handoff(w) => format!("-> worker {w} (owns the connection)"),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct TraceRecord {
    pub worker: u16,
    /// Per-worker packet number, so records of one packet group together.
    pub packet: u32,
    pub tsc: u64,
    pub stage: StageId,
    pub next: Next,
    pub detail: TraceDetail,
}

/// The worker's side of tracing.
pub struct Tracer {
    worker: u16,
    budget: u32,
    next_id: u32,
    ring: Option<HeapProd<TraceRecord>>,
}

impl Tracer {
    pub fn new(worker: u16, ring: Option<HeapProd<TraceRecord>>) -> Tracer {
        Tracer {
            worker,
            budget: 0,
            next_id: 0,
            ring,
        }
    }

    /// Trace the next `n` received packets.
    pub fn arm(&mut self, n: u32) {
        self.budget = n;
    }

    pub fn armed(&self) -> bool {
        self.budget > 0
    }

    /// A trace id for a newly received packet, or 0 when tracing is off.
    #[inline(always)]
    pub fn take(&mut self) -> u32 {
        if self.budget == 0 {
            return 0;
        }
        self.budget -= 1;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    #[cold]
    pub fn record(
        &mut self,
        c: &WorkerCounters,
        packet: u32,
        stage: StageId,
        next: Next,
        detail: TraceDetail,
    ) {
        let rec = TraceRecord {
            worker: self.worker,
            packet,
            tsc: crate::dpdk::rdtsc(),
            stage,
            next,
            detail,
        };
        let pushed = self.ring.as_mut().is_some_and(|r| r.try_push(rec).is_ok());
        if !pushed {
            counters::add(&c.trace_lost, 1);
        }
    }
}

#[cfg(test)]
mod describe_tests {
    use super::*;

    struct Fixed;
    impl Names for Fixed {
        fn port(&self, id: u16) -> String {
            format!("pod-{id}")
        }
        fn remote(&self, index: u16) -> String {
            format!("node{index}")
        }
    }

    #[test]
    fn each_feature_words_its_own_record() {
        let a = Ipv4Addr::from_u32(0x0af4_0102);
        let cases = [
            (
                TraceDetail::Route {
                    dst: a,
                    ttl: 64,
                    via: Some(NextHop::Remote(2)),
                },
                "10.244.1.2 ttl 64: remote node node2",
            ),
            (
                TraceDetail::Bridge {
                    bd: 1,
                    learned: true,
                    dst: MacAddr([2, 0, 0, 0, 0, 1]),
                    hit: Some(3),
                },
                "bridge 1: learned src, dst 02:00:00:00:00:01 behind pod-3",
            ),
            (
                TraceDetail::Nat {
                    src: true,
                    to: a,
                    port: 40000,
                },
                "source now 10.244.1.2:40000 (masquerade)",
            ),
            (
                TraceDetail::Rewrite {
                    nh: a,
                    mac: None,
                    port: 0,
                },
                "next hop 10.244.1.2 unresolved: held, ARP asked",
            ),
            (
                TraceDetail::Icmp {
                    kind: IcmpKind::FragNeeded(1400),
                    to: a,
                },
                "fragmentation needed (mtu 1400) to 10.244.1.2",
            ),
        ];
        for (d, want) in cases {
            assert_eq!(d.describe(&Fixed), want);
        }
        assert_eq!(
            describe_next(Next::Handoff(1), &Fixed),
            "-> worker 1 (owns the connection)"
        );
        assert_eq!(describe_next(Next::Port(4), &Fixed), "-> port pod-4");
    }
}

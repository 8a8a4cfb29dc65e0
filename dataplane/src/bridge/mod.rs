//! `bridge`: the L2 bridge domain that replaces the node's `cni0`. Learns source MACs
//! per (domain, port), forwards known unicast to its port, floods broadcast, multicast
//! and unknown unicast to the domain's other ports, and filters frames whose
//! destination lives behind the port they came from.
#[cfg(feature = "dpdk")]
mod control;
pub mod mac;

use crate::bridge::mac::Learn;
use crate::bridge::mac::MacTable;
use crate::pipeline::counters::add;
use crate::pipeline::stage::{Ctx, Features, Vector};
use crate::pipeline::{DropReason, Frame, Next, TraceDetail};
use crate::wire::MacAddr;

pub struct Bridge {
    pub macs: MacTable,
}

impl Bridge {
    pub fn new(capacity: usize, ageing_ticks: u64) -> Bridge {
        Bridge {
            macs: MacTable::new(capacity, ageing_ticks),
        }
    }
}

/// The `bridge` stage.
pub fn process<F: Frame>(cx: &Ctx, feat: &mut Features, v: &mut Vector<F>) {
    let (pkts, frames, next, detail) = v.parts();
    let macs = &mut feat.bridge.macs;
    let (mut learned, mut moved, mut full) = (0, 0, 0);
    // A burst comes from one port and mostly from one or two MACs to one or two
    // MACs: remember the last source learned and the last destination looked up, so
    // most packets skip both hash operations (VPP's l2-learn keeps such a cache).
    let mut last_src: Option<(u16, MacAddr, u16, Learn)> = None;
    let mut last_dst: Option<((u16, MacAddr), Option<u16>)> = None;
    for &i in pkts {
        let i = usize::from(i);
        let (d, m) = frames[i].data_meta_mut();
        let d = &*d;
        let Some(bd) = cx.ports.port(m.in_port).and_then(|p| p.bd) else {
            next[i] = Next::Drop(DropReason::BridgeNoDomain);
            continue;
        };
        m.bd = bd;
        // eth-input guaranteed at least an Ethernet header.
        let dst = MacAddr::from_bytes(&d[0..6]);
        let src = MacAddr::from_bytes(&d[6..12]);
        if src.is_multicast() {
            next[i] = Next::Drop(DropReason::BridgeSrcMulticast);
            continue;
        }
        let l = match last_src {
            // Learned or refreshed by an earlier packet, at the same `now`.
            Some((b, mac, p, l)) if b == bd && mac == src && p == m.in_port => match l {
                Learn::Full | Learn::Static => l,
                _ => Learn::Refreshed,
            },
            _ => {
                let l = macs.learn(bd, src, m.in_port, cx.now);
                last_src = Some((bd, src, m.in_port, l));
                l
            }
        };
        match l {
            Learn::Learned => learned += 1,
            Learn::Moved => moved += 1,
            Learn::Full => full += 1,
            Learn::Refreshed | Learn::Static => {}
        }
        if matches!(l, Learn::Learned | Learn::Moved) {
            last_dst = None; // the table changed under the cached lookup
        }
        let hit = if dst.is_multicast() {
            None
        } else {
            crate::pipeline::stage::last_or(&mut last_dst, (bd, dst), || {
                macs.lookup(bd, dst, cx.now)
            })
        };
        next[i] = match hit {
            Some(p) if p == m.in_port => Next::Drop(DropReason::BridgeSamePort),
            Some(p) => Next::Port(p),
            None => {
                let others = cx
                    .ports
                    .bridge(bd)
                    .map_or(0, |b| b.members.len().saturating_sub(1));
                if others == 0 {
                    Next::Drop(DropReason::BridgeNoFloodPort)
                } else {
                    Next::Flood
                }
            }
        };
        if m.trace != 0 {
            detail[i] = TraceDetail::Bridge {
                bd,
                learned: matches!(l, Learn::Learned | Learn::Moved),
                dst,
                hit,
            };
        }
    }
    add(&cx.counters.mac_learned, learned);
    add(&cx.counters.mac_moved, moved);
    add(&cx.counters.mac_table_full, full);
}

/// A flood (`Next::Flood`): a copy of the frame to every other port of its bridge
/// domain, the original to the last one. Every copy attempted counts as
/// replicated, so a copy that finds no buffer (`tx-no-buffer`) keeps rx +
/// replicated = tx + dropped.
pub fn flood<F: Frame, P: crate::pipeline::PortIo<Frame = F>>(
    out: &mut crate::pipeline::tx::Out<'_, F, P>,
    f: F,
) {
    use crate::pipeline::{StageId, MAX_PORTS};
    let m = *f.meta();
    let mut targets = [0u16; MAX_PORTS];
    let mut n = 0;
    if let Some(bd) = out.ports.bridge(m.bd) {
        for &p in bd
            .members
            .iter()
            .filter(|&&p| p != m.in_port)
            .take(MAX_PORTS)
        {
            targets[n] = p;
            n += 1;
        }
    }
    if n == 0 {
        // The bridge checked for other ports; a map change in between can still
        // leave none.
        out.drop(f, StageId::Tx, DropReason::BridgeNoFloodPort);
        return;
    }
    let copies = n - 1;
    for &p in &targets[..copies] {
        match out.copy(f.data()) {
            Some(copy) => out.send(p, copy, 0),
            None => out
                .counters
                .count_drop(StageId::Tx, DropReason::TxNoBuffer, 1),
        }
    }
    add(&out.counters.replicated, copies as u64);
    let ports = u16::try_from(n).unwrap_or(u16::MAX);
    out.trace(
        m.trace,
        StageId::Tx,
        Next::Flood,
        TraceDetail::Flood { ports },
    );
    out.send(targets[copies], f, 0);
}

/// The bridge's trace record in words.
pub fn describe(
    n: &dyn crate::pipeline::trace::Names,
    bd: u16,
    learned: bool,
    dst: MacAddr,
    hit: Option<u16>,
) -> String {
    format!(
        "bridge {bd}: {} src, dst {dst} {}",
        if learned { "learned" } else { "known" },
        match hit {
            Some(p) => format!("behind {}", n.port(p)),
            None if dst.is_multicast() => "group address".into(),
            None => "unknown".into(),
        }
    )
}

/// The bridge's contract: its decisions for each kind of frame, as grout tests a
/// node's edges.
#[cfg(test)]
mod tests {
    use crate::ip4::L3;
    use crate::pipeline::stage::{run_alone, Features};
    use crate::pipeline::{DropReason, Meta, Next, StageId, WorkerCounters};
    use crate::port::{PortEntry, PortMap};
    use crate::services::ServiceTable;

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f
    }

    #[test]
    fn forwards_floods_filters_and_drops_by_reason() {
        // Ports 0-2 in bridge domain 1, port 3 in none; port 4 alone in domain 2.
        let entries = (0..5u16)
            .map(|id| PortEntry {
                id,
                name: format!("p{id}"),
                bd: match id {
                    0..=2 => Some(1),
                    4 => Some(2),
                    _ => None,
                },
                mac: crate::wire::MacAddr([2, 0, 0, 0, 0, u8::try_from(id).unwrap()]),
                rx_queues: 1,
                mtu: 1500,
            })
            .collect();
        let ports = PortMap::build(entries, 1);
        let (l3, services, counters) = (
            L3::empty(),
            ServiceTable::default(),
            WorkerCounters::default(),
        );
        let cx = crate::pipeline::fixture::ctx(&l3, &ports, &services, &counters);
        let mut feat = Features::for_tests();
        let (a, b, c) = (
            [0x0a, 0x58, 0, 0, 0, 0xa],
            [0x0a, 0x58, 0, 0, 0, 0xb],
            [0x0a, 0x58, 0, 0, 0, 0xc],
        );
        let on = |port: u16| Meta {
            in_port: port,
            ..Meta::default()
        };
        // b is learned behind port 1 first (its frame to a, unknown yet, floods).
        let first = run_alone(StageId::Bridge, &cx, &mut feat, vec![(frame(a, b), on(1))]);
        assert_eq!(first, [Next::Flood]);
        let got = run_alone(
            StageId::Bridge,
            &cx,
            &mut feat,
            vec![
                (frame(b, a), on(0)),                        // known unicast: to its port
                (frame(c, a), on(0)),                        // unknown: flood
                (frame([0xff; 6], a), on(0)),                // broadcast: flood
                (frame(b, c), on(1)),                        // b lives behind the input port
                (frame(b, [0x01, 0, 0x5e, 0, 0, 1]), on(0)), // group source
                (frame(b, a), on(3)),                        // port in no domain
                (frame(c, a), on(4)), // alone in its domain: nowhere to flood
            ],
        );
        assert_eq!(
            got,
            [
                Next::Port(1),
                Next::Flood,
                Next::Flood,
                Next::Drop(DropReason::BridgeSamePort),
                Next::Drop(DropReason::BridgeSrcMulticast),
                Next::Drop(DropReason::BridgeNoDomain),
                Next::Drop(DropReason::BridgeNoFloodPort),
            ]
        );
        // Every next stage it may take is one of the above: tx only.
        assert_eq!(StageId::Bridge.next_stages(), [StageId::Tx]);
    }
}

//! `ip4-lookup`: routes IPv4. Longest-prefix match picks the next hop; packets for the
//! dataplane itself go to `ip4-local` (no TTL check); others need TTL > 1 (else an ICMP
//! time-exceeded is asked of `icmp-error`), get their TTL decremented (checksum updated
//! incrementally) and a normalised, untagged Ethernet header, then go to `vxlan-encap`
//! (remote pods) or `ip4-rewrite` (local pods, the node's kernel, the underlay).
use crate::ip4::lpm::mask;
use crate::ip4::NextHop;
use crate::pipeline::stage::Ctx;
use crate::pipeline::stage::{Features, Vector};
use crate::pipeline::{DropReason, Frame, IcmpKind, Next, StageId, TraceDetail, OUT_BRIDGE};
use crate::port::Role;
use crate::wire::{ethernet, ipv4, Ipv4Addr};

pub fn process<F: Frame>(cx: &Ctx, _feat: &mut Features, v: &mut Vector<F>) {
    let (pkts, frames, meta, next, detail) = v.parts();
    let Some(node) = crate::pipeline::stage::node_or_drop(cx, pkts, next) else {
        return;
    };
    // Whether the last destination to the underlay was a node address (a hash lookup;
    // a burst mostly goes to one or a few destinations).
    let mut last_node_addr: Option<(u32, bool)> = None;
    for &i in pkts {
        let i = usize::from(i);
        let Some(f) = frames[i].as_mut() else {
            continue;
        };
        let m = &mut meta[i];
        let l3 = usize::from(m.l3);
        let (src, dst, ttl) = {
            let ip = ipv4::Packet::new_unchecked(&f.data()[l3..]);
            (ip.src_addr().to_u32(), ip.dst_addr().to_u32(), ip.ttl())
        };
        if m.trace != 0 {
            detail[i] = TraceDetail::Route {
                dst: Ipv4Addr::from_u32(dst),
                ttl,
                via: cx.l3.route(dst),
            };
        }
        let Some(nh) = cx.l3.route(dst) else {
            next[i] = Next::Drop(DropReason::Ip4NoRoute);
            continue;
        };
        if nh == NextHop::Us {
            next[i] = Next::Stage(StageId::Ip4Local);
            continue;
        }
        // The node kernel's own traffic to and from the underlay passes as if on a wire:
        // the dataplane is not a hop there (single-hop protocols send TTL 1).
        let role = cx.ports.role(m.in_port);
        let transparent = matches!(
            (role, nh),
            (Role::Host, NextHop::Uplink) | (Role::Uplink, NextHop::Host)
        );
        if ttl <= 1 && !transparent {
            m.icmp = IcmpKind::TimeExceeded;
            next[i] = Next::Stage(StageId::IcmpError);
            continue;
        }
        // Untagged from here on: the L3 header right after a 14-byte Ethernet header.
        if l3 > ethernet::HEADER_LEN {
            if !f.strip(l3 - ethernet::HEADER_LEN) {
                next[i] = Next::Drop(DropReason::Ip4Malformed);
                continue;
            }
            if m.l4 != 0 {
                m.l4 -= m.l3 - 14;
            }
            m.l3 = 14;
            let d = f.data_mut();
            d[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        }
        if !transparent {
            ipv4::Packet::new_unchecked(&mut f.data_mut()[ethernet::HEADER_LEN..]).decrement_ttl();
        }
        next[i] = match nh {
            NextHop::Local => {
                m.nh_ip = dst;
                m.out = OUT_BRIDGE;
                m.bd = node.bridge;
                Next::Stage(StageId::Ip4Rewrite)
            }
            NextHop::Host => match cx.ports.host {
                Some(h) => {
                    m.nh_ip = node.node_ip;
                    m.out = h;
                    Next::Stage(StageId::Ip4Rewrite)
                }
                None => Next::Drop(DropReason::Ip4RewriteNoPort),
            },
            NextHop::Uplink => match cx.ports.uplink {
                Some(u) => {
                    let on_link = dst & mask(node.underlay.1) == node.underlay.0;
                    match (on_link, node.underlay_gateway) {
                        (true, _) => m.nh_ip = dst,
                        (false, Some(g)) => m.nh_ip = g,
                        (false, None) => {
                            next[i] = Next::Drop(DropReason::Ip4NoRoute);
                            continue;
                        }
                    }
                    m.out = u;
                    let in_cluster = |a: u32| a & mask(node.cluster.1) == node.cluster.0;
                    // Nodes route the cluster themselves: pods reach node IPs unmasqueraded.
                    let node_addr =
                        crate::pipeline::stage::last_or(&mut last_node_addr, dst, || {
                            dst == node.node_ip || cx.l3.remote_by_ip.contains_key(&dst)
                        });
                    if in_cluster(src) && !in_cluster(dst) && !node_addr {
                        // Masquerade: pods leave the cluster as the node.
                        Next::Stage(StageId::Snat)
                    } else {
                        Next::Stage(StageId::Ip4Rewrite)
                    }
                }
                None => Next::Drop(DropReason::Ip4RewriteNoPort),
            },
            NextHop::Remote(r) => {
                m.remote = r;
                Next::Stage(StageId::VxlanEncap)
            }
            NextHop::Us => Next::Stage(StageId::Ip4Local),
        };
    }
}

/// ip4-lookup's trace record in words.
pub fn describe(
    n: &dyn crate::pipeline::trace::Names,
    dst: Ipv4Addr,
    ttl: u8,
    via: Option<NextHop>,
) -> String {
    let via = match via {
        None => "no route".to_string(),
        Some(NextHop::Local) => "local pods".into(),
        Some(NextHop::Remote(r)) => format!("remote node {}", n.remote(r)),
        Some(NextHop::Host) => "node kernel (host port)".into(),
        Some(NextHop::Uplink) => "underlay (uplink)".into(),
        Some(NextHop::Us) => "this dataplane".into(),
    };
    format!("{dst} ttl {ttl}: {via}")
}

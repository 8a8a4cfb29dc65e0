//! `ip4-lookup`: routes IPv4. Longest-prefix match picks the next hop; packets for the
//! dataplane itself go to `ip4-local` (no TTL check); others need TTL > 1 (else an ICMP
//! time-exceeded is asked of `icmp-error`), get their TTL decremented (checksum updated
//! incrementally) and a normalised, untagged Ethernet header, then go to `vxlan-encap`
//! (remote pods) or `ip4-rewrite` (local pods, the node's kernel, the underlay).
use crate::ip4::lpm::mask;
use crate::ip4::{NextHop, NextHopKind};
use crate::pipeline::stage::Ctx;
use crate::pipeline::stage::{Features, Vector};
use crate::pipeline::{DropReason, Frame, IcmpKind, Next, StageId, TraceDetail, OUT_BRIDGE};
use crate::port::Role;
use crate::wire::{ethernet, ipv4, Ipv4Addr};

/// The stage registered for a kind of next hop (`next_hop [...]` in the registry);
/// a kind nobody handles has no route.
#[inline(always)]
fn to(kind: NextHopKind) -> Next {
    crate::pipeline::registry::for_next_hop(kind)
        .map_or(Next::Drop(DropReason::Ip4NoRoute), Next::Stage)
}

pub fn process<F: Frame>(cx: &Ctx, _feat: &mut Features, v: &mut Vector<F>) {
    let (pkts, frames, next, detail) = v.parts();
    let Some(node) = crate::pipeline::stage::node_or_drop(cx, pkts, next) else {
        return;
    };
    // Whether the last destination to the underlay was a node address (a hash lookup;
    // a burst mostly goes to one or a few destinations).
    let mut last_node_addr: Option<(u32, bool)> = None;
    for &i in pkts {
        let i = usize::from(i);
        let f = &mut frames[i];
        // A copy, written back where the stage changes it (the frame is rewritten in
        // between).
        let m = *f.meta();
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
            next[i] = to(NextHopKind::Us);
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
            f.meta_mut().set_icmp(IcmpKind::TimeExceeded);
            next[i] = Next::Stage(StageId::IcmpError);
            continue;
        }
        // Untagged from here on: the L3 header right after a 14-byte Ethernet header.
        if l3 > ethernet::HEADER_LEN {
            if !f.strip(l3 - ethernet::HEADER_LEN) {
                next[i] = Next::Drop(DropReason::Ip4Malformed);
                continue;
            }
            let (d, m) = f.data_meta_mut();
            if m.l4 != 0 {
                m.l4 -= m.l3 - 14;
            }
            m.l3 = 14;
            d[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        }
        if !transparent {
            ipv4::Packet::new_unchecked(&mut f.data_mut()[ethernet::HEADER_LEN..]).decrement_ttl();
        }
        let m = f.meta_mut();
        next[i] = match nh {
            NextHop::Local => {
                m.nh_ip = dst;
                m.out = OUT_BRIDGE;
                m.bd = node.bridge;
                to(NextHopKind::Local)
            }
            NextHop::Host => match cx.ports.host {
                Some(h) => {
                    m.nh_ip = node.node_ip;
                    m.out = h;
                    to(NextHopKind::Host)
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
                        to(NextHopKind::Masquerade)
                    } else {
                        to(NextHopKind::Uplink)
                    }
                }
                None => Next::Drop(DropReason::Ip4RewriteNoPort),
            },
            NextHop::Remote(r) => {
                m.remote = r;
                to(NextHopKind::Remote)
            }
            NextHop::Us => to(NextHopKind::Us),
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

/// ip4-lookup's contract: where each kind of destination goes.
#[cfg(test)]
mod tests {
    use crate::ip4::L3;
    use crate::pipeline::stage::{run_alone, Ctx, Features};
    use crate::pipeline::{DropReason, Meta, Next, StageId, WorkerCounters};

    use crate::services::ServiceTable;

    fn ip4(src: [u8; 4], dst: [u8; 4], ttl: u8) -> (Vec<u8>, Meta) {
        let mut f = vec![0u8; 14 + 28];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let h = &mut f[14..];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&28u16.to_be_bytes());
        h[8] = ttl;
        h[9] = 17;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let m = Meta {
            in_port: 2,
            l3: 14,
            l4: 34,
            proto: 17,
            ..Meta::default()
        };
        (f, m)
    }

    #[test]
    fn routes_each_kind_of_destination_to_its_stage() {
        let l3 = crate::pipeline::fixture::l3(true);
        let ports = crate::pipeline::fixture::ports(1);
        let (services, counters) = (ServiceTable::default(), WorkerCounters::default());
        let mut feat = Features::for_tests();
        let pod = [10, 244, 0, 2];
        let cx = crate::pipeline::fixture::ctx(&l3, &ports, &services, &counters);
        let got = run_alone(
            StageId::Ip4Lookup,
            &cx,
            &mut feat,
            vec![
                ip4(pod, [10, 244, 0, 3], 64),     // a local pod (routed): rewrite
                ip4(pod, [10, 244, 1, 5], 64),     // a remote node's pod: the overlay
                ip4(pod, [192, 168, 77, 100], 64), // outside the cluster: masquerade
                ip4(pod, [192, 168, 77, 12], 64),  // a node: unmasqueraded
                ip4(pod, [10, 244, 0, 1], 64),     // the gateway itself: local
                ip4(pod, [10, 244, 1, 5], 1),      // TTL expires: an ICMP error
            ],
        );
        assert_eq!(
            got,
            [
                Next::Stage(StageId::Ip4Rewrite),
                Next::Stage(StageId::VxlanEncap),
                Next::Stage(StageId::Snat),
                Next::Stage(StageId::Ip4Rewrite),
                Next::Stage(StageId::Ip4Local),
                Next::Stage(StageId::IcmpError),
            ]
        );
        // Without a node identity every packet is dropped, by name.
        let none = L3::empty();
        let cx = Ctx { l3: &none, ..cx };
        let got = run_alone(
            StageId::Ip4Lookup,
            &cx,
            &mut feat,
            vec![ip4(pod, [10, 244, 0, 3], 64)],
        );
        assert_eq!(got, [Next::Drop(DropReason::Ip4NoNode)]);
    }
}

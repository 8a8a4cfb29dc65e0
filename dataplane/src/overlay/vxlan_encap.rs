//! `vxlan-encap`: sends a routed packet to the remote node that owns its destination
//! (RFC 7348). The inner frame gets the remote VTEP's MAC as destination; the outer
//! headers carry the node IPs, UDP to the configured port with a source port hashed
//! from the inner flow (so the underlay can spread flows), and the VNI. A packet that
//! would exceed the uplink MTU gets ICMP fragmentation-needed when DF is set; without
//! DF it is split (`ip4-fragment`) and each piece encapsulated.
use crate::ip4::l3::{NodeL3, Remote};
use crate::ip4::lpm::mask;
use crate::ip4::rewrite as ip4_rewrite;
use crate::ip4::NeighborTable;
use crate::pipeline::stage::flow_hash;
use crate::pipeline::stage::Ctx;
use crate::pipeline::stage::{Features, Vector};
use crate::pipeline::{DropReason, Frame, IcmpKind, Next, TraceDetail};
use crate::wire::{checksum, ethernet, ipv4, udp, vxlan, EtherType, IpProtocol, Ipv4Addr, MacAddr};

/// Outer UDP source ports: the dynamic range RFC 7348 recommends (49152-65535).
#[inline]
pub fn source_port(hash: u32) -> u16 {
    49152 | u16::try_from(hash & 0x3fff).unwrap_or(0)
}

pub fn process<F: Frame>(cx: &Ctx, feat: &mut Features, v: &mut Vector<F>) {
    let neighbors = &feat.ip4.neighbors;
    let (pkts, frames, next, detail) = v.parts();
    let Some(node) = crate::pipeline::stage::node_or_drop(cx, pkts, next) else {
        return;
    };
    // The last remote's pre-built headers: a burst mostly goes to one or a few nodes.
    let mut tpl: Option<Template> = None;
    for &i in pkts {
        let i = usize::from(i);
        next[i] = encap(
            cx,
            neighbors,
            node,
            &mut tpl,
            &mut frames[i],
            &mut detail[i],
        );
    }
}

/// The overlay's MTU for inner packets: what fits the uplink after encapsulation.
#[inline]
pub fn inner_mtu(cx: &Ctx) -> u16 {
    let mtu = cx
        .ports
        .uplink
        .and_then(|u| cx.ports.port(u))
        .map_or(1500, |p| p.mtu);
    let overhead = u16::try_from(vxlan::OVERHEAD).unwrap_or(50);
    mtu.saturating_sub(overhead)
}

/// Encapsulates one packet (routed, IPv4 at 14) for the remote node `m.remote`:
/// the stage's work per packet, also called by the runner for each piece of an
/// inner packet split to fit ([`Next::Fragment`]).
#[inline]
pub fn encap<F: Frame>(
    cx: &Ctx,
    neighbors: &NeighborTable,
    node: &NodeL3,
    tpl: &mut Option<Template>,
    f: &mut F,
    detail: &mut TraceDetail,
) -> Next {
    let m = *f.meta();
    let (Some(uplink), Some(r)) = (cx.ports.uplink, cx.l3.remotes.get(usize::from(m.remote)))
    else {
        return Next::Drop(DropReason::VxlanNoUplink);
    };
    let mtu = cx.ports.port(uplink).map_or(1500, |p| p.mtu);
    // ip4-lookup left the IPv4 header at offset 14.
    let (total, df, hash, tos) = {
        let ip = ipv4::Packet::new_unchecked(&f.data()[ethernet::HEADER_LEN..]);
        let d = f.data();
        let l4 = usize::from(m.l4);
        let ports =
            if (m.proto == 6 || m.proto == 17) && !ip.is_fragment() && l4 != 0 && d.len() >= l4 + 4
            {
                u32::from_be_bytes([d[l4], d[l4 + 1], d[l4 + 2], d[l4 + 3]])
            } else {
                0
            };
        (
            usize::from(ip.total_len()),
            ip.dont_frag(),
            flow_hash(
                ip.src_addr().to_u32(),
                ip.dst_addr().to_u32(),
                m.proto,
                ports,
            ),
            ip.tos(),
        )
    };
    // Outer IPv4 carries UDP, VXLAN and the whole inner frame (its Ethernet header too).
    let inner_len = ethernet::HEADER_LEN + total;
    let outer_ip_len = ipv4::HEADER_LEN + udp::HEADER_LEN + vxlan::HEADER_LEN + inner_len;
    if outer_ip_len > usize::from(mtu) {
        if df {
            f.meta_mut()
                .set_icmp(IcmpKind::FragNeeded(mtu.saturating_sub(50)));
            return Next::Stage(crate::pipeline::StageId::IcmpError);
        }
        return Next::Fragment;
    }
    // Drop Ethernet padding, then make room for the outer headers.
    if !f.set_len(ethernet::HEADER_LEN + total) || !f.prepend(vxlan::OVERHEAD) {
        return Next::Drop(DropReason::VxlanNoHeadroom);
    }
    let t = match tpl {
        Some(t) if t.remote == m.remote => t,
        _ => tpl.insert(Template::build(cx, neighbors, node, r, m.remote, uplink)),
    };
    let d = f.data_mut();
    // Outer headers and the inner MACs from the template; then what varies.
    d[..TEMPLATE_LEN].copy_from_slice(&t.bytes);
    let ip_len = u16::try_from(outer_ip_len).unwrap_or(u16::MAX);
    let mut delta = checksum::delta16(TEMPLATE_IP_LEN, ip_len);
    if tos != 0 {
        // DSCP and ECN of the inner packet, copied out (RFC 6040, normal mode).
        d[OUTER_IP + 1] = tos;
        delta += checksum::delta16(0x4500, u16::from_be_bytes([0x45, tos]));
    }
    d[OUTER_IP + 2..OUTER_IP + 4].copy_from_slice(&ip_len.to_be_bytes());
    let c = checksum::apply(t.ip_checksum, delta);
    d[OUTER_IP + 10..OUTER_IP + 12].copy_from_slice(&c.to_be_bytes());
    d[OUTER_UDP..OUTER_UDP + 2].copy_from_slice(&source_port(hash).to_be_bytes());
    let udp_len = ip_len.saturating_sub(20);
    d[OUTER_UDP + 4..OUTER_UDP + 6].copy_from_slice(&udp_len.to_be_bytes());
    let m = f.meta_mut();
    m.l3 = 14;
    m.l4 = u16::try_from(OUTER_UDP).unwrap_or(0);
    m.proto = 17;
    m.nh_ip = t.nh_ip;
    m.out = uplink;
    if m.trace != 0 {
        *detail = TraceDetail::Encap {
            to: Ipv4Addr::from_u32(r.node_ip),
            sport: source_port(hash),
            vni: node.vni,
        };
    }
    // Without the next hop's MAC the runner parks the packet and asks ARP.
    if t.resolved {
        Next::Port(uplink)
    } else {
        Next::Resolve
    }
}

/// Bytes the template covers: outer Ethernet, IPv4, UDP, VXLAN, and the inner
/// Ethernet addresses (the inner EtherType is already 0x0800).
const TEMPLATE_LEN: usize = vxlan::OVERHEAD + 12;
const OUTER_IP: usize = ethernet::HEADER_LEN;
const OUTER_UDP: usize = OUTER_IP + ipv4::HEADER_LEN;
/// The outer IPv4 total length the template's checksum was computed with.
const TEMPLATE_IP_LEN: u16 = 20;

/// A remote node's encapsulation, pre-built once per burst and copied into each
/// packet (VPP's rewrite strings): per packet only the lengths, the source port and
/// an incremental checksum change.
pub struct Template {
    remote: u16,
    bytes: [u8; TEMPLATE_LEN],
    ip_checksum: u16,
    nh_ip: u32,
    /// The underlay next hop's MAC is known (else the packet waits for ARP).
    resolved: bool,
}

impl Template {
    fn build(
        cx: &Ctx,
        neighbors: &NeighborTable,
        node: &NodeL3,
        r: &Remote,
        remote: u16,
        uplink: u16,
    ) -> Template {
        let mut b = [0u8; TEMPLATE_LEN];
        let on_link = r.node_ip & mask(node.underlay.1) == node.underlay.0;
        let nh_ip = match (on_link, node.underlay_gateway) {
            (false, Some(g)) => g,
            _ => r.node_ip,
        };
        let nh = neighbors
            .lookup(nh_ip, cx.now)
            .filter(|n| n.port == uplink)
            .map(|n| n.mac);
        ip4_rewrite::rewrite(
            &mut b,
            nh.unwrap_or(MacAddr::ZERO),
            ip4_rewrite::src_mac(cx, uplink),
        );
        ethernet::Frame::new_unchecked(&mut b[..ethernet::HEADER_LEN])
            .set_ethertype(EtherType::Ipv4);
        let mut ip = ipv4::Packet::new_unchecked(&mut b[OUTER_IP..OUTER_UDP]);
        ipv4::Repr {
            src: Ipv4Addr::from_u32(node.node_ip),
            dst: Ipv4Addr::from_u32(r.node_ip),
            protocol: IpProtocol::Udp,
            payload_len: usize::from(TEMPLATE_IP_LEN) - ipv4::HEADER_LEN,
            ttl: 64,
            ident: 0,
            // The MTU is enforced before encapsulation: outer packets are never
            // fragmented (so a constant ident is fine, RFC 6864).
            dont_frag: true,
        }
        .emit(&mut ip);
        let ip_checksum = ip.checksum();
        {
            let mut u = udp::Packet::new_unchecked(&mut b[OUTER_UDP..OUTER_UDP + udp::HEADER_LEN]);
            u.set_dst_port(node.vxlan_port);
            // Zero: no UDP checksum, as RFC 7348 allows over IPv4.
            u.set_checksum(0);
        }
        let o_vx = OUTER_UDP + udp::HEADER_LEN;
        vxlan::Packet::new_unchecked(&mut b[o_vx..o_vx + vxlan::HEADER_LEN]).emit(node.vni);
        // Inner Ethernet: to the remote VTEP, from our gateway MAC.
        ip4_rewrite::rewrite(&mut b[vxlan::OVERHEAD..], r.vtep_mac, node.router_mac);
        Template {
            remote,
            bytes: b,
            ip_checksum,
            nh_ip,
            resolved: nh.is_some(),
        }
    }
}

/// vxlan-encap's trace record in words.
pub fn describe(to: crate::wire::Ipv4Addr, sport: u16, vni: u32) -> String {
    format!("vxlan to {to} udp sport {sport} vni {vni}")
}

/// ip4-fragment for the overlay (`Next::Fragment`): `f` is too big to encapsulate,
/// DF clear. Its pieces are each encapsulated by this stage's per-packet work and
/// sent, or held for ARP, as the stage would.
#[cold]
pub fn fragment<F: Frame, P: crate::pipeline::PortIo<Frame = F>>(
    cx: &Ctx,
    ip4: &mut crate::ip4::Ip4,
    holds: &mut crate::ip4::arp::Holds<F>,
    out: &mut crate::pipeline::tx::Out<'_, F, P>,
    tsc_hz: u64,
    f: F,
) {
    use crate::ip4::fragment as ip4_fragment;
    use crate::pipeline::{Meta, StageId};
    let t0 = crate::dpdk::rdtsc();
    let mtu = inner_mtu(cx);
    let m0 = *f.meta();
    let plan = ip4_fragment::Plan::new(&f.data()[ethernet::HEADER_LEN..], mtu);
    let mut pieces = std::mem::take(&mut out.tx.pieces);
    let split = match plan {
        Ok(Some(plan)) => ip4_fragment::split(
            f,
            ethernet::HEADER_LEN,
            &plan,
            |d| out.io.copy_frame(d),
            &mut pieces,
        ),
        // vxlan-encap found it too big; nothing else fits here.
        Ok(None) => Err((f, DropReason::Ip4FragTooMany)),
        Err(r) => Err((f, r)),
    };
    match split {
        Ok(()) => {
            let n = pieces.len();
            crate::pipeline::counters::add(&out.counters.replicated, n as u64 - 1);
            out.trace(
                m0.trace,
                StageId::Ip4Fragment,
                Next::Stage(StageId::VxlanEncap),
                TraceDetail::Fragment {
                    pieces: u16::try_from(n).unwrap_or(u16::MAX),
                    mtu,
                },
            );
            #[cfg(debug_assertions)]
            crate::pipeline::registry::seen::record(StageId::Ip4Fragment, StageId::VxlanEncap);
            let node = cx.l3.node.as_ref();
            let mut tpl = None;
            for mut g in pieces.drain(..) {
                *g.meta_mut() = Meta { trace: 0, ..m0 };
                let next = match node {
                    Some(node) => {
                        let mut d = TraceDetail::None;
                        encap(cx, &ip4.neighbors, node, &mut tpl, &mut g, &mut d)
                    }
                    None => Next::Drop(DropReason::Ip4NoNode),
                };
                match next {
                    // Each piece fits: encapsulated to the overlay's MTU.
                    Next::Port(p) => out.queue(p, g),
                    Next::Resolve => holds.hold(cx, ip4, out, tsc_hz, g),
                    Next::Drop(r) => out.drop(g, StageId::VxlanEncap, r),
                    _ => out.drop(g, StageId::Tx, DropReason::GraphLoop),
                }
            }
        }
        Err((f, r)) => out.drop(f, StageId::Ip4Fragment, r),
    }
    out.tx.pieces = pieces;
    ip4_fragment::count_split(out.counters, t0);
}

//! `vxlan-encap`: sends a routed packet to the remote node that owns its destination
//! (RFC 7348). The inner frame gets the remote VTEP's MAC as destination; the outer
//! headers carry the node IPs, UDP to the configured port with a source port hashed
//! from the inner flow (so the underlay can spread flows), and the VNI. A packet that
//! would exceed the uplink MTU gets ICMP fragmentation-needed when DF is set, and is
//! dropped (`vxlan-too-big`) when not: podpath does not fragment.
use super::{flow_hash, ip4_rewrite, Ctx};
use crate::pipeline::{DropReason, Frame, IcmpKind, Meta, Next, TraceDetail};
use crate::tables::lpm::mask;
use crate::tables::NeighborTable;
use crate::wire::{ethernet, ipv4, udp, vxlan, EtherType, IpProtocol, Ipv4Addr};

/// Outer UDP source ports: the dynamic range RFC 7348 recommends (49152-65535).
#[inline]
pub fn source_port(hash: u32) -> u16 {
    49152 | u16::try_from(hash & 0x3fff).unwrap_or(0)
}

pub fn process<F: Frame>(
    cx: &Ctx,
    neighbors: &NeighborTable,
    pkts: &[u8],
    frames: &mut [Option<F>],
    meta: &mut [Meta],
    next: &mut [Next],
    detail: &mut [TraceDetail],
) {
    let Some(node) = super::node_or_drop(cx, pkts, next) else {
        return;
    };
    for &i in pkts {
        let i = usize::from(i);
        let Some(f) = frames[i].as_mut() else {
            continue;
        };
        let m = &mut meta[i];
        let (Some(uplink), Some(r)) = (cx.ports.uplink, cx.l3.remotes.get(usize::from(m.remote)))
        else {
            next[i] = Next::Drop(DropReason::VxlanNoUplink);
            continue;
        };
        let mtu = cx.ports.port(uplink).map_or(1500, |p| p.mtu);
        // ip4-lookup left the IPv4 header at offset 14.
        let (total, df, hash, tos) = {
            let ip = ipv4::Packet::new_unchecked(&f.data()[ethernet::HEADER_LEN..]);
            let d = f.data();
            let l4 = usize::from(m.l4);
            let ports = if (m.proto == 6 || m.proto == 17)
                && !ip.is_fragment()
                && l4 != 0
                && d.len() >= l4 + 4
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
                m.icmp = IcmpKind::FragNeeded(mtu.saturating_sub(50));
                next[i] = Next::Stage(crate::pipeline::StageId::IcmpError);
            } else {
                next[i] = Next::Drop(DropReason::VxlanTooBig);
            }
            continue;
        }
        // Drop Ethernet padding, then make room for the outer headers.
        if !f.set_len(ethernet::HEADER_LEN + total) || !f.prepend(vxlan::OVERHEAD) {
            next[i] = Next::Drop(DropReason::VxlanNoHeadroom);
            continue;
        }
        let d = f.data_mut();
        // Inner Ethernet: to the remote VTEP, from our gateway MAC.
        let inner = vxlan::OVERHEAD;
        ip4_rewrite::rewrite(&mut d[inner..], r.vtep_mac, node.router_mac);
        ethernet::Frame::new_unchecked(&mut d[..ethernet::HEADER_LEN])
            .set_ethertype(EtherType::Ipv4);
        let o_ip = ethernet::HEADER_LEN;
        ipv4::Repr {
            src: Ipv4Addr::from_u32(node.node_ip),
            dst: Ipv4Addr::from_u32(r.node_ip),
            protocol: IpProtocol::Udp,
            payload_len: outer_ip_len - ipv4::HEADER_LEN,
            ttl: 64,
            ident: 0,
            // The MTU is enforced above: outer packets are never fragmented (so a
            // constant ident is fine, RFC 6864).
            dont_frag: true,
        }
        .emit(&mut ipv4::Packet::new_unchecked(
            &mut d[o_ip..o_ip + ipv4::HEADER_LEN],
        ));
        if tos != 0 {
            // DSCP and ECN of the inner packet, copied out (RFC 6040, normal mode).
            let mut o = ipv4::Packet::new_unchecked(&mut d[o_ip..o_ip + ipv4::HEADER_LEN]);
            o.set_tos(tos);
            o.fill_checksum();
        }
        let o_udp = o_ip + ipv4::HEADER_LEN;
        {
            let mut u = udp::Packet::new_unchecked(&mut d[o_udp..o_udp + udp::HEADER_LEN]);
            u.set_src_port(source_port(hash));
            u.set_dst_port(node.vxlan_port);
            u.set_len(u16::try_from(outer_ip_len - ipv4::HEADER_LEN).unwrap_or(u16::MAX));
            // Zero: no UDP checksum, as RFC 7348 allows over IPv4.
            u.set_checksum(0);
        }
        let o_vx = o_udp + udp::HEADER_LEN;
        vxlan::Packet::new_unchecked(&mut d[o_vx..o_vx + vxlan::HEADER_LEN]).emit(node.vni);
        m.l3 = 14;
        m.l4 = u16::try_from(o_udp).unwrap_or(0);
        m.proto = 17;
        let on_link = r.node_ip & mask(node.underlay.1) == node.underlay.0;
        m.nh_ip = match (on_link, node.underlay_gateway) {
            (false, Some(g)) => g,
            _ => r.node_ip,
        };
        m.out = uplink;
        if m.trace != 0 {
            detail[i] = TraceDetail::Encap {
                to: Ipv4Addr::from_u32(r.node_ip),
                sport: source_port(hash),
                vni: node.vni,
            };
        }
        next[i] = match neighbors.lookup(m.nh_ip, cx.now) {
            Some(n) if n.port == uplink => {
                ip4_rewrite::rewrite(d, n.mac, ip4_rewrite::src_mac(cx, uplink));
                Next::Port(uplink)
            }
            _ => Next::Resolve,
        };
    }
}

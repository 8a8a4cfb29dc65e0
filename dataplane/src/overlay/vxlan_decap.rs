//! `vxlan-decap`: VXLAN from a known remote node, with our VNI (eth-input already
//! checked the UDP port and that it is addressed to the node IP). Strips the outer
//! Ethernet/IPv4/UDP/VXLAN headers and parses the inner frame, which goes on to
//! `ip4-lookup`. Anything else is dropped under its reason.
use crate::eth::input as eth_input;
use crate::ip4::lpm::mask;
use crate::ip4::NextHop;
use crate::pipeline::stage::Ctx;
use crate::pipeline::stage::{Features, Vector};
use crate::pipeline::{DropReason, Frame, Meta, Next, RxChecksum, StageId, TraceDetail};
use crate::wire::{ipv4, udp, vxlan, EtherType, Ipv4Addr};

/// The UDP port vxlan-decap takes on the node IP (its registration in eth-input's
/// node-UDP table): the one the node is configured with.
#[inline(always)]
pub fn udp_port(node: &crate::ip4::l3::NodeL3) -> u16 {
    node.vxlan_port
}

pub fn process<F: Frame>(cx: &Ctx, feat: &mut Features, v: &mut Vector<F>) {
    let tracked = feat.nat.conntrack.dnat_sources();
    let (pkts, frames, next, detail) = v.parts();
    let Some(node) = crate::pipeline::stage::node_or_drop(cx, pkts, next) else {
        return;
    };
    for &i in pkts {
        let i = usize::from(i);
        let f = &mut frames[i];
        let m = *f.meta();
        let (l3, l4) = (usize::from(m.l3), usize::from(m.l4));
        let d = f.data();
        let (src, fragment) = {
            let ip = ipv4::Packet::new_unchecked(&d[l3..]);
            (ip.src_addr().to_u32(), ip.is_fragment())
        };
        if fragment {
            next[i] = Next::Drop(DropReason::VxlanOuterFragment);
            continue;
        }
        let hdr = l4 + udp::HEADER_LEN;
        // Within the UDP datagram only: never Ethernet padding.
        let udp_end = (l4 + usize::from(udp::Packet::new_unchecked(&d[l4..]).len())).min(d.len());
        let Ok(v) = vxlan::Packet::new_checked(&d[hdr.min(udp_end)..udp_end]) else {
            next[i] = Next::Drop(DropReason::VxlanBadHeader);
            continue;
        };
        let vni = v.vni();
        if vni != node.vni {
            next[i] = Next::Drop(DropReason::VxlanWrongVni);
            continue;
        }
        let Some(&remote) = cx.l3.remote_by_ip.get(&src) else {
            next[i] = Next::Drop(DropReason::VxlanUnknownVtep);
            continue;
        };
        // The inner frame ends where the UDP datagram ends.
        if !f.set_len(udp_end) {
            next[i] = Next::Drop(DropReason::VxlanBadHeader);
            continue;
        }
        if m.trace != 0 {
            detail[i] = TraceDetail::Decap {
                from: Ipv4Addr::from_u32(src),
                vni,
            };
        }
        if !f.strip(hdr + vxlan::HEADER_LEN) {
            next[i] = Next::Drop(DropReason::VxlanBadHeader);
            continue;
        }
        let (d, m) = f.data_meta_mut();
        *m = Meta::rx(m.in_port, m.trace);
        next[i] = match eth_input::classify(d, m, RxChecksum::Unknown) {
            Err(_) => Next::Drop(DropReason::VxlanInnerMalformed),
            Ok(_) if m.ethertype != u16::from(EtherType::Ipv4) => {
                Next::Drop(DropReason::VxlanInnerNotIp4)
            }
            Ok(None) => Next::Drop(DropReason::VxlanInnerMalformed),
            Ok(Some((isrc, idst, ..))) => {
                // A remote node speaks for its own pods, to ours: nothing else enters
                // through the overlay (no hairpin, no way into the node's kernel).
                let from = cx.l3.remotes.get(usize::from(remote)).map(|r| r.pod_net);
                let (isrc, idst) = (isrc.to_u32(), idst.to_u32());
                // ... or the node itself (a NodePort it balanced, source translated).
                if isrc != src && from.is_none_or(|(n, len)| isrc & mask(len) != n) {
                    Next::Drop(DropReason::VxlanInnerBadSource)
                } else if !matches!(cx.l3.route(idst), Some(NextHop::Local | NextHop::Us)) {
                    Next::Drop(DropReason::VxlanInnerNotLocal)
                } else if cx.services.concerns(node, tracked, isrc, idst, m.proto) {
                    // Replies of Service connections this node balanced come back here.
                    Next::Stage(StageId::Lb)
                } else {
                    Next::Stage(StageId::Ip4Lookup)
                }
            }
        };
    }
}

/// vxlan-decap's trace record in words.
pub fn describe(from: crate::wire::Ipv4Addr, vni: u32) -> String {
    format!("vxlan from {from} vni {vni}, outer headers stripped")
}

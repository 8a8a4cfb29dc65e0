//! `vxlan-decap`: VXLAN from a known remote node, with our VNI (eth-input already
//! checked the UDP port and that it is addressed to the node IP). Strips the outer
//! Ethernet/IPv4/UDP/VXLAN headers and parses the inner frame, which goes on to
//! `ip4-lookup`. Anything else is dropped under its reason.
use super::{eth_input, Ctx};
use crate::pipeline::{DropReason, Frame, Meta, Next, StageId, TraceDetail};
use crate::wire::{ipv4, udp, vxlan, EtherType, Ipv4Addr};

pub fn process<F: Frame>(
    cx: &Ctx,
    pkts: &[u8],
    frames: &mut [Option<F>],
    meta: &mut [Meta],
    next: &mut [Next],
    detail: &mut [TraceDetail],
) {
    let Some(node) = cx.l3.node.as_ref() else {
        return;
    };
    for &i in pkts {
        let i = usize::from(i);
        let Some(f) = frames[i].as_mut() else {
            continue;
        };
        let m = &mut meta[i];
        let (l3, l4) = (usize::from(m.l3), usize::from(m.l4));
        let d = f.data();
        let src = ipv4::Packet::new_unchecked(&d[l3..]).src_addr().to_u32();
        let hdr = l4 + udp::HEADER_LEN;
        let Ok(v) = vxlan::Packet::new_checked(&d[hdr.min(d.len())..]) else {
            next[i] = Next::Drop(DropReason::VxlanBadHeader);
            continue;
        };
        if v.vni() != node.vni {
            next[i] = Next::Drop(DropReason::VxlanWrongVni);
            continue;
        }
        if !cx.l3.remote_by_ip.contains_key(&src) {
            next[i] = Next::Drop(DropReason::VxlanUnknownVtep);
            continue;
        }
        if m.trace != 0 {
            detail[i] = TraceDetail::Decap {
                from: Ipv4Addr::from_u32(src),
                vni: v.vni(),
            };
        }
        if !f.strip(hdr + vxlan::HEADER_LEN) {
            next[i] = Next::Drop(DropReason::VxlanBadHeader);
            continue;
        }
        let (in_port, trace) = (m.in_port, m.trace);
        *m = Meta {
            in_port,
            trace,
            ..Meta::default()
        };
        next[i] = match eth_input::classify(f.data(), m) {
            Err(_) => Next::Drop(DropReason::VxlanInnerMalformed),
            Ok(_) if m.ethertype != u16::from(EtherType::Ipv4) => {
                Next::Drop(DropReason::VxlanInnerNotIp4)
            }
            Ok(_) => Next::Stage(StageId::Ip4Lookup),
        };
    }
}

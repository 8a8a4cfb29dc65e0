//! `ip4-local`: packets addressed to the dataplane itself (the pods' gateway address).
//! ICMP echo requests are answered in place; anything else is dropped.
use crate::pipeline::stage::Ctx;
use crate::pipeline::stage::{Features, Vector};
use crate::pipeline::{DropReason, Frame, Next, StageId, TraceDetail};
use crate::wire::{checksum, icmpv4, ipv4};

pub fn process<F: Frame>(_cx: &Ctx, _feat: &mut Features, v: &mut Vector<F>) {
    let (pkts, frames, next, detail) = v.parts();
    for &i in pkts {
        let i = usize::from(i);
        let (d, m) = frames[i].data_meta_mut();
        let (l3, l4) = (usize::from(m.l3), usize::from(m.l4));
        let is_echo = m.proto == 1 && l4 != 0 && d.get(l4) == Some(&icmpv4::kind::ECHO_REQUEST);
        if !is_echo {
            next[i] = Next::Drop(DropReason::Ip4LocalUnsupported);
            continue;
        }
        if ipv4::Packet::new_unchecked(&d[l3..]).is_fragment() {
            next[i] = Next::Drop(DropReason::Ip4LocalFragment);
            continue;
        }
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut d[l3..]);
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            ip.set_src_addr(dst);
            ip.set_dst_addr(src);
            if m.trace != 0 {
                detail[i] = TraceDetail::Icmp {
                    kind: crate::pipeline::IcmpKind::None,
                    to: src,
                };
            }
            ip.set_ttl(64);
            ip.fill_checksum();
        }
        // Echo reply: type 8 -> 0; the checksum follows incrementally.
        let mut icmp = icmpv4::Packet::new_unchecked(&mut d[l4..]);
        let old = u16::from_be_bytes([icmp.msg_type(), icmp.msg_code()]);
        icmp.set_msg_type(icmpv4::kind::ECHO_REPLY);
        let new = u16::from_be_bytes([icmpv4::kind::ECHO_REPLY, icmp.msg_code()]);
        let c = checksum::update16(icmp.checksum(), old, new);
        icmp.set_checksum(c);
        next[i] = Next::Stage(StageId::Ip4Lookup);
    }
}

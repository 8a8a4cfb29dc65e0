//! `icmp-error`: turns a packet into the ICMP error about it (RFC 792): time exceeded,
//! or destination unreachable / fragmentation needed with the next-hop MTU (RFC 1191),
//! quoting the original IP header and its first 8 payload bytes. Sent from the pods'
//! gateway address (to pods) or the node IP (to others), routed by `ip4-lookup`. Never
//! about another ICMP error; at most `rate` per second per worker.
use crate::ip4::lpm::mask;
use crate::pipeline::stage::Ctx;
use crate::pipeline::stage::{Features, Vector};
use crate::pipeline::{DropReason, Frame, IcmpKind, Next, StageId, TraceDetail};
use crate::wire::{ethernet, icmpv4, ipv4, IpProtocol, Ipv4Addr};

/// A token bucket in TSC ticks.
pub struct RateLimit {
    tokens: u64,
    burst: u64,
    per_token: u64,
    last: u64,
}

impl RateLimit {
    pub fn new(per_second: u64, burst: u64, tsc_hz: u64) -> RateLimit {
        RateLimit {
            tokens: burst,
            burst,
            per_token: (tsc_hz / per_second.max(1)).max(1),
            last: 0,
        }
    }
    pub fn allow(&mut self, now: u64) -> bool {
        let earned = now.wrapping_sub(self.last) / self.per_token;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(self.burst);
            self.last = now;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

/// RFC 1122 3.2.2: no error about a non-first fragment, nor from or to an address
/// that does not name one host (unspecified, broadcast, multicast, loopback, class E).
pub fn error_allowed(src: u32, dst: u32, frag_offset: u16) -> bool {
    let one_host = |a: u32| {
        let top = a >> 24;
        a != 0 && a != u32::MAX && top != 127 && top < 224
    };
    frag_offset == 0 && one_host(src) && one_host(dst)
}

#[allow(clippy::too_many_arguments)]
pub fn process<F: Frame>(cx: &Ctx, feat: &mut Features, v: &mut Vector<F>) {
    let (limit, ct, now) = (
        &mut feat.ip4.icmp_limit,
        &mut feat.nat.conntrack,
        cx.seconds,
    );
    let (pkts, frames, next, detail) = v.parts();
    let Some(node) = crate::pipeline::stage::node_or_drop(cx, pkts, next) else {
        return;
    };
    for &i in pkts {
        let i = usize::from(i);
        let f = &mut frames[i];
        let kind = f.meta_mut().take_icmp();
        let m = *f.meta();
        let l3 = usize::from(m.l3);
        let mut quote = [0u8; 60 + 8];
        let (qlen, orig_src, orig_dst) = {
            let ip = ipv4::Packet::new_unchecked(&f.data()[l3..]);
            let hl = ip.header_len();
            if !error_allowed(
                ip.src_addr().to_u32(),
                ip.dst_addr().to_u32(),
                ip.frag_offset(),
            ) {
                next[i] = Next::Drop(DropReason::IcmpNotAllowed);
                continue;
            }
            if ip.protocol() == IpProtocol::Icmp
                && ip
                    .payload()
                    .first()
                    .is_some_and(|&t| crate::nat::icmp::is_icmp_error(t))
            {
                next[i] = Next::Drop(DropReason::IcmpAboutIcmpError);
                continue;
            }
            let q = (hl + 8).min(usize::from(ip.total_len()));
            quote[..q].copy_from_slice(&f.data()[l3..l3 + q]);
            (q, ip.src_addr().to_u32(), ip.dst_addr().to_u32())
        };
        let reason = match kind {
            IcmpKind::TimeExceeded => DropReason::Ip4TtlExpired,
            _ => DropReason::IcmpRateLimited,
        };
        if !limit.allow(cx.now) {
            next[i] = Next::Drop(if kind == IcmpKind::TimeExceeded {
                reason
            } else {
                DropReason::IcmpRateLimited
            });
            continue;
        }
        let icmp_len = icmpv4::HEADER_LEN + qlen;
        let total = ipv4::HEADER_LEN + icmp_len;
        if (l3 > ethernet::HEADER_LEN && !f.strip(l3 - ethernet::HEADER_LEN))
            || !f.set_len(ethernet::HEADER_LEN + total)
        {
            next[i] = Next::Drop(DropReason::IcmpNoRoom);
            continue;
        }
        if m.trace != 0 {
            detail[i] = TraceDetail::Icmp {
                kind,
                to: Ipv4Addr::from_u32(orig_src),
            };
        }
        let from = if kind == IcmpKind::PortUnreachable {
            // Refused by the Service's address itself.
            orig_dst
        } else if orig_src & mask(node.cluster.1) == node.cluster.0 {
            node.gateway_ip
        } else {
            node.node_ip
        };
        let d = f.data_mut();
        d[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_at = ethernet::HEADER_LEN;
        ipv4::Repr {
            src: Ipv4Addr::from_u32(from),
            dst: Ipv4Addr::from_u32(orig_src),
            protocol: IpProtocol::Icmp,
            payload_len: icmp_len,
            ttl: 64,
            ident: 0,
            dont_frag: false,
        }
        .emit(&mut ipv4::Packet::new_unchecked(
            &mut d[ip_at..ip_at + ipv4::HEADER_LEN],
        ));
        let ic = ip_at + ipv4::HEADER_LEN;
        let (t, c, word) = match kind {
            IcmpKind::FragNeeded(mtu) => (icmpv4::kind::DEST_UNREACHABLE, 4u8, u32::from(mtu)),
            IcmpKind::PortUnreachable => (icmpv4::kind::DEST_UNREACHABLE, 3u8, 0u32),
            _ => (icmpv4::kind::TIME_EXCEEDED, 0u8, 0u32),
        };
        d[ic] = t;
        d[ic + 1] = c;
        d[ic + 4..ic + 8].copy_from_slice(&word.to_be_bytes());
        d[ic + 8..ic + 8 + qlen].copy_from_slice(&quote[..qlen]);
        icmpv4::Packet::new_unchecked(&mut d[ic..ic + icmp_len]).fill_checksum();
        // About a packet this node translated (a NodePort connection too big for the
        // overlay, a masqueraded one too big for the uplink): the error goes to the
        // connection's client and quotes what it sent, not to the node itself.
        if let Some(q) = crate::nat::icmp::quoted(d, ip_at, ic) {
            let _ = crate::nat::icmp::untranslate(ct, now, d, ip_at, ic, &q);
        }
        let m = f.meta_mut();
        m.l3 = 14;
        m.l4 = u16::try_from(ic).unwrap_or(0);
        m.proto = 1;
        next[i] = Next::Stage(StageId::Ip4Lookup);
    }
}

/// icmp-error's (and ip4-local's echo reply) trace record in words.
pub fn describe(kind: IcmpKind, to: crate::wire::Ipv4Addr) -> String {
    match kind {
        IcmpKind::None => format!("echo reply to {to}"),
        IcmpKind::TimeExceeded => format!("time exceeded to {to}"),
        IcmpKind::PortUnreachable => format!("port unreachable to {to}"),
        IcmpKind::FragNeeded(m) => format!("fragmentation needed (mtu {m}) to {to}"),
    }
}

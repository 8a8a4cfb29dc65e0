//! ICMP errors about translated connections, for `snat-reply` (masqueraded flows) and
//! `lb` (Service flows): the quoted packet names the connection; the error is
//! rewritten so the client sees it about the packet it sent, from where it sent it.
use crate::nat::conntrack::{Conntrack, Dir, Tuple};
use crate::wire::{checksum, icmpv4, ipv4, udp, Ipv4Addr};

/// Destination unreachable, source quench, redirect, time exceeded, parameter
/// problem: the ICMP types that quote a packet.
#[inline]
pub fn is_icmp_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

/// Where an ICMP error's quoted packet lies (quoted IPv4 header at `q3`, its
/// transport at `q4`, the error's end), and what it names: the packet we sent from
/// the node or an endpoint saw (TCP/UDP as sent; ICMP echo as the reply tuple with the identifier as
/// `sport`), so `sent.sport` is the node-side port or identifier.
#[derive(Clone, Copy)]
pub struct Quoted {
    pub q3: usize,
    pub q4: usize,
    pub end: usize,
    pub src: u32,
    pub proto: u8,
    pub sent: Tuple,
}

/// Parses the packet an ICMP error quotes (the IPv4 header and 8 bytes of what it
/// carried: truncated by design, so checked by hand rather than by `new_checked`,
/// which wants the whole packet). None for anything but TCP, UDP or an echo request
/// that is not a fragment.
pub fn quoted(d: &[u8], l3: usize, l4: usize) -> Option<Quoted> {
    let total = usize::from(ipv4::Packet::new_unchecked(&d[l3..]).total_len());
    let end = (l3 + total).min(d.len());
    let q3 = l4 + icmpv4::HEADER_LEN;
    if end < q3 + ipv4::HEADER_LEN {
        return None;
    }
    let inner = ipv4::Packet::new_unchecked(&d[q3..end]);
    let qhl = inner.header_len();
    let q4 = q3 + qhl;
    if inner.version() != 4 || qhl < ipv4::HEADER_LEN || end < q4 + 8 || inner.is_fragment() {
        return None;
    }
    let proto = u8::from(inner.protocol());
    let (src, dst) = (inner.src_addr().to_u32(), inner.dst_addr().to_u32());
    let sent = match proto {
        6 | 17 => Tuple {
            src,
            dst,
            sport: u16::from_be_bytes([d[q4], d[q4 + 1]]),
            dport: u16::from_be_bytes([d[q4 + 2], d[q4 + 3]]),
            proto,
        },
        1 if d[q4] == icmpv4::kind::ECHO_REQUEST => Tuple {
            src: dst,
            dst: src,
            sport: u16::from_be_bytes([d[q4 + 4], d[q4 + 5]]),
            dport: 0,
            proto,
        },
        _ => return None,
    };
    Some(Quoted {
        q3,
        q4,
        end,
        src,
        proto,
        sent,
    })
}

/// Rewrites an ICMP error about a tracked, translated connection so it reads as the
/// connection's client sent and expects it: the quoted packet becomes the original
/// direction as the client sent it (its source and port, or echo identifier, and
/// its destination: a Service's virtual IP and port rather than the endpoint), the
/// outer destination the client, and the outer source, when the quoted destination
/// itself answered (an endpoint's port unreachable), what the client addressed. The
/// quoted IPv4 checksum, the quoted UDP or ICMP checksum (TCP's lies beyond the 8
/// quoted bytes), the outer IPv4 checksum and the error's own are updated. Returns
/// the connection's entry and client, or None (not one of ours).
pub fn untranslate(
    ct: &mut Conntrack,
    now: u32,
    d: &mut [u8],
    l3: usize,
    l4: usize,
    q: &Quoted,
) -> Option<(u32, u32)> {
    let Quoted {
        q3,
        q4,
        end,
        proto,
        sent,
        ..
    } = *q;
    // What the far side got; its reverse is the reply tuple we track.
    let reply = if proto == 1 { sent } else { sent.reversed() };
    let (k, Dir::Reply) = ct.lookup(&reply, now)? else {
        return None;
    };
    let orig = ct.entry(k).orig;
    // The quoted header: as the client sent it.
    let (q_src, q_dst) = {
        let mut ip = ipv4::Packet::new_unchecked(&mut d[q3..end]);
        let old = (ip.src_addr().to_u32(), ip.dst_addr().to_u32());
        ip.set_src_addr(Ipv4Addr::from_u32(orig.src));
        if proto != 1 {
            ip.set_dst_addr(Ipv4Addr::from_u32(orig.dst));
        }
        ip.fill_checksum();
        old
    };
    match proto {
        6 => {
            d[q4..q4 + 2].copy_from_slice(&orig.sport.to_be_bytes());
            d[q4 + 2..q4 + 4].copy_from_slice(&orig.dport.to_be_bytes());
        }
        17 => {
            let mut u = udp::Packet::new_unchecked(&mut d[q4..q4 + 8]);
            let (old_sp, old_dp) = (u.src_port(), u.dst_port());
            u.set_src_port(orig.sport);
            u.set_dst_port(orig.dport);
            if u.checksum() != 0 {
                let mut c = checksum::update32(u.checksum(), q_src, orig.src);
                c = checksum::update32(c, q_dst, orig.dst);
                c = checksum::update16(c, old_sp, orig.sport);
                c = checksum::update16(c, old_dp, orig.dport);
                u.set_checksum(if c == 0 { 0xffff } else { c });
            }
        }
        _ => {
            let mut e = icmpv4::Packet::new_unchecked(&mut d[q4..q4 + 8]);
            let old = e.echo_ident();
            let c = checksum::update16(e.checksum(), old, orig.sport);
            e.set_echo_ident(orig.sport);
            e.set_checksum(c);
        }
    }
    // The outer header: to the client; from what it addressed when the quoted
    // destination answered itself.
    {
        let mut ip = ipv4::Packet::new_unchecked(&mut d[l3..]);
        if proto != 1 && ip.src_addr().to_u32() == q_dst {
            ip.set_src_addr(Ipv4Addr::from_u32(orig.dst));
        }
        ip.set_dst_addr(Ipv4Addr::from_u32(orig.src));
        ip.fill_checksum();
    }
    // The error's own checksum covers all of the above: recompute (errors are rare).
    icmpv4::Packet::new_unchecked(&mut d[l4..end]).fill_checksum();
    Some((k, orig.src))
}

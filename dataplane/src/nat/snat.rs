//! `snat` and `snat-reply`: masquerade for pod egress (walk 5). Pod traffic leaving
//! the cluster through the uplink gets the node IP as source and a port (or ICMP echo
//! identifier) from this worker's share of the NAT range; the connection table
//! remembers both directions, so replies addressed to the node are restored to the
//! pod. Checksums are updated incrementally (RFC 1624). A tuple in use is never handed
//! out again; when no port is free, new flows are dropped (`snat-ports-exhausted`).
//! Pod-to-pod and node-to-pod traffic never comes here.
use crate::nat::conntrack::index::Hash;
use crate::nat::conntrack::{tcp_flags_valid, Conntrack, Dir, InsertError, Tuple};
use crate::nat::frag::{FragKey, FragNat, Fragments};
use crate::nat::icmp::{is_icmp_error, quoted, untranslate};
use crate::pipeline::stage::Ctx;
use crate::pipeline::stage::{Features, Vector};
use crate::pipeline::{DropReason, Frame, Next, StageId, TraceDetail, BURST};
use crate::wire::{checksum, icmpv4, ipv4, tcp, udp, Ipv4Addr};

/// This worker's share of the NAT port range.
#[derive(Debug, Clone)]
pub struct NatPorts {
    pub lo: u16,
    pub hi: u16,
    next: u16,
}

impl NatPorts {
    /// Worker `w` of `n` gets the w-th equal slice of `lo..=hi`, so a reply's
    /// destination port names the worker that owns the connection.
    pub fn for_worker(lo: u16, hi: u16, w: u16, n: u16) -> NatPorts {
        let (lo32, hi32, n32) = (u32::from(lo), u32::from(hi), u32::from(n.max(1)));
        let size = (hi32 - lo32 + 1) / n32;
        let a = lo32 + u32::from(w) * size;
        let b = if u32::from(w) + 1 == n32 {
            hi32
        } else {
            a + size - 1
        };
        let (a, b) = (
            u16::try_from(a).unwrap_or(lo),
            u16::try_from(b).unwrap_or(hi),
        );
        NatPorts {
            lo: a,
            hi: b,
            next: a,
        }
    }

    /// The next port of the slice, round robin (the caller checks it is free).
    pub fn take(&mut self) -> u16 {
        let p = self.next;
        self.next = if p >= self.hi { self.lo } else { p + 1 };
        p
    }

    /// The worker that owns `port`, among `n` sharing `lo..=hi`.
    pub fn owner(lo: u16, hi: u16, n: u16, port: u16) -> Option<u16> {
        if port < lo || port > hi {
            return None;
        }
        let size = (u32::from(hi) - u32::from(lo) + 1) / u32::from(n.max(1));
        let w = (u32::from(port) - u32::from(lo)) / size.max(1);
        u16::try_from(w.min(u32::from(n.max(1)) - 1)).ok()
    }
}

/// The 5-tuple of the packet at `l3` (ICMP echo: identifier as `sport`, 0 as `dport`).
pub(crate) fn tuple_of(d: &[u8], l3: usize, l4: usize, proto: u8) -> Option<Tuple> {
    let ip = ipv4::Packet::new_unchecked(&d[l3..]);
    let (src, dst) = (ip.src_addr().to_u32(), ip.dst_addr().to_u32());
    let (sport, dport) = match proto {
        6 | 17 => (
            u16::from_be_bytes([d[l4], d[l4 + 1]]),
            u16::from_be_bytes([d[l4 + 2], d[l4 + 3]]),
        ),
        1 => {
            let t = d[l4];
            if t != icmpv4::kind::ECHO_REQUEST && t != icmpv4::kind::ECHO_REPLY {
                return None;
            }
            (u16::from_be_bytes([d[l4 + 4], d[l4 + 5]]), 0)
        }
        _ => return None,
    };
    Some(Tuple {
        src,
        dst,
        sport,
        dport,
        proto,
    })
}

/// Rewrites the source (egress) or destination (replies) address and port of the
/// packet, updating the IPv4 and L4 checksums incrementally. One bounds check for
/// each header, then fixed offsets (eth-input checked both headers are there).
pub(crate) fn rewrite(
    d: &mut [u8],
    l3: usize,
    l4: usize,
    proto: u8,
    source: bool,
    addr: u32,
    port: u16,
) {
    let be16 = |b: &[u8], o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    if l4 < l3 + ipv4::HEADER_LEN {
        return;
    }
    let (head, l4h) = d.split_at_mut(l4);
    let Some(ip) = head
        .get_mut(l3..l3 + ipv4::HEADER_LEN)
        .and_then(|h| <&mut [u8; ipv4::HEADER_LEN]>::try_from(h).ok())
    else {
        return;
    };
    // Source address at 12, destination at 16.
    let at = if source { 12 } else { 16 };
    let old_addr = u32::from_be_bytes([ip[at], ip[at + 1], ip[at + 2], ip[at + 3]]);
    ip[at..at + 4].copy_from_slice(&addr.to_be_bytes());
    // One sum of the address change serves the IPv4 and the TCP/UDP checksum.
    let d_addr = checksum::delta32(old_addr, addr);
    let c = checksum::apply(be16(ip, 10), d_addr);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    match proto {
        6 => {
            // Ports at 0 and 2, checksum at 16.
            let Some(t) = l4h.get_mut(..tcp::HEADER_LEN) else {
                return;
            };
            let at = if source { 0 } else { 2 };
            let old_port = be16(t, at);
            let c = checksum::apply(be16(t, 16), d_addr + checksum::delta16(old_port, port));
            t[at..at + 2].copy_from_slice(&port.to_be_bytes());
            t[16..18].copy_from_slice(&c.to_be_bytes());
        }
        17 => {
            // Ports at 0 and 2, checksum at 6.
            let Some(u) = l4h.get_mut(..udp::HEADER_LEN) else {
                return;
            };
            let at = if source { 0 } else { 2 };
            let old_port = be16(u, at);
            u[at..at + 2].copy_from_slice(&port.to_be_bytes());
            // Zero means "no checksum" over IPv4: keep it so.
            let check = be16(u, 6);
            if check != 0 {
                let c = checksum::apply(check, d_addr + checksum::delta16(old_port, port));
                let c = if c == 0 { 0xffff } else { c };
                u[6..8].copy_from_slice(&c.to_be_bytes());
            }
        }
        _ => {
            // ICMP echo: the identifier at 4; the checksum (at 2) has no
            // pseudo-header.
            let Some(i) = l4h.get_mut(..8) else {
                return;
            };
            let old = be16(i, 4);
            let c = checksum::update16(be16(i, 2), old, port);
            i[4..6].copy_from_slice(&port.to_be_bytes());
            i[2..4].copy_from_slice(&c.to_be_bytes());
        }
    }
}

pub(crate) fn tcp_flags(d: &[u8], l4: usize, proto: u8) -> u8 {
    if proto == 6 {
        tcp::Packet::new_unchecked(&d[l4..]).flags()
    } else {
        0
    }
}

/// Egress: translate to the node IP, creating the connection on its first packet.
/// The connection tuples of a vector, its connection-table lines prefetched:
/// every packet's index bucket first, then the entries the buckets name, so a
/// burst's cache misses overlap instead of coming one packet at a time (rte_hash's
/// bulk lookup does the same). `tuples[i]` is packet i's tuple, as `tuple_of` reads
/// it before the stage changes the packet (None for fragments and what has none).
#[inline]
pub fn prefetch_connections<F: Frame>(
    ct: &Conntrack,
    pkts: &[u8],
    frames: &[F],
    tuples: &mut [Option<(Tuple, Hash)>; BURST],
) {
    for &i in pkts {
        let i = usize::from(i);
        let f = &frames[i];
        let m = f.meta();
        tuples[i] = if m.l4 != 0 && m.frag != crate::pipeline::FRAG_LATER {
            tuple_of(f.data(), usize::from(m.l3), usize::from(m.l4), m.proto)
                .map(|t| (t, ct.hash(&t)))
        } else {
            None
        };
        if let Some((_, h)) = &tuples[i] {
            ct.prefetch(h);
        }
    }
    for &i in pkts {
        if let Some((_, h)) = &tuples[usize::from(i)] {
            ct.prefetch_entry(h);
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn egress<F: Frame>(cx: &Ctx, feat: &mut Features, v: &mut Vector<F>) {
    let crate::nat::Nat {
        conntrack: ct,
        ports,
        frags,
        owners,
    } = &mut feat.nat;
    let (owners, now) = (*owners, cx.seconds);
    let (pkts, frames, next, detail) = v.parts();
    let Some(node) = crate::pipeline::stage::node_or_drop(cx, pkts, next) else {
        return;
    };
    let mut tuples = [None; BURST];
    prefetch_connections(ct, pkts, frames, &mut tuples);
    for &i in pkts {
        let i = usize::from(i);
        let (d, m) = frames[i].data_meta_mut();
        let (l3, l4) = (usize::from(m.l3), usize::from(m.l4));
        if m.frag == crate::pipeline::FRAG_LATER {
            // A later fragment: its datagram's first fragment was translated (the
            // source became the node), or it cannot be.
            next[i] = match frags.translate_later(d, l3, m.proto, cx.now_ms) {
                Some(_) => Next::Stage(StageId::Ip4Rewrite),
                None => Next::Drop(DropReason::SnatFragment),
            };
            continue;
        }
        if m.l4 == 0 {
            next[i] = Next::Drop(DropReason::SnatFragment);
            continue;
        }
        let Some((orig, hash)) = tuples[i] else {
            next[i] = Next::Drop(DropReason::SnatUnsupported);
            continue;
        };
        // A flow is translated by its client's worker only, whichever queue its
        // packets arrive on (a tap moves a flow between queues when the socket's
        // hash changes): another worker would give it a second NAT port.
        let owner = client_owner(orig.src, orig.sport, owners.workers);
        if owner != owners.me {
            next[i] = Next::Handoff(owner);
            continue;
        }
        let flags = tcp_flags(d, l4, m.proto);
        if orig.proto == 6 && !tcp_flags_valid(flags) {
            next[i] = Next::Drop(DropReason::CtInvalid);
            continue;
        }
        let (idx, port) = match ct.lookup_or_reopen_hashed(&orig, &hash, flags, now) {
            Some((k, Dir::Orig)) => (k, ct.entry(k).reply.dport_or_id()),
            Some((_, Dir::Reply)) => {
                // A packet that looks like a reply going out: not ours to translate.
                next[i] = Next::Drop(DropReason::SnatUnsupported);
                continue;
            }
            None => match allocate_missed(ct, ports, &orig, &hash, node.node_ip, now) {
                Ok(v) => v,
                Err(r) => {
                    next[i] = Next::Drop(r);
                    continue;
                }
            },
        };
        ct.update(idx, Dir::Orig, flags, now);
        let first =
            (m.frag == crate::pipeline::FRAG_FIRST).then(|| Fragments::key_of(d, l3, m.proto));
        rewrite(d, l3, l4, m.proto, true, node.node_ip, port);
        if let Some(key) = first {
            // Its later fragments carry no port: they get the same new source.
            remember_first(frags, key, d, l3, cx.now_ms);
        }
        if m.trace != 0 {
            detail[i] = TraceDetail::Nat {
                src: true,
                to: Ipv4Addr::from_u32(node.node_ip),
                port,
            };
        }
        next[i] = Next::Stage(StageId::Ip4Rewrite);
    }
}

/// Keeps a translated first fragment's addresses (`key`: before, the header at `l3`:
/// after) for its later fragments.
fn remember_first(frags: &mut Fragments, key: FragKey, d: &[u8], l3: usize, now_ms: u64) {
    let now = Fragments::key_of(d, l3, key.proto);
    let nat = FragNat {
        src: now.src,
        dst: now.dst,
    };
    frags.remember(key, nat, now_ms);
}

impl Tuple {
    /// For a reply tuple: the node-side port (or echo identifier) it was given.
    fn dport_or_id(&self) -> u16 {
        if self.proto == 1 {
            self.sport
        } else {
            self.dport
        }
    }
}

/// Finds a free node port for `orig` and tracks the connection.
#[cfg(test)]
fn allocate(
    ct: &mut Conntrack,
    ports: &mut NatPorts,
    orig: &Tuple,
    node_ip: u32,
    now: u32,
) -> Result<(u32, u16), DropReason> {
    let h = ct.hash(orig);
    allocate_missed(ct, ports, orig, &h, node_ip, now)
}

/// `allocate`, for `orig` just looked up (hash `h`) and missed: each candidate
/// port costs one lookup of its reply tuple.
fn allocate_missed(
    ct: &mut Conntrack,
    ports: &mut NatPorts,
    orig: &Tuple,
    h: &crate::nat::conntrack::index::Hash,
    node_ip: u32,
    now: u32,
) -> Result<(u32, u16), DropReason> {
    let span = u32::from(ports.hi - ports.lo) + 1;
    // A bounded search: the range is shared by all of this worker's flows.
    for _ in 0..span.min(256) {
        let p = ports.next;
        ports.next = if p >= ports.hi { ports.lo } else { p + 1 };
        let reply = if orig.proto == 1 {
            Tuple {
                src: orig.dst,
                dst: node_ip,
                sport: p,
                dport: 0,
                proto: 1,
            }
        } else {
            Tuple {
                src: orig.dst,
                dst: node_ip,
                sport: orig.dport,
                dport: p,
                proto: orig.proto,
            }
        };
        match ct.insert_missed(*orig, h, reply, now) {
            Ok(k) => return Ok((k, p)),
            Err(InsertError::Exists) => continue,
            Err(InsertError::Full) => return Err(DropReason::CtTableFull),
        }
    }
    Err(DropReason::SnatPortsExhausted)
}

/// The worker that owns a client's connection (SNAT egress, ClusterIP): chosen by the client's address and
/// port, which both directions carry (source of requests, destination of replies).
/// For Services whose connections are owned by client address alone
/// (`owner_by_client_ip`, affinity), callers pass port 0.
#[inline]
pub fn client_owner(ip: u32, port: u16, workers: u16) -> u16 {
    if workers <= 1 {
        return 0;
    }
    let h = (u64::from(ip) << 16 | u64::from(port)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    u16::try_from((h >> 40) % u64::from(workers)).unwrap_or(0)
}
/// Who owns which NAT port: the whole range, the number of workers, this worker.
#[derive(Debug, Clone, Copy)]
pub struct Owners {
    pub lo: u16,
    pub hi: u16,
    pub workers: u16,
    pub me: u16,
}

/// Replies to the node IP: restore the pod's address if a connection knows them; a
/// reply whose port belongs to another worker goes to that worker (never processed
/// on the wrong core); anything else goes on to `ip4-lookup` (the node's kernel).
#[allow(clippy::too_many_arguments)]
pub fn reply<F: Frame>(cx: &Ctx, feat: &mut Features, v: &mut Vector<F>) {
    let crate::nat::Nat {
        conntrack: ct,
        frags,
        owners,
        ..
    } = &mut feat.nat;
    let (owners, now) = (*owners, cx.seconds);
    let (pkts, frames, next, detail) = v.parts();
    let services_exist = !cx.services.is_empty();
    let mut tuples = [None; BURST];
    prefetch_connections(ct, pkts, frames, &mut tuples);
    for &i in pkts {
        let i = usize::from(i);
        let (d, m) = frames[i].data_meta_mut();
        let (l3, l4) = (usize::from(m.l3), usize::from(m.l4));
        // Not ours: a NodePort (lb), or the node's kernel (ip4-lookup).
        next[i] = if services_exist {
            Next::Stage(StageId::Lb)
        } else {
            Next::Stage(StageId::Ip4Lookup)
        };
        if m.frag == crate::pipeline::FRAG_LATER {
            // A later fragment of a reply whose first one was restored: the same
            // destination (else it is the node kernel's).
            let _ = frags.translate_later(d, l3, m.proto, cx.now_ms);
            continue;
        }
        if m.l4 == 0 {
            continue;
        }
        if m.proto == 1 && is_icmp_error(d[l4]) {
            // An error about one of our translated flows (a router's time exceeded, a
            // fragmentation needed): the quoted packet names the connection.
            let Some(q) = quoted(d, l3, l4) else {
                continue;
            };
            if let Some((_, pod)) = untranslate(ct, now, d, l3, l4, &q) {
                if m.trace != 0 {
                    detail[i] = TraceDetail::Nat {
                        src: false,
                        to: Ipv4Addr::from_u32(pod),
                        port: 0,
                    };
                }
            } else if let Some(w) =
                NatPorts::owner(owners.lo, owners.hi, owners.workers, q.sent.sport)
                    .filter(|&w| w != owners.me)
            {
                // About a flow another worker translated (the quoted packet's node
                // port is from its slice): its table knows the pod.
                next[i] = Next::Handoff(w);
            }
            continue;
        }
        let Some((t, hash)) = tuples[i] else {
            continue;
        };
        let Some((k, Dir::Reply)) = ct.lookup_hashed(&t, &hash, now) else {
            let port = if t.proto == 1 { t.sport } else { t.dport };
            match NatPorts::owner(owners.lo, owners.hi, owners.workers, port) {
                Some(w) if w != owners.me => next[i] = Next::Handoff(w),
                _ => {}
            }
            continue;
        };
        let e = *ct.entry(k);
        let orig = e.orig;
        if !ct.update(k, Dir::Reply, tcp_flags(d, l4, m.proto), now) {
            next[i] = Next::Drop(DropReason::CtInvalid);
            continue;
        }
        let first =
            (m.frag == crate::pipeline::FRAG_FIRST).then(|| Fragments::key_of(d, l3, m.proto));
        if e.is_dnat() {
            // A NodePort connection (source translated to us): the endpoint's reply
            // comes back from the NodePort, to the client.
            rewrite(d, l3, l4, m.proto, true, orig.dst, orig.dport);
        }
        // The pod's own port (or echo identifier).
        let port = orig.sport;
        rewrite(d, l3, l4, m.proto, false, orig.src, port);
        if let Some(key) = first {
            remember_first(frags, key, d, l3, cx.now_ms);
        }
        if m.trace != 0 {
            detail[i] = TraceDetail::Nat {
                src: false,
                to: Ipv4Addr::from_u32(orig.src),
                port,
            };
        }
    }
}

/// The NAT stages' trace record in words (snat, snat-reply, lb).
pub fn describe(src: bool, to: Ipv4Addr, port: u16) -> String {
    if src {
        format!("source now {to}:{port} (masquerade)")
    } else {
        format!("destination restored to {to}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_slices_name_their_worker() {
        let (lo, hi) = (32768u16, 60999u16);
        let a = NatPorts::for_worker(lo, hi, 0, 3);
        let b = NatPorts::for_worker(lo, hi, 1, 3);
        let c = NatPorts::for_worker(lo, hi, 2, 3);
        assert_eq!((a.lo, c.hi), (lo, hi));
        assert_eq!(b.lo, a.hi + 1);
        assert_eq!(c.lo, b.hi + 1);
        for (w, s) in [a, b, c].iter().enumerate() {
            for p in [s.lo, s.hi, s.lo + (s.hi - s.lo) / 2] {
                assert_eq!(
                    NatPorts::owner(lo, hi, 3, p),
                    Some(u16::try_from(w).unwrap())
                );
            }
        }
        assert_eq!(NatPorts::owner(lo, hi, 3, 80), None);
    }

    #[test]
    fn ports_in_use_are_never_handed_out_and_exhaustion_is_reported() {
        use crate::nat::conntrack::Timeouts;
        let to = Timeouts {
            udp: 5,
            ..Timeouts::default()
        };
        let mut ct = Conntrack::new(64, to, 0);
        let mut ports = NatPorts::for_worker(40000, 40003, 0, 1);
        let node = 0xc0a8_4d0b;
        let flow = |sport| Tuple {
            src: 0x0af4_0002,
            dst: 0x0808_0808,
            sport,
            dport: 53,
            proto: 17,
        };
        let mut got = Vec::new();
        for s in 1..=4 {
            got.push(allocate(&mut ct, &mut ports, &flow(s), node, 0).unwrap().1);
        }
        got.sort_unstable();
        assert_eq!(got, vec![40000, 40001, 40002, 40003]);
        assert_eq!(
            allocate(&mut ct, &mut ports, &flow(5), node, 0),
            Err(DropReason::SnatPortsExhausted),
            "exhausted"
        );
        // Another destination can reuse the ports: the reply tuples differ.
        let other = Tuple {
            dst: 0x0101_0101,
            ..flow(6)
        };
        assert!(allocate(&mut ct, &mut ports, &other, node, 0).is_ok());
        // After expiry the ports come back.
        ct.expire(5, 100);
        assert!(allocate(&mut ct, &mut ports, &flow(7), node, 5).is_ok());
    }

    #[test]
    fn icmp_errors_about_translated_flows_reach_the_pod() {
        use etherparse::PacketBuilder;
        let mut ct = Conntrack::new(16, crate::nat::conntrack::Timeouts::default(), 0);
        let (pod, node, server, router) = (
            [10, 244, 0, 2],
            [192, 168, 77, 11],
            [203, 0, 113, 10],
            [192, 168, 77, 254],
        );
        let u32of = |a: [u8; 4]| u32::from_be_bytes(a);
        let orig = Tuple {
            src: u32of(pod),
            dst: u32of(server),
            sport: 44000,
            dport: 33434,
            proto: 17,
        };
        let mut ports = NatPorts::for_worker(40000, 40010, 0, 1);
        let (_, natport) = allocate(&mut ct, &mut ports, &orig, u32of(node), 0).unwrap();
        // What left the uplink: node:natport -> server, TTL 1.
        let mut sent = Vec::new();
        PacketBuilder::ipv4(node, server, 1)
            .udp(natport, 33434)
            .write(&mut sent, &[7u8; 24])
            .unwrap();
        // The router's time exceeded about it, to the node.
        let mut err = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(router, node, 64)
            .icmpv4(etherparse::Icmpv4Type::TimeExceeded(
                etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
            ))
            .write(&mut err, &sent[..28])
            .unwrap();
        let q = quoted(&err, 14, 34).expect("a quote");
        assert_eq!(q.sent.sport, natport, "names the node-side port");
        let got = untranslate(&mut ct, 0, &mut err, 14, 34, &q).expect("ours");
        assert_eq!(got.1, u32of(pod));
        assert_eq!(&err[30..34], &pod, "outer destination is the pod");
        assert!(checksum::verify(&err[14..34]), "outer IPv4 checksum");
        assert!(checksum::verify(&err[34..]), "ICMP checksum");
        assert_eq!(&err[42 + 12..42 + 16], &pod, "quoted source is the pod");
        assert!(checksum::verify(&err[42..62]), "quoted IPv4 checksum");
        assert_eq!(
            u16::from_be_bytes([err[62], err[63]]),
            44000,
            "quoted port is the pod's"
        );
        // An error about a flow we do not know is left alone.
        let mut other = err.clone();
        other[62..64].copy_from_slice(&1u16.to_be_bytes());
        let q = quoted(&other, 14, 34).expect("a quote");
        assert!(untranslate(&mut ct, 0, &mut other, 14, 34, &q).is_none());
    }
}

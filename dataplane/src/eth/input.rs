//! `eth-input`: parses each frame once, records offsets in the packet's metadata, and
//! drops what is malformed, each under its own reason. It never reads past the frame:
//! every access goes through a checked view of `wire`.
use crate::pipeline::registry;
use crate::pipeline::stage::Ctx;
use crate::pipeline::stage::{Features, Vector};
use crate::pipeline::{
    DropReason, Frame, Meta, Next, RxChecksum, StageId, TraceDetail, PREFETCH_AHEAD,
};
use crate::port::Role;
use crate::services::prefilter::AddrFilter;
use crate::wire::{self, arp, checksum, ethernet, icmpv4, ipv4, tcp, udp, EtherType, IpProtocol};

/// (source, destination, protocol, source port or ICMP type, destination port or
/// ICMP echo id), for traces.
pub type FiveTuple = (wire::Ipv4Addr, wire::Ipv4Addr, u8, u16, u16);

/// Parses one frame; on success fills `meta` and returns the parsed 5-tuple (for
/// traces). `csum` is the NIC's verdict on the IPv4 header checksum: only an unchecked
/// header is summed here. Pure: unit-tested on byte buffers. Inlined, so the common
/// case (`classify_fast`) costs no call; the general parse stays out of line.
#[inline(always)]
pub fn classify(
    data: &[u8],
    meta: &mut Meta,
    csum: RxChecksum,
) -> Result<Option<FiveTuple>, DropReason> {
    match classify_fast(data, meta, csum) {
        Some(t) => Ok(Some(t)),
        None => classify_general(data, meta, csum),
    }
}

/// The common case in one pass of fixed-offset reads after one length check: untagged
/// IPv4 without options, not a fragment, carrying TCP or UDP whose header fits.
/// Anything else, including anything the general parse would drop, returns None and
/// takes the general parse, which names the drop reason. A property test checks that
/// both agree wherever this one answers.
#[inline]
fn classify_fast(d: &[u8], meta: &mut Meta, csum: RxChecksum) -> Option<FiveTuple> {
    // Ethernet (14) + IPv4 (20) + a minimal TCP header (20); a minimum-size frame has 60.
    let h: &[u8; 54] = d.get(..54)?.try_into().ok()?;
    if h[12..15] != [0x08, 0x00, 0x45] {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([h[16], h[17]]));
    // Not a fragment (offset 0, MF clear); the whole datagram inside the frame.
    if total < 20 || ethernet::HEADER_LEN + total > d.len() || h[20] & 0x3f != 0 || h[21] != 0 {
        return None;
    }
    let l4_len = total - 20;
    let proto = h[23];
    let fits = match proto {
        17 => {
            let len = usize::from(u16::from_be_bytes([h[38], h[39]]));
            l4_len >= udp::HEADER_LEN && len >= udp::HEADER_LEN && len <= l4_len
        }
        6 => {
            let hl = usize::from(h[46] >> 4) * 4;
            l4_len >= tcp::HEADER_LEN && hl >= tcp::HEADER_LEN && hl <= l4_len
        }
        _ => false,
    };
    let ip: &[u8; 20] = h[14..34].try_into().ok()?;
    let good = match csum {
        RxChecksum::Good => true,
        RxChecksum::Bad => false,
        RxChecksum::Unknown => checksum::fold(checksum::sum20(ip)) == 0xffff,
    };
    if !fits || !good {
        return None;
    }
    meta.l3 = 14;
    meta.ethertype = 0x0800;
    meta.vlan = 0;
    meta.proto = proto;
    meta.l4 = 34;
    let addr = |o: usize| wire::Ipv4Addr([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    Some((
        addr(26),
        addr(30),
        proto,
        u16::from_be_bytes([h[34], h[35]]),
        u16::from_be_bytes([h[36], h[37]]),
    ))
}

/// Every frame the fast path does not take: VLAN tags, ARP, options, fragments, ICMP,
/// and anything malformed, with its drop reason.
#[inline(never)]
fn classify_general(
    data: &[u8],
    meta: &mut Meta,
    csum: RxChecksum,
) -> Result<Option<FiveTuple>, DropReason> {
    let l2 = ethernet::parse_l2(data).map_err(|e| match e {
        wire::Error::Truncated if data.len() < ethernet::HEADER_LEN => DropReason::EthTruncated,
        _ => DropReason::VlanMalformed,
    })?;
    meta.l3 = u16::try_from(l2.l3_offset).unwrap_or(u16::MAX);
    meta.ethertype = l2.ethertype.into();
    meta.vlan = l2.vlan;
    meta.l4 = 0;
    meta.proto = 0;
    let l3 = &data[l2.l3_offset..];
    match l2.ethertype {
        EtherType::Arp => {
            let p = arp::Packet::new_checked(l3).map_err(|_| DropReason::ArpTruncated)?;
            arp::Repr::parse(&p).map_err(|_| DropReason::ArpMalformed)?;
            Ok(None)
        }
        EtherType::Ipv4 => {
            let ip = ipv4::Packet::new_checked(l3).map_err(|e| match e {
                wire::Error::Truncated => DropReason::Ip4Truncated,
                wire::Error::Options => DropReason::Ip4BadOptions,
                _ => DropReason::Ip4Malformed,
            })?;
            let good = match csum {
                RxChecksum::Good => true,
                RxChecksum::Bad => false,
                RxChecksum::Unknown => ip.verify_checksum(),
            };
            if !good {
                return Err(DropReason::Ip4BadChecksum);
            }
            let proto = ip.protocol();
            meta.proto = proto.into();
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            // Only a first fragment (or an unfragmented packet) carries the L4 header.
            if ip.frag_offset() != 0 {
                meta.frag = crate::pipeline::FRAG_LATER;
                return Ok(Some((src, dst, meta.proto, 0, 0)));
            }
            if ip.more_frags() {
                meta.frag = crate::pipeline::FRAG_FIRST;
            }
            let l4_off = l2.l3_offset + ip.header_len();
            let payload = ip.payload();
            let (sport, dport) = match proto {
                IpProtocol::Tcp => {
                    let t = tcp::Packet::new_checked(payload).map_err(|e| match e {
                        wire::Error::Truncated => DropReason::TcpTruncated,
                        _ => DropReason::TcpBadOffset,
                    })?;
                    (t.src_port(), t.dst_port())
                }
                IpProtocol::Udp if !ip.more_frags() => {
                    let u = udp::Packet::new_checked(payload).map_err(|e| match e {
                        wire::Error::Truncated => DropReason::UdpTruncated,
                        _ => DropReason::UdpBadLength,
                    })?;
                    (u.src_port(), u.dst_port())
                }
                IpProtocol::Udp => {
                    // First fragment of a datagram: the length field covers all fragments.
                    if payload.len() < udp::HEADER_LEN {
                        return Err(DropReason::UdpTruncated);
                    }
                    let u = udp::Packet::new_unchecked(payload);
                    (u.src_port(), u.dst_port())
                }
                IpProtocol::Icmp => {
                    let i = icmpv4::Packet::new_checked(payload)
                        .map_err(|_| DropReason::IcmpTruncated)?;
                    let id = match i.msg_type() {
                        icmpv4::kind::ECHO_REQUEST | icmpv4::kind::ECHO_REPLY => i.echo_ident(),
                        _ => 0,
                    };
                    (u16::from(i.msg_type()), id)
                }
                IpProtocol::Unknown(_) => (0, 0),
            };
            meta.l4 = u16::try_from(l4_off).unwrap_or(u16::MAX);
            Ok(Some((src, dst, meta.proto, sport, dport)))
        }
        // Other EtherTypes (IPv6, LLDP, ...) are bridged as opaque L2.
        _ => Ok(None),
    }
}

/// A routed packet: to `lb` when it is addressed into the Service range (no Service
/// exists, so it is refused or dropped there), else to `ip4-lookup`.
#[inline]
fn to_range_or(node: &crate::ip4::l3::NodeL3, ip: Option<FiveTuple>) -> Next {
    match ip {
        Some((_, dst, ..)) if node.in_service_range(dst.to_u32()) => Next::Stage(StageId::Lb),
        _ => Next::Stage(StageId::Ip4Lookup),
    }
}

/// Where a parsed frame goes, by the role of its input port. `tracked`: the
/// endpoints of this worker's translated connections (the Service prefilter).
#[inline]
fn pick(cx: &Ctx, tracked: &AddrFilter, m: &Meta, data: &[u8], ip: Option<FiveTuple>) -> Next {
    let Some(node) = cx.l3.node.as_ref() else {
        // No L3 identity: a plain bridge.
        return Next::Stage(StageId::Bridge);
    };
    // A protocol a feature registered for (ARP), whatever the port.
    if let Some(st) = registry::for_ethertype(m.ethertype) {
        return Next::Stage(st);
    }
    let is_ip4 = m.ethertype == u16::from(EtherType::Ipv4);
    match cx.ports.role(m.in_port) {
        // With Services, IPv4 that may be a Service's passes `lb` (an endpoint's reply
        // to a client on its own subnet is bridged, and still needs its VIP back);
        // the prefilter lets the rest skip it.
        Role::Pod | Role::Host
            if is_ip4
                && ip.is_some_and(|(src, dst, proto, ..)| {
                    cx.services
                        .concerns(node, tracked, src.to_u32(), dst.to_u32(), proto)
                }) =>
        {
            Next::Stage(StageId::Lb)
        }
        // Without, only what is routed into the Service range (refused there); a
        // bridged frame is never for a ClusterIP, so it skips the range check.
        Role::Pod if is_ip4 && data[0..6] == node.router_mac.0 => to_range_or(node, ip),
        Role::Pod => Next::Stage(StageId::Bridge),
        Role::Uplink => match ip {
            Some((_, dst, proto, _, dport)) if dst.to_u32() == node.node_ip => {
                // UDP to a port a feature registered (VXLAN); else a reply to a
                // masqueraded pod, or for the node's kernel.
                let udp = (proto == 17 && m.l4 != 0)
                    .then(|| registry::for_node_udp(node, dport))
                    .flatten();
                Next::Stage(udp.unwrap_or(StageId::SnatReply))
            }
            // An external or LoadBalancer IP of a Service, routed to this node.
            Some((_, dst, ..)) if cx.services.is_external_ip(dst.to_u32()) => {
                Next::Stage(StageId::Lb)
            }
            _ => Next::Drop(DropReason::UplinkNotForUs),
        },
        Role::Host if is_ip4 => to_range_or(node, ip),
        Role::Host => Next::Drop(DropReason::HostNotIp4),
    }
}

pub fn process<F: Frame>(cx: &Ctx, feat: &mut Features, v: &mut Vector<F>) {
    let tracked = feat.nat.conntrack.dnat_sources();
    let (pkts, frames, next, detail) = v.parts();
    for (k, &i) in pkts.iter().enumerate() {
        if let Some(&ahead) = pkts.get(k + PREFETCH_AHEAD) {
            crate::dpdk::prefetch(frames[usize::from(ahead)].data());
        }
        let i = usize::from(i);
        let f = &mut frames[i];
        if !f.is_contiguous() {
            next[i] = Next::Drop(DropReason::EthChained);
            continue;
        }
        let csum = f.rx_ip_checksum();
        let (data, m) = f.data_meta_mut();
        let data = &*data;
        next[i] = match classify(data, m, csum) {
            Ok(ip) => {
                if m.trace != 0 && data.len() >= ethernet::HEADER_LEN {
                    let e = ethernet::Frame::new_unchecked(data);
                    detail[i] = TraceDetail::Parsed {
                        src: e.src_addr(),
                        dst: e.dst_addr(),
                        ethertype: m.ethertype,
                        vlan: m.vlan,
                        ip,
                    };
                }
                pick(cx, tracked, m, data, ip)
            }
            Err(r) => Next::Drop(r),
        };
    }
}

/// eth-input's trace record in words.
pub fn describe(
    src: crate::wire::MacAddr,
    dst: crate::wire::MacAddr,
    ethertype: u16,
    vlan: u16,
    ip: Option<(wire::Ipv4Addr, wire::Ipv4Addr, u8, u16, u16)>,
) -> String {
    let mut s = format!("{src} > {dst} type 0x{ethertype:04x}");
    if vlan != 0 {
        s += &format!(" vlan {vlan}");
    }
    if let Some((a, b, proto, sp, dp)) = ip {
        s += &match proto {
            1 => format!(" icmp {a} > {b} type {sp} id {dp}"),
            6 => format!(" tcp {a}:{sp} > {b}:{dp}"),
            17 => format!(" udp {a}:{sp} > {b}:{dp}"),
            p => format!(" ip {a} > {b} proto {p}"),
        };
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn udp_frame() -> Vec<u8> {
        let b = PacketBuilder::ethernet2([0x0a, 0x58, 0, 0, 0, 2], [0x0a, 0x58, 0, 0, 0, 3])
            .ipv4([10, 244, 0, 2], [10, 244, 0, 3], 64)
            .udp(5000, 53);
        let mut v = Vec::new();
        b.write(&mut v, b"hello").unwrap();
        v
    }

    fn tcp_frame() -> Vec<u8> {
        let b = PacketBuilder::ethernet2([0x0a, 0x58, 0, 0, 0, 2], [0x0a, 0x58, 0, 0, 0, 3])
            .ipv4([10, 244, 0, 2], [10, 244, 0, 3], 64)
            .tcp(41000, 80, 1, 65535);
        let mut v = Vec::new();
        b.write(&mut v, b"GET /").unwrap();
        v
    }

    fn classify_v(v: &[u8]) -> Result<Option<FiveTuple>, DropReason> {
        classify(v, &mut Meta::default(), RxChecksum::Unknown)
    }

    #[test]
    fn good_frames() {
        let mut m = Meta::default();
        let t = classify(&udp_frame(), &mut m, RxChecksum::Unknown)
            .unwrap()
            .unwrap();
        assert_eq!((t.2, t.3, t.4), (17, 5000, 53));
        assert_eq!((m.l3, m.l4), (14, 34));
        let t = classify_v(&tcp_frame()).unwrap().unwrap();
        assert_eq!((t.2, t.3, t.4), (6, 41000, 80));
    }

    #[test]
    fn each_malformation_has_its_reason() {
        let u = udp_frame();
        assert_eq!(classify_v(&u[..10]), Err(DropReason::EthTruncated));
        assert_eq!(classify_v(&u[..30]), Err(DropReason::Ip4Truncated));
        let mut v = u.clone();
        v[14] = 0x35; // version 3
        assert_eq!(classify_v(&v), Err(DropReason::Ip4Malformed));
        let mut v = u.clone();
        v[24] ^= 0xff; // checksum
        assert_eq!(classify_v(&v), Err(DropReason::Ip4BadChecksum));
        // The NIC's verdict, when it gave one, replaces the software check.
        let mut m = Meta::default();
        assert!(classify(&v, &mut m, RxChecksum::Good).is_ok());
        assert_eq!(
            classify(&u, &mut m, RxChecksum::Bad),
            Err(DropReason::Ip4BadChecksum)
        );
        let mut v = u.clone();
        v[38..40].copy_from_slice(&4u16.to_be_bytes()); // UDP length 4
        assert_eq!(classify_v(&v), Err(DropReason::UdpBadLength));
        let mut v = u.clone();
        v[38..40].copy_from_slice(&400u16.to_be_bytes());
        assert_eq!(classify_v(&v), Err(DropReason::UdpTruncated));
        let t = tcp_frame();
        let mut v = t.clone();
        v[46] = 0x30; // data offset 3
        assert_eq!(classify_v(&v), Err(DropReason::TcpBadOffset));
        // IPv4 total length cut to 30: the TCP header no longer fits.
        let mut v = t.clone();
        v[16..18].copy_from_slice(&30u16.to_be_bytes());
        let mut ip = ipv4::Packet::new_unchecked(&mut v[14..]);
        ip.fill_checksum();
        assert_eq!(classify_v(&v), Err(DropReason::TcpTruncated));
    }

    #[test]
    fn arp_and_vlan() {
        let mut arp_frame = vec![0xff; 6];
        arp_frame.extend_from_slice(&[0x0a, 0x58, 0, 0, 0, 2, 0x08, 0x06]);
        arp_frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp_frame.extend_from_slice(&[0x0a, 0x58, 0, 0, 0, 2, 10, 244, 0, 2]);
        arp_frame.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 244, 0, 3]);
        assert_eq!(classify_v(&arp_frame), Ok(None));
        assert_eq!(classify_v(&arp_frame[..30]), Err(DropReason::ArpTruncated));
        let mut bad = arp_frame.clone();
        bad[15] = 6; // hardware type 6
        assert_eq!(classify_v(&bad), Err(DropReason::ArpMalformed));
        // The UDP frame with a VLAN tag.
        let u = udp_frame();
        let mut v = u[..12].to_vec();
        v.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        v.extend_from_slice(&u[12..]);
        let mut m = Meta::default();
        assert!(classify(&v, &mut m, RxChecksum::Unknown).is_ok());
        assert_eq!((m.vlan, m.l3), (7, 18));
        assert_eq!(classify_v(&v[..16]), Err(DropReason::VlanMalformed));
    }

    #[test]
    fn ipv6_is_bridged_opaque() {
        let mut v = vec![0x33, 0x33, 0, 0, 0, 1, 0x0a, 0x58, 0, 0, 0, 2, 0x86, 0xdd];
        v.extend_from_slice(&[0x60; 40]);
        assert_eq!(classify_v(&v), Ok(None));
    }

    #[test]
    fn fast_path_takes_plain_tcp_and_udp_only() {
        let mut m = Meta::default();
        for mut v in [udp_frame(), tcp_frame()] {
            v.resize(60, 0);
            assert!(classify_fast(&v, &mut m, RxChecksum::Unknown).is_some());
            v[24] ^= 1; // a bad checksum: the general parse names the drop
            assert!(classify_fast(&v, &mut m, RxChecksum::Unknown).is_none());
        }
        let mut v = udp_frame();
        v.resize(60, 0);
        v[20] = 0x20; // more fragments
        assert!(classify_fast(&v, &mut m, RxChecksum::Good).is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Wherever the fast path answers, the general parse gives the same answer and
        /// the same metadata (on TCP/UDP frames with random edits in their headers).
        #[test]
        fn fast_path_agrees_with_the_general_parse(
            tcp in proptest::bool::ANY,
            edits in proptest::collection::vec((0usize..60, proptest::num::u8::ANY), 0..4),
            cut in 0usize..70,
            flag in 0u8..3,
        ) {
            let mut v = if tcp { tcp_frame() } else { udp_frame() };
            v.resize(v.len().max(60), 0); // Ethernet padding
            for (at, b) in edits {
                if at < v.len() {
                    v[at] = b;
                }
            }
            v.truncate(v.len().saturating_sub(cut % 8));
            let csum = [RxChecksum::Unknown, RxChecksum::Good, RxChecksum::Bad][usize::from(flag)];
            let (mut a, mut b) = (Meta::default(), Meta::default());
            if let Some(t) = classify_fast(&v, &mut a, csum) {
                proptest::prop_assert_eq!(classify_general(&v, &mut b, csum), Ok(Some(t)));
                proptest::prop_assert_eq!(
                    (a.l3, a.l4, a.ethertype, a.vlan, a.proto),
                    (b.l3, b.l4, b.ethertype, b.vlan, b.proto)
                );
            }
        }
    }
}

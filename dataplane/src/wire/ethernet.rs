//! Ethernet II frames and 802.1Q / 802.1ad VLAN tags.
use core::fmt;

use super::{get_u16, set_u16, Error, Field, Result};

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The first six bytes of `b` (which has them: callers checked the header).
    #[inline(always)]
    pub fn from_bytes(b: &[u8]) -> MacAddr {
        let mut a = [0u8; 6];
        a.copy_from_slice(&b[..6]);
        MacAddr(a)
    }
    /// Group (multicast or broadcast) addresses have the I/G bit set.
    #[inline(always)]
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }
    /// The address as a u64 (for compact table keys).
    pub fn as_u64(&self) -> u64 {
        let a = self.0;
        u64::from_be_bytes([0, 0, a[0], a[1], a[2], a[3], a[4], a[5]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let a = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            a[0], a[1], a[2], a[3], a[4], a[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl core::str::FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> core::result::Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "{s:?} is not a MAC address (want six hex bytes, aa:bb:cc:dd:ee:ff)"
            ));
        }
        let mut a = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            a[i] = u8::from_str_radix(p, 16)
                .map_err(|_| format!("{s:?} is not a MAC address: {p:?} is not a hex byte"))?;
        }
        Ok(MacAddr(a))
    }
}

/// EtherType values we act on; others are kept as `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtherType {
    Ipv4,
    Arp,
    Vlan,
    QinQ,
    Ipv6,
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x8100 => EtherType::Vlan,
            0x88a8 => EtherType::QinQ,
            0x86dd => EtherType::Ipv6,
            x => EtherType::Unknown(x),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(v: EtherType) -> u16 {
        match v {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Vlan => 0x8100,
            EtherType::QinQ => 0x88a8,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(x) => x,
        }
    }
}

mod field {
    use super::Field;
    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const PAYLOAD: usize = 14;
    // A VLAN tag, counted from the start of the tag (after the outer EtherType).
    pub const TCI: Field = 0..2;
    pub const INNER_TYPE: Field = 2..4;
}

pub const HEADER_LEN: usize = field::PAYLOAD;
pub const VLAN_TAG_LEN: usize = 4;

/// A view of an Ethernet II frame.
#[derive(Debug)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }
    pub fn new_checked(buffer: T) -> Result<Frame<T>> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }
    pub fn into_inner(self) -> T {
        self.buffer
    }
    pub fn dst_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::DST])
    }
    pub fn src_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::SRC])
    }
    pub fn ethertype(&self) -> EtherType {
        get_u16(self.buffer.as_ref(), field::ETHERTYPE).into()
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst_addr(&mut self, a: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.0);
    }
    pub fn set_src_addr(&mut self, a: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.0);
    }
    pub fn set_ethertype(&mut self, t: EtherType) {
        set_u16(self.buffer.as_mut(), field::ETHERTYPE, t.into());
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// The Ethernet header as meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: MacAddr,
    pub dst: MacAddr,
    pub ethertype: EtherType,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(f: &Frame<T>) -> Result<Repr> {
        f.check_len()?;
        Ok(Repr {
            src: f.src_addr(),
            dst: f.dst_addr(),
            ethertype: f.ethertype(),
        })
    }
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, f: &mut Frame<T>) {
        f.set_src_addr(self.src);
        f.set_dst_addr(self.dst);
        f.set_ethertype(self.ethertype);
    }
}

/// The result of walking an Ethernet header and up to two VLAN tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Info {
    /// Offset of the L3 header.
    pub l3_offset: usize,
    /// The EtherType after the tags.
    pub ethertype: EtherType,
    /// The outermost VLAN id, 0 when untagged.
    pub vlan: u16,
}

/// Walks the Ethernet header and 802.1Q/802.1ad tags (at most two) of `frame`.
pub fn parse_l2(frame: &[u8]) -> Result<L2Info> {
    if frame.len() < HEADER_LEN {
        return Err(Error::Truncated);
    }
    let mut ethertype = EtherType::from(get_u16(frame, field::ETHERTYPE));
    let mut off = HEADER_LEN;
    let mut vlan = 0u16;
    let mut tags = 0;
    while matches!(ethertype, EtherType::Vlan | EtherType::QinQ) {
        if tags == 2 {
            return Err(Error::Malformed);
        }
        let tag = frame.get(off..off + VLAN_TAG_LEN).ok_or(Error::Truncated)?;
        if tags == 0 {
            vlan = get_u16(tag, field::TCI) & 0x0fff;
        }
        ethertype = EtherType::from(get_u16(tag, field::INNER_TYPE));
        off += VLAN_TAG_LEN;
        tags += 1;
    }
    Ok(L2Info {
        l3_offset: off,
        ethertype,
        vlan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // An ARP request captured on a veth: ff:ff:.. <- 0a:58:0a:f4:00:02, type 0x0806.
    const ARP_FRAME_HDR: [u8; 14] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x02, 0x08, 0x06,
    ];

    #[test]
    fn parse_and_emit_round_trip() {
        let f = Frame::new_checked(&ARP_FRAME_HDR[..]).unwrap();
        let r = Repr::parse(&f).unwrap();
        assert!(r.dst.is_broadcast());
        assert_eq!(r.src.to_string(), "0a:58:0a:f4:00:02");
        assert_eq!(r.ethertype, EtherType::Arp);
        let mut out = [0u8; 14];
        r.emit(&mut Frame::new_unchecked(&mut out[..]));
        assert_eq!(out, ARP_FRAME_HDR);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            Frame::new_checked(&ARP_FRAME_HDR[..13]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            parse_l2(&ARP_FRAME_HDR[..13]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn vlan_tags() {
        let mut f = ARP_FRAME_HDR.to_vec();
        f[12..14].copy_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&[0x20, 0x64, 0x08, 0x00]); // prio 1, vid 100, then IPv4
        let l2 = parse_l2(&f).unwrap();
        assert_eq!(
            (l2.l3_offset, l2.vlan, l2.ethertype),
            (18, 100, EtherType::Ipv4)
        );
        // Tag cut short.
        assert_eq!(parse_l2(&f[..16]).unwrap_err(), Error::Truncated);
        // Three tags are refused.
        let mut g = ARP_FRAME_HDR.to_vec();
        g[12..14].copy_from_slice(&[0x88, 0xa8]);
        g.extend_from_slice(&[0, 1, 0x81, 0x00, 0, 2, 0x81, 0x00, 0, 3, 0x08, 0x00]);
        assert_eq!(parse_l2(&g).unwrap_err(), Error::Malformed);
    }

    #[test]
    fn mac_parse() {
        assert_eq!("0a:58:0a:f4:00:02".parse::<MacAddr>().unwrap().0[5], 2);
        assert!("0a:58".parse::<MacAddr>().is_err());
        assert!("zz:58:0a:f4:00:02".parse::<MacAddr>().is_err());
    }
}

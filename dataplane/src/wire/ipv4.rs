//! IPv4 headers (RFC 791), options included.
use core::fmt;

use super::{checksum, get_u16, set_u16, Error, Field, Result};

/// An IPv4 address, in network byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Ipv4Addr(pub [u8; 4]);

impl Ipv4Addr {
    pub const UNSPECIFIED: Ipv4Addr = Ipv4Addr([0; 4]);
    pub fn from_bytes(b: &[u8]) -> Ipv4Addr {
        Ipv4Addr([b[0], b[1], b[2], b[3]])
    }
    pub fn to_u32(self) -> u32 {
        u32::from_be_bytes(self.0)
    }
    pub fn from_u32(v: u32) -> Ipv4Addr {
        Ipv4Addr(v.to_be_bytes())
    }
}

impl fmt::Display for Ipv4Addr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let a = self.0;
        write!(f, "{}.{}.{}.{}", a[0], a[1], a[2], a[3])
    }
}

impl fmt::Debug for Ipv4Addr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<std::net::Ipv4Addr> for Ipv4Addr {
    fn from(a: std::net::Ipv4Addr) -> Self {
        Ipv4Addr(a.octets())
    }
}

/// IP protocol numbers we act on; others kept as `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    Icmp,
    Tcp,
    Udp,
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(v: u8) -> Self {
        match v {
            1 => IpProtocol::Icmp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            x => IpProtocol::Unknown(x),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(v: IpProtocol) -> u8 {
        match v {
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Unknown(x) => x,
        }
    }
}

mod field {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

pub const HEADER_LEN: usize = 20;
const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;

/// A view of an IPv4 packet. `new_checked` verifies version, header length, total
/// length against the buffer (trailing Ethernet padding is allowed) and the options
/// list; the checksum is checked separately ([`Packet::verify_checksum`]).
#[derive(Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 {
            return Err(Error::Malformed);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(Error::Malformed);
        }
        let total = usize::from(self.total_len());
        if total < hl {
            return Err(Error::Malformed);
        }
        if b.len() < hl || b.len() < total {
            return Err(Error::Truncated);
        }
        check_options(&b[HEADER_LEN..hl])
    }
    pub fn into_inner(self) -> T {
        self.buffer
    }
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }
    pub fn total_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }
    pub fn ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::IDENT)
    }
    pub fn dont_frag(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }
    pub fn more_frags(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (get_u16(self.buffer.as_ref(), field::FLG_OFF) & 0x1fff) * 8
    }
    /// True for any fragment (first, middle or last).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }
    pub fn protocol(&self) -> IpProtocol {
        self.buffer.as_ref()[field::PROTOCOL].into()
    }
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from_bytes(&self.buffer.as_ref()[field::SRC])
    }
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from_bytes(&self.buffer.as_ref()[field::DST])
    }
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::header_sum(
            &self.buffer.as_ref()[..self.header_len()],
        )) == 0xffff
    }
    /// The payload, up to the total length (Ethernet padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_tos(&mut self, v: u8) {
        self.buffer.as_mut()[field::TOS] = v;
    }
    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }
    pub fn set_checksum(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.0);
    }
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.0);
    }
    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = !checksum::fold(checksum::header_sum(
            &self.buffer.as_ref()[..self.header_len()],
        ));
        self.set_checksum(c);
    }
    /// Decrements the TTL, updating the checksum incrementally (RFC 1624). One
    /// bounds check for the fixed header, then fixed offsets.
    #[inline]
    pub fn decrement_ttl(&mut self) {
        let Some(h) = self
            .buffer
            .as_mut()
            .get_mut(..HEADER_LEN)
            .and_then(|h| <&mut [u8; HEADER_LEN]>::try_from(h).ok())
        else {
            return;
        };
        let (ttl, proto) = (h[field::TTL], h[field::PROTOCOL]);
        let old = u16::from_be_bytes([ttl, proto]);
        let ttl = ttl.wrapping_sub(1);
        let new = u16::from_be_bytes([ttl, proto]);
        let c = checksum::update16(get_u16(h, field::CHECKSUM), old, new);
        h[field::TTL] = ttl;
        set_u16(h, field::CHECKSUM, c);
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, tl) = (self.header_len(), usize::from(self.total_len()));
        &mut self.buffer.as_mut()[hl..tl]
    }
}

/// Walks an options list: EOL (0) ends it, NOP (1) is one byte, every other option
/// has a length byte of at least 2 that stays inside the header.
fn check_options(opts: &[u8]) -> Result<()> {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => return Ok(()),
            1 => i += 1,
            _ => {
                let len = usize::from(*opts.get(i + 1).ok_or(Error::Options)?);
                if len < 2 || i + len > opts.len() {
                    return Err(Error::Options);
                }
                i += len;
            }
        }
    }
    Ok(())
}

/// The fixed IPv4 header as meaning (no options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: IpProtocol,
    pub payload_len: usize,
    pub ttl: u8,
    pub ident: u16,
    pub dont_frag: bool,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        p.check_len()?;
        if !p.verify_checksum() {
            return Err(Error::Checksum);
        }
        Ok(Repr {
            src: p.src_addr(),
            dst: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: usize::from(p.total_len()) - p.header_len(),
            ttl: p.ttl(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
        })
    }
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }
    /// Writes a 20-byte header with a correct checksum.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        let total = u16::try_from(HEADER_LEN + self.payload_len).unwrap_or(u16::MAX);
        let b = p.buffer.as_mut();
        b[field::VER_IHL] = 0x45;
        b[field::TOS] = 0;
        set_u16(b, field::LENGTH, total);
        set_u16(b, field::IDENT, self.ident);
        set_u16(b, field::FLG_OFF, if self.dont_frag { FLAG_DF } else { 0 });
        b[field::TTL] = self.ttl;
        b[field::PROTOCOL] = self.protocol.into();
        b[field::SRC].copy_from_slice(&self.src.0);
        b[field::DST].copy_from_slice(&self.dst.0);
        p.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An ICMP echo request 10.244.0.2 -> 10.244.0.3 as ping sends it (header only,
    // total length 84), as the kernel builds it.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x54, 0x5c, 0x3a, 0x40, 0x00, 0x40, 0x01, 0xc8, 0x82, 0x0a, 0xf4, 0x00,
        0x02, 0x0a, 0xf4, 0x00, 0x03,
    ];

    fn packet() -> Vec<u8> {
        let mut v = HDR.to_vec();
        v.resize(84, 0xab);
        v
    }

    #[test]
    fn parse_captured() {
        let b = packet();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        let r = Repr::parse(&p).unwrap();
        assert_eq!(r.src, Ipv4Addr([10, 244, 0, 2]));
        assert_eq!(r.dst, Ipv4Addr([10, 244, 0, 3]));
        assert_eq!(r.protocol, IpProtocol::Icmp);
        assert_eq!(r.payload_len, 64);
        assert!(r.dont_frag);
        assert_eq!(p.payload().len(), 64);
    }

    #[test]
    fn emit_round_trip() {
        let b = packet();
        let r = Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap();
        let mut out = [0u8; 20];
        r.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, HDR);
    }

    #[test]
    fn malformed_headers() {
        let b = packet();
        assert_eq!(Packet::new_checked(&b[..19]).unwrap_err(), Error::Truncated);
        assert_eq!(Packet::new_checked(&b[..83]).unwrap_err(), Error::Truncated);
        let mut v = b.clone();
        v[0] = 0x65;
        assert_eq!(Packet::new_checked(&v[..]).unwrap_err(), Error::Malformed);
        let mut v = b.clone();
        v[0] = 0x44; // IHL 4
        assert_eq!(Packet::new_checked(&v[..]).unwrap_err(), Error::Malformed);
        let mut v = b.clone();
        v[2..4].copy_from_slice(&[0, 10]); // total length below header length
        assert_eq!(Packet::new_checked(&v[..]).unwrap_err(), Error::Malformed);
        let mut v = b.clone();
        v[11] ^= 1;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&v[..]).unwrap()).unwrap_err(),
            Error::Checksum
        );
    }

    #[test]
    fn options() {
        // IHL 6 with a router-alert option (148, len 4).
        let mut v = packet();
        v[0] = 0x46;
        v.splice(20..20, [148u8, 4, 0, 0]);
        v[2..4].copy_from_slice(&88u16.to_be_bytes());
        let mut p = Packet::new_checked(&mut v[..]).unwrap();
        p.fill_checksum();
        assert_eq!(p.options(), &[148, 4, 0, 0]);
        assert_eq!(p.payload().len(), 64);
        // Option length running past the header.
        let mut w = v.clone();
        w[21] = 9;
        assert_eq!(Packet::new_checked(&w[..]).unwrap_err(), Error::Options);
        // Option length below 2.
        w[21] = 1;
        assert_eq!(Packet::new_checked(&w[..]).unwrap_err(), Error::Options);
        // NOP, NOP, EOL is fine.
        w[20..24].copy_from_slice(&[1, 1, 0, 0]);
        assert!(Packet::new_checked(&w[..]).is_ok());
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut b = packet();
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.decrement_ttl();
        assert_eq!(p.ttl(), 63);
        assert!(p.verify_checksum());
    }
}

//! UDP headers (RFC 768).
use super::{checksum, get_u16, set_u16, Error, Field, Ipv4Addr, Result};

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

pub const HEADER_LEN: usize = 8;

/// A view of a UDP datagram; `new_checked` verifies that the length field is at least
/// the header and fits the buffer.
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
        let n = self.buffer.as_ref().len();
        if n < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = usize::from(self.len());
        if len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len > n {
            return Err(Error::Truncated);
        }
        Ok(())
    }
    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT)
    }
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT)
    }
    pub fn len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
    /// Verifies the checksum against the IPv4 pseudo-header (0 means "none").
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let d = &self.buffer.as_ref()[..usize::from(self.len())];
        checksum::fold(checksum::pseudo_header(src.0, dst.0, 17, self.len()) + checksum::sum(d))
            == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::SRC_PORT, v);
    }
    pub fn set_dst_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::DST_PORT, v);
    }
    pub fn set_len(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH, v);
    }
    pub fn set_checksum(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }
    /// Computes the checksum over the pseudo-header and the datagram.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let len = self.len();
        let d = &self.buffer.as_ref()[..usize::from(len)];
        let c = !checksum::fold(checksum::pseudo_header(src.0, dst.0, 17, len) + checksum::sum(d));
        // A computed 0 is sent as all ones (RFC 768).
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A DNS query header 10.244.0.2:53000 -> 10.96.0.10:53 with a 4-byte payload.
    fn datagram() -> Vec<u8> {
        let mut v = vec![0xcf, 0x08, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, 1, 2, 3, 4];
        let mut p = Packet::new_unchecked(&mut v[..]);
        p.fill_checksum(Ipv4Addr([10, 244, 0, 2]), Ipv4Addr([10, 96, 0, 10]));
        v
    }

    #[test]
    fn parse() {
        let v = datagram();
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (53000, 53, 12));
        assert_eq!(p.payload(), &[1, 2, 3, 4]);
        assert!(p.verify_checksum(Ipv4Addr([10, 244, 0, 2]), Ipv4Addr([10, 96, 0, 10])));
        assert!(!p.verify_checksum(Ipv4Addr([10, 244, 0, 3]), Ipv4Addr([10, 96, 0, 10])));
    }

    #[test]
    fn bad_lengths() {
        let v = datagram();
        assert_eq!(Packet::new_checked(&v[..7]).unwrap_err(), Error::Truncated);
        assert_eq!(Packet::new_checked(&v[..11]).unwrap_err(), Error::Truncated);
        let mut w = v.clone();
        w[5] = 7;
        assert_eq!(Packet::new_checked(&w[..]).unwrap_err(), Error::Malformed);
    }
}

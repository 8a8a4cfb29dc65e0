//! VXLAN headers (RFC 7348): 8 bytes after the outer UDP header.
use super::{Error, Result};

mod field {
    pub const FLAGS: usize = 0;
    pub const VNI: core::ops::Range<usize> = 4..7;
}

pub const HEADER_LEN: usize = 8;
/// Outer Ethernet + IPv4 + UDP + VXLAN.
pub const OVERHEAD: usize = 14 + 20 + 8 + HEADER_LEN;
/// The I flag: the VNI is valid.
const FLAG_I: u8 = 0x08;

/// A view of a VXLAN header; `new_checked` requires the I flag.
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
        if p.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if p.flags() & FLAG_I == 0 {
            return Err(Error::Malformed);
        }
        Ok(p)
    }
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    pub fn vni(&self) -> u32 {
        let v = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, v[0], v[1], v[2]])
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes a header with the I flag and `vni` (24 bits).
    pub fn emit(&mut self, vni: u32) {
        let b = self.buffer.as_mut();
        b[..HEADER_LEN].fill(0);
        b[field::FLAGS] = FLAG_I;
        let v = vni.to_be_bytes();
        b[field::VNI].copy_from_slice(&v[1..4]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A VXLAN header as the Linux vxlan device sends it for VNI 1 (flannel's).
    const HDR: [u8; 8] = [0x08, 0, 0, 0, 0, 0, 0x01, 0];

    #[test]
    fn parse_emit() {
        let p = Packet::new_checked(&HDR[..]).unwrap();
        assert_eq!(p.vni(), 1);
        let mut out = [0xffu8; 8];
        Packet::new_unchecked(&mut out[..]).emit(1);
        assert_eq!(out, HDR);
        let mut big = [0u8; 8];
        Packet::new_unchecked(&mut big[..]).emit(0x00ab_cdef);
        assert_eq!(Packet::new_checked(&big[..]).unwrap().vni(), 0xabcdef);
    }

    #[test]
    fn bad_headers() {
        assert_eq!(
            Packet::new_checked(&HDR[..7]).unwrap_err(),
            Error::Truncated
        );
        let mut no_i = HDR;
        no_i[0] = 0;
        assert_eq!(
            Packet::new_checked(&no_i[..]).unwrap_err(),
            Error::Malformed
        );
    }
}

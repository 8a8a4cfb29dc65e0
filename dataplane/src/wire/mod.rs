//! Packet formats: zero-copy views over byte buffers, in the shape of smoltcp's `wire`.
//!
//! Each protocol has a `Packet<T: AsRef<[u8]>>` view whose accessors read fixed byte
//! ranges (a private `field` module) and whose setters (on `T: AsMut<[u8]>`) rewrite
//! them in place, plus a small `Copy` `Repr` where building or comparing headers needs
//! one. Panic contract: `new_checked` proves the buffer long enough for every accessor
//! of that view; `new_unchecked` is for buffers we have already checked or emit into.
//! No `unsafe`, no pointer casts.
pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod ipv4;
pub mod tcp;
pub mod udp;
pub mod vxlan;

pub use ethernet::{EtherType, MacAddr};
pub use ipv4::{IpProtocol, Ipv4Addr};

/// Why a buffer is not a valid packet of a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the header (or than the length the header claims).
    Truncated,
    /// A field holds a value the format forbids (version, header length, ...).
    Malformed,
    /// The checksum does not verify.
    Checksum,
    /// IPv4 options are not a well-formed list.
    Options,
}

pub type Result<T> = core::result::Result<T, Error>;

pub(crate) type Field = core::ops::Range<usize>;

#[inline(always)]
pub(crate) fn get_u16(b: &[u8], f: Field) -> u16 {
    let s = &b[f];
    u16::from_be_bytes([s[0], s[1]])
}

#[inline(always)]
pub(crate) fn get_u32(b: &[u8], f: Field) -> u32 {
    let s = &b[f];
    u32::from_be_bytes([s[0], s[1], s[2], s[3]])
}

#[inline(always)]
pub(crate) fn set_u16(b: &mut [u8], f: Field, v: u16) {
    b[f].copy_from_slice(&v.to_be_bytes());
}

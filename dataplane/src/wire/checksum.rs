//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// One's-complement sum of `data` as big-endian 16-bit words, not yet folded or
/// inverted (an odd last byte is padded with zero).
pub fn sum(data: &[u8]) -> u32 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]))
            + u64::from(u16::from_be_bytes([c[2], c[3]]))
            + u64::from(u16::from_be_bytes([c[4], c[5]]))
            + u64::from(u16::from_be_bytes([c[6], c[7]]));
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = rest.remainder() {
        acc += u64::from(u16::from_be_bytes([*b, 0]));
    }
    fold64(acc)
}

/// `sum` of a 20-byte IPv4 header (no options), as five 32-bit words: the one's
/// complement sum folds the same whether words are 16 or 32 bits wide (RFC 1071).
#[inline]
pub fn sum20(h: &[u8; 20]) -> u32 {
    let w = |i: usize| u64::from(u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    fold64(w(0) + w(4) + w(8) + w(12) + w(16))
}

/// `sum` of an IPv4 header: the 32-bit-word sum for the usual 20 bytes.
#[inline]
pub fn header_sum(h: &[u8]) -> u32 {
    match <&[u8; 20]>::try_from(h) {
        Ok(h20) => sum20(h20),
        Err(_) => sum(h),
    }
}

fn fold64(mut acc: u64) -> u32 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // acc <= 0xffff here.
    u32::from(u16::try_from(acc).unwrap_or(0xffff))
}

/// Folds a 32-bit partial sum to 16 bits. Two end-around carries always suffice: the
/// first leaves at most 0x1fffe, the second at most 0xffff.
#[inline]
pub fn fold(acc: u32) -> u16 {
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    u16::try_from(acc).unwrap_or(0xffff)
}

/// RFC 1624 in two steps, so that one changed field updates several checksums (an
/// address is in both the IPv4 header's and the TCP/UDP pseudo-header's): the change
/// from `old` to `new` of a 32-bit field, as a partial sum...
#[inline]
pub fn delta32(old: u32, new: u32) -> u32 {
    let o = !old;
    (o >> 16) + (o & 0xffff) + (new >> 16) + (new & 0xffff)
}

/// ... the same for a 16-bit field ...
#[inline]
pub fn delta16(old: u16, new: u16) -> u32 {
    u32::from(!old) + u32::from(new)
}

/// ... and the checksum after such changes (eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline]
pub fn apply(check: u16, delta: u32) -> u16 {
    !fold(u32::from(!check) + delta)
}

/// The checksum field value for `data` (whose checksum field must be zero).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// True when `data` (checksum field included) verifies.
pub fn verify(data: &[u8]) -> bool {
    fold(sum(data)) == 0xffff
}

/// Pseudo-header sum for TCP/UDP over IPv4.
pub fn pseudo_header(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u32 {
    sum(&src) + sum(&dst) + u32::from(proto) + u32::from(len)
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit word changed from `old` to `new`.
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    apply(check, delta16(old, new))
}

/// RFC 1624 for a 32-bit field (an IPv4 address) changed from `old` to `new`.
#[inline]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    apply(check, delta32(old, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // The example of RFC 1071 section 3: sum of 0001 f203 f4f5 f6f7 = ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12]), 0x1200);
        assert_eq!(sum(&[0xab, 0xcd, 0x12]), 0xabcd + 0x1200);
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut hdr = [
            0x45u8, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 10, 244, 0, 2, 1, 1, 1, 1,
        ];
        let c = checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(verify(&hdr));
        let old = u32::from_be_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
        let new = u32::from_be_bytes([192, 168, 77, 11]);
        hdr[12..16].copy_from_slice(&new.to_be_bytes());
        let inc = update32(c, old, new);
        hdr[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(inc, checksum(&hdr));
    }

    proptest::proptest! {
        #[test]
        fn sum20_folds_like_sum(h in proptest::array::uniform20(proptest::num::u8::ANY)) {
            proptest::prop_assert_eq!(fold(sum20(&h)), fold(sum(&h)));
        }
    }

    #[test]
    fn sum20_edges() {
        for h in [
            [0u8; 20],
            [0xff; 20],
            [
                0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
            ],
        ] {
            assert_eq!(fold(sum20(&h)), fold(sum(&h)));
        }
    }

    proptest::proptest! {
        #[test]
        fn deltas_match_chained_updates(c: u16, a: u32, b: u32, p: u16, q: u16) {
            let chained = update16(update32(c, a, b), p, q);
            proptest::prop_assert_eq!(apply(c, delta32(a, b) + delta16(p, q)), chained);
        }
    }
}

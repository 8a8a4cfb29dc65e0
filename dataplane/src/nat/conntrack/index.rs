//! The connection index: tuple -> (entry, direction), in DPDK `rte_hash`'s shape.
//! A bucket is one cache line of 8 16-bit signatures and 8 values; a key has two
//! candidate buckets (the second derived from its signature), and the keys
//! themselves are not stored: the slab is the key store, so a signature match is
//! confirmed against the entry the stage reads next anyway. A lookup then touches
//! one bucket line and the entry's line, and a stage can prefetch a vector's buckets
//! before it looks any up (`prefetch`), so their misses overlap.
//!
//! The hash is seeded per table (a random seed at start), and a key whose two
//! buckets are both full goes to a small overflow map (hashbrown, itself
//! DoS-resistant): crafted tuples can slow their own lookups, not break the table.
use super::{Dir, Tuple};

const WAYS: usize = 8;

/// One cache line: 8 signatures (0 = empty) and 8 values (`entry << 1 | reply`).
/// Scanned lane by lane: at half load a bucket holds a few keys and a hit is
/// mostly in its first lanes (a SWAR compare of all eight cost more here).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    sig: [u16; WAYS],
    val: [u32; WAYS],
}

const EMPTY: Bucket = Bucket {
    sig: [0; WAYS],
    val: [0; WAYS],
};

/// A tuple's signature and its two buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hash {
    sig: u16,
    b1: u32,
    b2: u32,
}

pub struct Index {
    buckets: Vec<Bucket>,
    mask: usize,
    seed: u64,
    overflow: hashbrown::HashMap<Tuple, u32>,
    len: usize,
}

/// The signature lanes of a bucket as a bit mask, bit `w` for lane `w`: those
/// holding `sig`, or the empty ones (`sig` 0). Exact per lane (no borrow between
/// lanes): SWAR over two 64-bit words of four 16-bit lanes. An insert needs both
/// masks of both buckets; a lookup scans lane by lane (at half load a hit is
/// mostly in the first lanes, which costs less than the masks).
#[inline(always)]
fn lanes_equal(sigs: &[u16; WAYS], sig: u16) -> u32 {
    const LOW15: u64 = 0x7fff_7fff_7fff_7fff;
    let pat = u64::from(sig) * 0x0001_0001_0001_0001;
    let mut m = 0u32;
    for half in 0..2 {
        let s = &sigs[half * 4..half * 4 + 4];
        let x = (u64::from(s[0])
            | u64::from(s[1]) << 16
            | u64::from(s[2]) << 32
            | u64::from(s[3]) << 48)
            ^ pat;
        // High bit of each lane set exactly where the lane is zero.
        let z = !(((x & LOW15).wrapping_add(LOW15)) | x | LOW15);
        // Gather the four lane bits (15, 31, 47, 63) into bits 48..51 with one
        // multiply: each lands on its own bit, no carries (the other products
        // fall below bit 36 or beyond 63).
        let g = ((z >> 15) & 0x0001_0001_0001_0001).wrapping_mul(0x0001_0002_0004_0008) >> 48 & 0xf;
        m |= u32::try_from(g).unwrap_or(0) << (half * 4);
    }
    m
}

#[inline(always)]
fn pack(i: u32, d: Dir) -> u32 {
    i << 1 | u32::from(d == Dir::Reply)
}

#[inline(always)]
fn unpack(v: u32) -> (u32, Dir) {
    (v >> 1, if v & 1 == 0 { Dir::Orig } else { Dir::Reply })
}

impl Index {
    /// Room for `keys` keys at half load or less.
    pub fn with_capacity(keys: usize) -> Index {
        let n = Self::buckets_for(keys);
        let seed = {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(0x0070_6f64_7061_7468_u64)
        };
        Index {
            buckets: vec![EMPTY; n],
            mask: n - 1,
            seed,
            overflow: hashbrown::HashMap::new(),
            len: 0,
        }
    }

    fn buckets_for(keys: usize) -> usize {
        (keys.saturating_mul(2) / WAYS).max(1).next_power_of_two()
    }

    /// The bytes `with_capacity(keys)` allocates (its buckets; the overflow map
    /// starts empty).
    pub fn bytes_for(keys: usize) -> usize {
        Self::buckets_for(keys) * std::mem::size_of::<Bucket>()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes this index allocated: its buckets, and the overflow map's table.
    pub fn allocation_size(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>() + self.overflow.allocation_size()
    }

    /// Keys in the overflow map (both their buckets were full).
    pub fn overflowed(&self) -> usize {
        self.overflow.len()
    }

    /// `t`'s signature and buckets: a stage computes it once per packet and passes
    /// it to the prefetches and the lookup.
    #[inline(always)]
    pub fn hash(&self, t: &Tuple) -> Hash {
        let (sig, b1, b2) = self.hash3(t);
        // Bucket counts are far below 2^32 (a reservation is at most 2^24 entries).
        Hash {
            sig,
            b1: u32::try_from(b1).unwrap_or(0),
            b2: u32::try_from(b2).unwrap_or(0),
        }
    }

    #[inline(always)]
    fn hash3(&self, t: &Tuple) -> (u16, usize, usize) {
        let a = (u64::from(t.src) << 32 | u64::from(t.dst)) ^ self.seed;
        let b = u64::from(t.sport) << 24 | u64::from(t.dport) << 8 | u64::from(t.proto);
        let mut h = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        h ^= h >> 29;
        h = h.wrapping_mul(0x1656_67B1_9E37_79F9);
        h ^= h >> 32;
        let sig = u16::try_from(h >> 48).unwrap_or(1).max(1);
        // The low bits pick the bucket (mask < 2^32, so the value fits any usize).
        let b1 = usize::try_from(h & self.mask as u64).unwrap_or(0);
        let b2 = (b1 ^ (usize::from(sig).wrapping_mul(0x5bd1_e995))) & self.mask;
        (sig, b1, b2)
    }

    /// Brings `t`'s first bucket towards the cache (a hint).
    #[inline(always)]
    pub fn prefetch(&self, h: &Hash) {
        crate::dpdk::prefetch_ref(&self.buckets[h.b1 as usize]);
    }

    /// The entry `t`'s first signature match names, unconfirmed: for prefetching
    /// that entry (the bucket should be in cache by then).
    #[inline(always)]
    pub fn candidate(&self, h: &Hash) -> Option<u32> {
        let bk = &self.buckets[h.b1 as usize];
        (0..WAYS)
            .find(|&w| bk.sig[w] == h.sig)
            .map(|w| unpack(bk.val[w]).0)
    }

    /// The value of `t`; `key` reads the tuple a value names from the slab.
    #[inline]
    pub fn get(&self, t: &Tuple, key: impl Fn(u32, Dir) -> Tuple) -> Option<(u32, Dir)> {
        self.get_hashed(t, &self.hash(t), key)
    }

    /// `get`, with `t`'s hash already computed.
    #[inline]
    pub fn get_hashed(
        &self,
        t: &Tuple,
        h: &Hash,
        key: impl Fn(u32, Dir) -> Tuple,
    ) -> Option<(u32, Dir)> {
        let (sig, b1, b2) = (h.sig, h.b1 as usize, h.b2 as usize);
        for b in [b1, b2] {
            let bk = &self.buckets[b];
            for w in 0..WAYS {
                if bk.sig[w] == sig {
                    let (i, d) = unpack(bk.val[w]);
                    if key(i, d) == *t {
                        return Some((i, d));
                    }
                }
            }
            if b1 == b2 {
                break;
            }
        }
        if self.overflow.is_empty() {
            return None;
        }
        self.overflow.get(t).map(|&v| unpack(v))
    }

    /// Maps `t` to `(i, d)`, replacing what it mapped to.
    pub fn insert(&mut self, t: Tuple, i: u32, d: Dir, key: impl Fn(u32, Dir) -> Tuple) {
        let h = self.hash(&t);
        self.insert_hashed(t, &h, i, d, key);
    }

    /// `insert`, with `t`'s hash already computed. Both buckets are searched for
    /// `t` (a stale key of an expired, unswept entry is replaced in place) by
    /// signature masks, and the first empty lane is taken.
    pub fn insert_hashed(
        &mut self,
        t: Tuple,
        h: &Hash,
        i: u32,
        d: Dir,
        key: impl Fn(u32, Dir) -> Tuple,
    ) {
        let (sig, b1, b2) = (h.sig, h.b1 as usize, h.b2 as usize);
        let v = pack(i, d);
        let mut free = None;
        for b in [b1, b2] {
            let bk = &mut self.buckets[b];
            let mut same = lanes_equal(&bk.sig, sig);
            while same != 0 {
                let w = same.trailing_zeros() as usize;
                same &= same - 1;
                let (oi, od) = unpack(bk.val[w]);
                if key(oi, od) == t {
                    bk.val[w] = v;
                    return;
                }
            }
            if free.is_none() {
                let empty = lanes_equal(&bk.sig, 0);
                if empty != 0 {
                    free = Some((b, empty.trailing_zeros() as usize));
                }
            }
            if b1 == b2 {
                break;
            }
        }
        // The overflow map is empty but for crafted collisions: not even hashed then.
        if !self.overflow.is_empty() {
            if let Some(old) = self.overflow.get_mut(&t) {
                *old = v;
                return;
            }
        }
        self.len += 1;
        match free {
            Some((b, w)) => {
                self.buckets[b].sig[w] = sig;
                self.buckets[b].val[w] = v;
            }
            None => {
                self.overflow.insert(t, v);
            }
        }
    }

    /// Maps `t`, which the caller just found absent (`get` gave None and nothing was
    /// inserted since), to `(i, d)`: the first empty lane of its buckets, without
    /// searching them for `t`.
    pub fn insert_absent(&mut self, t: Tuple, h: &Hash, i: u32, d: Dir) {
        let v = pack(i, d);
        let (b1, b2) = (h.b1 as usize, h.b2 as usize);
        self.len += 1;
        for b in [b1, b2] {
            let bk = &mut self.buckets[b];
            let empty = lanes_equal(&bk.sig, 0);
            if empty != 0 {
                let w = empty.trailing_zeros() as usize;
                bk.sig[w] = h.sig;
                bk.val[w] = v;
                return;
            }
        }
        self.overflow.insert(t, v);
    }

    /// Removes `t` when it maps to entry `i`; true when it did.
    pub fn remove_if(&mut self, t: &Tuple, i: u32, key: impl Fn(u32, Dir) -> Tuple) -> bool {
        let (sig, b1, b2) = self.hash3(t);
        for b in [b1, b2] {
            let bk = &mut self.buckets[b];
            for w in 0..WAYS {
                if bk.sig[w] == sig {
                    let (oi, od) = unpack(bk.val[w]);
                    if key(oi, od) == *t {
                        if oi != i {
                            return false;
                        }
                        bk.sig[w] = 0;
                        self.len -= 1;
                        return true;
                    }
                }
            }
        }
        match self.overflow.get(t) {
            Some(&v) if unpack(v).0 == i => {
                self.overflow.remove(t);
                self.len -= 1;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(n: u32) -> Tuple {
        Tuple {
            src: 0x0af4_0000 | (n & 0xff),
            dst: 0xc0a8_4d64,
            sport: u16::try_from(n >> 8 & 0xffff).unwrap(),
            dport: 53,
            proto: 17,
        }
    }

    fn keys(s: &[(Tuple, Tuple)]) -> impl Fn(u32, Dir) -> Tuple + '_ {
        move |i, d| match d {
            Dir::Orig => s[i as usize].0,
            Dir::Reply => s[i as usize].1,
        }
    }

    proptest! {
        /// Against a HashMap, over inserts, replacements and removals, in a table
        /// small enough that buckets fill and keys overflow.
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec((0u8..3, 0u32..600, 0u32..64), 1..800)) {
            // A slab of 64 entries, each with an orig and a reply tuple; the model
            // maps tuple -> (entry, dir) as the index must.
            let mut slab: Vec<(Tuple, Tuple)> = (0..64).map(|i| (t(10_000 + i), t(20_000 + i))).collect();
            let mut idx = Index::with_capacity(16);
            let mut model: std::collections::HashMap<Tuple, (u32, Dir)> = Default::default();
            for (op, k, e) in ops {
                let key = t(k);
                match op {
                    0 | 1 => {
                        // Entry e takes `key` as its orig (op 0) or reply (op 1).
                        let d = if op == 0 { Dir::Orig } else { Dir::Reply };
                        // An entry's old tuple leaves the model and the index first,
                        // as Conntrack unindexes before reuse.
                        let old = if op == 0 { slab[e as usize].0 } else { slab[e as usize].1 };
                        if model.get(&old) == Some(&(e, d)) {
                            let s = &slab;
                            let gone = idx.remove_if(&old, e, keys(s));
                            prop_assert!(gone);
                            model.remove(&old);
                        }
                        // The model's previous holder of `key` loses it (replaced).
                        if op == 0 { slab[e as usize].0 = key } else { slab[e as usize].1 = key }
                        if let Some(&(pe, pd)) = model.get(&key) {
                            // The previous holder no longer names it in the slab: drop it.
                            let still = if pd == Dir::Orig { slab[pe as usize].0 } else { slab[pe as usize].1 };
                            if still != key {
                                model.remove(&key);
                                // And the index must forget it too: it can no longer
                                // be confirmed against the slab.
                            }
                        }
                        let s = &slab;
                        idx.insert(key, e, d, keys(s));
                        model.insert(key, (e, d));
                    }
                    _ => {
                        let s = &slab;
                        let had = model.get(&key).copied();
                        let removed = idx.remove_if(&key, e, keys(s));
                        prop_assert_eq!(removed, had.is_some_and(|(i, _)| i == e));
                        if removed {
                            model.remove(&key);
                        }
                    }
                }
                let s = &slab;
                for (k, v) in &model {
                    let got = idx.get(k, keys(s));
                    prop_assert_eq!(got, Some(*v));
                }
                let none = idx.get(&t(999_999), keys(s));
                prop_assert_eq!(none, None);
            }
        }
    }

    #[test]
    fn lane_masks_are_exact() {
        let sigs = [0, 7, 0x8000, 7, 0xffff, 0, 1, 7];
        assert_eq!(lanes_equal(&sigs, 7), 0b1000_1010);
        assert_eq!(lanes_equal(&sigs, 0), 0b0010_0001);
        assert_eq!(lanes_equal(&sigs, 0x8000), 0b0000_0100);
        assert_eq!(lanes_equal(&sigs, 0xffff), 0b0001_0000);
        assert_eq!(lanes_equal(&sigs, 2), 0);
        // No borrow from a lane into the next: 0x0001 next to 0x0000.
        assert_eq!(lanes_equal(&[1, 0, 1, 0, 1, 0, 1, 0], 0), 0b1010_1010);
    }

    #[test]
    fn an_absent_key_goes_to_the_first_empty_lane_or_the_overflow() {
        // One bucket pair: 16 lanes, then the overflow map.
        let slab: Vec<Tuple> = (0..40).map(t).collect();
        let mut idx = Index::with_capacity(1);
        for i in 0..40u32 {
            let k = slab[i as usize];
            assert_eq!(idx.get(&k, |i, _| slab[i as usize]), None);
            let h = idx.hash(&k);
            idx.insert_absent(k, &h, i, Dir::Reply);
        }
        assert_eq!(idx.len(), 40);
        assert!(idx.overflowed() >= 40 - 2 * WAYS);
        for i in 0..40u32 {
            let k = slab[i as usize];
            assert_eq!(idx.get(&k, |i, _| slab[i as usize]), Some((i, Dir::Reply)));
            assert!(idx.remove_if(&k, i, |i, _| slab[i as usize]));
        }
        assert!(idx.is_empty());
    }

    #[test]
    fn overflow_takes_what_the_buckets_cannot() {
        // 1 bucket pair for 200 keys: most overflow, all are found.
        let slab: Vec<Tuple> = (0..200).map(t).collect();
        let mut idx = Index::with_capacity(1);
        for i in 0..200u32 {
            idx.insert(slab[i as usize], i, Dir::Orig, |i, _| slab[i as usize]);
        }
        assert_eq!(idx.len(), 200);
        assert!(idx.overflowed() >= 200 - 2 * WAYS);
        for i in 0..200u32 {
            assert_eq!(
                idx.get(&slab[i as usize], |i, _| slab[i as usize]),
                Some((i, Dir::Orig))
            );
        }
        for i in 0..200u32 {
            assert!(idx.remove_if(&slab[i as usize], i, |i, _| slab[i as usize]));
        }
        assert!(idx.is_empty());
    }
}

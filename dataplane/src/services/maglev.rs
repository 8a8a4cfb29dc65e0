//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime
//! size M in which every backend owns about M/N entries (weighted), and removing or
//! adding one backend moves only the entries that must move, plus few others. New
//! connections pick `table[hash(flow) % M]`; existing ones stay pinned by their
//! connection entry. Built off the fast path and published whole.

/// A backend: a stable key (e.g. "10.244.1.5:8080") and a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub key: String,
    pub weight: u32,
}

/// Default table size: a prime a little above 65 536 (so 1 000 backends get ~65
/// entries each, and disruption stays near the ideal).
pub const DEFAULT_SIZE: usize = 65_537;

/// FNV-1a, 64 bits, with a seed: stable across processes and versions (the table must
/// come out the same on every node and after every restart).
fn fnv(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x0100_0000_01b3);
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche (splitmix64), so nearby keys spread.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The lookup table: backend index per entry (u16::MAX when there are no backends).
/// Shared, not copied: a Service table rebuilt for a change to another Service
/// reuses this one (a reference count, not 1-260 thousand entries).
#[derive(Debug, Clone)]
pub struct Maglev {
    table: std::sync::Arc<[u16]>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error("table size {0} is not a prime")]
    NotPrime(usize),
    #[error("{backends} backends need a table of at least {needed} entries (size is {size})")]
    TooSmall {
        size: usize,
        backends: usize,
        needed: usize,
    },
    #[error("at most 65 535 backends")]
    TooManyBackends,
}

impl Maglev {
    /// Builds the table (the paper's population loop, weighted as Envoy does: a backend
    /// takes a turn in a round only while its share of entries is below its weight's).
    pub fn build(backends: &[Backend], size: usize) -> Result<Maglev, MaglevError> {
        if !is_prime(size) {
            return Err(MaglevError::NotPrime(size));
        }
        if backends.len() >= usize::from(u16::MAX) {
            return Err(MaglevError::TooManyBackends);
        }
        let live: Vec<(usize, &Backend)> = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.weight > 0)
            .collect();
        if live.is_empty() {
            return Ok(Maglev {
                table: vec![u16::MAX; size].into(),
            });
        }
        if size < live.len() * 10 {
            return Err(MaglevError::TooSmall {
                size,
                backends: live.len(),
                needed: live.len() * 10,
            });
        }
        let m = size;
        let m64 = size as u64;
        let perm: Vec<(usize, usize)> = live
            .iter()
            .map(|(_, b)| {
                let offset = usize::try_from(fnv(0x6d61_676c, b.key.as_bytes()) % m64).unwrap_or(0);
                let skip = usize::try_from(fnv(0x6c65_7621, b.key.as_bytes()) % (m64 - 1))
                    .unwrap_or(0)
                    + 1;
                (offset, skip)
            })
            .collect();
        let max_w = live.iter().map(|(_, b)| b.weight).max().unwrap_or(1) as f64;
        let mut next = vec![0usize; live.len()];
        let mut placed = vec![0u64; live.len()];
        let mut table = vec![u16::MAX; size];
        let mut filled = 0usize;
        let mut round = 0u64;
        while filled < size {
            round += 1;
            for (k, (idx, b)) in live.iter().enumerate() {
                // Weighted turns: stay at or below weight/max_weight of the rounds.
                if placed[k] as f64 >= round as f64 * f64::from(b.weight) / max_w {
                    continue;
                }
                let (offset, skip) = perm[k];
                let mut c = (offset + next[k] * skip) % m;
                while table[c] != u16::MAX {
                    next[k] += 1;
                    c = (offset + next[k] * skip) % m;
                }
                table[c] = u16::try_from(*idx).unwrap_or(u16::MAX);
                next[k] += 1;
                placed[k] += 1;
                filled += 1;
                if filled == size {
                    break;
                }
            }
        }
        Ok(Maglev {
            table: table.into(),
        })
    }

    /// The backend (index into the list given to `build`) for a flow hash.
    #[inline(always)]
    pub fn pick(&self, hash: u64) -> Option<u16> {
        let e = self.table[usize::try_from(hash % self.table.len() as u64).unwrap_or(0)];
        (e != u16::MAX).then_some(e)
    }

    /// Is this the very table `other` holds (shared by a rebuild, not a copy)?
    pub fn same_table(&self, other: &Maglev) -> bool {
        std::sync::Arc::ptr_eq(&self.table, &other.table)
    }

    pub fn size(&self) -> usize {
        self.table.len()
    }

    /// Entries per backend index (for tests and `podpathctl service show`).
    pub fn shares(&self, backends: usize) -> Vec<usize> {
        let mut v = vec![0; backends];
        for &e in self.table.iter() {
            if let Some(x) = v.get_mut(usize::from(e)) {
                *x += 1;
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<Backend> {
        (0..n)
            .map(|i| Backend {
                key: format!("10.244.{}.{}:8080", i / 250, 2 + i % 250),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn sizes_must_be_prime_and_large_enough() {
        assert_eq!(
            Maglev::build(&backends(3), 65_536).unwrap_err(),
            MaglevError::NotPrime(65_536)
        );
        assert!(matches!(
            Maglev::build(&backends(100), 251),
            Err(MaglevError::TooSmall { .. })
        ));
        let empty = Maglev::build(&[], 251).unwrap();
        assert_eq!(empty.pick(12345), None);
    }

    #[test]
    fn balance_is_even_give_or_take_one() {
        // Equal weights: population takes one entry per backend per round, so every
        // backend owns floor(M/N) or ceil(M/N) entries (docs/services.md says so).
        for (n, size) in [
            (3usize, DEFAULT_SIZE),
            (10, DEFAULT_SIZE),
            (100, DEFAULT_SIZE),
            (1000, DEFAULT_SIZE),
            (3, 251),
            (7, 1021),
            (40, 4093),
        ] {
            let t = Maglev::build(&backends(n), size).unwrap();
            let s = t.shares(n);
            let (lo, hi) = (size / n, size.div_ceil(n));
            let (min, max) = (*s.iter().min().unwrap(), *s.iter().max().unwrap());
            assert!(
                min >= lo && max <= hi,
                "n={n}, size={size}: shares {min}..{max}, want {lo}..{hi}"
            );
            assert_eq!(s.iter().sum::<usize>(), size);
        }
    }

    #[test]
    fn weights_are_honoured() {
        let mut b = backends(3);
        b[0].weight = 2;
        let t = Maglev::build(&b, DEFAULT_SIZE).unwrap();
        let s = t.shares(3);
        let r = s[0] as f64 / s[1] as f64;
        assert!((1.9..2.1).contains(&r), "{s:?}");
        b[2].weight = 0;
        let t = Maglev::build(&b, DEFAULT_SIZE).unwrap();
        assert_eq!(t.shares(3)[2], 0, "weight 0 gets nothing");
    }

    #[test]
    fn removing_a_backend_moves_little_else() {
        // Disruption: entries of the removed backend must move; of the rest, only a
        // small fraction (the paper measures a few percent at M = 65537).
        let n = 100;
        let all = backends(n);
        let before = Maglev::build(&all, DEFAULT_SIZE).unwrap();
        let mut fewer = all.clone();
        fewer.remove(42);
        let after = Maglev::build(&fewer, DEFAULT_SIZE).unwrap();
        let mut moved_others = 0;
        for e in 0..DEFAULT_SIZE {
            let b = &all[usize::from(before.table[e])].key;
            let a = &fewer[usize::from(after.table[e])].key;
            if b != a && *b != all[42].key {
                moved_others += 1;
            }
        }
        let frac = moved_others as f64 / DEFAULT_SIZE as f64;
        assert!(frac < 0.05, "{:.3} of the other entries moved", frac);
        // Adding one back restores the original table exactly.
        let again = Maglev::build(&all, DEFAULT_SIZE).unwrap();
        assert_eq!(again.table, before.table, "deterministic");
    }
}

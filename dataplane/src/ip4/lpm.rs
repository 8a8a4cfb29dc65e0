//! IPv4 longest-prefix match, DIR-24-8 (as DPDK's rte_lpm): a 2^24-entry first level
//! indexed by the top 24 bits, and 256-entry second-level groups for prefixes longer
//! than /24. A lookup is one or two memory reads. Entries are 32 bits: a flag for
//! "look in a group" and a next-hop id below 2^24. The first level takes 64 MiB of
//! address space, of which only the pages routes touch become memory.
//!
//! The table is built by the control thread from the route list ([`Lpm::build`]) and
//! published whole; workers only read it.

/// Next-hop ids are below this.
pub const MAX_NEXT_HOPS: u32 = 1 << 24;
const EXT: u32 = 1 << 31;
const EMPTY: u32 = 0;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LpmError {
    #[error("prefix length {0} is over 32")]
    BadLength(u8),
    #[error("next hop {0} is out of range (1..{MAX_NEXT_HOPS})")]
    BadNextHop(u32),
    #[error("too many prefixes longer than /24 (at most {0} /24 blocks may hold them)")]
    TooManyGroups(usize),
}

/// A route: prefix (host order), length, next-hop id (1-based; 0 means none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub prefix: u32,
    pub len: u8,
    pub next_hop: u32,
}

pub fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

pub struct Lpm {
    tbl24: Vec<u32>,
    tbl8: Vec<u32>,
    routes: usize,
}

impl Lpm {
    /// Second-level groups (each 1 KiB): /24 blocks that hold longer prefixes.
    pub const MAX_GROUPS: usize = 1 << 18;

    /// Builds the table: shorter prefixes are written first, so longer ones overwrite
    /// the ranges they cover.
    pub fn build(routes: &[Route]) -> Result<Lpm, LpmError> {
        let mut rs: Vec<Route> = Vec::with_capacity(routes.len());
        for r in routes {
            if r.len > 32 {
                return Err(LpmError::BadLength(r.len));
            }
            if r.next_hop == 0 || r.next_hop >= MAX_NEXT_HOPS {
                return Err(LpmError::BadNextHop(r.next_hop));
            }
            rs.push(Route {
                prefix: r.prefix & mask(r.len),
                ..*r
            });
        }
        rs.sort_by_key(|r| r.len);
        let mut t = Lpm {
            tbl24: vec![EMPTY; 1 << 24],
            tbl8: Vec::new(),
            routes: rs.len(),
        };
        for r in &rs {
            if r.len <= 24 {
                let start = (r.prefix >> 8) as usize;
                let n = 1usize << (24 - u32::from(r.len));
                for e in &mut t.tbl24[start..start + n] {
                    if *e & EXT == 0 {
                        *e = r.next_hop;
                    } else {
                        // A longer prefix already split this /24: fill its group's gaps.
                        // (Cannot happen with routes sorted by length; kept for safety.)
                        let g = (*e & !EXT) as usize * 256;
                        for x in &mut t.tbl8[g..g + 256] {
                            *x = r.next_hop;
                        }
                    }
                }
            } else {
                let i24 = (r.prefix >> 8) as usize;
                let e = t.tbl24[i24];
                let g = if e & EXT != 0 {
                    (e & !EXT) as usize
                } else {
                    let g = t.tbl8.len() / 256;
                    if g >= Self::MAX_GROUPS {
                        return Err(LpmError::TooManyGroups(Self::MAX_GROUPS));
                    }
                    // The group starts as the covering /24-or-shorter route.
                    t.tbl8.extend(std::iter::repeat_n(e, 256));
                    t.tbl24[i24] = EXT | u32::try_from(g).unwrap_or(0);
                    g
                };
                let start = g * 256 + (r.prefix & 0xff) as usize;
                let n = 1usize << (32 - u32::from(r.len));
                for x in &mut t.tbl8[start..start + n] {
                    *x = r.next_hop;
                }
            }
        }
        Ok(t)
    }

    /// An empty table (every lookup misses). No tbl24: a worker starts with one
    /// before its first snapshot, and 64 MiB zeroed for nothing made every
    /// pipeline's start (and each fuzz input) cost a page-fault storm.
    pub fn empty() -> Lpm {
        Lpm {
            tbl24: Vec::new(),
            tbl8: Vec::new(),
            routes: 0,
        }
    }

    /// The next-hop id of the longest prefix covering `addr`, or None.
    #[inline(always)]
    pub fn lookup(&self, addr: u32) -> Option<u32> {
        // The bounds check indexing would make anyway; an empty table misses.
        let &e = self.tbl24.get((addr >> 8) as usize)?;
        let v = if e & EXT == 0 {
            e
        } else {
            self.tbl8[(e & !EXT) as usize * 256 + (addr & 0xff) as usize]
        };
        if v == EMPTY {
            None
        } else {
            Some(v)
        }
    }

    pub fn len(&self) -> usize {
        self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes == 0
    }

    /// Bytes the table occupies.
    pub fn memory(&self) -> usize {
        (self.tbl24.len() + self.tbl8.len()) * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: scan every route, keep the longest match.
    fn brute(routes: &[Route], addr: u32) -> Option<u32> {
        routes
            .iter()
            .filter(|r| addr & mask(r.len) == r.prefix & mask(r.len))
            .max_by_key(|r| r.len)
            .map(|r| r.next_hop)
    }

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            u32::try_from((self.0 >> 16) & 0xffff_ffff).unwrap_or(0)
        }
    }

    #[test]
    fn known_routes() {
        let ip = |a: u8, b: u8, c: u8, d: u8| u32::from_be_bytes([a, b, c, d]);
        let routes = [
            Route {
                prefix: 0,
                len: 0,
                next_hop: 1,
            },
            Route {
                prefix: ip(10, 244, 0, 0),
                len: 16,
                next_hop: 2,
            },
            Route {
                prefix: ip(10, 244, 1, 0),
                len: 24,
                next_hop: 3,
            },
            Route {
                prefix: ip(10, 244, 1, 128),
                len: 25,
                next_hop: 4,
            },
            Route {
                prefix: ip(10, 244, 1, 7),
                len: 32,
                next_hop: 5,
            },
        ];
        let t = Lpm::build(&routes).unwrap();
        assert_eq!(t.lookup(ip(8, 8, 8, 8)), Some(1));
        assert_eq!(t.lookup(ip(10, 244, 9, 9)), Some(2));
        assert_eq!(t.lookup(ip(10, 244, 1, 5)), Some(3));
        assert_eq!(t.lookup(ip(10, 244, 1, 200)), Some(4));
        assert_eq!(t.lookup(ip(10, 244, 1, 7)), Some(5));
        let no_default = Lpm::build(&routes[1..]).unwrap();
        assert_eq!(no_default.lookup(ip(8, 8, 8, 8)), None);
        assert_eq!(
            Lpm::build(&[Route {
                prefix: 0,
                len: 33,
                next_hop: 1
            }])
            .err(),
            Some(LpmError::BadLength(33))
        );
        assert_eq!(
            Lpm::build(&[Route {
                prefix: 0,
                len: 8,
                next_hop: 0
            }])
            .err(),
            Some(LpmError::BadNextHop(0))
        );
    }

    #[test]
    fn matches_brute_force_on_random_prefixes() {
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        for round in 0..4 {
            let n = [50, 500, 2000, 5000][round];
            let routes: Vec<Route> = (0..n)
                .map(|i| {
                    let len = u8::try_from(rng.next() % 33).unwrap();
                    Route {
                        prefix: rng.next() & mask(len),
                        len,
                        next_hop: 1 + u32::try_from(i).unwrap(),
                    }
                })
                .collect();
            // Duplicate prefixes: the last wins in neither; keep one per (prefix, len).
            let mut seen = std::collections::HashSet::new();
            let routes: Vec<Route> = routes
                .into_iter()
                .filter(|r| seen.insert((r.prefix, r.len)))
                .collect();
            let t = Lpm::build(&routes).unwrap();
            for _ in 0..20_000 {
                let a = rng.next();
                assert_eq!(t.lookup(a), brute(&routes, a), "round {round} addr {a:#x}");
            }
            // Addresses inside the prefixes, where the interesting boundaries are.
            for r in routes.iter().take(500) {
                let a = r.prefix | (rng.next() & !mask(r.len));
                assert_eq!(t.lookup(a), brute(&routes, a));
            }
        }
    }

    #[test]
    fn hundred_thousand_prefixes_build() {
        let mut rng = Rng(42);
        let routes: Vec<Route> = (0..100_000)
            .map(|i| {
                let len = 16 + u8::try_from(rng.next() % 17).unwrap();
                Route {
                    prefix: rng.next() & mask(len),
                    len,
                    next_hop: 1 + u32::try_from(i).unwrap(),
                }
            })
            .collect();
        let t = Lpm::build(&routes).unwrap();
        assert_eq!(t.len(), 100_000);
        for r in routes.iter().take(1000) {
            assert!(t.lookup(r.prefix).is_some());
        }
    }
}

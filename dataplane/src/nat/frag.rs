//! Fragments of translated datagrams. Only a datagram's first fragment carries the
//! ports a connection is found by; its later fragments carry only the IPv4 header.
//! When a first fragment is translated, the translation of its addresses is kept
//! here under (source, destination, protocol, IP identifier) as the fragment had
//! them, so the later ones get the same rewrite (what Linux's conntrack gets by
//! reassembling first). Bounded; entries live 30 s (Linux's `ipfrag_time`).
use hashbrown::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: u32,
    pub dst: u32,
    pub id: u16,
    pub proto: u8,
}

/// The addresses the later fragments of a datagram get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragNat {
    pub src: u32,
    pub dst: u32,
}

/// One translation, for the other workers (a datagram's fragments may arrive on
/// any of them).
#[derive(Debug, Clone, Copy)]
pub struct FragUpdate {
    pub key: FragKey,
    pub nat: FragNat,
}

pub struct FragTable {
    map: HashMap<FragKey, (FragNat, u64)>,
    capacity: usize,
    ttl_ms: u64,
    /// When a full table found nothing expired: its earliest expiry. Until then a
    /// new first fragment is refused at once, so a storm of them costs no scan each.
    full_until: u64,
    /// First fragments not remembered because the table was full (published as
    /// `frag_table_full`; their later fragments are dropped by reason).
    pub full: u64,
}

impl FragTable {
    pub fn new(capacity: usize) -> FragTable {
        FragTable {
            map: HashMap::with_capacity(capacity.saturating_mul(2)),
            capacity,
            ttl_ms: 30_000,
            full_until: 0,
            full: 0,
        }
    }

    /// Remembers a first fragment's translation; false when the table is full of
    /// live entries (the later fragments are then dropped).
    pub fn remember(&mut self, key: FragKey, nat: FragNat, now_ms: u64) -> bool {
        if self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            if now_ms < self.full_until {
                self.full += 1;
                return false;
            }
            let mut soonest = u64::MAX;
            self.map.retain(|_, (_, exp)| {
                soonest = soonest.min(*exp);
                *exp > now_ms
            });
            if self.map.len() >= self.capacity {
                self.full_until = soonest;
                self.full += 1;
                return false;
            }
        }
        self.map
            .insert(key, (nat, now_ms.saturating_add(self.ttl_ms)));
        true
    }

    #[inline]
    pub fn lookup(&self, key: &FragKey, now_ms: u64) -> Option<FragNat> {
        if self.map.is_empty() {
            return None;
        }
        self.map
            .get(key)
            .filter(|(_, exp)| *exp > now_ms)
            .map(|(n, _)| *n)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A worker's fragment translations and the ones this burst made (for the others).
pub struct Fragments {
    pub table: FragTable,
    pub news: Vec<FragUpdate>,
}

impl Fragments {
    pub fn new(capacity: usize, burst: usize) -> Fragments {
        Fragments {
            table: FragTable::new(capacity),
            news: Vec::with_capacity(burst),
        }
    }

    /// Keeps a first fragment's translation (`key`: its addresses before, `nat`:
    /// after) and queues it for the other workers (no room: they miss it).
    pub fn remember(&mut self, key: FragKey, nat: FragNat, now_ms: u64) {
        if self.table.remember(key, nat, now_ms) && self.news.len() < self.news.capacity() {
            self.news.push(FragUpdate { key, nat });
        }
    }

    /// The (source, destination, protocol, IP identifier) of the IPv4 header at `l3`.
    #[inline]
    pub fn key_of(d: &[u8], l3: usize, proto: u8) -> FragKey {
        let a = |o: usize| u32::from_be_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]]);
        FragKey {
            src: a(l3 + 12),
            dst: a(l3 + 16),
            id: u16::from_be_bytes([d[l3 + 4], d[l3 + 5]]),
            proto,
        }
    }

    /// Gives a later fragment its datagram's translation, when there is one: its
    /// addresses and the IPv4 checksum (all it carries of the datagram's header).
    /// Returns the translation applied.
    pub fn translate_later(
        &self,
        d: &mut [u8],
        l3: usize,
        proto: u8,
        now_ms: u64,
    ) -> Option<(FragKey, FragNat)> {
        let key = Self::key_of(d, l3, proto);
        let nat = self.table.lookup(&key, now_ms)?;
        let (old_src, old_dst) = (key.src, key.dst);
        d[l3 + 12..l3 + 16].copy_from_slice(&nat.src.to_be_bytes());
        d[l3 + 16..l3 + 20].copy_from_slice(&nat.dst.to_be_bytes());
        let c = u16::from_be_bytes([d[l3 + 10], d[l3 + 11]]);
        let c = crate::wire::checksum::update32(
            crate::wire::checksum::update32(c, old_src, nat.src),
            old_dst,
            nat.dst,
        );
        d[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        Some((key, nat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_fragments_find_the_first_ones_translation_until_it_expires() {
        let mut t = FragTable::new(2);
        let k = |id| FragKey {
            src: 1,
            dst: 2,
            id,
            proto: 17,
        };
        let n = FragNat { src: 1, dst: 9 };
        assert!(t.remember(k(7), n, 0));
        assert_eq!(t.lookup(&k(7), 29_999), Some(n));
        assert_eq!(t.lookup(&k(7), 30_000), None, "ipfrag_time is over");
        assert_eq!(t.lookup(&k(8), 0), None, "another datagram");
        assert!(t.remember(k(8), n, 0));
        assert!(!t.remember(k(9), n, 10), "full of live entries");
        // Until the earliest entry expires, refusals cost no scan, and are counted.
        assert_eq!(t.full_until, 30_000);
        assert!(!t.remember(k(10), n, 20));
        assert_eq!(t.full, 2);
        assert!(t.remember(k(9), n, 40_000), "expired ones make room");
        assert!(t.len() <= 2);
    }
}

//! The bridge's MAC table: (bridge domain, MAC) -> port, learned from source addresses,
//! aged out when not seen for the ageing time. One table per worker, owned by it:
//! lookups and learning take no lock. Capacity is reserved up front, so learning never
//! allocates; when the table is full, new sources are not learned (and counted).
use hashbrown::HashMap;

use crate::wire::MacAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacEntry {
    pub port: u16,
    /// Time (TSC) the source was last seen.
    pub seen: u64,
    /// Static entries (from the control plane) never age or move.
    pub is_static: bool,
}

/// What learning a source did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    Refreshed,
    Learned,
    Moved,
    Full,
    Static,
}

pub struct MacTable {
    map: HashMap<u64, MacEntry>,
    capacity: usize,
    ageing: u64,
    /// A source's timestamp is rewritten only when older than this (1/16 of the
    /// ageing time): a flow's packets then read its entry and leave the cache line
    /// clean (grout's MAC table gained 4x from this). An entry ages at most 1/16 of
    /// the ageing time early.
    refresh: u64,
}

#[inline(always)]
fn key(bd: u16, mac: MacAddr) -> u64 {
    (u64::from(bd) << 48) | mac.as_u64()
}

impl MacTable {
    /// `ageing` is in TSC ticks.
    pub fn new(capacity: usize, ageing: u64) -> MacTable {
        MacTable {
            // Twice the entries we allow: deleted slots are then always reclaimed by an
            // in-place rehash, never by growing the table on the worker.
            map: HashMap::with_capacity(capacity.saturating_mul(2)),
            capacity,
            ageing,
            refresh: ageing / 16,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    #[inline]
    pub fn learn(&mut self, bd: u16, mac: MacAddr, port: u16, now: u64) -> Learn {
        let k = key(bd, mac);
        if let Some(e) = self.map.get_mut(&k) {
            if e.is_static {
                return Learn::Static;
            }
            if e.port != port {
                e.port = port;
                e.seen = now;
                return Learn::Moved;
            }
            if now.wrapping_sub(e.seen) > self.refresh {
                e.seen = now;
            }
            return Learn::Refreshed;
        }
        if self.map.len() >= self.capacity {
            return Learn::Full;
        }
        self.map.insert(
            k,
            MacEntry {
                port,
                seen: now,
                is_static: false,
            },
        );
        Learn::Learned
    }

    /// The port behind `mac`, unless unknown or aged out.
    #[inline]
    pub fn lookup(&self, bd: u16, mac: MacAddr, now: u64) -> Option<u16> {
        let e = self.map.get(&key(bd, mac))?;
        if e.is_static || now.wrapping_sub(e.seen) < self.ageing {
            Some(e.port)
        } else {
            None
        }
    }

    /// Adds or replaces a static entry.
    pub fn add_static(&mut self, bd: u16, mac: MacAddr, port: u16) -> bool {
        if self.map.len() >= self.capacity && !self.map.contains_key(&key(bd, mac)) {
            return false;
        }
        self.map.insert(
            key(bd, mac),
            MacEntry {
                port,
                seen: 0,
                is_static: true,
            },
        );
        true
    }

    /// Removes a static entry; false when there was none.
    pub fn remove_static(&mut self, bd: u16, mac: MacAddr) -> bool {
        let k = key(bd, mac);
        if self.map.get(&k).is_some_and(|e| e.is_static) {
            self.map.remove(&k);
            true
        } else {
            false
        }
    }

    /// Removes entries not seen for the ageing time; returns how many.
    pub fn age(&mut self, now: u64) -> usize {
        let before = self.map.len();
        let ageing = self.ageing;
        self.map
            .retain(|_, e| e.is_static || now.wrapping_sub(e.seen) < ageing);
        before - self.map.len()
    }

    /// Forgets everything learned behind `keep`-rejected ports (a port was detached).
    pub fn retain_ports(&mut self, keep: impl Fn(u16) -> bool) {
        self.map.retain(|_, e| keep(e.port));
    }

    /// (bd, mac, entry) for every entry, for `podpathctl bridge macs`.
    pub fn entries(&self) -> impl Iterator<Item = (u16, MacAddr, MacEntry)> + '_ {
        self.map.iter().map(|(k, e)| {
            let b = k.to_be_bytes();
            let bd = u16::from_be_bytes([b[0], b[1]]);
            (bd, MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]]), *e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([0x0a, 0x58, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([0x0a, 0x58, 0, 0, 0, 2]);

    #[test]
    fn learn_lookup_move_age() {
        let mut t = MacTable::new(4, 100);
        assert_eq!(t.lookup(1, A, 0), None);
        assert_eq!(t.learn(1, A, 3, 0), Learn::Learned);
        assert_eq!(t.lookup(1, A, 10), Some(3));
        assert_eq!(t.lookup(2, A, 10), None, "bridge domains are separate");
        assert_eq!(t.learn(1, A, 3, 50), Learn::Refreshed);
        assert_eq!(t.learn(1, A, 4, 60), Learn::Moved);
        assert_eq!(t.lookup(1, A, 100), Some(4));
        // 100 ticks after last seen (60) it is aged.
        assert_eq!(t.lookup(1, A, 160), None);
        assert_eq!(t.age(159), 0);
        assert_eq!(t.age(160), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn full_table_does_not_grow() {
        let mut t = MacTable::new(2, 100);
        assert_eq!(t.learn(1, A, 1, 0), Learn::Learned);
        assert_eq!(t.learn(1, B, 1, 0), Learn::Learned);
        assert_eq!(t.learn(2, B, 1, 0), Learn::Full);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn static_entries_neither_age_nor_move() {
        let mut t = MacTable::new(4, 10);
        assert!(t.add_static(1, A, 7));
        assert_eq!(t.learn(1, A, 2, 5), Learn::Static);
        assert_eq!(t.lookup(1, A, 1_000_000), Some(7));
        assert_eq!(t.age(1_000_000), 0);
        assert!(!t.remove_static(1, B));
        assert!(t.remove_static(1, A));
        assert_eq!(t.lookup(1, A, 1), None);
    }

    #[test]
    fn retain_ports_forgets_detached() {
        let mut t = MacTable::new(4, 100);
        t.learn(1, A, 1, 0);
        t.learn(1, B, 2, 0);
        t.retain_ports(|p| p != 2);
        assert_eq!(t.lookup(1, B, 1), None);
        assert_eq!(t.lookup(1, A, 1), Some(1));
        let e: Vec<_> = t.entries().collect();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].0, e[0].1), (1, A));
    }
}

//! The neighbour (ARP) cache: IPv4 address -> (MAC, port), learned from ARP replies
//! and requests (gleaning), aged out, one per worker. Entries learned on one worker
//! are not seen by another; each resolves what it needs (a request costs one frame).
use hashbrown::HashMap;

use crate::wire::MacAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbor {
    pub mac: MacAddr,
    pub port: u16,
    pub seen: u64,
}

pub struct NeighborTable {
    map: HashMap<u32, Neighbor>,
    capacity: usize,
    /// Neighbours not learned because the table was full (published as
    /// `neighbor_table_full`).
    pub full: u64,
    ageing: u64,
    /// When we last asked for an address (rate limit: one request per address per
    /// `retry` ticks).
    asked: HashMap<u32, u64>,
    retry: u64,
}

impl NeighborTable {
    /// `ageing` and `retry` in TSC ticks.
    pub fn new(capacity: usize, ageing: u64, retry: u64) -> NeighborTable {
        NeighborTable {
            map: HashMap::with_capacity(capacity.saturating_mul(2)),
            capacity,
            full: 0,
            ageing,
            asked: HashMap::with_capacity(256),
            retry,
        }
    }

    /// Learns or refreshes; false when the table is full.
    pub fn learn(&mut self, ip: u32, mac: MacAddr, port: u16, now: u64) -> bool {
        if let Some(n) = self.map.get_mut(&ip) {
            *n = Neighbor {
                mac,
                port,
                seen: now,
            };
            return true;
        }
        if self.map.len() >= self.capacity {
            self.full += 1;
            return false;
        }
        self.map.insert(
            ip,
            Neighbor {
                mac,
                port,
                seen: now,
            },
        );
        self.asked.remove(&ip);
        true
    }

    #[inline]
    pub fn lookup(&self, ip: u32, now: u64) -> Option<Neighbor> {
        self.map
            .get(&ip)
            .copied()
            .filter(|n| now.wrapping_sub(n.seen) < self.ageing)
    }

    /// Should we send an ARP request for `ip` now? Records the attempt.
    pub fn should_ask(&mut self, ip: u32, now: u64) -> bool {
        match self.asked.get(&ip) {
            Some(&t) if now.wrapping_sub(t) < self.retry => false,
            _ => {
                if self.asked.len() >= 256 {
                    self.asked.clear();
                }
                self.asked.insert(ip, now);
                true
            }
        }
    }

    pub fn age(&mut self, now: u64) -> usize {
        let before = self.map.len();
        let ageing = self.ageing;
        self.map.retain(|_, n| now.wrapping_sub(n.seen) < ageing);
        before - self.map.len()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = (u32, Neighbor)> + '_ {
        self.map.iter().map(|(k, v)| (*k, *v))
    }

    /// Forgets entries behind ports that are gone.
    pub fn retain_ports(&mut self, keep: impl Fn(u16) -> bool) {
        self.map.retain(|_, n| keep(n.port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: MacAddr = MacAddr([0x0a, 0x58, 0, 0, 0, 1]);

    #[test]
    fn learn_lookup_age_and_rate_limit() {
        let mut t = NeighborTable::new(2, 100, 10);
        assert!(t.learn(1, M, 3, 0));
        assert_eq!(t.lookup(1, 50).map(|n| n.port), Some(3));
        assert_eq!(t.lookup(1, 100), None);
        assert!(t.learn(2, M, 3, 0));
        assert!(!t.learn(3, M, 3, 0), "full");
        assert_eq!(t.full, 1, "the refusal is counted");
        assert!(
            t.learn(2, M, 4, 0),
            "a known neighbour still refreshes when full"
        );
        assert_eq!((t.full, t.len()), (1, 2));
        assert_eq!(t.age(100), 2);
        assert!(t.should_ask(9, 0));
        assert!(!t.should_ask(9, 5));
        assert!(t.should_ask(9, 10));
    }
}

//! The port map: which ports exist, their bridge domain, and which worker polls which
//! rx queue. Built by the control thread, published to workers as an `Arc` snapshot.
use crate::pipeline::MAX_PORTS;
use crate::wire::MacAddr;

#[derive(Debug, Clone)]
pub struct PortEntry {
    pub id: u16,
    pub name: String,
    pub bd: Option<u16>,
    pub mac: MacAddr,
    pub rx_queues: u16,
    pub mtu: u16,
}

#[derive(Debug, Clone)]
pub struct BridgeDomain {
    pub id: u16,
    pub members: Vec<u16>,
}

#[derive(Debug, Clone, Default)]
pub struct PortMap {
    /// Indexed by port id.
    pub ports: Vec<Option<PortEntry>>,
    pub bridges: Vec<BridgeDomain>,
    /// For each worker, the (port, queue) pairs it polls.
    pub rx: Vec<Vec<(u16, u16)>>,
    /// The uplink (underlay) port, when the node's L3 identity names one that exists.
    pub uplink: Option<u16>,
    /// The host port (a tap to the node's kernel).
    pub host: Option<u16>,
}

/// What a port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Pod,
    Uplink,
    Host,
}

impl PortMap {
    /// Builds the map for `workers` workers: queue q of the k-th port goes to worker
    /// (q + k) % workers, so every queue has exactly one poller and single-queue ports
    /// spread over the workers.
    pub fn build(entries: Vec<PortEntry>, workers: usize) -> PortMap {
        let mut ports: Vec<Option<PortEntry>> = vec![None; MAX_PORTS];
        let mut bridges: Vec<BridgeDomain> = Vec::new();
        let mut rx = vec![Vec::new(); workers.max(1)];
        for (k, e) in entries.into_iter().enumerate() {
            let id = usize::from(e.id);
            if id >= MAX_PORTS {
                continue;
            }
            if let Some(bd) = e.bd {
                match bridges.iter_mut().find(|b| b.id == bd) {
                    Some(b) => b.members.push(e.id),
                    None => bridges.push(BridgeDomain {
                        id: bd,
                        members: vec![e.id],
                    }),
                }
            }
            for q in 0..e.rx_queues {
                rx[(usize::from(q) + k) % workers.max(1)].push((e.id, q));
            }
            ports[id] = Some(e);
        }
        PortMap {
            ports,
            bridges,
            rx,
            uplink: None,
            host: None,
        }
    }

    /// Names the uplink and host ports (by port name).
    pub fn with_roles(mut self, uplink: Option<&str>, host: Option<&str>) -> PortMap {
        let find = |n: Option<&str>| {
            n.and_then(|n| {
                self.ports
                    .iter()
                    .flatten()
                    .find(|p| p.name == n)
                    .map(|p| p.id)
            })
        };
        self.uplink = find(uplink);
        self.host = find(host);
        self
    }

    #[inline(always)]
    pub fn role(&self, port: u16) -> Role {
        if Some(port) == self.uplink {
            Role::Uplink
        } else if Some(port) == self.host {
            Role::Host
        } else {
            Role::Pod
        }
    }

    #[inline(always)]
    pub fn port(&self, id: u16) -> Option<&PortEntry> {
        self.ports.get(usize::from(id)).and_then(Option::as_ref)
    }

    #[inline(always)]
    pub fn bridge(&self, bd: u16) -> Option<&BridgeDomain> {
        self.bridges.iter().find(|b| b.id == bd)
    }

    pub fn rx_of(&self, worker: usize) -> &[(u16, u16)] {
        self.rx.get(worker).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u16, queues: u16) -> PortEntry {
        PortEntry {
            id,
            name: format!("p{id}"),
            bd: Some(1),
            mac: MacAddr::ZERO,
            rx_queues: queues,
            mtu: 1500,
        }
    }

    #[test]
    fn every_queue_has_one_poller_and_ports_spread() {
        let m = PortMap::build(vec![entry(0, 1), entry(1, 1), entry(2, 2)], 2);
        let mut all: Vec<(u16, u16)> = m.rx.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, vec![(0, 0), (1, 0), (2, 0), (2, 1)]);
        assert_eq!(m.rx_of(0).len(), 2);
        assert_eq!(m.rx_of(1).len(), 2);
        assert_eq!(m.bridge(1).unwrap().members, vec![0, 1, 2]);
    }
}

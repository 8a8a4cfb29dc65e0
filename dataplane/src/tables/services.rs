//! Services: virtual IP, port and protocol -> endpoints, with a Maglev table over the
//! endpoints that may take new connections (ready, not terminating). Built by the
//! control thread from the Service specs, published whole to the workers.
use hashbrown::HashMap;
use podpath_proto::{validate, ServiceSpec};

use super::maglev::{Backend, Maglev};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: u32,
    pub port: u16,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub vip: u32,
    pub port: u16,
    pub proto: u8,
    /// Endpoints that take new connections, in Maglev's index order.
    pub endpoints: Vec<Endpoint>,
    /// Every endpoint, terminating ones included (their connections live on).
    pub all: Vec<Endpoint>,
    pub maglev: Maglev,
    /// ClientIP affinity, seconds (0: none).
    pub affinity: u32,
    /// The NodePort (0: none), and whether its policy is Local.
    pub node_port: u16,
    pub local_policy: bool,
    /// This node's endpoints that take new connections, with their own table (the
    /// NodePort with policy Local uses only these).
    pub local_endpoints: Vec<Endpoint>,
    pub local_maglev: Maglev,
}

#[derive(Debug, Default)]
pub struct ServiceTable {
    services: Vec<Service>,
    by_key: HashMap<(u32, u16, u8), u16>,
    by_node_port: HashMap<(u16, u8), u16>,
    /// Every endpoint (ip, port, protocol) of every Service: packets from these may be
    /// replies of Service connections another worker owns.
    endpoints: hashbrown::HashSet<(u32, u16, u8)>,
}

/// What the table needs to know of this node: its IP and its pod CIDR.
#[derive(Debug, Clone, Copy)]
pub struct NodeInfo {
    pub node_ip: u32,
    pub pod_net: (u32, u8),
}

/// A prime table size of at least 100 entries per endpoint (the paper's advice for
/// near-ideal disruption), small for small Services.
fn table_size(endpoints: usize) -> usize {
    const PRIMES: [usize; 6] = [251, 1021, 4093, 16381, 65537, 262_147];
    PRIMES
        .into_iter()
        .find(|&p| p >= endpoints * 100)
        .unwrap_or(262_147)
}

impl ServiceTable {
    pub fn build(specs: &[ServiceSpec], node: Option<NodeInfo>) -> Result<ServiceTable, String> {
        let mut t = ServiceTable::default();
        for s in specs {
            let what = format!("service {}", s.name);
            if s.name.is_empty() {
                return Err("a service needs a name".into());
            }
            let vip = validate::ipv4(&s.vip).map_err(|e| format!("{what}: vip: {e}"))?;
            let proto = match s.protocol.as_str() {
                "tcp" | "TCP" => 6,
                "udp" | "UDP" => 17,
                p => return Err(format!("{what}: protocol {p:?} is not tcp or udp")),
            };
            if s.port == 0 {
                return Err(format!("{what}: port 0"));
            }
            let mut eps = Vec::new();
            let mut all = Vec::new();
            let mut backends = Vec::new();
            let (mut local_eps, mut local_backends) = (Vec::new(), Vec::new());
            let is_local =
                |ip: u32| node.is_some_and(|n| ip & super::lpm::mask(n.pod_net.1) == n.pod_net.0);
            for e in &s.endpoints {
                let ip = validate::ipv4(&e.ip).map_err(|x| format!("{what}: endpoint: {x}"))?;
                if e.port == 0 {
                    return Err(format!("{what}: endpoint {} has port 0", e.ip));
                }
                all.push(Endpoint { ip, port: e.port });
                t.endpoints.insert((ip, e.port, proto));
                if e.ready && !e.terminating && e.weight > 0 {
                    eps.push(Endpoint { ip, port: e.port });
                    backends.push(Backend {
                        key: format!("{}:{}", e.ip, e.port),
                        weight: e.weight,
                    });
                    if is_local(ip) {
                        local_eps.push(Endpoint { ip, port: e.port });
                        local_backends.push(Backend {
                            key: format!("{}:{}", e.ip, e.port),
                            weight: e.weight,
                        });
                    }
                }
            }
            let maglev = Maglev::build(&backends, table_size(backends.len()))
                .map_err(|e| format!("{what}: {e}"))?;
            let local_maglev = Maglev::build(&local_backends, table_size(local_backends.len()))
                .map_err(|e| format!("{what}: {e}"))?;
            let local_policy = match s.external_traffic_policy.as_deref() {
                None | Some("Cluster") => false,
                Some("Local") => true,
                Some(p) => {
                    return Err(format!(
                        "{what}: external_traffic_policy {p:?} is not Cluster or Local"
                    ))
                }
            };
            let node_port = s.node_port.unwrap_or(0);
            if node_port != 0 {
                if node.is_none() {
                    return Err(format!(
                        "{what}: a NodePort needs the node's identity (set the node first)"
                    ));
                }
                let idx =
                    u16::try_from(t.services.len()).map_err(|_| "too many services".to_string())?;
                if t.by_node_port.insert((node_port, proto), idx).is_some() {
                    return Err(format!(
                        "{what}: node port {node_port}/{} is already another service's",
                        s.protocol
                    ));
                }
            }
            let idx =
                u16::try_from(t.services.len()).map_err(|_| "too many services".to_string())?;
            if t.by_key.insert((vip, s.port, proto), idx).is_some() {
                return Err(format!(
                    "{what}: {}:{}/{} is already another service",
                    s.vip, s.port, s.protocol
                ));
            }
            if t.services.iter().any(|x| x.name == s.name) {
                return Err(format!("{what}: the name is used twice"));
            }
            t.services.push(Service {
                name: s.name.clone(),
                vip,
                port: s.port,
                proto,
                endpoints: eps,
                all,
                maglev,
                affinity: s.affinity_timeout.unwrap_or(0),
                node_port,
                local_policy,
                local_endpoints: local_eps,
                local_maglev,
            });
        }
        Ok(t)
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Is `(ip, port, proto)` an endpoint of some Service?
    #[inline]
    pub fn is_endpoint(&self, ip: u32, port: u16, proto: u8) -> bool {
        self.endpoints.contains(&(ip, port, proto))
    }

    /// The Service with this NodePort.
    #[inline]
    pub fn by_node_port(&self, port: u16, proto: u8) -> Option<(u16, &Service)> {
        let &i = self.by_node_port.get(&(port, proto))?;
        self.services.get(usize::from(i)).map(|s| (i, s))
    }

    /// The index of a Service (for affinity keys).
    #[inline]
    pub fn index(&self, vip: u32, port: u16, proto: u8) -> Option<u16> {
        self.by_key.get(&(vip, port, proto)).copied()
    }

    /// Does a DNAT connection (to `vip:port`, at `ep`) still have its endpoint? False
    /// when the Service or the endpoint was removed (terminating endpoints remain).
    pub fn endpoint_exists(&self, vip: u32, port: u16, proto: u8, ep: Endpoint) -> bool {
        self.lookup(vip, port, proto)
            .or_else(|| self.by_node_port(port, proto).map(|(_, s)| s))
            .is_some_and(|s| s.all.contains(&ep))
    }

    #[inline]
    pub fn lookup(&self, vip: u32, port: u16, proto: u8) -> Option<&Service> {
        let &i = self.by_key.get(&(vip, port, proto))?;
        self.services.get(usize::from(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podpath_proto::EndpointSpec;

    fn ep(ip: &str, ready: bool, terminating: bool) -> EndpointSpec {
        EndpointSpec {
            ip: ip.into(),
            port: 8080,
            weight: 1,
            ready,
            terminating,
        }
    }

    #[test]
    fn only_ready_endpoints_take_new_connections() {
        let s = ServiceSpec {
            name: "default/web".into(),
            vip: "10.96.0.10".into(),
            port: 80,
            protocol: "tcp".into(),
            endpoints: vec![
                ep("10.244.0.3", true, false),
                ep("10.244.1.2", false, false),
                ep("10.244.1.3", true, true),
            ],
            affinity_timeout: None,
            node_port: None,
            external_traffic_policy: None,
        };
        let t = ServiceTable::build(std::slice::from_ref(&s), None).unwrap();
        let svc = t
            .lookup(validate::ipv4("10.96.0.10").unwrap(), 80, 6)
            .unwrap();
        assert_eq!(svc.endpoints.len(), 1);
        assert!(t
            .lookup(validate::ipv4("10.96.0.10").unwrap(), 80, 17)
            .is_none());
        let mut dup = s.clone();
        dup.name = "other".into();
        assert!(ServiceTable::build(&[s.clone(), dup], None)
            .unwrap_err()
            .contains("already"));
        let mut bad = s;
        bad.protocol = "sctp".into();
        assert!(ServiceTable::build(&[bad], None).is_err());
    }
}

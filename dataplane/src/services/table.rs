//! Services: virtual IP, port and protocol -> endpoints, with a Maglev table over the
//! endpoints that may take new connections (ready, not terminating). Built by the
//! control thread from the Service specs, published whole to the workers.
use std::sync::Arc;

use hashbrown::HashMap;
use podpath_proto::{taking_new_connections, validate, EndpointSpec, ServiceSpec};

use crate::services::maglev::{Backend, Maglev};

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
    /// Endpoints that take new connections, in Maglev's index order. Shared (as the
    /// Maglev tables are) by the tables rebuilt while this Service is unchanged.
    pub endpoints: Arc<[Endpoint]>,
    /// Every endpoint, terminating ones included (their connections live on).
    pub all: Arc<[Endpoint]>,
    pub maglev: Maglev,
    /// ClientIP affinity, seconds (0: none).
    pub affinity: u32,
    /// The ServicePort's identity (affinity keys): stable while it exists, never
    /// given to another after it is deleted. Assigned by the control thread.
    pub uid: u32,
    /// The NodePort (0: none), and whether its policy is Local.
    pub node_port: u16,
    pub local_policy: bool,
    /// internalTrafficPolicy Local: the ClusterIP uses this node's endpoints only.
    pub internal_local: bool,
    /// loadBalancerSourceRanges: the sources allowed on the LoadBalancer IPs (empty:
    /// all).
    pub source_ranges: Vec<(u32, u8)>,
    /// This node's endpoints that take new connections, with their own table (the
    /// NodePort with policy Local uses only these).
    pub local_endpoints: Arc<[Endpoint]>,
    pub local_maglev: Maglev,
    /// With several workers, this Service's connections are owned by the worker of
    /// the client's address alone (not address and port): so one worker, and one
    /// affinity table, sees every connection of a client. Set for Services with
    /// affinity and for every Service sharing an endpoint with one, so an endpoint's
    /// replies name the same owner whichever Service they belong to.
    pub owner_by_client_ip: bool,
}

#[derive(Debug, Default)]
pub struct ServiceTable {
    services: Vec<Service>,
    by_key: HashMap<(u32, u16, u8), u16>,
    by_node_port: HashMap<(u16, u8), u16>,
    /// Every endpoint (ip, port, protocol) of every Service: packets from these may be
    /// replies of Service connections another worker owns.
    /// Every endpoint, with its Services' `owner_by_client_ip`.
    endpoints: HashMap<(u32, u16, u8), bool>,
    uids: hashbrown::HashSet<u32>,
    /// Every ClusterIP (any port, any protocol).
    vips: hashbrown::HashSet<u32>,
    /// The Service prefilter (`concerns`): the destinations `lb` acts on (ClusterIPs,
    /// external and LoadBalancer IPs, deleted Services' ClusterIPs), and the sources
    /// (endpoints: their replies).
    to_service: crate::services::prefilter::AddrFilter,
    from_endpoint: crate::services::prefilter::AddrFilter,
    /// External and LoadBalancer IPs: (ip, port, protocol) -> (Service, is an LB IP).
    by_external: HashMap<(u32, u16, u8), (u16, bool)>,
    /// Every external or LoadBalancer IP (for the uplink's first look).
    external_ips: hashbrown::HashSet<u32>,
    /// Services deleted while TCP connections to them may live on, with their
    /// `owner_by_client_ip`: a worker that gets such a packet hands it to the owner.
    departed_vips: HashMap<(u32, u16, u8), bool>,
    /// The node the table was built for (a reused Service must have been built for
    /// the same one: its local endpoints depend on it).
    node: Option<NodeInfo>,
}

/// Whether a Service (by name) has the spec the previous table was built from.
pub type Unchanged<'a> = &'a dyn Fn(&str) -> bool;

/// "service NAME" in error messages, formatted only when an error is made (a build
/// visits every Service; most builds make no error).
struct What<'a>(&'a str);

impl std::fmt::Display for What<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "service {}", self.0)
    }
}

/// What the table needs to know of this node: its IP and its pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// A table whose Services are identified by their position (tests, benchmarks).
    pub fn build(specs: &[ServiceSpec], node: Option<NodeInfo>) -> Result<ServiceTable, String> {
        let ids: Vec<u32> = (1..=u32::try_from(specs.len()).unwrap_or(u32::MAX)).collect();
        Self::build_with_ids(specs, node, &ids)
    }

    /// The table for `specs`, `uids[k]` being spec k's identity.
    pub fn build_with_ids(
        specs: &[ServiceSpec],
        node: Option<NodeInfo>,
        uids: &[u32],
    ) -> Result<ServiceTable, String> {
        let refs: Vec<&ServiceSpec> = specs.iter().collect();
        Self::build_reusing(&refs, node, uids, None)
    }

    /// As [`build_with_ids`](Self::build_with_ids), taking each Service that
    /// `unchanged` says has the same spec as in `prev` from it: its endpoints and
    /// Maglev tables (shared, not rebuilt). A change to one Service then rebuilds
    /// one Service's tables, not every Service's. Nothing is reused when `prev` was
    /// built for another node (local endpoints depend on it).
    pub fn build_reusing(
        specs: &[&ServiceSpec],
        node: Option<NodeInfo>,
        uids: &[u32],
        prev: Option<(&ServiceTable, Unchanged)>,
    ) -> Result<ServiceTable, String> {
        let mut t = ServiceTable {
            node,
            ..ServiceTable::default()
        };
        let (reusable, unchanged): (HashMap<&str, &Service>, Unchanged) = match prev {
            Some((pt, same)) if pt.node == node => (
                pt.services
                    .iter()
                    .map(|svc| (svc.name.as_str(), svc))
                    .collect(),
                same,
            ),
            _ => (HashMap::new(), &|_| false),
        };
        let mut names: hashbrown::HashSet<&str> = hashbrown::HashSet::with_capacity(specs.len());
        t.services.reserve(specs.len());
        t.by_key.reserve(specs.len());
        if uids.len() != specs.len() {
            return Err("internal: one identity per service".into());
        }
        for s in specs {
            let what = What(&s.name);
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
            // New connections go to ready endpoints (ready is serving and not
            // terminating); when none is ready, to the serving terminating ones
            // (kube-proxy's fallback, so a rolling update's last pods keep
            // answering). The same rule again among this node's endpoints, for the
            // Local policies.
            let reused = reusable
                .get(s.name.as_str())
                .filter(|_| unchanged(&s.name))
                .copied();
            let mut all = Vec::new();
            let mut parsed = Vec::new();
            for e in s.endpoints.iter().filter(|_| reused.is_none()) {
                let ip = validate::ipv4(&e.ip).map_err(|x| format!("{what}: endpoint: {x}"))?;
                if e.port == 0 {
                    return Err(format!("{what}: endpoint {} has port 0", e.ip));
                }
                all.push(Endpoint { ip, port: e.port });
                parsed.push((ip, e));
            }
            let is_local = |ip: u32| {
                node.is_some_and(|n| ip & crate::ip4::lpm::mask(n.pod_net.1) == n.pod_net.0)
            };
            let takers = |local_only: bool| -> (Vec<Endpoint>, Vec<Backend>) {
                let here: Vec<&(u32, &EndpointSpec)> = parsed
                    .iter()
                    .filter(|(ip, _)| !local_only || is_local(*ip))
                    .collect();
                taking_new_connections(&here, |x| x.1)
                    .into_iter()
                    .map(|&&(ip, e)| {
                        let b = Backend {
                            key: format!("{}:{}", e.ip, e.port),
                            weight: e.weight,
                        };
                        (Endpoint { ip, port: e.port }, b)
                    })
                    .unzip()
            };
            let (all, eps, local_eps, maglev, local_maglev) = match reused {
                Some(r) => (
                    Arc::clone(&r.all),
                    Arc::clone(&r.endpoints),
                    Arc::clone(&r.local_endpoints),
                    r.maglev.clone(),
                    r.local_maglev.clone(),
                ),
                None => {
                    let (eps, backends) = takers(false);
                    let (local_eps, local_backends) = takers(true);
                    let maglev = Maglev::build(&backends, table_size(backends.len()))
                        .map_err(|e| format!("{what}: {e}"))?;
                    let local_maglev =
                        Maglev::build(&local_backends, table_size(local_backends.len()))
                            .map_err(|e| format!("{what}: {e}"))?;
                    (
                        Arc::from(all),
                        Arc::from(eps),
                        Arc::from(local_eps),
                        maglev,
                        local_maglev,
                    )
                }
            };
            let internal_local = match s.internal_traffic_policy.as_deref() {
                None | Some("Cluster") => false,
                Some("Local") => true,
                Some(p) => {
                    return Err(format!(
                        "{what}: internal_traffic_policy {p:?} is not Cluster or Local"
                    ))
                }
            };
            if internal_local && node.is_none() {
                return Err(format!(
                    "{what}: internal_traffic_policy Local needs the node's identity (set the node first)"
                ));
            }
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
            if t.by_key.insert((vip, s.port, proto), idx).is_some()
                || t.by_external.contains_key(&(vip, s.port, proto))
            {
                return Err(format!(
                    "{what}: {}:{}/{} is already another service",
                    s.vip, s.port, s.protocol
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err(format!("{what}: the name is used twice"));
            }
            let mut source_ranges = Vec::new();
            for r in &s.load_balancer_source_ranges {
                source_ranges.push(
                    validate::cidr(r)
                        .map_err(|e| format!("{what}: load_balancer_source_ranges: {e}"))?,
                );
            }
            let externals = s
                .external_ips
                .iter()
                .map(|a| (a, false))
                .chain(s.load_balancer_ips.iter().map(|a| (a, true)));
            for (a, is_lb) in externals {
                let eip = validate::ipv4(a).map_err(|e| format!("{what}: external IP: {e}"))?;
                if node.is_some_and(|n| n.node_ip == eip) {
                    return Err(format!("{what}: {a} is the node's own address"));
                }
                if t.by_key.contains_key(&(eip, s.port, proto))
                    || t.by_external
                        .insert((eip, s.port, proto), (idx, is_lb))
                        .is_some()
                {
                    return Err(format!(
                        "{what}: {a}:{}/{} is already another service's",
                        s.port, s.protocol
                    ));
                }
                t.external_ips.insert(eip);
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
                uid: uids[t.services.len()],
                node_port,
                local_policy,
                internal_local,
                source_ranges,
                local_endpoints: local_eps,
                local_maglev,
                owner_by_client_ip: false,
            });
        }
        t.group_owners();
        t.uids = t.services.iter().map(|s| s.uid).collect();
        t.vips = t.services.iter().map(|s| s.vip).collect();
        for s in &t.services {
            t.to_service.insert(s.vip);
            for e in s.all.iter() {
                t.from_endpoint.insert(e.ip);
            }
        }
        for &ip in &t.external_ips {
            t.to_service.insert(ip);
        }
        Ok(t)
    }

    /// Sets `owner_by_client_ip` per group of Services linked by shared endpoints
    /// (union-find, at build time: nothing of it runs per packet).
    fn group_owners(&mut self) {
        let n = self.services.len();
        // Without affinity anywhere no Service is owned by client address: no
        // grouping to do (the common case, and a pass less over every endpoint).
        if self.services.iter().all(|s| s.affinity == 0) {
            for s in &mut self.services {
                s.owner_by_client_ip = false;
            }
            let total: usize = self.services.iter().map(|s| s.all.len()).sum();
            self.endpoints.reserve(total);
            for s in &self.services {
                for e in s.all.iter() {
                    self.endpoints.insert((e.ip, e.port, s.proto), false);
                }
            }
            return;
        }
        let mut parent: Vec<usize> = (0..n).collect();
        fn root(p: &mut [usize], mut i: usize) -> usize {
            while p[i] != i {
                p[i] = p[p[i]];
                i = p[i];
            }
            i
        }
        let mut first: HashMap<(u32, u16, u8), usize> = HashMap::new();
        for (i, s) in self.services.iter().enumerate() {
            for e in s.all.iter() {
                let j = *first.entry((e.ip, e.port, s.proto)).or_insert(i);
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[a] = b;
            }
        }
        let mut sticky = vec![false; n];
        for (i, s) in self.services.iter().enumerate() {
            if s.affinity > 0 {
                let r = root(&mut parent, i);
                sticky[r] = true;
            }
        }
        for i in 0..n {
            let by_ip = sticky[root(&mut parent, i)];
            let s = &mut self.services[i];
            s.owner_by_client_ip = by_ip;
            for e in s.all.iter() {
                self.endpoints.insert((e.ip, e.port, s.proto), by_ip);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The Service prefilter: may `lb` have something to do with a packet from
    /// `src` to `dst`? Only "no" is certain. `tracked` holds the endpoints of this
    /// worker's translated connections (a removed endpoint's connection lives on).
    /// ICMP always passes (an error about a Service connection comes from anywhere);
    /// so does what is addressed to the node, the pods' gateway or the Service range.
    #[inline]
    pub fn concerns(
        &self,
        node: &crate::ip4::l3::NodeL3,
        tracked: &crate::services::prefilter::AddrFilter,
        src: u32,
        dst: u32,
        proto: u8,
    ) -> bool {
        !self.services.is_empty()
            && (proto == 1
                || self.to_service.may_contain(dst)
                || self.from_endpoint.may_contain(src)
                || tracked.may_contain(src)
                || dst == node.node_ip
                || dst == node.gateway_ip
                || node.in_service_range(dst))
    }

    /// Every Service, in the order of the specs it was built from.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The Service on this external or LoadBalancer IP and port, and whether it is
    /// a LoadBalancer IP (source ranges apply).
    #[inline]
    pub fn by_external(&self, ip: u32, port: u16, proto: u8) -> Option<(&Service, bool)> {
        let &(i, is_lb) = self.by_external.get(&(ip, port, proto))?;
        self.services.get(usize::from(i)).map(|s| (s, is_lb))
    }

    /// Is `ip` an external or LoadBalancer IP of some Service?
    #[inline]
    pub fn is_external_ip(&self, ip: u32) -> bool {
        !self.external_ips.is_empty() && self.external_ips.contains(&ip)
    }

    /// Is `ip` some Service's ClusterIP?
    #[inline]
    pub fn has_vip(&self, ip: u32) -> bool {
        self.vips.contains(&ip)
    }

    /// Does a Service with this identity exist?
    #[inline]
    pub fn has_uid(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }

    /// Every Service's (virtual IP, port, protocol) with its `owner_by_client_ip`,
    /// departed ones included.
    pub fn service_keys(&self) -> impl Iterator<Item = ((u32, u16, u8), bool)> + '_ {
        self.services
            .iter()
            .map(|s| ((s.vip, s.port, s.proto), s.owner_by_client_ip))
            .chain(self.departed_vips.iter().map(|(k, v)| (*k, *v)))
    }

    /// Also knows these deleted Services, for hand-off only (see `departed_vips`).
    pub fn with_departed_vips(
        mut self,
        departed: impl IntoIterator<Item = ((u32, u16, u8), bool)>,
    ) -> Self {
        for (k, by_ip) in departed {
            if !self.by_key.contains_key(&k) {
                self.departed_vips.insert(k, by_ip);
                self.to_service.insert(k.0);
            }
        }
        self
    }

    /// A deleted Service's `owner_by_client_ip`, while its connections may live.
    #[inline]
    pub fn departed_vip(&self, ip: u32, port: u16, proto: u8) -> Option<bool> {
        if self.departed_vips.is_empty() {
            return None;
        }
        self.departed_vips.get(&(ip, port, proto)).copied()
    }

    /// Every endpoint (ip, port, protocol) with its `owner_by_client_ip`, departed
    /// ones included.
    pub fn endpoint_keys(&self) -> impl Iterator<Item = ((u32, u16, u8), bool)> + '_ {
        self.endpoints.iter().map(|(k, v)| (*k, *v))
    }

    /// Also knows these endpoints that left their Services while TCP connections to
    /// them may live on (kube-proxy keeps those): with several workers, their replies
    /// still find the worker that owns the connection. Endpoints of the table itself
    /// keep their own entry.
    pub fn with_departed(
        mut self,
        departed: impl IntoIterator<Item = ((u32, u16, u8), bool)>,
    ) -> Self {
        for (k, by_ip) in departed {
            self.endpoints.entry(k).or_insert(by_ip);
            self.from_endpoint.insert(k.0);
        }
        self
    }

    /// Is `(ip, port, proto)` an endpoint of some Service?
    #[inline]
    pub fn is_endpoint(&self, ip: u32, port: u16, proto: u8) -> bool {
        self.endpoints.contains_key(&(ip, port, proto))
    }

    /// For an endpoint: whether its connections are owned by client address alone
    /// (see `Service::owner_by_client_ip`); None when it is no endpoint.
    #[inline]
    pub fn endpoint_owner_by_client_ip(&self, ip: u32, port: u16, proto: u8) -> Option<bool> {
        self.endpoints.get(&(ip, port, proto)).copied()
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
            .or_else(|| self.by_external(vip, port, proto).map(|(s, _)| s))
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
            serving: None,
        }
    }

    #[test]
    fn the_prefilter_says_no_only_to_what_no_service_concerns() {
        let ip = |s: &str| validate::ipv4(s).unwrap();
        let node = crate::ip4::l3::NodeL3 {
            node_ip: ip("192.168.77.11"),
            underlay: (ip("192.168.77.0"), 24),
            underlay_gateway: None,
            pod_net: (ip("10.244.0.0"), 24),
            cluster: (ip("10.244.0.0"), 16),
            gateway_ip: ip("10.244.0.1"),
            router_mac: crate::wire::MacAddr([2, 0, 0, 0, 0, 1]),
            bridge: 1,
            vni: 1,
            vxlan_port: 4789,
            service_net: Some((ip("10.96.0.0"), 12)),
        };
        let none = crate::services::prefilter::AddrFilter::default();
        let empty = ServiceTable::default();
        let (a, b) = (ip("10.244.0.2"), ip("10.244.0.3"));
        assert!(
            !empty.concerns(&node, &none, a, ip("10.96.0.10"), 6),
            "no Services"
        );
        let mut s = ServiceSpec::new(
            "default/web",
            "10.96.0.10",
            80,
            "tcp",
            vec![ep("10.244.1.5", true, false)],
        );
        s.external_ips = vec!["198.51.100.50".into()];
        let t = ServiceTable::build(&[s], None)
            .unwrap()
            .with_departed([((ip("10.244.2.9"), 8080, 6), false)]);
        // Pod to pod, neither a Service's: skips lb.
        assert!(!t.concerns(&node, &none, a, b, 6));
        assert!(
            !t.concerns(&node, &none, a, ip("10.244.1.5"), 17),
            "to an endpoint directly"
        );
        for (src, dst, proto, why) in [
            (a, ip("10.96.0.10"), 6, "to a ClusterIP"),
            (a, ip("10.96.0.99"), 6, "into the Service range"),
            (a, ip("198.51.100.50"), 6, "to an external IP"),
            (ip("10.244.1.5"), a, 6, "from an endpoint (a reply)"),
            (ip("10.244.2.9"), a, 6, "from a departed endpoint"),
            (a, node.node_ip, 6, "to the node (NodePort)"),
            (a, node.gateway_ip, 17, "to the gateway (hairpin)"),
            (a, b, 1, "ICMP (may quote a Service connection)"),
        ] {
            assert!(t.concerns(&node, &none, src, dst, proto), "{why}");
        }
        // A translated connection's endpoint, known only to the connection table.
        let mut tracked = crate::services::prefilter::AddrFilter::default();
        tracked.insert(ip("10.244.3.3"));
        assert!(!t.concerns(&node, &none, ip("10.244.3.3"), a, 6));
        assert!(t.concerns(&node, &tracked, ip("10.244.3.3"), a, 6));
    }

    #[test]
    fn only_ready_endpoints_take_new_connections() {
        let s = ServiceSpec::new(
            "default/web",
            "10.96.0.10",
            80,
            "tcp",
            vec![
                ep("10.244.0.3", true, false),
                ep("10.244.1.2", false, false),
                ep("10.244.1.3", true, true),
            ],
        );
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

    #[test]
    fn services_sharing_endpoints_with_an_affinity_service_are_owned_by_client_ip() {
        let ip = |a: &str| validate::ipv4(a).unwrap();
        let svc = |name: &str, vip: &str, eps: &[&str], affinity: Option<u32>| ServiceSpec {
            affinity_timeout: affinity,
            ..ServiceSpec::new(
                name,
                vip,
                80,
                "tcp",
                eps.iter().map(|e| EndpointSpec::ready(e, 8080)).collect(),
            )
        };
        // a (affinity) shares 10.244.0.3 with b, b shares 10.244.1.2 with c: one
        // group; d stands alone; e has affinity but shares nothing.
        let t = ServiceTable::build(
            &[
                svc("default/a", "10.96.0.1", &["10.244.0.3"], Some(60)),
                svc(
                    "default/b",
                    "10.96.0.2",
                    &["10.244.0.3", "10.244.1.2"],
                    None,
                ),
                svc("default/c", "10.96.0.3", &["10.244.1.2"], None),
                svc("default/d", "10.96.0.4", &["10.244.2.2"], None),
                svc("default/e", "10.96.0.5", &["10.244.3.2"], Some(10)),
            ],
            None,
        )
        .unwrap();
        let by_ip = |vip: &str| t.lookup(ip(vip), 80, 6).unwrap().owner_by_client_ip;
        assert!(by_ip("10.96.0.1") && by_ip("10.96.0.2") && by_ip("10.96.0.3"));
        assert!(!by_ip("10.96.0.4"));
        assert!(by_ip("10.96.0.5"));
        let ep = |a: &str| t.endpoint_owner_by_client_ip(ip(a), 8080, 6);
        assert_eq!(ep("10.244.1.2"), Some(true), "linked through b");
        assert_eq!(ep("10.244.2.2"), Some(false));
        assert_eq!(ep("10.244.9.9"), None, "no endpoint");
        assert_eq!(
            t.endpoint_owner_by_client_ip(ip("10.244.0.3"), 8080, 17),
            None,
            "per protocol"
        );
    }

    #[test]
    fn serving_terminating_endpoints_take_new_connections_only_when_none_is_ready() {
        let ip = |a: &str| validate::ipv4(a).unwrap();
        let e = |a: &str, ready: bool, terminating: bool, serving: Option<bool>| EndpointSpec {
            terminating,
            serving,
            ready,
            ..EndpointSpec::ready(a, 8080)
        };
        let eps_of = |eps: Vec<EndpointSpec>| -> Vec<u32> {
            let t = ServiceTable::build(
                &[ServiceSpec::new(
                    "default/web",
                    "10.96.0.10",
                    80,
                    "tcp",
                    eps,
                )],
                None,
            )
            .unwrap();
            let s = t.lookup(ip("10.96.0.10"), 80, 6).unwrap();
            s.endpoints.iter().map(|e| e.ip).collect()
        };
        let (a, b, c) = ("10.244.0.3", "10.244.1.2", "10.244.1.3");
        // A ready one exists: only it, the serving terminating one waits.
        assert_eq!(
            eps_of(vec![e(a, true, false, None), e(b, false, true, Some(true))]),
            vec![ip(a)]
        );
        // None ready: the serving terminating ones (not the non-serving one).
        assert_eq!(
            eps_of(vec![
                e(a, false, false, Some(false)),
                e(b, false, true, Some(true)),
                e(c, false, true, Some(false)),
            ]),
            vec![ip(b)]
        );
        // serving absent reads as ready: a ready terminating endpoint serves.
        assert_eq!(eps_of(vec![e(a, true, true, None)]), vec![ip(a)]);
        // Nothing serving: no endpoint (the Service refuses).
        assert!(eps_of(vec![e(a, false, true, None)]).is_empty());
    }

    #[test]
    fn internal_traffic_policy_local_needs_the_node_and_keeps_local_endpoints() {
        let ip = |a: &str| validate::ipv4(a).unwrap();
        let spec = ServiceSpec {
            internal_traffic_policy: Some("Local".into()),
            ..ServiceSpec::new(
                "default/web",
                "10.96.0.10",
                80,
                "tcp",
                vec![
                    EndpointSpec::ready("10.244.0.3", 8080),
                    EndpointSpec::ready("10.244.1.2", 8080),
                ],
            )
        };
        assert!(ServiceTable::build(std::slice::from_ref(&spec), None)
            .unwrap_err()
            .contains("node"));
        let node = NodeInfo {
            node_ip: ip("192.168.77.11"),
            pod_net: (ip("10.244.0.0"), 24),
        };
        let t = ServiceTable::build(std::slice::from_ref(&spec), Some(node)).unwrap();
        let s = t.lookup(ip("10.96.0.10"), 80, 6).unwrap();
        assert!(s.internal_local);
        assert_eq!(
            &s.local_endpoints[..],
            [Endpoint {
                ip: ip("10.244.0.3"),
                port: 8080
            }]
        );
        let bad = ServiceSpec {
            internal_traffic_policy: Some("Nearby".into()),
            ..spec
        };
        assert!(ServiceTable::build(&[bad], Some(node)).is_err());
    }

    #[test]
    fn external_and_load_balancer_ips_are_checked_and_found() {
        let ip = |a: &str| validate::ipv4(a).unwrap();
        let web = ServiceSpec {
            external_ips: vec!["198.51.100.50".into()],
            load_balancer_ips: vec!["198.51.100.60".into()],
            load_balancer_source_ranges: vec!["10.0.0.0/8".into()],
            ..ServiceSpec::new(
                "default/web",
                "10.96.0.10",
                80,
                "tcp",
                vec![EndpointSpec::ready("10.244.0.3", 8080)],
            )
        };
        let t = ServiceTable::build(std::slice::from_ref(&web), None).unwrap();
        let (s, is_lb) = t.by_external(ip("198.51.100.50"), 80, 6).unwrap();
        assert!(!is_lb && s.name == "default/web");
        assert!(t.by_external(ip("198.51.100.60"), 80, 6).unwrap().1);
        assert!(t.by_external(ip("198.51.100.50"), 81, 6).is_none());
        assert!(t.is_external_ip(ip("198.51.100.60")) && !t.is_external_ip(ip("10.96.0.10")));
        assert_eq!(s.source_ranges, vec![(ip("10.0.0.0"), 8)]);
        // Another Service on the same external address and port, an external IP
        // that is a ClusterIP:port, a bad range: refused.
        let other = ServiceSpec {
            external_ips: vec!["198.51.100.50".into()],
            ..ServiceSpec::new("default/other", "10.96.0.11", 80, "tcp", vec![])
        };
        assert!(ServiceTable::build(&[web.clone(), other], None)
            .unwrap_err()
            .contains("already"));
        let clash = ServiceSpec {
            external_ips: vec!["10.96.0.10".into()],
            ..ServiceSpec::new("default/clash", "10.96.0.12", 80, "tcp", vec![])
        };
        assert!(ServiceTable::build(&[web.clone(), clash], None).is_err());
        let bad = ServiceSpec {
            load_balancer_source_ranges: vec!["10.0.0.0/40".into()],
            ..web
        };
        assert!(ServiceTable::build(&[bad], None)
            .unwrap_err()
            .contains("source_ranges"));
    }

    #[test]
    fn a_rebuild_shares_the_tables_of_unchanged_services_and_rebuilds_the_rest() {
        let ep = |ip: &str| EndpointSpec {
            ip: ip.into(),
            port: 8080,
            weight: 1,
            ready: true,
            terminating: false,
            serving: None,
        };
        let mk = |n: usize, last: &str| -> Vec<ServiceSpec> {
            (0..n)
                .map(|k| {
                    let e = if k + 1 == n { last } else { "10.244.1.9" };
                    ServiceSpec::new(
                        &format!("d/s{k}"),
                        &format!("10.96.0.{}", k + 1),
                        80,
                        "tcp",
                        vec![ep("10.244.0.5"), ep(e)],
                    )
                })
                .collect()
        };
        let node = Some(NodeInfo {
            node_ip: 0xc0a8_4d0b,
            pod_net: (0x0af4_0000, 24),
        });
        let ids: Vec<u32> = (1..=4).collect();
        let a = mk(4, "10.244.1.9");
        let ta = ServiceTable::build_with_ids(&a, node, &ids).unwrap();
        let _ = &a;
        let b = mk(4, "10.244.2.7");
        let refs: Vec<&ServiceSpec> = b.iter().collect();
        let only_s3: &dyn Fn(&str) -> bool = &|n| n != "d/s3";
        let tb = ServiceTable::build_reusing(&refs, node, &ids, Some((&ta, only_s3))).unwrap();
        for k in 0..3 {
            assert!(
                tb.services[k].maglev.same_table(&ta.services[k].maglev),
                "s{k} unchanged: shared"
            );
            assert!(tb.services[k]
                .local_maglev
                .same_table(&ta.services[k].local_maglev));
        }
        assert!(
            !tb.services[3].maglev.same_table(&ta.services[3].maglev),
            "s3 changed: rebuilt"
        );
        // The same table as a build from scratch, entry for entry.
        let fresh = ServiceTable::build_with_ids(&b, node, &ids).unwrap();
        for (x, y) in tb.services.iter().zip(&fresh.services) {
            assert_eq!(x.endpoints, y.endpoints);
            assert_eq!(x.local_endpoints, y.local_endpoints);
            assert!((0..1000u64).all(|h| x.maglev.pick(h) == y.maglev.pick(h)));
        }
        // Another node: local endpoints differ, nothing is reused.
        let other = Some(NodeInfo {
            node_ip: 0xc0a8_4d0c,
            pod_net: (0x0af4_0100, 24),
        });
        let all_same: &dyn Fn(&str) -> bool = &|_| true;
        let tc = ServiceTable::build_reusing(&refs, other, &ids, Some((&tb, all_same))).unwrap();
        assert!(!tc.services[0].maglev.same_table(&tb.services[0].maglev));
        assert_eq!(
            tc.services[0].local_endpoints.len(),
            1,
            "10.244.1.9 is local there"
        );
    }
}

//! healthCheckNodePort: for Services with externalTrafficPolicy Local, an HTTP server
//! per node on that port answering whether this node has endpoints for the Service,
//! as kube-proxy does, so an external load balancer sends traffic only to nodes that
//! can serve it: `200` with `localEndpoints` >= 1, `503` otherwise, and kube-proxy's
//! JSON body. It runs in the control service (the node's network namespace: packets
//! to the node IP that are not the dataplane's reach the node's kernel through the
//! host port), never in the dataplane.
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use podpath_proto::{taking_new_connections, validate, EndpointSpec, NodeSpec, ServiceSpec};

/// What one health port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

impl Health {
    /// The HTTP status and kube-proxy's body.
    pub fn answer(&self) -> (u16, String) {
        let body = serde_json::json!({
            "service": { "namespace": self.namespace, "name": self.name },
            "localEndpoints": self.local_endpoints,
            "serviceProxyHealthy": true,
        })
        .to_string();
        (if self.local_endpoints > 0 { 200 } else { 503 }, body)
    }
}

/// The health ports `services` ask for, with this node's endpoints for each: those
/// in the node's pod CIDR that take new connections (ready; else serving and
/// terminating, the dataplane's rule). ServicePorts of one Service share its port.
pub fn wanted(services: &[ServiceSpec], node: Option<&NodeSpec>) -> BTreeMap<u16, Health> {
    let pod_net = node.and_then(|n| validate::cidr(&n.pod_cidr).ok());
    let local = |ip: &str| match (pod_net, validate::ipv4(ip)) {
        (Some(net), Ok(a)) => validate::cidr_contains(net, (a, 32)),
        _ => false,
    };
    let mut out: BTreeMap<u16, Health> = BTreeMap::new();
    for s in services {
        let Some(port) = s.health_check_node_port.filter(|&p| p != 0) else {
            continue;
        };
        // The endpoints policy Local uses: this node's, by the dataplane's rule.
        let here: Vec<&EndpointSpec> = s.endpoints.iter().filter(|e| local(&e.ip)).collect();
        let n = taking_new_connections(&here, |e| e).len();
        let (namespace, name) = s.name.split_once('/').unwrap_or(("default", &s.name));
        // A Service's name without its port suffix ("web:https" -> "web").
        let name = name.split(':').next().unwrap_or(name);
        let h = out.entry(port).or_insert_with(|| Health {
            namespace: namespace.into(),
            name: name.into(),
            local_endpoints: 0,
        });
        h.local_endpoints += n;
    }
    out
}

/// The running health servers: one listener thread per port.
#[derive(Default)]
pub struct HealthServers {
    table: Arc<Mutex<BTreeMap<u16, Health>>>,
    running: BTreeMap<u16, Arc<AtomicBool>>,
}

impl HealthServers {
    /// Serves exactly the ports of `wanted`: new ones are bound, gone ones stopped,
    /// the answers of all updated. Returns the ports it could not bind, with why.
    pub fn update(&mut self, wanted: BTreeMap<u16, Health>) -> Vec<String> {
        let mut failed = Vec::new();
        for (port, stop) in &self.running {
            if !wanted.contains_key(port) {
                stop.store(true, Ordering::Relaxed);
            }
        }
        self.running.retain(|p, _| wanted.contains_key(p));
        for &port in wanted.keys() {
            if self.running.contains_key(&port) {
                continue;
            }
            match TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))) {
                Ok(l) => {
                    let stop = Arc::new(AtomicBool::new(false));
                    let (table, s2) = (Arc::clone(&self.table), Arc::clone(&stop));
                    std::thread::spawn(move || {
                        crate::http::serve(l, &s2, |_| {
                            let h = table
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get(&port)
                                .cloned();
                            let (code, body) = h.map_or((503, "{}".to_string()), |h| h.answer());
                            crate::http::Answer {
                                code,
                                content_type: "application/json",
                                body,
                            }
                        })
                    });
                    self.running.insert(port, stop);
                }
                Err(e) => failed.push(format!("health check port {port}: {e}")),
            }
        }
        *self.table.lock().unwrap_or_else(|e| e.into_inner()) = wanted;
        failed
    }

    pub fn ports(&self) -> Vec<u16> {
        self.running.keys().copied().collect()
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for stop in self.running.values() {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podpath_proto::{sample_node, EndpointSpec};

    #[test]
    fn counts_this_nodes_endpoints_and_answers_as_kube_proxy() {
        let node = sample_node(); // pods 10.244.0.0/24
        let svc = |eps: Vec<EndpointSpec>| ServiceSpec {
            health_check_node_port: Some(32000),
            external_traffic_policy: Some("Local".into()),
            ..ServiceSpec::new("default/web", "10.96.0.10", 80, "tcp", eps)
        };
        let w = wanted(
            &[svc(vec![
                EndpointSpec::ready("10.244.0.3", 8080),
                EndpointSpec::ready("10.244.1.2", 8080),
            ])],
            Some(&node),
        );
        let h = &w[&32000];
        assert_eq!(h.local_endpoints, 1);
        let (code, body) = h.answer();
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["service"]["namespace"], "default");
        assert_eq!(v["service"]["name"], "web");
        assert_eq!(v["localEndpoints"], 1);
        // Only another node's endpoint: 503.
        let w = wanted(
            &[svc(vec![EndpointSpec::ready("10.244.1.2", 8080)])],
            Some(&node),
        );
        assert_eq!(w[&32000].answer().0, 503);
        // No health port: nothing served.
        let plain = ServiceSpec::new("default/x", "10.96.0.11", 80, "tcp", vec![]);
        assert!(wanted(&[plain], Some(&node)).is_empty());
    }
}

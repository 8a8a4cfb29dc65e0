//! healthCheckNodePort: for Services with externalTrafficPolicy Local, an HTTP server
//! per node on that port answering whether this node has endpoints for the Service,
//! as kube-proxy does, so an external load balancer sends traffic only to nodes that
//! can serve it: `200` with `localEndpoints` >= 1, `503` otherwise, and kube-proxy's
//! JSON body. It runs in the control service (the node's network namespace: packets
//! to the node IP that are not the dataplane's reach the node's kernel through the
//! host port), never in the dataplane.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podpath_proto::{validate, NodeSpec, ServiceSpec};

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
    let local = |ip: &str| {
        let (Some((net, len)), Ok(a)) = (pod_net, validate::ipv4(ip)) else {
            return false;
        };
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        a & mask == net
    };
    let mut out: BTreeMap<u16, Health> = BTreeMap::new();
    for s in services {
        let Some(port) = s.health_check_node_port.filter(|&p| p != 0) else {
            continue;
        };
        let ready: Vec<_> = s
            .endpoints
            .iter()
            .filter(|e| e.ready && !e.terminating && e.weight > 0)
            .collect();
        let takers: Vec<_> = if ready.is_empty() {
            s.endpoints
                .iter()
                .filter(|e| e.terminating && e.serving.unwrap_or(e.ready) && e.weight > 0)
                .collect()
        } else {
            ready
        };
        let n = takers.iter().filter(|e| local(&e.ip)).count();
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
                    std::thread::spawn(move || serve(l, port, &table, &s2));
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

/// Accepts until `stop`; each request gets one answer and the connection closes.
fn serve(l: TcpListener, port: u16, table: &Mutex<BTreeMap<u16, Health>>, stop: &AtomicBool) {
    let _ = l.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                // The request line and headers: read what comes (bounded), answer.
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                let h = table
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&port)
                    .cloned();
                let (code, body) = h.map_or((503, "{}".to_string()), |h| h.answer());
                let reason = if code == 200 {
                    "OK"
                } else {
                    "Service Unavailable"
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
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

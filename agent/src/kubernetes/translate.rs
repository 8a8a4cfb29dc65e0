//! Kubernetes objects into podpath's desired state, as kube-proxy and flannel read
//! them: pure functions over k8s-openapi types, unit-tested on the API's JSON.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use podpath_proto::{EndpointSpec, RemoteSpec, ServiceSpec};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// flannel's Node annotations: the VTEP (`{"VNI":1,"VtepMAC":"..."}`) and public IP.
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// Remotes and Services the Kubernetes source manages carry these prefixes.
pub const REMOTE_PREFIX: &str = "k8s-";

/// "namespace/name" of an object.
pub fn key(ns: Option<&str>, name: Option<&str>) -> String {
    format!("{}/{}", ns.unwrap_or("default"), name.unwrap_or(""))
}

/// The Service an EndpointSlice belongs to ("namespace/name").
pub fn slice_service(s: &EndpointSlice) -> Option<String> {
    let name = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(key(s.metadata.namespace.as_deref(), Some(name)))
}

/// The name of one ServicePort's entry: "namespace/name:port/protocol" (a Service
/// has one entry per port).
pub fn spec_name(svc_key: &str, p: &ServicePort) -> String {
    let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
    format!("{svc_key}:{}/{proto}", p.port)
}

/// The entries of one Service with its EndpointSlices (IPv4 only; TCP and UDP;
/// headless and ExternalName Services have none).
pub fn service(svc: &Service, slices: &[&EndpointSlice]) -> Vec<ServiceSpec> {
    let (Some(spec), md) = (svc.spec.as_ref(), &svc.metadata) else {
        return Vec::new();
    };
    let k = key(md.namespace.as_deref(), md.name.as_deref());
    let vip = match spec.cluster_ip.as_deref() {
        Some(ip) if ip.parse::<std::net::Ipv4Addr>().is_ok() => ip.to_string(),
        _ => return Vec::new(),
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(10_800)
    });
    let lb_ips: Vec<String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|i| i.iter().filter_map(|g| g.ip.clone()).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if proto != "TCP" && proto != "UDP" {
            continue;
        }
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        out.push(ServiceSpec {
            name: spec_name(&k, p),
            vip: vip.clone(),
            port,
            protocol: proto.to_ascii_lowercase(),
            endpoints: endpoints(p, slices),
            affinity_timeout: affinity,
            node_port: p
                .node_port
                .filter(|_| node_ports)
                .and_then(|n| u16::try_from(n).ok()),
            external_traffic_policy: spec.external_traffic_policy.clone(),
            internal_traffic_policy: spec.internal_traffic_policy.clone(),
            external_ips: spec.external_ips.clone().unwrap_or_default(),
            load_balancer_ips: lb_ips.clone(),
            load_balancer_source_ranges: spec
                .load_balancer_source_ranges
                .clone()
                .unwrap_or_default(),
            health_check_node_port: spec
                .health_check_node_port
                .and_then(|n| u16::try_from(n).ok()),
        });
    }
    out
}

/// One ServicePort's endpoints: the slices' addresses on the slice port of the same
/// name and protocol, each once (kube-proxy merges slices and drops duplicates).
fn endpoints(p: &ServicePort, slices: &[&EndpointSlice]) -> Vec<EndpointSpec> {
    let want_name = p.name.clone().unwrap_or_default();
    let want_proto = p.protocol.as_deref().unwrap_or("TCP");
    let mut seen = BTreeMap::new();
    for s in slices.iter().filter(|s| s.address_type == "IPv4") {
        let Some(port) = s
            .ports
            .iter()
            .flatten()
            .find(|sp| {
                sp.name.clone().unwrap_or_default() == want_name
                    && sp.protocol.as_deref().unwrap_or("TCP") == want_proto
            })
            .and_then(|sp| sp.port)
            .and_then(|n| u16::try_from(n).ok())
        else {
            continue;
        };
        for e in &s.endpoints {
            let c = e.conditions.as_ref();
            // A missing condition reads as Kubernetes says consumers should: ready
            // unknown is ready, serving unknown follows ready, terminating false.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            for a in &e.addresses {
                seen.entry((a.clone(), port)).or_insert(EndpointSpec {
                    ip: a.clone(),
                    port,
                    weight: 1,
                    ready,
                    terminating,
                    serving,
                });
            }
        }
    }
    seen.into_values().collect()
}

/// Another node as a remote: its pod CIDR, its public IP (flannel's annotation, else
/// its InternalIP) and its VTEP MAC (flannel's annotation, else the pods' gateway
/// MAC podpath nodes use). None for nodes without a pod CIDR or address.
pub fn remote(n: &Node) -> Option<RemoteSpec> {
    let name = n.metadata.name.clone()?;
    let pod_cidr = n.spec.as_ref()?.pod_cidr.clone()?;
    let ann = n.metadata.annotations.as_ref();
    let node_ip = ann.and_then(|a| a.get(PUBLIC_IP)).cloned().or_else(|| {
        n.status
            .as_ref()?
            .addresses
            .as_ref()?
            .iter()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address.clone())
    })?;
    let vtep_mac = ann
        .and_then(|a| a.get(BACKEND_DATA))
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .and_then(|v| v["VtepMAC"].as_str().map(String::from))
        .or_else(|| podpath_proto::pod_gateway(&pod_cidr).map(podpath_proto::gateway_mac_text))?;
    Some(RemoteSpec {
        name: format!("{REMOTE_PREFIX}{name}"),
        node_ip,
        vtep_mac,
        pod_cidr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(json: serde_json::Value) -> Service {
        serde_json::from_value(json).unwrap()
    }
    fn slice(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_service_with_two_ports_and_two_slices() {
        let s = svc(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "type": "NodePort", "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Cluster",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080},
                          {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
                          {"name": "sctp", "port": 99, "protocol": "SCTP"}]}
        }));
        let a = slice(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "n2"},
                {"addresses": ["10.244.0.7"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "n1"}]
        }));
        let b = slice(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "web-def", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.5"]}, {"addresses": ["10.244.2.9"]}]
        }));
        assert_eq!(slice_service(&a).as_deref(), Some("shop/web"));
        let specs = service(&s, &[&a, &b]);
        assert_eq!(specs.len(), 2, "SCTP is left out");
        let http = &specs[0];
        assert_eq!(http.name, "shop/web:80/tcp");
        assert_eq!(
            (http.vip.as_str(), http.port, http.node_port),
            ("10.96.0.10", 80, Some(30080))
        );
        assert_eq!(http.affinity_timeout, Some(60));
        assert_eq!(http.external_traffic_policy.as_deref(), Some("Local"));
        let ips: Vec<&str> = http.endpoints.iter().map(|e| e.ip.as_str()).collect();
        assert_eq!(
            ips,
            ["10.244.0.7", "10.244.1.5", "10.244.2.9"],
            "merged, each once"
        );
        assert!(http.endpoints.iter().all(|e| e.port == 8080));
        let term = &http.endpoints[0];
        assert!(!term.ready && term.terminating && term.serving == Some(true));
        let dns = &specs[1];
        assert_eq!(
            (dns.name.as_str(), dns.protocol.as_str(), dns.node_port),
            ("shop/web:53/udp", "udp", None)
        );
        assert_eq!(
            dns.endpoints.len(),
            2,
            "only the slice that has the dns port"
        );
        assert!(dns.endpoints.iter().all(|e| e.port == 5353));
    }

    #[test]
    fn headless_external_name_and_ipv6_give_nothing() {
        let headless = svc(
            serde_json::json!({"metadata": {"name": "h", "namespace": "d"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
        );
        assert!(service(&headless, &[]).is_empty());
        let ext = svc(
            serde_json::json!({"metadata": {"name": "e", "namespace": "d"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}}),
        );
        assert!(service(&ext, &[]).is_empty());
        let v4 = svc(
            serde_json::json!({"metadata": {"name": "s", "namespace": "d"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}}),
        );
        let v6 = slice(
            serde_json::json!({"addressType": "IPv6", "metadata": {"name": "s-1", "namespace": "d"},
            "ports": [{"port": 80}], "endpoints": [{"addresses": ["fd00::1"]}]}),
        );
        let specs = service(&v4, &[&v6]);
        assert_eq!(specs.len(), 1);
        assert!(
            specs[0].endpoints.is_empty(),
            "IPv6 endpoints are not podpath's"
        );
        assert_eq!(
            specs[0].node_port, None,
            "a ClusterIP Service opens no NodePort"
        );
    }

    #[test]
    fn load_balancer_fields() {
        let lb = svc(
            serde_json::json!({"metadata": {"name": "lb", "namespace": "d"},
            "spec": {"clusterIP": "10.96.0.30", "type": "LoadBalancer", "externalIPs": ["198.51.100.7"],
                "loadBalancerSourceRanges": ["192.0.2.0/24"], "healthCheckNodePort": 32000,
                "externalTrafficPolicy": "Local", "ports": [{"port": 443, "nodePort": 31443}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}, {"hostname": "lb.example"}]}}}),
        );
        let s = &service(&lb, &[])[0];
        assert_eq!(s.external_ips, ["198.51.100.7"]);
        assert_eq!(s.load_balancer_ips, ["203.0.113.5"]);
        assert_eq!(s.load_balancer_source_ranges, ["192.0.2.0/24"]);
        assert_eq!(
            (s.health_check_node_port, s.node_port),
            (Some(32000), Some(31443))
        );
    }

    #[test]
    fn nodes_become_remotes_from_flannels_annotations_or_their_addresses() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node2", "annotations": {
                "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"6e:1d:2a:00:00:02\"}",
                "flannel.alpha.coreos.com/public-ip": "192.168.77.12"}},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}})).unwrap();
        let r = remote(&n).unwrap();
        assert_eq!(
            (
                r.name.as_str(),
                r.node_ip.as_str(),
                r.vtep_mac.as_str(),
                r.pod_cidr.as_str()
            ),
            (
                "k8s-node2",
                "192.168.77.12",
                "6e:1d:2a:00:00:02",
                "10.244.1.0/24"
            )
        );
        let bare: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node3"}, "spec": {"podCIDR": "10.244.2.0/24"},
            "status": {"addresses": [{"type": "Hostname", "address": "node3"}, {"type": "InternalIP", "address": "192.168.77.13"}]}})).unwrap();
        let r = remote(&bare).unwrap();
        assert_eq!(
            (r.node_ip.as_str(), r.vtep_mac.as_str()),
            ("192.168.77.13", "0a:58:0a:f4:02:01")
        );
        let no_cidr: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}, "spec": {}}))
                .unwrap();
        assert!(remote(&no_cidr).is_none());
    }
}

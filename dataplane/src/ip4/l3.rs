//! The node's L3 view: its own addresses, the remote nodes (VTEPs and pod CIDRs), the
//! next hops and the LPM table that maps destinations to them. Built by the control
//! thread from the node and remote-node specs, published whole to the workers.
use hashbrown::HashMap;
use podpath_proto::{validate, NodeSpec, RemoteSpec};

use crate::ip4::lpm::{self, Lpm, Route};
use crate::wire::{Ipv4Addr, MacAddr};

/// Where a route sends a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// A pod on this node: resolve the destination on the pods' bridge domain.
    Local,
    /// A pod on remote node `i` (index into `L3::remotes`): VXLAN.
    Remote(u16),
    /// The node's own kernel, through the host port.
    Host,
    /// The underlay, through the uplink: resolve the destination (on-link) or the
    /// underlay gateway.
    Uplink,
    /// The dataplane itself (the pods' gateway address).
    Us,
}

/// The kinds of routed packet `ip4-lookup` hands on, each to the stage registered
/// for it (a stage's `next_hop [...]` in `pipeline/registry.rs`, grout's next-hop
/// types): a feature adds where routed packets go without editing ip4-lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHopKind {
    /// A pod on this node (next hop: the pod, on the bridge domain).
    Local,
    /// A pod on a remote node (`Meta::remote` names it).
    Remote,
    /// The node's kernel, through the host port.
    Host,
    /// The underlay, unmasqueraded (to a node, or the node's own traffic).
    Uplink,
    /// The underlay, leaving the cluster: pods' sources are masqueraded.
    Masquerade,
    /// The dataplane itself.
    Us,
}

#[derive(Debug, Clone)]
pub struct Remote {
    pub name: String,
    pub node_ip: u32,
    pub vtep_mac: MacAddr,
    pub pod_net: (u32, u8),
}

/// This node's addresses and overlay settings.
#[derive(Debug, Clone)]
pub struct NodeL3 {
    pub node_ip: u32,
    pub underlay: (u32, u8),
    pub underlay_gateway: Option<u32>,
    pub pod_net: (u32, u8),
    pub cluster: (u32, u8),
    pub gateway_ip: u32,
    /// The pods' gateway MAC (and the host port's router MAC).
    pub router_mac: MacAddr,
    pub bridge: u16,
    pub vni: u32,
    pub vxlan_port: u16,
    /// The cluster's Service range, when configured.
    pub service_net: Option<(u32, u8)>,
}

impl NodeL3 {
    /// Is `dst` inside the cluster's Service range (when the node has one)?
    #[inline]
    pub fn in_service_range(&self, dst: u32) -> bool {
        self.service_net
            .is_some_and(|(net, len)| dst & lpm::mask(len) == net)
    }
}

pub struct L3 {
    pub node: Option<NodeL3>,
    pub remotes: Vec<Remote>,
    /// Indexed by LPM next-hop id.
    pub next_hops: Vec<Option<NextHop>>,
    pub lpm: Lpm,
    pub remote_by_ip: HashMap<u32, u16>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum L3Error {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Lpm(#[from] lpm::LpmError),
}

fn parse_ip(s: &str, what: &str) -> Result<u32, L3Error> {
    validate::ipv4(s).map_err(|e| L3Error::Invalid(format!("{what}: {e}")))
}

fn parse_net(s: &str, what: &str) -> Result<(u32, u8), L3Error> {
    validate::cidr(s).map_err(|e| L3Error::Invalid(format!("{what}: {e}")))
}

/// The pods' gateway MAC for a gateway address: 0a:58 + the IPv4 address, the
/// convention Kubernetes bridge plugins use for addresses they derive.
pub fn gateway_mac(gw: u32) -> MacAddr {
    MacAddr(podpath_proto::gateway_mac(std::net::Ipv4Addr::from(gw)))
}

impl L3 {
    pub fn empty() -> L3 {
        L3 {
            node: None,
            remotes: Vec::new(),
            next_hops: vec![None],
            lpm: Lpm::empty(),
            remote_by_ip: HashMap::new(),
        }
    }

    /// Builds the view; every address and CIDR is checked, and remote pod CIDRs may
    /// not overlap each other or this node's.
    pub fn build(node: &NodeSpec, remotes: &[RemoteSpec]) -> Result<L3, L3Error> {
        let node_ip = parse_ip(&node.node_ip, "node_ip")?;
        let underlay = parse_net(&node.underlay_cidr, "underlay_cidr")?;
        if node_ip & lpm::mask(underlay.1) != underlay.0 {
            return Err(L3Error::Invalid(format!(
                "node_ip {} is not in underlay_cidr {}",
                node.node_ip, node.underlay_cidr
            )));
        }
        let underlay_gateway = node
            .underlay_gateway
            .as_deref()
            .map(|g| parse_ip(g, "underlay_gateway"))
            .transpose()?;
        let pod_net = parse_net(&node.pod_cidr, "pod_cidr")?;
        let cluster = parse_net(&node.cluster_cidr, "cluster_cidr")?;
        if !validate::cidr_contains(cluster, pod_net) {
            return Err(L3Error::Invalid(format!(
                "pod_cidr {} is not inside cluster_cidr {}",
                node.pod_cidr, node.cluster_cidr
            )));
        }
        if pod_net.1 > 30 {
            return Err(L3Error::Invalid(format!(
                "pod_cidr {} leaves no room for pods",
                node.pod_cidr
            )));
        }
        if node.vni >= 1 << 24 {
            return Err(L3Error::Invalid(format!(
                "vni {} does not fit 24 bits",
                node.vni
            )));
        }
        if node.vxlan_port == 0 {
            return Err(L3Error::Invalid("vxlan_port must not be 0".into()));
        }
        let service_net = node
            .service_cidr
            .as_deref()
            .map(|c| parse_net(c, "service_cidr"))
            .transpose()?;
        if let Some(sn) = service_net {
            if validate::cidr_overlap(sn, cluster) || validate::cidr_overlap(sn, underlay) {
                return Err(L3Error::Invalid(format!(
                    "service_cidr {} overlaps the cluster or underlay CIDR",
                    node.service_cidr.as_deref().unwrap_or("")
                )));
            }
        }
        let gateway_ip = pod_net.0 + 1;
        let mut next_hops: Vec<Option<NextHop>> = vec![None];
        let mut routes = Vec::new();
        let mut add = |prefix: (u32, u8), nh: NextHop, routes: &mut Vec<Route>| {
            next_hops.push(Some(nh));
            let id = u32::try_from(next_hops.len() - 1).unwrap_or(0);
            routes.push(Route {
                prefix: prefix.0,
                len: prefix.1,
                next_hop: id,
            });
        };
        add(underlay, NextHop::Uplink, &mut routes);
        if underlay_gateway.is_some() {
            // Everything else: out of the uplink via the underlay gateway.
            add((0, 0), NextHop::Uplink, &mut routes);
        }
        add(pod_net, NextHop::Local, &mut routes);
        add((gateway_ip, 32), NextHop::Us, &mut routes);
        add((node_ip, 32), NextHop::Host, &mut routes);
        let mut rs = Vec::new();
        let mut remote_by_ip = HashMap::new();
        for (i, r) in remotes.iter().enumerate() {
            let what = format!("remote node {}", r.name);
            let ip = parse_ip(&r.node_ip, &what)?;
            let net = parse_net(&r.pod_cidr, &what)?;
            let mac: MacAddr = r
                .vtep_mac
                .parse()
                .map_err(|e: String| L3Error::Invalid(format!("{what}: {e}")))?;
            if mac.is_multicast() {
                return Err(L3Error::Invalid(format!(
                    "{what}: VTEP MAC {mac} is a group address"
                )));
            }
            if validate::cidr_overlap(net, pod_net) {
                return Err(L3Error::Invalid(format!(
                    "{what}: pod_cidr {} overlaps this node's {}",
                    r.pod_cidr, node.pod_cidr
                )));
            }
            if ip == node_ip {
                return Err(L3Error::Invalid(format!(
                    "{what}: node_ip {} is this node's",
                    r.node_ip
                )));
            }
            for o in &rs {
                let o: &Remote = o;
                if validate::cidr_overlap(net, o.pod_net) {
                    return Err(L3Error::Invalid(format!(
                        "{what}: pod_cidr {} overlaps remote node {}",
                        r.pod_cidr, o.name
                    )));
                }
                if o.node_ip == ip {
                    return Err(L3Error::Invalid(format!(
                        "{what}: node_ip {} is also remote node {}",
                        r.node_ip, o.name
                    )));
                }
            }
            let idx =
                u16::try_from(i).map_err(|_| L3Error::Invalid("too many remote nodes".into()))?;
            add(net, NextHop::Remote(idx), &mut routes);
            remote_by_ip.insert(ip, idx);
            rs.push(Remote {
                name: r.name.clone(),
                node_ip: ip,
                vtep_mac: mac,
                pod_net: net,
            });
        }
        let lpm = Lpm::build(&routes)?;
        Ok(L3 {
            node: Some(NodeL3 {
                node_ip,
                underlay,
                underlay_gateway,
                pod_net,
                cluster,
                gateway_ip,
                router_mac: gateway_mac(gateway_ip),
                bridge: node.bridge,
                vni: node.vni,
                vxlan_port: node.vxlan_port,
                service_net,
            }),
            remotes: rs,
            next_hops,
            lpm,
            remote_by_ip,
        })
    }

    /// The next hop for a destination.
    #[inline(always)]
    pub fn route(&self, dst: u32) -> Option<NextHop> {
        let id = self.lpm.lookup(dst)?;
        self.next_hops.get(id as usize).copied().flatten()
    }

    /// The routes, for `podpathctl route list`: (prefix, what).
    pub fn describe(&self) -> Vec<(String, String)> {
        let Some(n) = &self.node else {
            return Vec::new();
        };
        let net = |p: (u32, u8)| format!("{}/{}", Ipv4Addr::from_u32(p.0), p.1);
        let mut v = vec![
            (net(n.pod_net), format!("local pods (bridge {})", n.bridge)),
            (
                net((n.gateway_ip, 32)),
                "this dataplane (pods' gateway)".into(),
            ),
            (net((n.node_ip, 32)), "node kernel (host port)".into()),
            (
                net(n.underlay),
                match n.underlay_gateway {
                    Some(g) => format!("uplink (on-link; elsewhere via {})", Ipv4Addr::from_u32(g)),
                    None => "uplink (on-link)".into(),
                },
            ),
        ];
        for r in &self.remotes {
            v.push((
                net(r.pod_net),
                format!(
                    "vxlan to {} ({}, vtep {})",
                    r.name,
                    Ipv4Addr::from_u32(r.node_ip),
                    r.vtep_mac
                ),
            ));
        }
        if let Some(g) = n.underlay_gateway {
            v.push((
                "0.0.0.0/0".into(),
                format!("uplink via {} (pods masqueraded)", Ipv4Addr::from_u32(g)),
            ));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn node() -> NodeSpec {
        NodeSpec {
            node_ip: "192.168.77.11".into(),
            underlay_cidr: "192.168.77.0/24".into(),
            underlay_gateway: None,
            pod_cidr: "10.244.0.0/24".into(),
            cluster_cidr: "10.244.0.0/16".into(),
            bridge: 1,
            uplink: "uplink".into(),
            host: Some("host".into()),
            vni: 1,
            vxlan_port: 4789,
            service_cidr: None,
        }
    }

    fn remote(name: &str, ip: &str, cidr: &str) -> RemoteSpec {
        RemoteSpec {
            name: name.into(),
            node_ip: ip.into(),
            vtep_mac: "0a:58:c0:a8:4d:0c".into(),
            pod_cidr: cidr.into(),
        }
    }

    fn ip(s: &str) -> u32 {
        validate::ipv4(s).unwrap()
    }

    #[test]
    fn routes_of_a_node() {
        let l3 = L3::build(
            &node(),
            &[remote("node2", "192.168.77.12", "10.244.1.0/24")],
        )
        .unwrap();
        assert_eq!(l3.route(ip("10.244.0.7")), Some(NextHop::Local));
        assert_eq!(l3.route(ip("10.244.0.1")), Some(NextHop::Us));
        assert_eq!(l3.route(ip("10.244.1.9")), Some(NextHop::Remote(0)));
        assert_eq!(l3.route(ip("192.168.77.11")), Some(NextHop::Host));
        assert_eq!(l3.route(ip("192.168.77.100")), Some(NextHop::Uplink));
        assert_eq!(l3.route(ip("8.8.8.8")), None);
        assert_eq!(l3.remote_by_ip.get(&ip("192.168.77.12")), Some(&0));
        assert_eq!(
            l3.node.as_ref().unwrap().router_mac.to_string(),
            "0a:58:0a:f4:00:01"
        );
        assert_eq!(l3.describe().len(), 5);
    }

    #[test]
    fn bad_specs_are_refused() {
        let overlap = L3::build(&node(), &[remote("n2", "192.168.77.12", "10.244.0.128/25")]);
        assert!(matches!(overlap, Err(L3Error::Invalid(m)) if m.contains("overlaps this node")));
        let dup = L3::build(
            &node(),
            &[
                remote("n2", "192.168.77.12", "10.244.1.0/24"),
                remote("n3", "192.168.77.13", "10.244.1.0/25"),
            ],
        );
        assert!(matches!(dup, Err(L3Error::Invalid(m)) if m.contains("overlaps remote node n2")));
        let mut n = node();
        n.pod_cidr = "10.245.0.0/24".into();
        assert!(L3::build(&n, &[]).is_err());
        let mut n = node();
        n.node_ip = "10.0.0.1".into();
        assert!(L3::build(&n, &[]).is_err());
        let mut n = node();
        n.vni = 1 << 24;
        assert!(L3::build(&n, &[]).is_err());
        let mut r = remote("n2", "192.168.77.12", "10.244.1.0/24");
        r.vtep_mac = "01:00:00:00:00:01".into();
        assert!(L3::build(&node(), &[r]).is_err());
        assert!(L3::build(&node(), &[remote("n2", "192.168.77.11", "10.244.1.0/24")]).is_err());
    }
}

//! flannel's etcd layout, and its translation into podpath's remotes: pure functions,
//! unit-tested. `PREFIX/config` holds the network; each node's subnet lease lives at
//! `PREFIX/subnets/10.244.1.0-24` with a TTL lease, its value naming the node's
//! public IP and VTEP MAC.
use podpath_proto::{NodeSpec, RemoteSpec};
use serde::{Deserialize, Serialize};

/// `PREFIX/config`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct NetworkConfig {
    #[serde(rename = "Network")]
    pub network: String,
    #[serde(rename = "SubnetLen", default = "default_subnet_len")]
    pub subnet_len: u8,
    #[serde(rename = "Backend", default)]
    pub backend: Backend,
}

fn default_subnet_len() -> u8 {
    24
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Backend {
    #[serde(rename = "Type", default = "default_type")]
    pub kind: String,
    #[serde(rename = "VNI", default = "default_vni")]
    pub vni: u32,
    /// flannel's default is Linux's VXLAN port, 8472.
    #[serde(rename = "Port", default = "default_port")]
    pub port: u16,
}

impl Default for Backend {
    fn default() -> Self {
        Backend {
            kind: default_type(),
            vni: default_vni(),
            port: default_port(),
        }
    }
}

fn default_type() -> String {
    "vxlan".into()
}
fn default_vni() -> u32 {
    1
}
fn default_port() -> u16 {
    8472
}

/// A subnet lease's value (flannel spells the keys `PublicIP`, `VtepMAC`, `VNI`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Lease {
    #[serde(rename = "PublicIP")]
    pub public_ip: String,
    #[serde(rename = "BackendType", default = "default_type")]
    pub backend_type: String,
    #[serde(rename = "BackendData")]
    pub backend_data: LeaseBackend,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct LeaseBackend {
    #[serde(rename = "VNI", default = "default_vni")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
}

/// Remotes the agent manages carry this prefix, so static ones are left alone.
pub const REMOTE_PREFIX: &str = "etcd-";

/// "10.244.1.0/24" -> "10.244.1.0-24" (flannel's key for a subnet).
pub fn subnet_key(cidr: &str) -> String {
    cidr.replace('/', "-")
}

/// "10.244.1.0-24" -> "10.244.1.0/24".
pub fn key_subnet(key: &str) -> Option<String> {
    let (a, l) = key.rsplit_once('-')?;
    let _: std::net::Ipv4Addr = a.parse().ok()?;
    let l: u8 = l.parse().ok().filter(|l| *l <= 32)?;
    Some(format!("{a}/{l}"))
}

/// This node's lease, as flannel writes it.
pub fn our_lease(node: &NodeSpec, vni: u32) -> Option<Lease> {
    let gw = podpath_proto::pod_gateway(&node.pod_cidr)?;
    Some(Lease {
        public_ip: node.node_ip.clone(),
        backend_type: "vxlan".into(),
        backend_data: LeaseBackend {
            vni,
            vtep_mac: podpath_proto::gateway_mac_text(gw),
        },
    })
}

/// The remote for a lease at `PREFIX/subnets/<key>`; errors name what is wrong.
pub fn remote(key: &str, value: &[u8]) -> Result<RemoteSpec, String> {
    let cidr = key_subnet(key).ok_or_else(|| format!("{key:?} is no subnet key"))?;
    let l: Lease = serde_json::from_slice(value).map_err(|e| format!("lease {key}: {e}"))?;
    let r = RemoteSpec {
        name: format!("{REMOTE_PREFIX}{key}"),
        node_ip: l.public_ip,
        vtep_mac: l.backend_data.vtep_mac,
        pod_cidr: cidr,
    };
    podpath_proto::validate::ipv4(&r.node_ip)
        .and_then(|_| podpath_proto::validate::unicast_mac(&r.vtep_mac))
        .map_err(|e| format!("lease {key}: {e}"))?;
    Ok(r)
}

/// What to change so that the agent's remotes in `current` become `desired`:
/// (to add or replace, names to delete). Remotes not named by the agent stay.
pub fn diff(current: &[RemoteSpec], desired: &[RemoteSpec]) -> (Vec<RemoteSpec>, Vec<String>) {
    diff_with(current, desired, REMOTE_PREFIX)
}

/// [`diff`] over the remotes named with `prefix`.
pub fn diff_with(
    current: &[RemoteSpec],
    desired: &[RemoteSpec],
    prefix: &str,
) -> (Vec<RemoteSpec>, Vec<String>) {
    let adds = desired
        .iter()
        .filter(|d| !current.contains(d))
        .cloned()
        .collect();
    let dels = current
        .iter()
        .filter(|c| c.name.starts_with(prefix))
        .filter(|c| !desired.iter().any(|d| d.name == c.name))
        .map(|c| c.name.clone())
        .collect();
    (adds, dels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeSpec {
        toml::from_str(
            "node_ip = \"192.168.77.11\"\nunderlay_cidr = \"192.168.77.0/24\"\npod_cidr = \"10.244.0.0/24\"\n\
             cluster_cidr = \"10.244.0.0/16\"\nuplink = \"uplink\"\n",
        )
        .unwrap()
    }

    #[test]
    fn flannels_own_json_reads_and_ours_writes_the_same_keys() {
        // As flannel writes them (captured from its etcd backend's format).
        let cfg: NetworkConfig = serde_json::from_str(
            r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#,
        )
        .unwrap();
        assert_eq!(
            (cfg.backend.vni, cfg.backend.port, cfg.subnet_len),
            (1, 8472, 24)
        );
        let bare: NetworkConfig = serde_json::from_str(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert_eq!(bare.backend, Backend::default());
        let lease = br#"{"PublicIP":"192.168.77.12","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:01"}}"#;
        let r = remote("10.244.1.0-24", lease).unwrap();
        assert_eq!(r.name, "etcd-10.244.1.0-24");
        assert_eq!(r.pod_cidr, "10.244.1.0/24");
        assert_eq!(
            (r.node_ip.as_str(), r.vtep_mac.as_str()),
            ("192.168.77.12", "0a:58:0a:f4:01:01")
        );
        let ours = serde_json::to_value(our_lease(&node(), 1).unwrap()).unwrap();
        assert_eq!(
            ours,
            serde_json::json!({"PublicIP": "192.168.77.11", "BackendType": "vxlan",
                "BackendData": {"VNI": 1, "VtepMAC": "0a:58:0a:f4:00:01"}})
        );
    }

    #[test]
    fn bad_leases_are_refused_by_name() {
        assert!(remote("nonsense", b"{}")
            .unwrap_err()
            .contains("no subnet key"));
        assert!(remote("10.244.1.0-24", b"{")
            .unwrap_err()
            .contains("lease 10.244.1.0-24"));
        let bad_mac = br#"{"PublicIP":"192.168.77.12","BackendData":{"VtepMAC":"zz"}}"#;
        assert!(remote("10.244.1.0-24", bad_mac).is_err());
    }

    #[test]
    fn diff_touches_only_the_agents_remotes() {
        let r = |name: &str, ip: &str| RemoteSpec {
            name: name.into(),
            node_ip: ip.into(),
            vtep_mac: "0a:58:0a:f4:01:01".into(),
            pod_cidr: "10.244.1.0/24".into(),
        };
        let current = vec![
            r("static-1", "1.1.1.1"),
            r("etcd-a", "2.2.2.2"),
            r("etcd-b", "3.3.3.3"),
        ];
        let desired = vec![r("etcd-a", "2.2.2.9"), r("etcd-c", "4.4.4.4")];
        let (adds, dels) = diff(&current, &desired);
        assert_eq!(adds, desired, "a changed one is replaced, a new one added");
        assert_eq!(dels, vec!["etcd-b".to_string()], "static remotes stay");
        assert_eq!(diff(&desired, &desired), (vec![], vec![]));
    }
}

//! The agent's configuration (TOML, `configs/agent.toml`).
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub etcd: EtcdConfig,
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    #[serde(default)]
    pub bootstrap: crate::bootstrap::BootstrapConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// The API server's URL; none: the pod's service account (in a DaemonSet), else
    /// KUBECONFIG or ~/.kube/config.
    pub url: Option<String>,
    /// This node's name (its own Node is not a remote); default $NODE_NAME (the
    /// DaemonSet sets it from spec.nodeName).
    pub node_name: Option<String>,
    /// Also take other nodes from their Node objects (podCIDR, flannel's
    /// annotations); off when etcd provides them.
    pub nodes: bool,
}

/// Where the cluster's state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// flannel's layout in etcd: this node's lease registered, the others watched.
    Etcd,
    /// The Kubernetes API: Services and EndpointSlices (kube-proxy's part), and the
    /// other Nodes (flannel's kube subnet manager's part) when `kubernetes.nodes`.
    Kubernetes,
    /// etcd for the nodes and the Kubernetes API for Services: flannel's etcd
    /// backend beside kube-proxy.
    EtcdAndKubernetes,
    /// Nothing: the control service's configuration file and podpathctl only.
    Static,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The node's control service (the agent's only way to change the node).
    pub control_socket: PathBuf,
    pub source: Source,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            control_socket: PathBuf::from("/run/podpath/control.sock"),
            source: Source::Etcd,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// flannel's `--etcd-prefix`.
    pub prefix: String,
    /// Seconds this node's lease lives without keep-alives: how long other nodes
    /// keep routing to a node that died (flannel keeps 24 h leases; podpath renews
    /// every third of the TTL).
    pub lease_ttl_s: i64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/coreos.com/network".into(),
            lease_ttl_s: 60,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let c: Config = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if matches!(c.agent.source, Source::Etcd | Source::EtcdAndKubernetes)
            && c.etcd.endpoints.is_empty()
        {
            return Err(format!("{}: etcd.endpoints is empty", path.display()));
        }
        if !(2..=86_400).contains(&c.etcd.lease_ttl_s) {
            return Err(format!(
                "{}: etcd.lease_ttl_s must be 2..=86400",
                path.display()
            ));
        }
        Ok(c)
    }
}

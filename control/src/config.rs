//! The control service's configuration file (TOML).
use std::path::{Path, PathBuf};

use podpath_proto::{NodeSpec, PortSpec, RemoteSpec, ServiceSpec, StaticMac};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path}: {err}")]
    Parse { path: String, err: toml::de::Error },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Where podpathctl talks to the service (mode 0660).
    pub socket: PathBuf,
    pub socket_group: Option<String>,
    /// The dataplane's control socket.
    pub dataplane_socket: PathBuf,
    /// The persisted desired state; once it exists it is the node's state, and the
    /// configuration's ports and MACs only seed it.
    pub state_file: PathBuf,
    /// How often to check the dataplane connection (ms).
    pub check_interval_ms: u64,
    /// Where to serve Prometheus metrics (`/metrics`), e.g. "127.0.0.1:9469"; none:
    /// not served.
    pub metrics: Option<std::net::SocketAddr>,
    /// Supervise the dataplane: the command that starts it (for example
    /// `["podpath-dataplane", "--config", "/etc/podpath/node.toml"]`). The service
    /// starts it when none answers and restarts it when it dies (back-off 0.1-10 s).
    /// Empty: someone else runs it (a container runtime, systemd).
    pub dataplane_command: Vec<String>,
    /// Where the supervised dataplane's output goes (appended); none: the service's.
    pub dataplane_log: Option<PathBuf>,
    /// A second socket that answers only requests that read (`Request::is_read_only`:
    /// stats, lists, state, events), for operators who must not change the node.
    /// Mode 0666 (anyone on the node), or 0660 with `readonly_socket_group`.
    pub readonly_socket: Option<PathBuf>,
    pub readonly_socket_group: Option<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            socket: PathBuf::from("/run/podpath/control.sock"),
            socket_group: None,
            dataplane_socket: PathBuf::from("/run/podpath/dataplane.sock"),
            state_file: PathBuf::from("/var/lib/podpath/state.json"),
            check_interval_ms: 200,
            metrics: None,
            dataplane_command: Vec::new(),
            dataplane_log: None,
            readonly_socket: None,
            readonly_socket_group: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub control: ServiceConfig,
    #[serde(default, rename = "port")]
    pub ports: Vec<PortSpec>,
    #[serde(default, rename = "mac")]
    pub macs: Vec<StaticMac>,
    /// This node's L3/overlay identity.
    #[serde(default)]
    pub node: Option<NodeSpec>,
    /// The other nodes (flannel's subnet leases, in a file for now).
    #[serde(default, rename = "remote")]
    pub remotes: Vec<RemoteSpec>,
    /// Services (kube-proxy's Service and EndpointSlice objects, in a file for now).
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSpec>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.display().to_string(),
            err,
        })?;
        toml::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.display().to_string(),
            err,
        })
    }
}

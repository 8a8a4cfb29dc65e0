//! The CNI contract (spec 1.1.0, with 1.0.0 and 0.4.0 results): the network
//! configuration on stdin, the result and the error on stdout. Own serde types: the
//! contract is small, and owning it keeps version negotiation and the error codes
//! explicit (what the tests compare with the reference plugins).
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Versions this plugin speaks, oldest first.
pub const SUPPORTED: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The spec's well-known error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// Plugin-specific codes start at 100: the dataplane refused.
    pub const DATAPLANE: u32 = 100;
}

/// A CNI error: printed as `{cniVersion, code, msg, details}` with exit status 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }
    pub fn with_details(mut self, d: impl Into<String>) -> CniError {
        self.details = d.into();
        self
    }
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = serde_json::json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

/// How the pod's interface reaches the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Attach {
    /// A veth pair: the pod's end in its namespace, the node's end read by an
    /// af_packet port.
    #[default]
    AfPacket,
    /// A tap the dataplane creates inside the pod's namespace (net_tap).
    Tap,
}

/// The network configuration (one plugin's, as a runtime passes it).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin: String,
    /// The node's control service.
    #[serde(default = "default_socket")]
    pub control_socket: String,
    #[serde(default)]
    pub attach: Attach,
    /// The pod interface's MTU; default the node's overlay MTU (1450 on a 1500
    /// underlay).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// The network namespace the node's end of a veth lives in, as the dataplane
    /// opens it (default: this process's namespace, found by name under
    /// /run/netns, or the host's).
    #[serde(default)]
    pub node_netns: Option<String>,
    /// Where allocations are kept (default /var/lib/cni/networks/NAME).
    #[serde(default)]
    pub data_dir: Option<String>,
    #[serde(default)]
    pub ipam: Option<IpamConf>,
    /// The previous plugin's result (CHECK, DEL in a chain).
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// Runtime data: `cni.dev/valid-attachments` for GC.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Everything else, kept to pass to a delegated IPAM plugin unchanged.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

fn default_socket() -> String {
    "/run/podpath/control.sock".into()
}
fn default_mtu() -> u16 {
    1450
}

/// `ipam`: podpath's own allocator (type `podpath`, the default) over the node's
/// pod CIDR or `subnet`, or any other IPAM plugin found in CNI_PATH (delegated).
#[derive(Debug, Clone, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type", default = "default_ipam")]
    pub kind: String,
    /// The range to allocate from (default: the node's pod CIDR, asked from the
    /// control service).
    #[serde(default)]
    pub subnet: Option<String>,
    /// The first address to give out (host-local's `rangeStart`), e.g. to keep
    /// addresses below it for pods attached otherwise.
    #[serde(default, rename = "rangeStart")]
    pub range_start: Option<std::net::Ipv4Addr>,
}

fn default_ipam() -> String {
    "podpath".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The result of ADD (1.x shape; 0.4.0 adds `version` to each IP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IpConfig {
    /// 0.4.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// CIDR notation: the address and its prefix ("10.244.0.5/24").
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
}

/// Parses stdin as a network configuration, checking the version first (a config
/// in an unknown version is refused with code 1 even if it would not parse).
pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let v: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(code::DECODE, "the network configuration is not JSON")
            .with_details(e.to_string())
    })?;
    let version = v.get("cniVersion").and_then(Value::as_str).unwrap_or("");
    if !SUPPORTED.contains(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("incompatible CNI version {version:?}"),
        )
        .with_details(format!("podpath-cni supports {}", SUPPORTED.join(", "))));
    }
    let conf: NetConf = serde_json::from_value(v).map_err(|e| {
        CniError::new(code::INVALID_CONFIG, "invalid network configuration")
            .with_details(e.to_string())
    })?;
    if conf.name.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "the network has no name",
        ));
    }
    if !(576..=9000).contains(&conf.mtu) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("mtu {} is outside 576..=9000", conf.mtu),
        ));
    }
    Ok(conf)
}

/// Is `v` at least `min` (both in SUPPORTED's x.y.z form)?
pub fn at_least(v: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(v) >= parse(min)
}

/// The result in the shape of `version` (0.4.0 carries `version` on each IP).
pub fn result_json(r: &CniResult, version: &str) -> Value {
    let mut r = r.clone();
    r.cni_version = version.into();
    for ip in &mut r.ips {
        ip.version = if at_least(version, "1.0.0") {
            None
        } else {
            Some("4".into())
        };
    }
    serde_json::to_value(&r).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_negotiated_and_bad_configs_named() {
        let ok = br#"{"cniVersion":"1.0.0","name":"podpath","type":"podpath-cni"}"#;
        let c = parse_conf(ok).unwrap();
        assert_eq!((c.mtu, c.attach), (1450, Attach::AfPacket));
        let old = br#"{"cniVersion":"0.3.1","name":"podpath","type":"podpath-cni"}"#;
        assert_eq!(
            parse_conf(old).unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        let bad = br#"{"cniVersion":"1.1.0","name":"podpath","type":"podpath-cni","mtu":"big"}"#;
        assert_eq!(parse_conf(bad).unwrap_err().code, code::INVALID_CONFIG);
        assert_eq!(parse_conf(b"{").unwrap_err().code, code::DECODE);
        assert!(at_least("1.1.0", "1.0.0") && !at_least("0.4.0", "1.0.0"));
    }

    #[test]
    fn results_take_the_asked_versions_shape() {
        let r = CniResult {
            ips: vec![IpConfig {
                address: "10.244.0.5/24".into(),
                gateway: Some("10.244.0.1".into()),
                interface: Some(1),
                ..Default::default()
            }],
            ..Default::default()
        };
        let v04 = result_json(&r, "0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        let v1 = result_json(&r, "1.1.0");
        assert!(v1["ips"][0].get("version").is_none());
        assert_eq!(v1["cniVersion"], "1.1.0");
    }
}

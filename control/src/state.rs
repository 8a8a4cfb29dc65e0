//! The desired state: ports and static MACs, their validation as a whole, and atomic
//! persistence (write a temporary file, fsync, rename, fsync the directory), so a
//! crash leaves either the old or the new state, never a torn one.
use std::fs;
use std::io::Write;
use std::path::Path;

use podpath_proto::{
    validate, ConntrackSettings, ErrorKind, ErrorReply, NodeSpec, PortSpec, RemoteSpec,
    ServiceSpec, StaticMac,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub ports: Vec<PortSpec>,
    pub macs: Vec<StaticMac>,
    #[serde(default)]
    pub node: Option<NodeSpec>,
    #[serde(default)]
    pub remotes: Vec<RemoteSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Connection-tracking knobs changed at run time (the fields given; the rest
    /// stay as the dataplane's configuration has them).
    #[serde(default)]
    pub conntrack: Option<ConntrackSettings>,
}

fn bad(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        kind,
        message: message.into(),
    }
}

impl State {
    /// Checks the whole state: every port valid, names and device names unique, every
    /// MAC unicast, on an existing port of the same bridge domain, and unique.
    pub fn validate(&self) -> Result<(), ErrorReply> {
        for (i, p) in self.ports.iter().enumerate() {
            validate::port_spec(p).map_err(|m| bad(ErrorKind::BadRequest, m))?;
            for q in &self.ports[..i] {
                if q.name == p.name {
                    return Err(bad(
                        ErrorKind::AlreadyExists,
                        format!("a port named {:?} already exists", p.name),
                    ));
                }
                if validate::device_name(&q.device) == validate::device_name(&p.device) {
                    return Err(bad(
                        ErrorKind::AlreadyExists,
                        format!(
                            "device {:?} is already used by port {:?}",
                            validate::device_name(&p.device),
                            q.name
                        ),
                    ));
                }
            }
        }
        for (i, m) in self.macs.iter().enumerate() {
            let a = validate::unicast_mac(&m.mac).map_err(|e| bad(ErrorKind::BadRequest, e))?;
            let port = self
                .ports
                .iter()
                .find(|p| p.name == m.port)
                .ok_or_else(|| {
                    bad(
                        ErrorKind::NotFound,
                        format!("no port named {:?} for MAC {}", m.port, m.mac),
                    )
                })?;
            if port.bridge != Some(m.bridge) {
                return Err(bad(
                    ErrorKind::BadRequest,
                    format!("port {:?} is not in bridge domain {}", m.port, m.bridge),
                ));
            }
            if self.macs[..i]
                .iter()
                .any(|o| o.bridge == m.bridge && validate::unicast_mac(&o.mac).ok() == Some(a))
            {
                return Err(bad(
                    ErrorKind::AlreadyExists,
                    format!(
                        "MAC {} is already static in bridge domain {}",
                        m.mac, m.bridge
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn port(&self, name: &str) -> Option<&PortSpec> {
        self.ports.iter().find(|p| p.name == name)
    }

    /// The state after removing a port (and the static MACs that point at it).
    pub fn without_port(&self, name: &str) -> State {
        State {
            ports: self
                .ports
                .iter()
                .filter(|p| p.name != name)
                .cloned()
                .collect(),
            macs: self
                .macs
                .iter()
                .filter(|m| m.port != name)
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    pub fn load(path: &Path) -> Result<Option<State>, String> {
        match fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("state file {} is unreadable: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read state file {}: {e}", path.display())),
        }
    }

    /// Writes the state atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = path.with_extension("json.tmp");
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, dev: &str, bridge: u16) -> PortSpec {
        PortSpec {
            name: name.into(),
            device: dev.into(),
            netns: None,
            bridge: Some(bridge),
            queues: None,
            mtu: None,
        }
    }

    fn mac(m: &str, port: &str, bridge: u16) -> StaticMac {
        StaticMac {
            bridge,
            mac: m.into(),
            port: port.into(),
        }
    }

    #[test]
    fn whole_state_validation() {
        let ok = State {
            ports: vec![port("a", "net_tap0", 1), port("b", "net_tap1", 1)],
            macs: vec![mac("0a:00:00:00:00:01", "a", 1)],
            ..State::default()
        };
        assert!(ok.validate().is_ok());
        let mut s = ok.clone();
        s.ports.push(port("a", "net_tap2", 1));
        assert_eq!(s.validate().unwrap_err().kind, ErrorKind::AlreadyExists);
        let mut s = ok.clone();
        s.ports.push(port("c", "net_tap0,iface=x", 1));
        assert!(s.validate().unwrap_err().message.contains("net_tap0"));
        let mut s = ok.clone();
        s.macs.push(mac("0a:00:00:00:00:02", "zz", 1));
        assert_eq!(s.validate().unwrap_err().kind, ErrorKind::NotFound);
        let mut s = ok.clone();
        s.macs.push(mac("0a:00:00:00:00:02", "a", 2));
        assert!(s
            .validate()
            .unwrap_err()
            .message
            .contains("bridge domain 2"));
        let mut s = ok.clone();
        s.macs.push(mac("0a:00:00:00:00:01", "b", 1));
        assert_eq!(s.validate().unwrap_err().kind, ErrorKind::AlreadyExists);
        let mut s = ok.clone();
        s.macs.push(mac("ff:ff:ff:ff:ff:ff", "b", 1));
        assert_eq!(s.validate().unwrap_err().kind, ErrorKind::BadRequest);
        assert_eq!(ok.without_port("a").macs.len(), 0);
    }

    #[test]
    fn save_and_load_round_trip_atomically() {
        let dir = std::env::temp_dir().join(format!("pp-state-{}", std::process::id()));
        let path = dir.join("state.json");
        assert_eq!(State::load(&path).unwrap(), None);
        let s = State {
            ports: vec![port("a", "net_tap0", 1)],
            node: Some(podpath_proto::sample_node()),
            ..State::default()
        };
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), Some(s));
        assert!(!path.with_extension("json.tmp").exists());
        fs::write(&path, b"{garbage").unwrap();
        assert!(State::load(&path).is_err());
        let _ = fs::remove_dir_all(dir);
    }
}

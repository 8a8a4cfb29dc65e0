//! The desired state: ports and static MACs, their validation as a whole, and atomic
//! persistence (write a temporary file, fsync, rename, fsync the directory), so a
//! crash leaves either the old or the new state, never a torn one. Batches (the
//! agent's changes, at cluster scale) are appended to a journal beside the file
//! instead (one fsynced line, not the whole state): loading replays it, and the
//! next full save folds it in.
use std::fs;
use std::io::Write;
use std::path::Path;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use podpath_proto::{
    validate, ConntrackSettings, ErrorKind, ErrorReply, NodeSpec, PortSpec, RemoteSpec, Request,
    ServiceSpec, StaticMac,
};

fn remote_name(r: &Request) -> Option<&str> {
    match r {
        Request::RemoteAdd(x) => Some(&x.name),
        Request::RemoteDel { name } => Some(name),
        _ => None,
    }
}

fn service_name(r: &Request) -> Option<&str> {
    match r {
        Request::ServiceSet(x) => Some(&x.name),
        Request::ServiceDel { name } => Some(name),
        _ => None,
    }
}

/// The journal beside a state file (`state.json` -> `state.journal`).
pub fn journal_path(path: &Path) -> PathBuf {
    path.with_extension("journal")
}
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
        let mut state: Option<State> = match fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("state file {} is unreadable: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read state file {}: {e}", path.display())),
        };
        // The batches acknowledged since the file was written. A torn last line (a
        // crash while appending) was never acknowledged: replay stops there.
        if let Ok(j) = fs::read(journal_path(path)) {
            let st = state.get_or_insert_with(State::default);
            for line in j.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                match serde_json::from_slice::<Vec<Request>>(line) {
                    Ok(reqs) => {
                        st.apply_batch(&reqs);
                    }
                    Err(_) => break,
                }
            }
        }
        Ok(state)
    }

    /// Checks a batch against this state (see `podpath_proto::batch::check`).
    pub fn check_batch(&self, reqs: &[Request]) -> Result<(), ErrorReply> {
        podpath_proto::batch::check(
            reqs,
            self.remotes.iter().map(|r| r.name.as_str()),
            self.services.iter().map(|s| s.name.as_str()),
        )
    }

    /// Applies a batch in place (deletes of absent names do nothing, so a replay is
    /// idempotent) and returns the batch that undoes it.
    pub fn apply_batch(&mut self, reqs: &[Request]) -> Vec<Request> {
        let mut undo = Vec::new();
        // Only the entries the batch names are indexed (one pass, no copy of every
        // name): a change to one Service costs a scan, not a rebuild of the index.
        let wanted_r: HashSet<&str> = reqs.iter().filter_map(remote_name).collect();
        let wanted_s: HashSet<&str> = reqs.iter().filter_map(service_name).collect();
        let mut remotes: HashMap<String, usize> = self
            .remotes
            .iter()
            .enumerate()
            .filter(|(_, r)| wanted_r.contains(r.name.as_str()))
            .map(|(i, r)| (r.name.clone(), i))
            .collect();
        let mut services: HashMap<String, usize> = self
            .services
            .iter()
            .enumerate()
            .filter(|(_, s)| wanted_s.contains(s.name.as_str()))
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let (mut gone_r, mut gone_s) = (HashSet::new(), HashSet::new());
        for r in reqs {
            match r {
                Request::RemoteAdd(x) => match remotes.get(&x.name) {
                    Some(&i) => undo.push(Request::RemoteAdd(std::mem::replace(
                        &mut self.remotes[i],
                        x.clone(),
                    ))),
                    None => {
                        remotes.insert(x.name.clone(), self.remotes.len());
                        self.remotes.push(x.clone());
                        undo.push(Request::RemoteDel {
                            name: x.name.clone(),
                        });
                    }
                },
                Request::RemoteDel { name } => {
                    if let Some(i) = remotes.remove(name) {
                        undo.push(Request::RemoteAdd(self.remotes[i].clone()));
                        gone_r.insert(i);
                    }
                }
                Request::ServiceSet(x) => match services.get(&x.name) {
                    Some(&i) => undo.push(Request::ServiceSet(std::mem::replace(
                        &mut self.services[i],
                        x.clone(),
                    ))),
                    None => {
                        services.insert(x.name.clone(), self.services.len());
                        self.services.push(x.clone());
                        undo.push(Request::ServiceDel {
                            name: x.name.clone(),
                        });
                    }
                },
                Request::ServiceDel { name } => {
                    if let Some(i) = services.remove(name) {
                        undo.push(Request::ServiceSet(self.services[i].clone()));
                        gone_s.insert(i);
                    }
                }
                _ => {}
            }
        }
        if !gone_r.is_empty() {
            let mut i = 0;
            self.remotes.retain(|_| {
                i += 1;
                !gone_r.contains(&(i - 1))
            });
        }
        if !gone_s.is_empty() {
            let mut i = 0;
            self.services.retain(|_| {
                i += 1;
                !gone_s.contains(&(i - 1))
            });
        }
        undo.reverse();
        undo
    }

    /// Appends an acknowledged batch to the journal (fsynced); returns the
    /// journal's size.
    pub fn append_journal(path: &Path, reqs: &[Request]) -> std::io::Result<u64> {
        let mut line = serde_json::to_vec(reqs).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(journal_path(path))?;
        f.write_all(&line)?;
        f.sync_data()?;
        Ok(f.metadata()?.len())
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
        // The file holds everything now; a journal left by a crash here would only
        // be replayed on top (idempotent).
        match fs::remove_file(journal_path(path)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
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

    #[test]
    fn the_journal_replays_batches_stops_at_a_torn_line_and_folds_into_a_save() {
        let dir = std::env::temp_dir().join(format!("podpath-journal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let base = State::default();
        base.save(&path).unwrap();
        let svc = |n: &str| ServiceSpec::new(n, "10.96.0.10", 80, "tcp", vec![]);
        let b1 = vec![
            Request::ServiceSet(svc("d/a")),
            Request::ServiceSet(svc("d/b")),
        ];
        let b2 = vec![Request::ServiceDel { name: "d/a".into() }];
        State::append_journal(&path, &b1).unwrap();
        State::append_journal(&path, &b2).unwrap();
        // A crash while appending a third: half a line.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(journal_path(&path))
            .unwrap();
        f.write_all(b"[{\"ServiceDel\":{\"na").unwrap();
        drop(f);
        let loaded = State::load(&path).unwrap().unwrap();
        let names: Vec<&str> = loaded.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["d/b"], "both whole batches, not the torn one");
        // Replaying twice gives the same (a crash between a save and the journal's
        // removal replays it on top).
        let mut again = loaded.clone();
        again.apply_batch(&b1);
        again.apply_batch(&b2);
        assert_eq!(again, loaded);
        // An undo gives the state back.
        let mut s = loaded.clone();
        let undo = s.apply_batch(&[
            Request::ServiceSet(svc("d/c")),
            Request::ServiceDel { name: "d/b".into() },
        ]);
        assert_ne!(s, loaded);
        s.apply_batch(&undo);
        assert_eq!(s, loaded);
        loaded.save(&path).unwrap();
        assert!(!journal_path(&path).exists(), "a save folds the journal in");
        assert_eq!(State::load(&path).unwrap().unwrap(), loaded);
        assert!(loaded
            .check_batch(&[Request::ServiceDel { name: "d/x".into() }])
            .is_err());
        assert!(loaded.check_batch(&[Request::PortList]).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}

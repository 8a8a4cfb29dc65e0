//! The engine: one thread owning the desired state and the dataplane connection.
//! It executes requests one at a time, each whole or not at all, and reconciles the
//! dataplane to the desired state whenever it (re)connects.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use podpath_proto::{
    validate, Client, ClientError, ConntrackSettings, DesiredState, ErrorKind, ErrorReply,
    EventInfo, PortInfo, PortSpec, Request, Response, StaticMac, EVENTS_KEPT, PROTOCOL_VERSION,
};

use crate::health::{self, HealthServers};
use crate::state::State;

/// The journal's size at which the state is saved whole and the journal restarts
/// (the journal is replayed at start; the whole file costs tens of milliseconds at
/// cluster scale, a journal line microseconds).
const JOURNAL_MAX: u64 = 16 << 20;

fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        kind,
        message: message.into(),
    }
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("podpath-control: {msg}");
}

/// Does the dataplane's port match what we want?
fn matches(want: &PortSpec, have: &PortInfo) -> bool {
    want.device == have.device
        && want.netns == have.netns
        && want.bridge == have.bridge
        && want.mtu.is_none_or(|m| m == have.mtu)
}

/// The kernel interface an af_packet port reads (`iface=` of its device), when the
/// port lives in this process's network namespace.
fn af_packet_iface(p: &PortSpec) -> Option<&str> {
    if p.netns.is_some() || !p.device.starts_with("net_af_packet") {
        return None;
    }
    p.device.split(',').find_map(|kv| kv.strip_prefix("iface="))
}

/// The interface's index now (None: it does not exist).
fn ifindex(iface: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The events a successful request makes (a batch: one per change in it).
fn change_events(req: &Request) -> Vec<(&'static str, String)> {
    match req {
        Request::PortAttach(p) => vec![(
            "port-attached",
            format!(
                "{} ({}{})",
                p.name,
                p.device,
                p.netns
                    .as_ref()
                    .map_or(String::new(), |n| format!(", netns {n}"))
            ),
        )],
        Request::PortDetach { name } => vec![("port-detached", name.clone())],
        Request::MacAdd { bridge, mac, port } => {
            vec![("mac-added", format!("{mac} on {port} (bridge {bridge})"))]
        }
        Request::MacDel { bridge, mac } => {
            vec![("mac-deleted", format!("{mac} (bridge {bridge})"))]
        }
        Request::NodeSet(n) => vec![("node-set", format!("{} pods {}", n.node_ip, n.pod_cidr))],
        Request::RemoteAdd(r) => vec![(
            "remote-added",
            format!("{} at {} pods {}", r.name, r.node_ip, r.pod_cidr),
        )],
        Request::RemoteDel { name } => vec![("remote-withdrawn", name.clone())],
        Request::ServiceSet(v) => vec![(
            "service-set",
            format!(
                "{} {}:{}/{}: {} endpoint(s)",
                v.name,
                v.vip,
                v.port,
                v.protocol,
                v.endpoints.len()
            ),
        )],
        Request::ServiceDel { name } => vec![("service-deleted", name.clone())],
        Request::ConntrackSet(_) => {
            vec![("conntrack-settings", "timeouts or capacity changed".into())]
        }
        Request::Batch(v) => v.iter().flat_map(change_events).collect(),
        _ => Vec::new(),
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub struct Engine {
    /// Restarts of the dataplane by this service's supervisor (reported in Stats).
    pub dataplane_restarts: u64,
    state: State,
    state_file: PathBuf,
    dp_socket: PathBuf,
    dp: Option<Client>,
    in_sync: bool,
    generation: u64,
    next_retry: Instant,
    /// Times the engine reconciled a (re)connected dataplane.
    pub reconciles: u64,
    /// The healthCheckNodePort servers the Services ask for.
    health: HealthServers,
    /// The ifindex each af_packet port's interface had when last looked at: a new
    /// one means the kernel re-created it (a link removed and added back, as
    /// `docker network disconnect` + `connect` does, or a VF reset) and the port's
    /// socket reads a device that is gone.
    links: std::collections::BTreeMap<String, Option<u64>>,
    next_link_check: Instant,
    /// What changed, for `podpathctl events` (the last [`EVENTS_KEPT`]).
    events: std::collections::VecDeque<EventInfo>,
    next_event: u64,
    /// Per worker: the table-full counters last seen (a rise is an event).
    limits: std::collections::BTreeMap<(u16, &'static str), u64>,
}

impl Engine {
    pub fn new(state: State, state_file: PathBuf, dp_socket: PathBuf) -> Engine {
        let mut e = Engine {
            dataplane_restarts: 0,
            state,
            state_file,
            dp_socket,
            dp: None,
            in_sync: false,
            generation: 0,
            next_retry: Instant::now(),
            reconciles: 0,
            health: HealthServers::default(),
            links: std::collections::BTreeMap::new(),
            next_link_check: Instant::now(),
            events: std::collections::VecDeque::new(),
            next_event: 1,
            limits: std::collections::BTreeMap::new(),
        };
        e.refresh_health();
        e
    }

    /// Records an event (the oldest goes past [`EVENTS_KEPT`]).
    /// Records an event from outside the engine (the supervisor's).
    pub fn note(&mut self, kind: &str, detail: impl Into<String>) {
        self.event(kind, detail);
    }

    fn event(&mut self, kind: &str, detail: impl Into<String>) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(EventInfo {
            seq: self.next_event,
            unix_ms: unix_ms(),
            kind: kind.into(),
            detail: detail.into(),
        });
        self.next_event += 1;
    }

    /// The events numbered above `after`.
    pub fn events_after(&self, after: u64) -> Vec<EventInfo> {
        self.events
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect()
    }

    /// Tables reaching their limits: a rise of a worker's table-full counters since
    /// the last look is an event (a restarted dataplane starts them again at zero).
    fn check_limits(&mut self) {
        let Ok(Response::Stats(st)) = self.call(Request::Stats) else {
            return;
        };
        for w in &st.workers {
            for (what, now, text) in [
                (
                    "conntrack",
                    w.ct_refused_full,
                    "new connections refused: the connection table is full",
                ),
                // Linux's early drop: a full table evicts an unassured entry first.
                (
                    "conntrack-early",
                    w.ct_early_dropped,
                    "unassured connections evicted early: the connection table is full",
                ),
                (
                    "mac",
                    w.mac_table_full,
                    "MACs not learned: the MAC table is full",
                ),
                (
                    "neighbor",
                    w.neighbor_table_full,
                    "neighbours not learned: the neighbour table is full",
                ),
                (
                    "affinity",
                    w.affinity_table_full,
                    "clients balanced without session affinity: the affinity table is full",
                ),
                (
                    "fragments",
                    w.frag_table_full,
                    "fragmented datagrams not translated: the fragment table is full",
                ),
            ] {
                let before = self.limits.insert((w.id, what), now);
                if let Some(b) = before.filter(|&b| now > b) {
                    self.event("table-full", format!("worker {}: {} {text}", w.id, now - b));
                }
            }
        }
    }

    /// Serves the health ports the desired Services ask for (their answers follow
    /// every change of endpoints or of the node).
    fn refresh_health(&mut self) {
        let want = health::wanted(&self.state.services, self.state.node.as_ref());
        for f in self.health.update(want) {
            log(f);
        }
    }

    /// The health ports being served.
    pub fn health_ports(&self) -> Vec<u16> {
        self.health.ports()
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn connected(&self) -> bool {
        self.dp.is_some()
    }

    /// Sends a request to the dataplane. A transport failure drops the connection
    /// (the next tick reconnects and reconciles).
    fn call(&mut self, req: Request) -> Result<Response, ErrorReply> {
        let Some(dp) = self.dp.as_mut() else {
            return Err(err(
                ErrorKind::Unavailable,
                format!(
                    "the dataplane is not connected ({}): it is starting or restarting; retry",
                    self.dp_socket.display()
                ),
            ));
        };
        match dp.call(req) {
            Ok(r) => Ok(r),
            Err(ClientError::Server(e)) => Err(e),
            Err(e) => {
                log(format!("lost the dataplane: {e}"));
                self.event("dataplane-lost", e.to_string());
                self.dp = None;
                self.in_sync = false;
                Err(err(
                    ErrorKind::Unavailable,
                    format!("the dataplane connection failed: {e}"),
                ))
            }
        }
    }

    /// Called periodically: connects (and reconciles) when disconnected, checks the
    /// connection, retries a reconciliation that failed.
    pub fn tick(&mut self) {
        if self.dp.is_none() {
            match Client::connect(&self.dp_socket, "podpath-control") {
                Ok(c) => {
                    log(format!("connected to {}", c.server));
                    self.event("dataplane-connected", c.server.clone());
                    self.dp = Some(c);
                    self.in_sync = false;
                    self.limits.clear();
                }
                Err(_) => return,
            }
        } else if self.call(Request::Ping).is_err() {
            return;
        }
        if !self.in_sync && Instant::now() >= self.next_retry {
            match self.reconcile() {
                Ok(changes) => {
                    self.in_sync = true;
                    self.event(
                        "reconciled",
                        format!(
                            "{changes} port change(s); the dataplane matches the desired state"
                        ),
                    );
                    if changes > 0 {
                        log(format!("reconciled the dataplane ({changes} change(s))"));
                    }
                }
                Err(e) => {
                    log(format!("reconciliation incomplete, retrying in 2 s: {e}"));
                    self.next_retry = Instant::now() + Duration::from_secs(2);
                }
            }
        }
        if self.in_sync && Instant::now() >= self.next_link_check {
            self.next_link_check = Instant::now() + Duration::from_secs(1);
            self.reopen_recreated_links();
            self.check_limits();
        }
    }

    /// Re-attaches every af_packet port whose interface the kernel re-created since
    /// the last look (its socket is bound to the old one and reads nothing).
    fn reopen_recreated_links(&mut self) {
        for spec in self.state.ports.clone() {
            let Some(iface) = af_packet_iface(&spec) else {
                continue;
            };
            let now = ifindex(iface);
            let before = self.links.insert(spec.name.clone(), now);
            let recreated = match (before, now) {
                (Some(Some(a)), Some(b)) => a != b,
                (Some(None), Some(_)) => true,
                _ => false,
            };
            if !recreated {
                continue;
            }
            let what = format!(
                "port {}: interface {iface} was re-created (ifindex {:?} -> {}): re-attaching",
                spec.name,
                before.flatten(),
                now.unwrap_or(0)
            );
            log(&what);
            self.event("port-reattached", what);
            let _ = self.call(Request::PortDetach {
                name: spec.name.clone(),
            });
            if let Err(e) = self.call(Request::PortAttach(spec.clone())) {
                log(format!("re-attaching {}: {}", spec.name, e.message));
            }
            // What refers to the port (the node's uplink, static MACs) is applied
            // again by a reconciliation, which leaves matching ports alone.
            self.in_sync = false;
        }
        self.links
            .retain(|name, _| self.state.ports.iter().any(|p| &p.name == name));
    }

    /// Makes the dataplane hold exactly the desired ports and static MACs: ports that
    /// already match are left alone (no disturbance), others detached, missing ones
    /// attached. Returns how many ports changed.
    pub fn reconcile(&mut self) -> Result<usize, String> {
        self.reconciles += 1;
        let have = match self.call(Request::PortList).map_err(|e| e.message)? {
            Response::Ports(p) => p,
            r => return Err(format!("unexpected answer to PortList: {r:?}")),
        };
        let mut changes = 0;
        let mut kept = Vec::new();
        for p in &have {
            match self.state.port(&p.name) {
                Some(want) if matches(want, p) => kept.push(p.name.clone()),
                _ => {
                    self.call(Request::PortDetach {
                        name: p.name.clone(),
                    })
                    .map_err(|e| format!("detaching {}: {}", p.name, e.message))?;
                    changes += 1;
                }
            }
        }
        let mut failed = Vec::new();
        for spec in self.state.ports.clone() {
            if kept.contains(&spec.name) {
                continue;
            }
            match self.call(Request::PortAttach(spec.clone())) {
                Ok(_) => changes += 1,
                Err(e) => failed.push(format!("{}: {}", spec.name, e.message)),
            }
        }
        // Remotes and Services in one batch (one rebuild for any size); if it is
        // refused, one by one, to say which entries fail.
        let mut changes_batch = Vec::new();
        if let Some(n) = self.state.node.clone() {
            if let Err(e) = self.call(Request::NodeSet(n)) {
                failed.push(format!("node: {}", e.message));
            }
            changes_batch.extend(self.state.remotes.iter().cloned().map(Request::RemoteAdd));
        }
        changes_batch.extend(self.state.services.iter().cloned().map(Request::ServiceSet));
        if !changes_batch.is_empty() && self.call(Request::Batch(changes_batch.clone())).is_err() {
            for c in changes_batch {
                let what = match &c {
                    Request::RemoteAdd(r) => format!("remote node {}", r.name),
                    Request::ServiceSet(s) => format!("service {}", s.name),
                    _ => String::new(),
                };
                if let Err(e) = self.call(c) {
                    failed.push(format!("{what}: {}", e.message));
                }
            }
        }
        if let Some(c) = self.state.conntrack.clone() {
            if let Err(e) = self.call(Request::ConntrackSet(c)) {
                failed.push(format!("conntrack settings: {}", e.message));
            }
        }
        for m in self.state.macs.clone() {
            if let Err(e) = self.call(Request::MacAdd {
                bridge: m.bridge,
                mac: m.mac.clone(),
                port: m.port.clone(),
            }) {
                failed.push(format!("MAC {}: {}", m.mac, e.message));
            }
        }
        if failed.is_empty() {
            Ok(changes)
        } else {
            Err(failed.join("; "))
        }
    }

    /// Several remote and Service changes as one: checked against the state first
    /// (a bad entry refuses the batch before the dataplane sees it), applied by the
    /// dataplane as one snapshot, then applied to the state in place and appended to
    /// the journal (one line, not the whole state: at cluster scale the state is tens
    /// of megabytes). Past `JOURNAL_MAX` bytes the state is saved whole and the
    /// journal starts again. If the journal cannot be written, the batch is undone.
    fn batch(&mut self, reqs: Vec<Request>) -> Result<Response, ErrorReply> {
        self.state.check_batch(&reqs)?;
        let r = self.call(Request::Batch(reqs.clone()))?;
        let undo = self.state.apply_batch(&reqs);
        // A journal needs the file it follows: the first change writes the file.
        let persisted = if self.state_file.exists() {
            State::append_journal(&self.state_file, &reqs).and_then(|size| {
                if size > JOURNAL_MAX {
                    self.state.save(&self.state_file)
                } else {
                    Ok(())
                }
            })
        } else {
            self.state.save(&self.state_file)
        };
        if let Err(e) = persisted {
            self.state.apply_batch(&undo);
            let _ = self.call(Request::Batch(undo));
            return Err(err(
                ErrorKind::Unavailable,
                format!(
                    "cannot persist the state to {}: {e}; change undone",
                    self.state_file.display()
                ),
            ));
        }
        self.generation += 1;
        self.refresh_health();
        Ok(r)
    }

    /// Adopts `new` as the desired state after the dataplane accepted the change:
    /// persists it first; if that fails, `undo` is sent to the dataplane and the old
    /// state stays.
    fn commit(&mut self, new: State, undo: Option<Request>) -> Result<(), ErrorReply> {
        if let Err(e) = new.save(&self.state_file) {
            if let Some(u) = undo {
                let _ = self.call(u);
            }
            return Err(err(
                ErrorKind::Unavailable,
                format!(
                    "cannot persist the state to {}: {e}; change undone",
                    self.state_file.display()
                ),
            ));
        }
        self.state = new;
        self.generation += 1;
        self.refresh_health();
        Ok(())
    }

    fn attach(&mut self, spec: PortSpec) -> Result<Response, ErrorReply> {
        let mut new = self.state.clone();
        new.ports.push(spec.clone());
        new.validate()?;
        let r = self.call(Request::PortAttach(spec.clone()))?;
        self.commit(new, Some(Request::PortDetach { name: spec.name }))?;
        Ok(r)
    }

    fn detach(&mut self, name: &str) -> Result<Response, ErrorReply> {
        if self.state.port(name).is_none() {
            return Err(err(
                ErrorKind::NotFound,
                format!("no port named {name:?} (see `podpathctl port list`)"),
            ));
        }
        let new = self.state.without_port(name);
        match self.call(Request::PortDetach { name: name.into() }) {
            Ok(_) => {}
            // Already gone from the dataplane: the desired state still changes.
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let undo = self.state.port(name).cloned().map(Request::PortAttach);
        self.commit(new, undo)?;
        Ok(Response::Done)
    }

    fn mac_add(&mut self, m: StaticMac) -> Result<Response, ErrorReply> {
        let mut new = self.state.clone();
        new.macs.push(m.clone());
        new.validate()?;
        self.call(Request::MacAdd {
            bridge: m.bridge,
            mac: m.mac.clone(),
            port: m.port.clone(),
        })?;
        self.commit(
            new,
            Some(Request::MacDel {
                bridge: m.bridge,
                mac: m.mac,
            }),
        )?;
        Ok(Response::Done)
    }

    fn mac_del(&mut self, bridge: u16, mac: &str) -> Result<Response, ErrorReply> {
        let a = validate::unicast_mac(mac).map_err(|e| err(ErrorKind::BadRequest, e))?;
        let Some(i) = self
            .state
            .macs
            .iter()
            .position(|m| m.bridge == bridge && validate::unicast_mac(&m.mac).ok() == Some(a))
        else {
            return Err(err(
                ErrorKind::NotFound,
                format!("no static MAC {mac} in bridge domain {bridge}"),
            ));
        };
        let old = self.state.macs[i].clone();
        let mut new = self.state.clone();
        new.macs.remove(i);
        self.call(Request::MacDel {
            bridge,
            mac: mac.into(),
        })?;
        self.commit(
            new,
            Some(Request::MacAdd {
                bridge,
                mac: old.mac,
                port: old.port,
            }),
        )?;
        Ok(Response::Done)
    }

    /// Executes one request from a client.
    pub fn handle(&mut self, req: Request) -> Response {
        let changes = change_events(&req);
        let r = self.execute(req);
        if !matches!(r, Response::Error(_)) {
            for (kind, detail) in changes {
                self.event(kind, detail);
            }
            if let Response::Applied { generation } = r {
                self.event(
                    "generation-applied",
                    format!("snapshot generation {generation} in force on every worker"),
                );
            }
        }
        r
    }

    fn execute(&mut self, req: Request) -> Response {
        let r = match req {
            Request::Events { after } => Ok(Response::Events(self.events_after(after))),
            Request::Hello { version, .. } if version != PROTOCOL_VERSION => Err(err(
                ErrorKind::Version,
                format!("protocol version {version} is not supported (this service speaks {PROTOCOL_VERSION})"),
            )),
            Request::Hello { .. } => Ok(Response::Hello {
                version: PROTOCOL_VERSION,
                server: format!("podpath-control {}", env!("CARGO_PKG_VERSION")),
                dpdk: self
                    .dp
                    .as_ref()
                    .map_or_else(|| "dataplane not connected".into(), |c| c.server.clone()),
            }),
            Request::Ping => Ok(Response::Done),
            Request::StateShow => Ok(Response::State(DesiredState {
                ports: self.state.ports.clone(),
                macs: self.state.macs.clone(),
                node: self.state.node.clone(),
                remotes: self.state.remotes.clone(),
                services: self.state.services.clone(),
                in_sync: self.in_sync && self.dp.is_some(),
                generation: self.generation,
            })),
            Request::PortAttach(spec) => self.attach(spec),
            Request::PortDetach { name } => self.detach(&name),
            Request::MacAdd { bridge, mac, port } => self.mac_add(StaticMac { bridge, mac, port }),
            Request::MacDel { bridge, mac } => self.mac_del(bridge, &mac),
            Request::NodeSet(n) => {
                let mut new = self.state.clone();
                new.node = Some(n.clone());
                let undo = self.state.node.clone().map(Request::NodeSet);
                self.call(Request::NodeSet(n)).and_then(|r| self.commit(new, undo).map(|()| r))
            }
            Request::RemoteAdd(r) => {
                let mut new = self.state.clone();
                let undo = match new.remotes.iter_mut().find(|x| x.name == r.name) {
                    Some(x) => Some(Request::RemoteAdd(std::mem::replace(x, r.clone()))),
                    None => {
                        new.remotes.push(r.clone());
                        Some(Request::RemoteDel { name: r.name.clone() })
                    }
                };
                self.call(Request::RemoteAdd(r)).and_then(|r| self.commit(new, undo).map(|()| r))
            }
            Request::RemoteDel { name } => {
                let Some(old) = self.state.remotes.iter().find(|x| x.name == name).cloned() else {
                    return Response::Error(err(ErrorKind::NotFound, format!("no remote node {name:?}")));
                };
                let mut new = self.state.clone();
                new.remotes.retain(|x| x.name != name);
                let answer = match self.call(Request::RemoteDel { name }) {
                    Ok(r) => r,
                    Err(e) if e.kind == ErrorKind::NotFound => Response::Done,
                    Err(e) => return Response::Error(e),
                };
                self.commit(new, Some(Request::RemoteAdd(old))).map(|()| answer)
            }
            Request::ServiceSet(svc) => {
                let mut new = self.state.clone();
                let undo = match new.services.iter_mut().find(|x| x.name == svc.name) {
                    Some(x) => Request::ServiceSet(std::mem::replace(x, svc.clone())),
                    None => {
                        new.services.push(svc.clone());
                        Request::ServiceDel { name: svc.name.clone() }
                    }
                };
                self.call(Request::ServiceSet(svc)).and_then(|r| self.commit(new, Some(undo)).map(|()| r))
            }
            Request::ServiceDel { name } => {
                let Some(old) = self.state.services.iter().find(|x| x.name == name).cloned() else {
                    return Response::Error(err(ErrorKind::NotFound, format!("no service {name:?}")));
                };
                let mut new = self.state.clone();
                new.services.retain(|x| x.name != name);
                let answer = match self.call(Request::ServiceDel { name }) {
                    Ok(r) => r,
                    Err(e) if e.kind == ErrorKind::NotFound => Response::Done,
                    Err(e) => return Response::Error(e),
                };
                self.commit(new, Some(Request::ServiceSet(old))).map(|()| answer)
            }
            Request::ServiceList => Ok(Response::Services(self.state.services.clone())),
            Request::Batch(reqs) => self.batch(reqs),
            Request::ConntrackSet(s) => {
                let mut new = self.state.clone();
                new.conntrack = Some(self.state.conntrack.clone().unwrap_or_default().merged(&s));
                // To undo: the values the dataplane runs now.
                let undo = match self.call(Request::ConntrackSettingsShow) {
                    Ok(Response::ConntrackSettings(cur)) => Some(Request::ConntrackSet(ConntrackSettings {
                        max_capacity: None,
                        ..cur
                    })),
                    _ => None,
                };
                self.call(Request::ConntrackSet(s)).and_then(|r| self.commit(new, undo).map(|()| r))
            }
            q @ (Request::PortList
            | Request::RouteList
            | Request::NeighborList
            | Request::ConntrackList(_)
            | Request::ConntrackFlush
            | Request::ConntrackSettingsShow
            | Request::MacList
            | Request::Stats
            | Request::TraceStart { .. }
            | Request::TraceDump
            | Request::CaptureStart(_)
            | Request::CaptureRead
            | Request::CaptureStop) => {
                let stats = matches!(q, Request::Stats);
                match self.call(q) {
                    Ok(Response::Stats(mut s)) if stats => {
                        s.dataplane_restarts = self.dataplane_restarts;
                        Ok(Response::Stats(s))
                    }
                    r => r,
                }
            }
        };
        r.unwrap_or_else(Response::Error)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc::{sync_channel, RecvTimeoutError};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;

    use podpath_proto::server::{bind_socket, serve, Job};
    use podpath_proto::{
        sample_node, sample_remote, sample_service, NodeSpec, RemoteSpec, ServiceSpec,
    };

    use super::*;

    /// A directory of its own under the system's temporary one, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("pp-eng-{}-{n}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        fn join(&self, s: &str) -> PathBuf {
            self.0.join(s)
        }

        /// A state file that cannot be saved, even as root: its parent is a regular file.
        fn unsavable(&self) -> PathBuf {
            let blocker = self.join("blocker");
            std::fs::write(&blocker, b"not a directory").unwrap();
            blocker.join("state.json")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A fake dataplane: the real protocol server on a Unix socket, with an executor
    /// that records every request and answers Hello, PortList (with `ports`), the
    /// requests in `refuse` (with their error), and everything else with Done.
    struct Fake {
        socket: PathBuf,
        seen: Arc<Mutex<Vec<Request>>>,
        ports: Arc<Mutex<Vec<PortInfo>>>,
        refuse: Arc<Mutex<Vec<(Request, ErrorReply)>>>,
        stop: Arc<AtomicBool>,
        threads: Vec<JoinHandle<()>>,
    }

    impl Fake {
        fn start(socket: PathBuf) -> Fake {
            let listener = bind_socket(&socket, None).unwrap();
            let (tx, rx) = sync_channel::<Job>(16);
            let stop = Arc::new(AtomicBool::new(false));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let ports = Arc::new(Mutex::new(Vec::new()));
            let refuse: Arc<Mutex<Vec<(Request, ErrorReply)>>> = Arc::new(Mutex::new(Vec::new()));
            let srv = {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || serve(listener, tx, stop))
            };
            let exec = {
                let (stop, seen, ports, refuse) = (
                    Arc::clone(&stop),
                    Arc::clone(&seen),
                    Arc::clone(&ports),
                    Arc::clone(&refuse),
                );
                std::thread::spawn(move || loop {
                    match rx.recv_timeout(Duration::from_millis(20)) {
                        Ok((req, reply)) => {
                            let refused = refuse
                                .lock()
                                .unwrap()
                                .iter()
                                .find(|(r, _)| *r == req)
                                .map(|(_, e)| e.clone());
                            let resp = match (&req, refused) {
                                (_, Some(e)) => Response::Error(e),
                                (Request::Hello { .. }, None) => Response::Hello {
                                    version: PROTOCOL_VERSION,
                                    server: "fake".into(),
                                    dpdk: "fake".into(),
                                },
                                (Request::PortList, None) => {
                                    Response::Ports(ports.lock().unwrap().clone())
                                }
                                _ => Response::Done,
                            };
                            seen.lock().unwrap().push(req);
                            let _ = reply.send(resp);
                        }
                        Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => {}
                        Err(_) => return,
                    }
                })
            };
            Fake {
                socket,
                seen,
                ports,
                refuse,
                stop,
                threads: vec![srv, exec],
            }
        }

        /// The requests received since the last call, without Hello and Ping.
        fn requests(&self) -> Vec<Request> {
            std::mem::take(&mut *self.seen.lock().unwrap())
                .into_iter()
                .filter(|r| !matches!(r, Request::Hello { .. } | Request::Ping | Request::Stats))
                .collect()
        }

        fn set_ports(&self, p: Vec<PortInfo>) {
            *self.ports.lock().unwrap() = p;
        }

        fn refuse(&self, req: Request, kind: ErrorKind, message: &str) {
            self.refuse.lock().unwrap().push((req, err(kind, message)));
        }

        fn accept_all(&self) {
            self.refuse.lock().unwrap().clear();
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
            let _ = std::fs::remove_file(&self.socket);
        }
    }

    fn port(name: &str, device: &str) -> PortSpec {
        PortSpec {
            name: name.into(),
            device: device.into(),
            netns: None,
            bridge: Some(1),
            queues: None,
            mtu: None,
        }
    }

    /// What the dataplane reports for a port attached as `p`.
    fn info(p: &PortSpec, id: u16) -> PortInfo {
        PortInfo {
            id,
            name: p.name.clone(),
            device: p.device.clone(),
            driver: "net_tap".into(),
            netns: p.netns.clone(),
            bridge: p.bridge,
            mac: "02:00:00:00:00:01".into(),
            link_up: true,
            speed_mbps: 10000,
            mtu: p.mtu.unwrap_or(1500),
            queues: 1,
            xstats: Vec::new(),
        }
    }

    fn mac(m: &str, port: &str) -> StaticMac {
        StaticMac {
            bridge: 1,
            mac: m.into(),
            port: port.into(),
        }
    }

    fn mac_add(m: &StaticMac) -> Request {
        Request::MacAdd {
            bridge: m.bridge,
            mac: m.mac.clone(),
            port: m.port.clone(),
        }
    }

    fn service(name: &str, vip: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            vip: vip.into(),
            ..sample_service()
        }
    }

    fn remote(name: &str, ip: &str, cidr: &str) -> RemoteSpec {
        RemoteSpec {
            name: name.into(),
            node_ip: ip.into(),
            vtep_mac: "0a:58:0a:f4:02:01".into(),
            pod_cidr: cidr.into(),
        }
    }

    /// Two ports with a static MAC, the node, a remote node and a Service.
    fn full_state() -> State {
        State {
            ports: vec![
                port("pod-a", "net_tap3,iface=eth0"),
                port("pod-b", "net_tap4,iface=eth0"),
            ],
            macs: vec![mac("0a:58:0a:f4:00:05", "pod-a")],
            node: Some(sample_node()),
            remotes: vec![sample_remote()],
            services: vec![sample_service()],
            conntrack: Some(podpath_proto::ConntrackSettings {
                udp: Some(60),
                ..Default::default()
            }),
        }
    }

    /// An engine connected to `fake` without reconciling.
    fn connected(state: State, state_file: PathBuf, fake: &Fake) -> Engine {
        let mut e = Engine::new(state, state_file, fake.socket.clone());
        e.dp = Some(Client::connect(&fake.socket, "test").unwrap());
        e
    }

    fn desired(e: &mut Engine) -> DesiredState {
        match e.handle(Request::StateShow) {
            Response::State(s) => s,
            r => panic!("StateShow answered {r:?}"),
        }
    }

    fn error(r: Response) -> ErrorReply {
        match r {
            Response::Error(e) => e,
            r => panic!("expected an error, got {r:?}"),
        }
    }

    fn file(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    #[test]
    fn only_af_packet_ports_of_this_namespace_are_watched_for_recreated_links() {
        let port = |device: &str, netns: Option<&str>| PortSpec {
            name: "p".into(),
            device: device.into(),
            netns: netns.map(String::from),
            bridge: None,
            queues: None,
            mtu: None,
        };
        assert_eq!(
            af_packet_iface(&port("net_af_packet0,iface=eth0,qpairs=2", None)),
            Some("eth0")
        );
        assert_eq!(af_packet_iface(&port("net_tap1,iface=pphost", None)), None);
        assert_eq!(
            af_packet_iface(&port("net_af_packet3,iface=eth0", Some("/run/netns/x"))),
            None
        );
        assert_eq!(ifindex("lo"), Some(1));
        assert_eq!(ifindex("no-such-interface"), None);
    }

    #[test]
    fn reconcile_fills_an_empty_dataplane() {
        let dir = TempDir::new("fill");
        let fake = Fake::start(dir.join("dp.sock"));
        let mut s = full_state();
        s.remotes
            .push(remote("node3", "192.168.77.13", "10.244.2.0/24"));
        s.services.push(service("default/db", "10.96.0.11"));
        s.macs.push(mac("0a:58:0a:f4:00:06", "pod-b"));
        let mut e = connected(s.clone(), dir.join("state.json"), &fake);
        assert_eq!(e.reconcile(), Ok(2));
        let want = vec![
            Request::PortList,
            Request::PortAttach(s.ports[0].clone()),
            Request::PortAttach(s.ports[1].clone()),
            Request::NodeSet(sample_node()),
            // Remotes and Services as one batch: one rebuild whatever their number.
            Request::Batch(vec![
                Request::RemoteAdd(s.remotes[0].clone()),
                Request::RemoteAdd(s.remotes[1].clone()),
                Request::ServiceSet(s.services[0].clone()),
                Request::ServiceSet(s.services[1].clone()),
            ]),
            // Knobs changed at run time are replayed too.
            Request::ConntrackSet(s.conntrack.clone().unwrap()),
            mac_add(&s.macs[0]),
            mac_add(&s.macs[1]),
        ];
        assert_eq!(fake.requests(), want);
        assert_eq!(e.reconciles, 1);
        // Reconciling does not change the desired state.
        assert_eq!(e.state(), &s);
    }

    #[test]
    fn a_batch_is_all_or_nothing_and_one_dataplane_call() {
        let dir = TempDir::new("batch");
        let fake = Fake::start(dir.join("dp.sock"));
        let s = full_state();
        let mut e = connected(s.clone(), dir.join("state.json"), &fake);
        let before = fake.requests().len();
        // A delete of a Service that does not exist refuses the whole batch.
        let bad = Request::Batch(vec![
            Request::ServiceSet(service("default/new", "10.96.0.12")),
            Request::ServiceDel {
                name: "default/none".into(),
            },
        ]);
        assert_eq!(error(e.handle(bad)).kind, ErrorKind::NotFound);
        assert_eq!(fake.requests().len(), before, "the dataplane saw nothing");
        assert_eq!(e.state(), &s, "nothing changed");
        // A good one: one call, one persisted state with every change.
        let old = s.services[0].name.clone();
        let good = vec![
            Request::RemoteAdd(remote("node9", "192.168.77.19", "10.244.8.0/24")),
            Request::ServiceSet(service("default/new", "10.96.0.12")),
            Request::ServiceDel { name: old.clone() },
        ];
        let r = e.handle(Request::Batch(good.clone()));
        assert!(!matches!(r, Response::Error(_)), "{r:?}");
        assert_eq!(fake.requests()[before..], [Request::Batch(good)]);
        // The first change writes the whole file; later ones one journal line each,
        // which loading replays.
        let saved = State::load(&dir.join("state.json")).unwrap().unwrap();
        assert_eq!(&saved, e.state());
        assert!(!dir.join("state.journal").exists());
        let more = vec![Request::ServiceSet(service("default/more", "10.96.0.13"))];
        assert!(!matches!(
            e.handle(Request::Batch(more)),
            Response::Error(_)
        ));
        let journal = String::from_utf8(file(&dir.join("state.journal"))).unwrap();
        assert_eq!(journal.lines().count(), 1);
        let saved = State::load(&dir.join("state.json")).unwrap().unwrap();
        assert_eq!(&saved, e.state());
        assert!(saved.remotes.iter().any(|r| r.name == "node9"));
        assert!(saved.services.iter().any(|x| x.name == "default/new"));
        assert!(!saved.services.iter().any(|x| x.name == old));
        // Only remote and Service changes go in a batch.
        let odd = Request::Batch(vec![Request::PortList]);
        assert_eq!(error(e.handle(odd)).kind, ErrorKind::BadRequest);
    }

    #[test]
    fn reconcile_keeps_matching_ports_and_replaces_the_others() {
        let dir = TempDir::new("diff");
        let fake = Fake::start(dir.join("dp.sock"));
        let keep = port("pod-a", "net_tap3,iface=eth0");
        let moved = port("pod-b", "net_tap4,iface=eth0");
        let mut mtu = port("pod-c", "net_tap5,iface=eth0");
        let missing = port("pod-d", "net_tap6,iface=eth0");
        let stray = port("old", "net_tap9,iface=eth0");
        // The dataplane has pod-b on another device, pod-c at another MTU, a port
        // nobody wants, and pod-a as wanted (the wanted MTU left to the dataplane).
        fake.set_ports(vec![
            info(&keep, 0),
            info(&port("pod-b", "net_tap7,iface=eth0"), 1),
            info(&mtu, 2),
            info(&stray, 3),
        ]);
        mtu.mtu = Some(9000);
        let s = State {
            ports: vec![keep, moved.clone(), mtu.clone(), missing.clone()],
            ..State::default()
        };
        let mut e = connected(s, dir.join("state.json"), &fake);
        assert_eq!(e.reconcile(), Ok(6));
        assert_eq!(
            fake.requests(),
            vec![
                Request::PortList,
                Request::PortDetach {
                    name: "pod-b".into()
                },
                Request::PortDetach {
                    name: "pod-c".into()
                },
                Request::PortDetach { name: "old".into() },
                Request::PortAttach(moved),
                Request::PortAttach(mtu),
                Request::PortAttach(missing),
            ]
        );
    }

    #[test]
    fn failed_attach_leaves_the_engine_out_of_sync_and_is_retried() {
        let dir = TempDir::new("retry");
        let fake = Fake::start(dir.join("dp.sock"));
        let s = full_state();
        let (a, b) = (s.ports[0].clone(), s.ports[1].clone());
        fake.refuse(
            Request::PortAttach(b.clone()),
            ErrorKind::Device,
            "probe failed",
        );

        // Reconcile reports the port and goes on with the rest.
        let mut e = connected(s.clone(), dir.join("state.json"), &fake);
        let msg = e.reconcile().unwrap_err();
        assert_eq!(msg, "pod-b: probe failed");
        let seen = fake.requests();
        assert_eq!(
            seen[..3],
            [
                Request::PortList,
                Request::PortAttach(a.clone()),
                Request::PortAttach(b.clone())
            ]
        );
        assert!(seen.contains(&mac_add(&s.macs[0])));
        drop(e);

        // Through tick: connected, not in sync, no retry before the delay.
        let mut e = Engine::new(s.clone(), dir.join("state.json"), fake.socket.clone());
        assert!(!desired(&mut e).in_sync);
        e.tick();
        assert!(e.connected());
        assert_eq!(e.reconciles, 1);
        assert!(!desired(&mut e).in_sync);
        assert!(fake.requests().contains(&Request::PortAttach(b.clone())));
        e.tick();
        assert_eq!(e.reconciles, 1, "retried before the delay");
        assert!(fake.requests().is_empty());

        // Once the delay is over (shortened here), the next tick retries, and succeeds.
        fake.accept_all();
        e.next_retry = Instant::now();
        e.tick();
        assert_eq!(e.reconciles, 2);
        let seen = fake.requests();
        assert_eq!(
            seen[..3],
            [
                Request::PortList,
                Request::PortAttach(a),
                Request::PortAttach(b)
            ]
        );
        assert!(desired(&mut e).in_sync);
        e.tick();
        assert_eq!(e.reconciles, 2, "reconciled again while in sync");
    }

    /// Sends `req` to an engine holding `initial` whose state file cannot be written,
    /// and checks that the dataplane got `req` and then `undo`, and nothing changed.
    fn undone_on_save_failure(initial: &State, req: Request, undo: Request) {
        let dir = TempDir::new("undo");
        let fake = Fake::start(dir.join("dp.sock"));
        let mut e = connected(initial.clone(), dir.unsavable(), &fake);
        let r = error(e.handle(req.clone()));
        assert_eq!(r.kind, ErrorKind::Unavailable, "{req:?}: {r:?}");
        assert!(r.message.contains("cannot persist"), "{req:?}: {r:?}");
        assert!(r.message.contains("change undone"), "{req:?}: {r:?}");
        assert_eq!(fake.requests(), vec![req.clone(), undo], "{req:?}");
        assert_eq!(e.state(), initial, "{req:?}");
        assert_eq!(desired(&mut e).generation, 0, "{req:?}");
    }

    #[test]
    fn save_failure_undoes_additions() {
        let s = full_state();
        let c = port("pod-c", "net_tap5,iface=eth0");
        undone_on_save_failure(
            &s,
            Request::PortAttach(c),
            Request::PortDetach {
                name: "pod-c".into(),
            },
        );
        let m = mac("0a:58:0a:f4:00:07", "pod-b");
        undone_on_save_failure(
            &s,
            mac_add(&m),
            Request::MacDel {
                bridge: 1,
                mac: m.mac.clone(),
            },
        );
        let svc = service("default/db", "10.96.0.11");
        undone_on_save_failure(
            &s,
            Request::ServiceSet(svc),
            Request::ServiceDel {
                name: "default/db".into(),
            },
        );
        let r = remote("node3", "192.168.77.13", "10.244.2.0/24");
        undone_on_save_failure(
            &s,
            Request::RemoteAdd(r),
            Request::RemoteDel {
                name: "node3".into(),
            },
        );
    }

    #[test]
    fn save_failure_undoes_replacements() {
        let s = full_state();
        let old = sample_service();
        let new = ServiceSpec {
            vip: "10.96.0.99".into(),
            ..old.clone()
        };
        undone_on_save_failure(&s, Request::ServiceSet(new), Request::ServiceSet(old));
        let old = sample_remote();
        let new = RemoteSpec {
            vtep_mac: "0a:58:0a:f4:01:99".into(),
            ..old.clone()
        };
        undone_on_save_failure(&s, Request::RemoteAdd(new), Request::RemoteAdd(old));
        let old = sample_node();
        let new = NodeSpec {
            vni: 42,
            ..old.clone()
        };
        undone_on_save_failure(&s, Request::NodeSet(new), Request::NodeSet(old));
    }

    #[test]
    fn save_failure_undoes_removals() {
        let s = full_state();
        undone_on_save_failure(
            &s,
            Request::PortDetach {
                name: "pod-b".into(),
            },
            Request::PortAttach(s.ports[1].clone()),
        );
        undone_on_save_failure(
            &s,
            Request::MacDel {
                bridge: 1,
                mac: s.macs[0].mac.clone(),
            },
            mac_add(&s.macs[0]),
        );
        undone_on_save_failure(
            &s,
            Request::ServiceDel {
                name: sample_service().name,
            },
            Request::ServiceSet(sample_service()),
        );
        undone_on_save_failure(
            &s,
            Request::RemoteDel {
                name: sample_remote().name,
            },
            Request::RemoteAdd(sample_remote()),
        );
    }

    #[test]
    fn accepted_change_is_persisted() {
        let dir = TempDir::new("persist");
        let fake = Fake::start(dir.join("dp.sock"));
        let path = dir.join("state.json");
        let s = full_state();
        s.save(&path).unwrap();
        let mut e = connected(s.clone(), path.clone(), &fake);
        let c = port("pod-c", "net_tap5,iface=eth0");
        assert_eq!(e.handle(Request::PortAttach(c.clone())), Response::Done);
        assert_eq!(fake.requests(), vec![Request::PortAttach(c.clone())]);
        let mut want = s;
        want.ports.push(c);
        assert_eq!(e.state(), &want);
        assert_eq!(State::load(&path).unwrap(), Some(want));
        assert_eq!(desired(&mut e).generation, 1);
    }

    #[test]
    fn refused_change_changes_nothing() {
        let dir = TempDir::new("refuse");
        let fake = Fake::start(dir.join("dp.sock"));
        let path = dir.join("state.json");
        let s = full_state();
        s.save(&path).unwrap();
        let before = file(&path);
        let mut e = connected(s.clone(), path.clone(), &fake);
        let mut bad_svc = service("default/db", "10.96.0.11");
        bad_svc.protocol = "sctp".into();
        let cases = [
            (
                Request::PortAttach(port("pod-c", "net_tap5,iface=eth0")),
                ErrorKind::Device,
            ),
            (
                mac_add(&mac("0a:58:0a:f4:00:07", "pod-b")),
                ErrorKind::BadRequest,
            ),
            (Request::ServiceSet(bad_svc), ErrorKind::BadRequest),
            (
                Request::ServiceSet(service(&sample_service().name, "10.96.0.99")),
                ErrorKind::AlreadyExists,
            ),
            (
                Request::RemoteAdd(remote("node3", "192.168.77.13", "10.244.0.0/25")),
                ErrorKind::BadRequest,
            ),
            (
                Request::NodeSet(NodeSpec {
                    vni: 1 << 24,
                    ..sample_node()
                }),
                ErrorKind::BadRequest,
            ),
            (
                Request::PortDetach {
                    name: "pod-a".into(),
                },
                ErrorKind::Unavailable,
            ),
            (
                Request::ServiceDel {
                    name: sample_service().name,
                },
                ErrorKind::Unavailable,
            ),
            (
                Request::RemoteDel {
                    name: sample_remote().name,
                },
                ErrorKind::Unavailable,
            ),
            (
                Request::MacDel {
                    bridge: 1,
                    mac: s.macs[0].mac.clone(),
                },
                ErrorKind::Unavailable,
            ),
        ];
        for (req, kind) in cases {
            fake.refuse(req.clone(), kind, "the fake says no");
            assert_eq!(
                e.handle(req.clone()),
                Response::Error(err(kind, "the fake says no"))
            );
            // Sent once, and nothing to undo.
            assert_eq!(fake.requests(), vec![req.clone()]);
            assert_eq!(e.state(), &s, "{req:?}");
            assert_eq!(file(&path), before, "{req:?}");
        }
        assert_eq!(desired(&mut e).generation, 0);
    }

    #[test]
    fn detach_of_unknown_and_of_vanished_ports() {
        let dir = TempDir::new("detach");
        let fake = Fake::start(dir.join("dp.sock"));
        let path = dir.join("state.json");
        let s = full_state();
        let mut e = connected(s.clone(), path.clone(), &fake);
        let r = error(e.handle(Request::PortDetach {
            name: "pod-z".into(),
        }));
        assert_eq!(r.kind, ErrorKind::NotFound);
        assert!(r.message.contains("pod-z"), "{r:?}");
        assert!(fake.requests().is_empty());
        assert!(!path.exists());

        // The dataplane lost pod-a already: the desired state still drops it (and its
        // static MAC).
        let gone = Request::PortDetach {
            name: "pod-a".into(),
        };
        fake.refuse(gone.clone(), ErrorKind::NotFound, "no port named \"pod-a\"");
        assert_eq!(e.handle(gone.clone()), Response::Done);
        assert_eq!(fake.requests(), vec![gone]);
        let want = s.without_port("pod-a");
        assert!(want.macs.is_empty());
        assert_eq!(e.state(), &want);
        assert_eq!(State::load(&path).unwrap(), Some(want));
    }

    #[test]
    fn local_refusals_do_not_contact_the_dataplane() {
        let dir = TempDir::new("local");
        let fake = Fake::start(dir.join("dp.sock"));
        let s = full_state();
        let mut e = connected(s.clone(), dir.join("state.json"), &fake);
        let cases = [
            (
                Request::PortAttach(port("pod-a", "net_tap8")),
                ErrorKind::AlreadyExists,
            ),
            (
                Request::PortAttach(port("pod-c", "net_tap3,iface=other")),
                ErrorKind::AlreadyExists,
            ),
            (
                Request::PortAttach(port("bad name", "net_tap8")),
                ErrorKind::BadRequest,
            ),
            (
                mac_add(&mac("0a:58:0a:f4:00:07", "pod-z")),
                ErrorKind::NotFound,
            ),
            (
                mac_add(&mac("01:00:5e:00:00:01", "pod-a")),
                ErrorKind::BadRequest,
            ),
            (mac_add(&s.macs[0]), ErrorKind::AlreadyExists),
            (
                Request::MacDel {
                    bridge: 1,
                    mac: "0a:58:0a:f4:00:99".into(),
                },
                ErrorKind::NotFound,
            ),
            (
                Request::MacDel {
                    bridge: 1,
                    mac: "nonsense".into(),
                },
                ErrorKind::BadRequest,
            ),
            (
                Request::ServiceDel {
                    name: "default/none".into(),
                },
                ErrorKind::NotFound,
            ),
            (
                Request::RemoteDel {
                    name: "node9".into(),
                },
                ErrorKind::NotFound,
            ),
        ];
        for (req, kind) in cases {
            let r = error(e.handle(req.clone()));
            assert_eq!(r.kind, kind, "{req:?}: {r:?}");
            assert!(fake.requests().is_empty(), "{req:?} reached the dataplane");
            assert_eq!(e.state(), &s);
        }
    }

    #[test]
    fn disconnected_engine_changes_nothing() {
        let dir = TempDir::new("down");
        let path = dir.join("state.json");
        let s = full_state();
        let mut e = Engine::new(s.clone(), path.clone(), dir.join("nobody.sock"));
        e.tick();
        assert!(!e.connected());
        let reqs = [
            Request::PortAttach(port("pod-c", "net_tap5,iface=eth0")),
            Request::PortDetach {
                name: "pod-a".into(),
            },
            mac_add(&mac("0a:58:0a:f4:00:07", "pod-b")),
            Request::MacDel {
                bridge: 1,
                mac: s.macs[0].mac.clone(),
            },
            Request::NodeSet(NodeSpec {
                vni: 42,
                ..sample_node()
            }),
            Request::RemoteAdd(remote("node3", "192.168.77.13", "10.244.2.0/24")),
            Request::RemoteDel {
                name: sample_remote().name,
            },
            Request::ServiceSet(service("default/db", "10.96.0.11")),
            Request::ServiceDel {
                name: sample_service().name,
            },
            Request::PortList,
        ];
        for req in reqs {
            let r = error(e.handle(req.clone()));
            assert_eq!(r.kind, ErrorKind::Unavailable, "{req:?}: {r:?}");
            assert!(r.message.contains("not connected"), "{req:?}: {r:?}");
            assert_eq!(e.state(), &s);
        }
        assert!(!path.exists());
        let d = desired(&mut e);
        assert!(!d.in_sync);
        assert_eq!(d.generation, 0);
    }

    #[test]
    fn lost_dataplane_is_reconnected_and_reconciled() {
        let dir = TempDir::new("restart");
        let sock = dir.join("dp.sock");
        let s = State {
            ports: vec![port("pod-a", "net_tap3,iface=eth0")],
            ..State::default()
        };
        let fake = Fake::start(sock.clone());
        let mut e = Engine::new(s.clone(), dir.join("state.json"), sock.clone());
        e.tick();
        assert!(desired(&mut e).in_sync);
        assert_eq!(
            fake.requests(),
            vec![Request::PortList, Request::PortAttach(s.ports[0].clone())]
        );
        drop(fake);

        let r = error(e.handle(Request::PortList));
        assert_eq!(r.kind, ErrorKind::Unavailable);
        assert!(!e.connected());
        assert!(!desired(&mut e).in_sync);

        let fake = Fake::start(sock);
        e.tick();
        assert!(e.connected());
        assert_eq!(e.reconciles, 2);
        assert!(desired(&mut e).in_sync);
        assert_eq!(
            fake.requests(),
            vec![Request::PortList, Request::PortAttach(s.ports[0].clone())]
        );
    }
}

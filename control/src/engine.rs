//! The engine: one thread owning the desired state and the dataplane connection.
//! It executes requests one at a time, each whole or not at all, and reconciles the
//! dataplane to the desired state whenever it (re)connects.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use podpath_proto::{
    validate, Client, ClientError, DesiredState, ErrorKind, ErrorReply, PortInfo, PortSpec,
    Request, Response, StaticMac, PROTOCOL_VERSION,
};

use crate::state::State;

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

pub struct Engine {
    state: State,
    state_file: PathBuf,
    dp_socket: PathBuf,
    dp: Option<Client>,
    in_sync: bool,
    generation: u64,
    next_retry: Instant,
    /// Times the engine reconciled a (re)connected dataplane.
    pub reconciles: u64,
}

impl Engine {
    pub fn new(state: State, state_file: PathBuf, dp_socket: PathBuf) -> Engine {
        Engine {
            state,
            state_file,
            dp_socket,
            dp: None,
            in_sync: false,
            generation: 0,
            next_retry: Instant::now(),
            reconciles: 0,
        }
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
                    self.dp = Some(c);
                    self.in_sync = false;
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
        if let Some(n) = self.state.node.clone() {
            if let Err(e) = self.call(Request::NodeSet(n)) {
                failed.push(format!("node: {}", e.message));
            }
            for r in self.state.remotes.clone() {
                if let Err(e) = self.call(Request::RemoteAdd(r.clone())) {
                    failed.push(format!("remote node {}: {}", r.name, e.message));
                }
            }
        }
        for svc in self.state.services.clone() {
            if let Err(e) = self.call(Request::ServiceSet(svc.clone())) {
                failed.push(format!("service {}: {}", svc.name, e.message));
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
        let r = match req {
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
                self.call(Request::NodeSet(n)).and_then(|_| self.commit(new, undo)).map(|()| Response::Done)
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
                self.call(Request::RemoteAdd(r)).and_then(|_| self.commit(new, undo)).map(|()| Response::Done)
            }
            Request::RemoteDel { name } => {
                let Some(old) = self.state.remotes.iter().find(|x| x.name == name).cloned() else {
                    return Response::Error(err(ErrorKind::NotFound, format!("no remote node {name:?}")));
                };
                let mut new = self.state.clone();
                new.remotes.retain(|x| x.name != name);
                match self.call(Request::RemoteDel { name }) {
                    Ok(_) => {}
                    Err(e) if e.kind == ErrorKind::NotFound => {}
                    Err(e) => return Response::Error(e),
                }
                self.commit(new, Some(Request::RemoteAdd(old))).map(|()| Response::Done)
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
                self.call(Request::ServiceSet(svc)).and_then(|_| self.commit(new, Some(undo))).map(|()| Response::Done)
            }
            Request::ServiceDel { name } => {
                let Some(old) = self.state.services.iter().find(|x| x.name == name).cloned() else {
                    return Response::Error(err(ErrorKind::NotFound, format!("no service {name:?}")));
                };
                let mut new = self.state.clone();
                new.services.retain(|x| x.name != name);
                match self.call(Request::ServiceDel { name }) {
                    Ok(_) => {}
                    Err(e) if e.kind == ErrorKind::NotFound => {}
                    Err(e) => return Response::Error(e),
                }
                self.commit(new, Some(Request::ServiceSet(old))).map(|()| Response::Done)
            }
            Request::ServiceList => Ok(Response::Services(self.state.services.clone())),
            q @ (Request::PortList
            | Request::RouteList
            | Request::NeighborList
            | Request::ConntrackList(_)
            | Request::ConntrackFlush
            | Request::MacList
            | Request::Stats
            | Request::TraceStart { .. }
            | Request::TraceDump) => self.call(q),
        };
        r.unwrap_or_else(Response::Error)
    }
}

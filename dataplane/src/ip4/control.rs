//! IPv4's part of the control thread: the node's identity and remote nodes (the L3 view published to the workers), neighbours.
//! (An `impl` of the control thread, `crate::control::Control`, kept with the
//! feature.)
use std::sync::Arc;
use std::time::Duration;

use podpath_proto::{ErrorKind, ErrorReply, NeighborInfo, NodeSpec, RemoteSpec, ServiceSpec};

use crate::ip4::L3;
use crate::snapshot::Snapshot;
use crate::worker::WorkerMsg;

use crate::control::{err, Control};

impl Control {
    /// Builds the L3 view for `node` and `remotes`, and everything that depends on it
    /// (port roles, the Services' local endpoints and NodePorts), and publishes them
    /// as one snapshot; on a build error nothing changes.
    pub(crate) fn set_l3(
        &mut self,
        node: NodeSpec,
        remotes: Vec<RemoteSpec>,
    ) -> Result<u64, ErrorReply> {
        let l3 = Arc::new(
            L3::build(&node, &remotes).map_err(|e| err(ErrorKind::BadRequest, e.to_string()))?,
        );
        let roles_changed = self
            .node
            .as_ref()
            .is_none_or(|o| o.uplink != node.uplink || o.host != node.host);
        let services = if self.services.is_empty() {
            Arc::clone(&self.snap.services)
        } else {
            // The specs are the same; with the same node identity every Service's
            // tables are reused (a remote node added), else rebuilt.
            let specs = std::mem::take(&mut self.services);
            let refs: Vec<&ServiceSpec> = specs.iter().collect();
            let r = self.build_services(&refs, &l3, &|_| true);
            drop(refs);
            self.services = specs;
            r.map_err(|e| err(e.kind, format!("with this node: {}", e.message)))?
        };
        self.node = Some(node);
        self.remotes = remotes;
        let ports = if roles_changed {
            self.build_map(self.n_workers())
        } else {
            Arc::clone(&self.snap.ports)
        };
        // A publish error leaves the new state in place: it is what the workers will
        // run; the caller learns it is not yet in force everywhere.
        self.publish(Snapshot {
            ports,
            l3,
            services,
            settings: Arc::clone(&self.snap.settings),
        })
    }

    pub fn node_set(&mut self, node: NodeSpec) -> Result<u64, ErrorReply> {
        let remotes = self.remotes.clone();
        self.set_l3(node, remotes)
    }

    pub(crate) fn remote_add(&mut self, r: RemoteSpec) -> Result<u64, ErrorReply> {
        let node = self.node.clone().ok_or_else(|| {
            err(
                ErrorKind::BadRequest,
                "set the node first (NodeSet): remote nodes need its underlay and VNI",
            )
        })?;
        let mut remotes = self.remotes.clone();
        match remotes.iter_mut().find(|x| x.name == r.name) {
            Some(x) => *x = r,
            None => remotes.push(r),
        }
        self.set_l3(node, remotes)
    }

    pub(crate) fn remote_del(&mut self, name: &str) -> Result<u64, ErrorReply> {
        let node = self
            .node
            .clone()
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no remote node {name:?}")))?;
        if !self.remotes.iter().any(|x| x.name == name) {
            return Err(err(ErrorKind::NotFound, format!("no remote node {name:?}")));
        }
        let remotes = self
            .remotes
            .iter()
            .filter(|x| x.name != name)
            .cloned()
            .collect();
        self.set_l3(node, remotes)
    }

    pub(crate) fn neighbor_list(&self) -> Result<Vec<NeighborInfo>, ErrorReply> {
        let mut out = Vec::new();
        for rows in self.gather(WorkerMsg::DumpNeighbors, Duration::from_secs(2))? {
            let hz = self.tsc_hz.max(1);
            out.extend(rows.into_iter().map(|r| NeighborInfo {
                worker: r.worker,
                ip: crate::wire::Ipv4Addr::from_u32(r.ip).to_string(),
                mac: r.mac.to_string(),
                port: self.port_name(r.port),
                age_ms: r.age_ticks.saturating_mul(1000) / hz,
            }));
        }
        out.sort_by(|a, b| (&a.ip, a.worker).cmp(&(&b.ip, b.worker)));
        Ok(out)
    }
}

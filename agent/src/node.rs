//! The agent's side of the control service: read the node, apply remote changes.
//! Blocking calls on the Unix socket (short; the control service answers once the
//! dataplane's workers run the change).
use std::path::Path;

use podpath_proto::{Client, DesiredState, NodeSpec, RemoteSpec, Request, Response};

pub struct Node {
    client: Client,
}

impl Node {
    pub fn connect(socket: &Path) -> Result<Node, String> {
        Client::connect(socket, "podpath-agent")
            .map(|client| Node { client })
            .map_err(|e| e.to_string())
    }

    pub fn state(&mut self) -> Result<DesiredState, String> {
        match self
            .client
            .call(Request::StateShow)
            .map_err(|e| e.to_string())?
        {
            Response::State(s) => Ok(s),
            r => Err(format!("unexpected answer {r:?}")),
        }
    }

    /// This node's identity; the agent needs it to announce the node.
    pub fn spec(&mut self) -> Result<NodeSpec, String> {
        self.state()?
            .node
            .ok_or_else(|| "the control service has no [node] yet".to_string())
    }

    pub fn add(&mut self, r: &RemoteSpec) -> Result<(), String> {
        self.client
            .call(Request::RemoteAdd(r.clone()))
            .map(|_| ())
            .map_err(|e| format!("remote {}: {e}", r.name))
    }

    pub fn del(&mut self, name: &str) -> Result<(), String> {
        match self.client.call(Request::RemoteDel { name: name.into() }) {
            Ok(_) => Ok(()),
            Err(podpath_proto::ClientError::Server(e))
                if e.kind == podpath_proto::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(e) => Err(format!("remote {name}: {e}")),
        }
    }

    pub fn service_set(&mut self, s: &podpath_proto::ServiceSpec) -> Result<(), String> {
        self.client
            .call(Request::ServiceSet(s.clone()))
            .map(|_| ())
            .map_err(|e| format!("service {}: {e}", s.name))
    }

    pub fn service_del(&mut self, name: &str) -> Result<(), String> {
        match self.client.call(Request::ServiceDel { name: name.into() }) {
            Ok(_) => Ok(()),
            Err(podpath_proto::ClientError::Server(e))
                if e.kind == podpath_proto::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(e) => Err(format!("service {name}: {e}")),
        }
    }

    /// Several changes as one (one snapshot, one persisted state).
    pub fn batch(&mut self, reqs: Vec<Request>) -> Result<(), String> {
        if reqs.is_empty() {
            return Ok(());
        }
        let n = reqs.len();
        self.client
            .call(Request::Batch(reqs))
            .map(|_| ())
            .map_err(|e| format!("a batch of {n} changes: {e}"))
    }

    /// Makes the etcd source's remotes exactly `desired`.
    pub fn reconcile(&mut self, desired: &[RemoteSpec]) -> Result<(usize, usize), String> {
        self.reconcile_with(desired, crate::flannel::REMOTE_PREFIX)
    }

    /// Makes the remotes named with `prefix` exactly `desired`.
    pub fn reconcile_with(
        &mut self,
        desired: &[RemoteSpec],
        prefix: &str,
    ) -> Result<(usize, usize), String> {
        let current = self.state()?.remotes;
        let (adds, dels) = crate::flannel::diff_with(&current, desired, prefix);
        let (a, d) = (adds.len(), dels.len());
        let reqs = adds
            .into_iter()
            .map(Request::RemoteAdd)
            .chain(dels.into_iter().map(|name| Request::RemoteDel { name }))
            .collect();
        self.batch(reqs)?;
        Ok((a, d))
    }
}

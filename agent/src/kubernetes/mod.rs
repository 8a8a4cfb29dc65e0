//! The Kubernetes API source: watches Nodes, Services and EndpointSlices (kube-rs
//! watchers: list, then watch from its resourceVersion; a 410 Gone or a broken
//! stream relists by itself, with back-off) and keeps the control service's
//! remotes and Services in step. A change to one Service or slice recomputes and
//! applies that Service only; a relist replaces the kind's objects at once and
//! reconciles, so nothing still true is dropped on the way.
pub mod translate;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node as K8sNode, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
pub use kube::runtime::watcher::Event;
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use podpath_proto::{Request, ServiceSpec};
use tokio::sync::watch as tokio_watch;

use crate::config::Config;
use crate::node::Node;

/// The agent's copy of what it watches, and what it applied.
#[derive(Default)]
pub struct Cluster {
    /// This node's name (its own Node is not a remote).
    pub me: String,
    services: HashMap<String, Service>,
    /// Slices by their Service, then by slice key.
    slices: HashMap<String, BTreeMap<String, EndpointSlice>>,
    /// Which Service each slice was filed under (its label can change).
    slice_owner: HashMap<String, String>,
    nodes: BTreeMap<String, K8sNode>,
    /// The entries last applied per Service.
    applied: HashMap<String, Vec<ServiceSpec>>,
    // Relist buffers, swapped in at InitDone.
    init_services: Option<HashMap<String, Service>>,
    init_slices: Option<Vec<EndpointSlice>>,
    init_nodes: Option<BTreeMap<String, K8sNode>>,
}

/// One watcher's event, by kind (boxed: the objects are large and move once).
pub enum Change {
    Service(Box<Event<Service>>),
    Slice(Box<Event<EndpointSlice>>),
    Node(Box<Event<K8sNode>>),
}

/// What a change asks of the control service.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Services ("namespace/name") to recompute.
    pub services: BTreeSet<String>,
    /// Recompute every Service and remove the ones the source no longer has.
    pub all_services: bool,
    pub nodes: bool,
}

fn obj_key<K: kube::Resource>(o: &K) -> String {
    translate::key(o.meta().namespace.as_deref(), o.meta().name.as_deref())
}

impl Cluster {
    pub fn new(me: &str) -> Cluster {
        Cluster {
            me: me.into(),
            ..Cluster::default()
        }
    }

    fn file_slice(&mut self, s: EndpointSlice) -> Vec<String> {
        let k = obj_key(&s);
        let mut touched = self.unfile_slice(&k);
        if let Some(svc) = translate::slice_service(&s) {
            self.slices
                .entry(svc.clone())
                .or_default()
                .insert(k.clone(), s);
            self.slice_owner.insert(k, svc.clone());
            touched.push(svc);
        }
        touched
    }

    fn unfile_slice(&mut self, k: &str) -> Vec<String> {
        let Some(svc) = self.slice_owner.remove(k) else {
            return Vec::new();
        };
        if let Some(m) = self.slices.get_mut(&svc) {
            m.remove(k);
            if m.is_empty() {
                self.slices.remove(&svc);
            }
        }
        vec![svc]
    }

    /// Takes one event in; says what to recompute.
    pub fn take(&mut self, c: Change) -> Work {
        let mut w = Work::default();
        match c {
            Change::Service(e) => match *e {
                Event::Apply(s) => {
                    let k = obj_key(&s);
                    self.services.insert(k.clone(), s);
                    w.services.insert(k);
                }
                Event::Delete(s) => {
                    let k = obj_key(&s);
                    self.services.remove(&k);
                    w.services.insert(k);
                }
                Event::Init => self.init_services = Some(HashMap::new()),
                Event::InitApply(s) => {
                    let k = obj_key(&s);
                    self.init_services
                        .get_or_insert_with(HashMap::new)
                        .insert(k, s);
                }
                Event::InitDone => {
                    self.services = self.init_services.take().unwrap_or_default();
                    w.all_services = true;
                }
            },
            Change::Slice(e) => match *e {
                Event::Apply(s) => w.services.extend(self.file_slice(s)),
                Event::Delete(s) => w.services.extend(self.unfile_slice(&obj_key(&s))),
                Event::Init => self.init_slices = Some(Vec::new()),
                Event::InitApply(s) => self.init_slices.get_or_insert_with(Vec::new).push(s),
                Event::InitDone => {
                    self.slices.clear();
                    self.slice_owner.clear();
                    for s in self.init_slices.take().unwrap_or_default() {
                        self.file_slice(s);
                    }
                    w.all_services = true;
                }
            },
            Change::Node(e) => {
                match *e {
                    Event::Apply(n) => {
                        self.nodes.insert(obj_key(&n), n);
                    }
                    Event::Delete(n) => {
                        self.nodes.remove(&obj_key(&n));
                    }
                    Event::Init => self.init_nodes = Some(BTreeMap::new()),
                    Event::InitApply(n) => {
                        self.init_nodes
                            .get_or_insert_with(BTreeMap::new)
                            .insert(obj_key(&n), n);
                        return w;
                    }
                    Event::InitDone => self.nodes = self.init_nodes.take().unwrap_or_default(),
                }
                w.nodes = true;
            }
        }
        w
    }

    /// The entries of one Service as the objects now say.
    pub fn specs(&self, svc: &str) -> Vec<ServiceSpec> {
        let Some(s) = self.services.get(svc) else {
            return Vec::new();
        };
        let slices: Vec<&EndpointSlice> = self
            .slices
            .get(svc)
            .map(|m| m.values().collect())
            .unwrap_or_default();
        translate::service(s, &slices)
    }

    /// Every other node as a remote.
    pub fn remotes(&self) -> Vec<podpath_proto::RemoteSpec> {
        self.nodes
            .values()
            .filter(|n| n.metadata.name.as_deref() != Some(self.me.as_str()))
            .filter_map(translate::remote)
            .collect()
    }

    /// Applies `w` to the control service: per Service, the entries that changed.
    pub fn apply(&mut self, w: &Work, node: &mut Node, log: &dyn Fn(&str)) -> Result<(), String> {
        let keys: BTreeSet<String> = if w.all_services {
            self.services
                .keys()
                .chain(self.applied.keys())
                .cloned()
                .collect()
        } else {
            w.services.clone()
        };
        // The changed entries of every touched Service, sent as one batch.
        let mut reqs = Vec::new();
        let mut next = Vec::new();
        for k in &keys {
            let new = self.specs(k);
            let old = self.applied.get(k).map_or(&[][..], Vec::as_slice);
            for o in old.iter().filter(|o| !new.iter().any(|n| n.name == o.name)) {
                reqs.push(Request::ServiceDel {
                    name: o.name.clone(),
                });
            }
            for n in new.iter().filter(|n| !old.contains(n)) {
                reqs.push(Request::ServiceSet(n.clone()));
            }
            next.push((k.clone(), new));
        }
        let mut mine = BTreeSet::new();
        if w.all_services {
            // Entries this source made before (a restart of the agent) that are gone.
            mine = next
                .iter()
                .flat_map(|(_, v)| v.iter().map(|s| s.name.clone()))
                .collect();
            let deleting: BTreeSet<String> = reqs
                .iter()
                .filter_map(|r| match r {
                    Request::ServiceDel { name } => Some(name.clone()),
                    _ => None,
                })
                .collect();
            for s in node.state()?.services {
                if is_k8s_name(&s.name) && !mine.contains(&s.name) && !deleting.contains(&s.name) {
                    reqs.push(Request::ServiceDel { name: s.name });
                }
            }
        }
        node.batch(reqs)?;
        for (k, new) in next {
            if new.is_empty() {
                self.applied.remove(&k);
            } else {
                self.applied.insert(k, new);
            }
        }
        if w.all_services {
            log(&format!("Services in step: {} entries", mine.len()));
        }
        if w.nodes {
            let (a, d) = node.reconcile_with(&self.remotes(), translate::REMOTE_PREFIX)?;
            if a + d > 0 {
                log(&format!("nodes: {a} added or changed, {d} withdrawn"));
            }
        }
        Ok(())
    }
}

/// Names the Kubernetes source gives entries (the one rule, in proto).
fn is_k8s_name(n: &str) -> bool {
    podpath_proto::is_kubernetes_service_name(n)
}

async fn client(cfg: &Config) -> Result<Client, String> {
    match &cfg.kubernetes.url {
        // An explicit API server (tests, or a node without kubeconfig).
        Some(url) => {
            let uri = url
                .parse()
                .map_err(|e| format!("kubernetes.url {url:?}: {e}"))?;
            Client::try_from(kube::Config::new(uri)).map_err(|e| e.to_string())
        }
        // In a pod: the service account; else KUBECONFIG / ~/.kube/config.
        None => Client::try_default().await.map_err(|e| e.to_string()),
    }
}

/// This node's pod CIDR as the cluster assigned it (its Node's `spec.podCIDR`):
/// what a DaemonSet's init container writes into the node's configuration, since
/// the downward API does not expose it.
pub async fn own_pod_cidr(cfg: &Config) -> Result<String, String> {
    let me = cfg
        .kubernetes
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .ok_or("no node name: set NODE_NAME (the downward API's spec.nodeName) or kubernetes.node_name")?;
    let client = client(cfg).await?;
    let node = Api::<K8sNode>::all(client)
        .get(&me)
        .await
        .map_err(|e| format!("reading Node {me}: {e}"))?;
    node.spec.and_then(|s| s.pod_cidr).ok_or_else(|| {
        format!(
            "Node {me} has no spec.podCIDR (is the controller manager's --allocate-node-cidrs on?)"
        )
    })
}

pub async fn run(cfg: &Config, mut stop: tokio_watch::Receiver<bool>, log: &dyn Fn(&str)) {
    let me = cfg
        .kubernetes
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .unwrap_or_default();
    let mut backoff = std::time::Duration::from_millis(200);
    let client = loop {
        match client(cfg).await {
            Ok(c) => break c,
            Err(e) => log(&format!("no Kubernetes client: {e}; again in {backoff:?}")),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    };
    let wc = watcher::Config::default();
    let services = watcher::watcher(Api::<Service>::all(client.clone()), wc.clone())
        .default_backoff()
        .map(|e| e.map(|e| Change::Service(Box::new(e))));
    let slices = watcher::watcher(Api::<EndpointSlice>::all(client.clone()), wc.clone())
        .default_backoff()
        .map(|e| e.map(|e| Change::Slice(Box::new(e))));
    let mut streams = vec![services.boxed(), slices.boxed()];
    if cfg.kubernetes.nodes {
        let nodes = watcher::watcher(Api::<K8sNode>::all(client), wc)
            .default_backoff()
            .map(|e| e.map(|e| Change::Node(Box::new(e))));
        streams.push(nodes.boxed());
    }
    let mut events = futures::stream::select_all(streams);
    let mut cluster = Cluster::new(&me);
    let mut node: Option<Node> = None;
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = stop.changed() => return,
        };
        let Some(ev) = ev else { return };
        let change = match ev {
            Ok(c) => c,
            Err(e) => {
                log(&format!(
                    "watch error (the watcher retries, relisting when needed): {e}"
                ));
                continue;
            }
        };
        let work = cluster.take(change);
        if work == Work::default() {
            continue;
        }
        // The control service may restart: reconnect and redo the whole state.
        let n = match node.as_mut() {
            Some(n) => n,
            None => match Node::connect(&cfg.agent.control_socket) {
                Ok(n) => node.insert(n),
                Err(e) => {
                    log(&format!("control service: {e}"));
                    continue;
                }
            },
        };
        if let Err(e) = cluster.apply(&work, n, log) {
            log(&format!(
                "control service: {e}; the next change applies everything again"
            ));
            node = None;
            cluster.applied.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ip: &str) -> Service {
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": name, "namespace": "d"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}),
        )
        .unwrap()
    }
    fn slice(name: &str, svc: &str, ip: &str) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({"addressType": "IPv4",
            "metadata": {"name": name, "namespace": "d", "labels": {"kubernetes.io/service-name": svc}},
            "ports": [{"port": 8080}], "endpoints": [{"addresses": [ip]}]}))
        .unwrap()
    }

    #[test]
    fn a_change_touches_its_service_only_and_a_relist_replaces_the_kind() {
        let mut c = Cluster::new("n1");
        for e in [
            Event::Init,
            Event::InitApply(svc("a", "10.96.0.1")),
            Event::InitApply(svc("b", "10.96.0.2")),
            Event::InitDone,
        ] {
            c.take(Change::Service(Box::new(e)));
        }
        let w = c.take(Change::Slice(Box::new(Event::Apply(slice(
            "a-1",
            "a",
            "10.244.0.5",
        )))));
        assert_eq!(
            w.services.iter().collect::<Vec<_>>(),
            ["d/a"],
            "only a's entries are recomputed"
        );
        assert_eq!(c.specs("d/a")[0].endpoints[0].ip, "10.244.0.5");
        // The slice moves to b (its label changed): both are touched.
        let w = c.take(Change::Slice(Box::new(Event::Apply(slice(
            "a-1",
            "b",
            "10.244.0.5",
        )))));
        assert_eq!(w.services.len(), 2);
        assert!(c.specs("d/a")[0].endpoints.is_empty());
        // A relist without b: b is gone after InitDone, not before.
        c.take(Change::Service(Box::new(Event::Init)));
        c.take(Change::Service(Box::new(Event::InitApply(svc(
            "a",
            "10.96.0.1",
        )))));
        assert_eq!(c.specs("d/b").len(), 1, "still there while the relist runs");
        let w = c.take(Change::Service(Box::new(Event::InitDone)));
        assert!(w.all_services);
        assert!(c.specs("d/b").is_empty());
        assert!(is_k8s_name("d/a:80/tcp") && !is_k8s_name("web") && !is_k8s_name("d/a:http"));
    }
}

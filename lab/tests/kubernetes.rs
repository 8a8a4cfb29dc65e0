//! The agent's Kubernetes API source against a fake API server (no real one can run
//! here): kube-rs's own HTTP client talks to a server in this test that answers
//! lists and streams watches as the API server does (newline-delimited events,
//! BOOKMARKs, a 410 Gone that forces a relist, a line of bad JSON), fed with the
//! objects in `fixtures/k8s`. End to end on the lab: a pod reaches the Service whose
//! endpoints arrive this way, and follows them as they change.
mod common;
use common::*;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podpath_lab::Lab;
use serde_json::{json, Value};

#[derive(Default)]
struct Kind {
    items: BTreeMap<String, Value>,
    watchers: Vec<Sender<Option<String>>>,
}

/// The fake API server: lists and watches of Services and EndpointSlices.
#[derive(Clone, Default)]
struct Fake {
    kinds: Arc<Mutex<HashMap<&'static str, Kind>>>,
    rv: Arc<Mutex<u64>>,
    requests: Arc<Mutex<Vec<String>>>,
}

const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const NODES: &str = "/api/v1/nodes/";

impl Fake {
    fn start(&self) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = self.clone();
        std::thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                let me = me.clone();
                std::thread::spawn(move || me.serve(s));
            }
        });
        port
    }

    fn next_rv(&self) -> u64 {
        let mut rv = self.rv.lock().unwrap();
        *rv += 1;
        *rv
    }

    fn serve(&self, mut s: TcpStream) {
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        if r.read_line(&mut line).is_err() {
            return;
        }
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                break;
            }
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        self.requests.lock().unwrap().push(target.clone());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        // GET of one Node (the DaemonSet's init container asks for its own).
        if let Some(name) = path.strip_prefix(NODES) {
            let node = self
                .kinds
                .lock()
                .unwrap()
                .entry(NODES)
                .or_default()
                .items
                .get(name)
                .cloned();
            let (status, body) = match node {
                Some(n) => ("200 OK", n.to_string()),
                None => (
                    "404 Not Found",
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "message": format!("nodes \"{name}\" not found"), "reason": "NotFound", "code": 404})
                    .to_string(),
                ),
            };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            return;
        }
        let kind = match path {
            SERVICES => SERVICES,
            SLICES => SLICES,
            _ => {
                let _ = s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return;
            }
        };
        if query.split('&').any(|q| q == "watch=true") {
            let (tx, rx) = channel();
            self.kinds
                .lock()
                .unwrap()
                .entry(kind)
                .or_default()
                .watchers
                .push(tx);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
            stream_events(s, rx);
            return;
        }
        let rv = *self.rv.lock().unwrap();
        let items: Vec<Value> = self
            .kinds
            .lock()
            .unwrap()
            .entry(kind)
            .or_default()
            .items
            .values()
            .cloned()
            .collect();
        let (api, list) = if kind == SERVICES {
            ("v1", "ServiceList")
        } else {
            ("discovery.k8s.io/v1", "EndpointSliceList")
        };
        let body = json!({"apiVersion": api, "kind": list, "metadata": {"resourceVersion": rv.to_string()}, "items": items}).to_string();
        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    }

    fn send(&self, kind: &'static str, line: Option<String>) {
        let mut k = self.kinds.lock().unwrap();
        let k = k.entry(kind).or_default();
        k.watchers.retain(|w| w.send(line.clone()).is_ok());
        if line.is_none() {
            k.watchers.clear();
        }
    }

    /// ADDED or MODIFIED, with a new resourceVersion.
    fn apply(&self, kind: &'static str, mut obj: Value) {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = format!(
            "{}/{}",
            obj["metadata"]["namespace"].as_str().unwrap(),
            obj["metadata"]["name"].as_str().unwrap()
        );
        let existed = self
            .kinds
            .lock()
            .unwrap()
            .entry(kind)
            .or_default()
            .items
            .insert(key, obj.clone())
            .is_some();
        let t = if existed { "MODIFIED" } else { "ADDED" };
        self.send(kind, Some(json!({"type": t, "object": obj}).to_string()));
    }

    fn delete(&self, kind: &'static str, key: &str) {
        let rv = self.next_rv();
        let obj = self
            .kinds
            .lock()
            .unwrap()
            .entry(kind)
            .or_default()
            .items
            .remove(key);
        if let Some(mut obj) = obj {
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            self.send(
                kind,
                Some(json!({"type": "DELETED", "object": obj}).to_string()),
            );
        }
    }

    /// Changes an object without telling the watchers (a change the watch missed,
    /// found by the relist after a 410).
    fn change_quietly(&self, kind: &'static str, obj: Value) {
        let rv = self.next_rv();
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = format!(
            "{}/{}",
            obj["metadata"]["namespace"].as_str().unwrap(),
            obj["metadata"]["name"].as_str().unwrap()
        );
        self.kinds
            .lock()
            .unwrap()
            .entry(kind)
            .or_default()
            .items
            .insert(key, obj);
    }

    /// The watch's resourceVersion is too old: 410 Gone, then the stream ends.
    fn expire(&self, kind: &'static str) {
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}});
        self.send(kind, Some(gone.to_string()));
        self.send(kind, None);
    }

    fn watches(&self, kind: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with(kind) && r.contains("watch=true"))
            .count()
    }
}

fn stream_events(mut s: TcpStream, rx: Receiver<Option<String>>) {
    // Bounded: a watch lives at most a minute here.
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < end {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(Some(line)) => {
                let data = format!("{line}\n");
                if write!(s, "{:x}\r\n{data}\r\n", data.len()).is_err() {
                    return;
                }
            }
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
}

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/k8s")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn slice_to(ip: &str) -> Value {
    let mut s = fixture("endpointslice-web.json");
    s["endpoints"][0]["addresses"] = json!([ip]);
    s
}

struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The endpoints of shop/web:80/tcp in the node's control service.
fn web_endpoints(sock: &Path) -> Option<Vec<String>> {
    let (_, out, _) = ctl(sock, &["--json", "state"]);
    let v: Value = serde_json::from_str(&out).ok()?;
    let s = v["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "shop/web:80/tcp")?
        .clone();
    Some(
        s["endpoints"]
            .as_array()?
            .iter()
            .filter_map(|e| e["ip"].as_str().map(String::from))
            .collect(),
    )
}

/// One field of shop/web:80/tcp in the node's control service.
fn web_field(sock: &Path, field: &str) -> Value {
    let (_, out, _) = ctl(sock, &["--json", "state"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_default();
    v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "shop/web:80/tcp"))
        .map_or(Value::Null, |s| s[field].clone())
}

/// Which endpoint answers a connection to the Service from `ns`.
fn who_answers(ns: &str) -> Option<String> {
    let (ok, out) = run_in(
        ns,
        &bin(),
        &["whoami-ask", "--to", "10.96.0.50:80", "--count", "1"],
    );
    if !ok {
        return None;
    }
    out.split_whitespace().next().map(String::from)
}

#[test]
fn services_and_endpoint_slices_from_the_api_reach_the_dataplane() {
    let lab = Lab::up(&options("k")).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let (e1, e2, e3) = (n2.pods[0].clone(), n2.pods[1].clone(), n1.pods[1].clone());
    let _srv = Background::in_each(
        &[e1.netns.as_str(), e2.netns.as_str(), e3.netns.as_str()],
        &[
            "whoami-serve",
            "--port",
            "8080",
            "--count",
            "1000",
            "--seconds",
            "60",
        ],
    );
    let fake = Fake::default();
    fake.apply(SERVICES, fixture("service-web.json"));
    fake.apply(SLICES, slice_to(&e1.ip));
    let port = fake.start();
    let dir = std::env::temp_dir().join(format!("podpath-k8s-{}", lab.state.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("agent.toml");
    std::fs::write(
        &conf,
        format!(
            "[agent]\ncontrol_socket = \"{}\"\nsource = \"kubernetes\"\n\n[kubernetes]\nurl = \"http://127.0.0.1:{port}\"\nnode_name = \"node1\"\n",
            n1.control_socket.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let _agent = Agent(
        Command::new(Path::new(&bin()).with_file_name("podpath-agent"))
            .arg("--config")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("podpath-agent"),
    );
    let agent_log = || std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();

    // The list: the Service with one endpoint, and traffic to it.
    assert!(
        wait_until(Duration::from_secs(15), || web_endpoints(
            &n1.control_socket
        ) == Some(vec![e1.ip.clone()])),
        "the Service from the list: {:?}\n{}",
        web_endpoints(&n1.control_socket),
        agent_log()
    );
    assert_eq!(
        who_answers(&n1.pods[0].netns).as_deref(),
        Some(e1.ip.as_str())
    );

    // A watch event moves the endpoint.
    assert!(wait_until(Duration::from_secs(5), || fake.watches(SLICES) > 0));
    fake.apply(SLICES, slice_to(&e2.ip));
    assert!(
        wait_until(Duration::from_secs(5), || web_endpoints(&n1.control_socket)
            == Some(vec![e2.ip.clone()])),
        "MODIFIED EndpointSlice applied: {:?}",
        web_endpoints(&n1.control_socket)
    );
    assert_eq!(
        who_answers(&n1.pods[0].netns).as_deref(),
        Some(e2.ip.as_str())
    );

    // A BOOKMARK and a line of bad JSON on the Services watch: the agent keeps
    // what is true, and the next event on the stream still counts.
    fake.send(SERVICES, Some(json!({"type": "BOOKMARK", "object": {"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": "5000"}}}).to_string()));
    fake.send(
        SERVICES,
        Some("{\"type\": \"MODIFIED\", \"object\": {nonsense".into()),
    );
    let mut sticky = fixture("service-web.json");
    sticky["spec"]["sessionAffinity"] = json!("ClientIP");
    sticky["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 30}});
    fake.apply(SERVICES, sticky);
    assert!(
        wait_until(Duration::from_secs(10), || web_field(
            &n1.control_socket,
            "affinity_timeout"
        ) == json!(30)),
        "the change after the bad line applied: {}",
        agent_log()
    );
    assert!(
        agent_log().contains("watch error"),
        "the bad line was reported"
    );
    assert_eq!(
        web_endpoints(&n1.control_socket),
        Some(vec![e2.ip.clone()]),
        "nothing lost"
    );

    // 410 Gone on the slices: the relist finds a change the watch never sent.
    fake.change_quietly(SLICES, slice_to(&e3.ip));
    fake.expire(SLICES);
    assert!(
        wait_until(Duration::from_secs(10), || web_endpoints(
            &n1.control_socket
        ) == Some(vec![e3.ip.clone()])),
        "the relist after 410 applied: {:?}\n{}",
        web_endpoints(&n1.control_socket),
        agent_log()
    );
    assert_eq!(
        who_answers(&n1.pods[0].netns).as_deref(),
        Some(e3.ip.as_str())
    );

    // DELETED: the Service is gone from the node.
    fake.delete(SERVICES, "shop/web");
    assert!(
        wait_until(Duration::from_secs(5), || web_endpoints(&n1.control_socket)
            .is_none()),
        "the deleted Service was withdrawn"
    );
    assert_eq!(who_answers(&n1.pods[0].netns), None);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The DaemonSet's init container learns the node's pod CIDR from its Node object
/// (`podpath-agent --print-pod-cidr`); a Node without one, or none at all, is a
/// clear error and a non-zero exit.
#[test]
fn the_agent_prints_its_nodes_pod_cidr_for_the_daemonset() {
    let fake = Fake::default();
    let put = |name: &str, node: Value| {
        let mut k = fake.kinds.lock().unwrap();
        k.entry(NODES).or_default().items.insert(name.into(), node);
    };
    let mut node = fixture("node-node7.json");
    put("node7", node.clone());
    node["metadata"]["name"] = json!("node8");
    node["spec"].as_object_mut().unwrap().remove("podCIDR");
    node["spec"].as_object_mut().unwrap().remove("podCIDRs");
    put("node8", node);
    let port = fake.start();
    let dir = std::env::temp_dir().join(format!("podpath-k8s-cidr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("agent.toml");
    std::fs::write(
        &conf,
        format!(
            "[agent]\nsource = \"kubernetes\"\n\n[kubernetes]\nurl = \"http://127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let run = |node: &str| {
        Command::new(Path::new(&bin()).with_file_name("podpath-agent"))
            .args(["--print-pod-cidr", "--config"])
            .arg(&conf)
            .env("NODE_NAME", node)
            .output()
            .expect("podpath-agent")
    };
    let o = run("node7");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "10.244.7.0/24");
    let o = run("node8");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("Node node8 has no spec.podCIDR"),
        "{err}"
    );
    let o = run("node9");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("reading Node node9"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! podpath-cni driven exactly as the CNI spec says (command and container in the
//! environment, the configuration on stdin), inside a lab node's namespace, against
//! the node's real control service and dataplane; pods it attaches reach pods on the
//! other node. Debian's reference plugins (bridge + host-local) are the oracle for
//! the result's shape. Namespaces and files are the test's own and removed after it.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use podpath_lab::{net, Lab};
use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());

fn cni_bin() -> PathBuf {
    Path::new(&bin()).with_file_name("podpath-cni")
}

/// What a plugin run gave: exit success, stdout as JSON (Null when empty), stderr.
struct Run {
    ok: bool,
    out: Value,
    err: String,
}

/// Runs `plugin` in namespace `ns` with only the spec's environment, `conf` on stdin.
fn plugin(ns: &str, plugin: &Path, cmd: &str, id: &str, netns: &str, conf: &Value) -> Run {
    let (ok, text, err) =
        podpath_lab::cluster::run_cni(plugin, ns, cmd, id, netns, &conf.to_string())
            .expect("run the plugin");
    Run {
        ok,
        out: if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text:?}"))
        },
        err,
    }
}

/// Pod namespaces of this test, removed when dropped.
struct Netns(Vec<String>);
impl Netns {
    fn add(&mut self, name: String) -> String {
        net::ip(&["netns", "add", &name]).expect("ip netns add");
        self.0.push(name.clone());
        format!("/run/netns/{name}")
    }
}
impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = net::ip(&["netns", "del", n]);
        }
    }
}

/// Every object's keys and every value's JSON type, recursively: a result's shape.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().take(1).map(shape).collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => json!("null"),
    }
}

fn ports(sock: &Path) -> Vec<String> {
    let (_, out, _) = ctl(sock, &["--json", "port", "list"]);
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_cni_protocol_attaches_pods_that_reach_the_other_node() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(&options("c")).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let mut pods = Netns(Vec::new());
    let data = tempdir("cni-data");
    let conf = |version: &str, extra: Value| {
        let mut c = json!({
            "cniVersion": version,
            "name": format!("podpath-{}", lab.state.prefix),
            "type": "podpath-cni",
            "controlSocket": n1.control_socket,
            "dataDir": data,
            "mtu": 1450,
            // Below .100 are the lab's own pods.
            "ipam": {"type": "podpath", "rangeStart": "10.244.0.100"},
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let cni = cni_bin();
    let c1 = pods.add(format!("{}-cni1", lab.state.prefix));

    // ADD: an af_packet pod with an address from node 1's pod CIDR.
    let add = plugin(&n1.netns, &cni, "ADD", "c1", &c1, &conf("1.0.0", json!({})));
    assert!(add.ok, "ADD: {}\n{}", add.out, add.err);
    let r = &add.out;
    assert_eq!(r["cniVersion"], "1.0.0");
    let addr = r["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(
        addr.starts_with("10.244.0.") && addr.ends_with("/24"),
        "{addr}"
    );
    assert_eq!(r["ips"][0]["gateway"], n1.gateway.as_str());
    assert_eq!(r["ips"][0]["interface"], 1);
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(r["interfaces"][1]["sandbox"], c1.as_str());
    assert_eq!(
        r["routes"][0],
        json!({"dst": "0.0.0.0/0", "gw": n1.gateway})
    );
    let host = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(
        ports(&n1.control_socket).contains(&host),
        "port {host} attached"
    );
    let (_, state, _) = ctl(&n1.control_socket, &["state"]);
    assert!(
        state
            .lines()
            .any(|l| l.starts_with(&host) && l.contains(" cni ")),
        "podpathctl state says the port came from the CNI plugin:\n{state}"
    );
    let ip = addr.split('/').next().unwrap().to_string();
    let c1_name = pods.0[0].clone();
    assert!(
        ping(&c1_name, &n2.pods[0].ip),
        "the CNI pod reaches a pod on node 2"
    );
    assert!(ping(&n2.pods[1].netns, &ip), "and is reached from it");
    // TCP both ways, checked byte for byte: the veth's offloads must be off (half-
    // finished checksums would reach the dataplane through af_packet).
    let (ok, out) = tcp_transfer(&c1_name, &n2.pods[0].netns, &n2.pods[0].ip, 7301, 1 << 20);
    assert!(ok, "TCP from the CNI pod: {out}");
    let (ok, out) = tcp_transfer(&n2.pods[0].netns, &c1_name, &ip, 7302, 1 << 20);
    assert!(ok, "TCP to the CNI pod: {out}");
    // CHECK with the result as prevResult.
    let chk = plugin(
        &n1.netns,
        &cni,
        "CHECK",
        "c1",
        &c1,
        &conf("1.0.0", json!({"prevResult": r})),
    );
    assert!(
        chk.ok && chk.out.is_null(),
        "CHECK: {}\n{}",
        chk.out,
        chk.err
    );
    // A CHECK that must fail: a prevResult address the pod does not have.
    let mut wrong = r.clone();
    wrong["ips"][0]["address"] = json!("10.244.0.250/24");
    let chk = plugin(
        &n1.netns,
        &cni,
        "CHECK",
        "c1",
        &c1,
        &conf("1.0.0", json!({"prevResult": wrong})),
    );
    assert!(
        !chk.ok && chk.out["code"].as_u64().unwrap() >= 100,
        "{}",
        chk.out
    );
    // ADD again (a runtime retry): the same address.
    let again = plugin(&n1.netns, &cni, "ADD", "c1", &c1, &conf("1.0.0", json!({})));
    assert!(again.ok, "{}\n{}", again.out, again.err);
    assert_eq!(again.out["ips"][0]["address"], addr.as_str());

    // A tap pod (the dataplane makes the tap inside the pod), in 0.4.0's shape.
    let c2 = pods.add(format!("{}-cni2", lab.state.prefix));
    let tap = plugin(
        &n1.netns,
        &cni,
        "ADD",
        "c2",
        &c2,
        &conf("0.4.0", json!({"attach": "tap"})),
    );
    assert!(tap.ok, "tap ADD: {}\n{}", tap.out, tap.err);
    assert_eq!(tap.out["ips"][0]["version"], "4");
    assert_eq!(
        tap.out["interfaces"].as_array().unwrap().len(),
        1,
        "only the pod's interface"
    );
    assert!(
        ping(&pods.0[1], &n2.pods[0].ip),
        "the tap pod reaches node 2"
    );
    let (ok, out) = tcp_transfer(&pods.0[1], &n2.pods[0].netns, &n2.pods[0].ip, 7303, 1 << 20);
    assert!(ok, "TCP from the tap pod: {out}");

    // DEL: idempotent, without a netns, without prevResult.
    for (id, ns) in [
        ("c1", c1.as_str()),
        ("c1", ""),
        ("c2", c2.as_str()),
        ("c2", ""),
    ] {
        let d = plugin(&n1.netns, &cni, "DEL", id, ns, &conf("1.0.0", json!({})));
        assert!(
            d.ok && d.out.is_null(),
            "DEL {id} netns {ns:?}: {}\n{}",
            d.out,
            d.err
        );
    }
    assert!(!ports(&n1.control_socket).contains(&host), "port detached");
    assert!(
        net::ip_in(&n1.netns, &["link", "show", &host]).is_err(),
        "veth gone"
    );
    assert!(!ping(&c1_name, &n2.pods[0].ip), "no path after DEL");

    // Errors: bad config is code 7, an unknown version code 1, no command code 4;
    // the error JSON goes to stdout.
    let bad = plugin(
        &n1.netns,
        &cni,
        "ADD",
        "c3",
        &c1,
        &conf("1.0.0", json!({"mtu": "big"})),
    );
    assert!(!bad.ok);
    assert_eq!(bad.out["code"], 7);
    assert_eq!(bad.out["cniVersion"], "1.0.0");
    assert!(bad.out["msg"].as_str().unwrap().contains("invalid"));
    let old = plugin(&n1.netns, &cni, "ADD", "c3", &c1, &conf("0.2.0", json!({})));
    assert_eq!((old.ok, old.out["code"].clone()), (false, json!(1)));
    let none = plugin(&n1.netns, &cni, "", "c3", &c1, &conf("1.0.0", json!({})));
    assert_eq!(none.out["code"], 4);
    let v = plugin(
        &n1.netns,
        &cni,
        "VERSION",
        "",
        "",
        &json!({"cniVersion": "1.0.0"}),
    );
    assert_eq!(
        v.out,
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    );

    // STATUS (1.1.0): available; with no control service, code 50.
    let st = plugin(&n1.netns, &cni, "STATUS", "", "", &conf("1.1.0", json!({})));
    assert!(st.ok, "{}\n{}", st.out, st.err);
    let st = plugin(
        &n1.netns,
        &cni,
        "STATUS",
        "",
        "",
        &conf("1.1.0", json!({"controlSocket": "/nonexistent.sock"})),
    );
    assert_eq!(st.out["code"], 50);

    // Concurrent ADDs for six containers: six addresses, six ports.
    let ns: Vec<String> = (0..6)
        .map(|k| pods.add(format!("{}-cc{k}", lab.state.prefix)))
        .collect();
    let conf11 = conf("1.1.0", json!({}));
    let results: Vec<Run> = std::thread::scope(|s| {
        let hs: Vec<_> = ns
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let (cni, conf11, node_ns) = (&cni, &conf11, &n1.netns);
                s.spawn(move || plugin(node_ns, cni, "ADD", &format!("cc{k}"), n, conf11))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs: Vec<String> = results
        .iter()
        .map(|r| {
            assert!(r.ok, "concurrent ADD: {}\n{}", r.out, r.err);
            r.out["ips"][0]["address"].as_str().unwrap().to_string()
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 6, "distinct addresses");
    // GC keeps only the attachments the runtime still knows (cc0, cc1).
    let gc = plugin(
        &n1.netns,
        &cni,
        "GC",
        "",
        "",
        &conf(
            "1.1.0",
            json!({"cni.dev/valid-attachments": [{"containerID": "cc0", "ifname": "eth0"}, {"containerID": "cc1", "ifname": "eth0"}]}),
        ),
    );
    assert!(gc.ok, "GC: {}\n{}", gc.out, gc.err);
    let left: Vec<String> = ports(&n1.control_socket)
        .into_iter()
        .filter(|p| p.starts_with("pp"))
        .collect();
    assert_eq!(left.len(), 2, "GC removed the other four ports: {left:?}");
    assert!(ping(&pods.0[2], &n2.pods[0].ip), "cc0 still works");
    for (k, n) in ns.iter().enumerate().take(2) {
        let d = plugin(&n1.netns, &cni, "DEL", &format!("cc{k}"), n, &conf11);
        assert!(d.ok, "{}", d.err);
    }
    assert!(ports(&n1.control_socket)
        .iter()
        .all(|p| !p.starts_with("pp")));
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn results_have_the_reference_plugins_shape() {
    // The reference bridge + host-local in a namespace of ours (they make a bridge
    // and a veth there), and podpath-cni on a lab node: same keys, same types.
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(&options("r")).expect("lab up");
    let n1 = lab.state.nodes[0].clone();
    let mut nss = Netns(Vec::new());
    let host = format!("{}-refhost", lab.state.prefix);
    nss.add(host.clone());
    let pod_ref = nss.add(format!("{}-refpod", lab.state.prefix));
    let pod_pp = nss.add(format!("{}-pppod", lab.state.prefix));
    let data = tempdir("cni-ref");
    let reference = json!({
        "cniVersion": "1.0.0",
        "name": format!("ref-{}", lab.state.prefix),
        "type": "bridge",
        "bridge": "cni-ref",
        "isGateway": true,
        "ipam": {"type": "host-local", "subnet": "10.250.0.0/24", "dataDir": data.join("hl"), "routes": [{"dst": "0.0.0.0/0", "gw": "10.250.0.1"}]},
    });
    let r = plugin(
        &host,
        Path::new("/usr/lib/cni/bridge"),
        "ADD",
        "ref1",
        &pod_ref,
        &reference,
    );
    assert!(
        r.ok,
        "reference ADD (apt-get install containernetworking-plugins): {}\n{}",
        r.out, r.err
    );
    let ours = json!({
        "cniVersion": "1.0.0",
        "name": format!("pp-{}", lab.state.prefix),
        "type": "podpath-cni",
        "controlSocket": n1.control_socket,
        "dataDir": data.join("pp"),
        "ipam": {"type": "podpath", "rangeStart": "10.244.0.100"},
    });
    let p = plugin(&n1.netns, &cni_bin(), "ADD", "pp1", &pod_pp, &ours);
    assert!(p.ok, "{}\n{}", p.out, p.err);
    // The bridge lists three interfaces (bridge, host veth, pod); we list two.
    let (mut a, mut b) = (shape(&r.out), shape(&p.out));
    for v in [&mut a, &mut b] {
        v.as_object_mut().unwrap().remove("dns");
    }
    assert_eq!(
        b, a,
        "result shape\nreference: {}\npodpath:   {}",
        r.out, p.out
    );
    assert_eq!(r.out["interfaces"][2]["sandbox"], pod_ref.as_str());
    assert_eq!(p.out["interfaces"][1]["sandbox"], pod_pp.as_str());
    // Both DEL cleanly, twice.
    for _ in 0..2 {
        assert!(
            plugin(
                &host,
                Path::new("/usr/lib/cni/bridge"),
                "DEL",
                "ref1",
                &pod_ref,
                &reference
            )
            .ok
        );
        assert!(plugin(&n1.netns, &cni_bin(), "DEL", "pp1", &pod_pp, &ours).ok);
    }
    // Delegation: podpath-cni with host-local as its IPAM plugin.
    let delegated = json!({
        "cniVersion": "1.0.0",
        "name": format!("ppd-{}", lab.state.prefix),
        "type": "podpath-cni",
        "controlSocket": n1.control_socket,
        "ipam": {"type": "host-local", "subnet": "10.244.0.0/24", "rangeStart": "10.244.0.200", "dataDir": data.join("hl2")},
    });
    let d = plugin(&n1.netns, &cni_bin(), "ADD", "pp2", &pod_pp, &delegated);
    assert!(d.ok, "{}\n{}", d.out, d.err);
    assert_eq!(d.out["ips"][0]["address"], "10.244.0.200/24");
    assert!(
        ping(&nss.0[2], &n1.gateway),
        "the delegated pod reaches its gateway"
    );
    assert!(plugin(&n1.netns, &cni_bin(), "DEL", "pp2", &pod_pp, &delegated).ok);
    assert!(
        !data
            .join("hl2")
            .join(format!("ppd-{}", lab.state.prefix))
            .join("10.244.0.200")
            .exists(),
        "host-local released it"
    );
    let _ = std::fs::remove_dir_all(&data);
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("podpath-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

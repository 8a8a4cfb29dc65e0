//! Kubernetes Service semantics end to end, as kube-proxy has them: each test drives
//! a two-node lab through podpathctl and the control service, with real sockets in
//! the pods. Needs root; namespaces made and removed by the test.

mod common;
use common::*;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podpath_lab::{net, Lab};
use podpath_proto::ConntrackFilter;

static SERIAL: Mutex<()> = Mutex::new(());

/// `podpathctl --json service set ...` on node 1's control service; the generation
/// it says is in force.
fn service_set(lab: &Lab, args: &[&str]) -> u64 {
    service_set_on(lab, 0, args)
}

/// `service_set` on node `k`, with `--endpoint` for each of `eps`.
fn service_set_eps(lab: &Lab, k: usize, args: &[&str], eps: &[String]) -> u64 {
    let mut a = args.to_vec();
    for e in eps {
        a.extend(["--endpoint", e.as_str()]);
    }
    service_set_on(lab, k, &a)
}

/// `service_set` on node `k`'s control service.
fn service_set_on(lab: &Lab, k: usize, args: &[&str]) -> u64 {
    let n = &lab.state.nodes[k];
    let mut a = vec!["--json", "service", "set"];
    a.extend_from_slice(args);
    let (ok, out, err) = ctl(&n.control_socket, &a);
    assert!(ok, "service set {args:?}: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON answer");
    v["generation"]
        .as_u64()
        .expect("a generation in the answer")
}

fn udp_flows(lab: &Lab, vip: &str) -> Vec<podpath_proto::ConnInfo> {
    conntrack(
        &lab.state.nodes[0].control_socket,
        ConntrackFilter {
            proto: Some(17),
            addr: Some(vip.into()),
            port: None,
        },
    )
}

/// A change returns when every worker applies it, sweep included; an established
/// TCP connection to an endpoint that is removed keeps going (kube-proxy leaves TCP
/// entries alone), UDP entries to it are gone when the change returns.
#[test]
fn a_change_is_in_force_on_every_worker_when_it_returns_and_tcp_outlives_its_endpoint() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = options("k");
    o.external = false;
    o.workers = 2;
    let lab = Lab::up(&o).expect("lab up");
    let n1 = lab.state.nodes[0].clone();
    let (client, ep) = (n1.pods[0].clone(), n1.pods[1].clone());
    let ep_arg = format!("{}:8080", ep.ip);
    let g = service_set(
        &lab,
        &[
            "default/web",
            "--vip",
            "10.96.0.20",
            "--port",
            "80",
            "--endpoint",
            &ep_arg,
        ],
    );
    let s = stats(&n1.socket);
    assert_eq!(s.workers.len(), 2);
    for w in &s.workers {
        assert!(
            w.applied_generation >= g && w.settled_generation >= g,
            "worker {} runs generation {}/{} after `service set` answered {g}",
            w.id,
            w.applied_generation,
            w.settled_generation
        );
    }
    assert!(s.generation >= g);

    // A paced, byte-checked stream through the VIP.
    let recv = serve_in(&ep.netns, &["tcp-recv", "--port", "8080", "--seed", "5"]);
    let stop = std::env::temp_dir().join(format!("pp-keep-{}", std::process::id()));
    let _ = std::fs::remove_file(&stop);
    let send = net::command_in(&client.netns, &bin())
        .args([
            "tcp-send",
            "--to",
            "10.96.0.20:80",
            "--stop-file",
            &stop.display().to_string(),
            "--rate-mbps",
            "4",
            "--seed",
            "5",
            "--seconds",
            "20",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let established = || {
        conntrack(
            &n1.control_socket,
            ConntrackFilter {
                proto: Some(6),
                addr: Some("10.96.0.20".into()),
                port: Some(80),
            },
        )
        .iter()
        .any(|c| c.state.as_deref() == Some("ESTABLISHED"))
    };
    assert!(
        wait_until(Duration::from_secs(10), established),
        "the stream did not establish"
    );

    // A UDP flow to the same endpoint, answered.
    let dns_ep = format!("{}:5353", ep.ip);
    service_set(
        &lab,
        &[
            "default/dns",
            "--vip",
            "10.96.0.21",
            "--port",
            "53",
            "--protocol",
            "udp",
            "--endpoint",
            &dns_ep,
        ],
    );
    let answerer = Background::in_each(
        &[&ep.netns],
        &["udp-whoami-serve", "--port", "5353", "--seconds", "10"],
    );
    let (ok, out) = run_in(
        &client.netns,
        &bin(),
        &["udp-whoami-ask", "--to", "10.96.0.21:53", "--count", "3"],
    );
    assert!(ok && out.contains(&ep.ip), "{out}");
    assert_eq!(udp_flows(&lab, "10.96.0.21").len(), 1);

    // The endpoint goes from both Services. When `service set` returns, its UDP
    // entry is gone on every worker: no wait.
    service_set(
        &lab,
        &[
            "default/dns",
            "--vip",
            "10.96.0.21",
            "--port",
            "53",
            "--protocol",
            "udp",
        ],
    );
    let left = udp_flows(&lab, "10.96.0.21");
    assert!(
        left.is_empty(),
        "UDP entries to the removed endpoint: {left:?}"
    );
    let g = service_set(
        &lab,
        &["default/web", "--vip", "10.96.0.20", "--port", "80"],
    );
    assert!(stats(&n1.socket)
        .workers
        .iter()
        .all(|w| w.settled_generation >= g));
    drop(answerer);
    // The TCP stream keeps running for a while after its endpoint was removed.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(established(), "the TCP entry was removed with its endpoint");
    std::fs::write(&stop, b"").unwrap();
    let o = send.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&stop);
    assert!(
        o.status.success(),
        "the stream broke when its endpoint was removed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let r = recv.wait_with_output().unwrap();
    assert!(
        r.status.success(),
        "the receiver saw a short or corrupted stream: {}",
        String::from_utf8_lossy(&r.stdout)
    );

    // The whole Service is deleted under a stream: the connection lives on (with
    // two workers, its packets still reach the worker that owns it).
    service_set(
        &lab,
        &[
            "default/web",
            "--vip",
            "10.96.0.20",
            "--port",
            "80",
            "--endpoint",
            &ep_arg,
        ],
    );
    // Four streams, so that some cross between the workers (a flow's packets and
    // its owner are picked by different hashes).
    let recv = serve_in(
        &ep.netns,
        &[
            "tcp-recv",
            "--port",
            "8080",
            "--seed",
            "6",
            "--accept-seconds",
            "4",
        ],
    );
    let stop2 = std::env::temp_dir().join(format!("pp-keep2-{}", std::process::id()));
    let _ = std::fs::remove_file(&stop2);
    let senders: Vec<_> = (0..4)
        .map(|_| {
            net::command_in(&client.netns, &bin())
                .args([
                    "tcp-send",
                    "--to",
                    "10.96.0.20:80",
                    "--stop-file",
                    &stop2.display().to_string(),
                    "--rate-mbps",
                    "2",
                    "--seed",
                    "6",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let streams = || {
        conntrack(
            &n1.control_socket,
            ConntrackFilter {
                proto: Some(6),
                addr: Some("10.96.0.20".into()),
                port: Some(80),
            },
        )
        .iter()
        .filter(|c| c.state.as_deref() == Some("ESTABLISHED"))
        .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || streams() == 4),
        "four streams did not establish"
    );
    let (ok, _, err) = ctl(&n1.control_socket, &["service", "del", "default/web"]);
    assert!(ok, "{err}");
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&stop2, b"").unwrap();
    for (k, send) in senders.into_iter().enumerate() {
        let o = send.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "stream {k} broke when its Service was deleted: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let _ = std::fs::remove_file(&stop2);
    assert!(recv.wait_with_output().unwrap().status.success());

    // `conntrack list` prints conntrack -L lines on stdout, the trailer on stderr.
    let (ok, out, err) = ctl(&n1.control_socket, &["conntrack", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .all(|l| ["tcp ", "udp ", "icmp "].iter().any(|p| l.starts_with(p))),
        "stdout is not only flow lines:\n{out}"
    );
    assert!(
        err.contains("flow entries have been shown"),
        "no trailer on stderr: {err:?}"
    );
}

/// podpathctl talks to the control service unless told otherwise.
#[test]
fn podpathctl_defaults_to_the_control_service() {
    let o = std::process::Command::new(podpathctl())
        .arg("version")
        .env_remove("PODPATH_SOCKET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    if o.status.success() {
        // A control service runs on this machine: it answered as one.
        assert!(String::from_utf8_lossy(&o.stdout).contains("podpath-control"));
    } else {
        assert!(err.contains("/run/podpath/control.sock"), "{err}");
    }
    let o = std::process::Command::new(podpathctl())
        .args(["--dataplane", "version"])
        .env_remove("PODPATH_SOCKET")
        .output()
        .unwrap();
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("/run/podpath/dataplane.sock"), "{err}");
    }
}

/// whoami-serve on port 8080 in each pod (killed when dropped).
fn whoami(pods: &[&podpath_lab::topo::Pod]) -> Background {
    let ns: Vec<&str> = pods.iter().map(|p| p.netns.as_str()).collect();
    Background::in_each(
        &ns,
        &[
            "whoami-serve",
            "--port",
            "8080",
            "--count",
            "100",
            "--seconds",
            "40",
        ],
    )
}

/// One connection to `to` from `ns`: the address that answered.
fn who(ns: &str, to: &str) -> String {
    let (ok, out) = run_in(ns, &bin(), &["whoami-ask", "--to", to, "--count", "1"]);
    assert!(ok, "{out}");
    out.lines()
        .find_map(|l| l.strip_suffix(" 1"))
        .unwrap_or_else(|| panic!("no answer: {out}"))
        .to_owned()
}

/// ClientIP affinity holds to its timeout in milliseconds (not a second boundary),
/// and belongs to its ServicePort: a Service deleted and created again does not
/// inherit the old choices.
#[test]
fn affinity_is_exact_to_the_millisecond_and_dies_with_its_service() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = options("a");
    o.external = false;
    let lab = Lab::up(&o).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let client = n1.pods[0].clone();
    let eps = [&n1.pods[1], &n2.pods[0], &n2.pods[1]];
    let _servers = whoami(&eps);
    let ep_args: Vec<String> = eps.iter().map(|p| format!("{}:8080", p.ip)).collect();
    let args = [
        "default/sticky",
        "--vip",
        "10.96.0.30",
        "--port",
        "80",
        "--affinity",
        "1",
    ];
    service_set_eps(&lab, 0, &args, &ep_args);
    // Connections 400 ms apart: each within 1 s of the last, so all must reach the
    // first one's endpoint. (With whole-second expiry, the gaps that cross a second
    // boundary lose it.) A gap is measured from the start of one connection's run
    // to the end of the next one's: at least the time between their two picks. One
    // that a loaded machine stretched past 950 ms proves nothing and is not judged,
    // but most must be.
    let mut started = Instant::now();
    let first = who(&client.netns, "10.96.0.30:80");
    let mut judged = 0;
    for k in 1..12 {
        std::thread::sleep(Duration::from_millis(400));
        let this = Instant::now();
        let got = who(&client.netns, "10.96.0.30:80");
        let gap = started.elapsed();
        started = this;
        if gap < Duration::from_millis(950) {
            judged += 1;
            assert_eq!(
                got, first,
                "connection {k} ({gap:?} after the last began) lost affinity"
            );
        }
    }
    assert!(
        judged >= 6,
        "only {judged} of 11 gaps were under 950 ms: the machine is too loaded to judge"
    );

    // Deleted and created again, with the old endpoint nearly weightless: the new
    // Service picks by its own table, never by the deleted one's affinity.
    let (ok, _, err) = ctl(&n1.control_socket, &["service", "del", "default/sticky"]);
    assert!(ok, "{err}");
    let weighted: Vec<String> = eps
        .iter()
        .map(|p| {
            if p.ip == first {
                format!("{}:8080,w=1", p.ip)
            } else {
                format!("{}:8080,w=1000", p.ip)
            }
        })
        .collect();
    let args = [
        "default/sticky",
        "--vip",
        "10.96.0.30",
        "--port",
        "80",
        "--affinity",
        "60",
    ];
    service_set_eps(&lab, 0, &args, &weighted);
    let got = who(&client.netns, "10.96.0.30:80");
    assert_ne!(
        got, first,
        "the new Service inherited the deleted one's affinity (weight 1 of 2001)"
    );
    // And its own affinity holds.
    assert_eq!(who(&client.netns, "10.96.0.30:80"), got);
}

fn drop_count(sock: &std::path::Path, reason: &str) -> u64 {
    stats(sock)
        .drops
        .iter()
        .filter(|d| d.reason == reason)
        .map(|d| d.count)
        .sum()
}

/// Connection tracking as Linux does it: a UDP flow is ASSURED only when replied
/// and older than 2 s; segments with flags no connection carries are dropped and
/// change nothing; a full table refuses with its own reason and says so in the log.
#[test]
fn conntrack_follows_linux_on_udp_streams_invalid_flags_and_a_full_table() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = options("f");
    o.external = false;
    // Room for a handful of connections per worker.
    o.dataplane_extra = "[conntrack]\ncapacity = 16\n".into();
    let lab = Lab::up(&o).expect("lab up");
    let n1 = lab.state.nodes[0].clone();
    let (client, ep) = (n1.pods[0].clone(), n1.pods[1].clone());
    let udp_ep = format!("{}:5353", ep.ip);
    service_set(
        &lab,
        &[
            "default/dns",
            "--vip",
            "10.96.0.40",
            "--port",
            "53",
            "--protocol",
            "udp",
            "--endpoint",
            &udp_ep,
        ],
    );
    let tcp_ep = format!("{}:8080", ep.ip);
    service_set(
        &lab,
        &[
            "default/web",
            "--vip",
            "10.96.0.41",
            "--port",
            "80",
            "--endpoint",
            &tcp_ep,
        ],
    );
    let _answerer = Background::in_each(
        &[&ep.netns],
        &["udp-whoami-serve", "--port", "5353", "--seconds", "30"],
    );

    // One query, answered at once: replied, not assured, the 30 s timeout.
    let (ok, out) = run_in(
        &client.netns,
        &bin(),
        &["udp-whoami-ask", "--to", "10.96.0.40:53", "--count", "1"],
    );
    assert!(ok && out.contains(&ep.ip), "{out}");
    let q = udp_flows(&lab, "10.96.0.40");
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(
        q[0].seen_reply && !q[0].assured,
        "a single answered query: {q:?}"
    );
    assert!(q[0].timeout <= 30, "{q:?}");
    // A flow that goes on for 3 s (30 queries from one socket): assured, 120 s.
    let (ok, out) = run_in(
        &client.netns,
        &bin(),
        &[
            "udp-whoami-ask",
            "--to",
            "10.96.0.40:53",
            "--count",
            "30",
            "--interval-ms",
            "100",
        ],
    );
    assert!(ok, "{out}");
    let streams: Vec<_> = udp_flows(&lab, "10.96.0.40")
        .into_iter()
        .filter(|c| c.assured)
        .collect();
    assert_eq!(streams.len(), 1, "the 3 s flow is not assured");
    assert!(streams[0].timeout > 100, "{streams:?}");

    // An established stream; then segments with invalid flags on its tuple.
    let recv = serve_in(&ep.netns, &["tcp-recv", "--port", "8080", "--seed", "9"]);
    let stop = std::env::temp_dir().join(format!("pp-inval-{}", std::process::id()));
    let _ = std::fs::remove_file(&stop);
    let send = net::command_in(&client.netns, &bin())
        .args([
            "tcp-send",
            "--to",
            "10.96.0.41:80",
            "--stop-file",
            &stop.display().to_string(),
            "--rate-mbps",
            "2",
            "--seed",
            "9",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let web = || {
        conntrack(
            &n1.control_socket,
            ConntrackFilter {
                proto: Some(6),
                addr: Some("10.96.0.41".into()),
                port: None,
            },
        )
    };
    assert!(
        wait_until(Duration::from_secs(10), || web()
            .iter()
            .any(|c| c.state.as_deref() == Some("ESTABLISHED"))),
        "{:?}",
        web()
    );
    let sport = web()[0].orig.2.to_string();
    let before = drop_count(&n1.socket, "ct-invalid");
    for flags in ["SF", "SR", "F", "none", "SFA"] {
        let (ok, out) = run_in(
            &client.netns,
            &bin(),
            &[
                "tcp-raw",
                "--to",
                "10.96.0.41:80",
                "--sport",
                &sport,
                "--flags",
                flags,
            ],
        );
        assert!(ok, "{out}");
    }
    assert!(
        wait_until(Duration::from_secs(3), || drop_count(
            &n1.socket,
            "ct-invalid"
        ) >= before + 5),
        "ct-invalid counted {} of 5",
        drop_count(&n1.socket, "ct-invalid") - before
    );
    let now = web();
    assert_eq!(
        now[0].state.as_deref(),
        Some("ESTABLISHED"),
        "invalid segments changed the state: {now:?}"
    );
    std::fs::write(&stop, b"").unwrap();
    let o = send.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&stop);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(recv.wait_with_output().unwrap().status.success());

    // Fill the table with assured flows: two are there (the 3 s UDP flow and the
    // closed stream in TIME_WAIT), fourteen 3 s flows from their own sockets make
    // sixteen (the unassured single query is evicted for them). Then a new
    // connection is refused as ct-table-full, not as a NAT port shortage, and the
    // log says so.
    let askers: Vec<_> = (0..14)
        .map(|_| {
            net::command_in(&client.netns, &bin())
                .args([
                    "udp-whoami-ask",
                    "--to",
                    "10.96.0.40:53",
                    "--count",
                    "30",
                    "--interval-ms",
                    "100",
                ])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut a in askers {
        let _ = a.wait();
    }
    let (_, out) = run_in(
        &client.netns,
        &bin(),
        &["udp-whoami-ask", "--to", "10.96.0.40:53", "--count", "1"],
    );
    let full = drop_count(&n1.socket, "ct-table-full");
    assert!(full > 0, "no ct-table-full drop with a full table: {out}");
    assert_eq!(drop_count(&n1.socket, "snat-ports-exhausted"), 0);
    assert!(
        wait_until(Duration::from_secs(3), || std::fs::read_to_string(&n1.log)
            .unwrap_or_default()
            .contains("connection table full")),
        "no log line about the full table"
    );
}

/// Connections from `ns` to `to`, `n` of them: how many each address answered, and
/// how many failed (and how).
fn spread(ns: &str, to: &str, n: u32) -> (std::collections::BTreeMap<String, u32>, String) {
    let (_, out) = run_in(
        ns,
        &bin(),
        &["whoami-ask", "--to", to, "--count", &n.to_string()],
    );
    let mut m = std::collections::BTreeMap::new();
    for l in out.lines() {
        if let Some((a, c)) = l.rsplit_once(' ') {
            if let (Ok(c), true) = (c.parse::<u32>(), a.contains('.')) {
                m.insert(a.to_owned(), c);
            }
        }
    }
    (m, out)
}

/// internalTrafficPolicy Local: each node's pods reach only that node's endpoints;
/// where there is none, connections fail silently (no reset), counted.
/// EndpointSlice conditions: ready endpoints take new connections; when none is
/// ready, the serving terminating ones do; with nothing serving, a reset.
#[test]
fn internal_traffic_policy_local_and_endpoint_conditions() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = options("l");
    o.external = false;
    let lab = Lab::up(&o).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let (c1, e1, c2, e2) = (&n1.pods[0], &n1.pods[1], &n2.pods[0], &n2.pods[1]);
    let _servers = whoami(&[e1, e2]);
    let both = [format!("{}:8080", e1.ip), format!("{}:8080", e2.ip)];
    let local = [
        "default/local",
        "--vip",
        "10.96.0.50",
        "--port",
        "80",
        "--internal-traffic-policy",
        "Local",
    ];
    for k in 0..2 {
        service_set_eps(&lab, k, &local, &both);
    }
    let (m, out) = spread(&c1.netns, "10.96.0.50:80", 10);
    assert_eq!(
        m.get(&e1.ip),
        Some(&10),
        "node 1's pod: only node 1's endpoint:\n{out}"
    );
    let (m, out) = spread(&c2.netns, "10.96.0.50:80", 10);
    assert_eq!(
        m.get(&e2.ip),
        Some(&10),
        "node 2's pod: only node 2's endpoint:\n{out}"
    );
    // Node 1 loses its local endpoint: its pods' connections vanish, no reset.
    for k in 0..2 {
        service_set_eps(&lab, k, &local, &both[1..]);
    }
    let before = drop_count(&n1.socket, "lb-no-local-endpoint");
    let t = std::time::Instant::now();
    let (ok, out) = run_in(
        &c1.netns,
        &bin(),
        &["whoami-ask", "--to", "10.96.0.50:80", "--count", "1"],
    );
    assert!(!ok && !out.contains("refused"), "not a silent drop: {out}");
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "answered at once: {out}"
    );
    assert!(drop_count(&n1.socket, "lb-no-local-endpoint") > before);
    let (m, out) = spread(&c2.netns, "10.96.0.50:80", 5);
    assert_eq!(m.get(&e2.ip), Some(&5), "node 2 still served:\n{out}");

    // Conditions, on node 1: e1 ready, e2 serving and terminating.
    let cond = |e1c: &str, e2c: &str| {
        let (a, b) = (
            format!("{}:8080{e1c}", e1.ip),
            format!("{}:8080{e2c}", e2.ip),
        );
        service_set(
            &lab,
            &[
                "default/roll",
                "--vip",
                "10.96.0.51",
                "--port",
                "80",
                "--endpoint",
                &a,
                "--endpoint",
                &b,
            ],
        );
    };
    cond("", ",notready,terminating,serving");
    let (m, out) = spread(&c1.netns, "10.96.0.51:80", 20);
    assert_eq!(m.get(&e1.ip), Some(&20), "only the ready endpoint:\n{out}");
    // e1 not ready either: the serving terminating e2 takes the new connections.
    cond(",notready,notserving", ",notready,terminating,serving");
    let (m, out) = spread(&c1.netns, "10.96.0.51:80", 20);
    assert_eq!(
        m.get(&e2.ip),
        Some(&20),
        "the serving terminating fallback:\n{out}"
    );
    // Nothing serving: refused at once.
    cond(",notready,notserving", ",notready,terminating,notserving");
    let (ok, out) = run_in(
        &c1.netns,
        &bin(),
        &["whoami-ask", "--to", "10.96.0.51:80", "--count", "1"],
    );
    assert!(!ok && out.contains("refused"), "{out}");
}

/// The Service range (10.96.0.0/12 in the lab's node config): a ClusterIP's
/// undefined ports are refused at once, unallocated addresses dropped, nothing of
/// it leaves by the default route.
#[test]
fn the_service_range_refuses_undefined_ports_and_drops_unallocated_addresses() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = options("r");
    o.external = false;
    let lab = Lab::up(&o).expect("lab up");
    let n1 = lab.state.nodes[0].clone();
    let (client, ep) = (&n1.pods[0], &n1.pods[1]);
    let e = format!("{}:8080", ep.ip);
    service_set(
        &lab,
        &[
            "default/web",
            "--vip",
            "10.96.0.60",
            "--port",
            "80",
            "--endpoint",
            &e,
        ],
    );
    let t = std::time::Instant::now();
    let (ok, out) = run_in(
        &client.netns,
        &bin(),
        &["whoami-ask", "--to", "10.96.0.60:81", "--count", "1"],
    );
    assert!(
        !ok && out.contains("refused"),
        "TCP to an undefined port: {out}"
    );
    let (ok, out) = run_in(
        &client.netns,
        &bin(),
        &["udp-ping", "--to", "10.96.0.60:53", "--count", "1"],
    );
    assert!(
        !ok && out.contains("refused"),
        "UDP to an undefined port: {out}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refusals took {:?}",
        t.elapsed()
    );
    let before = drop_count(&n1.socket, "lb-unallocated-cluster-ip");
    let (ok, out) = run_in(
        &client.netns,
        &bin(),
        &["whoami-ask", "--to", "10.96.0.61:80", "--count", "1"],
    );
    assert!(
        !ok && !out.contains("refused"),
        "unallocated, not dropped: {out}"
    );
    assert!(drop_count(&n1.socket, "lb-unallocated-cluster-ip") > before);
    let s = stats(&n1.socket);
    // Nothing was tracked: no connection went out masqueraded.
    let masq: u64 = s.workers.iter().map(|w| w.ct_entries).sum();
    assert_eq!(masq, 0, "a connection was tracked (masqueraded?)");
}

fn settings(sock: &std::path::Path) -> serde_json::Value {
    let (ok, out, err) = ctl(sock, &["--json", "conntrack", "settings"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).expect("JSON settings")
}

/// Connection-tracking timeouts and capacity change at run time through podpathctl
/// and the control service, take effect without a restart, survive one (the
/// control service replays them), and a bad value changes nothing.
#[test]
fn conntrack_knobs_change_at_run_time_and_persist() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = options("t");
    o.external = false;
    o.nodes = 1;
    let mut lab = Lab::up(&o).expect("lab up");
    let n1 = lab.state.nodes[0].clone();
    let (client, ep) = (n1.pods[0].clone(), n1.pods[1].clone());
    let cs = &n1.control_socket;
    let s = settings(cs);
    assert_eq!(s["udp"], 30);
    assert_eq!(s["capacity"], 65536);
    assert_eq!(s["max_capacity"], 4 * 65536);
    let e = format!("{}:5353", ep.ip);
    service_set(
        &lab,
        &[
            "default/dns",
            "--vip",
            "10.96.0.70",
            "--port",
            "53",
            "--protocol",
            "udp",
            "--endpoint",
            &e,
        ],
    );
    let ask = || {
        let _ = run_in(
            &client.netns,
            &bin(),
            &["udp-send", "--to", "10.96.0.70:53", "--hex", "00"],
        );
        udp_flows(&lab, "10.96.0.70")
    };
    let before = ask();
    assert!(before.iter().all(|c| c.timeout > 20), "{before:?}");
    // Five seconds for unreplied UDP, and a smaller table.
    let (ok, out, err) = ctl(
        cs,
        &[
            "--json",
            "conntrack",
            "set",
            "--udp",
            "5",
            "--capacity",
            "1000",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("generation"), "{out}");
    let s = settings(cs);
    assert_eq!(
        (s["udp"].as_u64(), s["capacity"].as_u64()),
        (Some(5), Some(1000))
    );
    assert_eq!(s["tcp_established"], 432000, "other knobs unchanged");
    // The new flow gets it (the old one keeps its expiry until its next packet,
    // as Linux applies a changed sysctl).
    let after = ask();
    let new: Vec<_> = after
        .iter()
        .filter(|c| !before.iter().any(|b| b.orig.2 == c.orig.2))
        .collect();
    assert_eq!(new.len(), 1, "{after:?}");
    assert!(
        new[0].timeout <= 5,
        "the new timeout is not in force: {after:?}"
    );
    // Bad values: a clear error, nothing changed.
    for bad in [
        vec!["--udp", "0"],
        vec!["--capacity", "10"],
        vec!["--capacity", "999999999"],
    ] {
        let mut a = vec!["conntrack", "set"];
        a.extend(bad.iter());
        let (ok, _, err) = ctl(cs, &a);
        assert!(!ok && !err.is_empty(), "{bad:?} accepted");
    }
    assert_eq!(settings(cs)["udp"], 5);
    // kill -9 of the dataplane: the control service puts the knobs back.
    lab.stop_dataplane(0, "KILL");
    lab.start_dataplane(0, &o).expect("restart dataplane");
    lab.wait_in_sync(0, Duration::from_secs(30))
        .expect("back in sync");
    let s = settings(&n1.socket);
    assert_eq!(
        (s["udp"].as_u64(), s["capacity"].as_u64()),
        (Some(5), Some(1000)),
        "the restarted dataplane runs its file's knobs, not the persisted ones"
    );
}

/// An endpoint with nothing listening answers ICMP port unreachable; the client's
/// socket must see it as from the virtual IP about what it sent (ECONNREFUSED on a
/// connected UDP socket), for endpoints on both nodes, with two workers per node.
#[test]
fn an_endpoints_port_unreachable_reaches_the_client_from_the_virtual_ip() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = options("i");
    o.external = false;
    o.workers = 2;
    let lab = Lab::up(&o).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let client = &n1.pods[0];
    for (name, vip, ep) in [
        ("default/dns-here", "10.96.0.80", &n1.pods[1]),
        ("default/dns-there", "10.96.0.81", &n2.pods[0]),
    ] {
        let e = format!("{}:5353", ep.ip);
        service_set(
            &lab,
            &[
                name,
                "--vip",
                vip,
                "--port",
                "53",
                "--protocol",
                "udp",
                "--endpoint",
                &e,
            ],
        );
        // Several flows, so both workers' ownership is exercised.
        for k in 0..4 {
            let to = format!("{vip}:53");
            let t = std::time::Instant::now();
            let (ok, out) = run_in(
                &client.netns,
                &bin(),
                &["udp-ping", "--to", &to, "--count", "1"],
            );
            assert!(
                !ok && out.contains("refused"),
                "{name} (endpoint {}), try {k}: the port unreachable did not reach the socket: {out}",
                ep.ip
            );
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "{name}: {:?}",
                t.elapsed()
            );
        }
    }
}

/// Path MTU on a NodePort: an external client's DF datagram too big for the overlay
/// (its endpoint is on the other node) gets fragmentation needed addressed to it,
/// quoting what it sent, so its kernel learns the path MTU.
#[test]
fn path_mtu_discovery_works_through_a_node_port() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let o = options("m");
    let lab = Lab::up(&o).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let ext = lab.state.external.clone().expect("an external host");
    let e = format!("{}:5353", n2.pods[0].ip);
    service_set(
        &lab,
        &[
            "default/dns",
            "--vip",
            "10.96.0.90",
            "--port",
            "53",
            "--protocol",
            "udp",
            "--node-port",
            "30053",
            "--endpoint",
            &e,
        ],
    );
    let mtu = || net::ip_in(&ext, &["-4", "route", "get", &n1.node_ip]).unwrap_or_default();
    assert!(
        !mtu().contains("mtu"),
        "a path MTU is known already: {}",
        mtu()
    );
    // 1 472 bytes of UDP: a 1 500-byte packet with DF (Linux's default for UDP),
    // from a socket that stays open (Linux applies a fragmentation needed only for
    // a socket it finds). Nothing answers it: only the error matters.
    let to = format!("{}:30053", n1.node_ip);
    let (_, out) = run_in(&ext, &bin(), &["udp-ping", "--to", &to, "--size", "1472"]);
    assert!(
        wait_until(Duration::from_secs(3), || mtu().contains("mtu 1450")),
        "the client did not learn the path MTU: {}\n{out}\ndrops: {}",
        mtu(),
        drop_count(&n1.socket, "vxlan-too-big")
    );
}

/// externalIPs and LoadBalancer IPs: reachable from outside (with the external
/// traffic policy, as the NodePort), from pods (as the ClusterIP) and from node
/// processes; loadBalancerSourceRanges drop other sources on the LB IP only.
#[test]
fn external_and_load_balancer_ips_with_policies_and_source_ranges() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let o = options("x");
    let lab = Lab::up(&o).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let ext = lab.state.external.clone().expect("an external host");
    let (client, local_ep, remote_ep) = (&n1.pods[0], &n1.pods[1], &n2.pods[0]);
    let _servers = whoami(&[local_ep, remote_ep]);
    // The network routes the external addresses to node 1 (as a cloud LB or a
    // router would); node 1's processes reach them through the dataplane.
    for a in ["198.51.100.50", "198.51.100.60"] {
        net::ip_in(
            &ext,
            &["route", "add", &format!("{a}/32"), "via", &n1.node_ip],
        )
        .unwrap();
        net::ip_in(
            &n1.netns,
            &[
                "route",
                "add",
                &format!("{a}/32"),
                "dev",
                podpath_lab::topo::HOST_IF,
            ],
        )
        .unwrap();
    }
    let eps = [
        format!("{}:8080", local_ep.ip),
        format!("{}:8080", remote_ep.ip),
    ];
    let set = |policy: &str, range: &str| {
        let a = [
            "default/web",
            "--vip",
            "10.96.0.100",
            "--port",
            "80",
            "--node-port",
            "30080",
            "--external-traffic-policy",
            policy,
            "--external-ip",
            "198.51.100.50",
            "--load-balancer-ip",
            "198.51.100.60",
            "--load-balancer-source-range",
            range,
        ];
        service_set_eps(&lab, 0, &a, &eps);
    };
    let ask = |ns: &str, to: &str, n: &str, source: &str| {
        run_in(
            ns,
            &bin(),
            &[
                "whoami-ask",
                "--to",
                to,
                "--count",
                n,
                "--expect-source",
                source,
            ],
        )
    };
    // Policy Cluster, LB open to 10.0.0.0/8 only.
    set("Cluster", "10.0.0.0/8");
    let (ok, out) = ask(&ext, "198.51.100.50:80", "10", &n1.node_ip);
    assert!(
        ok,
        "external IP from outside, masqueraded to the node: {out}"
    );
    let (ok, out) = ask(&client.netns, "198.51.100.50:80", "10", "self");
    assert!(ok, "external IP from a pod, its own address kept: {out}");
    let (ok, out) = ask(&n1.netns, "198.51.100.50:80", "5", &n1.node_ip);
    assert!(ok, "external IP from the node: {out}");
    let before = drop_count(&n1.socket, "lb-source-not-allowed");
    let (ok, out) = ask(&ext, "198.51.100.60:80", "1", &n1.node_ip);
    assert!(
        !ok && !out.contains("refused"),
        "LB IP from outside the ranges: {out}"
    );
    assert!(drop_count(&n1.socket, "lb-source-not-allowed") > before);
    let (ok, out) = ask(&client.netns, "198.51.100.60:80", "5", "self");
    assert!(ok, "LB IP from a pod (inside 10.0.0.0/8): {out}");
    let np = format!("{}:30080", n1.node_ip);
    let (ok, out) = ask(&ext, &np, "5", &n1.node_ip);
    assert!(ok, "the NodePort stays open to all: {out}");
    // The range now takes the external host.
    set("Cluster", "192.168.77.0/24");
    let (ok, out) = ask(&ext, "198.51.100.60:80", "10", &n1.node_ip);
    assert!(ok, "LB IP from inside the ranges: {out}");
    // Policy Local: only node 1's endpoint, the client's address kept.
    set("Local", "192.168.77.0/24");
    let (ok, out) = ask(&ext, "198.51.100.50:80", "10", "192.168.77.100");
    assert!(ok, "external IP, policy Local: {out}");
    assert!(
        out.contains(&format!("{} 10", local_ep.ip)),
        "not only the local endpoint: {out}"
    );
}

/// healthCheckNodePort: every node answers HTTP on it, 200 with its local endpoint
/// count where it has endpoints, 503 where not, with kube-proxy's JSON; the answer
/// follows endpoint changes. Asked from the external host, as a load balancer does.
#[test]
fn health_check_node_port_answers_per_node_as_kube_proxy() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let o = options("h");
    let lab = Lab::up(&o).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let ext = lab.state.external.clone().expect("an external host");
    let set = |eps: &[&str]| {
        for k in 0..2 {
            let a = [
                "default/web",
                "--vip",
                "10.96.0.110",
                "--port",
                "80",
                "--node-port",
                "30081",
                "--external-traffic-policy",
                "Local",
                "--health-check-node-port",
                "30999",
            ];
            let e: Vec<String> = eps.iter().map(|ip| format!("{ip}:8080")).collect();
            service_set_eps(&lab, k, &a, &e);
        }
    };
    let get = |node: &podpath_lab::Node| -> (u16, serde_json::Value) {
        let to = format!("{}:30999", node.node_ip);
        let (ok, out) = run_in(&ext, &bin(), &["http-get", "--to", &to]);
        assert!(ok, "{}: {out}", node.name);
        let mut l = out.lines();
        let code = l.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = serde_json::from_str(l.next().unwrap_or("")).unwrap_or_default();
        (code, body)
    };
    // Endpoints on node 2 only.
    set(&[&n2.pods[0].ip, &n2.pods[1].ip]);
    let (c1, b1) = get(&n1);
    let (c2, b2) = get(&n2);
    assert_eq!(
        (c1, &b1["localEndpoints"]),
        (503, &serde_json::json!(0)),
        "{b1}"
    );
    assert_eq!(
        (c2, &b2["localEndpoints"]),
        (200, &serde_json::json!(2)),
        "{b2}"
    );
    assert_eq!(b2["service"]["namespace"], "default");
    assert_eq!(b2["service"]["name"], "web");
    // One moves to node 1: both healthy.
    set(&[&n1.pods[1].ip, &n2.pods[1].ip]);
    assert_eq!(get(&n1).0, 200);
    assert_eq!(get(&n2).1["localEndpoints"], 1);
}

/// IP fragments: a 3 000-byte UDP request to a VIP and its 3 000-byte answer travel
/// as fragments (tap pods: the kernel hands the dataplane each fragment), the
/// endpoint across the overlay; every fragment gets its datagram's translation.
#[test]
fn fragmented_datagrams_to_a_service_and_back() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = options("g");
    o.external = false;
    let lab = Lab::up(&o).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let (client, ep) = (&n1.pods[1], &n2.pods[1]);
    assert_eq!(
        (client.attach.clone(), ep.attach.clone()),
        (
            podpath_lab::topo::Attach::Tap,
            podpath_lab::topo::Attach::Tap
        )
    );
    let e = format!("{}:5353", ep.ip);
    service_set(
        &lab,
        &[
            "default/big",
            "--vip",
            "10.96.0.120",
            "--port",
            "53",
            "--protocol",
            "udp",
            "--endpoint",
            &e,
        ],
    );
    let _echo = Background::in_each(
        &[&ep.netns],
        &["udp-echo", "--port", "5353", "--count", "10"],
    );
    let (ok, out) = run_in(
        &client.netns,
        &bin(),
        &[
            "udp-ping",
            "--to",
            "10.96.0.120:53",
            "--count",
            "3",
            "--size",
            "3000",
        ],
    );
    assert!(
        ok,
        "3 000-byte datagrams through the VIP: {out}\nnode 1 drops: {}",
        stats(&n1.socket)
            .drops
            .iter()
            .filter(|d| d.count > 0)
            .map(|d| format!("{} {}", d.reason, d.count))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

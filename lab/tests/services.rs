//! Walk 4 end to end: a pod talks to a ClusterIP Service whose endpoints are spread
//! over two nodes. Needs root; namespaces made and removed by the test.

mod common;
use common::*;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podpath_lab::topo::Pod;
use podpath_lab::{net, Lab};
use podpath_proto::{Client, ConnInfo, EndpointSpec, Request, Response, ServiceSpec};

static SERIAL: Mutex<()> = Mutex::new(());

fn set(lab: &Lab, svc: &ServiceSpec) {
    for n in &lab.state.nodes {
        let mut c = Client::connect(&n.control_socket, "test").unwrap();
        let r = c.call(Request::ServiceSet(svc.clone())).unwrap();
        assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    }
}

/// whoami-serve on port 8080 in each endpoint pod (killed when dropped).
fn whoami_servers(eps: &[Pod], count: &str, seconds: &str) -> Background {
    let ns: Vec<&str> = eps.iter().map(|p| p.netns.as_str()).collect();
    Background::in_each(
        &ns,
        &[
            "whoami-serve",
            "--port",
            "8080",
            "--count",
            count,
            "--seconds",
            seconds,
        ],
    )
}

/// Every node's non-zero drop counters and hand-offs, for failure messages.
fn diag(lab: &Lab) -> String {
    lab.state
        .nodes
        .iter()
        .map(|n| {
            let s = stats(&n.socket);
            let d: Vec<String> = s
                .drops
                .iter()
                .filter(|d| d.count > 0)
                .map(|d| format!("{} {}", d.reason, d.count))
                .collect();
            format!(
                "{}: drops [{}], handoffs {}",
                n.name,
                d.join(", "),
                handoffs(&n.socket)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn ep(ip: &str) -> EndpointSpec {
    EndpointSpec::ready(ip, 8080)
}

#[test]
fn cluster_ip_spreads_over_endpoints_on_both_nodes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = options("c");
    o.external = false;
    // Two workers per dataplane: a client's connections live on its worker, and what
    // arrives on the other one is handed over (checked at the end).
    o.workers = 2;
    let lab = Lab::up(&o).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let client = n1.pods[0].clone();
    let eps = [n1.pods[1].clone(), n2.pods[0].clone(), n2.pods[1].clone()];
    let web = ServiceSpec::new(
        "default/web",
        "10.96.0.10",
        80,
        "tcp",
        eps.iter().map(|p| ep(&p.ip)).collect(),
    );
    set(&lab, &web);
    let servers = whoami_servers(&eps, "300", "30");
    // 300 short connections; each completes only if the answer came from the VIP,
    // and each endpoint must have seen the client's own address (no SNAT).
    let (ok, out) = run_in(
        &client.netns,
        &bin(),
        &[
            "whoami-ask",
            "--to",
            "10.96.0.10:80",
            "--count",
            "300",
            "--expect-source",
            "self",
        ],
    );
    assert!(ok, "{out}");
    for p in &eps {
        let n: u32 = out
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{} ", p.ip))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        assert!(
            (75..=125).contains(&n),
            "endpoint {} got {n} of 300 (fair share 100 +-25%):\n{out}",
            p.ip
        );
    }
    // The connection table remembers each choice.
    let mut c = Client::connect(&n1.control_socket, "test").unwrap();
    let Response::Conntrack(conns) = c
        .call(Request::ConntrackList(podpath_proto::ConntrackFilter {
            proto: Some(6),
            addr: Some("10.96.0.10".into()),
            port: None,
        }))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(conns.len(), 300);
    drop(servers);

    // ClientIP affinity: every connection of the client goes to one endpoint.
    let servers = whoami_servers(&eps, "300", "30");
    set(
        &lab,
        &ServiceSpec {
            affinity_timeout: Some(600),
            ..web.clone()
        },
    );
    let (ok, out) = run_in(
        &client.netns,
        &bin(),
        &["whoami-ask", "--to", "10.96.0.10:80", "--count", "300"],
    );
    assert!(ok, "{out}");
    let answered: Vec<&str> = out.lines().filter(|l| l.ends_with(" 300")).collect();
    assert_eq!(
        answered.len(),
        1,
        "affinity: all 300 to one endpoint:\n{out}"
    );
    drop(servers);

    // Established connections stay pinned when the Service changes. Twelve paced
    // streams, spread over the three endpoints; then a fourth endpoint with weight 6
    // of 9, so Maglev moves about two thirds of its slots to it: an unpinned stream
    // would land on a pod that never saw its SYN and be reset (for all twelve to keep
    // their endpoints by chance: (1/3)^12). Each stream's endpoint is read from the
    // connection table before and after.
    set(&lab, &web);
    let receivers: Vec<_> = eps
        .iter()
        .map(|p| {
            serve_in(
                &p.netns,
                &[
                    "tcp-recv",
                    "--port",
                    "8080",
                    "--seed",
                    "3",
                    "--accept-seconds",
                    "4",
                ],
            )
        })
        .collect();
    let stop = std::env::temp_dir().join(format!("pp-pin-{}", std::process::id()));
    let _ = std::fs::remove_file(&stop);
    let senders: Vec<_> = (0..12)
        .map(|_| {
            net::command_in(&client.netns, &bin())
                .args([
                    "tcp-send",
                    "--to",
                    "10.96.0.10:80",
                    "--stop-file",
                    &stop.display().to_string(),
                    "--rate-mbps",
                    "4",
                    "--seed",
                    "3",
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let streams = |lab: &Lab| -> std::collections::BTreeMap<u16, String> {
        conntrack(
            &lab.state.nodes[0].control_socket,
            podpath_proto::ConntrackFilter {
                proto: Some(6),
                addr: Some("10.96.0.10".into()),
                port: Some(80),
            },
        )
        .into_iter()
        .filter(|c| c.state.as_deref() == Some("ESTABLISHED"))
        .map(|c| (c.orig.2, c.reply.0))
        .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || streams(&lab).len() == 12),
        "twelve streams did not establish: {:?}",
        streams(&lab)
    );
    let before = streams(&lab);
    let used: std::collections::BTreeSet<&String> = before.values().collect();
    assert!(used.len() >= 2, "the streams did not spread: {before:?}");
    let mut changed = web.clone();
    changed.endpoints.push(EndpointSpec {
        weight: 6,
        ..ep(&n1.pods[0].ip)
    });
    set(&lab, &changed);
    std::thread::sleep(Duration::from_millis(1500));
    let after = streams(&lab);
    std::fs::write(&stop, b"").unwrap();
    for (k, sender) in senders.into_iter().enumerate() {
        let o = sender.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "stream {k} broke when the Service changed: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    let _ = std::fs::remove_file(&stop);
    for r in receivers {
        let o = r.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "a receiver saw a short or corrupted stream: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    assert_eq!(after, before, "connections moved to another endpoint");
    // New connections do follow the change: most now go to the heavy endpoint.
    let heavy = &n1.pods[0];
    let s = whoami_servers(std::slice::from_ref(heavy), "30", "20");
    let srv = whoami_servers(&eps, "30", "20");
    let (_, out) = run_in(
        &client.netns,
        &bin(),
        &["whoami-ask", "--to", "10.96.0.10:80", "--count", "30"],
    );
    drop((s, srv));
    let to_heavy: u32 = out
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{} ", heavy.ip))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    assert!(
        to_heavy >= 12,
        "the weight-6 endpoint got {to_heavy} of 30 new connections:\n{out}\n{}",
        diag(&lab)
    );

    // A UDP client whose endpoint is removed moves to a live one.
    let dns = ServiceSpec::new(
        "default/dns2",
        "10.96.0.13",
        53,
        "udp",
        vec![ep(&eps[1].ip), ep(&eps[2].ip)],
    );
    let dns = ServiceSpec {
        endpoints: dns
            .endpoints
            .iter()
            .map(|e| EndpointSpec {
                port: 5353,
                ..e.clone()
            })
            .collect(),
        ..dns
    };
    set(&lab, &dns);
    let answerers = Background::in_each(
        &[&eps[1].netns, &eps[2].netns],
        &["udp-whoami-serve", "--port", "5353", "--seconds", "15"],
    );
    let asker = net::command_in(&client.netns, &bin())
        .args([
            "udp-whoami-ask",
            "--to",
            "10.96.0.13:53",
            "--count",
            "20",
            "--interval-ms",
            "100",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Remove whichever endpoint answers: ask the connection table (once the flow
    // has had a few answers).
    let udp = || {
        conntrack(
            &lab.state.nodes[0].control_socket,
            podpath_proto::ConntrackFilter {
                proto: Some(17),
                addr: Some("10.96.0.13".into()),
                port: None,
            },
        )
    };
    assert!(
        wait_until(Duration::from_secs(5), || udp()
            .first()
            .is_some_and(|c| c.seen_reply)),
        "no answered UDP flow: {:?}",
        udp()
    );
    std::thread::sleep(Duration::from_millis(300));
    let conns = udp();
    assert_eq!(conns.len(), 1, "{conns:?}");
    let first = conns[0].reply.0.clone();
    set(
        &lab,
        &ServiceSpec {
            endpoints: dns
                .endpoints
                .iter()
                .filter(|e| e.ip != first)
                .cloned()
                .collect(),
            ..dns.clone()
        },
    );
    let out = String::from_utf8_lossy(&asker.wait_with_output().unwrap().stdout).into_owned();
    let answers: Vec<&str> = out.lines().collect();
    assert_eq!(
        answers.first(),
        Some(&first.as_str()),
        "{out}\n{}",
        diag(&lab)
    );
    let last = answers.last().copied().unwrap_or("");
    assert!(
        last != first && last != "none",
        "the UDP client did not move off the removed endpoint:\n{out}"
    );
    drop(answerers);

    // Hairpin: a pod reaches itself through its own Service (its source becomes the
    // gateway, so the reply comes back through the dataplane and from the VIP).
    let me = &eps[0];
    set(
        &lab,
        &ServiceSpec::new("default/self", "10.96.0.14", 80, "tcp", vec![ep(&me.ip)]),
    );
    let srv = whoami_servers(std::slice::from_ref(me), "5", "10");
    let (ok, out) = run_in(
        &me.netns,
        &bin(),
        &[
            "whoami-ask",
            "--to",
            "10.96.0.14:80",
            "--count",
            "5",
            "--expect-source",
            &n1.gateway,
        ],
    );
    assert!(
        ok && out.contains(&format!("{} 5", me.ip)),
        "hairpin (the pod sees the gateway as source): {out}"
    );
    drop(srv);

    // A Service without endpoints refuses at once: TCP with a reset, UDP with ICMP.
    set(
        &lab,
        &ServiceSpec::new("default/empty", "10.96.0.11", 80, "tcp", vec![]),
    );
    set(
        &lab,
        &ServiceSpec::new("default/dns", "10.96.0.12", 53, "udp", vec![]),
    );
    let t = Instant::now();
    let (ok, out) = run_in(
        &client.netns,
        &bin(),
        &["whoami-ask", "--to", "10.96.0.11:80", "--count", "1"],
    );
    assert!(!ok && out.contains("refused"), "{out}");
    let (ok, out) = run_in(
        &client.netns,
        &bin(),
        &["udp-ping", "--to", "10.96.0.12:53", "--count", "1"],
    );
    assert!(!ok && out.contains("refused"), "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refusals were not immediate: {:?}",
        t.elapsed()
    );
    // The two workers did share the work: packets crossed between them.
    assert!(
        handoffs(&lab.state.nodes[0].socket) > 0,
        "no hand-off between node 1's workers"
    );
}

#[test]
fn node_port_from_an_external_host_with_both_policies() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let o = options("n");
    let lab = Lab::up(&o).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let ext = lab.state.external.clone().unwrap();
    let eps = [n1.pods[1].clone(), n2.pods[0].clone(), n2.pods[1].clone()];
    let mut web = ServiceSpec {
        node_port: Some(30080),
        ..ServiceSpec::new(
            "default/web",
            "10.96.0.10",
            80,
            "tcp",
            eps.iter().map(|p| ep(&p.ip)).collect(),
        )
    };
    let serve = |count: &str| whoami_servers(&eps, count, "20");
    let ask = |n: &str, source: &str| -> String {
        let (ok, out) = run_in(
            &ext,
            &bin(),
            &[
                "whoami-ask",
                "--to",
                &format!("{}:30080", n1.node_ip),
                "--count",
                n,
                "--expect-source",
                source,
            ],
        );
        assert!(ok, "{out}");
        out
    };
    // Policy Cluster: any endpoint (local or on the other node); they see the node.
    set(&lab, &web);
    let s = serve("60");
    let out = ask("60", &n1.node_ip);
    drop(s);
    let mut used = 0;
    for p in &eps {
        if out.lines().any(|l| l.starts_with(&format!("{} ", p.ip))) {
            used += 1;
        }
    }
    assert!(
        used >= 2,
        "policy Cluster should spread over the endpoints: {out}"
    );
    // Each endpoint saw the node as source (--expect-source above); the connection
    // table says the same.
    let mut c = Client::connect(&n1.control_socket, "test").unwrap();
    let Response::Conntrack(conns) = c
        .call(Request::ConntrackList(podpath_proto::ConntrackFilter {
            proto: Some(6),
            addr: None,
            port: Some(30080),
        }))
        .unwrap()
    else {
        panic!()
    };
    assert!(!conns.is_empty());
    assert!(
        conns.iter().all(|c| c.reply.1 == n1.node_ip),
        "Cluster: endpoints answer the node: {conns:?}"
    );
    // Policy Local: only this node's endpoint, the client's address kept.
    let cluster_phase: std::collections::BTreeSet<u16> = conns.iter().map(|c| c.orig.2).collect();
    web.external_traffic_policy = Some("Local".into());
    set(&lab, &web);
    let s = serve("40");
    let out = ask("30", "self");
    drop(s);
    assert_eq!(
        out.trim(),
        format!("{} 30", eps[0].ip),
        "Local: only the local endpoint: {out}"
    );
    let Response::Conntrack(conns) = c
        .call(Request::ConntrackList(podpath_proto::ConntrackFilter {
            proto: Some(6),
            addr: Some("192.168.77.100".into()),
            port: Some(30080),
        }))
        .unwrap()
    else {
        panic!()
    };
    let local: Vec<&ConnInfo> = conns
        .iter()
        .filter(|c| !cluster_phase.contains(&c.orig.2))
        .collect();
    assert_eq!(local.len(), 30, "the Local phase's connections: {local:?}");
    assert!(
        local
            .iter()
            .all(|c| c.reply.1 == "192.168.77.100" && c.reply.0 == eps[0].ip),
        "Local keeps the client address (and the local endpoint): {local:?}"
    );
}

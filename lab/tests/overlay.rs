//! Walks 1-3 of the packet walks over the VXLAN overlay, end to end: two nodes joined
//! by an underlay bridge, two pods each (af_packet and tap), and an external host, all
//! in namespaces the test makes and removes. Needs root, iputils and tcpdump.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use podpath_lab::{net, Lab};
use podpath_proto::{Client, Request, Response, Stats};

static SERIAL: Mutex<()> = Mutex::new(());

fn drops(s: &Stats, reason: &str) -> u64 {
    s.drops
        .iter()
        .filter(|d| d.reason == reason)
        .map(|d| d.count)
        .sum()
}

/// A byte-checked TCP transfer; returns the address the receiver saw.
fn tcp(from: &str, to_ns: &str, to_ip: &str, port: u16, bytes: u64) -> String {
    let (ok, out) = tcp_transfer(from, to_ns, to_ip, port, bytes);
    assert!(ok, "TCP {from} -> {to_ip}: {out}");
    out.lines()
        .find_map(|l| l.strip_prefix("connection from ").map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn pods_across_nodes_over_vxlan() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let o = options("v");
    let lab = Lab::up(&o).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let (a1, b1, a2, b2) = (
        n1.pods[0].clone(),
        n1.pods[1].clone(),
        n2.pods[0].clone(),
        n2.pods[1].clone(),
    );
    let ext = lab.state.external.clone().unwrap();

    // Capture the underlay while the walks run, until every probe is done (stopped
    // with SIGINT below, bounded by `timeout` and the count).
    let mut cap = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.state.underlay,
            "timeout",
            "60",
            "tcpdump",
            "-l",
            "-nn",
            "-i",
            "u-n1",
            "-c",
            "200000",
            "udp port 4789",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump (apt-get install tcpdump)");
    // tcpdump says "listening on u-n1" once it captures; a thread drains the rest of
    // its stderr so it never blocks.
    let (tx, listening) = std::sync::mpsc::channel();
    let err = cap.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if l.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    assert!(
        listening.recv_timeout(Duration::from_secs(10)).is_ok(),
        "tcpdump did not start"
    );
    // Its output is read while it runs: a full pipe would stall tcpdump, and the
    // kernel would drop everything after the first 64 KB of lines.
    let out = cap.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(out), &mut s);
        s
    });

    // Walk 1 (same node) and walk 2 (across the overlay), both directions.
    assert!(ping(&a1.netns, &b1.ip), "same-node ping");
    assert!(
        ping(&a1.netns, &a2.ip),
        "cross-node ping af_packet -> af_packet"
    );
    assert!(ping(&b2.netns, &b1.ip), "cross-node ping tap -> tap");
    assert!(ping(&a1.netns, &n1.gateway), "the gateway answers");
    // 10 MB across, checked byte for byte; the receiver sees the sender's pod IP.
    assert_eq!(
        tcp(&a1.netns, &b2.netns, &b2.ip, 7001, 10 << 20),
        a1.ip,
        "no NAT between pods"
    );
    // More flows, for the underlay to spread (outer source ports).
    for (k, p) in [(7002u16, &a2), (7003, &b2), (7004, &a2)] {
        assert_eq!(tcp(&b1.netns, &p.netns, &p.ip, k, 100_000), b1.ip);
    }
    // UDP request/response across.
    let echo = serve_in(&a2.netns, &["udp-echo", "--port", "7100", "--count", "5"]);
    let (ok, out) = run_in(
        &a1.netns,
        &bin(),
        &[
            "udp-ping",
            "--to",
            &format!("{}:7100", a2.ip),
            "--count",
            "5",
        ],
    );
    let e = echo.wait_with_output().unwrap();
    assert!(ok, "UDP: {out}");
    assert!(
        String::from_utf8_lossy(&e.stdout).contains(&format!("to {}", a1.ip)),
        "UDP peer is the pod"
    );

    // Walk 3: a node process reaches a local pod; the pod sees the node address.
    assert!(ping(&n1.netns, &a1.ip), "node -> local pod");
    assert_eq!(tcp(&n1.netns, &a1.netns, &a1.ip, 7200, 1 << 20), n1.node_ip);

    // Bad VXLAN: from an unknown VTEP (the external host), and with a wrong VNI from
    // a known one (node 2's kernel, through its dataplane).
    let before = stats(&lab.state.nodes[0].socket);
    let to = format!("{}:4789", n1.node_ip);
    let pad = "00".repeat(42);
    assert!(
        run_in(
            &ext,
            &bin(),
            &[
                "udp-send",
                "--to",
                &to,
                "--hex",
                &format!("0800000000000100{pad}")
            ]
        )
        .0
    );
    assert!(
        run_in(
            &n2.netns,
            &bin(),
            &[
                "udp-send",
                "--to",
                &to,
                "--from",
                &n2.node_ip,
                "--hex",
                &format!("0800000000000700{pad}")
            ]
        )
        .0
    );
    let counted = |r: &str| drops(&stats(&lab.state.nodes[0].socket), r) - drops(&before, r);
    wait_until(Duration::from_secs(5), || {
        counted("vxlan-unknown-vtep") >= 1 && counted("vxlan-wrong-vni") >= 1
    });
    assert_eq!(counted("vxlan-unknown-vtep"), 1);
    assert_eq!(counted("vxlan-wrong-vni"), 1);

    // TTL 1: time exceeded from the pods' gateway.
    let (_, out) = run_in(
        &a1.netns,
        "ping",
        &["-c", "1", "-t", "1", "-W", "2", &a2.ip],
    );
    assert!(out.contains("Time to live exceeded"), "{out}");
    // Too big with DF after encapsulation: fragmentation needed with the path MTU.
    // (The pod's MTU is raised past what the overlay carries, as a misconfigured pod.)
    net::ip_in(&a1.netns, &["link", "set", "eth0", "mtu", "1500"]).unwrap();
    net::ip_in(&n1.netns, &["link", "set", "vp-a", "mtu", "1500"]).unwrap();
    let (_, out) = run_in(
        &a1.netns,
        "ping",
        &["-c", "2", "-M", "do", "-s", "1472", "-W", "2", &a2.ip],
    );
    assert!(
        out.contains("mtu = 1450") || out.contains("mtu=1450"),
        "{out}"
    );

    // The capture: VXLAN on the configured port and VNI, several source ports.
    let _ = Command::new("kill")
        .args(["-INT", &cap.id().to_string()])
        .status();
    let _ = cap.wait();
    let text = lines.join().unwrap();
    let vxlan: Vec<&str> = text.lines().filter(|l| l.contains("VXLAN")).collect();
    assert!(!vxlan.is_empty(), "no VXLAN on the underlay:\n{text}");
    let vni_of = |l: &str| {
        l.split("vni ")
            .nth(1)
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|v| v.parse::<u32>().ok())
    };
    // What node 1's dataplane sent is on the configured port and VNI (the capture
    // also holds the test's own bad probes, VNI 7 among them: seen, and counted
    // above as dropped).
    let from_n1: Vec<&&str> = vxlan
        .iter()
        .filter(|l| l.contains(&format!("IP {}.", n1.node_ip)))
        .collect();
    assert!(!from_n1.is_empty(), "node 1 sent no VXLAN");
    assert!(
        from_n1
            .iter()
            .all(|l| l.contains(".4789:") && vni_of(l) == Some(1)),
        "{from_n1:?}"
    );
    assert!(
        vxlan.iter().any(|l| vni_of(l) == Some(7)),
        "the wrong-VNI probe is not on the wire"
    );
    let mut sports: Vec<&str> = vxlan
        .iter()
        .filter(|l| l.contains(&format!("IP {}.", n1.node_ip)))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with(&n1.node_ip)))
        .collect();
    sports.sort();
    sports.dedup();
    // Node 1's flows over the overlay: four TCP (the 10 MB one and three more), the
    // UDP request/response, pings both ways; each hashes to its own source port.
    assert!(
        sports.len() >= 6,
        "outer source ports do not vary across flows: {sports:?}"
    );

    // Removing a remote node withdraws its route (and VTEP); adding it back restores it.
    let ctl = |req: Request| {
        let mut c = Client::connect(&n1.control_socket, "test").unwrap();
        c.call(req).unwrap()
    };
    let remote = match ctl(Request::StateShow) {
        Response::State(s) => s.remotes[0].clone(),
        r => panic!("{r:?}"),
    };
    ctl(Request::RemoteDel {
        name: remote.name.clone(),
    });
    let before = drops(&stats(&lab.state.nodes[0].socket), "ip4-no-route");
    assert!(
        !run_in(&a1.netns, "ping", &["-c", "1", "-W", "1", &a2.ip]).0,
        "route not withdrawn"
    );
    assert!(drops(&stats(&lab.state.nodes[0].socket), "ip4-no-route") > before);
    ctl(Request::RemoteAdd(remote));
    assert!(ping(&a1.netns, &a2.ip), "route not restored");

    // Every packet accounted for, on both nodes.
    for i in 0..2 {
        let s = stats(&lab.state.nodes[i].socket);
        assert_eq!(s.rx + s.replicated, s.tx + s.dropped, "node {i}: {s:?}");
    }
}

#[test]
fn flannel_port_and_another_vni() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = options("f");
    o.pods_per_node = 1;
    o.external = false;
    o.vxlan_port = 8472;
    o.vni = 42;
    let lab = Lab::up(&o).expect("lab up");
    let (a1, a2) = (
        lab.state.nodes[0].pods[0].clone(),
        lab.state.nodes[1].pods[0].clone(),
    );
    let cap = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.state.underlay,
            "timeout",
            "20",
            "tcpdump",
            "-l",
            "-nn",
            "-i",
            "u-n1",
            "-c",
            "4",
            "-T",
            "vxlan",
            "udp port 8472",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(500));
    assert!(ping(&a1.netns, &a2.ip), "ping across on port 8472");
    let text = String::from_utf8_lossy(&cap.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        text.contains(".8472: VXLAN")
            && text
                .lines()
                .filter(|l| l.contains("VXLAN"))
                .all(|l| l.contains("vni 42,") || l.ends_with("vni 42")),
        "{text}"
    );
}

/// Large UDP datagrams from an af_packet pod. The pod's kernel fragments them, the
/// kernel behind its af_packet port reassembles them (DPDK's fanout defragments),
/// and the dataplane takes the whole datagram (`dataplane.max_frame`) and splits it
/// again where it goes: into the overlay (inner fragments, each encapsulated), out
/// of the uplink (masqueraded) and to a pod port; the answers come back the same
/// way. Beyond `max_frame` a datagram arrives cut short and is counted
/// `ip4-truncated`.
#[test]
fn large_datagrams_from_an_af_packet_pod_cross_every_path() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(&options("j")).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let a1 = n1.pods[0].clone();
    assert_eq!(a1.attach, podpath_lab::topo::Attach::AfPacket);
    let ext = lab.state.external.clone().unwrap();
    let targets = [
        (
            "across the overlay",
            n2.pods[0].netns.clone(),
            n2.pods[0].ip.clone(),
        ),
        (
            "to a tap pod on the same node",
            n1.pods[1].netns.clone(),
            n1.pods[1].ip.clone(),
        ),
        (
            "masqueraded to the external host",
            ext.clone(),
            "192.168.77.100".to_string(),
        ),
    ];
    for (what, ns, ip) in &targets {
        // Three sizes each: just over one frame, two af_packet frames' worth, and
        // near max_frame (9 216).
        let echo = Background::in_each(
            &[ns.as_str()],
            &["udp-echo", "--port", "7007", "--count", "3"],
        );
        let to = format!("{ip}:7007");
        let mut lost = Vec::new();
        for size in ["1600", "4000", "9000"] {
            let (ok, out) = run_in(
                &a1.netns,
                &bin(),
                &["udp-ping", "--to", &to, "--count", "1", "--size", size],
            );
            if !ok {
                lost.push(format!("{size}: {out}"));
            }
        }
        drop(echo);
        let s1 = stats(&n1.socket);
        assert!(
            lost.is_empty(),
            "{what}: {lost:?}\nnode1 drops: {:?}",
            s1.drops
                .iter()
                .filter(|d| d.count > 0)
                .map(|d| (&d.reason, d.count))
                .collect::<Vec<_>>()
        );
    }
    let s1 = stats(&n1.socket);
    let split = s1
        .stages
        .iter()
        .find(|s| s.name == "ip4-fragment")
        .map_or(0, |s| s.packets);
    assert!(split >= 9, "ip4-fragment split the datagrams: {split}");
    // Beyond max_frame: cut short by the kernel ring, counted, nothing crashes.
    let before = drops(&s1, "ip4-truncated");
    let to = format!("{}:7008", n2.pods[0].ip);
    let (ok, _) = run_in(
        &a1.netns,
        &bin(),
        &["udp-ping", "--to", &to, "--count", "1", "--size", "20000"],
    );
    assert!(!ok, "a 20 000-byte datagram is beyond max_frame");
    assert!(
        wait_until(Duration::from_secs(2), || drops(
            &stats(&n1.socket),
            "ip4-truncated"
        ) > before),
        "counted ip4-truncated"
    );
}

/// The packet walk as a picture: both nodes trace a ping across the overlay; their
/// saved traces render to one SVG (podpathctl trace svg) that rsvg-convert renders
/// to PNG and an XML parser reads, naming every stage the traces name and joining
/// node1's encapsulated echo to the one node2 decapsulated. `trace show --svg`
/// draws one node's directly.
#[test]
fn traces_of_two_nodes_draw_the_walk_across_the_overlay() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = options("g");
    o.external = false;
    let lab = Lab::up(&o).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let (a1, a2) = (n1.pods[0].clone(), n2.pods[0].clone());
    assert!(ping(&a1.netns, &a2.ip), "overlay ping before tracing");
    for n in [&n1, &n2] {
        let (ok, _, err) = ctl(&n.control_socket, &["trace", "start", "4"]);
        assert!(ok, "{err}");
    }
    let (ok, out) = run_in(&a1.netns, "ping", &["-c", "1", "-W", "2", &a2.ip]);
    assert!(ok, "{out}");
    let dir = TempDir::new("svg");
    let mut stages = std::collections::BTreeSet::new();
    let mut files = Vec::new();
    for n in [&n1, &n2] {
        let (ok, out, err) = ctl(&n.control_socket, &["trace", "show", "--json"]);
        assert!(ok, "{err}");
        let lines: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        assert!(!lines.is_empty(), "{} traced nothing", n.name);
        stages.extend(
            lines
                .iter()
                .map(|l| l["stage"].as_str().unwrap().to_string()),
        );
        let f = dir.join(&format!("{}.json", n.name));
        std::fs::write(&f, out).unwrap();
        files.push(format!("{}={}", f.display(), n.name));
    }
    assert!(
        stages.contains("vxlan-encap") && stages.contains("vxlan-decap"),
        "{stages:?}"
    );
    let svg_path = dir.join("walk.svg");
    let o = Command::new(podpathctl())
        .args(["trace", "svg", "--out"])
        .arg(&svg_path)
        .args(&files)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    for s in &stages {
        assert!(svg.contains(&format!(">{s}<")), "stage {s} not drawn");
    }
    for n in [&n1, &n2] {
        assert!(
            svg.contains(&format!(">{}<", n.name)),
            "{} not named",
            n.name
        );
    }
    assert!(
        svg.contains(r#"class="overlay""#),
        "no packet joined across the overlay"
    );
    // Well-formed: an XML parser reads it, and librsvg renders it.
    let parsed = Command::new("python3")
        .args(["-c", "import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); print(r.tag)"])
        .arg(&svg_path)
        .output()
        .unwrap();
    assert!(
        parsed.status.success() && String::from_utf8_lossy(&parsed.stdout).contains("svg"),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let png = dir.join("walk.png");
    let r = Command::new("rsvg-convert")
        .arg("-o")
        .arg(&png)
        .arg(&svg_path)
        .output()
        .expect("rsvg-convert (librsvg2-bin; scripts/setup.sh installs it)");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        std::fs::metadata(&png).unwrap().len() > 2000,
        "an empty picture"
    );
    // One node's trace straight from its control service.
    let (ok, _, _) = ctl(&n1.control_socket, &["trace", "start", "2"]);
    assert!(ok);
    let _ = run_in(&a1.netns, "ping", &["-c", "1", "-W", "2", &a2.ip]);
    let one = dir.join("node1.svg");
    let (ok, out, err) = ctl(
        &n1.control_socket,
        &[
            "trace",
            "show",
            "--svg",
            one.to_str().unwrap(),
            "--node",
            "node1",
        ],
    );
    assert!(ok && out.contains("trace records drawn"), "{out}{err}");
    let svg1 = std::fs::read_to_string(&one).unwrap();
    assert!(
        svg1.contains(">vxlan-encap<") && svg1.contains(">node1<"),
        "one node's walk"
    );
}

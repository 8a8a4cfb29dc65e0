//! Walk 5 end to end: pods reach a host outside the cluster through SNAT masquerade.
//! The external host sees the node IP, replies come back, `conntrack list` shows the
//! connections, and with short timeouts they expire on time. Namespaces made and
//! removed by the test; needs root.

mod common;
use common::*;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podpath_lab::Lab;
use podpath_proto::{Client, ConnInfo, ConntrackFilter, Request, Response};

static SERIAL: Mutex<()> = Mutex::new(());

fn conns(lab: &Lab, f: ConntrackFilter) -> Vec<ConnInfo> {
    let mut c = Client::connect(&lab.state.nodes[0].control_socket, "test").unwrap();
    match c.call(Request::ConntrackList(f)).unwrap() {
        Response::Conntrack(v) => v,
        r => panic!("{r:?}"),
    }
}

#[test]
fn pods_reach_an_external_host_through_masquerade() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = options("s");
    o.nodes = 2;
    o.pods_per_node = 2;
    // Short UDP and ICMP timeouts, to watch entries expire.
    o.dataplane_extra = "[conntrack.timeouts]\nudp = 3\nudp_stream = 3\nicmp = 3\n".into();
    let lab = Lab::up(&o).expect("lab up");
    let n1 = lab.state.nodes[0].clone();
    let (a, b) = (n1.pods[0].clone(), n1.pods[1].clone());
    let ext = lab.state.external.clone().unwrap();
    let server = "192.168.77.100";

    // Ping out and back.
    assert!(
        run_in(&a.netns, "ping", &["-c", "2", "-W", "2", server]).0,
        "ping the external host"
    );
    // A 10 MB download, checked byte for byte; the server sees the node IP.
    let srv = serve_in(
        &ext,
        &["tcp-serve", "--port", "8080", "--bytes", "10485760"],
    );
    let (ok, out) = run_in(
        &b.netns,
        &bin(),
        &[
            "tcp-fetch",
            "--from",
            &format!("{server}:8080"),
            "--bytes",
            "10485760",
        ],
    );
    let s = srv.wait_with_output().unwrap();
    assert!(ok && s.status.success(), "download: {out}");
    let seen = String::from_utf8_lossy(&s.stdout).into_owned();
    assert!(
        seen.contains(&format!("connection from {}", n1.node_ip)),
        "server saw {seen}"
    );
    // UDP request/response; the server answers the node.
    let echo = serve_in(&ext, &["udp-echo", "--port", "5353", "--count", "3"]);
    let (ok, out) = run_in(
        &a.netns,
        &bin(),
        &[
            "udp-ping",
            "--to",
            &format!("{server}:5353"),
            "--count",
            "3",
        ],
    );
    assert!(ok, "UDP: {out}");
    assert!(
        String::from_utf8_lossy(&echo.wait_with_output().unwrap().stdout)
            .contains(&format!("to {}", n1.node_ip))
    );

    // conntrack list shows the connections, translated to the node IP.
    let all = conns(&lab, ConntrackFilter::default());
    let tcp: Vec<&ConnInfo> = all
        .iter()
        .filter(|c| c.proto == 6 && c.orig.3 == 8080)
        .collect();
    assert_eq!(tcp.len(), 1, "{all:?}");
    assert_eq!(
        (tcp[0].orig.0.as_str(), tcp[0].reply.1.as_str()),
        (b.ip.as_str(), n1.node_ip.as_str())
    );
    assert!(tcp[0].assured);
    let udp = conns(
        &lab,
        ConntrackFilter {
            proto: Some(17),
            addr: Some(a.ip.clone()),
            port: Some(5353),
        },
    );
    assert_eq!(udp.len(), 1, "filters select the UDP flow: {all:?}");
    assert!(udp[0].seen_reply);
    // With 3-second timeouts, UDP and ICMP entries are gone a few seconds later.
    let end = Instant::now() + Duration::from_secs(8);
    loop {
        let left: Vec<ConnInfo> = conns(&lab, ConntrackFilter::default())
            .into_iter()
            .filter(|c| c.proto != 6)
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < end, "entries did not expire: {left:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // Pod-to-pod across nodes is never translated.
    let a2 = lab.state.nodes[1].pods[0].clone();
    assert!(run_in(&a.netns, "ping", &["-c", "1", "-W", "2", &a2.ip]).0);
    assert!(
        conns(
            &lab,
            ConntrackFilter {
                proto: None,
                addr: Some(a2.ip.clone()),
                port: None
            }
        )
        .is_empty(),
        "pod-to-pod traffic was tracked for NAT"
    );
}

#[test]
fn router_errors_reach_the_pod_translated_and_tracepath_works() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = options("t");
    o.nodes = 1;
    o.pods_per_node = 1;
    o.external = false;
    o.router = true;
    let lab = Lab::up(&o).expect("lab up");
    let a = lab.state.nodes[0].pods[0].clone();
    let target = podpath_lab::topo::INTERNET_HOST;
    // Hop 1 is the pods' gateway (the dataplane), hop 2 the router, whose time exceeded
    // is addressed to the node and must reach the pod; the router's link has MTU 1400,
    // and its fragmentation needed must reach the pod too.
    let (ok, out) = run_in(&a.netns, "tracepath", &["-n", "-m", "5", target]);
    assert!(ok, "tracepath failed: {out}");
    assert!(out.contains("10.244.0.1"), "no gateway hop: {out}");
    assert!(
        out.contains("192.168.77.254"),
        "no router hop (time exceeded not translated): {out}"
    );
    assert!(
        out.contains("pmtu 1400"),
        "path MTU not learned (frag needed not translated): {out}"
    );
    assert!(out.contains("reached"), "{out}");
    // And a TCP download from behind the router, at the discovered path MTU.
    let inet = lab.state.internet.clone().unwrap();
    let srv = serve_in(
        &inet,
        &["tcp-serve", "--port", "8443", "--bytes", "2097152"],
    );
    let (ok, out) = run_in(
        &a.netns,
        &bin(),
        &[
            "tcp-fetch",
            "--from",
            &format!("{target}:8443"),
            "--bytes",
            "2097152",
        ],
    );
    assert!(
        srv.wait_with_output().unwrap().status.success() && ok,
        "{out}"
    );
}

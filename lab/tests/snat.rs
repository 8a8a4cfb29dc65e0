//! Walk 5 end to end: pods reach a host outside the cluster through SNAT masquerade.
//! The external host sees the node IP, replies come back, `conntrack list` shows the
//! connections, and with short timeouts they expire on time. Namespaces made and
//! removed by the test; needs root.

mod common;
use common::*;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podpath_lab::Lab;
use podpath_proto::{ConnInfo, ConntrackFilter};

static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn pods_reach_an_external_host_through_masquerade() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = options("s");
    o.nodes = 2;
    o.pods_per_node = 2;
    // Two workers: replies land on either worker's queue and go to the owner.
    o.workers = 2;
    // Short UDP and ICMP timeouts, to watch entries expire.
    o.dataplane_extra = "[conntrack.timeouts]\nudp = 3\nudp_stream = 3\nicmp = 3\n".into();
    let lab = Lab::up(&o).expect("lab up");
    let n1 = lab.state.nodes[0].clone();
    let (a, b) = (n1.pods[0].clone(), n1.pods[1].clone());
    let ext = lab.state.external.clone().unwrap();
    let server = "192.168.77.100";

    // Ping out and back.
    let (_, out) = run_in(
        &a.netns,
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "2", server],
    );
    assert!(
        podpath_lab::net::all_answered(&out),
        "ping the external host: {out}"
    );
    // Twenty short connections: twenty flows, spread by the uplink's fanout over both
    // workers, each answered through its owner; the server sees the node.
    let srv = serve_in(
        &ext,
        &[
            "whoami-serve",
            "--port",
            "8081",
            "--count",
            "20",
            "--seconds",
            "20",
        ],
    );
    let (ok, out) = run_in(
        &b.netns,
        &bin(),
        &[
            "whoami-ask",
            "--to",
            &format!("{server}:8081"),
            "--count",
            "20",
            "--expect-source",
            &n1.node_ip,
        ],
    );
    let _ = srv.wait_with_output();
    assert!(ok, "masqueraded connections: {out}");
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
    let last_udp = Instant::now();
    assert!(
        String::from_utf8_lossy(&echo.wait_with_output().unwrap().stdout)
            .contains(&format!("to {}", n1.node_ip))
    );

    // conntrack list shows the connections, translated to the node IP.
    let all = conntrack(
        &lab.state.nodes[0].control_socket,
        ConntrackFilter::default(),
    );
    let tcp: Vec<&ConnInfo> = all
        .iter()
        .filter(|c| c.proto == 6 && c.orig.3 == 8080)
        .collect();
    assert_eq!(tcp.len(), 1, "{:?}", tcp);
    assert_eq!(
        (tcp[0].orig.0.as_str(), tcp[0].reply.1.as_str()),
        (b.ip.as_str(), n1.node_ip.as_str())
    );
    assert!(tcp[0].assured);
    let udp = conntrack(
        &lab.state.nodes[0].control_socket,
        ConntrackFilter {
            proto: Some(17),
            addr: Some(a.ip.clone()),
            port: Some(5353),
        },
    );
    assert_eq!(udp.len(), 1, "filters select the UDP flow: {all:?}");
    assert!(udp[0].seen_reply);
    // With 3-second timeouts: the UDP entry is still there 1.5 s after its last
    // packet, and it (and every other non-TCP entry) is gone by 4.5 s (the table's
    // clock counts whole seconds).
    let non_tcp = || -> Vec<ConnInfo> {
        conntrack(
            &lab.state.nodes[0].control_socket,
            ConntrackFilter::default(),
        )
        .into_iter()
        .filter(|c| c.proto != 6)
        .collect()
    };
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(last_udp.elapsed()));
    assert!(
        non_tcp().iter().any(|c| c.proto == 17 && c.orig.3 == 5353),
        "the UDP entry expired early"
    );
    let gone = wait_until(
        Duration::from_millis(4500).saturating_sub(last_udp.elapsed()),
        || non_tcp().is_empty(),
    );
    assert!(gone, "entries did not expire within 4.5 s: {:?}", non_tcp());
    // Pod-to-pod across nodes is never translated.
    let a2 = lab.state.nodes[1].pods[0].clone();
    assert!(ping(&a.netns, &a2.ip), "pod to pod across nodes");
    assert!(
        conntrack(
            &lab.state.nodes[0].control_socket,
            ConntrackFilter {
                proto: None,
                addr: Some(a2.ip.clone()),
                port: None
            }
        )
        .is_empty(),
        "pod-to-pod traffic was tracked for NAT"
    );
    // Both of node 1's workers took part: replies crossed to their owner.
    let st = stats(&n1.socket);
    assert!(
        st.workers.iter().all(|w| w.rx > 0) && handoffs(&n1.socket) > 0,
        "two workers with hand-off: {:?}",
        st.workers
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

/// A masqueraded datagram too big for one frame: the tap pod's kernel fragments it,
/// every fragment leaves with the node's address (the external host reassembles
/// it and answers the node's NAT port, which goes back to the pod).
#[test]
fn fragmented_datagrams_leave_masqueraded() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(&options("q")).expect("lab up");
    let n1 = lab.state.nodes[0].clone();
    let pod = &n1.pods[1];
    assert_eq!(pod.attach, podpath_lab::topo::Attach::Tap);
    let ext = lab.state.external.clone().expect("an external host");
    let _srv = Background::in_each(
        &[ext.as_str()],
        &["udp-whoami-serve", "--port", "5353", "--seconds", "20"],
    );
    let (ok, out) = run_in(
        &pod.netns,
        &bin(),
        &[
            "udp-whoami-ask",
            "--to",
            "192.168.77.100:5353",
            "--count",
            "3",
            "--size",
            "3000",
        ],
    );
    let answered = out.lines().filter(|l| l.contains("192.168.77.100")).count();
    assert!(
        ok && answered == 3,
        "3 000-byte questions through SNAT, answered {answered} of 3:\n{out}\ndrops: {:?}",
        stats(&n1.socket)
            .drops
            .iter()
            .filter(|d| d.count > 0)
            .map(|d| (d.reason.clone(), d.count))
            .collect::<Vec<_>>()
    );
}

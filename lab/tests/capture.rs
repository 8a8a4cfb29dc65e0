//! Packet capture end to end on the lab: `podpathctl capture` takes packets at a
//! port's rx, after snat (masqueraded), before vxlan-decap (outer headers), writes
//! pcap that the real tcpdump (and tshark) read, from a file and streamed through a pipe
//! (`-w - | tcpdump -r -`), and stops at its count or its timeout.
mod common;
use common::*;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podpath_lab::Lab;

static SERIAL: Mutex<()> = Mutex::new(());

/// `tcpdump -nn -r FILE`: its lines (one per packet).
fn tcpdump(file: &std::path::Path) -> Vec<String> {
    let o = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(file)
        .output()
        .expect("tcpdump");
    assert!(
        o.status.success(),
        "tcpdump -r: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// Runs `podpathctl capture ARGS` against `sock` in the background while `traffic`
/// runs, and returns its result once it stops.
fn capture_while(sock: &std::path::Path, args: &[&str], traffic: impl FnOnce()) -> (bool, String) {
    let child = Command::new(podpathctl())
        .arg("--socket")
        .arg(sock)
        .arg("capture")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    traffic();
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A capture into `file` with `args` (space-separated) while `traffic` runs: its
/// success, podpathctl's report, and tcpdump's lines of the file.
fn take(
    sock: &std::path::Path,
    file: &std::path::Path,
    args: &str,
    traffic: impl FnOnce(),
) -> (bool, String, Vec<String>) {
    let mut a: Vec<&str> = args.split_whitespace().collect();
    let f = file.to_str().unwrap();
    a.extend(["-w", f]);
    let (ok, err) = capture_while(sock, &a, traffic);
    let lines = if ok { tcpdump(file) } else { Vec::new() };
    (ok, err, lines)
}

#[test]
fn capture_writes_pcap_that_tcpdump_reads_at_ports_and_stages() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(&options("p")).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let (a1, a2) = (n1.pods[0].clone(), n2.pods[0].clone());
    // The external host (its namespace is lab.state.external).
    assert!(lab.state.external.is_some());
    let ext_ip = "192.168.77.100";
    assert!(ping(&a1.netns, &a2.ip));
    let dir = TempDir::new("capture");
    let pings = |ns: &str, to: &str, n: &str| {
        let _ = run_in(ns, "ping", &["-c", n, "-i", "0.2", "-W", "1", to]);
    };
    let req = format!("IP {} > {}: ICMP echo request", a1.ip, a2.ip);

    // 1. A pod's port, rx: its echo requests as it sent them.
    let f = dir.join("rx.pcap");
    let args = format!("--port {} --filter icmp --count 4 --timeout 20", a1.port);
    let (ok, err, lines) = take(&n1.control_socket, &f, &args, || {
        pings(&a1.netns, &a2.ip, "6")
    });
    assert!(ok && err.contains("4 packet(s) captured"), "{err}");
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines.iter().all(|l| l.contains(&req)), "{lines:?}");
    // tshark reads it too, field by field.
    let o = Command::new("tshark")
        .args(["-r"])
        .arg(&f)
        .args(["-T", "fields", "-e", "ip.src", "-e", "icmp.type"])
        .output()
        .expect("tshark (scripts/setup.sh installs it)");
    let fields = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = format!("{}\t8", a1.ip);
    assert_eq!(
        fields.lines().filter(|l| *l == want).count(),
        4,
        "tshark: {fields}"
    );

    // 2. After snat: the same pod to the external host, its source now the node.
    let args = "--stage snat --after --filter icmp --count 2 --timeout 20";
    let (ok, err, lines) = take(&n1.control_socket, &dir.join("snat.pcap"), args, || {
        pings(&a1.netns, ext_ip, "4")
    });
    assert!(ok, "{err}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let masq = format!("IP {} > {}: ICMP echo request", n1.node_ip, ext_ip);
    assert!(
        lines.iter().all(|l| l.contains(&masq)),
        "after snat: {lines:?}"
    );

    // 3. Before vxlan-decap on node2: the outer headers; tcpdump prints each VXLAN
    // packet's outer line, then its inner one.
    let args = "--stage vxlan-decap --count 2 --timeout 20";
    let (ok, err, lines) = take(&n2.control_socket, &dir.join("decap.pcap"), args, || {
        pings(&a1.netns, &a2.ip, "4")
    });
    assert!(ok, "{err}");
    let outer: Vec<&String> = lines.iter().filter(|l| l.contains("VXLAN")).collect();
    assert_eq!(outer.len(), 2, "{lines:?}");
    let from = format!("IP {}.", n1.node_ip);
    assert!(
        outer
            .iter()
            .all(|l| l.contains(&from) && l.contains("vni 1")),
        "before vxlan-decap: {lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(&req)).count(),
        2,
        "{lines:?}"
    );

    // 4. Streamed: podpathctl capture ... -w - | tcpdump -r -
    let script = format!(
        "{} --socket {} capture --port {} --filter icmp --count 3 --timeout 20 -w - | tcpdump -nn -r - 2>/dev/null",
        podpathctl().display(),
        n1.control_socket.display(),
        a1.port
    );
    let pipe = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    pings(&a1.netns, &a2.ip, "5");
    let o = pipe.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        text.lines().filter(|l| l.contains("ICMP echo")).count(),
        3,
        "{text}"
    );

    // 5. Bounded in time: nothing matches, it stops at its timeout.
    let t0 = Instant::now();
    // "udp and port 9" is one argument to --filter: no `take` here.
    let a: Vec<String> = vec![
        "--port".into(),
        a1.port.clone(),
        "--filter".into(),
        "udp and port 9".into(),
        "--count".into(),
        "1000".into(),
        "--timeout".into(),
        "1".into(),
        "-w".into(),
        dir.join("none.pcap").display().to_string(),
    ];
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (ok, err) = capture_while(&n1.control_socket, &a, || {});
    assert!(ok && err.contains("0 packet(s) captured"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(tcpdump(&dir.join("none.pcap")).is_empty());
    // A bad filter or stage is refused before anything starts.
    let (ok, _, err) = ctl(
        &n1.control_socket,
        &[
            "capture",
            "--port",
            &a1.port,
            "--filter",
            "tcp or udp",
            "-w",
            "/dev/null",
        ],
    );
    assert!(!ok && err.contains("not understood"), "{err}");
    let (ok, _, err) = ctl(
        &n1.control_socket,
        &["capture", "--stage", "no-such", "-w", "/dev/null"],
    );
    assert!(!ok && err.contains("no stage"), "{err}");
    // Traffic went on meanwhile.
    assert!(ping(&a1.netns, &a2.ip));
}

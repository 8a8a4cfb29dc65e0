//! End to end, in network namespaces the test makes and removes: two pods bridged by
//! a real dataplane (one via net_af_packet on a veth, one via net_tap), ARP, ping, a
//! 10 MB TCP transfer checked byte for byte while a third pod is hot-plugged and
//! unplugged, and the counters' accounting. Needs root (namespaces).

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podpath_lab::topo::{self, Attach, LabOptions};
use podpath_lab::{net, Lab};

/// The machine has two cores: run the dataplane tests one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn unique(tag: &str) -> String {
    format!("{tag}{}", std::process::id() % 1_000_000)
}

#[test]
fn two_pods_bridged_arp_ping_tcp_and_hotplug() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = LabOptions::new(&unique("b"));
    o.nodes = 1;
    o.pods_per_node = 2;
    o.external = false;
    o.dataplane = topo::default_dataplane();
    o.state_dir = std::env::temp_dir().join("podpath-lab-tests");
    let mut lab = Lab::up(&o).expect("lab up");
    // Drops counted from here on are the test's; before, the dataplane started
    // (frames arriving before the node identity is set have no bridge domain).
    let at_start = stats(&lab.state.nodes[0].socket);
    let node = lab.state.nodes[0].clone();
    let (a, b) = (node.pods[0].clone(), node.pods[1].clone());
    assert_eq!(
        (a.attach.clone(), b.attach.clone()),
        (Attach::AfPacket, Attach::Tap)
    );

    // ARP through the bridge, then ICMP.
    assert!(ping(&a.netns, &b.ip), "pod a cannot ping pod b");
    let neigh = net::ip_in(&a.netns, &["neigh", "show", &b.ip]).unwrap();
    assert!(
        neigh.contains(&mac_of(&b.netns, "eth0")),
        "ARP did not resolve b's MAC: {neigh}"
    );
    assert!(ping(&b.netns, &a.ip), "pod b cannot ping pod a");

    // At least 10 MB over TCP, checked byte for byte, while pod c is plugged in and
    // out: paced, and stopped only after the hot-plugs, so they overlap the stream.
    let stop = std::env::temp_dir().join(unique("pp-hotplug-stop"));
    let _ = std::fs::remove_file(&stop);
    let rx = serve_in(&b.netns, &["tcp-recv", "--port", "5001", "--seed", "42"]);
    let mut tx = net::command_in(&a.netns, &bin())
        .args([
            "tcp-send",
            "--to",
            &format!("{}:5001", b.ip),
            "--stop-file",
            &stop.display().to_string(),
            "--rate-mbps",
            "60",
            "--seed",
            "42",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pod_a_bytes = |node: &podpath_lab::topo::Node| {
        stats(&node.socket)
            .ports
            .iter()
            .find(|p| p.name == "pod-a")
            .map_or(0, |p| p.rx_bytes)
    };
    assert!(
        wait_until(Duration::from_secs(10), || pod_a_bytes(&node) > 1_000_000),
        "the stream did not start"
    );
    let c = topo::add_pod(&mut lab, "node1", 'c', Attach::Tap).expect("hot-plug pod c");
    assert!(ping(&a.netns, &c.ip), "hot-plugged pod c got no traffic");
    topo::del_pod(&mut lab, &c.name).expect("unplug pod c");
    let d = topo::add_pod(&mut lab, "node1", 'd', Attach::AfPacket).expect("hot-plug pod d");
    assert!(ping(&d.netns, &b.ip), "hot-plugged pod d got no traffic");
    assert!(
        tx.try_wait().unwrap().is_none(),
        "the stream ended before the hot-plugs did"
    );
    // pod-a's port counts frames: 10 MiB of payload in 1 448-byte segments of
    // 1 514-byte frames is 10.96 MB of them, plus ACKs and the rest.
    let frames_for_10_mib = (10u64 << 20) * 1514 / 1448;
    assert!(
        wait_until(Duration::from_secs(30), || pod_a_bytes(&node)
            > frames_for_10_mib + 200_000),
        "less than 10 MiB went through"
    );
    std::fs::write(&stop, b"").unwrap();
    let tx = tx.wait_with_output().unwrap();
    let rxo = rx.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&stop);
    let (to, ro) = (
        String::from_utf8_lossy(&tx.stdout).into_owned(),
        String::from_utf8_lossy(&rxo.stdout).into_owned(),
    );
    assert!(
        tx.status.success() && rxo.status.success(),
        "TCP transfer failed: {to} / {ro}"
    );
    let sent: u64 = to
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(sent >= 10 << 20, "sent only {sent} bytes");
    assert!(
        ro.contains(&format!("received {sent} bytes, all correct")),
        "{ro}"
    );

    // Every packet is accounted for: rx + replicated = tx + dropped (by reason).
    let end = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = stats(&node.socket);
        if s.rx + s.replicated == s.tx + s.dropped || Instant::now() > end {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        s.rx + s.replicated,
        s.tx + s.dropped,
        "counters do not balance: {s:?}"
    );
    // And the drops since the lab was up are the ones a clean run may have: a frame
    // for a port that was just unplugged, a flood with nowhere to go, a full device
    // queue, the underlay's traffic for others (the kernel's IPv6 neighbour
    // discovery on the segment). Never a frame that failed to parse (corruption in
    // the dataplane or the ports).
    let allowed = [
        "uplink-not-for-us",
        "tx-no-port",
        "bridge-no-flood-port",
        "bridge-same-port",
        "tx-full",
    ];
    let unexpected: Vec<(&str, u64)> = s
        .drops
        .iter()
        .zip(&at_start.drops)
        .map(|(d, d0)| (d.reason.as_str(), d.count - d0.count))
        .filter(|&(r, n)| n > 0 && !allowed.contains(&r))
        .collect();
    assert!(unexpected.is_empty(), "unexpected drops: {unexpected:?}");
    assert!(
        s.rx > 7000,
        "a 10 MB transfer is more than {} packets",
        s.rx
    );
    let pa = s.ports.iter().find(|p| p.name == "pod-a").unwrap();
    assert!(pa.rx_bytes > 10_485_760, "pod-a sent {} bytes", pa.rx_bytes);

    let prefix = lab.state.prefix.clone();
    lab.down();
    assert!(
        !net::netns_list()
            .iter()
            .any(|n| n.starts_with(&format!("{prefix}-"))),
        "namespaces left behind"
    );
}

fn dataplane_fails_with(config: &str, expect: &str) {
    let dir = std::env::temp_dir().join(unique("ppcfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(topo::default_dataplane())
        .args(["--config", &path.display().to_string()])
        .output()
        .expect("run dataplane");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "dataplane accepted a bad configuration:\n{config}"
    );
    assert!(
        err.contains(expect),
        "error does not name the problem ({expect:?}):\n{err}"
    );
}

#[test]
fn bad_configuration_exits_nonzero_naming_the_problem() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let prefix = unique("ppbad");
    let base = format!(
        "[eal]\nfile_prefix = \"{prefix}\"\npci = false\nhugepages = \"off\"\n[dataplane]\nsocket = \"/tmp/{prefix}.sock\"\nstate_dir = \"/dev/shm/{prefix}.state\"\n"
    );
    let _state = TempDir(std::path::PathBuf::from(format!("/dev/shm/{prefix}.state")));
    dataplane_fails_with(
        &base.replace("[eal]\n", "[eal]\nlcores = \"0,77\"\n"),
        "eal.lcores",
    );
    dataplane_fails_with(
        &base.replace("[eal]\n", "[eal]\nlcores = \"0\"\n"),
        "eal.lcores",
    );
    dataplane_fails_with(
        &format!("{base}[[port]]\nname = \"x\"\ndevice = \"net_nosuchdev0\"\n"),
        "net_nosuchdev0",
    );
    // Sizes beyond DPDK's memory or the machine are refused before EAL starts, by
    // name (they once crashed EAL or aborted an allocation), also by --check.
    dataplane_fails_with(
        &base
            .replace("[dataplane]\n", "[dataplane]\nmbufs = 4000000\n")
            .replace("pci = false", "pci = false\nmemory_mb = 64"),
        "dataplane.mbufs",
    );
    dataplane_fails_with(
        &base.replace("[dataplane]\n", "[dataplane]\nmbufs = 2147483648\n"),
        "dataplane.mbufs",
    );
    dataplane_fails_with(
        &format!("{base}[conntrack]\ncapacity = 4000000000\n"),
        "conntrack.capacity",
    );
    for bad in [
        base.replace("[dataplane]\n", "[dataplane]\nmbufs = 2147483648\n"),
        format!("{base}[conntrack]\ncapacity = 4000000000\n"),
    ] {
        let dir = std::env::temp_dir().join(unique("ppchk"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.toml");
        std::fs::write(&path, &bad).unwrap();
        let out = Command::new(topo::default_dataplane())
            .args(["--check", "--config", &path.display().to_string()])
            .output()
            .expect("run dataplane");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!out.status.success(), "--check passed:\n{bad}");
    }
    // A state directory that cannot be made: named, before any port is touched.
    dataplane_fails_with(
        &base.replace(
            &format!("state_dir = \"/dev/shm/{prefix}.state\""),
            "state_dir = \"/proc/podpath-no-such\"",
        ),
        "dataplane.state_dir",
    );
    dataplane_fails_with("[eal\n", "bad.toml");
}

/// A network namespace of this test's own, deleted on drop (also on failure).
struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = net::ip(&["netns", "del", &self.0]);
    }
}

/// A child process of this test's, killed (by PID) and reaped on drop.
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A configuration file's ports and `[node]` are applied before the workers run: the
/// dataplane is ready at once, not after 5 s per change waiting for workers that are
/// not launched yet (with `[node]` it even failed to start: "generation N is
/// published but not every worker applied it"; bench/side-by-side.sh's nat job
/// found it).
#[test]
fn a_dataplane_configured_with_a_port_and_a_node_is_ready_at_once() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let prefix = unique("ppnc");
    let ns = format!("{prefix}-ns");
    net::ip(&["netns", "add", &ns]).expect("netns");
    let _ns = Ns(ns.clone());
    let dir = TempDir::new(&prefix);
    let cfg = dir.join("node.toml");
    // The tap is made by DPDK inside the test's namespace, removed with it.
    std::fs::write(
        &cfg,
        format!(
            "[eal]\nlcores = \"0,1\"\nfile_prefix = \"{prefix}\"\nmemory_mb = 64\npci = false\nhugepages = \"off\"\n\
             [dataplane]\nsocket = \"{}\"\nstate_dir = \"/dev/shm/{prefix}.state\"\n[idle]\nenabled = true\n\
             [[port]]\nname = \"up0\"\ndevice = \"net_tap0,iface={prefix}u\"\n\
             [node]\nnode_ip = \"192.168.77.11\"\nunderlay_cidr = \"192.168.77.0/24\"\n\
             pod_cidr = \"10.244.0.0/24\"\ncluster_cidr = \"10.244.0.0/16\"\nuplink = \"up0\"\n",
            dir.join("dp.sock").display()
        ),
    )
    .unwrap();
    let _state = TempDir(std::path::PathBuf::from(format!("/dev/shm/{prefix}.state")));
    let sock = dir.join("notify");
    let rx = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t = Instant::now();
    let dp = Guard(
        net::command_in(&ns, &topo::default_dataplane().display().to_string())
            .args(["--config", &cfg.display().to_string()])
            .env("NOTIFY_SOCKET", &sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut buf = [0u8; 512];
    let ready = rx
        .recv(&mut buf)
        .map(|n| String::from_utf8_lossy(&buf[..n]).to_string())
        .unwrap_or_default();
    let took = t.elapsed();
    assert!(
        ready.starts_with("READY=1\n") && ready.contains("STATUS=1 worker(s) forwarding"),
        "the dataplane did not become ready: {ready:?}"
    );
    // EAL and the tap take about a second here; one wait for unlaunched workers
    // would add 5.
    assert!(took < Duration::from_secs(4), "ready after {took:?}");
    // And it forwards on the configured port at once: the underlay side of the
    // tap asks for the node IP, which only a worker polling the port answers.
    let tap = format!("{prefix}u");
    net::ip_in(&ns, &["addr", "add", "192.168.77.1/24", "dev", &tap]).expect("address");
    net::ip_in(&ns, &["link", "set", &tap, "up"]).expect("up");
    let answered = (0..10).any(|_| {
        let _ = net::command_in(&ns, "ping")
            .args(["-c", "1", "-W", "1", "192.168.77.11"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        net::ip_in(&ns, &["neigh", "show", "192.168.77.11", "dev", &tap])
            .is_ok_and(|n| n.contains("lladdr"))
    });
    assert!(
        answered,
        "no ARP answer from the node IP through the configured port"
    );
    net::kill(dp.0.id(), "TERM");
}

/// Issue 15, supervision by systemd: the dataplane speaks the notify protocol (READY
/// once its workers forward, WATCHDOG while they poll, STOPPING on SIGTERM), and the
/// shipped units (deploy/systemd/) pass `systemd-analyze verify`. The dataplane runs
/// with no ports, inside a namespace of this test's own.
#[test]
fn the_dataplane_speaks_systemds_notify_protocol_and_the_units_verify() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let prefix = unique("ppsd");
    let ns = format!("{prefix}-ns");
    net::ip(&["netns", "add", &ns]).expect("netns");
    let _ns = Ns(ns.clone());
    let dir = TempDir::new(&prefix);
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[eal]\nlcores = \"0,1\"\nfile_prefix = \"{prefix}\"\nmemory_mb = 64\npci = false\nhugepages = \"off\"\n\
             [dataplane]\nsocket = \"{}\"\nstate_dir = \"/dev/shm/{prefix}.state\"\n[idle]\nenabled = true\n",
            dir.join("dp.sock").display()
        ),
    )
    .unwrap();
    let _state = TempDir(std::path::PathBuf::from(format!("/dev/shm/{prefix}.state")));
    let sock = dir.join("notify");
    let rx = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut dp = Guard(
        net::command_in(&ns, &topo::default_dataplane().display().to_string())
            .args(["--config", &cfg.display().to_string()])
            .env("NOTIFY_SOCKET", &sock)
            .env("WATCHDOG_USEC", "400000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut buf = [0u8; 512];
    let mut next = || {
        rx.recv(&mut buf)
            .map(|n| String::from_utf8_lossy(&buf[..n]).to_string())
            .unwrap_or_default()
    };
    let ready = next();
    assert!(
        ready.starts_with("READY=1\n") && ready.contains("STATUS=1 worker(s) forwarding"),
        "{ready:?}"
    );
    let t = Instant::now();
    let feeds = (0..3).map(|_| next()).collect::<Vec<_>>();
    assert!(
        feeds.iter().all(|m| m == "WATCHDOG=1") && t.elapsed() < Duration::from_secs(2),
        "{feeds:?} in {:?}",
        t.elapsed()
    );
    net::kill(dp.0.id(), "TERM");
    let mut last = String::new();
    for _ in 0..10 {
        last = next();
        if last != "WATCHDOG=1" {
            break;
        }
    }
    assert_eq!(last, "STOPPING=1");
    let _ = dp.0.wait();

    // The units, with ExecStart pointed at this build's binaries.
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is missing (scripts/setup.sh installs systemd)");
    };
    assert!(out.status.success());
    let units = dir.join("units");
    std::fs::create_dir_all(&units).unwrap();
    let bin_dir = topo::default_dataplane().parent().unwrap().to_path_buf();
    for u in ["podpath-dataplane", "podpath-control", "podpath-agent"] {
        let text = std::fs::read_to_string(format!(
            "{}/../deploy/systemd/{u}.service",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
        .replace("/usr/bin/", &format!("{}/", bin_dir.display()));
        let p = units.join(format!("{u}.service"));
        std::fs::write(&p, text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no", &p.display().to_string()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        // Other units' warnings (the host's own) are not ours: only lines naming ours.
        let ours: Vec<&str> = err.lines().filter(|l| l.contains("podpath")).collect();
        assert!(ours.is_empty(), "{u}.service: {ours:?}");
    }
}

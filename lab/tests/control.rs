//! The control service end to end (issue: control service, protocol, podpathctl):
//! attach/detach churn under a running stream, the dataplane killed and restarted by a
//! supervisor, the control service restarted, and bad requests on both sockets. All
//! in namespaces the test makes and removes; needs root.

mod common;
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podpath_lab::topo::{self, Attach, LabOptions};
use podpath_lab::{net, Lab};
use podpath_proto::{
    codec, Client, ClientError, DesiredState, EndpointSpec, Envelope, ErrorKind, NodeSpec,
    PortInfo, PortSpec, RemoteSpec, Request, Response, ServiceSpec,
};

/// Two cores: one lab at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn lab(tag: &str, pods: usize) -> (Lab, LabOptions) {
    let mut o = LabOptions::new(&format!("{tag}{}", std::process::id() % 1_000_000));
    o.nodes = 1;
    o.pods_per_node = pods;
    o.external = false;
    o.state_dir = std::env::temp_dir().join("podpath-lab-tests");
    (Lab::up(&o).expect("lab up"), o)
}

fn call(sock: &Path, req: Request) -> Result<Response, ClientError> {
    Client::connect(sock, "test")?.call(req)
}

fn state(lab: &Lab) -> DesiredState {
    match call(&lab.state.nodes[0].control_socket, Request::StateShow).expect("state") {
        Response::State(s) => s,
        r => panic!("unexpected {r:?}"),
    }
}

fn ports(sock: &Path) -> Vec<PortInfo> {
    match call(sock, Request::PortList).expect("port list") {
        Response::Ports(mut p) => {
            for x in &mut p {
                x.xstats.clear();
            }
            p
        }
        r => panic!("unexpected {r:?}"),
    }
}

/// Waits (pinging once a round) until `ip` answers, then requires every one of
/// three more pings answered, all within `within`.
fn reachable(ns: &str, ip: &str, within: Duration) -> bool {
    wait_until(within, || {
        net::exec_in(ns, "ping", &["-c", "1", "-W", "1", ip]).is_ok()
    }) && ping(ns, ip)
}

/// No answer at all to three pings.
fn silent(ns: &str, ip: &str) -> bool {
    let (_, out) = run_in(ns, "ping", &["-c", "3", "-i", "0.2", "-W", "1", ip]);
    out.contains(" 0 received")
}

/// Both ends of a stream; killed (they are our children) if a test fails first.
struct Stream {
    rx: Option<Child>,
    tx: Option<Child>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        for c in [self.rx.as_mut(), self.tx.as_mut()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A byte-checked TCP stream from `from` to `to_ip` (in `to_ns`), paced.
fn stream(from: &str, to_ns: &str, to_ip: &str, port: u16, pace: &[&str]) -> Stream {
    let rx = serve_in(
        to_ns,
        &["tcp-recv", "--port", &port.to_string(), "--seed", "5"],
    );
    let tx = net::command_in(from, &bin())
        .args([
            "tcp-send",
            "--to",
            &format!("{to_ip}:{port}"),
            "--seed",
            "5",
        ])
        .args(pace)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    Stream {
        rx: Some(rx),
        tx: Some(tx),
    }
}

/// Waits for both ends; returns (sent, received) bytes, panicking on a failed check.
fn finish(mut s: Stream) -> (u64, u64) {
    let tx = s.tx.take().unwrap().wait_with_output().unwrap();
    let rx = s.rx.take().unwrap().wait_with_output().unwrap();
    let (to, ro) = (
        String::from_utf8_lossy(&tx.stdout),
        String::from_utf8_lossy(&rx.stdout),
    );
    assert!(
        tx.status.success() && rx.status.success(),
        "stream failed: sender {to:?} receiver {ro:?}"
    );
    let num = |s: &str, w: &str| -> u64 {
        s.split_whitespace()
            .skip_while(|x| *x != w)
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (num(&to, "sent"), num(&ro, "received"))
}

#[test]
fn attach_and_detach_ten_times_under_a_running_stream() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut lab, _) = lab("c", 2);
    let n = lab.state.nodes[0].clone();
    let (a, b) = (
        lab.state.nodes[0].pods[0].clone(),
        lab.state.nodes[0].pods[1].clone(),
    );
    let stop = std::env::temp_dir().join(format!("pp-stop-{}", std::process::id()));
    let _ = std::fs::remove_file(&stop);
    let s = stream(
        &a.netns,
        &b.netns,
        &b.ip,
        5101,
        &[
            "--stop-file",
            &stop.display().to_string(),
            "--rate-mbps",
            "40",
        ],
    );
    // Each round a new pod (new name and IP, as IPAM would give): tap and af_packet
    // in turn, through the control service, while the stream runs.
    for (i, letter) in ('c'..='l').enumerate() {
        let kind = if i % 2 == 0 {
            Attach::Tap
        } else {
            Attach::AfPacket
        };
        let c = topo::add_pod(&mut lab, "node1", letter, kind.clone())
            .unwrap_or_else(|e| panic!("attach {i}: {e:#}"));
        assert!(
            reachable(&a.netns, &c.ip, Duration::from_secs(10)),
            "round {i}: new pod ({kind:?}) unreachable"
        );
        topo::del_pod(&mut lab, &c.name).unwrap_or_else(|e| panic!("detach {i}: {e:#}"));
        assert!(
            !ports(&n.socket).iter().any(|p| p.name == c.port),
            "round {i}: the dataplane still has {}",
            c.port
        );
    }
    std::fs::write(&stop, b"").unwrap();
    let (sent, got) = finish(s);
    let _ = std::fs::remove_file(&stop);
    assert!(sent > 1_000_000, "the stream barely ran ({sent} bytes)");
    assert_eq!(sent, got, "stream lost bytes");
    // Two pods, plus the node's uplink and host ports, in both the desired state and
    // the dataplane.
    assert_eq!(
        state(&lab).ports.len(),
        2 + 2,
        "the churned pod left state behind"
    );
    assert_eq!(
        ports(&n.socket).len(),
        2 + 2,
        "the dataplane kept a churned port"
    );
    // A detached pod no longer answers, though its namespace and interface are still
    // there (detached by the control service alone, not by deleting the pod).
    for (letter, kind) in [('m', Attach::AfPacket), ('n', Attach::Tap)] {
        let p = topo::add_pod(&mut lab, "node1", letter, kind.clone()).expect("attach");
        assert!(
            reachable(&a.netns, &p.ip, Duration::from_secs(10)),
            "{kind:?} pod unreachable"
        );
        call(
            &n.control_socket,
            Request::PortDetach {
                name: p.port.clone(),
            },
        )
        .expect("detach");
        assert!(!ports(&n.socket).iter().any(|x| x.name == p.port));
        assert!(state(&lab).ports.iter().all(|x| x.name != p.port));
        assert!(
            silent(&a.netns, &p.ip),
            "detached {kind:?} pod still answers"
        );
        topo::del_pod(&mut lab, &p.name).expect("remove the pod");
    }
}

/// What the dataplane holds, in a comparable form: routes, static MACs, Services
/// and ports (xstats cleared).
fn dataplane_view(
    sock: &Path,
) -> (
    Vec<podpath_proto::RouteInfo>,
    Vec<String>,
    Vec<ServiceSpec>,
    Vec<PortInfo>,
) {
    let routes = match call(sock, Request::RouteList).expect("routes") {
        Response::Routes(mut r) => {
            r.sort_by(|a, b| a.prefix.cmp(&b.prefix));
            r
        }
        r => panic!("{r:?}"),
    };
    let macs = match call(sock, Request::MacList).expect("macs") {
        Response::Macs(m) => {
            let mut v: Vec<String> = m
                .iter()
                .filter(|m| m.is_static)
                .map(|m| format!("{} {} {}", m.bridge, m.mac, m.port))
                .collect();
            v.sort();
            v
        }
        r => panic!("{r:?}"),
    };
    let services = match call(sock, Request::ServiceList).expect("services") {
        Response::Services(s) => s,
        r => panic!("{r:?}"),
    };
    (routes, macs, services, ports(sock))
}

#[test]
fn killed_dataplane_comes_back_without_any_command() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Two nodes (so node 1 has a remote node and its route), a Service with
    // endpoints on both, and a static MAC: all of it must come back.
    let mut opts = LabOptions::new(&format!("k{}", std::process::id() % 1_000_000));
    opts.external = false;
    // Pods a and c are af_packet; b is a tap the dataplane made inside the pod: it
    // persists (DPDK's `persist`), so it keeps its address through the crash.
    opts.pods_per_node = 3;
    opts.state_dir = std::env::temp_dir().join("podpath-lab-tests");
    let mut lab = Lab::up(&opts).expect("lab up");
    let (n, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let (a, b, remote) = (n.pods[0].clone(), n.pods[2].clone(), n2.pods[0].clone());
    assert_eq!(
        (a.attach.clone(), b.attach.clone()),
        (Attach::AfPacket, Attach::AfPacket)
    );
    let web = ServiceSpec::new(
        "default/web",
        "10.96.0.10",
        80,
        "tcp",
        [&b, &remote]
            .iter()
            .map(|p| EndpointSpec::ready(&p.ip, 8080))
            .collect(),
    );
    let r = call(&n.control_socket, Request::ServiceSet(web.clone())).unwrap();
    assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    let mac = mac_of(&b.netns, "eth0");
    call(
        &n.control_socket,
        Request::MacAdd {
            bridge: 1,
            mac: mac.clone(),
            port: b.port.clone(),
        },
    )
    .expect("mac add");
    assert!(reachable(&a.netns, &remote.ip, Duration::from_secs(5)));
    let before = dataplane_view(&n.socket);
    let desired = state(&lab);
    assert!(
        before.1.iter().any(|m| m.contains(&mac)),
        "static MAC missing: {:?}",
        before.1
    );
    assert_eq!(before.2, desired.services);

    let tap_pod = n.pods[1].clone();
    assert_eq!(tap_pod.attach, Attach::Tap);
    assert!(reachable(
        &tap_pod.netns,
        &remote.ip,
        Duration::from_secs(5)
    ));
    let old = lab.state.nodes[0].dataplane_pid.unwrap();
    lab.stop_dataplane(0, "KILL");
    assert!(!net::pid_alive(old), "kill -9 did not kill the dataplane");
    // The tap outlives the process, addressed as the CNI left it.
    let addr = net::ip_in(&tap_pod.netns, &["-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap_or_default();
    assert!(
        addr.contains(&format!("{}/24", tap_pod.ip)),
        "the tap pod lost its interface or address with the process: {addr:?}"
    );
    // A supervisor restarts the process; nobody tells the control service anything.
    lab.start_dataplane(0, &opts).expect("restart dataplane");
    lab.wait_in_sync(0, Duration::from_secs(30))
        .expect("back in sync");
    let after = dataplane_view(&n.socket);
    assert_eq!(after.0, before.0, "routes differ after the restart");
    assert_eq!(after.1, before.1, "static MACs differ after the restart");
    assert_eq!(
        after.2, desired.services,
        "Services differ from the desired state"
    );
    let names = |p: &[PortInfo]| {
        let mut v: Vec<(String, String)> = p
            .iter()
            .map(|x| (x.name.clone(), x.device.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&after.3),
        names(&before.3),
        "ports differ after the restart"
    );
    assert!(
        after.0.iter().any(|r| r.prefix == n2.pod_cidr),
        "no route to the remote node's pods: {:?}",
        after.0
    );
    // Traffic: across the overlay, and through the Service to both endpoints.
    assert!(
        reachable(&a.netns, &remote.ip, Duration::from_secs(30)),
        "overlay traffic did not come back"
    );
    // The tap pod too, with nobody re-addressing it.
    assert!(
        reachable(&tap_pod.netns, &remote.ip, Duration::from_secs(10)),
        "the tap pod did not come back on its persisted interface"
    );
    let servers = Background::in_each(
        &[&b.netns, &remote.netns],
        &[
            "whoami-serve",
            "--port",
            "8080",
            "--count",
            "40",
            "--seconds",
            "20",
        ],
    );
    let (ok, out) = run_in(
        &a.netns,
        &bin(),
        &[
            "whoami-ask",
            "--to",
            "10.96.0.10:80",
            "--count",
            "40",
            "--expect-source",
            "self",
        ],
    );
    drop(servers);
    if !ok {
        let drops = match call(&n.socket, Request::Stats) {
            Ok(Response::Stats(s)) => format!("{:?}", s.drops),
            r => format!("{r:?}"),
        };
        let ct = call(&n.socket, Request::ConntrackList(Default::default()));
        panic!("the Service does not answer after the restart: {out}\ndrops: {drops}\nconntrack: {ct:?}");
    }
    assert!(
        out.contains(&format!("{} ", b.ip)) && out.contains(&format!("{} ", remote.ip)),
        "not balanced over both endpoints after the restart: {out}"
    );
}

/// The external host (it has no route to the pods: only masquerade reaches it).
const EXT: &str = "192.168.77.100";

/// Traffic through masquerade that must outlive a restart: a paced, byte-checked
/// download from the external host, and a UDP probe every 2 ms whose silences are
/// the forwarding gaps. Servers and clients are our children, stopped on drop.
struct Masqueraded {
    _server: Background,
    _echo: Background,
    download: Option<Child>,
    probe: Option<Child>,
}

impl Masqueraded {
    /// `mb` MB at 2 Mbit/s from `ext` to `pod_ns`; the probe runs `probe_s` seconds.
    fn start(ext: &str, pod_ns: &str, mb: u64, seed: &str, probe_s: u64) -> Masqueraded {
        let bytes = (mb * 1_000_000).to_string();
        let server = Background(vec![serve_in(
            ext,
            &[
                "tcp-serve",
                "--port",
                "9000",
                "--bytes",
                &bytes,
                "--seed",
                seed,
                "--rate-mbps",
                "2",
            ],
        )]);
        let echo = Background::in_each(&[ext], &["udp-echo", "--port", "9001", "--count", "60000"]);
        let download = net::command_in(pod_ns, &bin())
            .args([
                "tcp-fetch",
                "--from",
                &format!("{EXT}:9000"),
                "--bytes",
                &bytes,
                "--seed",
                seed,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let probe = net::command_in(pod_ns, &bin())
            .args([
                "udp-probe",
                "--to",
                &format!("{EXT}:9001"),
                "--interval-ms",
                "2",
            ])
            .args(["--seconds", &probe_s.to_string(), "--gap-ms", "40"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Masqueraded {
            _server: server,
            _echo: echo,
            download: Some(download),
            probe: Some(probe),
        }
    }

    /// Waits for both: whether the download arrived whole (its error if not), and
    /// what the probe printed.
    fn finish(mut self) -> (Result<(), String>, String) {
        let d = self.download.take().unwrap().wait_with_output().unwrap();
        let p = self.probe.take().unwrap().wait_with_output().unwrap();
        let got = if d.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&d.stderr).into_owned())
        };
        (got, String::from_utf8_lossy(&p.stdout).into_owned())
    }
}

impl Drop for Masqueraded {
    fn drop(&mut self) {
        for c in [self.download.as_mut(), self.probe.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Issue 15: connections outlive the dataplane. A masqueraded download from the
/// external host (which has no route to the pods: only the resumed translation can
/// carry it), a byte-checked stream through a ClusterIP to the other node, and a UDP
/// probe through masquerade all run while node 1's dataplane is killed with -9 and
/// restarted, and then upgraded (stopped, and started from another binary file).
/// Every byte must arrive as sent; the probe's silences are the forwarding gaps.
#[test]
fn connections_survive_kill_9_and_an_upgrade_of_the_dataplane() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut opts = LabOptions::new(&format!("u{}", std::process::id() % 1_000_000));
    opts.state_dir = std::env::temp_dir().join("podpath-lab-tests");
    let mut lab = Lab::up(&opts).expect("lab up");
    let (n, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let (a, remote) = (n.pods[0].clone(), n2.pods[0].clone());
    let ext = lab.state.external.clone().expect("external host");
    let svc = ServiceSpec::new(
        "default/stream",
        "10.96.0.30",
        8080,
        "tcp",
        vec![EndpointSpec::ready(&remote.ip, 8080)],
    );
    let r = call(&n.control_socket, Request::ServiceSet(svc)).unwrap();
    assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    assert!(reachable(&a.netns, &remote.ip, Duration::from_secs(10)));
    assert!(reachable(&a.netns, EXT, Duration::from_secs(10)));

    // About 36 s of each: a 9 MB download at 2 Mbit/s, a 2 Mbit/s stream.
    let masq = Masqueraded::start(&ext, &a.netns, 9, "7", 34);
    let through_svc = stream(
        &a.netns,
        &remote.netns,
        "10.96.0.30",
        8080,
        &["--rate-mbps", "2", "--seconds", "30"],
    );
    std::thread::sleep(Duration::from_secs(5));
    let tracked = conntrack(&n.socket, Default::default()).len();
    assert!(tracked >= 3, "the three flows are not tracked: {tracked}");

    // kill -9, and a supervisor's restart of the same binary.
    let t_kill = Instant::now();
    lab.stop_dataplane(0, "KILL");
    lab.start_dataplane(0, &opts)
        .expect("restart after kill -9");
    let up_after_kill = t_kill.elapsed();
    let resumed = |lab: &Lab| {
        stats(&lab.state.nodes[0].socket)
            .workers
            .iter()
            .map(|w| w.ct_resumed)
            .sum::<u64>()
    };
    let first = resumed(&lab);
    lab.wait_in_sync(0, Duration::from_secs(30))
        .expect("in sync after kill -9");
    std::thread::sleep(Duration::from_secs(8));

    // An upgrade: a planned stop, then another binary file.
    let next = TempDir::new("upgrade");
    let mut upgraded = opts.clone();
    upgraded.dataplane = next.join("podpath-dataplane");
    std::fs::copy(&opts.dataplane, &upgraded.dataplane).expect("copy the binary");
    let t_up = Instant::now();
    lab.stop_dataplane(0, "TERM");
    lab.start_dataplane(0, &upgraded)
        .expect("start the upgraded binary");
    let up_after_upgrade = t_up.elapsed();
    let second = resumed(&lab);
    lab.wait_in_sync(0, Duration::from_secs(30))
        .expect("in sync after the upgrade");

    let (sent, received) = finish(through_svc);
    let (fetched, probed) = masq.finish();
    let log = std::fs::read_to_string(&n.log).unwrap_or_default();
    eprintln!(
        "kill -9: dataplane answering after {up_after_kill:?}, {first} connections resumed; \
         upgrade: after {up_after_upgrade:?}, {second} resumed\nprobe (2 ms):\n{probed}"
    );
    assert!(
        fetched.is_ok(),
        "the masqueraded download broke: {fetched:?}\n{log}"
    );
    assert!(
        sent > 0 && sent == received,
        "the Service stream lost bytes: {sent} sent, {received} received"
    );
    assert!(
        first >= 3 && second >= 3,
        "resumed {first} then {second} connections\n{log}"
    );
    assert!(log.contains("resumed:"), "{log}");
}

fn events(sock: &Path) -> Vec<(String, String)> {
    match call(sock, Request::Events { after: 0 }) {
        Ok(Response::Events(v)) => v.into_iter().map(|e| (e.kind, e.detail)).collect(),
        r => panic!("events: {r:?}"),
    }
}

/// Issue 15 item 3: supervision is podpath's. The control service starts the
/// dataplane (`dataplane_command`); `kill -9` of the dataplane brings a new one
/// without anyone asking, reconciled, with the masqueraded download going on byte
/// for byte (its connection resumed); `kill -9` of the control service leaves the
/// dataplane running and forwarding, and the restarted control service adopts it
/// rather than starting a second one.
#[test]
fn the_control_service_restarts_a_killed_dataplane_and_a_killed_control_service_leaves_it_running()
{
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut opts = LabOptions::new(&format!("v{}", std::process::id() % 1_000_000));
    opts.nodes = 1;
    opts.supervised = true;
    opts.state_dir = std::env::temp_dir().join("podpath-lab-tests");
    let mut lab = Lab::up(&opts).expect("lab up");
    let n = lab.state.nodes[0].clone();
    let a = n.pods[0].clone();
    let ext = lab.state.external.clone().expect("external host");
    assert!(reachable(&a.netns, EXT, Duration::from_secs(10)));
    let first = n.dataplane_pid.expect("the supervised dataplane's pid");
    assert!(
        events(&n.control_socket)
            .iter()
            .any(|(k, d)| k == "dataplane-started" && d == &format!("pid {first}")),
        "{:?}",
        events(&n.control_socket)
    );
    let masq = Masqueraded::start(&ext, &a.netns, 5, "9", 14);
    std::thread::sleep(Duration::from_secs(3));

    // The dataplane dies; nobody but its supervisor acts.
    let t = Instant::now();
    net::kill(first, "KILL");
    let second = lab
        .wait_for_dataplane(0, Some(first), Duration::from_secs(30))
        .expect("a new dataplane");
    let answering = t.elapsed();
    lab.wait_in_sync(0, Duration::from_secs(30))
        .expect("reconciled");
    let ev = events(&n.control_socket);
    assert!(
        ev.iter().any(|(k, d)| k == "dataplane-exited"
            && d.contains(&format!("pid {first} killed by signal 9"))),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|(k, d)| k == "dataplane-started" && d == &format!("pid {second}")),
        "{ev:?}"
    );
    let restarts = match call(&n.control_socket, Request::Stats) {
        Ok(Response::Stats(s)) => s.dataplane_restarts,
        r => panic!("{r:?}"),
    };
    assert_eq!(restarts, 1);
    std::thread::sleep(Duration::from_secs(2));

    // The control service dies: the dataplane goes on, and is adopted.
    let control = lab.state.nodes[0].control_pid.expect("control pid");
    lab.stop_control(0, "KILL");
    assert!(!net::pid_alive(control));
    assert!(
        net::pid_alive(second),
        "the dataplane died with its control service"
    );
    assert!(
        ping(&a.netns, EXT),
        "no forwarding without the control service"
    );
    lab.start_control(0, &opts).expect("restart control");
    lab.wait_in_sync(0, Duration::from_secs(30))
        .expect("in sync after the control restart");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        topo::pids_running(&n.config),
        vec![second],
        "a second dataplane was started"
    );
    let ev = events(&n.control_socket);
    assert!(
        !ev.iter().any(|(k, _)| k == "dataplane-started"),
        "the adopted dataplane was replaced: {ev:?}"
    );

    let (fetched, probed) = masq.finish();
    eprintln!("supervised restart: a new dataplane answering {answering:?} after the kill\nprobe (2 ms):\n{probed}");
    assert!(
        fetched.is_ok(),
        "the masqueraded download broke across the supervised restart: {fetched:?}"
    );
}

#[test]
fn restarting_the_control_service_leaves_forwarding_alone() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut lab, opts) = lab("r", 3);
    let n = lab.state.nodes[0].clone();
    let (a, c) = (n.pods[0].clone(), n.pods[2].clone());
    // A change made by the CLI must survive the restarts (persisted).
    let mac = mac_of(&c.netns, "eth0");
    call(
        &n.control_socket,
        Request::MacAdd {
            bridge: 1,
            mac: mac.clone(),
            port: c.port.clone(),
        },
    )
    .expect("mac add");
    assert!(reachable(&a.netns, &c.ip, Duration::from_secs(5)));
    let before = ports(&n.socket);
    // A stream and a ping run until both restarts are over (asserted: neither has
    // ended by then), and only then are stopped.
    let stop = std::env::temp_dir().join(format!("pp-restart-stop-{}", std::process::id()));
    let _ = std::fs::remove_file(&stop);
    let mut s = stream(
        &a.netns,
        &c.netns,
        &c.ip,
        5102,
        &[
            "--stop-file",
            &stop.display().to_string(),
            "--rate-mbps",
            "40",
        ],
    );
    let mut ping = net::command_in(&a.netns, "ping")
        .args(["-c", "1200", "-i", "0.05", "-W", "1", "-q", &c.ip])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    lab.stop_control(0, "TERM");
    lab.start_control(0, &opts).expect("restart control");
    lab.wait_in_sync(0, Duration::from_secs(10)).unwrap();
    lab.stop_control(0, "KILL");
    lab.start_control(0, &opts)
        .expect("restart control after kill -9");
    lab.wait_in_sync(0, Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        ping.try_wait().unwrap().is_none(),
        "the ping ended before the restarts did"
    );
    assert!(
        s.tx.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the stream ended before the restarts did"
    );
    let ran = started.elapsed();
    // SIGINT: ping stops and prints its summary.
    let _ = std::process::Command::new("kill")
        .args(["-INT", &ping.id().to_string()])
        .status();
    std::fs::write(&stop, b"").unwrap();
    let p = ping.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&p.stdout);
    assert!(
        net::all_answered(&out),
        "packets were lost while the control service restarted: {out}"
    );
    let sent_pings: u128 = out
        .lines()
        .find(|l| l.contains(" packets transmitted"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        sent_pings * 50 >= ran.as_millis() * 8 / 10,
        "{sent_pings} pings in {ran:?}: they did not cover the restarts"
    );
    let (sent, got) = finish(s);
    let _ = std::fs::remove_file(&stop);
    assert_eq!(sent, got);
    assert_eq!(
        ports(&n.socket),
        before,
        "ports were re-created (forwarding disturbed)"
    );
    let st = state(&lab);
    assert!(st.in_sync);
    assert!(
        st.macs.iter().any(|m| m.mac == mac),
        "the CLI's static MAC was not persisted: {st:?}"
    );
}

/// Sends raw bytes on a fresh connection and returns the server's first answer.
fn raw(sock: &Path, bytes: &[u8]) -> Response {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let env: Envelope<Response> = codec::read_frame(&mut s).expect("an answer");
    // Then the server closes: framing is lost.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    env.body
}

fn kind(r: Result<Response, ClientError>) -> ErrorKind {
    match r {
        Err(ClientError::Server(e)) => e.kind,
        other => panic!("expected a typed error, got {other:?}"),
    }
}

fn spec(name: &str, device: &str) -> PortSpec {
    PortSpec {
        name: name.into(),
        device: device.into(),
        netns: None,
        bridge: Some(1),
        queues: None,
        mtu: None,
    }
}

#[test]
fn bad_requests_get_typed_errors_and_change_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, _) = lab("e", 2);
    let n = lab.state.nodes[0].clone();
    let (a, b) = (n.pods[0].clone(), n.pods[1].clone());
    let desired = state(&lab);
    let actual = ports(&n.socket);
    for sock in [&n.control_socket, &n.socket] {
        // Garbage, oversized, and no hello.
        let is_bad = |r: Response, what: &str| match r {
            Response::Error(e) => assert_eq!(e.kind, ErrorKind::BadRequest, "{what}: {e:?}"),
            r => panic!("{what}: {r:?}"),
        };
        is_bad(
            raw(sock, &[0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0xff]),
            "garbage",
        );
        is_bad(raw(sock, &[0xff, 0xff, 0xff, 0xff, 0]), "oversized");
        let stats = codec::encode(&Envelope {
            id: 1,
            body: Request::Stats,
        })
        .unwrap();
        is_bad(raw(sock, &stats), "no hello");
        // Invalid objects.
        assert_eq!(
            kind(call(
                sock,
                Request::PortAttach(spec("bad name", "net_tap9"))
            )),
            ErrorKind::BadRequest
        );
        assert_eq!(
            kind(call(sock, Request::PortAttach(spec(&a.port, "net_tap9")))),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            kind(call(sock, Request::PortAttach(spec("x", "net_nosuchdrv0")))),
            ErrorKind::Device
        );
        let mut s = spec("x", "net_tap9");
        s.netns = Some("/var/run/netns/no-such-pod".into());
        assert_eq!(
            kind(call(sock, Request::PortAttach(s))),
            ErrorKind::BadRequest
        );
        assert_eq!(
            kind(call(
                sock,
                Request::PortDetach {
                    name: "nope".into()
                }
            )),
            ErrorKind::NotFound
        );
        let mac = |m: &str, p: &str| Request::MacAdd {
            bridge: 1,
            mac: m.into(),
            port: p.into(),
        };
        assert_eq!(
            kind(call(sock, mac("0a:58:zz:00:00:01", &a.port))),
            ErrorKind::BadRequest
        );
        assert_eq!(
            kind(call(sock, mac("01:00:5e:00:00:01", &a.port))),
            ErrorKind::BadRequest
        );
        assert_eq!(
            kind(call(sock, mac("0a:58:00:00:00:01", "nope"))),
            ErrorKind::NotFound
        );
    }
    // Services, the node and remote nodes: each invalid field refused on both
    // sockets (the control service forwards, and commits only what the dataplane
    // took).
    let node = desired.node.clone().expect("the lab sets the node");
    let svc = ServiceSpec::new(
        "default/web",
        "10.96.0.10",
        80,
        "tcp",
        vec![EndpointSpec::ready(&b.ip, 8080)],
    );
    let bad_services = [
        ServiceSpec {
            vip: "10.96.0.x".into(),
            ..svc.clone()
        },
        ServiceSpec {
            protocol: "sctp".into(),
            ..svc.clone()
        },
        ServiceSpec {
            port: 0,
            ..svc.clone()
        },
        ServiceSpec {
            name: String::new(),
            ..svc.clone()
        },
        ServiceSpec {
            endpoints: vec![EndpointSpec {
                ip: "10.244.0.300".into(),
                ..svc.endpoints[0].clone()
            }],
            ..svc.clone()
        },
        ServiceSpec {
            endpoints: vec![EndpointSpec {
                port: 0,
                ..svc.endpoints[0].clone()
            }],
            ..svc.clone()
        },
        ServiceSpec {
            external_traffic_policy: Some("Sometimes".into()),
            ..svc.clone()
        },
    ];
    let bad_nodes = [
        NodeSpec {
            node_ip: "192.168.77".into(),
            ..node.clone()
        },
        NodeSpec {
            pod_cidr: "10.245.0.0/24".into(),
            ..node.clone()
        },
        NodeSpec {
            cluster_cidr: "10.244.0.0/33".into(),
            ..node.clone()
        },
        NodeSpec {
            vni: 1 << 24,
            ..node.clone()
        },
        NodeSpec {
            vxlan_port: 0,
            ..node.clone()
        },
        NodeSpec {
            service_cidr: Some("10.244.0.0/12".into()),
            ..node.clone()
        },
    ];
    let remote = RemoteSpec {
        name: "node9".into(),
        node_ip: "192.168.77.19".into(),
        vtep_mac: "0a:58:0a:f4:09:01".into(),
        pod_cidr: "10.244.9.0/24".into(),
    };
    let bad_remotes = [
        RemoteSpec {
            vtep_mac: "0a:58:zz:f4:09:01".into(),
            ..remote.clone()
        },
        RemoteSpec {
            vtep_mac: "01:00:5e:00:00:01".into(),
            ..remote.clone()
        },
        RemoteSpec {
            pod_cidr: node.pod_cidr.clone(),
            ..remote.clone()
        },
        RemoteSpec {
            node_ip: node.node_ip.clone(),
            ..remote.clone()
        },
    ];
    for sock in [&n.control_socket, &n.socket] {
        for s in &bad_services {
            assert_eq!(
                kind(call(sock, Request::ServiceSet(s.clone()))),
                ErrorKind::BadRequest,
                "{s:?}"
            );
        }
        for x in &bad_nodes {
            assert_eq!(
                kind(call(sock, Request::NodeSet(x.clone()))),
                ErrorKind::BadRequest,
                "{x:?}"
            );
        }
        for r in &bad_remotes {
            assert_eq!(
                kind(call(sock, Request::RemoteAdd(r.clone()))),
                ErrorKind::BadRequest,
                "{r:?}"
            );
        }
        assert!(
            matches!(call(sock, Request::ServiceList), Ok(Response::Services(v)) if v.is_empty())
        );
    }
    assert_eq!(
        kind(call(
            &n.control_socket,
            Request::MacDel {
                bridge: 1,
                mac: "0a:58:00:00:00:09".into()
            }
        )),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(call(
            &n.control_socket,
            Request::Hello {
                version: 99,
                client: "x".into()
            }
        )),
        ErrorKind::Version
    );
    let after = state(&lab);
    assert_eq!(
        (
            after.ports,
            after.macs,
            after.node,
            after.remotes,
            after.services
        ),
        (
            desired.ports,
            desired.macs,
            desired.node,
            desired.remotes,
            desired.services
        ),
        "desired state changed"
    );
    assert_eq!(ports(&n.socket), actual, "dataplane ports changed");
    assert!(
        reachable(&a.netns, &b.ip, Duration::from_secs(5)),
        "forwarding broke"
    );
}

/// podpathctl fits an operator's habits: `--json` (or `-o json`) on every command,
/// errors included (a JSON error object with the server's kind, a non-zero exit);
/// `-o wide` adds columns; shell completion for bash, zsh and fish.
#[test]
fn podpathctl_speaks_json_errors_wide_tables_and_completion() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, _) = lab("h", 1);
    let sock = lab.state.nodes[0].control_socket.clone();
    let (ok, out, _) = ctl(&sock, &["--json", "port", "del", "no-such-port"]);
    assert!(!ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("a JSON error object");
    assert_eq!(v["error"]["kind"], "NotFound", "{out}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-port"),
        "{out}"
    );
    let (ok, out, _) = ctl(&sock, &["-o", "json", "service", "set", "x"]);
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("a JSON usage error");
    assert_eq!(v["error"]["kind"], "usage", "{out}");
    let (ok, out, _) = ctl(Path::new("/nonexistent/podpath.sock"), &["--json", "stats"]);
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["kind"], "client", "{out}");
    // -o json is --json; -o wide adds speed and counters to the port table.
    let (ok, out, _) = ctl(&sock, &["-o", "json", "port", "list"]);
    assert!(
        ok && serde_json::from_str::<Vec<serde_json::Value>>(&out).is_ok(),
        "{out}"
    );
    let (ok, narrow, _) = ctl(&sock, &["port", "list"]);
    let (ok2, wide, _) = ctl(&sock, &["-o", "wide", "port", "list"]);
    assert!(ok && ok2);
    assert!(!narrow.contains("rx-packets"), "{narrow}");
    let head = wide.lines().next().unwrap_or("");
    for col in ["speed", "rx-packets", "tx-packets", "tx-dropped", "device"] {
        assert!(head.contains(col), "{col} missing: {head}");
    }
    assert_eq!(wide.lines().count(), narrow.lines().count(), "{wide}");
    // Completion scripts name the subcommands; bash's parses.
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = ctl(&sock, &["completion", shell]);
        assert!(ok, "{shell}: {err}");
        for word in ["conntrack", "service", "trace"] {
            assert!(out.contains(word), "{shell} completion lacks {word}");
        }
        if shell == "bash" {
            let f = std::env::temp_dir().join(format!("podpathctl-{}.bash", std::process::id()));
            std::fs::write(&f, &out).unwrap();
            let st = std::process::Command::new("bash")
                .arg("-n")
                .arg(&f)
                .status()
                .unwrap();
            let _ = std::fs::remove_file(&f);
            assert!(st.success(), "bash -n rejects the completion script");
        }
    }
}

/// `podpathctl events` streams what changes on a node, in order: Services and the
/// generation they brought into force, remote nodes added and withdrawn, ports
/// detached and attached, the connection table reaching its limit, and the
/// dataplane dying, coming back and being reconciled. The dataplane's own socket
/// refuses the request (events are the control service's).
#[test]
fn events_stream_what_changes_on_the_node() {
    use std::io::BufRead;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut opts = LabOptions::new(&format!("ev{}", std::process::id() % 1_000_000));
    opts.nodes = 1;
    opts.pods_per_node = 2;
    opts.external = false;
    opts.state_dir = std::env::temp_dir().join("podpath-lab-tests");
    // The smallest table (16 connections per worker): forty flows fill it.
    opts.dataplane_extra = "[conntrack]\ncapacity = 16\n".into();
    let mut lab = Lab::up(&opts).expect("lab up");
    let n = lab.state.nodes[0].clone();
    let (a, b) = (n.pods[0].clone(), n.pods[1].clone());
    let sock = n.control_socket.clone();
    let mut child = std::process::Command::new(podpathctl())
        .arg("--socket")
        .arg(&sock)
        .args(["--json", "events", "--timeout", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let reader = {
        let seen = std::sync::Arc::clone(&seen);
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    seen.lock().unwrap().push(v);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let ok = |args: &[&str]| {
        let (ok, out, err) = ctl(&sock, args);
        assert!(ok, "{args:?}: {out}{err}");
    };
    let udp_ep = format!("{}:5353", b.ip);
    ok(&[
        "service",
        "set",
        "default/dns",
        "--vip",
        "10.96.0.40",
        "--port",
        "53",
        "--protocol",
        "udp",
        "--endpoint",
        &udp_ep,
    ]);
    ok(&[
        "remote",
        "add",
        "node9",
        "--node-ip",
        "192.168.77.19",
        "--vtep-mac",
        "0a:58:0a:f4:09:01",
        "--pod-cidr",
        "10.244.9.0/24",
    ]);
    ok(&["remote", "del", "node9"]);
    let port = ports(&n.socket)
        .into_iter()
        .find(|p| p.name == b.port)
        .unwrap();
    ok(&["port", "del", &b.port]);
    let mut add = vec![
        "port",
        "add",
        &b.port,
        "--device",
        &port.device,
        "--bridge",
        "1",
    ];
    if let Some(ns) = port.netns.as_deref() {
        add.extend(["--netns", ns]);
    }
    ok(&add);
    // Forty UDP flows to the Service (nobody answers): the table of 16 is full.
    for _ in 0..40 {
        let _ = run_in(
            &a.netns,
            &bin(),
            &["udp-send", "--to", "10.96.0.40:53", "--hex", "00"],
        );
    }
    let kinds = |seen: &[serde_json::Value]| -> Vec<String> {
        seen.iter()
            .filter_map(|e| e["kind"].as_str().map(String::from))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || kinds(&seen.lock().unwrap())
            .contains(&"table-full".to_string())),
        "no table-full event: {:?}",
        seen.lock().unwrap()
    );
    lab.stop_dataplane(0, "KILL");
    lab.start_dataplane(0, &opts).expect("restart dataplane");
    lab.wait_in_sync(0, Duration::from_secs(30))
        .expect("back in sync");
    assert!(wait_until(Duration::from_secs(5), || kinds(
        &seen.lock().unwrap()
    )
    .contains(&"reconciled".to_string())));
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let seen = seen.lock().unwrap().clone();
    let k = kinds(&seen);
    let at = |kind: &str| {
        k.iter()
            .position(|x| x == kind)
            .unwrap_or_else(|| panic!("no {kind} event: {k:?}"))
    };
    let last = |kind: &str| k.iter().rposition(|x| x == kind).unwrap();
    assert!(at("service-set") < at("generation-applied"), "{k:?}");
    assert!(
        at("service-set") < at("remote-added") && at("remote-added") < at("remote-withdrawn"),
        "{k:?}"
    );
    assert!(
        at("remote-withdrawn") < at("port-detached") && at("port-detached") < last("port-attached"),
        "{k:?}"
    );
    assert!(last("port-attached") < at("table-full"), "{k:?}");
    assert!(at("table-full") < at("dataplane-lost"), "{k:?}");
    assert!(
        at("dataplane-lost") < last("dataplane-connected")
            && last("dataplane-connected") < last("reconciled"),
        "{k:?}"
    );
    let svc = &seen[at("service-set")];
    assert!(
        svc["detail"].as_str().unwrap().contains("default/dns"),
        "{svc}"
    );
    let full = &seen[at("table-full")];
    assert!(
        full["detail"]
            .as_str()
            .unwrap()
            .contains("connection table is full"),
        "{full}"
    );
    // Numbered without gaps, increasing.
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // --all starts with the first event the service kept.
    let (ok, out, _) = ctl(&sock, &["--json", "events", "--all", "--count", "1"]);
    assert!(ok);
    let first: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(first["seq"], 1, "{out}");
    // The dataplane's socket: not its business.
    let r = call(&n.socket, Request::Events { after: 0 });
    assert_eq!(kind(r), ErrorKind::BadRequest);
}

/// Who may connect: the control socket is mode 0660, owned by root and the
/// configured `socket_group`. A user in neither is refused by the kernel; a member
/// of the group is served (membership is root on the node: docs/reliability.md).
#[test]
fn only_root_and_the_socket_group_reach_the_control_socket() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new("sockperm");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A gid no account uses (chgrp takes numbers), so the test adds no group.
    let gid = 64_999u32;
    let sock = dir.join("control.sock");
    let conf = dir.join("control.toml");
    std::fs::write(
        &conf,
        format!(
            "[control]\nsocket = \"{}\"\nsocket_group = \"{gid}\"\ndataplane_socket = \"{}\"\nstate_file = \"{}\"\nreadonly_socket = \"{}\"\n",
            sock.display(),
            dir.join("none.sock").display(),
            dir.join("state.json").display(),
            dir.join("ro.sock").display()
        ),
    )
    .unwrap();
    let control = podpathctl().with_file_name("podpath-control");
    /// Ours, killed by PID when the test ends, also when it fails.
    struct Service(Child);
    impl Drop for Service {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _svc = Service(
        std::process::Command::new(&control)
            .arg("--config")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(10), || sock.exists()));
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");
    assert_eq!((meta.uid(), meta.gid()), (0, gid), "socket owner");
    // podpathctl where any user may run it.
    let ctl_bin = dir.join("podpathctl");
    std::fs::copy(podpathctl(), &ctl_bin).unwrap();
    std::fs::set_permissions(&ctl_bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_user_on = |sock: &Path, groups: &str, args: &[&str]| {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534"]);
        if groups.is_empty() {
            c.arg("--clear-groups");
        } else {
            c.args(["--groups", groups]);
        }
        let o = c
            .arg(&ctl_bin)
            .arg("--socket")
            .arg(sock)
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let as_user = |groups: &str| as_user_on(&sock, groups, &["version"]);
    let (ok, err) = as_user("");
    assert!(
        !ok && err.contains("Permission denied"),
        "nobody was let in: {err}"
    );
    let (ok, err) = as_user(&gid.to_string());
    assert!(ok, "a member of the socket group was refused: {err}");
    let (ok, _, err) = ctl(&sock, &["version"]);
    assert!(ok, "root: {err}");

    // The read-only socket: anyone may read through it, nobody may change anything.
    let ro = dir.join("ro.sock");
    assert!(wait_until(Duration::from_secs(5), || ro.exists()));
    assert_eq!(std::fs::metadata(&ro).unwrap().mode() & 0o777, 0o666);
    let (ok, err) = as_user_on(&ro, "", &["state"]);
    assert!(
        ok,
        "nobody could not read through the read-only socket: {err}"
    );
    let before = call(&sock, Request::StateShow).unwrap();
    for req in [
        Request::MacAdd {
            bridge: 1,
            mac: "02:00:00:00:00:07".into(),
            port: "p".into(),
        },
        Request::ServiceDel { name: "x/y".into() },
        Request::TraceStart { count: 1 },
    ] {
        // Root too: the socket decides, not the caller.
        match call(&ro, req.clone()) {
            Err(ClientError::Server(e)) => {
                assert!(e.message.contains("read-only socket"), "{req:?}: {e:?}")
            }
            r => panic!("{req:?} through the read-only socket: {r:?}"),
        }
    }
    assert_eq!(
        call(&sock, Request::StateShow).unwrap(),
        before,
        "a refused request changed the state"
    );
}

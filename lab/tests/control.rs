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
    codec, Client, ClientError, DesiredState, Envelope, ErrorKind, PortInfo, PortSpec, Request,
    Response,
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

/// Pings until one succeeds or `within` passes.
fn reachable(ns: &str, ip: &str, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if net::exec_in(ns, "ping", &["-c", "1", "-W", "1", ip]).is_ok() {
            return true;
        }
    }
    false
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
    }
    std::fs::write(&stop, b"").unwrap();
    let (sent, got) = finish(s);
    let _ = std::fs::remove_file(&stop);
    assert!(sent > 1_000_000, "the stream barely ran ({sent} bytes)");
    assert_eq!(sent, got, "stream lost bytes");
    // Two pods, plus the node's uplink and host ports.
    assert_eq!(
        state(&lab).ports.len(),
        2 + 2,
        "the churned pod left state behind"
    );
}

#[test]
fn killed_dataplane_comes_back_without_any_command() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut lab, opts) = lab("k", 3);
    let n = lab.state.nodes[0].clone();
    let (a, c) = (n.pods[0].clone(), n.pods[2].clone());
    assert_eq!(
        (a.attach.clone(), c.attach.clone()),
        (Attach::AfPacket, Attach::AfPacket)
    );
    assert!(reachable(&a.netns, &c.ip, Duration::from_secs(5)));
    let old = lab.state.nodes[0].dataplane_pid.unwrap();
    lab.stop_dataplane(0, "KILL");
    assert!(!net::pid_alive(old), "kill -9 did not kill the dataplane");
    // A supervisor restarts the process; nobody tells the control service anything.
    lab.start_dataplane(0, &opts).expect("restart dataplane");
    assert!(
        reachable(&a.netns, &c.ip, Duration::from_secs(30)),
        "traffic did not come back"
    );
    lab.wait_in_sync(0, Duration::from_secs(10))
        .expect("back in sync");
    // Three pods, plus the node's uplink and host ports.
    assert_eq!(ports(&n.socket).len(), 3 + 2, "every port was re-attached");
}

#[test]
fn restarting_the_control_service_leaves_forwarding_alone() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut lab, opts) = lab("r", 3);
    let n = lab.state.nodes[0].clone();
    let (a, c) = (n.pods[0].clone(), n.pods[2].clone());
    // A change made by the CLI must survive the restarts (persisted).
    let mac = {
        let j = net::ip_in(&c.netns, &["-j", "link", "show", "eth0"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        v[0]["address"].as_str().unwrap().to_owned()
    };
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
    let s = stream(
        &a.netns,
        &c.netns,
        &c.ip,
        5102,
        &["--seconds", "6", "--rate-mbps", "40"],
    );
    let ping = net::command_in(&a.netns, "ping")
        .args(["-c", "60", "-i", "0.05", "-W", "1", "-q", &c.ip])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    lab.stop_control(0, "TERM");
    lab.start_control(0, &opts).expect("restart control");
    lab.wait_in_sync(0, Duration::from_secs(10)).unwrap();
    lab.stop_control(0, "KILL");
    lab.start_control(0, &opts)
        .expect("restart control after kill -9");
    lab.wait_in_sync(0, Duration::from_secs(10)).unwrap();
    let p = ping.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&p.stdout);
    assert!(
        out.contains(" 0% packet loss"),
        "packets were lost while the control service restarted: {out}"
    );
    let (sent, got) = finish(s);
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
        (after.ports, after.macs),
        (desired.ports, desired.macs),
        "desired state changed"
    );
    assert_eq!(ports(&n.socket), actual, "dataplane ports changed");
    assert!(
        reachable(&a.netns, &b.ip, Duration::from_secs(5)),
        "forwarding broke"
    );
}

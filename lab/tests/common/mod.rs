//! Helpers shared by the end-to-end tests (each test file uses some of them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use podpath_proto::{Client, ConnInfo, ConntrackFilter, Request, Response, Stats};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use podpath_lab::net;
use podpath_lab::topo::LabOptions;

/// The podpath-lab binary (its traffic tools run inside the namespaces).
pub fn bin() -> String {
    env!("CARGO_BIN_EXE_podpath-lab").to_owned()
}

/// Lab options with a name unique to this run, state under the temporary directory.
pub fn options(tag: &str) -> LabOptions {
    let mut o = LabOptions::new(&format!("{tag}{}", std::process::id() % 1_000_000));
    o.state_dir = std::env::temp_dir().join("podpath-lab-tests");
    o
}

/// Runs a command inside a namespace: success, and stdout followed by stderr.
pub fn run_in(ns: &str, cmd: &str, args: &[&str]) -> (bool, String) {
    let o = net::command_in(ns, cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s += &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), s)
}

/// Starts `podpath-lab <args>` (a server) in a namespace with its stdout captured,
/// and returns once its socket listens (TCP) or is bound (UDP).
pub fn serve_in(ns: &str, args: &[&str]) -> Child {
    let c = net::command_in(ns, &bin())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(ns, args);
    c
}

/// Waits (up to 10 s) until the server started with `args` has bound its `--port`:
/// a listening TCP socket, or a bound UDP one for the udp-* tools.
pub fn wait_listening(ns: &str, args: &[&str]) {
    let Some(port) = args
        .iter()
        .position(|a| *a == "--port")
        .and_then(|i| args.get(i + 1))
        .and_then(|p| p.parse::<u16>().ok())
    else {
        return;
    };
    let udp = args.first().is_some_and(|c| c.starts_with("udp"));
    let (table, state) = if udp {
        ("/proc/net/udp", "07")
    } else {
        ("/proc/net/tcp", "0A")
    };
    let want = format!(":{port:04X}");
    let ok = wait_until(Duration::from_secs(10), || {
        let (_, out) = run_in(ns, "cat", &[table]);
        out.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&want) && f[3] == state
        })
    });
    assert!(ok, "{args:?} in {ns} did not bind port {port} within 10 s");
}

/// Polls `cond` every 50 ms until it holds or `within` passes; whether it held.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Three pings, 200 ms apart: true only if every one was answered (iputils' exit
/// status is 0 as soon as one reply arrives, so the summary line is the verdict).
pub fn ping(ns: &str, ip: &str) -> bool {
    ping_out(ns, ip).0
}

/// `ping`, with ping's output (for assertion messages).
pub fn ping_out(ns: &str, ip: &str) -> (bool, String) {
    let (ok, out) = run_in(ns, "ping", &["-c", "3", "-i", "0.2", "-W", "2", ip]);
    (ok && net::all_answered(&out), out)
}

/// Background processes of ours, killed (by PID, as children) when dropped.
pub struct Background(pub Vec<Child>);

impl Background {
    /// Starts `podpath-lab <args>` in each namespace, and waits for each to bind.
    pub fn in_each(namespaces: &[&str], args: &[&str]) -> Background {
        let v = namespaces
            .iter()
            .map(|ns| {
                net::command_in(ns, &bin())
                    .args(args)
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for ns in namespaces {
            wait_listening(ns, args);
        }
        Background(v)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The dataplane's (or control service's) counters.
pub fn stats(sock: &Path) -> Stats {
    match Client::connect(sock, "test")
        .unwrap()
        .call(Request::Stats)
        .unwrap()
    {
        Response::Stats(s) => s,
        r => panic!("unexpected answer to Stats: {r:?}"),
    }
}

/// Packets handed between the dataplane's workers so far.
pub fn handoffs(sock: &Path) -> u64 {
    stats(sock).workers.iter().map(|w| w.handoff_in).sum()
}

/// The connection table, filtered.
pub fn conntrack(sock: &Path, f: ConntrackFilter) -> Vec<ConnInfo> {
    match Client::connect(sock, "test")
        .unwrap()
        .call(Request::ConntrackList(f))
        .unwrap()
    {
        Response::Conntrack(v) => v,
        r => panic!("unexpected answer to ConntrackList: {r:?}"),
    }
}

/// The MAC address of `dev` in namespace `ns`.
pub fn mac_of(ns: &str, dev: &str) -> String {
    let j = net::ip_in(ns, &["-j", "link", "show", dev]).expect("ip link");
    let v: serde_json::Value = serde_json::from_str(&j).expect("json");
    v[0]["address"].as_str().expect("address").to_owned()
}

pub fn state_dir() -> PathBuf {
    std::env::temp_dir().join("podpath-lab-tests")
}

/// The podpathctl binary (built beside podpath-lab by `cargo test --workspace`).
pub fn podpathctl() -> PathBuf {
    Path::new(&bin()).with_file_name("podpathctl")
}

/// Runs podpathctl against `sock`: success, stdout, stderr.
pub fn ctl(sock: &Path, args: &[&str]) -> (bool, String, String) {
    let o = std::process::Command::new(podpathctl())
        .arg("--socket")
        .arg(sock)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("podpathctl (build the workspace: cargo test --workspace)");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A byte-checked TCP transfer of `bytes` from namespace `from` to `to_ip:port` (a
/// receiver started in `to_ns`): whether every byte arrived, and what both said.
pub fn tcp_transfer(from: &str, to_ns: &str, to_ip: &str, port: u16, bytes: u64) -> (bool, String) {
    let rx = serve_in(
        to_ns,
        &[
            "tcp-recv",
            "--port",
            &port.to_string(),
            "--bytes",
            &bytes.to_string(),
        ],
    );
    let (ok, out) = run_in(
        from,
        &bin(),
        &[
            "tcp-send",
            "--to",
            &format!("{to_ip}:{port}"),
            "--bytes",
            &bytes.to_string(),
        ],
    );
    let r = rx.wait_with_output().unwrap();
    let rout = String::from_utf8_lossy(&r.stdout).into_owned();
    (ok && r.status.success(), format!("{out}\n{rout}"))
}

/// A directory of this test's own under the system's temporary one, removed when it
/// drops: also when the test fails (unless PODPATH_KEEP_TMP is set, to look at it).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("podpath-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("PODPATH_KEEP_TMP").is_some() {
            eprintln!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

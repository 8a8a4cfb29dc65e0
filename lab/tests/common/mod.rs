//! Helpers shared by the end-to-end tests (each test file uses some of them).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

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

/// Starts `podpath-lab <args>` (a server) in a namespace with its stdout captured, and
/// gives it 300 ms to bind.
pub fn serve_in(ns: &str, args: &[&str]) -> Child {
    let c = net::command_in(ns, &bin())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c
}

/// Two pings, 200 ms apart.
pub fn ping(ns: &str, ip: &str) -> bool {
    run_in(ns, "ping", &["-c", "2", "-i", "0.2", "-W", "2", ip]).0
}

/// Background processes of ours, killed (by PID, as children) when dropped.
pub struct Background(pub Vec<Child>);

impl Background {
    /// Starts `podpath-lab <args>` in each namespace.
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
        std::thread::sleep(Duration::from_millis(300));
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

pub fn state_dir() -> PathBuf {
    std::env::temp_dir().join("podpath-lab-tests")
}

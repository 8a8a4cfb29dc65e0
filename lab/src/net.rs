//! Running `ip` and friends, and commands inside namespaces.
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// Runs a command, failing with its stderr when it fails.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd} (is it installed?)"))?;
    check(cmd, args, out)
}

fn check(cmd: &str, args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>`.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// `ip -n <ns> <args>`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    run("ip", &a)
}

/// Runs `cmd args` inside namespace `ns`.
pub fn exec_in(ns: &str, cmd: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["netns", "exec", ns, cmd];
    a.extend_from_slice(args);
    run("ip", &a)
}

/// A `Command` that will run inside namespace `ns`.
pub fn command_in(ns: &str, cmd: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, cmd]);
    c
}

pub fn netns_list() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

pub fn netns_exists(ns: &str) -> bool {
    netns_list().iter().any(|n| n == ns)
}

/// Is any thread of the process still running? A killed multi-threaded process
/// shows its leader as a zombie while other threads still exit and hold its files
/// (DPDK's locked runtime files among them): it is gone only when every thread is.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            // The state follows the command name, which is in parentheses and may hold spaces.
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.split_whitespace().next() != Some("Z"))
            })
            .unwrap_or(false)
    })
}

/// The process's command line (to make sure a PID is still ours before killing it).
pub fn pid_cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

pub fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// This host's address on the route towards `peer` (a connected UDP socket's local
/// address; nothing is sent).
pub fn local_ip_towards(peer: std::net::IpAddr) -> Option<String> {
    let s = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    s.connect((peer, 9)).ok()?;
    Some(s.local_addr().ok()?.ip().to_string())
}

/// Whether iputils ping's summary says every request was answered ("3 packets
/// transmitted, 3 received, 0% packet loss"). Its exit status is 0 as soon as one
/// reply arrives, so reachability checks read this instead.
pub fn all_answered(out: &str) -> bool {
    out.lines().any(|l| {
        let f: Vec<&str> = l.split(", ").collect();
        l.contains(" packets transmitted, ")
            && f.len() >= 3
            && f[0].split_whitespace().next() == f[1].split_whitespace().next()
            && f[2].starts_with("0% packet loss")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summaries_are_judged_strictly() {
        let all = "3 packets transmitted, 3 received, 0% packet loss, time 402ms";
        let some = "3 packets transmitted, 1 received, 66.6667% packet loss, time 402ms";
        let errs = "3 packets transmitted, 2 received, +1 errors, 33.3333% packet loss";
        assert!(all_answered(all));
        assert!(!all_answered(some) && !all_answered(errs) && !all_answered(""));
        assert!(!all_answered(
            "10 packets transmitted, 1 received, 90% packet loss"
        ));
    }

    #[test]
    fn lab_lcores_give_each_dataplane_its_own_worker_cpu() {
        use crate::topo::lab_lcores;
        assert_eq!(lab_lcores(0, 1, 2), "0,1");
        assert_eq!(lab_lcores(1, 1, 2), "1,0");
        assert_eq!(lab_lcores(0, 2, 2), "0@0,1@1,2@0");
        assert_eq!(lab_lcores(1, 2, 2), "0@1,1@0,2@1");
        assert_eq!(lab_lcores(0, 1, 1), "0@0,1@0");
        assert_eq!(lab_lcores(2, 1, 4), "2,3");
    }
}

//! The pod's interface, made with iproute2 (`ip`, and `nsenter` to act inside the
//! pod's namespace by its path, which `ip -n` cannot): every node has them, and the
//! plugin keeps no netlink code of its own.
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::spec::{code, CniError};

/// The node-side interface (and dataplane port) name of a container's interface:
/// stable, unique per (container, ifname), and within Linux's 15 characters.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    // FNV-1a: stable across builds and versions (the name must survive upgrades).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("pp{:08x}", h & 0xffff_ffff)
}

fn run(cmd: &mut Command) -> Result<String, CniError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| {
        CniError::new(code::IO, format!("cannot run {shown}")).with_details(e.to_string())
    })?;
    if !out.status.success() {
        return Err(CniError::new(code::IO, format!("{shown} failed"))
            .with_details(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS` in this process's namespace, or in the one at `netns`.
fn ip(netns: Option<&str>, args: &[&str]) -> Result<String, CniError> {
    match netns {
        None => run(Command::new("ip").args(args)),
        Some(ns) => run(Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .arg("ip")
            .args(args)),
    }
}

/// The path the dataplane opens to reach this process's namespace: None for the
/// host's (the dataplane's own on a real node), else the /run/netns entry that is
/// this namespace (a lab node). A namespace with no name cannot be named to the
/// dataplane: `nodeNetns` in the configuration says it.
pub fn own_netns() -> Result<Option<String>, CniError> {
    let ino = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let me = ino("/proc/self/ns/net");
    if me.is_some() && me == ino("/proc/1/ns/net") {
        return Ok(None);
    }
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.filter_map(Result::ok) {
            let p = e.path().display().to_string();
            if ino(&p) == me {
                return Ok(Some(p));
            }
        }
    }
    Err(CniError::new(
        code::INVALID_CONFIG,
        "podpath-cni runs in a network namespace that is neither the host's nor named under /run/netns: set nodeNetns",
    ))
}

/// Does `netns` exist (a DEL may come after it is gone)?
pub fn netns_exists(netns: &str) -> bool {
    !netns.is_empty() && Path::new(netns).exists()
}

/// A veth pair: `host` here, `ifname` inside the pod's namespace, both `mtu`.
pub fn add_veth(host: &str, netns: &str, ifname: &str, mtu: u16) -> Result<(), CniError> {
    // A retried ADD finds the pair made by the first: keep it. Half a pair (the
    // pod's end went with its namespace) is made again.
    if link_exists(None, host) {
        if link_exists(Some(netns), ifname) {
            return Ok(());
        }
        delete(host)?;
    }
    let mtu = mtu.to_string();
    ip(
        None,
        &[
            "link", "add", host, "mtu", &mtu, "type", "veth", "peer", "name", ifname, "mtu", &mtu,
            "netns", netns,
        ],
    )?;
    // No IPv6 on the node's end: it would send router solicitations into the pod.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6"), "1");
    ip(None, &["link", "set", host, "up"]).map(|_| ())
}

/// Deletes `name` here (its veth peer goes with it); absent is fine.
pub fn delete(name: &str) -> Result<(), CniError> {
    if !link_exists(None, name) {
        return Ok(());
    }
    ip(None, &["link", "del", name]).map(|_| ())
}

pub fn link_exists(netns: Option<&str>, name: &str) -> bool {
    ip(netns, &["link", "show", "dev", name]).is_ok()
}

/// Turns off checksum offload, segmentation and receive coalescing on `dev`: a
/// frame that reaches a user-space switch (af_packet reads the node end) must be
/// finished, with its L4 checksum and at most MTU-sized. Without it TCP from the pod
/// leaves with checksums the kernel meant to fill in later, and its receiver drops
/// every segment.
pub fn offloads_off(netns: Option<&str>, dev: &str) -> Result<(), CniError> {
    let args = [
        "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
    ];
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={ns}")).arg("ethtool");
            c
        }
        None => Command::new("ethtool"),
    };
    run(c.args(args)).map(|_| ())
}

/// Address, MTU, up, loopback up, default route via the gateway: the pod's side.
pub fn configure_pod(
    netns: &str,
    ifname: &str,
    cidr: &str,
    gateway: &str,
    mtu: u16,
) -> Result<(), CniError> {
    let ns = Some(netns);
    ip(ns, &["link", "set", "lo", "up"])?;
    ip(ns, &["link", "set", ifname, "mtu", &mtu.to_string()])?;
    ip(ns, &["addr", "replace", cidr, "dev", ifname])?;
    ip(ns, &["link", "set", ifname, "up"])?;
    ip(
        ns,
        &["route", "replace", "default", "via", gateway, "dev", ifname],
    )
    .map(|_| ())
}

/// The MAC address of `name` (here or in `netns`).
pub fn mac(netns: Option<&str>, name: &str) -> Result<String, CniError> {
    let out = ip(netns, &["-o", "link", "show", "dev", name])?;
    let mut w = out.split_whitespace();
    while let Some(t) = w.next() {
        if t == "link/ether" {
            return Ok(w.next().unwrap_or("").to_string());
        }
    }
    Ok(String::new())
}

/// The IPv4 addresses (CIDR form) on `name` inside `netns`.
pub fn addresses(netns: &str, name: &str) -> Result<Vec<String>, CniError> {
    let out = ip(Some(netns), &["-o", "-4", "addr", "show", "dev", name])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|&t| t == "inet")?;
            w.next().map(str::to_string)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_unique_and_short() {
        let a = host_ifname("c1", "eth0");
        assert_eq!(a, host_ifname("c1", "eth0"));
        assert_ne!(a, host_ifname("c1", "eth1"));
        assert_ne!(a, host_ifname("c2", "eth0"));
        assert!(a.len() <= 15 && a.starts_with("pp"));
    }
}

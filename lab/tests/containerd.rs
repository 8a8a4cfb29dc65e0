//! A real container runtime attaches a container through podpath-cni: a private
//! containerd (root, state and socket in a temp dir, CRI off) and `ctr run --cni` of
//! a busybox rootfs, run inside a lab node's namespace. The container gets its
//! address, reaches a pod on the other node through podpath, and its port and
//! address are gone after it exits (the runtime's DEL). The files the test puts in
//! /opt/cni/bin and /etc/cni/net.d have names of their own and are removed.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use podpath_lab::Lab;
use serde_json::json;

/// Files and links the test made, removed when dropped (also on failure).
struct Made(Vec<PathBuf>);
impl Drop for Made {
    fn drop(&mut self) {
        // Files, and the directories the test made (last, once empty).
        for p in self.0.iter().rev() {
            if p.is_dir() {
                let _ = std::fs::remove_dir(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// The private containerd, stopped (by PID, ours) when dropped.
struct Containerd(Child, PathBuf);
impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.1.join("state"))
            .status();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn containerd(dir: &Path) -> Containerd {
    std::fs::create_dir_all(dir).unwrap();
    let sock = dir.join("containerd.sock");
    let conf = dir.join("config.toml");
    std::fs::write(
        &conf,
        format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{d}/ttrpc.sock\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n",
            d = dir.display(),
            s = sock.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("containerd (apt-get install containerd runc)");
    let c = Containerd(child, dir.to_owned());
    assert!(
        wait_until(Duration::from_secs(15), || sock.exists()),
        "containerd did not start: {}",
        std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
    );
    c
}

#[test]
fn a_container_run_by_containerd_gets_its_network_from_podpath_cni() {
    let lab = Lab::up(&options("d")).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let tag = lab.state.prefix.clone();
    let dir = std::env::temp_dir().join(format!("podpath-containerd-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    let ctd = containerd(&dir);
    let sock = dir.join("containerd.sock");

    // The rootfs: busybox (static) and the directories runc mounts on.
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox"))
        .expect("busybox (apt-get install busybox-static)");

    // podpath-cni under a name of this run, the conflist first in the directory;
    // go-cni also wants the loopback plugin in /opt/cni/bin.
    let mut made = Made(Vec::new());
    for d in ["/opt/cni", "/opt/cni/bin", "/etc/cni", "/etc/cni/net.d"] {
        if !Path::new(d).exists() {
            std::fs::create_dir(d).unwrap();
            made.0.push(d.into());
        }
    }
    let plugin = format!("podpath-cni-{tag}");
    let plugin_path = Path::new("/opt/cni/bin").join(&plugin);
    std::fs::copy(
        Path::new(&bin()).with_file_name("podpath-cni"),
        &plugin_path,
    )
    .unwrap();
    made.0.push(plugin_path);
    let lo = Path::new("/opt/cni/bin/loopback");
    if !lo.exists() {
        std::os::unix::fs::symlink("/usr/lib/cni/loopback", lo)
            .expect("loopback plugin (containernetworking-plugins)");
        made.0.push(lo.to_owned());
    }
    let conflist = Path::new("/etc/cni/net.d").join(format!("00-{tag}.conflist"));
    std::fs::write(
        &conflist,
        json!({
            "cniVersion": "1.0.0",
            "name": format!("podpath-{tag}"),
            "plugins": [{
                "type": plugin,
                "controlSocket": n1.control_socket,
                "dataDir": dir.join("ipam"),
                "ipam": {"type": "podpath", "rangeStart": "10.244.0.100"},
            }],
        })
        .to_string(),
    )
    .unwrap();
    made.0.push(conflist);

    // The container pings a pod on node 2 and prints its address.
    let script = format!(
        "/bin/busybox ip -4 -o addr show dev eth0; /bin/busybox ping -c 3 -W 2 {}",
        n2.pods[0].ip
    );
    let id = format!("{tag}-c1");
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", n1.netns))
        .arg("timeout")
        .arg("60")
        .arg("ctr")
        .arg("--address")
        .arg(&sock)
        .args(["run", "--rm", "--cni", "--rootfs"])
        .arg(&rootfs)
        .args([&id, "/bin/busybox", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("ctr");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the container's ping through podpath: {text}"
    );
    assert!(
        text.contains("inet 10.244.0."),
        "an address from node 1's pod CIDR: {text}"
    );
    assert!(text.contains(" 0% packet loss"), "{text}");
    // The runtime ran DEL when the container exited: no CNI port, no allocation.
    let (_, ports, _) = ctl(&n1.control_socket, &["--json", "port", "list"]);
    let ports: serde_json::Value = serde_json::from_str(&ports).unwrap();
    let names: Vec<&str> = ports
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["uplink", "host", "pod-a", "pod-b"],
        "only the lab's ports are left (the container's is gone)"
    );
    let left: Vec<_> = std::fs::read_dir(dir.join("ipam"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "the address was released: {left:?}");
    drop(made);
    drop(ctd);
}

//! podpath in Docker, the way the tests and `scripts/demo.sh --docker` run it: a
//! private dockerd inside a network namespace of its own (started in the root one it
//! would rewrite the host's firewall; docs/docker.md), podpath's images loaded into
//! it, and a cluster of node containers on a private Docker network:
//!
//! - `etcd`: Debian's etcd (image podpath-etcd), the nodes' meeting point;
//! - `nodeK`: a node's kernel and its pods (network namespaces made by
//!   podpath-cni, as a runtime would), with a node's powers;
//! - `podpathK`: podpath on that node (`podpath-node`: dataplane, control service,
//!   agent), in `nodeK`'s network namespace as a DaemonSet pod with hostNetwork is,
//!   its uplink `net_af_packet` on the node's `eth0`;
//! - `ext`: an external host on the same network.
//!
//! Everything is ours: the daemon is stopped by PID and its namespace and directory
//! removed when the handle drops, also when a test fails.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A private Docker daemon in a network namespace of its own.
pub struct Dockerd {
    pub netns: String,
    pub dir: PathBuf,
    child: Child,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Dockerd {
    /// Starts dockerd with its data and exec roots in a temp dir, in a new network
    /// namespace; ready when `docker info` answers (30 s at most).
    pub fn start() -> Result<Dockerd> {
        let tag = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let netns = format!("ppdk-{tag}");
        let dir = std::env::temp_dir().join(format!("podpath-docker-{tag}"));
        std::fs::create_dir_all(&dir)?;
        crate::net::ip(&["netns", "add", &netns])?;
        let _ = crate::net::ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        // nsenter, not `ip netns exec`: that one remounts /sys and hides the cgroup
        // mounts dockerd needs.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("dockerd")
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = crate::net::ip(&["netns", "del", &netns]);
                bail!("starting dockerd (apt-get install docker.io): {e}")
            }
        };
        let d = Dockerd { netns, dir, child };
        let end = Instant::now() + Duration::from_secs(30);
        while d.run(&["info", "--format", "{{.ServerVersion}}"]).is_err() {
            if Instant::now() > end {
                bail!("dockerd did not answer within 30 s: {}", d.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(d)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
            .args(args);
        c
    }

    /// `docker ARGS`: its stdout, or an error with its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let o = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .context("docker (apt-get install docker.io)")?;
        if !o.status.success() {
            bail!(
                "docker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// `docker ARGS`: success, stdout, stderr (for commands expected to fail).
    pub fn output(&self, args: &[&str]) -> (bool, String, String) {
        match self.command(args).stdin(Stdio::null()).output() {
            Ok(o) => (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ),
            Err(e) => (false, String::new(), e.to_string()),
        }
    }

    /// `docker exec -i CONTAINER ARGS` with `input` on stdin.
    pub fn exec_stdin(&self, container: &str, args: &[&str], input: &str) -> Result<String> {
        use std::io::Write;
        let mut all = vec!["exec", "-i", container];
        all.extend_from_slice(args);
        let mut c = self
            .command(&all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut i) = c.stdin.take() {
            i.write_all(input.as_bytes())?;
        }
        let o = c.wait_with_output()?;
        if !o.status.success() {
            bail!(
                "{container}: {}: {} {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// `docker exec CONTAINER ARGS`.
    pub fn exec(&self, container: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["exec", container];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// A hugetlbfs volume the podpath user (65532) may write: what the kubelet's
    /// `HugePages-2Mi` emptyDir gives a pod with `fsGroup`.
    pub fn hugetlbfs_volume(&self, name: &str) -> Result<()> {
        self.run(&[
            "volume",
            "create",
            "--driver",
            "local",
            "--opt",
            "type=hugetlbfs",
            "--opt",
            "device=nodev",
            "--opt",
            "o=uid=65532,gid=65532,pagesize=2M",
            name,
        ])
        .map(|_| ())
    }

    /// Loads a docker-archive (docker/build.sh's output).
    pub fn load(&self, tar: &Path) -> Result<()> {
        self.run(&["load", "-i", &tar.display().to_string()])
            .map(|_| ())
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Turns checksum and segmentation offloads off on `container`'s eth0. Docker's
    /// veths leave TCP/UDP checksums to the receiver and merge segments (GRO): an
    /// af_packet socket then reads unfinished or 64 KB frames, which a NIC on a real
    /// network never puts on the wire. Done from outside (the container's network
    /// namespace by its PID), so the container needs no ethtool nor NET_ADMIN.
    pub fn offloads_off(&self, container: &str) -> Result<()> {
        let pid = self.run(&["inspect", "--format", "{{.State.Pid}}", container])?;
        let o = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", pid.trim()))
            .args([
                "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off", "gro", "off",
            ])
            .output()?;
        if !o.status.success() {
            bail!(
                "ethtool in {container}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Ok(ids) = self.run(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut a = vec!["rm", "-f", "-v"];
                a.extend(ids);
                let _ = self.run(&a);
            }
        }
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Anything dockerd left mounted under its directory (overlays, shm).
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = crate::net::ip(&["netns", "del", &self.netns]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where docker/build.sh sits (the workspace root).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lab/ has a parent")
        .to_path_buf()
}

/// Builds podpath's images from the binaries already built (`profile`), into `out`.
/// Returns the image tag.
pub fn build_images(profile: &str, out: &Path) -> Result<String> {
    let o = Command::new("bash")
        .arg(workspace().join("docker/build.sh"))
        .args(["--no-build", "--profile", profile, "--out"])
        .arg(out)
        .output()
        .context("docker/build.sh")?;
    if !o.status.success() {
        bail!(
            "docker/build.sh: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(format!("podpath:{}", env!("CARGO_PKG_VERSION")))
}

/// The Docker network's addresses: nodes .11, .12, ...; etcd .2; the external host .100.
pub const SUBNET: &str = "172.30.0.0/24";
pub const NET: &str = "ppnet";
pub const ETCD_IP: &str = "172.30.0.2";
pub const EXT_IP: &str = "172.30.0.100";

/// What a node container and podpath's container in it may do: a node's powers
/// (every capability but SYS_RESOURCE, which this sandbox's bounding set lacks, so
/// `--privileged` cannot start here), writable /proc/sys for the agent's sysctls,
/// and /dev/net/tun for the host port.
pub const NODE_POWERS: [&str; 12] = [
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--security-opt",
    "systempaths=unconfined",
    "--device",
    "/dev/net/tun",
];

/// One node of a Docker cluster.
#[derive(Debug, Clone)]
pub struct DockerNode {
    /// The node container (kernel, pods).
    pub node: String,
    /// podpath's container in it.
    pub podpath: String,
    pub ip: String,
    pub pod_cidr: String,
    pub gateway: String,
}

impl DockerNode {
    /// Node `k` of the cluster: its addresses, and `podpath{k}` as the name of the
    /// container podpathctl talks to (`podpath` or, in the DaemonSet's layout,
    /// `control`).
    fn new(k: usize, podpath: &str) -> DockerNode {
        DockerNode {
            node: format!("node{k}"),
            podpath: format!("{podpath}{k}"),
            ip: format!("172.30.0.{}", 10 + k),
            pod_cidr: format!("10.244.{}.0/24", k - 1),
            gateway: format!("10.244.{}.1", k - 1),
        }
    }
}

/// A pod inside a node container.
#[derive(Debug, Clone)]
pub struct DockerPod {
    pub node: String,
    pub netns: String,
    pub ip: String,
}

pub struct Cluster {
    pub d: Dockerd,
    pub tag: String,
    pub nodes: Vec<DockerNode>,
    pub lease_ttl_s: u64,
}

/// flannel's network config as the Docker cluster's nodes expect it.
pub fn flannel_config() -> String {
    crate::cluster::flannel_config(1, 8472)
}

impl Cluster {
    /// The network, etcd with flannel's config, the external host, and `n` nodes
    /// each with podpath running; returns once every node routes to all the others.
    pub fn up(images: &Path, n: usize, lease_ttl_s: u64) -> Result<Cluster> {
        let d = Dockerd::start()?;
        d.load(&images.join("podpath.tar"))?;
        d.load(&images.join("podpath-etcd.tar"))?;
        let v = env!("CARGO_PKG_VERSION");
        let tag = format!("podpath:{v}");
        d.run(&["network", "create", "--subnet", SUBNET, NET])?;
        d.run(&[
            "run",
            "-d",
            "--name",
            "etcd",
            "--network",
            NET,
            "--ip",
            ETCD_IP,
            &format!("podpath-etcd:{v}"),
            "--data-dir",
            "/var/lib/etcd/data",
            "--listen-client-urls",
            "http://0.0.0.0:2379",
            "--advertise-client-urls",
            &format!("http://{ETCD_IP}:2379"),
        ])?;
        d.offloads_off("etcd")?;
        let end = Instant::now() + Duration::from_secs(20);
        while d
            .exec(
                "etcd",
                &[
                    "etcdctl",
                    "put",
                    "/coreos.com/network/config",
                    &flannel_config(),
                ],
            )
            .is_err()
        {
            if Instant::now() > end {
                bail!(
                    "etcd did not start: {}",
                    d.run(&["logs", "etcd"]).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        d.run(&[
            "run",
            "-d",
            "--name",
            "ext",
            "--hostname",
            "ext",
            "--network",
            NET,
            "--ip",
            EXT_IP,
            "--user",
            "0",
            "--entrypoint",
            "sleep",
            &tag,
            "infinity",
        ])?;
        d.offloads_off("ext")?;
        let mut c = Cluster {
            d,
            tag,
            nodes: Vec::new(),
            lease_ttl_s,
        };
        for k in 1..=n {
            c.add_node(k)?;
        }
        c.wait_meshed(Duration::from_secs(60))?;
        Ok(c)
    }

    /// Node `k`: its container (it makes pod namespaces) and podpath's.
    fn add_node(&mut self, k: usize) -> Result<()> {
        let n = DockerNode::new(k, "podpath");
        self.node_container(&n, &[&format!("run{k}:/run/podpath")])?;
        self.start_podpath(&n)?;
        self.nodes.push(n);
        Ok(())
    }

    /// The node container of `n` (its kernel and its pods), with `volumes`.
    fn node_container(&self, n: &DockerNode, volumes: &[&str]) -> Result<()> {
        let mut a = vec![
            "run",
            "-d",
            "--name",
            &n.node,
            "--hostname",
            &n.node,
            "--network",
            NET,
            "--ip",
            &n.ip,
            "--user",
            "0",
        ];
        for v in volumes {
            a.extend(["-v", v]);
        }
        a.extend(NODE_POWERS);
        a.extend(["--entrypoint", "sleep", &self.tag, "infinity"]);
        self.d.run(&a)?;
        self.d.offloads_off(&n.node)
    }

    /// Node `k` with podpath laid out as deploy/daemonset.yaml runs it: install-cni
    /// (the plugin into the node's /opt/cni/bin, the socket and state directories
    /// given to the podpath user), `podpath-node config` as the init container, then
    /// the dataplane and the control service as uid 65532 with only the
    /// capabilities the DaemonSet grants (the dataplane on hugepages from a
    /// hugetlbfs of that user, as the kubelet's HugePages-2Mi volume), and the agent
    /// as root with a node's powers. `podpath` names the control container.
    pub fn add_node_as_daemonset(&mut self, k: usize) -> Result<DockerNode> {
        let n = DockerNode::new(k, "control");
        let v = |name: &str, at: &str| format!("{name}{k}:{at}");
        let (run, state, cfg, bin) = (
            v("run", "/run/podpath"),
            v("state", "/var/lib/podpath"),
            v("config", "/etc/podpath/node.d"),
            v("cnibin", "/opt/cni/bin"),
        );
        let net = format!("container:{}", n.node);
        self.node_container(&n, &[&run, &bin])?;
        let huge = format!("huge{k}");
        self.d.hugetlbfs_volume(&huge)?;
        // The init containers.
        let host = |name: &str, at: &str| format!("{name}{k}:/host{at}");
        self.d.run(&[
            "run",
            "--rm",
            "--user",
            "0",
            "-v",
            &host("cnibin", "/opt/cni/bin"),
            "-v",
            &host("cniconf", "/etc/cni/net.d"),
            "-v",
            &host("run", "/run/podpath"),
            "-v",
            &host("state", "/var/lib/podpath"),
            "--entrypoint",
            "install-cni",
            &self.tag,
        ])?;
        self.d.run(&[
            "run",
            "--rm",
            "--user",
            "0",
            "--network",
            &net,
            "-v",
            &cfg,
            "-e",
            &format!("POD_CIDR={}", n.pod_cidr),
            "-e",
            &format!("ETCD_ENDPOINTS=http://{ETCD_IP}:2379"),
            "-e",
            &format!("LEASE_TTL_S={}", self.lease_ttl_s),
            "-e",
            "IDLE_BACKOFF=true",
            "-e",
            "HUGEPAGES=on",
            "-e",
            "MEMORY_MB=128",
            &self.tag,
            "config",
        ])?;
        let ro = format!("{cfg}:ro");
        let hp = format!("{huge}:/dev/hugepages");
        self.d.run(&[
            "run",
            "-d",
            "--name",
            &format!("dataplane{k}"),
            "--network",
            &net,
            "--user",
            "65532:65532",
            "--cap-drop",
            "ALL",
            "--cap-add",
            "NET_ADMIN",
            "--cap-add",
            "NET_RAW",
            "--cap-add",
            "IPC_LOCK",
            "--cap-add",
            "SYS_NICE",
            "--cap-add",
            "SYS_ADMIN",
            "--device",
            "/dev/net/tun",
            "-v",
            &ro,
            "-v",
            &run,
            "-v",
            &hp,
            "--entrypoint",
            "podpath-dataplane",
            &self.tag,
            "--config",
            "/etc/podpath/node.d/node.toml",
        ])?;
        self.d.run(&[
            "run",
            "-d",
            "--name",
            &n.podpath,
            "--network",
            &net,
            "--user",
            "65532:65532",
            "--cap-drop",
            "ALL",
            "-v",
            &ro,
            "-v",
            &run,
            "-v",
            &state,
            "--entrypoint",
            "podpath-control",
            &self.tag,
            "--config",
            "/etc/podpath/node.d/control.toml",
        ])?;
        let name = format!("agent{k}");
        let mut a = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &net,
            "--user",
            "0",
            "-v",
            &ro,
            "-v",
            &run,
        ];
        a.extend(NODE_POWERS);
        a.extend([
            "--entrypoint",
            "podpath-agent",
            &self.tag,
            "--config",
            "/etc/podpath/node.d/agent.toml",
        ]);
        self.d.run(&a)?;
        self.nodes.push(n.clone());
        Ok(n)
    }

    /// podpath's container for `n` (the DaemonSet pod of a real node).
    fn start_podpath(&self, n: &DockerNode) -> Result<()> {
        let ttl = self.lease_ttl_s.to_string();
        let env = [
            format!("POD_CIDR={}", n.pod_cidr),
            format!("ETCD_ENDPOINTS=http://{ETCD_IP}:2379"),
            format!("LEASE_TTL_S={ttl}"),
            "IDLE_BACKOFF=true".into(),
            "HUGEPAGES=off".into(),
        ];
        let mut a: Vec<String> = [
            "run",
            "-d",
            "--name",
            &n.podpath,
            "--network",
            &format!("container:{}", n.node),
            "--pid",
            &format!("container:{}", n.node),
            "--user",
            "0",
            "-v",
            &format!("run{}:/run/podpath", &n.node[4..]),
        ]
        .iter()
        .chain(NODE_POWERS.iter())
        .map(|s| s.to_string())
        .collect();
        for e in env {
            a.push("-e".into());
            a.push(e);
        }
        a.push(self.tag.clone());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        self.d.run(&a)?;
        Ok(())
    }

    /// The prefixes node `i`'s dataplane routes.
    pub fn routes(&self, i: usize) -> Vec<String> {
        let Ok(out) = self
            .d
            .exec(&self.nodes[i].podpath, &["podpathctl", "routes", "--json"])
        else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["prefix"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether node `i` routes to node `j`'s pods.
    pub fn knows(&self, i: usize, j: usize) -> bool {
        self.routes(i).contains(&self.nodes[j].pod_cidr)
    }

    /// Waits until every node routes to every other.
    pub fn wait_meshed(&self, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            let missing: Vec<String> = (0..self.nodes.len())
                .flat_map(|i| (0..self.nodes.len()).map(move |j| (i, j)))
                .filter(|&(i, j)| i != j && !self.knows(i, j))
                .map(|(i, j)| format!("{} -> {}", self.nodes[i].node, self.nodes[j].node))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > end {
                bail!(
                    "nodes not meshed after {timeout:?}: {missing:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The last lines of every podpath container's log.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let (_, out, err) = self.d.output(&["logs", "--tail", "25", &n.podpath]);
            s += &format!("--- {}\n{out}{err}", n.podpath);
        }
        s
    }

    /// A pod on node `i` whose node end is a veth read with af_packet, attached by
    /// podpath-cni as a runtime would.
    pub fn add_pod(&self, i: usize, name: &str) -> Result<DockerPod> {
        self.add_pod_attached(i, name, "af_packet")
    }

    /// A pod on node `i` whose eth0 is a tap the dataplane makes inside the pod's
    /// namespace. podpath's containers share the node container's PID namespace
    /// (as a DaemonSet's dataplane sees the host's /run/netns), so the runtime names
    /// the pod's namespace by a process in it, `/proc/PID/ns/net`, a path both
    /// containers resolve to the same namespace.
    pub fn add_tap_pod(&self, i: usize, name: &str) -> Result<DockerPod> {
        self.add_pod_attached(i, name, "tap")
    }

    fn add_pod_attached(&self, i: usize, name: &str, attach: &str) -> Result<DockerPod> {
        let n = &self.nodes[i];
        self.d.exec(&n.node, &["ip", "netns", "add", name])?;
        let netns = if attach == "tap" {
            // A process holding the namespace: the pod's "pause" container.
            self.d.run(&[
                "exec", "-d", &n.node, "ip", "netns", "exec", name, "sleep", "infinity",
            ])?;
            let end = Instant::now() + Duration::from_secs(5);
            let pid = loop {
                let pids = self.d.exec(&n.node, &["ip", "netns", "pids", name])?;
                if let Some(p) = pids.split_whitespace().next() {
                    break p.to_string();
                }
                if Instant::now() > end {
                    bail!("no process in {name} on {}", n.node);
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            format!("/proc/{pid}/ns/net")
        } else {
            format!("/run/netns/{name}")
        };
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "podpath",
            "type": "podpath-cni",
            "controlSocket": "/run/podpath/control.sock",
            "attach": attach,
            "mtu": 1450,
            "ipam": {"type": "podpath"},
        })
        .to_string();
        let out = self.d.exec_stdin(
            &n.node,
            &[
                "env",
                "-i",
                "CNI_COMMAND=ADD",
                &format!("CNI_CONTAINERID={name}"),
                &format!("CNI_NETNS={netns}"),
                "CNI_IFNAME=eth0",
                // The plugin install-cni put on the node first, as the kubelet's
                // runtime finds it; else the image's own.
                "CNI_PATH=/opt/cni/bin:/usr/bin",
                "PATH=/opt/cni/bin:/usr/sbin:/usr/bin",
                "podpath-cni",
            ],
            &conf,
        )?;
        let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let ip = r["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .with_context(|| format!("podpath-cni ADD on {}: {out}", n.node))?
            .to_string();
        Ok(DockerPod {
            node: n.node.clone(),
            netns: name.into(),
            ip,
        })
    }

    /// `ARGS` inside `pod`'s namespace.
    pub fn in_pod(&self, pod: &DockerPod, args: &[&str]) -> Result<String> {
        let mut a = vec!["ip", "netns", "exec", &pod.netns];
        a.extend_from_slice(args);
        self.d.exec(&pod.node, &a)
    }

    /// `ARGS` inside `pod`'s namespace, in the background (servers).
    pub fn in_pod_detached(&self, pod: &DockerPod, args: &[&str]) -> Result<()> {
        let mut a = vec!["exec", "-d", &pod.node, "ip", "netns", "exec", &pod.netns];
        a.extend_from_slice(args);
        self.d.run(&a).map(|_| ())
    }

    /// Three pings from `pod` to `dst`: whether all were answered, and ping's output.
    pub fn ping(&self, pod: &DockerPod, dst: &str) -> (bool, String) {
        match self.in_pod(pod, &["ping", "-c", "3", "-W", "2", "-i", "0.2", dst]) {
            Ok(o) => (o.contains(" 0% packet loss"), o),
            Err(e) => (false, e.to_string()),
        }
    }

    /// An HTTP GET from `pod`, 5 s at most (busybox wget: its own -T crashes in
    /// Debian's busybox 1.35): the body.
    pub fn get(&self, pod: &DockerPod, url: &str) -> String {
        self.in_pod(pod, &["timeout", "5", "wget", "-q", "-O", "-", url])
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// An HTTP GET from the external host, 5 s at most: the body.
    pub fn ext_get(&self, url: &str) -> String {
        self.d
            .exec("ext", &["timeout", "5", "wget", "-q", "-O", "-", url])
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Serves the pod's name over HTTP on :8080 (busybox httpd) from inside `pod`.
    pub fn serve(&self, pod: &DockerPod) -> Result<()> {
        let dir = format!("/tmp/www-{}", pod.netns);
        self.d.exec(
            &pod.node,
            &[
                "sh",
                "-c",
                &format!("mkdir -p {dir} && echo {} > {dir}/index.html", pod.netns),
            ],
        )?;
        self.in_pod_detached(pod, &["httpd", "-f", "-p", "8080", "-h", &dir])
    }

    /// The demo's Service on every node: `default/web`, ClusterIP 10.96.0.10:80, to
    /// port 8080 of `endpoints`, with a NodePort when given.
    pub fn set_web_service(&self, endpoints: &[&DockerPod], node_port: Option<u16>) -> Result<()> {
        let mut args: Vec<String> = [
            "service",
            "set",
            "default/web",
            "--vip",
            "10.96.0.10",
            "--port",
            "80",
        ]
        .map(String::from)
        .to_vec();
        for e in endpoints {
            args.push("--endpoint".into());
            args.push(format!("{}:8080", e.ip));
        }
        if let Some(p) = node_port {
            args.push("--node-port".into());
            args.push(p.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for i in 0..self.nodes.len() {
            self.ctl(i, &args)?;
        }
        Ok(())
    }

    /// podpathctl on node `i`.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Result<String> {
        let mut a = vec!["podpathctl"];
        a.extend_from_slice(args);
        self.d.exec(&self.nodes[i].podpath, &a)
    }

    /// Takes node `i` off the Docker network (its eth0 disappears: a partition).
    pub fn disconnect(&self, i: usize) -> Result<()> {
        self.d
            .run(&["network", "disconnect", NET, &self.nodes[i].node])
            .map(|_| ())
    }

    /// Puts node `i` back with its address. Docker names the new interface after the
    /// ones it has made (eth1, ...); it is renamed eth0, as udev's stable names keep
    /// a re-created NIC's name on a real node, and its offloads turned off again.
    pub fn reconnect(&self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        self.d
            .run(&["network", "connect", "--ip", &n.ip, NET, &n.node])?;
        let out = self.d.exec(&n.node, &["ip", "-4", "-o", "addr", "show"])?;
        let dev = out
            .lines()
            .find(|l| l.contains(&format!(" {}/", n.ip)) && !l.contains("pphost"))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(String::from)
            .with_context(|| format!("{}: no interface with {}: {out}", n.node, n.ip))?;
        if dev != "eth0" {
            for args in [
                vec!["ip", "link", "set", &dev, "down"],
                vec!["ip", "link", "set", &dev, "name", "eth0"],
                vec!["ip", "link", "set", "eth0", "up"],
            ] {
                self.d.exec(&n.node, &args)?;
            }
        }
        self.d.offloads_off(&n.node)
    }

    /// Starts node `i`'s podpath container again after a stop or kill.
    pub fn restart_podpath(&self, i: usize) -> Result<()> {
        self.d.run(&["start", &self.nodes[i].podpath]).map(|_| ())
    }
}

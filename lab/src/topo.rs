//! Building, describing and removing the lab topology.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::net::{self, ip, ip_in};

pub const UNDERLAY_PREFIX: &str = "192.168.77";
pub const POD_MTU: u16 = 1450;
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Where each node's control service serves Prometheus metrics (inside the node's
/// namespace, so every node has the same).
pub const METRICS_ADDR: &str = "127.0.0.1:9469";
/// The Service range every lab node is configured with (kubeadm's default).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The underlay router's host number (192.168.77.254), when the lab has one.
pub const ROUTER_HOST: u8 = 254;
/// The host behind the router.
pub const INTERNET_HOST: &str = "203.0.113.10";
/// The host port's interface name in the node's namespace.
pub const HOST_IF: &str = "pphost";

#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Unique name; every namespace is `pp-<name>-...`.
    pub name: String,
    pub nodes: usize,
    pub pods_per_node: usize,
    pub external: bool,
    /// The podpath-dataplane binary.
    pub dataplane: PathBuf,
    pub state_dir: PathBuf,
    /// Worker idle back-off (on in the lab: dataplanes share the machine's cores).
    pub idle_backoff: bool,
    /// How long to wait for a dataplane to come up.
    pub start_timeout: Duration,
    /// The overlay's UDP port (4789, or flannel's 8472) and VNI.
    pub vxlan_port: u16,
    pub vni: u32,
    /// More TOML for every dataplane's configuration (e.g. short conntrack timeouts).
    pub dataplane_extra: String,
    /// A router on the underlay (192.168.77.254, the nodes' gateway) in front of an
    /// "internet" host 203.0.113.10, over a link of MTU 1400.
    pub router: bool,
    /// Workers per dataplane (1 or 2). With 2, every port gets two queue pairs, so
    /// flows spread over both workers and replies cross between them (hand-off).
    pub workers: usize,
    /// Write every other node into each node's configuration as a static remote
    /// (false: the nodes find each other through the agent, e.g. over etcd).
    pub static_remotes: bool,
    /// Leave the node's kernel side (host port address and routes, the uplink
    /// without ARP and with strict rp_filter) to podpath-agent's bootstrap.
    pub agent_bootstrap: bool,
    /// Attach the pods by running podpath-cni as a container runtime does (after the
    /// node's control service is up), instead of the lab's own veths and ports.
    pub cni_pods: bool,
    /// The control service starts and restarts each node's dataplane
    /// (`dataplane_command`), instead of the lab starting it.
    pub supervised: bool,
}

impl LabOptions {
    pub fn new(name: &str) -> LabOptions {
        LabOptions {
            name: name.into(),
            nodes: 2,
            pods_per_node: 2,
            external: true,
            dataplane: default_dataplane(),
            state_dir: PathBuf::from("/run/podpath-lab"),
            idle_backoff: true,
            start_timeout: Duration::from_secs(60),
            vxlan_port: 4789,
            vni: 1,
            dataplane_extra: String::new(),
            router: false,
            workers: 1,
            static_remotes: true,
            agent_bootstrap: false,
            cni_pods: false,
            supervised: false,
        }
    }
}

/// `podpath-dataplane` beside this executable (cargo puts them together), or
/// `$PODPATH_DATAPLANE`.
pub fn default_dataplane() -> PathBuf {
    if let Ok(p) = std::env::var("PODPATH_DATAPLANE") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Integration tests run from target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("podpath-dataplane")
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Attach {
    AfPacket,
    Tap,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub attach: Attach,
    /// The dataplane port name.
    pub port: String,
    /// DPDK device arguments.
    pub device: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub netns: String,
    pub node_ip: String,
    pub pod_cidr: String,
    /// The pods' gateway (answered by the dataplane).
    pub gateway: String,
    pub pods: Vec<Pod>,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub file_prefix: String,
    pub dataplane_pid: Option<u32>,
    /// The node's control service.
    pub control_socket: PathBuf,
    pub control_config: PathBuf,
    pub control_log: PathBuf,
    pub state_file: PathBuf,
    pub control_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub prefix: String,
    pub dir: PathBuf,
    pub underlay: String,
    pub external: Option<String>,
    /// The router and the host behind it, when made.
    #[serde(default)]
    pub router: Option<String>,
    #[serde(default)]
    pub internet: Option<String>,
    pub nodes: Vec<Node>,
    /// Every namespace made, in creation order.
    pub namespaces: Vec<String>,
    /// Workers per dataplane.
    #[serde(default = "one")]
    pub workers: usize,
    /// Processes started beside the nodes (etcd, the agents), stopped first by
    /// `down`: (PID, program name, as its command line shows it).
    #[serde(default)]
    pub helpers: Vec<(u32, String)>,
}

fn one() -> usize {
    1
}

/// An af_packet device on `iface`, with a queue pair per worker (PACKET_FANOUT
/// spreads the flows over them).
fn af_packet(j: usize, iface: &str, workers: usize) -> String {
    if workers > 1 {
        format!("net_af_packet{j},iface={iface},qpairs={workers}")
    } else {
        format!("net_af_packet{j},iface={iface}")
    }
}

/// The dataplane's `eal.lcores` for node `i` of the lab on `cpus` CPUs: its worker(s)
/// on a CPU of their own where there are enough (node 1's on CPU 1, node 2's on CPU
/// 0, ...), the control thread on another; with two workers, one on each CPU.
pub fn lab_lcores(i: usize, workers: usize, cpus: usize) -> String {
    let cpus = cpus.max(1);
    let (main, first) = (i % cpus, (i + 1) % cpus);
    match workers {
        0 | 1 if cpus > 1 => format!("{main},{first}"),
        0 | 1 => "0@0,1@0".into(),
        _ => {
            let mut l = format!("0@{main}");
            for w in 0..workers {
                l += &format!(",{}@{}", w + 1, (first + w) % cpus);
            }
            l
        }
    }
}

/// A running lab. `down()` (or dropping it, when `cleanup_on_drop`) removes it.
pub struct Lab {
    pub state: State,
    pub cleanup_on_drop: bool,
}

fn pod_letter(j: usize) -> char {
    char::from(b'a' + u8::try_from(j % 26).unwrap_or(0))
}

impl State {
    fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    pub fn save(&self) -> Result<()> {
        fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join("state.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        fs::rename(&tmp, Self::path(&self.dir))?;
        Ok(())
    }

    pub fn load(state_dir: &Path, name: &str) -> Result<State> {
        let p = Self::path(&state_dir.join(name));
        let b =
            fs::read(&p).with_context(|| format!("no lab {name:?} ({} missing)", p.display()))?;
        Ok(serde_json::from_slice(&b)?)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pod(&self, name: &str) -> Option<(&Node, &Pod)> {
        self.nodes
            .iter()
            .find_map(|n| n.pods.iter().find(|p| p.name == name).map(|p| (n, p)))
    }
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 12
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        bail!("lab name {name:?} must be 1-12 characters of a-z and 0-9");
    }
    Ok(())
}

impl Lab {
    /// Builds the topology and starts a dataplane per node. On failure everything
    /// made so far is removed.
    pub fn up(opts: &LabOptions) -> Result<Lab> {
        validate_name(&opts.name)?;
        if opts.nodes == 0 || opts.nodes > 8 || opts.pods_per_node > 8 {
            bail!("nodes must be 1-8 and pods per node 0-8");
        }
        if !opts.dataplane.exists() {
            bail!(
                "dataplane binary {} not found: build it with `cargo build --release -p podpath-dataplane` or pass --dataplane",
                opts.dataplane.display()
            );
        }
        let prefix = format!("pp-{}", opts.name);
        if net::netns_list()
            .iter()
            .any(|n| n.starts_with(&format!("{prefix}-")))
        {
            bail!(
                "a lab named {:?} is already up (podpath-lab down --name {} removes it)",
                opts.name,
                opts.name
            );
        }
        let dir = opts.state_dir.join(&opts.name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut lab = Lab {
            state: State {
                name: opts.name.clone(),
                prefix: prefix.clone(),
                dir,
                underlay: format!("{prefix}-underlay"),
                external: None,
                router: None,
                internet: None,
                nodes: Vec::new(),
                namespaces: Vec::new(),
                workers: opts.workers.clamp(1, 2),
                helpers: Vec::new(),
            },
            cleanup_on_drop: true,
        };
        match lab.build(opts) {
            Ok(()) => Ok(lab),
            Err(e) => {
                let logs = lab.log_tails();
                lab.down();
                Err(e.context(logs))
            }
        }
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        self.state.namespaces.push(ns.to_owned());
        self.state.save()?;
        ip(&["netns", "add", ns])?;
        ip_in(ns, &["link", "set", "lo", "up"])?;
        // IPv4-only cluster: keep IPv6 router solicitations and MLD out of the counters.
        let _ = net::exec_in(ns, "sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        Ok(())
    }

    fn build(&mut self, opts: &LabOptions) -> Result<()> {
        let prefix = self.state.prefix.clone();
        let underlay = self.state.underlay.clone();
        self.add_ns(&underlay)?;
        ip_in(&underlay, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&underlay, &["link", "set", "br0", "up"])?;
        if opts.external {
            let ext = format!("{prefix}-ext");
            self.add_ns(&ext)?;
            self.underlay_link(&ext, "u-ext", Some(&format!("{UNDERLAY_PREFIX}.100/24")))?;
            // Its frames reach an af_packet uplink as a NIC's would: checksums complete.
            offloads_off(&ext, "eth0");
            self.state.external = Some(ext);
        }
        if opts.router {
            let (router, inet) = (format!("{prefix}-router"), format!("{prefix}-inet"));
            self.add_ns(&router)?;
            self.add_ns(&inet)?;
            self.underlay_link(
                &router,
                "u-rt",
                Some(&format!("{UNDERLAY_PREFIX}.{ROUTER_HOST}/24")),
            )?;
            offloads_off(&router, "eth0");
            ip_in(
                &router,
                &[
                    "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", &inet,
                ],
            )?;
            for (ns, dev, addr) in [
                (&router, "eth1", "203.0.113.1/24"),
                (&inet, "eth0", "203.0.113.10/24"),
            ] {
                ip_in(ns, &["addr", "add", addr, "dev", dev])?;
                // A narrower link behind the router: path MTU discovery has work to do.
                ip_in(ns, &["link", "set", dev, "mtu", "1400", "up"])?;
                offloads_off(ns, dev);
            }
            ip_in(&inet, &["route", "add", "default", "via", "203.0.113.1"])?;
            net::exec_in(&router, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
            self.state.router = Some(router);
            self.state.internet = Some(inet);
        }
        for k in 1..=opts.nodes {
            let name = format!("node{k}");
            let ns = format!("{prefix}-{name}");
            self.add_ns(&ns)?;
            let node_ip = format!("{UNDERLAY_PREFIX}.{}", 10 + k);
            // The dataplane owns the node's underlay link (the uplink port): the kernel
            // keeps no address on it, and gets the node IP on the host port instead.
            self.underlay_link(&ns, &format!("u-n{k}"), None)?;
            offloads_off(&ns, "eth0");
            // The kernel must not answer on it either: no ARP, and strict reverse-path
            // filtering drops what it would otherwise take for its (host-port) address.
            if !opts.agent_bootstrap {
                ip_in(&ns, &["link", "set", "eth0", "arp", "off"])?;
                for key in [
                    "net.ipv4.conf.all.rp_filter=1",
                    "net.ipv4.conf.eth0.rp_filter=1",
                ] {
                    net::exec_in(&ns, "sysctl", &["-qw", key])?;
                }
            }
            let mut node = Node {
                name: name.clone(),
                netns: ns.clone(),
                node_ip,
                pod_cidr: format!("10.244.{}.0/24", k - 1),
                gateway: format!("10.244.{}.1", k - 1),
                pods: Vec::new(),
                socket: self.state.dir.join(format!("{name}.sock")),
                config: self.state.dir.join(format!("{name}.toml")),
                log: self.state.dir.join(format!("{name}.log")),
                file_prefix: format!("{prefix}-{name}"),
                dataplane_pid: None,
                control_socket: self.state.dir.join(format!("{name}-control.sock")),
                control_config: self.state.dir.join(format!("{name}-control.toml")),
                control_log: self.state.dir.join(format!("{name}-control.log")),
                state_file: self.state.dir.join(format!("{name}-state.json")),
                control_pid: None,
            };
            for j in 0..opts.pods_per_node {
                let letter = pod_letter(j);
                let pod_ns = format!("{ns}-{letter}");
                self.add_ns(&pod_ns)?;
                let attach = if j % 2 == 0 {
                    Attach::AfPacket
                } else {
                    Attach::Tap
                };
                let ip = format!("10.244.{}.{}", k - 1, j + 2);
                if opts.cni_pods {
                    // podpath-cni makes the interface and the port once the node runs.
                    node.pods.push(Pod {
                        name: format!("{name}-{letter}"),
                        netns: pod_ns,
                        ip,
                        attach,
                        port: String::new(),
                        device: String::new(),
                    });
                    continue;
                }
                let device = match attach {
                    Attach::AfPacket => {
                        let host = format!("vp-{letter}");
                        veth_to_pod(&ns, &host, &pod_ns)?;
                        configure_pod_if(&pod_ns, &ip, &format!("10.244.{}.1", k - 1))?;
                        // The node end carries frames for every MAC: no offloads, no GRO.
                        offloads_off(&ns, &host);
                        af_packet(j, &host, self.state.workers)
                    }
                    Attach::Tap => format!("net_tap{j},iface=eth0"),
                };
                node.pods.push(Pod {
                    name: format!("{name}-{letter}"),
                    netns: pod_ns,
                    ip,
                    attach,
                    port: format!("pod-{letter}"),
                    device,
                });
            }
            self.state.nodes.push(node);
            self.state.save()?;
        }
        for i in 0..self.state.nodes.len() {
            let others: Vec<Node> = self
                .state
                .nodes
                .iter()
                .filter(|o| o.name != self.state.nodes[i].name)
                .cloned()
                .collect();
            write_config(&self.state.nodes[i], i, &others, opts)?;
            if opts.supervised {
                // The control service starts the dataplane itself.
                self.start_control(i, opts)?;
                self.wait_for_dataplane(i, None, opts.start_timeout)?;
            } else {
                self.start_dataplane(i, opts)?;
                self.start_control(i, opts)?;
            }
            self.wait_in_sync(i, opts.start_timeout)?;
            if opts.cni_pods {
                self.attach_pods_by_cni(i, opts)?;
            }
        }
        for n in &self.state.nodes {
            if !opts.agent_bootstrap {
                configure_host(n)?;
            }
            for p in n
                .pods
                .iter()
                .filter(|p| p.attach == Attach::Tap && !opts.cni_pods)
            {
                wait_for(&p.netns, "eth0", Duration::from_secs(10))?;
                configure_pod_if(&p.netns, &p.ip, &n.gateway)?;
            }
        }
        self.state.save()
    }

    /// Runs podpath-cni ADD for each pod of node `i`, as a runtime would: the address
    /// the lab planned (rangeStart), af_packet or tap as planned; the port's name and
    /// device come back from the control service.
    fn attach_pods_by_cni(&mut self, i: usize, opts: &LabOptions) -> Result<()> {
        let cni = opts.dataplane.with_file_name("podpath-cni");
        let n = self.state.nodes[i].clone();
        for (j, p) in n.pods.iter().enumerate() {
            let conf = serde_json::json!({
                "cniVersion": "1.0.0",
                "name": format!("{}-{}", self.state.prefix, n.name),
                "type": "podpath-cni",
                "controlSocket": n.control_socket,
                "dataDir": self.state.dir.join(format!("cni-{}", n.name)),
                "mtu": POD_MTU,
                "attach": if p.attach == Attach::Tap { "tap" } else { "af_packet" },
                "ipam": {"type": "podpath", "subnet": n.pod_cidr, "rangeStart": p.ip},
            })
            .to_string();
            let netns = format!("/run/netns/{}", p.netns);
            let (ok, out, _) =
                crate::cluster::run_cni(&cni, &n.netns, "ADD", &p.name, &netns, &conf)?;
            let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            let addr = r["ips"][0]["address"].as_str().unwrap_or("");
            if !ok || addr != format!("{}/24", p.ip) {
                bail!("podpath-cni ADD for {}: {out}", p.name);
            }
            let mut c = podpath_proto::Client::connect(&n.control_socket, "podpath-lab")?;
            let ports = match c.call(podpath_proto::Request::PortList)? {
                podpath_proto::Response::Ports(v) => v,
                r => bail!("unexpected {r:?}"),
            };
            let known: Vec<&str> = self.state.nodes[i]
                .pods
                .iter()
                .map(|q| q.port.as_str())
                .collect();
            let port = ports
                .iter()
                .find(|x| {
                    podpath_proto::Origin::of_port(&x.name) == podpath_proto::Origin::Cni
                        && !known.contains(&x.name.as_str())
                })
                .context("the CNI pod's port")?;
            let (name, device) = (port.name.clone(), port.device.clone());
            let q = &mut self.state.nodes[i].pods[j];
            q.port = name;
            q.device = device;
        }
        self.state.save()
    }

    fn underlay_link(&self, ns: &str, port: &str, addr: Option<&str>) -> Result<()> {
        let u = &self.state.underlay;
        ip_in(
            u,
            &[
                "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        ip_in(u, &["link", "set", port, "master", "br0", "up"])?;
        // The underlay is a wire to NICs: no segment merging (GRO) or offloaded
        // checksums on its way to an af_packet uplink, which would see merged or
        // unfinished frames no NIC delivers.
        offloads_off(u, port);
        if let Some(a) = addr {
            ip_in(ns, &["addr", "add", a, "dev", "eth0"])?;
        }
        ip_in(ns, &["link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// Starts (or restarts) node `i`'s dataplane and waits for its socket.
    pub fn start_dataplane(&mut self, i: usize, opts: &LabOptions) -> Result<()> {
        let n = &self.state.nodes[i];
        let what = format!("the dataplane of {}", n.name);
        let pid = spawn_in(
            &n.netns,
            &opts.dataplane,
            &n.config,
            &n.log,
            &n.socket,
            &what,
            opts.start_timeout,
        )?;
        self.state.nodes[i].dataplane_pid = Some(pid);
        self.state.save()
    }

    /// Waits until node `i`'s dataplane answers as a process other than `not` (a
    /// supervised restart), and records its pid.
    pub fn wait_for_dataplane(
        &mut self,
        i: usize,
        not: Option<u32>,
        timeout: Duration,
    ) -> Result<u32> {
        let n = self.state.nodes[i].clone();
        let end = Instant::now() + timeout;
        loop {
            let pids = pids_running(&n.config);
            if let [pid] = pids[..] {
                if Some(pid) != not
                    && podpath_proto::Client::connect(&n.socket, "podpath-lab").is_ok()
                {
                    self.state.nodes[i].dataplane_pid = Some(pid);
                    self.state.save()?;
                    return Ok(pid);
                }
            }
            if Instant::now() > end {
                bail!(
                    "no dataplane of {} answered within {timeout:?} (running: {pids:?}; log {})",
                    n.name,
                    n.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts (or restarts) node `i`'s control service and waits for its socket.
    pub fn start_control(&mut self, i: usize, opts: &LabOptions) -> Result<()> {
        let n = &self.state.nodes[i];
        let bin = opts.dataplane.with_file_name("podpath-control");
        let what = format!("the control service of {}", n.name);
        let pid = spawn_in(
            &n.netns,
            &bin,
            &n.control_config,
            &n.control_log,
            &n.control_socket,
            &what,
            opts.start_timeout,
        )?;
        self.state.nodes[i].control_pid = Some(pid);
        self.state.save()
    }

    /// Waits until node `i`'s control service reports the dataplane in sync.
    pub fn wait_in_sync(&self, i: usize, timeout: Duration) -> Result<()> {
        let n = &self.state.nodes[i];
        let end = Instant::now() + timeout;
        loop {
            if let Ok(mut c) = podpath_proto::Client::connect(&n.control_socket, "podpath-lab") {
                if let Ok(podpath_proto::Response::State(s)) =
                    c.call(podpath_proto::Request::StateShow)
                {
                    if s.in_sync {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > end {
                bail!("the dataplane of {} did not get in sync with its control service within {timeout:?}", n.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops node `i`'s dataplane with `signal` (TERM waits, then KILL after 10 s).
    pub fn stop_dataplane(&mut self, i: usize, signal: &str) {
        if let Some(pid) = self.state.nodes[i].dataplane_pid.take() {
            stop_pid(pid, signal, "podpath-dataplane");
        }
        let _ = self.state.save();
    }

    /// Stops node `i`'s control service with `signal`.
    pub fn stop_control(&mut self, i: usize, signal: &str) {
        if let Some(pid) = self.state.nodes[i].control_pid.take() {
            stop_pid(pid, signal, "podpath-control");
        }
        let _ = self.state.save();
    }

    fn log_tails(&self) -> String {
        let mut s = String::new();
        for n in &self.state.nodes {
            if let Ok(t) = fs::read_to_string(&n.log) {
                let lines: Vec<&str> = t.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                s += &format!(
                    "--- {} dataplane log ({}):\n{tail}\n",
                    n.name,
                    n.log.display()
                );
            }
        }
        s
    }

    /// Removes everything of this lab.
    pub fn down(&mut self) {
        teardown(&self.state);
        self.cleanup_on_drop = false;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.cleanup_on_drop {
            self.down();
        }
    }
}

/// Starts `bin --config cfg` inside `ns`, logging to `log`, and waits until its
/// socket answers. Returns the PID (`ip netns exec` execs the program: same PID).
/// A node's connection-state directory: on tmpfs (/dev/shm), as /run is on a node,
/// so the lab measures what a node does (on a disk filesystem every change is a
/// write to flush). Named by the node's DPDK prefix, unique per lab; removed at
/// teardown.
pub fn state_dir_of(node: &Node) -> PathBuf {
    PathBuf::from(format!("/dev/shm/{}.state", node.file_prefix))
}

/// Processes whose command line names `config` (this lab's unique file), as
/// `--config <config>`: the dataplanes of one node, however they were started.
pub fn pids_running(config: &Path) -> Vec<u32> {
    let want = config.as_os_str().as_encoded_bytes();
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        // The dataplane itself, not `ip netns exec` in front of it (same pid after
        // exec) nor anything else mentioning the path.
        let is_dp = args
            .first()
            .is_some_and(|a| a.ends_with(b"podpath-dataplane"));
        if is_dp && args.windows(2).any(|w| w[0] == b"--config" && w[1] == want) {
            v.push(pid);
        }
    }
    v.sort_unstable();
    v
}

fn spawn_in(
    ns: &str,
    bin: &Path,
    cfg: &Path,
    log: &Path,
    sock: &Path,
    what: &str,
    timeout: Duration,
) -> Result<u32> {
    if !bin.exists() {
        bail!(
            "{} not found (cargo build --workspace --bins)",
            bin.display()
        );
    }
    let _ = fs::remove_file(sock);
    let logf = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let child = net::command_in(ns, &bin.display().to_string())
        .args(["--config", &cfg.display().to_string()])
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id();
    // Reaped by init once the lab exits, or by `reap` while it runs.
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(child);
    let end = Instant::now() + timeout;
    loop {
        if podpath_proto::Client::connect(sock, "podpath-lab").is_ok() {
            return Ok(pid);
        }
        if !net::pid_alive(pid) {
            let text = fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(8)..].join("\n");
            bail!(
                "{what} exited during start-up (log {}):\n{tail}",
                log.display()
            );
        }
        if Instant::now() > end {
            bail!("{what} did not open {} within {timeout:?}", sock.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Processes this lab process started, so they can be reaped (no zombies).
static CHILDREN: std::sync::Mutex<Vec<std::process::Child>> = std::sync::Mutex::new(Vec::new());

fn reap() {
    let mut c = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    c.retain_mut(|ch| !matches!(ch.try_wait(), Ok(Some(_))));
}

fn stop_pid(pid: u32, signal: &str, program: &str) {
    reap();
    // Only a process we started: the PID must still run our program.
    if !net::pid_alive(pid) || !net::pid_cmdline(pid).contains(program) {
        return;
    }
    net::kill(pid, signal);
    let end = Instant::now() + Duration::from_secs(10);
    while net::pid_alive(pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    if net::pid_alive(pid) {
        net::kill(pid, "KILL");
        let end = Instant::now() + Duration::from_secs(5);
        while net::pid_alive(pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    reap();
}

/// Stops the lab's dataplanes and deletes its namespaces and files; works from a
/// partial state (a crashed `up`) because it also sweeps the name prefix.
pub fn teardown(state: &State) {
    // Agents first (they undo the node side and revoke their leases), then etcd.
    for (pid, program) in &state.helpers {
        stop_pid(*pid, "TERM", program);
    }
    for n in &state.nodes {
        if let Some(pid) = n.control_pid {
            stop_pid(pid, "TERM", "podpath-control");
        }
        if let Some(pid) = n.dataplane_pid {
            stop_pid(pid, "TERM", "podpath-dataplane");
        }
        // A dataplane a supervising control service started (and left running, as
        // it does on exit): found by this lab's own configuration file.
        for pid in pids_running(&n.config) {
            stop_pid(pid, "TERM", "podpath-dataplane");
        }
        let _ = fs::remove_dir_all(format!("/var/run/dpdk/{}", n.file_prefix));
        let _ = fs::remove_dir_all(state_dir_of(n));
        // Hugepage files of a dataplane that ran without --huge-unlink (older builds).
        if let Ok(d) = fs::read_dir("/dev/hugepages") {
            for f in d.flatten() {
                if f.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}map_", n.file_prefix))
                {
                    let _ = fs::remove_file(f.path());
                }
            }
        }
    }
    let mut all: Vec<String> = net::netns_list()
        .into_iter()
        .filter(|ns| ns.starts_with(&format!("{}-", state.prefix)))
        .collect();
    for ns in &state.namespaces {
        if !all.contains(ns) {
            all.push(ns.clone());
        }
    }
    // Pods first (their veths go with them), then nodes, then the underlay.
    all.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for ns in &all {
        let _ = ip(&["netns", "del", ns]);
    }
    let _ = fs::remove_dir_all(&state.dir);
}

/// `down` for a lab known only by name (no state file, e.g. after a crash).
pub fn teardown_by_name(state_dir: &Path, name: &str) -> Result<()> {
    validate_name(name)?;
    let state = State::load(state_dir, name).unwrap_or_else(|_| State {
        name: name.into(),
        prefix: format!("pp-{name}"),
        dir: state_dir.join(name),
        underlay: String::new(),
        external: None,
        router: None,
        internet: None,
        nodes: Vec::new(),
        namespaces: Vec::new(),
        workers: 1,
        helpers: Vec::new(),
    });
    teardown(&state);
    Ok(())
}

fn veth_to_pod(node_ns: &str, host: &str, pod_ns: &str) -> Result<()> {
    ip_in(
        node_ns,
        &[
            "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", pod_ns,
        ],
    )?;
    ip_in(
        node_ns,
        &["link", "set", host, "mtu", &POD_MTU.to_string(), "up"],
    )?;
    Ok(())
}

/// A pod's eth0: MTU (uplink minus VXLAN overhead), address, default route via the
/// gateway the dataplane answers for, as the bridge CNI plugin would set it.
fn configure_pod_if(pod_ns: &str, ip: &str, gateway: &str) -> Result<()> {
    ip_in(
        pod_ns,
        &["link", "set", "eth0", "mtu", &POD_MTU.to_string(), "up"],
    )?;
    ip_in(pod_ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    ip_in(
        pod_ns,
        &["route", "add", "default", "via", gateway, "dev", "eth0"],
    )?;
    offloads_off(pod_ns, "eth0");
    Ok(())
}

/// The host port's kernel side: the node IP, and routes to the cluster and the
/// underlay through the dataplane (which answers ARP there for everything).
pub fn configure_host(n: &Node) -> Result<()> {
    wait_for(&n.netns, HOST_IF, Duration::from_secs(10))?;
    let _ = ip_in(&n.netns, &["addr", "flush", "dev", HOST_IF]);
    ip_in(
        &n.netns,
        &["addr", "add", &format!("{}/32", n.node_ip), "dev", HOST_IF],
    )?;
    ip_in(
        &n.netns,
        &["link", "set", HOST_IF, "mtu", &POD_MTU.to_string(), "up"],
    )?;
    ip_in(
        &n.netns,
        &["route", "replace", CLUSTER_CIDR, "dev", HOST_IF],
    )?;
    // Node processes reach ClusterIPs through the dataplane too (kube-proxy's
    // OUTPUT chains on a kernel node).
    ip_in(
        &n.netns,
        &["route", "replace", SERVICE_CIDR, "dev", HOST_IF],
    )?;
    ip_in(
        &n.netns,
        &[
            "route",
            "replace",
            &format!("{UNDERLAY_PREFIX}.0/24"),
            "dev",
            HOST_IF,
        ],
    )?;
    Ok(())
}

/// af_packet hands the dataplane frames as the kernel queued them: with checksum
/// offload or GSO on a veth, those are half-finished (no L4 checksum, 64 KB
/// super-frames). A pod attached to a user-space switch must send finished frames.
fn offloads_off(ns: &str, dev: &str) {
    let _ = net::exec_in(
        ns,
        "ethtool",
        &[
            "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
        ],
    );
}

fn wait_for(ns: &str, dev: &str, timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if ip_in(ns, &["link", "show", dev]).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{dev} did not appear in {ns} within {timeout:?}")
}

/// Writes the node's dataplane configuration (no ports: the control service feeds
/// them) and its control service's configuration (the pods' ports).
fn write_config(node: &Node, index: usize, others: &[Node], opts: &LabOptions) -> Result<()> {
    let dp = format!(
        "# Written by podpath-lab for {name}.\n\
         [eal]\nlcores = \"{lcores}\"\nfile_prefix = \"{prefix}\"\nmemory_mb = 128\npci = false\n\n\
         [dataplane]\nsocket = \"{sock}\"\nstate_dir = \"{ct_state}\"\nmbufs = 4095\nrx_desc = 512\ntx_desc = 512\n\n\
         [idle]\nenabled = {idle}\n",
        name = node.name,
        prefix = node.file_prefix,
        sock = node.socket.display(),
        // Beside the sockets, removed with the lab: the connection tables a
        // restarted dataplane resumes.
        ct_state = state_dir_of(node).display(),
        idle = opts.idle_backoff,
        lcores = lab_lcores(
            index,
            opts.workers.clamp(1, 2),
            std::thread::available_parallelism().map_or(2, usize::from)
        ),
    );
    let dp = format!("{dp}\n{}\n", opts.dataplane_extra);
    fs::write(&node.config, dp)?;
    let mut c = format!(
        "# Written by podpath-lab for {name}.\n\
         [control]\nsocket = \"{csock}\"\ndataplane_socket = \"{sock}\"\nstate_file = \"{state}\"\n\
         metrics = \"{METRICS_ADDR}\"\n\n",
        name = node.name,
        csock = node.control_socket.display(),
        sock = node.socket.display(),
        state = node.state_file.display(),
    );
    if opts.supervised {
        // Before [node]: these belong to [control]. The control service runs in
        // the node's namespace, so the dataplane it starts does too.
        let at = c.rfind("\n\n").unwrap_or(c.len());
        c.insert_str(
            at,
            &format!(
                "\ndataplane_command = [\"{}\", \"--config\", \"{}\"]\ndataplane_log = \"{}\"",
                opts.dataplane.display(),
                node.config.display(),
                node.log.display()
            ),
        );
    }
    c += &format!(
        "[node]\nnode_ip = \"{ip}\"\nunderlay_cidr = \"{UNDERLAY_PREFIX}.0/24\"\n{gw}pod_cidr = \"{pods}\"\n\
         cluster_cidr = \"{CLUSTER_CIDR}\"\nbridge = 1\nuplink = \"uplink\"\nhost = \"host\"\n\
         vni = {vni}\nvxlan_port = {port}\nservice_cidr = \"{SERVICE_CIDR}\"\n\n",
        ip = node.node_ip,
        pods = node.pod_cidr,
        vni = opts.vni,
        port = opts.vxlan_port,
        gw = if opts.router { format!("underlay_gateway = \"{UNDERLAY_PREFIX}.{ROUTER_HOST}\"\n") } else { String::new() },
    );
    for r in others.iter().filter(|_| opts.static_remotes) {
        c += &format!(
            "[[remote]]\nname = \"{}\"\nnode_ip = \"{}\"\nvtep_mac = \"{}\"\npod_cidr = \"{}\"\n\n",
            r.name,
            r.node_ip,
            gateway_mac(&r.gateway),
            r.pod_cidr
        );
    }
    c += &format!(
        "[[port]]\nname = \"uplink\"\ndevice = \"{}\"\n\n",
        af_packet(90, "eth0", opts.workers.clamp(1, 2))
    );
    c += &format!(
        "[[port]]\nname = \"host\"\ndevice = \"net_tap91,iface={HOST_IF}\"\nmtu = {POD_MTU}\n\n"
    );
    for p in node.pods.iter().filter(|_| !opts.cni_pods) {
        c += &format!(
            "[[port]]\nname = \"{}\"\ndevice = \"{}\"\nbridge = 1\nmtu = {POD_MTU}\n",
            p.port, p.device
        );
        if p.attach == Attach::Tap {
            c += &format!("netns = \"/var/run/netns/{}\"\n", p.netns);
        }
        c += "\n";
    }
    fs::write(&node.control_config, c)?;
    Ok(())
}

/// The MAC the dataplane uses for a gateway address (0a:58 + the address).
fn gateway_mac(gw: &str) -> String {
    gw.parse()
        .map(podpath_proto::gateway_mac_text)
        .unwrap_or_default()
}

/// The prefixes a node's dataplane routes (its control service's RouteList).
pub fn routes(n: &Node) -> Vec<String> {
    let Ok(mut c) = podpath_proto::Client::connect(&n.control_socket, "podpath-lab") else {
        return Vec::new();
    };
    match c.call(podpath_proto::Request::RouteList) {
        Ok(podpath_proto::Response::Routes(r)) => r.into_iter().map(|r| r.prefix).collect(),
        _ => Vec::new(),
    }
}

/// Adds a pod to a running node: creates its namespace, and attaches it through the
/// dataplane's control socket (hot-plug). Returns the pod.
pub fn add_pod(lab: &mut Lab, node: &str, letter: char, attach: Attach) -> Result<Pod> {
    let ni = lab
        .state
        .nodes
        .iter()
        .position(|n| n.name == node)
        .with_context(|| format!("no node {node}"))?;
    let n = lab.state.nodes[ni].clone();
    let j = usize::from(u8::try_from(letter).unwrap_or(b'a') - b'a');
    let k: usize = node.trim_start_matches("node").parse().unwrap_or(1);
    let pod_ns = format!("{}-{letter}", n.netns);
    lab.add_ns(&pod_ns)?;
    let ip = format!("10.244.{}.{}", k - 1, j + 2);
    let (device, netns) = match attach {
        Attach::AfPacket => {
            let host = format!("vp-{letter}");
            veth_to_pod(&n.netns, &host, &pod_ns)?;
            configure_pod_if(&pod_ns, &ip, &n.gateway)?;
            offloads_off(&n.netns, &host);
            (af_packet(j, &host, lab.state.workers), None)
        }
        Attach::Tap => (
            format!("net_tap{j},iface=eth0"),
            Some(format!("/var/run/netns/{pod_ns}")),
        ),
    };
    let pod = Pod {
        name: format!("{node}-{letter}"),
        netns: pod_ns.clone(),
        ip: ip.clone(),
        attach: attach.clone(),
        port: format!("pod-{letter}"),
        device: device.clone(),
    };
    let mut c = podpath_proto::Client::connect(&n.control_socket, "podpath-lab")?;
    c.call(podpath_proto::Request::PortAttach(
        podpath_proto::PortSpec {
            name: pod.port.clone(),
            device,
            netns,
            bridge: Some(1),
            queues: None,
            mtu: Some(POD_MTU),
        },
    ))?;
    if attach == Attach::Tap {
        wait_for(&pod_ns, "eth0", Duration::from_secs(10))?;
        configure_pod_if(&pod_ns, &ip, &n.gateway)?;
    }
    lab.state.nodes[ni].pods.push(pod.clone());
    lab.state.save()?;
    Ok(pod)
}

/// Detaches a pod's port and deletes its namespace.
pub fn del_pod(lab: &mut Lab, pod: &str) -> Result<()> {
    let (n, p) = lab
        .state
        .pod(pod)
        .with_context(|| format!("no pod {pod}"))?;
    let (sock, port, ns) = (n.control_socket.clone(), p.port.clone(), p.netns.clone());
    let mut c = podpath_proto::Client::connect(&sock, "podpath-lab")?;
    match c.call(podpath_proto::Request::PortDetach { name: port }) {
        Ok(_) => {}
        // Detached already (by hand): only the namespace is left to remove.
        Err(podpath_proto::ClientError::Server(e))
            if e.kind == podpath_proto::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let _ = ip(&["netns", "del", &ns]);
    for n in &mut lab.state.nodes {
        n.pods.retain(|p| p.name != pod);
    }
    lab.state.namespaces.retain(|x| *x != ns);
    lab.state.save()
}

/// `status`: every namespace with its interfaces, addresses and MACs, and the
/// dataplane processes.
pub fn status(state: &State) -> serde_json::Value {
    let nss: Vec<serde_json::Value> = state
        .namespaces
        .iter()
        .map(|ns| {
            let links = ip_in(ns, &["-j", "addr", "show"]).unwrap_or_else(|_| "[]".into());
            let links: serde_json::Value =
                serde_json::from_str(&links).unwrap_or(serde_json::Value::Null);
            let ifs: Vec<serde_json::Value> = links
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|l| l["ifname"] != "lo")
                        .map(|l| {
                            let addrs: Vec<String> = l["addr_info"]
                                .as_array()
                                .map(|v| {
                                    v.iter()
                                        .filter(|x| x["family"] == "inet")
                                        .map(|x| {
                                            format!(
                                                "{}/{}",
                                                x["local"].as_str().unwrap_or(""),
                                                x["prefixlen"]
                                            )
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            serde_json::json!({
                                "name": l["ifname"], "mac": l["address"], "mtu": l["mtu"],
                                "state": l["operstate"], "addresses": addrs,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({"netns": ns, "exists": net::netns_exists(ns), "interfaces": ifs})
        })
        .collect();
    let dps: Vec<serde_json::Value> = state
        .nodes
        .iter()
        .map(|n| {
            let alive = n.dataplane_pid.is_some_and(net::pid_alive);
            let ctl_alive = n.control_pid.is_some_and(net::pid_alive);
            serde_json::json!({
                "node": n.name, "netns": n.netns, "node_ip": n.node_ip, "pod_cidr": n.pod_cidr,
                "pid": n.dataplane_pid, "running": alive, "socket": n.socket, "config": n.config, "log": n.log,
                "control": {"pid": n.control_pid, "running": ctl_alive, "socket": n.control_socket,
                            "config": n.control_config, "log": n.control_log, "state_file": n.state_file},
                "pods": n.pods,
            })
        })
        .collect();
    serde_json::json!({"name": state.name, "namespaces": nss, "dataplanes": dps})
}

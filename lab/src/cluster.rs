//! The cluster side of a lab: a private etcd (Debian's etcd-server on 127.0.0.1, a
//! free port, a data directory of its own) and a podpath-agent per node, as the
//! demo and the tests run them. Processes are ours, stopped by PID.
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::topo::Node;

/// flannel's network config for the lab's cluster (VNI and port as the lab's).
pub fn flannel_config(vni: u32, port: u16) -> String {
    format!(
        r#"{{"Network":"{}","SubnetLen":24,"Backend":{{"Type":"vxlan","VNI":{vni},"Port":{port}}}}}"#,
        crate::topo::CLUSTER_CIDR
    )
}

/// The first port from `base` nothing listens on (127.0.0.1).
pub fn free_port(base: u16) -> u16 {
    (base..base.saturating_add(1000))
        .find(|p| TcpStream::connect(("127.0.0.1", *p)).is_err())
        .unwrap_or(base)
}

pub struct Etcd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub client: u16,
    peer: u16,
    keep: bool,
}

impl Etcd {
    /// Starts etcd with its data in `dir`, on free ports from `base`.
    pub fn start(dir: &Path, base: u16) -> Result<Etcd> {
        let client = free_port(base);
        let peer = free_port(client + 1);
        let mut e = Etcd {
            child: None,
            dir: dir.to_owned(),
            client,
            peer,
            keep: false,
        };
        e.restart()?;
        Ok(e)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    fn log(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    /// Starts it (again, on the same ports and data) and waits until it answers.
    pub fn restart(&mut self) -> Result<()> {
        let (c, p) = (self.client, self.peer);
        let log = std::fs::File::create(self.log())?;
        let child = Command::new("etcd")
            .args(["--name", "podpath-lab", "--data-dir"])
            .arg(&self.dir)
            .arg(format!("--listen-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{p}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{p}"
            ))
            .arg(format!(
                "--initial-cluster=podpath-lab=http://127.0.0.1:{p}"
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("etcd (apt-get install etcd-server)")?;
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while self.get("/probe").is_none() {
            if Instant::now() > end {
                bail!(
                    "etcd did not answer: {}",
                    std::fs::read_to_string(self.log()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops it (SIGTERM, ours by PID), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Leaves it running when dropped (the lab records its PID to stop it).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    pub fn etcdctl(&self, args: &[&str]) -> Option<String> {
        let o = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=1s")
            .args(args)
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// The value at `key` (Some("") when etcd answers and the key is absent).
    pub fn get(&self, key: &str) -> Option<String> {
        self.etcdctl(&["get", "--print-value-only", key])
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.log());
    }
}

/// A node's podpath-agent configuration: etcd as the source, a lease of `ttl_s`,
/// and the node's kernel side when `bootstrap`.
pub fn agent_config(n: &Node, etcd: &str, ttl_s: u64, bootstrap: bool) -> String {
    let mut c = format!(
        "[agent]\ncontrol_socket = \"{}\"\nsource = \"etcd\"\n\n[etcd]\nendpoints = [\"{etcd}\"]\nlease_ttl_s = {ttl_s}\n",
        n.control_socket.display()
    );
    if bootstrap {
        c += &format!(
            "\n[bootstrap]\nenabled = true\nhost_if = \"{}\"\nuplink_if = \"eth0\"\nmtu = {}\nnetns = \"/run/netns/{}\"\n",
            crate::topo::HOST_IF,
            crate::topo::POD_MTU,
            n.netns
        );
    }
    c
}

/// A node's agent (ours: killed by PID when dropped, unless kept).
pub struct Agent {
    child: Child,
    keep: bool,
}

impl Agent {
    /// Starts `bin --config <dir>/agent-<node>.toml` with `config`, logging beside it.
    pub fn start(bin: &Path, dir: &Path, n: &Node, config: &str) -> Result<Agent> {
        let conf = dir.join(format!("agent-{}.toml", n.name));
        std::fs::write(&conf, config)?;
        let log = std::fs::File::create(dir.join(format!("agent-{}.log", n.name)))?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("{} (cargo build --workspace --bins)", bin.display()))?;
        Ok(Agent { child, keep: false })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A crash: SIGKILL, no lease revoked, nothing undone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A clean stop (SIGTERM): the lease is revoked and the node side undone.
    pub fn stop(&mut self) -> bool {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.keep {
            self.kill();
        }
    }
}

/// Runs a CNI plugin as a runtime does, inside the node namespace `node_ns`: only the
/// spec's environment, `conf` on stdin. Returns success, stdout and stderr.
pub fn run_cni(
    plugin: &Path,
    node_ns: &str,
    command: &str,
    container: &str,
    netns: &str,
    conf: &str,
) -> Result<(bool, String, String)> {
    use std::io::Write;
    let mut c = Command::new("ip")
        .args(["netns", "exec", node_ns, "env", "-i"])
        .arg(format!("CNI_COMMAND={command}"))
        .arg(format!("CNI_CONTAINERID={container}"))
        .arg(format!("CNI_NETNS={netns}"))
        .arg("CNI_IFNAME=eth0")
        .arg("CNI_PATH=/usr/lib/cni")
        .arg("PATH=/usr/sbin:/usr/bin:/sbin:/bin")
        .arg(plugin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{} (cargo build --workspace --bins)", plugin.display()))?;
    if let Some(mut i) = c.stdin.take() {
        i.write_all(conf.as_bytes())?;
    }
    let o = c.wait_with_output()?;
    Ok((
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    ))
}

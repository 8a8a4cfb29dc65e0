//! The node side that podpath needs from the kernel, applied by the agent at start
//! and undone on a clean stop: the node IP and the routes to the pods, the Service
//! range and the underlay on the host port (so node processes reach pods and
//! Services through the dataplane), and the uplink's kernel side quiet (no ARP,
//! strict reverse-path filtering: the dataplane answers on it). What the agent
//! changes is recorded, so the undo restores what was there before.
use std::process::Command;

use podpath_proto::NodeSpec;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapConfig {
    /// Do it (off: the operator has done it).
    #[serde(default)]
    pub enabled: bool,
    /// The host port's kernel interface (the dataplane's tap to the node's kernel).
    #[serde(default = "default_host_if")]
    pub host_if: String,
    /// The uplink's kernel interface (the one the dataplane's af_packet uplink reads;
    /// none for a NIC the kernel does not see).
    #[serde(default)]
    pub uplink_if: Option<String>,
    /// The host port's MTU (the pods' MTU).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// The node's network namespace as a path (the lab's node namespaces); none: the
    /// agent's own (the host's, in a DaemonSet with hostNetwork).
    #[serde(default)]
    pub netns: Option<String>,
}

fn default_host_if() -> String {
    "pphost".into()
}
fn default_mtu() -> u16 {
    1450
}

/// The routing table (and the preference of its rule) of the route to the underlay
/// through the host port. A table of its own, not the main one: the uplink's kernel
/// interface may keep its address (a Docker network, a NIC whose address the node
/// keeps), and a runtime re-adding that interface refuses to when the main table
/// routes its network elsewhere ("conflicts with existing route"). The rule makes
/// ours win over the interface's connected route all the same.
pub const UNDERLAY_TABLE: &str = "1450";

/// What was applied, to undo.
#[derive(Debug, Default)]
pub struct Applied {
    routes: Vec<String>,
    /// The underlay's rule and route in [`UNDERLAY_TABLE`].
    underlay: Option<String>,
    address: Option<String>,
    /// (sysctl key, value before).
    sysctls: Vec<(String, String)>,
    arp_was_on: bool,
}

fn run(netns: Option<&str>, cmd: &str, args: &[&str]) -> Result<String, String> {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={ns}")).arg(cmd);
            c
        }
        None => Command::new(cmd),
    };
    let o = c.args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Applies the node side for `node`; waits up to 10 s for the host port to appear
/// (the control service attaches it).
pub fn apply(
    cfg: &BootstrapConfig,
    node: &NodeSpec,
    log: &dyn Fn(&str),
) -> Result<Applied, String> {
    let ns = cfg.netns.as_deref();
    let ip = |args: &[&str]| run(ns, "ip", args);
    let mut a = Applied::default();
    let t0 = std::time::Instant::now();
    while ip(&["link", "show", "dev", &cfg.host_if]).is_err() {
        if t0.elapsed() > std::time::Duration::from_secs(10) {
            return Err(format!("the host port {} did not appear", cfg.host_if));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let addr = format!("{}/32", node.node_ip);
    ip(&["addr", "replace", &addr, "dev", &cfg.host_if])?;
    a.address = Some(addr);
    ip(&[
        "link",
        "set",
        &cfg.host_if,
        "mtu",
        &cfg.mtu.to_string(),
        "up",
    ])?;
    let mut nets = vec![node.cluster_cidr.clone()];
    nets.extend(node.service_cidr.clone());
    for n in nets {
        ip(&["route", "replace", &n, "dev", &cfg.host_if])?;
        a.routes.push(n);
    }
    let u = &node.underlay_cidr;
    let t = UNDERLAY_TABLE;
    ip(&["route", "replace", u, "dev", &cfg.host_if, "table", t])?;
    let _ = ip(&["rule", "del", "pref", t]);
    ip(&["rule", "add", "pref", t, "to", u, "lookup", t])?;
    a.underlay = Some(u.clone());
    if let Some(u) = &cfg.uplink_if {
        let show = ip(&["link", "show", "dev", u])?;
        a.arp_was_on = !show.contains("NOARP");
        ip(&["link", "set", u, "arp", "off"])?;
        for key in [
            "net.ipv4.conf.all.rp_filter".to_string(),
            format!("net.ipv4.conf.{u}.rp_filter"),
        ] {
            let before = run(ns, "sysctl", &["-n", &key])?.trim().to_string();
            run(ns, "sysctl", &["-qw", &format!("{key}=1")])?;
            a.sysctls.push((key, before));
        }
    }
    log(&format!(
        "node side applied: {} on {}, routes {:?}, the underlay {} (table {}){}",
        node.node_ip,
        cfg.host_if,
        a.routes,
        node.underlay_cidr,
        UNDERLAY_TABLE,
        cfg.uplink_if
            .as_deref()
            .map(|u| format!(", {u} without ARP, rp_filter 1"))
            .unwrap_or_default()
    ));
    Ok(a)
}

/// Undoes `a` (best effort: each step is tried).
pub fn undo(cfg: &BootstrapConfig, a: &Applied, log: &dyn Fn(&str)) {
    let ns = cfg.netns.as_deref();
    for r in &a.routes {
        let _ = run(ns, "ip", &["route", "del", r, "dev", &cfg.host_if]);
    }
    if let Some(u) = &a.underlay {
        let t = UNDERLAY_TABLE;
        let _ = run(ns, "ip", &["rule", "del", "pref", t, "to", u, "lookup", t]);
        let _ = run(
            ns,
            "ip",
            &["route", "del", u, "dev", &cfg.host_if, "table", t],
        );
    }
    if let Some(addr) = &a.address {
        let _ = run(ns, "ip", &["addr", "del", addr, "dev", &cfg.host_if]);
    }
    if let Some(u) = &cfg.uplink_if {
        if a.arp_was_on {
            let _ = run(ns, "ip", &["link", "set", u, "arp", "on"]);
        }
    }
    for (k, v) in &a.sysctls {
        let _ = run(ns, "sysctl", &["-qw", &format!("{k}={v}")]);
    }
    log("node side undone");
}

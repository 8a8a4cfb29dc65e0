//! podpath-cni: attaches a pod to the node's podpath dataplane. The runtime runs it
//! as the CNI spec says (command and container in the environment, the network
//! configuration on stdin, the result on stdout); it gives the pod an address,
//! makes its interface (a veth read by an af_packet port, or a tap the dataplane
//! makes in the pod), and asks the node's control service to attach the port, so
//! the port is part of the persisted desired state like any other.
//!
//! - `spec`: the CNI contract (configuration, result, errors, versions);
//! - `ipam`: addresses (own allocator with host-local's layout, or delegation);
//! - `link`: the interfaces, with iproute2.
pub mod ipam;
pub mod link;
pub mod spec;

use std::path::{Path, PathBuf};

use podpath_proto::{Client, ClientError, ErrorKind, PortSpec, Request, Response};
use serde_json::Value;
use spec::{code, Attach, CniError, CniResult, Interface, IpConfig, NetConf, Route};

/// One invocation: the spec's environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
}

impl Env {
    pub fn from_process() -> Env {
        let v = |k: &str| std::env::var(k).unwrap_or_default();
        Env {
            command: v("CNI_COMMAND"),
            container_id: v("CNI_CONTAINERID"),
            netns: v("CNI_NETNS"),
            ifname: v("CNI_IFNAME"),
        }
    }

    fn require(&self, names: &[&str]) -> Result<(), CniError> {
        for &n in names {
            let empty = match n {
                "CNI_CONTAINERID" => self.container_id.is_empty(),
                "CNI_NETNS" => self.netns.is_empty(),
                "CNI_IFNAME" => self.ifname.is_empty(),
                _ => false,
            };
            if empty {
                return Err(CniError::new(code::INVALID_ENV, format!("{n} is not set")));
            }
        }
        Ok(())
    }
}

/// What a command printed: a JSON document, or nothing.
pub type Output = Option<Value>;

/// Runs one command. Logging goes to stderr (and `log`), never stdout.
pub fn run(env: &Env, stdin: &[u8], log: &mut dyn FnMut(&str)) -> Result<Output, CniError> {
    if env.command == "VERSION" {
        // The configuration may be just {"cniVersion": ...}, or absent.
        let asked = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
            .unwrap_or_else(|| "1.1.0".into());
        return Ok(Some(serde_json::json!({
            "cniVersion": asked,
            "supportedVersions": spec::SUPPORTED,
        })));
    }
    let conf = spec::parse_conf(stdin)?;
    match env.command.as_str() {
        "ADD" => add(env, &conf, stdin, log).map(Some),
        "DEL" => del(env, &conf, stdin, log).map(|()| None),
        "CHECK" => check(env, &conf).map(|()| None),
        "STATUS" | "GC" if !spec::at_least(&conf.cni_version, "1.1.0") => Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{} needs cniVersion 1.1.0 (the configuration says {})",
                env.command, conf.cni_version
            ),
        )),
        "STATUS" => status(&conf).map(|()| None),
        "GC" => gc(&conf, stdin, log).map(|()| None),
        "" => Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
        c => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {c:?}"),
        )),
    }
}

fn control(conf: &NetConf) -> Result<Client, CniError> {
    Client::connect(Path::new(&conf.control_socket), "podpath-cni").map_err(|e| {
        CniError::new(
            code::TRY_AGAIN,
            "the node's podpath control service is not reachable",
        )
        .with_details(e.to_string())
    })
}

fn call(c: &mut Client, r: Request) -> Result<Response, CniError> {
    c.call(r).map_err(|e| match e {
        ClientError::Server(e) => {
            CniError::new(code::DATAPLANE, format!("podpath refused: {}", e.message))
        }
        e => CniError::new(code::TRY_AGAIN, "the podpath control service failed")
            .with_details(e.to_string()),
    })
}

/// This node's pod CIDR and bridge domain, from the control service.
fn node(c: &mut Client) -> Result<(String, u16), CniError> {
    match call(c, Request::StateShow)? {
        Response::State(s) => s.node.map(|n| (n.pod_cidr, n.bridge)).ok_or_else(|| {
            CniError::new(
                code::TRY_AGAIN,
                "the node has no identity yet (podpathctl node set, or the agent)",
            )
        }),
        _ => Err(CniError::new(
            code::DATAPLANE,
            "unexpected answer to StateShow",
        )),
    }
}

fn store_dir(conf: &NetConf) -> PathBuf {
    conf.data_dir.as_deref().map_or_else(
        || Path::new("/var/lib/cni/networks").join(&conf.name),
        PathBuf::from,
    )
}

fn ipam_kind(conf: &NetConf) -> String {
    conf.ipam
        .as_ref()
        .map_or_else(|| "podpath".into(), |i| i.kind.clone())
}

/// The pod's address (CIDR form) and gateway.
fn allocate(
    env: &Env,
    conf: &NetConf,
    stdin: &[u8],
    pod_cidr: &str,
) -> Result<(String, String), CniError> {
    let kind = ipam_kind(conf);
    if kind != "podpath" {
        let r = ipam::delegate(&kind, stdin)?.ok_or_else(|| {
            CniError::new(code::DECODE, format!("IPAM plugin {kind} gave no result"))
        })?;
        let ip = r.ips.first().ok_or_else(|| {
            CniError::new(code::DECODE, format!("IPAM plugin {kind} gave no address"))
        })?;
        let gw = ip.gateway.clone().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("IPAM plugin {kind} gave no gateway"),
            )
        })?;
        return Ok((ip.address.clone(), gw));
    }
    let subnet = conf
        .ipam
        .as_ref()
        .and_then(|i| i.subnet.clone())
        .unwrap_or_else(|| pod_cidr.into());
    let net = ipam::parse_cidr(&subnet).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("subnet {subnet:?} is no IPv4 CIDR up to /30"),
        )
    })?;
    let start = conf.ipam.as_ref().and_then(|i| i.range_start);
    let ip = ipam::Store::open(&store_dir(conf))?.allocate(
        net,
        start,
        &env.container_id,
        &env.ifname,
    )?;
    let gw = std::net::Ipv4Addr::from(net.0 + 1);
    Ok((format!("{ip}/{}", net.1), gw.to_string()))
}

fn release(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let kind = ipam_kind(conf);
    if kind != "podpath" {
        return ipam::delegate(&kind, stdin).map(|_| ());
    }
    ipam::Store::open(&store_dir(conf))?.release(&env.container_id, &env.ifname);
    Ok(())
}

/// The port the dataplane reads the pod through.
fn port_spec(env: &Env, conf: &NetConf, host: &str, bridge: u16) -> Result<PortSpec, CniError> {
    let (device, netns) = match conf.attach {
        Attach::AfPacket => (
            format!("net_af_packet_{host},iface={host}"),
            match &conf.node_netns {
                Some(n) => Some(n.clone()),
                None => link::own_netns()?,
            },
        ),
        Attach::Tap => (
            format!("net_tap_{host},iface={}", env.ifname),
            Some(env.netns.clone()),
        ),
    };
    Ok(PortSpec {
        name: host.to_string(),
        device,
        netns,
        bridge: Some(bridge),
        queues: None,
        mtu: None,
    })
}

fn add(
    env: &Env,
    conf: &NetConf,
    stdin: &[u8],
    log: &mut dyn FnMut(&str),
) -> Result<Value, CniError> {
    env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
    if !link::netns_exists(&env.netns) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS {} does not exist", env.netns),
        ));
    }
    let mut c = control(conf)?;
    let (pod_cidr, bridge) = node(&mut c)?;
    let host = link::host_ifname(&env.container_id, &env.ifname);
    let (cidr, gw) = allocate(env, conf, stdin, &pod_cidr)?;
    log(&format!(
        "ADD {} {}: {cidr} via {gw}, port {host} ({:?})",
        env.container_id, env.ifname, conf.attach
    ));
    // Whatever fails from here undoes what was done, so a retried ADD starts clean.
    let undo = |c: &mut Client, e: CniError| -> CniError {
        let _ = call(c, Request::PortDetach { name: host.clone() });
        let _ = link::delete(&host);
        let _ = release(env, conf, stdin);
        e
    };
    let attach = (|| -> Result<(), CniError> {
        if conf.attach == Attach::AfPacket {
            link::add_veth(&host, &env.netns, &env.ifname, conf.mtu)?;
            link::offloads_off(None, &host)?;
            link::offloads_off(Some(&env.netns), &env.ifname)?;
        }
        match call(
            &mut c,
            Request::PortAttach(port_spec(env, conf, &host, bridge)?),
        ) {
            Ok(_) => {}
            // A retried ADD: the port from the first try is still there.
            Err(e) if e.msg.contains("already") => {}
            Err(e) => return Err(e),
        }
        if conf.attach == Attach::Tap {
            // The dataplane's tap: best effort (a tap may refuse some of these).
            let _ = link::offloads_off(Some(&env.netns), &env.ifname);
        }
        link::configure_pod(&env.netns, &env.ifname, &cidr, &gw, conf.mtu)
    })();
    if let Err(e) = attach {
        return Err(undo(&mut c, e));
    }
    let host_mac = if conf.attach == Attach::AfPacket {
        link::mac(None, &host)?
    } else {
        String::new()
    };
    let pod_mac = link::mac(Some(&env.netns), &env.ifname)?;
    let mut interfaces = Vec::new();
    if conf.attach == Attach::AfPacket {
        interfaces.push(Interface {
            name: host.clone(),
            mac: host_mac,
            ..Default::default()
        });
    }
    interfaces.push(Interface {
        name: env.ifname.clone(),
        mac: pod_mac,
        sandbox: env.netns.clone(),
        ..Default::default()
    });
    let r = CniResult {
        cni_version: conf.cni_version.clone(),
        ips: vec![IpConfig {
            address: cidr,
            gateway: Some(gw.clone()),
            interface: Some(interfaces.len() - 1),
            ..Default::default()
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".into(),
            gw: Some(gw),
        }],
        interfaces,
        ..Default::default()
    };
    Ok(spec::result_json(&r, &conf.cni_version))
}

/// Removes (id, ifname)'s port, interface and address; each may be gone already.
fn remove(env: &Env, conf: &NetConf, stdin: &[u8], c: &mut Client) -> Result<(), CniError> {
    let host = link::host_ifname(&env.container_id, &env.ifname);
    match c.call(Request::PortDetach { name: host.clone() }) {
        Ok(_) => {}
        Err(ClientError::Server(e)) if e.kind == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(
                CniError::new(code::TRY_AGAIN, format!("cannot detach port {host}"))
                    .with_details(e.to_string()),
            )
        }
    }
    link::delete(&host)?;
    release(env, conf, stdin)
}

fn del(env: &Env, conf: &NetConf, stdin: &[u8], log: &mut dyn FnMut(&str)) -> Result<(), CniError> {
    // No netns needed (it may be gone), nor a prevResult.
    env.require(&["CNI_CONTAINERID", "CNI_IFNAME"])?;
    let mut c = control(conf)?;
    log(&format!("DEL {} {}", env.container_id, env.ifname));
    remove(env, conf, stdin, &mut c)
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
    let prev: CniResult = conf
        .prev_result
        .clone()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs a prevResult"))
        .and_then(|v| {
            serde_json::from_value(v).map_err(|e| {
                CniError::new(code::DECODE, "prevResult does not parse").with_details(e.to_string())
            })
        })?;
    let host = link::host_ifname(&env.container_id, &env.ifname);
    let mut c = control(conf)?;
    match call(&mut c, Request::PortList)? {
        Response::Ports(ps) if ps.iter().any(|p| p.name == host) => {}
        _ => {
            return Err(CniError::new(
                code::DATAPLANE,
                format!("port {host} is not attached to the dataplane"),
            ))
        }
    }
    if conf.attach == Attach::AfPacket && !link::link_exists(None, &host) {
        return Err(CniError::new(
            code::DATAPLANE,
            format!("the node's interface {host} is gone"),
        ));
    }
    let have = link::addresses(&env.netns, &env.ifname)?;
    for ip in &prev.ips {
        if !have.contains(&ip.address) {
            return Err(CniError::new(
                code::DATAPLANE,
                format!("{} in the pod has {have:?}, not {}", env.ifname, ip.address),
            ));
        }
    }
    if ipam_kind(conf) == "podpath"
        && ipam::Store::open(&store_dir(conf))?
            .find(&env.container_id, &env.ifname)
            .is_none()
    {
        return Err(CniError::new(
            code::DATAPLANE,
            "the pod's address is not allocated to it",
        ));
    }
    Ok(())
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let mut c = control(conf)
        .map_err(|e| CniError::new(code::NOT_AVAILABLE, e.msg).with_details(e.details))?;
    node(&mut c)
        .map_err(|e| CniError::new(code::NOT_AVAILABLE, e.msg))
        .map(|_| ())
}

/// Removes every attachment of this network the runtime no longer knows.
fn gc(conf: &NetConf, stdin: &[u8], log: &mut dyn FnMut(&str)) -> Result<(), CniError> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    if ipam_kind(conf) != "podpath" {
        return ipam::delegate(&ipam_kind(conf), stdin).map(|_| ());
    }
    let stale: Vec<(String, String)> = ipam::Store::open(&store_dir(conf))?
        .all()
        .into_iter()
        .filter(|(_, id, ifname)| {
            !valid
                .iter()
                .any(|a| &a.container_id == id && &a.ifname == ifname)
        })
        .map(|(_, id, ifname)| (id, ifname))
        .collect();
    let mut c = control(conf)?;
    for (id, ifname) in stale {
        log(&format!("GC {id} {ifname}"));
        let env = Env {
            container_id: id,
            ifname,
            ..Env::default()
        };
        remove(&env, conf, stdin, &mut c)?;
    }
    Ok(())
}

//! `podpath-lab`: build, inspect and remove a test topology of network namespaces
//! with a podpath dataplane per node; run the demo walk; and the small traffic tools
//! the tests run inside pods.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use podpath_lab::topo::{self, default_dataplane, LabOptions};
use podpath_lab::{net, traffic, Lab, State};

#[derive(Parser)]
#[command(version, about = "A podpath test lab of network namespaces")]
struct Cli {
    /// Lab name: namespaces are called pp-<name>-...
    #[arg(long, short, global = true, default_value = "demo")]
    name: String,
    #[arg(long, global = true, default_value = "/run/podpath-lab")]
    state_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the topology and start a dataplane per node; it keeps running.
    Up {
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, default_value_t = 2)]
        pods: usize,
        /// Leave out the external host.
        #[arg(long)]
        no_external: bool,
        /// The podpath-dataplane binary (default: beside this one).
        #[arg(long)]
        dataplane: Option<PathBuf>,
        /// Busy-poll without idle back-off (needs a free core per dataplane).
        #[arg(long)]
        busy_poll: bool,
        /// The overlay's UDP port (4789; 8472 as flannel).
        #[arg(long, default_value_t = 4789)]
        vxlan_port: u16,
        #[arg(long, default_value_t = 1)]
        vni: u32,
        /// Add a router (the nodes' gateway) and a host behind it, 203.0.113.10.
        #[arg(long)]
        router: bool,
        /// Workers per dataplane (1 or 2; they share the machine's cores, with back-off).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        workers: u8,
        /// The lab's own way: static remotes and the lab's veths and ports, no etcd or
        /// agents (default: pods attached by podpath-cni, nodes found through a private
        /// etcd, an agent per node).
        #[arg(long = "static")]
        static_nodes: bool,
    },
    /// Namespaces, interfaces, addresses, MACs and dataplane processes.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove everything the lab made (also after a crash).
    Down,
    /// Up (if needed), then walk 1 of the shared docs: ARP, ping, TCP and the
    /// dataplane's counters and trace; then down unless --keep.
    Demo {
        #[arg(long)]
        keep: bool,
    },
    /// The demo in Docker: podpath's images (docker/build.sh, from the binaries
    /// beside this one) in a private dockerd, three node containers with podpath on
    /// net_af_packet over their eth0, etcd and an external host in containers, the
    /// six walks; everything removed at the end.
    DockerDemo,
    /// Run podpathctl against a node's control service: podpath-lab ctl node1 -- stats
    Ctl {
        node: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a command inside a lab namespace (pod name such as node1-a, or node1, ext).
    Exec {
        target: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Send a checked TCP stream (run inside a namespace).
    #[command(hide = true)]
    TcpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = u64::MAX)]
        bytes: u64,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<f64>,
        /// Cap the rate (Mbit/s).
        #[arg(long)]
        rate_mbps: Option<u64>,
        /// Stop once this file exists.
        #[arg(long)]
        stop_file: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Serve one checked download (run inside a namespace).
    #[command(hide = true)]
    TcpServe {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Cap the rate (Mbit/s), so a download lasts.
        #[arg(long)]
        rate_mbps: Option<u64>,
    },
    /// Download and check (run inside a namespace).
    #[command(hide = true)]
    TcpFetch {
        #[arg(long)]
        from: SocketAddr,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Answer each TCP connection with this host's address (run inside a namespace).
    #[command(hide = true)]
    WhoamiServe {
        #[arg(long)]
        port: u16,
        /// Stop after this many connections.
        #[arg(long)]
        count: u32,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Connect `count` times; print how many answers each address gave.
    #[command(hide = true)]
    WhoamiAsk {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u32,
        /// Fail unless every endpoint saw this source address ("self": our own).
        #[arg(long)]
        expect_source: Option<String>,
    },
    /// Answer UDP datagrams with this host's address, until `seconds` pass.
    #[command(hide = true)]
    UdpWhoamiServe {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Ask `count` times, `interval_ms` apart, from one socket; print who answered.
    #[command(hide = true)]
    UdpWhoamiAsk {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u32,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// Pad each question to this many bytes (a large one is sent in fragments).
        #[arg(long, default_value_t = 3)]
        size: usize,
    },
    /// One HTTP GET (run inside a namespace): prints the status code and the body.
    #[command(hide = true)]
    HttpGet {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "/healthz")]
        path: String,
    },
    /// Send one crafted TCP segment from a raw socket (run inside a namespace):
    /// flags as letters S F R A P U, or "none".
    #[command(hide = true)]
    TcpRaw {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        sport: u16,
        #[arg(long)]
        flags: String,
        #[arg(long, default_value_t = 0)]
        seq: u32,
    },
    /// Send one UDP datagram of hex bytes (run inside a namespace).
    #[command(hide = true)]
    UdpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        from: Option<std::net::IpAddr>,
        #[arg(long)]
        hex: String,
    },
    /// Answer UDP datagrams with the same bytes, `count` times (run inside a namespace).
    #[command(hide = true)]
    UdpEcho {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Send a datagram every `interval-ms` for `seconds` to a udp-echo and print the
    /// silences between echoes longer than `gap-ms`: how long forwarding stopped.
    #[command(hide = true)]
    UdpProbe {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        interval_ms: u64,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 50)]
        gap_ms: u64,
    },
    /// Send `count` UDP requests and wait for each echo.
    #[command(hide = true)]
    UdpPing {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Pad each request to this many bytes of payload.
        #[arg(long, default_value_t = 0)]
        size: usize,
    },
    /// Receive and check a TCP stream (run inside a namespace).
    #[command(hide = true)]
    TcpRecv {
        #[arg(long)]
        port: u16,
        /// Require exactly this many bytes (0: whatever the sender sends).
        #[arg(long, default_value_t = 0)]
        bytes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Accept every connection arriving within this many seconds (each checked
        /// on its own), instead of one.
        #[arg(long)]
        accept_seconds: Option<f64>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("podpath-lab: {e:#}");
        std::process::exit(1);
    }
}

fn require_root() -> Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        })
        .unwrap_or_default();
    if uid != "0" {
        bail!("the lab creates network namespaces: run it as root");
    }
    Ok(())
}

/// Resolves a lab target (pod, node, ext, underlay) to its namespace.
fn target_ns(state: &State, t: &str) -> Result<String> {
    if let Some((_, p)) = state.pod(t) {
        return Ok(p.netns.clone());
    }
    if let Some(n) = state.node(t) {
        return Ok(n.netns.clone());
    }
    match t {
        "ext" => state
            .external
            .clone()
            .context("this lab has no external host"),
        "underlay" => Ok(state.underlay.clone()),
        "router" => state
            .router
            .clone()
            .context("this lab has no router (up --router)"),
        "inet" => state
            .internet
            .clone()
            .context("this lab has no internet host (up --router)"),
        _ => bail!(
            "no pod or node {t:?} in lab {} (see podpath-lab status)",
            state.name
        ),
    }
}

fn podpathctl() -> PathBuf {
    let d = default_dataplane();
    d.with_file_name("podpathctl")
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::TcpSend {
            to,
            bytes,
            seconds,
            rate_mbps,
            stop_file,
            seed,
        } => {
            // Bounded always: bytes, seconds, or a stop file with a 10-minute cap.
            let seconds = match (bytes, seconds, &stop_file) {
                (u64::MAX, None, None) => bail!("give --bytes, --seconds or --stop-file"),
                (_, None, Some(_)) => Some(600.0),
                (_, s, _) => s,
            };
            let pace = traffic::Pace {
                bytes,
                duration: seconds.map(Duration::from_secs_f64),
                rate_mbps,
                stop_file,
            };
            let n = traffic::send(to, &pace, seed, Duration::from_secs(120))?;
            println!("sent {n} bytes to {to}");
            Ok(())
        }
        Cmd::TcpServe {
            port,
            bytes,
            seed,
            rate_mbps,
        } => {
            let peer = traffic::serve(port, bytes, seed, rate_mbps, Duration::from_secs(120))?;
            println!("connection from {peer}");
            println!("served {bytes} bytes");
            Ok(())
        }
        Cmd::TcpFetch { from, bytes, seed } => {
            let n = traffic::fetch(from, bytes, seed, Duration::from_secs(120))?;
            println!("fetched {n} bytes, all correct");
            Ok(())
        }
        Cmd::WhoamiServe {
            port,
            count,
            seconds,
        } => {
            let l = std::net::TcpListener::bind(("0.0.0.0", port))?;
            l.set_nonblocking(true)?;
            let end = std::time::Instant::now() + Duration::from_secs(seconds);
            let mut n = 0;
            while n < count && std::time::Instant::now() < end {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        use std::io::Write;
                        let me = s.local_addr()?.ip();
                        let _ = writeln!(s, "{me} saw {}", peer.ip());
                        n += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            println!("served {n}");
            Ok(())
        }
        Cmd::WhoamiAsk {
            to,
            count,
            expect_source,
        } => {
            use std::io::Read;
            let mut seen: std::collections::BTreeMap<String, u32> =
                std::collections::BTreeMap::new();
            for _ in 0..count {
                // A connect that completes proves the answer came from `to`: the
                // kernel takes a SYN-ACK only from the address it sent the SYN to.
                let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                let mut buf = String::new();
                s.read_to_string(&mut buf)?;
                // "<endpoint> saw <source>"
                let words: Vec<&str> = buf.split_whitespace().collect();
                let who = words.first().copied().unwrap_or("?").to_owned();
                if let Some(want) = &expect_source {
                    let want = if want == "self" {
                        s.local_addr()?.ip().to_string()
                    } else {
                        want.clone()
                    };
                    let got = words.get(2).copied().unwrap_or("?");
                    if got != want {
                        bail!("endpoint {who} saw source {got}, expected {want}");
                    }
                }
                *seen.entry(who).or_default() += 1;
            }
            for (k, v) in &seen {
                println!("{k} {v}");
            }
            Ok(())
        }
        Cmd::UdpWhoamiServe { port, seconds } => {
            let s = std::net::UdpSocket::bind(("0.0.0.0", port))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            let end = std::time::Instant::now() + Duration::from_secs(seconds);
            let mut buf = [0u8; 512];
            while std::time::Instant::now() < end {
                if let Ok((_, from)) = s.recv_from(&mut buf) {
                    // Answer from the address the request reached (the endpoint's).
                    let me = net::local_ip_towards(from.ip()).unwrap_or_else(|| "?".into());
                    let _ = s.send_to(me.as_bytes(), from);
                }
            }
            Ok(())
        }
        Cmd::UdpWhoamiAsk {
            to,
            count,
            interval_ms,
            size,
        } => {
            let mut question = b"who".to_vec();
            question.resize(size.max(3), b'.');
            let s = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            s.connect(to)?;
            let mut buf = [0u8; 512];
            for _ in 0..count {
                s.send(&question)?;
                match s.recv(&mut buf) {
                    Ok(n) => println!("{}", String::from_utf8_lossy(&buf[..n])),
                    Err(_) => println!("none"),
                }
                std::thread::sleep(Duration::from_millis(interval_ms));
            }
            Ok(())
        }
        Cmd::UdpEcho { port, count } => {
            let s = std::net::UdpSocket::bind(("0.0.0.0", port))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut buf = vec![0u8; 65_536];
            for _ in 0..count {
                let (n, from) = s.recv_from(&mut buf).context("no request arrived")?;
                s.send_to(&buf[..n], from)?;
                println!("echoed {n} bytes to {}", from.ip());
            }
            Ok(())
        }
        Cmd::UdpProbe {
            to,
            interval_ms,
            seconds,
            gap_ms,
        } => {
            let p = traffic::probe(
                to,
                Duration::from_millis(interval_ms.max(1)),
                seconds.clamp(0.0, 600.0),
                Duration::from_millis(gap_ms),
            )?;
            println!("sent {} echoed {}", p.sent, p.echoed);
            for (at, len) in &p.gaps {
                println!("gap at {at:.3} s: {} ms", len.as_millis());
            }
            Ok(())
        }
        Cmd::UdpPing { to, count, size } => {
            let s = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            // Connected, so ICMP errors (port unreachable) surface as errors at once.
            s.connect(to)?;
            let mut ok = 0;
            let mut buf = vec![0u8; 65_536];
            for i in 0..count {
                let mut msg = format!("podpath udp request {i}");
                while msg.len() < size {
                    msg.push('.');
                }
                s.send(msg.as_bytes())?;
                match s.recv(&mut buf) {
                    Ok(n) if &buf[..n] == msg.as_bytes() => ok += 1,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        bail!("refused: {e}")
                    }
                    Err(_) => {}
                }
            }
            println!("{ok} of {count} replies");
            if ok != count {
                bail!("{} requests got no reply", count - ok);
            }
            Ok(())
        }
        Cmd::HttpGet { to, path } => {
            let (code, body) = traffic::http_get(to, &path)?;
            println!("{code}");
            println!("{body}");
            Ok(())
        }
        Cmd::TcpRaw {
            to,
            sport,
            flags,
            seq,
        } => {
            let n = traffic::tcp_raw(to, sport, &flags, seq)?;
            println!("sent a {n}-byte segment with flags {flags} to {to}");
            Ok(())
        }
        Cmd::UdpSend { to, from, hex } => {
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
                .collect::<Result<_, _>>()
                .context("--hex must be hex bytes")?;
            let bind = SocketAddr::new(from.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()), 0);
            let s = std::net::UdpSocket::bind(bind)?;
            s.send_to(&bytes, to)?;
            println!("sent {} bytes to {to}", bytes.len());
            Ok(())
        }
        Cmd::TcpRecv {
            port,
            bytes,
            seed,
            accept_seconds: None,
        } => {
            let n = traffic::recv(port, bytes, seed, Duration::from_secs(120))?;
            println!("received {n} bytes, all correct");
            Ok(())
        }
        Cmd::TcpRecv {
            port,
            seed,
            accept_seconds: Some(a),
            ..
        } => {
            let window = Duration::from_secs_f64(a.clamp(0.1, 600.0));
            let (n, b) = traffic::recv_many(port, seed, window, Duration::from_secs(120))?;
            println!("received {b} bytes on {n} connections, all correct");
            Ok(())
        }
        Cmd::Up {
            nodes,
            pods,
            no_external,
            dataplane,
            busy_poll,
            vxlan_port,
            vni,
            router,
            workers,
            static_nodes,
        } => {
            require_root()?;
            let mut o = LabOptions::new(&cli.name);
            o.nodes = nodes;
            o.pods_per_node = pods;
            o.external = !no_external;
            o.state_dir = cli.state_dir;
            o.idle_backoff = !busy_poll;
            o.vxlan_port = vxlan_port;
            o.vni = vni;
            o.router = router;
            o.workers = usize::from(workers);
            if let Some(d) = dataplane {
                o.dataplane = d;
            }
            o.static_remotes = static_nodes;
            o.agent_bootstrap = !static_nodes;
            o.cni_pods = !static_nodes;
            let mut lab = Lab::up(&o)?;
            if !static_nodes {
                // Until `down`, which stops them by the PIDs the lab records.
                let mut c = demo_cluster(&mut lab, o.vni, o.vxlan_port)?;
                c.etcd.keep();
                for a in &mut c.agents {
                    a.keep();
                }
            }
            lab.cleanup_on_drop = false;
            print_summary(&lab.state);
            Ok(())
        }
        Cmd::Status { json } => {
            let s = State::load(&cli.state_dir, &cli.name)?;
            let v = topo::status(&s);
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_status(&v);
            }
            Ok(())
        }
        Cmd::Down => {
            require_root()?;
            topo::teardown_by_name(&cli.state_dir, &cli.name)?;
            println!("lab {} removed", cli.name);
            Ok(())
        }
        Cmd::Ctl { node, args } => {
            let s = State::load(&cli.state_dir, &cli.name)?;
            let n = s.node(&node).with_context(|| format!("no node {node}"))?;
            let st = Command::new(podpathctl())
                .arg("--socket")
                .arg(&n.control_socket)
                .args(&args)
                .status()?;
            std::process::exit(st.code().unwrap_or(1));
        }
        Cmd::Exec { target, cmd } => {
            let s = State::load(&cli.state_dir, &cli.name)?;
            let ns = target_ns(&s, &target)?;
            let st = net::command_in(&ns, &cmd[0]).args(&cmd[1..]).status()?;
            std::process::exit(st.code().unwrap_or(1));
        }
        Cmd::Demo { keep } => {
            require_root()?;
            demo(&cli.name, &cli.state_dir, keep)
        }
        Cmd::DockerDemo => {
            require_root()?;
            docker_demo()
        }
    }
}

fn print_summary(s: &State) {
    println!("lab {} is up (state in {})", s.name, s.dir.display());
    for n in &s.nodes {
        println!(
            "  {} ({}, node IP {}, pod CIDR {}) dataplane pid {} socket {}",
            n.name,
            n.netns,
            n.node_ip,
            n.pod_cidr,
            n.dataplane_pid.map_or("-".into(), |p| p.to_string()),
            n.socket.display()
        );
        for p in &n.pods {
            println!(
                "    pod {} {} via {:?} ({})",
                p.name, p.ip, p.attach, p.device
            );
        }
    }
    if let Some(e) = &s.external {
        println!("  external host {e} ({}.100)", topo::UNDERLAY_PREFIX);
    }
    println!(
        "try: podpath-lab exec {0}-a ping -c3 {1}   podpath-lab ctl {0} -- stats",
        s.nodes.first().map_or("node1", |n| n.name.as_str()),
        s.nodes
            .first()
            .and_then(|n| n.pods.get(1))
            .map_or("10.244.0.3", |p| p.ip.as_str())
    );
}

fn print_status(v: &serde_json::Value) {
    println!("lab {}", v["name"].as_str().unwrap_or(""));
    for d in v["dataplanes"].as_array().into_iter().flatten() {
        println!(
            "dataplane {} in {}: pid {} {} socket {}",
            d["node"].as_str().unwrap_or(""),
            d["netns"].as_str().unwrap_or(""),
            d["pid"],
            if d["running"] == true {
                "running"
            } else {
                "NOT RUNNING"
            },
            d["socket"].as_str().unwrap_or("")
        );
    }
    for ns in v["namespaces"].as_array().into_iter().flatten() {
        println!(
            "{}{}",
            ns["netns"].as_str().unwrap_or(""),
            if ns["exists"] == true {
                ""
            } else {
                " (missing)"
            }
        );
        for i in ns["interfaces"].as_array().into_iter().flatten() {
            let addrs: Vec<&str> = i["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .collect();
            println!(
                "  {:<8} {} mtu {} {} {}",
                i["name"].as_str().unwrap_or(""),
                i["mac"].as_str().unwrap_or(""),
                i["mtu"],
                i["state"].as_str().unwrap_or(""),
                addrs.join(" ")
            );
        }
    }
}

fn sh(title: &str, ns: &str, cmd: &str, args: &[&str]) -> Result<()> {
    println!("\n$ {title}");
    let st = net::command_in(ns, cmd).args(args).status()?;
    if !st.success() {
        bail!("{title} failed");
    }
    Ok(())
}

/// A byte-checked TCP transfer between namespaces, printing who the receiver saw.
fn demo_tcp(
    exe: &str,
    from: (&str, &str),
    to: (&str, &str, &str),
    bytes: &str,
    port: &str,
) -> Result<()> {
    println!(
        "\n$ {}: receive {bytes} bytes over TCP from {}, checked byte for byte",
        to.0, from.0
    );
    let rx = net::command_in(to.1, exe)
        .args(["tcp-recv", "--port", port, "--bytes", bytes])
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    sh(
        &format!("{} tcp-send to {}:{port}", from.0, to.2),
        from.1,
        exe,
        &[
            "tcp-send",
            "--to",
            &format!("{}:{port}", to.2),
            "--bytes",
            bytes,
        ],
    )?;
    if !rx.wait_with_output()?.status.success() {
        bail!("the TCP transfer failed");
    }
    Ok(())
}

/// The demo's cluster side: etcd and an agent per node (nodes find each other
/// through etcd; the agents set up the nodes' kernel side).
struct DemoCluster {
    etcd: podpath_lab::cluster::Etcd,
    agents: Vec<podpath_lab::cluster::Agent>,
}

fn demo_cluster(lab: &mut Lab, vni: u32, vxlan_port: u16) -> Result<DemoCluster> {
    use podpath_lab::cluster::{agent_config, flannel_config, Agent, Etcd};
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("no directory")?
        .to_path_buf();
    let dir = lab.state.dir.clone();
    let etcd = Etcd::start(&dir.join("etcd"), 23790)?;
    etcd.etcdctl(&[
        "put",
        "/coreos.com/network/config",
        &flannel_config(vni, vxlan_port),
    ])
    .context("etcdctl put")?;
    let mut agents = Vec::new();
    for n in &lab.state.nodes {
        let c = agent_config(n, &etcd.endpoint(), 60, true);
        agents.push(Agent::start(&bin_dir.join("podpath-agent"), &dir, n, &c)?);
    }
    lab.state.helpers = agents
        .iter()
        .map(|a| (a.pid(), "podpath-agent".to_string()))
        .chain(etcd.pid().map(|p| (p, "etcd".to_string())))
        .collect();
    lab.state.save()?;
    // Every node routes to every other's pods once the leases are in.
    let routes = topo::routes;
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let nodes = lab.state.nodes.clone();
    while !nodes.iter().all(|n| {
        let r = routes(n);
        nodes
            .iter()
            .filter(|o| o.name != n.name)
            .all(|o| r.contains(&o.pod_cidr))
    }) {
        if std::time::Instant::now() > end {
            bail!(
                "the nodes did not find each other through etcd (agent logs in {})",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(DemoCluster { etcd, agents })
}

fn demo(name: &str, state_dir: &std::path::Path, keep: bool) -> Result<()> {
    let (mut lab, fresh) = match State::load(state_dir, name) {
        Ok(s) => (
            Lab {
                state: s,
                cleanup_on_drop: false,
            },
            false,
        ),
        Err(_) => {
            let mut o = LabOptions::new(name);
            o.state_dir = state_dir.to_path_buf();
            // Nodes learn each other from etcd, and the agents set up the kernel side.
            o.static_remotes = false;
            o.agent_bootstrap = true;
            // Pods attached by podpath-cni, as a container runtime runs it.
            o.cni_pods = true;
            let mut l = Lab::up(&o)?;
            l.cleanup_on_drop = !keep;
            (l, true)
        }
    };
    let mut cluster = if fresh {
        Some(demo_cluster(&mut lab, 1, 4789)?)
    } else {
        None
    };
    print_summary(&lab.state);
    if let Some(c) = &cluster {
        println!("\n== The nodes found each other through etcd (flannel's layout; each node's podpath-agent holds its lease)");
        println!("\n$ etcdctl get --prefix /coreos.com/network/subnets");
        print!(
            "{}",
            c.etcd
                .etcdctl(&["get", "--prefix", "/coreos.com/network/subnets"])
                .unwrap_or_default()
        );
    }
    let s = lab.state.clone();
    let n1 = s.nodes.first().context("no node")?;
    let n2 = s.nodes.get(1).context("the demo needs two nodes")?;
    let pod = |n: &podpath_lab::Node, i: usize| {
        n.pods
            .get(i)
            .cloned()
            .context("the demo needs two pods per node")
    };
    let (a, b, b2) = (pod(n1, 0)?, pod(n1, 1)?, pod(n2, 1)?);
    let ctl = |n: &podpath_lab::Node, args: &[&str]| -> Result<()> {
        println!("\n$ podpathctl ({}) {}", n.name, args.join(" "));
        let st = Command::new(podpathctl())
            .arg("--socket")
            .arg(&n.control_socket)
            .args(args)
            .status()?;
        if !st.success() {
            bail!("podpathctl failed");
        }
        Ok(())
    };
    let exe = std::env::current_exe()?.display().to_string();

    println!("\n== Walk 1: two pods on one node, bridged by the dataplane ({} via af_packet, {} via tap)", a.name, b.name);
    ctl(n1, &["trace", "start", "4"])?;
    sh(
        &format!("{} ping -c 3 {}", a.name, b.ip),
        &a.netns,
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "2", &b.ip],
    )?;
    sh(
        &format!("{} ip neigh (ARP resolved through the bridge)", a.name),
        &a.netns,
        "ip",
        &["neigh", "show", "dev", "eth0"],
    )?;
    demo_tcp(
        &exe,
        (&a.name, &a.netns),
        (&b.name, &b.netns, &b.ip),
        "10485760",
        "5001",
    )?;
    ctl(n1, &["trace", "show"])?;
    ctl(n1, &["bridge", "macs"])?;

    println!("\n== Walk 2: pods on two nodes across the VXLAN overlay ({} -> {}); the receiver sees the real pod IP", a.name, b2.name);
    ctl(n1, &["routes"])?;
    ctl(n1, &["trace", "start", "3"])?;
    ctl(n2, &["trace", "start", "3"])?;
    sh(
        &format!("{} ping -c 3 {}", a.name, b2.ip),
        &a.netns,
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "2", &b2.ip],
    )?;
    ctl(n1, &["trace", "show"])?;
    ctl(n2, &["trace", "show"])?;
    demo_tcp(
        &exe,
        (&a.name, &a.netns),
        (&b2.name, &b2.netns, &b2.ip),
        "10485760",
        "5002",
    )?;

    println!(
        "\n== Walk 3: a process on {} reaches a local pod, without NAT (the pod sees {})",
        n1.name, n1.node_ip
    );
    sh(
        &format!("{} ping -c 2 {}", n1.name, a.ip),
        &n1.netns,
        "ping",
        &["-c", "2", "-i", "0.2", "-W", "2", &a.ip],
    )?;
    demo_tcp(
        &exe,
        (&n1.name, &n1.netns),
        (&a.name, &a.netns, &a.ip),
        "1048576",
        "5003",
    )?;

    if let Some(ext) = s.external.clone() {
        println!(
            "\n== Walk 5: {} reaches a host outside the cluster; it sees {} (SNAT masquerade)",
            a.name, n1.node_ip
        );
        let ext_ip = format!("{}.100", topo::UNDERLAY_PREFIX);
        sh(
            &format!("{} ping -c 2 {ext_ip}", a.name),
            &a.netns,
            "ping",
            &["-c", "2", "-i", "0.2", "-W", "2", &ext_ip],
        )?;
        println!(
            "\n$ external host serves 10 MB, {} downloads it, checked byte for byte",
            a.name
        );
        let srv = net::command_in(&ext, &exe)
            .args(["tcp-serve", "--port", "8080", "--bytes", "10485760"])
            .spawn()?;
        std::thread::sleep(Duration::from_millis(300));
        sh(
            &format!("{} tcp-fetch from {ext_ip}:8080", a.name),
            &a.netns,
            &exe,
            &[
                "tcp-fetch",
                "--from",
                &format!("{ext_ip}:8080"),
                "--bytes",
                "10485760",
            ],
        )?;
        if !srv.wait_with_output()?.status.success() {
            bail!("the download failed");
        }
        ctl(n1, &["conntrack", "list"])?;
    }
    // Walks 4 and 6: a Service with endpoints on both nodes.
    let eps = [pod(n1, 1)?, pod(n2, 0)?, b2.clone()];
    println!(
        "\n== Walk 4: {} talks to a ClusterIP Service (10.96.0.10:80) with endpoints {}, {}, {} on both nodes",
        a.name, eps[0].ip, eps[1].ip, eps[2].ip
    );
    let mut set = vec![
        "service",
        "set",
        "default/web",
        "--vip",
        "10.96.0.10",
        "--port",
        "80",
        "--node-port",
        "30080",
    ];
    let ep_args: Vec<String> = eps.iter().map(|p| format!("{}:8080", p.ip)).collect();
    for e in &ep_args {
        set.push("--endpoint");
        set.push(e);
    }
    ctl(n1, &set)?;
    ctl(n2, &set)?;
    let serve = || -> Result<Vec<std::process::Child>> {
        eps.iter()
            .map(|p| {
                net::command_in(&p.netns, &exe)
                    .args([
                        "whoami-serve",
                        "--port",
                        "8080",
                        "--count",
                        "1000",
                        "--seconds",
                        "20",
                    ])
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .map_err(Into::into)
            })
            .collect()
    };
    let mut servers = serve()?;
    std::thread::sleep(Duration::from_millis(300));
    sh(
        &format!(
            "{} connects 90 times to 10.96.0.10:80 (answers by endpoint)",
            a.name
        ),
        &a.netns,
        &exe,
        &["whoami-ask", "--to", "10.96.0.10:80", "--count", "90"],
    )?;
    ctl(n1, &["service", "list"])?;
    if let Some(ext) = s.external.clone() {
        println!("\n== Walk 6: the external host reaches the Service on {}:30080 (NodePort, policy Cluster: endpoints see the node)", n1.node_ip);
        sh(
            "ext connects 30 times to the NodePort",
            &ext,
            &exe,
            &[
                "whoami-ask",
                "--to",
                &format!("{}:30080", n1.node_ip),
                "--count",
                "30",
            ],
        )?;
        ctl(n1, &["conntrack", "list", "--port", "30080"])?;
    }
    for c in &mut servers {
        let _ = c.kill();
        let _ = c.wait();
    }
    {
        println!("\n== Walk 7: a pod attached by podpath-cni, run as a container runtime runs it (ADD, then DEL)");
        let cni = std::env::current_exe()?.with_file_name("podpath-cni");
        let ns = format!("{}-cni", s.prefix);
        net::ip(&["netns", "add", &ns])?;
        let path = format!("/run/netns/{ns}");
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "podpath-demo", "type": "podpath-cni",
            "controlSocket": n1.control_socket, "dataDir": s.dir.join("cni"),
            // Below .100 are the lab's own pods.
            "ipam": {"type": "podpath", "rangeStart": "10.244.0.100"},
        })
        .to_string();
        let walk = (|| -> Result<()> {
            println!(
                "\n$ CNI_COMMAND=ADD CNI_NETNS={path} podpath-cni < conflist (in {})",
                n1.netns
            );
            let (ok, out, _) =
                podpath_lab::cluster::run_cni(&cni, &n1.netns, "ADD", "demo-1", &path, &conf)?;
            println!("{out}");
            if !ok {
                bail!("podpath-cni ADD failed");
            }
            ctl(n1, &["state"])?;
            sh(
                &format!("the CNI pod pings {} on node 2", b2.name),
                &ns,
                "ping",
                &["-c", "3", "-i", "0.2", "-W", "2", &b2.ip],
            )
        })();
        let (ok, _, _) =
            podpath_lab::cluster::run_cni(&cni, &n1.netns, "DEL", "demo-1", &path, &conf)?;
        println!(
            "\n$ CNI_COMMAND=DEL podpath-cni: {}",
            if ok { "done" } else { "FAILED" }
        );
        let _ = net::ip(&["netns", "del", &ns]);
        walk?;
        if !ok {
            bail!("podpath-cni DEL failed");
        }
    }
    ctl(n1, &["port", "list"])?;
    ctl(n1, &["neighbors"])?;
    ctl(n1, &["stats"])?;
    ctl(n2, &["stats"])?;
    if keep {
        println!("\nThe lab stays up: `podpath-lab down --name {name}` removes it.");
        lab.cleanup_on_drop = false;
        if let Some(c) = cluster.as_mut() {
            c.etcd.keep();
            for a in &mut c.agents {
                a.keep();
            }
        }
    } else {
        // The agents undo the node side and revoke their leases, then etcd stops.
        if let Some(mut c) = cluster.take() {
            for a in &mut c.agents {
                a.stop();
            }
        }
        lab.down();
        println!("\nlab {name} removed");
    }
    Ok(())
}

/// `podpath-lab docker-demo`: the six walks in node containers (lab/src/docker.rs).
fn docker_demo() -> Result<()> {
    use podpath_lab::docker::{build_images, workspace, Cluster, EXT_IP};
    let exe = std::env::current_exe()?;
    let profile = exe
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("release")
        .to_string();
    let out = workspace().join("target/docker");
    let t0 = std::time::Instant::now();
    println!("$ docker/build.sh --no-build --profile {profile}");
    build_images(&profile, &out)?;
    println!(
        "  images built in {:.1} s ({})",
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    let t0 = std::time::Instant::now();
    let c = Cluster::up(&out, 3, 10)?;
    println!(
        "\na private dockerd (network namespace {}), network 172.30.0.0/24: etcd .2, ext .100, node1-3 .11-.13;\n\
         podpath in each node on net_af_packet over eth0, nodes found through etcd: meshed in {:.1} s",
        c.d.netns,
        t0.elapsed().as_secs_f64()
    );
    let a = c.add_pod(0, "pod-a")?;
    let b = c.add_tap_pod(0, "pod-b")?;
    let p2 = c.add_pod(1, "pod-c")?;
    let p3 = c.add_pod(2, "pod-d")?;
    for p in [&a, &b, &p2, &p3] {
        c.serve(p)?;
    }
    println!(
        "pods by podpath-cni: node1 {} (af_packet) {} (tap), node2 {}, node3 {}",
        a.ip, b.ip, p2.ip, p3.ip
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut failed = Vec::new();
    let mut check = |walk: &str, ok: bool, what: String| {
        println!("{} walk {walk}: {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            failed.push(walk.to_string());
        }
    };
    check(
        "1",
        c.ping(&a, &b.ip).0,
        format!("node1 pod-a -> pod-b {} (same node, bridged)", b.ip),
    );
    check(
        "2",
        c.get(&a, &format!("http://{}:8080/", p2.ip)) == "pod-c",
        format!("pod-a -> node2's pod-c {} over VXLAN (HTTP)", p2.ip),
    );
    let node_ping =
        c.d.exec(&c.nodes[0].node, &["ping", "-c", "2", "-W", "2", &a.ip])
            .map(|o| o.contains(" 0% packet loss"))
            .unwrap_or(false);
    check(
        "3",
        node_ping,
        format!("node1's kernel -> its pod {} through the host port", a.ip),
    );
    c.set_web_service(&[&p2, &p3], Some(30080))?;
    let answers: std::collections::BTreeSet<String> =
        (0..10).map(|_| c.get(&a, "http://10.96.0.10/")).collect();
    check(
        "4",
        answers.len() == 2,
        format!("pod-a -> ClusterIP 10.96.0.10:80, answered by {answers:?}"),
    );
    c.d.exec(
        "ext",
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/w && echo ext > /tmp/w/index.html",
        ],
    )?;
    c.d.run(&[
        "exec", "-d", "ext", "httpd", "-f", "-p", "8080", "-h", "/tmp/w",
    ])?;
    std::thread::sleep(Duration::from_millis(300));
    check(
        "5",
        c.get(&a, &format!("http://{EXT_IP}:8080/")) == "ext",
        format!("pod-a -> the external host {EXT_IP} (masqueraded: it has no route to the pods)"),
    );
    let np = c.ext_get(&format!("http://{}:30080/", c.nodes[2].ip));
    check(
        "6",
        np.trim().starts_with("pod-"),
        format!(
            "ext -> NodePort {}:30080, answered by {}",
            c.nodes[2].ip,
            np.trim()
        ),
    );
    println!(
        "\n$ podpathctl routes   (node1)\n{}",
        c.ctl(0, &["routes"])?
    );
    println!(
        "$ podpathctl conntrack list   (node1)\n{}",
        c.ctl(0, &["conntrack", "list"])?
    );
    println!("the Docker cluster is removed now (containers, network, daemon, namespace)");
    drop(c);
    if !failed.is_empty() {
        bail!("walks failed: {failed:?}");
    }
    Ok(())
}

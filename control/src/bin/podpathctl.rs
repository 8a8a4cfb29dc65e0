//! `podpathctl`: the operator's view of a dataplane. Tables by default, `--json` for
//! scripts.
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::{Parser, Subcommand};
use podpath_control::trace_svg::{self, NodeTrace};
use podpath_proto::{render, Client, ClientError, PortSpec, Request, Response};

#[derive(Parser)]
#[command(
    version,
    about = "Operate a podpath dataplane",
    after_help = "Output is plain text in a stable order, for watch(1): watch -n1 podpathctl stats.\n\
                  Docs: docs/operations.md (metrics, capture, trace), docs/protocol.md (the socket),\n\
                  docs/configuration.md, docs/services.md, docs/nat.md, docs/deploy.md."
)]
struct Cli {
    /// The socket to talk to: by default the control service's, so changes are
    /// persisted and kept through reconciliation.
    #[arg(long, short, global = true, env = "PODPATH_SOCKET")]
    socket: Option<PathBuf>,
    /// Talk to the dataplane itself (its default socket unless --socket names one):
    /// changes made so are not persisted and the control service undoes them when
    /// it reconciles.
    #[arg(long, global = true)]
    dataplane: bool,
    /// Print JSON instead of tables (errors too: {"error": {"kind", "message"}}).
    #[arg(long, global = true)]
    json: bool,
    /// Output format: table, wide (extra columns where tables are long) or json.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Wide,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Counters: totals, ports, stages (cycles per packet), drops by reason, workers.
    Stats {
        /// List every drop reason, also those at zero.
        #[arg(long)]
        all: bool,
    },
    /// Ports: attach, detach, list.
    #[command(subcommand)]
    Port(PortCmd),
    /// The bridge's MAC tables.
    #[command(subcommand)]
    Bridge(BridgeCmd),
    /// Packet trace: which stage saw each packet and what it decided.
    #[command(subcommand)]
    Trace(TraceCmd),
    /// The control service's desired state, and whether the dataplane matches it.
    State,
    /// The routing table (local pods, remote nodes, node, underlay).
    Routes,
    /// The neighbour (ARP) tables.
    Neighbors,
    /// Services: set (add or replace), delete, list.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Tracked connections (NAT): list like `conntrack -L`, or flush.
    #[command(subcommand)]
    Conntrack(ConntrackCmd),
    /// Remote nodes: add (or replace) and delete.
    #[command(subcommand)]
    Remote(RemoteCmd),
    /// The server's version (checks the socket works).
    Version,
    /// Capture packets into a pcap file (tcpdump -r, tshark, Wireshark read it), taken
    /// by the workers without stopping traffic: at a port's rx (or --tx), or before
    /// (or --after) a stage. Bounded by --count and --timeout.
    Capture {
        /// The port (rx/tx); with --stage, only packets that entered on it.
        #[arg(long)]
        port: Option<String>,
        /// The port's transmit side instead of its receive side.
        #[arg(long)]
        tx: bool,
        /// Capture at this stage (e.g. vxlan-decap, snat, lb) instead of a port.
        #[arg(long)]
        stage: Option<String>,
        /// After the stage (what it rewrote) instead of before.
        #[arg(long)]
        after: bool,
        /// Stop after this many packets.
        #[arg(long, default_value_t = 100)]
        count: u32,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
        timeout: f64,
        /// Bytes kept of each packet.
        #[arg(long, default_value_t = 2048)]
        snaplen: u16,
        /// tcp, udp, icmp, arp, host A, src A, dst A, port N, joined by "and".
        #[arg(long, default_value = "")]
        filter: String,
        /// The pcap file; "-" writes to stdout (podpathctl capture ... -w - | tcpdump -r -).
        #[arg(short = 'w', long = "write", value_name = "FILE")]
        write: PathBuf,
    },
    /// Stream what changes on the node (ports, remote nodes, Services, generations,
    /// tables at their limits, the dataplane restarting), one line per event;
    /// --json: one JSON object per line.
    Events {
        /// Start with the events the service keeps (default: only new ones).
        #[arg(long)]
        all: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
    },
    /// A shell completion script: podpathctl completion bash > /etc/bash_completion.d/podpathctl
    Completion { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum PortCmd {
    /// Plug in a device and attach it.
    Add {
        name: String,
        /// DPDK device arguments, e.g. net_tap1,iface=eth0 or net_af_packet1,iface=veth1.
        #[arg(long)]
        device: String,
        /// Create the device inside this network namespace (name or path).
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        bridge: Option<u16>,
        #[arg(long)]
        queues: Option<u16>,
        #[arg(long)]
        mtu: Option<u16>,
    },
    /// Detach a port and unplug its device.
    Del { name: String },
    /// List ports (with --xstats, the device's non-zero extended statistics).
    List {
        #[arg(long)]
        xstats: bool,
    },
}

// Parsed once per run: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ServiceCmd {
    /// Add or replace a Service.
    Set {
        /// namespace/name
        name: String,
        #[arg(long)]
        vip: String,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "tcp")]
        protocol: String,
        /// IP:PORT, repeated (append ",w=N" for a weight, and the EndpointSlice
        /// conditions ",notready", ",terminating", ",serving", ",notserving").
        #[arg(long = "endpoint")]
        endpoints: Vec<String>,
        /// ClientIP session affinity for this many seconds.
        #[arg(long)]
        affinity: Option<u32>,
        /// Open this port on the node IP too.
        #[arg(long)]
        node_port: Option<u16>,
        /// For the NodePort: Cluster (default) or Local.
        #[arg(long)]
        external_traffic_policy: Option<String>,
        /// For the ClusterIP: Cluster (default) or Local (this node's endpoints only).
        #[arg(long)]
        internal_traffic_policy: Option<String>,
        /// An external IP (spec.externalIPs), repeated.
        #[arg(long = "external-ip")]
        external_ips: Vec<String>,
        /// A LoadBalancer ingress IP, repeated.
        #[arg(long = "load-balancer-ip")]
        load_balancer_ips: Vec<String>,
        /// A CIDR allowed to use the LoadBalancer IPs, repeated (none: all).
        #[arg(long = "load-balancer-source-range")]
        load_balancer_source_ranges: Vec<String>,
        /// The node answers HTTP health checks on this port (policy Local).
        #[arg(long)]
        health_check_node_port: Option<u16>,
    },
    Del {
        name: String,
    },
    List,
}

fn parse_endpoint(s: &str) -> Result<podpath_proto::EndpointSpec> {
    let mut parts = s.split(',');
    let addr = parts.next().unwrap_or("");
    let (ip, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("endpoint {s:?}: want IP:PORT"))?;
    let mut e = podpath_proto::EndpointSpec {
        ip: ip.into(),
        port: port
            .parse()
            .map_err(|_| anyhow!("endpoint {s:?}: bad port"))?,
        weight: 1,
        ready: true,
        terminating: false,
        serving: None,
    };
    for p in parts {
        match p {
            "terminating" => e.terminating = true,
            "notready" => e.ready = false,
            "serving" => e.serving = Some(true),
            "notserving" => e.serving = Some(false),
            w if w.starts_with("w=") => {
                e.weight = w[2..]
                    .parse()
                    .map_err(|_| anyhow!("endpoint {s:?}: bad weight"))?
            }
            x => return Err(anyhow!("endpoint {s:?}: unknown option {x:?}")),
        }
    }
    Ok(e)
}

#[derive(Subcommand)]
enum ConntrackCmd {
    /// One line per connection (conntrack -L layout).
    List {
        /// tcp, udp or icmp.
        #[arg(short = 'p', long)]
        proto: Option<String>,
        /// An address on either side.
        #[arg(long)]
        addr: Option<String>,
        /// A port on either side.
        #[arg(long)]
        port: Option<u16>,
    },
    /// Forget every tracked connection.
    Flush,
    /// Change timeouts (seconds) or the capacity (connections per worker) at run
    /// time; persisted by the control service. Timeouts apply to each connection at
    /// its next packet, as with Linux's sysctls.
    Set {
        #[arg(long)]
        capacity: Option<u32>,
        #[arg(long)]
        tcp_syn_sent: Option<u32>,
        #[arg(long)]
        tcp_syn_recv: Option<u32>,
        #[arg(long)]
        tcp_established: Option<u32>,
        #[arg(long)]
        tcp_fin_wait: Option<u32>,
        #[arg(long)]
        tcp_close_wait: Option<u32>,
        #[arg(long)]
        tcp_last_ack: Option<u32>,
        #[arg(long)]
        tcp_time_wait: Option<u32>,
        #[arg(long)]
        tcp_close: Option<u32>,
        #[arg(long)]
        udp: Option<u32>,
        #[arg(long)]
        udp_stream: Option<u32>,
        #[arg(long)]
        icmp: Option<u32>,
    },
    /// The timeouts and capacity in force.
    Settings,
}

#[derive(Subcommand)]
enum RemoteCmd {
    /// Add or replace a remote node (its VTEP and pod CIDR).
    Add {
        name: String,
        #[arg(long)]
        node_ip: String,
        #[arg(long)]
        vtep_mac: String,
        #[arg(long)]
        pod_cidr: String,
    },
    /// Remove a remote node (withdraws its route).
    Del { name: String },
}

#[derive(Subcommand)]
enum BridgeCmd {
    /// Learned and static MAC entries.
    Macs,
    /// Add a static MAC entry.
    MacAdd {
        bridge: u16,
        mac: String,
        port: String,
    },
    /// Remove a static MAC entry.
    MacDel { bridge: u16, mac: String },
}

#[derive(Subcommand)]
enum TraceCmd {
    /// Trace the next N packets each worker receives.
    Start {
        #[arg(default_value_t = 10)]
        count: u32,
    },
    /// Print (and clear) the records gathered so far.
    Show {
        /// Draw the packets' walk into this SVG file instead (docs/operations.md).
        #[arg(long)]
        svg: Option<PathBuf>,
        /// The node's name in the picture (default: the socket's file name).
        #[arg(long)]
        node: Option<String>,
    },
    /// Draw saved traces (`trace show --json > node1.json` on each node) as one
    /// picture, joining packets across the overlay: trace svg --out walk.svg
    /// node1.json node2.json (FILE=NAME names a node).
    Svg {
        #[arg(long)]
        out: PathBuf,
        #[arg(required = true)]
        traces: Vec<String>,
    },
}

fn netns_path(n: String) -> String {
    if n.contains('/') {
        n
    } else {
        format!("/var/run/netns/{n}")
    }
}

fn main() {
    let mut cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind as K;
            let args: Vec<String> = std::env::args().collect();
            let wants_json = args
                .iter()
                .any(|a| a == "--json" || a == "-ojson" || a == "--output=json")
                || args
                    .windows(2)
                    .any(|w| (w[0] == "-o" || w[0] == "--output") && w[1] == "json");
            if wants_json && !matches!(e.kind(), K::DisplayHelp | K::DisplayVersion) {
                let msg = e.to_string();
                println!(
                    "{}",
                    serde_json::json!({ "error": { "kind": "usage", "message": msg.trim() } })
                );
                std::process::exit(2);
            }
            e.exit()
        }
    };
    cli.json |= cli.output == Output::Json;
    if let Cmd::Completion { shell } = cli.cmd {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut cmd, "podpathctl", &mut std::io::stdout());
        return;
    }
    let json = cli.json;
    let done = match &cli.cmd {
        Cmd::Trace(TraceCmd::Svg { out, traces }) => Some(draw_saved(out, traces)),
        _ => None,
    };
    if let Err(e) = done.unwrap_or_else(|| run(cli)) {
        if json {
            // The server's error kind when it refused; "client" for everything
            // podpathctl could not do itself (no socket, bad arguments).
            let kind = e
                .downcast_ref::<ClientError>()
                .and_then(|c| match c {
                    ClientError::Server(r) => Some(format!("{:?}", r.kind)),
                    _ => None,
                })
                .unwrap_or_else(|| "client".into());
            println!(
                "{}",
                serde_json::json!({ "error": { "kind": kind, "message": format!("{e:#}") } })
            );
        } else {
            eprintln!("podpathctl: {e:#}");
        }
        std::process::exit(1);
    }
}

/// `capture`: starts the capture, drains it every 50 ms into a pcap stream (one
/// record per packet, nanosecond stamps, Ethernet), stops it at the count, the
/// timeout or when the workers are done.
fn capture(
    c: &mut Client,
    spec: podpath_proto::CaptureSpec,
    timeout: f64,
    file: &std::path::Path,
    json: bool,
) -> Result<()> {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    use pcap_file::{DataLink, TsResolution};
    use std::io::Write;
    let to_stdout = file.as_os_str() == "-";
    /// Each record reaches the pipe at once (tcpdump -r - prints as they come).
    struct Flushing<W: Write>(W);
    impl<W: Write> Write for Flushing<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.write_all(b)?;
            self.0.flush()?;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.flush()
        }
    }
    let out: Box<dyn Write> = if to_stdout {
        Box::new(Flushing(std::io::stdout()))
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(file).map_err(|e| anyhow!("{}: {e}", file.display()))?,
        ))
    };
    let header = PcapHeader {
        snaplen: u32::from(spec.snaplen),
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::NanoSecond,
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(out, header).map_err(|e| anyhow!("pcap: {e}"))?;
    let want = u64::from(spec.count);
    c.call(Request::CaptureStart(spec))?;
    let end = std::time::Instant::now() + std::time::Duration::from_secs_f64(timeout);
    let (mut written, mut lost) = (0u64, 0u64);
    let result = (|| -> Result<()> {
        loop {
            let (packets, done, l) = match c.call(Request::CaptureRead)? {
                Response::Captured {
                    packets,
                    done,
                    lost,
                } => (packets, done, lost),
                r => return Err(anyhow!("unexpected response {r:?}")),
            };
            lost = l;
            for p in packets {
                if written >= want {
                    break;
                }
                let ts = std::time::Duration::from_nanos(p.unix_ns);
                w.write_packet(&PcapPacket::new(ts, p.orig_len, &p.data))
                    .map_err(|e| anyhow!("pcap: {e}"))?;
                written += 1;
            }
            if written >= want || done || std::time::Instant::now() >= end {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    })();
    let _ = c.call(Request::CaptureStop);
    result?;
    let mut out = w.into_writer();
    out.flush()?;
    drop(out);
    if json && !to_stdout {
        println!(
            "{}",
            serde_json::json!({ "written": written, "lost": lost, "file": file })
        );
    } else {
        eprintln!(
            "podpathctl: {written} packet(s) captured{}{}",
            if to_stdout {
                String::new()
            } else {
                format!(" into {}", file.display())
            },
            if lost > 0 {
                format!(", {lost} lost (the reader fell behind)")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// `events`: polls the control service every 200 ms for events after the last one
/// seen, and prints each as it comes (flushed, for pipes).
fn stream_events(
    c: &mut Client,
    all: bool,
    count: Option<usize>,
    timeout: Option<f64>,
    json: bool,
) -> Result<()> {
    use std::io::Write;
    let end = timeout.map(|t| std::time::Instant::now() + std::time::Duration::from_secs_f64(t));
    let mut after = 0;
    if !all {
        // Only what comes from now on: the newest event's number.
        if let Response::Events(e) = c.call(Request::Events { after: 0 })? {
            after = e.last().map_or(0, |e| e.seq);
        }
    }
    let mut shown = 0;
    let mut out = std::io::stdout().lock();
    // The reader went away (`podpathctl events | head -3`): done, not an error.
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
    loop {
        let events = match c.call(Request::Events { after })? {
            Response::Events(e) => e,
            r => return Err(anyhow!("unexpected response {r:?}")),
        };
        if let Some(first) = events.first() {
            if first.seq > after + 1 && after > 0 {
                let missed = first.seq - after - 1;
                if json {
                    if let Err(e) = writeln!(out, "{}", serde_json::json!({ "missed": missed })) {
                        return if gone(&e) { Ok(()) } else { Err(e.into()) };
                    }
                } else {
                    if let Err(e) = writeln!(
                        out,
                        "({missed} events missed: the service keeps the last {})",
                        podpath_proto::EVENTS_KEPT
                    ) {
                        return if gone(&e) { Ok(()) } else { Err(e.into()) };
                    }
                }
            }
        }
        for e in events {
            after = e.seq;
            if json {
                if let Err(e) = writeln!(out, "{}", serde_json::to_string(&e)?) {
                    return if gone(&e) { Ok(()) } else { Err(e.into()) };
                }
            } else {
                if let Err(e) = writeln!(
                    out,
                    "{}  #{:<6} {:<20} {}",
                    utc(e.unix_ms),
                    e.seq,
                    e.kind,
                    e.detail
                ) {
                    return if gone(&e) { Ok(()) } else { Err(e.into()) };
                }
            }
            shown += 1;
            if count.is_some_and(|n| shown >= n) {
                return Ok(());
            }
        }
        if let Err(e) = out.flush() {
            return if gone(&e) { Ok(()) } else { Err(e.into()) };
        }
        if end.is_some_and(|t| std::time::Instant::now() >= t) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC (days to a civil date: Howard
/// Hinnant's algorithm).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn write_svg(file: &std::path::Path, traces: &[NodeTrace]) -> Result<()> {
    std::fs::write(file, trace_svg::render(traces))
        .map_err(|e| anyhow!("writing {}: {e}", file.display()))
}

/// `trace svg`: saved `trace show --json` files (FILE or FILE=NODE) into one picture.
fn draw_saved(out: &std::path::Path, traces: &[String]) -> Result<()> {
    let mut nodes = Vec::new();
    for t in traces {
        let (file, node) = match t.split_once('=') {
            Some((f, n)) => (f.to_string(), n.to_string()),
            None => {
                let stem = std::path::Path::new(t)
                    .file_stem()
                    .map_or(t.clone(), |s| s.to_string_lossy().into_owned());
                (t.clone(), stem)
            }
        };
        let text = std::fs::read_to_string(&file).map_err(|e| anyhow!("{file}: {e}"))?;
        let lines: Vec<podpath_proto::TraceLine> = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{file}: not `podpathctl trace show --json` output: {e}"))?;
        nodes.push(NodeTrace { node, lines });
    }
    write_svg(out, &nodes)?;
    println!("{} drawn", out.display());
    Ok(())
}

const CONTROL_SOCKET: &str = "/run/podpath/control.sock";
const DATAPLANE_SOCKET: &str = "/run/podpath/dataplane.sock";

fn run(cli: Cli) -> Result<()> {
    let socket = cli.socket.clone().unwrap_or_else(|| {
        PathBuf::from(if cli.dataplane {
            DATAPLANE_SOCKET
        } else {
            CONTROL_SOCKET
        })
    });
    let mut c = Client::connect(&socket, "podpathctl")?;
    let json = cli.json;
    // A change's answer: the generation every worker now runs.
    let applied = |what: String, r: Response| -> Result<()> {
        let generation = match r {
            Response::Applied { generation } => Some(generation),
            Response::Done => None,
            r => return Err(anyhow!("unexpected response {r:?}")),
        };
        if json {
            println!(
                "{}",
                serde_json::json!({ "applied": what, "generation": generation })
            );
        } else if let Some(g) = generation {
            println!("{what}: generation {g} in force on every worker");
        }
        Ok(())
    };
    let print = |v: &dyn erased::Json, table: String| {
        if json {
            println!("{}", v.json());
        } else {
            print!("{table}");
        }
    };
    match cli.cmd {
        Cmd::Version => println!("{}", c.server),
        Cmd::Completion { .. } => {}
        Cmd::Stats { all } => match c.call(Request::Stats)? {
            Response::Stats(s) => print(&s, render::stats_table(&s, all)),
            r => return Err(anyhow!("unexpected response {r:?}")),
        },
        Cmd::Port(PortCmd::Add {
            name,
            device,
            netns,
            bridge,
            queues,
            mtu,
        }) => {
            let spec = PortSpec {
                name,
                device,
                netns: netns.map(netns_path),
                bridge,
                queues,
                mtu,
            };
            match c.call(Request::PortAttach(spec))? {
                Response::Ports(p) => print(&p, render::ports_table(&p, false)),
                r => return Err(anyhow!("unexpected response {r:?}")),
            }
        }
        Cmd::Port(PortCmd::Del { name }) => {
            c.call(Request::PortDetach { name: name.clone() })?;
            if !json {
                println!("port {name} detached");
            }
        }
        Cmd::Port(PortCmd::List { xstats }) => match c.call(Request::PortList)? {
            Response::Ports(p) if cli.output == Output::Wide && !json => {
                let stats = match c.call(Request::Stats)? {
                    Response::Stats(s) => s.ports,
                    _ => Vec::new(),
                };
                print!("{}", render::ports_wide_table(&p, &stats, xstats));
            }
            Response::Ports(p) => print(&p, render::ports_table(&p, xstats)),
            r => return Err(anyhow!("unexpected response {r:?}")),
        },
        Cmd::Bridge(BridgeCmd::Macs) => match c.call(Request::MacList)? {
            Response::Macs(m) => print(&m, render::macs_table(&m)),
            r => return Err(anyhow!("unexpected response {r:?}")),
        },
        Cmd::Bridge(BridgeCmd::MacAdd { bridge, mac, port }) => {
            c.call(Request::MacAdd { bridge, mac, port })?;
        }
        Cmd::Bridge(BridgeCmd::MacDel { bridge, mac }) => {
            c.call(Request::MacDel { bridge, mac })?;
        }
        Cmd::Service(ServiceCmd::Set {
            name,
            vip,
            port,
            protocol,
            endpoints,
            affinity,
            node_port,
            external_traffic_policy,
            internal_traffic_policy,
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges,
            health_check_node_port,
        }) => {
            let endpoints = endpoints
                .iter()
                .map(|e| parse_endpoint(e))
                .collect::<Result<Vec<_>>>()?;
            let what = format!("service {name} set");
            let r = c.call(Request::ServiceSet(podpath_proto::ServiceSpec {
                name,
                vip,
                port,
                protocol,
                endpoints,
                affinity_timeout: affinity,
                node_port,
                external_traffic_policy,
                internal_traffic_policy,
                external_ips,
                load_balancer_ips,
                load_balancer_source_ranges,
                health_check_node_port,
            }))?;
            applied(what, r)?;
        }
        Cmd::Service(ServiceCmd::Del { name }) => {
            let what = format!("service {name} deleted");
            applied(what, c.call(Request::ServiceDel { name })?)?;
        }
        Cmd::Service(ServiceCmd::List) => match c.call(Request::ServiceList)? {
            Response::Services(v) => {
                let mut t = String::new();
                for s in &v {
                    t += &format!("{:<24} {}:{}/{}\n", s.name, s.vip, s.port, s.protocol);
                    for e in &s.endpoints {
                        t += &format!(
                            "    {}:{} weight {}{}{}\n",
                            e.ip,
                            e.port,
                            e.weight,
                            if e.ready { "" } else { " not-ready" },
                            if e.terminating { " terminating" } else { "" }
                        );
                    }
                }
                print(&v, t)
            }
            r => return Err(anyhow!("unexpected response {r:?}")),
        },
        Cmd::Conntrack(ConntrackCmd::List { proto, addr, port }) => {
            let proto = match proto.as_deref() {
                None => None,
                Some("tcp") => Some(6),
                Some("udp") => Some(17),
                Some("icmp") => Some(1),
                Some(p) => return Err(anyhow!("unknown protocol {p:?}: use tcp, udp or icmp")),
            };
            match c.call(Request::ConntrackList(podpath_proto::ConntrackFilter {
                proto,
                addr,
                port,
            }))? {
                Response::Conntrack(v) => {
                    print(&v, render::conntrack_lines(&v));
                    if !json {
                        eprintln!("{}", render::conntrack_trailer(v.len()));
                    }
                }
                r => return Err(anyhow!("unexpected response {r:?}")),
            }
        }
        Cmd::Conntrack(ConntrackCmd::Set {
            capacity,
            tcp_syn_sent,
            tcp_syn_recv,
            tcp_established,
            tcp_fin_wait,
            tcp_close_wait,
            tcp_last_ack,
            tcp_time_wait,
            tcp_close,
            udp,
            udp_stream,
            icmp,
        }) => {
            let s = podpath_proto::ConntrackSettings {
                capacity,
                max_capacity: None,
                tcp_syn_sent,
                tcp_syn_recv,
                tcp_established,
                tcp_fin_wait,
                tcp_close_wait,
                tcp_last_ack,
                tcp_time_wait,
                tcp_close,
                udp,
                udp_stream,
                icmp,
            };
            applied(
                "conntrack settings".into(),
                c.call(Request::ConntrackSet(s))?,
            )?;
        }
        Cmd::Conntrack(ConntrackCmd::Settings) => match c.call(Request::ConntrackSettingsShow)? {
            Response::ConntrackSettings(s) => {
                let mut t = format!(
                    "capacity {} per worker (up to {} without a restart)\n",
                    s.capacity.unwrap_or(0),
                    s.max_capacity.unwrap_or(0)
                );
                for (name, v) in s.timeouts() {
                    t += &format!("{name:<16} {} s\n", v.unwrap_or(0));
                }
                print(&s, t)
            }
            r => return Err(anyhow!("unexpected response {r:?}")),
        },
        Cmd::Conntrack(ConntrackCmd::Flush) => {
            c.call(Request::ConntrackFlush)?;
        }
        Cmd::Routes => match c.call(Request::RouteList)? {
            Response::Routes(r) => print(&r, render::routes_table(&r)),
            r => return Err(anyhow!("unexpected response {r:?}")),
        },
        Cmd::Neighbors => match c.call(Request::NeighborList)? {
            Response::Neighbors(n) => print(&n, render::neighbors_table(&n)),
            r => return Err(anyhow!("unexpected response {r:?}")),
        },
        Cmd::Remote(RemoteCmd::Add {
            name,
            node_ip,
            vtep_mac,
            pod_cidr,
        }) => {
            let what = format!("remote node {name} added");
            let r = c.call(Request::RemoteAdd(podpath_proto::RemoteSpec {
                name,
                node_ip,
                vtep_mac,
                pod_cidr,
            }))?;
            applied(what, r)?;
        }
        Cmd::Remote(RemoteCmd::Del { name }) => {
            let what = format!("remote node {name} deleted");
            applied(what, c.call(Request::RemoteDel { name })?)?;
        }
        Cmd::State => match c.call(Request::StateShow)? {
            Response::State(s) => {
                let table = format!(
                    "generation {}, dataplane {}\n{}{}{}",
                    s.generation,
                    if s.in_sync {
                        "in sync"
                    } else {
                        "NOT in sync (disconnected or reconciling)"
                    },
                    render::ports_spec_table(&s.ports),
                    render::static_macs_table(&s.macs),
                    render::origins_table(&s.remotes, &s.services)
                );
                print(&s, table)
            }
            r => return Err(anyhow!("unexpected response {r:?}")),
        },
        Cmd::Trace(TraceCmd::Start { count }) => {
            c.call(Request::TraceStart { count })?;
            if !json {
                println!("tracing the next {count} packets of each worker; `podpathctl trace show` prints them");
            }
        }
        Cmd::Trace(TraceCmd::Show { svg: None, .. }) => match c.call(Request::TraceDump)? {
            Response::Trace(t) => print(&t, render::trace_table(&t)),
            r => return Err(anyhow!("unexpected response {r:?}")),
        },
        Cmd::Trace(TraceCmd::Show {
            svg: Some(file),
            node,
        }) => match c.call(Request::TraceDump)? {
            Response::Trace(lines) => {
                let node = node.unwrap_or_else(|| {
                    socket
                        .file_stem()
                        .map_or("node".into(), |s| s.to_string_lossy().into_owned())
                });
                let n = lines.len();
                write_svg(&file, &[NodeTrace { node, lines }])?;
                if json {
                    println!("{}", serde_json::json!({ "svg": file, "records": n }));
                } else {
                    println!("{n} trace records drawn in {}", file.display());
                }
            }
            r => return Err(anyhow!("unexpected response {r:?}")),
        },
        Cmd::Trace(TraceCmd::Svg { .. }) => {}
        Cmd::Events {
            all,
            count,
            timeout,
        } => stream_events(&mut c, all, count, timeout, json)?,
        Cmd::Capture {
            port,
            tx,
            stage,
            after,
            count,
            timeout,
            snaplen,
            filter,
            write,
        } => {
            podpath_proto::CaptureFilter::parse(&filter).map_err(|e| anyhow!(e))?;
            let point = match (&stage, tx, after) {
                (None, false, _) => "rx",
                (None, true, _) => "tx",
                (Some(_), _, false) => "before",
                (Some(_), _, true) => "after",
            };
            let spec = podpath_proto::CaptureSpec {
                point: point.into(),
                port,
                stage,
                count,
                snaplen: snaplen.min(u16::try_from(podpath_proto::SNAP_MAX).unwrap_or(u16::MAX)),
                filter,
            };
            capture(&mut c, spec, timeout, &write, json)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_the_epoch_and_a_leap_day() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(super::utc(1_796_083_200_000), "2026-12-01T00:00:00.000Z");
    }
}

mod erased {
    /// Anything printable as JSON.
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        }
    }
}

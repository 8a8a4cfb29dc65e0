//! Human-readable tables for responses (used by `podpathctl` and by the dataplane's
//! final counters at shutdown).
use std::fmt::Write;

use crate::PortStat;

use crate::msg::{
    ConnInfo, MacInfo, NeighborInfo, PortInfo, PortSpec, RouteInfo, StaticMac, Stats, TraceLine,
};

/// Counters as tables: totals, ports, stages (packets, calls, cycles per packet, like
/// VPP's `show runtime`), drops by reason (non-zero, or all with `all`).
pub fn stats_table(s: &Stats, all: bool) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "snapshot generation {} (applied by every worker)",
        s.generation
    );
    let _ = writeln!(
        o,
        "packets: rx {}  tx {}  dropped {}  replicated {}  (rx + replicated = tx + dropped{})",
        s.rx,
        s.tx,
        s.dropped,
        s.replicated,
        if s.rx + s.replicated == s.tx + s.dropped {
            ""
        } else {
            "; packets in flight"
        }
    );
    let _ = writeln!(
        o,
        "\n{:<4} {:<20} {:>12} {:>14} {:>12} {:>14} {:>10}",
        "id", "port", "rx-packets", "rx-bytes", "tx-packets", "tx-bytes", "tx-dropped"
    );
    for p in &s.ports {
        let _ = writeln!(
            o,
            "{:<4} {:<20} {:>12} {:>14} {:>12} {:>14} {:>10}",
            p.id, p.name, p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes, p.tx_dropped
        );
    }
    let _ = writeln!(
        o,
        "\n{:<14} {:>12} {:>10} {:>12} {:>14}",
        "stage", "packets", "calls", "pkts/call", "cycles/pkt"
    );
    for st in &s.stages {
        let per_call = if st.calls > 0 {
            st.packets as f64 / st.calls as f64
        } else {
            0.0
        };
        let cpp = if st.packets > 0 {
            st.cycles as f64 / st.packets as f64
        } else {
            0.0
        };
        let _ = writeln!(
            o,
            "{:<14} {:>12} {:>10} {:>12.1} {:>14.1}",
            st.name, st.packets, st.calls, per_call, cpp
        );
    }
    // Losses first; normal consumptions (events) apart, so a clean run reads clean.
    for (kind, head, none) in [
        ("drop", "drop reason", "(no drops)"),
        ("event", "event", "(no events)"),
    ] {
        let _ = writeln!(o, "\n{:<14} {:<24} {:>12}", "stage", head, "packets");
        let mut any = false;
        for d in s.drops.iter().filter(|d| d.kind == kind) {
            if all || d.count > 0 {
                any = true;
                let _ = writeln!(o, "{:<14} {:<24} {:>12}", d.stage, d.reason, d.count);
            }
        }
        if !any {
            let _ = writeln!(o, "{none}");
        }
    }
    let _ = writeln!(
        o,
        "\n{:<7} {:>6} {:>12} {:>12} {:>10} {:>14} {:>10}",
        "worker", "lcore", "polls", "idle-polls", "sleeps", "busy-cyc/pkt", "macs+"
    );
    for w in &s.workers {
        let cpp = if w.rx > 0 {
            w.busy_cycles as f64 / w.rx as f64
        } else {
            0.0
        };
        let _ = writeln!(
            o,
            "{:<7} {:>6} {:>12} {:>12} {:>10} {:>14.1} {:>10}",
            w.id, w.lcore, w.polls, w.idle_polls, w.sleeps, cpp, w.mac_learned
        );
    }
    let _ = writeln!(
        o,
        "\n{:<7} {:>10} {:>10} {:>10} {:>12} {:>10} {:>12} {:>11} {:>8}",
        "worker",
        "conns",
        "inserted",
        "expired",
        "early-drops",
        "refused",
        "handoff-out",
        "handoff-in",
        "resumed"
    );
    for w in &s.workers {
        let _ = writeln!(
            o,
            "{:<7} {:>10} {:>10} {:>10} {:>12} {:>10} {:>12} {:>11} {:>8}",
            w.id,
            w.ct_entries,
            w.ct_inserted,
            w.ct_expired,
            w.ct_early_dropped,
            w.ct_refused_full,
            w.handoff_out,
            w.handoff_in,
            w.ct_resumed
        );
    }
    o
}

pub fn ports_table(ports: &[PortInfo], xstats: bool) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<4} {:<16} {:<12} {:<18} {:<5} {:>6} {:>6} {:>6}  device",
        "id", "name", "driver", "mac", "link", "mtu", "bridge", "queues"
    );
    for p in ports {
        let _ = writeln!(
            o,
            "{:<4} {:<16} {:<12} {:<18} {:<5} {:>6} {:>6} {:>6}  {}{}",
            p.id,
            p.name,
            p.driver,
            p.mac,
            if p.link_up { "up" } else { "down" },
            p.mtu,
            p.bridge.map_or("-".into(), |b| b.to_string()),
            p.queues,
            p.device,
            p.netns
                .as_ref()
                .map_or(String::new(), |n| format!(" (netns {n})")),
        );
        if xstats {
            xstats_lines(&mut o, p);
        }
    }
    o
}

/// A port's non-zero extended statistics, indented under its row.
fn xstats_lines(o: &mut String, p: &PortInfo) {
    for (k, v) in p.xstats.iter().filter(|(_, v)| *v != 0) {
        let _ = writeln!(o, "      {k:<32} {v}");
    }
}

/// `port list -o wide`: the table plus link speed and each port's counters.
pub fn ports_wide_table(ports: &[PortInfo], stats: &[PortStat], xstats: bool) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<4} {:<16} {:<12} {:<18} {:<5} {:>7} {:>6} {:>6} {:>6} {:>12} {:>12} {:>12} {:>10}  device",
        "id", "name", "driver", "mac", "link", "speed", "mtu", "bridge", "queues", "rx-packets", "tx-packets", "tx-bytes", "tx-dropped"
    );
    for p in ports {
        let s = stats.iter().find(|s| s.name == p.name);
        let n = |f: fn(&PortStat) -> u64| s.map_or("-".to_string(), |s| f(s).to_string());
        let _ = writeln!(
            o,
            "{:<4} {:<16} {:<12} {:<18} {:<5} {:>7} {:>6} {:>6} {:>6} {:>12} {:>12} {:>12} {:>10}  {}{}",
            p.id,
            p.name,
            p.driver,
            p.mac,
            if p.link_up { "up" } else { "down" },
            if p.speed_mbps == 0 { "-".to_string() } else { format!("{}M", p.speed_mbps) },
            p.mtu,
            p.bridge.map_or("-".into(), |b| b.to_string()),
            p.queues,
            n(|s| s.rx_packets),
            n(|s| s.tx_packets),
            n(|s| s.tx_bytes),
            n(|s| s.tx_dropped),
            p.device,
            p.netns
                .as_ref()
                .map_or(String::new(), |n| format!(" (netns {n})")),
        );
        if xstats {
            xstats_lines(&mut o, p);
        }
    }
    o
}

pub fn macs_table(macs: &[MacInfo]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<7} {:<18} {:<20} {:>10} {:<7}",
        "bridge", "mac", "port", "age-ms", "worker"
    );
    for m in macs {
        let age = if m.is_static {
            "static".to_string()
        } else {
            m.age_ms.to_string()
        };
        let _ = writeln!(
            o,
            "{:<7} {:<18} {:<20} {:>10} {:<7}",
            m.bridge, m.mac, m.port, age, m.worker
        );
    }
    o
}

pub fn trace_table(lines: &[TraceLine]) -> String {
    let mut o = String::new();
    let mut last = None;
    for l in lines {
        if last != Some((l.worker, l.packet)) {
            let _ = writeln!(o, "\nPacket {} (worker {})", l.packet, l.worker);
            last = Some((l.worker, l.packet));
        }
        let _ = writeln!(
            o,
            "  {:>8}ns {:<10} {:<24} {}",
            l.ns, l.stage, l.next, l.detail
        );
    }
    if lines.is_empty() {
        let _ = writeln!(o, "(no trace records: start one with `podpathctl trace start N`, send traffic, then `podpathctl trace show`)");
    }
    o
}

pub fn ports_spec_table(ports: &[PortSpec]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<16} {:>6} {:>6} {:>6}  {:<6} device",
        "port", "bridge", "mtu", "queues", "from"
    );
    for p in ports {
        let _ = writeln!(
            o,
            "{:<16} {:>6} {:>6} {:>6}  {:<6} {}{}",
            p.name,
            p.bridge.map_or("-".into(), |b| b.to_string()),
            p.mtu.map_or("-".into(), |b| b.to_string()),
            p.queues.map_or("-".into(), |b| b.to_string()),
            crate::Origin::of_port(&p.name).name(),
            p.device,
            p.netns
                .as_ref()
                .map_or(String::new(), |n| format!(" (netns {n})")),
        );
    }
    o
}

pub fn static_macs_table(macs: &[StaticMac]) -> String {
    let mut o = String::new();
    if macs.is_empty() {
        return o;
    }
    let _ = writeln!(o, "\n{:<7} {:<18} port", "bridge", "static mac");
    for m in macs {
        let _ = writeln!(o, "{:<7} {:<18} {}", m.bridge, m.mac, m.port);
    }
    o
}

pub fn routes_table(routes: &[RouteInfo]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{:<20} via", "prefix");
    for r in routes {
        let _ = writeln!(o, "{:<20} {}", r.prefix, r.via);
    }
    if routes.is_empty() {
        let _ = writeln!(
            o,
            "(no routes: the node has no L3 identity; see [node] in the configuration)"
        );
    }
    o
}

pub fn neighbors_table(n: &[NeighborInfo]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<16} {:<18} {:<16} {:>8} {:<6}",
        "ip", "mac", "port", "age-ms", "worker"
    );
    for x in n {
        let _ = writeln!(
            o,
            "{:<16} {:<18} {:<16} {:>8} {:<6}",
            x.ip, x.mac, x.port, x.age_ms, x.worker
        );
    }
    o
}

/// One line per connection in the layout of `conntrack -L` (conntrack-tools).
pub fn conntrack_lines(conns: &[ConnInfo]) -> String {
    let mut o = String::new();
    for c in conns {
        let name = match c.proto {
            6 => "tcp",
            17 => "udp",
            1 => "icmp",
            _ => "unknown",
        };
        let dir = |t: &(String, String, u16, u16), reply: bool| {
            if c.proto == 1 {
                let ty = if reply { 0 } else { 8 };
                format!("src={} dst={} type={ty} code=0 id={}", t.0, t.1, t.2)
            } else {
                format!("src={} dst={} sport={} dport={}", t.0, t.1, t.2, t.3)
            }
        };
        let _ = write!(o, "{name:<8} {:<2} {} ", c.proto, c.timeout);
        if let Some(s) = &c.state {
            let _ = write!(o, "{s} ");
        }
        let _ = write!(o, "{} ", dir(&c.orig, false));
        if !c.seen_reply {
            let _ = write!(o, "[UNREPLIED] ");
        }
        let _ = write!(o, "{} ", dir(&c.reply, true));
        if c.assured {
            let _ = write!(o, "[ASSURED] ");
        }
        let _ = writeln!(o, "mark=0 use=1");
    }
    o
}

/// conntrack-tools' trailer, which it prints on stderr (so stdout parses as lines).
pub fn conntrack_trailer(n: usize) -> String {
    format!("podpath: {n} flow entries have been shown.")
}

/// The remotes and Services of a desired state, each with where it came from.
pub fn origins_table(remotes: &[crate::RemoteSpec], services: &[crate::ServiceSpec]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<28} {:<16} {:<18} from",
        "remote", "node ip", "pod cidr"
    );
    for r in remotes {
        let _ = writeln!(
            o,
            "{:<28} {:<16} {:<18} {}",
            r.name,
            r.node_ip,
            r.pod_cidr,
            crate::Origin::of_remote(&r.name).name()
        );
    }
    let _ = writeln!(
        o,
        "{:<36} {:<22} {:>9} from",
        "service", "vip:port/proto", "endpoints"
    );
    for s in services {
        let _ = writeln!(
            o,
            "{:<36} {:<22} {:>9} {}",
            s.name,
            format!("{}:{}/{}", s.vip, s.port, s.protocol),
            s.endpoints.len(),
            crate::Origin::of_service(&s.name).name()
        );
    }
    o
}

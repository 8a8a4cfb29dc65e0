//! The packet walk as a picture: traced packets drawn the way the shared packet-walk
//! drawings go, one column per packet: the port it came in on, each stage it
//! crossed with what the stage saw or decided, the next stage on each arrow, and
//! where it left or why it was dropped. Stages that rewrite the packet (NAT, Service
//! DNAT, next-hop MACs, VXLAN headers) are highlighted. With two nodes' traces, a
//! packet VXLAN-encapsulated on one node is joined to the one the other node
//! decapsulated when the crossing matches: the remote VTEP and the outer UDP source
//! port (the inner flow's hash).
//!
//! Input is what `podpathctl trace show --json` prints; nothing here is on any
//! dataplane path.
use std::fmt::Write;

use podpath_proto::TraceLine;

/// One node's trace, with the name to show for it.
pub struct NodeTrace {
    pub node: String,
    pub lines: Vec<TraceLine>,
}

/// Stages that rewrite what they forward.
const REWRITES: [&str; 8] = [
    "snat",
    "snat-reply",
    "lb",
    "nat-icmp",
    "ip4-rewrite",
    "vxlan-encap",
    "vxlan-decap",
    "ip4-fragment",
];

const COL_W: usize = 620;
const ROW_H: usize = 58;
const TOP: usize = 70;
const BOX_W: usize = 150;
const BOX_H: usize = 28;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A packet: its node, worker, id and lines.
struct Column<'a> {
    node: &'a str,
    worker: u16,
    packet: u32,
    lines: Vec<&'a TraceLine>,
}

/// The outer headers of a VXLAN packet as (remote VTEP address, UDP source port):
/// from vxlan-encap's record on the sending node, and from eth-input's parse of the
/// outer UDP header (before vxlan-decap) on the receiving one. The source port is
/// the inner flow's hash, so the pair names one packet's crossing.
fn encap_key(c: &Column) -> Option<(String, String)> {
    let d = &c.lines.iter().find(|l| l.stage == "vxlan-encap")?.detail;
    let rest = d.strip_prefix("vxlan to ")?;
    let (to, rest) = rest.split_once(' ')?;
    let sport = rest.strip_prefix("udp sport ")?.split(' ').next()?;
    Some((to.to_string(), sport.to_string()))
}

fn decap_key(c: &Column) -> Option<(String, String)> {
    let at = c.lines.iter().position(|l| l.stage == "vxlan-decap")?;
    let d = &c.lines[..at]
        .iter()
        .rev()
        .find(|l| l.stage == "eth-input")?
        .detail;
    // "... udp SRC:SPORT > DST:DPORT"
    let udp = &d[d.find("udp ")? + 4..];
    let (src, dst) = udp.split_once(" > ")?;
    let sport = src.rsplit_once(':')?.1;
    let dst_ip = dst.rsplit_once(':')?.0;
    Some((dst_ip.to_string(), sport.to_string()))
}

/// Puts each packet that crossed the overlay right after the one that sent it, so
/// every crossing is drawn between neighbouring columns, left to right: a request's
/// encap, its decap on the other node, the reply's encap there, its decap here.
fn crossing_order(cols: Vec<Column>) -> Vec<Column> {
    let target = |from: usize| {
        let k = encap_key(&cols[from])?;
        (0..cols.len())
            .find(|&d| cols[d].node != cols[from].node && decap_key(&cols[d]).as_ref() == Some(&k))
    };
    let links: Vec<Option<usize>> = (0..cols.len()).map(target).collect();
    let mut order = Vec::new();
    let mut placed = vec![false; cols.len()];
    fn place(i: usize, order: &mut Vec<usize>, placed: &mut [bool]) {
        if !placed[i] {
            placed[i] = true;
            order.push(i);
        }
    }
    for i in 0..cols.len() {
        // A packet decapsulated here goes after the one that sent it.
        if let Some(src) = (0..cols.len()).find(|&s| links[s] == Some(i)) {
            place(src, &mut order, &mut placed);
        }
        place(i, &mut order, &mut placed);
        if let Some(t) = links[i] {
            place(t, &mut order, &mut placed);
        }
    }
    let mut slots: Vec<Option<Column>> = cols.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// Renders `traces` as an SVG document.
pub fn render(traces: &[NodeTrace]) -> String {
    let mut cols: Vec<Column> = Vec::new();
    for t in traces {
        for l in &t.lines {
            match cols.last_mut() {
                Some(c) if c.node == t.node && c.worker == l.worker && c.packet == l.packet => {
                    c.lines.push(l)
                }
                _ => cols.push(Column {
                    node: &t.node,
                    worker: l.worker,
                    packet: l.packet,
                    lines: vec![l],
                }),
            }
        }
    }
    let cols = crossing_order(cols);
    let rows = cols.iter().map(|c| c.lines.len() + 1).max().unwrap_or(1);
    let width = (cols.len().max(1)) * COL_W + 40;
    let height = TOP + rows * ROW_H + 40;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="monospace" font-size="12">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker></defs>
<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    if cols.is_empty() {
        let _ = writeln!(
            o,
            r#"<text x="20" y="40">no traced packets: podpathctl trace start N, send traffic, podpathctl trace show --svg FILE</text>"#
        );
    }
    // Where each column's encap and decap boxes are, for the overlay links.
    let mut encap_at = Vec::new();
    let mut decap_at = Vec::new();
    for (ci, c) in cols.iter().enumerate() {
        let x = 20 + ci * COL_W;
        let total = c.lines.last().map_or(0, |l| l.ns);
        let _ = writeln!(
            o,
            r##"<g class="packet" data-node="{n}" data-worker="{w}" data-packet="{p}">
<text x="{x}" y="24" font-size="14" font-weight="bold">{n}</text>
<text x="{x}" y="42" fill="#555">worker {w}, packet {p}, {total} ns</text>"##,
            n = esc(c.node),
            w = c.worker,
            p = c.packet,
        );
        for (i, l) in c.lines.iter().enumerate() {
            let y = TOP + i * ROW_H;
            let rewrites = REWRITES.contains(&l.stage.as_str());
            let is_port = l.stage == "rx";
            let (fill, stroke) = if is_port {
                ("#e3f2fd", "#1565c0")
            } else if rewrites {
                ("#ffe0b2", "#e65100")
            } else {
                ("#f5f5f5", "#616161")
            };
            let rx = if is_port { 14 } else { 4 };
            let class = if rewrites {
                "stage rewrite"
            } else if is_port {
                "port"
            } else {
                "stage"
            };
            let _ = writeln!(
                o,
                r##"<g class="{class}"><title>{title}</title><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="{rx}" fill="{fill}" stroke="{stroke}"/>
<text x="{tx}" y="{ty}" text-anchor="middle" font-weight="bold">{stage}</text>
<text x="{dx}" y="{ty}" fill="{dfill}"{bold}>{detail}</text>
<text x="{dx}" y="{ny}" fill="#777" font-size="10">+{ns} ns</text></g>"##,
                title = esc(&format!("{} {} {}", l.stage, l.next, l.detail)),
                tx = x + BOX_W / 2,
                ty = y + 18,
                ny = y + 32,
                dx = x + BOX_W + 10,
                stage = esc(&l.stage),
                detail = esc(&shorten(&l.detail, 56)),
                dfill = if rewrites { "#b34700" } else { "#222" },
                bold = if rewrites {
                    r#" font-weight="bold""#
                } else {
                    ""
                },
                ns = l.ns,
            );
            if l.stage == "vxlan-encap" {
                // Leaves from the column's right edge, past the detail text.
                encap_at.push((ci, x + COL_W - 40, y + BOX_H / 2));
            }
            if l.stage == "vxlan-decap" {
                decap_at.push((ci, x, y + BOX_H / 2));
            }
            // The decision: an arrow to the next box, or where the packet ended.
            let ay = y + BOX_H;
            let by = y + ROW_H;
            let last = i + 1 == c.lines.len();
            let end = if l.next.starts_with("drop") {
                Some(("#ffcdd2", "#c62828", l.next.clone()))
            } else if let Some(p) = l.next.strip_prefix("-> port ") {
                last.then(|| ("#e3f2fd", "#1565c0", format!("tx on {p}")))
            } else if last {
                Some((
                    "#eeeeee",
                    "#9e9e9e",
                    l.next.trim_start_matches("-> ").to_string(),
                ))
            } else {
                None
            };
            let ax = x + BOX_W / 2;
            let _ = writeln!(
                o,
                r##"<line x1="{ax}" y1="{ay}" x2="{ax}" y2="{by}" stroke="#444" marker-end="url(#arrow)"/>
<text x="{lx}" y="{ly}" fill="#1b5e20" font-size="11">{next}</text>"##,
                lx = ax + 6,
                ly = ay + 17,
                next = esc(&l.next),
            );
            if let Some((fill, stroke, what)) = end {
                let _ = writeln!(
                    o,
                    r#"<g class="end"><rect x="{x}" y="{by}" width="{BOX_W}" height="{BOX_H}" rx="14" fill="{fill}" stroke="{stroke}"/>
<text x="{tx}" y="{ty}" text-anchor="middle">{what}</text></g>"#,
                    tx = x + BOX_W / 2,
                    ty = by + 18,
                    what = esc(&shorten(&what, 22)),
                );
            }
        }
        let _ = writeln!(o, "</g>");
    }
    // Across the overlay: an encapsulated packet to the other node's decapsulated one.
    for &(ea, ex, ey) in &encap_at {
        let Some(key) = encap_key(&cols[ea]) else {
            continue;
        };
        for &(da, dx, dy) in &decap_at {
            if cols[da].node == cols[ea].node || decap_key(&cols[da]).as_ref() != Some(&key) {
                continue;
            }
            let flow = format!("to {} sport {}", key.0, key.1);
            let _ = writeln!(
                o,
                r##"<g class="overlay"><path d="M{ex},{ey} C{c1},{ey} {c2},{dy} {dx},{dy}" fill="none" stroke="#6a1b9a" stroke-width="2" stroke-dasharray="6,4" marker-end="url(#arrow)"/>
<text x="{mx}" y="{my}" fill="#6a1b9a" font-weight="bold" text-anchor="middle">VXLAN<title>{f}</title></text></g>"##,
                c1 = ex + 30,
                c2 = dx.saturating_sub(30),
                mx = (ex + dx) / 2,
                my = ey.min(dy).saturating_sub(8),
                f = esc(&flow),
            );
        }
    }
    o.push_str("</svg>\n");
    o
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n - 1).collect();
        format!("{t}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(packet: u32, stage: &str, next: &str, detail: &str) -> TraceLine {
        TraceLine {
            worker: 0,
            packet,
            ns: u64::from(packet) * 10,
            stage: stage.into(),
            next: next.into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn every_stage_is_drawn_rewrites_highlighted_and_the_overlay_joined() {
        let a = NodeTrace {
            node: "node1".into(),
            lines: vec![
                line(1, "rx", "-> eth-input", "rx on pod-a (98 bytes)"),
                line(
                    1,
                    "eth-input",
                    "-> ip4-lookup",
                    "a > b type 0x0800 icmp 10.244.0.2 > 10.244.1.2 type 8 id 7",
                ),
                line(
                    1,
                    "vxlan-encap",
                    "-> port uplink",
                    "vxlan to 192.168.77.12 udp sport 4000 vni 1",
                ),
            ],
        };
        let b = NodeTrace {
            node: "node2 <b>".into(),
            lines: vec![
                line(4, "rx", "-> eth-input", "rx on uplink (148 bytes)"),
                line(
                    4,
                    "eth-input",
                    "-> vxlan-decap",
                    "c > d type 0x0800 udp 192.168.77.11:4000 > 192.168.77.12:4789",
                ),
                line(
                    4,
                    "vxlan-decap",
                    "-> eth-input",
                    "vxlan from 192.168.77.11 vni 1, outer headers stripped",
                ),
                line(
                    4,
                    "eth-input",
                    "drop bridge-no-port",
                    "e > f type 0x0800 icmp 10.244.0.2 > 10.244.1.2 type 8 id 7",
                ),
            ],
        };
        let svg = render(&[a, b]);
        for s in [
            ">rx<",
            ">eth-input<",
            ">vxlan-encap<",
            ">vxlan-decap<",
            "node2 &lt;b&gt;",
        ] {
            assert!(svg.contains(s), "{s} missing");
        }
        assert_eq!(svg.matches(r#"class="stage rewrite""#).count(), 2);
        assert_eq!(svg.matches(r#"class="overlay""#).count(), 1, "{svg}");
        assert!(svg.contains("drop bridge-no-port"));
        assert!(svg.contains("tx on uplink"));
        // Balanced groups: a crude well-formedness check (the lab test renders it).
        assert_eq!(svg.matches("<g").count(), svg.matches("</g>").count());
        // No join when the crossing differs (another source port: another flow).
        let c = NodeTrace {
            node: "node3".into(),
            lines: vec![
                line(
                    9,
                    "eth-input",
                    "-> vxlan-decap",
                    "e > f type 0x0800 udp 192.168.77.11:4001 > 192.168.77.12:4789",
                ),
                line(
                    9,
                    "vxlan-decap",
                    "-> ip4-lookup",
                    "vxlan from 192.168.77.11",
                ),
            ],
        };
        let a2 = NodeTrace {
            node: "node1".into(),
            lines: vec![line(
                1,
                "vxlan-encap",
                "-> port uplink",
                "vxlan to 192.168.77.12 udp sport 4000 vni 1",
            )],
        };
        assert!(!render(&[a2, c]).contains(r#"class="overlay""#));
        assert!(render(&[]).contains("no traced packets"));
    }
}

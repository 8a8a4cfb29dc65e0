//! podpath-gen: a pktgen-style DPDK traffic generator on one core.
//!
//! Sends UDP/IPv4 frames (optionally VXLAN-encapsulated) on one port at a set rate over
//! a set of flows, receives on another port (or the same one), and reports sent and
//! received rates, loss, and latency percentiles from a timestamp it writes in the last
//! 16 bytes of every frame. The stamp sits at the end so that it survives a device under
//! test that adds or removes outer headers (VXLAN encap/decap, NAT rewrites).
//!
//! Example (its own ceiling: a `net_ring` port loops every frame back to itself):
//!   podpath-gen --tx net_ring0 --eal=--no-huge --eal=-m --eal=256 --duration 5
// Truncating casts here are deliberate or bounded: frame lengths are checked to be at
// most 1518 before any header is written, the sequence number goes on the wire as its
// low 32 bits, and float-to-integer conversions are of
// durations and percentile ranks far below 2^53.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss
)]
use std::net::Ipv4Addr;
use std::time::Duration;

use clap::Parser;
use podpath_dataplane::dpdk::{rdtsc, Eal, Mbuf, Mempool, SoloPort};
use podpath_dataplane::wire::checksum;

const MAGIC: u32 = 0x5050_4731; // "PPG1"
                                // Magic, sequence number (low 32 bits), TSC at transmit: 16 bytes, so that a 64-byte
                                // frame (42 bytes of headers) still carries it.
const STAMP_LEN: usize = 16;
const BURST: usize = 32;

#[derive(Parser, Debug)]
#[command(name = "podpath-gen", about = "pktgen-style DPDK traffic generator")]
struct Args {
    /// Transmit port, as DPDK device arguments (net_ring0, net_tap0,iface=x, net_af_packet0,iface=x, net_virtio_user0,path=...).
    #[arg(long)]
    tx: String,
    /// Receive port (device arguments); the transmit port when left out.
    #[arg(long)]
    rx: Option<String>,
    /// Frame size in bytes, FCS included (64..=1518), as pktgen counts it.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Number of flows (distinct UDP 5-tuples: source address and port vary).
    #[arg(long, default_value_t = 1)]
    flows: u32,
    /// Pick each packet's flow at random instead of cycling through them.
    #[arg(long)]
    random: bool,
    /// Offered rate in packets per second; 0 sends as fast as the port takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Encapsulate every frame in VXLAN (outer UDP 4789) with this VNI.
    #[arg(long)]
    vxlan: Option<u32>,
    /// Seconds to send for.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds to send before measuring (not counted): a DUT resolves its next hop and
    /// opens its connections, so the measurement sees its steady state.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Milliseconds to keep receiving after the last transmit (in-flight frames).
    #[arg(long, default_value_t = 200)]
    drain_ms: u64,
    #[arg(long, default_value = "02:00:00:00:00:01")]
    src_mac: String,
    #[arg(long, default_value = "02:00:00:00:00:02")]
    dst_mac: String,
    /// First source address; flow i uses this plus i / 4096.
    #[arg(long, default_value = "10.244.0.2")]
    src_ip: Ipv4Addr,
    #[arg(long, default_value = "10.244.1.2")]
    dst_ip: Ipv4Addr,
    #[arg(long, default_value_t = 5001)]
    dst_port: u16,
    /// Outer addresses for --vxlan (node addresses).
    #[arg(long, default_value = "192.168.100.1")]
    outer_src_ip: Ipv4Addr,
    #[arg(long, default_value = "192.168.100.2")]
    outer_dst_ip: Ipv4Addr,
    /// Answer ARP requests that arrive on the receive port with this MAC, for any
    /// address asked (pktgen does the same), so that a routing DUT resolves its next hop.
    #[arg(long)]
    arp_mac: Option<String>,
    /// Write the report as JSON to this file as well.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Extra EAL argument (repeatable), e.g. --eal=--no-huge --eal=-m --eal=256.
    #[arg(long, allow_hyphen_values = true)]
    eal: Vec<String>,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad MAC address {s:?}"))?;
    v.try_into().map_err(|_| format!("bad MAC address {s:?}"))
}

/// Writes Ethernet + IPv4 + UDP headers for a datagram of `payload` bytes at `f[0..42]`.
fn write_udp_headers(
    f: &mut [u8],
    macs: ([u8; 6], [u8; 6]),
    ips: (Ipv4Addr, Ipv4Addr),
    dport: u16,
    payload: usize,
) {
    f[0..6].copy_from_slice(&macs.1);
    f[6..12].copy_from_slice(&macs.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (20 + 8 + payload) as u16;
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[12..16].copy_from_slice(&ips.0.octets());
    ip[16..20].copy_from_slice(&ips.1.octets());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&1024u16.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]); // no UDP checksum (allowed in IPv4)
    let c = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// The frame template and where each flow's fields go.
struct Template {
    bytes: Vec<u8>,
    /// Offset of the inner IPv4 header (14, or 64 under VXLAN).
    inner_ip: usize,
    /// Offset of the outer UDP source port under VXLAN (flow entropy, as RFC 7348 asks).
    outer_sport: Option<usize>,
}

impl Template {
    fn new(a: &Args) -> Result<Template, String> {
        let macs = (parse_mac(&a.src_mac)?, parse_mac(&a.dst_mac)?);
        let len = a.size.checked_sub(4).ok_or("frame size below 64")?; // without FCS
        let headers = 42 + if a.vxlan.is_some() { 50 } else { 0 };
        if !(64..=1518).contains(&a.size) || len < headers + STAMP_LEN {
            return Err(format!(
                "frame size {} does not fit (64..=1518, and at least {} with these headers)",
                a.size,
                headers + STAMP_LEN + 4
            ));
        }
        let mut f = vec![0u8; len];
        let inner_ip = match a.vxlan {
            None => {
                write_udp_headers(&mut f, macs, (a.src_ip, a.dst_ip), a.dst_port, len - 42);
                14
            }
            Some(vni) => {
                if vni >= 1 << 24 {
                    return Err(format!("VNI {vni} exceeds 24 bits"));
                }
                write_udp_headers(
                    &mut f,
                    macs,
                    (a.outer_src_ip, a.outer_dst_ip),
                    4789,
                    len - 42,
                );
                f[42] = 0x08; // VNI present
                f[46..49].copy_from_slice(&vni.to_be_bytes()[1..]);
                let inner_macs = ([0x0a, 0x58, 10, 244, 0, 2], [0x0a, 0x58, 10, 244, 1, 2]);
                write_udp_headers(
                    &mut f[50..],
                    inner_macs,
                    (a.src_ip, a.dst_ip),
                    a.dst_port,
                    len - 92,
                );
                64
            }
        };
        let outer_sport = a.vxlan.map(|_| 34);
        Ok(Template {
            bytes: f,
            inner_ip,
            outer_sport,
        })
    }

    /// Fills `f` (a copy of the template) for flow `flow`, packet `seq`, sent at `tsc`.
    #[inline(always)]
    fn stamp(&self, f: &mut [u8], base_src: u32, flow: u32, seq: u64, tsc: u64) {
        let ip = self.inner_ip;
        let src = base_src.wrapping_add(flow >> 12);
        let sport = 1024 + (flow & 0xfff) as u16;
        f[ip + 12..ip + 16].copy_from_slice(&src.to_be_bytes());
        f[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&f[ip..ip + 20]);
        f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        f[ip + 20..ip + 22].copy_from_slice(&sport.to_be_bytes());
        if let Some(o) = self.outer_sport {
            let h = (flow.wrapping_mul(0x9e37_79b9) >> 16) as u16;
            f[o..o + 2].copy_from_slice(&(49152 | (h & 0x3fff)).to_be_bytes());
        }
        let n = f.len();
        f[n - 16..n - 12].copy_from_slice(&MAGIC.to_be_bytes());
        f[n - 12..n - 8].copy_from_slice(&(seq as u32).to_be_bytes());
        f[n - 8..].copy_from_slice(&tsc.to_be_bytes());
    }
}

/// Reads a generator stamp from the end of a received frame (a device under test may
/// have pad bytes after it: look back over up to 64 bytes).
#[inline(always)]
fn read_stamp(f: &[u8]) -> Option<(u32, u64)> {
    let n = f.len();
    for end in (n.saturating_sub(64)..=n).rev() {
        if end < STAMP_LEN {
            break;
        }
        let s = &f[end - STAMP_LEN..end];
        if u32::from_be_bytes(s[0..4].try_into().ok()?) == MAGIC {
            let seq = u32::from_be_bytes(s[4..8].try_into().ok()?);
            let tsc = u64::from_be_bytes(s[8..16].try_into().ok()?);
            return Some((seq, tsc));
        }
    }
    None
}

/// Latency histogram in TSC cycles: log-linear buckets (16 per power of two, ~6 %
/// resolution), fixed size, no allocation while recording.
struct Histogram {
    buckets: [u64; 64 * 16],
    count: u64,
    max: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: [0; 64 * 16],
            count: 0,
            max: 0,
        }
    }
    #[inline(always)]
    fn bucket(v: u64) -> usize {
        if v < 16 {
            return v as usize;
        }
        let p = 63 - v.leading_zeros() as usize; // >= 4
        let sub = ((v >> (p - 4)) & 15) as usize;
        (p - 3) * 16 + sub
    }
    fn lower(b: usize) -> u64 {
        if b < 16 {
            return b as u64;
        }
        let p = b / 16 + 3;
        (16 + (b % 16) as u64) << (p - 4)
    }
    #[inline(always)]
    fn record(&mut self, v: u64) {
        self.buckets[Self::bucket(v)] += 1;
        self.count += 1;
        self.max = self.max.max(v);
    }
    fn percentile(&self, q: f64) -> u64 {
        let want = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Self::lower(b);
            }
        }
        self.max
    }
}

struct XorShift(u64);
impl XorShift {
    #[inline(always)]
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Default)]
struct Tally {
    sent: u64,
    received: u64,
    stamped: u64,
    out_of_order: u64,
    last_seq: Option<u32>,
    arp_replies: u64,
    /// Frames stamped before this sequence number were sent during the warm-up.
    first_seq: u32,
}

fn receive(
    rx: &mut SoloPort,
    bufs: &mut Vec<Mbuf>,
    t: &mut Tally,
    h: &mut Histogram,
    arp_mac: Option<[u8; 6]>,
) {
    let n = rx.rx_burst(bufs, BURST);
    if n == 0 {
        return;
    }
    let now = rdtsc();
    let mut replies = Vec::new();
    for mut m in bufs.drain(..) {
        if let Some((seq, tsc)) = read_stamp(m.data()) {
            if (seq.wrapping_sub(t.first_seq) as i32) < 0 {
                continue; // sent during the warm-up
            }
            t.stamped += 1;
            h.record(now.wrapping_sub(tsc));
            // Wrapping comparison: the sequence number is 32 bits on the wire.
            if t.last_seq.is_some_and(|l| (seq.wrapping_sub(l) as i32) < 0) {
                t.out_of_order += 1;
            }
            t.last_seq = Some(seq);
        } else if let Some(mac) = arp_mac {
            if arp_reply(m.data_mut(), mac) {
                replies.push(m); // dropping the others frees them
            }
        }
    }
    t.received += n as u64;
    if !replies.is_empty() {
        t.arp_replies += replies.len() as u64;
        rx.tx_burst(&mut replies);
    }
}

/// Turns an Ethernet ARP request into its reply in place, answering with `mac`.
fn arp_reply(f: &mut [u8], mac: [u8; 6]) -> bool {
    // Ethernet/IPv4 ARP request: ethertype 0x0806, htype 1, ptype 0x0800, 6/4, op 1.
    if f.len() < 42 || f[12..22] != [0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1] {
        return false;
    }
    let (sha, spa, tpa) = (
        <[u8; 6]>::try_from(&f[22..28]).unwrap_or_default(),
        <[u8; 4]>::try_from(&f[28..32]).unwrap_or_default(),
        <[u8; 4]>::try_from(&f[38..42]).unwrap_or_default(),
    );
    f[0..6].copy_from_slice(&sha);
    f[6..12].copy_from_slice(&mac);
    f[21] = 2;
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&tpa);
    f[32..38].copy_from_slice(&sha);
    f[38..42].copy_from_slice(&spa);
    true
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("podpath-gen: {e}");
        std::process::exit(2);
    }
}

fn run(a: Args) -> Result<(), String> {
    let tpl = Template::new(&a)?;
    if a.flows == 0 {
        return Err("--flows must be at least 1".into());
    }
    let mut eal_args = vec![
        "-l".to_string(),
        "0".to_string(),
        "--log-level=warning".into(),
    ];
    eal_args.extend(a.eal.iter().cloned());
    let eal = Eal::init(&eal_args).map_err(|e| e.to_string())?;
    let hz = eal.tsc_hz();
    let pool = Mempool::new("gen_pool", 16383, 256, 2048 + 128).map_err(|e| e.to_string())?;
    let mut tx = SoloPort::open(&a.tx, 1024, &pool).map_err(|e| e.to_string())?;
    let mut rx_sep = match &a.rx {
        Some(d) if d != &a.tx => Some(SoloPort::open(d, 1024, &pool).map_err(|e| e.to_string())?),
        _ => None,
    };
    if let Some(rx) = rx_sep.as_mut() {
        // Like pktgen's ARP prelude: one frame from --dst-mac out of the receive port
        // lets a learning bridge under test forward to it instead of flooding.
        let mut f = tpl.bytes.clone();
        let (dst, src) = f.split_at_mut(6);
        dst.swap_with_slice(&mut src[..6]);
        let mut v: Vec<Mbuf> = pool.alloc_copy(&f).into_iter().collect();
        rx.tx_burst(&mut v);
        std::thread::sleep(Duration::from_millis(200));
        let mut junk = Vec::with_capacity(BURST);
        while tx.rx_burst(&mut junk, BURST) > 0 {
            junk.clear();
        }
    }
    let arp_mac = a.arp_mac.as_deref().map(parse_mac).transpose()?;
    let base_src = u32::from(a.src_ip);
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut t = Tally::default();
    let mut h = Histogram::new();
    let mut out: Vec<Mbuf> = Vec::with_capacity(BURST);
    let mut inb: Vec<Mbuf> = Vec::with_capacity(BURST);
    let (mut tx_full, mut alloc_fail) = (0u64, 0u64);
    let mut flow = 0u32;
    let mut seq = 0u64; // of frames sent, warm-up included
    let mut start = rdtsc();
    let mut warm_end = start + (a.warmup * hz as f64) as u64;
    let mut end = warm_end + (a.duration * hz as f64) as u64;
    let mut now = start;
    while now < end {
        if warm_end != 0 && now >= warm_end {
            if a.warmup > 0.0 {
                // The measurement starts here: forget the warm-up, keep ARP's count.
                t = Tally {
                    arp_replies: t.arp_replies,
                    first_seq: seq as u32,
                    ..Tally::default()
                };
                h = Histogram::new();
                (tx_full, alloc_fail) = (0, 0);
                start = now;
                end = now + (a.duration * hz as f64) as u64;
            }
            warm_end = 0;
        }
        // Pacing: how many packets the rate allows by now, in bursts of at most BURST.
        let allowed = if a.rate == 0 {
            BURST as u64
        } else {
            let due = ((now - start) as u128 * a.rate as u128 / hz as u128) as u64;
            due.saturating_sub(t.sent).min(BURST as u64)
        };
        for i in 0..allowed {
            let Some(mut m) = pool.alloc() else {
                alloc_fail += 1;
                break;
            };
            let Some(f) = m.append(tpl.bytes.len() as u16) else {
                alloc_fail += 1;
                break;
            };
            f.copy_from_slice(&tpl.bytes);
            let fl = if a.random {
                (rng.next() % u64::from(a.flows)) as u32
            } else {
                let f = flow;
                flow = if flow + 1 == a.flows { 0 } else { flow + 1 };
                f
            };
            tpl.stamp(f, base_src, fl, seq + i, now);
            out.push(m);
        }
        let queued = out.len();
        tx.tx_burst(&mut out);
        t.sent += (queued - out.len()) as u64;
        seq += (queued - out.len()) as u64;
        if !out.is_empty() {
            // The port is full: count it and retry these frames (restamped) next turn.
            tx_full += out.len() as u64;
            out.clear();
        }
        match rx_sep.as_mut() {
            Some(rx) => receive(rx, &mut inb, &mut t, &mut h, arp_mac),
            None => receive(&mut tx, &mut inb, &mut t, &mut h, arp_mac),
        }
        now = rdtsc();
    }
    let sent_secs = (now - start) as f64 / hz as f64;
    let drain_end = now + a.drain_ms * hz / 1000;
    while rdtsc() < drain_end {
        match rx_sep.as_mut() {
            Some(rx) => receive(rx, &mut inb, &mut t, &mut h, arp_mac),
            None => receive(&mut tx, &mut inb, &mut t, &mut h, arp_mac),
        }
        if a.rx.is_none() && inb.is_empty() {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    report(&a, &t, &h, hz, sent_secs, tx_full, alloc_fail)
}

fn report(
    a: &Args,
    t: &Tally,
    h: &Histogram,
    hz: u64,
    secs: f64,
    tx_full: u64,
    alloc_fail: u64,
) -> Result<(), String> {
    let us = |c: u64| c as f64 * 1e6 / hz as f64;
    let loss = t.sent.saturating_sub(t.stamped);
    let lat = [0.5, 0.9, 0.99, 0.999].map(|q| us(h.percentile(q)));
    let json = serde_json::json!({
        "tx": a.tx, "rx": a.rx.as_deref().unwrap_or(&a.tx),
        "frame_size": a.size, "flows": a.flows, "random": a.random,
        "vxlan_vni": a.vxlan, "offered_pps": a.rate, "seconds": secs,
        "sent": t.sent, "received": t.received, "stamped": t.stamped,
        "lost": loss, "loss_ratio": if t.sent > 0 { loss as f64 / t.sent as f64 } else { 0.0 },
        "out_of_order": t.out_of_order, "arp_replies": t.arp_replies, "warmup_seconds": a.warmup, "tx_port_full": tx_full, "mbuf_alloc_failed": alloc_fail,
        "tx_mpps": t.sent as f64 / secs / 1e6, "rx_mpps": t.stamped as f64 / secs / 1e6,
        "latency_us": {"p50": lat[0], "p90": lat[1], "p99": lat[2], "p999": lat[3], "max": us(h.max)},
        "tsc_hz": hz,
    });
    println!(
        "sent {} ({:.3} Mpps)  received {} ({:.3} Mpps)  lost {} ({:.4} %)  out-of-order {}  tx-full {}",
        t.sent,
        t.sent as f64 / secs / 1e6,
        t.stamped,
        t.stamped as f64 / secs / 1e6,
        loss,
        if t.sent > 0 { 100.0 * loss as f64 / t.sent as f64 } else { 0.0 },
        t.out_of_order,
        tx_full
    );
    println!(
        "latency us: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        lat[0],
        lat[1],
        lat[2],
        lat[3],
        us(h.max)
    );
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&json).unwrap_or_default())
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["podpath-gen", "--tx", "net_ring0"];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    #[test]
    fn frames_parse_and_carry_the_stamp() {
        for (extra, inner) in [
            (&["--size", "64"][..], 14),
            (&["--size", "128", "--vxlan", "7"][..], 64),
        ] {
            let a = args(extra);
            let t = Template::new(&a).unwrap();
            let mut f = t.bytes.clone();
            t.stamp(&mut f, u32::from(a.src_ip), 5000, 42, 777);
            assert_eq!(f.len() + 4, a.size);
            let ip = etherparse::Ipv4HeaderSlice::from_slice(&f[inner..]).unwrap();
            assert_eq!(ip.source_addr(), Ipv4Addr::new(10, 244, 0, 3)); // 5000 >> 12 == 1
            assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
            assert_eq!(
                u16::from_be_bytes([f[inner + 20], f[inner + 21]]),
                1024 + (5000 & 0xfff)
            );
            assert_eq!(read_stamp(&f), Some((42, 777)));
            f.extend_from_slice(&[0; 10]); // padding after the stamp
            assert_eq!(read_stamp(&f), Some((42, 777)));
        }
        assert!(Template::new(&args(&["--size", "90", "--vxlan", "1"])).is_err());
        assert!(Template::new(&args(&["--size", "60"])).is_err());
    }

    #[test]
    fn histogram_percentiles_are_within_a_bucket() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 100);
        }
        for (q, exact) in [(0.5, 500_000.0), (0.99, 990_000.0)] {
            let got = h.percentile(q) as f64;
            assert!(
                got <= exact && got >= exact * 0.93,
                "q {q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.max, 1_000_000);
        for v in [0u64, 1, 15, 16, 17, 1 << 20, u64::MAX >> 1] {
            assert!(Histogram::lower(Histogram::bucket(v)) <= v);
        }
    }
}

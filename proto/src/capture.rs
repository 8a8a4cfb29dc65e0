//! Packet capture's request and its filter language, shared by podpathctl (which
//! checks a filter before asking) and the dataplane (which applies it).
//!
//! A filter is terms joined by `and`, tcpdump's words for what a node's operator
//! filters on most: `tcp`, `udp`, `icmp`, `arp`, `host A`, `src A`, `dst A`,
//! `port N` (either side), e.g. `tcp and host 10.244.0.2 and port 80`. Terms match
//! the packet as it is at the capture point (its outer headers on the uplink).
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// What `podpathctl capture` asks the dataplane for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureSpec {
    /// "rx" or "tx" on `port`; "before" or "after" `stage` (then `port`, if given,
    /// keeps packets that entered on it).
    pub point: String,
    pub port: Option<String>,
    pub stage: Option<String>,
    /// Packets per worker at most, then the worker stops capturing by itself.
    pub count: u32,
    /// Bytes kept of each packet (at most [`SNAP_MAX`]).
    pub snaplen: u16,
    pub filter: String,
}

/// The most bytes a capture keeps of one packet.
pub const SNAP_MAX: usize = 2048;

/// Packets taken, as the dataplane hands them to podpathctl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedPacket {
    /// Nanoseconds since the Unix epoch.
    pub unix_ns: u64,
    pub worker: u16,
    /// The port the packet entered (rx, stages) or leaves (tx) on.
    pub port: String,
    /// Its length on the wire; `data` may be shorter (the snap length).
    pub orig_len: u32,
    pub data: Vec<u8>,
}

/// A parsed filter: every set field must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CaptureFilter {
    /// An IP protocol (1, 6, 17), or none.
    pub proto: Option<u8>,
    pub arp: bool,
    pub host: Option<Ipv4Addr>,
    pub src: Option<Ipv4Addr>,
    pub dst: Option<Ipv4Addr>,
    pub port: Option<u16>,
}

impl CaptureFilter {
    /// Parses `tcp and host 10.0.0.1 and port 80`; empty: everything.
    pub fn parse(text: &str) -> Result<CaptureFilter, String> {
        let mut f = CaptureFilter::default();
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut i = 0;
        let addr = |w: Option<&&str>, what: &str| -> Result<Ipv4Addr, String> {
            w.ok_or(format!("filter: {what} needs an IPv4 address"))?
                .parse()
                .map_err(|_| {
                    format!(
                        "filter: {what} {:?} is not an IPv4 address",
                        w.unwrap_or(&"")
                    )
                })
        };
        while i < words.len() {
            match words[i] {
                "and" if i > 0 && i + 1 < words.len() => {}
                "tcp" => f.proto = Some(6),
                "udp" => f.proto = Some(17),
                "icmp" => f.proto = Some(1),
                "arp" => f.arp = true,
                "host" => {
                    f.host = Some(addr(words.get(i + 1), "host")?);
                    i += 1;
                }
                "src" => {
                    f.src = Some(addr(words.get(i + 1), "src")?);
                    i += 1;
                }
                "dst" => {
                    f.dst = Some(addr(words.get(i + 1), "dst")?);
                    i += 1;
                }
                "port" => {
                    let p = words.get(i + 1).ok_or("filter: port needs a number")?;
                    f.port = Some(p.parse().map_err(|_| format!("filter: port {p:?} is not a number"))?);
                    i += 1;
                }
                w => {
                    return Err(format!(
                        "filter: {w:?} is not understood (terms: tcp, udp, icmp, arp, host A, src A, dst A, port N, joined by and)"
                    ))
                }
            }
            i += 1;
        }
        if f.arp && (f.proto.is_some() || f.port.is_some()) {
            return Err("filter: arp has no IP protocol or port".into());
        }
        Ok(f)
    }

    /// Whether an Ethernet frame matches (a VLAN tag is looked through). Reads only
    /// within `frame`: a short or odd frame simply does not match an IP term.
    pub fn matches(&self, frame: &[u8]) -> bool {
        if *self == CaptureFilter::default() {
            return true;
        }
        let mut off = 12;
        let mut et =
            u16::from_be_bytes([*frame.get(12).unwrap_or(&0), *frame.get(13).unwrap_or(&0)]);
        if et == 0x8100 {
            off = 16;
            et = u16::from_be_bytes([*frame.get(16).unwrap_or(&0), *frame.get(17).unwrap_or(&0)]);
        }
        let l3 = off + 2;
        if et == 0x0806 {
            return self.arp
                && self.proto.is_none()
                && self.host.is_none()
                && self.src.is_none()
                && self.dst.is_none();
        }
        if et != 0x0800 || self.arp {
            return false;
        }
        let Some(ip) = frame.get(l3..l3 + 20) else {
            return false;
        };
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let proto = ip[9];
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        if self.proto.is_some_and(|p| p != proto)
            || self.host.is_some_and(|h| h != src && h != dst)
            || self.src.is_some_and(|a| a != src)
            || self.dst.is_some_and(|a| a != dst)
        {
            return false;
        }
        if let Some(port) = self.port {
            // Ports only in a first fragment (or an unfragmented packet) of TCP/UDP.
            let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
            let Some(l4) = frame
                .get(l3 + ihl..l3 + ihl + 4)
                .filter(|_| frag == 0 && (proto == 6 || proto == 17))
            else {
                return false;
            };
            let (sp, dp) = (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            );
            if sp != port && dp != port {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(proto: u8, src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[23] = proto;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sp.to_be_bytes());
        f[36..38].copy_from_slice(&dp.to_be_bytes());
        f
    }

    #[test]
    fn filters_parse_and_match_like_tcpdump_words() {
        let f = CaptureFilter::parse("tcp and host 10.244.0.2 and port 80").unwrap();
        assert!(f.matches(&frame(6, [10, 244, 0, 2], [10, 96, 0, 10], 40000, 80)));
        assert!(f.matches(&frame(6, [10, 96, 0, 10], [10, 244, 0, 2], 80, 40000)));
        assert!(!f.matches(&frame(17, [10, 244, 0, 2], [10, 96, 0, 10], 40000, 80)));
        assert!(!f.matches(&frame(6, [10, 244, 0, 3], [10, 96, 0, 10], 40000, 80)));
        assert!(!f.matches(&frame(6, [10, 244, 0, 2], [10, 96, 0, 10], 40000, 81)));
        let s = CaptureFilter::parse("src 10.0.0.1").unwrap();
        assert!(s.matches(&frame(1, [10, 0, 0, 1], [10, 0, 0, 2], 0, 0)));
        assert!(!s.matches(&frame(1, [10, 0, 0, 2], [10, 0, 0, 1], 0, 0)));
        assert!(CaptureFilter::parse("").unwrap().matches(&[]));
        // Short and odd frames never panic, and match no IP term.
        for n in 0..38 {
            assert!(!f.matches(&frame(6, [10, 244, 0, 2], [1, 1, 1, 1], 80, 80)[..n]));
        }
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(CaptureFilter::parse("arp").unwrap().matches(&arp));
        assert!(!f.matches(&arp));
        for bad in [
            "tcp or udp",
            "host",
            "host 10.0.0",
            "port x",
            "and tcp",
            "arp and port 1",
        ] {
            assert!(CaptureFilter::parse(bad).is_err(), "{bad}");
        }
    }
}

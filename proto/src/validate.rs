//! Checks of objects in requests, shared by the dataplane and the control service so
//! both refuse the same things with the same words.
use std::path::Path;

use crate::msg::PortSpec;

/// Checks a port request.
pub fn port_spec(p: &PortSpec) -> Result<(), String> {
    if p.name.is_empty()
        || p.name.len() > 64
        || !p
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "port name {:?} must be 1-64 characters of a-z, 0-9, '-', '_', '.'",
            p.name
        ));
    }
    let drv = p.device.split(',').next().unwrap_or("");
    if drv.is_empty() || p.device.contains(char::is_whitespace) {
        return Err(format!(
            "device {:?} is not DPDK device arguments (e.g. net_tap0,iface=eth0)",
            p.device
        ));
    }
    if let Some(ns) = &p.netns {
        if !Path::new(ns).exists() {
            return Err(format!("network namespace {ns:?} does not exist"));
        }
    }
    if p.queues == Some(0) {
        return Err("queues must be at least 1".into());
    }
    if let Some(m) = p.mtu {
        if !(68..=9000).contains(&m) {
            return Err(format!("mtu {m} is outside 68..=9000"));
        }
    }
    Ok(())
}

/// The device name of DPDK device arguments ("net_tap1" of "net_tap1,iface=eth0").
pub fn device_name(devargs: &str) -> &str {
    devargs.split(',').next().unwrap_or(devargs)
}

/// Parses a dotted-quad IPv4 address into a host-order u32.
pub fn ipv4(s: &str) -> Result<u32, String> {
    s.parse::<std::net::Ipv4Addr>()
        .map(u32::from)
        .map_err(|_| format!("{s:?} is not an IPv4 address"))
}

/// Parses "a.b.c.d/n"; the address must be the network's first (no host bits).
pub fn cidr(s: &str) -> Result<(u32, u8), String> {
    let (a, n) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR (want a.b.c.d/n)"))?;
    let addr = ipv4(a)?;
    let len: u8 = n
        .parse()
        .ok()
        .filter(|&l| l <= 32)
        .ok_or_else(|| format!("{s:?}: prefix length must be 0-32"))?;
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    if addr & !mask != 0 {
        return Err(format!(
            "{s:?} has host bits set (the network is {}/{len})",
            std::net::Ipv4Addr::from(addr & mask)
        ));
    }
    Ok((addr, len))
}

fn net_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// Does network `outer` contain network `inner`?
pub fn cidr_contains(outer: (u32, u8), inner: (u32, u8)) -> bool {
    inner.1 >= outer.1 && inner.0 & net_mask(outer.1) == outer.0
}

/// Do two networks share any address?
pub fn cidr_overlap(a: (u32, u8), b: (u32, u8)) -> bool {
    cidr_contains(a, b) || cidr_contains(b, a)
}

/// Parses a unicast MAC address "aa:bb:cc:dd:ee:ff".
pub fn unicast_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!(
            "{s:?} is not a MAC address (want six hex bytes, aa:bb:cc:dd:ee:ff)"
        ));
    }
    let mut a = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(format!(
                "{s:?} is not a MAC address: {p:?} is not a hex byte"
            ));
        }
        a[i] = u8::from_str_radix(p, 16)
            .map_err(|_| format!("{s:?} is not a MAC address: {p:?} is not a hex byte"))?;
    }
    if a[0] & 1 == 1 {
        return Err(format!(
            "{s} is a group address; static entries must be unicast"
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, device: &str) -> PortSpec {
        PortSpec {
            name: name.into(),
            device: device.into(),
            netns: None,
            bridge: Some(1),
            queues: None,
            mtu: None,
        }
    }

    #[test]
    fn ports() {
        assert!(port_spec(&spec("pod-a", "net_tap0,iface=eth0")).is_ok());
        assert!(port_spec(&spec("", "net_tap0")).is_err());
        assert!(port_spec(&spec("a b", "net_tap0")).is_err());
        assert!(port_spec(&spec("a", "")).is_err());
        assert!(port_spec(&spec("a", "net tap")).is_err());
        let mut s = spec("a", "net_tap0");
        s.netns = Some("/nonexistent/ns".into());
        assert!(port_spec(&s).unwrap_err().contains("does not exist"));
        s.netns = None;
        s.mtu = Some(20);
        assert!(port_spec(&s).is_err());
        assert_eq!(device_name("net_tap1,iface=eth0"), "net_tap1");
    }

    #[test]
    fn addresses() {
        assert_eq!(ipv4("10.244.0.1").unwrap(), 0x0af4_0001);
        assert!(ipv4("10.244.0").is_err());
        assert_eq!(cidr("10.244.0.0/16").unwrap(), (0x0af4_0000, 16));
        assert!(cidr("10.244.0.1/16").unwrap_err().contains("host bits"));
        assert!(cidr("10.244.0.0/33").is_err());
        assert!(cidr("10.244.0.0").is_err());
        assert!(cidr_contains((0x0af4_0000, 16), (0x0af4_0100, 24)));
        assert!(!cidr_contains((0x0af4_0100, 24), (0x0af4_0000, 16)));
        assert!(cidr_overlap((0x0af4_0100, 24), (0x0af4_0000, 16)));
        assert!(!cidr_overlap((0x0af4_0100, 24), (0x0af4_0200, 24)));
        assert!(cidr_contains((0, 0), (0x0af4_0000, 16)));
    }

    #[test]
    fn macs() {
        assert_eq!(unicast_mac("0a:58:0a:f4:00:02").unwrap()[5], 2);
        assert!(unicast_mac("01:00:5e:00:00:01")
            .unwrap_err()
            .contains("group"));
        assert!(unicast_mac("0a:58:0a:f4:00").is_err());
        assert!(unicast_mac("0a:58:0a:f4:00:zz").is_err());
        assert!(unicast_mac("0a:58:0a:f4:00:002").is_err());
    }
}

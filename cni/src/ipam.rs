//! Addresses for pods: podpath's own allocator (host-local's layout, so operators
//! find what they know: one file per address under
//! /var/lib/cni/networks/NAME, holding "containerID\r\nifname", and
//! `last_reserved_ip.0`), serialised across concurrent plugin runs by a lock file;
//! or delegation to any IPAM plugin in CNI_PATH.
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::spec::{code, CniError, CniResult};

/// The allocation store of one network, locked while it lives.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

fn io_err(what: &str, e: std::io::Error) -> CniError {
    CniError::new(code::IO, what.to_string()).with_details(e.to_string())
}

/// A parsed IPv4 CIDR: (network, prefix length).
pub fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (a, l) = s.split_once('/')?;
    let a: Ipv4Addr = a.parse().ok()?;
    let l: u8 = l.parse().ok()?;
    if l > 30 {
        return None;
    }
    let mask = u32::MAX << (32 - u32::from(l));
    Some((u32::from(a) & mask, l))
}

impl Store {
    /// Opens (creating) the store in `dir` and takes its lock: concurrent ADDs and
    /// DELs of one network wait for each other here, never for long.
    pub fn open(dir: &Path) -> Result<Store, CniError> {
        fs::create_dir_all(dir)
            .map_err(|e| io_err(&format!("cannot create {}", dir.display()), e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| io_err("cannot open the IPAM lock", e))?;
        lock.lock()
            .map_err(|e| io_err("cannot lock the IPAM store", e))?;
        Ok(Store {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// Every allocation: (address, container id, interface name).
    pub fn all(&self) -> Vec<(Ipv4Addr, String, String)> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut v: Vec<_> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                let body = fs::read_to_string(e.path()).ok()?;
                let mut l = body.split("\r\n");
                let id = l.next()?.trim().to_string();
                let ifname = l.next().unwrap_or("").trim().to_string();
                Some((ip, id, ifname))
            })
            .collect();
        v.sort();
        v
    }

    pub fn find(&self, id: &str, ifname: &str) -> Option<Ipv4Addr> {
        self.all()
            .into_iter()
            .find(|(_, i, n)| i == id && n == ifname)
            .map(|(ip, _, _)| ip)
    }

    /// The address of (id, ifname): the one it has, or the next free one after the
    /// last given out (so a freed address is not reused at once), skipping the
    /// network, the gateway (the first address) and the broadcast address.
    pub fn allocate(
        &mut self,
        net: (u32, u8),
        range_start: Option<Ipv4Addr>,
        id: &str,
        ifname: &str,
    ) -> Result<Ipv4Addr, CniError> {
        if let Some(ip) = self.find(id, ifname) {
            return Ok(ip);
        }
        let (base, len) = net;
        let size = 1u32 << (32 - u32::from(len));
        let (mut first, last) = (base + 2, base + size - 2);
        if let Some(r) = range_start
            .map(u32::from)
            .filter(|r| (first..=last).contains(r))
        {
            first = r;
        }
        let last_file = self.dir.join("last_reserved_ip.0");
        let prev = fs::read_to_string(&last_file)
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|a| (first..=last).contains(a));
        let start = prev.map_or(first, |p| if p >= last { first } else { p + 1 });
        let count = last - first + 1;
        for k in 0..count {
            let a = first + (start - first + k) % count;
            let ip = Ipv4Addr::from(a);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.dir.join(ip.to_string()))
            {
                Ok(mut f) => {
                    f.write_all(format!("{id}\r\n{ifname}").as_bytes())
                        .map_err(|e| io_err("cannot record the allocation", e))?;
                    fs::write(&last_file, ip.to_string())
                        .map_err(|e| io_err("cannot record the last address", e))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("cannot record the allocation", e)),
            }
        }
        Err(CniError::new(
            code::TRY_AGAIN,
            format!("no free address in {}/{len}", Ipv4Addr::from(base)),
        ))
    }

    /// Frees (id, ifname)'s address, if it has one.
    pub fn release(&mut self, id: &str, ifname: &str) -> Option<Ipv4Addr> {
        let ip = self.find(id, ifname)?;
        let _ = fs::remove_file(self.dir.join(ip.to_string()));
        Some(ip)
    }
}

/// Runs the IPAM plugin `kind` from CNI_PATH with this invocation's environment and
/// the configuration on stdin, as the spec's delegation says; its result (ADD) or
/// nothing. Its error is returned as it gave it.
pub fn delegate(kind: &str, stdin: &[u8]) -> Result<Option<CniResult>, CniError> {
    let path = std::env::var("CNI_PATH").unwrap_or_default();
    let bin = path
        .split(':')
        .map(|d| Path::new(d).join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("IPAM plugin {kind:?} is not in CNI_PATH ({path})"),
            )
        })?;
    let mut child = Command::new(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| io_err(&format!("cannot run {}", bin.display()), e))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin)
            .map_err(|e| io_err("cannot feed the IPAM plugin", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| io_err("the IPAM plugin did not finish", e))?;
    if !out.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        return Err(CniError::new(
            u32::try_from(v["code"].as_u64().unwrap_or(u64::from(code::IO))).unwrap_or(code::IO),
            format!(
                "IPAM plugin {kind}: {}",
                v["msg"].as_str().unwrap_or("failed")
            ),
        )
        .with_details(v["details"].as_str().unwrap_or("").to_string()));
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&out.stdout).map(Some).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("IPAM plugin {kind} answered no result"),
        )
        .with_details(e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("podpath-cni-ipam-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn addresses_skip_the_gateway_stick_to_their_owner_and_are_not_reused_at_once() {
        let d = tmp("a");
        let net = parse_cidr("10.244.0.0/29").unwrap();
        let mut s = Store::open(&d).unwrap();
        let a = s.allocate(net, None, "c1", "eth0").unwrap();
        assert_eq!(
            a,
            Ipv4Addr::new(10, 244, 0, 2),
            "the first after the gateway"
        );
        assert_eq!(
            s.allocate(net, None, "c1", "eth0").unwrap(),
            a,
            "ADD again: the same"
        );
        let b = s.allocate(net, None, "c2", "eth0").unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 244, 0, 3));
        assert_eq!(s.release("c1", "eth0"), Some(a));
        assert_eq!(s.release("c1", "eth0"), None, "DEL twice");
        let c = s.allocate(net, None, "c3", "eth0").unwrap();
        assert_eq!(c, Ipv4Addr::new(10, 244, 0, 4), "not .2 again at once");
        for id in ["c4", "c5"] {
            s.allocate(net, None, id, "eth0").unwrap();
        }
        // .2 .. .6 are the usable ones (.7 is broadcast): .2 came free.
        assert_eq!(s.allocate(net, None, "c6", "eth0").unwrap(), a);
        assert_eq!(
            s.allocate(net, None, "c7", "eth0").unwrap_err().code,
            code::TRY_AGAIN
        );
        assert_eq!(s.all().len(), 5);
        // rangeStart: nothing below it is given out.
        let from = s
            .allocate(
                parse_cidr("10.244.1.0/24").unwrap(),
                Some(Ipv4Addr::new(10, 244, 1, 100)),
                "r1",
                "eth0",
            )
            .unwrap();
        assert_eq!(from, Ipv4Addr::new(10, 244, 1, 100));
        drop(s);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        // Rounds of eight threads released at once, as a runtime's parallel ADDs.
        let d = tmp("b");
        let net = parse_cidr("10.244.0.0/22").unwrap();
        let mut all = Vec::new();
        for round in 0..25 {
            let go = std::sync::Arc::new(std::sync::Barrier::new(8));
            let hs: Vec<_> = (0..8)
                .map(|t| {
                    let (d, go) = (d.clone(), go.clone());
                    std::thread::spawn(move || {
                        go.wait();
                        Store::open(&d)
                            .unwrap()
                            .allocate(net, None, &format!("c{round}-{t}"), "eth0")
                            .unwrap()
                    })
                })
                .collect();
            all.extend(hs.into_iter().map(|h| h.join().unwrap()));
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "{} addresses given twice", n - all.len());
        let _ = fs::remove_dir_all(&d);
    }
}

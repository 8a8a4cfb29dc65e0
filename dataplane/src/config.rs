//! The dataplane's configuration file (TOML), its validation, and the EAL arguments
//! it implies. A bad value is refused with a message that names it.
use std::path::{Path, PathBuf};

use podpath_proto::{NodeSpec, PortSpec, RemoteSpec};
use serde::Deserialize;

use crate::pipeline::ConntrackConfig;
use crate::worker::IdleConfig;

/// The common pool's buffers: room for a 2 048-byte frame behind DPDK's headroom.
pub const MBUF_HEADROOM: u32 = 128;
pub const MBUF_DATA_ROOM: u16 = 2048 + 128;
/// Buffers of the af_packet (large frame) pool: bursts in flight, tx queues, held
/// and handed-off packets; each is copied out by the PMD at transmit.
pub const JUMBO_MBUFS: u32 = 2047;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path}: {err}")]
    Parse { path: String, err: toml::de::Error },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Hugepages {
    /// Use hugepages when some are free, else fall back to `--no-huge` (logged).
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EalConfig {
    /// Cores, e.g. "0,1" or "0-3": the first runs the control thread, each other one a
    /// worker. EAL's `lcore@cpu` form ("0@0,1@1,2@1") maps lcores to CPUs, so several
    /// workers can share a CPU (with idle back-off, as in the lab). "auto": the CPUs
    /// the process may run on (a pod's cores under the kubelet's static CPU manager).
    pub lcores: String,
    /// Keeps several DPDK processes on one machine apart (hugepage files, runtime dir).
    pub file_prefix: String,
    /// Memory for DPDK, in MiB.
    pub memory_mb: u32,
    pub hugepages: Hugepages,
    /// Scan the PCI bus (off when only virtual devices are used).
    pub pci: bool,
    /// Further EAL arguments, passed as they are.
    pub extra_args: Vec<String>,
}

impl Default for EalConfig {
    fn default() -> Self {
        EalConfig {
            lcores: "0,1".into(),
            file_prefix: "podpath".into(),
            memory_mb: 256,
            hugepages: Hugepages::Auto,
            pci: true,
            extra_args: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// The control socket.
    pub socket: PathBuf,
    /// Group that may use the socket (mode 0660); none keeps root's group.
    pub socket_group: Option<String>,
    /// Where the connection tables live (a file per worker; on tmpfs they outlive
    /// the process, so a restart resumes every tracked connection). Empty: in the
    /// process's memory, lost with it.
    pub state_dir: PathBuf,
    /// Packet buffers in the pool (2^n - 1 is most efficient).
    pub mbufs: u32,
    pub mbuf_cache: u32,
    pub rx_desc: u16,
    pub tx_desc: u16,
    /// Microseconds a partial transmit burst may wait for more packets (0: sent at the
    /// end of every poll). For devices whose transmit is a syscall (af_packet, tap).
    pub tx_drain_us: u32,
    /// The largest frame an af_packet port takes whole, in bytes. The kernel
    /// reassembles fragments before an af_packet socket sees them, so this bounds
    /// the datagrams such a port can carry; larger ones arrive cut short and are
    /// dropped (`ip4-truncated`). Other devices take their MTU plus headers.
    pub max_frame: u32,
}

/// `dataplane.max_frame` by default: jumbo frames, and reassembled datagrams of up
/// to 9 KiB.
pub const DEFAULT_MAX_FRAME: u32 = 9216;

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            socket: PathBuf::from("/run/podpath/dataplane.sock"),
            socket_group: None,
            state_dir: PathBuf::from("/run/podpath/state"),
            mbufs: 8191,
            mbuf_cache: 256,
            rx_desc: 1024,
            tx_desc: 1024,
            tx_drain_us: 0,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// Seconds a learned MAC lives without being seen.
    pub ageing_s: u32,
    /// MAC entries per worker.
    pub max_macs: usize,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            ageing_s: 300,
            max_macs: 8192,
        }
    }
}

/// The SNAT port range (`[nat]`), split evenly between the workers.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatConfig {
    pub port_min: u16,
    pub port_max: u16,
}

impl Default for NatConfig {
    /// Linux's default ephemeral range.
    fn default() -> Self {
        NatConfig {
            port_min: 32768,
            port_max: 60999,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub eal: EalConfig,
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    #[serde(default)]
    pub idle: IdleConfig,
    #[serde(default)]
    pub bridge: BridgeConfig,
    #[serde(default, rename = "port")]
    pub ports: Vec<PortSpec>,
    /// This node's L3 identity (usually set by the control service instead).
    #[serde(default)]
    pub node: Option<NodeSpec>,
    #[serde(default, rename = "remote")]
    pub remotes: Vec<RemoteSpec>,
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    #[serde(default)]
    pub nat: NatConfig,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.display().to_string(),
            err,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut c: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: origin.into(),
            err,
        })?;
        if c.eal.lcores == "auto" {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            c.eal.lcores = allowed_cpus(&status)
                .ok_or_else(|| invalid("eal.lcores", "\"auto\": cannot read Cpus_allowed_list"))?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks what can be checked before starting DPDK.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (lcores, cores) =
            parse_lcores(&self.eal.lcores).map_err(|m| invalid("eal.lcores", m))?;
        if lcores.len() < 2 {
            return Err(invalid(
                "eal.lcores",
                format!(
                    "{:?} names {} core(s); need one for control and at least one worker",
                    self.eal.lcores,
                    lcores.len()
                ),
            ));
        }
        let online = online_cpus();
        if let Some(bad) = cores.iter().find(|c| !online.contains(c)) {
            return Err(invalid(
                "eal.lcores",
                format!(
                    "core {bad} does not exist or is offline (online cores: {})",
                    format_core_list(&online)
                ),
            ));
        }
        if self.eal.file_prefix.is_empty() || self.eal.file_prefix.contains('/') {
            return Err(invalid(
                "eal.file_prefix",
                "must be a non-empty name without '/'",
            ));
        }
        if self.eal.memory_mb < 32 {
            return Err(invalid(
                "eal.memory_mb",
                format!(
                    "{} MiB is too little for DPDK (at least 32)",
                    self.eal.memory_mb
                ),
            ));
        }
        if self.dataplane.tx_drain_us > 10_000 {
            return Err(invalid(
                "dataplane.tx_drain_us",
                "at most 10000 (10 ms): it is added to every packet's latency",
            ));
        }
        let limit = crate::dpdk::af_packet::MAX_FRAME_LIMIT;
        if !(1514..=limit).contains(&self.dataplane.max_frame) {
            return Err(invalid(
                "dataplane.max_frame",
                format!("must be 1514..={limit} bytes (a standard frame up to what a 16-bit buffer holds)"),
            ));
        }
        if self.dataplane.mbufs < 512 {
            return Err(invalid(
                "dataplane.mbufs",
                "at least 512 packet buffers are needed",
            ));
        }
        self.check_sizes(mem_total_mib())?;
        let workers = u32::try_from(self.workers()).unwrap_or(1);
        if self.nat.port_min < 1024
            || u32::from(self.nat.port_max) < u32::from(self.nat.port_min) + 16 * workers
        {
            return Err(invalid(
                "nat",
                format!(
                    "port_min..port_max ({}..{}) must start at 1024 or above and give each of the {workers} worker(s) at least 16 ports",
                    self.nat.port_min, self.nat.port_max
                ),
            ));
        }
        if self.conntrack.capacity < 16 {
            return Err(invalid(
                "conntrack.capacity",
                "at least 16 connections per worker",
            ));
        }
        if self
            .conntrack
            .max_capacity
            .is_some_and(|m| m < self.conntrack.capacity)
        {
            return Err(invalid(
                "conntrack.max_capacity",
                "must be at least conntrack.capacity (it is the room capacity may grow into)",
            ));
        }
        if self.bridge.max_macs == 0 || self.bridge.ageing_s == 0 {
            return Err(invalid("bridge", "max_macs and ageing_s must be positive"));
        }
        if self.idle.enabled && self.idle.max_sleep_us < self.idle.min_sleep_us {
            return Err(invalid(
                "idle.max_sleep_us",
                "must be at least idle.min_sleep_us",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            validate_port(p).map_err(|m| invalid(&format!("port[{i}]"), m))?;
            if !names.insert(&p.name) {
                return Err(invalid(
                    &format!("port[{i}]"),
                    format!("port name {:?} is used twice", p.name),
                ));
            }
        }
        Ok(())
    }

    pub fn workers(&self) -> usize {
        parse_lcores(&self.eal.lcores).map_or(1, |(l, _)| l.len().saturating_sub(1))
    }

    /// What DPDK's memory must hold at least, in bytes: the packet buffers, the
    /// af_packet ports' jumbo pool, and EAL's own memzones and rings.
    pub fn dpdk_memory_needed(&self) -> u64 {
        let per_mbuf = u64::from(MBUF_DATA_ROOM) + MBUF_OVERHEAD;
        u64::from(self.dataplane.mbufs) * per_mbuf
            + u64::from(JUMBO_MBUFS) * (u64::from(self.dataplane.max_frame) + 512)
            + (16 << 20)
    }

    /// Sizes against what the machine (`mem_mib`, its RAM; 0: unknown) and EAL's
    /// memory can give: a size that passes here cannot crash EAL or abort an
    /// allocation at start. Each error names its field and the largest value that fits.
    pub fn check_sizes(&self, mem_mib: u64) -> Result<(), ConfigError> {
        const MIB: u64 = 1 << 20;
        let eal = u64::from(self.eal.memory_mb) * MIB;
        if mem_mib > 0 && u64::from(self.eal.memory_mb) > mem_mib {
            return Err(invalid(
                "eal.memory_mb",
                format!(
                    "{} MiB is more than this machine's {mem_mib} MiB of RAM",
                    self.eal.memory_mb
                ),
            ));
        }
        let need = self.dpdk_memory_needed();
        if need > eal {
            let per_mbuf = u64::from(MBUF_DATA_ROOM) + MBUF_OVERHEAD;
            let fit =
                eal.saturating_sub(need - u64::from(self.dataplane.mbufs) * per_mbuf) / per_mbuf;
            return Err(invalid(
                "dataplane.mbufs",
                format!(
                    "{} buffers need about {} MiB of DPDK memory with the jumbo pool; eal.memory_mb gives {} MiB, room for about {fit} buffers: lower dataplane.mbufs or raise eal.memory_mb",
                    self.dataplane.mbufs,
                    need.div_ceil(MIB),
                    self.eal.memory_mb
                ),
            ));
        }
        let workers = self.workers().max(1) as u64;
        // What each worker's table takes once it has filled its reservation.
        let table =
            crate::nat::conntrack::Conntrack::reservation_bytes(self.conntrack.reserved()) as u64;
        let per_entry = table
            .div_ceil(self.conntrack.reserved().max(1) as u64)
            .max(1);
        let reserved = table.saturating_mul(workers);
        if mem_mib > 0 && reserved > mem_mib * MIB {
            let field = if self.conntrack.max_capacity.is_some() {
                "conntrack.max_capacity"
            } else {
                "conntrack.capacity"
            };
            let fit = mem_mib * MIB / per_entry / workers;
            return Err(invalid(
                field,
                format!(
                    "{} connections per worker (x{workers} workers, about {per_entry} bytes each) reserve {} MiB; this machine has {mem_mib} MiB: at most about {} connections per worker{}",
                    self.conntrack.reserved(),
                    reserved.div_ceil(MIB),
                    if self.conntrack.max_capacity.is_some() { fit } else { fit / 4 },
                    if self.conntrack.max_capacity.is_some() { "" } else { " (4x of it is reserved to grow into)" }
                ),
            ));
        }
        Ok(())
    }

    /// EAL arguments. Hugepages: used when free ones exist (auto), else `--no-huge`.
    pub fn eal_args(&self) -> (Vec<String>, bool) {
        let (lcores, _) = parse_lcores(&self.eal.lcores).unwrap_or_default();
        let mut a = if self.eal.lcores.contains('@') {
            vec![format!("--lcores={}", self.eal.lcores)]
        } else {
            vec!["-l".to_string(), self.eal.lcores.clone()]
        };
        // EAL's default main lcore is the lowest; ours is the first listed.
        if let Some(main) = lcores.first() {
            a.push(format!("--main-lcore={main}"));
        }
        a.extend([
            format!("--file-prefix={}", self.eal.file_prefix),
            "-m".into(),
            self.eal.memory_mb.to_string(),
        ]);
        let huge = match self.eal.hugepages {
            Hugepages::On => true,
            Hugepages::Off => false,
            // Free pages are not enough: a container must also have a hugetlbfs
            // mounted that it may write (else EAL fails to map them).
            Hugepages::Auto => free_hugepages() > 0 && crate::preflight::hugetlbfs().is_ok(),
        };
        if huge {
            // Unlink hugepage files once mapped: the pages go back to the system when
            // the process exits, also after kill -9 (no secondary processes use them).
            a.push("--huge-unlink".into());
        } else {
            a.push("--no-huge".into());
        }
        if !self.eal.pci {
            a.push("--no-pci".into());
        }
        a.extend(self.eal.extra_args.iter().cloned());
        (a, huge)
    }
}

/// Checks a port request (shared with the control service).
pub fn validate_port(p: &PortSpec) -> Result<(), String> {
    podpath_proto::validate::port_spec(p)
}

/// Parses "0,2-3" into [0, 2, 3].
/// `lcores`: a core list ("0,1", "0-3"), or EAL's `lcore@cpu` pairs ("0@0,1@1,2@1").
/// Returns the lcore ids in order and the CPUs they run on.
/// `eal.lcores = "auto"`: the CPUs this process may run on (`Cpus_allowed_list` of
/// /proc/self/status), as EAL's core list. In a Guaranteed pod under the kubelet's
/// static CPU manager these are the cores reserved for it, which no configuration
/// written in advance can know.
pub fn allowed_cpus(status: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

pub fn parse_lcores(s: &str) -> Result<(Vec<u32>, Vec<u32>), String> {
    if !s.contains('@') {
        let c = parse_core_list(s)?;
        return Ok((c.clone(), c));
    }
    let bad = || format!("{s:?} is not a list of lcore@cpu pairs (want e.g. \"0@0,1@1,2@1\")");
    let (mut lcores, mut cpus) = (Vec::new(), Vec::new());
    for part in s.split(',').map(str::trim) {
        let (l, c) = part.split_once('@').ok_or_else(bad)?;
        let (l, c) = (
            l.parse::<u32>().map_err(|_| bad())?,
            c.parse::<u32>().map_err(|_| bad())?,
        );
        if l >= 128 || c >= 128 {
            return Err(bad());
        }
        if lcores.contains(&l) {
            return Err(format!("lcore {l} appears twice in {s:?}"));
        }
        lcores.push(l);
        if !cpus.contains(&c) {
            cpus.push(c);
        }
    }
    Ok((lcores, cpus))
}

pub fn parse_core_list(s: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let bad = || format!("{s:?} is not a core list (want e.g. \"0,1\" or \"0-3\")");
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (
                a.parse::<u32>().map_err(|_| bad())?,
                b.parse::<u32>().map_err(|_| bad())?,
            ),
            None => {
                let v = part.parse::<u32>().map_err(|_| bad())?;
                (v, v)
            }
        };
        if lo > hi || hi >= 128 {
            return Err(bad());
        }
        for c in lo..=hi {
            if out.contains(&c) {
                return Err(format!("core {c} appears twice in {s:?}"));
            }
            out.push(c);
        }
    }
    Ok(out)
}

fn format_core_list(c: &[u32]) -> String {
    c.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Online CPUs from /sys (falls back to 0..available_parallelism).
pub fn online_cpus() -> Vec<u32> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_core_list(s.trim()).ok())
        .unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (0..u32::try_from(n).unwrap_or(1)).collect()
        })
}

/// What a DPDK mempool spends on one buffer beyond its data room: the rte_mbuf
/// header (128 bytes), its private area (the packet's metadata,
/// `dpdk::mbuf::PRIV_SIZE`, 64), the mempool's object header and cache-line padding.
const MBUF_OVERHEAD: u64 = 320;

/// This machine's RAM in MiB (`MemTotal`), 0 when unknown.
pub fn mem_total_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

pub fn free_hugepages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("HugePages_Free:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_beyond_the_machine_or_dpdk_memory_are_refused_by_name() {
        let base = "[eal]\nlcores = \"0,1\"\npci = false\nmemory_mb = 256\n[dataplane]\nsocket = \"/tmp/x.sock\"\n";
        let parse = |extra: &str| -> Config { toml::from_str(&format!("{base}{extra}")).unwrap() };
        // The defaults fit a 1 GiB machine.
        parse("").check_sizes(1024).unwrap();
        // 2^31 buffers (once a segfault inside EAL): named, with what fits.
        let e = parse("mbufs = 2147483648\n")
            .check_sizes(1024)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dataplane.mbufs") && e.contains("room for about"),
            "{e}"
        );
        let e = parse("mbufs = 200000\n")
            .check_sizes(1024)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dataplane.mbufs"), "{e}");
        // A connection table larger than the machine (once an abort on allocation).
        let e = parse("[conntrack]\ncapacity = 4000000000\n")
            .check_sizes(1024)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("conntrack.capacity") && e.contains("this machine has 1024 MiB"),
            "{e}"
        );
        let e = parse("[conntrack]\ncapacity = 65536\nmax_capacity = 2000000000\n")
            .check_sizes(1024)
            .unwrap_err()
            .to_string();
        assert!(e.contains("conntrack.max_capacity"), "{e}");
        let e = parse("").check_sizes(128).unwrap_err().to_string();
        assert!(e.contains("eal.memory_mb") && e.contains("128 MiB"), "{e}");
        // Unknown RAM: only DPDK's memory bounds.
        parse("[conntrack]\ncapacity = 4000000000\n")
            .check_sizes(0)
            .unwrap();
    }

    #[test]
    fn auto_lcores_are_the_cpus_the_process_may_use() {
        let status = "Name:\tpodpath\nCpus_allowed:\t3c\nCpus_allowed_list:\t2-5\n";
        assert_eq!(allowed_cpus(status).as_deref(), Some("2-5"));
        assert_eq!(parse_lcores("2-5").unwrap().0, vec![2, 3, 4, 5]);
        assert_eq!(allowed_cpus("Name:\tx\n"), None);
        let c = Config::parse(
            "[eal]\nlcores = \"auto\"\npci = false\n[dataplane]\nsocket = \"/tmp/x.sock\"\n",
            "t",
        );
        // This machine has at least two CPUs (the lab needs them).
        let c = c.expect("auto lcores");
        assert_ne!(c.eal.lcores, "auto");
        assert!(
            parse_lcores(&c.eal.lcores).unwrap().0.len() >= 2,
            "{}",
            c.eal.lcores
        );
    }

    #[test]
    fn core_lists() {
        assert_eq!(parse_core_list("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_core_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_core_list("1,1").is_err());
        assert!(parse_core_list("x").is_err());
        assert!(parse_core_list("3-1").is_err());
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e = Config::parse("[eal]\nlcores = \"0,999\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("eal.lcores") && e.contains("999"), "{e}");
        let e = Config::parse("[eal]\nlcores = \"0\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("need one for control"), "{e}");
        let e = Config::parse("[eal]\nbogus = 1\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::parse("[[port]]\nname = \"a b\"\ndevice = \"net_tap0\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("port[0]"), "{e}");
        let e = Config::parse("[dataplane]\ntx_drain_us = 20000\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dataplane.tx_drain_us"), "{e}");
        let ok = Config::parse(
            "[[port]]\nname = \"pod-a\"\ndevice = \"net_tap0,iface=x\"\nbridge = 1\n",
            "t",
        )
        .unwrap();
        assert_eq!(ok.ports[0].bridge, Some(1));
        assert_eq!(ok.workers(), 1);
        // lcore@cpu: three lcores on two CPUs, two workers; the first is the main one.
        let shared = Config::parse("[eal]\nlcores = \"0@0,1@1,2@1\"\n", "t").unwrap();
        assert_eq!(shared.workers(), 2);
        let (args, _) = shared.eal_args();
        assert!(
            args.contains(&"--lcores=0@0,1@1,2@1".to_string()),
            "{args:?}"
        );
        assert!(args.contains(&"--main-lcore=0".to_string()), "{args:?}");
        let swapped = Config::parse("[eal]\nlcores = \"1,0\"\n", "t").unwrap();
        assert!(swapped.eal_args().0.contains(&"--main-lcore=1".to_string()));
        for bad in ["0@0,0@1", "0@0,1@x", "0@0,1@999"] {
            let e = Config::parse(&format!("[eal]\nlcores = \"{bad}\"\n"), "t")
                .unwrap_err()
                .to_string();
            assert!(e.contains("eal.lcores"), "{bad}: {e}");
        }
    }
}

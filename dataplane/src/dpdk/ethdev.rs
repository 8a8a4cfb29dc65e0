//! Ethernet ports: hot-plug of (virtual) devices, queue setup, start/stop, MAC, link,
//! xstats, and the burst I/O the workers call.
use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::Arc;

use dpdk_sys::rte_mbuf;

use super::{strerror, Mbuf, Mempool};

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("device arguments {0:?} contain a NUL byte")]
    BadDevargs(String),
    #[error("cannot probe device {devargs:?}: {reason} (is the driver name right, e.g. net_tap0,iface=... or net_af_packet0,iface=...?)")]
    Probe { devargs: String, reason: String },
    #[error("device {name:?} was probed but has no ethdev port")]
    NoPort { name: String },
    #[error("port {port} ({name}): {step} failed: {reason}")]
    Setup {
        port: u16,
        name: String,
        step: &'static str,
        reason: String,
    },
    #[error("port {port} ({name}): {what} {asked} exceeds the device's maximum {max}")]
    TooMany {
        port: u16,
        name: String,
        what: &'static str,
        asked: u16,
        max: u16,
    },
    #[error("port {port} ({name}) is still polled: {tokens} queue token(s) are out (a worker has not let go of it)")]
    InUse {
        port: u16,
        name: String,
        tokens: usize,
    },
}

/// RTE_ETH_RX_OFFLOAD_IPV4_CKSUM (RTE_BIT64(1); bindgen does not expand the macro).
const RX_OFFLOAD_IPV4_CKSUM: u64 = 1 << 1;

/// How to set a port up.
#[derive(Debug, Clone)]
pub struct PortSetup {
    pub rx_queues: u16,
    pub tx_queues: u16,
    pub rx_desc: u16,
    pub tx_desc: u16,
    pub mtu: Option<u16>,
}

/// Link state as the PMD reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub up: bool,
    pub speed_mbps: u32,
}

/// A probed DPDK ethdev port. Removing it (or dropping it) stops and unplugs it.
pub struct EthPort {
    id: u16,
    dev_name: String,
    started: bool,
    removed: bool,
    /// Queue counts from `configure`.
    rx_queues: u16,
    tx_queues: u16,
    /// Shared with every queue token made since `start`: the port is not stopped
    /// while one is out.
    lease: Option<Arc<()>>,
}

/// The right to receive on one rx queue of a started port, made by
/// [`EthPort::rx_queue`]: DPDK's burst calls check nothing, so the token carries
/// what they need. The port stays started while a token lives (stop refuses), the
/// queue exists (checked when made), and `&mut self`, no `Clone` and no `Sync` keep
/// one thread on it; the control thread hands each queue's token to one worker.
pub struct RxQueue {
    port: u16,
    queue: u16,
    _lease: Arc<()>,
    _not_sync: PhantomData<Cell<()>>,
}

/// The right to transmit on one tx queue of a started port ([`EthPort::tx_queue`]),
/// as [`RxQueue`] is for receiving.
pub struct TxQueue {
    port: u16,
    queue: u16,
    _lease: Arc<()>,
    _not_sync: PhantomData<Cell<()>>,
}

impl RxQueue {
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn queue(&self) -> u16 {
        self.queue
    }
    /// Receives up to `max` packets into the spare capacity of `out`.
    #[inline(always)]
    pub fn burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        // SAFETY: the token's contract (above): a started port, an existing queue,
        // one poller.
        unsafe { rx_burst(self.port, self.queue, out, max) }
    }
}

impl TxQueue {
    pub fn port(&self) -> u16 {
        self.port
    }
    /// Transmits from the front of `bufs`; those the device took leave the vector.
    #[inline(always)]
    pub fn burst(&mut self, bufs: &mut Vec<Mbuf>) -> usize {
        // SAFETY: as for RxQueue::burst, for this tx queue.
        unsafe { tx_burst(self.port, self.queue, bufs) }
    }
}

// RSS hash types (RTE_ETH_RSS_*): function-like macros bindgen cannot evaluate.
const RSS_IPV4: u64 = 1 << 2;
const RSS_FRAG_IPV4: u64 = 1 << 3;
const RSS_NONFRAG_IPV4_TCP: u64 = 1 << 4;
const RSS_NONFRAG_IPV4_UDP: u64 = 1 << 5;

fn cstr_to_string(bytes: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = bytes
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c.to_ne_bytes()[0])
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl EthPort {
    /// Plugs in a device described by DPDK device arguments, e.g.
    /// `net_tap3,iface=eth0` or `net_af_packet1,iface=veth-a` (hot-plug: works while
    /// the workers run). The device name is the part before the first comma.
    pub fn probe(devargs: &str) -> Result<EthPort, PortError> {
        if !super::eal::is_up() {
            return Err(PortError::Probe {
                devargs: devargs.into(),
                reason: "the EAL is not running".into(),
            });
        }
        let c = CString::new(devargs).map_err(|_| PortError::BadDevargs(devargs.into()))?;
        // SAFETY: c is a valid string; rte_dev_probe is callable after EAL init from a
        // control thread (it takes the EAL's hot-plug lock).
        let rc = unsafe { dpdk_sys::rte_dev_probe(c.as_ptr()) };
        if rc < 0 {
            return Err(PortError::Probe {
                devargs: devargs.into(),
                reason: strerror(-rc),
            });
        }
        let dev_name = devargs.split(',').next().unwrap_or(devargs).to_owned();
        let cname = CString::new(dev_name.clone()).expect("checked above");
        let mut id = 0u16;
        // SAFETY: cname is valid; id is a valid out pointer.
        let rc = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
        if rc != 0 {
            return Err(PortError::NoPort { name: dev_name });
        }
        Ok(EthPort {
            id,
            dev_name,
            started: false,
            removed: false,
            rx_queues: 0,
            tx_queues: 0,
            lease: None,
        })
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn device_name(&self) -> &str {
        &self.dev_name
    }

    fn setup_err(&self, step: &'static str, rc: i32) -> PortError {
        PortError::Setup {
            port: self.id,
            name: self.dev_name.clone(),
            step,
            reason: strerror(rc.abs()),
        }
    }

    fn dev_info(&self) -> Result<dpdk_sys::rte_eth_dev_info, PortError> {
        let mut info = MaybeUninit::<dpdk_sys::rte_eth_dev_info>::zeroed();
        // SAFETY: the port id is valid; info is a writable rte_eth_dev_info.
        let rc = unsafe { dpdk_sys::rte_eth_dev_info_get(self.id, info.as_mut_ptr()) };
        if rc != 0 {
            return Err(self.setup_err("rte_eth_dev_info_get", rc));
        }
        // SAFETY: a zeroed rte_eth_dev_info is valid and the call filled it in.
        Ok(unsafe { info.assume_init() })
    }

    /// The PMD's driver name (e.g. "net_tap").
    pub fn driver(&self) -> String {
        match self.dev_info() {
            // SAFETY: driver_name is a static NUL-terminated string owned by the PMD.
            Ok(i) if !i.driver_name.is_null() => unsafe { CStr::from_ptr(i.driver_name) }
                .to_string_lossy()
                .into_owned(),
            _ => String::from("?"),
        }
    }

    /// Configures queues (RSS over IPv4/TCP/UDP when several rx queues and the device
    /// can hash) and the MTU, and enables promiscuous mode (a bridge port must see
    /// frames for every MAC behind it).
    pub fn configure(&mut self, s: &PortSetup, pool: &Mempool) -> Result<(), PortError> {
        let info = self.dev_info()?;
        for (what, asked, max) in [
            ("rx queues", s.rx_queues, info.max_rx_queues),
            ("tx queues", s.tx_queues, info.max_tx_queues),
        ] {
            if asked > max {
                return Err(PortError::TooMany {
                    port: self.id,
                    name: self.dev_name.clone(),
                    what,
                    asked,
                    max,
                });
            }
        }
        // SAFETY: rte_eth_conf is plain data; all-zero is DPDK's documented default.
        let mut conf: dpdk_sys::rte_eth_conf = unsafe { std::mem::zeroed() };
        let rss = (RSS_IPV4 | RSS_FRAG_IPV4 | RSS_NONFRAG_IPV4_TCP | RSS_NONFRAG_IPV4_UDP)
            & info.flow_type_rss_offloads;
        // Let the NIC check IPv4 header checksums where it can (eth-input then trusts
        // the mbuf's flag instead of summing every header in software).
        conf.rxmode.offloads = RX_OFFLOAD_IPV4_CKSUM & info.rx_offload_capa;
        if s.rx_queues > 1 && rss != 0 {
            conf.rxmode.mq_mode = dpdk_sys::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = rss;
        }
        // SAFETY: the port is probed and stopped; conf is a valid configuration.
        let rc =
            unsafe { dpdk_sys::rte_eth_dev_configure(self.id, s.rx_queues, s.tx_queues, &conf) };
        if rc != 0 {
            return Err(self.setup_err("rte_eth_dev_configure", rc));
        }
        self.rx_queues = s.rx_queues;
        self.tx_queues = s.tx_queues;
        let (mut nrx, mut ntx) = (s.rx_desc, s.tx_desc);
        // SAFETY: valid port and out pointers.
        let rc = unsafe { dpdk_sys::rte_eth_dev_adjust_nb_rx_tx_desc(self.id, &mut nrx, &mut ntx) };
        if rc != 0 {
            return Err(self.setup_err("rte_eth_dev_adjust_nb_rx_tx_desc", rc));
        }
        // SAFETY: valid port.
        let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(self.id) };
        let socket = u32::try_from(socket).unwrap_or(u32::MAX); // SOCKET_ID_ANY
        for q in 0..s.rx_queues {
            // SAFETY: configured port, queue index below the configured count, a valid
            // pool that outlives the port; NULL rxconf selects the PMD's defaults.
            let rc = unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(
                    self.id,
                    q,
                    nrx,
                    socket,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            };
            if rc != 0 {
                return Err(self.setup_err("rte_eth_rx_queue_setup", rc));
            }
        }
        for q in 0..s.tx_queues {
            // SAFETY: as above for tx.
            let rc = unsafe {
                dpdk_sys::rte_eth_tx_queue_setup(self.id, q, ntx, socket, std::ptr::null())
            };
            if rc != 0 {
                return Err(self.setup_err("rte_eth_tx_queue_setup", rc));
            }
        }
        if let Some(mtu) = s.mtu {
            // SAFETY: valid port.
            let rc = unsafe { dpdk_sys::rte_eth_dev_set_mtu(self.id, mtu) };
            if rc != 0 && rc != -libc_enotsup() {
                return Err(self.setup_err("rte_eth_dev_set_mtu", rc));
            }
        }
        // Not every virtual PMD has a promiscuous switch; those pass everything anyway.
        // SAFETY: valid port.
        let _ = unsafe { dpdk_sys::rte_eth_promiscuous_enable(self.id) };
        Ok(())
    }

    pub fn start(&mut self) -> Result<(), PortError> {
        // SAFETY: the port is configured.
        let rc = unsafe { dpdk_sys::rte_eth_dev_start(self.id) };
        if rc != 0 {
            return Err(self.setup_err("rte_eth_dev_start", rc));
        }
        self.started = true;
        self.lease = Some(Arc::new(()));
        Ok(())
    }

    /// A token for rx queue `q`, while the port is started.
    pub fn rx_queue(&self, q: u16) -> Option<RxQueue> {
        let lease = self.lease.as_ref().filter(|_| q < self.rx_queues)?;
        Some(RxQueue {
            port: self.id,
            queue: q,
            _lease: Arc::clone(lease),
            _not_sync: PhantomData,
        })
    }

    /// A token for tx queue `q`, while the port is started.
    pub fn tx_queue(&self, q: u16) -> Option<TxQueue> {
        let lease = self.lease.as_ref().filter(|_| q < self.tx_queues)?;
        Some(TxQueue {
            port: self.id,
            queue: q,
            _lease: Arc::clone(lease),
            _not_sync: PhantomData,
        })
    }

    /// Queue tokens still out (held by workers, or not yet dropped).
    pub fn tokens_out(&self) -> usize {
        self.lease.as_ref().map_or(0, |l| Arc::strong_count(l) - 1)
    }

    /// Stops the port; refused while a queue token is out (someone may poll it).
    pub fn stop(&mut self) -> Result<(), PortError> {
        if self.started {
            let tokens = self.tokens_out();
            if tokens > 0 {
                return Err(PortError::InUse {
                    port: self.id,
                    name: self.dev_name.clone(),
                    tokens,
                });
            }
            // SAFETY: the port is started and no token for its queues is left, so
            // nobody can be polling it.
            unsafe { dpdk_sys::rte_eth_dev_stop(self.id) };
            self.started = false;
            self.lease = None;
        }
        Ok(())
    }

    pub fn mac(&self) -> [u8; 6] {
        let mut a = dpdk_sys::rte_ether_addr::default();
        // SAFETY: valid port and out pointer.
        unsafe { dpdk_sys::rte_eth_macaddr_get(self.id, &mut a) };
        a.addr_bytes
    }

    pub fn link(&self) -> Link {
        let mut l = dpdk_sys::rte_eth_link::default();
        // SAFETY: valid port and out pointer; the nowait variant never blocks.
        unsafe { dpdk_sys::rte_eth_link_get_nowait(self.id, &mut l) };
        Link {
            up: l.link_status() != 0,
            speed_mbps: l.link_speed,
        }
    }

    pub fn mtu(&self) -> u16 {
        let mut m = 0u16;
        // SAFETY: valid port and out pointer.
        unsafe { dpdk_sys::rte_eth_dev_get_mtu(self.id, &mut m) };
        m
    }

    /// The PMD's extended statistics, by name.
    pub fn xstats(&self) -> Vec<(String, u64)> {
        // SAFETY: a NULL array with size 0 asks for the count.
        let n = unsafe { dpdk_sys::rte_eth_xstats_get_names(self.id, std::ptr::null_mut(), 0) };
        let Ok(n) = usize::try_from(n) else {
            return Vec::new();
        };
        let mut names = vec![dpdk_sys::rte_eth_xstat_name::default(); n];
        let mut vals = vec![dpdk_sys::rte_eth_xstat::default(); n];
        let cap = u32::try_from(n).unwrap_or(0);
        // SAFETY: both arrays have n writable elements.
        let got_names =
            unsafe { dpdk_sys::rte_eth_xstats_get_names(self.id, names.as_mut_ptr(), cap) };
        // SAFETY: as above.
        let got_vals = unsafe { dpdk_sys::rte_eth_xstats_get(self.id, vals.as_mut_ptr(), cap) };
        if got_names < 0 || got_vals < 0 {
            return Vec::new();
        }
        vals.iter()
            .take(usize::try_from(got_vals).unwrap_or(0).min(n))
            .filter_map(|v| {
                let name = names.get(usize::try_from(v.id).ok()?)?;
                Some((cstr_to_string(&name.name), v.value))
            })
            .collect()
    }

    /// Stops, closes and unplugs the device, so the same name can be probed again.
    pub fn remove(mut self) -> Result<(), PortError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), PortError> {
        if self.removed {
            return Ok(());
        }
        // Still polled: left plugged rather than pulled from under a worker.
        self.stop()?;
        self.removed = true;
        // SAFETY: the port is stopped and no worker uses it.
        unsafe { dpdk_sys::rte_eth_dev_close(self.id) };
        let bus = CString::new("vdev").expect("no NUL");
        let name = CString::new(self.dev_name.clone()).expect("checked at probe");
        // SAFETY: valid strings; removes the device from its bus (a no-op error for a
        // device that is not a vdev, which we ignore).
        let rc = unsafe { dpdk_sys::rte_eal_hotplug_remove(bus.as_ptr(), name.as_ptr()) };
        if rc < 0 && rc != -libc_enoent() {
            return Err(self.setup_err("rte_eal_hotplug_remove", rc));
        }
        Ok(())
    }
}

impl Drop for EthPort {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

fn libc_enotsup() -> i32 {
    95
}
fn libc_enoent() -> i32 {
    2
}

/// Receives up to `max` packets from a queue into the spare capacity of `out`
/// (which must have room: the worker reserves it once). Returns how many arrived.
///
/// # Safety
/// DPDK's burst functions do not check their arguments: `port` must be started,
/// `queue` below its configured rx queue count, and no other thread may poll the
/// same queue at the same time.
#[inline(always)]
unsafe fn rx_burst(port: u16, queue: u16, out: &mut Vec<Mbuf>, max: usize) -> usize {
    let room = (out.capacity() - out.len()).min(max);
    let room16 = u16::try_from(room).unwrap_or(u16::MAX);
    let len = out.len();
    // SAFETY: port and queue are valid (the caller's contract). The spare capacity
    // holds `room` slots for *mut rte_mbuf (Mbuf is repr(transparent) over
    // NonNull<rte_mbuf>); the PMD writes n valid, owned mbuf pointers there, which
    // become the vector's new elements.
    unsafe {
        let dst = out.as_mut_ptr().add(len).cast::<*mut rte_mbuf>();
        let n = dpdk_sys::pp_eth_rx_burst(port, queue, dst, room16);
        out.set_len(len + usize::from(n));
        usize::from(n)
    }
}

/// Hands the packets of `bufs` to a tx queue; those the device took leave the vector,
/// the rest stay (owned by the caller, who frees and counts them).
///
/// # Safety
/// As for [`rx_burst`]: a started port, a configured tx queue, one thread per queue.
#[inline(always)]
unsafe fn tx_burst(port: u16, queue: u16, bufs: &mut Vec<Mbuf>) -> usize {
    let n = bufs.len();
    if n == 0 {
        return 0;
    }
    let n16 = u16::try_from(n).unwrap_or(u16::MAX);
    // SAFETY: port and queue are valid (the caller's contract). The vector holds n
    // owned mbufs laid out as *mut rte_mbuf. The PMD takes
    // ownership of the first `sent`; we move the unsent ones to the front and shorten
    // the vector so that the sent ones are never dropped (freed) by us.
    unsafe {
        let base = bufs.as_mut_ptr();
        let sent = usize::from(dpdk_sys::pp_eth_tx_burst(
            port,
            queue,
            base.cast::<*mut rte_mbuf>(),
            n16,
        ));
        if sent > 0 {
            std::ptr::copy(base.add(sent), base, n - sent);
            bufs.set_len(n - sent);
        }
        sent
    }
}

/// True when `id` names a port (used to validate requests).
pub fn port_is_valid(id: u16) -> bool {
    // SAFETY: a plain query.
    unsafe { dpdk_sys::rte_eth_dev_is_valid_port(id) != 0 }
}

/// A port that one thread owns outright and polls itself, for tools such as the
/// traffic generator (`bench`): queue 0 in each direction, no worker map. `&mut self`
/// on the burst calls and `!Sync` make "one poller per queue" hold by construction;
/// the port is started before it can be polled and stopped only by dropping it.
pub struct SoloPort {
    // The tokens first: fields drop in order, so they are gone when the port stops.
    rx: RxQueue,
    tx: TxQueue,
    port: EthPort,
}

impl SoloPort {
    /// Probes `devargs`, configures one rx and one tx queue from `pool` and starts it.
    pub fn open(devargs: &str, desc: u16, pool: &Mempool) -> Result<SoloPort, PortError> {
        let mut port = EthPort::probe(devargs)?;
        let setup = PortSetup {
            rx_queues: 1,
            tx_queues: 1,
            rx_desc: desc,
            tx_desc: desc,
            mtu: None,
        };
        port.configure(&setup, pool)?;
        port.start()?;
        match (port.rx_queue(0), port.tx_queue(0)) {
            (Some(rx), Some(tx)) => Ok(SoloPort { rx, tx, port }),
            _ => Err(port.setup_err("queue tokens", -22)),
        }
    }

    pub fn port(&self) -> &EthPort {
        &self.port
    }

    /// Receives up to `max` packets into the spare capacity of `out`.
    #[inline(always)]
    pub fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        self.rx.burst(out, max)
    }

    /// Transmits `bufs`; those the device took leave the vector.
    #[inline(always)]
    pub fn tx_burst(&mut self, bufs: &mut Vec<Mbuf>) -> usize {
        self.tx.burst(bufs)
    }
}

//! The packet pipeline: a fixed graph of stages over bursts, VPP-style.
//!
//! A burst (up to [`BURST`] packets from one rx queue) enters `eth-input`. Each stage
//! takes the indices of the packets queued for it and writes one [`Next`] per packet:
//! another stage, an output port, a flood over the bridge domain, or a drop with a
//! named [`DropReason`]. Each stage declares what it may decide (`registry.rs`);
//! [`Pipeline::run`] fans the packets out, checks (debug builds) that each decision
//! is declared, counts per stage and reason, traces, and queues output. A packet
//! re-entering an earlier stage (an ICMP error routed by `ip4-lookup`) takes another
//! pass, at most four; docs/architecture.md draws the graph.
//!
//! Names: the stage and drop-reason strings in [`registry`] are the ones counters,
//! traces and `podpathctl` show.
pub mod capture;
pub mod counters;
#[cfg(test)]
pub mod fixture;
pub mod frame;
pub mod handoff;
pub mod registry;
pub mod run;
pub mod stage;
pub mod trace;
pub mod tx;

pub use counters::{PortCounters, WorkerCounters};
pub use frame::{Frame, PortIo, RxChecksum};
pub use registry::{DropReason, StageId, DROP_REASONS, STAGES};
pub use run::{ConntrackConfig, Pipeline, PipelineConfig};
pub use stage::{NeighborUpdate, PeerUpdate};
pub use trace::{TraceDetail, TraceRecord, Tracer};

/// Packets per rx burst (DPDK's customary 32).
pub const BURST: usize = 32;
/// Port ids are below this (DPDK's RTE_MAX_ETHPORTS in Debian's build).
pub const MAX_PORTS: usize = 32;
/// How many packets ahead `eth-input` prefetches.
pub const PREFETCH_AHEAD: usize = 4;

/// What a stage decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Continue in another (later) stage.
    Stage(StageId),
    /// Transmit on this port.
    Port(u16),
    /// Copy to every other port of the bridge domain (`Meta::bd`).
    Flood,
    /// Drop, counted under this reason.
    Drop(DropReason),
    /// Hold until `Meta::nh_ip` is resolved by ARP on `Meta::out` (a port, or the
    /// pods' bridge domain when [`OUT_BRIDGE`]); the runner asks and parks the frame.
    Resolve,
    /// Split to fit the overlay (vxlan-encap: the inner packet is bigger than the
    /// uplink's MTU less the encapsulation, DF clear); each piece is encapsulated.
    Fragment,
    /// Hand to worker N (it owns the packet's connection) over its hand-off ring.
    Handoff(u16),
}

/// `Meta::out` value meaning "the pods' bridge domain" (resolve by flooding).
pub const OUT_BRIDGE: u16 = u16::MAX;

/// An ICMP error to send about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IcmpKind {
    #[default]
    None,
    /// Time exceeded in transit (TTL expired).
    TimeExceeded,
    /// Destination unreachable, fragmentation needed, with the next-hop MTU.
    FragNeeded(u16),
    /// Destination unreachable, port unreachable (a Service without endpoints).
    PortUnreachable,
}

crate::plain_struct! {
/// Per-packet metadata the stages share (filled by `eth-input`). It travels with the
/// frame: in an mbuf's private area (DPDK), in the frame itself in memory, so a
/// hand-off or a parked packet carries it along and the burst keeps no side array.
/// Plain integers only (`repr(C)`), so any bytes in the private area are a valid one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Meta {
    /// Trace id when this packet is traced (0 = not traced).
    pub trace: u32,
    /// The IPv4 next hop to resolve (host order).
    pub nh_ip: u32,
    /// An ICMP error to send, encoded: read and set it with [`Meta::icmp`] and
    /// [`Meta::set_icmp`].
    pub icmp_code: u32,
    pub in_port: u16,
    /// Offset of the L3 header.
    pub l3: u16,
    /// Offset of the L4 header (0 when none was parsed).
    pub l4: u16,
    pub ethertype: u16,
    pub vlan: u16,
    /// Bridge domain of the input port.
    pub bd: u16,
    /// Output port for the next hop, or [`OUT_BRIDGE`].
    pub out: u16,
    /// Remote node index for VXLAN encapsulation.
    pub remote: u16,
    /// IP protocol number (0 when not IPv4).
    pub proto: u8,
    /// IPv4 fragment: 0 none, [`FRAG_FIRST`] or [`FRAG_LATER`] (set by the parse).
    pub frag: u8,
    pub pad: u16,
}
}

impl Meta {
    /// A received packet's metadata, before `eth-input` parsed it.
    #[inline(always)]
    pub fn rx(in_port: u16, trace: u32) -> Meta {
        Meta {
            in_port,
            trace,
            ..Meta::default()
        }
    }

    /// The ICMP error a stage asked for.
    #[inline]
    pub fn icmp(&self) -> IcmpKind {
        let arg = u16::try_from(self.icmp_code >> 8).unwrap_or(0);
        match self.icmp_code & 0xff {
            1 => IcmpKind::TimeExceeded,
            2 => IcmpKind::FragNeeded(arg),
            3 => IcmpKind::PortUnreachable,
            _ => IcmpKind::None,
        }
    }

    /// Asks for an ICMP error about this packet (`icmp-error` sends it).
    #[inline]
    pub fn set_icmp(&mut self, k: IcmpKind) {
        self.icmp_code = match k {
            IcmpKind::None => 0,
            IcmpKind::TimeExceeded => 1,
            IcmpKind::FragNeeded(mtu) => 2 | u32::from(mtu) << 8,
            IcmpKind::PortUnreachable => 3,
        };
    }

    /// The ICMP error asked for, cleared.
    #[inline]
    pub fn take_icmp(&mut self) -> IcmpKind {
        let k = self.icmp();
        self.icmp_code = 0;
        k
    }
}

// The private area DPDK reserves per mbuf holds one (`dpdk::mbuf::PRIV_SIZE`).
const _: () = assert!(std::mem::size_of::<Meta>() == 32);

/// `Meta::frag`: the first fragment of a datagram (it carries the L4 header).
pub const FRAG_FIRST: u8 = 1;
/// `Meta::frag`: a later fragment (only its IPv4 header).
pub const FRAG_LATER: u8 = 2;

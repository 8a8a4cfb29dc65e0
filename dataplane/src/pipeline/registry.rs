//! The one list of stages and drop reasons: the enums, the names counters and traces
//! print, and the help text `podpathctl stats` shows, all generated from it.

macro_rules! stages {
    ($($variant:ident = $name:literal: $help:literal
        run $($run:ident)::+
        next [$($next:ident),*]
        drops [$($drop:ident),*]
        $(ethertype [$($et:ident),*])?
        $(node_udp [$($udp:path),*])?
        $(next_hop [$($nh:ident),*])?,)*) => {
        /// Stages, in the order the runner visits them. A stage sends packets to
        /// later ones, except the re-entries it declares (icmp-error and ip4-local
        /// answer through ip4-lookup), which take another pass.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum StageId { $($variant,)* }
        /// (name, what it does), indexed by `StageId as usize`.
        pub const STAGES: &[(&str, &str)] = &[$(($name, $help),)*];
        /// Where each stage may send a packet, indexed by `StageId as usize`.
        const NEXT: &[&[StageId]] = &[$(&[$(StageId::$next),*],)*];
        /// Why each stage may drop one, indexed by `StageId as usize`.
        const DROPS: &[&[DropReason]] = &[$(&[$(DropReason::$drop),*],)*];
        /// The edges features registered into parents' dispatch tables, (parent,
        /// stage, table): eth-input's EtherType and node-UDP tables, ip4-lookup's
        /// next-hop kinds.
        const REGISTERED: &[(StageId, StageId, &str)] = &[
            $($($(edge!($et, EthInput, $variant, "ethertype"),)*)?)*
            $($($(edge!($udp, EthInput, $variant, "node-udp"),)*)?)*
            $($($(edge!($nh, Ip4Lookup, $variant, "next-hop"),)*)?)*
        ];

        /// eth-input's EtherType table: the stage that takes frames of an EtherType
        /// (a stage's `ethertype [...]`), before eth-input's own IPv4 paths.
        #[inline(always)]
        pub fn for_ethertype(ethertype: u16) -> Option<StageId> {
            $($($(
                if ethertype == u16::from(crate::wire::EtherType::$et) {
                    return Some(StageId::$variant);
                }
            )*)?)*
            None
        }

        /// eth-input's table of UDP ports on the node IP (from the uplink): the
        /// stage whose `node_udp [port_of]` names a function giving `port` for this
        /// node (the VXLAN port is configured).
        #[inline(always)]
        pub fn for_node_udp(node: &crate::ip4::l3::NodeL3, port: u16) -> Option<StageId> {
            $($($(
                if port == $udp(node) {
                    return Some(StageId::$variant);
                }
            )*)?)*
            let _ = (node, port);
            None
        }

        /// ip4-lookup's next-hop table: the stage a routed packet of each kind goes
        /// to (a stage's `next_hop [...]`).
        #[inline(always)]
        pub fn for_next_hop(kind: crate::ip4::NextHopKind) -> Option<StageId> {
            $($($(
                if kind == crate::ip4::NextHopKind::$nh {
                    return Some(StageId::$variant);
                }
            )*)?)*
            None
        }
        impl StageId {
            pub const ALL: &'static [StageId] = &[$(StageId::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();
            pub fn name(self) -> &'static str { STAGES[self as usize].0 }
            pub fn help(self) -> &'static str { STAGES[self as usize].1 }
            pub fn index(self) -> usize { self as usize }
            /// The stage's entry point (the function its line names).
            #[inline(always)]
            pub fn node<F: super::Frame>(self) -> super::stage::Node<F> {
                match self { $(StageId::$variant => $($run)::+::<F>,)* }
            }
        }
    };
}

/// One registered edge, (parent, stage, table), per key of a registration.
macro_rules! edge {
    ($key:tt, $parent:ident, $stage:ident, $table:literal) => {
        (StageId::$parent, StageId::$stage, $table)
    };
}

macro_rules! drops {
    ($($variant:ident = $kind:ident $name:literal: $help:literal,)*) => {
        /// Why a packet left the pipeline other than by transmission. The stages
        /// that may give a reason declare it (`StageId::drops`); it is counted per
        /// stage.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason { $($variant,)* }
        /// (name, kind, meaning), indexed by `DropReason as usize`.
        pub const DROP_REASONS: &[(&str, Kind, &str)] = &[$(($name, kind!($kind), $help),)*];
        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();
            pub fn name(self) -> &'static str { DROP_REASONS[self as usize].0 }
            pub fn kind(self) -> Kind { DROP_REASONS[self as usize].1 }
            pub fn help(self) -> &'static str { DROP_REASONS[self as usize].2 }
            pub fn index(self) -> usize { self as usize }
        }
    };
}

/// What a drop reason means for whoever reads the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The packet was lost: malformed, refused by policy, or no resource.
    Drop,
    /// The packet was consumed as it should be (an ARP reply once learned): counted
    /// with the drops for the accounting identity, not a loss.
    Event,
}

macro_rules! kind {
    (drop) => {
        Kind::Drop
    };
    (event) => {
        Kind::Event
    };
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Drop => "drop",
            Kind::Event => "event",
        }
    }
}

impl StageId {
    /// The stages this one may send a packet to. Its own id means "hand-off": the
    /// worker that owns the connection resumes the packet at this stage.
    pub fn next_stages(self) -> &'static [StageId] {
        NEXT[self.index()]
    }

    /// The stages features registered into this stage's dispatch tables.
    pub fn registered(self) -> impl Iterator<Item = StageId> {
        self.registrations().map(|(c, _)| c)
    }

    /// The stages registered into this one's tables, with the table's name.
    pub fn registrations(self) -> impl Iterator<Item = (StageId, &'static str)> {
        REGISTERED
            .iter()
            .filter(move |(p, ..)| *p == self)
            .map(|&(_, c, t)| (c, t))
    }

    /// Every stage this one may send a packet to: its own `next` and what was
    /// registered into its tables (the graph's edges).
    pub fn successors(self) -> Vec<StageId> {
        let mut v = self.next_stages().to_vec();
        for c in self.registered() {
            if !v.contains(&c) {
                v.push(c);
            }
        }
        v
    }

    /// The reasons this stage may drop a packet for.
    pub fn drops(self) -> &'static [DropReason] {
        DROPS[self.index()]
    }

    /// Whether this stage declares `r`.
    pub fn declares(self, r: DropReason) -> bool {
        self.drops().contains(&r)
    }

    /// Whether `next` is a decision this stage declares: a next stage, an output
    /// (`tx`), a split (`ip4-fragment`), a wait for ARP (`arp`), a hand-off (itself)
    /// or one of its drop reasons. The runner checks it in debug builds.
    pub fn allows(self, next: super::Next) -> bool {
        match self.edge(next) {
            Ok(to) => self.next_stages().contains(&to) || self.registered().any(|c| c == to),
            Err(r) => self.declares(r),
        }
    }

    /// The graph edge a decision takes (its next stage as `next_stages` names it), or
    /// the drop reason.
    #[inline]
    pub fn edge(self, next: super::Next) -> Result<StageId, DropReason> {
        use super::Next;
        Ok(match next {
            Next::Stage(t) => t,
            Next::Port(_) | Next::Flood => StageId::Tx,
            Next::Fragment => StageId::Ip4Fragment,
            Next::Resolve => StageId::Arp,
            Next::Handoff(_) => self,
            Next::Drop(r) => return Err(r),
        })
    }
}

/// Debug builds record, per thread, every edge the runner saw a stage take, so a
/// test can assert that each declared edge is really taken (the declarations are
/// not stale) as the runner asserts that none undeclared is.
#[cfg(debug_assertions)]
pub mod seen {
    use super::StageId;
    use std::cell::Cell;

    thread_local! {
        static EDGES: [Cell<u32>; StageId::COUNT] = const { [const { Cell::new(0) }; StageId::COUNT] };
    }

    #[inline]
    pub fn record(from: StageId, to: StageId) {
        EDGES.with(|e| {
            let c = &e[from.index()];
            c.set(c.get() | 1 << to.index());
        });
    }

    /// Whether this thread saw `from` send a packet to `to`.
    pub fn taken(from: StageId, to: StageId) -> bool {
        EDGES.with(|e| e[from.index()].get() & 1 << to.index() != 0)
    }
}

stages! {
    EthInput = "eth-input": "parses Ethernet, VLAN, ARP, IPv4 and L4 headers; drops malformed frames; picks the path by port role"
        run crate::eth::input::process
        next [SnatReply, Lb, Ip4Lookup, Bridge]
        drops [EthTruncated, EthChained, VlanMalformed, ArpTruncated, ArpMalformed, Ip4Truncated, Ip4Malformed, Ip4BadChecksum, Ip4BadOptions, TcpTruncated, TcpBadOffset, UdpTruncated, UdpBadLength, IcmpTruncated, UplinkNotForUs, HostNotIp4],
    VxlanDecap = "vxlan-decap": "checks VXLAN from known remote VTEPs with our VNI and port, strips the outer headers"
        run crate::overlay::vxlan_decap::process
        next [Lb, Ip4Lookup]
        drops [Ip4NoNode, VxlanBadHeader, VxlanWrongVni, VxlanUnknownVtep, VxlanInnerMalformed, VxlanInnerNotIp4, VxlanOuterFragment, VxlanInnerBadSource, VxlanInnerNotLocal]
        node_udp [crate::overlay::vxlan_decap::udp_port],
    SnatReply = "snat-reply": "replies to the node IP: restores the pod's address from the connection table"
        run crate::nat::snat::reply
        next [SnatReply, Lb, Ip4Lookup]
        drops [CtInvalid, HandoffFull],
    Lb = "lb": "Services: new connections to an endpoint by Maglev, established ones pinned, replies from the virtual IP"
        run crate::services::lb::process
        next [Lb, Ip4Lookup, IcmpError, Bridge]
        drops [LbNoEndpoint, LbNoServicePort, LbUnallocatedClusterIp, LbSourceNotAllowed, LbFragmentUnknown, LbNoLocalEndpoint, LbTupleClash, SnatPortsExhausted, CtTableFull, CtInvalid, HandoffFull],
    Arp = "arp": "answers ARP for the pods' gateway, the node IP and (proxy) on the host port; learns neighbours"
        run crate::ip4::arp::process
        next [Bridge, Tx]
        drops [ArpMalformed, ArpVlanTagged, ArpNotForUs, ArpReplyLearned, ArpQueueFull, ArpTimeout, ArpNoBuffer]
        ethertype [Arp],
    Ip4Lookup = "ip4-lookup": "longest-prefix match, TTL check and decrement"
        run crate::ip4::lookup::process
        next [IcmpError]
        drops [Ip4NoNode, Ip4NoRoute, Ip4Malformed, Ip4RewriteNoPort],
    Snat = "snat": "pod traffic leaving the cluster: node IP and a NAT port as source, tracked"
        run crate::nat::snat::egress
        next [Snat, Ip4Rewrite]
        drops [Ip4NoNode, SnatFragment, SnatUnsupported, SnatPortsExhausted, CtTableFull, CtInvalid, HandoffFull]
        next_hop [Masquerade],
    Ip4Local = "ip4-local": "packets for the dataplane itself: answers ICMP echo to the pods' gateway"
        run crate::ip4::local::process
        next [Ip4Lookup]
        drops [Ip4LocalUnsupported, Ip4LocalFragment]
        next_hop [Us],
    IcmpError = "icmp-error": "builds ICMP time-exceeded and fragmentation-needed, rate-limited"
        run crate::ip4::icmp_error::process
        next [Ip4Lookup]
        drops [Ip4NoNode, Ip4TtlExpired, IcmpRateLimited, IcmpAboutIcmpError, IcmpNoRoom, IcmpNotAllowed],
    VxlanEncap = "vxlan-encap": "MTU check, outer Ethernet/IPv4/UDP/VXLAN to the remote node"
        run crate::overlay::vxlan_encap::process
        next [IcmpError, Arp, Ip4Fragment, Tx]
        drops [Ip4NoNode, VxlanNoUplink, VxlanNoHeadroom]
        next_hop [Remote],
    Ip4Rewrite = "ip4-rewrite": "resolves the next hop's MAC (ARP) and rewrites the Ethernet header"
        run crate::ip4::rewrite::process
        next [Arp, IcmpError, Tx]
        drops []
        next_hop [Local, Host, Uplink],
    Bridge = "bridge": "L2 bridge domain: MAC learning, ageing, forwarding, flooding"
        run crate::bridge::process
        next [Tx]
        drops [BridgeNoDomain, BridgeSrcMulticast, BridgeSamePort, BridgeNoFloodPort],
    Ip4Fragment = "ip4-fragment": "splits IPv4 bigger than where it goes (output port's MTU, or the overlay's for an inner packet), DF clear, into fragments"
        run crate::pipeline::stage::by_runner
        next [VxlanEncap, Tx]
        drops [Ip4FragDontFragment, Ip4FragNotIp4, Ip4FragTooMany, Ip4FragNoBuffer],
    Tx = "tx": "queues packets on output ports, replicates floods, transmits in bursts"
        run crate::pipeline::stage::by_runner
        next []
        drops [TxFull, TxNoPort, TxNoBuffer, BridgeNoFloodPort, GraphLoop],
}

drops! {
    EthTruncated = drop "eth-truncated": "frame shorter than an Ethernet header",
    EthChained = drop "eth-chained": "multi-segment buffer (the pipeline takes single buffers; af_packet ports get ones of dataplane.max_frame)",
    VlanMalformed = drop "vlan-malformed": "VLAN tag cut short, or more than two tags",
    ArpTruncated = drop "arp-truncated": "ARP shorter than 28 bytes",
    ArpMalformed = drop "arp-malformed": "ARP that is not Ethernet/IPv4",
    Ip4Truncated = drop "ip4-truncated": "IPv4 header or total length beyond the frame",
    Ip4Malformed = drop "ip4-malformed": "IPv4 version, header length or total length invalid",
    Ip4BadChecksum = drop "ip4-bad-checksum": "IPv4 header checksum does not verify",
    Ip4BadOptions = drop "ip4-bad-options": "IPv4 options list runs past the header",
    TcpTruncated = drop "tcp-truncated": "TCP header beyond the IPv4 payload",
    TcpBadOffset = drop "tcp-bad-offset": "TCP data offset below 5 words",
    UdpTruncated = drop "udp-truncated": "UDP header or length beyond the IPv4 payload",
    UdpBadLength = drop "udp-bad-length": "UDP length below 8",
    IcmpTruncated = drop "icmp-truncated": "ICMP header beyond the IPv4 payload",
    UplinkNotForUs = drop "uplink-not-for-us": "uplink frame neither ARP nor IPv4 to the node IP",
    HostNotIp4 = drop "host-not-ip4": "host-port frame neither ARP nor IPv4",
    VxlanBadHeader = drop "vxlan-bad-header": "VXLAN header short or without the I flag",
    VxlanWrongVni = drop "vxlan-wrong-vni": "VXLAN with a VNI other than ours",
    VxlanUnknownVtep = drop "vxlan-unknown-vtep": "VXLAN from an address that is no known remote node",
    VxlanInnerMalformed = drop "vxlan-inner-malformed": "the inner frame does not parse",
    VxlanInnerNotIp4 = drop "vxlan-inner-not-ip4": "the inner frame is not IPv4",
    VxlanOuterFragment = drop "vxlan-outer-fragment": "VXLAN in a fragmented outer packet (not reassembled)",
    VxlanInnerBadSource = drop "vxlan-inner-bad-source": "inner source outside the sending node's pod CIDR",
    VxlanInnerNotLocal = drop "vxlan-inner-not-local": "inner destination is not a pod of this node",
    ArpVlanTagged = drop "arp-vlan-tagged": "VLAN-tagged ARP request (pods are untagged)",
    ArpNotForUs = drop "arp-not-for-us": "ARP request for an address we do not answer on this port",
    ArpReplyLearned = event "arp-reply-learned": "ARP reply to us, consumed after learning the neighbour",
    ArpQueueFull = drop "arp-queue-full": "no room to hold a packet while its next hop resolves",
    ArpTimeout = drop "arp-timeout": "next hop did not answer ARP in time",
    ArpNoBuffer = drop "arp-no-buffer": "no packet buffer for an ARP request",
    Ip4NoNode = drop "ip4-no-node": "IPv4 to route but the node has no L3 identity",
    Ip4NoRoute = drop "ip4-no-route": "no route to the destination",
    Ip4TtlExpired = drop "ip4-ttl-expired": "TTL expired in transit (ICMP error sent when allowed)",
    SnatFragment = drop "snat-fragment": "IPv4 fragment leaving the cluster (not reassembled, not translated)",
    SnatUnsupported = drop "snat-unsupported": "protocol without ports or echo identifier (only TCP, UDP, ICMP echo are translated)",
    HandoffFull = drop "handoff-full": "the owning worker's hand-off ring was full",
    LbNoEndpoint = drop "lb-no-endpoint": "Service without endpoints, refusal not possible (answered with a reset or port unreachable otherwise)",
    LbNoServicePort = drop "lb-no-service-port": "to a ClusterIP on a port no ServicePort defines, and no reset can be made (a reset itself): dropped (others are refused)",
    LbUnallocatedClusterIp = drop "lb-unallocated-cluster-ip": "to an address in the Service range that is no ClusterIP: dropped without an answer, as kube-proxy does",
    LbSourceNotAllowed = drop "lb-source-not-allowed": "to a LoadBalancer IP from a source outside its loadBalancerSourceRanges",
    LbFragmentUnknown = drop "lb-fragment-unknown": "a later fragment to a virtual IP whose first fragment was not seen (out of order or lost): not translatable",
    LbNoLocalEndpoint = drop "lb-no-local-endpoint": "internalTrafficPolicy Local and no endpoint on this node: dropped without an answer, as kube-proxy does",
    LbTupleClash = drop "lb-tuple-clash": "the translated connection's reply tuple is another connection's (a client reaching an endpoint directly and through its Service from one port)",
    SnatPortsExhausted = drop "snat-ports-exhausted": "no free NAT port in this worker's slice",
    CtTableFull = drop "ct-table-full": "connection table full and no unassured entry to evict: new connection refused (SNAT or Service)",
    CtInvalid = drop "ct-invalid": "TCP flags no connection can carry (SYN+FIN, SYN+RST, FIN without ACK, none): dropped, the connection's state unchanged",
    Ip4LocalUnsupported = drop "ip4-local-unsupported": "to the gateway address but not ICMP echo",
    Ip4LocalFragment = drop "ip4-local-fragment": "fragmented echo request to the gateway (not reassembled)",
    IcmpRateLimited = drop "icmp-rate-limited": "ICMP error not sent: rate limit",
    IcmpAboutIcmpError = drop "icmp-about-icmp-error": "no ICMP error about an ICMP error",
    IcmpNoRoom = drop "icmp-no-room": "the buffer cannot hold the ICMP error",
    IcmpNotAllowed = drop "icmp-not-allowed": "no ICMP error about a non-first fragment or a broadcast, multicast or unspecified address (RFC 1122)",
    VxlanNoUplink = drop "vxlan-no-uplink": "no uplink port to send VXLAN on",
    VxlanNoHeadroom = drop "vxlan-no-headroom": "no headroom to prepend the outer headers",
    Ip4RewriteNoPort = drop "ip4-rewrite-no-port": "no port for the next hop (uplink or host port missing)",
    BridgeNoDomain = drop "bridge-no-domain": "input port is in no bridge domain",
    BridgeSrcMulticast = drop "bridge-src-multicast": "source MAC is a group address",
    BridgeSamePort = drop "bridge-same-port": "destination MAC lives behind the input port",
    BridgeNoFloodPort = drop "bridge-no-flood-port": "flood with no other port in the domain",
    Ip4FragDontFragment = drop "ip4-frag-dont-fragment": "bigger than the output port's MTU with DF set, on a path that sends no ICMP error (bridged between pods)",
    Ip4FragNotIp4 = drop "ip4-frag-not-ip4": "bigger than the output port's MTU and not IPv4, or its IPv4 header is malformed (cannot be fragmented)",
    Ip4FragTooMany = drop "ip4-frag-too-many": "would need more than 128 fragments (MTU too small for the datagram)",
    Ip4FragNoBuffer = drop "ip4-frag-no-buffer": "no packet buffer for a fragment: the whole datagram is dropped",
    TxFull = drop "tx-full": "the device's tx queue refused the packet",
    TxNoPort = drop "tx-no-port": "output port is gone (detached)",
    TxNoBuffer = drop "tx-no-buffer": "no packet buffer for a flood copy",
    GraphLoop = drop "graph-loop": "a packet went round the stages too often (internal error)",
}

/// The stage graph as text, one stage per line with where it sends packets and why
/// it drops them (docs/architecture.md holds it; a test keeps the two equal).
/// `<-` marks an earlier stage (a re-entry), `arp(hold)` a packet held until its
/// next hop answers, `handoff` a hand-off to the worker owning the connection, and
/// `stage[table]` a stage registered into this one's dispatch table.
pub fn graph_text() -> String {
    let mut o = String::new();
    for &st in StageId::ALL {
        let table = |t: StageId| st.registrations().find(|&(c, _)| c == t).map(|(_, n)| n);
        let next: Vec<String> = st
            .successors()
            .iter()
            .map(|&t| match t {
                t if t == st => "handoff".to_string(),
                // Registered into one of this stage's tables.
                t if table(t).is_some() => format!("{}[{}]", t.name(), table(t).unwrap_or("")),
                // Next::Resolve: held in arp's queue, sent from there.
                StageId::Arp if StageId::Arp < st => "arp(hold)".to_string(),
                t if t < st => format!("<-{}", t.name()),
                t => t.name().to_string(),
            })
            .collect();
        if next.is_empty() {
            o.push_str(&format!("{} (end)\n", st.name()));
        } else {
            o.push_str(&format!("{} -> {}\n", st.name(), next.join(" ")));
        }
        let drops: Vec<String> = st
            .drops()
            .iter()
            .map(|r| match r.kind() {
                Kind::Drop => r.name().to_string(),
                Kind::Event => format!("{}(event)", r.name()),
            })
            .collect();
        if !drops.is_empty() {
            o.push_str(&format!("    drops: {}\n", drops.join(" ")));
        }
    }
    o
}

/// The stage graph as a Mermaid flowchart (edges only; re-entries dashed).
pub fn graph_mermaid() -> String {
    let mut o = String::from("flowchart TD\n");
    for &st in StageId::ALL {
        for t in st.successors() {
            if t == st {
                continue;
            }
            let table = st.registrations().find(|&(c, _)| c == t).map(|(_, n)| n);
            let arrow = match (t, table) {
                (_, Some(name)) => format!("-- {name} -->"),
                (StageId::Arp, None) if t < st => "-. hold .->".into(),
                (t, None) if t < st => "-.->".into(),
                _ => "-->".into(),
            };
            o.push_str(&format!("    {}{arrow}{}\n", st.name(), t.name()));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_kebab_case() {
        let mut seen = HashSet::new();
        let names = STAGES
            .iter()
            .map(|(n, _)| *n)
            .chain(DROP_REASONS.iter().map(|(n, _, _)| *n));
        for name in names {
            assert!(seen.insert(name), "duplicate name {name}");
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit()));
        }
        assert_eq!(StageId::Bridge.name(), "bridge");
        assert!(StageId::Tx.declares(DropReason::TxFull));
    }

    #[test]
    fn every_reason_is_declared_by_a_stage_and_every_stage_is_reachable() {
        for &r in DropReason::ALL {
            assert!(
                StageId::ALL.iter().any(|s| s.declares(r)),
                "{} is declared by no stage",
                r.name()
            );
        }
        let mut reached = vec![StageId::EthInput];
        let mut i = 0;
        while i < reached.len() {
            for t in reached[i].successors() {
                if !reached.contains(&t) {
                    reached.push(t);
                }
            }
            i += 1;
        }
        for &st in StageId::ALL {
            assert!(
                reached.contains(&st),
                "{} is unreachable from eth-input",
                st.name()
            );
        }
        assert!(StageId::Tx.next_stages().is_empty(), "tx is the end");
    }

    #[test]
    fn features_register_into_the_parents_tables() {
        use crate::ip4::NextHopKind as K;
        assert_eq!(for_ethertype(0x0806), Some(StageId::Arp));
        assert_eq!(for_ethertype(0x0800), None, "IPv4 is eth-input's own");
        assert_eq!(for_next_hop(K::Remote), Some(StageId::VxlanEncap));
        assert_eq!(for_next_hop(K::Masquerade), Some(StageId::Snat));
        assert_eq!(for_next_hop(K::Us), Some(StageId::Ip4Local));
        for k in [K::Local, K::Host, K::Uplink] {
            assert_eq!(for_next_hop(k), Some(StageId::Ip4Rewrite));
        }
        // Registered edges are edges of the parent (allowed, drawn).
        assert!(StageId::EthInput.allows(crate::pipeline::Next::Stage(StageId::VxlanDecap)));
        assert!(StageId::Ip4Lookup
            .successors()
            .contains(&StageId::VxlanEncap));
        assert!(!StageId::Bridge.allows(crate::pipeline::Next::Stage(StageId::Arp)));
    }

    #[test]
    fn a_stage_allows_only_what_it_declares() {
        use crate::pipeline::Next;
        assert!(StageId::Bridge.allows(Next::Port(3)));
        assert!(StageId::Bridge.allows(Next::Flood));
        assert!(!StageId::Bridge.allows(Next::Stage(StageId::Ip4Lookup)));
        assert!(!StageId::Bridge.allows(Next::Drop(DropReason::TxFull)));
        assert!(StageId::Lb.allows(Next::Handoff(1)));
        assert!(!StageId::Ip4Lookup.allows(Next::Handoff(1)));
        assert!(StageId::Ip4Rewrite.allows(Next::Resolve));
        assert!(!StageId::Bridge.allows(Next::Resolve));
        assert!(StageId::VxlanEncap.allows(Next::Fragment));
        assert!(!StageId::Ip4Rewrite.allows(Next::Fragment));
    }
}

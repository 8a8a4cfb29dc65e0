//! The one list of stages and drop reasons: the enums, the names counters and traces
//! print, and the help text `podpathctl stats` shows, all generated from it.

macro_rules! stages {
    ($($variant:ident = $name:literal: $help:literal,)*) => {
        /// Stages, in graph order: a stage only sends packets to later ones.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum StageId { $($variant,)* }
        /// (name, what it does), indexed by `StageId as usize`.
        pub const STAGES: &[(&str, &str)] = &[$(($name, $help),)*];
        impl StageId {
            pub const ALL: &'static [StageId] = &[$(StageId::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();
            pub fn name(self) -> &'static str { STAGES[self as usize].0 }
            pub fn index(self) -> usize { self as usize }
        }
    };
}

macro_rules! drops {
    ($($variant:ident = $stage:ident $name:literal: $help:literal,)*) => {
        /// Why a packet was dropped; each reason belongs to one stage.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason { $($variant,)* }
        /// (stage, name, meaning), indexed by `DropReason as usize`.
        pub const DROP_REASONS: &[(StageId, &str, &str)] = &[$((StageId::$stage, $name, $help),)*];
        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();
            pub fn name(self) -> &'static str { DROP_REASONS[self as usize].1 }
            pub fn stage(self) -> StageId { DROP_REASONS[self as usize].0 }
            pub fn index(self) -> usize { self as usize }
        }
    };
}

stages! {
    EthInput = "eth-input": "parses Ethernet, VLAN, ARP, IPv4 and L4 headers; drops malformed frames; picks the path by port role",
    VxlanDecap = "vxlan-decap": "checks VXLAN from known remote VTEPs with our VNI and port, strips the outer headers",
    SnatReply = "snat-reply": "replies to the node IP: restores the pod's address from the connection table",
    Lb = "lb": "Services: new connections to an endpoint by Maglev, established ones pinned, replies from the virtual IP",
    Arp = "arp": "answers ARP for the pods' gateway, the node IP and (proxy) on the host port; learns neighbours",
    Ip4Lookup = "ip4-lookup": "longest-prefix match, TTL check and decrement",
    Snat = "snat": "pod traffic leaving the cluster: node IP and a NAT port as source, tracked",
    Ip4Local = "ip4-local": "packets for the dataplane itself: answers ICMP echo to the pods' gateway",
    IcmpError = "icmp-error": "builds ICMP time-exceeded and fragmentation-needed, rate-limited",
    VxlanEncap = "vxlan-encap": "MTU check, outer Ethernet/IPv4/UDP/VXLAN to the remote node",
    Ip4Rewrite = "ip4-rewrite": "resolves the next hop's MAC (ARP) and rewrites the Ethernet header",
    Bridge = "bridge": "L2 bridge domain: MAC learning, ageing, forwarding, flooding",
    Ip4Fragment = "ip4-fragment": "splits IPv4 bigger than where it goes (output port's MTU, or the overlay's for an inner packet), DF clear, into fragments",
    Tx = "tx": "queues packets on output ports, replicates floods, transmits in bursts",
}

drops! {
    EthTruncated = EthInput "eth-truncated": "frame shorter than an Ethernet header",
    EthChained = EthInput "eth-chained": "multi-segment buffer (the pipeline takes single buffers; af_packet ports get ones of dataplane.max_frame)",
    VlanMalformed = EthInput "vlan-malformed": "VLAN tag cut short, or more than two tags",
    ArpTruncated = EthInput "arp-truncated": "ARP shorter than 28 bytes",
    ArpMalformed = EthInput "arp-malformed": "ARP that is not Ethernet/IPv4",
    Ip4Truncated = EthInput "ip4-truncated": "IPv4 header or total length beyond the frame",
    Ip4Malformed = EthInput "ip4-malformed": "IPv4 version, header length or total length invalid",
    Ip4BadChecksum = EthInput "ip4-bad-checksum": "IPv4 header checksum does not verify",
    Ip4BadOptions = EthInput "ip4-bad-options": "IPv4 options list runs past the header",
    TcpTruncated = EthInput "tcp-truncated": "TCP header beyond the IPv4 payload",
    TcpBadOffset = EthInput "tcp-bad-offset": "TCP data offset below 5 words",
    UdpTruncated = EthInput "udp-truncated": "UDP header or length beyond the IPv4 payload",
    UdpBadLength = EthInput "udp-bad-length": "UDP length below 8",
    IcmpTruncated = EthInput "icmp-truncated": "ICMP header beyond the IPv4 payload",
    UplinkNotForUs = EthInput "uplink-not-for-us": "uplink frame neither ARP nor IPv4 to the node IP",
    HostNotIp4 = EthInput "host-not-ip4": "host-port frame neither ARP nor IPv4",
    VxlanBadHeader = VxlanDecap "vxlan-bad-header": "VXLAN header short or without the I flag",
    VxlanWrongVni = VxlanDecap "vxlan-wrong-vni": "VXLAN with a VNI other than ours",
    VxlanUnknownVtep = VxlanDecap "vxlan-unknown-vtep": "VXLAN from an address that is no known remote node",
    VxlanInnerMalformed = VxlanDecap "vxlan-inner-malformed": "the inner frame does not parse",
    VxlanInnerNotIp4 = VxlanDecap "vxlan-inner-not-ip4": "the inner frame is not IPv4",
    VxlanOuterFragment = VxlanDecap "vxlan-outer-fragment": "VXLAN in a fragmented outer packet (not reassembled)",
    VxlanInnerBadSource = VxlanDecap "vxlan-inner-bad-source": "inner source outside the sending node's pod CIDR",
    VxlanInnerNotLocal = VxlanDecap "vxlan-inner-not-local": "inner destination is not a pod of this node",
    ArpVlanTagged = Arp "arp-vlan-tagged": "VLAN-tagged ARP request (pods are untagged)",
    ArpNotForUs = Arp "arp-not-for-us": "ARP request for an address we do not answer on this port",
    ArpReplyLearned = Arp "arp-reply-learned": "ARP reply to us, consumed after learning the neighbour",
    ArpQueueFull = Arp "arp-queue-full": "no room to hold a packet while its next hop resolves",
    ArpTimeout = Arp "arp-timeout": "next hop did not answer ARP in time",
    ArpNoBuffer = Arp "arp-no-buffer": "no packet buffer for an ARP request",
    Ip4NoNode = Ip4Lookup "ip4-no-node": "IPv4 to route but the node has no L3 identity",
    Ip4NoRoute = Ip4Lookup "ip4-no-route": "no route to the destination",
    Ip4TtlExpired = Ip4Lookup "ip4-ttl-expired": "TTL expired in transit (ICMP error sent when allowed)",
    SnatFragment = Snat "snat-fragment": "IPv4 fragment leaving the cluster (not reassembled, not translated)",
    SnatUnsupported = Snat "snat-unsupported": "protocol without ports or echo identifier (only TCP, UDP, ICMP echo are translated)",
    HandoffFull = SnatReply "handoff-full": "the owning worker's hand-off ring was full",
    LbNoEndpoint = Lb "lb-no-endpoint": "Service without endpoints, refusal not possible (answered with a reset or port unreachable otherwise)",
    LbNoServicePort = Lb "lb-no-service-port": "to a ClusterIP on a port no ServicePort defines, and no reset can be made (a reset itself): dropped (others are refused)",
    LbUnallocatedClusterIp = Lb "lb-unallocated-cluster-ip": "to an address in the Service range that is no ClusterIP: dropped without an answer, as kube-proxy does",
    LbSourceNotAllowed = Lb "lb-source-not-allowed": "to a LoadBalancer IP from a source outside its loadBalancerSourceRanges",
    LbFragmentUnknown = Lb "lb-fragment-unknown": "a later fragment to a virtual IP whose first fragment was not seen (out of order or lost): not translatable",
    LbNoLocalEndpoint = Lb "lb-no-local-endpoint": "internalTrafficPolicy Local and no endpoint on this node: dropped without an answer, as kube-proxy does",
    LbTupleClash = Lb "lb-tuple-clash": "the translated connection's reply tuple is another connection's (a client reaching an endpoint directly and through its Service from one port)",
    SnatPortsExhausted = Snat "snat-ports-exhausted": "no free NAT port in this worker's slice",
    CtTableFull = Snat "ct-table-full": "connection table full and no unassured entry to evict: new connection refused (SNAT or Service)",
    CtInvalid = Snat "ct-invalid": "TCP flags no connection can carry (SYN+FIN, SYN+RST, FIN without ACK, none): dropped, the connection's state unchanged",
    Ip4LocalUnsupported = Ip4Local "ip4-local-unsupported": "to the gateway address but not ICMP echo",
    Ip4LocalFragment = Ip4Local "ip4-local-fragment": "fragmented echo request to the gateway (not reassembled)",
    IcmpRateLimited = IcmpError "icmp-rate-limited": "ICMP error not sent: rate limit",
    IcmpAboutIcmpError = IcmpError "icmp-about-icmp-error": "no ICMP error about an ICMP error",
    IcmpNoRoom = IcmpError "icmp-no-room": "the buffer cannot hold the ICMP error",
    IcmpNotAllowed = IcmpError "icmp-not-allowed": "no ICMP error about a non-first fragment or a broadcast, multicast or unspecified address (RFC 1122)",
    VxlanNoUplink = VxlanEncap "vxlan-no-uplink": "no uplink port to send VXLAN on",
    VxlanNoHeadroom = VxlanEncap "vxlan-no-headroom": "no headroom to prepend the outer headers",
    Ip4RewriteNoPort = Ip4Rewrite "ip4-rewrite-no-port": "no port for the next hop (uplink or host port missing)",
    BridgeNoDomain = Bridge "bridge-no-domain": "input port is in no bridge domain",
    BridgeSrcMulticast = Bridge "bridge-src-multicast": "source MAC is a group address",
    BridgeSamePort = Bridge "bridge-same-port": "destination MAC lives behind the input port",
    BridgeNoFloodPort = Bridge "bridge-no-flood-port": "flood with no other port in the domain",
    Ip4FragDontFragment = Ip4Fragment "ip4-frag-dont-fragment": "bigger than the output port's MTU with DF set, on a path that sends no ICMP error (bridged between pods)",
    Ip4FragNotIp4 = Ip4Fragment "ip4-frag-not-ip4": "bigger than the output port's MTU and not IPv4, or its IPv4 header is malformed (cannot be fragmented)",
    Ip4FragTooMany = Ip4Fragment "ip4-frag-too-many": "would need more than 128 fragments (MTU too small for the datagram)",
    Ip4FragNoBuffer = Ip4Fragment "ip4-frag-no-buffer": "no packet buffer for a fragment: the whole datagram is dropped",
    TxFull = Tx "tx-full": "the device's tx queue refused the packet",
    TxNoPort = Tx "tx-no-port": "output port is gone (detached)",
    TxNoBuffer = Tx "tx-no-buffer": "no packet buffer for a flood copy",
    GraphLoop = Tx "graph-loop": "a packet went round the stages too often (internal error)",
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
            .chain(DROP_REASONS.iter().map(|(_, n, _)| *n));
        for name in names {
            assert!(seen.insert(name), "duplicate name {name}");
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit()));
        }
        assert_eq!(StageId::Bridge.name(), "bridge");
        assert_eq!(DropReason::TxFull.stage(), StageId::Tx);
    }
}

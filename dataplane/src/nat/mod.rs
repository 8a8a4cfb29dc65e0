//! Connection-tracked NAT: the per-worker connection table (`conntrack/`, with its
//! state file), SNAT masquerade of pod egress and its replies (`snat`,
//! `snat-reply`: `snat.rs`, with the NAT port slices), ICMP errors about translated
//! connections (`icmp.rs`), and the translations of fragmented datagrams (`frag.rs`).
pub mod conntrack;
#[cfg(test)]
mod contract;
pub mod frag;
pub mod icmp;
pub mod snat;

/// NAT's per-worker state: this worker's connections and NAT ports.
pub struct Nat {
    pub conntrack: conntrack::Conntrack,
    /// This worker's slice of the NAT port range.
    pub ports: snat::NatPorts,
    /// Which worker owns which connection.
    pub owners: snat::Owners,
    /// Translations of fragmented datagrams (this worker's and the others'), and
    /// this burst's new ones, to tell the others.
    pub frags: frag::Fragments,
}

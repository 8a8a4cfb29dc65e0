//! Connection-tracked NAT: the per-worker connection table (`conntrack/`, with its
//! state file), SNAT masquerade of pod egress and its replies (`snat`,
//! `snat-reply`: `snat.rs`, with the NAT port slices), ICMP errors about translated
//! connections (`icmp.rs`), and the translations of fragmented datagrams (`frag.rs`).
pub mod conntrack;
pub mod frag;
pub mod icmp;
pub mod snat;

//! The lab: a Kubernetes-like topology of network namespaces on one machine.
//!
//! ```text
//!   pp-<name>-ext (192.168.77.100) ─┐
//!   pp-<name>-node1 eth0 (.11) ─────┼── pp-<name>-underlay: bridge br0
//!   pp-<name>-node2 eth0 (.12) ─────┘
//!   pp-<name>-node1-a  eth0 10.244.0.2  <- veth -> node1 "vp-a" <- af_packet -> dataplane
//!   pp-<name>-node1-b  eth0 10.244.0.3  = a tap the node1 dataplane created inside the pod
//! ```
//! Every namespace is made by the lab and named `pp-<name>-...`; nothing is attached
//! to the root namespace. Pods alternate between af_packet (veth) and tap attachment.
//! State lives in `<state-dir>/<name>/state.json`; `down` works from it and from the
//! name prefix, so it also cleans up after a crash.
pub mod cluster;
pub mod docker;
pub mod net;
pub mod topo;
pub mod traffic;

pub use topo::{Lab, LabOptions, Node, Pod, State};

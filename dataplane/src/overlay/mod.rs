//! The overlay between nodes: VXLAN (`vxlan-decap`: `vxlan_decap.rs`, `vxlan-encap`:
//! `vxlan_encap.rs`), flannel's wire format.
#[cfg(test)]
mod contract;
pub mod vxlan_decap;
pub mod vxlan_encap;

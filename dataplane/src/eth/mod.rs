//! Ethernet input: `eth-input` (`input.rs`) parses every received frame and picks
//! its path by the input port's role.
#[cfg(test)]
mod contract;
pub mod input;

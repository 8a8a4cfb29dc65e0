//! One file per stage; the file name is the stage name (`eth-input` is
//! `eth_input.rs`). A stage reads the packets queued for it and writes one
//! [`Next`](crate::pipeline::Next) per packet; it never frees or sends packets itself.
pub mod bridge;
pub mod eth_input;

use crate::pipeline::WorkerCounters;
use crate::tables::PortMap;

/// What every stage may look at besides the packets.
pub struct Ctx<'a> {
    pub ports: &'a PortMap,
    /// TSC at the start of this poll iteration.
    pub now: u64,
    pub counters: &'a WorkerCounters,
}

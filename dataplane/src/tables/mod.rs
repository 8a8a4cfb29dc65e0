//! Tables the workers read. Shared ones (the port map) are immutable snapshots the
//! control thread publishes by message; per-worker ones (the MAC table) are owned by
//! one worker and never locked.
pub mod lpm;
pub mod mac;
pub mod ports;

pub use mac::{Learn, MacTable};
pub use ports::{BridgeDomain, PortEntry, PortMap};

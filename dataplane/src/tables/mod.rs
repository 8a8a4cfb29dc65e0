//! Tables the workers read. Shared ones (the port map) are immutable snapshots the
//! control thread publishes by message; per-worker ones (the MAC table) are owned by
//! one worker and never locked.
pub mod addr_filter;
pub mod conntrack;
pub mod frag;
pub mod l3;
pub mod lpm;
pub mod mac;
pub mod maglev;
pub mod neighbor;
pub mod ports;
pub mod services;

pub use addr_filter::AddrFilter;
pub use l3::{NextHop, L3};
pub use mac::{Learn, MacTable};
pub use neighbor::NeighborTable;
pub use ports::{BridgeDomain, PortEntry, PortMap, Role};

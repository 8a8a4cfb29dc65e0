//! podpath's dataplane: a poll-mode packet pipeline on DPDK.
//!
//! - [`dpdk`]: the one safe wrapper over DPDK (the only module with `unsafe`).
//! - [`wire`]: zero-copy packet views.
//! - [`pipeline`]: the stage graph (registry), the burst runner, counters, trace.
//! - Features, each a folder with its stages and tables: [`eth`] (eth-input),
//!   [`bridge`], [`ip4`] (lookup, rewrite, local, icmp-error, fragment, arp),
//!   [`overlay`] (VXLAN), [`nat`] (conntrack, SNAT), [`services`] (lb, Maglev, the
//!   prefilter).
//! - [`port`]: the port map, and DPDK and memory port backends.
//! - [`snapshot`]: what workers read of the control plane, published as one.
//! - [`worker`]: the poll loop.
//! - [`control`]: the control thread and its socket.
//! - [`config`]: the configuration file.
//! - [`preflight`]: the capabilities and mounts the process needs, checked at start.
//! - [`notify`]: systemd's notify protocol (readiness, a watchdog fed by the workers).
#![deny(unsafe_code)]

pub mod bridge;
pub mod config;
#[cfg(feature = "dpdk")]
pub mod control;
#[allow(unsafe_code)]
pub mod dpdk;
pub mod eth;
pub mod ip4;
pub mod nat;
pub mod notify;
pub mod overlay;
pub mod pipeline;
pub mod port;
pub mod preflight;
pub mod services;
pub mod snapshot;
pub mod wire;
pub mod worker;

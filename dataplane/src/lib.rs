//! podpath's dataplane: a poll-mode packet pipeline on DPDK.
//!
//! - [`dpdk`]: the one safe wrapper over DPDK (the only module with `unsafe`).
//! - [`wire`]: zero-copy packet views.
//! - [`pipeline`]: bursts, stages, decisions, counters, trace.
//! - [`stages`]: one file per stage.
//! - [`tables`]: the port map and the per-worker MAC table.
//! - [`port`]: DPDK and memory port backends.
//! - [`snapshot`]: what workers read of the control plane, published as one.
//! - [`worker`]: the poll loop.
//! - [`control`]: the control thread and its socket.
//! - [`config`]: the configuration file.
//! - [`preflight`]: the capabilities and mounts the process needs, checked at start.
//! - [`notify`]: systemd's notify protocol (readiness, a watchdog fed by the workers).
#![deny(unsafe_code)]

pub mod config;
pub mod control;
#[allow(unsafe_code)]
pub mod dpdk;
pub mod notify;
pub mod pipeline;
pub mod port;
pub mod preflight;
pub mod snapshot;
pub mod stages;
pub mod tables;
pub mod wire;
pub mod worker;

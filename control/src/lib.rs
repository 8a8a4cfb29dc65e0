//! podpath's control side: the control service `podpath-control` and the operator CLI
//! `podpathctl`. Neither links DPDK.
//!
//! The service owns the node's desired state ([`state`]): loaded from its
//! configuration file, changed at run time by `podpathctl`, persisted atomically on
//! every change, and reconciled onto the dataplane ([`engine`]) whenever the two
//! connect: after the dataplane restarts, after the service restarts, and after a
//! failed step.
pub mod config;
pub mod engine;
pub mod health;
pub mod http;
pub mod metrics;
pub mod state;
pub mod supervise;
pub mod trace_svg;

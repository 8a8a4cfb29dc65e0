//! podpath-agent: the node agent. It learns the cluster from a source and keeps the
//! node's control service in step; the control service stays the one writer of the
//! node's desired state (persisted, replayed into the dataplane), and the agent is
//! its client as podpathctl is. A separate process because its sources are async
//! (tokio, gRPC for etcd): the control service and the dataplane stay free of them,
//! and the agent can restart without touching either.
//!
//! - `flannel`: flannel's etcd layout and its translation (pure, tested);
//! - `etcd`: the etcd source (lease, keep-alive, list + watch, reconcile);
//! - `kubernetes`: the Kubernetes API source (Nodes, Services, EndpointSlices);
//! - `node`: the calls on the control service;
//! - `bootstrap`: the node's kernel side (host port address and routes, uplink quiet);
//! - `config`: `configs/agent.toml`.
pub mod bootstrap;
pub mod config;
pub mod etcd;
pub mod flannel;
pub mod kubernetes;
pub mod node;

/// The Kubernetes types the agent reads (for benchmarks and tests that build objects).
pub use k8s_openapi;

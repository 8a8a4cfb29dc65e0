//! A node in a large cluster: generated Nodes, Services and EndpointSlices fed through
//! the agent's own translation (`podpath_agent::kubernetes::Cluster`) into a running
//! control service and dataplane, as the Kubernetes source feeds them. Measures the
//! full resync (every object as after a relist, one batch), then single
//! EndpointSlice changes from arrival to every worker applying them (the control
//! service answers after the dataplane's workers acknowledged the snapshot), and the
//! resident memory of the dataplane, the control service and this process (the
//! agent's side: its copy of the objects). Run by bench/cluster-scale.sh.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use podpath_agent::k8s_openapi::api::core::v1::{Node as K8sNode, Service};
use podpath_agent::k8s_openapi::api::discovery::v1::EndpointSlice;
use podpath_agent::kubernetes::{Change, Cluster, Event, Work};
use podpath_agent::node::Node;
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    control: PathBuf,
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    #[arg(long, default_value_t = 100_000)]
    endpoints: usize,
    #[arg(long, default_value_t = 200)]
    changes: usize,
    #[arg(long)]
    dataplane_pid: Option<u32>,
    #[arg(long)]
    control_pid: Option<u32>,
}

fn node(i: usize) -> K8sNode {
    serde_json::from_value(json!({
        "metadata": {"name": format!("node{i}")},
        "spec": {"podCIDR": format!("10.{}.{}.0/24", 128 + i / 256, i % 256)},
        "status": {"addresses": [{"type": "InternalIP", "address": format!("172.16.{}.{}", i / 250, i % 250 + 1)}]}
    }))
    .expect("a Node")
}

fn service(j: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc{j}"), "namespace": "bench"},
        "spec": {"clusterIP": format!("10.96.{}.{}", j / 250, j % 250 + 1),
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    }))
    .expect("a Service")
}

/// Service j's slice with `per` endpoints on the other nodes' pods; `salt` moves one.
fn slice(j: usize, per: usize, nodes: usize, salt: usize) -> EndpointSlice {
    let eps: Vec<_> = (0..per)
        .map(|e| {
            let n = (j * per + e + salt * usize::from(e == 0)) % (nodes - 1) + 1;
            json!({"addresses": [format!("10.{}.{}.{}", 128 + n / 256, n % 256, e + 2)],
                "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect();
    serde_json::from_value(json!({
        "addressType": "IPv4",
        "metadata": {"name": format!("svc{j}-x"), "namespace": "bench",
            "labels": {"kubernetes.io/service-name": format!("svc{j}")}},
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    }))
    .expect("an EndpointSlice")
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The nearest-rank percentile (`per_mille` of 1000) in milliseconds.
fn pct(v: &[Duration], per_mille: usize) -> f64 {
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    s.sort_by(f64::total_cmp);
    let rank = (per_mille * s.len()).div_ceil(1000).max(1);
    s.get(rank - 1).copied().unwrap_or(0.0)
}

fn main() {
    let a = Args::parse();
    let per = (a.endpoints / a.services.max(1)).max(1);
    let log = |m: &str| eprintln!("cluster-scale: {m}");
    let mut ctl = Node::connect(&a.control).expect("the control service");
    let mut c = Cluster::new("node0");
    let t_gen = Instant::now();
    // As a relist delivers them: Init, every object, InitDone; per kind.
    c.take(Change::Node(Box::new(Event::Init)));
    for i in 0..a.nodes {
        c.take(Change::Node(Box::new(Event::InitApply(node(i)))));
    }
    c.take(Change::Node(Box::new(Event::InitDone)));
    c.take(Change::Service(Box::new(Event::Init)));
    for j in 0..a.services {
        c.take(Change::Service(Box::new(Event::InitApply(service(j)))));
    }
    c.take(Change::Service(Box::new(Event::InitDone)));
    c.take(Change::Slice(Box::new(Event::Init)));
    for j in 0..a.services {
        c.take(Change::Slice(Box::new(Event::InitApply(slice(
            j, per, a.nodes, 0,
        )))));
    }
    c.take(Change::Slice(Box::new(Event::InitDone)));
    let gen = t_gen.elapsed();
    let full = Work {
        all_services: true,
        nodes: true,
        ..Work::default()
    };
    let t0 = Instant::now();
    c.apply(&full, &mut ctl, &log).expect("the full resync");
    let resync = t0.elapsed();
    let mut lat = Vec::new();
    for k in 0..a.changes {
        let j = (k * 7919) % a.services;
        let t = Instant::now();
        let w = c.take(Change::Slice(Box::new(Event::Apply(slice(
            j,
            per,
            a.nodes,
            k + 1,
        )))));
        c.apply(&w, &mut ctl, &log).expect("a change");
        lat.push(t.elapsed());
    }
    let state = ctl.state().expect("the state");
    let eps: usize = state.services.iter().map(|s| s.endpoints.len()).sum();
    let report = json!({
        "nodes": a.nodes, "services": a.services, "endpoints": a.endpoints,
        "in_state": {"remotes": state.remotes.len(), "services": state.services.len(), "endpoints": eps},
        "objects_ms": gen.as_secs_f64() * 1e3,
        "full_resync_ms": resync.as_secs_f64() * 1e3,
        "change_ms": {"p50": pct(&lat, 500), "p99": pct(&lat, 990), "max": pct(&lat, 1000), "n": lat.len()},
        "rss_mib": {
            "dataplane": a.dataplane_pid.map_or(0.0, rss_mib),
            "control": a.control_pid.map_or(0.0, rss_mib),
            "agent": rss_mib(std::process::id()),
        }
    });
    println!("{report}");
}

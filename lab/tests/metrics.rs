//! The Prometheus endpoint end to end: a real Prometheus server (Debian's), started
//! by the test inside node 1's namespace with a temporary data directory, scrapes
//! node 1's control service; a PromQL query through its HTTP API returns the rate
//! of the traffic the test sent. Needs root and `prometheus` (scripts/setup.sh).

mod common;
use common::*;
use std::process::Stdio;
use std::time::Duration;

use podpath_lab::{net, Lab};

/// Runs curl in `ns`: its stdout.
fn curl(ns: &str, url: &str) -> String {
    let (_, out) = run_in(ns, "curl", &["-s", "--max-time", "5", url]);
    out
}

#[test]
fn prometheus_scrapes_the_control_service_and_sees_the_traffic_rate() {
    let mut o = options("p");
    o.external = false;
    o.nodes = 1;
    let lab = Lab::up(&o).expect("lab up");
    let n1 = lab.state.nodes[0].clone();
    let (a, b) = (n1.pods[0].clone(), n1.pods[1].clone());
    let metrics = format!("http://{}/metrics", podpath_lab::topo::METRICS_ADDR);
    let text = curl(&n1.netns, &metrics);
    assert!(text.contains("podpath_dataplane_up 1"), "{text}");
    assert!(text.ends_with("# EOF\n"), "not OpenMetrics: {text}");

    let dir = std::env::temp_dir().join(format!("pp-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: podpath\n    static_configs:\n      - targets: ['{}']\n",
            podpath_lab::topo::METRICS_ADDR
        ),
    )
    .unwrap();
    let mut prom = net::command_in(&n1.netns, "prometheus")
        .args([
            &format!("--config.file={}", cfg.display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            "--web.listen-address=127.0.0.1:9090",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (apt-get install prometheus)");
    let api = "http://127.0.0.1:9090";
    let ready = wait_until(Duration::from_secs(30), || {
        curl(&n1.netns, &format!("{api}/-/ready")).contains("Ready")
    });
    // 5 packets a second from pod a for 20 s (stopped after the query).
    let ping = net::command_in(&a.netns, "ping")
        .args(["-i", "0.2", "-c", "100", "-q", &b.ip])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(14));
    let q = format!(
        "{api}/api/v1/query?query=rate(podpath_port_rx_packets_total%7Bport%3D%22{}%22%7D%5B10s%5D)",
        a.port
    );
    let out = curl(&n1.netns, &q);
    let _ = prom.kill();
    let _ = prom.wait();
    let mut ping = ping;
    let _ = ping.kill();
    let _ = ping.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ready, "prometheus did not become ready");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let rate: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {out}"));
    assert!(
        // Prometheus extrapolates rate() over 1 s scrapes: within 25 %.
        (3.75..=6.25).contains(&rate),
        "rate of pod a's port {rate:.2}/s, the test sent 5/s: {out}"
    );
}

//! The traffic generator end to end on a real DPDK port: a `net_ring` device loops
//! every transmitted frame back to its own receive queue, so every frame sent must come
//! back stamped, in order, with a latency; a paced run must hold its rate.
use std::process::Command;

fn gen(extra: &[&str]) -> serde_json::Value {
    // Tests run in parallel: each run its own file and DPDK prefix.
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let tag = format!(
        "ppgen-test-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let json = std::env::temp_dir().join(format!("{tag}.json"));
    let prefix = format!("--eal=--file-prefix={tag}");
    let out = Command::new(env!("CARGO_BIN_EXE_podpath-gen"))
        .args([
            "--tx",
            "net_ring0",
            "--duration",
            "1",
            "--eal=--no-huge",
            "--eal=-m",
            "--eal=128",
        ])
        .args(["--eal=--no-pci", "--eal=--no-shconf", &prefix, "--json"])
        .arg(&json)
        .args(extra)
        .output()
        .expect("run podpath-gen");
    assert!(
        out.status.success(),
        "podpath-gen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    v
}

fn is_root() -> bool {
    // /proc/self/status names the effective uid (second field of "Uid:").
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn loopback_returns_every_frame_stamped() {
    assert!(
        is_root(),
        "this test starts DPDK and needs root: run it through scripts/test.sh as root"
    );
    for extra in [
        &["--flows", "1000"][..],
        &[
            "--flows", "1000", "--random", "--vxlan", "42", "--size", "128",
        ],
    ] {
        let v = gen(extra);
        let sent = v["sent"].as_u64().unwrap();
        assert!(sent > 10_000, "{extra:?}: only {sent} frames sent");
        assert_eq!(v["stamped"].as_u64(), Some(sent), "{extra:?}: {v}");
        assert_eq!(v["lost"].as_u64(), Some(0));
        assert_eq!(v["out_of_order"].as_u64(), Some(0));
        assert!(v["latency_us"]["p50"].as_f64().unwrap() > 0.0);
        assert!(v["latency_us"]["p50"].as_f64() <= v["latency_us"]["p99"].as_f64());
    }
}

#[test]
fn paced_run_holds_its_rate() {
    assert!(
        is_root(),
        "this test starts DPDK and needs root: run it through scripts/test.sh as root"
    );
    let v = gen(&["--rate", "20000"]);
    let sent = v["sent"].as_u64().unwrap();
    // 1 s at 20 000 packets per second; pacing is by TSC, so only the loop's end
    // (at most one burst) separates it from the exact count.
    assert!(
        (19_900..=20_032).contains(&sent),
        "sent {sent} at 20 000 pps for 1 s"
    );
    assert_eq!(v["stamped"].as_u64(), Some(sent));
}

#[test]
fn bad_arguments_are_refused_before_dpdk_starts() {
    let out = Command::new(env!("CARGO_BIN_EXE_podpath-gen"))
        .args(["--tx", "net_ring0", "--size", "70", "--vxlan", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not fit"));
}

//! Runs one path for a number of bursts, for counting instructions under callgrind:
//! `valgrind --tool=callgrind pipeline-count PATH FLOWS BURSTS`. Run twice with
//! different burst counts and subtract (bench/pipeline.sh does): the difference divided by
//! the extra packets is the per-packet instruction count, set-up excluded.
//!
//! `pipeline-count --report PATH FLOWS BURSTS` instead times the measured bursts (wall
//! clock and the stages' own TSC counters) and prints one JSON line: Mpps on this
//! core, cycles per packet in total and per stage (bench/pipeline.sh collects them).
use std::time::Instant;

use podpath_dataplane::pipeline::counters::get;
use podpath_dataplane::pipeline::StageId;

fn main() {
    let mut a: Vec<String> = std::env::args().collect();
    let report = a.get(1).is_some_and(|s| s == "--report");
    if report {
        a.remove(1);
    }
    // `--workers N`: N pipelines joined by hand-off rings (bursts arrive at worker 0).
    let mut workers = 1u16;
    if a.get(1).is_some_and(|s| s == "--workers") {
        workers = a.get(2).and_then(|s| s.parse().ok()).expect("--workers N");
        a.drain(1..3);
    }
    let usage = "usage: pipeline-count [--report] [--workers N] PATH FLOWS BURSTS (paths: l2-bridge ip4-route vxlan-encap \
                 vxlan-decap snat-established snat-new service-established service-new mixed)";
    let path = a
        .get(1)
        .and_then(|s| podpath_bench::Path::parse(s))
        .expect(usage);
    let flows: usize = a.get(2).and_then(|s| s.parse().ok()).expect(usage);
    let bursts: usize = a.get(3).and_then(|s| s.parse().ok()).expect(usage);
    // "New" paths: every measured packet is a new flow (the flows are never cycled).
    let flows = if path.is_new() {
        flows.max(bursts * 32 + 32)
    } else {
        flows
    };
    let mut rig = podpath_bench::Rig::with_workers(path, flows, workers);
    // Warm the tables with every flow once, outside the measured difference (not for
    // "new" paths, which measure the first packet of each connection).
    if !path.is_new() {
        for _ in 0..flows.div_ceil(32) {
            rig.step();
        }
    }
    let c = &rig.p.counters;
    let stage_cycles = |c: &podpath_dataplane::pipeline::WorkerCounters| -> Vec<u64> {
        StageId::ALL
            .iter()
            .map(|st| get(&c.stages[st.index()].cycles))
            .collect()
    };
    let (rx0, cyc0, ho0) = (c.rx_total(), stage_cycles(c), rig.handed_off());
    let t0 = Instant::now();
    for _ in 0..bursts {
        rig.step();
    }
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(rig.dropped(), 0, "packets were dropped");
    if report {
        let c = &rig.p.counters;
        let pkts = (c.rx_total() - rx0) as f64;
        let cyc = stage_cycles(c);
        let per_stage: serde_json::Map<String, serde_json::Value> = StageId::ALL
            .iter()
            .zip(cyc.iter().zip(&cyc0))
            .filter(|(_, (a, b))| a > b)
            .map(|(st, (a, b))| (st.name().to_string(), ((a - b) as f64 / pkts).into()))
            .collect();
        let total: u64 = cyc.iter().zip(&cyc0).map(|(a, b)| a - b).sum();
        println!(
            "{}",
            serde_json::json!({
                "path": path.name(), "flows": flows, "packets": pkts,
                "mpps": pkts / secs / 1e6,
                "ns_per_packet": secs * 1e9 / pkts,
                "stage_cycles_per_packet": total as f64 / pkts,
                "workers": workers,
                "handed_off_share": (rig.handed_off() - ho0) as f64 / pkts,
                "stages": per_stage,
            })
        );
        return;
    }
    if std::env::var_os("SHOW_RUNTIME").is_some() {
        // Like VPP's `show runtime`: where the TSC cycles went, per stage.
        let c = &rig.p.counters;
        let rx = c.rx_total().max(1) as f64;
        println!(
            "{:<12} {:>12} {:>10} {:>14}",
            "stage", "packets", "calls", "cycles/packet"
        );
        for st in StageId::ALL {
            let s = &c.stages[st.index()];
            let n = get(&s.packets);
            if n > 0 {
                println!(
                    "{:<12} {:>12} {:>10} {:>14.1}",
                    st.name(),
                    n,
                    get(&s.calls),
                    get(&s.cycles) as f64 / n as f64
                );
            }
        }
        let total: u64 = StageId::ALL
            .iter()
            .map(|st| get(&c.stages[st.index()].cycles))
            .sum();
        println!(
            "{:<12} {:>12} {:>10} {:>14.1}",
            "all stages",
            c.rx_total(),
            "",
            total as f64 / rx
        );
    }
}

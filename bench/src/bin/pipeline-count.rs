//! Runs one path for a number of bursts, for counting instructions under callgrind:
//! `valgrind --tool=callgrind pipeline-count PATH FLOWS BURSTS`. Run twice with
//! different burst counts and subtract (bench/count.sh does): the difference divided by
//! the extra packets is the per-packet instruction count, set-up excluded.
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let usage = "usage: pipeline-count PATH FLOWS BURSTS (paths: l2-bridge ip4-route vxlan-encap \
                 vxlan-decap snat-established snat-new service-established service-new)";
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
    let mut rig = podpath_bench::Rig::new(path, flows);
    // Warm the tables with every flow once, outside the measured difference (not for
    // "new" paths, which measure the first packet of each connection).
    if !path.is_new() {
        for _ in 0..flows.div_ceil(32) {
            rig.step();
        }
    }
    for _ in 0..bursts {
        rig.step();
    }
    assert_eq!(rig.dropped(), 0, "packets were dropped");
    if std::env::var_os("SHOW_RUNTIME").is_some() {
        // Like VPP's `show runtime`: where the TSC cycles went, per stage.
        use podpath_dataplane::pipeline::counters::get;
        use podpath_dataplane::pipeline::StageId;
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

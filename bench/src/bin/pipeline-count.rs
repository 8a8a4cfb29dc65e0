//! Runs one path for a number of bursts, for counting instructions under callgrind:
//! `valgrind --tool=callgrind pipeline-count PATH FLOWS BURSTS`. Run twice with
//! different burst counts and subtract (bench/count.sh does): the difference divided by
//! the extra packets is the per-packet instruction count, set-up excluded.
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let usage = "usage: pipeline-count l2-bridge|ip4-route|vxlan-encap|vxlan-decap FLOWS BURSTS";
    let path = a
        .get(1)
        .and_then(|s| podpath_bench::Path::parse(s))
        .expect(usage);
    let flows: usize = a.get(2).and_then(|s| s.parse().ok()).expect(usage);
    let bursts: usize = a.get(3).and_then(|s| s.parse().ok()).expect(usage);
    let mut rig = podpath_bench::Rig::new(path, flows);
    // Warm the tables with every flow once, outside the measured difference.
    for _ in 0..flows.div_ceil(32) {
        rig.step();
    }
    for _ in 0..bursts {
        rig.step();
    }
    assert_eq!(rig.dropped(), 0, "packets were dropped");
}

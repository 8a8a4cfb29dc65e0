//! The pipeline per path on pre-built frames (memory backend, no kernel I/O):
//! `cargo bench -p podpath-bench`. Criterion reports time per burst of 32; divide by
//! 32 for time per packet. Instruction counts: see docs/performance.md.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use podpath_bench::BridgeRig;
use podpath_dataplane::pipeline::Meta;
use podpath_dataplane::pipeline::BURST;
use podpath_dataplane::stages::eth_input::classify;

fn bridge(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(BURST as u64));
    for flows in [1u16, 1000] {
        let mut rig = BridgeRig::new(4 * BURST, flows);
        g.bench_function(format!("l2-bridge/{flows}-flows"), |b| {
            b.iter(|| rig.step())
        });
    }
    g.finish();
}

fn parse(c: &mut Criterion) {
    let f = podpath_bench::pod_frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], 1);
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    g.bench_function("eth-input-classify/udp", |b| {
        b.iter(|| {
            let mut m = Meta::default();
            classify(std::hint::black_box(&f), &mut m)
        })
    });
    g.finish();
}

criterion_group!(benches, bridge, parse);
criterion_main!(benches);

//! The pipeline per path on pre-built frames (memory backend, no kernel I/O):
//! `cargo bench -p podpath-bench --bench pipeline`. Criterion reports time per burst
//! of 32 (and packets per second); see docs/performance.md for instruction counts.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use podpath_bench::{Path, Rig};
use podpath_dataplane::eth::input::classify;
use podpath_dataplane::pipeline::{Meta, RxChecksum, BURST};

fn paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(BURST as u64));
    for path in Path::ALL {
        for flows in [1usize, 10_000] {
            let mut rig = Rig::new(path, flows);
            rig.step();
            assert_eq!(rig.dropped(), 0, "{} drops packets", path.name());
            g.bench_function(format!("{}/{flows}-flows", path.name()), |b| {
                b.iter(|| rig.step())
            });
        }
    }
    g.finish();
}

fn parse(c: &mut Criterion) {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 244, 0, 2], [10, 244, 0, 3], 64)
        .udp(1000, 5000)
        .write(&mut v, &[0u8; 18])
        .unwrap();
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    g.bench_function("eth-input-classify/udp", |b| {
        b.iter(|| {
            let mut m = Meta::default();
            classify(std::hint::black_box(&v), &mut m, RxChecksum::Unknown)
        })
    });
    g.finish();
}

criterion_group!(benches, paths, parse);
criterion_main!(benches);

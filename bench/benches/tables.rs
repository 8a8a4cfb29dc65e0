//! Table micro-benchmarks: connection-table lookup and insert, LPM lookup and the
//! bridge's learn+lookup, at 1 000, 100 000 and 1 000 000 entries, random keys.
//! `cargo bench -p podpath-bench --bench tables`.
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use podpath_dataplane::bridge::mac::MacTable;
use podpath_dataplane::ip4::lpm::{mask, Lpm, Route};
use podpath_dataplane::nat::conntrack::{Conntrack, Timeouts, Tuple};
use podpath_dataplane::wire::MacAddr;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn u32(&mut self) -> u32 {
        u32::try_from(self.next() >> 32).unwrap_or(0)
    }
}

fn tuple(r: &mut Rng) -> Tuple {
    let x = r.next();
    Tuple {
        src: 0x0af4_0000 | u32::try_from(x & 0xffff).unwrap_or(0),
        dst: r.u32(),
        sport: u16::try_from((x >> 16) & 0xffff).unwrap_or(0),
        dport: 443,
        proto: 6,
    }
}

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

fn conntrack(c: &mut Criterion) {
    let mut g = c.benchmark_group("conntrack");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let mut r = Rng(7);
        let mut ct = Conntrack::new(n, Timeouts::default(), 0);
        let keys: Vec<Tuple> = (0..n).map(|_| tuple(&mut r)).collect();
        for (k, t) in keys.iter().enumerate() {
            let mut rep = t.reversed();
            rep.dport = u16::try_from(k % 60000).unwrap_or(0);
            let _ = ct.insert(*t, rep, 0);
        }
        let mut k = 0;
        g.bench_function(format!("lookup-hit/{n}"), |b| {
            b.iter(|| {
                k = (k + 7919) % n;
                ct.lookup(&keys[k], 1)
            })
        });
        g.bench_function(format!("lookup-miss/{n}"), |b| {
            b.iter(|| {
                let t = tuple(&mut r);
                ct.lookup(&t, 1)
            })
        });
        // Insert into a table holding n-1 entries (then remove, to stay at n-1).
        g.bench_function(format!("insert/{n}"), |b| {
            b.iter_batched(
                || tuple(&mut r),
                |t| {
                    if let Ok(i) = ct.insert(t, t.reversed(), 1) {
                        ct.remove(i);
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn lpm(c: &mut Criterion) {
    let mut g = c.benchmark_group("lpm");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let mut r = Rng(11);
        let routes: Vec<Route> = (0..n)
            .map(|i| {
                // Like an Internet table: mostly /24 and shorter, 5 % longer.
                let len = if r.next().is_multiple_of(20) {
                    25 + u8::try_from(r.next() % 8).unwrap_or(0)
                } else {
                    8 + u8::try_from(r.next() % 17).unwrap_or(16)
                };
                Route {
                    prefix: r.u32() & mask(len),
                    len,
                    next_hop: 1 + u32::try_from(i % 1_000_000).unwrap_or(0),
                }
            })
            .collect();
        let t = Lpm::build(&routes).expect("the table builds");
        g.bench_function(format!("lookup-random/{n}"), |b| {
            b.iter(|| t.lookup(r.u32()))
        });
    }
    g.finish();
}

fn bridge(c: &mut Criterion) {
    let mut g = c.benchmark_group("bridge");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let mut r = Rng(13);
        let mut t = MacTable::new(n, u64::MAX / 2);
        let macs: Vec<MacAddr> = (0..n)
            .map(|_| {
                let x = r.next().to_be_bytes();
                MacAddr([x[0] & 0xfe, x[1], x[2], x[3], x[4], x[5]])
            })
            .collect();
        for (i, m) in macs.iter().enumerate() {
            t.learn(1, *m, u16::try_from(i % 30).unwrap_or(0), 0);
        }
        let mut k = 0;
        g.bench_function(format!("learn-and-lookup/{n}"), |b| {
            b.iter(|| {
                k = (k + 7919) % n;
                t.learn(1, macs[k], 3, 1);
                t.lookup(1, macs[(k + 1) % n], 1)
            })
        });
    }
    g.finish();
}

fn maglev(c: &mut Criterion) {
    use podpath_dataplane::services::maglev::{Backend, Maglev, DEFAULT_SIZE};
    let mut g = c.benchmark_group("maglev");
    let backends: Vec<Backend> = (0..1000)
        .map(|i| Backend {
            key: format!("10.244.{}.{}:8080", i / 250, 2 + i % 250),
            weight: 1,
        })
        .collect();
    g.sample_size(10);
    g.bench_function("build/1000-endpoints", |b| {
        b.iter(|| Maglev::build(&backends, DEFAULT_SIZE))
    });
    let t = Maglev::build(&backends, DEFAULT_SIZE).expect("builds");
    let mut r = Rng(17);
    g.throughput(Throughput::Elements(1));
    g.bench_function("lookup/1000-endpoints", |b| b.iter(|| t.pick(r.next())));
    g.finish();
}

criterion_group!(benches, conntrack, lpm, bridge, maglev);
criterion_main!(benches);

//! `podpath-dataplane`: starts DPDK, attaches the configured ports, launches one
//! worker per worker lcore, and serves the control socket until SIGINT/SIGTERM.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use crossbeam::channel::{bounded, unbounded};
use ringbuf::traits::Split;
use ringbuf::HeapRb;

use podpath_dataplane::config::{free_hugepages, Config, Hugepages};
use podpath_dataplane::control::{Control, WorkerHandle};
use podpath_dataplane::dpdk::{Eal, Mempool};
use podpath_dataplane::nat::conntrack::{state as ct_state, Conntrack};
use podpath_dataplane::pipeline::{Pipeline, PipelineConfig, Tracer, WorkerCounters};
use podpath_dataplane::port::DpdkIo;
use podpath_dataplane::preflight;
use podpath_dataplane::worker::Worker;
use podpath_proto::server::{self, Job};

#[derive(Parser)]
#[command(version, about = "podpath's poll-mode dataplane (DPDK)")]
struct Args {
    /// Configuration file (TOML); see configs/.
    #[arg(short, long)]
    config: PathBuf,
    /// Override dataplane.socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Override eal.file_prefix.
    #[arg(long)]
    file_prefix: Option<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("podpath-dataplane: {msg}");
}

/// Writes what the dataplane was told to `p` when it changed (atomically: a
/// restarted process reads all of it or the previous version).
fn save_applied(p: &std::path::Path, now: &[podpath_proto::Request], saved: &mut Vec<u8>) {
    let Ok(body) = podpath_proto::codec::encode(&now) else {
        return;
    };
    // `encode` frames it; the file holds the body.
    let body = body.get(4..).unwrap_or_default().to_vec();
    if body == *saved {
        return;
    }
    let tmp = p.with_extension("new");
    match std::fs::write(&tmp, &body).and_then(|()| std::fs::rename(&tmp, p)) {
        Ok(()) => *saved = body,
        Err(e) => log(format!("{}: {e}", p.display())),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("podpath-dataplane: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    let mut cfg = Config::load(&args.config)?;
    if let Some(s) = args.socket {
        cfg.dataplane.socket = s;
    }
    if let Some(p) = args.file_prefix {
        cfg.eal.file_prefix = p;
    }
    cfg.validate()?;
    if args.check {
        println!("{}: ok", args.config.display());
        return Ok(());
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }

    // Before EAL: a missing capability or mount is named here, not deep inside EAL.
    preflight::raise();
    let (eal_args, huge) = cfg.eal_args();
    for w in preflight::check_capabilities(huge).map_err(anyhow::Error::msg)? {
        log(format!("warning: {w}"));
    }
    if cfg.eal.hugepages == Hugepages::On {
        preflight::hugetlbfs().map_err(|e| anyhow::anyhow!("eal.hugepages = \"on\": {e}"))?;
    }
    if !huge && cfg.eal.hugepages == Hugepages::Auto {
        let why = match preflight::hugetlbfs() {
            Err(e) if free_hugepages() > 0 => e,
            _ => "no free hugepages".into(),
        };
        log(format!(
            "{why}: running with --no-huge -m {} (reserve hugepages for production)",
            cfg.eal.memory_mb
        ));
    }
    let eal = Eal::init(&eal_args)?;
    let tsc_hz = eal.tsc_hz();
    let workers = eal.worker_lcores().to_vec();
    log(format!(
        "{} started: control on lcore {}, workers on lcores {:?}",
        podpath_dataplane::dpdk::version(),
        eal.main_lcore(),
        workers
    ));
    // The connection tables' state files, one per worker, opened before anything
    // else is set up: a locked or unallocatable one stops the start here, by name.
    let nat = (cfg.nat.port_min, cfg.nat.port_max);
    let mut states: Vec<Option<ct_state::Opened>> = Vec::new();
    if !cfg.dataplane.state_dir.as_os_str().is_empty() {
        let _ = std::fs::create_dir_all(&cfg.dataplane.state_dir);
        if podpath_dataplane::dpdk::region::in_memory(&cfg.dataplane.state_dir) == Some(false) {
            log(format!(
                "warning: dataplane.state_dir {} is not on tmpfs: every connection change is a \
                 disk write and a worker may wait for writeback; use a tmpfs (/run on a node)",
                cfg.dataplane.state_dir.display()
            ));
        }
        for i in 0..workers.len() {
            let owner = ct_state::Owner {
                worker: u16::try_from(i)?,
                workers: u16::try_from(workers.len())?,
                nat,
            };
            states.push(Some(ct_state::open(
                &cfg.dataplane.state_dir,
                owner,
                cfg.conntrack.reserved(),
            )?));
        }
    }
    let pool = Mempool::new(
        "podpath_mbufs",
        cfg.dataplane.mbufs,
        cfg.dataplane.mbuf_cache,
        podpath_dataplane::control::MBUF_DATA_ROOM,
    )?;

    let (retired_tx, retired_rx) = unbounded();
    let mut ctl = Control::new(
        pool,
        retired_rx,
        tsc_hz,
        cfg.dataplane.rx_desc,
        cfg.dataplane.tx_desc,
        cfg.conntrack,
    );
    ctl.set_max_frame(cfg.dataplane.max_frame);
    ctl.set_departed_ttl(Duration::from_secs(u64::from(
        cfg.conntrack.timeouts.tcp_established,
    )));
    // Workers must exist (for queue counts) before ports: make their handles first.
    let mut handles = Vec::new();
    let mut pending = Vec::new();
    for (i, &lcore) in workers.iter().enumerate() {
        // Room for a queue grant and a snapshot per attached port before launch.
        let (tx, rx) = bounded(256);
        let counters = Arc::new(WorkerCounters::default());
        let (prod, cons) = HeapRb::new(4096).split();
        let id = u16::try_from(i)?;
        handles.push(WorkerHandle {
            id,
            lcore,
            tx,
            counters: Arc::clone(&counters),
            trace: cons,
        });
        pending.push((id, lcore, rx, counters, prod));
    }
    ctl.set_workers(handles);
    for spec in cfg.ports.clone() {
        let name = spec.name.clone();
        let info = ctl
            .attach(spec)
            .map_err(|e| anyhow::anyhow!(e.message))
            .with_context(|| format!("attaching port {name}"))?;
        log(format!(
            "port {} attached: id {} driver {} mac {}",
            info.name, info.id, info.driver, info.mac
        ));
    }
    if let Some(node) = cfg.node.clone() {
        ctl.node_set(node)
            .map_err(|e| anyhow::anyhow!(e.message))
            .context("[node]")?;
        for r in cfg.remotes.clone() {
            let name = r.name.clone();
            if let podpath_proto::Response::Error(e) =
                ctl.handle(podpath_proto::Request::RemoteAdd(r))
            {
                anyhow::bail!("[[remote]] {name}: {}", e.message);
            }
        }
    }
    let applied_path = (!cfg.dataplane.state_dir.as_os_str().is_empty())
        .then(|| cfg.dataplane.state_dir.join("applied"));
    let mut saved = Vec::new();
    ctl.reclaim();
    // The socket before the workers: a failure here leaves nothing running.
    let listener =
        server::bind_socket(&cfg.dataplane.socket, cfg.dataplane.socket_group.as_deref())
            .with_context(|| format!("control socket {}", cfg.dataplane.socket.display()))?;

    let ageing = u64::from(cfg.bridge.ageing_s) * tsc_hz;
    // Each worker's neighbour inbox and hand-off ring; every worker can send to all
    // the others.
    let nworkers = pending.len();
    let bus: Vec<_> = (0..nworkers).map(|_| bounded(1024)).collect();
    // 1024 packets from each worker to each other (a crossbeam channel of 4096 was
    // shared by all senders before).
    let mut handoff: Vec<_> = podpath_dataplane::pipeline::handoff::mesh(nworkers, 1024)
        .into_iter()
        .map(Some)
        .collect();
    let mut launched = Vec::new();
    let mut launch_error = None;
    for (id, lcore, rx, counters, prod) in pending {
        let pcfg = PipelineConfig {
            worker: id,
            mac_capacity: cfg.bridge.max_macs,
            mac_ageing_ticks: ageing,
            tsc_hz,
            conntrack: cfg.conntrack,
            nat_range: (cfg.nat.port_min, cfg.nat.port_max),
            workers: u16::try_from(nworkers).unwrap_or(1),
        };
        // Drain the snapshots (and queue grants) already queued: start from the
        // current one, as its generation, with the tokens for its queues.
        while rx.try_recv().is_ok() {}
        let snap = ctl.current_snapshot();
        let mut io = DpdkIo::new(pool);
        io.grant(ctl.grant(&snap.ports, usize::from(id)));
        let gen = ctl.generation();
        counters.applied_gen.store(gen, Ordering::Release);
        counters.settled_gen.store(gen, Ordering::Release);
        let mut pipeline = Pipeline::new(
            &pcfg,
            snap.ports,
            Arc::clone(&counters),
            Tracer::new(id, Some(prod)),
        );
        if let Some(st) = states.get_mut(usize::from(id)).and_then(Option::take) {
            let (outcome, path) = (st.outcome.clone(), st.path.clone());
            let now =
                u32::try_from(podpath_dataplane::dpdk::rdtsc() / tsc_hz.max(1)).unwrap_or(u32::MAX);
            let (ct, r) =
                Conntrack::resume(cfg.conntrack.capacity, cfg.conntrack.timeouts, now, st);
            pipeline.features.nat.conntrack = ct;
            counters
                .ct_restored
                .store(r.restored as u64, Ordering::Relaxed);
            log(match outcome {
                ct_state::Outcome::Fresh => {
                    format!("worker {id}: connections in {}", path.display())
                }
                ct_state::Outcome::Refused(why) => format!(
                    "worker {id}: {} not resumed: {why}; kept as .refused, starting empty",
                    path.display()
                ),
                o => format!(
                    "worker {id}: {} {}: {} connections resumed, {} expired meanwhile, {} \
                     invalid, {} duplicate; clock shifted {} s",
                    path.display(),
                    if o == ct_state::Outcome::Resumed {
                        "resumed".to_string()
                    } else {
                        format!("{o:?}")
                    },
                    r.restored,
                    r.expired,
                    r.invalid,
                    r.duplicate,
                    r.shift
                ),
            });
        }
        pipeline.set_l3(snap.l3);
        pipeline.set_services(snap.services);
        pipeline.set_installed_gen(gen);
        let peers = bus
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != usize::from(id))
            .map(|(_, (tx, _))| tx.clone())
            .collect();
        pipeline.set_peer_bus(peers, bus[usize::from(id)].1.clone());
        if let Some(ends) = handoff.get_mut(usize::from(id)).and_then(Option::take) {
            pipeline.set_handoff(ends);
        }
        let worker = Worker::new(
            id,
            io,
            pipeline,
            rx,
            retired_tx.clone(),
            Arc::clone(&stop),
            cfg.idle,
            (ageing / 8).max(tsc_hz / 10),
            u64::from(cfg.dataplane.tx_drain_us) * tsc_hz / 1_000_000,
        );
        match eal.launch(lcore, move || worker.run()) {
            Ok(()) => launched.push(lcore),
            Err(e) => {
                launch_error = Some(e);
                break;
            }
        }
    }

    if launch_error.is_none() {
        ctl.set_launched();
    }
    let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<Job>(64);
    let serve_stop = Arc::clone(&stop);
    let server = std::thread::spawn(move || server::serve(listener, jobs_tx, serve_stop));
    if launch_error.is_none() {
        // What the last process was told (its ports, node, remotes, Services),
        // replayed once the workers run (each change waits for their
        // acknowledgement), before any request: forwarding resumes without waiting
        // for the control service to reconnect.
        if let Some(p) = &applied_path {
            match std::fs::read(p) {
                Ok(bytes) => {
                    match podpath_proto::codec::decode::<Vec<podpath_proto::Request>>(&bytes) {
                        Ok(reqs) => {
                            let n = reqs.len();
                            let problems = ctl.replay(reqs);
                            log(format!(
                                "replayed {n} item(s) of {}{}",
                                p.display(),
                                if problems.is_empty() {
                                    String::new()
                                } else {
                                    format!("; skipped: {}", problems.join("; "))
                                }
                            ));
                        }
                        Err(e) => log(format!("{}: unreadable ({e}); not replayed", p.display())),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log(format!("{}: {e}; not replayed", p.display())),
            }
        }
        // What the configuration and the replay made, as the starting point.
        if let Some(p) = &applied_path {
            save_applied(p, &ctl.applied(), &mut saved);
        }
        log(format!("control socket {}", cfg.dataplane.socket.display()));
        let mut notifier = podpath_dataplane::notify::Notifier::from_env();
        notifier.ready(&format!("{} worker(s) forwarding", launched.len()));
        while !stop.load(Ordering::Relaxed) {
            notifier.tick(
                ctl.workers()
                    .iter()
                    .map(|w| w.counters.polls.load(Ordering::Relaxed)),
            );
            // Only a request or a re-attach changes what `applied` holds.
            let mut changed = false;
            if let Ok((req, reply)) = jobs_rx.recv_timeout(Duration::from_millis(100)) {
                changed = !req.is_read_only();
                let resp = ctl.handle(req);
                let _ = reply.send(resp);
            }
            ctl.reclaim();
            ctl.capture_housekeeping();
            if let Some(m) = ctl.watch() {
                changed = true;
                log(m);
            }
            if let Some(p) = applied_path.as_ref().filter(|_| changed) {
                save_applied(p, &ctl.applied(), &mut saved);
            }
        }
        log("stopping");
        notifier.stopping();
    }
    // Every path ends here: workers stop and return before any port is closed, and
    // ports are closed before the EAL is cleaned up.
    stop.store(true, Ordering::SeqCst);
    for &l in &launched {
        eal.wait(l);
    }
    if launch_error.is_none() {
        let stats = ctl.stats();
        println!("{}", podpath_proto::render::stats_table(&stats, false));
    }
    ctl.detach_all();
    drop(ctl);
    let _ = std::fs::remove_file(&cfg.dataplane.socket);
    let _ = server.join();
    drop(eal);
    if let Some(e) = launch_error {
        return Err(e.into());
    }
    Ok(())
}

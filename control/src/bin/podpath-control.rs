//! `podpath-control`: the control service of one node. Owns the desired state
//! (configuration file, then the persisted state file), serves podpathctl, and keeps
//! the dataplane reconciled to it across restarts of either process.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use podpath_control::config::Config;
use podpath_control::engine::Engine;
use podpath_control::state::State;
use podpath_control::supervise::{Happened, Supervisor};
use podpath_proto::server::{self, Job};

#[derive(Parser)]
#[command(version, about = "podpath's control service")]
struct Args {
    /// Configuration file (TOML); see configs/control.toml.
    #[arg(short, long)]
    config: PathBuf,
    /// Ignore the persisted state and start again from the configuration file.
    #[arg(long)]
    reset_state: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("podpath-control: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    let cfg = Config::load(&args.config)?;
    let c = &cfg.control;
    let persisted = if args.reset_state {
        None
    } else {
        State::load(&c.state_file).map_err(anyhow::Error::msg)?
    };
    let state = match persisted {
        Some(s) => {
            eprintln!(
                "podpath-control: desired state from {}",
                c.state_file.display()
            );
            s
        }
        None => State {
            ports: cfg.ports.clone(),
            macs: cfg.macs.clone(),
            node: cfg.node.clone(),
            remotes: cfg.remotes.clone(),
            services: cfg.services.clone(),
            conntrack: None,
        },
    };
    state
        .validate()
        .map_err(|e| anyhow::anyhow!(e.message))
        .context("the desired state is invalid")?;
    state
        .save(&c.state_file)
        .with_context(|| format!("writing {}", c.state_file.display()))?;

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let listener = server::bind_socket(&c.socket, c.socket_group.as_deref())
        .with_context(|| format!("control socket {}", c.socket.display()))?;
    eprintln!(
        "podpath-control: serving {}, dataplane at {}",
        c.socket.display(),
        c.dataplane_socket.display()
    );
    let (jobs_tx, jobs_rx) = sync_channel::<Job>(64);
    if let Some(addr) = c.metrics {
        let l =
            std::net::TcpListener::bind(addr).with_context(|| format!("metrics address {addr}"))?;
        eprintln!("podpath-control: metrics at http://{addr}/metrics");
        let (jobs, s3) = (jobs_tx.clone(), Arc::clone(&stop));
        std::thread::spawn(move || serve_metrics(l, &jobs, &s3));
    }
    if let Some(ro) = &c.readonly_socket {
        serve_read_only(
            ro,
            c.readonly_socket_group.as_deref(),
            jobs_tx.clone(),
            &stop,
        )?;
    }
    let s2 = Arc::clone(&stop);
    let srv = std::thread::spawn(move || server::serve(listener, jobs_tx, s2));

    let mut engine = Engine::new(state, c.state_file.clone(), c.dataplane_socket.clone());
    let every = Duration::from_millis(c.check_interval_ms.max(10));
    let mut supervisor = (!c.dataplane_command.is_empty()).then(|| {
        eprintln!(
            "podpath-control: supervising the dataplane: {}",
            c.dataplane_command.join(" ")
        );
        Supervisor::new(c.dataplane_command.clone(), c.dataplane_log.clone())
    });
    let mut check = |engine: &mut Engine| {
        engine.tick();
        if let Some(s) = supervisor.as_mut() {
            for h in s.check(engine.connected()) {
                let (kind, detail) = match h {
                    Happened::Started { pid } => ("dataplane-started", format!("pid {pid}")),
                    Happened::Exited { pid, how } => {
                        ("dataplane-exited", format!("pid {pid} {how}"))
                    }
                    Happened::StartFailed(e) => ("dataplane-start-failed", e),
                };
                eprintln!("podpath-control: {kind}: {detail}");
                engine.note(kind, detail);
            }
            engine.dataplane_restarts = s.restarts;
        }
    };
    check(&mut engine);
    let mut last = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Ok((req, reply)) = jobs_rx.recv_timeout(every) {
            let _ = reply.send(engine.handle(req));
        }
        if last.elapsed() >= every {
            check(&mut engine);
            last = std::time::Instant::now();
        }
    }
    // Leaving does not touch the dataplane: forwarding goes on.
    let _ = std::fs::remove_file(&c.socket);
    if let Some(ro) = &c.readonly_socket {
        let _ = std::fs::remove_file(ro);
    }
    let _ = srv.join();
    Ok(())
}

/// The read-only socket: its own server, whose requests reach the engine's queue
/// only when they read; anything else is refused there, by name, and changes
/// nothing.
fn serve_read_only(
    path: &std::path::Path,
    group: Option<&str>,
    engine: std::sync::mpsc::SyncSender<Job>,
    stop: &Arc<AtomicBool>,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let l = server::bind_socket(path, group)
        .with_context(|| format!("control.readonly_socket {}", path.display()))?;
    if group.is_none() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            .with_context(|| format!("control.readonly_socket {}", path.display()))?;
    }
    eprintln!("podpath-control: read-only socket {}", path.display());
    let (tx, rx) = sync_channel::<Job>(64);
    let s = Arc::clone(stop);
    std::thread::spawn(move || server::serve(l, tx, s));
    std::thread::spawn(move || {
        for (req, reply) in rx {
            if req.is_read_only() {
                if engine.send((req, reply)).is_err() {
                    return;
                }
            } else {
                let _ = reply.send(podpath_proto::Response::Error(podpath_proto::ErrorReply {
                    kind: podpath_proto::ErrorKind::BadRequest,
                    message: "this is the read-only socket (control.readonly_socket): it answers \
                              stats, lists, state and events; changes go to the control socket"
                        .into(),
                }));
            }
        }
    });
    Ok(())
}

/// Asks the engine (through the same queue as socket clients, so it never races a
/// change) for one answer.
fn ask(
    jobs: &std::sync::mpsc::SyncSender<Job>,
    req: podpath_proto::Request,
) -> Option<podpath_proto::Response> {
    let (tx, rx) = sync_channel(1);
    jobs.send((req, tx)).ok()?;
    rx.recv_timeout(Duration::from_secs(10)).ok()
}

/// The `/metrics` endpoint: one `Stats` and one `ServiceList` per scrape.
fn serve_metrics(
    l: std::net::TcpListener,
    jobs: &std::sync::mpsc::SyncSender<Job>,
    stop: &AtomicBool,
) {
    podpath_control::http::serve(l, stop, |path| {
        if path != "/metrics" && !path.starts_with("/metrics?") {
            return podpath_control::http::Answer {
                code: 404,
                content_type: "text/plain",
                body: "see /metrics\n".into(),
            };
        }
        let stats = match ask(jobs, podpath_proto::Request::Stats) {
            Some(podpath_proto::Response::Stats(st)) => Some(st),
            _ => None,
        };
        let services = match ask(jobs, podpath_proto::Request::ServiceList) {
            Some(podpath_proto::Response::Services(v)) => v,
            _ => Vec::new(),
        };
        podpath_control::http::Answer {
            code: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: podpath_control::metrics::render(stats.as_ref(), &services),
        }
    });
}

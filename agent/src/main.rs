//! podpath-agent --config FILE: see the library's documentation and docs/kubernetes.md.
use std::path::PathBuf;

use clap::Parser;
use podpath_agent::config::{Config, Source};

#[derive(Parser)]
#[command(
    version,
    about = "podpath's node agent: the cluster's nodes into the node's control service"
)]
struct Args {
    #[arg(long, default_value = "/etc/podpath/agent.toml")]
    config: PathBuf,
    /// Print this node's pod CIDR from its Node object (the Kubernetes API, as the
    /// config's [kubernetes] section reaches it) and exit: the DaemonSet's init
    /// container writes it into the node's configuration.
    #[arg(long)]
    print_pod_cidr: bool,
}

fn log(m: &str) {
    eprintln!("podpath-agent: {m}");
}

fn main() {
    let args = Args::parse();
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if args.print_pod_cidr {
        match rt.block_on(podpath_agent::kubernetes::own_pod_cidr(&cfg)) {
            Ok(c) => {
                println!("{c}");
                return;
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    // The node's kernel side first: pods and Services reachable from the node.
    // The control service may start after the agent (separate containers of a
    // DaemonSet start in any order): wait for it, saying so, for up to two minutes.
    let applied = if cfg.bootstrap.enabled {
        let t0 = std::time::Instant::now();
        let mut said = std::time::Instant::now();
        loop {
            let node = podpath_agent::node::Node::connect(&cfg.agent.control_socket)
                .and_then(|mut n| n.spec());
            match node.and_then(|n| podpath_agent::bootstrap::apply(&cfg.bootstrap, &n, &log)) {
                Ok(a) => break Some(a),
                Err(e) if t0.elapsed() > std::time::Duration::from_secs(120) => {
                    eprintln!("error: bootstrap: {e}");
                    std::process::exit(1);
                }
                Err(e) => {
                    if said.elapsed() > std::time::Duration::from_secs(5) {
                        log(&format!(
                            "bootstrap waits for the node's control service: {e}"
                        ));
                        said = std::time::Instant::now();
                    }
                    std::thread::sleep(std::time::Duration::from_millis(300));
                }
            }
        }
    } else {
        None
    };
    rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            let _ = tx.send(true);
        });
        match cfg.agent.source {
            Source::Etcd => podpath_agent::etcd::run(&cfg, rx, &log).await,
            Source::Kubernetes => podpath_agent::kubernetes::run(&cfg, rx, &log).await,
            Source::EtcdAndKubernetes => {
                tokio::join!(
                    podpath_agent::etcd::run(&cfg, rx.clone(), &log),
                    podpath_agent::kubernetes::run(&cfg, rx, &log)
                );
            }
            Source::Static => {
                log("source static: nothing to watch (the control service's file and podpathctl)");
                let mut rx = rx;
                let _ = rx.changed().await;
            }
        }
    });
    if let Some(a) = &applied {
        podpath_agent::bootstrap::undo(&cfg.bootstrap, a, &log);
    }
    log("stopped");
}

//! podpath-cni: see the library's documentation and docs/kubernetes.md.
use std::io::{Read, Write};

fn main() {
    let env = podpath_cni::Env::from_process();
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    // Logs: stderr always, and the file PODPATH_CNI_LOG names (the runtime often
    // drops a plugin's stderr). Never stdout: it carries the result.
    let log_file = std::env::var_os("PODPATH_CNI_LOG");
    let mut log = |m: &str| {
        eprintln!("podpath-cni: {m}");
        if let Some(p) = &log_file {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                let _ = writeln!(
                    f,
                    "{} podpath-cni[{}]: {m}",
                    unix_time(),
                    std::process::id()
                );
            }
        }
    };
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .unwrap_or_else(|| "1.1.0".into());
    match podpath_cni::run(&env, &stdin, &mut log) {
        Ok(out) => {
            if let Some(v) = out {
                println!("{v}");
            }
        }
        Err(e) => {
            log(&format!("{} failed: {e}", env.command));
            println!("{}", e.to_json(&version));
            std::process::exit(1);
        }
    }
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

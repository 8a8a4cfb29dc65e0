//! The deployment manifests (deploy/) against the Kubernetes schemas, offline, with
//! `kubernetes-validate --strict` (PyPI; scripts/setup.sh installs it), and against
//! podpath itself: the DaemonSet grants the capabilities the dataplane's preflight
//! asks for, runs the image this workspace builds, and every ConfigMap key is one
//! podpath-node reads.
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// kubernetes-validate on `files`: success and its output.
fn validate(files: &[PathBuf]) -> (bool, String) {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/kubernetes-validate");
    let bin = if venv.exists() {
        venv
    } else {
        PathBuf::from("kubernetes-validate")
    };
    let o = Command::new(&bin)
        .args(["--strict", "-k", "1.34.0"])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("{} (scripts/setup.sh installs it): {e}", bin.display()));
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(deploy())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn the_manifests_pass_the_kubernetes_schemas_and_a_broken_one_does_not() {
    let files = manifests();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "configmap.yaml",
        "daemonset.yaml",
        "namespace.yaml",
        "rbac.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "deploy/{want} missing: {names:?}"
        );
    }
    let (ok, out) = validate(&files);
    assert!(ok, "{out}");
    for kind in [
        "daemonset/podpath",
        "configmap/podpath-config",
        "clusterrole/podpath-agent",
        "serviceaccount/podpath",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}")),
            "{kind}: {out}"
        );
    }
    // The validator catches what the schema forbids: a wrong type and an unknown field.
    let dir = std::env::temp_dir().join(format!("podpath-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ds = std::fs::read_to_string(deploy().join("daemonset.yaml")).unwrap();
    for (what, broken) in [
        (
            "a wrong type",
            ds.replace("hostNetwork: true", "hostNetwork: yes-please"),
        ),
        (
            "an unknown field",
            ds.replace(
                "hostNetwork: true",
                "hostNetwork: true\n      hostNetworking: true",
            ),
        ),
    ] {
        assert_ne!(broken, ds);
        let f = dir.join("daemonset.yaml");
        std::fs::write(&f, broken).unwrap();
        let (ok, out) = validate(&[f]);
        assert!(!ok, "{what} passed: {out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_daemonset_matches_what_podpath_needs() {
    let ds = std::fs::read_to_string(deploy().join("daemonset.yaml")).unwrap();
    // The image this workspace builds (docker/build.sh tags podpath:<version>).
    let image = format!("image: podpath:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        ds.matches("image: ").count(),
        ds.matches(&image).count(),
        "{image}"
    );
    // Every capability the dataplane's preflight knows is granted to it.
    for n in podpath_dataplane::preflight::NEEDS.iter() {
        let cap = n.cap.to_string();
        let short = cap.trim_start_matches("CAP_");
        assert!(
            ds.contains(&format!("\"{short}\"")),
            "{short} ({}) not granted",
            n.why
        );
    }
    // The binaries the containers run exist in the image (docker/build.sh's list).
    let build =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/build.sh"))
            .unwrap();
    for cmd in [
        "podpath-dataplane",
        "podpath-control",
        "podpath-agent",
        "podpathctl",
    ] {
        assert!(ds.contains(cmd) && build.contains(cmd), "{cmd}");
    }
    for script in ["install-cni", "podpath-node"] {
        assert!(ds.contains(&format!("[\"{script}\"")), "{script}");
        assert!(
            build.contains(&format!("docker/{script}")),
            "{script} not in the image"
        );
    }
    // Every ConfigMap key is an environment variable podpath-node reads.
    let node = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/podpath-node"),
    )
    .unwrap();
    let cm = std::fs::read_to_string(deploy().join("configmap.yaml")).unwrap();
    let data = cm
        .split("\ndata:\n")
        .nth(1)
        .expect("configmap.yaml has data");
    for line in data.lines() {
        let l = line.trim().trim_start_matches("# ");
        let Some((key, _)) = l.split_once(": ") else {
            continue;
        };
        if !key.chars().all(|c| c.is_ascii_uppercase() || c == '_') || key.is_empty() {
            continue;
        }
        assert!(
            node.contains(&format!("${{{key}")),
            "ConfigMap key {key} is not read by podpath-node"
        );
    }
}

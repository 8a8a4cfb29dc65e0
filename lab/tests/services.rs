//! Walk 4 end to end: a pod talks to a ClusterIP Service whose endpoints are spread
//! over two nodes. Needs root; namespaces made and removed by the test.
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podpath_lab::topo::LabOptions;
use podpath_lab::{net, Lab};
use podpath_proto::{Client, EndpointSpec, Request, Response, ServiceSpec};

static SERIAL: Mutex<()> = Mutex::new(());

fn bin() -> String {
    env!("CARGO_BIN_EXE_podpath-lab").to_owned()
}

fn run_in(ns: &str, cmd: &str, args: &[&str]) -> (bool, String) {
    let o = net::command_in(ns, cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s += &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), s)
}

fn set(lab: &Lab, svc: &ServiceSpec) {
    for n in &lab.state.nodes {
        let mut c = Client::connect(&n.control_socket, "test").unwrap();
        assert_eq!(
            c.call(Request::ServiceSet(svc.clone())).unwrap(),
            Response::Done
        );
    }
}

fn ep(ip: &str) -> EndpointSpec {
    EndpointSpec {
        ip: ip.into(),
        port: 8080,
        weight: 1,
        ready: true,
        terminating: false,
    }
}

#[test]
fn cluster_ip_spreads_over_endpoints_on_both_nodes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = LabOptions::new(&format!("c{}", std::process::id() % 1_000_000));
    o.state_dir = std::env::temp_dir().join("podpath-lab-tests");
    o.external = false;
    let lab = Lab::up(&o).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let client = n1.pods[0].clone();
    let eps = [n1.pods[1].clone(), n2.pods[0].clone(), n2.pods[1].clone()];
    let web = ServiceSpec {
        name: "default/web".into(),
        vip: "10.96.0.10".into(),
        port: 80,
        protocol: "tcp".into(),
        endpoints: eps.iter().map(|p| ep(&p.ip)).collect(),
    };
    set(&lab, &web);
    let servers: Vec<_> = eps
        .iter()
        .map(|p| {
            net::command_in(&p.netns, &bin())
                .args([
                    "whoami-serve",
                    "--port",
                    "8080",
                    "--count",
                    "300",
                    "--seconds",
                    "30",
                ])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // 300 short connections; whoami-ask fails unless every reply came from the VIP.
    let (ok, out) = run_in(
        &client.netns,
        &bin(),
        &["whoami-ask", "--to", "10.96.0.10:80", "--count", "300"],
    );
    assert!(ok, "{out}");
    for p in &eps {
        let n: u32 = out
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{} ", p.ip))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        assert!(
            (75..=125).contains(&n),
            "endpoint {} got {n} of 300 (fair share 100 +-25%):\n{out}",
            p.ip
        );
    }
    // The connection table remembers each choice.
    let mut c = Client::connect(&n1.control_socket, "test").unwrap();
    let Response::Conntrack(conns) = c
        .call(Request::ConntrackList(podpath_proto::ConntrackFilter {
            proto: Some(6),
            addr: Some("10.96.0.10".into()),
            port: None,
        }))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(conns.len(), 300);
    for s in servers {
        let mut s = s;
        let _ = s.kill();
        let _ = s.wait();
    }

    // A Service without endpoints refuses at once: TCP with a reset, UDP with ICMP.
    set(
        &lab,
        &ServiceSpec {
            name: "default/empty".into(),
            vip: "10.96.0.11".into(),
            port: 80,
            protocol: "tcp".into(),
            endpoints: vec![],
        },
    );
    set(
        &lab,
        &ServiceSpec {
            name: "default/dns".into(),
            vip: "10.96.0.12".into(),
            port: 53,
            protocol: "udp".into(),
            endpoints: vec![],
        },
    );
    let t = Instant::now();
    let (ok, out) = run_in(
        &client.netns,
        &bin(),
        &["whoami-ask", "--to", "10.96.0.11:80", "--count", "1"],
    );
    assert!(!ok && out.contains("refused"), "{out}");
    let (ok, out) = run_in(
        &client.netns,
        &bin(),
        &["udp-ping", "--to", "10.96.0.12:53", "--count", "1"],
    );
    assert!(!ok && out.contains("refused"), "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refusals were not immediate: {:?}",
        t.elapsed()
    );
}

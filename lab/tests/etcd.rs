//! Nodes find each other through a real etcd (Debian's etcd-server on 127.0.0.1, a
//! port and data directory of this run) in flannel's layout, each node's
//! podpath-agent registering its lease and watching the others'. A third node
//! joins, dies (its lease expires), and etcd restarts under running agents.
mod common;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

use podpath_lab::cluster::{agent_config, flannel_config, Agent, Etcd};
use podpath_lab::topo::{routes, Node};
use podpath_lab::Lab;

/// The lease TTL the agents use here (short, to watch a node expire).
const TTL_S: u64 = 3;

fn agent(dir: &Path, n: &Node, etcd: &Etcd) -> Agent {
    let bin = Path::new(&bin()).with_file_name("podpath-agent");
    Agent::start(
        &bin,
        dir,
        n,
        &agent_config(n, &etcd.endpoint(), TTL_S, true),
    )
    .expect("podpath-agent")
}

/// How long until `cond` holds (polled every 20 ms), if within `limit`.
fn time_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn nodes_join_leave_and_survive_an_etcd_restart_through_etcd() {
    let mut o = options("e");
    o.nodes = 3;
    o.pods_per_node = 1;
    o.external = false;
    o.static_remotes = false;
    o.agent_bootstrap = true;
    // The pods attached by podpath-cni, as a runtime would: the whole node side is
    // podpath's own here.
    o.cni_pods = true;
    let lab = Lab::up(&o).expect("lab up");
    let [n1, n2, n3] = [0, 1, 2].map(|i| lab.state.nodes[i].clone());
    let dir = std::env::temp_dir().join(format!("podpath-etcd-{}", lab.state.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let base = 20_000 + u16::try_from(std::process::id() % 20_000).unwrap();
    let mut etcd = Etcd::start(&dir.join("etcd"), base).expect("etcd");
    let net = flannel_config(o.vni, o.vxlan_port);
    assert!(etcd
        .etcdctl(&["put", "/coreos.com/network/config", &net])
        .is_some());

    let mut a1 = agent(&dir, &n1, &etcd);
    let _a2 = agent(&dir, &n2, &etcd);
    assert!(
        wait_until(Duration::from_secs(10), || routes(&n1)
            .contains(&n2.pod_cidr)
            && routes(&n2).contains(&n1.pod_cidr)),
        "nodes 1 and 2 found each other: {:?} {:?}",
        routes(&n1),
        routes(&n2)
    );
    assert!(
        ping(&n1.pods[0].netns, &n2.pods[0].ip),
        "pod to pod over the overlay"
    );
    // The agents made the node side: node 1's kernel reaches its pod and node 2's.
    assert!(
        ping(&n1.netns, &n1.pods[0].ip) && ping(&n1.netns, &n2.pods[0].ip),
        "node to pods through the host port"
    );
    let link =
        |n: &Node| podpath_lab::net::ip_in(&n.netns, &["link", "show", "eth0"]).unwrap_or_default();
    assert!(
        link(&n1).contains("NOARP"),
        "the uplink's kernel side answers no ARP"
    );
    assert!(
        !routes(&n1).contains(&n3.pod_cidr),
        "node 3 is not there yet"
    );
    let (_, state, _) = ctl(&n1.control_socket, &["state"]);
    assert!(
        state
            .lines()
            .any(|l| l.starts_with("etcd-10.244.1.0-24") && l.trim_end().ends_with("etcd")),
        "podpathctl state says node 2 came from etcd:\n{state}"
    );
    let lease = |n: &Node| {
        format!(
            "/coreos.com/network/subnets/{}",
            n.pod_cidr.replace('/', "-")
        )
    };
    let v = etcd.get(&lease(&n1)).unwrap();
    assert!(
        v.contains("\"VtepMAC\":\"0a:58:0a:f4:00:01\"") && v.contains("\"PublicIP\":\"192.168.77."),
        "flannel's lease: {v}"
    );

    // Node 3 joins: its lease appears, and within 1 s both others route to it.
    let mut a3 = agent(&dir, &n3, &etcd);
    assert!(wait_until(Duration::from_secs(10), || etcd
        .get(&lease(&n3))
        .is_some_and(|v| !v.is_empty())));
    let joined = time_until(Duration::from_secs(5), || {
        routes(&n1).contains(&n3.pod_cidr) && routes(&n2).contains(&n3.pod_cidr)
    });
    assert!(
        joined.is_some_and(|t| t <= Duration::from_secs(1)),
        "node 3 known within 1 s of its lease: {joined:?}"
    );
    eprintln!("join: lease to routes on both nodes in {joined:?}");
    assert!(ping(&n1.pods[0].netns, &n3.pods[0].ip) && ping(&n3.pods[0].netns, &n2.pods[0].ip));

    // Node 3's agent dies (no revoke): its lease expires, the others withdraw it
    // within the TTL + 1 s.
    a3.kill();
    let gone = time_until(Duration::from_secs(TTL_S + 5), || {
        !routes(&n1).contains(&n3.pod_cidr) && !routes(&n2).contains(&n3.pod_cidr)
    });
    assert!(
        gone.is_some_and(|t| t <= Duration::from_secs(TTL_S + 1)),
        "node 3 withdrawn within TTL + 1 s: {gone:?}"
    );
    eprintln!("leave: kill to withdrawn on both nodes in {gone:?} (TTL {TTL_S} s)");

    // etcd restarts under the agents: nothing is lost while it is down, and after
    // it the agents are in step again (a new node is seen, a dead one withdrawn).
    let _a3 = agent(&dir, &n3, &etcd);
    assert!(wait_until(Duration::from_secs(5), || routes(&n1)
        .contains(&n3.pod_cidr)));
    etcd.stop();
    std::thread::sleep(Duration::from_secs(TTL_S + 1));
    for (n, others) in [(&n1, [&n2, &n3]), (&n2, [&n1, &n3])] {
        for o in others {
            assert!(
                routes(n).contains(&o.pod_cidr),
                "{} kept {} while etcd was down",
                n.name,
                o.name
            );
        }
    }
    assert!(
        ping(&n1.pods[0].netns, &n2.pods[0].ip),
        "traffic kept flowing"
    );
    etcd.restart().expect("etcd again");
    assert!(
        wait_until(Duration::from_secs(15), || [&n1, &n2, &n3]
            .iter()
            .all(|n| etcd.get(&lease(n)).is_some_and(|v| !v.is_empty()))),
        "every agent registered again after the restart"
    );
    assert!(routes(&n1).contains(&n2.pod_cidr) && routes(&n1).contains(&n3.pod_cidr));
    // Someone deletes node 2's key while its lease lives: its agent announces it
    // again, and node 1 routes to it.
    assert!(etcd.etcdctl(&["del", &lease(&n2)]).is_some());
    assert!(
        wait_until(Duration::from_secs(5), || etcd
            .get(&lease(&n2))
            .is_some_and(|v| !v.is_empty())),
        "node 2's agent registered it again"
    );
    assert!(
        wait_until(Duration::from_secs(5), || routes(&n1)
            .contains(&n2.pod_cidr)),
        "node 2 known to node 1 again"
    );
    drop(_a3);
    assert!(
        wait_until(Duration::from_secs(TTL_S + 2), || !routes(&n1)
            .contains(&n3.pod_cidr)),
        "the watch after the restart sees node 3 leave"
    );
    // A clean stop of node 1's agent: node 2 withdraws it at once (the lease is
    // revoked), and node 1's kernel side is as it was before the agent.
    assert!(a1.stop(), "the agent stops on SIGTERM");
    let gone = time_until(Duration::from_secs(5), || {
        !routes(&n2).contains(&n1.pod_cidr)
    });
    assert!(
        gone.is_some_and(|t| t <= Duration::from_secs(1)),
        "withdrawn at once, not after the TTL: {gone:?}"
    );
    let r = podpath_lab::net::ip_in(&n1.netns, &["route"]).unwrap_or_default();
    assert!(
        !r.contains("10.244.0.0/16") && !r.contains("10.96.0.0/12"),
        "routes undone: {r}"
    );
    let rules = podpath_lab::net::ip_in(&n1.netns, &["rule"]).unwrap_or_default();
    let table =
        podpath_lab::net::ip_in(&n1.netns, &["route", "show", "table", "1450"]).unwrap_or_default();
    assert!(
        !rules.contains("lookup 1450") && table.trim().is_empty(),
        "the underlay's rule and table undone: {rules} / {table}"
    );
    assert!(
        !link(&n1).contains("NOARP"),
        "ARP back on the uplink: {}",
        link(&n1)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 15: the agent is not in the forwarding path. `kill -9` of node 1's agent
/// (no lease revoked, nothing undone) leaves a byte-checked stream across the
/// overlay and a masqueraded download running; the other node keeps routing to
/// node 1 (the lease outlives a quick restart); the restarted agent resyncs to the
/// same desired state, and nothing was withdrawn on either node meanwhile.
#[test]
fn a_killed_agent_leaves_forwarding_alone_and_its_restart_resyncs() {
    let mut o = options("ak");
    o.nodes = 2;
    o.pods_per_node = 1;
    o.static_remotes = false;
    o.agent_bootstrap = true;
    o.cni_pods = true;
    let lab = Lab::up(&o).expect("lab up");
    let [n1, n2] = [0, 1].map(|i| lab.state.nodes[i].clone());
    let ext = lab.state.external.clone().expect("external host");
    let dir = std::env::temp_dir().join(format!("podpath-etcd-{}", lab.state.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let base = 20_000 + u16::try_from((std::process::id() + 7) % 20_000).unwrap();
    let etcd = Etcd::start(&dir.join("etcd"), base).expect("etcd");
    assert!(etcd
        .etcdctl(&[
            "put",
            "/coreos.com/network/config",
            &flannel_config(o.vni, o.vxlan_port)
        ])
        .is_some());
    let mut a1 = agent(&dir, &n1, &etcd);
    let _a2 = agent(&dir, &n2, &etcd);
    assert!(wait_until(Duration::from_secs(10), || routes(&n1)
        .contains(&n2.pod_cidr)
        && routes(&n2).contains(&n1.pod_cidr)));
    let (p1, p2) = (n1.pods[0].clone(), n2.pods[0].clone());
    assert!(wait_until(Duration::from_secs(10), || ping(
        &p1.netns, &p2.ip
    )));
    // The desired state without its generation line (node 2 re-applies node 1's
    // remote, unchanged, when the new lease appears: a new generation, same state).
    let state = |n: &Node| {
        let s = ctl(&n.control_socket, &["state"]).1;
        s.lines().skip(1).collect::<Vec<_>>().join("\n")
    };
    let before = (state(&n1), state(&n2));

    // A 2 Mbit/s stream across the overlay and a 2 Mbit/s download from outside.
    let rx = serve_in(&p2.netns, &["tcp-recv", "--port", "7100", "--seed", "4"]);
    let tx = podpath_lab::net::command_in(&p1.netns, &bin())
        .args([
            "tcp-send",
            "--to",
            &format!("{}:7100", p2.ip),
            "--seed",
            "4",
        ])
        .args(["--rate-mbps", "2", "--seconds", "12"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let bytes = "3000000";
    let _srv = Background(vec![serve_in(
        &ext,
        &[
            "tcp-serve",
            "--port",
            "7200",
            "--bytes",
            bytes,
            "--seed",
            "6",
            "--rate-mbps",
            "2",
        ],
    )]);
    let fetch = podpath_lab::net::command_in(&p1.netns, &bin())
        .args([
            "tcp-fetch",
            "--from",
            "192.168.77.100:7200",
            "--bytes",
            bytes,
            "--seed",
            "6",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));

    a1.kill();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        routes(&n2).contains(&n1.pod_cidr),
        "node 2 withdrew node 1 while its agent was down for a second"
    );
    assert_eq!(
        state(&n1),
        before.0,
        "node 1's desired state changed with its agent dead"
    );
    let mut a1 = agent(&dir, &n1, &etcd);
    assert!(wait_until(Duration::from_secs(10), || etcd
        .get(&format!(
            "/coreos.com/network/subnets/{}",
            n1.pod_cidr.replace('/', "-")
        ))
        .is_some_and(|v| !v.is_empty())));
    // Past the dead agent's lease: only the new agent's registration keeps node 1
    // known to node 2 now.
    std::thread::sleep(Duration::from_secs(TTL_S + 2));
    assert!(
        routes(&n2).contains(&n1.pod_cidr),
        "node 2 withdrew node 1 after the dead agent's lease expired"
    );
    assert_eq!(
        (state(&n1), state(&n2)),
        before,
        "the restarted agent did not resync to the same state"
    );
    for n in [&n1, &n2] {
        let ev = match podpath_proto::Client::connect(&n.control_socket, "test")
            .unwrap()
            .call(podpath_proto::Request::Events { after: 0 })
            .unwrap()
        {
            podpath_proto::Response::Events(v) => v,
            r => panic!("{r:?}"),
        };
        assert!(
            !ev.iter().any(|e| e.kind == "remote-withdrawn"),
            "{}: a remote was withdrawn: {ev:?}",
            n.name
        );
    }
    let sent = tx.wait_with_output().unwrap();
    let got = rx.wait_with_output().unwrap();
    assert!(
        sent.status.success() && got.status.success(),
        "the stream across the overlay broke: {} / {}",
        String::from_utf8_lossy(&sent.stdout),
        String::from_utf8_lossy(&got.stdout)
    );
    let fetched = fetch.wait_with_output().unwrap();
    assert!(
        fetched.status.success(),
        "the masqueraded download broke: {}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    assert!(a1.stop());
    let _ = std::fs::remove_dir_all(&dir);
}

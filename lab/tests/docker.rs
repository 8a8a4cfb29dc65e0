//! podpath in Docker: its image built by docker/build.sh (from the binaries this test
//! run built), a private dockerd in a network namespace of the test's own, and a
//! cluster of node containers (lab/src/docker.rs): three nodes, podpath in each on
//! `net_af_packet` over the node's eth0, nodes found through etcd in a container,
//! VXLAN between them, an external host. The six walks, then node faults.
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use podpath_lab::docker::{build_images, workspace, Cluster, DockerPod, Dockerd, EXT_IP};

/// Docker tests one at a time (each runs its own daemon and three dataplanes).
static SERIAL: Mutex<()> = Mutex::new(());

/// The images, built once per run from the debug binaries.
fn images() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = workspace().join("target/docker-test");
        let t0 = Instant::now();
        build_images("debug", &out).expect("docker/build.sh");
        eprintln!("images built in {:?}", t0.elapsed());
        out
    })
    .clone()
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ping(c: &Cluster, pod: &DockerPod, dst: &str) -> bool {
    c.ping(pod, dst).0
}

fn get(c: &Cluster, pod: &DockerPod, url: &str) -> String {
    c.get(pod, url)
}

fn serve(c: &Cluster, pod: &DockerPod) {
    c.serve(pod).unwrap();
}

#[test]
fn the_image_runs_as_non_root_and_names_what_it_lacks() {
    let _g = serial();
    let images = images();
    let d = Dockerd::start().expect("dockerd");
    d.load(&images.join("podpath.tar")).unwrap();
    let tag = format!("podpath:{}", env!("CARGO_PKG_VERSION"));
    let size: u64 = d
        .run(&["image", "inspect", "--format", "{{.Size}}", &tag])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eprintln!("image {tag}: {} MB", size / 1_000_000);
    assert_eq!(
        d.run(&["image", "inspect", "--format", "{{.Config.User}}", &tag])
            .unwrap()
            .trim(),
        "65532:65532"
    );
    let conf = "[eal]\nlcores = \"0,1\"\nmemory_mb = 64\npci = false\nhugepages = \"on\"\n\
                [dataplane]\nsocket = \"/run/podpath/dataplane.sock\"\n[idle]\nenabled = true\n";
    let script = format!(
        "printf '{}' > /tmp/dp.toml && exec timeout -s INT 8 podpath-dataplane --config /tmp/dp.toml",
        conf.replace('\n', "\\n")
    );
    // Docker's default capabilities (NET_RAW among them): the three missing for a
    // run on hugepages are named, with how to add them.
    let (ok, _, err) = d.output(&["run", "--rm", "--entrypoint", "sh", &tag, "-c", &script]);
    assert!(
        !ok,
        "started without NET_ADMIN, IPC_LOCK and SYS_NICE: {err}"
    );
    assert!(
        err.contains("CAP_NET_ADMIN: ")
            && err.contains("CAP_IPC_LOCK: ")
            && err.contains("CAP_SYS_NICE: ")
            && !err.contains("CAP_NET_RAW: "),
        "{err}"
    );
    assert!(
        err.contains("--cap-add NET_ADMIN --cap-add IPC_LOCK --cap-add SYS_NICE"),
        "{err}"
    );
    // The capabilities, but hugepages asked for and none mounted: the mount is named.
    let caps = [
        "--cap-add",
        "NET_ADMIN",
        "--cap-add",
        "IPC_LOCK",
        "--cap-add",
        "SYS_NICE",
        "--device",
        "/dev/net/tun",
    ];
    let mut a = vec!["run", "--rm"];
    a.extend(caps);
    a.extend(["--entrypoint", "sh", &tag, "-c", &script]);
    let (ok, _, err) = d.output(&a);
    assert!(!ok && err.contains("no hugetlbfs is mounted"), "{err}");
    // With a hugetlbfs the podpath user may write: DPDK starts on hugepages as
    // uid 65532 and stops cleanly on SIGINT.
    d.hugetlbfs_volume("pphuge").unwrap();
    let mut a = vec!["run", "--rm", "-v", "pphuge:/dev/hugepages"];
    a.extend(caps);
    a.extend(["--entrypoint", "sh", &tag, "-c", &script]);
    let (ok, _, err) = d.output(&a);
    assert!(ok, "{err}");
    assert!(
        err.contains("workers on lcores [1]") && err.contains("stopping"),
        "{err}"
    );
    assert!(!err.contains("--no-huge"), "{err}");
}

#[test]
fn node_containers_carry_the_six_walks() {
    let _g = serial();
    let t0 = Instant::now();
    let c = Cluster::up(&images(), 3, 5).expect("docker cluster");
    eprintln!("cluster of 3 node containers up in {:?}", t0.elapsed());
    let a = c.add_pod(0, "pod-a").unwrap();
    // A tap pod: its eth0 made by node1's dataplane inside the pod's namespace.
    let b = c.add_tap_pod(0, "pod-b").unwrap();
    let r2 = c.add_pod(1, "pod-c").unwrap();
    let r3 = c.add_tap_pod(2, "pod-d").unwrap();
    for p in [&a, &b, &r2, &r3] {
        serve(&c, p);
    }
    std::thread::sleep(Duration::from_millis(500));
    // pod-b's port is a tap in its namespace (the dataplane's driver: net_tap).
    let ports = c.ctl(0, &["port", "list"]).unwrap();
    assert!(
        ports
            .lines()
            .any(|l| l.contains("net_tap") && !l.contains("host ")),
        "no tap pod port on node1: {ports}"
    );
    // 1. Two pods on one node.
    assert!(
        ping(&c, &a, &b.ip),
        "walk 1: {} -> {}\n{}",
        a.ip,
        b.ip,
        c.logs()
    );
    assert_eq!(get(&c, &a, &format!("http://{}:8080/", b.ip)), "pod-b");
    // 2. Across the overlay, to both other nodes; the receiver sees the pod's IP.
    for p in [&r2, &r3] {
        assert!(
            ping(&c, &a, &p.ip),
            "walk 2: {} -> {}\n{}",
            a.ip,
            p.ip,
            c.logs()
        );
        assert_eq!(get(&c, &a, &format!("http://{}:8080/", p.ip)), p.netns);
    }
    let vx = c.ctl(1, &["stats", "--json"]).unwrap();
    let stats: serde_json::Value = serde_json::from_str(&vx).unwrap();
    assert!(stats.to_string().contains("vxlan-decap"), "{vx}");
    // 3. The node's own processes to a local pod (through the host port, no NAT).
    let o =
        c.d.exec(
            &c.nodes[0].node,
            &["ping", "-c", "3", "-W", "2", "-i", "0.2", &a.ip],
        )
        .unwrap();
    assert!(o.contains(" 0% packet loss"), "walk 3: {o}");
    // 4. A ClusterIP Service with endpoints on the two other nodes: both answer.
    c.set_web_service(&[&r2, &r3], Some(30080)).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(get(&c, &a, "http://10.96.0.10/"));
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen,
        ["pod-c", "pod-d"].map(String::from).into(),
        "walk 4: the Service's answers\n{}",
        c.logs()
    );
    // 5. To the external host, which has no route to the pods: only a masqueraded
    // flow (source the node IP) can be answered.
    assert!(ping(&c, &a, EXT_IP), "walk 5: ping {EXT_IP}\n{}", c.logs());
    c.d.exec(
        "ext",
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/w && echo ext > /tmp/w/index.html",
        ],
    )
    .unwrap();
    c.d.run(&[
        "exec", "-d", "ext", "httpd", "-f", "-p", "8080", "-h", "/tmp/w",
    ])
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(&c, &a, &format!("http://{EXT_IP}:8080/")), "ext");
    let ct = c.ctl(0, &["conntrack", "list"]).unwrap();
    assert!(
        ct.contains(EXT_IP) && ct.contains(&c.nodes[0].ip),
        "walk 5: {ct}"
    );
    // 6. The external host to the NodePort on each node.
    for n in &c.nodes {
        let body = c.ext_get(&format!("http://{}:30080/", n.ip));
        assert!(
            ["pod-c", "pod-d"].contains(&body.trim()),
            "walk 6: NodePort on {}: {body:?}\n{}",
            n.node,
            c.logs()
        );
    }
    eprintln!("six walks in node containers: {:?} in all", t0.elapsed());
}

/// How long until `cond` holds (polled every 100 ms), if within `limit`.
fn time_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn node_faults_in_docker_kill_partition_and_rolling_restart() {
    let _g = serial();
    const TTL_S: u64 = 5;
    let c = Cluster::up(&images(), 3, TTL_S).expect("docker cluster");
    let a = c.add_pod(0, "pod-a").unwrap();
    let b = c.add_pod(1, "pod-b").unwrap();
    let d3 = c.add_pod(2, "pod-d").unwrap();
    for p in [&b, &d3] {
        serve(&c, p);
    }
    assert!(ping(&c, &a, &b.ip), "{}", c.logs());

    // A partition: node2 off the network, then back with its address. Its lease
    // expires (the others withdraw its pods); once back it registers again, and its
    // dataplane re-opens the uplink the kernel re-created.
    c.disconnect(1).unwrap();
    let gone = time_until(Duration::from_secs(TTL_S + 10), || !c.knows(0, 1));
    let gone = gone.expect("node1 still routes to the partitioned node2");
    eprintln!("partition: node1 withdrew node2 after {gone:?} (lease TTL {TTL_S} s)");
    assert!(gone <= Duration::from_secs(TTL_S + 1), "{gone:?}");
    c.reconnect(1).unwrap();
    let back = time_until(Duration::from_secs(30), || c.knows(0, 1) && c.knows(1, 0));
    eprintln!("partition healed: node2 known again after {back:?}");
    assert!(back.is_some(), "{}", c.logs());
    assert!(
        time_until(Duration::from_secs(10), || ping(&c, &a, &b.ip)).is_some(),
        "pods across the healed partition\n{}",
        c.logs()
    );

    // A rolling restart of podpath, node by node, with a client on node1 asking a
    // Service on node2 and node3 ten times a second the whole time.
    c.set_web_service(&[&b, &d3], None).unwrap();
    let script = "ok=0; bad=0; i=0; while [ $i -lt 600 ]; do \
                  if timeout 1 wget -q -O /dev/null http://10.96.0.10/; then ok=$((ok+1)); else bad=$((bad+1)); fi; \
                  i=$((i+1)); [ -f /tmp/stop-client ] && break; sleep 0.1; done; echo $ok $bad > /tmp/client-result";
    c.d.run(&[
        "exec", "-d", &a.node, "ip", "netns", "exec", &a.netns, "sh", "-c", script,
    ])
    .unwrap();
    let t0 = Instant::now();
    for i in [1usize, 2, 0] {
        let n = &c.nodes[i];
        let r0 = Instant::now();
        c.d.run(&["restart", "-t", "10", &n.podpath]).unwrap();
        let meshed = time_until(Duration::from_secs(60), || {
            (0..3).all(|j| j == i || (c.knows(i, j) && c.knows(j, i)))
        });
        eprintln!(
            "rolling restart: {} back in the mesh after {:?}",
            n.podpath,
            r0.elapsed()
        );
        assert!(
            meshed.is_some(),
            "{} did not come back\n{}",
            n.podpath,
            c.logs()
        );
    }
    let restart_time = t0.elapsed();
    c.d.exec(&a.node, &["touch", "/tmp/stop-client"]).unwrap();
    let mut result = String::new();
    let _ = time_until(Duration::from_secs(20), || {
        result =
            c.d.exec(&a.node, &["cat", "/tmp/client-result"])
                .unwrap_or_default();
        !result.is_empty()
    });
    let v: Vec<u32> = result
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(v.len(), 2, "client result {result:?}");
    eprintln!(
        "rolling restart of 3 podpath containers in {restart_time:?}: the client's requests: {} answered, {} failed",
        v[0], v[1]
    );
    assert!(v[0] > 0, "no request answered during the rolling restart");
    assert!(
        time_until(Duration::from_secs(10), || get(
            &c,
            &a,
            "http://10.96.0.10/"
        )
        .starts_with("pod-"))
        .is_some(),
        "the Service after the rolling restart\n{}",
        c.logs()
    );

    // docker kill: node3 dies (no lease revoked); the others withdraw its pods
    // within the lease TTL + 1 s.
    // Timed from `docker kill` returning (node3 is dead by then), each node watched
    // by a thread of its own so one node's podpathctl round trip does not delay
    // seeing the other's.
    c.d.run(&["kill", &c.nodes[2].podpath, &c.nodes[2].node])
        .unwrap();
    let t = Instant::now();
    let gone = std::thread::scope(|sc| {
        let w: Vec<_> = [0, 1]
            .map(|i| {
                let c = &c;
                sc.spawn(move || {
                    time_until(Duration::from_secs(TTL_S + 10), || !c.knows(i, 2))
                        .map(|_| t.elapsed())
                })
            })
            .into_iter()
            .collect();
        w.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Option<Vec<Duration>>>()
            .and_then(|v| v.into_iter().max())
    });
    let gone = gone.expect("node3's pods not withdrawn");
    eprintln!(
        "docker kill: node3's pods withdrawn by both nodes after {gone:?} (lease TTL {TTL_S} s)"
    );
    assert!(gone <= Duration::from_secs(TTL_S + 1), "{gone:?}");
    assert!(ping(&c, &a, &b.ip), "node1 -> node2 after node3 died");
}

/// A node laid out as deploy/daemonset.yaml runs podpath (install-cni and
/// `podpath-node config` as init containers; the dataplane and the control service
/// as uid 65532 with the DaemonSet's capabilities only, the dataplane on hugepages;
/// the agent as root) joins two all-in-one nodes, and a pod attached by the
/// plugin install-cni put on the node reaches the other nodes' pods.
#[test]
fn the_daemonset_layout_joins_the_cluster_as_separate_containers() {
    let _g = serial();
    let mut c = Cluster::up(&images(), 2, 5).expect("docker cluster");
    let n3 = c
        .add_node_as_daemonset(3)
        .expect("node3 as the DaemonSet runs it");
    c.wait_meshed(Duration::from_secs(60))
        .expect("node3 meshed");
    // The dataplane runs as the podpath user, with its capabilities raised, on hugepages.
    let status = c.d.exec("dataplane3", &["cat", "/proc/1/status"]).unwrap();
    assert!(status.contains("Uid:\t65532"), "{status}");
    let log = c.d.output(&["logs", "dataplane3"]);
    assert!(
        !log.2.contains("--no-huge") && log.2.contains("started"),
        "{}",
        log.2
    );
    // The plugin install-cni copied, in the node's /opt/cni/bin.
    let ls =
        c.d.exec(&n3.node, &["ls", "-l", "/opt/cni/bin/podpath-cni"])
            .unwrap();
    assert!(ls.contains("rwx"), "{ls}");
    let a = c.add_pod(0, "pod-a").unwrap();
    let p3 = c.add_pod(2, "pod-e").unwrap();
    serve(&c, &a);
    assert!(p3.ip.starts_with("10.244.2."), "{p3:?}");
    assert!(
        ping(&c, &p3, &a.ip),
        "node3's pod -> node1's pod\n{}",
        c.logs()
    );
    assert_eq!(get(&c, &p3, &format!("http://{}:8080/", a.ip)), "pod-a");
}

//! Hostile traffic end to end (issue 15 item 5): both nodes are stormed with
//! malformed frames (lab/storm.py, raw AF_PACKET, so no kernel repairs them) from a
//! pod on each node and from the underlay (NodePort and VXLAN aimed at node 1, with
//! a spoofed remote VTEP carrying garbage inner frames). Afterwards both dataplanes
//! still forward (pod to pod across the overlay, a Service, masquerade), every frame
//! is accounted for (received + replicated = transmitted + dropped) and every drop
//! has a named reason. Network safety: all of it inside the lab's namespaces.

mod common;
use common::*;
use std::time::Duration;

use podpath_lab::topo::LabOptions;
use podpath_lab::{net, Lab};
use podpath_proto::{Client, EndpointSpec, Request, Response, ServiceSpec};

const EXT: &str = "192.168.77.100";

fn storm_script() -> String {
    format!("{}/storm.py", env!("CARGO_MANIFEST_DIR"))
}

fn gateway_mac(ns: &str, gw: &str) -> String {
    let _ = net::exec_in(ns, "ping", &["-c", "1", "-W", "1", gw]);
    let out = net::ip_in(ns, &["neigh", "show", gw]).unwrap_or_default();
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_else(|| panic!("no neighbour entry for {gw} in {ns}: {out:?}"))
        .to_string()
}

fn storm(ns: &str, args: &[String]) -> String {
    let mut a = vec![storm_script()];
    a.extend(args.iter().cloned());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (ok, out) = run_in(ns, "python3", &a);
    assert!(ok, "storm.py failed in {ns}: {out}");
    out
}

#[test]
fn malformed_storms_leave_both_nodes_forwarding_and_every_frame_accounted() {
    let mut o = LabOptions::new(&format!("st{}", std::process::id() % 1_000_000));
    o.state_dir = std::env::temp_dir().join("podpath-lab-tests");
    let lab = Lab::up(&o).expect("lab up");
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let (a, b, remote) = (n1.pods[0].clone(), n1.pods[1].clone(), n2.pods[0].clone());
    let ext = lab.state.external.clone().expect("external host");
    let svc = ServiceSpec::new(
        "default/storm",
        "10.96.0.40",
        8080,
        "tcp",
        vec![EndpointSpec::ready(&remote.ip, 8080)],
    );
    for n in [&n1, &n2] {
        let r = Client::connect(&n.control_socket, "test")
            .unwrap()
            .call(Request::ServiceSet(svc.clone()))
            .unwrap();
        assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    }
    assert!(wait_until(Duration::from_secs(10), || ping(
        &a.netns, &remote.ip
    )));
    let uplink_mac = |sock: &std::path::Path| match Client::connect(sock, "test")
        .unwrap()
        .call(Request::PortList)
        .unwrap()
    {
        Response::Ports(p) => p
            .into_iter()
            .find(|p| p.name == "uplink")
            .map(|p| p.mac)
            .expect("an uplink port"),
        r => panic!("{r:?}"),
    };
    let count = "6000".to_string();
    // Pod side of both nodes: at the gateway, a Service, a pod across the overlay,
    // the external host, the node itself.
    for (i, (pod, node)) in [(&a, &n1), (&remote, &n2)].into_iter().enumerate() {
        let out = storm(
            &pod.netns,
            &[
                "eth0".into(),
                count.clone(),
                (11 + i).to_string(),
                "pod".into(),
                format!("mac={}", mac_of(&pod.netns, "eth0")),
                format!("ip={}", pod.ip),
                format!("to_mac={}", gateway_mac(&pod.netns, &node.gateway)),
                format!(
                    "targets=10.96.0.40,{},{},{EXT},{}",
                    b.ip, remote.ip, node.node_ip
                ),
            ],
        );
        eprintln!("{} pod side: {out}", node.name);
    }
    // The underlay, at node 1: NodePorts, its address, VXLAN from node 2's address.
    let out = storm(
        &ext,
        &[
            "eth0".into(),
            count.clone(),
            "21".into(),
            "uplink".into(),
            format!("mac={}", mac_of(&ext, "eth0")),
            format!("ip={EXT}"),
            format!("to_mac={}", uplink_mac(&n1.socket)),
            format!("targets={}", n1.node_ip),
            format!("spoof={}", n2.node_ip),
        ],
    );
    eprintln!("underlay: {out}");
    // Parked packets (waiting for ARP that never comes) time out; then the books
    // must balance on both nodes.
    std::thread::sleep(Duration::from_secs(3));
    for n in [&n1, &n2] {
        let s = stats(&n.socket);
        assert_eq!(
            s.rx + s.replicated,
            s.tx + s.dropped,
            "{}: frames unaccounted for: {s:?}",
            n.name
        );
        let by_reason: u64 = s.drops.iter().map(|d| d.count).sum();
        assert_eq!(by_reason, s.dropped, "{}: drops without a reason", n.name);
        let mut top: Vec<_> = s.drops.iter().filter(|d| d.count > 0).collect();
        top.sort_by_key(|d| std::cmp::Reverse(d.count));
        eprintln!(
            "{}: rx {} tx {} dropped {} by {} reasons: {}",
            n.name,
            s.rx,
            s.tx,
            s.dropped,
            top.len(),
            top.iter()
                .take(12)
                .map(|d| format!("{}={}", d.reason, d.count))
                .collect::<Vec<_>>()
                .join(" ")
        );
        assert!(
            s.dropped > 1000,
            "{}: the storm did not arrive ({s:?})",
            n.name
        );
        assert!(
            net::pid_alive(n.dataplane_pid.expect("running")),
            "{} dataplane died",
            n.name
        );
    }
    // Both still forward: the overlay both ways, a Service, masquerade.
    assert!(
        ping(&a.netns, &remote.ip),
        "node 1 to node 2 after the storm"
    );
    assert!(
        ping(&remote.netns, &a.ip),
        "node 2 to node 1 after the storm"
    );
    assert!(ping(&a.netns, EXT), "masquerade after the storm");
    let (ok, out) = tcp_transfer(&a.netns, &remote.netns, &remote.ip, 8080, 2_000_000);
    assert!(ok, "TCP across the overlay after the storm: {out}");
    let (ok, out) = tcp_transfer(&a.netns, &remote.netns, "10.96.0.40", 8080, 1_000_000);
    assert!(ok, "TCP through the Service after the storm: {out}");
    drop(lab);
}

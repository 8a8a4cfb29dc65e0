//! The DPDK wrapper's queue tokens and mbuf private area, on a real (null) device:
//! a port cannot be stopped while a token for one of its queues is out, tokens
//! exist only for queues the port has, and the pipeline's metadata lives in each
//! mbuf's private area. One test: the EAL starts once per process.
#![cfg(feature = "dpdk")]

use podpath_dataplane::dpdk::{Eal, EthPort, Mempool, PortError, PortSetup};
use podpath_dataplane::pipeline::{Frame, Meta};

/// Removes the EAL's runtime directory for this prefix, also when the test fails.
struct RuntimeDir(String);

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.0));
    }
}

#[test]
fn queue_tokens_keep_a_port_started_and_mbufs_carry_their_metadata() {
    let prefix = format!("podpath-tokens-{}", std::process::id());
    let _dir = RuntimeDir(prefix.clone());
    let args: Vec<String> = [
        "-l",
        "0",
        "--no-huge",
        "-m",
        "128",
        "--no-pci",
        "--file-prefix",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([prefix, "--log-level".into(), "lib.*:error".into()])
    .collect();
    let _eal = Eal::init(&args).expect("EAL starts without hugepages");
    let pool = Mempool::new("tokens", 1023, 0, 2176).expect("a pool");
    let dev = format!("net_null_tok{}", std::process::id() % 10_000);
    let mut port = EthPort::probe(&dev).expect("net_null probes");
    let setup = PortSetup {
        rx_queues: 2,
        tx_queues: 1,
        rx_desc: 128,
        tx_desc: 128,
        mtu: None,
    };
    port.configure(&setup, &pool).expect("configures");
    assert!(
        port.rx_queue(0).is_none(),
        "no token before the port starts"
    );
    port.start().expect("starts");

    // Tokens only for queues that exist.
    assert!(port.rx_queue(2).is_none() && port.tx_queue(1).is_none());
    let mut rx = port.rx_queue(1).expect("rx queue 1");
    let mut tx = port.tx_queue(0).expect("tx queue 0");
    assert_eq!(port.tokens_out(), 2);

    // Real receive through the token; the metadata written into a buffer's private
    // area is read back from it, and survives a move of the buffer.
    let mut got = Vec::with_capacity(32);
    assert!(rx.burst(&mut got, 32) > 0, "net_null always has packets");
    let mut m = got.pop().expect("one");
    *m.meta_mut() = Meta::rx(7, 42);
    m.meta_mut().nh_ip = 0x0a00_0001;
    let moved = m;
    assert_eq!(
        (moved.meta().in_port, moved.meta().trace, moved.meta().nh_ip),
        (7, 42, 0x0a00_0001)
    );
    got.push(moved);
    let sent = tx.burst(&mut got);
    assert!(sent > 0, "net_null takes what it is given");
    drop(got);

    // Not stopped while a token is out: refused, named, and the port still works.
    match port.stop() {
        Err(PortError::InUse { tokens: 2, .. }) => {}
        other => panic!("stop with two tokens out: {other:?}"),
    }
    drop(tx);
    assert!(matches!(
        port.stop(),
        Err(PortError::InUse { tokens: 1, .. })
    ));
    let mut again = Vec::with_capacity(32);
    assert!(rx.burst(&mut again, 32) > 0, "still started");
    drop(again);
    drop(rx);
    port.stop().expect("stops once every token is back");
    assert!(port.rx_queue(0).is_none(), "no token once stopped");
    port.remove().expect("unplugs");
}

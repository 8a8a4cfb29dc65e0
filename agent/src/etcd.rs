//! The etcd source: registers this node's subnet lease (flannel's layout) and keeps
//! it alive, lists the others from one revision and watches from the next, and
//! turns leases into the control service's remotes. Errors end a session; the next
//! one reconnects with back-off, relists and reconciles, and nothing the control
//! service holds is dropped in between (a node is withdrawn only when its lease is
//! gone from etcd).
use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use podpath_proto::RemoteSpec;
use tokio::sync::watch;

use crate::config::Config;
use crate::flannel;
use crate::node::Node;

/// How a session ended.
pub enum End {
    /// Asked to stop: the lease was revoked (the other nodes withdraw this one now).
    Stopped,
}

pub async fn run(cfg: &Config, mut stop: watch::Receiver<bool>, log: &dyn Fn(&str)) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let began = tokio::time::Instant::now();
        match session(cfg, &mut stop, log).await {
            Ok(End::Stopped) => return,
            Err(e) => log(&format!("etcd session ended: {e}; again in {backoff:?}")),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        // A session that ran a while (then lost etcd) starts the back-off afresh.
        backoff = if began.elapsed() > Duration::from_secs(10) {
            Duration::from_millis(200)
        } else {
            (backoff * 2).min(Duration::from_secs(5))
        };
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn session(
    cfg: &Config,
    stop: &mut watch::Receiver<bool>,
    log: &dyn Fn(&str),
) -> Result<End, String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: etcd_client::Error| format!("{what}: {err}")
    };
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    let mut etcd = Client::connect(&cfg.etcd.endpoints, Some(opts))
        .await
        .map_err(e("connect"))?;
    let prefix = cfg.etcd.prefix.trim_end_matches('/');
    let conf_key = format!("{prefix}/config");
    let got = etcd
        .get(conf_key.as_str(), None)
        .await
        .map_err(e("get the network config"))?;
    let net: flannel::NetworkConfig = match got.kvs().first() {
        Some(kv) => {
            serde_json::from_slice(kv.value()).map_err(|err| format!("{conf_key}: {err}"))?
        }
        None => {
            return Err(format!(
                "no network config at {conf_key} (flannel's layout)"
            ))
        }
    };
    let mut node = Node::connect(&cfg.agent.control_socket)?;
    let me = node.spec()?;
    if me.vni != net.backend.vni
        || me.vxlan_port != net.backend.port
        || me.cluster_cidr != net.network
    {
        log(&format!(
            "warning: the node's overlay (cluster {} VNI {} port {}) differs from {conf_key} (network {} VNI {} port {})",
            me.cluster_cidr, me.vni, me.vxlan_port, net.network, net.backend.vni, net.backend.port
        ));
    }
    // Register this node: a lease, the subnet key on it, keep-alives.
    let ours =
        flannel::our_lease(&me, net.backend.vni).ok_or("the node's pod CIDR has no gateway")?;
    let own_key = format!("{prefix}/subnets/{}", flannel::subnet_key(&me.pod_cidr));
    let ttl = cfg.etcd.lease_ttl_s;
    let lease = etcd
        .lease_grant(ttl, None)
        .await
        .map_err(e("grant a lease"))?
        .id();
    let value = serde_json::to_vec(&ours).map_err(|err| err.to_string())?;
    etcd.put(
        own_key.as_str(),
        value.clone(),
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .map_err(e("register the subnet lease"))?;
    let (mut keeper, mut alive) = etcd
        .lease_keep_alive(lease)
        .await
        .map_err(e("keep the lease alive"))?;
    log(&format!("registered {own_key} (lease {lease:x}, {ttl} s)"));

    // The others, as of one revision; then every change after it.
    let subnets = format!("{prefix}/subnets/");
    let list = etcd
        .get(subnets.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(e("list the subnet leases"))?;
    let rev = list.header().map_or(0, |h| h.revision());
    let mut known: BTreeMap<String, RemoteSpec> = BTreeMap::new();
    for kv in list.kvs() {
        let key = text(kv.key());
        if key == own_key {
            continue;
        }
        match flannel::remote(key.trim_start_matches(&subnets), kv.value()) {
            Ok(r) => {
                known.insert(key, r);
            }
            Err(err) => log(&format!("ignored: {err}")),
        }
    }
    let desired: Vec<RemoteSpec> = known.values().cloned().collect();
    let (added, removed) = node.reconcile(&desired)?;
    log(&format!(
        "in step at revision {rev}: {} remote(s), {added} added, {removed} withdrawn",
        desired.len()
    ));
    let mut watcher = etcd
        .watch(
            subnets.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1),
            ),
        )
        .await
        .map_err(e("watch the subnet leases"))?;
    let mut tick = tokio::time::interval(Duration::from_millis(
        u64::try_from(ttl).unwrap_or(60) * 1000 / 3,
    ));
    loop {
        tokio::select! {
            _ = tick.tick() => keeper.keep_alive().await.map_err(e("keep-alive"))?,
            m = alive.message() => match m.map_err(e("keep-alive"))? {
                Some(r) if r.ttl() > 0 => {}
                _ => return Err(format!("lease {lease:x} expired")),
            },
            w = watcher.message() => {
                let w = w.map_err(e("watch"))?.ok_or("the watch ended")?;
                if w.canceled() {
                    return Err(format!("the watch was cancelled: {}", w.cancel_reason()));
                }
                for ev in w.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = text(kv.key());
                    if key == own_key {
                        // Someone removed this node's lease key while the lease
                        // lives: announce the node again.
                        if ev.event_type() == EventType::Delete {
                            etcd.put(own_key.as_str(), value.clone(), Some(PutOptions::new().with_lease(lease)))
                                .await
                                .map_err(e("register the subnet lease again"))?;
                            log(&format!("{own_key} was deleted: registered again"));
                        }
                        continue;
                    }
                    let short = key.trim_start_matches(&subnets).to_string();
                    match ev.event_type() {
                        EventType::Put => match flannel::remote(&short, kv.value()) {
                            Ok(r) => {
                                node.add(&r)?;
                                log(&format!("node {} ({}) joined: {}", r.node_ip, r.pod_cidr, r.name));
                                known.insert(key, r);
                            }
                            Err(err) => log(&format!("ignored: {err}")),
                        },
                        EventType::Delete => {
                            if let Some(r) = known.remove(&key) {
                                node.del(&r.name)?;
                                log(&format!("node {} ({}) left: its lease is gone", r.node_ip, r.pod_cidr));
                            }
                        }
                    }
                }
            }
            _ = stop.changed() => {
                // A clean stop withdraws this node from the others at once.
                let _ = etcd.lease_revoke(lease).await;
                log(&format!("revoked lease {lease:x}"));
                return Ok(End::Stopped);
            }
        }
    }
}

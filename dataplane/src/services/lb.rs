//! `lb`: Service load balancing (walk 4). A new connection to a Service's virtual IP
//! and port gets an endpoint from the Service's Maglev table and its destination
//! rewritten; the connection table remembers the choice, so later packets go to the
//! same endpoint and the endpoint's replies get the virtual IP back as source. Runs
//! before `ip4-lookup`, so the endpoint may be local or on another node. A Service
//! without endpoints refuses at once: TCP with a reset, UDP with ICMP port
//! unreachable.
use crate::nat::icmp::{is_icmp_error, quoted, untranslate};
use crate::nat::snat::{client_owner, rewrite, tcp_flags, NatPorts};
use crate::pipeline::stage::{Features, Vector};

use crate::nat::conntrack::{tcp_flags_valid, Conntrack, Dir, InsertError, Tuple};
use crate::nat::frag::{FragKey, FragNat, Fragments};
use crate::pipeline::stage::Ctx;
use crate::pipeline::{DropReason, Frame, IcmpKind, Meta, Next, StageId, TraceDetail};
use crate::services::table::{Endpoint, ServiceTable};
use hashbrown::HashMap;

/// ClientIP affinity: (client, ServicePort identity) -> (endpoint, expiry in ms). Per
/// worker, bounded. Keyed by the Service's `uid`, which a deleted Service takes with
/// it (a new one never inherits its choices); stale entries (endpoint gone, expired,
/// Service gone) are ignored, replaced, or evicted when room is needed.
pub struct Affinity {
    map: HashMap<(u32, u32), (Endpoint, u64)>,
    capacity: usize,
    /// When a full table found nothing to evict: the earliest expiry it holds. Until
    /// then a new client goes without affinity at no cost (no scan per client).
    full_until: u64,
    /// Clients that went without affinity because the table was full (published as
    /// `affinity_table_full`).
    pub full: u64,
}

impl Affinity {
    pub fn new(capacity: usize) -> Affinity {
        Affinity {
            map: HashMap::with_capacity(capacity.saturating_mul(2)),
            capacity,
            full_until: 0,
            full: 0,
        }
    }

    fn get(&self, client: u32, svc: u32, now_ms: u64) -> Option<Endpoint> {
        self.map
            .get(&(client, svc))
            .filter(|(_, exp)| *exp > now_ms)
            .map(|(e, _)| *e)
    }

    /// Remembers `ep` for (client, svc) until `until_ms`. When the table is full, the
    /// entries expired by `now_ms` or of Services that are gone (`live` says which
    /// are not) make room; if none is, the client goes without affinity, and so does
    /// every new client until the earliest entry expires (one scan, not one per
    /// client).
    fn set(
        &mut self,
        client: u32,
        svc: u32,
        ep: Endpoint,
        now_ms: u64,
        until_ms: u64,
        live: impl Fn(u32) -> bool,
    ) -> bool {
        if self.map.len() >= self.capacity && !self.map.contains_key(&(client, svc)) {
            if now_ms < self.full_until {
                self.full += 1;
                return false;
            }
            let mut soonest = u64::MAX;
            self.map.retain(|k, (_, exp)| {
                let keep = *exp > now_ms && live(k.1);
                if keep {
                    soonest = soonest.min(*exp);
                }
                keep
            });
            if self.map.len() >= self.capacity {
                self.full_until = soonest;
                self.full += 1;
                return false;
            }
        }
        self.map.insert((client, svc), (ep, until_ms));
        true
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
use crate::port::Role;
use crate::wire::{checksum, ethernet, ipv4, tcp, Ipv4Addr};

/// Where a packet goes when `lb` has nothing to do with it.
fn onward(cx: &Ctx, m: &Meta, d: &[u8]) -> Next {
    let routed = cx.ports.role(m.in_port) != Role::Pod
        || cx
            .l3
            .node
            .as_ref()
            .is_some_and(|n| d[0..6] == n.router_mac.0);
    if routed {
        Next::Stage(StageId::Ip4Lookup)
    } else {
        Next::Stage(StageId::Bridge)
    }
}

fn flow_hash(t: &Tuple) -> u64 {
    let mut h = (u64::from(t.src) << 32 | u64::from(t.dst))
        ^ (u64::from(t.sport) << 24 | u64::from(t.dport) << 8 | u64::from(t.proto));
    h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 29)
}

/// Turns a TCP segment into the reset that refuses it (RFC 9293 3.10.7.1), in place,
/// addressed back to its sender.
fn tcp_reset(d: &mut [u8], l3: usize, l4: usize) -> bool {
    let (seq, ack, syn, fin, plen) = {
        let ip = ipv4::Packet::new_unchecked(&d[l3..]);
        let t = tcp::Packet::new_unchecked(&d[l4..]);
        let hl = t.header_len();
        let plen = usize::from(ip.total_len()).saturating_sub(ip.header_len() + hl);
        (
            t.seq_number(),
            t.ack_number(),
            t.flags() & tcp::flags::SYN != 0,
            t.flags() & tcp::flags::FIN != 0,
            plen,
        )
    };
    let total = l4 + tcp::HEADER_LEN;
    if d.len() < total {
        return false;
    }
    // Swap addresses and ports.
    let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
    a.copy_from_slice(&d[l3 + 12..l3 + 16]);
    b.copy_from_slice(&d[l3 + 16..l3 + 20]);
    d[l3 + 12..l3 + 16].copy_from_slice(&b);
    d[l3 + 16..l3 + 20].copy_from_slice(&a);
    let (sp, dp) = ([d[l4], d[l4 + 1]], [d[l4 + 2], d[l4 + 3]]);
    d[l4..l4 + 2].copy_from_slice(&dp);
    d[l4 + 2..l4 + 4].copy_from_slice(&sp);
    let seg_len = u32::try_from(plen).unwrap_or(0) + u32::from(syn) + u32::from(fin);
    // RST+ACK acknowledging what came; sequence from the peer's ACK when it had one.
    let rst_seq = if d[l4 + 13] & tcp::flags::ACK != 0 {
        ack
    } else {
        0
    };
    d[l4 + 4..l4 + 8].copy_from_slice(&rst_seq.to_be_bytes());
    d[l4 + 8..l4 + 12].copy_from_slice(&seq.wrapping_add(seg_len).to_be_bytes());
    d[l4 + 12] = 0x50;
    d[l4 + 13] = tcp::flags::RST | tcp::flags::ACK;
    d[l4 + 14..l4 + 20].fill(0);
    let tcp_len = tcp::HEADER_LEN;
    let ip_len = u16::try_from(l4 - l3 + tcp_len).unwrap_or(40);
    d[l3 + 2..l3 + 4].copy_from_slice(&ip_len.to_be_bytes());
    let mut ip = ipv4::Packet::new_unchecked(&mut d[l3..]);
    ip.set_ttl(64);
    ip.fill_checksum();
    let (src, dst) = (b, a);
    let ph = checksum::pseudo_header(src, dst, 6, u16::try_from(tcp_len).unwrap_or(20));
    let c = !checksum::fold(ph + checksum::sum(&d[l4..l4 + tcp_len]));
    d[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    true
}

#[allow(clippy::too_many_arguments)]
pub fn process<F: Frame>(cx: &Ctx, feat: &mut Features, v: &mut Vector<F>) {
    let services = cx.services;
    let crate::nat::Nat {
        conntrack: ct,
        ports: nat_ports,
        frags,
        owners,
    } = &mut feat.nat;
    let (owners, now) = (*owners, cx.seconds);
    let crate::services::Services {
        affinity,
        frag_scratch: scratch,
    } = &mut feat.services;
    let (pkts, frames, next, detail) = v.parts();
    let FragScratch { firsts, laters } = scratch;
    let (mut n_firsts, mut n_laters) = (0, 0);
    let mut tuples = [None; crate::pipeline::BURST];
    crate::nat::snat::prefetch_connections(ct, pkts, frames, &mut tuples);
    for &i in pkts {
        let i = usize::from(i);
        let f = &mut frames[i];
        let m = *f.meta();
        let (l3, l4) = (usize::from(m.l3), usize::from(m.l4));
        let d = f.data_mut();
        next[i] = onward(cx, &m, d);
        if m.frag == crate::pipeline::FRAG_LATER {
            // A later fragment: after the loop, when this vector's first fragments
            // have been remembered (both may arrive in one burst).
            if n_laters < laters.len() {
                laters[n_laters] = u8::try_from(i).unwrap_or(0);
                n_laters += 1;
            }
            continue;
        }
        if m.frag == crate::pipeline::FRAG_FIRST && n_firsts < firsts.len() {
            firsts[n_firsts] = (
                u8::try_from(i).unwrap_or(0),
                Fragments::key_of(d, l3, m.proto),
            );
            n_firsts += 1;
        }
        if m.l4 == 0 {
            continue;
        }
        // Into the Service range (when the node knows it): what no Service takes is
        // refused or dropped here, as kube-proxy does, not routed out masqueraded.
        // Asked only where no Service took the packet.
        let in_range = |dst: u32| {
            cx.l3
                .node
                .as_ref()
                .is_some_and(|n| n.in_service_range(dst))
                .then_some(dst)
        };
        if m.proto == 1 && is_icmp_error(d[l4]) {
            // An error about a Service connection (an endpoint's port unreachable, a
            // router's fragmentation needed): the client must see it from the
            // virtual IP, about the packet it sent.
            if let Some(q) = quoted(d, l3, l4).filter(|q| q.proto != 1) {
                if let Some((k, _)) = untranslate(ct, now, d, l3, l4, &q) {
                    if ct.entry(k).is_masq() {
                        // Its destination was the node or the gateway: route it.
                        next[i] = Next::Stage(StageId::Ip4Lookup);
                    }
                } else if owners.workers > 1 {
                    // Another worker's connection: the quoted packet names its
                    // client (or, translated to the node, its NAT port).
                    let s = q.sent;
                    let owner = match services.endpoint_owner_by_client_ip(s.dst, s.dport, s.proto)
                    {
                        None => None,
                        Some(_)
                            if NatPorts::owner(owners.lo, owners.hi, owners.workers, s.sport)
                                .is_some()
                                && cx.l3.node.as_ref().is_some_and(|n| {
                                    s.src == n.node_ip || s.src == n.gateway_ip
                                }) =>
                        {
                            NatPorts::owner(owners.lo, owners.hi, owners.workers, s.sport)
                        }
                        Some(by_ip) => Some(client_owner(
                            s.src,
                            if by_ip { 0 } else { s.sport },
                            owners.workers,
                        )),
                    };
                    if let Some(w) = owner.filter(|&w| w != owners.me) {
                        next[i] = Next::Handoff(w);
                    }
                }
            }
            continue;
        }
        if m.proto != 6 && m.proto != 17 {
            let dst = u32::from_be_bytes([d[l3 + 16], d[l3 + 17], d[l3 + 18], d[l3 + 19]]);
            if let Some(dst) = in_range(dst) {
                next[i] = not_a_service(services, f, dst);
            }
            continue;
        }
        let Some((t, hash)) = tuples[i] else {
            continue;
        };
        let flags = tcp_flags(d, l4, m.proto);
        match ct.lookup_or_reopen_hashed(&t, &hash, flags, now) {
            Some((k, dir)) if ct.entry(k).is_dnat() => {
                let e = *ct.entry(k);
                if !ct.update(k, dir, flags, now) {
                    next[i] = Next::Drop(DropReason::CtInvalid);
                    continue;
                }
                if dir == Dir::Orig {
                    // Established: to the same endpoint (and, NodePort/Cluster, from
                    // the node again).
                    rewrite(d, l3, l4, m.proto, false, e.reply.src, e.reply.sport);
                    if e.is_masq() {
                        rewrite(d, l3, l4, m.proto, true, e.reply.dst, e.reply.dport);
                    }
                    next[i] = Next::Stage(StageId::Ip4Lookup);
                } else {
                    // The endpoint's reply: from the virtual IP (or NodePort) again.
                    rewrite(d, l3, l4, m.proto, true, e.orig.dst, e.orig.dport);
                    if e.is_masq() {
                        rewrite(d, l3, l4, m.proto, false, e.orig.src, e.orig.sport);
                        next[i] = Next::Stage(StageId::Ip4Lookup);
                    }
                }
                if m.trace != 0 {
                    let (to, port) = if dir == Dir::Orig {
                        (e.reply.src, e.reply.sport)
                    } else {
                        (e.orig.dst, e.orig.dport)
                    };
                    detail[i] = TraceDetail::Nat {
                        src: dir == Dir::Reply,
                        to: Ipv4Addr::from_u32(to),
                        port,
                    };
                }
                continue;
            }
            Some(_) => continue,
            None => {}
        }
        if owners.workers > 1 {
            // Missed here: maybe another worker's connection. A Service endpoint's
            // packet goes to the owner of its client (by NAT port when it is addressed
            // to the node or the gateway: NodePort and hairpin connections).
            if let Some(by_ip) = services.endpoint_owner_by_client_ip(t.src, t.sport, t.proto) {
                let to_us = cx
                    .l3
                    .node
                    .as_ref()
                    .is_some_and(|n| t.dst == n.node_ip || t.dst == n.gateway_ip);
                let owner = if to_us {
                    NatPorts::owner(owners.lo, owners.hi, owners.workers, t.dport)
                } else {
                    let port = if by_ip { 0 } else { t.dport };
                    Some(client_owner(t.dst, port, owners.workers))
                };
                if let Some(w) = owner.filter(|&w| w != owners.me) {
                    next[i] = Next::Handoff(w);
                    continue;
                }
            }
            // A new ClusterIP (or NodePort/Local, which keeps the client's address)
            // connection is made on its client's worker.
            let node_ip = cx.l3.node.as_ref().map_or(0, |n| n.node_ip);
            let local_np = (t.dst == node_ip)
                .then(|| services.by_node_port(t.dport, t.proto))
                .flatten()
                .map(|(_, s)| s)
                .filter(|s| s.local_policy);
            let from_pod = cx
                .l3
                .node
                .as_ref()
                .is_some_and(|n| t.src & crate::ip4::lpm::mask(n.cluster.1) == n.cluster.0);
            // External IPs keep the client's address from pods and with policy
            // Local: those connections belong to the client's worker too.
            let external = services
                .by_external(t.dst, t.dport, t.proto)
                .map(|(s, _)| s)
                .filter(|s| from_pod || s.local_policy);
            let by_ip = services
                .lookup(t.dst, t.dport, t.proto)
                .or(local_np)
                .or(external)
                .map(|s| s.owner_by_client_ip)
                // A deleted Service's connection (it lives on where it was made).
                .or_else(|| services.departed_vip(t.dst, t.dport, t.proto));
            if let Some(by_ip) = by_ip {
                let port = if by_ip { 0 } else { t.sport };
                let w = client_owner(t.src, port, owners.workers);
                if w != owners.me {
                    next[i] = Next::Handoff(w);
                    continue;
                }
            }
        }
        let node_ip = cx.l3.node.as_ref().map_or(0, |n| n.node_ip);
        // What is handled as a NodePort (with the external traffic policy): the node
        // IP at a NodePort, and external or LoadBalancer IPs from outside or the
        // node; from pods, those are handled as the ClusterIP (kube-proxy
        // short-circuits in-cluster traffic to external addresses).
        let mut from_pod_external = None;
        let as_node_port = if t.dst == node_ip {
            match services.by_node_port(t.dport, t.proto) {
                Some((_, s)) => Some(s),
                None => continue,
            }
        } else if let Some((s, is_lb)) = services.by_external(t.dst, t.dport, t.proto) {
            if is_lb
                && !s.source_ranges.is_empty()
                && !s
                    .source_ranges
                    .iter()
                    .any(|&(n, len)| t.src & crate::ip4::lpm::mask(len) == n)
            {
                next[i] = Next::Drop(DropReason::LbSourceNotAllowed);
                continue;
            }
            let from_pod = cx
                .l3
                .node
                .as_ref()
                .is_some_and(|n| t.src & crate::ip4::lpm::mask(n.cluster.1) == n.cluster.0);
            if from_pod {
                from_pod_external = Some(s);
                None
            } else {
                Some(s)
            }
        } else {
            None
        };
        if let Some(s) = as_node_port {
            next[i] = if t.proto == 6 && !tcp_flags_valid(flags) {
                Next::Drop(DropReason::CtInvalid)
            } else {
                node_port(
                    ct,
                    nat_ports,
                    s,
                    &t,
                    flags,
                    node_ip,
                    now,
                    d,
                    l3,
                    l4,
                    &m,
                    detail.get_mut(i),
                )
            };
            continue;
        }
        let Some(svc) = services
            .lookup(t.dst, t.dport, t.proto)
            .or(from_pod_external)
        else {
            if let Some(dst) = in_range(t.dst) {
                next[i] = not_a_service(services, f, dst);
            }
            continue;
        };
        if t.proto == 6 && !tcp_flags_valid(flags) {
            // No connection starts with these flags: not tracked, not translated.
            next[i] = Next::Drop(DropReason::CtInvalid);
            continue;
        }
        // internalTrafficPolicy Local: this node's endpoints only.
        let (eps, table) = if svc.internal_local {
            (&svc.local_endpoints, &svc.local_maglev)
        } else {
            (&svc.endpoints, &svc.maglev)
        };
        // Affinity first (while its endpoint still takes connections), else Maglev.
        let now_ms = cx.now_ms;
        let sticky = (svc.affinity > 0)
            .then(|| affinity.get(t.src, svc.uid, now_ms))
            .flatten()
            .filter(|e| eps.contains(e));
        let picked = sticky.or_else(|| {
            table
                .pick(flow_hash(&t))
                .and_then(|k| eps.get(usize::from(k)).copied())
        });
        if let (Some(e), true) = (picked, svc.affinity > 0) {
            let until = now_ms.saturating_add(u64::from(svc.affinity).saturating_mul(1000));
            affinity.set(t.src, svc.uid, e, now_ms, until, |u| services.has_uid(u));
        }
        let Some(ep) = picked else {
            if svc.internal_local {
                // kube-proxy drops these silently: the Service works on other nodes.
                next[i] = Next::Drop(DropReason::LbNoLocalEndpoint);
                continue;
            }
            // No endpoint: refuse now rather than let the client time out.
            next[i] = refuse(f, DropReason::LbNoEndpoint);
            continue;
        };
        if ep.ip == t.src {
            // Hairpin: a pod reaching itself through its Service. Its source becomes
            // the pods' gateway, so the reply comes back through the dataplane.
            let Some(gw) = cx.l3.node.as_ref().map(|n| n.gateway_ip) else {
                next[i] = Next::Drop(DropReason::LbNoEndpoint);
                continue;
            };
            let (k, p) = match masq_insert(ct, nat_ports, &t, ep, gw, now) {
                Ok(v) => v,
                Err(r) => {
                    next[i] = Next::Drop(r);
                    continue;
                }
            };
            ct.update(k, Dir::Orig, flags, now);
            rewrite(d, l3, l4, m.proto, false, ep.ip, ep.port);
            rewrite(d, l3, l4, m.proto, true, gw, p);
            next[i] = Next::Stage(StageId::Ip4Lookup);
            continue;
        }
        let reply = Tuple {
            src: ep.ip,
            dst: t.src,
            sport: ep.port,
            dport: t.sport,
            proto: t.proto,
        };
        // `t` was looked up above and missed.
        match ct.insert_missed(t, &hash, reply, now) {
            Ok(k) => {
                ct.set_dnat(k);
                ct.update(k, Dir::Orig, flags, now);
            }
            Err(InsertError::Full) => {
                next[i] = Next::Drop(DropReason::CtTableFull);
                continue;
            }
            Err(InsertError::Exists) => {
                next[i] = Next::Drop(DropReason::LbTupleClash);
                continue;
            }
        }
        rewrite(d, l3, l4, m.proto, false, ep.ip, ep.port);
        if m.trace != 0 {
            detail[i] = TraceDetail::Nat {
                src: false,
                to: Ipv4Addr::from_u32(ep.ip),
                port: ep.port,
            };
        }
        next[i] = Next::Stage(StageId::Ip4Lookup);
    }
    for &(i, key) in &firsts[..n_firsts] {
        let i = usize::from(i);
        let Next::Stage(_) = next[i] else {
            continue;
        };
        let f = &frames[i];
        let now = Fragments::key_of(f.data(), usize::from(f.meta().l3), key.proto);
        // Translated (not a refusal, which swaps the addresses back to the sender).
        let swapped = (now.src, now.dst) == (key.dst, key.src);
        if (now.src, now.dst) != (key.src, key.dst) && !swapped {
            let nat = FragNat {
                src: now.src,
                dst: now.dst,
            };
            frags.remember(key, nat, cx.now_ms);
        }
    }
    // Later fragments: the first one's translation, if it had one.
    for &i in &laters[..n_laters] {
        let i = usize::from(i);
        let f = &mut frames[i];
        let m = *f.meta();
        let l3 = usize::from(m.l3);
        match frags.translate_later(f.data_mut(), l3, m.proto, cx.now_ms) {
            Some((key, nat)) if nat.dst != key.dst => next[i] = Next::Stage(StageId::Ip4Lookup),
            Some(_) => {}
            None if services.has_vip(Fragments::key_of(f.data(), l3, m.proto).dst) => {
                // To a virtual IP, but its first fragment was not seen (out of
                // order, lost, or the table was full): nothing to translate it to.
                next[i] = Next::Drop(DropReason::LbFragmentUnknown);
            }
            None => {}
        }
    }
}

/// Per-vector notes on fragments, kept by the pipeline so no call initialises them:
/// the first fragments seen, with their addresses before any rewrite (each one
/// translated is remembered after the loop), and the later ones (translated after
/// that, so both may come in one vector).
pub struct FragScratch {
    firsts: [(u8, FragKey); crate::pipeline::BURST],
    laters: [u8; crate::pipeline::BURST],
}

impl Default for FragScratch {
    fn default() -> Self {
        let k = FragKey {
            src: 0,
            dst: 0,
            id: 0,
            proto: 0,
        };
        FragScratch {
            firsts: [(0, k); crate::pipeline::BURST],
            laters: [0; crate::pipeline::BURST],
        }
    }
}

/// Refuses a packet in place, as the destination's kernel would: a TCP segment
/// becomes the reset that answers it, anything else an ICMP port unreachable (built
/// by `icmp-error`, from the address it was sent to). `why` when no reset can be
/// made (a segment that is itself a reset, IP options).
fn refuse<F: Frame>(f: &mut F, why: DropReason) -> Next {
    let m = *f.meta();
    let (l3, l4) = (usize::from(m.l3), usize::from(m.l4));
    if m.proto != 6 {
        f.meta_mut().set_icmp(IcmpKind::PortUnreachable);
        return Next::Stage(StageId::IcmpError);
    }
    let d = f.data_mut();
    // Never a reset for a reset (RFC 9293 3.10.7.1).
    if d[l4 + 13] & tcp::flags::RST != 0 || l3 != ethernet::HEADER_LEN || !tcp_reset(d, l3, l4) {
        return Next::Drop(why);
    }
    let _ = f.set_len(l4 + tcp::HEADER_LEN);
    Next::Stage(StageId::Ip4Lookup)
}

/// A packet into the Service range that no Service takes: to a ClusterIP on a port
/// (or protocol) none of its ServicePorts defines, refused (kube-proxy's "reject
/// traffic to invalid ports of ClusterIPs"); to an address that is no ClusterIP,
/// dropped without an answer ("drop traffic to unallocated ClusterIPs").
fn not_a_service<F: Frame>(services: &ServiceTable, f: &mut F, dst: u32) -> Next {
    if services.has_vip(dst) {
        refuse(f, DropReason::LbNoServicePort)
    } else {
        Next::Drop(DropReason::LbUnallocatedClusterIp)
    }
}

/// A new connection to a NodePort. Policy Cluster: any endpoint, the client's source
/// translated to the node (so the reply comes back through this node). Policy Local:
/// this node's endpoints only, the client's address kept.
#[allow(clippy::too_many_arguments)]
fn node_port(
    ct: &mut Conntrack,
    ports: &mut NatPorts,
    svc: &crate::services::table::Service,
    t: &Tuple,
    flags: u8,
    node_ip: u32,
    now: u32,
    d: &mut [u8],
    l3: usize,
    l4: usize,
    m: &Meta,
    detail: Option<&mut TraceDetail>,
) -> Next {
    let (eps, table) = if svc.local_policy {
        (&svc.local_endpoints, &svc.local_maglev)
    } else {
        (&svc.endpoints, &svc.maglev)
    };
    let Some(ep) = table
        .pick(flow_hash(t))
        .and_then(|k| eps.get(usize::from(k)).copied())
    else {
        return Next::Drop(DropReason::LbNoEndpoint);
    };
    if svc.local_policy {
        let reply = Tuple {
            src: ep.ip,
            dst: t.src,
            sport: ep.port,
            dport: t.sport,
            proto: t.proto,
        };
        let k = match ct.insert(*t, reply, now) {
            Ok(k) => k,
            Err(InsertError::Full) => return Next::Drop(DropReason::CtTableFull),
            Err(InsertError::Exists) => return Next::Drop(DropReason::LbTupleClash),
        };
        ct.set_dnat(k);
        ct.update(k, Dir::Orig, flags, now);
        rewrite(d, l3, l4, m.proto, false, ep.ip, ep.port);
    } else {
        let (k, p) = match masq_insert(ct, ports, t, ep, node_ip, now) {
            Ok(v) => v,
            Err(r) => return Next::Drop(r),
        };
        ct.update(k, Dir::Orig, flags, now);
        rewrite(d, l3, l4, m.proto, false, ep.ip, ep.port);
        rewrite(d, l3, l4, m.proto, true, node_ip, p);
    }
    if let (Some(dt), true) = (detail, m.trace != 0) {
        *dt = TraceDetail::Nat {
            src: false,
            to: Ipv4Addr::from_u32(ep.ip),
            port: ep.port,
        };
    }
    Next::Stage(StageId::Ip4Lookup)
}

/// Tracks a Service connection whose client source is also translated, to `via`
/// (the node for a NodePort, the pods' gateway for hairpin) and a free NAT port.
fn masq_insert(
    ct: &mut Conntrack,
    ports: &mut NatPorts,
    t: &Tuple,
    ep: Endpoint,
    via: u32,
    now: u32,
) -> Result<(u32, u16), DropReason> {
    for _ in 0..256 {
        let p = ports.take();
        let reply = Tuple {
            src: ep.ip,
            dst: via,
            sport: ep.port,
            dport: p,
            proto: t.proto,
        };
        match ct.insert(*t, reply, now) {
            Ok(k) => {
                ct.set_masq(k);
                return Ok((k, p));
            }
            Err(InsertError::Exists) => continue,
            Err(InsertError::Full) => return Err(DropReason::CtTableFull),
        }
    }
    Err(DropReason::SnatPortsExhausted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Endpoint = Endpoint {
        ip: 0x0af4_0003,
        port: 8080,
    };
    const B: Endpoint = Endpoint {
        ip: 0x0af4_0102,
        port: 8080,
    };

    #[test]
    fn affinity_holds_to_the_millisecond_and_no_longer() {
        let mut a = Affinity::new(4);
        let live = |_| true;
        // A 1 s affinity set at 100 ms holds until 1 099 ms, not to a second boundary.
        assert!(a.set(1, 7, A, 100, 1100, live));
        assert_eq!(a.get(1, 7, 100), Some(A));
        assert_eq!(a.get(1, 7, 1099), Some(A), "still within the timeout");
        assert_eq!(a.get(1, 7, 1100), None, "expired at its deadline");
        // Per client and per ServicePort identity.
        assert_eq!(a.get(2, 7, 500), None);
        assert_eq!(
            a.get(1, 8, 500),
            None,
            "another Service does not inherit it"
        );
        // A new choice replaces the old one and restarts the clock.
        assert!(a.set(1, 7, B, 105, 1105, live));
        assert_eq!(a.get(1, 7, 1102), Some(B));
    }

    #[test]
    fn a_full_table_makes_room_from_expired_or_deleted_entries_and_does_not_rescan() {
        let mut a = Affinity::new(2);
        let live = |_| true;
        assert!(a.set(1, 1, A, 0, 10_000, live));
        assert!(a.set(2, 1, A, 0, 20_000, live));
        // Full, nothing expired: the third client goes without affinity, and until
        // the first entry expires no further client makes the table scan.
        assert!(!a.set(3, 1, B, 5_000, 15_000, live));
        assert_eq!(a.full_until, 10_000);
        let scanned = std::cell::Cell::new(0);
        let counting = |_| {
            scanned.set(scanned.get() + 1);
            true
        };
        assert!(!a.set(4, 1, B, 6_000, 16_000, counting));
        assert_eq!(
            scanned.get(),
            0,
            "a full table was scanned again before 10 s"
        );
        assert_eq!(a.get(3, 1, 5_000), None);
        assert_eq!(a.full, 2, "both clients without affinity are counted");
        assert_eq!(a.get(1, 1, 5_000), Some(A), "live entries are kept");
        // At 12 s client 1's entry has expired: it makes room, client 2's stays.
        assert!(a.set(3, 1, B, 12_000, 22_000, live));
        assert_eq!(a.get(3, 1, 12_000), Some(B));
        assert_eq!(a.get(2, 1, 12_000), Some(A));
        assert_eq!(a.map.len(), 2, "bounded by its capacity");
        // An existing key is updated even when full.
        assert!(a.set(2, 1, B, 13_000, 30_000, live));
        assert_eq!(a.get(2, 1, 13_000), Some(B));
        // Service 1 is deleted: its entries make room though they have not expired.
        assert!(a.set(5, 2, A, 14_000, 40_000, |u| u != 1));
        assert_eq!(a.get(5, 2, 14_000), Some(A));
        assert_eq!(a.map.len(), 1);
    }
}

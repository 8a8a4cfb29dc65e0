//! `arp`: the dataplane's ARP. Answers requests for the pods' gateway (on pod ports),
//! for the node IP (on the uplink), and for any address asked on the host port (proxy
//! ARP: the node's kernel reaches every cluster address through the dataplane). Learns
//! the sender of every ARP it sees. Pod-to-pod ARP goes on to the bridge.
use crate::ip4::lpm::mask;
use crate::pipeline::stage::Ctx;
use crate::pipeline::stage::{Features, Vector};
use crate::pipeline::{DropReason, Frame, Next, StageId, TraceDetail};
use crate::port::Role;
use crate::wire::{arp, ethernet, EtherType, Ipv4Addr, MacAddr};

#[allow(clippy::too_many_arguments)]
pub fn process<F: Frame>(cx: &Ctx, feat: &mut Features, v: &mut Vector<F>) {
    let (neighbors, learned) = (&mut feat.ip4.neighbors, &mut feat.ip4.learned);
    let (pkts, frames, next, detail) = v.parts();
    let Some(node) = cx.l3.node.as_ref() else {
        for &i in pkts {
            next[usize::from(i)] = Next::Stage(StageId::Bridge);
        }
        return;
    };
    for &i in pkts {
        let i = usize::from(i);
        let f = &mut frames[i];
        let m = *f.meta();
        let l3 = usize::from(m.l3);
        let role = cx.ports.role(m.in_port);
        // eth-input validated the ARP packet.
        let Ok(r) = arp::Repr::parse(&arp::Packet::new_unchecked(&f.data()[l3..])) else {
            next[i] = Next::Drop(DropReason::ArpMalformed);
            continue;
        };
        let sender = r.sender_ip.to_u32();
        let target = r.target_ip.to_u32();
        // Learn only what this port may speak for (pods their subnet, the kernel the
        // node IP, the underlay its subnet), and, as RFC 826, add new entries only from
        // messages to us; known ones are refreshed from any.
        let plausible = match role {
            Role::Pod => {
                sender & mask(node.pod_net.1) == node.pod_net.0 && sender != node.gateway_ip
            }
            Role::Host => sender == node.node_ip,
            Role::Uplink => {
                sender & mask(node.underlay.1) == node.underlay.0 && sender != node.node_ip
            }
        };
        let to_us = target == node.gateway_ip || target == node.node_ip || role == Role::Host;
        if plausible
            && r.sender_hw.is_unicast()
            && (to_us || neighbors.lookup(sender, cx.now).is_some())
            && neighbors.learn(sender, r.sender_hw, m.in_port, cx.now)
            && learned.len() < learned.capacity()
        {
            learned.push(sender);
        }
        let our_mac = match role {
            Role::Uplink => cx.ports.port(m.in_port).map_or(MacAddr::ZERO, |p| p.mac),
            _ => node.router_mac,
        };
        let ours = match role {
            Role::Pod => target == node.gateway_ip,
            Role::Uplink => target == node.node_ip,
            // Proxy: the kernel reaches everything through us (but not its own address).
            Role::Host => target != node.node_ip,
        };
        next[i] = match r.operation {
            arp::Operation::Request if ours => {
                let reply = arp::Repr {
                    operation: arp::Operation::Reply,
                    sender_hw: our_mac,
                    sender_ip: r.target_ip,
                    target_hw: r.sender_hw,
                    target_ip: r.sender_ip,
                };
                // Answer in place, out of the port it came in on. Pods are untagged; a
                // tagged request would need a tagged answer.
                if l3 != ethernet::HEADER_LEN {
                    next[i] = Next::Drop(DropReason::ArpVlanTagged);
                    continue;
                }
                let d = f.data_mut();
                let mut e = ethernet::Frame::new_unchecked(&mut d[..]);
                ethernet::Repr {
                    src: our_mac,
                    dst: r.sender_hw,
                    ethertype: EtherType::Arp,
                }
                .emit(&mut e);
                reply.emit(&mut arp::Packet::new_unchecked(
                    &mut d[ethernet::HEADER_LEN..],
                ));
                Next::Port(m.in_port)
            }
            arp::Operation::Reply if target == node.gateway_ip || target == node.node_ip => {
                Next::Drop(DropReason::ArpReplyLearned)
            }
            _ if role == Role::Pod => Next::Stage(StageId::Bridge),
            _ => Next::Drop(DropReason::ArpNotForUs),
        };
        if m.trace != 0 {
            detail[i] = TraceDetail::Arp {
                request: r.operation == arp::Operation::Request,
                sender: r.sender_ip,
                target: r.target_ip,
                answered: matches!(next[i], Next::Port(_)),
            };
        }
    }
}

/// Writes an ARP request for `target` from (`mac`, `ip`) into a 42-byte frame.
pub fn request(mac: MacAddr, ip: u32, target: u32) -> [u8; 42] {
    let mut b = [0u8; 42];
    ethernet::Repr {
        src: mac,
        dst: MacAddr::BROADCAST,
        ethertype: EtherType::Arp,
    }
    .emit(&mut ethernet::Frame::new_unchecked(&mut b[..]));
    arp::Repr {
        operation: arp::Operation::Request,
        sender_hw: mac,
        sender_ip: Ipv4Addr::from_u32(ip),
        target_hw: MacAddr::ZERO,
        target_ip: Ipv4Addr::from_u32(target),
    }
    .emit(&mut arp::Packet::new_unchecked(
        &mut b[ethernet::HEADER_LEN..],
    ));
    b
}

/// arp's trace record in words.
pub fn describe(
    request: bool,
    sender: crate::wire::Ipv4Addr,
    target: crate::wire::Ipv4Addr,
    answered: bool,
) -> String {
    format!(
        "{} {target} from {sender}{}",
        if request { "who-has" } else { "reply about" },
        if answered { ", answered" } else { "" }
    )
}

/// Packets held while their next hop resolves, in all and per next hop.
const HOLD_CAP: usize = 64;
const HOLD_PER_HOP: usize = 8;

struct Held<F> {
    frame: F,
    ip: u32,
    /// A port, or OUT_BRIDGE.
    out: u16,
    deadline: u64,
}

/// The packets `arp` holds for a next hop that has not answered yet
/// (`Next::Resolve`): sent once it does, in the order they came, dropped after a
/// second. The worker owns one; it holds frames, so it lives beside the features.
pub struct Holds<F> {
    held: Vec<Held<F>>,
    spare: Vec<Held<F>>,
}

impl<F: Frame> Default for Holds<F> {
    fn default() -> Self {
        Holds {
            held: Vec::with_capacity(HOLD_CAP),
            spare: Vec::with_capacity(HOLD_CAP),
        }
    }
}

impl<F: Frame> Holds<F> {
    /// The frames held now (neither sent nor dropped yet: the accounting identity
    /// counts them apart).
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Most frames that can leave at once (all held ones expiring together).
    pub const CAPACITY: usize = HOLD_CAP;

    /// Holds `f` until `Meta::nh_ip` answers on `Meta::out`, asking for it (at most
    /// once a second per address, within the worker's budget of ARP requests).
    pub fn hold<P: crate::pipeline::PortIo<Frame = F>>(
        &mut self,
        cx: &Ctx,
        ip4: &mut super::Ip4,
        out: &mut crate::pipeline::tx::Out<'_, F, P>,
        tsc_hz: u64,
        f: F,
    ) {
        let m = *f.meta();
        let same = self.held.iter().filter(|p| p.ip == m.nh_ip).count();
        // One silent address cannot take the whole queue.
        if self.held.len() >= HOLD_CAP || same >= HOLD_PER_HOP {
            out.drop(f, StageId::Arp, DropReason::ArpQueueFull);
        } else {
            self.held.push(Held {
                frame: f,
                ip: m.nh_ip,
                out: m.out,
                deadline: cx.now.wrapping_add(tsc_hz),
            });
        }
        if !ip4.neighbors.should_ask(m.nh_ip, cx.now) || !ip4.arp_limit.allow(cx.now) {
            return;
        }
        let Some(node) = cx.l3.node.as_ref() else {
            return;
        };
        let (mac, ip) = if Some(m.out) == cx.ports.uplink {
            (
                cx.ports.port(m.out).map_or(node.router_mac, |p| p.mac),
                node.node_ip,
            )
        } else {
            (node.router_mac, node.gateway_ip)
        };
        let req = request(mac, ip, m.nh_ip);
        let (no_buf, arp) = (DropReason::ArpNoBuffer, StageId::Arp);
        if m.out == crate::pipeline::OUT_BRIDGE {
            let mut ports = [0u16; crate::pipeline::MAX_PORTS];
            let mut n = 0;
            if let Some(bd) = cx.ports.bridge(m.bd) {
                for &p in bd.members.iter().take(crate::pipeline::MAX_PORTS) {
                    ports[n] = p;
                    n += 1;
                }
            }
            for &p in &ports[..n] {
                out.send_new(p, &req, arp, no_buf);
            }
        } else {
            out.send_new(m.out, &req, arp, no_buf);
        }
    }

    /// Sends the held packets whose next hop resolved, in the order they came (a
    /// flow's packets stay in order); drops expired ones.
    pub fn release<P: crate::pipeline::PortIo<Frame = F>>(
        &mut self,
        cx: &Ctx,
        ip4: &mut super::Ip4,
        out: &mut crate::pipeline::tx::Out<'_, F, P>,
    ) {
        ip4.learned.clear();
        let mut held = std::mem::take(&mut self.held);
        let mut keep = std::mem::take(&mut self.spare);
        for p in held.drain(..) {
            let n = ip4.neighbors.lookup(p.ip, cx.now).filter(|n| {
                if p.out == crate::pipeline::OUT_BRIDGE {
                    cx.ports.role(n.port) == Role::Pod
                } else {
                    n.port == p.out
                }
            });
            if let Some(n) = n {
                let mut frame = p.frame;
                let src = super::rewrite::src_mac(cx, n.port);
                super::rewrite::rewrite(frame.data_mut(), n.mac, src);
                out.send(n.port, frame, 0);
            } else if cx.now >= p.deadline {
                out.drop(p.frame, StageId::Arp, DropReason::ArpTimeout);
            } else {
                keep.push(p);
            }
        }
        // Both vectors keep their capacity: no allocation here.
        self.held = keep;
        self.spare = held;
    }

    /// Drops every held packet (the worker is stopping).
    pub fn drop_all<P: crate::pipeline::PortIo<Frame = F>>(
        &mut self,
        out: &mut crate::pipeline::tx::Out<'_, F, P>,
    ) {
        for p in self.held.drain(..) {
            out.drop(p.frame, StageId::Arp, DropReason::ArpTimeout);
        }
    }
}

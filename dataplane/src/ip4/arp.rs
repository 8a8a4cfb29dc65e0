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

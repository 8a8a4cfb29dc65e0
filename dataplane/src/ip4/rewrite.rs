//! `ip4-rewrite`: finds the next hop's MAC in the neighbour table and writes the
//! Ethernet header (our MAC as source: the pods' gateway MAC towards pods and the
//! kernel, the uplink's MAC towards the underlay). Unknown next hops are resolved:
//! the runner parks the packet and sends an ARP request.
use crate::pipeline::stage::Ctx;
use crate::pipeline::stage::{Features, Vector};
use crate::pipeline::{Frame, IcmpKind, Next, StageId, TraceDetail, OUT_BRIDGE};
use crate::port::Role;
use crate::wire::MacAddr;
use crate::wire::{ethernet, ipv4};

/// The source MAC for frames leaving on `port`.
#[inline]
pub fn src_mac(cx: &Ctx, port: u16) -> MacAddr {
    match (cx.ports.uplink, cx.l3.node.as_ref()) {
        (Some(u), _) if u == port => cx.ports.port(port).map_or(MacAddr::ZERO, |p| p.mac),
        (_, Some(n)) => n.router_mac,
        _ => MacAddr::ZERO,
    }
}

/// Writes destination and source MACs.
#[inline]
pub fn rewrite(d: &mut [u8], dst: MacAddr, src: MacAddr) {
    d[0..6].copy_from_slice(&dst.0);
    d[6..12].copy_from_slice(&src.0);
}

/// A resolved next hop, as the rewrite needs it.
#[derive(Clone, Copy)]
struct Hop {
    mac: MacAddr,
    port: u16,
    src: MacAddr,
}

/// What a next hop resolves to: its MAC and port (if known), and that port's MTU.
type Resolved = (Option<Hop>, Option<u16>);

pub fn process<F: Frame>(cx: &Ctx, feat: &mut Features, v: &mut Vector<F>) {
    let neighbors = &feat.ip4.neighbors;
    let (pkts, frames, next, detail) = v.parts();
    // Packets of a burst mostly share a next hop: look it up once per run of them.
    let mut last: Option<((u32, u16), Resolved)> = None;
    for &i in pkts {
        let i = usize::from(i);
        let f = &mut frames[i];
        let m = *f.meta();
        let (found, mtu) = crate::pipeline::stage::last_or(&mut last, (m.nh_ip, m.out), || {
            let found = neighbors
                .lookup(m.nh_ip, cx.now)
                .filter(|n| {
                    if m.out == OUT_BRIDGE {
                        // Local pods only behind pod ports, never the uplink or the
                        // host port.
                        cx.ports.role(n.port) == Role::Pod
                    } else {
                        n.port == m.out
                    }
                })
                .map(|n| Hop {
                    mac: n.mac,
                    port: n.port,
                    src: src_mac(cx, n.port),
                });
            let out_port = found.map_or(m.out, |n| n.port);
            (found, cx.ports.port(out_port).map(|p| p.mtu))
        });
        if m.trace != 0 {
            detail[i] = TraceDetail::Rewrite {
                nh: crate::wire::Ipv4Addr::from_u32(m.nh_ip),
                mac: found.map(|n| n.mac),
                port: found.map_or(m.out, |n| n.port),
            };
        }
        // Too big for where it goes with DF: fragmentation needed. Without DF the
        // runner's output splits it (ip4-fragment).
        if let Some(mtu) = mtu {
            let ip = ipv4::Packet::new_unchecked(&f.data()[ethernet::HEADER_LEN..]);
            if usize::from(ip.total_len()) > usize::from(mtu) && ip.dont_frag() {
                f.meta_mut().set_icmp(IcmpKind::FragNeeded(mtu));
                next[i] = Next::Stage(StageId::IcmpError);
                continue;
            }
        }
        next[i] = match found {
            Some(n) => {
                rewrite(f.data_mut(), n.mac, n.src);
                Next::Port(n.port)
            }
            _ => Next::Resolve,
        };
    }
}

/// ip4-rewrite's (and vxlan-encap's next-hop) trace record in words.
pub fn describe(
    n: &dyn crate::pipeline::trace::Names,
    nh: crate::wire::Ipv4Addr,
    mac: Option<MacAddr>,
    port: u16,
) -> String {
    match mac {
        Some(mac) => format!("next hop {nh} is {mac} on {}", n.port(port)),
        None => format!("next hop {nh} unresolved: held, ARP asked"),
    }
}

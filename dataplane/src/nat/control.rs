//! NAT's part of the control thread: connection-table settings and listing.
//! (An `impl` of the control thread, `crate::control::Control`, kept with the
//! feature.)
use std::sync::Arc;
use std::time::Duration;

use podpath_proto::{ConnInfo, ConntrackFilter, ConntrackSettings, ErrorKind, ErrorReply};

use crate::snapshot::{Settings, Snapshot};
use crate::worker::WorkerMsg;

use crate::control::{err, Control, MAX_TIMEOUT_S};

impl Control {
    /// The connection-tracking knobs in force, every field given.
    pub fn conntrack_settings(&self) -> ConntrackSettings {
        let c = &self.conntrack;
        let t = &c.timeouts;
        ConntrackSettings {
            capacity: u32::try_from(c.capacity).ok(),
            max_capacity: u32::try_from(c.reserved()).ok(),
            tcp_syn_sent: Some(t.tcp_syn_sent),
            tcp_syn_recv: Some(t.tcp_syn_recv),
            tcp_established: Some(t.tcp_established),
            tcp_fin_wait: Some(t.tcp_fin_wait),
            tcp_close_wait: Some(t.tcp_close_wait),
            tcp_last_ack: Some(t.tcp_last_ack),
            tcp_time_wait: Some(t.tcp_time_wait),
            tcp_close: Some(t.tcp_close),
            udp: Some(t.udp),
            udp_stream: Some(t.udp_stream),
            icmp: Some(t.icmp),
        }
    }

    /// Applies the knobs `req` gives, checked whole first (a bad one changes
    /// nothing), and publishes them; returns once every worker runs them.
    pub(crate) fn conntrack_set(&mut self, req: &ConntrackSettings) -> Result<u64, ErrorReply> {
        let bad = |m: String| err(ErrorKind::BadRequest, m);
        if req.max_capacity.is_some() {
            return Err(bad(
                "max_capacity is reserved at start ([conntrack] max_capacity); it cannot change at run time".into(),
            ));
        }
        let mut c = self.conntrack;
        if let Some(cap) = req.capacity {
            let cap = cap as usize;
            if cap < 16 || cap > c.reserved() {
                return Err(bad(format!(
                    "capacity {cap}: between 16 and {} connections per worker (the room reserved at start, [conntrack] max_capacity)",
                    c.reserved()
                )));
            }
            c.capacity = cap;
        }
        let t = &mut c.timeouts;
        let slots = [
            &mut t.tcp_syn_sent,
            &mut t.tcp_syn_recv,
            &mut t.tcp_established,
            &mut t.tcp_fin_wait,
            &mut t.tcp_close_wait,
            &mut t.tcp_last_ack,
            &mut t.tcp_time_wait,
            &mut t.tcp_close,
            &mut t.udp,
            &mut t.udp_stream,
            &mut t.icmp,
        ];
        for ((name, v), slot) in req.timeouts().into_iter().zip(slots) {
            if let Some(v) = v {
                if v == 0 || v > MAX_TIMEOUT_S {
                    return Err(bad(format!(
                        "{name} {v}: a timeout is 1 to {MAX_TIMEOUT_S} seconds"
                    )));
                }
                *slot = v;
            }
        }
        let settings = Arc::new(Settings {
            conntrack_capacity: c.capacity,
            timeouts: c.timeouts,
        });
        self.conntrack = c;
        self.set_departed_ttl(Duration::from_secs(u64::from(c.timeouts.tcp_established)));
        self.publish(Snapshot {
            settings,
            ..self.snap.clone()
        })
    }

    pub(crate) fn conntrack_list(&self, f: &ConntrackFilter) -> Result<Vec<ConnInfo>, ErrorReply> {
        let addr = f
            .addr
            .as_deref()
            .map(|a| podpath_proto::validate::ipv4(a).map_err(|e| err(ErrorKind::BadRequest, e)))
            .transpose()?;
        let mut out = Vec::new();
        for rows in self.gather(WorkerMsg::DumpConntrack, Duration::from_secs(5))? {
            for r in rows {
                let (o, p) = (r.entry.orig, r.entry.reply);
                let hit_addr = addr.is_none_or(|a| [o.src, o.dst, p.src, p.dst].contains(&a));
                let hit_port = f
                    .port
                    .is_none_or(|x| [o.sport, o.dport, p.sport, p.dport].contains(&x));
                let hit_proto = f.proto.is_none_or(|x| x == o.proto);
                if !(hit_addr && hit_port && hit_proto) {
                    continue;
                }
                let ip = |a: u32| crate::wire::Ipv4Addr::from_u32(a).to_string();
                out.push(ConnInfo {
                    worker: r.worker,
                    proto: o.proto,
                    timeout: r.timeout,
                    state: (o.proto == 6).then(|| r.entry.tcp().name().to_string()),
                    orig: (ip(o.src), ip(o.dst), o.sport, o.dport),
                    reply: (ip(p.src), ip(p.dst), p.sport, p.dport),
                    assured: r.entry.assured(),
                    seen_reply: r.entry.seen_reply(),
                });
            }
        }
        Ok(out)
    }
}

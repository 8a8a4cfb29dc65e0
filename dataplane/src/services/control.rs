//! The Services' part of the control thread: building the Service table from specs (identities, departed endpoints) and publishing it.
//! (An `impl` of the control thread, `crate::control::Control`, kept with the
//! feature.)
use std::sync::Arc;
use std::time::{Duration, Instant};

use podpath_proto::{ErrorKind, ErrorReply, ServiceSpec};

use crate::ip4::L3;
use crate::services::table::ServiceTable;
use crate::snapshot::Snapshot;

use crate::control::{err, node_info, Control, Departed, DEPARTED_MAX};

impl Control {
    /// How long a departed endpoint is remembered: the TCP established timeout.
    pub fn set_departed_ttl(&mut self, ttl: Duration) {
        self.departed_ttl = ttl;
    }

    /// Builds the Service table for `specs` on `l3`, carrying the departed TCP
    /// endpoints (those of the current table that `specs` no longer has) forward.
    /// `unchanged(name)`: that Service's spec is the one the current table was
    /// built from (its tables are reused; only changed Services can lose
    /// endpoints). The work for a change to one Service is then a pass over the
    /// names, not a rebuild of every Service.
    pub(crate) fn build_services(
        &mut self,
        specs: &[&ServiceSpec],
        l3: &L3,
        unchanged: &dyn Fn(&str) -> bool,
    ) -> Result<Arc<ServiceTable>, ErrorReply> {
        let mut next = self.next_uid;
        let mut fresh = Vec::new();
        let ids: Vec<u32> = specs
            .iter()
            .map(|s| match self.uids.get(s.name.as_str()) {
                Some(&id) => id,
                None => {
                    next += 1;
                    fresh.push((s.name.clone(), next - 1));
                    next - 1
                }
            })
            .collect();
        let prev: (&ServiceTable, crate::services::table::Unchanged) =
            (&self.snap.services, unchanged);
        let t = ServiceTable::build_reusing(specs, node_info(l3), &ids, Some(prev))
            .map_err(|e| err(ErrorKind::BadRequest, e))?;
        self.uids.extend(fresh);
        self.next_uid = next;
        // Names no longer in `specs` lose their identity here.
        if self.uids.len() > specs.len() {
            let names: hashbrown::HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            self.uids.retain(|k, _| names.contains(k.as_str()));
        }
        let now = Instant::now();
        let current = |k: &Departed| match *k {
            Departed::Endpoint(ip, port, proto) => t.is_endpoint(ip, port, proto),
            Departed::Vip(ip, port, proto) => t.lookup(ip, port, proto).is_some(),
        };
        // Only a changed (or removed) Service can take an endpoint or a VIP away.
        let old = &self.snap.services;
        let gone = old
            .services()
            .iter()
            .filter(|s| !unchanged(&s.name))
            .flat_map(|s| {
                let b = s.owner_by_client_ip;
                s.all
                    .iter()
                    .map(move |e| (Departed::Endpoint(e.ip, e.port, s.proto), b))
                    .chain(std::iter::once((Departed::Vip(s.vip, s.port, s.proto), b)))
            });
        for (k, by_ip) in gone {
            let tcp = matches!(k, Departed::Endpoint(_, _, 6) | Departed::Vip(_, _, 6));
            if tcp && !current(&k) {
                self.departed.entry(k).or_insert((by_ip, now));
            }
        }
        let ttl = self.departed_ttl;
        self.departed
            .retain(|k, (_, at)| !current(k) && now.duration_since(*at) < ttl);
        // Bounded: beyond DEPARTED_MAX the oldest are forgotten (their connections'
        // replies may then reach a worker that does not own them and be dropped).
        while self.departed.len() > DEPARTED_MAX {
            let oldest = self
                .departed
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => self.departed.remove(&k),
                None => break,
            };
        }
        let (mut eps, mut vips) = (Vec::new(), Vec::new());
        for (k, (b, _)) in &self.departed {
            match *k {
                Departed::Endpoint(ip, port, proto) => eps.push(((ip, port, proto), *b)),
                Departed::Vip(ip, port, proto) => vips.push(((ip, port, proto), *b)),
            }
        }
        Ok(Arc::new(t.with_departed(eps).with_departed_vips(vips)))
    }

    /// Builds and publishes the Service table for `specs`; on a build error nothing
    /// changes. Returns when every worker runs it and has swept the UDP connections
    /// whose endpoint is gone.
    /// Installs `specs`, of which only the Service named `changed` differs from the
    /// current ones.
    pub(crate) fn set_services(
        &mut self,
        specs: Vec<ServiceSpec>,
        changed: &str,
    ) -> Result<u64, ErrorReply> {
        let l3 = Arc::clone(&self.snap.l3);
        let refs: Vec<&ServiceSpec> = specs.iter().collect();
        let t = self.build_services(&refs, &l3, &|n| n != changed)?;
        drop(refs);
        self.services = specs;
        self.publish(Snapshot {
            services: t,
            ..self.snap.clone()
        })
    }
}

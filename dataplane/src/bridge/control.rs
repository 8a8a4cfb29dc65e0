//! The bridge's part of the control thread: the MAC table (`podpathctl bridge macs`, static entries).
//! (An `impl` of the control thread, `crate::control::Control`, kept with the
//! feature.)
use std::time::Duration;

use podpath_proto::{ErrorKind, ErrorReply, MacInfo};

use crate::wire::MacAddr;
use crate::worker::WorkerMsg;

use crate::control::{err, Control};

impl Control {
    pub fn mac_list(&self) -> Result<Vec<MacInfo>, ErrorReply> {
        let mut out = Vec::new();
        for rows in self.gather(WorkerMsg::DumpMacs, Duration::from_secs(2))? {
            let hz = self.tsc_hz.max(1);
            out.extend(rows.into_iter().map(|r| MacInfo {
                worker: r.worker,
                bridge: r.bd,
                mac: r.mac.to_string(),
                port: self.port_name(r.port),
                age_ms: r.age_ticks.saturating_mul(1000) / hz,
                is_static: r.is_static,
            }));
        }
        out.sort_by(|a, b| (a.bridge, &a.mac, a.worker).cmp(&(b.bridge, &b.mac, b.worker)));
        Ok(out)
    }

    pub(crate) fn mac_add(&self, bridge: u16, mac: &str, port: &str) -> Result<(), ErrorReply> {
        let mac: MacAddr = mac
            .parse()
            .map_err(|m: String| err(ErrorKind::BadRequest, m))?;
        if mac.is_multicast() {
            return Err(err(
                ErrorKind::BadRequest,
                format!("{mac} is a group address; static entries must be unicast"),
            ));
        }
        let a = self
            .ports
            .iter()
            .find(|a| a.spec.name == port)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no port named {port:?}")))?;
        if a.spec.bridge != Some(bridge) {
            return Err(err(
                ErrorKind::BadRequest,
                format!("port {port:?} is not in bridge domain {bridge}"),
            ));
        }
        for w in &self.workers {
            let _ = Self::tell(
                w,
                WorkerMsg::StaticMac {
                    bd: bridge,
                    mac,
                    port: a.port.id(),
                },
            );
        }
        Ok(())
    }

    pub(crate) fn mac_del(&self, bridge: u16, mac: &str) -> Result<(), ErrorReply> {
        let mac: MacAddr = mac
            .parse()
            .map_err(|m: String| err(ErrorKind::BadRequest, m))?;
        for w in &self.workers {
            let _ = Self::tell(w, WorkerMsg::DelStaticMac { bd: bridge, mac });
        }
        Ok(())
    }
}

//! The Prometheus / OpenMetrics endpoint of the control service: every counter the
//! dataplane keeps, read with one `Stats` request per scrape, plus the Services'
//! endpoint conditions from the desired state. Names take the `podpath_` prefix,
//! counters `_total`, sizes and cycles their units (Prometheus conventions).
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use podpath_proto::{ServiceSpec, Stats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortL {
    port: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageL {
    stage: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropL {
    stage: String,
    reason: String,
    /// "drop" or "event" (consumed as it should be): alert on kind="drop".
    kind: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerL {
    worker: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointL {
    service: String,
    condition: String,
}

/// A counter family registered under `name` (`_total` is added by the encoder).
fn counters<L>(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Family<L, Counter>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, Counter>::default();
    match unit {
        Some(u) => r.register_with_unit(name, help, u, f.clone()),
        None => r.register(name, help, f.clone()),
    }
    f
}

fn gauges<L>(r: &mut Registry, name: &str, help: &str) -> Family<L, Gauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, Gauge>::default();
    r.register(name, help, f.clone());
    f
}

fn g(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The exposition for one scrape: `stats` is None when the dataplane does not answer
/// (then only `podpath_dataplane_up 0` and the Services are reported).
pub fn render(stats: Option<&Stats>, services: &[ServiceSpec]) -> String {
    let mut r = Registry::default();
    let up = Gauge::<i64>::default();
    r.register(
        "podpath_dataplane_up",
        "Whether the dataplane answered this scrape",
        up.clone(),
    );
    up.set(i64::from(stats.is_some()));
    let eps = gauges::<EndpointL>(
        &mut r,
        "podpath_service_endpoints",
        "Endpoints of each Service by EndpointSlice condition (ready, serving, terminating)",
    );
    for s in services {
        let count = |f: &dyn Fn(&podpath_proto::EndpointSpec) -> bool| {
            i64::try_from(s.endpoints.iter().filter(|e| f(e)).count()).unwrap_or(0)
        };
        let l = |c: &str| EndpointL {
            service: s.name.clone(),
            condition: c.into(),
        };
        eps.get_or_create(&l("ready"))
            .set(count(&|e| e.ready && !e.terminating));
        eps.get_or_create(&l("serving"))
            .set(count(&|e| e.serving.unwrap_or(e.ready)));
        eps.get_or_create(&l("terminating"))
            .set(count(&|e| e.terminating));
    }
    if let Some(s) = stats {
        let restarts = Counter::<u64>::default();
        r.register(
            "podpath_dataplane_restarts",
            "Times the control service restarted a dead dataplane (control.dataplane_command)",
            restarts.clone(),
        );
        restarts.inc_by(s.dataplane_restarts);
        let gen = Gauge::<i64>::default();
        r.register(
            "podpath_snapshot_generation",
            "The snapshot generation every worker has applied",
            gen.clone(),
        );
        gen.set(g(s.generation));
        let rx = counters::<PortL>(
            &mut r,
            "podpath_port_rx_packets",
            "Packets received per port",
            None,
        );
        let rxb = counters::<PortL>(
            &mut r,
            "podpath_port_rx",
            "Bytes received per port",
            Some(Unit::Bytes),
        );
        let tx = counters::<PortL>(
            &mut r,
            "podpath_port_tx_packets",
            "Packets transmitted per port",
            None,
        );
        let txb = counters::<PortL>(
            &mut r,
            "podpath_port_tx",
            "Bytes transmitted per port",
            Some(Unit::Bytes),
        );
        let txd = counters::<PortL>(
            &mut r,
            "podpath_port_tx_dropped_packets",
            "Packets the port's transmit queue refused",
            None,
        );
        for p in &s.ports {
            let l = PortL {
                port: p.name.clone(),
            };
            rx.get_or_create(&l).inc_by(p.rx_packets);
            rxb.get_or_create(&l).inc_by(p.rx_bytes);
            tx.get_or_create(&l).inc_by(p.tx_packets);
            txb.get_or_create(&l).inc_by(p.tx_bytes);
            txd.get_or_create(&l).inc_by(p.tx_dropped);
        }
        let sp = counters::<StageL>(
            &mut r,
            "podpath_stage_packets",
            "Packets each stage processed",
            None,
        );
        let sc = counters::<StageL>(
            &mut r,
            "podpath_stage_calls",
            "Times each stage ran (once per vector)",
            None,
        );
        let sy = counters::<StageL>(
            &mut r,
            "podpath_stage_cycles",
            "TSC cycles spent in each stage",
            None,
        );
        for st in &s.stages {
            let l = StageL {
                stage: st.name.clone(),
            };
            sp.get_or_create(&l).inc_by(st.packets);
            sc.get_or_create(&l).inc_by(st.calls);
            sy.get_or_create(&l).inc_by(st.cycles);
        }
        let dr = counters::<DropL>(
            &mut r,
            "podpath_drops",
            "Packets dropped (kind=drop) or consumed (kind=event), by the stage that decided and the reason (podpathctl stats --all)",
            None,
        );
        for d in &s.drops {
            dr.get_or_create(&DropL {
                stage: d.stage.clone(),
                reason: d.reason.clone(),
                kind: d.kind.clone(),
            })
            .inc_by(d.count);
        }
        let w = |r: &mut Registry, n: &str, h: &str| counters::<WorkerL>(r, n, h, None);
        let busy = w(
            &mut r,
            "podpath_worker_busy_cycles",
            "TSC cycles of poll iterations that received packets",
        );
        let total = w(
            &mut r,
            "podpath_worker_cycles",
            "TSC cycles of all poll iterations",
        );
        let polls = w(&mut r, "podpath_worker_polls", "Poll iterations");
        let idle = w(
            &mut r,
            "podpath_worker_idle_polls",
            "Poll iterations that received nothing",
        );
        let sleeps = w(&mut r, "podpath_worker_sleeps", "Idle back-off sleeps");
        let hin = w(
            &mut r,
            "podpath_worker_handoff_in_packets",
            "Packets taken from other workers",
        );
        let hout = w(
            &mut r,
            "podpath_worker_handoff_out_packets",
            "Packets handed to the worker that owns their connection",
        );
        let ins = w(&mut r, "podpath_conntrack_inserted", "Connections tracked");
        let exp = w(&mut r, "podpath_conntrack_expired", "Connections expired");
        let early = w(
            &mut r,
            "podpath_conntrack_early_drops",
            "Unassured connections evicted for room",
        );
        let refused = w(
            &mut r,
            "podpath_conntrack_refused",
            "New connections refused: table full (ct-table-full)",
        );
        let resumed = gauges::<WorkerL>(
            &mut r,
            "podpath_conntrack_resumed",
            "Connections this dataplane resumed from its state file at start",
        );
        let entries = gauges::<WorkerL>(
            &mut r,
            "podpath_conntrack_entries",
            "Connections tracked now",
        );
        let gens = gauges::<WorkerL>(
            &mut r,
            "podpath_worker_generation",
            "The snapshot generation this worker applied",
        );
        for x in &s.workers {
            let l = WorkerL {
                worker: x.id.to_string(),
            };
            busy.get_or_create(&l).inc_by(x.busy_cycles);
            total.get_or_create(&l).inc_by(x.total_cycles);
            polls.get_or_create(&l).inc_by(x.polls);
            idle.get_or_create(&l).inc_by(x.idle_polls);
            sleeps.get_or_create(&l).inc_by(x.sleeps);
            hin.get_or_create(&l).inc_by(x.handoff_in);
            hout.get_or_create(&l).inc_by(x.handoff_out);
            ins.get_or_create(&l).inc_by(x.ct_inserted);
            exp.get_or_create(&l).inc_by(x.ct_expired);
            early.get_or_create(&l).inc_by(x.ct_early_dropped);
            refused.get_or_create(&l).inc_by(x.ct_refused_full);
            entries.get_or_create(&l).set(g(x.ct_entries));
            resumed.get_or_create(&l).set(g(x.ct_resumed));
            gens.get_or_create(&l).set(g(x.applied_generation));
        }
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use podpath_proto::{sample_responses, Response};

    #[test]
    fn names_follow_prometheus_conventions_and_values_are_carried() {
        let stats = sample_responses()
            .into_iter()
            .find_map(|r| match r {
                Response::Stats(s) => Some(s),
                _ => None,
            })
            .unwrap();
        let text = render(Some(&stats), &[podpath_proto::sample_service()]);
        assert!(text.contains("podpath_dataplane_up 1"), "{text}");
        assert!(text.contains("podpath_snapshot_generation 3"), "{text}");
        for p in &stats.ports {
            let line = format!(
                "podpath_port_rx_packets_total{{port=\"{}\"}} {}",
                p.name, p.rx_packets
            );
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
        assert!(
            text.contains("# TYPE podpath_port_rx_bytes counter"),
            "{text}"
        );
        assert!(
            text.contains(
                "podpath_service_endpoints{service=\"default/web\",condition=\"ready\"} 1"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "not OpenMetrics");
        // Every metric is podpath_-prefixed; every counter sample ends in _total.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("podpath_"), "{l}");
        }
        let down = render(None, &[]);
        assert!(down.contains("podpath_dataplane_up 0") && !down.contains("podpath_port"));
    }
}

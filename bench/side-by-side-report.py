"""Summarises a bench/side-by-side.sh run: median, min and max per DUT, the ratios the
issue names, JSON in docs/results/side-by-side.json and SVG plots beside it.
Usage: side-by-side-report.py RUN_DIR RESULTS_TSV SECONDS FLOWS SIZE"""
import json
import statistics
import sys
import time
from collections import defaultdict

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import svgplot  # noqa: E402

run_dir, tsv, secs, flows, size = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
runs = defaultdict(lambda: defaultdict(list))
for line in open(tsv):
    job, dut, r, busy, pkts = line.split()
    g = json.load(open(f"{run_dir}/{job}.{dut}.{r}.json"))
    g["busy_cycles"], g["busy_packets"] = int(busy), int(pkts)
    g["busy_cycles_per_packet"] = int(busy) / int(pkts) if int(pkts) else None
    try:  # podpath's counters: drops inside the DUT, by reason
        s = json.load(open(f"{run_dir}/{job}.{dut}.{r}.stats.json"))
        g["dut_rx"], g["dut_tx"], g["dut_dropped"] = s["rx"], s["tx"], s["dropped"]
        g["dut_drops"] = {f'{d["stage"]}/{d["reason"]}': d["count"] for d in s["drops"] if d["count"]}
    except OSError:
        pass
    runs[job][dut].append(g)


def spread(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


out = {"method": "podpath-gen (lcore 0) over net_virtio_user to each DUT's two vhost-user "
                 "server ports, one DUT forwarding core (lcore 1), rounds interleaved; "
                 "1 s warm-up not counted; busy cycles per packet by each DUT's own counter "
                 "(cycles of poll iterations that received packets / packets received, "
                 "over the whole run including the warm-up)",
       "seconds": secs, "flows": flows, "frame_size": size, "jobs": {}}
for job, duts in runs.items():
    # A run of one job keeps the other's last results: say when and how each was made.
    j = out["jobs"][job] = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "seconds": secs, "flows": flows, "frame_size": size, "duts": {}}
    for dut, rs in duts.items():
        j["duts"][dut] = {"rx_mpps": spread([x["rx_mpps"] for x in rs]),
                          "busy_cycles_per_packet": spread([x["busy_cycles_per_packet"] for x in rs]),
                          "loss_ratio": spread([x["loss_ratio"] for x in rs]),
                          "latency_p50_us": spread([x["latency_us"]["p50"] for x in rs]),
                          "runs": rs}
    med = {d: v["rx_mpps"]["median"] for d, v in j["duts"].items()}
    cyc = {d: (v["busy_cycles_per_packet"] or {}).get("median") for d, v in j["duts"].items()}
    pod = next((d for d in med if d.startswith("podpath")), None)
    ratios = {}
    for peer in med if pod else []:
        if peer != pod and med[peer]:
            ratios[f"{pod} / {peer} Mpps"] = med[pod] / med[peer]
        if peer != pod and cyc.get(peer) and cyc.get(pod):
            ratios[f"{pod} / {peer} busy cycles per packet"] = cyc[pod] / cyc[peer]
    j["ratios"] = ratios

    print(f"\n{job}: {'dut':<14} {'Mpps median':>11} {'min':>7} {'max':>7} {'busy cyc/pkt':>12} {'loss %':>8}")
    for d, v in j["duts"].items():
        r, c = v["rx_mpps"], v["busy_cycles_per_packet"]
        print(f"{job}: {d:<14} {r['median']:>11.3f} {r['min']:>7.3f} {r['max']:>7.3f} "
              f"{(c or {}).get('median', float('nan')):>12.0f} {100 * v['loss_ratio']['median']:>8.4f}")
    for d, v in j["duts"].items():
        drops = {}
        for x in v["runs"]:
            for k, n in x.get("dut_drops", {}).items():
                drops[k] = drops.get(k, 0) + n
        if "dut_rx" in v["runs"][0]:
            print(f"{job}: {d} own drops over all rounds: " + (", ".join(f"{k} {n}" for k, n in drops.items()) or "none"))
    for k, v in ratios.items():
        print(f"{job}: {k} = {v:.2f}")
    svgplot.bars(f"{job}: delivered Mpps over vhost-user (median, min-max)",
                 "Mpps, one forwarding core", [(d, v["rx_mpps"]["median"], v["rx_mpps"]["min"],
                                               v["rx_mpps"]["max"]) for d, v in j["duts"].items()],
                 f"docs/results/side-by-side-{job}-mpps.svg",
                 note=f"   ({flows} flows, {size} B, {len(rs)} rounds x {secs:g} s)")
    svgplot.bars(f"{job}: busy cycles per packet (median, min-max)", "TSC cycles, lower is better",
                 [(d, c["median"], c["min"], c["max"]) for d, v in j["duts"].items()
                  if (c := v["busy_cycles_per_packet"])],
                 f"docs/results/side-by-side-{job}-cycles.svg")

path = "docs/results/side-by-side.json"
try:
    old = json.load(open(path))
except (OSError, ValueError):
    old = {}
# A run of one job keeps the other's last results.
jobs = {**old.get("jobs", {}), **out["jobs"]}
json.dump({**out, "jobs": jobs}, open(path, "w"), indent=1)
print(f"\nwritten: {path}, docs/results/side-by-side-*.svg")

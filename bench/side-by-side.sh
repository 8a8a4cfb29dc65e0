#!/usr/bin/env bash
# L2 forwarding side by side over vhost-user, one command: the same generator
# (podpath-gen), the same flows, each device under test in turn, rounds interleaved
# (testpmd, podpath, testpmd, podpath, ...) so that the machine's drift hits both alike.
#   - testpmd-io: dpdk-testpmd --forward-mode=io, the transport's ceiling;
#   - podpath-l2: podpath-dataplane bridging the same two ports (bridge 1).
# Each DUT gets one forwarding core (lcore 1); the generator runs on lcore 0.
# Prints median / min / max of delivered Mpps and the ratio, and writes JSON.
# Usage (root; sets up like scripts/setup.sh and installs dpdk-dev for dpdk-testpmd):
#   bench/side-by-side.sh [ROUNDS=3] [SECONDS=5] [FLOWS=10000] [SIZE=64]
# OVS-DPDK and the kernel path are not in this runner yet (docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; SECS=${2:-5}; FLOWS=${3:-10000}; SIZE=${4:-64}
[ "$(id -u)" = 0 ] || { echo "side-by-side: run as root"; exit 1; }
# Same set-up as the other commands (packages, Rust, hugepages), plus dpdk-testpmd.
[ "${PODPATH_SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh
command -v dpdk-testpmd >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q dpdk-dev >/dev/null
command -v dpdk-testpmd >/dev/null || { echo "side-by-side: needs dpdk-testpmd (apt-get install dpdk-dev)"; exit 1; }
free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
[ "$free" -ge 160 ] || { echo "side-by-side: needs 160 free 2 MiB hugepages (vhost-user shares hugepage memory), $free free"; exit 1; }
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release -q -p podpath-bench --bin podpath-gen -p podpath-dataplane --bin podpath-dataplane

dir=$(mktemp -d /tmp/pp-sbs.XXXXXX)
dut_pid=
cleanup() { if [ -n "$dut_pid" ]; then kill "$dut_pid" 2>/dev/null; wait "$dut_pid" 2>/dev/null; fi; rm -rf "$dir"; }
trap cleanup EXIT
# --in-memory with one file per memory segment list: vhost-user shares every region
# by file descriptor, and one fd per 2 MiB page exceeds its region limit.
mem="--in-memory --single-file-segments --no-pci"

cat > "$dir/node.toml" <<EOF
[eal]
lcores = "0,1"
file_prefix = "pp-sbs"
memory_mb = 192
hugepages = "on"
pci = false
extra_args = ["--in-memory", "--single-file-segments"]
[dataplane]
socket = "$dir/dp.sock"
[idle]
enabled = false
[[port]]
name = "gen-a"
device = "net_vhost0,iface=$dir/a.sock"
bridge = 1
[[port]]
name = "gen-b"
device = "net_vhost1,iface=$dir/b.sock"
bridge = 1
EOF

start_dut() {
  rm -f "$dir/a.sock" "$dir/b.sock"
  case $1 in
    testpmd-io)
      # With a stats period, testpmd forwards until it is signalled (not until stdin
      # closes); the long period keeps its output quiet.
      dpdk-testpmd -l 0,1 $mem -m 192 --vdev "net_vhost0,iface=$dir/a.sock" \
        --vdev "net_vhost1,iface=$dir/b.sock" -- --forward-mode=io --auto-start \
        --stats-period 100000 </dev/null >"$dir/$1.log" 2>&1 &
      dut_pid=$! ;;
    podpath-l2)
      target/release/podpath-dataplane --config "$dir/node.toml" >"$dir/$1.log" 2>&1 &
      dut_pid=$! ;;
  esac
  for _ in $(seq 50); do [ -S "$dir/b.sock" ] && return; sleep 0.2; done
  echo "side-by-side: $1 did not create its vhost-user sockets; log:"; tail -20 "$dir/$1.log"; exit 1
}

for r in $(seq "$ROUNDS"); do
  for dut in testpmd-io podpath-l2; do
    start_dut "$dut"
    target/release/podpath-gen $(for a in $mem -m 128; do printf -- '--eal=%s ' "$a"; done) \
      --tx "net_virtio_user0,path=$dir/a.sock" --rx "net_virtio_user1,path=$dir/b.sock" \
      --duration "$SECS" --flows "$FLOWS" --size "$SIZE" --json "$dir/$dut.$r.json" \
      >"$dir/gen.out" 2>"$dir/gen.err" || { echo "side-by-side: generator failed:"; tail -5 "$dir/gen.err"; exit 1; }
    echo "round $r $dut: $(head -1 "$dir/gen.out")"
    kill "$dut_pid"; wait "$dut_pid" 2>/dev/null || true; dut_pid=
  done
done

mkdir -p docs/results
python3 - "$dir" "$ROUNDS" "$SECS" "$FLOWS" "$SIZE" <<'EOF'
import json, statistics, sys
d, rounds, secs, flows, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
out = {"method": "podpath-gen over net_virtio_user <-> net_vhost, one DUT core, rounds interleaved",
       "seconds": float(secs), "flows": int(flows), "frame_size": int(size), "duts": {}}
for dut in ["testpmd-io", "podpath-l2"]:
    runs = [json.load(open(f"{d}/{dut}.{r}.json")) for r in range(1, rounds + 1)]
    mpps = [x["rx_mpps"] for x in runs]
    out["duts"][dut] = {"rx_mpps": {"median": statistics.median(mpps), "min": min(mpps), "max": max(mpps)},
                        "loss_ratio_median": statistics.median(x["loss_ratio"] for x in runs),
                        "latency_p50_us_median": statistics.median(x["latency_us"]["p50"] for x in runs),
                        "runs": runs}
m = {k: v["rx_mpps"]["median"] for k, v in out["duts"].items()}
out["ratio_podpath_to_testpmd"] = m["podpath-l2"] / m["testpmd-io"] if m["testpmd-io"] else None
json.dump(out, open("docs/results/side-by-side-l2.json", "w"), indent=2)
print(f"{'dut':<12} {'median Mpps':>12} {'min':>8} {'max':>8} {'loss %':>8}")
for k, v in out["duts"].items():
    r = v["rx_mpps"]
    print(f"{k:<12} {r['median']:>12.3f} {r['min']:>8.3f} {r['max']:>8.3f} {100*v['loss_ratio_median']:>8.4f}")
print(f"podpath-l2 / testpmd-io = {out['ratio_podpath_to_testpmd']:.2f}  (docs/results/side-by-side-l2.json)")
EOF

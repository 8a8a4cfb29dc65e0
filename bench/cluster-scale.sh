#!/usr/bin/env bash
# A node in a large cluster, one command: a dataplane (one worker, no ports) and its
# control service in a temp dir, fed by the agent's Kubernetes translation with
# generated objects (default 5 000 nodes, 10 000 Services, 100 000 endpoints; no API
# server). Prints one JSON line: the full resync, p50/p99 of single EndpointSlice
# changes from arrival to every worker applying them, and resident memory.
# Results: docs/results/cluster-scale.json.
# Usage: bench/cluster-scale.sh [NODES] [SERVICES] [ENDPOINTS] [CHANGES]
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${1:-5000}; SERVICES=${2:-10000}; ENDPOINTS=${3:-100000}; CHANGES=${4:-200}
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release -q -p podpath-dataplane -p podpath-control -p podpath-bench \
  --bin podpath-dataplane --bin podpath-control --bin cluster-scale
dir=$(mktemp -d /tmp/pp-scale.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
cat >"$dir/dp.toml" <<TOML
[eal]
lcores = "0,1"
file_prefix = "ppscale$$"
memory_mb = 256
pci = false
hugepages = "off"
[dataplane]
socket = "$dir/dp.sock"
state_dir = "$dir/state"
mbufs = 2047
mbuf_cache = 64
[conntrack]
capacity = 16384
[idle]
enabled = true
TOML
cat >"$dir/control.toml" <<TOML
[control]
socket = "$dir/control.sock"
dataplane_socket = "$dir/dp.sock"
state_file = "$dir/state.json"
[node]
node_ip = "172.16.0.1"
underlay_cidr = "172.16.0.0/16"
pod_cidr = "10.128.0.0/24"
cluster_cidr = "10.128.0.0/9"
uplink = "uplink"
service_cidr = "10.96.0.0/12"
TOML
target/release/podpath-dataplane --config "$dir/dp.toml" >"$dir/dp.log" 2>&1 & pids+=($!); dp=$!
for _ in $(seq 100); do [ -S "$dir/dp.sock" ] && break; sleep 0.1; done
target/release/podpath-control --config "$dir/control.toml" >"$dir/control.log" 2>&1 & pids+=($!); cp=$!
for _ in $(seq 100); do [ -S "$dir/control.sock" ] && break; sleep 0.1; done
target/release/cluster-scale --control "$dir/control.sock" --nodes "$NODES" --services "$SERVICES" \
  --endpoints "$ENDPOINTS" --changes "$CHANGES" --dataplane-pid "$dp" --control-pid "$cp" \
  | tee "$dir/out.json"
echo "state file: $(du -h "$dir/state.json" | cut -f1)" >&2
mkdir -p docs/results
cp "$dir/out.json" "docs/results/cluster-scale.json"

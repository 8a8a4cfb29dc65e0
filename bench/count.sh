#!/usr/bin/env bash
# Instructions per packet for each pipeline path, counted by callgrind (repeatable to a
# few instructions, unlike wall clock on this machine): each path runs B and 2B bursts
# of 32; (Ir(2B) - Ir(B)) / (B * 32) is the cost of one packet, set-up excluded.
# Usage: bench/count.sh [BURSTS=2000] [FLOWS...]   (needs valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-2000}; shift || true
FLOWS=${*:-1 10000}
cargo build --release -q -p podpath-bench --bin pipeline-count
bin=target/release/pipeline-count
ir() {
  local out; out=$(mktemp)
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" "$@" >/dev/null 2>&1
  awk '/^summary:/ {print $2}' "$out"; rm -f "$out"
}
printf '%-12s %8s %14s\n' path flows instr/packet
for path in l2-bridge ip4-route vxlan-encap vxlan-decap snat-established snat-new service-established service-new; do
  for f in $FLOWS; do
    a=$(ir "$path" "$f" "$B"); b=$(ir "$path" "$f" $((2 * B)))
    printf '%-12s %8s %14s\n' "$path" "$f" "$(awk -v a="$a" -v b="$b" -v n="$B" 'BEGIN { printf "%.1f", (b - a) / (n * 32) }')"
  done
done

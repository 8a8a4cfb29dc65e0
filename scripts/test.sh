#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine, as root: installs what it needs,
# builds every binary (the end-to-end tests start the dataplane and the lab), then
# runs unit, property and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (the tests create network namespaces)"; exit 1; }
[ "${PODPATH_SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --workspace --bins
log=$(mktemp)
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# The stages, tables and memory backend without DPDK (the `dpdk` feature off):
# they must build with no dpdk-sys in the graph, and their tests pass there too.
nodpdk_rc=0
if cargo tree -p podpath-dataplane --no-default-features -e normal | grep -q dpdk-sys; then
  echo "test.sh: podpath-dataplane without the dpdk feature still depends on dpdk-sys"; nodpdk_rc=1
fi
cargo test -p podpath-dataplane --no-default-features --lib --tests 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" = 0 ] || nodpdk_rc=1
[ "$rc" = 0 ] && rc=$nodpdk_rc
# Every fuzz target for a short, bounded time on its committed corpus (fuzz/run.sh;
# PODPATH_FUZZ_SECONDS each, 0 skips): a crash fails the suite.
fuzz_rc=0
if [ "${PODPATH_FUZZ_SECONDS:-15}" != 0 ]; then
  fuzz/run.sh "${PODPATH_FUZZ_SECONDS:-15}" 2>&1 | tee -a "$log"
  fuzz_rc=${PIPESTATUS[0]}
fi
[ "$rc" = 0 ] && rc=$fuzz_rc
set -e
# One closing line for the whole suite (cargo prints one result per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i == "passed;") p += $(i-1); if ($i == "failed;") f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$rc"

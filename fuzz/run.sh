#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on a copy of its committed corpus
# (fuzz/corpus/<target>): `fuzz/run.sh [SECONDS] [TARGET...]` (default 15 s each,
# all targets). Installs cargo-fuzz if missing; builds with RUSTC_BOOTSTRAP=1
# (cargo fuzz passes nightly-only sanitizer flags; our toolchain is stable).
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-15}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(wire pipeline protocol config cni conntrack_state)
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
# -a: debug assertions on, so the stage-graph contract (a stage decides only what
# it declares) is checked on every input too.
cargo fuzz build -O -a >/dev/null
work=$(mktemp -d /tmp/podpath-fuzz.XXXXXX)
trap 'rm -rf "$work" /dev/shm/podpath-fuzz-ct-* /tmp/podpath-fuzz-protocol-*' EXIT
fail=0
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "artifacts/$t"
  cp -r "corpus/$t/." "$work/$t/" 2>/dev/null || true
  log="$work/$t.log"
  if cargo fuzz run -O -a "$t" "$work/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
       -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    execs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log")
    echo "fuzz $t: ${secs} s, ${execs:-?} executions, no crash"
  else
    echo "fuzz $t: FAILED (input in fuzz/artifacts/$t/)"; tail -30 "$log"; fail=1
  fi
done
exit $fail

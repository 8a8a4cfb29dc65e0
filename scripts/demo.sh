#!/usr/bin/env bash
# Sets up and runs the demo on a fresh Debian 12 machine, as root: a two-node lab of
# network namespaces with a podpath dataplane, control service and agent per node (the
# nodes find each other through a private etcd), then the six packet walks and a pod
# attached by podpath-cni, with the dataplane's ports, state, trace and counters.
# Pass --keep to leave the lab running (podpath-lab down removes it, etcd and the
# agents included). With --docker, the same walks in Docker node containers instead
# (docs/docker.md): podpath's images built, a private dockerd, three nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (the lab creates network namespaces)"; exit 1; }
[ "${PODPATH_SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --workspace --bins
if [ "${1:-}" = --docker ]; then
  exec target/release/podpath-lab docker-demo
fi
exec target/release/podpath-lab --name demo demo "$@"

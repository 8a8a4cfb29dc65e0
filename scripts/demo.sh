#!/usr/bin/env bash
# Sets up and runs the demo on a fresh Debian 12 machine, as root: a two-node lab of
# network namespaces with a podpath dataplane per node, then walk 1 of the packet
# walks (ARP, ping, 10 MB over TCP between two pods bridged by the dataplane) with
# the dataplane's ports, MAC table, packet trace and counters. Pass --keep to leave
# the lab running (podpath-lab down removes it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (the lab creates network namespaces)"; exit 1; }
[ "${PODPATH_SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --workspace --bins
exec target/release/podpath-lab --name demo demo "$@"

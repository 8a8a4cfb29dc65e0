#!/usr/bin/env bash
# Installs what podpath needs on Debian 12 (run as root): DPDK 22.11 and its headers,
# clang for bindgen, the network tools the lab and tests use, the CNI reference
# plugins, containerd/runc, etcd and Docker the tests start themselves (never as
# services), kubernetes-validate, and Rust if missing.
# Reserves hugepages when the kernel lets us (the dataplane falls back to --no-huge).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# No service these packages bring may start here: a dockerd in the root network
# namespace rewrites the host's firewall (the tests start private ones, in
# namespaces of their own). policy-rc.d is Debian's switch for that.
own_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d && own_policy=1
fi
# tshark asks whether non-root users may capture: no.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get install -y -qq --no-install-recommends \
  dpdk libdpdk-dev pkg-config libclang-dev clang gcc libc6-dev \
  iproute2 iputils-ping iputils-tracepath ethtool tcpdump procps kmod ca-certificates curl \
  prometheus util-linux \
  containernetworking-plugins containerd runc busybox-static \
  etcd-server etcd-client protobuf-compiler \
  docker.io libcap2-bin python3-venv librsvg2-bin tshark systemd >/dev/null
[ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
if [ -d /run/systemd/system ]; then
  systemctl disable --now docker.socket docker.service >/dev/null 2>&1 || true
fi
# kubernetes-validate (the deploy test checks deploy/ against the Kubernetes schemas
# offline), in a virtualenv of the checkout's own.
venv=$(cd "$(dirname "$0")/.." && pwd)/target/venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi
# The reference CNI plugins (the tests' oracle) and a container runtime the tests
# start privately; etcd for the node agent. None of their daemons runs by default.
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    :
  else
    apt-get install -y -qq --no-install-recommends cargo rustc >/dev/null
  fi
fi
# Hugepages: best effort (not possible in every container or VM).
if [ -w /proc/sys/vm/nr_hugepages ]; then
  cur=$(cat /proc/sys/vm/nr_hugepages)
  [ "$cur" -ge 256 ] || echo 256 > /proc/sys/vm/nr_hugepages 2>/dev/null || true
  mountpoint -q /dev/hugepages || { mkdir -p /dev/hugepages; mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null || true; }
fi
echo "setup: DPDK $(pkg-config --modversion libdpdk), hugepages free: $(awk '/HugePages_Free/ {print $2}' /proc/meminfo)"

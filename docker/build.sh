#!/usr/bin/env bash
# Builds podpath's container images from scratch: no registry is needed, nothing is
# pulled. Each image is one layer holding the binaries, every library `ldd` lists for
# them, and the DPDK drivers EAL loads at run time (which `ldd` does not show).
#
#   docker/build.sh                   release build, images written to target/docker/
#   docker/build.sh --load            ... and loaded into the Docker daemon ($DOCKER_HOST)
#   docker/build.sh --profile debug   use target/debug (the tests: no second build)
#   docker/build.sh --no-build --out DIR   package what is built, into DIR
#
# Outputs (docker-archive tarballs, for `docker load -i` or `ctr images import`):
#   target/docker/podpath.tar        podpath:<version>  the node image (dataplane,
#                                    control service, agent, podpathctl, podpath-cni)
#   target/docker/podpath-etcd.tar   podpath-etcd:<version>  Debian's etcd, for the
#                                    Docker test cluster (not needed on a real cluster)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
load=0
build=1
out=target/docker
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --load) load=1; shift ;;
    --no-build) build=0; shift ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "docker/build.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
# A fresh machine: what building and packaging need comes from scripts/setup.sh.
for tool in setcap busybox etcd etcdctl ethtool nsenter pkg-config; do
  if ! command -v "$tool" >/dev/null || ! pkg-config --exists libdpdk 2>/dev/null; then
    [ "${PODPATH_SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh
    break
  fi
done
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
version=$(awk -F'"' '/^version *=/ { print $2; exit }' Cargo.toml)
mkdir -p "$out"
bins=(podpath-dataplane podpath-control podpath-agent podpathctl podpath-cni)
if [ "$build" = 1 ]; then
  flag=(); [ "$profile" = release ] && flag=(--release)
  cargo build "${flag[@]}" --bins -p podpath-dataplane -p podpath-control -p podpath-agent -p podpath-cni
fi
for tool in setcap strip busybox etcd etcdctl ip ethtool nsenter; do
  command -v "$tool" >/dev/null || { echo "docker/build.sh: $tool missing (run scripts/setup.sh)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Copies PATH into ROOT as it is on this machine: every symlink on the way (so
# sonames and DPDK's driver links resolve the same), then the file.
copy_path() {
  local root=$1 p=$2 dir
  while :; do
    dir=$(realpath "$(dirname "$p")")
    p="$dir/$(basename "$p")"
    [ -e "$root$p" ] || [ -L "$root$p" ] || { mkdir -p "$root$dir"; cp -P "$p" "$root$p"; }
    [ -L "$p" ] || break
    local t; t=$(readlink "$p")
    case "$t" in /*) p=$t ;; *) p="$dir/$t" ;; esac
  done
}

# Copies each program and the libraries ldd lists for it.
copy_with_libs() {
  local root=$1; shift
  local f
  for f in "$@"; do
    copy_path "$root" "$f"
    copy_libs "$root" "$f"
  done
}

# Copies the libraries ldd lists for each program.
copy_libs() {
  local root=$1; shift
  local f lib
  for f in "$@"; do
    for lib in $(ldd "$f" 2>/dev/null | awk '/=>/ { print $3 } /^\t\// { print $1 }'); do
      copy_path "$root" "$lib"
    done
  done
}

# A root with the usual merged-/usr layout, /etc/passwd and the non-root user.
base_root() {
  local root=$1
  mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,etc,tmp,run,var/run,var/lib,proc,sys,dev}
  ln -s usr/bin "$root/bin"; ln -s usr/sbin "$root/sbin"; ln -s usr/lib "$root/lib"; ln -s usr/lib64 "$root/lib64"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\npodpath:x:65532:65532:podpath:/var/lib/podpath:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\npodpath:x:65532:\nnogroup:x:65534:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
  copy_path "$root" "$(command -v busybox)"
}

# busybox for the shell and the everyday tools; the real programs copied win.
busybox_links() {
  local root=$1 a
  for a in $(busybox --list); do
    [ -e "$root/usr/bin/$a" ] || [ -e "$root/usr/sbin/$a" ] || ln -s busybox "$root/usr/bin/$a"
  done
}

# Writes ROOT as a one-layer docker-archive TAG into FILE (what `docker save` writes):
# the layer, an image config and manifest.json. File capabilities travel as xattrs.
write_image() {
  local root=$1 tag=$2 file=$3 config=$4 dir layer diff cfg
  busybox_links "$root"
  dir=$(mktemp -d -p "$work")
  tar --numeric-owner --xattrs --xattrs-include='security.capability' --sort=name \
      --mtime='2026-01-01 00:00Z' -C "$root" -cf "$dir/layer.tar" .
  diff=$(sha256sum "$dir/layer.tar" | cut -d' ' -f1)
  mkdir -p "$dir/$diff"; mv "$dir/layer.tar" "$dir/$diff/layer.tar"
  cfg=$(printf '{"architecture":"amd64","os":"linux","created":"2026-01-01T00:00:00Z","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"2026-01-01T00:00:00Z","created_by":"docker/build.sh"}]}' "$config" "$diff")
  local id; id=$(printf '%s' "$cfg" | sha256sum | cut -d' ' -f1)
  printf '%s' "$cfg" >"$dir/$id.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$id" "$tag" "$diff" >"$dir/manifest.json"
  tar -C "$dir" -cf "$file" manifest.json "$id.json" "$diff/layer.tar"
  echo "$tag: $(du -m "$dir/$diff/layer.tar" | cut -f1) MB unpacked, $(find "$root" -type f | wc -l) files -> $file"
}

# --- podpath: the node image ---------------------------------------------------
root=$work/podpath
base_root "$root"
for b in "${bins[@]}"; do
  src=target/$profile/$b
  [ -x "$src" ] || { echo "docker/build.sh: $src missing (cargo build)" >&2; exit 1; }
  strip -o "$root/usr/bin/$b" "$src"
  copy_libs "$root" "$src"
done
# The tools podpath-cni and the agent run (iproute2, ethtool, util-linux's nsenter).
copy_with_libs "$root" "$(command -v ip)" "$(command -v ethtool)" "$(command -v nsenter)"
# DPDK's drivers: EAL loads every one in its driver directory. The virtual devices
# the lab and Docker use, and the common NICs of bare-metal nodes (Intel, virtio);
# others (mlx5 needs rdma-core) by adding them here.
pmds=/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0
for d in bus_pci bus_vdev mempool_ring mempool_stack net_af_packet net_af_xdp net_tap net_ring \
         net_vhost net_virtio net_e1000 net_ixgbe net_i40e net_ice net_iavf common_iavf; do
  for f in "$pmds/librte_$d.so" "/usr/lib/x86_64-linux-gnu/librte_$d.so.23"; do
    [ -e "$f" ] || { echo "docker/build.sh: DPDK driver $d missing ($f)" >&2; exit 1; }
    copy_with_libs "$root" "$f"
  done
done
# The dataplane runs as the podpath user: the capabilities DPDK needs are permitted
# on its file (not effective: it raises them itself and names any that the
# container does not grant, instead of failing to exec).
setcap 'cap_net_admin,cap_net_raw,cap_ipc_lock,cap_sys_nice,cap_sys_admin=p' "$root/usr/bin/podpath-dataplane"
install -m 0755 docker/podpath-node "$root/usr/bin/podpath-node"
install -m 0755 docker/install-cni "$root/usr/bin/install-cni"
mkdir -p "$root/etc/podpath" "$root/usr/share/podpath/cni" "$root/run/podpath" "$root/var/lib/podpath"
cp configs/*.toml "$root/etc/podpath/"
cp docker/10-podpath.conflist "$root/usr/share/podpath/cni/"
chown 65532:65532 "$root/run/podpath" "$root/var/lib/podpath"
write_image "$root" "podpath:$version" "$out/podpath.tar" \
  '{"User":"65532:65532","Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":["/usr/bin/podpath-node"],"WorkingDir":"/var/lib/podpath","Labels":{"org.opencontainers.image.title":"podpath","org.opencontainers.image.version":"'"$version"'"}}'

# --- podpath-etcd: the Docker test cluster's etcd ------------------------------
root=$work/etcd
base_root "$root"
copy_with_libs "$root" "$(command -v etcd)" "$(command -v etcdctl)"
mkdir -p "$root/var/lib/etcd"
write_image "$root" "podpath-etcd:$version" "$out/podpath-etcd.tar" \
  '{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":["/usr/bin/etcd"],"WorkingDir":"/var/lib/etcd"}'

if [ "$load" = 1 ]; then
  docker load -i "$out/podpath.tar"
  docker load -i "$out/podpath-etcd.tar"
fi

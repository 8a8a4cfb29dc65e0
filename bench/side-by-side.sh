#!/usr/bin/env bash
# Side by side over vhost-user, one command: the same generator (podpath-gen), the same
# flows, each device under test (DUT) in turn, rounds interleaved (A, B, C, A, B, C, ...)
# so that the machine's drift hits every DUT alike. Two jobs:
#   l2:  frames from port a to port b, switched by MAC
#        - testpmd-io:  dpdk-testpmd --forward-mode=io, the transport's ceiling;
#        - podpath-l2:  podpath-dataplane bridging the two ports (bridge 1);
#        - ovs-l2:      Open vSwitch with DPDK, netdev bridge, the NORMAL action.
#   nat: a pod's UDP flows to an external host, routed and masqueraded (SNAT) to the
#        node address, connection-tracked
#        - testpmd-io:  as above (forwards without routing: the ceiling);
#        - podpath-snat: podpath-dataplane, pod port a, uplink b, node 192.168.77.11;
#        - ovs-ct-nat:  OVS-DPDK, ct(commit,nat(src=192.168.77.11:1024-65535)), MAC
#                       rewrite and dec_ttl, the same job in OpenFlow.
#   kernel: bench/kernel-path.sh (the Linux path on veths; CPU time per packet).
# Every DUT is the vhost-user server of both ports (net_vhost; OVS dpdkvhostuser) and
# gets one forwarding core (lcore 1); the generator is the client (net_virtio_user) on
# lcore 0. Per DUT: delivered Mpps and busy cycles per packet, each by the DUT's own
# counter with one definition (TSC cycles of poll iterations that received packets,
# divided by packets received): testpmd --record-core-cycles, OVS pmd-stats-show
# ("processing cycles"), podpath's worker busy_cycles.
# Usage (root; sets up like scripts/setup.sh, installs dpdk-dev and
# openvswitch-switch-dpdk when missing):
#   bench/side-by-side.sh [JOB=all|l2|nat|kernel] [ROUNDS=3] [SECONDS=5] [FLOWS=10000] [SIZE=64]
#   (all = l2, nat and then kernel)
#   (DUTS="podpath-snat ovs-ct-nat" limits a run to those DUTs.)
# Results: docs/results/side-by-side.json (median, min, max and every run).
set -euo pipefail
cd "$(dirname "$0")/.."
JOB=${1:-all}; ROUNDS=${2:-3}; SECS=${3:-5}; FLOWS=${4:-10000}; SIZE=${5:-64}
case $JOB in
  all) JOBS="l2 nat" ;; l2|nat) JOBS=$JOB ;;
  # The kernel path runs on veths, with its own runner (CPU time per packet, not Mpps).
  kernel) exec bench/kernel-path.sh "$ROUNDS" "$SECS" ;;
  *) echo "side-by-side: JOB is all, l2, nat or kernel"; exit 1 ;;
esac
[ "$(id -u)" = 0 ] || { echo "side-by-side: run as root"; exit 1; }
[ "${PODPATH_SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh
need() { command -v "$1" >/dev/null || [ -x "$1" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; }
need dpdk-testpmd dpdk-dev
OVS_VSWITCHD=/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk
# The package's service is not used: each OVS round runs its own private instance.
need "$OVS_VSWITCHD" openvswitch-switch-dpdk
free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
[ "$free" -ge 200 ] || { echo "side-by-side: needs 200 free 2 MiB hugepages (vhost-user shares hugepage memory), $free free"; exit 1; }
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release -q -p podpath-bench --bin podpath-gen -p podpath-dataplane --bin podpath-dataplane \
  -p podpath-control --bin podpathctl

dir=$(mktemp -d /tmp/pp-sbs.XXXXXX)
ns=pp-sbs-$$          # OVS's netdev bridge makes a tap device: keep it out of the root netns
dut_pid=
ovs_stop() {
  for p in ovs-vswitchd ovsdb-server; do
    [ -f "$dir/ovs/$p.pid" ] && kill "$(cat "$dir/ovs/$p.pid")" 2>/dev/null || true
  done
  # Wait for the PMD to let go of its hugepages before the next DUT starts.
  for _ in $(seq 50); do [ -f "$dir/ovs/ovs-vswitchd.pid" ] && kill -0 "$(cat "$dir/ovs/ovs-vswitchd.pid")" 2>/dev/null || break; sleep 0.1; done
  rm -rf "$dir/ovs"
}
cleanup() {
  set +e  # clean up everything, whatever fails
  if [ -n "$dut_pid" ]; then kill "$dut_pid" 2>/dev/null; wait "$dut_pid" 2>/dev/null; fi
  ovs_stop
  ip netns del "$ns" 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] && echo "kept $dir" || rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$ns"
# --in-memory with one file per memory segment list: vhost-user shares every region
# by file descriptor, and one fd per 2 MiB page exceeds its region limit.
mem="--in-memory --single-file-segments --no-pci"
GEN_MAC=02:00:00:00:00:01      # port a's peer (the pod, in the nat job)
EXT_MAC=02:00:00:00:00:64      # port b's peer (the external host / next hop)
GW_MAC=0a:58:0a:f4:00:01       # podpath's gateway MAC for 10.244.0.1

podpath_config() { # JOB
  cat <<EOF
[eal]
lcores = "0,1"
file_prefix = "pp-sbs"
memory_mb = 192
hugepages = "on"
pci = false
extra_args = ["--in-memory", "--single-file-segments"]
[dataplane]
socket = "$dir/dp.sock"
state_dir = "$dir/state"
[idle]
enabled = false
[[port]]
name = "gen-a"
device = "net_vhost0,iface=$dir/a.sock"
bridge = 1
[[port]]
name = "gen-b"
device = "net_vhost1,iface=$dir/b.sock"
EOF
  if [ "$1" = l2 ]; then echo 'bridge = 1'; else cat bench/snat-node.toml; fi
}

# Starts DUT $1 for job $2; sets sock_a/sock_b (the vhost-user sockets) and dut_pid.
start_dut() {
  local dut=$1 job=$2
  sock_a=$dir/a.sock; sock_b=$dir/b.sock; rm -f "$sock_a" "$sock_b"
  case $dut in
    testpmd-io)
      # With a stats period, testpmd forwards until it is signalled (not until stdin
      # closes); the long period keeps its output quiet.
      dpdk-testpmd -l 0,1 $mem -m 192 --file-prefix pp-sbs --vdev "net_vhost0,iface=$sock_a" \
        --vdev "net_vhost1,iface=$sock_b" -- --forward-mode=io --auto-start \
        --record-core-cycles --stats-period 100000 </dev/null >"$dir/dut.log" 2>&1 &
      dut_pid=$! ;;
    podpath-*)
      podpath_config "$job" >"$dir/node.toml"
      target/release/podpath-dataplane --config "$dir/node.toml" >"$dir/dut.log" 2>&1 &
      dut_pid=$! ;;
    ovs-*)
      local o=$dir/ovs; mkdir -p "$o"
      export OVS_RUNDIR=$o OVS_LOGDIR=$o OVS_DBDIR=$o OVS_SYSCONFDIR=$o
      ovsdb-tool create "$o/conf.db" /usr/share/openvswitch/vswitch.ovsschema
      ovsdb-server "$o/conf.db" --remote="punix:$o/db.sock" --pidfile="$o/ovsdb-server.pid" \
        --detach --log-file="$o/ovsdb-server.log"
      local v="ovs-vsctl --db=unix:$o/db.sock --timeout=30"
      $v --no-wait init
      # Main thread on core 0, one PMD on core 1, like the other DUTs. Mempools sized
      # per port: the shared default takes nearly all of the 256 MiB and leaves vhost-user
      # no memory for its queues ("failed to allocate memory for batching copy").
      $v --no-wait set Open_vSwitch . other_config:dpdk-init=true \
        other_config:dpdk-lcore-mask=0x1 other_config:pmd-cpu-mask=0x2 \
        other_config:dpdk-socket-mem=256 other_config:dpdk-socket-limit=256 \
        other_config:per-port-memory=true \
        "other_config:dpdk-extra=$mem --file-prefix=pp-sbs-ovs"
      ip netns exec "$ns" "$OVS_VSWITCHD" "unix:$o/db.sock" --pidfile="$o/ovs-vswitchd.pid" \
        --detach --log-file="$o/ovs-vswitchd.log" 2>"$o/ovs-vswitchd.err"
      $v add-br br0 -- set bridge br0 datapath_type=netdev
      # dpdkvhostuser (OVS is the server): the same roles as every other DUT.
      $v add-port br0 a -- set Interface a type=dpdkvhostuser ofport_request=1
      $v add-port br0 b -- set Interface b type=dpdkvhostuser ofport_request=2
      sock_a=$o/a; sock_b=$o/b
      local of="ovs-ofctl -O OpenFlow13"
      if [ "$job" = nat ]; then
        $of del-flows br0
        # Pod to outside: track, commit and masquerade to the node address, route.
        $of add-flow br0 "table=0,priority=10,in_port=1,ip,actions=ct(commit,zone=1,nat(src=192.168.77.11:1024-65535)),mod_dl_src:02:00:00:00:00:b0,mod_dl_dst:$EXT_MAC,dec_ttl,output:2"
        # Replies: restore through the same connection, back to the pod.
        $of add-flow br0 "table=0,priority=10,in_port=2,ip,actions=ct(zone=1,nat,table=1)"
        $of add-flow br0 "table=1,priority=10,ct_state=+trk+est,ip,actions=mod_dl_src:$GW_MAC,mod_dl_dst:$GEN_MAC,dec_ttl,output:1"
        $of add-flow br0 "table=0,priority=0,actions=drop"
        $of add-flow br0 "table=1,priority=0,actions=drop"
      fi
      dut_pid= ;;
  esac
  for _ in $(seq 100); do [ -S "$sock_b" ] && return; sleep 0.2; done
  echo "side-by-side: $dut did not create its vhost-user sockets; log:"
  tail -20 "$dir/dut.log" "$dir/ovs/ovs-vswitchd.log" 2>/dev/null; exit 1
}

# Writes "BUSY_CYCLES PACKETS" of DUT $1 (its forwarding core, since it started) to
# $dir/busy, then stops it.
stop_dut() {
  case $1 in
    testpmd-io)
      kill -INT "$dut_pid"; wait "$dut_pid" 2>/dev/null || true; dut_pid=
      # "CPU cycles/packet=X (total cycles=B / total io packets=N) at ... MHz Clock";
      # 22.11 says "total" but counts only iterations that received ("busy" later).
      sed -n 's/.*(\(total\|busy\) cycles=\([0-9]*\) \/ total [a-z]* packets=\([0-9]*\).*/\2 \3/p' \
        "$dir/dut.log" | tail -1 >"$dir/busy"
      cp "$dir/dut.log" "$dir/testpmd.log" ;;
    podpath-*)
      target/release/podpathctl --socket "$dir/dp.sock" --json stats >"$dir/stats.json"
      python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); w=s["workers"]; print(sum(x["busy_cycles"] for x in w), sum(x["rx"] for x in w))' "$dir/stats.json" >"$dir/busy"
      kill "$dut_pid"; wait "$dut_pid" 2>/dev/null || true; dut_pid= ;;
    ovs-*)
      # "processing cycles: B (..%)" and "packets received: N" of the PMD on core 1.
      local ctl; ctl=$(ls "$dir"/ovs/ovs-vswitchd*.ctl)
      ovs-appctl -t "$ctl" dpif-netdev/pmd-stats-show >"$dir/pmd.txt"
      { ovs-appctl -t "$ctl" fdb/show br0; ovs-appctl -t "$ctl" dpctl/dump-flows -m; } >"$dir/ovs-flows.txt" 2>&1
      cp "$dir/ovs/ovs-vswitchd.log" "$dir/ovs-vswitchd.log"
      awk '/core_id 1:/ {on=1} on && /packets received:/ {n=$3} on && /processing cycles:/ {b=$3; print b, n; exit}' "$dir/pmd.txt" >"$dir/busy"
      ovs_stop ;;
  esac
}

results=$dir/results.tsv
for job in $JOBS; do
  case $job in
    l2) duts="testpmd-io podpath-l2 ovs-l2"; gen=() ;;
    nat) duts="testpmd-io podpath-snat ovs-ct-nat"
         gen=(--src-mac "$GEN_MAC" --dst-mac "$GW_MAC" --src-ip 10.244.0.2 --dst-ip 192.168.77.100
              --arp-mac "$EXT_MAC") ;;
  esac
  # DUTS="podpath-l2 ovs-l2" runs only those.
  [ -n "${DUTS:-}" ] && duts=$(for d in $duts; do case " $DUTS " in *" $d "*) echo "$d" ;; esac; done)
  for r in $(seq "$ROUNDS"); do
    for dut in $duts; do
      start_dut "$dut" "$job"
      out=$dir/$job.$dut.$r.json
      target/release/podpath-gen $(for a in $mem -m 128; do printf -- '--eal=%s ' "$a"; done) \
        --tx "net_virtio_user0,path=$sock_a" --rx "net_virtio_user1,path=$sock_b" \
        --warmup 1 --duration "$SECS" --flows "$FLOWS" --size "$SIZE" "${gen[@]}" --json "$out" \
        >"$dir/gen.out" 2>"$dir/gen.err" || { echo "side-by-side: generator failed:"; tail -5 "$dir/gen.err"; exit 1; }
      : >"$dir/busy"; stop_dut "$dut"; read -r busy pkts <"$dir/busy" || true
      # podpath's own counters (drops by reason): where a loss happened, if in the DUT.
      case $dut in podpath-*) cp "$dir/stats.json" "${out%.json}.stats.json" ;; esac
      printf '%s\t%s\t%s\t%s\t%s\n' "$job" "$dut" "$r" "${busy:-0}" "${pkts:-0}" >>"$results"
      cpp=$(awk -v b="${busy:-0}" -v n="${pkts:-0}" 'BEGIN { if (n > 0) printf "%.0f", b / n; else print "?" }')
      echo "$job round $r $dut: $(head -1 "$dir/gen.out")  busy cycles/packet $cpp"
    done
  done
done

mkdir -p docs/results
python3 bench/side-by-side-report.py "$dir" "$results" "$SECS" "$FLOWS" "$SIZE"
if [ "$JOB" = all ]; then
  echo; echo "kernel: the Linux kernel path on veths (bench/kernel-path.sh)"
  PODPATH_SKIP_SETUP=1 bench/kernel-path.sh "$ROUNDS" "$SECS"
fi

#!/usr/bin/env bash
# Benchmarks raftkv and etcd side by side on this machine, each at its best client
# setting, with the same durability (3 members, fsync on every commit) and workload.
#
#   bench/compare-etcd.sh            # 1/16/64/256 clients; write, read, 50/50; 100 B and 1 KiB (~23 min)
#   bench/compare-etcd.sh --quick    # 1 and 64 clients; write and read; 100 B (~2 min)
# (times after the release build)
#
# A configuration is how the load generator's clients reach the store, named after -n
# in the file names: etcd "<n>", n shared connections (1, 4, 16, 64, at most the client
# count); raftkv "<n>-b<K>": the same connection counts unbatched (K = 0, one RPC per
# operation), and, above one client, 1 and 4 connections (at most the client count)
# with batch 1 and batch 4 (batch K: batch RPCs with up to K in flight per connection;
# raftkv-bench --batch-in-flight K).
# 1. Sweep: for each store, workload and client count, one short run per configuration
#    (none for a store with a single one), raftkv and etcd alternately.
# 2. Repetitions: each store's best configuration of the sweep, REPS times, in rounds
#    over the whole matrix (raftkv, etcd, raftkv, etcd, ...), so drifting machine load
#    falls on both alike; the table gives the median with min and max, and each
#    store's server and load-generator CPU per operation in the measured window.
# The sweep and the repetitions are separate runs: the reported figures are not the
# luckiest of the runs that chose the configuration.
#
# Environment: DURATION / WARMUP (repetitions; default 4s / 1s, --quick 2s / 500ms),
# SWEEP_DURATION / SWEEP_WARMUP (default 2s / 500ms, --quick 1s / 500ms), REPS (3),
# RESULTS (the output directory), DATA_ROOT (both stores keep their data in a fresh
# directory under it, on one filesystem, removed at the end; default /var/tmp),
# CLIENT_COUNTS (the client counts, space-separated, instead of the mode's own).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
START=$(date +%s)

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [ "$QUICK" = 1 ]; then
  DURATION=${DURATION:-2s}; WARMUP=${WARMUP:-500ms}; SWEEP_DURATION=${SWEEP_DURATION:-1s}
  CLIENTS=(1 64); VALUES=(100); WORKLOADS=(write read)
else
  DURATION=${DURATION:-4s}; WARMUP=${WARMUP:-1s}; SWEEP_DURATION=${SWEEP_DURATION:-2s}
  CLIENTS=(1 16 64 256); VALUES=(100 1024); WORKLOADS=(write read mixed)
fi
if [ -n "${CLIENT_COUNTS:-}" ]; then
  read -r -a CLIENTS <<<"$CLIENT_COUNTS"
  for c in "${CLIENTS[@]}"; do
    case "$c" in '' | *[!0-9]* | 0) echo "CLIENT_COUNTS: '$c' is not a positive whole number" >&2; exit 2 ;; esac
  done
fi
SWEEP_WARMUP=${SWEEP_WARMUP:-500ms}; REPS=${REPS:-3}
CONNECTIONS=(1 4 16 64)
BATCH_CONNECTIONS=(1 4) # raftkv: the connection counts also run batched, at these K
BATCHES=(1 4)
RUN_LIMIT=120 # seconds: a bound on one load-generator run (its own deadlines come first)
STAMP=$(date -u +%Y-%m-%d)
SUFFIX=""
if [ "$QUICK" = 1 ]; then SUFFIX=-quick; fi
if [ -z "${RESULTS:-}" ]; then
  # Never overwrite an earlier run of the same day (a README may quote its JSON).
  RESULTS=$ROOT/bench/results/$STAMP$SUFFIX; n=2
  while [ -e "$RESULTS" ]; do RESULTS=$ROOT/bench/results/$STAMP$SUFFIX-$n; n=$((n + 1)); done
fi
mkdir -p "$RESULTS/sweep" "$RESULTS/runs"
AGG=(python3 "$ROOT/bench/compare_etcd.py")

# ---- tools ------------------------------------------------------------------------------
apt_install() {
  echo "installing $* (apt)" >&2
  local sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" \
    || { "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@"; }
}
command -v etcd >/dev/null || apt_install etcd-server
command -v etcdctl >/dev/null || apt_install etcd-client # compaction between runs
command -v protoc >/dev/null || apt_install protobuf-compiler # etcd-client (the crate) needs it
echo "building (release)" >&2
cargo build --release -q -p raftkv-server -p raftkv-bench-etcd
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
BIN=$TARGET_DIR/release
BENCH=$BIN/raftkv-bench
BUILT=$(date +%s) # the time limits of --quick and the full run are from here

# ---- clusters ---------------------------------------------------------------------------
# A fresh directory of its own, removed at the end (never the given DATA_ROOT itself).
DATA_ROOT=$(mktemp -d "${DATA_ROOT:-/var/tmp}/raftkv-vs-etcd.XXXXXX")
PIDS=(); ETCD_PIDS=(); RK_PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DATA_ROOT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # the EXIT trap cleans up; without exit bash would go on

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# etcd 3.4: 3 members on loopback; fsync is always on (3.4 has no --unsafe-no-fsync).
# The quota is raised from 2 GiB to 8 GiB: the full run writes a few million
# revisions, compacted between runs (etcd_compact) but not defragmented.
ETCD_CLIENT=(); ETCD_PEER=()
for i in 1 2 3; do ETCD_CLIENT+=("$(free_port)"); ETCD_PEER+=("$(free_port)"); done
CLUSTER=""
for i in 0 1 2; do CLUSTER+="${CLUSTER:+,}e$((i+1))=http://127.0.0.1:${ETCD_PEER[$i]}"; done
for i in 0 1 2; do
  name=e$((i+1)); dir=$DATA_ROOT/etcd/$name; mkdir -p "$dir"
  etcd --name "$name" --data-dir "$dir" \
    --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT[$i]}" --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER[$i]}" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token bench \
    --quota-backend-bytes $((8 << 30)) --logger zap --log-level error >"$DATA_ROOT/etcd-$name.log" 2>&1 &
  PIDS+=($!); ETCD_PIDS+=($!)
done
ETCD_EPS=$(printf '127.0.0.1:%s,' "${ETCD_CLIENT[@]}"); ETCD_EPS=${ETCD_EPS%,}

# raftkv: 3 server processes on loopback, defaults (fsync on every commit).
RK_PORTS=(); for i in 1 2 3; do RK_PORTS+=("$(free_port)"); done
PEERS=""; for i in 0 1 2; do PEERS+="${PEERS:+,}$((i+1))=127.0.0.1:${RK_PORTS[$i]}"; done
for i in 0 1 2; do
  id=$((i+1)); dir=$DATA_ROOT/raftkv/$id; mkdir -p "$dir"
  "$BIN/raftkv-server" --id "$id" --listen "127.0.0.1:${RK_PORTS[$i]}" --peers "$PEERS" --data-dir "$dir" --fsync always \
    >"$DATA_ROOT/raftkv-$id.log" 2>&1 &
  PIDS+=($!); RK_PIDS+=($!)
done
RK_EPS=$(printf '127.0.0.1:%s,' "${RK_PORTS[@]}"); RK_EPS=${RK_EPS%,}
if [ "$(stat -f -c %i "$DATA_ROOT/etcd")" != "$(stat -f -c %i "$DATA_ROOT/raftkv")" ]; then
  echo "the two stores' data directories are on different filesystems" >&2; exit 1
fi

# ---- runs -------------------------------------------------------------------------------
reads_of() { case "$1" in write) echo 0 ;; read) echo 1 ;; mixed) echo 0.5 ;; esac; }
pids_of() { local IFS=,; if [ "$1" = raftkv ]; then echo "${RK_PIDS[*]}"; else echo "${ETCD_PIDS[*]}"; fi; }
conns_for() { local n; for n in "${CONNECTIONS[@]}"; do [ "$n" -le "$1" ] && echo "$n"; done; }
configs_for() { # target clients: the configurations, one a line (see the header)
  local n k ns
  mapfile -t ns < <(conns_for "$2")
  if [ "$1" != raftkv ]; then printf '%s\n' "${ns[@]}"; return; fi
  for n in "${ns[@]}"; do echo "$n-b0"; done
  if [ "$2" -gt 1 ]; then
    for n in "${BATCH_CONNECTIONS[@]}"; do
      if [ "$n" -le "$2" ]; then for k in "${BATCHES[@]}"; do echo "$n-b$k"; done; fi
    done
  fi
}

# etcd keeps every revision until compacted; compact (and wait for it) between runs so
# that no run pays for its predecessors' history, as a deployment's auto-compaction does.
etcd_compact() {
  local rev
  rev=$(ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EPS" endpoint status -w json 2>/dev/null \
    | python3 -c 'import json,sys; print(max(s["Status"]["header"]["revision"] for s in json.load(sys.stdin)))') || return 0
  if [ "$rev" -gt 1 ]; then
    ETCDCTL_API=3 timeout 60 etcdctl --endpoints "$ETCD_EPS" compaction --physical "$rev" >/dev/null 2>&1 || true
  fi
}

run() { # target workload clients value configuration out warmup duration
  local target=$1 w=$2 c=$3 v=$4 cfg=$5 out=$6 eps batch=()
  if [ "$target" = raftkv ]; then
    eps=$RK_EPS
    batch=(--batch-in-flight "${cfg#*-b}") # raftkv's configurations are all <n>-b<K>
  else
    eps=$ETCD_EPS
  fi
  if ! timeout -k 5 "$RUN_LIMIT" "$BENCH" --target "$target" --endpoints "$eps" --json --clients "$c" --connections "${cfg%%-b*}" \
      "${batch[@]}" --reads "$(reads_of "$w")" --keys 1000 --key-size 16 --value-size "$v" --warmup "$7" --duration "$8" \
      --cpu-pids "$(pids_of "$target")" >"$out" 2>"$out.err"; then
    echo "$target $w c=$c v=$v n=$cfg failed: $(tail -3 "$out.err")" >&2
    rm -f "$out"
  fi
  [ -s "$out.err" ] || rm -f "$out.err"
  if [ "$target" = etcd ]; then etcd_compact; fi
}

{
  echo "# raftkv vs etcd, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "# $(nproc) cores; $(uname -srm); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# data of both on: $(df -P "$DATA_ROOT" | awk 'NR==2{print $1" ("$6")"}'); etcd $(etcd --version | head -1 | awk '{print $3}')"
  echo "# command: ${CLIENT_COUNTS:+CLIENT_COUNTS=\"$CLIENT_COUNTS\" }bench/compare-etcd.sh $*; sweep $SWEEP_DURATION after $SWEEP_WARMUP warmup; $REPS repetitions of $DURATION after $WARMUP warmup"
} >"$RESULTS/machine.txt"

KEYS=()
for v in "${VALUES[@]}"; do for w in "${WORKLOADS[@]}"; do for c in "${CLIENTS[@]}"; do KEYS+=("$w $c $v"); done; done; done

# 1. the sweep (a store with a single configuration for a client count needs none):
#    raftkv's configuration i, etcd's i, raftkv's i+1, ..., then the rest of the longer list
for key in "${KEYS[@]}"; do
  read -r w c v <<<"$key"
  mapfile -t rk < <(configs_for raftkv "$c"); [ "${#rk[@]}" -gt 1 ] || rk=()
  mapfile -t et < <(configs_for etcd "$c"); [ "${#et[@]}" -gt 1 ] || et=()
  runs=$(( ${#rk[@]} > ${#et[@]} ? ${#rk[@]} : ${#et[@]} ))
  [ "$runs" -gt 0 ] || continue
  echo "sweep: $w, $c clients, $v B values; raftkv ${rk[*]:-(one configuration)}; etcd ${et[*]:-(one configuration)} ($(( $(date +%s) - START ))s)" >&2
  for ((i = 0; i < runs; i++)); do
    for t in raftkv etcd; do
      if [ "$t" = raftkv ]; then cfg=${rk[i]:-}; else cfg=${et[i]:-}; fi
      if [ -n "$cfg" ]; then run "$t" "$w" "$c" "$v" "$cfg" "$RESULTS/sweep/$t-$w-c$c-v$v-n$cfg.json" "$SWEEP_WARMUP" "$SWEEP_DURATION"; fi
    done
  done
done

# 2. the repetitions of each store's best configuration
declare -A BEST
for key in "${KEYS[@]}"; do
  read -r w c v <<<"$key"
  for t in raftkv etcd; do
    mapfile -t cfgs < <(configs_for "$t" "$c")
    bk="$t $key"
    BEST[$bk]=$("${AGG[@]}" best "$RESULTS" "$t" "$w" "$c" "$v" "${cfgs[@]}") || BEST[$bk]=""
  done
done
for r in $(seq 1 "$REPS"); do
  echo "repetition $r of $REPS ($(( $(date +%s) - START ))s)" >&2
  for key in "${KEYS[@]}"; do
    read -r w c v <<<"$key"
    for t in raftkv etcd; do
      bk="$t $key"; cfg=${BEST[$bk]}
      if [ -n "$cfg" ]; then run "$t" "$w" "$c" "$v" "$cfg" "$RESULTS/runs/$t-$w-c$c-v$v-n$cfg-r$r.json" "$WARMUP" "$DURATION"; fi
    done
  done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg); took $(( $(date +%s) - BUILT ))s after $(( BUILT - START ))s of build" >>"$RESULTS/machine.txt"

# ---- tables -----------------------------------------------------------------------------
{
  sed 's/^# //; s/$/  /' "$RESULTS/machine.txt"
  echo
  "${AGG[@]}" table "$RESULTS"
  echo
  echo "conns: the connections the clients share; \"n, batch K\" (raftkv): batch RPCs with up to K in flight"
  echo "per connection; otherwise one RPC per operation."
  echo
  echo "Sweep (one run per configuration; ops/s by connections, and batch K when batched):"
  echo
  "${AGG[@]}" sweep "$RESULTS"
} | tee "$RESULTS/table.md"
echo "raw JSON: $RESULTS" >&2

#!/usr/bin/env bash
# Benchmarks raftkv and etcd side by side on this machine, each at its best client and
# server-thread setting, with the same durability (3 members, fsync on every commit)
# and workload.
#
#   bench/compare-etcd.sh            # 1/16/64/256 clients; write, read, 50/50; 100 B and 1 KiB (~23 min)
#   bench/compare-etcd.sh --quick    # 1 and 64 clients; write and read; 100 B (~2 min)
# (times after the release build)
#
# A configuration is how the load generator's clients reach the store, named after -n
# in the file names: etcd "<n>", n shared connections (1, 4, 16, 64, at most the client
# count); raftkv "<n>-b<K>": the same connection counts unbatched (K = 0, one RPC per
# operation), and, above one client, 1 and 4 connections (at most the client count)
# with batch 1 (batch K: batch RPCs with up to K in flight per connection;
# raftkv-bench --batch-in-flight K). A suffix -t1 ("1-b1-t1", "4-t1") runs it against
# the store's second cluster, whose servers have one thread (raftkv --worker-threads 1,
# etcd GOMAXPROCS=1); without it, the first, at their default (as many as the CPUs).
# Three servers and the load generator share this machine's cores, so fewer threads
# can be faster (fewer cross-thread wake-ups) or slower: each store runs at its best.
# 1. Sweep: for each store, workload and client count, one short run per client
#    configuration on the default cluster, raftkv and etcd alternately; then (1b) the
#    best of them once more with -t1, raftkv then etcd.
# 2. Repetitions: each store's best configuration of the sweep (-t1 included; a tie
#    goes to the default), REPS times, in rounds over the whole matrix (raftkv, etcd,
#    raftkv, etcd, ...), so drifting machine load falls on both alike; the table gives
#    the median with min and max, and each store's server and load-generator CPU per
#    operation in the measured window.
# The sweep and the repetitions are separate runs: the reported figures are not the
# luckiest of the runs that chose the configuration.
#
# Environment: DURATION / WARMUP (repetitions; default 4s / 1s, --quick 2s / 500ms),
# SWEEP_DURATION / SWEEP_WARMUP (default 2s / 500ms, --quick 1s / 500ms), REPS (3),
# RESULTS (the output directory), DATA_ROOT (both stores' clusters keep their data in a
# fresh directory under it, on one filesystem, removed at the end; default /var/tmp),
# CLIENT_COUNTS (the client counts, space-separated, instead of the mode's own).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
START=$(date +%s)

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
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
BATCHES=(1) # K = 4 never won a row of the full run of 2026-12-06-3; its time pays for -t1
THREADS=1 # the servers' thread setting swept beside their default (-t1)
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
# Two clusters of each store, by name: "raftkv" and "etcd" at the servers' default
# threads, "raftkv-t1" and "etcd-t1" on one thread. Each has its own ports and its own
# data directory under one fresh directory (never the given DATA_ROOT itself), removed
# at the end.
DATA_ROOT=$(mktemp -d "${DATA_ROOT:-/var/tmp}/raftkv-vs-etcd.XXXXXX")
PIDS=()
declare -A EPS CPU_PIDS # by cluster: its client endpoints, and its server processes (--cpu-pids)
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DATA_ROOT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # the EXIT trap cleans up; without exit bash would go on

free_ports() { # n distinct free ports: all bound at once, so no two are the same
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
read -r -a PORTS <<<"$(free_ports 18)" # 3 members x (etcd client + peer, raftkv) x 2 clusters
next_port() { PORT=${PORTS[0]}; PORTS=("${PORTS[@]:1}"); }

# etcd 3.4: 3 members on loopback; fsync is always on (3.4 has no --unsafe-no-fsync).
# The quota is raised from 2 GiB to 8 GiB: the full run writes a few million
# revisions, compacted between runs (etcd_compact) but not defragmented.
start_etcd() { # cluster name, then the members' environment (e.g. GOMAXPROCS=1)
  local name=$1 i m dir client=() peer=() cluster="" eps="" pids=()
  shift
  for i in 0 1 2; do next_port; client+=("$PORT"); next_port; peer+=("$PORT"); done
  for i in 0 1 2; do cluster+="${cluster:+,}e$((i+1))=http://127.0.0.1:${peer[$i]}"; done
  for i in 0 1 2; do
    m=e$((i+1)); dir=$DATA_ROOT/$name/$m; mkdir -p "$dir"
    env "$@" etcd --name "$m" --data-dir "$dir" \
      --listen-client-urls "http://127.0.0.1:${client[$i]}" --advertise-client-urls "http://127.0.0.1:${client[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${peer[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${peer[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "bench-$name" \
      --quota-backend-bytes $((8 << 30)) --logger zap --log-level error >"$DATA_ROOT/$name-$m.log" 2>&1 &
    PIDS+=($!); pids+=($!) # env execs etcd: the same process
    eps+="${eps:+,}127.0.0.1:${client[$i]}"
  done
  EPS[$name]=$eps; CPU_PIDS[$name]=$(IFS=,; echo "${pids[*]}")
}

# raftkv: 3 server processes on loopback, defaults (fsync on every commit) but for the
# given options (e.g. --worker-threads 1).
start_raftkv() { # cluster name, then options of every server
  local name=$1 i id dir ports=() peers="" eps="" pids=()
  shift
  for i in 0 1 2; do next_port; ports+=("$PORT"); done
  for i in 0 1 2; do peers+="${peers:+,}$((i+1))=127.0.0.1:${ports[$i]}"; done
  for i in 0 1 2; do
    id=$((i+1)); dir=$DATA_ROOT/$name/$id; mkdir -p "$dir"
    "$BIN/raftkv-server" --id "$id" --listen "127.0.0.1:${ports[$i]}" --peers "$peers" --data-dir "$dir" \
      --fsync always "$@" >"$DATA_ROOT/$name-$id.log" 2>&1 &
    PIDS+=($!); pids+=($!)
    eps+="${eps:+,}127.0.0.1:${ports[$i]}"
  done
  EPS[$name]=$eps; CPU_PIDS[$name]=$(IFS=,; echo "${pids[*]}")
}

# A raftkv-server without --worker-threads would refuse the one-thread cluster's option
# and every run on it would fail: the sweep would quietly lose the setting.
if ! "$BIN/raftkv-server" --help | grep -q -- '--worker-threads'; then
  echo "$BIN/raftkv-server has no --worker-threads option (an older build?)" >&2; exit 1
fi
start_etcd etcd
start_etcd "etcd-t$THREADS" "GOMAXPROCS=$THREADS"
start_raftkv raftkv
start_raftkv "raftkv-t$THREADS" --worker-threads "$THREADS"
for name in "${!EPS[@]}"; do
  if [ "$(stat -f -c %i "$DATA_ROOT/$name")" != "$(stat -f -c %i "$DATA_ROOT/etcd")" ]; then
    echo "the clusters' data directories are on different filesystems" >&2; exit 1
  fi
done

# ---- runs -------------------------------------------------------------------------------
reads_of() { case "$1" in write) echo 0 ;; read) echo 1 ;; mixed) echo 0.5 ;; esac; }
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
etcd_compact() { # endpoints
  local rev
  rev=$(ETCDCTL_API=3 etcdctl --endpoints "$1" endpoint status -w json 2>/dev/null \
    | python3 -c 'import json,sys; print(max(s["Status"]["header"]["revision"] for s in json.load(sys.stdin)))') || return 0
  if [ "$rev" -gt 1 ]; then
    ETCDCTL_API=3 timeout 60 etcdctl --endpoints "$1" compaction --physical "$rev" >/dev/null 2>&1 || true
  fi
}

run() { # target workload clients value configuration out warmup duration
  local target=$1 w=$2 c=$3 v=$4 cfg=$5 out=$6 cluster=$1 threads=default client batch=()
  # The client configuration, <n> or <n>-b<K>; a -t<T> suffix names the cluster.
  client=${cfg%-t*}
  if [ "$client" != "$cfg" ]; then threads=${cfg##*-t}; cluster=$target-t$threads; fi
  if [ -z "${EPS[$cluster]:-}" ]; then echo "$target $cfg: no cluster $cluster" >&2; exit 1; fi
  if [ "$target" = raftkv ]; then
    batch=(--batch-in-flight "${client#*-b}") # raftkv's configurations are all <n>-b<K>
  fi
  # The label lets compare_etcd.py check which cluster a report came from.
  if ! timeout -k 5 "$RUN_LIMIT" "$BENCH" --target "$target" --endpoints "${EPS[$cluster]}" --json \
      --label "server-threads=$threads" --clients "$c" --connections "${client%%-b*}" "${batch[@]}" \
      --reads "$(reads_of "$w")" --keys 1000 --key-size 16 --value-size "$v" --warmup "$7" --duration "$8" \
      --cpu-pids "${CPU_PIDS[$cluster]}" >"$out" 2>"$out.err"; then
    echo "$target $w c=$c v=$v n=$cfg failed: $(tail -3 "$out.err")" >&2
    rm -f "$out"
  fi
  [ -s "$out.err" ] || rm -f "$out.err"
  if [ "$target" = etcd ]; then etcd_compact "${EPS[$cluster]}"; fi
}

{
  echo "# raftkv vs etcd, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "# $(nproc) cores; $(uname -srm); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# data of both on: $(df -P "$DATA_ROOT" | awk 'NR==2{print $1" ("$6")"}'); etcd $(etcd --version | head -1 | awk '{print $3}')"
  echo "# command: ${CLIENT_COUNTS:+CLIENT_COUNTS=\"$CLIENT_COUNTS\" }bench/compare-etcd.sh $*; sweep $SWEEP_DURATION after $SWEEP_WARMUP warmup; $REPS repetitions of $DURATION after $WARMUP warmup"
  echo "# server threads: each store's default and $THREADS (raftkv --worker-threads $THREADS, etcd GOMAXPROCS=$THREADS)"
} >"$RESULTS/machine.txt"

KEYS=()
for v in "${VALUES[@]}"; do for w in "${WORKLOADS[@]}"; do for c in "${CLIENTS[@]}"; do KEYS+=("$w $c $v"); done; done; done

sweep_run() { # target workload clients value configuration
  run "$1" "$2" "$3" "$4" "$5" "$RESULTS/sweep/$1-$2-c$3-v$4-n$5.json" "$SWEEP_WARMUP" "$SWEEP_DURATION"
}

# 1. per row, the sweep of the client configurations on the default clusters (one
#    configuration too: its run is what the -t1 run of 1b is compared with): raftkv's
#    configuration i, etcd's i, raftkv's i+1, ..., then the rest of the longer list;
#    1b. right after it (so that both meet the same machine state), the servers'
#    thread setting: each store's best of 1 once more on its one-thread cluster
declare -A CANDIDATES # by "<target> <workload> <clients> <value>": the configurations swept
for key in "${KEYS[@]}"; do
  read -r w c v <<<"$key"
  mapfile -t rk < <(configs_for raftkv "$c")
  mapfile -t et < <(configs_for etcd "$c")
  runs=$(( ${#rk[@]} > ${#et[@]} ? ${#rk[@]} : ${#et[@]} ))
  echo "sweep: $w, $c clients, $v B values; raftkv ${rk[*]}; etcd ${et[*]} ($(( $(date +%s) - START ))s)" >&2
  for ((i = 0; i < runs; i++)); do
    for t in raftkv etcd; do
      if [ "$t" = raftkv ]; then cfg=${rk[i]:-}; else cfg=${et[i]:-}; fi
      if [ -n "$cfg" ]; then sweep_run "$t" "$w" "$c" "$v" "$cfg"; fi
    done
  done
  for t in raftkv etcd; do
    bk="$t $key"; CANDIDATES[$bk]=$(configs_for "$t" "$c" | tr '\n' ' ')
    # shellcheck disable=SC2086 # the configurations are words
    best1=$("${AGG[@]}" best "$RESULTS" "$t" "$w" "$c" "$v" ${CANDIDATES[$bk]}) || continue
    echo "sweep: $w, $c clients, $v B values; $t $best1-t$THREADS ($(( $(date +%s) - START ))s)" >&2
    sweep_run "$t" "$w" "$c" "$v" "$best1-t$THREADS"
    CANDIDATES[$bk]+="$best1-t$THREADS"
  done
done

# 2. the repetitions of each store's best configuration of 1 and 1b
declare -A BEST
for key in "${KEYS[@]}"; do
  read -r w c v <<<"$key"
  for t in raftkv etcd; do
    bk="$t $key"
    # shellcheck disable=SC2086 # the configurations are words
    BEST[$bk]=$("${AGG[@]}" best "$RESULTS" "$t" "$w" "$c" "$v" ${CANDIDATES[$bk]}) || BEST[$bk]=""
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
  echo "config: the connections the clients share; \"n, batch K\" (raftkv): batch RPCs with up to K in flight"
  echo "per connection, otherwise one RPC per operation; \"1 server thread\": the store's servers ran on one"
  echo "thread (raftkv --worker-threads 1, etcd GOMAXPROCS=1), otherwise at their default (as many as the CPUs)."
  echo
  echo "Sweep (one run per configuration; ops/s by connections, batch K when batched, and t1 on one server thread):"
  echo
  "${AGG[@]}" sweep "$RESULTS"
} | tee "$RESULTS/table.md"
echo "raw JSON: $RESULTS" >&2

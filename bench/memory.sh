#!/usr/bin/env bash
# Measures a 3-node raftkv cluster's memory and recovery on this machine:
#
#   1. builds the release binaries and starts 3 nodes on loopback (--fsync always,
#      default snapshot settings, an admin port each);
#   2. loads KEYS distinct keys of 16 B with VALUE_SIZE-byte values, each written once
#      (`raftkv bench --fill`, CLIENTS clients);
#   3. once every node applied everything: VmRSS and VmHWM of each node
#      (/proc/<pid>/status) against the raw data size (KEYS × (16 + VALUE_SIZE) B),
#      and the size of each node's newest snapshot file and WAL;
#   4. FOLLOWER_RESTARTS times: stops a follower (alternately kill -9 and SIGTERM),
#      restarts it and measures start → /readyz 200 (curl every ~10 ms), start → the
#      server's own "recovered storage" log line, and start → caught up (its applied
#      index reaches the leader's commit index, from /metrics);
#   5. restarts the whole cluster once (SIGTERM all, start all) and measures each
#      node's start → ready, start → caught up and its RSS afterwards.
#
# Prints a markdown table and writes memory.json, table.md, machine.txt and the fill
# report under bench/results/<date>-memory/ (RESULTS overrides; LABEL names the run,
# e.g. before/after, default "run"). Stops everything it started (trap).
#
#   bench/memory.sh                                   # 1M keys × 100 B (~116 MB raw)
#   KEYS=100000 FOLLOWER_RESTARTS=2 bench/memory.sh   # a quick check
#
# Environment: KEYS (1000000), VALUE_SIZE (100), CLIENTS (64), FOLLOWER_RESTARTS (6),
# LABEL (run), RESULTS, DATA_ROOT (default a fresh directory under /var/tmp),
# SERVER_ENV (extra VAR=value words for the server processes, e.g. MALLOC_ARENA_MAX=2),
# BIN_DIR (use the raftkv-server and raftkv binaries there instead of building, e.g.
# to measure an older build with the same script).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
ROOT=$(pwd)

case "${1:-}" in
  -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
  "") ;;
  *) echo "unknown argument: $1 (settings are environment variables; see --help)" >&2; exit 2 ;;
esac

KEYS=${KEYS:-1000000}
KEY_SIZE=16
VALUE_SIZE=${VALUE_SIZE:-100}
CLIENTS=${CLIENTS:-64}
FOLLOWER_RESTARTS=${FOLLOWER_RESTARTS:-6}
LABEL=${LABEL:-run}
SERVER_ENV=${SERVER_ENV:-}
STAMP=$(date -u +%Y-%m-%d)
RESULTS=${RESULTS:-$ROOT/bench/results/$STAMP-memory}
# How long any one wait may take before the run is declared failed.
DEADLINE_S=600
mkdir -p "$RESULTS"

for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done

if [ -n "${BIN_DIR:-}" ]; then
  echo "using the binaries in $BIN_DIR (no build)" >&2
else
  echo "building (release)" >&2
  cargo build --release -q -p raftkv-server -p raftkv
  BIN_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
fi
SERVER=$BIN_DIR/raftkv-server
CLI=$BIN_DIR/raftkv

DATA_ROOT=${DATA_ROOT:-$(mktemp -d /var/tmp/raftkv-memory.XXXXXX)}
WORK=$DATA_ROOT/work
mkdir -p "$WORK"
FIGURES=$WORK/figures.txt
: >"$FIGURES"

declare -A PID=()
cleanup() {
  local pid
  for pid in "${PID[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PID[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DATA_ROOT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

NODES=(1 2 3)
declare -A PORT=() ADMIN=()
for i in "${NODES[@]}"; do PORT[$i]=$(free_port); ADMIN[$i]=$(free_port); done
PEERS=""
for i in "${NODES[@]}"; do PEERS+="${PEERS:+,}$i=127.0.0.1:${PORT[$i]}"; done
ENDPOINTS=""
for i in "${NODES[@]}"; do ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:${PORT[$i]}"; done

# Records one figure: `name value` (read by the report at the end).
figure() { echo "$1 $2" >>"$FIGURES"; }

now() { echo "$EPOCHREALTIME"; }
elapsed_ms() { python3 -c "import sys; print(round((float(sys.argv[2]) - float(sys.argv[1])) * 1000, 1))" "$1" "$2"; }
past_deadline() { python3 -c "import sys,time; sys.exit(0 if time.time() > float(sys.argv[1]) else 1)" "$1"; }
deadline() { python3 -c "import sys,time; print(time.time() + float(sys.argv[1]))" "$1"; }

# Starts node $1 with its output in log file $2; sets START[$1] to the launch time.
declare -A START=() LOG=()
start_node() {
  local id=$1 log=$2 words=()
  read -r -a words <<<"$SERVER_ENV"
  LOG[$id]=$log
  START[$id]=$(now)
  env "${words[@]}" "$SERVER" --id "$id" --listen "127.0.0.1:${PORT[$id]}" --peers "$PEERS" \
    --data-dir "$DATA_ROOT/node$id" --fsync always --admin-listen "127.0.0.1:${ADMIN[$id]}" --log-format json \
    >"$log" 2>&1 &
  PID[$id]=$!
}

# Stops node $1 with signal $2 and waits for it to exit.
stop_node() {
  local id=$1 sig=$2
  kill -s "$sig" "${PID[$id]}"
  wait "${PID[$id]}" 2>/dev/null || true
  unset 'PID[$id]'
}

metric() { # node name → value, labels ignored (empty if the node does not answer)
  curl -sf --max-time 2 "http://127.0.0.1:${ADMIN[$1]}/metrics" | awk -v n="$2" '{ k = $1; sub(/[{].*/, "", k) } k == n { print $2 }' || true
}

# Polls /readyz of the given nodes (each every ~10 ms) until all answer 200; sets
# READY[id] to the time of each one's first 200.
declare -A READY=()
wait_ready() {
  local until id waiting=("$@") left
  until=$(deadline "$DEADLINE_S")
  while [ "${#waiting[@]}" -gt 0 ]; do
    left=()
    for id in "${waiting[@]}"; do
      if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:${ADMIN[$id]}/readyz")" = 200 ]; then
        READY[$id]=$(now)
      elif ! kill -0 "${PID[$id]}" 2>/dev/null; then
        echo "node $id exited while starting; its log:" >&2; tail -5 "${LOG[$id]}" >&2; exit 1
      else
        left+=("$id")
      fi
    done
    waiting=("${left[@]}")
    if [ "${#waiting[@]}" -gt 0 ]; then
      if past_deadline "$until"; then echo "nodes ${waiting[*]} not ready within ${DEADLINE_S}s" >&2; exit 1; fi
      sleep 0.01
    fi
  done
}

# Polls /metrics of the given nodes (every ~20 ms) until each applied index $1; sets
# CAUGHT[id] to the time each one got there.
declare -A CAUGHT=()
wait_applied() {
  local target=$1 until id applied left
  shift
  local waiting=("$@")
  until=$(deadline "$DEADLINE_S")
  while [ "${#waiting[@]}" -gt 0 ]; do
    left=()
    for id in "${waiting[@]}"; do
      applied=$(metric "$id" raftkv_applied_index)
      if [ -n "$applied" ] && [ "$applied" -ge "$target" ]; then CAUGHT[$id]=$(now); else left+=("$id"); fi
    done
    waiting=("${left[@]}")
    if [ "${#waiting[@]}" -gt 0 ]; then
      if past_deadline "$until"; then echo "nodes ${waiting[*]} did not apply $target within ${DEADLINE_S}s" >&2; exit 1; fi
      sleep 0.02
    fi
  done
}

# The id of the node that says it leads (waits for one).
leader() {
  local until id
  until=$(deadline "$DEADLINE_S")
  while true; do
    for id in "${!PID[@]}"; do
      if [ "$(metric "$id" raftkv_is_leader)" = 1 ]; then echo "$id"; return; fi
    done
    if past_deadline "$until"; then echo "no leader within ${DEADLINE_S}s" >&2; exit 1; fi
    sleep 0.05
  done
}

# The start → "recovered storage" time of a node from its JSON log (empty if absent).
recovered_ms() {
  python3 - "$1" "$2" <<'PY'
import datetime, json, sys
start, log = float(sys.argv[1]), sys.argv[2]
for line in open(log, errors="replace"):
    try:
        rec = json.loads(line)
    except ValueError:
        continue
    if rec.get("fields", {}).get("message") == "recovered storage":
        ts = datetime.datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
        f = rec["fields"]
        print(round((ts - start) * 1000, 1), f.get("snapshot_index", 0), f.get("entries", 0))
        break
PY
}

status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
record_rss() { # phase node
  local pid=${PID[$2]}
  figure "rss.$1.$2.vmrss_kb" "$(status_kb "$pid" VmRSS)"
  figure "rss.$1.$2.vmhwm_kb" "$(status_kb "$pid" VmHWM)"
}

# Records node $3's restart figures (READY, CAUGHT, its log) under "$1.$2".
record_restart() {
  local phase=$1 n=$2 id=$3 rec rec_ms snap_index tail_entries
  figure "$phase.$n.node" "$id"
  figure "$phase.$n.ready_ms" "$(elapsed_ms "${START[$id]}" "${READY[$id]}")"
  figure "$phase.$n.caught_up_ms" "$(elapsed_ms "${START[$id]}" "${CAUGHT[$id]}")"
  rec=$(recovered_ms "${START[$id]}" "${LOG[$id]}")
  if [ -n "$rec" ]; then
    read -r rec_ms snap_index tail_entries <<<"$rec"
    figure "$phase.$n.recovered_log_ms" "$rec_ms"
    figure "$phase.$n.snapshot_index" "$snap_index"
    figure "$phase.$n.tail_entries" "$tail_entries"
  fi
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo); $(uname -srm)"
  echo "data on: $(df -P "$DATA_ROOT" | awk 'NR==2 {print $1" ("$6")"}')"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "command: LABEL=$LABEL KEYS=$KEYS VALUE_SIZE=$VALUE_SIZE CLIENTS=$CLIENTS FOLLOWER_RESTARTS=$FOLLOWER_RESTARTS${SERVER_ENV:+ SERVER_ENV=\"$SERVER_ENV\"} bench/memory.sh"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)'); binaries: $SERVER"
} >"$WORK/machine.txt"

# ---- load ---------------------------------------------------------------------------------
for i in "${NODES[@]}"; do start_node "$i" "$WORK/node$i.start.log"; done
wait_ready "${NODES[@]}"
echo "loading $KEYS keys × $VALUE_SIZE B with $CLIENTS clients" >&2
"$CLI" --endpoints "$ENDPOINTS" --json bench --fill --keys "$KEYS" --key-size "$KEY_SIZE" \
  --value-size "$VALUE_SIZE" --clients "$CLIENTS" --op-timeout 30s >"$WORK/fill.json"
python3 - "$WORK/fill.json" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1]))
print(f'filled {r["writes"]["ops"]} keys in {r["workload"]["duration_s"]:.1f} s '
      f'({r["writes"]["throughput"]:.0f} writes/s), {r["errors"]} errors')
if r["errors"]:
    sys.exit("the fill had errors: " + "; ".join(r["error_samples"]))
PY
LEADER=$(leader)
COMMIT=$(metric "$LEADER" raftkv_commit_index)
wait_applied "$COMMIT" "${NODES[@]}"
# Let the last snapshot of each node finish (its index stops moving for 3 s).
for i in "${NODES[@]}"; do
  last=""; same=0; until=$(deadline "$DEADLINE_S")
  while [ "$same" -lt 15 ]; do
    s=$(metric "$i" raftkv_snapshot_index)
    if [ "$s" = "$last" ]; then same=$((same + 1)); else same=0; last=$s; fi
    if past_deadline "$until"; then echo "node $i kept snapshotting" >&2; exit 1; fi
    sleep 0.2
  done
done
figure fill.commit_index "$COMMIT"
figure fill.leader "$LEADER"
for i in "${NODES[@]}"; do
  record_rss after_load "$i"
  snap=$(find "$DATA_ROOT/node$i/snap" -name '*.snap' -printf '%f %s\n' | sort | tail -1 | cut -d' ' -f2)
  figure "disk.$i.snapshot_bytes" "${snap:-0}"
  figure "disk.$i.wal_bytes" "$(du -sb "$DATA_ROOT/node$i/wal" | cut -f1)"
done

# ---- follower restarts ----------------------------------------------------------------------
for n in $(seq 1 "$FOLLOWER_RESTARTS"); do
  LEADER=$(leader)
  follower=""
  for i in "${NODES[@]}"; do [ "$i" != "$LEADER" ] && follower=$i && break; done
  sig=KILL
  if [ $((n % 2)) = 0 ]; then sig=TERM; fi
  echo "restart $n: node $follower (SIG$sig)" >&2
  stop_node "$follower" "$sig"
  figure "follower.$n.signal" "$sig"
  commit=$(metric "$LEADER" raftkv_commit_index)
  start_node "$follower" "$WORK/node$follower.follower.$n.log"
  wait_ready "$follower"
  wait_applied "$commit" "$follower"
  record_restart follower "$n" "$follower"
done

# ---- whole-cluster restart ---------------------------------------------------------------------
COMMIT=$(metric "$(leader)" raftkv_commit_index)
echo "restarting the whole cluster" >&2
for i in "${NODES[@]}"; do kill -s TERM "${PID[$i]}"; done
for i in "${NODES[@]}"; do wait "${PID[$i]}" 2>/dev/null || true; unset 'PID[$i]'; done
for i in "${NODES[@]}"; do start_node "$i" "$WORK/node$i.cluster.log"; done
wait_ready "${NODES[@]}"
wait_applied "$COMMIT" "${NODES[@]}"
for i in "${NODES[@]}"; do record_restart cluster "$i" "$i"; done
for i in "${NODES[@]}"; do record_rss after_restart "$i"; done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/machine.txt"

# ---- report -------------------------------------------------------------------------------------
cp "$WORK/fill.json" "$RESULTS/$LABEL-fill.json"
cp "$WORK/machine.txt" "$RESULTS/$LABEL-machine.txt"
python3 - "$FIGURES" "$WORK/machine.txt" "$RESULTS/$LABEL.json" "$KEYS" "$KEY_SIZE" "$VALUE_SIZE" \
  "$WORK/fill.json" <<'PY' | tee "$RESULTS/$LABEL.md"
import json, statistics, sys
figs_path, machine_path, out_path = sys.argv[1:4]
keys, key_size, value_size = map(int, sys.argv[4:7])
fill = json.load(open(sys.argv[7]))
figs = {}
for line in open(figs_path):
    name, value = line.split(maxsplit=1)
    value = value.strip()
    try:
        figs[name] = float(value) if "." in value else int(value)
    except ValueError:
        figs[name] = value
raw = keys * (key_size + value_size)
nodes = sorted({k.split(".")[2] for k in figs if k.startswith("rss.")})
def node_row(phase, n):
    rss, hwm = figs[f"rss.{phase}.{n}.vmrss_kb"] * 1024, figs[f"rss.{phase}.{n}.vmhwm_kb"] * 1024
    return {"vmrss_bytes": rss, "vmhwm_bytes": hwm, "rss_ratio": rss / raw, "hwm_ratio": hwm / raw}
def samples(phase):
    out, n = [], 1
    keys_of = sorted({int(k.split(".")[1]) for k in figs if k.startswith(phase + ".")})
    for n in keys_of:
        p = f"{phase}.{n}."
        out.append({k[len(p):]: v for k, v in figs.items() if k.startswith(p)})
    return out
def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
follower, cluster = samples("follower"), samples("cluster")
result = {
    "machine": open(machine_path).read().strip().splitlines(),
    "keys": keys, "key_size": key_size, "value_size": value_size, "raw_bytes": raw,
    "fill": {"seconds": fill["workload"]["duration_s"], "writes": fill["writes"]["ops"],
             "writes_per_s": fill["writes"]["throughput"], "errors": fill["errors"]},
    "after_load": {n: node_row("after_load", n) for n in nodes},
    "after_cluster_restart": {n: node_row("after_restart", n) for n in nodes},
    "disk": {n: {"snapshot_bytes": figs[f"disk.{n}.snapshot_bytes"], "wal_bytes": figs[f"disk.{n}.wal_bytes"]}
             for n in nodes},
    "follower_restarts": follower,
    "cluster_restart": cluster,
    "median_ms": {
        "follower_ready": median([s.get("ready_ms") for s in follower]),
        "follower_recovered_log": median([s.get("recovered_log_ms") for s in follower]),
        "follower_caught_up": median([s.get("caught_up_ms") for s in follower]),
        "cluster_ready": median([s.get("ready_ms") for s in cluster]),
    },
}
json.dump(result, open(out_path, "w"), indent=2)
mb = lambda b: f"{b / 1e6:.1f} MB"
ms = lambda x: "-" if x is None else f"{x:.0f}"
print("  \n".join(result["machine"]))
print(f"\nraw data: {keys:,} keys × ({key_size} + {value_size}) B = {mb(raw)}; "
      f"fill: {fill['writes']['ops']:,} writes in {fill['workload']['duration_s']:.1f} s "
      f"({fill['writes']['throughput']:,.0f}/s), {fill['errors']} errors\n")
print("| node | VmRSS after load | ratio | VmHWM | ratio | snapshot file | WAL | VmRSS after cluster restart | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in nodes:
    a, r, d = result["after_load"][n], result["after_cluster_restart"][n], result["disk"][n]
    print(f"| {n} | {mb(a['vmrss_bytes'])} | {a['rss_ratio']:.2f} | {mb(a['vmhwm_bytes'])} | {a['hwm_ratio']:.2f} "
          f"| {mb(d['snapshot_bytes'])} | {mb(d['wal_bytes'])} | {mb(r['vmrss_bytes'])} | {r['rss_ratio']:.2f} |")
print("\n| restart | node | signal | snapshot index + tail | start → recovered (log) ms | start → /readyz ms | start → caught up ms |")
print("|---|---:|---|---|---:|---:|---:|")
for i, s in enumerate(follower, 1):
    print(f"| follower #{i} | {s['node']} | SIG{s.get('signal', '?')} | {s.get('snapshot_index', '?')} + {s.get('tail_entries', '?')} "
          f"| {ms(s.get('recovered_log_ms'))} | {ms(s.get('ready_ms'))} | {ms(s.get('caught_up_ms'))} |")
for s in cluster:
    print(f"| whole cluster | {s['node']} | SIGTERM | {s.get('snapshot_index', '?')} + {s.get('tail_entries', '?')} "
          f"| {ms(s.get('recovered_log_ms'))} | {ms(s.get('ready_ms'))} | {ms(s.get('caught_up_ms'))} |")
m = result["median_ms"]
print(f"\nmedian follower restart: start → recovered {ms(m['follower_recovered_log'])} ms, → ready "
      f"{ms(m['follower_ready'])} ms, → caught up {ms(m['follower_caught_up'])} ms; "
      f"whole-cluster restart: median start → ready {ms(m['cluster_ready'])} ms")
PY
echo "results: $RESULTS/$LABEL.{json,md}" >&2

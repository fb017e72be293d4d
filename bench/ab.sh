#!/usr/bin/env bash
# Before/after of one server change: the same raftkv workload against two builds, run
# alternately (A, B, A, B, ...) so that a machine whose load drifts treats both alike.
#
#   bench/ab.sh BIN_DIR_A BIN_DIR_B [ROUNDS]     # each dir holds raftkv and raftkv-server
#
# Environment: CLIENTS (64), READS (0), VALUE (100), DURATION (5s), WARMUP (1s);
# A_ARGS, B_ARGS: more `raftkv bench` arguments for one side, e.g. the same build twice
# with B_ARGS=--via-follower compares requests sent to the leader with requests sent
# to a follower that forwards them.
# Prints one line per run and the median writes/s and p99 of each build.
set -euo pipefail
A=${1:?usage: bench/ab.sh BIN_DIR_A BIN_DIR_B [ROUNDS]}; B=${2:?BIN_DIR_B}; ROUNDS=${3:-3}
CLIENTS=${CLIENTS:-64}; READS=${READS:-0}; VALUE=${VALUE:-100}; DURATION=${DURATION:-5s}; WARMUP=${WARMUP:-1s}
DATA=$(mktemp -d /var/tmp/raftkv-ab.XXXXXX)
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; PIDS=(); }
trap 'stop_all; rm -rf "$DATA"' EXIT
trap 'exit 130' INT TERM # the EXIT trap cleans up; without exit bash would go on
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

one_run() { # bin_dir label extra_bench_args
  local bin=$1 label=$2 extra=$3 ports=() peers="" eps
  for i in 1 2 3; do ports+=("$(free_port)"); done
  for i in 0 1 2; do peers+="${peers:+,}$((i+1))=127.0.0.1:${ports[$i]}"; done
  rm -rf "${DATA:?}/$label"
  for i in 0 1 2; do
    mkdir -p "$DATA/$label/$((i+1))"
    "$bin/raftkv-server" --id $((i+1)) --listen "127.0.0.1:${ports[$i]}" --peers "$peers" \
      --data-dir "$DATA/$label/$((i+1))" --fsync always >"$DATA/$label-$((i+1)).log" 2>&1 &
    PIDS+=($!)
  done
  eps=$(printf '127.0.0.1:%s,' "${ports[@]}"); eps=${eps%,}
  # The bench waits for a leader itself (bounded by its own timeouts).
  # shellcheck disable=SC2086 # $extra is a list of arguments
  "$bin/raftkv" --endpoints "$eps" bench --json --clients "$CLIENTS" --reads "$READS" \
    --value-size "$VALUE" --warmup "$WARMUP" --duration "$DURATION" $extra >"$DATA/$label.json"
  # CPU time of the three servers over the whole run (utime + stime, in clock ticks):
  # unlike throughput, barely moved by other load on the machine.
  local ticks=0
  for p in "${PIDS[@]}"; do ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  stop_all
  python3 - "$DATA/$label.json" "$label" "$ticks" "$(getconf CLK_TCK)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t, ticks, hz = r["total"], int(sys.argv[3]), int(sys.argv[4])
l = t["latency_ms"]
# CPU covers start-up and warmup too, ops only the window: compare builds, not absolutes.
cpu_us = ticks / hz * 1e6 / max(t["ops"], 1)
print(f"{sys.argv[2]}\t{t['throughput']:.0f}\tp50={l['p50']}\tp99={l['p99']}\tserver_cpu_us_per_op={cpu_us:.0f}\terrors={t['errors']}")
PY
}

echo "# $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $CLIENTS clients, reads $READS, ${VALUE} B, $DURATION; A: $A ${A_ARGS:-}; B: $B ${B_ARGS:-}"
for r in $(seq 1 "$ROUNDS"); do
  # Not in a pipeline: a pipeline's subshell would keep the server pids from stop_all.
  one_run "$A" "A$r" "${A_ARGS:-}" >>"$DATA/results.tsv"; tail -n 1 "$DATA/results.tsv"
  one_run "$B" "B$r" "${B_ARGS:-}" >>"$DATA/results.tsv"; tail -n 1 "$DATA/results.tsv"
done
python3 - "$DATA/results.tsv" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1])]
for side in "AB":
    mine = [r for r in rows if r[0].startswith(side)]
    ops = [float(r[1]) for r in mine]
    cpu = [float(r[4].split("=")[1]) for r in mine]
    print(f"{side}: median {statistics.median(ops):.0f} ops/s (min {min(ops):.0f}, max {max(ops):.0f}), "
          f"median server CPU {statistics.median(cpu):.0f} us/op, over {len(ops)} runs")
PY
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"

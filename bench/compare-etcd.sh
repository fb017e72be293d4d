#!/usr/bin/env bash
# Benchmarks raftkv and etcd side by side on this machine, with the same durability
# (3 members, fsync on every commit) and the same workload, and prints a markdown
# table with raftkv/etcd ratios. Raw JSON goes to bench/results/<date>/.
#
#   bench/compare-etcd.sh            # 1/16/64/256 clients; write, read, 50/50; 100 B and 1 KiB values
#   bench/compare-etcd.sh --quick    # a subset that finishes in about a minute
#
# Environment: DURATION (default 10s; --quick 3s), WARMUP (default 2s; --quick 1s),
# RESULTS (the output directory), DATA_ROOT (where both stores keep their data; one
# filesystem for both; default a fresh directory under /var/tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [ "$QUICK" = 1 ]; then
  DURATION=${DURATION:-3s}; WARMUP=${WARMUP:-1s}
  CLIENTS=(1 64); VALUES=(100); WORKLOADS=(write read mixed)
else
  DURATION=${DURATION:-10s}; WARMUP=${WARMUP:-2s}
  CLIENTS=(1 16 64 256); VALUES=(100 1024); WORKLOADS=(write read mixed)
fi
STAMP=$(date -u +%Y-%m-%d)
SUFFIX=""
if [ "$QUICK" = 1 ]; then SUFFIX=-quick; fi
if [ -z "${RESULTS:-}" ]; then
  # Never overwrite an earlier run of the same day (a README may quote its JSON).
  RESULTS=$ROOT/bench/results/$STAMP$SUFFIX; n=2
  while [ -e "$RESULTS" ]; do RESULTS=$ROOT/bench/results/$STAMP$SUFFIX-$n; n=$((n + 1)); done
fi
mkdir -p "$RESULTS"

# ---- tools ------------------------------------------------------------------------------
if ! command -v etcd >/dev/null; then
  echo "installing etcd-server (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq etcd-server
  else sudo apt-get update -qq && sudo apt-get install -y -qq etcd-server; fi
fi
command -v protoc >/dev/null || {
  echo "installing protobuf-compiler (apt; etcd-client needs protoc)" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq protobuf-compiler; else sudo apt-get install -y -qq protobuf-compiler; fi
}
echo "building (release)" >&2
cargo build --release -q -p raftkv-server -p raftkv -p raftkv-bench-etcd
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
BIN=$TARGET_DIR/release
BENCH=$BIN/raftkv-bench

# ---- clusters ---------------------------------------------------------------------------
DATA_ROOT=${DATA_ROOT:-$(mktemp -d /var/tmp/raftkv-vs-etcd.XXXXXX)}
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DATA_ROOT"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# etcd 3.4: 3 members on loopback; fsync is always on (3.4 has no --unsafe-no-fsync).
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
    --logger zap --log-level error >"$DATA_ROOT/etcd-$name.log" 2>&1 &
  PIDS+=($!)
done
ETCD_EPS=$(printf '127.0.0.1:%s,' "${ETCD_CLIENT[@]}"); ETCD_EPS=${ETCD_EPS%,}

# raftkv: 3 server processes on loopback, defaults (fsync on every commit).
RK_PORTS=(); for i in 1 2 3; do RK_PORTS+=("$(free_port)"); done
PEERS=""; for i in 0 1 2; do PEERS+="${PEERS:+,}$((i+1))=127.0.0.1:${RK_PORTS[$i]}"; done
for i in 0 1 2; do
  id=$((i+1)); dir=$DATA_ROOT/raftkv/$id; mkdir -p "$dir"
  "$BIN/raftkv-server" --id "$id" --listen "127.0.0.1:${RK_PORTS[$i]}" --peers "$PEERS" --data-dir "$dir" --fsync always \
    >"$DATA_ROOT/raftkv-$id.log" 2>&1 &
  PIDS+=($!)
done
RK_EPS=$(printf '127.0.0.1:%s,' "${RK_PORTS[@]}"); RK_EPS=${RK_EPS%,}

# ---- runs -------------------------------------------------------------------------------
reads_of() { case "$1" in write) echo 0 ;; read) echo 1 ;; mixed) echo 0.5 ;; esac; }
run() { # target workload clients value
  local target=$1 w=$2 c=$3 v=$4 eps
  [ "$target" = raftkv ] && eps=$RK_EPS || eps=$ETCD_EPS
  local out=$RESULTS/$target-$w-c$c-v$v.json
  if ! "$BENCH" --target "$target" --endpoints "$eps" --json --clients "$c" --reads "$(reads_of "$w")" \
      --keys 1000 --key-size 16 --value-size "$v" --warmup "$WARMUP" --duration "$DURATION" >"$out" 2>"$out.err"; then
    echo "$target $w c=$c v=$v failed: $(cat "$out.err")" >&2
    rm -f "$out"
  fi
  [ -s "$out.err" ] || rm -f "$out.err"
}

{
  echo "# raftkv vs etcd, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "# $(nproc) cores; $(uname -srm); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# data on: $(df -P "$DATA_ROOT" | awk 'NR==2{print $1" ("$6")"}'); etcd $(etcd --version | head -1 | awk '{print $3}')"
  echo "# command: bench/compare-etcd.sh $*; duration $DURATION, warmup $WARMUP"
} >"$RESULTS/machine.txt"

for v in "${VALUES[@]}"; do
  for w in "${WORKLOADS[@]}"; do
    for c in "${CLIENTS[@]}"; do
      echo "run: $w, $c clients, $v B values" >&2
      run raftkv "$w" "$c" "$v"
      run etcd "$w" "$c" "$v"
    done
  done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/machine.txt"

# ---- table ------------------------------------------------------------------------------
python3 - "$RESULTS" <<'PY' | tee "$RESULTS/table.md"
import json, os, sys
d = sys.argv[1]
def load(name):
    p = os.path.join(d, name)
    return json.load(open(p)) if os.path.exists(p) else None
keys = sorted({tuple(f[len(t)+1:-5].split("-")) for f in os.listdir(d) for t in ("raftkv", "etcd")
               if f.startswith(t + "-") and f.endswith(".json")},
              key=lambda k: (int(k[2][1:]), ["write", "read", "mixed"].index(k[0]), int(k[1][1:])))
print(open(os.path.join(d, "machine.txt")).read().replace("# ", "").replace("\n", "  \n"))
print("| workload | value | clients | raftkv ops/s | etcd ops/s | ratio | raftkv p50 / p99 ms | etcd p50 / p99 ms | p99 ratio | errors r/e |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for w, c, v in keys:
    r, e = load(f"raftkv-{w}-{c}-{v}.json"), load(f"etcd-{w}-{c}-{v}.json")
    def f(x, k): return x["total"][k] if x else None
    rt, et = f(r, "throughput"), f(e, "throughput")
    ratio = f"{rt/et:.2f}x" if rt and et else "-"
    lat = lambda x: f'{x["total"]["latency_ms"]["p50"]:.2f} / {x["total"]["latency_ms"]["p99"]:.2f}' if x else "-"
    p99r = f'{r["total"]["latency_ms"]["p99"]/e["total"]["latency_ms"]["p99"]:.2f}' if r and e and e["total"]["latency_ms"]["p99"] else "-"
    name = {"write": "write-only", "read": "linearizable read", "mixed": "50/50"}[w]
    errs = f'{r["errors"] if r else "-"} / {e["errors"] if e else "-"}'
    print(f"| {name} | {v[1:]} B | {c[1:]} | {rt or 0:,.0f} | {et or 0:,.0f} | {ratio} | {lat(r)} | {lat(e)} | {p99r} | {errs} |")
PY
echo "raw JSON: $RESULTS" >&2

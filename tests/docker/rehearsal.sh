#!/usr/bin/env bash
# Container rehearsal of the StatefulSet in k8s/ and of the seed's fault test, on a
# plain Docker Engine (no registry to pull from, no Kubernetes):
#
#   1. builds static binaries (-C target-feature=+crt-static, gnu target) into
#      target/static and makes two images from them with `docker import` (a rootfs
#      tar: no Dockerfile, no shell, uid 65532);
#   2. starts raft-0..2 as the StatefulSet would: network aliases (and hostnames)
#      raft-<i>.raft-service on a user-defined network, a named volume per replica,
#      and the container's args, env and securityContext read from
#      k8s/statefulset.yaml by podspec.py (downward API and $(VAR) emulated); raft-0
#      starts alone first and must be ready without a leader. Each pod is "on" a node
#      of the kind cluster of k8s/kind/cluster.yaml, laid out as the scheduler could
#      (tests/offline/scheduling.py place: the StatefulSet's spread and the nodes'
#      taints; a Pending pod fails the rehearsal); client containers go round robin to
#      the nodes a Pod may run on that are not cordoned;
#   3. runs the client container from k8s/validate-pod.yaml: validate; kill the
#      leader's container and recreate it on the same volume, validate; cordon, then
#      stop, the new leader's node (every container on it leaves the network; a client
#      Pod bound to a stopped node that was not cordoned would run cut off, as on
#      kind), validate with the majority; start the node again, uncordon it and require
#      its replica to catch up; scale 3 -> 5 -> 3 under a write load
#      (raft-3 and raft-4 started from the manifest join through raft-0..2 and are
#      promoted by the leader; then `raftkv member remove` of the two highest ids, which
#      exit 0, and their containers and volumes are deleted, as a scale-down does);
#      SIGTERM the leader and require a clean hand-off. Every validate after the first
#      also re-reads, linearizably, every key acknowledged by the earlier runs
#      (--expect-data): zero lost writes.
#
# The leader is always found from `raftkv status --json`, never from logs. Every wait
# is a deadline-bounded poll. Everything it creates (containers, network, volumes,
# images, temp dir) is removed on exit, failure or interrupt.
#
# It runs that scenario twice, back to back, with the same names (containers, network,
# volumes, images: one prefix per invocation): the second pass fails if the first left
# anything behind that a re-run trips over (kind.sh's analog: a namespace still
# Terminating). The binaries are built once for both.
#
# Where no Docker Engine answers: under CI=true it FAILS; elsewhere it prints SKIPPED
# with the reason in its summary line and exits 0.
#
# Env: RAFTKV_STATIC_BIN_DIR=DIR uses prebuilt static raftkv-server and raftkv from
# DIR instead of building; REHEARSAL_PASSES=N runs N passes (default 2);
# REHEARSAL_KEEP=1 leaves everything in place for debugging (one pass). REHEARSAL_PASS
# and REHEARSAL_NAME are set by the script for its own passes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
pass_no="${REHEARSAL_PASS:-}"
prefix="${REHEARSAL_NAME:-raftkv-rehearsal-$(date +%s)-$$}"
label="raftkv.rehearsal=$prefix"
net="$prefix"
service="raft-service"
replicas=3
# Pods raft-<replicas>.. exist only while the cluster is scaled up.
max_pods=5
server_image="raftkv-server:$prefix"
client_image="raftkv-client:$prefix"
tmp="$(mktemp -d -t raftkv-rehearsal.XXXXXX)"
started_at=$(date +%s)
passed=0
failed=0

log() { printf '[rehearsal%s %3ss] %s\n' "${pass_no:+ pass $pass_no}" "$(($(date +%s) - started_at))" "$*"; }

summary() {
  local skipped="${1:-0}"
  echo
  echo "docker rehearsal${pass_no:+ (pass $pass_no)}: $passed passed, $failed failed, $skipped skipped"
  if [ -n "${REHEARSAL_COUNT_FILE:-}" ]; then echo "$passed" > "$REHEARSAL_COUNT_FILE"; fi
}

# ---- Docker Engine present? ----
if ! command -v docker >/dev/null 2>&1; then
  reason="the docker command is not installed"
elif ! docker_err="$(timeout 20 docker info --format '{{.ServerVersion}}' 2>&1)"; then
  reason="no Docker Engine answers ($(echo "$docker_err" | tail -1))"
else
  reason=""
fi
if [ -n "$reason" ]; then
  rm -rf "$tmp"
  if [ "${CI:-}" = true ]; then
    echo "FAILURE: docker rehearsal cannot run under CI: $reason" >&2
    failed=1
    summary
    exit 1
  fi
  echo "SKIPPED: docker rehearsal: $reason"
  summary 1
  exit 0
fi

# ---- the passes ----
# Without REHEARSAL_PASS this invocation builds the binaries (once) and runs the
# scenario as its own passes, back to back, under one name.
if [ -z "$pass_no" ]; then
  trap 'rm -rf "$tmp"' EXIT
  if [ -n "${RAFTKV_STATIC_BIN_DIR:-}" ]; then
    bin_dir="$RAFTKV_STATIC_BIN_DIR"
  else
    log "building static binaries (target/static; incremental after the first time)"
    (cd "$root" && RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked \
      --target x86_64-unknown-linux-gnu --target-dir target/static -p raftkv-server -p raftkv) \
      > "$tmp/build.log" 2>&1 || { tail -30 "$tmp/build.log" >&2; echo "FAILURE: the static build failed" >&2; failed=1; summary; exit 1; }
    bin_dir="$root/target/static/x86_64-unknown-linux-gnu/release"
  fi
  passes="${REHEARSAL_PASSES:-2}"
  case "$passes" in '' | *[!0-9]* | 0) echo "REHEARSAL_PASSES must be a number >= 1, not '$passes'" >&2; exit 2 ;; esac
  [ "${REHEARSAL_KEEP:-0}" != 1 ] || passes=1
  # The re-run's check catches leftovers: a pass started over a volume an earlier pass
  # left must refuse to run (and touch nothing).
  probe="$prefix-probe"
  docker volume create --label "raftkv.rehearsal=$probe" "$probe-data-raft-0" >/dev/null
  if REHEARSAL_PASS=probe REHEARSAL_NAME="$probe" RAFTKV_STATIC_BIN_DIR="$bin_dir" "$here/rehearsal.sh" \
    > "$tmp/probe.out" 2>&1 || ! grep -q "left resources named $probe behind" "$tmp/probe.out"; then
    docker volume rm -f "$probe-data-raft-0" >/dev/null 2>&1 || true
    echo "FAILURE: a pass started over an earlier pass's leftover volume did not refuse to run:" >&2
    cat "$tmp/probe.out" >&2
    failed=1
    summary
    exit 1
  fi
  docker volume rm -f "$probe-data-raft-0" >/dev/null
  passed=$((passed + 1))
  log "PASS: negative check: a pass refuses to start over an earlier pass's leftovers"
  for p in $(seq 1 "$passes"); do
    log "pass $p of $passes (names $prefix-*)"
    if ! REHEARSAL_PASS="$p" REHEARSAL_NAME="$prefix" RAFTKV_STATIC_BIN_DIR="$bin_dir" \
      REHEARSAL_COUNT_FILE="$tmp/passed" "$here/rehearsal.sh"; then
      passed=$((passed + $(cat "$tmp/passed" 2>/dev/null || echo 0)))
      failed=1
      echo "FAILURE: docker rehearsal pass $p of $passes failed" >&2
      summary
      exit 1
    fi
    passed=$((passed + $(cat "$tmp/passed")))
  done
  log "$passes passes back to back under one name: all checks passed in $(($(date +%s) - started_at))s"
  summary
  exit 0
fi

# ---- this pass: nothing of an earlier pass may be left ----
left="$(docker ps -aq --filter "label=$label"; docker volume ls -q --filter "label=$label"; docker network ls -q --filter "name=^$net\$")"
if [ -n "$left" ]; then
  rm -rf "$tmp"
  echo "FAILURE: an earlier pass left resources named $prefix behind: $(echo "$left" | tr '\n' ' ')" >&2
  failed=1
  summary
  exit 1
fi

# ---- cleanup ----
cleanup() {
  local rc=$?
  if [ "${REHEARSAL_KEEP:-0}" = 1 ]; then
    log "REHEARSAL_KEEP=1: leaving containers (label $label), network $net and $tmp"
    return
  fi
  local ids
  ids="$(docker ps -aq --filter "label=$label" 2>/dev/null || true)"
  # shellcheck disable=SC2086 # one id per word
  if [ -n "$ids" ]; then docker rm -f $ids >/dev/null 2>&1 || true; fi
  docker network rm "$net" >/dev/null 2>&1 || true
  ids="$(docker volume ls -q --filter "label=$label" 2>/dev/null || true)"
  # shellcheck disable=SC2086 # one name per word
  if [ -n "$ids" ]; then docker volume rm -f $ids >/dev/null 2>&1 || true; fi
  docker image rm -f "$server_image" "$client_image" >/dev/null 2>&1 || true
  rm -rf "$tmp"
  # Report anything left over, so a leak cannot pass unnoticed.
  local left
  left="$(docker ps -aq --filter "label=$label"; docker volume ls -q --filter "label=$label"; docker network ls -q --filter "name=^$net\$")"
  if [ -n "$left" ]; then
    echo "rehearsal: cleanup left resources behind: $left" >&2
    rc=1
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  failed=$((failed + 1))
  echo "FAILURE: $*" >&2
  dump_logs
  summary
  exit 1
}

pass() {
  passed=$((passed + 1))
  log "PASS: $*"
}

dump_logs() {
  local i
  for i in $(seq 0 $((max_pods - 1))); do
    if docker inspect "$(pod_container "$i")" >/dev/null 2>&1; then
      echo "---- last log lines of $(pod_host "$i") ----" >&2
      docker logs --tail 25 "$(pod_container "$i")" 2>&1 | cut -c1-400 >&2 || true
    fi
  done
}

# The pod's DNS name (network alias and hostname), and its container's name.
pod_host() { echo "raft-$1.$service"; }
pod_container() { echo "$prefix-raft-$1"; }

# ---- 1. static binaries and images ----
bin_dir="${RAFTKV_STATIC_BIN_DIR:?the passes get their binaries from the invocation that runs them}"
for b in raftkv-server raftkv; do
  [ -x "$bin_dir/$b" ] || fail "no executable $bin_dir/$b"
  if readelf -l "$bin_dir/$b" 2>/dev/null | grep -q 'program interpreter'; then
    fail "$bin_dir/$b is dynamically linked (it has an ELF interpreter); a FROM-scratch image cannot run it"
  fi
done
pass "static binaries: no ELF interpreter ($bin_dir)"

py="$("$root/tests/offline/venv.sh")"
mkrootfs() {
  # The image's whole filesystem: the two binaries, a passwd/group naming uid 65532,
  # /tmp and /data owned by it. No shell, no package manager, nothing else.
  "$py" - "$bin_dir" "$1" <<'PY'
import io, os, sys, tarfile
bin_dir, out = sys.argv[1], sys.argv[2]
def add_dir(t, name, mode, uid=0):
    i = tarfile.TarInfo(name); i.type = tarfile.DIRTYPE; i.mode = mode; i.uid = i.gid = uid; i.mtime = 0
    t.addfile(i)
def add_file(t, name, data, mode):
    i = tarfile.TarInfo(name); i.size = len(data); i.mode = mode; i.mtime = 0
    t.addfile(i, io.BytesIO(data))
with tarfile.open(out, "w") as t:
    for d in ("bin", "etc"):
        add_dir(t, d, 0o755)
    add_dir(t, "tmp", 0o1777)
    add_dir(t, "data", 0o700, uid=65532)
    add_file(t, "etc/passwd", b"root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n", 0o644)
    add_file(t, "etc/group", b"root:x:0:\nnonroot:x:65532:\n", 0o644)
    for b in ("raftkv-server", "raftkv"):
        with open(os.path.join(bin_dir, b), "rb") as f:
            add_file(t, "bin/" + b, f.read(), 0o755)
PY
}
mkrootfs "$tmp/rootfs.tar" || fail "cannot write the rootfs tar"
# The flake's image config (tests/offline/deploychecks.py compares the two).
docker import --change 'ENTRYPOINT ["/bin/raftkv-server"]' --change 'USER 65532:65532' --change 'WORKDIR /data' \
  --change 'EXPOSE 6000 9090' --change "LABEL $label" "$tmp/rootfs.tar" "$server_image" >/dev/null \
  || fail "docker import of the server image failed"
docker import --change 'ENTRYPOINT ["/bin/raftkv"]' --change 'USER 65532:65532' --change 'WORKDIR /data' \
  --change "LABEL $label" "$tmp/rootfs.tar" "$client_image" >/dev/null \
  || fail "docker import of the client image failed"
if docker run --rm --entrypoint /bin/sh "$server_image" -c true >/dev/null 2>&1; then
  fail "the image has a shell"
fi
pass "images $server_image and $client_image from a rootfs tar (docker import, no shell)"

docker network create --label "$label" "$net" >/dev/null || fail "cannot create network $net"

# ---- the nodes: the kind cluster of k8s/kind/cluster.yaml, emulated ----
# pod_node[i]: the node raft-i runs on, as the scheduler could place it (the model
# of tests/offline/scheduling.py: the StatefulSet's spread constraint and the nodes'
# taints). Stopping a node takes every container on it off the network; a cordoned node
# gets no new client Pod.
scheduling="$root/tests/offline/scheduling.py"
layout="$("$py" "$scheduling" place "$root/k8s/kind/cluster.yaml" "$root/k8s/statefulset.yaml" "$max_pods" 2>&1)" \
  || fail "the StatefulSet cannot schedule $max_pods replicas on the kind cluster: $layout"
declare -A pod_node=() cordoned=() stopped=()
while read -r pod node; do pod_node[${pod#raft-}]="$node"; done <<< "$layout"
mapfile -t workers < <("$py" "$scheduling" nodes "$root/k8s/kind/cluster.yaml")
[ "${#workers[@]}" -gt 0 ] || fail "the kind cluster has no node an untolerating Pod may run on"
pass "pods laid out on the kind cluster's nodes as the scheduler could: $(for i in $(seq 0 $((max_pods - 1))); do printf 'raft-%s:%s ' "$i" "${pod_node[$i]}"; done)"

cordon_node() {
  cordoned[$1]=1
  log "cordon $1"
}
uncordon_node() {
  unset "cordoned[$1]"
  log "uncordon $1"
}
# stop_node NODE: every container of a pod on NODE leaves the network. The node must be
# cordoned first, as on kind: a stopped node looks Ready for ~40 s, and a Pod bound to
# it meanwhile would be cut off.
stop_node() {
  local i
  [ -n "${cordoned[$1]:-}" ] || fail "stop_node $1: the node is not cordoned; a client Pod could be bound to it"
  for i in "${!pod_node[@]}"; do
    if [ "${pod_node[$i]}" = "$1" ] && docker inspect "$(pod_container "$i")" >/dev/null 2>&1; then
      docker network disconnect "$net" "$(pod_container "$i")" || fail "docker network disconnect $(pod_container "$i")"
    fi
  done
  stopped[$1]=1
  log "stopped node $1"
}
start_node() {
  local i
  for i in "${!pod_node[@]}"; do
    if [ "${pod_node[$i]}" = "$1" ] && docker inspect "$(pod_container "$i")" >/dev/null 2>&1; then
      docker network connect --alias "$(pod_host "$i")" "$net" "$(pod_container "$i")" \
        || fail "docker network connect $(pod_container "$i")"
    fi
  done
  unset "stopped[$1]"
  log "started node $1"
}
# client_node: the node the next client Pod goes to, round robin over the nodes it may
# run on that are not cordoned (a counter file: clients also start from subshells).
client_node() {
  local n candidates=() w
  for w in "${workers[@]}"; do
    [ -n "${cordoned[$w]:-}" ] || candidates+=("$w")
  done
  [ "${#candidates[@]}" -gt 0 ] || return 1
  n=$(($(cat "$tmp/client-rr" 2>/dev/null || echo 0) + 1))
  echo "$n" > "$tmp/client-rr"
  echo "${candidates[$((n % ${#candidates[@]}))]}"
}

# ---- the StatefulSet's pods ----
admin_port_in_pod=""
readiness_probe="" liveness_probe=""
start_replica() {
  local i=$1 pod="raft-$1" line kind value
  local -a opts=() args=()
  local grace=30
  while IFS= read -r line; do
    kind="${line%% *}"
    value="${line#* }"
    case "$kind" in
      env) opts+=(--env "$value") ;;
      arg) args+=("$value") ;;
      port)
        # Each container port on an ephemeral host port, as a port-forward would give.
        opts+=(--publish "127.0.0.1::$value")
        [ "$value" != 9090 ] || admin_port_in_pod=9090
        ;;
      probe)
        # The kubelet's probes, from the manifest: "readiness|liveness PORT PATH".
        read -r probe_kind probe_port probe_path <<< "$value"
        case "$probe_kind" in
          readiness) readiness_probe="$probe_port $probe_path" ;;
          liveness) liveness_probe="$probe_port $probe_path" ;;
          *) fail "podspec.py printed an unknown probe: $value" ;;
        esac
        ;;
      claim) opts+=(--mount "type=volume,source=$prefix-data-$pod,target=$value") ;;
      tmpfs) opts+=(--tmpfs "$value:rw,mode=1777,size=16m") ;;
      user) opts+=(--user "$value") ;;
      readonly) opts+=(--read-only) ;;
      nonewprivs) opts+=(--security-opt no-new-privileges) ;;
      capdrop) opts+=(--cap-drop "$value") ;;
      grace) grace="$value"; opts+=(--stop-timeout "$value") ;;
      *) fail "podspec.py printed an unknown line: $line" ;;
    esac
  done < <("$py" "$here/podspec.py" "$root/k8s/statefulset.yaml" StatefulSet raft "$pod" || echo "error podspec.py failed")
  # The data volume, created with our label so cleanup finds it (as a PVC outlives its pod).
  docker volume inspect "$prefix-data-$pod" >/dev/null 2>&1 \
    || docker volume create --label "$label" "$prefix-data-$pod" >/dev/null
  # OTEL export is turned off: no Jaeger runs here (the rest of the env is the manifest's).
  # A pod on a stopped node starts cut off, as its node is.
  local network="$net"
  [ -z "${stopped[${pod_node[$i]}]:-}" ] || network=none
  docker run -d --name "$(pod_container "$i")" --hostname "$pod" --label "$label" \
    --label "raftkv.rehearsal.node=${pod_node[$i]}" \
    --network "$network" --network-alias "$(pod_host "$i")" \
    "${opts[@]}" --env OTEL_SDK_DISABLED=true \
    "$server_image" "${args[@]}" >/dev/null || fail "cannot start $(pod_host "$i")"
  : "$grace"
}

admin_url() {
  local port
  port="$(docker port "$(pod_container "$1")" 9090/tcp 2>/dev/null | head -1)" || return 1
  [ -n "$port" ] && echo "http://$port"
}

# shellcheck source=../lib/wait.sh
source "$here/../lib/wait.sh"

# probe_url POD_INDEX "PORT PATH": the URL of a manifest probe on the host.
probe_url() {
  local port path hostport
  read -r port path <<< "$2"
  hostport="$(docker port "$(pod_container "$1")" "$port/tcp" 2>/dev/null | head -1)" || return 1
  [ -n "$hostport" ] && echo "http://$hostport$path"
}

is_ready() {
  local url
  url="$(probe_url "$1" "$readiness_probe")" || return 1
  curl -fsS --max-time 2 "$url" >/dev/null
}

# ---- the client Pod ----
mkdir -p "$tmp/client" && chmod 0777 "$tmp/client"
client_n=0
client() {
  # Runs the raftkv client with the validation Pod's env and securityContext; the host
  # dir $tmp/client is at /rehearsal for data files. Output goes to stdout. With
  # --pod-args first, the Pod's own args (validate ...) come before the rest.
  local line kind value with_pod_args=0
  if [ "${1:-}" = --pod-args ]; then
    with_pod_args=1
    shift
  fi
  local -a opts=() base=()
  while IFS= read -r line; do
    kind="${line%% *}"
    value="${line#* }"
    case "$kind" in
      env) opts+=(--env "$value") ;;
      arg) base+=("$value") ;;
      tmpfs) opts+=(--tmpfs "$value:rw,mode=1777,size=16m") ;;
      user) opts+=(--user "$value") ;;
      readonly) opts+=(--read-only) ;;
      nonewprivs) opts+=(--security-opt no-new-privileges) ;;
      capdrop) opts+=(--cap-drop "$value") ;;
      port | claim | grace | probe) ;;
      *) echo "podspec.py printed an unknown line: $line" >&2; return 2 ;;
    esac
  done < <("$py" "$here/podspec.py" "$root/k8s/validate-pod.yaml" Pod raft-validate raft-validate || echo "error podspec.py failed")
  [ "${base[0]:-}" = validate ] || { echo "the validation Pod does not run 'validate': ${base[*]}" >&2; return 2; }
  [ "$with_pod_args" = 1 ] || base=()
  client_n=$((client_n + 1))
  # Bound to a node like a Pod; on a stopped node it would be cut off.
  local node network="$net"
  node="$(client_node)" || { echo "no node can take a client Pod (all cordoned)" >&2; return 2; }
  if [ -n "${stopped[$node]:-}" ]; then
    echo "client Pod bound to the stopped node $node: it runs cut off" >&2
    network=none
  fi
  # A bounded run: --rm plus our label; the outer timeout bounds the docker client.
  timeout 120 docker run --rm --name "$prefix-client-$client_n-$BASHPID" --label "$label" \
    --label "raftkv.rehearsal.node=$node" \
    --network "$network" "${opts[@]}" --env OTEL_SDK_DISABLED=true \
    --mount "type=bind,source=$tmp/client,target=/rehearsal" \
    "$client_image" "${base[@]}" "$@"
}

# validate NAME [ARGS...]: the validation Pod's args plus ARGS; requires SUCCESS.
validate() {
  local name=$1 out
  shift
  log "validate ($name)"
  out="$(client --pod-args --quiet "$@" 2>&1)" || true
  printf '%s\n' "$out" | while IFS= read -r l; do printf '    %s\n' "$l"; done
  [ "$(echo "$out" | tail -1)" = SUCCESS ] || fail "validate ($name) did not end with SUCCESS"
}

status_json() { client status --json --timeout=2s 2>/dev/null; }

# leader_id: the id of the leader with the highest term among reachable nodes.
leader_id() {
  status_json | "$py" -c '
import json, sys
rows = [r for r in json.load(sys.stdin) if r.get("reachable") and r.get("role") == "leader"]
if not rows:
    sys.exit(1)
print(max(rows, key=lambda r: r["term"])["id"])'
}

# find_leader: polls for a leader for at most 30 s (returns 1 if none).
find_leader() {
  local deadline=$(($(date +%s) + 30)) id
  while :; do
    if id="$(leader_id)"; then
      echo "$id"
      return 0
    fi
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 1
  done
}

# ---- 2. start the cluster ----
# Readiness must not wait for a leader: raft-0 alone (1 of 3, no quorum) becomes ready.
start_replica 0
[ "$admin_port_in_pod" = 9090 ] || fail "the StatefulSet exposes no admin port 9090"
if [ -z "$readiness_probe" ] || [ -z "$liveness_probe" ]; then
  fail "the StatefulSet's container has no readiness or no liveness probe"
fi
wait_until 30 "$(pod_host 0)'s readiness probe ($readiness_probe) while it is alone" is_ready 0
url="$(admin_url 0)" || fail "no published admin port on $(pod_host 0)"
curl -fsS --max-time 2 "$url/metrics" | grep -qE '^raftkv_leader_id\{server_id="1"\} 0$' \
  || fail "$(pod_host 0) knows a leader while alone"
pass "the readiness probe ($readiness_probe) answers 200 on raft-0 alone, with no leader (raftkv_leader_id 0): readiness does not wait for a quorum"
for i in $(seq 1 $((replicas - 1))); do start_replica "$i"; done
for i in $(seq 0 $((replicas - 1))); do
  wait_until 30 "$(pod_host "$i") /readyz" is_ready "$i"
done
pass "3 replicas started from k8s/statefulset.yaml; the readiness probe answers 200 on each"

leader="$(find_leader)" || fail "no leader within 30s"
log "leader: node $leader ($(pod_host $((leader - 1))))"
url="$(admin_url $((leader - 1)))" || fail "no published admin port on the leader"
metrics="$(curl -fsS --max-time 2 "$url/metrics")" || fail "cannot scrape $url/metrics"
# Every raftkv_* series carries the server's id as the label server_id.
echo "$metrics" | grep -qx "raftkv_is_leader{server_id=\"$leader\"} 1" \
  || fail "the leader's /metrics does not say raftkv_is_leader{server_id=\"$leader\"} 1"
live="$(probe_url $((leader - 1)) "$liveness_probe")" || fail "the liveness probe's port is not published"
curl -fsS --max-time 2 "$live" >/dev/null || fail "the liveness probe $live did not answer 200"
pass "leader node $leader found via status --json; its /metrics and liveness probe agree"

# ---- one endpoint is enough ----
# As through a port-forward: the host's raftkv gets one follower's published client
# port and nothing else; the names the servers advertise (raft-N.raft-service) do not
# resolve on the host. Every command must still work: the follower forwards.
one=$((leader % replicas))
one_ep="$(docker port "$(pod_container "$one")" 6000/tcp 2>/dev/null | head -1)" \
  || fail "no published client port on $(pod_host "$one")"
host_cli() { OTEL_SDK_DISABLED=true timeout 60 "$bin_dir/raftkv" --endpoints "$one_ep" --timeout 10s "$@"; }
host_cli put rehearsal/one-endpoint through-a-follower >/dev/null \
  || fail "put through $(pod_host "$one")'s published port ($one_ep) failed"
[ "$(host_cli get rehearsal/one-endpoint)" = through-a-follower ] \
  || fail "get through $one_ep did not read the value back"
host_cli status --json | "$py" -c '
import json, sys
rows = json.load(sys.stdin)
ok = sorted(r["id"] for r in rows if r.get("reachable")) == list(range(1, int(sys.argv[1]) + 1))
ok = ok and any(r.get("role") == "leader" for r in rows) and any(r.get("via") for r in rows)
sys.exit(0 if ok else 1)' "$replicas" || fail "status through $one_ep does not show every member"
host_cli member list --json >/dev/null || fail "member list through $one_ep failed"
pass "one endpoint: put, get, status (every member, the others via it) and member list through follower $(pod_host "$one")'s published port $one_ep only"

# ---- 3. the seed's scenario ----
validate "1: healthy cluster" --write-data=/rehearsal/run1.tsv
pass "validate on the healthy cluster"

# The checker catches a lost write: a key that was never written must fail --expect-data.
printf 'rehearsal/never-written\tnope\n' > "$tmp/client/bogus.tsv"
if client --pod-args --quiet --clients=0 --expect-data=/rehearsal/bogus.tsv > "$tmp/neg.out" 2>&1; then
  fail "validate accepted --expect-data with a key that was never written"
fi
grep -q '^FAILURE' "$tmp/neg.out" || fail "validate did not report FAILURE for a missing key: $(cat "$tmp/neg.out")"
pass "negative check: --expect-data reports FAILURE for a missing key"

# Kill the leader's container (a crashed pod) and recreate it on the same volume, as
# the StatefulSet controller does.
victim=$((leader - 1))
log "killing the leader's container $(pod_host "$victim") and recreating it on its volume (node ${pod_node[$victim]})"
docker kill "$(pod_container "$victim")" >/dev/null
docker rm -f "$(pod_container "$victim")" >/dev/null
start_replica "$victim"
wait_until 30 "$(pod_host "$victim") ready again" is_ready "$victim"
validate "2: after the leader was killed and recreated" \
  --expect-data=/rehearsal/run1.tsv --write-data=/rehearsal/run2.tsv
pass "validate after killing the leader (node $leader) and recreating it on its volume"

# The current leader's node is lost: cordoned, then stopped (kind.sh's order); the
# majority goes on.
leader="$(find_leader)" || fail "no leader within 30s"
lost=$((leader - 1))
lost_node="${pod_node[$lost]}"
log "losing node $lost_node, which runs the leader $(pod_host "$lost") (node id $leader)"
cordon_node "$lost_node"
stop_node "$lost_node"
validate "3: majority only, node $leader cut off" \
  --expect-data=/rehearsal/run1.tsv --expect-data=/rehearsal/run2.tsv --write-data=/rehearsal/run3.tsv
new_leader="$(find_leader)" || fail "no leader of the majority within 30s"
[ "$new_leader" != "$leader" ] || fail "the cut-off node $leader is still the leader"
pass "validate with the majority while node $leader is cut off (new leader: node $new_leader)"

# Start the node again, uncordon it, and require its replica to catch up: same term as
# the leader and applied up to the commit index the leader had when it came back.
start_node "$lost_node"
uncordon_node "$lost_node"
target="$(status_json | "$py" -c '
import json, sys
print(max(r["commit_index"] for r in json.load(sys.stdin) if r.get("reachable") and r.get("role") == "leader"))')" \
  || fail "cannot read the leader's commit index"
caught_up() {
  status_json | "$py" -c '
import json, sys
node, target = int(sys.argv[1]), int(sys.argv[2])
rows = {r["id"]: r for r in json.load(sys.stdin) if r.get("reachable")}
leaders = [r for r in rows.values() if r["role"] == "leader"]
me = rows.get(node)
ok = me and leaders and me["role"] == "follower" and me["term"] == leaders[0]["term"] and me["applied_index"] >= target
sys.exit(0 if ok else 1)' "$leader" "$target"
}
wait_until 30 "node $leader to catch up to index $target" caught_up
pass "node $leader reconnected and caught up (applied >= $target, follower in the leader's term)"

validate "4: all nodes back" --expect-data=/rehearsal/run1.tsv --expect-data=/rehearsal/run2.tsv \
  --expect-data=/rehearsal/run3.tsv --write-data=/rehearsal/run4.tsv
keys=$(cat "$tmp"/client/run{1,2,3}.tsv | wc -l)
pass "zero lost acknowledged writes: all $keys keys of runs 1-3 read back after every fault"

# ---- 4. scale 3 -> 5 -> 3 under a write load ----
# As `kubectl scale statefulset raft --replicas=5` and back would: raft-3 and raft-4
# start from the manifest unchanged (an ordinal >= --replicas joins through raft-0..2,
# i.e. --join, asking for id ordinal + 1); the leader promotes them once caught up.
# Then the two highest ids are removed with `raftkv member remove`; a removed node
# exits 0 by itself, and its container and volume are deleted (whenScaled: Delete).
# A validate runs in the background throughout: it is the write load.
members_json() { client member list --json --timeout=5s 2>/dev/null; }

# voters_are N: the committed configuration is N voters and no learner.
voters_are() {
  members_json | "$py" -c '
import json, sys
v = json.load(sys.stdin)
roles = [m["role"] for m in v["members"]]
sys.exit(0 if v["committed"] and roles.count("voter") == len(roles) == int(sys.argv[1]) else 1)' "$1"
}

# exited_0 CONTAINER: it has stopped by itself with exit code 0.
exited_0() {
  [ "$(docker inspect -f '{{.State.Running}} {{.State.ExitCode}}' "$1" 2>/dev/null)" = "false 0" ]
}

log "write load: validate (run 5) in the background while the cluster scales 3 -> 5 -> 3"
client --pod-args --quiet --duration=45s --expect-data=/rehearsal/run4.tsv \
  --write-data=/rehearsal/run5.tsv > "$tmp/load.out" 2>&1 &
load_pid=$!
client_n=$((client_n + 1)) # the background run took the next client name
for i in $(seq "$replicas" $((max_pods - 1))); do start_replica "$i"; done
for i in $(seq "$replicas" $((max_pods - 1))); do
  wait_until 30 "$(pod_host "$i") /readyz" is_ready "$i"
done
wait_until 60 "5 voters in the committed configuration" voters_are 5
pass "scaled up: raft-3 and raft-4 joined and were promoted; 5 voters (raftkv member list --json)"

# The two highest ids, with the ordinal of the pod each one is (its address's host,
# raft-<ordinal>.raft-service).
victims="$(members_json | "$py" -c '
import json, sys
for m in sorted(json.load(sys.stdin)["members"], key=lambda m: m["id"])[-2:]:
    print(m["id"], m["addr"].split(".", 1)[0].removeprefix("raft-"))')" || fail "cannot read the member list"
while read -r id ordinal; do
  container="$(pod_container "$ordinal")"
  log "raftkv member remove $id ($(pod_host "$ordinal"))"
  client member remove "$id" --timeout=30s || fail "raftkv member remove $id failed"
  wait_until 30 "$container to exit 0 after its removal" exited_0 "$container"
  docker rm -f "$container" >/dev/null
  docker volume rm -f "$prefix-data-raft-$ordinal" >/dev/null
done <<< "$victims"
wait_until 30 "3 voters in the committed configuration" voters_are 3
# The load must span the whole scaling, or its SUCCESS says nothing about it.
kill -0 "$load_pid" 2>/dev/null \
  || fail "the write load ended before the scale-down did: it did not cover the scaling (raise its --duration)"
pass "scaled down: removed nodes $(echo "$victims" | cut -d' ' -f1 | tr '\n' ' ')(each exited 0); 3 voters"
wait "$load_pid" || true
sed 's/^/    /' "$tmp/load.out"
[ "$(tail -1 "$tmp/load.out")" = SUCCESS ] || fail "the validate under the scaling load did not end with SUCCESS"
validate "6: after 3 -> 5 -> 3" --expect-data=/rehearsal/run1.tsv --expect-data=/rehearsal/run2.tsv \
  --expect-data=/rehearsal/run3.tsv --expect-data=/rehearsal/run4.tsv --expect-data=/rehearsal/run5.tsv
keys=$(cat "$tmp"/client/run{1,2,3,4,5}.tsv | wc -l)
pass "zero lost acknowledged writes across 3 -> 5 -> 3: all $keys keys of runs 1-5 read back"

# SIGTERM the leader (a pod deletion with its grace period): it hands off and exits 0.
leader="$(find_leader)" || fail "no leader within 30s"
victim=$((leader - 1))
log "docker stop (SIGTERM) the leader $(pod_host "$victim")"
docker stop -t 30 "$(pod_container "$victim")" >/dev/null
code="$(docker inspect -f '{{.State.ExitCode}}' "$(pod_container "$victim")")"
[ "$code" = 0 ] || fail "the leader exited with $code on SIGTERM"
next="$(find_leader)" || fail "no new leader within 30s of SIGTERM"
[ "$next" != "$leader" ] || fail "no new leader after SIGTERM"
# An ordinary election after the exit would pass the checks above: require the
# hand-off itself, logged by the leader (JSON logs, as the manifest sets), naming the
# node that now leads.
handed_to="$(docker logs "$(pod_container "$victim")" 2>&1 | "$py" -c '
import json, sys
for line in sys.stdin:
    try:
        fields = json.loads(line).get("fields", {})
    except ValueError:
        continue
    if "handing leadership" in str(fields.get("message", "")):
        print(fields.get("target", ""))
        break')"
[ -n "$handed_to" ] || fail "the leader (node $leader) logged no leadership hand-off on SIGTERM"
[ "$handed_to" = "$next" ] || fail "the leader handed leadership to node $handed_to, but node $next leads"
pass "SIGTERM: the leader (node $leader) handed leadership to node $next and exited 0"

log "all checks passed in $(($(date +%s) - started_at))s"
summary

#!/usr/bin/env bash
# End-to-end fault test of raftkv on the kind cluster of k8s/kind/up (the seed's
# test.bash, done properly). Needs docker, kind, kubectl, jq and nix: run it inside
# `nix develop` after `k8s/kind/up`.
#
#   1. builds the images with Nix and loads them into the cluster
#      (k8s/kind/load-images), waits until a namespace of an earlier run is gone,
#      deploys k8s/ (Service, StatefulSet, PodDisruptionBudget) into its own namespace
#      and waits with `kubectl wait`;
#   2. runs the validation Pod (from k8s/validate-pod.yaml) and requires SUCCESS;
#   3. finds the leader from `raftkv status --json` (a client Pod), never from logs;
#   4. deletes the leader's pod with its grace period (SIGTERM: it hands leadership
#      off; a force delete could start the replacement beside the old container on the
#      same volume) and validates again once it is back;
#   5. cordons, then `docker stop`s, the kind worker node hosting the new leader, and
#      validates with the majority (cordoned first: a stopped node looks Ready for the
#      node-monitor grace period, ~40 s, and a validation Pod bound to it meanwhile
#      would stay Pending);
#   6. restarts and uncordons the node and requires the replica on it to be Ready and
#      caught up;
#   7. every validation after the first re-reads every key acknowledged by the
#      earlier ones (--expect-data): data written before each fault is still there;
#   8. scales the StatefulSet 3 -> 5 while a validation writes: raft-3 and raft-4 join
#      as learners and are promoted (5 voters in `raftkv member list --json`); then
#      removes their members with `raftkv member remove` while another validation
#      writes, scales back to 3 and requires their claims gone and a final validation
#      that re-reads every acknowledged key;
#   9. exits non-zero on any failure.
#
# Keys a validation committed reach the next one without any volume: the Pod runs
# `validate --write-data=/dev/stdout`, the script keeps the `key<TAB>value` lines of its
# log and hands them to the next Pods in a ConfigMap mounted at /expect.
#
# Every kubectl call names its context (--context kind-$KIND_CLUSTER_NAME): the
# current context of the user's kubeconfig is never used.
#
# Env: KIND_CLUSTER_NAME (raftkv), E2E_NAMESPACE (raftkv-e2e, deleted at the end
# unless E2E_KEEP=1), SKIP_BUILD=1 (use the images already loaded).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cluster="${KIND_CLUSTER_NAME:-raftkv}"
ctx="kind-$cluster"
ns="${E2E_NAMESPACE:-raftkv-e2e}"
tmp="$(mktemp -d -t raftkv-e2e.XXXXXX)"
stopped_node=""
started_at=$(date +%s)
passed=0

log() { printf '[kind-e2e %4ss] %s\n' "$(($(date +%s) - started_at))" "$*"; }
k() { kubectl --context "$ctx" --namespace "$ns" "$@"; }

cleanup() {
  local rc=$?
  if [ -n "$stopped_node" ]; then
    log "restarting and uncordoning node $stopped_node that this run stopped"
    docker start "$stopped_node" >/dev/null 2>&1 || true
    kubectl --context "$ctx" uncordon "$stopped_node" >/dev/null 2>&1 || true
  fi
  if [ "$rc" != 0 ]; then
    log "FAILURE: diagnostics follow"
    k get pods -o wide 2>/dev/null || true
    for p in raft-0 raft-1 raft-2 raft-3 raft-4; do
      echo "---- last log lines of $p ----"
      k logs "$p" --tail 20 2>/dev/null | cut -c1-300 || true
    done
  fi
  if [ "${E2E_KEEP:-0}" = 1 ]; then
    log "E2E_KEEP=1: leaving namespace $ns"
  else
    kubectl --context "$ctx" delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
  echo
  echo "kind e2e: $passed passed, $([ "$rc" = 0 ] && echo 0 || echo 1) failed"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  echo "FAILURE: $*" >&2
  exit 1
}
pass() {
  passed=$((passed + 1))
  log "PASS: $*"
}

# shellcheck source=../lib/wait.sh
source "$root/tests/lib/wait.sh"

for cmd in docker kind kubectl jq nix; do
  command -v "$cmd" >/dev/null || fail "'$cmd' not found: run this inside 'nix develop'"
done
kubectl config get-contexts "$ctx" >/dev/null 2>&1 || fail "no kube context $ctx: run k8s/kind/up first"

# ---- 1. images and deployment ----
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building and loading the images (k8s/kind/load-images)"
  KIND_CLUSTER_NAME="$cluster" "$root/k8s/kind/load-images"
fi

# A run's namespace is deleted without waiting at its end; a run started right after
# must wait until it is gone (creating objects in a Terminating namespace fails).
if [ "$(kubectl --context "$ctx" get namespace "$ns" -o jsonpath='{.status.phase}' 2>/dev/null || true)" = Terminating ]; then
  log "namespace $ns of an earlier run is still Terminating; waiting for it to go"
  kubectl --context "$ctx" wait --for=delete "namespace/$ns" --timeout=300s >/dev/null \
    || fail "namespace $ns is still Terminating after 300s"
fi
kubectl --context "$ctx" create namespace "$ns" --dry-run=client -o yaml | kubectl --context "$ctx" apply -f - >/dev/null
k delete pod,configmap -l app.kubernetes.io/part-of=raftkv-e2e --ignore-not-found >/dev/null
k apply -f "$root/k8s/service.yaml" -f "$root/k8s/statefulset.yaml" -f "$root/k8s/pdb.yaml"
k rollout status statefulset/raft --timeout=300s
k wait --for=condition=Ready pod -l app.kubernetes.io/component=server --timeout=180s
pass "StatefulSet raft deployed in namespace $ns; 3 pods Ready"

# ---- client Pods ----
k create configmap raft-expect --from-literal=none.tsv= --dry-run=client -o yaml \
  | k label --local -f - app.kubernetes.io/part-of=raftkv-e2e -o yaml | k apply -f - >/dev/null
client_n=0
# client_pod ARGS...: runs a Pod built from k8s/validate-pod.yaml with ARGS instead of
# its args and the ConfigMap raft-expect at /expect; waits for it to end; prints its
# log; returns 0 if it Succeeded.
client_pod() {
  client_n=$((client_n + 1))
  # $BASHPID: a client Pod started from a background subshell gets a name of its own.
  local name="raft-e2e-client-$client_n-$BASHPID" args phase deadline
  args="$(printf '%s\n' "$@" | jq -R . | jq -s .)"
  kubectl --context "$ctx" create --dry-run=client -o json -f "$root/k8s/validate-pod.yaml" \
    | jq --arg name "$name" --argjson args "$args" '
        .metadata.name = $name
        | .metadata.labels["app.kubernetes.io/part-of"] = "raftkv-e2e"
        | .spec.containers[0].args = $args
        | .spec.volumes += [{"name": "expect", "configMap": {"name": "raft-expect"}}]
        | .spec.containers[0].volumeMounts += [{"name": "expect", "mountPath": "/expect", "readOnly": true}]' \
    | k create -f - >/dev/null
  deadline=$(($(date +%s) + 180))
  while :; do
    phase="$(k get pod "$name" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    case "$phase" in Succeeded | Failed) break ;; esac
    [ "$(date +%s)" -lt "$deadline" ] || { echo "client pod $name did not finish in 180s" >&2; break; }
    sleep 2
  done
  k logs "$name" 2>&1 || true
  k delete pod "$name" --wait=false >/dev/null 2>&1 || true
  [ "$phase" = Succeeded ]
}

expect_files=()
# validate_start N WHAT [ARGS...]: starts, in the background, a validation Pod that
# first re-reads every earlier run's keys; its output goes to $tmp/validate<N>.out.
# validate_finish N WHAT PID: waits for it, requires SUCCESS, and makes its keys
# run<N>.tsv in the ConfigMap.
validate_start() {
  local n=$1 what=$2
  shift 2
  local -a args=(validate --timeout=10s --quiet "--write-data=/dev/stdout" "$@")
  for f in "${expect_files[@]}"; do args+=("--expect-data=/expect/$f"); done
  log "validate $n ($what)"
  client_pod "${args[@]}" > "$tmp/validate$n.out" 2>&1 &
}
validate_finish() {
  local n=$1 what=$2 pid=$3 out
  wait "$pid" || true
  out="$(cat "$tmp/validate$n.out")"
  printf '%s\n' "$out" | grep -v "$(printf '\t')" | sed 's/^/    /'
  [ "$(printf '%s\n' "$out" | tail -1)" = SUCCESS ] || fail "validate $n ($what) did not end with SUCCESS"
  printf '%s\n' "$out" | grep "$(printf '\t')" > "$tmp/run$n.tsv" || true
  [ -s "$tmp/run$n.tsv" ] || fail "validate $n printed no committed keys"
  expect_files+=("run$n.tsv")
  local -a from=()
  for f in "${expect_files[@]}"; do from+=("--from-file=$f=$tmp/$f"); done
  k create configmap raft-expect "${from[@]}" --dry-run=client -o yaml \
    | k label --local -f - app.kubernetes.io/part-of=raftkv-e2e -o yaml | k apply -f - >/dev/null
  pass "validate $n: $what ($(wc -l < "$tmp/run$n.tsv") keys committed)"
}
# validate N WHAT: a validation, waited for.
validate() {
  validate_start "$1" "$2"
  validate_finish "$1" "$2" $!
}

status_json() { client_pod status --json --timeout=3s | grep '^\['; }

# find_leader: the id of the highest-term leader that answers (polled, 90 s at most).
find_leader() {
  local deadline=$(($(date +%s) + 90)) id
  while :; do
    id="$(status_json | jq -r '[.[] | select(.reachable and .role == "leader")] | max_by(.term) | .id // empty' 2>/dev/null || true)"
    if [ -n "$id" ]; then
      echo "$id"
      return 0
    fi
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 2
  done
}

# ---- 2. validate ----
validate 1 "healthy cluster"

# ---- 3-4. the leader's pod is deleted ----
# With its grace period: the old container has exited (after its SIGTERM hand-off and
# flush) before the StatefulSet creates the replacement on the same claim.
leader="$(find_leader)" || fail "no leader within 90s"
pod="raft-$((leader - 1))"
log "leader: node $leader (pod $pod); deleting it"
k delete pod "$pod" --wait=true >/dev/null
wait_until 180 "pod $pod to be recreated and Ready" k wait --for=condition=Ready "pod/$pod" --timeout=5s
pass "pod $pod came back Ready on its PersistentVolumeClaim"
validate 2 "after deleting the leader's pod $pod"

# ---- 5. the node hosting the new leader is lost ----
leader="$(find_leader)" || fail "no leader within 90s"
pod="raft-$((leader - 1))"
node="$(k get pod "$pod" -o jsonpath='{.spec.nodeName}')"
[ -n "$node" ] || fail "cannot tell which node runs $pod"
# Cordon first: the stopped node stays Ready for the node-monitor grace period, and the
# next validation Pod must not be bound to it meanwhile.
log "leader: node $leader (pod $pod on $node); cordon $node, then docker stop $node"
kubectl --context "$ctx" cordon "$node" >/dev/null
stopped_node="$node"
docker stop "$node" >/dev/null
validate 3 "majority only, node $node (leader $pod) stopped"

# ---- 6. the node comes back; its replica must catch up ----
docker start "$node" >/dev/null
wait_until 240 "node $node to be Ready" kubectl --context "$ctx" wait --for=condition=Ready "node/$node" --timeout=5s
kubectl --context "$ctx" uncordon "$node" >/dev/null
stopped_node=""
wait_until 240 "pod $pod to be Ready" k wait --for=condition=Ready "pod/$pod" --timeout=5s
target="$(status_json | jq -r '[.[] | select(.reachable and .role == "leader")] | max_by(.term) | .commit_index')"
case "$target" in '' | null) fail "cannot read the leader's commit index" ;; esac
caught_up() {
  status_json | jq -e --argjson id "$leader" --argjson target "$target" '
    ([.[] | select(.reachable and .role == "leader")] | max_by(.term)) as $l
    | any(.[]; .reachable and .id == $id and .role == "follower" and .term == $l.term and .applied_index >= $target)'
}
wait_until 120 "node $leader to catch up to index $target" caught_up
pass "node $node restarted; pod $pod (node $leader) caught up to index $target"

# ---- 7. nothing acknowledged was lost ----
validate 4 "all nodes back"
pass "zero lost acknowledged writes across the faults ($(cat "$tmp"/run{1,2,3}.tsv | wc -l) keys re-read)"

# ---- 8. scale 3 -> 5 -> 3 under a write load ----
members_json() { client_pod member list --json --timeout=3s | grep '^{'; }
voters_are() {
  members_json | jq -e --argjson n "$1" '.committed and ([.members[] | select(.role == "voter")] | length) == $n'
}
member_id() {
  members_json | jq -r --arg addr "$1.raft-service:6000" '.members[] | select(.addr == $addr) | .id'
}

validate_start 5 "writes while scaling 3 -> 5" --duration=60s
load=$!
k scale statefulset raft --replicas=5
wait_until 300 "raft-3 and raft-4 to be Ready" k wait --for=condition=Ready pod/raft-3 pod/raft-4 --timeout=5s
wait_until 300 "5 voters (raft-3 and raft-4 promoted)" voters_are 5
pass "scaled to 5: raft-3 and raft-4 joined as learners and were promoted"
validate_finish 5 "writes while scaling 3 -> 5" "$load"

validate_start 6 "writes while removing raft-4 and raft-3" --duration=30s
load=$!
for pod in raft-4 raft-3; do
  id="$(member_id "$pod")"
  [ -n "$id" ] || fail "no member has the address of $pod"
  client_pod member remove "$id" --timeout=10s >/dev/null || fail "raftkv member remove $id ($pod) failed"
  log "removed member $id ($pod)"
done
wait_until 120 "3 voters" voters_are 3
k scale statefulset raft --replicas=3
wait_until 180 "pods raft-3 and raft-4 to be gone" \
  bash -c "! kubectl --context '$ctx' -n '$ns' get pod raft-3 raft-4 --no-headers 2>/dev/null | grep -q ."
wait_until 180 "the claims of raft-3 and raft-4 to be deleted (whenScaled: Delete)" \
  bash -c "! kubectl --context '$ctx' -n '$ns' get pvc data-raft-3 data-raft-4 --no-headers 2>/dev/null | grep -q ."
validate_finish 6 "writes while removing raft-4 and raft-3" "$load"
pass "scaled back to 3: members removed first, then the pods and their claims"

validate 7 "after 3 -> 5 -> 3"
pass "zero lost acknowledged writes across scaling ($(cat "$tmp"/run{1,2,3,4,5,6}.tsv | wc -l) keys re-read)"
log "SUCCESS"

#!/usr/bin/env python3
"""A model of the kube-scheduler's Filter phase, enough to tell where the StatefulSet's
pods can land on the kind cluster of k8s/kind/cluster.yaml, and whether one stays
Pending.

What it models, from the upstream sources (kubernetes/kubernetes, kind):

- **The nodes kind makes** (kind pkg/cluster/internal/providers/common/namer.go,
  create/actions/kubeadminit/init.go): names `<cluster>-control-plane`,
  `<cluster>-worker`, `<cluster>-worker2`, ...; the label `kubernetes.io/hostname` = the
  node name, plus the node's `labels:`; control-plane nodes carry kubeadm's
  `node-role.kubernetes.io/control-plane:NoSchedule` taint (cmd/kubeadm constants.go
  ControlPlaneTaint), which kind removes only when the cluster has a single node.
- **Pods**: the StatefulSet's template (plus the labels the controller adds) or a Pod,
  with the tolerations the DefaultTolerationSeconds admission plugin adds
  (not-ready / unreachable, NoExecute, 300 s).
- **Filters** (pkg/scheduler/framework/plugins/...): NodeUnschedulable (a cordoned
  node), TaintToleration (every NoSchedule/NoExecute taint must be tolerated;
  core/v1 toleration.go ToleratesTaint), NodeAffinity (nodeSelector only),
  PodTopologySpread for DoNotSchedule constraints (podtopologyspread/common.go and
  filtering.go: domains are the nodes that have every constraint's topology key and
  pass nodeAffinityPolicy (default Honor) and nodeTaintsPolicy (default **Ignore**);
  skew = matching pods in the node's domain + 1 - the minimum over domains (0 when
  there are fewer domains than minDomains); terminating pods and other namespaces do
  not count), and InterPodAffinity's required anti-affinity.

What it does not model: resources (kind nodes share the host's), volumes other than
"a pod with a claim comes back to its node", preemption, and scoring. Because scoring
is not modelled, `explore` follows *every* choice the Filter phase leaves: a layout is
safe only if no sequence of choices leaves a pod Pending.

A field it cannot model (node affinity expressions, pod affinity, matchLabelKeys,
kubeadm patches that could add taints, ...) is an error, never silently ignored.

CLI (used by tests/docker/rehearsal.sh to lay pods out as a scheduler could):

    scheduling.py place CLUSTER_YAML STATEFULSET_YAML REPLICAS

prints `raft-<i> <node>` per pod, choosing among the feasible nodes the one with the
fewest of the set's pods (then by name), or exits 1 naming the Pending pod and why.

    scheduling.py nodes CLUSTER_YAML

prints the nodes a Pod without tolerations may run on (no NoSchedule/NoExecute taint).
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field

import yaml

CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
HOSTNAME = "kubernetes.io/hostname"
# Added to every pod by the DefaultTolerationSeconds admission plugin (on by default).
DEFAULT_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
]
DO_NOT_SCHEDULE_EFFECTS = ("NoSchedule", "NoExecute")


class NotModelled(Exception):
    """The manifest or cluster uses something this model does not know."""


@dataclass
class Node:
    name: str
    labels: dict
    taints: list = field(default_factory=list)
    unschedulable: bool = False


@dataclass
class Pod:
    name: str
    namespace: str
    labels: dict
    spec: dict
    # The node it must run on (its claim is bound there), if any.
    pinned_to: str | None = None


# ---- the cluster ------------------------------------------------------------------------

KIND_NODE_FIELDS = {"role", "image", "labels", "extraMounts", "extraPortMappings"}
KIND_CLUSTER_FIELDS = {"kind", "apiVersion", "name", "nodes", "containerdConfigPatches", "networking",
                       "featureGates", "runtimeConfig"}


def kind_nodes(cfg: dict) -> list[Node]:
    """The nodes `kind create cluster --config` makes from this config."""
    if cfg.get("kind") != "Cluster" or not str(cfg.get("apiVersion", "")).startswith("kind.x-k8s.io/"):
        raise NotModelled("not a kind Cluster config")
    unknown = set(cfg) - KIND_CLUSTER_FIELDS
    if unknown:
        # kubeadmConfigPatches in particular can add taints or labels.
        raise NotModelled(f"kind cluster fields not modelled: {sorted(unknown)}")
    name = cfg.get("name", "kind")
    specs = cfg.get("nodes") or [{"role": "control-plane"}]
    counters: dict[str, int] = {}
    nodes = []
    for spec in specs:
        unknown = set(spec) - KIND_NODE_FIELDS
        if unknown:
            raise NotModelled(f"kind node fields not modelled: {sorted(unknown)}")
        role = spec.get("role", "control-plane")
        if role not in ("control-plane", "worker"):
            raise NotModelled(f"kind node role {role!r}")
        counters[role] = counters.get(role, 0) + 1
        node_name = f"{name}-{role}" + (str(counters[role]) if counters[role] > 1 else "")
        labels = {HOSTNAME: node_name, "kubernetes.io/os": "linux"}
        taints = []
        if role == "control-plane":
            labels["node-role.kubernetes.io/control-plane"] = ""
            labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
            taints.append(dict(CONTROL_PLANE_TAINT))
        labels.update({k: str(v) for k, v in (spec.get("labels") or {}).items()})
        nodes.append(Node(node_name, labels, taints))
    if len(nodes) == 1:
        # kind untaints the control plane of a single-node cluster.
        nodes[0].taints = []
    return nodes


def cordoned(nodes: list[Node], name: str) -> list[Node]:
    """`kubectl cordon NAME`: spec.unschedulable, and the node lifecycle controller's
    node.kubernetes.io/unschedulable:NoSchedule taint."""
    out = copy.deepcopy(nodes)
    for n in out:
        if n.name == name:
            n.unschedulable = True
            n.taints.append(dict(UNSCHEDULABLE_TAINT))
            return out
    raise KeyError(name)


# ---- pods -------------------------------------------------------------------------------

POD_FIELDS_AFFECTING_FILTERS = {"nodeName", "schedulerName", "priorityClassName", "overhead", "resourceClaims"}


def _check_modelled(spec: dict, where: str):
    for f in POD_FIELDS_AFFECTING_FILTERS:
        if spec.get(f):
            raise NotModelled(f"{where}: spec.{f} is not modelled")
    aff = spec.get("affinity") or {}
    if aff.get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution"):
        raise NotModelled(f"{where}: required node affinity is not modelled")
    if aff.get("podAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution"):
        raise NotModelled(f"{where}: required pod affinity is not modelled")
    for term in aff.get("podAntiAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution") or []:
        extra = set(term) - {"labelSelector", "topologyKey"}
        if extra:
            raise NotModelled(f"{where}: pod anti-affinity fields {sorted(extra)} are not modelled")
    for c in spec.get("topologySpreadConstraints") or []:
        extra = set(c) - {"maxSkew", "topologyKey", "whenUnsatisfiable", "labelSelector", "minDomains",
                          "nodeAffinityPolicy", "nodeTaintsPolicy"}
        if extra:
            raise NotModelled(f"{where}: topologySpreadConstraints fields {sorted(extra)} are not modelled")


def _with_default_tolerations(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    tols = spec.setdefault("tolerations", [])
    for d in DEFAULT_TOLERATIONS:
        if not any(t.get("key") == d["key"] and t.get("effect") in (d["effect"], None, "") for t in tols):
            tols.append(dict(d))
    return spec


def statefulset_pods(sts: dict, replicas: int) -> list[Pod]:
    """The pods raft-0..replicas-1 of the StatefulSet, as the controller creates them."""
    if sts.get("kind") != "StatefulSet":
        raise NotModelled(f"expected a StatefulSet, got {sts.get('kind')}")
    template = sts["spec"]["template"]
    name = sts["metadata"]["name"]
    ns = sts["metadata"].get("namespace", "default")
    _check_modelled(template["spec"], f"StatefulSet/{name}")
    pods = []
    for i in range(replicas):
        labels = dict(template["metadata"].get("labels") or {})
        labels["statefulset.kubernetes.io/pod-name"] = f"{name}-{i}"
        labels["apps.kubernetes.io/pod-index"] = str(i)
        pods.append(Pod(f"{name}-{i}", ns, labels, _with_default_tolerations(template["spec"])))
    return pods


def plain_pod(doc: dict) -> Pod:
    if doc.get("kind") != "Pod":
        raise NotModelled(f"expected a Pod, got {doc.get('kind')}")
    _check_modelled(doc["spec"], f"Pod/{doc['metadata']['name']}")
    return Pod(doc["metadata"]["name"], doc["metadata"].get("namespace", "default"),
               dict(doc["metadata"].get("labels") or {}), _with_default_tolerations(doc["spec"]))


# ---- matching helpers ---------------------------------------------------------------------

def selector_matches(selector: dict | None, labels: dict) -> bool:
    """metav1.LabelSelectorAsSelector: an empty selector matches everything; a null one
    (None) matches nothing."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise NotModelled(f"label selector operator {op}")
    return True


def tolerates(toleration: dict, taint: dict) -> bool:
    """core/v1 Toleration.ToleratesTaint."""
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration.get("key") and toleration["key"] != taint["key"]:
        return False
    op = toleration.get("operator") or "Equal"
    if op == "Exists":
        return True
    if op == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    raise NotModelled(f"toleration operator {op}")


def untolerated_taint(pod: Pod, node: Node) -> dict | None:
    """The first NoSchedule/NoExecute taint of the node the pod does not tolerate."""
    for taint in node.taints:
        if taint["effect"] not in DO_NOT_SCHEDULE_EFFECTS:
            continue
        if not any(tolerates(t, taint) for t in pod.spec.get("tolerations") or []):
            return taint
    return None


def node_selector_matches(pod: Pod, node: Node) -> bool:
    return all(node.labels.get(k) == v for k, v in (pod.spec.get("nodeSelector") or {}).items())


# ---- the filters --------------------------------------------------------------------------

@dataclass
class Spread:
    max_skew: int
    topology_key: str
    selector: dict
    min_domains: int
    node_affinity_policy: str
    node_taints_policy: str


def spread_constraints(pod: Pod) -> list[Spread]:
    """The DoNotSchedule constraints with the scheduler's defaults (common.go)."""
    out = []
    for c in pod.spec.get("topologySpreadConstraints") or []:
        if c["whenUnsatisfiable"] != "DoNotSchedule":
            continue  # ScheduleAnyway only scores
        out.append(Spread(c["maxSkew"], c["topologyKey"], c.get("labelSelector"), c.get("minDomains") or 1,
                          c.get("nodeAffinityPolicy") or "Honor", c.get("nodeTaintsPolicy") or "Ignore"))
    return out


def _in_domain_set(c: Spread, pod: Pod, node: Node) -> bool:
    if c.node_affinity_policy == "Honor" and not node_selector_matches(pod, node):
        return False
    if c.node_taints_policy == "Honor" and untolerated_taint(pod, node) is not None:
        return False
    return True


def _counts_pod(existing: Pod, pod: Pod) -> bool:
    return existing.namespace == pod.namespace


def spread_reason(pod: Pod, node: Node, nodes: list[Node], placed: dict[str, list[Pod]]) -> str | None:
    constraints = spread_constraints(pod)
    for c in constraints:
        if c.topology_key not in node.labels:
            return f"no label {c.topology_key}"
        counts: dict[str, int] = {}
        for n in nodes:
            if not all(k.topology_key in n.labels for k in constraints) or not _in_domain_set(c, pod, n):
                continue
            v = n.labels[c.topology_key]
            counts[v] = counts.get(v, 0) + sum(
                1 for p in placed.get(n.name, []) if _counts_pod(p, pod) and selector_matches(c.selector, p.labels))
        if not counts:
            continue
        minimum = min(counts.values()) if len(counts) >= c.min_domains else 0
        self_match = 1 if selector_matches(c.selector, pod.labels) else 0
        skew = counts.get(node.labels[c.topology_key], 0) + self_match - minimum
        if skew > c.max_skew:
            return (f"topology spread on {c.topology_key}: skew {skew} > maxSkew {c.max_skew} "
                    f"(domain pods {dict(sorted(counts.items()))}, minimum {minimum})")
    return None


def anti_affinity_reason(pod: Pod, node: Node, nodes: list[Node], placed: dict[str, list[Pod]]) -> str | None:
    def terms(p: Pod):
        return ((p.spec.get("affinity") or {}).get("podAntiAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution") or []

    by_name = {n.name: n for n in nodes}
    for node_name, pods in placed.items():
        other = by_name[node_name]
        for existing in pods:
            # The incoming pod's terms against existing pods, and the existing pods' terms
            # against the incoming one (both are required, both block).
            for owner, target in ((pod, existing), (existing, pod)):
                for t in terms(owner):
                    key = t["topologyKey"]
                    if owner.namespace != target.namespace or key not in node.labels or key not in other.labels:
                        continue
                    if node.labels[key] == other.labels[key] and selector_matches(t.get("labelSelector"), target.labels):
                        return f"pod anti-affinity on {key} with {existing.name}"
    return None


def filter_reason(pod: Pod, node: Node, nodes: list[Node], placed: dict[str, list[Pod]]) -> str | None:
    """Why the Filter phase rejects `node` for `pod` (None: it passes)."""
    if pod.pinned_to is not None and node.name != pod.pinned_to:
        return f"its volume is bound to {pod.pinned_to}"
    if node.unschedulable and not any(tolerates(t, UNSCHEDULABLE_TAINT) for t in pod.spec.get("tolerations") or []):
        return "unschedulable (cordoned)"
    taint = untolerated_taint(pod, node)
    if taint is not None:
        return f"untolerated taint {taint['key']}{'=' + taint['value'] if taint.get('value') else ''}:{taint['effect']}"
    if not node_selector_matches(pod, node):
        return "nodeSelector does not match"
    return spread_reason(pod, node, nodes, placed) or anti_affinity_reason(pod, node, nodes, placed)


def feasible(pod: Pod, nodes: list[Node], placed: dict[str, list[Pod]]) -> tuple[list[str], dict[str, str]]:
    ok, why = [], {}
    for n in nodes:
        r = filter_reason(pod, n, nodes, placed)
        if r is None:
            ok.append(n.name)
        else:
            why[n.name] = r
    return ok, why


# ---- placements ---------------------------------------------------------------------------

@dataclass
class Pending:
    pod: str
    placed: dict  # node -> [pod names] before it
    reasons: dict  # node -> why not

    def __str__(self):
        layout = ", ".join(f"{n}: {'+'.join(p)}" for n, p in sorted(self.placed.items()) if p) or "nothing placed"
        why = "; ".join(f"{n}: {r}" for n, r in sorted(self.reasons.items()))
        return f"{self.pod} stays Pending after [{layout}]: {why}"


@dataclass
class Exploration:
    layouts: list  # every final layout reachable: {node: [pod names]}
    pending: list  # every distinct way a pod stays Pending


def explore(nodes: list[Node], pods: list[Pod], placed: dict[str, list[Pod]] | None = None,
            limit: int = 100000) -> Exploration:
    """Places `pods` one by one (as the scheduler does: one pod per cycle) following
    every feasible choice; a state (next pod, layout so far) is visited once."""
    placed = {n.name: list((placed or {}).get(n.name, [])) for n in nodes}
    result = Exploration([], [])
    seen: set = set()

    def key(pl, i):
        return i, tuple(sorted((n, tuple(sorted(p.name for p in ps))) for n, ps in pl.items()))

    def step(pl, i):
        if len(seen) > limit:
            raise RuntimeError(f"more than {limit} states")
        k = key(pl, i)
        if k in seen:
            return
        seen.add(k)
        if i == len(pods):
            result.layouts.append({n: [p.name for p in ps] for n, ps in pl.items()})
            return
        ok, why = feasible(pods[i], nodes, pl)
        if not ok:
            result.pending.append(Pending(pods[i].name, {n: [p.name for p in ps] for n, ps in pl.items()}, why))
            return
        for n in ok:
            nxt = {m: list(ps) for m, ps in pl.items()}
            nxt[n].append(pods[i])
            step(nxt, i + 1)

    step(placed, 0)
    return result


def layout_problems(nodes: list[Node], pods: list[Pod], layout: dict[str, list[str]]) -> list[str]:
    """What is wrong with a final layout of a Raft StatefulSet: a node whose loss takes a
    majority, or a pod that could not come back to its node (its claim pins it there)
    after being deleted."""
    out = []
    n = len(pods)
    majority = n // 2 + 1
    for node, names in layout.items():
        if n - len(names) < majority:
            out.append(f"losing {node} loses {len(names)} of {n} members: no majority ({majority}) left")
    by_name = {p.name: p for p in pods}
    for node, names in layout.items():
        for name in names:
            rest = {m: [by_name[x] for x in xs if x != name] for m, xs in layout.items()}
            again = copy.copy(by_name[name])
            again.pinned_to = node
            ok, why = feasible(again, nodes, rest)
            if node not in ok:
                out.append(f"{name}, deleted, cannot come back to {node}: {why.get(node)}")
    return out


def check_statefulset(cluster: dict, sts: dict, replicas: int) -> list[str]:
    """Every problem of scheduling `replicas` pods of `sts` on the kind cluster: a pod
    Pending on some sequence of choices, or a reachable layout with a problem."""
    nodes = kind_nodes(cluster)
    pods = statefulset_pods(sts, replicas)
    ex = explore(nodes, pods)
    # One message per distinct reason (the same Pending pod is reached through many
    # orders of the same choices).
    by_reason: dict = {}
    for p in ex.pending:
        by_reason.setdefault((p.pod, tuple(sorted(p.reasons.items()))), []).append(p)
    out = []
    for group in by_reason.values():
        more = f" (and {len(group) - 1} more layouts like it)" if len(group) > 1 else ""
        out.append(f"{replicas} replicas: {group[0]}{more}")
    for layout in ex.layouts:
        out += [f"{replicas} replicas: {p}" for p in layout_problems(nodes, pods, layout)]
    return sorted(set(out))


def first_layout(nodes: list[Node], pods: list[Pod]) -> tuple[dict[str, str] | None, Pending | None]:
    """One layout, choosing for each pod the feasible node with the fewest of the set's
    pods, then by name (a stand-in for the scheduler's scoring, which spreads)."""
    placed: dict[str, list[Pod]] = {n.name: [] for n in nodes}
    where = {}
    for pod in pods:
        ok, why = feasible(pod, nodes, placed)
        if not ok:
            return None, Pending(pod.name, {n: [p.name for p in ps] for n, ps in placed.items()}, why)
        n = min(ok, key=lambda m: (len(placed[m]), m))
        placed[n].append(pod)
        where[pod.name] = n
    return where, None


def load_yaml(path: str, kind: str | None = None) -> dict:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if kind is not None:
        docs = [d for d in docs if d.get("kind") == kind]
    if len(docs) != 1:
        raise SystemExit(f"scheduling: {path}: expected one {kind or 'document'}, found {len(docs)}")
    return docs[0]


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "nodes":
        try:
            nodes = kind_nodes(load_yaml(argv[2]))
        except NotModelled as e:
            print(f"scheduling: {e}", file=sys.stderr)
            return 2
        for n in nodes:
            if not any(t["effect"] in DO_NOT_SCHEDULE_EFFECTS for t in n.taints):
                print(n.name)
        return 0
    if len(argv) != 5 or argv[1] != "place":
        print(__doc__, file=sys.stderr)
        return 2
    cluster, sts = load_yaml(argv[2]), load_yaml(argv[3], "StatefulSet")
    try:
        replicas = int(argv[4])
        where, pending = first_layout(kind_nodes(cluster), statefulset_pods(sts, replicas))
    except (NotModelled, ValueError) as e:
        print(f"scheduling: {e}", file=sys.stderr)
        return 2
    if pending is not None:
        print(f"scheduling: {pending}", file=sys.stderr)
        return 1
    for pod, node in where.items():
        print(pod, node)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

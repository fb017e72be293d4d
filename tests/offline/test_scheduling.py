"""Where the StatefulSet's pods land on the kind cluster of k8s/kind/cluster.yaml, under
the scheduler's Filter rules as modelled in scheduling.py (read from kube-scheduler's
PodTopologySpread and TaintToleration plugins and kind's node setup). Every sequence of
choices the Filter phase allows is followed: one Pending pod on any of them fails."""
import copy
import os
import sys

import pytest
import yaml

import scheduling as s
from conftest import ROOT, run

CLUSTER = os.path.join(ROOT, "k8s", "kind", "cluster.yaml")
STATEFULSET = os.path.join(ROOT, "k8s", "statefulset.yaml")
VALIDATE_POD = os.path.join(ROOT, "k8s", "validate-pod.yaml")


def cluster():
    with open(CLUSTER) as f:
        return yaml.safe_load(f)


def sts():
    return s.load_yaml(STATEFULSET, "StatefulSet")


def spread(d):
    return d["spec"]["template"]["spec"]["topologySpreadConstraints"]


@pytest.mark.parametrize("replicas", [3, 4, 5])
def test_every_replica_schedules_on_the_kind_cluster(replicas):
    assert s.check_statefulset(cluster(), sts(), replicas) == []


def test_five_replicas_land_two_one_one_one_on_the_workers_never_the_control_plane():
    nodes = s.kind_nodes(cluster())
    ex = s.explore(nodes, s.statefulset_pods(sts(), 5))
    assert ex.pending == [] and ex.layouts
    for layout in ex.layouts:
        assert layout["raftkv-control-plane"] == []
        assert sorted(len(p) for n, p in layout.items() if n != "raftkv-control-plane") == [1, 1, 1, 2]


def test_negative_todays_manifest_leaves_raft_4_pending():
    """The manifest before the fix: nodeTaintsPolicy unset (Ignore), so the tainted
    control plane is an empty spread domain and the fifth pod fits nowhere."""
    old = sts()
    for c in spread(old):
        assert c.pop("nodeTaintsPolicy") == "Honor"
        c.pop("nodeAffinityPolicy", None)
    assert s.check_statefulset(cluster(), old, 3) == []
    assert s.check_statefulset(cluster(), old, 4) == []
    problems = s.check_statefulset(cluster(), old, 5)
    assert problems, "the check passed the manifest that leaves raft-4 Pending"
    assert all("raft-4 stays Pending" in p for p in problems), problems
    assert "raftkv-control-plane: untolerated taint node-role.kubernetes.io/control-plane:NoSchedule" in problems[0]
    assert "skew 2 > maxSkew 1" in problems[0]


def test_negative_required_anti_affinity_leaves_the_fifth_pod_pending():
    """What k8s/kind/cluster.yaml's old comment described: one member per node."""
    d = sts()
    d["spec"]["template"]["spec"]["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname",
         "labelSelector": {"matchLabels": d["spec"]["selector"]["matchLabels"]}}]}}
    assert s.check_statefulset(cluster(), d, 4) == []
    problems = s.check_statefulset(cluster(), d, 5)
    assert problems and "raft-4 stays Pending" in problems[0] and "pod anti-affinity" in problems[0]


def test_negative_a_layout_that_loses_a_majority_with_one_node_is_reported():
    d = sts()
    spread(d)[0]["maxSkew"] = 3  # three on one node become possible
    problems = s.check_statefulset(cluster(), d, 5)
    assert any("no majority" in p for p in problems), problems


def test_model_reproduces_the_upstream_report_on_kind():
    """kubernetes/kubernetes#116118: kind with one control plane and three workers, 7
    replicas, maxSkew 1 on the hostname: "Only three pods got scheduled" with the
    default nodeTaintsPolicy; with Honor the reporter expected 2, 2, 3."""
    cfg = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4",
           "nodes": [{"role": "control-plane"}, {"role": "worker"}, {"role": "worker"}, {"role": "worker"}]}
    nodes = s.kind_nodes(cfg)
    labels = {"app": "web"}

    def pods(policy):
        c = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": labels}}
        if policy:
            c["nodeTaintsPolicy"] = policy
        spec = s._with_default_tolerations({"topologySpreadConstraints": [c]})
        return [s.Pod(f"web-{i}", "default", dict(labels), spec) for i in range(7)]

    ignore = s.explore(nodes, pods(None))
    assert ignore.layouts == [] and ignore.pending
    assert {sum(len(v) for v in p.placed.values()) for p in ignore.pending} == {3}
    honor = s.explore(nodes, pods("Honor"))
    assert honor.pending == [] and honor.layouts
    for layout in honor.layouts:
        assert sorted(len(v) for n, v in layout.items() if n != "kind-control-plane") == [2, 2, 3]


def test_kind_nodes_are_named_and_tainted_as_kind_does():
    nodes = s.kind_nodes(cluster())
    assert [n.name for n in nodes] == ["raftkv-control-plane", "raftkv-worker", "raftkv-worker2",
                                       "raftkv-worker3", "raftkv-worker4"]
    assert nodes[0].taints == [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    assert all(n.taints == [] and n.labels["kubernetes.io/hostname"] == n.name for n in nodes[1:])
    # A single-node cluster's control plane is untainted by kind.
    single = s.kind_nodes({"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "name": "one"})
    assert [(n.name, n.taints) for n in single] == [("one-control-plane", [])]


def test_a_toleration_lets_a_pod_onto_the_control_plane():
    nodes = s.kind_nodes(cluster())
    pod = s.statefulset_pods(sts(), 1)[0]
    assert "raftkv-control-plane" not in s.feasible(pod, nodes, {})[0]
    pod.spec["tolerations"].append({"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                                    "effect": "NoSchedule"})
    assert "raftkv-control-plane" in s.feasible(pod, nodes, {})[0]
    assert s.tolerates({"operator": "Exists"}, {"key": "anything", "effect": "NoExecute"})
    assert not s.tolerates({"key": "a", "value": "x"}, {"key": "a", "value": "y", "effect": "NoSchedule"})


def test_a_cordoned_node_takes_no_new_pod_and_is_not_a_spread_domain():
    """tests/e2e/kind.sh cordons a node before stopping it: the validation Pods that
    follow must never be bound to it (it still looks Ready for ~40 s)."""
    nodes = s.cordoned(s.kind_nodes(cluster()), "raftkv-worker2")
    with open(VALIDATE_POD) as f:
        client = s.plain_pod(yaml.safe_load(f))
    ok, why = s.feasible(client, nodes, {})
    assert "raftkv-worker2" not in ok and why["raftkv-worker2"] == "unschedulable (cordoned)"
    # Uncordoned, it is a candidate again.
    assert "raftkv-worker2" in s.feasible(client, s.kind_nodes(cluster()), {})[0]


def test_negative_a_pod_pinned_to_a_cordoned_node_cannot_come_back():
    nodes = s.kind_nodes(cluster())
    pods = s.statefulset_pods(sts(), 3)
    layout = {"raftkv-control-plane": [], "raftkv-worker": ["raft-0"], "raftkv-worker2": ["raft-1"],
              "raftkv-worker3": ["raft-2"], "raftkv-worker4": []}
    assert s.layout_problems(nodes, pods, layout) == []
    problems = s.layout_problems(s.cordoned(nodes, "raftkv-worker"), pods, layout)
    assert problems == ["raft-0, deleted, cannot come back to raftkv-worker: unschedulable (cordoned)"]


def test_fields_the_model_does_not_know_are_refused():
    cfg = cluster()
    cfg["kubeadmConfigPatches"] = ["kind: InitConfiguration"]
    with pytest.raises(s.NotModelled, match="kubeadmConfigPatches"):
        s.kind_nodes(cfg)
    d = sts()
    d["spec"]["template"]["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    d["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "x", "operator": "Exists"}]}]}
    with pytest.raises(s.NotModelled, match="node affinity"):
        s.statefulset_pods(d, 3)
    d = sts()
    spread(d)[0]["matchLabelKeys"] = ["controller-revision-hash"]
    with pytest.raises(s.NotModelled, match="matchLabelKeys"):
        s.statefulset_pods(d, 3)


def test_place_cli_lays_out_the_pods_the_rehearsal_starts(tmp_path):
    out = run([sys.executable, os.path.join(ROOT, "tests/offline/scheduling.py"), "place", CLUSTER, STATEFULSET, "5"])
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert [r[0] for r in rows] == [f"raft-{i}" for i in range(5)]
    assert "raftkv-control-plane" not in [r[1] for r in rows]
    old = copy.deepcopy(sts())
    for c in spread(old):
        c.pop("nodeTaintsPolicy")
    broken = tmp_path / "statefulset.yaml"
    broken.write_text(yaml.safe_dump(old))
    out = run([sys.executable, os.path.join(ROOT, "tests/offline/scheduling.py"), "place", CLUSTER, str(broken), "5"])
    assert out.returncode == 1 and "raft-4 stays Pending" in out.stderr


def test_nodes_cli_lists_the_nodes_an_untolerating_pod_may_use():
    out = run([sys.executable, os.path.join(ROOT, "tests/offline/scheduling.py"), "nodes", CLUSTER])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["raftkv-worker", "raftkv-worker2", "raftkv-worker3", "raftkv-worker4"]

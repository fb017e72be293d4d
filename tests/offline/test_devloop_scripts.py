"""The dev loop's cluster scripts (k8s/tilt/faults, k8s/tilt/inject, k8s/tilt/revalidate,
k8s/raftkv), run against scripted stand-ins of kubectl, docker, tilt and raftkv
(fakecli.py): what each asks the tools, in which order, and what it prints. No
cluster runs here; the real tools only meet these scripts on a real kind cluster."""
import json
import os
import re
import subprocess

import pytest

import fakecli
from conftest import ROOT

FAULTS = os.path.join(ROOT, "k8s", "tilt", "faults")
INJECT = os.path.join(ROOT, "k8s", "tilt", "inject")
REVALIDATE = os.path.join(ROOT, "k8s", "tilt", "revalidate")
HELPER = os.path.join(ROOT, "k8s", "raftkv")
SELECTOR = "app.kubernetes.io/name=raftkv,app.kubernetes.io/component=server"


def metrics(term, leader, server_id=1):
    """A server's /metrics as it writes them: every raftkv_* series labelled with server_id."""
    label = f'{{server_id="{server_id}"}}'
    return (
        f"# TYPE raftkv_term gauge\nraftkv_term{label} {term}\n"
        f"# TYPE raftkv_is_leader gauge\nraftkv_is_leader{label} {int(leader)}\n"
        f"# TYPE raftkv_is_leader_x gauge\nraftkv_is_leader_x{label} 1\n"
    )


def kubectl(match, stdout="", rc=0, **kw):
    return dict(tool="kubectl", match=match, stdout=stdout, rc=rc, **kw)


def docker(match, stdout="", rc=0, **kw):
    return dict(tool="docker", match=match, stdout=stdout, rc=rc, **kw)


COMMON = [
    kubectl(r"^config view --context kind-raftkv --minify", ""),
    kubectl(r"get pods -l " + re.escape(SELECTOR) + " -o jsonpath", "raft-0\nraft-1\nraft-2\n"),
]


def run_script(tmp_path, script, args, scenario, env=None, source=None, with_env=False):
    """Runs `script` (or `source` as that script) with the fake tools first on PATH:
    (CompletedProcess, calls), and with `with_env` the calls' logged variables too."""
    work = tmp_path / "fake"
    work.mkdir(exist_ok=True)
    fakecli.install(str(tmp_path / "bin"), ["kubectl", "docker", "tilt", "raftkv"], scenario, str(work))
    path = script
    if source is not None:
        path = str(tmp_path / os.path.basename(script))
        with open(path, "w") as f:
            f.write(source)
        os.chmod(path, 0o755)
    e = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", FAULT_POLL_SECONDS="0.05",
             REVALIDATE_POLL_SECONDS="0.05", FAULT_WAIT_SECONDS="5", REVALIDATE_WAIT_SECONDS="5",
             KIND_CLUSTER_NAME="raftkv")
    for k in ("RAFTKV_KUBE_CONTEXT", "RAFTKV_K8S_NAMESPACE", "RAFTKV_CLIENT_IMAGE", "RAFTKV_BIN",
              "RAFTKV_ENDPOINTS"):
        e.pop(k, None)
    e.update(env or {})
    out = subprocess.run([path, *args], capture_output=True, text=True, timeout=60, env=e, cwd=ROOT)
    if with_env:
        return out, fakecli.calls(str(work)), fakecli.envs(str(work))
    return out, fakecli.calls(str(work))


def lines(calls, tool=None):
    return [" ".join(c[1:]) for c in calls if tool is None or c[0] == tool]


def index(calls, pattern):
    for i, c in enumerate(calls):
        if re.search(pattern, " ".join(c)):
            return i
    raise AssertionError(f"no call matches {pattern!r}: {[' '.join(c) for c in calls]}")


def every_kubectl_call_names_the_context(calls):
    return [c for c in lines(calls, "kubectl") if "--context kind-raftkv" not in c]


# ---- kill-leader -------------------------------------------------------------------------

def kill_leader_scenario():
    return {"state": {"phase": "before"}, "rules": COMMON + [
        kubectl(r"pods/raft-1:9090/proxy/metrics", metrics(5, True), when={"phase": "before"}),
        kubectl(r"pods/raft-[02]:9090/proxy/metrics", metrics(5, False), when={"phase": "before"}),
        kubectl(r"delete pod raft-1", set={"phase": "after"}),
        kubectl(r"pods/raft-2:9090/proxy/metrics", metrics(6, True), when={"phase": "after"}),
        kubectl(r"pods/raft-[01]:9090/proxy/metrics", metrics(6, False), when={"phase": "after"}),
        kubectl(r"wait --for=condition=Ready pod/raft-1"),
    ]}


def kill_problems(out, calls):
    problems = []
    deletes = [c for c in lines(calls, "kubectl") if " delete pod " in f" {c} "]
    if len(deletes) != 1 or "raft-1" not in deletes[0]:
        problems.append(f"expected one delete of the leader's pod raft-1, got {deletes}")
    if any("--force" in d or "--grace-period=0" in d for d in deletes):
        problems.append("the leader's pod is force-deleted: its replacement may start beside it on the same volume")
    for want in ("leader before: raft-1 (term 5)", "leader after: raft-2 (term 6)"):
        if want not in out.stdout:
            problems.append(f"does not print {want!r}")
    return problems


def test_kill_leader_deletes_the_leaders_pod_gracefully_and_reports_both_leaders(tmp_path):
    out, calls = run_script(tmp_path, FAULTS, ["kill-leader"], kill_leader_scenario())
    assert out.returncode == 0, out.stdout + out.stderr
    assert kill_problems(out, calls) == []
    assert every_kubectl_call_names_the_context(calls) == []
    # It waits for the deleted pod to be Ready again after the new leader is known.
    assert index(calls, r"delete pod raft-1") < index(calls, r"wait --for=condition=Ready pod/raft-1")


def test_negative_a_force_delete_is_caught(tmp_path):
    with open(FAULTS) as f:
        src = f.read()
    assert 'k delete pod "$pod" --wait=true' in src
    src = src.replace('k delete pod "$pod" --wait=true', 'k delete pod "$pod" --grace-period=0 --force')
    out, calls = run_script(tmp_path, FAULTS, ["kill-leader"], kill_leader_scenario(), source=src)
    assert any("force-deleted" in p for p in kill_problems(out, calls))


def test_kill_leader_fails_clearly_when_no_leader_answers(tmp_path):
    scenario = {"state": {}, "rules": COMMON + [kubectl(r"proxy/metrics", metrics(3, False))]}
    out, calls = run_script(tmp_path, FAULTS, ["kill-leader"], scenario, env={"FAULT_WAIT_SECONDS": "1"})
    assert out.returncode == 1 and "no leader answers within 1s" in out.stderr
    assert not [c for c in lines(calls, "kubectl") if "delete" in c]


# ---- stop-follower-node --------------------------------------------------------------------

def stop_scenario(raft1_node="raftkv-worker2"):
    return {"state": {}, "rules": COMMON + [
        kubectl(r"pods/raft-0:9090/proxy/metrics", metrics(4, True)),
        kubectl(r"pods/raft-[12]:9090/proxy/metrics", metrics(4, False)),
        kubectl(r"get pod raft-0 -o jsonpath=\{.spec.nodeName\}", "raftkv-worker"),
        kubectl(r"get pod raft-1 -o jsonpath=\{.spec.nodeName\}", raft1_node),
        kubectl(r"get pod raft-2 -o jsonpath=\{.spec.nodeName\}", "raftkv-worker3"),
        kubectl(r"cordon raftkv-worker[0-9]*$"),
        kubectl(r"annotate --overwrite node raftkv-worker[0-9]* raftkv.dev/fault=stopped"),
        docker(r"^stop raftkv-worker[0-9]*$"),
    ]}


def stop_problems(calls, leader_node="raftkv-worker"):
    problems = []
    stops = [c.split()[1] for c in lines(calls, "docker") if c.startswith("stop ")]
    if len(stops) != 1:
        return [f"expected one docker stop, got {stops}"]
    node = stops[0]
    if node == leader_node:
        problems.append("it stopped the leader's node")
    cordons = [i for i, c in enumerate(calls) if c[0] == "kubectl" and "cordon" in c and node in c]
    stop_at = next(i for i, c in enumerate(calls) if c[:2] == ["docker", "stop"])
    if not cordons or min(cordons) > stop_at:
        problems.append(f"{node} was stopped before it was cordoned: a Pod may be bound to it while it looks Ready")
    return problems


def test_stop_follower_node_cordons_then_stops_a_node_without_the_leader(tmp_path):
    out, calls = run_script(tmp_path, FAULTS, ["stop-follower-node"], stop_scenario())
    assert out.returncode == 0, out.stdout + out.stderr
    assert stop_problems(calls) == []
    assert lines(calls, "docker") == ["stop raftkv-worker2"]
    assert "leader before: raft-0 (term 4) on node raftkv-worker" in out.stdout
    assert "leader after: raft-0 (term 4)" in out.stdout
    assert every_kubectl_call_names_the_context(calls) == []


def test_stop_follower_node_skips_a_follower_sharing_the_leaders_node(tmp_path):
    out, calls = run_script(tmp_path, FAULTS, ["stop-follower-node"], stop_scenario(raft1_node="raftkv-worker"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert lines(calls, "docker") == ["stop raftkv-worker3"]


def test_negative_stop_before_cordon_is_caught(tmp_path):
    with open(FAULTS) as f:
        src = f.read()
    cordon = '  kubectl --context "$ctx" cordon "$node" >/dev/null\n'
    stop = '  docker stop "$node" >/dev/null\n'
    assert cordon in src and stop in src
    src = src.replace(cordon, "").replace(stop, stop + cordon)
    out, calls = run_script(tmp_path, FAULTS, ["stop-follower-node"], stop_scenario(), source=src)
    assert any("before it was cordoned" in p for p in stop_problems(calls))


# ---- restore -----------------------------------------------------------------------------

def test_restore_starts_stopped_nodes_and_uncordons_only_the_ones_it_cordoned(tmp_path):
    scenario = {"state": {"phase": "down"}, "rules": COMMON + [
        kubectl(r"pods/raft-0:9090/proxy/metrics", metrics(4, True)),
        kubectl(r"proxy/metrics", metrics(4, False)),
        docker(r"ps -a --filter label=io.x-k8s.kind.cluster=raftkv --filter status=exited", "raftkv-worker2\n"),
        docker(r"^start raftkv-worker2$", set={"phase": "up"}),
        kubectl(r"get nodes -o jsonpath=", "raftkv-control-plane \nraftkv-worker \nraftkv-worker2 stopped\n"
                                           "raftkv-worker3 \nraftkv-worker4 other\n"),
        kubectl(r"wait --for=condition=Ready node/raftkv-worker2", when={"phase": "up"}),
        kubectl(r"uncordon raftkv-worker2$"),
        kubectl(r"annotate node raftkv-worker2 raftkv.dev/fault-$"),
        kubectl(r"wait --for=condition=Ready pod -l " + re.escape(SELECTOR)),
    ]}
    out, calls = run_script(tmp_path, FAULTS, ["restore"], scenario)
    assert out.returncode == 0, out.stdout + out.stderr
    assert [c for c in lines(calls, "kubectl") if "uncordon" in c] == ["--context kind-raftkv uncordon raftkv-worker2"]
    assert index(calls, r"docker start raftkv-worker2") < index(calls, r"uncordon raftkv-worker2")
    assert "leader before: raft-0 (term 4)" in out.stdout and "leader after: raft-0 (term 4)" in out.stdout
    assert every_kubectl_call_names_the_context(calls) == []


# ---- the `raftkv fault` buttons (k8s/tilt/inject) ---------------------------------------

def raftkv(match, stdout="", rc=0, **kw):
    return dict(tool="raftkv", match=match, stdout=stdout, rc=rc, **kw)


def status_json(leader, term, ids=(1, 2, 3)):
    """`raftkv status -o json` as the CLI prints it (endpoint.rs status_json)."""
    return json.dumps([
        {"endpoint": "127.0.0.1:6001" if i == 1 else f"raft-{i - 1}.raft-service:6000", "via": None if i == 1 else 1,
         "reachable": True, "id": i, "role": "leader" if i == leader else "follower", "term": term,
         "leader": leader, "commit_index": 40, "applied_index": 40, "last_index": 40, "snapshot_index": 0,
         "cluster_id": 7, "recovering": False, "version": "0.1.0", "commit": "abc"} for i in ids]) + "\n"


def inject_scenario(before=None):
    """Node 1 (the port-forwarded endpoint) leads in term 5; a partition of node 1
    makes node 3 lead in term 6. `before`: another status before the partition."""
    return {"state": {"phase": "before"}, "rules": [
        raftkv(r"^status -o json$", before or status_json(1, 5), when={"phase": "before"}),
        raftkv(r"^status -o json$", status_json(3, 6), when={"phase": "after"}),
        raftkv(r"^fault partition 1 ", "injected partition on node 1\n", set={"phase": "after"}),
        raftkv(r"^fault (pause|delay-fsync) ", "injected\n"),
        raftkv(r"^fault heal$", "healed\n"),
        raftkv(r"^fault list$", "no active fault\n"),
    ]}


def tilt_record():
    import tiltstub
    return tiltstub.evaluate(os.path.join(ROOT, "Tiltfile"), ROOT)


def inject_buttons(rec):
    return {r["name"]: r["cmd"] for r in rec.local_resources
            if r["labels"] == ["faults"] and r["cmd"].startswith("k8s/tilt/inject ")}


# What each button must ask raftkv for: node 1 leads, node 2 is the lowest follower.
BUTTON_FAULTS = {
    "fault-partition-leader-10s": [["fault", "partition", "1", "--for", "10s"]],
    "fault-pause-follower-3s": [["fault", "pause", "2", "--for", "3s"]],
    "fault-slow-fsync-leader": [["fault", "delay-fsync", "1", "200ms", "--for", "30s"]],
    "fault-heal-all": [["fault", "heal"], ["fault", "list"]],
}


def raft_port_forward_endpoint(rec):
    """127.0.0.1:<local port> of the raft resource's port-forward to the Raft port 6000."""
    raft = next(r for r in rec.resources if r["workload"] == "raft")
    pf = next(p for p in raft["port_forwards"] if p["container_port"] == 6000)
    return f"127.0.0.1:{pf['local_port']}"


def button_problems(name, out, calls, envs, endpoint, expected=None):
    problems = []
    expected = expected or BUTTON_FAULTS[name]
    if out.returncode != 0:
        return [f"{name} fails: {out.stdout + out.stderr}"]
    faults = [c[1:] for c in calls if c[0] == "raftkv" and c[1] == "fault"]
    if faults != expected:
        problems.append(f"{name} runs raftkv {faults}, expected {expected}")
    seen = {e["RAFTKV_ENDPOINTS"] for c, e in zip(calls, envs) if c[0] == "raftkv"}
    if seen != {endpoint}:
        problems.append(f"{name} reaches the cluster at {seen}, not the raft port-forward {endpoint}")
    if [c for c in calls if c[0] != "raftkv"]:
        problems.append(f"{name} runs other tools: {[c for c in calls if c[0] != 'raftkv']}")
    return problems


@pytest.mark.parametrize("name", sorted(BUTTON_FAULTS))
def test_each_raftkv_fault_button_runs_raftkv_fault_with_its_arguments(tmp_path, name):
    """The button's command, as the Tiltfile has it, run against a stand-in raftkv: the
    `raftkv fault` it asks for (the leader or a follower from `raftkv status -o json`),
    through the raft resource's port-forward."""
    rec = tilt_record()
    buttons = inject_buttons(rec)
    assert sorted(buttons) == sorted(BUTTON_FAULTS), "a button without a check here, or a check without a button"
    words = buttons[name].split()
    out, calls, envs = run_script(tmp_path, os.path.join(ROOT, words[0]), words[1:], inject_scenario(),
                                  with_env=True)
    assert button_problems(name, out, calls, envs, raft_port_forward_endpoint(rec)) == []
    if name == "fault-partition-leader-10s":
        assert "leader before: node 1 (term 5)" in out.stdout and "leader after: node 3 (term 6)" in out.stdout
        assert "outcome=won" in out.stdout


def closed_endpoint():
    """127.0.0.1:<a port nothing listens on> (bound by the kernel's choice, then closed)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def cli_refusals(cli, calls):
    """The raftkv calls the real CLI's parser refuses (clap's exit 2); each runs against
    an endpoint nothing listens on, so a parsed call fails to connect instead (exit 1)."""
    out = []
    env = dict(os.environ, RAFTKV_ENDPOINTS=closed_endpoint())
    for c in calls:
        if c[0] != "raftkv":
            continue
        r = subprocess.run([cli, *c[1:]], capture_output=True, text=True, timeout=60, env=env)
        connect_failed = "unreachable" in r.stderr or "no endpoint answered" in r.stderr
        if r.returncode != 1 or not connect_failed:
            out.append(f"raftkv {' '.join(c[1:])}: exit {r.returncode}: {r.stderr.strip()[:300]}")
    return out


def test_what_the_buttons_run_the_real_raftkv_parses(tmp_path, cli_bin):
    """Every raftkv command line the buttons ran against the stand-in, given to the real
    CLI: none is a usage error (a misspelt flag, a missing argument)."""
    rec = tilt_record()
    for name, cmd in sorted(inject_buttons(rec).items()):
        words = cmd.split()
        (tmp_path / name).mkdir()
        out, calls = run_script(tmp_path / name, INJECT, words[1:], inject_scenario())
        assert out.returncode == 0, out.stdout + out.stderr
        assert cli_refusals(cli_bin, calls) == [], name


def test_negative_the_real_parser_catches_a_misspelt_fault_command(cli_bin):
    problems = cli_refusals(cli_bin, [["raftkv", "fault", "pause", "2", "--duration", "3s"],
                                      ["raftkv", "fault", "delay-fsync", "1", "--for", "30s"],
                                      ["raftkv", "fault", "pause", "2", "--for", "3s"]])
    assert len(problems) == 2 and "--duration" in problems[0] and "delay-fsync" in problems[1], problems


def test_partition_leader_says_so_when_no_new_leader_shows(tmp_path):
    scenario = inject_scenario()
    scenario["rules"][1] = raftkv(r"^status -o json$", status_json(1, 5), when={"phase": "after"})
    out, calls = run_script(tmp_path, INJECT, ["partition-leader", "10s"], scenario, env={"FAULT_WAIT_SECONDS": "1"})
    assert out.returncode == 0, out.stderr
    assert "no leader of a later term than 5 seen through 127.0.0.1:6001 within 1s" in out.stdout


def test_inject_fails_clearly_when_no_leader_answers(tmp_path):
    scenario = {"state": {}, "rules": [raftkv(r"^status -o json$", rc=1)]}
    out, calls = run_script(tmp_path, INJECT, ["pause-follower", "3s"], scenario)
    assert out.returncode == 1 and "no leader answers through 127.0.0.1:6001" in out.stderr
    assert not [c for c in calls if c[1:2] == ["fault"]]


def stale_leader_first():
    """Node 1 (the endpoint, answering first) still says it leads in term 4; node 2 leads
    in term 5."""
    st = json.loads(status_json(2, 5))
    st[0].update(role="leader", term=4, leader=1)
    return json.dumps(st)


def test_the_leader_is_the_one_of_the_highest_term(tmp_path):
    rec = tilt_record()
    words = inject_buttons(rec)["fault-slow-fsync-leader"].split()
    out, calls, envs = run_script(tmp_path, INJECT, words[1:], inject_scenario(stale_leader_first()), with_env=True)
    assert button_problems("fault-slow-fsync-leader", out, calls, envs, raft_port_forward_endpoint(rec),
                           expected=[["fault", "delay-fsync", "2", "200ms", "--for", "30s"]]) == []


@pytest.mark.parametrize("old,new,button,stale,want", [
    # A follower pick that does not leave the leader out pauses the leader (node 1).
    ('select(.reachable and .role == "follower" and .id != $l)', "select(.reachable)",
     "fault-pause-follower-3s", False, "runs raftkv [['fault', 'pause', '1', '--for', '3s']]"),
    # The first leader that answers (a stale one), not the one of the highest term.
    ("max_by(.term)", "first", "fault-slow-fsync-leader", True, "runs raftkv [['fault', 'delay-fsync', '1',"),
    # An endpoint nothing forwards (the server's own port).
    ('RAFTKV_ENDPOINTS="${RAFTKV_ENDPOINTS:-127.0.0.1:6001}"', 'RAFTKV_ENDPOINTS="${RAFTKV_ENDPOINTS:-127.0.0.1:6000}"',
     "fault-heal-all", False, "not the raft port-forward 127.0.0.1:6001"),
], ids=["pauses-the-leader", "first-leader-not-newest", "wrong-endpoint"])
def test_negative_a_broken_inject_script_is_caught(tmp_path, old, new, button, stale, want):
    """Each mutation of k8s/tilt/inject, run like the checks above, is reported."""
    with open(INJECT) as f:
        src = f.read()
    assert old in src, f"k8s/tilt/inject no longer contains {old!r}; update this negative test"
    rec = tilt_record()
    words = inject_buttons(rec)[button].split()
    scenario = inject_scenario(stale_leader_first() if stale else None)
    expected = [["fault", "delay-fsync", "2", "200ms", "--for", "30s"]] if stale else None
    out, calls, envs = run_script(tmp_path, INJECT, words[1:], scenario, source=src.replace(old, new), with_env=True)
    problems = button_problems(button, out, calls, envs, raft_port_forward_endpoint(rec), expected)
    assert any(want in p for p in problems), problems


# ---- raft-revalidate --------------------------------------------------------------------

def uiresource(building=False, error="", finished="2999-01-01T00:00:00Z"):
    import json
    status = {"buildHistory": [{"startTime": "2998-12-31T23:59:00Z", "finishTime": finished, "error": error}]}
    if building:
        status["currentBuild"] = {"startTime": "2999-01-01T00:00:01Z"}
    return json.dumps({"kind": "UIResource", "metadata": {"name": "raft"}, "status": status})


def revalidate_scenario(final):
    return {"state": {}, "rules": [
        kubectl(r"^config view", ""),
        dict(tool="tilt", match=r"^get uiresource raft -o json$", times=1,
             stdout=uiresource(finished="2000-01-01T00:00:00Z")),  # the build before the change
        dict(tool="tilt", match=r"^get uiresource raft -o json$", times=2, stdout=uiresource(building=True)),
        dict(tool="tilt", match=r"^get uiresource raft -o json$", stdout=final),
        kubectl(r"rollout status statefulset/raft"),
        dict(tool="tilt", match=r"^trigger raft-validate$"),
    ]}


def test_revalidate_waits_for_the_raft_build_and_the_rollout_then_triggers_the_validation(tmp_path):
    out, calls = run_script(tmp_path, REVALIDATE, [], revalidate_scenario(uiresource()))
    assert out.returncode == 0, out.stdout + out.stderr
    polls = [c for c in lines(calls, "tilt") if c.startswith("get uiresource")]
    assert len(polls) == 4, polls  # old build, building twice, then the new build
    assert index(calls, r"rollout status") > max(i for i, c in enumerate(calls) if c[:2] == ["tilt", "get"])
    assert index(calls, r"tilt trigger raft-validate") > index(calls, r"rollout status")
    assert every_kubectl_call_names_the_context(calls) == []


def test_revalidate_does_not_validate_a_failed_build(tmp_path):
    out, calls = run_script(tmp_path, REVALIDATE, [], revalidate_scenario(uiresource(error="nix build failed")))
    assert out.returncode == 1 and "the raft build failed" in out.stdout and "nix build failed" in out.stdout
    assert not [c for c in calls if c[:2] == ["tilt", "trigger"]]


def test_negative_a_revalidate_that_does_not_wait_is_caught(tmp_path):
    with open(REVALIDATE) as f:
        src = f.read()
    assert '    built) break ;;' in src
    src = src.replace('    built) break ;;', '    *) break ;;')
    out, calls = run_script(tmp_path, REVALIDATE, [], revalidate_scenario(uiresource()), source=src)
    polls = [c for c in lines(calls, "tilt") if c.startswith("get uiresource")]
    assert len(polls) < 4, "the mutation did not change the waiting: this negative test shows nothing"


# ---- the raftkv helper ------------------------------------------------------------------

def helper_scenario(client_image):
    return {"state": {}, "rules": [
        kubectl(r"^config view", ""),
        kubectl(r"get pods -l app.kubernetes.io/name=raftkv,app.kubernetes.io/component=client .*"
                r"--sort-by=.metadata.creationTimestamp", client_image),
        kubectl(r"get service jaeger"),
        kubectl(r" run raftkv-cli-"),
    ]}


def test_helper_runs_the_image_the_clusters_validation_pods_run(tmp_path):
    tilt_ref = "localhost:5001/raftkv-client:tilt-build-1767225600"
    out, calls = run_script(tmp_path, HELPER, ["status", "--json"], helper_scenario(tilt_ref))
    assert out.returncode == 0, out.stderr
    run = next(c for c in calls if c[0] == "kubectl" and "run" in c)
    assert f"--image={tilt_ref}" in run
    assert run[run.index("--") + 1:] == ["status", "--json"]
    assert "--env=RAFTKV_ENDPOINTS=raft-0.raft-service:6000,raft-1.raft-service:6000,raft-2.raft-service:6000" in run
    assert "--env=OTEL_SERVICE_NAME=raftkv-client" in run
    assert every_kubectl_call_names_the_context(calls) == []


def test_helper_falls_back_to_the_loaded_dev_image_and_says_so(tmp_path):
    out, calls = run_script(tmp_path, HELPER, ["status"], helper_scenario(""))
    assert out.returncode == 0, out.stderr
    run = next(c for c in calls if c[0] == "kubectl" and "run" in c)
    assert "--image=raftkv-client:dev" in run
    assert "k8s/kind/load-images" in out.stderr


def test_negative_the_old_helper_image_is_caught(tmp_path):
    """The README's old helper always ran raftkv-client:dev, which Tilt never puts on
    the nodes (ImagePullBackOff)."""
    with open(HELPER) as f:
        src = f.read()
    src = src.replace('image="${RAFTKV_CLIENT_IMAGE:-}"', 'image=raftkv-client:dev')
    out, calls = run_script(tmp_path, HELPER, ["status"],
                            helper_scenario("localhost:5001/raftkv-client:tilt-build-1"), source=src)
    run = next(c for c in calls if c[0] == "kubectl" and "run" in c)
    assert "--image=localhost:5001/raftkv-client:tilt-build-1" not in run


@pytest.mark.parametrize("script,args", [(FAULTS, ["unplug-the-moon"]), (INJECT, ["unplug-the-moon"]), (HELPER, [])],
                         ids=["faults", "inject", "raftkv"])
def test_usage_errors_are_clear(tmp_path, script, args):
    out, _ = run_script(tmp_path, script, args, {"state": {}, "rules": [kubectl(r"^config view", "")]})
    assert out.returncode == 2 and "usage:" in out.stderr

"""The dev loop's cluster scripts (k8s/raftkv), run against scripted stand-ins of kubectl, docker and tilt
(fakecli.py): what each asks the tools, in which order, and what it prints. No
cluster runs here; the real tools only meet these scripts on a real kind cluster."""
import os
import re
import shutil
import subprocess

import pytest

import fakecli
from conftest import ROOT

FAULTS = os.path.join(ROOT, "k8s", "tilt", "faults")
REVALIDATE = os.path.join(ROOT, "k8s", "tilt", "revalidate")
HELPER = os.path.join(ROOT, "k8s", "raftkv")
SELECTOR = "app.kubernetes.io/name=raftkv,app.kubernetes.io/component=server"


def metrics(term, leader):
    return f"# TYPE raftkv_term gauge\nraftkv_term {term}\n# TYPE raftkv_is_leader gauge\nraftkv_is_leader {int(leader)}\n"


def kubectl(match, stdout="", rc=0, **kw):
    return dict(tool="kubectl", match=match, stdout=stdout, rc=rc, **kw)


def docker(match, stdout="", rc=0, **kw):
    return dict(tool="docker", match=match, stdout=stdout, rc=rc, **kw)


COMMON = [
    kubectl(r"^config view --context kind-raftkv --minify", ""),
    kubectl(r"get pods -l " + re.escape(SELECTOR) + " -o jsonpath", "raft-0\nraft-1\nraft-2\n"),
]


def run_script(tmp_path, script, args, scenario, env=None, source=None):
    """Runs `script` (or `source` as that script) with the fake tools first on PATH."""
    work = tmp_path / "fake"
    work.mkdir(exist_ok=True)
    fakecli.install(str(tmp_path / "bin"), ["kubectl", "docker", "tilt"], scenario, str(work))
    path = script
    if source is not None:
        path = str(tmp_path / os.path.basename(script))
        with open(path, "w") as f:
            f.write(source)
        os.chmod(path, 0o755)
    e = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", FAULT_POLL_SECONDS="0.05",
             REVALIDATE_POLL_SECONDS="0.05", FAULT_WAIT_SECONDS="5", REVALIDATE_WAIT_SECONDS="5",
             KIND_CLUSTER_NAME="raftkv")
    for k in ("RAFTKV_KUBE_CONTEXT", "RAFTKV_K8S_NAMESPACE", "RAFTKV_CLIENT_IMAGE"):
        e.pop(k, None)
    e.update(env or {})
    out = subprocess.run([path, *args], capture_output=True, text=True, timeout=60, env=e, cwd=ROOT)
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


@pytest.mark.parametrize("script,args", [(HELPER, [])], ids=["raftkv"])
def test_usage_errors_are_clear(tmp_path, script, args):
    out, _ = run_script(tmp_path, script, args, {"state": {}, "rules": [kubectl(r"^config view", "")]})
    assert out.returncode == 2 and "usage:" in out.stderr

"""tests/docker/podspec.py, which turns the manifests into the Docker rehearsal's
`docker run`: the probes come from the manifest, and a probe whose port names no
container port is refused (the kubelet would probe nothing and never mark the pod
Ready)."""
import os
import sys

import yaml

from conftest import ROOT, run

PODSPEC = os.path.join(ROOT, "tests", "docker", "podspec.py")
STATEFULSET = os.path.join(ROOT, "k8s", "statefulset.yaml")


def podspec(path):
    return run([sys.executable, PODSPEC, path, "StatefulSet", "raft", "raft-0"])


def test_the_probes_come_from_the_manifest():
    r = podspec(STATEFULSET)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "probe readiness 9090 /readyz" in lines, r.stdout
    assert "probe liveness 9090 /livez" in lines, r.stdout


def test_negative_a_probe_on_a_port_no_container_has_is_refused(tmp_path):
    with open(STATEFULSET) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for d in docs:
        if d["kind"] == "StatefulSet":
            d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "admn"
    bad = tmp_path / "statefulset.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    r = podspec(str(bad))
    assert r.returncode != 0, r.stdout
    assert "readinessProbe port 'admn' names no container port" in r.stderr, r.stderr

"""The shell scripts of the dev loop and the rehearsal: syntax and shellcheck. (kind.sh
and k8s/kind/up|down need a kind cluster to run; this is all that can be checked here.)"""
import os

import pytest

from conftest import ROOT, need_tool, run

SCRIPTS = ["k8s/kind/up", "k8s/kind/down", "tests/e2e/kind.sh", "tests/docker/rehearsal.sh",
           "tests/offline/run.sh", "tests/offline/venv.sh", "tests/offline/nix-eval.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_executable_and_parses(script):
    path = os.path.join(ROOT, script)
    assert os.access(path, os.X_OK), f"{script} is not executable"
    r = run(["bash", "-n", path])
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_passes_shellcheck(script):
    need_tool("shellcheck")
    r = run(["shellcheck", "--severity=warning", os.path.join(ROOT, script)])
    assert r.returncode == 0, r.stdout + r.stderr

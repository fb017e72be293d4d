"""Shared fixtures of the offline checks (tests/offline/run.sh runs them)."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))

# The Kubernetes version every manifest is validated against (bundled schemas).
KUBERNETES_VERSION = "1.31.0"


@pytest.fixture
def root():
    return ROOT


def need_tool(name):
    """The path of `name`; a skip with the reason, or under CI=true a failure."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} is not installed (tests/offline/run.sh installs it as root: apt-get install nix-bin)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)

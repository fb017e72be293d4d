"""Shared fixtures of the offline checks (tests/offline/run.sh runs them)."""
import json
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


def need_tool(name, how="tests/offline/run.sh installs it as root: apt-get install nix-bin"):
    """The path of `name`; a skip with the reason, or under CI=true a failure."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} is not installed ({how})"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


_BUILT = {}


def built_executables():
    """{target name: path} of raftkv-server and raftkv, built from this checkout. The
    command is scripts/test-all's (the same packages, so the same features): a no-op
    there, where it ran before the offline checks."""
    if _BUILT:
        return _BUILT
    cargo = need_tool("cargo", "rustup: https://rustup.rs")
    r = subprocess.run([cargo, "build", "-q", "-p", "raftkv", "-p", "raftkv-server",
                        "--message-format=json-render-diagnostics"], cwd=ROOT, capture_output=True, text=True,
                       timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    for line in r.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            _BUILT[msg["target"]["name"]] = msg["executable"]
    return _BUILT


@pytest.fixture(scope="session")
def server_bin():
    """raftkv-server, built from this checkout for its --check-args."""
    exe = built_executables().get("raftkv-server")
    if not exe:
        pytest.fail("cargo built no raftkv-server executable")
    return exe


@pytest.fixture(scope="session")
def cli_bin():
    """The raftkv CLI, built from this checkout (its argument parser checks what the
    fault buttons run)."""
    exe = built_executables().get("raftkv")
    if not exe:
        pytest.fail("cargo built no raftkv executable")
    return exe


# The deployment mutation suite's results (test_mutations.py): name -> caught.
MUTATION_RESULTS = {}


def pytest_terminal_summary(terminalreporter):
    if MUTATION_RESULTS:
        caught = sum(MUTATION_RESULTS.values())
        missed = sorted(n for n, c in MUTATION_RESULTS.items() if not c)
        terminalreporter.write_line(f"deployment mutation suite: {len(MUTATION_RESULTS)} mutants, {caught} caught"
                                    + (f"; missed: {', '.join(missed)}" if missed else ""))

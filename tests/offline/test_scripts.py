"""The shell scripts of the dev loop and the rehearsal: syntax and shellcheck, and the
rules the ones that drive a cluster must keep (kind.sh and k8s/kind/up|down need a
kind cluster to run; this is all that can be checked of them here)."""
import os
import re

import pytest

import deploychecks
from conftest import ROOT, need_tool, run

# Every shell script of the repository, found (deploychecks.discover_scripts: *.sh, a
# bash or sh shebang, or a `# shellcheck shell=` directive), never listed by hand.
SCRIPTS = deploychecks.discover_scripts(ROOT)
# The scripts that talk to a Kubernetes cluster.
CLUSTER_SCRIPTS = ["k8s/kind/up", "k8s/kind/down", "k8s/kind/load-images", "k8s/raftkv", "k8s/tilt/faults",
                   "k8s/tilt/revalidate", "tests/e2e/kind.sh"]
# Where pod deletions are written down for users.
DOCS = ["README.md", "k8s/README.md", "observability/README.md"]


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def test_every_script_is_found():
    """The discovery finds the scripts of every directory, sourced libraries included."""
    for script in ["k8s/kind/up", "k8s/tilt/revalidate", "k8s/raftkv", "tests/e2e/kind.sh", "tests/docker/rehearsal.sh",
                   "tests/offline/run.sh", "tests/lib/wait.sh", "scripts/jepsen", "scripts/fuzz", "scripts/test-all",
                   "bench/compare-etcd.sh", "bench/ab.sh", ".ci/run"]:
        assert script in SCRIPTS, script
    assert not [s for s in SCRIPTS if s.startswith(("target", ".git/")) or s.endswith((".py", ".rs", ".md"))], SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_executable_and_parses(script):
    """A script with a shebang is run, so executable; a sourced library (tests/lib/) not."""
    path = os.path.join(ROOT, script)
    with open(path, "rb") as f:
        if f.read(2) == b"#!":
            assert os.access(path, os.X_OK), f"{script} is not executable"
    r = run(["bash", "-n", path])
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_passes_shellcheck(script):
    need_tool("shellcheck")
    r = run(["shellcheck", "--severity=warning", os.path.join(ROOT, script)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_negative_a_new_or_broken_script_is_found_and_fails(tmp_path):
    """A script nobody listed (no .sh, shebang only) and a sourced library, each with a
    syntax error: found, and refused by bash -n; a shellcheck warning is refused too."""
    need_tool("shellcheck")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "deploy").write_text("#!/usr/bin/env bash\nif true; then echo hi\n")
    (tmp_path / "tools" / "deploy").chmod(0o755)
    (tmp_path / "lib.sh").write_text("# shellcheck shell=bash\nf() { for x in 1; do :; }\n")
    (tmp_path / "notes.txt").write_text("if true; then\n")
    (tmp_path / "warn").write_text('#!/bin/sh\nunused=1\n')
    (tmp_path / "warn").chmod(0o755)
    assert sorted(deploychecks.discover_scripts(str(tmp_path))) == ["lib.sh", "tools/deploy", "warn"]
    problems = deploychecks.script_problems(str(tmp_path))
    assert any(p.startswith("tools/deploy: bash -n:") for p in problems), problems
    assert any(p.startswith("lib.sh: bash -n:") for p in problems), problems
    assert any("warn:2:1: warning: unused appears unused" in p for p in problems), problems
    (tmp_path / "tools" / "deploy").chmod(0o644)
    assert "tools/deploy has a shebang but is not executable" in deploychecks.script_problems(str(tmp_path))


# ---- every kubectl call names its context -------------------------------------------------

def logical_lines(text):
    """Lines with backslash continuations joined, comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        line = re.sub(r"\s#\s.*$", "", line)
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    return out


def kubectl_calls_without_context(text):
    """The kubectl commands in a script that do not say --context (kubectl config ...
    reads the kubeconfig only and is exempt)."""
    out = []
    for line in logical_lines(text):
        if re.match(r"\s*for\s+\w+\s+in\b", line):
            continue  # for cmd in docker kind kubectl: a list of names
        for m in re.finditer(r"(?<![\w/-])kubectl\b([^|;&)]*)", line):
            args = m.group(1).strip()
            if args.startswith("config ") or args.startswith("config\t"):
                continue
            if "--context" not in args:
                out.append(line.strip())
    return out


@pytest.mark.parametrize("script", CLUSTER_SCRIPTS)
def test_every_kubectl_call_names_its_context(script):
    assert kubectl_calls_without_context(read(script)) == []


def test_negative_a_kubectl_call_without_context_is_caught():
    """kind.sh before the fix built its client Pods with a context-less kubectl."""
    src = read("tests/e2e/kind.sh")
    old = 'kubectl --context "$ctx" create --dry-run=client -o json -f'
    assert old in src
    bad = src.replace(old, "kubectl create --dry-run=client -o json -f")
    found = kubectl_calls_without_context(bad)
    assert len(found) == 1 and "create --dry-run=client" in found[0]
    # A wrapper that forgets it is caught too.
    assert kubectl_calls_without_context('k() { kubectl --namespace "$ns" "$@"; }\n')
    assert kubectl_calls_without_context("kubectl config get-contexts x\nfor c in kubectl jq; do :; done\n") == []


# ---- a node is cordoned before it is stopped, uncordoned after it is back -------------------

# The commands (not messages that mention them) of kind.sh, and the rehearsal's
# emulation of them (its node functions; their definitions are not calls).
KIND_NODE_COMMANDS = dict(stop=r"(^|[;&|(])\s*docker stop\b", cordon=r"\bkubectl\b.*\scordon\s",
                          start=r"(^|[;&|(])\s*docker start\b", uncordon=r"\bkubectl\b.*\suncordon\s")
REHEARSAL_NODE_COMMANDS = dict(stop=r"^\s*stop_node\s", cordon=r"^\s*cordon_node\s",
                               start=r"^\s*start_node\s", uncordon=r"^\s*uncordon_node\s")


def cordon_order_problems(text, commands=KIND_NODE_COMMANDS):
    lines = logical_lines(text)

    def first(pattern, after=-1):
        return next((i for i, line in enumerate(lines) if i > after and re.search(pattern, line)), None)

    stop = first(commands["stop"])
    if stop is None:
        return ["no node is stopped"]
    problems = []
    cordon = first(commands["cordon"])
    if cordon is None or cordon > stop:
        problems.append("the node is stopped before it is cordoned: a Pod can be bound to it while it still looks Ready")
    start = first(commands["start"], after=stop)
    uncordon = first(commands["uncordon"], after=stop)
    if start is None or uncordon is None or uncordon < start:
        problems.append("the node is not uncordoned after it is started again")
    return problems


def test_kind_sh_cordons_before_it_stops_a_node():
    assert cordon_order_problems(read("tests/e2e/kind.sh")) == []


def test_the_rehearsal_cordons_before_it_stops_a_node():
    assert cordon_order_problems(read("tests/docker/rehearsal.sh"), REHEARSAL_NODE_COMMANDS) == []


def test_negative_stop_without_cordon_is_caught():
    src = read("tests/e2e/kind.sh")
    line = 'kubectl --context "$ctx" cordon "$node" >/dev/null\n'
    assert line in src
    problems = cordon_order_problems(src.replace(line, "", 1))
    assert any("stopped before it is cordoned" in p for p in problems)
    src = read("tests/docker/rehearsal.sh")
    line = 'cordon_node "$lost_node"\n'
    assert line in src
    problems = cordon_order_problems(src.replace(line, "", 1), REHEARSAL_NODE_COMMANDS)
    assert any("stopped before it is cordoned" in p for p in problems)


# ---- no pod is force-deleted, in the scripts or in the docs ---------------------------------

def force_deletes(text):
    return [line.strip() for line in logical_lines(text)
            if re.search(r"\bdelete\s+(pod|pods|po)\b", line) and re.search(r"--force\b|--grace-period[= ]0\b", line)]


@pytest.mark.parametrize("path", CLUSTER_SCRIPTS + DOCS)
def test_no_pod_is_force_deleted(path):
    # In the docs, command lines sit in code blocks and inline code; logical_lines keeps them.
    assert force_deletes(read(path)) == []


def test_negative_a_force_delete_is_caught():
    """kind.sh and observability/README.md before the fix."""
    assert force_deletes('k delete pod "$pod" --grace-period=0 --force >/dev/null 2>&1\n')
    assert force_deletes("1. Kill the leader: `kubectl delete pod raft-1 --grace-period=0 --force` (or\n")


# `trap CMD ... INT TERM`: bash runs CMD on the signal and then goes on with the script,
# so a cleanup trap that does not exit leaves a Ctrl-C'd benchmark running against the
# servers it has just stopped (bench/compare-etcd.sh did so until 2026-12-06).
TRAP = re.compile(r"""^\s*trap\s+(?P<cmd>'[^']*'|"[^"]*"|\S+)\s+(?P<signals>[^#\n]*)""", re.M)


def signal_traps_that_go_on(text):
    """The traps on INT or TERM whose command does not exit."""
    found = []
    for m in TRAP.finditer(text):
        signals = {s.removeprefix("SIG") for s in m.group("signals").split()}
        if signals & {"INT", "TERM"} and not re.search(r"\bexit\b", m.group("cmd")):
            found.append(m.group(0).strip())
    return found


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_interrupt_ends_the_script(script):
    assert not signal_traps_that_go_on(read(script)), f"{script}: a trap on INT/TERM must exit"


def test_negative_a_trap_that_cleans_up_and_goes_on_is_caught():
    assert signal_traps_that_go_on("trap cleanup EXIT INT TERM\n") == ["trap cleanup EXIT INT TERM"]
    assert signal_traps_that_go_on("  trap 'stop; rm -rf \"$d\"' EXIT SIGTERM\n") == ["trap 'stop; rm -rf \"$d\"' EXIT SIGTERM"]
    assert signal_traps_that_go_on("trap cleanup EXIT\ntrap 'exit 130' INT TERM\n") == []
    assert signal_traps_that_go_on("trap 'rm -rf \"$work\"' EXIT\n") == []

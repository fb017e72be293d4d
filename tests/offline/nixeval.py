"""Evaluating flake.nix offline with Nix >= 2.18 (tests/offline/nix-eval.sh: Debian 13's
Nix 2.26 in a chroot), against nixpkgs 26.05's real lib with stubs of its derivation
builders (nixpkgs-standin/) and crane's real source at the pinned rev. Nothing is built.

A stage is a directory the evaluation sees (at /stage in the chroot):
  repo/      the files of this checkout that git tracks or would track (never target/)
  standin/   nixpkgs-standin/ plus nixpkgs' lib/ (../shared/nix/nixpkgs-lib-26.05) and
             the rustc version the stand-in reports
  crane/     ../shared/nix/crane-v0.23.4
  harness/   nix-harness/ (a flake whose `report` describes raftkv's outputs)"""
import json
import os
import shutil
import subprocess

import pytest

from conftest import ROOT

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "nix"))
NIXPKGS_LIB = os.path.join(SHARED, "nixpkgs-lib-26.05", "lib")
CRANE = os.path.join(SHARED, "crane-v0.23.4")
NIX_EVAL = os.path.join(HERE, "nix-eval.sh")
# One evaluation, after the chroot exists, takes seconds; the bound is generous.
TIMEOUT = 120

OVERRIDES = ["--override-input", "nixpkgs", "path:@STAGE@/standin",
             "--override-input", "crane", "path:@STAGE@/crane"]


def status():
    r = subprocess.run([NIX_EVAL, "status"], capture_output=True, text=True, timeout=TIMEOUT)
    return r.stdout.strip()


def skip_or_fail(reason):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true requires it: tests/offline/run.sh installs it as root)")
    pytest.skip(f"SKIPPED: {reason}")


def need_real_evaluation():
    """Skips (fails under CI=true) unless ../shared/nix is here and Nix >= 2.18 runs in
    the chroot. Returns the Nix version."""
    missing = [p for p in (NIXPKGS_LIB, CRANE) if not os.path.isdir(p)]
    if missing:
        skip_or_fail(f"{', '.join(missing)} missing (../shared/nix is not beside this checkout)")
    s = status()
    if not s.startswith("chroot "):
        skip_or_fail(f"no Nix >= 2.18 for evaluating against nixpkgs 26.05's lib ({s}); the host's "
                     "Nix 2.8 (Debian 12) fails on that lib at once (no builtins.readFileType), so only the "
                     "parse check ran, with it")
    return s.split()[1]


def tracked_files():
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
    return [f for f in r.stdout.split("\0") if f and os.path.isfile(os.path.join(ROOT, f))]


def make_stage(path, edits=None, rustc="1.95.0", source=ROOT):
    """A stage under `path`; `edits` maps a repo file to a function of its text. The
    repo's files are this checkout's tracked files, read from `source` (a copy of it)."""
    os.makedirs(path)
    repo = os.path.join(path, "repo")
    for f in tracked_files():
        os.makedirs(os.path.join(repo, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(os.path.join(source, f), os.path.join(repo, f))
    for f, edit in (edits or {}).items():
        with open(os.path.join(repo, f)) as fh:
            text = fh.read()
        new = edit(text)
        assert new != text, f"the edit of {f} changed nothing"
        with open(os.path.join(repo, f), "w") as fh:
            fh.write(new)
    standin = os.path.join(path, "standin")
    shutil.copytree(os.path.join(HERE, "nixpkgs-standin"), standin)
    shutil.copytree(NIXPKGS_LIB, os.path.join(standin, "lib"))
    with open(os.path.join(standin, "rustc-version"), "w") as fh:
        fh.write(rustc + "\n")
    shutil.copytree(CRANE, os.path.join(path, "crane"))
    shutil.copytree(os.path.join(HERE, "nix-harness"), os.path.join(path, "harness"))
    return path


def nix(stage, *args):
    return subprocess.run([NIX_EVAL, "run", stage, "nix", *args], capture_output=True, text=True,
                          timeout=TIMEOUT)


def flake_check(stage):
    """`nix flake check --no-build --all-systems` of the staged repo: evaluates every
    output of both systems and instantiates every derivation."""
    return nix(stage, "flake", "check", "--no-build", "--all-systems", "--no-write-lock-file", *OVERRIDES,
               "path:@STAGE@/repo")


def report(stage):
    """(CompletedProcess, the harness's report or None)."""
    r = nix(stage, "eval", "--json", "--no-write-lock-file", *OVERRIDES,
            "--override-input", "raftkv", "path:@STAGE@/repo", "path:@STAGE@/harness#report")
    return r, (json.loads(r.stdout) if r.returncode == 0 else None)

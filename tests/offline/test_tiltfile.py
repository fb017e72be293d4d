"""The Tiltfile, evaluated by a Starlark interpreter against stubs of Tilt's builtins
(tiltstub.py): a check of what it asks Tilt for, not a run of Tilt."""
import os
import subprocess
import re

import pytest
import yaml

import nixeval
import tiltstub
from conftest import ROOT

TILTFILE = os.path.join(ROOT, "Tiltfile")


@pytest.fixture(scope="module")
def rec():
    return tiltstub.evaluate(TILTFILE, ROOT)


def mutated(old, new):
    with open(TILTFILE) as f:
        src = f.read()
    assert old in src, f"the Tiltfile no longer contains {old!r}; update this negative test"
    return src.replace(old, new, 1)


def test_tiltfile_passes_all_repository_checks(rec):
    assert tiltstub.problems(rec, ROOT) == []


def test_kind_context_matches_the_kind_cluster(rec):
    with open(os.path.join(ROOT, "k8s/kind/cluster.yaml")) as f:
        cluster = yaml.safe_load(f)
    assert f"kind-{cluster['name']}" in rec.contexts


def test_images_are_nix_builds_pushed_by_skopeo_to_the_expected_ref(rec):
    flake_attrs = {}
    for b in rec.builds:
        assert b["skips_local_docker"] is True, b["ref"]
        assert "$EXPECTED_REF" in b["command"]
        assert "skopeo copy" in b["command"] and "docker-archive:/dev/stdin" in b["command"]
        m = re.search(r"nix build \S*\.#([A-Za-z0-9_-]+)", b["command"])
        assert m, b["command"]
        flake_attrs[b["ref"]] = m.group(1)
        for d in ["crates", "Cargo.toml", "Cargo.lock", "flake.nix", "flake.lock"]:
            assert d in b["deps"], (b["ref"], d)
        assert not b["live_update"], "a shell-less image cannot live-update"
    assert flake_attrs == {"raftkv-server": "server-image", "raftkv-client": "client-image"}

def untracked_guard(command):
    """The part of an image build's command before it makes the image."""
    return command[:command.index('out="$(mktemp')].rstrip(" &")


@pytest.mark.parametrize("untracked", [None, "crates/server/src/new_module.rs", "Cargo.lock"])
def test_image_build_refuses_untracked_sources_naming_them(rec, tmp_path, untracked):
    """Run for real in a scratch git repository: an un-added source file stops the build
    with a message naming it (nix build would not see it); tracked files pass."""
    repo = tmp_path / "repo"
    (repo / "crates/server/src").mkdir(parents=True)
    (repo / "crates/server/src/lib.rs").write_text("")
    (repo / "k8s").mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "crates"], check=True)
    (repo / "k8s/notes.txt").write_text("not an image input")
    if untracked:
        (repo / untracked).write_text("")
    for b in rec.builds:
        r = subprocess.run(["bash", "-c", untracked_guard(b["command"])], cwd=repo, capture_output=True, text=True)
        if untracked:
            assert r.returncode != 0 and "git add" in r.stderr and untracked in r.stderr, (b["ref"], r.stderr)
        else:
            assert r.returncode == 0, (b["ref"], r.stderr)


def test_the_flake_has_the_images_the_tiltfile_builds(rec, tmp_path):
    """Evaluated for real (tests/offline/nixeval.py: Nix >= 2.18, nixpkgs' real lib)."""
    nixeval.need_real_evaluation()
    r, report = nixeval.report(nixeval.make_stage(str(tmp_path / "stage")))
    assert r.returncode == 0, r.stderr[-3000:]
    for b in rec.builds:
        attr = re.search(r"nix build \S*\.#([A-Za-z0-9_-]+)", b["command"]).group(1)
        assert report["images"][attr]["name"] == b["ref"]


def test_every_yaml_of_k8s_and_observability_is_deployed(rec):
    deployed = {os.path.relpath(os.path.join(ROOT, y), ROOT) if not os.path.isabs(y) else os.path.relpath(y, ROOT)
                for y in rec.yaml_files}
    for d in ["k8s", "observability"]:
        if not os.path.isdir(os.path.join(ROOT, d)):
            continue
        for f in os.listdir(os.path.join(ROOT, d)):
            if f.endswith((".yaml", ".yml")) and tiltstub.is_manifest_file(os.path.join(ROOT, d, f)):
                assert f"{d}/{f}" in deployed, f"{d}/{f} is not passed to k8s_yaml"


def test_resources_labels_port_forwards_and_manual_validation(rec):
    by = {r["workload"]: r for r in rec.resources}
    assert by["raft"]["labels"] == ["raft"]
    assert by["raft-validate"]["labels"] == ["client"]
    assert by["raft-validate"]["trigger_mode"] == tiltstub.TRIGGER_MODE_MANUAL
    assert "raft" in by["raft-validate"]["resource_deps"]
    assert 6000 in [p["container_port"] for p in by["raft"]["port_forwards"]]
    if os.path.isdir(os.path.join(ROOT, "observability")):
        assert by["jaeger"]["labels"] == ["observability"]
        assert 16686 in [p["container_port"] for p in by["jaeger"]["port_forwards"]]
    tests = {r["name"]: r for r in rec.local_resources}
    assert tests["cargo-test"]["cmd"].startswith("cargo test")
    assert tests["cargo-test"]["trigger_mode"] == tiltstub.TRIGGER_MODE_AUTO


# ---- the checker catches bad Tiltfiles ----

def test_negative_unknown_keyword_argument_is_rejected():
    src = mutated("skips_local_docker=True", "skip_local_docker=True")
    with pytest.raises(Exception, match="skip_local_docker"):
        tiltstub.evaluate(TILTFILE, ROOT, source=src)


def test_negative_unknown_builtin_is_rejected():
    src = mutated("k8s_yaml(RAFT_YAML)", "k8s_yml(RAFT_YAML)")
    with pytest.raises(Exception, match="k8s_yml"):
        tiltstub.evaluate(TILTFILE, ROOT, source=src)


def test_negative_resource_naming_no_workload_is_reported():
    rec = tiltstub.evaluate(TILTFILE, ROOT, source=mutated("'raft-validate',\n", "'raft-validation',\n"))
    assert any("'raft-validation' names no workload" in p for p in tiltstub.problems(rec, ROOT))


def test_negative_missing_deps_path_and_yaml_are_reported():
    src = mutated("'flake.lock']", "'flake.lok']").replace("'k8s/pdb.yaml'", "'k8s/pdb.yml'")
    msgs = tiltstub.problems(tiltstub.evaluate(TILTFILE, ROOT, source=src), ROOT)
    assert any("deps path flake.lok does not exist" in p for p in msgs), msgs
    assert any("k8s/pdb.yml does not exist" in p for p in msgs), msgs


def test_negative_image_used_by_no_manifest_is_reported():
    rec = tiltstub.evaluate(TILTFILE, ROOT, source=mutated("nix_image('raftkv-client'", "nix_image('raftkv-cli'"))
    assert any("raftkv-cli: no manifest" in p for p in tiltstub.problems(rec, ROOT))


def test_negative_k8s_yaml_of_a_non_manifest_is_rejected(tmp_path):
    snippet = tmp_path / "snippet.yaml"
    snippet.write_text("raftkv-server:\n  - name: X\n    value: y\n")
    with pytest.raises(Exception, match="holds no Kubernetes objects"):
        tiltstub.evaluate(TILTFILE, ROOT, source=mutated("k8s_yaml(RAFT_YAML)", f"k8s_yaml(RAFT_YAML + ['{snippet}'])"))

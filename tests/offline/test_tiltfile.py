"""The Tiltfile, evaluated by a Starlark interpreter against stubs of Tilt's builtins
(tiltstub.py): a check of what it asks Tilt for, not a run of Tilt."""
import os
import shutil
import subprocess
import re

import pytest
import yaml

import deploychecks
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

def test_image_builds_push_what_nix_built_to_the_ref_tilt_expects(rec, tmp_path):
    """Each build command run against stand-ins of nix and skopeo (deploychecks.
    image_build_problems): skopeo gets the archive the nix build's --out-link streams and
    copies it to docker://$EXPECTED_REF; no ./result or temporary directory is left. The
    mutation suite shows it failing without --out-link and with a docker-daemon: push."""
    assert deploychecks.image_build_problems(rec, str(tmp_path)) == []


def test_port_forwards_and_triggers_pass_the_checks(rec):
    """tiltstub.problems: every port_forward goes to a port a container of the resource
    has; the serving workloads (raft, jaeger) deploy on `tilt up` and on every change."""
    by = resources_by_name(rec)
    for name in ("raft", "jaeger"):
        r = by[name]
        assert r["trigger_mode"] == tiltstub.TRIGGER_MODE_AUTO and r["auto_init"] is True, name
    assert tiltstub.problems(rec, ROOT) == []


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
                # k8s/validate-pod.yaml is deployed as the template of the validation Job.
                assert f"{d}/{f}" in deployed or f"{d}/{f}" in rec.read_yaml_files, \
                    f"{d}/{f} is not passed to k8s_yaml"


def resources_by_name(rec):
    return {r["new_name"] or r["workload"]: r for r in rec.resources}


def test_resources_labels_port_forwards_and_manual_validation(rec):
    by = resources_by_name(rec)
    assert by["raft"]["labels"] == ["raft"]
    assert by["raft-validate"]["labels"] == ["client"]
    assert by["raft-validate"]["trigger_mode"] == tiltstub.TRIGGER_MODE_MANUAL
    assert "raft" in by["raft-validate"]["resource_deps"]
    assert 6000 in [p["container_port"] for p in by["raft"]["port_forwards"]]
    if os.path.isdir(os.path.join(ROOT, "observability")):
        assert by["jaeger"]["labels"] == ["observability"]
        assert 16686 in [p["container_port"] for p in by["jaeger"]["port_forwards"]]


def test_every_object_of_the_yaml_belongs_to_its_resource(rec):
    by = resources_by_name(rec)
    assert "raft:poddisruptionbudget" in by["raft"]["objects"]
    if os.path.isdir(os.path.join(ROOT, "observability")):
        assert "jaeger-config:configmap" in by["jaeger"]["objects"]
    assert not [p for p in tiltstub.problems(rec, ROOT) if "in no resource" in p]


def validation_jobs(rec):
    return [d for t in rec.yaml_blobs for d in yaml.safe_load_all(t) if d and d["kind"] == "Job"]


def test_validation_is_a_job_from_the_validation_pod_named_per_tilt_up(rec, tmp_path):
    jobs = validation_jobs(rec)
    assert len(jobs) == 1
    job = jobs[0]
    with open(os.path.join(ROOT, "k8s", "validate-pod.yaml")) as f:
        pod = yaml.safe_load(f)
    assert job["spec"]["template"]["spec"] == pod["spec"], "the Job must run exactly k8s/validate-pod.yaml's Pod"
    assert job["spec"]["template"]["metadata"]["labels"] == pod["metadata"]["labels"]
    assert job["spec"]["backoffLimit"] == 0, "a failed validation is a result, not something to retry"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["metadata"]["name"] == "raft-validate-20260101-000000"
    assert resources_by_name(rec)["raft-validate"]["workload"] == job["metadata"]["name"]
    # Another load (another `tilt up`), another Job: Tilt creates it and it runs afresh.
    later = tiltstub.evaluate(TILTFILE, ROOT, local_outputs={"date -u +%Y%m%d-%H%M%S": "20260101-000007\n"})
    assert validation_jobs(later)[0]["metadata"]["name"] == "raft-validate-20260101-000007"
    assert tiltstub.problems(later, ROOT) == []
    # It is a valid Job for the pinned Kubernetes version.
    from test_manifests import kubernetes_validate
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(job))
    out = kubernetes_validate(str(f))
    assert out.returncode == 0, out.stdout + out.stderr


def test_server_rebuilds_revalidate_after_the_rollout(rec):
    by = {r["name"]: r for r in rec.local_resources}
    reval = by["raft-revalidate"]
    image_deps = {d for b in rec.builds for d in b["deps"]}
    assert set(reval["deps"]) == image_deps, "raft-revalidate must run on every change that rebuilds the images"
    assert reval["trigger_mode"] == tiltstub.TRIGGER_MODE_AUTO and reval["auto_init"] is False
    assert reval["allow_parallel"] is True, "it waits for the raft build, which must be able to run meanwhile"
    assert reval["cmd"] == "k8s/tilt/revalidate"
    assert rec.update_settings.get("max_parallel_updates", 3) >= 3


def test_fault_buttons(rec):
    """The kill/stop buttons (k8s/tilt/faults) and the `raftkv fault` buttons
    (k8s/tilt/inject; test_devloop_scripts.py runs each against a stand-in raftkv)."""
    faults = [r for r in rec.local_resources if r["labels"] == ["faults"]]
    assert sorted(r["name"] for r in faults) == [
        "fault-heal-all", "fault-kill-leader", "fault-partition-leader-10s", "fault-pause-follower-3s",
        "fault-restore", "fault-slow-fsync-leader", "fault-stop-follower-node"]
    for r in faults:
        assert r["trigger_mode"] == tiltstub.TRIGGER_MODE_MANUAL and r["auto_init"] is False, r["name"]
        assert r["allow_parallel"] is True, f"{r['name']} would hold every other update while it waits"
        words = r["cmd"].split()
        assert words[0] in ("k8s/tilt/faults", "k8s/tilt/inject"), r["cmd"]
        with open(os.path.join(ROOT, words[0])) as f:
            script = f.read()
        assert f"\n  {words[1]}) " in script, f"{words[0]} has no action {words[1]}"
        if words[0] == "k8s/tilt/inject":
            # They reach the servers through the raft resource's port-forward.
            assert "raft" in r["resource_deps"], r["name"]


def test_tilt_deployed_servers_enable_faults_and_differ_from_the_base_only_there(rec, server_bin):
    """The servers Tilt deploys resolve `faults on` through the server's own parser (the
    fault buttons need it), and are k8s/statefulset.yaml's with --enable-faults added,
    nothing else; the base manifest stays off (test_manifests.py). The mutation suite
    shows this failing without the flag and with it misspelt."""
    assert deploychecks.tilt_fault_problems(ROOT, server_bin) == []
    tilt = [d for t in rec.yaml_blobs for d in yaml.safe_load_all(t) if d and d["kind"] == "StatefulSet"]
    with open(os.path.join(ROOT, "k8s", "statefulset.yaml")) as f:
        base = yaml.safe_load(f)
    assert "k8s/statefulset.yaml" not in rec.yaml_files, "the base manifest is deployed as it is, faults off"
    assert len(tilt) == 1
    c = base["spec"]["template"]["spec"]["containers"][0]
    c["args"].append("--enable-faults")
    assert tilt[0] == base


def test_negative_a_tiltfile_deploying_the_base_servers_is_caught(server_bin, tmp_path):
    src = mutated("k8s_yaml(encode_yaml(with_faults_enabled(read_yaml('k8s/statefulset.yaml'))))",
                  "k8s_yaml('k8s/statefulset.yaml')")
    shutil.copytree(ROOT, tmp_path / "repo", ignore=shutil.ignore_patterns(".git", "target", "target-*"))
    (tmp_path / "repo" / "Tiltfile").write_text(src)
    problems = deploychecks.tilt_fault_problems(str(tmp_path / "repo"), server_bin)
    assert len(problems) == 1 and "faults off" in problems[0], problems


def test_tests_fast_on_save_full_on_a_click(rec):
    tests = {r["name"]: r for r in rec.local_resources if r["labels"] == ["tests"]}
    fast, full = tests["cargo-test"], tests["cargo-test-full"]
    # The fast tier is plain `cargo test --workspace` (the fault tier's targets require a
    # feature of tests/Cargo.toml); the full suite adds the fault tier.
    assert fast["cmd"] == "cargo test --workspace" and fast["trigger_mode"] == tiltstub.TRIGGER_MODE_AUTO
    assert "tests/Cargo.toml" in fast["deps"] and "crates" in fast["deps"]
    assert full["cmd"] == "cargo test --workspace && cargo xtask test-fault"
    assert full["trigger_mode"] == tiltstub.TRIGGER_MODE_MANUAL and full["auto_init"] is False


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
    rec = tiltstub.evaluate(TILTFILE, ROOT, source=mutated("k8s_resource(\n    'raft',\n", "k8s_resource(\n    'raft-server',\n"))
    assert any("'raft-server' names no workload" in p for p in tiltstub.problems(rec, ROOT))


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


def test_negative_objects_left_uncategorized_are_reported():
    """The Tiltfile before the fix: no objects= on raft and jaeger."""
    src = mutated("        objects=['jaeger-config:configmap'],\n", "")
    src = src.replace("    objects=['raft:poddisruptionbudget'],\n", "", 1)
    msgs = tiltstub.problems(tiltstub.evaluate(TILTFILE, ROOT, source=src), ROOT)
    assert any(p.startswith("PodDisruptionBudget raft is in no resource") for p in msgs), msgs
    assert any(p.startswith("ConfigMap jaeger-config is in no resource") for p in msgs), msgs


def test_negative_objects_naming_nothing_or_two_things_are_reported():
    msgs = tiltstub.problems(tiltstub.evaluate(TILTFILE, ROOT, source=mutated(
        "objects=['raft:poddisruptionbudget']", "objects=['raft:pdb']")), ROOT)
    assert any("objects 'raft:pdb' names no object" in p for p in msgs), msgs
    msgs = tiltstub.problems(tiltstub.evaluate(TILTFILE, ROOT, source=mutated(
        "objects=['raft:poddisruptionbudget']", "objects=['raft']")), ROOT)
    assert any("objects 'raft' is not unique" in p for p in msgs), msgs


def test_negative_a_blocking_local_resource_on_the_image_sources_is_reported():
    src = mutated("    cmd='cargo test --workspace',\n    deps=TEST_DEPS,\n    allow_parallel=True,\n",
                  "    cmd='cargo test --workspace',\n    deps=TEST_DEPS,\n")
    msgs = tiltstub.problems(tiltstub.evaluate(TILTFILE, ROOT, source=src), ROOT)
    assert any("cargo-test runs on changes to the images' sources without allow_parallel" in p for p in msgs), msgs


def test_negative_a_local_resource_naming_a_missing_script_is_reported():
    src = mutated("cmd='k8s/tilt/revalidate'", "cmd='k8s/tilt/re-validate'")
    msgs = tiltstub.problems(tiltstub.evaluate(TILTFILE, ROOT, source=src), ROOT)
    assert any("cmd k8s/tilt/re-validate is not an executable file" in p for p in msgs), msgs


def test_negative_the_stub_runs_no_command_it_was_not_given():
    with pytest.raises(Exception, match="runs no command"):
        tiltstub.evaluate(TILTFILE, ROOT, local_outputs={})

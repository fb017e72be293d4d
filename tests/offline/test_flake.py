"""flake.nix and flake.lock, offline, without `nix build`.

The evaluation is as real as this machine allows (nixeval.py): Nix 2.26 (Debian 13's,
in a chroot: nixpkgs 26.05 needs >= 2.18) runs `nix flake check --no-build
--all-systems`, which evaluates every output of both systems and instantiates every
derivation, against nixpkgs 26.05's real lib/ with stubs only for the derivation
builders (taking nixpkgs' argument sets), and crane's real source at the pinned rev.
No network: the evaluation runs in a network namespace of its own. What it cannot show:
that the derivations build (nothing is realised) and that packages other than the
builders behave as nixpkgs' do (they are named stand-ins)."""
import json
import os
import re
import time

import pytest
import yaml

import deploychecks
import nixeval
from conftest import ROOT, need_tool, run

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

SYSTEMS = ["x86_64-linux", "aarch64-linux"]
OUTPUTS = {
    "packages": ["raftkv", "default", "raftkv-deps", "server-image", "client-image"],
    "checks": ["tests", "raftkv", "server-image", "client-image"],
    "devShells": ["default"],
}
# Bound on one evaluation once the chroot exists (the issue asks for under a minute).
FAST = 60


@pytest.fixture(scope="module")
def nix_version():
    return nixeval.need_real_evaluation()


@pytest.fixture(scope="module")
def checked(nix_version, tmp_path_factory):
    stage = nixeval.make_stage(str(tmp_path_factory.mktemp("flake") / "stage"))
    started = time.monotonic()
    r = nixeval.flake_check(stage)
    return r, time.monotonic() - started


@pytest.fixture(scope="module")
def report(nix_version, tmp_path_factory):
    stage = nixeval.make_stage(str(tmp_path_factory.mktemp("report") / "stage"))
    r, rep = nixeval.report(stage)
    assert r.returncode == 0, r.stderr[-4000:]
    return rep


def k8s(kind, name):
    for f in ("statefulset.yaml", "validate-pod.yaml"):
        with open(os.path.join(ROOT, "k8s", f)) as fh:
            for d in yaml.safe_load_all(fh):
                if d and d["kind"] == kind and d["metadata"]["name"] == name:
                    return d
    raise KeyError(name)


def flake_src():
    with open(os.path.join(ROOT, "flake.nix")) as f:
        return f.read()


def replace_once(old, new):
    def edit(text):
        assert old in text, f"flake.nix no longer contains {old!r}; update this negative test"
        return text.replace(old, new, 1)
    return edit


# ---- syntax and lock ----

def test_flake_nix_parses():
    need_tool("nix-instantiate")
    r = run(["nix-instantiate", "--parse", os.path.join(ROOT, "flake.nix")])
    assert r.returncode == 0, r.stderr


def test_flake_lock_pins_nixpkgs_and_crane():
    with open(os.path.join(ROOT, "flake.lock")) as f:
        lock = json.load(f)
    assert lock["version"] == 7
    assert lock["nodes"][lock["root"]]["inputs"] == {"nixpkgs": "nixpkgs", "crane": "crane"}
    src = flake_src()
    for name, owner, repo in [("nixpkgs", "NixOS", "nixpkgs"), ("crane", "ipetkov", "crane")]:
        node = lock["nodes"][name]
        locked = node["locked"]
        assert locked["type"] == "github" and locked["owner"] == owner and locked["repo"] == repo
        assert re.fullmatch(r"[0-9a-f]{40}", locked["rev"])
        assert re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", locked["narHash"])
        assert isinstance(locked["lastModified"], int)
        # The lock's `original` must be the flake's input, or Nix re-locks (over the network).
        url = re.search(rf'inputs\.{name}\.url\s*=\s*"([^"]+)"', src).group(1)
        o, r, ref = url.removeprefix("github:").split("/")
        assert node["original"] == {"owner": o, "repo": r, "ref": ref, "type": "github"}


def test_flake_lock_is_the_verified_pins():
    shared = nixeval.SHARED
    if not os.path.isdir(shared):
        pytest.skip("SKIPPED: ../shared/nix is not beside this checkout")
    with open(os.path.join(shared, "flake.lock.nixpkgs.json")) as a, open(os.path.join(ROOT, "flake.lock")) as b:
        pinned, lock = json.load(a), json.load(b)
    assert lock["nodes"]["nixpkgs"] == pinned["nodes"]["nixpkgs"]
    with open(os.path.join(shared, "crane.md")) as f:
        md = f.read()
    crane = lock["nodes"]["crane"]["locked"]
    assert re.search(rf"rev\s+{crane['rev']}", md)
    assert re.search(rf"narHash\s+{re.escape(crane['narHash'])}", md)
    assert re.search(rf"lastModified\s+{crane['lastModified']}", md)


def test_msrv_is_not_newer_than_the_pinned_rustc():
    assert tomllib, "Python 3.11+ needed for tomllib"
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        msrv = tomllib.load(f)["workspace"]["package"]["rust-version"]
    # nixos-26.05 has rustc 1.95 (shared/nix/README.md).
    assert tuple(map(int, msrv.split("."))) <= (1, 95)


# ---- the evaluation ----

def test_nix_is_at_least_2_18(nix_version):
    assert tuple(map(int, nix_version.split(".")[:2])) >= (2, 18), nix_version


def test_flake_check_evaluates_and_instantiates_every_output_of_both_systems(checked):
    r, seconds = checked
    assert r.returncode == 0, r.stderr[-4000:]
    evaluated = re.findall(r"checking derivation (\S+)\.\.\.\nderivation evaluated to (/nix/store/\S+\.drv)", r.stderr)
    got = {name for name, _ in evaluated}
    want = {f"{out}.{s}.{n}" for out, ns in OUTPUTS.items() for s in SYSTEMS for n in ns}
    want |= {f"formatter.{s}" for s in SYSTEMS}
    assert want <= got, f"not instantiated: {sorted(want - got)}"
    assert seconds < FAST, f"the flake check took {seconds:.0f} s"


def test_report_has_every_output_of_both_systems(report):
    assert report["outputNames"] == ["checks", "devShells", "formatter", "packages"]
    assert sorted(report["systems"]) == sorted(SYSTEMS), "Linux only (README says so)"
    for s in SYSTEMS:
        for out, names in OUTPUTS.items():
            assert set(report["drvs"][s][out]) == set(names), (s, out)
        assert report["drvs"][s]["formatter"].endswith(".drv")


def test_static_package_is_a_musl_cross_build_of_the_two_binaries_on_cached_deps(report):
    p = report["raftkv"]
    assert p["pname"] == "raftkv" and p["mainProgram"] == "raftkv"
    assert "--package raftkv-server --package raftkv" in p["buildPhase"]
    assert "--locked" in p["buildPhase"]
    assert p["doCheck"] is False
    assert p["CARGO_BUILD_TARGET"] == p["depsTarget"] == "x86_64-unknown-linux-musl"
    assert p["rustcTargets"] == ["x86_64-unknown-linux-musl"], "the cross rustc (musl std) builds it"
    for s in SYSTEMS:
        d = report["drvs"][s]["packages"]
        assert d["default"] == d["raftkv"]
        assert report["deps"][s]["static"] == d["raftkv-deps"], "the package builds on the deps derivation"


def test_source_holds_exactly_what_cargo_reads(report):
    src = report["raftkv"]["src"]
    assert sorted(src) == ["Cargo.lock", "Cargo.toml", "crates", "rustfmt.toml", "tests"]
    assert sorted(src["tests"]) == ["Cargo.toml", "src", "tests"]
    assert "lib.rs" in src["crates"]["server"]["src"] and "admin.rs" in src["crates"]["server"]["src"]


@pytest.mark.parametrize("attr,kind,name", [("server-image", "StatefulSet", "raft"), ("client-image", "Pod", "raft-validate")])
def test_images_match_the_manifests(report, attr, kind, name):
    img = report["images"][attr]
    d = k8s(kind, name)
    pod = d["spec"] if kind == "Pod" else d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == f"{img['name']}:{img['tag']}"
    assert "command" not in c, "the manifests rely on the image's Entrypoint"
    cfg = img["config"]
    binary = os.path.basename(cfg["Entrypoint"][0])
    assert cfg["Entrypoint"] == [f"/bin/{binary}"]
    assert binary == ("raftkv-server" if attr == "server-image" else "raftkv")
    uid = cfg["User"].split(":")[0]
    assert uid != "0" and int(uid) == pod["securityContext"]["runAsUser"]
    assert img["created"] == "1970-01-01T00:00:01Z", "a fixed creation date keeps the image reproducible"
    assert img["contents"] == ["raftkv"], "no shell or package manager: the image holds raftkv only"
    assert set(cfg["ExposedPorts"]) == {f"{p['containerPort']}/tcp" for p in c.get("ports", [])}
    assert "nonroot:x:65532:65532" in img["extraCommands"]
    assert "chown 65532:65532 data" in img["fakeRootCommands"] and "chmod 0700 data" in img["fakeRootCommands"]


def test_image_configs_agree_with_the_manifests_and_the_rehearsal(report):
    """deploychecks.image_problems: User (no uid or gid 0, the pods' runAsUser/Group),
    WorkingDir /data, /data owned by the user with mode 0700 (as the image check and the
    rehearsal have it), ExposedPorts an OCI map of "PORT/tcp" to {} equal to the
    container ports and the rehearsal's EXPOSE. The mutation suite (test_mutations.py)
    breaks each in flake.nix and evaluates it."""
    assert deploychecks.image_problems(report, ROOT) == []


@pytest.mark.parametrize("attr,entrypoint", [("server-image", "/bin/raftkv-server"), ("client-image", "/bin/raftkv")])
def test_image_checks_stream_the_image_and_run_its_entrypoint(report, attr, entrypoint):
    cmd = report["imageChecks"][attr]
    streamed = re.match(r"(/nix/store/\S+-stream-raftkv-(server|client)) > image\.tar\n", cmd)
    assert streamed, cmd
    assert re.search(rf"check_image\.py image\.tar \\\n\s+--entrypoint {re.escape(entrypoint)} --version 0\.1\.0 "
                     r"--uid 65532 --data-mode 0700", cmd), cmd


def test_workspace_tests_check_has_protoc_and_reports_skipped_tests(report):
    t = report["tests"]
    assert "protobuf" in t["nativeBuildInputs"], "etcd-client's build script runs protoc"
    assert "protobuf" in t["depsNativeBuildInputs"], "etcd-client builds in the deps derivation"
    assert {"iproute2", "iptables"} <= set(t["nativeCheckInputs"])
    assert t["doCheck"] is True
    assert "cargoWithProfile test --locked --workspace -- --show-output" in t["checkPhase"]
    assert "SKIPPED" in t["checkPhase"] and "skipped.txt" in t["installPhase"]
    assert "--package raftkv-server --package raftkv" in t["buildPhase"]


def test_dev_shell_has_every_tool_the_readme_promises(report):
    tools = set(report["devShell"])
    assert {"cargo", "rustc", "clippy", "rustfmt", "protobuf", "iproute2", "iptables", "kind", "kubectl",
            "tilt", "skopeo", "docker-client", "jq", "python3", "shellcheck"} <= tools


def test_formatter_is_nixfmt(report):
    assert report["formatter"] == "nixfmt"


# ---- dependency caching ----

def test_touching_a_crate_file_changes_only_the_workspace_derivations(report, tmp_path):
    """The measurement of the issue: an edit under crates/ leaves the dependencies'
    derivations (static and test) unchanged on both systems, and changes the package's."""
    stage = nixeval.make_stage(str(tmp_path / "stage"), {
        "crates/server/src/lib.rs": lambda t: t + "\n// touched by test_flake.py\n"})
    r, after = nixeval.report(stage)
    assert r.returncode == 0, r.stderr[-4000:]
    for s in SYSTEMS:
        assert after["deps"][s] == report["deps"][s], f"{s}: an edit under crates/ changed a deps derivation"
        assert after["drvs"][s]["packages"]["raftkv"] != report["drvs"][s]["packages"]["raftkv"]
        assert after["drvs"][s]["checks"]["tests"] != report["drvs"][s]["checks"]["tests"]
    print(f"deps derivations before and after touching crates/server/src/lib.rs: {json.dumps(after['deps'])}")


def test_negative_a_cargo_lock_change_does_change_the_deps_derivation(report, tmp_path):
    """The comparison above can fail: a change to what the dependencies are built from
    (Cargo.lock) gives new deps derivations."""
    stage = nixeval.make_stage(str(tmp_path / "stage"), {"Cargo.lock": lambda t: t + "\n# touched by test_flake.py\n"})
    r, after = nixeval.report(stage)
    assert r.returncode == 0, r.stderr[-4000:]
    for s in SYSTEMS:
        assert after["deps"][s]["static"] != report["deps"][s]["static"]
        assert after["deps"][s]["tests"] != report["deps"][s]["tests"]


# ---- the evaluation catches bad flakes ----

def check_fails(tmp_path, edits, rustc="1.95.0"):
    nixeval.need_real_evaluation()
    stage = nixeval.make_stage(str(tmp_path / "stage"), edits, rustc=rustc)
    r = nixeval.flake_check(stage)
    assert r.returncode != 0, "the broken flake passed the check"
    return r.stderr


def test_negative_unknown_argument_to_stream_layered_image_fails(tmp_path):
    err = check_fails(tmp_path, {"flake.nix": replace_once('tag = "dev";', 'tag = "dev"; creationDate = "now";')})
    assert "unexpected argument 'creationDate'" in err, err[-3000:]


def test_negative_unknown_argument_to_write_text_file_fails(tmp_path):
    """A closed nixpkgs builder reached through crane's own code path is checked too."""
    err = check_fails(tmp_path, {"flake.nix": replace_once(
        'nativeBuildInputs = [ pkgs.python3 ];',
        'nativeBuildInputs = [ pkgs.python3 (pkgs.writeTextFile { name = "x"; text = ""; mode = "0644"; }) ];')})
    assert "unexpected argument 'mode'" in err, err[-3000:]


def test_negative_missing_package_attribute_fails(tmp_path):
    err = check_fails(tmp_path, {"flake.nix": replace_once("pkgs.skopeo", "pkgs.scopeo")})
    assert "attribute 'scopeo' missing" in err, err[-3000:]


def test_negative_missing_protobuf_attribute_in_a_check_fails(tmp_path):
    err = check_fails(tmp_path, {"flake.nix": replace_once("nativeBuildInputs = [ pkgs.protobuf ];",
                                                           "nativeBuildInputs = [ pkgs.protoc ];")})
    assert "attribute 'protoc' missing" in err, err[-3000:]


def test_negative_rustc_older_than_msrv_fails(tmp_path):
    err = check_fails(tmp_path, {}, rustc="1.90.0")
    assert "older than the workspace rust-version" in err, err[-3000:]

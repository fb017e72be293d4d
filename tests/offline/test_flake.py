"""flake.nix and flake.lock, offline. `nix-instantiate --parse` checks the syntax; the
INTERFACE CHECK (flake-interface.nix) evaluates the flake's outputs against a stub of
the nixpkgs functions it calls (with their real argument names). Neither builds
anything nor evaluates real nixpkgs: that needs `nix build` on a machine with the
internet (see the "Kubernetes dev loop" section of README.md)."""
import json
import os
import re
import shutil

import pytest
import yaml

from conftest import ROOT, need_tool, run

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None


def interface(root=ROOT, rustc="1.95.0"):
    return run(["nix-instantiate", "--eval", "--strict", "--json", os.path.join(ROOT, "tests/offline/flake-interface.nix"),
                "--arg", "root", root, "--argstr", "rustcVersion", rustc])


@pytest.fixture(scope="module")
def out():
    need_tool("nix-instantiate")
    r = interface()
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def k8s(kind, name):
    for f in ("statefulset.yaml", "validate-pod.yaml"):
        with open(os.path.join(ROOT, "k8s", f)) as fh:
            for d in yaml.safe_load_all(fh):
                if d and d["kind"] == kind and d["metadata"]["name"] == name:
                    return d
    raise KeyError(name)


def test_flake_nix_parses():
    need_tool("nix-instantiate")
    r = run(["nix-instantiate", "--parse", os.path.join(ROOT, "flake.nix")])
    assert r.returncode == 0, r.stderr


def test_flake_lock_is_valid_json_and_pins_nixpkgs_as_the_only_input():
    with open(os.path.join(ROOT, "flake.lock")) as f:
        lock = json.load(f)
    assert lock["version"] == 7
    root = lock["nodes"][lock["root"]]
    assert root["inputs"] == {"nixpkgs": "nixpkgs"}
    node = lock["nodes"]["nixpkgs"]
    locked = node["locked"]
    assert locked["type"] == "github" and locked["owner"] == "NixOS" and locked["repo"] == "nixpkgs"
    assert re.fullmatch(r"[0-9a-f]{40}", locked["rev"])
    assert re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", locked["narHash"])
    assert isinstance(locked["lastModified"], int)
    # The lock's `original` must be the flake's input, or Nix re-locks (over the network).
    with open(os.path.join(ROOT, "flake.nix")) as f:
        url = re.search(r'inputs\.nixpkgs\.url\s*=\s*"([^"]+)"', f.read()).group(1)
    assert url == "github:NixOS/nixpkgs/nixos-26.05"
    owner, repo, ref = url.removeprefix("github:").split("/")
    assert node["original"] == {"owner": owner, "repo": repo, "ref": ref, "type": "github"}


def test_flake_lock_is_the_verified_pin():
    shared = os.path.join(ROOT, "..", "shared", "nix", "flake.lock.nixpkgs.json")
    if not os.path.exists(shared):
        pytest.skip("../shared/nix is not beside this checkout")
    with open(shared) as a, open(os.path.join(ROOT, "flake.lock")) as b:
        assert json.load(a) == json.load(b)


def test_msrv_is_not_newer_than_the_pinned_rustc():
    assert tomllib, "Python 3.11+ needed for tomllib"
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        msrv = tomllib.load(f)["workspace"]["package"]["rust-version"]
    # nixos-26.05 has rustc 1.95 (shared/nix/README.md).
    assert tuple(map(int, msrv.split("."))) <= (1, 95)


def test_interface_inputs_and_outputs(out):
    assert out["inputs"] == {"nixpkgs": {"url": "github:NixOS/nixpkgs/nixos-26.05"}}
    assert {"packages", "checks", "devShells"} <= set(out["outputNames"])
    assert set(out["systems"]) >= {"x86_64-linux"}


def test_interface_static_package_from_cargo_lock(out):
    p = out["packages"]["raftkv"]
    assert p["variant"] == "static", "raftkv must come from pkgsStatic (musl)"
    assert p["lockFile"] == os.path.join(ROOT, "Cargo.lock")
    flags = p["cargoBuildFlags"]
    assert ["--package", "raftkv-server"] == flags[flags.index("raftkv-server") - 1:flags.index("raftkv-server") + 1]
    assert "raftkv" in flags
    assert out["packages"]["default"] == p


@pytest.mark.parametrize("attr,kind,name", [("server-image", "StatefulSet", "raft"), ("client-image", "Pod", "raft-validate")])
def test_interface_images_match_the_manifests(out, attr, kind, name):
    img = out["packages"][attr]
    d = k8s(kind, name)
    pod = d["spec"] if kind == "Pod" else d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == f"{img['name']}:{img['tag']}"
    assert "command" not in c, "the manifests rely on the image's Entrypoint"
    cfg = img["config"]
    # The entrypoint is one of the binaries the package builds.
    binary = os.path.basename(cfg["Entrypoint"][0])
    assert cfg["Entrypoint"] == [f"/bin/{binary}"]
    assert binary == ("raftkv-server" if attr == "server-image" else "raftkv")
    uid = cfg["User"].split(":")[0]
    assert uid != "0" and int(uid) == pod["securityContext"]["runAsUser"]
    assert img["created"] == "1970-01-01T00:00:01Z", "a fixed creation date keeps the image reproducible"
    assert img["contents"] == ["raftkv"], "no shell or package manager: the image holds raftkv only"
    ports = {f"{p['containerPort']}/tcp" for p in c.get("ports", [])}
    assert set(cfg["ExposedPorts"]) == ports
    assert "nonroot:x:65532:65532" in img["extraCommands"]


def test_interface_checks_run_the_workspace_tests(out):
    t = out["checks"]["tests"]
    assert t["doCheck"] is True and "--workspace" in t["cargoTestFlags"]
    assert {"raftkv", "server-image", "client-image"} <= set(out["checks"])


def test_interface_dev_shell_has_the_tools(out):
    pkgs = set(out["devShell"]["packages"])
    assert {"cargo", "rustc", "kind", "kubectl", "tilt", "skopeo", "jq", "python3", "docker-client"} <= pkgs


# ---- the interface check catches bad flakes ----

def copy_repo(tmp_path, flake_src):
    for f in ("Cargo.toml", "Cargo.lock", "flake.lock"):
        shutil.copy(os.path.join(ROOT, f), tmp_path / f)
    (tmp_path / "flake.nix").write_text(flake_src)
    return str(tmp_path)


def flake_text():
    with open(os.path.join(ROOT, "flake.nix")) as f:
        return f.read()


def test_negative_unknown_argument_to_stream_layered_image_fails(tmp_path):
    need_tool("nix-instantiate")
    src = flake_text()
    assert 'tag = "dev";' in src
    r = interface(copy_repo(tmp_path, src.replace('tag = "dev";', 'tag = "dev"; creationDate = "now";', 1)))
    assert r.returncode != 0 and "unknown argument(s): creationDate" in r.stderr, r.stderr


def test_negative_misspelt_package_fails(tmp_path):
    need_tool("nix-instantiate")
    src = flake_text()
    assert "pkgs.skopeo" in src
    r = interface(copy_repo(tmp_path, src.replace("pkgs.skopeo", "pkgs.scopeo", 1)))
    assert r.returncode != 0 and "scopeo" in r.stderr, r.stderr


def test_negative_rustc_older_than_msrv_fails():
    need_tool("nix-instantiate")
    r = interface(rustc="1.90.0")
    assert r.returncode != 0 and "older than the workspace rust-version" in r.stderr, r.stderr


def test_source_filter_keeps_exactly_what_cargo_reads(tmp_path):
    """Evaluates the flake's `src` (builtins.path with its filter) for real, into a
    throwaway store under tmp_path, and lists what the build would see."""
    need_tool("nix-instantiate")
    expr = (f'let o = import {ROOT}/tests/offline/flake-interface.nix {{ root = {ROOT}; }}; s = o.packages.raftkv.src; '
            'in { top = builtins.attrNames (builtins.readDir s); tests = builtins.attrNames (builtins.readDir (s + "/tests")); '
            'server = builtins.attrNames (builtins.readDir (s + "/crates/server/src")); }')
    r = run(["nix-instantiate", "--store", f"local?root={tmp_path}/store", "--read-write-mode", "--eval", "--strict",
             "--json", "-E", expr])
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["top"] == ["Cargo.lock", "Cargo.toml", "crates", "rustfmt.toml", "tests"]
    assert seen["tests"] == ["Cargo.toml", "src", "tests"]
    assert "lib.rs" in seen["server"] and "admin.rs" in seen["server"]

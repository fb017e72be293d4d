"""scripts/prerequisites: with nothing installed it names every missing piece at once,
with how to get it, and exits 1; with everything present it passes."""
import os
import shutil

import pytest

from conftest import ROOT, run

SCRIPT = os.path.join(ROOT, "scripts", "prerequisites")
# What the script itself runs besides the tools it checks for.
BASICS = ["bash", "dirname", "id", "timeout"]


def bin_dir_with(tmp_path, names, uid):
    """A PATH of symlinks to `names` only, and an `id` that reports `uid`."""
    d = tmp_path / "bin"
    d.mkdir()
    for n in names:
        if n != "id":
            # A version manager's shim (pyenv) needs its own environment: link the real one.
            real = f"/usr/bin/{n}" if os.path.exists(f"/usr/bin/{n}") else shutil.which(n)
            os.symlink(real, d / n)
    idf = d / "id"
    idf.write_text(f"#!{shutil.which('bash')}\necho {uid}\n")
    idf.chmod(0o755)
    return str(d)


def test_nothing_installed_names_every_missing_piece(tmp_path):
    path = bin_dir_with(tmp_path, BASICS, 1000)
    r = run([shutil.which("bash"), SCRIPT], env={"PATH": path, "RAFTKV_PREREQ_CHECK_ONLY": "1"})
    assert r.returncode == 1, r.stdout + r.stderr
    for piece, how in [("cargo", "rustup.rs"), ("protoc", "protobuf-compiler"), ("ip ", "iproute2"),
                       ("iptables", "apt-get install iptables"), ("c++", "g++"), ("python3", "python3-venv"),
                       ("docker", "Docker Engine"), ("root", "as root")]:
        line = next((l for l in r.stderr.splitlines() if l.startswith(f"  - {piece}")), None)
        assert line is not None, f"{piece!r} is not named:\n{r.stderr}"
        assert how in line, f"{piece!r} does not say how to get it ({how}): {line}"
    assert r.stderr.count("  - ") == 8, r.stderr


def test_one_missing_piece_alone_is_named(tmp_path):
    have = [n for n in ["protoc", "ip", "iptables", "c++", "python3", "docker", "cargo"] if shutil.which(n)]
    if len(have) < 7:
        pytest.skip(f"this machine has only {have}; the test above covers the message")
    # cargo-fuzz is checked through cargo (`cargo fuzz --version`), not found on PATH.
    if run([shutil.which("cargo"), "fuzz", "--version"]).returncode != 0:
        pytest.skip("cargo-fuzz is not installed here; the test above covers the message")
    path = bin_dir_with(tmp_path, BASICS + [n for n in have if n != "protoc"], 0)
    env = {"PATH": path, "RAFTKV_PREREQ_CHECK_ONLY": "1", "HOME": os.environ.get("HOME", "/root")}
    r = run([shutil.which("bash"), SCRIPT], env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "  - protoc (" in r.stderr and "protobuf-compiler" in r.stderr, r.stderr
    assert r.stderr.count("  - ") == 1, f"only protoc is missing: {r.stderr}"

"""nix/check_image.py, the flake's image check, run here on docker-archive images laid
out as dockerTools.streamLayeredImage lays them (a store-path layer holding the binary,
a customisation layer with /bin symlinks into the store, /etc/passwd and /data), with a
small static C program as the entrypoint: one good image, then one broken in each way
the check must catch."""
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from conftest import ROOT

CHECK = os.path.join(ROOT, "nix", "check_image.py")
STORE = "nix/store/0123456789abcdfghijklmnpqrsvwxyz-raftkv-0.1.0"
PASSWD = b"root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n"


@pytest.fixture(scope="module")
def binaries(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.fail("no C compiler (CI installs g++ from .ci/apt-packages)")
    d = tmp_path_factory.mktemp("bin")
    (d / "v.c").write_text('#include <stdio.h>\nint main(void) { puts("raftkv-server 0.1.0"); return 0; }\n')
    out = {}
    for kind, flags in [("static", ["-static"]), ("dynamic", [])]:
        r = subprocess.run([cc, *flags, "-O1", "-o", str(d / kind), str(d / "v.c")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        out[kind] = (d / kind).read_bytes()
    return out


def add(tar, name, kind="file", data=b"", mode=0o755, uid=0, gid=0, link=""):
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid = mode, uid, gid
    if kind == "dir":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def layer(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for e in entries:
            add(tar, **e)
    return buf.getvalue()


def image(path, binary, user="65532:65532", data_uid=65532, data_mode=0o700, link=f"/{STORE}/bin/raftkv-server",
          passwd=PASSWD):
    store = layer([dict(name=f"{STORE}", kind="dir"), dict(name=f"{STORE}/bin", kind="dir"),
                   dict(name=f"{STORE}/bin/raftkv-server", data=binary, mode=0o555)])
    custom = layer([dict(name="bin", kind="dir"), dict(name="bin/raftkv-server", kind="symlink", link=link),
                    dict(name="etc", kind="dir"), dict(name="etc/passwd", data=passwd, mode=0o644),
                    dict(name="tmp", kind="dir", mode=0o1777),
                    dict(name="data", kind="dir", mode=data_mode, uid=data_uid, gid=data_uid)])
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": ["/bin/raftkv-server"], "User": user, "WorkingDir": "/data"}}
    with tarfile.open(path, "w") as tar:
        files = {"aaaa/layer.tar": store, "bbbb/layer.tar": custom, "cfg.json": json.dumps(config).encode(),
                 "manifest.json": json.dumps([{"Config": "cfg.json", "RepoTags": ["raftkv-server:dev"],
                                               "Layers": ["aaaa/layer.tar", "bbbb/layer.tar"]}]).encode()}
        for name, data in files.items():
            add(tar, name, data=data, mode=0o644)
    return str(path)


def check(archive):
    return subprocess.run([sys.executable, CHECK, archive, "--entrypoint", "/bin/raftkv-server", "--version", "0.1.0",
                           "--uid", "65532", "--data-mode", "0700"], capture_output=True, text=True, timeout=60)


def test_good_image_passes_and_its_entrypoint_ran(binaries, tmp_path):
    r = check(image(tmp_path / "img.tar", binaries["static"]))
    assert r.returncode == 0, r.stderr
    assert "/bin/raftkv-server --version: raftkv-server 0.1.0" in r.stdout


@pytest.mark.parametrize("broken,expect", [
    (dict(user="0:0"), "config User is '0:0'"),
    (dict(data_uid=0), "/data is owned by 0:0"),
    (dict(data_mode=0o755), "/data has mode 0755"),
    (dict(passwd=b"root:x:0:0:root:/:/sbin/nologin\n"), "no user with uid and gid 65532"),
    (dict(link="/nix/store/missing/bin/raftkv-server"), "is not in the image"),
])
def test_negative_broken_image_fails(binaries, tmp_path, broken, expect):
    r = check(image(tmp_path / "img.tar", binaries["static"], **broken))
    assert r.returncode == 1 and expect in r.stderr, r.stderr


def test_negative_dynamically_linked_entrypoint_fails(binaries, tmp_path):
    r = check(image(tmp_path / "img.tar", binaries["dynamic"]))
    assert r.returncode == 1 and "dynamically linked" in r.stderr, r.stderr


def test_negative_wrong_version_fails(binaries, tmp_path):
    r = subprocess.run([sys.executable, CHECK, image(tmp_path / "img.tar", binaries["static"]), "--entrypoint",
                        "/bin/raftkv-server", "--version", "9.9.9", "--uid", "65532", "--data-mode", "0700"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "expected version 9.9.9" in r.stderr, r.stderr


def test_negative_not_an_image_fails(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    r = check(str(tmp_path / "junk.tar"))
    assert r.returncode == 1 and "cannot read the image" in r.stderr, r.stderr

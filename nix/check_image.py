"""Checks a docker-archive image (what `nix build .#server-image` streams) the way a
container runtime would see it, without one: the flake's image checks run it inside
the Nix sandbox on the streamed tar; tests/offline/test_check_image.py runs it on
archives it makes, good and broken.

It reads manifest.json and the image config, lays the layers over each other in order
(a later layer's entry replaces an earlier one's), then checks:
  - the config's User is UID:UID and WorkingDir is /data;
  - /etc/passwd names that uid;
  - /data is a directory owned by UID:UID with exactly the mode asked for;
  - the Entrypoint resolves inside the image (symlinks followed within the image root,
    never on the host) to a regular executable ELF file with no program interpreter
    (static: the image has no libc);
  - that file, unpacked and run with --version, exits 0 and prints the version.
Exits 1 with one line per failed check; prints what it checked otherwise."""
import argparse
import json
import os
import posixpath
import struct
import subprocess
import sys
import tarfile
import tempfile


class ImageError(Exception):
    pass


def normalize(name):
    """A layer member's path as an absolute image path ('./bin/x' -> '/bin/x')."""
    return posixpath.normpath("/" + name).replace("//", "/")


def read_image(archive):
    """(config, {image path: (layer tar path, TarInfo)}) of a docker-archive."""
    with tarfile.open(archive) as outer:
        try:
            manifest = json.load(outer.extractfile("manifest.json"))
        except KeyError:
            raise ImageError(f"{archive}: no manifest.json (not a docker-archive)")
        if len(manifest) != 1:
            raise ImageError(f"{archive}: manifest.json lists {len(manifest)} images, expected 1")
        entry = manifest[0]
        config = json.load(outer.extractfile(entry["Config"]))
        files = {}
        for layer in entry["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
                for info in inner.getmembers():
                    files[normalize(info.name)] = (layer, info)
    return config, files


def resolve(files, path, limit=40):
    """Follows symlinks inside the image root (absolute targets are image paths)."""
    # Layers need not list the directories above what they hold (/nix, /nix/store).
    implied = {posixpath.dirname(p) for p in files}
    while True:
        more = {posixpath.dirname(p) for p in implied} - implied
        if not more:
            break
        implied |= more
    parts = [p for p in path.split("/") if p]
    current = "/"
    hops = 0
    while parts:
        part = parts.pop(0)
        candidate = posixpath.normpath(posixpath.join(current, part))
        if candidate not in files:
            if candidate in implied:
                current = candidate
                continue
            raise ImageError(f"{path}: {candidate} is not in the image")
        info = files[candidate][1]
        if info.issym():
            hops += 1
            if hops > limit:
                raise ImageError(f"{path}: more than {limit} symlinks")
            target = info.linkname
            base = "/" if target.startswith("/") else current
            parts = [p for p in posixpath.normpath(posixpath.join(base, target)).split("/") if p] + parts
            current = "/"
        else:
            current = candidate
    return current


def has_interpreter(data):
    """Whether an ELF file (bytes) has a PT_INTERP program header (is dynamically linked)."""
    if data[:4] != b"\x7fELF":
        raise ImageError("not an ELF file")
    is64 = data[4] == 2
    endian = "<" if data[5] == 1 else ">"
    if is64:
        phoff, = struct.unpack_from(endian + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    else:
        phoff, = struct.unpack_from(endian + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x2A)
    for i in range(phnum):
        p_type, = struct.unpack_from(endian + "I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return True
    return False


def check(archive, entrypoint, version, uid, data_mode):
    problems = []
    config, files = read_image(archive)
    cfg = config.get("config", {})

    if cfg.get("User") != f"{uid}:{uid}":
        problems.append(f"config User is {cfg.get('User')!r}, expected '{uid}:{uid}'")
    if cfg.get("WorkingDir") != "/data":
        problems.append(f"config WorkingDir is {cfg.get('WorkingDir')!r}, expected '/data'")
    if cfg.get("Entrypoint") != [entrypoint]:
        problems.append(f"config Entrypoint is {cfg.get('Entrypoint')!r}, expected [{entrypoint!r}]")

    passwd = files.get("/etc/passwd")
    if passwd is None or not passwd[1].isfile():
        problems.append("/etc/passwd is missing")
    else:
        with tarfile.open(archive) as outer, tarfile.open(fileobj=outer.extractfile(passwd[0])) as inner:
            lines = inner.extractfile(passwd[1]).read().decode().splitlines()
        if not any(len(f := line.split(":")) > 3 and f[2] == str(uid) and f[3] == str(uid) for line in lines):
            problems.append(f"/etc/passwd has no user with uid and gid {uid}")

    data = files.get("/data")
    if data is None or not data[1].isdir():
        problems.append("/data is not a directory in the image")
    else:
        info = data[1]
        if (info.uid, info.gid) != (uid, uid):
            problems.append(f"/data is owned by {info.uid}:{info.gid}, expected {uid}:{uid}")
        if info.mode & 0o7777 != data_mode:
            problems.append(f"/data has mode {info.mode & 0o7777:04o}, expected {data_mode:04o}")

    try:
        target = resolve(files, entrypoint)
    except ImageError as e:
        problems.append(f"entrypoint: {e}")
        return problems
    layer, info = files[target]
    if not info.isfile():
        problems.append(f"entrypoint {entrypoint} -> {target} is not a regular file")
        return problems
    if not info.mode & 0o111:
        problems.append(f"entrypoint {entrypoint} -> {target} is not executable (mode {info.mode & 0o7777:04o})")
    with tarfile.open(archive) as outer, tarfile.open(fileobj=outer.extractfile(layer)) as inner:
        binary = inner.extractfile(info).read()
    try:
        if has_interpreter(binary):
            problems.append(f"entrypoint {entrypoint} -> {target} is dynamically linked; the image has no libc")
            return problems
    except ImageError as e:
        problems.append(f"entrypoint {entrypoint} -> {target}: {e}")
        return problems

    # Run the image's own copy of the binary, unpacked from its layer.
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, posixpath.basename(target))
        with open(exe, "wb") as f:
            f.write(binary)
        os.chmod(exe, 0o755)
        try:
            run = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60, cwd=tmp)
        except (OSError, subprocess.TimeoutExpired) as e:
            problems.append(f"{entrypoint} --version did not run: {e}")
            return problems
    if run.returncode != 0:
        problems.append(f"{entrypoint} --version exited {run.returncode}: {run.stderr.strip()[:300]}")
    elif version not in run.stdout.split():
        problems.append(f"{entrypoint} --version printed {run.stdout.strip()!r}, expected version {version}")
    else:
        print(f"{entrypoint} --version: {run.stdout.strip()}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive")
    ap.add_argument("--entrypoint", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--uid", type=int, required=True)
    ap.add_argument("--data-mode", type=lambda s: int(s, 8), required=True)
    a = ap.parse_args()
    try:
        problems = check(a.archive, a.entrypoint, a.version, a.uid, a.data_mode)
    except (ImageError, tarfile.TarError, KeyError, ValueError, OSError) as e:
        problems = [f"cannot read the image: {e}"]
    if problems:
        for p in problems:
            print(f"image check FAILED: {p}", file=sys.stderr)
        sys.exit(1)
    print(f"image check passed: user {a.uid}:{a.uid}, /data {a.uid}:{a.uid} {a.data_mode:04o}, "
          f"{a.entrypoint} static and runs")


if __name__ == "__main__":
    main()

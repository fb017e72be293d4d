"""The deployment checks as functions of a checkout directory: each returns the problems
it finds as messages (empty: none). The tests run them on this checkout; the mutation
suite (test_mutations.py) runs them on copies broken on purpose.

  manifest_problems(root)          ports, probes' and Prometheus' targets, Service
                                   targetPorts, who the containers run as
  server_args_problems(root, exe)  every raftkv-server container's args and env through
                                   the server's real parser (`raftkv-server --check-args`)
                                   and where what they resolve to listens
  fault_problems(root, exe)        `raftkv fault` off in k8s/'s servers, on in those the Tiltfile
                                   deploys (both through `raftkv-server --check-args`)
  script_problems(root, only)      every shell script found in the tree: bash -n, shellcheck
"""
import glob
import importlib.util
import ipaddress
import os
import re
import subprocess

import yaml

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
# The images whose containers run raftkv-server (the image's Entrypoint, no command).
SERVER_IMAGE = "raftkv-server"


# ---- manifests ------------------------------------------------------------------------------

def manifest_paths(root):
    """k8s/*.yaml and the manifests of observability/ (what `kubectl apply -f` reads)."""
    out = sorted(glob.glob(os.path.join(root, "k8s", "*.yaml")))
    for f in sorted(glob.glob(os.path.join(root, "observability", "*.y*ml"))):
        with open(f) as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d]
        if docs and all(isinstance(d, dict) and "kind" in d for d in docs):
            out.append(f)
    return out


def load_manifests(root):
    docs = []
    for f in manifest_paths(root):
        with open(f) as fh:
            docs += [d for d in yaml.safe_load_all(fh) if d]
    return docs


def pod_template(doc):
    """(pod metadata, pod spec) of a workload."""
    if doc["kind"] == "Pod":
        return doc.get("metadata", {}), doc["spec"]
    if doc["kind"] == "CronJob":
        t = doc["spec"]["jobTemplate"]["spec"]["template"]
    else:
        t = doc["spec"]["template"]
    return t.get("metadata", {}), t["spec"]


def workloads(docs):
    return [d for d in docs if d.get("kind") in WORKLOAD_KINDS]


def container_ports(pod):
    """{name: number} and the set of numbers of every container's ports."""
    named, numbers = {}, set()
    for c in pod.get("containers", []):
        for p in c.get("ports", []):
            numbers.add(p["containerPort"])
            if "name" in p:
                named[p["name"]] = p["containerPort"]
    return named, numbers


def resolves(port, named, numbers):
    """Whether a port reference (a number, a numeric string or a port name) names a
    container port."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port) in numbers
    return port in named


def port_problems(doc):
    """A workload's probes and prometheus.io/port annotation against its container ports."""
    out = []
    name = f"{doc['kind']} {doc['metadata']['name']}"
    meta, pod = pod_template(doc)
    named, numbers = container_ports(pod)
    annotations = {**(doc.get("metadata", {}).get("annotations") or {}), **(meta.get("annotations") or {})}
    if str(annotations.get("prometheus.io/scrape")) == "true":
        port = annotations.get("prometheus.io/port")
        if port is None or not resolves(str(port), named, numbers):
            out.append(f"{name}: prometheus.io/port {port!r} names no container port {sorted(numbers)}: "
                       "Prometheus scrapes nothing")
    for c in pod.get("containers", []):
        for key in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = c.get(key) or {}
            for kind in ("httpGet", "tcpSocket", "grpc"):
                if kind in probe and not resolves(probe[kind]["port"], named, numbers):
                    out.append(f"{name}: {c['name']}'s {key} port {probe[kind]['port']!r} names no container port")
    return out


def service_problems(docs):
    """Every Service port's targetPort (or port, when it has none) names a container port
    of the workloads its selector picks; a selector that picks no workload is a problem too."""
    out = []
    for svc in (d for d in docs if d.get("kind") == "Service"):
        sel = svc.get("spec", {}).get("selector") or {}
        if not sel:
            continue
        picked = [w for w in workloads(docs)
                  if all((pod_template(w)[0].get("labels") or {}).get(k) == v for k, v in sel.items())]
        if not picked:
            out.append(f"Service {svc['metadata']['name']}: its selector {sel} picks no workload's pods")
            continue
        for p in svc["spec"].get("ports", []):
            target = p.get("targetPort", p["port"])
            for w in picked:
                named, numbers = container_ports(pod_template(w)[1])
                if not resolves(target, named, numbers):
                    out.append(f"Service {svc['metadata']['name']}: port {p.get('name', p['port'])} targets "
                               f"{target!r}, which names no container port of {w['kind']} {w['metadata']['name']}")
    return out


def identity_problems(doc):
    """Who each container runs as: the container's securityContext over the pod's. Never
    uid or gid 0, always runAsNonRoot."""
    out = []
    name = f"{doc['kind']} {doc['metadata']['name']}"
    _, pod = pod_template(doc)
    psc = pod.get("securityContext") or {}
    for where, sc in [("pod", psc)] + [(f"container {c['name']}", c.get("securityContext") or {})
                                         for c in pod.get("containers", []) + pod.get("initContainers", [])]:
        for key in ("runAsUser", "runAsGroup"):
            if sc.get(key) == 0:
                out.append(f"{name}: {where} sets {key}: 0 (root)")
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        csc = c.get("securityContext") or {}
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{name}: container {c['name']} does not require runAsNonRoot")
    return out


def manifest_problems(root):
    docs = load_manifests(root)
    out = []
    for d in workloads(docs):
        out += port_problems(d) + identity_problems(d)
    return out + service_problems(docs)


# ---- the server's args, through its own parser ------------------------------------------------

# What the downward API gives a server pod in these checks.
DOWNWARD = {"metadata.name": "{pod}", "metadata.namespace": "default"}


# $(VAR) expansion as the kubelet does it: the rehearsal's own (tests/docker/podspec.py).
_PODSPEC = importlib.util.spec_from_file_location(
    "podspec", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docker", "podspec.py"))
_podspec = importlib.util.module_from_spec(_PODSPEC)
_PODSPEC.loader.exec_module(_podspec)
expand = _podspec.expand


def container_env(c, pod_name):
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(str(e["value"]), env)
        else:
            field = (e.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
            env[e["name"]] = DOWNWARD.get(field, "x").format(pod=pod_name)
    return env


def server_containers(docs):
    """(label, workload, pod name, container) of every container running the server image."""
    for d in workloads(docs):
        _, pod = pod_template(d)
        for c in pod.get("containers", []):
            if c.get("image", "").split("/")[-1].split(":")[0] == SERVER_IMAGE:
                yield f"{d['kind']} {d['metadata']['name']}", d, f"{d['metadata']['name']}-0", c


def check_args(exe, c, pod_name):
    """(CompletedProcess, {key: value}) of `raftkv-server --check-args` with the
    container's args and env (and nothing of this machine's RAFTKV_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
    env.update(container_env(c, pod_name))
    args = [expand(str(a), env) for a in c.get("args", [])]
    r = subprocess.run([exe, *args, "--check-args"], capture_output=True, text=True, timeout=30, env=env)
    resolved = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
    return r, resolved


def unreachable_host(addr):
    """Why pods, probes and Prometheus cannot reach a listener bound to `addr`, or None."""
    host = addr.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return "localhost is the pod's loopback"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return f"{host} is the pod's loopback"
    except ValueError:
        pass
    return None


def server_args_problems(root, exe, docs=None):
    docs = load_manifests(root) if docs is None else docs
    out = []
    found = False
    for label, d, pod_name, c in server_containers(docs):
        found = True
        if "command" in c:
            out.append(f"{label}: the server container sets command; the image's Entrypoint must run")
        r, got = check_args(exe, c, pod_name)
        if r.returncode != 0:
            out.append(f"{label}: raftkv-server refuses the manifest's args: {r.stderr.strip()[:400]}")
            continue
        named, numbers = container_ports(pod_template(d)[1])
        for key in ("listen", "admin-listen"):
            addr = got.get(key, "-")
            if addr == "-":
                if key == "admin-listen":
                    out.append(f"{label}: no --admin-listen: nothing serves /livez, /readyz and /metrics")
                continue
            why = unreachable_host(addr)
            if why:
                out.append(f"{label}: {key} {addr}: {why}; probes, peers and Prometheus cannot reach it")
            if int(addr.rsplit(":", 1)[1]) not in numbers:
                out.append(f"{label}: {key} {addr} is on no container port {sorted(numbers)}")
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        if got.get("data-dir") not in mounts:
            out.append(f"{label}: the data dir {got.get('data-dir')} is not a mounted volume {sorted(mounts)}")
    if not found:
        out.append(f"no workload runs the {SERVER_IMAGE} image")
    return out


# ---- fault injection: on in the Tilt dev loop, off everywhere else ----------------------------

def tilt_manifests(root):
    """The Kubernetes objects the Tiltfile of `root` passes to k8s_yaml (files and blobs),
    evaluated against the stubs of tiltstub.py."""
    import tiltstub
    rec = tiltstub.evaluate(os.path.join(root, "Tiltfile"), root)
    docs = []
    for y in rec.yaml_files:
        with open(y if os.path.isabs(y) else os.path.join(root, y)) as fh:
            docs += [d for d in yaml.safe_load_all(fh) if d]
    for text in rec.yaml_blobs:
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def faults_of(exe, docs, where):
    """([(label, `faults` as --check-args resolves it)], problems) of every server
    container of `docs`; a container whose args the parser refuses is a problem."""
    got_all, out = [], []
    for label, _, pod_name, c in server_containers(docs):
        r, got = check_args(exe, c, pod_name)
        if r.returncode != 0:
            out.append(f"{label} ({where}): raftkv-server refuses its args: {r.stderr.strip()[:400]}")
            continue
        got_all.append((label, got.get("faults")))
    return got_all, out


def base_fault_problems(root, exe):
    """The manifests of k8s/ (what kubectl users apply): no server accepts `raftkv fault`
    (no --enable-faults, no RAFTKV_ENABLE_FAULTS that the parser reads as on)."""
    got, out = faults_of(exe, load_manifests(root), "k8s/")
    return out + [f"{label} (k8s/): faults {f}: the base manifest must never accept `raftkv fault` "
                  "(partitions, pauses); only the Tilt dev loop enables it" for label, f in got if f != "off"]


def tilt_fault_problems(root, exe):
    """The servers the Tiltfile deploys accept `raftkv fault` (the fault buttons need it)."""
    try:
        docs = tilt_manifests(root)
    except Exception as e:  # noqa: BLE001 - any failed evaluation is the finding
        return [f"the Tiltfile does not evaluate: {e}"]
    got, out = faults_of(exe, docs, "as Tilt deploys it")
    if not got and not out:
        return [f"the Tiltfile deploys no workload running the {SERVER_IMAGE} image"]
    return out + [f"{label} (as Tilt deploys it): faults {f}: `raftkv fault` and the fault buttons would be "
                  "refused; the Tiltfile must add --enable-faults" for label, f in got if f != "on"]


def fault_problems(root, exe):
    return base_fault_problems(root, exe) + tilt_fault_problems(root, exe)


# ---- shell scripts --------------------------------------------------------------------------

SKIP_DIRS = {".git", "target", "node_modules"}
SHEBANG = re.compile(r"#!\s*(/usr/bin/env\s+(-\S+\s+)*)?(/bin/|/usr/bin/)?(bash|sh|dash)\b")


def is_script(path):
    """A *.sh file, a file whose shebang runs bash or sh, or one with a
    `# shellcheck shell=` directive (a sourced library)."""
    if path.endswith(".sh"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(400)
    except OSError:
        return False
    if b"\0" in head:
        return False
    text = head.decode("utf-8", "replace")
    return bool(SHEBANG.match(text)) or text.startswith("# shellcheck shell=")


def discover_scripts(root):
    """Every shell script of the tree (relative paths), build output and .git left out."""
    out = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("target-"))
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            if os.path.isfile(p) and not os.path.islink(p) and is_script(p):
                out.append(os.path.relpath(p, root))
    return out


def script_problems(root, only=None):
    """bash -n and shellcheck (warnings and errors) of every script found (or of `only`,
    relative paths, which must be among them); a script with a shebang must be executable."""
    found = discover_scripts(root)
    scripts = found if only is None else [s for s in only if s in found]
    out = [f"{s} is not found as a shell script" for s in (only or []) if s not in found]
    for s in scripts:
        path = os.path.join(root, s)
        r = subprocess.run(["bash", "-n", path], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            out.append(f"{s}: bash -n: {r.stderr.strip()[:300]}")
        with open(path, "rb") as f:
            if f.read(2) == b"#!" and not os.access(path, os.X_OK):
                out.append(f"{s} has a shebang but is not executable")
    if scripts:
        r = subprocess.run(["shellcheck", "--severity=warning", "--format=gcc", *scripts], cwd=root,
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            out += [f"shellcheck: {line}" for line in (r.stdout + r.stderr).splitlines() if line.strip()][:40]
    return out


# ---- the images of flake.nix against the manifests and the rehearsal ------------------------

def logical_lines(text):
    return text.replace("\\\n", " ").splitlines()


def rehearsal_images(root):
    """What tests/docker/rehearsal.sh builds its images with: {entrypoint: {user, expose,
    workdir}}, and the (uid, mode) of the /data it lays out."""
    with open(os.path.join(root, "tests", "docker", "rehearsal.sh")) as f:
        text = f.read()
    images = {}
    for line in logical_lines(text):
        if not re.match(r"\s*docker import\b", line):
            continue
        entry = re.search(r"""ENTRYPOINT \["([^"]+)"\]""", line)
        user = re.search(r"USER (\S+?)'", line)
        expose = re.search(r"EXPOSE ([^'\"]+)['\"]", line)
        workdir = re.search(r"WORKDIR (\S+?)'", line)
        if entry:
            images[entry.group(1)] = dict(user=user and user.group(1), workdir=workdir and workdir.group(1),
                                          expose={int(p) for p in expose.group(1).split()} if expose else set())
    data = re.search(r"""add_dir\(t, "data", (0o[0-7]+), uid=(\d+)\)""", text)
    return images, (int(data.group(2)), int(data.group(1), 8)) if data else None


def shell_last(commands, pattern):
    """The last line of `commands` matching `pattern` (a later chown/chmod wins)."""
    found = [m for m in (re.match(pattern, line.strip()) for line in commands.splitlines()) if m]
    return found[-1] if found else None


def data_dir_problems(attr, img, uid, gid, check_cmd):
    """/data: made by extraCommands, owned by the image's user, mode rwx for it only
    (the mode the flake's image check verifies)."""
    out = []
    if not re.search(r"(^|\s)mkdir (-p )?([\w.]+ )*data(\s|$)", img["extraCommands"], re.M):
        out.append(f"{attr}: extraCommands makes no data directory")
    own = shell_last(img["fakeRootCommands"], r"chown (\d+):(\d+) (\./)?data$")
    if own is None:
        out.append(f"{attr}: nothing chowns /data: it stays root's, and the server (uid {uid}) cannot write it")
    elif (int(own.group(1)), int(own.group(2))) != (uid, gid):
        out.append(f"{attr}: /data is owned by {own.group(1)}:{own.group(2)}, the image runs as {uid}:{gid}")
    mode = shell_last(img["fakeRootCommands"], r"chmod (0?[0-7]{3,4}) (\./)?data$")
    if mode is None:
        out.append(f"{attr}: nothing sets /data's mode")
        return out, None
    m = int(mode.group(1), 8)
    if m & 0o700 != 0o700:
        out.append(f"{attr}: /data mode {m:04o}: its owner cannot read, write and enter it")
    if m & 0o077:
        out.append(f"{attr}: /data mode {m:04o}: others may read the Raft log (0700 expected)")
    check = re.search(r"--uid (\d+) --data-mode (\d+)", check_cmd or "")
    if check and (int(check.group(1)), int(check.group(2), 8)) != (uid, m):
        out.append(f"{attr}: the image check verifies uid {check.group(1)} mode {check.group(2)}, "
                   f"the image has {uid} and {m:04o}")
    return out, m


def exposed_ports(attr, cfg):
    """(problems, ports) of the config's ExposedPorts: an OCI map of "PORT/tcp" to {}."""
    ep = cfg.get("ExposedPorts", {})
    if not isinstance(ep, dict):
        return [f"{attr}: ExposedPorts is a {type(ep).__name__}, not a map of \"PORT/tcp\" to {{}}"], set()
    out, ports = [], set()
    for k, v in ep.items():
        m = re.fullmatch(r"(\d+)/(tcp|udp|sctp)", str(k))
        if not m or v != {}:
            out.append(f"{attr}: ExposedPorts entry {k!r}: {v!r} is not \"PORT/tcp\": {{}}")
        else:
            ports.add(int(m.group(1)))
    return out, ports


def image_problems(report, root):
    """Each image's config (as the flake gives it to streamLayeredImage) against the
    manifests that run it and the rehearsal's copy of it."""
    out = []
    docs = load_manifests(root)
    rehearsal, rehearsal_data = rehearsal_images(root)
    for attr, img in sorted(report["images"].items()):
        cfg = img["config"]
        ref = f"{img['name']}:{img['tag']}"
        users = [(d, c) for d in workloads(docs) for c in pod_template(d)[1]["containers"] if c.get("image") == ref]
        if not users:
            out.append(f"{attr}: no manifest runs {ref}")
        m = re.fullmatch(r"(\d+):(\d+)", str(cfg.get("User", "")))
        if not m:
            out.append(f"{attr}: User {cfg.get('User')!r} is not numeric UID:GID")
            continue
        uid, gid = int(m.group(1)), int(m.group(2))
        if uid == 0:
            out.append(f"{attr}: User {cfg['User']}: runs as root")
        if gid == 0:
            out.append(f"{attr}: User {cfg['User']}: runs with group 0 (root's group)")
        for d, c in users:
            psc, csc = pod_template(d)[1].get("securityContext") or {}, c.get("securityContext") or {}
            for key, want in (("runAsUser", uid), ("runAsGroup", gid)):
                got = csc.get(key, psc.get(key))
                if got is not None and got != want:
                    out.append(f"{attr}: {d['kind']} {d['metadata']['name']} runs it with {key} {got}, "
                               f"the image's User is {cfg['User']}")
        if f":{uid}:{gid}:" not in img["extraCommands"]:
            out.append(f"{attr}: /etc/passwd names no user {uid}:{gid}")
        problems, mode = data_dir_problems(attr, img, uid, gid, report.get("imageChecks", {}).get(attr))
        out += problems
        wd = cfg.get("WorkingDir")
        if wd != "/data":
            out.append(f"{attr}: WorkingDir {wd!r} is not /data, the directory the image makes for its user")
        for d, c in users:
            data_dirs = [a.split("=", 1)[1] for a in c.get("args", []) if str(a).startswith("--data-dir=")]
            if data_dirs and data_dirs != [wd]:
                out.append(f"{attr}: {d['kind']} {d['metadata']['name']} keeps its data in {data_dirs[0]}, "
                           f"the image's WorkingDir is {wd}")
        problems, ports = exposed_ports(attr, cfg)
        out += problems
        for d, c in users:
            want = {p["containerPort"] for p in c.get("ports", [])}
            if not problems and ports != want:
                out.append(f"{attr}: exposes {sorted(ports)}, {d['kind']} {d['metadata']['name']}'s container "
                           f"ports are {sorted(want)}")
        r = rehearsal.get((cfg.get("Entrypoint") or [""])[0])
        if r is None:
            out.append(f"{attr}: the rehearsal builds no image with Entrypoint {cfg.get('Entrypoint')}")
            continue
        if r["user"] != cfg["User"] or r["workdir"] != wd or (not problems and r["expose"] != ports):
            out.append(f"{attr}: the rehearsal's image (USER {r['user']}, WORKDIR {r['workdir']}, EXPOSE "
                       f"{sorted(r['expose'])}) is not this one (User {cfg['User']}, WorkingDir {wd}, "
                       f"ExposedPorts {sorted(ports)})")
        if rehearsal_data != (uid, mode):
            out.append(f"{attr}: the rehearsal's /data (uid, mode) {rehearsal_data} differs from the image's "
                       f"({uid}, {mode})")
    return out


# ---- the Tiltfile's image builds, run against stand-ins of nix and skopeo -----------------------

FAKE_NIX = r"""#!/usr/bin/env bash
# nix build .#ATTR [--out-link PATH | -o PATH | --no-link]: the out-link (./result by
# default, none with --no-link) becomes a script that prints "archive of ATTR".
[ "$1" = build ] || { echo "fake nix: only build" >&2; exit 2; }
shift
attr="" link=result
while [ $# -gt 0 ]; do
  case "$1" in
    --out-link | -o) link=$2; shift 2 ;;
    --no-link) link=""; shift ;;
    *'#'*) attr=${1#*#}; shift ;;
    *) shift ;;
  esac
done
[ -n "$attr" ] || { echo "fake nix: no flake attribute" >&2; exit 2; }
[ -z "$link" ] && exit 0
printf '#!/bin/sh\nprintf "archive of %s"\n' "$attr" > "$link"
chmod +x "$link"
"""
FAKE_SKOPEO = r"""#!/usr/bin/env bash
printf '%s\n' "$@" > "$FAKE_LOG/skopeo.args"
cat > "$FAKE_LOG/skopeo.stdin"
"""
EXPECTED_REF = "localhost:5001/{ref}:tilt-0123456789abcdef"


def image_build_problems(rec, scratch):
    """Runs each custom_build command in an empty git repository with nix and skopeo
    stand-ins: it must stream what its nix build made into skopeo and push it to
    docker://$EXPECTED_REF (the registry ref Tilt expects), leaving nothing behind."""
    out = []
    for i, b in enumerate(rec.builds):
        base = os.path.join(scratch, f"build-{i}")
        repo, bindir, log, tmp = (os.path.join(base, d) for d in ("repo", "bin", "log", "tmp"))
        for d in (repo, bindir, log, tmp):
            os.makedirs(d)
        for name, text in (("nix", FAKE_NIX), ("skopeo", FAKE_SKOPEO)):
            with open(os.path.join(bindir, name), "w") as f:
                f.write(text)
            os.chmod(os.path.join(bindir, name), 0o755)
        subprocess.run(["git", "init", "-q", repo], check=True)
        ref = EXPECTED_REF.format(ref=b["ref"])
        env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", EXPECTED_REF=ref, FAKE_LOG=log, TMPDIR=tmp)
        r = subprocess.run(["bash", "-c", b["command"]], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=60)
        name = f"custom_build {b['ref']}"
        if r.returncode != 0:
            out.append(f"{name}: the command fails: {r.stderr.strip()[:300]}")
        args_file = os.path.join(log, "skopeo.args")
        if not os.path.exists(args_file):
            out.append(f"{name}: skopeo never runs")
            continue
        with open(args_file) as f:
            args = f.read().splitlines()
        with open(os.path.join(log, "skopeo.stdin")) as f:
            streamed = f.read()
        positional = [a for a in args[1:] if not a.startswith("-")]
        if args[:1] != ["copy"] or positional[-2:] != ["docker-archive:/dev/stdin", f"docker://{ref}"]:
            out.append(f"{name}: skopeo {' '.join(args)}: not a copy of the streamed archive "
                       "(docker-archive:/dev/stdin) to docker://$EXPECTED_REF, the registry ref Tilt deploys")
        if not streamed.startswith("archive of "):
            out.append(f"{name}: skopeo got {streamed[:60]!r} on stdin, not the image the nix build made "
                       "(is its --out-link what the command runs?)")
        left = os.listdir(tmp) + [f for f in os.listdir(repo) if f != ".git"]
        if left:
            out.append(f"{name}: leaves {sorted(left)} behind (a result link in the checkout, a temporary directory)")
    return out


def tilt_problems(root, scratch):
    """The Tiltfile of `root`, evaluated against the stubs (tiltstub.py): what it asks
    for against the repository, and its image builds run (image_build_problems)."""
    import tiltstub
    try:
        rec = tiltstub.evaluate(os.path.join(root, "Tiltfile"), root)
    except Exception as e:  # noqa: BLE001 - any failed evaluation is the finding
        return [f"the Tiltfile does not evaluate: {e}"]
    return tiltstub.problems(rec, root) + image_build_problems(rec, scratch)

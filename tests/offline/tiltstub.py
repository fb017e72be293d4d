"""Evaluates a Tiltfile offline with a Starlark interpreter (starlark-pyo3) and stubs
of the Tilt builtins it may call, and records every call.

The stubs are plain Python functions with Tilt's own parameter names (from Tilt's API
reference, https://docs.tilt.dev/api.html) and no **kwargs: an unknown keyword argument
is a TypeError, i.e. a failed evaluation, as it is in Tilt. Only builtins listed here
exist; any other name fails to resolve.

`problems(rec, root)` then checks what the Tiltfile asked for against the repository:
every deps path and YAML file exists, every image built is used by some manifest,
every k8s_resource names a real workload (its port_forwards go to ports its containers
have; a serving workload is auto-triggered and auto_init), every local_resource
command's repository paths exist, every resource_dep a real resource, every
`objects=` fragment names exactly one object not already grouped, and no object is
left for Tilt's "uncategorized" resource. The grouping follows Tilt's
internal/tiltfile/tiltfile_state.go: each workload is a resource, a Service whose
selector matches a workload's pod labels joins it (internal/k8s/label.go
SelectorMatchesLabels: Services only), `objects=` moves the rest.

Blobs: starlark-pyo3 passes values as JSON, so `encode_yaml` returns its text behind
BLOB_PREFIX (k8s_yaml takes it as YAML, not as a path), and `local` returns a plain
string, from `local_outputs` (command -> output) given to evaluate(): the stub runs no
command.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import starlark as sl
import yaml
import yaml as _yaml

BLOB_PREFIX = "\u0000tilt-blob\u0000"
TRIGGER_MODE_AUTO = "TRIGGER_MODE_AUTO"
TRIGGER_MODE_MANUAL = "TRIGGER_MODE_MANUAL"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


@dataclass
class Recorder:
    root: str
    contexts: list = field(default_factory=list)
    builds: list = field(default_factory=list)
    yaml_files: list = field(default_factory=list)
    # YAML given as blobs (encode_yaml), as text.
    yaml_blobs: list = field(default_factory=list)
    resources: list = field(default_factory=list)
    local_resources: list = field(default_factory=list)
    local_commands: list = field(default_factory=list)
    read_yaml_files: list = field(default_factory=list)
    update_settings: dict = field(default_factory=dict)
    local_outputs: dict = field(default_factory=dict)


def _as_list(v):
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def make_builtins(rec: Recorder) -> dict:
    root = rec.root

    def abspath(p):
        return p if os.path.isabs(p) else os.path.join(root, p)

    def allow_k8s_contexts(contexts):
        rec.contexts.extend(_as_list(contexts))

    def custom_build(ref, command="", deps=[], tag="", disable_push=False, skips_local_docker=False,
                     live_update=[], match_in_env_vars=False, ignore=[], entrypoint=[], command_bat_val="",
                     outputs_image_ref_to="", command_bat="", image_deps=[], env={}, dir=""):
        rec.builds.append(dict(ref=ref, command=command, deps=_as_list(deps), tag=tag,
                               disable_push=disable_push, skips_local_docker=skips_local_docker,
                               live_update=_as_list(live_update), outputs_image_ref_to=outputs_image_ref_to))

    def k8s_yaml(yaml, allow_duplicates=False):
        for y in _as_list(yaml):
            if not isinstance(y, str):
                raise TypeError(f"k8s_yaml: the stub takes file paths and blobs only, got {type(y).__name__}")
            if y.startswith(BLOB_PREFIX):
                text = y[len(BLOB_PREFIX):]
                docs = [d for d in _yaml.safe_load_all(text) if d]
                if not docs or not all(isinstance(d, dict) and "apiVersion" in d and "kind" in d for d in docs):
                    raise ValueError("k8s_yaml: a blob holds no Kubernetes objects (apiVersion and kind)")
                rec.yaml_blobs.append(text)
                continue
            if not is_manifest_file(abspath(y)):
                raise ValueError(f"k8s_yaml: {y} holds no Kubernetes objects (apiVersion and kind)")
            rec.yaml_files.append(y)

    def k8s_resource(workload="", new_name="", port_forwards=[], extra_pod_selectors=[],
                     trigger_mode=TRIGGER_MODE_AUTO, resource_deps=[], objects=[], auto_init=True,
                     pod_readiness="", links=[], labels=[], discovery_strategy=""):
        rec.resources.append(dict(workload=workload, new_name=new_name, port_forwards=_as_list(port_forwards),
                                  trigger_mode=trigger_mode, resource_deps=_as_list(resource_deps),
                                  objects=_as_list(objects), auto_init=auto_init, labels=_as_list(labels),
                                  links=_as_list(links)))

    # Tilt's parameters (internal/tiltfile/local_resource.go).
    def local_resource(name, cmd="", deps=None, trigger_mode=TRIGGER_MODE_AUTO, resource_deps=[], ignore=[],
                       auto_init=True, serve_cmd="", cmd_bat="", serve_cmd_bat="", allow_parallel=False,
                       links=[], labels=[], env={}, serve_env={}, readiness_probe=None, dir="", serve_dir=""):
        rec.local_resources.append(dict(name=name, cmd=cmd, deps=_as_list(deps), trigger_mode=trigger_mode,
                                        resource_deps=_as_list(resource_deps), auto_init=auto_init,
                                        allow_parallel=allow_parallel, labels=_as_list(labels)))

    # Tilt's parameters (internal/tiltfile/files.go).
    def local(command, quiet=False, command_bat="", echo_off=False, env={}, dir="", stdin=None):
        rec.local_commands.append(command)
        if command not in rec.local_outputs:
            raise ValueError(f"local: the stub runs no command; evaluate() has no output for {command!r}")
        return rec.local_outputs[command]

    def read_yaml(paths, default=None):
        rec.read_yaml_files.append(os.path.relpath(abspath(paths), root))
        docs = read_yaml_stream(paths, default=None if default is None else [default])
        docs = [d for d in docs if d is not None]
        if len(docs) != 1:
            raise ValueError(f"read_yaml: {paths} holds {len(docs)} documents (read_yaml_stream reads several)")
        return docs[0]

    def encode_yaml(obj):
        return BLOB_PREFIX + _yaml.safe_dump(obj, sort_keys=False)

    # Tilt's parameters (internal/tiltfile/updatesettings/update_settings.go).
    def update_settings(max_parallel_updates=None, k8s_upsert_timeout_secs=None,
                        suppress_unused_image_warnings=None, k8s_server_side_apply=None):
        if max_parallel_updates is not None and max_parallel_updates < 1:
            raise ValueError("update_settings: max_parallel_updates must be >= 1")
        rec.update_settings.update({k: v for k, v in dict(
            max_parallel_updates=max_parallel_updates, k8s_upsert_timeout_secs=k8s_upsert_timeout_secs).items()
            if v is not None})

    def port_forward(local_port, container_port=None, name=None, link_path=None, host=None):
        if not isinstance(local_port, int) or not (container_port is None or isinstance(container_port, int)):
            raise TypeError("port_forward: ports are ints")
        return {"local_port": local_port, "container_port": container_port or local_port, "name": name,
                "link_path": link_path}

    def link(url, name=None):
        return {"url": url, "name": name}

    def listdir(directory, recursive=False):
        d = abspath(directory)
        if not os.path.isdir(d):
            raise ValueError(f"listdir: {directory} is not a directory")
        out = []
        for dirpath, dirnames, files in os.walk(d):
            out.extend(os.path.join(dirpath, f) for f in files)
            if not recursive:
                break
        return sorted(out)

    def read_file(file_path, default=None):
        p = abspath(file_path)
        if not os.path.exists(p):
            if default is None:
                raise ValueError(f"read_file: {file_path} does not exist")
            return default
        with open(p) as f:
            return f.read()

    def read_yaml_stream(paths, default=None):
        p = abspath(paths)
        if not os.path.exists(p):
            if default is None:
                raise ValueError(f"read_yaml_stream: {paths} does not exist")
            return default
        with open(p) as f:
            return list(yaml.safe_load_all(f))

    def os_path_exists(path):
        return os.path.exists(abspath(path))

    def os_getenv(key, default=None):
        return default

    def fail(msg):
        raise RuntimeError(f"Tiltfile fail(): {msg}")

    return dict(
        allow_k8s_contexts=allow_k8s_contexts, custom_build=custom_build, k8s_yaml=k8s_yaml,
        k8s_resource=k8s_resource, local_resource=local_resource, port_forward=port_forward, link=link,
        listdir=listdir, read_file=read_file, read_yaml_stream=read_yaml_stream, fail=fail,
        local=local, read_yaml=read_yaml, encode_yaml=encode_yaml, update_settings=update_settings,
        __os_path_exists=os_path_exists, __os_getenv=os_getenv,
    )


# Tilt's `os` module, built from the Python callables above (one line, so the
# Tiltfile's line numbers shift by one only).
PRELUDE = ("os = struct(path = struct(exists = __os_path_exists), getenv = __os_getenv); "
           "TRIGGER_MODE_AUTO = \"TRIGGER_MODE_AUTO\"; TRIGGER_MODE_MANUAL = \"TRIGGER_MODE_MANUAL\"\n")


# What `local(...)` commands print, unless evaluate() is given others.
DEFAULT_LOCAL_OUTPUTS = {"date -u +%Y%m%d-%H%M%S": "20260101-000000\n"}


def evaluate(tiltfile: str, root: str, source: str | None = None, local_outputs: dict | None = None) -> Recorder:
    """Runs the Tiltfile (or `source`, as if it were that file) and returns the calls."""
    if source is None:
        with open(tiltfile) as f:
            source = f.read()
    rec = Recorder(root=root, local_outputs=dict(DEFAULT_LOCAL_OUTPUTS if local_outputs is None else local_outputs))
    dialect = sl.Dialect.extended()
    dialect.enable_top_level_stmt = True
    dialect.enable_f_strings = True
    ast = sl.parse(os.path.basename(tiltfile), PRELUDE + source, dialect)
    globals_ = sl.Globals.extended_by([sl.LibraryExtension.StructType, sl.LibraryExtension.Print])
    module = sl.Module()
    for name, fn in make_builtins(rec).items():
        module.add_callable(name, fn)
    sl.eval(module, ast, globals_)
    return rec


def is_manifest_file(path):
    """A YAML file whose documents are all Kubernetes objects (a missing file passes:
    problems() reports it)."""
    if not os.path.exists(path):
        return True
    docs = [d for d in _load_docs(path)]
    return bool(docs) and all(isinstance(d, dict) and "apiVersion" in d and "kind" in d for d in docs)


def _load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _containers(doc):
    spec = doc.get("spec", {})
    if doc["kind"] == "Pod":
        pod = spec
    elif doc["kind"] == "CronJob":
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    else:
        pod = spec.get("template", {}).get("spec", {})
    return pod.get("containers", []) + pod.get("initContainers", [])


def _image_name(ref: str) -> str:
    # Drops a digest and a tag (not a registry port).
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref = ref[: len(ref) - len(last)] + last.split(":", 1)[0]
    return ref


def problems(rec: Recorder, root: str) -> list[str]:
    """What is wrong with the recorded calls, as messages (empty: nothing)."""
    out = []

    def rel(p):
        return os.path.relpath(p, root) if os.path.isabs(p) else p

    def exists(p):
        return os.path.exists(p if os.path.isabs(p) else os.path.join(root, p))

    if not rec.contexts:
        out.append("allow_k8s_contexts is never called")
    for b in rec.builds:
        if not b["deps"]:
            out.append(f"custom_build {b['ref']} has no deps")
        for d in b["deps"]:
            if not exists(d):
                out.append(f"custom_build {b['ref']}: deps path {d} does not exist")
    image_deps = {d.rstrip("/") for b in rec.builds for d in b["deps"]}
    for r in rec.local_resources:
        for d in r["deps"]:
            if not exists(d):
                out.append(f"local_resource {r['name']}: deps path {d} does not exist")
        out += [f"local_resource {r['name']}: {p}" for p in command_path_problems(str(r["cmd"]), root)]
        # Tilt starts no other update while a local resource without allow_parallel
        # runs (internal/engine/buildcontrol/build_control.go): one that runs on the
        # images' sources would hold their rebuild for as long as it runs.
        if (r["trigger_mode"] == TRIGGER_MODE_AUTO and not r["allow_parallel"]
                and image_deps & {d.rstrip("/") for d in r["deps"]}):
            out.append(f"local_resource {r['name']} runs on changes to the images' sources without "
                       "allow_parallel=True: Tilt holds the image rebuild until it finishes")

    entities, images = [], set()
    for y in rec.yaml_files:
        if not exists(y):
            out.append(f"k8s_yaml: {rel(y)} does not exist")
            continue
        entities += _load_docs(y if os.path.isabs(y) else os.path.join(root, y))
    for text in rec.yaml_blobs:
        entities += [d for d in yaml.safe_load_all(text) if d]
    if not entities:
        out.append("k8s_yaml is never called")
    workloads = {}
    for doc in entities:
        if doc.get("kind") in WORKLOAD_KINDS:
            workloads[doc["metadata"]["name"]] = doc
            images.update(_image_name(c["image"]) for c in _containers(doc))
    for b in rec.builds:
        if _image_name(b["ref"]) not in images:
            out.append(f"custom_build {b['ref']}: no manifest in k8s_yaml uses this image (images: {sorted(images)})")

    names = set(workloads)
    for r in rec.resources:
        if r["workload"] not in workloads:
            out.append(f"k8s_resource {r['workload']!r} names no workload of the YAML (workloads: {sorted(workloads)})")
        else:
            out += resource_problems(r, workloads[r["workload"]])
        if r["new_name"]:
            names.discard(r["workload"])
            names.add(r["new_name"])
    local_names = [r["name"] for r in rec.local_resources]
    for n in sorted({n for n in local_names if local_names.count(n) > 1} | (names & set(local_names))):
        out.append(f"resource name {n!r} is used twice")
    names |= set(local_names)
    for r in rec.resources + rec.local_resources:
        for dep in r["resource_deps"]:
            if dep not in names:
                out.append(f"resource {r.get('workload') or r.get('name')}: resource_deps {dep!r} is not a resource")
    out += grouping_problems(entities, rec.resources)
    return out


# Long-running workloads: Tilt must deploy them on `tilt up` and on every change. A
# manual one (a Job run on a click) is a choice; a manual server never rolls out.
SERVING_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}


def resource_problems(r, workload):
    """A k8s_resource against its workload: port forwards to ports a container has, and a
    serving workload deployed automatically."""
    out = []
    name = r["new_name"] or r["workload"]
    ports = {p["containerPort"] for c in _containers(workload) for p in c.get("ports", [])}
    for pf in r["port_forwards"]:
        if pf["container_port"] not in ports:
            out.append(f"k8s_resource {name}: port_forward to {pf['container_port']}, which no container of "
                       f"{workload['kind']} {workload['metadata']['name']} has (ports: {sorted(ports)})")
    if workload["kind"] in SERVING_KINDS:
        if r["trigger_mode"] != TRIGGER_MODE_AUTO:
            out.append(f"k8s_resource {name}: trigger_mode {r['trigger_mode']}: a change to its images or YAML "
                       "would wait for a click instead of rolling out")
        if r["auto_init"] is not True:
            out.append(f"k8s_resource {name}: auto_init={r['auto_init']}: `tilt up` would not deploy it")
    return out


# Shell words that are never paths of the repository.
_NOT_PATHS = re.compile(r"^(-|\$|/|~|[a-z]+://)|[$*?=]")


def command_path_problems(cmd, root):
    """A local_resource command's repository paths: the program of each command of it (a
    word with a slash) must be an executable file, every other word with a slash an
    existing path."""
    out = []
    for segment in re.split(r"&&|\|\||[;|&]", cmd):
        words = segment.split()
        for i, w in enumerate(words):
            w = w.strip("'\"")
            if "/" not in w or _NOT_PATHS.search(w):
                continue
            path = os.path.join(root, w)
            if i == 0 and not (os.path.isfile(path) and os.access(path, os.X_OK)):
                out.append(f"cmd {w} is not an executable file of the repository")
            elif i > 0 and not os.path.exists(path):
                out.append(f"cmd names {w}, which does not exist in the repository")
    return out


def _namespace(doc):
    return doc.get("metadata", {}).get("namespace") or "default"


def _fragments(doc):
    """Tilt's names for an object, shortest first (internal/k8s/names.go potentialNames):
    name, name:kind, name:kind:namespace, name:kind:namespace:group; lower case."""
    api = doc.get("apiVersion", "")
    group = api.split("/")[0] if "/" in api else "core"
    parts = [doc["metadata"]["name"], doc["kind"], _namespace(doc), group]
    return [":".join(parts[:i]).lower() for i in range(1, len(parts) + 1)]


def _pod_labels(doc):
    spec = doc.get("spec", {})
    if doc["kind"] == "Pod":
        return doc.get("metadata", {}).get("labels") or {}
    if doc["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["metadata"].get("labels") or {}
    return spec.get("template", {}).get("metadata", {}).get("labels") or {}


def grouping_problems(entities: list, resources: list) -> list[str]:
    """Tilt's grouping of the YAML's objects into resources: what `objects=` cannot
    resolve, and every object left over (Tilt's "uncategorized" resource, which Tilt
    applies on its own, in no order with the workloads)."""
    out = []
    resourced = set()
    workloads = [d for d in entities if d.get("kind") in WORKLOAD_KINDS]
    for w in workloads:
        resourced.add(id(w))
    for w in workloads:
        labels = _pod_labels(w)
        for d in entities:
            if id(d) in resourced or d.get("kind") != "Service" or _namespace(d) != _namespace(w):
                continue
            sel = d.get("spec", {}).get("selector") or {}
            if sel and all(labels.get(k) == v for k, v in sel.items()):
                resourced.add(id(d))
    by_fragment = {}
    for d in entities:
        for f in _fragments(d):
            by_fragment.setdefault(f, []).append(d)
    for r in resources:
        for o in r["objects"]:
            found = by_fragment.get(str(o).lower(), [])
            if not found:
                out.append(f"k8s_resource {r['workload']!r}: objects {o!r} names no object of the YAML")
            elif len(found) > 1:
                out.append(f"k8s_resource {r['workload']!r}: objects {o!r} is not unique "
                           f"({sorted(_fragments(d)[1] for d in found)})")
            elif id(found[0]) in resourced:
                out.append(f"k8s_resource {r['workload']!r}: objects {o!r} is already in a resource")
            else:
                resourced.add(id(found[0]))
    for d in entities:
        if id(d) not in resourced:
            out.append(f"{d['kind']} {d['metadata']['name']} is in no resource: Tilt shows it as "
                       "'uncategorized' and applies it apart from the workload that needs it "
                       "(attach it with k8s_resource(objects=[...]))")
    return out

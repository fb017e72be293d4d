#!/usr/bin/env python3
"""Reads a container of a Kubernetes manifest and prints what `docker run` needs to
start it as the kubelet would, one item per line:

    podspec.py FILE KIND NAME POD_NAME

prints `env NAME=VALUE` lines (downward-API `metadata.name` becomes POD_NAME and
`metadata.namespace` `default`), then
`arg VALUE` lines, `port N` (containerPorts), `claim PATH` (a volumeClaimTemplate's
mount: a named volume per replica), `tmpfs PATH` (an emptyDir mount), and the
security settings: `user UID:GID`, `readonly`, `nonewprivs`, `capdrop CAP`,
`probe readiness|liveness PORT PATH` (httpGet probes, a named port resolved to its
number; a port that names no container port is an error), and
`grace SECONDS` (terminationGracePeriodSeconds, for `docker stop -t`). `$(VAR)` in args and env values is expanded from the container's
env the way the kubelet does (unknown references stay as they are).

Only what the rehearsal emulates is supported: a field it cannot emulate (command,
an env source other than metadata.name, workingDir) is an error, so the rehearsal
can never silently diverge from the manifest.
"""
import re
import sys

import yaml

# What the rehearsal's "pods" get from the downward API.
NAMESPACE = "default"


def expand(value, env):
    # $(VAR) -> env[VAR]; $$(VAR) -> literal $(VAR), as Kubernetes does.
    def sub(m):
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)


def pod_spec(doc):
    if doc["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "ReplicaSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "Pod":
        return doc["spec"]
    raise SystemExit(f"podspec: unsupported kind {doc['kind']}")


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    path, kind, name, pod_name = sys.argv[1:]
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    if len(matches) != 1:
        raise SystemExit(f"podspec: {path} has {len(matches)} {kind} named {name}")
    spec = pod_spec(matches[0])
    containers = spec["containers"]
    if len(containers) != 1:
        raise SystemExit(f"podspec: expected one container in {kind}/{name}, found {len(containers)}")
    c = containers[0]
    for unsupported in ("command", "workingDir", "envFrom"):
        if unsupported in c:
            raise SystemExit(f"podspec: {kind}/{name} uses '{unsupported}', which the rehearsal does not emulate")
    env = {}
    out = []
    for e in c.get("env", []):
        if "value" in e:
            value = expand(str(e["value"]), env)
        else:
            field = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            if field == "metadata.name":
                value = pod_name
            elif field == "metadata.namespace":
                value = NAMESPACE
            else:
                raise SystemExit(f"podspec: env {e['name']} comes from {e.get('valueFrom')}, not emulated")
        env[e["name"]] = value
        out.append(f"env {e['name']}={value}")
    for a in c.get("args", []):
        out.append(f"arg {expand(str(a), env)}")
    ports = {}
    for p in c.get("ports", []):
        out.append(f"port {p['containerPort']}")
        if "name" in p:
            ports[p["name"]] = p["containerPort"]
    numbers = set(ports.values()) | {p["containerPort"] for p in c.get("ports", [])}
    for kind_, key in (("readiness", "readinessProbe"), ("liveness", "livenessProbe")):
        probe = c.get(key)
        if probe is None:
            continue
        http = probe.get("httpGet")
        if http is None:
            raise SystemExit(f"podspec: {kind}/{name}'s {key} is not an httpGet probe, which the rehearsal does not emulate")
        port = ports.get(http["port"], http["port"])
        if port not in numbers:
            raise SystemExit(f"podspec: {kind}/{name}'s {key} port {http['port']!r} names no container port")
        out.append(f"probe {kind_} {port} {http.get('path', '/')}")
    claims = {t["metadata"]["name"] for t in matches[0].get("spec", {}).get("volumeClaimTemplates", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        if m["name"] in claims:
            out.append(f"claim {m['mountPath']}")
        elif "emptyDir" in volumes.get(m["name"], {}):
            out.append(f"tmpfs {m['mountPath']}")
        else:
            raise SystemExit(f"podspec: volume {m['name']} is neither a claim template nor an emptyDir")
    psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup", uid))
    if uid is not None:
        out.append(f"user {uid}:{gid}")
    if csc.get("readOnlyRootFilesystem"):
        out.append("readonly")
    if csc.get("allowPrivilegeEscalation") is False:
        out.append("nonewprivs")
    for cap in csc.get("capabilities", {}).get("drop", []):
        out.append(f"capdrop {cap}")
    out.append(f"grace {spec.get('terminationGracePeriodSeconds', 30)}")
    for line in out:
        if "\n" in line:
            raise SystemExit(f"podspec: a value spans lines: {line!r}")
        print(line)


if __name__ == "__main__":
    main()

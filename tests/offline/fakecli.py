#!/usr/bin/env python3
"""A scripted stand-in for kubectl, docker, tilt (any tool) in the offline tests of the
scripts that drive a real cluster (k8s/tilt/faults, k8s/tilt/revalidate, k8s/raftkv).
Nothing here runs a cluster: these tests check what a script asks the tools to do, in
which order, and what it prints from their answers. It is a mock on purpose, at the
boundary of the tools' command lines; the real tools are exercised only on a real
cluster.

`install(bin_dir, tools, scenario, workdir)` makes `bin_dir/<tool>` for each tool; the
test puts bin_dir first on PATH. A scenario is a dict:

    {"state": {...},                      # initial state (strings)
     "rules": [{"tool": "kubectl",        # which tool
                "match": "REGEX",         # re.search on the arguments joined by spaces
                "when": {"k": "v"},       # optional: state must hold these
                "times": N,               # optional: only the first N matching calls
                "stdout": "...", "rc": 0, # the answer
                "set": {"k": "v"}}]}      # optional: state changes

The first rule that matches answers. A call no rule matches exits 97 with a message.
Every call is logged as a JSON line [tool, arg, ...] to workdir/calls.jsonl, and the
variables of LOGGED_ENV it saw as a JSON object to workdir/env.jsonl (`envs`).
"""
import fcntl
import json
import os
import re
import sys


def install(bin_dir, tools, scenario, workdir):
    os.makedirs(bin_dir, exist_ok=True)
    with open(os.path.join(workdir, "scenario.json"), "w") as f:
        json.dump(scenario, f)
    with open(os.path.join(workdir, "state.json"), "w") as f:
        json.dump({"state": scenario.get("state", {}), "counts": {}}, f)
    for tool in tools:
        path = os.path.join(bin_dir, tool)
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\nexec {sys.executable} {os.path.abspath(__file__)} {tool} {workdir} \"$@\"\n")
        os.chmod(path, 0o755)


# The variables each call's environment is logged with (None: unset).
LOGGED_ENV = ("RAFTKV_ENDPOINTS",)


def _records(workdir, name):
    """The JSON lines of `name` in `workdir` (none yet: empty)."""
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def envs(workdir):
    """One {variable: value} per call, in the order of calls()."""
    return _records(workdir, "env.jsonl")


def calls(workdir):
    return _records(workdir, "calls.jsonl")


def main():
    tool, workdir, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(os.path.join(workdir, "scenario.json")) as f:
        scenario = json.load(f)
    with open(os.path.join(workdir, "state.json"), "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        st = json.load(f)
        with open(os.path.join(workdir, "calls.jsonl"), "a") as log:
            log.write(json.dumps([tool] + args) + "\n")
        with open(os.path.join(workdir, "env.jsonl"), "a") as log:
            log.write(json.dumps({k: os.environ.get(k) for k in LOGGED_ENV}) + "\n")
        line = " ".join(args)
        for i, rule in enumerate(scenario["rules"]):
            if rule["tool"] != tool or not re.search(rule["match"], line):
                continue
            if any(st["state"].get(k) != v for k, v in rule.get("when", {}).items()):
                continue
            used = st["counts"].get(str(i), 0)
            if "times" in rule and used >= rule["times"]:
                continue
            st["counts"][str(i)] = used + 1
            st["state"].update(rule.get("set", {}))
            f.seek(0)
            f.truncate()
            json.dump(st, f)
            sys.stdout.write(rule.get("stdout", ""))
            sys.stderr.write(rule.get("stderr", ""))
            return rule.get("rc", 0)
    sys.stderr.write(f"fakecli: no rule for: {tool} {line}\n")
    return 97


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The bookkeeping of bench/compare-etcd.sh: which connection count did best in the
sweep, and the table of the repeated runs (median, min and max).

    compare_etcd.py best DIR TARGET WORKLOAD CLIENTS VALUE N...   # prints the best N
    compare_etcd.py table DIR                                      # prints markdown

Files (raftkv-bench --json reports), under DIR:
    sweep/<target>-<workload>-c<clients>-v<value>-n<connections>.json   one per configuration
    runs/<target>-<workload>-c<clients>-v<value>-n<connections>-r<rep>.json
A report whose workload does not match its file name is refused (exit 1): the table
would otherwise credit one configuration with another's figures.
"""
import json
import os
import re
import statistics
import sys

TARGETS = ("raftkv", "etcd")
WORKLOADS = {"write": ("write-only", 0.0), "read": ("linearizable read", 1.0), "mixed": ("50/50", 0.5)}
NAME = re.compile(r"^(raftkv|etcd)-(write|read|mixed)-c(\d+)-v(\d+)-n(\d+)(?:-r(\d+))?\.json$")


class BadReport(Exception):
    pass


def load(path):
    """The report at `path`, checked against what its name says it measured."""
    m = NAME.match(os.path.basename(path))
    if not m:
        raise BadReport(f"{path}: not a <target>-<workload>-c<N>-v<B>-n<M>[-r<R>].json name")
    target, w, c, v, n = m.group(1), m.group(2), int(m.group(3)), int(m.group(4)), int(m.group(5))
    with open(path) as f:
        r = json.load(f)
    wl = r.get("workload", {})
    want = {"target": target, "clients": c, "value_size": v, "connections": n, "reads": WORKLOADS[w][1]}
    got = {"target": r.get("target"), "clients": wl.get("clients"), "value_size": wl.get("value_size"),
           "connections": wl.get("connections"), "reads": wl.get("reads")}
    if got != want:
        raise BadReport(f"{path}: the report measured {got}, its name says {want}")
    return r


def best(d, target, w, c, v, candidates):
    """The connection count with the highest throughput among the sweep's error-free
    runs; ties go to fewer connections. With one candidate there is nothing to sweep."""
    if len(candidates) == 1:
        return candidates[0]
    scored = []
    for n in candidates:
        p = os.path.join(d, "sweep", f"{target}-{w}-c{c}-v{v}-n{n}.json")
        if not os.path.exists(p):
            continue
        r = load(p)
        if r["errors"] == 0 and r["total"]["ops"] > 0:
            scored.append((-r["total"]["throughput"], n))
    if not scored:
        raise BadReport(f"{target} {w} c={c} v={v}: no error-free sweep run among connections {candidates}")
    return min(scored)[1]


def summarize(reports):
    """Median, min and max of the repetitions of one configuration."""
    ops = [r["total"]["throughput"] for r in reports]
    med = lambda xs: statistics.median(xs) if xs else None
    cpu = [r["cpu"] for r in reports if r.get("cpu")]
    return {
        "n": len(reports),
        "ops": med(ops), "min": min(ops), "max": max(ops),
        "p50": med([r["total"]["latency_ms"]["p50"] for r in reports]),
        "p99": med([r["total"]["latency_ms"]["p99"] for r in reports]),
        "server_us": med([c["server_us_per_op"] for c in cpu]),
        "client_us": med([c["client_us_per_op"] for c in cpu]),
        "errors": sum(r["errors"] for r in reports),
    }


def collect(d):
    """{(workload, clients, value): {target: (connections, [reports])}} of runs/."""
    runs = {}
    rd = os.path.join(d, "runs")
    for f in sorted(os.listdir(rd)) if os.path.isdir(rd) else []:
        if not f.endswith(".json"):
            continue
        m = NAME.match(f)
        if not m or m.group(6) is None:
            raise BadReport(f"{os.path.join(rd, f)}: a repetition's name ends in -r<R>.json")
        key = (m.group(2), int(m.group(3)), int(m.group(4)))
        n, r = int(m.group(5)), load(os.path.join(rd, f))
        prev = runs.setdefault(key, {}).setdefault(m.group(1), (n, []))
        if prev[0] != n:
            raise BadReport(f"{key}: {m.group(1)} ran with {prev[0]} and {n} connections; the table takes one")
        prev[1].append(r)
    return runs


def fmt_ops(s):
    return f'{s["ops"]:,.0f} ({s["min"]:,.0f}–{s["max"]:,.0f})'


def pair(a, b, f):
    return f'{f(a) if a else "-"} / {f(b) if b else "-"}'


def row(key, sides):
    w, c, v = key
    r, e = (summarize(sides[t][1]) if t in sides else None for t in TARGETS)
    conns = lambda t: str(sides[t][0]) if t in sides else "-"
    ratio = f'{r["ops"] / e["ops"]:.2f}x' if r and e and e["ops"] else "-"
    p99r = f'{r["p99"] / e["p99"]:.2f}' if r and e and e["p99"] else "-"
    lat = lambda s: f'{s["p50"]:.2f} / {s["p99"]:.2f}'
    us = lambda k: lambda s: "-" if s[k] is None else f"{s[k]:.0f}"
    reps = pair(r, e, lambda s: str(s["n"]))
    return (f'| {WORKLOADS[w][0]} | {v} B | {c} | {conns("raftkv")} | {fmt_ops(r) if r else "-"} | '
            f'{conns("etcd")} | {fmt_ops(e) if e else "-"} | {ratio} | {lat(r) if r else "-"} | '
            f'{lat(e) if e else "-"} | {p99r} | {pair(r, e, us("server_us"))} | {pair(r, e, us("client_us"))} | '
            f'{reps} | {pair(r, e, lambda s: str(s["errors"]))} |')


HEADER = ("| workload | value | clients | raftkv conns | raftkv ops/s median (min–max) | etcd conns | "
          "etcd ops/s median (min–max) | ratio | raftkv p50 / p99 ms | etcd p50 / p99 ms | p99 ratio | "
          "server CPU µs/op r / e | load-gen CPU µs/op r / e | runs r / e | errors r / e |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def table(d):
    runs = collect(d)
    order = lambda k: (k[2], list(WORKLOADS).index(k[0]), k[1])
    return "\n".join([HEADER] + [row(k, runs[k]) for k in sorted(runs, key=order)])


def sweep_table(d):
    """Every sweep configuration's throughput, so a reader sees what the best beat."""
    sd, cells = os.path.join(d, "sweep"), {}
    for f in sorted(os.listdir(sd)) if os.path.isdir(sd) else []:
        m = NAME.match(f)
        if m and m.group(6) is None:
            r = load(os.path.join(sd, f))
            key = (m.group(2), int(m.group(3)), int(m.group(4)), m.group(1))
            flag = "" if r["errors"] == 0 else f' ({r["errors"]} errors)'
            cells.setdefault(key, []).append((int(m.group(5)), f'{r["total"]["throughput"]:,.0f}{flag}'))
    lines = ["| workload | value | clients | store | ops/s by connections |", "|---|---:|---:|---|---|"]
    for (w, c, v, t), cs in sorted(cells.items(), key=lambda i: (i[0][2], list(WORKLOADS).index(i[0][0]), i[0][1], i[0][3])):
        lines.append(f'| {WORKLOADS[w][0]} | {v} B | {c} | {t} | ' + ", ".join(f"{n}: {x}" for n, x in sorted(cs)) + " |")
    return "\n".join(lines)


def main(argv):
    try:
        if len(argv) >= 7 and argv[1] == "best":
            d, t, w, c, v = argv[2], argv[3], argv[4], int(argv[5]), int(argv[6])
            print(best(d, t, w, c, v, [int(n) for n in argv[7:]] or [1]))
        elif len(argv) == 3 and argv[1] == "table":
            print(table(argv[2]))
        elif len(argv) == 3 and argv[1] == "sweep":
            print(sweep_table(argv[2]))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except BadReport as e:
        print(f"compare_etcd.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""The bookkeeping of bench/compare-etcd.sh: which configuration did best in the sweep,
and the table of the repeated runs (median, min and max).

    compare_etcd.py best DIR TARGET WORKLOAD CLIENTS VALUE CONFIG...   # prints the best CONFIG
    compare_etcd.py table DIR                                           # prints markdown
    compare_etcd.py sweep DIR                                           # prints markdown

A configuration (CONFIG, the text after -n in the file names) is how the load
generator's clients reach the store, and on which of its clusters:
    <n>        n connections shared by the clients, one RPC per operation (etcd)
    <n>-b<K>   raftkv: n connections and batch K: batch RPCs with up to K in flight per
               connection (raftkv-bench --batch-in-flight K); K = 0: one RPC per operation
    ...-t<T>   either, at the end: the store's servers ran on T threads (raftkv
               --worker-threads T, etcd GOMAXPROCS=T); without it, at their default
The table shows <n>-b0 as "<n>", <n>-b<K> as "<n>, batch <K>" and -t1 as ", 1 server
thread" after either (the sweep's as "<n> batch <K> t1").

Files (raftkv-bench --json reports), under DIR:
    sweep/<target>-<workload>-c<clients>-v<value>-n<config>.json   one per configuration
    runs/<target>-<workload>-c<clients>-v<value>-n<config>-r<rep>.json
A report whose workload does not match its file name (clients, value size, reads,
connections, batches in flight: a name without -b<K>, and a report without
workload.batch_in_flight, mean 0; server threads: the report's label is
"server-threads=<T>", or "server-threads=default" without -t<T>, as is a report without
a label) is refused (exit 1): the table would otherwise credit one configuration with
another's figures.
"""
import json
import os
import re
import statistics
import sys

TARGETS = ("raftkv", "etcd")
WORKLOADS = {"write": ("write-only", 0.0), "read": ("linearizable read", 1.0), "mixed": ("50/50", 0.5)}
# A configuration. -t0 is not a thread count: the default is the absence of -t<T>, so
# that one setting has one name.
CONFIG_PATTERN = r"(?P<n>\d+)(?:-b(?P<k>\d+))?(?:-t(?P<t>[1-9]\d*))?"
NAME = re.compile(r"^(?P<target>raftkv|etcd)-(?P<w>write|read|mixed)-c(?P<c>\d+)-v(?P<v>\d+)"
                  rf"-n(?P<cfg>{CONFIG_PATTERN})(?:-r(?P<r>\d+))?\.json$")
CONFIG = re.compile(rf"^{CONFIG_PATTERN}$")


class BadReport(Exception):
    pass


def parse_config(cfg):
    """(connections, batches in flight, server threads) of a configuration, threads 0 for
    the store's default: "4" and "4-b0" are (4, 0, 0), "1-b1-t1" is (1, 1, 1)."""
    m = CONFIG.match(str(cfg))
    if not m:
        raise BadReport(f"{cfg!r}: not a configuration (<connections>[-b<batches in flight>][-t<server threads>])")
    return int(m["n"]), int(m["k"] or 0), int(m["t"] or 0)


def label(cfg, short=False):
    """How the tables name a configuration: "4" for 4 or 4-b0, "1, batch 1" for 1-b1,
    "1, batch 1, 1 server thread" for 1-b1-t1; `short` (the sweep's): "1 batch 1 t1"."""
    n, k, t = parse_config(cfg)
    sep = " " if short else ", "
    parts = [str(n)] + ([f"batch {k}"] if k else [])
    if t:
        parts.append(f"t{t}" if short else f"{t} server thread{'s' if t > 1 else ''}")
    return sep.join(parts)


def threads_label(t):
    """The report label (raftkv-bench --label) of a run at `t` server threads, 0 the default."""
    return f"server-threads={t or 'default'}"


def load(path):
    """The report at `path`, checked against what its name says it measured."""
    m = NAME.match(os.path.basename(path))
    if not m:
        raise BadReport(f"{path}: not a <target>-<workload>-c<N>-v<B>-n<M>[-b<K>][-t<T>][-r<R>].json name")
    target, w, c, v = m["target"], m["w"], int(m["c"]), int(m["v"])
    with open(path) as f:
        r = json.load(f)
    wl = r.get("workload", {})
    want = {"target": target, "clients": c, "value_size": v, "connections": int(m["n"]),
            "batch_in_flight": int(m["k"] or 0), "reads": WORKLOADS[w][1], "label": threads_label(int(m["t"] or 0))}
    # No label: a report from before the thread setting was swept, at the default.
    got = {"target": r.get("target"), "clients": wl.get("clients"), "value_size": wl.get("value_size"),
           "connections": wl.get("connections"), "batch_in_flight": wl.get("batch_in_flight", 0),
           "reads": wl.get("reads"), "label": r.get("label") or threads_label(0)}
    if got != want:
        raise BadReport(f"{path}: the report measured {got}, its name says {want}")
    return r


def best(d, target, w, c, v, candidates):
    """The configuration (of `candidates`: strings such as "4", "1-b1" or "1-b1-t1", or
    connection counts) with the highest throughput among the sweep's error-free runs, as
    its string; ties go to fewer connections, then fewer batches in flight, then the
    default server threads. With one candidate there is nothing to sweep."""
    candidates = [str(cfg) for cfg in candidates]
    keys = {cfg: parse_config(cfg) for cfg in candidates}
    if len(candidates) == 1:
        return candidates[0]
    scored = []
    for cfg in candidates:
        p = os.path.join(d, "sweep", f"{target}-{w}-c{c}-v{v}-n{cfg}.json")
        if not os.path.exists(p):
            continue
        r = load(p)
        if r["errors"] == 0 and r["total"]["ops"] > 0:
            scored.append((-r["total"]["throughput"], keys[cfg], cfg))
    if not scored:
        raise BadReport(f"{target} {w} c={c} v={v}: no error-free sweep run among configurations {candidates}")
    return min(scored)[2]


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
    """{(workload, clients, value): {target: (configuration, [reports])}} of runs/."""
    runs = {}
    rd = os.path.join(d, "runs")
    for f in sorted(os.listdir(rd)) if os.path.isdir(rd) else []:
        if not f.endswith(".json"):
            continue
        m = NAME.match(f)
        if not m or m["r"] is None:
            raise BadReport(f"{os.path.join(rd, f)}: a repetition's name ends in -r<R>.json")
        key = (m["w"], int(m["c"]), int(m["v"]))
        cfg, r = m["cfg"], load(os.path.join(rd, f))
        prev = runs.setdefault(key, {}).setdefault(m["target"], (cfg, []))
        if prev[0] != cfg:
            raise BadReport(f"{key}: {m['target']} ran in configurations {prev[0]} and {cfg}; the table takes one")
        prev[1].append(r)
    return runs


def fmt_ops(s):
    return f'{s["ops"]:,.0f} ({s["min"]:,.0f}–{s["max"]:,.0f})'


def pair(a, b, f):
    return f'{f(a) if a else "-"} / {f(b) if b else "-"}'


def row(key, sides):
    w, c, v = key
    r, e = (summarize(sides[t][1]) if t in sides else None for t in TARGETS)
    config = lambda t: label(sides[t][0]) if t in sides else "-"
    ratio = f'{r["ops"] / e["ops"]:.2f}x' if r and e and e["ops"] else "-"
    p99r = f'{r["p99"] / e["p99"]:.2f}' if r and e and e["p99"] else "-"
    lat = lambda s: f'{s["p50"]:.2f} / {s["p99"]:.2f}'
    us = lambda k: lambda s: "-" if s[k] is None else f"{s[k]:.0f}"
    reps = pair(r, e, lambda s: str(s["n"]))
    return (f'| {WORKLOADS[w][0]} | {v} B | {c} | {config("raftkv")} | {fmt_ops(r) if r else "-"} | '
            f'{config("etcd")} | {fmt_ops(e) if e else "-"} | {ratio} | {lat(r) if r else "-"} | '
            f'{lat(e) if e else "-"} | {p99r} | {pair(r, e, us("server_us"))} | {pair(r, e, us("client_us"))} | '
            f'{reps} | {pair(r, e, lambda s: str(s["errors"]))} |')


HEADER = ("| workload | value | clients | raftkv config | raftkv ops/s median (min–max) | etcd config | "
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
        if m and m["r"] is None:
            r = load(os.path.join(sd, f))
            key = (m["w"], int(m["c"]), int(m["v"]), m["target"])
            flag = "" if r["errors"] == 0 else f' ({r["errors"]} errors)'
            ops = f'{r["total"]["throughput"]:,.0f}{flag}'
            cells.setdefault(key, []).append((parse_config(m["cfg"]), m["cfg"], ops))
    lines = ["| workload | value | clients | store | ops/s by configuration (connections, batch K, tT: T server threads) |",
             "|---|---:|---:|---|---|"]
    for (w, c, v, t), cs in sorted(cells.items(), key=lambda i: (i[0][2], list(WORKLOADS).index(i[0][0]), i[0][1], i[0][3])):
        lines.append(f'| {WORKLOADS[w][0]} | {v} B | {c} | {t} | '
                     + "; ".join(f"{label(cfg, short=True)}: {x}" for _, cfg, x in sorted(cs)) + " |")
    return "\n".join(lines)


def main(argv):
    try:
        if len(argv) >= 7 and argv[1] == "best":
            d, t, w, c, v = argv[2], argv[3], argv[4], int(argv[5]), int(argv[6])
            print(best(d, t, w, c, v, argv[7:] or ["1"]))
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

"""bench/compare_etcd.py, the bookkeeping of bench/compare-etcd.sh: the sweep's choice
of each store's best configuration (connections; raftkv also batches in flight; the
servers' thread setting), the median/min/max table of the repetitions, and its refusal
of reports that do not match their file names."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import compare_etcd as ce  # noqa: E402

READS = {"write": 0.0, "read": 1.0, "mixed": 0.5}


def report(target, w, c, v, n, ops_s, p50=1.0, p99=2.0, errors=0, server_us=None, client_us=None, batch=None,
           label=None):
    """A raftkv-bench --json report; `batch`: workload.batch_in_flight (None: absent, as
    in the reports from before batching); `label`: its label (None, as before the thread
    setting was swept)."""
    r = {"target": target, "label": label,
         "workload": {"clients": c, "connections": n, "value_size": v, "reads": READS[w]},
         "total": {"throughput": ops_s, "ops": int(ops_s * 2), "latency_ms": {"p50": p50, "p99": p99}},
         "errors": errors}
    if batch is not None:
        r["workload"]["batch_in_flight"] = batch
    if server_us is not None:
        r["cpu"] = {"server_us_per_op": server_us, "client_us_per_op": client_us}
    return r


def put(d, sub, name, r):
    os.makedirs(os.path.join(d, sub), exist_ok=True)
    with open(os.path.join(d, sub, name), "w") as f:
        json.dump(r, f)


def test_best_is_the_fastest_error_free_configuration_and_ties_go_to_fewer_connections(tmp_path):
    d = str(tmp_path)
    for n, ops, errs in [(1, 5000, 0), (4, 9000, 0), (16, 12000, 3), (64, 9000, 0)]:
        put(d, "sweep", f"etcd-write-c64-v100-n{n}.json", report("etcd", "write", 64, 100, n, ops, errors=errs))
    # 16 was fastest but had errors; 4 and 64 tie: fewer connections win.
    assert ce.best(d, "etcd", "write", 64, 100, [1, 4, 16, 64]) == "4"
    assert ce.best(d, "raftkv", "write", 1, 100, [1]) == "1"  # nothing to sweep


def test_best_without_any_usable_sweep_run_is_an_error(tmp_path):
    d = str(tmp_path)
    put(d, "sweep", "etcd-read-c16-v100-n4.json", report("etcd", "read", 16, 100, 4, 100, errors=1))
    with pytest.raises(ce.BadReport, match="no error-free sweep run"):
        ce.best(d, "etcd", "read", 16, 100, [1, 4, 16])


def test_table_gives_median_min_max_and_names_each_sides_configuration(tmp_path):
    d = str(tmp_path)
    for r, (rk, et) in enumerate([(20000, 9000), (30000, 8000), (22000, 13000)], start=1):
        put(d, "runs", f"raftkv-write-c64-v100-n4-r{r}.json",
            report("raftkv", "write", 64, 100, 4, rk, p99=r * 1.0, server_us=60 + r, client_us=20))
        put(d, "runs", f"etcd-write-c64-v100-n16-r{r}.json",
            report("etcd", "write", 64, 100, 16, et, p99=10.0, server_us=400, client_us=100 + r))
    lines = ce.table(d).splitlines()
    assert len(lines) == 3
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = dict(zip(header, cells))
    assert row["raftkv config"] == "4" and row["etcd config"] == "16"
    assert row["raftkv ops/s median (min–max)"] == "22,000 (20,000–30,000)"  # the median, not the mean
    assert row["etcd ops/s median (min–max)"] == "9,000 (8,000–13,000)"
    assert row["ratio"] == f"{22000 / 9000:.2f}x"
    assert row["raftkv p50 / p99 ms"] == "1.00 / 2.00"  # median p99 of 1, 2, 3
    assert row["p99 ratio"] == "0.20"
    assert row["server CPU µs/op r / e"] == "62 / 400"
    assert row["load-gen CPU µs/op r / e"] == "20 / 102"
    assert row["runs r / e"] == "3 / 3"


def test_a_store_with_no_runs_shows_dashes_not_a_ratio(tmp_path):
    d = str(tmp_path)
    put(d, "runs", "raftkv-read-c1-v100-n1-r1.json", report("raftkv", "read", 1, 100, 1, 3000))
    row = ce.table(d).splitlines()[2]
    assert "| - | - |" in row and "x |" not in row


def test_a_report_that_does_not_match_its_name_is_refused(tmp_path):
    d = str(tmp_path)
    # Named 16 connections, but measured with 64: the table would credit the wrong setting.
    put(d, "runs", "etcd-write-c64-v100-n16-r1.json", report("etcd", "write", 64, 100, 64, 9000))
    with pytest.raises(ce.BadReport, match="its name says"):
        ce.table(d)


def test_one_store_with_two_configurations_in_its_repetitions_is_refused(tmp_path):
    d = str(tmp_path)
    put(d, "runs", "etcd-write-c64-v100-n16-r1.json", report("etcd", "write", 64, 100, 16, 9000))
    put(d, "runs", "etcd-write-c64-v100-n4-r2.json", report("etcd", "write", 64, 100, 4, 9000))
    with pytest.raises(ce.BadReport, match="configurations (16 and 4|4 and 16);"):
        ce.table(d)


def test_the_command_line_exits_non_zero_on_a_bad_report(tmp_path):
    d = str(tmp_path)
    put(d, "sweep", "raftkv-write-c64-v100-n4.json", report("raftkv", "read", 64, 100, 4, 1))
    cmd = [sys.executable, os.path.join(ROOT, "bench", "compare_etcd.py"), "best", d, "raftkv", "write", "64",
           "100", "1", "4"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "its name says" in r.stderr
    put(d, "sweep", "raftkv-write-c64-v100-n4.json", report("raftkv", "write", 64, 100, 4, 1))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, "4\n")


def sweep(d, target, w, c, ops_by_config):
    """Sweep reports of `w` at `c` clients, 100 B values: {"<n>[-b<K>][-t<T>]": ops/s},
    each labelled with its thread setting as compare-etcd.sh's runs are."""
    for cfg, ops in ops_by_config.items():
        n, k, t = ce.parse_config(cfg)
        put(d, "sweep", f"{target}-{w}-c{c}-v100-n{cfg}.json",
            report(target, w, c, 100, n, ops, batch=k, label=ce.threads_label(t)))
    return list(ops_by_config)


def sweep_raftkv(d, w, c, ops_by_config):
    return sweep(d, "raftkv", w, c, ops_by_config)


def test_best_picks_a_batched_configuration_and_ties_go_to_fewer_connections_then_fewer_batches(tmp_path):
    d = str(tmp_path)
    # Batching wins outright: the configuration string comes back, batch and all.
    cfgs = sweep_raftkv(d, "write", 64, {"1-b0": 5000, "4-b0": 9000, "16-b0": 9500, "64-b0": 8000,
                                         "1-b1": 11000, "1-b4": 10000, "4-b1": 14000, "4-b4": 13000})
    assert ce.best(d, "raftkv", "write", 64, 100, cfgs) == "4-b1"
    # A tie between 1-b4 and 4-b1: fewer connections first, however many batches.
    cfgs = sweep_raftkv(d, "read", 64, {"1-b0": 5000, "4-b0": 9000, "16-b0": 9000, "64-b0": 8000,
                                        "1-b1": 11000, "1-b4": 20000, "4-b1": 20000, "4-b4": 20000})
    assert ce.best(d, "raftkv", "read", 64, 100, cfgs) == "1-b4"
    # A tie at one connection count: fewer batches in flight; and 4 connections before
    # 16, however the strings sort.
    cfgs = sweep_raftkv(d, "mixed", 64, {"1-b0": 5000, "1-b1": 7000, "1-b4": 7000})
    assert ce.best(d, "raftkv", "mixed", 64, 100, cfgs) == "1-b1"
    cfgs = sweep_raftkv(d, "write", 16, {"1-b0": 5000, "4-b0": 9000, "16-b0": 9000, "1-b1": 8000})
    assert ce.best(d, "raftkv", "write", 16, 100, cfgs) == "4-b0"
    # The command line prints the configuration string.
    cmd = [sys.executable, os.path.join(ROOT, "bench", "compare_etcd.py"), "best", d, "raftkv", "write", "64",
           "100", "1-b0", "4-b0", "16-b0", "64-b0", "1-b1", "1-b4", "4-b1", "4-b4"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, "4-b1\n"), r.stderr


def test_a_report_whose_batches_in_flight_do_not_match_its_name_is_refused(tmp_path):
    d = str(tmp_path)
    # Named 1 batch in flight, measured with 4.
    put(d, "runs", "raftkv-write-c64-v100-n4-b1-r1.json", report("raftkv", "write", 64, 100, 4, 9000, batch=4))
    with pytest.raises(ce.BadReport, match="its name says"):
        ce.table(d)
    # A name without -b<K> means unbatched: a report with the bench's default (1) is refused ...
    put(d, "runs", "raftkv-write-c64-v100-n4-b1-r1.json", report("raftkv", "write", 64, 100, 4, 9000, batch=1))
    put(d, "runs", "raftkv-read-c64-v100-n4-r1.json", report("raftkv", "read", 64, 100, 4, 9000, batch=1))
    with pytest.raises(ce.BadReport, match="its name says"):
        ce.table(d)
    # ... and one without the field (before batching) is accepted, under either name.
    put(d, "runs", "raftkv-read-c64-v100-n4-r1.json", report("raftkv", "read", 64, 100, 4, 9000))
    put(d, "runs", "raftkv-mixed-c64-v100-n4-b0-r1.json", report("raftkv", "mixed", 64, 100, 4, 9000))
    assert len(ce.table(d).splitlines()) == 5
    # The sweep's reports too: an unbatched run named as batched does not win the sweep.
    put(d, "sweep", "raftkv-write-c64-v100-n1-b0.json", report("raftkv", "write", 64, 100, 1, 5000, batch=0))
    put(d, "sweep", "raftkv-write-c64-v100-n1-b4.json", report("raftkv", "write", 64, 100, 1, 9000, batch=0))
    with pytest.raises(ce.BadReport, match="its name says"):
        ce.best(d, "raftkv", "write", 64, 100, ["1-b0", "1-b4"])


def test_the_tables_name_the_batched_configuration(tmp_path):
    d = str(tmp_path)
    for r in range(1, 4):
        put(d, "runs", f"raftkv-write-c64-v100-n1-b1-r{r}.json", report("raftkv", "write", 64, 100, 1, 30000, batch=1))
        put(d, "runs", f"etcd-write-c64-v100-n16-r{r}.json", report("etcd", "write", 64, 100, 16, 9000, batch=0))
        put(d, "runs", f"raftkv-write-c1-v100-n1-b0-r{r}.json", report("raftkv", "write", 1, 100, 1, 3000, batch=0))
    lines = ce.table(d).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    assert [(row["clients"], row["raftkv config"], row["etcd config"]) for row in rows] == \
        [("1", "1", "-"), ("64", "1, batch 1", "16")]
    sweep_raftkv(d, "write", 64, {"16-b0": 9000, "1-b4": 31000, "4-b0": 8000, "1-b1": 30000, "1-b0": 25401,
                                  "4-b4": 20000})
    for n, ops in [(1, 5000), (4, 9000)]:
        put(d, "sweep", f"etcd-write-c64-v100-n{n}.json", report("etcd", "write", 64, 100, n, ops, batch=0))
    sweep = ce.sweep_table(d).splitlines()
    assert sweep[2:] == [
        "| write-only | 100 B | 64 | etcd | 1: 5,000; 4: 9,000 |",
        "| write-only | 100 B | 64 | raftkv | 1: 25,401; 1 batch 1: 30,000; 1 batch 4: 31,000; 4: 8,000; "
        "4 batch 4: 20,000; 16: 9,000 |"]


# ---- the servers' thread setting (-t<T>) ----------------------------------------------

def test_names_and_configurations_carry_the_server_thread_setting():
    m = ce.NAME.match("raftkv-write-c64-v100-n1-b1-t1-r2.json")
    assert (m["cfg"], m["n"], m["k"], m["t"], m["r"]) == ("1-b1-t1", "1", "1", "1", "2")
    m = ce.NAME.match("etcd-read-c16-v1024-n4-t1.json")
    assert (m["cfg"], m["n"], m["k"], m["t"], m["r"]) == ("4-t1", "4", None, "1", None)
    assert ce.parse_config("4") == ce.parse_config("4-b0") == (4, 0, 0)
    assert ce.parse_config("4-t1") == (4, 0, 1) and ce.parse_config("1-b1-t1") == (1, 1, 1)
    assert ce.parse_config("16-b0-t12") == (16, 0, 12)  # general, though only -t1 is swept
    # The default has one name, the absence of -t; the suffix comes last.
    for bad in ["4-t0", "4-t", "4-t1-b1", "t1", "4-b1-t1-t1"]:
        with pytest.raises(ce.BadReport, match="not a configuration"):
            ce.parse_config(bad)
    assert not ce.NAME.match("etcd-read-c16-v100-n4-t0.json")
    assert [ce.label(c) for c in ["4", "4-t1", "1-b1", "1-b1-t1", "1-b0-t2"]] == \
        ["4", "4, 1 server thread", "1, batch 1", "1, batch 1, 1 server thread", "1, 2 server threads"]
    assert [ce.label(c, short=True) for c in ["4", "4-t1", "1-b1-t1"]] == ["4", "4 t1", "1 batch 1 t1"]


def test_best_takes_the_one_thread_variant_when_faster_and_the_default_on_a_tie(tmp_path):
    d = str(tmp_path)
    # One server thread is faster: its configuration string comes back, suffix and all.
    cfgs = sweep_raftkv(d, "write", 64, {"1-b0": 5000, "4-b0": 9000, "1-b1": 30000, "4-b1": 28000,
                                         "1-b1-t1": 36000})
    assert ce.best(d, "raftkv", "write", 64, 100, cfgs) == "1-b1-t1"
    # etcd, slower on one thread here: the default stays.
    cfgs = sweep(d, "etcd", "write", 64, {"1": 9000, "4": 11000, "4-t1": 10000})
    assert ce.best(d, "etcd", "write", 64, 100, cfgs) == "4"
    # A tie between the default and one thread: the default.
    cfgs = sweep(d, "etcd", "read", 64, {"1": 9000, "4": 11000, "4-t1": 11000})
    assert ce.best(d, "etcd", "read", 64, 100, cfgs) == "4"
    cfgs = sweep_raftkv(d, "read", 1, {"1-b0-t1": 4000, "1-b0": 4000})
    assert ce.best(d, "raftkv", "read", 1, 100, cfgs) == "1-b0"
    # One client: the default's run and the one-thread run are compared, not skipped.
    cfgs = sweep_raftkv(d, "mixed", 1, {"1-b0": 2400, "1-b0-t1": 2600})
    assert ce.best(d, "raftkv", "mixed", 1, 100, cfgs) == "1-b0-t1"
    # And on the command line.
    cmd = [sys.executable, os.path.join(ROOT, "bench", "compare_etcd.py"), "best", d, "etcd", "read", "64",
           "100", "1", "4", "4-t1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, "4\n"), r.stderr


def test_a_report_whose_label_names_another_thread_setting_is_refused(tmp_path):
    d = str(tmp_path)
    # Named one server thread, run against the default cluster: it would win the sweep
    # for a setting it never measured.
    put(d, "sweep", "raftkv-write-c64-v100-n1-b1.json",
        report("raftkv", "write", 64, 100, 1, 30000, batch=1, label="server-threads=default"))
    put(d, "sweep", "raftkv-write-c64-v100-n1-b1-t1.json",
        report("raftkv", "write", 64, 100, 1, 36000, batch=1, label="server-threads=default"))
    with pytest.raises(ce.BadReport, match="its name says"):
        ce.best(d, "raftkv", "write", 64, 100, ["1-b1", "1-b1-t1"])
    # A -t1 name needs the label: none means the default (a report from before -t).
    put(d, "sweep", "raftkv-write-c64-v100-n1-b1-t1.json", report("raftkv", "write", 64, 100, 1, 36000, batch=1))
    with pytest.raises(ce.BadReport, match="its name says"):
        ce.best(d, "raftkv", "write", 64, 100, ["1-b1", "1-b1-t1"])
    put(d, "sweep", "raftkv-write-c64-v100-n1-b1-t1.json",
        report("raftkv", "write", 64, 100, 1, 36000, batch=1, label="server-threads=1"))
    assert ce.best(d, "raftkv", "write", 64, 100, ["1-b1", "1-b1-t1"]) == "1-b1-t1"
    # The other way: a name at the default, a report at one thread; and in the repetitions.
    put(d, "runs", "etcd-write-c64-v100-n4-r1.json", report("etcd", "write", 64, 100, 4, 9000, label="server-threads=1"))
    with pytest.raises(ce.BadReport, match="its name says"):
        ce.table(d)
    # An old report without a label, named at the default, is accepted.
    put(d, "runs", "etcd-write-c64-v100-n4-r1.json", report("etcd", "write", 64, 100, 4, 9000))
    assert len(ce.table(d).splitlines()) == 3


def test_the_tables_name_the_server_thread_setting(tmp_path):
    d = str(tmp_path)
    for r in range(1, 4):
        put(d, "runs", f"raftkv-write-c64-v100-n1-b1-t1-r{r}.json",
            report("raftkv", "write", 64, 100, 1, 36000, batch=1, label="server-threads=1"))
        put(d, "runs", f"etcd-write-c64-v100-n4-r{r}.json",
            report("etcd", "write", 64, 100, 4, 11000, label="server-threads=default"))
        put(d, "runs", f"etcd-read-c64-v100-n1-t1-r{r}.json",
            report("etcd", "read", 64, 100, 1, 15000, label="server-threads=1"))
    lines = ce.table(d).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    assert [(row["workload"], row["raftkv config"], row["etcd config"]) for row in rows] == \
        [("write-only", "1, batch 1, 1 server thread", "4"), ("linearizable read", "-", "1, 1 server thread")]
    sweep_raftkv(d, "write", 64, {"1-b0": 5000, "1-b1": 30000, "1-b1-t1": 36000, "4-b0": 9000})
    sweep(d, "etcd", "write", 64, {"1": 9000, "4": 11000, "4-t1": 10000})
    assert ce.sweep_table(d).splitlines()[2:] == [
        "| write-only | 100 B | 64 | etcd | 1: 9,000; 4: 11,000; 4 t1: 10,000 |",
        "| write-only | 100 B | 64 | raftkv | 1: 5,000; 1 batch 1: 30,000; 1 batch 1 t1: 36,000; 4: 9,000 |"]


def test_the_help_is_the_whole_header_comment():
    """compare-etcd.sh -h prints its header comment by line numbers (sed -n '2,Np'):
    all of it, and no code, however the header grows."""
    path = os.path.join(ROOT, "bench", "compare-etcd.sh")
    with open(path) as f:
        lines = f.read().splitlines()
    header = [line for line in lines[1:lines.index("set -euo pipefail")]]
    assert header and all(line.startswith("#") for line in header)
    r = subprocess.run(["bash", path, "-h"], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout.splitlines()) == (0, header), r.stderr


# ---- compare-etcd.sh itself, on stand-ins ----------------------------------------------
# Stand-ins for etcd, etcdctl, cargo, raftkv-server and raftkv-bench: each server writes
# down its pid, port and thread setting; the bench answers from the servers its
# endpoints reach (one thread: raftkv faster, etcd slower but at one client) and writes
# down any run whose --cpu-pids are not those servers.
FAKE_SERVER = r'''#!/usr/bin/env python3
import json, os, sys
a = sys.argv[1:]
if a[:1] == ["--version"]:
    print("etcd Version: 3.4.23"); sys.exit(0)
url = a[a.index("--listen-client-urls") + 1] if "--listen-client-urls" in a else a[a.index("--listen") + 1]
threads = a[a.index("--worker-threads") + 1] if "--worker-threads" in a else os.environ.get("GOMAXPROCS", "default")
with open(os.path.join(os.environ["FAKE_LOG"], f"server-{os.getpid()}"), "w") as f:
    json.dump({"pid": os.getpid(), "port": url.rsplit(":", 1)[1], "threads": threads,
               "kind": "etcd" if "--listen-client-urls" in a else "raftkv"}, f)
os.execvp("sleep", ["sleep", "300"])
'''
FAKE_BENCH = r'''#!/usr/bin/env python3
import glob, json, os, sys
a = sys.argv[1:]
arg = lambda k, d=None: a[a.index(k) + 1] if k in a else d
servers = [json.load(open(p)) for p in glob.glob(os.path.join(os.environ["FAKE_LOG"], "server-*"))]
ports = {e.rsplit(":", 1)[1] for e in arg("--endpoints").split(",")}
reached = [s for s in servers if s["port"] in ports and s["kind"] == arg("--target")]
ok = len(reached) == 3 and len({s["threads"] for s in reached}) == 1 \
    and sorted(arg("--cpu-pids").split(",")) == sorted(str(s["pid"]) for s in reached)
if not ok:
    with open(os.path.join(os.environ["FAKE_LOG"], "violations"), "a") as f:
        f.write(" ".join(a) + "\n")
one = reached[0]["threads"] == "1"
c, n, k = int(arg("--clients")), int(arg("--connections")), int(arg("--batch-in-flight", "0"))
ops = 1000 * c / n * (1 + k)
if arg("--target") == "raftkv":
    ops *= 1.2 if one else 1
else:
    ops *= (1.1 if c == 1 else 0.9) if one else 1
print(json.dumps({"target": arg("--target"), "label": arg("--label"),
                  "workload": {"clients": c, "connections": n, "value_size": int(arg("--value-size")),
                               "reads": float(arg("--reads")), "batch_in_flight": k},
                  "total": {"throughput": ops, "ops": int(ops), "latency_ms": {"p50": 1.0, "p99": 2.0}},
                  "errors": 0}))
'''
# A server that refuses an option exits at once, as clap's does (python's start-up can
# take a second on a loaded machine).
FAKE_SERVER_SH = """#!/bin/sh
if [ "$1" = --help ]; then
  echo "Options:"; [ -n "$FAKE_OLD_SERVER" ] || echo "      --worker-threads <N>"; exit 0
fi
case " $* " in *" --worker-threads "*)
  if [ -n "$FAKE_OLD_SERVER" ]; then echo "error: unexpected argument '--worker-threads'" >&2; exit 2; fi ;; esac
exec python3 "$FAKE_LOG/../bin/fake_server.py" "$@"
"""
FAKE_ETCDCTL = '#!/bin/sh\ncase "$*" in *"endpoint status"*) echo \'[{"Status":{"header":{"revision":5}}}]\' ;; esac\n'
FAKE_CARGO = '#!/bin/sh\nif [ "$1" = metadata ]; then echo "{\\"target_directory\\": \\"$FAKE_TARGET\\"}"; fi\n'


def fake_run(tmp_path, **env):
    bin_dir, target, log = tmp_path / "bin", tmp_path / "target", tmp_path / "log"
    for d in (bin_dir, target / "release", log, tmp_path / "data"):
        d.mkdir(parents=True)
    for path, text in [(bin_dir / "fake_server.py", FAKE_SERVER), (bin_dir / "etcd", FAKE_SERVER_SH),
                       (target / "release" / "raftkv-server", FAKE_SERVER_SH),
                       (target / "release" / "raftkv-bench", FAKE_BENCH), (bin_dir / "etcdctl", FAKE_ETCDCTL),
                       (bin_dir / "cargo", FAKE_CARGO), (bin_dir / "protoc", "#!/bin/sh\n")]:
        path.write_text(text)
        path.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_TARGET=str(target), FAKE_LOG=str(log),
               RESULTS=str(tmp_path / "results"), DATA_ROOT=str(tmp_path / "data"), CLIENT_COUNTS="1 16", **env)
    try:
        r = subprocess.run(["bash", os.path.join(ROOT, "bench", "compare-etcd.sh"), "--quick"], env=env,
                           capture_output=True, text=True, timeout=120)
    finally:
        # The servers the script left running (none, unless it is broken), stopped here so
        # that a failing test leaves none behind.
        servers = [json.load(open(p)) for p in log.glob("server-*")]
        alive = [s for s in servers if stand_in_alive(s["pid"])]
        for s in alive:
            os.kill(s["pid"], signal.SIGKILL)
    return r, servers, alive, log


def stand_in_alive(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"sleep\0")
    except FileNotFoundError:
        return False


def test_the_script_runs_each_configuration_on_its_cluster_and_stops_them_all(tmp_path):
    r, servers, alive, log = fake_run(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted((s["kind"], s["threads"]) for s in servers) == \
        sorted([("etcd", "default"), ("etcd", "1"), ("raftkv", "default"), ("raftkv", "1")] * 3)
    assert not (log / "violations").exists(), (log / "violations").read_text()
    assert not list((tmp_path / "data").iterdir())  # its fresh directory removed
    assert alive == []  # every server stopped
    sweep = sorted(os.listdir(tmp_path / "results" / "sweep"))
    # One client: the single configuration is swept now, and its -t1 variant.
    assert [f for f in sweep if "-write-c1-" in f] == \
        ["etcd-write-c1-v100-n1-t1.json", "etcd-write-c1-v100-n1.json",
         "raftkv-write-c1-v100-n1-b0-t1.json", "raftkv-write-c1-v100-n1-b0.json"]
    # 16 clients: every client configuration (no batch 4), then the best's -t1 only.
    assert [f for f in sweep if "-write-c16-" in f] == \
        ["etcd-write-c16-v100-n1-t1.json", "etcd-write-c16-v100-n1.json", "etcd-write-c16-v100-n16.json",
         "etcd-write-c16-v100-n4.json", "raftkv-write-c16-v100-n1-b0.json", "raftkv-write-c16-v100-n1-b1-t1.json",
         "raftkv-write-c16-v100-n1-b1.json", "raftkv-write-c16-v100-n16-b0.json", "raftkv-write-c16-v100-n4-b0.json",
         "raftkv-write-c16-v100-n4-b1.json"]
    runs = sorted(f for f in os.listdir(tmp_path / "results" / "runs") if "-write-" in f)
    assert runs == sorted(f"{t}-write-c{c}-v100-n{cfg}-r{i}.json" for i in (1, 2, 3)
                          for t, c, cfg in [("raftkv", 1, "1-b0-t1"), ("raftkv", 16, "1-b1-t1"),
                                            ("etcd", 1, "1-t1"), ("etcd", 16, "1")])
    table = (tmp_path / "results" / "table.md").read_text()
    assert "| 1, batch 1, 1 server thread | 38,400 (38,400–38,400) | 1 | 16,000 (16,000–16,000) |" in table
    assert "| etcd | 1: 16,000; 1 t1: 14,400; 4: 4,000; 16: 1,000 |" in table


def test_the_script_stops_when_a_server_refuses_its_thread_setting(tmp_path):
    """A raftkv-server without --worker-threads: every -t1 run would fail, and the
    table would quietly leave one thread out."""
    r, servers, alive, log = fake_run(tmp_path, FAKE_OLD_SERVER="1")
    assert r.returncode == 1 and "has no --worker-threads option" in r.stderr, r.stderr[-3000:]
    assert servers == [] and alive == []  # refused before any cluster started
    assert not list((tmp_path / "data").iterdir())

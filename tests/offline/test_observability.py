"""Offline checks of observability/prometheus/prometheus.yml against the manifests.

The Grafana dashboard's queries are checked against a real server's /metrics by
crates/server/tests/metrics.rs; this file checks the scrape configuration: valid YAML,
the local job scraping `raftkv up`'s admin ports, and the Kubernetes job keeping
exactly the pods and port that k8s/statefulset.yaml declares.
"""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "observability" / "prometheus" / "prometheus.yml"


def load_config():
    return yaml.safe_load(CONFIG.read_text())


def statefulset():
    docs = yaml.safe_load_all((ROOT / "k8s" / "statefulset.yaml").read_text())
    return next(d for d in docs if d and d.get("kind") == "StatefulSet")


def up_admin_base_port():
    src = (ROOT / "crates" / "cli" / "src" / "up.rs").read_text()
    m = re.search(r"default_value_t = (\d+), value_name = \"PORT\"\)\]\s*pub admin_base_port", src)
    assert m, "up.rs declares --admin-base-port with a default"
    return int(m.group(1))


def job(config, name):
    return next(j for j in config["scrape_configs"] if j["job_name"] == name)


def relabel(rules, labels):
    """Prometheus relabelling of a target's labels (keep, drop, replace), or None when dropped."""
    labels = dict(labels)
    for r in rules:
        src = r.get("separator", ";").join(labels.get(l, "") for l in r.get("source_labels", []))
        regex = re.compile("^(?:" + r.get("regex", "(.*)") + ")$")
        action = r.get("action", "replace")
        m = regex.match(src)
        if action == "keep" and not m:
            return None
        if action == "drop" and m:
            return None
        if action == "replace" and m:
            repl = r.get("replacement", "$1")
            value = re.sub(r"\$(\d+)", lambda g: m.group(int(g.group(1))) or "", repl)
            labels[r["target_label"]] = value
    return labels


def pod_targets(sts, **overrides):
    """The targets Kubernetes pod discovery makes for one pod of the StatefulSet: one per container port."""
    meta = sts["spec"]["template"]["metadata"]
    base = {"__meta_kubernetes_namespace": "default", "__meta_kubernetes_pod_name": "raft-0", "__metrics_path__": "/metrics"}
    for k, v in meta.get("labels", {}).items():
        base["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k)] = v
    for k, v in meta.get("annotations", {}).items():
        base["__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", k)] = v
    base.update(overrides)
    out = []
    for c in sts["spec"]["template"]["spec"]["containers"]:
        for p in c.get("ports", []):
            out.append(dict(base, __address__=f"10.0.0.7:{p['containerPort']}", __meta_kubernetes_pod_container_port_name=p.get("name", "")))
    return out


def admin_port(sts):
    for c in sts["spec"]["template"]["spec"]["containers"]:
        for p in c.get("ports", []):
            if p.get("name") == "admin":
                return p["containerPort"]
    raise AssertionError("the StatefulSet has no port named admin")


def test_the_config_is_yaml_with_both_jobs():
    config = load_config()
    assert [j["job_name"] for j in config["scrape_configs"]] == ["raftkv-local", "raftkv-k8s"]
    assert config["global"]["scrape_timeout"] < config["global"]["scrape_interval"]


def test_the_local_job_scrapes_the_admin_ports_of_raftkv_up():
    base = up_admin_base_port()
    targets = job(load_config(), "raftkv-local")["static_configs"][0]["targets"]
    assert targets == [f"127.0.0.1:{base + i}" for i in range(3)]


def test_the_k8s_job_scrapes_each_server_pod_once_on_its_admin_port():
    sts = statefulset()
    rules = job(load_config(), "raftkv-k8s")["relabel_configs"]
    kept = [t for t in (relabel(rules, t) for t in pod_targets(sts)) if t is not None]
    assert len(kept) == 1, kept
    assert kept[0]["__address__"] == f"10.0.0.7:{admin_port(sts)}"
    assert kept[0]["__metrics_path__"] == "/metrics"
    assert kept[0]["pod"] == "raft-0"


@pytest.mark.parametrize(
    "override",
    [
        {"__meta_kubernetes_pod_label_app_kubernetes_io_component": "client"},
        {"__meta_kubernetes_pod_annotation_prometheus_io_scrape": "false"},
    ],
)
def test_the_k8s_job_leaves_other_pods_alone(override):
    rules = job(load_config(), "raftkv-k8s")["relabel_configs"]
    assert all(relabel(rules, t) is None for t in pod_targets(statefulset(), **override))


def test_the_relabel_model_drops_and_rewrites():
    """The model above is what the checks rely on: keep drops a mismatch, replace rewrites with groups."""
    rules = [
        {"source_labels": ["a"], "regex": "x", "action": "keep"},
        {"source_labels": ["b", "c"], "regex": "([^:]+):\\d+;(\\d+)", "replacement": "$1:$2", "target_label": "d"},
    ]
    assert relabel(rules, {"a": "y"}) is None
    assert relabel(rules, {"a": "x", "b": "h:1", "c": "9"})["d"] == "h:9"


# ---- the span reference of README.md against the server's code ----

README = ROOT / "observability" / "README.md"
SERVER_SRC = ROOT / "crates" / "server" / "src"
# Span and span event names are dotted string literals under these prefixes.
SPAN_NAME = re.compile(r'"((?:raft|fault|storage|kv)(?:\.[a-z_]+)+)"')
ATTRIBUTE = re.compile(r'(?:KeyValue::new|kv)\(\s*"([a-z_]+)"')


def code_names():
    """Every span and span event name the server's code writes."""
    return {n for f in SERVER_SRC.rglob("*.rs") for n in SPAN_NAME.findall(f.read_text())}


def function_body(path, signature):
    """The text of the function of `path` whose definition starts with `signature`."""
    text = path.read_text()
    start = text.index(signature)
    return text[start:text.index("\n}\n", start)]


def election_fields():
    """The fields of the `raft.election` span (tracing::info_span! in ElectionTrace::start)."""
    body = function_body(SERVER_SRC / "trace.rs", "    pub fn start(node: NodeId, term: Term, pre_vote")
    block = body[body.index('"raft.election",'):body.index(");")]
    return set(re.findall(r"^\s*([a-z_]+)(?:,| =)", block, re.M))


def span_attributes():
    """{span name: the attributes its code sets} of the election's spans and the fault's."""
    trace_rs, faults_rs = SERVER_SRC / "trace.rs", SERVER_SRC / "faults.rs"
    out = {"raft.election": election_fields()}
    for name, path, sig in [
        ("raft.vote_request", trace_rs, "pub(crate) fn vote_request("),
        ("raft.step_down", trace_rs, "pub(crate) fn step_down("),
        ("raft.transfer_leader", trace_rs, "pub(crate) fn transfer_leader("),
        ("fault.inject", faults_rs, "fn inject_span("),
    ]:
        out[name] = set(ATTRIBUTE.findall(function_body(path, sig)))
    out["fault.inject"].add("healed_by")  # set when it heals (Faults::heal)
    out["raft.step_down"].discard("cause")  # its links' attribute (`cause=election`, `cause=fault`)
    return out


def reference(text):
    return text[text.index("## Reference: every span and event"):]


def undocumented(text):
    """Names of the code missing from the reference, and attributes of the election's
    spans missing from their reference row or from "Watching an election"."""
    ref = reference(text)
    watching = text[text.index("## Watching an election"):text.index("## Read a commit's trace")]
    out = [f"{n}: not in the reference" for n in sorted(code_names()) if f"`{n}`" not in ref]
    for span, attrs in sorted(span_attributes().items()):
        rows = [line for line in ref.splitlines() if line.startswith(f"| `{span}`")]
        if len(rows) != 1:
            out.append(f"{span}: {len(rows)} rows in the reference table")
            continue
        out += [f"{span}.{a}: not in its reference row" for a in sorted(attrs - {"node"}) if f"`{a}`" not in rows[0]]
        out += [f"{span}.{a}: not in \"Watching an election\"" for a in sorted(attrs) if f"`{a}`" not in watching]
        if f"`{span}`" not in watching:
            out.append(f"{span}: not in \"Watching an election\"")
    return out


def test_the_extraction_finds_the_election_spans_and_their_attributes():
    names = code_names()
    assert {"raft.election", "raft.vote_request", "raft.step_down", "raft.transfer_leader", "fault.inject",
            "raft.vote_received", "fault.healed", "raft.commit", "kv.request"} <= names, names
    attrs = span_attributes()
    assert {"outcome", "pre_vote_granted", "first_commit_index"} <= attrs["raft.election"]
    assert {"decision", "reason", "voted_for", "own_term", "candidate_last_index"} <= attrs["raft.vote_request"]
    assert {"kind", "peers", "delay_ms", "fault_id"} <= attrs["fault.inject"]


def test_every_span_and_event_of_the_server_is_in_the_readme():
    assert undocumented(README.read_text()) == []


@pytest.mark.parametrize("cut", ["`raft.vote_request`", "`voted_for`", "`first_commit_index`", "`fault.healed`"])
def test_negative_a_readme_missing_a_name_is_caught(cut):
    text = README.read_text().replace(cut, "`x`")
    problems = undocumented(text)
    assert problems and all(cut.strip("`") in p for p in problems), problems

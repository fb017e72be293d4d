"""The Kubernetes manifests: schema validation with kubernetes-validate --strict against
a pinned Kubernetes version (bundled schemas, offline), then the properties the
StatefulSet depends on that no schema can check."""
import glob
import os
import re
import shutil

import pytest
import yaml

import deploychecks
from conftest import KUBERNETES_VERSION, ROOT, run
from tiltstub import is_manifest_file

K8S = os.path.join(ROOT, "k8s")
SERVER_LABELS = {"app.kubernetes.io/name": "raftkv", "app.kubernetes.io/component": "server"}


def manifest_files():
    files = sorted(glob.glob(os.path.join(K8S, "*.yaml")))
    files += sorted(f for f in glob.glob(os.path.join(ROOT, "observability", "*.y*ml")) if is_manifest_file(f))
    return files


# What `kubectl apply -f DIR` reads: the files of DIR (not its subdirectories) with these
# extensions (k8s.io/cli-runtime pkg/resource/builder.go FileExtensions).
KUBECTL_FILE_EXTENSIONS = (".json", ".yaml", ".yml")


def apply_dir_problems(directory):
    """Files `kubectl apply -f DIR` would read that are not all Kubernetes objects."""
    out = []
    for f in sorted(os.listdir(directory)):
        path = os.path.join(directory, f)
        if os.path.isfile(path) and f.endswith(KUBECTL_FILE_EXTENSIONS) and not is_manifest_file(path):
            out.append(f"{os.path.relpath(path, ROOT)} is read by `kubectl apply -f {os.path.relpath(directory, ROOT)}/` "
                       "but holds something other than Kubernetes objects")
    return out


@pytest.mark.parametrize("directory", ["k8s", "observability"])
def test_kubectl_apply_of_the_directory_reads_only_manifests(directory):
    assert apply_dir_problems(os.path.join(ROOT, directory)) == []


def test_negative_a_snippet_beside_the_manifests_is_caught(tmp_path):
    """observability/otel-env.yaml before it moved to snippets/: not a manifest."""
    d = tmp_path / "observability"
    shutil.copytree(os.path.join(ROOT, "observability"), d)
    shutil.copy(os.path.join(ROOT, "observability", "snippets", "otel-env.yaml"), d / "otel-env.yaml")
    problems = apply_dir_problems(str(d))
    assert len(problems) == 1 and "otel-env.yaml" in problems[0]


def kubernetes_validate(*files):
    exe = shutil.which("kubernetes-validate") or os.path.join(os.path.dirname(os.sys.executable), "kubernetes-validate")
    return run([exe, "--strict", "--no-warn", "-k", KUBERNETES_VERSION, *files])


def docs():
    out = {}
    for f in glob.glob(os.path.join(K8S, "*.yaml")):
        with open(f) as fh:
            for d in yaml.safe_load_all(fh):
                if d:
                    out[(d["kind"], d["metadata"]["name"])] = d
    return out


@pytest.fixture(scope="module")
def m():
    return docs()


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_manifest_passes_kubernetes_validate_strict(path):
    out = kubernetes_validate(path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passed" in out.stdout + out.stderr


def test_negative_kubernetes_validate_rejects_an_unknown_field(tmp_path):
    with open(os.path.join(K8S, "statefulset.yaml")) as f:
        d = yaml.safe_load(f)
    d["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = d["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    broken = tmp_path / "statefulset.yaml"
    broken.write_text(yaml.safe_dump(d))
    out = kubernetes_validate(str(broken))
    assert out.returncode != 0, "a misspelt field passed --strict validation"
    assert "readinesProbe" in out.stdout + out.stderr


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def test_headless_service_publishes_not_ready_addresses(m):
    svc = m[("Service", "raft-service")]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True


def test_statefulset_shape(m):
    sts = m[("StatefulSet", "raft")]
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "raft-service"
    labels = spec["template"]["metadata"]["labels"]
    assert matches(spec["selector"]["matchLabels"], labels)
    assert matches(m[("Service", "raft-service")]["spec"]["selector"], labels)
    assert matches(m[("PodDisruptionBudget", "raft")]["spec"]["selector"]["matchLabels"], labels)
    assert m[("PodDisruptionBudget", "raft")]["spec"]["maxUnavailable"] == 1
    # Members spread over hosts (hard constraint, skew 1), selecting these very pods:
    # losing one node never loses a majority, at 3 members or at 5.
    spread = pod["topologySpreadConstraints"]
    assert any(t["topologyKey"] == "kubernetes.io/hostname" and t["maxSkew"] == 1
               and t["whenUnsatisfiable"] == "DoNotSchedule" and matches(t["labelSelector"]["matchLabels"], labels)
               for t in spread)
    # Scaling down deletes the removed ordinals' claims: a removed member never rejoins
    # with its old data.
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Delete"}
    # Long enough for the leadership hand-off (2 election timeouts = 2 s) and a flush.
    assert pod["terminationGracePeriodSeconds"] >= 10


def test_server_args_derive_identity_from_the_downward_api(m):
    sts = m[("StatefulSet", "raft")]
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in c, "the image's entrypoint (raftkv-server) must run"
    args = c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert "--pod-name=$(POD_NAME)" in args
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert f"--service={sts['spec']['serviceName']}" in args
    assert f"--replicas={sts['spec']['replicas']}" in args
    port = int(next(a for a in args if a.startswith("--port=")).split("=")[1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["raft"] == port
    admin = next(a for a in args if a.startswith("--admin-listen="))
    assert admin.endswith(f":{ports['admin']}")
    svc_ports = {p["name"]: p for p in m[("Service", "raft-service")]["spec"]["ports"]}
    assert svc_ports["raft"]["port"] == port and svc_ports["admin"]["port"] == ports["admin"]
    # The data dir is the claim template's mount.
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    data_dir = next(a for a in args if a.startswith("--data-dir=")).split("=")[1]
    assert {"name": claim, "mountPath": data_dir} in c["volumeMounts"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://jaeger:4317"


def test_probes_use_the_admin_port_and_readiness_never_waits_for_a_leader(m):
    c = m[("StatefulSet", "raft")]["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "admin"}
    # /readyz's meaning is in the server (crates/server/src/admin.rs): it must not need a leader.
    with open(os.path.join(ROOT, "crates/server/src/admin.rs")) as f:
        admin = f.read()
    assert "does **not** wait for a leader" in admin


@pytest.mark.parametrize("key", [("StatefulSet", "raft"), ("Pod", "raft-validate")])
def test_restricted_security_context(m, key):
    d = m[key]
    pod = d["spec"] if key[0] == "Pod" else d["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsUser"] != 0
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "add" not in sc["capabilities"]


def test_ports_probes_services_and_users_pass_the_deployment_checks():
    """deploychecks.manifest_problems: probes, prometheus.io/port and every Service's
    targetPort name a container port; no pod or container runs as uid or gid 0. The
    mutation suite (test_mutations.py) shows each failing on a broken copy."""
    assert deploychecks.manifest_problems(ROOT) == []


def test_server_args_pass_the_servers_own_parser(server_bin):
    """Every raftkv-server container's args and env, through `raftkv-server
    --check-args` (clap, then the resolution a start does): what they resolve to listens
    on the pod's ports, not on its loopback, and keeps its data on the claim."""
    assert deploychecks.server_args_problems(ROOT, server_bin) == []
    (_, d, pod, c), = deploychecks.server_containers(deploychecks.load_manifests(ROOT))
    r, got = deploychecks.check_args(server_bin, c, pod)
    assert r.returncode == 0, r.stderr
    assert got["advertise"] == f"raft-0.{d['spec']['serviceName']}:6000"
    assert got["listen"] == "0.0.0.0:6000" and got["admin-listen"] == "0.0.0.0:9090" and got["tls"] == "off"


def test_base_manifest_never_enables_faults(server_bin):
    """`raftkv fault` (partitions, pauses) is for the Tilt dev loop only: no server of
    k8s/ resolves `faults on` (--enable-faults or RAFTKV_ENABLE_FAULTS), through the
    server's own parser. The mutation suite shows it failing with either added."""
    assert deploychecks.base_fault_problems(ROOT, server_bin) == []
    (_, _, pod, c), = deploychecks.server_containers(deploychecks.load_manifests(ROOT))
    assert deploychecks.check_args(server_bin, c, pod)[1]["faults"] == "off"


def test_negative_a_base_manifest_enabling_faults_is_caught(m, server_bin):
    sts = yaml.safe_load(yaml.safe_dump(m[("StatefulSet", "raft")]))
    c = sts["spec"]["template"]["spec"]["containers"][0]
    for how in ("args", "env"):
        c2 = yaml.safe_load(yaml.safe_dump(c))
        if how == "args":
            c2["args"].append("--enable-faults")
        else:
            c2["env"].append({"name": "RAFTKV_ENABLE_FAULTS", "value": "true"})
        r, got = deploychecks.check_args(server_bin, c2, "raft-0")
        assert r.returncode == 0 and got["faults"] == "on", (how, r.stderr, got)
    c["env"].append({"name": "RAFTKV_ENABLE_FAULTS", "value": "false"})
    assert deploychecks.check_args(server_bin, c, "raft-0")[1]["faults"] == "off"


def test_tls_patched_server_args_pass_the_servers_own_parser(server_bin):
    """With k8s/tls/statefulset-tls.yaml applied: the RAFTKV_TLS_* variables come together."""
    (_, _, pod, c), = deploychecks.server_containers([patched(*TLS_PATCHES[0])])
    r, got = deploychecks.check_args(server_bin, c, pod)
    assert r.returncode == 0, r.stderr
    assert got["tls"] == "on" and got["advertise"] == "raft-0.raft-service.default.svc:6000"
    assert got["faults"] == "off"


def test_negative_the_servers_parser_refuses_a_misspelt_flag_and_a_loopback_listener(m, server_bin):
    sts = yaml.safe_load(yaml.safe_dump(m[("StatefulSet", "raft")]))
    c = sts["spec"]["template"]["spec"]["containers"][0]
    c["args"] = [a.replace("--service=", "--servce=").replace("0.0.0.0:9090", "127.0.0.1:9090") for a in c["args"]]
    problems = deploychecks.server_args_problems(ROOT, server_bin, docs=[sts])
    assert len(problems) == 1 and "unexpected argument '--servce'" in problems[0], problems
    c["args"] = [a.replace("--servce=", "--service=") for a in c["args"]]
    problems = deploychecks.server_args_problems(ROOT, server_bin, docs=[sts])
    assert problems == ["StatefulSet raft: admin-listen 127.0.0.1:9090: 127.0.0.1 is the pod's loopback; probes, "
                        "peers and Prometheus cannot reach it"], problems


def test_validation_pod_runs_validate_against_every_replica(m):
    pod = m[("Pod", "raft-validate")]
    sts = m[("StatefulSet", "raft")]
    assert pod["spec"]["restartPolicy"] == "Never"
    c = pod["spec"]["containers"][0]
    assert c["args"][0] == "validate"
    env = {e["name"]: e.get("value") for e in c["env"]}
    port = next(a for a in sts["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--port=")).split("=")[1]
    want = [f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}:{port}" for i in range(sts["spec"]["replicas"])]
    assert env["RAFTKV_ENDPOINTS"].split(",") == want
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"


def test_images_are_the_flake_images():
    d = docs()
    images = {d[("StatefulSet", "raft")]["spec"]["template"]["spec"]["containers"][0]["image"],
              d[("Pod", "raft-validate")]["spec"]["containers"][0]["image"]}
    assert images == {"raftkv-server:dev", "raftkv-client:dev"}
    with open(os.path.join(ROOT, "flake.nix")) as f:
        flake = f.read()
    assert 'tag = "dev";' in flake
    for name in ("raftkv-server", "raftkv-client"):
        assert f'name = "{name}"' in flake


def test_kind_cluster_has_one_control_plane_and_four_workers():
    with open(os.path.join(K8S, "kind", "cluster.yaml")) as f:
        cfg = yaml.safe_load(f)
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [n["role"] for n in cfg["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") == 4
    assert any('config_path = "/etc/containerd/certs.d"' in p for p in cfg["containerdConfigPatches"])


def test_kind_up_sets_up_the_local_registry_like_kind_with_registry():
    with open(os.path.join(K8S, "kind", "up")) as f:
        up = f.read()
    for needle in ["5001", "certs.d", "hosts.toml", "docker network connect kind", "local-registry-hosting",
                   "kube-public", "localRegistryHosting.v1"]:
        assert needle in up, needle
    for script in ["kind/up", "kind/down"]:
        assert os.access(os.path.join(K8S, script), os.X_OK), script
    assert os.access(os.path.join(ROOT, "tests/e2e/kind.sh"), os.X_OK)


def test_no_dockerfile_anywhere_in_the_repository():
    found = []
    for dirpath, dirnames, files in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in (".git", "target") and not d.startswith("target-")]
        found += [os.path.join(dirpath, f) for f in files
                  if re.match(r"(?i)^(dockerfile|containerfile)(\..*)?$|.*\.dockerfile$", f)]
    assert found == []


def test_negative_selector_mismatch_is_caught(m):
    sts = m[("StatefulSet", "raft")]
    labels = dict(sts["spec"]["template"]["metadata"]["labels"], **{"app.kubernetes.io/component": "srv"})
    assert not matches(sts["spec"]["selector"]["matchLabels"], labels)


def test_otel_env_matches_observability_otel_env(m):
    """observability/snippets/otel-env.yaml lists the OTEL env of each kind of pod; the
    manifests must carry every entry as written there."""
    path = os.path.join(ROOT, "observability", "snippets", "otel-env.yaml")
    with open(path) as f:
        wanted = {}
        for d in yaml.safe_load_all(f):
            if isinstance(d, dict):
                wanted.update(d)
    pods = {"raftkv-server": m[("StatefulSet", "raft")]["spec"]["template"]["spec"],
            "raftkv-client": m[("Pod", "raft-validate")]["spec"]}
    for who, entries in wanted.items():
        env = pods[who]["containers"][0]["env"]
        for e in entries:
            assert e in env, f"{who}: env {e['name']} differs from observability/snippets/otel-env.yaml"


# ---- mutual TLS (k8s/tls/) ------------------------------------------------------------
# Strategic merge patches applied with `kubectl patch --local` (k8s/README.md). The
# merge below does what kubectl does for these fields (lists of objects merge by their
# key, other values replace); when kubectl is installed its result must be the same.

TLS = os.path.join(K8S, "tls")
TLS_PATCHES = [("statefulset.yaml", "statefulset-tls.yaml"), ("validate-pod.yaml", "validate-pod-tls.yaml")]
MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name", "volumeMounts": "mountPath", "items": "key"}


def merge(base, patch, key=None):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v, k) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS and key != "items":
        mk = MERGE_KEYS[key]
        out = list(base)
        for p in patch:
            i = next((i for i, b in enumerate(out) if b.get(mk) == p.get(mk)), None)
            if i is None:
                out.append(p)
            else:
                out[i] = merge(out[i], p)
        return out
    return patch


def patched(base_file, patch_file):
    with open(os.path.join(K8S, base_file)) as f:
        base = yaml.safe_load(f)
    with open(os.path.join(TLS, patch_file)) as f:
        patch = yaml.safe_load(f)
    assert (patch["kind"], patch["metadata"]["name"]) == (base["kind"], base["metadata"]["name"])
    return merge(base, patch)


def pod_spec(d):
    return d["spec"]["template"]["spec"] if d["kind"] == "StatefulSet" else d["spec"]


@pytest.mark.parametrize("base_file,patch_file", TLS_PATCHES, ids=lambda p: p)
def test_tls_patched_manifest_passes_kubernetes_validate_strict(tmp_path, base_file, patch_file):
    out_file = tmp_path / base_file
    out_file.write_text(yaml.safe_dump(patched(base_file, patch_file)))
    out = kubernetes_validate(str(out_file))
    assert out.returncode == 0, out.stdout + out.stderr


def tls_problems(d, base_spec, role):
    """What is wrong with the TLS setup of a patched manifest (empty: nothing)."""
    problems = []
    spec = pod_spec(d)
    c = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    if not all(e in c["env"] for e in base_spec["containers"][0]["env"]):
        problems.append("the base's env was not kept")
    if c.get("args") != base_spec["containers"][0].get("args"):
        problems.append("the base's args were not kept")
    mount = next((m for m in c.get("volumeMounts", []) if m["name"] == "tls"), None)
    vol = next((v for v in spec.get("volumes", []) if v["name"] == "tls"), None)
    if mount is None or vol is None:
        return problems + ["no tls volume and mount"]
    if mount.get("readOnly") is not True:
        problems.append("the tls mount is writable")
    if vol.get("secret", {}).get("secretName") != "raftkv-tls":
        problems.append("the tls volume is not the Secret raftkv-tls")
    files = {i["path"] for i in vol["secret"].get("items", [])}
    if files != {"ca.pem", f"{role}.pem", f"{role}-key.pem"}:
        problems.append(f"mounted {sorted(files)}: only this role's files belong there")
    for flag, file in [("CERT", f"{role}.pem"), ("KEY", f"{role}-key.pem"), ("CA", "ca.pem")]:
        if env.get(f"RAFTKV_TLS_{flag}") != f"{mount['mountPath']}/{file}" or file not in files:
            problems.append(f"RAFTKV_TLS_{flag} does not name the mounted {file}")
    # Keys readable by the pod's group only, which the non-root user is in.
    if vol["secret"].get("defaultMode") != 0o440:
        problems.append("the key files are not mode 0440")
    if spec["securityContext"].get("fsGroup") != spec["securityContext"]["runAsGroup"]:
        problems.append("the pod's fsGroup is not its runAsGroup: the user cannot read the keys")
    return problems


def base_spec(base_file):
    with open(os.path.join(K8S, base_file)) as f:
        return pod_spec(yaml.safe_load(f))


@pytest.mark.parametrize("base_file,patch_file,role", [TLS_PATCHES[0] + ("node",), TLS_PATCHES[1] + ("client",)],
                         ids=lambda p: p)
def test_tls_patch_mounts_the_secret_the_flags_name(base_file, patch_file, role):
    assert tls_problems(patched(base_file, patch_file), base_spec(base_file), role) == []
    # The server flags these variables feed exist.
    with open(os.path.join(ROOT, "crates/server/src/args.rs")) as f:
        args = f.read()
    for flag in ("CERT", "KEY", "CA"):
        assert f'env = "RAFTKV_TLS_{flag}"' in args


def test_negative_tls_checks_catch_broken_patches():
    base_file, patch_file = TLS_PATCHES[0]
    good = patched(base_file, patch_file)
    no_volume = yaml.safe_load(yaml.safe_dump(good))
    pod_spec(no_volume)["volumes"] = [v for v in pod_spec(no_volume)["volumes"] if v["name"] != "tls"]
    assert "no tls volume and mount" in tls_problems(no_volume, base_spec(base_file), "node")
    wrong_path = yaml.safe_load(yaml.safe_dump(good))
    for e in pod_spec(wrong_path)["containers"][0]["env"]:
        if e["name"] == "RAFTKV_TLS_KEY":
            e["value"] = "/tls/key.pem"
    assert "RAFTKV_TLS_KEY does not name the mounted node-key.pem" in tls_problems(wrong_path, base_spec(base_file), "node")
    # The client's key must not be mounted into server pods.
    assert tls_problems(good, base_spec(base_file), "client") != []


def test_tls_peers_dial_names_the_wildcard_certificate_covers():
    d = patched(*TLS_PATCHES[0])
    env = {e["name"]: e for e in pod_spec(d)["containers"][0]["env"]}
    assert env["RAFTKV_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    with open(os.path.join(K8S, "README.md")) as f:
        readme = f.read()
    svc = d["spec"]["serviceName"]
    assert f"*.{svc}.$NS.svc" in readme, "the README's raftkv certs command must give the wildcard SAN"
    for _, patch_file in TLS_PATCHES:
        assert f"--patch-file k8s/tls/{patch_file}" in readme


@pytest.mark.parametrize("base_file,patch_file", TLS_PATCHES, ids=lambda p: p)
def test_tls_merge_agrees_with_kubectl(base_file, patch_file):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed: the Python merge above stands alone")
    out = run([kubectl, "patch", "--local", "-f", os.path.join(K8S, base_file), "--type=strategic",
               "--patch-file", os.path.join(TLS, patch_file), "-o", "yaml"])
    assert out.returncode == 0, out.stderr
    assert unordered(yaml.safe_load(out.stdout)) == unordered(patched(base_file, patch_file))


def unordered(d, key=None):
    """`d` with merged lists sorted by their merge key (kubectl puts patch items first)."""
    if isinstance(d, dict):
        return {k: unordered(v, k) for k, v in d.items()}
    if isinstance(d, list):
        items = [unordered(v) for v in d]
        if key in MERGE_KEYS:
            items.sort(key=lambda v: str(v.get(MERGE_KEYS[key])))
        return items
    return d


# ---- Jaeger's collector config (observability/jaeger.yaml) ----------------------------------
# The component types Jaeger 2.9 is built with (cmd/jaeger/internal/components.go).
JAEGER_COMPONENTS = {
    "receivers": {"otlp", "nop", "jaeger", "kafka", "zipkin"},
    "processors": {"batch", "memory_limiter", "tail_sampling", "attributes", "filter", "adaptive_sampling"},
    "exporters": {"debug", "otlp", "otlphttp", "nop", "jaeger_storage_exporter", "kafka", "prometheus"},
    "extensions": {"healthcheckv2", "pprof", "zpages", "jaeger_query", "jaeger_storage", "remote_sampling", "expvar",
                   "storage_cleaner", "remote_storage"},
}


def mib(quantity):
    """A Kubernetes quantity (Mi/Gi) or Go GOMEMLIMIT value (MiB/GiB) in MiB."""
    for suffix, factor in (("GiB", 1024), ("MiB", 1), ("Gi", 1024), ("Mi", 1)):
        if str(quantity).endswith(suffix):
            return int(str(quantity)[: -len(suffix)]) * factor
    raise ValueError(f"not a MiB/GiB quantity: {quantity}")


def jaeger_docs():
    with open(os.path.join(ROOT, "observability", "jaeger.yaml")) as f:
        return {d["kind"]: d for d in yaml.safe_load_all(f) if d}


def jaeger_config_problems(docs):
    out = []
    cfg = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    limit = mib(container["resources"]["limits"]["memory"])
    for kind, known in JAEGER_COMPONENTS.items():
        for name in cfg.get(kind, {}):
            if name.split("/")[0] not in known:
                out.append(f"{kind}: {name} is not a component of Jaeger 2.9")
    for ext in cfg["service"].get("extensions", []):
        if ext not in cfg.get("extensions", {}):
            out.append(f"service.extensions names {ext}, which is not configured")
    for pname, p in cfg["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for name in p.get(kind, []):
                if name not in (cfg.get(kind) or {}):
                    out.append(f"pipeline {pname}: {kind} {name} is not configured")
        if "memory_limiter" in (cfg.get("processors") or {}) and p.get("processors", [None])[0] != "memory_limiter":
            out.append(f"pipeline {pname}: memory_limiter must be the first processor")
    ml = (cfg.get("processors") or {}).get("memory_limiter")
    if ml is None:
        out.append("no memory_limiter: a burst of spans can OOM-kill the pod and lose every trace")
    else:
        if not ml.get("check_interval"):
            out.append("memory_limiter needs a check_interval")
        if not ml.get("limit_mib", 0) > ml.get("spike_limit_mib", 0):
            out.append("memory_limiter: limit_mib must exceed spike_limit_mib")
        if not ml.get("limit_mib", limit) < limit:
            out.append(f"memory_limiter: limit_mib {ml.get('limit_mib')} is not below the container limit ({limit} MiB)")
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    if "GOMEMLIMIT" not in env:
        out.append("no GOMEMLIMIT: Go does not know the container's limit")
    elif not mib(env["GOMEMLIMIT"]) <= (ml or {}).get("limit_mib", limit) < limit or not mib(env["GOMEMLIMIT"]) < limit:
        out.append(f"GOMEMLIMIT {env['GOMEMLIMIT']} must be at most memory_limiter's limit_mib and below the "
                   f"container limit ({limit} MiB)")
    backends = cfg["extensions"]["jaeger_storage"]["backends"]
    for b in backends.values():
        mt = (b.get("memory") or {}).get("max_traces")
        if "memory" in b and not (isinstance(mt, int) and mt > 0):
            out.append("the memory store needs a positive max_traces (unset keeps every trace: unbounded memory)")
    return out


def test_jaeger_config_is_consistent_with_jaeger_and_its_memory_limit():
    assert jaeger_config_problems(jaeger_docs()) == []


def test_negative_jaeger_config_mistakes_are_caught():
    def mutate(fn):
        docs = jaeger_docs()
        cfg = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])
        fn(cfg, docs["Deployment"]["spec"]["template"]["spec"]["containers"][0])
        docs["ConfigMap"]["data"]["config.yaml"] = yaml.safe_dump(cfg)
        return jaeger_config_problems(docs)

    def no_limiter(cfg, c):
        del cfg["processors"]["memory_limiter"]
        cfg["service"]["pipelines"]["traces"]["processors"] = ["batch"]
    assert any("no memory_limiter" in p for p in mutate(no_limiter))

    def limiter_above_limit(cfg, c):
        cfg["processors"]["memory_limiter"]["limit_mib"] = 2048
    assert any("not below the container limit" in p for p in mutate(limiter_above_limit))

    def unknown_processor(cfg, c):
        cfg["processors"]["groupbytrace"] = {}
        cfg["service"]["pipelines"]["traces"]["processors"].append("groupbytrace")
    assert any("groupbytrace is not a component" in p for p in mutate(unknown_processor))

    def unbounded(cfg, c):
        del cfg["extensions"]["jaeger_storage"]["backends"]["memstore"]["memory"]["max_traces"]
    assert any("positive max_traces" in p for p in mutate(unbounded))

    def gomemlimit_too_high(cfg, c):
        next(e for e in c["env"] if e["name"] == "GOMEMLIMIT")["value"] = "2GiB"
    assert any("GOMEMLIMIT" in p for p in mutate(gomemlimit_too_high))

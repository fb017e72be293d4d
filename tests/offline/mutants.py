"""The deployment mutation suite's mutants (test_mutations.py): realistic mistakes in
flake.nix, the Tiltfile, k8s/ and the scripts, each a text edit of one file and the
checks (deploychecks.py) of which at least one must fail on it.

Checks: image (the flake's image config, evaluated, against the manifests and the
rehearsal), manifests, server-args (through raftkv-server's own parser), tilt, faults
(`raftkv fault` off in k8s/, on as Tilt deploys the servers), scripts.
An `old` text that is no longer in its file fails the suite: edit the mutant with the
file."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    checks: tuple


M = Mutant
IMAGE, MANIFESTS, ARGS, TILT, FAULTS, SCRIPTS = "image", "manifests", "server-args", "tilt", "faults", "scripts"

RAFT_RESOURCE_END = "    resource_deps=['jaeger'] if OBSERVABILITY_YAML else [],\n    labels=['raft'],\n"
SERVER_PORTS = "            ports = [\n              6000\n              9090\n            ];\n"
CONTAINER_SC = "          securityContext:\n            runAsNonRoot: true\n            allowPrivilegeEscalation: false\n"

MUTANTS = [
    # ---- the image definition (flake.nix) ----
    M("workingdir-misspelt", "flake.nix", 'WorkingDir = "/data";', 'WorkingDir = "/dta";', (IMAGE,)),
    M("workingdir-key-misspelt", "flake.nix", 'WorkingDir = "/data";', 'Workingdir = "/data";', (IMAGE,)),
    M("data-owned-by-root", "flake.nix", "chown 65532:65532 data", "chown 0:0 data", (IMAGE,)),
    M("data-chown-dropped", "flake.nix", "            chown 65532:65532 data\n", "", (IMAGE,)),
    M("data-mode-0000", "flake.nix", "chmod 0700 data", "chmod 0000 data", (IMAGE,)),
    M("data-mode-world-writable", "flake.nix", "chmod 0700 data", "chmod 0777 data", (IMAGE,)),
    M("image-group-0", "flake.nix", 'User = "65532:65532";', 'User = "65532:0";', (IMAGE,)),
    M("exposed-ports-a-list", "flake.nix",
      'ExposedPorts = builtins.listToAttrs (\n              map (p: {\n                name = "${toString p}/tcp";\n'
      '                value = { };\n              }) ports\n            );',
      'ExposedPorts = map (p: "${toString p}/tcp") ports;', (IMAGE,)),
    M("exposed-ports-no-protocol", "flake.nix", 'name = "${toString p}/tcp";', 'name = "${toString p}";', (IMAGE,)),
    M("exposed-ports-value-not-empty", "flake.nix", "                value = { };\n", "                value = true;\n",
      (IMAGE,)),
    M("exposed-port-not-the-container-port", "flake.nix", SERVER_PORTS, SERVER_PORTS.replace("9090", "9091"),
      (IMAGE,)),
    M("exposed-port-dropped", "flake.nix", SERVER_PORTS, SERVER_PORTS.replace("              9090\n", ""), (IMAGE,)),
    # ---- the Tiltfile ----
    M("port-forward-to-no-container-port", "Tiltfile", "port_forward(9090, 9090, name='metrics'",
      "port_forward(9090, 9091, name='metrics'", (TILT,)),
    M("jaeger-port-forward-to-no-container-port", "Tiltfile", "port_forward(16686, 16686,",
      "port_forward(16686, 16868,", (TILT,)),
    M("push-to-docker-daemon", "Tiltfile", '"docker://$EXPECTED_REF"', '"docker-daemon:$EXPECTED_REF"', (TILT,)),
    M("push-to-a-fixed-ref", "Tiltfile", '"docker://$EXPECTED_REF"', '"docker://localhost:5001/raftkv:dev"', (TILT,)),
    M("out-link-dropped", "Tiltfile", """'nix build .#%s --out-link "$out"' % flake_attr""",
      """'nix build .#%s' % flake_attr""", (TILT,)),
    M("local-resource-script-missing", "Tiltfile", "cmd='k8s/tilt/revalidate'", "cmd='k8s/tilt/re-validate'",
      (TILT,)),
    M("local-resource-script-argument-missing", "Tiltfile", "cmd='tests/offline/run.sh'",
      "cmd='bash tests/offline/run-all.sh'", (TILT,)),
    M("raft-manual-trigger", "Tiltfile", RAFT_RESOURCE_END,
      RAFT_RESOURCE_END + "    trigger_mode=TRIGGER_MODE_MANUAL,\n", (TILT,)),
    M("raft-not-auto-init", "Tiltfile", RAFT_RESOURCE_END, RAFT_RESOURCE_END + "    auto_init=False,\n", (TILT,)),
    # ---- the manifests ----
    M("admin-listen-on-loopback", "k8s/statefulset.yaml", "--admin-listen=0.0.0.0:9090",
      "--admin-listen=127.0.0.1:9090", (ARGS,)),
    M("admin-listen-on-localhost", "k8s/statefulset.yaml", "--admin-listen=0.0.0.0:9090",
      "--admin-listen=localhost:9090", (ARGS,)),
    M("admin-listen-on-another-port", "k8s/statefulset.yaml", "--admin-listen=0.0.0.0:9090",
      "--admin-listen=0.0.0.0:9091", (ARGS,)),
    M("server-flag-misspelt", "k8s/statefulset.yaml", "--data-dir=/data", "--datadir=/data", (ARGS,)),
    M("server-flag-misspelt-replicas", "k8s/statefulset.yaml", "- --replicas=3", "- --replica=3", (ARGS,)),
    M("server-env-bad-value", "k8s/statefulset.yaml", "- name: RAFTKV_LOG_FORMAT\n              value: json",
      "- name: RAFTKV_LOG_FORMAT\n              value: jsonl", (ARGS,)),
    M("data-dir-not-the-volume", "k8s/statefulset.yaml", "--data-dir=/data", "--data-dir=/var/lib/raftkv",
      (ARGS,)),
    M("prometheus-port-no-container-port", "k8s/statefulset.yaml", 'prometheus.io/port: "9090"',
      'prometheus.io/port: "9091"', (MANIFESTS,)),
    M("probe-port-misnamed", "k8s/statefulset.yaml", "              path: /livez\n              port: admin",
      "              path: /livez\n              port: admn", (MANIFESTS,)),
    M("service-target-port-misnamed", "k8s/service.yaml", "targetPort: admin", "targetPort: metrics", (MANIFESTS,)),
    M("service-target-port-wrong-number", "k8s/service.yaml", "targetPort: raft", "targetPort: 6001", (MANIFESTS,)),
    M("jaeger-service-target-port-misnamed", "observability/jaeger.yaml", "targetPort: ui", "targetPort: web",
      (MANIFESTS,)),
    M("container-runs-as-root", "k8s/statefulset.yaml", CONTAINER_SC,
      CONTAINER_SC.replace("runAsNonRoot: true\n", "runAsNonRoot: true\n            runAsUser: 0\n"), (MANIFESTS,)),
    M("pod-runs-as-root", "k8s/statefulset.yaml", "        runAsUser: 65532\n", "        runAsUser: 0\n",
      (MANIFESTS,)),
    M("validation-pod-group-root", "k8s/validate-pod.yaml", "    runAsGroup: 65532\n", "    runAsGroup: 0\n",
      (MANIFESTS,)),
    # ---- fault injection: only the Tilt dev loop enables it ----
    M("faults-enabled-in-base-args", "k8s/statefulset.yaml", "            - --admin-listen=0.0.0.0:9090\n",
      "            - --admin-listen=0.0.0.0:9090\n            - --enable-faults\n", (FAULTS,)),
    M("faults-enabled-in-base-env", "k8s/statefulset.yaml", "            - name: RUST_LOG\n",
      "            - name: RAFTKV_ENABLE_FAULTS\n              value: \"true\"\n            - name: RUST_LOG\n",
      (FAULTS,)),
    M("tilt-faults-not-enabled", "Tiltfile", "k8s_yaml(encode_yaml(with_faults_enabled(read_yaml('k8s/statefulset.yaml'))))",
      "k8s_yaml('k8s/statefulset.yaml')", (FAULTS,)),
    M("tilt-faults-flag-misspelt", "Tiltfile", "c['args'] + ['--enable-faults']", "c['args'] + ['--enable-fault']",
      (FAULTS,)),
    # ---- the scripts ----
    M("jepsen-syntax-error", "scripts/jepsen", '    *) echo "$n" ;;\n  esac\n}', '    *) echo "$n" ;;\n}',
      (SCRIPTS,)),
    M("wait-syntax-error", "tests/lib/wait.sh", "    sleep 1\n  done\n", "    sleep 1\n", (SCRIPTS,)),
    M("bench-ab-syntax-error", "bench/ab.sh", '    PIDS+=($!)\n  done\n', "    PIDS+=($!)\n", (SCRIPTS,)),
    M("revalidate-variable-typo", "k8s/tilt/revalidate", 'poll="${REVALIDATE_POLL_SECONDS:-2}"',
      'pol="${REVALIDATE_POLL_SECONDS:-2}"', (SCRIPTS,)),
]

#!/usr/bin/env bash
# The offline checks of the Nix, Kubernetes and Tilt files (no cluster, no internet):
#   - every manifest passes kubernetes-validate --strict (Kubernetes 1.31 schemas),
#     plus the StatefulSet's cross-references (selectors, ports, probes, security);
#   - the Tiltfile, evaluated by Starlark against stubs of Tilt's builtins;
#   - flake.nix parses (nix-instantiate --parse) and passes an INTERFACE CHECK against
#     a stub of the nixpkgs functions it calls — not a build; flake.lock pins nixpkgs;
#   - the scripts parse and pass shellcheck, name their kube context, cordon before they
#     stop a node, never force-delete a pod; the cluster scripts (fault buttons,
#     revalidation, k8s/raftkv) against scripted stand-ins of kubectl, docker and tilt;
#   - where 3, 4 and 5 replicas land on the kind cluster under the scheduler's Filter
#     rules (scheduling.py), and Jaeger's config against its components and memory limit;
#   - negative tests showing each checker catches a broken copy.
# Installs what it needs: nix-bin and shellcheck from Debian (when root and missing),
# the pinned PyPI packages of requirements.txt into a venv under target/.
# Exits non-zero on any failure; ends with pytest's "N passed" summary.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

missing=()
command -v nix-instantiate >/dev/null 2>&1 || missing+=(nix-bin)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "offline checks: installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null; }
  else
    echo "offline checks: ${missing[*]} missing and not root: the checks needing them are skipped (failed under CI=true)"
  fi
fi

py="$("$here/venv.sh")"
cd "$root"
exec "$py" -m pytest -p no:cacheprovider -q -rs "$here" "$@"

#!/usr/bin/env bash
# The offline checks of the Nix, Kubernetes and Tilt files (no cluster, no internet):
#   - every manifest passes kubernetes-validate --strict (Kubernetes 1.31 schemas),
#     plus the StatefulSet's cross-references (selectors, ports, probes, security);
#   - the Tiltfile, evaluated by Starlark against stubs of Tilt's builtins;
#   - flake.nix parses (nix-instantiate --parse), and `nix flake check --no-build
#     --all-systems` evaluates it with Nix 2.26 (Debian 13's, in a debootstrap chroot:
#     nixpkgs 26.05 needs Nix >= 2.18) against nixpkgs 26.05's real lib with stubs of
#     its derivation builders only, and crane's real source — not a build; flake.lock
#     pins nixpkgs and crane; the nix/check_image.py image check on test archives;
#   - the scripts parse and pass shellcheck, name their kube context, cordon before they
#     stop a node, never force-delete a pod; the cluster scripts (fault buttons,
#     revalidation, k8s/raftkv) against scripted stand-ins of kubectl, docker, tilt and
#     raftkv;
#   - `raftkv fault` enabled only in the servers the Tiltfile deploys, never in k8s/;
#   - where 3, 4 and 5 replicas land on the kind cluster under the scheduler's Filter
#     rules (scheduling.py), and Jaeger's config against its components and memory limit;
#   - negative tests showing each checker catches a broken copy, and the deployment
#     mutation suite (test_mutations.py: 44 mistakes in flake.nix, the Tiltfile, k8s/
#     and the scripts, each of which some check must catch; tests/README.md).
# Installs what it needs: nix-bin, shellcheck, debootstrap and jq (k8s/tilt/inject)
# from Debian (when root and missing); once per checkout, the Nix 2.26 chroot under
# target/nix-chroot (about a minute: debootstrap and apt-get fetch Debian 13 from the
# Debian mirror, as apt does; tests/offline/nix-eval.sh); the pinned PyPI packages of requirements.txt into a venv
# under target/. The checks themselves use no network.
# Exits non-zero on any failure; ends with pytest's "N passed" summary.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

missing=()
command -v nix-instantiate >/dev/null 2>&1 || missing+=(nix-bin)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v jq >/dev/null 2>&1 || missing+=(jq)
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

# The Nix >= 2.18 of the flake evaluation (a no-op once the chroot exists). Where it
# cannot be made, the flake tests say SKIPPED with the reason (a failure under CI=true).
"$here/nix-eval.sh" install || echo "offline checks: no Nix 2.26 chroot: $("$here/nix-eval.sh" status)"

py="$("$here/venv.sh")"
cd "$root"
exec "$py" -m pytest -p no:cacheprovider -q -rs "$here" "$@"

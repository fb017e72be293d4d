#!/usr/bin/env bash
# A Nix >= 2.18 for the offline flake checks (tests/offline/test_flake.py), which
# evaluate flake.nix against nixpkgs 26.05's real lib (it needs Nix >= 2.18) and crane's
# real source. Debian 12 ships Nix 2.8, so this keeps Debian 13's nix-bin (2.26) in a
# debootstrap chroot, cached in target/ (RAFTKV_NIX_CHROOT overrides the place).
#
#   nix-eval.sh install             create the chroot if it is missing (root; debootstrap
#                                   and apt-get fetch Debian 13 from the Debian mirror, as
#                                   apt does). tests/offline/run.sh calls this in its
#                                   install phase, so CI (root, fresh clone) builds it
#                                   once per clone; later runs reuse it.
#   nix-eval.sh status              one line: "chroot <nix version>" or
#                                   "fallback <nix version or none>: <why no chroot>"
#   nix-eval.sh run STAGE CMD...    runs CMD (nix ...) with the directory STAGE visible
#                                   at the path @STAGE@ stands for in CMD; with no
#                                   network (a network namespace of its own) and a
#                                   fresh, throwaway Nix store
#
# Where no chroot can be made (not root, no debootstrap), `run` falls back to the host's
# nix (Debian 12: 2.8, too old for nixpkgs 26.05) and says so on stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
chroot_dir="${RAFTKV_NIX_CHROOT:-$root/target/nix-chroot}"
suite=trixie
mirror="${RAFTKV_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# No daemon, no build users, no substituters, no flake registry: evaluation only.
nix_config='experimental-features = nix-command flakes
build-users-group =
sandbox = false
substituters =
flake-registry =
warn-dirty = false'

have_chroot() { [ -x "$chroot_dir/usr/bin/nix" ]; }

why_no_chroot() {
  if [ "$(id -u)" != 0 ]; then
    echo "not root (a chroot needs root)"
  elif ! command -v debootstrap >/dev/null 2>&1; then
    echo "debootstrap is not installed (tests/offline/run.sh installs it as root)"
  elif ! command -v unshare >/dev/null 2>&1; then
    echo "unshare is not installed"
  else
    echo "no chroot at $chroot_dir yet (run: $0 install)"
  fi
}

install() {
  have_chroot && return 0
  if [ "$(id -u)" != 0 ] || ! command -v debootstrap >/dev/null 2>&1; then
    echo "nix-eval: cannot create the Nix 2.26 chroot: $(why_no_chroot)" >&2
    return 1
  fi
  mkdir -p "$(dirname "$chroot_dir")"
  exec 9>"$chroot_dir.lock"
  flock 9
  have_chroot && return 0
  local partial="$chroot_dir.partial" log="$chroot_dir.install.log" started=$SECONDS
  rm -rf "$partial"
  echo "nix-eval: creating a Debian 13 ($suite) chroot with nix-bin at $chroot_dir (once; log: $log)" >&2
  if ! debootstrap --variant=minbase "$suite" "$partial" "$mirror" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "nix-eval: debootstrap $suite failed (log: $log)" >&2
    return 1
  fi
  # proc only inside a mount namespace of this command: nothing stays mounted.
  # shellcheck disable=SC2016 # expanded by the inner sh
  if ! unshare --mount --fork -- sh -c '
      mount --make-rprivate / && mount -t proc proc "$1/proc" &&
      DEBIAN_FRONTEND=noninteractive chroot "$1" apt-get install -y -q --no-install-recommends nix-bin &&
      chroot "$1" apt-get clean' sh "$partial" >>"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "nix-eval: installing nix-bin in the chroot failed (log: $log)" >&2
    return 1
  fi
  mv "$partial" "$chroot_dir"
  echo "nix-eval: chroot ready in $((SECONDS - started)) s: $("$0" status)" >&2
}

status() {
  if have_chroot && [ "$(id -u)" = 0 ]; then
    echo "chroot $(inside_version)"
  else
    local v=none
    command -v nix >/dev/null 2>&1 && v="$(nix --version | awk '{print $NF}')"
    echo "fallback $v: $(why_no_chroot)"
  fi
}

inside_version() {
  # shellcheck disable=SC2016 # expanded by the inner sh
  unshare --mount --fork -- sh -c 'mount --make-rprivate / && mount -t proc proc "$1/proc" &&
    chroot "$1" nix --version' sh "$chroot_dir" | awk '{print $NF}'
}

run() {
  local stage="$1"
  shift
  stage="$(cd "$stage" && pwd)"
  if have_chroot && [ "$(id -u)" = 0 ]; then
    local args=() a
    for a in "$@"; do args+=("${a//@STAGE@//stage}"); done
    unshare --mount --net --fork -- "$0" _inside "$stage" "${args[@]}"
  else
    echo "nix-eval: FALLBACK to the host's nix ($(status)); nixpkgs 26.05 needs Nix >= 2.18" >&2
    command -v nix >/dev/null 2>&1 || { echo "nix-eval: no nix on the host either" >&2; return 127; }
    local args=() a
    for a in "$@"; do args+=("${a//@STAGE@/$stage}"); done
    NIX_CONFIG="$nix_config" "${args[@]}"
  fi
}

# In the new mount and network namespaces of `run`: /proc, the stage at /stage, a
# tmpfs as /nix (a fresh store each run, gone with the namespace), then chroot.
inside() {
  local stage="$1"
  shift
  mount --make-rprivate /
  mount -t proc proc "$chroot_dir/proc"
  mkdir -p "$chroot_dir/stage" "$chroot_dir/nix"
  mount --bind "$stage" "$chroot_dir/stage"
  mount -t tmpfs -o size=2g tmpfs "$chroot_dir/nix"
  ip link set lo up 2>/dev/null || true
  exec chroot "$chroot_dir" /usr/bin/env -i HOME=/root PATH=/usr/bin:/bin TMPDIR=/tmp \
    NIX_CONFIG="$nix_config" "$@"
}

case "${1:-}" in
  install) install ;;
  status) status ;;
  run) shift; run "$@" ;;
  _inside) shift; inside "$@" ;;
  *) echo "usage: $0 install | status | run STAGE CMD..." >&2; exit 2 ;;
esac

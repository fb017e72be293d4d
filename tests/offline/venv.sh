#!/usr/bin/env bash
# Prints the path of a python3 that has the pinned packages of requirements.txt,
# creating or updating a venv under the workspace's target/ dir when needed.
# Used by tests/offline/run.sh and tests/docker/rehearsal.sh. Progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${RAFTKV_TEST_VENV:-$root/target/offline-venv}"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python3" ]; then
  echo "venv: creating $venv" >&2
  python3 -m venv "$venv" >&2
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "venv: installing $(grep -cv '^#' "$req") pinned packages from $req" >&2
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python3"

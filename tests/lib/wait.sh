# shellcheck shell=bash
# Sourced by the shell test scripts (tests/docker/rehearsal.sh, tests/e2e/kind.sh).
# The caller defines `fail MESSAGE` (report and exit).

# wait_until SECONDS WHAT CMD...: polls CMD every second until it succeeds; fails
# naming WHAT once SECONDS have passed. A deadline-bounded poll, never a fixed sleep
# standing in for a condition.
wait_until() {
  local secs=$1 what=$2 deadline
  shift 2
  deadline=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for $what"
    sleep 1
  done
}

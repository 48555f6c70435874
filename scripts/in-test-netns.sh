#!/usr/bin/env bash
# Runs a command inside a network namespace of its own, made for it and removed afterwards:
#
#   bash scripts/in-test-netns.sh cargo test -p zeroflow-tests --test cluster
#
# Why: the test cluster's Pods need addresses that are not loopback (the API server refuses
# 127.0.0.0/8 in EndpointSlices), so they live in 198.18.0.0/15 (RFC 2544's benchmarking
# range). Test traffic may only go to loopback or to test hosts inside a network namespace that
# the test run made itself: this is that namespace. Inside it only `lo` exists, up, with
# 198.18.0.0/15 made local on it; nothing inside can reach another machine (build and install
# before, outside). The command's exit status is this script's. Needs root (ip netns).
set -euo pipefail
[ $# -gt 0 ] || {
  echo "usage: bash scripts/in-test-netns.sh COMMAND [ARGS...]" >&2
  exit 64
}
[ "$(id -u)" = 0 ] || {
  echo "[in-test-netns] ERROR: needs root to make a network namespace (ip netns add)" >&2
  exit 1
}
command -v ip >/dev/null || {
  echo "[in-test-netns] ERROR: needs ip (Debian package iproute2)" >&2
  exit 1
}
NS="zeroflow-test-$$"
POD_RANGE=198.18.0.0/15
ip netns add "$NS"
trap 'ip netns delete "$NS" 2>/dev/null || true' EXIT
ip -n "$NS" link set lo up
ip -n "$NS" route add local "$POD_RANGE" dev lo
echo "[in-test-netns] network namespace $NS (lo up, $POD_RANGE local): $*" >&2
status=0
ip netns exec "$NS" "$@" || status=$?
exit "$status"

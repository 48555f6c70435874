#!/usr/bin/env bash
# Runs every test: unit, golden, property, and end to end with the real jina client,
# real jina executors and gateways. Installs the Python side first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export JINA_OPTOUT_TELEMETRY=1 NO_VERSION_CHECK=1
bash scripts/setup-python.sh
# A real S3-compatible server (s3rver) for the S3 artifact store tests.
bash scripts/setup-s3.sh
# The dashboard's front end (embedded in jc) and the browser its test drives.
bash scripts/setup-dashboard.sh
# Kubernetes' own API server, controller manager and scheduler for the cluster tests (cold: ~12 min).
bash scripts/setup-kube.sh
# The end-to-end tests run the workspace's binaries (jc, zeroflow-shim, the test Executor).
cargo build --workspace --bins
# Tests are built out here: the namespace below has no route to the package registries.
cargo test --workspace --no-run
# Inside a network namespace of the test run's own: the test cluster's Pods have addresses in
# 198.18.0.0/15, which are local only there (scripts/in-test-netns.sh says why).
# The dashboard in a real browser (chromium, headless) runs after them, whatever they gave.
status=0
bash scripts/in-test-netns.sh cargo test --workspace --no-fail-fast || status=$?
(cd dashboard && bash ../scripts/in-test-netns.sh npm test) || status=$?
exit "$status"

#!/usr/bin/env bash
# Installs what the dashboard needs to build and to be tested in a real browser: its npm
# packages from the lock file (dashboard/package-lock.json, `npm ci`) and Debian's chromium (the
# browser test drives it headless with playwright-core; no browser is downloaded). Idempotent:
# quick when both are there.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "[setup-dashboard] $*"; }
if ! command -v chromium >/dev/null; then
  [ "$(id -u)" = 0 ] || {
    echo "[setup-dashboard] ERROR: must run as root to apt-get install chromium" >&2
    exit 1
  }
  say "apt-get install chromium"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
say "chromium: $(chromium --version 2>/dev/null || echo '?')"
command -v npm >/dev/null || {
  echo "[setup-dashboard] ERROR: needs Node 20.19+ and npm on PATH" >&2
  exit 1
}
# From the lock file, every time (about 2 s): what CI builds is exactly what is locked.
say "npm ci (dashboard/package-lock.json)"
(cd dashboard && npm ci --no-audit --no-fund)
say "npm run build (dashboard/dist, embedded in jc)"
(cd dashboard && npm run build --silent)

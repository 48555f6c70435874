#!/usr/bin/env bash
# Installs s3rver, a real S3-compatible server (Node), into .s3rver/ for the S3 tests of
# zeroflow-artifacts (artifacts/tests/s3.rs). It only installs: each test starts its own server on a
# free loopback port with a temporary data directory, and stops it. Idempotent: a second run that
# finds the pinned version exits at once.
#
# Why s3rver: it installs in about 9 s (moto needs about 90 s, s3s-fs about 5 min of cargo install)
# and passes put, get, list, multipart and delete with aws-sdk-s3 (test-infrastructure.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=3.7.1
DIR="$PWD/.s3rver"
BIN="$DIR/node_modules/.bin/s3rver"

if [ -x "$BIN" ] && grep -q "\"version\": \"$VERSION\"" "$DIR/node_modules/s3rver/package.json" 2>/dev/null; then
  echo "s3rver $VERSION already installed: $BIN"
  exit 0
fi

if ! command -v npm >/dev/null; then
  if command -v apt-get >/dev/null; then
    echo "npm is missing: installing Debian's nodejs and npm"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "setup-s3.sh needs npm (Node.js) to install s3rver" >&2
    exit 1
  fi
fi

mkdir -p "$DIR"
npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error "s3rver@$VERSION"
"$BIN" --version >/dev/null
echo "s3rver $VERSION installed: $BIN"

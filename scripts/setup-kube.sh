#!/usr/bin/env bash
# Builds Kubernetes' own control plane for the test cluster (scripts/test-cluster.sh): kube-apiserver,
# kube-controller-manager, kube-scheduler and kubectl, from the Go module k8s.io/kubernetes at
# $KUBE_VERSION with its staging modules (k8s.io/api, client-go, ...) pinned by `replace` to the
# matching v0.x releases, as the Go module proxy serves them. Installs etcd from Debian.
#
# The binaries live in a cache outside the checkout, keyed by version
# (${XDG_CACHE_HOME:-~/.cache}/zeroflow/kube/$KUBE_VERSION/bin), as Go's own caches do, so a
# second run on the same machine takes well under a second. Idempotent; prints every step.
# Cold on 2 cores: module download about 15 s, build about 11 minutes (kube-apiserver 8, the
# others reuse most of its packages from the Go build cache).
set -euo pipefail
KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
STAGING_VERSION="v0.${KUBE_VERSION#v1.}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/zeroflow/kube/$KUBE_VERSION"
BIN="$CACHE/bin"
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
START=$SECONDS

step() { echo "[setup-kube +$((SECONDS - START))s] $*"; }
die() {
  echo "[setup-kube] ERROR: $*" >&2
  exit 1
}

# A binary counts when it runs and reports the version asked for (a truncated file does not).
binary_ok() {
  local out
  [ -x "$BIN/$1" ] || return 1
  if [ "$1" = kubectl ]; then
    out="$("$BIN/$1" version --client 2>&1)" || return 1
  else
    out="$("$BIN/$1" --version 2>&1)" || return 1
  fi
  [[ "$out" == *"$KUBE_VERSION"* ]]
}

# --- 1. etcd from Debian, and the tools scripts/test-cluster.sh uses ---------------------------
pkgs=()
command -v etcd >/dev/null || pkgs+=(etcd-server)
command -v openssl >/dev/null || pkgs+=(openssl)
command -v curl >/dev/null || pkgs+=(curl)
command -v ip >/dev/null || pkgs+=(iproute2)
command -v flock >/dev/null || pkgs+=(util-linux)
if [ ${#pkgs[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "must run as root to apt-get install ${pkgs[*]}"
  step "apt-get install ${pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null \
    || die "apt-get install ${pkgs[*]} failed"
fi
step "etcd: $(etcd --version 2>/dev/null | sed -n 1p)"

# --- 2. the Kubernetes binaries, from the module proxy ---------------------------------------
todo=()
for c in "${COMPONENTS[@]}"; do binary_ok "$c" || todo+=("$c"); done
if [ ${#todo[@]} -eq 0 ]; then
  step "already built: $BIN (${COMPONENTS[*]} $KUBE_VERSION)"
  exit 0
fi
command -v go >/dev/null || die "needs Go (go 1.26 or newer) on PATH"
step "building ${todo[*]} $KUBE_VERSION with $(go version | awk '{print $3}') into $BIN"

WORK="$CACHE/build"
mkdir -p "$WORK" "$BIN"
cd "$WORK"
# The module's own go.mod replaces every staging module with a folder of its repository; outside
# that repository the same code is the published k8s.io/* module of the matching v0 release.
MODFILE="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBE_VERSION.mod"
if [ ! -f "$MODFILE" ]; then
  step "go mod download k8s.io/kubernetes@$KUBE_VERSION"
  GOFLAGS=-mod=mod go mod download k8s.io/kubernetes@"$KUBE_VERSION" || die "go mod download k8s.io/kubernetes@$KUBE_VERSION failed"
fi
{
  echo "module zeroflow.test/kubebuild"
  echo
  echo "go 1.26"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  echo "replace ("
  # sample-cli-plugin is replaced upstream but never required, and is not published.
  sed -n '/^replace (/,/^)/p' "$MODFILE" | awk -v v="$STAGING_VERSION" \
    '/=> \.\/staging/ && $1 != "k8s.io/sample-cli-plugin" {print "\t" $1 " => " $1 " " v}'
  echo ")"
} >go.mod
{
  echo "//go:build tools"
  echo
  echo "package kubebuild"
  echo
  echo "import ("
  for c in "${COMPONENTS[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
  echo ")"
} >tools.go
step "go mod tidy (downloads the modules once; cached in $(go env GOMODCACHE))"
GOFLAGS=-mod=mod go mod tidy || die "go mod tidy failed in $WORK"

# Version stamps the way Kubernetes' own build (hack/lib/version.sh) sets them.
minor="${KUBE_VERSION#v1.}"
minor="${minor%%.*}"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
for c in "${todo[@]}"; do
  step "go build $c"
  # Static, so the binaries do not depend on the C library of the machine that built them.
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$LDFLAGS" -o "$BIN/$c.tmp" \
    "k8s.io/kubernetes/cmd/$c" || die "go build k8s.io/kubernetes/cmd/$c failed"
  mv "$BIN/$c.tmp" "$BIN/$c"
  binary_ok "$c" || die "$BIN/$c was built but does not report $KUBE_VERSION"
done
step "built: $(ls "$BIN" | tr '\n' ' ')"

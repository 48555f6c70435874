#!/usr/bin/env bash
# Installs a real Kubernetes API server for the Knative Service tests (tests/tests/knative_crd.rs):
# Debian's etcd-server on the host, and Kubernetes' own CRD server `apiextensions-apiserver` built
# into .tools/bin/. It only installs: each test starts its own etcd and server on free loopback
# ports (tests/src/apiserver.rs) and stops them.
#
# Why this server: no kube-apiserver, kind, k3s or Docker is reachable here, but Debian sid packages
# the Go sources of k8s.io/apiextensions-apiserver (Kubernetes 1.36 code). It serves CRDs and custom
# resources with the real schema validation and server-side apply (test-infrastructure.md).
# The sources and a new enough Go exist only in sid, so the build runs in a throwaway sid chroot
# (debootstrap); the binary is static (CGO_ENABLED=0), so it runs on the Debian 12 host. The chroot
# and the Go caches are removed afterwards: what stays is the binary alone.
#
# Idempotent: when the binary and etcd are already there it exits at once (0.1 s).
# Needs root (apt-get, debootstrap, chroot, mount). Cold, on 2 cores: 12-17 minutes (debootstrap
# about 1.5, the sid Go packages about 7, go build about 7); disk at the peak about 5.7 GB under
# .tools/ (chroot about 3 GB plus the Go build cache), afterwards only the binary (about 75 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin/apiextensions-apiserver"
# The chroot lives under .tools/ (ignored by git) so that a failed run leaves nothing elsewhere.
CHROOT="$TOOLS/sid-build-chroot"
MIRROR="${ZEROFLOW_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
START=$SECONDS

step() { echo "[setup-kube-apiserver +$((SECONDS - START))s] $*"; }
die() {
  echo "[setup-kube-apiserver] ERROR: $*" >&2
  exit 1
}

# The binary must run and know its flags; a truncated or foreign file does not count. (Output
# captured whole: `| grep -q` could end the pipe early, and pipefail would call that a failure.)
binary_ok() {
  [ -x "$BIN" ] || return 1
  local help
  help="$("$BIN" --help 2>&1)" || return 1
  [[ "$help" == *--etcd-servers* ]]
}
etcd_version() { etcd --version 2>/dev/null | sed -n 1p; }

apt_install() {
  step "apt-get install $*"
  if [ -z "${APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

# --- 1. host packages: etcd for the server's storage; openssl to inspect the test PKI by hand ----
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v openssl >/dev/null || missing+=(openssl)
if binary_ok; then
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "must run as root to install ${missing[*]}"
    apt_install "${missing[@]}"
  fi
  step "already installed: $BIN ($(etcd_version))"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, debootstrap, chroot) to build $BIN"
command -v apt-get >/dev/null || die "needs apt-get (a Debian host)"
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
else
  step "host packages present: etcd, openssl, debootstrap"
fi

# --- 2. a throwaway sid chroot, always unmounted and removed, also on failure ----------------
cleanup() {
  # Unmount before removing: rm must never walk into a mounted /proc or /dev.
  for m in dev/pts dev proc; do
    if mountpoint -q "$CHROOT/$m" 2>/dev/null; then umount -l "$CHROOT/$m" || true; fi
  done
  if [ -d "$CHROOT" ]; then
    rm -rf --one-file-system "$CHROOT" || echo "[setup-kube-apiserver] could not remove $CHROOT" >&2
  fi
}
trap cleanup EXIT
# A previous run that was killed may have left one behind.
cleanup

mkdir -p "$TOOLS/bin"
step "debootstrap sid (minbase) into $CHROOT from $MIRROR"
debootstrap --variant=minbase sid "$CHROOT" "$MIRROR" >"$TOOLS/debootstrap.log" 2>&1 || {
  tail -30 "$TOOLS/debootstrap.log" >&2
  die "debootstrap of sid failed (log above, full log in $TOOLS/debootstrap.log)"
}
rm -f "$TOOLS/debootstrap.log"

mount -t proc proc "$CHROOT/proc"
mount --bind /dev "$CHROOT/dev"
cp /etc/resolv.conf "$CHROOT/etc/resolv.conf" 2>/dev/null || true
# The mirrors reachable here may serve a dated snapshot whose sid Release file is past its
# Valid-Until (apt then refuses it: "Release file ... is expired"). The host's apt is configured the
# same way; signatures are still checked.
printf 'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n' \
  >"$CHROOT/etc/apt/apt.conf.d/99zeroflow-snapshot"

in_chroot() { chroot "$CHROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

step "chroot: apt-get install golang-go golang-k8s-apiextensions-apiserver-dev"
in_chroot sh -c 'DEBIAN_FRONTEND=noninteractive apt-get update -qq' || die "apt-get update in the sid chroot failed"
in_chroot sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 \
    golang-go golang-k8s-apiextensions-apiserver-dev >/dev/null' \
  || die "apt-get install of golang-go / golang-k8s-apiextensions-apiserver-dev in the sid chroot failed"
# The .debs are no longer needed once unpacked: free their space before the build's peak.
in_chroot apt-get clean
in_chroot go version

SRC=/usr/share/gocode/src/k8s.io/apiextensions-apiserver
[ -f "$CHROOT$SRC/main.go" ] || die "no main.go in $SRC: the Debian package changed its layout"
step "chroot: go build k8s.io/apiextensions-apiserver (static, CGO_ENABLED=0; several minutes on 2 cores)"
# Debian's Go sources form a GOPATH tree, not modules: GOPATH mode. GOCACHE lives in the chroot so
# that removing the chroot removes it. -s -w drops the symbol tables: the tests need no debugger.
in_chroot env GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=/tmp/gocache GOFLAGS= \
  CGO_ENABLED=0 GOTOOLCHAIN=local \
  go build -trimpath -ldflags '-s -w' -o /tmp/apiextensions-apiserver k8s.io/apiextensions-apiserver \
  || die "go build of k8s.io/apiextensions-apiserver failed"

install -m 0755 "$CHROOT/tmp/apiextensions-apiserver" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
binary_ok || die "$BIN was built but does not run on this host"

step "removing the chroot and the Go caches"
cleanup
trap - EXIT
step "done in $((SECONDS - START))s: $BIN ($(du -h "$BIN" | cut -f1)), $(etcd_version)"

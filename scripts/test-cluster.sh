#!/usr/bin/env bash
# A real Kubernetes cluster for Zeroflow's tests, on this machine, with no containers:
#
#   bash scripts/test-cluster.sh up DIR     starts it and writes DIR/kubeconfig (admin)
#   bash scripts/test-cluster.sh down DIR   stops everything `up` started; leaves no process behind
#
# Everything above the node is Kubernetes' own code: etcd (Debian's, on PATH), kube-apiserver,
# kube-controller-manager and kube-scheduler (built by scripts/setup-kube.sh into
# ${XDG_CACHE_HOME:-~/.cache}/zeroflow/kube/$KUBE_VERSION/bin). Only the kubelet (and kube-proxy's
# NodePorts) is simulated, by the test node agent `zeroflow-test-node` (test-node/, test code;
# `cargo build -p zeroflow-test-node`). It runs each Pod's containers as local processes:
#   - the container image is ignored: `command` + `args` run with the program looked up on the
#     agent's PATH, which is this script's PATH (tests put target/debug and the venv's bin on it);
#   - each Pod gets its own address 198.18.N.x (x from 2) and binds it itself (via $(POD_IP)).
#     Not 127.0.0.x: the API server rejects loopback addresses in EndpointSlices. So the cluster
#     runs inside a network namespace made for the test run, where 198.18.0.0/15 (RFC 2544's
#     benchmarking range) is local on lo: `bash scripts/in-test-netns.sh COMMAND` makes one and
#     runs COMMAND in it (scripts/test.sh runs the tests so). `up` refuses to run elsewhere: it
#     never adds that route to a namespace it did not make;
#   - the Node's address is 198.18.N.1: NodePorts listen there and the API server reaches the
#     agent's logs server there;
#   - ServiceAccount tokens come from the TokenRequest API into a kubeconfig named by KUBECONFIG
#     in the Pod's environment (no projected volume), so RBAC applies to Pods for real.
#
# Several clusters can run at once (parallel tests): `up` picks free loopback ports and a free
# slot N (its Pod subnet), and records them in DIR/cluster.env:
#   SLOT, NODE_NAME, NODE_IP, POD_SUBNET, API_PORT, API_URL, ETCD_PORT, KUBECONFIG.
# DIR also holds the PKI (pki/), each component's kubeconfig, etcd's data, every log (DIR/*.log,
# container logs under DIR/node/logs/) and the process groups started (pids/).
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
BIN="${XDG_CACHE_HOME:-$HOME/.cache}/zeroflow/kube/$KUBE_VERSION/bin"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE_NAME=zeroflow-test-node-0
SERVICE_CIDR=10.96.0.0/16
# The first address of the service CIDR: the `kubernetes` Service's cluster IP.
SERVICE_IP=10.96.0.1
POD_RANGE=198.18.0.0/15
SLOTS_DIR="${TMPDIR:-/tmp}/zeroflow-test-cluster-slots"
# What `up` starts, each in its own process group (DIR/pids/NAME.pid).
COMPONENTS=(node kube-scheduler kube-controller-manager kube-apiserver etcd)

START=$SECONDS
say() { echo "[test-cluster +$((SECONDS - START))s] $*"; }
die() {
  echo "[test-cluster] ERROR: $*" >&2
  exit 1
}

usage() {
  echo "usage: bash scripts/test-cluster.sh up|down DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
CMD="$1"
mkdir -p "$2"
DIR="$(cd "$2" && pwd)"

# A zombie (exited, not yet reaped by whoever adopted it) counts as gone.
alive() {
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 1
  local stat
  stat="$(ps -o stat= -p "$1" 2>/dev/null || true)"
  [ -n "$stat" ] && [[ "$stat" != Z* ]]
}

# True when a pid recorded in DIR (or in the DIR given) still runs.
any_alive() {
  local d="${1:-$DIR}" f
  for f in "$d"/pids/*.pid; do
    [ -f "$f" ] || continue
    alive "$(cat "$f")" && return 0
  done
  return 1
}

# The process groups `up` started, and the containers' groups the node agent recorded.
groups() {
  local f
  for f in "$DIR"/pids/*.pid; do
    [ -f "$f" ] && [ "$(basename "$f")" != up.pid ] && cat "$f"
  done
  for f in "$DIR"/node/procs/*; do
    [ -f "$f" ] && basename "$f"
  done
  return 0
}

# Processes (not zombies) still in those groups.
leftovers() {
  local gs
  gs=" $(groups | tr '\n' ' ') "
  ps -eo pid=,pgid=,stat=,args= | while read -r pid pgid stat args; do
    [[ "$stat" == Z* ]] && continue
    [[ "$gs" == *" $pgid "* ]] && echo "$pid $args"
  done
  return 0
}

release_slot() {
  [ -f "$DIR/cluster.env" ] || return 0
  local slot
  slot="$(sed -n 's/^SLOT=//p' "$DIR/cluster.env")"
  if [ -n "$slot" ] && [ "$(cat "$SLOTS_DIR/$slot/owner" 2>/dev/null)" = "$DIR" ]; then
    rm -rf "${SLOTS_DIR:?}/$slot"
  fi
}

down() {
  say "stopping the test cluster in $DIR"
  local c pid i
  # The node agent first (it stops the Pods' processes, up to 5 s), then the rest together.
  for batch in node "kube-scheduler kube-controller-manager kube-apiserver etcd"; do
    local started=()
    for c in $batch; do
      [ -f "$DIR/pids/$c.pid" ] || continue
      pid="$(cat "$DIR/pids/$c.pid")"
      if alive "$pid"; then
        say "stopping $c (SIGTERM to process group $pid)"
        kill -TERM -- "-$pid" 2>/dev/null || true
        started+=("$c:$pid")
      fi
    done
    for i in $(seq 1 100); do
      local running=0
      for c in "${started[@]}"; do alive "${c#*:}" && running=1; done
      [ $running = 0 ] && break
      sleep 0.1
    done
    for c in "${started[@]}"; do
      if alive "${c#*:}"; then
        say "${c%%:*} did not stop within 10 s: SIGKILL"
        kill -KILL -- "-${c#*:}" 2>/dev/null || true
      fi
    done
  done
  local g
  for g in $(groups); do
    kill -KILL -- "-$g" 2>/dev/null || true
  done
  for i in $(seq 1 50); do
    [ -z "$(leftovers)" ] && break
    sleep 0.1
  done
  local left
  left="$(leftovers)"
  if [ -n "$left" ]; then
    echo "$left" >&2
    die "processes of the test cluster in $DIR are still running (above)"
  fi
  release_slot
  rm -f "$DIR"/pids/*.pid "$DIR"/node/procs/* 2>/dev/null || true
  say "stopped: no process of the test cluster in $DIR is left (checked with ps)"
}

# Starts "$@" in its own session and process group, output to DIR/$name.log.
start() {
  local name="$1"
  shift
  say "starting $name (log: $DIR/$name.log)"
  setsid "$@" >"$DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name.pid"
}

# Waits until "$@" succeeds, up to $1 seconds; dies naming $2 and the log $3 if it does not.
wait_for() {
  local deadline=$((SECONDS + $1)) what="$2" log="$3"
  shift 3
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      [ -f "$log" ] && tail -n 30 "$log" >&2
      die "timed out waiting for $what (log: $log)"
    fi
    sleep 0.2
  done
}

# A key (P-256, PKCS#8) and a certificate signed by the cluster's CA.
#   cert NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
cert() {
  local name="$1" subj="$2" eku="$3" san="${4:-}"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    echo "authorityKeyIdentifier=keyid"
    echo "subjectKeyIdentifier=hash"
    [ -z "$san" ] || echo "subjectAltName=$san"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

b64() { base64 -w0 <"$1"; }

# kubeconfig FILE USER CERT_NAME: the API server with the CA, and a client certificate.
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: zeroflow-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$PKI/$3.crt")
    client-key-data: $(b64 "$PKI/$3.key")
contexts:
- name: zeroflow-test
  context:
    cluster: zeroflow-test
    user: $2
    namespace: default
current-context: zeroflow-test
EOF
}

# Claims the first free slot N (Pod subnet 198.18.N.0/24); a slot whose owner runs nothing any
# more is stale and taken over. flock makes concurrent `up`s take different slots.
claim_slot() {
  mkdir -p "$SLOTS_DIR"
  exec 9>"$SLOTS_DIR/.lock"
  flock 9
  local n owner
  for n in $(seq 0 255); do
    if [ -d "$SLOTS_DIR/$n" ]; then
      owner="$(cat "$SLOTS_DIR/$n/owner" 2>/dev/null || true)"
      if [ -n "$owner" ] && [ "$owner" != "$DIR" ] && any_alive "$owner"; then
        continue
      fi
      rm -rf "${SLOTS_DIR:?}/$n"
    fi
    mkdir "$SLOTS_DIR/$n"
    echo "$DIR" >"$SLOTS_DIR/$n/owner"
    SLOT=$n
    flock -u 9
    exec 9>&-
    return 0
  done
  flock -u 9
  die "all 256 test cluster slots in $SLOTS_DIR are in use"
}

node_ready() {
  local out
  out="$("$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.taints[*].key}')" || return 1
  [[ "$out" == True* ]] && [[ "$out" != *node.kubernetes.io/not-ready* ]]
}

up() {
  local c
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [ -x "$BIN/$c" ] || die "$BIN/$c is missing: run \`bash scripts/setup-kube.sh\` first"
  done
  command -v etcd >/dev/null || die "etcd is not on PATH: run \`bash scripts/setup-kube.sh\` first"
  for c in openssl curl flock setsid ip python3; do
    command -v "$c" >/dev/null || die "$c is not on PATH"
  done
  local agent="${ZEROFLOW_TEST_NODE:-}"
  [ -n "$agent" ] || agent="$(command -v zeroflow-test-node || true)"
  [ -n "$agent" ] || agent="$REPO/target/debug/zeroflow-test-node"
  [ -x "$agent" ] || die "the node agent $agent is missing: run \`cargo build -p zeroflow-test-node\`"
  if any_alive; then
    die "a test cluster already runs in $DIR: run \`bash scripts/test-cluster.sh down $DIR\` first"
  fi

  say "starting a test cluster in $DIR (Kubernetes $KUBE_VERSION from $BIN; node agent $agent)"
  # A fresh cluster: nothing of an earlier one in DIR (its etcd data names another CA's world).
  rm -rf "$DIR/etcd" "$DIR/node" "$DIR/pki"
  mkdir -p "$DIR/pids" "$DIR/node"
  echo $$ >"$DIR/pids/up.pid"
  # A failed `up` stops what it started.
  trap 'status=$?; if [ $status -ne 0 ]; then echo "[test-cluster] up failed; stopping what it started" >&2; down || true; fi; rm -f "$DIR/pids/up.pid"' EXIT

  if ! ip route show table local "$POD_RANGE" | grep -q .; then
    die "Pod addresses ($POD_RANGE) are not local in this network namespace: run inside the test network namespace, e.g. \`bash scripts/in-test-netns.sh bash scripts/test-cluster.sh up $DIR\` or \`bash scripts/in-test-netns.sh cargo test -p zeroflow-tests --test cluster\`"
  fi
  claim_slot
  NODE_IP="198.18.$SLOT.1"
  POD_SUBNET="198.18.$SLOT.0/24"
  local ports
  ports="$(python3 -c 'import socket
s = [socket.socket() for _ in range(5)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')"
  read -r ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHED_PORT <<<"$ports"
  cat >"$DIR/cluster.env" <<EOF
SLOT=$SLOT
NODE_NAME=$NODE_NAME
NODE_IP=$NODE_IP
POD_SUBNET=$POD_SUBNET
API_PORT=$API_PORT
API_URL=https://127.0.0.1:$API_PORT
ETCD_PORT=$ETCD_PORT
KUBECONFIG=$DIR/kubeconfig
EOF
  say "slot $SLOT: node $NODE_NAME at $NODE_IP, pods in $POD_SUBNET; API server on 127.0.0.1:$API_PORT, etcd on 127.0.0.1:$ETCD_PORT"

  PKI="$DIR/pki"
  say "PKI: CA, API server serving cert, client certs, ServiceAccount signing key ($PKI)"
  mkdir -p "$PKI"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=zeroflow-test-cluster-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null
  cert apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:$SERVICE_IP,IP:$NODE_IP"
  cert admin "/O=system:masters/CN=zeroflow-test-admin" clientAuth
  cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  cert scheduler "/CN=system:kube-scheduler" clientAuth
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  cert node "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/sa.key" 2>/dev/null
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  kubeconfig "$DIR/kubeconfig" zeroflow-test-admin admin
  kubeconfig "$DIR/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  kubeconfig "$DIR/scheduler.kubeconfig" system:kube-scheduler scheduler
  kubeconfig "$DIR/node.kubeconfig" "system:node:$NODE_NAME" node

  start etcd etcd --name=zeroflow --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="zeroflow=http://127.0.0.1:$ETCD_PEER_PORT" --log-level=warn --logger=zap
  wait_for 60 "etcd to be healthy" "$DIR/etcd.log" curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --secure-port="$API_PORT" \
    --advertise-address="$NODE_IP" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --authorization-mode=Node,RBAC \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --allow-privileged=true \
    --profiling=false
  wait_for 120 "the API server to be ready" "$DIR/kube-apiserver.log" \
    curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$API_PORT/readyz"
  say "API server ready at https://127.0.0.1:$API_PORT"

  # The Node authorizer lets a node read Services but not EndpointSlices, which its NodePorts
  # (kube-proxy's job) need: kube-proxy's own role, bound to the nodes.
  wait_for 30 "RBAC for the node agent" "$DIR/kube-apiserver.log" \
    "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" create clusterrolebinding zeroflow-test-node-proxier \
    --clusterrole=system:node-proxier --group=system:nodes

  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$DIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --controllers='*,-cloud-node-lifecycle-controller,-node-route-controller,-service-lb-controller' \
    --profiling=false
  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig="$DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig="$DIR/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
    --leader-elect=false \
    --profiling=false
  # The agent's PATH is this script's: containers' programs are looked up there.
  start node "$agent" --kubeconfig "$DIR/node.kubeconfig" --node-name "$NODE_NAME" \
    --node-ip "$NODE_IP" --pod-subnet "$POD_SUBNET" --root-dir "$DIR/node"

  wait_for 120 "node $NODE_NAME to be Ready and schedulable" "$DIR/node.log" node_ready
  say "node $NODE_NAME Ready"
  wait_for 120 "the default ServiceAccount in namespace default" "$DIR/kube-controller-manager.log" \
    "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" get serviceaccount default -n default
  for c in "${COMPONENTS[@]}"; do
    alive "$(cat "$DIR/pids/$c.pid")" || die "$c exited (log: $DIR/$c.log)"
  done
  say "test cluster up: KUBECONFIG=$DIR/kubeconfig (NodePorts on $NODE_IP; stop with: bash scripts/test-cluster.sh down $DIR)"
}

case "$CMD" in
up) up ;;
down) down ;;
*) usage ;;
esac

#!/usr/bin/env bash
# A real Kubernetes control plane (etcd + kube-apiserver) on loopback, for the
# operator's tests and the local fleet. No kubelet, scheduler or
# controller-manager: objects, CRDs, CEL validation, RBAC and Leases work; Pods
# never run.
#
#   scripts/control-plane.sh build        build (or reuse) the pinned binaries
#   scripts/control-plane.sh start DIR    start a fresh control plane in DIR
#   scripts/control-plane.sh stop DIR     stop it (idempotent)
#
# build: kube-apiserver and etcd are compiled from their official Go modules
# through the Go module proxy (the only network access needed), each in a
# throwaway wrapper module, into $POTLUCK_BIN_CACHE (default
# ~/.cache/potluck/bin). A binary that already reports the pinned version is
# kept. A cold build takes 5-7 min on 2 cores, a few GB of RAM and ~3 GB of Go caches
# (under $HOME, Go's defaults).
#
# start: data, certificates, keys, logs (DIR/*.log) and pids (DIR/*.pid) live
# in DIR; DIR/kubeconfig holds an admin token (group system:masters) and the
# API server's CA. On success the last line on stdout is KUBECONFIG=DIR/kubeconfig.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Pinned releases. etcd 3.5.21 is the one envtest pairs with Kubernetes 1.33.
KUBE_VERSION="v1.33.13"
ETCD_VERSION="v3.5.21"

BIN_DIR="${POTLUCK_BIN_CACHE:-$POTLUCK_CACHE/bin}"
KUBE_APISERVER="$BIN_DIR/kube-apiserver"
ETCD="$BIN_DIR/etcd"
READY_TIMEOUT=60 # seconds, from launch to /readyz ok
STOP_TIMEOUT=10  # seconds between SIGTERM and SIGKILL

# Progress goes to stderr so that stdout carries only results.
say() { printf '==> %s\n' "$*" >&2; }

usage() {
    cat >&2 <<EOF
usage: $0 build | start DIR | stop DIR

  build       build kube-apiserver $KUBE_VERSION and etcd $ETCD_VERSION into
              $BIN_DIR (set POTLUCK_BIN_CACHE to change), unless present
  start DIR   start etcd + kube-apiserver on free loopback ports, state in DIR;
              prints KUBECONFIG=DIR/kubeconfig when /readyz is ok
  stop DIR    stop what 'start DIR' started (SIGTERM, SIGKILL after ${STOP_TIMEOUT}s)
EOF
    exit 2
}

# now_ms: wall clock in milliseconds.
now_ms() {
    local us="${EPOCHREALTIME/[.,]/}"
    echo "$((us / 1000))"
}

# since START_MS: time elapsed since START_MS, as "850ms", "1.3s" or "4m32s".
since() {
    local ms=$(($(now_ms) - $1))
    if [ "$ms" -lt 1000 ]; then
        printf '%dms' "$ms"
    elif [ "$ms" -lt 60000 ]; then
        printf '%d.%ds' "$((ms / 1000))" "$((ms % 1000 / 100))"
    else
        printf '%dm%02ds' "$((ms / 60000))" "$((ms % 60000 / 1000))"
    fi
}

# --- build -------------------------------------------------------------------

find_go() {
    if command -v go >/dev/null 2>&1; then
        GO="$(command -v go)"
    elif [ -x /usr/local/go/bin/go ]; then
        GO=/usr/local/go/bin/go
    else
        die "Go not found on PATH or at /usr/local/go/bin/go; install Go >= 1.24 (https://go.dev/dl) and put it on PATH"
    fi
}

# has_version BINARY EXPECTED: BINARY exists and its --version output mentions
# EXPECTED (e.g. "Kubernetes v1.33.13", "etcd Version: 3.5.21").
has_version() {
    [ -x "$1" ] && "$1" --version 2>/dev/null | grep -qF "$2"
}

# new_wrapper NAME: an empty Go module in a fresh temp dir, removed when the
# (sub)shell exits; cd's into it.
new_wrapper() {
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/potluck-$1-build.XXXXXX")"
    trap 'cd / && rm -rf "$WORK"' EXIT
    cd "$WORK"
    "$GO" mod init "local/$1" >/dev/null 2>&1
}

build_kube_apiserver() {
    local want="Kubernetes $KUBE_VERSION"
    if has_version "$KUBE_APISERVER" "$want"; then
        say "kube-apiserver $KUBE_VERSION already built: $KUBE_APISERVER"
        return
    fi
    say "building kube-apiserver $KUBE_VERSION (cold: 5-7 min on 2 cores, a few GB of RAM)"
    local start
    start="$(now_ms)"
    new_wrapper kube-apiserver

    # k8s.io/kubernetes requires its staging modules (k8s.io/api, ...) at
    # v0.0.0 and points them at ./staging with replace lines, which a
    # dependent module does not inherit. Replace each with its published tag.
    local json gomod info staging_tag
    json="$("$GO" mod download -json "k8s.io/kubernetes@$KUBE_VERSION")" \
        || die "could not download k8s.io/kubernetes@$KUBE_VERSION through the Go module proxy ($("$GO" env GOPROXY)); check network access to it"
    gomod="$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")"
    info="$(sed -n 's/^[[:space:]]*"Info": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")"
    [ -f "$gomod" ] || die "go mod download gave no go.mod for k8s.io/kubernetes@$KUBE_VERSION"
    staging_tag="v0.${KUBE_VERSION#v1.}"

    local -a staging edits
    mapfile -t staging < <(awk '
        /^require[[:space:]]*\(/ { inreq = 1; next }
        inreq && /^\)/           { inreq = 0; next }
        inreq && $1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }
        /^require[[:space:]]+k8s\.io\// && $3 == "v0.0.0" { print $2 }
    ' "$gomod")
    [ "${#staging[@]}" -gt 0 ] || die "found no k8s.io/* v0.0.0 requirements in $gomod; has the layout of k8s.io/kubernetes changed?"
    edits=()
    local m
    for m in "${staging[@]}"; do
        edits+=("-replace=$m=$m@$staging_tag")
    done
    # Same language version and GODEBUG defaults as the upstream build.
    local gover
    gover="$(awk '$1 == "go" { print $2; exit }' "$gomod")"
    [ -n "$gover" ] && edits+=("-go=$gover")
    while read -r kv; do
        edits+=("-godebug=$kv")
    done < <(awk '$1 == "godebug" && NF == 2 { print $2 }' "$gomod")
    "$GO" mod edit "${edits[@]}"
    say "replaced ${#staging[@]} staging modules with $staging_tag"

    "$GO" get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION"

    # What hack/lib/version.sh sets, so that /version reports the release.
    local minor build_date="" ldflags="-s -w" pkg
    minor="${KUBE_VERSION#v1.}"
    minor="${minor%%.*}"
    if [ -f "$info" ]; then
        build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info")"
    fi
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        [ -n "$build_date" ] && ldflags+=" -X $pkg.buildDate=$build_date"
    done
    CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ldflags" \
        -o "$WORK/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    has_version "$WORK/kube-apiserver" "$want" \
        || die "built kube-apiserver does not report '$want': $("$WORK/kube-apiserver" --version 2>&1 || true)"
    mkdir -p "$BIN_DIR"
    mv -f "$WORK/kube-apiserver" "$KUBE_APISERVER"
    say "built kube-apiserver $KUBE_VERSION in $(since "$start"): $KUBE_APISERVER ($(du -h "$KUBE_APISERVER" | cut -f1))"
}

build_etcd() {
    local want="etcd Version: ${ETCD_VERSION#v}"
    if has_version "$ETCD" "$want"; then
        say "etcd $ETCD_VERSION already built: $ETCD"
        return
    fi
    say "building etcd $ETCD_VERSION"
    local start
    start="$(now_ms)"
    new_wrapper etcd
    # go install refuses go.etcd.io/etcd/server/v3 (its go.mod has replace
    # lines); its published requirements are enough for a wrapper module.
    "$GO" get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
        || die "could not fetch go.etcd.io/etcd/server/v3@$ETCD_VERSION through the Go module proxy ($("$GO" env GOPROXY)); check network access to it"
    CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" \
        -o "$WORK/etcd" go.etcd.io/etcd/server/v3
    has_version "$WORK/etcd" "$want" \
        || die "built etcd does not report '$want': $("$WORK/etcd" --version 2>&1 || true)"
    mkdir -p "$BIN_DIR"
    mv -f "$WORK/etcd" "$ETCD"
    say "built etcd $ETCD_VERSION in $(since "$start"): $ETCD ($(du -h "$ETCD" | cut -f1))"
}

cmd_build() {
    find_go
    # -mod=mod: let go build record any go.sum lines 'go get' left out.
    export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
    say "using $("$GO" version) at $GO; GOPROXY=$("$GO" env GOPROXY)"
    local start
    start="$(now_ms)"
    # Subshells: each build cd's into its own wrapper module and removes it.
    (build_etcd)
    (build_kube_apiserver)
    say "control plane binaries ready in $(since "$start"): $ETCD, $KUBE_APISERVER"
}

# --- start / stop ------------------------------------------------------------

# alive PID: the process exists and is not a zombie (PID 1 in a container may
# never reap what it inherits).
alive() {
    local stat state
    kill -0 "$1" 2>/dev/null || return 1
    [ -r /proc/self/stat ] || return 0 # no procfs: trust kill -0
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1 # gone meanwhile
    state="${stat##*) }"
    [ "${state%% *}" != Z ]
}

# pid_of DIR NAME: the pid recorded in DIR/NAME.pid if that process is still
# NAME (guards against pid reuse), else nothing.
pid_of() {
    local file="$1/$2.pid" pid
    [ -f "$file" ] || return 0
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    alive "$pid" || return 0
    if [ -r "/proc/$pid/cmdline" ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$2"; then
        return 0
    fi
    echo "$pid"
}

# stop_one DIR NAME: SIGTERM, wait, SIGKILL; removes DIR/NAME.pid.
stop_one() {
    local dir="$1" name="$2" pid waited=0
    pid="$(pid_of "$dir" "$name")"
    if [ -z "$pid" ]; then
        rm -f "$dir/$name.pid"
        return
    fi
    kill -TERM "$pid" 2>/dev/null || true
    while alive "$pid" && [ "$waited" -lt $((STOP_TIMEOUT * 10)) ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    if alive "$pid"; then
        say "$name (pid $pid) still running ${STOP_TIMEOUT}s after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        waited=0
        while alive "$pid" && [ "$waited" -lt 50 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
    fi
    alive "$pid" && die "$name (pid $pid) survived SIGKILL"
    rm -f "$dir/$name.pid"
    say "stopped $name (pid $pid)"
}

cmd_stop() {
    local dir="$1"
    if [ ! -d "$dir" ]; then
        say "nothing to stop: $dir does not exist"
        return
    fi
    # The API server first, so it does not spend its last seconds retrying etcd.
    stop_one "$dir" kube-apiserver
    stop_one "$dir" etcd
}

# Three distinct free TCP ports on 127.0.0.1, all held open while chosen.
free_ports() {
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to pick free ports; run scripts/setup.sh"
    python3 - <<'EOF'
import socket
socks = []
for _ in range(3):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

# The CA certificate(s) in a PEM bundle: the API server's self-signed
# apiserver.crt holds its serving certificate followed by the CA that signed it.
ca_pem() {
    local bundle="$1" tmp block out=""
    tmp="$(mktemp -d)"
    awk -v dir="$tmp" '
        /-----BEGIN CERTIFICATE-----/ { n++ }
        n { print > (dir "/" n ".pem") }
    ' "$bundle"
    for block in "$tmp"/*.pem; do
        [ -f "$block" ] || continue
        if openssl x509 -in "$block" -noout -ext basicConstraints 2>/dev/null | grep -q 'CA:TRUE'; then
            out+="$(cat "$block")"$'\n'
        fi
    done
    rm -rf "$tmp"
    if [ -n "$out" ]; then
        printf '%s' "$out"
    else
        cat "$bundle"
    fi
}

STARTED_DIR=""
on_start_failure() {
    local rc=$?
    [ "$rc" -ne 0 ] || return 0
    [ -n "$STARTED_DIR" ] || return 0
    local log
    for log in etcd kube-apiserver; do
        if [ -s "$STARTED_DIR/$log.log" ]; then
            printf '\n---- last 30 lines of %s/%s.log ----\n' "$STARTED_DIR" "$log" >&2
            tail -n 30 "$STARTED_DIR/$log.log" >&2
        fi
    done
    printf '\n' >&2
    say "start failed; stopping what was started (logs stay in $STARTED_DIR)"
    cmd_stop "$STARTED_DIR" || true
    exit "$rc"
}

cmd_start() {
    local dir="$1" bin
    for bin in "$ETCD" "$KUBE_APISERVER"; do
        [ -x "$bin" ] || die "$bin not found; run scripts/control-plane.sh build first (or set POTLUCK_BIN_CACHE to where it is)"
    done
    command -v openssl >/dev/null 2>&1 || die "openssl not found; install it (apt-get install openssl)"
    command -v curl >/dev/null 2>&1 || die "curl not found; install it (apt-get install curl)"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    local name
    for name in etcd kube-apiserver; do
        [ -z "$(pid_of "$dir" "$name")" ] \
            || die "$name is already running for $dir; run scripts/control-plane.sh stop $dir first"
    done
    for name in etcd certs tokens.csv kubeconfig; do
        [ ! -e "$dir/$name" ] \
            || die "$dir already holds a control plane ($dir/$name exists); start needs a fresh directory: remove $dir or pick another"
    done

    local started etcd_port="" peer_port="" api_port="" token
    started="$(now_ms)"
    read -r etcd_port peer_port api_port < <(free_ports) || true
    [ -n "$api_port" ] || die "could not pick free loopback ports"
    STARTED_DIR="$dir"
    trap on_start_failure EXIT

    mkdir -p "$dir/certs"
    chmod 700 "$dir/certs"
    openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
    openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
    token="$(openssl rand -hex 24)"
    (umask 077 && printf '%s,admin,admin,"system:masters"\n' "$token" >"$dir/tokens.csv")

    say "starting etcd on 127.0.0.1:$etcd_port"
    "$ETCD" \
        --name=default \
        --data-dir="$dir/etcd" \
        --listen-client-urls="http://127.0.0.1:$etcd_port" \
        --advertise-client-urls="http://127.0.0.1:$etcd_port" \
        --listen-peer-urls="http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
        --initial-cluster="default=http://127.0.0.1:$peer_port" \
        --unsafe-no-fsync \
        </dev/null >"$dir/etcd.log" 2>&1 &
    echo $! >"$dir/etcd.pid"
    local etcd_pid=$!

    local deadline=$((SECONDS + READY_TIMEOUT))
    until curl -fsS --max-time 2 "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q '"health":"true"'; do
        alive "$etcd_pid" || die "etcd exited during start-up; see $dir/etcd.log"
        [ "$SECONDS" -lt "$deadline" ] || die "etcd not healthy within ${READY_TIMEOUT}s; see $dir/etcd.log"
        sleep 0.1
    done

    say "starting kube-apiserver on https://127.0.0.1:$api_port"
    "$KUBE_APISERVER" \
        --etcd-servers="http://127.0.0.1:$etcd_port" \
        --bind-address=127.0.0.1 \
        --advertise-address=127.0.0.1 \
        --secure-port="$api_port" \
        --cert-dir="$dir/certs" \
        --service-cluster-ip-range=10.0.0.0/24 \
        --service-account-issuer="https://127.0.0.1:$api_port" \
        --service-account-key-file="$dir/sa.pub" \
        --service-account-signing-key-file="$dir/sa.key" \
        --token-auth-file="$dir/tokens.csv" \
        --authorization-mode=RBAC \
        --disable-admission-plugins=ServiceAccount \
        --allow-privileged=true \
        --endpoint-reconciler-type=none \
        </dev/null >"$dir/kube-apiserver.log" 2>&1 &
    echo $! >"$dir/kube-apiserver.pid"
    local api_pid=$!

    # The API server writes its self-signed certificate (and CA) into
    # --cert-dir before serving; /readyz is then checked against that CA.
    local crt="$dir/certs/apiserver.crt" ready=""
    until [ "$ready" = ok ]; do
        alive "$api_pid" || die "kube-apiserver exited during start-up; see $dir/kube-apiserver.log"
        alive "$etcd_pid" || die "etcd exited during start-up; see $dir/etcd.log"
        [ "$SECONDS" -lt "$deadline" ] \
            || die "kube-apiserver not ready (/readyz) within ${READY_TIMEOUT}s; see $dir/kube-apiserver.log"
        sleep 0.1
        [ -s "$crt" ] || continue
        ready="$(curl -sS --max-time 2 --cacert "$crt" -H "Authorization: Bearer $token" \
            "https://127.0.0.1:$api_port/readyz" 2>/dev/null || true)"
    done

    (
        umask 077
        cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: potluck-local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(ca_pem "$crt" | base64 -w0)
users:
- name: admin
  user:
    token: $token
contexts:
- name: potluck-local
  context:
    cluster: potluck-local
    user: admin
current-context: potluck-local
EOF
    )
    trap - EXIT
    say "control plane ready in $(since "$started"): etcd pid $etcd_pid, kube-apiserver pid $api_pid; logs in $dir/*.log"
    say "stop it with: scripts/control-plane.sh stop $dir"
    echo "KUBECONFIG=$dir/kubeconfig"
}

# --- main --------------------------------------------------------------------

[ $# -ge 1 ] || usage
case "$1" in
build)
    [ $# -eq 1 ] || usage
    cmd_build
    ;;
start)
    [ $# -eq 2 ] || usage
    cmd_start "$2"
    ;;
stop)
    [ $# -eq 2 ] || usage
    cmd_stop "$2"
    ;;
-h | --help | help) usage ;;
*)
    printf 'error: unknown command %q\n' "$1" >&2
    usage
    ;;
esac

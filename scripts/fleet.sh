#!/usr/bin/env bash
# Build Potluck and run the whole system on this machine, in the foreground
# (Ctrl-C stops it): a real etcd + kube-apiserver on loopback, the CRDs, the
# operator, 6 agents in Kubernetes mode and a 4+2 StoragePool "default".
#
#   bash scripts/fleet.sh                      # data in ./potluck-data
#   bash scripts/fleet.sh --agents 7 --base-port 0 --dir /tmp/fleet
#
# Arguments go to `potluck dev up`; --dir defaults to potluck-data/ at the
# repository root (gitignored). Agent data is kept across runs; the control
# plane (DIR/control-plane) is fresh each time, and the operator picks up the
# agents' newest map epoch from them, so epochs keep rising.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bash "$POTLUCK_ROOT/scripts/setup.sh"

log "cargo build --release --workspace --bins (target: $CARGO_TARGET_DIR)"
(cd "$POTLUCK_ROOT" && cargo build --release --workspace --bins)

dir="$POTLUCK_ROOT/potluck-data"
have_dir=0
prev=""
for arg in "$@"; do
    case "$arg" in
        --dir=*) dir="${arg#--dir=}"; have_dir=1 ;;
    esac
    if [ "$prev" = "--dir" ]; then
        dir="$arg"
        have_dir=1
    fi
    prev="$arg"
done
if [ "$have_dir" -eq 0 ]; then
    set -- --dir "$dir" "$@"
fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

cp_dir="$dir/control-plane"
bash "$POTLUCK_ROOT/scripts/control-plane.sh" stop "$cp_dir" >/dev/null 2>&1 || true
rm -rf "$cp_dir"
log "starting etcd + kube-apiserver in $cp_dir"
bash "$POTLUCK_ROOT/scripts/control-plane.sh" start "$cp_dir" >/dev/null
trap 'bash "$POTLUCK_ROOT/scripts/control-plane.sh" stop "$cp_dir" >/dev/null 2>&1 || true' EXIT

log "potluck dev up --kubeconfig $cp_dir/kubeconfig $*"
"$CARGO_TARGET_DIR/release/potluck" dev up --kubeconfig "$cp_dir/kubeconfig" "$@"

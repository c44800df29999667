#!/usr/bin/env bash
# Build Potluck and run a local fleet in the foreground (Ctrl-C stops it).
#
#   bash scripts/fleet.sh                      # 6 agents, data in ./potluck-data
#   bash scripts/fleet.sh --agents 6 --base-port 0 --dir /tmp/fleet
#
# Arguments are passed to `potluck dev up`; --dir defaults to potluck-data/ at
# the repository root (gitignored).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bash "$POTLUCK_ROOT/scripts/setup.sh"

log "cargo build --release --workspace --bins (target: $CARGO_TARGET_DIR)"
(cd "$POTLUCK_ROOT" && cargo build --release --workspace --bins)

have_dir=0
for arg in "$@"; do
    case "$arg" in
        --dir | --dir=*) have_dir=1 ;;
    esac
done
if [ "$have_dir" -eq 0 ]; then
    set -- --dir "$POTLUCK_ROOT/potluck-data" "$@"
fi

log "potluck dev up $*"
exec "$CARGO_TARGET_DIR/release/potluck" dev up "$@"

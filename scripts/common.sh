# shellcheck shell=bash disable=SC2034
# Shared environment for scripts/*.sh. Source it; do not run it.
#
# Everything built or installed lives outside the clone, under
# $HOME/.cache/potluck, so a fresh checkout reuses earlier builds.

POTLUCK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POTLUCK_CACHE="${POTLUCK_CACHE:-$HOME/.cache/potluck}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$POTLUCK_CACHE/target}"
POTLUCK_VENV="${POTLUCK_VENV:-$POTLUCK_CACHE/venv}"

# rustup installs into ~/.cargo/bin; a fresh shell may not have it on PATH yet.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

log() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

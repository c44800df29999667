#!/usr/bin/env bash
# Install what a fresh Debian/Ubuntu machine needs to build and test Potluck.
# Idempotent: each piece is checked first and only installed when missing.
#
#   apt:    libclang-dev (RocksDB bindings), protobuf-compiler (tonic codegen), clang,
#           prometheus (promtool and the server for deploy/monitoring's tests)
#   rust:   stable toolchain via rustup, with clippy and rustfmt
#   python: venv at $HOME/.cache/potluck/venv with grpcio, grpcio-tools, pytest
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# --- apt ---------------------------------------------------------------------

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found; install these packages by hand: $*"
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get update -q
        apt_updated=1
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

deb_installed() {
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
}

missing=()
for pkg in libclang-dev clang protobuf-compiler prometheus; do
    deb_installed "$pkg" || missing+=("$pkg")
done
# Some images ship protoc without the Debian package; that is good enough.
if [ "${#missing[@]}" -gt 0 ] && command -v protoc >/dev/null 2>&1; then
    kept=()
    for pkg in "${missing[@]}"; do
        [ "$pkg" = protobuf-compiler ] || kept+=("$pkg")
    done
    missing=("${kept[@]+"${kept[@]}"}")
fi
# python3 with venv support (Debian splits ensurepip into python3-venv).
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
# rustup's installer needs curl and CA certificates.
if ! command -v cargo >/dev/null 2>&1 && ! command -v curl >/dev/null 2>&1; then
    missing+=(curl ca-certificates)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
else
    log "apt packages present (libclang-dev, clang, protoc, prometheus)"
fi

# --- rust --------------------------------------------------------------------

if ! command -v cargo >/dev/null 2>&1; then
    log "installing rustup with the stable toolchain (clippy, rustfmt)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --no-modify-path --profile minimal \
            --default-toolchain stable --component clippy --component rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
fi

if command -v rustup >/dev/null 2>&1; then
    if ! rustup toolchain list | grep -q .; then
        log "rustup toolchain install stable"
        rustup toolchain install stable --profile minimal
        rustup default stable
    fi
    installed="$(rustup component list --installed 2>/dev/null || true)"
    for comp in clippy rustfmt; do
        if ! grep -q "^$comp" <<<"$installed"; then
            log "rustup component add $comp"
            rustup component add "$comp"
        fi
    done
else
    # A distro cargo without rustup: we cannot add components, only check.
    cargo clippy --version >/dev/null 2>&1 || die "cargo clippy missing and rustup not installed"
    cargo fmt --version >/dev/null 2>&1 || die "cargo fmt missing and rustup not installed"
fi
log "rust: $(rustc --version)"

# --- python ------------------------------------------------------------------

py="$POTLUCK_VENV/bin/python"
if [ ! -x "$py" ]; then
    log "creating python venv at $POTLUCK_VENV"
    mkdir -p "$(dirname "$POTLUCK_VENV")"
    python3 -m venv "$POTLUCK_VENV"
fi
if ! "$py" -c 'import grpc, grpc_tools.protoc, pytest' >/dev/null 2>&1; then
    log "pip install grpcio grpcio-tools pytest into $POTLUCK_VENV"
    "$py" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$py" -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools pytest
fi
log "python: $("$py" -c 'import grpc, pytest, sys; print(sys.version.split()[0], "grpcio", grpc.__version__, "pytest", pytest.__version__)')"

# --- kubernetes control plane (etcd + kube-apiserver, cached) -----------------

bash "$(dirname "$0")/control-plane.sh" build

log "setup complete"

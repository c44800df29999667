#!/usr/bin/env bash
# The project's test command: formatting, lints, the Rust build and tests
# (unit + e2e against real agent processes), then a Python gRPC client
# against a real 6-agent fleet. Exits non-zero on the first failing step.
#
#   bash scripts/test.sh
#
# Builds land in $CARGO_TARGET_DIR (default ~/.cache/potluck/target), all in
# the release profile so clippy, build and test share one set of artifacts.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$POTLUCK_ROOT"

timings=()
total_start=$SECONDS

summary() {
    local line
    printf '\n==== summary ====\n'
    for line in "${timings[@]+"${timings[@]}"}"; do
        printf '  %s\n' "$line"
    done
    printf '  total %ds\n' "$((SECONDS - total_start))"
}

# step NAME CMD...: print a header, run CMD in a subshell with errexit on,
# time it, and stop the whole run if it fails.
step() {
    local name="$1"
    shift
    printf '\n==== %s ====\n' "$name"
    printf '$ %s\n' "$*"
    local start=$SECONDS rc=0
    set +e
    (set -e; "$@")
    rc=$?
    set -e
    local took=$((SECONDS - start))
    if [ "$rc" -ne 0 ]; then
        timings+=("FAIL $name (${took}s, exit $rc)")
        printf '==== FAILED: %s (exit %d after %ds) ====\n' "$name" "$rc" "$took"
        summary
        exit "$rc"
    fi
    timings+=("ok   $name (${took}s)")
    printf -- '---- ok: %s (%ds)\n' "$name" "$took"
}

gen_dir="$(mktemp -d "${TMPDIR:-/tmp}/potluck-pygen.XXXXXX")"
trap 'rm -rf "$gen_dir"' EXIT

# Python stubs from the proto contract, into a throwaway directory.
python_stubs() {
    "$POTLUCK_VENV/bin/python" -m grpc_tools.protoc -I proto \
        --python_out="$gen_dir" --grpc_python_out="$gen_dir" \
        proto/potluck/v1/potluck.proto
    # Regular packages, so `potluck.v1` cannot be shadowed or merged with
    # another `potluck` namespace on sys.path.
    touch "$gen_dir/potluck/__init__.py" "$gen_dir/potluck/v1/__init__.py"
    ls "$gen_dir/potluck/v1"
}

python_tests() {
    POTLUCK_BIN="$CARGO_TARGET_DIR/release/potluck" \
    POTLUCK_PROTO_GEN="$gen_dir" \
        "$POTLUCK_VENV/bin/python" -m pytest -q -p no:cacheprovider e2e/python
}

step "setup" bash scripts/setup.sh
step "cargo fmt" cargo fmt --all -- --check
step "promtool" bash deploy/monitoring/test-rules.sh
step "cargo clippy" cargo clippy --release --workspace --all-targets -- -D warnings
step "cargo build" cargo build --release --workspace --all-targets
step "cargo test" cargo test --release --workspace
step "fuzz" bash scripts/fuzz.sh
step "python stubs" python_stubs
step "python e2e" python_tests

summary
printf '\nall checks passed\n'

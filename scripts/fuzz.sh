#!/usr/bin/env bash
# Fuzzes every decoder of untrusted bytes (fuzz/fuzz_targets: shard keys, shard streams,
# manifests, cluster maps, client requests, share tokens) with libFuzzer for a bounded time each, and
# fails on the first crash, printing the input and how to replay it.
#
#   bash scripts/fuzz.sh                        # every target, 20 s each
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh manifest
#
# Installs a pinned cargo-fuzz and builds with nightly (sanitizers) into its own target
# directory under ~/.cache/potluck/fuzz: the sanitizer flags rebuild every dependency, so
# sharing the main target directory would only evict it. The corpus grows there too, so
# later runs start from what earlier ones found; fuzz/seeds/ (committed, tiny) holds the
# starting inputs and every crash ever found, replayed first as regressions.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$POTLUCK_ROOT"

CARGO_FUZZ_VERSION=0.13.1
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
FUZZ_CACHE="${POTLUCK_FUZZ_CACHE:-$POTLUCK_CACHE/fuzz}"
export PATH="$FUZZ_CACHE/tools/bin:$PATH"
export CARGO_TARGET_DIR="$FUZZ_CACHE/target"

if ! rustup toolchain list | grep -q '^nightly'; then
    log "installing the nightly toolchain (libFuzzer needs -Zsanitizer)"
    rustup toolchain install nightly --profile minimal
fi
if [ "$(cargo-fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $FUZZ_CACHE/tools"
    # Built with stable: its locked dependencies no longer build on current nightly. The
    # temporary build directory is cargo's own, not $CARGO_TARGET_DIR.
    env -u CARGO_TARGET_DIR cargo +stable install cargo-fuzz --locked \
        --version "$CARGO_FUZZ_VERSION" --root "$FUZZ_CACHE/tools"
fi

log "building the fuzz targets"
cargo +nightly fuzz build
triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin_dir="$CARGO_TARGET_DIR/$triple/release"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

failed=()
for t in "${targets[@]}"; do
    corpus="$FUZZ_CACHE/corpus/$t"
    artifacts="$FUZZ_CACHE/artifacts/$t"
    run_log="$FUZZ_CACHE/$t.log"
    mkdir -p "$corpus" "$artifacts" fuzz/seeds/"$t"
    log "fuzzing $t for ${FUZZ_SECONDS}s"
    if "$bin_dir/$t" "$corpus" "fuzz/seeds/$t" \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$run_log" 2>&1; then
        execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$run_log")"
        printf '    %s: %s runs, no crash\n' "$t" "${execs:-?}"
    else
        tail -n 40 "$run_log"
        printf '    %s: CRASH (log %s)\n' "$t" "$run_log"
        printf '    replay: %s <input from %s>\n' "$bin_dir/$t" "$artifacts"
        printf '    keep the input in fuzz/seeds/%s/ and as a unit test once fixed\n' "$t"
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    die "fuzz targets crashed: ${failed[*]}"
fi
log "no crashes in ${targets[*]}"

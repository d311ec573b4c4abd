#!/usr/bin/env bash
# Line coverage of mesh-core and mesh-net reached by the seeded simulations
# alone (no unit tests, no real-process tests): the madsim build of `sim`,
# with only the project's crates instrumented, run over a seed range of
# every scenario, then merged and reported per file.
#
#   bash sim/coverage/run.sh [SEEDS_PER_SCENARIO]      (default 20)
#
# Needs the llvm-tools component (`rustup component add llvm-tools`), whose
# llvm-profdata/llvm-cov match rustc's LLVM. Output: target/cov/summary.txt
# (per-file table), target/cov/sim.lcov, and the totals on stdout.
# Code under `cfg(not(madsim))` is not compiled into this build and so is
# neither counted nor reached; the note in BENCHMARKS.md lists what that is.
set -euo pipefail
cd "$(dirname "$0")/../.."
per_scenario="${1:-20}"
sysroot="$(rustc --print sysroot)"
tools="$sysroot/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin"
if [ ! -x "$tools/llvm-profdata" ]; then
    echo "llvm-tools missing: rustup component add llvm-tools" >&2
    exit 2
fi

export CARGO_TARGET_DIR=target/cov
RUSTC_WRAPPER="$PWD/sim/coverage/rustc-wrapper.sh" RUSTFLAGS="--cfg madsim" \
    cargo build --locked --release -p sim --bin sim
sim="$CARGO_TARGET_DIR/release/sim"

prof="$CARGO_TARGET_DIR/profraw"
rm -rf "$prof"
mkdir -p "$prof"
export LLVM_PROFILE_FILE="$PWD/$prof/%p-%m.profraw"
# (the usage text below is asked of the instrumented binary too)
scenarios=$({ "$sim" --help 2>&1 || true; } | sed -n 's/^scenarios: \[\(.*\)\]$/\1/p' | tr -d '",')
for scenario in $scenarios; do
    n="$per_scenario"
    # The slow scenarios run few seeds in cargo test too.
    case "$scenario" in scale | full_restart | leave_rejoin) n=$(( per_scenario < 5 ? per_scenario : 5 )) ;; esac
    "$sim" sweep --scenario "$scenario" --seeds "0..$n" --jobs 2 | grep '^SWEEP' || true
done
unset LLVM_PROFILE_FILE

"$tools/llvm-profdata" merge -sparse "$prof"/*.profraw -o "$CARGO_TARGET_DIR/sim.profdata"
only_ours=(--ignore-filename-regex '(/\.cargo/|/rustc/|/vendor/|/sim/|/target/)')
"$tools/llvm-cov" report "$sim" -instr-profile="$CARGO_TARGET_DIR/sim.profdata" \
    "${only_ours[@]}" >"$CARGO_TARGET_DIR/summary.txt"
"$tools/llvm-cov" export "$sim" -instr-profile="$CARGO_TARGET_DIR/sim.profdata" \
    -format=lcov "${only_ours[@]}" >"$CARGO_TARGET_DIR/sim.lcov"

# Totals per crate from the per-file table (columns: lines, missed lines).
awk -v root="$PWD/" '
    $1 ~ /^(mesh-core|mesh-net)\// || index($1, root) == 1 {
        f = $1; sub(root, "", f); split(f, p, "/"); c = p[1]
        lines[c] += $8; missed[c] += $9
    }
    END {
        for (c in lines)
            printf "%s: %d of %d lines reached by the simulations (%.1f%%)\n",
                c, lines[c] - missed[c], lines[c], 100 * (lines[c] - missed[c]) / lines[c]
    }' "$CARGO_TARGET_DIR/summary.txt" | sort
echo "per-file table: $CARGO_TARGET_DIR/summary.txt"

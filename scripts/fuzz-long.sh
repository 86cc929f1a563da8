#!/usr/bin/env bash
# The long fuzz run (not part of CI): the loader and every planner through CASES
# generated and mutated definitions (default one million), in a release build.
# Fails on a panic, an abort or a case over one second; a failing input is left in
# target/fuzz-failures/ (or, after an abort, target/fuzz-long/fuzz-case.toml).
#   scripts/fuzz-long.sh [CASES] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export FUZZ_CASES="${1:-1000000}"
export FUZZ_SEED="${2:-20261201}"
exec nice -n 10 cargo test --release -p microvm-runner --test fuzz_plans \
    fuzz_definitions_and_plans -- --nocapture

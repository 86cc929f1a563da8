#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): installs what the tests need on a
# Debian 12 host (as root), then formatting, clippy with warnings denied, and every test
# (unit, golden, CLI, and real boots of MicroVMs under qemu).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

bash scripts/setup-host.sh
bash scripts/fetch-test-kernels.sh
bash scripts/install-virtiofsd.sh
bash scripts/install-alioth.sh
export PATH="$repo/target/tools/bin:$PATH"
export MICROVM_TEST_KERNELS="${MICROVM_TEST_KERNELS:-$repo/target/test-kernels}"
# microvm's own guest kernel, which most end-to-end tests boot: built once per machine, in a
# store outside the checkout (tests/kernel.rs checks a second build finds it there).
if [ "$(id -u)" = 0 ]; then
  export MICROVM_KERNEL_STORE="${MICROVM_KERNEL_STORE:-/var/cache/microvm/test-kernel-store}"
else
  export MICROVM_KERNEL_STORE="${MICROVM_KERNEL_STORE:-$repo/target/kernel-store}"
fi
bash scripts/build-test-kernel.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast

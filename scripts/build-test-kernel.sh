#!/usr/bin/env bash
# Builds microvm's guest kernel once (`microvm kernel build`, from linux-source-6.1) for the
# end-to-end tests, and links it as $MICROVM_TEST_KERNELS/microvm, where the tests look.
#
# The kernel lands in a store outside the checkout, $MICROVM_KERNEL_STORE (default
# /var/cache/microvm/test-kernel-store as root, else target/kernel-store), with its object
# tree: the next run on the same machine, even from a fresh clone, finds it built (a
# config change rebuilds in seconds). The first build takes about 15 min on 2 cores.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

kernels=${MICROVM_TEST_KERNELS:-$repo/target/test-kernels}
if [ "$(id -u)" = 0 ]; then
  default_store=/var/cache/microvm/test-kernel-store
else
  default_store=$repo/target/kernel-store
fi
store=${MICROVM_KERNEL_STORE:-$default_store}
mkdir -p "$kernels" "$store"

cargo build --locked -q -p microvm-cli
start=$EPOCHREALTIME
echo "build-test-kernel: microvm kernel build --store $store (a first build takes minutes; later runs find it)" >&2
dir=$(nice -n 5 "$repo/target/debug/microvm" kernel build --store "$store")
ln -sfn "$dir" "$kernels/microvm"
awk -v a="$EPOCHREALTIME" -v b="$start" -v d="$dir" \
  'BEGIN { printf "build-test-kernel: %s (%.1f s)\n", d, a - b }' >&2

#!/usr/bin/env bash
# Installs alioth 0.12 (`cargo install alioth-cli`, from crates.io) under target/tools/bin
# unless an alioth is on PATH: the real-binary tests run every alioth plan through it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if command -v alioth >/dev/null 2>&1 || [ -x "$repo/target/tools/bin/alioth" ]; then
  exit 0
fi
echo "install-alioth: building alioth-cli 0.12.0 from crates.io (a few minutes)" >&2
cargo install --quiet --locked --root "$repo/target/tools" alioth-cli --version 0.12.0

#!/usr/bin/env bash
# Installs virtiofsd (Rust, from crates.io) under target/tools/bin unless one is on PATH.
# Debian 12 has no virtiofsd package, and trixie's needs a newer libc.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if command -v virtiofsd >/dev/null 2>&1 || [ -x "$repo/target/tools/bin/virtiofsd" ]; then
  exit 0
fi
echo "install-virtiofsd: building virtiofsd from crates.io (about a minute)" >&2
cargo install --quiet --locked --root "$repo/target/tools" virtiofsd

#!/usr/bin/env bash
# The main job: boots the example MicroVM (examples/hello) on this machine, installing
# what it needs first. Run as root on Debian 12. The guest prints a greeting, shows its
# mounts, counts its boots on a volume (hello-data.img, kept in target/demo), and powers off.
#
#   bash scripts/demo.sh                 # the Debian cloud kernel (fetched with apt)
#   bash scripts/demo.sh --fast-kernel   # microvm's own kernel, built once from linux-source-6.1
#                                        # (about 15 min on 2 cores; then ready in ~1 s under TCG)
set -euo pipefail
fast=""
case "${1:-}" in
  --fast-kernel) fast=1 ;;
  "") ;;
  *) echo "usage: scripts/demo.sh [--fast-kernel]" >&2; exit 2 ;;
esac
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

bash scripts/setup-host.sh
bash scripts/fetch-test-kernels.sh
if ! command -v cargo >/dev/null 2>&1; then
  echo "demo: installing Rust with rustup" >&2
  apt-get install -y -qq curl ca-certificates >/dev/null
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
  . "$HOME/.cargo/env"
fi
cargo build --release --locked -p microvm-cli
# virtiofsd for virtiofs shares (README's vm1 example); Debian 12 has no package.
bash scripts/install-virtiofsd.sh
# Put `microvm` (and virtiofsd, where it was built here) on PATH for what follows.
bindir=${MICROVM_BIN_DIR:-/usr/local/bin}
mkdir -p "$bindir"
ln -sfn "$repo/target/release/microvm" "$bindir/microvm"
if ! command -v virtiofsd >/dev/null 2>&1 && [ -x "$repo/target/tools/bin/virtiofsd" ]; then
  ln -sfn "$repo/target/tools/bin/virtiofsd" "$bindir/virtiofsd"
fi
echo "demo: microvm is installed as $bindir/microvm (a link to $repo/target/release/microvm)" >&2
bash examples/hello/make-root.sh
mkdir -p target/demo
cd target/demo
vm=$repo/examples/hello/vm.toml
if [ -n "$fast" ]; then
  # The same VM, its kernel swapped for the one `microvm kernel build` prints.
  kernel=$("$repo/target/release/microvm" kernel build)
  sed -e "s|^kernel = .*|kernel = \"$kernel\"|" \
      -e "s|^directory = \"root\"|directory = \"$repo/examples/hello/root\"|" "$vm" > hello-fast.toml
  vm=$PWD/hello-fast.toml
fi
exec "$repo/target/release/microvm" run "$vm"

#!/usr/bin/env bash
# Downloads the Debian guest kernels the end-to-end tests boot: the newest 6.12 "cloud"
# kernel (no 9p) and the full kernel of the same version (with 9p), as .deb files.
# Output: $MICROVM_TEST_KERNELS (default: target/test-kernels) holding cloud.deb, full.deb.
set -euo pipefail

dir=${MICROVM_TEST_KERNELS:-$(cd "$(dirname "$0")/.." && pwd)/target/test-kernels}
mkdir -p "$dir"
if [ -s "$dir/cloud.deb" ] && [ -s "$dir/full.deb" ]; then
  exit 0
fi
[ -n "$(apt-cache search --names-only 'linux-image-.*-cloud-amd64-unsigned' 2>/dev/null | head -1)" ] || apt-get update -qq
cloud=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$' | awk '{print $1}' | sort -V | tail -1)
if [ -z "$cloud" ]; then
  cloud=$(apt-cache search --names-only '^linux-image-.*-cloud-amd64-unsigned$' | awk '{print $1}' | sort -V | tail -1)
fi
[ -n "$cloud" ] || { echo "fetch-test-kernels: no cloud kernel package found" >&2; exit 1; }
full=${cloud/-cloud-amd64-unsigned/-amd64-unsigned}
cd "$dir"
chmod 0777 "$dir" 2>/dev/null || true # apt's sandbox user writes here
apt-get download -q "$cloud" "$full" >/dev/null
ln -sf "$(ls -1 "${cloud}"_*.deb | tail -1)" cloud.deb
ln -sf "$(ls -1 "${full}"_*.deb | tail -1)" full.deb
echo "fetch-test-kernels: $dir: $(readlink cloud.deb) $(readlink full.deb)" >&2

#!/usr/bin/env bash
# Installs what microvm's tests and its example need on a fresh Debian 12 host (run as root).
# Idempotent: a second run does nothing that is already done.
set -euo pipefail

log() { printf 'setup-host: %s\n' "$*" >&2; }

src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ] && ! grep -q 'bookworm-backports' "$src"; then
  log "adding bookworm-backports to $src"
  sed -i '0,/^Suites: bookworm bookworm-updates$/s//Suites: bookworm bookworm-updates bookworm-backports/' "$src"
fi

need=()
for pkg in qemu-system-x86 qemu-system-arm qemu-utils erofs-utils squashfs-tools busybox-static kmod e2fsprogs dosfstools \
           iproute2 cpio xz-utils zstd lz4 libseccomp-dev libcap-ng-dev pkg-config socat time \
           mmdebstrap nix-bin systemd-container jq curl bsdutils dnsmasq-base nftables \
           linux-source-6.1 build-essential patch bc bison flex libelf-dev libssl-dev \
           openssh-client openssh-server \
           pacemaker corosync crmsh resource-agents; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  # Package scripts start no daemons here (sshd, corosync, pacemaker): the tests run their
  # own, inside network namespaces. A policy-rc.d the host already has is left alone.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-system-x86 qemu-system-arm qemu-utils >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

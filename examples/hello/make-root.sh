#!/usr/bin/env bash
# Makes examples/hello/root: a static busybox with its applet links (needs busybox-static).
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)/root
[ -x "$root/bin/busybox" ] && exit 0
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,tmp,data}
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
ln -sf ../bin/busybox "$root/sbin/init"
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"

#!/bin/bash
# Boots the guest init for real under qemu (TCG, microvm machine) and checks what the
# host sees: console lines, the control channel, files written to a volume.
#
# usage: crates/init/tests/boot-smoke.sh KERNEL_ROOT [INIT_BINARY]
#   KERNEL_ROOT: an extracted Debian kernel package (dpkg -x linux-image-*-cloud-amd64-unsigned*.deb DIR)
#   INIT_BINARY: the static microvm-init (default: the one embedded by `cargo build -p microvm-image`)
# Needs: qemu-system-x86_64, busybox (static), mkfs.erofs, mkfs.ext4, debugfs, cpio, xz, socat.
# Not part of `cargo test`: the end-to-end suite lives elsewhere; this is the init's own check.
set -u
KROOT=$(realpath "${1:?usage: $0 KERNEL_ROOT [INIT_BINARY]}")
INIT=${2:-$(ls -t "$(dirname "$0")"/../../../target/*/build/microvm-image-*/out/microvm-init 2>/dev/null | head -1)}
[ -x "$INIT" ] || { echo "no init binary (build microvm-image first or pass one)"; exit 2; }
INIT=$(realpath "$INIT")
KERNEL=$(ls "$KROOT"/boot/vmlinuz-* | head -1)
KVER=${KERNEL##*/vmlinuz-}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT; cd "$W"
pass=0; fail=0
check() { if eval "$2"; then echo "ok: $1"; pass=$((pass+1)); else echo "FAILED: $1"; fail=$((fail+1)); tail -20 console.out; fi; }

mkdir mods
for m in drivers/virtio/virtio_mmio drivers/block/virtio_blk lib/libcrc32c fs/erofs/erofs \
         fs/overlayfs/overlay drivers/acpi/button; do
  xz -dc "$KROOT/lib/modules/$KVER/kernel/$m.ko.xz" > mods/"${m##*/}".ko
done
cp "$KROOT/lib/modules/$KVER/kernel/drivers/input/evdev.ko.xz" mods/   # exercises the kernel's own xz (finit_module MODULE_INIT_COMPRESSED_FILE)
MODS='"/microvm/modules/virtio_mmio.ko","/microvm/modules/virtio_blk.ko","/microvm/modules/libcrc32c.ko","/microvm/modules/erofs.ko","/microvm/modules/overlay.ko","/microvm/modules/button.ko","/microvm/modules/evdev.ko.xz"'

mkdir -p rootfs/{bin,sbin,etc,dev,proc,sys,run,tmp,out}
cp "$(command -v busybox)" rootfs/bin/
for a in sh echo cat grep hostname id poweroff sleep; do ln -s busybox rootfs/bin/$a; done
ln -s ../bin/busybox rootfs/sbin/init
touch rootfs/etc/machine-id
echo "::sysinit:/bin/sh -c 'echo ROOT-INIT host=\$(hostname); echo x > /on-overlay && echo overlay-write-ok'" > rootfs/etc/inittab
mkfs.erofs root.erofs rootfs >/dev/null

plan() { # $1 overlay json, $2 mounts json, $3 power button json, $4 exec json
  cat > plan.json <<JSON
{"version":1,"name":"smoke","hostname":"smokevm","modules":[$MODS],
 "root":{"disk":{"device":{"by":"path","value":"/dev/vda"},"fsType":"erofs","options":null},"diskMountPoint":"/","overlay":$1},
 "mounts":$2,"network":[],"machineId":"0123456789abcdef0123456789abcdef",
 "control":{"kind":"virtioPort","name":"microvm.ctl"},"powerButton":$3,"exec":$4,"env":[["FOO","bar"]]}
JSON
}

boot() { # $1: seconds after READY to press the power button (0: never)
  rm -rf ird ctl.sock qmp.sock ctl.out; mkdir -p ird/microvm/modules ird/dev ird/proc ird/sys ird/run ird/newroot
  cp "$INIT" ird/init; cp plan.json ird/microvm/; cp mods/* ird/microvm/modules/; mknod ird/dev/console c 5 1
  (cd ird && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) > initrd
  sz=$(stat -c %s initrd); head -c $(( (64 - sz % 4096 + 4096) % 4096 )) /dev/zero >> initrd  # trap C
  timeout 90 qemu-system-x86_64 -accel tcg -M microvm,pic=off,pit=off,acpi=on -m 256 -smp 1 \
    -nodefaults -no-user-config -no-reboot -display none -serial stdio -kernel "$KERNEL" -initrd initrd \
    -append "console=ttyS0 tsc_early_khz=2596000 reboot=t panic=-1 quiet" -qmp unix:qmp.sock,server,nowait \
    -drive id=store,format=raw,read-only=on,file=root.erofs,if=none -device virtio-blk-device,drive=store \
    -drive id=vdb,format=raw,file=vol.img,if=none -device virtio-blk-device,drive=vdb,serial=out \
    -device virtio-serial-device -chardev socket,id=ctl,path=ctl.sock,server=on,wait=off \
    -device virtserialport,chardev=ctl,name=microvm.ctl > console.out 2>&1 &
  local qemu=$!
  for _ in $(seq 100); do [ -S ctl.sock ] && break; sleep 0.05; done
  timeout 90 socat -u UNIX-CONNECT:ctl.sock - > ctl.out 2>/dev/null &
  if [ "$1" != 0 ]; then
    for _ in $(seq 300); do grep -q READY ctl.out && break; sleep 0.2; done; sleep "$1"
    echo '{"execute":"qmp_capabilities"}{"execute":"system_powerdown"}' | socat - UNIX-CONNECT:qmp.sock >/dev/null
  fi
  wait $qemu; rc=$?; sleep 0.3
}

truncate -s 32M vol.img && mkfs.ext4 -q -F -L output vol.img
CMD='{"kind":"command","argv":["/bin/sh","-c","echo hello from $(hostname) $FOO > /out/hello.txt; exit 3"],"cwd":"/tmp","user":null}'
plan null '[{"kind":"block","device":{"by":"label","value":"output"},"fsType":"ext4","target":"/out","readOnly":false}]' null "$CMD"
boot 0
check "command mode: qemu exits by itself" '[ $rc = 0 ]'
check "command mode: READY then EXIT 3 on the channel" 'grep -q "^READY [0-9.]* [0-9.]*$" ctl.out && grep -qx "EXIT 3" ctl.out'
check "command mode: file written to the volume found by label" \
  '[ "$(debugfs -R "cat /hello.txt" vol.img 2>/dev/null)" = "hello from smokevm bar" ]'
grep -o "init took.*" console.out

plan '{"kind":"volume","path":"/data"}' '[{"kind":"block","device":{"by":"serial","value":"out"},"fsType":"ext4","target":"/data","readOnly":false}]' \
  null '{"kind":"command","argv":["/bin/sh","-c","echo kept > /etc/kept"],"cwd":null,"user":null}'
boot 0
check "volume overlay: EXIT 0" 'grep -qx "EXIT 0" ctl.out'
check "volume overlay: upper layer on the volume" '[ "$(debugfs -R "cat /upper/etc/kept" vol.img 2>/dev/null)" = kept ]'

plan '{"kind":"tmpfs","size":"50%"}' '[]' '{"signalAfterHandover":12,"graceSeconds":2}' '{"kind":"init","path":"/sbin/init","args":[]}'
boot 2
check "hand-over: busybox init ran on a writable overlay root" 'grep -q "ROOT-INIT host=smokevm" console.out && grep -q overlay-write-ok console.out'
check "hand-over: power button powered the guest off" '[ $rc = 0 ] && grep -q "Power down" console.out'

plan null '[{"kind":"block","device":{"by":"label","value":"missing"},"fsType":"ext4","target":"/out","readOnly":false}]' null "$CMD"
boot 0
check "missing device: FAIL on the channel and poweroff" '[ $rc = 0 ] && grep -q "^FAIL find block device with label \"missing\"" ctl.out'

echo "$pass passed, $fail failed"
[ $fail = 0 ]

#!/usr/bin/env bash
# Benchmarks of microvm against baselines measured in the same run (median of RUNS runs).
# See docs/benchmarks.md for the method and the last results.
#
#   scripts/bench.sh [RUNS]          # default RUNS=5
#   MICROVM=/path/to/microvm scripts/bench.sh
#
# Needs: the hello example's inputs ($MICROVM_TEST_KERNELS or target/test-kernels: cloud.deb, busybox-static),
# qemu-system-x86_64, mkfs.erofs, mksquashfs, socat, cpio, gzip, zstd, /usr/bin/time (time). Prints
# a Markdown table.
# The microvm-kernel rows need that kernel: $MICROVM_KERNEL (a `microvm kernel build`
# directory), else microvm beside cloud.deb (scripts/build-test-kernel.sh makes it);
# the managed-VM rows (4 VMs by one `start`, supervisor RSS) need root.
set -euo pipefail

RUNS=${1:-${RUNS:-5}}
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${MICROVM:-$repo/target/release/microvm}
case $bin in /*) ;; */*) bin=$PWD/$bin ;; esac # the runs happen in other directories
kernels=${MICROVM_TEST_KERNELS:-$repo/target/test-kernels}
kernel_deb=$kernels/cloud.deb
mkernel=${MICROVM_KERNEL:-$kernels/microvm}
[ -f "$mkernel/vmlinux" ] || { echo "bench: the microvm kernel $mkernel is missing (scripts/build-test-kernel.sh)" >&2; exit 1; }
mkernel=$(readlink -f "$mkernel")

for tool in qemu-system-x86_64 mkfs.erofs mksquashfs socat cpio gzip zstd /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is not installed" >&2; exit 1; }
done
[ -f "$kernel_deb" ] || { echo "bench: $kernel_deb missing (scripts/fetch-test-kernels.sh)" >&2; exit 1; }
if [ -z "${MICROVM:-}" ]; then
  (cd "$repo" && cargo build --release -q -p microvm-cli)
fi
bash "$repo/examples/hello/make-root.sh"

T=$(mktemp -d /tmp/microvm-bench.XXXXXX)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$T"' EXIT
log() { echo "bench: $*" >&2; }

# --- helpers ------------------------------------------------------------------------------
now() { echo "$EPOCHREALTIME"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
ms() { awk -v a="$1" 'BEGIN { printf "%.0f", a * 1000 }'; }
declare -A S # S[key]="v1 v2 …": samples
add() { S[$1]="${S[$1]:-} $2"; }
med() { echo "${S[$1]:-}" | median; }

# A private copy of the hello example with absolute inputs, one file per disk type.
mkdir -p "$T/vm" "$T/work" "$T/wrap"
cp -a "$repo/examples/hello/root" "$T/vm/root"
for type in erofs squashfs; do
  sed -e "s|^kernel = .*|kernel = \"$kernel_deb\"|" \
      -e "s|^mem = .*|&\nstoreDiskType = \"$type\"|" \
      "$repo/examples/hello/vm.toml" > "$T/vm/$type.toml"
done
vm=$T/vm/erofs.toml
# The same VM with microvm's kernel: everything else (root, volume, command) is equal.
sed -e "s|^kernel = .*|kernel = \"$mkernel\"|" "$T/vm/erofs.toml" > "$T/vm/mk.toml"

# mkfs wrappers on PATH: record the argv microvm uses and how long the tool itself takes.
for tool in mkfs.erofs mksquashfs; do
  real=$(command -v "$tool")
  cat > "$T/wrap/$tool" <<EOF
#!/usr/bin/env bash
[ \$# -lt 3 ] && exec $real "\$@"
printf '%q ' "\$@" > $T/argv.$tool
s=\$EPOCHREALTIME; $real "\$@"; rc=\$?; e=\$EPOCHREALTIME
awk -v a=\$e -v b=\$s 'BEGIN { printf "%.3f\n", a - b }' > $T/secs.$tool
exit \$rc
EOF
  chmod +x "$T/wrap/$tool"
done
export PATH="$T/wrap:$PATH"

# --- 1. boot to ready: microvm run vs the runner's own qemu argv ---------------------------
# Both sides: host time from spawn until the console shows `microvm-init: ready`, and until
# the process exits (the guest command ended and qemu quit). The bare side also needs a
# reader on the control socket, as microvm has: the guest init blocks on its READY write
# until the host end is connected.
boot() { # KEY COMMAND... (runs in $T/work)
  local key=$1 t0 t1 ready="" started="" uready="" line rc
  shift
  t0=$(now)
  while IFS= read -r line; do
    line=${line%$'\r'}
    case $line in
      *"microvm-init "*": started at "*) started=${line##*started at }; started=${started%% s*} ;;
      *"microvm-init: ready at "*)
        ready=$(now); uready=${line##*ready at }; uready=${uready%% s*}; echo "$line" > "$T/ready-line.$key" ;;
    esac
  # The console (stdout) only: microvm's own "ready … after start" line goes to stderr,
  # and merged into the same pipe it can land inside the guest's line.
  done < <(cd "$T/work" && if "$@" 2>>"$T/stderr.$key" </dev/null; then echo rc=0 >"$T/rc"; else echo "rc=$?" >"$T/rc"; fi)
  t1=$(now)
  rc=$(cat "$T/rc")
  if [ "$rc" != rc=0 ] || [ -z "$ready" ]; then
    log "$key: $* failed ($rc, ready=${ready:-never}); its stderr ends with:"; tail -5 "$T/stderr.$key" >&2; return 1
  fi
  add "$key.ready" "$(sub "$ready" "$t0")"
  add "$key.wall" "$(sub "$t1" "$t0")"
  add "$key.gstart" "$started"
  add "$key.gready" "$uready"
  add "$key.ginit" "$(sub "$uready" "$started")"
}
bare() { # [RUNNER] the exact argv of its bin/microvm-run, with a control-socket reader
  local inv=${1:-$runner}/share/microvm/invocation.json
  mapfile -t argv < <(jq -r '.program, .args[]' "$inv")
  rm -f hello-ctl.sock
  socat -u UNIX-CONNECT:hello-ctl.sock,retry=1000,interval=0.01 OPEN:/dev/null &
  local reader=$!
  /usr/bin/time -f "%U %S" -o "$T/cpu.last" "${argv[@]}"
  local rc=$?
  wait "$reader" 2>/dev/null || true
  return $rc
}

log "building $vm"
runner=$("$bin" build "$vm" --store "$T/store")
"$bin" run "$vm" --store "$T/store" --workdir "$T/work" >/dev/null 2>&1 # warm-up; creates the volume
mkrunner=$("$bin" build "$T/vm/mk.toml" --store "$T/store")
"$bin" run "$T/vm/mk.toml" --store "$T/store" --workdir "$T/work" >/dev/null 2>&1 # warm-up
vmlinux=$(jq -r '.args as $a | $a[($a | index("-kernel")) + 1]' "$runner/share/microvm/invocation.json")
append=$(jq -r '.args as $a | $a[($a | index("-append")) + 1]' "$runner/share/microvm/invocation.json")
tsc=$(grep -o 'tsc_early_khz=[0-9]*' <<<"$append" || true)

# Floor: the qemu-tcg-notes baseline, a busybox initramfs that prints READY and powers off.
mkdir -p "$T/tiny/bin" "$T/tiny/proc" "$T/tiny/dev"
cp "$T/vm/root/bin/busybox" "$T/tiny/bin/busybox"
printf '#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n/bin/busybox echo "microvm-init 0: started at 0 s"\n/bin/busybox echo "microvm-init: ready at $(/bin/busybox cut -d" " -f1 /proc/uptime) s"\n/bin/busybox poweroff -f\n' > "$T/tiny/init"
chmod +x "$T/tiny/init"
(cd "$T/tiny" && find . | cpio -o -H newc --quiet | gzip -1) > "$T/tiny.cpio.gz"
sz=$(stat -c %s "$T/tiny.cpio.gz"); head -c $(( (64 - sz % 4096 + 4096) % 4096 )) /dev/zero >> "$T/tiny.cpio.gz"
tiny() {
  qemu-system-x86_64 -accel tcg -M microvm,pic=off,pit=off -m 256 -smp 1 -nodefaults -no-user-config \
    -display none -serial stdio -kernel "$vmlinux" -initrd "$T/tiny.cpio.gz" -append "console=ttyS0 quiet $tsc"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for i in $(seq "$RUNS"); do
  log "boot round $i/$RUNS (load $(cut -d' ' -f1 /proc/loadavg))"
  boot run "$bin" run "$vm" --store "$T/store" --workdir "$T/work"
  boot bare bare
  boot tiny tiny
  boot mk "$bin" run "$T/vm/mk.toml" --store "$T/store" --workdir "$T/work"
  boot mkbare bare "$mkrunner" && add mkbare.cpu "$(awk '{ print $1 + $2 }' "$T/cpu.last")"
done

# --- 2. no-op rebuild ---------------------------------------------------------------------
timeit() { # KEY COMMAND...
  local key=$1 t0; shift
  t0=$(now); "$@" >/dev/null 2>&1; add "$key" "$(sub "$(now)" "$t0")"
}
for i in $(seq "$RUNS"); do
  timeit noop "$bin" build "$vm" --store "$T/store"
  timeit check "$bin" check "$vm"
  timeit true true
done

# --- 3. root disk: microvm's build vs mkfs on the same tree with the same flags ------------
# first: a fresh store (kernel extraction, initrd, disk, runner); rebuild: only the root tree
# changed (a stamp file), so only the disk (and the runner) are rebuilt; mkfs: the tool
# inside microvm's build; direct: the same argv run by hand on the source tree.
for i in $(seq "$RUNS"); do
  for type in erofs squashfs; do
    tool=mkfs.erofs; [ $type = squashfs ] && tool=mksquashfs
    rm -rf "$T/fresh"
    timeit "$type.first" "$bin" build "$T/vm/$type.toml" --store "$T/fresh"
    echo "$i $type $RANDOM" > "$T/vm/root/etc/bench-stamp"
    timeit "$type.rebuild" "$bin" build "$T/vm/$type.toml" --store "$T/fresh"
    add "$type.inside" "$(cat "$T/secs.$tool")"
    eval "args=($(cat "$T/argv.$tool"))"
    if [ $type = erofs ]; then # mkfs.erofs FLAGS… OUT TREE
      direct=("${args[@]:0:${#args[@]}-2}" "$T/direct.img" "$T/vm/root")
    else # mksquashfs TREE OUT FLAGS…
      direct=("$T/vm/root" "$T/direct.img" "${args[@]:2}")
    fi
    rm -f "$T/direct.img"
    timeit "$type.direct" "$(command -v $tool)" "${direct[@]}"
    [ -s "$T/direct.img" ] || { log "direct $tool failed: ${direct[*]}"; exit 1; }
    echo "${direct[*]}" > "$T/direct-argv.$type"
  done
done

# --- 4. managed VMs: one `start` of four against one VM's start (root only) ---------------
# Four managed VMs of the microvm-kernel definition, with a command that keeps them up;
# `start A` alone vs `start A B C D` (returns when all four are READY), interleaved; the
# supervisors' RSS is read while the four run.
managed=""
if [ "$(id -u)" = 0 ]; then
  managed=1
  export MICROVM_SERVICE_MANAGER=own # microvm's own supervisor, whatever runs as PID 1
  st=$T/state
  chmod 755 "$T"
  mkdir -p "$st" && chmod 755 "$st"
  sed -e "s|^command = .*|command = [\"/bin/sleep\", \"600\"]|" -e '/^\[\[volumes\]\]/,$d' -e '/^hostName = /d' \
      -e "s|^directory = .*|directory = \"$T/vm/root\"|" "$T/vm/mk.toml" > "$T/vm/managed.toml"
  "$bin" --state-dir "$st" host install --unit-dir "$T/units" >/dev/null 2>&1
  for n in a b c d; do "$bin" --state-dir "$st" create "bench$n" --from "$T/vm/managed.toml" >/dev/null 2>&1; done
  for i in $(seq "$RUNS"); do
    log "start round $i/$RUNS (load $(cut -d' ' -f1 /proc/loadavg))"
    timeit start1 "$bin" --state-dir "$st" start bencha
    "$bin" --state-dir "$st" stop bencha --timeout 30 >/dev/null 2>&1
    sleep 1 # status times are in seconds: a start in the second of the last stop reads its record
    timeit start4 "$bin" --state-dir "$st" start bencha benchb benchc benchd
    rss=0; nsup=0
    for pid in $(pgrep -f -- "--state-dir $st supervise" || true); do
      kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
      rss=$((rss + kb)); nsup=$((nsup + 1))
    done
    [ "$nsup" -gt 0 ] && add rss "$(awk -v r="$rss" -v n="$nsup" 'BEGIN { printf "%.2f", r / n / 1024 }')"
    # The four idle (their command sleeps): the CPU their qemus use over 3 s, per VM,
    # once the boots' late work (the guest's clocksource switch at ~1.3 s) is over.
    qemus=$(pgrep -f -- '^microvm@bench[a-d] ' || true)
    ticks() { for pid in $qemus; do awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null; done | awk '{ s += $1 } END { print s + 0 }'; }
    if [ -n "$qemus" ]; then
      sleep 2; t0=$(ticks); sleep 3; t1=$(ticks)
      add idle "$(awk -v a="$t0" -v b="$t1" -v n="$(echo "$qemus" | wc -w)" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (b - a) / hz / 3 / n * 100 }')"
    fi
    "$bin" --state-dir "$st" stop bencha benchb benchc benchd --timeout 30 >/dev/null 2>&1
    sleep 1
    # The same four at most one per core at a time (`start`'s bound before), in waves.
    timeit start4c "$bin" --state-dir "$st" start --jobs "$(nproc)" bencha benchb benchc benchd
    "$bin" --state-dir "$st" stop bencha benchb benchc benchd --timeout 30 >/dev/null 2>&1
    sleep 1
  done
  for n in a b c d; do "$bin" --state-dir "$st" remove "bench$n" >/dev/null 2>&1 || true; done
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 4. sizes -----------------------------------------------------------------------------
initrd=$(jq -r '.args as $a | $a[($a | index("-initrd")) + 1]' "$runner/share/microvm/invocation.json")
cpio_of() { # the cpio archive of an initrd, whatever its compression (plain by default)
  case $(head -c 2 "$1" | od -An -tx1 | tr -d ' \n') in
    1f8b) gzip -dc "$1" ;;
    28b5) zstd -dc "$1" ;;
    *) cat "$1" ;;
  esac
}
mkdir -p "$T/ird" && (cd "$T/ird" && cpio_of "$initrd" | cpio -id --quiet 2>/dev/null || true)
initrd_size=$(stat -c %s "$initrd")
initrd_raw=$(cpio_of "$initrd" | wc -c)
initrd_gz=$(cpio_of "$initrd" | gzip -6 | wc -c)
init_size=$(stat -c %s "$T/ird/init")
modules_size=$(du -cb "$T/ird"/microvm/modules/*.ko | tail -1 | cut -f1)
nmod=$(ls "$T/ird"/microvm/modules/*.ko | wc -l)
mkinitrd=$(jq -r '.args as $a | $a[($a | index("-initrd")) + 1]' "$mkrunner/share/microvm/invocation.json")
mkinitrd_size=$(stat -c %s "$mkinitrd")
mkinitrd_gz=$(cpio_of "$mkinitrd" | gzip -6 | wc -c)
kvm_reason=$(jq -r 'if .usable then "" else .reason end' /run/microvm/kvm-probe.json 2>/dev/null || echo "no KVM verdict in /run/microvm/kvm-probe.json")

# --- report -------------------------------------------------------------------------------
row() { printf '| %s | %s | %s | %s |\n' "$@"; }
echo
echo "Date: $(date -u +%Y-%m-%dT%H:%MZ); $("$bin" --version) at $bin${MICROVM:+ (external binary)}; repo $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "Host: $(nproc) CPUs, $(uname -r); $(qemu-system-x86_64 --version | head -1); erofs-utils $(dpkg-query -W -f '${Version}' erofs-utils 2>/dev/null || echo '?'); $(mksquashfs -version 2>&1 | head -1)"
echo "Load average (1/5/15 min): $load_before before, $load_after after; $RUNS runs, medians"
echo
row "Measurement" "microvm" "baseline" "ratio"
row "---" "---" "---" "---"
row "boot: spawn → console \`ready\` (s)" "$(med run.ready)" "$(med bare.ready) (bare qemu, same argv)" "$(ratio "$(med run.ready)" "$(med bare.ready)")"
row "boot: whole run, spawn → exit (s)" "$(med run.wall)" "$(med bare.wall)" "$(ratio "$(med run.wall)" "$(med bare.wall)")"
row "floor: tiny busybox initramfs, spawn → READY / exit (s)" "–" "$(med tiny.ready) / $(med tiny.wall)" "$(ratio "$(med bare.ready)" "$(med tiny.ready)") (bare/tiny ready)"
row "guest uptime at init start / READY (s), microvm run" "$(med run.gstart) / $(med run.gready)" "$(med bare.gstart) / $(med bare.gready) (bare)" "–"
row "guest init: start → READY (s)" "$(med run.ginit)" "$(med bare.ginit) (bare)" "–"
row "no-op \`microvm build\` (ms)" "$(ms "$(med noop)")" "$(ms "$(med check)") (\`microvm check\`), $(ms "$(med true)") (\`true\`)" "$(ratio "$(med noop)" "$(med check)")"
for type in erofs squashfs; do
  row "$type: first build, fresh store (s)" "$(med $type.first)" "–" "–"
  row "$type: rebuild after a root change (s)" "$(med $type.rebuild)" "$(med noop) (no-op build)" "$(ratio "$(med $type.rebuild)" "$(med noop)")"
  row "$type: the mkfs step inside that rebuild (s)" "$(med $type.inside)" "$(med $type.direct) (direct, same flags)" "$(ratio "$(med $type.inside)" "$(med $type.direct)")"
done
row "microvm kernel: spawn → console \`ready\` (s)" "$(med mk.ready)" "$(med run.ready) (Debian cloud kernel, same VM)" "$(ratio "$(med mk.ready)" "$(med run.ready)")"
row "microvm kernel: whole run, spawn → exit (s)" "$(med mk.wall)" "$(med run.wall) (cloud kernel)" "$(ratio "$(med mk.wall)" "$(med run.wall)")"
row "microvm kernel: guest uptime at init start / READY (s)" "$(med mk.gstart) / $(med mk.gready)" "$(med run.gstart) / $(med run.gready) (cloud kernel)" "–"
row "microvm kernel: guest init start → READY (s)" "$(med mk.ginit)" "$(med run.ginit) (cloud kernel)" "$(ratio "$(med mk.ginit)" "$(med run.ginit)")"
row "microvm kernel: initrd size, as built" "$mkinitrd_size B" "$initrd_size B (cloud kernel, its modules)" "$(ratio "$mkinitrd_size" "$initrd_size")"
row "microvm kernel: initrd size, both cpios gzip -6" "$mkinitrd_gz B" "$initrd_gz B (cloud kernel, its modules)" "$(ratio "$mkinitrd_gz" "$initrd_gz")"
if [ -z "$kvm_reason" ]; then
  row "KVM, microvm kernel: spawn → \`ready\` (s)" "$(med mk.ready)" "$(med mkbare.ready) (bare qemu, same argv)" "$(ratio "$(med mk.ready)" "$(med mkbare.ready)")"
else
  row "KVM, microvm kernel: spawn → \`ready\`" "skipped" "KVM cannot run guests here: $kvm_reason" "–"
  row "TCG, microvm kernel: spawn → \`ready\` (s)" "$(med mk.ready)" "$(med mkbare.ready) (bare qemu, same argv)" "$(ratio "$(med mk.ready)" "$(med mkbare.ready)")"
fi
# What bounds starting many at once: CPU seconds per boot against the boot's own wall time.
row "microvm kernel: qemu CPU per whole run, user + sys (s)" "$(med mkbare.cpu)" "$(med mkbare.wall) (its wall time, bare qemu)" "$(ratio "$(med mkbare.cpu)" "$(med mkbare.wall)")"
if [ -n "$managed" ]; then
  row "4 managed VMs by one \`start\`, all READY (s)" "$(med start4)" "$(med start1) (\`start\` of one)" "$(ratio "$(med start4)" "$(med start1)")"
  row "4 managed VMs by \`start --jobs $(nproc)\` (one per core at a time), all READY (s)" "$(med start4c)" "$(med start1) (\`start\` of one)" "$(ratio "$(med start4c)" "$(med start1)")"
  row "supervisor RSS per VM (MiB)" "$(med rss)" "–" "–"
  row "idle VM after READY: its qemu's CPU (% of a core)" "$(med idle)" "–" "–"
else
  row "4 managed VMs by one \`start\` / supervisor RSS" "skipped" "needs root (managed VMs run as the microvm user)" "–"
fi
row "initrd size, cloud kernel (as built / its cpio / gzip -6)" "$initrd_size B / $initrd_raw B / $initrd_gz B" "–" "–"
row "guest init binary (/init) / $nmod modules" "$init_size B / $modules_size B" "–" "–"
echo
echo "init steps, microvm kernel (last run, guest uptimes): $(sed 's/.*ready at //' "$T/ready-line.mk" 2>/dev/null)"
echo "init steps, cloud kernel (last run, guest uptimes): $(sed 's/.*ready at //' "$T/ready-line.run" 2>/dev/null)"
echo "mkfs argv (direct): $(cat "$T/direct-argv.erofs" | sed "s|$T|\$T|g")"
echo "mksquashfs argv (direct): $(cat "$T/direct-argv.squashfs" | sed "s|$T|\$T|g")"
if [ -n "${VERBOSE:-}" ]; then for k in "${!S[@]}"; do echo "$k:${S[$k]}"; done | sort; fi

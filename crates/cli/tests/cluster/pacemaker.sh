#!/usr/bin/env bash
# A 3-node Pacemaker/Corosync cluster in network + mount + UTS + PID namespaces (recipe:
# docs/cluster.md), with a microvm VM as an ocf:microvm:vm resource. Run by
# tests/cluster.rs with: MICROVM (binary), AGENT (script), RUNNER (store path), IMAGE (the
# shared volume image), VM (name), WORK (scratch dir), TAG (unique prefix).
# Checks: the VM starts and is ready; a second node cannot start it (image lock);
# `crm resource move` migrates it without a reboot; kill -9 of its node makes it ready
# on another node. Prints MEASURED lines. Cleans up on exit.
set -euo pipefail
: "${MICROVM:?}" "${AGENT:?}" "${RUNNER:?}" "${IMAGE:?}" "${VM:?}" "${WORK:?}" "${TAG:?}"

hub="$TAG-hub"
nodes=(n1 n2 n3)
declare -A pid1
log() { printf '[cluster] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; for n in "${nodes[@]}"; do log "--- $n"; tail -n 20 "$WORK/$n/var/log/pacemaker/pacemaker.log" 2>/dev/null | grep -i 'microvm\|vm_\|error' | tail -n 8 >&2 || true; tail -n 5 "$WORK/$n/mnt/microvms/$VM/supervisor.log" >&2 2>/dev/null || true; done; exit 1; }

cleanup() {
  for n in "${nodes[@]}"; do
    [ -n "${pid1[$n]:-}" ] && kill -9 "${pid1[$n]}" 2>/dev/null || true
  done
  sleep 0.5
  for n in n1 n2 n3; do ip netns del "$TAG-$n" 2>/dev/null || true; done
  ip netns del "$hub" 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$hub"
ip -n "$hub" link add br0 type bridge
ip -n "$hub" link set br0 up
i=0
for n in "${nodes[@]}"; do
  i=$((i + 1))
  ns="$TAG-$n"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" link add eth0 type veth peer name "v$n" netns "$hub"
  ip -n "$hub" link set "v$n" master br0 up
  ip -n "$ns" addr add "10.214.0.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  d="$WORK/$n"
  mkdir -p "$d/etc" "$d/var/lib" "$d/var/log/crmsh" "$d/mnt/microvms/$VM"
  cp -a /etc/corosync "$d/etc/"
  cp -a /var/lib/corosync /var/lib/pacemaker "$d/var/lib/"
  for l in corosync pacemaker; do
    mkdir -p "$d/var/log/$l"; chown hacluster:haclient "$d/var/log/$l"; chmod 0770 "$d/var/log/$l"
  done
  cp -a /usr/lib/ocf/resource.d "$d/ocf"
  mkdir -p "$d/ocf/microvm"; cp "$AGENT" "$d/ocf/microvm/vm"; chmod 0755 "$d/ocf/microvm/vm"
  ln -s "$RUNNER" "$d/mnt/microvms/$VM/current"
  ln -s "$IMAGE" "$d/mnt/microvms/$VM/data.img"
  chmod 0755 "$d/mnt" "$d/mnt/microvms"
  cat > "$d/etc/corosync/corosync.conf" <<CONF
totem {
	version: 2
	cluster_name: $TAG
	transport: knet
	token: 1000
	crypto_cipher: none
	crypto_hash: none
}
nodelist {
	node {
		name: n1
		nodeid: 1
		ring0_addr: 10.214.0.1
	}
	node {
		name: n2
		nodeid: 2
		ring0_addr: 10.214.0.2
	}
	node {
		name: n3
		nodeid: 3
		ring0_addr: 10.214.0.3
	}
}
quorum {
	provider: corosync_votequorum
}
logging {
	to_logfile: yes
	logfile: /var/log/corosync/corosync.log
	to_syslog: no
	to_stderr: no
}
CONF
  cat > "$d/init.sh" <<INIT
#!/bin/bash
hostname $n
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
mount --bind $d/etc/corosync /etc/corosync
mount --bind $d/var/lib/corosync /var/lib/corosync
mount --bind $d/var/lib/pacemaker /var/lib/pacemaker
mount --bind $d/var/log /var/log
mount --bind $d/ocf /usr/lib/ocf/resource.d
mount --bind $d/mnt /mnt
export PCMK_logfile=/var/log/pacemaker/pacemaker.log PCMK_logfacility=none
export PATH="$PATH" MICROVM_SERVICE_MANAGER=own
corosync -f & c=\$!
for _ in \$(seq 100); do corosync-cfgtool -s >/dev/null 2>&1 && break; sleep 0.1; done
pacemakerd & p=\$!
trap 'kill -TERM \$p; wait \$p; kill -TERM \$c; wait \$c; exit 0' TERM
wait
INIT
  ip netns exec "$ns" unshare --mount --uts --pid --fork --mount-proc --propagation private \
    bash "$d/init.sh" </dev/null >"$d/init.log" 2>&1 &
  u=$!
  for _ in $(seq 50); do
    c=$(cat /proc/$u/task/*/children 2>/dev/null | awk '{print $1}')
    [ -n "$c" ] && break; sleep 0.1
  done
  pid1[$n]=$c
done

on() { local n=$1; shift; nsenter -t "${pid1[$n]}" -m -u -n -p -i "$@"; }
# The node that runs the VM, as a surviving node's Pacemaker says.
where() { on "$1" crm_resource --locate -r vm 2>/dev/null | sed -n 's/.*running on: *\([a-z0-9]*\).*/\1/p' | head -n1; }
vm_state() { on "$1" "$MICROVM" --state-dir /mnt/microvms status "$VM" --json 2>/dev/null | sed -n 's/^ *"state": "\([a-z-]*\)".*/\1/p' | head -n1; }
boots() { debugfs -R 'cat /boots' "$IMAGE" 2>/dev/null | grep -c booted || true; }

b0=$(boots)
t0=$EPOCHREALTIME
for _ in $(seq 600); do
  on n1 crm_mon -1 2>/dev/null | grep -q 'Online: \[ n1 n2 n3 \]' && break; sleep 0.2
done
on n1 crm_mon -1 | grep -q 'Online: \[ n1 n2 n3 \]' || fail "the nodes did not come online"
log "all nodes online after $(awk "BEGIN{print $EPOCHREALTIME - $t0}") s"
on n1 crm configure property stonith-enabled=false
on n1 crm configure primitive vm ocf:microvm:vm \
  params name="$VM" state_dir=/mnt/microvms binary="$MICROVM" snapshot_dir="$WORK/snapshots" \
  op monitor interval=2s timeout=30s op start timeout=120s interval=0 op stop timeout=60s interval=0 \
  op migrate_to timeout=120s interval=0 op migrate_from timeout=120s interval=0 \
  meta allow-migrate=true
mkdir -p "$WORK/snapshots"

first=""
for _ in $(seq 600); do
  first=$(where n1); [ -n "$first" ] && [ "$(vm_state "$first")" = running ] && break; sleep 0.2
done
[ -n "$first" ] && [ "$(vm_state "$first")" = running ] || fail "the VM did not start"
log "the VM runs on $first"
for _ in $(seq 300); do [ "$(boots)" = $((b0 + 1)) ] && break; sleep 0.1; done
[ "$(boots)" = $((b0 + 1)) ] || fail "boots: $(boots)"

# Never two writers: another node's direct start is refused by qemu's image lock.
other=n1; [ "$first" = n1 ] && other=n2
if out=$(on "$other" "$MICROVM" --state-dir /mnt/microvms start "$VM" 2>&1); then fail "a second writer started on $other"; fi
printf '%s\n' "$out" | grep -q 'lock' || fail "the refusal does not name the lock: $out"
log "a start on $other was refused: $(printf '%s\n' "$out" | grep -m1 lock)"

# Live move.
target=n3; [ "$first" = n3 ] && target=n1; [ "$other" = "$target" ] && target=n2
[ "$target" = "$first" ] && target=n3
t0=$EPOCHREALTIME
on n1 crm resource move vm "$target" >/dev/null 2>&1
for _ in $(seq 600); do
  [ "$(where n1)" = "$target" ] && [ "$(vm_state "$target")" = running ] && break; sleep 0.1
done
[ "$(where n1)" = "$target" ] && [ "$(vm_state "$target")" = running ] || fail "the VM did not move to $target"
log "MEASURED crm resource move $first -> $target: ready in $(awk "BEGIN{print $EPOCHREALTIME - $t0}") s"
[ "$(vm_state "$first")" != running ] || fail "the VM still runs on $first"
on n1 crm resource clear vm >/dev/null 2>&1 || true
# Longer than a cold boot takes to reach the guest's rcS: a reboot would show by now.
sleep 8
[ "$(where n1)" = "$target" ] || fail "the VM moved back after clear"
[ "$(boots)" = $((b0 + 1)) ] || fail "the guest rebooted during the move (boots: $(boots))"
[ "$(vm_state "$target")" = running ] || fail "the VM stopped running on $target after the move"

# Fail-over: kill -9 every process of the VM's node (its PID namespace).
survivor=n1; [ "$target" = n1 ] && survivor=n2
t0=$EPOCHREALTIME
kill -9 "${pid1[$target]}"
unset "pid1[$target]"
nodes=("${!pid1[@]}")
dst=""
for _ in $(seq 900); do
  dst=$(where "$survivor")
  [ -n "$dst" ] && [ "$dst" != "$target" ] && [ "$(vm_state "$dst")" = running ] && break; sleep 0.1
done
[ -n "$dst" ] && [ "$dst" != "$target" ] && [ "$(vm_state "$dst")" = running ] || fail "no fail-over"
log "MEASURED fail-over after kill -9 of $target: ready on $dst in $(awk "BEGIN{print $EPOCHREALTIME - $t0}") s"
# READY comes before the guest's rcS appends to /data/boots: give it time.
for _ in $(seq 300); do [ "$(boots)" = $((b0 + 2)) ] && break; sleep 0.1; done
[ "$(boots)" = $((b0 + 2)) ] || fail "boots after fail-over: $(boots)"
on "$survivor" crm resource stop vm >/dev/null 2>&1
for _ in $(seq 300); do [ "$(vm_state "$dst")" != running ] && break; sleep 0.2; done
log "PASS"

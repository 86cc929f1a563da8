#!/usr/bin/env bash
# A 3-node Pacemaker/Corosync cluster in network + mount + UTS + PID namespaces (recipe:
# docs/cluster.md), with a microvm VM as an ocf:microvm:vm resource. Run by
# tests/cluster.rs with: MICROVM (binary), AGENT (script), RUNNER (store path), IMAGE (the
# shared volume image), VM (name), WORK (scratch dir), TAG (unique prefix).
# Each node runs corosync (token 1000 ms, consensus 1200 ms), pacemakerd and an sshd
# (the agent's migrations go over ssh between the nodes, with the test's own keys).
# The guest appends a counter and its uptime to /data/counter every 100 ms (synced).
# Checks: the VM starts and is ready; a second node cannot start it (image lock);
# `crm resource move` live-migrates it: one boot, the counter goes on without a gap and
# the uptime keeps growing; kill -9 of its node makes it ready on another node, and the
# volume holds every number the killed guest had synced. Prints MEASURED lines. Cleans up
# on exit; with CLUSTER_LOGS=DIR set, the nodes' logs are copied there first.
set -euo pipefail
: "${MICROVM:?}" "${AGENT:?}" "${RUNNER:?}" "${IMAGE:?}" "${VM:?}" "${WORK:?}" "${TAG:?}"

hub="$TAG-hub"
nodes=(n1 n2 n3)
declare -A pid1 addr
log() { printf '[cluster] %s\n' "$*" >&2; }
fail() {
  log "FAIL: $*"
  for n in n1 n2 n3; do
    log "--- $n"
    grep -i 'microvm\|vm_\|error' "$WORK/$n/var/log/pacemaker/pacemaker.log" 2>/dev/null | tail -n 12 >&2 || true
    tail -n 8 "$WORK/$n/mnt/microvms/$VM/supervisor.log" >&2 2>/dev/null || true
  done
  exit 1
}
now() { printf '%s' "$EPOCHREALTIME"; }
# Seconds since $1 (an $EPOCHREALTIME), with two decimals, in bash arithmetic.
since() {
  local a=${EPOCHREALTIME/./} b=${1/./}
  local d=$(((a - b) / 10000))
  printf '%d.%02d' $((d / 100)) $((d % 100))
}

cleanup() {
  if [ -n "${CLUSTER_LOGS:-}" ]; then
    for n in n1 n2 n3; do
      mkdir -p "$CLUSTER_LOGS/$n"
      cp -r "$WORK/$n/var/log/." "$WORK/$n/mnt/microvms/$VM/"*.log "$CLUSTER_LOGS/$n/" 2>/dev/null || true
    done
  fi
  for n in "${!pid1[@]}"; do
    kill -9 "${pid1[$n]}" 2>/dev/null || true
  done
  sleep 0.5
  for n in n1 n2 n3; do ip netns del "$TAG-$n" 2>/dev/null || true; done
  ip netns del "$hub" 2>/dev/null || true
}
trap cleanup EXIT

bash "$(dirname "$0")/ssh-keys.sh" "$WORK/ssh" n1=10.214.0.1 n2=10.214.0.2 n3=10.214.0.3

ip netns add "$hub"
ip -n "$hub" link add br0 type bridge
ip -n "$hub" link set br0 up
i=0
for n in "${nodes[@]}"; do
  i=$((i + 1))
  ns="$TAG-$n"
  addr[$n]=10.214.0.$i
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" link add eth0 type veth peer name "v$n" netns "$hub"
  ip -n "$hub" link set "v$n" master br0 up
  ip -n "$ns" addr add "${addr[$n]}/24" dev eth0
  ip -n "$ns" link set eth0 up
  d="$WORK/$n"
  mkdir -p "$d/etc" "$d/var/lib" "$d/var/log/crmsh" "$d/mnt/microvms/$VM"
  cp -a /etc/corosync "$d/etc/"
  cp -a /var/lib/corosync /var/lib/pacemaker "$d/var/lib/"
  # The cluster options in the first CIB: no 20 s wait for a DC at start, no fencing
  # device in this test (docs/cluster.md: production needs STONITH).
  cat >"$d/var/lib/pacemaker/cib/cib.xml" <<'CIB'
<cib admin_epoch="0" epoch="1" num_updates="0" validate-with="pacemaker-3.9">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="opt-dc-deadtime" name="dc-deadtime" value="2s"/>
        <nvpair id="opt-stonith-enabled" name="stonith-enabled" value="false"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
  </configuration>
  <status/>
</cib>
CIB
  chown hacluster:haclient "$d/var/lib/pacemaker/cib/cib.xml"
  chmod 0600 "$d/var/lib/pacemaker/cib/cib.xml"
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
	token_coefficient: 0
	consensus: 1200
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
	timestamp: hires
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
mkdir -p /run/sshd
export PCMK_logfile=/var/log/pacemaker/pacemaker.log PCMK_logfacility=none
export PATH="$PATH" MICROVM_SERVICE_MANAGER=own
/usr/sbin/sshd -D -e -f $WORK/ssh/sshd_config -o ListenAddress=${addr[$n]} 2>>/var/log/sshd.log & s=\$!
corosync -f & c=\$!
for _ in \$(seq 100); do corosync-cfgtool -s >/dev/null 2>&1 && break; sleep 0.1; done
pacemakerd & p=\$!
trap 'kill -TERM \$p; wait \$p; kill -TERM \$c \$s; wait \$c; exit 0' TERM
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
# The guest's counter on the volume, checked (a gap or an uptime going back fails):
# "BOOTS LAST LAST_BEFORE_THE_SECOND_BOOT LONGEST_UPTIME_STEP". `live` drops the last
# line, which a read of the running guest's volume can catch half-written.
counter() {
  local text
  text=$(debugfs -R 'cat /counter' "$IMAGE" 2>/dev/null)
  [ "${1:-}" = live ] && text=$(printf '%s\n' "$text" | head -n -1)
  printf '%s\n' "$text" | awk '
    $1 == "boot" { boots++; if (boots == 2) first = last; up = -1; next }
    $1 != last + 1 { print "counter: a gap at \"" $0 "\" after " last > "/dev/stderr"; exit 1 }
    up >= 0 && $2 <= up { print "counter: the uptime went back at \"" $0 "\"" > "/dev/stderr"; exit 1 }
    { if (up >= 0 && $2 - up > step) step = $2 - up; up = $2; last = $1 }
    END { if (boots < 2) first = last; printf "%d %d %d %.2f\n", boots, last, first, step }'
}
# The last number on the running guest's volume (a read that catches a block half-written
# is tried again; the full check runs once the VM is stopped).
counter_last() {
  local c
  for _ in 1 2 3 4 5; do
    if c=$(counter live 2>/dev/null); then set -- $c; echo "$2"; return; fi
    sleep 0.1
  done
  echo 0
}
wait_counter_past() {
  local n=$1
  for _ in $(seq 300); do [ "$(counter_last)" -gt "$n" ] && return 0; sleep 0.1; done
  fail "the guest's counter stopped at $(counter_last) (wanted > $n)"
}

# The counter of the boot that created the volume (the VM is stopped): gone.
debugfs -w -R 'rm /counter' "$IMAGE" >/dev/null 2>&1 || true
b0=$(boots)
t0=$(now)
for _ in $(seq 600); do
  on n1 crm_mon -1 2>/dev/null | grep -q 'Online: \[ n1 n2 n3 \]' && break; sleep 0.2
done
mon=$(on n1 crm_mon -1 2>&1) || true
printf '%s\n' "$mon" | grep -q 'Online: \[ n1 n2 n3 \]' || fail "the nodes did not come online: $mon"
log "all nodes online after $(since "$t0") s"
on n1 crm configure property stonith-enabled=false
on n1 crm configure primitive vm ocf:microvm:vm \
  params name="$VM" state_dir=/mnt/microvms binary="$MICROVM" ssh_config="$WORK/ssh/config" \
  op monitor interval=2s timeout=30s op start timeout=120s interval=0 op stop timeout=60s interval=0 \
  op migrate_to timeout=120s interval=0 op migrate_from timeout=120s interval=0 \
  meta allow-migrate=true

first=""
for _ in $(seq 600); do
  first=$(where n1); [ -n "$first" ] && [ "$(vm_state "$first")" = running ] && break; sleep 0.2
done
[ -n "$first" ] && [ "$(vm_state "$first")" = running ] || fail "the VM did not start"
log "the VM runs on $first"
for _ in $(seq 300); do [ "$(boots)" = $((b0 + 1)) ] && break; sleep 0.1; done
[ "$(boots)" = $((b0 + 1)) ] || fail "boots: $(boots)"
wait_counter_past 5

# Never two writers: another node's direct start is refused by qemu's image lock.
other=n1; [ "$first" = n1 ] && other=n2
if out=$(on "$other" "$MICROVM" --state-dir /mnt/microvms start "$VM" 2>&1); then fail "a second writer started on $other"; fi
printf '%s\n' "$out" | grep -q 'lock' || fail "the refusal does not name the lock: $out"
log "a start on $other was refused: $(printf '%s\n' "$out" | grep -m1 lock)"

# Live move over ssh.
target=n3; [ "$first" = n3 ] && target=n1; [ "$other" = "$target" ] && target=n2
[ "$target" = "$first" ] && target=n3
before=$(counter_last)
t0=$(now)
on n1 crm resource move vm "$target" >/dev/null 2>&1
for _ in $(seq 600); do
  [ "$(where n1)" = "$target" ] && [ "$(vm_state "$target")" = running ] && break; sleep 0.1
done
[ "$(where n1)" = "$target" ] && [ "$(vm_state "$target")" = running ] || fail "the VM did not move to $target"
took=$(since "$t0")
# The agent's migrate_to output, as pacemaker-execd logged it on the source.
paused=$(grep -o 'migrated in [0-9]* ms (guest paused [0-9]* ms' "$WORK/$first/var/log/pacemaker/pacemaker.log" | tail -n 1)
log "MEASURED crm resource move $first -> $target (live migration over ssh): ready on $target in $took s; qemu: ${paused:-no report})"
[ "$(vm_state "$first")" != running ] || fail "the VM still runs on $first"
grep -q "ended: the VM was migrated to ssh://$target" "$WORK/$first/mnt/microvms/$VM/supervisor.log" \
  || fail "the source does not say the VM was migrated"
on n1 crm resource clear vm >/dev/null 2>&1 || true
wait_counter_past $((before + 20))
[ "$(where n1)" = "$target" ] || fail "the VM moved back after clear"
[ "$(boots)" = $((b0 + 1)) ] || fail "the guest rebooted during the move (boots: $(boots))"
[ "$(vm_state "$target")" = running ] || fail "the VM stopped running on $target after the move"
moved=$(counter_last)

# Fail-over: kill -9 every process of the VM's node (its PID namespace).
survivor=n1; [ "$target" = n1 ] && survivor=n2
dc=$(on "$survivor" crm_mon -1 2>/dev/null | sed -n 's/.*Current DC: \([a-z0-9]*\).*/\1/p')
touch "$WORK/kill-mark"
t0=$(now)
kill -9 "${pid1[$target]}"
unset "pid1[$target]"
nodes=("${!pid1[@]}")
nodeid=${target#n}
t_left="" t_start="" t_ready="" dst=""
for _ in $(seq 1500); do
  if [ -z "$t_left" ] && ! on "$survivor" corosync-quorumtool -l 2>/dev/null | awk '{print $1}' | grep -qx "$nodeid"; then
    t_left=$(since "$t0")
  fi
  # Bash builtins only (no process per poll), so the watching steals no CPU from the boot.
  for n in "${nodes[@]}"; do
    f="$WORK/$n/mnt/microvms/$VM/status.json"
    [[ "$f" -nt "$WORK/kill-mark" ]] || continue
    st=""
    IFS= read -r -d '' st <"$f" 2>/dev/null || true
    [[ "$st" == *'"starting"'* || "$st" == *'"running"'* ]] || continue
    if [ -z "$t_start" ]; then t_start=$(since "$t0"); dst=$n; fi
    if [ -z "$t_ready" ] && [[ "$st" == *'"running"'* ]]; then t_ready=$(since "$t0"); fi
  done
  [ -n "$t_ready" ] && break
  sleep 0.05
done
[ -n "$t_ready" ] || fail "no fail-over (left ${t_left:-never}, start ${t_start:-never})"
for _ in $(seq 300); do
  [ "$(where "$survivor")" = "$dst" ] && [ "$(vm_state "$dst")" = running ] && break; sleep 0.05
done
[ "$(where "$survivor")" = "$dst" ] && [ "$(vm_state "$dst")" = running ] || fail "Pacemaker does not see the VM on $dst"
t_pcmk=$(since "$t0")
dcnote="another node was the DC"; [ "$dc" = "$target" ] && dcnote="it was the DC"
log "MEASURED fail-over after kill -9 of $target ($dcnote): corosync membership without it after $t_left s, agent start on $dst after $t_start s, guest ready after $t_ready s, Pacemaker sees it started after $t_pcmk s"
# What the killed guest said it had synced (its node's console log survives on disk).
synced=$(sed -n 's/.*counter \([0-9]*\) synced.*/\1/p' "$WORK/$target/mnt/microvms/$VM/console.log" | tail -n 1)
[ -n "$synced" ] || fail "the killed guest's console shows no synced counter"
for _ in $(seq 300); do [ "$(boots)" = $((b0 + 2)) ] && break; sleep 0.1; done
[ "$(boots)" = $((b0 + 2)) ] || fail "boots after fail-over: $(boots)"
on "$survivor" crm resource stop vm >/dev/null 2>&1
for _ in $(seq 300); do [ "$(vm_state "$dst")" != running ] && [ "$(vm_state "$dst")" != stopping ] && break; sleep 0.2; done
read -r cb clast cfirst cstep < <(counter) || fail "the counter has a gap"
[ "$cb" = 2 ] || fail "the counter saw $cb boots after the fail-over"
log "MEASURED the counter went on across the move: $before before it, $moved after it on $target, one boot, no gap, longest step of the guest's uptime $cstep s"
[ "$cfirst" -ge "$synced" ] || fail "the volume lost synced data: the killed guest had synced $synced, the volume ends at $cfirst"
log "MEASURED the volume kept everything the killed guest had synced: it synced $synced, the volume had $cfirst, the new boot went on to $clast"
log "PASS"

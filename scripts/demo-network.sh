#!/usr/bin/env bash
# Several MicroVMs on one microvm network: three busybox guests get DHCP leases from the
# network's dnsmasq, the leases are listed, and one guest finds the others by name, pings
# them and reaches an "uplink" address through NAT. Last, a managed Debian guest running
# sshd is reached with `microvm ssh` (its root is built once by mmdebstrap, about a minute, and
# cached in target/demo-network-store). Everything runs in two network
# namespaces this script creates (the host side and the uplink), so it touches nothing
# of this machine's own networking; both are removed at the end. For the managed guest,
# a missing `microvm` user is created by `microvm host install` (its units go to the
# scratch directory) and /dev/net/tun is made 0666, its usual mode, when it is stricter.
# Run as root on Debian 12
# after `bash scripts/setup-host.sh` and `bash scripts/fetch-test-kernels.sh`.
# MICROVM=path/to/microvm overrides the binary (default: target/release/microvm, built).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
if [ -z "${MICROVM:-}" ]; then
  cargo build --release --locked -p microvm-cli
  MICROVM=$repo/target/release/microvm
fi
bash examples/hello/make-root.sh

work=$(mktemp -d "$repo/target/demo-network.XXXXXX")
chmod 0755 "$work"   # the managed VM's hypervisor runs as the microvm user, in $work/state
host=mvdemo-$$-h
up=mvdemo-$$-u
children=()
cleanup() {
  for pid in "${children[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns exec "$host" "$MICROVM" --state-dir "$work/state" remove vm-ssh >/dev/null 2>&1 || true
  ip netns exec "$host" "$MICROVM" --state-dir "$work/state" network remove demo0 >/dev/null 2>&1 || true
  ip netns delete "$host" 2>/dev/null || true
  ip netns delete "$up" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
in_host() { ip netns exec "$host" "$MICROVM" --state-dir "$work/state" "$@"; }

ip netns add "$host"
ip netns add "$up"
ip -n "$host" link set lo up
ip -n "$host" link add up0 type veth peer name eth0 netns "$up"
ip -n "$host" addr add 172.31.252.1/30 dev up0
ip -n "$host" link set up0 up
ip -n "$up" addr add 172.31.252.2/30 dev eth0
ip -n "$up" link set eth0 up

echo "== microvm network create demo0"
in_host network create demo0 --subnet 10.180.0.1/24 --uplink up0

vm() { # NAME MAC COMMAND
  cat > "$work/$1.toml" <<TOML
hostName = "$1"
vcpu = 1
mem = 256
kernel = "$repo/target/test-kernels/cloud.deb"
command = ['/bin/sh', '-c', '$3']

[[root]]
directory = "$repo/examples/hello/root"

[[interfaces]]
type = "tap"
id = "mvd$$-${1#vm-}"
mac = "$2"
bridge = "demo0"

[[network]]
interface = "mvd$$-${1#vm-}"
dhcp = true
TOML
}
runvm() { in_host run "$work/$1.toml" --workdir "$work" --console-log "$work/$1.console"; }

vm vm-b 02:00:00:de:00:02 'sleep 600'
vm vm-c 02:00:00:de:00:03 'sleep 600'
runvm vm-b & children+=($!)
runvm vm-c & children+=($!)
echo "== waiting for the leases of vm-b and vm-c"
for _ in $(seq 300); do
  n=$(grep -cE ' vm-(b|c) ' "$work/state/.networks/demo0/leases" 2>/dev/null || true)
  [ "${n:-0}" -ge 2 ] && break
  sleep 1
done
echo "== microvm network list"
in_host network list

vm vm-a 02:00:00:de:00:01 'for n in vm-b vm-c; do echo "vm-a: $n is $(nslookup $n 10.180.0.1 | awk "/^Address/ {a=\$NF} END {print a}")"; ping -c 1 -W 5 $n.microvm | grep "bytes from" || ping -c 1 -W 5 $(nslookup $n 10.180.0.1 | awk "/^Address/ {a=\$NF} END {print a}") | grep "bytes from"; done; ping -c 1 -W 5 172.31.252.2 | grep "bytes from"'
echo "== vm-a finds its neighbours by name and reaches the uplink through NAT"
runvm vm-a
grep -aE '^(vm-a:|64 bytes)' "$work/vm-a.console"

echo "== a managed Debian guest with sshd: microvm create, start, ssh"
export MICROVM_STORE=$repo/target/demo-network-store MICROVM_SERVICE_MANAGER=own
# `start` runs the hypervisor as the microvm user, which opens /dev/net/tun for its tap.
id microvm >/dev/null 2>&1 || "$MICROVM" --state-dir "$work/state" host install --unit-dir "$work/units" >/dev/null
[ "$(stat -c %a /dev/net/tun)" = 666 ] || { echo "making /dev/net/tun 0666 (the usual mode)"; chmod 0666 /dev/net/tun; }
ssh-keygen -q -t ed25519 -N "" -C demo -f "$work/id"
cat > "$work/vm-ssh.toml" <<TOML
hostName = "vm-ssh"
mem = 512
kernel = "$repo/target/test-kernels/cloud.deb"
command = ["/bin/sh", "-c", "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e"]

[[root]]
debian = { suite = "bookworm", variant = "minbase", packages = ["openssh-server"] }

[ssh]
authorizedKeyFiles = ["id.pub"]

[[interfaces]]
type = "tap"
id = "mvd$$-ssh"
mac = "02:00:00:de:00:05"
bridge = "demo0"

[[network]]
interface = "mvd$$-ssh"
dhcp = true
TOML
# Built outside the namespaces: mmdebstrap needs the Debian mirror.
"$MICROVM" --state-dir "$work/state" create vm-ssh --from "$work/vm-ssh.toml" >/dev/null
in_host start vm-ssh
for _ in $(seq 150); do
  in_host ssh vm-ssh -i "$work/id" -o BatchMode=yes -o ConnectTimeout=10 -- true 2>/dev/null && break
  sleep 2
done
in_host status vm-ssh | grep -E '^(vm-ssh|  addresses)'
echo "\$ microvm ssh vm-ssh -i id -- hostname"
in_host ssh vm-ssh -i "$work/id" -- hostname
echo "\$ microvm ssh vm-ssh -i id -- sh -c 'exit 7'"
set +e
in_host ssh vm-ssh -i "$work/id" -- sh -c 'exit 7'
echo "exit status $?"
set -e
in_host stop vm-ssh >/dev/null

#!/usr/bin/env bash
# Keys and configuration for the test's own sshd instances (docs/cluster.md, "Live
# migration"): `ssh-keys.sh DIR NAME=ADDR…` writes into DIR a host key, a client key that
# root's sshd accepts, known_hosts naming every host with that host key (checked
# strictly), a client `config` with each NAME's address, and `sshd_config`. The tests
# start `sshd -D -e -f DIR/sshd_config -o ListenAddress=ADDR` inside each host's network
# namespace; nothing listens outside them.
set -euo pipefail
dir=${1:?usage: ssh-keys.sh DIR NAME=ADDR...}
shift
mkdir -p "$dir"
chmod 0700 "$dir"
rm -f "$dir/host_key" "$dir/host_key.pub" "$dir/id" "$dir/id.pub"
ssh-keygen -q -t ed25519 -N '' -C microvm-test-host -f "$dir/host_key"
ssh-keygen -q -t ed25519 -N '' -C microvm-test-client -f "$dir/id"
cp "$dir/id.pub" "$dir/authorized_keys"
hostkey=$(cut -d' ' -f1,2 "$dir/host_key.pub")
: >"$dir/known_hosts"
: >"$dir/config"
for h in "$@"; do
  name=${h%%=*}
  addr=${h#*=}
  printf '%s,%s %s\n' "$name" "$addr" "$hostkey" >>"$dir/known_hosts"
  printf 'Host %s\n  HostName %s\n' "$name" "$addr" >>"$dir/config"
done
cat >>"$dir/config" <<CONF
Host *
  User root
  IdentityFile $dir/id
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5
CONF
cat >"$dir/sshd_config" <<CONF
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile none
LogLevel ERROR
# DIR is root's and 0700, but a clone under /tmp (world-writable) fails sshd's check of
# every directory above authorized_keys: the test's own sshd skips that check.
StrictModes no
CONF

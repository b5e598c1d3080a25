#!/usr/bin/env bash
# The binary users install (static: scripts/build-release.sh) on the old
# distributions backups live on. A Debian 11 root (glibc 2.31, as Proxmox
# VE 7 and TrueNAS SCALE 22; debootstrap --variant=minbase, cached in
# $OLD_ROOT_CACHE) gets the binary and the emulator, then:
#   1. syncoid-rsync --version and a local --rsync replication run inside it;
#   2. an sshd chrooted into it, whose PATH has no syncoid-rsync, takes an
#      --rsync push from this machine: the coordinator copies itself there,
#      the agent runs on glibc 2.31, the data arrives identical;
#   3. the ordinary dynamic build (glibc 2.34 symbols) pushing there is
#      refused by pre-flight with the loader's own words, exit 69, before
#      anything changes: no sync snapshot, no dataset, no copy left.
# Debian 10 is no longer on the mirror this machine reaches (buster moved
# to Debian's archive), so Debian 11 is the oldest root here.
# As root (debootstrap, chroot, mounts in a private mount namespace).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
suite=${1:-bullseye}
cache=${OLD_ROOT_CACHE:-/var/cache/syncoid-rsync/roots}
root=$cache/$suite
export DEBIAN_FRONTEND=noninteractive

if [ ! -f "$root/.complete" ]; then
  command -v debootstrap >/dev/null || { apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null; }
  # The mirror this machine's apt uses (never written into the repository).
  mirror=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || { echo "old-root-e2e: no Debian mirror in /etc/apt" >&2; exit 1; }
  rm -rf "$root"; mkdir -p "$cache"
  echo "old-root-e2e: debootstrap $suite (minbase + openssh-server)" >&2
  debootstrap --variant=minbase --include=openssh-server,procps "$suite" "$root" "$mirror" >"$cache/$suite.log" 2>&1 \
    || { tail -20 "$cache/$suite.log" >&2; exit 1; }
  touch "$root/.complete"
fi

out=$(cd "$here" && bash scripts/build-release.sh)
install -m 0755 "$here/$out/fakezfs" "$root/usr/local/sbin/fakezfs"
# Under a name of its own: the root's sshd sessions must not find it (the
# coordinator then copies itself in, as onto a host without syncoid-rsync).
install -m 0755 "$here/$out/syncoid-rsync" "$root/usr/local/sbin/sr-under-test"
work=$(mktemp -d); chmod 700 "$work"
sshd_pid=
# unshare --fork ignores SIGTERM while it waits; SIGKILL ends it, and
# --kill-child then the sshd inside.
cleanup() { [ -n "$sshd_pid" ] && kill -9 "$sshd_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# Becomes a command inside the root with /proc, /dev and a fresh /tmp, in
# a mount namespace of its own (the mounts go with it); call it in a
# subshell. Killing the unshare process ends what runs inside.
in_root() {
  exec unshare --mount --fork --kill-child sh -c 'mount -t proc proc "$1/proc" && mount --bind /dev "$1/dev" &&
    mount -t tmpfs -o mode=1777 tmpfs "$1/tmp" && shift && exec chroot "$@"' sh "$root" "$root" "$@"
}

echo "== 1. inside the $suite root: --version and a local --rsync replication" >&2
(in_root /bin/bash -s) <<'GUEST'
set -euo pipefail
echo "glibc here: $(ldd --version | head -1)"
sr=/usr/local/sbin/sr-under-test
$sr --version
export FAKEZFS_ROOT=/var/tmp/fz1/root FAKEZFS_MOUNT_BASE=/var/tmp/fz1/mnt
rm -rf /var/tmp/fz1; mkdir -p /var/tmp/fz1/bin "$FAKEZFS_ROOT" "$FAKEZFS_MOUNT_BASE"
fakezfs link /var/tmp/fz1/bin; export PATH=/var/tmp/fz1/bin:$PATH
zpool create src; zpool create dst
zfs create -o fakezfs:synthetic=24M src/data
head -c 300000 /dev/urandom > "$FAKEZFS_MOUNT_BASE/src/data/real.bin"
zfs snapshot src/data@s1
$sr --rsync --no-sync-snap --chunk-size=1M src/data dst/data
sums() { (cd "$FAKEZFS_MOUNT_BASE/$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
[ "$(sums src/data)" = "$(sums dst/data)" ] || { echo "data differs"; exit 1; }
[ "$(zfs list -H -o name -t snapshot dst/data)" = "dst/data@s1" ]
echo "local --rsync in the old root: identical"
GUEST

echo "== 2. --rsync push to an sshd chrooted in the $suite root (binary copied there)" >&2
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ssh-keygen -q -t ed25519 -N '' -f "$work/key"
install -d -m 700 "$root/root/.ssh"; install -m 600 "$work/key.pub" "$root/root/.ssh/authorized_keys"
cat > "$root/etc/ssh/sshd_old_root_e2e" <<EOF
ListenAddress 127.0.0.1
Port $port
PermitRootLogin prohibit-password
UsePAM no
PidFile none
SetEnv PATH=/var/tmp/fz2/bin:/usr/bin:/bin FAKEZFS_ROOT=/var/tmp/fz2/root FAKEZFS_MOUNT_BASE=/var/tmp/fz2/mnt
EOF
(in_root /bin/bash -c 'set -e; ssh-keygen -A >/dev/null; mkdir -p /run/sshd
  rm -rf /var/tmp/fz2; mkdir -p /var/tmp/fz2/bin /var/tmp/fz2/root /var/tmp/fz2/mnt
  fakezfs link /var/tmp/fz2/bin
  FAKEZFS_ROOT=/var/tmp/fz2/root FAKEZFS_MOUNT_BASE=/var/tmp/fz2/mnt /var/tmp/fz2/bin/zpool create far
  exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_old_root_e2e') >/dev/null 2>"$work/sshd.log" &
sshd_pid=$!
for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
# This machine's side: its own emulator state.
export FAKEZFS_ROOT=$work/root FAKEZFS_MOUNT_BASE=$work/mnt
mkdir -p "$work/bin" "$FAKEZFS_ROOT" "$FAKEZFS_MOUNT_BASE"
"$here/$out/fakezfs" link "$work/bin"
PATH=$work/bin:$PATH
zpool create here; zfs create -o fakezfs:synthetic=24M here/data
head -c 300000 /dev/urandom > "$FAKEZFS_MOUNT_BASE/here/data/real.bin"
zfs snapshot here/data@s1
"$here/$out/syncoid-rsync" --debug --rsync --no-sync-snap --sshport "$port" --sshkey "$work/key" \
  -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
  here/data root@127.0.0.1:far/data >"$work/push.log" 2>&1 || { cat "$work/push.log" "$work/sshd.log" >&2; exit 1; }
grep -q "copied syncoid-rsync to root@127.0.0.1" "$work/push.log" \
  || { cat "$work/push.log" >&2; echo "the binary was not copied" >&2; exit 1; }
far_sums=$(ssh -p "$port" -i "$work/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
  root@127.0.0.1 'cd /var/tmp/fz2/mnt/far/data && find . -type f -print0 | sort -z | xargs -0 sha256sum')
here_sums=$(cd "$FAKEZFS_MOUNT_BASE/here/data" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
[ "$far_sums" = "$here_sums" ] || { echo "pushed data differs" >&2; exit 1; }

echo "== 3. the dynamic build's copy cannot start there: refused before anything changes" >&2
dyn=$(cd "$here" && DYNAMIC=1 bash scripts/build-release.sh)
zfs create -o fakezfs:synthetic=4M here/data2; zfs snapshot here/data2@s1
before=$(zfs list -H -o name -t snapshot here/data2)
rc=0
"$here/$dyn/syncoid-rsync" --rsync --sshport "$port" --sshkey "$work/key" \
  -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
  here/data2 root@127.0.0.1:far/data2 >"$work/dyn.log" 2>&1 || rc=$?
cat "$work/dyn.log" >&2
[ "$rc" = 69 ] || { echo "the dynamic build's push exited $rc, not 69" >&2; exit 1; }
grep -q "cannot run on root@127.0.0.1" "$work/dyn.log" && grep -q "GLIBC_2\.3" "$work/dyn.log" \
  || { echo "the refusal does not carry the loader's words" >&2; exit 1; }
[ "$(zfs list -H -o name -t snapshot here/data2)" = "$before" ] || { echo "a sync snapshot was made" >&2; exit 1; }
left=$(ssh -p "$port" -i "$work/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
  root@127.0.0.1 'ls -A /tmp; zfs list -H -o name far/data2 2>/dev/null || true')
[ -z "$left" ] || { echo "left on the far host: $left" >&2; exit 1; }
echo "old-root-e2e: $suite: local --rsync and a push with the binary copied in: identical; a copy that cannot start: refused, nothing changed" >&2

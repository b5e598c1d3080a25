#!/usr/bin/env bash
# Runs the end-to-end suite on REAL OpenZFS 2.1 in the zfsvm lab VM:
# builds the VM image if missing (cached in /var/cache/zfsvm), boots it,
# copies the release binary in, runs tests/vm/suite.sh there (file-backed
# pools), and with --golden also re-captures the emulator's golden fixtures
# and runs the contract tests on them. Leaves the VM running unless
# --stop is given.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
vm=${ZFSVM_DIR:-$here/../shared/zfsvm}
golden=0; stop=0
for a in "$@"; do case "$a" in --golden) golden=1;; --stop) stop=1;; *) echo "usage: $0 [--golden] [--stop]" >&2; exit 64;; esac; done
t0=$(date +%s)
"$vm/build-image.sh"
t1=$(date +%s)
# A VM this script boots starts from the pristine image (a fresh root
# overlay and pool disks): nothing an earlier run left behind counts. A
# root overlay left by a VM killed mid-write once kept the guest from
# finding its root disk at all. A VM already running is used as it is.
ZFSVM_FRESH=${ZFSVM_FRESH:-1} "$vm/start.sh" >/dev/null
t2=$(date +%s)
# The binary users install: static on glibc (scripts/build-release.sh).
out=$(cd "$here" && bash scripts/build-release.sh)
"$vm/ssh.sh" 'cat > /usr/local/bin/syncoid-rsync && chmod 0755 /usr/local/bin/syncoid-rsync' < "$here/$out/syncoid-rsync"
# The Debian package (scripts/package.sh): the suite installs it, replicates
# with it and removes it.
deb=$(cd "$here" && bash scripts/package.sh)
"$vm/ssh.sh" 'cat > /var/tmp/syncoid-rsync.deb' < "$here/$deb"
# The guest is offline and its image has no sudo: the suite's case for a
# backup user whose sudo allows only zfs gets Debian's package from here.
if ! "$vm/ssh.sh" 'command -v sudo' >/dev/null 2>&1; then
  debs=$(mktemp -d)
  (cd "$debs" && apt-get download sudo >/dev/null 2>&1) || true
  for d in "$debs"/*.deb; do
    [ -e "$d" ] && "$vm/ssh.sh" 'cat > /var/tmp/sudo.deb && dpkg -i /var/tmp/sudo.deb >/dev/null && rm /var/tmp/sudo.deb' < "$d"
  done
  rm -rf "$debs"
fi
rc=0
suite_out=$(mktemp)
"$vm/ssh.sh" "ONLY='${ONLY:-*}' bash -s" < "$here/tests/vm/suite.sh" | tee "$suite_out" || rc=$?
# The suite ends with its count; a suite cut short (a command in it that
# swallowed the rest of its standard input) must not pass silently.
if [ "$rc" = 0 ] && ! tail -1 "$suite_out" | grep -Eq '^[0-9]+ passed, 0 failed$'; then
  echo "vm-e2e: the suite did not run to its end" >&2; rc=1
fi
rm -f "$suite_out"
t3=$(date +%s)
if [ "$golden" = 1 ] && [ "$rc" = 0 ]; then
  "$here/scripts/capture-golden.sh"
  (cd "$here" && cargo test -q -p fakezfs --test contract) || rc=$?
fi
t4=$(date +%s)
echo "vm-e2e: image $((t1-t0))s, boot $((t2-t1))s, suite $((t3-t2))s, golden $((t4-t3))s, rc=$rc"
[ "$stop" = 1 ] && "$vm/stop.sh" >/dev/null
exit "$rc"

#!/usr/bin/env bash
# Re-captures the emulator's golden fixtures from real OpenZFS in the lab VM
# (../shared/zfsvm, built by its build-image.sh). It replays
# crates/fakezfs/tests/golden/setup.sh in the guest (which DESTROYS and
# recreates the guest pools src and dst), runs every case's `cmd` in order,
# and rewrites each case's stdout, stderr and status.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
vm=${ZFSVM_DIR:-$here/../shared/zfsvm}
golden=$here/crates/fakezfs/tests/golden
"$vm/build-image.sh" >/dev/null
"$vm/start.sh" >/dev/null
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
tar -C "$golden" -cf "$work/in.tar" setup.sh cases
"$vm/ssh.sh" 'rm -rf /root/golden && mkdir -p /root/golden && tar -C /root/golden -xf -' < "$work/in.tar"
"$vm/ssh.sh" 'bash -s' <<'GUEST'
set -u
export LC_ALL=C TZ=UTC
cd /root/golden
# The cases list every pool: only the fixtures' own may exist.
for p in $(zpool list -H -o name); do case "$p" in src|dst) ;; *) zpool destroy -f "$p";; esac; done
bash setup.sh >/dev/null 2>&1
for d in cases/*/; do
  bash -c "$(cat "$d/cmd")" >"$d/stdout" 2>"$d/stderr"; echo $? > "$d/status"
done
GUEST
"$vm/ssh.sh" 'tar -C /root/golden -cf - cases' | tar -C "$golden" -xf -
echo "re-captured $(ls "$golden/cases" | wc -l) cases into $golden/cases"

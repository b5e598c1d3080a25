#!/usr/bin/env bash
# A DEMO ON THE FAKEZFS EMULATOR (not real ZFS): two emulated pools, a
# dataset with files, replicated by syncoid-rsync (full, then incremental).
# Everything lives in a private temp dir that is removed at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
SR=${SYNCOID_RSYNC:-$here/target/release/syncoid-rsync}
FZ=${FAKEZFS:-$here/target/release/fakezfs}
demo=$(mktemp -d -t syncoid-rsync-demo.XXXXXX)
trap 'rm -rf "$demo"' EXIT
mkdir "$demo/bin"
"$FZ" link "$demo/bin"
mkdir -m 0700 "$demo/tmp"
export PATH="$demo/bin:$PATH" FAKEZFS_ROOT="$demo/state" FAKEZFS_MOUNT_BASE="$demo/mnt" SYNCOID_RSYNC_TMP="$demo/tmp"
say() { printf '\n\033[1m== DEMO (fakezfs emulator): %s\033[0m\n' "$*"; }
say "two emulated pools, 'tank' and 'backup'"
zpool create tank; zpool create backup
zfs create tank/photos
mnt=$(zfs get -H -o value mountpoint tank/photos)
echo "summer" > "$mnt/2026-08.txt"; head -c 2000000 /dev/urandom > "$mnt/beach.raw"
zfs snapshot tank/photos@monday
zfs list -r -t all tank
say "syncoid-rsync tank/photos backup/photos   (initial full replication)"
"$SR" tank/photos backup/photos
say "a new file, then the same command again   (incremental)"
echo "autumn" > "$mnt/2026-10.txt"; sleep 1
"$SR" tank/photos backup/photos
zfs list -r -t all backup
say "the target's files equal the source's"
diff -r "$mnt" "$(zfs get -H -o value mountpoint backup/photos)" && echo "identical: $(ls "$mnt" | tr '\n' ' ')"
say "--dry-run shows the plan and changes nothing"
"$SR" --dry-run tank/photos backup/photos
say "--rsync: a 64 MiB transfer whose command is killed half-way, then run again"
zfs create -o fakezfs:synthetic=64M tank/big; zfs snapshot tank/big@s1
FAKEZFS_SEND_RATE=16M "$SR" --rsync --no-sync-snap tank/big backup/big & pid=$!
sleep 2; kill -9 "$pid"; wait "$pid" 2>/dev/null || true
echo "(killed syncoid-rsync; its agents keep zfs send and zfs receive open)"
"$SR" --rsync --no-sync-snap tank/big backup/big
zfs list -r -t all backup/big

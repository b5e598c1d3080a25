#!/usr/bin/env bash
# Builds syncoid-rsync in release mode, installs it (and the fakezfs
# emulator, under its own name) into $PREFIX/bin, and runs it. On a machine
# without ZFS it then runs the demo on the emulator (scripts/demo.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo (Rust) is needed to build syncoid-rsync: install it from https://rustup.rs or your distribution" >&2
  exit 1
fi
# Static on glibc targets (scripts/build-release.sh): the binary --rsync
# copies to other hosts starts there whatever their glibc.
out=$(bash scripts/build-release.sh)
install -d "$PREFIX/bin"
install -m 0755 "$out/syncoid-rsync" "$PREFIX/bin/syncoid-rsync"
install -m 0755 "$out/fakezfs" "$PREFIX/bin/fakezfs"
# Man page and shell completions, generated from the same definitions as --help.
sr=$out/syncoid-rsync
install -d "$PREFIX/share/man/man1" "$PREFIX/share/bash-completion/completions" \
  "$PREFIX/share/zsh/site-functions" "$PREFIX/share/fish/vendor_completions.d"
"$sr" --generate man > "$PREFIX/share/man/man1/syncoid-rsync.1"
"$sr" --generate bash > "$PREFIX/share/bash-completion/completions/syncoid-rsync"
"$sr" --generate zsh > "$PREFIX/share/zsh/site-functions/_syncoid-rsync"
"$sr" --generate fish > "$PREFIX/share/fish/vendor_completions.d/syncoid-rsync.fish"
echo "installed: $("$PREFIX/bin/syncoid-rsync" --version) -> $PREFIX/bin/syncoid-rsync (man page: man syncoid-rsync; bash/zsh/fish completions)"
if [ -e /dev/zfs ] && command -v zfs >/dev/null 2>&1; then
  echo "ZFS is available here: see 'syncoid-rsync --help' to replicate for real."
else
  echo "No ZFS kernel module here: running the demo on the fakezfs emulator."
  SYNCOID_RSYNC="$PREFIX/bin/syncoid-rsync" FAKEZFS="$PREFIX/bin/fakezfs" bash scripts/demo.sh
fi

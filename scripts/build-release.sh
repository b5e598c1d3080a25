#!/usr/bin/env bash
# Builds the release binaries (syncoid-rsync and the fakezfs emulator) and
# prints the directory they are in. On a glibc target they are linked
# statically (-C target-feature=+crt-static): the binary that is installed,
# and that --rsync copies to hosts lacking it, then starts on any Linux of
# the same architecture, whatever its glibc (Debian 11's 2.31, RHEL 8's
# 2.28) or none. An explicit --target keeps the flag off build scripts and
# proc-macros, which cannot be static. DYNAMIC=1 builds the ordinary
# dynamic binaries into target/release instead (for comparison).
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
if [ "${DYNAMIC:-0}" != 1 ] && [[ $host == *-linux-gnu ]]; then
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --quiet --target "$host" -p syncoid-rsync -p fakezfs "$@" >&2
  echo "target/$host/release"
else
  cargo build --release --quiet -p syncoid-rsync -p fakezfs "$@" >&2
  echo "target/release"
fi

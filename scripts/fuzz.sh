#!/bin/sh
# Runs the cargo-fuzz (libFuzzer + AddressSanitizer) targets of the wire
# protocol, each for SECONDS (default 300): decode, frames, receiver.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). On a stable toolchain the
# sanitizer flags are unlocked with RUSTC_BOOTSTRAP=1 (the sanitizer
# runtimes ship with stable's rust-std); a nightly toolchain works too.
# A crash fails the script and leaves its input in fuzz/artifacts/TARGET/.
set -eu
cd "$(dirname "$0")/../fuzz"
secs=${1:-300}
[ $# -gt 0 ] && shift
targets=${*:-decode frames receiver}
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 69; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in $targets; do
    echo "== $t: ${secs}s"
    rc=0
    RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1 || rc=$?
    grep -E '^(Done|==[0-9]+==ERROR|SUMMARY)|panicked|Test unit written|^#[0-9]+ +DONE' "$log" || true
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$log" >&2
        echo "$t: failed (exit $rc); the failing input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
done

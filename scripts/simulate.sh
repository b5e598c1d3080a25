#!/bin/sh
# Runs more seeded fault schedules of the --rsync protocol simulation
# (crates/core/src/session/sim.rs: the real sender, receiver and
# coordinator sessions over virtual links that are cut, delayed and damage
# chunks) than `cargo test` does (10,000), in a release build.
#
#   scripts/simulate.sh [SCHEDULES] [FIRST_SEED]
#
# A failing schedule names its seed; replay it with a trace:
#   SEED=N SIM_TRACE=1 cargo test -p syncoid-rsync-core replay -- --ignored --nocapture
set -eu
cd "$(dirname "$0")/.."
SIM_SCHEDULES=${1:-200000} SIM_FIRST_SEED=${2:-0} \
    cargo test --release -p syncoid-rsync-core ten_thousand_seeded -- --nocapture

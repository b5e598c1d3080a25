#!/usr/bin/env bash
# Installs the test dependencies (apt, needs root) and runs the whole suite:
# unit and property tests, the emulator's contract tests against real
# OpenZFS output, and end-to-end tests on the emulator, locally and through
# a real sshd on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo build --workspace --quiet
cargo test --workspace

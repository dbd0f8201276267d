#!/usr/bin/env bash
# The test command: installs what the tests need, builds every binary the
# integration tests start, and runs the whole test suite (unit, property and
# integration tests, including the differential test against kernel nftables).
# Integration tests create network namespaces and TAP devices: run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --workspace --bins
cargo test --release --workspace --no-fail-fast "$@"

#!/usr/bin/env bash
# All tests: installs what they need (SoftHSM2, OpenSC's pkcs11-tool, openssl; notation and
# cosign from their Go modules, tests/go-tools.sh), builds the
# binaries the end-to-end tests drive, runs every test in the workspace, then packages those
# (debug) binaries as the Debian package and tests it installed (tests/package.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

softhsm/install-deps.sh
# The real notation and cosign CLIs (pinned Go modules, built once into a cache), built while
# cargo builds.
mkdir -p target
tests/go-tools.sh > target/go-tools.log 2>&1 &
go_tools=$!
cargo build --workspace --bins
if ! wait "$go_tools"; then
    cat target/go-tools.log >&2
    exit 1
fi
cargo test --workspace
tests/package.sh

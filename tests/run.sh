#!/usr/bin/env bash
# All tests: installs what they need (SoftHSM2, OpenSC's pkcs11-tool, openssl), builds the
# binaries the end-to-end tests drive, runs every test in the workspace, then packages those
# (debug) binaries as the Debian package and tests it installed (tests/package.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

softhsm/install-deps.sh
cargo build --workspace --bins
cargo test --workspace
tests/package.sh

#!/usr/bin/env bash
# The main job on an embedded default: installs SoftHSM2, builds dct-agent and dct
# (release), makes a fresh local SoftHSM2 token, starts the agent on it, generates the
# root, targets, snapshot, timestamp and targets/releases keys on the token, signs a whole
# Notary repository with them, verifies it, locks the token and stops the agent.
# The signed metadata stays in target/dct-demo/repo.
set -euo pipefail
cd "$(dirname "$0")/.."

softhsm/install-deps.sh
cargo build --release --workspace --bins
exec target/release/demo target/dct-demo

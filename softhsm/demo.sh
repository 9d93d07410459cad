#!/usr/bin/env bash
# The main job on an embedded default: installs SoftHSM2 and notary, builds dct-agent and
# dct (release), makes a fresh local SoftHSM2 token and starts a local notary-server and
# notary-signer (127.0.0.1, test CA), starts the agent on the token; initialises a
# repository, signs a tag, inspects it, and shows the real notary client agreeing; then
# signs a whole repository offline with keys on the token and verifies it; locks the token
# and stops everything. The offline metadata stays in target/dct-demo/repo.
set -euo pipefail
cd "$(dirname "$0")/.."

softhsm/install-deps.sh
cargo build --release --workspace --bins
exec target/release/demo target/dct-demo

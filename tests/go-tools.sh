#!/usr/bin/env bash
# Builds the real Notation and cosign CLIs, pinned, from their Go modules (through the Go
# module proxy), once, into a cache the tests find them in:
#   ${DCT_GO_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/dct-agent/go-tools}/{notation,cosign}-VERSION
# Go is used for nothing else: the product is Rust. Prints the cache directory.
set -euo pipefail

NOTATION_VERSION=v1.3.2
COSIGN_VERSION=v3.1.3
dir=${DCT_GO_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/dct-agent/go-tools}
mkdir -p "$dir"

if ! command -v go >/dev/null; then
    echo "go-tools.sh: Go is needed to build notation and cosign for the tests" >&2
    exit 1
fi

# notation: the proxy serves the module's versions but not its version list, which
# `go install module@version` asks for (deprecation check); so download the pinned module
# and build its command from the module cache.
if [ ! -x "$dir/notation-$NOTATION_VERSION" ]; then
    src=$(go mod download -json "github.com/notaryproject/notation@$NOTATION_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    (cd "$src" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath \
        -o "$dir/notation-$NOTATION_VERSION.tmp" ./cmd/notation)
    mv "$dir/notation-$NOTATION_VERSION.tmp" "$dir/notation-$NOTATION_VERSION"
fi

if [ ! -x "$dir/cosign-$COSIGN_VERSION" ]; then
    tmp=$(mktemp -d)
    GOBIN=$tmp CGO_ENABLED=0 go install -trimpath \
        "github.com/sigstore/cosign/v3/cmd/cosign@$COSIGN_VERSION"
    mv "$tmp/cosign" "$dir/cosign-$COSIGN_VERSION"
    rmdir "$tmp"
fi

ln -sf "notation-$NOTATION_VERSION" "$dir/notation"
ln -sf "cosign-$COSIGN_VERSION" "$dir/cosign"
echo "$dir"

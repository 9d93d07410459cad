#!/usr/bin/env bash
# The Debian package, as a user gets it: builds dct-agent_VERSION_ARCH.deb from the debug
# binaries tests/run.sh built (agent/packaging/build-deb.sh --profile debug), installs it
# with `dpkg -i`, then runs the README's flow with the INSTALLED binaries (/usr/bin/dct-agent,
# /usr/bin/dct) in a temporary HOME: a fresh SoftHSM2 token, the installed example config,
# the agent started, `dct status`, `dct unlock` (PIN from a 0600 file), a key generated, a
# targets document signed and its signature checked with openssl; then the man pages, the
# bash completion, the units (systemd-analyze verify) and `dpkg -L`. Finally `dpkg --purge`
# leaves the machine as it was. Needs root (dpkg -i), as CI runs; refuses to run over an
# installed dct-agent package it did not install.
#
#   tests/package.sh [--deb FILE]    (--deb: test that package instead of building one)
#
# Prints `N passed, N failed` last; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

deb=
case "${1:-}" in
  --deb) deb=${2:?--deb needs a file} ;;
  "") ;;
  *) echo "package.sh: unknown argument: $1" >&2; exit 2 ;;
esac

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
bad() { failed=$((failed + 1)); echo "FAILED: $*"; }
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit
}
# check NAME CMD...: runs CMD, its output in $tmp/out (shown on failure).
check() {
  local name=$1
  shift
  if "$@" >"$tmp/out" 2>&1; then
    ok "$name"
  else
    bad "$name (exit $?)"
    sed 's/^/    /' "$tmp/out"
  fi
}

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "package.sh: needs root (dpkg -i)" >&2; exit 1; }
  sudo=(sudo)
fi

tmp=$(mktemp -d)
agent_pid=
installed=
cleanup() {
  if [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; then
    kill -TERM "$agent_pid" 2>/dev/null
    wait "$agent_pid" 2>/dev/null
  fi
  if [ -n "$installed" ]; then
    "${sudo[@]}" dpkg --purge dct-agent >/dev/null 2>&1 || echo "package.sh: dpkg --purge dct-agent failed" >&2
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

if dpkg-query -W -f='${Status}' dct-agent 2>/dev/null | grep -q "ok installed"; then
  bad "dct-agent is already installed here; remove it first (this test installs and purges its own)"
  finish
fi

# Build the package from the debug binaries.
if [ -z "$deb" ]; then
  if agent/packaging/build-deb.sh --profile debug --out "$tmp/deb" >"$tmp/build.log" 2>&1; then
    deb=$(tail -n 1 "$tmp/build.log")
    ok "build-deb.sh --profile debug: $(basename "$deb")"
  else
    bad "build-deb.sh --profile debug"
    tail -n 30 "$tmp/build.log" | sed 's/^/    /'
    finish
  fi
fi
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
case "$(basename "$deb")" in
  "dct-agent_${version}_$(dpkg --print-architecture).deb") ok "named dct-agent_VERSION_ARCH.deb" ;;
  *) bad "package name $(basename "$deb")" ;;
esac

# Install it.
if "${sudo[@]}" dpkg -i "$deb" >"$tmp/out" 2>&1; then
  installed=1
  ok "dpkg -i"
else
  bad "dpkg -i"
  sed 's/^/    /' "$tmp/out"
  installed=1 # a half-installed package is purged too
  finish
fi

# What it installs, as dpkg records it, with owners and modes.
dpkg -L dct-agent >"$tmp/list"
missing=()
for f in /usr/bin/dct /usr/bin/dct-agent /usr/bin/dct-authz \
  /usr/lib/systemd/user/dct-agent.socket /usr/lib/systemd/user/dct-agent.service \
  /usr/lib/systemd/system/dct-agent-signer.service /usr/lib/systemd/system/dct-authz.service \
  /usr/share/man/man1/dct-authz.1.gz \
  /usr/share/doc/dct-agent/examples/agent.toml /usr/share/doc/dct-agent/README.md.gz \
  /usr/share/doc/dct-agent/copyright /usr/share/doc/dct-agent/changelog.gz \
  /usr/share/man/man1/dct.1.gz /usr/share/man/man1/dct-agent.1.gz \
  /usr/share/bash-completion/completions/dct /usr/share/zsh/vendor-completions/_dct \
  /usr/share/fish/vendor_completions.d/dct.fish; do
  grep -qx "$f" "$tmp/list" && [ -f "$f" ] || missing+=("$f")
done
if [ ${#missing[@]} -eq 0 ]; then ok "dpkg -L lists every file"; else bad "not installed: ${missing[*]}"; fi
modes=$(stat -c '%U:%G %a %n' /usr/bin/dct /usr/bin/dct-agent /usr/share/man/man1/dct.1.gz \
  /usr/lib/systemd/user/dct-agent.socket /usr/share/doc/dct-agent/copyright)
if [ "$(printf '%s\n' "$modes" | grep -cE '^root:root (755 /usr/bin/|644 /usr/share/|644 /usr/lib/)')" -eq 5 ]; then
  ok "files root:root, 0755 binaries, 0644 data"
else
  bad "owners/modes: $modes"
fi
# What a fresh machine needs: every shared library the binaries load belongs to a package
# that Depends names (dpkg -i refuses the package while one of those is missing).
depends_ok() {
  local depends lib pkg
  depends=$(dpkg-query -W -f='${Depends}' dct-agent)
  echo "Depends: $depends"
  for lib in $(ldd /usr/bin/dct /usr/bin/dct-agent /usr/bin/dct-authz | awk '$2 == "=>" { print $3 } $1 ~ /^\// && $2 ~ /^\(0x/ { print $1 }' | sort -u); do
    pkg=$(dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null) || {
      echo "$lib: no package owns it"
      return 1
    }
    pkg=${pkg%%:*}
    case ", $depends," in
      *", $pkg "* | *", $pkg,"*) echo "$lib: $pkg" ;;
      *) echo "$lib: $pkg is not in Depends"; return 1 ;;
    esac
  done
}
check "Depends names every shared library's package" depends_ok
check "dct --version is the package's version" sh -c "/usr/bin/dct --version | grep -qx 'dct $version'"
check "dct-agent --version" sh -c "/usr/bin/dct-agent --version | grep -qx 'dct-agent $version'"
check "dct-authz --version" sh -c "/usr/bin/dct-authz --version | grep -qx 'dct-authz $version'"
check "sigstore-kms-dct, on PATH for cosign, answers its protocol" sh -c \
  "/usr/bin/sigstore-kms-dct v1 '{\"methodName\":\"defaultAlgorithm\"}' </dev/null | grep -q ecdsa-sha2-256-nistp256"

# A user's environment in temporary directories, nothing of the caller's.
home=$tmp/home
mkdir -p "$home/.config" "$home/.local/state" "$home/.local/share" "$tmp/run" "$tmp/softhsm/tokens"
chmod 0700 "$home" "$tmp/run"
export HOME=$home XDG_CONFIG_HOME=$home/.config XDG_STATE_HOME=$home/.local/state \
  XDG_DATA_HOME=$home/.local/share XDG_RUNTIME_DIR=$tmp/run NO_COLOR=1 DCT_LOG=info
unset DCT_SOCKET DCT_PIN DCT_AGENT_UID DCT_SERVER
export SOFTHSM2_CONF=$tmp/softhsm/softhsm2.conf
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
  "$tmp/softhsm/tokens" >"$SOFTHSM2_CONF"
pin=$(od -An -N6 -tu1 /dev/urandom | tr -cd '0-9' | cut -c1-8)
(umask 077 && printf '%s\n' "$pin" >"$tmp/pin")
# softhsm2-util takes the PIN only as an argument: from the test's own random PIN of a
# throwaway token (the CLI under test never gets one on its command line).
check "SoftHSM2 token 'dct'" softhsm2-util --init-token --free --label dct \
  --pin "$pin" --so-pin "so-$pin"

# The installed example config, as the README says: ~/.config/dct/agent.toml. It names
# SoftHSM2's module and the token `dct` already; the module path is this machine's.
mkdir -p "$XDG_CONFIG_HOME/dct"
module=$(dpkg -L softhsm2-common softhsm2 libsofthsm2 2>/dev/null | grep -m1 '/libsofthsm2\.so$')
sed "s|^module = .*|module = \"${module:-/usr/lib/softhsm/libsofthsm2.so}\"|" \
  /usr/share/doc/dct-agent/examples/agent.toml >"$XDG_CONFIG_HOME/dct/agent.toml"
check "dct-agent check-config on the installed example" /usr/bin/dct-agent check-config

# The agent, in the background; stopped by its PID.
/usr/bin/dct-agent </dev/null >/dev/null 2>"$tmp/agent.log" &
agent_pid=$!
socket=$XDG_RUNTIME_DIR/dct-agent/agent.sock
for _ in $(seq 1 200); do
  [ -S "$socket" ] && break
  kill -0 "$agent_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -S "$socket" ]; then
  ok "/usr/bin/dct-agent serves $socket"
else
  bad "/usr/bin/dct-agent did not start"
  sed 's/^/    /' "$tmp/agent.log"
  finish
fi

check "dct status" sh -c '/usr/bin/dct status | tee /dev/stderr | grep -Eq "^dct +pkcs11 +locked"'
check "dct unlock --pin-file (0600)" /usr/bin/dct unlock --pin-file "$tmp/pin"
check "dct status: unlocked" sh -c '/usr/bin/dct status | grep -Eq "^dct +pkcs11 +unlocked"'

gun=example.com/pkg
if key=$(/usr/bin/dct key generate --role targets --gun "$gun" 2>"$tmp/out") && [ -n "$key" ]; then
  ok "dct key generate --role targets --gun $gun: $key"
else
  bad "dct key generate"
  sed 's/^/    /' "$tmp/out"
fi

# A targets document in canonical JSON (so `signed` is exactly the bytes signed).
expires=$(date -u -d '+365 days' +%Y-%m-%dT00:00:00Z)
signed='{"_type":"Targets","delegations":{"keys":{},"roles":[]},"expires":"'$expires'","targets":{},"version":1}'
printf '{"signed":%s,"signatures":[]}' "$signed" >"$tmp/targets.json"
printf '%s' "$signed" >"$tmp/signed.bin"
check "dct tuf sign targets.json" /usr/bin/dct tuf sign "$tmp/targets.json" --key "${key:-none}" --gun "$gun"

# The signature, checked independently: the key's public PEM from the agent, the raw r||s
# from the file as DER, openssl over the signed bytes.
verify_signature() {
  /usr/bin/dct key export-public "$key" | grep -v '^role:' | sed '/^$/d' >"$tmp/key.pem" &&
    python3 - "$tmp/targets.json" "$key" "$tmp/sig.der" <<'PY' &&
import base64, json, sys
doc = json.load(open(sys.argv[1]))
sigs = doc["signatures"]
assert len(sigs) == 1 and sigs[0]["keyid"] == sys.argv[2] and sigs[0]["method"] == "ecdsa", sigs
raw = base64.b64decode(sigs[0]["sig"])
assert len(raw) == 64, len(raw)
def integer(b):
    b = b.lstrip(b"\0") or b"\0"
    if b[0] & 0x80:
        b = b"\0" + b
    return b"\x02" + bytes([len(b)]) + b
body = integer(raw[:32]) + integer(raw[32:])
open(sys.argv[3], "wb").write(b"\x30" + bytes([len(body)]) + body)
PY
    openssl dgst -sha256 -verify "$tmp/key.pem" -signature "$tmp/sig.der" "$tmp/signed.bin"
}
check "the signature landed and verifies with openssl" verify_signature
check "the audit log recorded the signature" sh -c \
  "grep '\"action\":\"sign\"' '$XDG_STATE_HOME/dct/audit.log' | grep -q '\"outcome\":\"ok\"'"
check "dct audit verify" /usr/bin/dct audit verify
check "dct lock" /usr/bin/dct lock

kill -TERM "$agent_pid" 2>/dev/null
if wait "$agent_pid"; then
  ok "dct-agent stopped cleanly on SIGTERM"
else
  bad "dct-agent exit status on SIGTERM"
  sed 's/^/    /' "$tmp/agent.log"
fi
agent_pid=

# Documentation and completions.
check "man -w dct dct-agent" man -w dct dct-agent
check "dct(1) renders and lists the commands" sh -c \
  "man -l /usr/share/man/man1/dct.1.gz 2>/dev/null | grep -q 'unlock'"
check "dct-agent(1) renders" sh -c \
  "man -l /usr/share/man/man1/dct-agent.1.gz 2>/dev/null | grep -q 'check-config'"
check "bash completion loads and completes 'dct tr'" bash -c '
  source /usr/share/bash-completion/completions/dct &&
  COMP_WORDS=(dct tr) COMP_CWORD=1 COMP_LINE="dct tr" COMP_POINT=6 &&
  _dct dct tr dct && [[ " ${COMPREPLY[*]} " == *" trust "* ]]'
if command -v zsh >/dev/null; then
  check "zsh completion parses" zsh -n /usr/share/zsh/vendor-completions/_dct
fi
if command -v fish >/dev/null; then
  check "fish completion parses" fish --no-execute /usr/share/fish/vendor_completions.d/dct.fish
fi

# The units as installed: user units need a runtime directory (for %t).
check "systemd-analyze verify (user units)" systemd-analyze --user --man=no verify \
  /usr/lib/systemd/user/dct-agent.socket /usr/lib/systemd/user/dct-agent.service
check "systemd-analyze verify (system units)" systemd-analyze --man=no verify \
  /usr/lib/systemd/system/dct-agent-signer.service /usr/lib/systemd/system/dct-authz.service

# Removal leaves nothing behind.
if "${sudo[@]}" dpkg --purge dct-agent >"$tmp/out" 2>&1; then
  installed=
  left=()
  while read -r f; do
    [ -f "$f" ] && left+=("$f")
  done <"$tmp/list"
  if [ ${#left[@]} -eq 0 ] && ! dpkg-query -W dct-agent >/dev/null 2>&1; then
    ok "dpkg --purge removes every file"
  else
    bad "left after purge: ${left[*]}"
  fi
else
  bad "dpkg --purge"
  sed 's/^/    /' "$tmp/out"
fi

finish

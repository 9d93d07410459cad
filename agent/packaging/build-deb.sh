#!/usr/bin/env bash
# Builds dct-agent_VERSION_ARCH.deb from the workspace: the binaries are built (or found
# built) by cargo, staged in a tree laid out as Debian wants it, and packed with Debian's own
# `dpkg-deb --build --root-owner-group`. No cargo-deb: compiling it costs minutes (in CI on
# every run), and the package is small enough that a staged tree keeps every path, mode and
# control field in plain sight here.
#
#   agent/packaging/build-deb.sh [--profile release|debug] [--out DIR]
#
# release (the default) builds optimised binaries; debug packages the ones `tests/run.sh`
# builds (CI tests the package that way without a release build). Output: DIR (default
# target/debian)/dct-agent_VERSION_ARCH.deb, its path printed last.
#
# Needs: cargo, dpkg-deb, help2man (the man pages, from --help), awk, gzip, strip (binutils);
# dpkg-shlibdeps (dpkg-dev) computes Depends when present, else a hand list is used.
# DEB_MAINTAINER overrides the Maintainer field; SOURCE_DATE_EPOCH (default: the last commit's
# time) dates the man pages and the changelog, and clamps the file times in the package.
set -euo pipefail
umask 022
cd "$(dirname "$0")/../.."

profile=release
out=target/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=${2:?--profile needs release or debug}; shift 2 ;;
    --profile=*) profile=${1#*=}; shift ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) cargo_profile=release ;;
  debug) cargo_profile=dev ;;
  *) echo "build-deb.sh: --profile must be release or debug, not $profile" >&2; exit 2 ;;
esac
for tool in cargo dpkg-deb help2man gzip strip; do
  command -v "$tool" >/dev/null || {
    echo "build-deb.sh: $tool is missing (apt-get install dpkg-dev help2man binutils)" >&2
    exit 1
  }
done

# The whole workspace's binaries, as tests/run.sh and softhsm/demo.sh build them: the same
# features resolved, so the packaged binaries are the ones the tests ran, and nothing is
# rebuilt when they are already built.
cargo build --profile "$cargo_profile" --workspace --bins
target_dir=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin_dir=$target_dir/$profile

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "build-deb.sh: no [workspace.package] version in Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)
maintainer=${DEB_MAINTAINER:-dct-agent maintainers <maintainers@users.noreply.r-seed-79399020.example>}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$work/pkg
doc=$pkg/usr/share/doc/dct-agent
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/share/man/man1" \
  "$pkg/usr/lib/systemd/user" "$pkg/usr/lib/systemd/system" "$doc/examples" \
  "$pkg/usr/share/bash-completion/completions" "$pkg/usr/share/zsh/vendor-completions" \
  "$pkg/usr/share/fish/vendor_completions.d"

# Binaries, stripped of debug info and symbols as Debian ships them.
for b in dct dct-agent dct-authz; do
  install -m 0755 "$bin_dir/$b" "$pkg/usr/bin/$b"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$pkg/usr/bin/$b"
done
# The Notation plugin, beside dct: `dct notation install` copies it into Notation's
# plugin directory from there.
install -m 0755 "$bin_dir/notation-dct" "$pkg/usr/bin/notation-dct"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$pkg/usr/bin/notation-dct"
# cosign's KMS plugin: in /usr/bin, on PATH, where cosign finds it for --key dct://KEYID.
install -m 0755 "$bin_dir/sigstore-kms-dct" "$pkg/usr/bin/sigstore-kms-dct"
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
  "$pkg/usr/bin/sigstore-kms-dct"

# Units, the example config, the README, the copyright and changelog.
install -m 0644 agent/systemd/user/dct-agent.socket agent/systemd/user/dct-agent.service \
  "$pkg/usr/lib/systemd/user/"
install -m 0644 agent/systemd/system/dct-agent-signer.service agent/systemd/system/dct-authz.service \
  "$pkg/usr/lib/systemd/system/"
install -m 0644 agent/agent.toml.example "$doc/examples/agent.toml"
install -m 0644 README.md "$doc/README.md"
gzip -9n "$doc/README.md"
install -m 0644 agent/packaging/copyright "$doc/copyright"
{
  printf 'dct-agent (%s) unstable; urgency=medium\n\n' "$version"
  printf '  * Built from the dct-agent workspace (%s).\n\n' \
    "$(git log -1 --format=%h 2>/dev/null || echo 'no git')"
  printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} >"$work/changelog"
install -m 0644 "$work/changelog" "$doc/changelog"
gzip -9n "$doc/changelog"

# Man pages from the binaries' own --help and --version (help2man), with a COMMANDS section
# holding every subcommand's -h (help2roff.awk; options already described higher up are not
# repeated) and the sections --help lacks (files, environment, see also) from *.h2m.
h2roff=agent/packaging/help2roff.awk
# walk BIN NAME "SUBCOMMAND WORDS" " OPTIONS ALREADY DESCRIBED ": one .SS per subcommand.
walk() {
  local bin=$1 name=$2 path=$3 skip=$4 help sub
  local -a words=()
  read -ra words <<<"$path"
  help=$("$bin" "${words[@]}" -h)
  if [ -n "$path" ]; then
    printf '%s\n' "$help" | awk -v title="$name $path" -v skip="$skip" -f "$h2roff"
  fi
  skip="$skip$(printf '%s\n' "$help" | awk -v mode=opts -f "$h2roff" | tr '\n' ' ')"
  for sub in $(printf '%s\n' "$help" |
    awk '/^Commands:$/ { c = 1; next } /^[^ ]/ { c = 0 } c && /^  [a-z]/ && $1 != "help" { print $1 }'); do
    walk "$bin" "$name" "${path:+$path }$sub" "$skip"
  done
}
for m in dct dct-agent; do
  { echo '[COMMANDS]'; walk "$pkg/usr/bin/$m" "$m" "" " "; } >"$work/$m-commands.h2m"
done
help2man --no-info --section 1 --version-string "$version" \
  --name "the command line of dct-agent, a signing agent for Docker Content Trust" \
  --include "$work/dct-commands.h2m" --include agent/packaging/dct.h2m \
  --output "$work/dct.1" "$pkg/usr/bin/dct"
help2man --no-info --section 1 --version-string "$version" \
  --name "hardware-backed signing agent for Docker Content Trust (Notary v1)" \
  --include "$work/dct-agent-commands.h2m" --include agent/packaging/dct-agent.h2m \
  --output "$work/dct-agent.1" "$pkg/usr/bin/dct-agent"
help2man --no-info --section 1 --version-string "$version" \
  --name "Docker authorization plugin: dockerd pulls and runs only images signed under pinned roots" \
  --output "$work/dct-authz.1" "$pkg/usr/bin/dct-authz"
for m in dct dct-agent dct-authz; do
  gzip -9n -c "$work/$m.1" >"$pkg/usr/share/man/man1/$m.1.gz"
  chmod 0644 "$pkg/usr/share/man/man1/$m.1.gz"
done

# Shell completions, generated by dct itself (clap_complete).
"$pkg/usr/bin/dct" completions bash >"$pkg/usr/share/bash-completion/completions/dct"
"$pkg/usr/bin/dct" completions zsh >"$pkg/usr/share/zsh/vendor-completions/_dct"
"$pkg/usr/bin/dct" completions fish >"$pkg/usr/share/fish/vendor_completions.d/dct.fish"
chmod 0644 "$pkg/usr/share/bash-completion/completions/dct" \
  "$pkg/usr/share/zsh/vendor-completions/_dct" "$pkg/usr/share/fish/vendor_completions.d/dct.fish"

# Depends: the shared libraries the binaries link (libc6, libgcc-s1, libpcsclite1 for the
# PIV backend), from dpkg-shlibdeps when dpkg-dev is there. PKCS#11 modules are loaded at
# run time from the config, so they are Recommends, not Depends.
depends="libc6 (>= 2.34), libgcc-s1 (>= 4.2), libpcsclite1 (>= 1.3.0)"
if command -v dpkg-shlibdeps >/dev/null; then
  mkdir -p "$work/src/debian"
  printf 'Source: dct-agent\n\nPackage: dct-agent\nArchitecture: any\n' >"$work/src/debian/control"
  if found=$(cd "$work/src" && dpkg-shlibdeps -O "$pkg/usr/bin/dct" "$pkg/usr/bin/dct-agent" "$pkg/usr/bin/dct-authz" 2>"$work/shlibdeps.err"); then
    depends=$(printf '%s\n' "$found" | sed -n 's/^shlibs:Depends=//p')
  else
    echo "build-deb.sh: dpkg-shlibdeps failed, using the hand list:" >&2
    cat "$work/shlibdeps.err" >&2
  fi
fi

installed_size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: dct-agent
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends
Recommends: softhsm2 | opensc, pcscd
Section: utils
Priority: optional
Description: hardware-backed signing agent for Docker Content Trust
 dct-agent holds the root, targets, snapshot and delegation keys of Docker
 Content Trust (Notary v1 / TUF) repositories on PKCS#11 tokens (SoftHSM2,
 YubiKey through ykcs11, OpenSC, HSMs) or on YubiKeys over PIV, unlocks them
 with a PIN and signs Notary metadata as the notary client does. dct, its
 command line, talks to it over gRPC on a Unix socket.
 .
 This package holds both programs, systemd units (a per-user socket and
 service, and a system service serving notary-signer's API to a
 notary-server), man pages, shell completions and an example configuration.
CONTROL
chmod 0644 "$pkg/DEBIAN/control"
# Maintainer scripts: systemd told of the units, the signer service stopped on removal;
# nothing enabled or started.
install -m 0755 agent/packaging/postinst agent/packaging/prerm agent/packaging/postrm "$pkg/DEBIAN/"
(cd "$pkg" && find usr -type f | LC_ALL=C sort | xargs md5sum) >"$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/md5sums"

mkdir -p "$out"
deb=$out/dct-agent_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"

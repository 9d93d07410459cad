#!/usr/bin/env bash
# Installs the Debian packages dct-agent's demo and tests use, only those missing:
#   softhsm2  - the PKCS#11 token the agent drives (/usr/lib/softhsm/libsofthsm2.so)
#   opensc    - pkcs11-tool, an independent PKCS#11 client used by the tests
#   openssl   - independent verification of signatures and certificates in the tests,
#               and the test CA of the notary stack
#   notary    - the real notary-server, notary-signer and notary client (0.7.0)
#   docker-registry, skopeo - a real registry and a client that pushes images to it
#   apache2-utils - htpasswd, for a registry that wants basic auth
#   pcscd, vsmartcard-vpcd - a real PC/SC daemon with a virtual reader driver, where the
#               tests plug their virtual PIV card (tests/src/piv_card, a YubiKey stand-in)
#   libpcsclite-dev - PC/SC headers and library for building the agent's PIV backend
#   libssl-dev, pkg-config - OpenSSL for building the agent (software keys sign with it)
#   yubico-piv-tool, ykcs11 - Yubico's PIV tool and PKCS#11 module, independent clients
#               of the virtual card (and the PKCS#11 backend's module on YubiKeys)
#   python3-prometheus-client - an independent parser of the agent's metrics (OpenMetrics)
#   docker.io - the real dockerd (and containerd, runc) that tests/tests/authz.rs runs with
#               dct-authz as its authorization plugin
#   systemd   - systemd-socket-activate (the agent started on demand) and systemd-analyze
#               (the shipped units verified)
#   dpkg-dev, help2man, binutils - the Debian package (agent/packaging/build-deb.sh):
#               dpkg-shlibdeps for its Depends, help2man for the man pages from --help,
#               strip; tests/package.sh installs it and runs the flow against it
#   man-db    - `man`, to find and render the installed man pages (tests/package.sh)
#   python3   - tests/package.sh turns a TUF signature into DER for openssl
# Runs apt-get as root (directly, or through sudo when not root).
set -euo pipefail

packages=(softhsm2 opensc openssl notary docker-registry skopeo apache2-utils
          pcscd vsmartcard-vpcd libpcsclite-dev libssl-dev pkg-config yubico-piv-tool ykcs11 systemd
          python3-prometheus-client dpkg-dev help2man binutils man-db python3 docker.io)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}" >&2
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

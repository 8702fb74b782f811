#!/usr/bin/env bash
# Installs the host packages Solstice needs on Debian 12: QEMU (from
# bookworm-backports, to match qemu-utils 10), the tools the image recipes use,
# a C toolchain for building Solstice, and what the test suite needs (SSH
# servers it starts itself on 127.0.0.1, shells, git, python3). Idempotent;
# run as root. It never starts, stops or disables a service you already had.
#
#   .ci/setup-host.sh            everything (what CI and scripts/test need)
#   .ci/setup-host.sh --runtime  only what building and running Solstice and
#                                its tiny image need (scripts/quickstart)
set -euo pipefail
runtime_only=0
case "${1:-}" in
  "") ;;
  --runtime) runtime_only=1 ;;
  *) echo "usage: $0 [--runtime]" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host.sh installs Debian packages: run it as root" >&2
  exit 1
fi
if [ ! -f /etc/apt/sources.list.d/bookworm-backports.sources ]; then
  cat >/etc/apt/sources.list.d/bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt (unattended-upgrades on a fresh machine, a second
# setup) instead of failing at once on dpkg's lock.
apt-get() { command apt-get -o DPkg::Lock::Timeout=600 "$@"; }
apt-get update -q
apt-get install -y -q -t bookworm-backports qemu-system-x86 qemu-utils
# Image recipes (images/; curl and python3 fetch and check the downloads pinned
# in images/pins.json), building Solstice (ring and the linker need a C
# toolchain), and `solstice exec`'s checkout of a git work tree (git).
apt-get install -y -q debootstrap busybox-static cpio mtools syslinux syslinux-common dosfstools fdisk e2fsprogs \
  zstd xz-utils kmod gzip openssh-client build-essential ca-certificates git curl python3
# pasta (package passt): the uplink of each job VM's own network namespace, which
# keeps guests away from the host's loopback (docs/how-to/guest-network.md).
apt-get install -y -q passt
if [ "$runtime_only" = 1 ]; then
  exit 0
fi

# Only for images/smoke.sh and an ISO layout test (Solstice writes its seeds itself).
apt-get install -y -q genisoimage

# Test-only: real SSH servers for the ssh module's tests (they run their own
# instances on 127.0.0.1), Debian's container registry for the container
# tests (tests/it/support/registry.rs runs its own instance in a test network
# namespace), the shells the executor's wrapper is tested under
# (busybox ash comes from busybox-static), git and python3 (a test git server).
# A server package installed here must not start a system service: if it was
# not installed before, install it with service starts refused and leave its
# service disabled. A service that was already there is left alone.
new_servers=()
for pkg in openssh-server dropbear-bin docker-registry; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || new_servers+=("$pkg")
done
if [ "${#new_servers[@]}" -gt 0 ]; then
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -q "${new_servers[@]}"
  if [[ " ${new_servers[*]} " == *" openssh-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable ssh.service ssh.socket >/dev/null 2>&1 || true
  fi
  if [[ " ${new_servers[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable docker-registry.service >/dev/null 2>&1 || true
  fi
fi
apt-get install -y -q ksh dash git python3

# Nix tooling for scripts/check-nix: Debian's Nix (only `nix-instantiate
# --parse` and pure `--eval` are used: nixpkgs cannot be fetched here), and
# the Nix formatter and dead-code linter at pinned versions from crates.io.
# The formatter is nixfmt, the official (RFC 166) one that the flake's
# `nix fmt` runs; upstream nixfmt is a Haskell program with no Debian 12
# package, so this installs nixfmt_rs, its Rust port, which installs a binary
# named `nixfmt` with the same flags and aims at byte-identical output
# (checked by its authors against nixfmt 1.2.0 over all of nixpkgs).
apt-get install -y -q nix-bin
install_crate() { # CRATE VERSION [BINARY]: cargo install unless that version is there
  if ! "${3:-$1}" --version 2>/dev/null | grep -q " $2\$"; then
    cargo install --locked --version "$2" "$1"
  fi
}
if command -v cargo >/dev/null 2>&1; then
  install_crate nixfmt_rs 0.5.3 nixfmt
  install_crate deadnix 1.3.1
else
  echo "setup-host.sh: cargo is missing; install Rust, then run this again for nixfmt and deadnix" >&2
  exit 1
fi

#!/usr/bin/env bash
# Installs the host packages Solstice's tests and image recipes need (Debian 12).
set -euo pipefail
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
apt-get update -q
apt-get install -y -q -t bookworm-backports qemu-system-x86 qemu-utils
apt-get install -y -q debootstrap busybox-static cpio mtools syslinux syslinux-common dosfstools fdisk e2fsprogs zstd xz-utils \
  kmod gzip openssh-client
# Only for images/smoke.sh (Solstice writes its seeds itself).
apt-get install -y -q genisoimage
# Test-only: real SSH servers for the ssh module's tests (they run their own
# instances on 127.0.0.1; no system service is used), and the shells the
# executor's wrapper is tested under (busybox ash comes from busybox-static).
apt-get install -y -q openssh-server dropbear-bin ksh dash git python3
# Never leave a system sshd/dropbear listening because of the packages above.
for svc in ssh dropbear; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled "$svc" >/dev/null 2>&1; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done

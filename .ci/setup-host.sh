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

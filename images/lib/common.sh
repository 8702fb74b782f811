# shellcheck shell=bash
# Helpers shared by the image recipes. Sourced by images/build.sh (bash, set -euo pipefail); needs log and die.

# need CMD...: fail early, with the fix, when a host tool is missing.
need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || die "Host tool '$c' is missing: run .ci/setup-host.sh (as root)"
  done
}

# apt_fetch DIR PKG...: download the current .deb of each package from the host's apt sources into DIR.
apt_fetch() {
  local dir=$1
  shift
  mkdir -p "$dir"
  (cd "$dir" && apt-get download -q -o APT::Sandbox::User=root "$@" >&2) ||
    die "apt-get download $* failed: run 'apt-get update' (or .ci/setup-host.sh) and retry"
}

# deb_extract DIR DEB...: unpack the data part of each .deb into DIR.
deb_extract() {
  local dir=$1 deb
  shift
  mkdir -p "$dir"
  for deb in "$@"; do dpkg-deb -x "$deb" "$dir"; done
}

# kernel_package META: the versioned linux-image package a meta package (linux-image-cloud-amd64) depends on.
kernel_package() {
  local meta=$1 dir dep
  dir=$(mktemp -d "$WORK/meta.XXXXXX")
  apt_fetch "$dir" "$meta"
  dep=$(dpkg-deb -f "$dir"/*.deb Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n1)
  rm -rf "$dir"
  [ -n "$dep" ] || die "Cannot find the kernel package that $meta depends on"
  printf '%s\n' "$dep"
}

# make_boot_disk OUT_RAW KERNEL INITRD CMDLINE [ROOT_IMG]
# Writes a raw BIOS-bootable disk without loop devices or mounts:
#   MBR (syslinux mbr.bin) | p1: FAT, active, syslinux + vmlinuz + initrd.img | p2 (optional): ROOT_IMG as is.
# Partitions start on 1 MiB boundaries.
make_boot_disk() {
  local out=$1 kernel=$2 initrd=$3 cmdline=$4 root=${5:-}
  local mib=1048576 boot_mib root_mib=0 part fat mbr
  need sfdisk mkfs.vfat mcopy syslinux
  mbr=/usr/lib/syslinux/mbr/mbr.bin
  [ -f "$mbr" ] || die "Missing $mbr: install syslinux-common"
  boot_mib=$((($(stat -c %s "$kernel") + $(stat -c %s "$initrd")) / mib + 8))
  if [ -n "$root" ]; then
    root_mib=$((($(stat -c %s "$root") + mib - 1) / mib))
  fi
  fat="$WORK/boot.fat"
  rm -f "$fat"
  # -h 2048: the partition's start sector, which the FAT boot sector needs to find ldlinux.sys.
  mkfs.vfat -n SOLBOOT -h 2048 -C "$fat" $((boot_mib * 1024)) >/dev/null
  cat >"$WORK/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND $cmdline
EOF
  mcopy -i "$fat" "$kernel" ::/vmlinuz
  mcopy -i "$fat" "$initrd" ::/initrd.img
  mcopy -i "$fat" "$WORK/syslinux.cfg" ::/syslinux.cfg
  syslinux --install "$fat"

  rm -f "$out"
  truncate -s $(((1 + boot_mib + root_mib) * mib)) "$out"
  part="start=2048, size=$((boot_mib * 2048)), type=c, bootable"
  if [ -n "$root" ]; then
    part="$part
start=$(((1 + boot_mib) * 2048)), size=$((root_mib * 2048)), type=83"
  fi
  printf 'label: dos\nunit: sectors\n%s\n' "$part" | sfdisk -q "$out" >&2
  dd if="$mbr" of="$out" bs=440 count=1 conv=notrunc status=none
  dd if="$fat" of="$out" bs=1M seek=1 conv=notrunc,sparse status=none
  if [ -n "$root" ]; then
    dd if="$root" of="$out" bs=1M seek=$((1 + boot_mib)) conv=notrunc,sparse status=none
  fi
  rm -f "$fat"
}

# to_qcow2 RAW OUT: compact qcow2 copy of a raw disk.
to_qcow2() {
  qemu-img convert -q -f raw -O qcow2 "$1" "$2"
}

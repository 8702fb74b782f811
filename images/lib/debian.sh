# shellcheck shell=bash
# The Debian bookworm guest shared by the "debian" and "runner" recipes: debootstrap minbase with Debian's cloud
# kernel, cloud-init (NoCloud only, trimmed), OpenSSH, bash, git, git-lfs and sudo (lib/debian/packages), the
# files of lib/debian/overlay, then the recipe's own additions.
# Layout: p1 FAT (syslinux, vmlinuz, initrd.img), p2 ext4 root labelled solroot, built with mkfs.ext4 -d (no mount).
# Sourced by a recipe, which build.sh sources after lib/common.sh (WORK, log, die, need are defined).

DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=http://deb.debian.org/debian
DEBIAN_CMDLINE="root=LABEL=solroot ro console=ttyS0 ci.ds=NoCloud net.ifnames=0 quiet loglevel=4 random.trust_cpu=on"
DEBIAN_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/debian

# package_list FILE...: the package names of list files (one a line, # comments), comma-separated.
package_list() {
  sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$@" | paste -sd, -
}

# debian_build_image WORK RECIPE_DIR OUT ROOT_MIB [CUSTOMIZE]
# Builds the guest into OUT (qcow2) with an ext4 root of ROOT_MIB MiB. The recipe may add packages
# (RECIPE_DIR/packages, installed by debootstrap with the base list) and files (RECIPE_DIR/overlay, copied over
# lib/debian/overlay). CUSTOMIZE, a function name, runs as `CUSTOMIZE ROOT RECIPE_DIR` while /proc, /sys and /dev are
# mounted in the chroot and the host's resolv.conf stands in for the guest's, so it may chroot and download.
debian_build_image() {
  local work=$1 recipe=$2 out=$3 root_mib=$4 customize=${5:-}
  local root=$work/root include kver used_mib lists=("$DEBIAN_LIB/packages")
  need debootstrap mkfs.ext4 chroot qemu-img
  [ ! -f "$recipe/packages" ] || lists+=("$recipe/packages")
  include=$(package_list "${lists[@]}")

  log "debootstrap $DEBIAN_SUITE (minbase + $include)"
  debootstrap --variant=minbase --include="$include" "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; [ ! -f "$root/debootstrap/debootstrap.log" ] || tail -n 30 "$root/debootstrap/debootstrap.log" >&2; die "debootstrap failed"; }

  log "configuring the root file system"
  (cd "$DEBIAN_LIB/overlay" && tar -cf - .) | (cd "$root" && tar -xf - --no-same-owner)
  if [ -d "$recipe/overlay" ]; then
    (cd "$recipe/overlay" && tar -cf - .) | (cd "$root" && tar -xf - --no-same-owner)
  fi
  # Keys, ids and state must not be baked into the image: every VM gets its own from cloud-init and the seed.
  rm -f "$root"/etc/ssh/ssh_host_*
  : >"$root/etc/machine-id"
  rm -f "$root/var/lib/dbus/machine-id"
  # No getty on the (absent) VGA console; the serial getty comes from console=ttyS0.
  ln -sf /dev/null "$root/etc/systemd/system/getty@tty1.service"
  # Units that only cost a throw-away VM boot time. cloud-init's local and config stages are not needed (see
  # 90-solstice.cfg).
  for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    man-db.timer sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount \
    cloud-init-local.service cloud-config.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$t"
  done

  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys"
  mount --bind /dev "$root/dev"
  if [ -n "$customize" ]; then
    # The guest's resolv.conf is systemd-resolved's stub (a dangling link in a chroot): borrow the host's.
    rm -f "$work/resolv.conf.guest"
    if [ -e "$root/etc/resolv.conf" ] || [ -L "$root/etc/resolv.conf" ]; then
      mv "$root/etc/resolv.conf" "$work/resolv.conf.guest"
    fi
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    # Packages installed now must not start services in the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    "$customize" "$root" "$recipe"
    rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf"
    if [ -e "$work/resolv.conf.guest" ] || [ -L "$work/resolv.conf.guest" ]; then
      mv "$work/resolv.conf.guest" "$root/etc/resolv.conf"
    fi
  fi
  kver=$(cd "$root/lib/modules" && ls | head -n1)
  log "initramfs for kernel $kver"
  chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service >&2
  chroot "$root" update-initramfs -u -k "$kver" >&2
  chroot "$root" cloud-init clean --logs --seed >&2
  chroot "$root" apt-get clean
  umount "$root/dev" "$root/sys" "$root/proc"
  # The package lists stay when the recipe sets DEBIAN_KEEP_APT_LISTS=1 (jobs may `apt-get install` at once).
  [ "${DEBIAN_KEEP_APT_LISTS:-0}" = 1 ] || rm -rf "$root"/var/lib/apt/lists/*
  rm -rf "$root"/var/cache/apt/*.bin "$root"/var/log/*.log "$root"/tmp/* "$root/debootstrap"
  [ -z "$(find "$root/etc/ssh" -name 'ssh_host_*')" ] || die "SSH host keys left in the image"
  [ -z "$(find "$root/root" "$root/home" -name authorized_keys)" ] || die "authorized_keys baked into the image"

  cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
  cp "$root/boot/initrd.img-$kver" "$work/initrd.img"
  used_mib=$(du -sm "$root" | cut -f1)
  log "root file system: $used_mib MiB used, ext4 of $root_mib MiB; initrd $(du -h "$work/initrd.img" | cut -f1)"
  [ "$used_mib" -lt $((root_mib * 3 / 4)) ] || die "Root file system does not fit: raise the recipe's root size"
  mkfs.ext4 -q -F -L solroot -d "$root" -E root_owner=0:0 "$work/root.ext4" "${root_mib}M"
  rm -rf --one-file-system "$root"

  log "writing the boot disk"
  make_boot_disk "$work/disk.raw" "$work/vmlinuz" "$work/initrd.img" "$DEBIAN_CMDLINE" "$work/root.ext4"
  rm -f "$work/root.ext4"
  to_qcow2 "$work/disk.raw" "$out"
}

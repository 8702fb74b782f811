# shellcheck shell=bash
# Recipe for the "debian" guest: Debian bookworm (debootstrap minbase) with Debian's cloud kernel, cloud-init
# (NoCloud only, trimmed), OpenSSH, bash, git, git-lfs and sudo. Default user: debian (cloud-init's default user config).
# Layout: p1 FAT (syslinux, vmlinuz, initrd.img), p2 ext4 root labelled solroot, built with mkfs.ext4 -d (no mount).
# Sourced by images/build.sh, which provides WORK, log, die and lib/common.sh.

DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=http://deb.debian.org/debian
DEBIAN_ROOT_MIB=3072
DEBIAN_CMDLINE="root=LABEL=solroot ro console=ttyS0 ci.ds=NoCloud net.ifnames=0 quiet loglevel=4 random.trust_cpu=on"

build_image() {
  local work=$1 recipe=$2 out=$3
  local root=$work/root include kver used_mib
  need debootstrap mkfs.ext4 chroot qemu-img
  include=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$recipe/packages" | paste -sd, -)

  log "debootstrap $DEBIAN_SUITE (minbase + $include)"
  debootstrap --variant=minbase --include="$include" "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; [ ! -f "$root/debootstrap/debootstrap.log" ] || tail -n 30 "$root/debootstrap/debootstrap.log" >&2; die "debootstrap failed"; }

  log "configuring the root file system"
  (cd "$recipe/overlay" && tar -cf - .) | (cd "$root" && tar -xf - --no-same-owner)
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
  kver=$(cd "$root/lib/modules" && ls | head -n1)
  log "initramfs for kernel $kver"
  chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service >&2
  chroot "$root" update-initramfs -u -k "$kver" >&2
  chroot "$root" cloud-init clean --logs --seed >&2
  chroot "$root" apt-get clean
  umount "$root/dev" "$root/sys" "$root/proc"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log "$root"/tmp/* "$root/debootstrap"
  [ -z "$(find "$root/etc/ssh" -name 'ssh_host_*')" ] || die "SSH host keys left in the image"
  [ -z "$(find "$root/root" "$root/home" -name authorized_keys)" ] || die "authorized_keys baked into the image"

  cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
  cp "$root/boot/initrd.img-$kver" "$work/initrd.img"
  used_mib=$(du -sm "$root" | cut -f1)
  log "root file system: $used_mib MiB used, ext4 of $DEBIAN_ROOT_MIB MiB; initrd $(du -h "$work/initrd.img" | cut -f1)"
  [ "$used_mib" -lt $((DEBIAN_ROOT_MIB * 3 / 4)) ] || die "Root file system does not fit: raise DEBIAN_ROOT_MIB"
  mkfs.ext4 -q -F -L solroot -d "$root" -E root_owner=0:0 "$work/root.ext4" "${DEBIAN_ROOT_MIB}M"
  rm -rf --one-file-system "$root"

  log "writing the boot disk"
  make_boot_disk "$work/disk.raw" "$work/vmlinuz" "$work/initrd.img" "$DEBIAN_CMDLINE" "$work/root.ext4"
  rm -f "$work/root.ext4"
  to_qcow2 "$work/disk.raw" "$out"
}

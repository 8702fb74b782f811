# shellcheck shell=bash
# Recipe for the "runner" guest: the shared Debian bookworm guest of lib/debian.sh with the conventions of GitHub's
# hosted Ubuntu images that real workflows rely on, for jobs labelled like `ubuntu-latest`:
# - user `runner` (uid 1001) with passwordless sudo; Rust through rustup in ~runner/.cargo and ~runner/.rustup;
# - apt assumes yes and never prompts (apt.conf.d, debconf, DEBIAN_FRONTEND in /etc/environment); the package lists
#   stay in the image, so `sudo apt-get install PKG` works without `apt-get update` while the mirror still has the
#   listed versions;
# - PATH starts with ~/.cargo/bin and ~/.local/bin in every SSH session (pam_env);
# - pip installs outside a venv (/etc/pip.conf); node and npm from npm in /usr/local;
# - the packages of packages.apt (compilers, cmake, python3 with pip and venv, jq, zstd, ...).
# Sourced by images/build.sh, which provides WORK, log, die and lib/common.sh.

# shellcheck source=../lib/debian.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/debian.sh"

RUNNER_USER=runner
RUNNER_UID=1001

build_image() {
  DEBIAN_KEEP_APT_LISTS=1 debian_build_image "$1" "$2" "$3" 6144 runner_customize
}

# runner_customize ROOT RECIPE_DIR (chroot mounts and DNS set up by debian_build_image).
runner_customize() {
  local root=$1 recipe=$2 pkgs rustup toolchain home=/home/$RUNNER_USER
  pkgs=$(package_list "$recipe/packages.apt" | tr , ' ')
  log "apt-get install (bookworm, -updates, -security): $pkgs"
  chroot "$root" apt-get update -q >&2
  # shellcheck disable=SC2086 # a list of package names
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q $pkgs >&2
  chroot "$root" apt-get clean

  log "apt and debconf never prompt"
  echo 'debconf debconf/frontend select Noninteractive' | chroot "$root" debconf-set-selections
  printf 'DEBIAN_FRONTEND=noninteractive\n' >>"$root/etc/environment"
  # pam_env expands @{HOME} per user: ~/.cargo/bin (rustup) and ~/.local/bin (pip --user) lead PATH in SSH sessions.
  cat >>"$root/etc/security/pam_env.conf" <<'EOF'

# Solstice runner image: rustup's and pip's per-user bin directories first, as on GitHub's hosted images.
PATH DEFAULT=@{HOME}/.cargo/bin:@{HOME}/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF

  log "user $RUNNER_USER ($RUNNER_UID) with passwordless sudo"
  chroot "$root" useradd --create-home --uid "$RUNNER_UID" --user-group --shell /bin/bash \
    --groups sudo,adm,systemd-journal "$RUNNER_USER"
  chroot "$root" visudo -c -q -f /etc/sudoers.d/90-runner >&2 || die "sudoers.d/90-runner does not parse"

  install_node "$root"
  install_npm "$root"
  chroot "$root" npm --version >/dev/null || die "npm does not run in the image"

  toolchain=$(pin rustup toolchain)
  [ -n "$toolchain" ] || die "No rustup toolchain pinned in images/pins.json (rustup.toolchain)"
  rustup=$(fetch_pinned rustup)
  install -m 755 "$rustup" "$root/tmp/rustup-init"
  # rustup in the chroot trusts what the host trusts, for this run only: a host behind a TLS-inspecting proxy
  # names its extra CA in SSL_CERT_FILE. The bundle is not left in the image.
  install -m 644 "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$root/tmp/host-ca.pem" ||
    die "No CA bundle on the host for rustup: install ca-certificates or set SSL_CERT_FILE"
  log "rustup $(pin rustup version), Rust $toolchain (profile minimal + rustfmt, clippy) for $RUNNER_USER"
  chroot --userspec="$RUNNER_USER:$RUNNER_USER" "$root" env -i HOME="$home" USER="$RUNNER_USER" \
    PATH=/usr/bin:/bin SSL_CERT_FILE=/tmp/host-ca.pem /tmp/rustup-init -y --quiet --no-modify-path \
    --profile minimal --default-toolchain "$toolchain" --component rustfmt --component clippy >&2 ||
    die "rustup-init failed (it downloads from static.rust-lang.org)"
  rm -f "$root/tmp/rustup-init" "$root/tmp/host-ca.pem"
  rm -rf "$root$home/.rustup/downloads" "$root$home/.rustup/tmp"
  chroot --userspec="$RUNNER_USER:$RUNNER_USER" "$root" env -i HOME="$home" "$home/.cargo/bin/cargo" --version >&2
}

#!/usr/bin/env bash
# Boots a built guest image the way Solstice does and proves it takes its SSH key (and host key) from the seed.
#
#   images/smoke.sh NAME        (NAME: tiny or debian; builds the image first if it is not cached)
#
# tiny:   NoCloud ISO seed as root (pinned host key, no bash, hostname, poweroff); NoCloud ISO seed with a
#         non-root user; metadata cpio seed on a raw virtio disk.
# debian: NoCloud ISO seed as user debian (pinned host key, hostname, sudo, cloud-init status --long).
# Prints the boot-to-SSH time of each boot. Exits non-zero on the first failed check.
# To check an image as configured (any image, illumos too) with Solstice's own seed and QEMU command line, run
# `solstice doctor --image NAME --boot` instead (docs/images.md).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
name=${1:-}
case "$name" in
  tiny) boot_timeout=${SMOKE_BOOT_TIMEOUT:-60} ;;
  debian) boot_timeout=${SMOKE_BOOT_TIMEOUT:-300} ;;
  *) echo "Usage: images/smoke.sh tiny|debian" >&2; exit 2 ;;
esac
smp=${SMOKE_SMP:-2}

for c in qemu-system-x86_64 qemu-img genisoimage cpio ssh ssh-keygen; do
  command -v "$c" >/dev/null || { echo "Missing host tool '$c': run .ci/setup-host.sh" >&2; exit 1; }
done

log() { printf '[smoke %s] %s\n' "$name" "$*" >&2; }
fail() {
  printf '[smoke %s] FAIL: %s\n' "$name" "$*" >&2
  if [ -n "${console:-}" ] && [ -f "$console" ]; then
    echo "---- last 40 console lines ($console) ----" >&2
    tail -n 40 "$console" >&2
  fi
  exit 1
}

T=$(mktemp -d "${TMPDIR:-/tmp}/solstice-smoke-$name.XXXXXX")
qemu_pid=""
console=""
stop_qemu() {
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
  qemu_pid=""
}
cleanup() {
  rc=$?
  set +e
  stop_qemu
  rm -rf "$T"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

base=$("$here/build.sh" "$name") || fail "building the image failed (see above)"
log "image: $base"

ssh-keygen -q -t ed25519 -N '' -C solstice-job -f "$T/key"
ssh-keygen -q -t ed25519 -N '' -C solstice-host -f "$T/hostkey"

# A TCP port nobody listens on (state 0A = LISTEN in /proc/net/tcp).
free_port() {
  local p hex
  while :; do
    p=$((20000 + RANDOM % 20000))
    hex=$(printf ':%04X' "$p")
    if ! awk '$4 == "0A" {print $2}' /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -q "$hex\$"; then
      echo "$p"
      return
    fi
  done
}

# nocloud_seed DIR USER HOSTNAME: writes DIR/seed.iso the way Solstice does (with the seeded host key).
nocloud_seed() {
  local dir=$1 user=$2 host=$3
  mkdir -p "$dir/seed"
  printf 'instance-id: solstice-smoke-%s\nlocal-hostname: %s\n' "$RANDOM" "$host" >"$dir/seed/meta-data"
  {
    echo '#cloud-config'
    echo 'users:'
    echo "  - name: $user"
    echo '    lock_passwd: true'
    [ "$user" = root ] || echo '    sudo: "ALL=(ALL) NOPASSWD:ALL"'
    echo '    ssh_authorized_keys:'
    echo "      - $(cat "$T/key.pub")"
    echo 'disable_root: false'
    echo 'ssh_pwauth: false'
    echo 'ssh_deletekeys: true'
    echo 'ssh_genkeytypes: []'
    echo 'ssh_keys:'
    echo '  ed25519_private: |'
    sed 's/^/    /' "$T/hostkey"
    echo "  ed25519_public: $(cat "$T/hostkey.pub")"
  } >"$dir/seed/user-data"
  genisoimage -quiet -volid cidata -joliet -rock -o "$dir/seed.iso" "$dir/seed/meta-data" "$dir/seed/user-data"
}

# cpio_seed DIR HOSTNAME: writes DIR/seed.cpio (metadata-agent generic form: raw cpio at LBA 0).
cpio_seed() {
  local dir=$1 host=$2 size
  mkdir -p "$dir/cpio"
  cp "$T/key.pub" "$dir/cpio/authorized_keys"
  echo "$host" >"$dir/cpio/nodename"
  (cd "$dir/cpio" && printf 'authorized_keys\nnodename\n' | cpio -o -H odc --quiet) >"$dir/seed.cpio"
  size=$(stat -c %s "$dir/seed.cpio")
  truncate -s $(((size + 511) / 512 * 512)) "$dir/seed.cpio"
}

# banner PORT: true when something on PORT sends an SSH identification line within 0.5 s.
banner() {
  timeout 0.5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && head -c 4 <&3' _ "$1" 2>/dev/null | grep -q '^SSH-'
}

# boot DIR SEEDKIND USER: starts QEMU with Solstice's argv and waits for SSH; sets port, qemu_pid, boot_secs.
boot() {
  local dir=$1 kind=$2 user=$3 seed_arg start now
  qemu-img create -q -f qcow2 -F qcow2 -b "$base" "$dir/overlay.qcow2"
  case "$kind" in
    iso) seed_arg=(-drive "file=$dir/seed.iso,media=cdrom,if=ide,readonly=on") ;;
    cpio) seed_arg=(-drive "file=$dir/seed.cpio,format=raw,if=virtio,readonly=on") ;;
  esac
  port=$(free_port)
  console="$dir/console.log"
  start=$(date +%s%N)
  qemu-system-x86_64 -machine pc -accel tcg -cpu qemu64,+rdrand -smp "$smp" -m 256 -nodefaults -display none \
    -serial "file:$console" -device virtio-rng-pci \
    -drive "file=$dir/overlay.qcow2,if=virtio,format=qcow2" "${seed_arg[@]}" \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 \
    2>"$dir/qemu.err" &
  qemu_pid=$!
  log "booting ($kind seed, user $user, port $port, $smp vCPU)"
  # User-mode networking accepts the TCP connection before the guest listens: wait for the SSH banner with a
  # short read timeout, then authenticate and run true.
  until banner "$port" && timeout 20 ssh -i "$T/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o BatchMode=yes -o ConnectTimeout=5 -o LogLevel=ERROR -p "$port" "$user@127.0.0.1" true 2>/dev/null; do
    kill -0 "$qemu_pid" 2>/dev/null || fail "QEMU exited: $(cat "$dir/qemu.err")"
    now=$(date +%s%N)
    [ $(((now - start) / 1000000000)) -lt "$boot_timeout" ] || fail "no SSH after $boot_timeout s"
    sleep 0.1
  done
  now=$(date +%s%N)
  boot_ms=$(((now - start) / 1000000))
  boot_secs=$(printf '%d.%03d' $((boot_ms / 1000)) $((boot_ms % 1000)))
  log "SSH as $user after $boot_secs s"
}

# gssh USER CMD: SSH into the booted guest; with PIN=1 only if it presents the seeded host key.
gssh() {
  local user=$1
  shift
  if [ "${PIN:-0}" = 1 ]; then
    printf '[127.0.0.1]:%s %s\n' "$port" "$(cut -d' ' -f1,2 "$T/hostkey.pub")" >"$T/known_hosts"
    timeout 120 ssh -i "$T/key" -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$T/known_hosts" \
      -o HostKeyAlgorithms=ssh-ed25519 -o BatchMode=yes -o LogLevel=ERROR -p "$port" "$user@127.0.0.1" "$@"
  else
    timeout 120 ssh -i "$T/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
      -o LogLevel=ERROR -p "$port" "$user@127.0.0.1" "$@"
  fi
}

check_common() {
  local user=$1 host=$2 got
  PIN=1 gssh "$user" true || fail "guest does not present the seeded ed25519 host key"
  got=$(gssh "$user" hostname)
  [ "$got" = "$host" ] || fail "hostname is '$got', expected '$host' from the seed"
  got=$(gssh "$user" id -un)
  [ "$got" = "$user" ] || fail "logged in as '$got', expected '$user'"
  log "host key pinned, hostname $host, user $user: ok"
}

results=()

if [ "$name" = tiny ]; then
  # 1. NoCloud ISO, root.
  d=$T/iso-root
  nocloud_seed "$d" root tiny-smoke
  boot "$d" iso root
  results+=("tiny, NoCloud ISO, root: $boot_secs s")
  check_common root tiny-smoke
  if gssh root 'command -v bash' >/dev/null 2>&1; then fail "bash is present in the tiny image"; fi
  [ "$(gssh root 'readlink /bin/sh')" = /bin/busybox ] || fail "/bin/sh is not busybox"
  gssh root 'for c in sh tar mkdir cat chmod kill ps sleep env sed grep awk id hostname; do command -v $c >/dev/null || { echo "missing $c"; exit 1; }; done
    touch /tmp/x /home/x /root/x && rm /tmp/x /home/x /root/x' || fail "applets or writable dirs missing"
  echo 'hello' | gssh root 'cat >/tmp/in && grep -q hello /tmp/in' || fail "stdin to a remote command does not arrive"
  log "no bash, busybox sh, applets, writable /tmp /home /root: ok"
  gssh root poweroff || true
  for _ in $(seq 1 100); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$qemu_pid" 2>/dev/null; then fail "poweroff did not stop the guest within 10 s"; fi
  wait "$qemu_pid" 2>/dev/null || true
  qemu_pid=""
  log "poweroff: ok"

  # 2. NoCloud ISO, a non-root user with a home directory.
  d=$T/iso-user
  nocloud_seed "$d" runner tiny-user
  boot "$d" iso runner
  results+=("tiny, NoCloud ISO, runner: $boot_secs s")
  check_common runner tiny-user
  [ "$(gssh runner 'echo $HOME')" = /home/runner ] || fail "runner's home is not /home/runner"
  gssh runner 'touch ~/x /tmp/y' || fail "runner cannot write its home or /tmp"
  stop_qemu

  # 3. metadata cpio seed on a raw virtio disk (no host key: a fresh one is generated).
  d=$T/cpio
  cpio_seed "$d" tiny-cpio
  boot "$d" cpio root
  results+=("tiny, cpio seed, root: $boot_secs s")
  got=$(gssh root hostname)
  [ "$got" = tiny-cpio ] || fail "hostname is '$got', expected 'tiny-cpio' from nodename"
  log "cpio seed: key and nodename: ok"
  stop_qemu
else
  d=$T/iso
  nocloud_seed "$d" debian debian-smoke
  boot "$d" iso debian
  results+=("debian, NoCloud ISO, debian: $boot_secs s")
  check_common debian debian-smoke
  [ "$(gssh debian 'sudo -n id -u')" = 0 ] || fail "passwordless sudo does not work for debian"
  gssh debian 'command -v bash git >/dev/null' || fail "bash or git missing"
  status=$(gssh debian 'cloud-init status --wait --long' || true)
  printf '%s\n' "$status" | sed 's/^/    /' >&2
  printf '%s\n' "$status" | grep -q '^status: done' || fail "cloud-init status is not 'done'"
  if printf '%s\n' "$status" | grep -qi 'degraded\|error:'; then
    if ! printf '%s\n' "$status" | grep -q "errors: \[\]"; then fail "cloud-init reports errors"; fi
  fi
  gssh debian 'cat ~/.ssh/authorized_keys' | grep -qx "$(cat "$T/key.pub")" || fail "authorized_keys is not the seeded key"
  keys=$(gssh debian 'sudo -n sh -c "cat /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys 2>/dev/null"' | grep -v '^#' | sed -n 's/.*\(ssh-[^ ]* [^ ]*\).*/\1/p' | sort -u)
  [ "$keys" = "$(cut -d' ' -f1,2 "$T/key.pub")" ] || fail "the guest authorizes keys other than the seeded one: $keys"
  log "sudo, bash, git, cloud-init done, only the seeded key: ok"
  stop_qemu
fi

for r in "${results[@]}"; do echo "boot-to-SSH: $r"; done
log "PASS"

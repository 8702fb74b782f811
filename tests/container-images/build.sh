#!/usr/bin/env bash
# Builds one of the container images the container tests pull, from Debian
# packages on the host (no public container registry is reachable from the
# test machines), and prints the directory holding it:
#
#   layer.tar.gz   the image's only layer (gzip, files owned by root)
#   config.json    the image configuration (Docker/OCI image config JSON)
#
# The result is cached under ${SOLSTICE_TEST_IMAGES_CACHE:-~/.cache/solstice/test-images},
# keyed by a hash of this script and the image's name: editing a recipe
# rebuilds it, running it again prints the cached directory at once.
# tests/it/support/registry.rs runs it and pushes the result into a test
# registry; it can be run by hand too (as root, for the postgres image).
#
#   tests/container-images/build.sh nobash     glibc + Debian's busybox (sh, tail,
#                                              coreutils applets), no bash
#   tests/container-images/build.sh bash       the same + bash
#   tests/container-images/build.sh postgres   PostgreSQL 15 from Debian's postgresql-15
#
# The glibc images carry libc6, libstdc++6 and libgcc-s1: enough for the
# official node binary when it is mounted in (as actions/runner mounts its
# node at /__e/node). The postgres image's entrypoint initialises a cluster
# in /var/lib/postgresql/data on first start (superuser `postgres`, database
# `postgres`, trust authentication from every address, no password; it
# ignores POSTGRES_PASSWORD, POSTGRES_USER and POSTGRES_DB) and runs the
# server in the foreground listening on every address, port 5432.
# `pg_isready` is in the image for health checks.
set -euo pipefail
name=${1:-}
case "$name" in
  nobash | bash | postgres) ;;
  *) echo "usage: $0 nobash|bash|postgres" >&2; exit 2 ;;
esac
suite=bookworm
mirror=http://deb.debian.org/debian
cache=${SOLSTICE_TEST_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/solstice/test-images}
key=$( (cat "$0"; echo "$name") | sha256sum | cut -c1-16)
out=$cache/$name-$key
if [ -f "$out/config.json" ] && [ -f "$out/layer.tar.gz" ]; then
  echo "$out"
  exit 0
fi
mkdir -p "$cache"
# One build of an image at a time (tests in parallel, a second checkout).
exec 9>"$cache/$name.lock"
flock 9
if [ -f "$out/config.json" ] && [ -f "$out/layer.tar.gz" ]; then
  echo "$out"
  exit 0
fi
work=$(mktemp -d "$cache/.build-$name.XXXXXX")
cleanup() {
  # A debootstrap root may still have /proc or /sys mounted after a failure.
  for m in proc sys dev/pts dev; do
    mountpoint -q "$work/root/$m" 2>/dev/null && umount -l "$work/root/$m" || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
root=$work/root
mkdir -p "$root"

# Downloads Debian packages (the host's apt, its configured mirror) into the
# shared .deb cache and extracts them into $root.
debs=$cache/debs
extract() {
  mkdir -p "$debs"
  (cd "$debs" && apt-get download -q "$@" >&2)
  local p
  for p in "$@"; do
    local f
    f=$(ls "$debs/${p}_"*.deb | sort | tail -n1)
    dpkg-deb -x "$f" "$root"
  done
}

# The base of the two small images: glibc, libstdc++, libgcc_s and Debian's
# (dynamically linked) busybox with a link for each of its applets.
small_base() {
  extract libc6 libstdc++6 libgcc-s1 busybox
  mkdir -p "$root/bin" "$root/usr/bin" "$root/sbin" "$root/usr/sbin" "$root/tmp" "$root/etc" "$root/root" "$root/var/tmp"
  chmod 1777 "$root/tmp" "$root/var/tmp"
  local bb=$root/bin/busybox applet
  # The host runs the image's busybox to list its applets (same glibc ABI).
  for applet in $("$bb" --list-full); do
    [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
}

config() { # ENTRYPOINT CMD EXTRA_ENV [EXTRA_CONFIG] (JSON, or null; EXTRA_CONFIG: more "key":value pairs)
  local diff
  diff=$(gzip -dc "$work/layer.tar.gz" | sha256sum | cut -d' ' -f1)
  local env='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'
  [ "$3" = null ] || env="$env,$3"
  printf '{"architecture":"amd64","os":"linux","config":{"Env":[%s],"Entrypoint":%s,"Cmd":%s,"WorkingDir":"/"%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"tests/container-images/build.sh %s"}]}\n' \
    "$env" "$1" "$2" "${4:+,$4}" "$diff" "$name" >"$work/config.json"
}

pack() {
  # Trim what no test reads.
  rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/lintian" \
    "$root/usr/share/locale" "$root/var/cache/apt" "$root/var/lib/apt/lists" "$root/var/cache/debconf"/*-old
  mkdir -p "$root/var/cache/apt" "$root/var/lib/apt/lists"
  ldconfig -r "$root" 2>/dev/null || true
  tar -C "$root" --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -cf - . | gzip -n -6 >"$work/layer.tar.gz"
}

case "$name" in
  nobash)
    small_base
    pack
    config null '["sh"]' null
    ;;
  bash)
    small_base
    extract bash libtinfo6
    pack
    config null '["bash"]' null
    ;;
  postgres)
    if [ "$(id -u)" -ne 0 ]; then
      echo "build.sh postgres: debootstrap needs root" >&2
      exit 1
    fi
    debootstrap --variant=minbase --include=postgresql-15 --exclude=postgresql-common-dev \
      "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
      tail -n 30 "$work/debootstrap.log" >&2
      exit 1
    }
    # No cluster from the package's postinst: the entrypoint makes one on first start.
    rm -rf "$root/var/lib/postgresql/15" "$root/etc/postgresql/15"
    for m in proc sys dev/pts dev; do
      mountpoint -q "$root/$m" && umount -l "$root/$m" || true
    done
    rm -rf "$root/usr/share/zoneinfo/right" "$root/usr/share/zoneinfo/posix" "$root/var/log"/*.log \
      "$root/usr/share/i18n" "$root/var/cache/apt/archives"/*.deb
    # LLVM (for JIT only, which the entrypoint turns off) and perl's modules
    # (only Debian's cluster wrappers use them) are most of the size.
    rm -rf "$root/usr/lib/postgresql/15/lib/bitcode" "$root/usr/lib/postgresql/15/lib"/llvmjit* \
      "$root/usr/lib/x86_64-linux-gnu"/libLLVM-* "$root/usr/lib/x86_64-linux-gnu"/libz3.so* \
      "$root/usr/share/perl" "$root/usr/lib/x86_64-linux-gnu/perl"
    mkdir -p "$root/usr/local/bin"
    cat >"$root/usr/local/bin/solstice-postgres" <<'SH'
#!/bin/sh
# Entrypoint of the test image solstice-test/postgres:15
# (tests/container-images/build.sh): a cluster with trust authentication on
# first start, then the server in the foreground on every address.
set -e
data=${PGDATA:-/var/lib/postgresql/data}
bin=/usr/lib/postgresql/15/bin
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$data" /run/postgresql
  chown postgres:postgres "$data" /run/postgresql
  chmod 700 "$data"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$data/PG_VERSION" ]; then
  "$bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  echo "host all all 0.0.0.0/0 trust" >>"$data/pg_hba.conf"
  echo "host all all ::/0 trust" >>"$data/pg_hba.conf"
fi
exec "$bin/postgres" -D "$data" -c listen_addresses='*' -c jit=off -c unix_socket_directories=/run/postgresql "$@"
SH
    chmod 755 "$root/usr/local/bin/solstice-postgres"
    pack
    config '["/usr/local/bin/solstice-postgres"]' null '"PGDATA=/var/lib/postgresql/data","LANG=C.UTF-8"' \
      '"ExposedPorts":{"5432/tcp":{}},"StopSignal":"SIGINT"'
    ;;
esac
rm -rf "$out.tmp" "$out"
mkdir "$out.tmp"
mv "$work/layer.tar.gz" "$work/config.json" "$out.tmp/"
# Older builds of this image (an earlier recipe) are not used any more.
for old in "$cache/$name"-*; do
  [ -d "$old" ] && [ "$old" != "$out.tmp" ] && rm -rf "$old"
done
mv "$out.tmp" "$out"
echo "$out"

#!/usr/bin/env bash
# Builds a Solstice guest image from Debian packages and caches it outside the repository.
#
#   images/build.sh NAME [--force]
#
# NAME is a directory under images/ holding a recipe.sh (tiny, debian, runner). Progress goes to stderr; on success the
# only line on stdout is the absolute path of the qcow2 image. The cache entry is
#   ${SOLSTICE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/solstice/images}/NAME-<hash>.qcow2
# where <hash> covers this script, images/pins.json, images/lib/ and images/NAME/. An existing entry is reused unless --force.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

usage() {
  echo "Usage: images/build.sh NAME [--force]   (NAME: tiny, debian, runner)" >&2
  exit 2
}

name=""
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h | --help) usage ;;
    -*) echo "Unknown option $arg" >&2; usage ;;
    *) [ -z "$name" ] || usage; name=$arg ;;
  esac
done
[ -n "$name" ] || usage
case "$name" in
  */* | .*) echo "Image name must be a plain directory name under images/" >&2; exit 2 ;;
esac
recipe_dir="$here/$name"
if [ ! -f "$recipe_dir/recipe.sh" ]; then
  echo "No recipe for image '$name': expected $recipe_dir/recipe.sh" >&2
  exit 2
fi

log() { printf '[build %s] %s\n' "$name" "$*" >&2; }
die() { printf '[build %s] ERROR: %s\n' "$name" "$*" >&2; exit 1; }

# The hash covers every file that defines the image: path (relative to images/) and content.
recipe_hash() {
  (
    cd "$here"
    { echo build.sh; echo pins.json; find lib "$name" -type f; } | LC_ALL=C sort | while IFS= read -r f; do
      printf '%s  %s\n' "$(sha256sum <"$f" | cut -d' ' -f1)" "$f"
    done
  ) | sha256sum | cut -c1-16
}

cache_dir="${SOLSTICE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/solstice/images}"
mkdir -p "$cache_dir"
cache_dir=$(cd "$cache_dir" && pwd)
hash=$(recipe_hash)
out="$cache_dir/$name-$hash.qcow2"

if [ -f "$out" ] && [ "$force" -eq 0 ]; then
  log "cached: $out"
  printf '%s\n' "$out"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "Building images needs root (debootstrap, device nodes, file ownership): run as root"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/solstice-image-$name.XXXXXX")
partial="$cache_dir/.$name-$hash.qcow2.partial.$$"
cleanup() {
  rc=$?
  set +e
  # A chroot may still have file systems mounted (debootstrap, recipe hooks): unmount before removing.
  if [ -d "$WORK" ]; then
    { grep -o " $WORK/[^ ]*" /proc/self/mounts 2>/dev/null || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$WORK"
  fi
  rm -f "$partial"
  [ "$rc" -eq 0 ] || log "failed (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck source=lib/common.sh
. "$here/lib/common.sh"
# shellcheck source=/dev/null
. "$recipe_dir/recipe.sh"

start=$(date +%s)
log "building into $WORK (recipe hash $hash)"
# The recipe defines build_image WORKDIR RECIPE_DIR OUT_QCOW2.
# Recipe tools may print on stdout (mke2fs does): keep stdout for the path only.
build_image "$WORK" "$recipe_dir" "$partial" >&2
[ -s "$partial" ] || die "Recipe produced no image"
qemu-img check -q "$partial" || die "Built image fails qemu-img check"
mv -f "$partial" "$out"

# Old cache entries of the same image are superseded.
for old in "$cache_dir/$name"-*.qcow2; do
  case "${old##*/}" in
    "$name"-????????????????.qcow2) [ "$old" = "$out" ] || { log "removing old cache entry $old"; rm -f "$old"; } ;;
  esac
done
log "done in $(($(date +%s) - start)) s: $out ($(du -h "$out" | cut -f1))"
printf '%s\n' "$out"

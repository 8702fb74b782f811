#!/usr/bin/env bash
# Pins an illumos cloud image in images/pins.json: reads the publisher's
# checksum file, downloads the image into the Nix store with
# `nix store prefetch-file`, and writes the hash only if the two agree.
#
#   images/update-pins.sh omnios [--url URL]
#   images/update-pins.sh openindiana --url https://dlc.openindiana.org/isos/hipster/<YYYYMMDD>/OI-hipster-cloudimage.img.zst
#
# Without --url the URL already in pins.json is used. Needs Nix (with the
# nix-command feature, enabled here per call), curl and python3, and a
# network path to the publisher. Commit images/pins.json afterwards.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  echo "Usage: images/update-pins.sh omnios|openindiana [--url URL]" >&2
  exit 2
}
[ $# -ge 1 ] || usage
name=$1
shift
url=
while [ $# -gt 0 ]; do
  case $1 in
    --url) [ $# -ge 2 ] || usage; url=$2; shift 2 ;;
    *) usage ;;
  esac
done
case $name in omnios | openindiana) ;; *) usage ;; esac

pin() { python3 -c 'import json,sys; v=json.load(open("pins.json"))[sys.argv[1]].get(sys.argv[2]); print(v if v else "")' "$name" "$1"; }
[ -n "$url" ] || url=$(pin url)
if [ -z "$url" ]; then
  echo "No URL pinned for $name: pass --url with the published cloud image's URL" >&2
  exit 2
fi

# Each publisher's checksum file: OmniOS puts a bare hex digest at <url>.sha256;
# OpenIndiana puts `sha256sum` output at <url>.sha256sum.
case $name in
  omnios)
    checksum_url="$url.sha256"
    release=$(basename "$url" | sed -n 's/^omnios-\(r[0-9]*\)\..*/\1/p')
    ;;
  openindiana)
    checksum_url="$url.sha256sum"
    release=$(basename "$(dirname "$url")")
    ;;
esac
[ -n "$release" ] || { echo "Cannot read the release from $url" >&2; exit 1; }

published=$(curl -fsSL "$checksum_url" | awk '{print tolower($1); exit}')
if ! [[ $published =~ ^[0-9a-f]{64}$ ]]; then
  echo "The checksum file $checksum_url holds no SHA-256 digest" >&2
  exit 1
fi

nix=(nix --extra-experimental-features nix-command)
echo "Downloading $url into the Nix store (this is large) ..." >&2
sri=$("${nix[@]}" store prefetch-file --json --hash-type sha256 "$url" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])')
fetched=$("${nix[@]}" hash convert --hash-algo sha256 --to base16 "$sri")
if [ "$fetched" != "$published" ]; then
  echo "Hash mismatch for $url: the publisher says $published, the download is $fetched. Pins left unchanged." >&2
  exit 1
fi

python3 - "$name" "$release" "$url" "$checksum_url" "$published" <<'PY'
import json, sys
name, release, url, checksum_url, sha256 = sys.argv[1:]
pins = json.load(open("pins.json"))
pins[name] = {"release": release, "url": url, "checksumUrl": checksum_url, "sha256": sha256}
with open("pins.json", "w") as f:
    json.dump(pins, f, indent=2)
    f.write("\n")
PY
echo "Pinned $name $release: $published" >&2

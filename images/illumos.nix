# illumos job guests from the publishers' cloud images: OmniOS (the LTS
# release) and OpenIndiana Hipster. Each is fetched at the version and hash
# pinned in images/pins.json, decompressed if needed, and converted to qcow2
# (a raw image in the Nix store would store its holes as data).
#
# A pin whose hash has not been confirmed is null; evaluating that image then
# fails with the command that pins it (images/update-pins.sh, run on a machine
# that reaches the publisher).
{ pkgs, lib }:
let
  pins = lib.importJSON ./pins.json;

  isPinned = name: (pins.${name}.url or null) != null && (pins.${name}.sha256 or null) != null;

  pinOf =
    name:
    if isPinned name then
      pins.${name}
    else
      throw (
        "The ${name} image has no confirmed pin in images/pins.json. "
        + "On a machine with Nix that reaches the publisher, run: images/update-pins.sh ${name}"
        + lib.optionalString (
          (pins.${name}.url or null) == null
        ) " --url <URL of the published cloud image>"
        + " and commit images/pins.json."
      );

  illumosImage =
    {
      name,
      # Shell that turns "$src" into a file named `disk` (raw or qcow2).
      unpack,
      metadata,
    }:
    let
      pin = pinOf name;
    in
    pkgs.runCommand "solstice-image-${name}-${pin.release}"
      {
        src = pkgs.fetchurl {
          inherit (pin) url sha256;
        };
        nativeBuildInputs = [
          pkgs.qemu-utils
          pkgs.zstd
        ];
        passthru.solstice = metadata // {
          file = "${name}.qcow2";
          format = "qcow2";
          inherit (pin) release;
        };
      }
      ''
        ${unpack}
        mkdir -p $out
        qemu-img convert -O qcow2 disk $out/${name}.qcow2
        qemu-img check $out/${name}.qcow2
      '';

  # Facts from the guest contract (shared/spec/guest-contract.md): serial
  # console on ttya, SSH as root, and minutes to boot under TCG.
  illumosMetadata = {
    os = "illumos";
    firmware = "bios";
    console = "ttya";
    sshUser = "root";
    bootTimeoutSecs = 1200;
    memoryMib = 2048;
    minMemoryMib = 1024;
    # No vmgenid driver on illumos: clones of one saved state would share
    # the kernel's random state. Warm pools (booted guests) work.
    snapshotCapable = false;
  };
in
{
  inherit isPinned;

  omnios = illumosImage {
    name = "omnios";
    # Published as qcow2 already; converting drops nothing but slack.
    unpack = ''cp "$src" disk'';
    metadata = illumosMetadata // {
      # cloud-init is installed; it restarts sshd shortly after sshd first
      # answers, hence two probes.
      seed = "nocloud";
      readinessProbes = 2;
      labels = [
        "omnios"
        "illumos"
      ];
    };
  };

  openindiana = illumosImage {
    name = "openindiana";
    # A zstd-compressed raw disk.
    unpack = ''zstd -d "$src" -o disk'';
    metadata = illumosMetadata // {
      # illumos metadata-agent, generic provider: a cpio archive at LBA 0.
      seed = "metadata-cpio";
      readinessProbes = 2;
      labels = [
        "openindiana"
        "illumos"
      ];
    };
  };
}

# A NixOS job guest as a qcow2 disk: BIOS boot (GRUB on an MBR disk), serial
# console on ttyS0, OpenSSH, and the conventions and tools of Solstice's Debian
# runner image (images/runner), which follow GitHub's hosted Ubuntu images:
# user `runner` (uid 1001) with passwordless sudo, a C toolchain, cmake,
# pkg-config, python3 with pip and venv, node 24, Rust (cargo, rustc, clippy,
# rustfmt), jq, zstd, rsync, zip/unzip, and a Docker engine (started before
# sshd; `runner` is in the `docker` group). It takes its SSH key (and the host key
# Solstice pins) from Solstice's NoCloud seed through cloud-init, with the
# datasource pinned so cloud-init never disables itself.
{ pkgs, lib }:
let
  guest = import (pkgs.path + "/nixos/lib/eval-config.nix") {
    inherit (pkgs.stdenv.hostPlatform) system;
    modules = [
      (
        { modulesPath, ... }:
        {
          imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];

          system.stateVersion = lib.trivial.release;

          boot.loader.grub.device = "/dev/vda";
          boot.growPartition = true;
          boot.kernelParams = [ "console=ttyS0,115200" ];
          boot.loader.timeout = 0;
          fileSystems."/" = {
            device = "/dev/disk/by-label/nixos";
            fsType = "ext4";
            autoResize = true;
          };

          networking.hostName = "solstice-guest";
          networking.useDHCP = true;
          networking.firewall.allowedTCPPorts = [ 22 ];

          services.openssh = {
            enable = true;
            # Only the ed25519 key, the one Solstice's seed carries and pins.
            hostKeys = [
              {
                type = "ed25519";
                path = "/etc/ssh/ssh_host_ed25519_key";
              }
            ];
            settings = {
              PermitRootLogin = "prohibit-password";
              PasswordAuthentication = false;
            };
          };

          services.cloud-init = {
            enable = true;
            network.enable = false;
            settings = {
              # The seed is always a NoCloud ISO on the IDE CD-ROM.
              datasource_list = [
                "NoCloud"
                "None"
              ];
              disable_root = false;
              # Solstice pins the host key it puts in the seed: the `ssh`
              # module must write it in the init stage, which runs before
              # sshd, not in the config stage (NixOS's default), which runs
              # after sshd has loaded its own keys. Setting a stage replaces
              # NixOS's default list, so the whole stage is listed.
              cloud_init_modules = [
                "migrator"
                "seed_random"
                "bootcmd"
                "write-files"
                "growpart"
                "resizefs"
                "update_hostname"
                "resolv_conf"
                "users-groups"
                "ssh"
              ];
              cloud_config_modules = [ "runcmd" ];
            };
          };

          # The job user, as on GitHub's hosted images. Solstice's seed adds
          # its SSH key through cloud-init (the user already exists).
          users.users.runner = {
            isNormalUser = true;
            uid = 1001;
            extraGroups = [
              "wheel"
              "systemd-journal"
              "docker"
            ];
          };
          security.sudo.wheelNeedsPassword = false;

          # A container engine for `container:`, `services:`, Docker actions
          # and `docker` in steps, started at boot (enableOnBoot, the
          # default). sshd waits for it, so the engine is ready when Solstice
          # sees SSH. NixOS's dockerd reads its settings from the Nix store,
          # not /etc/docker/daemon.json: an image's `registry_mirror` does not
          # reach it; set virtualisation.docker.daemon.settings."registry-mirrors"
          # here instead.
          virtualisation.docker.enable = true;
          systemd.services.sshd = {
            after = [ "docker.service" ];
            wants = [ "docker.service" ];
          };

          # `pip install` outside a venv, as on GitHub's hosted images.
          environment.etc."pip.conf".text = ''
            [global]
            break-system-packages = true
          '';
          # rustup's and pip's per-user bin directories lead PATH.
          environment.sessionVariables.PATH = [
            "$HOME/.cargo/bin"
            "$HOME/.local/bin"
          ];

          environment.systemPackages = with pkgs; [
            bash
            coreutils
            findutils
            diffutils
            gnugrep
            gnused
            gawk
            which
            file
            less
            git
            git-lfs
            openssh
            gnutar
            gzip
            bzip2
            xz
            zstd
            zip
            unzip
            rsync
            curl
            wget
            jq
            gnupg
            # Building C and C++ (gcc, binutils, make, cmake, ...).
            gcc
            gnumake
            cmake
            ninja
            pkg-config
            autoconf
            automake
            libtool
            patch
            # Python with pip (venv is in the standard library).
            (python3.withPackages (ps: [ ps.pip ]))
            # JavaScript actions run on node.
            nodejs_24
            # Rust from nixpkgs: rustup's downloaded toolchains are not built for
            # NixOS; add pkgs.rustup (without these) to let jobs pick one.
            cargo
            rustc
            clippy
            rustfmt
          ];

          documentation.enable = false;
          nix.enable = false;
        }
      )
    ];
  };
in
(import (pkgs.path + "/nixos/lib/make-disk-image.nix") {
  inherit pkgs lib;
  inherit (guest) config;
  name = "solstice-image-nixos";
  format = "qcow2";
  partitionTableType = "legacy";
  diskSize = "auto";
  additionalSpace = "1024M";
  copyChannel = false;
  baseName = "nixos";
}).overrideAttrs
  (old: {
    passthru = (old.passthru or { }) // {
      # Read by services.solstice.images.<name>.image for its defaults.
      solstice = {
        file = "nixos.qcow2";
        format = "qcow2";
        os = "linux";
        firmware = "bios";
        seed = "nocloud";
        console = "ttyS0";
        sshUser = "runner";
        readinessProbes = 1;
        bootTimeoutSecs = 600;
        memoryMib = 1024;
        minMemoryMib = 512;
        # Linux with vmgenid and cloud-init: restored clones can be re-keyed.
        snapshotCapable = true;
        labels = [
          "nixos"
          "linux"
        ];
      };
    };
  })

{
  description = "Solstice: a Forgejo and Gitea Actions runner that runs each job in a throw-away QEMU VM";

  # `flake.lock` pins this; run `nix flake lock` once on a machine with
  # network access (see docs/nixos.md).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      # The package builds on both; guest images and NixOS tests are x86_64.
      packageSystems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      imageSystem = "x86_64-linux";
      forSystems = systems: f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      imagesFor = pkgs: import ./images { inherit pkgs lib; };
      # Every image as `image-<name>`; an illumos image without a confirmed
      # pin fails to evaluate with the command that pins it.
      imageAttrs = pkgs: lib.mapAttrs' (name: lib.nameValuePair "image-${name}") (imagesFor pkgs).images;
      # Only what evaluates goes into `packages`, so `nix flake check` works
      # before the illumos images are pinned.
      buildableImageAttrs =
        pkgs:
        let
          images = imagesFor pkgs;
        in
        lib.filterAttrs (
          name: _: name == "image-nixos" || images.isPinned (lib.removePrefix "image-" name)
        ) (imageAttrs pkgs);
    in
    {
      overlays.default = final: _prev: {
        solstice = final.callPackage ./nix/package.nix { };
      };

      packages = forSystems packageSystems (
        pkgs:
        let
          solstice = pkgs.callPackage ./nix/package.nix { };
        in
        {
          inherit solstice;
          default = solstice;
        }
        // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == imageSystem) (buildableImageAttrs pkgs)
      );

      # `nix build .#image-omnios` finds unpinned images here and says how to pin them.
      legacyPackages = forSystems [ imageSystem ] imageAttrs;

      nixosModules = {
        solstice =
          { lib, pkgs, ... }:
          {
            imports = [ ./modules/solstice.nix ];
            services.solstice.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.solstice;
          };
        default = self.nixosModules.solstice;
      };

      checks = forSystems packageSystems (
        pkgs:
        let
          checks = import ./nix/checks.nix {
            inherit pkgs self;
            solstice = self.packages.${pkgs.stdenv.hostPlatform.system}.solstice;
          };
        in
        checks
        // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == imageSystem) (
          import ./tests/nixos { inherit pkgs self; }
        )
      );

      devShells = forSystems packageSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.solstice ];
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            qemu_kvm
            nixfmt
            deadnix
          ];
        };
      });

      # `pkgs.nixfmt` is the official RFC 166 formatter from nixpkgs 25.11 on;
      # the older name `nixfmt-rfc-style` is a deprecated alias there that
      # prints an evaluation warning, and the pre-RFC one is `nixfmt-classic`.
      formatter = forSystems packageSystems (pkgs: pkgs.nixfmt);
    };
}

# The NixOS tests, one file per scenario, named after what they prove. Each
# sets its own `globalTimeout`. `nix flake check` runs them (x86_64-linux,
# with the `nixos-test` system feature; KVM makes them much faster).
{
  pkgs,
  self,
}:
let
  run = file: pkgs.testers.runNixOSTest (import file { inherit self; });
in
{
  forgejo-job-runs-in-nixos-guest-and-failure-is-reported = run ./forgejo-job-runs-in-nixos-guest-and-failure-is-reported.nix;
  module-renders-checked-config = run ./module-renders-checked-config.nix;

  # A typo in `settings` must fail the build of the configuration, not the
  # running service: building the config file fails, naming the key.
  module-rejects-unknown-key-at-build-time =
    let
      system = import (pkgs.path + "/nixos/lib/eval-config.nix") {
        inherit (pkgs.stdenv.hostPlatform) system;
        modules = [
          self.nixosModules.default
          (
            { lib, ... }:
            {
              services.solstice = lib.recursiveUpdate (import ../../modules/example.nix) {
                enable = true;
                settings.daemon.max_jobs = 3;
              };
              boot.loader.grub.enable = false;
              fileSystems."/".device = "nodev";
              system.stateVersion = lib.trivial.release;
            }
          )
        ];
      };
      failure = pkgs.testers.testBuildFailure system.config.services.solstice.configFile;
    in
    pkgs.runCommand "module-rejects-unknown-key-at-build-time" { } ''
      grep -q 'daemon.max_jobs' ${failure}/testBuildFailure.log
      touch $out
    '';
}

# The documented example of `services.solstice`: one forge with Forgejo's
# offline registration secret, one with a runner file, and one image given by
# path. It is the single source for
# - the option examples shown in modules/solstice.nix,
# - tests/nixos/module-renders-checked-config.nix, which enables it,
# - tests/nixos/example-settings.toml, the TOML it renders to; the Rust test
#   tests/it/nixos_module.rs evaluates this file through modules/render.nix and
#   checks that the fixture matches, then runs `solstice check-config` on it.
# Pure data: no nixpkgs needed to evaluate it.
{
  settings = {
    daemon = {
      max_concurrent_jobs = 2;
      drain_timeout_secs = 300;
      max_job_timeout_mins = 120;
      runner_name = "solstice-ci1";
    };
    qemu.accel = "auto";
  };
  forges = {
    work = {
      url = "https://git.example.org";
      secretFile = "/run/agenix/solstice-work";
      labels = [
        "nixos"
        "linux"
      ];
    };
    gitea = {
      url = "https://gitea.example.org";
      runnerFile = "/run/secrets/solstice-gitea.runner";
      fetchIntervalSecs = 30;
    };
  };
  images = {
    nixos = {
      path = "/var/lib/solstice-images/nixos.qcow2";
      os = "linux";
      firmware = "bios";
      seed = "nocloud";
      memoryMib = 1024;
      bootTimeoutSecs = 300;
      labels = [
        "nixos"
        "linux"
      ];
    };
  };
}

# The full path: a Forgejo instance with Actions, a runner host with
# services.solstice and the Nix-built NixOS guest image, a pushed workflow.
# Proves that
# - a job runs in the guest (bash, git, coreutils there) and its run succeeds,
# - a failing job is reported as failed,
# - the unit stays active, and no QEMU process or job directory is left.
# Nested QEMU uses KVM when the builder offers nested virtualisation, TCG
# otherwise (accel = "auto"), hence the long timeouts.
{ self }:
let
  # Test-only: Forgejo's offline registration secret (40 hex characters).
  secret = "5e1f0ce0aa11bb22cc33dd44ee55ff6677889900";
  adminPassword = "solstice-test-password";
  ok = ''
    on: [push]
    jobs:
      build:
        runs-on: nixos
        steps:
          - run: |
              set -eu
              echo "hello from $(uname -s)"
              git --version
              bash --version | head -n 1
              test "$(echo solstice | tr a-z A-Z)" = SOLSTICE
  '';
  fails = ''
    on: [push]
    jobs:
      broken:
        runs-on: nixos
        steps:
          - run: exit 3
  '';
in
{
  name = "forgejo-job-runs-in-nixos-guest-and-failure-is-reported";
  globalTimeout = 3600;

  nodes = {
    forgejo =
      { config, pkgs, ... }:
      {
        services.forgejo = {
          enable = true;
          database.type = "sqlite3";
          settings = {
            server = {
              DOMAIN = "forgejo";
              HTTP_PORT = 3000;
              ROOT_URL = "http://forgejo:3000/";
            };
            actions.ENABLED = true;
            service.DISABLE_REGISTRATION = true;
          };
        };
        networking.firewall.allowedTCPPorts = [ 3000 ];
        environment.etc."solstice-test/ok.yml".text = ok;
        environment.etc."solstice-test/fails.yml".text = fails;
        environment.systemPackages = [
          config.services.forgejo.package
          pkgs.git
          pkgs.curl
        ];
        virtualisation.memorySize = 2048;
      };

    runner =
      { lib, pkgs, ... }:
      {
        imports = [ self.nixosModules.default ];
        services.solstice = {
          enable = true;
          settings.daemon = {
            max_concurrent_jobs = 1;
            drain_timeout_secs = 30;
          };
          settings.qemu.accel = "auto";
          forges.test = {
            url = "http://forgejo:3000";
            secretFile = "/var/lib/solstice-secrets/test";
            fetchIntervalSecs = 2;
          };
          images.nixos.image = self.packages.${pkgs.stdenv.hostPlatform.system}.image-nixos;
        };
        # Started once the forge knows the runner and the secret is in place.
        systemd.services.solstice.wantedBy = lib.mkForce [ ];
        virtualisation = {
          memorySize = 4096;
          cores = 2;
          diskSize = 8192;
        };
      };
  };

  testScript =
    { nodes, ... }:
    let
      forgejoExe = "${nodes.forgejo.services.forgejo.package}/bin/forgejo";
      forgejoCli = "runuser -u forgejo -- ${forgejoExe} --work-path /var/lib/forgejo --config /var/lib/forgejo/custom/conf/app.ini";
    in
    ''
      import json
      import time

      api = "http://localhost:3000/api/v1"
      auth = "alice:${adminPassword}"

      def call(method, path, body=None):
          data = f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'" if body is not None else ""
          return json.loads(forgejo.succeed(f"curl -fsS -u {auth} -X {method} {data} {api}{path}") or "null")

      start_all()
      forgejo.wait_for_unit("forgejo.service")
      forgejo.wait_for_open_port(3000)

      with subtest("Forgejo has an admin, a repository and a runner registered offline"):
          forgejo.succeed(
              "${forgejoCli} admin user create --admin --username alice"
              " --password ${adminPassword} --email alice@example.org --must-change-password=false"
          )
          call("POST", "/user/repos", {"name": "demo", "default_branch": "main"})
          forgejo.succeed(
              "${forgejoCli} forgejo-cli actions register --secret ${secret}"
              " --name solstice-test --labels nixos"
          )

      with subtest("the runner starts and stays active"):
          runner.succeed(
              "install -d -m 0700 /var/lib/solstice-secrets",
              "printf %s ${secret} > /var/lib/solstice-secrets/test",
          )
          runner.succeed("systemctl start solstice.service")
          runner.wait_for_unit("solstice.service")

      with subtest("a pushed workflow runs in the guest"):
          forgejo.succeed(
              "git config --global user.email alice@example.org",
              "git config --global user.name alice",
              "git init -b main /tmp/demo",
              "mkdir -p /tmp/demo/.forgejo/workflows",
              "cp /etc/solstice-test/ok.yml /etc/solstice-test/fails.yml /tmp/demo/.forgejo/workflows/",
              "git -C /tmp/demo add -A",
              "git -C /tmp/demo commit -m 'CI'",
              f"git -C /tmp/demo push http://{auth}@localhost:3000/alice/demo.git main",
          )

      def finished():
          tasks = call("GET", "/repos/alice/demo/actions/tasks")["workflow_runs"]
          states = {t["name"]: t["status"] for t in tasks}
          runner.log(f"tasks: {states}")
          if len(states) == 2 and all(s in ("success", "failure", "cancelled", "skipped") for s in states.values()):
              return states
          return None

      with subtest("the run succeeds and the failing job is reported failed"):
          deadline = time.monotonic() + 2700
          states = None
          while states is None:
              assert time.monotonic() < deadline, "the jobs did not finish in time"
              time.sleep(10)
              states = finished()
          assert states == {"build": "success", "broken": "failure"}, states

      with subtest("the unit stays active and nothing is left behind"):
          runner.succeed("systemctl is-active solstice.service")
          runner.fail("pgrep -f '[q]emu-system'")
          runner.succeed("test -z \"$(ls -A /var/lib/solstice/jobs)\"")
          out = json.loads(runner.succeed("solstice status --json"))
          assert out["in_flight"] == [], out
    '';
}

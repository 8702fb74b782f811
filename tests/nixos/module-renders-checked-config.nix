# services.solstice with its documented example (modules/example.nix):
# - the config it writes is the checked one and equals
#   tests/nixos/example-settings.toml (the fixture the Rust test checks);
# - forge credentials arrive through LoadCredential and not through the TOML;
# - the unit has the properties docs/nixos.md promises;
# - the daemon becomes ready (credentials known locally, no forge needed).
{ self }:
{
  name = "module-renders-checked-config";
  globalTimeout = 900;

  nodes.machine =
    { lib, pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];
      services.solstice = (import ../../modules/example.nix) // {
        enable = true;
      };
      # Started by the test once the credential files and the image exist.
      systemd.services.solstice.wantedBy = lib.mkForce [ ];
      environment.systemPackages = [ pkgs.qemu-utils ];
      virtualisation.memorySize = 2048;
    };

  testScript =
    { nodes, ... }:
    ''
      import json
      import tomllib

      fixture = tomllib.loads(${builtins.toJSON (builtins.readFile ./example-settings.toml)})
      secret = "0123456789abcdef0123456789abcdef01234567"

      machine.wait_for_unit("multi-user.target")

      with subtest("the config is the checked one and matches the fixture"):
          path = machine.succeed("readlink -f /etc/solstice/solstice.toml").strip()
          assert path.endswith("-solstice.toml"), path
          assert path == "${nodes.machine.services.solstice.configFile}", path
          rendered = tomllib.loads(machine.succeed("cat /etc/solstice/solstice.toml"))
          assert rendered == fixture, f"{rendered} != {fixture}"

      with subtest("the daemon starts with credentials from LoadCredential"):
          machine.succeed(
              "install -d -m 0700 /run/agenix /run/secrets",
              # The service user must reach the image it boots.
              "install -d -m 0755 /var/lib/solstice-images",
              f"printf %s {secret} > /run/agenix/solstice-work",
              "printf %s '{\"uuid\":\"6f0c3a52-2d1b-4c1e-9a53-0d3f2b4a1c77\",\"token\":\"t0ken\"}' > /run/secrets/solstice-gitea.runner",
              "chmod 0600 /run/agenix/solstice-work /run/secrets/solstice-gitea.runner",
              "qemu-img create -f qcow2 /var/lib/solstice-images/nixos.qcow2 1G",
              "chmod 0644 /var/lib/solstice-images/nixos.qcow2",
          )
          machine.succeed("systemctl start solstice.service")
          machine.wait_for_unit("solstice.service")
          # The credential lives in the unit's own mount namespace on newer systemd.
          pid = machine.succeed("systemctl show -p MainPID --value solstice").strip()
          assert machine.succeed(f"nsenter -t {pid} -m cat /run/credentials/solstice.service/work") == secret
          machine.fail(f"grep -r {secret} /etc/solstice/ $(readlink -f /etc/solstice/solstice.toml)")

      with subtest("the unit has the promised properties"):
          props = dict(
              line.split("=", 1)
              for line in machine.succeed(
                  "systemctl show solstice.service -p Type,KillMode,Restart,WatchdogUSec,TimeoutStopUSec,"
                  "User,SupplementaryGroups,DevicePolicy,NoNewPrivileges,ProtectSystem,"
                  "MemoryDenyWriteExecute,StateDirectory,RuntimeDirectory"
              ).strip().splitlines()
          )
          expected = {
              "Type": "notify",
              "KillMode": "mixed",
              "Restart": "on-failure",
              "WatchdogUSec": "1min",
              # drain_timeout_secs 300 + 60 s for cancelled jobs + 60 s margin
              "TimeoutStopUSec": "7min",
              "User": "solstice",
              "SupplementaryGroups": "kvm",
              "DevicePolicy": "closed",
              "NoNewPrivileges": "yes",
              "ProtectSystem": "strict",
              "MemoryDenyWriteExecute": "no",
              "StateDirectory": "solstice",
              "RuntimeDirectory": "solstice",
          }
          for key, value in expected.items():
              assert props.get(key) == value, f"{key}: {props.get(key)!r} != {value!r}"
          machine.succeed("systemctl show solstice.service -p DeviceAllow | grep -q '/dev/kvm rw'")

      with subtest("solstice status finds the config and the database"):
          out = json.loads(machine.succeed("solstice status --json"))
          assert out["in_flight"] == [], out

      with subtest("the service stops cleanly"):
          machine.succeed("systemctl stop solstice.service")
          machine.succeed("test \"$(systemctl show solstice.service -p Result --value)\" = success")
    '';
}

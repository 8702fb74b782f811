# services.solstice: runs `solstice run`, a Forgejo/Gitea/GitHub Actions
# runner that runs each job in a throw-away QEMU VM.
#
# Typed options cover what the module itself acts on (the package, forge
# credentials, images, the drain time the stop timeout depends on); every
# other key of the TOML file goes through the freeform `settings` (RFC 42).
# The rendered file is checked with `solstice check-config` at build time, so
# a mistake fails `nixos-rebuild`, not the running service.
# docs/reference/nixos-options.md describes every option declared here
# (tests/it/nixos_module.rs checks that the two agree).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkOption
    mkPackageOption
    types
    ;

  cfg = config.services.solstice;
  toml = pkgs.formats.toml { };
  example = import ./example.nix;

  # Where systemd puts the files named in LoadCredential.
  credentialDir = "/run/credentials/solstice.service";
  # Solstice's own default of `daemon.drain_timeout_secs`.
  defaultDrainSecs = 600;
  # Time cancelled jobs get to tear down and report after the drain.
  cancelGraceSecs = 60;
  drainSecs =
    if cfg.settings.daemon.drain_timeout_secs == null then
      defaultDrainSecs
    else
      cfg.settings.daemon.drain_timeout_secs;
  stateDir =
    if cfg.settings.daemon.state_dir == null then
      "/var/lib/solstice"
    else
      cfg.settings.daemon.state_dir;

  nullOr = t: types.nullOr t;
  imageFormat = types.enum [
    "qcow2"
    "raw"
  ];
  guestOs = types.enum [
    "linux"
    "illumos"
  ];
  firmwareKind = types.enum [
    "bios"
    "uefi"
  ];
  networkMode = types.enum [
    "outbound"
    "none"
    "unrestricted"
  ];
  seedKind = types.enum [
    "nocloud"
    "metadata-cpio"
  ];
  forgeKind = types.enum [
    "forgejo"
    "github"
  ];
  accelKind = types.enum [
    "auto"
    "kvm"
    "tcg"
  ];
  nullOption =
    type: description:
    mkOption {
      type = nullOr type;
      default = null;
      inherit description;
    };

  githubAppModule = {
    options = {
      appId = mkOption {
        type = types.ints.positive;
        example = 123456;
        description = "The GitHub App's id (the App's settings → General → App ID).";
      };
      installationId = mkOption {
        type = types.ints.positive;
        example = 45678901;
        description = "The id of the App's installation on the repository's owner, the organisation or the enterprise (the number that ends the installation's settings URL).";
      };
      privateKeyFile = mkOption {
        type = types.either types.path types.str;
        example = "/run/agenix/solstice-github-app.pem";
        description = ''
          The App's private key (PEM), read by systemd (`LoadCredential`) and
          never copied into the Nix store.
        '';
      };
    };
  };

  forgeDebugSshModule = {
    options = {
      enabled = mkOption {
        type = types.bool;
        default = false;
        description = "Whether this forge's failed jobs that ask for it (`SOLSTICE_DEBUG_SSH: true`) may keep their VM; needs `settings.debug_ssh`.";
      };
      repositories = nullOption (types.listOf types.str) "Repositories whose jobs may be kept: `owner/name` or `owner/*`. Default (null): every repository.";
      events = nullOption (types.listOf types.str) "Events whose failed jobs may be kept, e.g. `[ \"push\" \"workflow_dispatch\" ]`; never `schedule`. Default (null): `push`, `pull_request`, `workflow_dispatch`.";
      forkPullRequests = nullOption types.bool "Whether jobs of pull requests from forks may be kept too. Default (null): false.";
      withSecrets = nullOption types.bool "Whether jobs that received secrets (other than the job token) may be kept. Default (null): false.";
      ttlSecs = nullOption (types.ints.between 1 1800) "A shorter window for this forge than `settings.debug_ssh.ttl_secs`, in seconds. Default (null): the host's.";
    };
  };

  forgeModule =
    { name, ... }:
    {
      options = {
        kind = nullOption forgeKind "What the forge is: `forgejo` (Forgejo or Gitea) or `github` (GitHub or GitHub Enterprise; see docs/github.md). Default (null): `forgejo`.";
        url = mkOption {
          type = types.str;
          example = "https://codeberg.org";
          description = "URL of the Forgejo or Gitea instance, or for `kind = \"github\"` the repository, organisation or enterprise the runners serve (`forges.${name}.url`).";
        };
        tokenFile = mkOption {
          type = nullOr (types.either types.path types.str);
          default = null;
          example = "/run/agenix/solstice-codeberg";
          description = ''
            Forgejo: file holding a registration token
            (`registration_token_file`). Used once: the runner credentials it
            yields are kept in the state database. GitHub: file holding a
            fine-grained token (`token_file`). Read by systemd
            (`LoadCredential`) and never copied into the Nix store. Forgejo:
            set exactly one of `tokenFile`, `secretFile` and `runnerFile`;
            GitHub: one of `githubApp` and `tokenFile`.
          '';
        };
        githubApp = mkOption {
          type = nullOr (types.submodule githubAppModule);
          default = null;
          example = literalExpression ''
            {
              appId = 123456;
              installationId = 45678901;
              privateKeyFile = "/run/agenix/solstice-github-app.pem";
            }
          '';
          description = ''
            `kind = "github"` only: the GitHub App the runners are registered
            with (`app_id`, `installation_id`, `private_key_file`). Set
            `githubApp` or `tokenFile`.
          '';
        };
        runnerGroupId = nullOption types.ints.positive "`kind = \"github\"` only: the runner group the runners join. Default (null): 1, the default group.";
        apiUrl = nullOption types.str "`kind = \"github\"` only: the REST API base. Default (null): derived from `url` (`https://api.github.com` for github.com, `https://<host>/api/v3` for GitHub Enterprise Server).";
        runnerVersion = nullOption (types.strMatching "[0-9]+\\.[0-9]+\\.[0-9]+") "`kind = \"github\"` only: the runner version announced to GitHub, `N.N.N`; raise it when GitHub says the version is deprecated. Default (null): Solstice's (2.336.0).";
        secretFile = mkOption {
          type = nullOr (types.either types.path types.str);
          default = null;
          example = "/run/agenix/solstice-work";
          description = ''
            File holding Forgejo's offline registration secret (40 hex
            characters, as given to `forgejo forgejo-cli actions register --secret`),
            delivered with `LoadCredential`. Set exactly one of `tokenFile`,
            `secretFile` and `runnerFile`.
          '';
        };
        runnerFile = mkOption {
          type = nullOr (types.either types.path types.str);
          default = null;
          example = "/run/secrets/solstice-gitea.runner";
          description = ''
            JSON file with the runner's `uuid` and `token` (the shape of
            forgejo-runner's `.runner` file), delivered with `LoadCredential`.
            Set exactly one of `tokenFile`, `secretFile` and `runnerFile`.
          '';
        };
        labels = mkOption {
          type = nullOr (types.listOf types.str);
          default = null;
          example = [ "nixos" ];
          description = "Labels declared to this forge; each must belong to an image. Default (null): every image's labels.";
        };
        runnerName = nullOption types.str "Runner name shown in this forge's UI (GitHub: the start of each runner's name). Default (null): `settings.daemon.runner_name`.";
        fetchIntervalSecs = nullOption (types.ints.between 1 3600) "Seconds between task polls (Codeberg asks for at least 30); GitHub: between checks for free slots. Default (null): 2 (GitHub: 1).";
        fetchTimeoutSecs = nullOption (types.ints.between 1 600) "Forgejo only: deadline of one poll in seconds. Default (null): 30.";
        debugSsh = mkOption {
          type = nullOr (types.submodule forgeDebugSshModule);
          default = null;
          example = literalExpression ''
            {
              enabled = true;
              repositories = [ "example-org/*" ];
              events = [ "push" "workflow_dispatch" ];
            }
          '';
          description = ''
            Which of this forge's failed jobs may keep their VM for debug SSH
            (`[forges.${name}.debug_ssh]`, docs/debug-ssh.md). `enabled = true`
            needs `settings.debug_ssh`. Default (null): none.
          '';
        };
      };
    };

  imageModule =
    { name, ... }:
    {
      options = {
        image = mkOption {
          type = nullOr types.package;
          default = null;
          example = literalExpression "solstice.packages.x86_64-linux.image-nixos";
          description = ''
            An image derivation from this flake's `images/` (or any derivation
            with the same `passthru.solstice` metadata). Its metadata supplies
            the defaults of `path`, `format`, `os`, `firmware`, `seed`,
            `sshUser`, `memoryMib`, `bootTimeoutSecs`, `readinessProbes` and
            `labels`. Set `image` or `path`.
          '';
        };
        path = mkOption {
          type = nullOr types.str;
          default = null;
          example = "/var/lib/solstice-images/debian.qcow2";
          description = ''
            The read-only base image file, for an image not built by Nix. Set
            `image` or `path`. A path outside the Nix store cannot be seen at
            build time, so `check-config` then runs with `--no-path-checks`.
          '';
        };
        format = nullOption imageFormat "Disk format of the image. Default: the image's metadata, else `qcow2`.";
        os = nullOption guestOs "Guest operating system. Default: the image's metadata, else `linux`.";
        firmware = nullOption firmwareKind "Boot firmware. `uefi` makes the module point `qemu.uefi_code` and `qemu.uefi_vars` at OVMF. Default: the image's metadata, else `bios`.";
        seed = nullOption seedKind "How the guest gets its SSH key. Default: the image's metadata, else `nocloud`.";
        sshUser = nullOption types.str "User the job's steps run as. Default: the image's metadata, else `root`.";
        vcpus = nullOption (types.ints.between 1 64) "Virtual CPUs. Default (null): 2.";
        memoryMib = nullOption (types.ints.between 64 1048576) "Guest memory in MiB; must not be below the image's `minMemoryMib`. Default: the image's metadata, else 1024.";
        diskSizeGib = nullOption (types.ints.between 1 16384) "Virtual size of the per-job overlay in GiB. Default (null): the base image's size.";
        bootTimeoutSecs = nullOption (types.ints.between 1 86400) "Seconds from QEMU start until SSH must be ready. Default: the image's metadata, else 300.";
        readinessProbes = nullOption (types.ints.between 1 20) "Consecutive successful SSH probes before the guest counts as ready (OmniOS needs 2). Default: the image's metadata, else 1.";
        readinessProbeIntervalSecs = nullOption (types.ints.between 1 600) "Seconds between readiness probes. Default (null): 3.";
        labels = nullOption (types.listOf types.str) "Labels matched against a job's `runs-on`. Default: the image's metadata, else the name `${name}`.";
        maxConcurrentJobs = nullOption (types.ints.between 1 1024) "At most this many jobs of this image at once. Default (null): no limit of its own.";
        cpu = nullOption (types.strMatching "[A-Za-z0-9][^[:space:]]*") "QEMU CPU model and features (`-cpu`), e.g. `EPYC-Rome` or `qemu64,+rdrand,-svm`; used under KVM and TCG alike (`host` runs only under KVM). Default (null): by OS and accelerator (TCG `qemu64,+rdrand`, illumos `qemu64,+rdrand,-svm`; KVM `host,-arch-capabilities,-vmx,-svm`).";
        pathPrepend = nullOption (types.listOf (types.strMatching "/[^:]*")) "Absolute directories put in front of the guest's `PATH` in every step (behind the job's `GITHUB_PATH` entries), e.g. `[ \"/usr/gnu/bin\" \"/opt/ooce/bin\" ]` for OmniOS. Default (null): none.";
        node = nullOption (types.strMatching "/.*") "Absolute path of the guest's Node.js binary, for JavaScript actions (OmniOS: `/opt/ooce/bin/node`). Default (null): `node` on the guest's `PATH`.";
        network = nullOption networkMode "What the guest's network reaches: `outbound` (the internet, never the host's loopback, link-local addresses or the host's own addresses), `none` (only `networkAllow`), `unrestricted` (unsafe: jobs reach every service on the host's loopback). Default (null): `outbound`.";
        networkDeny = nullOption (types.listOf types.str) "Extra CIDR ranges the guest cannot reach, e.g. `[ \"10.0.0.0/8\" \"fd00::/8\" ]`. Default (null): none.";
        networkAllow = nullOption (types.listOf types.str) "CIDR ranges re-opened inside `networkDeny`, and the only destinations with `network = \"none\"`. Default (null): none.";
        warm = nullOption (types.ints.between 0 256) "Guests of this image kept booted and SSH-ready for the next jobs (a warm pool); each counts against `max_concurrent_jobs` and costs its memory while it waits. Default (null): 0.";
        warmMaxIdleSecs = nullOption (types.ints.between 60 604800) "Seconds a warm guest may wait for a job before it is replaced by a fresh one. Default (null): 3600.";
        snapshot = nullOption types.bool "Start guests by restoring a saved running guest instead of booting it; each clone is re-keyed, reseeded and renamed before use. Linux images with the vmgenid driver only (the image's metadata says `snapshotCapable`); never illumos. Default (null): false.";
      };
    };

  # An image's options with the defaults from its derivation's metadata.
  resolveImage =
    _: i:
    let
      meta = if i.image == null then { } else i.image.passthru.solstice or { };
      pick = option: if i.${option} != null then i.${option} else meta.${option} or null;
    in
    i
    // {
      path = if i.path != null then i.path else "${i.image}/${meta.file or "disk.qcow2"}";
      format = pick "format";
      os = pick "os";
      firmware = pick "firmware";
      seed = pick "seed";
      sshUser = pick "sshUser";
      memoryMib = pick "memoryMib";
      bootTimeoutSecs = pick "bootTimeoutSecs";
      readinessProbes = pick "readinessProbes";
      labels = pick "labels";
    };
  images = lib.mapAttrs resolveImage cfg.images;
  anyUefi = lib.any (i: i.firmware == "uefi") (lib.attrValues images);

  rendered = import ./render.nix {
    inherit (cfg) settings forges;
    inherit images credentialDir;
  };

  # Files check-config looks for. When all are in the Nix store they are in
  # the build sandbox too, and their existence is checked.
  checkedPaths =
    map (i: i.path) (lib.attrValues images)
    ++ lib.filter (p: p != null) [
      cfg.settings.qemu.uefi_code
      cfg.settings.qemu.uefi_vars
    ];
  pathsInStore = lib.all (p: lib.hasPrefix "${builtins.storeDir}/" (toString p)) checkedPaths;

  configFile =
    let
      unchecked = toml.generate "solstice-unchecked.toml" rendered;
    in
    if cfg.checkConfig then
      pkgs.runCommand "solstice.toml"
        {
          nativeBuildInputs = [ cfg.package ];
          preferLocalBuild = true;
        }
        ''
          cp ${unchecked} solstice.toml
          solstice check-config ${lib.optionalString (!pathsInStore) "--no-path-checks"} solstice.toml
          cp solstice.toml $out
        ''
    else
      unchecked;

  # The debug SSH gateway's port, or null without a gateway.
  debugPort =
    if cfg.settings.debug_ssh == null then
      null
    else
      import ./listen-port.nix cfg.settings.debug_ssh.listen;

  # Ports below this need CAP_NET_BIND_SERVICE (the sysctl may be an
  # integer or a string).
  unprivilegedPortStart =
    let
      v = config.boot.kernel.sysctl."net.ipv4.ip_unprivileged_port_start" or 1024;
    in
    if builtins.isString v then lib.toInt v else v;

  # LoadCredential entries and the assertions on credentials and kinds.
  credentials = import ./credentials.nix { inherit (cfg) forges; };
in
{
  options.services.solstice = {
    enable = mkEnableOption "Solstice, a CI runner for Forgejo, Gitea and GitHub that runs each job in a throw-away QEMU VM";

    package = mkPackageOption pkgs "solstice" { };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Check the generated configuration with `solstice check-config` at
        build time. Turn it off only to build a configuration for a
        different Solstice version.
      '';
    };

    watchdogSec = mkOption {
      type = types.ints.between 0 3600;
      default = 60;
      description = "systemd watchdog period (`WatchdogSec=`); Solstice pings every half period. 0 turns the watchdog off.";
    };

    settings = mkOption {
      default = { };
      example = literalExpression (lib.generators.toPretty { } example.settings);
      description = ''
        The TOML configuration (see docs/reference/config.md), except the
        forges and images declared with `forges` and `images`. Keys not
        declared here are passed through as they are; `check-config` rejects
        unknown ones at build time. Unset (null) keys are left out, so
        Solstice's own defaults apply.
      '';
      type = types.submodule {
        freeformType = toml.type;
        options = {
          daemon = mkOption {
            default = { };
            description = "The `[daemon]` table: the runner process itself.";
            type = types.submodule {
              freeformType = toml.type;
              options = {
                state_dir = nullOption types.str "State directory (database and job directories). Default (null): `/var/lib/solstice`, managed by systemd's `StateDirectory=`; any other directory is made writable with `ReadWritePaths=` and must exist.";
                max_concurrent_jobs = nullOption (types.ints.between 1 1024) "Host-wide maximum number of job VMs at once. Default (null): 2.";
                drain_timeout_secs = nullOption (types.ints.between 0 86400) "On stop, seconds running jobs may go on before they are cancelled. The unit's `TimeoutStopSec=` is set from it. Default (null): 600.";
                max_job_timeout_mins = nullOption (types.ints.between 1 10080) "Host-wide cap on a job's run time in minutes. Default (null): 180 (the forge fails any task after 3 hours).";
                metrics_listen = nullOption types.str "Where the Prometheus endpoint listens (`host:port`, or a bare port for 127.0.0.1). Jobs can reach it; see docs/operations.md. Default (null): off.";
                runner_name = nullOption types.str "Runner name shown in the forges' UI. Default (null): `solstice-<hostname>`.";
              };
            };
          };
          qemu = mkOption {
            default = { };
            description = "The `[qemu]` table: how QEMU is found and started.";
            type = types.submodule {
              freeformType = toml.type;
              options = {
                accel = nullOption accelKind "Accelerator: `auto` (KVM where a probe guest runs under it, with a fallback to TCG when a job's KVM guest shows no progress), `kvm` (never falls back) or `tcg`. Default (null): `auto`.";
                uefi_code = mkOption {
                  type = nullOr types.str;
                  default = if anyUefi then "${pkgs.OVMF.fd}/FV/OVMF_CODE.fd" else null;
                  defaultText = literalExpression ''if any image uses UEFI then "''${pkgs.OVMF.fd}/FV/OVMF_CODE.fd" else null'';
                  description = "UEFI firmware code image, needed by `uefi` images.";
                };
                uefi_vars = mkOption {
                  type = nullOr types.str;
                  default = if anyUefi then "${pkgs.OVMF.fd}/FV/OVMF_VARS.fd" else null;
                  defaultText = literalExpression ''if any image uses UEFI then "''${pkgs.OVMF.fd}/FV/OVMF_VARS.fd" else null'';
                  description = "UEFI variable store template, copied per job.";
                };
              };
            };
          };
          debug_ssh = mkOption {
            default = null;
            example = literalExpression ''
              {
                listen = "0.0.0.0:2222";
                public_host = "ci.example.org";
              }
            '';
            description = ''
              The `[debug_ssh]` table: the gateway through which the person who
              started a failed job logs into its kept VM (docs/debug-ssh.md).
              Null (the default): no gateway, and no forge may keep a VM.
              `debugSsh.openFirewall` opens its port.
            '';
            type = nullOr (
              types.submodule {
                freeformType = toml.type;
                options = {
                  listen = mkOption {
                    type = types.strMatching ".*:[0-9]+";
                    example = "0.0.0.0:2222";
                    description = "Where the gateway listens: `address:port`, a port from 1024 up (the service may not bind lower ports).";
                  };
                  public_host = nullOption types.str "The host users connect to, printed in the job log. Default (null): this host's name.";
                  public_port = nullOption types.port "The port printed in the job log, when a port forward changes it. Default (null): the port of `listen`.";
                  ttl_secs = nullOption (types.ints.between 1 1800) "Seconds a failed job's VM is kept, never renewed. Default (null): 1800, the maximum.";
                  max_held = nullOption (types.ints.between 1 1024) "VMs kept for debugging at once; each still takes a job slot. Default (null): 1.";
                  idle_timeout_secs = nullOption (types.ints.between 1 86400) "Seconds without traffic before a session is closed. Default (null): 600.";
                };
              }
            );
          };
        };
      };
    };

    forges = mkOption {
      type = types.attrsOf (types.submodule forgeModule);
      default = { };
      example = literalExpression (lib.generators.toPretty { } example.forges);
      description = ''
        Forgejo or Gitea instances, or GitHub repositories, organisations or
        enterprises (`kind = "github"`), to take jobs from, by name (the name keys
        the runner credentials in the state database and names the systemd
        credential). Credentials are file paths outside the Nix store,
        handed to the service with `LoadCredential` and rendered into the
        TOML as `/run/credentials/solstice.service/<name>`.
      '';
    };

    images = mkOption {
      type = types.attrsOf (types.submodule imageModule);
      default = { };
      example = literalExpression (lib.generators.toPretty { } example.images);
      description = "Base images jobs run on, by name (`[a-z0-9][a-z0-9._-]*`).";
    };

    debugSsh = {
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Open the debug SSH gateway's port (the port of
          `settings.debug_ssh.listen`) in the firewall, for TCP from anywhere.
          Needs `settings.debug_ssh`.
        '';
      };
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      default = configFile;
      defaultText = "the rendered and checked TOML file";
      description = "The configuration file the service reads (also linked to `/etc/solstice/solstice.toml`, where `solstice status` finds it).";
    };
  };

  config = mkIf cfg.enable {
    assertions =
      credentials.assertions
      ++ lib.concatLists (
        lib.mapAttrsToList (name: i: [
          {
            assertion = (i.image == null) != (i.path == null);
            message = "services.solstice.images.${name}: set exactly one of image and path.";
          }
          {
            assertion =
              let
                min = if i.image == null then null else i.image.passthru.solstice.minMemoryMib or null;
                mem = images.${name}.memoryMib;
              in
              min == null || mem == null || mem >= min;
            message = "services.solstice.images.${name}: memoryMib is below the image's minimum (passthru.solstice.minMemoryMib).";
          }
          {
            assertion =
              i.snapshot != true || i.image == null || (i.image.passthru.solstice.snapshotCapable or false);
            message = "services.solstice.images.${name}: snapshot = true, but the image does not declare passthru.solstice.snapshotCapable (illumos images cannot be cloned safely: no vmgenid driver).";
          }
        ]) cfg.images
      )
      ++ [
        {
          assertion = cfg.images != { } || (cfg.settings.images or { }) != { };
          message = "services.solstice: declare at least one image in services.solstice.images.";
        }
        {
          assertion = !cfg.debugSsh.openFirewall || cfg.settings.debug_ssh != null;
          message = "services.solstice.debugSsh.openFirewall: there is no gateway to open; set services.solstice.settings.debug_ssh.listen (e.g. \"0.0.0.0:2222\").";
        }
        {
          assertion = cfg.forges != { } || (cfg.settings.forges or { }) != { };
          message = "services.solstice: declare at least one forge in services.solstice.forges (`solstice run` serves forges).";
        }
      ];

    # The service has no capabilities: a port below the kernel's
    # unprivileged start (1024 unless lowered) cannot be bound.
    warnings =
      lib.optional (debugPort != null && debugPort != 0 && debugPort < unprivilegedPortStart)
        "services.solstice.settings.debug_ssh.listen: port ${toString debugPort} is below ${toString unprivilegedPortStart}, which the service (it has no capabilities) cannot bind, so `solstice run` would fail at start; listen on a port such as 2222, and forward port ${toString debugPort} to it with public_port = ${toString debugPort} if users must see that one.";

    users.users.solstice = {
      isSystemUser = true;
      group = "solstice";
      home = stateDir;
      description = "Solstice CI runner";
    };
    users.groups.solstice = { };

    environment.systemPackages = [ cfg.package ];

    networking.firewall.allowedTCPPorts = lib.optional (
      cfg.debugSsh.openFirewall && debugPort != null
    ) debugPort;
    environment.etc."solstice/solstice.toml".source = configFile;

    systemd.services.solstice = {
      description = "Solstice CI runner";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${lib.getExe cfg.package} run --config ${configFile}";
        WatchdogSec = cfg.watchdogSec;
        Restart = "on-failure";
        RestartSec = 10;
        # On stop, SIGTERM goes to Solstice only, so running jobs can drain;
        # QEMU processes are killed only if the stop timeout runs out.
        KillMode = "mixed";
        # The drain, then the time cancelled jobs get to tear down and report,
        # then a margin.
        TimeoutStopSec = drainSecs + cancelGraceSecs + 60;
        # Start-up waits for forges that must register; a down forge is
        # retried by Restart=on-failure rather than a long start timeout.
        TimeoutStartSec = 300;

        User = "solstice";
        Group = "solstice";
        # /dev/kvm belongs to the kvm group.
        SupplementaryGroups = [ "kvm" ];
        StateDirectory = "solstice";
        StateDirectoryMode = "0700";
        RuntimeDirectory = "solstice";
        RuntimeDirectoryMode = "0700";
        WorkingDirectory = stateDir;
        UMask = "0077";
        LoadCredential = credentials.loadCredential;
        ReadWritePaths = lib.optional (stateDir != "/var/lib/solstice") stateDir;

        # Devices: only /dev/kvm besides the pseudo-devices DevicePolicy=closed
        # always allows (null, zero, random, urandom, tty, ptmx), and
        # /dev/net/tun, with which pasta makes the network interface inside
        # each job VM's own network namespace (never one of the host's).
        DevicePolicy = "closed";
        DeviceAllow = [
          "/dev/kvm rw"
          "/dev/net/tun rw"
        ];
        # Loosened: PrivateDevices=true would hide /dev/kvm; the device list
        # above restricts access instead.
        PrivateDevices = false;

        # Hardening.
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        # Solstice's crash clean-up reads /proc/<pid>/cmdline of its own QEMU
        # processes, which stay visible to the same user.
        ProtectProc = "invisible";
        # Loosened: each job VM's QEMU runs in a user + network namespace of
        # its own (so the guest cannot reach the host's loopback), with a
        # mount namespace when the host's resolver is on loopback; pasta, its
        # uplink, sandboxes itself in user, mount, IPC and UTS namespaces.
        # No other kind (pid, cgroup) is allowed.
        RestrictNamespaces = [
          "user"
          "net"
          "mnt"
          "ipc"
          "uts"
        ];
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        RemoveIPC = true;
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        # Unix sockets for QMP and the journal, IP for the forges, SSH to the
        # guests and QEMU's user-mode network; netlink to set up the job VM's
        # own network namespace (its loopback and rules; pasta's addresses
        # and routes), never the host's.
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
          "AF_NETLINK"
        ];
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
          # pasta confines itself in its own mount namespace (mount,
          # umount2, pivot_root) and Solstice bind-mounts a resolv.conf in
          # QEMU's; both act only inside namespaces this service made.
          "@mount"
          # ~@privileged also removes setuid, setgroups and capset: pasta
          # drops its identity and capabilities at start (setgroups,
          # setgid, setuid, capset) and exits when refused, so no guest of
          # an isolated image would get a network. They act on pasta's own
          # credentials inside its user namespace.
          "@setuid"
          "capset"
        ];
        SystemCallErrorNumber = "EPERM";
        # Loosened: QEMU's TCG accelerator is a JIT that writes and then runs
        # code, which MemoryDenyWriteExecute forbids.
        MemoryDenyWriteExecute = false;
        # Loosened: a private user namespace maps the kvm group to nobody, so
        # /dev/kvm could not be opened.
        PrivateUsers = false;
        # Loosened: ProcSubset=pid would hide /proc/cpuinfo and /proc/sys,
        # which QEMU reads to pick CPU features.
        ProcSubset = "all";
      };
    };
  };
}

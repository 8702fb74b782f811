# Turns the values of `services.solstice` into the TOML document Solstice
# reads, as an attribute set for `pkgs.formats.toml`. Pure: it uses builtins
# only, so tests/it/nixos_module.rs evaluates it on the documented example with a
# bare `nix-instantiate --eval`, without nixpkgs.
#
# settings:      `services.solstice.settings` (unset options are null)
# forges:        `services.solstice.forges`: Forgejo with `tokenFile`, `secretFile` or
#                `runnerFile`; `kind = "github"` with `githubApp` or `tokenFile`
# images:        `services.solstice.images`, resolved (path, os, ... filled in)
# credentialDir: where systemd's LoadCredential puts the credential files
{
  settings,
  forges,
  images,
  credentialDir,
}:
let
  # TOML has no null: an unset option is a key left out, so Solstice applies
  # its own default.
  dropNulls =
    value:
    if builtins.isAttrs value then
      builtins.mapAttrs (_: dropNulls) (
        builtins.removeAttrs value (builtins.filter (n: value.${n} == null) (builtins.attrNames value))
      )
    else if builtins.isList value then
      map dropNulls value
    else
      value;

  get = attrs: name: attrs.${name} or null;

  # Credential option in the module -> key in `[forges.<name>]`, by kind.
  credentialKeys = {
    forgejo = {
      tokenFile = "registration_token_file";
      secretFile = "secret_file";
      runnerFile = "runner_file";
    };
    github = {
      tokenFile = "token_file";
      githubApp = "private_key_file";
    };
  };

  # `forges.<name>.debugSsh` -> `[forges.<name>.debug_ssh]`; null (unset)
  # leaves the table out.
  debugSsh =
    d:
    if d == null then
      null
    else
      {
        enabled = get d "enabled";
        repositories = get d "repositories";
        events = get d "events";
        fork_pull_requests = get d "forkPullRequests";
        with_secrets = get d "withSecrets";
        ttl_secs = get d "ttlSecs";
      };

  forge =
    name: f:
    let
      kind = if get f "kind" == null then "forgejo" else f.kind;
      keys = credentialKeys.${kind};
      set = builtins.filter (o: get f o != null) (builtins.attrNames keys);
      app = get f "githubApp";
    in
    {
      kind = get f "kind";
      url = f.url;
      runner_name = get f "runnerName";
      labels = get f "labels";
      fetch_interval_secs = get f "fetchIntervalSecs";
      fetch_timeout_secs = get f "fetchTimeoutSecs";
      runner_group_id = get f "runnerGroupId";
      api_url = get f "apiUrl";
      runner_version = get f "runnerVersion";
      debug_ssh = debugSsh (get f "debugSsh");
    }
    # A GitHub App's ids are not secret; its key is a credential file.
    // (
      if kind == "github" && app != null then
        {
          app_id = app.appId;
          installation_id = app.installationId;
        }
      else
        { }
    )
    # The module asserts that exactly one is set (modules/credentials.nix);
    # the file itself reaches the service through LoadCredential under the
    # forge's name.
    // builtins.listToAttrs (
      map (o: {
        name = keys.${o};
        value = "${credentialDir}/${name}";
      }) set
    );

  image = _: i: {
    path = i.path;
    format = get i "format";
    os = get i "os";
    firmware = get i "firmware";
    seed = get i "seed";
    vcpus = get i "vcpus";
    memory_mib = get i "memoryMib";
    disk_size_gib = get i "diskSizeGib";
    ssh_user = get i "sshUser";
    boot_timeout_secs = get i "bootTimeoutSecs";
    readiness_probes = get i "readinessProbes";
    readiness_probe_interval_secs = get i "readinessProbeIntervalSecs";
    labels = get i "labels";
    max_concurrent_jobs = get i "maxConcurrentJobs";
    cpu = get i "cpu";
    path_prepend = get i "pathPrepend";
    node = get i "node";
    network = get i "network";
    network_deny = get i "networkDeny";
    network_allow = get i "networkAllow";
    warm = get i "warm";
    warm_max_idle_secs = get i "warmMaxIdleSecs";
    snapshot = get i "snapshot";
  };
in
dropNulls (
  settings
  // {
    forges = (settings.forges or { }) // builtins.mapAttrs forge forges;
    images = (settings.images or { }) // builtins.mapAttrs image images;
  }
)

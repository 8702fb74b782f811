# The credential file each forge of `services.solstice.forges` hands to the
# service (systemd `LoadCredential=<name>:<file>`), and the assertions on the
# credential and kind-specific options. Pure: builtins only, so that
# tests/it/nixos_module.rs evaluates it with a bare `nix-instantiate`.
#
# forges:   `services.solstice.forges` (unset options are null or absent)
# storeDir: the Nix store, where no secret may be
{
  forges,
  storeDir ? builtins.storeDir,
}:
let
  get = attrs: name: attrs.${name} or null;
  kindOf = f: if get f "kind" == null then "forgejo" else f.kind;
  isGithub = f: kindOf f == "github";

  # The credential options of a forge's kind, with the file each names.
  credentialFiles =
    f:
    if isGithub f then
      {
        tokenFile = get f "tokenFile";
        githubApp = if get f "githubApp" == null then null else f.githubApp.privateKeyFile;
      }
    else
      {
        tokenFile = get f "tokenFile";
        secretFile = get f "secretFile";
        runnerFile = get f "runnerFile";
      };

  # Options set that the forge's kind does not take.
  forgejoOnly = [
    "secretFile"
    "runnerFile"
    "fetchTimeoutSecs"
  ];
  githubOnly = [
    "githubApp"
    "runnerGroupId"
    "apiUrl"
    "runnerVersion"
  ];
  otherKind =
    f: builtins.filter (o: get f o != null) (if isGithub f then forgejoOnly else githubOnly);

  entry =
    name: f:
    let
      files = credentialFiles f;
      set = builtins.filter (o: files.${o} != null) (builtins.attrNames files);
    in
    {
      inherit name;
      github = isGithub f;
      count = builtins.length set;
      file = if builtins.length set == 1 then toString files.${builtins.head set} else null;
      wrong = otherKind f;
    };
  entries = map (name: entry name forges.${name}) (builtins.attrNames forges);

  isIn = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
  list = xs: builtins.concatStringsSep ", " xs;
in
{
  # `LoadCredential=` entries: the forge's name and its one file.
  loadCredential = map (c: "${c.name}:${c.file}") (builtins.filter (c: c.file != null) entries);

  assertions = builtins.concatMap (c: [
    {
      assertion = c.count == 1;
      message =
        if c.github then
          "services.solstice.forges.${c.name}: set exactly one of githubApp (a GitHub App: appId, installationId, privateKeyFile) and tokenFile (a fine-grained token) for kind = \"github\"."
        else
          "services.solstice.forges.${c.name}: set exactly one of tokenFile, secretFile and runnerFile (or kind = \"github\" for GitHub).";
    }
    {
      assertion = c.file == null || (isIn "/" c.file && !isIn "${storeDir}/" c.file);
      message = "services.solstice.forges.${c.name}: the credential file ${toString c.file} must be an absolute path outside the Nix store (the store is world-readable); use agenix, sops-nix or a file under /etc or /var/lib.";
    }
    {
      assertion = c.wrong == [ ];
      message =
        if c.github then
          "services.solstice.forges.${c.name}: ${list c.wrong} apply to Forgejo and Gitea only, not to kind = \"github\"; remove them (GitHub takes githubApp or tokenFile)."
        else
          "services.solstice.forges.${c.name}: ${list c.wrong} apply to kind = \"github\" only; set kind = \"github\" if this forge is GitHub, or remove them.";
    }
  ]) entries;
}

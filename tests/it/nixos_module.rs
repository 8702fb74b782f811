//! The NixOS module (`modules/solstice.nix`) checked without nixpkgs, which
//! these machines cannot fetch:
//! - its TOML rendering (`modules/render.nix`, builtins only) is evaluated
//!   with a bare `nix-instantiate --eval` on the documented example
//!   (`modules/example.nix`) and must equal the fixture
//!   `tests/nixos/example-settings.toml`, which `solstice check-config`
//!   accepts;
//! - every forge and image option renders to a key `check-config` accepts;
//! - its options and `docs/reference/nixos-options.md` list the same names,
//!   every option has a description, and the settings it declares are real
//!   config keys;
//! - the credential assertions (`modules/credentials.nix`, builtins only)
//!   refuse files in the Nix store, credentials of the wrong kind and keys
//!   of the other kind;
//! - an illumos image without a confirmed pin fails to evaluate, naming the
//!   command that pins it.
//!
//! `nix-instantiate` comes from Debian's `nix-bin` (`.ci/setup-host.sh`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap()
}

/// Evaluates a Nix expression (builtins only) to JSON.
fn nix_eval(args: &[&str]) -> serde_json::Value {
    let out = Command::new("nix-instantiate")
        .current_dir(repo())
        .args(["--eval", "--strict", "--json"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run nix-instantiate ({e}); install nix-bin: sudo bash .ci/setup-host.sh")
        });
    assert!(
        out.status.success(),
        "nix-instantiate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn toml_as_json(text: &str) -> serde_json::Value {
    let value: toml::Value = toml::from_str(text).unwrap();
    serde_json::to_value(value).unwrap()
}

fn check_config(file: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_solstice"))
        .arg("check-config")
        .args(extra)
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn module_renders_its_documented_example_to_the_fixture() {
    let rendered = nix_eval(&["modules/render-example.nix"]);
    let fixture = toml_as_json(&read("tests/nixos/example-settings.toml"));
    assert_eq!(
        rendered, fixture,
        "modules/example.nix renders differently from tests/nixos/example-settings.toml: update the fixture"
    );
}

#[test]
fn check_config_accepts_the_fixture_without_path_checks_only() {
    let fixture = repo().join("tests/nixos/example-settings.toml");
    let out = check_config(&fixture, &["--no-path-checks"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK (1 image: nixos; 2 forges: gitea, work)"),
        "{stdout}"
    );
    // With path checks, the image file (absent here) is an error, and the
    // credential files (absent too) are not: check-config never reads them.
    let out = check_config(&fixture, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("images.nixos.path"), "{stderr}");
    assert!(stderr.contains("1 problem found"), "{stderr}");
}

#[test]
fn every_forge_and_image_option_renders_to_a_key_check_config_accepts() {
    let expr = r#"
      let
        render = import ./modules/render.nix;
        image = {
          path = "/images/a.qcow2"; format = "qcow2"; os = "illumos"; firmware = "bios";
          seed = "metadata-cpio"; sshUser = "root"; vcpus = 2; memoryMib = 2048; diskSizeGib = 20;
          bootTimeoutSecs = 900; readinessProbes = 2; readinessProbeIntervalSecs = 5;
          labels = [ "a" "illumos" ]; maxConcurrentJobs = 1; image = null;
          cpu = "qemu64,+rdrand,-svm"; pathPrepend = [ "/usr/gnu/bin" "/opt/ooce/bin" ];
          node = "/opt/ooce/bin/node";
        };
        forge = { url = "https://f.example.org"; runnerName = "r"; labels = [ "a" ];
          fetchIntervalSecs = 30; fetchTimeoutSecs = 20; };
        github = { kind = "github"; url = "https://github.com/o/r"; runnerName = "r";
          labels = [ "a" ]; fetchIntervalSecs = 5; fetchTimeoutSecs = null; runnerGroupId = 3;
          apiUrl = "https://api.github.com"; runnerVersion = "2.340.0"; tokenFile = null;
          secretFile = null; runnerFile = null;
          githubApp = { appId = 11; installationId = 22; privateKeyFile = "/s/k.pem"; }; };
      in render {
        settings = {
          daemon.state_dir = null; qemu.accel = "tcg";
          debug_ssh = { listen = "0.0.0.0:2222"; public_host = "ci.example.org"; public_port = 22;
            ttl_secs = 900; max_held = 1; idle_timeout_secs = 300; };
        };
        forges = {
          t = forge // { tokenFile = "/s/t"; secretFile = null; runnerFile = null;
            debugSsh = { enabled = true; repositories = [ "o/*" "a/b" ]; events = [ "push" ];
              forkPullRequests = false; withSecrets = null; ttlSecs = 600; }; };
          s = forge // { kind = "forgejo"; secretFile = "/s/s"; };
          r = forge // { runnerFile = "/s/r"; };
          gapp = github;
          gtok = github // { url = "https://github.com/o"; githubApp = null; tokenFile = "/s/t"; };
        };
        images.a = image;
        credentialDir = "/run/credentials/solstice.service";
      }
    "#;
    let rendered = nix_eval(&["-E", expr]);
    let forges = &rendered["forges"];
    assert_eq!(
        forges["t"]["registration_token_file"],
        "/run/credentials/solstice.service/t"
    );
    assert_eq!(
        forges["s"]["secret_file"],
        "/run/credentials/solstice.service/s"
    );
    assert_eq!(
        forges["r"]["runner_file"],
        "/run/credentials/solstice.service/r"
    );
    assert_eq!(forges["s"]["kind"], "forgejo");
    assert_eq!(
        forges["t"]["debug_ssh"],
        serde_json::json!({
            "enabled": true,
            "repositories": ["o/*", "a/b"],
            "events": ["push"],
            "fork_pull_requests": false,
            "ttl_secs": 600,
        }),
        "every debugSsh option is rendered, null ones left out"
    );
    assert!(
        forges["s"].get("debug_ssh").is_none(),
        "no debugSsh: no table"
    );
    assert_eq!(rendered["debug_ssh"]["listen"], "0.0.0.0:2222");
    assert_eq!(
        forges["gapp"],
        serde_json::json!({
            "kind": "github",
            "url": "https://github.com/o/r",
            "app_id": 11,
            "installation_id": 22,
            "private_key_file": "/run/credentials/solstice.service/gapp",
            "runner_group_id": 3,
            "api_url": "https://api.github.com",
            "runner_version": "2.340.0",
            "runner_name": "r",
            "labels": ["a"],
            "fetch_interval_secs": 5,
        }),
        "every GitHub option is rendered, the key as a credential file"
    );
    assert_eq!(
        forges["gtok"]["token_file"],
        "/run/credentials/solstice.service/gtok"
    );
    assert_eq!(
        rendered["daemon"],
        serde_json::json!({}),
        "null settings are left out"
    );
    let image_keys = rendered["images"]["a"].as_object().unwrap().len();
    assert_eq!(image_keys, 17, "every image option but `image` is rendered");

    let toml_text = toml::to_string(&rendered).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.toml");
    std::fs::write(&file, &toml_text).unwrap();
    let out = check_config(&file, &["--no-path-checks"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{toml_text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Option names declared in the module: `name = mkOption`, `nullOption`,
/// `mkEnableOption` or `mkPackageOption`.
fn module_option_names(module: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in module.lines() {
        let line = line.trim();
        let Some((name, rest)) = line.split_once(" = ") else {
            continue;
        };
        let declares = [
            "mkOption",
            "nullOption",
            "mkEnableOption",
            "mkPackageOption",
        ]
        .iter()
        .any(|f| rest.starts_with(f));
        if declares && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(name.to_owned());
        }
    }
    names
}

/// Options documented in the reference: headings "### `services.solstice.…`".
fn documented_options(doc: &str) -> Vec<String> {
    doc.lines()
        .filter_map(|l| l.strip_prefix("### `services.solstice."))
        .filter_map(|l| l.strip_suffix('`'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn options_reference_lists_exactly_the_module_options() {
    let module = read("modules/solstice.nix");
    let declared = module_option_names(&module);
    assert!(declared.len() > 30, "{declared:?}");
    let documented = documented_options(&read("docs/reference/nixos-options.md"));
    let documented_last: BTreeSet<String> = documented
        .iter()
        .map(|p| p.rsplit('.').next().unwrap().to_owned())
        .collect();
    let undocumented: Vec<_> = declared.difference(&documented_last).collect();
    let unknown: Vec<_> = documented_last.difference(&declared).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/reference/nixos-options.md is out of step with modules/solstice.nix: \
         undocumented {undocumented:?}, documented but not declared {unknown:?}"
    );
    let unique: BTreeSet<&String> = documented.iter().collect();
    assert_eq!(
        unique.len(),
        documented.len(),
        "an option is documented twice"
    );
}

#[test]
fn documented_settings_forge_and_image_options_are_real_config_keys() {
    let known: BTreeSet<String> = solstice::config::known_keys().into_iter().collect();
    let snake = |camel: &str| {
        let mut s = String::new();
        for c in camel.chars() {
            if c.is_ascii_uppercase() {
                s.push('_');
                s.push(c.to_ascii_lowercase());
            } else {
                s.push(c);
            }
        }
        s
    };
    let mut checked = 0;
    for option in documented_options(&read("docs/reference/nixos-options.md")) {
        let key = if let Some(k) = option.strip_prefix("settings.") {
            k.to_owned()
        } else if let Some(o) = option.strip_prefix("forges.<name>.") {
            match o {
                // Forgejo's key; GitHub's `token_file` is checked below.
                "tokenFile" => "forges.<name>.registration_token_file".to_owned(),
                "githubApp" | "debugSsh" => continue,
                o => match o.strip_prefix("githubApp.") {
                    Some(app) => format!("forges.<name>.{}", snake(app)),
                    None => format!("forges.<name>.{}", snake(o)),
                },
            }
        } else if let Some(o) = option.strip_prefix("images.<name>.") {
            if o == "image" {
                continue;
            }
            format!("images.<name>.{}", snake(o))
        } else {
            continue;
        };
        if key == "daemon" || key == "qemu" || key == "debug_ssh" {
            continue;
        }
        assert!(
            known.contains(&key),
            "services.solstice.{option} maps to `{key}`, which the config file does not know"
        );
        checked += 1;
    }
    assert!(checked > 20, "only {checked} options checked");
}

/// The failed assertions of `modules/credentials.nix` for `forges` (a Nix
/// attribute set), and its `LoadCredential=` entries.
fn credential_checks(forges: &str) -> (Vec<String>, Vec<String>) {
    let expr = format!(
        r#"
      let c = import ./modules/credentials.nix {{ forges = {forges}; storeDir = "/nix/store"; }};
      in {{
        failed = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
        load = c.loadCredential;
      }}
    "#
    );
    let v = nix_eval(&["-E", &expr]);
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    (strings("failed"), strings("load"))
}

#[test]
fn credential_files_go_through_load_credential_and_never_come_from_the_store() {
    let (failed, load) = credential_checks(
        r#"{
          cb = { url = "https://codeberg.org"; tokenFile = "/run/agenix/cb"; };
          app = { kind = "github"; url = "https://github.com/o/r";
            githubApp = { appId = 1; installationId = 2; privateKeyFile = "/run/agenix/app.pem"; }; };
          tok = { kind = "github"; url = "https://github.com/o"; tokenFile = "/var/lib/secrets/gh"; };
        }"#,
    );
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(
        load,
        [
            "app:/run/agenix/app.pem",
            "cb:/run/agenix/cb",
            "tok:/var/lib/secrets/gh"
        ]
    );

    let (failed, load) = credential_checks(
        r#"{
          store = { kind = "github"; url = "https://github.com/o";
            githubApp = { appId = 1; installationId = 2; privateKeyFile = "/nix/store/abc-key.pem"; }; };
          both = { kind = "github"; url = "https://github.com/o"; tokenFile = "/t";
            githubApp = { appId = 1; installationId = 2; privateKeyFile = "/k"; }; };
          none = { kind = "github"; url = "https://github.com/o"; };
          forgejoKeys = { kind = "github"; url = "https://github.com/o"; tokenFile = "/t";
            secretFile = "/s"; fetchTimeoutSecs = 5; };
          githubKeys = { url = "https://f.example"; secretFile = "/s"; runnerGroupId = 2;
            githubApp = { appId = 1; installationId = 2; privateKeyFile = "/k"; }; };
          relative = { url = "https://f.example"; runnerFile = "secrets/r"; };
        }"#,
    );
    assert_eq!(
        failed,
        [
            "services.solstice.forges.both: set exactly one of githubApp (a GitHub App: appId, installationId, privateKeyFile) and tokenFile (a fine-grained token) for kind = \"github\".",
            "services.solstice.forges.forgejoKeys: secretFile, fetchTimeoutSecs apply to Forgejo and Gitea only, not to kind = \"github\"; remove them (GitHub takes githubApp or tokenFile).",
            "services.solstice.forges.githubKeys: githubApp, runnerGroupId apply to kind = \"github\" only; set kind = \"github\" if this forge is GitHub, or remove them.",
            "services.solstice.forges.none: set exactly one of githubApp (a GitHub App: appId, installationId, privateKeyFile) and tokenFile (a fine-grained token) for kind = \"github\".",
            "services.solstice.forges.relative: the credential file secrets/r must be an absolute path outside the Nix store (the store is world-readable); use agenix, sops-nix or a file under /etc or /var/lib.",
            "services.solstice.forges.store: the credential file /nix/store/abc-key.pem must be an absolute path outside the Nix store (the store is world-readable); use agenix, sops-nix or a file under /etc or /var/lib.",
        ]
    );
    // Only forges with exactly one file hand it to systemd.
    assert_eq!(
        load,
        [
            "forgejoKeys:/t",
            "githubKeys:/s",
            "relative:secrets/r",
            "store:/nix/store/abc-key.pem"
        ]
    );
}

#[test]
fn every_module_option_has_a_description() {
    let module = read("modules/solstice.nix");
    let mut blocks = 0;
    for (start, _) in module.match_indices("mkOption {") {
        let body = &module[start..];
        let mut depth = 0usize;
        let mut end = body.len();
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let block = &body[..end];
        assert!(
            block.contains("description =") || block.contains("inherit description;"),
            "an option has no description:\n{block}"
        );
        blocks += 1;
    }
    assert!(blocks > 10, "{blocks}");
    // `nullOption TYPE DESCRIPTION` takes its description as an argument,
    // and mkEnableOption/mkPackageOption make their own.
    for line in module.lines().filter(|l| l.contains("= nullOption")) {
        assert!(
            line.contains('"'),
            "a nullOption has no description: {line}"
        );
    }
}

/// Evaluates `images/illumos.nix` with stand-ins for the few nixpkgs
/// functions it calls, and returns nix-instantiate's output.
fn eval_illumos(attr: &str) -> std::process::Output {
    let expr = format!(
        r#"
      let
        lib = {{
          importJSON = f: builtins.fromJSON (builtins.readFile f);
          optionalString = c: s: if c then s else "";
        }};
        pkgs = {{
          fetchurl = x: x;
          runCommand = name: attrs: _: attrs // {{ inherit name; }};
          qemu-utils = null;
          zstd = null;
        }};
      in (import ./images/illumos.nix {{ inherit pkgs lib; }}).{attr}
    "#
    );
    Command::new("nix-instantiate")
        .current_dir(repo())
        .args(["--eval", "--strict", "--json", "-E", &expr])
        .output()
        .unwrap()
}

#[test]
fn unpinned_illumos_image_fails_evaluation_naming_the_pin_command() {
    let pins: serde_json::Value = serde_json::from_str(&read("images/pins.json")).unwrap();
    for name in ["omnios", "openindiana"] {
        let pin = &pins[name];
        let pinned = pin["sha256"].is_string() && pin["url"].is_string();
        let out = eval_illumos(&format!("{name}.passthru.solstice"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if pinned {
            assert!(out.status.success(), "{stderr}");
            let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(meta["os"], "illumos");
            assert_eq!(meta["console"], "ttya");
        } else {
            assert!(!out.status.success(), "{name} evaluated without a pin");
            assert!(
                stderr.contains(&format!("run: images/update-pins.sh {name}")),
                "{stderr}"
            );
        }
    }
    let out = eval_illumos("isPinned \"omnios\"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Nix package's check skips the test modules that need a VM, an SSH
/// server or host tools (`checkFlags` in `nix/package.nix`): each skipped
/// name must be a module of the test binary, so a rename cannot silently
/// start running (and failing) a module in the build sandbox.
#[test]
fn the_nix_check_skips_only_real_test_modules() {
    let package = read("nix/package.nix");
    let flags = package
        .split("checkFlags")
        .nth(1)
        .and_then(|s| s.split("];\n").next())
        .expect("nix/package.nix has checkFlags with a list of modules");
    let skipped: Vec<&str> = flags
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix('"')?.strip_suffix('"'))
        .filter(|name| {
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    assert!(skipped.len() > 10, "{skipped:?}");
    let main = read("tests/it/main.rs");
    let modules: BTreeSet<&str> = main
        .lines()
        .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    for name in &skipped {
        assert!(
            modules.contains(name),
            "nix/package.nix skips `{name}`, which tests/it/main.rs does not have"
        );
    }
    // The VM tests are among them.
    for vm in ["exec_tiny", "exec_debian", "vm_boot", "forge_e2e"] {
        assert!(
            skipped.contains(&vm),
            "{vm} must not run in the Nix sandbox"
        );
    }
}

/// The syscalls a group (`@name`) of systemd's stands for, nested groups
/// expanded (`systemd-analyze syscall-filter`).
fn syscall_group(group: &str, out: &mut BTreeSet<String>) {
    let listed = Command::new("systemd-analyze")
        .args(["syscall-filter", group])
        .output()
        .expect("run systemd-analyze");
    assert!(
        listed.status.success(),
        "systemd-analyze syscall-filter {group}"
    );
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    for line in text.lines().skip(1) {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if name.starts_with('@') {
            syscall_group(name, out);
        } else {
            out.insert(name.to_string());
        }
    }
}

/// The service's `SystemCallFilter=` entries, in order, lets through what
/// pasta needs: an allow-list first, then each `~` entry removes and each
/// other entry adds back (systemd's rule for repeated assignments). pasta
/// drops its groups and identity and its capabilities at start, and exits
/// when refused, which left every isolated guest without a network.
#[test]
fn the_service_syscall_filter_lets_pasta_run() {
    let module = read("modules/solstice.nix");
    let start = module
        .find("SystemCallFilter = [")
        .expect("SystemCallFilter in the module");
    let list = &module[start..start + module[start..].find("];").unwrap()];
    let entries: Vec<&str> = list
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| l.starts_with('"'))
        .map(|l| l.trim_matches('"'))
        .collect();
    assert!(!entries[0].starts_with('~'), "{entries:?}");
    let mut allowed = BTreeSet::new();
    for e in &entries {
        let (deny, name) = match e.strip_prefix('~') {
            Some(n) => (true, n),
            None => (false, *e),
        };
        let mut set = BTreeSet::new();
        if name.starts_with('@') {
            syscall_group(name, &mut set);
        } else {
            set.insert(name.to_string());
        }
        if deny {
            allowed.retain(|s| !set.contains(s));
        } else {
            allowed.extend(set);
        }
    }
    for needed in [
        "setgroups",
        "setgid",
        "setuid",
        "capset",
        "capget",
        "mount",
        "umount2",
        "pivot_root",
        "unshare",
        "setns",
    ] {
        assert!(allowed.contains(needed), "{needed} refused by {entries:?}");
    }
}

/// `debugSsh.openFirewall` opens the port `modules/listen-port.nix` reads
/// from `settings.debug_ssh.listen`.
#[test]
fn the_firewall_port_is_the_port_of_the_listen_address() {
    let ports = nix_eval(&[
        "-E",
        r#"map (import ./modules/listen-port.nix) [ "0.0.0.0:2222" "[::]:2200" "[::1]:02222" "2222" "host" ]"#,
    ]);
    assert_eq!(ports, serde_json::json!([2222, 2200, 2222, null, null]));
    let module = read("modules/solstice.nix");
    assert!(
        module.contains("import ./listen-port.nix cfg.settings.debug_ssh.listen"),
        "the module reads the port with listen-port.nix"
    );
    assert!(module.contains("networking.firewall.allowedTCPPorts"));
}

//! Integration tests for the config file: loading real files, `check-config`,
//! and keeping the example and the reference doc in step with the code.

use solstice::cli::{Exit, check_config_main};
use std::path::{Path, PathBuf};

use solstice::config::{
    self, Config, ErrorKind, ParseOptions, check_config, known_keys, load, parse_str_with,
};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap()
}

/// An image file made with the real `qemu-img`.
fn make_image(path: &Path, format: &str, size: &str) {
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", format])
        .arg(path)
        .arg(size)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn loads_a_real_file_with_relative_image_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("images")).unwrap();
    make_image(&dir.path().join("images/tiny.qcow2"), "qcow2", "16M");
    std::fs::write(dir.path().join("OVMF_CODE.fd"), b"").unwrap();
    std::fs::write(dir.path().join("OVMF_VARS.fd"), b"").unwrap();
    let file = dir.path().join("solstice.toml");
    std::fs::write(
        &file,
        "[qemu]\nuefi_code = \"OVMF_CODE.fd\"\nuefi_vars = \"OVMF_VARS.fd\"\n[images.tiny]\npath = \"images/tiny.qcow2\"\nfirmware = \"uefi\"\n",
    )
    .unwrap();
    let c = load(&file).unwrap();
    assert_eq!(c.images["tiny"].path, dir.path().join("images/tiny.qcow2"));
    assert_eq!(c.qemu.uefi_code, Some(dir.path().join("OVMF_CODE.fd")));
    assert_eq!(c.qemu.uefi_vars, Some(dir.path().join("OVMF_VARS.fd")));
    assert_eq!(
        check_config(&file).unwrap(),
        format!("{}: OK (1 image: tiny)", file.display())
    );
    assert_eq!(
        check_config_main(&file, &ParseOptions::default()).map_err(|e| e.exit),
        Ok(())
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nope.toml");
    let e = load(&file).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e.errors[0].kind, ErrorKind::Io);
    assert_eq!(
        e.to_string(),
        format!(
            "{}: the config file does not exist; create it (examples/solstice.toml shows every key) or name another file",
            file.display()
        )
    );
    assert_eq!(
        check_config_main(&file, &ParseOptions::default()).map_err(|e| e.exit),
        Err(Exit::Failed)
    );
}

#[test]
fn unreadable_or_binary_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = load(dir.path()).unwrap_err();
    assert_eq!(e.errors[0].kind, ErrorKind::Io);
    assert!(e.to_string().contains("cannot read the config file"), "{e}");

    let file = dir.path().join("latin1.toml");
    std::fs::write(&file, b"# caf\xe9\n").unwrap();
    let e = load(&file).unwrap_err();
    assert_eq!(e.errors[0].kind, ErrorKind::Io);
    assert!(e.to_string().contains("not UTF-8"), "{e}");
}

#[test]
fn check_config_prints_every_problem_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("solstice.toml");
    std::fs::write(
        &file,
        "[daemon]\nmax_concurrent_jobs = 5000\n\n[images.tiny]\npath = \"tiny.qcow2\"\nmemory_mib = 0\nvcpu = 2\n",
    )
    .unwrap();
    let e = check_config(&file).unwrap_err();
    let f = file.display();
    let lines: Vec<String> = e.to_string().lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            format!(
                "{f}:2:23: daemon.max_concurrent_jobs: 5000 is too large; use a value from 1 to 1024 (jobs)"
            ),
            format!(
                "{f}:5:8: images.tiny.path: image \"tiny\": {}/tiny.qcow2 does not exist; fix the path (relative paths start at {}) or put the file there",
                dir.path().display(),
                dir.path().display()
            ),
            format!(
                "{f}:6:14: images.tiny.memory_mib: 0 is too small; use a value from 64 to 1048576 (MiB)"
            ),
            format!("{f}:7:1: images.tiny.vcpu: unknown key; did you mean \"vcpus\"?"),
        ]
    );
    assert_eq!(
        check_config_main(&file, &ParseOptions::default()).map_err(|e| e.exit),
        Err(Exit::Failed)
    );
}

fn parse_example() -> Config {
    let origin = repo("examples/solstice.toml");
    parse_str_with(
        &read("examples/solstice.toml"),
        &origin,
        &ParseOptions { check_paths: false },
    )
    .unwrap_or_else(|e| panic!("examples/solstice.toml does not parse:\n{e}"))
}

#[test]
fn github_mistakes_are_printed_with_line_column_and_what_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("solstice.toml");
    std::fs::write(
        &file,
        "[images.tiny]\npath = \"/x/tiny.qcow2\"\n\n\
         [forges.gh]\nkind = \"github\"\nurl = \"https://github.com/acme/widgets/tree/main\"\n\
         app_id = 0\ninstallation_id = 7\nprivate_key_file = \"app.pem\"\n\
         secret_file = \"/s\"\nrunner_version = \"latest\"\n\n\
         [forges.cb]\nurl = \"https://codeberg.org\"\nrunner_file = \"/r\"\nrunner_group_id = 2\n",
    )
    .unwrap();
    let e = config::check_config_with(&file, &ParseOptions { check_paths: false }).unwrap_err();
    let f = file.display();
    let lines: Vec<String> = e.to_string().lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            format!(
                "{f}:6:7: forges.gh.url: \"https://github.com/acme/widgets/tree/main\" is a page inside a repository; write the repository alone: \"https://github.com/acme/widgets\""
            ),
            format!(
                "{f}:7:10: forges.gh.app_id: 0 is too small; use a positive whole number (a GitHub id), as GitHub shows it"
            ),
            format!(
                "{f}:10:15: forges.gh.secret_file: `secret_file` is for Forgejo and Gitea; Solstice registers GitHub runners itself, one just-in-time runner per free slot, with a GitHub App or a token; remove it and set `app_id`, `installation_id` and `private_key_file` (a GitHub App) or `token_file` (docs/github.md)"
            ),
            format!(
                "{f}:11:18: forges.gh.runner_version: \"latest\" is not a runner version; write three numbers, e.g. \"2.336.0\" (the current release of actions/runner or later), or remove the key for the default"
            ),
            format!(
                "{f}:16:19: forges.cb.runner_group_id: `runner_group_id` is for GitHub forges only; add `kind = \"github\"` if this forge is GitHub (the default kind is \"forgejo\"), or remove it"
            ),
        ]
    );
}

#[test]
fn example_config_parses() {
    let c = parse_example();
    let names: Vec<&str> = c.images.keys().map(String::as_str).collect();
    assert_eq!(names, ["debian", "omnios", "tiny"]);
    let omnios = &c.images["omnios"];
    assert_eq!(omnios.os, config::GuestOs::Illumos);
    assert_eq!(omnios.readiness_probes, 2);
    assert!(
        c.images
            .values()
            .all(|i| i.path.starts_with("/var/cache/solstice/images"))
    );
    let forges: Vec<&str> = c.forges.keys().map(String::as_str).collect();
    assert_eq!(
        forges,
        ["codeberg", "gitea", "github", "github-org", "work"]
    );
    assert_eq!(c.forges["codeberg"].fetch_interval.as_secs(), 30);
    assert_eq!(c.forges["work"].runner_name, "solstice-builder-1");
    assert!(c.forges["codeberg"].github.is_none());
    let gh = c.forges["github"].github.as_ref().unwrap();
    assert_eq!(
        gh.scope,
        config::GithubScope::Repository {
            owner: "example-org".into(),
            repo: "example-repo".into()
        }
    );
    assert!(matches!(
        c.forges["github"].credentials,
        config::CredentialSource::GithubApp { app_id: 123456, .. }
    ));
    let org = &c.forges["github-org"];
    assert_eq!(
        org.github.as_ref().unwrap().scope,
        config::GithubScope::Organization("example-org".into())
    );
    assert_eq!(org.fetch_interval.as_secs(), 1);
    assert_eq!(org.labels, ["debian"]);
    let gateway = c.debug_ssh.as_ref().unwrap();
    assert_eq!(gateway.public_host, "ci.example.org");
    assert_eq!(gateway.listen.port(), 2222);
    let debug = &c.forges["codeberg"].debug_ssh;
    assert!(debug.enabled);
    assert_eq!(debug.repositories, ["example-org/*", "alice/widgets"]);
    assert_eq!(debug.ttl, Some(std::time::Duration::from_secs(1200)));
    assert!(!c.forges["work"].debug_ssh.enabled);
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
}

#[test]
fn example_config_with_path_checks_names_the_missing_images() {
    // On a machine without the images, each one is reported (not just the first).
    let origin = repo("examples/solstice.toml");
    let text =
        read("examples/solstice.toml").replace("/var/cache/solstice", "/nonexistent/solstice");
    let e = parse_str_with(&text, &origin, &ParseOptions::default()).unwrap_err();
    let missing: Vec<&str> = e
        .iter()
        .filter(|e| e.key.as_deref().is_some_and(|k| k.ends_with(".path")))
        .map(|e| e.key.as_deref().unwrap())
        .collect();
    assert_eq!(
        missing,
        [
            "images.tiny.path",
            "images.debian.path",
            "images.omnios.path"
        ]
    );
}

/// The reference tables: (section heading, key, default cell) for every row.
fn doc_rows() -> Vec<(String, String, String)> {
    let doc = read("docs/reference/config.md");
    let mut section = String::new();
    let mut rows = Vec::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.trim_matches('`').to_owned();
        } else if line.starts_with("| `") {
            let cells: Vec<&str> = line.split(" | ").collect();
            let key = cells[0]
                .trim_start_matches("| ")
                .trim_matches('`')
                .to_owned();
            rows.push((section.clone(), key, cells[2].to_owned()));
        }
    }
    rows
}

/// `images.<name>.vcpus` → (`[images.<name>]`, `vcpus`).
fn split_key(key: &str) -> (String, &str) {
    let (section, name) = key.rsplit_once('.').unwrap();
    (format!("[{section}]"), name)
}

#[test]
fn reference_doc_lists_exactly_the_known_keys() {
    let rows = doc_rows();
    let documented: Vec<(String, String)> = rows
        .iter()
        .map(|(s, k, _)| (s.clone(), k.clone()))
        .collect();
    let known: Vec<(String, String)> = known_keys()
        .iter()
        .map(|k| {
            let (s, n) = split_key(k);
            (s, n.to_owned())
        })
        .collect();
    assert_eq!(
        documented, known,
        "docs/reference/config.md is out of step with src/config/raw.rs"
    );
}

#[test]
fn example_sets_every_known_key() {
    let example = read("examples/solstice.toml");
    let table: toml::Table = example.parse().unwrap();
    for key in known_keys() {
        let (section, name) = split_key(&key);
        let found = match section.as_str() {
            // A forge's sub-table, in some forge.
            "[forges.<name>.debug_ssh]" => table["forges"]
                .as_table()
                .unwrap()
                .values()
                .filter_map(|f| f.get("debug_ssh").and_then(|d| d.as_table()))
                .any(|d| d.contains_key(name)),
            "[images.<name>]" | "[forges.<name>]" => table
                [section.trim_start_matches('[').split('.').next().unwrap()]
            .as_table()
            .unwrap()
            .values()
            .any(|i| i.as_table().unwrap().contains_key(name)),
            s => table[s.trim_matches(['[', ']'])]
                .as_table()
                .unwrap()
                .contains_key(name),
        };
        assert!(found, "examples/solstice.toml does not show {key}");
        assert!(
            example.contains(&format!("\n{name} = ")),
            "examples/solstice.toml does not set {key} at the start of a line"
        );
    }
}

#[test]
fn documented_defaults_are_the_real_defaults() {
    let forge = "url = \"https://f.example\"\nrunner_file = \"/r\"\n";
    let base = format!("[forges.f]\n{forge}[images.tiny]\npath = \"/x\"\n");
    let parse = |text: &str| {
        let c = parse_str_with(
            text,
            Path::new("/etc/solstice/solstice.toml"),
            &ParseOptions { check_paths: false },
        )
        .unwrap_or_else(|e| panic!("{text}\n{e}"));
        format!("{c:?}")
    };
    let plain = parse(&base);
    let github = "kind = \"github\"\nurl = \"https://github.com/o\"\ntoken_file = \"/t\"\n";
    let plain_github = parse(&format!(
        "[forges.f]\n{github}[images.tiny]\npath = \"/x\"\n"
    ));
    let gateway = "[debug_ssh]\nlisten = \"0.0.0.0:2222\"\n";
    // A comment where the key goes, so that warnings have the same lines.
    let plain_debug = parse(&format!("{base}[forges.f.debug_ssh]\n#\n{gateway}"));
    let mut checked = 0;
    for (section, key, default) in doc_rows() {
        // Only literal TOML defaults in backticks; "none", "required" etc. are prose.
        let Some(literal) = default.strip_prefix('`').and_then(|d| d.strip_suffix('`')) else {
            continue;
        };
        if literal.contains('<') {
            continue; // `["<name>"]`: checked by the next assertion.
        }
        let (text, plain) = match section.as_str() {
            "[images.<name>]" => (format!("{base}{key} = {literal}\n"), &plain),
            // Keys only GitHub forges take: against a GitHub section.
            "[forges.<name>]" if ["runner_group_id", "runner_version"].contains(&key.as_str()) => (
                format!("[forges.f]\n{key} = {literal}\n{github}[images.tiny]\npath = \"/x\"\n"),
                &plain_github,
            ),
            "[forges.<name>]" => (
                format!("[forges.f]\n{key} = {literal}\n{forge}[images.tiny]\npath = \"/x\"\n"),
                &plain,
            ),
            // With the gateway, which an enabled forge needs.
            "[forges.<name>.debug_ssh]" => (
                format!("{base}[forges.f.debug_ssh]\n{key} = {literal}\n{gateway}"),
                &plain_debug,
            ),
            "[debug_ssh]" => (
                format!(
                    "{base}[forges.f.debug_ssh]\n#\n[debug_ssh]\n{key} = {literal}\nlisten = \"0.0.0.0:2222\"\n"
                ),
                &plain_debug,
            ),
            s => (format!("{s}\n{key} = {literal}\n{base}"), &plain),
        };
        assert_eq!(
            &parse(&text),
            plain,
            "documented default of {section} {key} is not the real one"
        );
        checked += 1;
    }
    assert_eq!(
        checked, 40,
        "expected 40 keys with literal defaults in the doc"
    );
    assert_eq!(parse(&format!("{base}labels = [\"tiny\"]\n")), plain);
}

#[test]
fn check_config_probes_image_files_with_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    make_image(&dir.path().join("raw.img"), "raw", "16M");
    make_image(&dir.path().join("big.qcow2"), "qcow2", "3G");
    let file = dir.path().join("solstice.toml");
    std::fs::write(
        &file,
        "[images.a]\npath = \"raw.img\"\nformat = \"qcow2\"\n\n[images.b]\npath = \"big.qcow2\"\ndisk_size_gib = 2\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_solstice"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let (f, d) = (file.display(), dir.path().display());
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            format!(
                "{f}:3:10: images.a.format: {d}/raw.img is a raw image, not qcow2; images.a.format should be \"raw\""
            ),
            format!(
                "{f}:7:17: images.b.disk_size_gib: 2 GiB is smaller than the image {d}/big.qcow2 (3221225472 bytes, 3.0 GiB); use at least 3, or remove the key to keep the image's size"
            ),
            format!("{f}: 2 problems found"),
        ]
    );
}

// ------------------------------------------- which file a command loads

/// A valid config in `dir` (a blank qcow2 image, a state directory that
/// does not exist yet).
fn valid_config(dir: &Path, name: &str) -> PathBuf {
    let image = dir.join("blank.qcow2");
    if !image.exists() {
        make_image(&image, "qcow2", "16M");
    }
    let file = dir.join(name);
    std::fs::write(
        &file,
        format!(
            "[daemon]\nstate_dir = {:?}\n[qemu]\naccel = \"tcg\"\n[images.tiny]\npath = {image:?}\n",
            dir.join("state")
        ),
    )
    .unwrap();
    file
}

/// `solstice ARGS…` in `cwd` with a clean config environment plus `env`.
fn solstice_in(cwd: &Path, args: &[&str], env: &[(&str, &Path)]) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_solstice"));
    c.args(args)
        .current_dir(cwd)
        .env_remove("SOLSTICE_CONFIG")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", cwd.join("no-home"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn status_json_says_which_config_on_stderr_and_prints_json_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let file = valid_config(dir.path(), "solstice.toml");
    let out = solstice_in(dir.path(), &["status", "--json"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout:?}"));
    assert_eq!(
        v,
        serde_json::json!({"database": null, "daemon_running": false, "in_flight": [], "recent": [], "debug_holds": [], "warm_pools": []})
    );
    // Found in the working directory, and named absolutely.
    assert!(
        stderr.contains(&format!("[solstice] config: {}\n", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("No state yet"), "{stderr}");
}

#[test]
fn xdg_config_home_is_searched() {
    let dir = tempfile::tempdir().unwrap();
    let xdg = dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("solstice")).unwrap();
    let file = valid_config(dir.path(), "xdg/solstice/solstice.toml");
    let out = solstice_in(dir.path(), &["status"], &[("XDG_CONFIG_HOME", &xdg)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("[solstice] config: {}\n", file.display())),
        "{stderr}"
    );
}

#[test]
fn a_missing_solstice_config_file_is_an_error_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    // A ./solstice.toml that must NOT be used instead.
    valid_config(dir.path(), "solstice.toml");
    let wf = dir.path().join("wf.yml");
    std::fs::write(&wf, "jobs:\n  a:\n    steps:\n      - run: 'true'\n").unwrap();
    let missing = dir.path().join("typo.toml");
    for args in [
        vec!["status"],
        vec!["run"],
        vec!["exec", wf.to_str().unwrap()],
        vec!["bench", "engine"],
    ] {
        let out = solstice_in(dir.path(), &args, &[("SOLSTICE_CONFIG", &missing)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!(
                "error: SOLSTICE_CONFIG names {}, which does not exist: fix the variable, or unset it",
                missing.display()
            )),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("[solstice] config:"), "{stderr}");
    }
}

#[test]
fn exec_says_which_config_on_stdout_with_its_other_progress_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = valid_config(dir.path(), "ci.toml");
    let out = solstice_in(
        dir.path(),
        &["exec", "--config", "ci.toml", "no-such-workflow.yml"],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stdout, format!("[solstice] config: {}\n", file.display()));
    assert!(stderr.contains("no-such-workflow.yml"), "{stderr}");
}

#[test]
fn exec_checks_the_image_before_any_vm_starts() {
    let dir = tempfile::tempdir().unwrap();
    make_image(&dir.path().join("raw.img"), "raw", "16M");
    std::fs::write(
        dir.path().join("solstice.toml"),
        format!(
            "[daemon]\nstate_dir = {:?}\n[qemu]\naccel = \"tcg\"\n[images.tiny]\npath = \"raw.img\"\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let wf = dir.path().join("wf.yml");
    std::fs::write(&wf, "jobs:\n  a:\n    steps:\n      - run: 'true'\n").unwrap();
    let out = solstice_in(dir.path(), &["exec", wf.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("images.tiny.format: ")
            && stderr.contains("raw.img is a raw image, not qcow2 (the default); images.tiny.format should be \"raw\""),
        "{stderr}"
    );
    assert!(!dir.path().join("state/jobs").exists(), "a VM was started");
}

#[test]
fn check_config_prints_warnings_with_their_place_and_still_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let file = valid_config(dir.path(), "solstice.toml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    // Two more images sharing a label, a forge declared the labels of all,
    // and a poll slower than the forge's offline limit.
    let image = dir.path().join("blank.qcow2");
    text.push_str(&format!(
        "[images.gpu]\npath = {image:?}\nlabels = [\"gpu\", \"big\"]\n[images.big]\npath = {image:?}\nlabels = [\"big\"]\n[forges.f]\nurl = \"https://f.example\"\nrunner_file = \"/r\"\nfetch_interval_secs = 90\n"
    ));
    std::fs::write(&file, &text).unwrap();
    let out = solstice_in(dir.path(), &["check-config", "solstice.toml"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim_end(),
        "solstice.toml: OK (3 images: big, gpu, tiny; 1 forge: f), 2 warnings"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("solstice.toml:13:9: warning: forges.f: labels \"big\" (images big, gpu) and \"tiny\" (image tiny) are both declared to this forge, but no single image has both (2 such label pairs in all);"),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("solstice.toml:16:23: warning: forges.f.fetch_interval_secs: the forge shows a runner as offline when it has not called for 60 seconds"),
        "{stderr}"
    );
    // A label in forgejo-runner's form is an error, with its place.
    std::fs::write(
        &file,
        text.replace(
            "labels = [\"gpu\", ",
            "labels = [\"gpu:docker://node:20\", ",
        ),
    )
    .unwrap();
    let out = solstice_in(dir.path(), &["check-config", "solstice.toml"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("solstice.toml:9:11: images.gpu.labels: label \"gpu:docker://node:20\" has a `:`; Solstice labels are names only"),
        "{stderr}"
    );
}

/// `images.<name>.cpu`, `path_prepend` and `node`: good values reach the
/// image, bad ones are reported at the offending character.
#[test]
fn cpu_model_path_prepend_and_node_are_checked_with_line_and_column() {
    let origin = Path::new("/etc/solstice/solstice.toml");
    let opts = ParseOptions { check_paths: false };
    let good = "[images.omnios]\npath = \"/x\"\nos = \"illumos\"\ncpu = \"EPYC-Rome,-svm,+rdrand,model-id=Solstice\"\npath_prepend = [\"/usr/gnu/bin\", \"/opt/ooce/bin\"]\nnode = \"/opt/ooce/bin/node\"\n[images.plain]\npath = \"/y\"\n";
    let c = parse_str_with(good, origin, &opts).unwrap();
    let omnios = &c.images["omnios"];
    assert_eq!(
        omnios.cpu.as_deref(),
        Some("EPYC-Rome,-svm,+rdrand,model-id=Solstice")
    );
    assert_eq!(omnios.path_prepend, ["/usr/gnu/bin", "/opt/ooce/bin"]);
    assert_eq!(omnios.node.as_deref(), Some("/opt/ooce/bin/node"));
    let plain = &c.images["plain"];
    assert_eq!(
        (
            plain.cpu.as_deref(),
            plain.path_prepend.len(),
            plain.node.as_deref()
        ),
        (None, 0, None)
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    let bad = [
        ("cpu = \"\"", "1:8", "the CPU model is empty"),
        ("cpu = \"qemu64, +rdrand\"", "1:15", "has a space"),
        ("cpu = \"-cpu host\"", "1:12", "has a space"),
        ("cpu = \"-svm\"", "1:8", "starts with `-`"),
        ("cpu = \",+svm\"", "1:8", "the model name is missing"),
        ("cpu = \"qemu64;reboot\"", "1:8", "is not a CPU model name"),
        (
            "cpu = \"qemu64,+rdrand,svm\"",
            "1:23",
            "write `+svm`, `-svm` or `svm=on`",
        ),
        (
            "cpu = \"qemu64,+\"",
            "1:15",
            "is not a `+flag` or `-flag` feature",
        ),
        (
            "cpu = \"qemu64,level=\"",
            "1:15",
            "is not a `key=value` feature",
        ),
        (
            "path_prepend = [\"/usr/gnu/bin\", \"opt/bin\"]",
            "1:34",
            "\"opt/bin\" is not an absolute path",
        ),
        (
            "path_prepend = [\"/a:/b\"]",
            "1:20",
            "has a `:`, which separates `PATH` entries",
        ),
        (
            "path_prepend = [\"/a\\nb\"]",
            "1:17",
            "has a newline or control character",
        ),
        ("node = \"node\"", "1:9", "\"node\" is not an absolute path"),
    ];
    for (line, at, message) in bad {
        let text = format!("{line}\npath = \"/x\"\n");
        let text = format!("[images.a]\n{text}");
        let e = parse_str_with(&text, origin, &opts)
            .err()
            .unwrap_or_else(|| panic!("{line} was accepted"));
        let shown = e.to_string();
        let (l, col) = at.split_once(':').unwrap();
        let l: usize = l.parse::<usize>().unwrap() + 1;
        assert!(
            shown.starts_with(&format!("/etc/solstice/solstice.toml:{l}:{col}: images.a.")),
            "{line}: {shown}"
        );
        assert!(shown.contains(message), "{line}: {shown}");
        assert_eq!(e.len(), 1, "{line}: {shown}");
    }

    // `host` runs only under KVM: a warning unless the accelerator is KVM.
    let host = "[images.a]\npath = \"/x\"\ncpu = \"host,-vmx\"\n";
    let c = parse_str_with(host, origin, &opts).unwrap();
    assert_eq!(c.warnings.len(), 1);
    let w = c.warnings[0].to_string();
    assert!(
        w.contains(":3:7: warning: images.a.cpu: QEMU runs the `host` CPU model only under KVM"),
        "{w}"
    );
    let kvm = format!("[qemu]\naccel = \"kvm\"\n{host}");
    assert!(
        parse_str_with(&kvm, origin, &opts)
            .unwrap()
            .warnings
            .is_empty()
    );
}

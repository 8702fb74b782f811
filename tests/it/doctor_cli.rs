//! `solstice doctor` as an operator runs it: the real binary, real QEMU and
//! qemu-img, a real state database.

use crate::support;

use std::process::Command;

use solstice::store::{KvmFailureRow, Store};
use support::TestEnv;

fn doctor(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_solstice"))
        .arg("doctor")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn line<'a>(out: &'a str, what: &str) -> &'a str {
    out.lines()
        .find(|l| l.get(6..).is_some_and(|r| r.starts_with(what)))
        .unwrap_or_else(|| panic!("no `{what}` line in:\n{out}"))
}

#[test]
fn a_working_host_passes_with_one_line_per_check() {
    let env = TestEnv::tiny();
    let config = env.write_config_file();
    let cfg = config.to_str().unwrap();
    let (code, out, err) = doctor(&["--config", cfg]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.starts_with(&format!("[solstice] config: {cfg}\n")),
        "{out}"
    );
    assert!(line(&out, "config:").starts_with("ok"), "{out}");
    assert!(
        line(&out, "qemu:").contains("QEMU emulator version"),
        "{out}"
    );
    assert!(
        line(&out, "qemu-img:").contains("qemu-img version"),
        "{out}"
    );
    assert!(line(&out, "/dev/kvm:").len() > 10, "{out}");
    assert!(
        line(&out, "accelerator:").contains("tcg (configured: accel = \"tcg\")"),
        "{out}"
    );
    assert!(line(&out, "firmware:").starts_with("ok"), "{out}");
    let image = line(&out, "image tiny:");
    assert!(
        image.starts_with("ok") && image.contains(", qcow2, "),
        "{out}"
    );
    assert_eq!(
        line(&out, "image tiny cpu:"),
        "ok    image tiny cpu: qemu64,+rdrand under tcg (default for Linux guests)",
        "{out}"
    );
    assert!(line(&out, "state directory:").starts_with("ok"), "{out}");
    let net = line(&out, "network isolation:");
    assert!(
        net.starts_with("ok") && net.contains("isolated for tiny") && net.contains("pasta"),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with("Jobs can run on this host."),
        "{out}"
    );
}

#[test]
fn problems_fail_with_what_to_do_and_exit_1() {
    let mut env = TestEnv::tiny();
    env.config.qemu.system_binary = "/nonexistent/qemu-system-x86_64".into();
    let config = env.write_config_file();
    let big = support::blank_qcow2(env.dir.path(), "big.qcow2", "3G");
    // A qcow2 image declared raw, a disk smaller than its image, a forge
    // whose port is closed.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[images.tiny]\n", "[images.tiny]\nformat = \"raw\"\n")
            + &format!("[images.small]\npath = {big:?}\ndisk_size_gib = 1\n")
            + "[forges.down]\nurl = \"http://127.0.0.1:9\"\nregistration_token_file = \"/nonexistent/token\"\n"
            // A GitHub forge: its key file is checked, GitHub itself is not
            // called (`solstice run` checks it).
            + "[forges.gh]\nkind = \"github\"\nurl = \"https://github.com/o/r\"\napp_id = 1\ninstallation_id = 2\nprivate_key_file = \"/nonexistent/app.pem\"\n",
    )
    .unwrap();
    let (code, out, err) = doctor(&["--config", config.to_str().unwrap(), "--forges"]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    let qemu = line(&out, "qemu:");
    assert!(
        qemu.starts_with("FAIL") && qemu.contains("`qemu.system_binary`"),
        "{out}"
    );
    let tiny = line(&out, "image tiny:");
    assert!(
        tiny.starts_with("FAIL")
            && tiny
                .contains("is qcow2, but `images.tiny.format` says \"raw\": set it to \"qcow2\""),
        "{out}"
    );
    let small = line(&out, "image small:");
    assert!(
        small.starts_with("FAIL")
            && small
                .contains("`images.small.disk_size_gib = 1` is smaller than the image (3.0 GiB)"),
        "{out}"
    );
    let creds = line(&out, "forge down credentials:");
    assert!(
        creds.starts_with("FAIL") && creds.contains("`forges.down.registration_token_file`"),
        "{out}"
    );
    let forge = line(&out, "forge down:");
    assert!(
        forge.starts_with("FAIL") && forge.contains("`forges.down.url`"),
        "{out}"
    );
    let gh_creds = line(&out, "forge gh credentials:");
    assert!(
        gh_creds.starts_with("FAIL")
            && gh_creds.contains("/nonexistent/app.pem")
            && gh_creds.contains("`forges.gh.private_key_file` (docs/github.md)"),
        "{out}"
    );
    assert_eq!(
        line(&out, "forge gh:"),
        "ok    forge gh: github forge: checked by `solstice run`",
        "{out}"
    );
    assert!(
        out.contains("problem(s) above stop jobs from running"),
        "{out}"
    );
}

#[test]
fn retry_kvm_forgets_the_daemons_record() {
    let env = TestEnv::tiny();
    let config = env.write_config_file();
    std::fs::create_dir_all(&env.config.daemon.state_dir).unwrap();
    let db = env.config.daemon.state_dir.join("solstice.db");
    Store::open(&db)
        .unwrap()
        .record_kvm_failure(&KvmFailureRow {
            reason: "the guest printed nothing".into(),
            fingerprint: "QEMU emulator version 10; Linux 6".into(),
            at_unix: 1,
        })
        .unwrap();
    let (code, out, err) = doctor(&["--config", config.to_str().unwrap(), "--retry-kvm"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        line(&out, "retry KVM:").contains("forgot the recorded KVM failure"),
        "{out}"
    );
    assert_eq!(Store::open(&db).unwrap().kvm_failure().unwrap(), None);
    let (_, out, _) = doctor(&["--config", config.to_str().unwrap(), "--retry-kvm"]);
    assert!(
        line(&out, "retry KVM:").contains("no KVM failure was recorded"),
        "{out}"
    );
}

#[test]
fn a_missing_config_exits_2() {
    let (code, _, err) = doctor(&["--config", "/nonexistent/solstice.toml"]);
    assert_eq!(code, Some(2), "{err}");
}

/// A state directory whose `jobs/` the user cannot write (left by an earlier
/// `sudo solstice exec`, say) fails doctor, as it would fail `exec`.
#[test]
fn an_unwritable_jobs_directory_fails() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    let root = nix::unistd::geteuid().is_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = support::blank_qcow2(dir.path(), "blank.qcow2", "16M");
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("jobs")).unwrap();
    if root {
        // The state directory is nobody's, its jobs/ root's (mode 0755).
        nix::unistd::chown(&state, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    } else {
        std::fs::set_permissions(state.join("jobs"), std::fs::Permissions::from_mode(0o555))
            .unwrap();
    }
    let config = dir.path().join("solstice.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = {state:?}\n[qemu]\naccel = \"tcg\"\n[images.blank]\npath = {image:?}\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_solstice"));
    cmd.args(["doctor", "--config"]).arg(&config);
    if root {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let l = line(&stdout, "state directory:");
    assert!(
        l.starts_with("FAIL")
            && l.contains(&format!(
                "cannot create files in {}",
                state.join("jobs").display()
            )),
        "{stdout}"
    );
}

#[test]
fn config_warnings_are_warn_lines_with_their_place() {
    let env = TestEnv::tiny();
    let config = env.write_config_file();
    let text = std::fs::read_to_string(&config).unwrap();
    let forge_line = text.lines().count() + 4;
    std::fs::write(
        &config,
        text + "[forges.local]\nurl = \"http://127.0.0.1:9\"\nrunner_file = \"/nonexistent/runner\"\nfetch_interval_secs = 90\n",
    )
    .unwrap();
    let (code, out, err) = doctor(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let w = line(
        &out,
        &format!("forges.local.fetch_interval_secs (line {forge_line}, column 23):"),
    );
    assert!(
        w.starts_with("warn")
            && w.contains(
                "the forge shows a runner as offline when it has not called for 60 seconds"
            )
            && w.ends_with("; use 60 or less (Codeberg asks for at least 30)"),
        "{out}"
    );
    assert!(
        out.trim_end()
            .ends_with("Jobs can run on this host (1 warning(s) above)."),
        "{out}"
    );
}

/// `--image tiny --boot` boots the real tiny guest through the job path and
/// reports the login, the host key, `uname -a`, the network and the tools
/// (tiny has busybox only: no git, gtar, bash, node or python3).
#[test]
fn boot_reports_what_a_job_finds_in_the_tiny_image() {
    let env = TestEnv::tiny();
    let config = env.write_config_file();
    let cfg = config.to_str().unwrap();
    let (code, out, err) = doctor(&["--config", cfg, "--image", "tiny", "--boot"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    // Progress while it boots, then the report.
    assert!(
        out.contains("[solstice] booting image tiny with its NoCloud seed"),
        "{out}"
    );
    assert!(out.contains("[solstice] boot: QEMU pid "), "{out}");
    let boot = line(&out, "boot tiny:");
    assert!(
        boot.starts_with("ok")
            && boot.contains("SSH up after ")
            && boot.contains(" under tcg as root with the job's key; its host key matched the one in the seed (pinned)"),
        "{out}"
    );
    assert!(line(&out, "guest user:").contains("uid=0(root)"), "{out}");
    let uname = line(&out, "guest uname -a:");
    assert!(uname.contains(": Linux solstice-doctor"), "{out}");
    let net = line(&out, "guest network:");
    assert!(
        net.starts_with("ok") && net.contains(" on eth0; default route via 10.0.2.2"),
        "{out}"
    );
    for tool in ["git", "gtar", "bash", "node", "python3"] {
        let l = line(&out, &format!("guest {tool}:"));
        assert!(
            l.starts_with(&format!("warn  guest {tool}: not found: ")),
            "{out}"
        );
    }
    assert!(out.trim_end().ends_with("warning(s) above)."), "{out}");
    env.assert_no_leaks();
}

/// The metadata cpio seed (padded, with its firstboot.sh) boots the tiny
/// guest through doctor too; its host key cannot be pinned, and doctor says so.
#[test]
fn boot_with_the_metadata_cpio_seed_says_the_host_key_was_trusted_on_first_use() {
    let env = TestEnv::tiny();
    let config = env.write_config_file();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "[images.tiny]\n",
            "[images.tiny]\nseed = \"metadata-cpio\"\n",
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let (code, out, err) = doctor(&["--config", cfg, "-i", "tiny", "--boot"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("with its metadata cpio seed"), "{out}");
    let boot = line(&out, "boot tiny:");
    assert!(
        boot.starts_with("ok")
            && boot.contains(
                "its host key was trusted on first use (the metadata cpio seed cannot carry one)"
            ),
        "{out}"
    );
    assert!(line(&out, "guest network:").starts_with("ok"), "{out}");
    env.assert_no_leaks();
}

/// An image that never answers SSH fails with the console tail, exit 1;
/// an unknown image name is a usage error, exit 2; --boot needs --image.
#[test]
fn boot_of_an_image_that_never_comes_up_fails_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let image = support::blank_qcow2(dir.path(), "blank.qcow2", "16M");
    let state = dir.path().join("state");
    let config = dir.path().join("solstice.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = {state:?}\n[qemu]\naccel = \"tcg\"\n[images.blank]\npath = {image:?}\nboot_timeout_secs = 8\n"
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let (code, out, err) = doctor(&["--config", cfg, "--image", "blank", "--boot"]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    let boot = line(&out, "boot blank:");
    assert!(
        boot.starts_with("FAIL") && boot.contains("the guest did not come up over SSH"),
        "{out}"
    );
    assert!(err.contains("did not accept SSH within 8 s"), "{err}");
    assert!(err.contains("boot-failures/blank.console.log"), "{err}");
    assert!(!out.contains("guest user:"), "{out}");
    let leaks = solstice::testing::leaks::check(&state.join("jobs"));
    assert!(leaks.is_empty(), "{leaks:#?}");

    let (code, _, err) = doctor(&["--config", cfg, "--image", "nosuch", "--boot"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("no image `nosuch` in the configuration; configured images: blank"),
        "{err}"
    );
    let (code, _, err) = doctor(&["--config", cfg, "--boot"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--image"), "{err}");
}

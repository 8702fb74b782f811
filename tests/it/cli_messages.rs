//! Mistakes an operator makes on the command line, and the messages that
//! say what to do: an unwritable state directory, `--matrix` selectors
//! that match nothing, `run` without forges. Everything fails before a VM
//! starts; the image is a blank qcow2.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The user the unprivileged checks run as when the tests run as root.
const NOBODY: u32 = 65534;

fn solstice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_solstice"))
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// A temporary directory others may read (the tests may run a child as
/// another user), with a blank qcow2 image and a config whose state
/// directory is `state_dir`.
fn setup(state_dir: &Path, forge: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = dir.path().join("blank.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let state = if state_dir.is_absolute() {
        state_dir.to_path_buf()
    } else {
        dir.path().join(state_dir)
    };
    let config = dir.path().join("solstice.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = {state:?}\n[qemu]\naccel = \"tcg\"\n[images.tiny]\npath = {image:?}\n{forge}"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, config)
}

fn write_workflow(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("wf.yml");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const FORGE: &str =
    "[forges.local]\nurl = \"http://127.0.0.1:9\"\nrunner_file = \"/nonexistent/.runner\"\n";

/// A state directory this test's child cannot write: owned by root with
/// mode 0755 and the child running as nobody, or mode 0555 when the tests
/// do not run as root. Returns the user name the message names.
fn unwritable_state_dir(state: &Path, cmd: &mut Command) -> &'static str {
    std::fs::create_dir(state).unwrap();
    if is_root() {
        std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o755)).unwrap();
        cmd.uid(NOBODY).gid(NOBODY);
        "nobody"
    } else {
        std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o555)).unwrap();
        ""
    }
}

#[test]
fn an_unwritable_state_directory_names_the_key_owner_and_fix() {
    for command in ["exec", "run"] {
        let (dir, config) = setup(Path::new("state"), FORGE);
        let state = dir.path().join("state");
        let wf = write_workflow(dir.path(), "jobs:\n  a:\n    steps:\n      - run: 'true'\n");
        let mut cmd = solstice();
        cmd.arg(command).arg("--config").arg(&config);
        if command == "exec" {
            cmd.arg(&wf);
        }
        let user = unwritable_state_dir(&state, &mut cmd);
        let out = cmd.output().unwrap();
        let (_, stderr) = text(&out);
        let expected_code = if command == "exec" { 2 } else { 1 };
        assert_eq!(
            out.status.code(),
            Some(expected_code),
            "{command}: {stderr}"
        );
        let s = state.display();
        assert!(
            stderr.contains(&format!(
                "error: daemon.state_dir = {s}: cannot create files in {s} (owned by "
            )),
            "{command}: {stderr}"
        );
        assert!(
            stderr.contains("give it to user ")
                && stderr.contains("or set daemon.state_dir to a directory writable by user"),
            "{command}: {stderr}"
        );
        if !user.is_empty() {
            assert!(
                stderr.contains(&format!(
                    "(owned by root (uid 0), mode 0755; Solstice runs as {user} (uid {NOBODY}))"
                )),
                "{command}: {stderr}"
            );
            assert!(
                stderr.contains(&format!("`sudo chown -R {user} {s}`")),
                "{command}: {stderr}"
            );
        }
        assert!(stderr.contains("caused by: Permission denied"), "{stderr}");
        assert!(!state.join("jobs").exists(), "{command} started a job");
    }
}

#[test]
fn matrix_selectors_that_match_nothing_list_the_axes() {
    let (dir, config) = setup(Path::new("state"), "");
    let wf = write_workflow(
        dir.path(),
        "jobs:\n  build:\n    strategy:\n      matrix:\n        os: [tiny, debian]\n        n: [1, 2]\n    steps:\n      - run: 'true'\n",
    );
    let out = solstice()
        .args(["exec", "--config"])
        .arg(&config)
        .args(["--matrix", "oss=tiny"])
        .arg(&wf)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "error: no matrix combination of job `build` matches --matrix oss=tiny (4 combinations in all):\n  `oss` is not an axis of the matrix; did you mean `os`?\n  the matrix: os = tiny, debian; n = 1, 2\n"
    );
    let out = solstice()
        .args(["exec", "--config"])
        .arg(&config)
        .args(["--matrix", "os=ubuntu"])
        .arg(&wf)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("  `os` is never `ubuntu`; its values are tiny, debian\n"),
        "{stderr}"
    );
    assert!(!dir.path().join("state/jobs").exists());
}

#[test]
fn run_without_forges_points_at_the_forge_docs() {
    let (_dir, config) = setup(Path::new("state"), "");
    let out = solstice()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: The configuration has no [forges.<name>] section, so `solstice run` has nothing to serve: add one for your Forgejo or Gitea instance (docs/forges.md shows how)"),
        "{stderr}"
    );
    let forges_doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/forges.md");
    assert!(forges_doc.is_file());
}

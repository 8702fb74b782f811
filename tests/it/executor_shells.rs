//! The generated wrapper and step scripts under the shells guests have:
//! dash (Debian), busybox ash (tiny guest), ksh93 (illumos `/bin/sh`) and bash.
//! `sh` is put first on `PATH` as a link to the shell under test, and the
//! command runs as a session leader, as it does under sshd/dropbear.
//! Needs `busybox` and `ksh93` on the host (Debian: `apt-get install busybox ksh`).
//! The local-tree copy is also unpacked with busybox tar, as in the tiny guest.

use async_trait::async_trait;
use indexmap::IndexMap;
use serde_json::json;
use solstice::config::GuestOs;
use solstice::events::Conclusion;
use solstice::executor::run_job;
use solstice::guest::{GuestError, GuestSession, LocalSession, OutputChunk, shell_quote};
use solstice::job::{CheckoutSource, JobSpec};
use solstice::secret::Secret;
use solstice::testing::VecSink;
use solstice::workflow::model::parse_workflow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Runs every command as `setsid <shell> -c ...` with `sh` on PATH being `<shell>`.
struct ShellSession {
    bin: PathBuf,
    shell: String,
}

#[async_trait]
impl GuestSession for ShellSession {
    async fn exec(
        &self,
        command: &str,
        stdin: &[u8],
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<u32, GuestError> {
        let inner = format!(
            "PATH={}:$PATH; export PATH; {command}",
            shell_quote(self.bin.to_str().unwrap())
        );
        let outer = format!("exec setsid {} -c {}", self.shell, shell_quote(&inner));
        LocalSession.exec(&outer, stdin, output).await
    }
}

fn session(dir: &Path, target: &str) -> ShellSession {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let target_path = target.split_whitespace().next().unwrap();
    std::os::unix::fs::symlink(target_path, bin.join("sh")).unwrap();
    ShellSession {
        bin,
        shell: target.to_string(),
    }
}

const WORKFLOW: &str = r#"
defaults:
  run:
    shell: sh
jobs:
  build:
    env:
      TRICKY: "it's \"quoted\" $HOME `x` \\ back"
    steps:
      - id: one
        run: |
          printf '%s\n' "tricky=$TRICKY"
          echo "out=1" >> "$GITHUB_OUTPUT"
          printf 'ML<<EOF\na\nb\nEOF\n' >> "$GITHUB_ENV"
          mkdir -p sub
          echo "secret=$PW"
      - working-directory: sub
        run: |
          echo "pwd=$(basename "$(pwd)") ml=$(echo "$ML" | tr '\n' ,) out=${{ steps.one.outputs.out }}"
      - timeout-minutes: 0.03
        run: |
          echo sleeping
          sleep 600 &
          sleep 600
      - if: always()
        run: echo after-timeout
"#;

async fn check_shell(target: &str, secs: u32) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let s = session(dir.path(), target);
    let mut secrets = BTreeMap::new();
    secrets.insert("PW".to_string(), Secret::new("pw-value-99"));
    let spec = JobSpec {
        workflow: parse_workflow(
            &WORKFLOW
                .replace("jobs:", "env:\n  PW: ${{ secrets.PW }}\njobs:")
                .replace("sleep 600", &format!("sleep {secs}")),
        )
        .unwrap(),
        job_id: "build".into(),
        matrix: IndexMap::new(),
        github: json!({"repository": "acme/w"}),
        secrets,
        vars: BTreeMap::new(),
        inputs: json!({}),
        needs: json!({}),
        extra_env: IndexMap::new(),
        checkout: CheckoutSource::None,
        max_job_timeout: None,
        extra_masks: Vec::new(),
        default_actions_url: None,
        actions: None,
        cache: None,
        extra_contexts: Default::default(),
    };
    let sink = VecSink::default();
    let started = Instant::now();
    let runner = crate::support::local_runner(GuestOs::Illumos, "r", &home);
    let out = run_job(&spec, &runner, &s, &sink, CancellationToken::new()).await;
    let lines = sink.lines();
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{target}: too slow"
    );
    let c: Vec<_> = out.steps.iter().map(|s| s.outcome).collect();
    assert_eq!(
        c,
        vec![
            Conclusion::Success,
            Conclusion::Success,
            Conclusion::Failure,
            Conclusion::Success
        ],
        "{target}: {lines:?}"
    );
    assert!(
        lines.contains(&r#"tricky=it's "quoted" $HOME `x` \ back"#.to_string()),
        "{target}: {lines:?}"
    );
    assert!(
        lines.contains(&"secret=***".to_string()),
        "{target}: {lines:?}"
    );
    assert!(
        lines.contains(&"pwd=sub ml=a,b, out=1".to_string()),
        "{target}: {lines:?}"
    );
    assert!(
        lines.contains(&"after-timeout".to_string()),
        "{target}: {lines:?}"
    );
    // Both sleeps (foreground and background) were killed with the group.
    let ps = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ps -eo args | grep -c '^sleep {secs}$' || true"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ps.stdout).trim(),
        "0",
        "{target}: sleep left"
    );
}

#[tokio::test]
async fn dash() {
    check_shell("/bin/dash", 701).await;
}

#[tokio::test]
async fn busybox_ash() {
    check_shell("/bin/busybox sh", 702).await;
}

#[tokio::test]
async fn ksh93() {
    check_shell("/bin/ksh93", 703).await;
}

#[tokio::test]
async fn bash_as_sh() {
    check_shell("/bin/bash", 704).await;
}

/// The local tree (sparse file, FIFO, socket, state directory, long names)
/// copied through the generated unpack command under `target`, with `tar`
/// being busybox's when `busybox_tar`.
async fn check_local_tree(target: &str, busybox_tar: bool) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let s = session(dir.path(), target);
    if busybox_tar {
        std::os::unix::fs::symlink("/bin/busybox", s.bin.join("tar")).unwrap();
    }
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join(".solstice/jobs/j")).unwrap();
    std::fs::write(tree.join("a.txt"), "a\n").unwrap();
    std::fs::File::create(tree.join("disk.img"))
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(tree.join("fifo"))
            .status()
            .unwrap()
            .success()
    );
    let _s1 = std::os::unix::net::UnixListener::bind(tree.join("app.sock")).unwrap();
    let _s2 =
        std::os::unix::net::UnixListener::bind(tree.join(".solstice/jobs/j/qmp.sock")).unwrap();
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
    std::fs::create_dir_all(tree.join("d".repeat(120))).unwrap();
    std::fs::write(tree.join(&long), "long\n").unwrap();
    let spec = JobSpec {
        workflow: parse_workflow(&format!(
            "jobs:\n  b:\n    steps:\n      - uses: actions/checkout@v4\n      - shell: sh\n        run: |\n          ls -A | sort | tr '\\n' ' '; echo\n          wc -c < disk.img | tr -d ' '\n          cat {long}\n"
        ))
        .unwrap(),
        job_id: "b".into(),
        matrix: IndexMap::new(),
        github: json!({"repository": "acme/w"}),
        secrets: BTreeMap::new(),
        vars: BTreeMap::new(),
        inputs: json!({}),
        needs: json!({}),
        extra_env: IndexMap::new(),
        checkout: CheckoutSource::LocalTree {
            root: tree.clone(),
            exclude: vec![tree.join(".solstice")],
        },
        max_job_timeout: None,
        extra_masks: Vec::new(),
        default_actions_url: None,
        actions: None,
        cache: None,
        extra_contexts: Default::default(),
    };
    let sink = VecSink::default();
    let runner = crate::support::local_runner(GuestOs::Linux, "r", &home);
    let out = run_job(&spec, &runner, &s, &sink, CancellationToken::new()).await;
    let lines = sink.lines();
    assert_eq!(out.conclusion, Conclusion::Success, "{target}: {lines:?}");
    let step = sink.step_lines(1);
    assert_eq!(
        step,
        vec![
            format!("a.txt {} disk.img ", "d".repeat(120)),
            (8u32 << 20).to_string(),
            "long".to_string()
        ],
        "{target}: {lines:?}"
    );
}

#[tokio::test]
async fn local_tree_busybox_ash_and_busybox_tar() {
    check_local_tree("/bin/busybox sh", true).await;
}

#[tokio::test]
async fn local_tree_dash_and_gnu_tar() {
    check_local_tree("/bin/dash", false).await;
}

#[tokio::test]
async fn local_tree_ksh93_and_gnu_tar() {
    check_local_tree("/bin/ksh93", false).await;
}

// ---- Generated guest shell under the shells guests have (dash, busybox
// ash, illumos ksh93). These need those shells on the host, so they live here
// rather than in the library's unit tests (the Nix build runs those).

mod generated_shell {
    use solstice::executor::checkout::{RemoteCheckout, Submodules, clone_url, remote_script};
    use solstice::executor::clock;
    use std::time::SystemTime;

    const SHELLS: [&[&str]; 3] = [&["/bin/dash"], &["/bin/busybox", "sh"], &["/bin/ksh93"]];

    /// `sh -n -c script` under every guest shell: it parses.
    fn parses_everywhere(script: &str) {
        for sh in SHELLS {
            let out = std::process::Command::new(sh[0])
                .args(&sh[1..])
                .args(["-n", "-c", script])
                .output()
                .unwrap();
            assert!(out.status.success(), "{sh:?}: {script}: {:?}", out.stderr);
        }
    }

    /// Every form of the remote checkout script parses.
    #[test]
    fn remote_checkout_scripts_are_posix() {
        for submodules in [Submodules::None, Submodules::Top, Submodules::Recursive] {
            for lfs in [false, true] {
                for fetch_depth in [0, 1] {
                    for auth_config in [None, Some("/t/a b/auth.gitconfig".to_string())] {
                        parses_everywhere(&remote_script(&RemoteCheckout {
                            url: clone_url("https://forge.example", "acme/w"),
                            sha: Some("abc123".into()),
                            git_ref: "refs/heads/main".into(),
                            dest: "/h/w".into(),
                            fetch_depth,
                            fetch_tags: false,
                            clean: true,
                            submodules,
                            lfs,
                            auth_config,
                        }));
                    }
                }
            }
        }
    }

    /// The clock-setting commands parse (never run here: they would set the
    /// host's clock).
    #[test]
    fn clock_set_commands_are_posix() {
        let now = SystemTime::now();
        for kind in [clock::Kind::Gnu, clock::Kind::Fine, clock::Kind::Coarse] {
            for sudo in [false, true] {
                parses_everywhere(&clock::set_command(now, kind, sudo));
            }
        }
    }

    /// The clock reading runs under every shell and prints one line.
    #[test]
    fn clock_reading_runs_under_posix_shells() {
        for sh in [
            &["/bin/dash"][..],
            &["/bin/busybox", "sh"],
            &["/bin/ksh93"],
            &["/bin/bash"],
        ] {
            let out = std::process::Command::new(sh[0])
                .args(&sh[1..])
                .arg("-c")
                .arg(clock::READ)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let r = clock::parse(&text).unwrap_or_else(|| panic!("{sh:?}: {text:?}"));
            let off = clock::offset(r, SystemTime::now());
            assert!(off.low <= 0.0 && off.low > -5.0, "{sh:?}: {off:?}");
            assert_eq!(text.lines().count(), 1, "{sh:?}: {text:?}");
            assert!(out.stderr.is_empty(), "{sh:?}: {:?}", out.stderr);
        }
    }

    /// busybox's applets alone (no GNU date on PATH) still give a fine reading.
    #[test]
    fn clock_reading_with_busybox_applets_only() {
        let dir = tempfile::tempdir().unwrap();
        for a in ["date", "adjtimex", "awk"] {
            std::os::unix::fs::symlink("/bin/busybox", dir.path().join(a)).unwrap();
        }
        let out = std::process::Command::new("/bin/busybox")
            .args(["sh", "-c", clock::READ])
            .env("PATH", dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let r = clock::parse(&text).unwrap_or_else(|| panic!("{text:?}"));
        assert_eq!(r.kind, clock::Kind::Fine, "{text}");
    }
}

//! Real jobs in the tiny busybox/dropbear guest (no bash, POSIX sh only), under
//! TCG, through the same path as `solstice exec`. Every test checks for leaks.

use crate::support;

use std::time::{Duration, Instant};

use solstice::events::{Conclusion, EventSink, JobEvent};
use solstice::job::{CheckoutSource, RunError};
use support::{RunOpts, TestEnv, all_text, step_lines};
use tokio_util::sync::CancellationToken;

fn conclusions(report: &solstice::job::RunReport) -> Vec<(Conclusion, Conclusion)> {
    report
        .outcome
        .steps
        .iter()
        .map(|s| (s.outcome, s.conclusion))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn step_semantics_failure_paths_and_file_commands_in_a_posix_only_guest() {
    let env = TestEnv::tiny();
    let yaml = r####"
name: semantics
on: push
env:
  LEVEL: workflow
  OVERRIDE: workflow
jobs:
  check:
    runs-on: tiny
    env:
      OVERRIDE: job
    outputs:
      answer: ${{ steps.produce.outputs.answer }}
    steps:
      - name: No bash here, so the default shell is sh
        run: |
          if command -v bash >/dev/null 2>&1; then echo "unexpected bash"; exit 1; fi
          echo "shell ok; level=$LEVEL override=$OVERRIDE ci=$CI os=$RUNNER_OS"
          echo "repo=$GITHUB_REPOSITORY sha=$GITHUB_SHA ws=$GITHUB_WORKSPACE"
          test "$PWD" = "$GITHUB_WORKSPACE"
      - id: produce
        run: |
          echo "answer=42" >> "$GITHUB_OUTPUT"
          printf 'MULTI<<EOF\nline one\nline two\nEOF\n' >> "$GITHUB_ENV"
          mkdir -p "$HOME/mybin"
          printf '#!/bin/sh\necho custom tool ran\n' > "$HOME/mybin/mytool"
          chmod +x "$HOME/mybin/mytool"
          echo "$HOME/mybin" >> "$GITHUB_PATH"
          echo "## Summary from step 2" >> "$GITHUB_STEP_SUMMARY"
      - name: Output feeds a later if
        if: steps.produce.outputs.answer == 42
        run: |
          mytool
          echo "multi=[$MULTI]"
      - name: Skipped because the output does not match
        if: steps.produce.outputs.answer == 'nope'
        run: echo "should not run"
      - name: Allowed to fail
        id: soft
        continue-on-error: true
        run: exit 3
      - name: Still green after continue-on-error
        run: echo "soft outcome=${{ steps.soft.outcome }} conclusion=${{ steps.soft.conclusion }}"
      - name: Fails for real
        run: |
          echo "about to fail"
          false
          echo "not reached"
      - name: Skipped after a failure
        run: echo "should not run either"
      - name: Runs on failure
        if: failure()
        run: echo "cleanup after failure"
      - name: Asked for bash explicitly
        if: always()
        shell: bash
        run: echo "cannot run"
      - name: Working directory and step env win
        if: always()
        working-directory: sub
        env:
          OVERRIDE: step
        run: |
          echo "cwd=$(basename "$PWD") override=$OVERRIDE"
"####;
    // `sub` must exist in the workspace: create it from a checkout of a small tree.
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir(tree.path().join("sub")).unwrap();
    std::fs::write(tree.path().join("sub/file.txt"), "x").unwrap();
    let yaml = yaml.replace(
        "    steps:\n",
        "    steps:\n      - uses: actions/checkout@v4\n",
    );
    let (result, sink) = env
        .run(
            &yaml,
            RunOpts {
                checkout: Some(CheckoutSource::LocalTree {
                    root: tree.path().to_path_buf(),
                    exclude: Vec::new(),
                }),
                ..Default::default()
            },
        )
        .await;
    let report = result.expect("the VM ran the job");
    let text = all_text(&sink);
    use Conclusion::*;
    assert_eq!(
        conclusions(&report),
        vec![
            (Success, Success), // checkout
            (Success, Success), // sh
            (Success, Success), // produce
            (Success, Success), // if on output
            (Skipped, Skipped), // if not matching
            (Failure, Success), // continue-on-error
            (Success, Success),
            (Failure, Failure), // fails
            (Skipped, Skipped), // skipped after failure
            (Success, Success), // failure()
            (Failure, Failure), // shell: bash without bash
            (Success, Success), // working-directory
        ],
        "{text}"
    );
    assert_eq!(report.outcome.conclusion, Failure);
    assert!(
        text.contains("shell ok; level=workflow override=job ci=true os=Linux"),
        "{text}"
    );
    assert!(
        text.contains("repo=octo/hello sha=0123456789abcdef"),
        "{text}"
    );
    assert!(text.contains("custom tool ran"), "{text}");
    assert!(
        text.contains("multi=[line one\nline two]") || text.contains("multi=[line one"),
        "{text}"
    );
    assert!(
        text.contains("soft outcome=failure conclusion=success"),
        "{text}"
    );
    assert!(text.contains("about to fail"), "{text}");
    assert!(!text.contains("not reached"), "{text}");
    assert!(!text.contains("should not run"), "{text}");
    assert!(text.contains("cleanup after failure"), "{text}");
    assert!(text.contains("cwd=sub override=step"), "{text}");
    assert!(text.contains("Summary from step 2"), "{text}");
    assert!(text.to_lowercase().contains("bash"), "{text}");
    assert_eq!(
        report.outcome.outputs.get("answer").map(String::as_str),
        Some("42")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_and_masked_values_never_leave_the_executor() {
    let env = TestEnv::tiny();
    let yaml = r####"
jobs:
  mask:
    runs-on: tiny
    steps:
      - name: Deploy with ${{ secrets.TOKEN }}
        env:
          TOKEN: ${{ secrets.TOKEN }}
        run: |
          echo "plain: $TOKEN"
          echo "middle:${TOKEN}:end"
          printf '%s' "$TOKEN" | cut -c1-8; echo
          printf 'split: '; printf '%s' "$TOKEN" | cut -c1-10 | tr -d '\n'; sleep 0.2; printf '%s' "$TOKEN" | cut -c11-; echo
          echo "stderr: $TOKEN" >&2
          echo "multi: $MULTI_A"
          echo "::add-mask::runtime-value-123"
          echo "later: runtime-value-123"
          echo "summary $TOKEN" >> "$GITHUB_STEP_SUMMARY"
          echo "out=$TOKEN" >> "$GITHUB_OUTPUT"
"####;
    let (result, sink) = env
        .run(
            yaml,
            RunOpts {
                secrets: vec![("TOKEN", "s3cr3t-Value-XYZ-0987")],
                ..Default::default()
            },
        )
        .await;
    let report = result.expect("job ran");
    assert_eq!(report.outcome.conclusion, Conclusion::Success);
    let text = all_text(&sink);
    for secret_part in ["s3cr3t-Value-XYZ-0987", "runtime-value-123"] {
        assert!(!text.contains(secret_part), "leaked {secret_part}:\n{text}");
    }
    let lines = step_lines(&sink, 0);
    assert!(lines.iter().any(|l| l == "plain: ***"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "middle:***:end"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "split: ***"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "stderr: ***"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "later: ***"), "{lines:?}");
    assert!(text.contains("Deploy with ***"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn step_timeout_kills_the_step_in_the_guest_and_later_steps_still_run() {
    let env = TestEnv::tiny();
    let yaml = r####"
jobs:
  slow:
    runs-on: tiny
    steps:
      - name: Leaves a background process holding the output open
        run: |
          sleep 300 &
          echo bg-started
      - name: Sleeps too long
        timeout-minutes: 0.05
        run: |
          echo started
          sleep 600
      - name: Nothing of it is left
        if: always()
        run: |
          sleep 1
          if ps | grep -v grep | grep -q 'sleep 600'; then echo "still running"; exit 1; fi
          echo "no leftover sleep"
"####;
    let t = Instant::now();
    let (result, sink) = env.run(yaml, RunOpts::default()).await;
    let report = result.expect("job ran");
    let text = all_text(&sink);
    assert!(
        t.elapsed() < Duration::from_secs(120),
        "took {:?}",
        t.elapsed()
    );
    let steps = &report.outcome.steps;
    assert_eq!(steps[0].conclusion, Conclusion::Success, "{text}");
    assert!(text.contains("bg-started"), "{text}");
    assert_eq!(steps[1].conclusion, Conclusion::Failure, "{text}");
    assert!(
        text.to_lowercase().contains("timed out") || text.to_lowercase().contains("timeout"),
        "{text}"
    );
    assert_eq!(steps[2].conclusion, Conclusion::Success, "{text}");
    assert!(text.contains("no leftover sleep"), "{text}");
    assert_eq!(report.outcome.conclusion, Conclusion::Failure);
}

#[tokio::test(flavor = "multi_thread")]
async fn boot_timeout_quotes_the_serial_console_and_leaves_nothing() {
    // The guest is still booting (kernel messages on the console) when the
    // timeout expires: no guest reaches SSH in 2.5 s under TCG.
    let mut env = TestEnv::tiny();
    env.image_mut().boot_timeout = Duration::from_millis(2500);
    let (result, _) = env
        .run(
            "jobs:\n  x:\n    steps:\n      - run: 'true'\n",
            RunOpts::default(),
        )
        .await;
    let err = result.expect_err("no guest boots in 2.5 s under TCG");
    let msg = err.to_string();
    match err {
        RunError::BootTimeout { console, .. } => {
            assert!(
                msg.contains("within 2.5 s (`images.tiny.boot_timeout_secs`)"),
                "{msg}"
            );
            assert!(msg.contains("Last 30 lines of its serial console"), "{msg}");
            // The whole console is kept after the VM is gone, where the message says.
            let kept = solstice::job::boot_failure_console(&env.config, "tiny");
            assert!(msg.contains(&kept.display().to_string()), "{msg}");
            let whole = std::fs::read_to_string(&kept).unwrap();
            let last = console.trim_end().lines().last().unwrap();
            assert!(
                !last.trim().is_empty() && whole.contains(last.trim()),
                "{msg}"
            );
            assert_eq!(msg.matches("serial console").count(), 1, "said once: {msg}");
        }
        other => panic!("expected a boot timeout, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_image_times_out_with_a_clear_error() {
    // A blank disk: SeaBIOS finds nothing to boot.
    let dir = tempfile::tempdir().unwrap();
    let blank = support::blank_qcow2(dir.path(), "blank.qcow2", "64M");
    let mut img = support::image_config("broken", blank, "root", 128);
    img.boot_timeout = Duration::from_secs(6);
    let env = TestEnv::with_image(img);
    let t = Instant::now();
    let (result, _) = env
        .run(
            "jobs:\n  x:\n    steps:\n      - run: 'true'\n",
            RunOpts::default(),
        )
        .await;
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    let err = result.expect_err("a blank disk cannot boot");
    let msg = err.to_string();
    assert!(matches!(err, RunError::BootTimeout { .. }), "{msg}");
    assert!(
        msg.contains("within 6 s (`images.broken.boot_timeout_secs`)"),
        "{msg}"
    );
    assert!(
        msg.contains("printed nothing on its serial console"),
        "{msg}"
    );
}

/// Panics when the first step starts, like a bug inside the job would.
struct PanickingSink;
impl EventSink for PanickingSink {
    fn emit(&self, event: JobEvent) {
        if matches!(event, JobEvent::StepStarted { .. }) {
            panic!("simulated bug inside the job");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_inside_the_job_still_destroys_the_vm() {
    let env = std::sync::Arc::new(TestEnv::tiny());
    let e2 = env.clone();
    let joined = tokio::spawn(async move {
        let _ = e2
            .run_with_sink(
                "jobs:\n  x:\n    steps:\n      - run: 'true'\n",
                RunOpts::default(),
                &PanickingSink,
            )
            .await;
    })
    .await;
    assert!(joined.expect_err("the task panicked").is_panic());
    env.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_mid_step_stops_the_job_and_destroys_the_vm() {
    let env = TestEnv::tiny();
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    struct CancelOnOutput(CancellationToken);
    impl EventSink for CancelOnOutput {
        fn emit(&self, event: JobEvent) {
            if let JobEvent::Line { text, .. } = &event
                && text == "waiting"
            {
                self.0.cancel();
            }
        }
    }
    let sink = CancelOnOutput(c2);
    let t = Instant::now();
    let result = env
        .run_with_sink(
            "jobs:\n  x:\n    steps:\n      - run: |\n          echo waiting\n          sleep 600\n",
            RunOpts {
                cancel: Some(cancel),
                ..Default::default()
            },
            &sink,
        )
        .await;
    env.assert_no_leaks();
    let report = result.expect("job ran until cancelled");
    assert_eq!(report.outcome.conclusion, Conclusion::Cancelled);
    assert!(
        t.elapsed() < Duration::from_secs(90),
        "took {:?}",
        t.elapsed()
    );
}

/// The illumos path as far as a Linux guest can stand in: the metadata-agent's
/// cpio seed (no host key in it, so the first host key seen is pinned), two
/// readiness probes in a row as OmniOS needs, and `RUNNER_OS=illumos`.
#[tokio::test(flavor = "multi_thread")]
async fn metadata_cpio_seed_two_probes_and_illumos_runner_os() {
    let mut env = TestEnv::tiny();
    {
        let img = env.image_mut();
        img.seed = solstice::config::SeedKind::MetadataCpio;
        img.os = solstice::config::GuestOs::Illumos;
        img.readiness_probes = 2;
        img.readiness_probe_interval = Duration::from_millis(500);
    }
    let yaml = "jobs:\n  x:\n    steps:\n      - run: echo \"os=$RUNNER_OS host=$(hostname) user=$(id -un)\"\n      - run: echo second step over the same pinned connection\n";
    let (result, sink) = env.run(yaml, RunOpts::default()).await;
    let report = result.expect("the cpio-seeded guest ran the job");
    let text = all_text(&sink);
    assert_eq!(report.outcome.conclusion, Conclusion::Success, "{text}");
    assert!(text.contains("os=illumos host=solstice-"), "{text}");
    assert!(text.contains("user=root"), "{text}");
    assert!(
        text.contains("second step over the same pinned connection"),
        "{text}"
    );
}

/// Cancelling at every moment of provisioning (before, during and after QEMU is
/// spawned) leaves no QEMU process and no job directory behind.
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_during_provisioning_never_leaks_a_vm() {
    let env = TestEnv::tiny();
    for delay_ms in (0..=200).step_by(8) {
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            c2.cancel();
        });
        let sink = solstice::testing::VecSink::default();
        let result = env
            .run_with_sink(
                "jobs:\n  x:\n    steps:\n      - run: 'true'\n",
                RunOpts {
                    cancel: Some(cancel),
                    ..Default::default()
                },
                &sink,
            )
            .await;
        assert!(
            matches!(result, Err(RunError::Cancelled)),
            "cancel after {delay_ms} ms: {result:?}"
        );
        // A QEMU spawned for a caller that went away is killed on the spawner
        // thread; give it a moment, then nothing may be left.
        let t = Instant::now();
        while !solstice::testing::leaks::check(&env.jobs_dir()).is_empty()
            && t.elapsed() < Duration::from_secs(3)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        env.assert_no_leaks();
    }
}

/// `solstice exec` in a tree like a user's: a sparse file, a FIFO, a live unix
/// socket, names too long for ustar, and Solstice's own state directory (with
/// this job's live QMP socket) inside it. busybox tar in the guest must
/// unpack it (it rejects GNU sparse entries), nothing that tar cannot copy
/// may stop the copy, and each left-out file is named.
#[tokio::test(flavor = "multi_thread")]
async fn local_tree_with_sparse_file_fifo_socket_and_the_state_dir_reaches_busybox_tar() {
    let tree = tempfile::tempdir().unwrap();
    let t = tree.path();
    let mut env = TestEnv::tiny();
    // The state directory lives inside the tree, as when `solstice exec` runs
    // in a project that holds its own solstice.toml and state.
    env.config.daemon.state_dir = t.join("state");
    std::fs::write(t.join("a.txt"), "a\n").unwrap();
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::File::create(t.join("disk.img")).unwrap();
        f.set_len(4 << 20).unwrap();
        f.seek(std::io::SeekFrom::Start(2 << 20)).unwrap();
        f.write_all(b"in the middle").unwrap();
    }
    assert!(
        std::process::Command::new("mkfifo")
            .arg(t.join("fifo"))
            .status()
            .unwrap()
            .success()
    );
    let _sock = std::os::unix::net::UnixListener::bind(t.join("app.sock")).unwrap();
    let dir = "d".repeat(120);
    let long = format!("{dir}/{}", "f".repeat(120));
    std::fs::create_dir_all(t.join(&dir)).unwrap();
    std::fs::write(t.join(&long), "long name\n").unwrap();
    let yaml = format!(
        r#"
jobs:
  tree:
    runs-on: tiny
    steps:
      - uses: actions/checkout@v4
      - run: |
          if command -v bash >/dev/null 2>&1; then echo "unexpected bash"; fi
          ls -A | sort | tr '\n' ' '; echo
          wc -c < disk.img | tr -d ' '
          dd if=disk.img bs=1 skip=2097152 count=13 2>/dev/null; echo
          cat {long}
      - name: The guest clock after the sync at job start (busybox adjtimex)
        run: adjtimex | awk '/tv_sec/ {{s=$2}} /tv_usec/ {{u=$2}} END {{printf "%d.%06d\n", s, u}}'
"#
    );
    let checkout = CheckoutSource::LocalTree {
        root: t.to_path_buf(),
        exclude: vec![env.config.daemon.state_dir.clone()],
    };
    let timed = support::TimedSink::default();
    let result = env
        .run_with_sink(
            &yaml,
            RunOpts {
                checkout: Some(checkout),
                ..Default::default()
            },
            &timed,
        )
        .await;
    env.assert_no_leaks();
    let sink = &timed.inner;
    let report = result.expect("the VM ran the job");
    let text = all_text(sink);
    assert_eq!(report.outcome.conclusion, Conclusion::Success, "{text}");
    // busybox sets whole seconds: the set waits for the host's next second.
    let (skew, _) = timed.skew(2);
    println!("tiny guest clock after the sync at job start: {skew:+.3} s");
    assert!(
        (-1.0..=0.0).contains(&skew),
        "guest clock off by {skew:+.3} s"
    );
    let copy = step_lines(sink, 0);
    assert!(
        copy.contains(
            &"Left out 2 file(s) that tar cannot copy: app.sock (socket), fifo (FIFO)".to_string()
        ),
        "{copy:?}"
    );
    assert!(
        copy.contains(
            &"Left out state: it is Solstice's state directory (daemon.state_dir)".to_string()
        ),
        "{copy:?}"
    );
    assert!(!text.contains("typeflag"), "{text}");
    assert_eq!(
        step_lines(sink, 1),
        vec![
            format!("a.txt {dir} disk.img "),
            (4u32 << 20).to_string(),
            "in the middle".to_string(),
            "long name".to_string(),
        ],
        "{text}"
    );
}

/// `images.<name>.path_prepend` puts the image's directories in front of the
/// guest's `PATH` in every step, in their order, and the job's own
/// `GITHUB_PATH` entries still come before them (as on GitHub, where they
/// go in front of the runner machine's `PATH`).
#[tokio::test(flavor = "multi_thread")]
async fn image_path_prepend_is_on_path_in_every_step_behind_github_path() {
    let mut env = TestEnv::tiny();
    env.image_mut().path_prepend = vec!["/tmp/img-a".into(), "/tmp/img-b".into()];
    let yaml = r#"
jobs:
  x:
    steps:
      - name: The image's directories lead PATH; tools in them are found
        run: |
          case "$PATH" in /tmp/img-a:/tmp/img-b:*) echo "image dirs lead PATH" ;; *) echo "PATH=$PATH"; exit 1 ;; esac
          mkdir -p /tmp/img-a /tmp/img-b /tmp/gh
          printf '#!/bin/sh\necho "imgtool from image dir b"\n' > /tmp/img-b/imgtool
          printf '#!/bin/sh\necho "which: image dir a"\n' > /tmp/img-a/which-one
          printf '#!/bin/sh\necho "which: GITHUB_PATH"\n' > /tmp/gh/which-one
          chmod +x /tmp/img-b/imgtool /tmp/img-a/which-one /tmp/gh/which-one
          which-one
          command -v sh >/dev/null && echo "the guest's own PATH is still there"
          echo /tmp/gh >> "$GITHUB_PATH"
      - name: GITHUB_PATH entries come first, the image's next
        run: |
          case "$PATH" in /tmp/gh:/tmp/img-a:/tmp/img-b:*) echo "order ok" ;; *) echo "PATH=$PATH"; exit 1 ;; esac
          imgtool
          which-one
"#;
    let (result, sink) = env.run(yaml, RunOpts::default()).await;
    let report = result.expect("the job ran");
    let text = all_text(&sink);
    assert_eq!(report.outcome.conclusion, Conclusion::Success, "{text}");
    let first = step_lines(&sink, 0).join("\n");
    assert!(first.contains("image dirs lead PATH"), "{first}");
    assert!(first.contains("which: image dir a"), "{first}");
    assert!(
        first.contains("the guest's own PATH is still there"),
        "{first}"
    );
    let second = step_lines(&sink, 1).join("\n");
    assert!(second.contains("order ok"), "{second}");
    assert!(second.contains("imgtool from image dir b"), "{second}");
    assert!(second.contains("which: GITHUB_PATH"), "{second}");
}

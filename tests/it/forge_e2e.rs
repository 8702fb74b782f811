//! End to end: the strict fake forge + the real `solstice run` binary + real
//! QEMU guests (tiny busybox/dropbear image, TCG).

use crate::support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use solstice::forge::forgejo::proto::TaskResult;
use solstice::testing::fake_forge::{FakeForge, FakeJob, FakeOptions, TaskStatus};
use support::daemon::{Daemon, max_vms_while, qemu_processes_under};
use support::world::{
    SECRET, SLEEPER, World, fake, final_task, log_of, offline, wait_step_running,
};

/// A port on 127.0.0.1 that nothing listens on now (for `metrics_listen`).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const GOOD: &str = r#"
name: ci
on: push
jobs:
  build:
    name: build
    runs-on: tiny
    outputs:
      answer: ${{ steps.calc.outputs.answer }}
    steps:
      - name: Greet
        run: echo "hello from $(uname -s) secret=${{ secrets.API_KEY }}"
      - id: calc
        run: echo "answer=42" >> "$GITHUB_OUTPUT"
      - name: Group
        run: |
          echo "::group::Details"
          echo inside
          echo "::endgroup::"
"#;

const BAD: &str = r#"
name: ci
on: push
jobs:
  test:
    runs-on: linux
    steps:
      - run: echo before-failure; exit 3
      - run: echo never-runs
      - if: failure()
        run: echo cleanup-ran
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_and_failure_reach_the_forge_with_steps_logs_and_outputs() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(2, &[("fake", forge.url(), cred)], "");
    let mut good = FakeJob::new(GOOD, &["tiny"]);
    good.secrets
        .insert("API_KEY".into(), "s3cr3t-value-xyz".into());
    let good = forge.enqueue(good);
    let bad = forge.enqueue(FakeJob::new(BAD, &["linux"]));
    let mut d = world.start();

    let t = final_task(&forge, good, &d).await;
    assert_eq!(t.status, TaskStatus::Success, "{}", log_of(&t));
    assert_eq!(t.steps.len(), 3);
    assert!(
        t.steps.iter().all(|s| s.result == TaskResult::Success),
        "{:#?}",
        t.steps
    );
    let greet = t.step_log(0).join("\n");
    assert!(greet.contains("hello from Linux secret=***"), "{greet}");
    assert!(!log_of(&t).contains("s3cr3t-value-xyz"));
    let group = t.step_log(2).join("\n");
    assert!(
        group.contains("##[group]Details") && group.contains("##[endgroup]"),
        "{group}"
    );
    assert_eq!(t.outputs.get("answer").map(String::as_str), Some("42"));
    assert!(t.no_more, "logs must be closed with no_more");
    assert!(log_of(&t).contains("received task"), "{}", log_of(&t));

    let b = final_task(&forge, bad, &d).await;
    assert_eq!(b.status, TaskStatus::Failure, "{}", log_of(&b));
    let results: Vec<TaskResult> = b.steps.iter().map(|s| s.result).collect();
    assert_eq!(
        results,
        [
            TaskResult::Failure,
            TaskResult::Skipped,
            TaskResult::Success
        ]
    );
    assert!(b.step_log(0).join("\n").contains("before-failure"));
    assert!(b.step_log(2).join("\n").contains("cleanup-ran"));
    assert!(b.outputs.is_empty());
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    // The tasks came gzipped, as real forges send them, and the daemon ran them.
    assert!(
        forge
            .requests()
            .iter()
            .any(|r| r.method == "FetchTask" && r.gzipped)
    );

    // No secret in the daemon's own log: job secrets, the runner token, task tokens.
    let log = d.log_text();
    assert!(!log.contains("s3cr3t-value-xyz"), "{log}");
    assert!(!log.contains(SECRET), "{log}");
    for task in forge.tasks() {
        assert!(!log.contains(task.token.expose()), "task token in the log");
    }

    // SIGTERM: drains (nothing running), STOPPING=1, exit 0, nothing left.
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", d.log_text());
    let all = d.messages.join("\n");
    for m in ["READY=1", "STOPPING=1", "WATCHDOG=1", "STATUS="] {
        assert!(all.contains(m), "no {m} in {all}");
    }
    world.assert_clean();

    // `solstice status` shows both from the database.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_solstice"))
        .args(["status", "--json", "-c"])
        .arg(&world.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("success") && text.contains("failure"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_the_forge_destroys_the_vm_within_seconds() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(1, &[("fake", forge.url(), cred)], "");
    let job = forge.enqueue(FakeJob::new(SLEEPER, &["tiny"]));
    let d = world.start();
    let task = wait_step_running(&forge, job, &d).await;
    assert_eq!(qemu_processes_under(&world.state_dir()).len(), 1);
    let t0 = Instant::now();
    assert!(forge.cancel_task(task));
    while !qemu_processes_under(&world.state_dir()).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the VM still runs {:?} after the cancel:\n{}",
            t0.elapsed(),
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The runner reports the task cancelled, logs closed.
    let ok = forge
        .wait_for(
            |f| {
                f.task(task)
                    .is_some_and(|t| t.client_result == TaskResult::Cancelled && t.no_more)
            },
            Duration::from_secs(30),
        )
        .await;
    let t = forge.task(task).unwrap();
    assert!(ok, "{t:#?}\n{}", d.log_text());
    assert_eq!(t.steps[0].result, TaskResult::Cancelled);
    assert!(log_of(&t).contains("started-sleeping"));
    assert!(!log_of(&t).contains("not-reached"));
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    world.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_timeout_kills_the_vm_and_reports_cancelled() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(1, &[("fake", forge.url(), cred)], "");
    let yaml = SLEEPER.replace(
        "    runs-on: tiny\n",
        "    runs-on: tiny\n    timeout-minutes: \"0.1\"\n",
    );
    let job = forge.enqueue(FakeJob::new(yaml, &["tiny"]));
    let d = world.start();
    let t = final_task(&forge, job, &d).await;
    assert_eq!(t.status, TaskStatus::Cancelled, "{}", log_of(&t));
    assert!(
        log_of(&t).contains("exceeded its maximum execution time"),
        "{}",
        log_of(&t)
    );
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    world.assert_clean();
}

const COUNTER: &str = r#"
name: chatty
on: push
jobs:
  count:
    runs-on: tiny
    steps:
      - run: |
          i=0
          while [ $i -lt 150 ]; do echo "row-$i"; i=$((i+1)); sleep 0.05; done
      - run: echo after-outage
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forge_outage_mid_job_loses_no_log_row() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(2, &[("fake", forge.url(), cred)], "");
    let job = forge.enqueue(FakeJob::new(COUNTER, &["tiny"]));
    let d = world.start();
    wait_step_running(&forge, job, &d).await;
    forge.stop().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    forge.restart().await.unwrap();
    let t = final_task(&forge, job, &d).await;
    assert_eq!(t.status, TaskStatus::Success, "{}", log_of(&t));
    let rows: Vec<&String> = t.log.iter().filter(|l| l.starts_with("row-")).collect();
    let want: Vec<String> = (0..150).map(|i| format!("row-{i}")).collect();
    assert_eq!(
        rows,
        want.iter().collect::<Vec<_>>(),
        "rows lost or duplicated"
    );
    let step0 = t.step_log(0);
    assert_eq!(step0.iter().filter(|l| l.starts_with("row-")).count(), 150);
    assert!(t.step_log(1).join("\n").contains("after-outage"));
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    // One line when the forge went away, one when it came back, for the
    // poll loop (a free slot keeps it polling) and for the reporter.
    let log = d.log_text();
    assert_eq!(log.matches("polling failed").count(), 1, "{log}");
    assert_eq!(log.matches("forge answers again").count(), 1, "{log}");
    assert_eq!(
        log.matches("failed; retrying every interval").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("reporting to the forge works again").count(),
        1,
        "{log}"
    );
    world.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_job_then_restart_leaves_no_orphan_and_reports_the_task() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(1, &[("fake", forge.url(), cred)], "");
    let job = forge.enqueue(FakeJob::new(SLEEPER, &["tiny"]));
    let mut d = world.start();
    let task = wait_step_running(&forge, job, &d).await;
    // Let the reporter upload the step's first row.
    forge
        .wait_for(
            |f| {
                f.task(task)
                    .is_some_and(|t| log_of(&t).contains("started-sleeping"))
            },
            Duration::from_secs(30),
        )
        .await;
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    drop(d);
    let d2 = world.start();
    let t0 = Instant::now();
    // Within seconds: nothing left, and the forge shows the task failed.
    let reported = forge
        .wait_for(
            |f| f.task(task).is_some_and(|t| t.status.is_final()),
            Duration::from_secs(30),
        )
        .await;
    let t = forge.task(task).unwrap();
    assert!(reported, "{t:#?}\n{}", d2.log_text());
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(t.status, TaskStatus::Failure);
    let log = log_of(&t);
    assert!(log.contains("started-sleeping"), "{log}");
    assert!(
        log.contains("The runner stopped while this job was"),
        "{log}"
    );
    assert_eq!(log.matches("started-sleeping").count(), 1, "{log}");
    world.assert_clean();
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_forges_are_served_at_once_one_registered_by_token_in_gitea_style() {
    let forge_a = fake().await;
    let forge_b = FakeForge::start(FakeOptions {
        gitea_errors: true,
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    forge_b.add_registration_token("REGTOKEN0123456789abcdefREGTOKEN01234567");
    let world = World::new();
    let cred_a = offline(&forge_a, &world, "a", SECRET);
    let tok = world.dir.path().join("b.token");
    std::fs::write(&tok, "REGTOKEN0123456789abcdefREGTOKEN01234567\n").unwrap();
    let cred_b = format!("registration_token_file = {tok:?}");
    world.configure(
        2,
        &[("a", forge_a.url(), cred_a), ("b", forge_b.url(), cred_b)],
        "",
    );
    let ja = forge_a.enqueue(FakeJob::new(GOOD, &["tiny"]));
    let jb = forge_b.enqueue(FakeJob::new(GOOD, &["tiny"]));
    let mut d = world.start();
    let ta = final_task(&forge_a, ja, &d).await;
    let tb = final_task(&forge_b, jb, &d).await;
    assert_eq!(ta.status, TaskStatus::Success, "{}", log_of(&ta));
    assert_eq!(tb.status, TaskStatus::Success, "{}", log_of(&tb));
    assert_eq!(forge_b.runners().len(), 1, "registered once");
    assert_eq!(forge_b.request_count("Register"), 1);
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    // A restart reuses the stored credentials: no second Register.
    let mut d = world.start();
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(forge_b.request_count("Register"), 1);
    assert!(forge_a.violations().is_empty() && forge_b.violations().is_empty());
    world.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_capacity_never_runs_more_vms_than_allowed() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(2, &[("fake", forge.url(), cred)], "");
    let short = r#"
name: burst
on: push
jobs:
  j:
    runs-on: tiny
    steps:
      - run: sleep 4; echo done-sleeping
"#;
    let jobs: Vec<i64> = (0..3)
        .map(|_| forge.enqueue(FakeJob::new(short, &["tiny"])))
        .collect();
    // An unrunnable task in the same burst: the payload asks for a label no image has.
    let unmatched = forge.enqueue(FakeJob::new(
        short.replace("runs-on: tiny", "runs-on: [tiny, windows]"),
        &["tiny"],
    ));
    // And one whose payload is not a workflow at all.
    let garbage = forge.enqueue(FakeJob::new("jobs: [unclosed", &["tiny"]));
    let d = world.start();
    let f2 = forge.clone();
    let all_final = move || {
        jobs.iter()
            .chain([&unmatched, &garbage])
            .all(|j| f2.task_for_job(*j).is_some_and(|t| t.status.is_final()))
    };
    let max = max_vms_while(&world.state_dir(), Duration::from_secs(300), all_final).await;
    assert!(max <= 2, "{max} VMs ran at once with capacity 2");
    assert!(max >= 1);
    assert!(
        forge.max_running_tasks() <= 2,
        "{}",
        forge.max_running_tasks()
    );
    for t in forge.tasks() {
        if t.job_id == garbage {
            assert_eq!(t.status, TaskStatus::Failure);
            assert!(
                log_of(&t).contains("Cannot run this task"),
                "{}",
                log_of(&t)
            );
            assert!(log_of(&t).contains("1: jobs: [unclosed"), "{}", log_of(&t));
        } else if t.job_id == unmatched {
            assert_eq!(t.status, TaskStatus::Failure);
            assert!(
                log_of(&t).contains(
                    "No image of this runner has all the labels of `runs-on: [tiny, windows]`, so the job cannot run here: image tiny lacks windows."
                ),
                "{}",
                log_of(&t)
            );
        } else {
            assert_eq!(
                t.status,
                TaskStatus::Success,
                "{}\n{}",
                log_of(&t),
                d.log_text()
            );
        }
    }
    assert_eq!(forge.tasks().len(), 5);
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    world.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_manager_that_stops_reading_notifications_does_not_stall_jobs() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(1, &[("fake", forge.url(), cred)], "");
    let job = forge.enqueue(FakeJob::new(GOOD, &["tiny"]));
    let logs = world.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // A watchdog ping every 50 ms fills the unread socket's queue at once.
    let d = Daemon::spawn_with(&world.config, &logs, false, "100000");
    let t = final_task(&forge, job, &d).await;
    assert_eq!(t.status, TaskStatus::Success, "{}", log_of(&t));
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_cancels_and_reports_and_exits_zero() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    // Two jobs: one that ends within the drain time, one that never ends.
    world.configure(2, &[("fake", forge.url(), cred)], "");
    std::fs::write(
        &world.config,
        std::fs::read_to_string(&world.config)
            .unwrap()
            .replace("drain_timeout_secs = 30", "drain_timeout_secs = 12"),
    )
    .unwrap();
    let quick = r#"
name: quick
on: push
jobs:
  q:
    runs-on: tiny
    steps:
      - run: sleep 4; echo finished-during-drain
"#;
    let short = forge.enqueue(FakeJob::new(quick, &["tiny"]));
    let long = forge.enqueue(FakeJob::new(SLEEPER, &["tiny"]));
    let mut d = world.start();
    wait_step_running(&forge, short, &d).await;
    let long_task = wait_step_running(&forge, long, &d).await;
    // A third job queued now must not be taken once stopping.
    let late = forge.enqueue(FakeJob::new(quick, &["tiny"]));
    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(90));
    let took = t0.elapsed();
    assert!(status.success(), "{status}\n{}", d.log_text());
    assert!(
        took >= Duration::from_secs(11),
        "exited after {took:?}, before the drain time"
    );
    let s = forge.task_for_job(short).unwrap();
    assert_eq!(s.status, TaskStatus::Success, "{}", log_of(&s));
    assert!(log_of(&s).contains("finished-during-drain"));
    let l = forge.task(long_task).unwrap();
    assert_eq!(l.status, TaskStatus::Cancelled, "{}", log_of(&l));
    assert!(l.no_more);
    assert!(
        log_of(&l).contains("The runner is shutting down and its drain time (12s) is over"),
        "{}",
        log_of(&l)
    );
    assert!(
        forge.task_for_job(late).is_none(),
        "a task was fetched while stopping"
    );
    let all = d.messages.join("\n");
    assert!(all.contains("STOPPING=1"), "{all}");
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    world.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_jobs_latency_and_forge_errors_and_a_second_daemon_is_refused() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    let port = free_port();
    world.configure(
        1,
        &[("fake", forge.url(), cred)],
        &format!("metrics_listen = \"{port}\""),
    );
    forge.fail_next("FetchTask", 2, solstice::forge::forgejo::Code::Unavailable);
    let job = forge.enqueue(FakeJob::new(GOOD, &["tiny"]));
    let mut d = world.start();

    // `solstice status` sees the daemon running; a second daemon on the
    // same state directory refuses to start.
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_solstice"))
        .args(["status", "-c"])
        .arg(&world.config)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&st.stdout).starts_with("Daemon: running\n"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_solstice"))
        .args(["run", "-c"])
        .arg(&world.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Another `solstice run` already uses the state directory"),
        "{err}"
    );

    let t = final_task(&forge, job, &d).await;
    assert_eq!(t.status, TaskStatus::Success);
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |name: &str| -> Option<f64> {
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(
        sample("solstice_jobs_total{forge=\"fake\",result=\"success\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(sample("solstice_jobs_running"), Some(0.0), "{body}");
    assert_eq!(sample("solstice_job_capacity"), Some(1.0), "{body}");
    assert_eq!(
        sample("solstice_forge_request_errors_total{forge=\"fake\",method=\"FetchTask\"}"),
        Some(2.0),
        "{body}"
    );
    for h in [
        "task_to_first_step",
        "provision",
        "boot",
        "ssh_ready",
        "first_step",
    ] {
        assert_eq!(
            sample(&format!("solstice_{h}_seconds_count")),
            Some(1.0),
            "{h}: {body}"
        );
    }
    let total = sample("solstice_task_to_first_step_seconds_sum").unwrap();
    let parts: f64 = ["provision", "boot", "ssh_ready", "first_step"]
        .iter()
        .map(|h| sample(&format!("solstice_{h}_seconds_sum")).unwrap())
        .sum();
    assert!((total - parts).abs() < 0.01, "{total} vs {parts}");
    assert!(total > 0.5 && total < 120.0, "{total}");
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    world.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_fetch_answer_is_recovered_with_the_same_request_key() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(1, &[("fake", forge.url(), cred)], "");
    let job = forge.enqueue(FakeJob::new(GOOD, &["tiny"]));
    // The forge assigns the task but its answer comes too late (fetch timeout 5 s).
    forge.set_delay("FetchTask", Duration::from_secs(8));
    let d = world.start();
    let first = forge
        .wait_for(|f| f.task_for_job(job).is_some(), Duration::from_secs(30))
        .await;
    assert!(first, "{}", d.log_text());
    let token_before = forge.task_for_job(job).unwrap().token.expose().to_owned();
    forge.set_delay("FetchTask", Duration::ZERO);
    let t = final_task(&forge, job, &d).await;
    assert_eq!(t.status, TaskStatus::Success, "{}", log_of(&t));
    assert_eq!(forge.tasks().len(), 1, "the job was assigned twice");
    assert_ne!(
        t.token.expose(),
        token_before,
        "recovery mints a fresh task token"
    );
    // One more poll after the job, with a new key.
    let polled = forge
        .wait_for(
            |f| f.request_count("FetchTask") >= 3,
            Duration::from_secs(20),
        )
        .await;
    assert!(polled, "no poll after the job:\n{}", d.log_text());
    let fetches: Vec<_> = forge
        .requests()
        .into_iter()
        .filter(|r| r.method == "FetchTask")
        .collect();
    assert!(fetches.len() >= 2);
    assert_eq!(
        fetches[0].request_key, fetches[1].request_key,
        "the key is kept after a failed fetch"
    );
    assert_ne!(
        fetches[1].request_key,
        fetches.last().unwrap().request_key,
        "and renewed after a successful one"
    );
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forge_down_at_start_does_not_hold_up_readiness_when_credentials_are_known() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(1, &[("fake", forge.url(), cred)], "");
    let job = forge.enqueue(FakeJob::new(GOOD, &["tiny"]));
    forge.stop().await;
    // READY=1 comes although the forge does not answer: the secret is known.
    let d = world.start();
    forge.restart().await.unwrap();
    let t = final_task(&forge, job, &d).await;
    assert_eq!(t.status, TaskStatus::Success, "{}", log_of(&t));
    // The labels were declared once the forge answered.
    let declared = forge
        .wait_for(|f| f.request_count("Declare") >= 1, Duration::from_secs(90))
        .await;
    assert!(declared, "{}", d.log_text());
    assert_eq!(forge.runners()[0].version, "solstice-0.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_of_a_success_reported_only_after_a_restart_still_reach_the_forge() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(1, &[("fake", forge.url(), cred)], "");
    let job = forge.enqueue(FakeJob::new(GOOD, &["tiny"]));
    // Every UpdateTask fails: the logs get through, the final state does not.
    forge.fail_next(
        "UpdateTask",
        1_000_000,
        solstice::forge::forgejo::Code::Unavailable,
    );
    let mut d = world.start();
    let closed = forge
        .wait_for(
            |f| f.task_for_job(job).is_some_and(|t| t.no_more),
            Duration::from_secs(180),
        )
        .await;
    assert!(closed, "{}", d.log_text());
    tokio::time::sleep(Duration::from_secs(1)).await;
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    let t = forge.task_for_job(job).unwrap();
    assert!(!t.status.is_final() && t.outputs.is_empty(), "{t:#?}");
    forge.clear_faults();
    let d2 = world.start();
    let t = final_task(&forge, job, &d2).await;
    assert_eq!(t.status, TaskStatus::Success, "{}", log_of(&t));
    assert_eq!(t.outputs.get("answer").map(String::as_str), Some("42"));
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    world.assert_clean();
}

/// `auto` with KVM forced (test switch) on a QEMU stand-in whose KVM guests
/// crawl: the first job falls back to TCG with a line in its forge log, the
/// fallback is logged once, counted in the metrics and recorded in the
/// state database; the second job goes straight to TCG; after a restart
/// (without the switch) the daemon trusts the record and skips KVM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_kvm_falls_back_once_and_the_record_survives_a_restart() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    let port = free_port();
    world.configure(
        1,
        &[("fake", forge.url(), cred)],
        &format!("metrics_listen = \"{port}\""),
    );
    let qemu = support::paused_kvm_qemu(world.dir.path());
    let text = std::fs::read_to_string(&world.config).unwrap().replace(
        "accel = \"tcg\"",
        &format!("accel = \"auto\"\nsystem_binary = {qemu:?}"),
    );
    std::fs::write(&world.config, text).unwrap();
    let first = forge.enqueue(FakeJob::new(GOOD, &["tiny"]));
    let second = forge.enqueue(FakeJob::new(GOOD, &["tiny"]));
    let logs = world.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut d = Daemon::spawn_env(&world.config, &logs, &[("SOLSTICE_TEST_FORCE_KVM", "1")]);
    d.wait_ready(Duration::from_secs(60));

    let t1 = final_task(&forge, first, &d).await;
    assert_eq!(t1.status, TaskStatus::Success, "{}", log_of(&t1));
    let log1 = log_of(&t1);
    assert!(log1.contains("accelerator kvm"), "{log1}");
    assert!(
        log1.contains("KVM did not run this job's guest: the guest"),
        "{log1}"
    );
    assert!(log1.contains("accelerator tcg"), "{log1}");
    let t2 = final_task(&forge, second, &d).await;
    assert_eq!(t2.status, TaskStatus::Success, "{}", log_of(&t2));
    let log2 = log_of(&t2);
    assert!(
        log2.contains("accelerator tcg") && !log2.contains("accelerator kvm"),
        "{log2}"
    );
    assert!(!log2.contains("KVM did not run"), "{log2}");

    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.lines().any(|l| l == "solstice_kvm_fallbacks_total 1"),
        "{body}"
    );
    assert!(body.lines().any(|l| l == "solstice_kvm_in_use 0"), "{body}");
    let daemon_log = d.log_text();
    assert_eq!(
        daemon_log.matches("KVM does not work on this host").count(),
        1,
        "{daemon_log}"
    );
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    world.assert_clean();

    let db = world.state_dir().join("solstice.db");
    let record = solstice::store::Store::open(&db)
        .unwrap()
        .kvm_failure()
        .unwrap()
        .expect("the fallback is recorded");
    assert!(
        record.reason.contains("console stopped")
            || record.reason.contains("stalled CPUs or a panic"),
        "{record:?}"
    );
    assert!(
        record.fingerprint.contains("QEMU emulator version"),
        "{record:?}"
    );

    // A restart without the switch: the record keeps KVM off without a probe.
    let third = forge.enqueue(FakeJob::new(GOOD, &["tiny"]));
    let mut d = world.start();
    let t3 = final_task(&forge, third, &d).await;
    assert_eq!(t3.status, TaskStatus::Success, "{}", log_of(&t3));
    assert!(!log_of(&t3).contains("accelerator kvm"), "{}", log_of(&t3));
    let daemon_log = d.log_text();
    assert!(
        daemon_log.contains("a job's KVM guest failed on this host before"),
        "{daemon_log}"
    );
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    world.assert_clean();
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
}

/// A job with a malformed `uses:` and an expression that does not parse
/// fails before any VM exists, with every problem in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_cannot_run_fails_before_any_vm_starts() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(1, &[("fake", forge.url(), cred)], "");
    let job = forge.enqueue(FakeJob::new(
        "on: push\njobs:\n  a:\n    runs-on: tiny\n    steps:\n      - uses: actions/setup-go\n      - run: echo ${{ github.sha ==  }}\n",
        &["tiny"],
    ));
    let mut d = world.start();
    let t = final_task(&forge, job, &d).await;
    assert_eq!(t.status, TaskStatus::Failure, "{}", log_of(&t));
    let log = log_of(&t);
    assert!(
        log.contains("This job cannot run as it is; no VM was started"),
        "{log}"
    );
    assert!(
        log.contains(
            "job `a`, step 1: Invalid `uses: actions/setup-go`: the version (`@ref`) is missing"
        ),
        "{log}"
    );
    assert!(log.contains("job `a`, step 2, `run:`: "), "{log}");
    assert!(!log.contains("accelerator"), "no VM: {log}");
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    world.assert_clean();
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
}

/// Scale-out through the forge's queue: two hosts (two daemons, two state
/// directories, two runners) on one forge. Every job runs exactly once, on
/// one of them; a job only one host's labels cover goes there; a drained
/// host takes nothing more while the other carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_one_forge_never_take_the_same_task() {
    let forge = fake().await;
    let (host_a, host_b) = (World::new(), World::new());
    let uuid_a = forge.register_offline(SECRET, "host-a", &["tiny", "linux"]);
    let secret_b = "fedcba9876543210fedcba9876543210fedcba98";
    let uuid_b = forge.register_offline(secret_b, "host-b", &["tiny", "linux", "big"]);
    let cred_a = host_a.secret_file("a.secret", SECRET);
    let cred_b = host_b.secret_file("b.secret", secret_b);
    host_a.configure_labels(
        1,
        &[("shared", forge.url(), cred_a)],
        "",
        &["tiny", "linux"],
    );
    host_b.configure_labels(
        1,
        &[("shared", forge.url(), cred_b)],
        "",
        &["tiny", "linux", "big"],
    );
    let mut a = host_a.start();
    let b = host_b.start();
    let job = |marker: &str, runs_on: &str| {
        format!(
            "name: scale\non: push\njobs:\n  j:\n    runs-on: {runs_on}\n    steps:\n      - run: sleep 6; echo {marker}-done\n"
        )
    };
    let mut jobs: Vec<i64> = (0..4)
        .map(|i| forge.enqueue(FakeJob::new(job(&format!("job{i}"), "tiny"), &["tiny"])))
        .collect();
    let big = forge.enqueue(FakeJob::new(job("big", "big"), &["big"]));
    jobs.push(big);
    for j in &jobs {
        let t = match forge.wait_job_final(*j, Duration::from_secs(400)).await {
            Some(t) => t,
            None => panic!(
                "job {j} did not finish\nhost a:\n{}\nhost b:\n{}",
                a.log_text(),
                b.log_text()
            ),
        };
        assert_eq!(t.status, TaskStatus::Success, "{}", log_of(&t));
    }
    let tasks = forge.tasks();
    assert_eq!(
        tasks.len(),
        jobs.len(),
        "a job was assigned twice: {tasks:#?}"
    );
    let on = |uuid: &str| tasks.iter().filter(|t| t.runner_uuid == uuid).count();
    assert_eq!(on(&uuid_a) + on(&uuid_b), jobs.len());
    // Each host runs one job at a time, so both had work.
    assert!(on(&uuid_a) >= 1 && on(&uuid_b) >= 1, "{tasks:#?}");
    let big_task = forge.task_for_job(big).unwrap();
    assert_eq!(
        big_task.runner_uuid, uuid_b,
        "only host b has the label big"
    );
    // Each host's state database knows only its own tasks.
    for (world, uuid) in [(&host_a, &uuid_a), (&host_b, &uuid_b)] {
        let store =
            solstice::store::Store::open_read_only(&solstice::store::db_path(&world.state_dir()))
                .unwrap();
        let mut mine: Vec<i64> = tasks
            .iter()
            .filter(|t| &t.runner_uuid == uuid)
            .map(|t| t.id)
            .collect();
        let mut recorded: Vec<i64> = store
            .recent_jobs(100)
            .unwrap()
            .iter()
            .map(|j| j.task_id)
            .collect();
        mine.sort_unstable();
        recorded.sort_unstable();
        assert_eq!(recorded, mine, "host {uuid} recorded other tasks");
    }

    // Drain host a for maintenance: new jobs go to host b only.
    a.signal(Signal::SIGTERM);
    assert!(
        a.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        a.log_text()
    );
    let later: Vec<i64> = (0..2)
        .map(|i| forge.enqueue(FakeJob::new(job(&format!("late{i}"), "tiny"), &["tiny"])))
        .collect();
    for j in &later {
        let t = forge
            .wait_job_final(*j, Duration::from_secs(300))
            .await
            .unwrap_or_else(|| panic!("job {j} did not finish:\n{}", b.log_text()));
        assert_eq!(t.status, TaskStatus::Success, "{}", log_of(&t));
        assert_eq!(t.runner_uuid, uuid_b, "a drained host took a job");
    }
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    drop(b);
    host_a.assert_clean();
}

/// An inner job of a reusable workflow as Forgejo sends it after expanding
/// the call: `event_name` is `workflow_call`, the caller's `with:` values
/// are the defaults of `on.workflow_call.inputs`, next to a `__metadata`
/// block. OIDC is on for it.
const CALLED: &str = r#"
name: reusable
on:
  workflow_call:
    inputs:
      greeting:
        type: string
        default: hello
      n:
        type: number
        default: "3"
      flag:
        type: boolean
        default: true
  __metadata:
    workflow_call_id: 0123abcd
    workflow_call_parent: caller
jobs:
  reusable-1.job1:
    name: caller / job1
    runs-on: tiny
    enable-openid-connect: true
    steps:
      - run: echo "inputs greeting=${{ inputs.greeting }} n=${{ inputs.n }} flag=${{ inputs.flag }} flag-is-bool=${{ inputs.flag == true }}"
      - run: echo "oidc url=$ACTIONS_ID_TOKEN_REQUEST_URL token=$ACTIONS_ID_TOKEN_REQUEST_TOKEN"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reusable_workflow_job_gets_its_inputs_and_the_oidc_variables() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(1, &[("fake", forge.url(), cred)], "");
    let oidc_url = format!(
        "{}/api/actions/_apis/pipelines/workflows/1/idtoken?placeholder=true",
        forge.url().trim_end_matches('/')
    );
    let mut job = FakeJob::new(CALLED, &["tiny"]);
    job.context_overrides = serde_json::json!({
        "event_name": "workflow_call",
        "forgejo_actions_id_token_request_token": "oidc-token-value-xyz",
        "forgejo_actions_id_token_request_url": oidc_url,
    });
    let job = forge.enqueue(job);
    let mut d = world.start();
    let t = final_task(&forge, job, &d).await;
    assert_eq!(t.status, TaskStatus::Success, "{}", log_of(&t));
    let inputs = t.step_log(0).join("\n");
    assert!(
        inputs.contains("inputs greeting=hello n=3 flag=true flag-is-bool=true"),
        "{inputs}"
    );
    let oidc = t.step_log(1).join("\n");
    assert!(
        oidc.contains(&format!("oidc url={oidc_url} token=***")),
        "{oidc}"
    );
    assert!(!log_of(&t).contains("oidc-token-value-xyz"));
    assert!(!d.log_text().contains("oidc-token-value-xyz"));
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", d.log_text());
    world.assert_clean();
}

/// A Forgejo task whose workflow uses a composite action (which nests a
/// second one) and a JavaScript action, both from the fake forge's default
/// actions URL (a git server on 127.0.0.1), on the tiny busybox guest: the
/// composite's `shell: sh` steps run without bash and its output reaches a
/// later step; the tiny image has no node, so the JavaScript action fails
/// its step with a message about node, and the job carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forge_task_runs_composite_and_javascript_actions_from_the_default_actions_url() {
    use solstice::testing::git_server::GitServer;
    let server = GitServer::start().await;
    support::actions::publish_all(&server, &["composite-inner", "js-inputs"]);
    let forge = FakeForge::start(FakeOptions {
        default_actions_url: server.url().to_string(),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(1, &[("fake", forge.url(), cred)], "");
    // The git server is on a loopback address: allowed explicitly.
    let mut config = std::fs::read_to_string(&world.config).unwrap();
    config.push_str("[actions]\nallowed_hosts = [\"127.0.0.1\"]\n");
    std::fs::write(&world.config, config).unwrap();
    let job = forge.enqueue(FakeJob::new(
        r#"
name: actions
on: push
jobs:
  build:
    runs-on: tiny
    steps:
      - id: up
        uses: fixtures/composite-inner@v1
        with:
          text: busybox
      - run: echo "composite said ${{ steps.up.outputs.shout }}"
      - uses: fixtures/js-inputs@v1
        continue-on-error: true
        with:
          my-input: e2e
      - run: echo after-js
"#,
        &["tiny"],
    ));
    let mut d = world.start();
    let t = final_task(&forge, job, &d).await;
    assert_eq!(t.status, TaskStatus::Success, "{}", log_of(&t));
    let results: Vec<TaskResult> = t.steps.iter().map(|s| s.result).collect();
    assert_eq!(
        results,
        [
            TaskResult::Success,
            TaskResult::Success,
            TaskResult::Success,
            TaskResult::Success
        ],
        "{}",
        log_of(&t)
    );
    let said = t.step_log(1).join("\n");
    assert!(said.contains("composite said BUSYBOX"), "{said}");
    let js = t.step_log(2).join("\n").to_lowercase();
    assert!(js.contains("node"), "{js}");
    assert!(!log_of(&t).contains("my-input=[e2e]"));
    assert!(t.step_log(3).join("\n").contains("after-js"));
    // Fetched from the default actions URL; the task token (this forge's)
    // never went to the actions host.
    assert!(server.upload_packs() >= 2, "{}", server.upload_packs());
    assert!(server.authorizations().is_empty());
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
    world.assert_clean();
}

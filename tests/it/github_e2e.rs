//! End to end with GitHub: the strict fake GitHub + the real `solstice run`
//! binary + real QEMU guests (tiny busybox/dropbear image under TCG; the
//! Debian image for JavaScript actions). Each test says which part of the
//! issue it proves.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use solstice::testing::fake_github::{
    Endpoint, FakeGithub, FakeGithubJob, FakeGithubOptions, FakeJobState, FakeStep, JobSnapshot,
};

use crate::support;
use support::daemon::{Daemon, max_vms_while, qemu_processes_under};
use support::world::World;

const TOKEN: &str = "github_pat_e2e_0123456789abcdefghijklmnopqrstuv";
const OWNER: &str = "acme";
const REPO: &str = "widgets";

async fn fake_github() -> FakeGithub {
    let gh = FakeGithub::start(FakeGithubOptions::default())
        .await
        .unwrap();
    gh.add_token(TOKEN);
    gh
}

/// The `[forges.<name>]` section of a GitHub forge served by `gh`.
fn github_section(world: &World, name: &str, gh: &FakeGithub, runner_name: &str) -> String {
    let token = world.dir.path().join(format!("{name}.token"));
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    format!(
        "[forges.{name}]\nkind = \"github\"\nurl = {:?}\napi_url = {:?}\ntoken_file = {token:?}\nrunner_name = {runner_name:?}\nfetch_interval_secs = 1\n",
        gh.repo_url(OWNER, REPO),
        gh.api_url(),
    )
}

/// The daemon config: the tiny image (labels `tiny`, `linux`), then `sections`.
fn configure(world: &World, capacity: u32, sections: &[String], extra_daemon: &str) {
    let image = support::image("tiny");
    let mut text = format!(
        "[daemon]\nstate_dir = {:?}\nmax_concurrent_jobs = {capacity}\ndrain_timeout_secs = 30\n{extra_daemon}\n[qemu]\naccel = \"tcg\"\n[images.tiny]\npath = {image:?}\nvcpus = 1\nmemory_mib = 256\nboot_timeout_secs = 120\nlabels = [\"tiny\", \"linux\"]\n",
        world.state_dir()
    );
    for s in sections {
        text.push_str(s);
    }
    std::fs::write(&world.config, text).unwrap();
}

async fn final_job(gh: &FakeGithub, index: u64, d: &Daemon) -> JobSnapshot {
    match gh.wait_job_final(index, Duration::from_secs(240)).await {
        Some(j) => j,
        None => panic!(
            "job {index} did not finish: {:#?}\ndaemon log:\n{}",
            gh.job(index).map(|j| j.state),
            d.log_text()
        ),
    }
}

/// Waits until `job` is acquired (`running`: until a step runs).
async fn wait_started(gh: &FakeGithub, job: u64, running: bool, d: &Daemon) {
    let ok = gh
        .wait_for(
            |g| {
                g.job(job)
                    .map(|j| {
                        if running {
                            j.step_updates.iter().flatten().any(|s| s["status"] == 3)
                        } else {
                            matches!(j.state, FakeJobState::Acquired { .. })
                        }
                    })
                    .unwrap_or(false)
            },
            Duration::from_secs(240),
        )
        .await;
    assert!(ok, "job {job} did not start\n{}", d.log_text());
}

/// Waits until `n` of our runners are registered.
async fn wait_runners(gh: &FakeGithub, n: usize) {
    assert!(
        gh.wait_for(
            |g| our_runners(g, "e2e").len() == n,
            Duration::from_secs(30)
        )
        .await,
        "{:#?}",
        gh.runners()
    );
}

/// The `conclusion` of each entry of `completejob`'s `stepResults`.
fn step_conclusions(j: &JobSnapshot) -> Vec<String> {
    j.step_results
        .iter()
        .map(|s| s["conclusion"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn step_log(j: &JobSnapshot, n: usize) -> String {
    j.step_logs.get(&j.step_ids[n]).cloned().unwrap_or_default()
}

/// Our runners at the fake (name prefix `<runner_name>-`).
fn our_runners(gh: &FakeGithub, runner_name: &str) -> Vec<u64> {
    gh.runners()
        .into_iter()
        .filter(|r| r.name.starts_with(&format!("{runner_name}-")))
        .map(|r| r.id)
        .collect()
}

/// A passing and a failing job: GitHub-style step results, logs, outputs
/// and masking on the fake; the runner registered as a JIT runner with the
/// image's labels; no protocol violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_and_a_failing_job_report_steps_logs_and_outputs_to_github() {
    let gh = fake_github().await;
    let world = World::new();
    configure(&world, 1, &[github_section(&world, "gh", &gh, "e2e")], "");
    let good = gh.enqueue(
        FakeGithubJob::new(&["self-hosted", "tiny"])
            .secret("API_KEY", "s3cr3t-value-xyz")
            .env("GREETING", "hello")
            .step(
                FakeStep::run("echo \"$GREETING from $(uname -s) secret=${{ secrets.API_KEY }}\"")
                    .name("Greet"),
            )
            .step(
                FakeStep::run(
                    "echo '::debug::hidden-debug'; echo \"answer=42\" >> \"$GITHUB_OUTPUT\"",
                )
                .id("calc"),
            )
            .output("answer", "${{ steps.calc.outputs.answer }}"),
    );
    let mut d = world.start();
    let g = final_job(&gh, good, &d).await;
    assert_eq!(
        g.conclusion.as_deref(),
        Some("succeeded"),
        "{}",
        d.log_text()
    );
    assert_eq!(step_conclusions(&g), ["succeeded", "succeeded"]);
    let greet = step_log(&g, 0);
    assert!(greet.contains("hello from Linux secret=***"), "{greet}");
    assert_eq!(g.outputs.get("answer").map(String::as_str), Some("42"));
    // `::debug::` lines are dropped without ACTIONS_STEP_DEBUG, as GitHub does.
    assert!(
        !step_log(&g, 1).contains("hidden-debug"),
        "{}",
        step_log(&g, 1)
    );
    let latest = g.latest_steps();
    assert!(
        latest
            .values()
            .all(|s| s["status"] == 6 && s["conclusion"] == 2),
        "{latest:#?}"
    );
    let job_log = g.job_log.clone().unwrap_or_default();
    assert!(!job_log.contains("s3cr3t-value-xyz"), "{job_log}");

    let bad = gh.enqueue(
        FakeGithubJob::new(&["self-hosted", "linux"])
            .step(FakeStep::run("echo before-failure; exit 3"))
            .step(FakeStep::run("echo never-runs"))
            .step(FakeStep::run("echo cleanup-ran").if_("failure()")),
    );
    let b = final_job(&gh, bad, &d).await;
    assert_eq!(b.conclusion.as_deref(), Some("failed"), "{}", d.log_text());
    assert_eq!(step_conclusions(&b), ["failed", "skipped", "succeeded"]);
    assert!(step_log(&b, 0).contains("before-failure"));
    assert!(step_log(&b, 2).contains("cleanup-ran"));

    // The runners were JIT runners with the image's labels.
    let runners = gh.runners();
    assert!(
        runners
            .iter()
            .all(|r| r.labels.iter().any(|l| l == "tiny")
                && r.labels.iter().any(|l| l == "self-hosted")),
        "{runners:#?}"
    );
    assert!(gh.violations().is_empty(), "{:#?}", gh.violations());
    let log = d.log_text();
    assert!(!log.contains(TOKEN), "REST token in the daemon log");
    assert!(!log.contains("s3cr3t-value-xyz"), "{log}");
    if let Some(t) = &g.job_token {
        assert!(!log.contains(t.expose()), "job token in the daemon log");
    }
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(60)).success());
    assert!(our_runners(&gh, "e2e").is_empty(), "{:#?}", gh.runners());
    world.assert_clean();
}

/// Capacity 2: two JIT runners, three jobs, never a third VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jit_runners_run_two_jobs_at_once_and_never_a_third_vm() {
    let gh = fake_github().await;
    let world = World::new();
    configure(&world, 2, &[github_section(&world, "gh", &gh, "e2e")], "");
    let jobs: Vec<u64> = (0..3)
        .map(|i| {
            gh.enqueue(
                FakeGithubJob::new(&["tiny"])
                    .step(FakeStep::run(&format!("echo job-{i}; sleep 6"))),
            )
        })
        .collect();
    let d = world.start();
    let state = world.state_dir();
    let g = gh.clone();
    let js = jobs.clone();
    let max = max_vms_while(&state, Duration::from_secs(300), move || {
        js.iter()
            .all(|j| g.job(*j).map(|s| s.is_final()).unwrap_or(false))
    })
    .await;
    for j in &jobs {
        let s = final_job(&gh, *j, &d).await;
        assert_eq!(
            s.conclusion.as_deref(),
            Some("succeeded"),
            "{}",
            d.log_text()
        );
    }
    assert!(max <= 2, "{max} VMs at once");
    assert!(max == 2, "the two runners never ran at once");
    assert!(gh.violations().is_empty(), "{:#?}", gh.violations());
}

/// `JobCancellation` on the long poll cancels the job's VM within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_from_github_stops_the_vm_within_5_seconds() {
    let gh = fake_github().await;
    let world = World::new();
    configure(&world, 1, &[github_section(&world, "gh", &gh, "e2e")], "");
    let job =
        gh.enqueue(FakeGithubJob::new(&["tiny"]).step(FakeStep::run("echo started; sleep 300")));
    let d = world.start();
    let state = world.state_dir();
    // Wait for the first step to run.
    wait_started(&gh, job, true, &d).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = Instant::now();
    assert!(gh.cancel_job(job, "00:05:00"));
    while !qemu_processes_under(&state).is_empty() {
        assert!(
            asked.elapsed() < Duration::from_secs(60),
            "the VM did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped = asked.elapsed();
    eprintln!("cancellation → VM gone: {stopped:?}");
    let j = final_job(&gh, job, &d).await;
    assert_eq!(
        j.conclusion.as_deref(),
        Some("canceled"),
        "{}",
        d.log_text()
    );
    assert!(
        stopped < Duration::from_secs(5),
        "the VM took {stopped:?} to stop"
    );
    assert!(gh.violations().is_empty(), "{:#?}", gh.violations());
}

/// SIGTERM: the idle JIT runner is removed at once; the running job
/// finishes within the drain time; nothing is left registered at GitHub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_removes_idle_runners_at_once_and_lets_the_running_job_finish() {
    let gh = fake_github().await;
    let world = World::new();
    configure(&world, 2, &[github_section(&world, "gh", &gh, "e2e")], "");
    let job = gh.enqueue(
        FakeGithubJob::new(&["tiny"]).step(FakeStep::run("echo working; sleep 12; echo done")),
    );
    let mut d = world.start();
    wait_started(&gh, job, false, &d).await;
    // One runner holds the job; wait until the idle one exists too.
    wait_runners(&gh, 2).await;
    d.signal(Signal::SIGTERM);
    let idle_gone = gh
        .wait_for(
            |g| our_runners(g, "e2e").len() == 1,
            Duration::from_secs(10),
        )
        .await;
    assert!(
        idle_gone,
        "the idle runner was not removed: {:#?}",
        gh.runners()
    );
    let j = final_job(&gh, job, &d).await;
    assert_eq!(
        j.conclusion.as_deref(),
        Some("succeeded"),
        "{}",
        d.log_text()
    );
    assert!(step_log(&j, 0).contains("done"));
    assert!(d.wait_exit(Duration::from_secs(60)).success());
    assert!(our_runners(&gh, "e2e").is_empty(), "{:#?}", gh.runners());
    world.assert_clean();
}

/// SIGKILL mid-job, then a restart: no VM is left, the job is reported
/// failed (its runner is gone with the process), and the runners of the
/// first run are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_job_then_restart_fails_the_job_and_removes_old_runners() {
    let gh = fake_github().await;
    let world = World::new();
    configure(&world, 2, &[github_section(&world, "gh", &gh, "e2e")], "");
    let job =
        gh.enqueue(FakeGithubJob::new(&["tiny"]).step(FakeStep::run("echo started; sleep 300")));
    let mut d = world.start();
    wait_started(&gh, job, true, &d).await;
    wait_runners(&gh, 2).await;
    let before = our_runners(&gh, "e2e");
    d.signal(Signal::SIGKILL);
    let _ = d.wait_exit(Duration::from_secs(30));

    let d2 = world.start();
    let j = final_job(&gh, job, &d2).await;
    assert_eq!(j.conclusion.as_deref(), Some("failed"), "{}", d2.log_text());
    let annotations = j
        .complete_body
        .as_ref()
        .map(|b| b["annotations"].to_string())
        .unwrap_or_default();
    assert!(
        annotations.contains("runner stopped while this job was running"),
        "{annotations}"
    );
    assert!(
        gh.wait_for(
            |g| {
                let now = our_runners(g, "e2e");
                before.iter().all(|id| !now.contains(id))
            },
            Duration::from_secs(30)
        )
        .await,
        "old runners left: {before:?} {:#?}",
        gh.runners()
    );
    assert!(qemu_processes_under(&world.state_dir()).is_empty());
    drop(d2);
}

/// Runner tokens that expire within the job, and a 401 on a runner-token
/// call, are refreshed without disturbing the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_tokens_are_refreshed_in_the_middle_of_a_job() {
    let gh = FakeGithub::start(FakeGithubOptions {
        runner_token_ttl: Duration::from_secs(4),
        poll_hold: Duration::from_secs(2),
        ..FakeGithubOptions::default()
    })
    .await
    .unwrap();
    gh.add_token(TOKEN);
    let world = World::new();
    configure(&world, 1, &[github_section(&world, "gh", &gh, "e2e")], "");
    let job = gh.enqueue(
        FakeGithubJob::new(&["tiny"]).step(FakeStep::run("echo begin; sleep 12; echo end")),
    );
    let d = world.start();
    wait_started(&gh, job, false, &d).await;
    let tokens_before = gh
        .requests()
        .iter()
        .filter(|r| r.endpoint == Endpoint::Token)
        .count();
    gh.expire_runner_tokens();
    let j = final_job(&gh, job, &d).await;
    assert_eq!(
        j.conclusion.as_deref(),
        Some("succeeded"),
        "{}",
        d.log_text()
    );
    let tokens_after = gh
        .requests()
        .iter()
        .filter(|r| r.endpoint == Endpoint::Token)
        .count();
    assert!(
        tokens_after > tokens_before,
        "no token exchange after expiry"
    );
    assert!(gh.violations().is_empty(), "{:#?}", gh.violations());
}

/// A Forgejo and a GitHub forge in one daemon share its one slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgejo_and_a_github_forge_share_the_hosts_capacity() {
    use solstice::testing::fake_forge::{FakeJob, TaskStatus};
    use support::world::{SECRET, fake, final_task, log_of, offline};
    let gh = fake_github().await;
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fj", SECRET);
    let forgejo = format!(
        "[forges.fj]\nurl = {:?}\n{cred}\nfetch_interval_secs = 1\nfetch_timeout_secs = 5\n",
        forge.url()
    );
    configure(
        &world,
        1,
        &[forgejo, github_section(&world, "gh", &gh, "e2e")],
        "",
    );
    let fj_job = forge.enqueue(FakeJob::new(
        "on: push\njobs:\n  a:\n    runs-on: tiny\n    steps:\n      - run: echo from-forgejo; sleep 4\n",
        &["tiny"],
    ));
    let gh_job =
        gh.enqueue(FakeGithubJob::new(&["tiny"]).step(FakeStep::run("echo from-github; sleep 4")));
    let d = world.start();
    let state = world.state_dir();
    let g = gh.clone();
    let f = forge.clone();
    let max = max_vms_while(&state, Duration::from_secs(300), move || {
        g.job(gh_job).map(|s| s.is_final()).unwrap_or(false)
            && f.task_for_job(fj_job)
                .map(|t| t.status != TaskStatus::Running)
                .unwrap_or(false)
    })
    .await;
    let t = final_task(&forge, fj_job, &d).await;
    assert_eq!(t.status, TaskStatus::Success, "{}", log_of(&t));
    let j = final_job(&gh, gh_job, &d).await;
    assert_eq!(
        j.conclusion.as_deref(),
        Some("succeeded"),
        "{}",
        d.log_text()
    );
    assert!(step_log(&j, 0).contains("from-github"));
    assert_eq!(max, 1, "more VMs than the one slot");
}

/// A composite action and a JavaScript action (real `@actions/core`),
/// fetched from the job's server, in the Debian guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_and_javascript_actions_run_in_a_github_job() {
    use solstice::testing::git_server::GitServer;
    let server = GitServer::start().await;
    support::actions::publish_all(&server, &["composite-inner", "js-inputs"]);
    let gh = fake_github().await;
    let world = World::new();
    let image = support::image("debian");
    let text = format!(
        "[daemon]\nstate_dir = {:?}\nmax_concurrent_jobs = 1\n[qemu]\naccel = \"tcg\"\n\
         [images.debian]\npath = {image:?}\nvcpus = 1\nmemory_mib = 1024\nboot_timeout_secs = 300\n\
         ssh_user = \"debian\"\nlabels = [\"debian\"]\n{}\
         [actions]\nallowed_hosts = [\"127.0.0.1\"]\n",
        world.state_dir(),
        github_section(&world, "gh", &gh, "e2e"),
    );
    std::fs::write(&world.config, text).unwrap();
    let job = gh.enqueue(
        FakeGithubJob::new(&["debian"])
            .github("server_url", Value::from(server.url().to_string()))
            .step(
                FakeStep::uses("fixtures/composite-inner@v1")
                    .id("up")
                    .with("text", "quiet words"),
            )
            .step(FakeStep::run(
                "echo \"shouted=${{ steps.up.outputs.shout }}\"",
            ))
            .step(
                FakeStep::uses("fixtures/js-inputs@v1")
                    .id("js")
                    .with("my-input", "from-github"),
            ),
    );
    let d = world.start();
    let j = final_job(&gh, job, &d).await;
    let logs: Vec<String> = (0..3).map(|i| step_log(&j, i)).collect();
    assert_eq!(
        j.conclusion.as_deref(),
        Some("succeeded"),
        "{logs:#?}\n{}",
        d.log_text()
    );
    assert!(logs[1].contains("shouted=QUIET WORDS"), "{logs:#?}");
    assert!(gh.violations().is_empty(), "{:#?}", gh.violations());
}

/// A `container:` job from GitHub is translated and reaches the executor
/// (no refusal at acquisition any more); on the tiny image, which has no
/// container engine, the executor fails it with a clear line in its GitHub
/// log, and its step never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_job_on_an_image_without_an_engine_fails_with_a_clear_line_in_its_github_log() {
    let gh = fake_github().await;
    let world = World::new();
    configure(&world, 1, &[github_section(&world, "gh", &gh, "e2e")], "");
    let job = gh.enqueue(
        FakeGithubJob::new(&["tiny"])
            .container_yaml("image: node:20\nenv:\n  GREETING: hi\noptions: --cpus 1\n")
            .step(FakeStep::run("echo never-ran")),
    );
    let d = world.start();
    let j = final_job(&gh, job, &d).await;
    assert_eq!(j.conclusion.as_deref(), Some("failed"), "{}", d.log_text());
    let log = j.job_log.clone().unwrap_or_default();
    // Neither the translation nor the executor refuses containers as such
    // any more.
    assert!(!log.contains("not supported"), "{log}");
    // The executor's message: a Linux image without `docker` fails the job
    // in "Initialize containers", naming the image.
    assert!(
        log.contains("need a container engine in the guest")
            && log.contains("image `tiny` has no `docker`"),
        "{log}"
    );
    assert!(log.contains("Initialize containers"), "{log}");
    assert!(!log.contains("never-ran\n"), "{log}");
    assert!(qemu_processes_under(&world.state_dir()).is_empty());
    assert!(gh.violations().is_empty(), "{:#?}", gh.violations());
}

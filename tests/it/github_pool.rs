//! The GitHub pool and listener against the strict fake GitHub, driven
//! through the forge port as the daemon drives it (no daemon, no VMs):
//! the fault paths of spec §9 and §10.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use solstice::config::{ForgeConfig, ImageConfig, ParseOptions, parse_str_with};
use solstice::events::{Conclusion, JobEvent, LineKind};
use solstice::forge::github::pool::PoolTimings;
use solstice::forge::github::report::ReportOptions;
use solstice::forge::github::session::Github;
use solstice::forge::{
    Assignment, Failure, FailureKind, Forge, MemorySpool, Poller, Session, TaskReport,
};
use solstice::testing::fake_github::{
    Endpoint, FakeGithub, FakeGithubJob, FakeGithubOptions, FakeJobState, FakeStep,
};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "github_pat_pool_0123456789abcdefghijklmnopqrstu";
const OWNER: &str = "acme";
const REPO: &str = "widgets";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Short pauses everywhere (the defaults are tens of seconds).
fn fast() -> PoolTimings {
    PoolTimings {
        poll_retry: (ms(50), ms(150)),
        poll_retry_long: (ms(50), ms(150)),
        poll_timeout: Duration::from_secs(3),
        poll_max_failures: 20,
        session_retry: ms(200),
        session_conflict_limit: Duration::from_secs(30),
        first_renew_retry: (ms(50), ms(100)),
        first_renew_tries: 3,
        report: ReportOptions {
            renew_period: Duration::from_secs(1),
            renew_retry_min: ms(100),
            renew_retry_max: ms(200),
            complete_pause: ms(100),
            results_pause: ms(100),
            tick: ms(100),
            ..ReportOptions::default()
        },
    }
}

struct Setup {
    gh: FakeGithub,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        let gh = FakeGithub::start(FakeGithubOptions {
            poll_hold: Duration::from_secs(1),
            ..FakeGithubOptions::default()
        })
        .await
        .unwrap();
        gh.add_token(TOKEN);
        Setup {
            gh,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The forge and images of a config whose forge section has `creds`.
    fn config(&self, creds: &str) -> (ForgeConfig, BTreeMap<String, ImageConfig>) {
        let text = format!(
            "[daemon]\nstate_dir = {:?}\n[images.tiny]\npath = \"/nonexistent/tiny.qcow2\"\nlabels = [\"tiny\", \"linux\", \"Self-Hosted\"]\n[forges.gh]\nkind = \"github\"\nurl = {:?}\napi_url = {:?}\n{creds}\nrunner_name = \"ci\"\nfetch_interval_secs = 1\n",
            self.dir.path().join("state"),
            self.gh.repo_url(OWNER, REPO),
            self.gh.api_url(),
        );
        let origin = self.dir.path().join("solstice.toml");
        let config = parse_str_with(&text, &origin, &ParseOptions { check_paths: false })
            .unwrap_or_else(|e| panic!("config does not parse:\n{e}\n{text}"));
        (config.forges["gh"].clone(), config.images)
    }

    fn token_creds(&self, token: &str) -> String {
        let path = self.dir.path().join("gh.token");
        std::fs::write(&path, format!("{token}\n")).unwrap();
        format!("token_file = {path:?}")
    }

    fn github(&self, creds: &str) -> Github {
        let (forge, images) = self.config(creds);
        Github::new(&forge, &images, Duration::from_secs(3600))
            .unwrap()
            .with_timings(fast())
    }

    async fn connect(&self) -> Arc<dyn Session> {
        let gh = self.github(&self.token_creds(TOKEN));
        match gh.connect(None).await {
            Ok(c) => c.session,
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    fn runners(&self, prefix: &str) -> Vec<u64> {
        self.gh
            .runners()
            .into_iter()
            .filter(|r| r.name.starts_with(prefix))
            .map(|r| r.id)
            .collect()
    }

    fn count(&self, endpoint: Endpoint, status: Option<u16>) -> usize {
        self.gh
            .requests()
            .iter()
            .filter(|r| r.endpoint == endpoint && status.is_none_or(|s| r.status == s))
            .count()
    }

    async fn wait(&self, what: &str, pred: impl Fn(&FakeGithub) -> bool) {
        assert!(
            self.gh.wait_for(pred, Duration::from_secs(30)).await,
            "timed out waiting for {what}; requests: {:#?}",
            self.gh
                .requests()
                .iter()
                .rev()
                .take(15)
                .map(|r| format!("{} {} {}", r.method, r.path, r.status))
                .collect::<Vec<_>>()
        );
    }

    fn no_violations(&self) {
        assert_eq!(self.gh.violations(), Vec::<String>::new());
    }

    /// Registers a runner at the fake as another program would.
    async fn register_foreign(&self, name: &str) {
        let r = reqwest::Client::new()
            .post(format!(
                "{}/repos/{OWNER}/{REPO}/actions/runners/generate-jitconfig",
                self.gh.api_url()
            ))
            .bearer_auth(TOKEN)
            .header("user-agent", "pool-test")
            .json(
                &serde_json::json!({"name": name, "runner_group_id": 1, "labels": ["self-hosted"]}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
}

fn job() -> FakeGithubJob {
    FakeGithubJob::new(&["self-hosted", "tiny"]).step(FakeStep::run("echo hi"))
}

/// Calls `fetch(capacity)` until it gives assignments (panics after 30 s).
async fn next(poller: &mut Box<dyn Poller>, capacity: u32) -> Vec<Assignment> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = poller.fetch(capacity).await.unwrap();
        if !got.is_empty() {
            return got;
        }
        assert!(Instant::now() < deadline, "no assignment in 30 s");
        tokio::time::sleep(ms(100)).await;
    }
}

/// Calls `fetch(capacity)` for `d`, asserting it assigns nothing.
async fn nothing_for(poller: &mut Box<dyn Poller>, capacity: u32, d: Duration) {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        let got = poller.fetch(capacity).await.unwrap();
        assert!(got.is_empty(), "unexpected assignment");
        tokio::time::sleep(ms(100)).await;
    }
}

/// Calls `fetch(capacity)` until the fake saw a request `pred` accepts,
/// asserting nothing is assigned meanwhile.
async fn fetch_until(
    s: &Setup,
    poller: &mut Box<dyn Poller>,
    capacity: u32,
    what: &str,
    pred: impl Fn(&solstice::testing::fake_github::RequestRecord) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.gh.requests().iter().any(&pred) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        let got = poller.fetch(capacity).await.unwrap();
        assert!(
            got.is_empty(),
            "unexpected assignment while waiting for {what}"
        );
        tokio::time::sleep(ms(100)).await;
    }
}

/// A started report with its uploader running, as the daemon does.
struct Running {
    report: Arc<dyn TaskReport>,
    cancel: CancellationToken,
    uploader: tokio::task::JoinHandle<Result<(), Failure>>,
}

fn start(a: Assignment) -> Running {
    assert!(a.job.is_ok(), "the job did not translate");
    let report = a.report.start(Arc::new(MemorySpool::new()));
    let cancel = CancellationToken::new();
    let uploader = {
        let (r, c) = (report.clone(), cancel.clone());
        tokio::spawn(async move { r.run(c).await })
    };
    Running {
        report,
        cancel,
        uploader,
    }
}

impl Running {
    /// One step printing a line, then the job's end.
    fn play(&self, conclusion: Conclusion) {
        let r = &self.report;
        r.emit(JobEvent::StepStarted {
            index: 0,
            name: "echo hi".into(),
        });
        r.emit(JobEvent::Line {
            step: Some(0),
            kind: LineKind::Stdout,
            text: "hi".into(),
        });
        r.emit(JobEvent::StepFinished {
            index: 0,
            outcome: conclusion,
            conclusion,
            duration: ms(10),
        });
        r.emit(JobEvent::JobFinished {
            conclusion,
            duration: ms(20),
        });
        r.close(conclusion, &IndexMap::new(), None);
    }

    async fn done(self) -> Result<(), Failure> {
        tokio::time::timeout(Duration::from_secs(60), self.uploader)
            .await
            .expect("the report did not end")
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_and_token_credentials_both_connect_and_run_a_job() {
    let s = Setup::new().await;
    let key = s.gh.add_app(77, 4242);
    let pem = s.dir.path().join("app.pem");
    std::fs::write(&pem, key.pkcs1_pem().expose()).unwrap();
    let app = s.github(&format!(
        "app_id = 77\ninstallation_id = 4242\nprivate_key_file = {pem:?}"
    ));
    let session = match app.connect(None).await {
        Ok(c) => c.session,
        Err(e) => panic!("App credentials do not connect: {e}"),
    };
    let mut poller = session.poller();
    let index = s.gh.enqueue(job());
    let run = start(next(&mut poller, 1).await.pop().unwrap());
    run.play(Conclusion::Success);
    run.done().await.unwrap();
    let j = s.gh.job(index).unwrap();
    assert_eq!(j.conclusion.as_deref(), Some("succeeded"));
    drop(poller);
    session.disconnect().await;

    let token = s.connect().await;
    token.disconnect().await;
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_connect_naming_the_permission() {
    let s = Setup::new().await;
    let gh = s.github(&s.token_creds("github_pat_wrong_000000000000000000000000000"));
    let e = match gh.connect(None).await {
        Ok(_) => panic!("a wrong token connected"),
        Err(e) => e,
    };
    // Not worth retrying: the operator must give the token the permission.
    assert_eq!(e.kind(), FailureKind::Fatal, "{e}");
    let text = e.to_string();
    assert!(text.contains("Administration: read and write"), "{text}");
    assert!(text.contains("401"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_this_host_are_removed_at_connect_and_disconnect_others_are_not() {
    let s = Setup::new().await;
    s.register_foreign("ci-tiny-0badcafe").await;
    s.register_foreign("ci-2-tiny-0badcafe").await;
    s.register_foreign("build-box").await;
    s.register_foreign("ci-other-0badcafe").await;
    let session = s.connect().await;
    let names: Vec<String> = s.gh.runners().into_iter().map(|r| r.name).collect();
    assert!(
        !names.contains(&"ci-tiny-0badcafe".to_string()),
        "{names:?}"
    );
    for kept in ["ci-2-tiny-0badcafe", "build-box", "ci-other-0badcafe"] {
        assert!(
            names.contains(&kept.to_string()),
            "{kept} removed: {names:?}"
        );
    }
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    assert_eq!(s.runners("ci-tiny-").len(), 1);
    s.register_foreign("ci-tiny-00c0ffee").await;
    drop(poller);
    session.disconnect().await;
    let names: Vec<String> = s.gh.runners().into_iter().map(|r| r.name).collect();
    assert!(
        !names.iter().any(|n| n.starts_with("ci-tiny-")),
        "{names:?}"
    );
    assert_eq!(names.len(), 3, "{names:?}");
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_runners_follow_capacity_with_the_image_labels() {
    let s = Setup::new().await;
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(2).await.unwrap();
    let runners = s.gh.runners();
    assert_eq!(runners.len(), 2);
    let arch = solstice::forge::github::session::host_arch();
    for r in &runners {
        assert_eq!(r.labels, ["self-hosted", "Linux", arch, "tiny"], "{r:?}");
        assert!(r.name.starts_with("ci-tiny-"), "{}", r.name);
    }
    s.wait("two sessions", |g| g.sessions().len() == 2).await;
    poller.fetch(1).await.unwrap();
    s.wait("one runner left", |g| g.runners().len() == 1).await;
    // A full host (another forge's job took the last slot): no idle runner
    // stays registered to catch jobs it could not start.
    poller.no_capacity().await;
    s.wait("no idle runner while full", |g| g.runners().is_empty())
        .await;
    poller.fetch(1).await.unwrap();
    s.wait("one runner again", |g| g.runners().len() == 1).await;
    drop(poller);
    s.wait("no runner left", |g| g.runners().is_empty()).await;
    session.disconnect().await;
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streak_of_failed_polls_backs_off_and_the_runner_still_gets_a_job() {
    let s = Setup::new().await;
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    s.wait("a session", |g| g.sessions().len() == 1).await;
    s.gh.fail_next(Endpoint::Poll, 6, 503);
    s.wait("six failed polls", |g| {
        g.requests()
            .iter()
            .filter(|r| r.endpoint == Endpoint::Poll && r.status == 503)
            .count()
            == 6
    })
    .await;
    let index = s.gh.enqueue(job());
    let run = start(next(&mut poller, 1).await.pop().unwrap());
    run.play(Conclusion::Success);
    run.done().await.unwrap();
    assert_eq!(s.gh.job(index).unwrap().state, FakeJobState::Completed);
    drop(poller);
    session.disconnect().await;
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_polls_as_204_and_as_empty_200_are_both_quiet() {
    let s = Setup::new().await;
    let session = s.connect().await;
    let mut poller = session.poller();
    for on in [true, false] {
        s.gh.set_empty_poll_204(on);
        let status = if on { 204 } else { 200 };
        let before = s.count(Endpoint::Poll, Some(status));
        poller.fetch(1).await.unwrap();
        s.wait("two empty polls", |g| {
            g.requests()
                .iter()
                .filter(|r| r.endpoint == Endpoint::Poll && r.status == status)
                .count()
                >= before + 2
        })
        .await;
        let index = s.gh.enqueue(job());
        let run = start(next(&mut poller, 1).await.pop().unwrap());
        run.play(Conclusion::Success);
        run.done().await.unwrap();
        assert_eq!(s.gh.job(index).unwrap().state, FakeJobState::Completed);
    }
    drop(poller);
    session.disconnect().await;
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_poll_times_out_and_the_runner_polls_again() {
    let s = Setup::new().await;
    s.gh.set_poll_hang(true);
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    s.wait("a poll", |g| {
        g.sessions().first().is_some_and(|x| x.polls >= 1)
    })
    .await;
    // The client's deadline is 3 s: a second poll starts after it.
    s.wait("a second poll", |g| {
        g.sessions().first().is_some_and(|x| x.polls >= 2)
    })
    .await;
    s.gh.set_poll_hang(false);
    let index = s.gh.enqueue(job());
    let run = start(next(&mut poller, 1).await.pop().unwrap());
    run.play(Conclusion::Success);
    run.done().await.unwrap();
    assert_eq!(s.gh.job(index).unwrap().state, FakeJobState::Completed);
    drop(poller);
    session.disconnect().await;
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_session_mid_poll_opens_a_new_one() {
    let s = Setup::new().await;
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    s.wait("a session", |g| g.sessions().len() == 1).await;
    let first = s.gh.sessions()[0].id.clone();
    let runner = s.gh.runners()[0].id;
    assert!(s.gh.invalidate_session(runner));
    s.wait("a new session", |g| {
        g.sessions().iter().any(|x| x.id != first && x.polls >= 1)
    })
    .await;
    let index = s.gh.enqueue(job());
    let run = start(next(&mut poller, 1).await.pop().unwrap());
    run.play(Conclusion::Success);
    run.done().await.unwrap();
    assert_eq!(s.gh.job(index).unwrap().state, FakeJobState::Completed);
    drop(poller);
    session.disconnect().await;
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_conflict_is_retried_until_it_clears() {
    let s = Setup::new().await;
    s.gh.set_session_conflict_for(Duration::from_secs(2));
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    s.wait("a session", |g| g.sessions().len() == 1).await;
    assert!(s.count(Endpoint::SessionCreate, Some(409)) >= 2);
    let index = s.gh.enqueue(job());
    let run = start(next(&mut poller, 1).await.pop().unwrap());
    run.play(Conclusion::Success);
    run.done().await.unwrap();
    assert_eq!(s.gh.job(index).unwrap().state, FakeJobState::Completed);
    drop(poller);
    session.disconnect().await;
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_runner_tokens_are_exchanged_once_and_the_call_repeated() {
    let s = Setup::new().await;
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    s.wait("a poll", |g| {
        g.sessions().first().is_some_and(|x| x.polls >= 1)
    })
    .await;
    let exchanges = s.count(Endpoint::Token, None);
    s.gh.expire_runner_tokens();
    s.wait("a 401", |g| g.requests().iter().any(|r| r.status == 401))
        .await;
    let index = s.gh.enqueue(job());
    let run = start(next(&mut poller, 1).await.pop().unwrap());
    run.play(Conclusion::Success);
    run.done().await.unwrap();
    assert_eq!(s.gh.job(index).unwrap().state, FakeJobState::Completed);
    assert_eq!(s.count(Endpoint::Token, None), exchanges + 1);
    drop(poller);
    session.disconnect().await;
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_token_refresh_exchanges_a_new_token() {
    let s = Setup::new().await;
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    s.wait("a poll", |g| {
        g.sessions().first().is_some_and(|x| x.polls >= 1)
    })
    .await;
    let exchanges = s.count(Endpoint::Token, None);
    let runner = s.gh.runners()[0].id;
    assert!(s.gh.force_token_refresh(runner));
    s.wait("a new token", |g| {
        g.requests()
            .iter()
            .filter(|r| r.endpoint == Endpoint::Token)
            .count()
            > exchanges
    })
    .await;
    drop(poller);
    session.disconnect().await;
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_acquire_leaves_the_runner_idle_for_the_next_job() {
    for status in [404, 409, 422] {
        let s = Setup::new().await;
        s.gh.set_redelivery_timeout(ms(500));
        let session = s.connect().await;
        let mut poller = session.poller();
        poller.fetch(1).await.unwrap();
        let runner = s.gh.runners()[0].id;
        s.gh.fail_next(Endpoint::AcquireJob, 1, status);
        s.gh.enqueue(job());
        fetch_until(&s, &mut poller, 1, "the refused acquire", |r| {
            r.endpoint == Endpoint::AcquireJob && r.status == status
        })
        .await;
        let second = s.gh.enqueue(job());
        // The refused job may come back once its delivery times out, to
        // another runner the pool registered meanwhile (a runner counts as
        // busy from the job reference until the refusal): run what comes
        // until the second job is done, and check that the runner whose
        // acquire was refused took a job again.
        let mut ran = Vec::new();
        while s.gh.job(second).unwrap().state != FakeJobState::Completed {
            assert!(ran.len() < 3, "HTTP {status}: runs {ran:?}");
            let a = next(&mut poller, 1).await.pop().unwrap();
            ran.push(a.task_id);
            let run = start(a);
            run.play(Conclusion::Success);
            run.done().await.unwrap();
        }
        assert!(
            ran.contains(&(runner as i64)),
            "HTTP {status}: runs {ran:?}"
        );
        drop(poller);
        session.disconnect().await;
        s.no_violations();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_renew_failing_twice_then_working_starts_the_job() {
    let s = Setup::new().await;
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    s.gh.fail_next(Endpoint::RenewJob, 2, 503);
    let index = s.gh.enqueue(job());
    let run = start(next(&mut poller, 1).await.pop().unwrap());
    run.play(Conclusion::Success);
    run.done().await.unwrap();
    assert_eq!(s.gh.job(index).unwrap().state, FakeJobState::Completed);
    assert_eq!(s.count(Endpoint::RenewJob, Some(503)), 2);
    drop(poller);
    session.disconnect().await;
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_renew_that_always_fails_abandons_the_job_unreported() {
    let s = Setup::new().await;
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    let runner = s.gh.runners()[0].id;
    s.gh.fail_next(Endpoint::RenewJob, 100, 503);
    s.gh.set_lock_duration(Duration::from_secs(2));
    let index = s.gh.enqueue(job());
    fetch_until(&s, &mut poller, 1, "the acquire", |r| {
        r.endpoint == Endpoint::AcquireJob && r.status == 200
    })
    .await;
    nothing_for(&mut poller, 0, Duration::from_secs(1)).await;
    assert_eq!(s.count(Endpoint::RenewJob, Some(503)), 3);
    // The runner stopped listening; GitHub refuses to delete it (422)
    // while the unrenewed job's lock lasts, then abandons the job.
    s.wait("the runner's session ended", |g| {
        g.runners().iter().all(|r| r.id != runner || !r.has_session)
    })
    .await;
    s.wait("the job abandoned", |g| {
        g.job(index)
            .is_some_and(|j| j.state == FakeJobState::Abandoned)
    })
    .await;
    assert_eq!(s.count(Endpoint::Results, None), 0);
    assert_eq!(s.count(Endpoint::CompleteJob, None), 0);
    drop(poller);
    session.disconnect().await;
    assert!(s.gh.runners().iter().all(|r| r.id != runner));
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_404_mid_job_gives_task_gone_cancels_and_does_not_complete() {
    let s = Setup::new().await;
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    let index = s.gh.enqueue(job());
    let run = start(next(&mut poller, 1).await.pop().unwrap());
    s.gh.set_renew_404(index);
    tokio::time::timeout(Duration::from_secs(30), run.cancel.cancelled())
        .await
        .expect("the job was not cancelled");
    let report = run.report.clone();
    let e = run.done().await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::TaskGone, "{e}");
    assert!(report.is_gone());
    assert_eq!(s.count(Endpoint::CompleteJob, None), 0);
    drop(poller);
    session.disconnect().await;
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_cancellation_reaches_the_jobs_cancel_token() {
    let s = Setup::new().await;
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    let index = s.gh.enqueue(job());
    let run = start(next(&mut poller, 1).await.pop().unwrap());
    s.wait("a Busy poll", |g| {
        g.sessions()
            .iter()
            .any(|x| x.last_status.as_deref() == Some("Busy"))
    })
    .await;
    assert!(s.gh.cancel_job(index, "00:05:00"));
    tokio::time::timeout(Duration::from_secs(30), run.cancel.cancelled())
        .await
        .expect("the cancellation did not reach the job");
    run.play(Conclusion::Cancelled);
    run.done().await.unwrap();
    let j = s.gh.job(index).unwrap();
    assert_eq!(j.state, FakeJobState::Completed);
    assert_eq!(j.conclusion.as_deref(), Some("canceled"));
    drop(poller);
    session.disconnect().await;
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_job_request_to_a_busy_runner_is_neither_acknowledged_nor_acquired() {
    let s = Setup::new().await;
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    let runner = s.gh.runners()[0].id;
    let first = s.gh.enqueue(job());
    let run = start(next(&mut poller, 1).await.pop().unwrap());
    s.gh.set_deliver_while_busy(true);
    let second = s.gh.enqueue(job());
    s.wait("the second delivery", |g| {
        g.job(second)
            .is_some_and(|j| j.delivered_to.contains(&runner))
    })
    .await;
    nothing_for(&mut poller, 0, Duration::from_secs(2)).await;
    let j = s.gh.job(second).unwrap();
    assert!(!j.acknowledged);
    assert!(
        !matches!(j.state, FakeJobState::Acquired { .. }),
        "{:?}",
        j.state
    );
    run.play(Conclusion::Success);
    run.done().await.unwrap();
    assert_eq!(s.gh.job(first).unwrap().state, FakeJobState::Completed);
    drop(poller);
    session.disconnect().await;
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_version_too_old_is_fatal_and_says_to_raise_runner_version() {
    let s = Setup::new().await;
    s.gh.set_min_runner_version("99.0.0");
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let e = loop {
        match poller.fetch(1).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(Instant::now() < deadline, "no fatal failure in 30 s");
                tokio::time::sleep(ms(100)).await;
            }
        }
    };
    assert_eq!(e.kind(), FailureKind::Fatal, "{e}");
    let text = e.to_string();
    assert!(text.contains("runner_version"), "{text}");
    assert!(text.contains("RunnerVersionTooOld"), "{text}");
    drop(poller);
    session.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completejob_failing_twice_then_working_completes_once() {
    let s = Setup::new().await;
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    let index = s.gh.enqueue(job());
    let run = start(next(&mut poller, 1).await.pop().unwrap());
    s.gh.fail_next(Endpoint::CompleteJob, 2, 503);
    run.play(Conclusion::Failure);
    run.done().await.unwrap();
    let j = s.gh.job(index).unwrap();
    assert_eq!(j.state, FakeJobState::Completed);
    assert_eq!(j.conclusion.as_deref(), Some("failed"));
    assert_eq!(s.count(Endpoint::CompleteJob, Some(503)), 2);
    assert_eq!(s.count(Endpoint::CompleteJob, Some(200)), 1);
    drop(poller);
    session.disconnect().await;
    s.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completejob_404_stops_with_task_gone() {
    let s = Setup::new().await;
    let session = s.connect().await;
    let mut poller = session.poller();
    poller.fetch(1).await.unwrap();
    s.gh.enqueue(job());
    let run = start(next(&mut poller, 1).await.pop().unwrap());
    s.gh.fail_next(Endpoint::CompleteJob, 1, 404);
    run.play(Conclusion::Success);
    let report = run.report.clone();
    let e = run.done().await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::TaskGone, "{e}");
    assert!(report.is_gone());
    assert_eq!(s.count(Endpoint::CompleteJob, None), 1);
    drop(poller);
    session.disconnect().await;
}

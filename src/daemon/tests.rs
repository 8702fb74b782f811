//! The daemon against the scripted forge and a gated job runner: slots,
//! drain, shutdown, remote cancellation and restart, in memory and in
//! seconds (no HTTP, no VM). The e2e tests prove the same with the strict
//! fake Forgejo and real guests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{DaemonError, JobRunner, Parts, Signals, serve};
use crate::config::{Config, ParseOptions};
use crate::events::{Conclusion, EventSink, JobEvent, LineKind};
use crate::executor::JobOutcome;
use crate::forge::Forge;
use crate::forge::scripted::ScriptedForge;
use crate::job::id::daemon_job_id;
use crate::job::{RunError, RunReport, Timings, VmRun};
use crate::store::{JobRow, JobState, NewJob, Store};

/// Jobs that run until the test releases them (or they are cancelled).
struct GatedJobs {
    started: AtomicUsize,
    running: AtomicUsize,
    max_running: AtomicUsize,
    release: tokio::sync::Semaphore,
    /// Jobs that were given the cache service.
    with_cache: AtomicUsize,
}

impl GatedJobs {
    fn new() -> Arc<GatedJobs> {
        Arc::new(GatedJobs {
            started: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
            release: tokio::sync::Semaphore::new(0),
            with_cache: AtomicUsize::new(0),
        })
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl JobRunner for GatedJobs {
    async fn run(
        &self,
        run: &VmRun<'_>,
        sink: &dyn EventSink,
        cancel: &CancellationToken,
    ) -> Result<RunReport, RunError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        sink.emit(JobEvent::Line {
            step: None,
            kind: LineKind::Runner,
            text: format!("running {}", run.job_id),
        });
        if run.spec.cache.is_some() {
            self.with_cache.fetch_add(1, Ordering::SeqCst);
        }
        self.started.fetch_add(1, Ordering::SeqCst);
        let result = tokio::select! {
            p = self.release.acquire() => {
                if let Ok(p) = p {
                    p.forget();
                }
                Ok(RunReport {
                    outcome: JobOutcome {
                        conclusion: Conclusion::Success,
                        outputs: Default::default(),
                        steps: vec![],
                        timed_out: false,
                    },
                    timings: Timings::default(),
                    accel: crate::vm::Accel::Tcg,
                    kvm_fallback: None,
                })
            }
            _ = cancel.cancelled() => Err(RunError::Cancelled),
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

fn config(dir: &std::path::Path, capacity: u32) -> Config {
    let secret = dir.join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef01234567\n").unwrap();
    let text = format!(
        "[daemon]\nstate_dir = {:?}\nmax_concurrent_jobs = {capacity}\ndrain_timeout_secs = 30\n[qemu]\naccel = \"tcg\"\n[images.tiny]\npath = {:?}\nvcpus = 1\nmemory_mib = 256\nlabels = [\"tiny\"]\n[forges.scripted]\nurl = \"https://forge.example\"\nsecret_file = {:?}\n",
        dir.join("state"),
        dir.join("tiny.qcow2"),
        secret,
    );
    let opts = ParseOptions { check_paths: false };
    let mut config = crate::config::parse_str_with(&text, &dir.join("solstice.toml"), &opts)
        .unwrap_or_else(|e| panic!("{e:?}"));
    for f in config.forges.values_mut() {
        f.fetch_interval = Duration::from_millis(20);
    }
    config
}

/// A daemon serving the scripted forge.
struct Daemon {
    stop: tokio::sync::mpsc::UnboundedSender<&'static str>,
    handle: tokio::task::JoinHandle<Result<(), DaemonError>>,
}

impl Daemon {
    fn start(config: Config, forge: &ScriptedForge, jobs: &Arc<GatedJobs>) -> Daemon {
        let (stop, signals) = Signals::manual();
        let forge = forge.clone();
        let parts = Parts {
            open_forge: Box::new(move |_| Ok(Arc::new(forge.clone()) as Arc<dyn Forge>)),
            jobs: jobs.clone(),
            signals,
        };
        Daemon {
            stop,
            handle: tokio::spawn(serve(config, parts)),
        }
    }

    /// Sends SIGTERM and waits for the daemon to end.
    async fn stop(self) {
        self.stop.send("SIGTERM").unwrap();
        self.wait().await;
    }

    async fn wait(self) {
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("the daemon stops in time")
            .expect("the daemon does not panic")
            .expect("the daemon stops cleanly");
    }
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn done(forge: &ScriptedForge, task: i64) -> bool {
    forge.report(task).is_some_and(|r| r.done)
}

fn store(config: &Config) -> Store {
    Store::open(&crate::store::db_path(&config.daemon.state_dir)).unwrap()
}

/// The record of the job of `task`.
fn job_of(config: &Config, task: i64) -> Option<JobRow> {
    store(config)
        .recent_jobs(100)
        .unwrap()
        .into_iter()
        .find(|j| j.task_id == task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_cap_the_running_jobs_and_the_fetch_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 2);
    let forge = ScriptedForge::default();
    for id in 1..=3 {
        forge.push_task(id);
    }
    let jobs = GatedJobs::new();
    let daemon = Daemon::start(config.clone(), &forge, &jobs);
    eventually("two jobs start", || jobs.started() == 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(jobs.started(), 2, "the third task waits for a slot");
    assert!(
        forge.fetches().iter().all(|&c| c <= 2),
        "{:?}",
        forge.fetches()
    );
    jobs.release.add_permits(1);
    eventually("the third job starts", || jobs.started() == 3).await;
    jobs.release.add_permits(2);
    eventually("every task is reported", || {
        (1..=3).all(|t| done(&forge, t))
    })
    .await;
    assert_eq!(jobs.max_running.load(Ordering::SeqCst), 2);
    for t in 1..=3 {
        let r = forge.report(t).unwrap();
        assert_eq!(r.closed, Some(Conclusion::Success));
        let id = job_of(&config, t).unwrap().id;
        assert!(r.lines.contains(&format!("running {id}")), "{r:?}");
    }
    daemon.stop().await;
    let s = store(&config);
    for t in 1..=3 {
        let job = job_of(&config, t).unwrap();
        assert_eq!(job.state, JobState::Finished);
        assert_eq!(job.result.as_deref(), Some("success"));
        assert!(job.reported);
        // The report's saved state is the port's opaque bytes.
        assert_eq!(
            s.task_state(&job.id).unwrap().as_deref(),
            Some(format!("task {t} lines 1").as_bytes())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_gets_the_cache_service_unless_it_is_off() {
    for enabled in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path(), 1);
        config.cache.enabled = enabled;
        let forge = ScriptedForge::default();
        forge.push_task(1);
        let jobs = GatedJobs::new();
        let daemon = Daemon::start(config.clone(), &forge, &jobs);
        eventually("the job starts", || jobs.started() == 1).await;
        jobs.release.add_permits(1);
        eventually("the task is reported", || done(&forge, 1)).await;
        daemon.stop().await;
        assert_eq!(jobs.with_cache.load(Ordering::SeqCst), usize::from(enabled));
        assert_eq!(
            config.cache.dir.join("index.db").exists(),
            enabled,
            "the service opens its index at start"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_running_jobs_finish_and_fetches_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 1);
    let forge = ScriptedForge::default();
    forge.push_task(1);
    let jobs = GatedJobs::new();
    let daemon = Daemon::start(config, &forge, &jobs);
    eventually("the job starts", || jobs.started() == 1).await;
    daemon.stop.send("SIGTERM").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fetches = forge.fetches().len();
    forge.push_task(2);
    assert!(!daemon.handle.is_finished(), "the daemon waits for its job");
    jobs.release.add_permits(1);
    daemon.wait().await;
    let r = forge.report(1).unwrap();
    assert_eq!(r.closed, Some(Conclusion::Success));
    assert!(r.done);
    assert!(
        forge.report(2).is_none(),
        "no task is fetched while draining"
    );
    assert_eq!(forge.fetches().len(), fetches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_still_running_after_the_drain_time_are_cancelled_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1);
    config.daemon.drain_timeout = Duration::from_millis(200);
    let forge = ScriptedForge::default();
    forge.push_task(1);
    let jobs = GatedJobs::new();
    let daemon = Daemon::start(config.clone(), &forge, &jobs);
    eventually("the job starts", || jobs.started() == 1).await;
    daemon.stop().await;
    let r = forge.report(1).unwrap();
    assert_eq!(r.closed, Some(Conclusion::Cancelled));
    assert!(r.done);
    assert!(
        r.lines
            .iter()
            .any(|l| l.starts_with("The runner is shutting down and its drain time")),
        "{:?}",
        r.lines
    );
    let job = job_of(&config, 1).unwrap();
    assert_eq!(job.result.as_deref(), Some("cancelled"));
    assert!(job.reported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_on_the_forge_stops_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 1);
    let forge = ScriptedForge::default();
    forge.push_task(1);
    let jobs = GatedJobs::new();
    let daemon = Daemon::start(config, &forge, &jobs);
    eventually("the job starts", || jobs.started() == 1).await;
    forge.cancel(1);
    eventually("the task is reported", || done(&forge, 1)).await;
    assert_eq!(forge.report(1).unwrap().closed, Some(Conclusion::Cancelled));
    assert_eq!(jobs.running.load(Ordering::SeqCst), 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reports_what_the_last_run_left_from_its_saved_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 1);
    std::fs::create_dir_all(&config.daemon.state_dir).unwrap();
    {
        // What a killed daemon leaves: a running job and a finished one
        // whose final report did not get through.
        let s = store(&config);
        for (task, state) in [(7, JobState::Running), (8, JobState::Finished)] {
            let id = daemon_job_id("scripted", task);
            s.insert_job(&NewJob {
                id: id.clone(),
                forge: "scripted".into(),
                task_id: task,
                job_name: "build".into(),
                repository: "octo/hello".into(),
                image: Some("tiny".into()),
                received_at: std::time::SystemTime::now(),
            })
            .unwrap();
            s.set_job_state(&id, JobState::Running).unwrap();
            s.save_task_state(&id, format!("saved {task}").as_bytes())
                .unwrap();
            if state == JobState::Finished {
                s.finish_job(&id, "success", std::time::SystemTime::now())
                    .unwrap();
            }
        }
    }
    let forge = ScriptedForge::default();
    let jobs = GatedJobs::new();
    let daemon = Daemon::start(config.clone(), &forge, &jobs);
    eventually("both tasks are reported", || {
        done(&forge, 7) && done(&forge, 8)
    })
    .await;
    daemon.stop().await;

    let interrupted = forge.report(7).unwrap();
    assert_eq!(interrupted.resumed_from, Some(Some(b"saved 7".to_vec())));
    assert_eq!(interrupted.closed, Some(Conclusion::Failure));
    assert!(
        interrupted
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("The runner stopped while this job was running")),
        "{interrupted:?}"
    );
    let finished = forge.report(8).unwrap();
    assert_eq!(finished.resumed_from, Some(Some(b"saved 8".to_vec())));
    assert_eq!(finished.closed, Some(Conclusion::Success));
    assert_eq!(finished.error, None);
    assert_eq!(jobs.started(), 0);

    let s = store(&config);
    for (task, result) in [(7, "failure"), (8, "success")] {
        let job = job_of(&config, task).unwrap();
        assert_eq!(job.result.as_deref(), Some(result));
        assert!(job.reported);
    }
    assert!(s.unfinished_jobs().unwrap().is_empty());
    assert!(s.unreported_finished_jobs().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_did_not_get_through_is_sent_by_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 1);
    let forge = ScriptedForge::default();
    forge.fail_finishes(1);
    forge.push_task(1);
    let jobs = GatedJobs::new();
    jobs.release.add_permits(1);
    let daemon = Daemon::start(config.clone(), &forge, &jobs);
    eventually("the job ends", || {
        job_of(&config, 1).is_some_and(|j| j.state == JobState::Finished)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    daemon.stop().await;
    assert!(!done(&forge, 1), "the forge was away");
    assert!(!job_of(&config, 1).unwrap().reported);

    // The next start sends it, from the state the first run saved.
    let forge = ScriptedForge::default();
    let daemon = Daemon::start(config.clone(), &forge, &jobs);
    eventually("the task is reported", || done(&forge, 1)).await;
    daemon.stop().await;
    let r = forge.report(1).unwrap();
    assert_eq!(r.resumed_from, Some(Some(b"task 1 lines 1".to_vec())));
    assert_eq!(r.closed, Some(Conclusion::Success));
    assert!(job_of(&config, 1).unwrap().reported);
}

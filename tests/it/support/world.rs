//! One end-to-end test's world: a state directory, the `solstice run`
//! config for the tiny image and fake forges, and helpers to wait for tasks.

use std::path::PathBuf;
use std::time::Duration;

use solstice::testing::fake_forge::{FakeForge, FakeOptions, TaskSnapshot};

use super::daemon::{Daemon, qemu_processes_under};

pub const SECRET: &str = "0123456789abcdef0123456789abcdef01234567";

/// One test's world: a state directory, a config and its forges.
pub struct World {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("solstice-e2e-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("solstice.toml");
        World { dir, config }
    }

    /// Writes the config: the tiny image (labels `tiny`, `linux`) and one
    /// `[forges.<name>]` per entry (name, url, credential line).
    pub fn configure(&self, capacity: u32, forges: &[(&str, String, String)], extra_daemon: &str) {
        self.configure_labels(capacity, forges, extra_daemon, &["tiny", "linux"]);
    }

    /// [`World::configure`] with the tiny image's `labels`.
    pub fn configure_labels(
        &self,
        capacity: u32,
        forges: &[(&str, String, String)],
        extra_daemon: &str,
        labels: &[&str],
    ) {
        let dir = &self.dir;
        let image = super::image("tiny");
        let mut text = format!(
            "[daemon]\nstate_dir = {:?}\nmax_concurrent_jobs = {capacity}\ndrain_timeout_secs = 30\n{extra_daemon}\n[qemu]\naccel = \"tcg\"\n[images.tiny]\npath = {image:?}\nvcpus = 1\nmemory_mib = 256\nboot_timeout_secs = 120\nlabels = {labels:?}\n",
            dir.path().join("state")
        );
        for (name, url, cred) in forges {
            text.push_str(&format!(
                "[forges.{name}]\nurl = {url:?}\n{cred}\nfetch_interval_secs = 1\nfetch_timeout_secs = 5\n"
            ));
        }
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn secret_file(&self, name: &str, secret: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("{secret}\n")).unwrap();
        format!("secret_file = {p:?}")
    }

    pub fn start(&self) -> Daemon {
        let logs = self.dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let mut d = Daemon::spawn(&self.config, &logs);
        d.wait_ready(Duration::from_secs(60));
        d
    }

    /// No QEMU and no job directory left.
    pub fn assert_clean(&self) {
        let qemus = qemu_processes_under(&self.state_dir());
        assert!(qemus.is_empty(), "QEMU processes left: {qemus:?}");
        let jobs = self.state_dir().join("jobs");
        let left: Vec<_> = std::fs::read_dir(&jobs)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "job directories left: {left:?}");
    }
}

pub async fn fake() -> FakeForge {
    FakeForge::start(FakeOptions::default()).await.unwrap()
}

pub fn offline(forge: &FakeForge, world: &World, name: &str, secret: &str) -> String {
    forge.register_offline(secret, name, &["tiny", "linux"]);
    world.secret_file(&format!("{name}.secret"), secret)
}

pub async fn final_task(forge: &FakeForge, job: i64, d: &Daemon) -> TaskSnapshot {
    match forge.wait_job_final(job, Duration::from_secs(240)).await {
        Some(t) => t,
        None => panic!(
            "job {job} did not finish; forge saw {:#?}\ndaemon log:\n{}",
            forge.task_for_job(job),
            d.log_text()
        ),
    }
}

/// Waits until the task of `job` has a step that started.
pub async fn wait_step_running(forge: &FakeForge, job: i64, d: &Daemon) -> i64 {
    let ok = forge
        .wait_for(
            |f| {
                f.task_for_job(job)
                    .is_some_and(|t| t.steps.iter().any(|s| s.started_at.is_some()))
            },
            Duration::from_secs(180),
        )
        .await;
    assert!(ok, "no step started; daemon log:\n{}", d.log_text());
    forge.task_for_job(job).unwrap().id
}

pub fn log_of(t: &TaskSnapshot) -> String {
    t.log.join("\n")
}

/// A job that prints `started-sleeping` and then sleeps for ten minutes.
pub const SLEEPER: &str = r#"
name: long
on: push
jobs:
  wait:
    runs-on: tiny
    steps:
      - run: echo started-sleeping; sleep 600
      - run: echo not-reached
"#;

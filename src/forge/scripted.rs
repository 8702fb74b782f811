//! An in-memory, scripted forge behind the port, for fast daemon tests
//! (slots, drain, shutdown, restart) without HTTP. The test queues tasks,
//! can make calls fail and cancel tasks "on the forge", and reads back
//! what each task's report received. The strict fake Forgejo
//! (`crate::testing::FakeForge`) proves the wire; this proves the daemon.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use indexmap::IndexMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    AssignedJob, Assignment, Connected, Failure, FailureKind, Forge, Poller, ReportStarter,
    ResumedTask, RunnerCredentials, Session, TaskReport,
};
use crate::events::{Conclusion, EventSink, JobEvent};
use crate::job::{CheckoutSource, JobSpec};

/// A failure of the scripted forge.
#[derive(Debug, thiserror::Error)]
#[error("scripted forge: {0}")]
pub(crate) struct ScriptedError(pub &'static str);

/// What one task's report received.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReportLog {
    /// Runner lines and step output, in order.
    pub lines: Vec<String>,
    pub closed: Option<Conclusion>,
    /// The last line given to `close`.
    pub error: Option<String>,
    /// The final report reached the forge.
    pub done: bool,
    /// Resumed from these bytes (a report of a previous run).
    pub resumed_from: Option<Option<Vec<u8>>>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<i64>,
    /// Capacity of each fetch, in order.
    fetches: Vec<u32>,
    reports: BTreeMap<i64, ReportLog>,
    /// Tasks cancelled on the forge.
    cancelled: Vec<i64>,
    /// Final reports to fail (transiently) before one gets through.
    fail_finishes: u32,
}

/// The scripted forge (cheap to clone: clones share their state).
#[derive(Clone, Default)]
pub(crate) struct ScriptedForge {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl ScriptedForge {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a task (a one-step job on the `tiny` label).
    pub fn push_task(&self, task_id: i64) {
        self.lock().queue.push_back(task_id);
    }

    /// Cancels a task on the forge: its report's upload loop notices.
    pub fn cancel(&self, task_id: i64) {
        self.lock().cancelled.push(task_id);
        self.changed.notify_waiters();
    }

    /// The next `n` final reports fail (transiently).
    pub fn fail_finishes(&self, n: u32) {
        self.lock().fail_finishes = n;
    }

    pub fn fetches(&self) -> Vec<u32> {
        self.lock().fetches.clone()
    }

    pub fn report(&self, task_id: i64) -> Option<ReportLog> {
        self.lock().reports.get(&task_id).cloned()
    }

    fn report_for(&self, task_id: i64, log: ReportLog) -> Arc<dyn TaskReport> {
        self.lock().reports.insert(task_id, log);
        self.changed.notify_waiters();
        Arc::new(ScriptedReport {
            forge: self.clone(),
            task_id,
            wake: Notify::new(),
        })
    }
}

/// A one-step job for the scripted tasks.
fn job(task_id: i64) -> AssignedJob {
    let yaml = "jobs:\n  build:\n    runs-on: tiny\n    steps:\n      - run: echo hello\n";
    let workflow = crate::workflow::parse_workflow(yaml).unwrap_or_else(|e| panic!("{e}"));
    AssignedJob {
        spec: JobSpec {
            workflow,
            job_id: "build".into(),
            matrix: IndexMap::new(),
            github: serde_json::json!({"repository": "octo/hello", "run_id": task_id.to_string()}),
            secrets: BTreeMap::new(),
            vars: BTreeMap::new(),
            inputs: serde_json::json!({}),
            needs: serde_json::json!({}),
            extra_env: IndexMap::new(),
            checkout: CheckoutSource::None,
            max_job_timeout: None,
            extra_masks: vec![],
            default_actions_url: None,
            actions: None,
            cache: None,
            extra_contexts: Default::default(),
        },
        runs_on: vec!["tiny".into()],
        image: None,
        notes: vec![],
        user_keys: None,
    }
}

#[async_trait::async_trait]
impl Forge for ScriptedForge {
    async fn connect(&self, _saved: Option<RunnerCredentials>) -> Result<Connected, Failure> {
        Ok(Connected {
            session: Arc::new(self.clone()),
            credentials: RunnerCredentials {
                url: "scripted://forge".into(),
                uuid: "scripted-runner".into(),
                token: crate::secret::Secret::new("token"),
                runner_id: 1,
                declared_labels: vec!["tiny".into()],
            },
            changed: true,
        })
    }

    fn connect_offline(&self, _saved: Option<&RunnerCredentials>) -> Option<Arc<dyn Session>> {
        Some(Arc::new(self.clone()))
    }
}

impl Session for ScriptedForge {
    fn poller(&self) -> Box<dyn Poller> {
        Box::new(self.clone())
    }

    fn resume(&self, task: ResumedTask) -> Arc<dyn TaskReport> {
        let log = ReportLog {
            resumed_from: Some(task.saved),
            ..ReportLog::default()
        };
        self.report_for(task.task_id, log)
    }
}

#[async_trait::async_trait]
impl Poller for ScriptedForge {
    async fn fetch(&mut self, capacity: u32) -> Result<Vec<Assignment>, Failure> {
        let ids: Vec<i64> = {
            let mut s = self.lock();
            s.fetches.push(capacity);
            let n = s.queue.len().min(capacity as usize);
            s.queue.drain(..n).collect()
        };
        self.changed.notify_waiters();
        Ok(ids
            .into_iter()
            .map(|task_id| {
                let forge = self.clone();
                Assignment {
                    received: std::time::Instant::now(),
                    task_id,
                    job_name: "build".into(),
                    repository: "octo/hello".into(),
                    step_count: 1,
                    job: Ok(job(task_id)),
                    report: ReportStarter::new(move |_spool| {
                        forge.report_for(task_id, ReportLog::default())
                    }),
                }
            })
            .collect())
    }
}

/// One task's scripted report.
struct ScriptedReport {
    forge: ScriptedForge,
    task_id: i64,
    /// Wakes the upload loop on close.
    wake: Notify,
}

impl ScriptedReport {
    /// Reads the log without waking anyone.
    fn peek<T>(&self, f: impl FnOnce(&ReportLog) -> T) -> T {
        let mut s = self.forge.lock();
        f(s.reports.entry(self.task_id).or_default())
    }

    fn with<T>(&self, f: impl FnOnce(&mut ReportLog) -> T) -> T {
        let mut s = self.forge.lock();
        let log = s.reports.entry(self.task_id).or_default();
        let r = f(log);
        drop(s);
        self.forge.changed.notify_waiters();
        r
    }
}

impl EventSink for ScriptedReport {
    fn emit(&self, event: JobEvent) {
        if let JobEvent::Line { text, .. } = event {
            self.with(|l| l.lines.push(text));
        }
    }
}

#[async_trait::async_trait]
impl TaskReport for ScriptedReport {
    async fn run(&self, cancel_job: CancellationToken) -> Result<(), Failure> {
        loop {
            let changed = self.forge.changed.notified();
            if self.forge.lock().cancelled.contains(&self.task_id) {
                cancel_job.cancel();
            }
            if self.peek(|l| l.closed.is_some()) {
                break;
            }
            tokio::select! {
                _ = changed => {}
                _ = self.wake.notified() => {}
            }
        }
        self.finish(&cancel_job).await
    }

    async fn finish(&self, _cancel_job: &CancellationToken) -> Result<(), Failure> {
        {
            let mut s = self.forge.lock();
            if s.fail_finishes > 0 {
                s.fail_finishes -= 1;
                return Err(Failure::new(
                    FailureKind::Transient,
                    ScriptedError("the forge is away"),
                ));
            }
        }
        self.with(|l| {
            l.closed.get_or_insert(Conclusion::Failure);
            l.done = true;
        });
        Ok(())
    }

    fn close(
        &self,
        conclusion: Conclusion,
        _outputs: &IndexMap<String, String>,
        error: Option<&str>,
    ) {
        let cancelled = self.forge.lock().cancelled.contains(&self.task_id);
        self.with(|l| {
            if l.closed.is_none() {
                l.closed = Some(if cancelled {
                    Conclusion::Cancelled
                } else {
                    conclusion
                });
                l.error = error.map(str::to_string);
            }
        });
        self.wake.notify_one();
    }

    fn is_gone(&self) -> bool {
        false
    }

    fn result(&self) -> Option<Conclusion> {
        self.peek(|l| l.closed)
    }

    fn save(&self) -> Vec<u8> {
        self.peek(|l| format!("task {} lines {}", self.task_id, l.lines.len()).into_bytes())
    }
}

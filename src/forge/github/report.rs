//! One GitHub job's report (spec §5.3–5.5, §6): the [`TaskReport`] the
//! daemon drives.
//!
//! While the job runs, [`GithubReport`] keeps the job's lock (`renewjob`
//! every minute with the job token), pushes step status changes to the
//! results service (`WorkflowStepsUpdate`, `change_order` strictly
//! increasing), and uploads each finished step's log (one block blob to the
//! signed URL, then its metadata with the exact line count) and summary.
//! [`TaskReport::finish`] uploads what is left, the job log (every line of
//! the job, the setup lines before the first step included), then sends
//! `completejob`.
//!
//! Lines wait in the task's [`LogSpool`] in job-log order; a step's lines
//! are one contiguous range of it (lines outside steps while a step runs
//! belong to that step), so a blob is rebuilt from the spool whenever it is
//! sent (blob PUTs replace the whole blob: a retry never loses or repeats a
//! line). Results calls are progress reporting: bounded retries, and a
//! failure never changes the job's result. `completejob` is tried 5 times
//! 5 s apart; 401/404 end the report ([`FailureKind::TaskGone`]).
//!
//! A job Solstice cannot run: [`unrunnable`] (or `start` and then
//! `close(Failure, …, Some(message))`): the message becomes a line of the
//! job log and a `FAILURE` annotation.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::error::GithubError;
use super::job::JobEnvelope;
use super::results::{
    ResultsClient, STATUS_COMPLETED, STATUS_IN_PROGRESS, STATUS_PENDING, StepUpdate,
    conclusion_int, conclusion_word, time_log_prefix, time_millis,
};
use super::run::{
    Annotation, COMPLETE_PAUSE, COMPLETE_TRIES, CompleteJob, OutputValue, RENEW_PERIOD, StepResult,
    complete_is_final, complete_job, renew_job,
};
use crate::civil::Civil;
use crate::events::{Conclusion, EventSink, JobEvent, LineKind, Phase};
use crate::forge::{
    Failure, FailureKind, LogLine, LogSpool, RUNNER_VERSION, ResumedTask, TaskReport,
};

/// Most annotations sent with `completejob` (GitHub keeps 50 per job).
pub const MAX_ANNOTATIONS: usize = 50;
/// Pending lines go to the spool at this many.
const BATCH_LINES: usize = 500;
/// Rows per spool read while a blob is built.
const READ_ROWS: usize = 2000;
/// Bytes per spool read while a blob is built.
const READ_BYTES: usize = 4 * 1024 * 1024;
/// Format version of [`TaskReport::save`]'s bytes.
const SAVE_VERSION: u32 = 1;
/// What replaces the text a `mask` pattern matches.
const MASK: &str = "***";
/// The text of the annotation of a job Solstice restarted under.
pub const RESTARTED: &str = "Solstice restarted while this job ran; its VM and the steps still running were lost. The job is marked failed: re-run it.";

/// Timings of a report; [`Default`] is what GitHub expects, tests shorten
/// them.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Period of `renewjob` (60 s).
    pub renew_period: Duration,
    /// Shortest pause before retrying a failed renewal (5 s).
    pub renew_retry_min: Duration,
    /// Longest pause before retrying a failed renewal (15 s).
    pub renew_retry_max: Duration,
    /// Renewals are retried while `lockedUntil` plus this is in the future
    /// (5 min).
    pub lock_grace: Duration,
    /// The lock assumed when `renewjob` named none (10 min).
    pub assumed_lock: Duration,
    /// Tries of `completejob` (5).
    pub complete_tries: u32,
    /// Pause between `completejob` tries (5 s).
    pub complete_pause: Duration,
    /// Tries of one results update or upload (3).
    pub results_tries: u32,
    /// Pause between them (2 s).
    pub results_pause: Duration,
    /// How often the running report moves lines to the spool and looks for
    /// work when nothing wakes it (1 s).
    pub tick: Duration,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            renew_period: RENEW_PERIOD,
            renew_retry_min: Duration::from_secs(5),
            renew_retry_max: Duration::from_secs(15),
            lock_grace: Duration::from_secs(5 * 60),
            assumed_lock: Duration::from_secs(10 * 60),
            complete_tries: COMPLETE_TRIES,
            complete_pause: COMPLETE_PAUSE,
            results_tries: 3,
            results_pause: Duration::from_secs(2),
            tick: Duration::from_secs(1),
        }
    }
}

/// Why a report ended before GitHub had all of it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReportError {
    /// GitHub no longer has the job: the lock was lost or `completejob`
    /// answered 401/404. The job was cancelled; nothing more is sent.
    #[error(
        "GitHub no longer has job {job_id} (its lock was lost or it was deleted); the job was stopped and its report given up: {source}"
    )]
    Gone {
        job_id: String,
        #[source]
        source: GithubError,
    },
    /// `completejob` failed every try; call [`TaskReport::finish`] again.
    #[error(
        "Could not complete job {job_id} at GitHub after {tries} tries; will try again: {source}"
    )]
    CompleteFailed {
        job_id: String,
        tries: u32,
        #[source]
        source: GithubError,
    },
    /// The saved report cannot be read: the job cannot be completed.
    #[error("The saved report of task {task_id} cannot be read; GitHub will time the job out")]
    Unreadable { task_id: i64 },
}

/// A conclusion as saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Saved {
    Success,
    Failure,
    Cancelled,
    Skipped,
}

impl From<Conclusion> for Saved {
    fn from(c: Conclusion) -> Self {
        match c {
            Conclusion::Success => Saved::Success,
            Conclusion::Failure => Saved::Failure,
            Conclusion::Cancelled => Saved::Cancelled,
            Conclusion::Skipped => Saved::Skipped,
        }
    }
}

impl From<Saved> for Conclusion {
    fn from(c: Saved) -> Self {
        match c {
            Saved::Success => Conclusion::Success,
            Saved::Failure => Conclusion::Failure,
            Saved::Cancelled => Conclusion::Cancelled,
            Saved::Skipped => Conclusion::Skipped,
        }
    }
}

/// One step of the job message, as the report tracks it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StepTrack {
    /// Display name (masked); the message's until the step starts.
    name: String,
    started_at: Option<String>,
    completed_at: Option<String>,
    conclusion: Option<Saved>,
    /// Job-log index of the step's first line.
    first_line: Option<u64>,
    /// The step's lines.
    lines: u64,
    /// Its log went to results (or was given up).
    log_done: bool,
    /// Its summary (masked), until sent.
    summary: Option<String>,
    /// The status results has: 0 none, or a `STATUS_*`.
    reported: i32,
}

/// The closing of the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Closed {
    conclusion: Saved,
    outputs: IndexMap<String, String>,
}

/// The report's state; what [`TaskReport::save`] returns, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    version: u32,
    envelope: JobEnvelope,
    steps: Vec<StepTrack>,
    /// Lines in the spool (the job log so far).
    spooled: u64,
    /// Last `change_order` used.
    change_order: u64,
    /// The first `WorkflowStepsUpdate` (every step pending) went through.
    initial_sent: bool,
    annotations: Vec<Annotation>,
    /// GitHub cancelled the job.
    remote_cancelled: bool,
    closed: Option<Closed>,
    job_log_done: bool,
    /// `completejob` went through.
    completed: bool,
    /// GitHub no longer has the job.
    gone: bool,
}

/// Where a line outside steps goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Setup,
    Step(usize),
    Between,
    Complete,
}

struct Inner {
    state: State,
    /// Lines not in the spool yet.
    pending: Vec<LogLine>,
    /// The running step.
    current: Option<usize>,
    /// The job finished ([`JobEvent::JobFinished`] or closed).
    finished: bool,
    /// Was resumed after a restart (no lock to keep).
    resumed: bool,
    spool_warned: bool,
}

/// One GitHub job's report.
pub struct GithubReport {
    inner: Mutex<Inner>,
    spool: Arc<dyn LogSpool>,
    http: reqwest::Client,
    results: Option<ResultsClient>,
    masks: Vec<regex::Regex>,
    remote_cancel: CancellationToken,
    options: ReportOptions,
    wake: tokio::sync::Notify,
    /// One final sequence at a time.
    finishing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for GithubReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubReport")
            .field("job_id", &self.lock().state.envelope.job_id)
            .finish_non_exhaustive()
    }
}

/// The report of a job that starts now. The first line of the job log
/// names the runner; `remote_cancel` is cancelled when GitHub cancels the
/// job (`JobCancellation`).
pub fn start(
    envelope: JobEnvelope,
    http: reqwest::Client,
    spool: Arc<dyn LogSpool>,
    remote_cancel: CancellationToken,
    options: ReportOptions,
) -> Arc<GithubReport> {
    let steps = envelope
        .steps
        .iter()
        .map(|s| StepTrack {
            name: s.name.clone(),
            ..StepTrack::default()
        })
        .collect();
    let state = State {
        version: SAVE_VERSION,
        envelope,
        steps,
        spooled: 0,
        change_order: 0,
        initial_sent: false,
        annotations: Vec::new(),
        remote_cancelled: false,
        closed: None,
        job_log_done: false,
        completed: false,
        gone: false,
    };
    let report = GithubReport::new(state, http, spool, remote_cancel, options, false);
    {
        let mut inner = report.lock();
        let name = inner.state.envelope.display_name.clone();
        let text = format!("Job {name} received by {RUNNER_VERSION}");
        report.push(&mut inner, None, &text);
    }
    Arc::new(report)
}

/// The report of a job Solstice cannot run: `message` is a line of the job
/// log and a `FAILURE` annotation, the job fails. Drive it as any other
/// (`run`, then `finish`).
pub fn unrunnable(
    envelope: JobEnvelope,
    http: reqwest::Client,
    spool: Arc<dyn LogSpool>,
    message: String,
    options: ReportOptions,
) -> Arc<GithubReport> {
    let report = start(envelope, http, spool, CancellationToken::new(), options);
    report.close(Conclusion::Failure, &IndexMap::new(), Some(&message));
    report
}

/// The report of a job a previous run left, from what [`TaskReport::save`]
/// returned. It never runs anything: once closed (by the daemon, or by
/// `finish` as failed with the [`RESTARTED`] annotation) it sends what is
/// left and `completejob`; a job closed before the restart keeps its
/// conclusion.
pub fn resume(task: ResumedTask, http: reqwest::Client) -> Arc<dyn TaskReport> {
    let state = task
        .saved
        .as_deref()
        .and_then(|b| serde_json::from_slice::<State>(b).ok())
        .filter(|s| s.version == SAVE_VERSION);
    let Some(mut state) = state else {
        return Arc::new(LostReport {
            task_id: task.task_id,
        });
    };
    // The saved state may count lines that never reached the spool.
    let total = task.spooled;
    state.spooled = total;
    for s in &mut state.steps {
        if let Some(first) = s.first_line {
            let first = first.min(total);
            s.first_line = Some(first);
            s.lines = s.lines.min(total - first);
        }
    }
    // A crash may have lost `change_order`s used after the last save.
    state.change_order += 1000;
    let report = GithubReport::new(
        state,
        http,
        task.spool,
        CancellationToken::new(),
        ReportOptions::default(),
        true,
    );
    Arc::new(report)
}

impl GithubReport {
    fn new(
        state: State,
        http: reqwest::Client,
        spool: Arc<dyn LogSpool>,
        remote_cancel: CancellationToken,
        options: ReportOptions,
        resumed: bool,
    ) -> Self {
        let masks = compile_masks(&state.envelope.mask_patterns);
        let results = state.envelope.results_url.as_deref().map(|url| {
            ResultsClient::new(
                http.clone(),
                url,
                state.envelope.job_token.clone(),
                &state.envelope.plan_id,
                &state.envelope.job_id,
            )
        });
        let finished = state.closed.is_some();
        GithubReport {
            inner: Mutex::new(Inner {
                state,
                pending: Vec::new(),
                current: None,
                finished,
                resumed,
                spool_warned: false,
            }),
            spool,
            http,
            results,
            masks,
            remote_cancel,
            options,
            wake: tokio::sync::Notify::new(),
            finishing: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn job_id(&self) -> String {
        self.lock().state.envelope.job_id.clone()
    }

    /// `text` with every `mask` pattern's matches replaced.
    fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for re in &self.masks {
            if re.is_match(&out) {
                out = re.replace_all(&out, MASK).into_owned();
            }
        }
        out
    }

    fn part(inner: &Inner) -> Part {
        if let Some(i) = inner.current {
            Part::Step(i)
        } else if inner.finished
            || inner
                .state
                .steps
                .last()
                .is_none_or(|s| s.conclusion.is_some())
        {
            Part::Complete
        } else if inner.state.steps.iter().any(|s| s.started_at.is_some()) {
            Part::Between
        } else {
            Part::Setup
        }
    }

    /// Appends the lines of `text` (masked here) to the job log, counted in
    /// `step` when given.
    fn push(&self, inner: &mut Inner, step: Option<usize>, text: &str) {
        let text = self.mask(text);
        let now = SystemTime::now();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let index = inner.state.spooled + inner.pending.len() as u64;
            if let Some(t) = step.and_then(|i| inner.state.steps.get_mut(i)) {
                if t.first_line.is_none() {
                    t.first_line = Some(index);
                }
                t.lines += 1;
            }
            inner.pending.push(LogLine {
                time: now,
                content: line.to_string(),
            });
        }
        if inner.pending.len() >= BATCH_LINES {
            self.flush(inner);
        }
    }

    /// Moves the pending lines to the spool (they stay pending when it fails).
    fn flush(&self, inner: &mut Inner) {
        if inner.pending.is_empty() {
            return;
        }
        match self.spool.append(inner.state.spooled, &inner.pending) {
            Ok(()) => {
                inner.state.spooled += inner.pending.len() as u64;
                inner.pending.clear();
                inner.spool_warned = false;
            }
            Err(e) => {
                if !inner.spool_warned {
                    tracing::warn!(job = %inner.state.envelope.job_id, error = %e, "log spool failed; keeping lines in memory");
                    inner.spool_warned = true;
                }
            }
        }
    }

    /// A line of job output: in the running step (job-level lines while a
    /// step runs belong to it), or outside steps; a step's line while
    /// another step runs is dropped.
    fn output(&self, inner: &mut Inner, step: Option<usize>, text: &str) {
        let target = match (Self::part(inner), step) {
            (Part::Step(i), Some(s)) if i == s => Some(i),
            (Part::Step(i), None) => Some(i),
            (Part::Step(_), Some(_)) => return,
            _ => None,
        };
        self.push(inner, target, text);
    }

    fn annotate(&self, inner: &mut Inner, level: &str, message: &str, step: Option<usize>) {
        if inner.state.annotations.len() >= MAX_ANNOTATIONS {
            return;
        }
        inner.state.annotations.push(Annotation {
            level: level.to_string(),
            message: self.mask(message),
            title: None,
            step_number: step.map(|i| i as i64 + 1),
            is_infrastructure_issue: false,
        });
    }

    fn handle(&self, inner: &mut Inner, event: JobEvent) {
        match event {
            JobEvent::Phase { phase, detail } => {
                let label = match phase {
                    Phase::Provision => "Provisioning the VM",
                    Phase::Boot => "Booting",
                    Phase::Ready => "VM ready",
                    Phase::Teardown => "Tearing down",
                };
                if matches!(Self::part(inner), Part::Setup | Part::Complete) {
                    self.push(inner, None, &format!("{label}: {detail}"));
                }
            }
            JobEvent::StepStarted { index, name } => {
                let name = self.mask(&name);
                if let Some(t) = inner.state.steps.get_mut(index) {
                    t.started_at = Some(time_millis(SystemTime::now()));
                    if !name.is_empty() {
                        t.name = name;
                    }
                    inner.current = Some(index);
                }
                self.flush(inner);
                self.wake.notify_one();
            }
            JobEvent::Line { step, kind, text } => {
                let content = match &kind {
                    LineKind::Stdout | LineKind::Stderr | LineKind::Runner => text.clone(),
                    LineKind::Debug => format!("##[debug]{text}"),
                    LineKind::Annotation(k) => format!("##[{k}]{text}"),
                    LineKind::GroupStart => format!("##[group]{text}"),
                    LineKind::GroupEnd => "##[endgroup]".to_string(),
                };
                if let LineKind::Annotation(k) = &kind {
                    let level = match k.as_str() {
                        "error" => Some("FAILURE"),
                        "warning" => Some("WARNING"),
                        "notice" => Some("NOTICE"),
                        _ => None,
                    };
                    if let Some(level) = level {
                        let at = step.or(inner.current);
                        self.annotate(inner, level, &text, at);
                    }
                }
                self.output(inner, step, &content);
            }
            JobEvent::StepSummary { index, markdown } => {
                let markdown = self.mask(&markdown);
                if let Some(t) = inner.state.steps.get_mut(index) {
                    match &mut t.summary {
                        Some(s) => s.push_str(&markdown),
                        None => t.summary = Some(markdown),
                    }
                }
            }
            JobEvent::StepFinished {
                index, conclusion, ..
            } => {
                if let Some(t) = inner.state.steps.get_mut(index) {
                    let now = time_millis(SystemTime::now());
                    if t.started_at.is_none() {
                        t.started_at = Some(now.clone());
                    }
                    t.completed_at = Some(now);
                    t.conclusion = Some(conclusion.into());
                }
                if inner.current == Some(index) {
                    inner.current = None;
                }
                self.flush(inner);
                self.wake.notify_one();
            }
            JobEvent::JobFinished { .. } => {
                self.end_steps(inner, false);
            }
        }
    }

    /// The job is over: a running step becomes cancelled (failed after a
    /// restart), steps never started skipped.
    fn end_steps(&self, inner: &mut Inner, lost: bool) {
        inner.finished = true;
        inner.current = None;
        let now = time_millis(SystemTime::now());
        for t in &mut inner.state.steps {
            if t.conclusion.is_some() {
                continue;
            }
            if t.started_at.is_some() {
                t.conclusion = Some(if lost {
                    Saved::Failure
                } else {
                    Saved::Cancelled
                });
            } else {
                t.conclusion = Some(Saved::Skipped);
            }
            t.completed_at = Some(now.clone());
        }
    }

    /// Sends one results call with bounded retries; `false` when it did
    /// not get through (logged).
    async fn results_call<F, Fut>(&self, what: &str, mut call: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), GithubError>>,
    {
        let tries = self.options.results_tries.max(1);
        for n in 1..=tries {
            match call().await {
                Ok(()) => return true,
                Err(e) => {
                    let again = n < tries && (e.is_retryable() || e.status().is_none());
                    if !again {
                        tracing::warn!(job = %self.job_id(), error = %e, "{what} did not reach GitHub; the job's result is not affected");
                        return false;
                    }
                    tokio::time::sleep(self.options.results_pause).await;
                }
            }
        }
        false
    }

    /// The step records whose status results lacks, with the status to
    /// send; a completed step only once its log and summary went.
    fn due_updates(inner: &Inner) -> Vec<(usize, StepUpdate)> {
        let env = &inner.state.envelope;
        inner
            .state
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let r = env.steps.get(i)?;
                let (status, conclusion) = match t.conclusion {
                    Some(c) if t.log_done && t.summary.is_none() => {
                        (STATUS_COMPLETED, conclusion_int(c.into()))
                    }
                    _ if t.started_at.is_some() => (STATUS_IN_PROGRESS, 0),
                    _ => return None,
                };
                if t.reported == status {
                    return None;
                }
                Some((
                    i,
                    StepUpdate {
                        external_id: r.external_id.clone(),
                        number: i as i64 + 1,
                        name: t.name.clone(),
                        status,
                        started_at: t.started_at.clone(),
                        completed_at: (status == STATUS_COMPLETED)
                            .then(|| t.completed_at.clone())
                            .flatten(),
                        conclusion,
                    },
                ))
            })
            .collect()
    }

    /// Sends `updates` in one `WorkflowStepsUpdate`, each try with a new
    /// `change_order`; marks them reported when it went through (or was
    /// given up: results calls are best effort).
    async fn send_updates(&self, results: &ResultsClient, updates: Vec<(usize, StepUpdate)>) {
        if updates.is_empty() {
            return;
        }
        let steps: Vec<StepUpdate> = updates.iter().map(|(_, u)| u.clone()).collect();
        self.results_call("A step status update", || {
            let order = {
                let mut inner = self.lock();
                inner.state.change_order += 1;
                inner.state.change_order
            };
            let steps = steps.clone();
            async move { results.steps_update(&steps, order).await }
        })
        .await;
        let mut inner = self.lock();
        for (i, u) in updates {
            if let Some(t) = inner.state.steps.get_mut(i) {
                t.reported = u.status;
            }
        }
    }

    /// Reads job-log lines `from..from + count` from the spool (what is not
    /// there yet comes from the pending lines) as blob text.
    fn blob(&self, from: u64, count: u64) -> Result<(Vec<u8>, u64), String> {
        let mut body = Vec::new();
        let mut at = from;
        let end = from + count;
        while at < end {
            let rows = self
                .spool
                .read(at, READ_ROWS.min((end - at) as usize), READ_BYTES)
                .map_err(|e| e.to_string())?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                body.extend_from_slice(time_log_prefix(r.time).as_bytes());
                body.push(b' ');
                body.extend_from_slice(r.content.as_bytes());
                body.push(b'\n');
            }
            at += rows.len() as u64;
        }
        Ok((body, at - from))
    }

    /// Uploads step `i`'s log and summary (each as a unit: URL, blob,
    /// metadata), once; best effort.
    async fn upload_step(&self, results: &ResultsClient, i: usize) {
        let (step_id, first, lines, log_done, summary) = {
            let mut inner = self.lock();
            self.flush(&mut inner);
            let Some(r) = inner.state.envelope.steps.get(i) else {
                return;
            };
            let step_id = r.external_id.clone();
            let Some(t) = inner.state.steps.get(i) else {
                return;
            };
            (
                step_id,
                t.first_line,
                t.lines,
                t.log_done,
                t.summary.clone(),
            )
        };
        if !log_done {
            let sent = match first {
                Some(first) if lines > 0 => match self.blob(first, lines) {
                    Ok((body, count)) => {
                        self.results_call("A step log", || {
                            let body = body.clone();
                            let step_id = step_id.clone();
                            async move {
                                let url = results.step_logs_url(&step_id).await?;
                                results.put_blob(&url.url, body).await?;
                                results.step_logs_metadata(&step_id, count).await
                            }
                        })
                        .await
                    }
                    Err(e) => {
                        tracing::warn!(job = %self.job_id(), error = %e, "a step log cannot be read from the spool; not uploaded");
                        false
                    }
                },
                _ => true,
            };
            let _ = sent;
            if let Some(t) = self.lock().state.steps.get_mut(i) {
                t.log_done = true;
            }
        }
        if let Some(md) = summary.filter(|s| !s.is_empty()) {
            let size = md.len() as u64;
            self.results_call("A step summary", || {
                let body = md.clone().into_bytes();
                let step_id = step_id.clone();
                async move {
                    let url = results.step_summary_url(&step_id).await?;
                    if let Some(limit) = url.soft_size_limit
                        && size > limit
                    {
                        return Err(GithubError::Invalid(format!(
                            "the step summary has {size} bytes, more than the {limit} GitHub takes"
                        )));
                    }
                    results.put_blob(&url.url, body).await?;
                    results.step_summary_metadata(&step_id, size).await
                }
            })
            .await;
        }
        if let Some(t) = self.lock().state.steps.get_mut(i) {
            t.summary = None;
        }
    }

    /// Sends what is due while the job runs: the first all-pending update,
    /// finished steps' logs and summaries, status changes.
    async fn progress(&self) {
        let Some(results) = &self.results else {
            return;
        };
        let initial = {
            let inner = self.lock();
            (!inner.state.initial_sent).then(|| {
                inner
                    .state
                    .envelope
                    .steps
                    .iter()
                    .zip(&inner.state.steps)
                    .enumerate()
                    .map(|(i, (r, t))| StepUpdate {
                        external_id: r.external_id.clone(),
                        number: i as i64 + 1,
                        name: t.name.clone(),
                        status: STATUS_PENDING,
                        started_at: None,
                        completed_at: None,
                        conclusion: 0,
                    })
                    .collect::<Vec<_>>()
            })
        };
        if let Some(steps) = initial {
            self.results_call("The first step status update", || {
                let order = {
                    let mut inner = self.lock();
                    inner.state.change_order += 1;
                    inner.state.change_order
                };
                let steps = steps.clone();
                async move { results.steps_update(&steps, order).await }
            })
            .await;
            let mut inner = self.lock();
            inner.state.initial_sent = true;
            for t in &mut inner.state.steps {
                t.reported = t.reported.max(STATUS_PENDING);
            }
        }
        loop {
            // Steps that started: in progress first.
            let started: Vec<(usize, StepUpdate)> = Self::due_updates(&self.lock())
                .into_iter()
                .filter(|(_, u)| u.status == STATUS_IN_PROGRESS)
                .collect();
            self.send_updates(results, started).await;
            let next =
                {
                    let inner = self.lock();
                    inner.state.steps.iter().position(|t| {
                        t.conclusion.is_some() && (!t.log_done || t.summary.is_some())
                    })
                };
            let Some(i) = next else { break };
            self.upload_step(results, i).await;
            let done: Vec<(usize, StepUpdate)> = Self::due_updates(&self.lock())
                .into_iter()
                .filter(|(n, _)| *n == i)
                .collect();
            self.send_updates(results, done).await;
        }
        let rest = Self::due_updates(&self.lock());
        self.send_updates(results, rest).await;
    }

    /// Keeps the job's lock; returns when it is lost (404, or renewals
    /// failed until `lockedUntil` + grace).
    async fn keep_lock(&self) -> GithubError {
        let (url, token, plan, job) = {
            let inner = self.lock();
            let e = &inner.state.envelope;
            (
                e.run_service_url.clone(),
                e.job_token.clone(),
                e.plan_id.clone(),
                e.job_id.clone(),
            )
        };
        let o = &self.options;
        let mut deadline = SystemTime::now() + o.assumed_lock + o.lock_grace;
        loop {
            tokio::time::sleep(o.renew_period).await;
            loop {
                match renew_job(&self.http, &url, &token, &plan, &job).await {
                    Ok(until) => {
                        let until = parse_time(&until)
                            .unwrap_or_else(|| SystemTime::now() + o.assumed_lock);
                        deadline = until + o.lock_grace;
                        break;
                    }
                    Err(e) if e.status() == Some(404) => return e,
                    Err(e) => {
                        let pause = random_between(o.renew_retry_min, o.renew_retry_max);
                        if SystemTime::now() + pause >= deadline {
                            return e;
                        }
                        tracing::warn!(job = %job, error = %e, "renewing the job's lock failed; retrying");
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// Gives the job up: GitHub no longer has it.
    fn give_up(&self, e: GithubError, cancel_job: &CancellationToken) -> Failure {
        let job_id = {
            let mut inner = self.lock();
            if !inner.state.gone {
                tracing::warn!(job = %inner.state.envelope.job_id, error = %e, "GitHub no longer has this job; it is stopped and its report given up");
                inner.state.gone = true;
                let end = inner.state.spooled;
                if let Err(e) = self.spool.ack(end) {
                    tracing::warn!(error = %e, "log spool ack failed");
                }
                inner.pending.clear();
            }
            inner.state.envelope.job_id.clone()
        };
        cancel_job.cancel();
        self.wake.notify_one();
        Failure::new(
            FailureKind::TaskGone,
            ReportError::Gone { job_id, source: e },
        )
    }

    /// The report while the job runs, until it is closed.
    async fn running(&self, cancel_job: &CancellationToken) {
        let mut cancelled = false;
        loop {
            self.progress().await;
            if self.lock().state.closed.is_some() {
                return;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.options.tick) => {
                    let mut inner = self.lock();
                    self.flush(&mut inner);
                }
                _ = self.remote_cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    let mut inner = self.lock();
                    inner.state.remote_cancelled = true;
                    drop(inner);
                    tracing::info!(job = %self.job_id(), "GitHub cancelled the job");
                    cancel_job.cancel();
                }
            }
        }
    }

    /// The final sequence: what is left of the steps, the job log,
    /// `completejob`. Resumes where an earlier call stopped.
    async fn final_sequence(&self, cancel_job: &CancellationToken) -> Result<(), Failure> {
        let _one = self.finishing.lock().await;
        {
            let inner = self.lock();
            if inner.state.gone {
                return Err(Failure::new(
                    FailureKind::TaskGone,
                    ReportError::Gone {
                        job_id: inner.state.envelope.job_id.clone(),
                        source: GithubError::Invalid("given up earlier".into()),
                    },
                ));
            }
            if inner.state.completed {
                return Ok(());
            }
        }
        if self.lock().state.closed.is_none() {
            self.close(Conclusion::Failure, &IndexMap::new(), Some(RESTARTED));
        }
        self.progress().await;
        if let Some(results) = &self.results {
            let (done, total) = {
                let mut inner = self.lock();
                self.flush(&mut inner);
                (inner.state.job_log_done, inner.state.spooled)
            };
            if !done {
                match self.blob(0, total) {
                    Ok((body, count)) => {
                        self.results_call("The job log", || {
                            let body = body.clone();
                            async move {
                                let url = results.job_logs_url().await?;
                                results.put_blob(&url.url, body).await?;
                                results.job_logs_metadata(count).await
                            }
                        })
                        .await;
                    }
                    Err(e) => {
                        tracing::warn!(job = %self.job_id(), error = %e, "the job log cannot be read from the spool; not uploaded")
                    }
                }
                self.lock().state.job_log_done = true;
            }
        }
        let (body, url, token) = self.complete_body();
        let tries = self.options.complete_tries.max(1);
        let mut last = None;
        for n in 1..=tries {
            match complete_job(&self.http, &url, &token, &body).await {
                Ok(()) => {
                    let mut inner = self.lock();
                    inner.state.completed = true;
                    let end = inner.state.spooled;
                    drop(inner);
                    if let Err(e) = self.spool.ack(end) {
                        tracing::warn!(error = %e, "log spool ack failed");
                    }
                    return Ok(());
                }
                Err(e) if complete_is_final(&e) => return Err(self.give_up(e, cancel_job)),
                Err(e) => {
                    tracing::warn!(job = %body.job_id, try_ = n, error = %e, "completejob failed");
                    last = Some(e);
                    if n < tries {
                        tokio::time::sleep(self.options.complete_pause).await;
                    }
                }
            }
        }
        let source = last.unwrap_or_else(|| GithubError::Invalid("no try made".into()));
        Err(Failure::new(
            FailureKind::Transient,
            ReportError::CompleteFailed {
                job_id: body.job_id.clone(),
                tries,
                source,
            },
        ))
    }

    /// The body of `completejob`, its URL and the job token.
    fn complete_body(&self) -> (CompleteJob, String, crate::secret::Secret) {
        let inner = self.lock();
        let s = &inner.state;
        let e = &s.envelope;
        let conclusion: Conclusion = if s.remote_cancelled {
            Conclusion::Cancelled
        } else {
            s.closed
                .as_ref()
                .map_or(Conclusion::Failure, |c| c.conclusion.into())
        };
        let outputs = match (&s.closed, conclusion) {
            (Some(c), Conclusion::Success) => c
                .outputs
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| {
                    (
                        k.clone(),
                        OutputValue {
                            value: v.clone(),
                            is_secret: false,
                        },
                    )
                })
                .collect(),
            _ => IndexMap::new(),
        };
        let step_results = e
            .steps
            .iter()
            .zip(&s.steps)
            .enumerate()
            .map(|(i, (r, t))| StepResult {
                external_id: r.external_id.clone(),
                number: i as i64 + 1,
                name: t.name.clone(),
                action_name: r.action.clone(),
                r#ref: None,
                r#type: None,
                status: "completed".into(),
                conclusion: Some(
                    conclusion_word(t.conclusion.map_or(Conclusion::Skipped, Into::into)).into(),
                ),
                started_at: t.started_at.clone(),
                completed_at: t.completed_at.clone(),
                completed_log_url: None,
                completed_log_lines: (t.lines > 0).then_some(t.lines as i64),
            })
            .collect();
        let body = CompleteJob {
            plan_id: e.plan_id.clone(),
            job_id: e.job_id.clone(),
            conclusion: conclusion_word(conclusion).into(),
            outputs,
            step_results,
            annotations: s.annotations.clone(),
            billing_owner_id: e.billing_owner_id.clone(),
        };
        (body, e.run_service_url.clone(), e.job_token.clone())
    }
}

impl EventSink for GithubReport {
    fn emit(&self, event: JobEvent) {
        let mut inner = self.lock();
        if inner.state.closed.is_some() || inner.state.gone {
            return;
        }
        self.handle(&mut inner, event);
    }
}

#[async_trait::async_trait]
impl TaskReport for GithubReport {
    async fn run(&self, cancel_job: CancellationToken) -> Result<(), Failure> {
        let resumed = self.lock().resumed;
        if resumed {
            // Nothing runs: wait for the daemon's close, then finish.
            loop {
                if self.lock().state.closed.is_some() {
                    break;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.options.tick) => {}
                }
            }
            return self.final_sequence(&cancel_job).await;
        }
        let work = async {
            self.running(&cancel_job).await;
            self.final_sequence(&cancel_job).await
        };
        tokio::select! {
            r = work => r,
            e = self.keep_lock() => Err(self.give_up(e, &cancel_job)),
        }
    }

    async fn finish(&self, cancel_job: &CancellationToken) -> Result<(), Failure> {
        self.final_sequence(cancel_job).await
    }

    fn close(
        &self,
        conclusion: Conclusion,
        outputs: &IndexMap<String, String>,
        error: Option<&str>,
    ) {
        let mut inner = self.lock();
        if inner.state.closed.is_some() || inner.state.gone {
            return;
        }
        if let Some(e) = error {
            let step = inner.current;
            let text = format!("##[error]{e}");
            self.output(&mut inner, None, &text);
            self.annotate(&mut inner, "FAILURE", e, step);
        }
        let lost = error == Some(RESTARTED);
        self.end_steps(&mut inner, lost);
        self.flush(&mut inner);
        let conclusion = if inner.state.remote_cancelled {
            Conclusion::Cancelled
        } else {
            conclusion
        };
        let outputs = if conclusion == Conclusion::Success {
            outputs
                .iter()
                .filter(|(k, v)| {
                    let masked = !v.is_empty() && self.mask(v) != **v;
                    if masked {
                        tracing::warn!(output = %k, "job output dropped: it holds masked text");
                    }
                    !v.is_empty() && !masked
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            IndexMap::new()
        };
        inner.state.closed = Some(Closed {
            conclusion: conclusion.into(),
            outputs,
        });
        drop(inner);
        self.wake.notify_one();
    }

    fn is_gone(&self) -> bool {
        self.lock().state.gone
    }

    fn result(&self) -> Option<Conclusion> {
        let inner = self.lock();
        let closed = inner.state.closed.as_ref()?;
        Some(if inner.state.remote_cancelled {
            Conclusion::Cancelled
        } else {
            closed.conclusion.into()
        })
    }

    fn save(&self) -> Vec<u8> {
        serde_json::to_vec(&self.lock().state).unwrap_or_default()
    }
}

/// The report of a resumed task whose saved state cannot be read: without
/// the job token nothing can be sent.
struct LostReport {
    task_id: i64,
}

impl EventSink for LostReport {
    fn emit(&self, _event: JobEvent) {}
}

#[async_trait::async_trait]
impl TaskReport for LostReport {
    async fn run(&self, cancel_job: CancellationToken) -> Result<(), Failure> {
        self.finish(&cancel_job).await
    }

    async fn finish(&self, _cancel_job: &CancellationToken) -> Result<(), Failure> {
        Err(Failure::new(
            FailureKind::TaskGone,
            ReportError::Unreadable {
                task_id: self.task_id,
            },
        ))
    }

    fn close(&self, _: Conclusion, _: &IndexMap<String, String>, _: Option<&str>) {}

    fn is_gone(&self) -> bool {
        true
    }

    fn result(&self) -> Option<Conclusion> {
        None
    }

    fn save(&self) -> Vec<u8> {
        Vec::new()
    }
}

/// The `mask` patterns Rust's regex understands; the others are skipped
/// with a warning that does not show them.
fn compile_masks(patterns: &[String]) -> Vec<regex::Regex> {
    patterns
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty())
        .filter_map(|(i, p)| match regex::Regex::new(p) {
            Ok(re) => Some(re),
            Err(_) => {
                tracing::warn!(
                    pattern = i + 1,
                    "a mask pattern of the job cannot be compiled and is not applied"
                );
                None
            }
        })
        .collect()
}

/// A random duration in `min..=max`.
fn random_between(min: Duration, max: Duration) -> Duration {
    if max <= min {
        return min;
    }
    let span = (max - min).as_millis() as u64;
    min + Duration::from_millis(rand::rng().random_range(0..=span))
}

/// An RFC 3339 time (`2026-12-05T14:30:00.1234567Z`, or with an offset).
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u8 = d.next()?.parse().ok()?;
    let day: u8 = d.next()?.parse().ok()?;
    let (clock, offset) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else if let Some(pos) = rest.rfind(['+', '-']) {
        let (c, off) = rest.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (h, m) = off[1..].split_once(':').unwrap_or((&off[1..], "0"));
        let h: i64 = h.parse().ok()?;
        let m: i64 = m.parse().ok()?;
        (c, sign * (h * 3600 + m * 60))
    } else {
        (rest, 0)
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.split(':');
    let hour: u8 = t.next()?.parse().ok()?;
    let min: u8 = t.next()?.parse().ok()?;
    let sec: u8 = t.next()?.parse().ok()?;
    let civil = Civil {
        year,
        month,
        day,
        hour,
        min,
        sec,
    };
    let secs = civil.to_unix() - offset;
    let mut nanos = 0u32;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        let n: u32 = digits.parse().ok()?;
        nanos = n * 10u32.pow(9 - digits.len() as u32);
    }
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

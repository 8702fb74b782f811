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
//! Step lines also go to the live feed (`FeedStreamUrl` WebSocket, bearer
//! job token) every half second, best effort.
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
/// Most step lines waiting for the live feed; beyond, new ones skip it
/// (the step logs still have them).
const FEED_BACKLOG: usize = 10_000;
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
    /// How often new step lines go to the live feed (500 ms).
    pub feed_interval: Duration,
    /// After this many failed feed connections in a row, the feed pauses
    /// (3).
    pub feed_tries: u32,
    /// ...for this long (10 min).
    pub feed_pause: Duration,
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
            feed_interval: Duration::from_millis(500),
            feed_tries: 3,
            feed_pause: Duration::from_secs(10 * 60),
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
    /// Step lines for the live feed: step, 1-based line in the step, text.
    feed: Vec<(usize, u64, String)>,
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
    /// Held around each `renewjob`; `true` once `completejob` is due (no
    /// renewal may follow it).
    renew_gate: tokio::sync::Mutex<bool>,
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
        let mut state = state;
        for t in &mut state.steps {
            t.name = mask_with(&masks, &t.name);
        }
        GithubReport {
            inner: Mutex::new(Inner {
                state,
                pending: Vec::new(),
                current: None,
                finished,
                resumed,
                spool_warned: false,
                feed: Vec::new(),
            }),
            spool,
            http,
            results,
            masks,
            remote_cancel,
            options,
            wake: tokio::sync::Notify::new(),
            finishing: tokio::sync::Mutex::new(()),
            renew_gate: tokio::sync::Mutex::new(false),
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
        mask_with(&self.masks, text)
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
            if let Some((i, t)) = step.and_then(|i| inner.state.steps.get_mut(i).map(|t| (i, t))) {
                if t.first_line.is_none() {
                    t.first_line = Some(index);
                }
                t.lines += 1;
                let number = t.lines;
                if inner.state.envelope.feed_url.is_some() && inner.feed.len() < FEED_BACKLOG {
                    inner.feed.push((i, number, line.to_string()));
                }
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
            // GitHub shows `::debug::` lines only with ACTIONS_STEP_DEBUG.
            JobEvent::Line {
                kind: LineKind::Debug,
                ..
            } if !inner.state.envelope.step_debug => {}
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
                    let again = n < tries && e.is_retryable();
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

    /// The size in bytes and lines of the blob of job-log lines
    /// `from..from + count` (as many as the spool holds), read in chunks.
    fn blob_size(&self, from: u64, count: u64) -> Result<(u64, u64), String> {
        let mut bytes = 0u64;
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
                bytes += blob_line(r).len() as u64;
            }
            at += rows.len() as u64;
        }
        Ok((bytes, at - from))
    }

    /// The blob of job-log lines `from..from + count` as a stream read from
    /// the spool chunk by chunk.
    fn blob_body(&self, from: u64, count: u64) -> reqwest::Body {
        let spool = self.spool.clone();
        let end = from + count;
        let chunks = futures_util::stream::unfold(from, move |at| {
            let spool = spool.clone();
            async move {
                if at >= end {
                    return None;
                }
                match spool.read(at, READ_ROWS.min((end - at) as usize), READ_BYTES) {
                    Ok(rows) if rows.is_empty() => None,
                    Ok(rows) => {
                        let mut chunk = Vec::new();
                        for r in &rows {
                            chunk.extend_from_slice(blob_line(r).as_bytes());
                        }
                        Some((
                            Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)),
                            at + rows.len() as u64,
                        ))
                    }
                    Err(e) => Some((Err(std::io::Error::other(e.to_string())), end)),
                }
            }
        });
        reqwest::Body::wrap_stream(chunks)
    }

    /// Uploads job-log lines `from..from + count` to a signed URL from
    /// `signed`, then calls `metadata` with the line count; the whole unit
    /// is retried. `false` when it did not get through.
    async fn upload_lines<U, UF, M, MF>(
        &self,
        what: &str,
        from: u64,
        count: u64,
        signed: U,
        metadata: M,
    ) -> bool
    where
        U: Fn() -> UF,
        UF: std::future::Future<Output = Result<super::results::SignedUrl, GithubError>>,
        M: Fn(u64) -> MF,
        MF: std::future::Future<Output = Result<(), GithubError>>,
    {
        let Some(results) = &self.results else {
            return false;
        };
        let (len, lines) = match self.blob_size(from, count) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(job = %self.job_id(), error = %e, "{what} cannot be read from the spool; not uploaded");
                return false;
            }
        };
        self.results_call(what, || {
            let body = self.blob_body(from, lines);
            let signed = signed();
            let metadata = &metadata;
            async move {
                let url = signed.await?;
                results.put_blob_body(&url.url, len, body).await?;
                metadata(lines).await
            }
        })
        .await
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
            if let Some(first) = first
                && lines > 0
            {
                self.upload_lines(
                    "A step log",
                    first,
                    lines,
                    || results.step_logs_url(&step_id),
                    |count| results.step_logs_metadata(&step_id, count),
                )
                .await;
            }
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
                let gate = self.renew_gate.lock().await;
                if *gate {
                    drop(gate);
                    return std::future::pending::<GithubError>().await;
                }
                let renewed = renew_job(&self.http, &url, &token, &plan, &job).await;
                drop(gate);
                match renewed {
                    Ok(until) => {
                        let until = parse_time(&until)
                            .unwrap_or_else(|| SystemTime::now() + o.assumed_lock);
                        deadline = until + o.lock_grace;
                        break;
                    }
                    // 404: the job is gone; 401: the job token (which
                    // cannot be refreshed) is over, so is the job for GitHub.
                    Err(e) if matches!(e.status(), Some(401 | 404)) => return e,
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

    /// Sends new step lines to the live feed (`feed_url`, a WebSocket with
    /// the job token) while the job runs; best effort: lines that cannot
    /// go are dropped (the step logs have them), and after `feed_tries`
    /// failed connections the feed pauses for `feed_pause`. Never returns.
    async fn feed_loop(&self) {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;

        let (url, token) = {
            let inner = self.lock();
            let e = &inner.state.envelope;
            (e.feed_url.clone(), e.job_token.clone())
        };
        let Some(url) = url else {
            return std::future::pending().await;
        };
        let o = &self.options;
        let mut socket = None;
        let mut failures = 0u32;
        let mut paused_until: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(o.feed_interval).await;
            let (batch, ids) = {
                let mut inner = self.lock();
                let ids: Vec<String> = inner
                    .state
                    .envelope
                    .steps
                    .iter()
                    .map(|s| s.external_id.clone())
                    .collect();
                (std::mem::take(&mut inner.feed), ids)
            };
            if batch.is_empty() {
                continue;
            }
            if paused_until.is_some_and(|t| tokio::time::Instant::now() < t) {
                continue;
            }
            if socket.is_none() {
                let request = url
                    .as_str()
                    .into_client_request()
                    .map_err(|e| e.to_string())
                    .and_then(|mut r| {
                        let value = format!("Bearer {}", token.expose())
                            .parse()
                            .map_err(|_| "the job token is not a header value".to_string())?;
                        r.headers_mut().insert("authorization", value);
                        Ok(r)
                    });
                let connected = match request {
                    Ok(r) => tokio::time::timeout(
                        super::error::CALL_TIMEOUT,
                        tokio_tungstenite::connect_async(r),
                    )
                    .await
                    .map_err(|_| "timed out".to_string())
                    .and_then(|r| r.map_err(|e| e.to_string())),
                    Err(e) => Err(e),
                };
                match connected {
                    Ok((s, _)) => {
                        socket = Some(s);
                        failures = 0;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::debug!(error = %e, "the live log feed cannot connect");
                        if failures >= o.feed_tries.max(1) {
                            tracing::warn!(job = %self.job_id(), "the live log feed is unreachable; pausing it (the step logs are not affected)");
                            paused_until = Some(tokio::time::Instant::now() + o.feed_pause);
                            failures = 0;
                        }
                        continue;
                    }
                }
            }
            let Some(s) = socket.as_mut() else { continue };
            for frame in feed_frames(&batch, &ids) {
                if let Err(e) = s.send(Message::text(frame.to_string())).await {
                    tracing::debug!(error = %e, "the live log feed failed; reconnecting");
                    socket = None;
                    failures += 1;
                    break;
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
    async fn running(&self) {
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
            }
        }
    }

    /// Cancels the job when GitHub cancels it (before it was closed: the
    /// result becomes cancelled). Never returns.
    async fn watch_cancel(&self, cancel_job: &CancellationToken) {
        self.remote_cancel.cancelled().await;
        let apply = {
            let mut inner = self.lock();
            let apply = inner.state.closed.is_none() && !inner.state.gone;
            if apply {
                inner.state.remote_cancelled = true;
            }
            apply
        };
        if apply {
            tracing::info!(job = %self.job_id(), "GitHub cancelled the job");
            cancel_job.cancel();
        }
        std::future::pending::<()>().await;
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
                self.upload_lines(
                    "The job log",
                    0,
                    total,
                    || results.job_logs_url(),
                    |count| results.job_logs_metadata(count),
                )
                .await;
                self.lock().state.job_log_done = true;
            }
        }
        *self.renew_gate.lock().await = true;
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
            self.running().await;
            self.final_sequence(&cancel_job).await
        };
        tokio::select! {
            r = work => r,
            e = self.keep_lock() => Err(self.give_up(e, &cancel_job)),
            () = self.watch_cancel(&cancel_job) => Ok(()),
            () = self.feed_loop() => Ok(()),
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

/// A spooled line as blob text: the time prefix GitHub's log files have,
/// the line, a newline.
fn blob_line(r: &LogLine) -> String {
    format!("{} {}\n", time_log_prefix(r.time), r.content)
}

/// `text` with every match of `masks` replaced.
fn mask_with(masks: &[regex::Regex], text: &str) -> String {
    let mut out = text.to_string();
    for re in masks {
        if re.is_match(&out) {
            out = re.replace_all(&out, MASK).into_owned();
        }
    }
    out
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

/// Feed frames for `lines` (step, 1-based line in the step, text): one
/// frame per run of consecutive lines of one step.
fn feed_frames(lines: &[(usize, u64, String)], ids: &[String]) -> Vec<serde_json::Value> {
    let mut frames = Vec::new();
    let mut run: Vec<&str> = Vec::new();
    let mut start: Option<(usize, u64)> = None;
    let mut flush = |start: Option<(usize, u64)>, run: &mut Vec<&str>| {
        if let Some((step, first)) = start
            && let Some(id) = ids.get(step)
            && !run.is_empty()
        {
            frames.push(serde_json::json!({
                "count": run.len(),
                "value": run,
                "stepId": id,
                "startLine": first,
            }));
        }
        run.clear();
    };
    for (step, number, text) in lines {
        let continues =
            start.is_some_and(|(s, first)| s == *step && first + run.len() as u64 == *number);
        if !continues {
            flush(start, &mut run);
            start = Some((*step, *number));
        }
        run.push(text);
    }
    flush(start, &mut run);
    frames
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
    // Years a server could mean; others would overflow the arithmetic.
    let year: i64 = d.next()?.parse().ok().filter(|y| (1..=9999).contains(y))?;
    let month: u8 = d.next()?.parse().ok()?;
    let day: u8 = d.next()?.parse().ok()?;
    let (clock, offset) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else if let Some(pos) = rest.rfind(['+', '-']) {
        let (c, off) = rest.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (h, m) = off[1..].split_once(':').unwrap_or((&off[1..], "0"));
        let h: i64 = h.parse().ok().filter(|h| (0..=24).contains(h))?;
        let m: i64 = m.parse().ok().filter(|m| (0..60).contains(m))?;
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
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU16, Ordering};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State as AxState;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use serde_json::{Value, json};

    use super::*;
    use crate::forge::MemorySpool;
    use crate::forge::github::job::StepRef;
    use crate::secret::Secret;

    const TOKEN: &str = "job-token-1";

    /// A strict little GitHub: run service under `/run/`, results under
    /// `/results/`, signed blobs under `/blob/`.
    #[derive(Default)]
    struct Fake {
        addr: Mutex<String>,
        /// (path, body) of every call; blob PUTs as `{"blob": text}`.
        calls: Mutex<Vec<(String, Value)>>,
        blobs: Mutex<HashMap<String, String>>,
        renew_status: AtomicU16,
        /// Statuses `completejob` answers first, in order.
        complete_fail: Mutex<Vec<u16>>,
        /// A strictness error the fake saw.
        errors: Mutex<Vec<String>>,
        /// Live feed frames received.
        frames: Mutex<Vec<Value>>,
    }

    impl Fake {
        fn calls(&self) -> Vec<(String, Value)> {
            self.calls.lock().unwrap().clone()
        }
        fn names(&self) -> Vec<String> {
            self.calls()
                .into_iter()
                .map(|(p, _)| p.rsplit('/').next().unwrap().to_string())
                .filter(|n| n != "renewjob")
                .map(|n| {
                    if n.starts_with("step-") || n == "job" || n.starts_with("summary-") {
                        "PUT".into()
                    } else {
                        n
                    }
                })
                .collect()
        }
        fn bodies(&self, name: &str) -> Vec<Value> {
            self.calls()
                .into_iter()
                .filter(|(p, _)| p.ends_with(name))
                .map(|(_, b)| b)
                .collect()
        }
        fn error(&self, e: String) {
            self.errors.lock().unwrap().push(e);
        }
    }

    async fn handle(
        AxState(fake): AxState<Arc<Fake>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let path = uri.path().to_string();
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if let Some(name) = path.strip_prefix("/blob/") {
            if method != Method::PUT
                || headers.get("x-ms-blob-type").and_then(|v| v.to_str().ok()) != Some("BlockBlob")
                || !auth.is_empty()
                || uri.query() != Some("sig=x")
            {
                fake.error(format!("bad blob request {method} {path}"));
                return StatusCode::BAD_REQUEST.into_response();
            }
            let text = String::from_utf8_lossy(&body).to_string();
            fake.calls
                .lock()
                .unwrap()
                .push((path.clone(), json!({ "blob": text.clone() })));
            fake.blobs.lock().unwrap().insert(name.to_string(), text);
            return StatusCode::CREATED.into_response();
        }
        if auth != format!("Bearer {TOKEN}") || method != Method::POST {
            fake.error(format!("bad auth or method on {path}"));
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            fake.error(format!("bad JSON on {path}"));
            return StatusCode::BAD_REQUEST.into_response();
        };
        fake.calls.lock().unwrap().push((path.clone(), v.clone()));
        let addr = fake.addr.lock().unwrap().clone();
        if path.starts_with("/results/")
            && (v["workflow_run_backend_id"] != "plan-1"
                || v["workflow_job_run_backend_id"] != "job-1")
        {
            fake.error(format!("bad ids on {path}: {v}"));
            return StatusCode::BAD_REQUEST.into_response();
        }
        let step = v["step_backend_id"].as_str().unwrap_or("").to_string();
        let ok = || Json(json!({ "ok": true }));
        match path.rsplit('/').next().unwrap() {
            "renewjob" => {
                let s = fake.renew_status.load(Ordering::SeqCst);
                if s != 0 && s != 200 {
                    return (
                        StatusCode::from_u16(s).unwrap(),
                        Json(json!({"errorMessage": "x"})),
                    )
                        .into_response();
                }
                Json(json!({ "lockedUntil": "2099-01-01T00:00:00.1234567Z" })).into_response()
            }
            "completejob" => {
                let mut f = fake.complete_fail.lock().unwrap();
                if !f.is_empty() {
                    let s = f.remove(0);
                    return (
                        StatusCode::from_u16(s).unwrap(),
                        Json(json!({"errorMessage": "nope"})),
                    )
                        .into_response();
                }
                StatusCode::OK.into_response()
            }
            "WorkflowStepsUpdate" => ok(),
            "GetStepLogsSignedBlobURL" => Json(json!({
                "logs_url": format!("{addr}/blob/step-{step}?sig=x"),
                "blob_storage_type": "BLOB_STORAGE_TYPE_AZURE",
                "soft_size_limit": "1048576"
            }))
            .into_response(),
            "GetJobLogsSignedBlobURL" => Json(json!({
                "logs_url": format!("{addr}/blob/job?sig=x"),
                "blob_storage_type": "BLOB_STORAGE_TYPE_AZURE"
            }))
            .into_response(),
            "GetStepSummarySignedBlobURL" => Json(json!({
                "summary_url": format!("{addr}/blob/summary-{step}?sig=x"),
                "blob_storage_type": "BLOB_STORAGE_TYPE_AZURE",
                "soft_size_limit": "100"
            }))
            .into_response(),
            "CreateStepLogsMetadata" | "CreateJobLogsMetadata" | "CreateStepSummaryMetadata" => {
                ok()
            }
            _ => {
                fake.error(format!("unknown path {path}"));
                StatusCode::NOT_FOUND.into_response()
            }
        }
    }

    #[allow(non_snake_case)]
    fn Json(v: Value) -> Response {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response()
    }

    async fn feed(
        AxState(fake): AxState<Arc<Fake>>,
        headers: HeaderMap,
        ws: axum::extract::ws::WebSocketUpgrade,
    ) -> Response {
        if headers.get("authorization").and_then(|v| v.to_str().ok())
            != Some(&format!("Bearer {TOKEN}"))
        {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        ws.on_upgrade(move |mut socket| async move {
            while let Some(Ok(m)) = socket.recv().await {
                if let axum::extract::ws::Message::Text(t) = m {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    fake.frames.lock().unwrap().push(v);
                }
            }
        })
    }

    async fn serve() -> Arc<Fake> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Arc::new(Fake::default());
        *fake.addr.lock().unwrap() = format!("http://{addr}");
        let router = Router::new()
            .route("/feed", axum::routing::get(feed))
            .fallback(handle)
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        fake
    }

    fn envelope(fake: &Fake, masks: &[&str]) -> JobEnvelope {
        let addr = fake.addr.lock().unwrap().clone();
        let step = |id: &str, name: &str| StepRef {
            external_id: id.into(),
            name: name.into(),
            context_name: "__run".into(),
            action: None,
        };
        JobEnvelope {
            plan_id: "plan-1".into(),
            job_id: "job-1".into(),
            display_name: "build".into(),
            repository: "o/r".into(),
            run_service_url: format!("{addr}/run/"),
            results_url: Some(format!("{addr}/results/")),
            feed_url: None,
            job_token: Secret::new(TOKEN),
            billing_owner_id: Some("B1".into()),
            steps: vec![step("s-1", "First"), step("s-2", "Second secret")],
            mask_patterns: masks.iter().map(|m| m.to_string()).collect(),
            step_debug: false,
        }
    }

    fn options() -> ReportOptions {
        ReportOptions {
            renew_period: Duration::from_millis(50),
            renew_retry_min: Duration::from_millis(10),
            renew_retry_max: Duration::from_millis(20),
            lock_grace: Duration::from_millis(100),
            assumed_lock: Duration::from_millis(100),
            complete_tries: 5,
            complete_pause: Duration::from_millis(10),
            results_tries: 2,
            results_pause: Duration::from_millis(10),
            tick: Duration::from_millis(20),
            feed_interval: Duration::from_millis(20),
            feed_tries: 2,
            feed_pause: Duration::from_secs(60),
        }
    }

    fn line(step: Option<usize>, kind: LineKind, text: &str) -> JobEvent {
        JobEvent::Line {
            step,
            kind,
            text: text.into(),
        }
    }

    fn finished(index: usize, c: Conclusion) -> JobEvent {
        JobEvent::StepFinished {
            index,
            outcome: c,
            conclusion: c,
            duration: Duration::from_secs(1),
        }
    }

    /// Waits until `cond` holds (the report runs in the background).
    async fn until(cond: impl Fn() -> bool) {
        for _ in 0..300 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached");
    }

    fn strip_times(blob: &str) -> Vec<String> {
        blob.lines()
            .map(|l| {
                let (t, rest) = l.split_once(' ').unwrap();
                assert!(t.ends_with('Z') && t.len() == 28, "time prefix {t}");
                rest.to_string()
            })
            .collect()
    }

    fn orders(fake: &Fake) -> Vec<u64> {
        fake.bodies("WorkflowStepsUpdate")
            .iter()
            .map(|b| b["change_order"].as_u64().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_job_is_reported_in_order_with_exact_line_counts_and_masks() {
        let fake = serve().await;
        let spool = Arc::new(MemorySpool::new());
        // The second pattern (look-behind) is not Rust regex: skipped.
        let env = envelope(&fake, &["s[e3]cr[e3]t", "(?<=a)b"]);
        let report = start(
            env,
            reqwest::Client::new(),
            spool.clone(),
            CancellationToken::new(),
            options(),
        );
        let cancel = CancellationToken::new();
        let runner = {
            let r = report.clone();
            let c = cancel.clone();
            tokio::spawn(async move { r.run(c).await })
        };
        report.emit(JobEvent::Phase {
            phase: Phase::Boot,
            detail: "vm".into(),
        });
        report.emit(line(None, LineKind::Runner, "setup line"));
        report.emit(JobEvent::StepStarted {
            index: 0,
            name: "First s3cret".into(),
        });
        report.emit(line(Some(0), LineKind::Stdout, "hello secret\r\nworld"));
        report.emit(line(None, LineKind::Runner, "job-level during step 0"));
        report.emit(line(Some(1), LineKind::Stdout, "wrong step: dropped"));
        until(|| fake.names().iter().any(|n| n == "WorkflowStepsUpdate")).await;
        report.emit(finished(0, Conclusion::Success));
        report.emit(JobEvent::StepStarted {
            index: 1,
            name: "Second".into(),
        });
        report.emit(line(
            Some(1),
            LineKind::Annotation("error".into()),
            "it broke",
        ));
        report.emit(line(Some(1), LineKind::GroupStart, "g"));
        report.emit(line(Some(1), LineKind::GroupEnd, ""));
        report.emit(JobEvent::StepSummary {
            index: 1,
            markdown: "# sum".into(),
        });
        report.emit(finished(1, Conclusion::Failure));
        report.emit(JobEvent::JobFinished {
            conclusion: Conclusion::Failure,
            duration: Duration::from_secs(2),
        });
        report.emit(JobEvent::Phase {
            phase: Phase::Teardown,
            detail: "bye".into(),
        });
        let mut outputs = IndexMap::new();
        outputs.insert("o".to_string(), "v".to_string());
        report.close(Conclusion::Failure, &outputs, None);
        runner.await.unwrap().unwrap();
        assert!(
            fake.errors.lock().unwrap().is_empty(),
            "{:?}",
            fake.errors.lock().unwrap()
        );
        assert!(!cancel.is_cancelled());
        assert_eq!(report.result(), Some(Conclusion::Failure));

        // Order: all pending, then per step in progress → log → completed;
        // the job log; completejob last.
        let names = fake.names();
        let first_log = names
            .iter()
            .position(|n| n == "GetStepLogsSignedBlobURL")
            .unwrap();
        assert_eq!(names[0], "WorkflowStepsUpdate");
        assert!(
            names[..first_log]
                .iter()
                .all(|n| n == "WorkflowStepsUpdate")
        );
        assert_eq!(names.last().unwrap(), "completejob");
        // No renewal after completejob (renewals ran meanwhile).
        let raw = fake.calls();
        assert!(raw.last().unwrap().0.ends_with("completejob"));
        let job_log = names
            .iter()
            .position(|n| n == "GetJobLogsSignedBlobURL")
            .unwrap();
        assert_eq!(
            &names[job_log..],
            [
                "GetJobLogsSignedBlobURL",
                "PUT",
                "CreateJobLogsMetadata",
                "completejob"
            ]
        );
        let updates = fake.bodies("WorkflowStepsUpdate");
        let first: Vec<i64> = updates[0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["status"].as_i64().unwrap())
            .collect();
        assert_eq!(first, [5, 5]);
        // Step names are masked from the first update on.
        assert_eq!(updates[0]["steps"][1]["name"], "Second ***");
        let o = orders(&fake);
        assert!(o.windows(2).all(|w| w[0] < w[1]), "{o:?}");
        // Each step: in progress (3) before completed (6), completed once.
        let statuses: Vec<(String, i64, i64)> = updates[1..]
            .iter()
            .flat_map(|u| u["steps"].as_array().unwrap().clone())
            .map(|s| {
                (
                    s["external_id"].as_str().unwrap().to_string(),
                    s["status"].as_i64().unwrap(),
                    s["conclusion"].as_i64().unwrap(),
                )
            })
            .collect();
        for id in ["s-1", "s-2"] {
            let mine: Vec<(i64, i64)> = statuses
                .iter()
                .filter(|(s, _, _)| s == id)
                .map(|(_, st, c)| (*st, *c))
                .collect();
            let end = if id == "s-1" { 2 } else { 3 };
            assert_eq!(mine, [(3, 0), (6, end)], "{id}");
        }
        // Step 1's log comes before its completed status.
        let s2_log = fake
            .calls()
            .iter()
            .position(|(p, b)| {
                p.ends_with("CreateStepLogsMetadata") && b["step_backend_id"] == "s-2"
            })
            .unwrap();
        let s2_done = fake
            .calls()
            .iter()
            .position(|(p, b)| {
                p.ends_with("WorkflowStepsUpdate")
                    && b["steps"][0]["external_id"] == "s-2"
                    && b["steps"][0]["status"] == 6
            })
            .unwrap();
        assert!(s2_log < s2_done);

        let blobs = fake.blobs.lock().unwrap().clone();
        let step1 = strip_times(&blobs["step-s-1"]);
        assert_eq!(step1, ["hello ***", "world", "job-level during step 0"]);
        let step2 = strip_times(&blobs["step-s-2"]);
        assert_eq!(step2, ["##[error]it broke", "##[group]g", "##[endgroup]"]);
        assert_eq!(blobs["summary-s-2"], "# sum");
        let meta: HashMap<String, u64> = fake
            .bodies("CreateStepLogsMetadata")
            .iter()
            .map(|b| {
                (
                    b["step_backend_id"].as_str().unwrap().to_string(),
                    b["line_count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(meta["s-1"], 3);
        assert_eq!(meta["s-2"], 3);
        let job = strip_times(&blobs["job"]);
        assert_eq!(
            job[0],
            "Job build received by ".to_string() + RUNNER_VERSION
        );
        assert_eq!(job[1..3], ["Booting: vm", "setup line"]);
        assert_eq!(job.last().unwrap(), "Tearing down: bye");
        assert_eq!(job.len(), 3 + 3 + 3 + 1);
        assert_eq!(
            fake.bodies("CreateJobLogsMetadata")[0]["line_count"],
            job.len() as u64
        );
        assert!(
            !blobs
                .values()
                .any(|b| b.contains("secret") || b.contains("s3cret"))
        );

        let done = &fake.bodies("completejob")[0];
        assert_eq!(done["planId"], "plan-1");
        assert_eq!(done["jobId"], "job-1");
        assert_eq!(done["conclusion"], "failed");
        assert_eq!(done["billingOwnerId"], "B1");
        assert!(
            done.get("outputs").is_none(),
            "outputs only on success: {done}"
        );
        let sr = done["stepResults"].as_array().unwrap();
        assert_eq!(sr[0]["name"], "First ***");
        assert_eq!(sr[0]["conclusion"], "succeeded");
        assert_eq!(sr[0]["completed_log_lines"], 3);
        assert_eq!(sr[1]["conclusion"], "failed");
        assert_eq!(sr[1]["number"], 2);
        assert!(sr[1]["started_at"].as_str().unwrap().ends_with('Z'));
        let ann = &done["annotations"][0];
        assert_eq!(ann["level"], "FAILURE");
        assert_eq!(ann["message"], "it broke");
        assert_eq!(ann["stepNumber"], 2);
        assert_eq!(
            spool.held(),
            0,
            "the spool is released once GitHub has the job"
        );
        // A later finish sends nothing more.
        let n = fake.calls().len();
        report.finish(&cancel).await.unwrap();
        assert_eq!(fake.calls().len(), n);
    }

    #[tokio::test]
    async fn a_log_larger_than_one_spool_read_goes_whole_and_counted() {
        let fake = serve().await;
        let spool = Arc::new(MemorySpool::new());
        let report = start(
            envelope(&fake, &[]),
            reqwest::Client::new(),
            spool,
            CancellationToken::new(),
            options(),
        );
        report.emit(JobEvent::StepStarted {
            index: 0,
            name: "big".into(),
        });
        let n = READ_ROWS * 2 + 7;
        for i in 0..n {
            report.emit(line(Some(0), LineKind::Stdout, &format!("line {i}")));
        }
        report.emit(finished(0, Conclusion::Success));
        report.close(Conclusion::Success, &IndexMap::new(), None);
        report.run(CancellationToken::new()).await.unwrap();
        let blob = strip_times(&fake.blobs.lock().unwrap()["step-s-1"]);
        assert_eq!(blob.len(), n);
        assert_eq!(blob[n - 1], format!("line {}", n - 1));
        let meta = fake.bodies("CreateStepLogsMetadata");
        assert_eq!(meta[0]["line_count"], n as u64);
        let job = fake.bodies("CreateJobLogsMetadata");
        assert_eq!(job[0]["line_count"], n as u64 + 1);
    }

    #[tokio::test]
    async fn outputs_go_on_success_without_empty_or_masked_values() {
        let fake = serve().await;
        let env = envelope(&fake, &["hidden"]);
        let report = start(
            env,
            reqwest::Client::new(),
            Arc::new(MemorySpool::new()),
            CancellationToken::new(),
            options(),
        );
        let mut outputs = IndexMap::new();
        outputs.insert("a".to_string(), "1".to_string());
        outputs.insert("empty".to_string(), String::new());
        outputs.insert("m".to_string(), "is hidden".to_string());
        report.emit(JobEvent::StepStarted {
            index: 0,
            name: "x".into(),
        });
        report.emit(finished(0, Conclusion::Success));
        report.close(Conclusion::Success, &outputs, None);
        report.run(CancellationToken::new()).await.unwrap();
        let done = &fake.bodies("completejob")[0];
        assert_eq!(done["conclusion"], "succeeded");
        assert_eq!(
            done["outputs"],
            json!({ "a": { "value": "1", "isSecret": false } })
        );
        // The step never started is skipped.
        assert_eq!(done["stepResults"][1]["conclusion"], "skipped");
    }

    #[tokio::test]
    async fn github_cancelling_the_job_cancels_it_and_completes_canceled() {
        let fake = serve().await;
        let remote = CancellationToken::new();
        let report = start(
            envelope(&fake, &[]),
            reqwest::Client::new(),
            Arc::new(MemorySpool::new()),
            remote.clone(),
            options(),
        );
        let cancel = CancellationToken::new();
        let runner = {
            let r = report.clone();
            let c = cancel.clone();
            tokio::spawn(async move { r.run(c).await })
        };
        report.emit(JobEvent::StepStarted {
            index: 0,
            name: "long".into(),
        });
        remote.cancel();
        tokio::time::timeout(Duration::from_secs(5), cancel.cancelled())
            .await
            .unwrap();
        report.emit(line(Some(0), LineKind::Runner, "stopping"));
        report.close(Conclusion::Failure, &IndexMap::new(), None);
        runner.await.unwrap().unwrap();
        assert_eq!(report.result(), Some(Conclusion::Cancelled));
        let done = &fake.bodies("completejob")[0];
        assert_eq!(done["conclusion"], "canceled");
        assert_eq!(done["stepResults"][0]["conclusion"], "canceled");
    }

    #[tokio::test]
    async fn renew_404_abandons_the_job_without_completing_it() {
        let fake = serve().await;
        fake.renew_status.store(404, Ordering::SeqCst);
        let report = start(
            envelope(&fake, &[]),
            reqwest::Client::new(),
            Arc::new(MemorySpool::new()),
            CancellationToken::new(),
            options(),
        );
        report.emit(JobEvent::StepStarted {
            index: 0,
            name: "x".into(),
        });
        let cancel = CancellationToken::new();
        let e = report.run(cancel.clone()).await.unwrap_err();
        assert!(e.is_task_gone(), "{e}");
        assert!(cancel.is_cancelled());
        assert!(report.is_gone());
        report.close(Conclusion::Cancelled, &IndexMap::new(), None);
        assert!(report.finish(&cancel).await.unwrap_err().is_task_gone());
        assert!(fake.bodies("completejob").is_empty());
        assert_eq!(
            fake.bodies("renewjob").len(),
            1,
            "404 stops renewing at once"
        );
    }

    #[tokio::test]
    async fn renew_errors_are_retried_until_the_lock_runs_out() {
        let fake = serve().await;
        fake.renew_status.store(503, Ordering::SeqCst);
        let report = start(
            envelope(&fake, &[]),
            reqwest::Client::new(),
            Arc::new(MemorySpool::new()),
            CancellationToken::new(),
            options(),
        );
        let cancel = CancellationToken::new();
        let e = report.run(cancel.clone()).await.unwrap_err();
        assert!(e.is_task_gone(), "{e}");
        assert!(cancel.is_cancelled());
        assert!(
            fake.bodies("renewjob").len() >= 2,
            "retried before giving up"
        );
        assert!(fake.bodies("completejob").is_empty());
    }

    #[tokio::test]
    async fn completejob_is_tried_five_times_then_resumed_without_repeats() {
        let fake = serve().await;
        *fake.complete_fail.lock().unwrap() = vec![503; 5];
        let report = start(
            envelope(&fake, &[]),
            reqwest::Client::new(),
            Arc::new(MemorySpool::new()),
            CancellationToken::new(),
            options(),
        );
        report.emit(JobEvent::StepStarted {
            index: 0,
            name: "x".into(),
        });
        report.emit(line(Some(0), LineKind::Stdout, "out"));
        report.emit(finished(0, Conclusion::Success));
        report.emit(JobEvent::StepStarted {
            index: 1,
            name: "y".into(),
        });
        report.emit(finished(1, Conclusion::Success));
        report.close(Conclusion::Success, &IndexMap::new(), None);
        let cancel = CancellationToken::new();
        let e = report.run(cancel.clone()).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert_eq!(fake.bodies("completejob").len(), 5);
        report.finish(&cancel).await.unwrap();
        assert_eq!(fake.bodies("completejob").len(), 6);
        assert_eq!(
            fake.bodies("CreateJobLogsMetadata").len(),
            1,
            "the job log went once"
        );
        assert_eq!(
            fake.bodies("CreateStepLogsMetadata").len(),
            1,
            "one step had lines"
        );
        assert!(!cancel.is_cancelled());
    }

    #[tokio::test]
    async fn completejob_404_ends_the_report() {
        let fake = serve().await;
        *fake.complete_fail.lock().unwrap() = vec![404];
        let report = start(
            envelope(&fake, &[]),
            reqwest::Client::new(),
            Arc::new(MemorySpool::new()),
            CancellationToken::new(),
            options(),
        );
        report.close(Conclusion::Success, &IndexMap::new(), None);
        let e = report.run(CancellationToken::new()).await.unwrap_err();
        assert!(e.is_task_gone(), "{e}");
        assert_eq!(fake.bodies("completejob").len(), 1);
        assert!(report.is_gone());
    }

    #[tokio::test]
    async fn an_unrunnable_job_shows_its_message_as_a_line_and_an_annotation() {
        let fake = serve().await;
        let report = unrunnable(
            envelope(&fake, &[]),
            reqwest::Client::new(),
            Arc::new(MemorySpool::new()),
            "Cannot run: no image".into(),
            options(),
        );
        report.run(CancellationToken::new()).await.unwrap();
        let job = strip_times(&fake.blobs.lock().unwrap()["job"]);
        assert_eq!(job.last().unwrap(), "##[error]Cannot run: no image");
        let done = &fake.bodies("completejob")[0];
        assert_eq!(done["conclusion"], "failed");
        assert_eq!(done["annotations"][0]["level"], "FAILURE");
        assert_eq!(done["annotations"][0]["message"], "Cannot run: no image");
        assert_eq!(done["stepResults"][0]["conclusion"], "skipped");
    }

    #[tokio::test]
    async fn a_job_interrupted_by_a_restart_completes_failed_and_a_closed_one_keeps_its_result() {
        let fake = serve().await;
        let spool = Arc::new(MemorySpool::new());
        let report = start(
            envelope(&fake, &[]),
            reqwest::Client::new(),
            spool.clone(),
            CancellationToken::new(),
            options(),
        );
        report.emit(JobEvent::StepStarted {
            index: 0,
            name: "x".into(),
        });
        report.emit(line(Some(0), LineKind::Stdout, "a"));
        report.emit(finished(0, Conclusion::Success));
        report.emit(JobEvent::StepStarted {
            index: 1,
            name: "y".into(),
        });
        report.emit(line(Some(1), LineKind::Stdout, "b"));
        // Flushed at step changes only: line "b" is lost with the crash.
        let saved = report.save();
        drop(report);
        let resumed = resume(
            ResumedTask {
                task_id: 1,
                saved: Some(saved),
                step_count: 2,
                spooled: 2,
                acked: 0,
                spool: spool.clone(),
            },
            reqwest::Client::new(),
        );
        assert!(resumed.result().is_none());
        resumed.finish(&CancellationToken::new()).await.unwrap();
        let done = &fake.bodies("completejob")[0];
        assert_eq!(done["conclusion"], "failed");
        assert_eq!(done["annotations"][0]["message"], RESTARTED);
        assert_eq!(done["stepResults"][0]["conclusion"], "succeeded");
        assert_eq!(done["stepResults"][1]["conclusion"], "failed");
        let job = strip_times(&fake.blobs.lock().unwrap()["job"]);
        assert_eq!(job.len(), 3);
        assert_eq!(job[2], format!("##[error]{RESTARTED}"));
        assert_eq!(fake.bodies("CreateJobLogsMetadata")[0]["line_count"], 3);

        // Closed before the restart: the saved conclusion goes.
        let fake = serve().await;
        let spool = Arc::new(MemorySpool::new());
        let report = start(
            envelope(&fake, &[]),
            reqwest::Client::new(),
            spool.clone(),
            CancellationToken::new(),
            options(),
        );
        report.close(Conclusion::Success, &IndexMap::new(), None);
        let saved = report.save();
        let resumed = resume(
            ResumedTask {
                task_id: 1,
                saved: Some(saved),
                step_count: 2,
                spooled: 1,
                acked: 0,
                spool,
            },
            reqwest::Client::new(),
        );
        resumed.close(Conclusion::Failure, &IndexMap::new(), Some("ignored"));
        assert_eq!(resumed.result(), Some(Conclusion::Success));
        resumed.run(CancellationToken::new()).await.unwrap();
        assert_eq!(fake.bodies("completejob")[0]["conclusion"], "succeeded");

        // Nothing readable saved: given up.
        let lost = resume(
            ResumedTask {
                task_id: 2,
                saved: Some(b"{".to_vec()),
                step_count: 0,
                spooled: 0,
                acked: 0,
                spool: Arc::new(MemorySpool::new()),
            },
            reqwest::Client::new(),
        );
        assert!(
            lost.finish(&CancellationToken::new())
                .await
                .unwrap_err()
                .is_task_gone()
        );
    }

    #[tokio::test]
    async fn step_lines_go_to_the_live_feed_as_they_come() {
        let fake = serve().await;
        let mut env = envelope(&fake, &["secret"]);
        env.feed_url = Some(format!(
            "{}/feed",
            fake.addr.lock().unwrap().replace("http://", "ws://")
        ));
        let report = start(
            env,
            reqwest::Client::new(),
            Arc::new(MemorySpool::new()),
            CancellationToken::new(),
            options(),
        );
        let runner = {
            let r = report.clone();
            tokio::spawn(async move { r.run(CancellationToken::new()).await })
        };
        report.emit(line(None, LineKind::Runner, "setup: not fed"));
        report.emit(JobEvent::StepStarted {
            index: 0,
            name: "a".into(),
        });
        report.emit(line(Some(0), LineKind::Stdout, "one\ntwo secret"));
        until(|| !fake.frames.lock().unwrap().is_empty()).await;
        report.emit(line(Some(0), LineKind::Stdout, "three"));
        report.emit(finished(0, Conclusion::Success));
        until(|| fake.frames.lock().unwrap().len() >= 2).await;
        report.close(Conclusion::Success, &IndexMap::new(), None);
        runner.await.unwrap().unwrap();
        let frames = fake.frames.lock().unwrap().clone();
        assert_eq!(
            frames[0],
            json!({"count": 2, "value": ["one", "two ***"], "stepId": "s-1", "startLine": 1})
        );
        assert_eq!(
            frames[1],
            json!({"count": 1, "value": ["three"], "stepId": "s-1", "startLine": 3})
        );
    }

    #[test]
    fn feed_frames_split_at_steps_and_gaps() {
        let ids = vec!["a".to_string(), "b".to_string()];
        let lines = vec![
            (0, 1, "x".to_string()),
            (0, 2, "y".to_string()),
            (1, 1, "z".to_string()),
            (1, 5, "w".to_string()),
        ];
        let f = feed_frames(&lines, &ids);
        let starts: Vec<(String, u64, u64)> = f
            .iter()
            .map(|v| {
                (
                    v["stepId"].as_str().unwrap().to_string(),
                    v["startLine"].as_u64().unwrap(),
                    v["count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            starts,
            [("a".into(), 1, 2), ("b".into(), 1, 1), ("b".into(), 5, 1)]
        );
    }

    #[test]
    fn lock_times_are_read() {
        let t = parse_time("2023-11-14T22:13:20.1234567Z").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_700));
        let t = parse_time("2023-11-14T23:13:20+01:00").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert!(parse_time("garbage").is_none());
    }

    #[test]
    fn unknown_mask_syntax_is_skipped() {
        let m = compile_masks(&["a+".into(), "(?<=a)b".into(), String::new()]);
        assert_eq!(m.len(), 1);
    }
}

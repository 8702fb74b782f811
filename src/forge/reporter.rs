//! Streams a running task to the forge (`shared/spec/forgejo-runner-protocol.md`
//! §3.5–3.7 and §4).
//!
//! Three layers:
//! - [`TaskStateBuilder`] (pure): turns [`JobEvent`]s into log rows and the
//!   [`TaskState`] the forge shows (steps with `log_index`/`log_length`,
//!   "Set up job" and "Complete job" parts).
//! - [`LogSpool`]: where rows wait until the forge acknowledged them.
//!   [`MemorySpool`] keeps them in memory; an on-disk spool can replace it.
//! - [`ReporterShared`] (the [`EventSink`] the job writes to) and
//!   [`run_reporter`] (the loop that uploads every `report_interval`, notices
//!   remote cancellation and performs the final sequence).
//!
//! Uploads follow the forge's append/ack rule: each `UpdateLog` sends the rows
//! from the acknowledged offset; the server appends what it lacks and answers
//! with the number of rows it holds. Retrying any request is therefore
//! harmless, and no row is lost or duplicated across errors, lost responses or
//! a forge restart.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use indexmap::IndexMap;
use tokio_util::sync::CancellationToken;

use super::ReportApi;
use super::error::ForgeError;
use super::proto::{
    self, LogRow, StepState, TaskResult, TaskState, Timestamp, UpdateLogRequest, UpdateTaskRequest,
    UpdateTaskResponse,
};
use crate::events::{Conclusion, EventSink, JobEvent, LineKind, Phase};

/// Longest output key the forge stores (bytes).
pub const MAX_OUTPUT_KEY_BYTES: usize = 255;
/// Longest output value the forge stores (bytes).
pub const MAX_OUTPUT_VALUE_BYTES: usize = 1024 * 1024;
/// While the spool fails, rows are kept in memory up to this size; beyond
/// it, new job output is counted and dropped (and the loss is logged).
pub const SPOOL_FAILURE_MEMORY_CAP: usize = 64 * 1024 * 1024;
/// Longest row the forge stores whole (it cuts longer ones, spec §3.5):
/// longer lines are split into several rows of at most this many bytes.
pub const MAX_ROW_BYTES: usize = 64 * 1024;
/// Default cap on the encoded size of one `UpdateLog` request; nginx, a
/// common reverse proxy in front of forges, refuses bodies above 1 MiB.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Content of a row the forge lost after acknowledging it, when the spool no
/// longer holds the original (keeps every later index right).
pub const LOST_ROW: &str = "(log line lost by the forge)";

// ---------------------------------------------------------------------------
// Spool
// ---------------------------------------------------------------------------

/// Why the spool could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// The rows asked for were acknowledged and dropped already.
    #[error("Log rows before {first} were already acknowledged and dropped")]
    Acknowledged { first: u64 },
    /// Storage failed (disk full, database error).
    #[error("The log spool failed: {0}")]
    Storage(String),
}

/// The rows of one task's log that the forge has not acknowledged yet, by
/// absolute row index. Calls must be quick: [`ReporterShared::emit`] calls
/// [`LogSpool::append`] while the job runs.
pub trait LogSpool: Send + Sync {
    /// Stores `rows` at indexes `first_index..`. `first_index` is the number
    /// of rows appended before; rows already held are not stored twice.
    fn append(&self, first_index: u64, rows: &[LogRow]) -> Result<(), SpoolError>;
    /// Rows from index `from` on: at most `max_rows`, and no more than
    /// `max_bytes` of content unless a single row is larger. Empty when
    /// nothing is held from `from` on; [`SpoolError::Acknowledged`] when
    /// `from` was dropped by [`LogSpool::ack`].
    fn read(&self, from: u64, max_rows: usize, max_bytes: usize)
    -> Result<Vec<LogRow>, SpoolError>;
    /// The forge holds every row below `upto`: they may be dropped.
    fn ack(&self, upto: u64) -> Result<(), SpoolError>;
}

/// A [`LogSpool`] in memory. Rows stay until acknowledged, so a long forge
/// outage costs memory; an on-disk spool avoids that.
#[derive(Debug, Default)]
pub struct MemorySpool {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// Absolute index of `rows[0]`.
    first: u64,
    rows: VecDeque<LogRow>,
}

impl MemorySpool {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows held (not yet acknowledged).
    pub fn held(&self) -> usize {
        self.lock().rows.len()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogSpool for MemorySpool {
    fn append(&self, first_index: u64, rows: &[LogRow]) -> Result<(), SpoolError> {
        let mut m = self.lock();
        let end = m.first + m.rows.len() as u64;
        if first_index > end {
            return Err(SpoolError::Storage(format!(
                "rows appended at {first_index}, but the spool ends at {end}"
            )));
        }
        let skip = usize::try_from(end - first_index).unwrap_or(usize::MAX);
        m.rows.extend(rows.iter().skip(skip).cloned());
        Ok(())
    }

    fn read(
        &self,
        from: u64,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRow>, SpoolError> {
        let m = self.lock();
        if from < m.first {
            return Err(SpoolError::Acknowledged { first: m.first });
        }
        let start = usize::try_from(from - m.first).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut bytes = 0;
        for row in m.rows.iter().skip(start).take(max_rows) {
            if !out.is_empty() && bytes + row.content.len() > max_bytes {
                break;
            }
            bytes += row.content.len();
            out.push(row.clone());
        }
        Ok(out)
    }

    fn ack(&self, upto: u64) -> Result<(), SpoolError> {
        let mut m = self.lock();
        while m.first < upto && !m.rows.is_empty() {
            m.rows.pop_front();
            m.first += 1;
        }
        if m.rows.is_empty() && upto > m.first {
            m.first = upto;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// TaskStateBuilder (pure)
// ---------------------------------------------------------------------------

/// `line` in pieces of at most `max` bytes (at least one piece, empty for an
/// empty line), never cutting a UTF-8 character.
fn split_row(line: &str, max: usize) -> Vec<&str> {
    let max = max.max(4);
    let mut out = Vec::new();
    let mut rest = line;
    while rest.len() > max {
        let mut end = max;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (head, tail) = rest.split_at(end);
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

#[derive(Debug, Clone)]
struct StepTrack {
    state: StepState,
    name: String,
    has_rows: bool,
}

/// Where a row that belongs to no running step goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Before the first step started: "Set up job".
    Setup,
    /// A step is running.
    Step(usize),
    /// Between two steps: such rows are dropped (spec §4).
    Between,
    /// The last step has a result, or the job finished: "Complete job".
    Complete,
}

/// Builds the task's log rows and [`TaskState`] from job events.
///
/// Rules (spec §3.5, §3.6, §4):
/// - rows before the first step starts form "Set up job";
/// - a step's rows (`Line` events with `step: Some(i)` while step `i` runs)
///   are contiguous; `log_index` is set at its first row (or at the current
///   position when it finishes without rows) and `log_length` counts them;
/// - lines outside a step while steps are running are dropped; after the last
///   step has a result (or the job finished) they form "Complete job";
/// - `::group::`/`::endgroup::` become `##[group]X`/`##[endgroup]`,
///   annotations `::warning::text` etc., `::debug::` lines are kept only with
///   `ACTIONS_STEP_DEBUG`;
/// - a step summary is logged in the step as a `Summary - <step>` group.
#[derive(Debug, Clone)]
pub struct TaskStateBuilder {
    task_id: i64,
    steps: Vec<StepTrack>,
    debug: bool,
    /// Rows produced and not yet taken by [`TaskStateBuilder::drain_rows`].
    rows: Vec<LogRow>,
    rows_bytes: usize,
    /// Rows produced in all (the absolute index of the next row).
    total: u64,
    started_at: Option<Timestamp>,
    stopped_at: Option<Timestamp>,
    result: TaskResult,
    current: Option<usize>,
    any_started: bool,
    finished: bool,
    /// Job output lines are counted instead of kept (spool failing).
    suppress: bool,
    suppressed: u64,
}

impl TaskStateBuilder {
    /// A task with `step_count` steps (ids `0..step_count`). `debug` keeps
    /// `::debug::` lines (`ACTIONS_STEP_DEBUG == "true"`).
    pub fn new(task_id: i64, step_count: usize, debug: bool) -> Self {
        let steps = (0..step_count)
            .map(|i| StepTrack {
                state: StepState {
                    id: i64::try_from(i).unwrap_or(i64::MAX),
                    ..StepState::default()
                },
                name: String::new(),
                has_rows: false,
            })
            .collect();
        TaskStateBuilder {
            task_id,
            steps,
            debug,
            rows: Vec::new(),
            rows_bytes: 0,
            total: 0,
            started_at: None,
            stopped_at: None,
            result: TaskResult::Unspecified,
            current: None,
            any_started: false,
            finished: false,
            suppress: false,
            suppressed: 0,
        }
    }

    /// A builder that continues a task whose last reported state was `state`
    /// and whose log has `total_rows` rows (after a daemon restart). No
    /// step is running; new rows go after every step's rows.
    pub fn resume(state: &TaskState, total_rows: u64, debug: bool) -> Self {
        let mut b = TaskStateBuilder::new(state.id, state.steps.len(), debug);
        let total = i64::try_from(total_rows).unwrap_or(i64::MAX);
        for (i, (t, s)) in b.steps.iter_mut().zip(&state.steps).enumerate() {
            t.state = s.clone();
            t.state.id = i64::try_from(i).unwrap_or(i64::MAX);
            // The saved state may count rows that never reached the spool
            // (up to a second's worth before a crash): keep ranges inside
            // the log that exists.
            t.state.log_index = t.state.log_index.clamp(0, total);
            t.state.log_length = t.state.log_length.clamp(0, total - t.state.log_index);
            t.has_rows = t.state.log_length > 0;
        }
        b.any_started = state.steps.iter().any(|s| s.started_at.is_some());
        b.started_at = state.started_at;
        b.total = total_rows;
        b
    }

    /// The first rows of the log, as forgejo-runner writes them.
    pub fn received(
        &mut self,
        runner_name: &str,
        version: &str,
        job_name: &str,
        event_name: &str,
        now: Timestamp,
    ) {
        let text = format!(
            "{runner_name}(version:{version}) received task {} of job {job_name}, be triggered by event: {event_name}",
            self.task_id
        );
        self.runner_row(&text, now);
        self.runner_row("workflow prepared", now);
    }

    fn part(&self) -> Part {
        if let Some(i) = self.current {
            Part::Step(i)
        } else if self.finished
            || self
                .steps
                .last()
                .is_some_and(|s| s.state.result != TaskResult::Unspecified as i32)
        {
            Part::Complete
        } else if self.any_started {
            Part::Between
        } else {
            Part::Setup
        }
    }

    /// Appends rows (one per line of `content`) to `step` or outside steps.
    /// A line longer than [`MAX_ROW_BYTES`] becomes several rows with the
    /// same time, each cut at a character boundary; each counts as a row
    /// of the step. (Secrets were masked in the whole line before.)
    fn push(&mut self, step: Option<usize>, content: &str, now: &Timestamp) {
        for line in content.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            for piece in split_row(line, MAX_ROW_BYTES) {
                if let Some(t) = step.and_then(|i| self.steps.get_mut(i)) {
                    if !t.has_rows {
                        t.has_rows = true;
                        t.state.log_index = i64::try_from(self.total).unwrap_or(i64::MAX);
                    }
                    t.state.log_length += 1;
                }
                if self.started_at.is_none() {
                    self.started_at = Some(*now);
                }
                self.rows_bytes += piece.len();
                self.rows.push(LogRow {
                    time: Some(*now),
                    content: piece.to_string(),
                });
                self.total += 1;
            }
        }
    }

    /// A row of job output: kept in the step `step` names if it is running,
    /// in the setup/complete part when outside steps, else dropped.
    fn output(&mut self, step: Option<usize>, content: &str, now: &Timestamp) {
        let target = match (self.part(), step) {
            (Part::Step(i), Some(s)) if i == s => Some(i),
            (Part::Setup | Part::Complete, _) => None,
            // Job-level lines while steps run (a job timeout, a cancellation)
            // matter to the reader: they go where `notice` puts them, which
            // keeps every step's rows contiguous.
            (Part::Step(i), None) => Some(i),
            (Part::Between, None) => self
                .steps
                .iter()
                .rposition(|s| s.state.result != TaskResult::Unspecified as i32),
            _ => return,
        };
        if self.suppress {
            self.suppressed += content.split('\n').count() as u64;
            return;
        }
        self.push(target, content, now);
    }

    /// A row written by the runner outside steps (setup/complete rules).
    pub fn runner_row(&mut self, text: &str, now: Timestamp) {
        if matches!(self.part(), Part::Setup | Part::Complete) {
            self.push(None, text, &now);
        }
    }

    /// A row that must be shown whatever the phase (remote cancellation,
    /// lost lines): in the running step, else in the last finished step
    /// (between steps, its rows end the log), else outside steps.
    pub fn notice(&mut self, text: &str, now: Timestamp) {
        let step = match self.part() {
            Part::Step(i) => Some(i),
            Part::Between => self
                .steps
                .iter()
                .rposition(|s| s.state.result != TaskResult::Unspecified as i32),
            Part::Setup | Part::Complete => None,
        };
        self.push(step, text, &now);
    }

    /// Applies one event.
    pub fn handle(&mut self, event: &JobEvent, now: Timestamp) {
        match event {
            JobEvent::Phase { phase, detail } => {
                let label = match phase {
                    Phase::Provision => "Provisioning the VM",
                    Phase::Boot => "Booting",
                    Phase::Ready => "VM ready",
                    Phase::Teardown => "Tearing down",
                };
                self.runner_row(&format!("{label}: {detail}"), now);
            }
            JobEvent::StepStarted { index, name } => {
                if let Some(t) = self.steps.get_mut(*index) {
                    t.state.started_at = Some(now);
                    t.name = name.clone();
                    self.current = Some(*index);
                    self.any_started = true;
                }
            }
            JobEvent::Line { step, kind, text } => {
                let content = match kind {
                    LineKind::Stdout | LineKind::Stderr | LineKind::Runner => text.clone(),
                    LineKind::Debug if self.debug => format!("::debug::{text}"),
                    LineKind::Debug => return,
                    LineKind::Annotation(k) => format!("::{k}::{text}"),
                    LineKind::GroupStart => format!("##[group]{text}"),
                    LineKind::GroupEnd => "##[endgroup]".to_string(),
                };
                self.output(*step, &content, &now);
            }
            JobEvent::StepSummary { index, markdown } => {
                let name = self
                    .steps
                    .get(*index)
                    .map(|t| t.name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| format!("step {}", index + 1));
                let body = markdown.trim_end_matches(['\n', '\r']);
                let content = format!("##[group]Summary - {name}\n{body}\n##[endgroup]");
                self.output(Some(*index), &content, &now);
            }
            JobEvent::StepFinished {
                index, conclusion, ..
            } => {
                let total = i64::try_from(self.total).unwrap_or(i64::MAX);
                if let Some(t) = self.steps.get_mut(*index) {
                    if t.state.started_at.is_none() {
                        t.state.started_at = Some(now);
                    }
                    t.state.result = TaskResult::from(*conclusion) as i32;
                    t.state.stopped_at = Some(now);
                    if !t.has_rows {
                        t.state.log_index = total;
                    }
                    if self.current == Some(*index) {
                        self.current = None;
                    }
                }
            }
            JobEvent::JobFinished { conclusion, .. } => {
                self.finish(TaskResult::from(*conclusion), now);
            }
        }
    }

    /// Sets the task's result. The first call also sets `stopped_at` and
    /// turns every step without a result into CANCELLED (SKIPPED when the
    /// job was skipped); later calls only change the result.
    pub fn finish(&mut self, result: TaskResult, now: Timestamp) {
        self.result = result;
        if self.finished {
            return;
        }
        self.finished = true;
        self.current = None;
        self.stopped_at = Some(now);
        if self.started_at.is_none() {
            self.started_at = Some(now);
        }
        let left = if result == TaskResult::Skipped {
            TaskResult::Skipped
        } else {
            TaskResult::Cancelled
        };
        let total = i64::try_from(self.total).unwrap_or(i64::MAX);
        for t in &mut self.steps {
            if t.state.result == TaskResult::Unspecified as i32 {
                t.state.result = left as i32;
                t.state.stopped_at = Some(now);
                if !t.has_rows {
                    t.state.log_index = total;
                }
            }
        }
    }

    /// The complete state, as every `UpdateTask` sends it.
    pub fn state(&self) -> TaskState {
        TaskState {
            id: self.task_id,
            result: self.result as i32,
            started_at: self.started_at,
            stopped_at: self.stopped_at,
            steps: self.steps.iter().map(|t| t.state.clone()).collect(),
        }
    }

    /// The task's result so far (UNSPECIFIED while running).
    pub fn result(&self) -> TaskResult {
        self.result
    }

    /// Rows produced so far (the index of the next row).
    pub fn total_rows(&self) -> u64 {
        self.total
    }

    /// Rows produced but not yet drained, and their content size in bytes.
    pub fn pending(&self) -> (&[LogRow], usize) {
        (&self.rows, self.rows_bytes)
    }

    /// Takes the pending rows; they start at index `total_rows() - len`.
    pub fn drain_rows(&mut self) -> Vec<LogRow> {
        self.rows_bytes = 0;
        std::mem::take(&mut self.rows)
    }

    /// Counts job output lines instead of keeping them (`true`), or keeps
    /// them again. Returns how many were not kept since the last call that
    /// switched suppression off.
    pub fn set_suppress(&mut self, on: bool) -> u64 {
        self.suppress = on;
        if on {
            0
        } else {
            std::mem::take(&mut self.suppressed)
        }
    }
}

// ---------------------------------------------------------------------------
// Shared state and the EventSink
// ---------------------------------------------------------------------------

/// Timing and size limits of the reporter.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// Period of `UpdateLog` + `UpdateTask` while the job runs.
    pub report_interval: Duration,
    /// Cap on rows per `UpdateLog` request.
    pub max_rows_per_request: usize,
    /// Cap on the encoded size of one `UpdateLog` request body. Halved for
    /// a task each time the forge (its proxy) answers HTTP 413; a single
    /// row is always sent, whatever the cap.
    pub max_bytes_per_request: usize,
    /// The in-memory batch goes to the spool at this many rows...
    pub batch_rows: usize,
    /// ...or this many bytes.
    pub batch_bytes: usize,
    /// First pause of the final sequence's retries (doubles each time).
    pub retry_initial: Duration,
    /// Longest pause between retries.
    pub retry_max: Duration,
    /// Time the final sequence may take before [`ReportError::GaveUp`].
    pub final_budget: Duration,
    /// Successful final `UpdateTask` calls after which outputs the forge
    /// never acknowledges are given up.
    pub max_output_attempts: u32,
}

impl Default for ReporterConfig {
    fn default() -> Self {
        ReporterConfig {
            report_interval: Duration::from_secs(1),
            max_rows_per_request: 5000,
            max_bytes_per_request: MAX_REQUEST_BYTES,
            batch_rows: 1000,
            batch_bytes: 1024 * 1024,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            final_budget: Duration::from_secs(5 * 60),
            max_output_attempts: 5,
        }
    }
}

/// Why reporting stopped before the forge had the whole report.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReportError {
    /// The forge rejects the runner's credentials.
    #[error(
        "The forge rejected the runner's credentials while reporting task {task_id}; register the runner again"
    )]
    Unauthenticated {
        task_id: i64,
        #[source]
        source: ForgeError,
    },
    /// The forge will never take reports for this task: it was deleted
    /// (with its run or repository) or is not this runner's. The reporter
    /// gave it up: the job was cancelled and its rows and outputs dropped.
    #[error(
        "The forge no longer accepts reports for task {task_id} (deleted, or not this runner's): {source}"
    )]
    TaskGone {
        task_id: i64,
        #[source]
        source: ForgeError,
    },
    /// The final sequence did not succeed within its time budget. The spool
    /// and [`ReporterShared`] still hold everything: call [`finish`] again.
    #[error("Gave up sending the final {stage} of task {task_id} after {secs} s: {last_error}")]
    GaveUp {
        task_id: i64,
        /// `log` or `state`.
        stage: &'static str,
        secs: u64,
        last_error: String,
    },
}

#[derive(Debug)]
struct Closing {
    /// Unacknowledged outputs.
    outputs: BTreeMap<String, String>,
    /// Successful final `UpdateTask` calls so far.
    task_updates: u32,
}

#[derive(Debug)]
struct Inner {
    builder: TaskStateBuilder,
    /// Rows handed to the spool (index of the next one).
    spooled: u64,
    /// Rows the forge acknowledged.
    acked: u64,
    /// A `no_more` request holding every row was sent at least once.
    no_more_sent: bool,
    /// Last spool failure, while it lasts.
    spool_error: Option<String>,
    closing: Option<Closing>,
    /// The forge reported CANCELLED/FAILURE while the job ran.
    forge_stop: Option<TaskResult>,
    /// The final sequence completed.
    done: bool,
    /// Cap on the encoded size of an `UpdateLog` body (halved on HTTP 413).
    body_limit: usize,
    /// The forge answered that the task is gone: nothing more is sent.
    gone: Option<ForgeError>,
}

/// The reporter's state, shared by the job (through [`EventSink`]), the
/// upload loop and the caller.
pub struct ReporterShared {
    task_id: i64,
    inner: Mutex<Inner>,
    spool: Arc<dyn LogSpool>,
    config: ReporterConfig,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for ReporterShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReporterShared")
            .field("task_id", &self.task_id)
            .finish_non_exhaustive()
    }
}

impl ReporterShared {
    /// Wraps a builder (usually after [`TaskStateBuilder::received`]).
    pub fn new(
        builder: TaskStateBuilder,
        spool: Arc<dyn LogSpool>,
        config: ReporterConfig,
    ) -> Self {
        ReporterShared {
            task_id: builder.task_id,
            inner: Mutex::new(Inner {
                builder,
                spooled: 0,
                acked: 0,
                no_more_sent: false,
                spool_error: None,
                closing: None,
                forge_stop: None,
                done: false,
                body_limit: config.max_bytes_per_request.max(1),
                gone: None,
            }),
            spool,
            config,
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Continues a report after a restart: the forge acknowledged `acked`
    /// rows, and the spool holds rows up to `spooled` (the builder's total).
    pub fn resume(
        builder: TaskStateBuilder,
        spool: Arc<dyn LogSpool>,
        config: ReporterConfig,
        acked: u64,
    ) -> Self {
        let spooled = builder.total_rows();
        let r = ReporterShared::new(builder, spool, config);
        {
            let mut inner = r.lock();
            inner.spooled = spooled;
            inner.acked = acked.min(spooled);
        }
        r
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the pending rows into the spool. On failure they stay pending.
    fn flush(&self, inner: &mut Inner) -> Result<(), SpoolError> {
        let (rows, _) = inner.builder.pending();
        if rows.is_empty() {
            return Ok(());
        }
        let n = rows.len() as u64;
        match self.spool.append(inner.spooled, rows) {
            Ok(()) => {
                inner.builder.drain_rows();
                inner.spooled += n;
                if inner.spool_error.take().is_some() {
                    let lost = inner.builder.set_suppress(false);
                    if lost > 0 {
                        inner.builder.notice(
                            &format!(
                                "{lost} log lines were not kept: the runner's log spool failed"
                            ),
                            proto::now(),
                        );
                    }
                }
                Ok(())
            }
            Err(e) => {
                if inner.spool_error.is_none() {
                    tracing::warn!(task = self.task_id, error = %e, "log spool failed; keeping rows in memory");
                }
                inner.spool_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Ends the job: `result` is the final result (CANCELLED instead when
    /// the forge cancelled or failed the task), `outputs` the job outputs
    /// (sent only when the result is success), `error` a last log line.
    /// Wakes [`run_reporter`] for the final sequence. Later calls are ignored.
    pub fn close(
        &self,
        result: Conclusion,
        outputs: &IndexMap<String, String>,
        error: Option<&str>,
    ) {
        let mut inner = self.lock();
        if inner.closing.is_some() || inner.gone.is_some() {
            return;
        }
        let result = match inner.forge_stop {
            Some(_) => TaskResult::Cancelled,
            None => TaskResult::from(result),
        };
        let now = proto::now();
        inner.builder.set_suppress(false);
        inner.builder.finish(result, now);
        if let Some(e) = error.filter(|e| !e.trim().is_empty()) {
            inner.builder.notice(e, now);
        }
        let word = match result {
            TaskResult::Success => "succeeded",
            TaskResult::Failure => "failed",
            TaskResult::Cancelled => "was cancelled",
            TaskResult::Skipped => "was skipped",
            TaskResult::Unspecified => "ended",
        };
        inner.builder.notice(&format!("Job {word}"), now);
        let outputs = if result == TaskResult::Success {
            filter_outputs(outputs)
        } else {
            BTreeMap::new()
        };
        inner.closing = Some(Closing {
            outputs,
            task_updates: 0,
        });
        drop(inner);
        self.wake.notify_one();
    }

    /// The current task state.
    pub fn state(&self) -> TaskState {
        self.lock().builder.state()
    }

    /// Rows produced so far.
    pub fn total_rows(&self) -> u64 {
        self.lock().builder.total_rows()
    }

    /// Rows the forge acknowledged.
    pub fn acked_rows(&self) -> u64 {
        self.lock().acked
    }

    /// Rows waiting in memory for the spool.
    pub fn pending_rows(&self) -> usize {
        self.lock().builder.pending().0.len()
    }

    /// What the forge reported when it stopped the task (CANCELLED or FAILURE).
    pub fn forge_stop(&self) -> Option<TaskResult> {
        self.lock().forge_stop
    }

    /// [`ReporterShared::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closing.is_some()
    }

    /// The final sequence completed: the forge has the whole report.
    pub fn is_done(&self) -> bool {
        self.lock().done
    }

    /// The forge said the task is gone (see [`ReportError::TaskGone`]).
    pub fn is_gone(&self) -> bool {
        self.lock().gone.is_some()
    }

    /// The cap on the encoded size of the next `UpdateLog` body.
    pub fn body_limit(&self) -> usize {
        self.lock().body_limit
    }

    /// Gives the task up after the forge answered `e` (a "task gone" error):
    /// logs it once, cancels the job, drops the rows and outputs not sent.
    /// Later events, [`ReporterShared::close`] and [`finish`] do nothing.
    fn give_up(&self, e: ForgeError, cancel_job: &CancellationToken) -> ReportError {
        let mut inner = self.lock();
        if inner.gone.is_none() {
            tracing::warn!(
                task = self.task_id,
                error = %e,
                "the forge no longer has this task (deleted, or not this runner's); giving it up: job stopped, its unsent log and outputs dropped, never retried"
            );
            inner.gone = Some(e.clone());
            inner.builder.drain_rows();
            // The spool may free what it holds.
            let _ = self.spool.ack(inner.spooled);
            inner.builder.set_suppress(true);
            if let Some(c) = inner.closing.as_mut() {
                c.outputs.clear();
            }
        }
        drop(inner);
        cancel_job.cancel();
        self.wake.notify_one();
        ReportError::TaskGone {
            task_id: self.task_id,
            source: e,
        }
    }
}

impl EventSink for ReporterShared {
    fn emit(&self, event: JobEvent) {
        let mut inner = self.lock();
        if inner.closing.is_some() || inner.gone.is_some() {
            return;
        }
        let over =
            inner.spool_error.is_some() && inner.builder.pending().1 > SPOOL_FAILURE_MEMORY_CAP;
        if over {
            inner.builder.set_suppress(true);
        }
        inner.builder.handle(&event, proto::now());
        let (rows, bytes) = inner.builder.pending();
        if rows.len() >= self.config.batch_rows || bytes >= self.config.batch_bytes {
            let _ = self.flush(&mut inner);
        }
    }
}

/// Drops outputs the forge would refuse (key > 255 B, value > 1 MiB).
fn filter_outputs(outputs: &IndexMap<String, String>) -> BTreeMap<String, String> {
    outputs
        .iter()
        .filter(|(k, v)| {
            let ok = !k.is_empty()
                && k.len() <= MAX_OUTPUT_KEY_BYTES
                && v.len() <= MAX_OUTPUT_VALUE_BYTES;
            if !ok {
                tracing::warn!(key = %k.chars().take(64).collect::<String>(), "job output dropped: key or value too long for the forge");
            }
            ok
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

// ---------------------------------------------------------------------------
// Uploading
// ---------------------------------------------------------------------------

/// Failure of one upload pass.
#[derive(Debug)]
enum PassError {
    Forge(ForgeError),
    Spool(SpoolError),
    /// The forge answered but took no new rows.
    NoProgress,
}

impl std::fmt::Display for PassError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PassError::Forge(e) => write!(f, "{e}"),
            PassError::Spool(e) => write!(f, "{e}"),
            PassError::NoProgress => f.write_str("the forge did not take the rows sent"),
        }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Sends every spooled row from the acknowledged offset, in requests of at
/// most `max_rows_per_request` rows / `max_bytes_per_request` bytes. With
/// `no_more`, the request holding the last row carries `no_more = true`
/// (an empty one when everything was acknowledged already).
async fn upload_logs(
    api: &dyn ReportApi,
    shared: &ReporterShared,
    no_more: bool,
) -> Result<(), PassError> {
    let cfg = &shared.config;
    let total = {
        let mut inner = shared.lock();
        if no_more {
            shared.flush(&mut inner).map_err(PassError::Spool)?;
        } else if inner.closing.is_none() {
            // A failing spool is logged by flush; what it holds still goes.
            let _ = shared.flush(&mut inner);
        }
        inner.spooled
    };
    let mut stalls = 0;
    loop {
        let (offset, limit) = {
            let inner = shared.lock();
            (inner.acked, inner.body_limit)
        };
        let mut rows = if offset >= total {
            Vec::new()
        } else {
            match shared.spool.read(offset, cfg.max_rows_per_request, limit) {
                Ok(r) => r,
                Err(SpoolError::Acknowledged { first }) => {
                    let n = (first.min(total) - offset).min(cfg.max_rows_per_request as u64);
                    tracing::warn!(
                        task = shared.task_id,
                        rows = n,
                        "resending rows the forge lost, without their content"
                    );
                    (0..n)
                        .map(|_| LogRow {
                            time: Some(proto::now()),
                            content: LOST_ROW.into(),
                        })
                        .collect()
                }
                Err(e) => return Err(PassError::Spool(e)),
            }
        };
        if offset < total && rows.is_empty() {
            return Err(PassError::Spool(SpoolError::Storage(format!(
                "row {offset} is missing from the spool"
            ))));
        }
        let size = fit_body(shared.task_id, &mut rows, limit);
        let sent_rows = rows.len();
        let end = offset + rows.len() as u64;
        let last = end >= total;
        let req_no_more = no_more && last;
        let req = UpdateLogRequest {
            task_id: shared.task_id,
            index: to_i64(offset),
            rows,
            no_more: req_no_more,
        };
        let sent_all_before = shared.lock().no_more_sent;
        let resp = api.update_log(req).await;
        if req_no_more && !resp.as_ref().is_err_and(ForgeError::is_too_large) {
            shared.lock().no_more_sent = true;
        }
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_too_large() && sent_rows > 1 => {
                // A proxy in front of the forge caps request bodies: the
                // same body never gets through, a smaller one may.
                let smaller = (size.min(limit) / 2).max(1);
                tracing::info!(
                    task = shared.task_id,
                    refused = size,
                    limit = smaller,
                    "the forge refused a log upload as too large (HTTP 413); sending smaller batches for this task"
                );
                shared.lock().body_limit = smaller;
                continue;
            }
            Err(e) if e.is_too_large() => {
                tracing::warn!(
                    task = shared.task_id,
                    bytes = size,
                    "the forge refuses even a single log row as too large (HTTP 413); raise the body size limit of the proxy in front of it (nginx: client_max_body_size) to at least 1 MiB"
                );
                return Err(PassError::Forge(e));
            }
            Err(e) if e.is_already_exists() => {
                // The log is archived: our earlier no_more went through (its
                // answer was lost), or the forge closed the log itself (its
                // reaper does that when it fails a task). Nothing more can
                // be appended, so the log counts as delivered.
                let mut inner = shared.lock();
                inner.no_more_sent = true;
                if !sent_all_before && inner.acked < total {
                    tracing::warn!(
                        task = shared.task_id,
                        unacknowledged = total - inner.acked,
                        "the forge closed the log before every row was sent"
                    );
                }
                inner.acked = total;
                let _ = shared.spool.ack(total);
                return Ok(());
            }
            Err(e) => return Err(PassError::Forge(e)),
        };
        let ack = u64::try_from(resp.ack_index).unwrap_or(0);
        {
            let mut inner = shared.lock();
            if ack < offset {
                tracing::error!(
                    task = shared.task_id,
                    ack,
                    offset,
                    "submitted logs are lost: the forge holds fewer rows than it acknowledged; resending"
                );
            } else if let Err(e) = shared.spool.ack(ack.min(inner.spooled)) {
                tracing::warn!(task = shared.task_id, error = %e, "log spool ack failed");
            }
            inner.acked = ack;
        }
        if ack >= total && (!no_more || req_no_more) {
            return Ok(());
        }
        if ack <= offset {
            stalls += 1;
            // One resend after a loss is expected; more means the forge is
            // not taking rows.
            if stalls > 1 || ack == offset {
                return Err(PassError::NoProgress);
            }
        }
    }
}

/// Keeps the leading rows whose encoded request fits in `limit` bytes (at
/// least one row); returns the encoded size of the request with them.
fn fit_body(task_id: i64, rows: &mut Vec<LogRow>, limit: usize) -> usize {
    use prost::Message;
    // The largest index and `no_more` set: never less than what is sent.
    let base = UpdateLogRequest {
        task_id,
        index: i64::MAX,
        rows: Vec::new(),
        no_more: true,
    }
    .encoded_len();
    let mut size = base;
    let mut keep = 0;
    for row in rows.iter() {
        let n = prost::encoding::message::encoded_len(3, row);
        if keep > 0 && size + n > limit {
            break;
        }
        size += n;
        keep += 1;
    }
    rows.truncate(keep);
    size
}

/// Sends the current state (and unacknowledged outputs once closing);
/// reacts to a remote cancellation.
async fn update_task(
    api: &dyn ReportApi,
    shared: &ReporterShared,
    cancel_job: &CancellationToken,
) -> Result<UpdateTaskResponse, ForgeError> {
    let req = {
        let inner = shared.lock();
        UpdateTaskRequest {
            state: Some(inner.builder.state()),
            outputs: inner
                .closing
                .as_ref()
                .map(|c| c.outputs.clone().into_iter().collect())
                .unwrap_or_default(),
        }
    };
    let resp = api.update_task(req).await?;
    let remote = resp
        .state
        .as_ref()
        .map(|s| TaskResult::from_wire(s.result))
        .unwrap_or(TaskResult::Unspecified);
    let mut inner = shared.lock();
    if let Some(c) = inner.closing.as_mut() {
        c.task_updates += 1;
        for k in &resp.sent_outputs {
            c.outputs.remove(k);
        }
    }
    if matches!(remote, TaskResult::Cancelled | TaskResult::Failure)
        && inner.builder.result() == TaskResult::Unspecified
        && inner.forge_stop.is_none()
    {
        inner.forge_stop = Some(remote);
        let text = if remote == TaskResult::Cancelled {
            "The job was cancelled on the forge"
        } else {
            "The job was marked failed by the forge; cancelling it"
        };
        tracing::info!(task = shared.task_id, "{text}");
        inner.builder.notice(text, proto::now());
        cancel_job.cancel();
    }
    Ok(resp)
}

/// Reports the task while it runs, then performs the final sequence once
/// [`ReporterShared::close`] was called. Every `report_interval`:
/// `UpdateLog` with the pending rows, then (until a result is set)
/// `UpdateTask` with the full state. A remote CANCELLED/FAILURE cancels
/// `cancel_job`. Returns when the forge has the whole report, or with an
/// error (bad credentials: `cancel_job` is cancelled too; or the final
/// sequence gave up, see [`finish`]).
pub async fn run_reporter(
    api: Arc<dyn ReportApi>,
    shared: Arc<ReporterShared>,
    cancel_job: CancellationToken,
) -> Result<(), ReportError> {
    let mut tick = tokio::time::interval(shared.config.report_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        if shared.is_closed() {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.wake.notified() => continue,
        }
        if shared.is_closed() {
            break;
        }
        match upload_logs(api.as_ref(), &shared, false).await {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(task = shared.task_id, "reporting to the forge works again");
                }
            }
            Err(PassError::Forge(e)) if e.is_unauthenticated() => {
                cancel_job.cancel();
                return Err(ReportError::Unauthenticated {
                    task_id: shared.task_id,
                    source: e,
                });
            }
            Err(PassError::Forge(e)) if e.is_task_gone() => {
                return Err(shared.give_up(e, &cancel_job));
            }
            Err(e) if failing => {
                tracing::debug!(task = shared.task_id, error = %e, "UpdateLog failed again")
            }
            Err(e) => {
                failing = true;
                tracing::warn!(task = shared.task_id, error = %e, "UpdateLog failed; retrying every interval (one line when it works again)")
            }
        }
        let final_set = shared.lock().builder.result() != TaskResult::Unspecified;
        if final_set || shared.is_closed() {
            continue;
        }
        match update_task(api.as_ref(), &shared, &cancel_job).await {
            Ok(_) => {}
            Err(e) if e.is_unauthenticated() => {
                cancel_job.cancel();
                return Err(ReportError::Unauthenticated {
                    task_id: shared.task_id,
                    source: e,
                });
            }
            Err(e) if e.is_task_gone() => {
                return Err(shared.give_up(e, &cancel_job));
            }
            Err(e) if failing => {
                tracing::debug!(task = shared.task_id, error = %e, "UpdateTask failed again")
            }
            Err(e) => {
                failing = true;
                tracing::warn!(task = shared.task_id, error = %e, "UpdateTask failed; retrying every interval (one line when it works again)")
            }
        }
    }
    finish(api.as_ref(), &shared, &cancel_job).await
}

/// The final sequence (after [`ReporterShared::close`]): `UpdateLog` with
/// `no_more` until every row is acknowledged, then the final `UpdateTask`
/// until it (and the outputs) are acknowledged. Each stage retries with
/// exponential back-off within `final_budget`. Can be called again after
/// [`ReportError::GaveUp`]; it resumes where it stopped.
pub async fn finish(
    api: &dyn ReportApi,
    shared: &ReporterShared,
    cancel_job: &CancellationToken,
) -> Result<(), ReportError> {
    let cfg = &shared.config;
    if shared.is_done() {
        return Ok(());
    }
    if let Some(e) = shared.lock().gone.clone() {
        return Err(ReportError::TaskGone {
            task_id: shared.task_id,
            source: e,
        });
    }
    if !shared.is_closed() {
        shared.close(
            Conclusion::Failure,
            &IndexMap::new(),
            Some("The runner stopped reporting before the job ended"),
        );
    }
    let started = tokio::time::Instant::now();
    let mut backoff = cfg.retry_initial;
    let gave_up = |stage: &'static str, last_error: String| ReportError::GaveUp {
        task_id: shared.task_id,
        stage,
        secs: started.elapsed().as_secs(),
        last_error,
    };
    // 1. Every row, the last request with no_more.
    loop {
        match upload_logs(api, shared, true).await {
            Ok(()) => break,
            Err(PassError::Forge(e)) if e.is_unauthenticated() => {
                return Err(ReportError::Unauthenticated {
                    task_id: shared.task_id,
                    source: e,
                });
            }
            Err(PassError::Forge(e)) if e.is_task_gone() => {
                return Err(shared.give_up(e, cancel_job));
            }
            Err(e) => {
                if started.elapsed() + backoff > cfg.final_budget {
                    return Err(gave_up("log", e.to_string()));
                }
                tracing::debug!(task = shared.task_id, error = %e, "final UpdateLog failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.retry_max);
            }
        }
    }
    // 2. The final state, until it and the outputs are acknowledged.
    backoff = cfg.retry_initial;
    loop {
        match update_task(api, shared, cancel_job).await {
            Ok(_) => {
                let mut inner = shared.lock();
                let (left, updates) = inner
                    .closing
                    .as_ref()
                    .map(|c| (c.outputs.len(), c.task_updates))
                    .unwrap_or((0, 0));
                if left == 0 || updates >= cfg.max_output_attempts {
                    if left > 0 {
                        tracing::warn!(
                            task = shared.task_id,
                            outputs = left,
                            "the forge never acknowledged some job outputs; giving them up"
                        );
                    }
                    inner.done = true;
                    return Ok(());
                }
                drop(inner);
                let e = "outputs not acknowledged yet".to_string();
                if started.elapsed() + backoff > cfg.final_budget {
                    return Err(gave_up("state", e));
                }
            }
            Err(e) if e.is_unauthenticated() => {
                return Err(ReportError::Unauthenticated {
                    task_id: shared.task_id,
                    source: e,
                });
            }
            Err(e) if e.is_task_gone() => {
                return Err(shared.give_up(e, cancel_job));
            }
            Err(e) => {
                if started.elapsed() + backoff > cfg.final_budget {
                    return Err(gave_up("state", e.to_string()));
                }
                tracing::debug!(task = shared.task_id, error = %e, "final UpdateTask failed; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.retry_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts() -> Timestamp {
        Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }
    }

    fn line(step: Option<usize>, kind: LineKind, text: &str) -> JobEvent {
        JobEvent::Line {
            step,
            kind,
            text: text.into(),
        }
    }

    fn out(step: usize, text: &str) -> JobEvent {
        line(Some(step), LineKind::Stdout, text)
    }

    fn started(index: usize, name: &str) -> JobEvent {
        JobEvent::StepStarted {
            index,
            name: name.into(),
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

    fn contents(b: &mut TaskStateBuilder) -> Vec<String> {
        b.drain_rows().into_iter().map(|r| r.content).collect()
    }

    fn feed(b: &mut TaskStateBuilder, events: &[JobEvent]) {
        for e in events {
            b.handle(e, ts());
        }
    }

    #[test]
    fn rows_are_attributed_to_setup_steps_and_complete() {
        let mut b = TaskStateBuilder::new(7, 3, false);
        b.received("r1", "solstice-0.1.0", "build (linux)", "push", ts());
        feed(
            &mut b,
            &[
                JobEvent::Phase {
                    phase: Phase::Provision,
                    detail: "image deb".into(),
                },
                line(None, LineKind::Runner, "setup line"),
                started(0, "Checkout"),
                out(0, "cloning"),
                line(None, LineKind::Runner, "job-level line while step 0 runs"),
                out(1, "wrong step: dropped"),
                out(0, "done\r"),
                finished(0, Conclusion::Success),
                line(None, LineKind::Runner, "job-level line between steps"),
                started(1, "Build"),
                line(Some(1), LineKind::GroupStart, "Compile"),
                line(Some(1), LineKind::Stderr, "warning: x\ny"),
                line(Some(1), LineKind::GroupEnd, ""),
                line(Some(1), LineKind::Annotation("warning".into()), "careful"),
                line(Some(1), LineKind::Debug, "hidden"),
                JobEvent::StepSummary {
                    index: 1,
                    markdown: "# Report\nall good\n".into(),
                },
                finished(1, Conclusion::Failure),
                started(2, "Deploy"),
                line(
                    Some(2),
                    LineKind::Runner,
                    "Skipped: `if: success()` is false",
                ),
                finished(2, Conclusion::Skipped),
                line(None, LineKind::Runner, "complete line"),
                JobEvent::JobFinished {
                    conclusion: Conclusion::Failure,
                    duration: Duration::from_secs(3),
                },
                JobEvent::Phase {
                    phase: Phase::Teardown,
                    detail: "destroying the VM".into(),
                },
            ],
        );
        let rows = contents(&mut b);
        assert_eq!(
            rows,
            [
                "r1(version:solstice-0.1.0) received task 7 of job build (linux), be triggered by event: push",
                "workflow prepared",
                "Provisioning the VM: image deb",
                "setup line",
                "cloning",
                "job-level line while step 0 runs",
                "done",
                "job-level line between steps",
                "##[group]Compile",
                "warning: x",
                "y",
                "##[endgroup]",
                "::warning::careful",
                "##[group]Summary - Build",
                "# Report",
                "all good",
                "##[endgroup]",
                "Skipped: `if: success()` is false",
                "complete line",
                "Tearing down: destroying the VM",
            ]
        );
        let st = b.state();
        assert_eq!(st.id, 7);
        assert_eq!(st.result, TaskResult::Failure as i32);
        assert!(st.started_at.is_some() && st.stopped_at.is_some());
        let spans: Vec<(i64, i64, i32)> = st
            .steps
            .iter()
            .map(|s| (s.log_index, s.log_length, s.result))
            .collect();
        assert_eq!(
            spans,
            [
                (4, 4, TaskResult::Success as i32),
                (8, 9, TaskResult::Failure as i32),
                (17, 1, TaskResult::Skipped as i32),
            ]
        );
        assert!(
            st.steps
                .iter()
                .all(|s| s.started_at.is_some() && s.stopped_at.is_some())
        );
        assert_eq!(b.total_rows(), 20);
    }

    #[test]
    fn a_step_without_rows_points_at_the_current_position() {
        let mut b = TaskStateBuilder::new(1, 2, true);
        b.received("r", "v", "j", "push", ts());
        feed(
            &mut b,
            &[
                started(0, "quiet"),
                finished(0, Conclusion::Success),
                started(1, "loud"),
                line(Some(1), LineKind::Debug, "shown"),
                finished(1, Conclusion::Success),
            ],
        );
        let st = b.state();
        assert_eq!((st.steps[0].log_index, st.steps[0].log_length), (2, 0));
        assert_eq!((st.steps[1].log_index, st.steps[1].log_length), (2, 1));
        assert_eq!(contents(&mut b)[2], "::debug::shown");
        // Rows after the last step are "Complete job".
        b.runner_row("after", ts());
        assert_eq!(contents(&mut b), ["after"]);
    }

    #[test]
    fn unfinished_steps_become_cancelled_or_skipped() {
        let mut b = TaskStateBuilder::new(1, 3, false);
        feed(
            &mut b,
            &[
                started(0, "a"),
                finished(0, Conclusion::Success),
                started(1, "b"),
                out(1, "working"),
                JobEvent::JobFinished {
                    conclusion: Conclusion::Cancelled,
                    duration: Duration::from_secs(1),
                },
            ],
        );
        let st = b.state();
        assert_eq!(st.result, TaskResult::Cancelled as i32);
        assert_eq!(st.steps[1].result, TaskResult::Cancelled as i32);
        assert!(st.steps[1].stopped_at.is_some());
        assert_eq!(st.steps[2].result, TaskResult::Cancelled as i32);
        assert!(st.steps[2].started_at.is_none());
        assert_eq!((st.steps[2].log_index, st.steps[2].log_length), (1, 0));
        // A later finish only changes the result.
        b.finish(TaskResult::Failure, ts());
        assert_eq!(b.state().result, TaskResult::Failure as i32);
        assert_eq!(b.state().steps[2].result, TaskResult::Cancelled as i32);

        let mut s = TaskStateBuilder::new(2, 2, false);
        s.finish(TaskResult::Skipped, ts());
        let st = s.state();
        assert!(
            st.steps
                .iter()
                .all(|x| x.result == TaskResult::Skipped as i32)
        );
        assert!(st.started_at.is_some());
    }

    #[test]
    fn notices_are_never_dropped_and_keep_steps_contiguous() {
        let mut b = TaskStateBuilder::new(1, 3, false);
        feed(
            &mut b,
            &[
                started(0, "a"),
                out(0, "x"),
                finished(0, Conclusion::Success),
            ],
        );
        b.notice("between", ts());
        b.handle(&started(1, "b"), ts());
        b.notice("during", ts());
        let st = b.state();
        assert_eq!((st.steps[0].log_index, st.steps[0].log_length), (0, 2));
        assert_eq!((st.steps[1].log_index, st.steps[1].log_length), (2, 1));
        assert_eq!(contents(&mut b), ["x", "between", "during"]);
    }

    #[test]
    fn suppressed_lines_are_counted_not_indexed() {
        let mut b = TaskStateBuilder::new(1, 1, false);
        b.handle(&started(0, "a"), ts());
        b.set_suppress(true);
        b.handle(&out(0, "lost 1\nlost 2"), ts());
        assert_eq!(b.total_rows(), 0);
        assert_eq!(b.set_suppress(false), 2);
        b.handle(&out(0, "kept"), ts());
        assert_eq!(b.state().steps[0].log_length, 1);
    }

    #[test]
    fn memory_spool_reads_in_chunks_and_drops_acknowledged_rows() {
        let s = MemorySpool::new();
        let row = |c: &str| LogRow {
            time: None,
            content: c.into(),
        };
        s.append(0, &[row("aaaa"), row("bb"), row("c")]).unwrap();
        // Overlapping append: only the new row is stored.
        s.append(2, &[row("c"), row("dddd")]).unwrap();
        assert_eq!(s.held(), 4);
        assert!(s.append(9, &[row("gap")]).is_err());
        let c = |v: Vec<LogRow>| v.into_iter().map(|r| r.content).collect::<Vec<_>>();
        assert_eq!(c(s.read(0, 10, 6).unwrap()), ["aaaa", "bb"]);
        assert_eq!(c(s.read(1, 2, 100).unwrap()), ["bb", "c"]);
        // A single row larger than the byte cap still goes.
        assert_eq!(c(s.read(0, 10, 1).unwrap()), ["aaaa"]);
        s.ack(2).unwrap();
        assert_eq!(s.held(), 2);
        assert_eq!(
            s.read(1, 10, 100),
            Err(SpoolError::Acknowledged { first: 2 })
        );
        assert_eq!(c(s.read(2, 10, 100).unwrap()), ["c", "dddd"]);
        assert!(s.read(4, 10, 100).unwrap().is_empty());
        s.ack(4).unwrap();
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn long_lines_become_rows_of_at_most_64_kib_without_cutting_characters() {
        assert_eq!(split_row("", 8), [""]);
        assert_eq!(split_row("abcdefgh", 8), ["abcdefgh"]);
        assert_eq!(split_row("abcdefghi", 8), ["abcdefgh", "i"]);
        // "é" is two bytes: a piece ends before a character it would cut.
        assert_eq!(split_row("abcdefgéé", 8), ["abcdefg", "éé"]);
        let mut b = TaskStateBuilder::new(1, 1, false);
        b.handle(&started(0, "long"), ts());
        let line = "€".repeat(50_000); // 3 bytes each: 150 000 bytes
        b.handle(&out(0, &format!("{line}\nshort")), ts());
        let rows = contents(&mut b);
        assert_eq!(rows.len(), 4, "three pieces and the short line");
        assert!(rows.iter().all(|r| r.len() <= MAX_ROW_BYTES));
        assert_eq!(rows[..3].concat(), line);
        assert_eq!(rows[3], "short");
        let st = b.state();
        assert_eq!((st.steps[0].log_index, st.steps[0].log_length), (0, 4));
    }

    #[test]
    fn outputs_over_the_limits_are_dropped() {
        let mut o = IndexMap::new();
        o.insert("ok".to_string(), "v".to_string());
        o.insert("k".repeat(256), "v".to_string());
        o.insert("big".to_string(), "x".repeat(MAX_OUTPUT_VALUE_BYTES + 1));
        o.insert("edge".to_string(), "x".repeat(MAX_OUTPUT_VALUE_BYTES));
        let f = filter_outputs(&o);
        assert_eq!(f.keys().collect::<Vec<_>>(), ["edge", "ok"]);
    }
}

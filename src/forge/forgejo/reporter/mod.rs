//! Streams a running task to the forge (`shared/spec/forgejo-runner-protocol.md`
//! §3.5–3.7 and §4), in three parts:
//! - [`state`]: the [`TaskStateBuilder`] (pure), which turns job events into
//!   log rows and the [`TaskState`] the forge shows;
//! - this module: [`ReporterShared`], the [`EventSink`] the job writes to,
//!   which hands finished rows to the task's [`LogSpool`] (the daemon's
//!   spool is the state database; [`crate::forge::MemorySpool`] keeps them
//!   in memory) and remembers what the forge acknowledged;
//! - [`upload`]: [`run_reporter`] (the loop that uploads every
//!   `report_interval` and notices remote cancellation) and [`finish`] (the
//!   final sequence).
//!
//! Uploads follow the forge's append/ack rule: each `UpdateLog` sends the rows
//! from the acknowledged offset; the server appends what it lacks and answers
//! with the number of rows it holds. Retrying any request is therefore
//! harmless, and no row is lost or duplicated across errors, lost responses or
//! a forge restart.

pub mod state;
pub mod upload;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use indexmap::IndexMap;
use tokio_util::sync::CancellationToken;

use super::error::ForgeError;
use super::proto::{self, LogRow, TaskResult, TaskState, Timestamp};
use crate::events::{Conclusion, EventSink, JobEvent};
use crate::forge::{LogLine, LogSpool, SpoolError};

pub use state::TaskStateBuilder;
pub use upload::{finish, run_reporter};

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
            task_id: builder.task_id(),
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
        let lines: Vec<LogLine> = rows.iter().map(row_to_line).collect();
        match self.spool.append(inner.spooled, &lines) {
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
            if let Err(e) = self.spool.ack(inner.spooled) {
                tracing::warn!(task = self.task_id, error = %e, "log spool ack failed");
            }
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

/// A log row as the spool keeps it.
fn row_to_line(row: &LogRow) -> LogLine {
    LogLine {
        time: row.time.map(system_time).unwrap_or(SystemTime::UNIX_EPOCH),
        content: row.content.clone(),
    }
}

/// A spooled line as the forge takes it.
pub(super) fn line_to_row(line: LogLine) -> LogRow {
    LogRow {
        time: Some(proto::timestamp(line.time)),
        content: line.content,
    }
}

fn system_time(t: Timestamp) -> SystemTime {
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let nanos = u32::try_from(t.nanos).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999))
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

#[cfg(test)]
mod tests {
    use super::state::split_row;
    use super::*;
    use crate::events::{LineKind, Phase};

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

//! The task state builder (pure): turns [`JobEvent`]s into log rows and the
//! [`TaskState`] the forge shows (steps with `log_index`/`log_length`,
//! "Set up job" and "Complete job" parts).

use super::MAX_ROW_BYTES;
use crate::events::{JobEvent, LineKind, Phase};
use crate::forge::forgejo::proto::{LogRow, StepState, TaskResult, TaskState, Timestamp};

/// `line` in pieces of at most `max` bytes (at least one piece, empty for an
/// empty line), never cutting a UTF-8 character.
pub(super) fn split_row(line: &str, max: usize) -> Vec<&str> {
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
    /// The task the state belongs to.
    pub fn task_id(&self) -> i64 {
        self.task_id
    }

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

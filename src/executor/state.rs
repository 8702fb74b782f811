//! The job's state machine: its status as steps end, cancellation and
//! timeouts, the records of the steps, and why a step is skipped.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use serde_json::{Map, json};

use super::action::{ActionScope, PostStage};
use super::runtime::Runtime;
use crate::events::{Conclusion, JobEvent};
use crate::workflow::Step;
use crate::workflow::expr::{Contexts, JobStatus, Value, evaluate_condition};

/// The record of one step.
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// Index in the job's `steps` (0-based, as in the events).
    pub index: usize,
    pub id: Option<String>,
    /// Masked display name.
    pub name: String,
    pub outcome: Conclusion,
    pub conclusion: Conclusion,
    pub outputs: IndexMap<String, String>,
    pub duration: Duration,
}

/// The result of [`run_job`](super::run_job).
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub conclusion: Conclusion,
    /// Job `outputs`, evaluated at the end. Outputs that contain a secret are dropped.
    pub outputs: IndexMap<String, String>,
    pub steps: Vec<StepRecord>,
    /// The job hit its `timeout-minutes` (or the host-wide cap). Its
    /// conclusion is then `Failure`, as on GitHub; the forge reporter reports
    /// such a job as cancelled, as forgejo-runner does for its own timeout.
    pub timed_out: bool,
}

/// Mutable state of a running job.
pub(super) struct JobState {
    pub(super) status: JobStatus,
    /// Set when the job timed out (job conclusion is then `failure`).
    pub(super) timed_out: bool,
    pub(super) env_files: IndexMap<String, String>,
    pub(super) path_prefix: Vec<String>,
    pub(super) steps_ctx: Map<String, Value>,
    pub(super) records: Vec<StepRecord>,
    /// The composite actions being run, innermost last.
    pub(super) scopes: Vec<ActionScope>,
    /// What the last exec wrote to `GITHUB_STATE`.
    pub(super) saved_state: IndexMap<String, String>,
    /// Saved state per action step instance ([`Site::key`](super::step::Site::key)),
    /// given to its later stages as `STATE_<name>`.
    pub(super) action_states: HashMap<String, IndexMap<String, String>>,
    /// Post stages to run at the end of the job, last registered first.
    pub(super) posts: Vec<PostStage>,
    /// Step instances whose `pre` stage ran (they get their post even when
    /// their main stage is skipped).
    pub(super) pre_ran: HashSet<String>,
}

impl JobState {
    pub(super) fn new() -> JobState {
        JobState {
            status: JobStatus::Success,
            timed_out: false,
            env_files: IndexMap::new(),
            path_prefix: Vec::new(),
            steps_ctx: Map::new(),
            records: Vec::new(),
            scopes: Vec::new(),
            saved_state: IndexMap::new(),
            action_states: HashMap::new(),
            posts: Vec::new(),
            pre_ran: HashSet::new(),
        }
    }
}

pub(super) fn is_true(s: &str) -> bool {
    s.trim().eq_ignore_ascii_case("true")
}

pub(super) fn conclusion_str(c: Conclusion) -> &'static str {
    c.as_str()
}

/// Longest timeout honoured (ten years): larger values are clamped, so any
/// number a user writes stays a valid deadline.
pub(super) const MAX_TIMEOUT_MINUTES: f64 = 10.0 * 365.0 * 24.0 * 60.0;

/// Parses a `timeout-minutes` value (fractions allowed).
pub(super) fn minutes(s: &str) -> Option<Duration> {
    let m: f64 = s.trim().parse().ok()?;
    (m.is_finite() && m > 0.0).then(|| Duration::from_secs_f64(m.min(MAX_TIMEOUT_MINUTES) * 60.0))
}

impl Runtime<'_> {
    /// Marks the job cancelled or timed out when that has happened.
    pub(super) fn check_job_state(&self, state: &mut JobState) {
        if state.status == JobStatus::Cancelled {
            return;
        }
        if self.cancel.is_cancelled() {
            state.status = JobStatus::Cancelled;
            self.em.runner(None, "The job was cancelled");
        } else if Instant::now() >= self.job_deadline {
            self.mark_timed_out(state);
        }
    }

    pub(super) fn mark_timed_out(&self, state: &mut JobState) {
        // Inside a composite action the status is the composite's: it is
        // set there too, the message is given once.
        state.status = JobStatus::Cancelled;
        if state.timed_out {
            return;
        }
        state.timed_out = true;
        self.em.error(
            None,
            format!(
                "The job has exceeded its maximum execution time of {:.1} minutes (timeout-minutes); \
                 the remaining steps run only with `if: always()` or `cancelled()`",
                self.job_timeout.as_secs_f64() / 60.0
            ),
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn record(
        &self,
        state: &mut JobState,
        index: usize,
        step: &Step,
        name: String,
        outcome: Conclusion,
        conclusion: Conclusion,
        outputs: IndexMap<String, String>,
        started: Instant,
    ) {
        let duration = started.elapsed();
        self.em.emit(JobEvent::StepFinished {
            index,
            outcome,
            conclusion,
            duration,
        });
        self.record_child(state, step, outcome, conclusion, outputs.clone());
        state.records.push(StepRecord {
            index,
            id: step.id.clone(),
            name: self.em.mask(&name),
            outcome,
            conclusion,
            outputs,
            duration,
        });
    }
}

impl Runtime<'_> {
    /// Records a step in the `steps` context (for a step of a composite
    /// action, that is all: the composite's own `steps` context).
    pub(super) fn record_child(
        &self,
        state: &mut JobState,
        step: &Step,
        outcome: Conclusion,
        conclusion: Conclusion,
        outputs: IndexMap<String, String>,
    ) {
        if let Some(id) = &step.id {
            state.steps_ctx.insert(
                id.clone(),
                json!({
                    "outputs": outputs,
                    "outcome": conclusion_str(outcome),
                    "conclusion": conclusion_str(conclusion),
                }),
            );
        }
    }
}

/// The line that says why a step did not run. A step without `if:` (or whose
/// `if:` has no status function) runs only while the job succeeds, as on
/// GitHub: when that implied `success()` is what failed, the line says so
/// instead of blaming the user's condition.
pub(super) fn skip_reason(explicit_if: Option<&str>, ctx: &Contexts, state: &JobState) -> String {
    let status = match state.status {
        JobStatus::Success => None,
        JobStatus::Failure => Some("an earlier step failed"),
        JobStatus::Cancelled if state.timed_out => Some("the job timed out"),
        JobStatus::Cancelled => Some("the job was cancelled"),
    };
    match (explicit_if, status) {
        (None, Some(why)) => format!("Skipped: {why}"),
        (None, None) => "Skipped: `if: success()` is false".to_string(),
        (Some(cond), Some(why)) => {
            // Would the user's condition have let the step run had the job
            // succeeded so far? Then the implied `success()` is the reason.
            let mut succeeded = ctx.clone();
            succeeded.status = JobStatus::Success;
            if evaluate_condition(cond, &succeeded).unwrap_or(false) {
                if has_status_function(cond) {
                    format!("Skipped: {why} (`if: {cond}`)")
                } else {
                    format!(
                        "Skipped: {why} (an `if:` without success(), failure(), always() or cancelled() runs only while the job succeeds)"
                    )
                }
            } else {
                format!("Skipped: `if: {cond}` is false")
            }
        }
        (Some(cond), None) => format!("Skipped: `if: {cond}` is false"),
    }
}

/// Whether a condition's text calls a status function (for the wording of
/// [`skip_reason`] only).
pub(super) fn has_status_function(cond: &str) -> bool {
    let c: String = cond
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    ["success(", "failure(", "always(", "cancelled("]
        .iter()
        .any(|f| c.contains(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_positive_and_clamped() {
        assert_eq!(minutes("0.5"), Some(Duration::from_secs(30)));
        assert_eq!(minutes("0"), None);
        assert_eq!(minutes("-1"), None);
        assert_eq!(minutes("NaN"), None);
        let huge = minutes("1e18").unwrap();
        assert_eq!(huge, Duration::from_secs_f64(MAX_TIMEOUT_MINUTES * 60.0));
        // A clamped deadline is still a valid instant.
        let _ = std::time::Instant::now() + huge;
    }
}

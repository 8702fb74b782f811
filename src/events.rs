//! What a running job reports. `solstice exec` prints these; the forge reporter
//! (later) uploads them. Every `Line` is already masked by the executor.

use std::time::Duration;

/// Result of a step or job, with GitHub's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conclusion {
    Success,
    Failure,
    Cancelled,
    Skipped,
}

impl Conclusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
            Conclusion::Cancelled => "cancelled",
            Conclusion::Skipped => "skipped",
        }
    }
}

/// Phases before the first step, for progress output and timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Overlay, seed and QEMU process being created.
    Provision,
    /// QEMU started; waiting for the guest to accept SSH.
    Boot,
    /// SSH ready; job steps about to run.
    Ready,
    /// VM being destroyed.
    Teardown,
}

impl Phase {
    /// The phase's name in progress lines (`[solstice] boot: …`).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Provision => "provision",
            Phase::Boot => "boot",
            Phase::Ready => "ready",
            Phase::Teardown => "teardown",
        }
    }
}

/// What kind of line this is, after workflow-command parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineKind {
    Stdout,
    Stderr,
    /// `::debug::`
    Debug,
    /// `::notice::`, `::warning::`, `::error::` (the kind name is the command).
    Annotation(String),
    /// `::group::title`
    GroupStart,
    /// `::endgroup::`
    GroupEnd,
    /// A line written by Solstice itself (boot progress, step setup, errors).
    Runner,
}

#[derive(Debug, Clone)]
pub enum JobEvent {
    /// Progress before steps run. `detail` is human readable (accelerator, port...).
    Phase {
        phase: Phase,
        detail: String,
    },
    StepStarted {
        index: usize,
        name: String,
    },
    /// One masked output line (no trailing newline). `step` is `None` for lines
    /// outside any step (boot progress, job-level errors).
    Line {
        step: Option<usize>,
        kind: LineKind,
        text: String,
    },
    StepFinished {
        index: usize,
        /// Result before `continue-on-error` is applied.
        outcome: Conclusion,
        /// Result after `continue-on-error` is applied.
        conclusion: Conclusion,
        duration: Duration,
    },
    /// Masked content written to `GITHUB_STEP_SUMMARY` by a step.
    StepSummary {
        index: usize,
        markdown: String,
    },
    JobFinished {
        conclusion: Conclusion,
        duration: Duration,
    },
}

/// Receives job events. Implementations must not block for long.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: JobEvent);
}


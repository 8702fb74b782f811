//! Drives one job's steps through a guest session and reports [`JobEvent`](crate::events::JobEvent)s.
//!
//! Per `run:` step the guest sees **one** exec: `cd STEPS && tar xf - && exec sh
//! step-N/wrapper.sh`, with a small tar (script, wrapper, empty file-command
//! files) on stdin. The wrapper exports the environment, enters the working
//! directory, runs the script, then prints a random marker line followed by the
//! contents of `GITHUB_ENV`/`GITHUB_OUTPUT`/`GITHUB_PATH`/`GITHUB_STEP_SUMMARY`,
//! so no second round trip is needed to read them back. A timeout or
//! cancellation costs one more exec (`kill -TERM` of the step's process group,
//! then `kill -KILL` after [`KILL_GRACE`]).
//!
//! Every event goes through one emitter (`emit`), which masks secrets and values
//! registered with `::add-mask::`, so no sink ever sees an unmasked line.
//!
//! `::debug::` lines are emitted (as [`LineKind::Debug`](crate::events::LineKind::Debug)) only when the secret or
//! variable `ACTIONS_STEP_DEBUG` is `true`, as on GitHub; otherwise they are
//! dropped. `RUNNER_DEBUG=1` is set when `ACTIONS_RUNNER_DEBUG` is `true`.
//!
//! The modules, in the order a job meets them: `runtime` (the job's run),
//! `probe` (the guest at job start, its clock), `context` (expression
//! contexts), `state` (status, timeouts, step records), `step` (one
//! step), `exec` (one wrapped exec), `output` (its output), `emit`
//! (masking), `checkout_step` (`actions/checkout`); beside them the pure
//! helpers (`shell`, `env`, `commands`, `filecmd`, `mask`,
//! `clock`, `checkout`, `archive`, `preflight`).
//!
//! The job itself ([`crate::job::JobSpec`], [`crate::job::RunnerInfo`]) is
//! defined in [`crate::job`]; the executor never reaches up into the VM run.

mod action;
pub mod archive;
pub mod checkout;
mod checkout_step;
pub mod clock;
pub mod commands;
mod containers;
mod context;
mod emit;
pub mod env;
mod error;
mod exec;
pub mod filecmd;
mod hashfiles;
pub mod mask;
mod node;
mod output;
pub mod preflight;
mod probe;
mod runtime;
pub mod scrub;
pub mod shell;
mod state;
mod step;
mod vm_step;
pub mod vmactions;

use std::time::Duration;

pub use runtime::run_job;
pub use state::{JobOutcome, StepRecord};

/// Time between `kill -TERM` and `kill -KILL` of a step's processes, and after
/// `-KILL` before the step is abandoned.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// Timeout of a job without `timeout-minutes`: 180 minutes. Not GitHub's
/// 360: Forgejo and Gitea fail any task after 3 hours
/// (`ENDLESS_TASK_TIMEOUT`), so a longer default would only let the forge,
/// rather than the runner, end the job. `solstice exec` uses it too.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(180 * 60);
/// Upper bound for each `always()`/`cancelled()` step that runs after the job
/// was cancelled or timed out.
pub const AFTER_CANCEL_STEP_LIMIT: Duration = Duration::from_secs(5 * 60);

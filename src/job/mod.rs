//! The neutral middle between the forges, `solstice exec` and the executor:
//! what a job is ([`spec`]), where it runs ([`placement`]: `runs-on` and the
//! image), what it is called ([`id`]), and one VM run ([`run`]: provision,
//! boot, execute, tear down).
//!
//! Direction of use: `cli`, `daemon`, `forge` and `bench` use `job`; `job`
//! uses the executor, `vm`, `ssh` and `store`, never the other way round
//! (the executor knows only [`spec`]).

pub mod id;
pub mod placement;
pub mod run;
pub mod spec;

pub use run::{
    BOOT_FAILURE_CONSOLE_LINES, BOOT_FAILURES_DIR, BootRequest, DebugHold, FailedGuest, ReadyGuest,
    RunError, RunReport, StartKind, Timings, VmObserver, VmRun, WarmSource, boot_failure_console,
    boot_ready, jobs_dir, run_in_vm, runner_line, succeeded,
};
pub use spec::{CheckoutSource, JobSpec, RunnerArch, RunnerInfo};

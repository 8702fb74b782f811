//! One task from fetch to final report, in stages:
//! - [`receive`]: record the task, start its report (which streams to the
//!   forge from then on), count it as running;
//! - [`execute`]: check the job, place it on an image, wait for the image's
//!   slot and run it in a VM ([`run_job`]);
//! - [`conclude`]: close the report, record the end and wait until the
//!   forge has the whole report;
//! - [`report_late`]: when the forge was away too long, keep trying in the
//!   background while the daemon runs (the next start sends it otherwise).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::record::JobRecord;
use super::slots::HostSlot;
use super::spool::StoreSpool;
use super::{RunningJob, Shared};
use crate::config::{ForgeConfig, ImageConfig};
use crate::errors::Chain;
use crate::events::Conclusion;
use crate::forge::{
    AssignedJob, Assignment, Failure, LogSpool, MemorySpool, TaskReport, Unrunnable,
};
use crate::job::id::daemon_job_id;
use crate::job::placement::{Fallback, choose_image};
use crate::job::{self, VmObserver, VmRun};
use crate::metrics::LatencySplit;
use crate::store::{JobState, JobTimings, NewJob, StoreError};

/// Pause between attempts at a final report that did not get through.
const REPORT_RETRY: Duration = Duration::from_secs(30);

/// Runs one task to the end. Never panics on bad input: every problem ends
/// as a failed task with an explanation in its log.
pub(crate) async fn run_task(
    shared: Arc<Shared>,
    forge: ForgeConfig,
    assignment: Assignment,
    host_slot: HostSlot,
) {
    let (task, job) = receive(&shared, &forge, assignment);
    let ending = execute(&shared, &task, job).await;
    conclude(&shared, task, ending, host_slot).await;
}

/// A task between [`receive`] and the end of its report.
struct TaskRun {
    forge: String,
    /// The name the job sees as `runner.name` (the forge's `runner_name`).
    runner_name: String,
    task_id: i64,
    /// `owner/name` (empty when unknown).
    repository: String,
    record: Arc<JobRecord>,
    /// The job is in the state database: a crash is reported at the next start.
    recorded: bool,
    received: Instant,
    report: Arc<dyn TaskReport>,
    /// Cancels the job (the forge cancelled it, or the drain is over).
    cancel: CancellationToken,
    /// The report's upload loop ([`TaskReport::run`]).
    uploader: JoinHandle<Result<(), Failure>>,
    /// Saves the report's state while it changes.
    saver: JoinHandle<()>,
}

/// How the job ended, for its report.
struct Ending {
    conclusion: Conclusion,
    outputs: IndexMap<String, String>,
    /// A last line for the task log.
    error: Option<String>,
}

impl Ending {
    fn failed(error: String) -> Ending {
        Ending {
            conclusion: Conclusion::Failure,
            outputs: IndexMap::new(),
            error: Some(error),
        }
    }

    fn cancelled() -> Ending {
        Ending {
            conclusion: Conclusion::Cancelled,
            outputs: IndexMap::new(),
            error: None,
        }
    }
}

/// Records the task (before anything else exists, so that a crash from here
/// on is reported at the next start), starts its report and counts it as
/// running.
fn receive(
    shared: &Arc<Shared>,
    forge: &ForgeConfig,
    assignment: Assignment,
) -> (TaskRun, Result<AssignedJob, Unrunnable>) {
    let Assignment {
        task_id,
        received,
        job_name,
        repository,
        step_count,
        job,
        report,
    } = assignment;
    let job_id = daemon_job_id(&forge.name, task_id);
    tracing::info!(forge = %forge.name, task = task_id, job = %job_name, repository = %repository, id = %job_id, "task received");
    let store = shared.store.clone();
    let recorded = store.insert_job(&NewJob {
        id: job_id.clone(),
        forge: forge.name.clone(),
        task_id,
        job_name,
        repository: repository.clone(),
        image: None,
        received_at: std::time::SystemTime::now(),
    });
    if let Err(e) = &recorded {
        tracing::error!(task = task_id, error = %e, "could not record the task in the state database; it runs without crash recovery");
    }
    let recorded = recorded.is_ok();
    let record = Arc::new(JobRecord::new(store.clone(), job_id.clone(), !recorded));
    record.set_steps(step_count);

    let spool: Arc<dyn LogSpool> = if recorded {
        Arc::new(StoreSpool {
            store,
            job_id: job_id.clone(),
            acked: Mutex::new(0),
        })
    } else {
        Arc::new(MemorySpool::new())
    };
    let report = report.start(spool);
    let cancel = CancellationToken::new();
    if let Ok(mut r) = shared.running.lock() {
        r.insert(
            job_id,
            RunningJob {
                forge: forge.name.clone(),
                task_id,
                cancel: cancel.clone(),
                reporter: report.clone(),
            },
        );
    }
    shared.metrics.job_started();
    shared.update_status();
    let uploader = {
        let report = report.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { report.run(cancel).await })
    };
    let saver = tokio::spawn(save_states(record.clone(), report.clone()));
    let task = TaskRun {
        forge: forge.name.clone(),
        runner_name: forge.runner_name.clone(),
        task_id,
        repository,
        record,
        recorded,
        received,
        report,
        cancel,
        uploader,
        saver,
    };
    (task, job)
}

/// Checks and places the job, waits for its image's slot and runs it.
async fn execute(shared: &Shared, task: &TaskRun, job: Result<AssignedJob, Unrunnable>) -> Ending {
    let mut job = match job {
        Ok(job) => job,
        Err(u) => {
            tracing::warn!(forge = %task.forge, task = task.task_id, error = %Chain(&*u.error), "task payload cannot be run");
            return Ending::failed(u.log_text());
        }
    };
    for note in &job.notes {
        job::runner_line(task.report.as_ref(), note.clone());
    }
    job.spec.actions = Some(shared.actions.clone());
    job.spec.cache = shared.cache.clone();
    let image = match place(shared, task, &job) {
        Ok(image) => image,
        Err(ending) => return ending,
    };
    task.record.set_image(&image.name);
    let _image_slot = tokio::select! {
        s = shared.slots.image_slot(&image.name) => s,
        _ = task.cancel.cancelled() => return Ending::cancelled(),
    };
    let forge = shared.config.forges.get(&task.forge);
    run_job(shared, task, image, &job, forge).await
}

/// The image the job runs on; a job that cannot run as it is, or on no
/// image of this runner, fails before any VM starts.
fn place<'c>(
    shared: &'c Shared,
    task: &TaskRun,
    job: &AssignedJob,
) -> Result<&'c ImageConfig, Ending> {
    let spec = &job.spec;
    let problems = match spec.workflow.jobs.get(&spec.job_id) {
        Some(j) => crate::executor::preflight::preflight(&spec.workflow, &spec.job_id, j),
        None => Vec::new(),
    };
    if !problems.is_empty() {
        let msg = format!(
            "This job cannot run as it is; no VM was started:\n{}",
            problems.join("\n")
        );
        tracing::warn!(forge = %task.forge, task = task.task_id, problems = problems.len(), "job rejected before boot");
        return Err(Ending::failed(msg));
    }
    let images = &shared.config.images;
    match choose_image(
        images,
        job.image.as_deref(),
        &job.runs_on,
        Fallback::Assigned,
    ) {
        Ok(placed) => Ok(placed.image),
        Err(e) => {
            let msg = e.to_string();
            tracing::warn!(forge = %task.forge, task = task.task_id, "{msg}");
            Err(Ending::failed(msg))
        }
    }
}

/// Runs the job in a VM, the job's events going to its report.
async fn run_job(
    shared: &Shared,
    task: &TaskRun,
    image: &ImageConfig,
    job: &AssignedJob,
    forge: Option<&ForgeConfig>,
) -> Ending {
    let observer = StoreObserver {
        record: task.record.clone(),
    };
    let hold = debug_hold(shared, task, image, job, forge);
    let sink = StateSink {
        report: task.report.as_ref(),
        record: &task.record,
        started: Mutex::new(false),
    };
    let run = VmRun {
        config: &shared.config,
        image,
        accel: &shared.accel,
        job_id: &task.record.id,
        spec: &job.spec,
        runner_name: &task.runner_name,
        observer: task.recorded.then_some(&observer as &dyn VmObserver),
        debug: hold.as_ref().map(|h| h as &dyn job::DebugHold),
        warm: shared
            .warm
            .as_ref()
            .map(|w| w as &dyn crate::job::WarmSource),
    };
    let t_run = Instant::now();
    match shared.jobs.run(&run, &sink, &task.cancel).await {
        Ok(report) => {
            record_latency(shared, task, t_run, &report.timings);
            let conclusion = if report.outcome.timed_out {
                Conclusion::Cancelled
            } else {
                report.outcome.conclusion
            };
            Ending {
                conclusion,
                outputs: report.outcome.outputs,
                error: None,
            }
        }
        Err(job::RunError::Cancelled) => Ending::cancelled(),
        Err(e) => {
            let mut text = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                text.push_str(&format!("\ncaused by: {s}"));
                src = s.source();
            }
            tracing::warn!(forge = %task.forge, task = task.task_id, error = %text, "job could not run");
            Ending::failed(text)
        }
    }
}

/// The offer handler for a job that asks for debug SSH (on a runner that
/// does not allow it, it only says so in the log when the job fails);
/// `None` for the others (the VM is destroyed as usual).
fn debug_hold<'a>(
    shared: &'a Shared,
    task: &'a TaskRun,
    image: &'a ImageConfig,
    job: &AssignedJob,
    forge: Option<&ForgeConfig>,
) -> Option<super::debug::TaskHold<'a>> {
    use crate::debug::policy;
    let spec = &job.spec;
    let asked = policy::asks(&spec.workflow.env)
        || spec
            .workflow
            .jobs
            .get(&spec.job_id)
            .is_some_and(|j| policy::asks(&j.env));
    if !asked {
        return None;
    }
    let has_secrets = spec.secrets.iter().any(|(name, value)| {
        !matches!(
            name.as_str(),
            "GITHUB_TOKEN" | "GITEA_TOKEN" | "FORGEJO_TOKEN"
        ) && !value.expose().is_empty()
    });
    let default_forge = crate::config::ForgeDebugSsh::default();
    let decision = policy::decide(
        shared.config.debug_ssh.as_ref(),
        forge.map_or(&default_forge, |f| &f.debug_ssh),
        &policy::Request {
            repository: &task.repository,
            github: &spec.github,
            has_secrets,
        },
    );
    Some(super::debug::TaskHold {
        shared,
        holds: shared.debug.as_ref(),
        forge: &task.forge,
        repository: &task.repository,
        decision,
        user_keys: job.user_keys.clone(),
        record: task.record.clone(),
        recorded: task.recorded,
        image: &image.name,
    })
}

/// Closes the report and waits until the forge has it; the host slot is
/// held until then (the forge counts the task as running on this runner).
async fn conclude(shared: &Shared, task: TaskRun, ending: Ending, host_slot: HostSlot) {
    let TaskRun {
        forge,
        task_id,
        record,
        report,
        cancel,
        uploader,
        saver,
        ..
    } = task;
    let leave = || {
        if let Ok(mut r) = shared.running.lock() {
            r.remove(&record.id);
        }
        shared.update_status();
    };
    if report.is_gone() {
        // The forge deleted the task (or it is not ours): the reporter
        // logged it, cancelled the job (the VM is gone now) and dropped
        // what was not sent. Nothing of it is ever sent again.
        record.give_up();
        shared.metrics.job_finished(&forge, "cancelled");
        leave();
        if let Err(e) = uploader.await {
            tracing::error!(task = task_id, error = %e, "the reporter panicked");
        }
        saver.abort();
        drop(host_slot);
        return;
    }
    record.set_state(JobState::Reporting);
    report.close(ending.conclusion, &ending.outputs, ending.error.as_deref());
    if ending.conclusion == Conclusion::Success
        && !ending.outputs.is_empty()
        && let Ok(json) = serde_json::to_string(&ending.outputs)
    {
        record.save_outputs(&json);
    }
    let result = report.result().map(Conclusion::as_str).unwrap_or("");
    record.finish(result);
    shared.metrics.job_finished(&forge, result);
    leave();

    let reported = match uploader.await {
        Ok(Ok(())) => true,
        Ok(Err(e)) if e.is_task_gone() => {
            // Logged by the reporter, once.
            saver.abort();
            record.give_up();
            drop(host_slot);
            return;
        }
        Ok(Err(e)) if e.is_unauthenticated() => {
            shared.metrics.forge_error(&forge, "report");
            tracing::error!(forge = %forge, task = task_id, error = %Chain(&e), "the forge refuses this report");
            false
        }
        Ok(Err(e)) => {
            shared.metrics.forge_error(&forge, "report");
            tracing::warn!(forge = %forge, task = task_id, error = %Chain(&e), "the final report has not reached the forge yet; retrying every 30 s in the background");
            false
        }
        Err(e) => {
            tracing::error!(task = task_id, error = %e, "the reporter panicked");
            false
        }
    };
    saver.abort();
    record.save_task_state(&report.save());
    if reported {
        record.reported();
        tracing::info!(forge = %forge, task = task_id, result, "task reported");
        drop(host_slot);
        return;
    }
    // The forge is unreachable for longer than the reporter's budget: free
    // the slot, keep the report in the database and keep trying while the
    // daemon runs (the next start sends it otherwise).
    drop(host_slot);
    report_late(
        shared,
        &forge,
        task_id,
        &record,
        report.as_ref(),
        &cancel,
        result,
    )
    .await;
}

/// Retries the final report every [`REPORT_RETRY`] until it gets through,
/// the forge refuses it for good, or the daemon stops fetching.
async fn report_late(
    shared: &Shared,
    forge: &str,
    task_id: i64,
    record: &JobRecord,
    report: &dyn TaskReport,
    cancel: &CancellationToken,
    result: &str,
) {
    loop {
        tokio::select! {
            _ = shared.stop_fetching.cancelled() => return,
            _ = tokio::time::sleep(REPORT_RETRY) => {}
        }
        match report.finish(cancel).await {
            Ok(()) => {
                record.reported();
                tracing::info!(forge, task = task_id, result, "task reported (late)");
                return;
            }
            Err(e) if e.is_unauthenticated() => {
                tracing::error!(
                    forge,
                    task = task_id,
                    "the final report is kept and sent again at the next start, once the runner's credentials are fixed"
                );
                return;
            }
            Err(e) if e.is_task_gone() => {
                // Logged by the reporter, once.
                record.give_up();
                return;
            }
            Err(e) => {
                tracing::debug!(forge, task = task_id, error = %Chain(&e), "late report failed again")
            }
        }
    }
}

/// Records the VM's resources in the state database before they exist.
struct StoreObserver {
    record: Arc<JobRecord>,
}

impl VmObserver for StoreObserver {
    fn before_start(&self, dir: &std::path::Path) -> Result<(), StoreError> {
        self.record.set_state(JobState::Provisioning);
        self.record.store.record_vm(&self.record.id, dir)
    }

    fn started(&self, pid: u32, ssh_port: u16) {
        let r = &self.record;
        if let Err(e) = r.store.record_vm_process(&r.id, pid, ssh_port) {
            tracing::warn!(job = %r.id, error = %e, "could not record the VM's process");
        }
        r.set_state(JobState::Booting);
    }

    fn destroyed(&self) {
        let r = &self.record;
        if let Err(e) = r.store.forget_vm(&r.id) {
            tracing::warn!(job = %r.id, error = %e, "could not forget the VM record");
        }
    }
}

/// The job's events on their way to the report: marks the job running when
/// its first step starts, and saves the report's state at each step change
/// (a crash report then keeps every step's result so far).
struct StateSink<'a> {
    report: &'a dyn TaskReport,
    record: &'a JobRecord,
    started: Mutex<bool>,
}

impl crate::events::EventSink for StateSink<'_> {
    fn emit(&self, event: crate::events::JobEvent) {
        use crate::events::JobEvent;
        if matches!(event, JobEvent::StepStarted { .. })
            && let Ok(mut s) = self.started.lock()
            && !*s
        {
            *s = true;
            self.record.set_state(JobState::Running);
        }
        let step_change = matches!(
            event,
            JobEvent::StepStarted { .. } | JobEvent::StepFinished { .. }
        );
        self.report.emit(event);
        if step_change {
            self.record.save_task_state(&self.report.save());
        }
    }
}

/// Saves the report's state every second while it changes.
async fn save_states(record: Arc<JobRecord>, report: Arc<dyn TaskReport>) {
    let mut last = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let bytes = report.save();
        if bytes != last {
            record.save_task_state(&bytes);
            last = bytes;
        }
    }
}

/// Latency from task receipt to the first step, split into provision, boot,
/// SSH-ready and first step; into the metrics and the state database.
fn record_latency(shared: &Shared, task: &TaskRun, run_started: Instant, t: &job::Timings) {
    // Provision: receipt (incl. waiting for an image slot) to QEMU spawned.
    let provision = run_started.saturating_duration_since(task.received) + t.prepare;
    let boot = t.boot_to_banner.unwrap_or(t.boot_to_ssh);
    let ssh_ready = t.boot_to_ssh.saturating_sub(boot);
    let split = LatencySplit {
        task_to_first_step: t.first_step.map(|f| provision + t.boot_to_ssh + f),
        provision: Some(provision),
        boot: Some(boot),
        ssh_ready: Some(ssh_ready),
        first_step: t.first_step,
    };
    shared.metrics.observe_latency(&split);
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    task.record.record_timings(&JobTimings {
        provision_ms: Some(ms(provision)),
        boot_ms: Some(ms(boot)),
        ssh_ready_ms: Some(ms(ssh_ready)),
        first_step_ms: t.first_step.map(ms),
    });
}

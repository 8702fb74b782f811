//! Start-up clean-up of what a previous run left behind: VMs (processes and
//! job directories) and tasks whose final report never reached the forge.

use std::path::Path;
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::record::JobRecord;
use super::spool::StoreSpool;
use crate::events::Conclusion;
use crate::forge::{ResumedTask, Session, TaskReport};
use crate::store::{JobRow, JobState, Store};

/// Kills and removes every VM a previous run left (blocking; before any job starts).
pub(crate) fn leftover_vms(store: &Store, jobs_dir: &Path) {
    let report = crate::store::reconcile_vms(store, jobs_dir);
    for k in &report.killed {
        tracing::warn!(pid = k.pid, dir = %k.dir.display(), "killed a QEMU left by a previous run");
    }
    for d in &report.removed_dirs {
        tracing::info!(dir = %d.display(), "removed a job directory left by a previous run");
    }
    for p in &report.problems {
        tracing::error!("reconcile: {p}");
    }
}

/// Unfinished jobs of forges that are no longer configured cannot be
/// reported: they are closed here as failed, with a warning, so they do not
/// stay "in flight" forever.
pub(crate) fn orphaned_forges(store: &Arc<Store>, config: &crate::config::Config) {
    // What can be listed is closed; a listing that fails is logged (at
    // error level) by each forge's `interrupted_tasks`, so only here at debug.
    let mut jobs = store.unfinished_jobs().unwrap_or_else(|e| {
        tracing::debug!(error = %e, "cannot list interrupted jobs");
        Vec::new()
    });
    match store.unreported_finished_jobs() {
        Ok(j) => jobs.extend(j),
        Err(e) => tracing::debug!(error = %e, "cannot list unreported jobs"),
    }
    for job in jobs
        .into_iter()
        .filter(|j| !config.forges.contains_key(&j.forge))
    {
        tracing::warn!(
            forge = %job.forge,
            task = job.task_id,
            "an interrupted task belongs to a forge no longer in the config; it cannot be reported and is closed here as failed (the forge shows it running until its own timeout)"
        );
        let record = JobRecord::new(store.clone(), job.id.clone(), false);
        if job.state != JobState::Finished {
            record.finish("failure");
        }
        record.reported();
    }
}

/// Jobs a previous run left unfinished, then those finished but not
/// reported; `None` when the unfinished ones cannot be listed (logged).
fn leftover_jobs(store: &Store) -> Option<Vec<JobRow>> {
    let mut jobs = match store.unfinished_jobs() {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "cannot list interrupted jobs");
            return None;
        }
    };
    match store.unreported_finished_jobs() {
        Ok(j) => jobs.extend(j),
        Err(e) => tracing::error!(error = %e, "cannot list unreported jobs"),
    }
    Some(jobs)
}

/// Reports to `forge` every task of it that a previous run left unfinished
/// (as failed, with a log line saying why) or finished but unreported.
pub(crate) async fn interrupted_tasks(shared: &Arc<Shared>, forge: &str, session: &dyn Session) {
    let Some(jobs) = leftover_jobs(&shared.store) else {
        return;
    };
    for job in jobs.into_iter().filter(|j| j.forge == forge) {
        let record = Arc::new(JobRecord::new(shared.store.clone(), job.id.clone(), false));
        let report = resume(session, &record, &job);
        let interrupted = job.state != JobState::Finished;
        let (conclusion, why) = if interrupted {
            (
                Conclusion::Failure,
                Some(format!(
                    "The runner stopped while this job was {} (the daemon was killed or the host went down); its VM was destroyed when the runner started again. The job is marked failed: re-run it.",
                    job.state
                )),
            )
        } else {
            let c = match job.result.as_deref().unwrap_or("failure") {
                "success" => Conclusion::Success,
                "cancelled" => Conclusion::Cancelled,
                "skipped" => Conclusion::Skipped,
                _ => Conclusion::Failure,
            };
            (c, None)
        };
        // A finished job's outputs, kept until the forge has them.
        let outputs: IndexMap<String, String> = record
            .check("read the job's outputs", shared.store.outputs(&job.id))
            .flatten()
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default();
        report.close(conclusion, &outputs, why.as_deref());
        let result = report.result().map(Conclusion::as_str).unwrap_or("");
        if interrupted {
            record.finish(result);
        }
        tracing::info!(
            forge,
            task = job.task_id,
            result,
            "reporting a task left by a previous run"
        );
        // Each job is reported on its own, so one that cannot get through
        // does not hold up the others.
        let shared = shared.clone();
        let forge = forge.to_owned();
        let tracker = shared.tasks.clone();
        tracker.spawn(async move {
            send_report(
                &shared,
                &forge,
                job.task_id,
                &record,
                report.as_ref(),
                result,
            )
            .await
        });
    }
}

/// The report of a job a previous run left, continued from its saved state
/// and its spooled log lines.
fn resume(session: &dyn Session, record: &JobRecord, job: &JobRow) -> Arc<dyn TaskReport> {
    let store = &record.store;
    let saved = record
        .check("read the saved task state", store.task_state(&job.id))
        .flatten();
    let spooled = record
        .check("count the spooled log lines", store.log_end(&job.id))
        .unwrap_or(0);
    let acked = u64::try_from(job.log_ack).unwrap_or(0);
    session.resume(ResumedTask {
        task_id: job.task_id,
        saved,
        step_count: usize::try_from(job.n_steps.unwrap_or(0)).unwrap_or(0),
        spooled: u64::try_from(spooled).unwrap_or(0),
        acked,
        spool: Arc::new(StoreSpool {
            store: store.clone(),
            job_id: job.id.clone(),
            acked: Mutex::new(acked),
        }),
    })
}

/// Sends a left job's report until it gets through, the forge refuses it
/// for good, or the daemon stops.
async fn send_report(
    shared: &Shared,
    forge: &str,
    task_id: i64,
    record: &JobRecord,
    report: &dyn TaskReport,
    result: &str,
) {
    let cancel = CancellationToken::new();
    loop {
        match report.finish(&cancel).await {
            Ok(()) => {
                record.reported();
                record.save_task_state(&report.save());
                tracing::info!(forge, task = task_id, result, "reported");
                return;
            }
            Err(e) if e.is_unauthenticated() => {
                tracing::error!(
                    forge,
                    task = task_id,
                    "the forge does not accept this runner's credentials; the task is reported at a later start"
                );
                return;
            }
            Err(e) if e.is_task_gone() => {
                // Logged by the reporter, once; never tried again.
                record.give_up();
                return;
            }
            Err(e) => {
                tracing::warn!(forge, task = task_id, error = %crate::errors::Chain(&e), "reporting the interrupted task failed; retrying");
                tokio::select! {
                    _ = shared.stop_fetching.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
                }
            }
        }
    }
}

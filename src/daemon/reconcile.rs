//! Start-up clean-up of what a previous run left behind: VMs (processes and
//! job directories) and tasks whose final report never reached the forge.

use std::path::Path;
use std::sync::{Arc, Mutex};

use prost::Message;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::task::StoreSpool;
use crate::forge::client::ForgejoClient;
use crate::forge::proto::{TaskResult, TaskState};
use crate::forge::reporter::{ReporterConfig, ReporterShared, TaskStateBuilder, finish};
use crate::store::{JobState, Store};

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
pub(crate) fn orphaned_forges(store: &Store, config: &crate::config::Config) {
    let mut jobs = store.unfinished_jobs().unwrap_or_default();
    jobs.extend(store.unreported_finished_jobs().unwrap_or_default());
    for job in jobs
        .into_iter()
        .filter(|j| !config.forges.contains_key(&j.forge))
    {
        tracing::warn!(
            forge = %job.forge,
            task = job.task_id,
            "an interrupted task belongs to a forge no longer in the config; it cannot be reported and is closed here as failed (the forge shows it running until its own timeout)"
        );
        if job.state != JobState::Finished {
            let _ = store.finish_job(&job.id, "failure", std::time::SystemTime::now());
        }
        let _ = store.mark_reported(&job.id);
        let _ = store.delete_job_logs(&job.id);
    }
}

/// Reports to `forge` every task of it that a previous run left unfinished
/// (as failed, with a log line saying why) or finished but unreported.
pub(crate) async fn interrupted_tasks(shared: &Arc<Shared>, forge: &str, client: &ForgejoClient) {
    let store = &shared.store;
    let mut jobs = match store.unfinished_jobs() {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "cannot list interrupted jobs");
            return;
        }
    };
    match store.unreported_finished_jobs() {
        Ok(j) => jobs.extend(j),
        Err(e) => tracing::error!(error = %e, "cannot list unreported jobs"),
    }
    for job in jobs.into_iter().filter(|j| j.forge == forge) {
        let interrupted = job.state != JobState::Finished;
        let saved = store
            .task_state(&job.id)
            .ok()
            .flatten()
            .and_then(|b| TaskState::decode(b.as_slice()).ok());
        let steps = usize::try_from(job.n_steps.unwrap_or(0)).unwrap_or(0);
        let state =
            saved.unwrap_or_else(|| TaskStateBuilder::new(job.task_id, steps, false).state());
        let total = u64::try_from(store.log_end(&job.id).unwrap_or(0)).unwrap_or(0);
        let acked = u64::try_from(job.log_ack).unwrap_or(0);
        let builder = TaskStateBuilder::resume(&state, total, false);
        let spool = Arc::new(StoreSpool {
            store: store.clone(),
            job_id: job.id.clone(),
            acked: Mutex::new(acked),
        });
        let reporter = ReporterShared::resume(builder, spool, ReporterConfig::default(), acked);
        let (conclusion, why) = if interrupted {
            (
                crate::events::Conclusion::Failure,
                Some(format!(
                    "The runner stopped while this job was {} (the daemon was killed or the host went down); its VM was destroyed when the runner started again. The job is marked failed: re-run it.",
                    job.state
                )),
            )
        } else {
            let result = job.result.as_deref().unwrap_or("failure");
            let c = match result {
                "success" => crate::events::Conclusion::Success,
                "cancelled" => crate::events::Conclusion::Cancelled,
                "skipped" => crate::events::Conclusion::Skipped,
                _ => crate::events::Conclusion::Failure,
            };
            (c, None)
        };
        // A finished job's outputs, kept until the forge has them.
        let outputs: indexmap::IndexMap<String, String> = store
            .outputs(&job.id)
            .ok()
            .flatten()
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default();
        reporter.close(conclusion, &outputs, why.as_deref());
        let result = TaskResult::from_wire(reporter.state().result).context_name();
        if interrupted {
            let _ = store.finish_job(&job.id, result, std::time::SystemTime::now());
        }
        tracing::info!(
            forge,
            task = job.task_id,
            result,
            "reporting a task left by a previous run"
        );
        // Each job is reported on its own, so one that cannot get through
        // does not hold up the others; it retries until it gets through,
        // the forge refuses it for good, or the daemon stops.
        let shared = shared.clone();
        let client = client.clone();
        let forge = forge.to_owned();
        let tracker = shared.tasks.clone();
        tracker.spawn(async move {
            let store = &shared.store;
            let cancel = CancellationToken::new();
            loop {
                match finish(&client, &reporter, &cancel).await {
                    Ok(()) => {
                        let _ = store.mark_reported(&job.id);
                        let _ = store.delete_job_logs(&job.id);
                        let _ = store.save_task_state(&job.id, &reporter.state().encode_to_vec());
                        tracing::info!(forge, task = job.task_id, result, "reported");
                        return;
                    }
                    Err(crate::forge::reporter::ReportError::Unauthenticated { .. }) => {
                        tracing::error!(forge, task = job.task_id, "the forge does not accept this runner's credentials; the task is reported at a later start");
                        return;
                    }
                    Err(crate::forge::reporter::ReportError::TaskGone { .. }) => {
                        // Logged by the reporter, once; never tried again.
                        super::task::give_up(store, &job.id);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(forge, task = job.task_id, error = %crate::errors::Chain(&e), "reporting the interrupted task failed; retrying");
                        tokio::select! {
                            _ = shared.stop_fetching.cancelled() => return,
                            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
                        }
                    }
                }
            }
        });
    }
}

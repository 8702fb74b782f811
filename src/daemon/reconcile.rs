//! Start-up clean-up of what a previous run left behind: warm guests and
//! templates, VMs (processes and job directories), VMs it kept for debug
//! SSH, and tasks whose final report never reached the forge.

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

/// Kills every warm guest and template a previous run left, empties
/// `warm_dir` and forgets the warm records (blocking; before any job
/// starts, and before [`leftover_vms`]: a guest a job took still names its
/// old warm directory, so only this finds its QEMU).
pub(crate) fn leftover_warm(store: &Store, warm_dir: &Path) {
    let report = crate::store::reconcile_warm(store, warm_dir);
    for k in &report.killed {
        tracing::warn!(pid = k.pid, dir = %k.dir.display(), "killed a warm guest's process left by a previous run");
    }
    for d in &report.removed_dirs {
        tracing::info!(dir = %d.display(), "removed a warm guest or template left by a previous run");
    }
    for p in &report.problems {
        tracing::error!("reconcile: {p}");
    }
}

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

/// Forgets the VMs a previous run kept for debug SSH (it crashed, or could
/// not destroy them as it stopped), one log line each. Call it after
/// [`leftover_vms`]: a held VM keeps its VM record until it is destroyed, so
/// that has killed it by now; one that could not be killed keeps its VM
/// record, and the next start tries again. No window of a previous run is
/// ever reopened (its keys and the job's SSH key were in memory only).
pub(crate) fn leftover_holds(store: &Store) {
    let holds = match store.holds() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot list the VMs a previous run kept for debug SSH");
            return;
        }
    };
    if holds.is_empty() {
        return;
    }
    let still_recorded: Vec<String> = store
        .vm_records()
        .map(|vms| vms.into_iter().map(|v| v.job_id).collect())
        .unwrap_or_default();
    for h in &holds {
        if still_recorded.contains(&h.job_id) {
            tracing::warn!(job = %h.job_id, forge = %h.forge, repository = %h.repository, actor = %h.actor,
                "could not destroy the VM of job {} kept for debug SSH by a previous run (see the error above); the next start tries again",
                h.job_id);
        } else {
            tracing::info!(job = %h.job_id, forge = %h.forge, repository = %h.repository, actor = %h.actor,
                "destroyed the VM of job {} kept for debug SSH by a previous run",
                h.job_id);
        }
    }
    if let Err(e) = store.clear_holds() {
        tracing::error!(error = %e, "cannot forget the VMs a previous run kept for debug SSH");
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::store::{HoldRow, NewJob};

    /// Log output, captured.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn held_job(store: &Store, id: &str) {
        store
            .insert_job(&NewJob {
                id: id.into(),
                forge: "cb".into(),
                task_id: 1,
                job_name: "build".into(),
                repository: format!("o/{id}"),
                image: None,
                received_at: UNIX_EPOCH,
            })
            .unwrap();
        store.finish_job(id, "failure", UNIX_EPOCH).unwrap();
        store
            .record_hold(&HoldRow {
                job_id: id.into(),
                forge: "cb".into(),
                repository: format!("o/{id}"),
                actor: "alice".into(),
                armed_at: SystemTime::now(),
                expires_at: SystemTime::now() + Duration::from_secs(600),
            })
            .unwrap();
    }

    #[test]
    fn leftover_holds_are_dropped_with_one_line_each() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("solstice.db")).unwrap();
        // Its VM was destroyed by `leftover_vms`; the other's could not be
        // (its VM record remains).
        held_job(&store, "task-cb-1-gone");
        held_job(&store, "task-cb-2-stuck");
        store
            .record_vm("task-cb-2-stuck", &tmp.path().join("task-cb-2-stuck"))
            .unwrap();

        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || leftover_holds(&store));
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines.iter().any(|l| l.contains("INFO")
                && l.contains(
                    "destroyed the VM of job task-cb-1-gone kept for debug SSH by a previous run"
                )),
            "{text}"
        );
        assert!(
            lines.iter().any(|l| l.contains("WARN")
                && l.contains("could not destroy the VM of job task-cb-2-stuck")
                && l.contains("the next start tries again")),
            "{text}"
        );
        assert!(store.holds().unwrap().is_empty());
        // The VM record stays for the next start's reconcile.
        assert_eq!(store.vm_records().unwrap().len(), 1);

        // Nothing to do: nothing logged.
        log.0.lock().unwrap().clear();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || leftover_holds(&store));
        assert!(log.0.lock().unwrap().is_empty());
    }
}

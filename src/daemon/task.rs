//! One task from fetch to final report: record it, translate it, pick its
//! image, wait for the image's slot, run it in a VM while the reporter
//! streams it to the forge, then report the end and forget the VM.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use tokio_util::sync::CancellationToken;

use super::slots::HostSlot;
use super::{RunningJob, Shared};
use crate::config::ForgeConfig;
use crate::events::Conclusion;
use crate::forge::ReportApi;
use crate::forge::client::ForgejoClient;
use crate::forge::proto::{self, LogRow, Task};
use crate::forge::reporter::{
    LogSpool, ReportError, ReporterConfig, ReporterShared, SpoolError, TaskStateBuilder, finish,
    run_reporter,
};
use crate::forge::task::{TranslateOptions, numbered_payload, translate};
use crate::job::placement::{Fallback, choose_image};
use crate::job::{self, VmObserver, VmRun};
use crate::metrics::LatencySplit;
use crate::store::{JobState, JobTimings, LogRowData, NewJob, Store, StoreError, daemon_job_id};

/// A job's log rows in the state database, so that none is lost when the
/// daemon dies and memory stays bounded however much a step prints.
pub(crate) struct StoreSpool {
    pub store: Arc<Store>,
    pub job_id: String,
    /// Rows below this index were acknowledged and dropped.
    pub acked: Mutex<u64>,
}

fn storage(e: crate::store::StoreError) -> SpoolError {
    SpoolError::Storage(e.to_string())
}

impl LogSpool for StoreSpool {
    fn append(&self, first_index: u64, rows: &[LogRow]) -> Result<(), SpoolError> {
        let end = u64::try_from(self.store.log_end(&self.job_id).map_err(storage)?).unwrap_or(0);
        // Rows already held are not stored twice.
        let skip = usize::try_from(end.saturating_sub(first_index)).unwrap_or(usize::MAX);
        let Some(rows) = rows.get(skip..).filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        let data: Vec<LogRowData> = rows
            .iter()
            .map(|r| LogRowData {
                time: r.time.map(system_time).unwrap_or(SystemTime::UNIX_EPOCH),
                content: r.content.clone(),
            })
            .collect();
        let first = i64::try_from(first_index.max(end)).unwrap_or(i64::MAX);
        self.store
            .append_log_rows(&self.job_id, first, &data)
            .map_err(storage)?;
        Ok(())
    }

    fn read(
        &self,
        from: u64,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRow>, SpoolError> {
        let acked = *self.acked.lock().unwrap_or_else(|p| p.into_inner());
        if from < acked {
            return Err(SpoolError::Acknowledged { first: acked });
        }
        let rows = self
            .store
            .log_rows(
                &self.job_id,
                i64::try_from(from).unwrap_or(i64::MAX),
                max_rows,
                max_bytes,
            )
            .map_err(storage)?;
        Ok(rows
            .into_iter()
            .map(|(_, r)| LogRow {
                time: Some(proto::timestamp(r.time)),
                content: r.content,
            })
            .collect())
    }

    fn ack(&self, upto: u64) -> Result<(), SpoolError> {
        self.store
            .ack_log(&self.job_id, i64::try_from(upto).unwrap_or(i64::MAX))
            .map_err(storage)?;
        let mut a = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        *a = (*a).max(upto);
        Ok(())
    }
}

fn system_time(t: proto::Timestamp) -> SystemTime {
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let nanos = u32::try_from(t.nanos).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999))
}

/// Records the VM's resources in the state database before they exist.
struct StoreObserver {
    store: Arc<Store>,
    job_id: String,
    spawned: Mutex<Option<Instant>>,
}

impl VmObserver for StoreObserver {
    fn before_start(&self, dir: &std::path::Path) -> Result<(), StoreError> {
        let _ = self
            .store
            .set_job_state(&self.job_id, JobState::Provisioning);
        self.store.record_vm(&self.job_id, dir)
    }

    fn started(&self, pid: u32, ssh_port: u16) {
        if let Ok(mut s) = self.spawned.lock() {
            *s = Some(Instant::now());
        }
        if let Err(e) = self.store.record_vm_process(&self.job_id, pid, ssh_port) {
            tracing::warn!(job = %self.job_id, error = %e, "could not record the VM's process");
        }
        let _ = self.store.set_job_state(&self.job_id, JobState::Booting);
    }

    fn destroyed(&self) {
        if let Err(e) = self.store.forget_vm(&self.job_id) {
            tracing::warn!(job = %self.job_id, error = %e, "could not forget the VM record");
        }
    }
}

/// Marks the job running when its first step starts.
struct StateSink<'a> {
    inner: &'a ReporterShared,
    store: &'a Store,
    job_id: &'a str,
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
            let _ = self.store.set_job_state(self.job_id, JobState::Running);
        }
        let step_change = matches!(
            event,
            JobEvent::StepStarted { .. } | JobEvent::StepFinished { .. }
        );
        self.inner.emit(event);
        if step_change {
            // A crash report then keeps every step's result so far.
            save_state(self.store, self.job_id, self.inner);
        }
    }
}

/// Runs one task to the end. Never panics on bad input: every problem ends
/// as a failed task with an explanation in its log.
pub(crate) async fn run_task(
    shared: Arc<Shared>,
    forge: ForgeConfig,
    client: ForgejoClient,
    task: Task,
    host_slot: HostSlot,
) {
    let received = Instant::now();
    let task_id = task.id;
    let job_id = daemon_job_id(&forge.name, task_id);
    let store = shared.store.clone();
    let config = &shared.config;

    let opts = TranslateOptions {
        instance_url: forge.url.clone(),
        max_job_timeout: Some(config.daemon.max_job_timeout),
    };
    let translated = translate(&task, &opts);
    let (job_name, repository, step_count, event, debug) = match &translated {
        Ok(t) => (
            t.job_name.clone(),
            t.repository.clone(),
            t.step_count,
            t.event_name.clone(),
            t.step_debug,
        ),
        Err(_) => (
            String::from("(unreadable)"),
            String::new(),
            0,
            String::new(),
            false,
        ),
    };
    tracing::info!(forge = %forge.name, task = task_id, job = %job_name, repository = %repository, id = %job_id, "task received");

    // Recorded before anything else exists, so a crash from here on is
    // reported at the next start.
    let recorded = store.insert_job(&NewJob {
        id: job_id.clone(),
        forge: forge.name.clone(),
        task_id,
        job_name: job_name.clone(),
        repository: repository.clone(),
        image: None,
        received_at: SystemTime::now(),
    });
    if let Err(e) = &recorded {
        tracing::error!(task = task_id, error = %e, "could not record the task in the state database; it runs without crash recovery");
    }
    let _ = store.set_job_steps(&job_id, i64::try_from(step_count).unwrap_or(0));

    let spool: Arc<dyn LogSpool> = if recorded.is_ok() {
        Arc::new(StoreSpool {
            store: store.clone(),
            job_id: job_id.clone(),
            acked: Mutex::new(0),
        })
    } else {
        Arc::new(crate::forge::reporter::MemorySpool::new())
    };
    let mut builder = TaskStateBuilder::new(task_id, step_count, debug);
    builder.received(
        &forge.runner_name,
        super::RUNNER_VERSION,
        &job_name,
        &event,
        proto::now(),
    );
    let reporter = Arc::new(ReporterShared::new(
        builder,
        spool,
        ReporterConfig::default(),
    ));
    let cancel = CancellationToken::new();
    if let Ok(mut r) = shared.running.lock() {
        r.insert(
            job_id.clone(),
            RunningJob {
                forge: forge.name.clone(),
                task_id,
                cancel: cancel.clone(),
                reporter: reporter.clone(),
            },
        );
    }
    shared.metrics.job_started();
    shared.update_status();
    let api: Arc<dyn ReportApi> = Arc::new(client.clone());
    let report = tokio::spawn(run_reporter(api, reporter.clone(), cancel.clone()));
    let saver = tokio::spawn(save_states(store.clone(), job_id.clone(), reporter.clone()));

    let (conclusion, outputs, error) = match translated {
        Err(e) => {
            let mut text = format!("Cannot run this task: {e}");
            for line in numbered_payload(&task) {
                text.push('\n');
                text.push_str(&line);
            }
            tracing::warn!(forge = %forge.name, task = task_id, error = %e, "task payload cannot be run");
            (Conclusion::Failure, Default::default(), Some(text))
        }
        Ok(t) => {
            for note in &t.notes {
                job::runner_line(reporter.as_ref(), note.clone());
            }
            let problems = match t.spec.workflow.jobs.get(&t.spec.job_id) {
                Some(job) => crate::executor::preflight::preflight(
                    &t.spec.workflow,
                    &t.spec.job_id,
                    job,
                    t.spec.default_actions_url.as_deref(),
                ),
                None => Vec::new(),
            };
            match choose_image(&config.images, None, &t.runs_on, Fallback::Assigned) {
                _ if !problems.is_empty() => {
                    let msg = format!(
                        "This job cannot run as it is; no VM was started:\n{}",
                        problems.join("\n")
                    );
                    tracing::warn!(forge = %forge.name, task = task_id, problems = problems.len(), "job rejected before boot");
                    (Conclusion::Failure, Default::default(), Some(msg))
                }
                Err(e) => {
                    let msg = e.to_string();
                    tracing::warn!(forge = %forge.name, task = task_id, "{msg}");
                    (Conclusion::Failure, Default::default(), Some(msg))
                }
                Ok(placed) => {
                    let image = placed.image;
                    let _ = store.set_job_image(&job_id, &image.name);
                    let image_slot = tokio::select! {
                        s = shared.slots.image_slot(&image.name) => Some(s),
                        _ = cancel.cancelled() => None,
                    };
                    match image_slot {
                        None => (Conclusion::Cancelled, Default::default(), None),
                        Some(_image_slot) => {
                            let observer = StoreObserver {
                                store: store.clone(),
                                job_id: job_id.clone(),
                                spawned: Mutex::new(None),
                            };
                            let sink = StateSink {
                                inner: &reporter,
                                store: &store,
                                job_id: &job_id,
                                started: Mutex::new(false),
                            };
                            let run = VmRun {
                                config,
                                image,
                                accel: &shared.accel,
                                job_id: &job_id,
                                spec: &t.spec,
                                runner_name: &forge.runner_name,
                                observer: recorded.is_ok().then_some(&observer as &dyn VmObserver),
                            };
                            let t_run = Instant::now();
                            let result = job::run_in_vm(&run, &sink, &cancel).await;
                            match result {
                                Ok(report) => {
                                    record_latency(
                                        &shared,
                                        &store,
                                        &job_id,
                                        received,
                                        t_run,
                                        &report.timings,
                                    );
                                    let conclusion = if report.outcome.timed_out {
                                        Conclusion::Cancelled
                                    } else {
                                        report.outcome.conclusion
                                    };
                                    (conclusion, report.outcome.outputs, None)
                                }
                                Err(job::RunError::Cancelled) => {
                                    (Conclusion::Cancelled, Default::default(), None)
                                }
                                Err(e) => {
                                    let mut text = e.to_string();
                                    let mut src = std::error::Error::source(&e);
                                    while let Some(s) = src {
                                        text.push_str(&format!("\ncaused by: {s}"));
                                        src = s.source();
                                    }
                                    tracing::warn!(forge = %forge.name, task = task_id, error = %text, "job could not run");
                                    (Conclusion::Failure, Default::default(), Some(text))
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    if reporter.is_gone() {
        // The forge deleted the task (or it is not ours): the reporter
        // logged it, cancelled the job (the VM is gone now) and dropped
        // what was not sent. Nothing of it is ever sent again.
        give_up(&store, &job_id);
        shared.metrics.job_finished(&forge.name, "cancelled");
        if let Ok(mut r) = shared.running.lock() {
            r.remove(&job_id);
        }
        shared.update_status();
        let _ = report.await;
        saver.abort();
        drop(host_slot);
        return;
    }
    let _ = store.set_job_state(&job_id, JobState::Reporting);
    reporter.close(conclusion, &outputs, error.as_deref());
    if conclusion == Conclusion::Success
        && !outputs.is_empty()
        && let Ok(json) = serde_json::to_string(&outputs)
    {
        let _ = store.save_outputs(&job_id, &json);
    }
    let final_result = reporter.state().result;
    let result_name = proto::TaskResult::from_wire(final_result).context_name();
    let _ = store.finish_job(&job_id, result_name, SystemTime::now());
    shared.metrics.job_finished(&forge.name, result_name);
    if let Ok(mut r) = shared.running.lock() {
        r.remove(&job_id);
    }
    shared.update_status();

    let reported = match report.await {
        Ok(Ok(())) => true,
        Ok(Err(ReportError::TaskGone { .. })) => {
            // Logged by the reporter, once.
            saver.abort();
            give_up(&store, &job_id);
            drop(host_slot);
            return;
        }
        Ok(Err(e @ ReportError::Unauthenticated { .. })) => {
            shared.metrics.forge_error(&forge.name, "report");
            tracing::error!(forge = %forge.name, task = task_id, error = %crate::errors::Chain(&e), "the forge refuses this report");
            false
        }
        Ok(Err(e)) => {
            shared.metrics.forge_error(&forge.name, "report");
            tracing::warn!(forge = %forge.name, task = task_id, error = %crate::errors::Chain(&e), "the final report has not reached the forge yet; retrying every 30 s in the background");
            false
        }
        Err(e) => {
            tracing::error!(task = task_id, error = %e, "the reporter panicked");
            false
        }
    };
    saver.abort();
    save_state(&store, &job_id, &reporter);
    if reported {
        let _ = store.mark_reported(&job_id);
        let _ = store.delete_job_logs(&job_id);
        tracing::info!(forge = %forge.name, task = task_id, result = result_name, "task reported");
        // Held until the forge has the final report: until then the forge
        // counts the task as running on this runner.
        drop(host_slot);
        return;
    }
    // The forge is unreachable for longer than the reporter's budget: free
    // the slot, keep the report in the database and keep trying while the
    // daemon runs (the next start sends it otherwise).
    drop(host_slot);
    loop {
        tokio::select! {
            _ = shared.stop_fetching.cancelled() => return,
            _ = tokio::time::sleep(REPORT_RETRY) => {}
        }
        match finish(&client, &reporter, &cancel).await {
            Ok(()) => {
                let _ = store.mark_reported(&job_id);
                let _ = store.delete_job_logs(&job_id);
                tracing::info!(forge = %forge.name, task = task_id, result = result_name, "task reported (late)");
                return;
            }
            Err(ReportError::Unauthenticated { .. }) => {
                tracing::error!(forge = %forge.name, task = task_id, "the final report is kept and sent again at the next start, once the runner's credentials are fixed");
                return;
            }
            Err(ReportError::TaskGone { .. }) => {
                // Logged by the reporter, once.
                give_up(&store, &job_id);
                return;
            }
            Err(e) => {
                tracing::debug!(forge = %forge.name, task = task_id, error = %crate::errors::Chain(&e), "late report failed again")
            }
        }
    }
}

/// Records in the state database that the job's task is gone for good, so
/// that no later start tries to report it (the reporter logged why).
pub(crate) fn give_up(store: &Store, job_id: &str) {
    if let Err(e) = store.give_up_job(job_id) {
        tracing::error!(job = %job_id, error = %e, "could not record in the state database that the task was given up");
    }
}

/// Pause between attempts at a final report that did not get through.
const REPORT_RETRY: Duration = Duration::from_secs(30);

/// Saves the reporter's task state every second while it changes.
async fn save_states(store: Arc<Store>, job_id: String, reporter: Arc<ReporterShared>) {
    let mut last = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let bytes = reporter.state().encode_to_vec();
        if bytes != last {
            let _ = store.save_task_state(&job_id, &bytes);
            last = bytes;
        }
    }
}

fn save_state(store: &Store, job_id: &str, reporter: &ReporterShared) {
    let _ = store.save_task_state(job_id, &reporter.state().encode_to_vec());
}

/// Latency from task receipt to the first step, split into provision, boot,
/// SSH-ready and first step; into the metrics and the state database.
fn record_latency(
    shared: &Shared,
    store: &Store,
    job_id: &str,
    received: Instant,
    run_started: Instant,
    t: &job::Timings,
) {
    // Provision: receipt (incl. waiting for an image slot) to QEMU spawned.
    let provision = run_started.saturating_duration_since(received) + t.prepare;
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
    let _ = store.record_timings(
        job_id,
        &JobTimings {
            provision_ms: Some(ms(provision)),
            boot_ms: Some(ms(boot)),
            ssh_ready_ms: Some(ms(ssh_ready)),
            first_step_ms: t.first_step.map(ms),
        },
    );
}

//! Uploading: the log (append/ack from the acknowledged offset, in requests
//! that fit the forge's body limit), the task state, the loop that runs
//! while the job does, and the final sequence.

use std::sync::Arc;

use indexmap::IndexMap;
use tokio_util::sync::CancellationToken;

use super::{LOST_ROW, ReportError, ReporterShared, line_to_row};
use crate::events::Conclusion;
use crate::forge::SpoolError;
use crate::forge::forgejo::ReportApi;
use crate::forge::forgejo::error::ForgeError;
use crate::forge::forgejo::proto::{
    self, LogRow, TaskResult, UpdateLogRequest, UpdateTaskRequest, UpdateTaskResponse,
};

/// Failure of one upload pass.
#[derive(Debug)]
enum PassError {
    Forge(ForgeError),
    Spool(SpoolError),
    /// The forge answered but took no new rows.
    NoProgress,
}

impl std::fmt::Display for PassError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PassError::Forge(e) => write!(f, "{e}"),
            PassError::Spool(e) => write!(f, "{e}"),
            PassError::NoProgress => f.write_str("the forge did not take the rows sent"),
        }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Sends every spooled row from the acknowledged offset, in requests of at
/// most `max_rows_per_request` rows / `max_bytes_per_request` bytes. With
/// `no_more`, the request holding the last row carries `no_more = true`
/// (an empty one when everything was acknowledged already).
async fn upload_logs(
    api: &dyn ReportApi,
    shared: &ReporterShared,
    no_more: bool,
) -> Result<(), PassError> {
    let cfg = &shared.config;
    let total = {
        let mut inner = shared.lock();
        if no_more {
            shared.flush(&mut inner).map_err(PassError::Spool)?;
        } else if inner.closing.is_none() {
            // A failing spool is logged by flush; what it holds still goes.
            let _ = shared.flush(&mut inner);
        }
        inner.spooled
    };
    let mut stalls = 0;
    loop {
        let (offset, limit) = {
            let inner = shared.lock();
            (inner.acked, inner.body_limit)
        };
        let mut rows = if offset >= total {
            Vec::new()
        } else {
            match shared.spool.read(offset, cfg.max_rows_per_request, limit) {
                Ok(r) => r.into_iter().map(line_to_row).collect(),
                Err(SpoolError::Acknowledged { first }) => {
                    let n = (first.min(total) - offset).min(cfg.max_rows_per_request as u64);
                    tracing::warn!(
                        task = shared.task_id,
                        rows = n,
                        "resending rows the forge lost, without their content"
                    );
                    (0..n)
                        .map(|_| LogRow {
                            time: Some(proto::now()),
                            content: LOST_ROW.into(),
                        })
                        .collect()
                }
                Err(e) => return Err(PassError::Spool(e)),
            }
        };
        if offset < total && rows.is_empty() {
            return Err(PassError::Spool(SpoolError::Storage(format!(
                "row {offset} is missing from the spool"
            ))));
        }
        let size = fit_body(shared.task_id, &mut rows, limit);
        let sent_rows = rows.len();
        let end = offset + rows.len() as u64;
        let last = end >= total;
        let req_no_more = no_more && last;
        let req = UpdateLogRequest {
            task_id: shared.task_id,
            index: to_i64(offset),
            rows,
            no_more: req_no_more,
        };
        let sent_all_before = shared.lock().no_more_sent;
        let resp = api.update_log(req).await;
        if req_no_more && !resp.as_ref().is_err_and(ForgeError::is_too_large) {
            shared.lock().no_more_sent = true;
        }
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_too_large() && sent_rows > 1 => {
                // A proxy in front of the forge caps request bodies: the
                // same body never gets through, a smaller one may.
                let smaller = (size.min(limit) / 2).max(1);
                tracing::info!(
                    task = shared.task_id,
                    refused = size,
                    limit = smaller,
                    "the forge refused a log upload as too large (HTTP 413); sending smaller batches for this task"
                );
                shared.lock().body_limit = smaller;
                continue;
            }
            Err(e) if e.is_too_large() => {
                tracing::warn!(
                    task = shared.task_id,
                    bytes = size,
                    "the forge refuses even a single log row as too large (HTTP 413); raise the body size limit of the proxy in front of it (nginx: client_max_body_size) to at least 1 MiB"
                );
                return Err(PassError::Forge(e));
            }
            Err(e) if e.is_already_exists() => {
                // The log is archived: our earlier no_more went through (its
                // answer was lost), or the forge closed the log itself (its
                // reaper does that when it fails a task). Nothing more can
                // be appended, so the log counts as delivered.
                let mut inner = shared.lock();
                inner.no_more_sent = true;
                if !sent_all_before && inner.acked < total {
                    tracing::warn!(
                        task = shared.task_id,
                        unacknowledged = total - inner.acked,
                        "the forge closed the log before every row was sent"
                    );
                }
                inner.acked = total;
                if let Err(e) = shared.spool.ack(total) {
                    tracing::warn!(task = shared.task_id, error = %e, "log spool ack failed");
                }
                return Ok(());
            }
            Err(e) => return Err(PassError::Forge(e)),
        };
        let ack = u64::try_from(resp.ack_index).unwrap_or(0);
        {
            let mut inner = shared.lock();
            if ack < offset {
                tracing::error!(
                    task = shared.task_id,
                    ack,
                    offset,
                    "submitted logs are lost: the forge holds fewer rows than it acknowledged; resending"
                );
            } else if let Err(e) = shared.spool.ack(ack.min(inner.spooled)) {
                tracing::warn!(task = shared.task_id, error = %e, "log spool ack failed");
            }
            inner.acked = ack;
        }
        if ack >= total && (!no_more || req_no_more) {
            return Ok(());
        }
        if ack <= offset {
            stalls += 1;
            // One resend after a loss is expected; more means the forge is
            // not taking rows.
            if stalls > 1 || ack == offset {
                return Err(PassError::NoProgress);
            }
        }
    }
}

/// Keeps the leading rows whose encoded request fits in `limit` bytes (at
/// least one row); returns the encoded size of the request with them.
fn fit_body(task_id: i64, rows: &mut Vec<LogRow>, limit: usize) -> usize {
    use prost::Message;
    // The largest index and `no_more` set: never less than what is sent.
    let base = UpdateLogRequest {
        task_id,
        index: i64::MAX,
        rows: Vec::new(),
        no_more: true,
    }
    .encoded_len();
    let mut size = base;
    let mut keep = 0;
    for row in rows.iter() {
        let n = prost::encoding::message::encoded_len(3, row);
        if keep > 0 && size + n > limit {
            break;
        }
        size += n;
        keep += 1;
    }
    rows.truncate(keep);
    size
}

/// Sends the current state (and unacknowledged outputs once closing);
/// reacts to a remote cancellation.
async fn update_task(
    api: &dyn ReportApi,
    shared: &ReporterShared,
    cancel_job: &CancellationToken,
) -> Result<UpdateTaskResponse, ForgeError> {
    let req = {
        let inner = shared.lock();
        UpdateTaskRequest {
            state: Some(inner.builder.state()),
            outputs: inner
                .closing
                .as_ref()
                .map(|c| c.outputs.clone().into_iter().collect())
                .unwrap_or_default(),
        }
    };
    let resp = api.update_task(req).await?;
    let remote = resp
        .state
        .as_ref()
        .map(|s| TaskResult::from_wire(s.result))
        .unwrap_or(TaskResult::Unspecified);
    let mut inner = shared.lock();
    if let Some(c) = inner.closing.as_mut() {
        c.task_updates += 1;
        for k in &resp.sent_outputs {
            c.outputs.remove(k);
        }
    }
    if matches!(remote, TaskResult::Cancelled | TaskResult::Failure)
        && inner.builder.result() == TaskResult::Unspecified
        && inner.forge_stop.is_none()
    {
        inner.forge_stop = Some(remote);
        let text = if remote == TaskResult::Cancelled {
            "The job was cancelled on the forge"
        } else {
            "The job was marked failed by the forge; cancelling it"
        };
        tracing::info!(task = shared.task_id, "{text}");
        inner.builder.notice(text, proto::now());
        cancel_job.cancel();
    }
    Ok(resp)
}

/// Reports the task while it runs, then performs the final sequence once
/// [`ReporterShared::close`] was called. Every `report_interval`:
/// `UpdateLog` with the pending rows, then (until a result is set)
/// `UpdateTask` with the full state. A remote CANCELLED/FAILURE cancels
/// `cancel_job`. Returns when the forge has the whole report, or with an
/// error (bad credentials: `cancel_job` is cancelled too; or the final
/// sequence gave up, see [`finish`]).
pub async fn run_reporter(
    api: Arc<dyn ReportApi>,
    shared: Arc<ReporterShared>,
    cancel_job: CancellationToken,
) -> Result<(), ReportError> {
    let mut tick = tokio::time::interval(shared.config.report_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        if shared.is_closed() {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.wake.notified() => continue,
        }
        if shared.is_closed() {
            break;
        }
        match upload_logs(api.as_ref(), &shared, false).await {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(task = shared.task_id, "reporting to the forge works again");
                }
            }
            Err(PassError::Forge(e)) if e.is_unauthenticated() => {
                cancel_job.cancel();
                return Err(ReportError::Unauthenticated {
                    task_id: shared.task_id,
                    source: e,
                });
            }
            Err(PassError::Forge(e)) if e.is_task_gone() => {
                return Err(shared.give_up(e, &cancel_job));
            }
            Err(e) if failing => {
                tracing::debug!(task = shared.task_id, error = %e, "UpdateLog failed again")
            }
            Err(e) => {
                failing = true;
                tracing::warn!(task = shared.task_id, error = %e, "UpdateLog failed; retrying every interval (one line when it works again)")
            }
        }
        let final_set = shared.lock().builder.result() != TaskResult::Unspecified;
        if final_set || shared.is_closed() {
            continue;
        }
        match update_task(api.as_ref(), &shared, &cancel_job).await {
            Ok(_) => {}
            Err(e) if e.is_unauthenticated() => {
                cancel_job.cancel();
                return Err(ReportError::Unauthenticated {
                    task_id: shared.task_id,
                    source: e,
                });
            }
            Err(e) if e.is_task_gone() => {
                return Err(shared.give_up(e, &cancel_job));
            }
            Err(e) if failing => {
                tracing::debug!(task = shared.task_id, error = %e, "UpdateTask failed again")
            }
            Err(e) => {
                failing = true;
                tracing::warn!(task = shared.task_id, error = %e, "UpdateTask failed; retrying every interval (one line when it works again)")
            }
        }
    }
    finish(api.as_ref(), &shared, &cancel_job).await
}

/// The final sequence (after [`ReporterShared::close`]): `UpdateLog` with
/// `no_more` until every row is acknowledged, then the final `UpdateTask`
/// until it (and the outputs) are acknowledged. Each stage retries with
/// exponential back-off within `final_budget`. Can be called again after
/// [`ReportError::GaveUp`]; it resumes where it stopped.
pub async fn finish(
    api: &dyn ReportApi,
    shared: &ReporterShared,
    cancel_job: &CancellationToken,
) -> Result<(), ReportError> {
    let cfg = &shared.config;
    if shared.is_done() {
        return Ok(());
    }
    if let Some(e) = shared.lock().gone.clone() {
        return Err(ReportError::TaskGone {
            task_id: shared.task_id,
            source: e,
        });
    }
    if !shared.is_closed() {
        shared.close(
            Conclusion::Failure,
            &IndexMap::new(),
            Some("The runner stopped reporting before the job ended"),
        );
    }
    let started = tokio::time::Instant::now();
    let mut backoff = cfg.retry_initial;
    let gave_up = |stage: &'static str, last_error: String| ReportError::GaveUp {
        task_id: shared.task_id,
        stage,
        secs: started.elapsed().as_secs(),
        last_error,
    };
    // 1. Every row, the last request with no_more.
    loop {
        match upload_logs(api, shared, true).await {
            Ok(()) => break,
            Err(PassError::Forge(e)) if e.is_unauthenticated() => {
                return Err(ReportError::Unauthenticated {
                    task_id: shared.task_id,
                    source: e,
                });
            }
            Err(PassError::Forge(e)) if e.is_task_gone() => {
                return Err(shared.give_up(e, cancel_job));
            }
            Err(e) => {
                if started.elapsed() + backoff > cfg.final_budget {
                    return Err(gave_up("log", e.to_string()));
                }
                tracing::debug!(task = shared.task_id, error = %e, "final UpdateLog failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.retry_max);
            }
        }
    }
    // 2. The final state, until it and the outputs are acknowledged.
    backoff = cfg.retry_initial;
    loop {
        match update_task(api, shared, cancel_job).await {
            Ok(_) => {
                let mut inner = shared.lock();
                let (left, updates) = inner
                    .closing
                    .as_ref()
                    .map(|c| (c.outputs.len(), c.task_updates))
                    .unwrap_or((0, 0));
                if left == 0 || updates >= cfg.max_output_attempts {
                    if left > 0 {
                        tracing::warn!(
                            task = shared.task_id,
                            outputs = left,
                            "the forge never acknowledged some job outputs; giving them up"
                        );
                    }
                    inner.done = true;
                    return Ok(());
                }
                drop(inner);
                let e = "outputs not acknowledged yet".to_string();
                if started.elapsed() + backoff > cfg.final_budget {
                    return Err(gave_up("state", e));
                }
            }
            Err(e) if e.is_unauthenticated() => {
                return Err(ReportError::Unauthenticated {
                    task_id: shared.task_id,
                    source: e,
                });
            }
            Err(e) if e.is_task_gone() => {
                return Err(shared.give_up(e, cancel_job));
            }
            Err(e) => {
                if started.elapsed() + backoff > cfg.final_budget {
                    return Err(gave_up("state", e.to_string()));
                }
                tracing::debug!(task = shared.task_id, error = %e, "final UpdateTask failed; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.retry_max);
    }
}

//! The forge reporter against a scripted in-memory forge that applies the
//! server's append/ack rule, with injected failures. Time is paused, so the
//! report intervals and back-off cost nothing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indexmap::IndexMap;
use solstice::events::{Conclusion, EventSink, JobEvent, LineKind, Phase};
use solstice::forge::forgejo::proto::{
    LogRow, TaskResult, TaskState, UpdateLogRequest, UpdateLogResponse, UpdateTaskRequest,
    UpdateTaskResponse,
};
use solstice::forge::forgejo::reporter::{
    LOST_ROW, ReportError, ReporterConfig, ReporterShared, TaskStateBuilder, finish, run_reporter,
};
use solstice::forge::forgejo::{Code, ForgeError, ReportApi};
use solstice::forge::{LogSpool, MemorySpool};
use tokio_util::sync::CancellationToken;

/// What the next call does besides (or instead of) its normal work.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Fails without applying anything.
    Fail(Code),
    /// Applies the request, then the answer is lost (client sees a timeout).
    LostResponse,
    /// The forge restarts and loses its last `n` rows before applying.
    Forget(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Log {
        index: i64,
        rows: usize,
        no_more: bool,
    },
    Task {
        result: i32,
        outputs: Vec<String>,
    },
}

#[derive(Default)]
struct ForgeState {
    rows: Vec<LogRow>,
    archived: bool,
    last_state: Option<TaskState>,
    final_result: Option<TaskResult>,
    /// Set by the "cancel" button (or the zombie reaper).
    stopped: Option<TaskResult>,
    outputs: BTreeMap<String, String>,
    /// The forge ignores outputs on this many more calls.
    ignore_outputs: usize,
    log_faults: VecDeque<Option<Fault>>,
    task_faults: VecDeque<Option<Fault>>,
    /// Every call fails with this code while set.
    outage: Option<Code>,
    calls: Vec<Call>,
}

#[derive(Default)]
struct FakeForge(Mutex<ForgeState>);

fn status(code: Code, procedure: &'static str, message: &str) -> ForgeError {
    ForgeError::Status {
        procedure,
        http_status: code.http_status(),
        code,
        message: message.into(),
    }
}

fn timeout(procedure: &'static str) -> ForgeError {
    ForgeError::Transport {
        procedure,
        message: "operation timed out".into(),
        timed_out: true,
    }
}

#[async_trait::async_trait]
impl ReportApi for FakeForge {
    async fn update_log(&self, req: UpdateLogRequest) -> Result<UpdateLogResponse, ForgeError> {
        let mut s = self.0.lock().unwrap();
        s.calls.push(Call::Log {
            index: req.index,
            rows: req.rows.len(),
            no_more: req.no_more,
        });
        if let Some(code) = s.outage {
            return Err(status(code, "UpdateLog", "outage"));
        }
        let fault = s.log_faults.pop_front().flatten();
        match fault {
            Some(Fault::Fail(code)) => return Err(status(code, "UpdateLog", "injected")),
            Some(Fault::Forget(n)) => {
                let keep = s.rows.len().saturating_sub(n);
                s.rows.truncate(keep);
            }
            _ => {}
        }
        if s.archived && !req.rows.is_empty() {
            return Err(status(
                Code::AlreadyExists,
                "UpdateLog",
                "log file has been archived",
            ));
        }
        // The server's rule (spec §3.5).
        let l = s.rows.len() as i64;
        let end = req.index + req.rows.len() as i64;
        if req.index <= l && l < end {
            let skip = (l - req.index) as usize;
            s.rows.extend(req.rows[skip..].iter().cloned());
        }
        let ack = s.rows.len() as i64;
        if req.no_more && !req.rows.is_empty() && ack >= end {
            s.archived = true;
        }
        if fault == Some(Fault::LostResponse) {
            return Err(timeout("UpdateLog"));
        }
        Ok(UpdateLogResponse { ack_index: ack })
    }

    async fn update_task(&self, req: UpdateTaskRequest) -> Result<UpdateTaskResponse, ForgeError> {
        let mut s = self.0.lock().unwrap();
        let state = req.state.clone().unwrap_or_default();
        let mut keys: Vec<String> = req.outputs.keys().cloned().collect();
        keys.sort();
        s.calls.push(Call::Task {
            result: state.result,
            outputs: keys,
        });
        if let Some(code) = s.outage {
            return Err(status(code, "UpdateTask", "outage"));
        }
        let fault = s.task_faults.pop_front().flatten();
        if let Some(Fault::Fail(code)) = fault {
            return Err(status(code, "UpdateTask", "injected"));
        }
        if s.final_result.is_none() && s.stopped.is_none() {
            if state.result != 0 {
                s.final_result = Some(TaskResult::from_wire(state.result));
            }
            s.last_state = Some(state.clone());
        }
        if s.ignore_outputs > 0 && !req.outputs.is_empty() {
            s.ignore_outputs -= 1;
        } else {
            for (k, v) in req.outputs {
                s.outputs.entry(k).or_insert(v);
            }
        }
        let result = s
            .stopped
            .or(s.final_result)
            .unwrap_or(TaskResult::Unspecified);
        let resp = UpdateTaskResponse {
            state: Some(TaskState {
                id: state.id,
                result: result as i32,
                ..TaskState::default()
            }),
            sent_outputs: s.outputs.keys().cloned().collect(),
        };
        if fault == Some(Fault::LostResponse) {
            return Err(timeout("UpdateTask"));
        }
        Ok(resp)
    }
}

impl FakeForge {
    fn with<R>(&self, f: impl FnOnce(&mut ForgeState) -> R) -> R {
        f(&mut self.0.lock().unwrap())
    }

    fn contents(&self) -> Vec<String> {
        self.with(|s| s.rows.iter().map(|r| r.content.clone()).collect())
    }
}

fn config() -> ReporterConfig {
    ReporterConfig {
        // Small requests and batches, so chunking is exercised.
        max_rows_per_request: 7,
        batch_rows: 5,
        ..ReporterConfig::default()
    }
}

fn shared_for(steps: usize, cfg: ReporterConfig) -> (Arc<ReporterShared>, Arc<MemorySpool>) {
    let mut b = TaskStateBuilder::new(42, steps, false);
    b.received(
        "solstice-test",
        "solstice-0.1.0",
        "build",
        "push",
        solstice::forge::forgejo::proto::now(),
    );
    let spool = Arc::new(MemorySpool::new());
    let shared = Arc::new(ReporterShared::new(
        b,
        spool.clone() as Arc<dyn LogSpool>,
        cfg,
    ));
    (shared, spool)
}

fn line(step: usize, text: String) -> JobEvent {
    JobEvent::Line {
        step: Some(step),
        kind: LineKind::Stdout,
        text,
    }
}

/// A job of `steps` steps with `lines` unique lines each, emitted over time.
async fn run_job(sink: &dyn EventSink, steps: usize, lines: usize, pause: Duration) {
    sink.emit(JobEvent::Phase {
        phase: Phase::Boot,
        detail: "booting".into(),
    });
    for s in 0..steps {
        sink.emit(JobEvent::StepStarted {
            index: s,
            name: format!("step {s}"),
        });
        for i in 0..lines {
            sink.emit(line(s, format!("s{s} l{i}")));
            if i % 4 == 0 {
                tokio::time::sleep(pause).await;
            }
        }
        sink.emit(JobEvent::StepFinished {
            index: s,
            outcome: Conclusion::Success,
            conclusion: Conclusion::Success,
            duration: Duration::from_secs(1),
        });
    }
    sink.emit(JobEvent::JobFinished {
        conclusion: Conclusion::Success,
        duration: Duration::from_secs(1),
    });
}

/// Each step's rows on the forge are exactly its lines, in order.
fn assert_steps_intact(forge: &FakeForge, steps: usize, lines: usize) {
    let rows = forge.contents();
    let state = forge.with(|s| s.last_state.clone()).expect("a final state");
    assert_eq!(state.steps.len(), steps);
    for (s, st) in state.steps.iter().enumerate() {
        let from = st.log_index as usize;
        let got = &rows[from..from + st.log_length as usize];
        let want: Vec<String> = (0..lines).map(|i| format!("s{s} l{i}")).collect();
        assert_eq!(got, want.as_slice(), "step {s}");
        assert_eq!(st.result, TaskResult::Success as i32);
    }
}

/// Every row exactly once: no loss, no duplicate.
fn assert_unique_lines(forge: &FakeForge, steps: usize, lines: usize) {
    let rows = forge.contents();
    for s in 0..steps {
        for i in 0..lines {
            let l = format!("s{s} l{i}");
            assert_eq!(rows.iter().filter(|r| **r == l).count(), 1, "{l}");
        }
    }
}

/// All UpdateLog calls (the last with no_more) come before the final UpdateTask.
fn assert_final_order(forge: &FakeForge) {
    let calls = forge.with(|s| s.calls.clone());
    let first_final = calls
        .iter()
        .position(|c| matches!(c, Call::Task { result, .. } if *result != 0))
        .expect("a final UpdateTask");
    let last_log = calls
        .iter()
        .rposition(|c| matches!(c, Call::Log { .. }))
        .unwrap();
    assert!(last_log < first_final, "{calls:?}");
    assert!(
        matches!(calls[last_log], Call::Log { no_more: true, .. }),
        "{calls:?}"
    );
    assert!(forge.with(|s| s.archived));
}

#[tokio::test(start_paused = true)]
async fn every_row_arrives_once_despite_errors_and_lost_responses() {
    let forge = Arc::new(FakeForge::default());
    forge.with(|s| {
        let pattern = [
            None,
            Some(Fault::Fail(Code::Unavailable)),
            Some(Fault::LostResponse),
            None,
            Some(Fault::LostResponse),
            Some(Fault::Fail(Code::Internal)),
        ];
        s.log_faults = pattern.iter().cycle().take(200).copied().collect();
        s.task_faults = [
            None,
            Some(Fault::LostResponse),
            Some(Fault::Fail(Code::Unknown)),
        ]
        .iter()
        .cycle()
        .take(20)
        .copied()
        .collect();
    });
    let (shared, spool) = shared_for(3, config());
    let cancel = CancellationToken::new();
    let reporter = tokio::spawn(run_reporter(forge.clone(), shared.clone(), cancel.clone()));
    run_job(shared.as_ref(), 3, 40, Duration::from_millis(300)).await;
    let mut outputs = IndexMap::new();
    outputs.insert("version".to_string(), "1.2.3".to_string());
    shared.close(Conclusion::Success, &outputs, None);
    reporter.await.unwrap().unwrap();

    assert!(!cancel.is_cancelled());
    assert!(shared.is_done());
    let rows = forge.contents();
    assert_eq!(rows.len() as u64, shared.total_rows());
    assert_eq!(shared.acked_rows(), shared.total_rows());
    assert_eq!(spool.held(), 0);
    assert!(rows[0].contains("received task 42 of job build"));
    assert_eq!(rows.last().unwrap(), "Job succeeded");
    assert_unique_lines(&forge, 3, 40);
    assert_steps_intact(&forge, 3, 40);
    assert_final_order(&forge);
    let (result, stored) = forge.with(|s| (s.final_result, s.outputs.clone()));
    assert_eq!(result, Some(TaskResult::Success));
    assert_eq!(stored["version"], "1.2.3");
    // Requests were capped.
    assert!(forge.with(|s| s.calls.iter().all(|c| match c {
        Call::Log { rows, .. } => *rows <= 7,
        _ => true,
    })));
}

#[tokio::test(start_paused = true)]
async fn rows_lost_by_a_restarted_forge_are_resent_in_place() {
    let forge = Arc::new(FakeForge::default());
    let (shared, _spool) = shared_for(2, config());
    let cancel = CancellationToken::new();
    let reporter = tokio::spawn(run_reporter(forge.clone(), shared.clone(), cancel.clone()));
    // First step fully uploaded, then the forge forgets 3 acknowledged rows.
    run_job(shared.as_ref(), 1, 10, Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(shared.acked_rows(), shared.total_rows());
    forge.with(|s| s.log_faults.push_back(Some(Fault::Forget(3))));
    shared.emit(JobEvent::Phase {
        phase: Phase::Teardown,
        detail: "teardown".into(),
    });
    shared.close(Conclusion::Success, &IndexMap::new(), None);
    reporter.await.unwrap().unwrap();
    let rows = forge.contents();
    // Same number of rows, the lost ones replaced by placeholders, so every
    // later index is still right.
    assert_eq!(rows.len() as u64, shared.total_rows());
    assert_eq!(rows.iter().filter(|r| *r == LOST_ROW).count(), 3);
    assert_eq!(rows[rows.len() - 2], "Tearing down: teardown");
    assert_eq!(rows.last().unwrap(), "Job succeeded");
}

#[tokio::test(start_paused = true)]
async fn remote_cancellation_cancels_the_job_once() {
    for (stop, text) in [
        (TaskResult::Cancelled, "The job was cancelled on the forge"),
        (
            TaskResult::Failure,
            "The job was marked failed by the forge; cancelling it",
        ),
    ] {
        let forge = Arc::new(FakeForge::default());
        let (shared, _spool) = shared_for(2, config());
        let cancel = CancellationToken::new();
        let reporter = tokio::spawn(run_reporter(forge.clone(), shared.clone(), cancel.clone()));
        shared.emit(JobEvent::StepStarted {
            index: 0,
            name: "long".into(),
        });
        shared.emit(line(0, "working".into()));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!cancel.is_cancelled());
        forge.with(|s| s.stopped = Some(stop));
        tokio::time::timeout(Duration::from_secs(5), cancel.cancelled())
            .await
            .expect("the job token is cancelled");
        assert_eq!(shared.forge_stop(), Some(stop));
        // The job reacts: its step ends cancelled; it says success anyway.
        shared.emit(line(0, "stopping".into()));
        shared.emit(JobEvent::StepFinished {
            index: 0,
            outcome: Conclusion::Cancelled,
            conclusion: Conclusion::Cancelled,
            duration: Duration::from_secs(1),
        });
        shared.emit(JobEvent::JobFinished {
            conclusion: Conclusion::Cancelled,
            duration: Duration::from_secs(3),
        });
        let mut outputs = IndexMap::new();
        outputs.insert("x".to_string(), "y".to_string());
        shared.close(Conclusion::Success, &outputs, None);
        reporter.await.unwrap().unwrap();
        let rows = forge.contents();
        // The notice sits in the running step, which stays contiguous.
        assert_eq!(rows.iter().filter(|r| *r == text).count(), 1, "{rows:?}");
        let st = shared.state();
        assert_eq!(st.result, TaskResult::Cancelled as i32);
        let s0 = &st.steps[0];
        let span = &rows[s0.log_index as usize..(s0.log_index + s0.log_length) as usize];
        assert_eq!(span, ["working", text, "stopping"]);
        assert_eq!(st.steps[1].result, TaskResult::Cancelled as i32);
        // Outputs are only sent for a successful job.
        let sent_outputs = forge.with(|s| {
            s.calls
                .iter()
                .any(|c| matches!(c, Call::Task { outputs, .. } if !outputs.is_empty()))
        });
        assert!(!sent_outputs);
    }
}

#[tokio::test(start_paused = true)]
async fn outputs_are_resent_until_acknowledged() {
    let forge = Arc::new(FakeForge::default());
    forge.with(|s| s.ignore_outputs = 2);
    let (shared, _spool) = shared_for(1, config());
    let cancel = CancellationToken::new();
    let reporter = tokio::spawn(run_reporter(forge.clone(), shared.clone(), cancel.clone()));
    run_job(shared.as_ref(), 1, 3, Duration::from_millis(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut outputs = IndexMap::new();
    outputs.insert("a".to_string(), "1".to_string());
    outputs.insert("b".to_string(), "2".to_string());
    outputs.insert("k".repeat(300), "too long a key".to_string());
    shared.close(Conclusion::Success, &outputs, None);
    reporter.await.unwrap().unwrap();
    let calls = forge.with(|s| s.calls.clone());
    let with_outputs: Vec<&Call> = calls
        .iter()
        .filter(|c| matches!(c, Call::Task { outputs, .. } if !outputs.is_empty()))
        .collect();
    // Ignored twice, taken on the third call; none while the job ran.
    assert_eq!(with_outputs.len(), 3, "{calls:?}");
    for c in &with_outputs {
        assert_eq!(
            **c,
            Call::Task {
                result: TaskResult::Success as i32,
                outputs: vec!["a".into(), "b".into()]
            }
        );
    }
    assert_eq!(forge.with(|s| s.outputs.len()), 2);
    // No periodic UpdateTask went out after JobFinished set the result.
    let finished_at = calls
        .iter()
        .position(|c| matches!(c, Call::Task { result, .. } if *result != 0))
        .unwrap();
    assert!(calls[finished_at..].iter().all(|c| match c {
        Call::Task { result, .. } => *result != 0,
        Call::Log { .. } => true,
    }));
}

#[tokio::test(start_paused = true)]
async fn no_periodic_state_after_the_result_is_set_but_logs_go_on() {
    let forge = Arc::new(FakeForge::default());
    let (shared, _spool) = shared_for(1, config());
    let cancel = CancellationToken::new();
    let reporter = tokio::spawn(run_reporter(forge.clone(), shared.clone(), cancel.clone()));
    run_job(shared.as_ref(), 1, 2, Duration::from_millis(10)).await;
    let tasks_before = forge.with(|s| {
        s.calls
            .iter()
            .filter(|c| matches!(c, Call::Task { .. }))
            .count()
    });
    // Teardown lines keep flowing after JobFinished.
    for i in 0..3 {
        shared.emit(JobEvent::Phase {
            phase: Phase::Teardown,
            detail: format!("t{i}"),
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(forge.contents().contains(&"Tearing down: t2".to_string()));
    let tasks_after = forge.with(|s| {
        s.calls
            .iter()
            .filter(|c| matches!(c, Call::Task { .. }))
            .count()
    });
    assert_eq!(tasks_before, tasks_after);
    shared.close(Conclusion::Success, &IndexMap::new(), Some("last words"));
    reporter.await.unwrap().unwrap();
    let rows = forge.contents();
    assert_eq!(&rows[rows.len() - 2..], ["last words", "Job succeeded"]);
    assert_final_order(&forge);
}

#[tokio::test(start_paused = true)]
async fn a_lost_final_answer_then_already_exists_counts_as_done() {
    let forge = Arc::new(FakeForge::default());
    let mut cfg = config();
    cfg.max_rows_per_request = 1000;
    let (shared, _spool) = shared_for(1, cfg);
    let cancel = CancellationToken::new();
    run_job(shared.as_ref(), 1, 3, Duration::from_millis(10)).await;
    shared.close(Conclusion::Failure, &IndexMap::new(), Some("exit 1"));
    // The only UpdateLog (all rows, no_more) is applied but its answer lost;
    // the retry meets an archived log.
    forge.with(|s| s.log_faults.push_back(Some(Fault::LostResponse)));
    finish(forge.as_ref(), &shared, &cancel).await.unwrap();
    let calls = forge.with(|s| s.calls.clone());
    let logs: Vec<&Call> = calls
        .iter()
        .filter(|c| matches!(c, Call::Log { .. }))
        .collect();
    assert_eq!(logs.len(), 2, "{calls:?}");
    assert!(logs.iter().all(|c| matches!(
        c,
        Call::Log {
            index: 0,
            no_more: true,
            ..
        }
    )));
    assert!(forge.with(|s| s.archived));
    assert_eq!(forge.contents().len() as u64, shared.total_rows());
    assert_unique_lines(&forge, 1, 3);
    assert_eq!(forge.with(|s| s.final_result), Some(TaskResult::Failure));
    assert!(shared.is_done());
}

#[tokio::test(start_paused = true)]
async fn the_final_sequence_gives_up_then_resumes() {
    let forge = Arc::new(FakeForge::default());
    forge.with(|s| s.outage = Some(Code::Unavailable));
    let mut cfg = config();
    cfg.final_budget = Duration::from_secs(60);
    let (shared, _spool) = shared_for(1, cfg);
    let cancel = CancellationToken::new();
    let reporter = tokio::spawn(run_reporter(forge.clone(), shared.clone(), cancel.clone()));
    run_job(shared.as_ref(), 1, 12, Duration::from_millis(100)).await;
    shared.close(Conclusion::Success, &IndexMap::new(), None);
    let started = tokio::time::Instant::now();
    let err = reporter.await.unwrap().unwrap_err();
    assert!(
        matches!(err, ReportError::GaveUp { stage: "log", .. }),
        "{err}"
    );
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(60), "{took:?}");
    assert!(took >= Duration::from_secs(40), "{took:?}");
    assert!(!cancel.is_cancelled());
    // Back-off: 100 ms doubling, capped at 10 s.
    let attempts = forge.with(|s| s.calls.len());
    assert!((8..=15).contains(&attempts), "{attempts}");
    // The forge comes back: finishing again sends everything, once.
    forge.with(|s| s.outage = None);
    finish(forge.as_ref(), &shared, &cancel).await.unwrap();
    assert!(shared.is_done());
    assert_eq!(forge.contents().len() as u64, shared.total_rows());
    assert_unique_lines(&forge, 1, 12);
    assert_steps_intact(&forge, 1, 12);
    assert_final_order(&forge);
}

#[tokio::test(start_paused = true)]
async fn bad_credentials_stop_reporting_at_once() {
    // While the job runs: the job is cancelled and the loop ends.
    let forge = Arc::new(FakeForge::default());
    forge.with(|s| s.outage = Some(Code::Unauthenticated));
    let (shared, _spool) = shared_for(1, config());
    let cancel = CancellationToken::new();
    let err = run_reporter(forge.clone(), shared.clone(), cancel.clone())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ReportError::Unauthenticated { task_id: 42, .. }
    ));
    assert!(cancel.is_cancelled());
    assert_eq!(forge.with(|s| s.calls.len()), 1);

    // In the final sequence: no retries.
    let forge = Arc::new(FakeForge::default());
    let (shared, _spool) = shared_for(1, config());
    shared.close(Conclusion::Success, &IndexMap::new(), None);
    forge.with(|s| s.outage = Some(Code::Unauthenticated));
    let err = finish(forge.as_ref(), &shared, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ReportError::Unauthenticated { .. }), "{err}");
    assert_eq!(forge.with(|s| s.calls.len()), 1);
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_output_keeps_the_memory_batch_bounded() {
    let cfg = ReporterConfig::default();
    let (shared, spool) = shared_for(1, cfg.clone());
    shared.emit(JobEvent::StepStarted {
        index: 0,
        name: "flood".into(),
    });
    let text = "x".repeat(100);
    let mut max_pending = 0;
    for i in 0..50_000 {
        shared.emit(line(0, format!("{i} {text}")));
        max_pending = max_pending.max(shared.pending_rows());
    }
    assert!(max_pending <= cfg.batch_rows, "{max_pending}");
    assert!(spool.held() + shared.pending_rows() == shared.total_rows() as usize);
    // A 2 MiB line alone exceeds the byte threshold and goes to the spool at once.
    shared.emit(line(0, "y".repeat(2 * 1024 * 1024)));
    assert_eq!(shared.pending_rows(), 0);
    // Upload drains the spool.
    let forge = Arc::new(FakeForge::default());
    shared.emit(JobEvent::StepFinished {
        index: 0,
        outcome: Conclusion::Success,
        conclusion: Conclusion::Success,
        duration: Duration::from_secs(1),
    });
    shared.close(Conclusion::Success, &IndexMap::new(), None);
    finish(forge.as_ref(), &shared, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(spool.held(), 0);
    assert_eq!(forge.contents().len() as u64, shared.total_rows());
    // Requests respect the byte cap (a row bigger than it goes alone).
    let calls = forge.with(|s| s.calls.clone());
    assert!(calls.iter().all(|c| match c {
        Call::Log { rows, .. } => *rows <= cfg.max_rows_per_request,
        _ => true,
    }));
}

#[tokio::test(start_paused = true)]
async fn an_untranslatable_task_is_reported_failed_with_its_error() {
    use solstice::forge::forgejo::proto::{Task, json_to_struct};
    use solstice::forge::forgejo::task::{TranslateOptions, numbered_payload, translate};
    let task = Task {
        id: 42,
        workflow_payload: Some(b"jobs:\n  a:\n    runs-on: linux\n    steps: [\n".to_vec()),
        context: Some(json_to_struct(&serde_json::json!({"event_name": "push"}))),
        ..Task::default()
    };
    let opts = TranslateOptions {
        instance_url: "https://forge.example".into(),
        max_job_timeout: None,
    };
    let err = translate(&task, &opts).unwrap_err();
    // No steps are known: everything goes into "Set up job" / "Complete job".
    let (shared, _spool) = shared_for(0, config());
    for l in numbered_payload(&task) {
        shared.emit(JobEvent::Line {
            step: None,
            kind: LineKind::Runner,
            text: l,
        });
    }
    shared.close(
        Conclusion::Failure,
        &IndexMap::new(),
        Some(&solstice::errors::Chain(&err).to_string()),
    );
    let forge = FakeForge::default();
    finish(&forge, &shared, &CancellationToken::new())
        .await
        .unwrap();
    let rows = forge.contents();
    assert_eq!(rows[2], "   1: jobs:");
    assert!(rows[rows.len() - 2].starts_with("The workflow payload cannot be run: "));
    assert_eq!(forge.with(|s| s.final_result), Some(TaskResult::Failure));
    assert!(forge.with(|s| s.archived));
}

#[tokio::test(start_paused = true)]
async fn a_log_the_forge_archived_itself_ends_the_final_sequence_without_retrying_forever() {
    // The forge's reaper failed the task and archived its log while the
    // runner was away: every UpdateLog that brings rows gets `already_exists`,
    // also the first of several chunks, which has no `no_more`.
    let forge = Arc::new(FakeForge::default());
    let mut cfg = config();
    cfg.max_rows_per_request = 2;
    let (shared, _spool) = shared_for(1, cfg);
    let cancel = CancellationToken::new();
    run_job(shared.as_ref(), 1, 6, Duration::from_millis(1)).await;
    shared.close(Conclusion::Success, &IndexMap::new(), None);
    forge.with(|s| {
        s.archived = true;
        s.stopped = Some(TaskResult::Failure);
    });
    tokio::time::timeout(
        Duration::from_secs(60),
        finish(forge.as_ref(), &shared, &cancel),
    )
    .await
    .expect("the final sequence must end")
    .unwrap();
    let logs = forge.with(|s| {
        s.calls
            .iter()
            .filter(|c| matches!(c, Call::Log { .. }))
            .count()
    });
    assert_eq!(logs, 1, "one refused chunk is enough to know");
    assert!(shared.is_done());
}

// ---------------------------------------------------------------------------
// Against the strict fake forge over HTTP (real client, real time)
// ---------------------------------------------------------------------------

mod over_http {
    use super::*;
    use solstice::forge::forgejo::client::{ClientOptions, Credentials, ForgejoClient};
    use solstice::forge::forgejo::proto::FetchTaskRequest;
    use solstice::secret::Secret;
    use solstice::testing::fake_forge::{
        FakeForge as HttpForge, FakeJob, FakeOptions, MAX_LOG_ROW_BYTES,
    };

    const SECRET: &str = "0123456789abcdef0123456789abcdef01234567";

    /// A fake forge, a client registered with it, and one task it handed out.
    struct Live {
        forge: HttpForge,
        client: Arc<ForgejoClient>,
        task: solstice::forge::forgejo::proto::Task,
    }

    async fn live(opts: FakeOptions, yaml: &str, secrets: &[(&str, &str)]) -> Live {
        let forge = HttpForge::start(opts).await.unwrap();
        let uuid = forge.register_offline(SECRET, "solstice-test", &["linux"]);
        let client = ForgejoClient::new(&forge.url(), &ClientOptions::default())
            .unwrap()
            .with_credentials(Credentials {
                uuid,
                token: Secret::new(SECRET),
            });
        let mut job = FakeJob::new(yaml, &["linux"]);
        for (k, v) in secrets {
            job.secrets.insert(k.to_string(), v.to_string());
        }
        forge.enqueue(job);
        let req = FetchTaskRequest {
            tasks_version: 0,
            task_capacity: Some(1),
        };
        let task = client
            .fetch_task(req, "key-1", Duration::from_secs(10))
            .await
            .unwrap()
            .task
            .expect("a task");
        Live {
            forge,
            client: Arc::new(client),
            task,
        }
    }

    const ONE_STEP: &str =
        "jobs:\n  build:\n    runs-on: linux\n    steps:\n      - run: echo hi\n";

    fn http_config() -> ReporterConfig {
        ReporterConfig {
            report_interval: Duration::from_millis(50),
            // Short, so that a reporter that retries a gone task fails the
            // request count below instead of hanging for minutes.
            final_budget: Duration::from_secs(10),
            ..ReporterConfig::default()
        }
    }

    fn reporter(task_id: i64, steps: usize, cfg: ReporterConfig) -> Arc<ReporterShared> {
        let mut b = TaskStateBuilder::new(task_id, steps, false);
        b.received(
            "solstice-test",
            "solstice-0.1.0",
            "build",
            "push",
            solstice::forge::forgejo::proto::now(),
        );
        Arc::new(ReporterShared::new(
            b,
            Arc::new(MemorySpool::new()) as Arc<dyn LogSpool>,
            cfg,
        ))
    }

    /// Calls of `UpdateLog`/`UpdateTask` the fake answered with an error.
    fn failed_reports(forge: &HttpForge) -> usize {
        forge
            .requests()
            .iter()
            .filter(|r| {
                matches!(r.method.as_str(), "UpdateLog" | "UpdateTask") && r.http_status != 200
            })
            .count()
    }

    fn report_calls(forge: &HttpForge) -> usize {
        forge.request_count("UpdateLog") + forge.request_count("UpdateTask")
    }

    #[tokio::test]
    async fn a_task_deleted_while_the_job_runs_is_given_up_after_one_refused_call() {
        for gitea in [false, true] {
            let l = live(
                FakeOptions {
                    gitea_errors: gitea,
                    ..FakeOptions::default()
                },
                ONE_STEP,
                &[],
            )
            .await;
            let shared = reporter(l.task.id, 1, http_config());
            let cancel = CancellationToken::new();
            let run = tokio::spawn(run_reporter(
                l.client.clone(),
                shared.clone(),
                cancel.clone(),
            ));
            shared.emit(JobEvent::StepStarted {
                index: 0,
                name: "echo".into(),
            });
            shared.emit(line(0, "before the delete".into()));
            let id = l.task.id;
            assert!(
                l.forge
                    .wait_for(
                        |f| f.task(id).is_some_and(|t| t.log.len() >= 3),
                        Duration::from_secs(30)
                    )
                    .await
            );
            assert!(l.forge.delete_task(id));
            shared.emit(line(0, "after the delete".into()));
            let err = tokio::time::timeout(Duration::from_secs(60), run)
                .await
                .expect("the reporter stops")
                .unwrap()
                .unwrap_err();
            assert!(
                matches!(err, ReportError::TaskGone { task_id, .. } if task_id == id),
                "{err}"
            );
            assert!(cancel.is_cancelled(), "the job is cancelled");
            assert!(shared.is_gone());
            assert_eq!(failed_reports(&l.forge), 1, "gitea={gitea}");
            // The job ends: nothing more is sent, not even a final report.
            let calls = report_calls(&l.forge);
            shared.emit(line(0, "ignored".into()));
            shared.close(Conclusion::Cancelled, &IndexMap::new(), None);
            let err = finish(l.client.as_ref(), &shared, &cancel)
                .await
                .unwrap_err();
            assert!(matches!(err, ReportError::TaskGone { .. }), "{err}");
            assert_eq!(report_calls(&l.forge), calls);
        }
    }

    #[tokio::test]
    async fn a_task_deleted_before_the_final_report_costs_one_call_not_the_budget() {
        for gitea in [false, true] {
            let l = live(
                FakeOptions {
                    gitea_errors: gitea,
                    ..FakeOptions::default()
                },
                ONE_STEP,
                &[],
            )
            .await;
            let shared = reporter(l.task.id, 1, http_config());
            let mut outputs = IndexMap::new();
            outputs.insert("answer".to_string(), "42".to_string());
            run_job(shared.as_ref(), 1, 3, Duration::ZERO).await;
            shared.close(Conclusion::Success, &outputs, None);
            assert!(l.forge.delete_task(l.task.id));
            let cancel = CancellationToken::new();
            let err = finish(l.client.as_ref(), &shared, &cancel)
                .await
                .unwrap_err();
            assert!(matches!(err, ReportError::TaskGone { .. }), "{err}");
            assert_eq!(failed_reports(&l.forge), 1, "gitea={gitea}");
            assert_eq!(report_calls(&l.forge), 1, "gitea={gitea}");
            // Called again (a later retry): nothing is sent.
            let err = finish(l.client.as_ref(), &shared, &cancel)
                .await
                .unwrap_err();
            assert!(matches!(err, ReportError::TaskGone { .. }), "{err}");
            assert_eq!(report_calls(&l.forge), 1);
        }
    }

    /// Emits `lines` lines of about 1 KiB in one step while the reporter
    /// runs, then ends the job and waits for the reporter.
    async fn stream_through(l: &Live, lines: usize, extra: &[String]) -> Vec<String> {
        let shared = reporter(l.task.id, 1, http_config());
        let cancel = CancellationToken::new();
        let run = tokio::spawn(run_reporter(l.client.clone(), shared.clone(), cancel));
        shared.emit(JobEvent::StepStarted {
            index: 0,
            name: "flood".into(),
        });
        let pad = "x".repeat(1000);
        let mut want = Vec::new();
        for i in 0..lines {
            let text = format!("{i:06} {pad}");
            want.push(text.clone());
            shared.emit(line(0, text));
            if i % 500 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for e in extra {
            want.push(e.clone());
            shared.emit(line(0, e.clone()));
        }
        shared.emit(JobEvent::StepFinished {
            index: 0,
            outcome: Conclusion::Success,
            conclusion: Conclusion::Success,
            duration: Duration::from_secs(1),
        });
        shared.close(Conclusion::Success, &IndexMap::new(), None);
        tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .expect("the reporter finishes")
            .unwrap()
            .unwrap();
        want
    }

    #[tokio::test]
    async fn a_log_of_several_mib_passes_a_proxy_body_limit_complete_and_in_order() {
        for limit in [1024 * 1024, 256 * 1024] {
            let l = live(
                FakeOptions {
                    max_request_body: Some(limit),
                    ..FakeOptions::default()
                },
                ONE_STEP,
                &[],
            )
            .await;
            // About 4 MiB of short lines, then one long line.
            let long = "L".repeat(150 * 1024);
            let want = stream_through(&l, 4000, std::slice::from_ref(&long)).await;
            let t = l.forge.task(l.task.id).unwrap();
            assert!(t.no_more && t.status.is_final(), "limit {limit}");
            let step = t.step_log(0);
            let (lines, long_rows) = step.split_at(want.len() - 1);
            assert_eq!(lines, &want[..want.len() - 1], "limit {limit}");
            assert_eq!(long_rows.concat(), long, "limit {limit}");
            assert!(
                l.forge.violations().is_empty(),
                "{:?}",
                l.forge.violations()
            );
            let refused = l
                .forge
                .requests()
                .iter()
                .filter(|r| r.http_status == 413)
                .count();
            if limit == 1024 * 1024 {
                assert_eq!(refused, 0, "the default fits nginx's default limit");
            } else {
                assert!(refused >= 1, "the 256 KiB proxy refused something");
            }
        }
    }

    #[tokio::test]
    async fn a_proxy_that_refuses_a_single_row_ends_in_the_usual_give_up_not_a_loop() {
        // 4 KiB: less than one 64 KiB row. Halving cannot go below one row.
        let l = live(
            FakeOptions {
                max_request_body: Some(4 * 1024),
                ..FakeOptions::default()
            },
            ONE_STEP,
            &[],
        )
        .await;
        let cfg = ReporterConfig {
            final_budget: Duration::from_secs(3),
            ..http_config()
        };
        let shared = reporter(l.task.id, 1, cfg);
        shared.emit(JobEvent::StepStarted {
            index: 0,
            name: "wide".into(),
        });
        for i in 0..20 {
            shared.emit(line(0, format!("{i} {}", "w".repeat(1000))));
        }
        shared.emit(line(0, "v".repeat(64 * 1024)));
        shared.close(Conclusion::Success, &IndexMap::new(), None);
        let err = finish(l.client.as_ref(), &shared, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ReportError::GaveUp { stage: "log", .. }),
            "{err}"
        );
        // The short rows went in small requests; the wide row was refused
        // once per back-off step, not in a tight loop.
        let t = l.forge.task(l.task.id).unwrap();
        assert_eq!(t.log.len(), 2 + 20, "the first rows and the short lines");
        let refused = l
            .forge
            .requests()
            .iter()
            .filter(|r| r.http_status == 413)
            .count();
        assert!((1..60).contains(&refused), "{refused} refused requests");
        assert!(!shared.is_done());
    }

    #[tokio::test]
    async fn a_200_kib_line_arrives_whole_as_consecutive_rows_of_its_step() {
        let l = live(FakeOptions::default(), ONE_STEP, &[]).await;
        // Multi-byte characters around every 64 KiB boundary.
        let mut long = String::new();
        while long.len() < 200 * 1024 {
            long.push_str("abcdefghij€ü");
        }
        let want = stream_through(&l, 2, std::slice::from_ref(&long)).await;
        let t = l.forge.task(l.task.id).unwrap();
        let step = t.step_log(0);
        assert_eq!(&step[..2], &want[..2]);
        let pieces = &step[2..];
        assert_eq!(pieces.len(), long.len().div_ceil(MAX_LOG_ROW_BYTES));
        assert!(pieces.iter().all(|p| p.len() <= MAX_LOG_ROW_BYTES));
        assert_eq!(pieces.concat(), long);
        assert_eq!(t.steps[0].log_length as usize, 2 + pieces.len());
        assert!(
            l.forge.violations().is_empty(),
            "{:?}",
            l.forge.violations()
        );
    }

    #[tokio::test]
    async fn a_secret_across_a_row_boundary_is_masked_before_the_line_is_split() {
        use solstice::forge::forgejo::task::{TranslateOptions, translate};
        let token = "s3cr3t-across-the-boundary";
        // The secret starts 10 bytes before the 64 KiB boundary.
        let before = MAX_LOG_ROW_BYTES - 10;
        let yaml = format!(
            "jobs:\n  build:\n    runs-on: linux\n    steps:\n      - run: |\n          head -c {before} /dev/zero | tr '\\000' a; echo \"${{{{ secrets.TOKEN }}}}-tail$(head -c 1000 /dev/zero | tr '\\000' b)\"\n"
        );
        let l = live(FakeOptions::default(), &yaml, &[("TOKEN", token)]).await;
        let opts = TranslateOptions {
            instance_url: l.forge.url(),
            max_job_timeout: None,
        };
        let mut t = translate(&l.task, &opts).unwrap();
        let home = tempfile::tempdir().unwrap();
        let runner = crate::support::local_runner(
            solstice::config::GuestOs::Linux,
            "solstice-test",
            home.path(),
        );
        t.spec.checkout = solstice::job::CheckoutSource::None;
        let shared = reporter(l.task.id, t.step_count, http_config());
        let cancel = CancellationToken::new();
        let run = tokio::spawn(run_reporter(
            l.client.clone(),
            shared.clone(),
            cancel.clone(),
        ));
        let outcome = solstice::executor::run_job(
            &t.spec,
            &runner,
            &solstice::guest::LocalSession,
            shared.as_ref(),
            cancel,
        )
        .await;
        assert_eq!(outcome.conclusion, Conclusion::Success);
        shared.close(outcome.conclusion, &outcome.outputs, None);
        tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .expect("the reporter finishes")
            .unwrap()
            .unwrap();
        let task = l.forge.task(l.task.id).unwrap();
        let all = task.log.concat();
        assert!(!all.contains("s3cr3t"), "the secret reached the forge");
        assert!(!all.contains("across-the-boundary"));
        let step = task.step_log(0);
        let shown: Vec<String> = step.iter().map(|r| r.chars().take(12).collect()).collect();
        assert_eq!(step.len(), 2, "the masked line is two rows: {shown:?}");
        let joined = step.concat();
        let want = format!("{}***-tail{}", "a".repeat(before), "b".repeat(1000));
        assert!(
            joined == want,
            "the step's rows join to {} bytes ending {:?}, not the masked line",
            joined.len(),
            &joined[joined.len().saturating_sub(40)..]
        );
        assert!(step.iter().all(|r| r.len() <= MAX_LOG_ROW_BYTES));
    }
}

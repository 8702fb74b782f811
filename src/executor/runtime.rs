//! One job's run: the runtime every step shares, and [`run_job`], which
//! evaluates the job's environment and timeout, probes the guest and runs
//! the steps.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use tokio_util::sync::CancellationToken;

use super::action::LoadedAction;
use super::containers::JobContainers;
use super::containers::init::InitEnd;
use super::emit::Emitter;
use super::env::{self, GuestLayout};
use super::mask::Masker;
use super::state::{JobOutcome, JobState, is_true, minutes};
use super::{DEFAULT_JOB_TIMEOUT, checkout, clock};
use crate::events::{Conclusion, EventSink, JobEvent, LineKind};
use crate::guest::GuestSession;
use crate::job::spec::{CheckoutSource, JobSpec, RunnerInfo};
use crate::workflow::Job;
use crate::workflow::expr::{JobStatus, interpolate};

pub(super) struct Runtime<'a> {
    pub(super) spec: &'a JobSpec,
    /// The machine the job runs on.
    pub(super) runner: &'a RunnerInfo,
    pub(super) job: &'a Job,
    pub(super) session: &'a dyn GuestSession,
    pub(super) em: Emitter<'a>,
    pub(super) cancel: CancellationToken,
    pub(super) layout: GuestLayout,
    pub(super) has_bash: bool,
    /// The guest user is root.
    pub(super) root: bool,
    pub(super) job_deadline: Instant,
    pub(super) job_timeout: Duration,
    /// Workflow and job `env`, evaluated.
    pub(super) base_env: IndexMap<String, String>,
    pub(super) debug: bool,
    /// Remote actions loaded in this job (or why they could not be), by
    /// their `uses:`.
    pub(super) loaded_actions: Mutex<HashMap<String, Result<Arc<LoadedAction>, String>>>,
    /// Guest directories that already hold an action's tree.
    pub(super) delivered: Mutex<HashSet<String>>,
    /// The job's containers (`container:`, `services:`), once started.
    pub(super) containers: Option<JobContainers>,
}

impl Runtime<'_> {
    /// The job container, once started.
    pub(super) fn job_container(&self) -> Option<&super::containers::JobContainer> {
        self.containers.as_ref().and_then(|c| c.job.as_ref())
    }
}

/// Runs one job on `runner` (the guest behind `session`) and returns its
/// outcome. Never panics on bad input: problems become failed steps or a
/// failed job with a message.
pub async fn run_job(
    spec: &JobSpec,
    runner: &RunnerInfo,
    session: &dyn GuestSession,
    sink: &dyn EventSink,
    cancel: CancellationToken,
) -> JobOutcome {
    let started = Instant::now();
    let mut masker = Masker::new();
    for s in spec.secrets.values().chain(&spec.extra_masks) {
        masker.add(s.expose());
    }
    if let CheckoutSource::Remote { token: Some(t), .. } = &spec.checkout {
        masker.add(t.expose());
        masker.add(&checkout::auth_header_value(t.expose()));
    }
    let em = Emitter {
        sink,
        masker: Mutex::new(masker),
    };
    let finish = |em: &Emitter<'_>, conclusion: Conclusion, outputs, steps| {
        em.emit(JobEvent::JobFinished {
            conclusion,
            duration: started.elapsed(),
        });
        JobOutcome {
            conclusion,
            outputs,
            steps,
            timed_out: false,
        }
    };
    let Some(job) = spec.workflow.jobs.get(&spec.job_id) else {
        em.error(
            None,
            format!(
                "The workflow has no job `{}`; pick one of: {}",
                spec.job_id,
                spec.workflow
                    .jobs
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        return finish(&em, Conclusion::Failure, IndexMap::new(), Vec::new());
    };
    let flag = |name: &str| {
        spec.secrets.get(name).is_some_and(|s| is_true(s.expose()))
            || spec.vars.get(name).is_some_and(|v| is_true(v))
    };
    let debug = flag("ACTIONS_STEP_DEBUG");
    let runner_debug = flag("ACTIONS_RUNNER_DEBUG");

    let mut rt = Runtime {
        spec,
        runner,
        job,
        session,
        em,
        cancel,
        layout: GuestLayout::new("/", "workspace"),
        has_bash: false,
        root: false,
        job_deadline: started + DEFAULT_JOB_TIMEOUT,
        job_timeout: DEFAULT_JOB_TIMEOUT,
        base_env: IndexMap::new(),
        debug,
        loaded_actions: Mutex::new(HashMap::new()),
        delivered: Mutex::new(HashSet::new()),
        containers: None,
    };
    let mut state = JobState::new();

    // Workflow and job env, then the job timeout.
    let mut base_env = IndexMap::new();
    for (scope, map) in [("workflow", &spec.workflow.env), ("job", &job.env)] {
        for (k, v) in map {
            let ctx = rt.contexts(&base_env, &state);
            match interpolate(&v.0, &ctx) {
                Ok(val) => {
                    base_env.insert(k.clone(), val);
                }
                Err(e) => {
                    rt.em.error(None, format!("Invalid {scope} env `{k}`: {e}"));
                    return finish(&rt.em, Conclusion::Failure, IndexMap::new(), Vec::new());
                }
            }
        }
    }
    rt.base_env = base_env;
    let mut job_timeout = DEFAULT_JOB_TIMEOUT;
    if let Some(t) = &job.timeout_minutes {
        let ctx = rt.contexts(&rt.base_env, &state);
        match interpolate(&t.0, &ctx).ok().as_deref().and_then(minutes) {
            Some(d) => job_timeout = d,
            None => {
                rt.em.error(
                    None,
                    format!(
                        "Invalid job timeout-minutes `{}`: expected a positive number",
                        t.0
                    ),
                );
                return finish(&rt.em, Conclusion::Failure, IndexMap::new(), Vec::new());
            }
        }
    }
    if let Some(max) = spec.max_job_timeout {
        job_timeout = job_timeout.min(max);
    }
    rt.job_deadline = started + job_timeout;
    rt.job_timeout = job_timeout;

    // Probe the guest and create the layout.
    match rt.probe().await {
        Ok(p) => {
            rt.layout = GuestLayout::new(&p.home, &env::repo_name(&spec.github));
            rt.has_bash = p.has_bash;
            rt.root = p.root;
            match p.clock {
                Some(off) => rt.sync_clock(off, true).await,
                None => tracing::debug!(
                    target: "solstice::clock",
                    job = %spec.job_id,
                    "guest clock: no reading at job start"
                ),
            }
        }
        Err(e) => {
            let conclusion = if rt.cancel.is_cancelled() {
                Conclusion::Cancelled
            } else {
                Conclusion::Failure
            };
            rt.em.error(None, e.to_string());
            return finish(&rt.em, conclusion, IndexMap::new(), Vec::new());
        }
    }

    // The job container and the services, in the guest's engine.
    match rt.init_containers(&state).await {
        InitEnd::Ready => {}
        end => {
            rt.print_service_logs().await;
            let conclusion = match end {
                InitEnd::Cancelled => Conclusion::Cancelled,
                _ => Conclusion::Failure,
            };
            let mut outcome = finish(&rt.em, conclusion, IndexMap::new(), Vec::new());
            outcome.timed_out = end == InitEnd::TimedOut;
            return outcome;
        }
    }

    // The pre stages of the job's JavaScript actions (fetched here).
    rt.run_pre_stages(&mut state, runner_debug).await;
    for (index, step) in job.steps.iter().enumerate() {
        rt.check_job_state(&mut state);
        let t = Instant::now();
        rt.run_step(index, step, &mut state, runner_debug).await;
        // A guest can fall behind during a long step (TCG under load).
        if t.elapsed() >= clock::RECHECK_AFTER && !rt.cancel.is_cancelled() {
            rt.check_clock().await;
        }
    }
    rt.check_job_state(&mut state);
    // The actions' post stages, last registered first.
    rt.run_post_stages(&mut state, runner_debug).await;
    rt.check_job_state(&mut state);
    // The services' logs, whatever happened.
    rt.print_service_logs().await;

    // Job outputs.
    let mut outputs = IndexMap::new();
    let mut ctx = rt.contexts(&rt.env_context(&state, None), &state);
    for (name, template) in &job.outputs {
        if let Err(e) = rt.prepare_hash_files(&mut ctx, &[template], false).await {
            rt.em
                .error(None, format!("Invalid job output `{name}`: {e}"));
            continue;
        }
        match interpolate(template, &ctx) {
            Ok(v) if rt.em.contains_secret(&v) => rt.em.line(
                None,
                LineKind::Annotation("warning".into()),
                format!("Skipped job output `{name}` because it may contain a secret"),
            ),
            Ok(v) => {
                outputs.insert(name.clone(), v);
            }
            Err(e) => rt
                .em
                .error(None, format!("Invalid job output `{name}`: {e}")),
        }
    }
    let conclusion = if state.timed_out {
        Conclusion::Failure
    } else {
        match state.status {
            JobStatus::Success => Conclusion::Success,
            JobStatus::Failure => Conclusion::Failure,
            JobStatus::Cancelled => Conclusion::Cancelled,
        }
    };
    let records = std::mem::take(&mut state.records);
    let mut outcome = finish(&rt.em, conclusion, outputs, records);
    outcome.timed_out = state.timed_out;
    outcome
}

//! The pool of ephemeral JIT runners behind one GitHub forge's poller.
//!
//! GitHub gives one job to one runner, and the runner never sees the job's
//! `runs-on`. So Solstice keeps, for each image, one idle JIT runner per
//! free slot, registered with that image's labels: the runner a job
//! reaches names the image it runs on. Each runner has a listener task
//! (its broker session and long poll); a job reference it receives waits
//! in the pool until [`GithubPoller::fetch`] has a slot for it, then is
//! acquired, renewed once (the job never starts before), translated and
//! handed to the daemon. The runner keeps polling with `status=Busy`, so
//! that a `JobCancellation` reaches the job's report. After its one job it
//! ends its session; GitHub removes it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use rand::Rng;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::auth::{RunnerTokens, parse_jit_config};
use super::broker::{Agent, Broker, BrokerMessage, JobRequestRef, RunnerStatus};
use super::error::GithubError;
use super::job::JobEnvelope;
use super::report::{self, ReportOptions};
use super::rest::Rest;
use super::translate::{self, TranslateOptions};
use super::{message, run};
use crate::events::Conclusion;
use crate::forge::{
    AssignedJob, Assignment, Failure, FailureKind, LogSpool, Poller, ReportStarter, TaskReport,
    Unrunnable, UserKeys,
};

/// The runners of one image.
#[derive(Debug, Clone)]
pub struct ImageRunners {
    /// The image's name (part of the runner names).
    pub image: String,
    /// The labels its runners are registered with.
    pub labels: Vec<String>,
    /// The `runs-on` the daemon places its jobs with (the image's labels).
    pub runs_on: Vec<String>,
}

/// Further tries of an `acquirejob` that failed transiently.
const ACQUIRE_RETRIES: u32 = 3;

/// Timings of the pool (tests shorten them).
#[derive(Debug, Clone)]
pub struct PoolTimings {
    /// Random pause after a failed poll, for the first 5 failures in a
    /// row (spec §4: 15–30 s) ...
    pub poll_retry: (Duration, Duration),
    /// ... and after that (30–60 s).
    pub poll_retry_long: (Duration, Duration),
    /// Client deadline of one long poll (75 s; the broker holds it 50 s).
    pub poll_timeout: Duration,
    /// Failed polls in a row after which a runner gives up.
    pub poll_max_failures: u32,
    /// Pause between session attempts after a 409 (30 s) ...
    pub session_retry: Duration,
    /// ... for at most this long (4 min).
    pub session_conflict_limit: Duration,
    /// Random pause between tries of the first renew (1–10 s).
    pub first_renew_retry: (Duration, Duration),
    /// Tries of the first renew before the job is abandoned.
    pub first_renew_tries: u32,
    /// The report's timings.
    pub report: ReportOptions,
}

impl Default for PoolTimings {
    fn default() -> Self {
        PoolTimings {
            poll_retry: (Duration::from_secs(15), Duration::from_secs(30)),
            poll_retry_long: (Duration::from_secs(30), Duration::from_secs(60)),
            poll_timeout: super::broker::POLL_TIMEOUT,
            poll_max_failures: 10,
            session_retry: Duration::from_secs(30),
            session_conflict_limit: Duration::from_secs(4 * 60),
            first_renew_retry: (Duration::from_secs(1), Duration::from_secs(10)),
            first_renew_tries: 6,
            report: ReportOptions::default(),
        }
    }
}

/// What the pool is configured with.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The forge's section name (logs).
    pub forge: String,
    /// Prefix of every runner name (`<runner_name>-<image>-<hex>`).
    pub runner_name: String,
    pub runner_group_id: u64,
    /// Advertised to the broker.
    pub runner_version: String,
    pub images: Vec<ImageRunners>,
    pub max_job_timeout: Option<Duration>,
    /// `X64` or `ARM64`.
    pub arch: &'static str,
    pub timings: PoolTimings,
    /// The forge's published user keys, handed to every job (debug SSH).
    pub user_keys: Option<Arc<dyn UserKeys>>,
}

/// A runner's control block, shared by the pool and its listener.
struct RunnerCtl {
    id: u64,
    name: String,
    image: usize,
    /// Ends the listener (shutdown, surplus, job done).
    stop: CancellationToken,
    /// The listener ended (its session is over).
    ended: CancellationToken,
    /// The runner's poll status changed: re-issue the poll.
    status_changed: Notify,
    state: Mutex<RunnerState>,
    broker: Broker,
}

#[derive(Default)]
struct RunnerState {
    /// A job reference arrived (the runner takes no other).
    offered: bool,
    /// The job it runs: its id and the token its cancellation cancels.
    job: Option<(String, CancellationToken)>,
    /// A `JobCancellation` arrived while the offered job was being
    /// acquired: the job is cancelled as soon as it exists.
    cancel_pending: bool,
}

impl RunnerCtl {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunnerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_idle(&self) -> bool {
        let s = self.lock();
        !s.offered && s.job.is_none() && !self.stop.is_cancelled() && !self.ended.is_cancelled()
    }
}

/// A job reference a runner received.
struct Arrival {
    runner: Arc<RunnerCtl>,
    request: JobRequestRef,
    received: Instant,
}

struct PoolInner {
    config: PoolConfig,
    rest: Arc<Rest>,
    http: reqwest::Client,
    runners: Mutex<Vec<Arc<RunnerCtl>>>,
    arrivals_tx: mpsc::UnboundedSender<Arrival>,
    arrivals_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Arrival>>,
    /// Arrivals that found no free slot, oldest first.
    waiting: Mutex<VecDeque<Arrival>>,
    /// A listener met an error that needs the operator.
    fatal: Mutex<Option<GithubError>>,
}

/// The pool; cloned into the session's pollers.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

/// The port's kind of a GitHub failure.
pub fn failure(e: GithubError) -> Failure {
    let kind = if e.is_unauthorized() || e.status() == Some(403) || e.is_registration_gone() {
        FailureKind::Unauthenticated
    } else if e.is_retryable() {
        FailureKind::Transient
    } else {
        FailureKind::Fatal
    };
    Failure::new(kind, e)
}

fn random_between((low, high): (Duration, Duration)) -> Duration {
    if high <= low {
        return low;
    }
    let span = (high - low).as_millis() as u64;
    low + Duration::from_millis(rand::rng().random_range(0..=span))
}

impl Pool {
    pub fn new(config: PoolConfig, rest: Arc<Rest>, http: reqwest::Client) -> Pool {
        let (arrivals_tx, arrivals_rx) = mpsc::unbounded_channel();
        Pool {
            inner: Arc::new(PoolInner {
                config,
                rest,
                http,
                runners: Mutex::new(Vec::new()),
                arrivals_tx,
                arrivals_rx: tokio::sync::Mutex::new(arrivals_rx),
                waiting: Mutex::new(VecDeque::new()),
                fatal: Mutex::new(None),
            }),
        }
    }

    /// The poller of the daemon's poll loop.
    pub fn poller(&self) -> Box<dyn Poller> {
        Box::new(GithubPoller { pool: self.clone() })
    }

    fn runners(&self) -> std::sync::MutexGuard<'_, Vec<Arc<RunnerCtl>>> {
        self.inner.runners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `name` is one Solstice gives this forge's runners:
    /// `<runner_name>-<image>-<8 hex digits>` for a configured image (so
    /// that host `ci` never takes the runners of host `ci-2` for its own).
    pub fn is_own_name(&self, name: &str) -> bool {
        let config = &self.inner.config;
        own_name(&config.runner_name, &config.images, name)
    }

    /// Removes the runners Solstice created for this forge and no longer
    /// needs: every runner with one of its names ([`Pool::is_own_name`])
    /// that is not one of the pool's live runners. A busy one cannot be
    /// removed (GitHub removes it after its job).
    pub async fn remove_leftovers(&self) -> Result<usize, GithubError> {
        let live: Vec<u64> = self.runners().iter().map(|r| r.id).collect();
        let mut removed = 0;
        for r in self.inner.rest.list_runners().await? {
            if !self.is_own_name(&r.name) || live.contains(&r.id) {
                continue;
            }
            match self.inner.rest.delete_runner(r.id).await {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(forge = %self.inner.config.forge, runner = %r.name, "removed a runner left from an earlier run");
                }
                Err(e) => {
                    tracing::warn!(forge = %self.inner.config.forge, runner = %r.name, error = %e, "could not remove a runner left from an earlier run")
                }
            }
        }
        Ok(removed)
    }

    /// Stops every runner: ends their sessions and removes them at GitHub.
    pub async fn shutdown(&self) {
        let runners: Vec<Arc<RunnerCtl>> = self.runners().drain(..).collect();
        for r in &runners {
            r.stop.cancel();
        }
        // All at once, within a bound: the service's stop timeout follows.
        let removals = runners.iter().map(|r| async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), r.ended.cancelled()).await;
            if let Err(e) = self.inner.rest.delete_runner(r.id).await {
                tracing::warn!(forge = %self.inner.config.forge, runner = %r.name, error = %e, "could not remove the runner at shutdown");
            }
        });
        if tokio::time::timeout(
            Duration::from_secs(30),
            futures_util::future::join_all(removals),
        )
        .await
        .is_err()
        {
            tracing::warn!(forge = %self.inner.config.forge, "removing the runners at shutdown took too long; the next start removes what is left");
            return;
        }
        if let Err(e) = self.remove_leftovers().await {
            tracing::warn!(forge = %self.inner.config.forge, error = %e, "could not list the runners at shutdown");
        }
    }

    /// Keeps `target` idle runners for each image: registers the missing
    /// ones, removes surplus ones.
    async fn reconcile(&self, target: usize) -> Result<(), GithubError> {
        for (index, image) in self.inner.config.images.iter().enumerate() {
            let idle: Vec<Arc<RunnerCtl>> = self
                .runners()
                .iter()
                .filter(|r| r.image == index && r.is_idle())
                .cloned()
                .collect();
            for surplus in idle.iter().skip(target) {
                self.retire(surplus.clone());
            }
            for _ in idle.len()..target {
                let runner = self.register(index, image).await?;
                self.runners().push(runner);
            }
        }
        Ok(())
    }

    /// Stops a runner and removes it at GitHub (in the background).
    fn retire(&self, runner: Arc<RunnerCtl>) {
        runner.stop.cancel();
        self.runners().retain(|r| r.id != runner.id);
        let rest = self.inner.rest.clone();
        let forge = self.inner.config.forge.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), runner.ended.cancelled()).await;
            if let Err(e) = rest.delete_runner(runner.id).await {
                tracing::warn!(forge = %forge, runner = %runner.name, error = %e, "could not remove a surplus runner");
            }
        });
    }

    /// Registers a JIT runner for an image and starts its listener.
    async fn register(
        &self,
        index: usize,
        image: &ImageRunners,
    ) -> Result<Arc<RunnerCtl>, GithubError> {
        let config = &self.inner.config;
        let name = format!(
            "{}-{}-{:08x}",
            config.runner_name,
            image.image,
            rand::rng().random::<u32>()
        );
        let new = self
            .inner
            .rest
            .generate_jitconfig(&name, config.runner_group_id, &image.labels)
            .await?;
        let jit = match parse_jit_config(&new.jit_config) {
            Ok(j) => j,
            Err(e) => {
                let _ = self.inner.rest.delete_runner(new.id).await;
                return Err(e);
            }
        };
        let tokens = Arc::new(RunnerTokens::new(
            self.inner.http.clone(),
            jit.oauth.clone(),
            Arc::new(jit.key),
        ));
        let broker = Broker::new(
            self.inner.http.clone(),
            &jit.runner.broker_url,
            tokens,
            Agent {
                id: jit.runner.agent_id,
                name: if jit.runner.agent_name.is_empty() {
                    new.name.clone()
                } else {
                    jit.runner.agent_name.clone()
                },
                version: config.runner_version.clone(),
                os: "Linux",
                arch: config.arch,
            },
        )
        .with_poll_timeout(config.timings.poll_timeout);
        let ctl = Arc::new(RunnerCtl {
            id: new.id,
            name: new.name,
            image: index,
            stop: CancellationToken::new(),
            ended: CancellationToken::new(),
            status_changed: Notify::new(),
            state: Mutex::new(RunnerState::default()),
            broker,
        });
        tracing::debug!(forge = %config.forge, runner = %ctl.name, "JIT runner registered");
        tokio::spawn(listen(self.inner.clone(), ctl.clone()));
        Ok(ctl)
    }

    /// Turns a job reference into an assignment: acquire, first renew,
    /// translate. `None` when the job is not (or no longer) this runner's.
    async fn take(&self, arrival: Arrival) -> Option<Assignment> {
        let Arrival {
            runner,
            request,
            received,
        } = arrival;
        let forge = &self.inner.config.forge;
        let http = &self.inner.http;
        // With the runner token; a 401 exchanges a new one and tries once more.
        let acquire_once = || async {
            let mut answer = None;
            for attempt in 0..2 {
                if attempt > 0 {
                    runner.broker.tokens().invalidate().await;
                }
                let token = runner.broker.tokens().get().await?;
                let got = run::acquire_job(
                    http,
                    &request.run_service_url,
                    &token,
                    &request.runner_request_id,
                    request.billing_owner_id.as_deref(),
                )
                .await;
                let refused = matches!(&got, Err(e) if e.is_unauthorized());
                answer = Some(got);
                if !refused {
                    break;
                }
            }
            answer.unwrap_or_else(|| Err(GithubError::Invalid("acquirejob was not tried".into())))
        };
        // Transient failures are tried again (spec §5.1); the job stays
        // this runner's meanwhile.
        let mut acquired = acquire_once().await;
        for _ in 0..ACQUIRE_RETRIES {
            match &acquired {
                Err(e) if e.is_retryable() => {
                    tokio::time::sleep(random_between(self.inner.config.timings.first_renew_retry))
                        .await;
                    acquired = acquire_once().await;
                }
                _ => break,
            }
        }
        let body = match acquired {
            Ok(body) => body,
            Err(e) if run::acquire_drops_job(&e) => {
                tracing::info!(forge = %forge, runner = %runner.name, error = %e, "the job went elsewhere; the runner waits for another");
                let mut state = runner.lock();
                state.offered = false;
                state.cancel_pending = false;
                return None;
            }
            Err(e) => {
                // Whether GitHub gave the job to this runner is unknown: the
                // runner is not used again.
                tracing::warn!(forge = %forge, runner = %runner.name, error = %e, "could not acquire the job; GitHub will give it to another runner");
                self.retire(runner);
                return None;
            }
        };
        let parsed = message::parse_message(&body);
        let envelope = match parsed
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|m| translate::envelope(m).map_err(|e| e.to_string()))
        {
            Ok(env) => env,
            Err(e) => {
                tracing::error!(forge = %forge, runner = %runner.name, error = %e, "the job message cannot be read; the job cannot be reported and is left to GitHub");
                self.retire(runner);
                return None;
            }
        };
        if !self.first_renew(&runner, &envelope).await {
            self.retire(runner);
            return None;
        }
        let remote_cancel = CancellationToken::new();
        {
            let mut state = runner.lock();
            state.job = Some((envelope.job_id.clone(), remote_cancel.clone()));
            if state.cancel_pending {
                tracing::info!(forge = %forge, runner = %runner.name, "GitHub cancelled the job while it was being acquired");
                remote_cancel.cancel();
            }
        }
        runner.status_changed.notify_one();

        let job_name = envelope.display_name.clone();
        let repository = envelope.repository.clone();
        let step_count = envelope.steps.len();
        let mut envelope = envelope;
        let job = match parsed {
            Ok(m) => translate::translate(
                &m,
                &TranslateOptions {
                    max_job_timeout: self.inner.config.max_job_timeout,
                },
            )
            .map(|t| {
                envelope.step_debug = t.step_debug;
                AssignedJob {
                    spec: t.spec,
                    runs_on: self.inner.config.images[runner.image].runs_on.clone(),
                    image: Some(self.inner.config.images[runner.image].image.clone()),
                    notes: t.notes,
                    user_keys: self.inner.config.user_keys.clone(),
                }
            })
            .map_err(|e| Unrunnable {
                error: Box::new(e),
                payload: Vec::new(),
            }),
            Err(e) => Err(Unrunnable {
                error: Box::new(e),
                payload: Vec::new(),
            }),
        };
        let http = self.inner.http.clone();
        let options = self.inner.config.timings.report.clone();
        let done_runner = runner.clone();
        let report = ReportStarter::new(move |spool: Arc<dyn LogSpool>| {
            let inner = report::start(envelope, http, spool, remote_cancel, options);
            Arc::new(PoolReport {
                inner,
                runner: done_runner,
            }) as Arc<dyn TaskReport>
        });
        Some(Assignment {
            task_id: runner.id as i64,
            received,
            job_name,
            repository,
            step_count,
            job,
            report,
        })
    }

    /// The first `renewjob`: the job starts only after it succeeded
    /// (spec §5.3); when every try fails it is abandoned unreported.
    async fn first_renew(&self, runner: &RunnerCtl, envelope: &JobEnvelope) -> bool {
        let timings = &self.inner.config.timings;
        let mut last = None;
        for attempt in 0..timings.first_renew_tries.max(1) {
            if attempt > 0 {
                tokio::time::sleep(random_between(timings.first_renew_retry)).await;
            }
            match run::renew_job(
                &self.inner.http,
                &envelope.run_service_url,
                &envelope.job_token,
                &envelope.plan_id,
                &envelope.job_id,
            )
            .await
            {
                Ok(_) => return true,
                Err(e) if e.status() == Some(404) => {
                    last = Some(e);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            tracing::warn!(forge = %self.inner.config.forge, runner = %runner.name, job = %envelope.display_name, error = %e, "the job's lock could not be renewed; the job is abandoned without running");
        }
        false
    }
}

/// Whether `name` has the form `<runner_name>-<image>-<8 lower-case hex>`
/// for one of `images`.
fn own_name(runner_name: &str, images: &[ImageRunners], name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(runner_name)
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    let Some((image, hex)) = rest.rsplit_once('-') else {
        return false;
    };
    hex.len() == 8
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && images.iter().any(|i| i.image == image)
}

/// The listener of one runner: its broker session and long poll.
async fn listen(pool: Arc<PoolInner>, runner: Arc<RunnerCtl>) {
    let forge = pool.config.forge.clone();
    let timings = pool.config.timings.clone();
    let owner = format!(
        "{} (PID: {})",
        crate::forge::RUNNER_VERSION,
        std::process::id()
    );
    let session = tokio::select! {
        _ = runner.stop.cancelled() => None,
        s = open_session(&runner, &owner, &timings) => s,
    };
    let Some(mut session) = session else {
        runner.ended.cancel();
        return;
    };
    let mut failures = 0u32;
    let mut delete_session = true;
    loop {
        let status = if runner.lock().job.is_some() {
            RunnerStatus::Busy
        } else {
            RunnerStatus::Online
        };
        let polled = tokio::select! {
            _ = runner.stop.cancelled() => break,
            _ = runner.status_changed.notified() => continue,
            r = runner.broker.get_message(&session, status) => r,
        };
        match polled {
            Ok(None) => failures = 0,
            Ok(Some(message)) => {
                failures = 0;
                match message {
                    BrokerMessage::JobRequest(request) => {
                        let taken = {
                            let mut s = runner.lock();
                            let taken = s.offered || s.job.is_some();
                            s.offered = true;
                            taken
                        };
                        if taken {
                            // An ephemeral runner runs one job: GitHub
                            // gives this one to another runner.
                            tracing::info!(forge = %forge, runner = %runner.name, "a second job reached a runner that has one; left for GitHub to re-route");
                            continue;
                        }
                        if request.should_acknowledge
                            && let Err(e) = runner
                                .broker
                                .acknowledge(&session, status, &request.runner_request_id)
                                .await
                        {
                            tracing::debug!(forge = %forge, runner = %runner.name, error = %e, "acknowledge failed (best effort)");
                        }
                        let _ = pool.arrivals_tx.send(Arrival {
                            runner: runner.clone(),
                            request,
                            received: Instant::now(),
                        });
                    }
                    BrokerMessage::Cancellation { job_id } => {
                        let mut s = runner.lock();
                        match &s.job {
                            Some((id, cancel))
                                if job_id.is_empty() || job_id.eq_ignore_ascii_case(id) =>
                            {
                                tracing::info!(forge = %forge, runner = %runner.name, "GitHub cancelled the job");
                                cancel.cancel();
                            }
                            // The job reference arrived and the job is being
                            // acquired (its id is not known yet).
                            None if s.offered => s.cancel_pending = true,
                            _ => {
                                tracing::debug!(forge = %forge, runner = %runner.name, "a cancellation for a job this runner does not run")
                            }
                        }
                    }
                    BrokerMessage::ForceTokenRefresh => runner.broker.tokens().invalidate().await,
                    BrokerMessage::RunnerShutdown => {
                        delete_session = false;
                        break;
                    }
                    BrokerMessage::Other(kind) => {
                        tracing::debug!(forge = %forge, runner = %runner.name, kind, "broker message ignored");
                    }
                }
            }
            Err(e) if e.kind() == Some("RunnerSessionInvalid") => {
                match open_session(&runner, &owner, &timings).await {
                    Some(s) => session = s,
                    None => break,
                }
            }
            Err(e) if e.is_registration_gone() => {
                // After its job GitHub removes an ephemeral runner.
                if runner.lock().job.is_none() {
                    tracing::warn!(forge = %forge, runner = %runner.name, error = %e, "GitHub no longer knows this runner");
                }
                delete_session = false;
                break;
            }
            Err(e) if e.kind() == Some("RunnerVersionTooOld") || e.status() == Some(403) => {
                let e = if e.kind() == Some("RunnerVersionTooOld") {
                    GithubError::Invalid(format!(
                        "GitHub refuses runner version {} ({e}); raise `runner_version` in [forges.{forge}] to the current Actions runner release",
                        pool.config.runner_version
                    ))
                } else {
                    GithubError::Invalid(format!(
                        "GitHub refuses the runner's long poll ({e}); check the runner group and the permissions of the App or token"
                    ))
                };
                tracing::error!(forge = %forge, runner = %runner.name, error = %e, "GitHub refuses this runner");
                *pool.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                break;
            }
            Err(e) => {
                failures += 1;
                if failures >= timings.poll_max_failures {
                    tracing::error!(forge = %forge, runner = %runner.name, error = %e, failures, "polling keeps failing; the runner gives up");
                    break;
                }
                tracing::warn!(forge = %forge, runner = %runner.name, error = %e, "poll failed; retrying");
                let pause = if failures <= 5 {
                    random_between(timings.poll_retry)
                } else {
                    random_between(timings.poll_retry_long)
                };
                tokio::select! {
                    _ = runner.stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    if delete_session && let Err(e) = runner.broker.delete_session().await {
        tracing::debug!(forge = %forge, runner = %runner.name, error = %e, "could not end the broker session");
    }
    runner.ended.cancel();
}

/// Creates the runner's broker session: after a 409 (a session still
/// open) again every `session_retry` for at most `session_conflict_limit`.
async fn open_session(runner: &RunnerCtl, owner: &str, timings: &PoolTimings) -> Option<String> {
    let started = Instant::now();
    let mut failures = 0;
    loop {
        match runner.broker.create_session(owner).await {
            Ok(id) => return Some(id),
            Err(e)
                if e.status() == Some(409)
                    && started.elapsed() < timings.session_conflict_limit =>
            {
                tracing::debug!(runner = %runner.name, "a session is still open; waiting");
            }
            Err(e) if e.is_retryable() && failures < timings.poll_max_failures => {
                failures += 1;
                tracing::warn!(runner = %runner.name, error = %e, "cannot open a broker session; retrying");
            }
            Err(e) => {
                tracing::error!(runner = %runner.name, error = %e, "cannot open a broker session; the runner gives up");
                return None;
            }
        }
        tokio::select! {
            _ = runner.stop.cancelled() => return None,
            _ = tokio::time::sleep(timings.session_retry) => {}
        }
    }
}

/// Fetches for the daemon's poll loop.
struct GithubPoller {
    pool: Pool,
}

#[async_trait::async_trait]
impl Poller for GithubPoller {
    async fn no_capacity(&mut self) {
        self.forget_ended();
        if let Err(e) = self.pool.reconcile(0).await {
            tracing::debug!(forge = %self.pool.inner.config.forge, error = %e, "could not withdraw the idle runners");
        }
    }

    async fn fetch(&mut self, capacity: u32) -> Result<Vec<Assignment>, Failure> {
        self.forget_ended();
        let pool = &self.pool;
        if let Some(e) = pool
            .inner
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(Failure::new(FailureKind::Fatal, e));
        }
        {
            let mut rx = pool.inner.arrivals_rx.lock().await;
            let mut waiting = pool.inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
            while let Ok(a) = rx.try_recv() {
                waiting.push_back(a);
            }
        }
        let mut assignments = Vec::new();
        while assignments.len() < capacity as usize {
            let next = pool
                .inner
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            let Some(arrival) = next else { break };
            if arrival.runner.stop.is_cancelled() {
                continue;
            }
            if let Some(a) = pool.take(arrival).await {
                assignments.push(a);
            }
        }
        let free = (capacity as usize).saturating_sub(assignments.len());
        match pool.reconcile(free).await {
            Ok(()) => Ok(assignments),
            Err(e) if assignments.is_empty() => Err(failure(e)),
            Err(e) => {
                tracing::warn!(forge = %pool.inner.config.forge, error = %e, "could not register the idle runners");
                Ok(assignments)
            }
        }
    }
}

impl GithubPoller {
    /// Forgets runners whose listener ended, removing at GitHub those that
    /// ran no job (a runner that gave up polling would otherwise stay
    /// registered, offline, until the next start or stop).
    fn forget_ended(&self) {
        let ended: Vec<Arc<RunnerCtl>> = self
            .pool
            .runners()
            .iter()
            .filter(|r| r.ended.is_cancelled())
            .cloned()
            .collect();
        for r in ended {
            if r.lock().job.is_none() {
                self.pool.retire(r);
            } else {
                self.pool.runners().retain(|x| x.id != r.id);
            }
        }
    }
}

impl Drop for GithubPoller {
    /// The daemon stopped fetching (SIGTERM): idle runners, and runners
    /// whose job was not taken, are removed at once, so that GitHub sends
    /// no job to a runner that would never run it. Running jobs keep
    /// their runners until their reports are done.
    fn drop(&mut self) {
        let pool = self.pool.clone();
        let waiting: Vec<Arc<RunnerCtl>> = pool
            .inner
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .map(|a| a.runner)
            .collect();
        let idle: Vec<Arc<RunnerCtl>> = pool
            .runners()
            .iter()
            .filter(|r| r.lock().job.is_none())
            .cloned()
            .collect();
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        for r in idle.into_iter().chain(waiting) {
            pool.retire(r);
        }
    }
}

/// A job's report, which also ends its runner's listener once the report
/// is done (GitHub removes the ephemeral runner after `completejob`).
struct PoolReport {
    inner: Arc<dyn TaskReport>,
    runner: Arc<RunnerCtl>,
}

impl crate::events::EventSink for PoolReport {
    fn emit(&self, event: crate::events::JobEvent) {
        self.inner.emit(event);
    }
}

#[async_trait::async_trait]
impl TaskReport for PoolReport {
    async fn run(&self, cancel_job: CancellationToken) -> Result<(), Failure> {
        let result = self.inner.run(cancel_job).await;
        if result.is_ok() || self.inner.is_gone() {
            self.runner.stop.cancel();
        }
        result
    }

    async fn finish(&self, cancel_job: &CancellationToken) -> Result<(), Failure> {
        let result = self.inner.finish(cancel_job).await;
        if result.is_ok() || self.inner.is_gone() {
            self.runner.stop.cancel();
        }
        result
    }

    fn close(
        &self,
        conclusion: Conclusion,
        outputs: &IndexMap<String, String>,
        error: Option<&str>,
    ) {
        self.inner.close(conclusion, outputs, error);
    }

    fn is_gone(&self) -> bool {
        self.inner.is_gone()
    }

    fn result(&self) -> Option<Conclusion> {
        self.inner.result()
    }

    fn save(&self) -> Vec<u8> {
        self.inner.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(names: &[&str]) -> Vec<ImageRunners> {
        names
            .iter()
            .map(|n| ImageRunners {
                image: n.to_string(),
                labels: Vec::new(),
                runs_on: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn only_this_hosts_runner_names_count_as_its_own() {
        let imgs = images(&["tiny", "omni-os"]);
        assert!(own_name("ci", &imgs, "ci-tiny-0123abcd"));
        assert!(own_name("ci", &imgs, "ci-omni-os-deadbeef"));
        // Another host whose name extends ours, another image, other forms.
        assert!(!own_name("ci", &imgs, "ci-2-tiny-0123abcd"));
        assert!(!own_name("ci", &imgs, "ci-debian-0123abcd"));
        assert!(!own_name("ci", &imgs, "ci-tiny-0123ABCD"));
        assert!(!own_name("ci", &imgs, "ci-tiny-0123abc"));
        assert!(!own_name("ci", &imgs, "citiny-0123abcd"));
        assert!(!own_name("ci", &imgs, "my-laptop"));
    }

    #[test]
    fn retry_pauses_stay_in_their_range() {
        for _ in 0..100 {
            let d = random_between((Duration::from_secs(15), Duration::from_secs(30)));
            assert!(d >= Duration::from_secs(15) && d <= Duration::from_secs(30));
        }
        assert_eq!(
            random_between((Duration::from_secs(5), Duration::from_secs(1))),
            Duration::from_secs(5)
        );
    }
}

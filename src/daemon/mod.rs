//! `solstice run`: the runner daemon. It polls every configured forge for
//! tasks, runs each in a fresh VM within the host's capacity, streams logs
//! and results back, and survives crashes, forge outages and restarts
//! without stray VMs or lost log rows.
//!
//! It talks to forges only through the port in [`crate::forge`]: connect,
//! fetch assignments, report, resume after a restart.
//!
//! Start-up order (the cli loaded the config): state directory writable →
//! lock file → state database → reconcile what a previous run left →
//! accelerator → metrics endpoint → warm pools start filling (images with
//! `warm` or `snapshot`) → credentials of every forge → `READY=1` → poll
//! loops.
//! On SIGTERM/SIGINT: stop fetching, let running jobs finish for up to
//! `daemon.drain_timeout_secs`, then cancel them, report them, destroy the
//! warm guests, clean up and return (the cli exits 0).

pub mod backoff;
pub mod notify;
pub mod slots;

mod debug;
mod poll;
mod reconcile;
mod record;
mod spool;
mod task;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actions::ActionCache;
use crate::config::{Config, ForgeConfig};
use crate::errors::Chain;
use crate::forge::{Failure, Forge, RunnerCredentials, Session, TaskReport};
use crate::job::VmRun;
use crate::metrics::Metrics;
use crate::store::{CredentialsRow, Store};
use crate::vm::Accel;
use crate::vm::accel::{Accelerator, KvmFailure};

pub use slots::Slots;

/// The version string sent to forges.
pub use crate::forge::RUNNER_VERSION;
/// How long cancelled jobs get to tear down and report after the drain.
const CANCEL_GRACE: Duration = Duration::from_secs(60);
/// Finished job records kept in the state database (for `solstice status`).
pub const KEEP_FINISHED_JOBS: usize = 1000;
/// Cap of the back-off between failed polls.
const POLL_BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Why the daemon could not start (or had to stop).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "The configuration has no [forges.<name>] section, so `solstice run` has nothing to serve: add one for your Forgejo or Gitea instance (docs/forges.md shows how) or your GitHub repository or organisation (docs/github.md); `solstice exec` runs a workflow file without a forge"
    )]
    NoForges,
    #[error(transparent)]
    StateDir(#[from] crate::store::StateDirError),
    #[error("Cannot open the state database")]
    Store(#[source] crate::store::StoreError),
    #[error("The accelerator probe failed: {0}")]
    Probe(tokio::task::JoinError),
    #[error("Cannot choose an accelerator")]
    Accel(#[source] crate::vm::accel::AccelError),
    /// The forge's configuration cannot be used (its URL).
    #[error("Forge {forge}: {error}")]
    Forge { forge: String, error: Failure },
    /// A forge's credentials cannot be had (the message names the forge).
    #[error(transparent)]
    Credentials(Failure),
    #[error("Cannot serve metrics on {addr}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot start the cache service (`[cache]`; `enabled = false` turns it off)")]
    Cache(#[source] crate::cache_service::CacheError),
    #[error("Cannot start the debug SSH gateway (`[debug_ssh]`)")]
    DebugHostKey(#[source] crate::debug::hostkey::HostKeyError),
    #[error(
        "The debug SSH gateway cannot listen on {addr} (`debug_ssh.listen`); is another program using the port?"
    )]
    DebugListen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot install the signal handlers")]
    Signals(#[source] std::io::Error),
    #[error(
        "Another `solstice run` already uses the state directory {}; stop it, or give this one another `daemon.state_dir`",
        .0.display()
    )]
    Locked(PathBuf),
    #[error("Cannot lock the state directory {}", .path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// True when a `solstice run` holds the lock of `state_dir` now.
pub fn is_running(state_dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(state_dir.join("solstice.lock")) else {
        return false;
    };
    matches!(
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock),
        Err((_, nix::errno::Errno::EWOULDBLOCK))
    )
}

/// Takes the state directory's lock file (`solstice.lock`), so that two
/// daemons never share a state directory (each would reconcile away the
/// other's VMs). Held until the returned lock is dropped.
fn lock_state_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    let path = dir.join("solstice.lock");
    let lock_err = |source: std::io::Error| DaemonError::Lock {
        path: path.clone(),
        source,
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(lock_err)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_err)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(DaemonError::Locked(dir.to_path_buf())),
        Err((_, e)) => Err(lock_err(std::io::Error::from(e))),
    }
}

/// One job the daemon is running, for status lines and cancellation.
#[derive(Clone)]
pub(crate) struct RunningJob {
    pub forge: String,
    pub task_id: i64,
    pub cancel: CancellationToken,
    /// Where a reason for a cancellation goes (the job's forge log).
    pub reporter: Arc<dyn TaskReport>,
}

/// Everything the poll loops and task runners share.
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub slots: Slots,
    pub metrics: Metrics,
    /// Shared by every job (and the warm pools); `auto`'s KVM may fall back
    /// to TCG at run time.
    pub accel: Arc<Accelerator>,
    /// Cancelled on SIGTERM/SIGINT: stop fetching.
    pub stop_fetching: CancellationToken,
    /// Running jobs by job id.
    pub running: Mutex<HashMap<String, RunningJob>>,
    /// Every task runner, so that shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Runs a job (in a VM).
    pub jobs: Arc<dyn JobRunner>,
    /// The host's action cache, shared by every job.
    pub actions: Arc<ActionCache>,
    /// The cache service every job gets a lease on (`None`: `[cache]` is off).
    pub cache: Option<Arc<crate::cache_service::CacheService>>,
    /// The VMs kept for debug SSH (`None`: no `[debug_ssh]` gateway).
    pub debug: Option<crate::debug::DebugHolds>,
    /// Guests booted ahead for the next jobs (`None`: no image has `warm`
    /// or `snapshot`).
    pub warm: Option<crate::warm::WarmPools>,
}

impl Shared {
    pub fn update_status(&self) {
        let running = self.running.lock().map(|r| r.len()).unwrap_or_default();
        let max = self.slots.capacity();
        let what = if self.stop_fetching.is_cancelled() {
            "draining"
        } else {
            "serving"
        };
        notify::status(&format!("{what}: {running} of {max} jobs running"));
    }
}

/// Chooses the accelerator (a KVM failure recorded on this host before
/// counts), and records a run-time fallback in the database and metrics.
async fn resolve_accelerator(
    config: &Config,
    store: &Arc<Store>,
    metrics: &Metrics,
) -> Result<Accelerator, DaemonError> {
    let remembered = crate::startup::remembered_kvm_failure(store);
    let qemu = config.qemu.clone();
    let accel =
        tokio::task::spawn_blocking(move || Accelerator::resolve(&qemu, remembered.as_ref()))
            .await
            .map_err(DaemonError::Probe)?
            .map_err(DaemonError::Accel)?;
    tracing::info!(accel = ?accel.current(), reason = %accel.initial().reason, "accelerator chosen");
    metrics.set_kvm_in_use(accel.current() == Accel::Kvm);
    let store = store.clone();
    let metrics = metrics.clone();
    Ok(accel.with_listener(Box::new(move |f: &KvmFailure| {
        tracing::warn!(reason = %f.reason, "KVM does not work on this host: a job's guest did not boot under it; every VM now runs under TCG (recorded in the state database; `solstice doctor` explains)");
        metrics.kvm_fell_back();
        crate::startup::record_kvm_failure(&store, f);
    })))
}

/// Runs a job in a VM: [`crate::job::run_in_vm`], behind a trait so that
/// the daemon's tests can run jobs without VMs.
#[async_trait::async_trait]
pub(crate) trait JobRunner: Send + Sync {
    async fn run(
        &self,
        run: &VmRun<'_>,
        sink: &dyn crate::events::EventSink,
        cancel: &CancellationToken,
    ) -> Result<crate::job::RunReport, crate::job::RunError>;
}

/// The real [`JobRunner`].
struct VmJobs;

#[async_trait::async_trait]
impl JobRunner for VmJobs {
    async fn run(
        &self,
        run: &VmRun<'_>,
        sink: &dyn crate::events::EventSink,
        cancel: &CancellationToken,
    ) -> Result<crate::job::RunReport, crate::job::RunError> {
        crate::job::run_in_vm(run, sink, cancel).await
    }
}

/// Opens the port of a configured forge.
pub(crate) type OpenForge = dyn Fn(&ForgeConfig) -> Result<Arc<dyn Forge>, Failure> + Send + Sync;

/// What the daemon is built from besides its config: the forges' ports and
/// the job runner (tests replace both), and what stops it.
pub(crate) struct Parts {
    pub open_forge: Box<OpenForge>,
    pub jobs: Arc<dyn JobRunner>,
    pub signals: Signals,
}

/// Stop requests: SIGTERM/SIGINT (or a test's), by name.
pub(crate) struct Signals(tokio::sync::mpsc::UnboundedReceiver<&'static str>);

impl Signals {
    /// SIGTERM and SIGINT.
    fn install() -> Result<Signals, DaemonError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    Some(()) = sigterm.recv() => "SIGTERM",
                    Some(()) = sigint.recv() => "SIGINT",
                    else => break,
                };
                if tx.send(name).is_err() {
                    break;
                }
            }
        });
        Ok(Signals(rx))
    }

    /// Stop requests sent by the caller.
    #[cfg(test)]
    pub(crate) fn manual() -> (tokio::sync::mpsc::UnboundedSender<&'static str>, Signals) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (tx, Signals(rx))
    }

    /// The next stop request.
    async fn next(&mut self) -> &'static str {
        match self.0.recv().await {
            Some(name) => name,
            None => std::future::pending().await,
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT (then drains) or a fatal error.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    if config.forges.is_empty() {
        return Err(DaemonError::NoForges);
    }
    // What works but probably not as meant (`check-config` shows the same).
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let signals = Signals::install()?;
    let max_job_timeout = config.daemon.max_job_timeout;
    let images = config.images.clone();
    let parts = Parts {
        open_forge: Box::new(move |f| crate::forge::open(f, &images, max_job_timeout)),
        jobs: Arc::new(VmJobs),
        signals,
    };
    serve(config, parts).await
}

/// The daemon from its state directory on: start-up, serving, drain.
pub(crate) async fn serve(config: Config, parts: Parts) -> Result<(), DaemonError> {
    let Parts {
        open_forge,
        jobs,
        mut signals,
    } = parts;
    let config = Arc::new(config);
    crate::store::check_state_dir(&config.daemon.state_dir)?;
    let _lock = lock_state_dir(&config.daemon.state_dir)?;
    let store = open_state(&config)?;

    let metrics = Metrics::new();
    let accel = resolve_accelerator(&config, &store, &metrics).await?;
    let cache = if config.cache.enabled {
        let service = crate::cache_service::CacheService::start(config.cache.settings())
            .await
            .map_err(DaemonError::Cache)?;
        tracing::info!(port = service.port(), dir = %service.dir().display(), "cache service on 127.0.0.1");
        Some(Arc::new(service))
    } else {
        None
    };
    let image_max: BTreeMap<String, u32> = config
        .images
        .values()
        .filter_map(|i| i.max_concurrent_jobs.map(|m| (i.name.clone(), m)))
        .collect();
    let slots = Slots::new(config.daemon.max_concurrent_jobs, image_max);
    let accel = Arc::new(accel);
    let warm = warm_pools(&config, &slots, &accel, &store, &metrics, cache.as_deref());
    let debug_stop = CancellationToken::new();
    let debug = match &config.debug_ssh {
        Some(settings) => {
            Some(start_debug_gateway(&config, settings, &metrics, debug_stop.clone()).await?)
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        debug,
        config: config.clone(),
        store: store.clone(),
        slots,
        warm,
        metrics: metrics.clone(),
        accel,
        stop_fetching: CancellationToken::new(),
        running: Mutex::new(HashMap::new()),
        tasks: TaskTracker::new(),
        jobs,
        // The forge that sent a job is allowed for that job (at any address:
        // the operator configured it); other forges' hosts are not listed.
        actions: Arc::new(ActionCache::new(
            config
                .actions
                .cache_settings(&config.daemon.state_dir, std::iter::empty()),
        )),
        cache,
    });
    metrics.set_capacity(config.daemon.max_concurrent_jobs);

    let metrics_stop = CancellationToken::new();
    if let Some(addr) = config.daemon.metrics_listen {
        let (bound, _server) = crate::metrics::serve(metrics.clone(), addr, metrics_stop.clone())
            .await
            .map_err(|source| DaemonError::Metrics { addr, source })?;
        tracing::info!(address = %bound, "metrics served at /metrics");
    }

    // The pools start filling now (start-up clean-up is done): their guests
    // boot while the forges connect.
    let warm_stop = CancellationToken::new();
    let warm_loop = shared.warm.clone().map(|pools| {
        let stop = warm_stop.clone();
        tokio::spawn(async move { pools.run(stop).await })
    });

    // Credentials of every forge, before READY=1.
    let mut sessions: Vec<(ForgeConfig, Arc<dyn Session>)> = Vec::new();
    for forge in config.forges.values() {
        let session = tokio::select! {
            r = connect(&shared, forge, open_forge.as_ref()) => match r {
                Ok(session) => session,
                Err(e) => {
                    stop_warm(&warm_stop, warm_loop).await;
                    return Err(e);
                }
            },
            _ = signals.next() => {
                for (_, session) in &sessions {
                    session.disconnect().await;
                }
                debug_stop.cancel();
                stop_warm(&warm_stop, warm_loop).await;
                return Ok(());
            }
        };
        sessions.push((forge.clone(), session));
    }

    // Tasks a previous run left unreported: report them now, in the background.
    for (forge, session) in &sessions {
        let s = shared.clone();
        let f = forge.name.clone();
        let c = session.clone();
        shared
            .tasks
            .spawn(async move { reconcile::interrupted_tasks(&s, &f, c.as_ref()).await });
    }

    let forge_names: Vec<&str> = config.forges.keys().map(String::as_str).collect();
    notify::ready(&format!(
        "serving {} ({} jobs at most)",
        forge_names.join(", "),
        config.daemon.max_concurrent_jobs
    ));
    tracing::info!(
        forges = %forge_names.join(", "),
        capacity = config.daemon.max_concurrent_jobs,
        "ready"
    );

    let watchdog_stop = CancellationToken::new();
    if let Some(period) = notify::watchdog_interval() {
        let stop = watchdog_stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tokio::select! {
                    _ = tick.tick() => notify::watchdog(),
                    _ = stop.cancelled() => break,
                }
            }
        });
    }

    let mut pollers = tokio::task::JoinSet::new();
    for (forge, session) in &sessions {
        let s = shared.clone();
        let f = forge.clone();
        let poller = session.poller();
        pollers.spawn(async move { poll::poll_loop(s, f, poller).await });
    }

    // Wait for a signal (or every poll loop ending, which only a fatal error does).
    let signal = tokio::select! {
        s = signals.next() => s,
        _ = async { while pollers.join_next().await.is_some() {} } => "no forge left to poll",
    };
    drain(&shared, signal, pollers, &mut signals).await;
    // No job can take a warm guest any more: every one is destroyed.
    stop_warm(&warm_stop, warm_loop).await;
    if let Some(holds) = &shared.debug {
        // Every VM kept for debugging is destroyed before the daemon stops.
        holds.shutdown().await;
    }
    debug_stop.cancel();
    for (_, session) in &sessions {
        session.disconnect().await;
    }
    watchdog_stop.cancel();
    metrics_stop.cancel();
    tracing::info!("stopped");
    Ok(())
}

/// The warm pools, when some image has `warm` or `snapshot`.
fn warm_pools(
    config: &Arc<Config>,
    slots: &Slots,
    accel: &Arc<Accelerator>,
    store: &Arc<Store>,
    metrics: &Metrics,
    cache: Option<&crate::cache_service::CacheService>,
) -> Option<crate::warm::WarmPools> {
    if !config.images.values().any(|i| i.warm > 0 || i.snapshot) {
        return None;
    }
    let accel = accel.clone();
    let pools = crate::warm::WarmPools::new(crate::warm::PoolOptions {
        config: config.clone(),
        load: Arc::new(slots.clone()),
        accel: Arc::new(move || accel.current()),
        // Warm guests reach the cache service like job VMs (their jobs get
        // a lease on it when they take the guest).
        host_ports: cache.map(|c| vec![c.port()]).unwrap_or_default(),
        store: Some(store.clone()),
        metrics: Some(metrics.clone()),
    });
    for p in pools.status() {
        tracing::info!(image = %p.image, warm = p.target, "warm pool configured");
    }
    Some(pools)
}

/// Stops the warm pools' loop and waits until every warm guest is destroyed.
async fn stop_warm(stop: &CancellationToken, run: Option<tokio::task::JoinHandle<()>>) {
    stop.cancel();
    if let Some(run) = run
        && let Err(e) = run.await
    {
        tracing::error!(error = %e, "the warm pools' loop panicked");
    }
}

/// Loads (or makes) the gateway's host key, binds its port and serves it
/// until `stop`.
async fn start_debug_gateway(
    config: &Config,
    settings: &crate::config::DebugSshConfig,
    metrics: &Metrics,
    stop: CancellationToken,
) -> Result<crate::debug::DebugHolds, DaemonError> {
    let key = crate::debug::hostkey::load_or_create(&config.daemon.state_dir)
        .map_err(DaemonError::DebugHostKey)?;
    let fingerprint = crate::debug::hostkey::fingerprint(&key);
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| DaemonError::DebugListen {
            addr: settings.listen,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(settings.listen);
    let holds =
        crate::debug::DebugHolds::new(settings.clone(), fingerprint.clone(), metrics.clone());
    tokio::spawn(crate::debug::gateway::serve(
        listener,
        key,
        holds.clone(),
        stop,
    ));
    tracing::info!(address = %bound, fingerprint = %fingerprint, "debug SSH gateway listening");
    Ok(holds)
}

/// Opens the state database and cleans up what a previous run left: VMs
/// first (local, fast); its tasks are reported once the forges are connected.
fn open_state(config: &Config) -> Result<Arc<Store>, DaemonError> {
    let db = crate::store::db_path(&config.daemon.state_dir);
    let store = Arc::new(Store::open(&db).map_err(DaemonError::Store)?);
    tracing::info!(database = %db.display(), "state database open");
    let jobs_dir = crate::job::jobs_dir(config);
    reconcile::leftover_warm(&store, &crate::warm::warm_dir(config));
    reconcile::leftover_vms(&store, &jobs_dir);
    reconcile::leftover_holds(&store);
    reconcile::orphaned_forges(&store, config);
    match store.prune_finished_jobs(KEEP_FINISHED_JOBS) {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "pruned old job records"),
        Err(e) => tracing::warn!(error = %e, "could not prune old job records"),
    }
    Ok(store)
}

/// Stops fetching, lets the running jobs finish within the drain time, then
/// cancels the rest and waits (a while) for their reports.
async fn drain(
    shared: &Arc<Shared>,
    signal: &str,
    mut pollers: tokio::task::JoinSet<()>,
    signals: &mut Signals,
) {
    shared.stop_fetching.cancel();
    // No new task comes: warm guests that start now would never be used.
    if let Some(pools) = &shared.warm {
        pools.stop_refilling();
    }
    let running = shared.running.lock().map(|r| r.len()).unwrap_or_default();
    let drain = shared.config.daemon.drain_timeout;
    notify::stopping(&format!(
        "stopping ({signal}): draining {running} job(s) for up to {}s",
        drain.as_secs()
    ));
    tracing::info!(
        signal,
        running,
        drain_secs = drain.as_secs(),
        "stopping: no new tasks; waiting for running jobs"
    );
    // Each poll loop ends at its next pause; a fetch in flight completes
    // first (bounded by its deadline), and its tasks join the drain.
    while pollers.join_next().await.is_some() {}
    shared.tasks.close();

    let drained = tokio::select! {
        _ = shared.tasks.wait() => true,
        _ = tokio::time::sleep(drain) => false,
        _ = signals.next() => false,
    };
    if drained {
        return;
    }
    let jobs: Vec<RunningJob> = shared
        .running
        .lock()
        .map(|r| r.values().cloned().collect())
        .unwrap_or_default();
    tracing::warn!(
        jobs = jobs.len(),
        "drain time is over: cancelling the running jobs"
    );
    notify::status(&format!("stopping: cancelling {} job(s)", jobs.len()));
    for j in &jobs {
        tracing::info!(forge = %j.forge, task = j.task_id, "cancelling");
        crate::job::runner_line(
            j.reporter.as_ref(),
            format!(
                "The runner is shutting down and its drain time ({}s) is over: the job is cancelled",
                drain.as_secs()
            ),
        );
        j.cancel.cancel();
    }
    if tokio::time::timeout(CANCEL_GRACE, shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::error!(
            "jobs did not finish reporting in time; their state stays in the database for the next start"
        );
    }
}

/// The credentials saved for `forge` (a database failure is logged: the
/// forge is then asked again).
fn saved_credentials(store: &Store, forge: &str) -> Option<RunnerCredentials> {
    match store.get_credentials(forge) {
        Ok(row) => row.map(|r| RunnerCredentials {
            url: r.url,
            uuid: r.uuid,
            token: r.token,
            runner_id: r.runner_id,
            declared_labels: r.declared_labels,
        }),
        Err(e) => {
            tracing::warn!(forge, error = %e, "could not read the saved runner credentials");
            None
        }
    }
}

fn save_credentials(store: &Store, forge: &str, c: &RunnerCredentials) {
    let row = CredentialsRow {
        url: c.url.clone(),
        uuid: c.uuid.clone(),
        token: c.token.clone(),
        runner_id: c.runner_id,
        declared_labels: c.declared_labels.clone(),
    };
    if let Err(e) = store.save_credentials(forge, &row) {
        tracing::error!(forge, error = %e, "could not save the runner credentials");
    }
}

/// Obtains a forge's credentials and declares its labels, and returns a
/// session that carries the credentials. When the forge cannot be reached
/// but the credentials are known without it (secret or runner file, or
/// saved after an earlier registration), the daemon serves with them at
/// once and declares in the background; only a runner that still has to
/// register waits (with back-off) for the forge.
async fn connect(
    shared: &Arc<Shared>,
    forge: &ForgeConfig,
    open_forge: &OpenForge,
) -> Result<Arc<dyn Session>, DaemonError> {
    let port = open_forge(forge).map_err(|error| DaemonError::Forge {
        forge: forge.name.clone(),
        error,
    })?;
    let mut backoff = backoff::Backoff::new(forge.fetch_interval, POLL_BACKOFF_CAP);
    let mut health = backoff::Health::default();
    loop {
        match connect_once(shared, forge, port.as_ref()).await {
            Ok(session) => {
                if let backoff::HealthChange::Up { failures } = health.succeeded() {
                    tracing::info!(forge = %forge.name, failures, "forge reachable again");
                }
                return Ok(session);
            }
            Err(e) if e.is_retryable() => {
                shared.metrics.forge_error(&forge.name, "connect");
                let saved = saved_credentials(&shared.store, &forge.name);
                if let Some(session) = port.connect_offline(saved.as_ref()) {
                    tracing::warn!(
                        forge = %forge.name,
                        error = %Chain(&e),
                        "cannot reach the forge; serving with the credentials known here and declaring the labels once it answers"
                    );
                    let s = shared.clone();
                    let f = forge.clone();
                    let p = port.clone();
                    shared
                        .tasks
                        .spawn(async move { declare_later(s, f, p).await });
                    return Ok(session);
                }
                if health.failed() == backoff::HealthChange::Down {
                    tracing::warn!(forge = %forge.name, error = %Chain(&e), "cannot reach the forge to register; retrying with back-off");
                } else {
                    tracing::debug!(forge = %forge.name, error = %Chain(&e), "registering failed again");
                }
                tokio::time::sleep(backoff.fail(rand::random::<f64>())).await;
            }
            Err(e) => return Err(DaemonError::Credentials(e)),
        }
    }
}

/// One attempt at [`Forge::connect`], saving what changed.
async fn connect_once(
    shared: &Shared,
    forge: &ForgeConfig,
    port: &dyn Forge,
) -> Result<Arc<dyn Session>, Failure> {
    let saved = saved_credentials(&shared.store, &forge.name);
    let got = port.connect(saved).await?;
    if got.changed {
        save_credentials(&shared.store, &forge.name, &got.credentials);
    }
    tracing::info!(
        forge = %forge.name,
        url = %forge.url,
        uuid = %got.credentials.uuid,
        labels = %forge.labels.join(","),
        "connected"
    );
    Ok(got.session)
}

/// Retries the declaration in the background until the forge answers.
async fn declare_later(shared: Arc<Shared>, forge: ForgeConfig, port: Arc<dyn Forge>) {
    let mut backoff = backoff::Backoff::new(forge.fetch_interval, POLL_BACKOFF_CAP);
    loop {
        tokio::select! {
            _ = shared.stop_fetching.cancelled() => return,
            _ = tokio::time::sleep(backoff.fail(rand::random::<f64>())) => {}
        }
        match connect_once(&shared, &forge, port.as_ref()).await {
            Ok(_) => return,
            Err(e) if e.is_retryable() => {
                tracing::debug!(forge = %forge.name, error = %Chain(&e), "declare failed again")
            }
            Err(e) => {
                tracing::error!(forge = %forge.name, error = %Chain(&e), "declaring the runner failed; jobs may not match its labels");
                return;
            }
        }
    }
}

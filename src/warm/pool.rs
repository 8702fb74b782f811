//! Warm pools: per image, guests kept up and SSH-ready for the next jobs.
//!
//! Each image with `warm = N` gets a pool of N guests, each booted with
//! [`crate::job::boot_ready`] under its own fresh in-memory client key (or,
//! for a `snapshot = true` image whose template is ready, restored from the
//! template and re-keyed). Their directories live under
//! [`crate::warm::warm_dir`] as `w-<image>-<8 hex>`; a job that takes one
//! gets the directory moved to its own (`Vm::move_to`).
//!
//! Capacity: warm guests, ready or starting (and templates being built),
//! count against `daemon.max_concurrent_jobs` together with the jobs. The
//! refill loop starts a guest only while `jobs + warm < capacity`, at most
//! one start per image at a time. Jobs win: a job that finds no guest of its
//! image while `jobs + warm > capacity` evicts a warm guest before it boots
//! its own VM ([`choose_victim`]).
//!
//! Staleness: a ready guest whose image changed ([`fingerprint`]), that
//! waited longer than `warm_max_idle_secs`, whose QEMU died or whose SSH
//! session closed is destroyed, both when a job would take it and every
//! [`TICK`] in the refill loop.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::template::Template;
use crate::config::{Config, Firmware, ImageConfig};
use crate::errors::Chain;
use crate::events::{EventSink, JobEvent, Phase};
use crate::job::run::{BootRequest, ReadyGuest, RunError, StartKind, WarmSource, boot_ready};
use crate::metrics::Metrics;
use crate::ssh::ClientKey;
use crate::store::Store;
use crate::store::WarmKind;
use crate::vm::Accel;

/// How often the refill loop looks at the pools (sooner when woken).
pub const TICK: Duration = Duration::from_secs(2);
/// First pause after a failed start; doubled after each further failure.
pub const RETRY_BASE: Duration = Duration::from_secs(5);
/// Longest pause between failed starts of one image.
pub const RETRY_CAP: Duration = Duration::from_secs(300);
/// How long a job waits for an evicted guest that is still starting to be gone.
const EVICT_WAIT: Duration = Duration::from_secs(30);
/// The longest image-name part of a warm guest's id (`w-<image>-<8 hex>`).
const ID_IMAGE_CHARS: usize = 40;

/// The host's load as the pools see it: warm guests fit beside the jobs.
pub trait HostLoad: Send + Sync {
    /// The host-wide maximum of VMs (`daemon.max_concurrent_jobs`).
    fn capacity(&self) -> u32;
    /// Host slots jobs use now (running, or held for debug SSH). Slots a
    /// poll loop merely reserved for a fetch do not count: a warm guest is
    /// evicted when a task really comes ([`WarmSource::take`]).
    fn jobs(&self) -> u32;
}

/// One image's pool, for `solstice status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub image: String,
    /// `images.<name>.warm`.
    pub target: u32,
    pub ready: u32,
    pub starting: u32,
}

/// What the pools need from their owner (the daemon, or `bench`).
pub struct PoolOptions {
    pub config: Arc<Config>,
    pub load: Arc<dyn HostLoad>,
    /// The accelerator new guests start under now (`auto`'s KVM may have
    /// fallen back to TCG since the start).
    pub accel: Arc<dyn Fn() -> Accel + Send + Sync>,
    /// Host ports guests may reach at 10.0.2.2 (the cache service's).
    pub host_ports: Vec<u16>,
    /// Where warm guests are recorded (`None`: nowhere; `bench`).
    pub store: Option<Arc<Store>>,
    pub metrics: Option<Metrics>,
}

/// Every image's pool (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct WarmPools {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    load: Arc<dyn HostLoad>,
    accel: Arc<dyn Fn() -> Accel + Send + Sync>,
    host_ports: Vec<u16>,
    store: Option<Arc<Store>>,
    metrics: Option<Metrics>,
    /// `<state_dir>/warm`.
    dir: PathBuf,
    state: Mutex<State>,
    /// Wakes the refill loop (a guest was taken or a start ended).
    wake: Notify,
    /// Every start in flight (members and templates), so that stopping
    /// waits until their VMs are gone.
    starts: TaskTracker,
}

#[derive(Default)]
struct State {
    pools: BTreeMap<String, Pool>,
    /// Set once [`WarmPools::run`] stops: nothing starts any more.
    stopped: bool,
    /// Set by [`WarmPools::stop_refilling`]: ready guests stay for the
    /// jobs still to come, nothing new starts.
    no_refill: bool,
}

struct Pool {
    image: ImageConfig,
    /// Ready guests, oldest first.
    ready: VecDeque<Idle>,
    /// Members being booted or restored (at most one at a time).
    starting: Vec<Starting>,
    retry: Retry,
    template: TemplateSlot,
}

/// A ready guest waiting for a job.
struct Idle {
    id: String,
    guest: ReadyGuest,
    /// The image's [`fingerprint`] when the guest was started.
    key: String,
    /// When it became ready.
    since: Instant,
}

/// A start in flight. Whoever removes it from its pool owns the decision:
/// the start's task destroys a guest that is no longer wanted, and cancels
/// `done` once its VM is gone.
struct Starting {
    id: String,
    cancel: CancellationToken,
    done: CancellationToken,
    since: Instant,
}

#[derive(Default)]
struct TemplateSlot {
    /// The saved guest, and the [`fingerprint`] it was made from.
    ready: Option<(Arc<Template>, TemplateTag)>,
    building: Option<Starting>,
    retry: Retry,
}

/// A ready template's [`fingerprint`], and its row in the state database
/// (forgotten when the template is dropped).
struct TemplateTag {
    key: String,
    _row: Option<RowGuard>,
}

/// Forgets a warm row when dropped.
struct RowGuard {
    store: Arc<Store>,
    id: String,
}

impl Drop for RowGuard {
    fn drop(&mut self) {
        if let Err(e) = self.store.forget_warm(&self.id) {
            tracing::warn!(warm = %self.id, error = %e, "could not forget a snapshot template's record");
        }
    }
}

/// Why a ready guest was destroyed (the `reason` label of
/// `solstice_warm_replaced_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// Waited longer than `warm_max_idle_secs`.
    Idle,
    /// The image file, its configuration, QEMU or the accelerator changed.
    ImageChanged,
    /// QEMU exited or the SSH session closed.
    Dead,
    /// Made room for a job of another image.
    Evicted,
    /// A start that failed.
    Failed,
}

impl Replaced {
    pub fn as_str(self) -> &'static str {
        match self {
            Replaced::Idle => "idle",
            Replaced::ImageChanged => "image_changed",
            Replaced::Dead => "dead",
            Replaced::Evicted => "evicted",
            Replaced::Failed => "failed",
        }
    }
}

/// Exponential back-off of one image's failed starts: [`RETRY_BASE`],
/// doubled per failure, at most [`RETRY_CAP`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Retry {
    failures: u32,
    not_before: Option<Instant>,
}

impl Retry {
    /// The pause after the `failures`-th failure in a row (1 = the first).
    pub fn delay(failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        RETRY_BASE.saturating_mul(1 << doublings).min(RETRY_CAP)
    }

    /// True when a start may be tried at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// A start failed at `now`: returns the pause before the next one.
    pub fn failed(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let d = Retry::delay(self.failures);
        self.not_before = Some(now + d);
        d
    }

    pub fn succeeded(&mut self) {
        *self = Retry::default();
    }
}

/// True when one more warm guest fits: `jobs + warm < capacity`.
pub fn may_refill(capacity: u32, jobs: u32, warm: u32) -> bool {
    jobs.saturating_add(warm) < capacity
}

/// True when the VMs of jobs and warm guests exceed the capacity, so a
/// job's cold boot needs a warm guest gone first.
pub fn over_capacity(capacity: u32, jobs: u32, warm: u32) -> bool {
    jobs.saturating_add(warm) > capacity
}

/// What a warm guest is doing, for [`choose_victim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Ready,
    Starting,
    /// A template being built.
    Template,
}

/// A warm guest that could be evicted.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub image: &'a str,
    pub stage: Stage,
    /// Ready since (ready guests) or started at (the others).
    pub since: Instant,
}

/// Which warm guest makes room for a job of `job_image`: a ready guest of
/// another image first, oldest first; then any ready guest; then a start
/// in flight (another image's first, the newest first: it has done the
/// least work); a template build last.
pub fn choose_victim(job_image: &str, candidates: &[Candidate<'_>]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .min_by_key(|(_, c)| {
            let own = c.image == job_image;
            // Oldest first for ready guests; newest first for starts.
            let age_rank = match c.stage {
                Stage::Ready => Ok(c.since),
                _ => Err(std::cmp::Reverse(c.since)),
            };
            (c.stage, own, age_rank)
        })
        .map(|(i, _)| i)
}

/// What makes a guest of `image` under `accel` what it is: the image file
/// (path, where it resolves to, size, modification time, inode), the image's
/// settings that reach the VM, QEMU's binaries and the accelerator. A guest
/// or template made under another fingerprint is stale.
pub fn fingerprint(config: &Config, image: &ImageConfig, accel: Accel) -> String {
    let mut text = String::new();
    let mut file = |label: &str, path: &Path| {
        text.push_str(&format!("{label}={}\n", path.display()));
        if let Ok(real) = std::fs::canonicalize(path) {
            text.push_str(&format!("{label}.real={}\n", real.display()));
        }
        text.push_str(&format!("{label}.meta={}\n", file_identity(path)));
    };
    file("image", &image.path);
    file("qemu", &resolve_binary(&config.qemu.system_binary));
    file("qemu-img", &resolve_binary(&config.qemu.img_binary));
    if image.firmware == Firmware::Uefi {
        for (label, p) in [
            ("uefi-code", &config.qemu.uefi_code),
            ("uefi-vars", &config.qemu.uefi_vars),
        ] {
            if let Some(p) = p {
                file(label, p);
            }
        }
    }
    // The settings that shape the guest (not labels, limits or pool sizes).
    text.push_str(&format!(
        "format={:?} os={:?} firmware={:?} vcpus={} memory={} disk={:?} user={:?} seed={:?} cpu={:?} network={:?} deny={:?} allow={:?} mirror={:?} accel={}\n",
        image.format,
        image.os,
        image.firmware,
        image.vcpus,
        image.memory_mib,
        image.disk_size_gib,
        image.ssh_user,
        image.seed,
        image.cpu,
        image.network,
        image.network_deny,
        image.network_allow,
        image.registry_mirror,
        accel.as_str(),
    ));
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Size, modification time and inode of a file, or why it cannot be read.
fn file_identity(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "{} {}.{} {}:{}",
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.dev(),
            m.ino()
        ),
        Err(e) => format!("unreadable ({:?})", e.kind()),
    }
}

/// A bare binary name looked up on `PATH` (as the spawn does); paths as given.
fn resolve_binary(bin: &Path) -> PathBuf {
    if bin.components().count() > 1 {
        return bin.to_path_buf();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(bin))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| bin.to_path_buf())
}

/// A fresh warm guest id: `w-<image, at most 40 chars>-<8 hex>`.
fn new_id(image: &str) -> String {
    let short: String = image.chars().take(ID_IMAGE_CHARS).collect();
    format!("w-{short}-{:08x}", rand::random::<u32>())
}

/// Why the ready guest `idle` may not be handed out, if it may not.
fn stale_reason(idle: &mut Idle, key: &str, max_idle: Duration, now: Instant) -> Option<Replaced> {
    let same_image = idle.key == key;
    let idle_for = now.saturating_duration_since(idle.since);
    let alive = idle.guest.vm.exited().is_none() && !idle.guest.session.is_closed();
    staleness(same_image, idle_for, max_idle, alive)
}

/// [`stale_reason`]'s rule: a changed image first, then age, then death.
pub fn staleness(
    same_image: bool,
    idle_for: Duration,
    max_idle: Duration,
    alive: bool,
) -> Option<Replaced> {
    if !same_image {
        Some(Replaced::ImageChanged)
    } else if idle_for > max_idle {
        Some(Replaced::Idle)
    } else if !alive {
        Some(Replaced::Dead)
    } else {
        None
    }
}

/// Boot progress of warm guests goes to the daemon's debug log, not a job's.
struct LogSink<'a> {
    id: &'a str,
}

impl EventSink for LogSink<'_> {
    fn emit(&self, event: JobEvent) {
        if let JobEvent::Phase { detail, .. } = event {
            tracing::debug!(warm = self.id, "{detail}");
        }
    }
}

/// What the refill loop decided to start.
enum Start {
    Member {
        image: ImageConfig,
        id: String,
        key: String,
        template: Option<Arc<Template>>,
        cancel: CancellationToken,
        done: CancellationToken,
    },
    Template {
        image: ImageConfig,
        build_id: String,
        key: String,
        cancel: CancellationToken,
        done: CancellationToken,
    },
}

/// A warm guest taken out of the pools to make room.
enum Victim {
    Ready(String, Box<Idle>),
    /// Cancelled; `done` is cancelled once its VM is gone.
    Start(String, CancellationToken),
}

impl WarmPools {
    /// Pools for every image of `config` with `warm > 0` or `snapshot`.
    pub fn new(opts: PoolOptions) -> WarmPools {
        let pools = opts
            .config
            .images
            .values()
            .filter(|i| i.warm > 0 || i.snapshot)
            .map(|i| {
                (
                    i.name.clone(),
                    Pool {
                        image: i.clone(),
                        ready: VecDeque::new(),
                        starting: Vec::new(),
                        retry: Retry::default(),
                        template: TemplateSlot::default(),
                    },
                )
            })
            .collect();
        // Recorded paths name the directory as QEMU's command line does
        // (`Vm::start` resolves its root), so that clean-up matches them.
        let dir = super::warm_dir(&opts.config);
        let dir = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::canonicalize(&dir))
            .unwrap_or(dir);
        WarmPools {
            inner: Arc::new(Inner {
                dir,
                config: opts.config,
                load: opts.load,
                accel: opts.accel,
                host_ports: opts.host_ports,
                store: opts.store,
                metrics: opts.metrics,
                state: Mutex::new(State {
                    pools,
                    stopped: false,
                    no_refill: false,
                }),
                wake: Notify::new(),
                starts: TaskTracker::new(),
            }),
        }
    }

    /// True when no image has a pool or a template.
    pub fn is_empty(&self) -> bool {
        self.inner.lock().pools.is_empty()
    }

    /// Runs the refill loop until `stop`, then destroys every guest and
    /// template (waiting for starts in flight to end).
    pub async fn run(&self, stop: CancellationToken) {
        let inner = &self.inner;
        inner.publish(&inner.lock());
        loop {
            inner.tick().await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = inner.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
        inner.shutdown().await;
    }

    /// Starts no more guests or templates (the daemon drains: no new task
    /// will come); ready guests stay until [`WarmPools::run`] stops.
    pub fn stop_refilling(&self) {
        self.inner.lock().no_refill = true;
    }

    /// Every pool's figures, by image name.
    pub fn status(&self) -> Vec<PoolStatus> {
        let state = self.inner.lock();
        state
            .pools
            .values()
            .map(|p| PoolStatus {
                image: p.image.name.clone(),
                target: p.image.warm,
                ready: count(p.ready.len()),
                starting: count(p.starting.len()),
            })
            .collect()
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl State {
    /// Warm VMs that count against the capacity: ready, starting, templates
    /// being built.
    fn warm_total(&self) -> u32 {
        self.pools
            .values()
            .map(|p| {
                count(p.ready.len() + p.starting.len()) + u32::from(p.template.building.is_some())
            })
            .sum()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(&self, image: &ImageConfig) -> String {
        fingerprint(&self.config, image, (self.accel)())
    }

    /// Sets the gauges of every pool.
    fn publish(&self, state: &State) {
        if let Some(m) = &self.metrics {
            for p in state.pools.values() {
                m.set_warm(&p.image.name, count(p.ready.len()), count(p.starting.len()));
            }
        }
    }

    fn replaced(&self, image: &str, why: Replaced) {
        if let Some(m) = &self.metrics {
            m.warm_replaced(image, why.as_str());
        }
    }

    /// A restore from `template` failed (not cancelled): the template is
    /// given up and rebuilt after the template back-off; meanwhile the pool's
    /// members boot, and jobs of the image boot cold. A template that QEMU
    /// or the re-key step keeps refusing never makes every job pay a failed
    /// restore first.
    fn template_failed(&self, image: &str, template: &Arc<Template>) {
        let dropped = {
            let mut state = self.lock();
            let Some(pool) = state.pools.get_mut(image) else {
                return;
            };
            if !pool
                .template
                .ready
                .as_ref()
                .is_some_and(|(t, _)| Arc::ptr_eq(t, template))
            {
                return;
            }
            let pause = pool.template.retry.failed(Instant::now());
            tracing::warn!(
                image,
                retry_in_secs = pause.as_secs(),
                "a restore from the snapshot template failed: the template is discarded and built again later; until then warm guests of the image boot"
            );
            pool.template.ready.take()
        };
        // Its files go once the last clone start holding it is done.
        drop(dropped);
        self.wake.notify_one();
    }

    fn forget(&self, id: &str) {
        if let Some(store) = &self.store
            && let Err(e) = store.forget_warm(id)
        {
            tracing::warn!(warm = id, error = %e, "could not forget the warm guest's record");
        }
    }

    /// Destroys a ready guest that left its pool.
    async fn destroy(&self, image: &str, idle: Idle, why: Replaced) {
        tracing::info!(warm = %idle.id, image, reason = why.as_str(), "destroying a warm guest");
        self.replaced(image, why);
        let Idle { id, guest, .. } = idle;
        destroy_guest(&id, guest).await;
        self.forget(&id);
    }

    /// One look at every pool: destroys stale guests and templates, then
    /// starts what is missing and fits.
    async fn tick(self: &Arc<Self>) {
        let keys: BTreeMap<String, String> = {
            let images: Vec<ImageConfig> = self
                .lock()
                .pools
                .values()
                .map(|p| p.image.clone())
                .collect();
            images
                .iter()
                .map(|i| (i.name.clone(), self.key(i)))
                .collect()
        };
        let now = Instant::now();
        let mut doomed = Vec::new();
        let mut old_templates = Vec::new();
        let mut starts = Vec::new();
        {
            let mut state = self.lock();
            if state.stopped {
                return;
            }
            for (name, pool) in state.pools.iter_mut() {
                let Some(key) = keys.get(name) else { continue };
                let max_idle = pool.image.warm_max_idle;
                let mut keep = VecDeque::new();
                while let Some(mut idle) = pool.ready.pop_front() {
                    match stale_reason(&mut idle, key, max_idle, now) {
                        Some(why) => doomed.push((name.clone(), idle, why)),
                        None => keep.push_back(idle),
                    }
                }
                pool.ready = keep;
                if pool
                    .template
                    .ready
                    .as_ref()
                    .is_some_and(|(_, k)| k.key != *key)
                    && let Some(t) = pool.template.ready.take()
                {
                    tracing::info!(image = %name, "the image changed: rebuilding its snapshot template");
                    old_templates.push(t);
                }
            }
            let capacity = self.load.capacity();
            let jobs = self.load.jobs();
            let mut warm = state.warm_total();
            // The emptiest pools first, so that one image does not starve another.
            let mut order: Vec<(usize, String)> = state
                .pools
                .iter()
                .map(|(n, p)| (p.ready.len() + p.starting.len(), n.clone()))
                .collect();
            order.sort();
            if state.no_refill {
                order.clear();
            }
            for (_, name) in order {
                let Some(key) = keys.get(&name) else { continue };
                let Some(pool) = state.pools.get_mut(&name) else {
                    continue;
                };
                if pool.image.snapshot
                    && pool.template.ready.is_none()
                    && pool.template.building.is_none()
                    && pool.template.retry.ready(now)
                    && may_refill(capacity, jobs, warm)
                {
                    let (cancel, done) = (CancellationToken::new(), CancellationToken::new());
                    let build_id = format!("{:08x}", rand::random::<u32>());
                    pool.template.building = Some(Starting {
                        id: build_id.clone(),
                        cancel: cancel.clone(),
                        done: done.clone(),
                        since: now,
                    });
                    warm += 1;
                    starts.push(Start::Template {
                        image: pool.image.clone(),
                        build_id,
                        key: key.clone(),
                        cancel,
                        done,
                    });
                }
                let have = count(pool.ready.len() + pool.starting.len());
                if have < pool.image.warm
                    && pool.starting.is_empty()
                    && pool.retry.ready(now)
                    && may_refill(capacity, jobs, warm)
                {
                    let id = new_id(&name);
                    let (cancel, done) = (CancellationToken::new(), CancellationToken::new());
                    pool.starting.push(Starting {
                        id: id.clone(),
                        cancel: cancel.clone(),
                        done: done.clone(),
                        since: now,
                    });
                    warm += 1;
                    starts.push(Start::Member {
                        image: pool.image.clone(),
                        id,
                        key: key.clone(),
                        template: pool.template.ready.as_ref().map(|(t, _)| t.clone()),
                        cancel,
                        done,
                    });
                }
            }
            self.publish(&state);
        }
        drop(old_templates);
        for (image, idle, why) in doomed {
            self.destroy(&image, idle, why).await;
        }
        for start in starts {
            let me = self.clone();
            match start {
                Start::Member {
                    image,
                    id,
                    key,
                    template,
                    cancel,
                    done,
                } => {
                    self.starts.spawn(async move {
                        me.start_member(image, id, key, template, cancel).await;
                        done.cancel();
                        me.wake.notify_one();
                    });
                }
                Start::Template {
                    image,
                    build_id,
                    key,
                    cancel,
                    done,
                } => {
                    self.starts.spawn(async move {
                        me.build_template(image, build_id, key, cancel).await;
                        done.cancel();
                        me.wake.notify_one();
                    });
                }
            }
        }
    }

    /// Boots (or restores) one pool member and puts it in its pool, unless
    /// it was evicted or the pools stopped meanwhile.
    async fn start_member(
        &self,
        image: ImageConfig,
        id: String,
        key: String,
        template: Option<Arc<Template>>,
        cancel: CancellationToken,
    ) {
        let kind = if template.is_some() {
            WarmKind::Restored
        } else {
            WarmKind::Booted
        };
        if let Some(store) = &self.store
            && let Err(e) = store.record_warm(&id, &image.name, kind, &self.dir.join(&id))
        {
            tracing::warn!(warm = %id, error = %e, "could not record a warm guest; not starting it");
            self.end_start(&image.name, &id);
            return;
        }
        let how = if template.is_some() {
            "restored"
        } else {
            "booted"
        };
        tracing::info!(warm = %id, image = %image.name, how, "starting a warm guest");
        let made: Result<ReadyGuest, String> = match &template {
            Some(t) => t
                .restore(&self.dir, &id, &cancel)
                .await
                .map_err(|e| Chain(&e).to_string()),
            None => {
                let req = BootRequest {
                    config: &self.config,
                    image: &image,
                    accel: (self.accel)(),
                    dir_root: &self.dir,
                    vm_id: &id,
                    client_key: ClientKey::generate(),
                    host_ports: &self.host_ports,
                };
                match boot_ready(req, &LogSink { id: &id }, &cancel).await {
                    Ok(g) => Ok(g),
                    Err(RunError::Cancelled) => Err(String::new()),
                    Err(e) => Err(Chain(&e).to_string()),
                }
            }
        };
        let mut guest = match made {
            Ok(g) => g,
            Err(reason) => {
                self.forget(&id);
                let pause = self.end_start(&image.name, &id);
                if !cancel.is_cancelled()
                    && let Some(t) = &template
                {
                    self.template_failed(&image.name, t);
                }
                if !cancel.is_cancelled() {
                    self.replaced(&image.name, Replaced::Failed);
                    tracing::warn!(
                        warm = %id,
                        image = %image.name,
                        retry_in_secs = pause.map_or(0, |d| d.as_secs()),
                        "a warm guest did not start: {reason}"
                    );
                }
                return;
            }
        };
        if let Some(store) = &self.store {
            let port = guest.vm.ssh_addr().port();
            if let Err(e) = store
                .record_warm_process(&id, guest.vm.pid(), port)
                .and_then(|()| store.set_warm_ready(&id))
            {
                tracing::warn!(warm = %id, error = %e, "could not record the warm guest's process");
            }
        }
        let boot = guest.boot_to_ssh;
        let alive = guest.vm.exited().is_none();
        // Into the pool, if it is still wanted.
        let rejected = {
            let mut state = self.lock();
            let stopped = state.stopped;
            let wanted = state.pools.get_mut(&image.name).and_then(|p| {
                let at = p.starting.iter().position(|s| s.id == id)?;
                p.starting.remove(at);
                Some(p)
            });
            let rejected = match wanted {
                Some(pool) if !stopped && alive => {
                    pool.retry.succeeded();
                    pool.ready.push_back(Idle {
                        id: id.clone(),
                        guest,
                        key,
                        since: Instant::now(),
                    });
                    None
                }
                _ => Some(guest),
            };
            self.publish(&state);
            rejected
        };
        match rejected {
            None => {
                if let Some(m) = &self.metrics {
                    m.warm_refilled(&image.name, how, boot);
                }
                tracing::info!(warm = %id, image = %image.name, boot_ms = boot.as_millis() as u64, "warm guest ready");
            }
            Some(g) => {
                tracing::info!(warm = %id, image = %image.name, "warm guest no longer wanted; destroying it");
                destroy_guest(&id, g).await;
                self.forget(&id);
            }
        }
    }

    /// Removes a failed or cancelled start from its pool; a failure (not
    /// cancelled by an eviction or the stop) backs the image off. Returns
    /// the pause when there is one.
    fn end_start(&self, image: &str, id: &str) -> Option<Duration> {
        let mut state = self.lock();
        let pool = state.pools.get_mut(image)?;
        let at = pool.starting.iter().position(|s| s.id == id);
        let pause = at.and_then(|at| {
            let s = pool.starting.remove(at);
            (!s.cancel.is_cancelled()).then(|| pool.retry.failed(Instant::now()))
        });
        self.publish(&state);
        pause
    }

    /// Builds the snapshot template of `image` and keeps it, unless the
    /// image changed or the pools stopped meanwhile.
    async fn build_template(
        &self,
        image: ImageConfig,
        build_id: String,
        key: String,
        cancel: CancellationToken,
    ) {
        tracing::info!(image = %image.name, "building the snapshot template");
        let t0 = Instant::now();
        // Its row for `solstice status` (building, then saved); the files
        // live in the directory `Template::build` names.
        let short: String = image.name.chars().take(40).collect();
        let row_id = format!("t-{short}-{build_id}");
        let row = self.store.as_ref().and_then(|store| {
            match store.record_warm(&row_id, &image.name, WarmKind::Template, &self.dir.join(&row_id)) {
                Ok(()) => Some(RowGuard {
                    store: store.clone(),
                    id: row_id.clone(),
                }),
                Err(e) => {
                    tracing::warn!(warm = %row_id, error = %e, "could not record the snapshot template");
                    None
                }
            }
        });
        let sink = LogSink { id: &image.name };
        let built = tokio::select! {
            r = make_template(&self.config, &image, (self.accel)(), &self.dir, &self.host_ports, &key, &sink, &cancel) => Some(r),
            _ = cancel.cancelled() => None,
        };
        // A template nobody wants any more is dropped (its files removed)
        // after the lock is released.
        let _unwanted = {
            let mut state = self.lock();
            let stopped = state.stopped;
            let Some(pool) = state.pools.get_mut(&image.name) else {
                return;
            };
            // Still this build's slot (not evicted, and no newer build since)?
            let ours = pool
                .template
                .building
                .as_ref()
                .is_some_and(|b| b.id == build_id);
            if ours {
                pool.template.building = None;
            }
            match built {
                Some(Ok(t)) if ours && !stopped => {
                    pool.template.retry.succeeded();
                    if let Some(r) = &row
                        && let Err(e) = r.store.set_warm_ready(&r.id)
                    {
                        tracing::warn!(warm = %r.id, error = %e, "could not record the snapshot template as saved");
                    }
                    pool.template.ready = Some((Arc::new(t), TemplateTag { key, _row: row }));
                    tracing::info!(image = %image.name, secs = t0.elapsed().as_secs_f64(), "snapshot template ready");
                    None
                }
                Some(Ok(t)) => Some(t),
                Some(Err(e)) if ours && !cancel.is_cancelled() => {
                    let pause = pool.template.retry.failed(Instant::now());
                    tracing::warn!(
                        image = %image.name,
                        retry_in_secs = pause.as_secs(),
                        "the snapshot template could not be built ({}); jobs boot cold meanwhile",
                        Chain(&e)
                    );
                    None
                }
                _ => None,
            }
        };
    }

    /// While jobs and warm guests exceed the capacity, takes warm guests
    /// away (see [`choose_victim`]) and waits until their VMs are gone.
    async fn make_room(&self, job_image: &str, cancel: &CancellationToken) {
        loop {
            let victim = {
                let mut state = self.lock();
                if !over_capacity(self.load.capacity(), self.load.jobs(), state.warm_total()) {
                    return;
                }
                let v = pick_victim(&mut state, job_image);
                self.publish(&state);
                v
            };
            match victim {
                None => return,
                Some(Victim::Ready(image, idle)) => {
                    self.destroy(&image, *idle, Replaced::Evicted).await;
                }
                Some(Victim::Start(image, done)) => {
                    tracing::info!(image = %image, "cancelling a warm guest's start to make room for a job");
                    self.replaced(&image, Replaced::Evicted);
                    tokio::select! {
                        _ = done.cancelled() => {}
                        _ = tokio::time::sleep(EVICT_WAIT) => {
                            tracing::warn!(image = %image, "an evicted warm guest's start did not end in time");
                        }
                        _ = cancel.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Stops every start, destroys every ready guest and drops the templates.
    async fn shutdown(&self) {
        let (idle, templates) = {
            let mut state = self.lock();
            state.stopped = true;
            let mut idle = Vec::new();
            let mut templates = Vec::new();
            for (name, pool) in state.pools.iter_mut() {
                for s in &pool.starting {
                    s.cancel.cancel();
                }
                if let Some(b) = &pool.template.building {
                    b.cancel.cancel();
                }
                idle.extend(pool.ready.drain(..).map(|i| (name.clone(), i)));
                templates.extend(pool.template.ready.take());
            }
            self.publish(&state);
            (idle, templates)
        };
        for (image, i) in idle {
            tracing::info!(warm = %i.id, image = %image, "destroying a warm guest (stopping)");
            destroy_guest(&i.id, i.guest).await;
            self.forget(&i.id);
        }
        self.starts.close();
        self.starts.wait().await;
        drop(templates);
        let state = self.lock();
        self.publish(&state);
    }
}

/// Takes the warm guest [`choose_victim`] names out of the pools.
fn pick_victim(state: &mut State, job_image: &str) -> Option<Victim> {
    let mut candidates = Vec::new();
    // (image, stage, index in its list)
    let mut where_ = Vec::new();
    for (name, pool) in &state.pools {
        for (i, idle) in pool.ready.iter().enumerate() {
            candidates.push(Candidate {
                image: name,
                stage: Stage::Ready,
                since: idle.since,
            });
            where_.push((name.clone(), Stage::Ready, i));
        }
        for (i, s) in pool.starting.iter().enumerate() {
            candidates.push(Candidate {
                image: name,
                stage: Stage::Starting,
                since: s.since,
            });
            where_.push((name.clone(), Stage::Starting, i));
        }
        if let Some(b) = &pool.template.building {
            candidates.push(Candidate {
                image: name,
                stage: Stage::Template,
                since: b.since,
            });
            where_.push((name.clone(), Stage::Template, 0));
        }
    }
    let chosen = choose_victim(job_image, &candidates)?;
    let (image, stage, i) = where_.get(chosen)?.clone();
    let pool = state.pools.get_mut(&image)?;
    match stage {
        Stage::Ready => pool
            .ready
            .remove(i)
            .map(|idle| Victim::Ready(image, Box::new(idle))),
        Stage::Starting => {
            let s = pool.starting.remove(i);
            s.cancel.cancel();
            Some(Victim::Start(image, s.done))
        }
        Stage::Template => {
            let b = pool.template.building.take()?;
            b.cancel.cancel();
            Some(Victim::Start(image, b.done))
        }
    }
}

/// Builds a template of `image` whose key is `key`. The one place that
/// calls [`Template::build`].
#[allow(clippy::too_many_arguments)]
async fn make_template(
    config: &Config,
    image: &ImageConfig,
    accel: Accel,
    dir: &Path,
    host_ports: &[u16],
    key: &str,
    sink: &dyn EventSink,
    cancel: &CancellationToken,
) -> Result<Template, super::template::TemplateError> {
    Template::build(
        config,
        image,
        accel,
        dir,
        host_ports,
        key.to_string(),
        sink,
        cancel,
    )
    .await
}

/// Closes a guest's session and destroys its VM.
async fn destroy_guest(id: &str, guest: ReadyGuest) {
    let ReadyGuest { vm, session, .. } = guest;
    drop(session);
    if let Err(e) = vm.destroy().await {
        tracing::warn!(warm = id, error = %Chain(&e), "a warm guest's teardown reported an error");
    }
}

#[async_trait::async_trait]
impl WarmSource for WarmPools {
    async fn take(
        &self,
        image: &ImageConfig,
        dest: &Path,
        sink: &dyn EventSink,
        cancel: &CancellationToken,
    ) -> Option<(ReadyGuest, StartKind)> {
        let inner = &self.inner;
        let has_pool = inner.lock().pools.contains_key(&image.name);
        if has_pool {
            let key = inner.key(image);
            // The oldest ready guest that is still good; stale ones go.
            let (found, doomed) = {
                let mut state = inner.lock();
                let mut doomed = Vec::new();
                let mut found = None;
                if let Some(pool) = state.pools.get_mut(&image.name) {
                    let max_idle = pool.image.warm_max_idle;
                    let now = Instant::now();
                    while let Some(mut idle) = pool.ready.pop_front() {
                        match stale_reason(&mut idle, &key, max_idle, now) {
                            Some(why) => doomed.push((idle, why)),
                            None => {
                                found = Some(idle);
                                break;
                            }
                        }
                    }
                }
                inner.publish(&state);
                (found, doomed)
            };
            for (idle, why) in doomed {
                inner.destroy(&image.name, idle, why).await;
            }
            inner.wake.notify_one();
            if let Some(mut idle) = found {
                match idle.guest.vm.move_to(dest) {
                    Ok(()) => {
                        inner.forget(&idle.id);
                        if let Some(m) = &inner.metrics {
                            m.warm_take(&image.name, "hit");
                        }
                        tracing::info!(warm = %idle.id, image = %image.name, job_dir = %dest.display(), idle_secs = idle.since.elapsed().as_secs(), "a job took a warm guest");
                        return Some((idle.guest, StartKind::Pool));
                    }
                    Err(e) => {
                        tracing::warn!(warm = %idle.id, error = %Chain(&e), "could not hand a warm guest to a job; it boots cold");
                        inner.destroy(&image.name, idle, Replaced::Failed).await;
                    }
                }
            }
        }
        // A miss: the job boots (or restores) a VM of its own, so make room.
        inner.make_room(&image.name, cancel).await;
        if !has_pool {
            return None;
        }
        let template = {
            let key = inner.key(image);
            let state = inner.lock();
            state.pools.get(&image.name).and_then(|p| {
                p.template
                    .ready
                    .as_ref()
                    .filter(|(_, k)| k.key == key)
                    .map(|(t, _)| t.clone())
            })
        };
        if let (Some(t), Some(root), Some(name)) = (
            template,
            dest.parent(),
            dest.file_name().and_then(|n| n.to_str()),
        ) {
            if cancel.is_cancelled() {
                return None;
            }
            sink.emit(JobEvent::Phase {
                phase: Phase::Boot,
                detail: "restoring the image's saved guest (snapshot) and giving it its own keys"
                    .into(),
            });
            match t.restore(root, name, cancel).await {
                Ok(guest) => {
                    if let Some(m) = &inner.metrics {
                        m.warm_take(&image.name, "restored");
                    }
                    return Some((guest, StartKind::Restored));
                }
                Err(_) if cancel.is_cancelled() => return None,
                Err(e) => {
                    tracing::warn!(image = %image.name, error = %Chain(&e), "could not restore a clone of the snapshot template; the job boots cold");
                    inner.template_failed(&image.name, &t);
                }
            }
        }
        if let Some(m) = &inner.metrics {
            m.warm_take(&image.name, "miss");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_arithmetic() {
        assert!(may_refill(2, 0, 1));
        assert!(!may_refill(2, 1, 1));
        assert!(!may_refill(1, 0, 1));
        assert!(!may_refill(0, 0, 0));
        assert!(!over_capacity(1, 1, 0));
        assert!(
            over_capacity(1, 1, 1),
            "a job beside a warm guest on 1 slot"
        );
        assert!(!over_capacity(2, 1, 1));
        assert!(!may_refill(u32::MAX, u32::MAX, u32::MAX), "no overflow");
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(Retry::delay(1), Duration::from_secs(5));
        assert_eq!(Retry::delay(2), Duration::from_secs(10));
        assert_eq!(Retry::delay(3), Duration::from_secs(20));
        assert_eq!(Retry::delay(7), Duration::from_secs(300));
        assert_eq!(Retry::delay(1000), RETRY_CAP);
        let now = Instant::now();
        let mut r = Retry::default();
        assert!(r.ready(now));
        assert_eq!(r.failed(now), Duration::from_secs(5));
        assert!(!r.ready(now + Duration::from_secs(4)));
        assert!(r.ready(now + Duration::from_secs(5)));
        assert_eq!(r.failed(now), Duration::from_secs(10));
        r.succeeded();
        assert!(r.ready(now));
        assert_eq!(r.failed(now), Duration::from_secs(5));
    }

    #[test]
    fn eviction_prefers_other_images_oldest_ready_then_newest_start() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let c = |image, stage, s| Candidate {
            image,
            stage,
            since: at(s),
        };
        assert_eq!(choose_victim("a", &[]), None);
        // Another image's ready guest, the oldest.
        let v = [
            c("a", Stage::Ready, 1),
            c("b", Stage::Ready, 5),
            c("b", Stage::Ready, 3),
            c("b", Stage::Starting, 0),
        ];
        assert_eq!(choose_victim("a", &v), Some(2));
        // Only the job's own image is ready: that one before any start.
        let v = [c("b", Stage::Starting, 0), c("a", Stage::Ready, 9)];
        assert_eq!(choose_victim("a", &v), Some(1));
        // Starts: another image's first, the newest of them.
        let v = [
            c("a", Stage::Starting, 9),
            c("b", Stage::Starting, 1),
            c("b", Stage::Starting, 4),
            c("b", Stage::Template, 8),
        ];
        assert_eq!(choose_victim("a", &v), Some(2));
        // A template build last.
        let v = [c("b", Stage::Template, 1), c("a", Stage::Starting, 2)];
        assert_eq!(choose_victim("a", &v), Some(1));
    }

    fn config_with(image_path: &Path) -> (Config, ImageConfig) {
        let text = format!(
            "[daemon]\nstate_dir = \"/tmp/x\"\n[images.tiny]\npath = {:?}\nwarm = 1\n",
            image_path
        );
        let config = crate::config::parse_str_with(
            &text,
            Path::new("/tmp"),
            &crate::config::ParseOptions { check_paths: false },
        )
        .unwrap();
        let image = config.images["tiny"].clone();
        (config, image)
    }

    #[test]
    fn the_fingerprint_follows_the_image_file_settings_and_accelerator() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.qcow2");
        std::fs::write(&path, b"one").unwrap();
        let (config, image) = config_with(&path);
        let a = fingerprint(&config, &image, Accel::Tcg);
        assert_eq!(a, fingerprint(&config, &image, Accel::Tcg), "stable");
        assert_ne!(a, fingerprint(&config, &image, Accel::Kvm), "accelerator");
        let mut more = image.clone();
        more.memory_mib += 256;
        assert_ne!(a, fingerprint(&config, &more, Accel::Tcg), "settings");
        let mut pool_only = image.clone();
        pool_only.warm = 5;
        pool_only.labels.push("other".into());
        assert_eq!(
            a,
            fingerprint(&config, &pool_only, Accel::Tcg),
            "pool size and labels do not make a guest stale"
        );
        // A replaced file (new inode), even of the same size.
        let tmp = dir.path().join("new.qcow2");
        std::fs::write(&tmp, b"two").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let b = fingerprint(&config, &image, Accel::Tcg);
        assert_ne!(a, b, "replaced file");
        // A touched file (new modification time).
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
            .unwrap();
        assert_ne!(b, fingerprint(&config, &image, Accel::Tcg), "touched file");
    }

    #[test]
    fn a_guest_is_stale_when_its_image_changed_it_waited_too_long_or_died() {
        let hour = Duration::from_secs(3600);
        let young = Duration::from_secs(10);
        assert_eq!(staleness(true, young, hour, true), None);
        assert_eq!(
            staleness(false, young, hour, true),
            Some(Replaced::ImageChanged)
        );
        assert_eq!(
            staleness(true, hour + Duration::from_secs(1), hour, true),
            Some(Replaced::Idle)
        );
        assert_eq!(staleness(true, hour, hour, true), None, "at the limit");
        assert_eq!(staleness(true, young, hour, false), Some(Replaced::Dead));
        assert_eq!(
            staleness(false, hour * 2, hour, false),
            Some(Replaced::ImageChanged),
            "a changed image is named first"
        );
    }

    #[test]
    fn ids_name_the_image_and_fit_a_job_id() {
        let id = new_id("tiny");
        assert!(
            id.starts_with("w-tiny-") && id.len() == "w-tiny-".len() + 8,
            "{id}"
        );
        let long = "a".repeat(60);
        let id = new_id(&long);
        assert!(crate::job::id::is_valid(&id), "{id}");
        assert_eq!(id.len(), 2 + 40 + 1 + 8);
    }
}

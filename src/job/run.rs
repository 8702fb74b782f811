//! Runs one job end to end: provision a VM, wait for SSH, execute, tear down.
//! `solstice exec`, `solstice run` (the daemon), `doctor --boot` and `bench`
//! share [`run_in_vm`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::id;
use super::spec::{CheckoutSource, JobSpec, RunnerInfo};
use crate::cache_service::CacheLease;
use crate::config::{AccelChoice, Config, ImageConfig, SeedKind};
use crate::events::{Conclusion, EventSink, JobEvent, LineKind, Phase};
use crate::executor::{self, JobOutcome};
use crate::secret::Secret;
use crate::ssh::{self, ClientKey, HostKey, HostKeyCheck, ReadyOptions, SshTarget};
use crate::store::StoreError;
use crate::vm::accel::{
    Accelerator, BootObservation, BootVerdict, FIRST_OUTPUT_WINDOW, KvmTrouble, STALL_WINDOW,
    console_alarm, judge_kvm_boot,
};
use crate::vm::{self, Accel, Vm, VmSpec};

/// Lines of the serial console quoted when a guest does not come up.
pub const BOOT_FAILURE_CONSOLE_LINES: usize = 30;
/// How often boot progress is reported while waiting for SSH.
const BOOT_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often a booting VM is looked at (QEMU alive, run state, console).
const BOOT_WATCH_EVERY: Duration = Duration::from_millis(250);
/// Where the console of the latest failed boot of each image is kept:
/// `<state_dir>/boot-failures/<image>.console.log`.
pub const BOOT_FAILURES_DIR: &str = "boot-failures";

/// Why a job could not run at all (as opposed to a job whose steps failed).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("Could not start the VM")]
    Provision(#[source] vm::VmError),
    #[error(
        "The guest did not accept SSH within {} s (`images.{image}.boot_timeout_secs`); {last}.\n{console}",
        secs(*timeout)
    )]
    BootTimeout {
        image: String,
        timeout: Duration,
        /// What the last connection attempt saw, in words.
        last: String,
        /// The console tail, with a heading that says where the whole log is.
        console: String,
    },
    #[error("The guest stopped while it booted: {reason}.{hint}\n{console}")]
    GuestStopped {
        reason: String,
        /// What to do about it (may be empty).
        hint: String,
        console: String,
    },
    #[error("Could not reach the guest over SSH ({reason}).\n{console}")]
    Ssh { reason: String, console: String },
    #[error("Cancelled before the job started")]
    Cancelled,
    #[error("Could not record the VM in the state database: {0}")]
    Record(StoreError),
    #[error("Could not create the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `120` or `2.5`: seconds without needless decimals.
fn secs(d: Duration) -> String {
    let s = format!("{:.1}", d.as_secs_f64());
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

/// Where the time went, for progress output and `solstice bench`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Keys, job directory, seed and overlay: everything before QEMU is spawned.
    pub prepare: Duration,
    /// `prepare` plus QEMU spawn, QMP ready and the forwarded port known.
    pub provision: Duration,
    /// QEMU spawned → SSH readiness probes passed: the guest's own boot as
    /// Solstice observes it (comparable to a plain QEMU + SSH polling baseline).
    pub boot_to_ssh: Duration,
    /// QEMU spawned → the guest's SSH server first sent its banner (the
    /// rest of `boot_to_ssh` is login, probes and sshd restarts).
    pub boot_to_banner: Option<Duration>,
    /// SSH ready → the first step started (after the executor's probe of the
    /// guest, before the step's command runs).
    pub first_step: Option<Duration>,
    /// Whole executor run (all steps).
    pub job: Duration,
    /// VM destroyed and its files removed.
    pub teardown: Duration,
    /// Time lost on a KVM guest that did not boot before the job was booted
    /// again under TCG (zero without a fallback); the other figures are the
    /// TCG attempt's.
    pub kvm_fallback: Duration,
    /// How the job's guest came to be. For a guest taken from a warm
    /// source, `provision` and `boot_to_ssh` are both the time the take
    /// needed (the guest was up before).
    pub start: StartKind,
}

/// Result of [`run_in_vm`].
#[derive(Debug)]
pub struct RunReport {
    pub outcome: JobOutcome,
    pub timings: Timings,
    /// The accelerator the job ran under.
    pub accel: Accel,
    /// Why KVM was abandoned for this job, when it was.
    pub kvm_fallback: Option<String>,
}

/// Everything one VM run needs.
pub struct VmRun<'a> {
    pub config: &'a Config,
    pub image: &'a ImageConfig,
    /// The process's accelerator (shared by its jobs; KVM may fall back to TCG).
    pub accel: &'a Accelerator,
    /// Names the job directory under `<state_dir>/jobs/` (see [`id`]).
    pub job_id: &'a str,
    pub spec: &'a JobSpec,
    /// The runner's name (`runner.name`, `RUNNER_NAME`); the rest of the
    /// runner ([`RunnerInfo`]) comes from `image`.
    pub runner_name: &'a str,
    /// Told about the VM's resources before they exist and after they are
    /// gone, so that a crashed daemon's leftovers can be found (the daemon
    /// records them in its state database).
    pub observer: Option<&'a dyn VmObserver>,
    /// Offered the VM of a failed job to keep for debug SSH (the daemon,
    /// when debug SSH is configured); `None`: always destroyed.
    pub debug: Option<&'a dyn DebugHold>,
    /// Asked first for a guest that is already up (a warm pool, or a
    /// restore from a saved guest); `None`, or no guest from it: the VM
    /// boots cold.
    pub warm: Option<&'a dyn WarmSource>,
}

/// How a job's guest came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartKind {
    /// Booted for the job.
    #[default]
    Cold,
    /// Taken from a warm pool: booted (or restored) before the job came.
    Pool,
    /// Restored for the job from a saved running guest (`snapshot`).
    Restored,
}

impl StartKind {
    /// `cold`, `pool` or `restored` (metrics, logs, the bench).
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::Cold => "cold",
            StartKind::Pool => "pool",
            StartKind::Restored => "restored",
        }
    }
}

/// A guest that is up and accepts SSH, with no job in it yet: a warm pool's
/// guest, a restored clone, or a template being prepared.
pub struct ReadyGuest {
    pub vm: Vm,
    /// How to log in (its own in-memory key, its pinned host key).
    pub target: SshTarget,
    /// An open session on it.
    pub session: ssh::SshSession,
    /// QEMU spawned → ready (readiness probes passed; after a restore, the
    /// clone re-keyed).
    pub boot_to_ssh: Duration,
}

impl std::fmt::Debug for ReadyGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyGuest")
            .field("vm", &self.vm)
            .field("addr", &self.target.addr)
            .field("boot_to_ssh", &self.boot_to_ssh)
            .finish()
    }
}

/// Gives a job a guest that is already up (see [`VmRun::warm`]).
#[async_trait::async_trait]
pub trait WarmSource: Send + Sync {
    /// A ready guest of `image` whose directory has been moved to `dest`
    /// (the job's directory, which does not exist yet), and how it was
    /// made; `None`: the job boots its VM cold (no guest, or it could not
    /// be handed over: the source says why in its own log, not the job's).
    /// Progress for the job's log goes to `sink`.
    async fn take(
        &self,
        image: &ImageConfig,
        dest: &Path,
        sink: &dyn EventSink,
        cancel: &CancellationToken,
    ) -> Option<(ReadyGuest, StartKind)>;
}

/// What [`boot_ready`] boots.
pub struct BootRequest<'a> {
    pub config: &'a Config,
    pub image: &'a ImageConfig,
    pub accel: Accel,
    /// The directory `vm_id`'s directory is made in.
    pub dir_root: &'a Path,
    /// Names the VM's directory (see [`id::is_valid`]) and its host name.
    pub vm_id: &'a str,
    /// The guest logs in with this key (the caller keeps it in memory).
    pub client_key: ClientKey,
    /// Host ports the guest may reach at 10.0.2.2 (the cache service).
    pub host_ports: &'a [u16],
}

/// Boots a fresh VM to SSH-ready without running anything in it (warm
/// pools, snapshot templates). No KVM fallback: the VM runs under
/// `req.accel` or fails. Boot progress goes to `sink`; on any error the VM
/// is gone again.
pub async fn boot_ready(
    req: BootRequest<'_>,
    sink: &dyn EventSink,
    cancel: &CancellationToken,
) -> Result<ReadyGuest, RunError> {
    let image = req.image;
    let host_key = match image.seed {
        SeedKind::NoCloud => Some(HostKey::generate()),
        SeedKind::MetadataCpio => None,
    };
    let host_private = host_key.as_ref().map(HostKey::private_openssh);
    let host_public = host_key.as_ref().map(HostKey::public_openssh);
    let authorized = req.client_key.public_openssh();
    let hostname = id::hostname(req.vm_id);
    let spec = VmSpec {
        job_id: req.vm_id,
        image,
        qemu: &req.config.qemu,
        accel: req.accel,
        jobs_dir: req.dir_root,
        authorized_key: &authorized,
        host_key: host_private.as_ref().zip(host_public.as_deref()),
        hostname: &hostname,
        host_ports: req.host_ports,
    };
    let mut vm = tokio::select! {
        r = Vm::start(spec) => r.map_err(RunError::Provision)?,
        _ = cancel.cancelled() => return Err(RunError::Cancelled),
    };
    let boot = Boot {
        config: req.config,
        image,
        accel: None,
    };
    let mut timings = Timings::default();
    let kvm = Kvm {
        watch: false,
        to_confirm: None,
    };
    match wait_for_guest(
        &boot,
        &mut vm,
        (req.client_key, host_public),
        sink,
        cancel,
        &mut timings,
        kvm,
    )
    .await
    {
        Ok((session, target)) => Ok(ReadyGuest {
            vm,
            target,
            session,
            boot_to_ssh: timings.boot_to_ssh,
        }),
        Err(attempt) => {
            let _ = vm.destroy().await;
            Err(match *attempt {
                Attempt::Done(Err(e)) => e,
                _ => RunError::Cancelled,
            })
        }
    }
}

/// The guest of a job that failed, offered to a [`DebugHold`].
pub struct FailedGuest {
    pub vm: Vm,
    /// How the job logged in (its in-memory key, the pinned host key).
    pub target: SshTarget,
    /// The job's session, still open.
    pub session: ssh::SshSession,
    pub runner: RunnerInfo,
}

/// Keeps the VM of a failed job for debugging, when the job and the
/// operator allow it (see `crate::debug`).
#[async_trait::async_trait]
pub trait DebugHold: Send + Sync {
    /// The job failed (not cancelled, not timed out). Keeps the VM and
    /// returns `None`, or returns it to be destroyed as usual. Lines for
    /// the job's log go to `sink` (before the job's report is closed).
    async fn offer(&self, guest: FailedGuest, sink: &dyn EventSink) -> Option<Vm>;
}

/// Hears about a job's VM resources (see [`VmRun::observer`]).
pub trait VmObserver: Send + Sync {
    /// Before anything is created: `dir` will hold the overlay, seed,
    /// sockets and console log. An error stops the job before the VM exists.
    fn before_start(&self, dir: &Path) -> Result<(), StoreError>;
    /// QEMU runs as `pid`, with the guest's SSH forwarded to `ssh_port`.
    fn started(&self, pid: u32, ssh_port: u16);
    /// QEMU is gone and `dir` removed.
    fn destroyed(&self);
}

/// Records the instant the first step starts, then forwards to the inner sink.
struct TimingSink<'a> {
    inner: &'a dyn EventSink,
    first_step: Mutex<Option<Instant>>,
}

impl EventSink for TimingSink<'_> {
    fn emit(&self, event: JobEvent) {
        if matches!(event, JobEvent::StepStarted { .. })
            && let Ok(mut t) = self.first_step.lock()
            && t.is_none()
        {
            *t = Some(Instant::now());
        }
        self.inner.emit(event);
    }
}

/// The per-job directory root: `<state_dir>/jobs`.
pub fn jobs_dir(config: &Config) -> PathBuf {
    config.daemon.state_dir.join("jobs")
}

/// Where the console of `image`'s latest failed boot is kept.
pub fn boot_failure_console(config: &Config, image: &str) -> PathBuf {
    config
        .daemon
        .state_dir
        .join(BOOT_FAILURES_DIR)
        .join(format!("{image}.console.log"))
}

/// How one boot attempt ended.
enum Attempt {
    /// The job ran (or could not run for a reason that is not KVM's).
    Done(Result<JobOutcome, RunError>),
    /// The job failed, its session still open: offered to
    /// [`VmRun::debug`] (only when there is one).
    Failed(JobOutcome, Box<(ssh::SshSession, SshTarget)>),
    /// `auto`'s KVM did not run the guest: boot again under TCG. With how
    /// long the KVM guest ran.
    KvmBroken(KvmTrouble, Duration),
}

/// Provisions a fresh VM, waits for SSH, runs the job's steps and destroys the
/// VM, on every path (errors, cancellation, and panics through `Vm`'s `Drop`).
///
/// Under `auto`'s KVM, a guest that shows no progress (see
/// [`crate::vm::accel::judge_kvm_boot`]) is destroyed and the job boots
/// again under TCG; the job log says so. When that TCG boot proves KVM
/// broken ([`KvmTrouble::confirmed_by`]), KVM is given up for the process
/// ([`Accelerator::kvm_failed`]).
pub async fn run_in_vm(
    run: &VmRun<'_>,
    sink: &dyn EventSink,
    cancel: &CancellationToken,
) -> Result<RunReport, RunError> {
    // The job's lease on the cache service lives as long as this call: its
    // URLs answer 404 once the job is over.
    let lease = run
        .spec
        .cache
        .as_ref()
        .map(|c| c.lease(run.spec.cache_scope()));
    let with_cache;
    let host_ports: Vec<u16> = lease.iter().map(CacheLease::port).collect();
    let run = match &lease {
        Some(lease) => {
            with_cache = cache_env(run.spec, lease);
            &VmRun {
                spec: &with_cache,
                ..*run
            }
        }
        None => run,
    };
    let jobs = jobs_dir(run.config);
    std::fs::create_dir_all(&jobs).map_err(|source| RunError::StateDir {
        path: jobs.clone(),
        source,
    })?;
    let mut accel = run.accel.current();
    // Why this job's KVM guest was given up, and how long it ran. KVM is
    // turned off for the process only when the same VM's TCG boot proves it
    // broken (see `KvmTrouble::confirmed_by`): a guest that fails under both
    // is the image's fault, and a slow guest may be the host's load.
    let mut fallback: Option<(KvmTrouble, Duration)> = None;
    let t_first = Instant::now();
    loop {
        let mut timings = Timings::default();
        if fallback.is_some() {
            timings.kvm_fallback = t_first.elapsed();
        }
        let image = run.image;
        sink.emit(JobEvent::Phase {
            phase: Phase::Provision,
            detail: format!(
                "image {} ({} vCPU, {} MiB), accelerator {}",
                image.name,
                image.vcpus,
                image.memory_mib,
                accel.as_str()
            ),
        });
        let t0 = Instant::now();
        if let (Some(source), None) = (run.warm, &fallback) {
            let dest = jobs.join(run.job_id);
            if let Some(o) = run.observer {
                o.before_start(&dest).map_err(RunError::Record)?;
            }
            if let Some((guest, kind)) = source.take(image, &dest, sink, cancel).await {
                let ReadyGuest {
                    vm,
                    target,
                    session,
                    ..
                } = guest;
                if let Some(o) = run.observer {
                    o.started(vm.pid(), vm.ssh_addr().port());
                }
                timings.start = kind;
                timings.provision = t0.elapsed();
                timings.boot_to_ssh = timings.provision;
                let accel = vm.accel();
                sink.emit(JobEvent::Phase {
                    phase: Phase::Ready,
                    detail: format!(
                        "{} ready after {:.1}s",
                        match kind {
                            StartKind::Restored => "guest restored from a saved guest;",
                            _ => "guest from the warm pool;",
                        },
                        timings.provision.as_secs_f64()
                    ),
                });
                let attempt =
                    run_steps(run, &vm, session, target, sink, cancel, &mut timings).await;
                let result = finish(run, vm, attempt, sink, &mut timings).await;
                return result.map(|outcome| RunReport {
                    outcome,
                    timings,
                    accel,
                    kvm_fallback: None,
                });
            }
        }
        let client_key = ClientKey::generate();
        let host_key = match image.seed {
            SeedKind::NoCloud => Some(HostKey::generate()),
            // The metadata-agent form cannot carry a host key: pin the first one seen.
            SeedKind::MetadataCpio => None,
        };
        let host_private = host_key.as_ref().map(HostKey::private_openssh);
        let host_public = host_key.as_ref().map(HostKey::public_openssh);
        let authorized = client_key.public_openssh();
        let hostname = id::hostname(run.job_id);
        let spec = VmSpec {
            job_id: run.job_id,
            image,
            qemu: &run.config.qemu,
            accel,
            jobs_dir: &jobs,
            authorized_key: &authorized,
            host_key: host_private.as_ref().zip(host_public.as_deref()),
            hostname: &hostname,
            host_ports: &host_ports,
        };
        if let Some(o) = run.observer {
            o.before_start(&jobs.join(run.job_id))
                .map_err(RunError::Record)?;
        }
        let started = tokio::select! {
            r = Vm::start(spec) => Some(r),
            _ = cancel.cancelled() => None,
        };
        let mut vm = match started {
            Some(Ok(vm)) => vm,
            Some(Err(e)) if run.accel.may_fall_back(accel) && kvm_start_failure(&e).is_some() => {
                // Vm::start removed what it had created.
                if let Some(o) = run.observer {
                    o.destroyed();
                }
                let trouble = KvmTrouble::outright(kvm_start_failure(&e).unwrap_or_default());
                announce_fallback(sink, &trouble.reason, false);
                fallback = Some((trouble, Duration::ZERO));
                accel = Accel::Tcg;
                continue;
            }
            other => {
                // Vm::start (or dropping its future) removed what it had created.
                if let Some(o) = run.observer {
                    o.destroyed();
                }
                return Err(match other {
                    Some(Err(e)) => RunError::Provision(e),
                    _ => RunError::Cancelled,
                });
            }
        };
        if let Some(o) = run.observer {
            o.started(vm.pid(), vm.ssh_addr().port());
        }
        timings.provision = t0.elapsed();
        timings.prepare = vm.spawned_at().saturating_duration_since(t0);

        let watch_kvm = run.accel.may_fall_back(accel);
        let attempt = boot_and_run(
            run,
            &mut vm,
            (client_key, host_public),
            sink,
            cancel,
            &mut timings,
            Kvm {
                watch: watch_kvm,
                to_confirm: fallback.as_ref().filter(|_| accel == Accel::Tcg),
            },
        )
        .await;

        let attempt = match attempt {
            Attempt::KvmBroken(trouble, ran) => {
                teardown(run, vm, sink, &mut timings).await;
                Attempt::KvmBroken(trouble, ran)
            }
            other => match finish(run, vm, other, sink, &mut timings).await {
                Ok(outcome) => Attempt::Done(Ok(outcome)),
                Err(e) => Attempt::Done(Err(e)),
            },
        };
        let result = match attempt {
            Attempt::KvmBroken(trouble, ran) => {
                announce_fallback(sink, &trouble.reason, true);
                fallback = Some((trouble, ran));
                accel = Accel::Tcg;
                continue;
            }
            Attempt::Done(result) => result,
            // `finish` turned it into `Done`.
            Attempt::Failed(outcome, _) => Ok(outcome),
        };
        return result.map(|outcome| RunReport {
            outcome,
            timings,
            accel,
            kvm_fallback: fallback.map(|(t, _)| t.reason),
        });
    }
}

/// After the steps: offers a failed job's guest to [`VmRun::debug`] (when
/// there is one), destroys the VM unless it was kept, and returns the
/// job's result.
async fn finish(
    run: &VmRun<'_>,
    vm: Vm,
    attempt: Attempt,
    sink: &dyn EventSink,
    timings: &mut Timings,
) -> Result<JobOutcome, RunError> {
    // A failed job's guest is offered to keep for debugging (only
    // built when there is a hold to offer it to).
    let (result, kept) = match (attempt, run.debug) {
        (Attempt::Failed(outcome, guest), Some(hold)) => {
            let (session, target) = *guest;
            let guest = FailedGuest {
                vm,
                target,
                session,
                runner: RunnerInfo::for_image(run.image, run.runner_name),
            };
            (Ok(outcome), hold.offer(guest, sink).await)
        }
        // Only made when there is a hold; its session closes as it is dropped.
        (Attempt::Failed(outcome, _), None) => (Ok(outcome), Some(vm)),
        (Attempt::Done(result), _) => (result, Some(vm)),
        // The callers boot again under TCG instead and never pass this
        // here; should one, the VM is still destroyed and the job fails.
        (Attempt::KvmBroken(trouble, _), _) => (
            Err(RunError::GuestStopped {
                reason: trouble.reason,
                hint: String::new(),
                console: String::new(),
            }),
            Some(vm),
        ),
    };
    if let Some(vm) = kept {
        teardown(run, vm, sink, timings).await;
    }
    result
}

/// Destroys a job's VM, telling the observer.
async fn teardown(run: &VmRun<'_>, vm: Vm, sink: &dyn EventSink, timings: &mut Timings) {
    sink.emit(JobEvent::Phase {
        phase: Phase::Teardown,
        detail: "destroying the VM".into(),
    });
    let t = Instant::now();
    match vm.destroy().await {
        Ok(()) => {
            if let Some(o) = run.observer {
                o.destroyed();
            }
        }
        // The record stays, so the next start's reconcile retries the cleanup.
        Err(e) => tracing::warn!(error = %e, "VM teardown reported an error"),
    }
    timings.teardown = t.elapsed();
}

/// `spec` with the cache service's variables: `ACTIONS_CACHE_URL` (its
/// token masked), and a random masked `ACTIONS_RUNTIME_TOKEN` when the job
/// has none (`solstice exec`): `@actions/cache` refuses to run without one,
/// and the service does not read it.
fn cache_env(spec: &JobSpec, lease: &CacheLease) -> JobSpec {
    let mut spec = spec.clone();
    spec.extra_env
        .insert("ACTIONS_CACHE_URL".into(), lease.guest_url());
    spec.extra_masks.push(Secret::new(lease.token()));
    if !spec.extra_env.contains_key("ACTIONS_RUNTIME_TOKEN") {
        let bytes: [u8; 24] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        spec.extra_env
            .insert("ACTIONS_RUNTIME_TOKEN".into(), token.clone());
        spec.extra_masks.push(Secret::new(token));
    }
    spec
}

/// Tells the job log that its KVM guest was given up.
fn announce_fallback(sink: &dyn EventSink, reason: &str, destroyed: bool) {
    let what = if destroyed {
        "The VM was destroyed; booting the job again under TCG"
    } else {
        "Starting the job's VM again under TCG"
    };
    sink.emit(JobEvent::Phase {
        phase: Phase::Boot,
        detail: format!(
            "KVM did not run this job's guest: {reason}. {what} (software emulation, slower); if that proves KVM broken, later jobs on this host start under TCG (`solstice doctor` explains)"
        ),
    });
}

/// What a boot attempt does about KVM.
#[derive(Clone, Copy)]
struct Kvm<'a> {
    /// Watch the guest and give up KVM when it shows no progress (`auto`'s KVM).
    watch: bool,
    /// This is the TCG attempt after a KVM failure (and how long the KVM
    /// guest ran): once SSH answers, KVM is given up if that proves it
    /// broken ([`KvmTrouble::confirmed_by`]).
    to_confirm: Option<&'a (KvmTrouble, Duration)>,
}

/// Why a VM could not start under KVM, when that is a question of KVM: QEMU
/// exited, or the guest was not running once QEMU was up (an emulation
/// error at its first instruction).
fn kvm_start_failure(e: &vm::VmError) -> Option<String> {
    match e {
        vm::VmError::QemuExited { status, stderr, .. } => Some(format!(
            "QEMU exited as the VM started under KVM ({status}: {})",
            last_words(stderr)
        )),
        vm::VmError::GuestNotRunning(state) => Some(format!(
            "the guest stopped as the VM started under KVM (QEMU state {state})"
        )),
        _ => None,
    }
}

/// The last line of a program's stderr, or a placeholder.
fn last_words(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("it printed nothing")
        .to_string()
}

/// What the boot watcher concluded.
enum Watch {
    /// `auto`'s KVM does not run the guest.
    KvmBroken(KvmTrouble),
    /// QEMU died or the guest stopped for good (not a KVM question).
    Stopped(String),
}

/// Looks at a booting VM every [`BOOT_WATCH_EVERY`]: reports progress every
/// [`BOOT_PROGRESS_EVERY`] (elapsed time and the console's last line), and
/// returns when QEMU died, the guest stopped, or (with `watch_kvm`) KVM
/// shows no progress. Never returns while the guest boots normally.
async fn watch_boot(
    vm: &mut Vm,
    sink: &dyn EventSink,
    banner_seen: &AtomicBool,
    watch_kvm: bool,
) -> Watch {
    let mut last_report = Instant::now();
    let mut console_bytes = 0u64;
    let mut grew_at: Option<Duration> = None;
    let mut kvm_ok = !watch_kvm;
    let mut scanned = 0u64;
    let mut alarm: Option<String> = None;
    loop {
        tokio::time::sleep(BOOT_WATCH_EVERY).await;
        let elapsed = vm.spawned_at().elapsed();
        let exited = vm.exited();
        let run_state = if exited.is_none() {
            vm.run_state().await
        } else {
            None
        };
        let len = vm.console_len();
        if len > console_bytes {
            console_bytes = len;
            grew_at = Some(elapsed);
        }
        if !kvm_ok && alarm.is_none() && len > scanned {
            // Only whole lines are judged; a partial last line waits.
            let (text, upto) = vm.console_lines_since(scanned);
            scanned = upto;
            alarm = console_alarm(&text);
        }
        if !kvm_ok {
            let obs = BootObservation {
                elapsed,
                console_bytes,
                console_grew_at: grew_at,
                banner_seen: banner_seen.load(Ordering::SeqCst),
                qemu_exited: exited.clone(),
                run_state: run_state.clone(),
                console_alarm: alarm.clone(),
            };
            match judge_kvm_boot(&obs, FIRST_OUTPUT_WINDOW, STALL_WINDOW) {
                BootVerdict::Wait => {}
                BootVerdict::Healthy => kvm_ok = true,
                BootVerdict::Broken(trouble) => return Watch::KvmBroken(trouble),
            }
        }
        if let Some(how) = exited {
            return Watch::Stopped(format!("QEMU exited ({how})"));
        }
        if let Some(state) = run_state.filter(|s| {
            matches!(
                s.as_str(),
                "internal-error" | "guest-panicked" | "shutdown" | "io-error"
            )
        }) {
            return Watch::Stopped(format!("QEMU reports the guest as `{state}`"));
        }
        if last_report.elapsed() >= BOOT_PROGRESS_EVERY {
            last_report = Instant::now();
            let console = match vm.last_console_line() {
                Some(l) => format!("console: {l}"),
                None => "nothing on the console yet".into(),
            };
            sink.emit(JobEvent::Phase {
                phase: Phase::Boot,
                detail: format!("booting, {:.0} s: {console}", elapsed.as_secs_f64()),
            });
        }
    }
}

async fn boot_and_run(
    run: &VmRun<'_>,
    vm: &mut Vm,
    keys: (ClientKey, Option<String>),
    sink: &dyn EventSink,
    cancel: &CancellationToken,
    timings: &mut Timings,
    kvm: Kvm<'_>,
) -> Attempt {
    let boot = Boot {
        config: run.config,
        image: run.image,
        accel: Some(run.accel),
    };
    match wait_for_guest(&boot, vm, keys, sink, cancel, timings, kvm).await {
        Ok((session, target)) => run_steps(run, vm, session, target, sink, cancel, timings).await,
        Err(attempt) => *attempt,
    }
}

/// What a boot needs besides the VM: the configuration (where failed
/// consoles are kept), the image, and the process's accelerator (`None`:
/// no KVM fallback; warm pools and templates).
struct Boot<'a> {
    config: &'a Config,
    image: &'a ImageConfig,
    accel: Option<&'a Accelerator>,
}

/// Waits until the guest of `vm` accepts SSH (readiness probes passed),
/// watching the boot; the session and target, or how the attempt ended.
async fn wait_for_guest(
    run: &Boot<'_>,
    vm: &mut Vm,
    (client_key, host_public): (ClientKey, Option<String>),
    sink: &dyn EventSink,
    cancel: &CancellationToken,
    timings: &mut Timings,
    kvm: Kvm<'_>,
) -> Result<(ssh::SshSession, SshTarget), Box<Attempt>> {
    let image = run.image;
    let check = match host_public {
        Some(k) => HostKeyCheck::Pinned(k),
        None => HostKeyCheck::TrustFirstUse,
    };
    let target = match SshTarget::new(vm.ssh_addr(), image.ssh_user.clone(), client_key, check) {
        Ok(t) => t,
        Err(e) => {
            return Err(Box::new(Attempt::Done(Err(RunError::Ssh {
                reason: e.to_string(),
                console: String::new(),
            }))));
        }
    };
    sink.emit(JobEvent::Phase {
        phase: Phase::Boot,
        detail: format!(
            "QEMU pid {} running; waiting for SSH on {} as {} (timeout {} s)",
            vm.pid(),
            vm.ssh_addr(),
            image.ssh_user,
            image.boot_timeout.as_secs()
        ),
    });
    let opts = ReadyOptions {
        deadline: image.boot_timeout,
        probes: image.readiness_probes,
        probe_interval: image.readiness_probe_interval,
        ..ReadyOptions::default()
    };
    let t_boot = vm.spawned_at();
    let t_wait = Instant::now();
    let banner_seen = AtomicBool::new(false);
    let progress = |p: ssh::ReadyProgress| {
        if p.banner_seen {
            banner_seen.store(true, Ordering::SeqCst);
        }
    };
    let waited = {
        let ready = ssh::wait_ready_with_stats(&target, &opts, cancel, &progress);
        let watch = watch_boot(vm, sink, &banner_seen, kvm.watch);
        tokio::select! {
            r = ready => Ok(r),
            w = watch => Err(w),
        }
    };
    let console_heading = |vm: &Vm| keep_failed_console(run, vm);
    let explicit_kvm =
        vm.accel() == Accel::Kvm && run.accel.is_some_and(|a| a.choice() == AccelChoice::Kvm);
    let session = match waited {
        Ok(Ok((s, stats))) => {
            // The wait starts a little after the spawn; count from the spawn.
            let waited_from = t_wait.saturating_duration_since(t_boot);
            timings.boot_to_banner = stats.first_banner.map(|b| b + waited_from);
            s
        }
        Err(Watch::KvmBroken(trouble)) => {
            keep_kvm_console(run, vm);
            return Err(Box::new(Attempt::KvmBroken(trouble, t_boot.elapsed())));
        }
        Err(Watch::Stopped(why)) => {
            let hint = if explicit_kvm {
                " The guest ran under KVM, which is configured explicitly (`qemu.accel = \"kvm\"`): if KVM does not work on this host, set `qemu.accel = \"auto\"` (falls back to TCG) or `\"tcg\"`.".to_string()
            } else {
                String::new()
            };
            return Err(Box::new(Attempt::Done(Err(RunError::GuestStopped {
                reason: why,
                hint,
                console: console_heading(vm),
            }))));
        }
        Ok(Err(ssh::SshError::Cancelled { .. })) => {
            return Err(Box::new(Attempt::Done(Err(RunError::Cancelled))));
        }
        Ok(Err(ssh::SshError::NotReady { last, .. }))
            if kvm.watch && !banner_seen.load(Ordering::SeqCst) =>
        {
            // Under `auto`'s KVM a guest whose SSH server never answered is
            // KVM's failure too, if the same VM then boots under TCG in less
            // time. (With a banner, KVM ran the guest: a login that fails is
            // the image's problem, and the job fails with it.)
            keep_kvm_console(run, vm);
            return Err(Box::new(Attempt::KvmBroken(
                KvmTrouble::slow(format!(
                    "the guest's SSH server did not answer within {} s under KVM ({})",
                    secs(image.boot_timeout),
                    describe_last_attempt(last.as_deref())
                )),
                t_boot.elapsed(),
            )));
        }
        Ok(Err(ssh::SshError::NotReady { last, .. })) => {
            let mut last = describe_last_attempt(last.as_deref());
            if explicit_kvm {
                last.push_str(
                    ". The guest ran under KVM, which is configured explicitly (`qemu.accel = \"kvm\"`): if KVM does not work on this host, set `qemu.accel = \"auto\"` (falls back to TCG) or `\"tcg\"`",
                );
            }
            return Err(Box::new(Attempt::Done(Err(RunError::BootTimeout {
                image: image.name.clone(),
                timeout: image.boot_timeout,
                last,
                console: console_heading(vm),
            }))));
        }
        Ok(Err(e)) => {
            return Err(Box::new(Attempt::Done(Err(RunError::Ssh {
                reason: e.to_string(),
                console: console_heading(vm),
            }))));
        }
    };
    timings.boot_to_ssh = t_boot.elapsed();
    if let Some((trouble, kvm_ran)) = kvm.to_confirm {
        let tcg_alarm = vm.console_alarm().is_some();
        if trouble.confirmed_by(*kvm_ran, timings.boot_to_ssh, tcg_alarm) {
            // The guest that did not run under KVM runs under TCG.
            if let Some(accel) = run.accel {
                accel.kvm_failed(&trouble.reason);
            }
        } else {
            let why = if tcg_alarm {
                "its kernel reported stalled CPUs under TCG as well (a loaded host?)".to_string()
            } else {
                format!(
                    "it needed {:.0} s under TCG, more than it had under KVM ({:.0} s)",
                    timings.boot_to_ssh.as_secs_f64(),
                    kvm_ran.as_secs_f64()
                )
            };
            sink.emit(JobEvent::Phase {
                phase: Phase::Boot,
                detail: format!("That does not prove KVM broken: {why}; later jobs try KVM again"),
            });
        }
    }
    sink.emit(JobEvent::Phase {
        phase: Phase::Ready,
        detail: format!("SSH ready after {:.1}s", timings.boot_to_ssh.as_secs_f64()),
    });

    Ok((session, target))
}

/// Runs the job's steps on a ready guest; keeps the session open for a
/// [`DebugHold`] when the job failed and there is one.
async fn run_steps(
    run: &VmRun<'_>,
    vm: &Vm,
    session: ssh::SshSession,
    target: SshTarget,
    sink: &dyn EventSink,
    cancel: &CancellationToken,
    timings: &mut Timings,
) -> Attempt {
    let image = run.image;
    let timing_sink = TimingSink {
        inner: sink,
        first_step: Mutex::new(None),
    };
    let t_job = Instant::now();
    // A guest without git gets its checkout fetched inside the job's directory.
    let mut spec = run.spec.clone();
    if let CheckoutSource::Remote { host_dir, .. } = &mut spec.checkout {
        *host_dir = Some(vm.dir().to_path_buf());
    }
    let runner = RunnerInfo::for_image(image, run.runner_name);
    let outcome = executor::run_job(&spec, &runner, &session, &timing_sink, cancel.clone()).await;
    timings.job = t_job.elapsed();
    timings.first_step = timing_sink
        .first_step
        .lock()
        .ok()
        .and_then(|t| *t)
        .map(|t| t.saturating_duration_since(t_job));
    if run.debug.is_some()
        && outcome.conclusion == Conclusion::Failure
        && !outcome.timed_out
        && !cancel.is_cancelled()
    {
        // Offered for debugging with its session still open.
        return Attempt::Failed(outcome, Box::new((session, target)));
    }
    let _ = session.close().await;
    Attempt::Done(Ok(outcome))
}

/// What the last SSH attempt of a boot saw, in words for users.
fn describe_last_attempt(last: Option<&ssh::SshError>) -> String {
    use ssh::SshError as E;
    match last {
        None => "no connection attempt finished".into(),
        Some(E::NoBanner { .. } | E::ClosedBeforeBanner { .. } | E::Refused { .. }) => {
            "the guest's SSH server never answered (QEMU forwards the port, but nothing in the guest listened on port 22)".into()
        }
        Some(E::Timeout { after, .. }) => format!(
            "the last connection attempt did not finish within {} s",
            after.as_secs()
        ),
        Some(e) => format!("the last attempt failed: {e}"),
    }
}

/// Keeps the console of a KVM attempt that was given up, as
/// `<state_dir>/boot-failures/<image>.kvm.console.log`, for diagnosis.
fn keep_kvm_console(run: &Boot<'_>, vm: &Vm) {
    let kept = boot_failure_console(run.config, &format!("{}.kvm", run.image.name));
    if let Err(e) = vm.keep_console(&kept) {
        tracing::warn!(path = %kept.display(), error = %e, "could not keep the KVM attempt's console log");
    }
}

/// Keeps the console of a failed boot in `<state_dir>/boot-failures/` and
/// returns its tail with a heading that says where the whole log is.
fn keep_failed_console(run: &Boot<'_>, vm: &Vm) -> String {
    let kept = boot_failure_console(run.config, &run.image.name);
    let where_ = match vm.keep_console(&kept) {
        Ok(()) => format!("the whole log is kept in {}", kept.display()),
        Err(e) => {
            tracing::warn!(path = %kept.display(), error = %e, "could not keep the console log");
            "it could not be kept".into()
        }
    };
    let tail = vm.console_tail(BOOT_FAILURE_CONSOLE_LINES);
    let tail = vm::clean_console_text(tail.as_bytes());
    if tail.trim().is_empty() {
        format!(
            "The guest printed nothing on its serial console ({where_}): check that the image boots and logs to its serial console (console=ttyS0 on Linux, ttya on illumos)."
        )
    } else {
        format!(
            "Last {BOOT_FAILURE_CONSOLE_LINES} lines of its serial console ({where_}):\n{}",
            tail.trim_end()
        )
    }
}

/// Emits a runner line outside any step.
pub fn runner_line(sink: &dyn EventSink, text: impl Into<String>) {
    sink.emit(JobEvent::Line {
        step: None,
        kind: LineKind::Runner,
        text: text.into(),
    });
}

/// True when the job counts as passed.
pub fn succeeded(outcome: &JobOutcome) -> bool {
    outcome.conclusion == Conclusion::Success
}

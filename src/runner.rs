//! Runs one job end to end: provision a VM, wait for SSH, execute, tear down.
//! `solstice exec` and (later) `solstice run` share [`run_in_vm`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ImageConfig, SeedKind};
use crate::events::{Conclusion, EventSink, JobEvent, LineKind, Phase};
use crate::executor::{self, JobOutcome, JobSpec};
use crate::ssh::{self, ClientKey, HostKey, HostKeyCheck, ReadyOptions, SshTarget};
use crate::vm::{self, Accel, Vm, VmSpec};

/// Lines of the serial console quoted when a guest does not come up.
pub const BOOT_FAILURE_CONSOLE_LINES: usize = 25;
/// How often boot progress is reported while waiting for SSH.
const BOOT_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Why a job could not run at all (as opposed to a job whose steps failed).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("Could not start the VM")]
    Provision(#[source] vm::VmError),
    #[error(
        "The guest did not accept SSH within {timeout_secs}s ({reason}). Last lines of its serial console:\n{console}"
    )]
    BootTimeout {
        timeout_secs: f64,
        reason: String,
        console: String,
    },
    #[error(
        "Could not reach the guest over SSH ({reason}). Last lines of its serial console:\n{console}"
    )]
    Ssh { reason: String, console: String },
    #[error("Cancelled before the job started")]
    Cancelled,
    #[error("Could not record the VM in the state database: {0}")]
    Record(String),
    #[error("Could not create the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    /// SSH ready → the first step's command running in the guest.
    pub first_step: Option<Duration>,
    /// Whole executor run (all steps).
    pub job: Duration,
    /// VM destroyed and its files removed.
    pub teardown: Duration,
}

/// Result of [`run_in_vm`].
#[derive(Debug)]
pub struct RunReport {
    pub outcome: JobOutcome,
    pub timings: Timings,
    pub accel: Accel,
}

/// Everything one VM run needs.
pub struct VmRun<'a> {
    pub config: &'a Config,
    pub image: &'a ImageConfig,
    pub accel: Accel,
    /// Names the job directory under `<state_dir>/jobs/`.
    pub job_id: &'a str,
    pub spec: &'a JobSpec,
    /// Told about the VM's resources before they exist and after they are
    /// gone, so that a crashed daemon's leftovers can be found (the daemon
    /// records them in its state database).
    pub observer: Option<&'a dyn VmObserver>,
}

/// Hears about a job's VM resources (see [`VmRun::observer`]).
pub trait VmObserver: Send + Sync {
    /// Before anything is created: `dir` will hold the overlay, seed,
    /// sockets and console log. An error stops the job before the VM exists.
    fn before_start(&self, dir: &Path) -> Result<(), String>;
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

/// Provisions a fresh VM, waits for SSH, runs the job's steps and destroys the
/// VM, on every path (errors, cancellation, and panics through `Vm`'s `Drop`).
pub async fn run_in_vm(
    run: &VmRun<'_>,
    sink: &dyn EventSink,
    cancel: &CancellationToken,
) -> Result<RunReport, RunError> {
    let image = run.image;
    let jobs = jobs_dir(run.config);
    std::fs::create_dir_all(&jobs).map_err(|source| RunError::StateDir {
        path: jobs.clone(),
        source,
    })?;

    let mut timings = Timings::default();
    let accel_name = match run.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    sink.emit(JobEvent::Phase {
        phase: Phase::Provision,
        detail: format!(
            "image {} ({} vCPU, {} MiB), accelerator {accel_name}",
            image.name, image.vcpus, image.memory_mib
        ),
    });

    let t0 = Instant::now();
    let client_key = ClientKey::generate();
    let host_key = match image.seed {
        SeedKind::NoCloud => Some(HostKey::generate()),
        // The metadata-agent form cannot carry a host key: pin the first one seen.
        SeedKind::MetadataCpio => None,
    };
    let host_private = host_key.as_ref().map(HostKey::private_openssh);
    let host_public = host_key.as_ref().map(HostKey::public_openssh);
    let authorized = client_key.public_openssh();
    let hostname = format!("solstice-{}", short_id(run.job_id));
    let spec = VmSpec {
        job_id: run.job_id,
        image,
        qemu: &run.config.qemu,
        accel: run.accel,
        jobs_dir: &jobs,
        authorized_key: &authorized,
        host_key: host_private.as_ref().zip(host_public.as_deref()),
        hostname: &hostname,
    };
    if let Some(o) = run.observer {
        o.before_start(&jobs.join(run.job_id))
            .map_err(RunError::Record)?;
    }
    let started = tokio::select! {
        r = Vm::start(spec) => Some(r),
        _ = cancel.cancelled() => None,
    };
    let vm = match started {
        Some(Ok(vm)) => vm,
        other => {
            // Vm::start (or dropping it) removed what it had created.
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

    let result = boot_and_run(
        run,
        &vm,
        client_key,
        host_public,
        sink,
        cancel,
        &mut timings,
    )
    .await;

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

    result.map(|outcome| RunReport {
        outcome,
        timings,
        accel: run.accel,
    })
}

async fn boot_and_run(
    run: &VmRun<'_>,
    vm: &Vm,
    client_key: ClientKey,
    host_public: Option<String>,
    sink: &dyn EventSink,
    cancel: &CancellationToken,
    timings: &mut Timings,
) -> Result<JobOutcome, RunError> {
    let image = run.image;
    let check = match host_public {
        Some(k) => HostKeyCheck::Pinned(k),
        None => HostKeyCheck::TrustFirstUse,
    };
    let target =
        SshTarget::new(vm.ssh_addr(), image.ssh_user.clone(), client_key, check).map_err(|e| {
            RunError::Ssh {
                reason: e.to_string(),
                console: String::new(),
            }
        })?;
    sink.emit(JobEvent::Phase {
        phase: Phase::Boot,
        detail: format!(
            "QEMU pid {} running; waiting for SSH on {} as {} (timeout {}s)",
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
    let last_report = Mutex::new(Instant::now());
    let progress = |p: ssh::ReadyProgress| {
        let Ok(mut last) = last_report.lock() else {
            return;
        };
        if last.elapsed() >= BOOT_PROGRESS_EVERY {
            *last = Instant::now();
            let why = p
                .last_failure
                .map(|f| format!(", last attempt: {f}"))
                .unwrap_or_default();
            sink.emit(JobEvent::Phase {
                phase: Phase::Boot,
                detail: format!(
                    "still waiting for SSH after {:.0}s (attempt {}{why})",
                    p.elapsed.as_secs_f64(),
                    p.attempt
                ),
            });
        }
    };
    let session = match ssh::wait_ready_with_stats(&target, &opts, cancel, &progress).await {
        Ok((s, stats)) => {
            // The wait starts a little after the spawn; count from the spawn.
            let waited_from = t_wait.saturating_duration_since(t_boot);
            timings.boot_to_banner = stats.first_banner.map(|b| b + waited_from);
            s
        }
        Err(ssh::SshError::Cancelled { .. }) => return Err(RunError::Cancelled),
        Err(e @ ssh::SshError::NotReady { .. }) => {
            return Err(RunError::BootTimeout {
                timeout_secs: image.boot_timeout.as_secs_f64(),
                reason: e.to_string(),
                console: console_tail(vm),
            });
        }
        Err(e) => {
            return Err(RunError::Ssh {
                reason: e.to_string(),
                console: console_tail(vm),
            });
        }
    };
    timings.boot_to_ssh = t_boot.elapsed();
    sink.emit(JobEvent::Phase {
        phase: Phase::Ready,
        detail: format!("SSH ready after {:.1}s", timings.boot_to_ssh.as_secs_f64()),
    });

    let timing_sink = TimingSink {
        inner: sink,
        first_step: Mutex::new(None),
    };
    let t_job = Instant::now();
    let outcome = executor::run_job(run.spec, &session, &timing_sink, cancel.clone()).await;
    timings.job = t_job.elapsed();
    timings.first_step = timing_sink
        .first_step
        .lock()
        .ok()
        .and_then(|t| *t)
        .map(|t| t.saturating_duration_since(t_job));
    let _ = session.close().await;
    Ok(outcome)
}

/// The console tail quoted in boot errors, or a hint when the guest printed nothing.
fn console_tail(vm: &Vm) -> String {
    let tail = vm.console_tail(BOOT_FAILURE_CONSOLE_LINES);
    if tail.trim().is_empty() {
        format!(
            "(empty: the guest printed nothing on its serial console; check that the image boots and logs to ttyS0/ttya; log file was {})",
            vm.console_path().display()
        )
    } else {
        tail
    }
}

/// The first 12 characters of a job id, for host names.
fn short_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect()
}

/// A fresh job id: `<prefix>-<16 hex>`.
pub fn new_job_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
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

//! `solstice bench`: timing figures against plain baselines, measured in one
//! run on the same image.
//!
//! - [`engine`] (`solstice bench engine`, issue 2): one job through
//!   [`crate::job::run_in_vm`] against plain QEMU + `ssh` polling.
//! - [`runner`] (`solstice bench runner`, issue 3): the `solstice run` daemon
//!   against an in-process fake forge: throughput, latency split, idle cost
//!   and log streaming, each against its plain baseline.
//! - [`actions`] (`solstice bench actions`, issue 12): node start-up in the
//!   guest against `run:` and composite steps, first against cached action
//!   fetches, and the daemon's memory with the action cache in use.
//! - [`cache`] (`solstice bench cache`, issue 13): the cache service's save
//!   and restore throughput in the guest against an SSH copy.
//!
//! - [`network`] (`solstice bench network`, issue 13): boot to SSH and a
//!   download in the guest with `network = "unrestricted"` against
//!   `"outbound"` (QEMU in its own namespace behind pasta).
//!
//! - [`github`] (`solstice bench github`, issue 14): the daemon against the
//!   fake GitHub (idle memory with 2 JIT runners polling, task → first step)
//!   against the same daemon on the fake Forgejo forge.
//!
//! - [`warm`] (`solstice bench warm`, issue 17): task received → first
//!   step running with a cold boot, a warm pool's guest and a guest restored
//!   from a snapshot template, against the plain boot to SSH; the memory of
//!   an idle warm guest.
//!
//! Both boot their baseline VMs with [`baseline::BaselineVm`].

pub mod actions;
mod args;
pub mod baseline;
pub mod cache;
pub mod engine;
pub mod github;
pub mod network;
pub mod runner;
pub mod runner_report;
pub mod warm;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, ImageConfig};
use crate::job::RunError;
use crate::job::placement::{Fallback, choose_image};
use crate::startup::StartupError;

pub use args::{
    ActionsBenchArgs, ActionsPhase, BenchArgs, BenchCommand, BenchCommon, CacheBenchArgs,
    EngineBenchArgs, GithubBenchArgs, NetworkBenchArgs, RunnerBenchArgs, WarmBenchArgs, WarmMode,
};
pub use engine::{Report, SolsticeSample, TARGET_ABS, TARGET_RATIO};

/// Why a benchmark stopped without figures. The command-line edge maps it to
/// the exit status (docs/reference/cli.md).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// No configuration, or the accelerator cannot be used.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// Bad usage: no such image, or the OpenSSH client is missing.
    #[error("{0}")]
    Usage(String),
    /// A VM could not be run or measured.
    #[error("{0}")]
    Infra(String),
    /// Solstice's own job run failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Runs the benchmark the arguments name.
pub async fn bench_main(args: BenchArgs) -> Result<(), BenchError> {
    match args.command {
        BenchCommand::Engine(a) => engine::engine_main(a).await,
        BenchCommand::Runner(a) => runner::runner_main(a).await,
        BenchCommand::Actions(a) => actions::actions_main(a).await,
        BenchCommand::Network(a) => network::network_main(a).await,
        BenchCommand::Cache(a) => cache::cache_main(a).await,
        BenchCommand::Github(a) => github::github_main(a).await,
        BenchCommand::Warm(a) => warm::warm_main(a).await,
    }
}

/// The median of `xs` (the mean of the middle two for an even count).
pub fn median(xs: &[Duration]) -> Duration {
    if xs.is_empty() {
        return Duration::ZERO;
    }
    let mut v = xs.to_vec();
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

/// `1234 ms`.
pub(crate) fn fmt_ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// What both benchmarks need first: the configuration, with the OpenSSH
/// client (the baselines use it) checked to be there.
pub(crate) fn load_bench_config(common: &BenchCommon) -> Result<Config, BenchError> {
    let (_, config) = crate::startup::load_config(common.config.as_deref())?;
    require_openssh()?;
    Ok(config)
}

/// The image both benchmarks measure: `--image`, else the only image, else
/// the one named `tiny` ([`Fallback::Bench`]).
pub(crate) fn bench_image<'a>(
    config: &'a Config,
    common: &BenchCommon,
) -> Result<&'a ImageConfig, BenchError> {
    let placed = choose_image(
        &config.images,
        common.image.as_deref(),
        &[],
        Fallback::Bench,
    )
    .map_err(|e| BenchError::Usage(e.to_string()))?;
    Ok(placed.image)
}

/// `bin` in `PATH`.
/// This binary, which the daemon benchmarks start as `solstice run`.
pub(crate) fn daemon_exe() -> Result<PathBuf, BenchError> {
    std::env::current_exe().map_err(|e| {
        BenchError::Infra(format!(
            "cannot find the solstice binary to start the daemon: {e}"
        ))
    })
}

/// The label a benchmark's jobs run on: the image's first, else its name.
pub(crate) fn first_label(image: &crate::config::ImageConfig) -> String {
    image
        .labels
        .first()
        .cloned()
        .unwrap_or_else(|| image.name.clone())
}

pub(crate) fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    })
}

/// Checks that the OpenSSH client the baselines use is installed.
pub(crate) fn require_openssh() -> Result<(), BenchError> {
    if which("ssh").is_none() || which("ssh-keygen").is_none() {
        return Err(BenchError::Usage(
            "the baseline needs the OpenSSH client (`ssh`, `ssh-keygen`): apt-get install openssh-client".into(),
        ));
    }
    Ok(())
}

/// A directory removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `parent/<prefix>-<random>`.
    pub fn new(parent: &std::path::Path, prefix: &str) -> Result<TempDir, BenchError> {
        let dir = parent.join(format!("{prefix}-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::Infra(format!("create {}: {e}", dir.display())))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `spec` as one job in a fresh VM of `image` under `accel`, through
/// [`crate::job::run_in_vm`] exactly as `solstice exec` runs it.
pub(crate) async fn run_one_job(
    config: &Config,
    image: &ImageConfig,
    accel: crate::vm::Accel,
    spec: &crate::job::JobSpec,
    sink: &dyn crate::events::EventSink,
) -> Result<crate::job::RunReport, RunError> {
    let job_id = crate::job::id::new_job_id("bench");
    let fixed = crate::vm::accel::Accelerator::fixed(accel);
    let run = crate::job::VmRun {
        config,
        image,
        accel: &fixed,
        job_id: &job_id,
        spec,
        runner_name: "solstice-bench",
        observer: None,
        debug: None,
        warm: None,
    };
    crate::job::run_in_vm(&run, sink, &tokio_util::sync::CancellationToken::new()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(
            median(&[ms(4), ms(1), ms(2), ms(3)]),
            Duration::from_micros(2500)
        );
        assert_eq!(median(&[]), Duration::ZERO);
    }
}

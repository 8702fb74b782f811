//! The arguments of `solstice bench` (the command-line edge embeds them).

use std::path::PathBuf;

use clap::Subcommand;

/// `solstice bench`: which benchmark.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// One `true` job through the engine (as `solstice exec` runs it) against
    /// plain QEMU + `ssh` polling: Solstice's own overhead around the boot.
    Engine(EngineBenchArgs),
    /// The `solstice run` daemon against an in-process fake forge: job
    /// throughput at capacity 1 and 2, the latency split from task receipt to
    /// the first step, idle memory and CPU, and log streaming, each against
    /// plain QEMU + OpenSSH in the same run. Takes several minutes under TCG.
    Runner(RunnerBenchArgs),
    /// Actions: the time a JavaScript action adds to a step (node start-up
    /// in the guest) against `run:` and composite steps in the same job; a
    /// first fetch against cached fetches (by tag, by sha) from a git server
    /// on 127.0.0.1; the daemon's memory with jobs that use a fetched action
    /// against jobs that do not.
    Actions(ActionsBenchArgs),
    /// The guest's network isolation: boot to SSH and a download inside the
    /// guest from a server in a test network namespace, with `network =
    /// "unrestricted"` against `"outbound"` in the same run. Needs root.
    Network(NetworkBenchArgs),
    /// The built-in cache service: saving and restoring `--mb` megabytes
    /// from inside the guest, against copying the same bytes into it over
    /// SSH with Solstice's executor, in one job.
    Cache(CacheBenchArgs),
    /// The GitHub forge: the daemon's memory with 2 idle JIT runners polling
    /// the fake GitHub, and task received → first step running of trivial
    /// jobs, against the same daemon on the fake Forgejo forge in the same
    /// run.
    Github(GithubBenchArgs),
    /// Warm starts: task received → first step running of trivial jobs
    /// whose guest boots cold, is taken from a warm pool (`warm = 1`), or is
    /// restored from a snapshot template (`snapshot = true`), side by side
    /// in one run with the plain QEMU boot to SSH; and the memory of an idle
    /// warm guest.
    Warm(WarmBenchArgs),
}

/// How the guests of one part of `solstice bench warm` start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum WarmMode {
    /// Booted for the job (`warm = 0`, `snapshot = false`).
    Cold,
    /// Taken from a warm pool (`warm = 1`; each job is queued once the
    /// pool's guest is ready).
    Pool,
    /// Restored from a snapshot template (`snapshot = true`, `warm = 0`;
    /// the jobs are queued once the template is saved).
    Restored,
}

impl WarmMode {
    /// `cold`, `pool` or `restored` (as `job::StartKind` names them).
    pub fn as_str(self) -> &'static str {
        match self {
            WarmMode::Cold => "cold",
            WarmMode::Pool => "pool",
            WarmMode::Restored => "restored",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct WarmBenchArgs {
    #[command(flatten)]
    pub common: BenchCommon,
    /// Trivial (`run: 'true'`) jobs per start kind, one after another, and
    /// boots of the plain baseline VM; medians, minimum and maximum are
    /// reported.
    #[arg(long, short = 'n', default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Seconds the warm guest stays idle once ready before its memory is
    /// read and the next job is queued.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_secs: u64,
    /// Seconds to wait for the warm guest or the snapshot template to be
    /// ready; that part then fails with the daemon's log.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=7200))]
    pub ready_timeout_secs: u64,
    /// Measure only these start kinds (repeat or separate with commas)
    /// [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<WarmMode>,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct GithubBenchArgs {
    #[command(flatten)]
    pub common: BenchCommon,
    /// Trivial (`run: 'true'`) jobs run one after another on each forge; the
    /// latency medians are taken over them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub jobs: u32,
    /// Seconds the daemon settles at capacity 2 (idle, polling) before its
    /// memory is read.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_secs: u64,
}

#[derive(Debug, clap::Args)]
pub struct CacheBenchArgs {
    #[command(flatten)]
    pub common: BenchCommon,
    /// Megabytes (10^6 bytes) of random data to copy, save and restore.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub mb: u32,
}

/// A part of `solstice bench actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ActionsPhase {
    /// One VM job: `run:`, composite and JavaScript steps.
    Steps,
    /// First and cached fetches through the host's action cache (no VM).
    Fetch,
    /// The daemon's memory with and without actions.
    Daemon,
}

/// Options of both benchmarks.
#[derive(Debug, clap::Args)]
pub struct BenchCommon {
    /// Configuration file (same search order as `exec`); its `[qemu]` and
    /// image settings are used, its forges are not.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Image to measure [default: the only image, or the one named `tiny`].
    #[arg(long, short = 'i')]
    pub image: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct EngineBenchArgs {
    #[command(flatten)]
    pub common: BenchCommon,
    /// Runs of each measurement; medians are reported.
    #[arg(long, short = 'n', default_value_t = 5)]
    pub runs: u32,
    /// A second image of the config measured the same way in the same run,
    /// its runs alternating with the first image's (e.g. an image with a
    /// container engine against the same image without).
    #[arg(long, value_name = "IMAGE")]
    pub versus: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RunnerBenchArgs {
    #[command(flatten)]
    pub common: BenchCommon,
    /// Trivial (`run: 'true'`) jobs queued at once for each throughput run;
    /// the latency medians are taken over the capacity-1 run's jobs.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub jobs: u32,
    /// Megabytes (10^6 bytes, as 100-byte lines) the log-streaming job prints.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub log_mb: u32,
    /// Seconds the idle daemon's memory and CPU are watched (20 or more for
    /// a meaningful CPU figure).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_secs: u64,
    /// Boots of the plain baseline VM; the median boot to SSH is used.
    #[arg(long, short = 'n', default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ActionsBenchArgs {
    #[command(flatten)]
    pub common: BenchCommon,
    /// Steps of each kind (`run: 'true'`, a no-op composite action, a no-op
    /// JavaScript action) in the one VM job of the `steps` part.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub steps: u32,
    /// Repetitions of each fetch measurement (a fresh cache each); medians
    /// are reported.
    #[arg(long, short = 'n', default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Jobs the daemon runs in each case of the `daemon` part.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub jobs: u32,
    /// Run only these parts (repeat or separate with commas) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<ActionsPhase>,
}

#[derive(Debug, clap::Args)]
pub struct NetworkBenchArgs {
    #[command(flatten)]
    pub common: BenchCommon,
    /// Boots (each with one download) per network mode; medians are reported.
    #[arg(long, short = 'n', default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Megabytes (10^6 bytes) each download fetches.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub mb: u32,
}

//! Command-line interface: argument parsing and the top-level commands.

pub mod cache;
pub mod doctor;
pub mod error;
pub mod exec;
pub mod status;
pub mod term;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use error::{CliError, Exit};

use clap::{Parser, Subcommand};

/// Solstice: run Actions jobs in fresh, throw-away QEMU VMs.
#[derive(Debug, Parser)]
#[command(name = "solstice", version, about, long_about = None)]
pub struct Cli {
    /// Log filter for diagnostics on stderr (e.g. `info`, `solstice=debug`)
    /// [default: `info` for `run`, `warn` otherwise].
    #[arg(long, global = true, env = "SOLSTICE_LOG")]
    pub log: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one job of a workflow file in a fresh VM and stream its log.
    Exec(ExecArgs),
    /// Check a configuration file; exits 0 when it is valid and prints every problem otherwise.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
        /// Do not check that image and UEFI firmware files exist (for a file
        /// written for another machine, e.g. at Nix build time).
        #[arg(long)]
        no_path_checks: bool,
    },
    /// Show the daemon's running and recently finished jobs (from its state database).
    Status(status::StatusArgs),
    /// Explain this host: QEMU, KVM and the accelerator jobs will get, images,
    /// firmware, the state directory and (with --forges) the forges, one line
    /// each with what to do; exits 1 when a job could not run.
    Doctor(doctor::DoctorArgs),
    /// Measure Solstice against plain QEMU + OpenSSH baselines
    /// (`bench engine`: one job's overhead; `bench runner`: the daemon;
    /// `bench actions`: node start-up, fetches, the daemon's memory).
    #[cfg(feature = "bench")]
    Bench(crate::bench::BenchArgs),
    /// A build without benchmarks: says how to get them.
    #[cfg(not(feature = "bench"))]
    #[command(hide = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// See or clear the cache service's entries (`cache list`, `cache clear
    /// [--repo OWNER/NAME]`); safe while the daemon runs.
    Cache(cache::CacheArgs),
    /// Serve the configured forges: poll for jobs and run each in a fresh VM
    /// (the daemon; stops on SIGTERM/SIGINT after draining running jobs).
    Run {
        /// Configuration file (same search order as `exec`).
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Configuration file [default: $SOLSTICE_CONFIG, which must exist; else the first
    /// that exists of ./solstice.toml, $XDG_CONFIG_HOME/solstice/solstice.toml
    /// (~/.config/solstice/solstice.toml without XDG_CONFIG_HOME), /etc/solstice/solstice.toml].
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Image to run the job on [default: the image whose labels match `runs-on`, or the only image].
    #[arg(long, short = 'i')]
    pub image: Option<String>,
    /// Job id to run when the workflow has more than one job.
    #[arg(long, short = 'j')]
    pub job: Option<String>,
    /// Extra environment variable for every step (KEY=VALUE); repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Secret (KEY=VALUE, or KEY to read it from the environment variable KEY); repeatable.
    /// Secrets are masked in all output.
    #[arg(long = "secret", short = 's', value_name = "KEY[=VALUE]", value_parser = parse_secret)]
    pub secrets: Vec<(String, String)>,
    /// Configuration variable for the `vars` context (KEY=VALUE); repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub vars: Vec<(String, String)>,
    /// Run only the matrix combinations where KEY equals VALUE; repeatable.
    #[arg(long = "matrix", short = 'm', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub matrix: Vec<(String, String)>,
    /// Directory copied into the guest by `actions/checkout` [default: the git work tree
    /// holding the workflow file, else the current directory].
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Where `uses: owner/repo@ref` actions come from [default: `[actions] default_url`
    /// of the config, else https://github.com].
    #[arg(long, value_name = "URL")]
    pub actions_url: Option<String>,
    /// The workflow file.
    pub workflow: PathBuf,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if valid_name(k) => Ok((k.to_string(), v.to_string())),
        Some((k, _)) => Err(format!(
            "`{k}` is not a valid name; use letters, digits and `_`, not starting with a digit"
        )),
        None => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

fn parse_secret(s: &str) -> Result<(String, String), String> {
    if s.contains('=') {
        return parse_key_value(s);
    }
    if !valid_name(s) {
        return Err(format!("`{s}` is not a valid secret name"));
    }
    match std::env::var(s) {
        Ok(v) => Ok((s.to_string(), v)),
        Err(_) => Err(format!(
            "the environment variable `{s}` is not set; use `--secret {s}=VALUE` or export it"
        )),
    }
}

fn valid_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The entry point called by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs its progress at `info` unless told otherwise.
    let default = if matches!(cli.command, Command::Run { .. }) {
        "info"
    } else {
        "warn"
    };
    init_tracing(cli.log.as_deref().unwrap_or(default));
    let result = match cli.command {
        Command::Run { config } => run_async(async move {
            // 0 after a clean stop, 1 when the daemon cannot start or must
            // stop, 2 for a missing or invalid config.
            let (_, config) = crate::startup::load_config(config.as_deref())?;
            crate::daemon::run(config)
                .await
                .map_err(|e| CliError::new(Exit::Failed, e))
        })
        .and_then(|r| r),
        Command::CheckConfig {
            file,
            no_path_checks,
        } => check_config_main(
            &file,
            &crate::config::ParseOptions {
                check_paths: !no_path_checks,
            },
        ),
        Command::Exec(args) => run_async(exec::exec_main(args)).and_then(|r| r),
        #[cfg(feature = "bench")]
        Command::Bench(args) => {
            run_async(crate::bench::bench_main(args)).and_then(|r| r.map_err(CliError::from))
        }
        #[cfg(not(feature = "bench"))]
        Command::Bench { .. } => Err(CliError::usage(
            "This Solstice was built without benchmarks (they need the fake forge of the `bench` cargo feature); from a source checkout run `cargo run --release --features bench -- bench engine` (or `bench runner`)",
        )),
        Command::Status(args) => status::status_main(args),
        Command::Cache(args) => cache::cache_main(args),
        Command::Doctor(args) => run_async(doctor::doctor_main(args)).and_then(|r| r),
    };
    error::finish(result)
}

/// `solstice check-config [--no-path-checks] FILE`: print the warnings (one
/// per line) to stderr and the summary to stdout, or every problem (one per
/// line) and a count to stderr ([`Exit::Failed`]).
pub fn check_config_main(path: &Path, opts: &crate::config::ParseOptions) -> Result<(), CliError> {
    match crate::config::load_with(path, opts) {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("{w}");
            }
            println!("{}", config.summary(path));
            Ok(())
        }
        Err(errors) => {
            eprintln!("{errors}");
            let n = errors.len();
            eprintln!(
                "{}: {n} problem{} found",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            Err(CliError::reported(Exit::Failed))
        }
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn run_async<T>(fut: impl std::future::Future<Output = T>) -> Result<T, CliError> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Ok(rt.block_on(fut)),
        Err(e) => Err(CliError::new(
            Exit::NoRuntime,
            format!("cannot start the async runtime: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values() {
        assert_eq!(
            parse_key_value("A=b=c").unwrap(),
            ("A".to_string(), "b=c".to_string())
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("1A=x").is_err());
        assert!(parse_secret("SOLSTICE_SURELY_UNSET_VAR").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

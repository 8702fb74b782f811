//! The binary's edge: how a command fails, and the one mapping from a failure
//! to the exit status (the codes are listed in docs/reference/cli.md).
//!
//! Every command returns `Result<(), CliError>`; only [`finish`] prints the
//! error and turns it into an [`ExitCode`]. Library errors keep their
//! `#[source]` chain to the edge, where it is printed one cause per line.

use std::error::Error;
use std::fmt;
use std::process::ExitCode;

/// Why a command did not succeed. [`Exit::code`] is the only place that
/// knows the numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `exec`: a job (or matrix combination) failed.
    JobFailed,
    /// `status`: no state database, or it cannot be read.
    NoState,
    /// `check-config`: the file is not valid; `doctor`: a job could not run;
    /// `run`: the daemon could not start or had to stop.
    Failed,
    /// Bad usage, or a missing or invalid configuration.
    Usage,
    /// A VM could not be started or did not become reachable (`exec`, `bench`).
    Infra,
    /// The async runtime could not start (any command that runs one).
    NoRuntime,
    /// `exec`: interrupted by SIGINT or SIGTERM.
    Interrupted,
}

impl Exit {
    /// The process exit status.
    pub const fn code(self) -> u8 {
        match self {
            Exit::JobFailed | Exit::NoState | Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Infra => 3,
            Exit::NoRuntime => 70,
            Exit::Interrupted => 130,
        }
    }
}

/// Any error, with its causes, as the edge prints it.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// A command that failed: its [`Exit`] and the error to print, or none when
/// the command has already said everything (a failed job's summary, a list
/// of problems).
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub error: Option<BoxError>,
}

impl CliError {
    /// Fails with `exit`, printing `error` (a library error, whose causes are
    /// printed too, or a message).
    pub fn new(exit: Exit, error: impl Into<BoxError>) -> CliError {
        CliError {
            exit,
            error: Some(error.into()),
        }
    }

    /// Fails with `exit` after the command printed why.
    pub fn reported(exit: Exit) -> CliError {
        CliError { exit, error: None }
    }

    /// Bad usage or configuration ([`Exit::Usage`]).
    pub fn usage(error: impl Into<BoxError>) -> CliError {
        CliError::new(Exit::Usage, error)
    }

    /// A VM could not be run ([`Exit::Infra`]).
    pub fn infra(error: impl Into<BoxError>) -> CliError {
        CliError::new(Exit::Infra, error)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            Some(e) => write!(f, "{}", Report(e.as_ref())),
            None => write!(f, "exit status {}", self.exit.code()),
        }
    }
}

impl From<crate::startup::StartupError> for CliError {
    fn from(e: crate::startup::StartupError) -> CliError {
        use crate::startup::StartupError as E;
        let exit = match &e {
            E::NoConfig(_) | E::InvalidConfig(_) => Exit::Usage,
            E::Accel(_) | E::Probe(_) => Exit::Infra,
        };
        CliError::new(exit, e)
    }
}

#[cfg(feature = "bench")]
impl From<crate::bench::BenchError> for CliError {
    fn from(e: crate::bench::BenchError) -> CliError {
        use crate::bench::BenchError as E;
        match e {
            E::Startup(e) => e.into(),
            E::Usage(_) => CliError::usage(e),
            E::Infra(_) | E::Run(_) => CliError::infra(e),
        }
    }
}

/// `error: …` and one `  caused by: …` line per cause, as the edge prints them.
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, "\n  caused by: {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// A command's result as the process's exit status; prints the error first.
pub fn finish(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(error) = &e.error {
                eprintln!("{}", Report(error.as_ref()));
            }
            ExitCode::from(e.exit.code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("Cannot start the VM")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_get_a_line_each() {
        let e = Outer(std::io::Error::other("no such file"));
        assert_eq!(
            Report(&e).to_string(),
            "error: Cannot start the VM\n  caused by: no such file"
        );
        let msg = CliError::usage(format!("cannot read {}", "x.yml"));
        assert_eq!(msg.to_string(), "error: cannot read x.yml");
        assert_eq!(msg.exit.code(), 2);
    }

    #[test]
    fn codes_are_the_documented_ones() {
        let all = [
            (Exit::JobFailed, 1),
            (Exit::NoState, 1),
            (Exit::Failed, 1),
            (Exit::Usage, 2),
            (Exit::Infra, 3),
            (Exit::NoRuntime, 70),
            (Exit::Interrupted, 130),
        ];
        for (exit, code) in all {
            assert_eq!(exit.code(), code, "{exit:?}");
        }
    }
}

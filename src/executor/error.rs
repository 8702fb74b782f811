//! Why a step, or the job's setup, failed before its commands could tell.
//! Each message becomes one error line in the job log, as it is: a guest or
//! I/O error is part of the sentence, not a separate cause.

use std::path::PathBuf;

use super::checkout::LocalTreeError;
use super::shell::ShellError;
use crate::guest::GuestError;
use crate::workflow::expr::ExprError;

/// Why the probe at job start failed (the job fails, or counts as
/// cancelled when it was).
#[derive(Debug, thiserror::Error)]
pub(super) enum ProbeError {
    #[error("The job was cancelled during setup")]
    Cancelled,
    #[error("The job timed out during setup")]
    TimedOut,
    #[error("Could not build the job setup archive: {0}")]
    Archive(std::io::Error),
    #[error("Could not prepare the guest: {0}")]
    Guest(GuestError),
    #[error("Could not prepare the guest (exit status {status}): {stderr}")]
    Status { status: u32, stderr: String },
    #[error("The guest has no home directory ($HOME is empty); set the image's home")]
    NoHome,
}

/// Why a step failed before (or instead of) running its command.
#[derive(Debug, thiserror::Error)]
pub(super) enum StepError {
    #[error("A step cannot have both `run:` and `uses:`")]
    RunAndUses,
    #[error("A step needs `run:` or `uses:`")]
    NoRunOrUses,
    /// An expression in the step's `what` (`` `run:` ``, `` `with.ref` ``,
    /// `` `working-directory` ``) does not evaluate.
    #[error("Invalid {what}: {error}")]
    Expression { what: String, error: ExprError },
    #[error("{0}")]
    Shell(ShellError),
    /// An action that could not be loaded earlier in the job (the message).
    #[error("{0}")]
    Loading(String),
    #[error("{0}")]
    VmAction(String),
    #[error("Invalid `uses:`: {0}")]
    BadUses(String),
    /// A Docker action on a guest that cannot run containers; `why` ends
    /// the sentence about `image` ("is an illumos image").
    #[error(
        "`uses: {uses}` is a Docker action: it runs in a container, which needs a Linux image with a container engine (docker), but image `{image}` {why}"
    )]
    DockerAction {
        uses: String,
        image: String,
        why: String,
    },
    #[error(
        "`uses: {uses}` cannot be fetched: this run has no action cache (remote actions are fetched by the host)"
    )]
    NoActionCache { uses: String },
    #[error("{}", fetch_message(.uses, .error))]
    Fetch { uses: String, error: String },
    #[error("Could not copy the action into the guest at {dest}: {error}")]
    ActionCopy { dest: String, error: String },
    #[error(
        "Can't find 'action.yml', 'action.yaml' or 'Dockerfile' for `uses: {uses}` in {dir}. Did you forget to run actions/checkout before running your local action?"
    )]
    LocalActionMissing { uses: String, dir: String },
    #[error("Invalid action metadata: {0}")]
    Manifest(String),
    #[error("Can't find 'action.yml', 'action.yaml' or 'Dockerfile' in {at}")]
    NoManifest { at: String },
    #[error(
        "`uses: {uses}`: composite action depth exceeded max depth {max} (does an action use itself?)"
    )]
    CompositeDepth { uses: String, max: usize },
    #[error("Could not build the step archive: {0}")]
    Archive(std::io::Error),
    #[error("The step could not run in the guest: {0}")]
    Guest(GuestError),
    #[error(
        "actions/checkout with `repository: {0}` needs a remote source; this job copies the local tree"
    )]
    CheckoutNeedsRemote(String),
    #[error("Could not copy the local tree {}: {error}", .root.display())]
    LocalTree {
        root: PathBuf,
        error: LocalTreeError,
    },
    #[error("Invalid `fetch-depth: {0}`: expected a number")]
    FetchDepth(String),
    #[error("`repository: {repository}` is not an owner/name on the job's forge {server_url}")]
    NotOwnerName {
        repository: String,
        server_url: String,
    },
    #[error("Could not create a directory in {}: {error}", .base.display())]
    ScratchDir {
        base: PathBuf,
        error: std::io::Error,
    },
    #[error("Could not archive the checkout: {0}")]
    CheckoutArchive(LocalTreeError),
    #[error("Copying {what} into the guest failed: {error}")]
    Copy { what: String, error: GuestError },
}

/// A fetch failure's text: the cache's own message when it already says
/// what could not be fetched, else prefixed with the `uses:`.
fn fetch_message(uses: &str, error: &str) -> String {
    if error.starts_with("Could not fetch") || error.starts_with("Refusing to fetch") {
        error.to_string()
    } else {
        format!("Could not fetch `{uses}`: {error}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages are the ones the job log showed when they were strings.
    #[test]
    fn messages_read_as_before() {
        let guest = || GuestError::Exec("no exit status".into());
        let cases: Vec<(String, &str)> = vec![
            (
                ProbeError::Guest(guest()).to_string(),
                "Could not prepare the guest: Guest command could not be started: no exit status",
            ),
            (
                ProbeError::Status {
                    status: 2,
                    stderr: "mkdir: denied".into(),
                }
                .to_string(),
                "Could not prepare the guest (exit status 2): mkdir: denied",
            ),
            (
                StepError::Fetch {
                    uses: "a/b@v1".into(),
                    error: "Could not fetch `a/b@v1` from https://x/a/b: down".into(),
                }
                .to_string(),
                "Could not fetch `a/b@v1` from https://x/a/b: down",
            ),
            (
                StepError::Fetch {
                    uses: "a/b@v1".into(),
                    error: "the job was cancelled".into(),
                }
                .to_string(),
                "Could not fetch `a/b@v1`: the job was cancelled",
            ),
            (
                StepError::DockerAction {
                    uses: "docker://alpine:3".into(),
                    image: "omnios".into(),
                    why: "is an illumos image".into(),
                }
                .to_string(),
                "`uses: docker://alpine:3` is a Docker action: it runs in a container, which needs a Linux image with a container engine (docker), but image `omnios` is an illumos image",
            ),
            (
                StepError::FetchDepth("x".into()).to_string(),
                "Invalid `fetch-depth: x`: expected a number",
            ),
            (
                StepError::NotOwnerName {
                    repository: "a/b/c".into(),
                    server_url: "https://forge.example".into(),
                }
                .to_string(),
                "`repository: a/b/c` is not an owner/name on the job's forge https://forge.example",
            ),
            (
                StepError::Copy {
                    what: "the local tree".into(),
                    error: guest(),
                }
                .to_string(),
                "Copying the local tree into the guest failed: Guest command could not be started: no exit status",
            ),
            (
                StepError::ScratchDir {
                    base: "/s/jobs/x".into(),
                    error: std::io::Error::other("full"),
                }
                .to_string(),
                "Could not create a directory in /s/jobs/x: full",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}

//! Before a failed job's VM is kept for debug SSH: remove from the guest
//! what the job received that could outlive it (see `docs/debug-ssh.md`).

use crate::guest::GuestSession;
use crate::job::RunnerInfo;

/// What [`scrub_for_debug`] did, for the job log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scrubbed {
    /// What was removed, in words ("the job token in the checkout's git config", …).
    pub removed: Vec<String>,
}

/// Why the clean-up failed (the VM is then not kept).
#[derive(Debug, thiserror::Error)]
#[error("could not clean the guest before keeping it: {0}")]
pub struct ScrubError(pub String);

/// Removes the job's secrets that Solstice wrote into the guest.
pub async fn scrub_for_debug(
    session: &dyn GuestSession,
    runner: &RunnerInfo,
) -> Result<Scrubbed, ScrubError> {
    let _ = (session, runner);
    todo!("helper")
}

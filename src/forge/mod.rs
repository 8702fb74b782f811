//! Forges: where tasks come from and where their logs and results go.
//!
//! The daemon talks to every forge through the port below, in neutral
//! terms: it never sees a forge's messages, wire types or quirks.
//! - [`Forge`]: one configured forge. [`Forge::connect`] obtains the
//!   runner's credentials (registering when needed) and declares the
//!   runner; [`Forge::connect_offline`] serves with credentials known
//!   without the forge while it is unreachable.
//! - [`Session`]: a connected forge. It hands out a [`Poller`], which
//!   fetches [`Assignment`]s within a capacity and keeps whatever state the
//!   forge's fetch protocol needs between calls; and it resumes the report
//!   of a task a previous run left, from the opaque bytes
//!   [`TaskReport::save`] returned ([`Session::resume`]).
//! - [`TaskReport`]: one task's report: the [`EventSink`] the job writes
//!   to, the upload loop (which cancels the job when the forge cancels the
//!   task), the final result, and the bytes to save for a restart.
//!
//! Each task's log lines wait in a [`LogSpool`] the daemon provides (the
//! state database) until the forge acknowledged them.
//!
//! `forgejo` implements the port for the Forgejo/Gitea runner protocol
//! (Connect RPC); [`open`] picks the implementation for a configured forge.

pub mod forgejo;
pub mod github;
#[cfg(test)]
pub(crate) mod scripted;
mod spool;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use tokio_util::sync::CancellationToken;

use crate::config::{ForgeConfig, ImageConfig};
use crate::events::{Conclusion, EventSink};
use crate::job::JobSpec;
use crate::secret::Secret;

pub use spool::{LogLine, LogSpool, MemorySpool, SpoolError};

/// The version string this runner sends to forges and writes into the
/// first log row: `solstice-<crate version>`.
pub const RUNNER_VERSION: &str = concat!("solstice-", env!("CARGO_PKG_VERSION"));

/// The port's implementation for `forge`: GitHub for `kind = "github"`,
/// else Forgejo. `max_job_timeout` caps every job's run time (the daemon's
/// `max_job_timeout`); GitHub registers runners for each of `images`.
pub fn open(
    forge: &ForgeConfig,
    images: &BTreeMap<String, ImageConfig>,
    max_job_timeout: Duration,
) -> Result<Arc<dyn Forge>, Failure> {
    if forge.github.is_some() {
        let f = github::session::Github::new(forge, images, max_job_timeout)
            .map_err(|e| Failure::new(FailureKind::Fatal, e))?;
        return Ok(Arc::new(f));
    }
    let f = forgejo::Forgejo::new(forge, max_job_timeout)
        .map_err(|e| Failure::new(FailureKind::Fatal, e))?;
    Ok(Arc::new(f))
}

/// What kind of failure a forge call ended in: what the daemon does next
/// depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The forge rejects the runner's credentials.
    Unauthenticated,
    /// The forge will never take reports for this task: it was deleted
    /// (with its run or repository) or is not this runner's. The report
    /// gave it up: the job was cancelled and what was not sent dropped.
    TaskGone,
    /// Worth trying again later (unreachable, a transient error, or a final
    /// report that did not get through in its time budget).
    Transient,
    /// Needs the operator.
    Fatal,
}

/// A failed forge call: its kind, and the forge's own error, whose text
/// (and `#[source]` chain) it shows unchanged.
#[derive(Clone)]
pub struct Failure {
    kind: FailureKind,
    error: Arc<dyn std::error::Error + Send + Sync + 'static>,
}

impl Failure {
    pub fn new(kind: FailureKind, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Failure {
            kind,
            error: Arc::new(error),
        }
    }

    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// Worth trying again later.
    pub fn is_retryable(&self) -> bool {
        self.kind == FailureKind::Transient
    }

    pub fn is_unauthenticated(&self) -> bool {
        self.kind == FailureKind::Unauthenticated
    }

    pub fn is_task_gone(&self) -> bool {
        self.kind == FailureKind::TaskGone
    }
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failure")
            .field("kind", &self.kind)
            .field("error", &self.error)
            .finish()
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// A runner's credentials with one forge, as the daemon keeps them between
/// starts. `Debug` never shows the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerCredentials {
    /// The forge URL they were registered at.
    pub url: String,
    /// The runner's identity at the forge.
    pub uuid: String,
    pub token: Secret,
    /// The forge's number for the runner (0 when unknown).
    pub runner_id: i64,
    /// The labels last declared (or registered) with the forge.
    pub declared_labels: Vec<String>,
}

/// A [`Forge::connect`] that went through.
pub struct Connected {
    pub session: Arc<dyn Session>,
    pub credentials: RunnerCredentials,
    /// `credentials` differ from the saved ones: save them.
    pub changed: bool,
}

/// One configured forge.
#[async_trait::async_trait]
pub trait Forge: Send + Sync {
    /// Obtains the runner's credentials (registering when needed) and
    /// declares the runner (version, labels). `saved` is what an earlier
    /// start saved from [`Connected::credentials`].
    async fn connect(&self, saved: Option<RunnerCredentials>) -> Result<Connected, Failure>;

    /// A session with the credentials known without asking the forge (from
    /// a file, or saved ones registered at the same address), for serving
    /// while the forge is unreachable; `None` when the runner still has to
    /// register. [`Forge::connect`] declares it once the forge answers.
    fn connect_offline(&self, saved: Option<&RunnerCredentials>) -> Option<Arc<dyn Session>>;
}

/// A forge the runner is connected to.
#[async_trait::async_trait]
pub trait Session: Send + Sync {
    /// A fetcher of new tasks, holding what the forge's fetch protocol keeps
    /// between calls. One per poll loop.
    fn poller(&self) -> Box<dyn Poller>;

    /// The report of a task a previous run left unreported, continued from
    /// what it saved.
    fn resume(&self, task: ResumedTask) -> Arc<dyn TaskReport>;

    /// The daemon stops (after its drain): a forge that keeps a session
    /// for the runner ends it here. Forgejo keeps none.
    async fn disconnect(&self) {}
}

/// Fetches new tasks.
#[async_trait::async_trait]
pub trait Poller: Send {
    /// Asks the forge for at most `capacity` tasks (it may send more; the
    /// caller waits for slots then). Bounded by the forge's fetch timeout;
    /// a caller must not drop it midway, or tasks the forge assigned in it
    /// would be lost.
    async fn fetch(&mut self, capacity: u32) -> Result<Vec<Assignment>, Failure>;

    /// The host has no free slot now (the poll loop waits for one before
    /// the next [`Poller::fetch`]): a forge that keeps runners waiting for
    /// jobs (GitHub) withdraws its idle ones here. Forgejo keeps none.
    async fn no_capacity(&mut self) {}
}

/// A task the forge assigned to this runner.
pub struct Assignment {
    /// The forge's number for the task.
    pub task_id: i64,
    /// When the task arrived (before its translation): the start of the
    /// latency figures.
    pub received: std::time::Instant,
    /// The job's display name (`(unreadable)` when the task cannot be read).
    pub job_name: String,
    /// `owner/name` (empty when unknown).
    pub repository: String,
    /// Steps of the job as the forge counts them.
    pub step_count: usize,
    /// The job to run, or why the task cannot run.
    pub job: Result<AssignedJob, Unrunnable>,
    /// Starts the task's report.
    pub report: ReportStarter,
}

/// The job of an [`Assignment`], ready to be placed and run.
#[derive(Debug, Clone)]
pub struct AssignedJob {
    pub spec: JobSpec,
    /// The job's evaluated `runs-on` labels.
    pub runs_on: Vec<String>,
    /// The image the forge already chose (GitHub: the image of the runner
    /// the job reached); `None`: placed by `runs_on`.
    pub image: Option<String>,
    /// Remarks for the task log (for example a missing default-actions URL).
    pub notes: Vec<String>,
    /// Where the forge publishes its users' public SSH keys (for debug
    /// SSH into a failed job's VM); `None`: this forge does not.
    pub user_keys: Option<Arc<dyn UserKeys>>,
}

/// A forge's published public SSH keys of its users: who may log into a
/// failed job's VM kept for debugging is decided by the keys the job's
/// own forge publishes for the job's actor, never another forge's.
#[async_trait::async_trait]
pub trait UserKeys: Send + Sync + std::fmt::Debug {
    /// The public keys `user` registered on the forge, as OpenSSH lines
    /// (`ssh-ed25519 AAAA… [comment]`). With `user_id` (the forge's
    /// number for the account, from the task), the name must still belong
    /// to that account: a renamed or re-registered name is refused
    /// ([`UserKeysError::Renamed`]).
    async fn public_keys(
        &self,
        user: &str,
        user_id: Option<&str>,
    ) -> Result<Vec<String>, UserKeysError>;

    /// The forge's address, for messages (`https://codeberg.org`).
    fn forge_url(&self) -> &str;
}

/// Why a user's keys could not be had.
#[derive(Debug, thiserror::Error)]
pub enum UserKeysError {
    #[error("the forge has no user {user}")]
    NoSuchUser { user: String },
    #[error("the forge's user {user} is account {found}, not the job's account {expected}")]
    Renamed {
        user: String,
        expected: String,
        found: String,
    },
    #[error("the forge did not answer the key lookup: {0}")]
    Forge(String),
}

/// Why an assigned task cannot run.
#[derive(Debug)]
pub struct Unrunnable {
    pub error: Box<dyn std::error::Error + Send + Sync + 'static>,
    /// What the forge sent, as lines for the task log.
    pub payload: Vec<String>,
}

impl Unrunnable {
    /// The text for the task log: the error and its causes, then the payload.
    pub fn log_text(&self) -> String {
        let mut text = format!(
            "Cannot run this task: {}",
            crate::errors::Chain(&*self.error)
        );
        for line in &self.payload {
            text.push('\n');
            text.push_str(line);
        }
        text
    }
}

/// What starts a report: given the task's spool, returns its report.
type StartReport = dyn FnOnce(Arc<dyn LogSpool>) -> Arc<dyn TaskReport> + Send;

/// Starts an assignment's report, once the daemon gave it a spool.
pub struct ReportStarter(Box<StartReport>);

impl ReportStarter {
    pub fn new(
        start: impl FnOnce(Arc<dyn LogSpool>) -> Arc<dyn TaskReport> + Send + 'static,
    ) -> Self {
        ReportStarter(Box::new(start))
    }

    /// The report, which writes the task's "set up" lines at once.
    pub fn start(self, spool: Arc<dyn LogSpool>) -> Arc<dyn TaskReport> {
        (self.0)(spool)
    }
}

impl std::fmt::Debug for ReportStarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReportStarter")
    }
}

/// A task a previous run left unreported, for [`Session::resume`].
pub struct ResumedTask {
    pub task_id: i64,
    /// What [`TaskReport::save`] returned last (`None` when nothing was
    /// saved; bytes that cannot be read count as nothing).
    pub saved: Option<Vec<u8>>,
    /// Steps of the job as the forge counts them.
    pub step_count: usize,
    /// Lines the spool holds in all (the index of the next one).
    pub spooled: u64,
    /// Lines the forge acknowledged.
    pub acked: u64,
    pub spool: Arc<dyn LogSpool>,
}

/// One task's report to its forge. The job writes to it as an
/// [`EventSink`]; [`TaskReport::run`] uploads while the job runs.
#[async_trait::async_trait]
pub trait TaskReport: EventSink + Send + Sync {
    /// Reports the task while it runs and, once [`TaskReport::close`] was
    /// called, sends the final report. Cancels `cancel_job` when the forge
    /// cancels the task, rejects the credentials or no longer has the task.
    /// Returns when the forge has the whole report.
    async fn run(&self, cancel_job: CancellationToken) -> Result<(), Failure>;

    /// Sends the final report (closing the task as failed if it was not
    /// closed); after a [`FailureKind::Transient`] failure, call it again:
    /// it resumes where it stopped.
    async fn finish(&self, cancel_job: &CancellationToken) -> Result<(), Failure>;

    /// Ends the job: its conclusion, its outputs (sent only on success) and
    /// a last log line. Later calls are ignored.
    fn close(
        &self,
        conclusion: Conclusion,
        outputs: &IndexMap<String, String>,
        error: Option<&str>,
    );

    /// The forge no longer has the task ([`FailureKind::TaskGone`]):
    /// nothing of it is sent again.
    fn is_gone(&self) -> bool;

    /// The result the forge gets, once closed: the conclusion, or
    /// cancelled when the forge stopped the task.
    fn result(&self) -> Option<Conclusion>;

    /// Opaque bytes from which [`Session::resume`] continues the report
    /// after a restart (the steps and their results so far).
    fn save(&self) -> Vec<u8>;
}

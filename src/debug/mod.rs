//! Debug SSH into a failed job's VM (opt-in; `docs/debug-ssh.md`).
//!
//! When a job that asked for it fails, and the operator allows it for the
//! job's forge, repository and event ([`policy`]), the daemon keeps the
//! job's VM for a bounded time instead of destroying it. The person who
//! triggered the job logs in through the daemon's own SSH gateway
//! ([`gateway`]), authenticated by the public keys the job's forge
//! publishes for them; the gateway proxies the session into the guest with
//! the job's in-memory key, so user keys never enter the guest.
//!
//! [`DebugHolds`] is the registry of held VMs ("windows"): at most one per
//! repository, at most `max_held` on the host, each destroyed when its
//! time is up (never renewed), on `done`, or when the daemon stops.

pub mod gateway;
pub mod hostkey;
pub mod policy;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use russh::keys::PublicKey;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::DebugSshConfig;
use crate::metrics::Metrics;
use crate::ssh::SshTarget;
use crate::vm::Vm;

/// Why a window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its time was up.
    Expired,
    /// A user ran `done <id>`.
    Released,
    /// The daemon stops.
    Shutdown,
}

impl EndReason {
    /// The metric event and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Released => "released",
            EndReason::Shutdown => "shutdown",
        }
    }

    /// What a user still connected is told as the session closes.
    pub fn farewell(self, id: &str) -> String {
        match self {
            EndReason::Expired => {
                format!("The debug window of job {id} is over; its VM is destroyed now.")
            }
            EndReason::Released => {
                format!("Job {id} was released with `done`; its VM is destroyed now.")
            }
            EndReason::Shutdown => {
                format!("The runner stops; the VM of job {id} is destroyed now.")
            }
        }
    }
}

/// Why a failed job's VM is not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotHeld {
    /// Another failed job of the same repository holds its VM (`state`
    /// says until when, or that it is being set up or destroyed).
    #[error(
        "another failed job of {repository} is being debugged ({state}); one VM per repository is kept at a time"
    )]
    RepositoryBusy { repository: String, state: String },
    /// The daemon stops.
    #[error("the runner is stopping")]
    Stopping,
    /// The host keeps as many VMs as it may.
    #[error("this runner already keeps {max} VM(s) for debugging (`debug_ssh.max_held`)")]
    HostFull { max: u32 },
}

/// The slot of a window about to be armed: holds the repository and a
/// place under the host's maximum until [`DebugHolds::arm`] or drop.
pub struct Reservation {
    holds: DebugHolds,
    repository_key: String,
    armed: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.armed {
            let mut s = self.holds.state();
            s.reserved.remove(&self.repository_key);
        }
    }
}

/// What arming a window needs.
pub struct ArmRequest {
    /// The job's id (what users `connect` to).
    pub id: String,
    pub forge: String,
    /// `owner/name`.
    pub repository: String,
    /// The forge user whose keys are accepted.
    pub actor: String,
    /// That user's keys, as the forge publishes them.
    pub keys: Vec<PublicKey>,
    /// How long the VM is kept, from now.
    pub ttl: Duration,
    /// The job's VM.
    pub vm: Vm,
    /// How to log into the guest (the job's in-memory key, the pinned host key).
    pub target: SshTarget,
    /// Called once the VM is destroyed (`true`) or its destruction failed
    /// (`false`: keep its records for the next start's reconcile); the
    /// daemon forgets its records and frees its capacity.
    pub on_end: Box<dyn FnOnce(EndReason, bool) + Send>,
}

/// A held VM, as `solstice status` and logs show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldView {
    pub id: String,
    pub forge: String,
    pub repository: String,
    pub actor: String,
    pub expires_at: SystemTime,
}

/// What the gateway gets for an authorised `connect <id>`.
#[derive(Clone)]
pub struct Access {
    pub id: String,
    pub actor: String,
    pub expires_at: SystemTime,
    /// Where the guest's SSH server is, with the job's key.
    pub target: SshTarget,
    /// Cancelled when the window ends: close the session with
    /// [`Access::farewell`].
    pub ended: CancellationToken,
    reason: Arc<Mutex<Option<EndReason>>>,
}

impl Access {
    /// The line for a session that the window's end closes.
    pub fn farewell(&self) -> String {
        let reason = self
            .reason
            .lock()
            .ok()
            .and_then(|r| *r)
            .unwrap_or(EndReason::Expired);
        reason.farewell(&self.id)
    }
}

/// Why the gateway refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No window has this id (never armed, or over).
    #[error("no failed job {0} is kept for debugging on this runner (its window may be over)")]
    NoSuchJob(String),
    /// The key is not one of the job's actor's keys.
    #[error("your key is not one of the keys that {actor} registered on the forge")]
    NotTheActor { actor: String },
}

/// One held VM.
struct Window {
    view: HoldView,
    keys: Vec<PublicKey>,
    target: SshTarget,
    ended: CancellationToken,
    reason: Arc<Mutex<Option<EndReason>>>,
}

#[derive(Default)]
struct State {
    /// [`DebugHolds::shutdown`] began: nothing more is kept.
    closed: bool,
    /// Repository key → the id holding it (empty while only reserved).
    reserved: BTreeMap<String, String>,
    windows: BTreeMap<String, Window>,
}

/// The host's held VMs. Cheap to clone.
#[derive(Clone)]
pub struct DebugHolds {
    inner: Arc<Inner>,
}

struct Inner {
    settings: DebugSshConfig,
    /// The gateway's host key fingerprint (`SHA256:…`), printed in job logs.
    fingerprint: String,
    metrics: Metrics,
    state: Mutex<State>,
    tasks: TaskTracker,
}

impl DebugHolds {
    pub fn new(settings: DebugSshConfig, fingerprint: String, metrics: Metrics) -> DebugHolds {
        DebugHolds {
            inner: Arc::new(Inner {
                settings,
                fingerprint,
                metrics,
                state: Mutex::new(State::default()),
                tasks: TaskTracker::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The host's `[debug_ssh]`.
    pub fn settings(&self) -> &DebugSshConfig {
        &self.inner.settings
    }

    /// The gateway's host key fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Takes the repository's place and one of the host's, or says why not.
    pub fn reserve(&self, forge: &str, repository: &str) -> Result<Reservation, NotHeld> {
        let key = format!("{forge}\n{repository}");
        let mut s = self.state();
        if s.closed {
            return Err(NotHeld::Stopping);
        }
        if let Some(holder) = s.reserved.get(&key) {
            let state = match s.windows.get(holder) {
                Some(w) => format!(
                    "job {holder}, until {}",
                    crate::civil::utc_seconds(w.view.expires_at)
                ),
                None if holder.is_empty() => "its VM is being set up for debugging".into(),
                None => format!("job {holder}, whose VM is being destroyed now"),
            };
            return Err(NotHeld::RepositoryBusy {
                repository: repository.to_owned(),
                state,
            });
        }
        let max = self.inner.settings.max_held;
        if s.reserved.len() >= usize::try_from(max).unwrap_or(usize::MAX) {
            return Err(NotHeld::HostFull { max });
        }
        s.reserved.insert(key.clone(), String::new());
        drop(s);
        Ok(Reservation {
            holds: self.clone(),
            repository_key: key,
            armed: false,
        })
    }

    /// Opens the window: the VM is kept until `ttl` from now, then
    /// destroyed (or earlier on `done` or shutdown). Returns the expiry, or
    /// `None` when shutdown began meanwhile: the VM is then destroyed at
    /// once (and `on_end` called) all the same.
    pub fn arm(&self, mut reservation: Reservation, req: ArmRequest) -> Option<SystemTime> {
        let ArmRequest {
            id,
            forge,
            repository,
            actor,
            keys,
            ttl,
            vm,
            target,
            on_end,
        } = req;
        let expires_at = SystemTime::now() + ttl;
        let deadline = tokio::time::Instant::now() + ttl;
        let ended = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let repository_key = reservation.repository_key.clone();
        reservation.armed = true;
        let closed;
        {
            let mut s = self.state();
            closed = s.closed;
            if closed {
                // Shutdown has listed the windows it ends: end this one too.
                if let Ok(mut r) = reason.lock() {
                    *r = Some(EndReason::Shutdown);
                }
                ended.cancel();
            }
            s.reserved.insert(repository_key.clone(), id.clone());
            s.windows.insert(
                id.clone(),
                Window {
                    view: HoldView {
                        id: id.clone(),
                        forge: forge.clone(),
                        repository: repository.clone(),
                        actor: actor.clone(),
                        expires_at,
                    },
                    keys,
                    target,
                    ended: ended.clone(),
                    reason: reason.clone(),
                },
            );
            self.inner.metrics.set_debug_held(s.windows.len());
        }
        drop(reservation);
        if !closed {
            self.inner.metrics.debug_event("armed");
            tracing::info!(job = %id, forge = %forge, repository = %repository, actor = %actor, ttl_secs = ttl.as_secs(), "debug SSH: failed job's VM kept");
        }
        let holds = self.clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    if let Ok(mut r) = reason.lock() {
                        r.get_or_insert(EndReason::Expired);
                    }
                }
                _ = ended.cancelled() => {}
            }
            let why = reason
                .lock()
                .ok()
                .and_then(|r| *r)
                .unwrap_or(EndReason::Expired);
            // Sessions still open close with the farewell.
            ended.cancel();
            {
                let mut s = holds.state();
                s.windows.remove(&id);
                holds.inner.metrics.set_debug_held(s.windows.len());
            }
            let destroyed = match vm.destroy().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "debug SSH: the kept VM's teardown reported an error; the next start cleans up");
                    false
                }
            };
            holds.state().reserved.remove(&repository_key);
            holds.inner.metrics.debug_event(why.as_str());
            tracing::info!(job = %id, reason = why.as_str(), "debug SSH: kept VM destroyed");
            on_end(why, destroyed);
        });
        (!closed).then_some(expires_at)
    }

    /// True when `key` belongs to some open window (the gateway's early check).
    pub fn knows_key(&self, key: &PublicKey) -> bool {
        self.state()
            .windows
            .values()
            .any(|w| w.keys.iter().any(|k| same_key(k, key)))
    }

    /// The window `id`, for a user authenticated with `key`.
    pub fn access(&self, id: &str, key: &PublicKey) -> Result<Access, Refusal> {
        let s = self.state();
        let w = s
            .windows
            .get(id)
            .filter(|w| !w.ended.is_cancelled())
            .ok_or_else(|| Refusal::NoSuchJob(id.to_owned()))?;
        if !w.keys.iter().any(|k| same_key(k, key)) {
            return Err(Refusal::NotTheActor {
                actor: w.view.actor.clone(),
            });
        }
        Ok(Access {
            id: id.to_owned(),
            actor: w.view.actor.clone(),
            expires_at: w.view.expires_at,
            target: w.target.clone(),
            ended: w.ended.clone(),
            reason: w.reason.clone(),
        })
    }

    /// `done <id>`: ends the window now (the VM is destroyed).
    pub fn release(&self, id: &str, key: &PublicKey) -> Result<(), Refusal> {
        let access = self.access(id, key)?;
        end(&access.reason, &access.ended, EndReason::Released);
        Ok(())
    }

    /// The held VMs, soonest expiry first.
    pub fn list(&self) -> Vec<HoldView> {
        let mut v: Vec<HoldView> = self
            .state()
            .windows
            .values()
            .map(|w| w.view.clone())
            .collect();
        v.sort_by_key(|h| h.expires_at);
        v
    }

    /// Destroys every held VM and waits until they are gone.
    pub async fn shutdown(&self) {
        {
            let mut s = self.state();
            s.closed = true;
            for w in s.windows.values() {
                end(&w.reason, &w.ended, EndReason::Shutdown);
            }
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

fn end(reason: &Mutex<Option<EndReason>>, ended: &CancellationToken, why: EndReason) {
    if let Ok(mut r) = reason.lock() {
        r.get_or_insert(why);
    }
    ended.cancel();
}

/// Two public keys are the same key (algorithm and key material; comments
/// do not count).
pub fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    a.key_data() == b.key_data()
}

/// Parses the OpenSSH key lines a forge publishes; lines that are not keys
/// the gateway can check are skipped (returned as the second value, counted).
pub fn parse_keys(lines: &[String]) -> (Vec<PublicKey>, usize) {
    let mut keys = Vec::new();
    let mut skipped = 0;
    for line in lines {
        match PublicKey::from_openssh(line.trim()) {
            Ok(k) => keys.push(k),
            Err(_) => skipped += 1,
        }
    }
    (keys, skipped)
}

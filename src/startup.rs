//! What the commands do before their work: find and load the configuration
//! (saying which file is used) and choose the accelerator. Shared by the
//! command-line edge (`exec`, `status`, `doctor`), `bench` and the daemon;
//! failures are typed so that each caller decides its exit status.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::config::SearchError;
use crate::store::{KvmFailureRow, Store};
use crate::vm::accel::{AccelError, Accelerator, KvmFailure};

/// Why a command could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// No configuration file was found (or `$SOLSTICE_CONFIG` names none).
    #[error(transparent)]
    NoConfig(SearchError),
    /// The file has problems; they were printed on stderr.
    #[error("{} is not valid (see above)", .0.display())]
    InvalidConfig(PathBuf),
    /// The configured accelerator cannot be used.
    #[error(transparent)]
    Accel(AccelError),
    /// The probe task died.
    #[error("accelerator probe failed: {0}")]
    Probe(tokio::task::JoinError),
}

/// Where a command says which config file it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigNotice {
    /// With the job's progress lines (`exec`).
    Stdout,
    /// Where stdout is data (`status`, `bench`) or the log goes to stderr (`run`).
    Stderr,
}

/// Finds and loads the configuration (see [`crate::config::find_config`]),
/// prints `[solstice] config: PATH` on stderr, and prints every problem.
pub fn load_config(explicit: Option<&Path>) -> Result<(PathBuf, Config), StartupError> {
    load_config_to(explicit, ConfigNotice::Stderr)
}

/// [`load_config`], saying which file was used on `notice`.
pub fn load_config_to(
    explicit: Option<&Path>,
    notice: ConfigNotice,
) -> Result<(PathBuf, Config), StartupError> {
    let path = crate::config::find_config(explicit)
        .map_err(StartupError::NoConfig)?
        .path;
    let shown = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
    match notice {
        ConfigNotice::Stdout => println!("[solstice] config: {}", shown.display()),
        ConfigNotice::Stderr => eprintln!("[solstice] config: {}", shown.display()),
    }
    match crate::config::load(&path) {
        Ok(c) => Ok((path, c)),
        Err(errors) => {
            eprintln!("{errors}");
            Err(StartupError::InvalidConfig(path))
        }
    }
}

/// Resolves the accelerator without blocking the runtime; prints the choice.
/// A KVM failure recorded in the state database counts, and a fallback in
/// this run is recorded there (when the database is this user's, see
/// [`state_for_accel`]).
pub async fn resolve_accel(config: &Config) -> Result<Accelerator, StartupError> {
    let config = config.clone();
    let resolved = tokio::task::spawn_blocking(move || {
        let (store, writable) = match state_for_accel(&config) {
            Some((store, writable)) => (Some(std::sync::Arc::new(store)), writable),
            None => (None, false),
        };
        let remembered = store.as_deref().and_then(remembered_kvm_failure);
        Accelerator::resolve(&config.qemu, remembered.as_ref()).map(|a| match store {
            Some(store) if writable => {
                a.with_listener(Box::new(move |f| record_kvm_failure(&store, f)))
            }
            _ => a,
        })
    })
    .await;
    match resolved {
        Ok(Ok(a)) => {
            println!("[solstice] accelerator: {}", a.describe());
            Ok(a)
        }
        Ok(Err(e)) => Err(StartupError::Accel(e)),
        Err(e) => Err(StartupError::Probe(e)),
    }
}

/// The state database for the KVM failure record, and whether this process
/// may write to it. The database belongs to whoever runs the daemon: it is
/// opened for writing (and created) only when it (or, before it exists, the
/// state directory) belongs to this user; another user's database is only
/// read, so that `sudo solstice exec` never leaves a root-owned file the
/// daemon's user cannot open. `None` (at debug level) when there is none.
fn state_for_accel(config: &Config) -> Option<(crate::store::Store, bool)> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let db = crate::store::db_path(&config.daemon.state_dir);
    let mine = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.uid() == me);
    let opened = if db.exists() {
        if mine(&db) {
            crate::store::Store::open(&db).map(|s| (s, true))
        } else {
            crate::store::Store::open_read_only(&db).map(|s| (s, false))
        }
    } else if mine(&config.daemon.state_dir) {
        crate::store::Store::open(&db).map(|s| (s, true))
    } else {
        return None;
    };
    match opened {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(error = %e, "no state database for the KVM failure record");
            None
        }
    }
}

/// The KVM failure the state database remembers, if any.
pub fn remembered_kvm_failure(store: &Store) -> Option<KvmFailure> {
    match store.kvm_failure() {
        Ok(r) => r.map(|r| KvmFailure {
            reason: r.reason,
            fingerprint: r.fingerprint,
            at_unix: r.at_unix,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the KVM failure record; probing KVM again");
            None
        }
    }
}

/// Remembers a KVM failure in the state database, so that later runs on
/// this host (the daemon after a restart, every `solstice exec`) start under
/// TCG without paying for a stuck KVM boot again.
pub fn record_kvm_failure(store: &Store, f: &KvmFailure) {
    let row = KvmFailureRow {
        reason: f.reason.clone(),
        fingerprint: f.fingerprint.clone(),
        at_unix: f.at_unix,
    };
    if let Err(e) = store.record_kvm_failure(&row) {
        tracing::warn!(error = %e, "cannot record the KVM failure; the next start probes KVM again");
    }
}

//! The state database: runner credentials, jobs, VM resources, VMs kept for
//! debug SSH, warm guests and spooled log rows, in one SQLite file
//! (`<state_dir>/solstice.db`, WAL mode).
//!
//! The daemon records every job and every VM resource *before* it exists, so
//! that a restarted daemon can find what a crashed (even SIGKILLed) run left
//! behind: [`reconcile_vms`] kills and removes leftover VMs, and
//! [`Store::unreported_finished_jobs`] lists outcomes the forge never heard of.
//!
//! The file is ours alone: it carries [`APPLICATION_ID`] and its schema version
//! in `PRAGMA user_version`. A foreign, corrupt or newer file is refused with a
//! [`StoreError`]; it is never reset or overwritten.
//!
//! [`Store`] is `Send + Sync` (one connection behind a mutex). Every operation
//! is short (one statement or one small transaction), so async code may call it
//! directly.

mod credentials;
mod holds;
mod jobs;
mod kvm;
mod logs;
mod reconcile;
mod schema;
mod state_dir;
mod vms;
mod warm;

pub use credentials::CredentialsRow;
pub use holds::HoldRow;
pub use jobs::{JobRow, JobState, JobTimings, NewJob};
pub use kvm::KvmFailureRow;
pub use logs::LogRowData;
pub use schema::SCHEMA_VERSION;
pub use state_dir::{StateDirError, check_state_dir, current_uid, user_name};
pub use vms::VmRow;
pub use warm::{WarmKind, WarmRow};

pub use reconcile::{KilledProcess, ReconcileReport, reconcile_vms, reconcile_warm};

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use schema::{check_header, check_identity, migrate, tighten_modes};

/// File name of the state database inside `daemon.state_dir`.
pub const DB_FILE: &str = "solstice.db";

/// `PRAGMA application_id` of a Solstice state database ("SOLS" in ASCII).
pub const APPLICATION_ID: i32 = 0x534F_4C53;

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The state database path for a state directory.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join(DB_FILE)
}

/// Errors of the state database. Each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Read-only open of a database that does not exist (yet).
    #[error("No state database at {}; the daemon creates it when it first starts", path.display())]
    Missing { path: PathBuf },
    /// A file system operation on the database or its directory failed.
    #[error("Cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not an SQLite database at all.
    #[error(
        "{} is not an SQLite database (corrupt, or another kind of file); move it away to start with empty state, or restore a backup",
        path.display()
    )]
    NotSqlite { path: PathBuf },
    /// An SQLite database of another program.
    #[error(
        "{} is not a Solstice state database (SQLite application_id {found:#x}); point daemon.state_dir elsewhere or move the file away",
        path.display()
    )]
    Foreign { path: PathBuf, found: i32 },
    /// Written by a newer Solstice.
    #[error(
        "{} has schema version {found}, newer than this Solstice knows ({supported}); run a newer Solstice or restore a backup",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// Read-only open of a database an older Solstice wrote.
    #[error(
        "{} has schema version {found}, older than this Solstice reads ({supported}); start the daemon once to upgrade it",
        path.display()
    )]
    TooOld {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// SQLite found damaged pages.
    #[error("{} is damaged; move it away to start with empty state, or restore a backup", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// Any other SQLite error.
    #[error("Database error in {} while trying to {what}", path.display())]
    Sqlite {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// An update named a job that is not in the database.
    #[error("No job {id} in the state database")]
    UnknownJob { id: String },
    /// An update named a warm guest that is not in the database.
    #[error("No warm guest {id} in the state database")]
    UnknownWarm { id: String },
    /// A stored value this binary cannot interpret.
    #[error("Invalid value in {}: {detail}; was the file changed by another program?", path.display())]
    BadValue { path: PathBuf, detail: String },
}

/// The state database. See the module documentation.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the state database read-write: parent
    /// directories are created (mode 0700), a new file gets mode 0600, and a
    /// looser existing file of ours is tightened to 0600. The schema is
    /// migrated to [`SCHEMA_VERSION`]. Foreign, corrupt and newer files are
    /// refused.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|source| StoreError::Io {
                    what: "create the state directory",
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
        // Create the file ourselves: SQLite would create it world-readable.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(StoreError::Io {
                    what: "create",
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        tighten_modes(path)?;
        check_header(path)?;

        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_err(path, "open the database"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql_err(path, "set the busy timeout"))?;
        // Identify the file before changing anything in it.
        check_identity(&conn, path, false)?;
        let mode = switch_to_wal(&conn).map_err(sql_err(path, "switch to WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "the state database is not in WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql_err(path, "set synchronous=NORMAL"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql_err(path, "enable foreign keys"))?;
        migrate(&mut conn, path)?;
        // SQLite created -wal/-shm with the main file's mode; make sure anyway.
        tighten_modes(path)?;
        Ok(Store {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// Opens an existing state database read-only (for `solstice status`;
    /// works while the daemon writes, thanks to WAL). Never creates anything
    /// but SQLite's shared-memory file. The schema must be exactly
    /// [`SCHEMA_VERSION`].
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        if !check_header(path)? {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_err(path, "open the database"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql_err(path, "set the busy timeout"))?;
        check_identity(&conn, path, true)?;
        Ok(Store {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction open
        // (rusqlite rolls back on drop), so the connection is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        sql_err(&self.path, what)
    }

    fn bad(&self, detail: String) -> StoreError {
        StoreError::BadValue {
            path: self.path.clone(),
            detail,
        }
    }
}

/// Switches `conn` to WAL mode and returns the mode SQLite reports. Changing
/// the journal mode needs an exclusive lock and SQLite answers "database is
/// locked" at once, without its busy handler, while another connection
/// holds one (two processes opening a new state directory together), so
/// this waits for the lock itself, up to [`BUSY_TIMEOUT`].
pub fn switch_to_wal(conn: &Connection) -> rusqlite::Result<String> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)) {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

fn sql_err(path: &Path, what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => StoreError::NotSqlite { path },
        Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt { path, source },
        _ => StoreError::Sqlite { path, what, source },
    }
}

fn clamp_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn split_time(t: SystemTime) -> (i64, i64) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        i64::from(d.subsec_nanos()),
    )
}

fn join_time(secs: i64, nanos: i64) -> SystemTime {
    UNIX_EPOCH
        + Duration::new(
            u64::try_from(secs).unwrap_or(0),
            u32::try_from(nanos.clamp(0, 999_999_999)).unwrap_or(0),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let (s, n) = split_time(t);
        assert_eq!(join_time(s, n), t);
        assert_eq!(
            from_ms(to_ms(t)),
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
        assert_eq!(split_time(UNIX_EPOCH - Duration::from_secs(5)), (0, 0));
    }

    /// Two processes (`exec` and the daemon, say) may open a new state
    /// directory at the same moment; neither may fail for it.
    #[test]
    fn opening_a_new_database_from_many_connections_at_once_succeeds() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state").join("solstice.db");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let openers: Vec<_> = (0..4)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        Store::open(&path).map(|_| ())
                    })
                })
                .collect();
            for o in openers {
                o.join().unwrap().unwrap();
            }
        }
    }

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }
}

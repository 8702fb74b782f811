//! The state database: runner credentials, jobs, VM resources and spooled log
//! rows, in one SQLite file (`<state_dir>/solstice.db`, WAL mode).
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

mod reconcile;
mod state_dir;

pub use state_dir::{StateDirError, check_state_dir};

pub use reconcile::{
    KilledProcess, ReconcileReport, daemon_job_id, is_daemon_job_id, reconcile_vms,
};

use std::ffi::OsStr;
use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::secret::Secret;

/// File name of the state database inside `daemon.state_dir`.
pub const DB_FILE: &str = "solstice.db";

/// `PRAGMA application_id` of a Solstice state database ("SOLS" in ASCII).
pub const APPLICATION_ID: i32 = 0x534F_4C53;

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, in order: entry `i` turns version `i` into `i + 1`.
/// Never edit a released entry; append a new one.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    r#"
CREATE TABLE credentials (
    forge           TEXT PRIMARY KEY NOT NULL,
    url             TEXT NOT NULL,
    uuid            TEXT NOT NULL,
    token           TEXT NOT NULL,
    runner_id       INTEGER NOT NULL,
    declared_labels TEXT NOT NULL, -- JSON array of strings
    saved_at_ms     INTEGER NOT NULL
) STRICT;

CREATE TABLE jobs (
    id             TEXT PRIMARY KEY NOT NULL,
    forge          TEXT NOT NULL,
    task_id        INTEGER NOT NULL,
    job_name       TEXT NOT NULL,
    repository     TEXT NOT NULL,
    image          TEXT,
    state          TEXT NOT NULL,
    n_steps        INTEGER,
    result         TEXT,
    received_at_ms INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    reported       INTEGER NOT NULL DEFAULT 0,
    log_ack        INTEGER NOT NULL DEFAULT 0,
    provision_ms   INTEGER,
    boot_ms        INTEGER,
    ssh_ready_ms   INTEGER,
    first_step_ms  INTEGER,
    task_state     BLOB, -- the last runner.v1.TaskState sent (protobuf), for reports after a crash
    outputs        TEXT  -- the job's outputs (JSON object) until the forge has them
) STRICT;
CREATE INDEX jobs_unfinished ON jobs(state) WHERE state <> 'finished';
CREATE INDEX jobs_received ON jobs(received_at_ms);
CREATE INDEX jobs_finished ON jobs(finished_at_ms) WHERE finished_at_ms IS NOT NULL;

CREATE TABLE vms (
    job_id         TEXT PRIMARY KEY NOT NULL REFERENCES jobs(id),
    dir            BLOB NOT NULL, -- path bytes
    pid            INTEGER,
    ssh_port       INTEGER,
    recorded_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE log_rows (
    job_id     TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    time_secs  INTEGER NOT NULL,
    time_nanos INTEGER NOT NULL,
    content    TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
) STRICT, WITHOUT ROWID;
"#,
    // Version 2: `auto`'s KVM failed a job's boot on this host (one row at most).
    r#"
CREATE TABLE kvm_failure (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    reason      TEXT NOT NULL,
    fingerprint TEXT NOT NULL, -- QEMU version and host kernel release when it happened
    at_unix     INTEGER NOT NULL
) STRICT;
"#,
];

/// The schema version this binary writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
const _: () = assert!(SCHEMA_VERSION >= 1);

/// A KVM failure as the state database keeps it (see
/// [`crate::vm::accel::KvmFailure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmFailureRow {
    pub reason: String,
    pub fingerprint: String,
    pub at_unix: i64,
}

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
    /// A stored value this binary cannot interpret.
    #[error("Invalid value in {}: {detail}; was the file changed by another program?", path.display())]
    BadValue { path: PathBuf, detail: String },
}

/// The lifecycle of a job in the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Fetched from the forge, nothing started yet.
    Received,
    /// The VM's files are being prepared.
    Provisioning,
    /// QEMU runs; waiting for SSH.
    Booting,
    /// Steps are running.
    Running,
    /// Steps are done; the final state is being sent.
    Reporting,
    /// Done; `result` is set.
    Finished,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 6] = [
        JobState::Received,
        JobState::Provisioning,
        JobState::Booting,
        JobState::Running,
        JobState::Reporting,
        JobState::Finished,
    ];

    /// The stored (and printed) name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Received => "received",
            JobState::Provisioning => "provisioning",
            JobState::Booting => "booting",
            JobState::Running => "running",
            JobState::Reporting => "reporting",
            JobState::Finished => "finished",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A forge's runner credentials, as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsRow {
    /// The forge URL they were registered at.
    pub url: String,
    pub uuid: String,
    pub token: Secret,
    pub runner_id: i64,
    /// The labels last declared (or registered) with the forge.
    pub declared_labels: Vec<String>,
}

/// A job as it is first recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// Our job id (see [`daemon_job_id`]); also the name of its VM directory.
    pub id: String,
    /// The forge name from the config.
    pub forge: String,
    /// The forge's task id.
    pub task_id: i64,
    pub job_name: String,
    /// `owner/name`.
    pub repository: String,
    /// The image chosen, once known.
    pub image: Option<String>,
    pub received_at: SystemTime,
}

/// Where a job's time went, in consecutive segments (milliseconds): the sum
/// of all four is the time from task receipt to the first step's start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobTimings {
    /// Task receipt to QEMU spawned (files prepared).
    pub provision_ms: Option<u64>,
    /// QEMU spawned to the guest's SSH port accepting connections.
    pub boot_ms: Option<u64>,
    /// Port open to an authenticated, ready SSH session.
    pub ssh_ready_ms: Option<u64>,
    /// SSH ready to the first step's start.
    pub first_step_ms: Option<u64>,
}

impl JobTimings {
    /// Task receipt to the first step, when every segment is known.
    pub fn to_first_step_ms(&self) -> Option<u64> {
        Some(
            self.provision_ms?
                .saturating_add(self.boot_ms?)
                .saturating_add(self.ssh_ready_ms?)
                .saturating_add(self.first_step_ms?),
        )
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: String,
    pub forge: String,
    pub task_id: i64,
    pub job_name: String,
    pub repository: String,
    pub image: Option<String>,
    pub state: JobState,
    /// Number of steps, once known.
    pub n_steps: Option<i64>,
    /// `success`, `failure`, `cancelled` or `skipped` once finished.
    pub result: Option<String>,
    pub received_at: SystemTime,
    /// Last change of any column through this API.
    pub updated_at: SystemTime,
    pub finished_at: Option<SystemTime>,
    /// The forge acknowledged the final state, or the job was given up
    /// ([`Store::give_up_job`]); either way it is never sent again.
    pub reported: bool,
    /// Log rows below this index were acknowledged by the forge.
    pub log_ack: i64,
    pub timings: JobTimings,
}

impl JobRow {
    /// Receipt to finish, for finished jobs.
    pub fn duration(&self) -> Option<Duration> {
        self.finished_at?.duration_since(self.received_at).ok()
    }
}

/// A VM resource: the per-job directory and, once spawned, QEMU's pid and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    pub job_id: String,
    /// The per-job directory (overlay, seed, sockets live in it).
    pub dir: PathBuf,
    pub pid: Option<u32>,
    pub ssh_port: Option<u16>,
    pub recorded_at: SystemTime,
}

/// One log line to spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRowData {
    /// Stored as seconds and nanoseconds since the epoch; earlier times are
    /// stored as the epoch.
    pub time: SystemTime,
    pub content: String,
}

/// The state database. See the module documentation.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

const JOB_COLUMNS: &str = "id, forge, task_id, job_name, repository, image, state, n_steps, result, \
     received_at_ms, updated_at_ms, finished_at_ms, reported, log_ack, \
     provision_ms, boot_ms, ssh_ready_ms, first_step_ms";

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
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(sql_err(path, "switch to WAL mode"))?;
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

    // ---- credentials ----

    /// The stored credentials of a forge (by its config name).
    pub fn get_credentials(&self, forge: &str) -> Result<Option<CredentialsRow>, StoreError> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(
                "SELECT url, uuid, token, runner_id, declared_labels FROM credentials WHERE forge = ?1",
            )
            .and_then(|mut st| {
                st.query_row([forge], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .optional()
            })
            .map_err(self.err("read credentials"))?;
        let Some((url, uuid, token, runner_id, labels)) = row else {
            return Ok(None);
        };
        let declared_labels: Vec<String> = serde_json::from_str(&labels)
            .map_err(|e| self.bad(format!("declared labels of forge {forge}: {e}")))?;
        Ok(Some(CredentialsRow {
            url,
            uuid,
            token: Secret::new(token),
            runner_id,
            declared_labels,
        }))
    }

    /// Stores (replacing) the credentials of a forge.
    pub fn save_credentials(&self, forge: &str, row: &CredentialsRow) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&row.declared_labels)
            .map_err(|e| self.bad(format!("declared labels: {e}")))?;
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO credentials (forge, url, uuid, token, runner_id, declared_labels, saved_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(forge) DO UPDATE SET url = excluded.url, uuid = excluded.uuid,
                 token = excluded.token, runner_id = excluded.runner_id,
                 declared_labels = excluded.declared_labels, saved_at_ms = excluded.saved_at_ms",
        )
        .and_then(|mut st| {
            st.execute(params![
                forge,
                row.url,
                row.uuid,
                row.token.expose(),
                row.runner_id,
                labels,
                to_ms(SystemTime::now())
            ])
        })
        .map_err(self.err("save credentials"))?;
        Ok(())
    }

    // ---- jobs ----

    /// Records a new job in state [`JobState::Received`].
    pub fn insert_job(&self, job: &NewJob) -> Result<(), StoreError> {
        let now = to_ms(SystemTime::now());
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO jobs (id, forge, task_id, job_name, repository, image, state,
                               received_at_ms, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .and_then(|mut st| {
            st.execute(params![
                job.id,
                job.forge,
                job.task_id,
                job.job_name,
                job.repository,
                job.image,
                JobState::Received.as_str(),
                to_ms(job.received_at),
                now
            ])
        })
        .map_err(self.err("record a job"))?;
        Ok(())
    }

    fn update_job(
        &self,
        id: &str,
        what: &'static str,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached(sql)
            .and_then(|mut st| st.execute(params))
            .map_err(self.err(what))?;
        if n == 0 {
            return Err(StoreError::UnknownJob { id: id.to_string() });
        }
        Ok(())
    }

    /// Moves a job to `state`. Use [`Store::finish_job`] to finish it.
    pub fn set_job_state(&self, id: &str, state: JobState) -> Result<(), StoreError> {
        self.update_job(
            id,
            "update a job's state",
            "UPDATE jobs SET state = ?2, updated_at_ms = ?3 WHERE id = ?1",
            params![id, state.as_str(), to_ms(SystemTime::now())],
        )
    }

    /// Records the image chosen for a job.
    pub fn set_job_image(&self, id: &str, image: &str) -> Result<(), StoreError> {
        self.update_job(
            id,
            "record a job's image",
            "UPDATE jobs SET image = ?2, updated_at_ms = ?3 WHERE id = ?1",
            params![id, image, to_ms(SystemTime::now())],
        )
    }

    /// Records the number of steps of a job.
    pub fn set_job_steps(&self, id: &str, n_steps: i64) -> Result<(), StoreError> {
        self.update_job(
            id,
            "record a job's steps",
            "UPDATE jobs SET n_steps = ?2, updated_at_ms = ?3 WHERE id = ?1",
            params![id, n_steps, to_ms(SystemTime::now())],
        )
    }

    /// Finishes a job with its result (`success`, `failure`, `cancelled`,
    /// `skipped`). It stays unreported until [`Store::mark_reported`].
    pub fn finish_job(
        &self,
        id: &str,
        result: &str,
        finished_at: SystemTime,
    ) -> Result<(), StoreError> {
        self.update_job(
            id,
            "finish a job",
            "UPDATE jobs SET state = 'finished', result = ?2, finished_at_ms = ?3, updated_at_ms = ?4
             WHERE id = ?1",
            params![id, result, to_ms(finished_at), to_ms(SystemTime::now())],
        )
    }

    /// Records the latency split of a job. `None` fields keep what was
    /// stored, so the segments may be recorded as they become known.
    pub fn record_timings(&self, id: &str, t: &JobTimings) -> Result<(), StoreError> {
        let ms = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        self.update_job(
            id,
            "record a job's timings",
            "UPDATE jobs SET provision_ms = COALESCE(?2, provision_ms),
                             boot_ms = COALESCE(?3, boot_ms),
                             ssh_ready_ms = COALESCE(?4, ssh_ready_ms),
                             first_step_ms = COALESCE(?5, first_step_ms),
                             updated_at_ms = ?6
             WHERE id = ?1",
            params![
                id,
                ms(t.provision_ms),
                ms(t.boot_ms),
                ms(t.ssh_ready_ms),
                ms(t.first_step_ms),
                to_ms(SystemTime::now())
            ],
        )
    }

    /// Notes that the forge acknowledged the job's final state.
    pub fn mark_reported(&self, id: &str) -> Result<(), StoreError> {
        self.update_job(
            id,
            "mark a job reported",
            "UPDATE jobs SET reported = 1, updated_at_ms = ?2 WHERE id = ?1",
            params![id, to_ms(SystemTime::now())],
        )
    }

    /// Gives a job up for good: the forge no longer has its task (deleted,
    /// or not this runner's), so nothing of it can ever be reported. The job
    /// is finished (`cancelled` unless it had a result), marked as given up
    /// (`reported = 2`, which [`Store::unreported_finished_jobs`] skips, so
    /// no later start sends it again), and its spooled log rows and outputs
    /// are deleted.
    pub fn give_up_job(&self, id: &str) -> Result<(), StoreError> {
        let now = to_ms(SystemTime::now());
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err("give a job up"))?;
        let n = tx
            .execute(
                "UPDATE jobs SET state = 'finished', result = COALESCE(result, 'cancelled'),
                        finished_at_ms = COALESCE(finished_at_ms, ?2), reported = 2,
                        outputs = NULL, updated_at_ms = ?2
                 WHERE id = ?1",
                params![id, now],
            )
            .map_err(self.err("give a job up"))?;
        if n == 0 {
            return Err(StoreError::UnknownJob { id: id.to_string() });
        }
        tx.execute("DELETE FROM log_rows WHERE job_id = ?1", [id])
            .map_err(self.err("give a job up"))?;
        tx.commit().map_err(self.err("give a job up"))
    }

    /// Whether [`Store::give_up_job`] gave this job up.
    pub fn is_given_up(&self, id: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        conn.prepare_cached("SELECT reported = 2 FROM jobs WHERE id = ?1")
            .and_then(|mut st| st.query_row([id], |r| r.get::<_, bool>(0)).optional())
            .map(|v| v.unwrap_or(false))
            .map_err(self.err("read whether a job was given up"))
    }

    fn query_jobs(
        &self,
        what: &'static str,
        tail: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<JobRow>, StoreError> {
        let conn = self.conn();
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs {tail}");
        let raw = conn
            .prepare_cached(&sql)
            .and_then(|mut st| {
                st.query_map(params, RawJob::from_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(self.err(what))?;
        drop(conn);
        raw.into_iter().map(|r| r.into_row(self)).collect()
    }

    /// One job by id.
    pub fn job(&self, id: &str) -> Result<Option<JobRow>, StoreError> {
        Ok(self
            .query_jobs("read a job", "WHERE id = ?1", [id])?
            .into_iter()
            .next())
    }

    /// Jobs not finished (any state but [`JobState::Finished`]), oldest first.
    pub fn unfinished_jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        self.query_jobs(
            "list unfinished jobs",
            "WHERE state <> 'finished' ORDER BY received_at_ms, id",
            [],
        )
    }

    /// Jobs in state [`JobState::Running`] exactly, oldest first.
    pub fn running_jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        self.query_jobs(
            "list running jobs",
            "WHERE state = 'running' ORDER BY received_at_ms, id",
            [],
        )
    }

    /// The `limit` most recently received jobs, finished or not, newest first.
    pub fn recent_jobs(&self, limit: usize) -> Result<Vec<JobRow>, StoreError> {
        self.query_jobs(
            "list recent jobs",
            "ORDER BY received_at_ms DESC, id DESC LIMIT ?1",
            [clamp_limit(limit)],
        )
    }

    /// The `limit` most recently finished jobs, newest first.
    pub fn recent_finished_jobs(&self, limit: usize) -> Result<Vec<JobRow>, StoreError> {
        self.query_jobs(
            "list finished jobs",
            "WHERE state = 'finished' ORDER BY finished_at_ms DESC, id DESC LIMIT ?1",
            [clamp_limit(limit)],
        )
    }

    /// Finished jobs whose final state the forge never acknowledged, oldest first.
    pub fn unreported_finished_jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        self.query_jobs(
            "list unreported jobs",
            "WHERE state = 'finished' AND reported = 0 ORDER BY finished_at_ms, id",
            [],
        )
    }

    /// Deletes finished, reported jobs (and their log rows) beyond the `keep`
    /// most recently finished. Jobs with a VM record are kept. Returns how
    /// many were deleted.
    pub fn prune_finished_jobs(&self, keep: usize) -> Result<usize, StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "DELETE FROM jobs WHERE state = 'finished' AND reported <> 0
               AND id NOT IN (SELECT job_id FROM vms)
               AND id NOT IN (SELECT id FROM jobs WHERE state = 'finished'
                              ORDER BY finished_at_ms DESC, id DESC LIMIT ?1)",
        )
        .and_then(|mut st| st.execute([clamp_limit(keep)]))
        .map_err(self.err("prune old jobs"))
    }

    // ---- VM resources ----

    /// Records a job's VM directory before it is created. Recording again
    /// replaces the directory and clears pid and port (call it only after the
    /// previous VM of the job is gone).
    pub fn record_vm(&self, job_id: &str, dir: &Path) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO vms (job_id, dir, recorded_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(job_id) DO UPDATE SET dir = excluded.dir, pid = NULL, ssh_port = NULL,
                 recorded_at_ms = excluded.recorded_at_ms",
        )
        .and_then(|mut st| {
            st.execute(params![
                job_id,
                dir.as_os_str().as_bytes(),
                to_ms(SystemTime::now())
            ])
        })
        .map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::ConstraintViolation) => StoreError::UnknownJob {
                id: job_id.to_string(),
            },
            _ => sql_err(&self.path, "record a VM")(e),
        })?;
        Ok(())
    }

    /// Records QEMU's pid and forwarded SSH port once it is spawned.
    pub fn record_vm_process(
        &self,
        job_id: &str,
        pid: u32,
        ssh_port: u16,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached("UPDATE vms SET pid = ?2, ssh_port = ?3 WHERE job_id = ?1")
            .and_then(|mut st| st.execute(params![job_id, pid, ssh_port]))
            .map_err(self.err("record a VM process"))?;
        if n == 0 {
            return Err(StoreError::UnknownJob {
                id: job_id.to_string(),
            });
        }
        Ok(())
    }

    /// Every recorded VM, oldest first.
    pub fn vm_records(&self) -> Result<Vec<VmRow>, StoreError> {
        let conn = self.conn();
        let raw = conn
            .prepare_cached(
                "SELECT job_id, dir, pid, ssh_port, recorded_at_ms FROM vms
                 ORDER BY recorded_at_ms, job_id",
            )
            .and_then(|mut st| {
                st.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(self.err("list VMs"))?;
        drop(conn);
        raw.into_iter()
            .map(|(job_id, dir, pid, port, at)| {
                let pid = pid
                    .map(|p| u32::try_from(p).map_err(|_| self.bad(format!("pid {p} of {job_id}"))))
                    .transpose()?;
                let ssh_port = port
                    .map(|p| {
                        u16::try_from(p).map_err(|_| self.bad(format!("port {p} of {job_id}")))
                    })
                    .transpose()?;
                Ok(VmRow {
                    job_id,
                    dir: PathBuf::from(OsStr::from_bytes(&dir)),
                    pid,
                    ssh_port,
                    recorded_at: from_ms(at),
                })
            })
            .collect()
    }

    /// Keeps the last task state sent to the forge (encoded protobuf), so a
    /// report after a crash keeps the steps' results.
    pub fn save_task_state(&self, id: &str, state: &[u8]) -> Result<(), StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached("UPDATE jobs SET task_state = ?2 WHERE id = ?1")
            .and_then(|mut st| st.execute(params![id, state]))
            .map_err(self.err("save a task state"))?;
        if n == 0 {
            return Err(StoreError::UnknownJob { id: id.to_string() });
        }
        Ok(())
    }

    /// Keeps a finished job's outputs (a JSON object) until the forge has
    /// its final report, so a report sent after a restart still carries them.
    pub fn save_outputs(&self, id: &str, outputs_json: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached("UPDATE jobs SET outputs = ?2 WHERE id = ?1")
            .and_then(|mut st| st.execute(params![id, outputs_json]))
            .map_err(self.err("save job outputs"))?;
        if n == 0 {
            return Err(StoreError::UnknownJob { id: id.to_string() });
        }
        Ok(())
    }

    /// The outputs saved by [`Store::save_outputs`], if any.
    pub fn outputs(&self, id: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn();
        conn.prepare_cached("SELECT outputs FROM jobs WHERE id = ?1")
            .and_then(|mut st| {
                st.query_row([id], |r| r.get::<_, Option<String>>(0))
                    .optional()
            })
            .map(Option::flatten)
            .map_err(self.err("read job outputs"))
    }

    /// The task state saved by [`Store::save_task_state`], if any.
    pub fn task_state(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let conn = self.conn();
        conn.prepare_cached("SELECT task_state FROM jobs WHERE id = ?1")
            .and_then(|mut st| {
                st.query_row([id], |r| r.get::<_, Option<Vec<u8>>>(0))
                    .optional()
            })
            .map(Option::flatten)
            .map_err(self.err("read a task state"))
    }

    // ---- the accelerator ----

    /// Remembers that KVM failed a job's boot on this host (replaces an
    /// earlier record).
    pub fn record_kvm_failure(&self, f: &KvmFailureRow) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT OR REPLACE INTO kvm_failure (id, reason, fingerprint, at_unix) VALUES (1, ?1, ?2, ?3)",
        )
        .and_then(|mut st| st.execute(params![f.reason, f.fingerprint, f.at_unix]))
        .map_err(self.err("record a KVM failure"))?;
        Ok(())
    }

    /// The KVM failure recorded by [`Store::record_kvm_failure`], if any.
    pub fn kvm_failure(&self) -> Result<Option<KvmFailureRow>, StoreError> {
        let conn = self.conn();
        conn.prepare_cached("SELECT reason, fingerprint, at_unix FROM kvm_failure WHERE id = 1")
            .and_then(|mut st| {
                st.query_row([], |r| {
                    Ok(KvmFailureRow {
                        reason: r.get(0)?,
                        fingerprint: r.get(1)?,
                        at_unix: r.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(self.err("read the KVM failure record"))
    }

    /// Forgets the KVM failure record; returns whether there was one.
    pub fn forget_kvm_failure(&self) -> Result<bool, StoreError> {
        let conn = self.conn();
        conn.prepare_cached("DELETE FROM kvm_failure")
            .and_then(|mut st| st.execute([]))
            .map(|n| n > 0)
            .map_err(self.err("forget the KVM failure record"))
    }

    /// Forgets a job's VM once QEMU is gone and its directory removed.
    pub fn forget_vm(&self, job_id: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.prepare_cached("DELETE FROM vms WHERE job_id = ?1")
            .and_then(|mut st| st.execute([job_id]))
            .map_err(self.err("forget a VM"))?;
        Ok(())
    }

    // ---- log rows ----

    /// Appends rows at indexes `first_idx..first_idx + rows.len()` in one
    /// transaction; `first_idx` should be [`Store::log_end`]. Returns the new end.
    pub fn append_log_rows(
        &self,
        job_id: &str,
        first_idx: i64,
        rows: &[LogRowData],
    ) -> Result<i64, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction()
            .map_err(sql_err(&self.path, "append log rows"))?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO log_rows (job_id, idx, time_secs, time_nanos, content)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(sql_err(&self.path, "append log rows"))?;
            for (i, row) in (first_idx..).zip(rows) {
                let (secs, nanos) = split_time(row.time);
                st.execute(params![job_id, i, secs, nanos, row.content])
                    .map_err(sql_err(&self.path, "append log rows"))?;
            }
        }
        tx.commit()
            .map_err(sql_err(&self.path, "append log rows"))?;
        Ok(first_idx + rows.len() as i64)
    }

    /// Spooled rows from `from_idx` on, in order: at most `max_rows`, and no
    /// more than `max_bytes` of content (but always at least one row if any).
    pub fn log_rows(
        &self,
        job_id: &str,
        from_idx: i64,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<(i64, LogRowData)>, StoreError> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(
                "SELECT idx, time_secs, time_nanos, content FROM log_rows
                 WHERE job_id = ?1 AND idx >= ?2 ORDER BY idx LIMIT ?3",
            )
            .map_err(self.err("read log rows"))?;
        let mut rows = st
            .query(params![job_id, from_idx, clamp_limit(max_rows)])
            .map_err(self.err("read log rows"))?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(r) = rows.next().map_err(self.err("read log rows"))? {
            let content: String = r.get(3).map_err(self.err("read log rows"))?;
            if !out.is_empty() && bytes.saturating_add(content.len()) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(content.len());
            let idx: i64 = r.get(0).map_err(self.err("read log rows"))?;
            let secs: i64 = r.get(1).map_err(self.err("read log rows"))?;
            let nanos: i64 = r.get(2).map_err(self.err("read log rows"))?;
            out.push((
                idx,
                LogRowData {
                    time: join_time(secs, nanos),
                    content,
                },
            ));
        }
        Ok(out)
    }

    /// The forge acknowledged rows below `ack_idx`: deletes them and stores
    /// the acknowledgement (which never moves backwards).
    pub fn ack_log(&self, job_id: &str, ack_idx: i64) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction()
            .map_err(sql_err(&self.path, "acknowledge log rows"))?;
        tx.prepare_cached("DELETE FROM log_rows WHERE job_id = ?1 AND idx < ?2")
            .and_then(|mut st| st.execute(params![job_id, ack_idx]))
            .map_err(sql_err(&self.path, "acknowledge log rows"))?;
        let n = tx
            .prepare_cached("UPDATE jobs SET log_ack = MAX(log_ack, ?2) WHERE id = ?1")
            .and_then(|mut st| st.execute(params![job_id, ack_idx]))
            .map_err(sql_err(&self.path, "acknowledge log rows"))?;
        if n == 0 {
            return Err(StoreError::UnknownJob {
                id: job_id.to_string(),
            });
        }
        tx.commit()
            .map_err(sql_err(&self.path, "acknowledge log rows"))?;
        Ok(())
    }

    /// The next index to append: one past the last spooled row, or the stored
    /// acknowledgement, whichever is larger (0 for an unknown job).
    pub fn log_end(&self, job_id: &str) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "SELECT MAX(COALESCE((SELECT MAX(idx) + 1 FROM log_rows WHERE job_id = ?1), 0),
                        COALESCE((SELECT log_ack FROM jobs WHERE id = ?1), 0))",
        )
        .and_then(|mut st| st.query_row([job_id], |r| r.get(0)))
        .map_err(self.err("find the log end"))
    }

    /// Deletes every spooled row of a job.
    pub fn delete_job_logs(&self, job_id: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.prepare_cached("DELETE FROM log_rows WHERE job_id = ?1")
            .and_then(|mut st| st.execute([job_id]))
            .map_err(self.err("delete log rows"))?;
        Ok(())
    }
}

/// A job row as read, before its values are checked.
struct RawJob {
    id: String,
    forge: String,
    task_id: i64,
    job_name: String,
    repository: String,
    image: Option<String>,
    state: String,
    n_steps: Option<i64>,
    result: Option<String>,
    received_at_ms: i64,
    updated_at_ms: i64,
    finished_at_ms: Option<i64>,
    reported: i64,
    log_ack: i64,
    timings: [Option<i64>; 4],
}

impl RawJob {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawJob> {
        Ok(RawJob {
            id: r.get(0)?,
            forge: r.get(1)?,
            task_id: r.get(2)?,
            job_name: r.get(3)?,
            repository: r.get(4)?,
            image: r.get(5)?,
            state: r.get(6)?,
            n_steps: r.get(7)?,
            result: r.get(8)?,
            received_at_ms: r.get(9)?,
            updated_at_ms: r.get(10)?,
            finished_at_ms: r.get(11)?,
            reported: r.get(12)?,
            log_ack: r.get(13)?,
            timings: [r.get(14)?, r.get(15)?, r.get(16)?, r.get(17)?],
        })
    }

    fn into_row(self, store: &Store) -> Result<JobRow, StoreError> {
        let state = JobState::parse(&self.state)
            .ok_or_else(|| store.bad(format!("state `{}` of job {}", self.state, self.id)))?;
        let ms = |v: Option<i64>| v.map(|v| u64::try_from(v).unwrap_or(0));
        Ok(JobRow {
            id: self.id,
            forge: self.forge,
            task_id: self.task_id,
            job_name: self.job_name,
            repository: self.repository,
            image: self.image,
            state,
            n_steps: self.n_steps,
            result: self.result,
            received_at: from_ms(self.received_at_ms),
            updated_at: from_ms(self.updated_at_ms),
            finished_at: self.finished_at_ms.map(from_ms),
            reported: self.reported != 0,
            log_ack: self.log_ack,
            timings: JobTimings {
                provision_ms: ms(self.timings[0]),
                boot_ms: ms(self.timings[1]),
                ssh_ready_ms: ms(self.timings[2]),
                first_step_ms: ms(self.timings[3]),
            },
        })
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

/// Reads the first 100 bytes (the SQLite header). `Ok(false)`: the file does
/// not exist or is empty (a new database).
fn check_header(path: &Path) -> Result<bool, StoreError> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(StoreError::Io {
                what: "read",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut header = Vec::with_capacity(100);
    (&mut file)
        .take(100)
        .read_to_end(&mut header)
        .map_err(|source| StoreError::Io {
            what: "read",
            path: path.to_path_buf(),
            source,
        })?;
    if header.is_empty() {
        return Ok(false);
    }
    if header.len() < 100 || !header.starts_with(b"SQLite format 3\0") {
        return Err(StoreError::NotSqlite {
            path: path.to_path_buf(),
        });
    }
    Ok(true)
}

/// Checks `application_id` and `user_version`. A file with neither and no
/// schema objects is a new database (only acceptable when not read-only).
fn check_identity(conn: &Connection, path: &Path, read_only: bool) -> Result<(), StoreError> {
    let (app, version, objects) = read_identity(conn, path)?;
    if app == 0 && version == 0 && objects == 0 {
        if read_only {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        return Ok(());
    }
    if app != APPLICATION_ID {
        return Err(StoreError::Foreign {
            path: path.to_path_buf(),
            found: app,
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if read_only && version < SCHEMA_VERSION {
        return Err(StoreError::TooOld {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

fn read_identity(conn: &Connection, path: &Path) -> Result<(i32, i64, i64), StoreError> {
    let app: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(sql_err(path, "read the application id"))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql_err(path, "read the schema version"))?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(sql_err(path, "read the schema"))?;
    Ok((app, version, objects))
}

/// Applies the pending migrations in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err(path, "start the schema migration"))?;
    // Checked again under the write lock: another process may have migrated.
    check_identity(&tx, path, false)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql_err(path, "read the schema version"))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    for (i, batch) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tracing::info!(path = %path.display(), to = i + 1, "migrating the state database");
        tx.execute_batch(batch)
            .map_err(sql_err(path, "migrate the schema"))?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(sql_err(path, "set the application id"))?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(sql_err(path, "set the schema version"))?;
    tx.commit()
        .map_err(sql_err(path, "commit the schema migration"))
}

/// The effective uid of this process, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Sets mode 0600 on the database and its `-wal`/`-shm` files when they are
/// ours and readable or writable by others.
fn tighten_modes(path: &Path) -> Result<(), StoreError> {
    let Some(uid) = effective_uid() else {
        return Ok(());
    };
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        files.push(PathBuf::from(p));
    }
    for file in files {
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if meta.is_file() && meta.uid() == uid && meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| StoreError::Io {
                    what: "restrict the permissions of",
                    path: file.clone(),
                    source,
                },
            )?;
        }
    }
    Ok(())
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
    fn states_round_trip() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("bogus"), None);
    }

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

    #[test]
    fn timings_sum_only_when_complete() {
        let mut t = JobTimings {
            provision_ms: Some(100),
            boot_ms: Some(2000),
            ssh_ready_ms: Some(300),
            first_step_ms: None,
        };
        assert_eq!(t.to_first_step_ms(), None);
        t.first_step_ms = Some(50);
        assert_eq!(t.to_first_step_ms(), Some(2450));
    }

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }

    #[test]
    fn credentials_debug_hides_the_token() {
        let c = CredentialsRow {
            url: "https://f.example".into(),
            uuid: "u".into(),
            token: Secret::new("tok-123"),
            runner_id: 1,
            declared_labels: vec![],
        };
        assert!(!format!("{c:?}").contains("tok-123"));
    }
}

//! The file and its schema: migrations, the identity checks that refuse a
//! foreign, corrupt or newer file, and the file modes.

use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, TransactionBehavior};

use super::{APPLICATION_ID, StoreError, sql_err};

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
    // Version 3: failed jobs' VMs kept for debug SSH (`solstice status`
    // shows them; the next start after a crash drops the rows once the
    // VMs are destroyed).
    r#"
CREATE TABLE debug_holds (
    job_id        TEXT PRIMARY KEY NOT NULL REFERENCES jobs(id),
    forge         TEXT NOT NULL,
    repository    TEXT NOT NULL,
    actor         TEXT NOT NULL,  -- the forge user whose keys are accepted
    expires_at_ms INTEGER NOT NULL,
    armed_at_ms   INTEGER NOT NULL
) STRICT;
"#,
    // Version 4: warm guests (pool members and snapshot templates), so that
    // `solstice status` shows the pools and the next start after a crash
    // knows what to kill. A guest handed to a job leaves this table (the
    // job's `vms` row takes over).
    r#"
CREATE TABLE warm_vms (
    id             TEXT PRIMARY KEY NOT NULL, -- names its directory under <state_dir>/warm/
    image          TEXT NOT NULL,
    kind           TEXT NOT NULL,             -- 'booted', 'restored' or 'template'
    dir            BLOB NOT NULL,             -- path bytes
    pid            INTEGER,
    ssh_port       INTEGER,
    ready          INTEGER NOT NULL DEFAULT 0,
    recorded_at_ms INTEGER NOT NULL
) STRICT;
"#,
];

/// The schema version this binary writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
const _: () = assert!(SCHEMA_VERSION >= 1);

/// Reads the first 100 bytes (the SQLite header). `Ok(false)`: the file does
/// not exist or is empty (a new database).
pub(super) fn check_header(path: &Path) -> Result<bool, StoreError> {
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
pub(super) fn check_identity(
    conn: &Connection,
    path: &Path,
    read_only: bool,
) -> Result<(), StoreError> {
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
    // One statement, so one snapshot: another process may be creating the
    // schema at this moment, and three separate reads could see its tables
    // without its application id.
    conn.query_row(
        "SELECT (SELECT application_id FROM pragma_application_id), \
                (SELECT user_version FROM pragma_user_version), \
                (SELECT count(*) FROM sqlite_schema)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .map_err(sql_err(path, "read the database's identity"))
}

/// Applies the pending migrations in one transaction.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
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
pub(super) fn tighten_modes(path: &Path) -> Result<(), StoreError> {
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

//! The index of committed cache entries: one SQLite file
//! (`<cache dir>/index.db`, WAL mode) that `solstice exec` and the daemon
//! may open at the same time. A row exists only for an entry whose file is
//! complete, synced and renamed into `entries/`, so a half-uploaded entry
//! is never visible.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use super::CacheError;

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// One committed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Row id: names the entry in its download URL.
    pub id: i64,
    /// `<forge>|<owner/name>`, lower case.
    pub scope: String,
    /// Empty for shared entries; the pull request's ref for isolated ones.
    pub isolation: String,
    /// The key as the job wrote it.
    pub key: String,
    pub version: String,
    /// File name under `entries/`.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// Milliseconds since the epoch: committed, last restored.
    pub created_ms: i64,
    pub used_ms: i64,
}

/// What a new entry is (before it has a row).
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub scope: &'a str,
    pub isolation: &'a str,
    pub key: &'a str,
    pub version: &'a str,
    pub file: &'a str,
    pub size: u64,
}

/// The open index.
pub struct Index {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.path).finish()
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

const COLUMNS: &str = "id, scope, isolation, key, version, file, size, created_ms, used_ms";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: r.get(0)?,
        scope: r.get(1)?,
        isolation: r.get(2)?,
        key: r.get(3)?,
        version: r.get(4)?,
        file: r.get(5)?,
        size: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
        created_ms: r.get(7)?,
        used_ms: r.get(8)?,
    })
}

impl Index {
    /// Opens (creating when missing) the index at `path`.
    pub fn open(path: &Path) -> Result<Index, CacheError> {
        let err = |what: &'static str| {
            let path = path.to_path_buf();
            move |source: rusqlite::Error| CacheError::Index { path, what, source }
        };
        let conn = Connection::open(path).map_err(err("open"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(err("set the busy timeout"))?;
        crate::store::switch_to_wal(&conn).map_err(err("switch to WAL mode"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err("set synchronous=NORMAL"))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS entries (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 scope TEXT NOT NULL,
                 isolation TEXT NOT NULL,
                 key TEXT NOT NULL,
                 key_lc TEXT NOT NULL,
                 version TEXT NOT NULL,
                 file TEXT NOT NULL UNIQUE,
                 size INTEGER NOT NULL,
                 created_ms INTEGER NOT NULL,
                 used_ms INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS entries_lookup
                 ON entries (scope, isolation, version, key_lc);",
        )
        .map_err(err("create the table"))?;
        Ok(Index {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> CacheError {
        let path = self.path.clone();
        move |source| CacheError::Index { path, what, source }
    }

    /// The entry `keys` select for `version` in `scope`: the isolations in
    /// order; within one, each key in order, an exact match (case-insensitive)
    /// before a prefix match; the newest commit wins. Marks it used.
    pub fn lookup(
        &self,
        scope: &str,
        isolations: &[&str],
        keys: &[String],
        version: &str,
    ) -> Result<Option<Entry>, CacheError> {
        let exact = format!(
            "SELECT {COLUMNS} FROM entries WHERE scope = ?1 AND isolation = ?2 AND version = ?3 \
             AND key_lc = ?4 ORDER BY id DESC LIMIT 1"
        );
        let prefix = format!(
            "SELECT {COLUMNS} FROM entries WHERE scope = ?1 AND isolation = ?2 AND version = ?3 \
             AND substr(key_lc, 1, length(?4)) = ?4 ORDER BY id DESC LIMIT 1"
        );
        for iso in isolations {
            for key in keys {
                let key = key.to_lowercase();
                for sql in [&exact, &prefix] {
                    let found = self
                        .conn
                        .query_row(sql, params![scope, iso, version, key], row)
                        .optional()
                        .map_err(self.err("look up an entry"))?;
                    if let Some(e) = found {
                        self.touch(e.id)?;
                        return Ok(Some(e));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Entry `id` if it is readable from `scope` with one of `isolations`;
    /// marks it used.
    pub fn readable(
        &self,
        id: i64,
        scope: &str,
        isolations: &[&str],
    ) -> Result<Option<Entry>, CacheError> {
        let found = self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM entries WHERE id = ?1 AND scope = ?2"),
                params![id, scope],
                row,
            )
            .optional()
            .map_err(self.err("read an entry"))?;
        match found {
            Some(e) if isolations.contains(&e.isolation.as_str()) => {
                self.touch(id)?;
                Ok(Some(e))
            }
            _ => Ok(None),
        }
    }

    fn touch(&self, id: i64) -> Result<(), CacheError> {
        self.conn
            .execute(
                "UPDATE entries SET used_ms = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )
            .map_err(self.err("mark an entry used"))?;
        Ok(())
    }

    /// Adds a committed entry, drops the older entries it supersedes (same
    /// scope, isolation, key and version), then evicts the least recently
    /// used others until the total is at most `max_bytes`. Returns the new
    /// row and the files of the removed rows (to delete).
    pub fn insert(
        &mut self,
        new: &NewEntry<'_>,
        max_bytes: u64,
    ) -> Result<(Entry, Vec<String>), CacheError> {
        let path = self.path.clone();
        let err = move |what: &'static str| {
            let path = path.clone();
            move |source| CacheError::Index { path, what, source }
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err("begin a transaction"))?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO entries (scope, isolation, key, key_lc, version, file, size, created_ms, used_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![
                new.scope,
                new.isolation,
                new.key,
                new.key.to_lowercase(),
                new.version,
                new.file,
                i64::try_from(new.size).unwrap_or(i64::MAX),
                now
            ],
        )
        .map_err(err("add an entry"))?;
        let id = tx.last_insert_rowid();
        let mut removed: Vec<(i64, String)> = {
            let mut st = tx
                .prepare(
                    "SELECT id, file FROM entries WHERE scope = ?1 AND isolation = ?2 \
                     AND key_lc = ?3 AND version = ?4 AND id < ?5",
                )
                .map_err(err("find superseded entries"))?;
            st.query_map(
                params![
                    new.scope,
                    new.isolation,
                    new.key.to_lowercase(),
                    new.version,
                    id
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .and_then(Iterator::collect)
            .map_err(err("find superseded entries"))?
        };
        for (old, _) in &removed {
            tx.execute("DELETE FROM entries WHERE id = ?1", params![old])
                .map_err(err("remove a superseded entry"))?;
        }
        let mut total: i64 = tx
            .query_row("SELECT COALESCE(SUM(size), 0) FROM entries", [], |r| {
                r.get(0)
            })
            .map_err(err("sum the sizes"))?;
        let max = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        if total > max {
            let lru: Vec<(i64, String, i64)> = {
                let mut st = tx
                    .prepare(
                        "SELECT id, file, size FROM entries WHERE id != ?1 ORDER BY used_ms, id",
                    )
                    .map_err(err("list entries by use"))?;
                st.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .and_then(Iterator::collect)
                    .map_err(err("list entries by use"))?
            };
            for (old, file, size) in lru {
                if total <= max {
                    break;
                }
                tx.execute("DELETE FROM entries WHERE id = ?1", params![old])
                    .map_err(err("evict an entry"))?;
                total -= size;
                removed.push((old, file));
            }
        }
        let entry = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM entries WHERE id = ?1"),
                params![id],
                row,
            )
            .map_err(err("read the new entry"))?;
        tx.commit().map_err(err("commit"))?;
        Ok((entry, removed.into_iter().map(|(_, f)| f).collect()))
    }

    /// Every entry, or those of scopes containing `repo` (case-insensitive),
    /// most recently used first.
    pub fn list(&self, repo: Option<&str>) -> Result<Vec<Entry>, CacheError> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM entries ORDER BY used_ms DESC, id DESC"
            ))
            .map_err(self.err("list entries"))?;
        let all: Vec<Entry> = st
            .query_map([], row)
            .and_then(Iterator::collect)
            .map_err(self.err("list entries"))?;
        Ok(match repo {
            None => all,
            Some(r) => {
                let r = r.to_lowercase();
                all.into_iter()
                    .filter(|e| e.scope.split_once('|').is_some_and(|(_, name)| name == r))
                    .collect()
            }
        })
    }

    /// Removes entries (all, or one repository's, as [`Index::list`]
    /// selects them); returns their files.
    pub fn remove(&self, entries: &[Entry]) -> Result<Vec<String>, CacheError> {
        let mut files = Vec::new();
        for e in entries {
            self.conn
                .execute("DELETE FROM entries WHERE id = ?1", params![e.id])
                .map_err(self.err("remove an entry"))?;
            files.push(e.file.clone());
        }
        Ok(files)
    }

    /// Whether a file name belongs to a row.
    pub fn has_file(&self, file: &str) -> Result<bool, CacheError> {
        self.conn
            .query_row(
                "SELECT 1 FROM entries WHERE file = ?1",
                params![file],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(self.err("look up a file"))
    }
}

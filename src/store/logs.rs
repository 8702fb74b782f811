//! Spooled log rows, kept until the forge acknowledges them.

use std::time::SystemTime;

use rusqlite::params;

use super::{Store, StoreError, clamp_limit, join_time, split_time, sql_err};

/// One log line to spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRowData {
    /// Stored as seconds and nanoseconds since the epoch; earlier times are
    /// stored as the epoch.
    pub time: SystemTime,
    pub content: String,
}

impl Store {
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

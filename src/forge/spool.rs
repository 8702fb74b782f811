//! Where a task's log lines wait until the forge acknowledged them. The
//! daemon gives each task a spool (the state database, or memory when the
//! database failed); the forge's reporter appends to it while the job runs
//! and reads from it to upload. Lines are numbered from 0 (absolute index).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

/// One line of a task's log, as the spool keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: SystemTime,
    pub content: String,
}

/// Why the spool could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// The rows asked for were acknowledged and dropped already.
    #[error("Log rows before {first} were already acknowledged and dropped")]
    Acknowledged { first: u64 },
    /// Storage failed (disk full, database error).
    #[error("The log spool failed: {0}")]
    Storage(String),
}

/// The rows of one task's log that the forge has not acknowledged yet, by
/// absolute row index. Calls must be quick: a task's reporter calls
/// [`LogSpool::append`] while the job runs.
pub trait LogSpool: Send + Sync {
    /// Stores `rows` at indexes `first_index..`. `first_index` is the number
    /// of rows appended before; rows already held are not stored twice.
    fn append(&self, first_index: u64, rows: &[LogLine]) -> Result<(), SpoolError>;
    /// Rows from index `from` on: at most `max_rows`, and no more than
    /// `max_bytes` of content unless a single row is larger. Empty when
    /// nothing is held from `from` on; [`SpoolError::Acknowledged`] when
    /// `from` was dropped by [`LogSpool::ack`].
    fn read(
        &self,
        from: u64,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogLine>, SpoolError>;
    /// The forge holds every row below `upto`: they may be dropped.
    fn ack(&self, upto: u64) -> Result<(), SpoolError>;
}

/// A [`LogSpool`] in memory. Rows stay until acknowledged, so a long forge
/// outage costs memory; an on-disk spool avoids that.
#[derive(Debug, Default)]
pub struct MemorySpool {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// Absolute index of `rows[0]`.
    first: u64,
    rows: VecDeque<LogLine>,
}

impl MemorySpool {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows held (not yet acknowledged).
    pub fn held(&self) -> usize {
        self.lock().rows.len()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogSpool for MemorySpool {
    fn append(&self, first_index: u64, rows: &[LogLine]) -> Result<(), SpoolError> {
        let mut m = self.lock();
        let end = m.first + m.rows.len() as u64;
        if first_index > end {
            return Err(SpoolError::Storage(format!(
                "rows appended at {first_index}, but the spool ends at {end}"
            )));
        }
        let skip = usize::try_from(end - first_index).unwrap_or(usize::MAX);
        m.rows.extend(rows.iter().skip(skip).cloned());
        Ok(())
    }

    fn read(
        &self,
        from: u64,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogLine>, SpoolError> {
        let m = self.lock();
        if from < m.first {
            return Err(SpoolError::Acknowledged { first: m.first });
        }
        let start = usize::try_from(from - m.first).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut bytes = 0;
        for row in m.rows.iter().skip(start).take(max_rows) {
            if !out.is_empty() && bytes + row.content.len() > max_bytes {
                break;
            }
            bytes += row.content.len();
            out.push(row.clone());
        }
        Ok(out)
    }

    fn ack(&self, upto: u64) -> Result<(), SpoolError> {
        let mut m = self.lock();
        while m.first < upto && !m.rows.is_empty() {
            m.rows.pop_front();
            m.first += 1;
        }
        if m.rows.is_empty() && upto > m.first {
            m.first = upto;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_spool_reads_in_chunks_and_drops_acknowledged_rows() {
        let s = MemorySpool::new();
        let row = |c: &str| LogLine {
            time: SystemTime::UNIX_EPOCH,
            content: c.into(),
        };
        s.append(0, &[row("aaaa"), row("bb"), row("c")]).unwrap();
        // Overlapping append: only the new row is stored.
        s.append(2, &[row("c"), row("dddd")]).unwrap();
        assert_eq!(s.held(), 4);
        assert!(s.append(9, &[row("gap")]).is_err());
        let c = |v: Vec<LogLine>| v.into_iter().map(|r| r.content).collect::<Vec<_>>();
        assert_eq!(c(s.read(0, 10, 6).unwrap()), ["aaaa", "bb"]);
        assert_eq!(c(s.read(1, 2, 100).unwrap()), ["bb", "c"]);
        // A single row larger than the byte cap still goes.
        assert_eq!(c(s.read(0, 10, 1).unwrap()), ["aaaa"]);
        s.ack(2).unwrap();
        assert_eq!(s.held(), 2);
        assert_eq!(
            s.read(1, 10, 100),
            Err(SpoolError::Acknowledged { first: 2 })
        );
        assert_eq!(c(s.read(2, 10, 100).unwrap()), ["c", "dddd"]);
        assert!(s.read(4, 10, 100).unwrap().is_empty());
        s.ack(4).unwrap();
        assert_eq!(s.held(), 0);
    }
}

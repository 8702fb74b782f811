//! A job's log lines in the state database, so that none is lost when the
//! daemon dies and memory stays bounded however much a step prints.

use std::sync::{Arc, Mutex};

use crate::forge::{LogLine, LogSpool, SpoolError};
use crate::store::{LogRowData, Store};

/// The [`LogSpool`] of one job, in the state database.
pub(crate) struct StoreSpool {
    pub store: Arc<Store>,
    pub job_id: String,
    /// Lines below this index were acknowledged and dropped.
    pub acked: Mutex<u64>,
}

fn storage(e: crate::store::StoreError) -> SpoolError {
    SpoolError::Storage(e.to_string())
}

impl LogSpool for StoreSpool {
    fn append(&self, first_index: u64, rows: &[LogLine]) -> Result<(), SpoolError> {
        let end = u64::try_from(self.store.log_end(&self.job_id).map_err(storage)?).unwrap_or(0);
        // Lines already held are not stored twice.
        let skip = usize::try_from(end.saturating_sub(first_index)).unwrap_or(usize::MAX);
        let Some(rows) = rows.get(skip..).filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        let data: Vec<LogRowData> = rows
            .iter()
            .map(|r| LogRowData {
                time: r.time,
                content: r.content.clone(),
            })
            .collect();
        let first = i64::try_from(first_index.max(end)).unwrap_or(i64::MAX);
        self.store
            .append_log_rows(&self.job_id, first, &data)
            .map_err(storage)?;
        Ok(())
    }

    fn read(
        &self,
        from: u64,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogLine>, SpoolError> {
        let acked = *self.acked.lock().unwrap_or_else(|p| p.into_inner());
        if from < acked {
            return Err(SpoolError::Acknowledged { first: acked });
        }
        let rows = self
            .store
            .log_rows(
                &self.job_id,
                i64::try_from(from).unwrap_or(i64::MAX),
                max_rows,
                max_bytes,
            )
            .map_err(storage)?;
        Ok(rows
            .into_iter()
            .map(|(_, r)| LogLine {
                time: r.time,
                content: r.content,
            })
            .collect())
    }

    fn ack(&self, upto: u64) -> Result<(), SpoolError> {
        self.store
            .ack_log(&self.job_id, i64::try_from(upto).unwrap_or(i64::MAX))
            .map_err(storage)?;
        let mut a = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        *a = (*a).max(upto);
        Ok(())
    }
}

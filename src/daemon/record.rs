//! A job's record in the state database, as the task runner writes it.
//!
//! The record serves crash recovery and `solstice status`; a write that
//! fails does not stop the job. Every failure is logged, the first of a job
//! as a warning and later ones at debug level, so that a broken database
//! does not flood the log with the same complaint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use crate::store::{JobState, JobTimings, Store, StoreError};

/// One job's record (see the module docs).
pub(crate) struct JobRecord {
    pub store: Arc<Store>,
    /// The job id ([`crate::job::id::daemon_job_id`]).
    pub id: String,
    /// A failure of this record was logged as a warning (or error) already.
    warned: AtomicBool,
}

impl JobRecord {
    /// `warned`: a failure of this record was reported already.
    pub fn new(store: Arc<Store>, id: String, warned: bool) -> JobRecord {
        JobRecord {
            store,
            id,
            warned: AtomicBool::new(warned),
        }
    }

    /// `r`'s value; a failure is logged (see the module docs).
    pub fn check<T>(&self, what: &str, r: Result<T, StoreError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                if self.warned.swap(true, Ordering::Relaxed) {
                    tracing::debug!(job = %self.id, error = %e, "could not {what} in the state database (again)");
                } else {
                    tracing::warn!(job = %self.id, error = %e, "could not {what} in the state database");
                }
                None
            }
        }
    }

    pub fn set_state(&self, state: JobState) {
        self.check(
            "record the job's state",
            self.store.set_job_state(&self.id, state),
        );
    }

    pub fn set_steps(&self, steps: usize) {
        let n = i64::try_from(steps).unwrap_or(0);
        self.check(
            "record the job's step count",
            self.store.set_job_steps(&self.id, n),
        );
    }

    pub fn set_image(&self, image: &str) {
        self.check(
            "record the job's image",
            self.store.set_job_image(&self.id, image),
        );
    }

    pub fn save_outputs(&self, json: &str) {
        self.check(
            "save the job's outputs",
            self.store.save_outputs(&self.id, json),
        );
    }

    pub fn save_task_state(&self, bytes: &[u8]) {
        self.check(
            "save the task state",
            self.store.save_task_state(&self.id, bytes),
        );
    }

    pub fn record_timings(&self, t: &JobTimings) {
        self.check(
            "record the job's timings",
            self.store.record_timings(&self.id, t),
        );
    }

    /// The job ended with `result` (`success`, `failure`, ...).
    pub fn finish(&self, result: &str) {
        self.check(
            "record the job's end",
            self.store.finish_job(&self.id, result, SystemTime::now()),
        );
    }

    /// The forge has the whole report: the log rows are no longer needed.
    pub fn reported(&self) {
        self.check(
            "record that the task was reported",
            self.store.mark_reported(&self.id),
        );
        self.check(
            "delete the reported log rows",
            self.store.delete_job_logs(&self.id),
        );
    }

    /// Records that the job's task is gone for good, so that no later start
    /// tries to report it (the reporter logged why).
    pub fn give_up(&self) {
        if let Err(e) = self.store.give_up_job(&self.id) {
            tracing::error!(job = %self.id, error = %e, "could not record in the state database that the task was given up");
        }
    }
}

//! Jobs: their lifecycle, timings, saved task state and outputs.

use std::time::{Duration, SystemTime};

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, clamp_limit, from_ms, to_ms};

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

/// A job as it is first recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// Our job id (see [`crate::job::id::daemon_job_id`]); also the name of its VM directory.
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

const JOB_COLUMNS: &str = "id, forge, task_id, job_name, repository, image, state, n_steps, result, \
     received_at_ms, updated_at_ms, finished_at_ms, reported, log_ack, \
     provision_ms, boot_ms, ssh_ready_ms, first_step_ms";

impl Store {
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
    /// most recently finished. Jobs with a VM record or a held VM (debug
    /// SSH: the job is finished, its VM lives on) are kept. Returns how many
    /// were deleted.
    pub fn prune_finished_jobs(&self, keep: usize) -> Result<usize, StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "DELETE FROM jobs WHERE state = 'finished' AND reported <> 0
               AND id NOT IN (SELECT job_id FROM vms)
               AND id NOT IN (SELECT job_id FROM debug_holds)
               AND id NOT IN (SELECT id FROM jobs WHERE state = 'finished'
                              ORDER BY finished_at_ms DESC, id DESC LIMIT ?1)",
        )
        .and_then(|mut st| st.execute([clamp_limit(keep)]))
        .map_err(self.err("prune old jobs"))
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
}

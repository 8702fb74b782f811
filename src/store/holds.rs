//! Failed jobs' VMs kept for debug SSH: one row per held VM, written when
//! its window opens and removed once the VM is destroyed, so that
//! `solstice status` shows them and the next start after a crash knows
//! which VMs it destroyed were held.
//!
//! The VM itself stays recorded in `vms` until it is destroyed (the usual
//! reconciliation kills it after a crash); a hold row only describes it.

use std::time::SystemTime;

use rusqlite::{ErrorCode, params};

use super::{Store, StoreError, from_ms, sql_err, to_ms};

/// A VM kept for debug SSH after its job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRow {
    /// The job whose VM is kept (what users `connect` to).
    pub job_id: String,
    /// The forge name from the config.
    pub forge: String,
    /// `owner/name`.
    pub repository: String,
    /// The forge user whose public keys are accepted.
    pub actor: String,
    /// When the window opened.
    pub armed_at: SystemTime,
    /// When the VM is destroyed at the latest (never renewed).
    pub expires_at: SystemTime,
}

impl Store {
    /// Records a held VM when its window opens. Recording the same job again
    /// replaces the row. The job must be recorded
    /// ([`StoreError::UnknownJob`] otherwise).
    pub fn record_hold(&self, hold: &HoldRow) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO debug_holds (job_id, forge, repository, actor, expires_at_ms, armed_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(job_id) DO UPDATE SET forge = excluded.forge,
                 repository = excluded.repository, actor = excluded.actor,
                 expires_at_ms = excluded.expires_at_ms, armed_at_ms = excluded.armed_at_ms",
        )
        .and_then(|mut st| {
            st.execute(params![
                hold.job_id,
                hold.forge,
                hold.repository,
                hold.actor,
                to_ms(hold.expires_at),
                to_ms(hold.armed_at)
            ])
        })
        .map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::ConstraintViolation) => StoreError::UnknownJob {
                id: hold.job_id.clone(),
            },
            _ => sql_err(&self.path, "record a held VM")(e),
        })?;
        Ok(())
    }

    /// Forgets a held VM once it is destroyed. Forgetting one that is not
    /// recorded is fine.
    pub fn forget_hold(&self, job_id: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.prepare_cached("DELETE FROM debug_holds WHERE job_id = ?1")
            .and_then(|mut st| st.execute([job_id]))
            .map_err(self.err("forget a held VM"))?;
        Ok(())
    }

    /// Every held VM, soonest expiry first.
    pub fn holds(&self) -> Result<Vec<HoldRow>, StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "SELECT job_id, forge, repository, actor, expires_at_ms, armed_at_ms
             FROM debug_holds ORDER BY expires_at_ms, job_id",
        )
        .and_then(|mut st| {
            st.query_map([], |r| {
                Ok(HoldRow {
                    job_id: r.get(0)?,
                    forge: r.get(1)?,
                    repository: r.get(2)?,
                    actor: r.get(3)?,
                    expires_at: from_ms(r.get(4)?),
                    armed_at: from_ms(r.get(5)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(self.err("list held VMs"))
    }

    /// Forgets every held VM and returns how many there were. At start-up,
    /// after [`super::reconcile_vms`]: the VMs a previous run held are
    /// destroyed by then (or stay in `vms` for the next start), and no
    /// window of the previous run can be reopened.
    pub fn clear_holds(&self) -> Result<usize, StoreError> {
        let conn = self.conn();
        conn.prepare_cached("DELETE FROM debug_holds")
            .and_then(|mut st| st.execute([]))
            .map_err(self.err("forget the held VMs"))
    }
}

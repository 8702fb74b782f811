//! VM resources: each job's directory and, once spawned, QEMU's pid and port,
//! recorded before they exist so that a restarted daemon finds leftovers.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{ErrorCode, params};

use super::{Store, StoreError, from_ms, sql_err, to_ms};

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

impl Store {
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

    /// Forgets a job's VM once QEMU is gone and its directory removed.
    pub fn forget_vm(&self, job_id: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.prepare_cached("DELETE FROM vms WHERE job_id = ?1")
            .and_then(|mut st| st.execute([job_id]))
            .map_err(self.err("forget a VM"))?;
        Ok(())
    }
}

//! How jobs are named. A job id names the job's directory under
//! `<state_dir>/jobs/`, its VM's host name and, for the daemon, its records
//! in the state database.
//!
//! The rules, and where each lives:
//! - `solstice exec`, `doctor --boot`, `bench` and the tests name their runs
//!   `<prefix>-<16 hex>` ([`new_job_id`]); the guest's host name is
//!   `solstice-` and the id's first 12 letters and digits ([`hostname`]).
//! - The daemon names its jobs `task-<forge>-<task id>-<8 hex>`
//!   ([`crate::store::daemon_job_id`]), and the start-up reconciliation
//!   removes a stray directory only when its name has that form
//!   ([`crate::store::is_daemon_job_id`]): so `exec` runs that share the
//!   state directory are never touched. Both stay beside the reconciliation
//!   in the store, which may not name this module.
//! - Every id is 1 to 64 bytes of ASCII letters, digits, `.`, `_`, `-`, and
//!   neither `.` nor `..`: `vm::Vm::start` refuses any other, since the id
//!   becomes a path component. The VM also names QEMU (`-name solstice-<id>`)
//!   and the seed's instance id (`solstice-<id>-<8 hex>`) after it.

/// A fresh job id: `<prefix>-<16 hex>`.
pub fn new_job_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// The guest's host name for job `id`: `solstice-` and the first 12 ASCII
/// letters and digits of the id.
pub fn hostname(id: &str) -> String {
    let short: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    format!("solstice-{short}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{daemon_job_id, is_daemon_job_id};

    #[test]
    fn new_ids_and_host_names() {
        let id = new_job_id("exec");
        assert!(id.starts_with("exec-") && id.len() == 21, "{id}");
        assert_ne!(new_job_id("exec"), new_job_id("exec"));
        assert_eq!(hostname("exec-0123456789abcdef"), "solstice-exec01234567");
        assert_eq!(hostname("task-a.b_c"), "solstice-taskabc");
        let daemon = daemon_job_id("codeberg", 42);
        assert!(hostname(&daemon).starts_with("solstice-taskcodeberg"));
    }

    #[test]
    fn local_runs_are_never_taken_for_daemon_jobs() {
        // The reconciliation removes stray daemon job directories only.
        for prefix in ["exec", "doctor", "bench", "test"] {
            let id = new_job_id(prefix);
            assert!(!is_daemon_job_id(&id), "{id}");
        }
        assert!(is_daemon_job_id(&daemon_job_id("codeberg", 42)));
    }
}

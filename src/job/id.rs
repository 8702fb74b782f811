//! How jobs are named: every job-id rule, in one place. A job id names the
//! job's directory under `<state_dir>/jobs/`, its VM's host name, its QEMU
//! process (`-name solstice-<id>`), the seed's instance id and, for the
//! daemon, its records in the state database.
//!
//! - Every id is 1 to 64 bytes of ASCII letters, digits, `.`, `_`, `-`, and
//!   neither `.` nor `..` ([`is_valid`]): `vm::Vm::start` refuses any other,
//!   since the id becomes a path component.
//! - `solstice exec`, `doctor --boot`, `bench` and the tests name their runs
//!   `<prefix>-<16 hex>` ([`new_job_id`]).
//! - The daemon names its jobs `task-<forge>-<task id>-<8 hex>`
//!   ([`daemon_job_id`]), and the start-up reconciliation removes a stray
//!   directory only when its name has that form ([`is_daemon_job_id`]): so
//!   `exec` runs that share the state directory are never touched.
//! - The guest's host name is `solstice-` and the id's first 12 letters and
//!   digits ([`hostname`]).
//!
//! This module is a leaf (it names nothing else in the crate), so the lower
//! floors that keep ids (`vm`, `store`) use it too.

/// The longest job id, in bytes.
pub const MAX_JOB_ID_LEN: usize = 64;

/// How every daemon job id starts.
const DAEMON_PREFIX: &str = "task-";

/// The bytes a job id (and so its directory's name) may hold: ASCII letters,
/// digits, `.`, `_`, `-`.
pub fn is_job_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'
}

/// True for an id that can name a job directory: 1 to 64 job-id bytes, and
/// neither `.` nor `..`.
pub fn is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_JOB_ID_LEN
        && id != "."
        && id != ".."
        && id.bytes().all(is_job_id_byte)
}

/// A fresh job id for a run outside the daemon: `<prefix>-<16 hex>`.
pub fn new_job_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// True for names the daemon gives its jobs (and so their directories):
/// `task-` then only ASCII letters, digits, `.`, `_`, `-`, at most 64 bytes.
pub fn is_daemon_job_id(name: &str) -> bool {
    name.len() > DAEMON_PREFIX.len()
        && name.len() <= MAX_JOB_ID_LEN
        && name.starts_with(DAEMON_PREFIX)
        && name.bytes().all(is_job_id_byte)
}

/// A fresh daemon job id, `task-<forge>-<task id>-<8 hex>`: characters of the
/// forge name outside `[A-Za-z0-9._-]` become `_`, and it is shortened so that
/// the id fits in 64 bytes. Always satisfies [`is_daemon_job_id`].
pub fn daemon_job_id(forge: &str, task_id: i64) -> String {
    let tail = format!("-{task_id}-{:08x}", rand::random::<u32>());
    let room = MAX_JOB_ID_LEN - DAEMON_PREFIX.len() - tail.len();
    let forge: String = forge
        .chars()
        .map(|c| {
            if c.is_ascii() && is_job_id_byte(c as u8) {
                c
            } else {
                '_'
            }
        })
        .take(room)
        .collect();
    format!("{DAEMON_PREFIX}{forge}{tail}")
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

    #[test]
    fn job_ids_are_checked() {
        assert!(is_valid("job-1.a_b"));
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(!is_valid(bad), "{bad}");
        }
        assert!(is_valid(&"a".repeat(64)));
        assert!(!is_valid(&"a".repeat(65)));
    }

    #[test]
    fn new_ids_and_host_names() {
        let id = new_job_id("exec");
        assert!(id.starts_with("exec-") && id.len() == 21, "{id}");
        assert!(is_valid(&id), "{id}");
        assert_ne!(new_job_id("exec"), new_job_id("exec"));
        assert_eq!(hostname("exec-0123456789abcdef"), "solstice-exec01234567");
        assert_eq!(hostname("task-a.b_c"), "solstice-taskabc");
        let daemon = daemon_job_id("codeberg", 42);
        assert!(hostname(&daemon).starts_with("solstice-taskcodeberg"));
    }

    #[test]
    fn daemon_job_ids() {
        assert!(is_daemon_job_id("task-codeberg-42-0a1b2c3d"));
        for bad in [
            "task-",
            "exec-0123456789abcdef",
            "bench-0123456789abcdef",
            "task-a/b",
            "task-a b",
            "keep",
            "",
        ] {
            assert!(!is_daemon_job_id(bad), "{bad}");
        }
        assert!(!is_daemon_job_id(&format!("task-{}", "a".repeat(60))));

        let id = daemon_job_id("code berg/ü", 42);
        assert!(is_daemon_job_id(&id), "{id}");
        assert!(is_valid(&id), "{id}");
        assert!(id.starts_with("task-code_berg__-42-"), "{id}");
        let long = daemon_job_id(&"f".repeat(200), i64::MAX);
        assert!(is_daemon_job_id(&long), "{long}");
        assert_ne!(daemon_job_id("a", 1), daemon_job_id("a", 1));
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

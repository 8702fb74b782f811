//! Every rule about job ids, in one place. A job id names the job's
//! directory under `<state_dir>/jobs/`, its VM's host name and, for the
//! daemon, its records in the state database.
//!
//! - Every id is 1 to [`MAX_LEN`] bytes of ASCII letters, digits, `.`, `_`,
//!   `-`, and neither `.` nor `..` ([`is_valid`]): it is safe as one path
//!   component.
//! - `solstice exec`, `doctor --boot`, `bench` and the tests name their runs
//!   `<prefix>-<16 hex>` ([`new_job_id`]).
//! - The daemon names its jobs `task-<forge>-<task id>-<8 hex>`
//!   ([`daemon_job_id`]); only such names are ever removed as strays by the
//!   start-up reconciliation ([`is_daemon_job_id`]), so directories of
//!   `exec` runs sharing the state directory are never touched.
//!
//! A leaf: it imports nothing of the crate, so the lower floors (`vm`,
//! `store`) use it too.

/// Longest job id, in bytes.
pub const MAX_LEN: usize = 64;
/// What every daemon job id starts with.
const DAEMON_PREFIX: &str = "task-";

/// A byte a job id may hold: ASCII letter, digit, `.`, `_`, `-`.
pub fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'
}

/// Whether `id` can name a job (and so its directory): 1 to [`MAX_LEN`]
/// bytes of ASCII letters, digits, `.`, `_`, `-`, and not `.` or `..`.
pub fn is_valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id != "." && id != ".." && id.bytes().all(is_id_byte)
}

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

/// True for names the daemon gives its jobs (and so their directories):
/// `task-` then only ASCII letters, digits, `.`, `_`, `-`, at most 64 bytes.
pub fn is_daemon_job_id(name: &str) -> bool {
    name.len() > DAEMON_PREFIX.len()
        && name.len() <= MAX_LEN
        && name.starts_with(DAEMON_PREFIX)
        && name.bytes().all(is_id_byte)
}

/// A fresh daemon job id, `task-<forge>-<task id>-<8 hex>`: characters of the
/// forge name outside `[A-Za-z0-9._-]` become `_`, and it is shortened so that
/// the id fits in 64 bytes. Always satisfies [`is_daemon_job_id`].
pub fn daemon_job_id(forge: &str, task_id: i64) -> String {
    let tail = format!("-{task_id}-{:08x}", rand::random::<u32>());
    let room = MAX_LEN - DAEMON_PREFIX.len() - tail.len();
    let forge: String = forge
        .chars()
        .map(|c| {
            if c.is_ascii() && is_id_byte(c as u8) {
                c
            } else {
                '_'
            }
        })
        .take(room)
        .collect();
    format!("{DAEMON_PREFIX}{forge}{tail}")
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
        assert!(!is_valid(&"a".repeat(65)));
    }

    #[test]
    fn new_ids_and_host_names() {
        let id = new_job_id("exec");
        assert!(id.starts_with("exec-") && id.len() == 21, "{id}");
        assert!(is_valid(&id) && !is_daemon_job_id(&id));
        assert_ne!(new_job_id("exec"), new_job_id("exec"));
        assert_eq!(hostname("exec-0123456789abcdef"), "solstice-exec01234567");
        assert_eq!(hostname("task-a.b_c"), "solstice-taskabc");
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
}

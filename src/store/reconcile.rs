//! Start-up reconciliation: kill and remove the VMs a previous run left.
//!
//! Rules, in order of care:
//! - A process is killed only if its `/proc/<pid>/cmdline` mentions the job
//!   directory as a whole path component (`…/jobs/task-a-1-x` does not match
//!   `…/jobs/task-a-1-xy`). A recorded pid that now belongs to another program
//!   (pid reuse) is left alone. Processes not recorded (QEMU spawned just
//!   before the crash, before its pid was recorded) are found by the same
//!   `/proc` scan.
//! - A recorded directory is removed only if its last component is the job id
//!   (the layout `<jobs_dir>/<job id>` that `vm::Vm` creates), and only once
//!   every process using it is gone; otherwise the record is kept for the next
//!   start.
//! - Under `jobs_dir`, a directory no record mentions is removed only if its
//!   name looks like a daemon job id ([`is_daemon_job_id`]: `task-` followed
//!   by letters, digits, `.`, `_`, `-`). Directories of `solstice exec`
//!   (`exec-…`) and `bench` (`bench-…`) runs, which may share the state
//!   directory and run right now, are never touched; neither are files or
//!   symbolic links.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Store;

/// How long to wait for a killed process to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Longest job id the VM layer accepts.
const MAX_JOB_ID_LEN: usize = 64;
/// Prefix of every daemon job id.
const DAEMON_PREFIX: &str = "task-";

/// A process killed during reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KilledProcess {
    pub pid: u32,
    /// The job directory its command line mentioned.
    pub dir: PathBuf,
}

/// What [`reconcile_vms`] did, for logging.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub killed: Vec<KilledProcess>,
    /// Job directories removed (recorded ones and strays).
    pub removed_dirs: Vec<PathBuf>,
    /// Job ids whose VM record was forgotten.
    pub forgotten: Vec<String>,
    /// What could not be done, one sentence each; the records concerned are
    /// kept so the next start tries again.
    pub problems: Vec<String>,
}

impl ReconcileReport {
    /// True when there was nothing to clean up and nothing went wrong.
    pub fn is_empty(&self) -> bool {
        self.killed.is_empty()
            && self.removed_dirs.is_empty()
            && self.forgotten.is_empty()
            && self.problems.is_empty()
    }
}

/// True for names the daemon gives its jobs (and so their directories):
/// `task-` then only ASCII letters, digits, `.`, `_`, `-`, at most 64 bytes.
pub fn is_daemon_job_id(name: &str) -> bool {
    name.len() > DAEMON_PREFIX.len()
        && name.len() <= MAX_JOB_ID_LEN
        && name.starts_with(DAEMON_PREFIX)
        && name.bytes().all(is_id_byte)
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

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'
}

/// Kills what the VM records in `store` and stray job directories under
/// `jobs_dir` point to, removes the directories and forgets the records.
/// Blocking (it waits for killed processes); run it before taking jobs.
/// See the module documentation for the safety rules.
pub fn reconcile_vms(store: &Store, jobs_dir: &Path) -> ReconcileReport {
    let mut report = ReconcileReport::default();
    let records = match store.vm_records() {
        Ok(r) => r,
        Err(e) => {
            report
                .problems
                .push(format!("Could not list the recorded VMs: {e}"));
            return report;
        }
    };
    let procs = processes();
    let mut recorded: BTreeSet<Vec<u8>> = BTreeSet::new();
    for vm in &records {
        if let Some(name) = vm.dir.file_name() {
            recorded.insert(name.as_bytes().to_vec());
        }
        recorded.insert(vm.job_id.as_bytes().to_vec());
        if vm.dir.file_name().and_then(|n| n.to_str()) != Some(vm.job_id.as_str()) {
            report.problems.push(format!(
                "Left {} (recorded for job {}) alone: its name is not the job id",
                vm.dir.display(),
                vm.job_id
            ));
            continue;
        }
        let needles = needles(&vm.dir);
        let mut pids: BTreeSet<u32> = users(&procs, &needles);
        if let Some(pid) = vm.pid {
            if cmdline(pid).is_some_and(|args| mentions(&args, &needles)) {
                pids.insert(pid);
            }
        }
        if !kill_all(&pids, &vm.dir, &needles, &mut report) {
            continue;
        }
        if !remove_dir(&vm.dir, &mut report) {
            continue;
        }
        match store.forget_vm(&vm.job_id) {
            Ok(()) => report.forgotten.push(vm.job_id.clone()),
            Err(e) => report
                .problems
                .push(format!("Could not forget the VM of job {}: {e}", vm.job_id)),
        }
    }

    let entries = match std::fs::read_dir(jobs_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return report,
        Err(e) => {
            report
                .problems
                .push(format!("Could not read {}: {e}", jobs_dir.display()));
            return report;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else {
            continue;
        };
        if !is_daemon_job_id(name_str) || recorded.contains(name.as_bytes()) {
            continue;
        }
        // `DirEntry::file_type` does not follow symbolic links.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = entry.path();
        let needles = needles(&dir);
        let pids = users(&procs, &needles);
        if kill_all(&pids, &dir, &needles, &mut report) {
            remove_dir(&dir, &mut report);
        }
    }
    report
}

/// Spellings of `dir` that a command line may contain: as recorded, absolute,
/// and with symbolic links resolved (`vm::Vm` canonicalizes the jobs directory).
fn needles(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = vec![dir.as_os_str().as_bytes().to_vec()];
    if let Ok(abs) = std::path::absolute(dir) {
        out.push(abs.as_os_str().as_bytes().to_vec());
    }
    let canonical = std::fs::canonicalize(dir).ok().or_else(|| {
        let parent = std::fs::canonicalize(dir.parent()?).ok()?;
        Some(parent.join(dir.file_name()?))
    });
    if let Some(c) = canonical {
        out.push(c.as_os_str().as_bytes().to_vec());
    }
    out.retain(|n| !n.is_empty());
    out.sort();
    out.dedup();
    out
}

/// True if an argument contains a needle not followed by a job-id character,
/// so that the match ends at a path-component boundary.
fn mentions(args: &[Vec<u8>], needles: &[Vec<u8>]) -> bool {
    args.iter().any(|arg| {
        needles.iter().any(|needle| {
            arg.windows(needle.len()).enumerate().any(|(i, w)| {
                w == needle.as_slice() && arg.get(i + needle.len()).is_none_or(|&b| !is_id_byte(b))
            })
        })
    })
}

/// The arguments of a process; `None` if it is gone. Zombies and kernel
/// threads have none.
fn cmdline(pid: u32) -> Option<Vec<Vec<u8>>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
    )
}

/// Every other process with its arguments.
fn processes() -> Vec<(u32, Vec<Vec<u8>>)> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| Some((pid, cmdline(pid)?)))
        .collect()
}

fn users(procs: &[(u32, Vec<Vec<u8>>)], needles: &[Vec<u8>]) -> BTreeSet<u32> {
    procs
        .iter()
        .filter(|(_, args)| mentions(args, needles))
        .map(|(pid, _)| *pid)
        .collect()
}

/// SIGKILLs `pids` and waits until none of them mentions `dir` any more
/// (gone, a zombie, or the pid reused). False if one could not be killed.
fn kill_all(
    pids: &BTreeSet<u32>,
    dir: &Path,
    needles: &[Vec<u8>],
    report: &mut ReconcileReport,
) -> bool {
    let mut waiting = Vec::new();
    let mut ok = true;
    for &pid in pids {
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        if raw <= 1 {
            continue;
        }
        match kill(Pid::from_raw(raw), Signal::SIGKILL) {
            Ok(()) => {
                report.killed.push(KilledProcess {
                    pid,
                    dir: dir.to_path_buf(),
                });
                waiting.push(pid);
            }
            Err(Errno::ESRCH) => {}
            Err(e) => {
                report.problems.push(format!(
                    "Could not kill process {pid} using {}: {e}",
                    dir.display()
                ));
                ok = false;
            }
        }
    }
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        waiting.retain(|&pid| cmdline(pid).is_some_and(|args| mentions(&args, needles)));
        if waiting.is_empty() {
            return ok;
        }
        if Instant::now() >= deadline {
            for pid in waiting {
                report.problems.push(format!(
                    "Process {pid} using {} still runs {} s after SIGKILL",
                    dir.display(),
                    KILL_WAIT.as_secs()
                ));
            }
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes a job directory; a missing one is fine. False on failure.
fn remove_dir(dir: &Path, report: &mut ReconcileReport) -> bool {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            report.removed_dirs.push(dir.to_path_buf());
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            report
                .problems
                .push(format!("Could not remove {}: {e}", dir.display()));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    #[test]
    fn mentions_needs_a_component_boundary() {
        let n = vec![b"/s/jobs/task-a-1-x".to_vec()];
        assert!(mentions(
            &args(&["qemu", "-qmp", "unix:/s/jobs/task-a-1-x/qmp.sock"]),
            &n
        ));
        assert!(mentions(&args(&["/s/jobs/task-a-1-x"]), &n));
        assert!(mentions(&args(&["file=/s/jobs/task-a-1-x,if=none"]), &n));
        assert!(!mentions(&args(&["/s/jobs/task-a-1-xy/qmp.sock"]), &n));
        assert!(!mentions(&args(&["/s/jobs/task-a-1-x.old"]), &n));
        assert!(!mentions(&args(&["sleep", "100"]), &n));
        assert!(!mentions(&[], &n));
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
        assert!(id.starts_with("task-code_berg__-42-"), "{id}");
        let long = daemon_job_id(&"f".repeat(200), i64::MAX);
        assert!(is_daemon_job_id(&long), "{long}");
        assert_ne!(daemon_job_id("a", 1), daemon_job_id("a", 1));
    }

    #[test]
    fn needles_include_the_resolved_path() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
        let n = needles(&tmp.path().join("link/task-a-1-x"));
        let resolved = std::fs::canonicalize(&real).unwrap().join("task-a-1-x");
        assert!(
            n.contains(&resolved.as_os_str().as_bytes().to_vec()),
            "{n:?}"
        );
    }
}

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
//!   name looks like a daemon job id ([`crate::job::id::is_daemon_job_id`]: `task-` followed
//!   by letters, digits, `.`, `_`, `-`). Directories of `solstice exec`
//!   (`exec-…`) and `bench` (`bench-…`) runs, which may share the state
//!   directory and run right now, are never touched; neither are files or
//!   symbolic links.
//!
//! Warm guests ([`reconcile_warm`]) are simpler: nothing under
//! `<state_dir>/warm/` survives a restart (their keys lived in the previous
//! run's memory only), so every process whose command line names that
//! directory or a recorded warm guest's directory is killed, every entry of
//! it removed and every warm record forgotten. It runs before
//! [`reconcile_vms`]: a guest a job took had its directory moved to
//! `<jobs_dir>/<job id>`, but its QEMU's command line still names the old
//! `warm/<id>` path, so only this sweep finds that process; the job's own
//! reconciliation then removes the moved directory.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Store;
use crate::job::id::is_daemon_job_id;
use crate::vm::process::{ProcessInfo, cmdline, dir_spellings, kill_and_wait, mentions, processes};

/// How long to wait for a killed process to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A process killed during reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KilledProcess {
    pub pid: u32,
    /// The job (or warm) directory its command line mentioned.
    pub dir: PathBuf,
}

/// What [`reconcile_vms`] did, for logging.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub killed: Vec<KilledProcess>,
    /// Job directories removed (recorded ones and strays); for
    /// [`reconcile_warm`], the entries of the warm directory removed.
    pub removed_dirs: Vec<PathBuf>,
    /// Job ids whose VM record was forgotten; for [`reconcile_warm`], the
    /// warm guests' ids.
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
        let needles = dir_spellings(&vm.dir);
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
        let needles = dir_spellings(&dir);
        let pids = users(&procs, &needles);
        if kill_all(&pids, &dir, &needles, &mut report) {
            remove_dir(&dir, &mut report);
        }
    }
    report
}

/// Kills every process whose command line names `warm_dir` (as a whole path
/// component, so anything under it) or a recorded warm guest's directory,
/// removes every entry of `warm_dir` (guests and templates; `warm_dir`
/// itself stays) and forgets the warm records. Blocking; run it at start-up
/// before [`reconcile_vms`] (see the module documentation for why).
///
/// A recorded directory outside `warm_dir` is removed only if its last
/// component is the guest's id. A record whose processes could not be
/// killed, or whose directory could not be removed, is kept for the next
/// start; so is an entry of `warm_dir` that a surviving process still names.
pub fn reconcile_warm(store: &Store, warm_dir: &Path) -> ReconcileReport {
    let mut report = ReconcileReport::default();
    let rows = match store.warm_rows() {
        Ok(r) => r,
        Err(e) => {
            // The directory is still swept: that is what matters most.
            report
                .problems
                .push(format!("Could not list the recorded warm guests: {e}"));
            Vec::new()
        }
    };
    let procs = processes();
    // A pid is killed (and reported) once, even when several directories
    // name it.
    let mut done: BTreeSet<u32> = BTreeSet::new();
    let mut kill_users = |dir: &Path, recorded_pid: Option<u32>, report: &mut ReconcileReport| {
        let needles = dir_spellings(dir);
        let mut pids = users(&procs, &needles);
        if let Some(pid) = recorded_pid {
            if cmdline(pid).is_some_and(|args| mentions(&args, &needles)) {
                pids.insert(pid);
            }
        }
        pids.retain(|p| !done.contains(p));
        done.extend(&pids);
        kill_all(&pids, dir, &needles, report)
    };

    // 1. Recorded guests, most precisely reported.
    let mut killed_ok: Vec<bool> = Vec::with_capacity(rows.len());
    for row in &rows {
        killed_ok.push(kill_users(&row.dir, row.pid, &mut report));
    }
    // 2. Every entry of the warm directory, then anything else that names
    //    it (a guest whose directory was moved to a job's, or removed).
    let entries: Vec<std::fs::DirEntry> = match std::fs::read_dir(warm_dir) {
        Ok(rd) => rd.flatten().collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            report
                .problems
                .push(format!("Could not read {}: {e}", warm_dir.display()));
            Vec::new()
        }
    };
    for entry in &entries {
        kill_users(&entry.path(), None, &mut report);
    }
    kill_users(warm_dir, None, &mut report);

    // 3. Remove what no surviving process names any more.
    let still_running = processes();
    let in_use = |dir: &Path| -> Option<u32> {
        let needles = dir_spellings(dir);
        still_running
            .iter()
            .find(|p| !p.is_zombie() && p.mentions_dir(&needles))
            .map(|p| p.pid)
    };
    for entry in &entries {
        let path = entry.path();
        if let Some(pid) = in_use(&path) {
            report.problems.push(format!(
                "Left {} in place: process {pid} still uses it",
                path.display()
            ));
            continue;
        }
        // `DirEntry::file_type` does not follow symbolic links: a link is
        // removed, never what it points to.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_dir(&path, &mut report);
        } else {
            match std::fs::remove_file(&path) {
                Ok(()) => report.removed_dirs.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => report
                    .problems
                    .push(format!("Could not remove {}: {e}", path.display())),
            }
        }
    }

    // 4. Forget the records whose guest is gone.
    for (row, killed) in rows.iter().zip(killed_ok) {
        if !killed {
            continue;
        }
        let under_warm_dir = row.dir.parent() == Some(warm_dir);
        if row.dir.exists() {
            if under_warm_dir {
                // Its removal failed above (reported there).
                continue;
            }
            if row.dir.file_name().and_then(|n| n.to_str()) != Some(row.id.as_str()) {
                report.problems.push(format!(
                    "Left {} (recorded for warm guest {}) alone: its name is not the guest's id",
                    row.dir.display(),
                    row.id
                ));
                continue;
            }
            if in_use(&row.dir).is_some() || !remove_dir(&row.dir, &mut report) {
                continue;
            }
        }
        match store.forget_warm(&row.id) {
            Ok(()) => report.forgotten.push(row.id.clone()),
            Err(e) => report
                .problems
                .push(format!("Could not forget warm guest {}: {e}", row.id)),
        }
    }
    report
}

fn users(procs: &[ProcessInfo], needles: &[Vec<u8>]) -> BTreeSet<u32> {
    procs
        .iter()
        .filter(|p| p.mentions_dir(needles))
        .map(|p| p.pid)
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
    let outcome = kill_and_wait(pids.iter().copied(), KILL_WAIT, |pid| {
        cmdline(pid).is_some_and(|args| mentions(&args, needles))
    });
    for &pid in &outcome.killed {
        report.killed.push(KilledProcess {
            pid,
            dir: dir.to_path_buf(),
        });
    }
    for (pid, e) in &outcome.failed {
        report.problems.push(format!(
            "Could not kill process {pid} using {}: {e}",
            dir.display()
        ));
    }
    for pid in &outcome.survivors {
        report.problems.push(format!(
            "Process {pid} using {} still runs {} s after SIGKILL",
            dir.display(),
            KILL_WAIT.as_secs()
        ));
    }
    outcome.failed.is_empty() && outcome.survivors.is_empty()
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

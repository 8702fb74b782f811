//! Spawning QEMU so that it can never outlive Solstice, and killing it; and
//! the one `/proc` scan that finds processes (by the job directory their
//! command line mentions) for start-up reconciliation, the leak checker and
//! the tests.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

type Request = (
    Command,
    tokio::sync::oneshot::Sender<std::io::Result<Unclaimed>>,
);

/// A spawned child on its way to the caller. If it is dropped before the
/// caller claims it (the caller's future was dropped after the spawner
/// handed it over, with the child still inside the channel), the child is
/// killed: nobody else would ever kill it.
struct Unclaimed(Option<Child>);

impl Unclaimed {
    fn claim(mut self) -> Option<Child> {
        self.0.take()
    }
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if let Some(mut orphan) = self.0.take() {
            kill_group(orphan.id());
            let _ = orphan.kill();
            let _ = orphan.wait();
        }
    }
}

/// Spawns `cmd` in its own process group with `PR_SET_PDEATHSIG = SIGKILL`.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not
/// when the process does. Tokio's blocking-pool threads exit after being idle
/// and a `current_thread` runtime may live on a short-lived thread, so forking
/// from whatever thread runs this future could kill QEMU at a random moment.
/// Every spawn therefore goes through one dedicated spawner thread that lives
/// as long as the process; QEMU then dies exactly when Solstice dies.
pub async fn spawn_guarded(cmd: Command) -> std::io::Result<Child> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner()
        .lock()
        .map_err(|_| std::io::Error::other("spawner lock poisoned"))?
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    rx.await
        .map_err(|_| std::io::Error::other("spawner thread is gone"))??
        .claim()
        .ok_or_else(|| std::io::Error::other("the spawned process was already claimed"))
}

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        let spawned = std::thread::Builder::new()
            .name("solstice-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // The caller may go away (its future dropped, e.g. a job
                    // cancelled mid-spawn) before or after this send: either
                    // way the child's `Unclaimed` wrapper is dropped, which
                    // kills it, so it cannot outlive this moment.
                    let _ = reply.send(spawn_now(&mut cmd).map(|c| Unclaimed(Some(c))));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the QEMU spawner thread");
        }
        Mutex::new(tx)
    })
}

/// Spawns on the current thread (own process group, parent-death SIGKILL).
/// Use for short-lived helpers whose caller waits for them; QEMU VMs go through
/// [`spawn_guarded`].
pub fn spawn_now(cmd: &mut Command) -> std::io::Result<Child> {
    let parent = std::process::id() as i32;
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before exec. It only calls
    // async-signal-safe functions (prctl, getppid, kill via raise) and does not
    // allocate or take locks.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The parent may have died between fork and prctl.
            if nix::unistd::getppid().as_raw() != parent {
                let _ = nix::sys::signal::raise(Signal::SIGKILL);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// SIGKILLs the process group led by `pid` (ignores a group that is already gone).
pub fn kill_group(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        if raw > 0 {
            let _ = killpg(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
}

// ---- Finding and killing processes through `/proc` ----

/// One process as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Its arguments (`/proc/<pid>/cmdline`); zombies and kernel threads have none.
    pub args: Vec<Vec<u8>>,
    /// The command name from `/proc/<pid>/stat` (at most 15 bytes), if readable.
    pub comm: Option<String>,
    /// The state letter (`R`, `S`, `Z`, …), if readable.
    pub state: Option<char>,
    /// The parent's pid, if readable.
    pub parent: Option<u32>,
}

impl ProcessInfo {
    /// True for a zombie: exited, not yet reaped by its parent.
    pub fn is_zombie(&self) -> bool {
        self.state == Some('Z')
    }

    /// The arguments as text (invalid UTF-8 replaced).
    pub fn args_lossy(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    /// True if an argument contains a spelling of a job directory (see
    /// [`dir_spellings`]) as a whole path component.
    pub fn mentions_dir(&self, spellings: &[Vec<u8>]) -> bool {
        mentions(&self.args, spellings)
    }
}

/// Every process but this one, with what `/proc` says of it: the one `/proc`
/// scan that start-up reconciliation, the leak checker and the tests share.
/// A process that is gone before its `cmdline` is read is left out.
pub fn processes() -> Vec<ProcessInfo> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(process)
        .collect()
}

/// What `/proc` says of `pid`; `None` if it is gone.
pub fn process(pid: u32) -> Option<ProcessInfo> {
    let args = cmdline(pid)?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let (comm, state, parent) = stat.as_deref().map(parse_stat).unwrap_or_default();
    Some(ProcessInfo {
        pid,
        args,
        comm,
        state,
        parent,
    })
}

/// The arguments of a process; `None` if it is gone. Zombies and kernel
/// threads have none.
pub fn cmdline(pid: u32) -> Option<Vec<Vec<u8>>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
    )
}

/// Command name, state and parent pid from a `/proc/<pid>/stat` line. The
/// name is between the first `(` and the last `)`: it may hold either.
fn parse_stat(stat: &str) -> (Option<String>, Option<char>, Option<u32>) {
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return (None, None, None);
    };
    let comm = stat.get(open + 1..close).map(str::to_string);
    let mut rest = stat.get(close + 1..).unwrap_or("").split_whitespace();
    let state = rest.next().and_then(|s| s.chars().next());
    let parent = rest.next().and_then(|s| s.parse().ok());
    (comm, state, parent)
}

/// Spellings of a job directory that a command line may contain: as given,
/// absolute, and with symbolic links resolved (`Vm` canonicalizes the jobs
/// directory).
pub fn dir_spellings(dir: &Path) -> Vec<Vec<u8>> {
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

/// True if an argument contains a spelling not followed by a job-id
/// character, so that the match ends at a path-component boundary
/// (`…/jobs/task-a-1-x` does not match `…/jobs/task-a-1-xy`).
pub fn mentions(args: &[Vec<u8>], spellings: &[Vec<u8>]) -> bool {
    args.iter().any(|arg| {
        spellings.iter().any(|needle| {
            arg.windows(needle.len()).enumerate().any(|(i, w)| {
                w == needle.as_slice()
                    && arg
                        .get(i + needle.len())
                        .is_none_or(|&b| !crate::job::id::is_job_id_byte(b))
            })
        })
    })
}

/// What [`kill_and_wait`] did.
#[derive(Debug, Default)]
pub struct KillOutcome {
    /// Processes sent SIGKILL.
    pub killed: Vec<u32>,
    /// Processes that could not be signalled, and why.
    pub failed: Vec<(u32, Errno)>,
    /// Killed processes still matching `still_there` when the wait ended.
    pub survivors: Vec<u32>,
}

/// SIGKILLs `pids` (never pid 0 or 1; a process already gone is fine) and
/// waits up to `wait` until `still_there` is false for each of them (gone, a
/// zombie, or the pid reused).
pub fn kill_and_wait(
    pids: impl IntoIterator<Item = u32>,
    wait: Duration,
    still_there: impl Fn(u32) -> bool,
) -> KillOutcome {
    let mut out = KillOutcome::default();
    for pid in pids {
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        if raw <= 1 {
            continue;
        }
        match kill(Pid::from_raw(raw), Signal::SIGKILL) {
            Ok(()) => out.killed.push(pid),
            Err(Errno::ESRCH) => {}
            Err(e) => out.failed.push((pid, e)),
        }
    }
    let deadline = Instant::now() + wait;
    let mut waiting = out.killed.clone();
    loop {
        waiting.retain(|&pid| still_there(pid));
        if waiting.is_empty() || Instant::now() >= deadline {
            out.survivors = waiting;
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
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
    fn spellings_include_the_resolved_path() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
        let n = dir_spellings(&tmp.path().join("link/task-a-1-x"));
        let resolved = std::fs::canonicalize(&real).unwrap().join("task-a-1-x");
        assert!(
            n.contains(&resolved.as_os_str().as_bytes().to_vec()),
            "{n:?}"
        );
    }

    #[test]
    fn stat_lines() {
        assert_eq!(
            parse_stat("42 (qemu-system-x86) Z 7 42 42 0"),
            (Some("qemu-system-x86".into()), Some('Z'), Some(7))
        );
        assert_eq!(
            parse_stat("5 (a) b (c)) S 1 5"),
            (Some("a) b (c)".into()), Some('S'), Some(1))
        );
        assert_eq!(parse_stat("garbage"), (None, None, None));
    }

    #[test]
    fn this_scan_sees_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let me = std::process::id();
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            let found = processes()
                .into_iter()
                .find(|p| p.pid == pid && p.args.len() == 2);
            if found.is_some() || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let _ = child.kill();
        let _ = child.wait();
        let p = found.expect("the scan lists the child");
        assert_eq!(p.parent, Some(me));
        assert_eq!(p.args_lossy(), ["sleep", "30"]);
        assert!(!processes().iter().any(|p| p.pid == me));
    }
}

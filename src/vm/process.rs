//! Spawning QEMU so that it can never outlive Solstice, and killing it.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock, mpsc};

use nix::sys::signal::{Signal, killpg};
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

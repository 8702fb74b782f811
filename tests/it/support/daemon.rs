//! Running the real `solstice run` binary against a fake forge.

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `solstice run` process with its notify socket and log file.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    /// Every sd_notify message received so far (read by a thread, as
    /// systemd does, so the daemon's sends never pile up).
    received: Arc<Mutex<Vec<String>>>,
    /// A copy of `received`, refreshed by `poll_messages`.
    pub messages: Vec<String>,
}

impl Daemon {
    /// Starts `solstice run -c config` with a private NOTIFY_SOCKET and
    /// `WATCHDOG_USEC`, logging to `<dir>/daemon-<n>.log`.
    pub fn spawn(config: &Path, dir: &Path) -> Daemon {
        Self::spawn_with(config, dir, true, "2000000")
    }

    /// Like [`Daemon::spawn`]; with `read_notify` false nobody reads the
    /// notify socket (a stuck service manager), so its queue fills up.
    pub fn spawn_with(config: &Path, dir: &Path, read_notify: bool, watchdog_usec: &str) -> Daemon {
        Self::spawn_full(config, dir, read_notify, watchdog_usec, &[])
    }

    /// Like [`Daemon::spawn`], with extra environment variables.
    pub fn spawn_env(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Daemon {
        Self::spawn_full(config, dir, true, "2000000", env)
    }

    fn spawn_full(
        config: &Path,
        dir: &Path,
        read_notify: bool,
        watchdog_usec: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let sock_path = dir.join(format!("notify-{n}.sock"));
        let _ = std::fs::remove_file(&sock_path);
        let notify = UnixDatagram::bind(&sock_path).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        if !read_notify {
            // Keep the socket open, unread, for the life of the test process.
            std::mem::forget(notify);
        } else {
            let received = received.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                // Ends when the socket file's test directory is gone and
                // the process exits; a blocked recv is harmless.
                while let Ok(n) = notify.recv(&mut buf) {
                    received
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            });
        }
        let log = dir.join(format!("daemon-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_solstice"))
            .args(["run", "-c"])
            .arg(config)
            .env("SOLSTICE_LOG", "info,solstice=debug")
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", watchdog_usec)
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Daemon {
            child,
            log,
            received,
            messages: Vec::new(),
        }
    }

    /// Refreshes `messages`.
    pub fn poll_messages(&mut self) {
        self.messages = self.received.lock().unwrap().clone();
    }

    /// Waits for `READY=1`; panics with the log when it does not come.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            self.poll_messages();
            if self
                .messages
                .iter()
                .any(|m| m.lines().any(|l| l == "READY=1"))
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the daemon exited with {status} before READY=1:\n{}",
                    self.log_text()
                );
            }
        }
        panic!("no READY=1 within {timeout:?}:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.poll_messages();
                return s;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                panic!(
                    "the daemon did not exit within {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// QEMU processes whose command line mentions `dir` (a state directory).
pub fn qemu_processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    solstice::vm::process::processes()
        .into_iter()
        .filter(|p| {
            let cmd = p.args_lossy().join(" ");
            cmd.contains("qemu-system") && cmd.contains(&needle)
        })
        .map(|p| p.pid)
        .collect()
}

/// Samples the number of QEMU processes under `dir` every 50 ms until
/// `stop` returns true or `timeout` passes; returns the largest count seen.
pub async fn max_vms_while(dir: &Path, timeout: Duration, mut stop: impl FnMut() -> bool) -> usize {
    let end = Instant::now() + timeout;
    let mut max = 0;
    while Instant::now() < end && !stop() {
        max = max.max(qemu_processes_under(dir).len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    max
}

//! The guest probe at job start (home, bash, user, clock; the layout and the
//! event file are created in the same exec) and the guest clock's upkeep.

use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use super::archive::{TarFile, build_tar};
use super::clock;
use super::env;
use super::error::ProbeError;
use super::runtime::Runtime;
use crate::guest::{OutputChunk, Stream, shell_quote};

/// Upper bound for each of the clock's execs (reading, setting).
const CLOCK_EXEC_LIMIT: Duration = Duration::from_secs(15);

/// Results of the probe at job start.
pub(super) struct Probe {
    pub(super) home: String,
    pub(super) has_bash: bool,
    /// The guest user is root (else `sudo -n` is tried to set the clock).
    pub(super) root: bool,
    pub(super) clock: Option<clock::Offset>,
}

/// Longest wait for copying an action into the guest.
const QUIET_COPY_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

impl Runtime<'_> {
    /// One exec: reports `$HOME`, bash and the OS, creates the layout and writes
    /// the event file.
    pub(super) async fn probe(&self) -> Result<Probe, ProbeError> {
        let repo = env::repo_name(&self.spec.github);
        let home = match &self.runner.home {
            Some(h) => shell_quote(h),
            None => "\"$HOME\"".to_string(),
        };
        // The clock is read first: the time its line reaches the host is
        // the other half of the measurement.
        // The image's `PATH` additions count for finding bash, as in steps.
        let path = if self.runner.path_prepend.is_empty() {
            String::new()
        } else {
            format!(
                "PATH={}:\"$PATH\"; export PATH; ",
                shell_quote(&self.runner.path_prepend.join(":"))
            )
        };
        let cmd = format!(
            "{read}; {path}H={home}; echo \"solstice-home=$H\"; echo \"solstice-bash=$(command -v bash 2>/dev/null)\"; \
             echo \"solstice-uid=$(id -u 2>/dev/null)\"; \
             cd \"$H\" && mkdir -p work/{r}/{r} _temp/_solstice _temp/_github_workflow _tool && \
             cd _temp/_github_workflow && tar xmf -",
            read = clock::READ,
            r = shell_quote(&repo)
        );
        let event = self
            .spec
            .github
            .get("event")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let event_json = serde_json::to_vec_pretty(&event).unwrap_or_else(|_| b"{}".to_vec());
        let tar = build_tar(&[TarFile::file("event.json", event_json, 0o600)])
            .map_err(ProbeError::Archive)?;
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
        let exec = self.session.exec(&cmd, &tar, tx);
        let collect = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let mut clock_at = None;
            while let Some(c) = rx.recv().await {
                match c.stream {
                    Stream::Stdout => {
                        out.extend_from_slice(&c.data);
                        if clock_at.is_none() && clock_line_done(&out) {
                            clock_at = Some(std::time::SystemTime::now());
                        }
                    }
                    Stream::Stderr => err.extend_from_slice(&c.data),
                }
            }
            (out, err, clock_at)
        };
        let work = async { tokio::join!(exec, collect) };
        let deadline = tokio::time::Instant::from_std(self.job_deadline);
        let (status, (out, err, clock_at)) = tokio::select! {
            r = work => r,
            _ = self.cancel.cancelled() => return Err(ProbeError::Cancelled),
            _ = tokio::time::sleep_until(deadline) => return Err(ProbeError::TimedOut),
        };
        let status = status.map_err(ProbeError::Guest)?;
        let out = String::from_utf8_lossy(&out);
        if status != 0 {
            return Err(ProbeError::Status {
                status,
                stderr: String::from_utf8_lossy(&err).trim().to_string(),
            });
        }
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let home = field("solstice-home=");
        if home.is_empty() {
            return Err(ProbeError::NoHome);
        }
        let clock = clock::parse(&out)
            .zip(clock_at)
            .map(|(r, at)| clock::offset(r, at));
        Ok(Probe {
            home,
            has_bash: !field("solstice-bash=").is_empty(),
            root: field("solstice-uid=") == "0",
            clock,
        })
    }

    /// Sets the guest's clock from the host's when `off` says it is off (see
    /// [`clock::should_set`]) and the session is a throw-away guest. Nothing
    /// goes to the job log.
    pub(super) async fn sync_clock(&self, off: clock::Offset, at_start: bool) {
        let set = self.session.owns_clock() && clock::should_set(&off, at_start);
        tracing::debug!(
            target: "solstice::clock",
            job = %self.spec.job_id,
            at_start,
            offset = %format!("{:+.3}", off.estimate),
            low = %format!("{:+.3}", off.low),
            kind = ?off.kind,
            set,
            "guest clock measured"
        );
        if !set {
            return;
        }
        let cmd = clock::set_command(std::time::SystemTime::now(), off.kind, !self.root);
        match self.quiet_exec(&cmd).await {
            Some((_, out)) if out.contains(clock::SET_OK) => tracing::debug!(
                target: "solstice::clock",
                job = %self.spec.job_id,
                "guest clock set from the host's"
            ),
            _ => tracing::debug!(
                target: "solstice::clock",
                job = %self.spec.job_id,
                root = self.root,
                "guest clock could not be set (needs root or passwordless sudo -n); left as it is"
            ),
        }
    }

    /// Reads the guest's clock in its own exec and sets it forward if it fell behind.
    pub(super) async fn check_clock(&self) {
        let sent = std::time::SystemTime::now();
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
        let exec = self.session.exec(clock::READ, b"", tx);
        let collect = async {
            let mut out = Vec::new();
            let mut at = None;
            while let Some(c) = rx.recv().await {
                if c.stream == Stream::Stdout {
                    out.extend_from_slice(&c.data);
                    if at.is_none() && clock_line_done(&out) {
                        at = Some(std::time::SystemTime::now());
                    }
                }
            }
            (out, at)
        };
        let Ok((_, (out, at))) =
            tokio::time::timeout(CLOCK_EXEC_LIMIT, async { tokio::join!(exec, collect) }).await
        else {
            tracing::debug!(target: "solstice::clock", "guest clock: the reading timed out");
            return;
        };
        match clock::parse(&String::from_utf8_lossy(&out)).zip(at) {
            Some((r, at)) => {
                tracing::debug!(
                    target: "solstice::clock",
                    job = %self.spec.job_id,
                    round_trip = %format!("{:.3}", at.duration_since(sent).unwrap_or_default().as_secs_f64()),
                    "guest clock read after a long step"
                );
                self.sync_clock(clock::offset(r, at), false).await;
            }
            None => tracing::debug!(target: "solstice::clock", "guest clock: no reading"),
        }
    }

    /// Runs one of Solstice's own commands whose output stays out of the log;
    /// returns its status and stdout, or `None` when it failed or took too long.
    pub(super) async fn quiet_exec(&self, cmd: &str) -> Option<(u32, String)> {
        self.quiet_exec_within(cmd, b"", CLOCK_EXEC_LIMIT)
            .await
            .map(|(status, out, _)| (status, out))
    }

    /// [`Self::quiet_exec`] for a longer command (a minute at most).
    pub(super) async fn quiet_exec_long(&self, cmd: &str) -> Option<(u32, String)> {
        self.quiet_exec_within(cmd, b"", std::time::Duration::from_secs(60))
            .await
            .map(|(status, out, _)| (status, out))
    }

    /// [`Self::quiet_exec`] with `stdin` (an archive to unpack); returns the
    /// status and stderr. Cancelling the job stops the wait.
    pub(super) async fn quiet_exec_stdin(&self, cmd: &str, stdin: &[u8]) -> Option<(u32, String)> {
        tokio::select! {
            r = self.quiet_exec_within(cmd, stdin, QUIET_COPY_LIMIT) => r.map(|(status, _, err)| (status, err)),
            _ = self.cancel.cancelled() => None,
        }
    }

    async fn quiet_exec_within(
        &self,
        cmd: &str,
        stdin: &[u8],
        limit: std::time::Duration,
    ) -> Option<(u32, String, String)> {
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
        let exec = self.session.exec(cmd, stdin, tx);
        let collect = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            while let Some(c) = rx.recv().await {
                if c.stream == Stream::Stdout {
                    out.extend_from_slice(&c.data);
                } else {
                    err.extend_from_slice(&c.data);
                }
            }
            (out, err)
        };
        let (status, (out, err)) =
            tokio::time::timeout(limit, async { tokio::join!(exec, collect) })
                .await
                .ok()?;
        Some((
            status.ok()?,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        ))
    }
}

/// Whether `out` holds the whole `solstice-clock=` line.
pub(super) fn clock_line_done(out: &[u8]) -> bool {
    let p = clock::PREFIX.as_bytes();
    out.windows(p.len())
        .position(|w| w == p)
        .is_some_and(|i| out[i..].contains(&b'\n'))
}

//! Waiting for a booting guest to accept SSH logins.

use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{handshake, tcp_connect};
use super::{SshError, SshSession, SshTarget};
use crate::guest::GuestSession;

/// How long closing a successful probe's connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How to wait for a guest's SSH server.
#[derive(Debug, Clone)]
pub struct ReadyOptions {
    /// Give up after this long, counted from the call (the boot timeout).
    pub deadline: Duration,
    /// Consecutive successful probes required. OmniOS restarts sshd shortly
    /// after it first answers, so it needs 2.
    pub probes: u32,
    /// Pause between two successful probes.
    pub probe_interval: Duration,
    /// Pause after a failed attempt before the next one.
    pub poll_interval: Duration,
    /// How long to wait for the `SSH-` banner after the TCP connect.
    pub banner_timeout: Duration,
    /// Overall limit for one attempt: connect, handshake, login and probe.
    pub attempt_timeout: Duration,
}

impl Default for ReadyOptions {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(300),
            probes: 1,
            probe_interval: Duration::from_secs(2),
            poll_interval: Duration::from_millis(200),
            banner_timeout: Duration::from_millis(300),
            attempt_timeout: Duration::from_secs(20),
        }
    }
}

/// Progress of [`wait_ready`], reported after every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyProgress {
    /// Attempts made so far, from 1.
    pub attempt: u32,
    /// Time since the wait began.
    pub elapsed: Duration,
    /// Consecutive successful probes so far.
    pub successes: u32,
    /// Why the latest attempt failed, if it did.
    pub last_failure: Option<String>,
    /// The guest's SSH server has sent its banner at least once.
    pub banner_seen: bool,
}

/// Waits until the first bytes from `stream` are available: an `SSH-` banner
/// proves that the guest's server, not only the host's port forward, is up.
async fn wait_banner(
    stream: &TcpStream,
    target: &SshTarget,
    wait: Duration,
) -> Result<(), SshError> {
    let addr = target.addr;
    let peek = async {
        let mut buf = [0u8; 4];
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) => return Err(SshError::ClosedBeforeBanner { addr }),
                // Anything else (a short first read, or lines before the
                // banner, which RFC 4253 allows) is left to the handshake.
                Ok(n) if n >= 4 || buf[..n] != b"SSH-"[..n] => return Ok(()),
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => {
                    return Err(SshError::Connect {
                        addr,
                        reason: e.to_string(),
                    });
                }
            }
        }
    };
    tokio::time::timeout(wait, peek)
        .await
        .unwrap_or(Err(SshError::NoBanner { addr, wait }))
}

/// One readiness attempt: connect, see a banner, log in, run `true`.
async fn probe(
    target: &SshTarget,
    opts: &ReadyOptions,
    banner_seen: &Mutex<Option<Instant>>,
) -> Result<SshSession, SshError> {
    let addr = target.addr;
    let stream = tcp_connect(addr).await?;
    wait_banner(&stream, target, opts.banner_timeout).await?;
    if let Ok(mut seen) = banner_seen.lock() {
        seen.get_or_insert_with(Instant::now);
    }
    let session = handshake(target, stream).await?;
    // Nobody reads the probe's output: a closed receiver makes exec discard it
    // instead of blocking once the channel is full (chatty login scripts).
    let (tx, rx) = mpsc::channel(4);
    drop(rx);
    match session.exec("true", b"", tx).await {
        Ok(0) => Ok(session),
        Ok(status) => Err(SshError::ProbeFailed {
            addr,
            outcome: format!("exited with {status}"),
        }),
        Err(e) => Err(SshError::ProbeFailed {
            addr,
            outcome: format!("failed: {e}"),
        }),
    }
}

/// How the wait went, for latency figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyStats {
    /// Connection attempts made.
    pub attempts: u32,
    /// Time from the start of the wait until the server's SSH banner first
    /// arrived.
    pub first_banner: Option<Duration>,
}

/// [`wait_ready_with_stats`] without the figures.
pub async fn wait_ready(
    target: &SshTarget,
    opts: &ReadyOptions,
    cancel: &CancellationToken,
    progress: &(dyn Fn(ReadyProgress) + Send + Sync),
) -> Result<SshSession, SshError> {
    wait_ready_with_stats(target, opts, cancel, progress)
        .await
        .map(|(s, _)| s)
}

/// Polls `target` until the guest accepts a login and runs `true`
/// successfully `opts.probes` times in a row, and returns the session of the
/// last probe.
///
/// Fails with [`SshError::NotReady`] (naming the last failure) once
/// `opts.deadline` has passed, or with [`SshError::Cancelled`] when `cancel`
/// fires. `progress` is called after every attempt.
pub async fn wait_ready_with_stats(
    target: &SshTarget,
    opts: &ReadyOptions,
    cancel: &CancellationToken,
    progress: &(dyn Fn(ReadyProgress) + Send + Sync),
) -> Result<(SshSession, ReadyStats), SshError> {
    let addr = target.addr;
    let start = Instant::now();
    let end = start + opts.deadline;
    let needed = opts.probes.max(1);
    let mut attempt = 0;
    let mut successes = 0;
    let mut last: Option<SshError> = None;
    let banner_seen: Mutex<Option<Instant>> = Mutex::new(None);
    let not_ready = |attempts, last: Option<SshError>| SshError::NotReady {
        addr,
        elapsed: start.elapsed(),
        attempts,
        last: last.map(Box::new),
    };
    loop {
        let now = Instant::now();
        if now >= end {
            return Err(not_ready(attempt, last));
        }
        attempt += 1;
        let budget = opts.attempt_timeout.min(end - now);
        let cut_short = budget < opts.attempt_timeout;
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(SshError::Cancelled { addr }),
            r = tokio::time::timeout(budget, probe(target, opts, &banner_seen)) => match r {
                Ok(r) => r,
                // The overall deadline cut this attempt short: what the
                // attempts before it saw says more than "timed out".
                Err(_) if cut_short && last.is_some() => {
                    return Err(not_ready(attempt, last));
                }
                Err(_) => Err(SshError::Timeout { addr, after: budget }),
            },
        };
        let pause = match outcome {
            Ok(session) => {
                successes += 1;
                last = None;
                if successes >= needed {
                    let first_banner = banner_seen
                        .lock()
                        .ok()
                        .and_then(|t| *t)
                        .map(|t| t.saturating_duration_since(start));
                    let stats = ReadyStats {
                        attempts: attempt,
                        first_banner,
                    };
                    return Ok((session, stats));
                }
                // The next probe must be a fresh connection.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close()).await;
                opts.probe_interval
            }
            Err(e) => {
                tracing::debug!(%addr, attempt, error = %e, "SSH not ready");
                successes = 0;
                last = Some(e);
                opts.poll_interval
            }
        };
        progress(ReadyProgress {
            attempt,
            elapsed: start.elapsed(),
            successes,
            last_failure: last.as_ref().map(|e| e.to_string()),
            banner_seen: banner_seen.lock().map(|t| t.is_some()).unwrap_or(false),
        });
        let wake = (Instant::now() + pause).min(end);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(SshError::Cancelled { addr }),
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

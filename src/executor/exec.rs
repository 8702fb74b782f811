//! One wrapped exec of a step: stream its output, stop it at its deadline or
//! on cancellation (process group `TERM`, then `KILL`).

use std::time::Duration;

use tokio::sync::mpsc;

use super::KILL_GRACE;
use super::output::StepOutput;
use super::runtime::Runtime;
use super::shell::FileDump;
use super::step::StepRun;
use crate::events::LineKind;
use crate::guest::{GuestError, OutputChunk, shell_quote};

/// How long to wait for the output of a finished exec to drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// After the wrapper reports the end, how long to wait for the command itself to
/// finish before the step is considered done (a background process it left may
/// keep the channel open; GitHub does not wait for those either).
const END_GRACE: Duration = Duration::from_millis(500);

/// Why a running exec was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    StepTimeout,
    JobTimeout,
    Cancelled,
}

/// The result of one wrapped exec.
pub(super) struct ExecResult {
    pub(super) status: Result<u32, GuestError>,
    pub(super) stop: Option<Stop>,
    pub(super) dump: Option<FileDump>,
}

impl Runtime<'_> {
    /// Runs `cmd` with `stdin`, streaming output as step lines, and stops it
    /// (process group kill) at the deadline or on cancellation.
    pub(super) async fn exec_step(
        &self,
        plan: &StepRun<'_>,
        cmd: &str,
        stdin: &[u8],
        marker: Option<String>,
        step_dir: &str,
    ) -> ExecResult {
        self.exec_step_as(plan, cmd, stdin, marker, step_dir, false)
            .await
    }

    /// [`Self::exec_step`]; `own`: the command is Solstice's plumbing only (see
    /// [`StepOutput::own`]).
    pub(super) async fn exec_step_as(
        &self,
        plan: &StepRun<'_>,
        cmd: &str,
        stdin: &[u8],
        marker: Option<String>,
        step_dir: &str,
        own: bool,
    ) -> ExecResult {
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(256);
        let mut out = StepOutput::new(&self.em, plan.log, marker, self.debug);
        out.own = own;
        let exec = self.session.exec(cmd, stdin, tx);
        tokio::pin!(exec);
        let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let deadline = plan
            .deadline
            .map(tokio::time::Instant::from_std)
            .unwrap_or(far);
        let mut status: Option<Result<u32, GuestError>> = None;
        let mut stop: Option<Stop> = None;
        let mut rx_open = true;
        let mut escalate_at = far;
        let mut kills_sent = 0u8;
        let mut drain_until = far;
        // Set when the wrapper reported the end: then only a background process
        // keeps the channel open, and the step does not wait for it.
        let mut ended: Option<(tokio::time::Instant, u32)> = None;
        let mut killing: Option<
            std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>,
        > = None;
        loop {
            if status.is_some() && !rx_open {
                break;
            }
            let end_at = ended.map_or(far, |(t, _)| t);
            tokio::select! {
                r = &mut exec, if status.is_none() => {
                    status = Some(r);
                    drain_until = tokio::time::Instant::now() + DRAIN_LIMIT;
                }
                c = rx.recv(), if rx_open => match c {
                    Some(c) => {
                        out.feed(c);
                        if ended.is_none()
                            && let Some(code) = out.end_status()
                        {
                            ended = Some((tokio::time::Instant::now() + END_GRACE, code));
                        }
                    }
                    None => rx_open = false,
                },
                _ = tokio::time::sleep_until(end_at), if status.is_none() && ended.is_some() => {
                    if let Some((_, code)) = ended {
                        status = Some(Ok(code));
                    }
                    break;
                }
                _ = tokio::time::sleep_until(deadline), if stop.is_none() && status.is_none() => {
                    stop = Some(plan.stop_kind);
                    killing = Some(Box::pin(self.kill(step_dir, "TERM")));
                    kills_sent = 1;
                    escalate_at = tokio::time::Instant::now() + KILL_GRACE;
                }
                _ = self.cancel.cancelled(), if plan.watch_cancel && stop.is_none() && status.is_none() => {
                    stop = Some(Stop::Cancelled);
                    killing = Some(Box::pin(self.kill(step_dir, "TERM")));
                    kills_sent = 1;
                    escalate_at = tokio::time::Instant::now() + KILL_GRACE;
                }
                // The kill runs beside the step's exec, which keeps being drained:
                // a chatty step must not stall the connection the kill travels on.
                _ = async { if let Some(k) = killing.as_mut() { k.await } }, if killing.is_some() => {
                    killing = None;
                }
                _ = tokio::time::sleep_until(escalate_at), if status.is_none() && kills_sent > 0 => {
                    if kills_sent == 1 {
                        killing = Some(Box::pin(self.kill(step_dir, "KILL")));
                        kills_sent = 2;
                        escalate_at = tokio::time::Instant::now() + KILL_GRACE;
                    } else {
                        self.em.error(plan.log, "The step's processes did not stop; abandoning it");
                        status = Some(Err(GuestError::Exec("the step did not stop".into())));
                        break;
                    }
                }
                _ = tokio::time::sleep_until(drain_until), if status.is_some() => break,
            }
        }
        // Let a kill that is still on its way finish: dropping it half-way would
        // hang up its channel while the guest's server is still acting on it.
        if let Some(k) = killing {
            k.await;
        }
        // Lines already received are still reported.
        while let Ok(c) = rx.try_recv() {
            out.feed(c);
        }
        let dump = out.finish();
        ExecResult {
            status: status.unwrap_or_else(|| Err(GuestError::Exec("no exit status".into()))),
            stop,
            dump,
        }
    }

    /// Sends `signal` to the step's process group (or process) named in its pid file.
    pub(super) async fn kill(&self, step_dir: &str, signal: &str) {
        let pid = shell_quote(&format!("{step_dir}/pid"));
        // A step whose processes run in a container has a `kill` script too:
        // signalling the engine's client does not stop them.
        let extra = shell_quote(&format!("{step_dir}/kill"));
        let cmd = format!(
            "if [ -f {extra} ]; then sh {extra} {signal} >/dev/null 2>&1; fi; \
             p=$(cat {pid} 2>/dev/null) && [ -n \"$p\" ] && kill -{signal} $p 2>/dev/null; exit 0"
        );
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(8);
        let drain = async { while rx.recv().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(15), async {
            tokio::join!(self.session.exec(&cmd, b"", tx), drain)
        })
        .await;
    }
    pub(super) fn warn(&self, index: usize, text: impl Into<String>) {
        self.em
            .line(Some(index), LineKind::Annotation("warning".into()), text);
    }
}

//! The daemon's side of debug SSH: a failed job's VM offered by the job
//! ([`crate::job::DebugHold`]) is kept when the policy allows it, after the
//! guest was cleaned and the actor's keys were fetched from the job's forge.
//! The job log says how to connect, or why the VM was not kept.

use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use super::record::JobRecord;
use crate::debug::policy::{Allowed, Decision};
use crate::debug::{ArmRequest, DebugHolds, EndReason, NotHeld};
use crate::events::EventSink;
use crate::forge::UserKeys;
use crate::job::{DebugHold, FailedGuest, runner_line};
use crate::vm::Vm;

/// How long the forge gets to list the actor's keys.
const KEYS_TIMEOUT: Duration = Duration::from_secs(20);

/// One task's offer handler (only made for a job that asked).
pub(crate) struct TaskHold<'a> {
    pub shared: &'a Shared,
    /// `None`: no `[debug_ssh]` gateway (the decision is then a refusal).
    pub holds: Option<&'a DebugHolds>,
    pub forge: &'a str,
    pub repository: &'a str,
    pub decision: Decision,
    pub user_keys: Option<Arc<dyn UserKeys>>,
    pub record: Arc<JobRecord>,
    /// The job's VM is recorded in the state database (crash recovery).
    pub recorded: bool,
    pub image: &'a str,
}

impl TaskHold<'_> {
    fn not_held(&self, sink: &dyn EventSink, why: &str) {
        self.shared.metrics.debug_event("not_held");
        tracing::info!(job = %self.record.id, repository = %self.repository, reason = why, "debug SSH: failed job's VM not kept");
        runner_line(
            sink,
            format!("Debug SSH: this failed job's VM is not kept: {why}."),
        );
    }

    /// The actor's keys, parsed; `Err` with the reason for the log.
    async fn keys(&self, allowed: &Allowed) -> Result<Vec<russh::keys::PublicKey>, String> {
        let Some(source) = &self.user_keys else {
            return Err("this forge does not publish its users' SSH keys to the runner".into());
        };
        let fetched = tokio::time::timeout(
            KEYS_TIMEOUT,
            source.public_keys(&allowed.actor, allowed.actor_id.as_deref()),
        )
        .await
        .map_err(|_| {
            format!(
                "{} did not list the SSH keys of {} within {} s",
                source.forge_url(),
                allowed.actor,
                KEYS_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("cannot fetch the SSH keys of {}: {e}", allowed.actor))?;
        let (keys, skipped) = crate::debug::parse_keys(&fetched);
        if skipped > 0 {
            tracing::info!(actor = %allowed.actor, skipped, "debug SSH: skipped keys the gateway cannot check");
        }
        if keys.is_empty() {
            return Err(format!(
                "no public SSH keys registered for {} on {}",
                allowed.actor,
                source.forge_url()
            ));
        }
        Ok(keys)
    }
}

#[async_trait::async_trait]
impl DebugHold for TaskHold<'_> {
    async fn offer(&self, guest: FailedGuest, sink: &dyn EventSink) -> Option<Vm> {
        let (allowed, holds) = match (&self.decision, self.holds) {
            (Decision::Allowed(a), Some(holds)) => (a.clone(), holds),
            (Decision::Refused(why), _) => {
                self.not_held(sink, why);
                return Some(guest.vm);
            }
            (Decision::Allowed(_), None) => {
                self.not_held(sink, "this runner has no debug SSH gateway");
                return Some(guest.vm);
            }
        };
        if self.shared.stop_fetching.is_cancelled() {
            self.not_held(sink, "the runner is stopping");
            return Some(guest.vm);
        }
        let reservation = match holds.reserve(self.forge, self.repository) {
            Ok(r) => r,
            Err(e) => {
                self.not_held(sink, &e.to_string());
                return Some(guest.vm);
            }
        };
        let keys = match self.keys(&allowed).await {
            Ok(k) => k,
            Err(why) => {
                self.not_held(sink, &why);
                return Some(guest.vm);
            }
        };
        let scrubbed = match crate::executor::scrub::scrub_for_debug(&guest.session, &guest.runner)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(job = %self.record.id, error = %e, "debug SSH: cleaning the guest failed");
                self.not_held(sink, &e.to_string());
                return Some(guest.vm);
            }
        };
        let _ = guest.session.close().await;

        let slots = self.shared.slots.hold(self.image);
        let record = self.record.clone();
        let recorded = self.recorded;
        let id = self.record.id.clone();
        let settings = holds.settings().clone();
        if recorded {
            // Before the window opens, so that its end always finds the row.
            let row = crate::store::HoldRow {
                job_id: id.clone(),
                forge: self.forge.to_owned(),
                repository: self.repository.to_owned(),
                actor: allowed.actor.clone(),
                armed_at: std::time::SystemTime::now(),
                expires_at: std::time::SystemTime::now() + allowed.ttl,
            };
            if let Err(e) = self.record.store.record_hold(&row) {
                tracing::warn!(job = %id, error = %e, "could not record the kept VM for `solstice status`");
            }
        }
        let on_end = Box::new(move |why: EndReason, destroyed: bool| {
            // The VM is gone: its record (kept so that a crash's reconcile
            // destroys it) goes, and its capacity frees. A VM whose teardown
            // failed keeps its record: the next start's reconcile retries.
            if recorded {
                if destroyed && let Err(e) = record.store.forget_vm(&record.id) {
                    tracing::warn!(job = %record.id, error = %e, "could not forget the kept VM's record");
                }
                if let Err(e) = record.store.forget_hold(&record.id) {
                    tracing::warn!(job = %record.id, error = %e, "could not forget the kept VM's hold record");
                }
            }
            tracing::debug!(job = %record.id, reason = why.as_str(), "kept VM's capacity released");
            drop(slots);
        });
        let expires = match holds.arm(
            reservation,
            ArmRequest {
                id: id.clone(),
                forge: self.forge.to_owned(),
                repository: self.repository.to_owned(),
                actor: allowed.actor.clone(),
                keys,
                ttl: allowed.ttl,
                vm: guest.vm,
                target: guest.target,
                on_end,
            },
        ) {
            Some(t) => t,
            None => {
                // Shutdown began meanwhile; the VM is being destroyed.
                self.not_held(sink, &NotHeld::Stopping.to_string());
                return None;
            }
        };
        let forge_url = self
            .user_keys
            .as_ref()
            .map(|k| k.forge_url().to_owned())
            .unwrap_or_default();
        let until = crate::civil::utc_seconds(expires);
        let minutes = allowed.ttl.as_secs().div_ceil(60);
        let ssh = |what: &str| {
            crate::debug::gateway::command::ssh_command(
                &settings.public_host,
                settings.public_port,
                what,
            )
        };
        let removed = if scrubbed.removed.is_empty() {
            "nothing was found to remove".to_owned()
        } else {
            scrubbed.removed.join("; ")
        };
        for line in [
            format!(
                "Debug SSH: this job failed and asked for debug access ({}); its VM is kept until {until} ({minutes} min, not renewable).",
                crate::debug::policy::ASK_VARIABLE
            ),
            format!("  Connect: {}", ssh(&format!("connect {id}"))),
            format!(
                "  The gateway's host key is {}. Only the SSH keys {} registered on {forge_url} are accepted.",
                holds.fingerprint(),
                allowed.actor
            ),
            format!(
                "  Removed from the VM before it was kept: {removed}. The workspace stays, and so does anything a step copied elsewhere itself."
            ),
            format!(
                "  Done early? `{}` destroys the VM.",
                ssh(&format!("done {id}"))
            ),
        ] {
            runner_line(sink, line);
        }
        None
    }
}

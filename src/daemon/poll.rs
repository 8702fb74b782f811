//! One forge's poll loop: reserve free slots, fetch at most that many tasks
//! through the forge's [`Poller`], start a task runner per task, back off
//! on failures.

use std::sync::Arc;
use std::time::Duration;

use super::backoff::{Backoff, Health, HealthChange};
use super::slots::HostSlot;
use super::{POLL_BACKOFF_CAP, Shared};
use crate::config::ForgeConfig;
use crate::forge::Poller;

/// Polls `forge` until the daemon stops fetching.
pub(crate) async fn poll_loop(
    shared: Arc<Shared>,
    forge: ForgeConfig,
    mut poller: Box<dyn Poller>,
) {
    let stop = shared.stop_fetching.clone();
    let mut backoff = Backoff::new(forge.fetch_interval, POLL_BACKOFF_CAP);
    let mut health = Health::default();
    let mut pause = Duration::ZERO;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = forge.fetch_interval;
        // Reserve every free host slot; with none free, wait for one.
        let mut full = false;
        let mut reservation = loop {
            let freed = shared.slots.freed();
            if let Some(r) = shared.slots.reserve(u32::MAX) {
                break r;
            }
            if !full {
                full = true;
                poller.no_capacity().await;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = freed => {}
            }
        };
        // Not raced against a stop: the forge may assign tasks in this call,
        // and dropping its answer would leave them running on the forge
        // until its reaper fails them. The call is bounded by its deadline;
        // tasks it brings run (or are drained) like any other.
        let result = poller.fetch(reservation.count()).await;
        match result {
            Ok(assignments) => {
                backoff.reset();
                if let HealthChange::Up { failures } = health.succeeded() {
                    tracing::info!(forge = %forge.name, failures, "forge answers again");
                }
                if assignments.is_empty() {
                    continue;
                }
                // More jobs may be queued: ask again at once.
                pause = Duration::ZERO;
                for assignment in assignments {
                    let slot = match reservation.take_one() {
                        Some(s) => s,
                        None => {
                            tracing::warn!(
                                forge = %forge.name,
                                task = assignment.task_id,
                                "the forge sent more tasks than asked for; this one waits for a free slot"
                            );
                            // Free what is left of the reservation first.
                            drop(std::mem::replace(
                                &mut reservation,
                                empty_reservation(&shared),
                            ));
                            HostSlot::acquire(&shared.slots).await
                        }
                    };
                    let s = shared.clone();
                    let f = forge.clone();
                    shared
                        .tasks
                        .spawn(async move { super::task::run_task(s, f, assignment, slot).await });
                }
                drop(reservation);
            }
            Err(e) => {
                drop(reservation);
                shared.metrics.forge_error(&forge.name, "FetchTask");
                match health.failed() {
                    HealthChange::Down if e.is_unauthenticated() => tracing::error!(
                        forge = %forge.name,
                        error = %e,
                        "the forge no longer accepts this runner (was it deleted in the forge's UI?); give it new credentials (a fresh registration token, secret or runner file) and restart; polling goes on with back-off"
                    ),
                    HealthChange::Down => tracing::warn!(
                        forge = %forge.name,
                        error = %e,
                        "polling failed; retrying with back-off (one line when it recovers)"
                    ),
                    _ => tracing::debug!(forge = %forge.name, error = %e, "poll failed again"),
                }
                pause = backoff.fail(rand::random::<f64>());
            }
        }
    }
}

/// A reservation of nothing, to replace a used-up one.
fn empty_reservation(shared: &Shared) -> super::slots::Reservation {
    super::slots::Reservation::empty(&shared.slots)
}

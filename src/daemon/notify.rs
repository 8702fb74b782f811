//! systemd notifications (`sd_notify`): readiness, status, watchdog, stopping.
//! Every call is a no-op when `NOTIFY_SOCKET` is not set.
//!
//! Messages go through one dedicated thread: a datagram send blocks when the
//! receiver's queue is full, and that must never stall the async runtime.
//! When even the thread's queue is full, the message is dropped.

use std::sync::OnceLock;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use sd_notify::NotifyState;

/// One message for the notifier thread.
enum Message {
    Ready(String),
    Status(String),
    Stopping(String),
    Watchdog,
}

/// Messages waiting for the notifier thread, at most.
const QUEUE: usize = 64;

/// Tells the service manager that start-up is complete.
pub fn ready(status: &str) {
    send(Message::Ready(status.to_owned()));
}

/// Updates the one-line status shown by `systemctl status`.
pub fn status(status: &str) {
    send(Message::Status(status.to_owned()));
}

/// Tells the service manager that the daemon is shutting down.
pub fn stopping(status: &str) {
    send(Message::Stopping(status.to_owned()));
}

/// Keeps the watchdog happy.
pub fn watchdog() {
    send(Message::Watchdog);
}

fn send(message: Message) {
    static SENDER: OnceLock<Option<SyncSender<Message>>> = OnceLock::new();
    let sender = SENDER.get_or_init(|| {
        std::env::var_os("NOTIFY_SOCKET")?;
        let (tx, rx) = sync_channel::<Message>(QUEUE);
        std::thread::Builder::new()
            .name("solstice-notify".into())
            .spawn(move || {
                for m in rx {
                    let result = match &m {
                        Message::Ready(s) => {
                            sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(s)])
                        }
                        Message::Status(s) => sd_notify::notify(false, &[NotifyState::Status(s)]),
                        Message::Stopping(s) => sd_notify::notify(
                            false,
                            &[NotifyState::Stopping, NotifyState::Status(s)],
                        ),
                        Message::Watchdog => sd_notify::notify(false, &[NotifyState::Watchdog]),
                    };
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "could not notify the service manager");
                    }
                }
            })
            .ok()?;
        Some(tx)
    });
    if let Some(tx) = sender {
        match tx.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::debug!("the service manager is not reading notifications; one dropped")
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The watchdog period asked for by the service manager, if any:
/// `WATCHDOG_USEC`, unless `WATCHDOG_PID` names another process
/// (sd_watchdog_enabled(3)).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

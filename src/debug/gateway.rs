//! The debug SSH gateway: a russh server inside the daemon. Users log in as
//! `debug` with a key their forge publishes, then run `connect <id>` (a
//! shell in the held VM, proxied with the job's in-memory key) or
//! `done <id>` (destroy it now). Nothing else is accepted.

use russh::keys::PrivateKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::DebugHolds;

/// Serves the gateway on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    host_key: PrivateKey,
    holds: DebugHolds,
    stop: CancellationToken,
) {
    let _ = (listener, host_key, holds, stop);
    todo!("helper")
}

//! Connecting and logging in: the russh client handler with the host key
//! policy, and the handshake shared by [`connect`] and readiness probes.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, DisconnectReason};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::net::TcpStream;

use super::session::SshSession;
use super::{HostKeyPolicy, KeyMismatch, SshError, SshTarget};

/// How often to send a keepalive when the guest has been silent.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Unanswered keepalives after which the connection counts as lost.
pub const KEEPALIVE_MAX: usize = 4;

/// State of one connection shared between the russh handler and the session.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Why the connection ended, once it has.
    pub disconnect_reason: Mutex<Option<String>>,
}

/// The russh client handler: checks the host key and records disconnects.
pub(crate) struct ClientHandler {
    policy: Arc<HostKeyPolicy>,
    state: Arc<ConnState>,
}

/// Errors raised inside the russh session task.
#[derive(Debug)]
pub(crate) enum HandlerError {
    Ssh(russh::Error),
    HostKey(KeyMismatch),
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        HandlerError::Ssh(e)
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerError::Ssh(e) => write!(f, "{e}"),
            HandlerError::HostKey(m) => {
                write!(
                    f,
                    "host key mismatch: expected {}, got {}",
                    m.expected, m.got
                )
            }
        }
    }
}

impl client::Handler for ClientHandler {
    type Error = HandlerError;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data(),
            PublicKeyOrCertificate::Certificate(cert) => cert.public_key(),
        };
        self.policy
            .check(key)
            .map(|()| true)
            .map_err(HandlerError::HostKey)
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let text = match &reason {
            DisconnectReason::ReceivedDisconnect(info) if info.message.is_empty() => {
                format!("the guest disconnected ({:?})", info.reason_code)
            }
            DisconnectReason::ReceivedDisconnect(info) => {
                format!("the guest disconnected: {}", info.message)
            }
            DisconnectReason::Error(e) => e.to_string(),
        };
        *self
            .state
            .disconnect_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(text);
        match reason {
            DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// Opens a TCP connection to `addr`, telling a refused connection apart.
pub(crate) async fn tcp_connect(addr: SocketAddr) -> Result<TcpStream, SshError> {
    match TcpStream::connect(addr).await {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(SshError::Refused { addr })
        }
        Err(e) => Err(SshError::Connect {
            addr,
            reason: e.to_string(),
        }),
    }
}

/// The russh client configuration for `policy`.
fn config(policy: &HostKeyPolicy) -> client::Config {
    client::Config {
        preferred: russh::Preferred {
            key: Cow::Owned(policy.preferred_algorithms()),
            ..russh::Preferred::DEFAULT
        },
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        ..Default::default()
    }
}

/// Runs the SSH handshake and public key login over an open TCP stream.
pub(crate) async fn handshake(
    target: &SshTarget,
    stream: TcpStream,
) -> Result<SshSession, SshError> {
    let addr = target.addr;
    // Small writes (exec requests, EOF) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let state = Arc::new(ConnState::default());
    let handler = ClientHandler {
        policy: Arc::clone(&target.policy),
        state: Arc::clone(&state),
    };
    let mut handle = client::connect_stream(Arc::new(config(&target.policy)), stream, handler)
        .await
        .map_err(|e| match e {
            HandlerError::HostKey(m) => SshError::HostKeyMismatch {
                addr,
                expected: m.expected,
                got: m.got,
            },
            HandlerError::Ssh(e) => SshError::Handshake {
                addr,
                reason: e.to_string(),
            },
        })?;
    let key = PrivateKeyWithHashAlg::new(target.key.private(), None);
    let auth = handle
        .authenticate_publickey(target.user.clone(), key)
        .await
        .map_err(|e| SshError::Handshake {
            addr,
            reason: e.to_string(),
        })?;
    if !auth.success() {
        return Err(SshError::AuthRejected {
            addr,
            user: target.user.clone(),
        });
    }
    Ok(SshSession::new(handle, addr, state))
}

/// Connects to `target` and logs in, all within `timeout`.
///
/// Unlike [`super::wait_ready`] this makes one attempt and does not run a
/// probe command.
pub async fn connect(target: &SshTarget, timeout: Duration) -> Result<SshSession, SshError> {
    let attempt = async {
        let stream = tcp_connect(target.addr).await?;
        handshake(target, stream).await
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(SshError::Timeout {
            addr: target.addr,
            after: timeout,
        }))
}

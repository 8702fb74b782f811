//! SSH into guests with russh: in-memory keys, host key pinning, readiness
//! polling and streaming exec.
//!
//! A job generates a [`ClientKey`] (and usually a [`HostKey`] for the seed),
//! describes the forwarded port with an [`SshTarget`], waits for the guest
//! with [`wait_ready`] and then runs its steps through the returned
//! [`SshSession`], which implements [`crate::guest::GuestSession`].

mod client;
mod keys;
mod ready;
mod session;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Algorithm, HashAlg, PublicKey};

pub use client::connect;
pub use keys::{CLIENT_KEY_COMMENT, ClientKey, HOST_KEY_COMMENT, HostKey};
pub use ready::{ReadyOptions, ReadyProgress, ReadyStats, wait_ready, wait_ready_with_stats};
pub use session::SshSession;

/// How the guest's host key is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// Accept only this key (one OpenSSH public key line, e.g. from
    /// [`HostKey::public_openssh`]). The comment is ignored.
    Pinned(String),
    /// Accept the first key seen by this [`SshTarget`] (and its clones), and
    /// from then on only that key.
    TrustFirstUse,
}

/// The host key policy of a target, with the key pinned so far.
#[derive(Debug)]
enum HostKeyPolicy {
    Pinned(PublicKey),
    TrustFirstUse(Mutex<Option<PublicKey>>),
}

/// A host key that was not accepted: fingerprints of the expected and the
/// presented key.
#[derive(Debug, Clone)]
pub(crate) struct KeyMismatch {
    pub expected: String,
    pub got: String,
}

impl HostKeyPolicy {
    /// Accepts `key` or says why not. Under trust-first-use, pins it if no
    /// key is pinned yet.
    fn check(&self, key: &KeyData) -> Result<(), KeyMismatch> {
        let mismatch = |expected: &PublicKey| KeyMismatch {
            expected: expected.fingerprint(HashAlg::Sha256).to_string(),
            got: key.fingerprint(HashAlg::Sha256).to_string(),
        };
        match self {
            HostKeyPolicy::Pinned(pinned) if pinned.key_data() == key => Ok(()),
            HostKeyPolicy::Pinned(pinned) => Err(mismatch(pinned)),
            HostKeyPolicy::TrustFirstUse(slot) => {
                let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                match &*slot {
                    Some(first) if first.key_data() == key => Ok(()),
                    Some(first) => Err(mismatch(first)),
                    None => {
                        *slot = Some(PublicKey::from(key.clone()));
                        Ok(())
                    }
                }
            }
        }
    }

    /// Host key algorithms to offer, most preferred first: the pinned key's
    /// type leads so that a server with several host keys presents that one.
    fn preferred_algorithms(&self) -> Vec<Algorithm> {
        let default = russh::Preferred::DEFAULT.key.to_vec();
        let HostKeyPolicy::Pinned(pinned) = self else {
            return default;
        };
        let want = pinned.algorithm();
        let same_type = |a: &Algorithm| match (a, &want) {
            (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
            _ => *a == want,
        };
        let (mut first, rest): (Vec<_>, Vec<_>) = default.into_iter().partition(same_type);
        if first.is_empty() {
            first.push(want);
        }
        first.extend(rest);
        first
    }
}

/// Where and how to reach one guest: the forwarded SSH address, the login
/// user, the job's client key and the host key policy.
///
/// Clones share the trust-first-use pin, so every connection made through a
/// target or its clones must meet the same host key.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Host side of the forwarded SSH port, normally `127.0.0.1:<port>`.
    pub addr: SocketAddr,
    /// User to log in as (`root`, or an image's default user).
    pub user: String,
    key: ClientKey,
    policy: Arc<HostKeyPolicy>,
}

impl SshTarget {
    /// Describes a guest. Fails if a pinned host key is not an OpenSSH
    /// public key line.
    pub fn new(
        addr: SocketAddr,
        user: impl Into<String>,
        key: ClientKey,
        host_key: HostKeyCheck,
    ) -> Result<Self, SshError> {
        let policy = match host_key {
            HostKeyCheck::Pinned(line) => HostKeyPolicy::Pinned(
                PublicKey::from_openssh(line.trim())
                    .map_err(|e| SshError::InvalidPinnedKey(e.to_string()))?,
            ),
            HostKeyCheck::TrustFirstUse => HostKeyPolicy::TrustFirstUse(Mutex::new(None)),
        };
        Ok(Self {
            addr,
            user: user.into(),
            key,
            policy: Arc::new(policy),
        })
    }

    /// The host key this target accepts now, as an OpenSSH line: the pinned
    /// key, or the first key seen under trust-first-use (`None` before the
    /// first connection).
    pub fn host_key(&self) -> Option<String> {
        let key = match &*self.policy {
            HostKeyPolicy::Pinned(k) => Some(k.clone()),
            HostKeyPolicy::TrustFirstUse(slot) => {
                slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
            }
        };
        key.and_then(|k| k.to_openssh().ok())
    }
}

/// Errors from connecting, authenticating and waiting for a guest.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The pinned host key could not be parsed.
    #[error(
        "Pinned host key is not an OpenSSH public key ({0}); pass a line like `ssh-ed25519 AAAA…`"
    )]
    InvalidPinnedKey(String),
    /// Nothing listens on the port.
    #[error("Connection to {addr} refused: nothing listens on the SSH port")]
    Refused { addr: SocketAddr },
    /// TCP connect failed for another reason.
    #[error("Could not connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The port accepted and closed the connection without a banner (what a
    /// user-mode forward does while the guest's sshd is not listening yet).
    #[error("{addr} closed the connection before sending an SSH banner")]
    ClosedBeforeBanner { addr: SocketAddr },
    /// The port accepted the connection but sent no banner in time.
    #[error("No SSH banner from {addr} within {wait:?}")]
    NoBanner { addr: SocketAddr, wait: Duration },
    /// The server presented a host key the policy does not accept.
    #[error(
        "Host key mismatch at {addr}: expected {expected}, got {got}; refusing to log in (is another guest on this port?)"
    )]
    HostKeyMismatch {
        addr: SocketAddr,
        expected: String,
        got: String,
    },
    /// The server refused the client key.
    #[error(
        "Public key authentication as {user} at {addr} was rejected; check that the seed installed the job's key for that user"
    )]
    AuthRejected { addr: SocketAddr, user: String },
    /// Key exchange or another protocol step failed.
    #[error("SSH handshake with {addr} failed: {reason}")]
    Handshake { addr: SocketAddr, reason: String },
    /// Connecting and logging in took longer than allowed.
    #[error("SSH login at {addr} did not complete within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    /// The readiness probe ran but did not succeed.
    #[error("Readiness probe `true` at {addr} {outcome}")]
    ProbeFailed { addr: SocketAddr, outcome: String },
    /// The guest did not become ready before the deadline.
    #[error(
        "Guest at {addr} not reachable over SSH after {elapsed:.1?} ({attempts} attempts); last failure: {}. Check the guest's serial console, or raise the boot timeout",
        describe_last(last.as_deref())
    )]
    NotReady {
        addr: SocketAddr,
        elapsed: Duration,
        attempts: u32,
        last: Option<Box<SshError>>,
    },
    /// The caller cancelled the wait.
    #[error("Waiting for SSH at {addr} was cancelled")]
    Cancelled { addr: SocketAddr },
    /// An established connection failed.
    #[error("SSH connection to {addr} failed: {reason}")]
    Connection { addr: SocketAddr, reason: String },
}

fn describe_last(last: Option<&SshError>) -> String {
    match last {
        Some(e) => e.to_string(),
        None => "too few consecutive successful probes".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:22".parse().unwrap()
    }

    #[test]
    fn pinned_key_must_parse() {
        let err = SshTarget::new(
            addr(),
            "root",
            ClientKey::generate(),
            HostKeyCheck::Pinned("nonsense".into()),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("Pinned host key is not"),
            "{err}"
        );
    }

    #[test]
    fn pinned_policy_accepts_only_its_key() {
        let h = HostKey::generate();
        let other = HostKey::generate();
        let t = SshTarget::new(
            addr(),
            "root",
            ClientKey::generate(),
            HostKeyCheck::Pinned(h.public_openssh()),
        )
        .unwrap();
        let key = |l: &str| PublicKey::from_openssh(l).unwrap().key_data().clone();
        assert!(t.policy.check(&key(&h.public_openssh())).is_ok());
        let m = t.policy.check(&key(&other.public_openssh())).unwrap_err();
        assert_eq!(m.expected, h.fingerprint());
        assert_eq!(m.got, other.fingerprint());
        assert_eq!(t.policy.preferred_algorithms()[0], Algorithm::Ed25519);
    }

    #[test]
    fn trust_first_use_pins_first_key_across_clones() {
        let a = HostKey::generate();
        let b = HostKey::generate();
        let key = |l: &str| PublicKey::from_openssh(l).unwrap().key_data().clone();
        let t = SshTarget::new(
            addr(),
            "root",
            ClientKey::generate(),
            HostKeyCheck::TrustFirstUse,
        )
        .unwrap();
        assert_eq!(t.host_key(), None);
        let clone = t.clone();
        assert!(t.policy.check(&key(&a.public_openssh())).is_ok());
        assert!(clone.policy.check(&key(&a.public_openssh())).is_ok());
        assert!(clone.policy.check(&key(&b.public_openssh())).is_err());
        assert!(t.host_key().unwrap().starts_with("ssh-ed25519 "));
    }

    #[test]
    fn not_ready_names_last_failure() {
        let e = SshError::NotReady {
            addr: addr(),
            elapsed: Duration::from_millis(1500),
            attempts: 7,
            last: Some(Box::new(SshError::Refused { addr: addr() })),
        };
        let s = e.to_string();
        assert!(s.contains("7 attempts"), "{s}");
        assert!(
            s.contains("last failure: Connection to 127.0.0.1:22 refused"),
            "{s}"
        );
    }
}

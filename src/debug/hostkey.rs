//! The gateway's own host key: generated on the first start, kept in the
//! state directory (0600), so its fingerprint stays the same across restarts.

use std::path::{Path, PathBuf};

use russh::keys::PrivateKey;

/// The key file's name under the state directory.
pub const HOST_KEY_FILE: &str = "debug-ssh-host-key";

/// Why the host key cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("Cannot {what} the debug SSH gateway's host key {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The debug SSH gateway's host key {} is not an OpenSSH private key ({reason}); move it away to have a new one generated", path.display())]
    Unreadable { path: PathBuf, reason: String },
}

/// Loads `<state_dir>/debug-ssh-host-key`, or generates and writes it (0600).
pub fn load_or_create(state_dir: &Path) -> Result<PrivateKey, HostKeyError> {
    let _ = state_dir;
    todo!("helper")
}

/// `SHA256:…`, as OpenSSH prints it.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string()
}

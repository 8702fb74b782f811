//! The gateway's own host key: generated on the first start, kept in the
//! state directory (0600), so its fingerprint stays the same across restarts.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use russh::keys::PrivateKey;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;

/// The key file's name under the state directory.
pub const HOST_KEY_FILE: &str = "debug-ssh-host-key";

/// The comment written into a generated key.
const KEY_COMMENT: &str = "solstice-debug-gateway";

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
///
/// - A missing state directory is created (0700).
/// - A new key is ed25519, written to a temporary file (0600) and linked
///   into place, so a crash never leaves a half-written key and two
///   processes starting at once end up with the same key.
/// - An existing key file that group or others may access is not refused
///   (the daemon would not start over a debug feature): its mode is set to
///   0600 and a warning says that the key may have been read and how to
///   replace it (delete it: the next start generates a new key, whose new
///   fingerprint the job logs print).
/// - Anything but a regular file there (a directory, a symlink) is an error.
pub fn load_or_create(state_dir: &Path) -> Result<PrivateKey, HostKeyError> {
    let path = state_dir.join(HOST_KEY_FILE);
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| HostKeyError::Io { what, path, source }
    };
    if !state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io("create the directory for", &path))?;
    }
    match load(&path)? {
        Some(key) => Ok(key),
        None => create(&path),
    }
}

/// The existing key, `None` when there is no file.
fn load(path: &Path) -> Result<Option<PrivateKey>, HostKeyError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(HostKeyError::Io {
                what: "inspect",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.file_type().is_file() {
        return Err(HostKeyError::Unreadable {
            path: path.to_path_buf(),
            reason: "it is not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| HostKeyError::Io {
                what: "restrict the permissions (to 0600) of",
                path: path.to_path_buf(),
                source,
            },
        )?;
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:04o}"),
            "the debug SSH gateway's host key was readable by group or others; its mode is now 0600. If others may have read it, delete it and restart: a new key (with a new fingerprint) is generated"
        );
    }
    let text = std::fs::read_to_string(path).map_err(|source| HostKeyError::Io {
        what: "read",
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKey::from_openssh(text.trim())
        .map(Some)
        .map_err(|e| HostKeyError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Generates a key and links it into place; if another process won the
/// race, its key is loaded instead.
fn create(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let key = generate();
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| HostKeyError::Unreadable {
            path: path.to_path_buf(),
            reason: format!("encoding the new key failed: {e}"),
        })?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(HOST_KEY_FILE);
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let io = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| HostKeyError::Io {
            what,
            path: p,
            source,
        }
    };
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write", path)(e));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent()
                && let Ok(d) = std::fs::File::open(dir)
            {
                let _ = d.sync_all();
            }
            tracing::info!(path = %path.display(), fingerprint = %fingerprint(&key), "debug SSH: generated the gateway's host key");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            load(path)?.ok_or_else(|| HostKeyError::Io {
                what: "read",
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "it vanished right after another process wrote it",
                ),
            })
        }
        Err(e) => Err(io("write", path)(e)),
    }
}

/// A fresh ed25519 key from the operating system's random source.
fn generate() -> PrivateKey {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let pair = Ed25519Keypair::from_seed(&seed);
    seed.fill(0);
    let mut key = PrivateKey::from(pair);
    key.set_comment(KEY_COMMENT);
    key
}

/// `SHA256:…`, as OpenSSH prints it.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_once_then_loaded_with_the_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = load_or_create(&state).unwrap();
        let path = state.join(HOST_KEY_FILE);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&state), 0o700);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
            "{text}"
        );
        let second = load_or_create(&state).unwrap();
        assert_eq!(fingerprint(&first), fingerprint(&second));
        assert!(fingerprint(&first).starts_with("SHA256:"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        // No temporary file is left.
        let names: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(HOST_KEY_FILE)]);
    }

    #[test]
    fn a_key_open_to_others_is_restricted_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let path = dir.path().join(HOST_KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let second = load_or_create(dir.path()).unwrap();
        assert_eq!(fingerprint(&first), fingerprint(&second));
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn garbage_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HOST_KEY_FILE);
        std::fs::write(&path, "not a key").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is not an OpenSSH private key"), "{e}");
        assert!(e.contains("move it away"), "{e}");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}

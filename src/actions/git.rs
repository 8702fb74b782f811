//! The host's `git`, run with a clean configuration for fetching actions.
//!
//! Nothing of the user's or the system's git configuration applies (no
//! `url.<x>.insteadOf` can redirect a fetch, no credential helper answers):
//! `HOME` is an empty private directory, `GIT_CONFIG_NOSYSTEM` is set, the
//! environment is cleared. Only `http` and `https` are allowed, redirects are
//! not followed, the host may be pinned to checked addresses, and the job
//! token travels in the environment (`GIT_CONFIG_*`), never in argv.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;

use crate::secret::Secret;

/// Environment variables passed through to git: the operator's proxy
/// settings (the proxy then resolves host names itself).
const PASS_THROUGH: &[&str] = &[
    "PATH",
    "http_proxy",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "GIT_EXEC_PATH",
];

/// How one git invocation for a given remote is set up.
pub struct Remote<'a> {
    /// The clone URL (no credentials).
    pub url: &'a str,
    /// `http.curloptResolve`: `host:port:addr[,addr]`.
    pub pin: Option<String>,
    /// The job token, sent as a Basic `Authorization` header to `url` only.
    pub token: Option<&'a Secret>,
}

/// Why one git invocation failed. Texts never hold the token (git does not
/// print extra headers, and the URL has no credentials).
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("could not run git on the runner host: {0} (install git there)")]
    Spawn(std::io::Error),
    #[error("git took longer than {0} s")]
    Timeout(u64),
    /// git's stderr, trimmed.
    #[error("{0}")]
    Failed(String),
}

impl GitError {
    /// Whether the server answered that the repository does not exist or
    /// needs credentials (HTTP 404, 401, 403; forges answer a private
    /// repository like a missing one), as opposed to being unreachable.
    pub fn is_not_found(&self) -> bool {
        match self {
            GitError::Failed(e) => [
                "not found",
                "returned error: 404",
                "returned error: 401",
                "returned error: 403",
                "Authentication failed",
                "could not read Username",
            ]
            .iter()
            .any(|m| e.contains(m)),
            _ => false,
        }
    }
}

/// `Authorization` value for the job token (what actions/checkout sends).
fn auth_header(token: &Secret) -> String {
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(format!("x-access-token:{}", token.expose()));
    format!("basic {b64}")
}

/// Runs git for fetching actions.
#[derive(Debug, Clone)]
pub struct Git {
    /// An empty directory, git's `HOME`.
    home: PathBuf,
}

impl Git {
    pub fn new(home: PathBuf) -> Git {
        Git { home }
    }

    /// Runs `git ARGS` in `dir` (the home directory when `None`), talking to
    /// `remote` when given; returns stdout.
    pub async fn run(
        &self,
        dir: Option<&Path>,
        remote: Option<&Remote<'_>>,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Vec<u8>, GitError> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.env_clear();
        for var in PASS_THROUGH {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        cmd.env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", &self.home)
            .env("LC_ALL", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ALLOW_PROTOCOL", "http:https")
            .env("GIT_LFS_SKIP_SMUDGE", "1");
        cmd.args([
            "-c",
            "protocol.allow=never",
            "-c",
            "protocol.https.allow=always",
            "-c",
            "protocol.http.allow=always",
            "-c",
            "http.followRedirects=false",
            "-c",
            "credential.helper=",
            "-c",
            "core.askPass=",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "http.lowSpeedLimit=1000",
            "-c",
            "http.lowSpeedTime=60",
            "-c",
            "init.defaultBranch=main",
        ]);
        if let Some(r) = remote {
            if let Some(pin) = &r.pin {
                cmd.arg("-c").arg(format!("http.curloptResolve={pin}"));
            }
            if let Some(t) = r.token {
                cmd.env("GIT_CONFIG_COUNT", "1")
                    .env("GIT_CONFIG_KEY_0", format!("http.{}.extraheader", r.url))
                    .env(
                        "GIT_CONFIG_VALUE_0",
                        format!("Authorization: {}", auth_header(t)),
                    );
            }
        }
        cmd.args(args)
            .current_dir(dir.unwrap_or(&self.home))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(timeout, cmd.output()).await {
            Ok(r) => r.map_err(GitError::Spawn)?,
            Err(_) => return Err(GitError::Timeout(timeout.as_secs())),
        };
        if out.status.success() {
            Ok(out.stdout)
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
                .collect::<Vec<_>>()
                .join("; ");
            Err(GitError::Failed(if err.is_empty() {
                format!("git exited with {}", out.status)
            } else {
                err
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_private_are_not_outages() {
        for e in [
            "fatal: repository 'http://h/o/r/' not found",
            "fatal: could not read Username for 'https://h': terminal prompts disabled",
            "fatal: unable to access 'https://h/o/r/': The requested URL returned error: 403",
        ] {
            assert!(GitError::Failed(e.into()).is_not_found(), "{e}");
        }
        for e in [
            "fatal: unable to access 'http://h/o/r/': The requested URL returned error: 503",
            "fatal: unable to access 'http://h/': Failed to connect to h port 80",
        ] {
            assert!(!GitError::Failed(e.into()).is_not_found(), "{e}");
        }
        assert!(!GitError::Timeout(5).is_not_found());
    }

    #[test]
    fn auth_header_is_basic_with_the_token() {
        let v = auth_header(&Secret::new("tok"));
        let b64 = v.strip_prefix("basic ").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(raw, b"x-access-token:tok");
    }
}

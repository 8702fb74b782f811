//! The executor's view of a guest: run a command, stream its output, upload files.
//!
//! The SSH implementation ([`crate::ssh::SshSession`]) is the real one. Tests of
//! step semantics may also use [`LocalSession`], which runs commands on the host
//! with `sh -c`, but every behaviour is proven at least once in a real VM.

use async_trait::async_trait;
use tokio::sync::mpsc;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Raw bytes as the guest wrote them. Not split into lines, not masked:
/// the executor does both before anything leaves it.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// Why a guest command failed. The message carries the whole story (the
/// executor writes it into one log line), so no variant has a `source`.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("Guest connection lost: {0}")]
    Disconnected(String),
    #[error("Guest command could not be started: {0}")]
    Exec(String),
    #[error("Guest I/O failed: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for GuestError {
    fn from(e: std::io::Error) -> Self {
        GuestError::Io(e)
    }
}

/// A running guest that can execute commands.
///
/// `command` is a shell command line run by the guest's login shell. It must not
/// carry secrets: they travel in `stdin` or in uploaded files.
#[async_trait]
pub trait GuestSession: Send + Sync {
    /// Runs `command`, writes `stdin` to it and closes its stdin, sends output
    /// chunks to `output` as they arrive, and returns the exit status (a signal
    /// death is 128 + the signal number; a missing status is 255).
    async fn exec(
        &self,
        command: &str,
        stdin: &[u8],
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<u32, GuestError>;

    /// Whether this session is a throw-away guest whose clock Solstice may set
    /// (a VM reached over SSH). `false` for anything that runs on the host.
    fn owns_clock(&self) -> bool {
        false
    }

    /// Writes `contents` to `path` in the guest with the given mode. Parent
    /// directories must exist. The contents travel on stdin, never in argv.
    async fn upload(&self, path: &str, contents: &[u8], mode: u32) -> Result<(), GuestError> {
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
        let drain = tokio::spawn(async move {
            let mut err = Vec::new();
            while let Some(c) = rx.recv().await {
                err.extend_from_slice(&c.data);
            }
            err
        });
        let quoted = shell_quote(path);
        let cmd = format!("umask 077 && cat > {quoted} && chmod {mode:o} {quoted}");
        let status = self.exec(&cmd, contents, tx).await?;
        let err = drain.await.unwrap_or_default();
        if status != 0 {
            return Err(GuestError::Exec(format!(
                "upload to {path} exited with {status}: {}",
                String::from_utf8_lossy(&err).trim()
            )));
        }
        Ok(())
    }
}

/// Quotes `s` for a POSIX shell (works in dash, busybox ash, bash and ksh93).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs commands on the host with `sh -c`. For unit tests of step semantics only.
pub struct LocalSession;

#[async_trait]
impl GuestSession for LocalSession {
    async fn exec(
        &self,
        command: &str,
        stdin: &[u8],
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<u32, GuestError> {
        use std::process::Stdio;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| GuestError::Exec(e.to_string()))?;
        let mut child_stdin = child.stdin.take().expect("piped stdin");
        let data = stdin.to_vec();
        let writer = tokio::spawn(async move {
            let _ = child_stdin.write_all(&data).await;
        });
        async fn pump<R: tokio::io::AsyncRead + Unpin>(
            mut r: R,
            stream: Stream,
            tx: mpsc::Sender<OutputChunk>,
        ) {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let chunk = OutputChunk {
                    stream,
                    data: buf[..n].to_vec(),
                };
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        }
        let out = tokio::spawn(pump(
            child.stdout.take().expect("piped stdout"),
            Stream::Stdout,
            output.clone(),
        ));
        let err = tokio::spawn(pump(
            child.stderr.take().expect("piped stderr"),
            Stream::Stderr,
            output,
        ));
        let status = child.wait().await?;
        let _ = writer.await;
        let _ = out.await;
        let _ = err.await;
        Ok(status.code().map(|c| c as u32).unwrap_or(255))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/tmp/a.sh"), "/tmp/a.sh");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[tokio::test]
    async fn local_upload_and_exec() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sh");
        let p = path.to_str().unwrap();
        LocalSession
            .upload(p, b"echo hi; echo err >&2; exit 3\n", 0o700)
            .await
            .unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let code = LocalSession.exec(p, b"", tx).await.unwrap();
        assert_eq!(code, 3);
        let mut out = Vec::new();
        while let Some(c) = rx.recv().await {
            out.push((c.stream, String::from_utf8(c.data).unwrap()));
        }
        assert!(out.contains(&(Stream::Stdout, "hi\n".into())));
        assert!(out.contains(&(Stream::Stderr, "err\n".into())));
    }
}

//! A logged-in SSH connection to a guest and streaming command execution.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use russh::client::{self, Msg};
use russh::{ChannelMsg, ChannelWriteHalf, Disconnect, Sig};
use tokio::sync::mpsc;

use super::SshError;
use super::client::{ClientHandler, ConnState};
use crate::guest::{GuestError, GuestSession, OutputChunk, Stream};

/// Exit status reported when the command ended without an exit status or
/// with a signal that has no known number.
pub const NO_STATUS: u32 = 255;

/// The SSH extended-data type code of stderr.
const STDERR_EXT: u32 = 1;

/// A logged-in connection to a guest. Runs any number of commands, also
/// concurrently (one SSH channel each).
pub struct SshSession {
    handle: client::Handle<ClientHandler>,
    addr: SocketAddr,
    state: Arc<ConnState>,
}

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSession")
            .field("addr", &self.addr)
            .field("closed", &self.handle.is_closed())
            .finish()
    }
}

/// The shell's exit status for a death by `signal`: 128 plus the signal
/// number. Numbers are those shared by Linux and illumos; others map to
/// [`NO_STATUS`].
pub fn signal_status(signal: &Sig) -> u32 {
    let number = match signal {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        // SIGUSR1 and the rest differ between Linux and illumos.
        _ => return NO_STATUS,
    };
    128 + number
}

/// Hangs up the command and closes its channel if the exec future is dropped
/// before the command ended.
struct CloseOnDrop {
    write: Option<ChannelWriteHalf<Msg>>,
}

impl CloseOnDrop {
    fn disarm(&mut self) {
        self.write = None;
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(write) = self.write.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                // Not every server ends the command when its channel closes
                // (dropbear keeps it running), so hang it up first.
                let _ = write.signal(Sig::HUP).await;
                let _ = write.close().await;
            });
        }
    }
}

impl SshSession {
    pub(crate) fn new(
        handle: client::Handle<ClientHandler>,
        addr: SocketAddr,
        state: Arc<ConnState>,
    ) -> Self {
        Self {
            handle,
            addr,
            state,
        }
    }

    /// The guest address this session is connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Opens a raw session channel, for callers that drive it themselves
    /// (the debug gateway proxies a user's shell through it).
    pub async fn open_channel(&self) -> Result<russh::Channel<Msg>, SshError> {
        self.handle
            .channel_open_session()
            .await
            .map_err(|e| SshError::Connection {
                addr: self.addr,
                reason: format!("opening a channel: {e}"),
            })
    }

    /// Ends the connection politely. Commands still running in the guest
    /// lose their channels.
    pub async fn close(self) -> Result<(), SshError> {
        if self.handle.is_closed() {
            return Ok(());
        }
        self.handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await
            .map_err(|e| SshError::Connection {
                addr: self.addr,
                reason: e.to_string(),
            })
    }

    /// The error for a lost connection, with the reason if one is known.
    fn disconnected(&self, detail: impl std::fmt::Display) -> GuestError {
        let reason = self
            .state
            .disconnect_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        GuestError::Disconnected(match reason {
            Some(r) => format!("{} ({detail}): {r}", self.addr),
            None => format!("{} ({detail})", self.addr),
        })
    }

    /// Maps a russh error on a channel operation: a closed connection is a
    /// disconnect, anything else a failure to start the command.
    fn channel_error(&self, what: &str, e: russh::Error) -> GuestError {
        if self.handle.is_closed() || matches!(e, russh::Error::SendError) {
            self.disconnected(format!("{what}: {e}"))
        } else {
            GuestError::Exec(format!("{what}: {e}"))
        }
    }
}

#[async_trait]
impl GuestSession for SshSession {
    /// Every SSH session Solstice opens is to a job's own VM.
    fn owns_clock(&self) -> bool {
        true
    }

    async fn exec(
        &self,
        command: &str,
        stdin: &[u8],
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<u32, GuestError> {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.channel_error("opening a channel", e))?;
        let (mut read, write) = channel.split();
        let mut guard = CloseOnDrop { write: Some(write) };
        let Some(write) = guard.write.as_ref() else {
            unreachable!("guard was just armed");
        };
        write
            .exec(true, command)
            .await
            .map_err(|e| self.channel_error("sending the command", e))?;

        // Stdin is written while output is read: a command like `cat` only
        // takes more input once its output has been consumed.
        let input = stdin.to_vec();
        let writer = async move {
            write.data_bytes(input).await?;
            write.eof().await
        };
        let mut status: Option<u32> = None;
        let mut closed = false;
        {
            tokio::pin!(writer);
            let mut writing = true;
            let mut consumer_gone = false;
            loop {
                let msg = tokio::select! {
                    // Errors here mean the guest stopped reading stdin or the
                    // channel closed: the reader below sees how it ended.
                    _ = &mut writer, if writing => {
                        writing = false;
                        continue;
                    }
                    msg = read.wait() => msg,
                };
                let (stream, data) = match msg {
                    Some(ChannelMsg::Data { data }) => (Stream::Stdout, data),
                    Some(ChannelMsg::ExtendedData { data, ext }) if ext == STDERR_EXT => {
                        (Stream::Stderr, data)
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        status = Some(exit_status);
                        continue;
                    }
                    Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                        status = Some(signal_status(&signal_name));
                        continue;
                    }
                    Some(ChannelMsg::Failure) => {
                        return Err(GuestError::Exec(format!(
                            "the guest at {} refused to run the command",
                            self.addr
                        )));
                    }
                    Some(ChannelMsg::Close) => {
                        closed = true;
                        break;
                    }
                    None => break,
                    Some(_) => continue,
                };
                if consumer_gone || data.is_empty() {
                    continue;
                }
                let chunk = OutputChunk {
                    stream,
                    data: data.to_vec(),
                };
                // Awaiting here is the backpressure: a slow consumer stops the
                // reads, russh stops acknowledging the window, the guest blocks.
                if output.send(chunk).await.is_err() {
                    consumer_gone = true;
                }
            }
        }
        guard.disarm();
        match (status, closed) {
            (Some(s), _) => Ok(s),
            (None, true) => Ok(NO_STATUS),
            (None, false) => Err(self.disconnected("connection lost while the command ran")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_statuses_follow_the_shell() {
        assert_eq!(signal_status(&Sig::KILL), 137);
        assert_eq!(signal_status(&Sig::TERM), 143);
        assert_eq!(signal_status(&Sig::USR1), NO_STATUS);
        assert_eq!(signal_status(&Sig::Custom("XCPU".into())), NO_STATUS);
    }
}

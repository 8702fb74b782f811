//! The debug SSH gateway: a russh server inside the daemon. Users log in as
//! `debug` with a key their forge publishes, then run `connect <id>` (a
//! shell in the held VM, proxied with the job's in-memory key) or
//! `done <id>` (destroy it now). Nothing else is accepted.
//!
//! - Authentication: public keys only, user `debug`, and only keys that
//!   some open window knows ([`DebugHolds::knows_key`]); which window a key
//!   may enter is checked again at `connect`/`done` ([`DebugHolds::access`]).
//! - Refused: port forwarding both ways, agent and X11 forwarding,
//!   subsystems (so no `sftp`/`scp`), more than [`MAX_CHANNELS`] sessions
//!   on one connection, more than [`MAX_CONNECTIONS`] connections (and
//!   [`MAX_CONNECTIONS_PER_PEER`] from one address), a connection not
//!   authenticated within a minute of being accepted.
//! - Logged: every login (`connect` let in) and every refusal (a command
//!   refused, or a connection that offered keys and never authenticated),
//!   one line each with the key's fingerprint and the peer's address, and
//!   counted in the `debug_ssh_events` metric (`login`, `refused`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, ChannelWriteHalf, MethodKind};
use russh::{Pty, Sig};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::command::Command;
use super::{Access, DebugHolds};
use crate::ssh;

pub mod command;

/// The only SSH user name the gateway accepts.
pub const USER: &str = "debug";

/// Session channels one connection may have open at once.
pub const MAX_CHANNELS: usize = 4;

/// How long reaching the guest's SSH server may take.
const GUEST_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Input from the user not yet written to the guest, in SSH packets (at
/// most 32 KiB each). Beyond it the session is ended: the guest does not
/// read what is pasted into it.
const INPUT_QUEUE: usize = 256;

/// Connections served at once; more are dropped as they come.
pub const MAX_CONNECTIONS: usize = 32;

/// Connections one address may have open at once, so that one client
/// cannot take every place.
pub const MAX_CONNECTIONS_PER_PEER: usize = 8;

/// A connection not authenticated this long after it was accepted is
/// closed, whether or not it got as far as the SSH handshake (OpenSSH's
/// `LoginGraceTime`).
const LOGIN_GRACE: Duration = Duration::from_secs(60);

/// How long sessions get to say goodbye once the gateway stops.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The SSH extended-data type of stderr.
const STDERR: u32 = 1;

/// Exit status when the guest's shell ended without one (as `ssh` reports it).
const NO_STATUS: u32 = 255;

/// Exit status for a command the gateway refused.
const EXIT_REFUSED: u32 = 1;
/// Exit status for a command line the gateway does not understand.
const EXIT_USAGE: u32 = 2;

/// The russh server configuration: `host_key`, public keys only, small
/// auth limits, idle sessions closed after the host's `idle_timeout`.
pub fn config(host_key: PrivateKey, idle_timeout: Duration) -> server::Config {
    server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-Solstice_debug_gateway".into()),
        methods: russh::MethodSet::from(&[MethodKind::PublicKey][..]),
        // Same wait for every rejected key, whether some window knows it.
        auth_rejection_time: Duration::from_millis(500),
        // OpenSSH's opening `none` probe need not wait.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        max_auth_attempts: 6,
        inactivity_timeout: Some(idle_timeout),
        // No keepalives: their answers would count as activity and keep
        // idle sessions open forever.
        keepalive_interval: None,
        nodelay: true,
        ..Default::default()
    }
}

/// Serves the gateway on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    host_key: PrivateKey,
    holds: DebugHolds,
    stop: CancellationToken,
) {
    let config = Arc::new(config(host_key, holds.settings().idle_timeout));
    let tasks = TaskTracker::new();
    let per_peer: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>> = Arc::default();
    loop {
        let (socket, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    tracing::warn!(error = %e, "debug SSH: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        if tasks.len() >= MAX_CONNECTIONS {
            tracing::warn!(peer = %peer, "debug SSH: connection dropped, {MAX_CONNECTIONS} are open already");
            drop(socket);
            continue;
        }
        let Some(peer_slot) = PeerSlot::take(&per_peer, peer.ip()) else {
            tracing::warn!(peer = %peer, "debug SSH: connection dropped, this address has {MAX_CONNECTIONS_PER_PEER} open already");
            drop(socket);
            continue;
        };
        let authenticated = Arc::new(AtomicBool::new(false));
        let conn = Conn::new(
            holds.clone(),
            peer,
            stop.child_token(),
            Arc::clone(&authenticated),
        );
        let config = Arc::clone(&config);
        let stop = stop.clone();
        tasks.spawn(async move {
            let _peer_slot = peer_slot;
            let _ = socket.set_nodelay(true);
            let accepted = tokio::time::Instant::now();
            let started = tokio::select! {
                r = tokio::time::timeout(LOGIN_GRACE, server::run_stream(config, socket, conn)) => r,
                () = stop.cancelled() => return,
            };
            let session = match started {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "debug SSH: handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "debug SSH: no SSH handshake in time; connection closed");
                    return;
                }
            };
            let handle = session.handle();
            tokio::pin!(session);
            let login_deadline = tokio::time::sleep_until(accepted + LOGIN_GRACE);
            tokio::pin!(login_deadline);
            let mut login_checked = false;
            loop {
                tokio::select! {
                    r = &mut session => {
                        if let Err(e) = r {
                            tracing::debug!(peer = %peer, error = %e, "debug SSH: connection ended with an error");
                        }
                        break;
                    }
                    () = &mut login_deadline, if !login_checked => {
                        login_checked = true;
                        if !authenticated.load(Ordering::Relaxed) {
                            let _ = handle
                                .disconnect(
                                    russh::Disconnect::ByApplication,
                                    "authentication took too long".into(),
                                    "en".into(),
                                )
                                .await;
                        }
                    }
                    () = stop.cancelled() => {
                        // Sessions write their goodbye, then the connection ends.
                        let _ = tokio::time::timeout(STOP_GRACE, &mut session).await;
                        let _ = handle
                            .disconnect(
                                russh::Disconnect::ByApplication,
                                "the runner's debug gateway stops".into(),
                                "en".into(),
                            )
                            .await;
                        break;
                    }
                }
            }
        });
    }
    tasks.close();
    let _ = tokio::time::timeout(STOP_GRACE * 2, tasks.wait()).await;
}

/// One of an address's [`MAX_CONNECTIONS_PER_PEER`] places, given back
/// when dropped.
struct PeerSlot {
    counts: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl PeerSlot {
    fn take(
        counts: &Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
    ) -> Option<PeerSlot> {
        let mut c = counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = c.entry(ip).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: Arc::clone(counts),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut c = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = c.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

/// Errors inside a connection's handler (russh's own).
#[derive(Debug)]
pub struct ConnError(russh::Error);

impl From<russh::Error> for ConnError {
    fn from(e: russh::Error) -> Self {
        ConnError(e)
    }
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A pty the user asked for, replayed in the guest.
#[derive(Debug, Clone)]
struct PtyRequest {
    term: String,
    cols: u32,
    rows: u32,
    pix_width: u32,
    pix_height: u32,
    modes: Vec<(Pty, u32)>,
}

/// What the user sends while a command runs.
#[derive(Debug)]
enum Input {
    Data(Bytes),
    Eof,
    WindowChange {
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
    },
    Signal(Sig),
}

/// One session channel of a connection.
struct Chan {
    /// Taken when the command starts.
    write: Option<ChannelWriteHalf<Msg>>,
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    /// To the running command.
    input: Option<mpsc::Sender<Input>>,
}

/// One client connection.
struct Conn {
    holds: DebugHolds,
    peer: SocketAddr,
    /// The key the user authenticated with.
    key: Option<PublicKey>,
    /// Fingerprints of keys offered and rejected (for the refusal line).
    rejected: Vec<String>,
    /// Other user names tried.
    wrong_user: Option<String>,
    channels: HashMap<ChannelId, Chan>,
    stop: CancellationToken,
    /// Set once the user is authenticated (the login deadline's check).
    authenticated: Arc<AtomicBool>,
}

impl Conn {
    fn new(
        holds: DebugHolds,
        peer: SocketAddr,
        stop: CancellationToken,
        authenticated: Arc<AtomicBool>,
    ) -> Conn {
        Conn {
            holds,
            peer,
            authenticated,
            key: None,
            rejected: Vec::new(),
            wrong_user: None,
            channels: HashMap::new(),
            stop,
        }
    }

    /// Whether `user` with `key` may log in at all.
    fn admit(&mut self, user: &str, key: &PublicKey) -> bool {
        if user != USER {
            self.wrong_user = Some(user.chars().take(64).collect());
        } else if self.holds.knows_key(key) {
            return true;
        }
        let fp = fingerprint(key);
        if !self.rejected.contains(&fp) && self.rejected.len() < 8 {
            self.rejected.push(fp);
        }
        false
    }

    /// Starts `cmd` on `channel` (once per channel).
    fn start(&mut self, channel: ChannelId, cmd: Command, session: &mut Session) {
        let Some(key) = self.key.clone() else {
            let _ = session.channel_failure(channel);
            return;
        };
        let Some(chan) = self.channels.get_mut(&channel) else {
            let _ = session.channel_failure(channel);
            return;
        };
        let Some(write) = chan.write.take() else {
            // A second shell or exec on the same channel.
            let _ = session.channel_failure(channel);
            return;
        };
        let _ = session.channel_success(channel);
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        chan.input = Some(tx);
        let run = Run {
            holds: self.holds.clone(),
            peer: self.peer,
            key,
            write,
            handle: session.handle(),
            pty: chan.pty.clone(),
            env: chan.env.clone(),
            input: rx,
            stop: self.stop.clone(),
        };
        tokio::spawn(run.command(cmd));
    }

    /// Passes `input` to the channel's running command. A user who sends
    /// faster than the guest reads loses the session.
    fn send(&mut self, channel: ChannelId, input: Input) {
        let Some(chan) = self.channels.get_mut(&channel) else {
            return;
        };
        let Some(tx) = &chan.input else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(input) {
            tracing::warn!(peer = %self.peer, "debug SSH: input arrives faster than the guest reads it; session closed");
            // Dropping the sender ends the proxy, which closes the channel.
            chan.input = None;
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.key.is_some() || (self.rejected.is_empty() && self.wrong_user.is_none()) {
            return;
        }
        self.holds.metrics().debug_event("refused");
        tracing::warn!(
            peer = %self.peer,
            keys = %self.rejected.join(" "),
            user = self.wrong_user.as_deref().unwrap_or(USER),
            "debug SSH: refused at authentication (user must be `debug`, key must be one a held job's actor registered)"
        );
    }
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

impl server::Handler for Conn {
    type Error = ConnError;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.admit(user, offer.public_key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.admit(user, key.public_key) {
            self.key = Some(key.public_key.clone());
            self.authenticated.store(true, Ordering::Relaxed);
            self.rejected.clear();
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.key.is_none() || self.channels.len() >= MAX_CHANNELS {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let id = channel.id();
        // Input comes through the handler's callbacks; the read half would
        // only duplicate it.
        let (_read, write) = channel.split();
        self.channels.insert(
            id,
            Chan {
                write: Some(write),
                pty: None,
                env: Vec::new(),
                input: None,
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(peer = %self.peer, to = %format!("{host_to_connect}:{port_to_connect}"), "debug SSH: port forwarding refused");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(peer = %self.peer, listen = %format!("{address}:{port}"), "debug SSH: remote port forwarding refused");
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(chan) if chan.write.is_some() => {
                chan.pty = Some(PtyRequest {
                    term: term.chars().take(64).collect(),
                    cols: col_width,
                    rows: row_height,
                    pix_width,
                    pix_height,
                    modes: modes.to_vec(),
                });
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(chan)
                if chan.write.is_some()
                    && command::env_passed(variable_name)
                    && variable_value.len() <= 256
                    && chan.env.len() < 32 =>
            {
                chan.env
                    .push((variable_name.to_owned(), variable_value.to_owned()));
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, Command::Usage(None), session);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, command::parse(data), session);
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Input::Data(Bytes::copy_from_slice(data)));
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Input::Eof);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Dropping the input sender ends the proxy.
        self.channels.remove(&channel);
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(chan) = self.channels.get_mut(&channel)
            && let Some(pty) = chan.pty.as_mut()
            && chan.input.is_none()
        {
            pty.cols = col_width;
            pty.rows = row_height;
            pty.pix_width = pix_width;
            pty.pix_height = pix_height;
        }
        self.send(
            channel,
            Input::WindowChange {
                cols: col_width,
                rows: row_height,
                pix_width,
                pix_height,
            },
        );
        session.channel_success(channel)?;
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Input::Signal(signal));
        Ok(())
    }
}

/// One command running on one channel.
struct Run {
    holds: DebugHolds,
    peer: SocketAddr,
    key: PublicKey,
    write: ChannelWriteHalf<Msg>,
    handle: server::Handle,
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    input: mpsc::Receiver<Input>,
    stop: CancellationToken,
}

impl Run {
    async fn command(mut self, cmd: Command) {
        let status = match cmd {
            Command::Usage(what) => {
                let s = self.holds.settings();
                let text = command::usage(what.as_deref(), &s.public_host, s.public_port);
                self.stderr(&text).await;
                Some(EXIT_USAGE)
            }
            Command::Done(id) => match self.holds.release(&id, &self.key) {
                Ok(()) => {
                    tracing::info!(job = %id, key = %fingerprint(&self.key), peer = %self.peer, "debug SSH: released with `done`");
                    self.stdout(&format!(
                        "Job {id} is released; its VM is being destroyed.\n"
                    ))
                    .await;
                    Some(0)
                }
                Err(refusal) => {
                    self.refused(&id, &refusal).await;
                    Some(EXIT_REFUSED)
                }
            },
            Command::Connect(id) => match self.holds.access(&id, &self.key) {
                Ok(access) => {
                    self.holds.metrics().debug_event("login");
                    tracing::info!(job = %id, actor = %access.actor, key = %fingerprint(&self.key), peer = %self.peer, "debug SSH: login");
                    self.proxy(&access).await
                }
                Err(refusal) => {
                    self.refused(&id, &refusal).await;
                    Some(EXIT_REFUSED)
                }
            },
        };
        if let Some(status) = status {
            let _ = self.write.exit_status(status).await;
        }
        let _ = self.write.eof().await;
        let _ = self.write.close().await;
    }

    async fn refused(&self, id: &str, refusal: &super::Refusal) {
        let actor = match refusal {
            super::Refusal::NotTheActor { actor } => actor.as_str(),
            super::Refusal::NoSuchJob(_) => "",
        };
        self.holds.metrics().debug_event("refused");
        tracing::warn!(job = %id, actor = %actor, key = %fingerprint(&self.key), peer = %self.peer, reason = %refusal, "debug SSH: refused");
        self.stderr(&format!("Refused: {refusal}.\n")).await;
    }

    async fn stderr(&self, text: &str) {
        let text = command::for_terminal(text, self.pty.is_some());
        let _ = self
            .write
            .extended_data_bytes(STDERR, Bytes::from(text))
            .await;
    }

    async fn stdout(&self, text: &str) {
        let text = command::for_terminal(text, self.pty.is_some());
        let _ = self.write.data_bytes(Bytes::from(text)).await;
    }

    /// A shell in the guest, proxied until it exits, the user leaves, the
    /// window ends or the gateway stops. Returns the exit status to send
    /// (`None` when the guest's own was forwarded, or there is none).
    async fn proxy(&mut self, access: &Access) -> Option<u32> {
        let guest = tokio::select! {
            r = ssh::connect(&access.target, GUEST_CONNECT_TIMEOUT) => r,
            _ = access.ended.cancelled() => {
                self.stderr(&format!("{}\n", access.farewell())).await;
                return None;
            }
        };
        let guest = match guest {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(job = %access.id, error = %e, "debug SSH: cannot reach the kept VM");
                self.stderr(&format!("Cannot reach the VM of job {}: {e}\n", access.id))
                    .await;
                return Some(EXIT_REFUSED);
            }
        };
        let status = self.shell(access, &guest).await;
        let _ = guest.close().await;
        status
    }

    async fn shell(&mut self, access: &Access, guest: &ssh::SshSession) -> Option<u32> {
        let fail = |e: &dyn std::fmt::Display| {
            format!("Cannot start a shell in the VM of job {}: {e}\n", access.id)
        };
        let channel = match guest.open_channel().await {
            Ok(c) => c,
            Err(e) => {
                self.stderr(&fail(&e)).await;
                return Some(EXIT_REFUSED);
            }
        };
        let (mut from_guest, to_guest) = channel.split();
        let started = async {
            if let Some(p) = &self.pty {
                to_guest
                    .request_pty(
                        false,
                        &p.term,
                        p.cols,
                        p.rows,
                        p.pix_width,
                        p.pix_height,
                        &p.modes,
                    )
                    .await?;
            }
            for (name, value) in &self.env {
                to_guest
                    .set_env(false, name.as_str(), value.as_str())
                    .await?;
            }
            to_guest.request_shell(true).await
        };
        if let Err(e) = started.await {
            self.stderr(&fail(&e)).await;
            return Some(EXIT_REFUSED);
        }
        let repository = self
            .holds
            .list()
            .into_iter()
            .find(|h| h.id == access.id)
            .map(|h| h.repository)
            .unwrap_or_default();
        let settings = self.holds.settings();
        self.stderr(&command::banner(
            &access.id,
            &repository,
            &access.target.user,
            access.expires_at,
            (&settings.public_host, settings.public_port),
        ))
        .await;

        let write = &self.write;
        let handle = &self.handle;
        let input = &mut self.input;
        let mut forwarded_status = false;
        // Guest → user, until the guest closes the channel.
        let to_user = async {
            loop {
                let Some(msg) = from_guest.wait().await else {
                    return Ok(());
                };
                match msg {
                    ChannelMsg::Data { data } => write.data_bytes(data).await?,
                    ChannelMsg::ExtendedData { data, ext } => {
                        write.extended_data_bytes(ext, data).await?
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        forwarded_status = true;
                        write.exit_status(exit_status).await?
                    }
                    ChannelMsg::ExitSignal {
                        signal_name,
                        core_dumped,
                        error_message,
                        lang_tag,
                    } => {
                        forwarded_status = true;
                        let _ = handle
                            .exit_signal_request(
                                write.id(),
                                signal_name,
                                core_dumped,
                                error_message,
                                lang_tag,
                            )
                            .await;
                    }
                    ChannelMsg::Failure => {
                        return Err(russh::Error::RequestDenied);
                    }
                    ChannelMsg::Eof => write.eof().await?,
                    ChannelMsg::Close => return Ok(()),
                    _ => {}
                }
            }
        };
        // User → guest, until the user closes the channel.
        let to_vm = async {
            while let Some(i) = input.recv().await {
                let r = match i {
                    Input::Data(d) => to_guest.data_bytes(d).await,
                    Input::Eof => to_guest.eof().await,
                    Input::WindowChange {
                        cols,
                        rows,
                        pix_width,
                        pix_height,
                    } => {
                        to_guest
                            .window_change(cols, rows, pix_width, pix_height)
                            .await
                    }
                    Input::Signal(s) => to_guest.signal(s).await,
                };
                if r.is_err() {
                    break;
                }
            }
        };
        enum End {
            Guest(Result<(), russh::Error>),
            User,
            Window,
            Stop,
        }
        let end = tokio::select! {
            r = to_user => End::Guest(r),
            () = to_vm => End::User,
            () = access.ended.cancelled() => End::Window,
            () = self.stop.cancelled() => End::Stop,
        };
        let _ = to_guest.close().await;
        if access.ended.is_cancelled() {
            // The window's end also ends the guest's connection: whichever
            // was seen first, the user learns why.
            self.stderr(&format!("\n{}\n", access.farewell())).await;
            return None;
        }
        match end {
            End::Guest(Ok(())) => {
                tracing::info!(job = %access.id, peer = %self.peer, "debug SSH: the guest's shell ended");
                if forwarded_status {
                    None
                } else {
                    Some(NO_STATUS)
                }
            }
            End::Guest(Err(russh::Error::RequestDenied)) => {
                self.stderr(&fail(&"the guest refused to start a shell"))
                    .await;
                Some(EXIT_REFUSED)
            }
            End::Guest(Err(_)) => None,
            End::User => None,
            // Handled above.
            End::Window => None,
            End::Stop => {
                self.stderr("\nThe runner's debug gateway stops; this session ends.\n")
                    .await;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DebugSshConfig;
    use crate::metrics::Metrics;
    use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};

    struct AnyHostKey;

    impl russh::client::Handler for AnyHostKey {
        type Error = russh::Error;

        async fn check_server_key(
            &mut self,
            _: &PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }

    /// A gateway with no window; its address, holds, stop and task.
    async fn start() -> (
        SocketAddr,
        DebugHolds,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = DebugSshConfig {
            listen: addr,
            public_host: "localhost".into(),
            public_port: addr.port(),
            ttl: Duration::from_secs(60),
            max_held: 1,
            idle_timeout: Duration::from_secs(60),
        };
        let dir = tempfile::tempdir().unwrap();
        let host_key = super::super::hostkey::load_or_create(dir.path()).unwrap();
        let holds = DebugHolds::new(settings, "SHA256:test".into(), Metrics::new());
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, host_key, holds.clone(), stop.clone()));
        (addr, holds, stop, server)
    }

    #[tokio::test]
    async fn unknown_keys_are_refused_and_stop_ends_serving() {
        let (addr, holds, stop, server) = start().await;
        let config = Arc::new(russh::client::Config::default());
        let mut client = russh::client::connect(config, addr, AnyHostKey)
            .await
            .unwrap();
        let key = crate::ssh::ClientKey::generate().private();
        let auth = client
            .authenticate_publickey(USER, PrivateKeyWithHashAlg::new(key, None))
            .await
            .unwrap();
        assert!(!auth.success(), "no window knows the key");
        client
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await
            .unwrap();
        let t = std::time::Instant::now();
        while !holds
            .metrics()
            .encode()
            .contains("solstice_debug_ssh_events_total{event=\"refused\"} 1")
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the refusal is counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns once stopped")
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    /// Reads until the server's identification line, or EOF (false).
    async fn banner(c: &mut tokio::net::TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
                .await
                .expect("the server answers or closes")
                .unwrap_or(0);
            if n == 0 {
                return false;
            }
            got.extend_from_slice(&buf[..n]);
            if got.starts_with(b"SSH-2.0-Solstice_debug_gateway") {
                return true;
            }
        }
    }

    /// A connection to `addr` from the loopback address `127.0.0.<host>`.
    async fn connect_from(host: u8, addr: SocketAddr) -> tokio::net::TcpStream {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::from(([127, 0, 0, host], 0))).unwrap();
        s.connect(addr).await.unwrap()
    }

    #[tokio::test]
    async fn connections_beyond_the_limits_are_dropped() {
        let (addr, _holds, stop, server) = start().await;
        let mut open = Vec::new();
        // One address gets its share, not more.
        for _ in 0..MAX_CONNECTIONS_PER_PEER {
            let mut c = connect_from(2, addr).await;
            assert!(banner(&mut c).await);
            open.push(c);
        }
        let mut extra = connect_from(2, addr).await;
        assert!(
            !banner(&mut extra).await,
            "one connection too many from 127.0.0.2"
        );
        // Others fill the host's places.
        let mut host = 3;
        while open.len() < MAX_CONNECTIONS {
            for _ in 0..MAX_CONNECTIONS_PER_PEER.min(MAX_CONNECTIONS - open.len()) {
                let mut c = connect_from(host, addr).await;
                assert!(banner(&mut c).await);
                open.push(c);
            }
            host += 1;
        }
        let mut extra = connect_from(host + 1, addr).await;
        assert!(!banner(&mut extra).await, "one connection too many");
        // One leaves: a new one is served again.
        drop(open.pop());
        let t = std::time::Instant::now();
        loop {
            let mut c = connect_from(host + 1, addr).await;
            if banner(&mut c).await {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "a place came free");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        server.await.unwrap();
    }
}

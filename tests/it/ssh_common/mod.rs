//! Real SSH servers for tests: OpenSSH `sshd` and dropbear on 127.0.0.1,
//! each with its own temporary directory, host key and authorized key.
//!
//! Dropbear has no option for the authorized keys file: it always reads
//! `~/.ssh/authorized_keys` of the login user. So it runs in a private mount
//! namespace (`unshare`) where a temporary directory is bind-mounted over that
//! user's home. As root this needs nothing else; otherwise the namespace is
//! also a user namespace and the login user is `root` inside it.

#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use solstice::guest::{GuestSession, OutputChunk, Stream};
use solstice::ssh::{ClientKey, HostKey, HostKeyCheck, SshSession, SshTarget};
use tokio::sync::mpsc;

/// Which SSH server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OpenSsh,
    Dropbear,
}

/// A running SSH server. Killed (with its whole process group) on drop.
pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub user: String,
    /// The public host key line the server presents (ed25519).
    pub host_key: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn euid_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_file(path: &Path, contents: &str, mode: u32) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The user a test server of `kind` lets the client log in as.
pub fn login_user(kind: Kind) -> String {
    match kind {
        Kind::OpenSsh => current_user(),
        // Inside dropbear's namespace the login user is root.
        Kind::Dropbear => "root".to_string(),
    }
}

fn home_of(user: &str) -> PathBuf {
    let out = Command::new("getent")
        .args(["passwd", user])
        .output()
        .unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(line.trim().split(':').nth(5).expect("home field"))
}

/// A command prefix that runs the rest of its arguments in a private mount
/// namespace where `home` is bind-mounted over `user`'s home directory (in a
/// user namespace too if `userns`).
fn shadow_home(home: &Path, user: &str, userns: bool) -> Command {
    let mut cmd = Command::new("unshare");
    if userns {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" "$1" && shift && exec "$@""#)
        .arg(home)
        .arg(home_of(user));
    cmd
}

impl Server {
    /// Starts a server of `kind` on `port` that accepts `client` and
    /// presents `host` (and, for OpenSSH, an extra ECDSA host key listed
    /// first, so that pinning must pick the right one). Does not wait.
    pub fn spawn(kind: Kind, port: u16, client: &ClientKey, host: &HostKey) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let host_pem = d.join("host_ed25519");
        write_file(&host_pem, host.private_openssh().expose(), 0o600);
        let log = std::fs::File::create(d.join("server.log")).unwrap();
        let mut cmd;
        let user;
        match kind {
            Kind::OpenSsh => {
                user = login_user(kind);
                run(Command::new("ssh-keygen")
                    .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
                    .arg(d.join("host_ecdsa")));
                write_file(&d.join("authorized_keys"), &client.public_openssh(), 0o600);
                let config = format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ecdsa\nHostKey {d}/host_ed25519\n\
                     AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\nPidFile none\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                     PermitRootLogin yes\nLogLevel VERBOSE\n",
                    d = d.display()
                );
                write_file(&d.join("sshd_config"), &config, 0o600);
                if euid_is_root() {
                    let _ = std::fs::create_dir_all("/run/sshd");
                }
                let home = d.join("home");
                std::fs::create_dir_all(&home).unwrap();
                // As root, hide root's dotfiles from the sessions (a slow
                // ~/.bashrc would be measured as SSH latency).
                cmd = if euid_is_root() {
                    shadow_home(&home, &user, false)
                } else {
                    Command::new("/usr/sbin/sshd")
                };
                if euid_is_root() {
                    cmd.arg("/usr/sbin/sshd");
                }
                cmd.args(["-D", "-e", "-f"]).arg(d.join("sshd_config"));
            }
            Kind::Dropbear => {
                let db_key = d.join("host_dropbear");
                run(Command::new("dropbearconvert")
                    .args(["openssh", "dropbear"])
                    .arg(&host_pem)
                    .arg(&db_key));
                let home = d.join("home");
                std::fs::create_dir_all(home.join(".ssh")).unwrap();
                std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
                write_file(
                    &home.join(".ssh/authorized_keys"),
                    &client.public_openssh(),
                    0o600,
                );
                user = login_user(kind);
                cmd = shadow_home(&home, &user, !euid_is_root());
                cmd.args(["/usr/sbin/dropbear", "-F", "-E", "-s", "-m", "-P"])
                    .arg(d.join("dropbear.pid"))
                    .arg("-p")
                    .arg(addr.to_string())
                    .arg("-r")
                    .arg(&db_key);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Server {
            kind,
            addr,
            user,
            host_key: host.public_openssh(),
            dir,
            child: Some(child),
        }
    }

    /// Starts a server and waits until it sends its banner.
    pub fn start(kind: Kind, client: &ClientKey, host: &HostKey) -> Server {
        let s = Server::spawn(kind, free_port(), client, host);
        s.wait_listening();
        s
    }

    /// Waits until the server answers with an SSH banner.
    pub fn wait_listening(&self) {
        use std::io::Read;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(mut s) = std::net::TcpStream::connect(self.addr) {
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut b = [0u8; 4];
                if s.read_exact(&mut b).is_ok() && &b == b"SSH-" {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{:?} server did not come up:\n{}", self.kind, self.log());
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A target for this server with the given client key and policy.
    pub fn target(&self, client: &ClientKey, check: HostKeyCheck) -> SshTarget {
        SshTarget::new(self.addr, self.user.clone(), client.clone(), check).unwrap()
    }

    /// A target that pins the server's ed25519 host key.
    pub fn pinned(&self, client: &ClientKey) -> SshTarget {
        self.target(client, HostKeyCheck::Pinned(self.host_key.clone()))
    }

    /// Kills the server and every session process it started.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Output of one command, split by stream, plus its status.
#[derive(Debug)]
pub struct Ran {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Chunks in arrival order, with the time each arrived.
    pub chunks: Vec<(Instant, Stream, Vec<u8>)>,
}

impl Ran {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs `command` with `stdin` and collects everything, as the executor
/// would (a consumer task draining the channel while the command runs).
pub async fn run_cmd(session: &SshSession, command: &str, stdin: &[u8]) -> Ran {
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
    let collect = tokio::spawn(async move {
        let mut chunks = Vec::new();
        while let Some(c) = rx.recv().await {
            chunks.push((Instant::now(), c.stream, c.data));
        }
        chunks
    });
    let status = session.exec(command, stdin, tx).await.unwrap();
    let chunks = collect.await.unwrap();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    for (_, s, d) in &chunks {
        match s {
            Stream::Stdout => stdout.extend_from_slice(d),
            Stream::Stderr => stderr.extend_from_slice(d),
        }
    }
    Ran {
        status,
        stdout,
        stderr,
        chunks,
    }
}

/// A TCP forwarder in front of a server whose connections can be cut, as
/// when a VM dies under an open SSH connection.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: tokio_util::sync::CancellationToken,
}

impl Proxy {
    pub async fn start(to: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = tokio_util::sync::CancellationToken::new();
        let c = cut.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    () = c.cancelled() => return,
                    r = listener.accept() => r.unwrap(),
                };
                let c = c.clone();
                tokio::spawn(async move {
                    let mut outbound = tokio::net::TcpStream::connect(to).await.unwrap();
                    tokio::select! {
                        () = c.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Proxy { addr, cut }
    }

    /// Closes every forwarded connection and stops accepting.
    pub fn cut(&self) {
        self.cut.cancel();
    }
}

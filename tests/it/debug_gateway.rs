//! The debug SSH gateway with real guests and the real OpenSSH client: two
//! failing jobs in tiny guests are held (as the daemon would hold them),
//! then `ssh` logs in, is refused, runs `done`, and sees a window expire.
//! Serialise with the other VM tests (`flock /tmp/solstice-vm.lock`).

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use russh::keys::PublicKey;
use solstice::config::DebugSshConfig;
use solstice::debug::{ArmRequest, DebugHolds, EndReason, gateway, hostkey};
use solstice::events::EventSink;
use solstice::job::{self, CheckoutSource, DebugHold, FailedGuest, VmRun};
use solstice::metrics::Metrics;
use solstice::testing::VecSink;
use solstice::vm::Vm;
use support::TestEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Keeps the failed guest in `holds` for `actor` with `key`, like the
/// daemon does (without the forge and the clean-up).
struct TestHold {
    holds: DebugHolds,
    id: String,
    repository: String,
    actor: String,
    key: PublicKey,
    ttl: Duration,
    pid: Mutex<Option<u32>>,
    ended: Mutex<Option<oneshot::Sender<EndReason>>>,
}

#[async_trait::async_trait]
impl DebugHold for TestHold {
    async fn offer(&self, guest: FailedGuest, _sink: &dyn EventSink) -> Option<Vm> {
        let reservation = self.holds.reserve("test", &self.repository).unwrap();
        let FailedGuest {
            vm,
            target,
            session,
            ..
        } = guest;
        let _ = session.close().await;
        *self.pid.lock().unwrap() = Some(vm.pid());
        let tx = self.ended.lock().unwrap().take();
        self.holds.arm(
            reservation,
            ArmRequest {
                id: self.id.clone(),
                forge: "test".into(),
                repository: self.repository.clone(),
                actor: self.actor.clone(),
                keys: vec![self.key.clone()],
                ttl: self.ttl,
                vm,
                target,
                on_end: Box::new(move |why, _destroyed| {
                    if let Some(tx) = tx {
                        let _ = tx.send(why);
                    }
                }),
            },
        );
        None
    }
}

const FAILING: &str = r#"
name: debug
on: push
jobs:
  fail:
    runs-on: tiny
    steps:
      - run: |
          echo "marker of $GITHUB_REPOSITORY" > marker.txt
          echo "$PWD" > /tmp/workspace-path
      - run: exit 1
"#;

/// A held failed job: its id, QEMU pid, and the receiver of its end.
struct Held {
    id: String,
    pid: u32,
    ended: oneshot::Receiver<EndReason>,
}

async fn hold_failed_job(
    env: &TestEnv,
    holds: &DebugHolds,
    repository: &str,
    actor: &str,
    key: &Path,
    ttl: Duration,
) -> Held {
    let mut spec = env.spec(FAILING, vec![], CheckoutSource::None);
    spec.github["repository"] = serde_json::json!(repository);
    let id = job::id::new_job_id("dbg");
    let (tx, rx) = oneshot::channel();
    let hold = TestHold {
        holds: holds.clone(),
        id: id.clone(),
        repository: repository.into(),
        actor: actor.into(),
        key: public_key(key),
        ttl,
        pid: Mutex::new(None),
        ended: Mutex::new(Some(tx)),
    };
    let run = VmRun {
        config: &env.config,
        image: env.image(),
        accel: &env.accel,
        job_id: &id,
        spec: &spec,
        runner_name: "solstice-test",
        observer: None,
        debug: Some(&hold),
        warm: None,
    };
    let sink = VecSink::default();
    let report = job::run_in_vm(&run, &sink, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        report.outcome.conclusion,
        solstice::events::Conclusion::Failure
    );
    let pid = hold
        .pid
        .lock()
        .unwrap()
        .expect("the failed guest was offered");
    assert!(alive(pid), "the held VM's QEMU runs");
    Held { id, pid, ended: rx }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success());
    path
}

fn public_key(private: &Path) -> PublicKey {
    let line = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    PublicKey::from_openssh(line.trim()).unwrap()
}

/// `ssh` with `key` to the gateway at `port`, and `args` after the options.
fn ssh(key: &Path, port: u16, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("/usr/bin/ssh");
    c.args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-F",
        "/dev/null",
        "-i",
    ])
    .arg(key)
    .args(["-p", &port.to_string()])
    .args(args)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    c
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `ssh` with `input` on stdin (then closed).
async fn run_ssh(key: &Path, port: u16, args: &[&str], input: &str) -> Out {
    let mut child = ssh(key, port, args).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("ssh finished")
        .unwrap();
    let out = Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "ssh {args:?} -> {:?}\n--- stdout\n{}--- stderr\n{}",
        out.code, out.stdout, out.stderr
    );
    out
}

/// An interactive `ssh -t -t … connect <id>`, its output collected.
struct Terminal {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    seen: std::sync::Arc<Mutex<String>>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

impl Terminal {
    fn open(key: &Path, port: u16, id: &str, options: &[&str]) -> Terminal {
        let mut args = vec!["-t", "-t"];
        args.extend_from_slice(options);
        args.extend_from_slice(&["debug@127.0.0.1", "connect", id]);
        let mut cmd = ssh(key, port, &args);
        // X11 forwarding is only asked for with a display.
        cmd.env("DISPLAY", "127.0.0.1:99");
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let seen = std::sync::Arc::new(Mutex::new(String::new()));
        let pump = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    seen.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        let pumps = vec![
            pump(Box::new(child.stdout.take().unwrap())),
            pump(Box::new(child.stderr.take().unwrap())),
        ];
        Terminal {
            child,
            stdin,
            seen,
            pumps,
        }
    }

    async fn wait_for(&self, text: &str) {
        let seen = self.seen.clone();
        wait_for(text, Duration::from_secs(30), || {
            seen.lock().unwrap().contains(text)
        })
        .await;
    }

    async fn type_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    /// Waits until the gateway ends the session; everything it printed.
    async fn end(mut self, within: Duration) -> String {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the session ends")
            .unwrap();
        for p in self.pumps {
            p.await.unwrap();
        }
        self.seen.lock().map(|s| s.clone()).unwrap()
    }
}

async fn wait_for(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_actor_gets_a_shell_others_are_refused_done_and_expiry_destroy_the_vm() {
    let env = TestEnv::tiny();
    let keys = tempfile::tempdir().unwrap();
    let alice = keygen(keys.path(), "alice");
    let bob = keygen(keys.path(), "bob");
    let mallory = keygen(keys.path(), "mallory");

    let host_key = hostkey::load_or_create(&env.config.daemon.state_dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let settings = DebugSshConfig {
        listen: listener.local_addr().unwrap(),
        public_host: "127.0.0.1".into(),
        public_port: port,
        ttl: Duration::from_secs(1800),
        max_held: 2,
        idle_timeout: Duration::from_secs(600),
    };
    let metrics = Metrics::new();
    let holds = DebugHolds::new(settings, hostkey::fingerprint(&host_key), metrics.clone());
    let stop = CancellationToken::new();
    let server = tokio::spawn(gateway::serve(
        listener,
        host_key,
        holds.clone(),
        stop.clone(),
    ));

    // Bob's job is kept long; Alice's only briefly, to see it expire.
    let y = hold_failed_job(
        &env,
        &holds,
        "octo/why",
        "bob",
        &bob,
        Duration::from_secs(1200),
    )
    .await;
    let x = hold_failed_job(
        &env,
        &holds,
        "octo/ex",
        "alice",
        &alice,
        Duration::from_secs(40),
    )
    .await;
    let x_armed = Instant::now();

    // A key no window knows is refused at authentication.
    let out = run_ssh(&mallory, port, &["debug@127.0.0.1", "connect", &x.id], "").await;
    assert_eq!(out.code, Some(255));
    assert!(
        out.stderr.contains("Permission denied (publickey)"),
        "{}",
        out.stderr
    );

    // Alice's key is known (window X), but not for Bob's job.
    let out = run_ssh(&alice, port, &["debug@127.0.0.1", "connect", &y.id], "").await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("Refused: your key is not one of the keys that bob registered on the forge."),
        "{}",
        out.stderr
    );
    // The user must be `debug`.
    let out = run_ssh(&alice, port, &["root@127.0.0.1", "connect", &x.id], "").await;
    assert_eq!(out.code, Some(255));

    // Alice opens a terminal session in X, which stays open until the window ends.
    let mut session = Terminal::open(&alice, port, &x.id, &[]);
    session
        .wait_for(&format!("Connected to job {} (octo/ex) as root", x.id))
        .await;
    session
        .type_line("cat \"$(cat /tmp/workspace-path)/marker.txt\"; echo answer=$((6*7))")
        .await;
    session.wait_for("marker of octo/ex").await;
    session.wait_for("answer=42").await;
    // The window ends: the session is closed with the farewell, the VM destroyed.
    let text = session.end(Duration::from_secs(90)).await;
    eprintln!("session X ({:?} after arming):\n{text}", x_armed.elapsed());
    assert!(
        text.contains(&format!(
            "The debug window of job {} is over; its VM is destroyed now.",
            x.id
        )),
        "{text}"
    );
    assert!(
        x_armed.elapsed() >= Duration::from_secs(35),
        "the window was not cut short"
    );
    let why = tokio::time::timeout(Duration::from_secs(60), x.ended)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(why, EndReason::Expired);
    assert!(!alive(x.pid), "the expired window's VM is gone");

    // Bob: a shell without a terminal, commands on stdin, its exit status forwarded.
    let out = run_ssh(
        &bob,
        port,
        &["debug@127.0.0.1", "connect", &y.id],
        "cd \"$(cat /tmp/workspace-path)\" && cat marker.txt\necho answer=$((6*7))\nexit 3\n",
    )
    .await;
    assert_eq!(out.code, Some(3));
    assert!(out.stdout.contains("marker of octo/why"), "{}", out.stdout);
    assert!(out.stdout.contains("answer=42"), "{}", out.stdout);
    assert!(
        out.stderr.contains(&format!(
            "Connected to job {} (octo/why) as root; this VM is destroyed at ",
            y.id
        )),
        "{}",
        out.stderr
    );

    // A bare login and an unknown command get the usage.
    let out = run_ssh(&bob, port, &["debug@127.0.0.1"], "").await;
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("connect <job id>"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "ssh -t -p {port} debug@127.0.0.1 connect <job id>"
        )),
        "{}",
        out.stderr
    );
    let out = run_ssh(&bob, port, &["debug@127.0.0.1", "sh", "-c", "id"], "").await;
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr
            .contains("Not a command of this gateway: `sh -c id`."),
        "{}",
        out.stderr
    );
    // An id nobody holds.
    let out = run_ssh(&bob, port, &["debug@127.0.0.1", "connect", &x.id], "").await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains(&format!("Refused: no failed job {} is kept", x.id)),
        "{}",
        out.stderr
    );

    // Remote forwarding is refused.
    let out = run_ssh(
        &bob,
        port,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "0:127.0.0.1:9",
            "debug@127.0.0.1",
        ],
        "",
    )
    .await;
    assert_eq!(out.code, Some(255));
    assert!(
        out.stderr.contains("remote port forwarding failed"),
        "{}",
        out.stderr
    );
    // Local forwarding: the client listens, the gateway refuses the channel.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let local = free.local_addr().unwrap();
    drop(free);
    let forward = format!("{local}:127.0.0.1:{port}");
    let mut fwd = ssh(&bob, port, &["-N", "-L", &forward, "debug@127.0.0.1"])
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut conn = loop {
        if let Ok(c) = tokio::net::TcpStream::connect(local).await {
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "ssh -L never listened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf))
        .await
        .expect("the forwarded connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing came through the refused forward");
    fwd.kill().await.unwrap();
    let out = fwd.wait_with_output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("administratively prohibited"), "{err}");

    // `done` destroys Bob's VM, and ends his open session (X11 forwarding
    // refused, the shell works without it).
    let mut session = Terminal::open(&bob, port, &y.id, &["-o", "ForwardX11=yes"]);
    session
        .wait_for(&format!("Connected to job {}", y.id))
        .await;
    session.type_line("echo sum=$((2+3))").await;
    session.wait_for("sum=5").await;
    let out = run_ssh(&bob, port, &["debug@127.0.0.1", "done", &y.id], "").await;
    assert_eq!(out.code, Some(0));
    assert!(
        out.stdout.contains(&format!(
            "Job {} is released; its VM is being destroyed.",
            y.id
        )),
        "{}",
        out.stdout
    );
    let text = session.end(Duration::from_secs(30)).await;
    assert!(
        text.contains(&format!(
            "Job {} was released with `done`; its VM is destroyed now.",
            y.id
        )),
        "{text}"
    );
    assert!(text.contains("X11 forwarding request failed"), "{text}");
    let why = tokio::time::timeout(Duration::from_secs(60), y.ended)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(why, EndReason::Released);
    assert!(!alive(y.pid), "the released VM is gone");
    assert!(holds.list().is_empty());

    let text = metrics.encode();
    for line in [
        "solstice_debug_ssh_events_total{event=\"login\"} 3",
        "solstice_debug_ssh_events_total{event=\"expired\"} 1",
        "solstice_debug_ssh_events_total{event=\"released\"} 1",
        "solstice_debug_ssh_events_total{event=\"refused\"} 4",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    env.assert_no_leaks();
}

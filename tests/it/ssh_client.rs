//! The SSH client against real OpenSSH and dropbear servers on 127.0.0.1.

use crate::ssh_common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use solstice::guest::{GuestError, GuestSession, Stream};
use solstice::ssh::{
    ClientKey, HostKey, HostKeyCheck, ReadyOptions, ReadyProgress, SshError, SshTarget, connect,
    wait_ready,
};
use ssh_common::{Kind, Proxy, Server, free_port, run_cmd};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(10);

/// Generates one test per server kind from `async fn $name(kind: Kind)`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dropbear() {
                super::$name(Kind::Dropbear).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn openssh() {
                super::$name(Kind::OpenSsh).await
            }
        }
    };
}

fn setup(kind: Kind) -> (Server, ClientKey) {
    let client = ClientKey::generate();
    let server = Server::start(kind, &client, &HostKey::generate());
    (server, client)
}

both!(exec_reports_output_and_exit_codes);
async fn exec_reports_output_and_exit_codes(kind: Kind) {
    let (server, client) = setup(kind);
    let s = connect(&server.pinned(&client), T).await.unwrap();

    let r = run_cmd(&s, "echo hello", b"").await;
    assert_eq!((r.status, r.stdout_str().as_str()), (0, "hello\n"));
    assert!(r.stderr.is_empty());

    let r = run_cmd(&s, "echo out; echo err >&2; exit 3", b"").await;
    assert_eq!(r.status, 3);
    assert_eq!(r.stdout_str(), "out\n");
    assert_eq!(r.stderr_str(), "err\n");

    let r = run_cmd(&s, "kill -9 $$", b"").await;
    assert_eq!(r.status, 128 + 9, "signal death");

    let r = run_cmd(&s, "kill -TERM $$", b"").await;
    assert_eq!(r.status, 128 + 15, "signal death");

    s.close().await.unwrap();
}

both!(output_streams_while_the_command_runs);
async fn output_streams_while_the_command_runs(kind: Kind) {
    let (server, client) = setup(kind);
    let s = connect(&server.pinned(&client), T).await.unwrap();
    let r = run_cmd(&s, "echo first; sleep 1; echo second", b"").await;
    let ended = Instant::now();
    assert_eq!(r.status, 0);
    assert_eq!(r.stdout_str(), "first\nsecond\n");
    let (first_at, stream, data) = &r.chunks[0];
    assert_eq!(
        (*stream, data.as_slice()),
        (Stream::Stdout, &b"first\n"[..])
    );
    assert!(
        ended.duration_since(*first_at) >= Duration::from_millis(800),
        "first chunk arrived only {:?} before the end",
        ended.duration_since(*first_at)
    );
}

both!(stdin_is_delivered_whole);
async fn stdin_is_delivered_whole(kind: Kind) {
    let (server, client) = setup(kind);
    let s = connect(&server.pinned(&client), T).await.unwrap();
    let input: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();

    let r = run_cmd(&s, "cat", &input).await;
    assert_eq!(r.status, 0);
    assert_eq!(r.stdout.len(), input.len());
    assert!(r.stdout == input, "cat echoed different bytes");

    let r = run_cmd(&s, "wc -c", &input).await;
    assert_eq!(r.stdout_str().trim(), (5 * 1024 * 1024).to_string());

    // A command that ignores stdin must not hang the exec.
    let r = run_cmd(&s, "echo ignored", &input).await;
    assert_eq!((r.status, r.stdout_str().as_str()), (0, "ignored\n"));

    // Empty stdin is an immediate EOF.
    let r = run_cmd(&s, "wc -c", b"").await;
    assert_eq!(r.stdout_str().trim(), "0");
}

both!(upload_writes_contents_and_mode);
async fn upload_writes_contents_and_mode(kind: Kind) {
    let (server, client) = setup(kind);
    let s = connect(&server.pinned(&client), T).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("step it's.sh");
    let p = path.to_str().unwrap();
    let script = b"#!/bin/sh\necho \"from script: $1\"\nexit 4\n";
    s.upload(p, script, 0o700).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), script);

    let r = run_cmd(&s, &format!("stat -c %a {}", shell_quote(p)), b"").await;
    assert_eq!(r.stdout_str().trim(), "700");
    let r = run_cmd(&s, &format!("ls -l {}", shell_quote(p)), b"").await;
    assert!(
        r.stdout_str().starts_with("-rwx------"),
        "{}",
        r.stdout_str()
    );
    let r = run_cmd(&s, &format!("{} arg", shell_quote(p)), b"").await;
    assert_eq!(
        (r.status, r.stdout_str().as_str()),
        (4, "from script: arg\n")
    );

    // Uploading into a missing directory fails with the guest's message.
    let err = s
        .upload("/nonexistent-dir/x", b"x", 0o600)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent-dir/x"), "{err}");
}

fn shell_quote(s: &str) -> String {
    solstice::guest::shell_quote(s)
}

both!(concurrent_execs_share_one_connection);
async fn concurrent_execs_share_one_connection(kind: Kind) {
    let (server, client) = setup(kind);
    let s = Arc::new(connect(&server.pinned(&client), T).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("pid");
    let pid = shell_quote(pid.to_str().unwrap());

    // A long step, and a kill command on the same session while it runs.
    let step = {
        let s = Arc::clone(&s);
        let cmd = format!("echo $$ > {pid}; exec sleep 30");
        tokio::spawn(async move { run_cmd(&s, &cmd, b"").await })
    };
    let quick = run_cmd(&s, "echo quick", b"").await;
    assert_eq!(quick.stdout_str(), "quick\n");
    let kill = format!("while ! test -s {pid}; do sleep 0.05; done; kill -TERM $(cat {pid})");
    let killed = run_cmd(&s, &kill, b"").await;
    assert_eq!(killed.status, 0, "{}", killed.stderr_str());
    let started = Instant::now();
    let r = tokio::time::timeout(T, step).await.unwrap().unwrap();
    assert_eq!(r.status, 128 + 15);
    assert!(started.elapsed() < Duration::from_secs(5));
}

both!(dropping_exec_closes_its_channel);
async fn dropping_exec_closes_its_channel(kind: Kind) {
    let (server, client) = setup(kind);
    let s = connect(&server.pinned(&client), T).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pid = shell_quote(dir.path().join("pid").to_str().unwrap());

    // The loop writes forever: once its channel is closed, the write fails
    // (SIGPIPE) and the loop ends.
    let (tx, mut rx) = mpsc::channel(16);
    let cmd = format!("echo $$ > {pid}; while :; do echo tick || exit 1; sleep 0.1; done");
    {
        let exec = s.exec(&cmd, b"", tx);
        tokio::pin!(exec);
        tokio::select! {
            r = &mut exec => panic!("exec ended early: {r:?}"),
            first = rx.recv() => assert_eq!(first.unwrap().data, b"tick\n"),
        }
    } // exec future dropped here

    let check = format!("kill -0 $(cat {pid}) 2>/dev/null && echo alive || echo gone");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = run_cmd(&s, &check, b"").await;
        if r.stdout_str().trim() == "gone" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the loop still runs 5 s after its exec was dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

both!(lost_connection_is_disconnected);
async fn lost_connection_is_disconnected(kind: Kind) {
    let (server, client) = setup(kind);
    let proxy = Proxy::start(server.addr).await;
    let mut target = server.pinned(&client);
    target.addr = proxy.addr;
    let s = connect(&target, T).await.unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let exec = s.exec("echo started; sleep 30", b"", tx);
    tokio::pin!(exec);
    tokio::select! {
        r = &mut exec => panic!("exec ended early: {r:?}"),
        () = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
    proxy.cut();
    let r = tokio::time::timeout(T, exec).await.expect("exec hung");
    match r {
        Err(GuestError::Disconnected(msg)) => assert!(msg.contains("127.0.0.1"), "{msg}"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    drain.await.unwrap();
    // Later commands fail the same way.
    let (tx, _rx) = mpsc::channel(1);
    assert!(matches!(
        s.exec("true", b"", tx).await,
        Err(GuestError::Disconnected(_))
    ));
}

both!(pinned_host_key_is_enforced);
async fn pinned_host_key_is_enforced(kind: Kind) {
    let (server, client) = setup(kind);
    // The right key logs in (OpenSSH also offers an ECDSA key first).
    let s = connect(&server.pinned(&client), T).await.unwrap();
    assert_eq!(run_cmd(&s, "true", b"").await.status, 0);

    let other = HostKey::generate();
    let target = server.target(&client, HostKeyCheck::Pinned(other.public_openssh()));
    let err = connect(&target, T).await.unwrap_err();
    assert!(
        matches!(err, SshError::HostKeyMismatch { .. }),
        "expected HostKeyMismatch, got {err:?}"
    );
    let msg = err.to_string();
    assert!(msg.starts_with("Host key mismatch at 127.0.0.1:"), "{msg}");
    assert!(msg.contains(&other.fingerprint()), "{msg}");
}

both!(trust_first_use_pins_the_first_key);
async fn trust_first_use_pins_the_first_key(kind: Kind) {
    let client = ClientKey::generate();
    let first = HostKey::generate();
    let port = free_port();
    let mut server = Server::spawn(kind, port, &client, &first);
    server.wait_listening();
    let target = server.target(&client, HostKeyCheck::TrustFirstUse);
    assert_eq!(target.host_key(), None);

    let a = connect(&target, T).await.unwrap();
    let b = connect(&target.clone(), T).await.unwrap();
    assert_eq!(run_cmd(&b, "echo ok", b"").await.stdout_str(), "ok\n");
    let pinned = target.host_key().unwrap();
    assert!(pinned.starts_with("ssh-ed25519 "), "{pinned}");
    assert!(
        server
            .host_key
            .starts_with(pinned.trim_end_matches(" solstice-guest"))
    );
    drop((a, b));

    // Same address, a different guest: rejected.
    server.kill();
    let second = Server::spawn(kind, port, &client, &HostKey::generate());
    second.wait_listening();
    let err = connect(&target, T).await.unwrap_err();
    assert!(
        matches!(err, SshError::HostKeyMismatch { .. }),
        "expected HostKeyMismatch, got {err:?}"
    );
    // A fresh target trusts the new guest.
    let fresh = second.target(&client, HostKeyCheck::TrustFirstUse);
    connect(&fresh, T).await.unwrap();
}

both!(wrong_client_key_is_rejected);
async fn wrong_client_key_is_rejected(kind: Kind) {
    let (server, _client) = setup(kind);
    let stranger = ClientKey::generate();
    let err = connect(&server.pinned(&stranger), T).await.unwrap_err();
    assert!(
        matches!(err, SshError::AuthRejected { .. }),
        "expected AuthRejected, got {err:?}"
    );
    assert!(err.to_string().contains("rejected"), "{err}");
}

fn fast_opts(deadline: Duration) -> ReadyOptions {
    ReadyOptions {
        deadline,
        probes: 2,
        probe_interval: Duration::from_millis(200),
        poll_interval: Duration::from_millis(100),
        ..ReadyOptions::default()
    }
}

type Seen = Arc<Mutex<Vec<ReadyProgress>>>;

fn recorder() -> (Seen, impl Fn(ReadyProgress) + Send + Sync) {
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    (seen, move |p| s.lock().unwrap().push(p))
}

both!(wait_ready_polls_until_the_server_starts);
async fn wait_ready_polls_until_the_server_starts(kind: Kind) {
    let client = ClientKey::generate();
    let host = HostKey::generate();
    let port = free_port();
    let target = SshTarget::new(
        format!("127.0.0.1:{port}").parse().unwrap(),
        ssh_common::login_user(kind),
        client.clone(),
        HostKeyCheck::Pinned(host.public_openssh()),
    )
    .unwrap();
    let started = Instant::now();
    let starter = {
        let client = client.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Server::spawn(kind, port, &client, &host)
        })
    };
    let (seen, progress) = recorder();
    let cancel = CancellationToken::new();
    let s = wait_ready(
        &target,
        &fast_opts(Duration::from_secs(20)),
        &cancel,
        &progress,
    )
    .await
    .unwrap();
    let _server = starter.await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(run_cmd(&s, "echo up", b"").await.stdout_str(), "up\n");

    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 3, "expected several attempts: {seen:?}");
    let refused = seen[0].last_failure.as_deref().unwrap();
    assert!(refused.contains("refused"), "{refused}");
    // Two consecutive successes were required: the report before the last
    // attempt shows the first one.
    let last = seen.last().unwrap();
    assert_eq!((last.successes, last.last_failure.as_deref()), (1, None));
    // Polling, not sleeping: the server was found soon after it started.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn wait_ready_deadline_names_the_last_failure() {
    let port = free_port();
    let target = SshTarget::new(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "root",
        ClientKey::generate(),
        HostKeyCheck::TrustFirstUse,
    )
    .unwrap();
    let started = Instant::now();
    let (seen, progress) = recorder();
    let err = wait_ready(
        &target,
        &fast_opts(Duration::from_secs(1)),
        &CancellationToken::new(),
        &progress,
    )
    .await
    .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    let msg = err.to_string();
    assert!(msg.starts_with("Guest at 127.0.0.1:"), "{msg}");
    assert!(msg.contains("last failure: Connection to"), "{msg}");
    assert!(msg.contains("refused"), "{msg}");
    let attempts = seen.lock().unwrap().len();
    assert!(attempts >= 5, "only {attempts} attempts in 1 s");
}

/// What a user-mode port forward does before the guest listens: accept,
/// then close at once.
#[tokio::test]
async fn wait_ready_reports_a_forward_without_a_guest() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            drop(sock);
        }
    });
    let target = SshTarget::new(
        addr,
        "root",
        ClientKey::generate(),
        HostKeyCheck::TrustFirstUse,
    )
    .unwrap();
    let err = wait_ready(
        &target,
        &fast_opts(Duration::from_millis(800)),
        &CancellationToken::new(),
        &|_| {},
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("closed the connection before sending an SSH banner"),
        "{msg}"
    );
}

/// A port that accepts and stays silent: no banner within the short timeout.
#[tokio::test]
async fn wait_ready_reports_a_silent_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let target = SshTarget::new(
        addr,
        "root",
        ClientKey::generate(),
        HostKeyCheck::TrustFirstUse,
    )
    .unwrap();
    let started = Instant::now();
    let (seen, progress) = recorder();
    let err = wait_ready(
        &target,
        &fast_opts(Duration::from_secs(1)),
        &CancellationToken::new(),
        &progress,
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1500));
    let msg = err.to_string();
    assert!(msg.contains("No SSH banner from"), "{msg}");
    assert!(seen.lock().unwrap().len() >= 2);
}

both!(wait_ready_reports_rejected_auth);
async fn wait_ready_reports_rejected_auth(kind: Kind) {
    let (server, _client) = setup(kind);
    let stranger = ClientKey::generate();
    let err = wait_ready(
        &server.pinned(&stranger),
        &fast_opts(Duration::from_secs(1)),
        &CancellationToken::new(),
        &|_| {},
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("last failure: Public key authentication as"),
        "{msg}"
    );
}

both!(wait_ready_reports_host_key_mismatch);
async fn wait_ready_reports_host_key_mismatch(kind: Kind) {
    let (server, client) = setup(kind);
    let target = server.target(
        &client,
        HostKeyCheck::Pinned(HostKey::generate().public_openssh()),
    );
    let err = wait_ready(
        &target,
        &fast_opts(Duration::from_secs(1)),
        &CancellationToken::new(),
        &|_| {},
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("last failure: Host key mismatch"), "{msg}");
}

#[tokio::test]
async fn wait_ready_stops_when_cancelled() {
    let target = SshTarget::new(
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        "root",
        ClientKey::generate(),
        HostKeyCheck::TrustFirstUse,
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.cancel();
    });
    let started = Instant::now();
    let err = wait_ready(
        &target,
        &fast_opts(Duration::from_secs(30)),
        &cancel,
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SshError::Cancelled { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

both!(close_ends_the_connection);
async fn close_ends_the_connection(kind: Kind) {
    let (server, client) = setup(kind);
    let target = server.pinned(&client);
    let s = connect(&target, T).await.unwrap();
    assert!(!s.is_closed());
    s.close().await.unwrap();
    // The server is still fine for the next connection.
    let s = connect(&target, T).await.unwrap();
    assert_eq!(run_cmd(&s, "echo again", b"").await.stdout_str(), "again\n");
}

//! End to end: debug SSH into a failed job's VM. The strict fake forge
//! (serving its users' public keys), the real `solstice run` binary, real
//! tiny guests (busybox, dropbear, no bash) and the real OpenSSH client
//! against the daemon's gateway.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use solstice::testing::fake_forge::{FakeForge, FakeJob, TaskSnapshot, TaskStatus};
use support::daemon::{Daemon, qemu_processes_under};
use support::world::{SECRET, World, fake, final_task, log_of, offline};

/// A port on 127.0.0.1 that nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A failing job that asks for debug SSH (unless `ask` is false). It leaves
/// a file in its workspace, and copies the job token into `$GITHUB_ENV` (a
/// file Solstice made for it, which the clean-up removes).
fn failing(ask: bool) -> String {
    let env = if ask {
        "env:\n  SOLSTICE_DEBUG_SSH: true\n"
    } else {
        ""
    };
    format!(
        r#"
name: ci
on: push
{env}jobs:
  test:
    runs-on: tiny
    steps:
      - run: |
          echo debug-marker > "$GITHUB_WORKSPACE/left-by-the-job.txt"
          echo "COPIED=${{{{ secrets.GITHUB_TOKEN }}}}" >> "$GITHUB_ENV"
          echo failing-on-purpose; exit 7
"#
    )
}

/// One forge user's SSH key pair, made with `ssh-keygen`.
struct UserKey {
    private: PathBuf,
    public_line: String,
}

fn keygen(dir: &Path, name: &str) -> UserKey {
    let private = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("{name}@example"))
        .arg("-f")
        .arg(&private)
        .status()
        .unwrap();
    assert!(st.success());
    let public_line = std::fs::read_to_string(private.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string();
    UserKey {
        private,
        public_line,
    }
}

/// Runs the OpenSSH client against the gateway with `key`, the remote
/// command `args` and `stdin`; at most `limit`.
fn ssh(port: u16, key: &UserKey, args: &[&str], stdin: &str, limit: Duration) -> Output {
    let mut child = Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=20",
            "-p",
        ])
        .arg(port.to_string())
        .arg("-i")
        .arg(&key.private)
        .arg("debug@127.0.0.1")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut i = child.stdin.take().unwrap();
        i.write_all(stdin.as_bytes()).unwrap();
    }
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "ssh {args:?} did not end within {limit:?}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A job as repository `repo` by `actor` (number `actor_id`), with `event`
/// overrides merged.
fn job_of(
    yaml: &str,
    repo: &str,
    actor: &str,
    actor_id: &str,
    extra: serde_json::Value,
) -> FakeJob {
    let mut j = FakeJob::new(yaml, &["tiny"]);
    let owner = repo.split('/').next().unwrap_or_default();
    let mut ctx = json!({
        "repository": repo,
        "repository_owner": owner,
        "actor": actor,
        "actor_id": actor_id,
        "triggering_actor": null,
    });
    if let (Some(c), Some(e)) = (ctx.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    j.context_overrides = ctx;
    j
}

/// The job id in the log's `connect <id>` line.
fn connect_id(t: &TaskSnapshot) -> String {
    let log = log_of(t);
    let line = log
        .lines()
        .find(|l| l.contains("debug@127.0.0.1 connect "))
        .unwrap_or_else(|| panic!("no connect line in the log:\n{log}"));
    line.rsplit(' ').next().unwrap().trim().to_string()
}

fn metrics(port: u16) -> String {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status_text(world: &World) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_solstice"))
        .args(["status", "-c"])
        .arg(&world.config)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn wait_final(forge: &FakeForge, job: i64, d: &Daemon) -> TaskSnapshot {
    final_task(forge, job, d).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_are_kept_for_their_actors_only_within_the_limits() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fj", SECRET);
    let gateway = free_port();
    let metrics_port = free_port();
    // The host section, then the forge's own switch (appended to its section).
    let host = format!(
        "metrics_listen = \"127.0.0.1:{metrics_port}\"\n[debug_ssh]\nlisten = \"127.0.0.1:{gateway}\"\npublic_host = \"127.0.0.1\"\nttl_secs = 150\nmax_held = 2\nidle_timeout_secs = 300\n"
    );
    world.configure(4, &[("fj", forge.url(), cred)], "");
    let config = std::fs::read_to_string(&world.config).unwrap();
    let config = config.replace("[qemu]\n", &format!("{host}[qemu]\n"));
    let config = format!(
        "{config}[forges.fj.debug_ssh]\nenabled = true\nrepositories = [\"alice/*\", \"bob/*\"]\n"
    );
    std::fs::write(&world.config, config).unwrap();

    let keys = tempfile::tempdir().unwrap();
    let alice = keygen(keys.path(), "alice");
    let bob = keygen(keys.path(), "bob");
    let mallory = keygen(keys.path(), "mallory");
    forge.add_user("alice", 101, &[alice.public_line.as_str()]);
    forge.add_user("bob", 102, &[bob.public_line.as_str()]);
    forge.add_user("mallory", 103, &[mallory.public_line.as_str()]);

    let mut d = world.start();

    // Two failed jobs that asked, in two repositories: both kept.
    let j1 = forge.enqueue(job_of(
        &failing(true),
        "alice/app",
        "alice",
        "101",
        json!({}),
    ));
    let j3 = forge.enqueue(job_of(&failing(true), "bob/lib", "bob", "102", json!({})));
    let t1 = wait_final(&forge, j1, &d).await;
    let t3 = wait_final(&forge, j3, &d).await;
    // The result is not held back: the forge has the failure.
    assert_eq!(t1.status, TaskStatus::Failure, "{}", log_of(&t1));
    assert_eq!(t3.status, TaskStatus::Failure, "{}", log_of(&t3));
    let log1 = log_of(&t1);
    assert!(log1.contains("its VM is kept until"), "{log1}");
    assert!(
        log1.contains(&format!("ssh -t -p {gateway} debug@127.0.0.1 connect ")),
        "{log1}"
    );
    assert!(log1.contains("SHA256:"), "{log1}");
    assert!(log1.contains("alice"), "{log1}");
    let id1 = connect_id(&t1);
    let id3 = connect_id(&t3);
    let token1 = forge
        .tasks()
        .into_iter()
        .find(|t| t.id == t1.id)
        .unwrap()
        .token
        .expose()
        .to_string();
    assert!(!log1.contains(&token1));
    assert_eq!(qemu_processes_under(&world.state_dir()).len(), 2);

    // `solstice status` lists both with their remaining time.
    let status = status_text(&world);
    let held = status
        .split("Held for debug SSH: 2")
        .nth(1)
        .and_then(|s| s.split("Recently finished").next())
        .unwrap_or_else(|| panic!("no held VMs in:\n{status}"));
    assert!(held.contains(&id1) && held.contains(&id3), "{status}");
    assert!(
        held.contains("alice/app") && held.contains("expires in"),
        "{status}"
    );

    // Alice's key: a shell in the failed job's VM, in its workspace; no
    // copy of the job token is left in the guest's files.
    let probe = format!(
        "cd \"$HOME/work\" 2>/dev/null && find . -name left-by-the-job.txt | head -1\n\
         echo whoami=$(id -un)\n\
         grep -rl '{token1}' \"$HOME\" /tmp /etc /run 2>/dev/null | head -5 | sed 's/^/token-in:/'\n\
         echo probe-done\n"
    );
    let out = ssh(
        gateway,
        &alice,
        &["connect", &id1],
        &probe,
        Duration::from_secs(90),
    );
    let o = text(&out);
    assert!(o.contains("left-by-the-job.txt"), "{o}");
    assert!(o.contains("probe-done"), "{o}");
    assert!(
        !o.contains("token-in:"),
        "the job token is still in the guest: {o}"
    );

    // Another user's key is refused at login; the right user's key for
    // another job's id is refused too.
    let out = ssh(
        gateway,
        &mallory,
        &["connect", &id1],
        "echo in\n",
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("\nin\n"), "{}", text(&out));
    let out = ssh(
        gateway,
        &bob,
        &["connect", &id1],
        "echo in\n",
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("in"),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("alice"),
        "{}",
        text(&out)
    );

    // A second failure in alice/app while its first is held: not kept, and
    // says why. A job that did not ask, a fork's pull request and a
    // repository the operator did not list: not kept either.
    let j2 = forge.enqueue(job_of(
        &failing(true),
        "alice/app",
        "alice",
        "101",
        json!({}),
    ));
    let j5 = forge.enqueue(job_of(
        &failing(false),
        "alice/other",
        "alice",
        "101",
        json!({}),
    ));
    let t2 = wait_final(&forge, j2, &d).await;
    let t5 = wait_final(&forge, j5, &d).await;
    let j4 = forge.enqueue(job_of(
        &failing(true),
        "alice/app2",
        "mallory",
        "103",
        json!({"event_name": "pull_request",
               "event": {"pull_request": {"head": {"repo": {"full_name": "mallory/app2", "fork": true}}}}}),
    ));
    let j6 = forge.enqueue(job_of(&failing(true), "carol/x", "alice", "101", json!({})));
    let t4 = wait_final(&forge, j4, &d).await;
    let t6 = wait_final(&forge, j6, &d).await;
    let l2 = log_of(&t2);
    assert!(
        l2.contains("not kept") && l2.contains("another failed job of alice/app"),
        "{l2}"
    );
    let l5 = log_of(&t5);
    assert!(!l5.contains("Debug SSH"), "{l5}");
    let l4 = log_of(&t4);
    assert!(l4.contains("not kept") && l4.contains("forks"), "{l4}");
    let l6 = log_of(&t6);
    assert!(
        l6.contains("not kept") && l6.contains("this repository"),
        "{l6}"
    );
    for t in [&t2, &t4, &t5, &t6] {
        assert_eq!(t.status, TaskStatus::Failure);
    }
    assert_eq!(
        qemu_processes_under(&world.state_dir()).len(),
        2,
        "only the two kept VMs run"
    );

    // `done` releases alice's VM at once.
    let out = ssh(
        gateway,
        &alice,
        &["done", &id1],
        "",
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    let gone = wait_until(Duration::from_secs(60), || {
        qemu_processes_under(&world.state_dir()).len() == 1
    });
    assert!(gone, "the released VM still runs");

    // Bob's session is open when his window ends: it is closed with a
    // message, and the VM destroyed.
    let out = ssh(
        gateway,
        &bob,
        &["connect", &id3],
        "echo bob-in; sleep 600\n",
        Duration::from_secs(200),
    );
    let o = text(&out);
    assert!(o.contains("bob-in"), "{o}");
    assert!(o.contains("debug window") && o.contains(&id3), "{o}");
    let gone = wait_until(Duration::from_secs(60), || {
        qemu_processes_under(&world.state_dir()).is_empty()
    });
    assert!(gone, "the expired VM still runs");

    let m = metrics(metrics_port);
    for e in [
        "armed", "not_held", "login", "refused", "released", "expired",
    ] {
        assert!(
            m.contains(&format!("solstice_debug_ssh_events_total{{event=\"{e}\"}}")),
            "no {e} in\n{m}"
        );
    }

    // After the release, alice/app may be kept again. SIGKILL of the
    // daemon leaves that VM; the next start destroys it.
    let j7 = forge.enqueue(job_of(
        &failing(true),
        "alice/app",
        "alice",
        "101",
        json!({}),
    ));
    let t7 = wait_final(&forge, j7, &d).await;
    assert!(
        log_of(&t7).contains("its VM is kept until"),
        "{}",
        log_of(&t7)
    );
    assert_eq!(qemu_processes_under(&world.state_dir()).len(), 1);
    d.signal(Signal::SIGKILL);
    let _ = d.wait_exit(Duration::from_secs(30));
    // (QEMU dies with the daemon's thread that spawned it: PR_SET_PDEATHSIG.)
    let mut d = world.start();
    assert!(qemu_processes_under(&world.state_dir()).is_empty());
    let status = status_text(&world);
    assert!(!status.contains("Held for debug SSH"), "{status}");
    assert!(d.log_text().contains(&connect_id(&t7)), "{}", d.log_text());

    d.signal(Signal::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "{st}:\n{}", d.log_text());
    world.assert_clean();
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    let log = d.log_text();
    assert!(!log.contains(&token1), "task token in the daemon log");
}

/// SIGTERM destroys a kept VM and the gateway stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_destroys_kept_vms() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fj", SECRET);
    let gateway = free_port();
    world.configure(2, &[("fj", forge.url(), cred)], "");
    let config = std::fs::read_to_string(&world.config).unwrap();
    let config = config.replace(
        "[qemu]\n",
        &format!(
            "[debug_ssh]\nlisten = \"127.0.0.1:{gateway}\"\npublic_host = \"127.0.0.1\"\n[qemu]\n"
        ),
    );
    std::fs::write(
        &world.config,
        format!("{config}[forges.fj.debug_ssh]\nenabled = true\n"),
    )
    .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let alice = keygen(keys.path(), "alice");
    forge.add_user("alice", 101, &[alice.public_line.as_str()]);
    let mut d = world.start();
    let j = forge.enqueue(job_of(
        &failing(true),
        "alice/app",
        "alice",
        "101",
        json!({}),
    ));
    let t = wait_final(&forge, j, &d).await;
    assert!(
        log_of(&t).contains("(30 min, not renewable)"),
        "{}",
        log_of(&t)
    );
    assert_eq!(qemu_processes_under(&world.state_dir()).len(), 1);
    d.signal(Signal::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(90));
    assert!(st.success(), "{st}:\n{}", d.log_text());
    world.assert_clean();
    assert!(d.log_text().contains("shutdown"), "{}", d.log_text());
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    f()
}

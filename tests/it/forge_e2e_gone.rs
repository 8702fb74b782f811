//! End to end, the real `solstice run` binary with tiny guests against the
//! strict fake forge: tasks the forge deletes, and logs through a reverse
//! proxy's body limit.

use crate::support;

use std::time::Duration;

use nix::sys::signal::Signal;
use solstice::store::Store;
use solstice::testing::fake_forge::{FakeForge, FakeJob, FakeOptions, TaskStatus};
use support::daemon::{Daemon, qemu_processes_under};
use support::world::{
    SECRET, SLEEPER, World, fake, final_task, log_of, offline, wait_step_running,
};

/// The daemon's one line for a task the forge no longer has.
const GONE_LINE: &str = "the forge no longer has this task";

const QUICK: &str = r#"
name: quick
on: push
jobs:
  hello:
    runs-on: tiny
    steps:
      - run: echo hello-after
"#;

/// `UpdateLog`/`UpdateTask` calls the fake answered with an error.
fn refused_reports(forge: &FakeForge) -> usize {
    forge
        .requests()
        .iter()
        .filter(|r| matches!(r.method.as_str(), "UpdateLog" | "UpdateTask") && r.http_status != 200)
        .count()
}

fn report_calls(forge: &FakeForge) -> usize {
    forge.request_count("UpdateLog") + forge.request_count("UpdateTask")
}

/// Waits until no QEMU of this world runs.
async fn wait_no_vm(world: &World, d: &Daemon) {
    for _ in 0..600 {
        if qemu_processes_under(&world.state_dir()).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the VM still runs:\n{}", d.log_text());
}

/// Whether the state database records the job of `task` as given up.
fn given_up(world: &World, task: i64) -> bool {
    let store = Store::open_read_only(&solstice::store::db_path(&world.state_dir())).unwrap();
    let job = store
        .recent_jobs(100)
        .unwrap()
        .into_iter()
        .find(|j| j.task_id == task)
        .expect("the task's job is recorded");
    store.is_given_up(&job.id).unwrap()
}

/// Lets a restarted daemon poll a few times (and report whatever it
/// would report) without anything to do.
async fn let_it_poll(forge: &FakeForge, d: &Daemon) {
    let fetches = forge.request_count("FetchTask");
    let ok = forge
        .wait_for(
            |f| f.request_count("FetchTask") >= fetches + 3,
            Duration::from_secs(60),
        )
        .await;
    assert!(ok, "the daemon does not poll:\n{}", d.log_text());
    // Reports of left-over tasks start before the first poll; give a slow
    // machine a little more.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_deleted_mid_job_stops_its_vm_with_one_line_and_is_never_retried() {
    for gitea in [false, true] {
        let forge = FakeForge::start(FakeOptions {
            gitea_errors: gitea,
            ..FakeOptions::default()
        })
        .await
        .unwrap();
        let world = World::new();
        let cred = offline(&forge, &world, "fake", SECRET);
        world.configure(2, &[("fake", forge.url(), cred)], "");
        let job = forge.enqueue(FakeJob::new(SLEEPER, &["tiny"]));
        let mut d = world.start();
        let task = wait_step_running(&forge, job, &d).await;
        assert_eq!(qemu_processes_under(&world.state_dir()).len(), 1);
        assert!(forge.delete_task(task));
        wait_no_vm(&world, &d).await;

        // The daemon keeps serving.
        let next = forge.enqueue(FakeJob::new(QUICK, &["tiny"]));
        let t = final_task(&forge, next, &d).await;
        assert_eq!(t.status, TaskStatus::Success, "{}", log_of(&t));
        assert!(log_of(&t).contains("hello-after"));

        let log = d.log_text();
        assert_eq!(log.matches(GONE_LINE).count(), 1, "gitea={gitea}:\n{log}");
        assert_eq!(refused_reports(&forge), 1, "gitea={gitea}:\n{log}");
        assert!(forge.violations().is_empty(), "{:#?}", forge.violations());

        // A restart does not try the task again.
        d.signal(Signal::SIGTERM);
        d.wait_exit(Duration::from_secs(60));
        assert!(given_up(&world, task), "gitea={gitea}");
        let calls = report_calls(&forge);
        let d2 = world.start();
        let_it_poll(&forge, &d2).await;
        assert_eq!(report_calls(&forge), calls, "{}", d2.log_text());
        assert!(!d2.log_text().contains(GONE_LINE), "{}", d2.log_text());
        world.assert_clean();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_deleted_while_the_daemon_was_down_is_tried_once_at_start_then_never() {
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(1, &[("fake", forge.url(), cred)], "");
    let job = forge.enqueue(FakeJob::new(SLEEPER, &["tiny"]));
    let mut d = world.start();
    let task = wait_step_running(&forge, job, &d).await;
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    drop(d);
    assert!(forge.delete_task(task));

    // The start-up report of the interrupted task meets the deleted task.
    let d2 = world.start();
    let ok = forge
        .wait_for(|f| refused_reports(f) >= 1, Duration::from_secs(60))
        .await;
    assert!(ok, "{}", d2.log_text());
    let_it_poll(&forge, &d2).await;
    assert_eq!(refused_reports(&forge), 1, "{}", d2.log_text());
    assert_eq!(
        d2.log_text().matches(GONE_LINE).count(),
        1,
        "{}",
        d2.log_text()
    );
    drop(d2);
    assert!(given_up(&world, task));

    // And the next start leaves it alone.
    let calls = report_calls(&forge);
    let d3 = world.start();
    let_it_poll(&forge, &d3).await;
    assert_eq!(report_calls(&forge), calls, "{}", d3.log_text());
    world.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_log_passes_a_256_kib_proxy_limit_whole_with_long_lines_split_and_masked() {
    let forge = FakeForge::start(FakeOptions {
        max_request_body: Some(256 * 1024),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(1, &[("fake", forge.url(), cred)], "");
    // A 200 KiB line whose secret starts 10 bytes before the 64 KiB row
    // boundary, then about 2 MiB of numbered lines.
    let yaml = r#"
name: big
on: push
jobs:
  flood:
    runs-on: tiny
    steps:
      - run: |
          a=$(head -c 65526 /dev/zero | tr '\000' a)
          b=$(head -c 140000 /dev/zero | tr '\000' b)
          echo "${a}${{ secrets.TOKEN }}${b}"
          pad=$(head -c 1000 /dev/zero | tr '\000' x)
          i=0
          while [ $i -lt 2000 ]; do echo "row-$i $pad"; i=$((i+1)); done
"#;
    let mut job = FakeJob::new(yaml, &["tiny"]);
    let token = "s3cr3t-across-the-boundary";
    job.secrets.insert("TOKEN".into(), token.into());
    let job = forge.enqueue(job);
    let d = world.start();
    let t = final_task(&forge, job, &d).await;
    assert_eq!(t.status, TaskStatus::Success, "{}", d.log_text());
    let step = t.step_log(0);
    let long_at = step
        .iter()
        .position(|r| r.starts_with("aaaa"))
        .unwrap_or_else(|| {
            let shown: Vec<String> = t
                .log
                .iter()
                .take(40)
                .map(|r| format!("{}:{}", r.len(), r.chars().take(60).collect::<String>()))
                .collect();
            let text = d.log_text();
            let warn: Vec<String> = text
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .map(|l| l.chars().take(400).collect())
                .collect();
            panic!("no long line in step 0; the log starts {shown:#?}\n{warn:#?}")
        });
    let want = format!("{}***{}", "a".repeat(65526), "b".repeat(140000));
    let pieces = want.len().div_ceil(64 * 1024);
    let joined = step[long_at..long_at + pieces].concat();
    assert!(
        joined == want,
        "the long line arrived as {} bytes",
        joined.len()
    );
    assert!(
        !log_of(&t).contains("s3cr3t"),
        "the secret reached the forge"
    );
    let rows: Vec<&String> = step.iter().filter(|r| r.starts_with("row-")).collect();
    assert_eq!(rows.len(), 2000);
    for (i, r) in rows.iter().enumerate() {
        assert!(r.starts_with(&format!("row-{i} ")), "row {i}: {}", &r[..20]);
    }
    let refused = forge
        .requests()
        .iter()
        .filter(|r| r.http_status == 413)
        .count();
    assert!(refused >= 1, "the proxy limit was never reached");
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    world.assert_clean();
}

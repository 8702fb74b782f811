//! Warm pools end to end: the real `solstice run` against the fake forge,
//! the tiny image under TCG. Each test keeps its VM boots few (a TCG boot
//! of the tiny image takes about 4 s).

use crate::support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use solstice::testing::fake_forge::{FakeForge, FakeJob, TaskStatus};
use support::daemon::{Daemon, max_vms_while, qemu_processes_under};
use support::world::{SECRET, SLEEPER, World, fake, final_task, log_of, wait_step_running};

/// A port on 127.0.0.1 that nothing listens on now (for `metrics_listen`).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The job log line of a guest taken from the pool (see `job::run`).
const FROM_POOL: &str = "guest from the warm pool";

fn quick(label: &str) -> String {
    format!(
        "name: ci\non: push\njobs:\n  build:\n    runs-on: {label}\n    steps:\n      - run: echo quick-job-ran\n"
    )
}

/// One test's setup: a private copy of the tiny image (the image-change
/// test touches it), the config and the metrics port.
struct Setup {
    world: World,
    image: PathBuf,
    metrics: u16,
}

impl Setup {
    /// `images` are `(name, labels, extra keys)`; every image is the copy of
    /// the tiny image.
    fn new(forge: &FakeForge, capacity: u32, images: &[(&str, &[&str], &str)]) -> Setup {
        let world = World::new();
        let image = world.dir.path().join("tiny.qcow2");
        std::fs::copy(support::image("tiny"), &image).unwrap();
        let labels: Vec<&str> = images
            .iter()
            .flat_map(|(_, l, _)| l.iter().copied())
            .collect();
        forge.register_offline(SECRET, "fake", &labels);
        let cred = world.secret_file("fake.secret", SECRET);
        let metrics = free_port();
        let mut text = format!(
            "[daemon]\nstate_dir = {:?}\nmax_concurrent_jobs = {capacity}\ndrain_timeout_secs = 30\nmetrics_listen = \"127.0.0.1:{metrics}\"\n[qemu]\naccel = \"tcg\"\n",
            world.state_dir()
        );
        for (name, labels, extra) in images {
            text.push_str(&format!(
                "[images.{name}]\npath = {image:?}\nvcpus = 1\nmemory_mib = 256\nboot_timeout_secs = 120\nlabels = {labels:?}\n{extra}\n"
            ));
        }
        text.push_str(&format!(
            "[forges.fake]\nurl = {:?}\n{cred}\nfetch_interval_secs = 1\nfetch_timeout_secs = 5\n",
            forge.url()
        ));
        std::fs::write(&world.config, text).unwrap();
        Setup {
            world,
            image,
            metrics,
        }
    }

    fn warm_dir(&self) -> PathBuf {
        self.world.state_dir().join("warm")
    }

    /// The warm guests' directories now.
    fn warm_guests(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.warm_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    async fn metrics_text(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics);
        match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The value of `name_and_labels` in the daemon's metrics (0 when absent).
    async fn metric(&self, name_and_labels: &str) -> f64 {
        sample(&self.metrics_text().await, name_and_labels).unwrap_or(0.0)
    }

    /// Waits until `name_and_labels` reaches `want`.
    async fn wait_metric(&self, d: &Daemon, name_and_labels: &str, want: f64, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let v = self.metric(name_and_labels).await;
            if v == want {
                return;
            }
            assert!(
                Instant::now() < end,
                "{name_and_labels} is {v}, not {want}, after {timeout:?}:\n{}\n{}",
                self.metrics_text().await,
                d.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM; the daemon exits 0 and leaves no QEMU, job or warm directory.
    fn stop_and_check_clean(&self, mut d: Daemon) {
        d.signal(Signal::SIGTERM);
        let status = d.wait_exit(Duration::from_secs(60));
        assert!(status.success(), "{status}:\n{}", d.log_text());
        self.world.assert_clean();
        assert!(
            self.warm_guests().is_empty(),
            "warm directories left: {:?}\n{}",
            self.warm_guests(),
            d.log_text()
        );
    }
}

/// The value of a sample line `name{labels} value` in `text`.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name_and_labels).then(|| v.parse().ok())?
    })
}

/// Seconds in the job log's "ready after X s" line of a pool guest.
fn ready_after(log: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(FROM_POOL))?;
    let rest = line.split("ready after ").nth(1)?;
    rest.trim_end_matches('s').trim().parse().ok()
}

const READY: &str = "solstice_warm_ready{image=\"tiny\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_takes_the_warm_guest_and_the_next_one_boots_cold_while_the_pool_refills() {
    let forge = fake().await;
    let s = Setup::new(&forge, 2, &[("tiny", &["tiny"], "warm = 1")]);
    let d = s.world.start();
    s.wait_metric(&d, READY, 1.0, Duration::from_secs(120))
        .await;
    let warm_before = s.warm_guests();
    assert_eq!(warm_before.len(), 1, "{warm_before:?}");
    assert!(warm_before[0].starts_with("w-tiny-"), "{warm_before:?}");
    assert_eq!(qemu_processes_under(&s.world.state_dir()).len(), 1);

    // Two jobs at once: the first takes the warm guest, the second finds
    // the pool empty (and no room to refill beside two jobs) and boots.
    let first = forge.enqueue(FakeJob::new(quick("tiny"), &["tiny"]));
    let second = forge.enqueue(FakeJob::new(quick("tiny"), &["tiny"]));
    let state = s.world.state_dir();
    let max_vms = max_vms_while(&state, Duration::from_secs(240), || {
        [first, second].iter().all(|j| {
            forge
                .task_for_job(*j)
                .is_some_and(|t| t.status != TaskStatus::Running)
        })
    })
    .await;
    let a = final_task(&forge, first, &d).await;
    let b = final_task(&forge, second, &d).await;
    for t in [&a, &b] {
        assert_eq!(t.status, TaskStatus::Success, "{}", log_of(t));
        assert!(log_of(t).contains("quick-job-ran"), "{}", log_of(t));
    }
    assert!(max_vms <= 2, "{max_vms} QEMU processes on a capacity of 2");
    let (hit, miss) = if log_of(&a).contains(FROM_POOL) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let hit_log = log_of(hit);
    assert!(hit_log.contains(FROM_POOL), "{hit_log}");
    assert!(
        !log_of(miss).contains(FROM_POOL),
        "only one guest was warm:\n{}",
        log_of(miss)
    );
    // The hit ran its first step without a boot.
    let took = ready_after(&hit_log).unwrap_or_else(|| panic!("no ready time:\n{hit_log}"));
    assert!(
        took < 1.0,
        "taking the warm guest took {took} s:\n{hit_log}"
    );
    assert!(
        !hit_log.contains("booting,"),
        "the hit shows boot progress:\n{hit_log}"
    );
    assert_eq!(
        s.metric("solstice_warm_takes_total{image=\"tiny\",result=\"hit\"}")
            .await,
        1.0
    );
    assert_eq!(
        s.metric("solstice_warm_takes_total{image=\"tiny\",result=\"miss\"}")
            .await,
        1.0
    );

    // Both jobs are over: the pool refills with a new guest.
    s.wait_metric(&d, READY, 1.0, Duration::from_secs(120))
        .await;
    let warm_after = s.warm_guests();
    assert_eq!(warm_after.len(), 1, "{warm_after:?}");
    assert_ne!(warm_after, warm_before, "a guest that held a job came back");
    let text = s.metrics_text().await;
    assert_eq!(
        sample(
            &text,
            "solstice_warm_refill_seconds_count{image=\"tiny\",kind=\"booted\"}"
        ),
        Some(2.0),
        "{text}"
    );

    // The warm guest's QEMU dies: it is replaced, never handed out.
    let pids = qemu_processes_under(&state);
    assert_eq!(pids.len(), 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
    s.wait_metric(
        &d,
        "solstice_warm_replaced_total{image=\"tiny\",reason=\"dead\"}",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    s.wait_metric(&d, READY, 1.0, Duration::from_secs(120))
        .await;
    let after_death = s.warm_guests();
    assert_eq!(after_death.len(), 1, "{after_death:?}");
    assert_ne!(after_death, warm_after);
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    s.stop_and_check_clean(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_another_image_evicts_the_warm_guest_and_an_image_change_replaces_it() {
    let forge = fake().await;
    // One slot: the warm guest of `tiny` takes it while nothing runs.
    let s = Setup::new(
        &forge,
        1,
        &[("tiny", &["tiny"], "warm = 1"), ("other", &["other"], "")],
    );
    let d = s.world.start();
    s.wait_metric(&d, READY, 1.0, Duration::from_secs(120))
        .await;
    let first_guest = s.warm_guests();

    let job = forge.enqueue(FakeJob::new(quick("other"), &["other"]));
    let state = s.world.state_dir();
    let max_vms = max_vms_while(&state, Duration::from_secs(240), || {
        forge
            .task_for_job(job)
            .is_some_and(|t| t.status != TaskStatus::Running)
    })
    .await;
    let t = final_task(&forge, job, &d).await;
    assert_eq!(t.status, TaskStatus::Success, "{}", log_of(&t));
    assert!(!log_of(&t).contains(FROM_POOL), "{}", log_of(&t));
    assert!(
        max_vms <= 1,
        "{max_vms} QEMU processes on a capacity of 1:\n{}",
        d.log_text()
    );
    assert_eq!(
        s.metric("solstice_warm_replaced_total{image=\"tiny\",reason=\"evicted\"}")
            .await,
        1.0
    );
    // The slot is free again: the pool refills.
    s.wait_metric(&d, READY, 1.0, Duration::from_secs(120))
        .await;
    let refilled = s.warm_guests();
    assert_eq!(refilled.len(), 1, "{refilled:?}");
    assert_ne!(refilled, first_guest);

    // The image file changes (a new modification time): the idle guest is
    // destroyed and a new one boots.
    let f = std::fs::File::options().write(true).open(&s.image).unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    drop(f);
    s.wait_metric(
        &d,
        "solstice_warm_replaced_total{image=\"tiny\",reason=\"image_changed\"}",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    s.wait_metric(&d, READY, 1.0, Duration::from_secs(120))
        .await;
    let replaced = s.warm_guests();
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_ne!(replaced, refilled, "the stale guest is still there");
    assert_eq!(qemu_processes_under(&state).len(), 1);
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    s.stop_and_check_clean(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_job_on_a_warm_guest_destroys_that_guest() {
    let forge = fake().await;
    let s = Setup::new(&forge, 1, &[("tiny", &["tiny"], "warm = 1")]);
    let d = s.world.start();
    s.wait_metric(&d, READY, 1.0, Duration::from_secs(120))
        .await;
    let pool_pids = qemu_processes_under(&s.world.state_dir());
    assert_eq!(pool_pids.len(), 1);

    let job = forge.enqueue(FakeJob::new(SLEEPER, &["tiny"]));
    let task = wait_step_running(&forge, job, &d).await;
    // The job runs in the pool's QEMU, now in the job's directory.
    assert_eq!(qemu_processes_under(&s.world.state_dir()), pool_pids);
    assert!(s.warm_guests().is_empty(), "{:?}", s.warm_guests());
    let jobs_dir = s.world.state_dir().join("jobs");
    assert_eq!(std::fs::read_dir(&jobs_dir).unwrap().count(), 1);

    let t0 = Instant::now();
    assert!(forge.cancel_task(task));
    let pid = pool_pids[0];
    while qemu_processes_under(&s.world.state_dir()).contains(&pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the VM still runs {:?} after the cancel:\n{}",
            t0.elapsed(),
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok = forge
        .wait_for(
            |f| f.task(task).is_some_and(|t| t.no_more),
            Duration::from_secs(30),
        )
        .await;
    let t = forge.task(task).unwrap();
    assert!(ok, "{t:#?}\n{}", d.log_text());
    assert!(log_of(&t).contains(FROM_POOL), "{}", log_of(&t));
    assert!(log_of(&t).contains("started-sleeping"), "{}", log_of(&t));
    // The job's directory is gone; the only QEMU now is the pool's refill.
    let end = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&jobs_dir).unwrap().count() > 0 {
        assert!(Instant::now() < end, "the job directory stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in qemu_processes_under(&s.world.state_dir()) {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        assert!(
            cmd.contains(&*s.warm_dir().to_string_lossy())
                && !cmd.contains(&*jobs_dir.to_string_lossy()),
            "a QEMU other than a warm guest: {cmd}"
        );
    }
    s.stop_and_check_clean(d);
}

/// `solstice status --json`'s `warm_pools` of the daemon's configuration.
fn status_pools(s: &Setup) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_solstice"))
        .args(["status", "--json", "--config"])
        .arg(&s.world.config)
        .env_remove("SOLSTICE_LOG")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["warm_pools"].clone()
}

/// The (kind, ready) of every guest `solstice status` shows.
fn status_kinds(s: &Setup) -> Vec<(String, bool)> {
    status_pools(s)[0]["guests"]
        .as_array()
        .map(|gs| {
            gs.iter()
                .map(|g| {
                    (
                        g["kind"].as_str().unwrap_or("").to_string(),
                        g["ready"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `solstice status` shows a ready guest of `kind`.
async fn wait_status(s: &Setup, d: &Daemon, kind: &str, timeout: Duration) {
    let end = Instant::now() + timeout;
    loop {
        let kinds = status_kinds(s);
        if kinds.contains(&(kind.to_string(), true)) {
            return;
        }
        assert!(
            Instant::now() < end,
            "no ready {kind} in status after {timeout:?}: {kinds:?}\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `snapshot = true` with `warm = 1`: the daemon saves a template (shown
/// by `solstice status` as a saved `template` row; meanwhile the pool's
/// first guest boots), and once it is saved the pool refills by restoring
/// it: a job takes the booted guest, the refill is a `restored` guest
/// (re-keyed), and the next job takes that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_image_fills_its_pool_by_restoring_the_template() {
    let forge = fake().await;
    let s = Setup::new(
        &forge,
        2,
        &[("tiny", &["tiny"], "warm = 1\nsnapshot = true")],
    );
    let d = s.world.start();
    wait_status(&s, &d, "template", Duration::from_secs(180)).await;
    s.wait_metric(&d, READY, 1.0, Duration::from_secs(180))
        .await;
    for round in 0..2 {
        let job = forge.enqueue(FakeJob::new(quick("tiny"), &["tiny"]));
        let t = final_task(&forge, job, &d).await;
        assert_eq!(t.status, TaskStatus::Success, "{}", log_of(&t));
        assert!(
            log_of(&t).contains(FROM_POOL),
            "round {round}: {}",
            log_of(&t)
        );
        assert!(log_of(&t).contains("quick-job-ran"), "{}", log_of(&t));
        // The refill restores a clone of the template.
        wait_status(&s, &d, "restored", Duration::from_secs(120)).await;
    }
    assert!(
        d.log_text().contains("clone restored and re-keyed"),
        "{}",
        d.log_text()
    );
    assert_eq!(
        s.metric("solstice_warm_takes_total{image=\"tiny\",result=\"hit\"}")
            .await,
        2.0
    );
    s.stop_and_check_clean(d);
}

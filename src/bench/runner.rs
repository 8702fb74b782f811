//! `solstice bench runner`: the `solstice run` daemon, as a child process of
//! this one, against an in-process [`FakeForge`], compared with plain QEMU +
//! OpenSSH baselines measured in the same run.
//!
//! Phases (progress on stderr, the table on stdout at the end):
//! 1. Baseline: the image booted `--runs` times with plain QEMU, `ssh … true`
//!    polled (median boot to SSH); then once more to stream the log-test
//!    output over `ssh` to this process.
//! 2. Daemon at capacity 1: `--jobs` trivial jobs queued at once (throughput,
//!    and the latency split of each from the daemon's database and from the
//!    forge's step times); then the idle daemon watched for `--idle-secs`;
//!    then one job printing `--log-mb` MB of 100-byte lines.
//! 3. Daemon at capacity 2: the same trivial jobs (throughput).
//!
//! The daemon gets a generated configuration: the chosen image and `[qemu]`
//! settings of the user's configuration (with the accelerator resolved once
//! here), a private state directory, and one forge: the fake.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use super::baseline::{BaselineVm, baseline_boot};
use super::runner_report::{
    Idle, Latency, RunnerReport, Stream, Throughput, cpu_percent, loadavg_1min, stat_cpu_ticks,
    status_kib,
};
use super::{
    BenchError, RunnerBenchArgs, TempDir, bench_image, daemon_exe, first_label, load_bench_config,
    median,
};
use crate::config::{Config, Firmware, GuestOs, ImageConfig, SeedKind};
use crate::forge::forgejo::proto::{TaskResult, Timestamp};
use crate::human::fmt_duration;
use crate::startup::resolve_accel;
use crate::store::Store;
use crate::testing::fake_forge::{FakeForge, FakeJob, FakeOptions, TaskSnapshot};
use crate::vm::Accel;

/// Name of the fake forge in the generated configuration.
pub(super) const FORGE_NAME: &str = "bench";
/// Bytes per generated log line, newline included.
const LINE_BYTES: u64 = 100;
/// Lines per 1 MB block.
const BLOCK_LINES: u64 = 10_000;
/// Where the guest keeps the block.
const BLOCK_PATH: &str = "/tmp/solstice-bench-block";

/// Writes a 1 MB block of 10 000 numbered 100-byte lines in the guest
/// (busybox-safe: POSIX awk, no bash).
fn gen_block_script() -> String {
    format!(
        "awk 'BEGIN {{ t = \"abcdefghijklmnopqrstuvwxyz0123456789\"; t = substr(t t t, 1, 90); for (i = 0; i < {BLOCK_LINES}; i++) printf \"%08d %s\\n\", i, t }}' > {BLOCK_PATH}"
    )
}

/// Prints the block `mb` times.
fn cat_loop_script(mb: u32) -> String {
    format!("i=0; while [ \"$i\" -lt {mb} ]; do cat {BLOCK_PATH}; i=$((i+1)); done")
}

pub(super) fn true_payload(label: &str) -> String {
    format!(
        "name: bench\non: push\njobs:\n  bench:\n    runs-on: {label}\n    steps:\n      - run: 'true'\n"
    )
}

fn log_payload(label: &str, mb: u32) -> String {
    format!(
        "name: bench-log\non: push\njobs:\n  log:\n    runs-on: {label}\n    steps:\n      - name: Prepare a 1 MB block of 100-byte lines\n        run: |\n          {}\n      - name: Print {mb} MB\n        run: |\n          {}\n",
        gen_block_script(),
        cat_loop_script(mb)
    )
}

pub(super) fn progress(msg: impl std::fmt::Display) {
    eprintln!("[bench] {msg}");
}

/// `solstice bench runner`.
pub async fn runner_main(args: RunnerBenchArgs) -> Result<(), BenchError> {
    let config = load_bench_config(&args.common)?;
    let image = bench_image(&config, &args.common)?;
    let exe = daemon_exe()?;
    // Both sides of the comparison use the accelerator chosen now.
    let accel = resolve_accel(&config).await?.current();
    let report = run(&args, &config, image, accel, &exe)
        .await
        .map_err(BenchError::Infra)?;
    print!("\n{}", report.render());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
        std::fs::write(path, text + "\n")
            .map_err(|e| BenchError::Infra(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

async fn run(
    args: &RunnerBenchArgs,
    config: &Config,
    image: &ImageConfig,
    accel: Accel,
    exe: &Path,
) -> Result<RunnerReport, String> {
    let accel_name = accel.as_str();
    let label = first_label(image);
    progress(format_args!(
        "image {} ({} vCPU, {} MiB), accelerator {accel_name}, {} jobs, {} MB log, {} s idle",
        image.name, image.vcpus, image.memory_mib, args.jobs, args.log_mb, args.idle_secs
    ));
    // Under the system's temporary directory: the daemon's QMP socket paths
    // must stay short.
    let load_before = load_average();
    let work = TempDir::new(&std::env::temp_dir(), "sbench").map_err(|e| e.to_string())?;

    // 1. Baselines.
    let runs = args.runs.max(1);
    let mut boots = Vec::new();
    for i in 0..runs {
        let d = baseline_boot(config, image, accel)
            .await
            .map_err(|e| format!("baseline boot failed: {e}"))?;
        progress(format_args!(
            "baseline boot {}/{runs}: boot to SSH {}",
            i + 1,
            fmt_duration(d)
        ));
        boots.push(d);
    }
    let bytes = u64::from(args.log_mb) * BLOCK_LINES * LINE_BYTES;
    progress(format_args!(
        "baseline streaming: {} MB over ssh",
        args.log_mb
    ));
    let vm = BaselineVm::boot(config, image, accel)
        .await
        .map_err(|e| format!("baseline boot failed: {e}"))?;
    vm.run(&gen_block_script())
        .await
        .map_err(|e| e.to_string())?;
    let (got, baseline_stream) = vm
        .stream(&cat_loop_script(args.log_mb))
        .await
        .map_err(|e| e.to_string())?;
    vm.shutdown().await;
    if got != bytes {
        return Err(format!(
            "the baseline guest sent {got} bytes instead of {bytes}"
        ));
    }
    progress(format_args!(
        "baseline streaming: {:.1} s, {:.2} MB/s",
        baseline_stream.as_secs_f64(),
        bytes as f64 / 1e6 / baseline_stream.as_secs_f64().max(f64::EPSILON)
    ));

    let setup = Setup {
        config,
        image,
        accel: accel_name,
        exe,
        work: &work.0,
        label: &label,
        actions_url: None,
    };
    let mut violations = Vec::new();

    // 2. Capacity 1: throughput, latency, idle, streaming.
    let (forge, mut daemon) = setup.start(1).await?;
    let (t1, jobs) = throughput(&forge, &mut daemon, 1, args.jobs, &setup).await?;
    let forge_view = forge_view(&jobs);
    let idle = idle(&mut daemon, args.idle_secs).await?;
    let stream = stream(&forge, &mut daemon, args.log_mb, &setup).await?;
    let stream = Stream {
        bytes,
        baseline: baseline_stream,
        ..stream
    };
    violations.extend(forge.violations());
    daemon.stop().await?;
    let latency = Latency {
        forge_view,
        ..db_latency(&daemon.state_dir, &jobs)?
    };

    // 3. Capacity 2: throughput.
    let (forge, mut daemon) = setup.start(2).await?;
    let (t2, _) = throughput(&forge, &mut daemon, 2, args.jobs, &setup).await?;
    violations.extend(forge.violations());
    daemon.stop().await?;

    Ok(RunnerReport {
        image: image.name.clone(),
        accel: accel_name.into(),
        baseline_boots: boots,
        throughput: vec![t1, t2],
        latency,
        idle,
        stream,
        violations,
        load: (load_before, load_average()),
    })
}

fn load_average() -> Option<f64> {
    loadavg_1min(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

/// What every daemon run shares.
pub(super) struct Setup<'a> {
    pub(super) config: &'a Config,
    pub(super) image: &'a ImageConfig,
    pub(super) accel: &'static str,
    pub(super) exe: &'a Path,
    pub(super) work: &'a Path,
    pub(super) label: &'a str,
    /// The default actions URL the fake forge sends; its host is then
    /// allowed in the daemon's `[actions] allowed_hosts` (a 127.0.0.1 git
    /// server is refused otherwise). `None`: Forgejo's default.
    pub(super) actions_url: Option<&'a str>,
}

impl Setup<'_> {
    /// A fresh fake forge with a registered runner, and a daemon polling it.
    async fn start(&self, capacity: u32) -> Result<(FakeForge, Daemon), String> {
        self.start_in(&format!("c{capacity}"), capacity).await
    }

    /// [`Self::start`] with the daemon's files in `work/<dir>`.
    pub(super) async fn start_in(
        &self,
        dir: &str,
        capacity: u32,
    ) -> Result<(FakeForge, Daemon), String> {
        self.start_with(dir, capacity, &StartOptions::default())
            .await
    }

    /// [`Self::start_in`] with the fake forge keeping log text and extra
    /// keys in the image's section of the generated configuration.
    pub(super) async fn start_with(
        &self,
        dir: &str,
        capacity: u32,
        extra: &StartOptions,
    ) -> Result<(FakeForge, Daemon), String> {
        let mut opts = FakeOptions {
            keep_log_content: extra.keep_log_content,
            ..FakeOptions::default()
        };
        if let Some(url) = self.actions_url {
            opts.default_actions_url = url.to_owned();
        }
        let forge = FakeForge::start(opts)
            .await
            .map_err(|e| format!("start the fake forge: {e}"))?;
        let secret: String = (0..20)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        forge.register_offline(&secret, "solstice-bench", &[self.label]);
        let dir = self.work.join(dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let secret_file = dir.join("runner.secret");
        std::fs::write(&secret_file, format!("{secret}\n"))
            .map_err(|e| format!("write {}: {e}", secret_file.display()))?;
        let state_dir = dir.join("state");
        let text = daemon_config(&DaemonConfigInput {
            config: self.config,
            image: self.image,
            accel: self.accel,
            state_dir: &state_dir,
            capacity,
            forge_url: &forge.url(),
            secret_file: &secret_file,
            allow_local_actions: self.actions_url.is_some(),
        });
        let text = with_image_keys(&text, &self.image.name, &extra.image_keys)?;
        let config_path = dir.join("solstice.toml");
        std::fs::write(&config_path, text)
            .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        let mut daemon = Daemon::spawn(self.exe, &config_path, &dir, state_dir)?;
        progress(format_args!(
            "capacity {capacity}: daemon started (pid {})",
            daemon.pid
        ));
        let ready = forge
            .wait_for(
                |f| f.request_count("FetchTask") > 0,
                Duration::from_secs(60),
            )
            .await;
        daemon.check_alive()?;
        if !ready {
            return Err(format!(
                "the daemon did not poll the fake forge within 60 s; its log:\n{}",
                daemon.log_tail()
            ));
        }
        Ok((forge, daemon))
    }
}

/// What [`Setup::start_with`] changes from [`Setup::start_in`].
#[derive(Debug, Default)]
pub(super) struct StartOptions {
    /// The fake forge keeps the text of log rows (else only their count).
    pub(super) keep_log_content: bool,
    /// Keys added to `images.<name>` of the generated configuration (e.g.
    /// `warm`, `snapshot`).
    pub(super) image_keys: Vec<(String, toml::Value)>,
}

/// `text` (a generated configuration) with `keys` set in `images.<image>`.
fn with_image_keys(
    text: &str,
    image: &str,
    keys: &[(String, toml::Value)],
) -> Result<String, String> {
    if keys.is_empty() {
        return Ok(text.to_owned());
    }
    let mut root: toml::Table = text
        .parse()
        .map_err(|e| format!("the generated configuration does not parse: {e}"))?;
    let section = root
        .get_mut("images")
        .and_then(|v| v.as_table_mut())
        .and_then(|t| t.get_mut(image))
        .and_then(|v| v.as_table_mut())
        .ok_or_else(|| format!("the generated configuration has no image {image:?}"))?;
    for (k, v) in keys {
        section.insert(k.clone(), v.clone());
    }
    Ok(format!(
        "# Generated by `solstice bench`.\n{}",
        toml::to_string(&root).unwrap_or_default()
    ))
}

/// What the generated daemon configuration holds.
pub(super) struct DaemonConfigInput<'a> {
    pub(super) config: &'a Config,
    pub(super) image: &'a ImageConfig,
    pub(super) accel: &'a str,
    pub(super) state_dir: &'a Path,
    pub(super) capacity: u32,
    pub(super) forge_url: &'a str,
    pub(super) secret_file: &'a Path,
    /// `[actions] allowed_hosts = ["127.0.0.1"]`.
    pub(super) allow_local_actions: bool,
}

fn path_value(p: &Path) -> toml::Value {
    toml::Value::String(p.to_string_lossy().into_owned())
}

/// The daemon's TOML: the chosen image and `[qemu]` settings, a private
/// state directory, the capacity, and the fake forge polled every second.
pub(super) fn daemon_config(i: &DaemonConfigInput<'_>) -> String {
    use toml::{Table, Value};
    let int = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    let mut daemon = Table::new();
    daemon.insert("state_dir".into(), path_value(i.state_dir));
    daemon.insert("max_concurrent_jobs".into(), int(u64::from(i.capacity)));
    daemon.insert("drain_timeout_secs".into(), int(30));
    daemon.insert("runner_name".into(), "solstice-bench".into());
    let q = &i.config.qemu;
    let mut qemu = Table::new();
    qemu.insert("system_binary".into(), path_value(&q.system_binary));
    qemu.insert("img_binary".into(), path_value(&q.img_binary));
    qemu.insert("accel".into(), i.accel.into());
    if let Some(p) = &q.uefi_code {
        qemu.insert("uefi_code".into(), path_value(p));
    }
    if let Some(p) = &q.uefi_vars {
        qemu.insert("uefi_vars".into(), path_value(p));
    }
    let im = i.image;
    let mut image = Table::new();
    image.insert("path".into(), path_value(&im.path));
    image.insert("format".into(), im.format.as_str().into());
    image.insert(
        "os".into(),
        match im.os {
            GuestOs::Linux => "linux",
            GuestOs::Illumos => "illumos",
        }
        .into(),
    );
    image.insert(
        "firmware".into(),
        match im.firmware {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
        .into(),
    );
    image.insert("vcpus".into(), int(u64::from(im.vcpus)));
    image.insert("memory_mib".into(), int(u64::from(im.memory_mib)));
    if let Some(g) = im.disk_size_gib {
        image.insert("disk_size_gib".into(), int(u64::from(g)));
    }
    image.insert("ssh_user".into(), im.ssh_user.as_str().into());
    image.insert(
        "seed".into(),
        match im.seed {
            SeedKind::NoCloud => "nocloud",
            SeedKind::MetadataCpio => "metadata-cpio",
        }
        .into(),
    );
    image.insert("boot_timeout_secs".into(), int(im.boot_timeout.as_secs()));
    image.insert(
        "readiness_probes".into(),
        int(u64::from(im.readiness_probes)),
    );
    image.insert(
        "readiness_probe_interval_secs".into(),
        int(im.readiness_probe_interval.as_secs()),
    );
    image.insert(
        "labels".into(),
        Value::Array(im.labels.iter().map(|l| l.as_str().into()).collect()),
    );
    let mut images = Table::new();
    images.insert(im.name.clone(), Value::Table(image));
    let mut forge = Table::new();
    forge.insert("url".into(), i.forge_url.into());
    forge.insert("secret_file".into(), path_value(i.secret_file));
    forge.insert("fetch_interval_secs".into(), int(1));
    forge.insert("fetch_timeout_secs".into(), int(5));
    let mut forges = Table::new();
    forges.insert(FORGE_NAME.into(), Value::Table(forge));
    let mut root = Table::new();
    root.insert("daemon".into(), Value::Table(daemon));
    root.insert("qemu".into(), Value::Table(qemu));
    root.insert("images".into(), Value::Table(images));
    root.insert("forges".into(), Value::Table(forges));
    if i.allow_local_actions {
        let mut actions = Table::new();
        actions.insert(
            "allowed_hosts".into(),
            Value::Array(vec!["127.0.0.1".into()]),
        );
        root.insert("actions".into(), Value::Table(actions));
    }
    format!(
        "# Generated by `solstice bench runner`.\n{}",
        toml::to_string(&root).unwrap_or_default()
    )
}

/// A `solstice run` child process.
pub(super) struct Daemon {
    child: tokio::process::Child,
    pub(super) pid: u32,
    log: PathBuf,
    pub(super) state_dir: PathBuf,
}

impl Daemon {
    pub(super) fn spawn(
        exe: &Path,
        config: &Path,
        dir: &Path,
        state_dir: PathBuf,
    ) -> Result<Daemon, String> {
        let log = dir.join("daemon.log");
        let file =
            std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("open {}: {e}", log.display()))?;
        let child = tokio::process::Command::new(exe)
            .args(["run", "-c"])
            .arg(config)
            .env("SOLSTICE_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start `{} run`: {e}", exe.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| "the daemon exited at once".to_string())?;
        Ok(Daemon {
            child,
            pid,
            log,
            state_dir,
        })
    }

    /// The daemon's whole log so far.
    pub(super) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the daemon's log.
    pub(super) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// An error with the log when the daemon has exited.
    pub(super) fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "the daemon exited with {status}; its log:\n{}",
                self.log_tail()
            )),
            Err(e) => Err(format!("cannot check the daemon: {e}")),
        }
    }

    fn status(&self) -> Result<String, String> {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .map_err(|e| format!("read /proc/{}/status: {e}", self.pid))
    }

    pub(super) fn kib(&self, field: &str) -> Result<u64, String> {
        status_kib(&self.status()?, field)
            .ok_or_else(|| format!("no {field} in /proc/{}/status", self.pid))
    }

    pub(super) fn cpu_ticks(&self) -> Result<u64, String> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map_err(|e| format!("read /proc/{}/stat: {e}", self.pid))?;
        stat_cpu_ticks(&stat).ok_or_else(|| format!("cannot parse /proc/{}/stat", self.pid))
    }

    /// Resets VmHWM to the current VmRSS; false when the kernel refuses.
    fn reset_hwm(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    /// SIGTERM, then waits for the drain (killed after 60 s).
    pub(super) async fn stop(&mut self) -> Result<(), String> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!(
                "the daemon exited with {status} on SIGTERM; its log:\n{}",
                self.log_tail()
            )),
            Ok(Err(e)) => Err(format!("waiting for the daemon: {e}")),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!(
                    "the daemon did not stop within 60 s of SIGTERM; its log:\n{}",
                    self.log_tail()
                ))
            }
        }
    }
}

fn system_time(t: &Timestamp) -> SystemTime {
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let nanos = u32::try_from(t.nanos).unwrap_or(0).min(999_999_999);
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
}

pub(super) fn is_final(t: &TaskSnapshot) -> bool {
    t.status.is_final() && t.client_result != TaskResult::Unspecified
}

/// One trivial job of a throughput run.
struct JobRecord {
    task: TaskSnapshot,
    enqueued: SystemTime,
    /// When this process first saw the task final on the forge.
    final_seen: SystemTime,
}

/// Waits until every job in `ids` is final on the forge, recording when each
/// became so; progress on stderr.
pub(super) async fn wait_all_final(
    forge: &FakeForge,
    daemon: &mut Daemon,
    ids: &[i64],
    timeout: Duration,
    what: &str,
) -> Result<HashMap<i64, SystemTime>, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut seen: HashMap<i64, SystemTime> = HashMap::new();
    let count = |f: &FakeForge| {
        ids.iter()
            .filter(|id| f.task_for_job(**id).is_some_and(|t| is_final(&t)))
            .count()
    };
    while seen.len() < ids.len() {
        let known = seen.len();
        forge
            .wait_for(|f| count(f) != known, Duration::from_secs(2))
            .await;
        let now = SystemTime::now();
        for id in ids {
            if !seen.contains_key(id) && forge.task_for_job(*id).is_some_and(|t| is_final(&t)) {
                seen.insert(*id, now);
            }
        }
        if seen.len() != known {
            progress(format_args!(
                "{what}: {}/{} jobs final ({:.1} s)",
                seen.len(),
                ids.len(),
                start.elapsed().as_secs_f64()
            ));
        }
        daemon.check_alive()?;
        if Instant::now() > deadline && seen.len() < ids.len() {
            return Err(format!(
                "{what}: only {}/{} jobs final after {} s; the daemon's log:\n{}",
                seen.len(),
                ids.len(),
                timeout.as_secs(),
                daemon.log_tail()
            ));
        }
    }
    Ok(seen)
}

/// Queues `n` trivial jobs at once and waits until the forge has them all final.
async fn throughput(
    forge: &FakeForge,
    daemon: &mut Daemon,
    capacity: u32,
    n: u32,
    setup: &Setup<'_>,
) -> Result<(Throughput, Vec<JobRecord>), String> {
    let payload = true_payload(setup.label);
    let timeout = (setup.image.boot_timeout + Duration::from_secs(120)) * n;
    let start = Instant::now();
    let enqueued = SystemTime::now();
    let ids: Vec<i64> = (0..n)
        .map(|_| forge.enqueue(FakeJob::new(payload.clone(), &[setup.label])))
        .collect();
    let what = format!("capacity {capacity}");
    let seen = wait_all_final(forge, daemon, &ids, timeout, &what).await?;
    let elapsed = start.elapsed();
    let mut jobs = Vec::new();
    for id in &ids {
        let task = forge
            .task_for_job(*id)
            .ok_or_else(|| format!("job {id} has no task"))?;
        if task.client_result != TaskResult::Success {
            return Err(format!(
                "{what}: the `true` job of task {} ended {:?}; the daemon's log:\n{}",
                task.id,
                task.client_result,
                daemon.log_tail()
            ));
        }
        jobs.push(JobRecord {
            final_seen: seen.get(id).copied().unwrap_or_else(SystemTime::now),
            task,
            enqueued,
        });
    }
    jobs.sort_by_key(|j| j.task.id);
    Ok((
        Throughput {
            capacity,
            jobs: n,
            elapsed,
        },
        jobs,
    ))
}

/// Median of the forge's view at capacity 1: a job can be taken once it is
/// queued and the previous one is final; until its step 0 `started_at`.
fn forge_view(jobs: &[JobRecord]) -> Duration {
    let mut views = Vec::new();
    let mut prev_final: Option<SystemTime> = None;
    for j in jobs {
        let available = match prev_final {
            Some(p) if p > j.enqueued => p,
            _ => j.enqueued,
        };
        if let Some(started) = j.task.steps.first().and_then(|s| s.started_at.as_ref()) {
            views.push(
                system_time(started)
                    .duration_since(available)
                    .unwrap_or_default(),
            );
        }
        prev_final = Some(j.final_seen);
    }
    median(&views)
}

/// The latency split of the jobs, from the daemon's database.
fn db_latency(state_dir: &Path, jobs: &[JobRecord]) -> Result<Latency, String> {
    let db = crate::store::db_path(state_dir);
    let store = Store::open_read_only(&db).map_err(|e| format!("open {}: {e}", db.display()))?;
    let rows = store
        .recent_jobs(jobs.len() + 100)
        .map_err(|e| format!("read {}: {e}", db.display()))?;
    let mut split: [Vec<Duration>; 5] = Default::default();
    for j in jobs {
        let row = rows
            .iter()
            .find(|r| r.forge == FORGE_NAME && r.task_id == j.task.id)
            .ok_or_else(|| format!("task {} is not in the daemon's database", j.task.id))?;
        let t = row.timings;
        let parts = [
            t.provision_ms,
            t.boot_ms,
            t.ssh_ready_ms,
            t.first_step_ms,
            t.to_first_step_ms(),
        ];
        for (v, p) in split.iter_mut().zip(parts) {
            let ms =
                p.ok_or_else(|| format!("the daemon recorded no timings for task {}", j.task.id))?;
            v.push(Duration::from_millis(ms));
        }
    }
    Ok(Latency {
        provision: median(&split[0]),
        boot: median(&split[1]),
        ssh_ready: median(&split[2]),
        first_step: median(&split[3]),
        total: median(&split[4]),
        forge_view: Duration::ZERO,
    })
}

/// Watches the idle daemon: largest VmRSS sampled each second, CPU over the period.
async fn idle(daemon: &mut Daemon, secs: u64) -> Result<Idle, String> {
    // Let the last job's teardown and report settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    progress(format_args!("idle: watching the daemon for {secs} s"));
    let ticks0 = daemon.cpu_ticks()?;
    let t0 = Instant::now();
    let mut rss = daemon.kib("VmRSS")?;
    for _ in 0..secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        daemon.check_alive()?;
        rss = rss.max(daemon.kib("VmRSS")?);
    }
    let ticks = daemon.cpu_ticks()?.saturating_sub(ticks0);
    let wall = t0.elapsed();
    let idle = Idle {
        secs: wall.as_secs_f64(),
        rss_kib: rss,
        hwm_kib: daemon.kib("VmHWM")?,
        cpu_percent: cpu_percent(ticks, wall),
    };
    progress(format_args!(
        "idle: VmRSS {:.1} MiB, CPU {:.2}% of a core",
        idle.rss_kib as f64 / 1024.0,
        idle.cpu_percent
    ));
    Ok(idle)
}

/// Runs the log job; `bytes` and `baseline` are left for the caller.
async fn stream(
    forge: &FakeForge,
    daemon: &mut Daemon,
    mb: u32,
    setup: &Setup<'_>,
) -> Result<Stream, String> {
    let lines = u64::from(mb) * BLOCK_LINES;
    let hwm_reset = daemon.reset_hwm();
    let id = forge.enqueue(FakeJob::new(log_payload(setup.label, mb), &[setup.label]));
    progress(format_args!("streaming: a job printing {mb} MB queued"));
    let timeout = setup.image.boot_timeout + Duration::from_secs(600 + 10 * u64::from(mb));
    let start = Instant::now();
    let mut last_note = Instant::now();
    loop {
        let done = forge
            .wait_for(
                |f| f.task_for_job(id).is_some_and(|t| is_final(&t)),
                Duration::from_secs(1),
            )
            .await;
        daemon.check_alive()?;
        if done {
            break;
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "streaming: the job did not finish within {} s; the daemon's log:\n{}",
                timeout.as_secs(),
                daemon.log_tail()
            ));
        }
        if last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            let rows = forge.task_for_job(id).map(|t| t.log_rows).unwrap_or(0);
            progress(format_args!(
                "streaming: {:.1} MB acknowledged by the forge, daemon VmRSS {:.1} MiB ({:.0} s)",
                rows as f64 * LINE_BYTES as f64 / 1e6,
                daemon.kib("VmRSS").unwrap_or(0) as f64 / 1024.0,
                start.elapsed().as_secs_f64()
            ));
        }
    }
    let hwm_kib = daemon.kib("VmHWM")?;
    let task = forge
        .task_for_job(id)
        .ok_or_else(|| "the log job has no task".to_string())?;
    if task.client_result != TaskResult::Success {
        return Err(format!(
            "streaming: the log job ended {:?}; the daemon's log:\n{}",
            task.client_result,
            daemon.log_tail()
        ));
    }
    let step = task
        .steps
        .get(1)
        .ok_or_else(|| "streaming: the log job has no second step".to_string())?;
    if u64::try_from(step.log_length).unwrap_or(0) != lines {
        return Err(format!(
            "streaming: the printing step has {} log rows, expected {lines}",
            step.log_length
        ));
    }
    let started = step
        .started_at
        .as_ref()
        .map(system_time)
        .ok_or_else(|| "streaming: the printing step has no started_at".to_string())?;
    let end = usize::try_from(step.log_index + step.log_length).unwrap_or(usize::MAX);
    let acked = forge
        .log_appends(task.id)
        .into_iter()
        .find(|a| a.rows >= end)
        .map(|a| a.at)
        .ok_or_else(|| "streaming: the forge never held the step's last row".to_string())?;
    let solstice = acked.duration_since(started).unwrap_or_default();
    progress(format_args!(
        "streaming: {:.1} s from step start to the last row acknowledged",
        solstice.as_secs_f64()
    ));
    Ok(Stream {
        bytes: lines * LINE_BYTES,
        baseline: Duration::ZERO,
        solstice,
        hwm_kib,
        hwm_reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_and_name_their_steps() {
        let wf = crate::workflow::parse_workflow(&log_payload("tiny", 3)).unwrap();
        assert_eq!(wf.jobs.len(), 1);
        let text = log_payload("tiny", 3);
        assert!(text.contains("-lt 3 ]"));
        assert!(text.contains("runs-on: tiny"));
        crate::workflow::parse_workflow(&true_payload("tiny")).unwrap();
    }

    #[test]
    fn block_lines_are_100_bytes() {
        // "%08d %s\n" with a 90-character string.
        let s = gen_block_script();
        assert!(s.contains("substr(t t t, 1, 90)"));
        assert_eq!(8 + 1 + 90 + 1, LINE_BYTES);
        assert!(s.contains(&format!("i < {BLOCK_LINES}")));
    }

    #[test]
    fn image_keys_land_in_the_image_section() {
        let text = "[images.tiny]\npath = \"/x\"\n[daemon]\nstate_dir = \"/s\"\n";
        let out = with_image_keys(
            text,
            "tiny",
            &[
                ("warm".into(), toml::Value::Integer(1)),
                ("snapshot".into(), toml::Value::Boolean(true)),
            ],
        )
        .unwrap();
        let t: toml::Table = out.parse().unwrap();
        assert_eq!(t["images"]["tiny"]["warm"].as_integer(), Some(1));
        assert_eq!(t["images"]["tiny"]["snapshot"].as_bool(), Some(true));
        assert_eq!(t["images"]["tiny"]["path"].as_str(), Some("/x"));
        assert_eq!(with_image_keys(text, "tiny", &[]).unwrap(), text);
        assert!(with_image_keys(text, "nope", &[("warm".into(), 1.into())]).is_err());
    }

    #[test]
    fn generated_config_is_valid() {
        let dir = std::env::temp_dir().join(format!("solstice-bench-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image_path = dir.join("img.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image_path)
            .arg("16M")
            .status()
            .unwrap();
        assert!(st.success());
        let secret = dir.join("s");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef01234567\n").unwrap();
        let user = format!(
            "[images.tiny]\npath = {:?}\nvcpus = 1\nmemory_mib = 256\nlabels = [\"tiny\", \"linux\"]\n",
            image_path
        );
        let config = crate::config::parse_str(&user, &dir.join("user.toml")).unwrap();
        let image = &config.images["tiny"];
        let text = daemon_config(&DaemonConfigInput {
            config: &config,
            image,
            accel: "tcg",
            state_dir: &dir.join("state"),
            capacity: 2,
            forge_url: "http://127.0.0.1:1234",
            secret_file: &secret,
            allow_local_actions: true,
        });
        let parsed = crate::config::parse_str(&text, &dir.join("gen.toml")).unwrap();
        assert_eq!(parsed.daemon.max_concurrent_jobs, 2);
        assert_eq!(parsed.qemu.accel, crate::config::AccelChoice::Tcg);
        let img = &parsed.images["tiny"];
        assert_eq!(img.path, image.path);
        assert_eq!(img.labels, ["tiny", "linux"]);
        assert_eq!(img.memory_mib, 256);
        assert_eq!(parsed.actions.allowed_hosts, ["127.0.0.1"]);
        assert_eq!(
            parsed.forges[FORGE_NAME].fetch_interval,
            Duration::from_secs(1)
        );
        // `bench warm`'s keys pass the configuration's validation.
        let warm = with_image_keys(
            &text,
            "tiny",
            &[
                ("warm".into(), toml::Value::Integer(1)),
                ("snapshot".into(), toml::Value::Boolean(true)),
            ],
        )
        .unwrap();
        let parsed = crate::config::parse_str(&warm, &dir.join("warm.toml")).unwrap();
        assert_eq!(parsed.images["tiny"].warm, 1);
        assert!(parsed.images["tiny"].snapshot);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

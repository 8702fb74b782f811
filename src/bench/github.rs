//! `solstice bench github` (issue 14): the `solstice run` daemon, as a child
//! process, against the in-process fake GitHub, with the same daemon against
//! the fake Forgejo forge as the baseline in the same run.
//!
//! For each forge, at capacity 2 (progress on stderr, the table on stdout):
//! 1. Idle: the daemon starts; once it polls (Forgejo: a `FetchTask`;
//!    GitHub: 2 idle JIT runners each in a long poll) it settles for
//!    `--idle-secs`, then its VmRSS and VmHWM are read.
//! 2. Latency: `--jobs` trivial jobs one after another (each queued once the
//!    previous one is final and the daemon is back at 2 idle runners); task
//!    received → first step running of each comes from the daemon's own
//!    database (the same job timings `bench runner` reads). For GitHub,
//!    "received" is the broker message's arrival, so the split's provision
//!    part includes `acquirejob`, the first `renewjob` and the translation.
//!
//! Both daemons get the configuration `bench runner` generates (the chosen
//! image and `[qemu]` settings); the GitHub one has its forge section
//! replaced by a `kind = "github"` forge with token-file credentials and
//! `api_url` pointing at the fake.

use std::path::Path;
use std::time::{Duration, Instant};

use super::runner::{
    DaemonConfigInput, FORGE_NAME, Setup, daemon_config, is_final, progress, true_payload,
    wait_all_final,
};
use super::runner_report::{USER_HZ, cpu_percent, loadavg_1min, stat_cpu_ticks};
use super::{
    BenchError, GithubBenchArgs, TempDir, bench_image, daemon_exe, first_label, fmt_ms,
    load_bench_config, median,
};
use crate::forge::forgejo::proto::TaskResult;
use crate::startup::resolve_accel;
use crate::store::{JobTimings, Store};
use crate::testing::fake_forge::FakeJob;
use crate::testing::fake_github::{FakeGithub, FakeGithubJob, FakeGithubOptions, FakeStep};

/// Capacity of both daemons: the issue asks for 2 idle JIT runners.
const CAPACITY: u32 = 2;
/// Owner and repository of the fake GitHub forge.
const OWNER: &str = "solstice-bench";
const REPO: &str = "bench";

/// The figures of one forge.
#[derive(Debug, Clone, Default)]
pub struct ForgeFigures {
    /// VmRSS after the settle time, KiB.
    pub rss_kib: u64,
    /// VmHWM at the same moment, KiB.
    pub hwm_kib: u64,
    /// The daemon's CPU (utime + stime) over the settle time, % of a core.
    pub idle_cpu_percent: f64,
    /// The daemon's CPU time (utime + stime) while each job ran, ms.
    pub job_cpu_ms: Vec<u64>,
    /// This process's CPU time (the in-process fake forge) while each job
    /// ran, ms: it competes with the guest for the host's cores.
    pub fake_cpu_ms: Vec<u64>,
    /// The timings of each job, in order.
    pub jobs: Vec<JobTimings>,
    /// Protocol violations the fake saw.
    pub violations: Vec<String>,
}

impl ForgeFigures {
    /// Median of one part of the split over the jobs.
    fn median_of(&self, part: impl Fn(&JobTimings) -> Option<u64>) -> Option<Duration> {
        let v: Vec<Duration> = self
            .jobs
            .iter()
            .filter_map(|t| part(t).map(Duration::from_millis))
            .collect();
        (!v.is_empty()).then(|| median(&v))
    }
}

/// Everything `bench github` prints.
#[derive(Debug, Clone)]
pub struct GithubReport {
    /// Image name.
    pub image: String,
    /// Accelerator used.
    pub accel: String,
    /// Settle time before the memory figures, seconds.
    pub idle_secs: u64,
    /// The Forgejo baseline.
    pub forgejo: ForgeFigures,
    /// The GitHub forge.
    pub github: ForgeFigures,
    /// Host 1-minute load average before and after.
    pub load: (Option<f64>, Option<f64>),
}

/// One part of the latency split.
type Part = fn(&JobTimings) -> Option<u64>;

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

impl GithubReport {
    /// The table printed on stdout.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let load = |l: Option<f64>| l.map_or("?".to_string(), |v| format!("{v:.2}"));
        let _ = writeln!(
            out,
            "solstice bench github: image {}, accelerator {}, capacity {CAPACITY}, {} job(s) per forge",
            self.image,
            self.accel,
            self.github.jobs.len()
        );
        let _ = writeln!(
            out,
            "host load average (1 min): {} before, {} after (figures assume an otherwise idle host)",
            load(self.load.0),
            load(self.load.1)
        );
        let row = |out: &mut String, name: &str, f: &str, g: &str, r: &str| {
            let _ = writeln!(out, "  {name:<46} {f:>12} {g:>12} {r:>10}");
        };
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<48} {:>12} {:>12} {:>10}",
            "", "forgejo", "github", "gh/fj"
        );
        let _ = writeln!(
            out,
            "IDLE MEMORY (2 runners polling, after {} s)",
            self.idle_secs
        );
        for (name, f, g) in [
            ("daemon VmRSS", self.forgejo.rss_kib, self.github.rss_kib),
            (
                "daemon VmHWM (peak since start)",
                self.forgejo.hwm_kib,
                self.github.hwm_kib,
            ),
        ] {
            row(&mut out, name, &mib(f), &mib(g), &ratio(g as f64, f as f64));
        }
        row(
            &mut out,
            "daemon CPU over the settle time (% of a core)",
            &format!("{:.2}%", self.forgejo.idle_cpu_percent),
            &format!("{:.2}%", self.github.idle_cpu_percent),
            &ratio(self.github.idle_cpu_percent, self.forgejo.idle_cpu_percent),
        );
        let _ = writeln!(
            out,
            "LATENCY (median over the jobs, from the daemon's database)"
        );
        let parts: [(&str, Part); 5] = [
            ("provision (receipt → QEMU spawned)", |t| t.provision_ms),
            ("boot (QEMU spawned → guest SSH port answers)", |t| {
                t.boot_ms
            }),
            ("SSH ready (port answers → session ready)", |t| {
                t.ssh_ready_ms
            }),
            ("first step (session ready → step 0 running)", |t| {
                t.first_step_ms
            }),
            ("total: task received → first step running", |t| {
                t.to_first_step_ms()
            }),
        ];
        for (name, part) in parts {
            let f = self.forgejo.median_of(part);
            let g = self.github.median_of(part);
            let show = |d: Option<Duration>| d.map_or("-".to_string(), fmt_ms);
            let r = match (f, g) {
                (Some(f), Some(g)) => ratio(g.as_secs_f64(), f.as_secs_f64()),
                _ => "-".into(),
            };
            row(&mut out, name, &show(f), &show(g), &r);
        }
        let totals = |f: &ForgeFigures| {
            f.jobs
                .iter()
                .map(|t| t.to_first_step_ms().map_or("?".into(), |m| m.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "  each job's total (ms): forgejo [{}], github [{}]",
            totals(&self.forgejo),
            totals(&self.github)
        );
        let cpu_of = |v: &[u64]| {
            let v: Vec<Duration> = v.iter().map(|m| Duration::from_millis(*m)).collect();
            median(&v)
        };
        let (ff, gf) = (
            cpu_of(&self.forgejo.fake_cpu_ms),
            cpu_of(&self.github.fake_cpu_ms),
        );
        let cpu = |f: &ForgeFigures| {
            let v: Vec<Duration> = f
                .job_cpu_ms
                .iter()
                .map(|m| Duration::from_millis(*m))
                .collect();
            median(&v)
        };
        let (fc, gc) = (cpu(&self.forgejo), cpu(&self.github));
        row(
            &mut out,
            "daemon CPU per job, queued → final (median)",
            &fmt_ms(fc),
            &fmt_ms(gc),
            &ratio(gc.as_secs_f64(), fc.as_secs_f64()),
        );
        row(
            &mut out,
            "fake forge's CPU per job (this process, median)",
            &fmt_ms(ff),
            &fmt_ms(gf),
            &ratio(gf.as_secs_f64(), ff.as_secs_f64()),
        );
        for (name, f) in [("forgejo", &self.forgejo), ("github", &self.github)] {
            if f.violations.is_empty() {
                let _ = writeln!(out, "fake {name}: no protocol violations");
            } else {
                let _ = writeln!(
                    out,
                    "fake {name}: {} protocol violation(s):",
                    f.violations.len()
                );
                for v in &f.violations {
                    let _ = writeln!(out, "  {v}");
                }
            }
        }
        out
    }
}

/// `solstice bench github`.
pub async fn github_main(args: GithubBenchArgs) -> Result<(), BenchError> {
    let config = load_bench_config(&args.common)?;
    let image = bench_image(&config, &args.common)?;
    let exe = daemon_exe()?;
    let accel = resolve_accel(&config).await?.current();
    let label = first_label(image);
    progress(format_args!(
        "image {} ({} vCPU, {} MiB), accelerator {}, capacity {CAPACITY}, {} jobs per forge, {} s settle",
        image.name,
        image.vcpus,
        image.memory_mib,
        accel.as_str(),
        args.jobs,
        args.idle_secs
    ));
    let load_before = load_average();
    // Under the system's temporary directory: QMP socket paths stay short.
    let work = TempDir::new(&std::env::temp_dir(), "sgbench")?;
    let setup = Setup {
        config: &config,
        image,
        accel: accel.as_str(),
        exe: &exe,
        work: &work.0,
        label: &label,
        actions_url: None,
    };
    let forgejo = forgejo_side(&setup, &args)
        .await
        .map_err(BenchError::Infra)?;
    let github = github_side(&setup, &args)
        .await
        .map_err(BenchError::Infra)?;
    let report = GithubReport {
        image: image.name.clone(),
        accel: accel.as_str().into(),
        idle_secs: args.idle_secs,
        forgejo,
        github,
        load: (load_before, load_average()),
    };
    print!("\n{}", report.render());
    Ok(())
}

fn load_average() -> Option<f64> {
    loadavg_1min(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

/// How long one trivial job may take.
fn job_timeout(setup: &Setup<'_>) -> Duration {
    setup.image.boot_timeout + Duration::from_secs(180)
}

/// Sleeps `secs` seconds, checking each second that the daemon lives, then
/// reads its VmRSS and VmHWM; also its CPU use over the period (% of a core).
async fn settle_and_measure(
    daemon: &mut super::runner::Daemon,
    secs: u64,
    what: &str,
) -> Result<(u64, u64, f64), String> {
    progress(format_args!("{what}: settling for {secs} s"));
    let ticks0 = daemon.cpu_ticks()?;
    let t0 = Instant::now();
    for _ in 0..secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        daemon.check_alive()?;
    }
    let cpu = cpu_percent(daemon.cpu_ticks()?.saturating_sub(ticks0), t0.elapsed());
    let rss = daemon.kib("VmRSS")?;
    let hwm = daemon.kib("VmHWM")?;
    progress(format_args!(
        "{what}: idle VmRSS {}, VmHWM {}, CPU {cpu:.2}% of a core",
        mib(rss),
        mib(hwm)
    ));
    Ok((rss, hwm, cpu))
}

/// The timings the daemon recorded for `task_ids` (in order) in its database.
pub(super) fn db_timings(state_dir: &Path, task_ids: &[i64]) -> Result<Vec<JobTimings>, String> {
    let db = crate::store::db_path(state_dir);
    let store = Store::open_read_only(&db).map_err(|e| format!("open {}: {e}", db.display()))?;
    let rows = store
        .recent_jobs(task_ids.len() + 100)
        .map_err(|e| format!("read {}: {e}", db.display()))?;
    task_ids
        .iter()
        .map(|id| {
            rows.iter()
                .find(|r| r.forge == FORGE_NAME && r.task_id == *id)
                .map(|r| r.timings)
                .ok_or_else(|| format!("task {id} is not in the daemon's database"))
        })
        .collect()
}

/// The Forgejo baseline: the daemon against the fake Forgejo forge.
async fn forgejo_side(setup: &Setup<'_>, args: &GithubBenchArgs) -> Result<ForgeFigures, String> {
    let (forge, mut daemon) = setup.start_in("forgejo", CAPACITY).await?;
    let (rss_kib, hwm_kib, idle_cpu_percent) =
        settle_and_measure(&mut daemon, args.idle_secs, "forgejo").await?;
    let payload = true_payload(setup.label);
    let mut task_ids = Vec::new();
    let mut job_cpu_ms = Vec::new();
    let mut fake_cpu_ms = Vec::new();
    for i in 0..args.jobs {
        let what = format!("forgejo job {}/{}", i + 1, args.jobs);
        let ticks0 = daemon.cpu_ticks()?;
        let own0 = own_ticks();
        let id = forge.enqueue(FakeJob::new(payload.clone(), &[setup.label]));
        wait_all_final(&forge, &mut daemon, &[id], job_timeout(setup), &what).await?;
        let task = forge
            .task_for_job(id)
            .filter(is_final)
            .ok_or_else(|| format!("{what}: no final task"))?;
        if task.client_result != TaskResult::Success {
            return Err(format!(
                "{what}: the `true` job ended {:?}; the daemon's log:\n{}",
                task.client_result,
                daemon.log_tail()
            ));
        }
        task_ids.push(task.id);
        job_cpu_ms.push(ticks_ms(daemon.cpu_ticks()?.saturating_sub(ticks0)));
        fake_cpu_ms.push(ticks_ms(own_ticks().saturating_sub(own0)));
        // Back to idle polling before the next job.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let violations = forge.violations();
    daemon.stop().await?;
    let jobs = db_timings(&daemon.state_dir, &task_ids)?;
    log_totals("forgejo", &jobs);
    Ok(ForgeFigures {
        rss_kib,
        hwm_kib,
        idle_cpu_percent,
        job_cpu_ms,
        fake_cpu_ms,
        jobs,
        violations,
    })
}

/// This process's CPU clock ticks (the in-process fake forge's work).
fn own_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_cpu_ticks(&s))
        .unwrap_or(0)
}

/// Clock ticks of `/proc/<pid>/stat` in ms.
fn ticks_ms(ticks: u64) -> u64 {
    (ticks as f64 / USER_HZ * 1000.0) as u64
}

fn log_totals(what: &str, jobs: &[JobTimings]) {
    for (i, t) in jobs.iter().enumerate() {
        progress(format_args!(
            "{what} job {}: task received → first step {} ms",
            i + 1,
            t.to_first_step_ms()
                .map_or("?".to_string(), |m| m.to_string())
        ));
    }
}

/// Runners at the fake that have never had a job, are not busy, and are in
/// a long poll of an open session.
fn idle_polling(gh: &FakeGithub) -> usize {
    let used: Vec<u64> = gh
        .jobs()
        .iter()
        .flat_map(|j| j.delivered_to.clone())
        .collect();
    let sessions = gh.sessions();
    gh.runners()
        .iter()
        .filter(|r| {
            !r.busy
                && !used.contains(&r.id)
                && sessions.iter().any(|s| s.runner == r.id && s.polls > 0)
        })
        .count()
}

/// Waits until `n` JIT runners idle-poll the fake.
async fn wait_idle_runners(
    gh: &FakeGithub,
    daemon: &mut super::runner::Daemon,
    n: usize,
    timeout: Duration,
    what: &str,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if gh
            .wait_for(|g| idle_polling(g) >= n, Duration::from_secs(1))
            .await
        {
            return Ok(());
        }
        daemon.check_alive()?;
        if start.elapsed() > timeout {
            return Err(format!(
                "{what}: {} of {n} JIT runners polling after {} s; the daemon's log:\n{}",
                idle_polling(gh),
                timeout.as_secs(),
                daemon.log_tail()
            ));
        }
    }
}

/// The GitHub side: the daemon against the fake GitHub.
async fn github_side(setup: &Setup<'_>, args: &GithubBenchArgs) -> Result<ForgeFigures, String> {
    // One RSA key for every JIT runner: key generation would otherwise
    // compete with the guests for the CPU (see the option).
    let gh = FakeGithub::start(FakeGithubOptions {
        shared_runner_key: true,
        ..FakeGithubOptions::default()
    })
    .await
    .map_err(|e| format!("start the fake GitHub: {e}"))?;
    let token = format!(
        "github_pat_bench_{}",
        (0..16)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect::<String>()
    );
    gh.add_token(&token);
    let dir = setup.work.join("github");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let token_file = dir.join("github.token");
    std::fs::write(&token_file, format!("{token}\n"))
        .map_err(|e| format!("write {}: {e}", token_file.display()))?;
    let state_dir = dir.join("state");
    let text = github_config(
        &DaemonConfigInput {
            config: setup.config,
            image: setup.image,
            accel: setup.accel,
            state_dir: &state_dir,
            capacity: CAPACITY,
            forge_url: &gh.url(),
            secret_file: &token_file,
            allow_local_actions: false,
        },
        &gh.repo_url(OWNER, REPO),
        &gh.api_url(),
    )?;
    let config_path = dir.join("solstice.toml");
    std::fs::write(&config_path, text)
        .map_err(|e| format!("write {}: {e}", config_path.display()))?;
    let mut daemon = super::runner::Daemon::spawn(setup.exe, &config_path, &dir, state_dir)?;
    progress(format_args!("github: daemon started (pid {})", daemon.pid));
    let started = Instant::now();
    wait_idle_runners(
        &gh,
        &mut daemon,
        CAPACITY as usize,
        Duration::from_secs(120),
        "github",
    )
    .await?;
    progress(format_args!(
        "github: {CAPACITY} JIT runners polling after {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let (rss_kib, hwm_kib, idle_cpu_percent) =
        settle_and_measure(&mut daemon, args.idle_secs, "github").await?;
    let mut runner_ids = Vec::new();
    let mut job_cpu_ms = Vec::new();
    let mut fake_cpu_ms = Vec::new();
    for i in 0..args.jobs {
        let what = format!("github job {}/{}", i + 1, args.jobs);
        let ticks0 = daemon.cpu_ticks()?;
        let own0 = own_ticks();
        let index = gh
            .enqueue(FakeGithubJob::new(&["self-hosted", setup.label]).step(FakeStep::run("true")));
        let deadline = Instant::now() + job_timeout(setup);
        let job = loop {
            if let Some(j) = gh.wait_job_final(index, Duration::from_secs(2)).await {
                break j;
            }
            daemon.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "{what}: not final after {} s; the daemon's log:\n{}",
                    job_timeout(setup).as_secs(),
                    daemon.log_tail()
                ));
            }
        };
        if job.conclusion.as_deref() != Some("succeeded") {
            return Err(format!(
                "{what}: the `true` job ended {:?}; the daemon's log:\n{}",
                job.conclusion,
                daemon.log_tail()
            ));
        }
        let runner = *job
            .delivered_to
            .last()
            .ok_or_else(|| format!("{what}: the fake delivered the job to no runner"))?;
        runner_ids.push(i64::try_from(runner).unwrap_or(i64::MAX));
        job_cpu_ms.push(ticks_ms(daemon.cpu_ticks()?.saturating_sub(ticks0)));
        fake_cpu_ms.push(ticks_ms(own_ticks().saturating_sub(own0)));
        progress(format_args!("{what}: succeeded on JIT runner {runner}"));
        // Back to 2 idle runners (the used one is replaced) before the next job.
        wait_idle_runners(
            &gh,
            &mut daemon,
            CAPACITY as usize,
            Duration::from_secs(120),
            &what,
        )
        .await?;
    }
    let violations = gh.violations();
    daemon.stop().await?;
    let jobs = db_timings(&daemon.state_dir, &runner_ids)?;
    log_totals("github", &jobs);
    Ok(ForgeFigures {
        rss_kib,
        hwm_kib,
        idle_cpu_percent,
        job_cpu_ms,
        fake_cpu_ms,
        jobs,
        violations,
    })
}

/// The generated daemon configuration with its one forge replaced by a
/// GitHub forge at `repo_url`, with token-file credentials and `api_url`.
fn github_config(
    input: &DaemonConfigInput<'_>,
    repo_url: &str,
    api_url: &str,
) -> Result<String, String> {
    use toml::{Table, Value};
    let text = daemon_config(input);
    let mut root: Table = text
        .parse()
        .map_err(|e| format!("the generated configuration does not parse: {e}"))?;
    let mut forge = Table::new();
    forge.insert("kind".into(), "github".into());
    forge.insert("url".into(), repo_url.into());
    forge.insert("api_url".into(), api_url.into());
    forge.insert(
        "token_file".into(),
        Value::String(input.secret_file.to_string_lossy().into_owned()),
    );
    forge.insert("runner_name".into(), "solstice-bench".into());
    forge.insert("fetch_interval_secs".into(), Value::Integer(1));
    let mut forges = Table::new();
    forges.insert(FORGE_NAME.into(), Value::Table(forge));
    root.insert("forges".into(), Value::Table(forges));
    Ok(format!(
        "# Generated by `solstice bench github`.\n{}",
        toml::to_string(&root).unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_github_config_is_valid() {
        let dir = std::env::temp_dir().join(format!("solstice-gbench-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image_path = dir.join("img.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image_path)
            .arg("16M")
            .status()
            .unwrap();
        assert!(st.success());
        let token = dir.join("t");
        std::fs::write(&token, "github_pat_x\n").unwrap();
        let user = format!(
            "[images.tiny]\npath = {:?}\nvcpus = 1\nmemory_mib = 256\nlabels = [\"tiny\"]\n",
            image_path
        );
        let config = crate::config::parse_str(&user, &dir.join("user.toml")).unwrap();
        let text = github_config(
            &DaemonConfigInput {
                config: &config,
                image: &config.images["tiny"],
                accel: "tcg",
                state_dir: &dir.join("state"),
                capacity: 2,
                forge_url: "http://127.0.0.1:1",
                secret_file: &token,
                allow_local_actions: false,
            },
            "http://127.0.0.1:1/o/r",
            "http://127.0.0.1:1/api/v3",
        )
        .unwrap();
        let parsed = crate::config::parse_str(&text, &dir.join("gen.toml")).unwrap();
        let f = &parsed.forges[FORGE_NAME];
        let gh = f.github.as_ref().expect("a github forge");
        assert_eq!(gh.api_url, "http://127.0.0.1:1/api/v3");
        assert_eq!(parsed.daemon.max_concurrent_jobs, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn table_has_both_columns_and_ratios() {
        let t = JobTimings {
            provision_ms: Some(10),
            boot_ms: Some(1000),
            ssh_ready_ms: Some(100),
            first_step_ms: Some(50),
        };
        let g = JobTimings {
            provision_ms: Some(30),
            ..t
        };
        let r = GithubReport {
            image: "tiny".into(),
            accel: "tcg".into(),
            idle_secs: 10,
            forgejo: ForgeFigures {
                rss_kib: 10240,
                hwm_kib: 12288,
                idle_cpu_percent: 0.1,
                job_cpu_ms: vec![100],
                fake_cpu_ms: vec![10],
                jobs: vec![t],
                violations: vec![],
            },
            github: ForgeFigures {
                rss_kib: 20480,
                hwm_kib: 24576,
                idle_cpu_percent: 0.2,
                job_cpu_ms: vec![300],
                fake_cpu_ms: vec![20],
                jobs: vec![g],
                violations: vec![],
            },
            load: (Some(0.5), None),
        };
        let text = r.render();
        assert!(text.contains("10.0 MiB"), "{text}");
        assert!(text.contains("2.00"), "{text}");
        assert!(text.contains("1160 ms"), "{text}");
        assert!(text.contains("1180 ms"), "{text}");
        assert!(text.contains("3.00"), "{text}");
        assert!(
            text.contains("fake github: no protocol violations"),
            "{text}"
        );
    }
}

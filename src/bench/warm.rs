//! `solstice bench warm` (issue 17): task received → first step running of
//! trivial jobs whose guest boots cold, is taken from a warm pool, or is
//! restored from a snapshot template, side by side in one run with the plain
//! QEMU boot to SSH ([`super::baseline`]); and what an idle warm guest costs
//! in memory.
//!
//! Parts (progress on stderr, the table on stdout at the end):
//! 1. Baseline: the image booted `--runs` times with plain QEMU, `ssh … true`
//!    polled.
//! 2. For each start kind, a fresh `solstice run` daemon (as in
//!    `bench runner`: a child process against the in-process fake forge,
//!    capacity 1) with the image's `warm` / `snapshot` keys set, and `--runs`
//!    trivial jobs one after another:
//!    - `cold`: `warm = 0`, `snapshot = false`;
//!    - `pool`: `warm = 1`; before each job, wait until the daemon's state
//!      database lists a ready warm guest of the image, let it idle
//!      `--idle-secs`, read the VmRSS of its QEMU (and of its pasta, if any);
//!    - `restored`: `snapshot = true`, `warm = 0`; wait until the template
//!      is saved in `<state_dir>/warm/t-…/` (its overlay frozen read-only
//!      beside the state file), then each job restores a clone.
//!
//!    The latency split of each job comes from the daemon's database (the
//!    job timings `bench runner` reads); how its guest really started comes
//!    from the job's log ("guest from the warm pool", "guest restored from a
//!    saved guest"), so that a part whose jobs fell back to a cold boot says
//!    so instead of passing cold figures off as warm ones.
//!
//! Capacity 1: a warm guest is only refilled while no job runs, so a refill
//! never competes with the measured job for the host's cores.
//!
//! A part that cannot finish (the daemon dies, the warm guest or template
//! never becomes ready within `--ready-timeout-secs`) keeps the figures it
//! has; the others still run, the table is printed, and the command exits
//! with the infrastructure status.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::baseline::baseline_boot;
use super::github::db_timings;
use super::runner::{
    Daemon, Setup, StartOptions, is_final, progress, true_payload, wait_all_final,
};
use super::runner_report::{loadavg_1min, status_kib};
use super::{
    BenchError, TempDir, WarmBenchArgs, WarmMode, bench_image, daemon_exe, first_label, fmt_ms,
    load_bench_config, median,
};
use crate::forge::forgejo::proto::TaskResult;
use crate::human::fmt_duration;
use crate::startup::resolve_accel;
use crate::store::{JobTimings, Store, WarmKind, WarmRow};
use crate::testing::fake_forge::{FakeForge, FakeJob};

/// Issue 17's target: task received → first step running with a warm guest.
pub const WARM_TARGET: Duration = Duration::from_secs(1);
/// `max_concurrent_jobs` of every daemon (see the module docs).
const CAPACITY: u32 = 1;
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(250);

/// One measured job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFigures {
    /// The daemon's latency split.
    pub timings: JobTimings,
    /// How its guest started according to the job's log: `cold`, `pool`,
    /// `restored`, or `unknown` when the log says neither.
    pub start: &'static str,
}

/// One start kind's jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModeFigures {
    pub mode: WarmMode,
    /// The jobs that finished, in order.
    pub jobs: Vec<JobFigures>,
    /// Why the part stopped before its last job (its figures so far stay).
    pub error: Option<String>,
}

impl ModeFigures {
    /// Each job's task received → first step running.
    fn totals(&self) -> Vec<Duration> {
        self.jobs
            .iter()
            .filter_map(|j| j.timings.to_first_step_ms().map(Duration::from_millis))
            .collect()
    }

    /// Median of one part of the split over the jobs that have it.
    fn median_of(&self, part: Part) -> Option<Duration> {
        let v: Vec<Duration> = self
            .jobs
            .iter()
            .filter_map(|j| part(&j.timings).map(Duration::from_millis))
            .collect();
        (!v.is_empty()).then(|| median(&v))
    }

    /// Median total, if any job has one.
    pub fn median_total(&self) -> Option<Duration> {
        let v = self.totals();
        (!v.is_empty()).then(|| median(&v))
    }

    /// Jobs whose guest did not start the way this part asks for.
    pub fn mismatched(&self) -> usize {
        self.jobs
            .iter()
            .filter(|j| j.start != self.mode.as_str())
            .count()
    }

    /// `3 pool`, or `2 pool, 1 cold` when the jobs started differently.
    fn kinds(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for j in &self.jobs {
            match counts.iter_mut().find(|(k, _)| *k == j.start) {
                Some((_, n)) => *n += 1,
                None => counts.push((j.start, 1)),
            }
        }
        if counts.is_empty() {
            return "-".into();
        }
        counts
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The memory an idle warm guest costs, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestMemory {
    /// VmRSS of its QEMU process.
    pub qemu_kib: u64,
    /// VmRSS of its pasta process (isolated networks only).
    pub pasta_kib: Option<u64>,
}

impl GuestMemory {
    pub fn total_kib(&self) -> u64 {
        self.qemu_kib + self.pasta_kib.unwrap_or(0)
    }
}

/// The snapshot template of the `restored` part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TemplateFigures {
    /// The build: from the daemon's log ("snapshot template ready" with its
    /// `secs`), else daemon started → the template first seen saved in its
    /// directory (polled every 0.25 s).
    pub build: Duration,
    /// `build` comes from the daemon's log.
    pub build_logged: bool,
    /// The template's files, when its directory was found.
    pub files: Option<TemplateFiles>,
}

/// The files of a saved template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateFiles {
    /// Size of the saved running state (the largest file beside the overlay
    /// that is not a log, pid file or seed).
    pub state_bytes: u64,
    /// Size of the frozen overlay the clones' disks are backed by.
    pub overlay_bytes: u64,
}

/// Everything `solstice bench warm` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmReport {
    pub image: String,
    pub accel: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Jobs per start kind (and baseline boots) asked for.
    pub runs: u32,
    /// Seconds a warm guest idled before its memory was read.
    pub idle_secs: u64,
    /// Every baseline boot to SSH.
    pub baseline_boots: Vec<Duration>,
    /// The start kinds measured, in the order cold, pool, restored.
    pub modes: Vec<ModeFigures>,
    /// One sample per ready warm guest before each `pool` job.
    pub memory: Vec<GuestMemory>,
    pub template: Option<TemplateFigures>,
    /// Protocol violations the fake forges saw.
    pub violations: Vec<String>,
    /// Host 1-minute load average before and after.
    pub load: (Option<f64>, Option<f64>),
}

/// One part of the latency split.
type Part = fn(&JobTimings) -> Option<u64>;

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ms_range(v: &[Duration]) -> String {
    match (v.iter().min(), v.iter().max()) {
        (Some(a), Some(b)) => format!(
            "{:.0}–{:.0} ms",
            a.as_secs_f64() * 1000.0,
            b.as_secs_f64() * 1000.0
        ),
        _ => "-".into(),
    }
}

/// The first line of an error, without the announcement of the daemon's log
/// that follows it (the log is on stderr and in the JSON).
fn summary(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("");
    ["; the daemon's log:", "; its log:", " The daemon's log:"]
        .iter()
        .fold(line, |l, tail| l.strip_suffix(tail).unwrap_or(l))
}

impl WarmReport {
    fn mode(&self, m: WarmMode) -> Option<&ModeFigures> {
        self.modes.iter().find(|f| f.mode == m)
    }

    /// Median plain boot to SSH.
    pub fn baseline(&self) -> Option<Duration> {
        (!self.baseline_boots.is_empty()).then(|| median(&self.baseline_boots))
    }

    /// Whether the pool part met [`WARM_TARGET`] (`None`: no pool figure).
    pub fn pool_met(&self) -> Option<bool> {
        let pool = self.mode(WarmMode::Pool)?;
        let total = pool.median_total()?;
        Some(pool.mismatched() == 0 && total < WARM_TARGET)
    }

    /// The table printed on stdout.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let load = |l: Option<f64>| l.map_or("?".to_string(), |v| format!("{v:.2}"));
        let _ = writeln!(
            out,
            "solstice bench warm: image {} ({} vCPU, {} MiB), accelerator {}, {} job(s) per start kind, capacity {CAPACITY}",
            self.image, self.vcpus, self.memory_mib, self.accel, self.runs
        );
        let _ = writeln!(
            out,
            "host load average (1 min): {} before, {} after (figures assume an otherwise idle host)",
            load(self.load.0),
            load(self.load.1)
        );
        let _ = writeln!(out);
        let row = |out: &mut String, name: &str, cells: &[String]| {
            let mut line = format!("  {name:<48}");
            for c in cells {
                let _ = write!(line, " {c:>14}");
            }
            let _ = writeln!(out, "{}", line.trim_end());
        };
        let modes = [WarmMode::Cold, WarmMode::Pool, WarmMode::Restored];
        let _ = writeln!(
            out,
            "TASK RECEIVED → FIRST STEP RUNNING (daemon's database; medians over each kind's jobs)"
        );
        let mut head = format!("  {:<48} {:>14}", "", "baseline");
        for m in modes {
            let _ = write!(head, " {:>14}", m.as_str());
        }
        let _ = writeln!(out, "{head}");
        let cells = |f: &dyn Fn(&ModeFigures) -> String| -> Vec<String> {
            modes
                .iter()
                .map(|m| self.mode(*m).map_or_else(|| "not run".to_string(), f))
                .collect()
        };
        let with_base = |base: String, rest: Vec<String>| {
            let mut v = vec![base];
            v.extend(rest);
            v
        };
        row(
            &mut out,
            "jobs started as (each job's log)",
            &with_base("-".into(), cells(&|m| m.kinds())),
        );
        let parts: [(&str, Part); 4] = [
            ("provision (receipt → QEMU spawned / take starts)", |t| {
                t.provision_ms
            }),
            ("guest (boot to SSH port / take or restore)", |t| t.boot_ms),
            ("SSH ready (port answers → session ready)", |t| {
                t.ssh_ready_ms
            }),
            ("first step (session ready → step 0 running)", |t| {
                t.first_step_ms
            }),
        ];
        let show = |d: Option<Duration>| d.map_or("-".to_string(), fmt_ms);
        for (name, part) in parts {
            row(
                &mut out,
                name,
                &with_base("-".into(), cells(&|m| show(m.median_of(part)))),
            );
        }
        row(
            &mut out,
            "total: task received → first step running",
            &with_base(show(self.baseline()), cells(&|m| show(m.median_total()))),
        );
        row(
            &mut out,
            "  fastest–slowest",
            &with_base(
                ms_range(&self.baseline_boots),
                cells(&|m| ms_range(&m.totals())),
            ),
        );
        let cold = self.mode(WarmMode::Cold).and_then(|m| m.median_total());
        let ratio = |d: Option<Duration>| match (d, cold) {
            (Some(d), Some(c)) if !c.is_zero() => {
                format!("{:.2}", d.as_secs_f64() / c.as_secs_f64())
            }
            _ => "-".into(),
        };
        row(
            &mut out,
            "ratio to cold (total)",
            &with_base(ratio(self.baseline()), cells(&|m| ratio(m.median_total()))),
        );
        let _ = writeln!(
            out,
            "  baseline: plain QEMU + ssh polling, QEMU spawned → `ssh … true` succeeds ({} boot(s))",
            self.baseline_boots.len()
        );
        match (self.pool_met(), self.mode(WarmMode::Pool)) {
            (Some(met), Some(pool)) => {
                let _ = writeln!(
                    out,
                    "  target: a warm guest's job < {} from task to first step: {} ({})",
                    fmt_ms(WARM_TARGET),
                    if met { "met" } else { "NOT met" },
                    show(pool.median_total())
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "  target: a warm guest's job < {} from task to first step: no pool figure",
                    fmt_ms(WARM_TARGET)
                );
            }
        }
        for m in &self.modes {
            let bad = m.mismatched();
            if bad > 0 {
                let _ = writeln!(
                    out,
                    "  WARNING: {} of the {} {} job(s) did not start as `{}` (see \"jobs started as\"); its figures are not what the column names",
                    bad,
                    m.jobs.len(),
                    m.mode.as_str(),
                    m.mode.as_str()
                );
            }
            if let Some(e) = &m.error {
                let _ = writeln!(
                    out,
                    "  {}: stopped after {} of {} job(s): {}",
                    m.mode.as_str(),
                    m.jobs.len(),
                    self.runs,
                    summary(e)
                );
            }
        }

        let _ = writeln!(out);
        if self.memory.is_empty() {
            let _ = writeln!(
                out,
                "IDLE WARM GUEST: no figure (no warm guest was measured)"
            );
        } else {
            let _ = writeln!(
                out,
                "IDLE WARM GUEST (VmRSS after {} s idle; median of {} sample(s) [min–max])",
                self.idle_secs,
                self.memory.len()
            );
            let stat = |v: Vec<u64>| {
                let mut s = v.clone();
                s.sort_unstable();
                let n = s.len();
                let med = if n % 2 == 1 {
                    s[n / 2]
                } else {
                    (s[n / 2 - 1] + s[n / 2]) / 2
                };
                format!(
                    "{} [{:.1}–{:.1}]",
                    mib(med),
                    s[0] as f64 / 1024.0,
                    s[n - 1] as f64 / 1024.0
                )
            };
            let line = |out: &mut String, name: &str, v: String| {
                let _ = writeln!(out, "  {name:<48} {v:>30}");
            };
            line(
                &mut out,
                "QEMU",
                stat(self.memory.iter().map(|m| m.qemu_kib).collect()),
            );
            let pasta: Vec<u64> = self.memory.iter().filter_map(|m| m.pasta_kib).collect();
            if pasta.is_empty() {
                line(&mut out, "pasta", "none (no isolated network)".into());
            } else {
                line(&mut out, "pasta", stat(pasta));
            }
            line(
                &mut out,
                "per idle warm guest",
                stat(self.memory.iter().map(|m| m.total_kib()).collect()),
            );
            let _ = writeln!(
                out,
                "  (the guest is given {} MiB of RAM; an idle guest costs what it has touched)",
                self.memory_mib
            );
        }

        let _ = writeln!(out);
        match &self.template {
            Some(t) => {
                let _ = writeln!(out, "SNAPSHOT TEMPLATE (restored part)");
                let _ = writeln!(
                    out,
                    "  {:<48} {:>30}",
                    if t.build_logged {
                        "build (boot, settle, save; the daemon's log)"
                    } else {
                        "daemon started → template seen saved"
                    },
                    fmt_duration(t.build)
                );
                let size =
                    |b: Option<u64>| b.map_or("? (not found)".to_string(), |b| mib(b / 1024));
                let _ = writeln!(
                    out,
                    "  {:<48} {:>30}",
                    "saved running state (file size)",
                    size(t.files.map(|f| f.state_bytes))
                );
                let _ = writeln!(
                    out,
                    "  {:<48} {:>30}",
                    "frozen overlay (file size)",
                    size(t.files.map(|f| f.overlay_bytes))
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "SNAPSHOT TEMPLATE: no figure (no template was seen saved)"
                );
            }
        }
        if self.violations.is_empty() {
            let _ = writeln!(out, "fake forge: no protocol violations");
        } else {
            let _ = writeln!(
                out,
                "fake forge: {} protocol violation(s):",
                self.violations.len()
            );
            for v in &self.violations {
                let _ = writeln!(out, "  {v}");
            }
        }
        out
    }

    /// The figures as JSON (`--json`).
    pub fn to_json(&self) -> Value {
        let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0;
        let opt_ms = |d: Option<Duration>| d.map(ms);
        let cold = self.mode(WarmMode::Cold).and_then(|m| m.median_total());
        let ratio = |d: Option<Duration>| match (d, cold) {
            (Some(d), Some(c)) if !c.is_zero() => Some(d.as_secs_f64() / c.as_secs_f64()),
            _ => None,
        };
        let modes: serde_json::Map<String, Value> = self
            .modes
            .iter()
            .map(|m| {
                let totals = m.totals();
                (
                    m.mode.as_str().to_owned(),
                    json!({
                        "jobs": m.jobs.iter().map(|j| json!({
                            "start": j.start,
                            "provision_ms": j.timings.provision_ms,
                            "boot_ms": j.timings.boot_ms,
                            "ssh_ready_ms": j.timings.ssh_ready_ms,
                            "first_step_ms": j.timings.first_step_ms,
                            "total_ms": j.timings.to_first_step_ms(),
                        })).collect::<Vec<_>>(),
                        "median_total_ms": opt_ms(m.median_total()),
                        "min_total_ms": opt_ms(totals.iter().min().copied()),
                        "max_total_ms": opt_ms(totals.iter().max().copied()),
                        "ratio_to_cold": ratio(m.median_total()),
                        "mismatched_starts": m.mismatched(),
                        "error": m.error,
                    }),
                )
            })
            .collect();
        json!({
            "image": self.image,
            "accel": self.accel,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "runs": self.runs,
            "capacity": CAPACITY,
            "baseline_boot_to_ssh_ms": opt_ms(self.baseline()),
            "baseline_boots_ms": self.baseline_boots.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "baseline_ratio_to_cold": ratio(self.baseline()),
            "modes": modes,
            "warm_target_ms": ms(WARM_TARGET),
            "warm_target_met": self.pool_met(),
            "idle_guest": {
                "idle_secs": self.idle_secs,
                "samples": self.memory.iter().map(|m| json!({
                    "qemu_rss_kib": m.qemu_kib,
                    "pasta_rss_kib": m.pasta_kib,
                    "total_kib": m.total_kib(),
                })).collect::<Vec<_>>(),
            },
            "template": self.template.map(|t| json!({
                "build_ms": ms(t.build),
                "build_from_daemon_log": t.build_logged,
                "state_bytes": t.files.map(|f| f.state_bytes),
                "overlay_bytes": t.files.map(|f| f.overlay_bytes),
            })),
            "violations": self.violations,
            "load_average_1min": [self.load.0, self.load.1],
        })
    }
}

/// `solstice bench warm`.
pub async fn warm_main(args: WarmBenchArgs) -> Result<(), BenchError> {
    let config = load_bench_config(&args.common)?;
    let image = bench_image(&config, &args.common)?;
    let exe = daemon_exe()?;
    let accel = resolve_accel(&config).await?.current();
    let label = first_label(image);
    let mut modes = args.only.clone();
    if modes.is_empty() {
        modes = vec![WarmMode::Cold, WarmMode::Pool, WarmMode::Restored];
    }
    modes.sort();
    modes.dedup();
    progress(format_args!(
        "image {} ({} vCPU, {} MiB), accelerator {}, {} job(s) each: {}",
        image.name,
        image.vcpus,
        image.memory_mib,
        accel.as_str(),
        args.runs,
        modes
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let load_before = load_average();
    // Under the system's temporary directory: QMP socket paths stay short.
    let work = TempDir::new(&std::env::temp_dir(), "swbench")?;

    let mut boots = Vec::new();
    for i in 0..args.runs {
        let d = baseline_boot(&config, image, accel)
            .await
            .map_err(|e| BenchError::Infra(format!("baseline boot failed: {e}")))?;
        progress(format_args!(
            "baseline boot {}/{}: boot to SSH {}",
            i + 1,
            args.runs,
            fmt_duration(d)
        ));
        boots.push(d);
    }

    let setup = Setup {
        config: &config,
        image,
        accel: accel.as_str(),
        exe: &exe,
        work: &work.0,
        label: &label,
        actions_url: None,
    };
    let mut found = Found::default();
    let mut figures = Vec::new();
    for mode in modes {
        let f = run_mode(&setup, mode, &args, &mut found).await;
        if let Some(e) = &f.error {
            progress(format_args!("{}: {e}", mode.as_str()));
        }
        figures.push(f);
    }
    let report = WarmReport {
        image: image.name.clone(),
        accel: accel.as_str().into(),
        vcpus: image.vcpus,
        memory_mib: image.memory_mib,
        runs: args.runs,
        idle_secs: args.idle_secs,
        baseline_boots: boots,
        modes: figures,
        memory: found.memory,
        template: found.template,
        violations: found.violations,
        load: (load_before, load_average()),
    };
    print!("\n{}", report.render());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
        std::fs::write(path, text + "\n")
            .map_err(|e| BenchError::Infra(format!("cannot write {}: {e}", path.display())))?;
    }
    let failed: Vec<&str> = report
        .modes
        .iter()
        .filter(|m| m.error.is_some())
        .map(|m| m.mode.as_str())
        .collect();
    if !failed.is_empty() {
        return Err(BenchError::Infra(format!(
            "the {} part(s) did not finish (see above)",
            failed.join(", ")
        )));
    }
    Ok(())
}

fn load_average() -> Option<f64> {
    loadavg_1min(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

/// What the parts find besides the job timings.
#[derive(Default)]
struct Found {
    memory: Vec<GuestMemory>,
    template: Option<TemplateFigures>,
    violations: Vec<String>,
}

/// The image keys of a part's daemon.
fn image_keys(mode: WarmMode) -> Vec<(String, toml::Value)> {
    let (warm, snapshot) = match mode {
        WarmMode::Cold => (0, false),
        WarmMode::Pool => (1, false),
        WarmMode::Restored => (0, true),
    };
    vec![
        ("warm".into(), toml::Value::Integer(warm)),
        ("snapshot".into(), toml::Value::Boolean(snapshot)),
    ]
}

/// One start kind: a daemon, its jobs, its figures.
async fn run_mode(
    setup: &Setup<'_>,
    mode: WarmMode,
    args: &WarmBenchArgs,
    found: &mut Found,
) -> ModeFigures {
    let name = mode.as_str();
    let opts = StartOptions {
        keep_log_content: true,
        image_keys: image_keys(mode),
    };
    let started = Instant::now();
    progress(format_args!(
        "{name}: starting a daemon with {}",
        opts.image_keys
            .iter()
            .map(|(k, v)| format!("images.{}.{k} = {v}", setup.image.name))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let (forge, mut daemon) = match setup.start_with(name, CAPACITY, &opts).await {
        Ok(x) => x,
        Err(e) => {
            return ModeFigures {
                mode,
                jobs: Vec::new(),
                error: Some(e),
            };
        }
    };
    let mut done: Vec<(i64, &'static str)> = Vec::new();
    let mut error = drive(
        setup,
        &forge,
        &mut daemon,
        mode,
        args,
        started,
        found,
        &mut done,
    )
    .await
    .err();
    found.violations.extend(forge.violations());
    if let Err(e) = daemon.stop().await {
        error.get_or_insert(e);
    }
    let ids: Vec<i64> = done.iter().map(|(id, _)| *id).collect();
    let jobs = match db_timings(&daemon.state_dir, &ids) {
        Ok(t) => t
            .into_iter()
            .zip(&done)
            .map(|(timings, (_, start))| JobFigures { timings, start })
            .collect(),
        Err(e) => {
            error.get_or_insert(e);
            Vec::new()
        }
    };
    for (i, j) in jobs.iter().enumerate() {
        progress(format_args!(
            "{name} job {}: {} start, task received → first step {} ms",
            i + 1,
            j.start,
            j.timings
                .to_first_step_ms()
                .map_or("?".to_string(), |m| m.to_string())
        ));
    }
    ModeFigures { mode, jobs, error }
}

/// The jobs of one part, one after another; `done` gets each finished
/// job's task id and start kind.
#[allow(clippy::too_many_arguments)]
async fn drive(
    setup: &Setup<'_>,
    forge: &FakeForge,
    daemon: &mut Daemon,
    mode: WarmMode,
    args: &WarmBenchArgs,
    started: Instant,
    found: &mut Found,
    done: &mut Vec<(i64, &'static str)>,
) -> Result<(), String> {
    let name = mode.as_str();
    let timeout = Duration::from_secs(args.ready_timeout_secs);
    let payload = true_payload(setup.label);
    let image = setup.image.name.as_str();
    for i in 0..args.runs {
        let what = format!("{name} job {}/{}", i + 1, args.runs);
        match mode {
            WarmMode::Cold => {}
            WarmMode::Pool => {
                let ready = wait_pool_ready(daemon, image, timeout, &what).await?;
                progress(format_args!(
                    "{what}: {} warm guest(s) ready; idle for {} s",
                    ready.len(),
                    args.idle_secs
                ));
                for _ in 0..args.idle_secs {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    daemon.check_alive()?;
                }
                // The guests still ready after the idle time.
                for row in ready_rows(&daemon.state_dir, image).unwrap_or_default() {
                    match guest_memory(&row) {
                        Some(m) => {
                            progress(format_args!(
                                "{what}: idle warm guest {}: QEMU VmRSS {}{}",
                                row.id,
                                mib(m.qemu_kib),
                                m.pasta_kib
                                    .map(|k| format!(", pasta VmRSS {}", mib(k)))
                                    .unwrap_or_default()
                            ));
                            found.memory.push(m);
                        }
                        None => progress(format_args!(
                            "{what}: cannot read the memory of warm guest {} (no QEMU process found)",
                            row.id
                        )),
                    }
                }
            }
            WarmMode::Restored => {
                if found.template.is_none() {
                    let t = wait_template(daemon, timeout, started).await?;
                    progress(format_args!(
                        "restored: template ready, built in {}{}",
                        fmt_duration(t.build),
                        t.files
                            .map(|f| format!(", state file {}", mib(f.state_bytes / 1024)))
                            .unwrap_or_default()
                    ));
                    found.template = Some(t);
                }
            }
        }
        let id = forge.enqueue(FakeJob::new(payload.clone(), &[setup.label]));
        let job_timeout = setup.image.boot_timeout + Duration::from_secs(180);
        wait_all_final(forge, daemon, &[id], job_timeout, &what).await?;
        let task = forge
            .task_for_job(id)
            .filter(is_final)
            .ok_or_else(|| format!("{what}: the forge has no final task"))?;
        if task.client_result != TaskResult::Success {
            return Err(format!(
                "{what}: the `true` job ended {:?}; the daemon's log:\n{}",
                task.client_result,
                daemon.log_tail()
            ));
        }
        let start = start_kind(&task.log);
        progress(format_args!("{what}: succeeded ({start} start)"));
        done.push((task.id, start));
        // Let the job's teardown finish before the next one.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}

/// How a job's guest started, from the lines `job::run_in_vm` logs when
/// the guest is ready: `pool`, `restored`, `cold`, else `unknown`.
pub fn start_kind(log: &[String]) -> &'static str {
    let has = |needle: &str| log.iter().any(|l| l.contains(needle));
    if has("guest restored from a saved guest") {
        "restored"
    } else if has("guest from the warm pool") {
        "pool"
    } else if has("SSH ready after") {
        "cold"
    } else {
        "unknown"
    }
}

/// The warm guests of `image` the daemon's database lists (templates aside).
fn pool_rows(state_dir: &Path, image: &str) -> Result<Vec<WarmRow>, String> {
    let db = crate::store::db_path(state_dir);
    let store = Store::open_read_only(&db).map_err(|e| format!("open {}: {e}", db.display()))?;
    let rows = store
        .warm_rows()
        .map_err(|e| format!("read the warm guests from {}: {e}", db.display()))?;
    Ok(rows
        .into_iter()
        .filter(|r| r.image == image && r.kind != WarmKind::Template)
        .collect())
}

/// The ready ones of [`pool_rows`].
fn ready_rows(state_dir: &Path, image: &str) -> Result<Vec<WarmRow>, String> {
    Ok(pool_rows(state_dir, image)?
        .into_iter()
        .filter(|r| r.ready)
        .collect())
}

/// Waits until the daemon's database lists a ready warm guest of `image`.
async fn wait_pool_ready(
    daemon: &mut Daemon,
    image: &str,
    timeout: Duration,
    what: &str,
) -> Result<Vec<WarmRow>, String> {
    let start = Instant::now();
    let mut last_note = Instant::now();
    let mut listed = 0;
    loop {
        daemon.check_alive()?;
        let last_err = match pool_rows(&daemon.state_dir, image) {
            Ok(rows) => {
                listed = rows.len();
                let ready: Vec<WarmRow> = rows.into_iter().filter(|r| r.ready).collect();
                if !ready.is_empty() {
                    progress(format_args!(
                        "{what}: warm guest ready after waiting {:.1} s",
                        start.elapsed().as_secs_f64()
                    ));
                    return Ok(ready);
                }
                None
            }
            // The database may not exist yet right after the start.
            Err(e) => Some(e),
        };
        if start.elapsed() >= timeout {
            return Err(pool_timeout_message(
                image,
                timeout,
                listed,
                last_err.as_deref(),
                &daemon.log_tail(),
            ));
        }
        if last_note.elapsed() >= Duration::from_secs(10) {
            last_note = Instant::now();
            progress(format_args!(
                "{what}: waiting for a ready warm guest ({listed} starting, {:.0} s)",
                start.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn pool_timeout_message(
    image: &str,
    timeout: Duration,
    listed: usize,
    last_err: Option<&str>,
    log: &str,
) -> String {
    let db = match last_err {
        Some(e) => format!("the daemon's state database could not be read: {e}"),
        None => {
            format!("the daemon's state database lists {listed} warm guest(s) of it, none ready")
        }
    };
    format!(
        "no warm guest of image {image} was ready within {} s ({db}); a build without warm pools never starts one.\nThe daemon's log:\n{log}",
        timeout.as_secs()
    )
}

/// The memory of the idle warm guest `row`: its QEMU (the recorded pid,
/// else the QEMU process naming its directory) and its pasta (the pid file
/// in its directory).
fn guest_memory(row: &WarmRow) -> Option<GuestMemory> {
    let qemu = row.pid.or_else(|| qemu_naming(&row.dir))?;
    let qemu_kib = rss_kib(qemu)?;
    let pasta_kib = std::fs::read_to_string(row.dir.join("pasta.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .and_then(rss_kib);
    Some(GuestMemory {
        qemu_kib,
        pasta_kib,
    })
}

fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmRSS",
    )
}

/// The QEMU process whose arguments name `dir`.
fn qemu_naming(dir: &Path) -> Option<u32> {
    let needle = dir.to_string_lossy().into_owned();
    crate::vm::process::processes()
        .into_iter()
        .find(|p| {
            let args = p.args_lossy();
            args.first().is_some_and(|a| a.contains("qemu-system"))
                && args.iter().any(|a| a.contains(&needle))
        })
        .map(|p| p.pid)
}

/// A saved template in `warm_dir`: a `t-…` directory whose overlay
/// (`*.qcow2`) is frozen read-only beside a non-empty state file (the
/// largest other file). `None` while there is none.
pub fn saved_template(warm_dir: &Path) -> Option<TemplateFiles> {
    use std::os::unix::fs::PermissionsExt;
    let entries = std::fs::read_dir(warm_dir).ok()?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("t-") || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(e.path()) else {
            continue;
        };
        let mut overlay: Option<(u64, bool)> = None;
        let mut state = 0u64;
        for f in files.flatten() {
            let Ok(meta) = f.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let file = f.file_name().to_string_lossy().into_owned();
            if file.ends_with(".qcow2") {
                let frozen = meta.permissions().mode() & 0o222 == 0;
                overlay = Some((meta.len(), frozen));
            } else if !is_side_file(&file) {
                state = state.max(meta.len());
            }
        }
        if let Some((overlay_bytes, true)) = overlay
            && state > 0
        {
            return Some(TemplateFiles {
                state_bytes: state,
                overlay_bytes,
            });
        }
    }
    None
}

/// Files of a guest's directory that are not a saved state: its console
/// log, pid files, the seed.
fn is_side_file(name: &str) -> bool {
    name.starts_with("seed")
        || [".log", ".pid", ".iso", ".sock", ".stderr", ".img", ".cpio"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// What the daemon's log says of its template: built (in `secs`), or
/// failed (the line).
#[derive(Debug, PartialEq)]
pub enum TemplateLog {
    Ready(Option<Duration>),
    Failed(String),
}

/// The warm pools log "snapshot template ready" (with `secs=`) once a
/// template is kept, and "the snapshot template could not be built" when a
/// build failed (they retry later; jobs boot cold meanwhile).
pub fn template_log(log: &str) -> Option<TemplateLog> {
    for line in log.lines() {
        if line.contains("snapshot template ready") {
            let secs = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("secs="))
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(Duration::from_secs_f64);
            return Some(TemplateLog::Ready(secs));
        }
        if line.contains("the snapshot template could not be built") {
            return Some(TemplateLog::Failed(line.trim().to_owned()));
        }
    }
    None
}

/// Waits until the daemon's template is ready: its log says so (the warm
/// pools' "snapshot template ready"), or, failing that, its directory holds
/// a frozen overlay beside a state file whose size held still over two polls
/// (a file still being written is not taken for a saved one). A build the
/// daemon reports failed stops the wait at once.
async fn wait_template(
    daemon: &mut Daemon,
    timeout: Duration,
    daemon_started: Instant,
) -> Result<TemplateFigures, String> {
    // `warm::warm_dir`: the daemon keeps its templates there.
    let warm_dir = daemon.state_dir.join("warm");
    let start = Instant::now();
    let mut last_note = Instant::now();
    let mut first_seen: Option<(Duration, u64)> = None;
    loop {
        daemon.check_alive()?;
        let files = saved_template(&warm_dir);
        match template_log(&daemon.log_text()) {
            Some(TemplateLog::Ready(secs)) => {
                return Ok(TemplateFigures {
                    build: secs.unwrap_or_else(|| daemon_started.elapsed()),
                    build_logged: secs.is_some(),
                    files,
                });
            }
            Some(TemplateLog::Failed(line)) => {
                return Err(format!(
                    "the daemon could not build the snapshot template: {line}\nThe daemon's log:\n{}",
                    daemon.log_tail()
                ));
            }
            None => {}
        }
        match (files, first_seen) {
            (Some(f), Some((at, bytes))) if f.state_bytes == bytes => {
                return Ok(TemplateFigures {
                    build: at,
                    build_logged: false,
                    files: Some(f),
                });
            }
            (Some(f), _) => first_seen = Some((daemon_started.elapsed(), f.state_bytes)),
            (None, _) => first_seen = None,
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "no snapshot template was ready within {} s (the daemon's log does not say \"snapshot template ready\", and there is no directory {}/t-… with a read-only overlay and a state file); a build without snapshot templates never makes one.\nThe daemon's log:\n{}",
                timeout.as_secs(),
                warm_dir.display(),
                daemon.log_tail()
            ));
        }
        if last_note.elapsed() >= Duration::from_secs(10) {
            last_note = Instant::now();
            progress(format_args!(
                "restored: waiting for the template ({:.0} s)",
                start.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(provision: u64, boot: u64, ssh: u64, first: u64) -> JobTimings {
        JobTimings {
            provision_ms: Some(provision),
            boot_ms: Some(boot),
            ssh_ready_ms: Some(ssh),
            first_step_ms: Some(first),
        }
    }

    fn jobs(start: &'static str, v: &[JobTimings]) -> Vec<JobFigures> {
        v.iter()
            .map(|timings| JobFigures {
                timings: *timings,
                start,
            })
            .collect()
    }

    fn report() -> WarmReport {
        WarmReport {
            image: "tiny".into(),
            accel: "tcg".into(),
            vcpus: 1,
            memory_mib: 256,
            runs: 3,
            idle_secs: 5,
            baseline_boots: vec![
                Duration::from_millis(3900),
                Duration::from_millis(3800),
                Duration::from_millis(4000),
            ],
            modes: vec![
                ModeFigures {
                    mode: WarmMode::Cold,
                    // Totals 4000, 4200, 4100.
                    jobs: jobs(
                        "cold",
                        &[
                            t(100, 3000, 800, 100),
                            t(100, 3200, 800, 100),
                            t(100, 3100, 800, 100),
                        ],
                    ),
                    error: None,
                },
                ModeFigures {
                    mode: WarmMode::Pool,
                    // Totals 300, 410, 200.
                    jobs: jobs(
                        "pool",
                        &[t(50, 150, 0, 100), t(60, 250, 0, 100), t(50, 50, 0, 100)],
                    ),
                    error: None,
                },
                ModeFigures {
                    mode: WarmMode::Restored,
                    // Totals 800, 1000, 900 (one job fell back cold).
                    jobs: vec![
                        JobFigures {
                            timings: t(50, 650, 0, 100),
                            start: "restored",
                        },
                        JobFigures {
                            timings: t(50, 850, 0, 100),
                            start: "cold",
                        },
                        JobFigures {
                            timings: t(50, 750, 0, 100),
                            start: "restored",
                        },
                    ],
                    error: None,
                },
            ],
            memory: vec![
                GuestMemory {
                    qemu_kib: 180 * 1024,
                    pasta_kib: Some(2048),
                },
                GuestMemory {
                    qemu_kib: 170 * 1024,
                    pasta_kib: Some(2048),
                },
                GuestMemory {
                    qemu_kib: 190 * 1024,
                    pasta_kib: Some(2048),
                },
            ],
            template: Some(TemplateFigures {
                build: Duration::from_millis(12_500),
                build_logged: true,
                files: Some(TemplateFiles {
                    state_bytes: 60 * 1024 * 1024,
                    overlay_bytes: 3 * 1024 * 1024,
                }),
            }),
            violations: vec![],
            load: (Some(0.5), None),
        }
    }

    #[test]
    fn table_puts_the_start_kinds_side_by_side_with_the_baseline() {
        let text = report().render();
        let line = |start: &str| {
            text.lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no line {start:?} in:\n{text}"))
        };
        assert!(
            text.contains("image tiny (1 vCPU, 256 MiB), accelerator tcg, 3 job(s)"),
            "{text}"
        );
        assert!(
            line("baseline cold").contains("baseline cold pool restored"),
            "{text}"
        );
        assert_eq!(
            line("total: task received"),
            "total: task received → first step running 3900 ms 4100 ms 300 ms 900 ms"
        );
        assert_eq!(
            line("fastest–slowest"),
            "fastest–slowest 3800–4000 ms 4000–4200 ms 200–410 ms 800–1000 ms"
        );
        assert_eq!(
            line("ratio to cold"),
            "ratio to cold (total) 0.95 1.00 0.07 0.22"
        );
        assert_eq!(
            line("jobs started as"),
            "jobs started as (each job's log) - 3 cold 3 pool 2 restored, 1 cold"
        );
        assert_eq!(
            line("provision"),
            "provision (receipt → QEMU spawned / take starts) - 100 ms 50 ms 50 ms"
        );
        assert!(text.contains("task to first step: met (300 ms)"), "{text}");
        assert!(
            text.contains("WARNING: 1 of the 3 restored job(s) did not start as `restored`"),
            "{text}"
        );
        assert!(line("QEMU").contains("180.0 MiB [170.0–190.0]"), "{text}");
        assert!(line("pasta").contains("2.0 MiB [2.0–2.0]"), "{text}");
        assert!(line("per idle warm guest").contains("182.0 MiB"), "{text}");
        assert!(line("build (boot, settle, save").contains("12.5"), "{text}");
        assert!(line("saved running state").contains("60.0 MiB"), "{text}");
        assert!(
            text.contains("fake forge: no protocol violations"),
            "{text}"
        );

        let j = report().to_json();
        assert_eq!(j["modes"]["pool"]["median_total_ms"], 300.0);
        assert_eq!(j["modes"]["pool"]["max_total_ms"], 410.0);
        assert_eq!(j["modes"]["restored"]["mismatched_starts"], 1);
        assert_eq!(j["warm_target_met"], true);
        assert_eq!(j["baseline_boot_to_ssh_ms"], 3900.0);
        assert_eq!(
            j["idle_guest"]["samples"][0]["total_kib"],
            180 * 1024 + 2048
        );
        assert_eq!(j["template"]["state_bytes"], 60 * 1024 * 1024);
    }

    #[test]
    fn missing_parts_and_errors_are_said_not_hidden() {
        let mut r = report();
        r.modes.retain(|m| m.mode == WarmMode::Cold);
        r.modes.push(ModeFigures {
            mode: WarmMode::Pool,
            jobs: vec![],
            error: Some("no warm guest of image tiny was ready within 30 s (…)\nlog".into()),
        });
        r.memory.clear();
        r.template = None;
        let text = r.render();
        assert!(text.contains("not run"), "{text}");
        assert!(
            text.contains("pool: stopped after 0 of 3 job(s): no warm guest of image tiny was ready within 30 s"),
            "{text}"
        );
        assert!(!text.contains("\nlog"), "{text}");
        assert!(text.contains("no pool figure"), "{text}");
        assert!(text.contains("IDLE WARM GUEST: no figure"), "{text}");
        assert!(text.contains("SNAPSHOT TEMPLATE: no figure"), "{text}");
        assert_eq!(r.pool_met(), None);
        assert!(r.to_json()["modes"]["pool"]["error"].is_string());
    }

    #[test]
    fn a_pool_part_that_booted_cold_does_not_meet_the_target() {
        let mut r = report();
        for m in &mut r.modes {
            if m.mode == WarmMode::Pool {
                m.jobs[0].start = "cold";
            }
        }
        assert_eq!(r.pool_met(), Some(false));
    }

    #[test]
    fn the_template_build_comes_from_the_daemon_log() {
        let ready = "2026-12-06T00:01:02.5Z  INFO solstice::warm::pool: snapshot template ready image=tiny secs=12.25\n";
        assert_eq!(
            template_log(&format!("x\n{ready}")),
            Some(TemplateLog::Ready(Some(Duration::from_millis(12_250))))
        );
        assert_eq!(
            template_log("INFO snapshot template ready image=tiny"),
            Some(TemplateLog::Ready(None))
        );
        let failed = "WARN solstice::warm::pool: the snapshot template could not be built (not built yet); jobs boot cold meanwhile image=tiny retry_in_secs=5";
        assert_eq!(
            template_log(failed),
            Some(TemplateLog::Failed(failed.to_owned()))
        );
        assert_eq!(template_log("INFO building the snapshot template"), None);
    }

    #[test]
    fn start_kind_comes_from_the_ready_line() {
        let log = |l: &str| vec!["Provisioning the VM: image tiny".to_string(), l.to_string()];
        assert_eq!(start_kind(&log("VM ready: SSH ready after 3.1s")), "cold");
        assert_eq!(
            start_kind(&log("VM ready: guest from the warm pool; ready after 0.0s")),
            "pool"
        );
        assert_eq!(
            start_kind(&log(
                "VM ready: guest restored from a saved guest; ready after 0.6s"
            )),
            "restored"
        );
        assert_eq!(start_kind(&[]), "unknown");
    }

    #[test]
    fn a_template_is_saved_once_its_overlay_is_frozen() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let warm = dir.path().join("warm");
        assert_eq!(saved_template(&warm), None);
        // A pool guest's directory is no template.
        std::fs::create_dir_all(warm.join("w-tiny-0123abcd")).unwrap();
        std::fs::write(warm.join("w-tiny-0123abcd/overlay.qcow2"), b"x").unwrap();
        let t = warm.join("t-tiny-89abcdef");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("overlay.qcow2"), vec![0u8; 300]).unwrap();
        std::fs::write(t.join("seed.iso"), vec![0u8; 10]).unwrap();
        std::fs::write(t.join("console.log"), vec![0u8; 5000]).unwrap();
        assert_eq!(saved_template(&warm), None, "no state file yet");
        std::fs::set_permissions(
            t.join("overlay.qcow2"),
            std::fs::Permissions::from_mode(0o400),
        )
        .unwrap();
        assert_eq!(saved_template(&warm), None, "the console log is no state");
        std::fs::set_permissions(
            t.join("overlay.qcow2"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(t.join("state"), vec![0u8; 1000]).unwrap();
        assert_eq!(saved_template(&warm), None, "overlay still writable");
        std::fs::set_permissions(
            t.join("overlay.qcow2"),
            std::fs::Permissions::from_mode(0o400),
        )
        .unwrap();
        let got = saved_template(&warm).unwrap();
        assert_eq!(got.state_bytes, 1000);
        assert_eq!(got.overlay_bytes, 300);
    }

    #[test]
    fn the_pool_timeout_says_what_was_seen() {
        let m = pool_timeout_message("tiny", Duration::from_secs(30), 0, None, "LOG");
        assert!(
            m.starts_with("no warm guest of image tiny was ready within 30 s (the daemon's state database lists 0 warm guest(s) of it, none ready)"),
            "{m}"
        );
        assert!(
            m.ends_with("never starts one.\nThe daemon's log:\nLOG"),
            "{m}"
        );
        assert_eq!(
            summary("the daemon exited with 1; its log:\nx"),
            "the daemon exited with 1"
        );
        let m = pool_timeout_message(
            "tiny",
            Duration::from_secs(30),
            0,
            Some("open x: missing"),
            "",
        );
        assert!(m.contains("could not be read: open x: missing"), "{m}");
    }

    #[test]
    fn each_part_sets_the_image_keys() {
        let keys = |m| {
            image_keys(m)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(keys(WarmMode::Cold), "warm=0 snapshot=false");
        assert_eq!(keys(WarmMode::Pool), "warm=1 snapshot=false");
        assert_eq!(keys(WarmMode::Restored), "warm=0 snapshot=true");
    }
}

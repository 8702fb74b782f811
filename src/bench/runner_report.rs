//! The figures of `solstice bench runner`, their targets and the printed
//! table (pure: no I/O), plus the parsing of `/proc/<pid>/status` and
//! `/proc/<pid>/stat`.

use std::time::Duration;

use serde_json::{Value, json};

use super::fmt_ms;

/// Idle target: resident memory below this (KiB).
pub const IDLE_RSS_TARGET_KIB: u64 = 30 * 1024;
/// Idle target: CPU below this share of one core (percent).
pub const IDLE_CPU_TARGET_PERCENT: f64 = 1.0;
/// Streaming target: at least this share of the baseline's rate.
pub const STREAM_RATIO_TARGET: f64 = 0.5;
/// Streaming target: the daemon's peak resident memory below this (KiB).
pub const STREAM_HWM_TARGET_KIB: u64 = 64 * 1024;
/// Linux reports `/proc/<pid>/stat` times in USER_HZ, which is 100 on every
/// architecture Solstice runs on (x86_64, aarch64).
pub const USER_HZ: f64 = 100.0;

/// One throughput run: `jobs` trivial jobs queued at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// `max_concurrent_jobs` of the daemon.
    pub capacity: u32,
    pub jobs: u32,
    /// First enqueue → the forge has every job final.
    pub elapsed: Duration,
}

impl Throughput {
    pub fn jobs_per_min(&self) -> f64 {
        f64::from(self.jobs) * 60.0 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// Medians over the capacity-1 run's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    /// From the daemon's database: receipt → QEMU spawned.
    pub provision: Duration,
    /// QEMU spawned → SSH port answers.
    pub boot: Duration,
    /// Port answers → authenticated, ready session.
    pub ssh_ready: Duration,
    /// Session ready → first step running.
    pub first_step: Duration,
    /// Receipt → first step running (median of the per-job sums).
    pub total: Duration,
    /// The forge's view: the job could be taken (enqueued, and at capacity 1
    /// the previous job final) → step 0's `started_at`.
    pub forge_view: Duration,
}

/// The idle daemon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Idle {
    pub secs: f64,
    /// Largest VmRSS sampled while idle.
    pub rss_kib: u64,
    /// VmHWM at the end (peak since the daemon started, jobs included).
    pub hwm_kib: u64,
    /// utime + stime over `secs`, as % of one core.
    pub cpu_percent: f64,
}

impl Idle {
    pub fn rss_met(&self) -> bool {
        self.rss_kib < IDLE_RSS_TARGET_KIB
    }
    pub fn cpu_met(&self) -> bool {
        self.cpu_percent < IDLE_CPU_TARGET_PERCENT
    }
}

/// The log-streaming comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stream {
    /// Bytes of output (lines with their newlines), the same for both.
    pub bytes: u64,
    /// ssh … cat: first byte → end.
    pub baseline: Duration,
    /// Step start → the forge acknowledged the step's last row.
    pub solstice: Duration,
    /// The daemon's VmHWM after the job (reset before it when possible).
    pub hwm_kib: u64,
    /// VmHWM was reset before the job (else it is the peak since start).
    pub hwm_reset: bool,
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(f64::EPSILON)
}

impl Stream {
    pub fn baseline_mb_s(&self) -> f64 {
        mb_per_s(self.bytes, self.baseline)
    }
    pub fn solstice_mb_s(&self) -> f64 {
        mb_per_s(self.bytes, self.solstice)
    }
    pub fn ratio(&self) -> f64 {
        self.solstice_mb_s() / self.baseline_mb_s().max(f64::EPSILON)
    }
    pub fn ratio_met(&self) -> bool {
        self.ratio() >= STREAM_RATIO_TARGET
    }
    pub fn hwm_met(&self) -> bool {
        self.hwm_kib < STREAM_HWM_TARGET_KIB
    }
}

/// Everything `solstice bench runner` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerReport {
    pub image: String,
    pub accel: String,
    /// Every baseline boot to SSH.
    pub baseline_boots: Vec<Duration>,
    /// Capacity 1, then capacity 2.
    pub throughput: Vec<Throughput>,
    pub latency: Latency,
    pub idle: Idle,
    pub stream: Stream,
    /// Protocol violations the fake forge saw (a correct daemon causes none).
    pub violations: Vec<String>,
    /// The host's 1-minute load average before and after the run (other
    /// work on the host skews every figure).
    pub load: (Option<f64>, Option<f64>),
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl RunnerReport {
    /// Median plain boot to SSH.
    pub fn baseline_boot(&self) -> Duration {
        super::median(&self.baseline_boots)
    }

    /// Ideal jobs per minute at capacity 1: one raw boot to SSH per job.
    pub fn ideal_per_min(&self) -> f64 {
        60.0 / self.baseline_boot().as_secs_f64().max(f64::EPSILON)
    }

    /// The table printed at the end.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut row = |name: &str, figure: String, note: String| {
            let line = if figure.is_empty() {
                // A section heading.
                name.to_string()
            } else {
                format!("  {name:<56} {figure:>16}  {note}")
            };
            out.push_str(line.trim_end());
            out.push('\n');
        };
        let base = self.baseline_boot();
        let ideal = self.ideal_per_min();
        let mut text = String::new();
        text.push_str(&format!(
            "solstice bench runner: image {}, accelerator {}\n",
            self.image, self.accel
        ));
        let load = |l: Option<f64>| l.map_or_else(|| "unknown".to_string(), |l| format!("{l:.2}"));
        text.push_str(&format!(
            "host load average (1 min): {} before, {} after\n",
            load(self.load.0),
            load(self.load.1)
        ));
        text.push_str(&format!(
            "baseline: plain QEMU + ssh polling, boot to SSH (median of {}): {}\n\n",
            self.baseline_boots.len(),
            fmt_ms(base)
        ));
        row(
            "THROUGHPUT (`true` jobs, enqueue → all final on the forge)",
            String::new(),
            String::new(),
        );
        for t in &self.throughput {
            let cap = f64::from(t.capacity);
            row(
                &format!(
                    "capacity {}: {} job(s) in {:.1} s",
                    t.capacity,
                    t.jobs,
                    t.elapsed.as_secs_f64()
                ),
                format!("{:.2} jobs/min", t.jobs_per_min()),
                format!(
                    "= {:.0}% of ideal {:.2}/min ({}60 s / raw boot to SSH)",
                    t.jobs_per_min() / (ideal * cap) * 100.0,
                    ideal * cap,
                    if t.capacity == 1 {
                        String::new()
                    } else {
                        format!("{} × ", t.capacity)
                    }
                ),
            );
        }
        let l = &self.latency;
        row(
            "LATENCY (task received → first step; medians, capacity 1)",
            String::new(),
            String::new(),
        );
        row(
            "provision (receipt → QEMU spawned)",
            fmt_ms(l.provision),
            String::new(),
        );
        row(
            "boot (QEMU spawned → guest SSH port answers)",
            fmt_ms(l.boot),
            String::new(),
        );
        row(
            "SSH ready (port answers → session ready)",
            fmt_ms(l.ssh_ready),
            String::new(),
        );
        row(
            "first step (session ready → step 0 running)",
            fmt_ms(l.first_step),
            String::new(),
        );
        row(
            "total: task received → first step running",
            fmt_ms(l.total),
            format!(
                "= {:.0}% of raw boot to SSH ({}, {:+.0} ms)",
                l.total.as_secs_f64() / base.as_secs_f64().max(f64::EPSILON) * 100.0,
                fmt_ms(base),
                (l.total.as_secs_f64() - base.as_secs_f64()) * 1000.0
            ),
        );
        row(
            "forge view: job available → step 0 started_at",
            fmt_ms(l.forge_view),
            format!(
                "({:+.0} ms vs raw boot to SSH)",
                (l.forge_view.as_secs_f64() - base.as_secs_f64()) * 1000.0
            ),
        );
        let i = &self.idle;
        row(
            &format!("IDLE (after the jobs, polling every 1 s, {:.0} s)", i.secs),
            String::new(),
            String::new(),
        );
        row(
            "resident memory (VmRSS, largest sample)",
            mib(i.rss_kib),
            format!(
                "target < {}: {}",
                mib(IDLE_RSS_TARGET_KIB),
                verdict(i.rss_met())
            ),
        );
        row(
            "peak resident memory since start (VmHWM)",
            mib(i.hwm_kib),
            String::new(),
        );
        row(
            "CPU (utime + stime)",
            format!("{:.2}% of a core", i.cpu_percent),
            format!(
                "target < {:.0}%: {}",
                IDLE_CPU_TARGET_PERCENT,
                verdict(i.cpu_met())
            ),
        );
        let s = &self.stream;
        row(
            &format!(
                "LOG STREAMING ({:.0} MB of 100-byte lines)",
                s.bytes as f64 / 1e6
            ),
            String::new(),
            String::new(),
        );
        row(
            "baseline: ssh … cat to the host (first byte → end)",
            format!("{:.2} MB/s", s.baseline_mb_s()),
            format!("{:.1} s", s.baseline.as_secs_f64()),
        );
        row(
            "solstice: step start → forge acknowledged the last row",
            format!("{:.2} MB/s", s.solstice_mb_s()),
            format!(
                "{:.1} s = {:.0}% of baseline, target >= {:.0}%: {}",
                s.solstice.as_secs_f64(),
                s.ratio() * 100.0,
                STREAM_RATIO_TARGET * 100.0,
                verdict(s.ratio_met())
            ),
        );
        row(
            if s.hwm_reset {
                "daemon peak resident memory while streaming (VmHWM)"
            } else {
                "daemon peak resident memory since start (VmHWM)"
            },
            mib(s.hwm_kib),
            format!(
                "target < {}: {}",
                mib(STREAM_HWM_TARGET_KIB),
                verdict(s.hwm_met())
            ),
        );
        text.push_str(&out);
        if self.violations.is_empty() {
            text.push_str("fake forge: no protocol violations\n");
        } else {
            text.push_str(&format!(
                "fake forge: {} protocol violations:\n",
                self.violations.len()
            ));
            for v in &self.violations {
                text.push_str(&format!("  {v}\n"));
            }
        }
        text
    }

    /// The figures as JSON (durations in milliseconds, memory in KiB).
    pub fn to_json(&self) -> Value {
        let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0;
        let ideal = self.ideal_per_min();
        json!({
            "image": self.image,
            "accel": self.accel,
            "baseline_boot_to_ssh_ms": ms(self.baseline_boot()),
            "baseline_boots_ms": self.baseline_boots.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "throughput": self.throughput.iter().map(|t| json!({
                "capacity": t.capacity,
                "jobs": t.jobs,
                "elapsed_ms": ms(t.elapsed),
                "jobs_per_min": t.jobs_per_min(),
                "ideal_jobs_per_min": ideal * f64::from(t.capacity),
                "ratio_to_ideal": t.jobs_per_min() / (ideal * f64::from(t.capacity)),
            })).collect::<Vec<_>>(),
            "latency_ms": {
                "provision": ms(self.latency.provision),
                "boot": ms(self.latency.boot),
                "ssh_ready": ms(self.latency.ssh_ready),
                "first_step": ms(self.latency.first_step),
                "total": ms(self.latency.total),
                "forge_view": ms(self.latency.forge_view),
            },
            "idle": {
                "secs": self.idle.secs,
                "rss_kib": self.idle.rss_kib,
                "hwm_kib": self.idle.hwm_kib,
                "cpu_percent": self.idle.cpu_percent,
                "rss_target_kib": IDLE_RSS_TARGET_KIB,
                "cpu_target_percent": IDLE_CPU_TARGET_PERCENT,
                "rss_met": self.idle.rss_met(),
                "cpu_met": self.idle.cpu_met(),
            },
            "log_streaming": {
                "bytes": self.stream.bytes,
                "baseline_ms": ms(self.stream.baseline),
                "solstice_ms": ms(self.stream.solstice),
                "baseline_mb_per_s": self.stream.baseline_mb_s(),
                "solstice_mb_per_s": self.stream.solstice_mb_s(),
                "ratio": self.stream.ratio(),
                "ratio_target": STREAM_RATIO_TARGET,
                "ratio_met": self.stream.ratio_met(),
                "daemon_hwm_kib": self.stream.hwm_kib,
                "hwm_reset_before": self.stream.hwm_reset,
                "hwm_target_kib": STREAM_HWM_TARGET_KIB,
                "hwm_met": self.stream.hwm_met(),
            },
            "violations": self.violations,
            "load_average_before": self.load.0,
            "load_average_after": self.load.1,
        })
    }
}

/// The 1-minute load average from `/proc/loadavg`.
pub fn loadavg_1min(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// utime + stime (clock ticks) from `/proc/<pid>/stat`. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after
/// its last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After `)`: state is field 3; utime is field 14, stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU use as % of one core: `ticks` over `wall`.
pub fn cpu_percent(ticks: u64, wall: Duration) -> f64 {
    ticks as f64 / USER_HZ / wall.as_secs_f64().max(f64::EPSILON) * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn report() -> RunnerReport {
        RunnerReport {
            image: "tiny".into(),
            accel: "tcg".into(),
            baseline_boots: vec![ms(6000), ms(5000), ms(7000)],
            throughput: vec![
                Throughput {
                    capacity: 1,
                    jobs: 6,
                    elapsed: ms(48_000),
                },
                Throughput {
                    capacity: 2,
                    jobs: 6,
                    elapsed: ms(30_000),
                },
            ],
            latency: Latency {
                provision: ms(100),
                boot: ms(5000),
                ssh_ready: ms(400),
                first_step: ms(50),
                total: ms(5550),
                forge_view: ms(5700),
            },
            idle: Idle {
                secs: 30.0,
                rss_kib: 20 * 1024,
                hwm_kib: 40 * 1024,
                cpu_percent: 0.4,
            },
            stream: Stream {
                bytes: 200_000_000,
                baseline: ms(10_000),
                solstice: ms(25_000),
                hwm_kib: 70 * 1024,
                hwm_reset: true,
            },
            violations: vec![],
            load: (Some(0.25), None),
        }
    }

    #[test]
    fn figures_and_verdicts() {
        let r = report();
        assert_eq!(r.baseline_boot(), ms(6000));
        assert!((r.ideal_per_min() - 10.0).abs() < 1e-9);
        assert!((r.throughput[0].jobs_per_min() - 7.5).abs() < 1e-9);
        assert!((r.stream.baseline_mb_s() - 20.0).abs() < 1e-9);
        assert!((r.stream.ratio() - 0.4).abs() < 1e-9);
        assert!(!r.stream.ratio_met());
        assert!(!r.stream.hwm_met());
        assert!(r.idle.rss_met() && r.idle.cpu_met());
    }

    #[test]
    fn table_has_every_row_and_verdict() {
        let t = report().render();
        for needle in [
            "capacity 1: 6 job(s)",
            "7.50 jobs/min",
            "= 75% of ideal 10.00/min",
            "capacity 2: 6 job(s)",
            "= 60% of ideal 20.00/min (2 × 60 s",
            "provision",
            "boot (QEMU spawned",
            "SSH ready",
            "first step (session",
            "5550 ms",
            "forge view",
            "20.0 MiB",
            "target < 30.0 MiB: met",
            "0.40% of a core",
            "target < 1%: met",
            "20.00 MB/s",
            "8.00 MB/s",
            "= 40% of baseline, target >= 50%: NOT met",
            "target < 64.0 MiB: NOT met",
            "no protocol violations",
            "host load average (1 min): 0.25 before, unknown after",
        ] {
            assert!(t.contains(needle), "{needle:?} missing from:\n{t}");
        }
        let j = report().to_json();
        assert_eq!(j["log_streaming"]["ratio_met"], false);
        assert_eq!(j["throughput"][1]["capacity"], 2);
    }

    #[test]
    fn proc_parsing() {
        let status = "Name:\tsolstice\nVmHWM:\t   21000 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(12345));
        assert_eq!(status_kib(status, "VmHWM"), Some(21000));
        assert_eq!(status_kib(status, "VmSwap"), None);
        let stat = "4242 (sol stice) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 12 0 0 20 0 5 0 1 2 3";
        assert_eq!(stat_cpu_ticks(stat), Some(49));
        assert_eq!(stat_cpu_ticks("garbage"), None);
        assert!((cpu_percent(30, Duration::from_secs(30)) - 1.0).abs() < 1e-9);
        assert_eq!(loadavg_1min("0.52 0.40 0.31 1/123 4567\n"), Some(0.52));
        assert_eq!(loadavg_1min(""), None);
    }
}

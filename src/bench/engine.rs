//! `solstice bench engine`: Solstice's own overhead against a plain QEMU baseline,
//! measured in one run on the same image.
//!
//! Baseline: the same QEMU command line Solstice would use (fixed forwarded
//! port instead of QMP port discovery), started directly, and the OpenSSH
//! client polled until `ssh … true` succeeds. Solstice: a one-step `true` job
//! through [`crate::job::run_in_vm`], exactly as `solstice exec` runs it.
//! Solstice's own overhead is everything outside the guest's boot (QEMU spawned
//! → SSH ready): preparing the job directory, seed and overlay, the job's steps
//! with their setup and file commands, and teardown. It is reported against the
//! baseline's boot to SSH, together with the total wall time difference.

use std::time::{Duration, Instant};

use super::baseline::baseline_boot;
use super::{BenchError, EngineBenchArgs, bench_image, fmt_ms, load_bench_config, median};
use crate::config::{Config, ImageConfig};
use crate::events::{Conclusion, EventSink, JobEvent};
use crate::human::fmt_duration;
use crate::job::JobSpec;
use crate::startup::resolve_accel;
use crate::vm::Accel;

/// Target from issue 2: Solstice's overhead ≤ 10% of raw boot-to-SSH and < 300 ms.
pub const TARGET_RATIO: f64 = 0.10;
pub const TARGET_ABS: Duration = Duration::from_millis(300);

const TRUE_WORKFLOW: &str = "jobs:\n  bench:\n    steps:\n      - run: 'true'\n";

/// Ignores events (the benchmark prints its own table).
struct NullSink;
impl EventSink for NullSink {
    fn emit(&self, _: JobEvent) {}
}

/// One Solstice run's split.
#[derive(Debug, Clone, Copy)]
pub struct SolsticeSample {
    pub prepare: Duration,
    pub provision: Duration,
    pub boot_to_ssh: Duration,
    pub first_step: Duration,
    pub job: Duration,
    pub teardown: Duration,
    pub total: Duration,
}

/// `solstice bench engine`.
pub async fn engine_main(args: EngineBenchArgs) -> Result<(), BenchError> {
    let config = load_bench_config(&args.common)?;
    let image = bench_image(&config, &args.common)?;
    // Both sides of the comparison use the accelerator chosen now.
    let accel = resolve_accel(&config).await?.current();
    let runs = args.runs.max(1) as usize;
    println!(
        "solstice bench engine: image {} ({} vCPU, {} MiB), accelerator {}, {runs} runs each",
        image.name,
        image.vcpus,
        image.memory_mib,
        accel.as_str()
    );

    let mut images = vec![image];
    if let Some(name) = &args.versus {
        let other = config.images.get(name).ok_or_else(|| {
            BenchError::Usage(format!(
                "--versus {name}: the config has no image of that name (it has: {})",
                config.images.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        println!(
            "  versus image {} ({} vCPU, {} MiB), runs alternating",
            other.name, other.vcpus, other.memory_mib
        );
        images.push(other);
    }

    let mut baseline = vec![Vec::new(); images.len()];
    for i in 0..runs {
        for (k, img) in images.iter().enumerate() {
            match baseline_boot(&config, img, accel).await {
                Ok(d) => {
                    println!(
                        "  {} baseline run {}/{runs}: boot to SSH {}",
                        img.name,
                        i + 1,
                        fmt_duration(d)
                    );
                    baseline[k].push(d);
                }
                Err(e) => {
                    return Err(BenchError::Infra(format!(
                        "{} baseline run failed: {e}",
                        img.name
                    )));
                }
            }
        }
    }
    let mut samples = vec![Vec::new(); images.len()];
    for i in 0..runs {
        for (k, img) in images.iter().enumerate() {
            let s = solstice_run(&config, img, accel).await?;
            println!(
                "  {} solstice run {}/{runs}: total {} (prepare {}, provision {}, boot {}, first step {}, teardown {})",
                img.name,
                i + 1,
                fmt_duration(s.total),
                fmt_ms(s.prepare),
                fmt_ms(s.provision),
                fmt_duration(s.boot_to_ssh),
                fmt_ms(s.first_step),
                fmt_ms(s.teardown)
            );
            samples[k].push(s);
        }
    }
    let reports: Vec<Report> = baseline
        .iter()
        .zip(&samples)
        .map(|(b, s)| Report::new(b, s))
        .collect();
    for (img, report) in images.iter().zip(&reports) {
        println!("\nimage {}: {}", img.name, report.render());
    }
    if let [a, b] = reports.as_slice() {
        println!(
            "\n{} versus {}: baseline boot to SSH {} vs {} ({:+} ms), solstice boot to SSH {} vs {} ({:+} ms)",
            images[0].name,
            images[1].name,
            fmt_ms(a.baseline),
            fmt_ms(b.baseline),
            a.baseline.as_millis() as i128 - b.baseline.as_millis() as i128,
            fmt_ms(a.boot_to_ssh),
            fmt_ms(b.boot_to_ssh),
            a.boot_to_ssh.as_millis() as i128 - b.boot_to_ssh.as_millis() as i128,
        );
    }
    Ok(())
}

/// Medians and the overhead verdict.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Median boot to SSH of the plain QEMU baseline.
    pub baseline: Duration,
    /// Field-wise medians of the Solstice runs.
    pub solstice: SolsticeSample,
}

impl std::ops::Deref for Report {
    type Target = SolsticeSample;
    fn deref(&self) -> &SolsticeSample {
        &self.solstice
    }
}

impl Report {
    pub fn new(baseline: &[Duration], samples: &[SolsticeSample]) -> Self {
        let m =
            |f: fn(&SolsticeSample) -> Duration| median(&samples.iter().map(f).collect::<Vec<_>>());
        Self {
            baseline: median(baseline),
            solstice: SolsticeSample {
                prepare: m(|s| s.prepare),
                provision: m(|s| s.provision),
                boot_to_ssh: m(|s| s.boot_to_ssh),
                first_step: m(|s| s.first_step),
                job: m(|s| s.job),
                teardown: m(|s| s.teardown),
                total: m(|s| s.total),
            },
        }
    }

    /// Solstice's own work, outside the guest's boot: prepare + job + teardown.
    pub fn overhead(&self) -> Duration {
        self.prepare + self.job + self.teardown
    }

    /// [`Self::overhead`] as a fraction of the baseline's boot to SSH.
    pub fn ratio(&self) -> f64 {
        if self.baseline.is_zero() {
            return f64::INFINITY;
        }
        self.overhead().as_secs_f64() / self.baseline.as_secs_f64()
    }

    /// Solstice's total wall time minus the baseline's boot to SSH, in seconds
    /// (negative when Solstice's readiness probing beats the baseline's loop).
    pub fn total_delta_secs(&self) -> f64 {
        self.total.as_secs_f64() - self.baseline.as_secs_f64()
    }

    pub fn meets_target(&self) -> bool {
        self.ratio() <= TARGET_RATIO && self.overhead() < TARGET_ABS
    }

    pub fn render(&self) -> String {
        let rows = [
            (
                "baseline: plain QEMU + ssh polling, boot to SSH",
                self.baseline,
            ),
            (
                "solstice: prepare (keys, job dir, seed, overlay)",
                self.prepare,
            ),
            (
                "solstice: provision (prepare, QEMU up, QMP, port)",
                self.provision,
            ),
            (
                "solstice: boot to SSH ready (from QEMU spawn)",
                self.boot_to_ssh,
            ),
            ("solstice: SSH ready to first step running", self.first_step),
            ("solstice: whole job (`true` step, file commands)", self.job),
            (
                "solstice: teardown (QMP quit, files removed)",
                self.teardown,
            ),
            ("solstice: total", self.total),
        ];
        let mut out = String::from("medians:\n");
        for (name, d) in rows {
            out.push_str(&format!("  {name:<52} {:>9}\n", fmt_ms(d)));
        }
        out.push_str(&format!(
            "  {:<52} {:>9}  = {:.1}% of baseline\n",
            "overhead (prepare + job + teardown)",
            fmt_ms(self.overhead()),
            self.ratio() * 100.0
        ));
        out.push_str(&format!(
            "  {:<52} {:>+9.0} ms = {:+.1}% of baseline\n",
            "total wall time vs baseline boot to SSH",
            self.total_delta_secs() * 1000.0,
            self.total_delta_secs() / self.baseline.as_secs_f64().max(f64::EPSILON) * 100.0
        ));
        out.push_str(&format!(
            "target: overhead <= {:.0}% of baseline and < {} ms: {}",
            TARGET_RATIO * 100.0,
            TARGET_ABS.as_millis(),
            if self.meets_target() {
                "met"
            } else {
                "NOT met"
            }
        ));
        out
    }
}

async fn solstice_run(
    config: &Config,
    image: &ImageConfig,
    accel: Accel,
) -> Result<SolsticeSample, BenchError> {
    let wf = crate::workflow::parse_workflow(TRUE_WORKFLOW)
        .map_err(|e| BenchError::Infra(format!("built-in bench workflow: {e}")))?;
    let spec = JobSpec::own(wf, "bench");
    let start = Instant::now();
    let report = super::run_one_job(config, image, accel, &spec, &NullSink).await?;
    let total = start.elapsed();
    if report.outcome.conclusion != Conclusion::Success {
        return Err(BenchError::Infra(
            "the benchmark's `true` job did not succeed".into(),
        ));
    }
    let t = report.timings;
    Ok(SolsticeSample {
        prepare: t.prepare,
        provision: t.provision,
        boot_to_ssh: t.boot_to_ssh,
        first_step: t.first_step.unwrap_or(t.job),
        job: t.job,
        teardown: t.teardown,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn overhead_and_target() {
        let s = SolsticeSample {
            prepare: ms(40),
            provision: ms(100),
            boot_to_ssh: ms(3000),
            first_step: ms(30),
            job: ms(60),
            teardown: ms(20),
            total: ms(3200),
        };
        let r = Report::new(&[ms(3000)], &[s]);
        assert_eq!(r.overhead(), ms(120));
        assert!((r.ratio() - 0.04).abs() < 0.001);
        assert!((r.total_delta_secs() - 0.2).abs() < 1e-9);
        assert!(r.meets_target());
        let slow = SolsticeSample { job: ms(300), ..s };
        assert!(!Report::new(&[ms(3000)], &[slow]).meets_target());
        assert!(Report::new(&[ms(3000)], &[s]).render().contains("target"));
    }
}

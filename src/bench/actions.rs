//! `solstice bench actions`: what actions cost, each figure against a plain
//! baseline measured in the same run (issue 12).
//!
//! Parts (`--only` picks some; progress on stderr, the tables on stdout):
//! - `fetch`: a git server on 127.0.0.1 (the testkit's) serves a small
//!   action and one with a 2 MiB file; with a fresh [`ActionCache`] each
//!   time, the first fetch by tag is timed against a second fetch by tag
//!   (the ref is resolved on the server, the tree comes from the cache) and
//!   a fetch by full sha (no network at all). No VM.
//! - `steps`: one VM job with `--steps` K `run: 'true'` steps, K steps of a
//!   no-op composite action (one `run: 'true'` with `shell: sh`) and K steps
//!   of a no-op JavaScript action (an empty `main.js`), the actions already
//!   in the cache. The step durations of the job's outcome give what an
//!   action's plumbing adds (composite − run) and what node adds
//!   (JavaScript − composite). An image without node says so instead.
//! - `daemon`: `solstice run` (as in `bench runner`) runs `--jobs` trivial
//!   jobs, then, in a fresh daemon with the same configuration, `--jobs`
//!   jobs that each use an action with a 2 MiB file fetched through the
//!   daemon's cache from the fake forge's default actions URL; the daemon's
//!   VmHWM (peak) and VmRSS (after the jobs) of both.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::runner::{Setup, is_final, progress, true_payload, wait_all_final};
use super::{
    ActionsBenchArgs, ActionsPhase, BenchError, TempDir, bench_image, fmt_ms, load_bench_config,
    median,
};
use crate::actions::{ActionCache, CacheSettings, FetchRequest, RemoteRef};
use crate::config::{Config, ImageConfig};
use crate::events::{Conclusion, EventSink, JobEvent};
use crate::forge::forgejo::proto::TaskResult;
use crate::job::JobSpec;
use crate::startup::resolve_accel;
use crate::testing::git_server::GitServer;
use crate::vm::Accel;

/// Owner of the benchmark's action repositories.
const OWNER: &str = "bench";
/// The no-op JavaScript action.
const JS: &str = "noop-js";
/// The no-op composite action.
const COMPOSITE: &str = "noop-composite";
/// The no-op composite action with a 2 MiB file beside its manifest.
const BIG: &str = "noop-big";
/// Size of [`BIG`]'s extra file.
const BIG_BYTES: usize = 2 << 20;
/// The tag every action is published under.
const TAG: &str = "v1";

const JS_MANIFEST: &str =
    "name: noop-js\ndescription: Does nothing, in node\nruns:\n  using: node20\n  main: main.js\n";
const COMPOSITE_MANIFEST: &str = "name: noop-composite\ndescription: Does nothing, in sh\nruns:\n  using: composite\n  steps:\n    - run: 'true'\n      shell: sh\n";

/// `solstice bench actions`.
pub async fn actions_main(args: ActionsBenchArgs) -> Result<(), BenchError> {
    let want = |p: ActionsPhase| args.only.is_empty() || args.only.contains(&p);
    let work = TempDir::new(&std::env::temp_dir(), "sbench")?;
    progress("publishing the benchmark's actions on a git server on 127.0.0.1");
    let server = GitServer::start().await;
    let shas = publish(&server, &work.0)?;
    let mut out = String::new();
    if want(ActionsPhase::Fetch) {
        let report = fetch_part(&server, &shas, &work.0, args.runs).await?;
        out.push_str(&report.render());
    }
    if want(ActionsPhase::Steps) || want(ActionsPhase::Daemon) {
        let config = load_bench_config(&args.common)?;
        let image = bench_image(&config, &args.common)?;
        let accel = resolve_accel(&config).await?.current();
        if want(ActionsPhase::Steps) {
            let report = steps_part(&config, image, accel, &server, &work.0, args.steps).await?;
            out.push_str(&report.render());
        }
        if want(ActionsPhase::Daemon) {
            let exe = std::env::current_exe().map_err(|e| {
                BenchError::Infra(format!(
                    "cannot find the solstice binary to start the daemon: {e}"
                ))
            })?;
            let report = daemon_part(&config, image, accel, &exe, &server, &work.0, args.jobs)
                .await
                .map_err(BenchError::Infra)?;
            out.push_str(&report.render());
        }
    }
    print!("\n{out}");
    Ok(())
}

/// The published commits: (repository, sha).
struct Shas(Vec<(&'static str, String)>);

impl Shas {
    fn of(&self, repo: &str) -> &str {
        self.0
            .iter()
            .find(|(r, _)| *r == repo)
            .map(|(_, s)| s.as_str())
            .unwrap_or_default()
    }
}

/// Writes the three actions under `work/src` and publishes them as
/// `bench/<name>` with tag `v1`.
fn publish(server: &GitServer, work: &Path) -> Result<Shas, BenchError> {
    let write = |path: &Path, bytes: &[u8]| {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)
                .map_err(|e| BenchError::Infra(format!("create {}: {e}", d.display())))?;
        }
        std::fs::write(path, bytes)
            .map_err(|e| BenchError::Infra(format!("write {}: {e}", path.display())))
    };
    let src = work.join("src");
    write(&src.join(JS).join("action.yml"), JS_MANIFEST.as_bytes())?;
    write(&src.join(JS).join("main.js"), b"// does nothing\n")?;
    write(
        &src.join(COMPOSITE).join("action.yml"),
        COMPOSITE_MANIFEST.as_bytes(),
    )?;
    write(
        &src.join(BIG).join("action.yml"),
        COMPOSITE_MANIFEST.replace(COMPOSITE, BIG).as_bytes(),
    )?;
    // Random bytes: git cannot compress them, so 2 MiB really travel.
    let blob: Vec<u8> = (0..BIG_BYTES).map(|_| rand::random::<u8>()).collect();
    write(&src.join(BIG).join("payload.bin"), &blob)?;
    let mut shas = Vec::new();
    for name in [JS, COMPOSITE, BIG] {
        shas.push((name, server.publish(OWNER, name, &src.join(name), &[TAG])));
    }
    Ok(Shas(shas))
}

fn remote(repo: &str, git_ref: &str) -> RemoteRef {
    RemoteRef {
        base: None,
        owner: OWNER.into(),
        repo: repo.into(),
        path: None,
        git_ref: git_ref.into(),
    }
}

/// An action cache in a fresh directory under `parent`, allowed to fetch
/// from 127.0.0.1.
fn fresh_cache(parent: &Path) -> Result<(ActionCache, TempDir), BenchError> {
    let dir = TempDir::new(parent, "cache")?;
    let cache = ActionCache::new(CacheSettings {
        dir: dir.0.clone(),
        max_bytes: 1 << 30,
        allowed_hosts: vec!["127.0.0.1".into()],
    });
    Ok((cache, dir))
}

/// One timed fetch; its archive size and whether it was served from the cache.
async fn timed_fetch(
    cache: &ActionCache,
    server: &GitServer,
    action: &RemoteRef,
) -> Result<(Duration, usize, bool), BenchError> {
    let start = Instant::now();
    let got = cache
        .fetch(&FetchRequest {
            action,
            default_url: server.url(),
            forge_url: None,
            token: None,
        })
        .await
        .map_err(|e| BenchError::Infra(format!("fetch of {action}: {e}")))?;
    Ok((start.elapsed(), got.archive.len(), got.cached))
}

/// The fetch figures of one action.
#[derive(Debug, Clone)]
pub struct FetchRow {
    pub action: String,
    pub archive_bytes: usize,
    pub first: Duration,
    pub cached_tag: Duration,
    pub cached_sha: Duration,
}

#[derive(Debug, Clone)]
pub struct FetchReport {
    pub runs: u32,
    pub rows: Vec<FetchRow>,
}

async fn fetch_part(
    server: &GitServer,
    shas: &Shas,
    work: &Path,
    runs: u32,
) -> Result<FetchReport, BenchError> {
    let mut rows = Vec::new();
    for repo in [JS, BIG] {
        let (mut first, mut tag, mut sha) = (Vec::new(), Vec::new(), Vec::new());
        let mut size = 0;
        for i in 0..runs {
            let (cache, _dir) = fresh_cache(work)?;
            let packs = server.upload_packs();
            let (d, n, _) = timed_fetch(&cache, server, &remote(repo, TAG)).await?;
            if server.upload_packs() == packs {
                return Err(BenchError::Infra(format!(
                    "the first fetch of {OWNER}/{repo} did not download from the git server"
                )));
            }
            first.push(d);
            size = n;
            let packs = server.upload_packs();
            let listings = server.ref_listings();
            let (dt, _, _) = timed_fetch(&cache, server, &remote(repo, TAG)).await?;
            let (ds, _, from_cache) =
                timed_fetch(&cache, server, &remote(repo, shas.of(repo))).await?;
            if server.upload_packs() != packs || !from_cache {
                return Err(BenchError::Infra(format!(
                    "a second fetch of {OWNER}/{repo} downloaded again: the cache was not used"
                )));
            }
            if server.ref_listings() == listings {
                return Err(BenchError::Infra(format!(
                    "the second fetch of {OWNER}/{repo}@{TAG} did not resolve the tag on the server"
                )));
            }
            tag.push(dt);
            sha.push(ds);
            progress(format_args!(
                "fetch {OWNER}/{repo} {}/{runs}: first {}, cached by tag {}, cached by sha {}",
                i + 1,
                fmt_ms1(d),
                fmt_ms1(dt),
                fmt_ms1(ds)
            ));
        }
        rows.push(FetchRow {
            action: format!("{OWNER}/{repo}"),
            archive_bytes: size,
            first: median(&first),
            cached_tag: median(&tag),
            cached_sha: median(&sha),
        });
    }
    Ok(FetchReport { runs, rows })
}

/// `12.3 ms` (a cached fetch can take less than a millisecond).
fn fmt_ms1(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `+123 ms`.
fn fmt_delta(ms: f64) -> String {
    format!("{ms:+.0} ms")
}

/// `a / b`, or infinity when `b` is zero.
fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        f64::INFINITY
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

/// `a - b` in signed milliseconds.
fn delta_ms(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() - b.as_secs_f64()) * 1000.0
}

impl FetchReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "FETCH (git server on 127.0.0.1, a fresh cache each run; medians of {})\n",
            self.runs
        );
        for r in &self.rows {
            out.push_str(&format!(
                "  {} (archive {:.1} KiB)\n",
                r.action,
                r.archive_bytes as f64 / 1024.0
            ));
            out.push_str(&format!(
                "    {:<50} {:>9}\n",
                "first fetch by tag (ls-remote, fetch, archive)",
                fmt_ms1(r.first)
            ));
            out.push_str(&format!(
                "    {:<50} {:>9}  first is {:.1}x\n",
                "cached, by tag (ls-remote, then the cache)",
                fmt_ms1(r.cached_tag),
                ratio(r.first, r.cached_tag)
            ));
            out.push_str(&format!(
                "    {:<50} {:>9}  first is {:.1}x\n",
                "cached, by full sha (no network)",
                fmt_ms1(r.cached_sha),
                ratio(r.first, r.cached_sha)
            ));
        }
        out.push('\n');
        out
    }
}

/// Keeps each step's last log line.
#[derive(Default)]
struct LastLines(Mutex<Vec<(usize, String)>>);

impl EventSink for LastLines {
    fn emit(&self, event: JobEvent) {
        if let JobEvent::Line {
            step: Some(i),
            text,
            ..
        } = event
        {
            let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
            v.retain(|(s, _)| *s != i);
            v.push((i, text));
        }
    }
}

impl LastLines {
    fn of(&self, step: usize) -> String {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(s, _)| *s == step)
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    }
}

/// The `steps` part's job: K steps of each kind, every script run by `sh`.
fn steps_workflow(k: u32) -> String {
    let mut y = String::from("jobs:\n  bench:\n    steps:\n");
    for i in 1..=k {
        // `sh`, as in the composite: the image's default shell may be bash.
        y.push_str(&format!(
            "      - name: run {i}\n        run: 'true'\n        shell: sh\n"
        ));
    }
    for i in 1..=k {
        y.push_str(&format!(
            "      - name: composite {i}\n        uses: {OWNER}/{COMPOSITE}@{TAG}\n"
        ));
    }
    for i in 1..=k {
        y.push_str(&format!(
            "      - name: javascript {i}\n        uses: {OWNER}/{JS}@{TAG}\n"
        ));
    }
    y
}

/// The first, mean and median of some step durations (the first step of
/// a kind is the cold one: node's files are not in the guest's page cache).
#[derive(Debug, Clone, Copy, Default)]
pub struct StepStats {
    pub first: Duration,
    pub mean: Duration,
    pub median: Duration,
}

impl StepStats {
    fn of(xs: &[Duration]) -> StepStats {
        let n = u32::try_from(xs.len()).unwrap_or(u32::MAX).max(1);
        StepStats {
            first: xs.first().copied().unwrap_or_default(),
            mean: xs.iter().sum::<Duration>() / n,
            median: median(xs),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StepsReport {
    pub image: String,
    pub accel: String,
    pub k: u32,
    pub run: StepStats,
    pub composite: StepStats,
    /// `Err`: why the JavaScript steps did not run (no node in the image).
    pub javascript: Result<StepStats, String>,
}

async fn steps_part(
    config: &Config,
    image: &ImageConfig,
    accel: Accel,
    server: &GitServer,
    work: &Path,
    k: u32,
) -> Result<StepsReport, BenchError> {
    let (cache, _dir) = fresh_cache(work)?;
    // Fetched before the job: the steps measure the guest, not the network.
    for repo in [COMPOSITE, JS] {
        timed_fetch(&cache, server, &remote(repo, TAG)).await?;
    }
    let yaml = steps_workflow(k);
    let wf = crate::workflow::parse_workflow(&yaml)
        .map_err(|e| BenchError::Infra(format!("built-in bench workflow: {e}")))?;
    let spec = JobSpec {
        default_actions_url: Some(server.url().to_owned()),
        actions: Some(Arc::new(cache)),
        cache: None,
        extra_contexts: Default::default(),
        ..JobSpec::own(wf, "bench")
    };
    progress(format_args!(
        "steps: one job on image {} ({} vCPU, {} MiB, accelerator {}) with {k} run, {k} composite and {k} JavaScript steps",
        image.name,
        image.vcpus,
        image.memory_mib,
        accel.as_str()
    ));
    let sink = LastLines::default();
    let report = super::run_one_job(config, image, accel, &spec, &sink).await?;
    let k = k as usize;
    let steps = &report.outcome.steps;
    let durations = |range: std::ops::Range<usize>| -> Result<Vec<Duration>, String> {
        let mut v = Vec::new();
        for i in range {
            let s = steps
                .iter()
                .find(|s| s.index == i)
                .ok_or_else(|| format!("step {} did not run", i + 1))?;
            if s.conclusion != Conclusion::Success {
                return Err(format!(
                    "step {} ({}) ended {:?}: {}",
                    i + 1,
                    s.name,
                    s.conclusion,
                    sink.of(i)
                ));
            }
            v.push(s.duration);
        }
        Ok(v)
    };
    let run_d = durations(0..k).map_err(BenchError::Infra)?;
    let comp_d = durations(k..2 * k).map_err(BenchError::Infra)?;
    let js = durations(2 * k..3 * k).map(|d| StepStats::of(&d));
    let r = StepsReport {
        image: image.name.clone(),
        accel: accel.as_str().into(),
        k: k as u32,
        run: StepStats::of(&run_d),
        composite: StepStats::of(&comp_d),
        javascript: js,
    };
    progress(format_args!(
        "steps: medians run {}, composite {}, JavaScript {}",
        fmt_ms(r.run.median),
        fmt_ms(r.composite.median),
        match &r.javascript {
            Ok(s) => fmt_ms(s.median),
            Err(_) => "did not run".into(),
        }
    ));
    Ok(r)
}

impl StepsReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "STEPS (one job on image {}, accelerator {}, {} steps of each kind, actions already cached)\n",
            self.image, self.accel, self.k
        );
        out.push_str(&format!(
            "  {:<50} {:>9} {:>9} {:>9}\n",
            "per step", "first", "mean", "median"
        ));
        let mut row = |name: &str, s: &StepStats| {
            out.push_str(&format!(
                "  {name:<50} {:>9} {:>9} {:>9}\n",
                fmt_ms(s.first),
                fmt_ms(s.mean),
                fmt_ms(s.median)
            ));
        };
        row("baseline: `run: 'true'` (`shell: sh`)", &self.run);
        row("composite action (one `run: 'true'`)", &self.composite);
        if let Ok(js) = &self.javascript {
            row("JavaScript action (empty main.js)", js);
        }
        let med = |s: &StepStats| s.median;
        out.push_str(&format!(
            "  {:<50} {:>29}  {:.2}x baseline\n",
            "action plumbing: composite − run (medians)",
            fmt_delta(delta_ms(med(&self.composite), med(&self.run))),
            ratio(med(&self.composite), med(&self.run))
        ));
        match &self.javascript {
            Ok(js) => {
                out.push_str(&format!(
                    "  {:<50} {:>29}  {:.2}x baseline\n",
                    "JavaScript action − run (medians)",
                    fmt_delta(delta_ms(js.median, med(&self.run))),
                    ratio(js.median, med(&self.run))
                ));
                out.push_str(&format!(
                    "  {:<50} {:>29}\n",
                    "node start-up: JavaScript − composite (medians)",
                    fmt_delta(delta_ms(js.median, med(&self.composite)))
                ));
                out.push_str(&format!(
                    "  {:<50} {:>29}\n",
                    "cold node start-up: first JavaScript − composite",
                    fmt_delta(delta_ms(js.first, self.composite.first))
                ));
            }
            Err(why) => out.push_str(&format!(
                "  JavaScript action: no figure, no usable node in image {}: {why}\n",
                self.image
            )),
        }
        out.push('\n');
        out
    }
}

/// The daemon's memory in one case.
#[derive(Debug, Clone, Copy)]
pub struct DaemonMemory {
    /// VmRSS once the daemon polls, before any job.
    pub start_kib: u64,
    /// VmHWM after the jobs.
    pub peak_kib: u64,
    /// VmRSS 2 s after the last job.
    pub after_kib: u64,
}

#[derive(Debug, Clone)]
pub struct DaemonReport {
    pub image: String,
    pub jobs: u32,
    pub plain: DaemonMemory,
    pub actions: DaemonMemory,
}

fn action_payload(label: &str) -> String {
    format!(
        "name: bench-actions\non: push\njobs:\n  bench:\n    runs-on: {label}\n    steps:\n      - uses: {OWNER}/{BIG}@{TAG}\n"
    )
}

async fn daemon_part(
    config: &Config,
    image: &ImageConfig,
    accel: Accel,
    exe: &Path,
    server: &GitServer,
    work: &Path,
    jobs: u32,
) -> Result<DaemonReport, String> {
    let label = image
        .labels
        .first()
        .cloned()
        .unwrap_or_else(|| image.name.clone());
    let setup = Setup {
        config,
        image,
        accel: accel.as_str(),
        exe,
        work,
        label: &label,
        actions_url: Some(server.url()),
    };
    let plain = daemon_case(&setup, "p", "plain", &true_payload(&label), jobs).await?;
    let packs = server.upload_packs();
    let actions = daemon_case(&setup, "a", "actions", &action_payload(&label), jobs).await?;
    if server.upload_packs() == packs {
        return Err("the daemon's jobs did not fetch the action from the git server".into());
    }
    Ok(DaemonReport {
        image: image.name.clone(),
        jobs,
        plain,
        actions,
    })
}

/// A fresh daemon (capacity 1, its files in `work/<dir>`: a short name,
/// as QMP socket paths must stay short) runs `jobs` jobs of `payload`.
async fn daemon_case(
    setup: &Setup<'_>,
    dir: &str,
    name: &str,
    payload: &str,
    jobs: u32,
) -> Result<DaemonMemory, String> {
    let (forge, mut daemon) = setup.start_in(dir, 1).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start_kib = daemon.kib("VmRSS")?;
    let ids: Vec<i64> = (0..jobs)
        .map(|_| {
            forge.enqueue(crate::testing::fake_forge::FakeJob::new(
                payload.to_owned(),
                &[setup.label],
            ))
        })
        .collect();
    let timeout = (setup.image.boot_timeout + Duration::from_secs(180)) * jobs;
    let what = format!("daemon, {name}");
    wait_all_final(&forge, &mut daemon, &ids, timeout, &what).await?;
    for id in &ids {
        let task = forge
            .task_for_job(*id)
            .filter(is_final)
            .ok_or_else(|| format!("{what}: job {id} has no final task"))?;
        if task.client_result != TaskResult::Success {
            return Err(format!(
                "{what}: task {} ended {:?}; the daemon's log:\n{}",
                task.id,
                task.client_result,
                daemon.log_tail()
            ));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = DaemonMemory {
        start_kib,
        peak_kib: daemon.kib("VmHWM")?,
        after_kib: daemon.kib("VmRSS")?,
    };
    progress(format_args!(
        "{what}: VmRSS at start {}, peak (VmHWM) {}, after {}",
        mib(m.start_kib),
        mib(m.peak_kib),
        mib(m.after_kib)
    ));
    daemon.stop().await?;
    Ok(m)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl DaemonReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "DAEMON MEMORY (`solstice run`, capacity 1, {} job(s) per case on image {}, a fresh daemon per case)\n",
            self.jobs, self.image
        );
        out.push_str(&format!(
            "  {:<50} {:>10} {:>10} {:>10}\n",
            "", "start", "peak", "after"
        ));
        for (name, m) in [
            ("baseline: `run: 'true'` jobs", &self.plain),
            ("jobs using a fetched action (2 MiB file)", &self.actions),
        ] {
            out.push_str(&format!(
                "  {name:<50} {:>10} {:>10} {:>10}\n",
                mib(m.start_kib),
                mib(m.peak_kib),
                mib(m.after_kib)
            ));
        }
        let d = |a: u64, b: u64| (a as f64 - b as f64) / 1024.0;
        let r = |a: u64, b: u64| a as f64 / (b as f64).max(1.0);
        out.push_str(&format!(
            "  {:<50} {:>+6.1} MiB ({:.2}x) peak, {:>+6.1} MiB ({:.2}x) after\n",
            "with the action cache in use",
            d(self.actions.peak_kib, self.plain.peak_kib),
            r(self.actions.peak_kib, self.plain.peak_kib),
            d(self.actions.after_kib, self.plain.after_kib),
            r(self.actions.after_kib, self.plain.after_kib)
        ));
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn workflows_parse_with_k_steps_of_each_kind() {
        let wf = crate::workflow::parse_workflow(&steps_workflow(3)).unwrap();
        assert_eq!(wf.jobs["bench"].steps.len(), 9);
        let text = steps_workflow(3);
        assert!(text.contains("uses: bench/noop-js@v1"));
        assert!(text.contains("uses: bench/noop-composite@v1"));
        crate::workflow::parse_workflow(&action_payload("tiny")).unwrap();
    }

    #[test]
    fn steps_report_says_when_node_is_missing() {
        let s = |m| StepStats {
            first: ms(m),
            mean: ms(m),
            median: ms(m),
        };
        let mut r = StepsReport {
            image: "tiny".into(),
            accel: "tcg".into(),
            k: 5,
            run: s(100),
            composite: s(150),
            javascript: Ok(s(400)),
        };
        let text = r.render();
        assert!(text.contains("node start-up"), "{text}");
        assert!(text.contains("+250 ms"), "{text}");
        assert!(text.contains("4.00x"), "{text}");
        r.javascript = Err("needs Node.js".into());
        let text = r.render();
        assert!(
            text.contains("no usable node in image tiny: needs Node.js"),
            "{text}"
        );
    }

    #[test]
    fn stats_and_ratios() {
        let st = StepStats::of(&[ms(1), ms(2), ms(6)]);
        assert_eq!(st.mean, ms(3));
        assert_eq!(st.first, ms(1));
        assert_eq!(st.median, ms(2));
        assert!((ratio(ms(30), ms(10)) - 3.0).abs() < 1e-9);
        assert!(ratio(ms(1), Duration::ZERO).is_infinite());
    }
}

//! Drives one job's steps through a guest session and reports [`JobEvent`]s.
//!
//! Per `run:` step the guest sees **one** exec: `cd STEPS && tar xf - && exec sh
//! step-N/wrapper.sh`, with a small tar (script, wrapper, empty file-command
//! files) on stdin. The wrapper exports the environment, enters the working
//! directory, runs the script, then prints a random marker line followed by the
//! contents of `GITHUB_ENV`/`GITHUB_OUTPUT`/`GITHUB_PATH`/`GITHUB_STEP_SUMMARY`,
//! so no second round trip is needed to read them back. A timeout or
//! cancellation costs one more exec (`kill -TERM` of the step's process group,
//! then `kill -KILL` after [`KILL_GRACE`]).
//!
//! Every event goes through one [`Emitter`], which masks secrets and values
//! registered with `::add-mask::`, so no sink ever sees an unmasked line.
//!
//! `::debug::` lines are emitted (as [`LineKind::Debug`]) only when the secret or
//! variable `ACTIONS_STEP_DEBUG` is `true`, as on GitHub; otherwise they are
//! dropped. `RUNNER_DEBUG=1` is set when `ACTIONS_RUNNER_DEBUG` is `true`.

pub mod archive;
pub mod checkout;
pub mod clock;
pub mod commands;
pub mod env;
pub mod filecmd;
pub mod mask;
pub mod preflight;
pub mod shell;

use crate::config::GuestOs;
use crate::events::{Conclusion, EventSink, JobEvent, LineKind};
use crate::guest::{GuestError, GuestSession, OutputChunk, Stream, shell_quote};
use crate::secret::Secret;
use crate::workflow::expr::{Contexts, JobStatus, Value, evaluate_condition, interpolate};
use crate::workflow::{Job, Step, Workflow};
use commands::{CommandState, LineAction, LineSplitter};
use env::{GuestLayout, RunnerVarsInput};
use indexmap::IndexMap;
use mask::Masker;
use serde_json::{Map, json};
use shell::{FileDump, ResolvedShell, WrapperSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Time between `kill -TERM` and `kill -KILL` of a step's processes, and after
/// `-KILL` before the step is abandoned.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// Timeout of a job without `timeout-minutes`: 180 minutes. Not GitHub's
/// 360: Forgejo and Gitea fail any task after 3 hours
/// (`ENDLESS_TASK_TIMEOUT`), so a longer default would only let the forge,
/// rather than the runner, end the job. `solstice exec` uses it too.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(180 * 60);
/// Upper bound for each `always()`/`cancelled()` step that runs after the job
/// was cancelled or timed out.
pub const AFTER_CANCEL_STEP_LIMIT: Duration = Duration::from_secs(5 * 60);
/// Upper bound for each of the clock's execs (reading, setting).
const CLOCK_EXEC_LIMIT: Duration = Duration::from_secs(15);
/// How long to wait for the output of a finished exec to drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// After the wrapper reports the end, how long to wait for the command itself to
/// finish before the step is considered done (a background process it left may
/// keep the channel open; GitHub does not wait for those either).
const END_GRACE: Duration = Duration::from_millis(500);

/// Everything needed to run one job. Its `Debug` leaves out the contexts and
/// environment, which can hold tokens (`github.token`, runtime tokens).
#[derive(Clone)]
pub struct JobSpec {
    pub workflow: Workflow,
    /// Key of the job in `workflow.jobs`.
    pub job_id: String,
    /// This job's matrix combination (empty without a matrix).
    pub matrix: IndexMap<String, Value>,
    /// The `github` context object (`repository`, `sha`, `ref`, `event`, ...).
    pub github: Value,
    pub secrets: BTreeMap<String, Secret>,
    pub vars: BTreeMap<String, String>,
    pub inputs: Value,
    pub needs: Value,
    pub runner: RunnerInfo,
    /// `--env K=V`, applied at the runner-variables level.
    pub extra_env: IndexMap<String, String>,
    pub checkout: CheckoutSource,
    /// Cap for the job's `timeout-minutes`.
    pub max_job_timeout: Option<Duration>,
    /// More values to mask in every line (runtime tokens that are not secrets
    /// of the job).
    pub extra_masks: Vec<Secret>,
    /// Where `uses: owner/repo@ref` would be fetched from (the forge's
    /// default-actions URL); named in the error for unsupported actions.
    pub default_actions_url: Option<String>,
}

impl std::fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSpec")
            .field("job_id", &self.job_id)
            .field("matrix", &self.matrix)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("extra_env", &self.extra_env.keys().collect::<Vec<_>>())
            .field("runner", &self.runner)
            .field("max_job_timeout", &self.max_job_timeout)
            .field("default_actions_url", &self.default_actions_url)
            .finish_non_exhaustive()
    }
}

/// The machine the job runs on.
#[derive(Debug, Clone)]
pub struct RunnerInfo {
    pub os: GuestOs,
    pub name: String,
    /// `RUNNER_ARCH`, e.g. `X64`.
    pub arch: String,
    /// Guest base directory; `None` = `$HOME` in the guest.
    pub home: Option<String>,
    /// The image's `path_prepend`: put in front of the guest's `PATH` in
    /// every step, behind the job's `GITHUB_PATH` entries.
    pub path_prepend: Vec<String>,
    /// The image's `node`: where JavaScript actions find Node.js; `None` =
    /// `node` on `PATH`.
    pub node: Option<String>,
}

impl RunnerInfo {
    /// The runner `name` on `image` (x86-64, `$HOME` as base directory).
    pub fn for_image(image: &crate::config::ImageConfig, name: String) -> RunnerInfo {
        RunnerInfo {
            os: image.os,
            name,
            arch: "X64".into(),
            home: None,
            path_prepend: image.path_prepend.clone(),
            node: image.node.clone(),
        }
    }

    /// Adopts `image`'s settings (guest OS, `PATH` additions, `node`).
    pub fn use_image(&mut self, image: &crate::config::ImageConfig) {
        self.os = image.os;
        self.path_prepend = image.path_prepend.clone();
        self.node = image.node.clone();
    }
}

/// Where `actions/checkout` gets the code from.
#[derive(Debug, Clone)]
pub enum CheckoutSource {
    /// Nothing to check out: the step logs a warning and succeeds.
    None,
    /// Copy this host directory (git-aware) into the guest, leaving out the
    /// directories in `exclude` (Solstice's own state directory, when it lies
    /// inside the tree).
    LocalTree {
        root: PathBuf,
        exclude: Vec<PathBuf>,
    },
    /// Clone inside the guest.
    Remote {
        server_url: String,
        /// `owner/name`
        repository: String,
        git_ref: String,
        sha: String,
        token: Option<Secret>,
        /// Where a guest without git gets its checkout fetched on the host
        /// (the job's directory); `None`: the system's temporary directory.
        host_dir: Option<PathBuf>,
    },
}

/// The record of one step.
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// Index in the job's `steps` (0-based, as in the events).
    pub index: usize,
    pub id: Option<String>,
    /// Masked display name.
    pub name: String,
    pub outcome: Conclusion,
    pub conclusion: Conclusion,
    pub outputs: IndexMap<String, String>,
    pub duration: Duration,
}

/// The result of [`run_job`].
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub conclusion: Conclusion,
    /// Job `outputs`, evaluated at the end. Outputs that contain a secret are dropped.
    pub outputs: IndexMap<String, String>,
    pub steps: Vec<StepRecord>,
    /// The job hit its `timeout-minutes` (or the host-wide cap). Its
    /// conclusion is then `Failure`, as on GitHub; the forge reporter reports
    /// such a job as cancelled, as forgejo-runner does for its own timeout.
    pub timed_out: bool,
}

/// The single exit for events: masks every text before the sink sees it.
struct Emitter<'a> {
    sink: &'a dyn EventSink,
    masker: Mutex<Masker>,
}

impl Emitter<'_> {
    fn mask(&self, s: &str) -> String {
        match self.masker.lock() {
            Ok(m) => m.mask(s),
            Err(p) => p.into_inner().mask(s),
        }
    }

    /// Where a too-long line may be cut without splitting a secret.
    fn safe_cut(&self, piece: &[u8]) -> usize {
        match self.masker.lock() {
            Ok(m) => m.safe_cut(piece),
            Err(p) => p.into_inner().safe_cut(piece),
        }
    }

    fn add_mask(&self, value: &str) {
        match self.masker.lock() {
            Ok(mut m) => m.add(value),
            Err(p) => p.into_inner().add(value),
        }
    }

    fn contains_secret(&self, s: &str) -> bool {
        match self.masker.lock() {
            Ok(m) => m.contains_secret(s),
            Err(p) => p.into_inner().contains_secret(s),
        }
    }

    fn emit(&self, event: JobEvent) {
        let event = match event {
            JobEvent::Line { step, kind, text } => JobEvent::Line {
                step,
                kind,
                text: self.mask(&text),
            },
            JobEvent::StepStarted { index, name } => JobEvent::StepStarted {
                index,
                name: self.mask(&name),
            },
            JobEvent::StepSummary { index, markdown } => JobEvent::StepSummary {
                index,
                markdown: self.mask(&markdown),
            },
            JobEvent::Phase { phase, detail } => JobEvent::Phase {
                phase,
                detail: self.mask(&detail),
            },
            other => other,
        };
        self.sink.emit(event);
    }

    fn line(&self, step: Option<usize>, kind: LineKind, text: impl Into<String>) {
        for l in text.into().split('\n') {
            self.emit(JobEvent::Line {
                step,
                kind: kind.clone(),
                text: l.to_string(),
            });
        }
    }

    fn runner(&self, step: Option<usize>, text: impl Into<String>) {
        self.line(step, LineKind::Runner, text);
    }

    fn error(&self, step: Option<usize>, text: impl Into<String>) {
        self.line(step, LineKind::Annotation("error".into()), text);
    }
}

/// Why a running exec was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    StepTimeout,
    JobTimeout,
    Cancelled,
}

/// The result of one wrapped exec.
struct ExecResult {
    status: Result<u32, GuestError>,
    stop: Option<Stop>,
    dump: Option<FileDump>,
}

/// Turns a step's output chunks into masked events and finds the file dump.
struct StepOutput<'e, 'a> {
    em: &'e Emitter<'a>,
    index: usize,
    marker: Option<String>,
    stdout: LineSplitter,
    stderr: LineSplitter,
    cmds: CommandState,
    pending_empty: bool,
    dump: Option<Vec<u8>>,
    /// The exec runs only Solstice's own plumbing (no user code): its stdout
    /// lines are runner lines and its stderr lines errors, with no workflow
    /// commands.
    own: bool,
}

impl<'e, 'a> StepOutput<'e, 'a> {
    fn new(em: &'e Emitter<'a>, index: usize, marker: Option<String>, debug: bool) -> Self {
        StepOutput {
            em,
            index,
            marker,
            stdout: LineSplitter::default(),
            stderr: LineSplitter::default(),
            cmds: CommandState::new(debug),
            pending_empty: false,
            dump: None,
            own: false,
        }
    }

    fn handle(&mut self, line: &str, stream: Stream) {
        if self.own {
            let kind = match stream {
                Stream::Stdout => LineKind::Runner,
                Stream::Stderr => LineKind::Annotation("error".into()),
            };
            self.em.emit(JobEvent::Line {
                step: Some(self.index),
                kind,
                text: line.to_string(),
            });
            return;
        }
        match self.cmds.process(line, stream) {
            LineAction::Emit(kind, text) => self.em.emit(JobEvent::Line {
                step: Some(self.index),
                kind,
                text,
            }),
            LineAction::AddMask(v) => self.em.add_mask(&v),
            LineAction::Drop => {}
        }
    }

    fn stdout_line(&mut self, line: String) {
        if self.marker.as_deref() == Some(line.as_str()) {
            self.pending_empty = false;
            self.dump = Some(self.stdout.take_rest());
            return;
        }
        if self.pending_empty {
            self.pending_empty = false;
            self.handle("", Stream::Stdout);
        }
        if line.is_empty() && self.marker.is_some() {
            // Held back: the wrapper prints an empty line before its marker.
            self.pending_empty = true;
        } else {
            self.handle(&line, Stream::Stdout);
        }
    }

    /// The step's exit status once the wrapper's final `MARKER end N` line has
    /// arrived: the step is over even if a background process it started still
    /// holds the output channel open.
    fn end_status(&self) -> Option<u32> {
        let (dump, marker) = (self.dump.as_ref()?, self.marker.as_ref()?);
        let body = dump.strip_suffix(b"\n")?;
        let last = match body.iter().rposition(|&b| b == b'\n') {
            Some(i) => &body[i + 1..],
            None => body,
        };
        std::str::from_utf8(last)
            .ok()?
            .strip_prefix(marker.as_str())?
            .strip_prefix(" end ")?
            .trim()
            .parse()
            .ok()
    }

    fn feed(&mut self, chunk: OutputChunk) {
        match chunk.stream {
            Stream::Stdout => {
                if let Some(d) = self.dump.as_mut() {
                    // Four files of at most FILE_COMMAND_LIMIT each, plus headers;
                    // anything beyond that is not the wrapper's and is dropped.
                    if d.len() < 4 * shell::FILE_COMMAND_LIMIT + 4096 {
                        d.extend_from_slice(&chunk.data);
                    }
                    return;
                }
                let em = self.em;
                let lines = self
                    .stdout
                    .feed_with(&chunk.data, &|piece: &[u8]| em.safe_cut(piece));
                let mut iter = lines.into_iter();
                for line in iter.by_ref() {
                    self.stdout_line(line);
                    if self.dump.is_some() {
                        break;
                    }
                }
                // Lines already split after the marker belong to the dump.
                if let Some(d) = self.dump.as_mut() {
                    let mut rest = Vec::new();
                    for l in iter {
                        rest.extend_from_slice(l.as_bytes());
                        rest.push(b'\n');
                    }
                    rest.extend_from_slice(d);
                    *d = rest;
                }
            }
            Stream::Stderr => {
                let em = self.em;
                for line in self
                    .stderr
                    .feed_with(&chunk.data, &|piece: &[u8]| em.safe_cut(piece))
                {
                    self.handle(&line, Stream::Stderr);
                }
            }
        }
    }

    fn finish(mut self) -> Option<FileDump> {
        if self.dump.is_none() {
            if self.pending_empty {
                self.handle("", Stream::Stdout);
            }
            if let Some(l) = self.stdout.flush() {
                self.handle(&l, Stream::Stdout);
            }
        }
        if let Some(l) = self.stderr.flush() {
            self.handle(&l, Stream::Stderr);
        }
        let marker = self.marker.take()?;
        self.dump.map(|d| shell::parse_dump(&d, &marker))
    }
}

/// Mutable state of a running job.
struct JobState {
    status: JobStatus,
    /// Set when the job timed out (job conclusion is then `failure`).
    timed_out: bool,
    env_files: IndexMap<String, String>,
    path_prefix: Vec<String>,
    steps_ctx: Map<String, Value>,
    records: Vec<StepRecord>,
}

/// Results of the probe at job start.
struct Probe {
    home: String,
    has_bash: bool,
    /// The guest user is root (else `sudo -n` is tried to set the clock).
    root: bool,
    clock: Option<clock::Offset>,
}

struct Runtime<'a> {
    spec: &'a JobSpec,
    job: &'a Job,
    session: &'a dyn GuestSession,
    em: Emitter<'a>,
    cancel: CancellationToken,
    layout: GuestLayout,
    has_bash: bool,
    /// The guest user is root.
    root: bool,
    job_deadline: Instant,
    job_timeout: Duration,
    /// Workflow and job `env`, evaluated.
    base_env: IndexMap<String, String>,
    debug: bool,
}

fn is_true(s: &str) -> bool {
    s.trim().eq_ignore_ascii_case("true")
}

fn conclusion_str(c: Conclusion) -> &'static str {
    c.as_str()
}

/// Parses a `timeout-minutes` value (fractions allowed).
/// Longest timeout honoured (ten years): larger values are clamped, so any
/// number a user writes stays a valid deadline.
const MAX_TIMEOUT_MINUTES: f64 = 10.0 * 365.0 * 24.0 * 60.0;

fn minutes(s: &str) -> Option<Duration> {
    let m: f64 = s.trim().parse().ok()?;
    (m.is_finite() && m > 0.0).then(|| Duration::from_secs_f64(m.min(MAX_TIMEOUT_MINUTES) * 60.0))
}

/// Runs one job and returns its outcome. Never panics on bad input: problems
/// become failed steps or a failed job with a message.
pub async fn run_job(
    spec: &JobSpec,
    session: &dyn GuestSession,
    sink: &dyn EventSink,
    cancel: CancellationToken,
) -> JobOutcome {
    let started = Instant::now();
    let mut masker = Masker::new();
    for s in spec.secrets.values().chain(&spec.extra_masks) {
        masker.add(s.expose());
    }
    if let CheckoutSource::Remote { token: Some(t), .. } = &spec.checkout {
        masker.add(t.expose());
        masker.add(&checkout::auth_header_value(t.expose()));
    }
    let em = Emitter {
        sink,
        masker: Mutex::new(masker),
    };
    let finish = |em: &Emitter<'_>, conclusion: Conclusion, outputs, steps| {
        em.emit(JobEvent::JobFinished {
            conclusion,
            duration: started.elapsed(),
        });
        JobOutcome {
            conclusion,
            outputs,
            steps,
            timed_out: false,
        }
    };
    let Some(job) = spec.workflow.jobs.get(&spec.job_id) else {
        em.error(
            None,
            format!(
                "The workflow has no job `{}`; pick one of: {}",
                spec.job_id,
                spec.workflow
                    .jobs
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        return finish(&em, Conclusion::Failure, IndexMap::new(), Vec::new());
    };
    if job.container.is_some() || job.services.is_some() {
        em.error(
            None,
            "`container:` and `services:` are not supported: every job already runs in its own VM",
        );
        return finish(&em, Conclusion::Failure, IndexMap::new(), Vec::new());
    }
    let flag = |name: &str| {
        spec.secrets.get(name).is_some_and(|s| is_true(s.expose()))
            || spec.vars.get(name).is_some_and(|v| is_true(v))
    };
    let debug = flag("ACTIONS_STEP_DEBUG");
    let runner_debug = flag("ACTIONS_RUNNER_DEBUG");

    let mut rt = Runtime {
        spec,
        job,
        session,
        em,
        cancel,
        layout: GuestLayout::new("/", "workspace"),
        has_bash: false,
        root: false,
        job_deadline: started + DEFAULT_JOB_TIMEOUT,
        job_timeout: DEFAULT_JOB_TIMEOUT,
        base_env: IndexMap::new(),
        debug,
    };
    let mut state = JobState {
        status: JobStatus::Success,
        timed_out: false,
        env_files: IndexMap::new(),
        path_prefix: Vec::new(),
        steps_ctx: Map::new(),
        records: Vec::new(),
    };

    // Workflow and job env, then the job timeout.
    let mut base_env = IndexMap::new();
    for (scope, map) in [("workflow", &spec.workflow.env), ("job", &job.env)] {
        for (k, v) in map {
            let ctx = rt.contexts(&base_env, &state);
            match interpolate(&v.0, &ctx) {
                Ok(val) => {
                    base_env.insert(k.clone(), val);
                }
                Err(e) => {
                    rt.em.error(None, format!("Invalid {scope} env `{k}`: {e}"));
                    return finish(&rt.em, Conclusion::Failure, IndexMap::new(), Vec::new());
                }
            }
        }
    }
    rt.base_env = base_env;
    let mut job_timeout = DEFAULT_JOB_TIMEOUT;
    if let Some(t) = &job.timeout_minutes {
        let ctx = rt.contexts(&rt.base_env, &state);
        match interpolate(&t.0, &ctx).ok().as_deref().and_then(minutes) {
            Some(d) => job_timeout = d,
            None => {
                rt.em.error(
                    None,
                    format!(
                        "Invalid job timeout-minutes `{}`: expected a positive number",
                        t.0
                    ),
                );
                return finish(&rt.em, Conclusion::Failure, IndexMap::new(), Vec::new());
            }
        }
    }
    if let Some(max) = spec.max_job_timeout {
        job_timeout = job_timeout.min(max);
    }
    rt.job_deadline = started + job_timeout;
    rt.job_timeout = job_timeout;

    // Probe the guest and create the layout.
    match rt.probe().await {
        Ok(p) => {
            rt.layout = GuestLayout::new(&p.home, &env::repo_name(&spec.github));
            rt.has_bash = p.has_bash;
            rt.root = p.root;
            match p.clock {
                Some(off) => rt.sync_clock(off, true).await,
                None => tracing::debug!(
                    target: "solstice::clock",
                    job = %spec.job_id,
                    "guest clock: no reading at job start"
                ),
            }
        }
        Err(msg) => {
            let conclusion = if rt.cancel.is_cancelled() {
                Conclusion::Cancelled
            } else {
                Conclusion::Failure
            };
            rt.em.error(None, msg);
            return finish(&rt.em, conclusion, IndexMap::new(), Vec::new());
        }
    }

    for (index, step) in job.steps.iter().enumerate() {
        rt.check_job_state(&mut state);
        let t = Instant::now();
        rt.run_step(index, step, &mut state, runner_debug).await;
        // A guest can fall behind during a long step (TCG under load).
        if t.elapsed() >= clock::RECHECK_AFTER && !rt.cancel.is_cancelled() {
            rt.check_clock().await;
        }
    }
    rt.check_job_state(&mut state);

    // Job outputs.
    let mut outputs = IndexMap::new();
    let ctx = rt.contexts(&rt.env_context(&state, None), &state);
    for (name, template) in &job.outputs {
        match interpolate(template, &ctx) {
            Ok(v) if rt.em.contains_secret(&v) => rt.em.line(
                None,
                LineKind::Annotation("warning".into()),
                format!("Skipped job output `{name}` because it may contain a secret"),
            ),
            Ok(v) => {
                outputs.insert(name.clone(), v);
            }
            Err(e) => rt
                .em
                .error(None, format!("Invalid job output `{name}`: {e}")),
        }
    }
    let conclusion = if state.timed_out {
        Conclusion::Failure
    } else {
        match state.status {
            JobStatus::Success => Conclusion::Success,
            JobStatus::Failure => Conclusion::Failure,
            JobStatus::Cancelled => Conclusion::Cancelled,
        }
    };
    let records = std::mem::take(&mut state.records);
    let mut outcome = finish(&rt.em, conclusion, outputs, records);
    outcome.timed_out = state.timed_out;
    outcome
}

impl<'a> Runtime<'a> {
    /// Marks the job cancelled or timed out when that has happened.
    fn check_job_state(&self, state: &mut JobState) {
        if state.status == JobStatus::Cancelled {
            return;
        }
        if self.cancel.is_cancelled() {
            state.status = JobStatus::Cancelled;
            self.em.runner(None, "The job was cancelled");
        } else if Instant::now() >= self.job_deadline {
            self.mark_timed_out(state);
        }
    }

    fn mark_timed_out(&self, state: &mut JobState) {
        if state.timed_out {
            return;
        }
        state.timed_out = true;
        state.status = JobStatus::Cancelled;
        self.em.error(
            None,
            format!(
                "The job has exceeded its maximum execution time of {:.1} minutes (timeout-minutes); \
                 the remaining steps run only with `if: always()` or `cancelled()`",
                self.job_timeout.as_secs_f64() / 60.0
            ),
        );
    }

    /// The `env` context: workflow+job env, `GITHUB_ENV` additions, then step env.
    fn env_context(
        &self,
        state: &JobState,
        step_env: Option<&IndexMap<String, String>>,
    ) -> IndexMap<String, String> {
        let mut env = self.base_env.clone();
        for (k, v) in &state.env_files {
            env.insert(k.clone(), v.clone());
        }
        if let Some(s) = step_env {
            for (k, v) in s {
                env.insert(k.clone(), v.clone());
            }
        }
        env
    }

    fn contexts(&self, env: &IndexMap<String, String>, state: &JobState) -> Contexts {
        let spec = self.spec;
        let mut values = BTreeMap::new();
        let mut github = match &spec.github {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        github.insert("job".into(), json!(spec.job_id));
        github.insert("workspace".into(), json!(self.layout.workspace));
        github
            .entry("workflow")
            .or_insert_with(|| json!(spec.workflow.name.clone().unwrap_or_default()));
        if let Some(t) = spec.secrets.get("GITHUB_TOKEN") {
            github.entry("token").or_insert_with(|| json!(t.expose()));
        }
        values.insert("github".into(), Value::Object(github));
        values.insert(
            "env".into(),
            Value::Object(env.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
        );
        values.insert(
            "vars".into(),
            Value::Object(
                spec.vars
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect(),
            ),
        );
        values.insert(
            "secrets".into(),
            Value::Object(
                spec.secrets
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v.expose())))
                    .collect(),
            ),
        );
        values.insert(
            "matrix".into(),
            Value::Object(
                spec.matrix
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
        );
        values.insert("needs".into(), spec.needs.clone());
        values.insert("inputs".into(), spec.inputs.clone());
        values.insert("steps".into(), Value::Object(state.steps_ctx.clone()));
        let status = match state.status {
            JobStatus::Success => "success",
            JobStatus::Failure => "failure",
            JobStatus::Cancelled => "cancelled",
        };
        values.insert("job".into(), json!({ "status": status }));
        values.insert(
            "runner".into(),
            json!({
                "os": spec.runner.os.runner_os(),
                "arch": spec.runner.arch,
                "name": spec.runner.name,
                "temp": self.layout.temp,
                "tool_cache": self.layout.tool_cache,
                "debug": if self.debug { "1" } else { "" },
            }),
        );
        values.insert(
            "strategy".into(),
            json!({ "fail-fast": true, "job-index": 0, "job-total": 1, "max-parallel": 1 }),
        );
        Contexts {
            values,
            status: state.status,
        }
    }

    /// One exec: reports `$HOME`, bash and the OS, creates the layout and writes
    /// the event file.
    async fn probe(&self) -> Result<Probe, String> {
        let repo = env::repo_name(&self.spec.github);
        let home = match &self.spec.runner.home {
            Some(h) => shell_quote(h),
            None => "\"$HOME\"".to_string(),
        };
        // The clock is read first: the time its line reaches the host is
        // the other half of the measurement.
        // The image's `PATH` additions count for finding bash, as in steps.
        let path = if self.spec.runner.path_prepend.is_empty() {
            String::new()
        } else {
            format!(
                "PATH={}:\"$PATH\"; export PATH; ",
                shell_quote(&self.spec.runner.path_prepend.join(":"))
            )
        };
        let cmd = format!(
            "{read}; {path}H={home}; echo \"solstice-home=$H\"; echo \"solstice-bash=$(command -v bash 2>/dev/null)\"; \
             echo \"solstice-uid=$(id -u 2>/dev/null)\"; \
             cd \"$H\" && mkdir -p work/{r}/{r} _temp/_solstice _temp/_github_workflow _tool && \
             cd _temp/_github_workflow && tar xmf -",
            read = clock::READ,
            r = shell_quote(&repo)
        );
        let event = self
            .spec
            .github
            .get("event")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let event_json = serde_json::to_vec_pretty(&event).unwrap_or_else(|_| b"{}".to_vec());
        let tar = build_tar(&[TarFile::file("event.json", event_json, 0o600)])
            .map_err(|e| format!("Could not build the job setup archive: {e}"))?;
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
        let exec = self.session.exec(&cmd, &tar, tx);
        let collect = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let mut clock_at = None;
            while let Some(c) = rx.recv().await {
                match c.stream {
                    Stream::Stdout => {
                        out.extend_from_slice(&c.data);
                        if clock_at.is_none() && clock_line_done(&out) {
                            clock_at = Some(std::time::SystemTime::now());
                        }
                    }
                    Stream::Stderr => err.extend_from_slice(&c.data),
                }
            }
            (out, err, clock_at)
        };
        let work = async { tokio::join!(exec, collect) };
        let deadline = tokio::time::Instant::from_std(self.job_deadline);
        let (status, (out, err, clock_at)) = tokio::select! {
            r = work => r,
            _ = self.cancel.cancelled() => return Err("The job was cancelled during setup".into()),
            _ = tokio::time::sleep_until(deadline) => return Err("The job timed out during setup".into()),
        };
        let status = status.map_err(|e| format!("Could not prepare the guest: {e}"))?;
        let out = String::from_utf8_lossy(&out);
        if status != 0 {
            return Err(format!(
                "Could not prepare the guest (exit status {status}): {}",
                String::from_utf8_lossy(&err).trim()
            ));
        }
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let home = field("solstice-home=");
        if home.is_empty() {
            return Err(
                "The guest has no home directory ($HOME is empty); set the image's home".into(),
            );
        }
        let clock = clock::parse(&out)
            .zip(clock_at)
            .map(|(r, at)| clock::offset(r, at));
        Ok(Probe {
            home,
            has_bash: !field("solstice-bash=").is_empty(),
            root: field("solstice-uid=") == "0",
            clock,
        })
    }

    /// Sets the guest's clock from the host's when `off` says it is off (see
    /// [`clock::should_set`]) and the session is a throw-away guest. Nothing
    /// goes to the job log.
    async fn sync_clock(&self, off: clock::Offset, at_start: bool) {
        let set = self.session.owns_clock() && clock::should_set(&off, at_start);
        tracing::debug!(
            target: "solstice::clock",
            job = %self.spec.job_id,
            at_start,
            offset = %format!("{:+.3}", off.estimate),
            low = %format!("{:+.3}", off.low),
            kind = ?off.kind,
            set,
            "guest clock measured"
        );
        if !set {
            return;
        }
        let cmd = clock::set_command(std::time::SystemTime::now(), off.kind, !self.root);
        match self.quiet_exec(&cmd).await {
            Some((_, out)) if out.contains(clock::SET_OK) => tracing::debug!(
                target: "solstice::clock",
                job = %self.spec.job_id,
                "guest clock set from the host's"
            ),
            _ => tracing::debug!(
                target: "solstice::clock",
                job = %self.spec.job_id,
                root = self.root,
                "guest clock could not be set (needs root or passwordless sudo -n); left as it is"
            ),
        }
    }

    /// Reads the guest's clock in its own exec and sets it forward if it fell behind.
    async fn check_clock(&self) {
        let sent = std::time::SystemTime::now();
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
        let exec = self.session.exec(clock::READ, b"", tx);
        let collect = async {
            let mut out = Vec::new();
            let mut at = None;
            while let Some(c) = rx.recv().await {
                if c.stream == Stream::Stdout {
                    out.extend_from_slice(&c.data);
                    if at.is_none() && clock_line_done(&out) {
                        at = Some(std::time::SystemTime::now());
                    }
                }
            }
            (out, at)
        };
        let Ok((_, (out, at))) =
            tokio::time::timeout(CLOCK_EXEC_LIMIT, async { tokio::join!(exec, collect) }).await
        else {
            tracing::debug!(target: "solstice::clock", "guest clock: the reading timed out");
            return;
        };
        match clock::parse(&String::from_utf8_lossy(&out)).zip(at) {
            Some((r, at)) => {
                tracing::debug!(
                    target: "solstice::clock",
                    job = %self.spec.job_id,
                    round_trip = %format!("{:.3}", at.duration_since(sent).unwrap_or_default().as_secs_f64()),
                    "guest clock read after a long step"
                );
                self.sync_clock(clock::offset(r, at), false).await;
            }
            None => tracing::debug!(target: "solstice::clock", "guest clock: no reading"),
        }
    }

    /// Runs one of Solstice's own commands whose output stays out of the log;
    /// returns its status and stdout, or `None` when it failed or took too long.
    async fn quiet_exec(&self, cmd: &str) -> Option<(u32, String)> {
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
        let exec = self.session.exec(cmd, b"", tx);
        let collect = async {
            let mut out = Vec::new();
            while let Some(c) = rx.recv().await {
                if c.stream == Stream::Stdout {
                    out.extend_from_slice(&c.data);
                }
            }
            out
        };
        let (status, out) =
            tokio::time::timeout(CLOCK_EXEC_LIMIT, async { tokio::join!(exec, collect) })
                .await
                .ok()?;
        Some((status.ok()?, String::from_utf8_lossy(&out).into_owned()))
    }

    fn step_dir(&self, index: usize) -> String {
        format!("{}/step-{}", self.layout.steps_root, index + 1)
    }

    fn display_name(&self, step: &Step, ctx: &Contexts) -> String {
        if let Some(n) = &step.name {
            return interpolate(n, ctx).unwrap_or_else(|_| n.clone());
        }
        if let Some(run) = &step.run {
            let first = run.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let first = interpolate(first, ctx).unwrap_or_else(|_| first.to_string());
            return format!("Run {}", first.trim());
        }
        if let Some(u) = &step.uses {
            return format!("Run {u}");
        }
        "Step".into()
    }

    async fn run_step(&self, index: usize, step: &Step, state: &mut JobState, runner_debug: bool) {
        let started = Instant::now();
        let after_cancel = state.status == JobStatus::Cancelled;
        let base_ctx = self.contexts(&self.env_context(state, None), state);

        // Step env (may refer to the env context without the step's own values).
        let mut step_env = IndexMap::new();
        let mut setup_error: Option<String> = None;
        for (k, v) in &step.env {
            match interpolate(&v.0, &base_ctx) {
                Ok(val) => {
                    step_env.insert(k.clone(), val);
                }
                Err(e) => {
                    setup_error.get_or_insert(format!("Invalid step env `{k}`: {e}"));
                }
            }
        }
        let env_ctx = self.env_context(state, Some(&step_env));
        let ctx = self.contexts(&env_ctx, state);
        let name = self.display_name(step, &ctx);

        let explicit_if = step
            .if_
            .as_ref()
            .map(|s| s.0.trim())
            .filter(|s| !s.is_empty());
        let condition = explicit_if.unwrap_or("success()");
        let run_it = match evaluate_condition(condition, &ctx) {
            Ok(b) => b,
            Err(e) => {
                setup_error.get_or_insert(format!("Invalid `if:` condition: {e}"));
                true
            }
        };
        self.em.emit(JobEvent::StepStarted {
            index,
            name: name.clone(),
        });
        if !run_it {
            self.em
                .runner(Some(index), skip_reason(explicit_if, &ctx, state));
            self.record(
                state,
                index,
                step,
                name,
                Conclusion::Skipped,
                Conclusion::Skipped,
                IndexMap::new(),
                started,
            );
            return;
        }

        let continue_on_error = step
            .continue_on_error
            .as_ref()
            .map(|c| {
                interpolate(&c.0, &ctx)
                    .map(|v| is_true(&v))
                    .unwrap_or(false)
            })
            .unwrap_or(false);
        let step_timeout = match &step.timeout_minutes {
            None => None,
            Some(t) => match interpolate(&t.0, &ctx).ok().as_deref().and_then(minutes) {
                Some(d) => Some(d),
                None => {
                    setup_error.get_or_insert(format!(
                        "Invalid timeout-minutes `{}`: expected a positive number",
                        t.0
                    ));
                    None
                }
            },
        };

        let mut outputs = IndexMap::new();
        let outcome = if let Some(err) = setup_error {
            self.em.error(Some(index), err);
            Conclusion::Failure
        } else {
            let now = Instant::now();
            let mut deadline = step_timeout.map(|d| now + d);
            let mut stop_kind = Stop::StepTimeout;
            if after_cancel {
                let limit = now + AFTER_CANCEL_STEP_LIMIT;
                if deadline.is_none_or(|d| d > limit) {
                    deadline = Some(limit);
                    // Reported by the `after_cancel` branch below, not as a step timeout.
                    stop_kind = Stop::JobTimeout;
                }
            } else if deadline.is_none_or(|d| d >= self.job_deadline) {
                deadline = Some(self.job_deadline);
                stop_kind = Stop::JobTimeout;
            }
            let plan = StepRun {
                index,
                step,
                ctx: &ctx,
                step_env: &step_env,
                deadline,
                stop_kind,
                watch_cancel: !after_cancel,
                runner_debug,
            };
            match self.execute(&plan, state).await {
                Ok((res, step_outputs)) => {
                    outputs = step_outputs;
                    match res {
                        StepEnd::Success => Conclusion::Success,
                        StepEnd::Failure => Conclusion::Failure,
                        StepEnd::Stopped(Stop::StepTimeout) => {
                            self.em.error(
                                Some(index),
                                format!(
                                    "The step was stopped after its timeout-minutes ({})",
                                    step.timeout_minutes
                                        .as_ref()
                                        .map(|t| t.0.as_str())
                                        .unwrap_or("")
                                ),
                            );
                            Conclusion::Failure
                        }
                        StepEnd::Stopped(Stop::JobTimeout) => {
                            if after_cancel {
                                self.em.error(
                                    Some(index),
                                    format!(
                                        "The step was stopped: steps that run after the job was cancelled or timed out get at most {} minutes",
                                        AFTER_CANCEL_STEP_LIMIT.as_secs() / 60
                                    ),
                                );
                                Conclusion::Failure
                            } else {
                                self.mark_timed_out(state);
                                Conclusion::Cancelled
                            }
                        }
                        StepEnd::Stopped(Stop::Cancelled) => {
                            state.status = JobStatus::Cancelled;
                            self.em.runner(Some(index), "The step was cancelled");
                            Conclusion::Cancelled
                        }
                    }
                }
                Err(msg) => {
                    self.em.error(Some(index), msg);
                    Conclusion::Failure
                }
            }
        };
        let conclusion = if outcome == Conclusion::Failure && continue_on_error {
            Conclusion::Success
        } else {
            outcome
        };
        if conclusion == Conclusion::Failure && state.status == JobStatus::Success {
            state.status = JobStatus::Failure;
        }
        self.record(
            state, index, step, name, outcome, conclusion, outputs, started,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        state: &mut JobState,
        index: usize,
        step: &Step,
        name: String,
        outcome: Conclusion,
        conclusion: Conclusion,
        outputs: IndexMap<String, String>,
        started: Instant,
    ) {
        let duration = started.elapsed();
        self.em.emit(JobEvent::StepFinished {
            index,
            outcome,
            conclusion,
            duration,
        });
        if let Some(id) = &step.id {
            state.steps_ctx.insert(
                id.clone(),
                json!({
                    "outputs": outputs,
                    "outcome": conclusion_str(outcome),
                    "conclusion": conclusion_str(conclusion),
                }),
            );
        }
        state.records.push(StepRecord {
            index,
            id: step.id.clone(),
            name: self.em.mask(&name),
            outcome,
            conclusion,
            outputs,
            duration,
        });
    }

    /// Runs a step's `run:` or `uses:`; returns how it ended and its outputs, or
    /// an error message (the step fails).
    async fn execute(
        &self,
        plan: &StepRun<'_>,
        state: &mut JobState,
    ) -> Result<(StepEnd, IndexMap<String, String>), String> {
        let step = plan.step;
        let ctx = plan.ctx;
        let dir = self.step_dir(plan.index);
        let (script, ext, shell_cmd, extra) = match (&step.run, &step.uses) {
            (Some(_), Some(_)) => {
                return Err("A step cannot have both `run:` and `uses:`".into());
            }
            (None, None) => return Err("A step needs `run:` or `uses:`".into()),
            (Some(run), None) => {
                let script = interpolate(run, ctx).map_err(|e| format!("Invalid `run:`: {e}"))?;
                let shell_name = step
                    .shell
                    .clone()
                    .or_else(|| run_default(self.job, &self.spec.workflow, |d| d.shell.clone()));
                let shell = shell::resolve_shell(shell_name.as_deref(), self.has_bash)
                    .map_err(|e| e.to_string())?;
                (script, shell.extension(), shell, Vec::new())
            }
            (None, Some(uses)) if checkout::is_checkout(uses) => {
                let mut with = IndexMap::new();
                for (k, v) in &step.with {
                    let val =
                        interpolate(&v.0, ctx).map_err(|e| format!("Invalid `with.{k}`: {e}"))?;
                    // Input names are case-insensitive, as on GitHub.
                    with.insert(k.to_ascii_lowercase(), val);
                }
                match self.checkout_plan(plan.index, &with, &dir)? {
                    CheckoutPlan::Skip(msg) => {
                        self.em.line(
                            Some(plan.index),
                            LineKind::Annotation("warning".into()),
                            msg,
                        );
                        return Ok((StepEnd::Success, IndexMap::new()));
                    }
                    CheckoutPlan::Local { tar, dest, clean } => {
                        return self
                            .local_checkout(plan, tar, &dest, clean, "the local tree")
                            .await;
                    }
                    CheckoutPlan::Remote {
                        script,
                        extra,
                        host,
                    } => {
                        if !self.guest_has_git().await {
                            return self.host_checkout(plan, &host).await;
                        }
                        self.em.runner(
                            Some(plan.index),
                            format!(
                                "git is installed in the guest; fetching {}@{} there",
                                host.repository,
                                host.at()
                            ),
                        );
                        (
                            script,
                            "sh",
                            ResolvedShell::Template(vec!["sh".into(), "-e".into(), "{0}".into()]),
                            extra,
                        )
                    }
                }
            }
            (None, Some(uses)) => {
                let from = self
                    .spec
                    .default_actions_url
                    .as_deref()
                    .map(|u| format!("; it would come from {u}"))
                    .unwrap_or_default();
                return Err(format!(
                    "`uses: {uses}` is not supported yet (Solstice runs `run:` steps and the built-in actions/checkout){from}"
                ));
            }
        };

        // Environment, in precedence order.
        let action = step
            .id
            .clone()
            .unwrap_or_else(|| format!("__run_{}", plan.index + 1));
        let runner_vars = env::runner_variables(&RunnerVarsInput {
            github: &self.spec.github,
            layout: &self.layout,
            job_id: &self.spec.job_id,
            workflow_name: self.spec.workflow.name.as_deref().unwrap_or_default(),
            runner_os: self.spec.runner.os.runner_os(),
            runner_arch: &self.spec.runner.arch,
            runner_name: &self.spec.runner.name,
            action: &action,
            step_dir: &dir,
            debug: plan.runner_debug,
        });
        let mut merged: IndexMap<String, String> = self.base_env.clone();
        for (k, v) in runner_vars
            .clone()
            .into_iter()
            .chain(self.spec.extra_env.clone())
        {
            merged.insert(k, v);
        }
        for (k, v) in state.env_files.iter().chain(plan.step_env) {
            merged.insert(k.clone(), v.clone());
        }
        // As on GitHub, the default GITHUB_* and RUNNER_* variables cannot be
        // overridden (a redirected GITHUB_OUTPUT would silently lose outputs).
        for (k, v) in runner_vars {
            if k.starts_with("GITHUB_") || k.starts_with("RUNNER_") {
                merged.insert(k, v);
            }
        }
        let mut env_list = Vec::new();
        for (k, v) in merged {
            if shell::valid_env_name(&k) {
                env_list.push((k, v));
            } else {
                self.em.line(
                    Some(plan.index),
                    LineKind::Annotation("warning".into()),
                    format!("Skipped environment variable `{k}`: not a valid shell variable name"),
                );
            }
        }

        let wd_raw = step.working_directory.clone().or_else(|| {
            run_default(self.job, &self.spec.workflow, |d| {
                d.working_directory.clone()
            })
        });
        let wd = match wd_raw {
            Some(w) => Some(
                interpolate(&w, ctx).map_err(|e| format!("Invalid `working-directory`: {e}"))?,
            ),
            None => None,
        };
        let working_dir = self.layout.resolve(wd.as_deref());
        let script_path = format!("{dir}/script.{ext}");
        let marker = format!("__solstice_files_{:032x}__", rand::random::<u128>());
        let run_cmd = shell_cmd.command(&script_path);
        let wrapper = shell::render_wrapper(&WrapperSpec {
            step_dir: &dir,
            env: &env_list,
            image_path: &self.spec.runner.path_prepend,
            path_prefix: &state.path_prefix,
            working_dir: &working_dir,
            run: &run_cmd,
            marker: &marker,
        });
        let name = format!("step-{}", plan.index + 1);
        let mut script_bytes = script.into_bytes();
        if !script_bytes.ends_with(b"\n") {
            script_bytes.push(b'\n');
        }
        let mut files = vec![
            TarFile::dir(&name),
            TarFile::file(&format!("{name}/script.{ext}"), script_bytes, 0o700),
            TarFile::file(&format!("{name}/wrapper.sh"), wrapper.into_bytes(), 0o700),
        ];
        for f in shell::FILE_COMMANDS {
            files.push(TarFile::file(&format!("{name}/{f}"), Vec::new(), 0o600));
        }
        for (fname, bytes) in extra {
            files.push(TarFile::file(&format!("{name}/{fname}"), bytes, 0o600));
        }
        let tar =
            build_tar(&files).map_err(|e| format!("Could not build the step archive: {e}"))?;
        let cmd = step_command(&self.layout.steps_root, &format!("{dir}/wrapper.sh"));
        let res = self.exec_step(plan, &cmd, &tar, Some(marker), &dir).await;
        self.finish_exec(plan, res, state)
    }

    /// Applies the file commands and maps an exec result to a step end.
    fn finish_exec(
        &self,
        plan: &StepRun<'_>,
        res: ExecResult,
        state: &mut JobState,
    ) -> Result<(StepEnd, IndexMap<String, String>), String> {
        let status = match res.status {
            Ok(s) => s,
            Err(e) => {
                if let Some(stop) = res.stop {
                    return Ok((StepEnd::Stopped(stop), IndexMap::new()));
                }
                return Err(format!("The step could not run in the guest: {e}"));
            }
        };
        if let Some(stop) = res.stop {
            return Ok((StepEnd::Stopped(stop), IndexMap::new()));
        }
        let mut outputs = IndexMap::new();
        let mut failed = status != 0;
        if let Some(dump) = res.dump {
            match filecmd::parse_key_values(&dump.env) {
                Ok(pairs) => {
                    for (k, v) in pairs {
                        state.env_files.insert(k, v);
                    }
                }
                Err(e) => {
                    self.em.error(Some(plan.index), format!("GITHUB_ENV: {e}"));
                    failed = true;
                }
            }
            match filecmd::parse_key_values(&dump.output) {
                Ok(pairs) => outputs.extend(pairs),
                Err(e) => {
                    self.em
                        .error(Some(plan.index), format!("GITHUB_OUTPUT: {e}"));
                    failed = true;
                }
            }
            filecmd::prepend_paths(&mut state.path_prefix, filecmd::parse_path(&dump.path));
            if !dump.summary.trim().is_empty() {
                self.em.emit(JobEvent::StepSummary {
                    index: plan.index,
                    markdown: dump.summary,
                });
            }
        }
        if status != 0 {
            self.em.runner(
                Some(plan.index),
                format!("Process completed with exit code {status}."),
            );
        }
        Ok((
            if failed {
                StepEnd::Failure
            } else {
                StepEnd::Success
            },
            outputs,
        ))
    }

    /// Runs `cmd` with `stdin`, streaming output as step lines, and stops it
    /// (process group kill) at the deadline or on cancellation.
    async fn exec_step(
        &self,
        plan: &StepRun<'_>,
        cmd: &str,
        stdin: &[u8],
        marker: Option<String>,
        step_dir: &str,
    ) -> ExecResult {
        self.exec_step_as(plan, cmd, stdin, marker, step_dir, false)
            .await
    }

    /// [`Self::exec_step`]; `own`: the command is Solstice's plumbing only (see
    /// [`StepOutput::own`]).
    async fn exec_step_as(
        &self,
        plan: &StepRun<'_>,
        cmd: &str,
        stdin: &[u8],
        marker: Option<String>,
        step_dir: &str,
        own: bool,
    ) -> ExecResult {
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(256);
        let mut out = StepOutput::new(&self.em, plan.index, marker, self.debug);
        out.own = own;
        let exec = self.session.exec(cmd, stdin, tx);
        tokio::pin!(exec);
        let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let deadline = plan
            .deadline
            .map(tokio::time::Instant::from_std)
            .unwrap_or(far);
        let mut status: Option<Result<u32, GuestError>> = None;
        let mut stop: Option<Stop> = None;
        let mut rx_open = true;
        let mut escalate_at = far;
        let mut kills_sent = 0u8;
        let mut drain_until = far;
        // Set when the wrapper reported the end: then only a background process
        // keeps the channel open, and the step does not wait for it.
        let mut ended: Option<(tokio::time::Instant, u32)> = None;
        let mut killing: Option<
            std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>,
        > = None;
        loop {
            if status.is_some() && !rx_open {
                break;
            }
            let end_at = ended.map_or(far, |(t, _)| t);
            tokio::select! {
                r = &mut exec, if status.is_none() => {
                    status = Some(r);
                    drain_until = tokio::time::Instant::now() + DRAIN_LIMIT;
                }
                c = rx.recv(), if rx_open => match c {
                    Some(c) => {
                        out.feed(c);
                        if ended.is_none()
                            && let Some(code) = out.end_status()
                        {
                            ended = Some((tokio::time::Instant::now() + END_GRACE, code));
                        }
                    }
                    None => rx_open = false,
                },
                _ = tokio::time::sleep_until(end_at), if status.is_none() && ended.is_some() => {
                    if let Some((_, code)) = ended {
                        status = Some(Ok(code));
                    }
                    break;
                }
                _ = tokio::time::sleep_until(deadline), if stop.is_none() && status.is_none() => {
                    stop = Some(plan.stop_kind);
                    killing = Some(Box::pin(self.kill(step_dir, "TERM")));
                    kills_sent = 1;
                    escalate_at = tokio::time::Instant::now() + KILL_GRACE;
                }
                _ = self.cancel.cancelled(), if plan.watch_cancel && stop.is_none() && status.is_none() => {
                    stop = Some(Stop::Cancelled);
                    killing = Some(Box::pin(self.kill(step_dir, "TERM")));
                    kills_sent = 1;
                    escalate_at = tokio::time::Instant::now() + KILL_GRACE;
                }
                // The kill runs beside the step's exec, which keeps being drained:
                // a chatty step must not stall the connection the kill travels on.
                _ = async { if let Some(k) = killing.as_mut() { k.await } }, if killing.is_some() => {
                    killing = None;
                }
                _ = tokio::time::sleep_until(escalate_at), if status.is_none() && kills_sent > 0 => {
                    if kills_sent == 1 {
                        killing = Some(Box::pin(self.kill(step_dir, "KILL")));
                        kills_sent = 2;
                        escalate_at = tokio::time::Instant::now() + KILL_GRACE;
                    } else {
                        self.em.error(Some(plan.index), "The step's processes did not stop; abandoning it");
                        status = Some(Err(GuestError::Exec("the step did not stop".into())));
                        break;
                    }
                }
                _ = tokio::time::sleep_until(drain_until), if status.is_some() => break,
            }
        }
        // Let a kill that is still on its way finish: dropping it half-way would
        // hang up its channel while the guest's server is still acting on it.
        if let Some(k) = killing {
            k.await;
        }
        // Lines already received are still reported.
        while let Ok(c) = rx.try_recv() {
            out.feed(c);
        }
        let dump = out.finish();
        ExecResult {
            status: status.unwrap_or_else(|| Err(GuestError::Exec("no exit status".into()))),
            stop,
            dump,
        }
    }

    /// Sends `signal` to the step's process group (or process) named in its pid file.
    async fn kill(&self, step_dir: &str, signal: &str) {
        let pid = shell_quote(&format!("{step_dir}/pid"));
        let cmd = format!(
            "p=$(cat {pid} 2>/dev/null) && [ -n \"$p\" ] && kill -{signal} $p 2>/dev/null; exit 0"
        );
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(8);
        let drain = async { while rx.recv().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(15), async {
            tokio::join!(self.session.exec(&cmd, b"", tx), drain)
        })
        .await;
    }

    fn warn(&self, index: usize, text: impl Into<String>) {
        self.em
            .line(Some(index), LineKind::Annotation("warning".into()), text);
    }

    fn checkout_plan(
        &self,
        index: usize,
        with: &IndexMap<String, String>,
        step_dir: &str,
    ) -> Result<CheckoutPlan, String> {
        let get = |k: &str| with.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
        let dest = self.layout.resolve(get("path"));
        let clean = get("clean").is_none_or(is_true);
        let submodules = checkout::Submodules::parse(get("submodules"));
        let lfs = get("lfs").is_some_and(is_true);
        let server = match &self.spec.checkout {
            CheckoutSource::Remote { server_url, .. } => Some(server_url.as_str()),
            _ => None,
        };
        if !matches!(self.spec.checkout, CheckoutSource::None) {
            for w in checkout::input_warnings(with, server) {
                self.warn(index, w);
            }
        }
        match &self.spec.checkout {
            CheckoutSource::None => Ok(CheckoutPlan::Skip(
                "Nothing to check out: no source was given for this job; the workspace stays empty"
                    .into(),
            )),
            CheckoutSource::LocalTree { root, exclude } => {
                if let Some(r) = get("repository") {
                    return Err(format!(
                        "actions/checkout with `repository: {r}` needs a remote source; this job copies the local tree"
                    ));
                }
                let tree = checkout::local_tree_tar(root, exclude).map_err(|e| {
                    format!("Could not copy the local tree {}: {e}", root.display())
                })?;
                for d in &tree.excluded {
                    self.em.runner(
                        Some(index),
                        format!(
                            "Left out {d}: it is Solstice's state directory (daemon.state_dir)"
                        ),
                    );
                }
                if !tree.skipped.is_empty() {
                    const SHOWN: usize = 20;
                    let mut names: Vec<String> = tree
                        .skipped
                        .iter()
                        .take(SHOWN)
                        .map(|(p, kind)| format!("{p} ({kind})"))
                        .collect();
                    if tree.skipped.len() > SHOWN {
                        names.push(format!("and {} more", tree.skipped.len() - SHOWN));
                    }
                    self.warn(
                        index,
                        format!(
                            "Left out {} file(s) that tar cannot copy: {}",
                            tree.skipped.len(),
                            names.join(", ")
                        ),
                    );
                }
                if submodules != checkout::Submodules::None {
                    self.em.runner(
                        Some(index),
                        "Submodules: the local tree is copied as it is, with the submodules checked out in it; nothing is fetched",
                    );
                    if !tree.empty_submodules.is_empty() {
                        self.warn(
                            index,
                            format!(
                                "Submodule(s) not checked out in the local tree: {}; run `git submodule update --init{}` first",
                                tree.empty_submodules.join(", "),
                                if submodules == checkout::Submodules::Recursive {
                                    " --recursive"
                                } else {
                                    ""
                                }
                            ),
                        );
                    }
                }
                if lfs {
                    self.em.runner(
                        Some(index),
                        "LFS: the local tree is copied as it is, with the LFS files as they are checked out on this host; nothing is fetched",
                    );
                }
                Ok(CheckoutPlan::Local {
                    tar: tree.data,
                    dest,
                    clean,
                })
            }
            CheckoutSource::Remote {
                server_url,
                repository,
                git_ref,
                sha,
                token,
                host_dir,
            } => {
                let repo = get("repository").unwrap_or(repository);
                let same = repo.eq_ignore_ascii_case(repository);
                let token = match get("token") {
                    Some(t) => {
                        self.em.add_mask(t);
                        Some(t.to_string())
                    }
                    None => token.as_ref().map(|t| t.expose().to_string()),
                };
                let fetch_depth = match get("fetch-depth") {
                    Some(d) => d
                        .parse()
                        .map_err(|_| format!("Invalid `fetch-depth: {d}`: expected a number"))?,
                    None => 1,
                };
                let (r, s) = match get("ref") {
                    Some(r) => (r.to_string(), None),
                    None if same => (git_ref.clone(), Some(sha.clone()).filter(|s| !s.is_empty())),
                    None => (String::new(), None),
                };
                let fetch_tags = get("fetch-tags").is_some_and(is_true);
                let host = Box::new(HostCheckout {
                    server_url: server_url.clone(),
                    repository: repo.to_string(),
                    sha: s.clone(),
                    git_ref: r.clone(),
                    fetch_depth,
                    fetch_tags,
                    token: token.clone().map(Secret::new),
                    dest: dest.clone(),
                    clean,
                    submodules,
                    lfs,
                    host_dir: host_dir.clone(),
                });
                let mut extra = Vec::new();
                let auth_config = token.map(|t| {
                    self.em.add_mask(&checkout::auth_header_value(&t));
                    extra.push((
                        "auth.gitconfig".to_string(),
                        checkout::auth_config(server_url, &t).into_bytes(),
                    ));
                    format!("{step_dir}/auth.gitconfig")
                });
                let script = checkout::remote_script(&checkout::RemoteCheckout {
                    url: checkout::clone_url(server_url, repo),
                    sha: s,
                    git_ref: r,
                    dest,
                    fetch_depth,
                    fetch_tags,
                    clean,
                    submodules,
                    lfs,
                    auth_config,
                });
                Ok(CheckoutPlan::Remote {
                    script,
                    extra,
                    host,
                })
            }
        }
    }

    /// Whether the guest has git (the checkout's probe). When the probe
    /// itself fails, the clone in the guest runs and reports what is wrong.
    async fn guest_has_git(&self) -> bool {
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
        let collect = async {
            let mut out = Vec::new();
            while let Some(c) = rx.recv().await {
                if c.stream == Stream::Stdout {
                    out.extend_from_slice(&c.data);
                }
            }
            out
        };
        let probe =
            async { tokio::join!(self.session.exec(checkout::GIT_PROBE, b"", tx), collect) };
        match tokio::time::timeout(Duration::from_secs(60), probe).await {
            Ok((_, out)) => !String::from_utf8_lossy(&out).contains("solstice-git=no"),
            Err(_) => true,
        }
    }

    /// The checkout for a guest without git: fetched on the host into a
    /// scratch directory, then copied in with its `.git` like a local tree.
    async fn host_checkout(
        &self,
        plan: &StepRun<'_>,
        h: &HostCheckout,
    ) -> Result<(StepEnd, IndexMap<String, String>), String> {
        let at = h.at();
        self.em.runner(
            Some(plan.index),
            format!(
                "git is not installed in the guest; fetching {}@{at} on the runner host and copying it in",
                h.repository
            ),
        );
        if !checkout::plain_repository(&h.repository) {
            return Err(format!(
                "`repository: {}` is not an owner/name on the job's forge {}",
                h.repository, h.server_url
            ));
        }
        if h.submodules != checkout::Submodules::None {
            self.warn(
                plan.index,
                "Submodules are not fetched: the guest has no git; install git in the image to check them out",
            );
        }
        if h.lfs {
            self.warn(
                plan.index,
                "LFS files are not downloaded (they stay pointer files): the guest has no git; install git and git-lfs in the image",
            );
        }
        let base = h.host_dir.clone().unwrap_or_else(std::env::temp_dir);
        let scratch = checkout::ScratchDir::create(&base, plan.index)
            .map_err(|e| format!("Could not create a directory in {}: {e}", base.display()))?;
        let fetch = checkout::HostFetch {
            server_url: &h.server_url,
            repository: &h.repository,
            sha: h.sha.as_deref(),
            git_ref: &h.git_ref,
            fetch_depth: h.fetch_depth,
            fetch_tags: h.fetch_tags,
            token: h.token.as_ref().map(Secret::expose),
        };
        let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let deadline = plan
            .deadline
            .map(tokio::time::Instant::from_std)
            .unwrap_or(far);
        let fetched = tokio::select! {
            r = checkout::host_fetch(&fetch, scratch.path()) => r,
            _ = tokio::time::sleep_until(deadline) => {
                return Ok((StepEnd::Stopped(plan.stop_kind), IndexMap::new()));
            }
            _ = self.cancel.cancelled(), if plan.watch_cancel => {
                return Ok((StepEnd::Stopped(Stop::Cancelled), IndexMap::new()));
            }
        };
        let head = match fetched {
            Ok(head) => head,
            Err(e) => {
                self.em.error(
                    Some(plan.index),
                    format!("Fetching {} on the runner host failed: {e}", h.repository),
                );
                return Ok((StepEnd::Failure, IndexMap::new()));
            }
        };
        let tree = checkout::local_tree_tar(scratch.path(), &[])
            .map_err(|e| format!("Could not archive the checkout: {e}"))?;
        drop(scratch);
        let end = self
            .local_checkout(plan, tree.data, &h.dest, h.clean, "the checkout")
            .await?;
        if matches!(end.0, StepEnd::Success) {
            self.em.runner(Some(plan.index), head);
        }
        Ok(end)
    }

    async fn local_checkout(
        &self,
        plan: &StepRun<'_>,
        tar: Vec<u8>,
        dest: &str,
        clean: bool,
        what: &str,
    ) -> Result<(StepEnd, IndexMap<String, String>), String> {
        let count = tar.len();
        let step_dir = self.step_dir(plan.index);
        let cmd = local_unpack_command(&step_dir, dest, clean);
        let res = self
            .exec_step_as(plan, &cmd, &tar, None, &step_dir, true)
            .await;
        if let Some(stop) = res.stop {
            return Ok((StepEnd::Stopped(stop), IndexMap::new()));
        }
        match res.status {
            Ok(0) => {
                self.em.runner(
                    Some(plan.index),
                    format!("Copied {what} ({count} bytes of tar) to {dest}"),
                );
                Ok((StepEnd::Success, IndexMap::new()))
            }
            // The guest said what failed, in one `Solstice:` line.
            Ok(_) => Ok((StepEnd::Failure, IndexMap::new())),
            Err(e) => Err(format!("Copying {what} into the guest failed: {e}")),
        }
    }
}

/// Whether `out` holds the whole `solstice-clock=` line.
fn clock_line_done(out: &[u8]) -> bool {
    let p = clock::PREFIX.as_bytes();
    out.windows(p.len())
        .position(|w| w == p)
        .is_some_and(|i| out[i..].contains(&b'\n'))
}

/// The guest command of a `run:` step: unpack the step's files (on stdin)
/// into `steps_root` and run the wrapper. `tar -m`: times are not restored
/// (the archive carries the host's clock; a guest behind it would warn about
/// files from the future). Nothing of this plumbing reaches the step's log but
/// one `Solstice:` line when it fails. `steps_root` is created again if a step
/// removed it.
fn step_command(steps_root: &str, wrapper: &str) -> String {
    let r = shell_quote(steps_root);
    format!(
        "cd {r} 2>/dev/null || {{ e=$(mkdir -p {r} 2>&1) && cd {r}; }} || \
         {{ printf 'Solstice: could not create %s: %s\\n' {r} \"$(printf '%s' \"$e\" | tr '\\n' ' ')\" >&2; exit 1; }}; \
         e=$(tar xmf - 2>&1 >/dev/null) || \
         {{ printf 'Solstice: could not unpack the step into %s: %s\\n' {r} \"$(printf '%s' \"$e\" | tr '\\n' ' ')\" >&2; exit 1; }}; \
         exec sh {w}",
        w = shell_quote(wrapper)
    )
}

/// The guest command that unpacks the local tree (on stdin) into `dest`.
/// `-m`: times are not restored, so a guest clock behind the host's never
/// sees files from the future; `o`: files belong to the job's user, not to
/// the host's uids (GNU, busybox and illumos tar agree). GNU tar is preferred
/// where it exists as `gtar` (illumos). Whatever the plumbing writes to stderr
/// is kept out of the log; on failure one `Solstice:` line says what failed.
/// The pid file lets a timeout or cancellation stop the copy like any step.
fn local_unpack_command(step_dir: &str, dest: &str, clean: bool) -> String {
    let d = shell_quote(dest);
    let sd = shell_quote(step_dir);
    // Prints `Solstice: WHAT: <captured stderr on one line>` and fails.
    let fail = |what: &str| {
        format!(
            "{{ e=$(printf '%s' \"$e\" | tr '\\n' ' '); printf 'Solstice: %s%s\\n' {} \"${{e:+: $e}}\" >&2; exit 1; }}",
            shell_quote(what)
        )
    };
    let prep = if clean {
        format!(
            "e=$(rm -rf {d} 2>&1) || {}\n",
            fail(&format!("could not empty {dest}"))
        )
    } else {
        String::new()
    };
    format!(
        "e=$(mkdir -p {sd} 2>&1) || {f_sd}\n\
         if kill -0 -$$ 2>/dev/null; then echo \"-$$\" > {sd}/pid; else echo \"$$\" > {sd}/pid; fi\n\
         {prep}e=$(mkdir -p {d} 2>&1) || {f_mk}\n\
         cd {d} 2>/dev/null || {{ e=; {f_cd}; }}\n\
         if command -v gtar >/dev/null 2>&1; then t=gtar; else t=tar; fi\n\
         e=$($t xmof - 2>&1 >/dev/null) || {f_tar}\n",
        f_sd = fail(&format!("could not create {step_dir}")),
        f_mk = fail(&format!("could not create {dest}")),
        f_cd = fail(&format!("could not enter {dest}")),
        f_tar = fail(&format!("could not unpack the archive into {dest}")),
    )
}

/// The line that says why a step did not run. A step without `if:` (or whose
/// `if:` has no status function) runs only while the job succeeds, as on
/// GitHub: when that implied `success()` is what failed, the line says so
/// instead of blaming the user's condition.
fn skip_reason(explicit_if: Option<&str>, ctx: &Contexts, state: &JobState) -> String {
    let status = match state.status {
        JobStatus::Success => None,
        JobStatus::Failure => Some("an earlier step failed"),
        JobStatus::Cancelled if state.timed_out => Some("the job timed out"),
        JobStatus::Cancelled => Some("the job was cancelled"),
    };
    match (explicit_if, status) {
        (None, Some(why)) => format!("Skipped: {why}"),
        (None, None) => "Skipped: `if: success()` is false".to_string(),
        (Some(cond), Some(why)) => {
            // Would the user's condition have let the step run had the job
            // succeeded so far? Then the implied `success()` is the reason.
            let mut succeeded = ctx.clone();
            succeeded.status = JobStatus::Success;
            if evaluate_condition(cond, &succeeded).unwrap_or(false) {
                if has_status_function(cond) {
                    format!("Skipped: {why} (`if: {cond}`)")
                } else {
                    format!(
                        "Skipped: {why} (an `if:` without success(), failure(), always() or cancelled() runs only while the job succeeds)"
                    )
                }
            } else {
                format!("Skipped: `if: {cond}` is false")
            }
        }
        (Some(cond), None) => format!("Skipped: `if: {cond}` is false"),
    }
}

/// Whether a condition's text calls a status function (for the wording of
/// [`skip_reason`] only).
fn has_status_function(cond: &str) -> bool {
    let c: String = cond
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    ["success(", "failure(", "always(", "cancelled("]
        .iter()
        .any(|f| c.contains(f))
}

/// A step's `run` default from the job, else the workflow.
fn run_default(
    job: &Job,
    wf: &Workflow,
    pick: impl Fn(&crate::workflow::RunDefaults) -> Option<String>,
) -> Option<String> {
    let from = |d: &Option<crate::workflow::Defaults>| {
        d.as_ref().and_then(|d| d.run.as_ref()).and_then(&pick)
    };
    from(&job.defaults).or_else(|| from(&wf.defaults))
}

enum CheckoutPlan {
    Skip(String),
    Local {
        tar: Vec<u8>,
        dest: String,
        clean: bool,
    },
    Remote {
        script: String,
        extra: Vec<(String, Vec<u8>)>,
        /// For a guest without git.
        host: Box<HostCheckout>,
    },
}

/// The same checkout, fetched on the host for a guest without git.
struct HostCheckout {
    server_url: String,
    repository: String,
    sha: Option<String>,
    git_ref: String,
    fetch_depth: u32,
    fetch_tags: bool,
    token: Option<Secret>,
    dest: String,
    clean: bool,
    submodules: checkout::Submodules,
    lfs: bool,
    host_dir: Option<PathBuf>,
}

impl HostCheckout {
    /// What is checked out, for the step log: the sha, else the ref, else `HEAD`.
    fn at(&self) -> String {
        match (&self.sha, self.git_ref.is_empty()) {
            (Some(sha), _) => sha.clone(),
            (None, true) => "HEAD".into(),
            (None, false) => self.git_ref.clone(),
        }
    }
}

/// How a step's process ended.
enum StepEnd {
    Success,
    Failure,
    Stopped(Stop),
}

struct StepRun<'p> {
    index: usize,
    step: &'p Step,
    ctx: &'p Contexts,
    /// The step's own `env`, evaluated.
    step_env: &'p IndexMap<String, String>,
    deadline: Option<Instant>,
    /// What hitting `deadline` means.
    stop_kind: Stop,
    watch_cancel: bool,
    runner_debug: bool,
}

/// One entry of a generated tar.
struct TarFile {
    path: String,
    data: Vec<u8>,
    mode: u32,
    dir: bool,
}

impl TarFile {
    fn file(path: &str, data: Vec<u8>, mode: u32) -> Self {
        TarFile {
            path: path.to_string(),
            data,
            mode,
            dir: false,
        }
    }

    fn dir(path: &str) -> Self {
        TarFile {
            path: path.to_string(),
            data: Vec::new(),
            mode: 0o700,
            dir: true,
        }
    }
}

/// A small tar (padded to a whole record) for `tar xf -` in the guest:
/// ustar, with pax headers where a name is too long ([`archive`]).
fn build_tar(files: &[TarFile]) -> std::io::Result<Vec<u8>> {
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut w = archive::ArchiveWriter::new();
    for f in files {
        let kind = if f.dir {
            archive::Kind::Dir
        } else {
            archive::Kind::File
        };
        w.add(f.path.as_bytes(), kind, f.mode, mtime, None, &f.data);
    }
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    #[test]
    fn timeouts_are_positive_and_clamped() {
        assert_eq!(minutes("0.5"), Some(Duration::from_secs(30)));
        assert_eq!(minutes("0"), None);
        assert_eq!(minutes("-1"), None);
        assert_eq!(minutes("NaN"), None);
        let huge = minutes("1e18").unwrap();
        assert_eq!(huge, Duration::from_secs_f64(MAX_TIMEOUT_MINUTES * 60.0));
        // A clamped deadline is still a valid instant.
        let _ = std::time::Instant::now() + huge;
    }

    use super::*;
    use crate::testing::VecSink;

    fn chunk(stream: Stream, s: &str) -> OutputChunk {
        OutputChunk {
            stream,
            data: s.as_bytes().to_vec(),
        }
    }

    #[test]
    fn step_output_finds_the_marker_across_chunks() {
        let sink = VecSink::default();
        let em = Emitter {
            sink: &sink,
            masker: Mutex::new(Masker::new()),
        };
        let mut out = StepOutput::new(&em, 0, Some("__m__".into()), false);
        out.feed(chunk(
            Stream::Stdout,
            "one

three
",
        ));
        out.feed(chunk(Stream::Stderr, "err"));
        out.feed(chunk(
            Stream::Stdout,
            "
__",
        ));
        out.feed(chunk(
            Stream::Stdout,
            "m__
__m__ output
k=v

__m__ end 0
",
        ));
        let dump = out.finish().unwrap();
        assert_eq!(sink.lines(), vec!["one", "", "three", "err"]);
        assert_eq!(dump.output, "k=v\n");
        assert_eq!(dump.status, Some(0));
    }

    #[test]
    fn step_output_without_marker_flushes_partial_lines() {
        let sink = VecSink::default();
        let em = Emitter {
            sink: &sink,
            masker: Mutex::new(Masker::new()),
        };
        let mut out = StepOutput::new(&em, 0, Some("__m__".into()), false);
        out.feed(chunk(Stream::Stdout, "a\n\npartial"));
        assert!(out.finish().is_none());
        assert_eq!(sink.lines(), vec!["a", "", "partial"]);
    }
}

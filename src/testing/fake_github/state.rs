//! The fake GitHub's state and its synchronous request handling: every
//! call but the long poll's wait is decided here, under one lock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use indexmap::IndexMap;
use serde_json::{Value, json};

use super::job::{FakeGithubJob, MessageIds, context_names, job_message};
use super::keys::{FakeRsaKey, PublicKey, verify_jwt};
use super::{Endpoint, FakeGithubOptions};
use crate::secret::Secret;

/// An HTTP answer decided by the state.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(status: u16, v: Value) -> Reply {
        Reply {
            status,
            headers: vec![(
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: v.to_string().into_bytes(),
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The raw query string (empty when none).
    pub query: String,
    /// Which part of GitHub it was for.
    pub endpoint: Endpoint,
    /// The status the fake answered.
    pub status: u16,
    /// The body as text (lossy UTF-8; blob bodies are not kept).
    pub body: String,
    /// The answer was dropped ([`super::FakeGithub::lose_next_answer`]).
    pub lost: bool,
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeJobState {
    /// Waiting for a matching idle runner.
    Queued,
    /// A `RunnerJobRequest` went to this runner's session; not acquired yet.
    Delivered {
        /// The runner's id.
        runner: u64,
    },
    /// `acquirejob` succeeded for this runner.
    Acquired {
        /// The runner's id.
        runner: u64,
    },
    /// `completejob` succeeded.
    Completed,
    /// The lock expired (no renew in time), or the job was cancelled
    /// before it was acquired.
    Abandoned,
}

/// What the fake knows about one job, for assertions.
#[derive(Debug, Clone)]
pub struct JobSnapshot {
    /// The number [`super::FakeGithub::enqueue`] returned.
    pub index: u64,
    /// `jobId` (GUID).
    pub job_id: String,
    /// `plan.planId` (GUID).
    pub plan_id: String,
    /// `runner_request_id` of the `RunnerJobRequest` (and `jobMessageId`).
    pub request_id: String,
    /// The step GUIDs in order.
    pub step_ids: Vec<String>,
    /// The steps' context names in order.
    pub step_context_names: Vec<String>,
    /// Where the job is.
    pub state: FakeJobState,
    /// Runners the job was delivered to, in order.
    pub delivered_to: Vec<u64>,
    /// Whether the reference was acknowledged.
    pub acknowledged: bool,
    /// Successful `renewjob` calls.
    pub renewals: usize,
    /// The job token (after acquisition).
    pub job_token: Option<Secret>,
    /// The full `completejob` body.
    pub complete_body: Option<Value>,
    /// `conclusion` from `completejob`.
    pub conclusion: Option<String>,
    /// `outputs` from `completejob` (name → value).
    pub outputs: IndexMap<String, String>,
    /// `stepResults` from `completejob`.
    pub step_results: Vec<Value>,
    /// Every `WorkflowStepsUpdate` call's `steps`, in order.
    pub step_updates: Vec<Vec<Value>>,
    /// Per step GUID: the uploaded log text.
    pub step_logs: IndexMap<String, String>,
    /// Per step GUID: the `line_count` reported in `CreateStepLogsMetadata`.
    pub step_log_lines: IndexMap<String, u64>,
    /// Per step GUID: the uploaded summary.
    pub step_summaries: IndexMap<String, String>,
    /// The job log text (after `CreateJobLogsMetadata`, or as uploaded).
    pub job_log: Option<String>,
    /// WebSocket feed frames (parsed JSON).
    pub feed_frames: Vec<Value>,
}

impl JobSnapshot {
    /// The latest status update of each step (by GUID), merging all
    /// `WorkflowStepsUpdate` calls.
    pub fn latest_steps(&self) -> IndexMap<String, Value> {
        let mut out = IndexMap::new();
        for call in &self.step_updates {
            for s in call {
                if let Some(id) = s.get("external_id").and_then(Value::as_str) {
                    out.insert(id.to_string(), s.clone());
                }
            }
        }
        out
    }

    /// True when the job will not change any more.
    pub fn is_final(&self) -> bool {
        matches!(
            self.state,
            FakeJobState::Completed | FakeJobState::Abandoned
        )
    }
}

/// A runner as the fake sees it.
#[derive(Debug, Clone)]
pub struct RunnerSnapshot {
    /// Runner id (`agentId`).
    pub id: u64,
    /// Name.
    pub name: String,
    /// Scope path (`repos/o/r`, `orgs/o`, `enterprises/e`).
    pub scope: String,
    /// Labels as registered.
    pub labels: Vec<String>,
    /// Runner group.
    pub group_id: u64,
    /// The OAuth client id.
    pub client_id: String,
    /// Holds an acquired job.
    pub busy: bool,
    /// Has a live broker session.
    pub has_session: bool,
    /// Whether it was minted with PS256 (`requireFipsCryptography`).
    pub fips: bool,
}

/// A live broker session.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    /// `sessionId`.
    pub id: String,
    /// The runner it belongs to.
    pub runner: u64,
    /// `ownerName` as sent.
    pub owner_name: String,
    /// The `status` of the latest poll.
    pub last_status: Option<String>,
    /// Polls so far.
    pub polls: usize,
}

struct Runner {
    id: u64,
    name: String,
    scope: String,
    labels: Vec<String>,
    group_id: u64,
    client_id: String,
    token_url: String,
    key: PublicKey,
    fips: bool,
    /// A job was acquired by it at some time (ephemeral: no second one).
    had_job: bool,
    /// The job it holds (acquired and not closed).
    job: Option<usize>,
}

struct Session {
    id: String,
    runner: u64,
    owner_name: String,
    last_status: Option<String>,
    polls: usize,
    queue: VecDeque<(String, String)>,
    /// Job references delivered to this session (request ids).
    delivered: HashSet<String>,
}

struct Job {
    spec: FakeGithubJob,
    index: u64,
    job_id: String,
    plan_id: String,
    timeline_id: String,
    request_id: String,
    message_id: i64,
    step_ids: Vec<String>,
    state: FakeJobState,
    delivered_at: Option<Instant>,
    delivered_to: Vec<u64>,
    excluded: HashSet<u64>,
    acknowledged: bool,
    token: Option<String>,
    github_token: String,
    locked_until: Option<Instant>,
    renewals: usize,
    closed: bool,
    complete_body: Option<Value>,
    last_change_order: Option<i64>,
    step_updates: Vec<Vec<Value>>,
    step_log_lines: IndexMap<String, u64>,
    summaries: IndexMap<String, String>,
    job_log_lines: Option<u64>,
    feed_frames: Vec<Value>,
}

#[derive(Default, Clone)]
pub(crate) struct Blob {
    pub data: Vec<u8>,
    pub append: bool,
    pub sealed: bool,
    pub sig: String,
}

struct App {
    key: PublicKey,
    installations: HashSet<u64>,
}

/// Faults armed by tests.
#[derive(Default)]
pub(crate) struct Faults {
    pub fail_next: HashMap<Endpoint, VecDeque<u16>>,
    pub lose_next: HashMap<Endpoint, usize>,
    pub poll_hang: bool,
    pub session_conflict_until: Option<Instant>,
    pub renew_404: HashSet<u64>,
    pub deliver_while_busy: bool,
    pub lenient_step_status: bool,
    pub accept_any_alg: bool,
    pub empty_poll_204: bool,
}

pub(crate) struct State {
    pub opts: FakeGithubOptions,
    pub base: String,
    pub faults: Faults,
    apps: HashMap<u64, App>,
    rest_tokens: HashMap<String, Option<Instant>>,
    runners: BTreeMap<u64, Runner>,
    next_runner: u64,
    clients: HashMap<String, u64>,
    runner_tokens: HashMap<String, (u64, Instant)>,
    sessions: HashMap<String, Session>,
    jobs: Vec<Job>,
    job_tokens: HashMap<String, usize>,
    next_message: i64,
    pub blobs: HashMap<String, Blob>,
    pub violations: Vec<String>,
    pub requests: Vec<RequestRecord>,
    /// Users and their public SSH keys (`/api/v3/users/…`).
    pub users: super::users::Users,
    /// The one runner key of [`FakeGithubOptions::shared_runner_key`].
    shared_key: Option<FakeRsaKey>,
}

/// What the long poll should do next.
pub(crate) enum PollStep {
    Answer(Reply),
    Wait,
}

pub(crate) fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

pub(crate) fn guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// UTC RFC 3339 with milliseconds.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn wall(i: Instant) -> SystemTime {
    let now = Instant::now();
    if i >= now {
        SystemTime::now() + (i - now)
    } else {
        SystemTime::now() - (now - i)
    }
}

/// Case-insensitive field lookup (Go's `encoding/json` and .NET match
/// names that way).
pub(crate) fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let o = v.as_object()?;
    o.get(key).or_else(|| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn str_ci(v: &Value, key: &str) -> Option<String> {
    match get_ci(v, key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn rest_error(status: u16, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"message": message, "documentation_url": "https://docs.github.com/rest/actions/self-hosted-runners", "status": status.to_string()}),
    )
}

fn oauth_error(status: u16, error: &str, description: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": error, "error_description": description}),
    )
}

fn broker_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"source": "actions-broker-listener", "errorKind": kind, "statusCode": status, "errorMessage": message}),
    )
}

fn run_error(status: u16, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"source": "actions-run-service", "statusCode": status, "errorMessage": message}),
    )
}

fn twirp_error(status: u16, code: &str, msg: &str) -> Reply {
    Reply::json(status, json!({"code": code, "msg": msg}))
}

fn azure_error(status: u16, code: &str, msg: &str) -> Reply {
    Reply {
        status,
        headers: vec![
            ("content-type".into(), "application/xml".into()),
            ("x-ms-error-code".into(), code.into()),
        ],
        body: format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{msg}</Message></Error>").into_bytes(),
    }
}

/// The error body a fault of `endpoint` answers with.
pub(crate) fn fault_reply(endpoint: Endpoint, status: u16) -> Reply {
    let msg = format!("injected fault: HTTP {status}");
    match endpoint {
        Endpoint::Rest => rest_error(status, &msg),
        Endpoint::Token => oauth_error(status, "server_error", &msg),
        Endpoint::SessionCreate
        | Endpoint::Poll
        | Endpoint::Acknowledge
        | Endpoint::SessionDelete => broker_error(status, "", &msg),
        Endpoint::AcquireJob | Endpoint::RenewJob | Endpoint::CompleteJob => {
            run_error(status, &msg)
        }
        Endpoint::Results => twirp_error(
            status,
            if status >= 500 { "internal" } else { "unknown" },
            &msg,
        ),
        Endpoint::Blob | Endpoint::Feed => azure_error(status, "ServerBusy", &msg),
        Endpoint::Other => Reply::empty(status),
    }
}

/// An integer as protobuf's JSON mapping accepts it (a number, or a
/// decimal string for 64-bit fields and enums).
fn proto_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Number of lines in a log text (a final line without newline counts).
pub(crate) fn line_count(data: &[u8]) -> u64 {
    let n = data.iter().filter(|b| **b == b'\n').count() as u64;
    if data.last().is_some_and(|b| *b != b'\n') {
        n + 1
    } else {
        n
    }
}

fn parse_version(v: &str) -> Vec<u64> {
    v.trim_start_matches('v')
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

fn label_type(l: &str) -> &'static str {
    match l.to_ascii_lowercase().as_str() {
        "self-hosted" | "linux" | "macos" | "windows" | "x64" | "x86" | "arm" | "arm64" => {
            "read-only"
        }
        _ => "custom",
    }
}

impl State {
    pub fn new(opts: FakeGithubOptions, base: String) -> State {
        State {
            opts,
            base,
            faults: Faults::default(),
            apps: HashMap::new(),
            rest_tokens: HashMap::new(),
            runners: BTreeMap::new(),
            shared_key: None,
            next_runner: 1,
            clients: HashMap::new(),
            runner_tokens: HashMap::new(),
            sessions: HashMap::new(),
            jobs: Vec::new(),
            job_tokens: HashMap::new(),
            next_message: (1i64 << 62) + 17,
            blobs: HashMap::new(),
            violations: Vec::new(),
            requests: Vec::new(),
            users: Default::default(),
        }
    }

    pub fn broker_url(&self) -> String {
        format!("{}/_broker/", self.base)
    }
    pub fn run_service_url(&self) -> String {
        format!("{}/_run/9/", self.base)
    }
    pub fn results_url(&self) -> String {
        format!("{}/_results/", self.base)
    }
    pub fn feed_url(&self) -> String {
        format!(
            "ws://{}/_ws/ingest.sock",
            self.base.trim_start_matches("http://")
        )
    }

    fn violation(&mut self, v: String) {
        self.violations.push(v);
    }

    /// Takes an armed fault for `endpoint`, if any.
    pub fn take_fault(&mut self, endpoint: Endpoint) -> Option<Reply> {
        let q = self.faults.fail_next.get_mut(&endpoint)?;
        let status = q.pop_front()?;
        Some(fault_reply(endpoint, status))
    }

    // ---- fixtures -------------------------------------------------------

    pub fn add_app(&mut self, app_id: u64, installation_id: u64, key: &FakeRsaKey) {
        let app = self.apps.entry(app_id).or_insert_with(|| App {
            key: key.into(),
            installations: HashSet::new(),
        });
        app.key = key.into();
        app.installations.insert(installation_id);
    }

    pub fn add_rest_token(&mut self, token: &str) {
        self.rest_tokens.insert(token.into(), None);
    }

    pub fn enqueue(&mut self, spec: FakeGithubJob) -> u64 {
        let index = self.jobs.len() as u64 + 1;
        let message_id = self.next_message;
        self.next_message += 1;
        let step_ids = spec.steps.iter().map(|_| guid()).collect();
        let job_id = guid();
        self.jobs.push(Job {
            github_token: spec
                .github_token
                .clone()
                .unwrap_or_else(|| format!("ghs_{}", random_hex(18))),
            spec,
            index,
            request_id: job_id.clone(),
            job_id,
            plan_id: guid(),
            timeline_id: guid(),
            message_id,
            step_ids,
            state: FakeJobState::Queued,
            delivered_at: None,
            delivered_to: Vec::new(),
            excluded: HashSet::new(),
            acknowledged: false,
            token: None,
            locked_until: None,
            renewals: 0,
            closed: false,
            complete_body: None,
            last_change_order: None,
            step_updates: Vec::new(),
            step_log_lines: IndexMap::new(),
            summaries: IndexMap::new(),
            job_log_lines: None,
            feed_frames: Vec::new(),
        });
        index
    }

    fn job_by_index(&self, index: u64) -> Option<usize> {
        self.jobs.iter().position(|j| j.index == index)
    }

    /// `JobCancellation` to the holder's session (or the job is dropped
    /// when no runner has it yet). False when the job is unknown or final.
    pub fn cancel_job(&mut self, index: u64, timeout: &str) -> bool {
        let Some(i) = self.job_by_index(index) else {
            return false;
        };
        match self.jobs[i].state.clone() {
            FakeJobState::Queued => {
                self.jobs[i].state = FakeJobState::Abandoned;
                self.jobs[i].closed = true;
                true
            }
            FakeJobState::Delivered { runner } => {
                // Not acquired yet: the job is gone; the runner is told anyway.
                self.jobs[i].state = FakeJobState::Abandoned;
                self.jobs[i].closed = true;
                let body = json!({"jobId": self.jobs[i].job_id, "timeout": timeout}).to_string();
                self.push_message(runner, "JobCancellation", body);
                true
            }
            FakeJobState::Acquired { runner } => {
                let body = json!({"jobId": self.jobs[i].job_id, "timeout": timeout}).to_string();
                self.push_message(runner, "JobCancellation", body)
            }
            _ => false,
        }
    }

    pub fn push_message(&mut self, runner: u64, kind: &str, body: String) -> bool {
        match self.sessions.values_mut().find(|s| s.runner == runner) {
            Some(s) => {
                s.queue.push_back((kind.into(), body));
                true
            }
            None => false,
        }
    }

    pub fn invalidate_session(&mut self, runner: u64) -> bool {
        let before = self.sessions.len();
        self.sessions.retain(|_, s| s.runner != runner);
        before != self.sessions.len()
    }

    pub fn expire_runner_tokens(&mut self) {
        let past = Instant::now() - Duration::from_secs(1);
        for (_, exp) in self.runner_tokens.values_mut() {
            *exp = past;
        }
    }

    pub fn set_renew_404(&mut self, index: u64) {
        self.faults.renew_404.insert(index);
    }

    /// Removes a runner as the REST `DELETE` would (ignoring a running job).
    pub fn remove_runner(&mut self, id: u64) -> bool {
        let Some(r) = self.runners.remove(&id) else {
            return false;
        };
        self.clients.remove(&r.client_id);
        self.sessions.retain(|_, s| s.runner != id);
        true
    }

    // ---- sweeping ------------------------------------------------------

    /// Applies time: expired locks abandon jobs, unacquired deliveries go
    /// back to the queue for another runner.
    pub fn sweep(&mut self) {
        let now = Instant::now();
        let redeliver = self.opts.redelivery_timeout;
        for j in &mut self.jobs {
            match j.state {
                FakeJobState::Delivered { runner }
                    if j.delivered_at
                        .is_some_and(|t| now.duration_since(t) > redeliver) =>
                {
                    j.excluded.insert(runner);
                    j.state = FakeJobState::Queued;
                    j.delivered_at = None;
                }
                FakeJobState::Acquired { runner } if j.locked_until.is_some_and(|t| now > t) => {
                    j.state = FakeJobState::Abandoned;
                    j.closed = true;
                    if let Some(r) = self.runners.get_mut(&runner) {
                        r.job = None;
                    }
                }
                _ => {}
            }
        }
    }

    // ---- snapshots ----------------------------------------------------

    fn snapshot(&self, j: &Job) -> JobSnapshot {
        let blob_text = |key: &str| {
            self.blobs
                .get(key)
                .map(|b| String::from_utf8_lossy(&b.data).into_owned())
        };
        let mut step_logs = IndexMap::new();
        for s in &j.step_ids {
            if let Some(t) = blob_text(&format!("{}/steps/{s}/logs", j.job_id)) {
                step_logs.insert(s.clone(), t);
            }
        }
        let mut step_summaries = IndexMap::new();
        for s in &j.step_ids {
            if let Some(t) = blob_text(&format!("{}/steps/{s}/summary", j.job_id)) {
                step_summaries.insert(s.clone(), t);
            }
        }
        let cb = j.complete_body.clone();
        let outputs = cb
            .as_ref()
            .and_then(|b| get_ci(b, "outputs"))
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), str_ci(v, "value").unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let step_results = cb
            .as_ref()
            .and_then(|b| get_ci(b, "stepResults"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        JobSnapshot {
            index: j.index,
            job_id: j.job_id.clone(),
            plan_id: j.plan_id.clone(),
            request_id: j.request_id.clone(),
            step_ids: j.step_ids.clone(),
            step_context_names: context_names(&j.spec.steps),
            state: j.state.clone(),
            delivered_to: j.delivered_to.clone(),
            acknowledged: j.acknowledged,
            renewals: j.renewals,
            job_token: j.token.clone().map(Secret::new),
            conclusion: cb.as_ref().and_then(|b| str_ci(b, "conclusion")),
            complete_body: cb,
            outputs,
            step_results,
            step_updates: j.step_updates.clone(),
            step_logs,
            step_log_lines: j.step_log_lines.clone(),
            step_summaries,
            job_log: blob_text(&format!("{}/log", j.job_id)),
            feed_frames: j.feed_frames.clone(),
        }
    }

    pub fn jobs(&self) -> Vec<JobSnapshot> {
        self.jobs.iter().map(|j| self.snapshot(j)).collect()
    }

    pub fn runners(&self) -> Vec<RunnerSnapshot> {
        self.runners
            .values()
            .map(|r| RunnerSnapshot {
                id: r.id,
                name: r.name.clone(),
                scope: r.scope.clone(),
                labels: r.labels.clone(),
                group_id: r.group_id,
                client_id: r.client_id.clone(),
                busy: r.job.is_some(),
                has_session: self.sessions.values().any(|s| s.runner == r.id),
                fips: r.fips,
            })
            .collect()
    }

    pub fn sessions(&self) -> Vec<SessionSnapshot> {
        self.sessions
            .values()
            .map(|s| SessionSnapshot {
                id: s.id.clone(),
                runner: s.runner,
                owner_name: s.owner_name.clone(),
                last_status: s.last_status.clone(),
                polls: s.polls,
            })
            .collect()
    }

    // ---- REST ------------------------------------------------------------

    /// `POST /api/v3/app/installations/{id}/access_tokens`.
    pub fn installation_token(&mut self, installation: &str, auth: Option<&str>) -> Reply {
        let Some(jwt) = auth.and_then(|a| a.strip_prefix("Bearer ")) else {
            return rest_error(401, "A JSON web token could not be decoded");
        };
        let Ok(installation) = installation.parse::<u64>() else {
            return rest_error(404, "Not Found");
        };
        // Read `iss` before checking the signature to pick the app.
        let iss = jwt
            .split('.')
            .nth(1)
            .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|c| c.get("iss").cloned());
        let app_id = match iss {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        let Some(app) = app_id.and_then(|id| self.apps.get(&id)) else {
            return rest_error(401, "'Issuer' claim ('iss') must be an Integer");
        };
        let claims = match verify_jwt(jwt, &app.key, &["RS256"]) {
            Ok(v) => v.claims,
            Err(_) => return rest_error(401, "A JSON web token could not be decoded"),
        };
        let now = unix_now();
        let iat = claims.get("iat").and_then(Value::as_i64);
        let exp = claims.get("exp").and_then(Value::as_i64);
        let (Some(iat), Some(exp)) = (iat, exp) else {
            return rest_error(
                401,
                "'Issued at' claim ('iat') and 'Expiration time' claim ('exp') are required",
            );
        };
        if exp <= now {
            return rest_error(
                401,
                "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
            );
        }
        if iat > now + 60 {
            return rest_error(
                401,
                "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
            );
        }
        if exp - iat > 600 || exp > now + 600 + 60 {
            return rest_error(
                401,
                "'Expiration time' claim ('exp') is too far in the future",
            );
        }
        if !app.installations.contains(&installation) {
            return rest_error(404, "Not Found");
        }
        let token = format!("ghs_{}", random_hex(18));
        let expires = Instant::now() + self.opts.installation_token_ttl;
        self.rest_tokens.insert(token.clone(), Some(expires));
        Reply::json(
            201,
            json!({"token": token, "expires_at": rfc3339(wall(expires)), "permissions": {"administration": "write", "metadata": "read", "organization_self_hosted_runners": "write"}, "repository_selection": "all"}),
        )
    }

    /// Checks a REST credential; `Err` is the answer.
    fn rest_auth(&self, auth: Option<&str>) -> Result<(), Reply> {
        let Some(a) = auth else {
            return Err(rest_error(401, "Requires authentication"));
        };
        let tok = a
            .strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("bearer "))
            .or_else(|| a.strip_prefix("token "))
            .unwrap_or("");
        match self.rest_tokens.get(tok) {
            Some(None) => Ok(()),
            Some(Some(exp)) if Instant::now() < *exp => Ok(()),
            _ => Err(rest_error(401, "Bad credentials")),
        }
    }

    fn runner_json(&self, r: &Runner) -> Value {
        let online = self.sessions.values().any(|s| s.runner == r.id);
        json!({
            "id": r.id,
            "name": r.name,
            "os": "unknown",
            "status": if online { "online" } else { "offline" },
            "busy": r.job.is_some(),
            "ephemeral": true,
            "runner_group_id": r.group_id,
            "labels": r.labels.iter().enumerate().map(|(i, l)| json!({"id": i as u64 + 1, "name": l, "type": label_type(l)})).collect::<Vec<_>>(),
        })
    }

    /// `POST {scope}/actions/runners/generate-jitconfig`.
    pub fn generate_jitconfig(&mut self, scope: &str, auth: Option<&str>, body: &[u8]) -> Reply {
        if let Err(r) = self.rest_auth(auth) {
            return r;
        }
        let Ok(b) = serde_json::from_slice::<Value>(body) else {
            return rest_error(400, "Problems parsing JSON");
        };
        let Some(name) = b
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        else {
            return rest_error(422, "Invalid request.\n\n\"name\" wasn't supplied.");
        };
        let group = match b.get("runner_group_id") {
            None | Some(Value::Null) => {
                return rest_error(
                    422,
                    "Invalid request.\n\n\"runner_group_id\" wasn't supplied.",
                );
            }
            Some(v) => match v.as_u64() {
                Some(g) => g,
                None => {
                    return rest_error(
                        422,
                        "Invalid request.\n\nFor 'properties/runner_group_id', is not an integer.",
                    );
                }
            },
        };
        if !self.opts.runner_groups.contains(&group) {
            return rest_error(
                422,
                &format!("Invalid request.\n\nRunner group {group} does not exist."),
            );
        }
        let labels: Vec<String> = match b.get("labels").and_then(Value::as_array) {
            Some(a) if a.iter().all(Value::is_string) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => {
                return rest_error(422, "Invalid request.\n\n\"labels\" wasn't supplied.");
            }
        };
        if labels.is_empty() || labels.len() > 100 {
            return rest_error(
                422,
                "Invalid request.\n\nFor 'properties/labels', must have between 1 and 100 items.",
            );
        }
        if self
            .runners
            .values()
            .any(|r| r.scope == scope && r.name.eq_ignore_ascii_case(name))
        {
            return rest_error(
                409,
                &format!("Already exists - A runner with the name {name} already exists."),
            );
        }
        let work = b
            .get("work_folder")
            .and_then(Value::as_str)
            .unwrap_or("_work")
            .to_string();

        let key = if self.opts.shared_runner_key {
            self.shared_key
                .get_or_insert_with(FakeRsaKey::generate)
                .clone()
        } else {
            FakeRsaKey::generate()
        };
        let id = self.next_runner;
        self.next_runner += 1;
        let client_id = guid();
        let token_url = format!("{}/_apis/oauth2/token/{}", self.base, guid());
        let fips = self.opts.require_fips;
        let runner = Runner {
            id,
            name: name.into(),
            scope: scope.into(),
            labels,
            group_id: group,
            client_id: client_id.clone(),
            token_url: token_url.clone(),
            key: (&key).into(),
            fips,
            had_job: false,
            job: None,
        };
        let runner_json = self.runner_json(&runner);
        self.clients.insert(client_id.clone(), id);
        self.runners.insert(id, runner);

        let dot_runner = json!({
            "agentId": id,
            "agentName": name,
            "poolId": 1,
            "poolName": "Default",
            "serverUrl": format!("{}/_pipelines/", self.base),
            "gitHubUrl": format!("{}/{}", self.base, scope.trim_start_matches("repos/").trim_start_matches("orgs/")),
            "workFolder": work,
            "ephemeral": true,
            "useV2Flow": true,
            "serverUrlV2": self.broker_url(),
        });
        let dot_credentials = json!({
            "scheme": "OAuth",
            "data": {
                "clientId": client_id,
                "authorizationUrl": token_url,
                "requireFipsCryptography": if fips { "True" } else { "False" },
            },
        });
        let b64 = |v: &Value| STANDARD.encode(v.to_string());
        let files = json!({
            ".runner": b64(&dot_runner),
            ".credentials": b64(&dot_credentials),
            ".credentials_rsaparams": b64(&key.rsa_parameters()),
        });
        Reply::json(
            201,
            json!({"runner": runner_json, "encoded_jit_config": STANDARD.encode(files.to_string())}),
        )
    }

    /// `GET {scope}/actions/runners`.
    pub fn list_runners(&self, scope: &str, auth: Option<&str>, query: &str) -> Reply {
        if let Err(r) = self.rest_auth(auth) {
            return r;
        }
        let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let per_page = q
            .get("per_page")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(30)
            .clamp(1, 100);
        let page = q
            .get("page")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let all: Vec<&Runner> = self
            .runners
            .values()
            .filter(|r| r.scope == scope)
            .filter(|r| q.get("name").is_none_or(|n| r.name == *n))
            .collect();
        let total = all.len();
        let items: Vec<Value> = all
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .map(|r| self.runner_json(r))
            .collect();
        let mut reply = Reply::json(200, json!({"total_count": total, "runners": items}));
        if page * per_page < total {
            let link = format!(
                "<{}/api/v3/{scope}/actions/runners?per_page={per_page}&page={}>; rel=\"next\"",
                self.base,
                page + 1
            );
            reply = reply.header("link", &link);
        }
        reply
    }

    /// `GET`/`DELETE {scope}/actions/runners/{id}`.
    pub fn runner_by_id(
        &mut self,
        scope: &str,
        id: &str,
        delete: bool,
        auth: Option<&str>,
    ) -> Reply {
        if let Err(r) = self.rest_auth(auth) {
            return r;
        }
        let Some(r) = id
            .parse::<u64>()
            .ok()
            .and_then(|id| self.runners.get(&id))
            .filter(|r| r.scope == scope)
        else {
            return rest_error(404, "Not Found");
        };
        if !delete {
            return Reply::json(200, self.runner_json(r));
        }
        if r.job.is_some() {
            return rest_error(
                422,
                &format!("Bad request - Runner \"{}\" is still running a job", r.name),
            );
        }
        let id = r.id;
        self.remove_runner(id);
        Reply::empty(204)
    }

    // ---- OAuth token exchange ------------------------------------------

    /// `POST /_apis/oauth2/token/{guid}`.
    pub fn token(&mut self, url: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
        if !content_type
            .unwrap_or("")
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
        {
            return oauth_error(
                400,
                "invalid_request",
                "The request body must be application/x-www-form-urlencoded.",
            );
        }
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return oauth_error(
                400,
                "invalid_request",
                "grant_type must be client_credentials.",
            );
        }
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return oauth_error(
                400,
                "invalid_request",
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            );
        }
        let Some(assertion) = form.get("client_assertion") else {
            return oauth_error(400, "invalid_request", "client_assertion is required.");
        };
        let iss = assertion
            .split('.')
            .nth(1)
            .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|c| c.get("iss").and_then(Value::as_str).map(str::to_string));
        let Some(runner) = iss
            .as_ref()
            .and_then(|i| self.clients.get(i))
            .and_then(|id| self.runners.get(id))
        else {
            return oauth_error(
                400,
                "invalid_client",
                "The client is not registered (deleted or never existed).",
            );
        };
        let allowed: &[&str] = if self.faults.accept_any_alg {
            &["RS256", "PS256"]
        } else if runner.fips {
            &["PS256"]
        } else {
            &["RS256"]
        };
        let claims = match verify_jwt(assertion, &runner.key, allowed) {
            Ok(v) => v.claims,
            Err(e) => return oauth_error(401, "invalid_grant", &e),
        };
        let client = runner.client_id.clone();
        let sub = claims.get("sub").and_then(Value::as_str);
        if sub != Some(client.as_str()) {
            return oauth_error(
                401,
                "invalid_grant",
                "The JWT 'sub' claim must equal 'iss' (the client id).",
            );
        }
        let aud = claims.get("aud").and_then(Value::as_str).unwrap_or("");
        if aud != runner.token_url || url != runner.token_url {
            return oauth_error(
                401,
                "invalid_grant",
                &format!("The JWT 'aud' claim '{aud}' is not this token endpoint."),
            );
        }
        let now = unix_now();
        let skew = 300;
        let nbf = claims.get("nbf").and_then(Value::as_i64);
        let exp = claims.get("exp").and_then(Value::as_i64);
        let (Some(nbf), Some(exp)) = (nbf, exp) else {
            return oauth_error(401, "invalid_grant", "The JWT must carry 'nbf' and 'exp'.");
        };
        let server_time = rfc3339(SystemTime::now());
        if nbf > now + skew {
            return oauth_error(
                401,
                "invalid_grant",
                &format!(
                    "The bearer token is not valid until {}. Current server time is {server_time}.",
                    rfc3339(UNIX_EPOCH + Duration::from_secs(nbf.max(0) as u64))
                ),
            );
        }
        if exp < now - skew {
            return oauth_error(
                401,
                "invalid_grant",
                &format!(
                    "The bearer token expired on {}. Current server time is {server_time}.",
                    rfc3339(UNIX_EPOCH + Duration::from_secs(exp.max(0) as u64))
                ),
            );
        }
        let id = runner.id;
        let token = format!("rt_{}", random_hex(24));
        let ttl = self.opts.runner_token_ttl;
        self.runner_tokens
            .insert(token.clone(), (id, Instant::now() + ttl));
        Reply::json(
            200,
            json!({"access_token": token, "token_type": "JWT", "expires_in": ttl.as_secs()}),
        )
    }

    /// The runner id of a live runner token; the error says why not.
    fn runner_auth(&self, auth: Option<&str>) -> Result<u64, &'static str> {
        let tok = auth
            .and_then(|a| a.strip_prefix("Bearer "))
            .ok_or("no bearer token")?;
        match self.runner_tokens.get(tok) {
            Some((id, exp)) if Instant::now() < *exp => Ok(*id),
            Some(_) => Err("the runner token has expired"),
            None if self.job_tokens.contains_key(tok) => {
                Err("a job token is not accepted here (runner token required)")
            }
            None => Err("unknown token"),
        }
    }

    /// The job index of an open job token; `Err` is why not.
    fn job_auth(&self, auth: Option<&str>) -> Result<usize, &'static str> {
        let tok = auth
            .and_then(|a| a.strip_prefix("Bearer "))
            .ok_or("no bearer token")?;
        match self.job_tokens.get(tok) {
            Some(i) => Ok(*i),
            None if self.runner_tokens.contains_key(tok) => {
                Err("a runner token is not accepted here (job token required)")
            }
            None => Err("unknown token"),
        }
    }

    // ---- broker -----------------------------------------------------------

    pub fn create_session(&mut self, auth: Option<&str>, body: &[u8]) -> Reply {
        let runner = match self.runner_auth(auth) {
            Ok(r) => r,
            Err(e) => return broker_error(401, "", e),
        };
        let Some(r) = self.runners.get(&runner) else {
            return broker_error(404, "RunnerNotFound", "Runner not found");
        };
        let Ok(b) = serde_json::from_slice::<Value>(body) else {
            return broker_error(400, "", "The session body is not JSON.");
        };
        let agent = get_ci(&b, "agent").cloned().unwrap_or(Value::Null);
        let agent_id =
            get_ci(&agent, "id").and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
        if agent_id != Some(r.id) {
            return broker_error(
                403,
                "",
                &format!(
                    "The session's agent.id {agent_id:?} is not the runner of this token ({}).",
                    r.id
                ),
            );
        }
        if str_ci(&agent, "name").as_deref() != Some(r.name.as_str()) {
            self.violations.push(format!(
                "session create: agent.name is not the runner's name {}",
                r.name
            ));
        }
        if self
            .faults
            .session_conflict_until
            .is_some_and(|t| Instant::now() < t)
            || self.sessions.values().any(|s| s.runner == runner)
        {
            return broker_error(409, "", "A session for this runner already exists.");
        }
        let id = guid();
        let owner = str_ci(&b, "ownerName").unwrap_or_default();
        let name = r.name.clone();
        self.sessions.insert(
            id.clone(),
            Session {
                id: id.clone(),
                runner,
                owner_name: owner.clone(),
                last_status: None,
                polls: 0,
                queue: VecDeque::new(),
                delivered: HashSet::new(),
            },
        );
        Reply::json(
            200,
            json!({"sessionId": id, "ownerName": owner, "agent": {"id": runner, "name": name, "version": str_ci(&agent, "version").unwrap_or_default()}, "assignmentQueued": false, "orchestrationId": "", "useFipsEncryption": false, "encryptionKey": null}),
        )
    }

    pub fn delete_session(&mut self, auth: Option<&str>) -> Reply {
        let runner = match self.runner_auth(auth) {
            Ok(r) => r,
            Err(e) => return broker_error(401, "", e),
        };
        self.sessions.retain(|_, s| s.runner != runner);
        Reply::empty(200)
    }

    fn broker_query(
        &self,
        runner: u64,
        q: &HashMap<String, String>,
        poll: bool,
    ) -> Result<String, Reply> {
        let sid = q.get("sessionId").cloned().unwrap_or_default();
        if !self.runners.contains_key(&runner) {
            return Err(broker_error(404, "RunnerNotFound", "Runner not found"));
        }
        match self.sessions.get(&sid) {
            Some(s) if s.runner == runner => {}
            _ => {
                return Err(broker_error(
                    404,
                    "RunnerSessionInvalid",
                    "The session is not valid for this runner.",
                ));
            }
        }
        match q.get("status").map(String::as_str) {
            Some("Online") | Some("Busy") => {}
            other => {
                return Err(broker_error(
                    400,
                    "",
                    &format!("status must be Online or Busy, got {other:?}"),
                ));
            }
        }
        let Some(version) = q.get("runnerVersion") else {
            return Err(broker_error(400, "", "runnerVersion is required"));
        };
        if parse_version(version) < parse_version(&self.opts.min_runner_version) {
            return Err(broker_error(
                403,
                "RunnerVersionTooOld",
                &format!("Runner version v{version} is deprecated and cannot receive messages."),
            ));
        }
        for k in ["os", "architecture"] {
            if q.get(k).is_none_or(String::is_empty) {
                return Err(broker_error(400, "", &format!("{k} is required")));
            }
        }
        if poll
            && let Some(d) = q.get("disableUpdate")
            && d != "true"
            && d != "false"
        {
            return Err(broker_error(400, "", "disableUpdate must be true or false"));
        }
        Ok(sid)
    }

    /// One step of `GET message`: an answer now, or wait for a change.
    pub fn poll(&mut self, auth: Option<&str>, query: &str, first: bool) -> PollStep {
        self.sweep();
        let runner = match self.runner_auth(auth) {
            Ok(r) => r,
            Err(e) => return PollStep::Answer(broker_error(401, "", e)),
        };
        let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let sid = match self.broker_query(runner, &q, true) {
            Ok(s) => s,
            Err(r) => return PollStep::Answer(r),
        };
        if first {
            if q.contains_key("waitSeconds") {
                self.violation(
                    "GET message with waitSeconds (the official runner never sends it)".into(),
                );
            }
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.polls += 1;
                s.last_status = q.get("status").cloned();
            }
            if let Some(r) = self.take_fault(Endpoint::Poll) {
                return PollStep::Answer(r);
            }
        }
        if let Some(s) = self.sessions.get_mut(&sid)
            && let Some((kind, body)) = s.queue.pop_front()
        {
            let id = self.next_message;
            self.next_message += 1;
            return PollStep::Answer(Reply::json(
                200,
                json!({"messageId": id, "messageType": kind, "body": body}),
            ));
        }
        // A job for this runner?
        let (ephemeral_used, holds) = match self.runners.get(&runner) {
            Some(r) => (r.had_job, r.job.is_some()),
            None => {
                return PollStep::Answer(broker_error(404, "RunnerNotFound", "Runner not found"));
            }
        };
        let pending_delivery = self
            .jobs
            .iter()
            .any(|j| j.state == FakeJobState::Delivered { runner });
        let busy_status = q.get("status").map(String::as_str) == Some("Busy");
        let idle = !ephemeral_used && !holds && !pending_delivery && !busy_status;
        if idle || self.faults.deliver_while_busy {
            let labels: Vec<String> = self.runners[&runner]
                .labels
                .iter()
                .map(|l| l.to_ascii_lowercase())
                .collect();
            let run_service = self.run_service_url();
            if let Some(j) = self.jobs.iter_mut().find(|j| {
                j.state == FakeJobState::Queued
                    && !j.excluded.contains(&runner)
                    && j.spec
                        .runs_on
                        .iter()
                        .all(|l| labels.contains(&l.to_ascii_lowercase()))
            }) {
                j.state = FakeJobState::Delivered { runner };
                j.delivered_at = Some(Instant::now());
                j.delivered_to.push(runner);
                let body = json!({
                    "runner_request_id": j.request_id,
                    "run_service_url": run_service,
                    "billing_owner_id": j.spec.billing_owner_id,
                    "should_acknowledge": true,
                })
                .to_string();
                let id = j.message_id;
                let rid = j.request_id.clone();
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.delivered.insert(rid);
                }
                return PollStep::Answer(Reply::json(
                    200,
                    json!({"messageId": id, "messageType": "RunnerJobRequest", "body": body}),
                ));
            }
        }
        PollStep::Wait
    }

    /// The empty answer at the end of a long poll.
    pub fn empty_poll(&self) -> Reply {
        if self.faults.empty_poll_204 {
            Reply::empty(204)
        } else {
            Reply::empty(200)
        }
    }

    pub fn acknowledge(&mut self, auth: Option<&str>, query: &str, body: &[u8]) -> Reply {
        let runner = match self.runner_auth(auth) {
            Ok(r) => r,
            Err(e) => return broker_error(401, "", e),
        };
        let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let sid = match self.broker_query(runner, &q, false) {
            Ok(s) => s,
            Err(r) => return r,
        };
        let rid = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|b| str_ci(&b, "runnerRequestId"));
        let Some(rid) = rid else {
            return broker_error(400, "", "runnerRequestId is required");
        };
        let delivered = self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.delivered.contains(&rid));
        let Some(i) = self.jobs.iter().position(|j| j.request_id == rid) else {
            return broker_error(404, "AcknowledgeJobNotFound", "The job was not found.");
        };
        let current = matches!(self.jobs[i].state, FakeJobState::Delivered { runner: r } | FakeJobState::Acquired { runner: r } if r == runner);
        if !delivered || !current || self.jobs[i].closed {
            return broker_error(404, "AcknowledgeJobNotFound", "The job was not found.");
        }
        if self.runner_holds_other(runner, i) {
            self.violation(format!(
                "runner {runner} acknowledged job {} while it holds another job",
                self.jobs[i].index
            ));
        }
        self.jobs[i].acknowledged = true;
        Reply::empty(200)
    }

    fn runner_holds_other(&self, runner: u64, job: usize) -> bool {
        self.runners
            .get(&runner)
            .is_some_and(|r| r.job.is_some_and(|j| j != job) || (r.had_job && r.job != Some(job)))
    }

    // ---- run service ----------------------------------------------------

    pub fn acquire(&mut self, auth: Option<&str>, body: &[u8]) -> Reply {
        self.sweep();
        let runner = match self.runner_auth(auth) {
            Ok(r) => r,
            Err(e) => return run_error(401, e),
        };
        let Ok(b) = serde_json::from_slice::<Value>(body) else {
            return run_error(422, "The request body is not JSON.");
        };
        let Some(mid) = str_ci(&b, "jobMessageId").filter(|s| !s.is_empty()) else {
            return run_error(422, "jobMessageId is required.");
        };
        if str_ci(&b, "runnerOS").is_none_or(|s| s.is_empty()) {
            return run_error(422, "runnerOS is required.");
        }
        if !self.runners.contains_key(&runner) {
            return run_error(404, "Runner not found.");
        }
        let Some(i) = self.jobs.iter().position(|j| j.request_id == mid) else {
            return run_error(404, "Job not found.");
        };
        match self.jobs[i].state.clone() {
            FakeJobState::Delivered { runner: r } if r == runner => {}
            FakeJobState::Acquired { .. } => return run_error(409, "Job already acquired."),
            FakeJobState::Completed | FakeJobState::Abandoned => {
                return run_error(404, "Job not found.");
            }
            _ => return run_error(404, "Job not found (not assigned to this runner)."),
        }
        if self.runner_holds_other(runner, i) {
            self.violation(format!(
                "runner {runner} acquired job {} while it holds another job",
                self.jobs[i].index
            ));
            return run_error(409, "The runner is already busy.");
        }
        if str_ci(&b, "billingOwnerId").as_deref()
            != Some(self.jobs[i].spec.billing_owner_id.as_str())
        {
            self.violation(format!(
                "acquirejob for job {} did not echo billingOwnerId",
                self.jobs[i].index
            ));
        }
        let token = format!("jt_{}", random_hex(24));
        self.job_tokens.insert(token.clone(), i);
        let lock = self.opts.lock_duration;
        let base = self.base.clone();
        let run_service = self.run_service_url();
        let results = self.results_url();
        let feed = self.feed_url();
        let j = &mut self.jobs[i];
        j.token = Some(token.clone());
        j.state = FakeJobState::Acquired { runner };
        j.locked_until = Some(Instant::now() + lock);
        if let Some(r) = self.runners.get_mut(&runner) {
            r.job = Some(i);
            r.had_job = true;
        }
        let ids = MessageIds {
            plan_id: &j.plan_id,
            job_id: &j.job_id,
            timeline_id: &j.timeline_id,
            step_ids: &j.step_ids,
            job_token: &token,
            github_token: &j.github_token,
            base_url: &base,
            run_service_url: &run_service,
            results_url: &results,
            feed_url: &feed,
            run_id: 9_000_000_000 + j.index,
        };
        let msg = job_message(&j.spec, &ids);
        let orchestration = format!("{}.{}.__default", j.plan_id, j.spec.key);
        Reply::json(200, msg)
            .header("x-plan-id", &j.plan_id)
            .header("x-job-name", &j.spec.key)
            .header("x-github-actions-orchestration-id", &orchestration)
            .header("x-github-request-id", &random_hex(8).to_uppercase())
    }

    fn check_ids(&self, i: usize, b: &Value, plan_key: &str, job_key: &str) -> Result<(), String> {
        let j = &self.jobs[i];
        let plan = str_ci(b, plan_key);
        let job = str_ci(b, job_key);
        if plan.as_deref() != Some(j.plan_id.as_str()) || job.as_deref() != Some(j.job_id.as_str())
        {
            return Err(format!(
                "{plan_key}/{job_key} ({plan:?}, {job:?}) do not match the job of this token"
            ));
        }
        Ok(())
    }

    pub fn renew(&mut self, auth: Option<&str>, body: &[u8]) -> Reply {
        self.sweep();
        let i = match self.job_auth(auth) {
            Ok(i) => i,
            Err(e) => return run_error(401, e),
        };
        let Ok(b) = serde_json::from_slice::<Value>(body) else {
            return run_error(400, "The request body is not JSON.");
        };
        if self.jobs[i].closed || self.faults.renew_404.contains(&self.jobs[i].index) {
            return run_error(404, "TaskOrchestrationJobNotFoundException: job not found");
        }
        if let Err(e) = self.check_ids(i, &b, "planId", "jobId") {
            return run_error(400, &e);
        }
        let until = Instant::now() + self.opts.lock_duration;
        let j = &mut self.jobs[i];
        j.locked_until = Some(until);
        j.renewals += 1;
        Reply::json(200, json!({"lockedUntil": rfc3339(wall(until))}))
    }

    pub fn complete(&mut self, auth: Option<&str>, body: &[u8]) -> Reply {
        self.sweep();
        let i = match self.job_auth(auth) {
            Ok(i) => i,
            Err(e) => return run_error(401, e),
        };
        if self.jobs[i].closed {
            return run_error(404, "TaskOrchestrationJobNotFoundException: job not found");
        }
        let Ok(b) = serde_json::from_slice::<Value>(body) else {
            return run_error(400, "The request body is not JSON.");
        };
        if let Err(e) = self.check_ids(i, &b, "planId", "jobId") {
            return run_error(400, &e);
        }
        let conclusion = str_ci(&b, "conclusion").unwrap_or_default();
        if !["succeeded", "failed", "canceled", "skipped"].contains(&conclusion.as_str()) {
            return run_error(
                400,
                &format!(
                    "conclusion '{conclusion}' is not one of succeeded, failed, canceled, skipped"
                ),
            );
        }
        if let Some(outs) = get_ci(&b, "outputs").filter(|v| !v.is_null()) {
            let Some(o) = outs.as_object() else {
                return run_error(400, "outputs must be an object");
            };
            for (k, v) in o {
                let ok = get_ci(v, "value").is_some_and(Value::is_string)
                    && get_ci(v, "isSecret").is_none_or(Value::is_boolean);
                if !ok {
                    return run_error(
                        400,
                        &format!("output '{k}' must be {{\"value\": string, \"isSecret\": bool}}"),
                    );
                }
            }
        }
        if let Some(sr) = get_ci(&b, "stepResults").filter(|v| !v.is_null()) {
            let Some(arr) = sr.as_array() else {
                return run_error(400, "stepResults must be an array");
            };
            for s in arr {
                let Some(o) = s.as_object() else {
                    return run_error(400, "each stepResults entry must be an object");
                };
                if let Some(k) = o.keys().find(|k| k.chars().any(|c| c.is_ascii_uppercase())) {
                    return run_error(
                        400,
                        &format!("stepResults use snake_case keys; '{k}' is not one"),
                    );
                }
                let ext = o.get("external_id").and_then(Value::as_str).unwrap_or("");
                if !self.jobs[i].step_ids.iter().any(|s| s == ext) {
                    return run_error(
                        400,
                        &format!("stepResults external_id '{ext}' is not a step of this job"),
                    );
                }
            }
        }
        if self.jobs[i].renewals == 0 {
            let idx = self.jobs[i].index;
            self.violation(format!(
                "job {idx}: completejob before any successful renewjob"
            ));
        }
        let j = &mut self.jobs[i];
        j.complete_body = Some(b);
        j.state = FakeJobState::Completed;
        j.closed = true;
        let runner = self
            .runners
            .values()
            .find(|r| r.job == Some(i))
            .map(|r| r.id);
        if let Some(r) = runner {
            // Ephemeral: the runner is deleted with its job.
            self.remove_runner(r);
        }
        Reply::empty(200)
    }

    // ---- results -------------------------------------------------------

    /// Checks job token and ids of a results call; records the "before the
    /// first renew" violation.
    fn results_job(&mut self, auth: Option<&str>, b: &Value, what: &str) -> Result<usize, Reply> {
        let i = match self.job_auth(auth) {
            Ok(i) => i,
            Err(e) => return Err(twirp_error(401, "unauthenticated", e)),
        };
        if self.jobs[i].closed {
            return Err(twirp_error(
                401,
                "unauthenticated",
                "the job is over; its token is no longer valid",
            ));
        }
        if let Err(e) = self.check_ids(
            i,
            b,
            "workflow_run_backend_id",
            "workflow_job_run_backend_id",
        ) {
            return Err(twirp_error(400, "invalid_argument", &e));
        }
        if self.jobs[i].renewals == 0 {
            let idx = self.jobs[i].index;
            self.violation(format!(
                "job {idx}: results call {what} before the first successful renewjob"
            ));
        }
        Ok(i)
    }

    fn step_of(&self, i: usize, b: &Value) -> Result<String, Reply> {
        let s = b
            .get("step_backend_id")
            .and_then(Value::as_str)
            .unwrap_or("");
        if self.jobs[i].step_ids.iter().any(|x| x == s) {
            Ok(s.to_string())
        } else {
            Err(twirp_error(
                400,
                "invalid_argument",
                &format!("step_backend_id '{s}' is not a step of this job"),
            ))
        }
    }

    fn signed_url(&mut self, key: String) -> String {
        let sig = random_hex(16);
        let b = self.blobs.entry(key.clone()).or_default();
        b.sig = sig.clone();
        format!(
            "{}/_blob/{key}?sv=2023-11-03&se=2099-01-01T00%3A00%3A00Z&sp=racw&sig={sig}",
            self.base
        )
    }

    pub fn results(
        &mut self,
        method: &str,
        auth: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Reply {
        if !content_type.unwrap_or("").starts_with("application/json") {
            return twirp_error(
                404,
                "bad_route",
                &format!("unexpected Content-Type: {:?}", content_type.unwrap_or("")),
            );
        }
        let Ok(b) = serde_json::from_slice::<Value>(body) else {
            return twirp_error(400, "malformed", "the body is not JSON");
        };
        let i = match self.results_job(auth, &b, method) {
            Ok(i) => i,
            Err(r) => return r,
        };
        let job_id = self.jobs[i].job_id.clone();
        match method {
            "WorkflowStepsUpdate" => {
                let Some(order) = b.get("change_order").and_then(proto_int) else {
                    return twirp_error(
                        400,
                        "invalid_argument",
                        "change_order is required (an integer)",
                    );
                };
                if self.jobs[i].last_change_order.is_some_and(|l| order <= l) {
                    return twirp_error(
                        400,
                        "invalid_argument",
                        &format!("change_order {order} is not greater than the previous one"),
                    );
                }
                let Some(steps) = b.get("steps").and_then(Value::as_array) else {
                    return twirp_error(400, "invalid_argument", "steps is required");
                };
                let statuses: &[i64] = if self.faults.lenient_step_status {
                    &[0, 1, 2, 3, 5, 6]
                } else {
                    &[0, 3, 5, 6]
                };
                for s in steps {
                    let ext = s.get("external_id").and_then(Value::as_str).unwrap_or("");
                    if !self.jobs[i].step_ids.iter().any(|x| x == ext) {
                        return twirp_error(
                            400,
                            "invalid_argument",
                            &format!("external_id '{ext}' is not a step of this job"),
                        );
                    }
                    let st = s.get("status").and_then(proto_int).unwrap_or(0);
                    if !statuses.contains(&st) {
                        return twirp_error(
                            400,
                            "invalid_argument",
                            &format!("status {st} is not a valid step status"),
                        );
                    }
                    let c = s.get("conclusion").and_then(proto_int).unwrap_or(0);
                    if ![0, 2, 3, 4, 7].contains(&c) {
                        return twirp_error(
                            400,
                            "invalid_argument",
                            &format!("conclusion {c} is not a valid step conclusion"),
                        );
                    }
                }
                let j = &mut self.jobs[i];
                j.last_change_order = Some(order);
                j.step_updates.push(steps.clone());
                Reply::json(200, json!({"ok": true}))
            }
            "GetStepLogsSignedBlobURL" => {
                let step = match self.step_of(i, &b) {
                    Ok(s) => s,
                    Err(r) => return r,
                };
                let url = self.signed_url(format!("{job_id}/steps/{step}/logs"));
                Reply::json(
                    200,
                    json!({"logs_url": url, "blob_storage_type": "BLOB_STORAGE_TYPE_AZURE", "soft_size_limit": self.opts.soft_size_limit.to_string()}),
                )
            }
            "GetStepSummarySignedBlobURL" => {
                let step = match self.step_of(i, &b) {
                    Ok(s) => s,
                    Err(r) => return r,
                };
                let url = self.signed_url(format!("{job_id}/steps/{step}/summary"));
                Reply::json(
                    200,
                    json!({"summary_url": url, "blob_storage_type": "BLOB_STORAGE_TYPE_AZURE", "soft_size_limit": self.opts.soft_size_limit.to_string()}),
                )
            }
            "GetJobLogsSignedBlobURL" => {
                let url = self.signed_url(format!("{job_id}/log"));
                Reply::json(
                    200,
                    json!({"logs_url": url, "blob_storage_type": "BLOB_STORAGE_TYPE_AZURE"}),
                )
            }
            "GetJobDiagLogsSignedBlobURL" => {
                let url = self.signed_url(format!("{job_id}/diag"));
                Reply::json(
                    200,
                    json!({"diag_logs_url": url, "blob_storage_type": "BLOB_STORAGE_TYPE_AZURE"}),
                )
            }
            "CreateStepLogsMetadata" | "CreateJobLogsMetadata" => {
                let key = if method == "CreateStepLogsMetadata" {
                    match self.step_of(i, &b) {
                        Ok(s) => format!("{job_id}/steps/{s}/logs"),
                        Err(r) => return r,
                    }
                } else {
                    format!("{job_id}/log")
                };
                if b.get("uploaded_at").and_then(Value::as_str).is_none() {
                    return twirp_error(400, "invalid_argument", "uploaded_at is required");
                }
                let lines = match b.get("line_count") {
                    Some(Value::Number(n)) => n.as_u64(),
                    Some(Value::String(s)) => s.parse().ok(),
                    _ => None,
                };
                let Some(lines) = lines else {
                    return twirp_error(400, "invalid_argument", "line_count is required");
                };
                let Some(blob) = self
                    .blobs
                    .get(&key)
                    .filter(|b| b.append || !b.data.is_empty() || !b.sig.is_empty())
                else {
                    return twirp_error(
                        400,
                        "invalid_argument",
                        "no log was uploaded for this record",
                    );
                };
                let stored = line_count(&blob.data);
                if stored != lines {
                    let idx = self.jobs[i].index;
                    self.violation(format!(
                        "job {idx}: {method} line_count {lines} but the blob holds {stored} lines"
                    ));
                    return twirp_error(
                        400,
                        "invalid_argument",
                        &format!("line_count {lines} does not match the {stored} lines uploaded"),
                    );
                }
                if blob.append && !blob.sealed {
                    let idx = self.jobs[i].index;
                    self.violation(format!(
                        "job {idx}: {method} for an append blob that is not sealed"
                    ));
                }
                let j = &mut self.jobs[i];
                if method == "CreateStepLogsMetadata" {
                    let s = b
                        .get("step_backend_id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    j.step_log_lines.insert(s, lines);
                } else {
                    j.job_log_lines = Some(lines);
                }
                Reply::json(200, json!({"ok": true}))
            }
            "CreateStepSummaryMetadata" => {
                let step = match self.step_of(i, &b) {
                    Ok(s) => s,
                    Err(r) => return r,
                };
                let key = format!("{job_id}/steps/{step}/summary");
                let size = self.blobs.get(&key).map(|b| b.data.len()).unwrap_or(0);
                if size as u64 > self.opts.soft_size_limit {
                    return twirp_error(
                        400,
                        "invalid_argument",
                        "the step summary is larger than soft_size_limit",
                    );
                }
                let text = self
                    .blobs
                    .get(&key)
                    .map(|b| String::from_utf8_lossy(&b.data).into_owned())
                    .unwrap_or_default();
                self.jobs[i].summaries.insert(step, text);
                Reply::json(200, json!({"ok": true}))
            }
            other => twirp_error(
                404,
                "bad_route",
                &format!(
                    "no handler for path \"/twirp/results.services.receiver.Receiver/{other}\""
                ),
            ),
        }
    }

    // ---- blobs ---------------------------------------------------------

    pub fn blob_put(
        &mut self,
        key: &str,
        query: &str,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Reply {
        let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let Some(blob) = self.blobs.get(key) else {
            return azure_error(
                403,
                "AuthenticationFailed",
                "Server failed to authenticate the request.",
            );
        };
        if q.get("sig") != Some(&blob.sig) || blob.sig.is_empty() {
            return azure_error(
                403,
                "AuthenticationFailed",
                "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
            );
        }
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let limit = self.opts.soft_size_limit;
        let is_summary = key.ends_with("/summary");
        let blob = self.blobs.entry(key.to_string()).or_default();
        let comp = q.get("comp").map(String::as_str);
        let ok = |r: Reply| {
            r.header("etag", &format!("\"0x{}\"", random_hex(8).to_uppercase()))
                .header("x-ms-version", "2023-11-03")
                .header("x-ms-request-id", &guid())
        };
        match comp {
            Some("appendblock") => {
                if !blob.append {
                    if blob.data.is_empty() && blob.sealed {
                        return azure_error(409, "BlobIsSealed", "The blob is sealed.");
                    }
                    return azure_error(404, "BlobNotFound", "The specified blob does not exist.");
                }
                if blob.sealed {
                    return azure_error(
                        409,
                        "BlobIsSealed",
                        "This operation is not permitted on a sealed blob.",
                    );
                }
                blob.data.extend_from_slice(body);
                if q.get("seal").map(String::as_str) == Some("true") {
                    blob.sealed = true;
                }
                ok(Reply::empty(201))
            }
            Some("seal") => {
                if !blob.append {
                    return azure_error(404, "BlobNotFound", "The specified blob does not exist.");
                }
                blob.sealed = true;
                ok(Reply::empty(200))
            }
            Some(other) => azure_error(
                400,
                "InvalidQueryParameterValue",
                &format!(
                    "Value for one of the query parameters specified in the request URI is invalid: comp={other}"
                ),
            ),
            None => match h("x-ms-blob-type").as_deref() {
                Some("BlockBlob") => {
                    if blob.sealed {
                        return azure_error(
                            409,
                            "BlobIsSealed",
                            "This operation is not permitted on a sealed blob.",
                        );
                    }
                    if is_summary && body.len() as u64 > limit {
                        return azure_error(
                            413,
                            "RequestBodyTooLarge",
                            "The summary is larger than soft_size_limit.",
                        );
                    }
                    blob.data = body.to_vec();
                    blob.append = false;
                    ok(Reply::empty(201))
                }
                Some("AppendBlob") => {
                    if !body.is_empty() {
                        return azure_error(
                            400,
                            "InvalidHeaderValue",
                            "An append blob is created with Content-Length: 0.",
                        );
                    }
                    if blob.sealed {
                        return azure_error(
                            409,
                            "BlobIsSealed",
                            "This operation is not permitted on a sealed blob.",
                        );
                    }
                    blob.data.clear();
                    blob.append = true;
                    ok(Reply::empty(201))
                }
                Some(other) => azure_error(
                    400,
                    "InvalidHeaderValue",
                    &format!("x-ms-blob-type '{other}' is not valid"),
                ),
                None => azure_error(
                    400,
                    "MissingRequiredHeader",
                    "An HTTP header that's mandatory for this request is not specified: x-ms-blob-type",
                ),
            },
        }
    }

    // ---- feed ------------------------------------------------------------

    /// The job of a feed connection's bearer job token.
    pub fn feed_job(&self, auth: Option<&str>) -> Option<usize> {
        let i = self.job_auth(auth).ok()?;
        (!self.jobs[i].closed).then_some(i)
    }

    pub fn feed_frame(&mut self, job: usize, text: &str) {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => {
                let ok = v.get("count").and_then(Value::as_u64).is_some()
                    && v.get("value").and_then(Value::as_array).is_some()
                    && v.get("stepId")
                        .and_then(Value::as_str)
                        .is_some_and(|s| self.jobs[job].step_ids.iter().any(|x| x == s))
                    && v.get("startLine")
                        .and_then(Value::as_u64)
                        .is_some_and(|n| n >= 1);
                if !ok {
                    let idx = self.jobs[job].index;
                    self.violation(format!("job {idx}: malformed feed frame {text}"));
                }
                self.jobs[job].feed_frames.push(v);
            }
            Err(_) => {
                let idx = self.jobs[job].index;
                self.violation(format!("job {idx}: feed frame is not JSON"));
            }
        }
    }
}

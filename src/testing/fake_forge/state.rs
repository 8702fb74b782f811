//! The fake forge's state machine: everything a Forgejo server decides, with
//! no I/O. The HTTP layer in the parent module decodes a call into an [`Rpc`]
//! plus [`Caller`] headers and hands the body to [`State::call`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use prost::Message;
use serde_json::{Value, json};

use crate::forge::forgejo::error::Code;
use crate::forge::forgejo::proto::{self, TaskResult, Timestamp};
use crate::secret::Secret;

use super::artifacts::{Services, TaskAuth, Tasks};

/// Largest output key the server stores (bytes), as in Forgejo.
pub const MAX_OUTPUT_KEY_BYTES: usize = 255;
/// Largest output value the server stores (bytes), as in Forgejo.
pub const MAX_OUTPUT_VALUE_BYTES: usize = 1024 * 1024;
/// The `forgejo_server_version` the fake sends.
pub const FORGEJO_SERVER_VERSION: &str = "fake-forge";
/// Runner names are truncated to this many bytes.
const MAX_NAME_BYTES: usize = 255;

/// The RPC methods the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rpc {
    Ping,
    Register,
    Declare,
    FetchTask,
    FetchSingleTask,
    UpdateTask,
    UpdateLog,
}

impl Rpc {
    /// Maps a path below `/api/actions/` to a method.
    pub(super) fn from_path(p: &str) -> Option<Rpc> {
        Some(match p {
            "ping.v1.PingService/Ping" => Rpc::Ping,
            "runner.v1.RunnerService/Register" => Rpc::Register,
            "runner.v1.RunnerService/Declare" => Rpc::Declare,
            "runner.v1.RunnerService/FetchTask" => Rpc::FetchTask,
            "runner.v1.RunnerService/FetchSingleTask" => Rpc::FetchSingleTask,
            "runner.v1.RunnerService/UpdateTask" => Rpc::UpdateTask,
            "runner.v1.RunnerService/UpdateLog" => Rpc::UpdateLog,
            _ => return None,
        })
    }

    /// The method name, as tests pass it to `fail_next` / `set_delay`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Rpc::Ping => "Ping",
            Rpc::Register => "Register",
            Rpc::Declare => "Declare",
            Rpc::FetchTask => "FetchTask",
            Rpc::FetchSingleTask => "FetchSingleTask",
            Rpc::UpdateTask => "UpdateTask",
            Rpc::UpdateLog => "UpdateLog",
        }
    }
}

/// The request headers the server looks at.
#[derive(Debug, Clone, Default)]
pub(super) struct Caller {
    pub uuid: Option<String>,
    pub token: Option<Secret>,
    pub request_key: Option<String>,
}

/// Who produced an error; decides its form in Gitea's error style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The server's handler or interceptor. Gitea returns gRPC `status`
    /// errors there, which connect-go does not recognise: 500 `unknown`
    /// "rpc error: code = <Code> desc = <message>".
    Handler,
    /// A handler returning a plain Go error (Gitea's `Register`): 500
    /// `unknown` with the bare message.
    PlainGo,
    /// connect-go itself (an undecodable body, an unknown compression, a
    /// missed deadline): the real Connect code on every server.
    Connect,
}

/// A Connect error the server answers with.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RpcError {
    pub code: Code,
    pub message: String,
    pub origin: Origin,
}

impl RpcError {
    pub(super) fn new(code: Code, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            origin: Origin::Handler,
        }
    }

    /// An error connect-go produces before or after the handler runs.
    pub(super) fn connect(code: Code, message: impl Into<String>) -> RpcError {
        RpcError {
            origin: Origin::Connect,
            ..RpcError::new(code, message)
        }
    }

    /// A plain Go error (`errors.New`) returned by a handler.
    fn plain(code: Code, message: impl Into<String>) -> RpcError {
        RpcError {
            origin: Origin::PlainGo,
            ..RpcError::new(code, message)
        }
    }
}

fn invalid(message: impl Into<String>) -> RpcError {
    RpcError::new(Code::InvalidArgument, message)
}

/// A `Register` validation error: Forgejo's `invalid_argument`, Gitea's
/// plain Go error.
fn register_error(message: &str) -> RpcError {
    RpcError::plain(Code::InvalidArgument, message)
}

fn internal(message: impl Into<String>) -> RpcError {
    RpcError::new(Code::Internal, message)
}

/// What a call produced, for the HTTP layer.
pub(super) struct Outcome {
    /// The encoded response message, or the error.
    pub result: Result<Vec<u8>, RpcError>,
    /// A request key the call locked; the HTTP layer releases it after any delay.
    pub locked_key: Option<String>,
    /// How long to hold the answer.
    pub delay: Duration,
    /// Answer errors in Gitea's style.
    pub gitea_errors: bool,
}

/// The server-side status of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Assigned to a runner, no final result yet.
    Running,
    Success,
    Failure,
    Cancelled,
    Skipped,
}

impl TaskStatus {
    /// Success, failure, cancelled or skipped.
    pub fn is_final(self) -> bool {
        self != TaskStatus::Running
    }

    /// What goes on the wire in `UpdateTaskResponse.state.result`.
    pub fn wire_result(self) -> TaskResult {
        match self {
            TaskStatus::Running => TaskResult::Unspecified,
            TaskStatus::Success => TaskResult::Success,
            TaskStatus::Failure => TaskResult::Failure,
            TaskStatus::Cancelled => TaskResult::Cancelled,
            TaskStatus::Skipped => TaskResult::Skipped,
        }
    }

    fn from_result(r: TaskResult) -> TaskStatus {
        match r {
            TaskResult::Unspecified => TaskStatus::Running,
            TaskResult::Success => TaskStatus::Success,
            TaskResult::Failure => TaskStatus::Failure,
            TaskResult::Cancelled => TaskStatus::Cancelled,
            TaskResult::Skipped => TaskStatus::Skipped,
        }
    }
}

/// A job waiting in the fake's queue (one single-job workflow, as Forgejo's
/// `jobparser` produces them).
#[derive(Clone, Default)]
pub struct FakeJob {
    /// The single-job workflow YAML sent as `workflow_payload`. Step rows are
    /// created from `jobs.<id>.steps`; an unparsable payload gets no step rows
    /// (and is still handed out, so runners' error paths can be tested).
    pub payload_yaml: String,
    /// The evaluated `runs-on`: every entry must be one of the runner's labels.
    pub runs_on: Vec<String>,
    /// Repository/owner secrets, sent next to the three `*_TOKEN` secrets.
    pub secrets: HashMap<String, String>,
    /// The `vars` context.
    pub vars: HashMap<String, String>,
    /// Results and outputs of the jobs this one needs.
    pub needs: HashMap<String, proto::TaskNeed>,
    /// Top-level keys merged over the default context (an object; `null`
    /// values remove a key, for example `gitea_default_actions_url`).
    pub context_overrides: Value,
    /// OpenID Connect is enabled for the job (`enable-openid-connect`): the
    /// context carries `forgejo_actions_id_token_request_token` (the runtime
    /// JWT, whose scope then allows ID tokens) and
    /// `forgejo_actions_id_token_request_url`, as Forgejo sends them.
    pub oidc: bool,
    /// The run the job belongs to (`github.run_id`, the runtime token's
    /// `RunID`). `None`: a run of its own whose id is the job's id. Jobs of
    /// one run share its artifacts, as a job and the jobs that `needs:` it
    /// do on Forgejo; pass the first job's id to the later ones.
    pub run_id: Option<i64>,
}

impl FakeJob {
    /// A job with this payload and `runs-on`, nothing else.
    pub fn new(payload_yaml: impl Into<String>, runs_on: &[&str]) -> FakeJob {
        FakeJob {
            payload_yaml: payload_yaml.into(),
            runs_on: runs_on.iter().map(|s| s.to_string()).collect(),
            ..FakeJob::default()
        }
    }

    /// Sets one top-level context key (see [`FakeJob::context_overrides`]).
    pub fn context(mut self, key: &str, value: Value) -> Self {
        if !self.context_overrides.is_object() {
            self.context_overrides = Value::Object(serde_json::Map::new());
        }
        if let Some(m) = self.context_overrides.as_object_mut() {
            m.insert(key.to_string(), value);
        }
        self
    }

    /// The user who triggered the run: `actor` and `actor_id` (Forgejo
    /// sends the id as a string). The default is `fake-user`, id 1.
    pub fn actor(self, name: &str, id: i64) -> Self {
        self.context("actor", json!(name))
            .context("actor_id", json!(id.to_string()))
    }

    /// `triggering_actor` (empty by default, as Forgejo sends it; recent
    /// Gitea fills it).
    pub fn triggering_actor(self, name: &str) -> Self {
        self.context("triggering_actor", json!(name))
    }

    /// A `pull_request` event whose head branch `feature` lives in
    /// `head_repo` (`owner/name`): a pull request from a fork when that is
    /// not `fake-owner/fake-repo` (`event.pull_request.head.repo.fork` is
    /// then true). Sets `event_name`, `event`, `ref`
    /// (`refs/pull/1/head`), `ref_name`, `head_ref` and `base_ref`.
    pub fn pull_request(self, head_repo: &str) -> Self {
        let base_repo = "fake-owner/fake-repo";
        let fork = head_repo != base_repo;
        let repo = |full: &str, fork: bool| {
            let (owner, name) = full.split_once('/').unwrap_or((full, full));
            json!({
                "full_name": full,
                "name": name,
                "owner": {"login": owner, "username": owner},
                "fork": fork,
                "private": false,
            })
        };
        let event = json!({
            "action": "opened",
            "number": 1,
            "pull_request": {
                "number": 1,
                "state": "open",
                "title": "A change",
                "head": {
                    "label": "feature",
                    "ref": "feature",
                    "sha": "89abcdef0123456789abcdef0123456789abcdef",
                    "repo": repo(head_repo, fork),
                },
                "base": {
                    "label": "main",
                    "ref": "main",
                    "sha": "0123456789abcdef0123456789abcdef01234567",
                    "repo": repo(base_repo, false),
                },
            },
            "repository": repo(base_repo, false),
        });
        self.context("event_name", json!("pull_request"))
            .context("event", event)
            .context("ref", json!("refs/pull/1/head"))
            .context("ref_name", json!("1/head"))
            .context("head_ref", json!("feature"))
            .context("base_ref", json!("main"))
    }

    /// A pull request from the fork `fork-owner/fake-repo`
    /// ([`FakeJob::pull_request`]).
    pub fn fork_pull_request(self) -> Self {
        self.pull_request("fork-owner/fake-repo")
    }

    /// A `schedule` event (`event_name` `schedule`, `event.schedule` the
    /// cron line).
    pub fn schedule(self) -> Self {
        self.context("event_name", json!("schedule"))
            .context("event", json!({"schedule": "0 3 * * *"}))
    }
}

impl fmt::Debug for FakeJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.secrets.keys().collect();
        names.sort();
        f.debug_struct("FakeJob")
            .field("payload_bytes", &self.payload_yaml.len())
            .field("runs_on", &self.runs_on)
            .field("secrets", &names)
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("needs", &self.needs.keys().collect::<Vec<_>>())
            .field("oidc", &self.oidc)
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// A step row of a task, as the server stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSnapshot {
    /// `name`, else `uses`, else `run`, else `id` of the payload step.
    pub name: String,
    pub result: TaskResult,
    pub started_at: Option<Timestamp>,
    pub stopped_at: Option<Timestamp>,
    pub log_index: i64,
    pub log_length: i64,
}

/// Everything the fake knows about one task.
#[derive(Debug, Clone)]
pub struct TaskSnapshot {
    pub id: i64,
    pub job_id: i64,
    /// The runner it was assigned to.
    pub runner_uuid: String,
    /// The server's view (what UpdateTask answers).
    pub status: TaskStatus,
    /// The last task result the runner reported (UNSPECIFIED until final).
    pub client_result: TaskResult,
    /// Task times as the runner reported them.
    pub started_at: Option<Timestamp>,
    pub stopped_at: Option<Timestamp>,
    pub steps: Vec<StepSnapshot>,
    /// Log rows received (contents), in order; empty when the fake was
    /// started with `keep_log_content: false` (see `log_rows`).
    pub log: Vec<String>,
    /// Number of log rows held (always counted).
    pub log_rows: usize,
    /// Content bytes of the log rows held (always counted).
    pub log_bytes: u64,
    /// The log was archived (Forgejo: `no_more` on a call that appended rows).
    pub archived: bool,
    /// The runner sent `no_more=true` at least once.
    pub no_more: bool,
    pub outputs: BTreeMap<String, String>,
    /// The current task token (changes on request-key recovery).
    pub token: Secret,
    /// The `x-runner-request-key` the task was assigned under.
    pub request_key: Option<String>,
    pub update_task_calls: usize,
    pub update_log_calls: usize,
}

impl TaskSnapshot {
    /// The log rows of step `i` according to its reported `log_index`/`log_length`.
    pub fn step_log(&self, i: usize) -> &[String] {
        let Some(s) = self.steps.get(i) else {
            return &[];
        };
        let start = usize::try_from(s.log_index)
            .unwrap_or(0)
            .min(self.log.len());
        let end = start
            .saturating_add(usize::try_from(s.log_length).unwrap_or(0))
            .min(self.log.len());
        &self.log[start..end]
    }
}

/// One `UpdateLog` call that appended rows: when the server took them and
/// what it held afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogAppend {
    pub at: SystemTime,
    /// Rows held after the call.
    pub rows: usize,
    /// Content bytes held after the call.
    pub bytes: u64,
}

/// A registered runner.
#[derive(Debug, Clone)]
pub struct RunnerSnapshot {
    pub id: i64,
    pub uuid: String,
    pub name: String,
    pub labels: Vec<String>,
    pub version: String,
    pub ephemeral: bool,
    /// Last authenticated call.
    pub last_online: Option<SystemTime>,
}

/// A waiting or assigned job.
#[derive(Debug, Clone)]
pub struct JobSnapshot {
    pub id: i64,
    /// The job key in the payload's `jobs:`.
    pub key: String,
    /// The handle `FetchSingleTask` can ask for.
    pub handle: String,
    pub runs_on: Vec<String>,
    /// The task it was assigned as, if any.
    pub task_id: Option<i64>,
}

/// One call the fake answered.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// Method name (`FetchTask`, …) or, for unknown routes, the path.
    pub method: String,
    pub at: SystemTime,
    /// The `x-runner-uuid` header, if sent.
    pub runner_uuid: Option<String>,
    pub request_key: Option<String>,
    /// The HTTP status the server decided on.
    pub http_status: u16,
    /// The Connect code of an error answer.
    pub code: Option<Code>,
    /// The answer's body was gzipped (`Content-Encoding: gzip`).
    pub gzipped: bool,
}

struct RunnerRec {
    id: i64,
    uuid: String,
    token: Secret,
    name: String,
    version: String,
    labels: Vec<String>,
    ephemeral: bool,
    had_task: bool,
    last_online: Option<SystemTime>,
}

impl RunnerRec {
    fn to_proto(&self) -> proto::Runner {
        proto::Runner {
            id: self.id,
            uuid: self.uuid.clone(),
            token: self.token.expose().to_string(),
            name: self.name.clone(),
            version: self.version.clone(),
            labels: self.labels.clone(),
            ephemeral: self.ephemeral,
            ..proto::Runner::default()
        }
    }
}

struct JobRec {
    id: i64,
    key: String,
    handle: String,
    step_names: Vec<String>,
    job: FakeJob,
    task_id: Option<i64>,
}

struct StepRec {
    name: String,
    result: TaskResult,
    started_at: Option<Timestamp>,
    stopped_at: Option<Timestamp>,
    log_index: i64,
    log_length: i64,
}

struct TaskRec {
    id: i64,
    job_id: i64,
    runner_id: i64,
    runner_uuid: String,
    token: Secret,
    /// The runtime JWT (also the ID-token request token with OIDC); empty
    /// until the task is built for a FetchTask answer.
    runtime_token: Secret,
    request_key: Option<String>,
    status: TaskStatus,
    client_result: TaskResult,
    started_at: Option<Timestamp>,
    stopped_at: Option<Timestamp>,
    steps: Vec<StepRec>,
    log: Vec<proto::LogRow>,
    log_rows: usize,
    log_bytes: u64,
    log_appends: Vec<LogAppend>,
    archived: bool,
    no_more: bool,
    outputs: BTreeMap<String, String>,
    final_checked: bool,
    update_task_calls: usize,
    update_log_calls: usize,
}

struct Fault {
    method: String,
    remaining: usize,
    code: Code,
}

/// All of the fake server's state.
pub(super) struct State {
    /// Instance URL with a trailing slash.
    server_url: String,
    default_actions_url: String,
    /// Also send the `forgejo_default_actions_url` / `forgejo_runtime_token`
    /// twins (unreleased Forgejo development code does).
    pub(super) forgejo_key_twins: bool,
    /// Gzip large answers for clients that accept it.
    pub(super) compress_responses: bool,
    /// The reverse proxy's request-body limit, if any.
    pub(super) max_request_body: Option<usize>,
    pub(super) gitea_errors: bool,
    /// Keep log row contents (else only count rows and bytes).
    pub(super) keep_log_content: bool,
    reg_tokens: HashMap<String, bool>,
    runners: BTreeMap<i64, RunnerRec>,
    jobs: BTreeMap<i64, JobRec>,
    tasks: BTreeMap<i64, TaskRec>,
    next_runner_id: i64,
    next_job_id: i64,
    next_task_id: i64,
    tasks_version: i64,
    request_keys: HashMap<(i64, String), Vec<i64>>,
    locked_keys: HashSet<String>,
    violations: Vec<String>,
    requests: Vec<RequestRecord>,
    max_running: usize,
    faults: Vec<Fault>,
    delays: HashMap<String, Duration>,
    /// The artifact and ID-token services (and the signing keys).
    pub(super) services: Services,
    /// Users and their public SSH keys (the `/api/v1/users/…` routes).
    pub(super) users: super::users::Users,
}

/// Longest log row the forge stores; longer rows are cut (spec §3.5).
pub const MAX_LOG_ROW_BYTES: usize = 64 * 1024;

fn random_hex40() -> String {
    let bytes: [u8; 20] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn truncate_bytes(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The runner UUID `forgejo-cli actions register --secret` derives from a
/// secret: its first 16 ASCII characters taken as the 16 UUID bytes.
/// `None` if the secret is not 40 hexadecimal characters.
pub fn offline_uuid(secret: &str) -> Option<String> {
    if secret.len() != 40 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&secret.as_bytes()[..16]);
    Some(uuid::Uuid::from_bytes(bytes).to_string())
}

/// The §3.5 append rule: with `held` rows stored and a call carrying `n` rows
/// starting at `index`, the offset into the call's rows where new rows begin,
/// or `None` when nothing is appended (empty, duplicate or gap).
pub fn log_append_from(held: i64, index: i64, n: i64) -> Option<usize> {
    if n == 0 || index > held || index + n <= held {
        return None;
    }
    usize::try_from(held - index).ok()
}

/// Forgejo's `ItRunsOn`: every `runs-on` entry is one of the runner's
/// labels, and neither list is empty (an empty `runs-on`, or a runner that
/// declared no labels, never matches).
fn runs_on_matches(runs_on: &[String], labels: &HashSet<String>) -> bool {
    !runs_on.is_empty() && !labels.is_empty() && runs_on.iter().all(|l| labels.contains(l))
}

/// Job key and step names of a single-job workflow payload.
fn parse_payload(yaml: &str) -> (String, Vec<String>) {
    let Ok(doc) = serde_norway::from_str::<serde_norway::Value>(yaml) else {
        return (String::new(), Vec::new());
    };
    let Some(jobs) = doc.get("jobs").and_then(|j| j.as_mapping()) else {
        return (String::new(), Vec::new());
    };
    let Some((key, job)) = jobs.iter().next() else {
        return (String::new(), Vec::new());
    };
    let key = key.as_str().unwrap_or_default().to_string();
    let steps = job
        .get("steps")
        .and_then(|s| s.as_sequence())
        .map(|steps| {
            steps
                .iter()
                .map(|step| {
                    let name = ["name", "uses", "run", "id"]
                        .iter()
                        .find_map(|k| step.get(*k).and_then(|v| v.as_str()))
                        .unwrap_or_default();
                    truncate_bytes(name, MAX_NAME_BYTES)
                })
                .collect()
        })
        .unwrap_or_default();
    (key, steps)
}

fn decode<M: Message + Default>(body: &[u8]) -> Result<M, RpcError> {
    M::decode(body)
        .map_err(|e| RpcError::connect(Code::InvalidArgument, format!("unmarshal request: {e}")))
}

impl State {
    /// A fresh server for the instance at `server_url` (with trailing slash).
    pub(super) fn new(
        server_url: String,
        default_actions_url: String,
        gitea_errors: bool,
    ) -> State {
        State {
            server_url,
            default_actions_url,
            forgejo_key_twins: false,
            compress_responses: true,
            max_request_body: None,
            gitea_errors,
            keep_log_content: true,
            reg_tokens: HashMap::new(),
            runners: BTreeMap::new(),
            jobs: BTreeMap::new(),
            tasks: BTreeMap::new(),
            next_runner_id: 1,
            next_job_id: 1,
            next_task_id: 1,
            tasks_version: 0,
            request_keys: HashMap::new(),
            locked_keys: HashSet::new(),
            violations: Vec::new(),
            requests: Vec::new(),
            max_running: 0,
            faults: Vec::new(),
            delays: HashMap::new(),
            services: Services::new(),
            users: Default::default(),
        }
    }

    /// The instance URL, with a trailing slash.
    pub(super) fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The current runtime JWT of a task (empty before its first FetchTask).
    pub(super) fn runtime_token(&self, task_id: i64) -> Option<Secret> {
        self.tasks.get(&task_id).map(|t| t.runtime_token.clone())
    }

    // ---- test-facing operations ----

    pub(super) fn add_registration_token(&mut self, token: &str) {
        self.reg_tokens.insert(token.to_string(), true);
    }

    pub(super) fn invalidate_registration_token(&mut self, token: &str) {
        self.reg_tokens.insert(token.to_string(), false);
    }

    pub(super) fn register_offline(
        &mut self,
        secret: &str,
        name: &str,
        labels: &[&str],
    ) -> Option<String> {
        let uuid = offline_uuid(secret)?;
        let labels: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        if let Some(r) = self.runners.values_mut().find(|r| r.uuid == uuid) {
            r.token = Secret::new(secret);
            r.name = truncate_bytes(name, MAX_NAME_BYTES);
            r.labels = labels;
            return Some(uuid);
        }
        let id = self.next_runner_id;
        self.next_runner_id += 1;
        self.runners.insert(
            id,
            RunnerRec {
                id,
                uuid: uuid.clone(),
                token: Secret::new(secret),
                name: truncate_bytes(name, MAX_NAME_BYTES),
                version: String::new(),
                labels,
                ephemeral: false,
                had_task: false,
                last_online: None,
            },
        );
        Some(uuid)
    }

    pub(super) fn enqueue(&mut self, job: FakeJob) -> i64 {
        let id = self.next_job_id;
        self.next_job_id += 1;
        let (key, step_names) = parse_payload(&job.payload_yaml);
        self.jobs.insert(
            id,
            JobRec {
                id,
                key,
                handle: uuid::Uuid::new_v4().to_string(),
                step_names,
                job,
                task_id: None,
            },
        );
        self.tasks_version += 1;
        id
    }

    /// A user's cancel (Forgejo's `StopTask` with CANCELLED): the task and
    /// its unfinished steps become CANCELLED; the log stays open.
    pub(super) fn cancel_task(&mut self, task_id: i64) -> bool {
        self.stop_task(task_id, TaskStatus::Cancelled, false)
    }

    /// The zombie/endless reapers: `StopTask` with FAILURE, then the log is
    /// moved to storage (archived), so later new rows get `already_exists`.
    pub(super) fn reap_task(&mut self, task_id: i64) -> bool {
        self.stop_task(task_id, TaskStatus::Failure, true)
    }

    fn stop_task(&mut self, task_id: i64, status: TaskStatus, archive: bool) -> bool {
        let Some(t) = self.tasks.get_mut(&task_id) else {
            return false;
        };
        if t.status.is_final() {
            return false;
        }
        t.status = status;
        let now = proto::now();
        for s in &mut t.steps {
            if s.result == TaskResult::Unspecified {
                s.result = status.wire_result();
                s.stopped_at = Some(now);
            }
        }
        if archive {
            t.archived = true;
        }
        let runner_id = t.runner_id;
        self.task_became_final(runner_id);
        true
    }

    /// The task's run (or repository) was deleted: the task and its job are
    /// gone; reports for it fail with "resource does not exist".
    pub(super) fn delete_task(&mut self, task_id: i64) -> bool {
        let Some(t) = self.tasks.remove(&task_id) else {
            return false;
        };
        self.jobs.remove(&t.job_id);
        true
    }

    pub(super) fn fail_next(&mut self, method: &str, n: usize, code: Code) {
        self.faults.push(Fault {
            method: method.to_string(),
            remaining: n,
            code,
        });
    }

    pub(super) fn clear_faults(&mut self) {
        self.faults.clear();
    }

    pub(super) fn set_delay(&mut self, method: &str, d: Duration) {
        if d.is_zero() {
            self.delays.remove(method);
        } else {
            self.delays.insert(method.to_string(), d);
        }
    }

    pub(super) fn release_key(&mut self, key: &str) {
        self.locked_keys.remove(key);
    }

    pub(super) fn record(&mut self, r: RequestRecord) {
        self.requests.push(r);
    }

    // ---- snapshots ----

    pub(super) fn task_snapshot(&self, id: i64) -> Option<TaskSnapshot> {
        let t = self.tasks.get(&id)?;
        Some(TaskSnapshot {
            id: t.id,
            job_id: t.job_id,
            runner_uuid: t.runner_uuid.clone(),
            status: t.status,
            client_result: t.client_result,
            started_at: t.started_at,
            stopped_at: t.stopped_at,
            steps: t
                .steps
                .iter()
                .map(|s| StepSnapshot {
                    name: s.name.clone(),
                    result: s.result,
                    started_at: s.started_at,
                    stopped_at: s.stopped_at,
                    log_index: s.log_index,
                    log_length: s.log_length,
                })
                .collect(),
            log: t.log.iter().map(|r| r.content.clone()).collect(),
            log_rows: t.log_rows,
            log_bytes: t.log_bytes,
            archived: t.archived,
            no_more: t.no_more,
            outputs: t.outputs.clone(),
            token: t.token.clone(),
            request_key: t.request_key.clone(),
            update_task_calls: t.update_task_calls,
            update_log_calls: t.update_log_calls,
        })
    }

    pub(super) fn task_snapshots(&self) -> Vec<TaskSnapshot> {
        self.tasks
            .keys()
            .filter_map(|id| self.task_snapshot(*id))
            .collect()
    }

    pub(super) fn log_appends(&self, task_id: i64) -> Vec<LogAppend> {
        self.tasks
            .get(&task_id)
            .map(|t| t.log_appends.clone())
            .unwrap_or_default()
    }

    pub(super) fn task_for_job(&self, job_id: i64) -> Option<TaskSnapshot> {
        self.task_snapshot(self.jobs.get(&job_id)?.task_id?)
    }

    pub(super) fn jobs(&self) -> Vec<JobSnapshot> {
        self.jobs
            .values()
            .map(|j| JobSnapshot {
                id: j.id,
                key: j.key.clone(),
                handle: j.handle.clone(),
                runs_on: j.job.runs_on.clone(),
                task_id: j.task_id,
            })
            .collect()
    }

    pub(super) fn runners(&self) -> Vec<RunnerSnapshot> {
        self.runners
            .values()
            .map(|r| RunnerSnapshot {
                id: r.id,
                uuid: r.uuid.clone(),
                name: r.name.clone(),
                labels: r.labels.clone(),
                version: r.version.clone(),
                ephemeral: r.ephemeral,
                last_online: r.last_online,
            })
            .collect()
    }

    pub(super) fn violations(&self) -> Vec<String> {
        self.violations.clone()
    }

    pub(super) fn requests(&self) -> Vec<RequestRecord> {
        self.requests.clone()
    }

    pub(super) fn max_running(&self) -> usize {
        self.max_running
    }

    pub(super) fn running(&self) -> usize {
        self.tasks.values().filter(|t| !t.status.is_final()).count()
    }

    pub(super) fn tasks_version(&self) -> i64 {
        self.tasks_version
    }

    // ---- the RPC surface ----

    /// Answers one call. `body` is the undecoded request message.
    pub(super) fn call(&mut self, rpc: Rpc, caller: &Caller, body: &[u8]) -> Outcome {
        let delay = self
            .delays
            .get(rpc.name())
            .or_else(|| self.delays.get("*"))
            .copied()
            .unwrap_or_default();
        let mut locked_key = None;
        let result = self.call_inner(rpc, caller, body, &mut locked_key);
        Outcome {
            result,
            locked_key,
            delay,
            gitea_errors: self.gitea_errors,
        }
    }

    fn call_inner(
        &mut self,
        rpc: Rpc,
        caller: &Caller,
        body: &[u8],
        locked_key: &mut Option<String>,
    ) -> Result<Vec<u8>, RpcError> {
        if let Some(f) = self
            .faults
            .iter_mut()
            .find(|f| f.remaining > 0 && (f.method == rpc.name() || f.method == "*"))
        {
            f.remaining -= 1;
            let code = f.code;
            self.faults.retain(|f| f.remaining > 0);
            return Err(RpcError::new(code, "fake forge: injected failure"));
        }
        match rpc {
            Rpc::Ping => {
                let req: proto::PingRequest = decode(body)?;
                Ok(proto::PingResponse {
                    data: format!("Hello, {}!", req.data),
                }
                .encode_to_vec())
            }
            Rpc::Register => {
                let req: proto::RegisterRequest = decode(body)?;
                Ok(self.register(req)?.encode_to_vec())
            }
            Rpc::Declare => {
                let req: proto::DeclareRequest = decode(body)?;
                let runner = self.authenticate(caller)?;
                Ok(self.declare(runner, req)?.encode_to_vec())
            }
            Rpc::FetchTask => {
                let req: proto::FetchTaskRequest = decode(body)?;
                let runner = self.authenticate(caller)?;
                let capacity = usize::try_from(req.task_capacity.unwrap_or(1))
                    .unwrap_or(1)
                    .max(1);
                let (mut tasks, version) = self.fetch_locked(
                    runner,
                    caller,
                    locked_key,
                    req.tasks_version,
                    capacity,
                    None,
                    false,
                )?;
                let task = if tasks.is_empty() {
                    None
                } else {
                    Some(tasks.remove(0))
                };
                Ok(proto::FetchTaskResponse {
                    task,
                    tasks_version: version,
                    additional_tasks: tasks,
                }
                .encode_to_vec())
            }
            Rpc::FetchSingleTask => {
                let req: proto::FetchSingleTaskRequest = decode(body)?;
                let runner = self.authenticate(caller)?;
                let handle = req.handle.as_deref().filter(|h| !h.is_empty());
                let (tasks, version) = self.fetch_locked(
                    runner,
                    caller,
                    locked_key,
                    req.tasks_version,
                    1,
                    handle,
                    true,
                )?;
                Ok(proto::FetchSingleTaskResponse {
                    tasks_version: version,
                    task: tasks.into_iter().next(),
                }
                .encode_to_vec())
            }
            Rpc::UpdateTask => {
                let req: proto::UpdateTaskRequest = decode(body)?;
                let runner = self.authenticate(caller)?;
                Ok(self.update_task(runner, req)?.encode_to_vec())
            }
            Rpc::UpdateLog => {
                let req: proto::UpdateLogRequest = decode(body)?;
                let runner = self.authenticate(caller)?;
                Ok(self.update_log(runner, req)?.encode_to_vec())
            }
        }
    }

    /// The interceptor: runner by `x-runner-uuid`, token compared.
    fn authenticate(&mut self, caller: &Caller) -> Result<i64, RpcError> {
        let unregistered = || RpcError::new(Code::Unauthenticated, "unregistered runner");
        let (Some(uuid), Some(token)) = (&caller.uuid, &caller.token) else {
            return Err(unregistered());
        };
        let runner = self
            .runners
            .values_mut()
            .find(|r| &r.uuid == uuid)
            .ok_or_else(unregistered)?;
        if runner.token.expose() != token.expose() {
            return Err(unregistered());
        }
        runner.last_online = Some(SystemTime::now());
        Ok(runner.id)
    }

    fn register(
        &mut self,
        req: proto::RegisterRequest,
    ) -> Result<proto::RegisterResponse, RpcError> {
        if req.token.is_empty() || req.name.is_empty() {
            return Err(register_error("missing runner token, name"));
        }
        match self.reg_tokens.get(&req.token) {
            None => return Err(register_error("runner registration token not found")),
            Some(false) => {
                return Err(register_error(
                    "runner registration token has been invalidated, please use the latest one",
                ));
            }
            Some(true) => {}
        }
        let labels = if req.labels.is_empty() {
            req.agent_labels
        } else {
            req.labels
        };
        let id = self.next_runner_id;
        self.next_runner_id += 1;
        let rec = RunnerRec {
            id,
            uuid: uuid::Uuid::new_v4().to_string(),
            token: Secret::new(random_hex40()),
            name: truncate_bytes(&req.name, MAX_NAME_BYTES),
            version: req.version,
            labels,
            ephemeral: req.ephemeral,
            had_task: false,
            last_online: None,
        };
        let runner = rec.to_proto();
        self.runners.insert(id, rec);
        Ok(proto::RegisterResponse {
            runner: Some(runner),
        })
    }

    fn declare(
        &mut self,
        runner_id: i64,
        req: proto::DeclareRequest,
    ) -> Result<proto::DeclareResponse, RpcError> {
        let r = self
            .runners
            .get_mut(&runner_id)
            .ok_or_else(|| RpcError::new(Code::Unauthenticated, "unregistered runner"))?;
        r.labels = req.labels;
        r.version = req.version;
        Ok(proto::DeclareResponse {
            runner: Some(r.to_proto()),
        })
    }

    /// FetchTask / FetchSingleTask with the request-key lock around it.
    #[allow(clippy::too_many_arguments)]
    fn fetch_locked(
        &mut self,
        runner_id: i64,
        caller: &Caller,
        locked_key: &mut Option<String>,
        req_version: i64,
        capacity: usize,
        handle: Option<&str>,
        single: bool,
    ) -> Result<(Vec<proto::Task>, i64), RpcError> {
        let key = caller.request_key.as_deref().filter(|k| !k.is_empty());
        if let Some(key) = key {
            if !self.locked_keys.insert(key.to_string()) {
                return Err(internal("request key is currently locked; retry soon"));
            }
            *locked_key = Some(key.to_string());
        }
        self.fetch(runner_id, key, req_version, capacity, handle, single)
    }

    fn fetch(
        &mut self,
        runner_id: i64,
        key: Option<&str>,
        req_version: i64,
        capacity: usize,
        handle: Option<&str>,
        single: bool,
    ) -> Result<(Vec<proto::Task>, i64), RpcError> {
        // Recovery: every task recorded under (runner, key), whatever its
        // status (finished and cancelled ones included, as in Forgejo), comes
        // back with fresh tokens and tasks_version 0. Deleted tasks are gone.
        if let Some(key) = key {
            let ids: Vec<i64> = self
                .request_keys
                .get(&(runner_id, key.to_string()))
                .map(|ids| {
                    ids.iter()
                        .copied()
                        .filter(|id| self.tasks.contains_key(id))
                        .collect()
                })
                .unwrap_or_default();
            if !ids.is_empty() {
                if single && ids.len() > 1 {
                    return Err(internal("more than one task recorded for the request key"));
                }
                let mut out = Vec::new();
                for id in ids {
                    if let Some(t) = self.tasks.get_mut(&id) {
                        t.token = Secret::new(random_hex40());
                        t.runtime_token = Secret::new(String::new());
                    }
                    out.extend(self.build_task(id));
                }
                return Ok((out, 0));
            }
        }
        if self.tasks_version == 0 {
            self.tasks_version = 1;
        }
        let latest = self.tasks_version;
        if req_version == latest {
            return Ok((Vec::new(), latest));
        }
        let Some(runner) = self.runners.get(&runner_id) else {
            return Ok((Vec::new(), latest));
        };
        if runner.ephemeral && runner.had_task {
            return Ok((Vec::new(), latest));
        }
        let capacity = if runner.ephemeral { 1 } else { capacity };
        let labels: HashSet<String> = runner.labels.iter().cloned().collect();
        let mut out = Vec::new();
        while out.len() < capacity {
            let Some(job_id) = self
                .jobs
                .values()
                .find(|j| {
                    j.task_id.is_none()
                        && runs_on_matches(&j.job.runs_on, &labels)
                        && handle.is_none_or(|h| h == j.handle)
                })
                .map(|j| j.id)
            else {
                break;
            };
            let task_id = self.assign(job_id, runner_id, key);
            out.extend(self.build_task(task_id));
        }
        Ok((out, latest))
    }

    fn assign(&mut self, job_id: i64, runner_id: i64, key: Option<&str>) -> i64 {
        let id = self.next_task_id;
        self.next_task_id += 1;
        let runner_uuid = self
            .runners
            .get_mut(&runner_id)
            .map(|r| {
                r.had_task = true;
                r.uuid.clone()
            })
            .unwrap_or_default();
        let steps = self
            .jobs
            .get_mut(&job_id)
            .map(|j| {
                j.task_id = Some(id);
                j.step_names
                    .iter()
                    .map(|name| StepRec {
                        name: name.clone(),
                        result: TaskResult::Unspecified,
                        started_at: None,
                        stopped_at: None,
                        log_index: 0,
                        log_length: 0,
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.tasks.insert(
            id,
            TaskRec {
                id,
                job_id,
                runner_id,
                runner_uuid,
                token: Secret::new(random_hex40()),
                runtime_token: Secret::new(String::new()),
                request_key: key.map(str::to_string),
                status: TaskStatus::Running,
                client_result: TaskResult::Unspecified,
                started_at: None,
                stopped_at: None,
                steps,
                log: Vec::new(),
                log_rows: 0,
                log_bytes: 0,
                log_appends: Vec::new(),
                archived: false,
                no_more: false,
                outputs: BTreeMap::new(),
                final_checked: false,
                update_task_calls: 0,
                update_log_calls: 0,
            },
        );
        if let Some(key) = key {
            self.request_keys
                .entry((runner_id, key.to_string()))
                .or_default()
                .push(id);
        }
        self.max_running = self.max_running.max(self.running());
        id
    }

    /// The `Task` message of an assigned task (with its current tokens;
    /// the runtime JWT is minted here the first time, as Forgejo mints it
    /// when it builds the task's context).
    fn build_task(&mut self, task_id: i64) -> Option<proto::Task> {
        let t = self.tasks.get(&task_id)?;
        let j = self.jobs.get(&t.job_id)?;
        let run_id = j.job.run_id.unwrap_or(j.id);
        let token = t.token.expose().to_string();
        let token = token.as_str();
        let url = &self.server_url;
        let s = |v: &str| Value::String(v.to_string());
        let mut ctx: serde_json::Map<String, Value> = [
            ("action", s("")),
            ("action_path", s("")),
            ("action_ref", s("")),
            ("action_repository", s("")),
            ("action_status", s("")),
            ("actor", s("fake-user")),
            ("actor_id", s("1")),
            ("api_url", s(&format!("{url}api/v1"))),
            ("base_ref", s("")),
            ("head_ref", s("")),
            ("env", s("")),
            ("event", json!({})),
            ("event_name", s("push")),
            ("event_path", s("")),
            ("graphql_url", s("")),
            ("path", s("")),
            ("job", s(&j.key)),
            ("job_name", s("")),
            ("ref", s("refs/heads/main")),
            ("ref_name", s("main")),
            ("ref_type", s("branch")),
            ("ref_protected", Value::Bool(false)),
            ("repository", s("fake-owner/fake-repo")),
            ("repository_id", s("1")),
            ("repository_owner", s("fake-owner")),
            ("repository_owner_id", s("1")),
            ("repositoryUrl", s(&format!("{url}fake-owner/fake-repo"))),
            ("retention_days", s("")),
            ("run_id", s(&run_id.to_string())),
            ("run_number", s(&run_id.to_string())),
            ("run_attempt", s("1")),
            ("runner_perflog", s("")),
            ("runner_tracking_id", s("")),
            ("secret_source", s("Actions")),
            ("server_url", s(url)),
            ("sha", s("0123456789abcdef0123456789abcdef01234567")),
            ("token", s(token)),
            ("triggering_actor", s("")),
            ("workflow", s("ci.yml")),
            (
                "workflow_ref",
                s("fake-owner/fake-repo/.forgejo/workflows/ci.yml@refs/heads/main"),
            ),
            ("workspace", s("")),
            ("gitea_default_actions_url", s(&self.default_actions_url)),
            ("forgejo_server_version", s(FORGEJO_SERVER_VERSION)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let (job_id, oidc) = (j.id, j.job.oidc);
        if t.runtime_token.expose().is_empty() {
            let jwt =
                self.services
                    .mint_runtime_token(task_id, run_id, job_id, oidc.then_some(&ctx));
            if let Some(t) = self.tasks.get_mut(&task_id) {
                t.runtime_token = Secret::new(jwt);
            }
        }
        let t = self.tasks.get(&task_id)?;
        let j = self.jobs.get(&t.job_id)?;
        let url = &self.server_url;
        let runtime = t.runtime_token.expose();
        ctx.insert("gitea_runtime_token".into(), s(runtime));
        if self.forgejo_key_twins {
            ctx.insert(
                "forgejo_default_actions_url".into(),
                s(&self.default_actions_url),
            );
            ctx.insert("forgejo_runtime_token".into(), s(runtime));
        }
        if j.job.oidc {
            ctx.insert("forgejo_actions_id_token_request_token".into(), s(runtime));
            ctx.insert(
                "forgejo_actions_id_token_request_url".into(),
                s(&format!(
                    "{url}api/actions/_apis/pipelines/workflows/{run_id}/idtoken?placeholder=true"
                )),
            );
        }
        if let Some(overrides) = j.job.context_overrides.as_object() {
            for (k, v) in overrides {
                if v.is_null() {
                    ctx.remove(k);
                } else {
                    ctx.insert(k.clone(), v.clone());
                }
            }
        }
        let mut secrets = j.job.secrets.clone();
        for name in ["GITHUB_TOKEN", "GITEA_TOKEN", "FORGEJO_TOKEN"] {
            secrets.insert(name.to_string(), token.to_string());
        }
        Some(proto::Task {
            id: t.id,
            workflow_payload: Some(j.job.payload_yaml.clone().into_bytes()),
            context: Some(proto::json_to_struct(&Value::Object(ctx))),
            secrets,
            machine: String::new(),
            needs: j.job.needs.clone(),
            vars: j.job.vars.clone(),
        })
    }

    /// A task of `runner_id`. A task the server does not have gets the
    /// `internal` error of `rpc` ("… resource does not exist"), another
    /// runner's task `internal` "invalid runner for task".
    fn owned_task(
        &mut self,
        rpc: Rpc,
        runner_id: i64,
        task_id: i64,
    ) -> Result<&mut TaskRec, RpcError> {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return Err(internal(if rpc == Rpc::UpdateLog {
                format!("get task: task with id {task_id}: resource does not exist")
            } else {
                "update task: resource does not exist".to_string()
            }));
        };
        if task.runner_id != runner_id {
            return Err(internal("invalid runner for task"));
        }
        Ok(task)
    }

    /// UpdateTask. Stricter than Forgejo: step ids outside `[0, n)` (Forgejo
    /// ignores them), result numbers outside the enum, and steps with
    /// `stopped_at` but no result are rejected with `invalid_argument`.
    fn update_task(
        &mut self,
        runner_id: i64,
        req: proto::UpdateTaskRequest,
    ) -> Result<proto::UpdateTaskResponse, RpcError> {
        let Some(state) = req.state else {
            return Err(invalid("missing task state"));
        };
        let task = self.owned_task(Rpc::UpdateTask, runner_id, state.id)?;
        task.update_task_calls += 1;
        let n = task.steps.len();
        for s in &state.steps {
            if s.id < 0 || usize::try_from(s.id).is_ok_and(|i| i >= n) {
                return Err(invalid(format!(
                    "Step id {} is out of range: the task has {n} steps (ids 0..{n})",
                    s.id
                )));
            }
            let Ok(result) = TaskResult::try_from(s.result) else {
                return Err(invalid(format!(
                    "Step {} has an unknown result {}",
                    s.id, s.result
                )));
            };
            if s.stopped_at.is_some() && result == TaskResult::Unspecified {
                return Err(invalid(format!(
                    "Step {} has stopped_at but no result: a finished step needs a result 1..4",
                    s.id
                )));
            }
        }
        let Ok(result) = TaskResult::try_from(state.result) else {
            return Err(invalid(format!("Unknown task result {}", state.result)));
        };

        let mut violations = Vec::new();
        let mut keys: Vec<&String> = req.outputs.keys().collect();
        keys.sort();
        for k in keys {
            let v = &req.outputs[k];
            if k.len() > MAX_OUTPUT_KEY_BYTES {
                violations.push(format!(
                    "task {}: output key of {} bytes sent (limit {MAX_OUTPUT_KEY_BYTES})",
                    task.id,
                    k.len()
                ));
                continue;
            }
            if v.len() > MAX_OUTPUT_VALUE_BYTES {
                violations.push(format!(
                    "task {}: output {k:?} of {} bytes sent (limit {MAX_OUTPUT_VALUE_BYTES})",
                    task.id,
                    v.len()
                ));
                continue;
            }
            task.outputs.entry(k.clone()).or_insert_with(|| v.clone());
        }

        if result != TaskResult::Unspecified {
            task.client_result = result;
            if !task.final_checked {
                task.final_checked = true;
                violations.extend(final_state_violations(task.id, &state, n, task.log_rows));
            }
        }

        let mut became_final = false;
        if !task.status.is_final() {
            if state.started_at.is_some() {
                task.started_at = state.started_at;
            }
            for s in &state.steps {
                let Some(rec) = usize::try_from(s.id)
                    .ok()
                    .and_then(|i| task.steps.get_mut(i))
                else {
                    continue;
                };
                rec.result = TaskResult::from_wire(s.result);
                rec.started_at = s.started_at;
                rec.stopped_at = s.stopped_at;
                rec.log_index = s.log_index;
                rec.log_length = s.log_length;
            }
            if result != TaskResult::Unspecified {
                task.status = TaskStatus::from_result(result);
                task.stopped_at = Some(state.stopped_at.unwrap_or_else(proto::now));
                became_final = true;
            }
        }
        let resp = proto::UpdateTaskResponse {
            state: Some(proto::TaskState {
                id: task.id,
                result: task.status.wire_result() as i32,
                ..proto::TaskState::default()
            }),
            sent_outputs: task.outputs.keys().cloned().collect(),
        };
        for v in violations {
            self.violation(v);
        }
        if became_final {
            self.task_became_final(runner_id);
        }
        Ok(resp)
    }

    /// An ephemeral runner is deleted once its task is final.
    fn task_became_final(&mut self, runner_id: i64) {
        if self.runners.get(&runner_id).is_some_and(|r| r.ephemeral) {
            self.runners.remove(&runner_id);
        }
    }

    /// UpdateLog, §3.5: rows are appended only when `index ≤ L < index+len`;
    /// every answer is the new `L`. As in Forgejo, a call that appends nothing
    /// (empty, duplicates only, or a gap) returns early, so a `no_more` without
    /// new rows does not archive the log (it only sets `no_more`). Once
    /// archived, new rows get `already_exists`. A gap is also recorded as a
    /// protocol violation (a correct client never claims rows the server lacks).
    fn update_log(
        &mut self,
        runner_id: i64,
        req: proto::UpdateLogRequest,
    ) -> Result<proto::UpdateLogResponse, RpcError> {
        if req.index < 0 {
            return Err(invalid(format!("Negative log index {}", req.index)));
        }
        let keep = self.keep_log_content;
        let task = self.owned_task(Rpc::UpdateLog, runner_id, req.task_id)?;
        task.update_log_calls += 1;
        let held = i64::try_from(task.log_rows).unwrap_or(i64::MAX);
        let n = i64::try_from(req.rows.len()).unwrap_or(i64::MAX);
        let task_id = task.id;
        let Some(from) = log_append_from(held, req.index, n) else {
            if req.no_more {
                task.no_more = true;
            }
            if req.index > held {
                let v = format!(
                    "task {task_id}: UpdateLog index {} is past the {held} rows held (a gap; nothing written)",
                    req.index
                );
                self.violation(v);
            }
            return Ok(proto::UpdateLogResponse { ack_index: held });
        };
        if task.archived {
            return Err(RpcError::new(
                Code::AlreadyExists,
                "log file has been archived",
            ));
        }
        // Forgejo cuts every stored row to 64 KiB.
        let new = req.rows.into_iter().skip(from).map(|mut row| {
            if row.content.len() > MAX_LOG_ROW_BYTES {
                row.content = truncate_bytes(&row.content, MAX_LOG_ROW_BYTES);
            }
            row
        });
        if keep {
            for row in new {
                task.log_rows += 1;
                task.log_bytes += row.content.len() as u64;
                task.log.push(row);
            }
        } else {
            for row in new {
                task.log_rows += 1;
                task.log_bytes += row.content.len() as u64;
            }
        }
        task.log_appends.push(LogAppend {
            at: SystemTime::now(),
            rows: task.log_rows,
            bytes: task.log_bytes,
        });
        if req.no_more {
            task.no_more = true;
            task.archived = true;
        }
        Ok(proto::UpdateLogResponse {
            ack_index: i64::try_from(task.log_rows).unwrap_or(i64::MAX),
        })
    }

    /// Records a client mistake seen outside the runner protocol.
    pub(super) fn add_violation(&mut self, v: String) {
        self.violation(v);
    }

    fn violation(&mut self, v: String) {
        tracing::warn!("fake forge: protocol violation: {v}");
        self.violations.push(v);
    }
}

/// Checks a final `TaskState` from the runner against the rows received.
fn final_state_violations(
    task_id: i64,
    state: &proto::TaskState,
    n: usize,
    rows: usize,
) -> Vec<String> {
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    if state.stopped_at.is_none() {
        out.push(format!("task {task_id}: final result without stopped_at"));
    }
    if !state.steps.is_empty() {
        for i in 0..n {
            let i = i64::try_from(i).unwrap_or(i64::MAX);
            let ok = state
                .steps
                .iter()
                .any(|s| s.id == i && s.result != TaskResult::Unspecified as i32);
            if !ok {
                out.push(format!(
                    "task {task_id}: step {i} has no final result in the final state"
                ));
            }
        }
    }
    let mut steps: Vec<&proto::StepState> = state
        .steps
        .iter()
        .filter(|s| s.result != TaskResult::Unspecified as i32)
        .collect();
    steps.sort_by_key(|s| s.id);
    let mut prev_end = 0i64;
    for s in steps {
        if s.stopped_at.is_none() {
            out.push(format!(
                "task {task_id}: step {} finished without stopped_at",
                s.id
            ));
        }
        if s.log_index < 0 || s.log_length < 0 {
            out.push(format!(
                "task {task_id}: step {} has log_index {} log_length {}",
                s.id, s.log_index, s.log_length
            ));
            continue;
        }
        if s.log_index + s.log_length > rows {
            out.push(format!(
                "task {task_id}: step {} claims rows {}..{} but only {rows} rows were received",
                s.id,
                s.log_index,
                s.log_index + s.log_length
            ));
        }
        if s.log_length > 0 {
            if s.log_index < prev_end {
                out.push(format!(
                    "task {task_id}: step {} rows start at {} inside the previous step's rows (ending at {prev_end})",
                    s.id, s.log_index
                ));
            }
            prev_end = s.log_index + s.log_length;
        }
    }
    out
}

/// The tasks as the job services see them (borrowed next to the services).
pub(super) struct TaskView<'a> {
    tasks: &'a BTreeMap<i64, TaskRec>,
    jobs: &'a BTreeMap<i64, JobRec>,
}

impl State {
    /// The job services, and the tasks they authenticate against.
    pub(super) fn services_and_tasks(&mut self) -> (&mut Services, TaskView<'_>) {
        (
            &mut self.services,
            TaskView {
                tasks: &self.tasks,
                jobs: &self.jobs,
            },
        )
    }
}

impl Tasks for TaskView<'_> {
    fn task_auth(&self, task_id: i64) -> Option<TaskAuth> {
        let t = self.tasks.get(&task_id)?;
        let j = self.jobs.get(&t.job_id)?;
        Some(TaskAuth {
            task_id,
            run_id: j.job.run_id.unwrap_or(j.id),
            job_id: j.id,
            running: t.status == TaskStatus::Running,
        })
    }

    fn running_task_by_token(&self, token: &str) -> Option<TaskAuth> {
        let t = self
            .tasks
            .values()
            .find(|t| t.status == TaskStatus::Running && t.token.expose() == token)?;
        self.task_auth(t.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_uuid_takes_the_first_16_characters_as_bytes() {
        assert_eq!(
            offline_uuid("0123456789abcdef0123456789abcdef01234567").as_deref(),
            Some("30313233-3435-3637-3839-616263646566")
        );
        assert_eq!(offline_uuid("short"), None);
        assert_eq!(
            offline_uuid("0123456789abcdef0123456789abcdef0123456z"),
            None
        );
    }

    #[test]
    fn log_append_rule() {
        // Fresh rows at the end.
        assert_eq!(log_append_from(0, 0, 3), Some(0));
        // Overlap: rows[2..] are new.
        assert_eq!(log_append_from(5, 3, 4), Some(2));
        // Duplicates only, empty, gap: nothing.
        assert_eq!(log_append_from(5, 2, 3), None);
        assert_eq!(log_append_from(5, 5, 0), None);
        assert_eq!(log_append_from(5, 6, 2), None);
    }

    #[test]
    fn payload_steps_and_names() {
        let (key, steps) = parse_payload(
            "name: t\njobs:\n  build:\n    runs-on: x\n    steps:\n      - run: echo hi\n      - name: Named\n        run: x\n      - uses: actions/checkout@v4\n      - id: only-id\n",
        );
        assert_eq!(key, "build");
        assert_eq!(
            steps,
            ["echo hi", "Named", "actions/checkout@v4", "only-id"]
        );
        assert_eq!(parse_payload(": : not yaml ["), (String::new(), vec![]));
    }

    /// Sends `n` rows of 10 bytes from `index` through `UpdateLog`; returns the ack.
    fn send_rows(state: &mut State, caller: &Caller, task: i64, index: i64, n: usize) -> i64 {
        let req = proto::UpdateLogRequest {
            task_id: task,
            index,
            rows: (0..n)
                .map(|_| proto::LogRow {
                    time: Some(proto::now()),
                    content: "x".repeat(10),
                })
                .collect(),
            no_more: false,
        };
        let out = state.call(Rpc::UpdateLog, caller, &req.encode_to_vec());
        proto::UpdateLogResponse::decode(out.result.unwrap().as_slice())
            .unwrap()
            .ack_index
    }

    fn forge_with_task(keep: bool) -> (State, Caller, i64) {
        let mut state = State::new("http://127.0.0.1:1/".into(), String::new(), false);
        state.keep_log_content = keep;
        let secret = "0123456789abcdef0123456789abcdef01234567";
        let uuid = state.register_offline(secret, "r", &["linux"]).unwrap();
        state.enqueue(FakeJob::new(
            "jobs:\n  b:\n    runs-on: linux\n    steps:\n      - run: x\n",
            &["linux"],
        ));
        let caller = Caller {
            uuid: Some(uuid),
            token: Some(Secret::new(secret)),
            request_key: None,
        };
        let req = proto::FetchTaskRequest {
            tasks_version: 0,
            task_capacity: Some(1),
        };
        let out = state.call(Rpc::FetchTask, &caller, &req.encode_to_vec());
        let resp = proto::FetchTaskResponse::decode(out.result.unwrap().as_slice()).unwrap();
        (state, caller, resp.task.unwrap().id)
    }

    #[test]
    fn rows_are_counted_with_or_without_their_content() {
        for keep in [true, false] {
            let (mut state, caller, task) = forge_with_task(keep);
            assert_eq!(send_rows(&mut state, &caller, task, 0, 3), 3);
            // Overlap: one duplicate, two new rows.
            assert_eq!(send_rows(&mut state, &caller, task, 2, 3), 5);
            // Duplicates only: nothing appended, no append recorded.
            assert_eq!(send_rows(&mut state, &caller, task, 0, 2), 5);
            let t = state.task_snapshot(task).unwrap();
            assert_eq!(t.log_rows, 5);
            assert_eq!(t.log_bytes, 50);
            assert_eq!(t.log.len(), if keep { 5 } else { 0 });
            let appends = state.log_appends(task);
            assert_eq!(
                appends
                    .iter()
                    .map(|a| (a.rows, a.bytes))
                    .collect::<Vec<_>>(),
                [(3, 30), (5, 50)]
            );
            assert!(appends[0].at <= appends[1].at);
        }
    }

    fn step(id: i64, result: TaskResult, index: i64, len: i64) -> proto::StepState {
        proto::StepState {
            id,
            result: result as i32,
            started_at: Some(proto::now()),
            stopped_at: Some(proto::now()),
            log_index: index,
            log_length: len,
        }
    }

    #[test]
    fn final_state_checks() {
        let good = proto::TaskState {
            id: 1,
            result: TaskResult::Success as i32,
            started_at: Some(proto::now()),
            stopped_at: Some(proto::now()),
            steps: vec![
                step(0, TaskResult::Success, 2, 3),
                step(1, TaskResult::Success, 5, 0),
                step(2, TaskResult::Success, 5, 4),
            ],
        };
        assert!(final_state_violations(1, &good, 3, 10).is_empty());
        // More rows claimed than received.
        assert_eq!(final_state_violations(1, &good, 3, 8).len(), 1);
        // Overlapping ranges.
        let mut overlap = good.clone();
        overlap.steps[2].log_index = 4;
        assert_eq!(final_state_violations(1, &overlap, 3, 10).len(), 1);
        // No stopped_at, a step left unfinished.
        let mut bad = good.clone();
        bad.stopped_at = None;
        bad.steps[1].result = 0;
        assert_eq!(final_state_violations(1, &bad, 3, 10).len(), 2);
        // A task with no step states at all (payload not understood) is fine.
        let mut none = good;
        none.steps.clear();
        assert!(final_state_violations(1, &none, 3, 0).is_empty());
    }
}

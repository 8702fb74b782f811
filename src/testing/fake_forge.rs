//! A strict fake Forgejo server for tests and benchmarks.
//!
//! It speaks the runner protocol of `shared/spec/forgejo-runner-protocol.md`
//! (Connect unary, binary proto) on `127.0.0.1`, sends what a released
//! Forgejo sends, rejects what it rejects, and is stricter only where a lax
//! answer would hide a client bug (each such place says so). Tests enqueue
//! jobs, point a runner (the real `solstice run` binary, or hand-made
//! requests) at [`FakeForge::url`], and then assert on what the forge saw:
//! tasks with their step states, log rows and outputs, runners, every
//! request, and a list of protocol violations that a correct runner never
//! causes.
//!
//! What it implements (the spec's §7 fake-server checklist):
//!
//! - **Transport.** Routes under `/api/actions/`, POST only (405 otherwise),
//!   unknown methods a bare 404. Only `application/proto`; everything else
//!   (JSON included) gets 415. `Connect-Protocol-Version` is ignored.
//!   Answers of at least [`COMPRESS_MIN_BYTES`] are gzipped
//!   (`Content-Encoding: gzip`) when the request says `Accept-Encoding:
//!   gzip`, as connect-go's `WithCompressMinBytes(1024)` does on both
//!   servers ([`FakeOptions::compress_responses`] turns it off); error bodies
//!   are never compressed. Gzipped request bodies are accepted, other
//!   encodings get `unimplemented`. `Connect-Timeout-Ms` is honoured for
//!   answers held back with [`FakeForge::set_delay`]: a delay at least as
//!   long as the client's deadline ends in `deadline_exceeded` (the call's
//!   effect on the state stays, as on a real server that finished its
//!   database work but missed the deadline).
//! - **Errors.** Forgejo's Connect codes by default. In Gitea's style
//!   ([`FakeForge::set_gitea_errors`]) handler and interceptor errors become
//!   500 `unknown` "rpc error: code = … desc = …", `Register` errors 500
//!   `unknown` with the bare message, and connect-go's own errors (bad body,
//!   unknown compression, deadline) keep their code.
//! - **Proxy.** [`FakeOptions::max_request_body`] puts an nginx-like limit in
//!   front: larger bodies get 413 with an HTML page.
//! - **Auth.** Every RunnerService method but `Register` needs
//!   `x-runner-uuid` + `x-runner-token`; bad ones get 401 `unauthenticated`
//!   "unregistered runner". Ping needs nothing.
//! - **Register / Declare / offline registration** with Forgejo's
//!   validation messages, reusable registration tokens until invalidated,
//!   40-hex runner tokens; Declare overwrites labels and version.
//! - **FetchTask / FetchSingleTask.** Request-key recovery first (per-key
//!   lock; every task recorded for (runner, key), finished and cancelled
//!   ones included, each with a fresh token, `tasks_version` 0), then the
//!   `tasks_version` check (never 0), then the oldest waiting jobs whose
//!   `runs-on` is a subset of the runner's labels (an empty `runs-on`, or a
//!   runner without labels, never matches), up to `task_capacity`.
//! - **Task contents.** The §2.5 `github` keys plus, as every released
//!   Forgejo sends, `gitea_default_actions_url` (default
//!   `https://data.forgejo.org`), `gitea_runtime_token` and
//!   `forgejo_server_version`; the `forgejo_*` twins only with
//!   [`FakeOptions::forgejo_key_twins`]; the OIDC keys when the job has
//!   [`FakeJob::oidc`]. Secrets include `GITHUB_TOKEN`, `GITEA_TOKEN` and
//!   `FORGEJO_TOKEN`; vars and needs as enqueued.
//! - **UpdateTask / UpdateLog.** Ownership (`internal` "invalid runner for
//!   task"), final tasks unchanged, steps by index, outputs first write wins
//!   with the complete `sent_outputs`; the §3.5 append/ack rule, `no_more`
//!   archives, new rows after archiving get `already_exists`. A task the
//!   server no longer has gets `internal` "… resource does not exist".
//! - **Ephemeral runners** get one task and are deleted once it is final.
//! - **Hooks.** [`FakeForge::cancel_task`] (user cancel: CANCELLED, log left
//!   open), [`FakeForge::reap_task`] (zombie/endless reaper: FAILURE, log
//!   archived), [`FakeForge::delete_task`] (run deleted), plus fault
//!   injection, delays, outages and restarts.
//!
//! - **Users.** [`FakeForge::add_user`] registers a user with an id and
//!   public SSH keys, served anonymously on `GET /api/v1/users/{name}` and
//!   `GET /api/v1/users/{name}/keys` as Forgejo serves them (404 with
//!   Forgejo's JSON error for unknown names, paging, a 307 for a name
//!   renamed away with [`FakeForge::rename_user`]); see `fake_forge/users.rs`.
//!   [`FakeJob::actor`], [`FakeJob::pull_request`],
//!   [`FakeJob::fork_pull_request`] and [`FakeJob::schedule`] shape the
//!   task's context for debug SSH tests.
//!
//! All runners are instance-wide, so there is one `tasks_version` scope,
//! bumped by every [`FakeForge::enqueue`].

mod artifacts;
mod state;
mod users;

use std::future::IntoFuture;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::killable::KillableStream;

use crate::forge::forgejo::error::Code;
use crate::secret::Secret;

pub use artifacts::{
    ARTIFACT_V4_ROUTE_BASE, ArtifactSnapshot, ArtifactStatus, DEFAULT_SIGNED_URL_TTL,
};
use state::{Caller, Origin, Rpc, RpcError, State};
pub use state::{
    FORGEJO_SERVER_VERSION, FakeJob, JobSnapshot, LogAppend, MAX_LOG_ROW_BYTES,
    MAX_OUTPUT_KEY_BYTES, MAX_OUTPUT_VALUE_BYTES, RequestRecord, RunnerSnapshot, StepSnapshot,
    TaskSnapshot, TaskStatus, log_append_from, offline_uuid,
};

/// Request bodies up to this size are read (log batches can be large).
const BODY_LIMIT_BYTES: usize = 64 * 1024 * 1024;

/// Answers of at least this many bytes are gzipped for clients that accept
/// it (connect-go's `WithCompressMinBytes(1024)`, as both servers set it).
pub const COMPRESS_MIN_BYTES: usize = 1024;

/// What nginx answers when a body exceeds `client_max_body_size`.
const NGINX_413_BODY: &str = "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// How the fake starts.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// The address to listen on: `127.0.0.1` by default. Tests whose guests
    /// must reach the forge bind an address of a network namespace they
    /// created (guests cannot reach the host's loopback).
    pub bind: IpAddr,
    /// Port on [`FakeOptions::bind`]; 0 picks a free one.
    pub port: u16,
    /// Answer errors in Gitea's style (see [`FakeForge::set_gitea_errors`]).
    pub gitea_errors: bool,
    /// Value of `gitea_default_actions_url` (and of its
    /// `forgejo_default_actions_url` twin when [`FakeOptions::forgejo_key_twins`]
    /// is on). Forgejo's default, `https://data.forgejo.org`, unless changed.
    pub default_actions_url: String,
    /// Also send `forgejo_default_actions_url` and `forgejo_runtime_token`
    /// next to the `gitea_*` keys. Off by default: every released Forgejo
    /// sends only the `gitea_*` names; the twins exist only in later
    /// development code.
    pub forgejo_key_twins: bool,
    /// Gzip answers of at least [`COMPRESS_MIN_BYTES`] when the request
    /// says `Accept-Encoding: gzip`, as both real servers do. On by default.
    pub compress_responses: bool,
    /// A reverse proxy's request-body limit (nginx `client_max_body_size`):
    /// any request whose body is larger than this many bytes is answered
    /// with HTTP 413 and an HTML page, without reaching the forge. `None`
    /// (the default): no proxy.
    pub max_request_body: Option<usize>,
    /// Registration tokens accepted by `Register` from the start.
    pub registration_tokens: Vec<String>,
    /// Keep the content of every log row (`TaskSnapshot::log`). Off, rows
    /// and bytes are only counted, so a benchmark can stream millions of
    /// rows without the fake holding (and cloning) them.
    pub keep_log_content: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            gitea_errors: false,
            default_actions_url: "https://data.forgejo.org".into(),
            forgejo_key_twins: false,
            compress_responses: true,
            max_request_body: None,
            registration_tokens: Vec::new(),
            keep_log_content: true,
        }
    }
}

/// A running fake forge. Cheap to clone; all clones share one state. The
/// server shuts down when the last clone is dropped.
#[derive(Clone)]
pub struct FakeForge {
    inner: Arc<Inner>,
    _life: Arc<Lifetime>,
}

impl std::fmt::Debug for FakeForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeForge")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

struct Inner {
    state: Mutex<State>,
    changed: Notify,
    addr: SocketAddr,
    serving: tokio::sync::Mutex<Option<Serving>>,
    /// Kills the connections of the current listening period.
    current_kill: Mutex<CancellationToken>,
    /// Parent of every period's token; cancelled when the last handle goes.
    forever: CancellationToken,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Serving {
    kill: CancellationToken,
    task: JoinHandle<()>,
}

struct Lifetime {
    forever: CancellationToken,
}

impl Drop for Lifetime {
    fn drop(&mut self) {
        self.forever.cancel();
    }
}

impl FakeForge {
    /// Binds `opts.bind:opts.port` and starts serving.
    pub async fn start(opts: FakeOptions) -> io::Result<FakeForge> {
        let listener = TcpListener::bind((opts.bind, opts.port)).await?;
        FakeForge::start_listening(listener, opts).await
    }

    /// Serves on a socket the caller bound, for example one inside a network
    /// namespace the test created (`opts.bind` and `opts.port` are not
    /// used). [`FakeForge::restart`] binds the same address again in the
    /// caller's own namespace, so it only works for host addresses.
    pub async fn start_on(
        listener: std::net::TcpListener,
        opts: FakeOptions,
    ) -> io::Result<FakeForge> {
        listener.set_nonblocking(true)?;
        FakeForge::start_listening(TcpListener::from_std(listener)?, opts).await
    }

    async fn start_listening(listener: TcpListener, opts: FakeOptions) -> io::Result<FakeForge> {
        let addr = listener.local_addr()?;
        let mut state = State::new(
            format!("http://{addr}/"),
            opts.default_actions_url,
            opts.gitea_errors,
        );
        state.keep_log_content = opts.keep_log_content;
        state.forgejo_key_twins = opts.forgejo_key_twins;
        state.compress_responses = opts.compress_responses;
        state.max_request_body = opts.max_request_body;
        for t in &opts.registration_tokens {
            state.add_registration_token(t);
        }
        let forever = CancellationToken::new();
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            changed: Notify::new(),
            addr,
            serving: tokio::sync::Mutex::new(None),
            current_kill: Mutex::new(forever.child_token()),
            forever: forever.clone(),
        });
        let forge = FakeForge {
            inner,
            _life: Arc::new(Lifetime { forever }),
        };
        forge.serve(listener).await;
        Ok(forge)
    }

    async fn serve(&self, listener: TcpListener) {
        let kill = self.inner.forever.child_token();
        *self
            .inner
            .current_kill
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = kill.clone();
        let router = Router::new()
            .fallback(handle)
            .with_state(self.inner.clone())
            .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES));
        let listener = KillableListener {
            listener,
            kill: kill.clone(),
        };
        let stop = kill.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                r = axum::serve(listener, router).into_future() => {
                    if let Err(e) = r {
                        tracing::warn!("fake forge: server ended: {e}");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
        *self.inner.serving.lock().await = Some(Serving { kill, task });
    }

    /// The instance URL, `http://ADDRESS:PORT` (no trailing slash, no `/api/actions`).
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state()
    }

    fn changed(&self) {
        self.inner.changed.notify_waiters();
    }

    /// Accepts `token` in `Register` (reusable until invalidated).
    pub fn add_registration_token(&self, token: &str) {
        self.state().add_registration_token(token);
    }

    /// Marks `token` as regenerated: `Register` now answers "has been invalidated".
    pub fn invalidate_registration_token(&self, token: &str) {
        self.state().invalidate_registration_token(token);
    }

    /// `forgejo-cli actions register --secret SECRET --name NAME --labels …`:
    /// creates (or updates) the runner whose uuid is derived from the secret
    /// and whose token is the secret. Returns the uuid.
    ///
    /// # Panics
    /// If `secret` is not 40 hexadecimal characters (forgejo-cli refuses it too).
    pub fn register_offline(&self, secret: &str, name: &str, labels: &[&str]) -> String {
        let uuid = self.state().register_offline(secret, name, labels);
        self.changed();
        uuid.unwrap_or_else(|| panic!("The offline secret must be 40 hexadecimal characters"))
    }

    /// Registers a user (or replaces one of the same name, compared without
    /// case) with the forge's number `id` and these public SSH keys, as
    /// OpenSSH lines (`ssh-ed25519 AAAA… comment`). The fake serves them on
    /// `GET /api/v1/users/{name}` and `GET /api/v1/users/{name}/keys`.
    pub fn add_user(&self, name: &str, id: i64, keys: &[&str]) {
        self.state().users.add(name, id, keys);
        self.changed();
    }

    /// Deletes a user: its name becomes unknown (404). False if there was none.
    pub fn remove_user(&self, name: &str) -> bool {
        let done = self.state().users.remove(name);
        self.changed();
        done
    }

    /// The user renames itself from `old` to `new`: `old` then answers with
    /// a 307 redirect to the new name, as Forgejo does. Re-registering `old`
    /// afterwards ([`FakeForge::add_user`] with another id) is the
    /// "re-registered name" case. False if there is no user `old`.
    pub fn rename_user(&self, old: &str, new: &str) -> bool {
        let done = self.state().users.rename(old, new);
        self.changed();
        done
    }

    /// Queues a job; returns its id. Jobs are handed out oldest first.
    pub fn enqueue(&self, job: FakeJob) -> i64 {
        let id = self.state().enqueue(job);
        self.changed();
        id
    }

    /// Forgejo's "cancel" button (StopTask): the task becomes CANCELLED, and
    /// every later UpdateTask answer carries RESULT_CANCELLED. The log is not
    /// archived: later rows are still accepted. Returns false if the task
    /// does not exist or is already final.
    pub fn cancel_task(&self, task_id: i64) -> bool {
        let done = self.state().cancel_task(task_id);
        self.changed();
        done
    }

    /// Forgejo's zombie or endless-task reaper: the task and its unfinished
    /// steps become FAILURE (every later UpdateTask answer carries
    /// RESULT_FAILURE) and the log is archived, so later new rows get
    /// `already_exists` "log file has been archived". Returns false if the
    /// task does not exist or is already final.
    pub fn reap_task(&self, task_id: i64) -> bool {
        let done = self.state().reap_task(task_id);
        self.changed();
        done
    }

    /// The task's run (or repository) is deleted on the forge: the task and
    /// its job disappear (from [`FakeForge::tasks`] and [`FakeForge::jobs`]
    /// too). Afterwards UpdateLog fails with `internal` "get task: task with
    /// id N: resource does not exist" and UpdateTask with `internal` "update
    /// task: resource does not exist" (in Gitea's style, 500 `unknown`
    /// "rpc error: code = Internal desc = …"). Returns false if there was no
    /// such task.
    pub fn delete_task(&self, task_id: i64) -> bool {
        let done = self.state().delete_task(task_id);
        self.changed();
        done
    }

    /// Every artifact of every run, by id (see the artifact service in
    /// `fake_forge/artifacts.rs`).
    pub fn artifacts(&self) -> Vec<ArtifactSnapshot> {
        self.state().services.snapshots()
    }

    /// The task's current runtime JWT (`gitea_runtime_token`; also the
    /// ID-token request token when its job has OIDC). Empty before the task
    /// was handed out; `None` for an unknown task.
    pub fn runtime_token(&self, task_id: i64) -> Option<Secret> {
        self.state().runtime_token(task_id)
    }

    /// How long signed upload/download URLs minted from now on stay valid
    /// ([`DEFAULT_SIGNED_URL_TTL`], Forgejo's hour, by default; zero makes
    /// every new URL expired at once).
    pub fn set_signed_url_ttl(&self, ttl: Duration) {
        self.state().services.signed_url_ttl = ttl;
    }

    /// All tasks, by id.
    pub fn tasks(&self) -> Vec<TaskSnapshot> {
        self.state().task_snapshots()
    }

    /// One task.
    pub fn task(&self, id: i64) -> Option<TaskSnapshot> {
        self.state().task_snapshot(id)
    }

    /// Every `UpdateLog` call of a task that appended rows, in order.
    pub fn log_appends(&self, task_id: i64) -> Vec<LogAppend> {
        self.state().log_appends(task_id)
    }

    /// The task a job was assigned as.
    pub fn task_for_job(&self, job_id: i64) -> Option<TaskSnapshot> {
        self.state().task_for_job(job_id)
    }

    /// All jobs, by id.
    pub fn jobs(&self) -> Vec<JobSnapshot> {
        self.state().jobs()
    }

    /// The handle a `FetchSingleTask` can ask for to get this job.
    pub fn job_handle(&self, job_id: i64) -> Option<String> {
        self.jobs()
            .into_iter()
            .find(|j| j.id == job_id)
            .map(|j| j.handle)
    }

    /// Protocol violations seen so far (a correct runner causes none).
    pub fn violations(&self) -> Vec<String> {
        self.state().violations()
    }

    /// Registered runners (ephemeral ones vanish once their task is final).
    pub fn runners(&self) -> Vec<RunnerSnapshot> {
        self.state().runners()
    }

    /// Every call answered, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().requests()
    }

    /// How many calls of `method` (`"FetchTask"`, …; `"*"` for all) were answered.
    pub fn request_count(&self, method: &str) -> usize {
        self.state()
            .requests()
            .iter()
            .filter(|r| method == "*" || r.method == method)
            .count()
    }

    /// Peak number of tasks assigned and not yet final at the same time.
    pub fn max_running_tasks(&self) -> usize {
        self.state().max_running()
    }

    /// Tasks assigned and not yet final now.
    pub fn running_tasks(&self) -> usize {
        self.state().running()
    }

    /// The current `tasks_version` counter (0 until first read or enqueue).
    pub fn tasks_version(&self) -> i64 {
        self.state().tasks_version()
    }

    /// Gitea error style: every error of a handler or the auth interceptor
    /// becomes HTTP 500
    /// `{"code":"unknown","message":"rpc error: code = <Code> desc = <message>"}`,
    /// except `Register`'s, which carry the bare message (Gitea returns plain
    /// Go errors there). Errors connect-go produces itself (an undecodable
    /// body, an unknown request compression, a missed deadline) keep their
    /// Connect code, as on every server.
    pub fn set_gitea_errors(&self, on: bool) {
        self.state().gitea_errors = on;
    }

    /// Answers the next `n` calls of `method` (`"*"` = any method) with `code`,
    /// before anything else happens (no state change).
    pub fn fail_next(&self, method: &str, n: usize, code: Code) {
        self.state().fail_next(method, n, code);
    }

    /// Changes [`FakeOptions::max_request_body`] (the proxy's body limit).
    pub fn set_max_request_body(&self, limit: Option<usize>) {
        self.state().max_request_body = limit;
    }

    /// Drops every pending [`FakeForge::fail_next`] fault.
    pub fn clear_faults(&self) {
        self.state().clear_faults();
    }

    /// Holds answers of `method` (`"*"` = any) for `d` after the call took
    /// effect (a lost or late answer); zero removes the delay. A FetchTask's
    /// request key stays locked while its answer is held.
    pub fn set_delay(&self, method: &str, d: Duration) {
        self.state().set_delay(method, d);
    }

    /// Waits until `pred` holds (checked after every call and every 50 ms).
    /// Returns false on timeout.
    pub async fn wait_for(&self, pred: impl Fn(&FakeForge) -> bool, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(self) {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let tick = (deadline - now).min(Duration::from_millis(50));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// Waits until the task is final on the server and the runner reported a
    /// final result (or the server cancelled it and the runner reported).
    pub async fn wait_task_final(&self, task_id: i64, timeout: Duration) -> Option<TaskSnapshot> {
        let done = |f: &FakeForge| {
            f.task(task_id).is_some_and(|t| {
                t.status.is_final()
                    && t.client_result != crate::forge::forgejo::proto::TaskResult::Unspecified
            })
        };
        if self.wait_for(done, timeout).await {
            self.task(task_id)
        } else {
            None
        }
    }

    /// Waits until the job was assigned and its task is final (see
    /// [`FakeForge::wait_task_final`]).
    pub async fn wait_job_final(&self, job_id: i64, timeout: Duration) -> Option<TaskSnapshot> {
        let done = |f: &FakeForge| {
            f.task_for_job(job_id).is_some_and(|t| {
                t.status.is_final()
                    && t.client_result != crate::forge::forgejo::proto::TaskResult::Unspecified
            })
        };
        if self.wait_for(done, timeout).await {
            self.task_for_job(job_id)
        } else {
            None
        }
    }

    /// An outage: stops listening (new connections are refused) and drops open
    /// connections, including calls whose answers are held. State is kept.
    pub async fn stop(&self) {
        let serving = self.inner.serving.lock().await.take();
        if let Some(s) = serving {
            s.kill.cancel();
            let _ = s.task.await;
        }
    }

    /// Listens again on the same port with the same state. Nothing that was
    /// acknowledged is lost. A no-op while serving.
    pub async fn restart(&self) -> io::Result<()> {
        if self.inner.serving.lock().await.is_some() {
            return Ok(());
        }
        let mut last = None;
        for _ in 0..50 {
            match TcpListener::bind(self.inner.addr).await {
                Ok(l) => {
                    self.serve(l).await;
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("bind failed")))
    }

    /// Whether it is listening (not [`FakeForge::stop`]ped).
    pub async fn is_serving(&self) -> bool {
        self.inner.serving.lock().await.is_some()
    }
}

/// Releases a FetchTask request-key lock when the call ends, however it ends.
struct KeyGuard {
    inner: Arc<Inner>,
    key: Option<String>,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.inner.state().release_key(&k);
        }
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn media_type(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    let v = headers.get(name)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// `Connect-Timeout-Ms`: at most 10 digits.
fn connect_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = header_str(headers, "connect-timeout-ms")?;
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().map(Duration::from_millis)
}

/// `invalid_argument` → `InvalidArgument` (gRPC's spelling).
fn camel_code(code: Code) -> String {
    code.as_str()
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The Connect code, HTTP status and JSON body of an error, in Forgejo's or
/// Gitea's style.
fn error_response(e: &RpcError, gitea: bool) -> (Code, StatusCode, String) {
    let (code, message) = match (gitea, e.origin) {
        (false, _) | (true, Origin::Connect) => (e.code, e.message.clone()),
        (true, Origin::PlainGo) => (Code::Unknown, e.message.clone()),
        (true, Origin::Handler) => (
            Code::Unknown,
            format!(
                "rpc error: code = {} desc = {}",
                camel_code(e.code),
                e.message
            ),
        ),
    };
    let body = serde_json::json!({"code": code.as_str(), "message": message});
    (
        code,
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.to_string(),
    )
}

/// Whether `Accept-Encoding` lists gzip (connect-go compares the names and
/// ignores quality values).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            e.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("gzip")
        })
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

fn gunzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
    Ok(out)
}

fn record(inner: &Inner, method: &str, caller: &Caller, status: StatusCode, code: Option<Code>) {
    record_answer(inner, method, caller, status, code, false);
}

fn record_answer(
    inner: &Inner,
    method: &str,
    caller: &Caller,
    status: StatusCode,
    code: Option<Code>,
    gzipped: bool,
) {
    inner.state().record(RequestRecord {
        method: method.to_string(),
        at: SystemTime::now(),
        runner_uuid: caller.uuid.clone(),
        request_key: caller.request_key.clone(),
        http_status: status.as_u16(),
        code,
        gzipped,
    });
}

async fn handle(
    AxState(inner): AxState<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let kill = inner
        .current_kill
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let path = uri.path();
    let caller = Caller {
        uuid: header_str(&headers, "x-runner-uuid"),
        token: header_str(&headers, "x-runner-token").map(Secret::new),
        request_key: header_str(&headers, "x-runner-request-key"),
    };
    let rpc = path.strip_prefix("/api/actions/").and_then(Rpc::from_path);
    let (max_body, compress_responses) = {
        let st = inner.state();
        (st.max_request_body, st.compress_responses)
    };
    // The proxy in front of the forge refuses the body before the forge sees it.
    if max_body.is_some_and(|max| body.len() > max) {
        let name = rpc.map_or(path, |r| r.name());
        record(&inner, name, &caller, StatusCode::PAYLOAD_TOO_LARGE, None);
        inner.changed.notify_waiters();
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))],
            NGINX_413_BODY,
        )
            .into_response();
    }
    let Some(rpc) = rpc else {
        if let Some(response) = serve_users(&inner, &method, &uri, &headers, &caller) {
            return response;
        }
        if let Some(response) = serve_job_services(&inner, &method, &uri, &headers, &body) {
            return response;
        }
        record(&inner, path, &caller, StatusCode::NOT_FOUND, None);
        inner.changed.notify_waiters();
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    };
    if method != Method::POST {
        record(
            &inner,
            rpc.name(),
            &caller,
            StatusCode::METHOD_NOT_ALLOWED,
            None,
        );
        inner.changed.notify_waiters();
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, HeaderValue::from_static("POST"))],
        )
            .into_response();
    }
    if media_type(&headers, header::CONTENT_TYPE).as_deref() != Some("application/proto") {
        record(
            &inner,
            rpc.name(),
            &caller,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
        );
        inner.changed.notify_waiters();
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [(
                header::HeaderName::from_static("accept-post"),
                HeaderValue::from_static("application/proto"),
            )],
        )
            .into_response();
    }
    // connect-go on both servers accepts gzipped request bodies (clients do
    // not send them) and refuses any other compression.
    let body = match media_type(&headers, header::CONTENT_ENCODING).as_deref() {
        None | Some("") | Some("identity") => Ok(body.to_vec()),
        Some("gzip") => gunzip(&body).map_err(|e| {
            RpcError::connect(
                Code::InvalidArgument,
                format!("decompress request body: {e}"),
            )
        }),
        Some(other) => Err(RpcError::connect(
            Code::Unimplemented,
            format!("unknown compression \"{other}\": supported encodings are gzip"),
        )),
    };
    let outcome = match body {
        Ok(body) => inner.state().call(rpc, &caller, &body),
        Err(e) => state::Outcome {
            result: Err(e),
            locked_key: None,
            delay: Duration::ZERO,
            gitea_errors: inner.state().gitea_errors,
        },
    };
    let _guard = KeyGuard {
        inner: inner.clone(),
        key: outcome.locked_key,
    };
    let mut result = outcome.result;
    let mut delay = outcome.delay;
    if let Some(deadline) = connect_timeout(&headers) {
        if !delay.is_zero() && delay >= deadline {
            delay = deadline;
            result = Err(RpcError::connect(
                Code::DeadlineExceeded,
                "the operation timed out",
            ));
        }
    }
    // Only messages are compressed; connect-go writes error bodies plain.
    let result = result.and_then(|bytes| {
        if compress_responses && bytes.len() >= COMPRESS_MIN_BYTES && accepts_gzip(&headers) {
            gzip(&bytes)
                .map(|gz| (gz, true))
                .map_err(|e| RpcError::connect(Code::Internal, format!("compress: {e}")))
        } else {
            Ok((bytes, false))
        }
    });
    let response = match result {
        Ok((bytes, gzipped)) => {
            record_answer(&inner, rpc.name(), &caller, StatusCode::OK, None, gzipped);
            let mut response = (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/proto"),
                )],
                bytes,
            )
                .into_response();
            if gzipped {
                response
                    .headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            response
        }
        Err(e) => {
            let (code, status, body) = error_response(&e, outcome.gitea_errors);
            record(&inner, rpc.name(), &caller, status, Some(code));
            (
                status,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response()
        }
    };
    inner.changed.notify_waiters();
    if !delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = kill.cancelled() => {}
        }
    }
    response
}

/// The user routes (`/api/v1/users/…`, see `fake_forge/users.rs`); `None`
/// for other paths.
fn serve_users(
    inner: &Inner,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    caller: &Caller,
) -> Option<Response> {
    let answer = {
        let mut st = inner.state();
        let server_url = st.server_url().to_string();
        let answer = st
            .users
            .handle(method, uri.path(), uri.query(), headers, &server_url)?;
        if let Some(v) = &answer.violation {
            st.add_violation(v.clone());
        }
        answer
    };
    record(inner, answer.name, caller, answer.status, None);
    inner.changed.notify_waiters();
    let mut response = (answer.status, answer.body).into_response();
    for (k, v) in answer.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            response.headers_mut().insert(k, v);
        }
    }
    Some(response)
}

/// The services jobs call (artifacts, ID tokens); `None` for other paths.
fn serve_job_services(
    inner: &Inner,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Response> {
    let (name, answer) = {
        let mut guard = inner.state();
        let st = &mut *guard;
        let server_url = st.server_url().to_string();
        let req = artifacts::Request {
            method,
            path: uri.path(),
            query: uri.query(),
            headers,
            body,
            server_url: &server_url,
        };
        let (services, tasks) = st.services_and_tasks();
        artifacts::handle(services, &tasks, &req)?
    };
    let caller = Caller {
        uuid: None,
        token: None,
        request_key: None,
    };
    record(inner, &name, &caller, answer.status, None);
    inner.changed.notify_waiters();
    let mut response = (answer.status, answer.body).into_response();
    let h = response.headers_mut();
    if !answer.content_type.is_empty() {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(answer.content_type),
        );
    }
    for (k, v) in answer.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    Some(response)
}

/// A TCP listener whose connections all fail once `kill` is cancelled.
struct KillableListener {
    listener: TcpListener,
    kill: CancellationToken,
}

impl axum::serve::Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((io, addr)) => {
                    let _ = io.set_nodelay(true);
                    return (
                        KillableStream::new(io, self.kill.clone(), "fake forge stopped"),
                        addr,
                    );
                }
                Err(e) => {
                    tracing::debug!("fake forge: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitea_style_errors() {
        assert_eq!(camel_code(Code::InvalidArgument), "InvalidArgument");
        assert_eq!(camel_code(Code::Unauthenticated), "Unauthenticated");
        let e = RpcError::new(Code::Unauthenticated, "unregistered runner");
        let (code, status, body) = error_response(&e, true);
        assert_eq!((code, status.as_u16()), (Code::Unknown, 500));
        assert_eq!(
            body,
            r#"{"code":"unknown","message":"rpc error: code = Unauthenticated desc = unregistered runner"}"#
        );
        let (code, status, body) = error_response(&e, false);
        assert_eq!((code, status.as_u16()), (Code::Unauthenticated, 401));
        assert_eq!(
            body,
            r#"{"code":"unauthenticated","message":"unregistered runner"}"#
        );
        // connect-go's own errors keep their code in Gitea's style too.
        let e = RpcError::connect(Code::InvalidArgument, "unmarshal request: x");
        let (code, status, _) = error_response(&e, true);
        assert_eq!((code, status.as_u16()), (Code::InvalidArgument, 400));
    }

    #[test]
    fn accept_encoding_lists() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, GZIP;q=0.5"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert!(!accepts_gzip(&h));
        let data = vec![7u8; 4000];
        assert_eq!(gunzip(&gzip(&data).unwrap()).unwrap(), data);
    }

    #[test]
    fn timeout_header() {
        let mut h = HeaderMap::new();
        h.insert("connect-timeout-ms", HeaderValue::from_static("1500"));
        assert_eq!(connect_timeout(&h), Some(Duration::from_millis(1500)));
        h.insert(
            "connect-timeout-ms",
            HeaderValue::from_static("12345678901"),
        );
        assert_eq!(connect_timeout(&h), None);
    }
}

//! A strict fake GitHub for tests: REST (JIT runners), the OAuth token
//! exchange, the broker, the run service, the results service and its blob
//! storage, on one axum server (`shared/spec/github-runner-protocol.md`
//! §10). It sends what GitHub sends and rejects what GitHub rejects; every
//! URL it hands out points back at itself.
//!
//! # Public API
//!
//! - [`FakeGithub::start`] with [`FakeGithubOptions`] (bind address, token
//!   lifetimes, `requireFipsCryptography`, long-poll hold, minimum runner
//!   version, redelivery timeout, lock duration, runner groups, summary
//!   limit). [`FakeGithub::url`] is the "GitHub URL" host,
//!   [`FakeGithub::api_url`] = `<url>/api/v3` (config `api_url`),
//!   [`FakeGithub::repo_url`] = `<url>/<owner>/<repo>`.
//! - Credentials: [`FakeGithub::add_app`] (returns the App's private key;
//!   write [`FakeRsaKey::pkcs1_pem`] to `private_key_file`),
//!   [`FakeGithub::add_token`] (a PAT / fine-grained token).
//! - Jobs: [`FakeGithub::enqueue`] a [`FakeGithubJob`] (built with
//!   [`FakeStep`]); it is delivered to one idle runner whose labels include
//!   all of `runs_on`. [`FakeGithub::cancel_job`] sends `JobCancellation`.
//! - Assertions: [`FakeGithub::jobs`] / [`FakeGithub::job`]
//!   ([`JobSnapshot`]: state, conclusion, outputs, step results, step
//!   updates in order, per-step logs, job log, feed frames),
//!   [`FakeGithub::runners`] ([`RunnerSnapshot`]), [`FakeGithub::runner_named`],
//!   [`FakeGithub::sessions`], [`FakeGithub::requests`],
//!   [`FakeGithub::request_count`], [`FakeGithub::violations`] (protocol
//!   mistakes a correct client never makes), [`FakeGithub::wait_for`],
//!   [`FakeGithub::wait_job_final`].
//! - Faults (per test): [`FakeGithub::fail_next`] (any [`Endpoint`], N
//!   times, a status), [`FakeGithub::set_poll_hang`],
//!   [`FakeGithub::set_empty_poll_204`], [`FakeGithub::set_poll_hold`],
//!   [`FakeGithub::set_session_conflict_for`],
//!   [`FakeGithub::invalidate_session`], [`FakeGithub::delete_runner`]
//!   (`RunnerNotFound`, `invalid_client`), [`FakeGithub::set_min_runner_version`],
//!   [`FakeGithub::expire_runner_tokens`], [`FakeGithub::force_token_refresh`],
//!   [`FakeGithub::set_renew_404`], [`FakeGithub::set_deliver_while_busy`],
//!   [`FakeGithub::set_lock_duration`], [`FakeGithub::set_lenient_step_status`],
//!   [`FakeGithub::set_accept_any_alg`], [`FakeGithub::lose_next_answer`]
//!   (the call takes effect, the connection drops before the answer).
//!
//! # Routes (all on the one server)
//!
//! - REST: `POST /api/v3/app/installations/{id}/access_tokens` (App JWT,
//!   RS256, `iss` = app id, `exp` ≤ 10 min ahead);
//!   `{repos/{o}/{r} | orgs/{o} | enterprises/{e}}/actions/runners`
//!   (`GET`, paginated), `…/runners/{id}` (`GET`, `DELETE`: 422 while it
//!   runs a job), `…/runners/generate-jitconfig` (`POST`). Every REST call
//!   needs a `User-Agent` (403 without, as GitHub). Users and their SSH
//!   keys ([`FakeGithub::add_user`]): `GET users/{login}` and
//!   `GET users/{login}/keys`, anonymous, rate-limited (see `users.rs`).
//! - Token exchange: `POST /_apis/oauth2/token/{guid}` (per runner).
//! - Broker (`serverUrlV2` = `/_broker/`): `session` (`POST`, `DELETE`),
//!   `message` (long poll), `acknowledge`.
//! - Run service (`/_run/9/`): `acquirejob`, `renewjob`, `completejob`.
//! - Results (`/_results/`): the Twirp methods of spec §6; blobs at
//!   `/_blob/…?sig=…` (Azure-style `PUT`); feed `ws://…/_ws/ingest.sock`.
//!
//! Lifecycle rules worth knowing: a runner gets a job only while it holds
//! none, has never acquired one (ephemeral), and polls with `status=Online`;
//! the lock is `lock_duration` from `acquirejob` and from each renewal, and
//! a job whose lock runs out is abandoned; `completejob` closes the job
//! (renew/complete → 404, results → 401) and deletes its runner (token
//! exchange → `invalid_client`, polls → `RunnerNotFound`). Steps without
//! `name:` carry no `displayNameToken`. App JWTs must have `exp - iat` ≤
//! 600 s. [`FakeGithub::violations`] records: results calls or
//! `completejob` before the first successful renewal, acknowledging or
//! acquiring a second job while holding one, `line_count` mismatches,
//! metadata for an unsealed append blob, a missing `billingOwnerId` echo,
//! `waitSeconds` on a poll, malformed feed frames.
//!
//! Where the spec leaves a detail open, the fake picks one and says so:
//! broker `RunnerSessionInvalid`/`RunnerNotFound`/`AcknowledgeJobNotFound`
//! use HTTP 404, other bad broker queries 400 with an empty `errorKind`;
//! session conflicts are 409 with an empty `errorKind`.

mod job;
mod keys;
mod state;
mod users;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State as AxState};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::killable::KillableStream;

pub use job::{FakeGithubJob, FakeStep, FakeStepKind};
pub use keys::FakeRsaKey;
pub use state::{FakeJobState, JobSnapshot, RequestRecord, RunnerSnapshot, SessionSnapshot};
use state::{PollStep, Reply, State};

/// Which part of GitHub a request is for (fault switches and records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// REST under `/api/v3`.
    Rest,
    /// The OAuth token exchange.
    Token,
    /// Broker `POST session`.
    SessionCreate,
    /// Broker `DELETE session`.
    SessionDelete,
    /// Broker `GET message`.
    Poll,
    /// Broker `POST acknowledge`.
    Acknowledge,
    /// Run service `acquirejob`.
    AcquireJob,
    /// Run service `renewjob`.
    RenewJob,
    /// Run service `completejob`.
    CompleteJob,
    /// Any results Twirp call.
    Results,
    /// Blob uploads.
    Blob,
    /// The WebSocket feed.
    Feed,
    /// Anything else (404).
    Other,
}

/// How the fake starts.
#[derive(Debug, Clone)]
pub struct FakeGithubOptions {
    /// Listen address (`127.0.0.1` by default; tests whose guests must reach
    /// the fake bind an address of a namespace they created).
    pub bind: IpAddr,
    /// Port; 0 picks a free one.
    pub port: u16,
    /// Lifetime of App installation tokens (`expires_at`): 1 h.
    pub installation_token_ttl: Duration,
    /// `expires_in` of runner tokens: 2999 s, as github.com.
    pub runner_token_ttl: Duration,
    /// `requireFipsCryptography` of minted runners (PS256 when true, the
    /// default; RS256 otherwise).
    pub require_fips: bool,
    /// How long `GET message` is held before answering empty: 50 s.
    pub poll_hold: Duration,
    /// `runnerVersion` below this gets 403 `RunnerVersionTooOld`.
    pub min_runner_version: String,
    /// A delivered job not acquired within this time goes to another runner.
    pub redelivery_timeout: Duration,
    /// Job lock (`lockedUntil` = now + this): 10 min.
    pub lock_duration: Duration,
    /// Existing runner groups (1, the default group, exists).
    pub runner_groups: Vec<u64>,
    /// `soft_size_limit` of step logs and summaries: 1 MiB.
    pub soft_size_limit: u64,
    /// Every JIT runner gets the same RSA key (made once) instead of its
    /// own: benchmarks set it, so that 2048-bit key generation (seconds of
    /// CPU in a debug build) does not compete with the guests. Each runner
    /// still has its own client id and tokens.
    pub shared_runner_key: bool,
}

impl Default for FakeGithubOptions {
    fn default() -> Self {
        FakeGithubOptions {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            installation_token_ttl: Duration::from_secs(3600),
            runner_token_ttl: Duration::from_secs(2999),
            require_fips: true,
            poll_hold: Duration::from_secs(50),
            min_runner_version: "2.329.0".into(),
            redelivery_timeout: Duration::from_secs(60),
            lock_duration: Duration::from_secs(600),
            runner_groups: vec![1],
            soft_size_limit: 1024 * 1024,
            shared_runner_key: false,
        }
    }
}

/// A running fake GitHub. Cheap to clone; the server stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct FakeGithub {
    inner: Arc<Inner>,
    _life: Arc<Lifetime>,
}

impl std::fmt::Debug for FakeGithub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGithub")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

/// Open connections by peer address: cancelling one drops that connection
/// (a lost answer).
type Conns = Arc<Mutex<HashMap<SocketAddr, CancellationToken>>>;

struct Inner {
    state: Mutex<State>,
    changed: Notify,
    addr: SocketAddr,
    stop: CancellationToken,
    conns: Conns,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Lifetime(CancellationToken);

impl Drop for Lifetime {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl FakeGithub {
    /// Starts the fake on `opts.bind:opts.port`.
    pub async fn start(opts: FakeGithubOptions) -> io::Result<FakeGithub> {
        let listener = TcpListener::bind((opts.bind, opts.port)).await?;
        let addr = listener.local_addr()?;
        let base = format!("http://{addr}");
        let stop = CancellationToken::new();
        let conns: Conns = Arc::default();
        let inner = Arc::new(Inner {
            state: Mutex::new(State::new(opts, base)),
            changed: Notify::new(),
            addr,
            stop: stop.clone(),
            conns: conns.clone(),
        });
        let listener = ConnListener {
            listener,
            conns,
            stop: stop.clone(),
        };
        let app = Router::new()
            .route("/_ws/ingest.sock", axum::routing::get(feed))
            .fallback(handle)
            .with_state(inner.clone())
            .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024));
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Ok(FakeGithub {
            inner,
            _life: Arc::new(Lifetime(stop)),
        })
    }

    /// `http://<addr>`: the GitHub host (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The REST base for config `api_url`: `<url>/api/v3`.
    pub fn api_url(&self) -> String {
        format!("{}/api/v3", self.url())
    }

    /// `<url>/<owner>/<repo>`: config `url` for a repository scope.
    pub fn repo_url(&self, owner: &str, repo: &str) -> String {
        format!("{}/{owner}/{repo}", self.url())
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.inner.state());
        self.inner.changed.notify_waiters();
        r
    }

    /// Registers a GitHub App with one installation and returns its new
    /// private key (RS256 App JWTs signed with it are accepted).
    pub fn add_app(&self, app_id: u64, installation_id: u64) -> FakeRsaKey {
        let key = FakeRsaKey::generate();
        self.with(|s| s.add_app(app_id, installation_id, &key));
        key
    }

    /// Registers another installation of an app added with [`FakeGithub::add_app`].
    pub fn add_app_key(&self, app_id: u64, installation_id: u64, key: &FakeRsaKey) {
        self.with(|s| s.add_app(app_id, installation_id, key));
    }

    /// Accepts `token` as a REST credential (PAT / fine-grained token).
    pub fn add_token(&self, token: &str) {
        self.with(|s| s.add_rest_token(token));
    }

    /// Registers a user (or replaces one with the same login, compared
    /// without case) with GitHub's account number `id` and these public SSH
    /// keys as OpenSSH lines (the comment is dropped, as GitHub does),
    /// served on `GET /api/v3/users/{login}` and `…/keys`.
    pub fn add_user(&self, login: &str, id: u64, keys: &[&str]) {
        self.with(|s| s.users.add(login, id, keys));
    }

    /// Deletes a user: its login becomes unknown (404). False if there was none.
    pub fn remove_user(&self, login: &str) -> bool {
        self.with(|s| s.users.remove(login))
    }

    /// Anonymous calls to the user routes allowed before GitHub's 403 "API
    /// rate limit exceeded" (60 by default, GitHub's hourly limit; the
    /// count is never reset).
    pub fn set_anonymous_rate_limit(&self, calls: u32) {
        self.with(|s| s.users.anonymous_limit = calls);
    }

    /// Queues a job; returns its index (for [`FakeGithub::job`]).
    pub fn enqueue(&self, job: FakeGithubJob) -> u64 {
        self.with(|s| s.enqueue(job))
    }

    /// Sends `JobCancellation` (`timeout` as .NET TimeSpan, e.g.
    /// `"00:05:00"`) to the session of the runner holding the job; a job
    /// not acquired yet is dropped (abandoned; a runner it was delivered to
    /// still gets the message). False if there is nothing to do.
    pub fn cancel_job(&self, index: u64, timeout: &str) -> bool {
        self.with(|s| s.cancel_job(index, timeout))
    }

    /// Sends `ForceTokenRefresh` to the runner's session.
    pub fn force_token_refresh(&self, runner: u64) -> bool {
        self.with(|s| s.push_message(runner, "ForceTokenRefresh", String::new()))
    }

    /// Sends any broker message (type and body string) to the runner's session.
    pub fn send_message(&self, runner: u64, kind: &str, body: &str) -> bool {
        self.with(|s| s.push_message(runner, kind, body.to_string()))
    }

    /// Ends the runner's session: its next poll gets `RunnerSessionInvalid`.
    pub fn invalidate_session(&self, runner: u64) -> bool {
        self.with(|s| s.invalidate_session(runner))
    }

    /// Deletes a runner as an admin would (even while busy): its polls get
    /// `RunnerNotFound`, its token exchange `invalid_client`.
    pub fn delete_runner(&self, runner: u64) -> bool {
        self.with(|s| s.remove_runner(runner))
    }

    /// Every runner token issued so far expires now (401 everywhere).
    pub fn expire_runner_tokens(&self) {
        self.with(|s| s.expire_runner_tokens())
    }

    /// The next `n` calls to `endpoint` answer `status` with the
    /// endpoint's error body, before any other check (a long poll: once its
    /// token and query passed, so a 401 here tests the refresh path).
    pub fn fail_next(&self, endpoint: Endpoint, n: usize, status: u16) {
        self.with(|s| {
            s.faults
                .fail_next
                .entry(endpoint)
                .or_default()
                .extend(std::iter::repeat_n(status, n))
        })
    }

    /// The next `n` calls to `endpoint` are carried out (their effect
    /// stays) but the connection is dropped before the answer: a lost
    /// answer, as after a network cut.
    pub fn lose_next_answer(&self, endpoint: Endpoint, n: usize) {
        self.with(|s| *s.faults.lose_next.entry(endpoint).or_default() += n)
    }

    /// Drops all armed faults and switches.
    pub fn clear_faults(&self) {
        self.with(|s| s.faults = Default::default())
    }

    /// Long polls never answer (the client's own timeout must fire).
    pub fn set_poll_hang(&self, on: bool) {
        self.with(|s| s.faults.poll_hang = on)
    }

    /// Empty long polls answer 204 instead of 200 with `Content-Length: 0`.
    pub fn set_empty_poll_204(&self, on: bool) {
        self.with(|s| s.faults.empty_poll_204 = on)
    }

    /// Changes how long an empty long poll is held.
    pub fn set_poll_hold(&self, d: Duration) {
        self.with(|s| s.opts.poll_hold = d)
    }

    /// Session create answers 409 for the next `d`.
    pub fn set_session_conflict_for(&self, d: Duration) {
        self.with(|s| s.faults.session_conflict_until = Some(Instant::now() + d))
    }

    /// Changes the minimum `runnerVersion`.
    pub fn set_min_runner_version(&self, v: &str) {
        self.with(|s| s.opts.min_runner_version = v.into())
    }

    /// `renewjob` for this job answers 404 from now on.
    pub fn set_renew_404(&self, index: u64) {
        self.with(|s| s.set_renew_404(index))
    }

    /// Changes the lock duration of later renewals and acquisitions.
    pub fn set_lock_duration(&self, d: Duration) {
        self.with(|s| s.opts.lock_duration = d)
    }

    /// Changes the redelivery timeout.
    pub fn set_redelivery_timeout(&self, d: Duration) {
        self.with(|s| s.opts.redelivery_timeout = d)
    }

    /// Deliver jobs also to runners that hold (or held) one: a correct
    /// ephemeral client neither acknowledges nor acquires them.
    pub fn set_deliver_while_busy(&self, on: bool) {
        self.with(|s| s.faults.deliver_while_busy = on)
    }

    /// Accept github-act-runner's step status values 1/2/3 too.
    pub fn set_lenient_step_status(&self, on: bool) {
        self.with(|s| s.faults.lenient_step_status = on)
    }

    /// Accept RS256 and PS256 assertions whatever the registration says.
    pub fn set_accept_any_alg(&self, on: bool) {
        self.with(|s| s.faults.accept_any_alg = on)
    }

    /// Mint later runners with `requireFipsCryptography` on (PS256) or off.
    pub fn set_require_fips(&self, on: bool) {
        self.with(|s| s.opts.require_fips = on)
    }

    /// Changes `expires_in` of later runner tokens.
    pub fn set_runner_token_ttl(&self, d: Duration) {
        self.with(|s| s.opts.runner_token_ttl = d)
    }

    /// Every job.
    pub fn jobs(&self) -> Vec<JobSnapshot> {
        self.with(|s| {
            s.sweep();
            s.jobs()
        })
    }

    /// One job by its index.
    pub fn job(&self, index: u64) -> Option<JobSnapshot> {
        self.jobs().into_iter().find(|j| j.index == index)
    }

    /// Every registered runner.
    pub fn runners(&self) -> Vec<RunnerSnapshot> {
        self.inner.state().runners()
    }

    /// Live broker sessions.
    pub fn sessions(&self) -> Vec<SessionSnapshot> {
        self.inner.state().sessions()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inner.state().requests.clone()
    }

    /// How many requests went to `endpoint` (e.g. `completejob` retries).
    pub fn request_count(&self, endpoint: Endpoint) -> usize {
        self.inner
            .state()
            .requests
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .count()
    }

    /// The runner with this name, if registered.
    pub fn runner_named(&self, name: &str) -> Option<RunnerSnapshot> {
        self.runners().into_iter().find(|r| r.name == name)
    }

    /// Protocol mistakes a correct client never makes.
    pub fn violations(&self) -> Vec<String> {
        self.inner.state().violations.clone()
    }

    /// Waits until `pred` holds (checked on every change and every 100 ms).
    pub async fn wait_for(&self, pred: impl Fn(&FakeGithub) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            if pred(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let step = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(step, notified).await;
        }
    }

    /// Waits until the job is completed or abandoned.
    pub async fn wait_job_final(&self, index: u64, timeout: Duration) -> Option<JobSnapshot> {
        self.wait_for(|f| f.job(index).is_some_and(|j| j.is_final()), timeout)
            .await;
        self.job(index).filter(|j| j.is_final())
    }

    /// Stops serving (also happens when the last clone is dropped).
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }
}

fn classify(method: &Method, path: &str) -> Endpoint {
    if path.starts_with("/api/v3/") {
        return Endpoint::Rest;
    }
    if path.starts_with("/_apis/oauth2/token/") {
        return Endpoint::Token;
    }
    match (method, path) {
        (&Method::POST, "/_broker/session") => Endpoint::SessionCreate,
        (&Method::DELETE, "/_broker/session") => Endpoint::SessionDelete,
        (&Method::GET, "/_broker/message") => Endpoint::Poll,
        (&Method::POST, "/_broker/acknowledge") => Endpoint::Acknowledge,
        (&Method::POST, "/_run/9/acquirejob") => Endpoint::AcquireJob,
        (&Method::POST, "/_run/9/renewjob") => Endpoint::RenewJob,
        (&Method::POST, "/_run/9/completejob") => Endpoint::CompleteJob,
        (_, p) if p.starts_with("/_results/twirp/") => Endpoint::Results,
        (_, p) if p.starts_with("/_blob/") => Endpoint::Blob,
        (_, "/_ws/ingest.sock") => Endpoint::Feed,
        _ => Endpoint::Other,
    }
}

fn to_response(r: Reply) -> Response {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (k, v) in &r.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Body::from(r.body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn handle(
    AxState(inner): AxState<Arc<Inner>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let endpoint = classify(&method, &path);
    let reply = dispatch(&inner, endpoint, &method, &path, &query, &headers, &body).await;
    let lost = {
        let mut s = inner.state();
        let lost = match s.faults.lose_next.get_mut(&endpoint) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        };
        let text = if endpoint == Endpoint::Blob {
            format!("<{} bytes>", body.len())
        } else if endpoint == Endpoint::Token {
            // The signed assertion is a credential: keep the form's shape only.
            url::form_urlencoded::parse(&body)
                .map(|(k, v)| {
                    if k == "client_assertion" {
                        format!("{k}=***")
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect::<Vec<_>>()
                .join("&")
        } else {
            String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]).into_owned()
        };
        s.requests.push(RequestRecord {
            method: method.to_string(),
            path,
            query,
            endpoint,
            status: reply.status,
            body: text,
            lost,
        });
        lost
    };
    inner.changed.notify_waiters();
    if lost {
        let conn = inner
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .cloned();
        if let Some(c) = conn {
            c.cancel();
        }
    }
    to_response(reply)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn dispatch(
    inner: &Arc<Inner>,
    endpoint: Endpoint,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    let auth = header(headers, "authorization");
    if endpoint == Endpoint::Poll {
        return long_poll(inner, auth, query).await;
    }
    let mut s = inner.state();
    if let Some(r) = s.take_fault(endpoint) {
        return r;
    }
    match endpoint {
        Endpoint::Rest => {
            if header(headers, "user-agent").is_none_or(str::is_empty) {
                return Reply {
                    status: 403,
                    headers: vec![("content-type".into(), "text/plain".into())],
                    body: b"Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.\n".to_vec(),
                };
            }
            rest(&mut s, method, path, query, auth, body)
        }
        Endpoint::Token => {
            if method != Method::POST {
                return Reply::empty(405);
            }
            let url = format!("{}{path}", s.base);
            s.token(&url, header(headers, "content-type"), body)
        }
        Endpoint::SessionCreate => s.create_session(auth, body),
        Endpoint::SessionDelete => s.delete_session(auth),
        Endpoint::Acknowledge => s.acknowledge(auth, query, body),
        Endpoint::AcquireJob => s.acquire(auth, body),
        Endpoint::RenewJob => s.renew(auth, body),
        Endpoint::CompleteJob => s.complete(auth, body),
        Endpoint::Results => {
            if method != Method::POST {
                return Reply::empty(405);
            }
            let m = path.rsplit('/').next().unwrap_or("");
            let service_ok = path
                .starts_with("/_results/twirp/results.services.receiver.Receiver/")
                || path
                    == "/_results/twirp/github.actions.results.api.v1.WorkflowStepUpdateService/WorkflowStepsUpdate";
            if !service_ok
                || (m == "WorkflowStepsUpdate") != path.contains("WorkflowStepUpdateService")
            {
                return Reply::json(
                    404,
                    serde_json::json!({"code": "bad_route", "msg": format!("no handler for path \"{path}\"")}),
                );
            }
            s.results(m, auth, header(headers, "content-type"), body)
        }
        Endpoint::Blob => {
            if method != Method::PUT {
                return Reply::empty(405);
            }
            let key = path.trim_start_matches("/_blob/");
            s.blob_put(key, query, headers, body)
        }
        Endpoint::Feed | Endpoint::Other => Reply::empty(404),
        Endpoint::Poll => Reply::empty(500),
    }
}

/// REST routing under `/api/v3`.
fn rest(
    s: &mut State,
    method: &Method,
    path: &str,
    query: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Reply {
    let p = path.trim_start_matches("/api/v3/");
    let segs: Vec<&str> = p.split('/').collect();
    let base = s.base.clone();
    if let Some((reply, violation)) = s.users.handle(method, &segs, query, auth, &base) {
        if let Some(v) = violation {
            s.violations.push(v);
        }
        return reply;
    }
    if let ["app", "installations", id, "access_tokens"] = segs.as_slice() {
        if method != Method::POST {
            return Reply::empty(404);
        }
        return s.installation_token(id, auth);
    }
    let (scope, rest): (String, &[&str]) = match segs.as_slice() {
        ["repos", o, r, rest @ ..] => (format!("repos/{o}/{r}"), rest),
        ["orgs", o, rest @ ..] => (format!("orgs/{o}"), rest),
        ["enterprises", e, rest @ ..] => (format!("enterprises/{e}"), rest),
        _ => {
            return Reply::json(
                404,
                serde_json::json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}),
            );
        }
    };
    match (method, rest) {
        (&Method::POST, ["actions", "runners", "generate-jitconfig"]) => {
            s.generate_jitconfig(&scope, auth, body)
        }
        (&Method::GET, ["actions", "runners"]) => s.list_runners(&scope, auth, query),
        (&Method::GET, ["actions", "runners", id]) => s.runner_by_id(&scope, id, false, auth),
        (&Method::DELETE, ["actions", "runners", id]) => s.runner_by_id(&scope, id, true, auth),
        _ => Reply::json(
            404,
            serde_json::json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}),
        ),
    }
}

async fn long_poll(inner: &Arc<Inner>, auth: Option<&str>, query: &str) -> Reply {
    let hold = inner.state().opts.poll_hold;
    let deadline = Instant::now() + hold;
    let mut first = true;
    loop {
        let notified = inner.changed.notified();
        let (step, hang) = {
            let mut s = inner.state();
            let st = s.poll(auth, query, first);
            let hang = first && matches!(st, PollStep::Wait) && s.faults.poll_hang;
            (st, hang)
        };
        if hang {
            inner.stop.cancelled().await;
            return Reply::empty(503);
        }
        first = false;
        if let PollStep::Answer(r) = step {
            return r;
        }
        let now = Instant::now();
        if now >= deadline {
            return inner.state().empty_poll();
        }
        let wait = (deadline - now).min(Duration::from_millis(250));
        tokio::select! {
            _ = tokio::time::timeout(wait, notified) => {}
            _ = inner.stop.cancelled() => return Reply::empty(503),
        }
    }
}

/// The live console sink: `Authorization: Bearer <job token>`, text frames
/// `{"count", "value", "stepId", "startLine"}` recorded per job.
async fn feed(
    AxState(inner): AxState<Arc<Inner>>,
    headers: HeaderMap,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let job = inner.state().feed_job(header(&headers, "authorization"));
    {
        let mut s = inner.state();
        s.requests.push(RequestRecord {
            method: "GET".into(),
            path: "/_ws/ingest.sock".into(),
            query: String::new(),
            endpoint: Endpoint::Feed,
            status: if job.is_some() { 101 } else { 401 },
            body: String::new(),
            lost: false,
        });
    }
    let Some(job) = job else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    ws.on_upgrade(move |mut socket| async move {
        use axum::extract::ws::Message;
        while let Some(Ok(msg)) = socket.recv().await {
            match msg {
                Message::Text(t) => {
                    inner.state().feed_frame(job, t.as_str());
                    inner.changed.notify_waiters();
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    })
}

/// The peer address of a request's connection (its kill switch's key).
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, ConnListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, ConnListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// The TCP listener: every connection gets its own kill switch.
struct ConnListener {
    listener: TcpListener,
    conns: Conns,
    stop: CancellationToken,
}

impl axum::serve::Listener for ConnListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((io, addr)) => {
                    let _ = io.set_nodelay(true);
                    let kill = self.stop.child_token();
                    self.conns
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(addr, kill.clone());
                    let conns = self.conns.clone();
                    let stream =
                        KillableStream::new(io, kill, "fake GitHub dropped the connection")
                            .on_drop(move || {
                                conns
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .remove(&addr);
                            });
                    return (stream, addr);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

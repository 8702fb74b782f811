//! The built-in cache service: the actions cache protocol v1 that
//! `@actions/cache` (inside actions/cache) speaks to any server that is not
//! github.com, served on the host's `127.0.0.1` at a port chosen at start.
//!
//! Each job gets a [`CacheLease`]: an unguessable token that is the first
//! segment of every URL of the job (`ACTIONS_CACHE_URL` =
//! `http://10.0.2.2:<port>/<token>/`). The token is the capability: the
//! download URLs carry it too (downloads send no `Authorization`), and once
//! the lease is dropped every URL of it answers 404. The lease binds the job
//! to its [`CacheScope`]:
//!
//! - a job reads and writes only its own repository's entries (scope =
//!   forge + repository);
//! - a pull-request job writes into an isolated part of that scope, keyed
//!   by the pull request, and reads its own isolated entries first, then the
//!   shared ones; other jobs write and read shared entries only. A pull
//!   request can therefore never write where the default branch reads.
//!
//! Storage (`<dir>`, by default `<state_dir>/cache`): an upload is written at
//! its chunks' offsets into `uploads/<uuid>`; the commit checks that every
//! byte arrived, syncs it, renames it to `entries/<uuid>` and only then adds
//! its row to the index ([`index`], SQLite, shared by `exec` and the
//! daemon). Entries are immutable; a newer commit of the same key and
//! version supersedes an older one, and the least recently used entries are
//! evicted beyond the size limit.

pub mod index;

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

pub use index::{Entry, Index};

/// Where a guest reaches the host's services (QEMU user networking's
/// gateway; the VM layer forwards the ports in `VmSpec::host_ports` there).
pub const GUEST_HOST: &str = "10.0.2.2";
/// Longest key the client sends (it refuses longer ones).
pub const MAX_KEY_CHARS: usize = 512;
/// Largest chunk accepted in one `PATCH` (the client sends at most 32 MiB).
pub const MAX_CHUNK_BYTES: u64 = 64 << 20;
/// Most keys in one lookup (the client sends the key and at most 9
/// restore keys).
pub const MAX_LOOKUP_KEYS: usize = 10;
/// Most uploads one job may have in progress at once (the library has one
/// per save step).
pub const MAX_UPLOADS_PER_JOB: usize = 8;
/// A `PATCH` whose body sends nothing for this long is answered `408` (a
/// stalled client would otherwise keep the upload from being committed).
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Upload files older than this that no running server owns are removed at
/// start (an `exec` or daemon that died mid-upload).
pub const ABANDONED_AFTER: Duration = Duration::from_secs(3600);
/// The index file under the cache directory.
pub const INDEX_FILE: &str = "index.db";

/// Settings of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// The cache directory (`[cache] dir`).
    pub dir: PathBuf,
    /// Bound on the committed entries' total size in bytes.
    pub max_bytes: u64,
}

/// Why the cache service could not start or store something.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("Could not {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Could not {what} in the cache index {path}: {source} (stop the daemon and remove the cache directory if it is damaged)"
    )]
    Index {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

/// Whose entries a job may read and where it writes.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheScope {
    /// `<forge>|<owner/name>`, lower case.
    scope: String,
    /// The pull request's isolation key, for pull-request jobs.
    isolation: Option<String>,
}

impl std::fmt::Debug for CacheScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheScope")
            .field("scope", &self.scope)
            .field("isolation", &self.isolation)
            .finish()
    }
}

impl CacheScope {
    /// The scope of `repository` (`owner/name`) on `forge` (its URL, or
    /// `local` for `solstice exec`); `isolation`: the pull request's key for
    /// pull-request jobs, `None` for the others.
    pub fn new(forge: &str, repository: &str, isolation: Option<String>) -> CacheScope {
        CacheScope {
            scope: format!(
                "{}|{}",
                forge.trim_end_matches('/').to_lowercase(),
                repository.to_lowercase()
            ),
            isolation: isolation.filter(|i| !i.is_empty()),
        }
    }

    /// Where this job writes.
    fn write_isolation(&self) -> &str {
        self.isolation.as_deref().unwrap_or("")
    }

    /// What it reads, in order.
    fn read_isolations(&self) -> Vec<&str> {
        match &self.isolation {
            Some(i) => vec![i.as_str(), ""],
            None => vec![""],
        }
    }
}

struct Upload {
    token: String,
    key: String,
    version: String,
    /// `cacheSize` from the reserve, when the client sent one.
    expected: Option<u64>,
    name: String,
    path: PathBuf,
    /// Bytes this upload counts against the bound on uploads in progress:
    /// its reserved size, or without one the end of its furthest chunk.
    /// Changed only under `Shared::uploads`.
    claimed: AtomicU64,
    /// Byte ranges `[start, end)` received whole.
    received: Mutex<Vec<(u64, u64)>>,
    /// PATCHes hold it shared while they write; the commit takes it
    /// exclusively and closes the upload.
    gate: tokio::sync::RwLock<bool>,
}

struct Shared {
    settings: CacheSettings,
    index: Mutex<Index>,
    leases: Mutex<HashMap<String, CacheScope>>,
    uploads: Mutex<HashMap<u64, Arc<Upload>>>,
    next_upload: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn entries_dir(&self) -> PathBuf {
        self.settings.dir.join("entries")
    }
    fn uploads_dir(&self) -> PathBuf {
        self.settings.dir.join("uploads")
    }
    fn remove_files(&self, files: &[String]) {
        for f in files {
            let _ = std::fs::remove_file(self.entries_dir().join(f));
        }
    }
}

/// The running service. Dropping it stops the server.
pub struct CacheService {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl std::fmt::Debug for CacheService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService")
            .field("addr", &self.addr)
            .field("dir", &self.shared.settings.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for CacheService {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn create_dir(path: &Path) -> Result<(), CacheError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| CacheError::Io {
            what: "create the cache directory",
            path: path.to_path_buf(),
            source,
        })
}

/// Opens the index of the cache in `dir` (for `solstice cache`), `None`
/// when there is none yet. Creates nothing but SQLite's `-wal` and `-shm`
/// files beside an existing index: the caller makes sure that it runs as
/// the directory's owner.
pub fn open_index(dir: &Path) -> Result<Option<Index>, CacheError> {
    let path = dir.join(INDEX_FILE);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => Index::open(&path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CacheError::Io {
            what: "read",
            path,
            source,
        }),
    }
}

/// Removes the files of entries removed from the index of `dir`.
pub fn remove_entry_files(dir: &Path, files: &[String]) {
    for f in files {
        let _ = std::fs::remove_file(dir.join("entries").join(f));
    }
}

impl CacheService {
    /// Opens the cache in `settings.dir`, removes what a dead process left
    /// there, and serves on `127.0.0.1` at a free port.
    pub async fn start(settings: CacheSettings) -> Result<CacheService, CacheError> {
        let dir = settings.dir.clone();
        create_dir(&dir)?;
        create_dir(&dir.join("entries"))?;
        create_dir(&dir.join("uploads"))?;
        let index = Index::open(&dir.join(INDEX_FILE))?;
        sweep(&dir, &index);
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|source| CacheError::Io {
                what: "listen on 127.0.0.1 for",
                path: dir.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| CacheError::Io {
            what: "read the listening address for",
            path: dir.clone(),
            source,
        })?;
        let shared = Arc::new(Shared {
            settings,
            index: Mutex::new(index),
            leases: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            next_upload: AtomicU64::new(1),
        });
        let stop = CancellationToken::new();
        let app = router(shared.clone());
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the cache service stopped");
            }
        });
        tracing::debug!(%addr, dir = %dir.display(), "cache service started");
        Ok(CacheService { shared, addr, stop })
    }

    /// The host port it listens on (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.shared.settings.dir
    }

    /// Registers a job: its URLs work until the lease is dropped.
    pub fn lease(&self, scope: CacheScope) -> CacheLease {
        let bytes: [u8; 32] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        lock(&self.shared.leases).insert(token.clone(), scope);
        CacheLease {
            shared: self.shared.clone(),
            token,
            port: self.port(),
        }
    }
}

/// One job's access to the cache (see the module documentation). Dropping
/// it ends the access and discards the job's unfinished uploads.
pub struct CacheLease {
    shared: Arc<Shared>,
    token: String,
    port: u16,
}

impl std::fmt::Debug for CacheLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLease")
            .field("token", &"***")
            .field("port", &self.port)
            .finish()
    }
}

impl CacheLease {
    /// `ACTIONS_CACHE_URL` for the guest (with its trailing `/`).
    pub fn guest_url(&self) -> String {
        format!("http://{GUEST_HOST}:{}/{}/", self.port, self.token)
    }

    /// The same URL on the host (tests, benchmarks).
    pub fn host_url(&self) -> String {
        format!("http://127.0.0.1:{}/{}/", self.port, self.token)
    }

    /// The token (mask it in logs).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The host port the guest must reach.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for CacheLease {
    fn drop(&mut self) {
        {
            // Index, then leases: the order of `commit`, which checks the
            // lease under the index lock before it adds a row.
            let _index = lock(&self.shared.index);
            lock(&self.shared.leases).remove(&self.token);
        }
        let gone: Vec<Arc<Upload>> = {
            let mut uploads = lock(&self.shared.uploads);
            let ids: Vec<u64> = uploads
                .iter()
                .filter(|(_, u)| u.token == self.token)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| uploads.remove(id)).collect()
        };
        for u in gone {
            let _ = std::fs::remove_file(&u.path);
        }
    }
}

/// Removes upload files nobody has written for [`ABANDONED_AFTER`] and entry
/// files without a row that old (a crash between rename and row).
fn sweep(dir: &Path, index: &Index) {
    let old = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ABANDONED_AFTER)
    };
    if let Ok(rd) = std::fs::read_dir(dir.join("uploads")) {
        for e in rd.flatten() {
            if old(&e.path()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir.join("entries")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if old(&e.path()) && matches!(index.has_file(&name), Ok(false)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A 4xx/5xx answer with `{"error": ...}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json(self.0, &serde_json::json!({ "error": self.1 }))
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "cache service fault");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn not_found(what: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("{what} not found"))
}

type Api = Result<Response, ApiError>;

fn router(shared: Arc<Shared>) -> Router {
    const BASE: &str = "/{token}/_apis/artifactcache";
    Router::new()
        .route(&format!("{BASE}/cache"), get(lookup))
        .route(&format!("{BASE}/caches"), get(list).post(reserve))
        .route(&format!("{BASE}/caches/{{id}}"), post(commit).patch(upload))
        .route(&format!("{BASE}/artifacts/{{id}}"), get(download))
        .route(&format!("{BASE}/clean"), post(clean))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such resource".into()) })
        .with_state(shared)
}

fn scope_of(shared: &Shared, token: &str) -> Result<CacheScope, ApiError> {
    lock(&shared.leases)
        .get(token)
        .cloned()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "unknown or expired cache URL".into()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

fn query(uri: &Uri) -> HashMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS || key.contains(',') {
        return Err(bad(format!(
            "invalid key {key:?}: keys are 1 to {MAX_KEY_CHARS} characters without commas"
        )));
    }
    Ok(())
}

/// `GET cache?keys=k1,k2&version=v`.
async fn lookup(
    State(shared): State<Arc<Shared>>,
    UrlPath(token): UrlPath<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Api {
    let scope = scope_of(&shared, &token)?;
    let q = query(&uri);
    let keys: Vec<String> = q
        .get("keys")
        .map(|k| {
            k.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let version = q.get("version").cloned().unwrap_or_default();
    if keys.is_empty() || version.is_empty() {
        return Err(bad("the query needs keys and version"));
    }
    if keys.len() > MAX_LOOKUP_KEYS {
        return Err(bad(format!(
            "{} keys: a lookup takes at most {MAX_LOOKUP_KEYS}",
            keys.len()
        )));
    }
    let sh = shared.clone();
    let found = blocking(move || {
        let isolations = scope.read_isolations();
        lock(&sh.index)
            .lookup(&scope.scope, &isolations, &keys, &version)
            .map_err(internal)
    })
    .await?;
    let Some(entry) = found else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .map_or_else(
            || format!("127.0.0.1:{}", uri.port_u16().unwrap_or(0)),
            str::to_owned,
        );
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "result": "hit",
            "archiveLocation": format!("http://{host}/{token}/_apis/artifactcache/artifacts/{}", entry.id),
            "cacheKey": entry.key,
        }),
    ))
}

/// `GET caches?key=`: only for the client's debug output; an empty list.
async fn list(State(shared): State<Arc<Shared>>, UrlPath(token): UrlPath<String>) -> Api {
    scope_of(&shared, &token)?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "totalCount": 0, "artifactCaches": [] }),
    ))
}

/// `POST clean`: a no-op, as in act.
async fn clean(State(shared): State<Arc<Shared>>, UrlPath(token): UrlPath<String>) -> Api {
    scope_of(&shared, &token)?;
    Ok(StatusCode::OK.into_response())
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReserveBody {
    key: String,
    version: String,
    #[serde(default)]
    cache_size: Option<i64>,
}

/// `POST caches {key, version, cacheSize}` → `{cacheId}`.
async fn reserve(
    State(shared): State<Arc<Shared>>,
    UrlPath(token): UrlPath<String>,
    body: Bytes,
) -> Api {
    scope_of(&shared, &token)?;
    let req: ReserveBody =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid reserve request: {e}")))?;
    check_key(&req.key)?;
    if req.version.is_empty() || req.version.len() > MAX_KEY_CHARS {
        return Err(bad("invalid version"));
    }
    let expected = req
        .cache_size
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0);
    let max = shared.settings.max_bytes;
    if let Some(size) = expected
        && size > max
    {
        return Err(bad(format!(
            "Cache size of ~{} MB ({size} B) is over the data cap of {} MB ({max} B) of this runner's cache",
            size >> 20,
            max >> 20
        )));
    }
    let name = uuid::Uuid::new_v4().simple().to_string();
    let path = shared.uploads_dir().join(&name);
    // Created here, opened again by each PATCH: an upload holds no file
    // descriptor between requests.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(internal)?;
    let id = shared.next_upload.fetch_add(1, Ordering::Relaxed);
    let claimed = expected.unwrap_or(0);
    let refused = {
        let mut uploads = lock(&shared.uploads);
        let mine = uploads.values().filter(|u| u.token == token).count();
        let busy = in_progress(&uploads);
        if mine >= MAX_UPLOADS_PER_JOB {
            Some(format!(
                "this job already has {mine} uploads in progress, the most it may have at once"
            ))
        } else if busy.saturating_add(claimed) > max {
            Some(format!(
                "the uploads in progress take {busy} of the {max} bytes they may take together; try again later"
            ))
        } else {
            uploads.insert(
                id,
                Arc::new(Upload {
                    token,
                    key: req.key,
                    version: req.version,
                    expected,
                    name,
                    path: path.clone(),
                    claimed: AtomicU64::new(claimed),
                    received: Mutex::new(Vec::new()),
                    gate: tokio::sync::RwLock::new(false),
                }),
            );
            None
        }
    };
    if let Some(msg) = refused {
        let _ = std::fs::remove_file(&path);
        return Err(ApiError(StatusCode::TOO_MANY_REQUESTS, msg));
    }
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "cacheId": id }),
    ))
}

/// The bytes all uploads in progress claim (see `Upload::claimed`).
fn in_progress(uploads: &HashMap<u64, Arc<Upload>>) -> u64 {
    uploads
        .values()
        .map(|u| u.claimed.load(Ordering::Relaxed))
        .fold(0, u64::saturating_add)
}

fn upload_of(shared: &Shared, token: &str, id: &str) -> Result<Arc<Upload>, ApiError> {
    scope_of(shared, token)?;
    let id: u64 = id.parse().map_err(|_| not_found("upload"))?;
    lock(&shared.uploads)
        .get(&id)
        .filter(|u| u.token == token)
        .cloned()
        .ok_or_else(|| not_found("upload"))
}

/// `bytes <start>-<end>/<total or *>` → `(start, end inclusive)`.
fn content_range(headers: &HeaderMap) -> Result<(u64, u64), ApiError> {
    let v = headers
        .get(header::CONTENT_RANGE)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| bad("a Content-Range header is required"))?;
    let parsed = v
        .trim()
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('/'))
        .and_then(|(range, _)| range.split_once('-'))
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
        .filter(|(a, b)| a <= b);
    parsed.ok_or_else(|| bad(format!("invalid Content-Range {v:?}")))
}

/// `PATCH caches/<id>` with `Content-Range`: the chunk is written at its
/// offset.
async fn upload(
    State(shared): State<Arc<Shared>>,
    UrlPath((token, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Api {
    let up = upload_of(&shared, &token, &id)?;
    let (start, end) = content_range(&headers)?;
    // `end < limit <= u64::MAX` before any arithmetic: a guest's range may
    // end at `u64::MAX`.
    let limit = up.expected.unwrap_or(shared.settings.max_bytes);
    if end >= limit {
        return Err(bad(format!(
            "the range ends at byte {end}, beyond the reserved size of {limit} bytes"
        )));
    }
    let len = end - start + 1;
    if len > MAX_CHUNK_BYTES {
        return Err(bad(format!("chunks are at most {MAX_CHUNK_BYTES} bytes")));
    }
    if up.expected.is_none() {
        // Without a reserved size, the upload claims what it writes.
        let uploads = lock(&shared.uploads);
        let had = up.claimed.load(Ordering::Relaxed);
        let wants = had.max(end + 1);
        let max = shared.settings.max_bytes;
        let others = in_progress(&uploads).saturating_sub(had);
        if others.saturating_add(wants) > max {
            return Err(bad(format!(
                "the uploads in progress would take more than the {max} bytes they may take together"
            )));
        }
        up.claimed.store(wants, Ordering::Relaxed);
    }
    let gate = up.gate.read().await;
    if *gate {
        return Err(bad("the entry is already committed"));
    }
    let path = up.path.clone();
    let file = Arc::new(
        blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(internal)
        })
        .await?,
    );
    let mut stream = body.into_data_stream();
    let mut at = start;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    loop {
        let next = tokio::time::timeout(BODY_IDLE_TIMEOUT, stream.next())
            .await
            .map_err(|_| {
                ApiError(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the chunk's body sent nothing for {} s",
                        BODY_IDLE_TIMEOUT.as_secs()
                    ),
                )
            })?;
        let done = next.is_none();
        if let Some(frame) = next {
            let data = frame.map_err(|e| bad(format!("could not read the chunk: {e}")))?;
            if (at - start) + (buf.len() + data.len()) as u64 > len {
                return Err(bad("the body is longer than its Content-Range"));
            }
            buf.extend_from_slice(&data);
        }
        if buf.len() >= (1 << 20) || (done && !buf.is_empty()) {
            let chunk = std::mem::replace(&mut buf, Vec::with_capacity(1 << 20));
            let f = file.clone();
            let offset = at;
            at += chunk.len() as u64;
            blocking(move || f.write_all_at(&chunk, offset).map_err(internal)).await?;
        }
        if done {
            break;
        }
    }
    if at - start != len {
        return Err(bad(format!(
            "the body has {} bytes, its Content-Range says {len}",
            at - start
        )));
    }
    lock(&up.received).push((start, end + 1));
    drop(gate);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Whether `ranges` cover `[0, size)`.
fn covers(ranges: &[(u64, u64)], size: u64) -> bool {
    let mut r = ranges.to_vec();
    r.sort_unstable();
    let mut upto = 0;
    for (a, b) in r {
        if a > upto {
            return false;
        }
        upto = upto.max(b);
    }
    upto >= size
}

#[derive(serde::Deserialize)]
struct CommitBody {
    size: i64,
}

/// `POST caches/<id> {size}`: checks the bytes, then publishes the entry.
async fn commit(
    State(shared): State<Arc<Shared>>,
    UrlPath((token, id)): UrlPath<(String, String)>,
    body: Bytes,
) -> Api {
    let up = upload_of(&shared, &token, &id)?;
    let scope = scope_of(&shared, &token)?;
    let req: CommitBody =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid commit request: {e}")))?;
    let mut gate = up.gate.write().await;
    if *gate {
        return Err(bad("the entry is already committed"));
    }
    // Whatever happens now, this upload is finished.
    *gate = true;
    if let Ok(n) = id.parse::<u64>() {
        lock(&shared.uploads).remove(&n);
    }
    // Every refusal from here on deletes the upload's file.
    let discard = |e: ApiError| {
        let _ = std::fs::remove_file(&up.path);
        e
    };
    let size = u64::try_from(req.size).map_err(|_| discard(bad("the size is negative")))?;
    if let Some(expected) = up.expected
        && expected != size
    {
        return Err(discard(bad(format!(
            "broken upload: {size} bytes committed, {expected} reserved"
        ))));
    }
    let on_disk = std::fs::metadata(&up.path)
        .map_err(|e| discard(internal(e)))?
        .len();
    if on_disk != size || !covers(&lock(&up.received), size) {
        return Err(discard(bad(format!(
            "broken upload: {size} bytes committed, but not every byte of them arrived"
        ))));
    }
    let sh = shared.clone();
    let u = up.clone();
    blocking(move || {
        let discard = |e: std::io::Error| {
            let _ = std::fs::remove_file(&u.path);
            internal(e)
        };
        File::options()
            .write(true)
            .open(&u.path)
            .and_then(|f| f.sync_all())
            .map_err(discard)?;
        let target = sh.entries_dir().join(&u.name);
        std::fs::rename(&u.path, &target).map_err(discard)?;
        if let Ok(d) = File::open(sh.entries_dir()) {
            let _ = d.sync_all();
        }
        let inserted = {
            // The lease is checked under the index lock, which its drop
            // takes too: once a lease is dropped, no commit of its job
            // publishes an entry.
            let mut index = lock(&sh.index);
            if !lock(&sh.leases).contains_key(&u.token) {
                drop(index);
                let _ = std::fs::remove_file(&target);
                return Err(ApiError(
                    StatusCode::NOT_FOUND,
                    "unknown or expired cache URL".into(),
                ));
            }
            index.insert(
                &index::NewEntry {
                    scope: &scope.scope,
                    isolation: scope.write_isolation(),
                    key: &u.key,
                    version: &u.version,
                    file: &u.name,
                    size,
                },
                sh.settings.max_bytes,
            )
        };
        match inserted {
            Ok((_, removed)) => {
                sh.remove_files(&removed);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&target);
                Err(internal(e))
            }
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET artifacts/<id>`: the entry's bytes (no `Authorization`: the token
/// in the path is the capability).
async fn download(
    State(shared): State<Arc<Shared>>,
    UrlPath((token, id)): UrlPath<(String, String)>,
) -> Api {
    let scope = scope_of(&shared, &token)?;
    let id: i64 = id.parse().map_err(|_| not_found("entry"))?;
    let sh = shared.clone();
    let entry = blocking(move || {
        let isolations = scope.read_isolations();
        lock(&sh.index)
            .readable(id, &scope.scope, &isolations)
            .map_err(internal)
    })
    .await?
    .ok_or_else(|| not_found("entry"))?;
    let file = tokio::fs::File::open(shared.entries_dir().join(&entry.file))
        .await
        .map_err(|_| not_found("entry"))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, entry.size.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_that_outlives_its_lease_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let svc = CacheService::start(CacheSettings {
            dir: dir.path().to_path_buf(),
            max_bytes: 1 << 20,
        })
        .await
        .unwrap();
        let lease = svc.lease(CacheScope::new("local", "o/r", None));
        let token = lease.token().to_owned();
        let shared = svc.shared.clone();
        let body = serde_json::json!({"key": "k", "version": "v", "cacheSize": 3}).to_string();
        let r = reserve(State(shared.clone()), UrlPath(token.clone()), body.into())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let id = lock(&shared.uploads).keys().copied().next().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, "bytes 0-2/*".parse().unwrap());
        let r = upload(
            State(shared.clone()),
            UrlPath((token.clone(), id.to_string())),
            h,
            Body::from("abc"),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        // The commit renames the file, then waits for the index, which a
        // thread holds while the job ends.
        let (locked, is_locked) = std::sync::mpsc::channel();
        let entries = shared.entries_dir();
        let holder = {
            let shared = shared.clone();
            let entries = entries.clone();
            let token = token.clone();
            std::thread::spawn(move || {
                let index = lock(&shared.index);
                locked.send(()).unwrap();
                while std::fs::read_dir(&entries).unwrap().count() == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                // What the lease's drop does, while the commit waits.
                lock(&shared.leases).remove(&token);
                drop(index);
            })
        };
        is_locked.recv().unwrap();
        let committing = tokio::spawn(commit(
            State(shared.clone()),
            UrlPath((token.clone(), id.to_string())),
            Bytes::from_static(br#"{"size": 3}"#),
        ));
        let answer = committing.await.unwrap();
        holder.join().unwrap();
        assert_eq!(answer.unwrap_err().0, StatusCode::NOT_FOUND);
        assert!(lock(&shared.index).list(None).unwrap().is_empty());
        assert_eq!(std::fs::read_dir(&entries).unwrap().count(), 0);
        drop(lease);
    }

    #[test]
    fn ranges_cover_only_without_gaps() {
        assert!(covers(&[(5, 10), (0, 5)], 10));
        assert!(covers(&[(0, 6), (4, 10)], 10));
        assert!(!covers(&[(0, 4), (5, 10)], 10));
        assert!(!covers(&[(0, 4)], 10));
        assert!(covers(&[], 0));
    }

    #[test]
    fn a_pull_request_reads_its_own_entries_first() {
        let s = CacheScope::new(
            "https://Forge.example/",
            "Owner/Repo",
            Some("refs/pull/3".into()),
        );
        assert_eq!(s.scope, "https://forge.example|owner/repo");
        assert_eq!(s.write_isolation(), "refs/pull/3");
        assert_eq!(s.read_isolations(), ["refs/pull/3", ""]);
        let s = CacheScope::new("local", "o/r", None);
        assert_eq!(s.write_isolation(), "");
        assert_eq!(s.read_isolations(), [""]);
    }
}

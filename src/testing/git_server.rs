//! A git server for tests: smart HTTP through the real `git http-backend`
//! (CGI) behind an axum server on 127.0.0.1.
//!
//! Repositories live in a fresh temporary directory as `owner/repo.git`;
//! [`GitServer::publish`] commits a directory's content to a repository's
//! `main` branch and moves tags to that commit. The server serves
//! `{url}/{owner}/{repo}` (with or without `.git`), allows fetching any
//! commit by its full sha (as the real forges do) and never accepts pushes.
//! It counts what it serves, can play dead ([`GitServer::set_down`]) and
//! records `Authorization` headers so tests can check who saw a token.

use std::future::IntoFuture;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running git server. The server stops and its repositories are deleted
/// when the value is dropped.
pub struct GitServer {
    inner: Arc<Inner>,
    url: String,
    stop: CancellationToken,
    _root: tempfile::TempDir,
}

impl std::fmt::Debug for GitServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitServer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// Holds `owner/repo.git` bare repositories (`GIT_PROJECT_ROOT`).
    repos: PathBuf,
    /// An empty directory used as `HOME` for every git the server runs.
    home: PathBuf,
    backend: PathBuf,
    upload_packs: AtomicUsize,
    ref_listings: AtomicUsize,
    down: AtomicBool,
    authorizations: Mutex<Vec<String>>,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl GitServer {
    /// Starts serving repositories kept in a fresh temporary directory.
    ///
    /// Panics when the host has no `git` (with `git http-backend`) or the
    /// port cannot be bound: this is test support.
    pub async fn start() -> GitServer {
        let root = tempfile::tempdir().expect("git server: temporary directory");
        let repos = root.path().join("repos");
        let home = root.path().join("home");
        std::fs::create_dir_all(&repos).expect("git server: repos directory");
        std::fs::create_dir_all(&home).expect("git server: home directory");
        let exec_path = Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git server: `git --exec-path` (is git installed?)");
        let exec_path = String::from_utf8_lossy(&exec_path.stdout).trim().to_owned();
        let backend = Path::new(&exec_path).join("git-http-backend");
        assert!(
            backend.exists(),
            "git server: {} does not exist",
            backend.display()
        );
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("git server: bind 127.0.0.1");
        let addr: SocketAddr = listener.local_addr().expect("git server: local address");
        let inner = Arc::new(Inner {
            repos,
            home,
            backend,
            upload_packs: AtomicUsize::new(0),
            ref_listings: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            authorizations: Mutex::new(Vec::new()),
        });
        let router = Router::new().fallback(handle).with_state(inner.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = axum::serve(listener, router).into_future() => {
                    if let Err(e) = r {
                        tracing::warn!("git server: ended: {e}");
                    }
                }
                _ = stopped.cancelled() => {}
            }
        });
        GitServer {
            inner,
            url: format!("http://{addr}"),
            stop,
            _root: root,
        }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash). Repos are at
    /// `{url}/{owner}/{repo}` (no `.git`; a `.git` suffix also works).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Commits the whole content of directory `tree` as the new state of
    /// `owner/repo`'s branch `main` (creating the repo on first use; file
    /// modes, executables and symlinks included; `.gitignore` does not hide
    /// anything), moves each tag in `tags` to that commit (annotated tags, so
    /// clients must peel them), and returns the commit's 40-hex sha.
    pub fn publish(&self, owner: &str, repo: &str, tree: &Path, tags: &[&str]) -> String {
        assert!(
            valid_segment(owner) && valid_segment(repo),
            "git server: bad repository name {owner}/{repo}"
        );
        let dir = self.inner.repos.join(owner).join(format!("{repo}.git"));
        if !dir.exists() {
            std::fs::create_dir_all(&dir).expect("git server: repository directory");
            self.git(&dir, None, &["init", "--quiet", "--bare", "-b", "main"]);
            for (k, v) in [
                ("uploadpack.allowReachableSHA1InWant", "true"),
                ("uploadpack.allowAnySHA1InWant", "true"),
                ("uploadpack.allowTipSHA1InWant", "true"),
                ("http.receivepack", "false"),
            ] {
                self.git(&dir, None, &["config", k, v]);
            }
        }
        let index = tempfile::NamedTempFile::new().expect("git server: index file");
        let index_path = index.path().to_path_buf();
        // An empty file is not a valid index; git creates it when missing.
        drop(index);
        let work = Some((tree, index_path.as_path()));
        self.git(&dir, work, &["add", "--all", "--force", "."]);
        let tree_sha = self.git(&dir, work, &["write-tree"]);
        let _ = std::fs::remove_file(&index_path);
        let parent = self.git_ok(
            &dir,
            &["rev-parse", "--verify", "--quiet", "refs/heads/main"],
        );
        let mut args = vec!["commit-tree", tree_sha.as_str(), "-m", "publish"];
        if let Some(p) = &parent {
            args.extend(["-p", p.as_str()]);
        }
        let sha = self.git(&dir, None, &args);
        self.git(&dir, None, &["update-ref", "refs/heads/main", &sha]);
        for tag in tags {
            self.git(&dir, None, &["tag", "--force", "-a", "-m", tag, tag, &sha]);
        }
        sha
    }

    /// Number of `git-upload-pack` POST requests served so far that
    /// download objects (one per fetch or clone negotiation; protocol v2
    /// `ls-refs` requests are not counted).
    pub fn upload_packs(&self) -> usize {
        self.inner.upload_packs.load(Ordering::SeqCst)
    }

    /// Number of `info/refs` GET requests served so far (one per `git
    /// ls-remote`, `git fetch` or `git clone`).
    pub fn ref_listings(&self) -> usize {
        self.inner.ref_listings.load(Ordering::SeqCst)
    }

    /// While `true`, every request gets 503 (simulates a server that is down).
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// The values of the `Authorization` headers of every request seen.
    pub fn authorizations(&self) -> Vec<String> {
        self.inner
            .authorizations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn command(&self, git_dir: &Path, work: Option<(&Path, &Path)>) -> Command {
        let mut cmd = Command::new("git");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.inner.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_DIR", git_dir)
            .env("GIT_AUTHOR_NAME", "Git Server")
            .env("GIT_AUTHOR_EMAIL", "git-server@example.invalid")
            .env("GIT_COMMITTER_NAME", "Git Server")
            .env("GIT_COMMITTER_EMAIL", "git-server@example.invalid");
        if let Some((tree, index)) = work {
            cmd.env("GIT_WORK_TREE", tree)
                .env("GIT_INDEX_FILE", index)
                .current_dir(tree);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs git and returns its trimmed stdout; panics on failure.
    fn git(&self, git_dir: &Path, work: Option<(&Path, &Path)>, args: &[&str]) -> String {
        let out = self
            .command(git_dir, work)
            .args(args)
            .output()
            .expect("git server: run git");
        assert!(
            out.status.success(),
            "git server: git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs git; `None` when it fails.
    fn git_ok(&self, git_dir: &Path, args: &[&str]) -> Option<String> {
        let out = self.command(git_dir, None).args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn status(code: StatusCode, text: &str) -> Response {
    (code, text.to_owned()).into_response()
}

async fn handle(
    AxState(inner): AxState<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        inner
            .authorizations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(String::from_utf8_lossy(auth.as_bytes()).into_owned());
    }
    if inner.down.load(Ordering::SeqCst) {
        return status(StatusCode::SERVICE_UNAVAILABLE, "down for a test\n");
    }
    // `/owner/repo[.git]/rest...` → `/owner/repo.git/rest...`
    let segs: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    if segs.len() < 3 {
        return status(StatusCode::NOT_FOUND, "not a repository path\n");
    }
    let owner = segs[0];
    let repo = segs[1].strip_suffix(".git").unwrap_or(segs[1]);
    if !valid_segment(owner) || !valid_segment(repo) {
        return status(StatusCode::NOT_FOUND, "not a repository path\n");
    }
    let rest = segs[2..].join("/");
    if rest == "info/refs" && method == Method::GET {
        inner.ref_listings.fetch_add(1, Ordering::SeqCst);
    }
    if rest == "git-upload-pack" && method == Method::POST && downloads_objects(&headers, &body) {
        inner.upload_packs.fetch_add(1, Ordering::SeqCst);
    }
    let path_info = format!("/{owner}/{repo}.git/{rest}");
    match cgi(&inner, &method, &uri, &headers, path_info, body).await {
        Ok(r) => r,
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

/// Whether an upload-pack request asks for objects (protocol v0 `want`
/// lines or a v2 `command=fetch`), rather than a v2 `ls-refs`.
fn downloads_objects(headers: &HeaderMap, body: &[u8]) -> bool {
    let gz = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let plain;
    let body = if gz {
        let mut out = Vec::new();
        let mut d = flate2::read::GzDecoder::new(body);
        if std::io::Read::read_to_end(&mut d, &mut out).is_err() {
            return true;
        }
        plain = out;
        &plain[..]
    } else {
        body
    };
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    !has(b"command=ls-refs")
}

async fn cgi(
    inner: &Inner,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    path_info: String,
    body: Bytes,
) -> std::io::Result<Response> {
    let header_str = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut cmd = tokio::process::Command::new(&inner.backend);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &inner.home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", &inner.repos)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header_str(header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string());
    let encoding = header_str(header::CONTENT_ENCODING);
    if !encoding.is_empty() {
        cmd.env("HTTP_CONTENT_ENCODING", encoding);
    }
    if let Some(p) = headers.get("git-protocol").and_then(|v| v.to_str().ok()) {
        cmd.env("HTTP_GIT_PROTOCOL", p);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take();
    let writer = tokio::spawn(async move {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&body).await;
            let _ = s.shutdown().await;
        }
    });
    let mut out = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_end(&mut out).await?;
    }
    let mut err = Vec::new();
    if let Some(mut s) = child.stderr.take() {
        s.read_to_end(&mut err).await?;
    }
    let _ = writer.await;
    child.wait().await?;
    if !err.is_empty() {
        tracing::debug!("git http-backend: {}", String::from_utf8_lossy(&err));
    }
    Ok(parse_cgi(&out))
}

/// Turns a CGI response (headers, blank line, body) into an HTTP response.
fn parse_cgi(out: &[u8]) -> Response {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            out.windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        });
    let Some((head_end, body_start)) = split else {
        return status(
            StatusCode::BAD_GATEWAY,
            "git http-backend gave no headers\n",
        );
    };
    let head = String::from_utf8_lossy(&out[..head_end]);
    let mut builder = Response::builder().status(StatusCode::OK);
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            builder = builder.status(code);
        } else {
            builder = builder.header(name.trim(), value);
        }
    }
    builder
        .body(Body::from(out[body_start..].to_vec()))
        .unwrap_or_else(|_| status(StatusCode::BAD_GATEWAY, "bad CGI headers\n"))
}

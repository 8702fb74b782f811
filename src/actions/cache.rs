//! The cache of fetched action trees, on disk under `[actions]`'s directory
//! (`<state_dir>/actions`), shared by every job of the process and by other
//! Solstice processes using the same state directory.
//!
//! Layout:
//! - `entries/<url-hash>-<sha>/archive.tar`: `git archive` of the commit's
//!   tree (plain ustar, no pax global header; file times are the fetch's);
//!   `archive.sha256` beside it (checked on every use; its modification
//!   time is the entry's last use, for least-recently-used eviction);
//!   `source` says which URL and commit, for people.
//! - `refs/<url-hash>/<ref-hash>`: the commit a ref last resolved to, used
//!   when the server cannot be reached.
//! - `locks/<url-hash>-<sha>.lock`: one `flock` per entry, so that one
//!   process fetches a key at a time and nobody evicts an entry in use.
//! - `tmp/`: fetches in progress; `home/`: an empty `HOME` for git.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::git::{Git, GitError, Remote};
use super::policy::{self, HostEntry, HttpUrl, Verdict};
use super::{CacheSettings, FetchError, FetchRequest, FetchedAction};

/// How long resolving a ref may take.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long downloading an action may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(900);
/// How long resolving a host name may take.
const DNS_TIMEOUT: Duration = Duration::from_secs(30);
/// Leftovers of interrupted fetches older than this are removed.
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);
/// The local ref a fetch writes.
const FETCHED: &str = "refs/solstice/fetched";

/// The host's cache of fetched actions, keyed by URL and resolved commit.
#[derive(Debug)]
pub struct ActionCache {
    settings: CacheSettings,
    allowed: Vec<HostEntry>,
    /// Entries that do not parse, reported on each refusal.
    bad_allowed: Vec<String>,
    git: Git,
    /// One async lock per entry key, so that concurrent jobs of this
    /// process wait for one fetch instead of blocking threads on `flock`.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The result of asking the server.
enum Online {
    /// The ref resolved (`refname` is the full ref name when not a sha).
    Resolved {
        sha: String,
        refname: Option<String>,
        pin: Option<String>,
    },
    /// The server could not be reached (DNS, connection, 5xx, timeout).
    Unreachable(String),
}

impl ActionCache {
    /// A cache in `settings.dir` (created on first use). `allowed_hosts`
    /// entries that do not parse are ignored (the config validates them).
    pub fn new(settings: CacheSettings) -> ActionCache {
        let mut allowed = Vec::new();
        let mut bad_allowed = Vec::new();
        for h in &settings.allowed_hosts {
            match HostEntry::parse(h) {
                Ok(e) => allowed.push(e),
                Err(e) => bad_allowed.push(e),
            }
        }
        let git = Git::new(settings.dir.join("home"));
        ActionCache {
            settings,
            allowed,
            bad_allowed,
            git,
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// Resolves `req.action`'s ref and returns its tree, fetching it when
    /// the cache does not hold it.
    pub async fn fetch(&self, req: &FetchRequest<'_>) -> Result<FetchedAction, FetchError> {
        let a = req.action;
        let shown = a.to_string();
        let default = HttpUrl::parse(req.default_url)
            .map_err(|e| FetchError::Failed(format!("The default actions URL {e}")))?;
        let base = match &a.base {
            Some(b) => HttpUrl::parse(b)
                .map_err(|e| FetchError::Refused(format!("`uses: {shown}`: {e}")))?,
            None => default.clone(),
        };
        for (what, s) in [("owner", &a.owner), ("repository", &a.repo)] {
            if !valid_segment(s) {
                return Err(FetchError::Refused(format!(
                    "`uses: {shown}`: `{s}` is not a valid {what} name"
                )));
            }
        }
        check_ref(&shown, &a.git_ref)?;
        let url = base.join(&[&a.owner, &a.repo]);
        let forge = req.forge_url.and_then(|f| HttpUrl::parse(f).ok());
        let verdict = policy::host_verdict(&url, forge.as_ref(), Some(&default), &self.allowed)
            .map_err(|e| FetchError::Refused(self.with_bad_entries(e)))?;
        self.prepare_dirs().await?;

        let mut notes = Vec::new();
        let name = format!("{}/{}@{}", a.owner, a.repo, a.git_ref);
        let full_sha = is_hex(&a.git_ref) && a.git_ref.len() == 40;

        let token = req
            .token
            .filter(|_| policy::token_allowed(&url, forge.as_ref()));
        // A full sha already cached needs no network at all, unless the
        // action is the forge's, fetched with a job's token: it may be
        // private, so every job proves with its own token that it may read
        // it before the cache serves it.
        if full_sha && token.is_none() {
            let sha = a.git_ref.to_ascii_lowercase();
            let _g = self.lock(&url, &sha).await?;
            if let Some(archive) = self.read_entry(&url, &sha, &mut notes).await? {
                return Ok(FetchedAction {
                    url: url.as_str().to_owned(),
                    sha,
                    archive,
                    cached: true,
                    notes,
                });
            }
        }

        let (sha, refname, pin, offline) = match self
            .resolve_online(&url, verdict, &name, &a.git_ref, token)
            .await?
        {
            Online::Resolved { sha, refname, pin } => {
                if refname.is_some() {
                    self.remember(&url, &a.git_ref, &sha).await;
                }
                (sha, refname, pin, false)
            }
            Online::Unreachable(why) => {
                // The forge's own actions are not served while it cannot say
                // whether this job's token may read them.
                let remembered = match token {
                    Some(_) => None,
                    None => self.remembered(&url, &a.git_ref).await,
                };
                let Some(sha) = remembered else {
                    return Err(FetchError::Failed(format!(
                        "Could not fetch `{name}` from {}: {why}",
                        url.as_str()
                    )));
                };
                notes.push(format!(
                    "Could not reach {} ({why}); using the cached commit {} for `{}`",
                    url.as_str(),
                    short(&sha),
                    a.git_ref
                ));
                (sha, None, None, true)
            }
        };

        let _g = self.lock(&url, &sha).await?;
        if let Some(archive) = self.read_entry(&url, &sha, &mut notes).await? {
            return Ok(FetchedAction {
                url: url.as_str().to_owned(),
                sha,
                archive,
                cached: offline,
                notes,
            });
        }
        if offline {
            return Err(FetchError::Failed(format!(
                "Could not fetch `{name}` from {}: the server cannot be reached and the \
                 cache no longer holds commit {} (the one `{}` resolved to last time)",
                url.as_str(),
                short(&sha),
                a.git_ref
            )));
        }
        let remote = Remote {
            url: url.as_str(),
            pin,
            token,
        };
        let (sha, archive) = self
            .download(&remote, &name, &sha, refname.as_deref())
            .await?;
        if archive.len() as u64 > self.settings.max_bytes {
            return Err(FetchError::Failed(format!(
                "`{name}` from {} is {} MiB, more than the whole actions cache may hold \
                 (`[actions] cache_max_mib`)",
                url.as_str(),
                archive.len() >> 20
            )));
        }
        if refname.is_some() {
            // The ref may have moved since `ls-remote`.
            self.remember(&url, &a.git_ref, &sha).await;
        }
        self.store(&url, &sha, &archive).await?;
        Ok(FetchedAction {
            url: url.as_str().to_owned(),
            sha,
            archive,
            cached: false,
            notes,
        })
    }

    fn with_bad_entries(&self, msg: String) -> String {
        if self.bad_allowed.is_empty() {
            msg
        } else {
            format!(
                "{msg} (ignored entries of `{}`: {})",
                policy::ALLOWED_HOSTS_KEY,
                self.bad_allowed.join("; ")
            )
        }
    }

    /// Checks the host's addresses, then resolves the ref with `git
    /// ls-remote` (a full sha is taken as is).
    async fn resolve_online(
        &self,
        url: &HttpUrl,
        verdict: Verdict,
        name: &str,
        git_ref: &str,
        token: Option<&crate::secret::Secret>,
    ) -> Result<Online, FetchError> {
        let addrs = match url.ip() {
            Some(ip) => vec![ip],
            None => match lookup(url).await {
                Ok(a) => a,
                Err(e) => return Ok(Online::Unreachable(e)),
            },
        };
        if verdict == Verdict::PublicOnly {
            policy::check_addresses(url, &addrs)
                .map_err(|e| FetchError::Refused(self.with_bad_entries(e)))?;
        }
        let pin = policy::curl_resolve(url, &addrs);
        if is_hex(git_ref) && git_ref.len() == 40 && token.is_none() {
            return Ok(Online::Resolved {
                sha: git_ref.to_ascii_lowercase(),
                refname: None,
                pin,
            });
        }
        let remote = Remote {
            url: url.as_str(),
            pin: pin.clone(),
            token,
        };
        let full_sha = is_hex(git_ref) && git_ref.len() == 40;
        let candidates: Vec<String> = if full_sha {
            // With a token: `ls-remote` only proves the token may read the
            // repository.
            vec!["HEAD".to_owned()]
        } else if git_ref.starts_with("refs/") {
            vec![git_ref.to_owned()]
        } else {
            vec![
                format!("refs/tags/{git_ref}"),
                format!("refs/heads/{git_ref}"),
            ]
        };
        // `ls-remote` matches patterns against whole ref names: an annotated
        // tag's commit (`refs/tags/v1^{}`) needs a pattern of its own.
        let patterns: Vec<String> = candidates
            .iter()
            .flat_map(|c| [c.clone(), format!("{c}^{{}}")])
            .collect();
        let mut args = vec!["ls-remote", "--", url.as_str()];
        args.extend(patterns.iter().map(String::as_str));
        let out = match self
            .git
            .run(None, Some(&remote), &args, LS_REMOTE_TIMEOUT)
            .await
        {
            Ok(o) => o,
            Err(e) if e.is_not_found() => {
                return Err(FetchError::Failed(format!(
                    "Could not fetch `{name}`: there is no repository at {} (or it is private); \
                     check the `uses:` value",
                    url.as_str()
                )));
            }
            Err(GitError::Spawn(e)) => {
                return Err(FetchError::Failed(GitError::Spawn(e).to_string()));
            }
            Err(e) => return Ok(Online::Unreachable(e.to_string())),
        };
        if full_sha {
            return Ok(Online::Resolved {
                sha: git_ref.to_ascii_lowercase(),
                refname: None,
                pin,
            });
        }
        let listing = String::from_utf8_lossy(&out);
        match pick_ref(&listing, &candidates) {
            Some((sha, refname)) => Ok(Online::Resolved {
                sha,
                refname: Some(refname),
                pin,
            }),
            None if is_hex(git_ref) && (4..40).contains(&git_ref.len()) => {
                Err(FetchError::Refused(format!(
                    "`uses: {name}`: `{git_ref}` looks like a short SHA, which is not supported; \
                     use the full 40-character SHA"
                )))
            }
            None => Err(FetchError::Failed(format!(
                "Could not fetch `{name}`: the repository at {} has no tag or branch `{git_ref}`",
                url.as_str()
            ))),
        }
    }

    /// Fetches the commit into a temporary bare repository and archives it.
    /// Returns the commit actually fetched (a ref may have moved since it
    /// was resolved) and the tar archive.
    async fn download(
        &self,
        remote: &Remote<'_>,
        name: &str,
        sha: &str,
        refname: Option<&str>,
    ) -> Result<(String, Vec<u8>), FetchError> {
        let tmp = self.tmp_dir()?;
        let dir = tmp.path();
        let fail = |what: &str, e: GitError| {
            FetchError::Failed(format!(
                "Could not fetch `{name}` from {}: {what}: {e}",
                remote.url
            ))
        };
        self.git
            .run(
                Some(dir),
                None,
                &["init", "--quiet", "--bare", "."],
                FETCH_TIMEOUT,
            )
            .await
            .map_err(|e| fail("git init", e))?;
        // The archive is the exact tree: `export-ignore`/`export-subst` in
        // the action's own `.gitattributes` do not apply.
        fs::create_dir_all(dir.join("info"))
            .and_then(|()| {
                fs::write(
                    dir.join("info/attributes"),
                    "* -export-ignore -export-subst\n",
                )
            })
            .map_err(|e| self.io_error(dir, e))?;
        let src = refname.unwrap_or(sha);
        let spec = format!("+{src}:{FETCHED}");
        let shallow = [
            "fetch",
            "--quiet",
            "--no-tags",
            "--depth",
            "1",
            "--",
            remote.url,
            spec.as_str(),
        ];
        let full = [
            "fetch",
            "--quiet",
            "--no-tags",
            "--",
            remote.url,
            spec.as_str(),
        ];
        let mut got = None;
        let mut errors = Vec::new();
        for args in [&shallow[..], &full[..]] {
            match self
                .git
                .run(Some(dir), Some(remote), args, FETCH_TIMEOUT)
                .await
            {
                Ok(_) => {
                    got = Some(self.rev_parse(dir, &format!("{FETCHED}^{{commit}}")).await);
                    break;
                }
                Err(e) => errors.push(e),
            }
        }
        if got.is_none() && refname.is_none() {
            // The server refuses wanting a sha: fetch every branch and tag.
            let all = [
                "fetch",
                "--quiet",
                "--no-tags",
                "--",
                remote.url,
                "+refs/heads/*:refs/remotes/h/*",
                "+refs/tags/*:refs/remotes/t/*",
            ];
            match self
                .git
                .run(Some(dir), Some(remote), &all, FETCH_TIMEOUT)
                .await
            {
                Ok(_) => got = Some(self.rev_parse(dir, &format!("{sha}^{{commit}}")).await),
                Err(e) => errors.push(e),
            }
        }
        let got = match got {
            Some(Some(s)) => s,
            Some(None) if refname.is_none() => {
                return Err(FetchError::Failed(format!(
                    "Could not fetch `{name}`: the repository at {} has no commit {sha}",
                    remote.url
                )));
            }
            Some(None) => {
                return Err(FetchError::Failed(format!(
                    "Could not fetch `{name}` from {}: `{src}` is not a commit",
                    remote.url
                )));
            }
            None => {
                let e = errors
                    .pop()
                    .unwrap_or(GitError::Failed("no attempt".into()));
                return Err(fail("git fetch", e));
            }
        };
        if refname.is_none() && got != sha {
            return Err(FetchError::Failed(format!(
                "Could not fetch `{name}` from {}: the server sent commit {got} for {sha}",
                remote.url
            )));
        }
        // The tree, not the commit: a commit's archive starts with a pax
        // global header (the commit id) that old tars (illumos) extract as a
        // file named `pax_global_header`.
        let tree = format!("{got}^{{tree}}");
        let archive = self
            .git
            .run(
                Some(dir),
                None,
                &["archive", "--format=tar", tree.as_str()],
                FETCH_TIMEOUT,
            )
            .await
            .map_err(|e| fail("git archive", e))?;
        Ok((got, archive))
    }

    async fn rev_parse(&self, dir: &Path, what: &str) -> Option<String> {
        let out = self
            .git
            .run(
                Some(dir),
                None,
                &["rev-parse", "--verify", "--quiet", what],
                FETCH_TIMEOUT,
            )
            .await
            .ok()?;
        let s = String::from_utf8_lossy(&out).trim().to_owned();
        (s.len() == 40 && is_hex(&s)).then_some(s)
    }

    fn dir(&self) -> &Path {
        &self.settings.dir
    }

    fn io_error(&self, path: &Path, e: std::io::Error) -> FetchError {
        FetchError::Failed(format!(
            "The actions cache at {}: {}: {e}",
            self.dir().display(),
            path.display()
        ))
    }

    async fn prepare_dirs(&self) -> Result<(), FetchError> {
        for sub in ["entries", "refs", "locks", "tmp", "home"] {
            let p = self.dir().join(sub);
            tokio::fs::create_dir_all(&p)
                .await
                .map_err(|e| self.io_error(&p, e))?;
        }
        Ok(())
    }

    fn tmp_dir(&self) -> Result<tempfile::TempDir, FetchError> {
        let parent = self.dir().join("tmp");
        tempfile::Builder::new()
            .prefix("fetch-")
            .tempdir_in(&parent)
            .map_err(|e| self.io_error(&parent, e))
    }

    /// Takes the entry's locks: this process's async lock, then the
    /// cross-process `flock`.
    async fn lock(&self, url: &HttpUrl, sha: &str) -> Result<EntryGuard, FetchError> {
        let key = entry_key(url, sha);
        let m = {
            let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, v| Arc::strong_count(v) > 1);
            map.entry(key.clone()).or_default().clone()
        };
        let inner = m.lock_owned().await;
        let path = self.dir().join("locks").join(format!("{key}.lock"));
        let p = path.clone();
        let flock = tokio::task::spawn_blocking(move || {
            let f = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&p)?;
            Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))
        })
        .await
        .map_err(|e| FetchError::Failed(format!("The actions cache: lock task failed: {e}")))?
        .map_err(|e| self.io_error(&path, e))?;
        Ok(EntryGuard {
            _flock: flock,
            _inner: inner,
        })
    }

    /// The cached archive of (url, sha), checked against its checksum; a
    /// damaged entry is removed (with a note) and `None` returned.
    async fn read_entry(
        &self,
        url: &HttpUrl,
        sha: &str,
        notes: &mut Vec<String>,
    ) -> Result<Option<Vec<u8>>, FetchError> {
        let entry = self.dir().join("entries").join(entry_key(url, sha));
        let tmp = self.dir().join("tmp");
        let r = tokio::task::spawn_blocking(move || read_checked(&entry, &tmp))
            .await
            .map_err(|e| FetchError::Failed(format!("The actions cache: read task failed: {e}")))?;
        match r {
            Read::Hit(a) => Ok(Some(a)),
            Read::Missing => Ok(None),
            Read::Damaged(why) => {
                notes.push(format!(
                    "The cached copy of {} at {} was damaged ({why}); it was removed and is \
                     fetched again",
                    url.as_str(),
                    short(sha)
                ));
                Ok(None)
            }
        }
    }

    /// Stores an archive (the caller holds the entry's lock), then evicts
    /// least recently used entries beyond the size bound.
    async fn store(&self, url: &HttpUrl, sha: &str, archive: &[u8]) -> Result<(), FetchError> {
        let tmp = self.tmp_dir()?;
        let key = entry_key(url, sha);
        let dir = self.dir().to_path_buf();
        let staged = tmp.path().join("entry");
        let source = format!("{}\n{sha}\n", url.as_str());
        let archive = archive.to_vec();
        let max = self.settings.max_bytes;
        let r = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            fs::create_dir(&staged)?;
            write_synced(&staged.join("archive.tar"), &archive)?;
            write_synced(
                &staged.join("archive.sha256"),
                hex_sha256(&archive).as_bytes(),
            )?;
            fs::write(staged.join("source"), source)?;
            let target = dir.join("entries").join(&key);
            if target.exists() {
                discard(&target, &dir.join("tmp"));
            }
            fs::rename(&staged, &target)?;
            evict(&dir, max, &key);
            Ok(())
        })
        .await
        .map_err(|e| FetchError::Failed(format!("The actions cache: store task failed: {e}")))?;
        r.map_err(|e| self.io_error(&self.dir().join("entries"), e))
    }

    fn ref_file(&self, url: &HttpUrl, git_ref: &str) -> PathBuf {
        self.dir()
            .join("refs")
            .join(url_hash(url))
            .join(&hex_sha256(git_ref.as_bytes())[..32])
    }

    /// The commit `git_ref` resolved to last time (for an offline server).
    async fn remembered(&self, url: &HttpUrl, git_ref: &str) -> Option<String> {
        let text = tokio::fs::read_to_string(self.ref_file(url, git_ref))
            .await
            .ok()?;
        let sha = text.lines().next()?.trim().to_owned();
        (sha.len() == 40 && is_hex(&sha)).then_some(sha)
    }

    async fn remember(&self, url: &HttpUrl, git_ref: &str, sha: &str) {
        if self.remembered(url, git_ref).await.as_deref() == Some(sha) {
            return;
        }
        let path = self.ref_file(url, git_ref);
        let text = format!("{sha}\n{git_ref}\n{}\n", url.as_str());
        let r = async {
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
            tokio::fs::write(&tmp, text).await?;
            tokio::fs::rename(&tmp, &path).await
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(
                "actions cache: could not remember {}@{git_ref}: {e}",
                url.as_str()
            );
        }
    }
}

/// Held while an entry is read or written.
struct EntryGuard {
    _flock: Flock<File>,
    _inner: tokio::sync::OwnedMutexGuard<()>,
}

enum Read {
    Hit(Vec<u8>),
    Missing,
    Damaged(String),
}

fn read_checked(entry: &Path, tmp: &Path) -> Read {
    let sum_path = entry.join("archive.sha256");
    let archive = match fs::read(entry.join("archive.tar")) {
        Ok(a) => a,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !entry.exists() => {
            return Read::Missing;
        }
        Err(e) => {
            discard(entry, tmp);
            return Read::Damaged(format!("cannot read the archive: {e}"));
        }
    };
    let expected = fs::read_to_string(&sum_path).unwrap_or_default();
    if expected.trim() != hex_sha256(&archive) {
        discard(entry, tmp);
        return Read::Damaged("checksum mismatch".into());
    }
    // Last use, for eviction.
    if let Ok(f) = File::options().write(true).open(&sum_path) {
        let _ = f.set_modified(SystemTime::now());
    }
    Read::Hit(archive)
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Removes a directory: first out of sight (rename), then its content.
fn discard(path: &Path, tmp: &Path) {
    let gone = tmp.join(format!("gone-{}", uuid::Uuid::new_v4()));
    let target = if fs::rename(path, &gone).is_ok() {
        gone
    } else {
        path.to_path_buf()
    };
    if let Err(e) = fs::remove_dir_all(&target) {
        tracing::warn!("actions cache: could not remove {}: {e}", target.display());
    }
}

/// Evicts least recently used entries until the archives fit in `max`
/// bytes. `keep` (just stored) and entries locked by anyone are skipped.
/// Also removes leftovers of interrupted fetches.
fn evict(dir: &Path, max: u64, keep: &str) {
    let tmp = dir.join("tmp");
    let now = SystemTime::now();
    if let Ok(rd) = fs::read_dir(&tmp) {
        for e in rd.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > STALE_TMP);
            if old {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let Ok(rd) = fs::read_dir(dir.join("entries")) else {
        return;
    };
    let mut entries: Vec<(SystemTime, u64, String)> = Vec::new();
    let mut total = 0u64;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let size = fs::metadata(e.path().join("archive.tar")).map_or(0, |m| m.len());
        let used = fs::metadata(e.path().join("archive.sha256"))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        total += size;
        entries.push((used, size, name));
    }
    if total <= max {
        return;
    }
    entries.sort();
    for (_, size, name) in entries {
        if total <= max {
            break;
        }
        if name == keep {
            continue;
        }
        let lock_path = dir.join("locks").join(format!("{name}.lock"));
        let Ok(f) = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        else {
            continue;
        };
        // Busy: being fetched or served right now.
        let Ok(_held) = Flock::lock(f, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        discard(&dir.join("entries").join(&name), &tmp);
        total = total.saturating_sub(size);
    }
}

async fn lookup(url: &HttpUrl) -> Result<Vec<IpAddr>, String> {
    let host = url.host_bare();
    let port = url.port();
    match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host.as_str(), port))).await {
        Ok(Ok(addrs)) => {
            let mut v: Vec<IpAddr> = Vec::new();
            for a in addrs {
                if !v.contains(&a.ip()) {
                    v.push(a.ip());
                }
            }
            Ok(v)
        }
        Ok(Err(e)) => Err(format!("cannot resolve `{host}`: {e}")),
        Err(_) => Err(format!("resolving `{host}` took too long")),
    }
}

/// Picks the commit of the first candidate ref in `ls-remote` output,
/// preferring the peeled (`^{}`) line of an annotated tag.
fn pick_ref(listing: &str, candidates: &[String]) -> Option<(String, String)> {
    let mut found: HashMap<&str, &str> = HashMap::new();
    for line in listing.lines() {
        let Some((sha, name)) = line.split_once('\t') else {
            continue;
        };
        let sha = sha.trim();
        if sha.len() == 40 && is_hex(sha) {
            found.insert(name.trim(), sha);
        }
    }
    candidates.iter().find_map(|c| {
        let peeled = format!("{c}^{{}}");
        found
            .get(peeled.as_str())
            .or_else(|| found.get(c.as_str()))
            .map(|sha| (sha.to_ascii_lowercase(), c.clone()))
    })
}

/// Refuses refs that are not valid git ref names (they could also be
/// taken for options).
fn check_ref(shown: &str, r: &str) -> Result<(), FetchError> {
    let bad = r.is_empty()
        || r.starts_with('-')
        || r.starts_with('/')
        || r.ends_with('/')
        || r.ends_with('.')
        || r.ends_with(".lock")
        || r.contains("..")
        || r.contains("@{")
        || r.contains("//")
        || r.split('/').any(|c| c.starts_with('.'))
        || r.chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        return Err(FetchError::Refused(format!(
            "`uses: {shown}`: `{r}` is not a valid tag, branch or commit SHA"
        )));
    }
    Ok(())
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit())
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn hex_sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn url_hash(url: &HttpUrl) -> String {
    hex_sha256(url.as_str().as_bytes())[..24].to_owned()
}

fn entry_key(url: &HttpUrl, sha: &str) -> String {
    format!("{}-{sha}", url_hash(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_peeled_tags_then_branches() {
        let listing = "\
1111111111111111111111111111111111111111\trefs/heads/v1
2222222222222222222222222222222222222222\trefs/tags/v1
3333333333333333333333333333333333333333\trefs/tags/v1^{}
";
        let c = vec!["refs/tags/v1".to_string(), "refs/heads/v1".to_string()];
        assert_eq!(
            pick_ref(listing, &c),
            Some(("3".repeat(40), "refs/tags/v1".into()))
        );
        let c = vec!["refs/tags/main".to_string(), "refs/heads/main".to_string()];
        assert_eq!(pick_ref(listing, &c), None);
        let listing = "4444444444444444444444444444444444444444\trefs/heads/main\n";
        assert_eq!(
            pick_ref(listing, &c),
            Some(("4".repeat(40), "refs/heads/main".into()))
        );
    }

    #[test]
    fn bad_refs_are_refused() {
        for bad in [
            "",
            "-x",
            "--upload-pack=x",
            "a..b",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "x@{1}",
            ".hidden",
            "a/.b",
            "a.lock",
            "a/",
        ] {
            assert!(check_ref("o/r@x", bad).is_err(), "{bad:?}");
        }
        for good in [
            "v1",
            "v1.2.3",
            "release/v2",
            "main",
            "refs/tags/v1",
            &"a".repeat(40),
        ] {
            assert!(check_ref("o/r@x", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn sha256_hex() {
        assert_eq!(
            hex_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

//! The built-in cache service over real HTTP, as `@actions/cache` speaks to
//! it: protocol v1 (reserve, chunked upload, commit, lookup, download),
//! storage and scoping.

use reqwest::StatusCode;
use serde_json::{Value, json};
use solstice::cache_service::{CacheLease, CacheScope, CacheService, CacheSettings};

const ACCEPT: &str = "application/json;api-version=6.0-preview.1";

async fn service(dir: &std::path::Path, max_bytes: u64) -> CacheService {
    CacheService::start(CacheSettings {
        dir: dir.to_path_buf(),
        max_bytes,
    })
    .await
    .unwrap()
}

fn repo(name: &str) -> CacheScope {
    CacheScope::new("https://forge.example", name, None)
}

fn pr(name: &str, n: u32) -> CacheScope {
    CacheScope::new(
        "https://forge.example",
        name,
        Some(format!("refs/pull/{n}")),
    )
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn of(lease: &CacheLease) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: lease.host_url(),
        }
    }

    fn url(&self, resource: &str) -> String {
        format!("{}_apis/artifactcache/{resource}", self.base)
    }

    async fn reserve(&self, key: &str, version: &str, size: i64) -> reqwest::Response {
        self.http
            .post(self.url("caches"))
            .header("Accept", ACCEPT)
            .header("Authorization", "Bearer ignored")
            .header("Content-Type", "application/json")
            .body(json!({"key": key, "version": version, "cacheSize": size}).to_string())
            .send()
            .await
            .unwrap()
    }

    async fn reserve_id(&self, key: &str, version: &str, size: i64) -> u64 {
        let r = self.reserve(key, version, size).await;
        assert!(r.status().is_success(), "{}", r.status());
        jv(r).await["cacheId"].as_u64().unwrap()
    }

    async fn patch(&self, id: u64, start: usize, bytes: &[u8]) -> StatusCode {
        self.http
            .patch(self.url(&format!("caches/{id}")))
            .header("Content-Type", "application/octet-stream")
            .header(
                "Content-Range",
                format!("bytes {start}-{}/*", start + bytes.len() - 1),
            )
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn commit(&self, id: u64, size: usize) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(&format!("caches/{id}")))
            .header("Content-Type", "application/json")
            .body(json!({"size": size}).to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Reserve, upload in 3 chunks in reverse order, commit.
    async fn save(&self, key: &str, version: &str, bytes: &[u8]) {
        let id = self.reserve_id(key, version, bytes.len() as i64).await;
        let third = bytes.len().div_ceil(3).max(1);
        let chunks: Vec<(usize, &[u8])> = bytes
            .chunks(third)
            .enumerate()
            .map(|(i, c)| (i * third, c))
            .collect();
        for (at, c) in chunks.iter().rev() {
            assert_eq!(self.patch(id, *at, c).await, StatusCode::NO_CONTENT);
        }
        let (s, b) = self.commit(id, bytes.len()).await;
        assert!(s.is_success(), "commit: {s} {b}");
    }

    async fn lookup(&self, keys: &[&str], version: &str) -> reqwest::Response {
        self.http
            .get(self.url("cache"))
            .header("Accept", ACCEPT)
            .query(&[("keys", keys.join(",")), ("version", version.to_string())])
            .send()
            .await
            .unwrap()
    }

    /// `(cacheKey, bytes)` of a hit, `None` on 204.
    async fn restore(&self, keys: &[&str], version: &str) -> Option<(String, Vec<u8>)> {
        let r = self.lookup(keys, version).await;
        if r.status() == StatusCode::NO_CONTENT {
            return None;
        }
        assert_eq!(r.status(), StatusCode::OK);
        let v = jv(r).await;
        assert_eq!(v["result"], "hit");
        let loc = v["archiveLocation"].as_str().unwrap().to_string();
        // Downloads carry no Authorization header.
        let d = reqwest::get(&loc).await.unwrap();
        assert_eq!(d.status(), StatusCode::OK, "{loc}");
        Some((
            v["cacheKey"].as_str().unwrap().to_string(),
            d.bytes().await.unwrap().to_vec(),
        ))
    }
}

async fn jv(r: reqwest::Response) -> Value {
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn out_of_order_chunks_make_the_entry_and_keys_match_case_insensitively() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), 1 << 30).await;
    let lease = svc.lease(repo("o/r"));
    let c = Client::of(&lease);
    let bytes = data(100_000, 1);
    c.save("Linux-Cargo-ABC", "v1", &bytes).await;
    let (key, got) = c.restore(&["linux-cargo-abc"], "v1").await.unwrap();
    assert_eq!(key, "Linux-Cargo-ABC");
    assert_eq!(got, bytes);
    // The archive URL works without any header and carries the token.
    assert!(lease.host_url().contains(lease.token()));
}

#[tokio::test]
async fn four_chunks_in_parallel_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), 1 << 30).await;
    let lease = svc.lease(repo("o/r"));
    let c = Client::of(&lease);
    let bytes = data(4 << 20, 9);
    let id = c.reserve_id("par", "v", bytes.len() as i64).await;
    let q = bytes.len() / 4;
    let (a, b, d, e) = tokio::join!(
        c.patch(id, 3 * q, &bytes[3 * q..]),
        c.patch(id, q, &bytes[q..2 * q]),
        c.patch(id, 0, &bytes[..q]),
        c.patch(id, 2 * q, &bytes[2 * q..3 * q]),
    );
    assert!([a, b, d, e].iter().all(|s| *s == StatusCode::NO_CONTENT));
    assert!(c.commit(id, bytes.len()).await.0.is_success());
    assert_eq!(c.restore(&["par"], "v").await.unwrap().1, bytes);
}

#[tokio::test]
async fn a_commit_with_the_wrong_size_or_missing_bytes_is_refused_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), 1 << 30).await;
    let lease = svc.lease(repo("o/r"));
    let c = Client::of(&lease);
    let bytes = data(1000, 2);
    // Size differs from the reservation.
    let id = c.reserve_id("k", "v", 1000).await;
    assert_eq!(c.patch(id, 0, &bytes).await, StatusCode::NO_CONTENT);
    let (s, body) = c.commit(id, 999).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("broken"), "{body}");
    // A hole in the middle: the last chunk arrived, one before it did not.
    let id = c.reserve_id("k", "v", 1000).await;
    assert_eq!(c.patch(id, 0, &bytes[..100]).await, StatusCode::NO_CONTENT);
    assert_eq!(
        c.patch(id, 500, &bytes[500..]).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(c.commit(id, 1000).await.0, StatusCode::BAD_REQUEST);
    // Uploaded but never committed.
    let id = c.reserve_id("k", "v", 1000).await;
    assert_eq!(c.patch(id, 0, &bytes).await, StatusCode::NO_CONTENT);
    assert_eq!(c.lookup(&["k"], "v").await.status(), StatusCode::NO_CONTENT);
    // A body shorter than its Content-Range is refused.
    let r = c
        .http
        .patch(c.url(&format!("caches/{id}")))
        .header("Content-Range", "bytes 0-99/*")
        .body(vec![0u8; 50])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v = jv(r).await;
    assert!(v["error"].is_string());
    // Unknown upload ids: 404 with a JSON error.
    assert_eq!(c.patch(987_654, 0, b"x").await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lookup_takes_exact_before_prefix_per_key_and_the_newest_of_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), 1 << 30).await;
    let lease = svc.lease(repo("o/r"));
    let c = Client::of(&lease);
    c.save("deps-linux-aaa", "v1", b"old").await;
    c.save("deps-linux-bbb", "v1", b"new").await;
    c.save("deps-linux-ccc", "v2", b"other version").await;
    // Miss: 204, never 404.
    assert_eq!(
        c.lookup(&["nothing"], "v1").await.status(),
        StatusCode::NO_CONTENT
    );
    // Version mismatch misses.
    assert_eq!(
        c.lookup(&["deps-linux-aaa"], "v3").await.status(),
        StatusCode::NO_CONTENT
    );
    // Exact match of the primary key.
    assert_eq!(
        c.restore(&["deps-linux-aaa", "deps-"], "v1")
            .await
            .unwrap()
            .1,
        b"old"
    );
    // Prefix: the newest entry of the version wins.
    let (k, b) = c
        .restore(&["deps-linux-zzz", "deps-linux-"], "v1")
        .await
        .unwrap();
    assert_eq!((k.as_str(), b.as_slice()), ("deps-linux-bbb", &b"new"[..]));
    // Key order decides before age.
    assert_eq!(
        c.restore(&["deps-linux-a", "deps-linux-b"], "v1")
            .await
            .unwrap()
            .1,
        b"old"
    );
    // Saving an existing key again: the newer commit wins.
    c.save("deps-linux-aaa", "v1", b"newer").await;
    assert_eq!(
        c.restore(&["deps-linux-aaa"], "v1").await.unwrap().1,
        b"newer"
    );
    // Two saves of the same key at once: both succeed.
    let a = c.reserve("same", "v1", 1).await.status();
    let b = c.reserve("same", "v1", 1).await.status();
    assert!(a.is_success() && b.is_success());
    // The list call answers (empty).
    let l = c
        .http
        .get(c.url("caches"))
        .query(&[("key", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(l.status(), StatusCode::OK);
}

#[tokio::test]
async fn another_repository_cannot_read_and_pull_requests_write_apart() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), 1 << 30).await;
    let main = svc.lease(repo("o/r"));
    Client::of(&main).save("k", "v", b"main").await;
    // Another repository: no hit, and its download of our entry fails.
    let other = svc.lease(repo("o/other"));
    let co = Client::of(&other);
    assert_eq!(
        co.lookup(&["k"], "v").await.status(),
        StatusCode::NO_CONTENT
    );
    let hit = jv(Client::of(&main).lookup(&["k"], "v").await).await;
    let loc = hit["archiveLocation"].as_str().unwrap();
    let foreign = loc.replace(main.token(), other.token());
    assert_eq!(
        reqwest::get(&foreign).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    // Same repository name on another forge: separate too.
    let elsewhere = svc.lease(CacheScope::new("https://other.example", "o/r", None));
    assert_eq!(
        Client::of(&elsewhere).lookup(&["k"], "v").await.status(),
        StatusCode::NO_CONTENT
    );

    // A pull request reads the shared entry, writes its own apart.
    let pr3 = svc.lease(pr("o/r", 3));
    let c3 = Client::of(&pr3);
    assert_eq!(c3.restore(&["k"], "v").await.unwrap().1, b"main");
    c3.save("k", "v", b"pr3").await;
    assert_eq!(c3.restore(&["k"], "v").await.unwrap().1, b"pr3");
    // The branch still sees its own entry; another PR sees the shared one.
    assert_eq!(
        Client::of(&main).restore(&["k"], "v").await.unwrap().1,
        b"main"
    );
    let pr4 = svc.lease(pr("o/r", 4));
    assert_eq!(
        Client::of(&pr4).restore(&["k"], "v").await.unwrap().1,
        b"main"
    );
    // A PR's isolated entry, even with a new key, is invisible to others.
    c3.save("only-pr", "v", b"x").await;
    assert_eq!(
        Client::of(&main).lookup(&["only-pr"], "v").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        Client::of(&pr4).lookup(&["only-pr"], "v").await.status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn an_ended_lease_answers_404_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), 1 << 30).await;
    let lease = svc.lease(repo("o/r"));
    let c = Client::of(&lease);
    c.save("k", "v", b"abc").await;
    let hit = jv(c.lookup(&["k"], "v").await).await;
    let loc = hit["archiveLocation"].as_str().unwrap().to_string();
    let id = c.reserve_id("k2", "v", 3).await;
    drop(lease);
    assert_eq!(c.lookup(&["k"], "v").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        reqwest::get(&loc).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(c.reserve("k", "v", 3).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(c.patch(id, 0, b"abc").await, StatusCode::NOT_FOUND);
    // The dropped lease's unfinished upload is gone from disk.
    assert_eq!(
        std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .count(),
        0
    );
    // A guessed token is no better.
    let r = reqwest::get(format!(
        "http://127.0.0.1:{}/abc/_apis/artifactcache/cache?keys=k&version=v",
        svc.port()
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_size_limit_refuses_big_entries_and_evicts_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), 250_000).await;
    let lease = svc.lease(repo("o/r"));
    let c = Client::of(&lease);
    let r = c.reserve("huge", "v", 300_000).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v = jv(r).await;
    assert!(v["error"].as_str().unwrap().contains("data cap"), "{v}");
    c.save("a", "v", &data(100_000, 1)).await;
    c.save("b", "v", &data(100_000, 2)).await;
    // Using `a` makes `b` the least recently used.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert!(c.restore(&["a"], "v").await.is_some());
    c.save("c", "v", &data(100_000, 3)).await;
    assert!(c.restore(&["a"], "v").await.is_some());
    assert!(c.restore(&["c"], "v").await.is_some());
    assert_eq!(c.lookup(&["b"], "v").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        std::fs::read_dir(dir.path().join("entries"))
            .unwrap()
            .count(),
        2
    );
}

#[tokio::test]
async fn a_restart_keeps_what_was_committed_and_two_processes_share_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(50_000, 7);
    {
        let svc = service(dir.path(), 1 << 30).await;
        let lease = svc.lease(repo("o/r"));
        let c = Client::of(&lease);
        c.save("kept", "v", &bytes).await;
        // Half an upload, then the service goes away.
        let id = c.reserve_id("half", "v", 10).await;
        assert_eq!(c.patch(id, 0, b"12345").await, StatusCode::NO_CONTENT);
    }
    // Another server on the same directory while a first one runs (exec
    // beside the daemon), then the restarted one.
    let a = service(dir.path(), 1 << 30).await;
    let b = service(dir.path(), 1 << 30).await;
    let la = a.lease(repo("o/r"));
    let lb = b.lease(repo("o/r"));
    assert_eq!(
        Client::of(&la).restore(&["kept"], "v").await.unwrap().1,
        bytes
    );
    Client::of(&lb).save("from-b", "v", b"b").await;
    assert_eq!(
        Client::of(&la).restore(&["from-b"], "v").await.unwrap().1,
        b"b"
    );
    assert_eq!(
        Client::of(&la).lookup(&["half"], "v").await.status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn solstice_cache_lists_and_clears_while_the_service_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let svc = service(&cache, 1 << 30).await;
    let a = svc.lease(repo("o/r"));
    let b = svc.lease(repo("o/other"));
    Client::of(&a).save("key-a", "v", b"aaa").await;
    Client::of(&b).save("key-b", "v", b"bbb").await;
    std::fs::write(dir.path().join("img.qcow2"), b"").unwrap();
    let config = dir.path().join("solstice.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"state\"\n[images.t]\npath = \"img.qcow2\"\nformat = \"raw\"\n[cache]\ndir = {:?}\n",
            cache
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_solstice"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let list = cli(&["cache", "list"]);
    assert!(list.contains("key-a") && list.contains("key-b"), "{list}");
    assert!(list.contains("o/other (https://forge.example)"), "{list}");
    let one = cli(&["cache", "list", "--repo", "O/R"]);
    assert!(one.contains("key-a") && !one.contains("key-b"), "{one}");
    let cleared = cli(&["cache", "clear", "--repo", "o/r"]);
    assert!(cleared.contains("removed 1 entry"), "{cleared}");
    // The running service no longer finds it; the other repository's stays.
    let ca = Client::of(&a);
    assert_eq!(
        ca.lookup(&["key-a"], "v").await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(Client::of(&b).restore(&["key-b"], "v").await.is_some());
    assert!(cli(&["cache", "clear"]).contains("removed 1 entry"));
    assert_eq!(std::fs::read_dir(cache.join("entries")).unwrap().count(), 0);
}

#[tokio::test]
async fn a_range_ending_at_the_largest_integer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), 1 << 30).await;
    let lease = svc.lease(repo("o/r"));
    let c = Client::of(&lease);
    for size in [0, 10] {
        let id = c.reserve_id("k", "v", size).await;
        let r = c
            .http
            .patch(c.url(&format!("caches/{id}")))
            .header("Content-Range", format!("bytes 0-{}/*", u64::MAX))
            .body(b"abc".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn a_commit_that_fails_on_disk_leaves_no_upload_file() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), 1 << 30).await;
    let lease = svc.lease(repo("o/r"));
    let c = Client::of(&lease);
    let id = c.reserve_id("k", "v", 3).await;
    assert_eq!(c.patch(id, 0, b"abc").await, StatusCode::NO_CONTENT);
    // The rename into entries/ fails.
    std::fs::remove_dir(dir.path().join("entries")).unwrap();
    let (s, _) = c.commit(id, 3).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(c.lookup(&["k"], "v").await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_job_cannot_hold_unbounded_uploads_or_send_unbounded_keys() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), 1000).await;
    let lease = svc.lease(repo("o/r"));
    let c = Client::of(&lease);
    // At most 8 uploads at once per job.
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(c.reserve_id(&format!("k{i}"), "v", 10).await);
    }
    let r = c.reserve("k8", "v", 10).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another job is not held back by this one's count.
    let other = svc.lease(repo("o/other"));
    let o = Client::of(&other);
    let oid = o.reserve_id("k", "v", 10).await;
    // Finishing one upload frees its place.
    assert_eq!(c.patch(ids[0], 0, &[1; 10]).await, StatusCode::NO_CONTENT);
    assert!(c.commit(ids[0], 10).await.0.is_success());
    c.reserve_id("k8", "v", 10).await;
    // Uploads in progress count against the size bound: 8 × 10 + 10 of
    // 1000 bytes are claimed; a 950-byte reservation does not fit.
    assert_eq!(
        o.reserve("big", "v", 950).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Without a reserved size an upload claims what it writes.
    let free = o.reserve_id("free", "v", 0).await;
    assert_eq!(o.patch(free, 0, &[2; 900]).await, StatusCode::NO_CONTENT);
    assert_eq!(o.patch(free, 900, &[2; 30]).await, StatusCode::BAD_REQUEST);
    // The job's end frees what it claimed.
    drop(lease);
    assert_eq!(o.patch(free, 900, &[2; 30]).await, StatusCode::NO_CONTENT);
    assert_eq!(o.patch(oid, 0, &[3; 10]).await, StatusCode::NO_CONTENT);
    // Only the uploads of the job still running are on disk.
    assert_eq!(
        std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .count(),
        2
    );
    // A lookup takes at most 10 keys (the client's own bound).
    let ten: Vec<String> = (0..10).map(|i| format!("x{i}")).collect();
    let ten: Vec<&str> = ten.iter().map(String::as_str).collect();
    assert_eq!(o.lookup(&ten, "v").await.status(), StatusCode::NO_CONTENT);
    let eleven = [ten.as_slice(), &["x10"]].concat();
    assert_eq!(
        o.lookup(&eleven, "v").await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn solstice_cache_creates_nothing_and_refuses_another_users_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::write(dir.path().join("img.qcow2"), b"").unwrap();
    let config = dir.path().join("solstice.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"state\"\n[images.t]\npath = \"img.qcow2\"\nformat = \"raw\"\n[cache]\ndir = {:?}\n",
            cache
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_solstice"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    for args in [&["cache", "list"][..], &["cache", "clear"]] {
        let out = cli(args);
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("no cache yet"),
            "{out:?}"
        );
        assert!(!cache.exists(), "{args:?} created the cache directory");
    }
    // An empty directory (made by hand): still nothing created in it.
    std::fs::create_dir(&cache).unwrap();
    let out = cli(&["cache", "clear"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    // A cache of another user (the daemon's service user): refused, and
    // nothing of this user left in it.
    {
        let svc = service(&cache, 1 << 30).await;
        let lease = svc.lease(repo("o/r"));
        Client::of(&lease).save("k", "v", b"abc").await;
    }
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    std::os::unix::fs::chown(&cache, Some(65534), Some(65534)).unwrap();
    let before: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for args in [&["cache", "list"][..], &["cache", "clear"]] {
        let out = cli(args);
        assert!(!out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("uid 65534") && err.contains("run it as"),
            "{err}"
        );
    }
    let after: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after);
}

//! The host's action cache (`solstice::actions::ActionCache`) against the
//! test git server: refs, the SSRF policy, the token, concurrency, outages,
//! damaged entries and eviction. Real git on both sides.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use solstice::actions::{
    ActionCache, CacheSettings, FetchError, FetchRequest, FetchedAction, RemoteRef,
};
use solstice::secret::Secret;
use solstice::testing::GitServer;

fn remote(owner: &str, repo: &str, path: Option<&str>, git_ref: &str) -> RemoteRef {
    RemoteRef {
        base: None,
        owner: owner.into(),
        repo: repo.into(),
        path: path.map(Into::into),
        git_ref: git_ref.into(),
    }
}

/// `127.0.0.1:PORT` of a server, as an allowed-hosts entry.
fn host_of(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

fn cache(dir: &Path, allowed: &[String], max_bytes: u64) -> ActionCache {
    ActionCache::new(CacheSettings {
        dir: dir.to_path_buf(),
        max_bytes,
        allowed_hosts: allowed.to_vec(),
    })
}

async fn fetch(
    cache: &ActionCache,
    action: &RemoteRef,
    default_url: &str,
) -> Result<FetchedAction, FetchError> {
    cache
        .fetch(&FetchRequest {
            action,
            default_url,
            forge_url: None,
            token: None,
        })
        .await
}

/// Path → content (`-> target` for symlinks, `x` prefix for executables).
fn files(archive: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(archive);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let kind = e.header().entry_type();
        if kind.is_symlink() {
            let t = e
                .link_name()
                .unwrap()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(path, format!("-> {t}"));
        } else if kind.is_file() {
            let exec = e.header().mode().unwrap() & 0o111 != 0;
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            out.insert(path, if exec { format!("x {s}") } else { s });
        }
    }
    out
}

/// An action repository tree with a root action and one in `sub/`.
fn action_tree(dir: &Path, marker: &str) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("action.yml"), format!("name: root {marker}\n")).unwrap();
    std::fs::write(dir.join("sub/action.yml"), format!("name: sub {marker}\n")).unwrap();
    std::fs::write(dir.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ = std::fs::remove_file(dir.join("link"));
    std::os::unix::fs::symlink("run.sh", dir.join("link")).unwrap();
    // `export-ignore` must not hide anything from the action's tree.
    std::fs::write(dir.join(".gitattributes"), "run.sh export-ignore\n").unwrap();
}

struct World {
    server: GitServer,
    _tmp: tempfile::TempDir,
    tree: std::path::PathBuf,
    cache_dir: std::path::PathBuf,
}

async fn world() -> World {
    let server = GitServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let cache_dir = tmp.path().join("cache");
    action_tree(&tree, "one");
    World {
        server,
        tree,
        cache_dir,
        _tmp: tmp,
    }
}

impl World {
    fn allowed(&self) -> Vec<String> {
        vec![host_of(self.server.url())]
    }
    fn cache(&self) -> ActionCache {
        cache(&self.cache_dir, &self.allowed(), 1 << 30)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_branches_and_full_shas() {
    let w = world().await;
    let first = w.server.publish("acme", "act", &w.tree, &["v1", "v1.0.0"]);
    let c = w.cache();
    let url = w.server.url();

    let t0 = Instant::now();
    let got = fetch(&c, &remote("acme", "act", None, "v1"), url)
        .await
        .unwrap();
    let first_fetch = t0.elapsed();
    assert_eq!(got.sha, first);
    assert_eq!(got.url, format!("{url}/acme/act"));
    assert!(!got.cached);
    assert!(got.notes.is_empty(), "{:?}", got.notes);
    let f = files(&got.archive);
    assert!(
        !got.archive.starts_with(b"pax_global_header"),
        "plain ustar for old tars"
    );
    assert_eq!(f["action.yml"], "name: root one\n");
    assert_eq!(f["sub/action.yml"], "name: sub one\n");
    assert_eq!(
        f["run.sh"], "x #!/bin/sh\necho hi\n",
        "export-ignore ignored, mode kept"
    );
    assert_eq!(f["link"], "-> run.sh");

    // The same again: resolved online, archive from the cache.
    let t1 = Instant::now();
    let packs = w.server.upload_packs();
    let again = fetch(&c, &remote("acme", "act", None, "v1"), url)
        .await
        .unwrap();
    let by_tag_cached = t1.elapsed();
    assert_eq!(again.sha, first);
    assert_eq!(w.server.upload_packs(), packs, "no download");
    assert_eq!(again.archive, got.archive, "the cached bytes");

    // A full sha already cached: no network at all.
    let listings = w.server.ref_listings();
    let t2 = Instant::now();
    let by_sha = fetch(&c, &remote("acme", "act", None, &first), url)
        .await
        .unwrap();
    let by_sha_cached = t2.elapsed();
    assert!(by_sha.cached);
    assert_eq!(w.server.ref_listings(), listings);
    assert_eq!(w.server.upload_packs(), packs);
    eprintln!(
        "figures: first fetch {first_fetch:?}; cached by tag (ls-remote + checksum) \
         {by_tag_cached:?}; cached by full sha (no network) {by_sha_cached:?}; archive {} bytes",
        got.archive.len()
    );

    // The tag moves; the branch follows; the old sha is still fetchable.
    action_tree(&w.tree, "two");
    let second = w.server.publish("acme", "act", &w.tree, &["v1"]);
    let moved = fetch(&c, &remote("acme", "act", None, "v1"), url)
        .await
        .unwrap();
    assert_eq!(moved.sha, second);
    assert_eq!(files(&moved.archive)["action.yml"], "name: root two\n");
    let branch = fetch(&c, &remote("acme", "act", None, "main"), url)
        .await
        .unwrap();
    assert_eq!(branch.sha, second);
    let pinned = fetch(&c, &remote("acme", "act", None, "v1.0.0"), url)
        .await
        .unwrap();
    assert_eq!(pinned.sha, first);

    // A full sha not cached (fresh cache), fetched from the server;
    // uppercase hex is the same commit.
    let c2 = cache(&w.tmp_dir("cache2"), &w.allowed(), 1 << 30);
    let fresh = fetch(
        &c2,
        &remote("acme", "act", None, &first.to_uppercase()),
        url,
    )
    .await
    .unwrap();
    assert_eq!(fresh.sha, first);
    assert!(!fresh.cached);
    assert_eq!(files(&fresh.archive)["action.yml"], "name: root one\n");

    // `owner/repo/sub@ref` gives the whole repository tree.
    let sub = fetch(&c, &remote("acme", "act", Some("sub"), "v1"), url)
        .await
        .unwrap();
    let f = files(&sub.archive);
    assert!(f.contains_key("action.yml") && f.contains_key("sub/action.yml"));

    // A base URL given in `uses:` with a `.git`-less path works the same.
    let mut explicit = remote("acme", "act", None, "v1");
    explicit.base = Some(format!("{url}/"));
    let e = fetch(&c, &explicit, "https://github.com").await.unwrap();
    assert_eq!(e.sha, second);
}

impl World {
    fn tmp_dir(&self, name: &str) -> std::path::PathBuf {
        self.cache_dir.with_file_name(name)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_repo_ref_and_short_sha() {
    let w = world().await;
    let sha = w.server.publish("acme", "act", &w.tree, &["v1"]);
    let c = w.cache();
    let url = w.server.url();

    let e = fetch(&c, &remote("acme", "nope", None, "v1"), url)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, FetchError::Failed(_)));
    assert!(
        msg.contains("acme/nope@v1") && msg.contains(&format!("{url}/acme/nope")),
        "{msg}"
    );
    assert!(msg.contains("no repository"), "{msg}");

    let msg = fetch(&c, &remote("acme", "act", None, "v9"), url)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("acme/act@v9") && msg.contains("no tag or branch `v9`"),
        "{msg}"
    );

    let e = fetch(&c, &remote("acme", "act", None, &sha[..7]), url)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, FetchError::Refused(_)));
    assert!(
        msg.contains("short SHA") && msg.contains("full 40-character SHA"),
        "{msg}"
    );
    assert!(msg.contains(&sha[..7]), "{msg}");

    // A full sha the server does not have.
    let msg = fetch(&c, &remote("acme", "act", None, &"0".repeat(40)), url)
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&"0".repeat(40)), "{msg}");

    // Refs that could be options are refused before git sees them.
    let e = fetch(&c, &remote("acme", "act", None, "--upload-pack=touch"), url)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Refused(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_fetches_download_once() {
    let w = world().await;
    w.server.publish("acme", "act", &w.tree, &["v1"]);
    let c = Arc::new(w.cache());
    let url = w.server.url().to_string();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = c.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            fetch(&c, &remote("acme", "act", None, "v1"), &url).await
        }));
    }
    let mut shas = Vec::new();
    for t in tasks {
        shas.push(t.await.unwrap().unwrap().sha);
    }
    shas.dedup();
    assert_eq!(shas.len(), 1);
    assert_eq!(w.server.upload_packs(), 1, "one download for four jobs");

    // Two caches on the same directory (two processes): the file lock and
    // the shared entries still make it one download.
    let w2 = world().await;
    w2.server.publish("acme", "other", &w2.tree, &["v1"]);
    let a = Arc::new(w2.cache());
    let b = Arc::new(w2.cache());
    let url2 = w2.server.url().to_string();
    let r = remote("acme", "other", None, "v1");
    let (ra, rb) = tokio::join!(fetch(&a, &r, &url2), fetch(&b, &r, &url2),);
    assert_eq!(ra.unwrap().sha, rb.unwrap().sha);
    assert_eq!(w2.server.upload_packs(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_refuses_other_hosts_and_private_addresses() {
    let w = world().await;
    w.server.publish("acme", "act", &w.tree, &["v1"]);
    let url = w.server.url();

    // Loopback is refused for the default host unless it is listed.
    let unlisted = cache(&w.cache_dir, &[], 1 << 30);
    let e = fetch(&unlisted, &remote("acme", "act", None, "v1"), url)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, FetchError::Refused(_)), "{msg}");
    assert!(
        msg.contains("loopback") && msg.contains("[actions] allowed_hosts"),
        "{msg}"
    );
    assert!(msg.contains(&format!("{url}/acme/act")), "{msg}");
    assert_eq!(w.server.ref_listings(), 0, "nothing reached the server");
    // Listing it opens it (the next test fetches through `w.cache()`).
    let listed = w.cache();
    fetch(&listed, &remote("acme", "act", None, "v1"), url)
        .await
        .unwrap();

    // A host that is neither the forge's, the default one nor listed.
    let mut other = remote("acme", "act", None, "v1");
    other.base = Some("https://git.example.org".into());
    let msg = fetch(&listed, &other, url).await.unwrap_err().to_string();
    assert!(msg.contains("https://git.example.org/acme/act"), "{msg}");
    assert!(msg.contains("[actions] allowed_hosts"), "{msg}");

    // An explicit URL to a private or metadata address.
    for base in [
        "http://10.0.0.1",
        "http://169.254.169.254",
        "http://[::1]:8080",
        "http://127.1",
    ] {
        let mut r = remote("x", "y", None, "v1");
        r.base = Some(base.into());
        let e = fetch(&listed, &r, "https://github.com").await.unwrap_err();
        assert!(matches!(e, FetchError::Refused(_)), "{base}: {e}");
        assert!(e.to_string().contains("[actions] allowed_hosts"), "{e}");
    }
    // The same addresses as the default or the forge's host: the address
    // classes refuse them.
    let e = fetch(&listed, &remote("x", "y", None, "v1"), "http://10.0.0.1")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("a private address"), "{e}");
    // Cloud metadata as the default actions URL a forge sent: refused. (The
    // forge's own host is not checked: the operator configured the forge.)
    let e = listed
        .fetch(&FetchRequest {
            action: &remote("x", "y", None, "v1"),
            default_url: "http://169.254.169.254",
            forge_url: Some("https://forge.example/"),
            token: None,
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("link-local"), "{e}");

    // A host name is resolved and checked: `localhost` as the default host
    // is refused, and allowed (through the pinned addresses) once listed.
    let port = w.server.url().rsplit(':').next().unwrap();
    let by_name = format!("http://localhost:{port}");
    let e = fetch(&listed, &remote("acme", "act", None, "v1"), &by_name)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("loopback"), "{e}");
    let named = cache(&w.tmp_dir("named"), &["localhost".to_string()], 1 << 30);
    let got = fetch(&named, &remote("acme", "act", None, "v1"), &by_name)
        .await
        .unwrap();
    assert_eq!(got.url, format!("{by_name}/acme/act"));

    // Other schemes never.
    let mut file = remote("x", "y", None, "v1");
    file.base = Some("file:///etc".into());
    assert!(matches!(
        fetch(&listed, &file, url).await.unwrap_err(),
        FetchError::Refused(_)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_goes_to_the_forge_only() {
    let forge = world().await;
    forge.server.publish("org", "private", &forge.tree, &["v1"]);
    let actions = GitServer::start().await;
    actions.publish("acme", "act", &forge.tree, &["v1"]);
    let c = cache(
        &forge.cache_dir,
        &[host_of(forge.server.url()), host_of(actions.url())],
        1 << 30,
    );
    let token = Secret::new("s3cr3t-job-token");
    let forge_url = format!("{}/", forge.server.url());

    // An action on the forge itself (explicit URL): the token goes along.
    let mut own = remote("org", "private", None, "v1");
    own.base = Some(forge.server.url().to_string());
    c.fetch(&FetchRequest {
        action: &own,
        default_url: actions.url(),
        forge_url: Some(&forge_url),
        token: Some(&token),
    })
    .await
    .unwrap();
    let expected = format!(
        "basic {}",
        base64_encode(b"x-access-token:s3cr3t-job-token")
    );
    let seen = forge.server.authorizations();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|a| a.eq_ignore_ascii_case(&expected)),
        "{seen:?}"
    );

    // The forge's actions may be private: a cached commit is served to a
    // job only after its own token proved it may read the repository, and
    // not at all while the forge cannot say.
    let sha = forge.server.publish("org", "private", &forge.tree, &["v1"]);
    let mut by_sha = own.clone();
    by_sha.git_ref = sha.clone();
    let listings = forge.server.ref_listings();
    c.fetch(&FetchRequest {
        action: &by_sha,
        default_url: actions.url(),
        forge_url: Some(&forge_url),
        token: Some(&token),
    })
    .await
    .unwrap();
    let again = c
        .fetch(&FetchRequest {
            action: &by_sha,
            default_url: actions.url(),
            forge_url: Some(&forge_url),
            token: Some(&token),
        })
        .await
        .unwrap();
    assert!(!again.cached, "checked with the token, not served blindly");
    assert!(forge.server.ref_listings() >= listings + 2);
    forge.server.set_down(true);
    for action in [&by_sha, &own] {
        let e = c
            .fetch(&FetchRequest {
                action,
                default_url: actions.url(),
                forge_url: Some(&forge_url),
                token: Some(&token),
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("Could not fetch"), "{e}");
    }
    forge.server.set_down(false);

    // From the default actions URL (another server): never.
    let got = c
        .fetch(&FetchRequest {
            action: &remote("acme", "act", None, "v1"),
            default_url: actions.url(),
            forge_url: Some(&forge_url),
            token: Some(&token),
        })
        .await
        .unwrap();
    assert!(actions.authorizations().is_empty());
    assert!(!format!("{got:?}").contains("s3cr3t"));

    // A path outside the forge's prefix is another instance: no token.
    forge.server.publish("acme", "act", &forge.tree, &["v1"]);
    let prefixed = format!("{}/org", forge.server.url());
    let before = forge.server.authorizations().len();
    let mut outside = remote("acme", "act", None, "v1");
    outside.base = Some(forge.server.url().to_string());
    c.fetch(&FetchRequest {
        action: &outside,
        default_url: actions.url(),
        forge_url: Some(&prefixed),
        token: Some(&token),
    })
    .await
    .unwrap();
    assert_eq!(forge.server.authorizations().len(), before);
    assert!(actions.authorizations().is_empty());

    // Errors do not show it either.
    let e = c
        .fetch(&FetchRequest {
            action: &remote("org", "missing", None, "v1"),
            default_url: forge.server.url(),
            forge_url: Some(&forge_url),
            token: Some(&token),
        })
        .await
        .unwrap_err();
    assert!(!e.to_string().contains("s3cr3t"), "{e}");
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_uses_remembered_commits() {
    let w = world().await;
    let sha = w.server.publish("acme", "act", &w.tree, &["v1"]);
    let c = w.cache();
    let url = w.server.url();
    fetch(&c, &remote("acme", "act", None, "v1"), url)
        .await
        .unwrap();

    w.server.set_down(true);
    let got = fetch(&c, &remote("acme", "act", None, "v1"), url)
        .await
        .unwrap();
    assert_eq!(got.sha, sha);
    assert!(got.cached);
    assert_eq!(got.notes.len(), 1, "{:?}", got.notes);
    let note = &got.notes[0];
    assert!(
        note.contains("Could not reach") && note.contains(&sha[..12]),
        "{note}"
    );
    assert!(note.contains("`v1`") && note.contains("503"), "{note}");

    // A full sha cached: no network, no note.
    let by_sha = fetch(&c, &remote("acme", "act", None, &sha), url)
        .await
        .unwrap();
    assert!(by_sha.cached && by_sha.notes.is_empty());

    // A ref never resolved: a clear failure.
    let msg = fetch(&c, &remote("acme", "act", None, "main"), url)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("acme/act@main") && msg.contains("503"),
        "{msg}"
    );

    // A server that does not answer at all (nothing listens there).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead_url = format!("http://127.0.0.1:{dead}");
    let c2 = cache(&w.cache_dir, &[format!("127.0.0.1:{dead}")], 1 << 30);
    let msg = fetch(&c2, &remote("acme", "act", None, "v1"), &dead_url)
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&dead_url), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_entry_is_detected_and_fetched_again() {
    let w = world().await;
    let sha = w.server.publish("acme", "act", &w.tree, &["v1"]);
    let c = w.cache();
    let url = w.server.url();
    let good = fetch(&c, &remote("acme", "act", None, "v1"), url)
        .await
        .unwrap();
    assert_eq!(w.server.upload_packs(), 1);

    let archives = find_archives(&w.cache_dir);
    assert_eq!(archives.len(), 1);
    let mut bytes = std::fs::read(&archives[0]).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x55;
    std::fs::write(&archives[0], &bytes).unwrap();

    let again = fetch(&c, &remote("acme", "act", None, &sha), url)
        .await
        .unwrap();
    assert_eq!(files(&again.archive), files(&good.archive));
    assert!(!again.cached);
    assert!(
        again.notes.iter().any(|n| n.contains("damaged")),
        "{:?}",
        again.notes
    );
    assert_eq!(w.server.upload_packs(), 2, "fetched again");
    // Healthy again.
    let third = fetch(&c, &remote("acme", "act", None, &sha), url)
        .await
        .unwrap();
    assert!(third.cached && third.notes.is_empty());

    // Damaged while the server is down: a clear failure.
    std::fs::write(&archives[0], b"garbage").unwrap();
    w.server.set_down(true);
    let e = fetch(&c, &remote("acme", "act", None, "v1"), url)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no longer holds"), "{e}");
}

fn find_archives(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("entries")).unwrap().flatten() {
        let p = e.path().join("archive.tar");
        if p.exists() {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn least_recently_used_entries_are_evicted() {
    let w = world().await;
    // A payload that dominates the archive size.
    let blob: String = (0..40_000u32).map(|i| format!("{i:08x}")).collect();
    std::fs::write(w.tree.join("blob.txt"), &blob).unwrap();
    let mut shas = Vec::new();
    for name in ["a", "b", "c"] {
        shas.push(w.server.publish("acme", name, &w.tree, &["v1"]));
    }
    let url = w.server.url();
    // Size one archive.
    let probe = cache(&w.tmp_dir("probe"), &w.allowed(), 1 << 30);
    let one = fetch(&probe, &remote("acme", "a", None, "v1"), url)
        .await
        .unwrap()
        .archive
        .len() as u64;
    let c = cache(&w.cache_dir, &w.allowed(), one * 5 / 2);
    let packs0 = w.server.upload_packs();
    fetch(&c, &remote("acme", "a", None, "v1"), url)
        .await
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fetch(&c, &remote("acme", "b", None, "v1"), url)
        .await
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // Use `a` again: now `b` is the least recently used.
    assert!(
        fetch(&c, &remote("acme", "a", None, &shas[0]), url)
            .await
            .unwrap()
            .cached
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    fetch(&c, &remote("acme", "c", None, "v1"), url)
        .await
        .unwrap();
    assert_eq!(w.server.upload_packs(), packs0 + 3);
    assert_eq!(find_archives(&w.cache_dir).len(), 2, "bounded");

    assert!(
        fetch(&c, &remote("acme", "a", None, &shas[0]), url)
            .await
            .unwrap()
            .cached
    );
    assert!(
        fetch(&c, &remote("acme", "c", None, &shas[2]), url)
            .await
            .unwrap()
            .cached
    );
    let b = fetch(&c, &remote("acme", "b", None, &shas[1]), url)
        .await
        .unwrap();
    assert!(!b.cached, "b was evicted");
    assert_eq!(w.server.upload_packs(), packs0 + 4);

    // An archive larger than the whole cache is refused clearly.
    let tiny = cache(&w.tmp_dir("tiny"), &w.allowed(), 1000);
    let msg = fetch(&tiny, &remote("acme", "a", None, "v1"), url)
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("cache_max_mib"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_remembered_commit_follows_a_moved_tag_even_from_the_cache() {
    let w = world().await;
    w.server.publish("acme", "act", &w.tree, &["v1"]);
    let c = w.cache();
    let url = w.server.url();
    fetch(&c, &remote("acme", "act", None, "v1"), url)
        .await
        .unwrap();
    action_tree(&w.tree, "two");
    let second = w.server.publish("acme", "act", &w.tree, &["v1"]);
    // The new commit gets cached by its sha first; then `v1` resolves to it
    // and is served from the cache.
    fetch(&c, &remote("acme", "act", None, &second), url)
        .await
        .unwrap();
    let packs = w.server.upload_packs();
    let moved = fetch(&c, &remote("acme", "act", None, "v1"), url)
        .await
        .unwrap();
    assert_eq!(moved.sha, second);
    assert_eq!(w.server.upload_packs(), packs);
    w.server.set_down(true);
    let offline = fetch(&c, &remote("acme", "act", None, "v1"), url)
        .await
        .unwrap();
    assert_eq!(offline.sha, second, "{:?}", offline.notes);
}

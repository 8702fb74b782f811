//! The cache service with the real `@actions/cache` (npm) in Debian guests:
//! a test action shaped like actions/cache (`tests/fixtures/cache-action/`)
//! saves in one job and restores in the next, through the service the test
//! starts as `solstice exec` does.

use std::sync::Arc;

use reqwest::StatusCode;
use solstice::actions::{ActionCache, CacheSettings as ActionSettings};
use solstice::cache_service::{CacheScope, CacheService, CacheSettings};
use solstice::events::Conclusion;
use solstice::testing::git_server::GitServer;

use crate::support::{self, RunOpts, TestEnv, all_text, step_lines};

/// Entries here are one 300 kB random file (about 300 kB archived); the
/// limit holds two of them, not three.
const LIMIT: u64 = 700_000;

async fn setup() -> (
    GitServer,
    Arc<ActionCache>,
    Arc<CacheService>,
    tempfile::TempDir,
) {
    let fixture = support::repo_root().join("tests/fixtures/cache-action");
    let node_modules = support::npm::install_locked(&fixture);
    let tree = tempfile::tempdir().unwrap();
    for f in ["action.yml", "main.js", "post.js"] {
        std::fs::copy(fixture.join(f), tree.path().join(f)).unwrap();
    }
    support::actions::copy_tree(&node_modules, &tree.path().join("node_modules"));
    let server = GitServer::start().await;
    server.publish("fixtures", "cache-action", tree.path(), &["v1"]);
    let dir = tempfile::tempdir().unwrap();
    let actions = Arc::new(ActionCache::new(ActionSettings {
        dir: dir.path().join("actions"),
        max_bytes: 1 << 30,
        allowed_hosts: vec!["127.0.0.1".into()],
    }));
    let cache = Arc::new(
        CacheService::start(CacheSettings {
            dir: dir.path().join("cache"),
            max_bytes: LIMIT,
        })
        .await
        .unwrap(),
    );
    (server, actions, cache, dir)
}

fn opts(server: &GitServer, actions: &Arc<ActionCache>, cache: &Arc<CacheService>) -> RunOpts {
    RunOpts {
        actions: Some((actions.clone(), server.url().to_string())),
        cache: Some(cache.clone()),
        ..RunOpts::default()
    }
}

/// A job that restores `key` into `data/` and, on a miss, makes a new
/// random file there that the post step saves.
fn saving_job(key: &str) -> String {
    format!(
        r#"
jobs:
  save:
    steps:
      - id: c
        uses: fixtures/cache-action@v1
        with:
          path: data
          key: {key}
      - run: |
          mkdir -p data && head -c 300000 /dev/urandom > data/blob
          echo "hit=${{{{ steps.c.outputs.cache-hit }}}}"
"#
    )
}

/// Whether the service has an entry for `key` (exactly) in `octo/hello`,
/// any version: asked through a lease of the test's own.
async fn has_exact(cache: &CacheService, key: &str, version: &str) -> bool {
    let lease = cache.lease(CacheScope::new("http://localhost", "octo/hello", None));
    let r = reqwest::Client::new()
        .get(format!("{}_apis/artifactcache/cache", lease.host_url()))
        .query(&[("keys", key), ("version", version)])
        .send()
        .await
        .unwrap();
    r.status() == StatusCode::OK
}

fn lines(sink: &solstice::testing::VecSink, step: usize) -> String {
    step_lines(sink, step).join("\n")
}

/// Save in one job, restore in the next (exact, case-insensitive: hit),
/// a `restore-keys` prefix (no hit, the matched key), a miss; another
/// repository sees nothing; two jobs saving one key at once both succeed;
/// a save beyond the limit evicts the least recently used entry.
#[tokio::test(flavor = "multi_thread")]
async fn actions_cache_saves_restores_and_is_scoped_in_real_guests() {
    let (server, actions, cache, dir) = setup().await;
    let env = TestEnv::debian();

    // 1. A miss, then the post step saves.
    let (r, sink) = env
        .run(&saving_job("deps-linux-1"), opts(&server, &actions, &cache))
        .await;
    let report = r.expect("the job ran");
    let text = all_text(&sink);
    assert_eq!(report.outcome.conclusion, Conclusion::Success, "{text}");
    assert!(lines(&sink, 1).contains("hit=false"), "{text}");
    assert!(text.contains("saved key=deps-linux-1"), "{text}");
    // The runtime token and the cache URL's token are masked.
    assert!(!text.contains("10.0.2.2"), "{text}");
    let version = {
        let conn = rusqlite::Connection::open(dir.path().join("cache/index.db")).unwrap();
        conn.query_row("SELECT version FROM entries", [], |r| r.get::<_, String>(0))
            .unwrap()
    };

    // 2. The next job restores: exact (other case), prefix, miss.
    let restore = r#"
jobs:
  restore:
    steps:
      - id: exact
        uses: fixtures/cache-action@v1
        with:
          path: data
          key: DEPS-Linux-1
          save: 'false'
      - run: test -s data/blob && echo "exact=${{ steps.exact.outputs.cache-hit }}"
      - id: prefix
        uses: fixtures/cache-action@v1
        with:
          path: data
          key: deps-linux-2
          restore-keys: |
            deps-other-
            deps-linux-
          save: 'false'
      - id: miss
        uses: fixtures/cache-action@v1
        with:
          path: data
          key: nothing-here
          save: 'false'
      - run: |
          echo "prefix=${{ steps.prefix.outputs.cache-hit }} matched=${{ steps.prefix.outputs.cache-matched-key }}"
          echo "miss=${{ steps.miss.outputs.cache-hit }} matched=[${{ steps.miss.outputs.cache-matched-key }}]"
"#;
    let (r, sink) = env.run(restore, opts(&server, &actions, &cache)).await;
    let report = r.expect("the job ran");
    let text = all_text(&sink);
    assert_eq!(report.outcome.conclusion, Conclusion::Success, "{text}");
    assert!(lines(&sink, 1).contains("exact=true"), "{text}");
    let last = lines(&sink, 4);
    assert!(last.contains("prefix=false matched=deps-linux-1"), "{text}");
    assert!(last.contains("miss=false matched=[]"), "{text}");

    // 3. Another repository: a miss for the same key.
    let mut o = opts(&server, &actions, &cache);
    o.repository = Some("octo/other");
    let other = r#"
jobs:
  other:
    steps:
      - id: c
        uses: fixtures/cache-action@v1
        with:
          path: data
          key: deps-linux-1
          restore-keys: deps-
          save: 'false'
      - run: echo "hit=${{ steps.c.outputs.cache-hit }} matched=[${{ steps.c.outputs.cache-matched-key }}]"
"#;
    let (r, sink) = env.run(other, o).await;
    let text = all_text(&sink);
    assert_eq!(
        r.expect("the job ran").outcome.conclusion,
        Conclusion::Success,
        "{text}"
    );
    assert!(lines(&sink, 1).contains("hit=false matched=[]"), "{text}");

    // 4. Two jobs save the same key at once: neither fails.
    let yaml = saving_job("deps-shared");
    let (sa, sb) = (
        solstice::testing::VecSink::default(),
        solstice::testing::VecSink::default(),
    );
    let (ra, rb) = tokio::join!(
        env.run_with_sink(&yaml, opts(&server, &actions, &cache), &sa),
        env.run_with_sink(&yaml, opts(&server, &actions, &cache), &sb),
    );
    env.assert_no_leaks();
    for (r, s) in [(ra, &sa), (rb, &sb)] {
        let text = all_text(s);
        assert_eq!(
            r.expect("the job ran").outcome.conclusion,
            Conclusion::Success,
            "{text}"
        );
        assert!(!text.contains("::error"), "{text}");
        // The service never refuses a reservation: both saves land.
        assert!(text.contains("saved key=deps-shared"), "{text}");
    }
    assert!(has_exact(&cache, "deps-shared", &version).await);

    // 5. A third entry goes beyond the limit: the least recently used one
    // (deps-linux-1, restored in 2.) is evicted.
    let (r, sink) = env
        .run(&saving_job("deps-linux-3"), opts(&server, &actions, &cache))
        .await;
    let text = all_text(&sink);
    assert_eq!(
        r.expect("the job ran").outcome.conclusion,
        Conclusion::Success,
        "{text}"
    );
    assert!(text.contains("saved key=deps-linux-3"), "{text}");
    assert!(has_exact(&cache, "deps-linux-3", &version).await);
    assert!(has_exact(&cache, "deps-shared", &version).await);
    assert!(!has_exact(&cache, "deps-linux-1", &version).await);
}

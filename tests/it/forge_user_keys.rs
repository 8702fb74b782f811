//! The forges' published user keys behind the forge port (debug SSH),
//! against the strict fake Forgejo and fake GitHub over loopback: the keys
//! of the named user only, unknown users, renamed or re-registered names
//! (the id check), names that could change the URL path refused before any
//! request, paging, GitHub's anonymous rate limit, no credentials sent; and
//! every assigned job of both adapters carrying the lookups, with the
//! actor in its `github` context.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use solstice::config::{CredentialSource, ForgeConfig, ParseOptions, parse_str_with};
use solstice::forge::forgejo::{Forgejo, ForgejoUserKeys};
use solstice::forge::github::session::Github;
use solstice::forge::github::user_keys::GithubUserKeys;
use solstice::forge::{Assignment, Forge, Poller, UserKeys, UserKeysError};
use solstice::testing::fake_github::{FakeGithub, FakeGithubJob, FakeGithubOptions, FakeStep};
use solstice::testing::{FakeForge, FakeJob, FakeOptions};

const REG_TOKEN: &str = "0000000000111111111122222222223333333333";
const ALICE_1: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAlicealicealicealicealicealicealicealiceal alice@laptop";
const ALICE_2: &str =
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBAlice2";
const BOB: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBobbobbobbobbobbobbobbobbobbobbobbobbobbobb bob@desk";

/// The names a lookup must refuse without asking the forge.
const BAD_NAMES: &[&str] = &[
    "a/b",
    "..",
    "../admin",
    "alice bob",
    "",
    "alice%2Fkeys",
    "alice?x=1",
];

/// The key part (`type base64`) of an OpenSSH line.
fn key_part(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn fake_forge() -> FakeForge {
    let forge = FakeForge::start(FakeOptions {
        registration_tokens: vec![REG_TOKEN.into()],
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    forge.add_user("alice", 5, &[ALICE_1, ALICE_2]);
    forge.add_user("bob", 6, &[BOB]);
    forge
}

fn forgejo_keys(forge: &FakeForge) -> ForgejoUserKeys {
    ForgejoUserKeys::new(&forge.url(), "solstice-test").unwrap()
}

#[tokio::test]
async fn forgejo_keys_of_the_named_user_only_with_the_id_check() {
    let forge = fake_forge().await;
    let keys = forgejo_keys(&forge);
    assert_eq!(keys.forge_url(), forge.url());

    // Forgejo's `key` field is the line as registered (comment included).
    let got = keys.public_keys("alice", Some("5")).await.unwrap();
    assert_eq!(got, [ALICE_1, ALICE_2]);
    assert!(!got.iter().any(|k| k.contains("Bob")), "{got:?}");
    // Names compare without case, as on Forgejo; no id: no id check.
    assert_eq!(keys.public_keys("Alice", None).await.unwrap().len(), 2);
    assert_eq!(keys.public_keys("bob", Some("6")).await.unwrap(), [BOB]);
    // An empty id (a task without one) checks nothing: no user lookup.
    let lookups = forge.request_count("GetUser");
    assert_eq!(keys.public_keys("bob", Some("")).await.unwrap(), [BOB]);
    assert_eq!(forge.request_count("GetUser"), lookups);

    // Unknown name: NoSuchUser (the fake answers Forgejo's 404 body).
    let e = keys.public_keys("carol", Some("7")).await.unwrap_err();
    assert!(
        matches!(&e, UserKeysError::NoSuchUser { user } if user == "carol"),
        "{e:?}"
    );
    let e = keys.public_keys("carol", None).await.unwrap_err();
    assert!(matches!(e, UserKeysError::NoSuchUser { .. }), "{e:?}");

    // The name belongs to another account than the job's: Renamed.
    let e = keys.public_keys("alice", Some("6")).await.unwrap_err();
    assert!(
        matches!(&e, UserKeysError::Renamed { user, expected, found }
            if user == "alice" && expected == "6" && found == "5"),
        "{e:?}"
    );
    assert!(e.to_string().contains("account 5"), "{e}");

    // No lookup sent credentials (the fake records that as a violation).
    assert_eq!(forge.violations(), Vec::<String>::new());
    assert!(forge.requests().iter().all(|r| r.runner_uuid.is_none()));
}

#[tokio::test]
async fn forgejo_renamed_and_re_registered_names_are_refused() {
    let forge = fake_forge().await;
    let keys = forgejo_keys(&forge);
    // alice renames herself to alicia: Forgejo redirects the old name (307),
    // which is not followed: the old name has no account now.
    assert!(forge.rename_user("alice", "alicia"));
    let e = keys.public_keys("alice", Some("5")).await.unwrap_err();
    assert!(matches!(e, UserKeysError::NoSuchUser { .. }), "{e:?}");
    let redirects = forge
        .requests()
        .iter()
        .filter(|r| r.http_status == 307)
        .count();
    assert_eq!(redirects, 1, "{:?}", forge.requests());
    // Someone else registers the old name: the id check refuses it.
    forge.add_user("alice", 99, &[BOB]);
    let e = keys.public_keys("alice", Some("5")).await.unwrap_err();
    assert!(matches!(e, UserKeysError::Renamed { .. }), "{e:?}");
    // The renamed account is still found under its new name.
    assert_eq!(
        keys.public_keys("alicia", Some("5")).await.unwrap(),
        [ALICE_1, ALICE_2]
    );
    // A user deleted: unknown.
    assert!(forge.remove_user("bob"));
    let e = keys.public_keys("bob", None).await.unwrap_err();
    assert!(matches!(e, UserKeysError::NoSuchUser { .. }), "{e:?}");
}

#[tokio::test]
async fn forgejo_bad_names_are_refused_without_a_request() {
    let forge = fake_forge().await;
    let keys = forgejo_keys(&forge);
    for name in BAD_NAMES {
        let e = keys.public_keys(name, Some("5")).await.unwrap_err();
        assert!(matches!(e, UserKeysError::Forge(_)), "{name:?}: {e:?}");
    }
    assert_eq!(forge.request_count("*"), 0, "{:?}", forge.requests());
}

#[tokio::test]
async fn forgejo_keys_are_read_page_by_page() {
    let forge = fake_forge().await;
    let many: Vec<String> = (0..120)
        .map(|i| format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{i:040} k{i}"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    forge.add_user("many", 8, &refs);
    let got = forgejo_keys(&forge)
        .public_keys("many", None)
        .await
        .unwrap();
    assert_eq!(got, many);
    // Pages of at most 50 (Forgejo's cap): 3 calls.
    assert_eq!(forge.request_count("ListUserKeys"), 3);
}

#[tokio::test]
async fn forgejo_unreachable_forge_is_a_forge_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let e = ForgejoUserKeys::new(&url, "t")
        .unwrap()
        .public_keys("alice", None)
        .await
        .unwrap_err();
    assert!(matches!(e, UserKeysError::Forge(_)), "{e:?}");
}

/// Fetches until an assignment comes (panics after 30 s).
async fn next(poller: &mut Box<dyn Poller>) -> Assignment {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut got = poller.fetch(1).await.unwrap();
        if let Some(a) = got.pop() {
            return a;
        }
        assert!(Instant::now() < deadline, "no assignment in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn forgejo_jobs_carry_the_lookups_and_their_actor() {
    let forge = fake_forge().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("reg-token");
    std::fs::write(&token_file, REG_TOKEN).unwrap();
    let config = ForgeConfig {
        name: "main".into(),
        url: forge.url(),
        github: None,
        credentials: CredentialSource::RegistrationTokenFile(token_file),
        runner_name: "keys-runner".into(),
        labels: vec!["tiny".into()],
        fetch_interval: Duration::from_secs(1),
        fetch_timeout: Duration::from_secs(2),
        debug_ssh: Default::default(),
    };
    let payload = "name: t\non: pull_request\njobs:\n  build:\n    runs-on: tiny\n    steps:\n      - run: echo hi\n";
    forge.enqueue(
        FakeJob::new(payload, &["tiny"])
            .actor("alice", 5)
            .fork_pull_request(),
    );
    let f = Forgejo::new(&config, Duration::from_secs(3600)).unwrap();
    let session = f.connect(None).await.unwrap().session;
    let mut poller = session.poller();
    let a = next(&mut poller).await;
    let job = a.job.expect("the task translates");
    let g = &job.spec.github;
    assert_eq!(g["actor"], "alice");
    assert_eq!(g["actor_id"], "5");
    assert_eq!(g["event_name"], "pull_request");
    assert_eq!(
        g["event"]["pull_request"]["head"]["repo"]["full_name"],
        "fork-owner/fake-repo"
    );
    assert_eq!(g["event"]["pull_request"]["head"]["repo"]["fork"], true);
    let keys = job.user_keys.expect("Forgejo jobs carry the key lookups");
    assert_eq!(keys.forge_url(), forge.url());
    let actor = g["actor"].as_str().unwrap();
    let id = g["actor_id"].as_str();
    assert_eq!(
        keys.public_keys(actor, id).await.unwrap(),
        [ALICE_1, ALICE_2]
    );
    assert_eq!(forge.violations(), Vec::<String>::new());
}

// ---------------------------------------------------------------- GitHub

async fn fake_github() -> FakeGithub {
    let gh = FakeGithub::start(FakeGithubOptions {
        poll_hold: Duration::from_secs(1),
        ..FakeGithubOptions::default()
    })
    .await
    .unwrap();
    gh.add_user("mona", 42, &[ALICE_1, ALICE_2]);
    gh.add_user("hubot", 43, &[BOB]);
    gh
}

fn github_keys(gh: &FakeGithub) -> GithubUserKeys {
    GithubUserKeys::new(&gh.api_url(), &gh.url(), "solstice-test").unwrap()
}

#[tokio::test]
async fn github_keys_of_the_named_user_only_with_the_id_check() {
    let gh = fake_github().await;
    let keys = github_keys(&gh);
    assert_eq!(keys.forge_url(), gh.url());
    // GitHub lists `type base64` without the comment.
    let got = keys.public_keys("mona", Some("42")).await.unwrap();
    assert_eq!(got, [key_part(ALICE_1), key_part(ALICE_2)]);
    assert_eq!(keys.public_keys("Mona", None).await.unwrap().len(), 2);
    assert_eq!(
        keys.public_keys("hubot", Some("43")).await.unwrap(),
        [key_part(BOB)]
    );

    let e = keys.public_keys("octocat", Some("1")).await.unwrap_err();
    assert!(
        matches!(&e, UserKeysError::NoSuchUser { user } if user == "octocat"),
        "{e:?}"
    );
    let e = keys.public_keys("mona", Some("43")).await.unwrap_err();
    assert!(
        matches!(&e, UserKeysError::Renamed { expected, found, .. }
            if expected == "43" && found == "42"),
        "{e:?}"
    );
    // Re-registered name: the old account's id no longer matches.
    gh.remove_user("hubot");
    gh.add_user("hubot", 77, &[ALICE_1]);
    let e = keys.public_keys("hubot", Some("43")).await.unwrap_err();
    assert!(matches!(e, UserKeysError::Renamed { .. }), "{e:?}");

    // GitHub's headers were sent (the fake refuses calls without a
    // User-Agent), and no Authorization header.
    assert_eq!(gh.violations(), Vec::<String>::new());
    assert!(
        gh.requests()
            .iter()
            .all(|r| r.status != 403 && r.path.starts_with("/api/v3/users/")),
        "{:?}",
        gh.requests()
    );
}

#[tokio::test]
async fn github_bad_names_are_refused_without_a_request() {
    let gh = fake_github().await;
    let keys = github_keys(&gh);
    for name in BAD_NAMES.iter().chain(&["github-actions[bot]", "a.b"]) {
        let e = keys.public_keys(name, None).await.unwrap_err();
        assert!(matches!(e, UserKeysError::Forge(_)), "{name:?}: {e:?}");
    }
    assert!(gh.requests().is_empty(), "{:?}", gh.requests());
}

#[tokio::test]
async fn github_pages_and_the_anonymous_rate_limit() {
    let gh = fake_github().await;
    let many: Vec<String> = (0..150)
        .map(|i| format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{i:040}"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    gh.add_user("many", 9, &refs);
    let keys = github_keys(&gh);
    assert_eq!(keys.public_keys("many", None).await.unwrap(), many);
    assert_eq!(gh.requests().len(), 2, "pages of 100");

    gh.set_anonymous_rate_limit(3);
    let e = keys.public_keys("mona", Some("42")).await.unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, UserKeysError::Forge(_)) && text.contains("60 an hour"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_jobs_carry_the_lookups_and_their_actor() {
    let gh = fake_github().await;
    let token = "github_pat_keys_0123456789abcdefghijklmnopqrstuv";
    gh.add_token(token);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("gh.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let text = format!(
        "[daemon]\nstate_dir = {:?}\n[images.tiny]\npath = \"/nonexistent/tiny.qcow2\"\nlabels = [\"tiny\", \"self-hosted\"]\n[forges.gh]\nkind = \"github\"\nurl = {:?}\napi_url = {:?}\ntoken_file = {token_file:?}\nrunner_name = \"ci\"\nfetch_interval_secs = 1\n",
        dir.path().join("state"),
        gh.repo_url("octo-org", "hello"),
        gh.api_url(),
    );
    let config = parse_str_with(
        &text,
        &dir.path().join("solstice.toml"),
        &ParseOptions { check_paths: false },
    )
    .unwrap();
    let images: BTreeMap<_, _> = config.images.clone();
    let github = Github::new(&config.forges["gh"], &images, Duration::from_secs(3600)).unwrap();
    let session = github.connect(None).await.unwrap().session;
    gh.enqueue(
        FakeGithubJob::new(&["self-hosted", "tiny"])
            .step(FakeStep::run("echo hi"))
            .actor("mona", 42)
            .triggering_actor("hubot")
            .schedule(),
    );
    let mut poller = session.poller();
    let a = next(&mut poller).await;
    let job = a.job.expect("the job translates");
    let g = &job.spec.github;
    assert_eq!(g["actor"], "mona");
    assert_eq!(g["actor_id"], "42");
    assert_eq!(g["triggering_actor"], "hubot");
    assert_eq!(g["event_name"], "schedule");
    let keys: Arc<dyn UserKeys> = job.user_keys.expect("GitHub jobs carry the key lookups");
    assert_eq!(keys.forge_url(), gh.url());
    assert_eq!(
        keys.public_keys("hubot", None).await.unwrap(),
        [key_part(BOB)]
    );
    session.disconnect().await;
    assert_eq!(gh.violations(), Vec::<String>::new());
}

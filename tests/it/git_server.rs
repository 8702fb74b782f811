//! The test git server (`solstice::testing::GitServer`), driven by the real
//! `git` client: clones work, tags move with each publish, full shas can be
//! fetched, and a server that is down fails.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use solstice::testing::GitServer;

fn git(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap()
}

fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn clone_tags_modes_and_outage() {
    let server = GitServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("action.yml"), "name: one\n").unwrap();
    std::fs::write(tree.join("sub/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        tree.join("sub/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/run.sh", tree.join("link")).unwrap();
    std::fs::write(tree.join(".gitignore"), "ignored\n").unwrap();
    std::fs::write(tree.join("ignored"), "kept anyway\n").unwrap();
    let first = server.publish("acme", "hello", &tree, &["v1", "v1.0.0"]);
    assert_eq!(first.len(), 40);

    // Clone without and with `.git`.
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let url = format!("{}/acme/hello", server.url());
    git_ok(&work, &["clone", "--quiet", &url, "a"]);
    git_ok(&work, &["clone", "--quiet", &format!("{url}.git"), "b"]);
    let a = work.join("a");
    assert_eq!(git_ok(&a, &["rev-parse", "HEAD"]), first);
    assert_eq!(
        std::fs::read_to_string(a.join("action.yml")).unwrap(),
        "name: one\n"
    );
    let mode = std::fs::metadata(a.join("sub/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "executable bit kept");
    assert_eq!(
        std::fs::read_link(a.join("link")).unwrap(),
        Path::new("sub/run.sh")
    );
    assert!(a.join("ignored").exists(), ".gitignore does not hide files");
    assert!(server.upload_packs() >= 2);
    assert!(server.ref_listings() >= 2);

    // Tags are annotated and peel to the commit; a new publish moves them.
    let listing = git_ok(&work, &["ls-remote", &url]);
    assert!(
        listing.contains(&format!("{first}\trefs/tags/v1^{{}}")),
        "{listing}"
    );
    std::fs::write(tree.join("action.yml"), "name: two\n").unwrap();
    let second = server.publish("acme", "hello", &tree, &["v1"]);
    assert_ne!(first, second);
    let listing = git_ok(&work, &["ls-remote", &url]);
    assert!(
        listing.contains(&format!("{second}\trefs/tags/v1^{{}}")),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("{first}\trefs/tags/v1.0.0^{{}}")),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("{second}\trefs/heads/main")),
        "{listing}"
    );

    // A full sha that no ref points to any more can be fetched, shallow.
    let c = work.join("c");
    git_ok(&work, &["init", "--quiet", "--bare", "c"]);
    let before = server.upload_packs();
    git_ok(&c, &["fetch", "--quiet", "--depth", "1", &url, &first]);
    assert_eq!(git_ok(&c, &["rev-parse", "FETCH_HEAD"]), first);
    assert_eq!(server.upload_packs(), before + 1);

    // A repository that does not exist.
    let out = git(
        &work,
        &["ls-remote", &format!("{}/acme/nope", server.url())],
    );
    assert!(!out.status.success());

    // Down: every request fails; up again: works.
    server.set_down(true);
    let out = git(&work, &["ls-remote", &url]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("503"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.set_down(false);
    git_ok(&work, &["ls-remote", &url]);

    // Authorization headers are recorded.
    assert!(server.authorizations().is_empty());
    git_ok(
        &work,
        &[
            "-c",
            "http.extraHeader=Authorization: Basic dGVzdDp0b2tlbg==",
            "ls-remote",
            &url,
        ],
    );
    let seen = server.authorizations();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|a| a == "Basic dGVzdDp0b2tlbg=="),
        "{seen:?}"
    );
}

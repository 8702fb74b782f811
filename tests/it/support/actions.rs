//! The test actions of `tests/fixtures/actions/`: published to a
//! [`GitServer`] as `fixtures/<name>` (tag `v1`), the JavaScript ones with
//! the real `@actions/core` installed into their `node_modules/`.

use std::path::{Path, PathBuf};

use solstice::testing::git_server::GitServer;

use super::npm;

/// The owner every fixture action is published under (the fixtures that
/// nest another action name it as `fixtures/<name>@v1`).
pub const OWNER: &str = "fixtures";

/// `tests/fixtures/actions/`.
pub fn fixtures_dir() -> PathBuf {
    super::repo_root().join("tests/fixtures/actions")
}

/// Copies fixture `name` into `dest` (created), installing `@actions/core`
/// next to every `action.yml` that runs node.
pub fn prepare(name: &str, dest: &Path) {
    let src = fixtures_dir().join(name);
    assert!(src.is_dir(), "no fixture action {}", src.display());
    copy_tree(&src, dest);
    for manifest in manifests(dest) {
        let text = std::fs::read_to_string(&manifest).unwrap();
        if text.lines().any(|l| l.trim().starts_with("using: node")) {
            npm::install_actions_core(manifest.parent().unwrap());
        }
    }
}

/// Publishes fixture `name` as `fixtures/<name>` with the tag `v1`; returns
/// the commit.
pub fn publish(server: &GitServer, name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    prepare(name, dir.path());
    server.publish(OWNER, name, dir.path(), &["v1"])
}

/// Publishes each of `names`.
pub fn publish_all(server: &GitServer, names: &[&str]) {
    for name in names {
        publish(server, name);
    }
}

fn manifests(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "node_modules") {
                    todo.push(p);
                }
            } else if p
                .file_name()
                .is_some_and(|n| n == "action.yml" || n == "action.yaml")
            {
                out.push(p);
            }
        }
    }
    out
}

/// Copies a tree of plain files and directories, keeping the modes.
pub fn copy_tree(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dest.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

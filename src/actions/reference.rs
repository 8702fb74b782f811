//! What a step's `uses:` names. Pure.
//!
//! The rules follow forgejo-runner (spec §1.1), which accepts GitHub's forms
//! and one of its own:
//!
//! - `./path`: a local action in the workspace. The path is normalised (`.`
//!   and empty components dropped, `..` resolved) and may not leave the
//!   workspace.
//! - `docker://image[:tag]`: a container image run as a step.
//! - `owner/repo[/path]@ref`: a remote action from the default actions URL.
//!   As in forgejo-runner's `parseAction`, `owner` and `repo` are the first
//!   two `/`-separated parts, everything up to the first `@` after them is
//!   the subdirectory, and everything after that `@` is the ref (so a ref may
//!   hold `/` and `@`: `owner/repo@release/v1`).
//! - `https://host[:port]/owner/repo[/path]@ref` (also `http://`): a remote
//!   action from that host. As in forgejo-runner's `newRemoteAction`, the
//!   clone base is the scheme and the host only: the first path segment after
//!   the host is the owner. A forge served under a path prefix
//!   (`https://host/git/owner/repo`) therefore cannot be named by URL; its
//!   actions are reached through the default actions URL instead.
//!
//! Beyond forgejo-runner, names are checked so that a reference cannot smuggle
//! anything into a URL or a `git` command line: owner and repository names
//! are `[A-Za-z0-9._-]` (not `.` or `..`), a subdirectory has no `..`, a ref
//! has no whitespace or control characters and does not start with `-`, and a
//! URL carries no credentials. Whether a ref is a short SHA is the fetcher's
//! question, not this module's.

use std::fmt;

/// The forms of `uses:` (spec §1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsesRef {
    /// `./path`: the path relative to the workspace, normalised, without the
    /// leading `./` or a trailing `/`; empty for the workspace itself (`./`).
    Local(String),
    /// `docker://image[:tag]`: the image, without `docker://`.
    Docker(String),
    /// `owner/repo[/path]@ref` or `https://host[:port]/owner/repo[/path]@ref`.
    Remote(RemoteRef),
}

impl fmt::Display for UsesRef {
    /// The reference as written, normalised: parsing the text gives the same
    /// value back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsesRef::Local(p) => write!(f, "./{p}"),
            UsesRef::Docker(image) => write!(f, "docker://{image}"),
            UsesRef::Remote(r) => r.fmt(f),
        }
    }
}

/// A remote action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// `https://host[:port]` (scheme and host lower-cased, no trailing `/`)
    /// when the `uses:` gave a URL; `None`: the default actions URL.
    pub base: Option<String>,
    pub owner: String,
    pub repo: String,
    /// Subdirectory holding the action, without leading or trailing `/`.
    pub path: Option<String>,
    /// Tag, branch or full commit SHA.
    pub git_ref: String,
}

impl RemoteRef {
    /// `owner/repo` (what `GITHUB_ACTION_REPOSITORY` holds).
    pub fn repository(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }

    /// The URL to clone: `<base>/<owner>/<repo>`, where the base is the one
    /// the `uses:` gave, else `default_url` (with `https://` added when it
    /// has no scheme, and without a trailing `/`), as forgejo-runner's
    /// `CloneURL`.
    pub fn clone_url(&self, default_url: &str) -> String {
        let base = match &self.base {
            Some(b) => b.clone(),
            None => {
                let d = default_url.trim().trim_end_matches('/');
                if has_http_scheme(d) {
                    d.to_string()
                } else {
                    format!("https://{d}")
                }
            }
        };
        format!("{base}/{}/{}", self.owner, self.repo)
    }
}

impl fmt::Display for RemoteRef {
    /// The reference as written (`owner/repo/path@ref`, with the base URL
    /// when one was given).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(b) = &self.base {
            write!(f, "{b}/")?;
        }
        write!(f, "{}/{}", self.owner, self.repo)?;
        if let Some(p) = &self.path {
            write!(f, "/{p}")?;
        }
        write!(f, "@{}", self.git_ref)
    }
}

/// Why a `uses:` value is not a valid reference. The text names the value
/// and says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsesError(pub String);

/// The format remote references must have, for messages.
const EXPECTED: &str = "expected {owner}/{repo}[/path]@{ref}, for example `actions/checkout@v4`";

/// Parses a step's `uses:` (surrounding whitespace is ignored). Expressions
/// (`${{ }}`) must have been evaluated first.
pub fn parse_uses(uses: &str) -> Result<UsesRef, UsesError> {
    let u = uses.trim();
    let bad = |why: &str| UsesError(format!("Invalid `uses: {u}`: {why}"));
    if u.is_empty() {
        return Err(UsesError(format!(
            "`uses:` is empty; {EXPECTED}, `./path` or `docker://image`"
        )));
    }
    if is_reusable_workflow(u) {
        return Err(bad(
            "this is a reusable workflow, which a job calls (`jobs.<id>.uses:`), not a step; \
             Solstice does not run reusable workflows: copy its steps into this job",
        ));
    }
    if let Some(rest) = u.strip_prefix("./") {
        return local(rest).map(UsesRef::Local).map_err(|why| bad(&why));
    }
    if let Some(image) = u.strip_prefix("docker://") {
        if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(
                "expected docker://image[:tag], for example `docker://alpine:3.20`",
            ));
        }
        return Ok(UsesRef::Docker(image.to_string()));
    }
    if u == "." || u.starts_with("../") || u.starts_with('/') || u.starts_with(".\\") {
        return Err(bad(
            "a local action's path starts with `./` and is relative to the workspace",
        ));
    }
    for scheme in ["https://", "http://"] {
        let Some(after) = strip_prefix_ignore_case(u, scheme) else {
            continue;
        };
        let Some((host, rest)) = after.split_once('/') else {
            return Err(bad(&format!(
                "expected {scheme}host[:port]/{{owner}}/{{repo}}[/path]@{{ref}}"
            )));
        };
        check_host(host).map_err(|why| bad(&why))?;
        let mut r = remote(rest).map_err(|why| bad(&why))?;
        r.base = Some(format!("{scheme}{}", host.to_ascii_lowercase()));
        return Ok(UsesRef::Remote(r));
    }
    remote(u).map(UsesRef::Remote).map_err(|why| bad(&why))
}

/// `./.github/workflows/x.yml` or `owner/repo/.github/workflows/x.yml@ref`.
fn is_reusable_workflow(u: &str) -> bool {
    let before_ref = match u.strip_prefix("./") {
        Some(_) => u,
        None => u.split_once('@').map_or(u, |(b, _)| b),
    };
    before_ref.contains(".github/workflows/")
        && (before_ref.ends_with(".yml") || before_ref.ends_with(".yaml"))
}

fn has_http_scheme(s: &str) -> bool {
    strip_prefix_ignore_case(s, "https://").is_some()
        || strip_prefix_ignore_case(s, "http://").is_some()
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The normalised workspace-relative path of `./<rest>`.
fn local(rest: &str) -> Result<String, String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in rest.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("the path leaves the workspace (`..`); \
                                a local action must be inside the checked-out repository"
                        .into());
                }
            }
            c if c.chars().any(char::is_control) => {
                return Err("the path has a control character".into());
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// `owner/repo[/path]@ref`, as forgejo-runner's `parseAction` splits it.
fn remote(s: &str) -> Result<RemoteRef, String> {
    let Some((name, git_ref)) = s.split_once('@') else {
        return Err(format!("the version (`@ref`) is missing; {EXPECTED}"));
    };
    if git_ref.is_empty() {
        return Err(format!("the version after `@` is empty; {EXPECTED}"));
    }
    let mut parts = name.splitn(3, '/');
    let owner = parts.next().unwrap_or_default();
    let Some(repo) = parts.next() else {
        return Err(format!("the repository is missing; {EXPECTED}"));
    };
    for (what, v) in [("owner", owner), ("repository", repo)] {
        check_name(what, v)?;
    }
    let path = match parts.next() {
        None => None,
        Some(p) => {
            let comps: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
            if comps.iter().any(|c| *c == "." || *c == "..") {
                return Err(
                    "the path inside the repository may not contain `.` or `..` components".into(),
                );
            }
            if p.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(
                    "the path inside the repository has a space or control character".into(),
                );
            }
            (!comps.is_empty()).then(|| comps.join("/"))
        }
    };
    if git_ref.starts_with('-') {
        return Err(format!("the version `{git_ref}` may not start with `-`"));
    }
    if git_ref.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the version has a space or control character".into());
    }
    Ok(RemoteRef {
        base: None,
        owner: owner.to_string(),
        repo: repo.to_string(),
        path,
        git_ref: git_ref.to_string(),
    })
}

fn check_name(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("the {what} is empty; {EXPECTED}"));
    }
    if v == "." || v == ".." {
        return Err(format!("`{v}` is not a valid {what} name; {EXPECTED}"));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "the {what} `{v}` has the character `{c}`; names are letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// `host[:port]` of a URL form: no credentials, a plausible host (a name or
/// a bracketed IPv6 address), a numeric port.
fn check_host(host: &str) -> Result<(), String> {
    if host.contains('@') {
        return Err("credentials in a `uses:` URL are not supported \
                    (actions on the job's own forge are fetched with the job token)"
            .into());
    }
    let not_a_host = || {
        format!(
            "`{host}` is not a host name; expected https://host[:port]/{{owner}}/{{repo}}[/path]@{{ref}}"
        )
    };
    let (ok_name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(not_a_host)?;
        let ok = !addr.is_empty()
            && addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.'));
        match after {
            "" => (ok, None),
            a => (ok, Some(a.strip_prefix(':').ok_or_else(not_a_host)?)),
        }
    } else {
        let (name, port) = match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        };
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        (ok, port)
    };
    if !ok_name {
        return Err(not_a_host());
    }
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(format!("the port `{p}` is not a number from 0 to 65535"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote_of(u: &str) -> RemoteRef {
        match parse_uses(u) {
            Ok(UsesRef::Remote(r)) => r,
            other => panic!("{u}: {other:?}"),
        }
    }

    fn err(u: &str) -> String {
        match parse_uses(u) {
            Err(e) => e.to_string(),
            Ok(r) => panic!("{u}: parsed as {r:?}"),
        }
    }

    /// Every accepted form prints back to a text that parses to the same value.
    fn round_trips(u: &str) {
        let r = parse_uses(u).unwrap();
        assert_eq!(parse_uses(&r.to_string()).unwrap(), r, "{u} -> {r}");
    }

    #[test]
    fn owner_repo_ref() {
        let r = remote_of("actions/checkout@v4");
        assert_eq!(
            r,
            RemoteRef {
                base: None,
                owner: "actions".into(),
                repo: "checkout".into(),
                path: None,
                git_ref: "v4".into()
            }
        );
        assert_eq!(r.to_string(), "actions/checkout@v4");
        assert_eq!(r.repository(), "actions/checkout");
        round_trips("actions/checkout@v4");
    }

    #[test]
    fn whitespace_is_trimmed() {
        assert_eq!(
            remote_of("  dtolnay/rust-toolchain@stable \n").to_string(),
            "dtolnay/rust-toolchain@stable"
        );
    }

    #[test]
    fn sub_path_and_refs_with_slashes_and_ats() {
        let r = remote_of("github/codeql-action/upload-sarif@v3");
        assert_eq!(r.owner, "github");
        assert_eq!(r.repo, "codeql-action");
        assert_eq!(r.path.as_deref(), Some("upload-sarif"));
        let r = remote_of("o/r/a/b/@release/v1.2");
        assert_eq!(r.path.as_deref(), Some("a/b"));
        assert_eq!(r.git_ref, "release/v1.2");
        assert_eq!(r.to_string(), "o/r/a/b@release/v1.2");
        // Only the first `@` separates: the ref keeps the rest.
        let r = remote_of("o/r@a@b");
        assert_eq!(r.git_ref, "a@b");
        // An empty path after the repository is no path.
        assert_eq!(remote_of("o/r/@v1").path, None);
        let sha = "8e5e7e5ab8b370d6c329ec480221332ada57f0ab";
        assert_eq!(remote_of(&format!("o/r@{sha}")).git_ref, sha);
        for u in [
            "github/codeql-action/upload-sarif@v3",
            "o/r/a/b/@release/v1.2",
            "o/r@a@b",
        ] {
            round_trips(u);
        }
    }

    #[test]
    fn url_forms_keep_scheme_and_host_as_the_base() {
        let r = remote_of("https://code.forgejo.org/actions/setup-forgejo@v2");
        assert_eq!(r.base.as_deref(), Some("https://code.forgejo.org"));
        assert_eq!(r.owner, "actions");
        assert_eq!(r.repo, "setup-forgejo");
        assert_eq!(r.path, None);
        assert_eq!(r.git_ref, "v2");
        assert_eq!(
            r.to_string(),
            "https://code.forgejo.org/actions/setup-forgejo@v2"
        );
        let r = remote_of("http://127.0.0.1:3000/me/tools/lint@main");
        assert_eq!(r.base.as_deref(), Some("http://127.0.0.1:3000"));
        assert_eq!((r.owner.as_str(), r.repo.as_str()), ("me", "tools"));
        assert_eq!(r.path.as_deref(), Some("lint"));
        // Scheme and host are case-insensitive and come back lower-cased.
        let r = remote_of("HTTPS://Code.Forgejo.org/forgejo/upload-artifact@v4");
        assert_eq!(r.base.as_deref(), Some("https://code.forgejo.org"));
        let r = remote_of("http://[::1]:8080/o/r@v1");
        assert_eq!(r.base.as_deref(), Some("http://[::1]:8080"));
        // forgejo-runner's rule: the first segment after the host is the
        // owner, so a path prefix is read as owner/repo/path.
        let r = remote_of("https://host/git/o/r@v1");
        assert_eq!((r.owner.as_str(), r.repo.as_str()), ("git", "o"));
        assert_eq!(r.path.as_deref(), Some("r"));
        for u in [
            "https://code.forgejo.org/actions/setup-forgejo@v2",
            "http://127.0.0.1:3000/me/tools/lint@main",
            "http://[::1]:8080/o/r@v1",
        ] {
            round_trips(u);
        }
    }

    #[test]
    fn clone_urls() {
        let r = remote_of("actions/cache@v4");
        assert_eq!(
            r.clone_url("https://data.forgejo.org/"),
            "https://data.forgejo.org/actions/cache"
        );
        assert_eq!(
            r.clone_url("code.forgejo.org"),
            "https://code.forgejo.org/actions/cache"
        );
        assert_eq!(
            r.clone_url("http://127.0.0.1:9/git"),
            "http://127.0.0.1:9/git/actions/cache"
        );
        let r = remote_of("https://example.org/o/r/sub@v1");
        assert_eq!(r.clone_url("https://github.com"), "https://example.org/o/r");
    }

    #[test]
    fn local_paths_are_normalised_inside_the_workspace() {
        assert_eq!(
            parse_uses("./.github/actions/setup").unwrap(),
            UsesRef::Local(".github/actions/setup".into())
        );
        assert_eq!(
            parse_uses("./a//./b/../c/").unwrap(),
            UsesRef::Local("a/c".into())
        );
        assert_eq!(parse_uses("./").unwrap(), UsesRef::Local(String::new()));
        assert_eq!(parse_uses("./").unwrap().to_string(), "./");
        assert_eq!(parse_uses("./a/../..").ok(), None);
        assert!(
            err("./../x").contains("leaves the workspace"),
            "{}",
            err("./../x")
        );
        for u in ["./.github/actions/setup", "./", "./a/b"] {
            round_trips(u);
        }
        // Other relative or absolute forms are not local actions.
        for u in ["../x", "/abs/action", ".", ".\\win"] {
            assert!(err(u).contains("starts with `./`"), "{u}: {}", err(u));
        }
    }

    #[test]
    fn docker_images() {
        assert_eq!(
            parse_uses("docker://alpine:3.20").unwrap(),
            UsesRef::Docker("alpine:3.20".into())
        );
        round_trips("docker://ghcr.io/o/img@sha256:0123");
        assert!(err("docker://").contains("docker://image"));
    }

    #[test]
    fn a_missing_or_empty_ref_says_the_expected_format() {
        for u in [
            "actions/checkout",
            "actions/checkout@",
            "o/r/sub",
            "https://h/o/r",
        ] {
            let e = err(u);
            assert!(
                e.starts_with(&format!("Invalid `uses: {u}`: "))
                    && e.contains("{owner}/{repo}[/path]@{ref}"),
                "{u}: {e}"
            );
        }
        assert!(err("checkout@v4").contains("repository is missing"));
        assert!(err("/r@v1").contains("starts with `./`"));
        assert!(err("o/@v1").contains("repository is empty"));
        assert!(err("   ").contains("`uses:` is empty"));
    }

    #[test]
    fn reusable_workflows_are_not_steps() {
        for u in [
            "./.github/workflows/build.yml",
            "octo/repo/.github/workflows/ci.yaml@main",
        ] {
            assert!(err(u).contains("reusable workflow"), "{u}: {}", err(u));
        }
        // A directory that happens to be named so is an action.
        assert!(parse_uses("./.github/workflows-actions/x").is_ok());
    }

    #[test]
    fn names_that_could_inject_are_refused() {
        assert!(err("o/r@-uhttp://x").contains("may not start with `-`"));
        assert!(err("o/r@v1 x").contains("space"));
        assert!(err("o?x/r@v1").contains("character `?`"));
        assert!(err("../r@v1").contains("starts with `./`"));
        assert!(err("o/../x@v1").contains("not a valid repository"));
        assert!(err("o/r/../../x@v1").contains("`..`"));
        assert!(err("https://user:pw@host/o/r@v1").contains("credentials"));
        assert!(err("https:///o/r@v1").contains("not a host name"));
        assert!(err("https://h:99999/o/r@v1").contains("port"));
        assert!(err("https://h/o/r%2F@v1").contains("character `%`"));
    }
}

//! The built-in `actions/checkout`: a clone inside the guest (remote source) or
//! a tar of the local working tree streamed into the guest.

use super::archive::{ArchiveWriter, Kind};
use crate::guest::shell_quote;
use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Whether `uses:` names the built-in checkout action.
pub fn is_checkout(uses: &str) -> bool {
    let u = uses.trim().to_ascii_lowercase();
    u == "actions/checkout" || u.starts_with("actions/checkout@")
}

/// The inputs of actions/checkout v4 (its `action.yml`), in its order, for
/// the "Unexpected input(s)" warning.
pub const CHECKOUT_INPUTS: [&str; 20] = [
    "repository",
    "ref",
    "token",
    "ssh-key",
    "ssh-known-hosts",
    "ssh-strict",
    "ssh-user",
    "persist-credentials",
    "path",
    "clean",
    "filter",
    "sparse-checkout",
    "sparse-checkout-cone-mode",
    "fetch-depth",
    "fetch-tags",
    "show-progress",
    "lfs",
    "submodules",
    "set-safe-directory",
    "github-server-url",
];

/// Which submodules the checkout fetches (`submodules: true | recursive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Submodules {
    #[default]
    None,
    /// `true`: the top-level submodules.
    Top,
    /// `recursive`: submodules of submodules too.
    Recursive,
}

impl Submodules {
    /// actions/checkout's reading: `recursive` or `true` (any case), else none.
    pub fn parse(value: Option<&str>) -> Self {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            Some("recursive") => Submodules::Recursive,
            Some("true") => Submodules::Top,
            _ => Submodules::None,
        }
    }
}

/// What the remote checkout script needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCheckout {
    /// Clone URL without credentials.
    pub url: String,
    /// Commit to check out, if known.
    pub sha: Option<String>,
    /// Ref to fetch (`refs/heads/main`, a tag, a branch name); empty = remote HEAD.
    pub git_ref: String,
    /// Absolute destination.
    pub dest: String,
    /// 0 = full history of all branches and tags (as actions/checkout).
    pub fetch_depth: u32,
    /// `fetch-tags: true`: tags too when `fetch_depth` is not 0.
    pub fetch_tags: bool,
    pub clean: bool,
    pub submodules: Submodules,
    /// `lfs: true`: Git LFS files are downloaded (the guest needs git-lfs).
    pub lfs: bool,
    /// Absolute path of the uploaded 0600 git config that carries the auth header.
    pub auth_config: Option<String>,
}

/// `https://host/owner/repo.git` from the server URL and `owner/repo`.
pub fn clone_url(server_url: &str, repository: &str) -> String {
    let repo = repository.trim_end_matches(".git");
    format!("{}/{}.git", server_url.trim_end_matches('/'), repo)
}

/// Standard base64 (RFC 4648) with padding.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The `Authorization` header value for a token (as actions/checkout sends it).
pub fn auth_header_value(token: &str) -> String {
    format!(
        "basic {}",
        base64(format!("x-access-token:{token}").as_bytes())
    )
}

/// The host name of a server URL (`https://forge.example:3000/` → `forge.example`).
fn url_host(server_url: &str) -> Option<&str> {
    let rest = server_url.split_once("://").map_or(server_url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

/// A git config file that adds the header for `server_url` only (so the token
/// reaches submodules and LFS objects on the same forge and nothing else), and,
/// as actions/checkout does, fetches `git@host:` (SSH) URLs of that forge over
/// its HTTP(S) URL instead.
pub fn auth_config(server_url: &str, token: &str) -> String {
    let base = server_url.trim_end_matches('/');
    let mut s = format!(
        "[http \"{base}/\"]\n\textraheader = AUTHORIZATION: {}\n",
        auth_header_value(token)
    );
    if let Some(host) = url_host(base).filter(|h| !h.contains(['"', '\\', '\n'])) {
        s.push_str(&format!(
            "[url \"{base}/\"]\n\tinsteadOf = git@{host}:\n\tinsteadOf = ssh://git@{host}/\n"
        ));
    }
    s
}

/// The message of the checkout step when `lfs: true` meets a guest without git-lfs.
pub const NO_GIT_LFS: &str = "Solstice: `lfs: true` needs Git LFS in the guest, and git-lfs is not installed: install git-lfs in the image (Debian/Ubuntu: apt-get install git-lfs), or remove `lfs: true`";
/// The message of the checkout step in a guest without git.
pub const NO_GIT: &str = "Solstice: the checkout needs git in the guest, and git is not installed: install git in the image";

/// The POSIX script (run with `sh -e`) that clones into `dest`. The token never
/// appears here: git reads it through `include.path` from the uploaded file
/// (`git -c include.path=…` for submodules, which git hands to the clones it
/// starts), and both the include and the file are removed when the script exits.
pub fn remote_script(c: &RemoteCheckout) -> String {
    let q = |s: &str| shell_quote(s);
    let depth = if c.fetch_depth == 0 {
        String::new()
    } else {
        format!("--depth={}", c.fetch_depth)
    };
    let mut s = String::new();
    s.push_str("# Generated by Solstice: built-in actions/checkout.\n");
    // First of all: whatever happens next, the token leaves the guest's disk.
    if let Some(auth) = &c.auth_config {
        s.push_str(&format!(
            "solstice_repo=\n\
             solstice_cleanup() {{ if [ -n \"$solstice_repo\" ]; then git -C \"$solstice_repo\" config --local --unset-all include.path >/dev/null 2>&1; fi; rm -f {a}; }}\n\
             trap solstice_cleanup EXIT\n",
            a = q(auth)
        ));
    }
    s.push_str(&format!(
        "if ! command -v git >/dev/null 2>&1; then echo {} >&2; exit 1; fi\n",
        q(NO_GIT)
    ));
    if c.lfs {
        s.push_str(&format!(
            "if ! git lfs version >/dev/null 2>&1; then echo {} >&2; exit 1; fi\n",
            q(NO_GIT_LFS)
        ));
    }
    s.push_str(&format!("dest={}\n", q(&c.dest)));
    s.push_str("mkdir -p \"$dest\"\ncd \"$dest\"\n");
    s.push_str("if [ ! -d .git ]; then git init -q . >/dev/null 2>&1 || git init -q .; fi\n");
    if c.clean {
        s.push_str(
            "if git rev-parse --verify -q HEAD >/dev/null 2>&1; then git clean -ffdxq && git reset -q --hard HEAD; fi\n",
        );
        if c.submodules != Submodules::None {
            s.push_str(
                "git submodule foreach --quiet --recursive 'git clean -ffdxq && git reset -q --hard HEAD' >/dev/null 2>&1 || true\n",
            );
        }
    }
    s.push_str("git remote remove origin >/dev/null 2>&1 || true\n");
    s.push_str(&format!("git remote add origin {}\n", q(&c.url)));
    if let Some(auth) = &c.auth_config {
        s.push_str(&format!(
            "git config --local include.path {}\nsolstice_repo=$(pwd)\n",
            q(auth)
        ));
    }
    if c.lfs {
        s.push_str("git lfs install --local >/dev/null\n");
    }
    let tags = if c.fetch_tags && c.fetch_depth != 0 {
        "--tags"
    } else {
        "--no-tags"
    };
    let fetch = format!("git -c protocol.version=2 fetch {tags} --prune {depth} origin");
    if c.fetch_depth == 0 {
        // As actions/checkout: the whole history of every branch and every tag.
        s.push_str(&format!(
            "{fetch} '+refs/heads/*:refs/remotes/origin/*' '+refs/tags/*:refs/tags/*'\n"
        ));
    }
    let git_ref = c.git_ref.as_str();
    let branch = git_ref
        .strip_prefix("refs/heads/")
        .map(str::to_string)
        .or_else(|| {
            (!git_ref.is_empty() && !git_ref.starts_with("refs/")).then(|| git_ref.to_string())
        });
    let fetch_ref = if git_ref.is_empty() { "HEAD" } else { git_ref };
    match &c.sha {
        Some(sha) => {
            let fetch_sha = format!(
                "if ! {fetch} {sha}; then echo 'Fetching the commit failed; fetching the ref instead' >&2; {fetch} {r}; fi",
                sha = q(sha),
                r = q(fetch_ref)
            );
            if c.fetch_depth == 0 {
                s.push_str(&format!(
                    "if ! git rev-parse --verify -q {}^{{commit}} >/dev/null; then {fetch_sha}; fi\n",
                    q(sha)
                ));
            } else {
                s.push_str(&fetch_sha);
                s.push('\n');
            }
            s.push_str(&format!("git checkout -q --force --detach {}\n", q(sha)));
        }
        None => {
            s.push_str(&format!("{fetch} {}\n", q(fetch_ref)));
            s.push_str("git checkout -q --force --detach FETCH_HEAD\n");
        }
    }
    if let Some(b) = branch {
        s.push_str(&format!("git checkout -q -B {}\n", q(&b)));
    }
    if c.submodules != Submodules::None {
        let recursive = if c.submodules == Submodules::Recursive {
            " --recursive"
        } else {
            ""
        };
        let include = c
            .auth_config
            .as_ref()
            .map(|a| format!("-c include.path={} ", q(a)))
            .unwrap_or_default();
        // Relative URLs in .gitmodules resolve against origin (the forge's
        // URL); the header in the include reaches the ones on the same forge.
        s.push_str(&format!("git submodule sync{recursive}\n"));
        s.push_str(&format!(
            "git {include}-c protocol.version=2 submodule update --init --force{recursive} {depth}\n"
        ));
    }
    s.push_str("git log -1 --format='HEAD is now at %h %s'\n");
    s
}

/// The probe of the checkout step: prints `solstice-git=yes` where the guest
/// has git. Without git the repository is fetched on the host ([`host_fetch`]).
pub const GIT_PROBE: &str =
    "if command -v git >/dev/null 2>&1; then echo solstice-git=yes; else echo solstice-git=no; fi";

/// Whether `repository` is a plain `owner/name` (letters, digits, `.`, `-`,
/// `_`; not `.` or `..`): the only form the host-side fetch accepts, so the
/// URL it builds stays a repository of the job's forge.
pub fn plain_repository(repository: &str) -> bool {
    let repo = repository.strip_suffix(".git").unwrap_or(repository);
    let parts: Vec<&str> = repo.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        })
}

/// What a checkout on the host (for a guest without git) fetches.
pub struct HostFetch<'a> {
    /// The job's forge (from the task): the only server the fetch talks to.
    pub server_url: &'a str,
    /// `owner/name` on that forge.
    pub repository: &'a str,
    pub sha: Option<&'a str>,
    /// As [`RemoteCheckout::git_ref`].
    pub git_ref: &'a str,
    pub fetch_depth: u32,
    pub fetch_tags: bool,
    /// Sent as an HTTP header through git's environment, never in argv.
    pub token: Option<&'a str>,
}

impl std::fmt::Debug for HostFetch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostFetch")
            .field("server_url", &self.server_url)
            .field("repository", &self.repository)
            .field("sha", &self.sha)
            .field("git_ref", &self.git_ref)
            .field("fetch_depth", &self.fetch_depth)
            .field("token", &self.token.map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// The git commands of a host-side fetch, in order, as argv after `git -C DIR`
/// (none carries a secret), and which of them is the network fetch that gets
/// the token. Mirrors [`remote_script`]: the same refs, depth and branch.
fn host_fetch_commands(f: &HostFetch<'_>) -> Vec<(Vec<String>, bool)> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut cmds = vec![
        (v(&["init", "-q", "."]), false),
        (
            v(&[
                "remote",
                "add",
                "origin",
                &clone_url(f.server_url, f.repository),
            ]),
            false,
        ),
    ];
    let mut fetch = v(&["-c", "protocol.version=2", "fetch"]);
    fetch.push(if f.fetch_tags && f.fetch_depth != 0 {
        "--tags".into()
    } else {
        "--no-tags".into()
    });
    fetch.push("--prune".into());
    if f.fetch_depth != 0 {
        fetch.push(format!("--depth={}", f.fetch_depth));
    }
    fetch.push("origin".into());
    if f.fetch_depth == 0 {
        let mut all = fetch.clone();
        all.extend(v(&[
            "+refs/heads/*:refs/remotes/origin/*",
            "+refs/tags/*:refs/tags/*",
        ]));
        cmds.push((all, true));
    }
    let fetch_ref = if f.git_ref.is_empty() {
        "HEAD"
    } else {
        f.git_ref
    };
    let target = match f.sha {
        Some(sha) => {
            // Fetching the commit by id; the ref is the fallback (see `host_fetch`).
            let mut by_sha = fetch.clone();
            by_sha.push(sha.to_string());
            cmds.push((by_sha, true));
            sha.to_string()
        }
        None => {
            let mut by_ref = fetch.clone();
            by_ref.push(fetch_ref.to_string());
            cmds.push((by_ref, true));
            "FETCH_HEAD".to_string()
        }
    };
    cmds.push((
        v(&["checkout", "-q", "--force", "--detach", &target]),
        false,
    ));
    let branch = f
        .git_ref
        .strip_prefix("refs/heads/")
        .map(str::to_string)
        .or_else(|| {
            (!f.git_ref.is_empty() && !f.git_ref.starts_with("refs/"))
                .then(|| f.git_ref.to_string())
        });
    if let Some(b) = branch {
        cmds.push((v(&["checkout", "-q", "-B", &b]), false));
    }
    cmds
}

/// Runs `git -C dir ARGS` on the host, isolated from the host's git
/// configuration (no system or global config, so no credential helper, URL
/// rewrite, hook path or LFS filter of the host's user applies), never
/// prompting, and allowed to speak only the forge URL's own protocol. The
/// token goes to git as `http.<forge>/.extraheader` through
/// `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_0`/`GIT_CONFIG_VALUE_0` (git 2.31 and
/// later): it is in neither argv nor any file. Returns stdout, or stderr as
/// the error.
async fn host_git(
    dir: &Path,
    args: &[String],
    server_url: &str,
    token: Option<&str>,
) -> Result<String, HostGitError> {
    let scheme = server_url
        .split_once("://")
        .map_or("https", |(s, _)| s)
        .to_ascii_lowercase();
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("-C").arg(dir).args(args);
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_CONFIG",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
        "GIT_NAMESPACE",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_PROXY_COMMAND",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ALLOW_PROTOCOL", &scheme)
        .env("GIT_LFS_SKIP_SMUDGE", "1");
    if let Some(t) = token {
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env(
                "GIT_CONFIG_KEY_0",
                format!("http.{}/.extraheader", server_url.trim_end_matches('/')),
            )
            .env(
                "GIT_CONFIG_VALUE_0",
                format!("AUTHORIZATION: {}", auth_header_value(t)),
            );
    }
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = cmd.output().await.map_err(HostGitError::Spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HostGitError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Why one `git` on the runner host failed.
#[derive(Debug, thiserror::Error)]
pub enum HostGitError {
    #[error("could not run git on the runner host: {0} (install git there)")]
    Spawn(std::io::Error),
    /// git's stderr.
    #[error("{0}")]
    Failed(String),
}

/// Why [`host_fetch`] failed (the step log says `Fetching … failed: <this>`).
#[derive(Debug, thiserror::Error)]
pub enum HostFetchError {
    /// Fetching the sha failed, and so did fetching the ref instead.
    #[error("git fetch failed: {by_sha}; fetching the ref instead failed too: {by_ref}")]
    Fetch {
        by_sha: HostGitError,
        by_ref: HostGitError,
    },
    /// `git ARGS` failed.
    #[error("git {args} failed: {error}")]
    Git { args: String, error: HostGitError },
    /// Reading the checked-out `HEAD` failed.
    #[error("{0}")]
    Head(HostGitError),
}

/// Fetches the repository into `dir` (an empty directory on the host) and
/// checks it out as [`remote_script`] does in a guest with git: `origin` is
/// the forge's URL without credentials, HEAD is at the sha (or the fetched
/// ref), the branch is set up. Nothing of the token is left in `dir`.
/// Returns the `HEAD is now at …` line.
pub async fn host_fetch(f: &HostFetch<'_>, dir: &Path) -> Result<String, HostFetchError> {
    let cmds = host_fetch_commands(f);
    let fetch_ref = if f.git_ref.is_empty() {
        "HEAD"
    } else {
        f.git_ref
    };
    for (args, network) in &cmds {
        let token = if *network { f.token } else { None };
        match host_git(dir, args, f.server_url, token).await {
            Ok(_) => {}
            // As in the guest: a server that does not serve commits by id
            // gets the ref fetched instead.
            Err(e) if *network && f.sha.is_some_and(|s| args.last().is_some_and(|a| a == s)) => {
                let mut by_ref = args.clone();
                by_ref.pop();
                by_ref.push(fetch_ref.to_string());
                host_git(dir, &by_ref, f.server_url, token)
                    .await
                    .map_err(|by_ref| HostFetchError::Fetch { by_sha: e, by_ref })?;
            }
            Err(error) => {
                return Err(HostFetchError::Git {
                    args: args_shown(args),
                    error,
                });
            }
        }
    }
    host_git(
        dir,
        &[
            "log".into(),
            "-1".into(),
            "--format=HEAD is now at %h %s".into(),
        ],
        f.server_url,
        None,
    )
    .await
    .map(|s| s.trim().to_string())
    .map_err(HostFetchError::Head)
}

/// A private (0700) directory for a host-side fetch, removed when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// `<base>/checkout-<step>-<random>`.
    pub fn create(base: &Path, step: usize) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::create_dir_all(base)?;
        let dir = base.join(format!(
            "checkout-{}-{:016x}",
            step + 1,
            rand::random::<u64>()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(ScratchDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A git command as shown in an error: the subcommand and its options.
fn args_shown(args: &[String]) -> String {
    args.iter()
        .skip_while(|a| *a == "-c" || a.contains('='))
        .take(1)
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The warning lines for the built-in checkout's `with:` (keys lower-cased):
/// unknown inputs (as GitHub words it), and known inputs set to a value that
/// Solstice does not honour. `server_url` is the forge for a remote checkout,
/// `None` for the local tree of `solstice exec`.
pub fn input_warnings(
    with: &indexmap::IndexMap<String, String>,
    server_url: Option<&str>,
) -> Vec<String> {
    let mut out = Vec::new();
    let unexpected: Vec<String> = with
        .keys()
        .filter(|k| !CHECKOUT_INPUTS.contains(&k.as_str()))
        .map(|k| format!("'{k}'"))
        .collect();
    if !unexpected.is_empty() {
        out.push(format!(
            "Unexpected input(s) {}, valid inputs are [{}]",
            unexpected.join(", "),
            CHECKOUT_INPUTS
                .iter()
                .map(|i| format!("'{i}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let get = |k: &str| with.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let set_to = |k: &str, default: &str| get(k).filter(|v| !v.eq_ignore_ascii_case(default));
    let how = if server_url.is_some() {
        "Solstice clones over HTTP(S) with the job token"
    } else {
        "`solstice exec` copies the local tree"
    };
    for k in ["ssh-key", "ssh-known-hosts"] {
        if get(k).is_some() {
            out.push(format!("Input '{k}' is not honoured: {how}"));
        }
    }
    if let Some(v) = set_to("ssh-strict", "true") {
        out.push(format!("Input 'ssh-strict: {v}' is not honoured: {how}"));
    }
    if let Some(v) = set_to("ssh-user", "git") {
        out.push(format!("Input 'ssh-user: {v}' is not honoured: {how}"));
    }
    if server_url.is_some()
        && get("persist-credentials").is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        out.push(
            "Input 'persist-credentials: true' is not honoured: Solstice removes the token from the checkout when the step ends; give later git commands a token yourself"
                .into(),
        );
    }
    if let Some(v) = get("filter") {
        out.push(format!(
            "Input 'filter: {v}' is not honoured: the checkout has every object"
        ));
    }
    if let Some(v) = get("sparse-checkout") {
        out.push(format!(
            "Input 'sparse-checkout: {}' is not honoured: the whole tree is checked out",
            v.replace('\n', " ")
        ));
    }
    if let Some(v) = get("github-server-url") {
        let same = server_url.is_some_and(|s| {
            s.trim_end_matches('/')
                .eq_ignore_ascii_case(v.trim_end_matches('/'))
        });
        if !same {
            out.push(match server_url {
                Some(s) => format!(
                    "Input 'github-server-url: {v}' is not honoured: Solstice clones from the job's forge {s}"
                ),
                None => format!("Input 'github-server-url: {v}' is not honoured: {how}"),
            });
        }
    }
    if server_url.is_none()
        && let Some(r) = get("ref")
    {
        out.push(format!(
            "Input 'ref: {r}' is not honoured: `solstice exec` copies the working tree as it is"
        ));
    }
    out
}

/// The archive of a local tree and what was left out of it.
#[derive(Default)]
pub struct LocalTar {
    /// A ustar archive with pax headers for long names (see
    /// [`super::archive`]), padded to a whole record.
    pub data: Vec<u8>,
    /// Files tar cannot copy (sockets, FIFOs, device files), relative to the
    /// root, with their kind.
    pub skipped: Vec<(String, &'static str)>,
    /// Directories left out because they must not be copied (Solstice's own
    /// state directory), relative to the root.
    pub excluded: Vec<String>,
    /// Submodules (gitlinks) whose directory is empty: not checked out here.
    pub empty_submodules: Vec<String>,
}

impl std::fmt::Debug for LocalTar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTar")
            .field("bytes", &self.data.len())
            .field("skipped", &self.skipped)
            .field("excluded", &self.excluded)
            .field("empty_submodules", &self.empty_submodules)
            .finish()
    }
}

/// Why the local tree could not be archived. Each names the offending file.
#[derive(Debug, thiserror::Error)]
pub enum LocalTreeError {
    #[error("{}: {err}", .path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error(
        "{}: the file changed while it was copied (expected {expected} bytes); stop whatever writes it and try again",
        .path.display()
    )]
    Changed { path: PathBuf, expected: u64 },
    #[error("`git ls-files` failed in {}: {stderr}", .root.display())]
    Git { root: PathBuf, stderr: String },
}

/// Mtime of every entry (the guest unpacks with `tar -m` anyway): the tar
/// crate's deterministic mode uses the same value.
const TREE_MTIME: u64 = 1153704088;

/// A tar of a local tree for the guest. In a git work tree: tracked and
/// untracked-but-not-ignored files plus `.git` (a submodule's or nested
/// repository's directory is copied whole); otherwise everything.
///
/// Entries are plain ustar (a sparse file is written out in full: busybox tar
/// rejects GNU sparse entries) with pax headers for names longer than ustar
/// holds (illumos tar does not read GNU `././@LongLink` entries); owned by
/// uid 0, modes normalised to 0755/0644. Sockets, FIFOs and device files are
/// left out and listed in [`LocalTar::skipped`]; anything under `exclude` (the
/// state directory) is left out and listed in [`LocalTar::excluded`].
pub fn local_tree_tar(root: &Path, exclude: &[PathBuf]) -> Result<LocalTar, LocalTreeError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |err| LocalTreeError::Io { path, err }
    };
    let canonical = std::fs::canonicalize(root).map_err(io(root))?;
    // An exclusion that holds the tree itself would leave nothing: ignore it.
    let exclude: Vec<PathBuf> = exclude
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter(|p| !canonical.starts_with(p))
        .collect();
    let mut t = TreeArchive {
        b: ArchiveWriter::new(),
        root: canonical,
        exclude,
        dirs: BTreeSet::new(),
        out: LocalTar::default(),
    };
    let git_dir = root.join(".git");
    if std::fs::symlink_metadata(&git_dir).is_ok() {
        let ls = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(&t.root)
                .args(["ls-files", "-z"])
                .args(args)
                .output()
                .map_err(io(Path::new("git")))?;
            if !out.status.success() {
                return Err(LocalTreeError::Git {
                    root: root.to_path_buf(),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            Ok(out.stdout)
        };
        // Tracked files with their modes (`MODE SHA STAGE\tPATH`, 160000 is a
        // submodule), then untracked-but-not-ignored ones (bare paths).
        let tracked = ls(&["--stage"])?;
        let others = ls(&["--others", "--exclude-standard"])?;
        let names = tracked
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .filter_map(|line| {
                let tab = line.iter().position(|&b| b == b'\t')?;
                Some((line.starts_with(b"160000 "), &line[tab + 1..]))
            })
            .chain(
                others
                    .split(|&b| b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| (false, n)),
            );
        let mut seen = BTreeSet::new();
        for (gitlink, name) in names {
            let rel = PathBuf::from(std::ffi::OsStr::from_bytes(name));
            // A conflicted file is listed once per stage.
            if !seen.insert(rel.clone()) {
                continue;
            }
            if t.excluded(&rel) {
                continue;
            }
            // Deleted but still tracked files are skipped.
            let Ok(meta) = std::fs::symlink_metadata(t.root.join(&rel)) else {
                continue;
            };
            if gitlink && meta.is_dir() && is_empty_dir(&t.root.join(&rel)) {
                t.out
                    .empty_submodules
                    .push(rel.to_string_lossy().into_owned());
            }
            t.parents(&rel)?;
            t.add(&rel)?;
        }
        t.add(Path::new(".git"))?;
    } else {
        let mut names = read_dir_sorted(&t.root)?;
        for name in names.drain(..) {
            t.add(Path::new(&name))?;
        }
    }
    let mut out = t.out;
    out.data = t.b.finish();
    Ok(out)
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_none())
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<std::ffi::OsString>, LocalTreeError> {
    let err = |err| LocalTreeError::Io {
        path: dir.to_path_buf(),
        err,
    };
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(err)? {
        names.push(e.map_err(err)?.file_name());
    }
    names.sort();
    Ok(names)
}

struct TreeArchive {
    b: ArchiveWriter,
    /// Canonical root: relative paths are joined to it.
    root: PathBuf,
    /// Canonical directories to leave out.
    exclude: Vec<PathBuf>,
    /// Directory entries already written.
    dirs: BTreeSet<PathBuf>,
    out: LocalTar,
}

impl TreeArchive {
    /// Whether `rel` lies in an excluded directory (recorded once per directory).
    fn excluded(&mut self, rel: &Path) -> bool {
        let full = self.root.join(rel);
        let Some(ex) = self.exclude.iter().find(|e| full.starts_with(e)) else {
            return false;
        };
        let shown = ex
            .strip_prefix(&self.root)
            .unwrap_or(ex)
            .to_string_lossy()
            .into_owned();
        if !self.out.excluded.contains(&shown) {
            self.out.excluded.push(shown);
        }
        true
    }

    /// Directory entries for `rel`'s parents that are not written yet.
    fn parents(&mut self, rel: &Path) -> Result<(), LocalTreeError> {
        let mut missing = Vec::new();
        let mut parent = rel.parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            if self.dirs.contains(p) {
                break;
            }
            missing.push(p.to_path_buf());
            parent = p.parent();
        }
        for d in missing.into_iter().rev() {
            self.dirs.insert(d.clone());
            self.write(&d, Kind::Dir, 0o755, None, &[])?;
        }
        Ok(())
    }

    /// Adds `rel` (a directory with everything under it).
    fn add(&mut self, rel: &Path) -> Result<(), LocalTreeError> {
        use std::os::unix::fs::FileTypeExt;
        if self.excluded(rel) {
            return Ok(());
        }
        let full = self.root.join(rel);
        let io = |err| LocalTreeError::Io {
            path: full.clone(),
            err,
        };
        let meta = std::fs::symlink_metadata(&full).map_err(io)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            if self.dirs.insert(rel.to_path_buf()) {
                self.write(rel, Kind::Dir, 0o755, None, &[])?;
            }
            for name in read_dir_sorted(&full)? {
                self.add(&rel.join(name))?;
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&full).map_err(io)?;
            let target = target.as_os_str().as_bytes().to_vec();
            self.write(rel, Kind::Symlink, 0o777, Some(&target), &[])?;
        } else if ft.is_file() {
            use std::io::Read;
            use std::os::unix::fs::PermissionsExt;
            let expected = meta.len();
            let mut data = Vec::new();
            std::fs::File::open(&full)
                .map_err(io)?
                .take(expected.saturating_add(1))
                .read_to_end(&mut data)
                .map_err(io)?;
            if data.len() as u64 != expected {
                return Err(LocalTreeError::Changed {
                    path: full,
                    expected,
                });
            }
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            self.write(rel, Kind::File, mode, None, &data)?;
        } else {
            let kind = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "FIFO"
            } else if ft.is_char_device() || ft.is_block_device() {
                "device file"
            } else {
                "special file"
            };
            self.out
                .skipped
                .push((rel.to_string_lossy().into_owned(), kind));
        }
        Ok(())
    }

    /// Writes one entry (see [`ArchiveWriter::add`]).
    fn write(
        &mut self,
        rel: &Path,
        kind: Kind,
        mode: u32,
        link: Option<&[u8]>,
        data: &[u8],
    ) -> Result<(), LocalTreeError> {
        self.b.add(
            rel.as_os_str().as_bytes(),
            kind,
            mode,
            TREE_MTIME,
            link,
            data,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkout_names() {
        assert!(is_checkout("actions/checkout@v4"));
        assert!(is_checkout("Actions/Checkout@main"));
        assert!(!is_checkout("actions/setup-node@v4"));
        assert!(!is_checkout("actions/checkout-other@v1"));
    }

    #[test]
    fn base64_known_values() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"x-access-token:abc"), "eC1hY2Nlc3MtdG9rZW46YWJj");
    }

    #[test]
    fn script_never_contains_token() {
        let c = RemoteCheckout {
            url: clone_url("https://forge.example/", "acme/w"),
            sha: Some("abc123".into()),
            git_ref: "refs/heads/main".into(),
            dest: "/h/work/w/w".into(),
            fetch_depth: 1,
            fetch_tags: false,
            clean: true,
            submodules: Submodules::None,
            lfs: false,
            auth_config: Some("/h/_temp/_solstice/step-1/auth.gitconfig".into()),
        };
        let s = remote_script(&c);
        assert!(s.contains("https://forge.example/acme/w.git"));
        assert!(s.contains("--depth=1"));
        assert!(s.contains("git checkout -q --force --detach abc123"));
        assert!(s.contains("git checkout -q -B main"));
        assert!(s.contains("include.path /h/_temp/_solstice/step-1/auth.gitconfig"));
        assert!(s.contains("trap solstice_cleanup EXIT"));
        // The trap is set before anything can fail (no git, no git-lfs).
        assert!(s.find("trap solstice_cleanup EXIT").unwrap() < s.find("command -v git").unwrap());
        // No submodules, no LFS unless asked for.
        assert!(!s.contains("submodule"), "{s}");
        assert!(!s.contains("lfs"), "{s}");
        let cfg = auth_config("https://forge.example/", "tok");
        assert!(cfg.starts_with("[http \"https://forge.example/\"]"));
        assert!(!cfg.contains("tok\n"));
    }

    fn remote(submodules: Submodules, lfs: bool, fetch_depth: u32) -> RemoteCheckout {
        RemoteCheckout {
            url: clone_url("https://forge.example", "acme/w"),
            sha: Some("abc123".into()),
            git_ref: "refs/heads/main".into(),
            dest: "/h/w".into(),
            fetch_depth,
            fetch_tags: false,
            clean: true,
            submodules,
            lfs,
            auth_config: Some("/t/auth.gitconfig".into()),
        }
    }

    #[test]
    fn submodules_use_the_auth_include_and_honour_fetch_depth() {
        assert_eq!(Submodules::parse(None), Submodules::None);
        assert_eq!(Submodules::parse(Some("false")), Submodules::None);
        assert_eq!(Submodules::parse(Some("True")), Submodules::Top);
        assert_eq!(
            Submodules::parse(Some(" RECURSIVE ")),
            Submodules::Recursive
        );

        let s = remote_script(&remote(Submodules::Top, false, 1));
        assert!(s.contains("git submodule sync\n"), "{s}");
        assert!(
            s.contains("git -c include.path=/t/auth.gitconfig -c protocol.version=2 submodule update --init --force --depth=1\n"),
            "{s}"
        );
        // The submodules come after the superproject's checkout.
        assert!(s.find("submodule update").unwrap() > s.find("checkout -q --force").unwrap());
        let s = remote_script(&remote(Submodules::Recursive, false, 0));
        assert!(s.contains("git submodule sync --recursive\n"), "{s}");
        assert!(
            s.contains("submodule update --init --force --recursive \n"),
            "{s}"
        );
        assert!(!s.contains("--depth"), "{s}");
        // Full history: every branch and tag, as actions/checkout fetches it.
        assert!(
            s.contains("'+refs/heads/*:refs/remotes/origin/*' '+refs/tags/*:refs/tags/*'"),
            "{s}"
        );
        assert!(
            s.contains("if ! git rev-parse --verify -q abc123^{commit}"),
            "{s}"
        );
    }

    #[test]
    fn lfs_checks_for_git_lfs_before_anything_else() {
        let s = remote_script(&remote(Submodules::None, true, 1));
        let check = s.find("git lfs version").unwrap();
        assert!(check < s.find("git init").unwrap(), "{s}");
        assert!(s.contains(&shell_quote(NO_GIT_LFS)), "{s}");
        let install = s.find("git lfs install --local").unwrap();
        assert!(install < s.find("checkout -q --force").unwrap(), "{s}");
        assert!(NO_GIT_LFS.contains("apt-get install git-lfs"));
        // git itself is checked first of all.
        assert!(s.find(&shell_quote(NO_GIT)).unwrap() < check);
    }

    #[test]
    fn fetch_tags_fetches_tags() {
        let mut c = remote(Submodules::None, false, 1);
        assert!(remote_script(&c).contains("fetch --no-tags"));
        c.fetch_tags = true;
        assert!(remote_script(&c).contains("fetch --tags"));
    }

    #[test]
    fn auth_config_is_scoped_to_the_forge_and_rewrites_its_ssh_urls() {
        let cfg = auth_config("http://10.0.2.2:3000/", "tok");
        assert!(
            cfg.contains("[http \"http://10.0.2.2:3000/\"]\n\textraheader = AUTHORIZATION: basic ")
        );
        assert!(cfg.contains("[url \"http://10.0.2.2:3000/\"]\n\tinsteadOf = git@10.0.2.2:\n\tinsteadOf = ssh://git@10.0.2.2/\n"), "{cfg}");
        assert_eq!(
            url_host("https://u@forge.example:443/x"),
            Some("forge.example")
        );
        assert_eq!(url_host("http://[::1]:8080"), Some("::1"));
        assert_eq!(url_host("https://"), None);
    }

    fn with(pairs: &[(&str, &str)]) -> indexmap::IndexMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unknown_inputs_warn_as_github_does() {
        let w = input_warnings(
            &with(&[("fetch_depth", "0"), ("submodules", "true"), ("foo", "x")]),
            Some("https://forge.example"),
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("Unexpected input(s) 'fetch_depth', 'foo', valid inputs are ['repository', 'ref', 'token', 'ssh-key', "), "{w:?}");
        assert!(
            w[0].ends_with("'set-safe-directory', 'github-server-url']"),
            "{w:?}"
        );
        // Every real input, at its default, is silent.
        let defaults = with(&[
            ("repository", "acme/w"),
            ("ref", "main"),
            ("token", "t"),
            ("ssh-strict", "true"),
            ("ssh-user", "git"),
            ("persist-credentials", "false"),
            ("path", "x"),
            ("clean", "false"),
            ("sparse-checkout-cone-mode", "false"),
            ("fetch-depth", "0"),
            ("fetch-tags", "true"),
            ("show-progress", "false"),
            ("lfs", "true"),
            ("submodules", "recursive"),
            ("set-safe-directory", "false"),
            ("github-server-url", "https://forge.example/"),
        ]);
        assert_eq!(
            input_warnings(&defaults, Some("https://forge.example")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn inputs_that_change_the_result_but_are_not_honoured_warn() {
        let w = input_warnings(
            &with(&[
                ("ssh-key", "KEY"),
                ("ssh-user", "forgejo"),
                ("persist-credentials", "true"),
                ("filter", "blob:none"),
                ("sparse-checkout", "src\ndocs"),
                ("github-server-url", "https://other.example"),
            ]),
            Some("https://forge.example"),
        );
        let all = w.join("\n");
        for want in [
            "Input 'ssh-key' is not honoured",
            "Input 'ssh-user: forgejo' is not honoured",
            "Input 'persist-credentials: true' is not honoured",
            "Input 'filter: blob:none' is not honoured",
            "Input 'sparse-checkout: src docs' is not honoured",
            "Input 'github-server-url: https://other.example' is not honoured: Solstice clones from the job's forge https://forge.example",
        ] {
            assert!(all.contains(want), "{want}: {all}");
        }
        assert!(!all.contains("KEY"), "{all}");
        // The local tree: `ref` cannot be honoured.
        let w = input_warnings(&with(&[("ref", "v1")]), None);
        assert_eq!(
            w,
            vec![
                "Input 'ref: v1' is not honoured: `solstice exec` copies the working tree as it is"
                    .to_string()
            ]
        );
    }

    /// (type byte, path, link, size) of every entry, pax headers resolved.
    fn entries(data: &[u8]) -> Vec<(u8, String, Option<String>, u64)> {
        let mut a = tar::Archive::new(data);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.header().entry_type().as_byte(),
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.link_name()
                        .unwrap()
                        .map(|l| l.to_string_lossy().into_owned()),
                    e.size(),
                )
            })
            .collect()
    }

    /// Raw type bytes of every header block, pax and GNU extension headers included.
    fn raw_types(data: &[u8]) -> Vec<u8> {
        let mut a = tar::Archive::new(data);
        a.set_ignore_zeros(false);
        let mut out = Vec::new();
        let mut off = 0usize;
        while off + 512 <= data.len() {
            let h = tar::Header::from_byte_slice(&data[off..off + 512]);
            if data[off..off + 512].iter().all(|&b| b == 0) {
                break;
            }
            out.push(h.entry_type().as_byte());
            let size = h.entry_size().unwrap();
            off += 512 + size.div_ceil(512) as usize * 512;
        }
        out
    }

    #[test]
    fn ordinary_trees_are_plain_ustar() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a.txt"), "hello\n").unwrap();
        std::fs::write(root.join("sub/run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            root.join("sub/run.sh"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        // Sparse: 1 MiB hole, 5 bytes, another hole.
        let f = std::fs::File::create(root.join("disk.img")).unwrap();
        f.set_len(3 << 20).unwrap();
        {
            use std::io::{Seek, Write};
            let mut f = f;
            f.seek(std::io::SeekFrom::Start(1 << 20)).unwrap();
            f.write_all(b"DATA!").unwrap();
        }
        std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
        let fifo = root.join("pipe");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let _sock = std::os::unix::net::UnixListener::bind(root.join("qmp.sock")).unwrap();
        // A state directory inside the tree, with a live socket in it.
        std::fs::create_dir_all(root.join("state/jobs/j1")).unwrap();
        let _sock2 =
            std::os::unix::net::UnixListener::bind(root.join("state/jobs/j1/qmp.sock")).unwrap();
        // Long names: a 150-byte file name and a deep 300-byte path, and a long link target.
        let long_name = "n".repeat(150);
        std::fs::write(root.join(&long_name), "long").unwrap();
        let deep = (0..6)
            .map(|i| format!("{i}{}", "d".repeat(49)))
            .collect::<Vec<_>>()
            .join("/");
        std::fs::create_dir_all(root.join(&deep)).unwrap();
        std::fs::write(root.join(&deep).join("f"), "deep").unwrap();
        let target = format!("{deep}/f");
        std::os::unix::fs::symlink(&target, root.join("deeplink")).unwrap();

        let exclude = vec![dir.path().join("tree/./state")];
        let t = local_tree_tar(&root, &exclude).unwrap();
        assert_eq!(t.excluded, vec!["state".to_string()]);
        let mut skipped = t.skipped.clone();
        skipped.sort();
        assert_eq!(
            skipped,
            vec![
                ("pipe".to_string(), "FIFO"),
                ("qmp.sock".to_string(), "socket")
            ]
        );
        // Every header is plain ustar or pax (see archive::inspect).
        crate::executor::archive::inspect::headers(&t.data);
        let types = raw_types(&t.data);
        assert!(!types.contains(&b'S'), "GNU sparse entry: {types:?}");
        assert!(
            !types.contains(&b'L') && !types.contains(&b'K'),
            "GNU long name: {types:?}"
        );
        assert!(
            types.contains(&b'x'),
            "no pax header for the long names: {types:?}"
        );
        // Every header is ustar (magic "ustar\0", version "00").
        let e = entries(&t.data);
        let find = |p: &str| e.iter().find(|x| x.1.trim_end_matches('/') == p).cloned();
        assert_eq!(find("disk.img").map(|x| (x.0, x.3)), Some((b'0', 3 << 20)));
        assert_eq!(find("a.txt").map(|x| x.0), Some(b'0'));
        assert_eq!(
            find("link").map(|x| (x.0, x.2)),
            Some((b'2', Some("a.txt".into())))
        );
        assert_eq!(find(&long_name).map(|x| x.3), Some(4));
        assert_eq!(find(&format!("{deep}/f")).map(|x| x.3), Some(4));
        assert_eq!(find("deeplink").and_then(|x| x.2), Some(target.clone()));
        assert!(
            find("state").is_none() && !e.iter().any(|x| x.1.starts_with("state/")),
            "{e:?}"
        );
        assert!(find("pipe").is_none() && find("qmp.sock").is_none());
        // The sparse file's content is all there, holes as zeros.
        let mut a = tar::Archive::new(t.data.as_slice());
        for entry in a.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_str() == Some("disk.img") {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut buf).unwrap();
                assert_eq!(buf.len(), 3 << 20);
                assert_eq!(&buf[1 << 20..(1 << 20) + 5], b"DATA!");
                assert!(buf[..1 << 20].iter().all(|&b| b == 0));
            }
            let h = entry.header();
            assert!(h.as_ustar().is_some(), "not ustar: {:?}", entry.path());
            assert_eq!(h.uid().unwrap(), 0);
            let mode = h.mode().unwrap();
            assert!(mode == 0o644 || mode == 0o755 || mode == 0o777, "{mode:o}");
        }
        assert_eq!(find("sub/run.sh").map(|x| x.0), Some(b'0'));
    }

    #[test]
    fn git_trees_skip_sockets_and_the_state_directory_too() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let git = |args: &[&str]| {
            let st = std::process::Command::new("git")
                .arg("-C")
                .arg(root)
                .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
                .args(args)
                .output()
                .unwrap();
            assert!(
                st.status.success(),
                "{}",
                String::from_utf8_lossy(&st.stderr)
            );
        };
        git(&["init", "-q"]);
        std::fs::write(root.join(".gitignore"), "*.log\n").unwrap();
        std::fs::write(root.join("tracked.txt"), "t\n").unwrap();
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "init"]);
        std::fs::write(root.join("build.log"), "ignored\n").unwrap();
        std::fs::create_dir_all(root.join(".solstice/jobs")).unwrap();
        std::fs::write(root.join(".solstice/state.db"), "db").unwrap();
        let _s =
            std::os::unix::net::UnixListener::bind(root.join(".solstice/jobs/qmp.sock")).unwrap();
        let _s2 = std::os::unix::net::UnixListener::bind(root.join("untracked.sock")).unwrap();
        // git's fsmonitor daemon keeps a socket in .git.
        let _s3 = std::os::unix::net::UnixListener::bind(root.join(".git/fsmonitor--daemon.ipc"))
            .unwrap();
        let t = local_tree_tar(root, &[root.join(".solstice")]).unwrap();
        let e = entries(&t.data);
        let names: Vec<_> = e
            .iter()
            .map(|x| x.1.trim_end_matches('/').to_string())
            .collect();
        assert!(names.contains(&"tracked.txt".to_string()), "{names:?}");
        assert!(names.contains(&".gitignore".to_string()), "{names:?}");
        assert!(names.contains(&".git/HEAD".to_string()), "{names:?}");
        assert!(
            !names.iter().any(|n| n.starts_with(".solstice")),
            "{names:?}"
        );
        assert!(!names.contains(&"build.log".to_string()), "{names:?}");
        assert_eq!(t.excluded, vec![".solstice".to_string()]);
        let mut skipped: Vec<_> = t.skipped.iter().map(|s| s.0.clone()).collect();
        skipped.sort();
        // git does not list sockets among untracked files; the one in .git is skipped.
        assert_eq!(skipped, vec![".git/fsmonitor--daemon.ipc"]);
        assert!(!names.contains(&"untracked.sock".to_string()), "{names:?}");
    }

    #[test]
    fn host_fetch_mirrors_the_guest_script_without_the_token_in_argv() {
        let f = HostFetch {
            server_url: "https://forge.example/",
            repository: "acme/w",
            sha: Some("abc123"),
            git_ref: "refs/heads/main",
            fetch_depth: 1,
            fetch_tags: false,
            token: Some("tok-secret"),
        };
        let cmds = host_fetch_commands(&f);
        let shown: Vec<String> = cmds.iter().map(|(a, _)| a.join(" ")).collect();
        assert_eq!(
            shown,
            vec![
                "init -q .",
                "remote add origin https://forge.example/acme/w.git",
                "-c protocol.version=2 fetch --no-tags --prune --depth=1 origin abc123",
                "checkout -q --force --detach abc123",
                "checkout -q -B main",
            ]
        );
        // Only the fetch gets the header.
        assert_eq!(
            cmds.iter().map(|(_, net)| *net).collect::<Vec<_>>(),
            vec![false, false, true, false, false]
        );
        let all = shown.join(" ");
        assert!(
            !all.contains("tok-secret") && !all.contains(&base64(b"x-access-token:tok-secret"))
        );
        assert!(!format!("{f:?}").contains("tok-secret"));
        // Full history: every branch and tag first, as in the guest.
        let f = HostFetch {
            fetch_depth: 0,
            sha: None,
            git_ref: "v1",
            ..f
        };
        let shown: Vec<String> = host_fetch_commands(&f)
            .iter()
            .map(|(a, _)| a.join(" "))
            .collect();
        assert_eq!(
            shown[2],
            "-c protocol.version=2 fetch --no-tags --prune origin +refs/heads/*:refs/remotes/origin/* +refs/tags/*:refs/tags/*"
        );
        assert_eq!(
            shown[3],
            "-c protocol.version=2 fetch --no-tags --prune origin v1"
        );
        assert_eq!(shown[4], "checkout -q --force --detach FETCH_HEAD");
        assert_eq!(shown[5], "checkout -q -B v1");
    }

    #[test]
    fn only_plain_owner_name_repositories_are_fetched_on_the_host() {
        for ok in ["acme/w", "Acme-1/w.x_y", "acme/w.git"] {
            assert!(plain_repository(ok), "{ok}");
        }
        for bad in [
            "acme",
            "a/b/c",
            "../x",
            "acme/..",
            "/acme/w",
            "acme/w/",
            "a@evil.example/w",
            "acme/w?x=1",
            "acme/w#f",
            "acme/ w",
            "",
        ] {
            assert!(!plain_repository(bad), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = local_tree_tar(&dir.path().join("missing"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
        // An unreadable file (root reads everything: then there is no error to see).
        use std::os::unix::fs::PermissionsExt;
        let f = dir.path().join("secret.bin");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
        if std::fs::File::open(&f).is_ok() {
            return;
        }
        let err = local_tree_tar(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("secret.bin"), "{err}");
    }
}

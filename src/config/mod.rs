//! Configuration: one TOML file. Parse (serde, raw structs) → validate → the
//! runtime types below, which have no meaningful `Option`s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod cidr;
mod debug_ssh;
mod error;
mod github;
mod parse;
pub mod raw;
mod search;
mod validate;

pub use cidr::Cidr;
pub use error::{ConfigError, ConfigErrors, ConfigWarning, ErrorKind, Position};
pub use search::{
    ConfigSource, FoundConfig, SearchError, find_config, find_config_with, search_order,
};

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub qemu: QemuConfig,
    /// Images by name, in file order is not significant.
    pub images: BTreeMap<String, ImageConfig>,
    /// Forges to serve with `solstice run`, by section name.
    pub forges: BTreeMap<String, ForgeConfig>,
    /// `[actions]`.
    pub actions: ActionsConfig,
    /// `[cache]`.
    pub cache: CacheConfig,
    /// `[debug_ssh]`: the gateway for debug SSH into failed jobs' VMs;
    /// `None` (no section): no gateway, and no forge may keep a VM.
    pub debug_ssh: Option<DebugSshConfig>,
    /// What works but probably not as meant, in file order (see
    /// [`ConfigWarning`]); `check-config`, `doctor` and `solstice run` print them.
    pub warnings: Vec<ConfigWarning>,
}

/// One `[forges.<name>]` section: a Forgejo or Gitea instance, or a GitHub
/// repository, organisation or enterprise, to take jobs from.
#[derive(Debug, Clone)]
pub struct ForgeConfig {
    /// The section name; keys the stored credentials.
    pub name: String,
    /// Instance URL (`https://codeberg.org`, or with a sub-path), no trailing
    /// `/`. For GitHub: the repository, organisation or enterprise URL
    /// (`https://github.com/owner/repo`), no trailing `/`.
    pub url: String,
    /// `Some` for `kind = "github"`, with what only GitHub needs; `None` for
    /// Forgejo and Gitea.
    pub github: Option<GithubForge>,
    pub credentials: CredentialSource,
    /// Runner name shown in the forge's UI.
    pub runner_name: String,
    /// Label names declared to the forge; by default every image's labels.
    pub labels: Vec<String>,
    /// Pause between FetchTask calls (GitHub: between the checks for free
    /// slots that need a runner).
    pub fetch_interval: Duration,
    /// Client deadline of one FetchTask call (`Connect-Timeout-Ms`).
    /// Forgejo only; for GitHub it holds the default and is not used.
    pub fetch_timeout: Duration,
    /// `[forges.<name>.debug_ssh]`: which of this forge's failed jobs may
    /// keep their VM for debug SSH (off by default).
    pub debug_ssh: ForgeDebugSsh,
}

/// The events whose failed jobs may be kept when a forge lists none: a
/// push, a pull request (forks are refused separately) and a manual run.
/// Events that anyone can cause (`issue_comment`, `issues`, …) must be
/// listed explicitly.
pub const DEFAULT_DEBUG_SSH_EVENTS: &[&str] = &["push", "pull_request", "workflow_dispatch"];

/// The longest debug window, and the default: ADR-003's 30 minutes.
pub const DEBUG_SSH_MAX_TTL: Duration = Duration::from_secs(30 * 60);

/// `[debug_ssh]`: the host's debug SSH gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugSshConfig {
    /// Where the gateway listens (`listen`, for example `0.0.0.0:2222`).
    pub listen: std::net::SocketAddr,
    /// The host name users connect to, printed in the job log
    /// (`public_host`; default: this host's name).
    pub public_host: String,
    /// The port printed in the job log (`public_port`; default: `listen`'s).
    pub public_port: u16,
    /// How long a failed job's VM is kept, from arming (`ttl_secs`; default
    /// and maximum [`DEBUG_SSH_MAX_TTL`]). Never renewed.
    pub ttl: Duration,
    /// VMs kept for debugging at once on this host (`max_held`, default 1).
    pub max_held: u32,
    /// A session without traffic for this long is closed
    /// (`idle_timeout_secs`, default 600).
    pub idle_timeout: Duration,
}

/// `[forges.<name>.debug_ssh]`: which failed jobs of a forge may be kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForgeDebugSsh {
    /// Off unless set (`enabled`); needs `[debug_ssh]`.
    pub enabled: bool,
    /// `owner/name` or `owner/*` patterns (`repositories`); empty: every
    /// repository of the forge.
    pub repositories: Vec<String>,
    /// Events whose failed jobs may be kept (`events`; default
    /// [`DEFAULT_DEBUG_SSH_EVENTS`]: events whose actor is someone with
    /// push access or the pull request's author, never a commenter). An
    /// empty list (only made in code) means the default too.
    pub events: Vec<String>,
    /// Pull requests from forks may be kept too (`fork_pull_requests`,
    /// default false).
    pub fork_pull_requests: bool,
    /// Jobs that received secrets (other than the job token) may be kept
    /// (`with_secrets`, default false).
    pub with_secrets: bool,
    /// A shorter window than the host's `ttl_secs` (`ttl_secs`).
    pub ttl: Option<Duration>,
}

/// The GitHub side of a `[forges.<name>]` section with `kind = "github"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubForge {
    /// Where runners are registered: read from the section's `url`.
    pub scope: GithubScope,
    /// REST API base without a trailing `/`: `https://api.github.com` for
    /// github.com, `https://api.<host>` for `*.ghe.com`,
    /// `https://<host>/api/v3` for GitHub Enterprise Server, or `api_url`.
    pub api_url: String,
    /// The runner group JIT runners join (`runner_group_id`, default 1, the
    /// default group).
    pub runner_group_id: u64,
    /// The runner version advertised to the broker (`runner_version`).
    pub runner_version: String,
}

/// Where a GitHub forge's runners are registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GithubScope {
    /// `https://<host>/<owner>/<repo>`: runners of one repository.
    Repository {
        /// The owner (user or organisation).
        owner: String,
        /// The repository name.
        repo: String,
    },
    /// `https://<host>/<org>`: runners of an organisation.
    Organization(String),
    /// `https://<host>/enterprises/<e>`: runners of an enterprise.
    Enterprise(String),
}

impl GithubScope {
    /// The REST path of the scope's runner endpoints, relative to the API
    /// base: `repos/<o>/<r>`, `orgs/<org>` or `enterprises/<e>` (no slash
    /// at either end).
    pub fn rest_path(&self) -> String {
        match self {
            GithubScope::Repository { owner, repo } => format!("repos/{owner}/{repo}"),
            GithubScope::Organization(org) => format!("orgs/{org}"),
            GithubScope::Enterprise(e) => format!("enterprises/{e}"),
        }
    }
}

/// How Solstice obtains a forge's runner credentials. Every variant names a
/// file, so that no secret sits in the TOML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// A registration token (UI or API), exchanged once through `Register`.
    RegistrationTokenFile(PathBuf),
    /// Forgejo's offline shared secret (`forgejo-cli actions register
    /// --secret`): the UUID is derived from it and the token is the secret.
    SecretFile(PathBuf),
    /// A ready JSON file with `uuid` and `token` (forgejo-runner's `.runner`
    /// file has this shape).
    RunnerFile(PathBuf),
    /// GitHub: a GitHub App installed on the repository, organisation or
    /// enterprise; installation tokens are minted with its private key.
    GithubApp {
        /// The App's id (positive).
        app_id: u64,
        /// The id of its installation on the account (positive).
        installation_id: u64,
        /// The App's private key (PEM).
        private_key_file: PathBuf,
    },
    /// GitHub: a fine-grained token or classic PAT, read from this file.
    GithubToken(PathBuf),
}

/// `[actions]`: where actions come from and the host's cache of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionsConfig {
    /// Where `owner/repo@ref` comes from in `solstice exec`: an `http(s)`
    /// URL without a trailing `/`.
    pub default_url: String,
    /// `host` or `host:port` entries, checked.
    pub allowed_hosts: Vec<String>,
    /// Bound on the cache's size in bytes.
    pub cache_max_bytes: u64,
}

impl Default for ActionsConfig {
    /// What an absent `[actions]` section means.
    fn default() -> Self {
        ActionsConfig {
            default_url: raw::DEFAULT_ACTIONS_URL.to_owned(),
            allowed_hosts: Vec::new(),
            cache_max_bytes: raw::DEFAULT_ACTIONS_CACHE_MAX_MIB.unsigned_abs() << 20,
        }
    }
}

impl ActionsConfig {
    /// The cache directory under a state directory.
    pub fn cache_dir(state_dir: &Path) -> PathBuf {
        state_dir.join("actions")
    }

    /// The host (`host:port`, as an `allowed_hosts` entry) of an `http(s)`
    /// URL; `None` when it is not one.
    pub fn host_entry_of(url: &str) -> Option<String> {
        let u = crate::actions::policy::HttpUrl::parse(url).ok()?;
        Some(crate::actions::policy::host_port(&u))
    }

    /// The settings of the action cache under `state_dir`. `operator_urls`
    /// are URLs the operator configured (forge URLs, the default actions
    /// URL or `--actions-url`): their hosts are added to `allowed_hosts`,
    /// so they may be fetched from even on private addresses.
    pub fn cache_settings<'a>(
        &self,
        state_dir: &Path,
        operator_urls: impl IntoIterator<Item = &'a str>,
    ) -> crate::actions::CacheSettings {
        let mut allowed_hosts = self.allowed_hosts.clone();
        for url in operator_urls {
            if let Some(h) = Self::host_entry_of(url)
                && !allowed_hosts.contains(&h)
            {
                allowed_hosts.push(h);
            }
        }
        crate::actions::CacheSettings {
            dir: Self::cache_dir(state_dir),
            max_bytes: self.cache_max_bytes,
            allowed_hosts,
        }
    }
}

/// `[cache]`: the built-in cache service jobs save to and restore from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Whether jobs get the service.
    pub enabled: bool,
    /// Where entries and their index live.
    pub dir: PathBuf,
    /// Bound on the committed entries' total size in bytes.
    pub max_bytes: u64,
}

impl CacheConfig {
    /// `<state_dir>/cache`, where the cache lives unless `dir` says otherwise.
    pub fn default_dir(state_dir: &Path) -> PathBuf {
        state_dir.join("cache")
    }

    /// The service's settings.
    pub fn settings(&self) -> crate::cache_service::CacheSettings {
        crate::cache_service::CacheSettings {
            dir: self.dir.clone(),
            max_bytes: self.max_bytes,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Where per-job directories (`jobs/<id>/`) and the state database live.
    pub state_dir: PathBuf,
    /// Host-wide maximum number of VMs at once.
    pub max_concurrent_jobs: u32,
    /// On SIGTERM/SIGINT, how long running jobs may go on before they are cancelled.
    pub drain_timeout: Duration,
    /// Host-wide cap on a job's run time (`timeout-minutes` cannot exceed it).
    pub max_job_timeout: Duration,
    /// Address of the Prometheus `/metrics` endpoint; `None` = off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Default runner name shown in the forges' UI.
    pub runner_name: String,
}

/// `forges.<name>.kind`: which protocol a forge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    /// Forgejo or Gitea (their runner API).
    Forgejo,
    /// GitHub or GitHub Enterprise (GitHub's runner protocol).
    Github,
}

impl ForgeKind {
    /// The value as the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Forgejo => "forgejo",
            ForgeKind::Github => "github",
        }
    }
}

impl ForgeConfig {
    /// The forge's kind: GitHub when [`ForgeConfig::github`] is set.
    pub fn kind(&self) -> ForgeKind {
        if self.github.is_some() {
            ForgeKind::Github
        } else {
            ForgeKind::Forgejo
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM where it works (probed with a deadline), TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// `qemu-system-x86_64` binary (name looked up in PATH, or absolute path).
    pub system_binary: PathBuf,
    /// `qemu-img` binary.
    pub img_binary: PathBuf,
    pub accel: AccelChoice,
    /// UEFI firmware code image (read-only), for images with `firmware = "uefi"`.
    pub uefi_code: Option<PathBuf>,
    /// UEFI variable store template, copied per job.
    pub uefi_vars: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestOs {
    Linux,
    Illumos,
}

impl GuestOs {
    /// The value of `RUNNER_OS`.
    pub fn runner_os(self) -> &'static str {
        match self {
            GuestOs::Linux => "Linux",
            GuestOs::Illumos => "illumos",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

/// What a job VM's network reaches (`images.<name>.network`; see
/// docs/how-to/guest-network.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The internet, but not the host's loopback, link-local addresses or the
    /// host's own addresses (and not `network_deny`).
    Outbound,
    /// Nothing outside the guest but `network_allow` and what Solstice
    /// exposes on purpose.
    None,
    /// QEMU's user-mode network as it is: the guest reaches the host's
    /// loopback at 10.0.2.2 and everything the host reaches. Unsafe.
    Unrestricted,
}

impl NetworkMode {
    /// The value as the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Outbound => "outbound",
            NetworkMode::None => "none",
            NetworkMode::Unrestricted => "unrestricted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SeedKind {
    /// cloud-init NoCloud ISO (label `cidata`) on an IDE CD-ROM.
    #[serde(rename = "nocloud")]
    NoCloud,
    /// Raw cpio at LBA 0 for the illumos metadata-agent, as a raw disk.
    #[serde(rename = "metadata-cpio")]
    MetadataCpio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Qcow2,
    Raw,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }

    /// The format of that name (as `qemu-img info` and the config write it).
    pub fn from_name(name: &str) -> Option<ImageFormat> {
        match name {
            "qcow2" => Some(ImageFormat::Qcow2),
            "raw" => Some(ImageFormat::Raw),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImageConfig {
    pub name: String,
    /// Absolute path of the read-only base image.
    pub path: PathBuf,
    pub format: ImageFormat,
    pub os: GuestOs,
    pub firmware: Firmware,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Virtual size of the per-job overlay; `None` keeps the base image's size.
    pub disk_size_gib: Option<u32>,
    pub ssh_user: String,
    pub seed: SeedKind,
    pub boot_timeout: Duration,
    /// Consecutive successful SSH probes required before the guest counts as ready.
    pub readiness_probes: u32,
    /// Delay between readiness probes after the first success.
    pub readiness_probe_interval: Duration,
    /// Labels matched against a job's `runs-on`.
    pub labels: Vec<String>,
    /// At most this many jobs of this image at once (within the host-wide
    /// maximum); `None` = only the host-wide maximum applies.
    pub max_concurrent_jobs: Option<u32>,
    /// The `-cpu` value; `None` = the default for the OS and accelerator
    /// (`crate::vm::argv::cpu_model`).
    pub cpu: Option<String>,
    /// Absolute directories put in front of the guest's `PATH` in every
    /// step (after the job's `GITHUB_PATH` entries).
    pub path_prepend: Vec<String>,
    /// Absolute path of the guest's `node`; `None` = found on `PATH`.
    pub node: Option<String>,
    /// What the guest's network reaches.
    pub network: NetworkMode,
    /// Extra ranges the guest cannot reach (on top of the built-in denials).
    pub network_deny: Vec<Cidr>,
    /// Holes in `network_deny`, and the only destinations of `network = "none"`.
    /// Never re-opens the built-in denials.
    pub network_allow: Vec<Cidr>,
    /// A pull-through registry mirror for the guest's Docker engine,
    /// `http(s)://host[:port]` without a trailing slash; written into the
    /// guest's `/etc/docker/daemon.json` by the NoCloud seed. `None` = none.
    pub registry_mirror: Option<String>,
    /// Guests kept booted and SSH-ready for the next jobs (0: none).
    pub warm: u32,
    /// A warm guest idle longer than this is replaced.
    pub warm_max_idle: Duration,
    /// Guests start by restoring a saved running guest (Linux only).
    pub snapshot: bool,
}

/// How [`parse_str_with`] and [`load_with`] check a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOptions {
    /// Check that image files and UEFI firmware files exist. On by default;
    /// off only to check a config written for another machine (or the
    /// example config).
    pub check_paths: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions { check_paths: true }
    }
}

/// The system-wide config file: the last place searched when no file is
/// given (see [`find_config`]), and where the service's unit points.
pub fn default_config_path() -> PathBuf {
    PathBuf::from("/etc/solstice/solstice.toml")
}

/// Read, parse and validate the config file at `path`, reporting every problem.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(path, &ParseOptions::default())
}

/// [`load`] with options.
pub fn load_with(path: &Path, opts: &ParseOptions) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let (message, fix) = match e.kind() {
            std::io::ErrorKind::NotFound => (
                "the config file does not exist".to_owned(),
                "create it (examples/solstice.toml shows every key) or name another file"
                    .to_owned(),
            ),
            std::io::ErrorKind::InvalidData => (
                "the config file is not UTF-8 text".to_owned(),
                "save it as UTF-8".to_owned(),
            ),
            _ => (
                format!("cannot read the config file: {e}"),
                "check that it is a file and that this user may read it".to_owned(),
            ),
        };
        ConfigErrors {
            errors: vec![ConfigError {
                file: path.to_path_buf(),
                position: None,
                key: None,
                kind: ErrorKind::Io,
                message,
                fix: Some(fix),
            }],
        }
    })?;
    parse_str_with(&text, path, opts)
}

/// Parse and validate config text. `origin` names the file in messages, and
/// relative paths in the text resolve against its directory.
pub fn parse_str(text: &str, origin: &Path) -> Result<Config, ConfigErrors> {
    parse_str_with(text, origin, &ParseOptions::default())
}

/// [`parse_str`] with options.
pub fn parse_str_with(
    text: &str,
    origin: &Path,
    opts: &ParseOptions,
) -> Result<Config, ConfigErrors> {
    let dir = origin.parent().unwrap_or(Path::new(""));
    let base_dir = std::path::absolute(dir)
        .or_else(|_| std::path::absolute("."))
        .unwrap_or_else(|_| PathBuf::from("/"));
    let mut ctx = validate::Ctx {
        file: origin,
        text,
        base_dir,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let config = parse::parse_raw(&mut ctx).and_then(|raw| validate::validate(raw, opts, &mut ctx));
    match config {
        Some(config) if ctx.errors.is_empty() => Ok(config),
        _ => {
            // File order; problems without a place (like "no images") last.
            ctx.errors.sort_by_key(|e| {
                e.position
                    .map_or((usize::MAX, usize::MAX), |p| (p.line, p.column))
            });
            Err(ConfigErrors { errors: ctx.errors })
        }
    }
}

impl Config {
    /// One line for `check-config`: `FILE: OK (2 images: debian, tiny)`.
    pub fn summary(&self, file: &Path) -> String {
        let names: Vec<&str> = self.images.keys().map(String::as_str).collect();
        let noun = if names.len() == 1 { "image" } else { "images" };
        let forges = if self.forges.is_empty() {
            String::new()
        } else {
            let f: Vec<&str> = self.forges.keys().map(String::as_str).collect();
            let noun = if f.len() == 1 { "forge" } else { "forges" };
            format!("; {} {noun}: {}", f.len(), f.join(", "))
        };
        let warnings = match self.warnings.len() {
            0 => String::new(),
            1 => ", 1 warning".to_owned(),
            n => format!(", {n} warnings"),
        };
        format!(
            "{}: OK ({} {noun}: {}{forges}){warnings}",
            file.display(),
            names.len(),
            names.join(", ")
        )
    }
}

/// Check a config file: the summary line if it is valid, every problem if not.
pub fn check_config(path: &Path) -> Result<String, ConfigErrors> {
    check_config_with(path, &ParseOptions::default())
}

/// [`check_config`] with options (`check_paths: false` for
/// `--no-path-checks`).
pub fn check_config_with(path: &Path, opts: &ParseOptions) -> Result<String, ConfigErrors> {
    load_with(path, opts).map(|c| c.summary(path))
}

/// Every key the file accepts, as dotted paths (`daemon.state_dir`,
/// `images.<name>.memory_mib`, `forges.<name>.debug_ssh.enabled`), read
/// from the raw structs, in the order of the reference's sections. Used by tests to
/// keep the reference doc and the example in step with the code.
pub fn known_keys() -> Vec<String> {
    let mut keys = Vec::new();
    for (section, prefix) in [
        (raw::names_of::<raw::RawDaemon>(), "daemon."),
        (raw::names_of::<raw::RawQemu>(), "qemu."),
        (raw::names_of::<raw::RawImage>(), "images.<name>."),
        (raw::names_of::<raw::RawForge>(), "forges.<name>."),
        (
            raw::names_of::<raw::RawForgeDebugSsh>(),
            "forges.<name>.debug_ssh.",
        ),
        (raw::names_of::<raw::RawActions>(), "actions."),
        (raw::names_of::<raw::RawCache>(), "cache."),
        (raw::names_of::<raw::RawDebugSsh>(), "debug_ssh."),
    ] {
        // A sub-table is a section of its own, not a key.
        let tables = ["forges.<name>.debug_ssh"];
        keys.extend(
            section
                .iter()
                .map(|k| format!("{prefix}{k}"))
                .filter(|k| !tables.contains(&k.as_str())),
        );
    }
    keys
}

#[cfg(test)]
mod tests;

//! The file as written: serde structs that mirror the TOML one to one.
//!
//! These structs are the reference manual. Every field has a doc comment, units
//! are in the names, and every default and limit is a named constant next to
//! its field. `docs/reference/config.md` and `examples/solstice.toml` are kept
//! in step with them by tests.
//!
//! Optional keys are `Option<Spanned<_>>` so that validation can point at the
//! line and column of a bad value; the defaults are applied in `validate`.
//! Numbers are read as `i64` so that a negative or huge value gets a range
//! message rather than a serde type error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{AccelChoice, Firmware, ForgeKind, GuestOs, ImageFormat, NetworkMode, SeedKind};

/// An inclusive range of allowed values for a number, with its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Smallest allowed value.
    pub min: i64,
    /// Largest allowed value.
    pub max: i64,
    /// Unit shown in messages, e.g. `MiB`.
    pub unit: &'static str,
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[daemon]`: the runner process itself.
    #[serde(default)]
    pub daemon: RawDaemon,
    /// `[qemu]`: how QEMU is found and started.
    #[serde(default)]
    pub qemu: RawQemu,
    /// `[images.<name>]`: the base images jobs can run on, by name.
    #[serde(default)]
    pub images: BTreeMap<Spanned<String>, Spanned<RawImage>>,
    /// `[forges.<name>]`: Forgejo or Gitea instances, or GitHub
    /// repositories, organisations or enterprises, that `solstice run`
    /// takes jobs from, by name. None is fine for `solstice exec`.
    #[serde(default)]
    pub forges: BTreeMap<Spanned<String>, Spanned<RawForge>>,
    /// `[actions]`: where the actions that steps `uses:` come from, and the
    /// host's cache of them.
    #[serde(default)]
    pub actions: RawActions,
    /// `[cache]`: the built-in cache service that actions/cache in jobs
    /// saves to and restores from.
    #[serde(default)]
    pub cache: RawCache,
    /// `[debug_ssh]`: the gateway through which users log into the VMs of
    /// failed jobs kept for debugging. Absent: no gateway, and no forge
    /// may keep a VM. See `docs/debug-ssh.md`.
    pub debug_ssh: Option<Spanned<RawDebugSsh>>,
}

/// Default of `daemon.state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/solstice";
/// Default of `daemon.max_concurrent_jobs`.
pub const DEFAULT_MAX_CONCURRENT_JOBS: i64 = 2;
/// Allowed range of `daemon.max_concurrent_jobs`.
pub const MAX_CONCURRENT_JOBS: Limit = Limit {
    min: 1,
    max: 1024,
    unit: "jobs",
};

/// `[daemon]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    /// Directory for per-job directories (`jobs/<id>/`) and the state
    /// database. Relative paths resolve against the config file's directory.
    /// Default: [`DEFAULT_STATE_DIR`].
    pub state_dir: Option<Spanned<PathBuf>>,
    /// Host-wide maximum number of job VMs at once. Each TCG guest wants
    /// about one host core. Default: [`DEFAULT_MAX_CONCURRENT_JOBS`]; range:
    /// [`MAX_CONCURRENT_JOBS`].
    pub max_concurrent_jobs: Option<Spanned<i64>>,
    /// On SIGTERM or SIGINT, seconds running jobs may go on before they are
    /// cancelled and reported. Keep the service manager's stop timeout
    /// longer. Default: [`DEFAULT_DRAIN_TIMEOUT_SECS`]; range:
    /// [`DRAIN_TIMEOUT_SECS`].
    pub drain_timeout_secs: Option<Spanned<i64>>,
    /// Host-wide cap on a job's run time in minutes: a job's
    /// `timeout-minutes` cannot exceed it. The forge's own limit (3 h by
    /// default) wins over a longer value. Default:
    /// [`DEFAULT_MAX_JOB_TIMEOUT_MINS`]; range: [`MAX_JOB_TIMEOUT_MINS`].
    pub max_job_timeout_mins: Option<Spanned<i64>>,
    /// Where the Prometheus endpoint (`GET /metrics`) listens: `"host:port"`,
    /// or a bare port for 127.0.0.1. Default: off.
    pub metrics_listen: Option<Spanned<String>>,
    /// Runner name shown in the forges' UI. Default: `solstice-<hostname>`.
    pub runner_name: Option<Spanned<String>>,
}

/// Default of `daemon.drain_timeout_secs`.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: i64 = 600;
/// Allowed range of `daemon.drain_timeout_secs` (0 cancels at once).
pub const DRAIN_TIMEOUT_SECS: Limit = Limit {
    min: 0,
    max: 86400,
    unit: "seconds",
};
/// Default of `daemon.max_job_timeout_mins`: 3 hours, the limit Forgejo and
/// Gitea put on any task (`ENDLESS_TASK_TIMEOUT`), so that the runner, not
/// the forge, ends a long job and says why.
pub const DEFAULT_MAX_JOB_TIMEOUT_MINS: i64 = 180;
/// Allowed range of `daemon.max_job_timeout_mins` (up to a week).
pub const MAX_JOB_TIMEOUT_MINS: Limit = Limit {
    min: 1,
    max: 10080,
    unit: "minutes",
};

/// Default of `qemu.system_binary`.
pub const DEFAULT_SYSTEM_BINARY: &str = "qemu-system-x86_64";
/// Default of `qemu.img_binary`.
pub const DEFAULT_IMG_BINARY: &str = "qemu-img";
/// Default of `qemu.accel`.
pub const DEFAULT_ACCEL: AccelChoice = AccelChoice::Auto;

/// `[qemu]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQemu {
    /// The `qemu-system-x86_64` binary: a bare name is looked up in `PATH`,
    /// a path with a `/` is used as is (relative to the config file's
    /// directory). Default: [`DEFAULT_SYSTEM_BINARY`].
    pub system_binary: Option<Spanned<PathBuf>>,
    /// The `qemu-img` binary, found like `system_binary`.
    /// Default: [`DEFAULT_IMG_BINARY`].
    pub img_binary: Option<Spanned<PathBuf>>,
    /// Accelerator: `"auto"` (KVM if a probe with a deadline boots, TCG
    /// otherwise), `"kvm"` or `"tcg"`. Default: [`DEFAULT_ACCEL`].
    pub accel: Option<Spanned<AccelChoice>>,
    /// UEFI firmware code image (read-only), e.g.
    /// `/usr/share/OVMF/OVMF_CODE.fd`. Required when any image has
    /// `firmware = "uefi"`. No default.
    pub uefi_code: Option<Spanned<PathBuf>>,
    /// UEFI variable store template, copied per job, e.g.
    /// `/usr/share/OVMF/OVMF_VARS.fd`. Required if any image uses UEFI; no default.
    pub uefi_vars: Option<Spanned<PathBuf>>,
}

/// Default of `images.<name>.format`.
pub const DEFAULT_FORMAT: ImageFormat = ImageFormat::Qcow2;
/// Default of `images.<name>.os`.
pub const DEFAULT_OS: GuestOs = GuestOs::Linux;
/// Default of `images.<name>.firmware`.
pub const DEFAULT_FIRMWARE: Firmware = Firmware::Bios;
/// Default of `images.<name>.vcpus`.
pub const DEFAULT_VCPUS: i64 = 2;
/// Allowed range of `images.<name>.vcpus`.
pub const VCPUS: Limit = Limit {
    min: 1,
    max: 64,
    unit: "vCPUs",
};
/// Default of `images.<name>.memory_mib`.
pub const DEFAULT_MEMORY_MIB: i64 = 1024;
/// Allowed range of `images.<name>.memory_mib` (64 MiB to 1 TiB).
pub const MEMORY_MIB: Limit = Limit {
    min: 64,
    max: 1024 * 1024,
    unit: "MiB",
};
/// Allowed range of `images.<name>.disk_size_gib` (up to 16 TiB).
pub const DISK_SIZE_GIB: Limit = Limit {
    min: 1,
    max: 16384,
    unit: "GiB",
};
/// Default of `images.<name>.ssh_user`.
pub const DEFAULT_SSH_USER: &str = "root";
/// Default of `images.<name>.seed`.
pub const DEFAULT_SEED: SeedKind = SeedKind::NoCloud;
/// Default of `images.<name>.boot_timeout_secs`.
pub const DEFAULT_BOOT_TIMEOUT_SECS: i64 = 300;
/// Allowed range of `images.<name>.boot_timeout_secs` (up to one day).
pub const BOOT_TIMEOUT_SECS: Limit = Limit {
    min: 1,
    max: 86400,
    unit: "seconds",
};
/// Default of `images.<name>.readiness_probes`.
pub const DEFAULT_READINESS_PROBES: i64 = 1;
/// Allowed range of `images.<name>.readiness_probes`.
pub const READINESS_PROBES: Limit = Limit {
    min: 1,
    max: 20,
    unit: "probes",
};
/// Default of `images.<name>.readiness_probe_interval_secs`.
pub const DEFAULT_READINESS_PROBE_INTERVAL_SECS: i64 = 3;
/// Allowed range of `images.<name>.readiness_probe_interval_secs`.
pub const READINESS_PROBE_INTERVAL_SECS: Limit = Limit {
    min: 1,
    max: 600,
    unit: "seconds",
};

/// `[images.<name>]`: one base image. The name matches `[a-z0-9][a-z0-9._-]*`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImage {
    /// The read-only base image file. Relative paths resolve against the
    /// config file's directory. Required.
    pub path: Option<Spanned<PathBuf>>,
    /// Disk format of `path`: `"qcow2"` or `"raw"`. Default: [`DEFAULT_FORMAT`].
    pub format: Option<Spanned<ImageFormat>>,
    /// Guest operating system: `"linux"` or `"illumos"`. Sets `RUNNER_OS`
    /// and the shell conventions. Default: [`DEFAULT_OS`].
    pub os: Option<Spanned<GuestOs>>,
    /// Boot firmware: `"bios"` or `"uefi"` (needs `qemu.uefi_code`).
    /// Default: [`DEFAULT_FIRMWARE`].
    pub firmware: Option<Spanned<Firmware>>,
    /// Virtual CPUs. Default: [`DEFAULT_VCPUS`]; range: [`VCPUS`].
    pub vcpus: Option<Spanned<i64>>,
    /// Guest memory in MiB. illumos guests want at least 2048.
    /// Default: [`DEFAULT_MEMORY_MIB`]; range: [`MEMORY_MIB`].
    pub memory_mib: Option<Spanned<i64>>,
    /// Virtual size of the per-job overlay disk in GiB; it must not be
    /// smaller than the base image. Default: the base image's size; range:
    /// [`DISK_SIZE_GIB`].
    pub disk_size_gib: Option<Spanned<i64>>,
    /// User the job's steps run as over SSH. Default: [`DEFAULT_SSH_USER`].
    pub ssh_user: Option<Spanned<String>>,
    /// How the guest gets its SSH key: `"nocloud"` (cloud-init NoCloud ISO)
    /// or `"metadata-cpio"` (illumos metadata-agent). Default: [`DEFAULT_SEED`].
    pub seed: Option<Spanned<SeedKind>>,
    /// Seconds from QEMU start until SSH must be ready. Under TCG illumos
    /// takes minutes. Default: [`DEFAULT_BOOT_TIMEOUT_SECS`]; range:
    /// [`BOOT_TIMEOUT_SECS`].
    pub boot_timeout_secs: Option<Spanned<i64>>,
    /// Consecutive successful SSH probes before the guest counts as ready.
    /// OmniOS needs 2 (cloud-init restarts sshd after it first answers).
    /// Default: [`DEFAULT_READINESS_PROBES`]; range: [`READINESS_PROBES`].
    pub readiness_probes: Option<Spanned<i64>>,
    /// Seconds between readiness probes after the first success.
    /// Default: [`DEFAULT_READINESS_PROBE_INTERVAL_SECS`]; range:
    /// [`READINESS_PROBE_INTERVAL_SECS`].
    pub readiness_probe_interval_secs: Option<Spanned<i64>>,
    /// Labels matched against a job's `runs-on`. Default: the image's name.
    /// Labels may repeat across images. They are names only: an empty
    /// label, one with a `:` (forgejo-runner's `name:docker://image`) or
    /// with spaces around it is an error.
    pub labels: Option<Spanned<Vec<Spanned<String>>>>,
    /// At most this many jobs of this image at once, within
    /// `daemon.max_concurrent_jobs`. Default: no limit of its own; range:
    /// [`MAX_CONCURRENT_JOBS`].
    pub max_concurrent_jobs: Option<Spanned<i64>>,
    /// QEMU CPU model and features (`-cpu`), e.g. `"EPYC-Rome"` or
    /// `"qemu64,+rdrand,-svm"`: a model name, then `,+flag`, `,-flag` or
    /// `,key=value` items, no spaces. Used under both accelerators (`host`
    /// only runs under KVM). Default: by OS and accelerator, see
    /// `crate::vm::argv::default_cpu` (TCG: `qemu64,+rdrand`, illumos
    /// `qemu64,+rdrand,-svm`; KVM: `host,-arch-capabilities,-vmx,-svm`).
    pub cpu: Option<Spanned<String>>,
    /// Directories put in front of the guest's `PATH` in every step, first
    /// searched first, e.g. `["/usr/gnu/bin", "/opt/ooce/bin"]` on OmniOS
    /// (non-interactive SSH sessions there have neither). A job's own
    /// `GITHUB_PATH` additions still come before them. Each entry is an
    /// absolute path without `:`. Default: none.
    pub path_prepend: Option<Spanned<Vec<Spanned<String>>>>,
    /// Absolute path of the guest's Node.js binary, e.g.
    /// `"/opt/ooce/bin/node"` on OmniOS, for JavaScript actions. Default:
    /// `node` found on the guest's `PATH`.
    pub node: Option<Spanned<String>>,
    /// What the guest's network reaches: `"outbound"` (the internet, but not
    /// the host's loopback, link-local addresses such as a cloud metadata
    /// service at 169.254.169.254, or the host's own addresses), `"none"`
    /// (only `network_allow`), or `"unrestricted"` (QEMU's user-mode network
    /// as it is: the guest reaches every service on the host's loopback at
    /// 10.0.2.2; unsafe, `check-config` warns). `outbound` and `none` need
    /// `pasta` (package passt) and unprivileged user namespaces on the host.
    /// Default: [`DEFAULT_NETWORK`].
    pub network: Option<Spanned<NetworkMode>>,
    /// Extra address ranges (CIDR, e.g. `["10.0.0.0/8", "fd00::/8"]`) the
    /// guest cannot reach, e.g. private networks. Default: none.
    pub network_deny: Option<Spanned<Vec<Spanned<String>>>>,
    /// Ranges (CIDR) re-opened inside `network_deny`, and the only
    /// destinations the guest reaches with `network = "none"`. The built-in
    /// denials (loopback, link-local, the host's addresses) stay closed.
    /// Default: none.
    pub network_allow: Option<Spanned<Vec<Spanned<String>>>>,
    /// A pull-through mirror for Docker Hub images in the guest's Docker
    /// engine, e.g. `"http://10.0.0.5:5000"`: an `http` or `https` URL with a
    /// host and an optional port, nothing else. The NoCloud seed writes it
    /// into the guest's `/etc/docker/daemon.json` (`registry-mirrors`, and
    /// `insecure-registries` for `http`). Ignored by the metadata seed
    /// (illumos images). Default: none.
    pub registry_mirror: Option<Spanned<String>>,
    /// Guests of this image kept booted and SSH-ready for the next jobs
    /// (a warm pool). Each is a real VM: it counts against
    /// `daemon.max_concurrent_jobs` (a job of any image takes its place when
    /// the host is full). Default: [`DEFAULT_WARM`]; range: [`WARM`].
    pub warm: Option<Spanned<i64>>,
    /// Seconds a warm guest may wait for a job before it is replaced by a
    /// fresh one. Default: [`DEFAULT_WARM_MAX_IDLE_SECS`]; range:
    /// [`WARM_MAX_IDLE_SECS`].
    pub warm_max_idle_secs: Option<Spanned<i64>>,
    /// Start guests by restoring a saved running guest instead of booting
    /// (each clone is re-keyed, reseeded and renamed before use). Linux
    /// guests with the kernel's vmgenid driver only; an error for illumos.
    /// Default: false.
    pub snapshot: Option<Spanned<bool>>,
}

/// Default of `images.<name>.warm`.
pub const DEFAULT_WARM: i64 = 0;
/// Allowed range of `images.<name>.warm`.
pub const WARM: Limit = Limit {
    min: 0,
    max: 256,
    unit: "VMs",
};
/// Default of `images.<name>.warm_max_idle_secs` (one hour).
pub const DEFAULT_WARM_MAX_IDLE_SECS: i64 = 3600;
/// Allowed range of `images.<name>.warm_max_idle_secs` (a minute to a week).
pub const WARM_MAX_IDLE_SECS: Limit = Limit {
    min: 60,
    max: 604800,
    unit: "seconds",
};

/// Default of `images.<name>.network`.
pub const DEFAULT_NETWORK: NetworkMode = NetworkMode::Outbound;

/// Default of `forges.<name>.fetch_interval_secs` (as forgejo-runner).
pub const DEFAULT_FETCH_INTERVAL_SECS: i64 = 2;
/// Allowed range of `forges.<name>.fetch_interval_secs`.
pub const FETCH_INTERVAL_SECS: Limit = Limit {
    min: 1,
    max: 3600,
    unit: "seconds",
};
/// Default of `forges.<name>.fetch_timeout_secs`.
pub const DEFAULT_FETCH_TIMEOUT_SECS: i64 = 30;
/// Allowed range of `forges.<name>.fetch_timeout_secs`.
pub const FETCH_TIMEOUT_SECS: Limit = Limit {
    min: 1,
    max: 600,
    unit: "seconds",
};

/// Default of `forges.<name>.fetch_interval_secs` for `kind = "github"`.
pub const DEFAULT_GITHUB_FETCH_INTERVAL_SECS: i64 = 1;
/// Default of `forges.<name>.kind`.
pub const DEFAULT_FORGE_KIND: ForgeKind = ForgeKind::Forgejo;
/// Allowed range of `forges.<name>.app_id` and `installation_id`.
pub const GITHUB_ID: Limit = Limit {
    min: 1,
    max: i64::MAX,
    unit: "a GitHub id",
};
/// Default of `forges.<name>.runner_group_id`: the default runner group.
pub const DEFAULT_RUNNER_GROUP_ID: i64 = 1;
/// Allowed range of `forges.<name>.runner_group_id`.
pub const RUNNER_GROUP_ID: Limit = Limit {
    min: 1,
    max: i64::MAX,
    unit: "a runner group id",
};
/// Default of `forges.<name>.runner_version`: the official runner release
/// this protocol was written against. The broker refuses versions GitHub
/// has deprecated (about 30 days after a newer release).
pub const DEFAULT_RUNNER_VERSION: &str = "2.336.0";

/// `[forges.<name>]`: one Forgejo or Gitea instance (`kind = "forgejo"`,
/// the default), or one GitHub repository, organisation or enterprise
/// (`kind = "github"`). The name matches `[a-z0-9][a-z0-9._-]*` and keys
/// the credentials in the state database. Forgejo needs exactly one of
/// `registration_token_file`, `secret_file` and `runner_file`; GitHub
/// needs either `app_id` + `installation_id` + `private_key_file` or
/// `token_file`. Secrets never go in this file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForge {
    /// What the forge is: `"forgejo"` (Forgejo or Gitea, through their
    /// runner API) or `"github"` (GitHub or GitHub Enterprise, through
    /// GitHub's runner protocol, with one just-in-time runner per free
    /// slot). Default: [`DEFAULT_FORGE_KIND`].
    pub kind: Option<Spanned<ForgeKind>>,
    /// Forgejo: the instance URL, e.g. `https://codeberg.org` or
    /// `https://example.org/forgejo`. GitHub: where the runners are
    /// registered: a repository (`https://github.com/owner/repo`), an
    /// organisation (`https://github.com/org`) or an enterprise
    /// (`https://github.com/enterprises/name`); `http://` only on a
    /// loopback host. Required.
    pub url: Option<Spanned<String>>,
    /// Forgejo: file holding a registration token (Site, organisation or
    /// repository settings → Actions → Runners). Used once: the runner
    /// credentials it yields are kept in the state database.
    pub registration_token_file: Option<Spanned<PathBuf>>,
    /// Forgejo: file holding Forgejo's offline registration secret (40 hex
    /// characters, as given to `forgejo forgejo-cli actions register --secret`).
    pub secret_file: Option<Spanned<PathBuf>>,
    /// Forgejo: JSON file with the runner's `uuid` and `token`
    /// (forgejo-runner's `.runner` file has this shape).
    pub runner_file: Option<Spanned<PathBuf>>,
    /// GitHub: the GitHub App's id (App settings → General → App ID), with
    /// `installation_id` and `private_key_file`.
    pub app_id: Option<Spanned<i64>>,
    /// GitHub: the id of the App's installation on the repository,
    /// organisation or enterprise (the number at the end of the
    /// installation's settings URL).
    pub installation_id: Option<Spanned<i64>>,
    /// GitHub: file holding the App's private key (PEM, as downloaded).
    pub private_key_file: Option<Spanned<PathBuf>>,
    /// GitHub: file holding a fine-grained token or a classic personal
    /// access token allowed to manage self-hosted runners, instead of an App.
    pub token_file: Option<Spanned<PathBuf>>,
    /// GitHub: the runner group the runners join. Default:
    /// [`DEFAULT_RUNNER_GROUP_ID`] (the default group); range:
    /// [`RUNNER_GROUP_ID`].
    pub runner_group_id: Option<Spanned<i64>>,
    /// GitHub: the REST API base URL. Default: `https://api.github.com`
    /// for github.com, `https://api.<host>` for `<host>` under `.ghe.com`,
    /// `https://<host>/api/v3` for any other host (GitHub Enterprise Server).
    pub api_url: Option<Spanned<String>>,
    /// GitHub: the runner version announced to GitHub, `N.N.N`. GitHub
    /// refuses runners whose version it has deprecated, so raise it when
    /// the log says the version is too old. Default:
    /// [`DEFAULT_RUNNER_VERSION`].
    pub runner_version: Option<Spanned<String>>,
    /// Runner name shown in this forge's UI (GitHub: the start of each
    /// runner's name, `<runner_name>-<image>-<8 hex>`). Default:
    /// `daemon.runner_name`.
    pub runner_name: Option<Spanned<String>>,
    /// Labels declared to this forge: jobs whose `runs-on` are all among
    /// them are sent here, even when no single image has them all (a
    /// warning names such a pair). Each must belong to an image. GitHub:
    /// the image labels the runners may carry (each runner has one image's
    /// labels among these, after `self-hosted`, the OS and the
    /// architecture). Default: every image's labels.
    pub labels: Option<Spanned<Vec<Spanned<String>>>>,
    /// Forgejo: seconds between task polls. Codeberg asks for at least 30;
    /// above 60 the forge shows the runner offline between polls (a
    /// warning). GitHub: seconds between checks for free slots that need a
    /// runner. Default: [`DEFAULT_FETCH_INTERVAL_SECS`] (GitHub:
    /// [`DEFAULT_GITHUB_FETCH_INTERVAL_SECS`]); range: [`FETCH_INTERVAL_SECS`].
    pub fetch_interval_secs: Option<Spanned<i64>>,
    /// Forgejo: deadline of one poll in seconds (`Connect-Timeout-Ms`).
    /// Default: [`DEFAULT_FETCH_TIMEOUT_SECS`]; range: [`FETCH_TIMEOUT_SECS`].
    pub fetch_timeout_secs: Option<Spanned<i64>>,
    /// `[forges.<name>.debug_ssh]`: which of this forge's failed jobs may
    /// keep their VM for debug SSH. Default: none.
    pub debug_ssh: Option<Spanned<RawForgeDebugSsh>>,
}

/// Default and largest `debug_ssh.ttl_secs` (and
/// `forges.<name>.debug_ssh.ttl_secs`): 30 minutes, never renewed.
pub const DEFAULT_DEBUG_TTL_SECS: i64 = 1800;
/// Allowed range of `debug_ssh.ttl_secs` and
/// `forges.<name>.debug_ssh.ttl_secs`.
pub const DEBUG_TTL_SECS: Limit = Limit {
    min: 1,
    max: DEFAULT_DEBUG_TTL_SECS,
    unit: "seconds",
};
/// Default of `debug_ssh.max_held`.
pub const DEFAULT_DEBUG_MAX_HELD: i64 = 1;
/// Allowed range of `debug_ssh.max_held`.
pub const DEBUG_MAX_HELD: Limit = Limit {
    min: 1,
    max: 1024,
    unit: "VMs",
};
/// Default of `debug_ssh.idle_timeout_secs`.
pub const DEFAULT_DEBUG_IDLE_TIMEOUT_SECS: i64 = 600;
/// Allowed range of `debug_ssh.idle_timeout_secs`.
pub const DEBUG_IDLE_TIMEOUT_SECS: Limit = Limit {
    min: 1,
    max: 86400,
    unit: "seconds",
};
/// Allowed range of `debug_ssh.public_port`.
pub const DEBUG_PUBLIC_PORT: Limit = Limit {
    min: 1,
    max: 65535,
    unit: "a TCP port",
};

/// `[debug_ssh]`: the host's debug SSH gateway. Users log in with
/// `ssh -t -p <public_port> debug@<public_host> connect <job id>`, with a
/// key the job's forge publishes for the person who triggered the job.
/// Nothing is kept unless a forge also has `debug_ssh.enabled = true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDebugSsh {
    /// Where the gateway listens: `"host:port"`, e.g. `"0.0.0.0:2222"` or
    /// `"[::]:2222"`. Required in the section.
    pub listen: Option<Spanned<String>>,
    /// The host name (or address) users connect to, printed in the job
    /// log. Default: this host's name (`gethostname`).
    pub public_host: Option<Spanned<String>>,
    /// The port printed in the job log, when users reach the gateway on
    /// another port than it listens on (a port forward). Default: the port
    /// of `listen`; range: [`DEBUG_PUBLIC_PORT`].
    pub public_port: Option<Spanned<i64>>,
    /// Seconds a failed job's VM is kept, counted from when the window
    /// opens, never renewed. Default and maximum:
    /// [`DEFAULT_DEBUG_TTL_SECS`]; range: [`DEBUG_TTL_SECS`].
    pub ttl_secs: Option<Spanned<i64>>,
    /// VMs kept for debugging at once on this host; each still counts
    /// against `daemon.max_concurrent_jobs` and its image's limit. Default:
    /// [`DEFAULT_DEBUG_MAX_HELD`]; range: [`DEBUG_MAX_HELD`].
    pub max_held: Option<Spanned<i64>>,
    /// Seconds without traffic after which a session is closed (the VM
    /// stays until its time is up). Default:
    /// [`DEFAULT_DEBUG_IDLE_TIMEOUT_SECS`]; range: [`DEBUG_IDLE_TIMEOUT_SECS`].
    pub idle_timeout_secs: Option<Spanned<i64>>,
}

/// `[forges.<name>.debug_ssh]`: which failed jobs of this forge may keep
/// their VM. A job must also ask (`SOLSTICE_DEBUG_SSH: true` in its
/// workflow's or its own `env:`); schedule events and `[bot]` actors are
/// never held.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForgeDebugSsh {
    /// Whether this forge's failed jobs may be kept at all; needs the
    /// host's `[debug_ssh]`. Default: `false`.
    pub enabled: Option<Spanned<bool>>,
    /// Repositories whose jobs may be kept: `"owner/name"` or `"owner/*"`.
    /// Default: every repository of the forge.
    pub repositories: Option<Spanned<Vec<Spanned<String>>>>,
    /// Events whose failed jobs may be kept, e.g. `["push",
    /// "workflow_dispatch"]`. `schedule` is never kept. Default:
    /// `push`, `pull_request`, `workflow_dispatch`.
    pub events: Option<Spanned<Vec<Spanned<String>>>>,
    /// Whether jobs of pull requests from forks may be kept too (their code
    /// comes from outside the repository). Default: `false`.
    pub fork_pull_requests: Option<Spanned<bool>>,
    /// Whether jobs that received secrets (other than the job token) may
    /// be kept. Default: `false`.
    pub with_secrets: Option<Spanned<bool>>,
    /// A shorter window than the host's `debug_ssh.ttl_secs` for this
    /// forge's jobs, in seconds. Default: the host's; range: 1 to the
    /// host's `ttl_secs`.
    pub ttl_secs: Option<Spanned<i64>>,
}

/// Default of `actions.default_url`.
pub const DEFAULT_ACTIONS_URL: &str = "https://github.com";
/// Default of `actions.cache_max_mib`.
pub const DEFAULT_ACTIONS_CACHE_MAX_MIB: i64 = 2048;
/// Allowed range of `actions.cache_max_mib` (up to 1 TiB).
pub const ACTIONS_CACHE_MAX_MIB: Limit = Limit {
    min: 1,
    max: 1_048_576,
    unit: "MiB",
};

/// `[actions]`: the actions steps name with `uses:`. The runner host
/// fetches them (never the guest) with git and keeps them in
/// `<state_dir>/actions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawActions {
    /// Where `uses: owner/repo@ref` comes from in `solstice exec` (a forge's
    /// job uses the default actions URL the forge sends). An `http://` or
    /// `https://` URL; `solstice exec --actions-url` overrides it. Default:
    /// [`DEFAULT_ACTIONS_URL`].
    pub default_url: Option<Spanned<String>>,
    /// More hosts actions may be fetched from, besides the forge's own host
    /// and the default actions URL's host: `"host"` (any port) or
    /// `"host:port"` (`"[::1]:3000"` for IPv6). A listed host may also be on a
    /// loopback, link-local or private address, which is refused otherwise.
    /// The hosts of the configured forges and of `default_url` count as
    /// listed. Default: none.
    pub allowed_hosts: Option<Spanned<Vec<Spanned<String>>>>,
    /// Bound on the action cache's size in MiB; the least recently used
    /// actions are removed first. Default: [`DEFAULT_ACTIONS_CACHE_MAX_MIB`];
    /// range: [`ACTIONS_CACHE_MAX_MIB`].
    pub cache_max_mib: Option<Spanned<i64>>,
}

/// Default of `cache.max_mib`.
pub const DEFAULT_CACHE_MAX_MIB: i64 = 10240;
/// Allowed range of `cache.max_mib` (up to 1 TiB).
pub const CACHE_MAX_MIB: Limit = Limit {
    min: 1,
    max: 1_048_576,
    unit: "MiB",
};

/// `[cache]`: the built-in cache service. Jobs reach it from their guests
/// through `ACTIONS_CACHE_URL`; actions/cache and every action built on
/// `@actions/cache` save and restore there. See `docs/cache.md`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Whether jobs get the cache service. Off: `ACTIONS_CACHE_URL` is not
    /// set and actions/cache warns that the cache is unavailable.
    /// Default: `true`.
    pub enabled: Option<Spanned<bool>>,
    /// Where the entries and their index live. Relative paths resolve
    /// against the config file's directory. Default: `<state_dir>/cache`.
    pub dir: Option<Spanned<PathBuf>>,
    /// Bound on the committed entries' total size in MiB; the least
    /// recently used entries are removed first, and a single entry larger
    /// than this is refused. Default: [`DEFAULT_CACHE_MAX_MIB`]; range:
    /// [`CACHE_MAX_MIB`].
    pub max_mib: Option<Spanned<i64>>,
}

/// Field names of a serde struct, or variant names of a serde enum, read from
/// its `Deserialize` impl, so that the list cannot drift from the struct.
pub fn names_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(capture::Capture) {
        Err(capture::Captured(names)) => names,
        Ok(_) => &[],
    }
}

mod capture {
    //! A deserializer that only records what `deserialize_struct` or
    //! `deserialize_enum` were asked for.

    use serde::de::Visitor;

    pub struct Capture;

    #[derive(Debug)]
    pub struct Captured(pub &'static [&'static str]);

    impl std::fmt::Display for Captured {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("captured names")
        }
    }

    impl std::error::Error for Captured {}

    impl serde::de::Error for Captured {
        fn custom<T: std::fmt::Display>(_msg: T) -> Self {
            Captured(&[])
        }
    }

    impl<'de> serde::Deserializer<'de> for Capture {
        type Error = Captured;

        fn deserialize_any<V: Visitor<'de>>(self, _v: V) -> Result<V::Value, Captured> {
            Err(Captured(&[]))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _v: V,
        ) -> Result<V::Value, Captured> {
            Err(Captured(fields))
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            _v: V,
        ) -> Result<V::Value, Captured> {
            Err(Captured(variants))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map identifier ignored_any
        }
    }
}

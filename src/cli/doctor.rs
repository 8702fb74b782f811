//! `solstice doctor`: explains the host to its operator, one line per check,
//! with what to do about each problem. Exits 0 when a job can run, 1 when one
//! could not, 2 when the config cannot be found or read. With `--image NAME
//! --boot` it also boots that image and reports what a job finds in it
//! (see [`boot`]).

mod boot;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::error::{CliError, Exit};
use crate::config::{AccelChoice, Config, Firmware, ImageConfig, ParseOptions};
use crate::vm::Accel;
use crate::vm::accel::{Accelerator, KvmFailure};

/// Free space below which the state directory is a problem (overlays and
/// consoles of running jobs live there).
const FREE_FAIL: u64 = 512 << 20;
/// Free space below which the state directory gets a warning.
const FREE_WARN: u64 = 4 << 30;

/// Arguments of `solstice doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Configuration file (same search order as `exec`).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Also check that every configured forge answers (a Ping over its runner API).
    #[arg(long)]
    pub forges: bool,
    /// Forget that `auto`'s KVM failed a job on this host, so that the
    /// daemon probes KVM again at its next start.
    #[arg(long)]
    pub retry_kvm: bool,
    /// The configured image that --boot boots.
    #[arg(long, short = 'i', value_name = "NAME", requires = "boot")]
    pub image: Option<String>,
    /// Boot the image named by --image as a job would (same seed, QEMU command
    /// line and SSH login) and report the login, `uname -a`, the network and
    /// where git, gtar, bash, node and python3 are; exits 1 when SSH never
    /// came up. Under TCG an illumos guest can take minutes.
    #[arg(long, requires = "image")]
    pub boot: bool,
}

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Jobs run, but not as well as they could.
    Warn,
    /// A job could not run.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub level: Level,
    pub what: String,
    pub detail: String,
}

impl Check {
    fn ok(what: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            level: Level::Ok,
            what: what.into(),
            detail: detail.into(),
        }
    }
    fn warn(what: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            level: Level::Warn,
            what: what.into(),
            detail: detail.into(),
        }
    }
    fn fail(what: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            level: Level::Fail,
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// `ok    qemu: …`
    pub fn render(&self) -> String {
        let tag = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        format!("{tag}  {}: {}", self.what, self.detail)
    }
}

pub async fn doctor_main(args: DoctorArgs) -> Result<(), CliError> {
    let path = crate::config::find_config(args.config.as_deref())
        .map_err(|e| CliError::usage(e.to_string()))?
        .path;
    let path = std::path::absolute(&path).unwrap_or(path);
    println!("[solstice] config: {}", path.display());
    // Paths are checked below, one line each, instead of failing the load.
    let config = match crate::config::load_with(&path, &ParseOptions { check_paths: false }) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            println!("{}", Check::fail("config", format!("{} is not valid (see above); `solstice check-config {}` lists every problem", path.display(), path.display())).render());
            return Err(CliError::reported(Exit::Usage));
        }
    };
    let boot_image = boot_image(&args, &config)?;
    let mut checks = vec![Check::ok(
        "config",
        format!(
            "{} is valid ({} image(s), {} forge(s))",
            path.display(),
            config.images.len(),
            config.forges.len()
        ),
    )];
    // What works but probably not as meant, as `check-config` words it.
    for w in &config.warnings {
        let place = match (&w.key, w.position) {
            (Some(k), Some(p)) => format!("{k} (line {}, column {})", p.line, p.column),
            (Some(k), None) => k.clone(),
            (None, _) => "config".to_owned(),
        };
        let detail = match &w.fix {
            Some(fix) => format!("{}; {fix}", w.message),
            None => w.message.clone(),
        };
        checks.push(Check::warn(place, detail));
    }
    if args.retry_kvm {
        checks.push(forget_kvm_failure(&config));
    }
    let mut print_from = 0;
    let mut flush = |checks: &Vec<Check>| {
        for c in &checks[print_from..] {
            println!("{}", c.render());
        }
        print_from = checks.len();
    };
    flush(&checks);
    checks.push(binary_check(
        "qemu",
        &config.qemu.system_binary,
        "qemu.system_binary",
    ));
    checks.push(binary_check(
        "qemu-img",
        &config.qemu.img_binary,
        "qemu.img_binary",
    ));
    flush(&checks);
    checks.push(kvm_device());
    flush(&checks);
    let cfg = config.clone();
    let (accel_line, accel) = tokio::task::spawn_blocking(move || accelerator_check(&cfg))
        .await
        .unwrap_or_else(|e| {
            (
                Check::fail("accelerator", format!("the probe failed: {e}")),
                None,
            )
        });
    checks.push(accel_line);
    flush(&checks);
    checks.extend(firmware_checks(&config));
    for image in config.images.values() {
        checks.push(image_check(&config, image));
        checks.push(cpu_check(image, accel));
        flush(&checks);
    }
    checks.push(state_dir_check(&config.daemon.state_dir));
    checks.push(host_git_check());
    checks.push(guest_network_check(&config));
    flush(&checks);
    if args.forges {
        for forge in config.forges.values() {
            checks.push(credentials_check(&config, forge));
            if forge.github.is_some() {
                checks.push(Check::ok(
                    format!("forge {}", forge.name),
                    "github forge: checked by `solstice run`",
                ));
            } else {
                checks.push(forge_check(forge).await);
            }
            flush(&checks);
        }
        if config.forges.is_empty() {
            checks.push(Check::warn(
                "forges",
                "none configured: `solstice run` has nothing to serve (docs/forges.md)",
            ));
            flush(&checks);
        }
    }
    if let Some(image) = boot_image {
        boot_and_report(&config, image, &mut checks).await;
    }
    let fails = checks.iter().filter(|c| c.level == Level::Fail).count();
    let warns = checks.iter().filter(|c| c.level == Level::Warn).count();
    println!();
    if fails == 0 {
        println!(
            "Jobs can run on this host{}.",
            if warns > 0 {
                format!(" ({warns} warning(s) above)")
            } else {
                String::new()
            }
        );
        Ok(())
    } else {
        println!("{fails} problem(s) above stop jobs from running; each line says what to do.");
        Err(CliError::reported(Exit::Failed))
    }
}

/// The image `--image NAME --boot` asks for; exit status 2 when the config
/// has no image of that name.
fn boot_image<'a>(
    args: &DoctorArgs,
    config: &'a Config,
) -> Result<Option<&'a ImageConfig>, CliError> {
    let Some(name) = args.image.as_deref().filter(|_| args.boot) else {
        return Ok(None);
    };
    match config.images.get(name) {
        Some(image) => Ok(Some(image)),
        None => {
            let names: Vec<&str> = config.images.keys().map(String::as_str).collect();
            Err(CliError::usage(format!(
                "no image `{name}` in the configuration; configured images: {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )))
        }
    }
}

/// `--boot`: boots the image unless a problem above stops every job anyway,
/// printing its lines as they come.
async fn boot_and_report(config: &Config, image: &ImageConfig, checks: &mut Vec<Check>) {
    println!();
    let blocked = checks.iter().any(|c| c.level == Level::Fail);
    let found = if blocked {
        vec![Check::fail(
            format!("boot {}", image.name),
            "not tried: the problems above stop every job; fix them first",
        )]
    } else {
        boot::boot_checks(config, image).await
    };
    for c in &found {
        println!("{}", c.render());
    }
    checks.extend(found);
}

/// Runs `binary --version`; fails with the config key when it cannot run.
fn binary_check(what: &str, binary: &Path, key: &str) -> Check {
    match Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            Check::ok(
                what,
                format!("{version} ({})", resolve_binary(binary).display()),
            )
        }
        Ok(out) => Check::fail(
            what,
            format!(
                "`{} --version` exited with {}: check `{key}`",
                binary.display(),
                out.status
            ),
        ),
        Err(e) => Check::fail(
            what,
            format!(
                "cannot run {} ({e}): install QEMU (Debian: `apt install qemu-system-x86 qemu-utils`, or run .ci/setup-host.sh) or set `{key}`",
                binary.display()
            ),
        ),
    }
}

/// Where a bare binary name resolves in `PATH`.
fn resolve_binary(binary: &Path) -> PathBuf {
    if binary.components().count() > 1 {
        return binary.to_path_buf();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(binary))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| binary.to_path_buf())
}

/// `/dev/kvm`: present and usable by this user.
fn kvm_device() -> Check {
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return Check::warn(
            "/dev/kvm",
            "missing: guests run under TCG (software emulation, several times slower); load the kvm module (`modprobe kvm_intel` or `kvm_amd`) or enable nested virtualisation for this VM",
        );
    }
    match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(_) => Check::ok("/dev/kvm", "present and opens for this user"),
        Err(e) => Check::warn(
            "/dev/kvm",
            format!(
                "present but cannot be opened ({e}): guests run under TCG; add the user that runs solstice to the `kvm` group"
            ),
        ),
    }
}

/// The CPU model `image`'s job VMs get under `accel` (both accelerators'
/// when none can be used), and where it comes from.
fn cpu_check(image: &ImageConfig, accel: Option<Accel>) -> Check {
    let what = format!("image {} cpu", image.name);
    let one = |accel: Accel| {
        let model = crate::vm::argv::cpu_model(image, accel);
        let source = if image.cpu.is_some() {
            format!("`images.{}.cpu`", image.name)
        } else {
            format!("default for {} guests", image.os.runner_os())
        };
        format!("{model} under {} ({source})", accel.as_str())
    };
    match accel {
        Some(a) => Check::ok(what, one(a)),
        None => Check::ok(what, format!("{}; {}", one(Accel::Kvm), one(Accel::Tcg))),
    }
}

/// Which accelerator jobs get and why (runs the same probe as `exec`/`run`),
/// and that accelerator (`None` when none can be used).
fn accelerator_check(config: &Config) -> (Check, Option<Accel>) {
    let remembered = remembered_kvm_failure(config);
    let mut in_use = None;
    let check = match Accelerator::resolve(&config.qemu, remembered.as_ref()) {
        Err(e) => Check::fail("accelerator", e.to_string()),
        Ok(a) => {
            in_use = Some(a.current());
            let reason = &a.initial().reason;
            match (config.qemu.accel, a.current()) {
                (AccelChoice::Kvm, _) => {
                    // Explicit KVM: say whether a KVM guest really runs here.
                    match crate::vm::accel::guest_runs(
                        &config.qemu.system_binary,
                        Accel::Kvm,
                        crate::vm::accel::PROBE_DEADLINE,
                    ) {
                        Ok(took) => Check::ok(
                            "accelerator",
                            format!(
                                "kvm (configured); a KVM probe guest ran in {} ms",
                                took.as_millis()
                            ),
                        ),
                        Err(why) => Check::fail(
                            "accelerator",
                            format!(
                                "kvm is configured, but a KVM guest does not run here ({why}); jobs would hang or fail: set `qemu.accel = \"auto\"` (falls back to TCG) or `\"tcg\"`"
                            ),
                        ),
                    }
                }
                (AccelChoice::Auto, Accel::Tcg) if Path::new("/dev/kvm").exists() => Check::warn(
                    "accelerator",
                    format!("tcg ({reason}); jobs run, more slowly"),
                ),
                (_, accel) => Check::ok("accelerator", format!("{} ({reason})", accel.as_str())),
            }
        }
    };
    (check, in_use)
}

/// The daemon's record of a KVM failure, when its database exists.
fn remembered_kvm_failure(config: &Config) -> Option<KvmFailure> {
    let db = crate::store::db_path(&config.daemon.state_dir);
    if !db.exists() {
        return None;
    }
    let store = crate::store::Store::open_read_only(&db).ok()?;
    store.kvm_failure().ok().flatten().map(|r| KvmFailure {
        reason: r.reason,
        fingerprint: r.fingerprint,
        at_unix: r.at_unix,
    })
}

/// `--retry-kvm`: forgets the daemon's KVM failure record.
fn forget_kvm_failure(config: &Config) -> Check {
    let db = crate::store::db_path(&config.daemon.state_dir);
    if !db.exists() {
        return Check::ok(
            "retry KVM",
            "no state database, so no KVM failure is recorded",
        );
    }
    match crate::store::Store::open(&db).and_then(|s| s.forget_kvm_failure()) {
        Ok(true) => Check::ok(
            "retry KVM",
            "forgot the recorded KVM failure; a running daemon keeps its choice until it restarts, then probes KVM again",
        ),
        Ok(false) => Check::ok("retry KVM", "no KVM failure was recorded"),
        Err(e) => Check::fail("retry KVM", format!("cannot update {}: {e}", db.display())),
    }
}

/// UEFI firmware files, when an image needs them.
fn firmware_checks(config: &Config) -> Vec<Check> {
    let uefi: Vec<&str> = config
        .images
        .values()
        .filter(|i| i.firmware == Firmware::Uefi)
        .map(|i| i.name.as_str())
        .collect();
    if uefi.is_empty() {
        return vec![Check::ok(
            "firmware",
            "BIOS (SeaBIOS, built into QEMU); no image needs UEFI",
        )];
    }
    let mut out = Vec::new();
    for (key, path) in [
        ("qemu.uefi_code", &config.qemu.uefi_code),
        ("qemu.uefi_vars", &config.qemu.uefi_vars),
    ] {
        out.push(match path {
            None => Check::fail(
                key,
                format!(
                    "not set, but image(s) {} use UEFI: set it (Debian's ovmf package: /usr/share/OVMF/OVMF_CODE_4M.fd and OVMF_VARS_4M.fd)",
                    uefi.join(", ")
                ),
            ),
            Some(p) => match std::fs::File::open(p) {
                Ok(_) => Check::ok(key, format!("{} is readable", p.display())),
                Err(e) => Check::fail(key, format!("cannot read {} ({e}): install OVMF or fix the path", p.display())),
            },
        });
    }
    out
}

/// The image file: readable, its real format, its size.
fn image_check(config: &Config, image: &ImageConfig) -> Check {
    let what = format!("image {}", image.name);
    let path = &image.path;
    if let Err(e) = std::fs::File::open(path) {
        return Check::fail(
            what,
            format!(
                "cannot read {} ({e}): build or download it (docs/images.md) or fix `images.{}.path`",
                path.display(),
                image.name
            ),
        );
    }
    match crate::vm::disk::probe_image(&config.qemu.img_binary, path) {
        // The error and its causes on one line: one line per check.
        Err(e) => Check::fail(
            what,
            format!("{}: {}", path.display(), crate::errors::Chain(&e)),
        ),
        Ok(info) => {
            let declared = image.format.as_str();
            if info.format != declared {
                return Check::fail(
                    what,
                    format!(
                        "{} is {}, but `images.{}.format` says \"{declared}\": set it to \"{}\"",
                        path.display(),
                        info.format,
                        image.name,
                        info.format
                    ),
                );
            }
            let size = gib(info.virtual_size);
            if let Some(want) = image.disk_size_gib
                && u64::from(want) << 30 < info.virtual_size
            {
                return Check::fail(
                    what,
                    format!(
                        "`images.{}.disk_size_gib = {want}` is smaller than the image ({size}): raise it or remove it",
                        image.name
                    ),
                );
            }
            Check::ok(
                what,
                format!(
                    "{}, {}, {size} virtual, {} os, labels [{}]",
                    path.display(),
                    info.format,
                    image.os.runner_os(),
                    image.labels.join(", ")
                ),
            )
        }
    }
}

/// `1.5 GiB`, `64 MiB`.
fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// git on this host: it fetches the checkout for guests without git (2.31 or
/// later, for the token in `GIT_CONFIG_COUNT`) and lists `solstice exec`'s tree.
/// Whether guests of images with an isolated network (`outbound`, `none`)
/// can start here: pasta installed, user and network namespaces allowed.
fn guest_network_check(config: &Config) -> Check {
    use crate::config::NetworkMode;
    let isolated: Vec<&str> = config
        .images
        .values()
        .filter(|i| i.network != NetworkMode::Unrestricted)
        .map(|i| i.name.as_str())
        .collect();
    if isolated.is_empty() {
        return Check::ok(
            "network isolation",
            "every image is `unrestricted` (nothing to isolate; see the warnings above)",
        );
    }
    match crate::vm::netns::probe() {
        Ok(pasta) => Check::ok(
            "network isolation",
            format!(
                "isolated for {} ({} and user namespaces work)",
                isolated.join(", "),
                pasta.display()
            ),
        ),
        Err(e) => Check::fail(
            "network isolation",
            format!("jobs of {} cannot start: {e}", isolated.join(", ")),
        ),
    }
}

fn host_git_check() -> Check {
    let out = Command::new("git").arg("--version").output();
    let version = match &out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => {
            return Check::warn(
                "git",
                "not found on PATH: guests without git (the OmniOS cloud image) cannot check out, nor can `solstice exec` copy a git work tree; install git (Debian: apt-get install git)",
            );
        }
    };
    let mut nums = version
        .trim_start_matches("git version ")
        .split('.')
        .map(|n| n.parse::<u32>().unwrap_or(0));
    if (nums.next().unwrap_or(0), nums.next().unwrap_or(0)) < (2, 31) {
        return Check::warn(
            "git",
            format!(
                "{version}: guests without git need git 2.31 or later on this host to check out"
            ),
        );
    }
    Check::ok(
        "git",
        format!("{version} (fetches the checkout for guests without git)"),
    )
}

/// The state directory (or the nearest existing parent that would hold it):
/// writable, with free space.
fn state_dir_check(dir: &Path) -> Check {
    let what = "state directory";
    let mut existing = dir.to_path_buf();
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p.to_path_buf(),
            None => break,
        }
    }
    if existing == dir {
        // Test-writes in it and in its jobs/ directory, as exec and run do.
        if let Err(e) = crate::store::check_state_dir(dir) {
            return Check::fail(what, e.to_string());
        }
    }
    let writable = nix::unistd::access(&existing, nix::unistd::AccessFlags::W_OK).is_ok();
    if !writable {
        let owner = owner_of(&existing);
        return Check::fail(
            what,
            format!(
                "{} is not writable by this user ({}){owner}: give it to the user that runs solstice, or set `daemon.state_dir`",
                existing.display(),
                whoami()
            ),
        );
    }
    let free = nix::sys::statvfs::statvfs(&existing)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
        .unwrap_or(u64::MAX);
    let place = if existing == dir {
        format!("{} is writable", dir.display())
    } else {
        format!("{} will be created (its parent is writable)", dir.display())
    };
    if free < FREE_FAIL {
        Check::fail(
            what,
            format!(
                "{place}, but only {} free: free space there or move `daemon.state_dir`",
                gib(free)
            ),
        )
    } else if free < FREE_WARN {
        Check::warn(
            what,
            format!(
                "{place}; {} free (each job's disk overlay grows there)",
                gib(free)
            ),
        )
    } else {
        Check::ok(what, format!("{place}; {} free", gib(free)))
    }
}

fn owner_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!(
            ", owned by uid {} with mode {:o}",
            m.uid(),
            m.mode() & 0o7777
        ),
        Err(_) => String::new(),
    }
}

fn whoami() -> String {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// The forge's credential file can be read, unless the daemon already holds
/// the runner's credentials in its database.
fn credentials_check(config: &Config, forge: &crate::config::ForgeConfig) -> Check {
    use crate::config::CredentialSource as C;
    let what = format!("forge {} credentials", forge.name);
    let (key, path) = match &forge.credentials {
        C::RegistrationTokenFile(p) => ("registration_token_file", p),
        C::SecretFile(p) => ("secret_file", p),
        C::RunnerFile(p) => ("runner_file", p),
        C::GithubApp {
            private_key_file, ..
        } => return github_file_check(what, forge, "private_key_file", private_key_file),
        C::GithubToken(p) => return github_file_check(what, forge, "token_file", p),
    };
    let stored = {
        let db = crate::store::db_path(&config.daemon.state_dir);
        db.exists()
            && crate::store::Store::open_read_only(&db)
                .ok()
                .and_then(|s| s.get_credentials(&forge.name).ok().flatten())
                .is_some()
    };
    match std::fs::File::open(path) {
        Ok(_) => Check::ok(what, format!("{} is readable", path.display())),
        Err(_) if stored => Check::ok(
            what,
            format!(
                "registered: the state database holds this runner's credentials ({} is not needed any more)",
                path.display()
            ),
        ),
        Err(e) => Check::fail(
            what,
            format!(
                "cannot read {} ({e}), and the runner is not registered yet: fix `forges.{}.{key}` (docs/forges.md)",
                path.display(),
                forge.name
            ),
        ),
    }
}

/// A GitHub forge's key or token file can be read (GitHub keeps nothing in
/// the state database: each runner is registered just in time).
fn github_file_check(
    what: String,
    forge: &crate::config::ForgeConfig,
    key: &str,
    path: &Path,
) -> Check {
    match std::fs::File::open(path) {
        Ok(_) => Check::ok(what, format!("{} is readable", path.display())),
        Err(e) => Check::fail(
            what,
            format!(
                "cannot read {} ({e}): fix `forges.{}.{key}` (docs/github.md)",
                path.display(),
                forge.name
            ),
        ),
    }
}

/// A forge answers Ping on its runner API.
async fn forge_check(forge: &crate::config::ForgeConfig) -> Check {
    use crate::forge::forgejo::client::{ClientOptions, ForgejoClient};
    let what = format!("forge {}", forge.name);
    let opts = ClientOptions {
        http_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let client = match ForgejoClient::new(&forge.url, &opts) {
        Ok(c) => c,
        Err(e) => return Check::fail(what, format!("{e}: fix `forges.{}.url`", forge.name)),
    };
    match client.ping("solstice-doctor").await {
        Ok(_) => Check::ok(what, format!("{} answers on its runner API", forge.url)),
        Err(e) => {
            let mut text = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                text.push_str(&format!(": {s}"));
                src = s.source();
            }
            Check::fail(
                what,
                format!(
                    "{} does not answer on its runner API ({text}): check `forges.{}.url` and the network",
                    forge.url, forge.name
                ),
            )
        }
    }
}

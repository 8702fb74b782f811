//! [`RawConfig`] → [`Config`]: defaults, ranges, paths, names, labels.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::error::{ConfigError, ConfigWarning, ErrorKind, Position};
use super::raw::{
    self, Limit, RawActions, RawCache, RawConfig, RawDaemon, RawForge, RawImage, RawQemu,
};
use super::{
    AccelChoice, ActionsConfig, CacheConfig, Cidr, Config, CredentialSource, DaemonConfig,
    Firmware, ForgeConfig, ForgeKind, GithubScope, ImageConfig, NetworkMode, ParseOptions,
    QemuConfig, SeedKind, github,
};

/// Where problems are collected while one file is checked.
pub(crate) struct Ctx<'a> {
    /// The file as named by the caller.
    pub file: &'a Path,
    /// Its text.
    pub text: &'a str,
    /// Absolute directory that relative paths resolve against.
    pub base_dir: PathBuf,
    /// Everything found so far.
    pub errors: Vec<ConfigError>,
    /// Warnings found so far (only kept when there are no errors).
    pub warnings: Vec<ConfigWarning>,
}

impl Ctx<'_> {
    /// Record one problem; `span` is a byte range in `text`.
    pub fn push(
        &mut self,
        span: Option<Range<usize>>,
        key: Option<String>,
        kind: ErrorKind,
        message: String,
        fix: Option<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            position: span.map(|s| Position::of_offset(self.text, s.start)),
            key,
            kind,
            message,
            fix,
        });
    }

    /// Record one warning; `span` is a byte range in `text`.
    pub fn warn(
        &mut self,
        span: Option<Range<usize>>,
        key: Option<String>,
        message: String,
        fix: Option<String>,
    ) {
        self.warnings.push(ConfigWarning {
            file: self.file.to_path_buf(),
            position: span.map(|s| Position::of_offset(self.text, s.start)),
            key,
            message,
            fix,
        });
    }

    /// `p` against the config file's directory, unless absolute.
    pub(crate) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Validate the raw config; `None` if any problem was found (they are in `ctx`).
pub(crate) fn validate(raw: RawConfig, opts: &ParseOptions, ctx: &mut Ctx<'_>) -> Option<Config> {
    let had_errors = !ctx.errors.is_empty();
    let images_key_was_bad = ctx
        .errors
        .iter()
        .any(|e| e.key.as_deref().is_some_and(|k| k.starts_with("images")));
    let daemon = daemon(&raw.daemon, ctx);
    let qemu = qemu(&raw.qemu, opts, ctx);
    let mut images = BTreeMap::new();
    for (name, image) in &raw.images {
        let config = self::image(name, image, &qemu, opts, ctx);
        images.insert(name.get_ref().clone(), config);
    }
    if raw.images.is_empty() && !images_key_was_bad {
        ctx.push(
            None,
            Some("images".to_owned()),
            ErrorKind::NoImages,
            "no images are configured, so `solstice exec` and the runner have nothing to boot"
                .to_owned(),
            Some(
                "add an [images.<name>] section with at least `path = \"/path/to/image.qcow2\"`"
                    .to_owned(),
            ),
        );
    }
    if opts.check_paths {
        image_files(&raw, &qemu, &images, ctx);
    }
    let debug_ssh = super::debug_ssh::host(raw.debug_ssh.as_ref(), ctx);
    let mut forges = BTreeMap::new();
    for (name, forge) in &raw.forges {
        let mut config = self::forge(name, forge, &daemon, &images, ctx);
        config.debug_ssh = super::debug_ssh::forge(
            name.get_ref(),
            forge.get_ref().debug_ssh.as_ref(),
            raw.debug_ssh.as_ref(),
            debug_ssh
                .as_ref()
                .map_or(crate::config::DEBUG_SSH_MAX_TTL, |d| d.ttl),
            ctx,
        );
        forges.insert(name.get_ref().clone(), config);
    }
    github::runner_name_clashes(&raw.forges, &forges, ctx);
    github::runner_name_lengths(&raw.forges, &forges, &images, ctx);
    let actions = actions(&raw.actions, ctx);
    let cache = cache(&raw.cache, &daemon, ctx);
    if had_errors || !ctx.errors.is_empty() {
        return None;
    }
    warnings(&raw, &daemon, &images, &forges, ctx);
    super::debug_ssh::warnings(
        raw.debug_ssh.as_ref(),
        debug_ssh.as_ref(),
        forges.values().any(|f| f.debug_ssh.enabled),
        daemon.max_concurrent_jobs,
        ctx,
    );
    ctx.warnings.sort_by_key(|w| {
        w.position
            .map_or((usize::MAX, usize::MAX), |p| (p.line, p.column))
    });
    Some(Config {
        daemon,
        qemu,
        images,
        forges,
        actions,
        cache,
        debug_ssh,
        warnings: std::mem::take(&mut ctx.warnings),
    })
}

/// Forgejo and Gitea fail every task this long after it started
/// (`ENDLESS_TASK_TIMEOUT`, default 3 h), even one that still reports.
pub(crate) const FORGE_TASK_LIMIT_MINS: i64 = 180;
/// A forge's UI shows a runner offline when it has not called for this long.
pub(crate) const FORGE_OFFLINE_AFTER_SECS: i64 = 60;

/// What a valid config does that the operator probably does not mean.
fn warnings(
    raw: &RawConfig,
    daemon: &DaemonConfig,
    images: &BTreeMap<String, ImageConfig>,
    forges: &BTreeMap<String, ForgeConfig>,
    ctx: &mut Ctx<'_>,
) {
    if forges.values().any(|f| f.github.is_none())
        && daemon.max_job_timeout > Duration::from_secs(60 * FORGE_TASK_LIMIT_MINS.unsigned_abs())
    {
        ctx.warn(
            raw.daemon.max_job_timeout_mins.as_ref().map(|v| v.span()),
            Some("daemon.max_job_timeout_mins".to_owned()),
            format!(
                "{} minutes is longer than the forges allow: Forgejo and Gitea fail any task {FORGE_TASK_LIMIT_MINS} minutes after it started (their ENDLESS_TASK_TIMEOUT, checked every 30 minutes), so a longer job is cut by the forge after 3 to 3.5 hours, without this runner's timeout message",
                daemon.max_job_timeout.as_secs() / 60
            ),
            Some(format!(
                "use {FORGE_TASK_LIMIT_MINS} or less, or raise ENDLESS_TASK_TIMEOUT in the forge's [actions] settings as well"
            )),
        );
    }
    for (name, section) in &raw.images {
        if let Some(v) = &section.get_ref().network
            && *v.get_ref() == NetworkMode::Unrestricted
        {
            ctx.warn(
                Some(v.span()),
                Some(format!("images.{}.network", name.get_ref())),
                "jobs of this image reach every service that listens on the host's loopback (at 10.0.2.2: the metrics endpoint, databases, admin APIs), link-local addresses such as a cloud metadata service at 169.254.169.254, and the host's own addresses; untrusted pull-request code can use them".to_owned(),
                Some("use network = \"outbound\" (the default; needs `pasta` from the passt package and user namespaces), and open only what jobs need with network_allow".to_owned()),
            );
        }
    }
    for (name, section) in &raw.images {
        let (Some(v), Some(img)) = (
            &section.get_ref().registry_mirror,
            images.get(name.get_ref()),
        ) else {
            continue;
        };
        if img.seed != SeedKind::NoCloud {
            ctx.warn(
                Some(v.span()),
                Some(format!("images.{}.registry_mirror", name.get_ref())),
                "only the NoCloud seed (cloud-init) writes the mirror into the guest's Docker configuration; this image's metadata seed (illumos) ignores it, and illumos guests run no container engine".to_owned(),
                Some("remove the key, or configure the mirror in the guest image itself".to_owned()),
            );
        }
    }
    if qemu_accel(raw) != AccelChoice::Kvm {
        for (name, section) in &raw.images {
            let Some(cpu) = &section.get_ref().cpu else {
                continue;
            };
            if cpu.get_ref().split(',').next() == Some("host") {
                ctx.warn(
                    Some(cpu.span()),
                    Some(format!("images.{}.cpu", name.get_ref())),
                    "QEMU runs the `host` CPU model only under KVM, and this host may use TCG (`qemu.accel` is not \"kvm\", so `auto` can fall back to TCG): a job VM of this image would then fail to start".to_owned(),
                    Some("set `qemu.accel = \"kvm\"`, or use a named model (e.g. \"EPYC-Rome\", \"Skylake-Server\") that runs under both, or remove the key to use the defaults".to_owned()),
                );
            }
        }
    }
    for (name, section) in &raw.forges {
        let n = name.get_ref();
        let (Some(forge), f) = (forges.get(n), section.get_ref()) else {
            continue;
        };
        // GitHub: each runner carries one image's labels, and polls are
        // not what shows a runner online.
        if forge.github.is_some() {
            continue;
        }
        if let Some(v) = &f.fetch_interval_secs
            && *v.get_ref() > FORGE_OFFLINE_AFTER_SECS
        {
            ctx.warn(
                Some(v.span()),
                Some(format!("forges.{n}.fetch_interval_secs")),
                format!(
                    "the forge shows a runner as offline when it has not called for {FORGE_OFFLINE_AFTER_SECS} seconds, so with {} seconds between polls this runner looks offline in the forge's UI most of the time while idle (it still takes jobs at each poll)",
                    v.get_ref()
                ),
                Some(format!(
                    "use {FORGE_OFFLINE_AFTER_SECS} or less (Codeberg asks for at least 30)"
                )),
            );
        }
        if let Some(split) = split_labels(&forge.labels, images) {
            let span = f.labels.as_ref().map_or(name.span(), |l| l.span());
            let key = if f.labels.is_some() {
                format!("forges.{n}.labels")
            } else {
                format!("forges.{n}")
            };
            ctx.warn(
                Some(span),
                Some(key),
                format!(
                    "labels \"{a}\" ({ia}) and \"{b}\" ({ib}) are both declared to this forge, but no single image has both{more}; the forge assigns a job with `runs-on: [{a}, {b}]` to this runner, which then fails it because no image fits",
                    a = split.a,
                    b = split.b,
                    ia = images_phrase(&split.a_images),
                    ib = images_phrase(&split.b_images),
                    more = if split.pairs > 1 {
                        format!(" ({} such label pairs in all)", split.pairs)
                    } else {
                        String::new()
                    },
                ),
                Some(format!(
                    "give one image all the labels that jobs combine, or declare fewer with `forges.{n}.labels`; nothing to change if no workflow combines these labels"
                )),
            );
        }
    }
}

fn qemu_accel(raw: &RawConfig) -> AccelChoice {
    raw.qemu
        .accel
        .as_ref()
        .map_or(raw::DEFAULT_ACCEL, |a| *a.get_ref())
}

/// Two declared labels that no image carries together.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SplitLabels {
    pub a: String,
    pub a_images: Vec<String>,
    pub b: String,
    pub b_images: Vec<String>,
    /// How many such pairs the labels have.
    pub pairs: usize,
}

/// The first pair of `labels` (in their order) that no single image has
/// both of, with the images that have each, and how many pairs there are.
/// `None` when every pair fits some image, and also when no label is
/// shared by two images: then every label names one image (`debian`,
/// `omnios`, `illumos`), and a job asking for two of them contradicts
/// itself, which its failure message says. Only shared labels (`linux` on
/// two images next to `docker` on one) make a combination look runnable.
pub(crate) fn split_labels(
    labels: &[String],
    images: &BTreeMap<String, ImageConfig>,
) -> Option<SplitLabels> {
    let mut unique: Vec<&String> = Vec::new();
    for l in labels {
        if !unique.contains(&l) {
            unique.push(l);
        }
    }
    let carriers = |l: &str| -> Vec<String> {
        images
            .values()
            .filter(|i| i.labels.iter().any(|il| il == l))
            .map(|i| i.name.clone())
            .collect()
    };
    if !unique.iter().any(|l| carriers(l).len() > 1) {
        return None;
    }
    let mut first = None;
    let mut pairs = 0;
    for (i, a) in unique.iter().enumerate() {
        for b in &unique[i + 1..] {
            let together = images.values().any(|img| {
                img.labels.iter().any(|l| l == *a) && img.labels.iter().any(|l| l == *b)
            });
            if !together {
                pairs += 1;
                first.get_or_insert(((*a).clone(), (*b).clone()));
            }
        }
    }
    let (a, b) = first?;
    Some(SplitLabels {
        a_images: carriers(&a),
        b_images: carriers(&b),
        a,
        b,
        pairs,
    })
}

/// `image tiny` or `images debian, tiny`.
fn images_phrase(names: &[String]) -> String {
    match names {
        [one] => format!("image {one}"),
        [] => "no image".to_owned(),
        many => format!("images {}", many.join(", ")),
    }
}

fn daemon(raw: &RawDaemon, ctx: &mut Ctx<'_>) -> DaemonConfig {
    let state_dir = match &raw.state_dir {
        Some(p) => {
            non_empty_path(p, "daemon.state_dir", ctx);
            ctx.resolve(p.get_ref())
        }
        None => PathBuf::from(raw::DEFAULT_STATE_DIR),
    };
    DaemonConfig {
        state_dir,
        max_concurrent_jobs: number(
            raw.max_concurrent_jobs.as_ref(),
            raw::DEFAULT_MAX_CONCURRENT_JOBS,
            raw::MAX_CONCURRENT_JOBS,
            "daemon.max_concurrent_jobs",
            ctx,
        ),
        drain_timeout: Duration::from_secs(u64::from(number(
            raw.drain_timeout_secs.as_ref(),
            raw::DEFAULT_DRAIN_TIMEOUT_SECS,
            raw::DRAIN_TIMEOUT_SECS,
            "daemon.drain_timeout_secs",
            ctx,
        ))),
        max_job_timeout: Duration::from_secs(
            60 * u64::from(number(
                raw.max_job_timeout_mins.as_ref(),
                raw::DEFAULT_MAX_JOB_TIMEOUT_MINS,
                raw::MAX_JOB_TIMEOUT_MINS,
                "daemon.max_job_timeout_mins",
                ctx,
            )),
        ),
        metrics_listen: raw
            .metrics_listen
            .as_ref()
            .and_then(|v| listen_addr(v, "daemon.metrics_listen", ctx)),
        runner_name: match &raw.runner_name {
            Some(n) => runner_name(n, "daemon.runner_name", ctx),
            None => default_runner_name(),
        },
    }
}

fn actions(raw: &RawActions, ctx: &mut Ctx<'_>) -> ActionsConfig {
    let default_url = match &raw.default_url {
        Some(u) => match crate::actions::policy::HttpUrl::parse(u.get_ref()) {
            Ok(url) if u.get_ref().trim().contains("://") => url.as_str().to_owned(),
            Ok(_) | Err(_) => {
                ctx.push(
                    Some(u.span()),
                    Some("actions.default_url".to_owned()),
                    ErrorKind::InvalidValue,
                    format!(
                        "\"{}\" is not an http:// or https:// URL",
                        u.get_ref().trim()
                    ),
                    Some(
                        "write where actions come from, e.g. \"https://github.com\" or \
                         \"https://data.forgejo.org\" (no user name, query or fragment)"
                            .to_owned(),
                    ),
                );
                String::new()
            }
        },
        None => raw::DEFAULT_ACTIONS_URL.to_owned(),
    };
    let mut allowed_hosts = Vec::new();
    if let Some(list) = &raw.allowed_hosts {
        for h in list.get_ref() {
            match crate::actions::policy::HostEntry::parse(h.get_ref()) {
                Ok(_) => allowed_hosts.push(h.get_ref().trim().to_owned()),
                Err(e) => ctx.push(
                    Some(h.span()),
                    Some("actions.allowed_hosts".to_owned()),
                    ErrorKind::InvalidValue,
                    e,
                    Some(
                        "list host names or addresses, with a port when only one port is meant"
                            .to_owned(),
                    ),
                ),
            }
        }
    }
    let mib = number(
        raw.cache_max_mib.as_ref(),
        raw::DEFAULT_ACTIONS_CACHE_MAX_MIB,
        raw::ACTIONS_CACHE_MAX_MIB,
        "actions.cache_max_mib",
        ctx,
    );
    ActionsConfig {
        default_url,
        allowed_hosts,
        cache_max_bytes: u64::from(mib) << 20,
    }
}

fn cache(raw: &RawCache, daemon: &DaemonConfig, ctx: &mut Ctx<'_>) -> CacheConfig {
    let dir = match &raw.dir {
        Some(p) => {
            non_empty_path(p, "cache.dir", ctx);
            ctx.resolve(p.get_ref())
        }
        None => CacheConfig::default_dir(&daemon.state_dir),
    };
    let mib = number(
        raw.max_mib.as_ref(),
        raw::DEFAULT_CACHE_MAX_MIB,
        raw::CACHE_MAX_MIB,
        "cache.max_mib",
        ctx,
    );
    CacheConfig {
        enabled: raw.enabled.as_ref().is_none_or(|e| *e.get_ref()),
        dir,
        max_bytes: u64::from(mib) << 20,
    }
}

fn qemu(raw: &RawQemu, opts: &ParseOptions, ctx: &mut Ctx<'_>) -> QemuConfig {
    let binary = |p: &Option<Spanned<PathBuf>>, default: &str, key: &str, ctx: &mut Ctx<'_>| {
        match p {
            Some(p) => {
                non_empty_path(p, key, ctx);
                // A bare name is looked up in PATH; anything with a `/` is a path.
                if p.get_ref().components().count() > 1 {
                    ctx.resolve(p.get_ref())
                } else {
                    p.get_ref().clone()
                }
            }
            None => PathBuf::from(default),
        }
    };
    let system_binary = binary(
        &raw.system_binary,
        raw::DEFAULT_SYSTEM_BINARY,
        "qemu.system_binary",
        ctx,
    );
    let img_binary = binary(
        &raw.img_binary,
        raw::DEFAULT_IMG_BINARY,
        "qemu.img_binary",
        ctx,
    );
    let firmware_file = |p: &Option<Spanned<PathBuf>>, key: &str, ctx: &mut Ctx<'_>| {
        let p = p.as_ref()?;
        non_empty_path(p, key, ctx);
        let path = ctx.resolve(p.get_ref());
        if opts.check_paths {
            existing_file(&path, p.span(), key, "UEFI firmware file", ctx);
        }
        Some(path)
    };
    let uefi_code = firmware_file(&raw.uefi_code, "qemu.uefi_code", ctx);
    let uefi_vars = firmware_file(&raw.uefi_vars, "qemu.uefi_vars", ctx);
    QemuConfig {
        system_binary,
        img_binary,
        accel: raw
            .accel
            .as_ref()
            .map_or(raw::DEFAULT_ACCEL, |a| *a.get_ref()),
        uefi_code,
        uefi_vars,
    }
}

fn image(
    name: &Spanned<String>,
    raw: &Spanned<RawImage>,
    qemu: &QemuConfig,
    opts: &ParseOptions,
    ctx: &mut Ctx<'_>,
) -> ImageConfig {
    let n = name.get_ref();
    let key = |k: &str| format!("images.{n}.{k}");
    check_name("image", "images", name, ctx);
    let img = raw.get_ref();
    let path = match &img.path {
        Some(p) => {
            non_empty_path(p, &key("path"), ctx);
            let path = ctx.resolve(p.get_ref());
            if opts.check_paths && !p.get_ref().as_os_str().is_empty() {
                existing_file(
                    &path,
                    p.span(),
                    &key("path"),
                    &format!("image \"{n}\""),
                    ctx,
                );
            }
            path
        }
        None => {
            ctx.push(
                Some(name.span()),
                Some(key("path")),
                ErrorKind::MissingKey,
                format!("image \"{n}\" has no path"),
                Some(format!(
                    "add `path = \"/var/cache/solstice/images/{n}.qcow2\"` (the base image file) to [images.{n}]"
                )),
            );
            PathBuf::new()
        }
    };
    let firmware = img
        .firmware
        .as_ref()
        .map_or(raw::DEFAULT_FIRMWARE, |f| *f.get_ref());
    if firmware == Firmware::Uefi {
        let missing: Vec<&str> = [
            ("uefi_code", qemu.uefi_code.is_none()),
            ("uefi_vars", qemu.uefi_vars.is_none()),
        ]
        .iter()
        .filter(|(_, m)| *m)
        .map(|(k, _)| *k)
        .collect();
        if !missing.is_empty() {
            let span = img.firmware.as_ref().map(|f| f.span());
            ctx.push(
                span,
                Some(key("firmware")),
                ErrorKind::MissingKey,
                format!(
                    "image \"{n}\" boots with UEFI but qemu.{} {} not set",
                    missing.join(" and qemu."),
                    if missing.len() > 1 { "are" } else { "is" }
                ),
                Some(
                    "set uefi_code and uefi_vars in [qemu] (e.g. \"/usr/share/OVMF/OVMF_CODE.fd\" and \"/usr/share/OVMF/OVMF_VARS.fd\" from Debian's ovmf package), or use firmware = \"bios\""
                        .to_owned(),
                ),
            );
        }
    }
    let ssh_user = match &img.ssh_user {
        Some(u) => {
            if u.get_ref().trim().is_empty() {
                ctx.push(
                    Some(u.span()),
                    Some(key("ssh_user")),
                    ErrorKind::InvalidValue,
                    "the SSH user is empty".to_owned(),
                    Some(format!(
                        "name the guest user, or remove the key to use \"{}\"",
                        raw::DEFAULT_SSH_USER
                    )),
                );
            }
            u.get_ref().clone()
        }
        None => raw::DEFAULT_SSH_USER.to_owned(),
    };
    let labels = labels(n, img.labels.as_ref(), ctx);
    let disk_size_gib = img
        .disk_size_gib
        .as_ref()
        .map(|d| number(Some(d), 0, raw::DISK_SIZE_GIB, &key("disk_size_gib"), ctx));
    if let Some(snap) = img.snapshot.as_ref().filter(|s| *s.get_ref()) {
        let os = img.os.as_ref().map_or(raw::DEFAULT_OS, |o| *o.get_ref());
        let seed = img
            .seed
            .as_ref()
            .map_or(raw::DEFAULT_SEED, |s| *s.get_ref());
        let why = if os != super::GuestOs::Linux {
            Some(
                "illumos has no vmgenid driver, so restored clones would share the kernel's random state",
            )
        } else if seed != super::SeedKind::NoCloud {
            Some(
                "a restored guest is re-keyed over SSH with the key its template got from a NoCloud seed",
            )
        } else if firmware == Firmware::Uefi {
            Some("the UEFI variable store is not carried into restored clones")
        } else {
            None
        };
        if let Some(why) = why {
            ctx.push(
                Some(snap.span()),
                Some(key("snapshot")),
                ErrorKind::InvalidValue,
                format!("this image cannot start guests from a snapshot: {why}"),
                Some(format!(
                    "remove the key (guests boot), and use `images.{n}.warm` for pre-booted guests"
                )),
            );
        }
    }
    ImageConfig {
        name: n.clone(),
        path,
        format: img
            .format
            .as_ref()
            .map_or(raw::DEFAULT_FORMAT, |f| *f.get_ref()),
        os: img.os.as_ref().map_or(raw::DEFAULT_OS, |o| *o.get_ref()),
        firmware,
        vcpus: number(
            img.vcpus.as_ref(),
            raw::DEFAULT_VCPUS,
            raw::VCPUS,
            &key("vcpus"),
            ctx,
        ),
        memory_mib: number(
            img.memory_mib.as_ref(),
            raw::DEFAULT_MEMORY_MIB,
            raw::MEMORY_MIB,
            &key("memory_mib"),
            ctx,
        ),
        disk_size_gib,
        ssh_user,
        seed: img
            .seed
            .as_ref()
            .map_or(raw::DEFAULT_SEED, |s| *s.get_ref()),
        boot_timeout: Duration::from_secs(u64::from(number(
            img.boot_timeout_secs.as_ref(),
            raw::DEFAULT_BOOT_TIMEOUT_SECS,
            raw::BOOT_TIMEOUT_SECS,
            &key("boot_timeout_secs"),
            ctx,
        ))),
        readiness_probes: number(
            img.readiness_probes.as_ref(),
            raw::DEFAULT_READINESS_PROBES,
            raw::READINESS_PROBES,
            &key("readiness_probes"),
            ctx,
        ),
        readiness_probe_interval: Duration::from_secs(u64::from(number(
            img.readiness_probe_interval_secs.as_ref(),
            raw::DEFAULT_READINESS_PROBE_INTERVAL_SECS,
            raw::READINESS_PROBE_INTERVAL_SECS,
            &key("readiness_probe_interval_secs"),
            ctx,
        ))),
        labels,
        max_concurrent_jobs: img.max_concurrent_jobs.as_ref().map(|v| {
            number(
                Some(v),
                raw::DEFAULT_MAX_CONCURRENT_JOBS,
                raw::MAX_CONCURRENT_JOBS,
                &key("max_concurrent_jobs"),
                ctx,
            )
        }),
        cpu: img.cpu.as_ref().map(|c| {
            cpu_model(c, &key("cpu"), ctx);
            c.get_ref().clone()
        }),
        path_prepend: path_prepend(img.path_prepend.as_ref(), &key("path_prepend"), ctx),
        node: img.node.as_ref().map(|p| {
            guest_path(p, &key("node"), false, ctx);
            p.get_ref().clone()
        }),
        network: img
            .network
            .as_ref()
            .map_or(raw::DEFAULT_NETWORK, |v| *v.get_ref()),
        network_deny: cidrs(img.network_deny.as_ref(), &key("network_deny"), ctx),
        network_allow: cidrs(img.network_allow.as_ref(), &key("network_allow"), ctx),
        registry_mirror: img
            .registry_mirror
            .as_ref()
            .and_then(|m| registry_mirror(m, &key("registry_mirror"), ctx)),
        warm: number(
            img.warm.as_ref(),
            raw::DEFAULT_WARM,
            raw::WARM,
            &key("warm"),
            ctx,
        ),
        warm_max_idle: Duration::from_secs(u64::from(number(
            img.warm_max_idle_secs.as_ref(),
            raw::DEFAULT_WARM_MAX_IDLE_SECS,
            raw::WARM_MAX_IDLE_SECS,
            &key("warm_max_idle_secs"),
            ctx,
        ))),
        snapshot: img.snapshot.as_ref().is_some_and(|s| *s.get_ref()),
    }
}

/// The normalised `registry_mirror` (`scheme://host[:port]`), or `None`
/// after recording an error: it must be an `http` or `https` URL with a host
/// and an optional port, and nothing else (no user, password, path, query or
/// fragment), as Docker's `registry-mirrors` takes it.
fn registry_mirror(v: &Spanned<String>, key: &str, ctx: &mut Ctx<'_>) -> Option<String> {
    let text = v.get_ref().trim();
    let why = match url::Url::parse(text) {
        Err(e) => format!("it is not a URL ({e})"),
        Ok(u) if u.scheme() != "http" && u.scheme() != "https" => {
            format!("its scheme is \"{}\", not http or https", u.scheme())
        }
        Ok(u) if u.host_str().is_none_or(str::is_empty) => "it has no host".to_owned(),
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            "it carries a user name or password (Docker mirrors take none)".to_owned()
        }
        Ok(u) if u.path() != "/" => {
            format!("it has a path (\"{}\")", u.path())
        }
        Ok(u) if u.query().is_some() || u.fragment().is_some() => {
            "it has a query or fragment".to_owned()
        }
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            return Some(match u.port() {
                Some(p) => format!("{}://{host}:{p}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            });
        }
    };
    ctx.push(
        Some(v.span()),
        Some(key.to_owned()),
        ErrorKind::InvalidValue,
        format!(
            "\"{}\" is not a registry mirror: {why}",
            v.get_ref().escape_debug()
        ),
        Some(
            "write the mirror's base URL, scheme, host and optional port only, e.g. \"http://10.0.0.5:5000\" or \"https://mirror.example.com\""
                .to_owned(),
        ),
    );
    None
}

/// The ranges of a `network_deny`/`network_allow` list; records an error for
/// each entry that is not `ADDR/LEN` (or a bare address).
fn cidrs(raw: Option<&Spanned<Vec<Spanned<String>>>>, key: &str, ctx: &mut Ctx<'_>) -> Vec<Cidr> {
    let Some(list) = raw else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for v in list.get_ref() {
        match Cidr::parse(v.get_ref().trim()) {
            Ok(c) => out.push(c),
            Err(why) => ctx.push(
                Some(v.span()),
                Some(key.to_owned()),
                ErrorKind::InvalidValue,
                format!("\"{}\" is not an address range: {why}", v.get_ref().escape_debug()),
                Some(
                    "write a CIDR range such as \"10.0.0.0/8\" or \"fd00::/8\" (a bare address means that one address)"
                        .to_owned(),
                ),
            ),
        }
    }
    out
}

/// Where character `i` (a byte index) of a string value lies in the file:
/// exact when the value is written without escapes, else the value's start.
fn char_span(v: &Spanned<String>, i: usize, text: &str) -> Range<usize> {
    let span = v.span();
    let written = text.get(span.clone()).unwrap_or_default();
    let inner = written.get(1..written.len().saturating_sub(1));
    if inner == Some(v.get_ref().as_str()) {
        span.start + 1 + i..span.end
    } else {
        span
    }
}

/// Records an error unless `v` reads as QEMU's `-cpu` argument: a model
/// name (`[A-Za-z0-9][A-Za-z0-9._-]*`), then comma-separated `+flag`,
/// `-flag` or `key=value` items, without spaces.
fn cpu_model(v: &Spanned<String>, key: &str, ctx: &mut Ctx<'_>) {
    const FIX: &str = "write a model and optional features, e.g. \"qemu64,+rdrand,-svm\", \"EPYC-Rome\" or \"host,-vmx\" (`qemu-system-x86_64 -cpu help` lists the models), or remove the key to use the default";
    let text = v.get_ref();
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let problem: Option<(usize, String)> = if text.is_empty() {
        Some((0, "the CPU model is empty".to_owned()))
    } else if let Some(i) = text.find(|c: char| c.is_whitespace() || c.is_control()) {
        Some((
            i,
            format!(
                "\"{}\" has a space or control character: QEMU takes the CPU model as one word",
                text.escape_debug()
            ),
        ))
    } else if text.starts_with('-') {
        Some((
            0,
            format!(
                "\"{text}\" starts with `-`, so QEMU would read it as an option, not a CPU model"
            ),
        ))
    } else {
        let mut at = 0;
        let mut found = None;
        for (n, item) in text.split(',').enumerate() {
            let bad = if n == 0 {
                if item.is_empty() {
                    Some("the model name is missing before the first `,`".to_owned())
                } else {
                    item.find(|c| !name_char(c)).map(|_| {
                        format!(
                            "\"{item}\" is not a CPU model name (letters, digits, `.`, `_` and `-`)"
                        )
                    })
                }
            } else if let Some(flag) = item.strip_prefix(['+', '-']) {
                (flag.is_empty() || !flag.chars().all(name_char))
                    .then(|| format!("\"{item}\" is not a `+flag` or `-flag` feature"))
            } else if let Some((k, val)) = item.split_once('=') {
                let ok_val = |c: char| name_char(c) || matches!(c, '+' | ':');
                (k.is_empty()
                    || !k.chars().all(name_char)
                    || val.is_empty()
                    || !val.chars().all(ok_val))
                .then(|| format!("\"{item}\" is not a `key=value` feature"))
            } else {
                Some(format!(
                    "\"{item}\" is not a feature: write `+{item}`, `-{item}` or `{item}=on`"
                ))
            };
            if let Some(b) = bad {
                found = Some((at, b));
                break;
            }
            at += item.len() + 1;
        }
        found
    };
    if let Some((i, message)) = problem {
        let span = char_span(v, i, ctx.text);
        ctx.push(
            Some(span),
            Some(key.to_owned()),
            ErrorKind::InvalidValue,
            message,
            Some(FIX.to_owned()),
        );
    }
}

/// Records an error unless `v` is an absolute guest path without control
/// characters (and, when it is a `PATH` entry, without `:`). False when bad.
fn guest_path(v: &Spanned<String>, key: &str, path_entry: bool, ctx: &mut Ctx<'_>) -> bool {
    let p = v.get_ref();
    let problem = if !p.starts_with('/') {
        Some((
            0,
            format!("\"{}\" is not an absolute path", p.escape_debug()),
        ))
    } else if let Some(i) = p.find(char::is_control) {
        Some((
            i,
            format!(
                "\"{}\" has a newline or control character",
                p.escape_debug()
            ),
        ))
    } else if path_entry && let Some(i) = p.find(':') {
        Some((
            i,
            format!("\"{p}\" has a `:`, which separates `PATH` entries"),
        ))
    } else {
        None
    };
    let Some((i, message)) = problem else {
        return true;
    };
    let span = char_span(v, i, ctx.text);
    ctx.push(
        Some(span),
        Some(key.to_owned()),
        ErrorKind::InvalidValue,
        message,
        Some(if path_entry {
            "write one absolute directory per entry, e.g. \"/usr/gnu/bin\"".to_owned()
        } else {
            "write the absolute path in the guest, e.g. \"/opt/ooce/bin/node\"".to_owned()
        }),
    );
    false
}

fn path_prepend(
    raw: Option<&Spanned<Vec<Spanned<String>>>>,
    key: &str,
    ctx: &mut Ctx<'_>,
) -> Vec<String> {
    let Some(list) = raw else {
        return Vec::new();
    };
    list.get_ref()
        .iter()
        .filter(|dir| guest_path(dir, key, true, ctx))
        .map(|dir| dir.get_ref().clone())
        .collect()
}

fn forge(
    name: &Spanned<String>,
    raw: &Spanned<RawForge>,
    daemon: &DaemonConfig,
    images: &BTreeMap<String, ImageConfig>,
    ctx: &mut Ctx<'_>,
) -> ForgeConfig {
    let n = name.get_ref();
    let key = |k: &str| format!("forges.{n}.{k}");
    check_name("forge", "forges", name, ctx);
    let f = raw.get_ref();
    let kind = f
        .kind
        .as_ref()
        .map_or(raw::DEFAULT_FORGE_KIND, |k| *k.get_ref());
    // A `kind` that is not one was reported: what depends on the kind
    // cannot be checked, so only the rest is.
    let kind_bad = ctx
        .errors
        .iter()
        .any(|e| e.key.as_deref() == Some(key("kind").as_str()));
    if !kind_bad {
        github::other_kind_keys(n, f, kind, f.kind.is_some(), ctx);
    }
    let mut scope = None;
    let url = match (&f.url, kind) {
        (Some(_), _) if kind_bad => String::new(),
        (Some(u), ForgeKind::Forgejo) => {
            let url = forge_url(u, &key("url"), ctx);
            not_github_host(u, &url, &key("url"), f.kind.is_some(), ctx);
            url
        }
        (Some(u), ForgeKind::Github) => match github::github_url(u, &key("url"), ctx) {
            Some((url, s)) => {
                scope = Some(s);
                url
            }
            None => String::new(),
        },
        (None, kind) => {
            ctx.push(
                Some(raw.span()),
                Some(key("url")),
                ErrorKind::MissingKey,
                "the forge has no `url`".to_owned(),
                Some(match kind {
                    ForgeKind::Forgejo => "add `url = \"https://forge.example.org\"` (the address you open in a browser)".to_owned(),
                    ForgeKind::Github => "add the repository, organisation or enterprise the runners serve, e.g. `url = \"https://github.com/owner/repo\"`".to_owned(),
                }),
            );
            String::new()
        }
    };
    let credentials = match kind {
        _ if kind_bad => CredentialSource::RunnerFile(PathBuf::new()),
        ForgeKind::Forgejo => forgejo_credentials(n, raw, ctx),
        ForgeKind::Github => github::credentials(n, raw, ctx),
    };
    let github = match kind {
        ForgeKind::Forgejo => None,
        ForgeKind::Github => Some(github::github_forge(
            n,
            f,
            &url,
            scope.unwrap_or(GithubScope::Organization(String::new())),
            ctx,
        )),
    };
    let image_labels: Vec<&String> = images.values().flat_map(|i| &i.labels).collect();
    let labels = match &f.labels {
        Some(list) => {
            if list.get_ref().is_empty() {
                ctx.push(
                    Some(list.span()),
                    Some(key("labels")),
                    ErrorKind::InvalidValue,
                    "the label list is empty, so this forge can never send a job".to_owned(),
                    Some("list at least one image label, or remove the key to declare every image's labels".to_owned()),
                );
            }
            for label in list.get_ref() {
                let l = label.get_ref();
                if !label_syntax(label, &key("labels"), ctx) {
                    continue;
                }
                if !image_labels.contains(&l) {
                    let mut known: Vec<&str> = image_labels.iter().map(|s| s.as_str()).collect();
                    known.sort_unstable();
                    known.dedup();
                    ctx.push(
                        Some(label.span()),
                        Some(key("labels")),
                        ErrorKind::InvalidValue,
                        format!("label \"{l}\" belongs to no image, so its jobs could not run"),
                        Some(format!(
                            "use an image label ({}) or add it to an image's `labels`",
                            known.join(", ")
                        )),
                    );
                }
            }
            list.get_ref().iter().map(|l| l.get_ref().clone()).collect()
        }
        None => {
            let mut all: Vec<String> = image_labels.into_iter().cloned().collect();
            all.sort();
            all.dedup();
            all
        }
    };
    let fetch_interval_default = match kind {
        ForgeKind::Forgejo => raw::DEFAULT_FETCH_INTERVAL_SECS,
        ForgeKind::Github => raw::DEFAULT_GITHUB_FETCH_INTERVAL_SECS,
    };
    ForgeConfig {
        name: n.clone(),
        url,
        github,
        credentials,
        runner_name: match &f.runner_name {
            Some(r) => runner_name(r, &key("runner_name"), ctx),
            None => daemon.runner_name.clone(),
        },
        labels,
        fetch_interval: Duration::from_secs(u64::from(number(
            f.fetch_interval_secs.as_ref(),
            fetch_interval_default,
            raw::FETCH_INTERVAL_SECS,
            &key("fetch_interval_secs"),
            ctx,
        ))),
        fetch_timeout: Duration::from_secs(u64::from(number(
            match kind {
                // Refused under GitHub (other_kind_keys); keep the default.
                ForgeKind::Github => None,
                ForgeKind::Forgejo => f.fetch_timeout_secs.as_ref(),
            },
            raw::DEFAULT_FETCH_TIMEOUT_SECS,
            raw::FETCH_TIMEOUT_SECS,
            &key("fetch_timeout_secs"),
            ctx,
        ))),
        debug_ssh: crate::config::ForgeDebugSsh::default(),
    }
}

/// Forgejo's credentials: exactly one of the three files.
fn forgejo_credentials(n: &str, raw: &Spanned<RawForge>, ctx: &mut Ctx<'_>) -> CredentialSource {
    let key = |k: &str| format!("forges.{n}.{k}");
    let f = raw.get_ref();
    let sources: Vec<(&str, &Spanned<PathBuf>)> = [
        ("registration_token_file", &f.registration_token_file),
        ("secret_file", &f.secret_file),
        ("runner_file", &f.runner_file),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    let github_credentials = f.app_id.is_some()
        || f.installation_id.is_some()
        || f.private_key_file.is_some()
        || f.token_file.is_some();
    match sources.as_slice() {
        [(k, p)] => {
            non_empty_path(p, &key(k), ctx);
            let path = ctx.resolve(p.get_ref());
            match *k {
                "registration_token_file" => CredentialSource::RegistrationTokenFile(path),
                "secret_file" => CredentialSource::SecretFile(path),
                _ => CredentialSource::RunnerFile(path),
            }
        }
        // GitHub keys under Forgejo were reported already.
        [] if github_credentials => CredentialSource::RunnerFile(PathBuf::new()),
        [] => {
            ctx.push(
                Some(raw.span()),
                Some(format!("forges.{n}")),
                ErrorKind::MissingKey,
                "the forge has no credentials".to_owned(),
                Some("set one of `registration_token_file`, `secret_file` (Forgejo offline registration) or `runner_file` (uuid + token JSON); for GitHub, write `kind = \"github\"` (docs/github.md)".to_owned()),
            );
            CredentialSource::RunnerFile(PathBuf::new())
        }
        [_, (k2, p2), ..] => {
            ctx.push(
                Some(p2.span()),
                Some(key(k2)),
                ErrorKind::InvalidValue,
                format!(
                    "only one credential source is allowed, found {}",
                    sources
                        .iter()
                        .map(|(k, _)| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
                Some("keep the one you use and remove the others".to_owned()),
            );
            CredentialSource::RunnerFile(PathBuf::new())
        }
    }
}

/// Records an error when a Forgejo section points at GitHub's own hosts.
fn not_github_host(
    u: &Spanned<String>,
    url: &str,
    key: &str,
    kind_written: bool,
    ctx: &mut Ctx<'_>,
) {
    let Ok(parts) = github::split_url(url) else {
        return;
    };
    if github::is_github_host(&parts.host) {
        ctx.push(
            Some(u.span()),
            Some(key.to_owned()),
            ErrorKind::InvalidValue,
            format!(
                "{} is GitHub, which does not speak the Forgejo runner API{}",
                parts.host,
                if kind_written {
                    ""
                } else {
                    " (a forge without `kind` is Forgejo or Gitea)"
                }
            ),
            Some("write `kind = \"github\"` and the repository, organisation or enterprise URL (docs/github.md)".to_owned()),
        );
    }
}

/// An `http(s)://` URL without a trailing `/`.
fn forge_url(u: &Spanned<String>, key: &str, ctx: &mut Ctx<'_>) -> String {
    let text = u.get_ref().trim();
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !text.contains(char::is_whitespace) => {
            text.trim_end_matches('/').to_owned()
        }
        _ => {
            ctx.push(
                Some(u.span()),
                Some(key.to_owned()),
                ErrorKind::InvalidValue,
                format!("\"{text}\" is not an http:// or https:// URL"),
                Some("write the instance address, e.g. \"https://codeberg.org\"".to_owned()),
            );
            String::new()
        }
    }
}

fn runner_name(n: &Spanned<String>, key: &str, ctx: &mut Ctx<'_>) -> String {
    let name = n.get_ref().trim();
    if name.is_empty() || name.len() > 255 {
        ctx.push(
            Some(n.span()),
            Some(key.to_owned()),
            ErrorKind::InvalidValue,
            "a runner name must have 1 to 255 bytes".to_owned(),
            Some("write a short name, e.g. \"solstice-builder-1\"".to_owned()),
        );
    }
    name.to_owned()
}

/// `solstice-<hostname>`.
pub(crate) fn default_runner_name() -> String {
    let host = host_name().unwrap_or_else(|| "host".to_owned());
    format!("solstice-{host}")
}

/// This host's name, as `gethostname` gives it (the kernel's `nodename`);
/// `None` when it cannot be read or is empty.
pub(crate) fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// `host:port`, or a bare port on 127.0.0.1.
fn listen_addr(v: &Spanned<String>, key: &str, ctx: &mut Ctx<'_>) -> Option<std::net::SocketAddr> {
    let text = v.get_ref().trim();
    if let Ok(port) = text.parse::<u16>() {
        return Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    match text.parse::<std::net::SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            ctx.push(
                Some(v.span()),
                Some(key.to_owned()),
                ErrorKind::InvalidValue,
                format!("\"{text}\" is not an address with a port"),
                Some(
                    "write e.g. \"127.0.0.1:9464\", \"[::1]:9464\" or just \"9464\" for loopback"
                        .to_owned(),
                ),
            );
            None
        }
    }
}

fn labels(
    name: &str,
    raw: Option<&Spanned<Vec<Spanned<String>>>>,
    ctx: &mut Ctx<'_>,
) -> Vec<String> {
    let Some(list) = raw else {
        return vec![name.to_owned()];
    };
    let key = format!("images.{name}.labels");
    if list.get_ref().is_empty() {
        ctx.push(
            Some(list.span()),
            Some(key.clone()),
            ErrorKind::InvalidValue,
            "the label list is empty, so no job can ever run on this image".to_owned(),
            Some(format!(
                "list at least one label, or remove the key to use the image name \"{name}\""
            )),
        );
    }
    for (i, label) in list.get_ref().iter().enumerate() {
        if label.get_ref().trim().is_empty() {
            ctx.push(
                Some(label.span()),
                Some(key.clone()),
                ErrorKind::InvalidValue,
                format!("label {} is empty", i + 1),
                Some("remove it or write the label text".to_owned()),
            );
        } else {
            label_syntax(label, &key, ctx);
        }
    }
    list.get_ref().iter().map(|l| l.get_ref().clone()).collect()
}

/// Records an error for a label that can never match `runs-on`: one with a
/// `:` (forgejo-runner's `name:docker://image` form) or with spaces around
/// it. False when the label is bad.
fn label_syntax(label: &Spanned<String>, key: &str, ctx: &mut Ctx<'_>) -> bool {
    let l = label.get_ref();
    let trimmed = l.trim();
    if let Some((name, _)) = l.split_once(':') {
        let name = name.trim();
        ctx.push(
            Some(label.span()),
            Some(key.to_owned()),
            ErrorKind::InvalidValue,
            format!(
                "label \"{l}\" has a `:`; Solstice labels are names only: each image is a VM image, so there is no `docker://` or other schema after the name, and the forge would only ever see the whole text"
            ),
            Some(if name.is_empty() {
                "write the label's name alone, e.g. \"ubuntu-latest\"".to_owned()
            } else {
                format!("write the name alone: \"{name}\"")
            }),
        );
        return false;
    }
    if trimmed != l {
        ctx.push(
            Some(label.span()),
            Some(key.to_owned()),
            ErrorKind::InvalidValue,
            format!("label \"{l}\" has spaces around it, so no `runs-on` would ever match it"),
            Some(format!("write \"{trimmed}\"")),
        );
        return false;
    }
    true
}

/// A number within `limit`, or `default` when absent. Out of range is recorded.
pub(crate) fn number(
    value: Option<&Spanned<i64>>,
    default: i64,
    limit: Limit,
    key: &str,
    ctx: &mut Ctx<'_>,
) -> u32 {
    let Some(v) = value else {
        return u32::try_from(default).unwrap_or(0);
    };
    let n = *v.get_ref();
    let problem = if n < limit.min {
        "too small"
    } else if n > limit.max {
        "too large"
    } else {
        return u32::try_from(n).unwrap_or(0);
    };
    ctx.push(
        Some(v.span()),
        Some(key.to_owned()),
        ErrorKind::OutOfRange,
        format!("{n} is {problem}"),
        Some(format!(
            "use a value from {} to {} ({})",
            limit.min, limit.max, limit.unit
        )),
    );
    0
}

fn non_empty_path(p: &Spanned<PathBuf>, key: &str, ctx: &mut Ctx<'_>) {
    if p.get_ref().as_os_str().is_empty() {
        ctx.push(
            Some(p.span()),
            Some(key.to_owned()),
            ErrorKind::InvalidValue,
            "the path is empty".to_owned(),
            Some("write a path, or remove the key to use the default".to_owned()),
        );
    }
}

fn existing_file(path: &Path, span: Range<usize>, key: &str, what: &str, ctx: &mut Ctx<'_>) {
    let problem = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => return,
        Ok(_) => "is not a regular file",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
        Err(_) => "cannot be read",
    };
    ctx.push(
        Some(span),
        Some(key.to_owned()),
        ErrorKind::MissingFile,
        format!("{what}: {} {problem}", path.display()),
        Some(format!(
            "fix the path (relative paths start at {}) or put the file there",
            ctx.base_dir.display()
        )),
    );
}

/// Records an error when a section name (`[images.<name>]`,
/// `[forges.<name>]`) is not `[a-z0-9][a-z0-9._-]*`.
fn check_name(kind: &str, section: &str, name: &Spanned<String>, ctx: &mut Ctx<'_>) {
    let n = name.get_ref();
    if !valid_image_name(n) {
        ctx.push(
            Some(name.span()),
            Some(format!("{section}.{n}")),
            ErrorKind::InvalidValue,
            format!("{kind} name \"{n}\" is not allowed"),
            Some(format!(
                "use lower-case letters, digits, \".\", \"_\" and \"-\", starting with a letter or digit, e.g. \"{}\"",
                suggest_image_name(n)
            )),
        );
    }
}

/// `[a-z0-9][a-z0-9._-]*`
pub(crate) fn valid_image_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// A valid image name close to `name`, for the fix text.
fn suggest_image_name(name: &str) -> String {
    let mapped: String = name
        .trim()
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_start_matches(['.', '_', '-']);
    if trimmed.is_empty() {
        "image".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// What each image file really is (`qemu-img info`), against its section:
/// readable, the declared `format`, a `disk_size_gib` not below the image's
/// size, an existing backing file. Missing files were reported already.
fn image_files(
    raw: &RawConfig,
    qemu: &QemuConfig,
    images: &BTreeMap<String, ImageConfig>,
    ctx: &mut Ctx<'_>,
) {
    use crate::vm::disk::{ProbeError, probe_image};
    for (name, section) in &raw.images {
        let n = name.get_ref();
        let (Some(image), Some(path_value)) = (images.get(n), section.get_ref().path.as_ref())
        else {
            continue;
        };
        if !std::fs::metadata(&image.path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let key = |k: &str| format!("images.{n}.{k}");
        let path = image.path.display();
        let info = match probe_image(&qemu.img_binary, &image.path) {
            Ok(info) => info,
            Err(ProbeError::Spawn { binary, source }) => {
                ctx.push(
                    None,
                    Some("qemu.img_binary".to_owned()),
                    ErrorKind::MissingFile,
                    format!(
                        "cannot run {} to check the image files ({source})",
                        binary.display()
                    ),
                    Some("install qemu-img (Debian: qemu-utils) or set qemu.img_binary; `check-config --no-path-checks` skips the image checks".to_owned()),
                );
                return;
            }
            Err(ProbeError::Open { source, .. }) => {
                ctx.push(
                    Some(path_value.span()),
                    Some(key("path")),
                    ErrorKind::MissingFile,
                    format!("image \"{n}\": {path} cannot be read ({source})"),
                    Some(format!(
                        "let the user that runs Solstice read it ({})",
                        owner_and_mode(&image.path)
                    )),
                );
                continue;
            }
            Err(e) => {
                let why = match e {
                    ProbeError::Unreadable { stderr, .. } => stderr,
                    other => other.to_string(),
                };
                ctx.push(
                    Some(path_value.span()),
                    Some(key("path")),
                    ErrorKind::Image,
                    format!("image \"{n}\": qemu-img cannot read {path} as a disk image ({why})"),
                    Some("point the path at a complete qcow2 or raw image (a copy may have been cut short)".to_owned()),
                );
                continue;
            }
        };
        let declared = section.get_ref().format.as_ref();
        if info.format != image.format.as_str() {
            let span = declared.map_or(path_value.span(), |f| f.span());
            let (message, fix) = match info.known_format() {
                Some(real) => (
                    format!(
                        "{path} is a {} image, not {}{}",
                        info.format,
                        image.format.as_str(),
                        if declared.is_none() {
                            " (the default)"
                        } else {
                            ""
                        }
                    ),
                    format!(
                        "{} should be \"{}\"{}",
                        key("format"),
                        real.as_str(),
                        if declared.is_none() {
                            format!(" (add `format = \"{}\"` to [images.{n}])", real.as_str())
                        } else {
                            String::new()
                        }
                    ),
                ),
                None => (
                    format!(
                        "{path} is a {} image, which Solstice cannot boot",
                        info.format
                    ),
                    format!(
                        "convert it (`qemu-img convert -O qcow2 {path} NEW.qcow2`) and point {} at the new file",
                        key("path")
                    ),
                ),
            };
            ctx.push(
                Some(span),
                Some(key("format")),
                ErrorKind::Image,
                message,
                Some(fix),
            );
        }
        if let (Some(gib), Some(value)) = (
            image.disk_size_gib,
            section.get_ref().disk_size_gib.as_ref(),
        ) && (u64::from(gib) << 30) < info.virtual_size
        {
            let at_least = info.virtual_size.div_ceil(1 << 30);
            ctx.push(
                Some(value.span()),
                Some(key("disk_size_gib")),
                ErrorKind::Image,
                format!(
                    "{gib} GiB is smaller than the image {path} ({})",
                    human_bytes(info.virtual_size)
                ),
                Some(format!(
                    "use at least {at_least}, or remove the key to keep the image's size"
                )),
            );
        }
        if let Some(backing) = &info.backing_file
            && !backing.is_file()
        {
            ctx.push(
                Some(path_value.span()),
                Some(key("path")),
                ErrorKind::Image,
                format!(
                    "image \"{n}\": {path} needs its backing file {}, which does not exist",
                    backing.display()
                ),
                Some(format!(
                    "put the backing file there, or make a standalone copy (`qemu-img convert -O qcow2 {path} NEW.qcow2`)"
                )),
            );
        }
    }
}

/// `owned by uid 0, gid 0, mode 0600`, for messages about unreadable files.
fn owner_and_mode(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "it is owned by uid {}, gid {}, mode {:04o}",
            m.uid(),
            m.gid(),
            m.mode() & 0o7777
        ),
        Err(_) => "check its owner and mode".to_owned(),
    }
}

/// `2147483648 bytes, 2.0 GiB`.
fn human_bytes(n: u64) -> String {
    let gib = n as f64 / f64::from(1u32 << 30);
    if gib >= 1.0 {
        format!("{n} bytes, {gib:.1} GiB")
    } else {
        format!("{n} bytes, {:.1} MiB", n as f64 / f64::from(1u32 << 20))
    }
}

//! Shared harness for the tests that boot real guests: image lookup, a
//! per-test state directory, running a workflow in a VM, and the leak check
//! that runs after every VM test.

pub mod actions;
pub mod daemon;
pub mod git_server;
pub mod netns;
pub mod npm;
pub mod registry;
pub mod world;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::json;
use solstice::config::{
    AccelChoice, ActionsConfig, Config, DaemonConfig, Firmware, GuestOs, ImageConfig, ImageFormat,
    QemuConfig, SeedKind,
};
use solstice::job::{self, CheckoutSource, JobSpec, RunError, RunReport, VmRun};
use solstice::secret::Secret;
use solstice::testing::VecSink;
use solstice::vm::Accel;
use solstice::vm::accel::Accelerator;
use tokio_util::sync::CancellationToken;

/// Repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of a guest image: `$SOLSTICE_TEST_IMAGE_<NAME>`, or built (and cached)
/// with `images/build.sh NAME`. Panics (fails the test) if neither works.
pub fn image(name: &str) -> PathBuf {
    static TINY: OnceLock<PathBuf> = OnceLock::new();
    static DEBIAN: OnceLock<PathBuf> = OnceLock::new();
    static RUNNER: OnceLock<PathBuf> = OnceLock::new();
    let cell = match name {
        "tiny" => &TINY,
        "debian" => &DEBIAN,
        "runner" => &RUNNER,
        other => panic!("unknown test image {other}"),
    };
    cell.get_or_init(|| {
        let var = format!("SOLSTICE_TEST_IMAGE_{}", name.to_uppercase());
        if let Some(p) = std::env::var_os(&var) {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "{var}={} does not exist", p.display());
            return p;
        }
        let out = std::process::Command::new(repo_root().join("images/build.sh"))
            .arg(name)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run images/build.sh");
        assert!(
            out.status.success(),
            "images/build.sh {name} failed; set {var} to a built image"
        );
        let p = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert!(p.is_file(), "images/build.sh printed {}", p.display());
        p
    })
    .clone()
}

/// A test's private state directory and configuration.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub config: Config,
    /// TCG, fixed (tests that need another replace it).
    pub accel: Accelerator,
}

impl TestEnv {
    /// The tiny busybox/dropbear guest (no bash), root login, NoCloud seed.
    pub fn tiny() -> Self {
        Self::with_image(image_config("tiny", image("tiny"), "root", 256))
    }

    /// The Debian guest with real cloud-init, user `debian`.
    pub fn debian() -> Self {
        Self::with_image(image_config("debian", image("debian"), "debian", 512))
    }

    /// The Debian guest for container jobs: 1536 MiB (the engine and a few
    /// containers do not fit in 512), and `registry_mirror` set to the test
    /// registry `reg` ([`registry::shared`]), so `solstice-test/...` images
    /// pull from it through the guest's own network.
    pub fn debian_containers(reg: &registry::Registry) -> Self {
        Self::with_image(container_image_config(reg))
    }

    /// The runner image (GitHub's conventions: user `runner`, sudo, apt
    /// assumes yes, compilers, node, Rust), labelled `ubuntu-latest` too.
    pub fn runner() -> Self {
        let mut img = image_config("runner", image("runner"), "runner", 1024);
        img.labels.push("ubuntu-latest".into());
        img.boot_timeout = Duration::from_secs(300);
        Self::with_image(img)
    }

    pub fn with_image(img: ImageConfig) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("solstice-test-")
            .tempdir()
            .unwrap();
        let mut images = BTreeMap::new();
        images.insert(img.name.clone(), img);
        let config = Config {
            daemon: DaemonConfig {
                state_dir: dir.path().join("state"),
                max_concurrent_jobs: 2,
                drain_timeout: Duration::from_secs(600),
                max_job_timeout: Duration::from_secs(3600),
                metrics_listen: None,
                runner_name: "solstice-test".into(),
            },
            qemu: QemuConfig {
                system_binary: "qemu-system-x86_64".into(),
                img_binary: "qemu-img".into(),
                accel: AccelChoice::Tcg,
                uefi_code: None,
                uefi_vars: None,
            },
            images,
            forges: BTreeMap::new(),
            actions: ActionsConfig::default(),
            cache: solstice::config::CacheConfig {
                enabled: true,
                dir: dir.path().join("state/cache"),
                max_bytes: 1 << 30,
            },
            debug_ssh: None,
            warnings: Vec::new(),
        };
        Self {
            dir,
            config,
            accel: Accelerator::fixed(Accel::Tcg),
        }
    }

    pub fn image(&self) -> &ImageConfig {
        self.config.images.values().next().unwrap()
    }

    pub fn image_mut(&mut self) -> &mut ImageConfig {
        self.config.images.values_mut().next().unwrap()
    }

    pub fn jobs_dir(&self) -> PathBuf {
        job::jobs_dir(&self.config)
    }

    /// Writes a solstice.toml for this environment (for tests of the binary).
    pub fn write_config_file(&self) -> PathBuf {
        let img = self.image();
        let text = format!(
            "[daemon]\nstate_dir = {:?}\n[qemu]\naccel = \"{}\"\nsystem_binary = {:?}\n[images.{}]\npath = {:?}\nssh_user = {:?}\nmemory_mib = {}\nvcpus = {}\nboot_timeout_secs = {}\nlabels = [{}]\n",
            self.config.daemon.state_dir,
            match self.config.qemu.accel {
                AccelChoice::Auto => "auto",
                AccelChoice::Kvm => "kvm",
                AccelChoice::Tcg => "tcg",
            },
            self.config.qemu.system_binary,
            img.name,
            img.path,
            img.ssh_user,
            img.memory_mib,
            img.vcpus,
            img.boot_timeout.as_secs(),
            img.labels
                .iter()
                .map(|l| format!("{l:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let p = self.dir.path().join("solstice.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Asserts that no QEMU process and no per-job file is left behind.
    pub fn assert_no_leaks(&self) {
        let leaks = solstice::testing::leaks::check(&self.jobs_dir());
        assert!(leaks.is_empty(), "resources left behind: {leaks:#?}");
    }

    /// Runs `yaml`'s only job in a fresh VM, then checks for leaks.
    pub async fn run(&self, yaml: &str, opts: RunOpts) -> (Result<RunReport, RunError>, VecSink) {
        let sink = VecSink::default();
        let result = self.run_with_sink(yaml, opts, &sink).await;
        self.assert_no_leaks();
        (result, sink)
    }

    pub async fn run_with_sink(
        &self,
        yaml: &str,
        opts: RunOpts,
        sink: &dyn solstice::events::EventSink,
    ) -> Result<RunReport, RunError> {
        let mut spec = self.spec(
            yaml,
            opts.secrets,
            opts.checkout.unwrap_or(CheckoutSource::None),
        );
        if let Some((cache, url)) = opts.actions {
            spec.actions = Some(cache);
            spec.default_actions_url = Some(url);
        }
        spec.cache = opts.cache;
        if let Some(r) = opts.repository {
            spec.github["repository"] = json!(r);
        }
        let job_id = job::id::new_job_id("test");
        let run = VmRun {
            config: &self.config,
            image: self.image(),
            accel: &self.accel,
            job_id: &job_id,
            spec: &spec,
            runner_name: "solstice-test",
            observer: None,
            debug: None,
            warm: None,
        };
        let cancel = opts.cancel.unwrap_or_default();
        job::run_in_vm(&run, sink, &cancel).await
    }

    pub fn spec(
        &self,
        yaml: &str,
        secrets: Vec<(&'static str, &'static str)>,
        checkout: CheckoutSource,
    ) -> JobSpec {
        let wf = solstice::workflow::parse_workflow(yaml).expect("test workflow parses");
        let (job_id, _) = solstice::workflow::select_job(&wf, None).unwrap();
        let job_id = job_id.to_string();
        JobSpec {
            workflow: wf,
            job_id: job_id.clone(),
            matrix: Default::default(),
            github: json!({
                "repository": "octo/hello",
                "repository_owner": "octo",
                "sha": "0123456789abcdef0123456789abcdef01234567",
                "ref": "refs/heads/main",
                "ref_name": "main",
                "event_name": "push",
                "workflow": "test",
                "job": job_id,
                "run_id": "42",
                "run_number": "7",
                "actor": "tester",
                "server_url": "http://localhost",
            }),
            secrets: secrets
                .into_iter()
                .map(|(k, v)| (k.to_string(), Secret::new(v)))
                .collect(),
            vars: Default::default(),
            inputs: json!({}),
            needs: json!({}),
            extra_env: Default::default(),
            checkout,
            max_job_timeout: None,
            extra_masks: Vec::new(),
            default_actions_url: None,
            actions: None,
            cache: None,
            extra_contexts: Default::default(),
        }
    }
}

#[derive(Default)]
pub struct RunOpts {
    pub secrets: Vec<(&'static str, &'static str)>,
    /// The action cache and the default actions URL the job fetches from.
    pub actions: Option<(std::sync::Arc<solstice::actions::ActionCache>, String)>,
    pub checkout: Option<CheckoutSource>,
    pub cancel: Option<CancellationToken>,
    /// The cache service the job gets a lease on.
    pub cache: Option<std::sync::Arc<solstice::cache_service::CacheService>>,
    /// `github.repository` instead of `octo/hello`.
    pub repository: Option<&'static str>,
}

pub fn image_config(name: &str, path: PathBuf, user: &str, memory_mib: u32) -> ImageConfig {
    ImageConfig {
        name: name.into(),
        path,
        format: ImageFormat::Qcow2,
        os: GuestOs::Linux,
        firmware: Firmware::Bios,
        vcpus: 1,
        memory_mib,
        disk_size_gib: None,
        ssh_user: user.into(),
        seed: SeedKind::NoCloud,
        boot_timeout: Duration::from_secs(180),
        readiness_probes: 1,
        readiness_probe_interval: Duration::from_secs(1),
        labels: vec![name.into()],
        max_concurrent_jobs: None,
        cpu: None,
        path_prepend: vec![],
        network: solstice::config::NetworkMode::Outbound,
        network_deny: vec![],
        network_allow: vec![],
        registry_mirror: None,
        warm: 0,
        warm_max_idle: std::time::Duration::from_secs(3600),
        snapshot: false,
        node: None,
    }
}

/// The image config of [`TestEnv::debian_containers`]: the Debian image
/// (`SOLSTICE_TEST_IMAGE_DEBIAN`), user `debian`, 1536 MiB, boot timeout
/// 300 s, the test registry as `registry_mirror`.
pub fn container_image_config(reg: &registry::Registry) -> ImageConfig {
    let mut img = image_config("debian", image("debian"), "debian", 1536);
    img.boot_timeout = Duration::from_secs(300);
    img.registry_mirror = Some(reg.mirror_url());
    img
}

/// A stand-in for a host whose KVM is broken: a `qemu-system-x86_64`
/// wrapper that runs every VM meant for KVM under TCG at about a million
/// instructions a second (`-icount shift=10`), so its guest crawls without a
/// word for minutes, as guests on broken nested KVM do, and passes
/// everything else to the real QEMU unchanged.
/// Written into `dir`; returns its path.
pub fn paused_kvm_qemu(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("qemu-paused-kvm");
    std::fs::write(
        &path,
        r#"#!/bin/sh
# Test stand-in for a broken KVM (see tests/it/support/mod.rs).
kvm=0
for a in "$@"; do [ "$a" = kvm ] && kvm=1; done
if [ "$kvm" = 1 ]; then
  n=$#
  for a in "$@"; do
    case "$a" in kvm) a=tcg ;; host|host,*) a=qemu64 ;; esac
    set -- "$@" "$a"
  done
  shift "$n"
  set -- "$@" -icount shift=10
fi
exec qemu-system-x86_64 "$@"
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A blank qcow2 image named `name` of `size` (qemu-img syntax) in `dir`:
/// nothing boots from it.
pub fn blank_qcow2(dir: &std::path::Path, name: &str, size: &str) -> PathBuf {
    let path = dir.join(name);
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg(size)
        .status()
        .expect("run qemu-img");
    assert!(st.success(), "qemu-img create {}", path.display());
    path
}

/// Records when each event reached the host (for measuring the guest clock).
#[derive(Default)]
pub struct TimedSink {
    pub inner: VecSink,
    at: std::sync::Mutex<Vec<(std::time::SystemTime, solstice::events::JobEvent)>>,
}

impl solstice::events::EventSink for TimedSink {
    fn emit(&self, event: solstice::events::JobEvent) {
        if let Ok(mut v) = self.at.lock() {
            v.push((std::time::SystemTime::now(), event.clone()));
        }
        self.inner.emit(event);
    }
}

impl TimedSink {
    /// The guest's clock printed by step `index` (seconds since the epoch)
    /// minus the host's clock when the line arrived (a lower bound of the
    /// guest's offset: the line took some time to arrive), and minus the
    /// host's clock when the step started (an upper bound).
    pub fn skew(&self, index: usize) -> (f64, f64) {
        use solstice::events::JobEvent;
        let v = self.at.lock().unwrap();
        let started = v
            .iter()
            .find_map(|(t, e)| {
                matches!(e, JobEvent::StepStarted { index: i, .. } if *i == index).then_some(*t)
            })
            .unwrap();
        let (arrived, text) = v
            .iter()
            .find_map(|(t, e)| match e {
                JobEvent::Line {
                    step: Some(i),
                    text,
                    ..
                } if *i == index => Some((*t, text.clone())),
                _ => None,
            })
            .unwrap();
        let guest: f64 = text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a time: {text}"));
        let secs = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        };
        (guest - secs(arrived), guest - secs(started))
    }
}

/// Text of every line event of step `index` (0-based).
pub fn step_lines(sink: &VecSink, index: usize) -> Vec<String> {
    sink.step_lines(index)
}

/// Every text of the job joined with newlines (for `contains` checks).
pub fn all_text(sink: &VecSink) -> String {
    sink.all_text()
}

/// Runs the `#[ignore]`d test `name` (its full path, `module::test`) in a
/// process of its own and fails with its output if it fails. For tests that
/// measure the whole process (peak memory), which the other tests of this
/// one binary would otherwise share.
pub fn run_alone(name: &str) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("start the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown with the test's output (or on failure).
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "{name} failed in its own process ({})",
        out.status
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{name} did not run in its own process (no such test?)"
    );
}

/// The runner of a job run on a local session (`LocalSession` and its
/// variants): `home` is the job's base directory.
pub fn local_runner(
    os: solstice::config::GuestOs,
    name: &str,
    home: &std::path::Path,
) -> solstice::job::RunnerInfo {
    solstice::job::RunnerInfo {
        image: "local".into(),
        labels: vec![],
        os,
        name: name.into(),
        arch: solstice::job::RunnerArch::X64,
        home: Some(home.to_str().expect("a UTF-8 path").to_string()),
        path_prepend: vec![],
        node: None,
    }
}

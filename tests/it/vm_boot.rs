//! Boots real QEMU guests through `solstice::vm` and checks that nothing leaks.
//!
//! The tiny busybox/dropbear guest comes from `SOLSTICE_TEST_IMAGE_TINY` or,
//! when that is unset, from `images/build.sh tiny` (which caches it). Without
//! an image these tests fail: they never skip.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use solstice::config::{
    AccelChoice, Firmware, GuestOs, ImageConfig, ImageFormat, QemuConfig, SeedKind,
};
use solstice::testing::leaks;
use solstice::vm::{Accel, Vm, VmError, VmSpec, accel, process};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDx7v8Wz0vQk2P6qSxF4y7b3HcXkqg1d0v8Yx3m4zLQZ test@solstice";

fn tiny_image() -> PathBuf {
    if let Ok(p) = std::env::var("SOLSTICE_TEST_IMAGE_TINY") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "SOLSTICE_TEST_IMAGE_TINY={} is not a file",
            p.display()
        );
        return p;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("images/build.sh"))
        .arg("tiny")
        .current_dir(root)
        .output()
        .expect("images/build.sh tiny must run (or set SOLSTICE_TEST_IMAGE_TINY)");
    assert!(
        out.status.success(),
        "images/build.sh tiny failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(p.is_file(), "images/build.sh printed {}", p.display());
    p
}

fn qemu() -> QemuConfig {
    QemuConfig {
        system_binary: "qemu-system-x86_64".into(),
        img_binary: "qemu-img".into(),
        accel: AccelChoice::Tcg,
        uefi_code: None,
        uefi_vars: None,
    }
}

fn image(path: PathBuf, seed: SeedKind) -> ImageConfig {
    ImageConfig {
        name: "tiny".into(),
        path,
        format: ImageFormat::Qcow2,
        os: GuestOs::Linux,
        firmware: Firmware::Bios,
        vcpus: 1,
        memory_mib: 128,
        disk_size_gib: None,
        ssh_user: "root".into(),
        seed,
        boot_timeout: Duration::from_secs(60),
        readiness_probes: 1,
        readiness_probe_interval: Duration::from_secs(1),
        labels: vec![],
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

fn spec<'a>(
    job: &'a str,
    image: &'a ImageConfig,
    qemu: &'a QemuConfig,
    jobs: &'a Path,
) -> VmSpec<'a> {
    VmSpec {
        job_id: job,
        image,
        qemu,
        accel: Accel::Tcg,
        jobs_dir: jobs,
        authorized_key: KEY,
        host_key: None,
        hostname: "tiny-test",
        host_ports: &[],
    }
}

/// Waits for an `SSH-` banner: the forwarded port accepts before the guest
/// listens, so read with a short timeout and retry.
fn wait_for_banner(vm: &Vm, deadline: Duration) -> Result<(String, Duration), String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < deadline {
        match TcpStream::connect_timeout(&vm.ssh_addr(), Duration::from_millis(500)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                let mut buf = [0u8; 64];
                match s.read(&mut buf) {
                    Ok(n) if n >= 4 && &buf[..4] == b"SSH-" => {
                        let banner = String::from_utf8_lossy(&buf[..n]).into_owned();
                        return Ok((banner, start.elapsed()));
                    }
                    Ok(n) => last = format!("read {n} bytes"),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "no SSH banner within {deadline:?} ({last})\nconsole:\n{}",
        vm.console_tail(40)
    ))
}

fn file_state(p: &Path) -> (Vec<u8>, std::time::SystemTime) {
    (
        std::fs::read(p).unwrap(),
        std::fs::metadata(p).unwrap().modified().unwrap(),
    )
}

fn assert_no_leaks(jobs: &Path) {
    let l = leaks::check(jobs);
    assert!(l.is_empty(), "leaks: {l:#?}");
}

/// A PCI function's slot, `-device` id and subsystem (vendor, id).
type Placed = (i64, String, Option<(i64, i64)>);

/// Asks the running QEMU (`query-pci`) where it placed each PCI device and
/// checks the fixed layout: the machine's own devices at slots 0 and 1, rng
/// at 2, the NIC at 3, the root disk at 4 (as virtio-blk with subsystem
/// 1af4,2: the `pci1af4,2@4` that kayak pins OmniOS's root pool to) and the
/// cpio seed disk, when there is one, at 5.
async fn assert_pci_layout(vm: &mut Vm, cpio_seed: bool) {
    let mut found: Vec<Placed> = vm
        .pci_functions()
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f.bus == 0 && f.function == 0)
        .map(|f| (f.slot, f.qdev_id, f.subsystem))
        .collect();
    found.sort();
    let virtio = |id: i64| Some((0x1af4, id));
    let mut want = vec![
        (2, "rng0".to_string(), virtio(4)),
        (3, "nic0".to_string(), virtio(1)),
        (4, "root".to_string(), virtio(2)),
    ];
    if cpio_seed {
        want.push((5, "seed".to_string(), virtio(2)));
    }
    let ours: Vec<_> = found.iter().filter(|f| f.0 >= 2).cloned().collect();
    assert_eq!(ours, want, "PCI layout: {found:?}");
    let machine: Vec<i64> = found.iter().filter(|f| f.0 < 2).map(|f| f.0).collect();
    assert_eq!(machine, [0, 1], "host bridge and PIIX3: {found:?}");
}

fn listening_on(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

#[tokio::test]
async fn nocloud_guest_boots_to_an_ssh_banner_and_destroy_leaves_nothing() {
    let base = tiny_image();
    let before = file_state(&base);
    let jobs = tempfile::tempdir().unwrap();
    let q = qemu();
    let img = image(base.clone(), SeedKind::NoCloud);

    let t0 = Instant::now();
    let mut vm = Vm::start(spec("nocloud-1", &img, &q, jobs.path()))
        .await
        .unwrap();
    let provision = t0.elapsed();
    assert_eq!(vm.ssh_addr().ip().to_string(), "127.0.0.1");
    assert_eq!(vm.accel(), Accel::Tcg);
    assert!(vm.dir().join("seed.iso").is_file());
    assert!(vm.dir().join("overlay.qcow2").is_file());
    let (banner, to_ssh) = wait_for_banner(&vm, Duration::from_secs(60)).unwrap();
    // The guest found its root disk, its seed and its network (SSH answers
    // through the NIC) with every device at its fixed slot.
    assert_pci_layout(&mut vm, false).await;
    let console = vm.console_tail(200);
    assert!(console.contains("NoCloud seed on /dev/sr0"), "{console}");
    assert!(
        console.contains("seed applied: 1 authorized key(s)"),
        "{console}"
    );
    let port = vm.ssh_addr().port();

    let t1 = Instant::now();
    vm.destroy().await.unwrap();
    let destroy = t1.elapsed();
    let banner = banner.lines().next().unwrap_or_default().to_string();
    eprintln!(
        "timing: provision {provision:?}, destroy {destroy:?}, banner after {to_ssh:?} ({banner})"
    );
    assert!(destroy < Duration::from_secs(2), "destroy took {destroy:?}");
    assert_no_leaks(jobs.path());
    assert!(!listening_on(port), "port {port} still listens");
    assert!(file_state(&base) == before, "the base image was modified");
}

#[tokio::test]
async fn cpio_seed_guest_boots_and_applies_the_seed() {
    let base = tiny_image();
    let jobs = tempfile::tempdir().unwrap();
    let q = qemu();
    let mut img = image(base, SeedKind::MetadataCpio);
    // The illumos defaults: under TCG the guest gets `qemu64,+rdrand,-svm`.
    img.os = GuestOs::Illumos;
    let mut vm = Vm::start(spec("cpio-1", &img, &q, jobs.path()))
        .await
        .unwrap();
    let seed = vm.dir().join("seed.cpio");
    assert!(std::fs::metadata(&seed).unwrap().len() >= 1 << 20);
    let args = process::process(vm.pid()).unwrap().args_lossy();
    // Exactly one cpio device: the metadata-agent stops at two.
    let cpio_args = args.iter().filter(|a| a.contains("seed.cpio")).count();
    assert_eq!(cpio_args, 1, "{args:?}");
    assert!(
        args.windows(2)
            .any(|w| w[0] == "-cpu" && w[1] == "qemu64,+rdrand,-svm"),
        "{args:?}"
    );
    let result = wait_for_banner(&vm, Duration::from_secs(90));
    if result.is_ok() {
        assert_pci_layout(&mut vm, true).await;
    }
    let console = vm.console_tail(200);
    vm.destroy().await.unwrap();
    assert_no_leaks(jobs.path());
    result.unwrap();
    assert!(
        console.contains("metadata cpio (odc) seed on /dev/vdb"),
        "{console}"
    );
    assert!(
        console.contains("seed applied: 1 authorized key(s)"),
        "{console}"
    );
    // The stand-in agent ran the seed's own firstboot.sh (no svcadm here).
    assert!(
        console.contains(
            "firstboot.sh: solstice firstboot: no /usr/sbin/svcadm (no SMF here): nothing to enable"
        ),
        "{console}"
    );
    assert!(
        console.contains("ran the seed's firstboot.sh (exit 0)"),
        "{console}"
    );
}

#[tokio::test]
async fn dropping_a_running_vm_leaves_nothing() {
    let base = tiny_image();
    let jobs = tempfile::tempdir().unwrap();
    let q = qemu();
    let img = image(base, SeedKind::NoCloud);
    let vm = Vm::start(spec("drop-1", &img, &q, jobs.path()))
        .await
        .unwrap();
    let pid = vm.pid();
    let port = vm.ssh_addr().port();
    assert!(process::process(pid).is_some());
    assert!(
        !leaks::check(jobs.path()).is_empty(),
        "leak check must see a running VM"
    );
    drop(vm);
    assert_no_leaks(jobs.path());
    assert!(
        process::process(pid).is_none(),
        "QEMU {pid} survived the drop"
    );
    assert!(!listening_on(port));
}

#[tokio::test]
async fn a_missing_base_image_fails_cleanly() {
    let jobs = tempfile::tempdir().unwrap();
    let q = qemu();
    let img = image(jobs.path().join("no-such-image.qcow2"), SeedKind::NoCloud);
    let err = Vm::start(spec("missing-1", &img, &q, jobs.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::Disk(_)), "{err:?}");
    assert_no_leaks(jobs.path());
}

#[tokio::test]
async fn qemu_exiting_during_start_reports_its_stderr_and_leaves_nothing() {
    let base = tiny_image();
    let jobs = tempfile::tempdir().unwrap();
    let q = qemu();
    let mut img = image(base, SeedKind::NoCloud);
    img.vcpus = 100_000; // QEMU refuses this at start-up
    let err = Vm::start(spec("early-exit-1", &img, &q, jobs.path()))
        .await
        .unwrap_err();
    match &err {
        VmError::QemuExited { stderr, .. } => assert!(stderr.contains("qemu"), "{stderr}"),
        other => panic!("expected QemuExited, got {other:?}"),
    }
    assert!(err.to_string().contains("QEMU said:"));
    assert_no_leaks(jobs.path());
}

#[tokio::test]
async fn a_job_directory_that_exists_is_not_touched() {
    let jobs = tempfile::tempdir().unwrap();
    std::fs::create_dir(jobs.path().join("taken")).unwrap();
    std::fs::write(jobs.path().join("taken/keep"), b"x").unwrap();
    let q = qemu();
    let img = image("/nonexistent".into(), SeedKind::NoCloud);
    let err = Vm::start(spec("taken", &img, &q, jobs.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, VmError::JobDirExists(_)), "{err:?}");
    assert!(jobs.path().join("taken/keep").is_file());
}

/// On this project's machines `/dev/kvm` exists but KVM guests crawl (SeaBIOS
/// needs about 4 s to finish POST), so `auto` must settle on TCG, quickly.
#[test]
fn auto_accel_explains_its_choice_and_a_kvm_choice_is_backed_by_a_guest_that_ran() {
    // Whatever this host's KVM does, `auto` decides, says why, and only
    // takes KVM when a KVM guest ran to its end (the run-time fallback
    // covers what the probe cannot see; see exec_cli's fallback tests).
    let mut q = qemu();
    q.accel = AccelChoice::Auto;
    let a = accel::Accelerator::resolve(&q, None).unwrap();
    let reason = &a.initial().reason;
    eprintln!("auto: {:?} ({reason})", a.current());
    assert!(reason.starts_with("auto: "), "{reason}");
    match a.current() {
        Accel::Kvm => assert!(reason.contains("finished in"), "{reason}"),
        Accel::Tcg => assert!(
            reason.contains("KVM is unusable") || reason.contains("/dev/kvm cannot be opened"),
            "{reason}"
        ),
    }
    q.accel = AccelChoice::Tcg;
    let t = accel::Accelerator::resolve(&q, None).unwrap();
    assert_eq!(t.current(), Accel::Tcg);
    assert!(!t.may_fall_back(Accel::Tcg));
}

/// A QMP command that does not answer in time (QEMU stopped with SIGSTOP)
/// gives up the QMP connection instead of leaving a command in flight: the
/// next command (`quit` in `destroy`) would otherwise panic inside the qapi
/// crate ("duplicate command id"). Destroy still removes everything.
#[tokio::test]
async fn a_qmp_command_that_times_out_leaves_destroy_working() {
    let base = tiny_image();
    let jobs = tempfile::tempdir().unwrap();
    let q = qemu();
    let img = image(base, SeedKind::NoCloud);
    let mut vm = Vm::start(spec("qmp-stall", &img, &q, jobs.path()))
        .await
        .unwrap();
    assert_eq!(vm.run_state().await.as_deref(), Some("running"));
    let pid = nix::unistd::Pid::from_raw(vm.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    assert_eq!(vm.run_state().await, None, "a stopped QEMU cannot answer");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    // The connection was given up: no command is sent on it again.
    assert_eq!(vm.run_state().await, None);
    vm.destroy().await.unwrap();
    assert_no_leaks(jobs.path());
}

/// The same when the caller drops a `run_state` future mid-command (as a
/// `select!` does when SSH answers while the boot watcher waits for QMP).
#[tokio::test]
async fn a_qmp_command_dropped_mid_flight_leaves_destroy_working() {
    let base = tiny_image();
    let jobs = tempfile::tempdir().unwrap();
    let q = qemu();
    let img = image(base, SeedKind::NoCloud);
    let mut vm = Vm::start(spec("qmp-dropped", &img, &q, jobs.path()))
        .await
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(vm.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    tokio::select! {
        _ = vm.run_state() => panic!("a stopped QEMU answered"),
        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    vm.destroy().await.unwrap();
    assert_no_leaks(jobs.path());
}

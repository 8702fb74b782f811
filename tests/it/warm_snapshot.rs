//! Snapshot start with real QEMU: a template saved running, clones
//! restored from it and re-keyed (`solstice::warm::{template, rekey}`).
//!
//! The images come from `SOLSTICE_TEST_IMAGE_TINY` /
//! `SOLSTICE_TEST_IMAGE_DEBIAN`, or are built (see `support::image`). Run
//! them alone: `cargo test --test it warm_snapshot -- --nocapture`. Figures (template build,
//! restore → ready, state size) are printed as `FIGURE` lines.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use solstice::guest::{GuestSession, OutputChunk};
use solstice::job::ReadyGuest;
use solstice::ssh::{HostKeyCheck, SshError};
use solstice::testing::VecSink;
use solstice::vm::Accel;
use solstice::warm::rekey::RekeyReport;
use solstice::warm::{Template, TemplateError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::TestEnv;

/// Runs `cmd`; its exit status and stdout.
async fn sh(session: &dyn GuestSession, cmd: &str) -> (u32, String) {
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
    let collect = async {
        let mut out = Vec::new();
        while let Some(c) = rx.recv().await {
            if c.stream == solstice::guest::Stream::Stdout {
                out.extend_from_slice(&c.data);
            }
        }
        out
    };
    let (status, out) = tokio::join!(session.exec(cmd, b"", tx), collect);
    (
        status.expect("command runs"),
        String::from_utf8_lossy(&out).trim().to_string(),
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What one clone looks like from inside.
#[derive(Debug)]
struct Seen {
    urandom: String,
    hostname: String,
    machine_id: String,
    host_key: String,
    reseeds: String,
}

async fn look(guest: &ReadyGuest, sudo: &str) -> Seen {
    let s = &guest.session;
    let (_, urandom) = sh(
        s,
        "dd if=/dev/urandom bs=64 count=1 2>/dev/null | od -An -tx1 | tr -d ' \\n'",
    )
    .await;
    assert_eq!(urandom.len(), 128, "{urandom}");
    let (_, hostname) = sh(s, "hostname").await;
    let (_, machine_id) = sh(s, "cat /etc/machine-id 2>/dev/null || true").await;
    let (_, reseeds) = sh(
        s,
        &format!("{sudo}dmesg | grep -c 'crng reseeded due to virtual machine fork' || true"),
    )
    .await;
    Seen {
        urandom,
        hostname,
        machine_id,
        host_key: guest.target.host_key().expect("pinned host key"),
        reseeds,
    }
}

/// The checks of `warm-start.md` §8 on two clones of one template of the
/// image in `env`, plus the figures.
async fn clones_of_one_template(env: TestEnv, debian: bool) {
    let sink = VecSink::default();
    let cancel = CancellationToken::new();
    let warm = env.config.daemon.state_dir.join("warm");
    let image = env.image().clone();
    let sudo = if image.ssh_user == "root" {
        ""
    } else {
        "sudo -n "
    };

    let t0 = Instant::now();
    let template = Template::build(
        &env.config,
        &image,
        Accel::Tcg,
        &warm,
        &[],
        "key-1".into(),
        &sink,
        &cancel,
    )
    .await
    .unwrap_or_else(|e| panic!("template: {e:?}"));
    let build = t0.elapsed();
    assert_eq!(template.key(), "key-1");
    let state = std::fs::read(template.state_path()).unwrap();
    eprintln!(
        "FIGURE {}: template build {:.1} s, state file {} bytes ({:.0} MiB) for {} MiB of guest RAM",
        image.name,
        build.as_secs_f64(),
        template.state_bytes(),
        template.state_bytes() as f64 / (1 << 20) as f64,
        image.memory_mib
    );
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["state", "overlay.qcow2", "seed.iso"] {
            let mode = std::fs::metadata(template.dir().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o400, "{f}");
        }
    }
    // Only the template's files: the VM that was saved is gone.
    let mut names: Vec<String> = std::fs::read_dir(template.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["overlay.qcow2", "seed.iso", "state"]);

    let mut ready_times = Vec::new();
    let restore = |id: &'static str| {
        let template = &template;
        let warm = &warm;
        let cancel = &cancel;
        let image = &image;
        async move {
            let t = Instant::now();
            let r = template
                .restore_as(image, warm, id, cancel)
                .await
                .unwrap_or_else(|e| panic!("restore {id}: {e:?}"));
            eprintln!(
                "restore {id}: qemu {:?}, template login {:?}, re-keyed {:?}, new login {:?}",
                r.qemu, r.login, r.rekey, r.relogin
            );
            let report: RekeyReport = r.report;
            (r.guest, report, t.elapsed())
        }
    };
    let (mut a, report_a, ta) = restore("w-snap-0000000a").await;
    let (mut b, report_b, tb) = restore("w-snap-0000000b").await;
    ready_times.push(ta);
    ready_times.push(tb);
    eprintln!("re-key reports: {report_a:?} / {report_b:?}");
    assert_eq!(
        report_a.ssh_server,
        if debian { "openssh" } else { "dropbear" }
    );

    let sa = look(&a, sudo).await;
    let sb = look(&b, sudo).await;
    eprintln!("clone A: {sa:?}\nclone B: {sb:?}");
    assert_ne!(sa.urandom, sb.urandom, "same /dev/urandom output");
    assert_ne!(sa.host_key, sb.host_key);
    assert_ne!(sa.hostname, sb.hostname);
    assert_eq!(sa.hostname, "solstice-wsna0000000a");
    if debian {
        assert_eq!(sa.machine_id.len(), 32, "{}", sa.machine_id);
        assert_ne!(sa.machine_id, sb.machine_id);
    }
    // A QMP command abandoned mid-way (a busy host's boot watch gives one up
    // after a second) costs the connection; the next command connects again.
    // (Under load the boot watch may have given it up already; then this
    // returns at once.)
    let _ = tokio::time::timeout(Duration::ZERO, a.vm.run_state()).await;
    // Every QEMU process has its own generation id.
    let ga = a.vm.generation_id().await.unwrap();
    let gb = b.vm.generation_id().await.unwrap();
    assert_ne!(ga, gb);
    // Every clone's kernel RNG was reseeded after the host's bytes went in:
    // by the vmgenid driver, or by the re-key step's ioctl.
    for r in [&report_a, &report_b] {
        assert!(
            r.reseed_ioctl || r.vmgenid_reseeds.unwrap_or(0) >= 1,
            "a clone was not reseeded: {r:?}"
        );
    }
    // The kernel's vmgenid driver, where the guest has it, reseeded.
    if report_a.vmgenid_driver {
        assert!(
            sa.reseeds.parse::<u32>().unwrap_or(0) >= 1,
            "vmgenid driver but no reseed in dmesg: {}",
            sa.reseeds
        );
        assert_eq!(report_a.vmgenid_reseeds, Some(1));
    } else {
        let (_, why) = sh(
            &a.session,
            "uname -r; ls /sys/bus/acpi/drivers | tr '\n' ' '; echo; grep -h vmgenid /lib/modules/*/modules.builtin; find /lib/modules -name 'vmgenid*'; ls /sys/bus/acpi/devices | grep -i vgid",
        )
        .await;
        eprintln!(
            "NOTE {}: the guest kernel has no vmgenid driver bound (no crng reseed on restore); reseed by ioctl: {}; kernel: {why}",
            image.name, report_a.reseed_ioctl
        );
    }

    // The template key is refused; the new host key is presented.
    let old = template
        .template_login(a.target.addr, HostKeyCheck::Pinned(sa.host_key.clone()))
        .unwrap();
    match solstice::ssh::connect(&old, Duration::from_secs(20)).await {
        Err(SshError::AuthRejected { .. }) => {}
        other => panic!("the template key was not refused: {other:?}"),
    }
    let (_, keys) = sh(&a.session, "cat ~/.ssh/authorized_keys").await;
    assert_eq!(keys.lines().count(), 1, "{keys}");
    let blob_a = keys.split_whitespace().nth(1).unwrap().to_string();
    assert!(
        !keys.contains(
            template
                .template_public_key()
                .split_whitespace()
                .nth(1)
                .unwrap()
        )
    );
    // The template's state holds none of clone A's key.
    assert!(
        !state.windows(blob_a.len()).any(|w| w == blob_a.as_bytes()),
        "clone A's public key is in the template's state"
    );

    // Nothing written in A shows in B.
    let (st, _) = sh(
        &a.session,
        "echo marker-a > ~/marker && echo marker-a > /tmp/marker && sync",
    )
    .await;
    assert_eq!(st, 0);
    let (st, out) = sh(&b.session, "cat ~/marker /tmp/marker 2>&1").await;
    assert_ne!(st, 0, "{out}");
    assert!(!out.contains("marker-a"), "{out}");

    // The clock was stepped to the host's.
    for g in [&a, &b] {
        let (_, t) = sh(&g.session, "date -u +%s").await;
        let guest: i64 = t.parse().unwrap();
        let host = now_secs() as i64;
        assert!((guest - host).abs() <= 2, "guest {guest}, host {host}");
    }

    // A third restore for the median; each ready time is spawn → re-keyed.
    let (c, _, tc) = restore("w-snap-0000000c").await;
    ready_times.push(tc);
    c.vm.destroy().await.unwrap();
    eprintln!(
        "FIGURE {}: restore -> ready (re-keyed, logged in) median {:.2} s of {:?}",
        image.name,
        median(ready_times.clone()).as_secs_f64(),
        ready_times
    );

    // Another memory size: QEMU refuses the state; a clear error, nothing left.
    let mut bigger = image.clone();
    bigger.memory_mib += 64;
    match template
        .restore_as(&bigger, &warm, "w-snap-0000000d", &cancel)
        .await
    {
        Err(e @ TemplateError::Rejected { .. }) => {
            let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
            eprintln!("rejected as expected: {chain}");
            assert!(chain.contains("cannot be restored"), "{chain}");
            assert!(chain.contains("memory"), "{chain}");
        }
        other => panic!("a restore with more memory did not fail: {other:?}"),
    }
    assert!(!warm.join("w-snap-0000000d").exists());

    let _ = a.session.close().await;
    let _ = b.session.close().await;
    a.vm.destroy().await.unwrap();
    b.vm.destroy().await.unwrap();
    let dir = template.dir().to_path_buf();
    drop(template);
    assert!(!dir.exists(), "the template's directory outlived it");
    let leaks = solstice::testing::leaks::check(&warm);
    assert!(leaks.is_empty(), "{leaks:#?}");
    assert!(
        std::fs::read_dir(&warm).unwrap().next().is_none(),
        "files left in {}",
        warm.display()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tiny_clones_of_one_template_are_distinct() {
    clones_of_one_template(TestEnv::tiny(), false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn debian_clones_of_one_template_are_distinct() {
    clones_of_one_template(TestEnv::debian(), true).await;
}

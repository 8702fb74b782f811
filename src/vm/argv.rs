//! The QEMU command line, as a pure function of a [`VmPlan`].

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::SeedKind;

use super::Accel;

/// Everything the QEMU command line depends on; all paths are inside the job directory
/// except the firmware code image.
#[derive(Debug, Clone)]
pub struct VmPlan {
    /// Shown in `ps` and in QEMU's messages.
    pub name: String,
    /// SMBIOS system UUID; fresh per job so first-boot agents run again.
    pub uuid: String,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The per-job qcow2 overlay (the only writable disk).
    pub overlay: PathBuf,
    pub seed: Option<(SeedKind, PathBuf)>,
    /// UEFI: (read-only code image, per-job copy of the variable store).
    pub uefi: Option<(PathBuf, PathBuf)>,
    /// Serial console output file.
    pub console: PathBuf,
    /// QMP unix socket (QEMU listens).
    pub qmp_socket: PathBuf,
}

/// Escapes a value for QEMU's `key=value,...` option syntax (commas are doubled).
fn opt_path(p: &std::path::Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// The accelerator and CPU model of job VMs (the KVM probe boots with the same).
pub fn accel_args(accel: Accel) -> &'static [&'static str] {
    match accel {
        Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
        // rdrand gives the guest entropy early, so sshd/dropbear start without waiting.
        Accel::Tcg => &["-accel", "tcg", "-cpu", "qemu64,+rdrand"],
    }
}

/// The full argument list (without the binary) for `qemu-system-x86_64`.
pub fn qemu_args(plan: &VmPlan) -> Vec<OsString> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&[
        "-name",
        &format!("{},process={}", plan.name.replace(',', ",,"), "solstice-vm"),
    ]);
    push(&["-uuid", &plan.uuid]);
    // `pc`, not `q35`: the NoCloud seed is an IDE CD-ROM, and q35 would put it
    // on AHCI, which Debian's cloud kernel lacks.
    push(&["-machine", "pc"]);
    push(accel_args(plan.accel));
    push(&[
        "-smp",
        &plan.vcpus.to_string(),
        "-m",
        &plan.memory_mib.to_string(),
    ]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    push(&[
        "-chardev",
        &format!("file,id=console0,path={}", opt_path(&plan.console)),
        "-serial",
        "chardev:console0",
    ]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=qmp0,path={},server=on,wait=off",
            opt_path(&plan.qmp_socket)
        ),
        "-mon",
        "chardev=qmp0,mode=control",
    ]);
    if let Some((code, vars)) = &plan.uefi {
        push(&[
            "-drive",
            &format!(
                "if=pflash,unit=0,format=raw,readonly=on,file={}",
                opt_path(code)
            ),
            "-drive",
            &format!("if=pflash,unit=1,format=raw,file={}", opt_path(vars)),
        ]);
    }
    push(&["-device", "virtio-rng-pci"]);
    // The job VM is thrown away, so host-side flushes buy nothing.
    push(&[
        "-drive",
        &format!(
            "file={},format=qcow2,if=virtio,cache=unsafe",
            opt_path(&plan.overlay)
        ),
    ]);
    match &plan.seed {
        Some((SeedKind::NoCloud, p)) => push(&[
            "-drive",
            &format!(
                "file={},format=raw,media=cdrom,if=ide,readonly=on",
                opt_path(p)
            ),
        ]),
        Some((SeedKind::MetadataCpio, p)) => push(&[
            "-drive",
            &format!("file={},format=raw,if=virtio,readonly=on", opt_path(p)),
        ]),
        None => {}
    }
    // Port 0: the host kernel picks a free port atomically (no probe-then-bind
    // race); the real port is read back over QMP (`info usernet`).
    push(&[
        "-netdev",
        "user,id=net0,hostfwd=tcp:127.0.0.1:0-:22",
        "-device",
        "virtio-net-pci,netdev=net0",
    ]);
    a.into_iter().map(OsString::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> VmPlan {
        VmPlan {
            name: "job-1".into(),
            uuid: "0e2b3a4c-0000-4000-8000-000000000001".into(),
            accel: Accel::Tcg,
            vcpus: 2,
            memory_mib: 256,
            overlay: "/j/1/overlay.qcow2".into(),
            seed: Some((SeedKind::NoCloud, "/j/1/seed.iso".into())),
            uefi: None,
            console: "/j/1/console.log".into(),
            qmp_socket: "/j/1/qmp.sock".into(),
        }
    }

    fn s(p: &VmPlan) -> Vec<String> {
        qemu_args(p)
            .into_iter()
            .map(|o| o.into_string().unwrap())
            .collect()
    }

    fn has_pair(a: &[String], k: &str, v: &str) -> bool {
        a.windows(2).any(|w| w[0] == k && w[1] == v)
    }

    #[test]
    fn tcg_nocloud_bios() {
        let a = s(&plan());
        assert!(has_pair(&a, "-machine", "pc"));
        assert!(has_pair(&a, "-accel", "tcg"));
        assert!(has_pair(&a, "-cpu", "qemu64,+rdrand"));
        assert!(has_pair(&a, "-smp", "2"));
        assert!(has_pair(&a, "-m", "256"));
        for f in ["-nodefaults", "-no-user-config"] {
            assert!(a.contains(&f.to_string()));
        }
        assert!(has_pair(&a, "-display", "none"));
        assert!(has_pair(
            &a,
            "-chardev",
            "file,id=console0,path=/j/1/console.log"
        ));
        assert!(has_pair(&a, "-serial", "chardev:console0"));
        assert!(has_pair(
            &a,
            "-chardev",
            "socket,id=qmp0,path=/j/1/qmp.sock,server=on,wait=off"
        ));
        assert!(has_pair(&a, "-device", "virtio-rng-pci"));
        assert!(has_pair(
            &a,
            "-drive",
            "file=/j/1/overlay.qcow2,format=qcow2,if=virtio,cache=unsafe"
        ));
        assert!(has_pair(
            &a,
            "-drive",
            "file=/j/1/seed.iso,format=raw,media=cdrom,if=ide,readonly=on"
        ));
        assert!(has_pair(
            &a,
            "-netdev",
            "user,id=net0,hostfwd=tcp:127.0.0.1:0-:22"
        ));
        assert!(has_pair(&a, "-device", "virtio-net-pci,netdev=net0"));
        assert!(!a.iter().any(|x| x.contains("pflash") || x == "-daemonize"));
        assert!(
            !a.iter().any(|x| x.contains("hostfwd=tcp::")),
            "never an unbound forward"
        );
    }

    #[test]
    fn kvm_uses_host_cpu() {
        let a = s(&VmPlan {
            accel: Accel::Kvm,
            ..plan()
        });
        assert!(has_pair(&a, "-accel", "kvm"));
        assert!(has_pair(&a, "-cpu", "host"));
        assert!(!a.contains(&"tcg".to_string()));
    }

    #[test]
    fn cpio_seed_is_a_readonly_virtio_disk() {
        let a = s(&VmPlan {
            seed: Some((SeedKind::MetadataCpio, "/j/1/seed.cpio".into())),
            ..plan()
        });
        assert!(has_pair(
            &a,
            "-drive",
            "file=/j/1/seed.cpio,format=raw,if=virtio,readonly=on"
        ));
        assert!(!a.iter().any(|x| x.contains("media=cdrom")));
    }

    #[test]
    fn uefi_adds_two_pflash_drives() {
        let a = s(&VmPlan {
            uefi: Some((
                "/usr/share/OVMF/OVMF_CODE.fd".into(),
                "/j/1/uefi-vars.fd".into(),
            )),
            ..plan()
        });
        assert!(has_pair(
            &a,
            "-drive",
            "if=pflash,unit=0,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd"
        ));
        assert!(has_pair(
            &a,
            "-drive",
            "if=pflash,unit=1,format=raw,file=/j/1/uefi-vars.fd"
        ));
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let a = s(&VmPlan {
            overlay: "/j/a,b/overlay.qcow2".into(),
            ..plan()
        });
        assert!(
            a.iter()
                .any(|x| x.starts_with("file=/j/a,,b/overlay.qcow2,"))
        );
    }
}

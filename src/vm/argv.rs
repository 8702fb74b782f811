//! The QEMU command line, as a pure function of a [`VmPlan`].

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::{GuestOs, ImageConfig, SeedKind};

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
    /// The `-cpu` value (see [`cpu_model`]).
    pub cpu: String,
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
    /// Start with the guest's CPUs stopped (`-S`) until QMP `cont` (the
    /// guest's network is set up in between).
    pub paused: bool,
    /// Add a VM generation ID device (`vmgenid,guid=auto`): every QEMU
    /// process gets a fresh random GUID, and a guest restored from a saved
    /// state is told about the change, so that Linux (5.18 and later)
    /// reseeds its random number generator ("crng reseeded due to virtual
    /// machine fork"). Linux guests only: illumos has no driver for it.
    pub vmgenid: bool,
    /// Wait for an incoming migration (`-incoming defer`; the saved state
    /// is then given over QMP `migrate-incoming`) instead of booting.
    pub incoming: bool,
}

/// Escapes a value for QEMU's `key=value,...` option syntax (commas are doubled).
fn opt_path(p: &std::path::Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Where each PCI device of a job VM sits on the `pc` machine's only bus
/// (`pci.0`). Every device gets its slot from here and nowhere else, so that
/// adding a device can never move another one:
///
/// - The OmniOS image (kayak) records its root pool's physical path in the
///   pool label as virtio-blk at slot 4 (`/pci@0,0/pci1af4,2@4/blkdev@0,0`):
///   the root disk must be at [`Slot::RootDisk`] = 4.
/// - illumos numbers NIC instances by PCI path (`/etc/path_to_inst`): the
///   NIC keeps one slot forever, or `vioif0` becomes `vioif1` and DHCP never
///   starts.
///
/// Slots 0 (host bridge) and 1 (PIIX3: ISA bridge, IDE with the NoCloud
/// CD-ROM, ACPI) are the machine's own. Slot 2 would be VGA without
/// `-nodefaults`. Slots 2, 3 and 5 are where these devices landed before
/// their slots were fixed (rng and NIC first, then the disks in argument
/// order), so images prepared with an earlier Solstice see the same paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `virtio-rng-pci`: early entropy for Linux guests (illumos has no
    /// driver for it; the device is harmless there).
    Rng,
    /// `virtio-net-pci`, the job's only NIC (`vioif0` on illumos).
    Nic,
    /// `virtio-blk-pci` with the job's qcow2 overlay.
    RootDisk,
    /// `virtio-blk-pci` with the raw metadata cpio (metadata-agent reads it
    /// at LBA 0 of a block device).
    CpioSeed,
}

impl Slot {
    /// Every slot, in address order.
    pub const ALL: [Slot; 4] = [Slot::Rng, Slot::Nic, Slot::RootDisk, Slot::CpioSeed];

    /// The PCI slot number (device number, function 0).
    pub const fn number(self) -> u8 {
        match self {
            Slot::Rng => 2,
            Slot::Nic => 3,
            Slot::RootDisk => 4,
            Slot::CpioSeed => 5,
        }
    }

    /// The QEMU device id (`query-pci` reports it as `qdev_id`).
    pub const fn id(self) -> &'static str {
        match self {
            Slot::Rng => "rng0",
            Slot::Nic => "nic0",
            Slot::RootDisk => "root",
            Slot::CpioSeed => "seed",
        }
    }

    /// `bus=pci.0,addr=0x4,id=root`: the placement of a `-device`.
    pub fn placement(self) -> String {
        format!("bus=pci.0,addr={:#x},id={}", self.number(), self.id())
    }
}

/// The `-drive`/`-device` pair of a virtio-blk disk at `slot`. `-drive
/// if=virtio` cannot take an address, so the drive is a bare backend
/// (`if=none`) and the device names it. `drive_opts` are the backend's own
/// options (`format=qcow2,cache=unsafe`).
pub fn virtio_disk_args(slot: Slot, file: &std::path::Path, drive_opts: &str) -> [String; 4] {
    let drive = format!("{}-drive", slot.id());
    [
        "-drive".into(),
        format!("file={},if=none,id={drive},{drive_opts}", opt_path(file)),
        "-device".into(),
        format!("virtio-blk-pci,drive={drive},{}", slot.placement()),
    ]
}

/// Default CPU model of a KVM guest, whatever its OS.
///
/// Not `host`, and not `max` either: on an AMD EPYC host with nested KVM
/// (this project's CI machine, QEMU 10) both abort at start with "failed to
/// set MSR 0x10a" (IA32_ARCH_CAPABILITIES, which the outer hypervisor does
/// not let the inner KVM set), while `host,-arch-capabilities` starts. `vmx`
/// and `svm` are removed too: a job VM never runs its own hypervisor, and
/// on nested Intel hosts the VMX capability MSRs that `host` brings are the
/// other known cause of such start-up failures (and illumos is given no
/// `svm` under TCG either). What stays is the host's own model and feature
/// set, so builds run at native speed with SSE4/AVX. An image that needs
/// something else sets `images.<name>.cpu`.
pub const KVM_CPU: &str = "host,-arch-capabilities,-vmx,-svm";
/// Default CPU model of a Linux guest under TCG. `rdrand` gives the guest
/// entropy early, so sshd/dropbear start without waiting (plain `max` is
/// slower under TCG).
pub const TCG_CPU_LINUX: &str = "qemu64,+rdrand";
/// Default CPU model of an illumos guest under TCG: `qemu64` advertises
/// AMD's SVM, which an OpenIndiana test harness removes for illumos guests.
pub const TCG_CPU_ILLUMOS: &str = "qemu64,+rdrand,-svm";

/// The CPU model a guest of `os` gets under `accel` when its image does not
/// set `cpu`: the one source of these defaults (job VMs, the KVM probe,
/// `doctor`).
pub fn default_cpu(os: GuestOs, accel: Accel) -> &'static str {
    match (accel, os) {
        (Accel::Kvm, _) => KVM_CPU,
        (Accel::Tcg, GuestOs::Linux) => TCG_CPU_LINUX,
        (Accel::Tcg, GuestOs::Illumos) => TCG_CPU_ILLUMOS,
    }
}

/// The CPU model of `image`'s job VMs under `accel`: its `cpu` key, or the
/// default for its OS.
pub fn cpu_model(image: &ImageConfig, accel: Accel) -> &str {
    image
        .cpu
        .as_deref()
        .unwrap_or_else(|| default_cpu(image.os, accel))
}

/// The accelerator and CPU model of a VM (the KVM probe boots with the same).
pub fn accel_args(accel: Accel, cpu: &str) -> [String; 4] {
    [
        "-accel".into(),
        accel.as_str().into(),
        "-cpu".into(),
        cpu.into(),
    ]
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
    let accel = accel_args(plan.accel, &plan.cpu);
    push(&accel.each_ref().map(String::as_str));
    push(&[
        "-smp",
        &plan.vcpus.to_string(),
        "-m",
        &plan.memory_mib.to_string(),
    ]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    if plan.paused {
        push(&["-S"]);
    }
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
    // Every PCI device below takes its slot from `Slot`.
    push(&[
        "-device",
        &format!("virtio-rng-pci,{}", Slot::Rng.placement()),
    ]);
    // The job VM is thrown away, so host-side flushes buy nothing.
    let root = virtio_disk_args(Slot::RootDisk, &plan.overlay, "format=qcow2,cache=unsafe");
    push(&root.each_ref().map(String::as_str));
    match &plan.seed {
        // On the PIIX3 IDE controller (slot 1), not a PCI device of its own.
        Some((SeedKind::NoCloud, p)) => push(&[
            "-drive",
            &format!(
                "file={},format=raw,media=cdrom,if=ide,readonly=on",
                opt_path(p)
            ),
        ]),
        Some((SeedKind::MetadataCpio, p)) => {
            let seed = virtio_disk_args(Slot::CpioSeed, p, "format=raw,readonly=on");
            push(&seed.each_ref().map(String::as_str));
        }
        None => {}
    }
    // Port 0: the host kernel picks a free port atomically (no probe-then-bind
    // race); the real port is read back over QMP (`info usernet`).
    push(&[
        "-netdev",
        "user,id=net0,hostfwd=tcp:127.0.0.1:0-:22",
        "-device",
        &format!("virtio-net-pci,netdev=net0,{}", Slot::Nic.placement()),
    ]);
    // Not a PCI device (its GUID lives in guest RAM, found through fw_cfg
    // and ACPI), so it takes no slot and moves none. Last, so that the
    // order of every device before it is the same with and without it.
    if plan.vmgenid {
        push(&["-device", "vmgenid,guid=auto,id=vmgenid0"]);
    }
    if plan.incoming {
        push(&["-incoming", "defer"]);
    }
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
            cpu: TCG_CPU_LINUX.into(),
            vcpus: 2,
            memory_mib: 256,
            overlay: "/j/1/overlay.qcow2".into(),
            seed: Some((SeedKind::NoCloud, "/j/1/seed.iso".into())),
            uefi: None,
            console: "/j/1/console.log".into(),
            qmp_socket: "/j/1/qmp.sock".into(),
            paused: false,
            vmgenid: false,
            incoming: false,
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
        assert!(has_pair(
            &a,
            "-device",
            "virtio-rng-pci,bus=pci.0,addr=0x2,id=rng0"
        ));
        assert!(has_pair(
            &a,
            "-drive",
            "file=/j/1/overlay.qcow2,if=none,id=root-drive,format=qcow2,cache=unsafe"
        ));
        assert!(has_pair(
            &a,
            "-device",
            "virtio-blk-pci,drive=root-drive,bus=pci.0,addr=0x4,id=root"
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
        assert!(has_pair(
            &a,
            "-device",
            "virtio-net-pci,netdev=net0,bus=pci.0,addr=0x3,id=nic0"
        ));
        assert!(!a.iter().any(|x| x.contains("pflash") || x == "-daemonize"));
        assert!(
            !a.iter().any(|x| x.contains("hostfwd=tcp::")),
            "never an unbound forward"
        );
    }

    #[test]
    fn kvm_takes_the_plans_cpu() {
        let a = s(&VmPlan {
            accel: Accel::Kvm,
            cpu: KVM_CPU.into(),
            ..plan()
        });
        assert!(has_pair(&a, "-accel", "kvm"));
        assert!(has_pair(&a, "-cpu", "host,-arch-capabilities,-vmx,-svm"));
        assert!(!a.contains(&"tcg".to_string()));
    }

    fn image(os: GuestOs, cpu: Option<&str>) -> ImageConfig {
        ImageConfig {
            name: "i".into(),
            path: "/i.qcow2".into(),
            format: crate::config::ImageFormat::Qcow2,
            os,
            firmware: crate::config::Firmware::Bios,
            vcpus: 1,
            memory_mib: 256,
            disk_size_gib: None,
            ssh_user: "root".into(),
            seed: SeedKind::NoCloud,
            boot_timeout: std::time::Duration::from_secs(60),
            readiness_probes: 1,
            readiness_probe_interval: std::time::Duration::from_secs(1),
            labels: vec![],
            max_concurrent_jobs: None,
            cpu: cpu.map(str::to_owned),
            path_prepend: vec![],
            network: crate::config::NetworkMode::Outbound,
            network_deny: vec![],
            network_allow: vec![],
            registry_mirror: None,
            warm: 0,
            warm_max_idle: std::time::Duration::from_secs(3600),
            snapshot: false,
            node: None,
        }
    }

    #[test]
    fn cpu_defaults_by_os_and_accelerator_and_the_image_key_wins() {
        use GuestOs::{Illumos, Linux};
        assert_eq!(cpu_model(&image(Linux, None), Accel::Tcg), "qemu64,+rdrand");
        assert_eq!(
            cpu_model(&image(Illumos, None), Accel::Tcg),
            "qemu64,+rdrand,-svm"
        );
        for os in [Linux, Illumos] {
            assert_eq!(
                cpu_model(&image(os, None), Accel::Kvm),
                "host,-arch-capabilities,-vmx,-svm"
            );
            for accel in [Accel::Kvm, Accel::Tcg] {
                assert_eq!(cpu_model(&image(os, Some("EPYC,-svm")), accel), "EPYC,-svm");
            }
        }
        assert_eq!(
            accel_args(Accel::Tcg, "qemu64"),
            ["-accel", "tcg", "-cpu", "qemu64"]
        );
    }

    /// (slot, device text) of every `-device` on the PCI bus.
    fn pci_layout(a: &[String]) -> Vec<(String, String)> {
        a.windows(2)
            .filter(|w| w[0] == "-device" && !w[1].starts_with("vmgenid"))
            .map(|w| {
                let addr = w[1]
                    .split(',')
                    .find_map(|o| o.strip_prefix("addr="))
                    .unwrap_or_else(|| panic!("no addr= in {}", w[1]))
                    .to_string();
                assert!(w[1].contains("bus=pci.0"), "{}", w[1]);
                (addr, w[1].split(',').next().unwrap_or_default().to_string())
            })
            .collect()
    }

    #[test]
    fn every_pci_device_has_its_fixed_slot_and_the_root_disk_is_at_4() {
        let nocloud = pci_layout(&s(&plan()));
        let want = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, d)| (a.to_string(), d.to_string()))
                .collect()
        };
        assert_eq!(
            nocloud,
            want(&[
                ("0x2", "virtio-rng-pci"),
                ("0x4", "virtio-blk-pci"),
                ("0x3", "virtio-net-pci"),
            ])
        );
        let cpio = pci_layout(&s(&VmPlan {
            seed: Some((SeedKind::MetadataCpio, "/j/1/seed.cpio".into())),
            ..plan()
        }));
        assert_eq!(
            cpio,
            want(&[
                ("0x2", "virtio-rng-pci"),
                ("0x4", "virtio-blk-pci"),
                ("0x5", "virtio-blk-pci"),
                ("0x3", "virtio-net-pci"),
            ])
        );
        // UEFI adds flash, not PCI devices: the layout stays.
        let uefi = pci_layout(&s(&VmPlan {
            uefi: Some(("/c.fd".into(), "/v.fd".into())),
            ..plan()
        }));
        assert_eq!(uefi, nocloud);
        // No disk is attached without an address (`if=virtio` cannot take one).
        assert!(!s(&plan()).iter().any(|x| x.contains("if=virtio")));
        // The table itself: distinct slots, none of the machine's own (0, 1).
        let numbers: Vec<u8> = Slot::ALL.iter().map(|s| s.number()).collect();
        assert_eq!(numbers, [2, 3, 4, 5]);
        assert_eq!(
            Slot::RootDisk.number(),
            4,
            "kayak pins the OmniOS root at @4"
        );
        assert_eq!(Slot::RootDisk.placement(), "bus=pci.0,addr=0x4,id=root");
    }

    #[test]
    fn vmgenid_and_incoming_add_no_pci_device() {
        let plain = s(&plan());
        assert!(!plain.iter().any(|x| x.contains("vmgenid")));
        assert!(!plain.contains(&"-incoming".to_string()));
        let restored = s(&VmPlan {
            vmgenid: true,
            incoming: true,
            ..plan()
        });
        assert!(has_pair(
            &restored,
            "-device",
            "vmgenid,guid=auto,id=vmgenid0"
        ));
        assert!(has_pair(&restored, "-incoming", "defer"));
        // Every PCI device keeps its slot, and nothing else moves: the
        // arguments before the vmgenid device are the same.
        assert_eq!(pci_layout(&restored), pci_layout(&plain));
        assert_eq!(restored[..plain.len()], plain[..]);
        let vmgenid_dev = restored
            .windows(2)
            .find(|w| w[0] == "-device" && w[1].starts_with("vmgenid"))
            .map(|w| w[1].clone())
            .unwrap();
        assert!(!vmgenid_dev.contains("addr=") && !vmgenid_dev.contains("bus="));
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
            "file=/j/1/seed.cpio,if=none,id=seed-drive,format=raw,readonly=on"
        ));
        assert!(has_pair(
            &a,
            "-device",
            "virtio-blk-pci,drive=seed-drive,bus=pci.0,addr=0x5,id=seed"
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

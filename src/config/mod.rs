//! Configuration: one TOML file. Parse (serde, raw structs) → validate → the
//! runtime types below, which have no meaningful `Option`s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub qemu: QemuConfig,
    /// Images by name, in file order is not significant.
    pub images: BTreeMap<String, ImageConfig>,
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Where per-job directories (`jobs/<id>/`) and the state database live.
    pub state_dir: PathBuf,
    /// Host-wide maximum number of VMs at once.
    pub max_concurrent_jobs: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedKind {
    /// cloud-init NoCloud ISO (label `cidata`) on an IDE CD-ROM.
    NoCloud,
    /// Raw cpio at LBA 0 for the illumos metadata-agent, as a raw disk.
    MetadataCpio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

//! Choosing the accelerator: KVM only where a KVM guest demonstrably runs.
//!
//! On some hosts `/dev/kvm` opens fine but guests crawl or hang (broken nested
//! virtualisation). Measured on this project's CI machines: SeaBIOS needs
//! 3.9–4.6 s under KVM to reach its boot stage, against 0.18 s under TCG and
//! well under 0.2 s on a healthy KVM host; a Linux guest then never comes up.
//! So the probe boots SeaBIOS alone (no disk, no image) with its debug console
//! on I/O port 0x402 and accepts KVM only if SeaBIOS finishes POST (prints
//! `Booting from`) within [`PROBE_DEADLINE`]. The probe QEMU is killed on
//! every path.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::{AccelChoice, QemuConfig};

use super::Accel;
use super::process::{kill_group, spawn_now};

/// How long SeaBIOS may take to reach its boot stage under KVM.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(2);
/// SeaBIOS prints this once POST is done and it looks for a boot device.
const POST_DONE: &[u8] = b"Booting from";

/// Why an explicitly requested accelerator cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    #[error(
        "KVM was requested but /dev/kvm cannot be opened ({0}): load the kvm module, grant access to /dev/kvm, or set `qemu.accel = \"tcg\"`"
    )]
    KvmUnavailable(String),
}

/// The result of a KVM probe, with the reason for the log and for `doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub accel: Accel,
    pub reason: String,
}

/// Resolves the configured accelerator. `auto` runs the KVM probe once per
/// process (blocking for at most about [`PROBE_DEADLINE`]) and caches it;
/// call it from `spawn_blocking` in async code.
pub fn resolve(qemu: &QemuConfig) -> Result<Accel, AccelError> {
    resolve_with_reason(qemu).map(|p| p.accel)
}

/// Like [`resolve`], with the reason for the choice (shown in job logs).
pub fn resolve_with_reason(qemu: &QemuConfig) -> Result<Probe, AccelError> {
    match qemu.accel {
        AccelChoice::Tcg => Ok(Probe {
            accel: Accel::Tcg,
            reason: "configured: accel = \"tcg\"".into(),
        }),
        AccelChoice::Kvm => {
            open_kvm().map_err(AccelError::KvmUnavailable)?;
            Ok(Probe {
                accel: Accel::Kvm,
                reason: "configured: accel = \"kvm\"".into(),
            })
        }
        AccelChoice::Auto => {
            static CACHE: OnceLock<Probe> = OnceLock::new();
            let p = CACHE.get_or_init(|| {
                let p = probe(&qemu.system_binary);
                tracing::info!(accel = ?p.accel, reason = %p.reason, "accelerator chosen");
                p
            });
            Ok(Probe {
                accel: p.accel,
                reason: format!("auto: {}", p.reason),
            })
        }
    }
}

fn open_kvm() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Probes KVM (uncached): `/dev/kvm` must open, and SeaBIOS must finish POST
/// under KVM within the deadline.
pub fn probe(system_binary: &Path) -> Probe {
    if let Err(e) = open_kvm() {
        return Probe {
            accel: Accel::Tcg,
            reason: format!("/dev/kvm cannot be opened: {e}"),
        };
    }
    match seabios_reaches_boot(system_binary, "kvm", PROBE_DEADLINE) {
        Ok(took) => Probe {
            accel: Accel::Kvm,
            reason: format!(
                "a KVM guest finished firmware POST in {} ms",
                took.as_millis()
            ),
        },
        Err(why) => Probe {
            accel: Accel::Tcg,
            reason: format!("KVM is unusable: {why}"),
        },
    }
}

/// Boots SeaBIOS alone under `accel` and waits until it reaches its boot stage.
/// Returns how long that took, or why it did not happen within `deadline`.
pub fn seabios_reaches_boot(
    system_binary: &Path,
    accel: &str,
    deadline: Duration,
) -> Result<Duration, String> {
    let dir = probe_dir().map_err(|e| format!("cannot create a probe directory: {e}"))?;
    let log = dir.join("debugcon.log");
    let result = run_probe(system_binary, accel, &log, deadline);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn probe_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "solstice-kvm-probe-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

fn run_probe(
    system_binary: &Path,
    accel: &str,
    log: &Path,
    deadline: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut cmd = Command::new(system_binary);
    cmd.args(["-accel", accel, "-machine", "pc", "-m", "16"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-chardev")
        .arg(format!(
            "file,id=dbg,path={}",
            log.to_string_lossy().replace(',', ",,")
        ))
        .args(["-device", "isa-debugcon,iobase=0x402,chardev=dbg"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child =
        spawn_now(&mut cmd).map_err(|e| format!("cannot run {}: {e}", system_binary.display()))?;
    let outcome = loop {
        if std::fs::read(log).is_ok_and(|b| b.windows(POST_DONE.len()).any(|w| w == POST_DONE)) {
            break Ok(start.elapsed());
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("the probe QEMU exited early ({status})"));
        }
        if start.elapsed() >= deadline {
            break Err(format!(
                "the firmware did not finish POST within {} ms",
                deadline.as_millis()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    kill_group(child.id());
    let _ = child.kill();
    let stderr = child.stderr.take();
    let _ = child.wait();
    match outcome {
        Err(e) if e.contains("exited early") => {
            let mut msg = String::new();
            if let Some(mut s) = stderr {
                use std::io::Read;
                let _ = s.read_to_string(&mut msg);
            }
            Err(format!("{e}: {}", msg.trim()))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_probe_succeeds_quickly_so_the_probe_detects_progress() {
        let took = seabios_reaches_boot(
            Path::new("qemu-system-x86_64"),
            "tcg",
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn a_missing_binary_is_reported_not_hung() {
        let err = seabios_reaches_boot(
            Path::new("/nonexistent/qemu"),
            "tcg",
            Duration::from_secs(2),
        )
        .unwrap_err();
        assert!(err.contains("cannot run"), "{err}");
    }
}

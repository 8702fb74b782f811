//! Choosing the accelerator: KVM only where a KVM guest demonstrably runs,
//! and a way back to TCG when a job's KVM guest does not.
//!
//! On some hosts `/dev/kvm` opens fine but guests hang, crawl or stop with an
//! emulation error (broken nested virtualisation). Firmware timing alone
//! cannot tell: on one such host SeaBIOS finished POST under KVM in 1.6 s and
//! the Linux guest after it never printed a byte. So `auto` rests on two
//! safeguards:
//!
//! 1. **A probe that proves guest code runs** ([`guest_runs`]): QEMU with the
//!    job VMs' own machine and CPU flags boots a 512-byte boot sector of ours
//!    ([`BOOT_SECTOR`]) from a virtio disk. It must see the firmware's timer
//!    interrupt tick, switch to 64-bit long mode with paging, compute a known
//!    sum, print [`PROBE_OK`] on the debug console and make QEMU exit with
//!    status [`PROBE_EXIT_STATUS`], all within [`PROBE_DEADLINE`]. A healthy
//!    KVM host does that in about 0.3 s, TCG here in 0.3 s as well; a broken
//!    one fails, hangs or needs seconds (rejected: a slow KVM is no gain).
//! 2. **A fallback at run time** ([`judge_kvm_boot`], then
//!    [`Accelerator::kvm_failed`]): a job VM under `auto`'s KVM that shows no
//!    progress (no console output and no SSH banner within
//!    [`FIRST_OUTPUT_WINDOW`], a console silent for [`STALL_WINDOW`] before
//!    SSH answers, a kernel reporting stalled CPUs ([`CONSOLE_ALARMS`]), a
//!    stopped guest, a dead QEMU, or no SSH within the image's boot timeout)
//!    is destroyed and the job booted again under TCG. When that VM reaches
//!    SSH, KVM was the difference: it is off for the rest of the process,
//!    and the daemon and `exec` record it in the state database, so it
//!    survives restarts (until QEMU or the host kernel changes). A guest that
//!    fails under TCG too is the image's fault, and KVM stays on.
//!
//! An explicit `accel = "kvm"` never falls back: it fails with a message that
//! says what to do.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{AccelChoice, GuestOs, QemuConfig};

use super::Accel;
use super::argv::{Slot, accel_args, default_cpu, virtio_disk_args};
use super::process::{kill_group, spawn_now};

/// How long the probe guest may take, from spawning QEMU to its exit.
pub const PROBE_DEADLINE: Duration = Duration::from_millis(1500);
/// A job VM under KVM must print on its console or answer with an SSH banner
/// within this time after QEMU starts (a healthy KVM guest prints in well
/// under a second).
pub const FIRST_OUTPUT_WINDOW: Duration = Duration::from_secs(15);
/// After its first output, a KVM guest's console may stay silent this long
/// before SSH answers (a guest that hangs after its boot loader spoke).
pub const STALL_WINDOW: Duration = Duration::from_secs(45);
/// How a probe that ran out of time is described (and recognised for its
/// one retry).
const MISSED_DEADLINE: &str = "did not finish within";
/// What the probe guest prints on the debug console (I/O port 0x402).
pub const PROBE_OK: &[u8] = b"SOLSTICE-PROBE-OK";
/// QEMU's exit status when the probe guest writes 0x10 to `isa-debug-exit`
/// (`(0x10 << 1) | 1`).
pub const PROBE_EXIT_STATUS: i32 = 33;
/// Set to `1` in tests only: `auto` then takes KVM without probing, so that
/// the run-time fallback can be exercised on a host whose KVM is broken.
pub const FORCE_KVM_ENV: &str = "SOLSTICE_TEST_FORCE_KVM";

/// The probe's boot sector (loaded by the firmware at 0x7c00), hand-assembled
/// from this source (GNU as, `ld -Ttext 0x7c00 --oformat binary`):
///
/// ```text
///     .code16
///     cli; xor %ax,%ax; mov %ax,%ds; mov %ax,%es; mov %ax,%ss; mov $0x7c00,%sp
///     mov 0x46c,%bx; sti                       # the BIOS tick counter
/// 1:  hlt; mov 0x46c,%ax; sub %bx,%ax; cmp $3,%ax; jb 1b; cli
///     mov $0x1000,%di; mov $0x1800,%cx; xor %ax,%ax; rep stosw   # zero 0x1000-0x3fff
///     movw $0x2003,0x1000; movw $0x3003,0x2000; movw $0x83,0x3000  # PML4, PDPT, 2 MiB page
///     lgdtl gdtr
///     mov %cr4,%eax; or $0x20,%eax; mov %eax,%cr4                 # PAE
///     mov $0x1000,%eax; mov %eax,%cr3
///     mov $0xc0000080,%ecx; rdmsr; or $0x100,%eax; wrmsr          # EFER.LME
///     mov %cr0,%eax; or $0x80000001,%eax; mov %eax,%cr0           # PG | PE
///     ljmp $0x08,$long
///     .code64
/// long:
///     mov $0x10,%ax; mov %ax,%ds; mov %ax,%es; mov %ax,%ss
///     mov $1000000,%ecx; xor %eax,%eax
/// 2:  add %rcx,%rax; dec %ecx; jnz 2b
///     movabs $500000500000,%rbx; cmp %rbx,%rax; jne 9f
///     lea ok(%rip),%rsi; mov $0x402,%dx
/// 3:  lodsb; test %al,%al; jz 4f; out %al,%dx; jmp 3b
/// 4:  mov $0x501,%dx; mov $0x10,%al; out %al,%dx                  # isa-debug-exit
/// 9:  hlt; jmp 9b
///     .p2align 3
/// gdt:  .quad 0, 0x00209a0000000000, 0x0000920000000000
/// gdtr: .word 23; .long gdt
/// ok:   .asciz "SOLSTICE-PROBE-OK\n"
///     .org 510; .word 0xaa55
/// ```
pub const BOOT_SECTOR: [u8; 512] = boot_sector();

/// The code and data of [`BOOT_SECTOR`] before its zero padding.
const BOOT_CODE: &[u8] = &[
    // 0x00 real mode: segments and stack
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x7c, //
    // 0x0c wait for three timer ticks
    0x8b, 0x1e, 0x6c, 0x04, 0xfb, 0xf4, 0xa1, 0x6c, 0x04, 0x29, 0xd8, 0x83, 0xf8, 0x03, 0x72, 0xf5,
    0xfa, //
    // 0x1d page tables
    0xbf, 0x00, 0x10, 0xb9, 0x00, 0x18, 0x31, 0xc0, 0xf3, 0xab, 0xc7, 0x06, 0x00, 0x10, 0x03, 0x20,
    0xc7, 0x06, 0x00, 0x20, 0x03, 0x30, 0xc7, 0x06, 0x00, 0x30, 0x83, 0x00, //
    // 0x39 lgdtl gdtr (0x7cd0)
    0x66, 0x0f, 0x01, 0x16, 0xd0, 0x7c, //
    // 0x3f PAE, CR3, EFER.LME, PG|PE
    0x0f, 0x20, 0xe0, 0x66, 0x83, 0xc8, 0x20, 0x0f, 0x22, 0xe0, 0x66, 0xb8, 0x00, 0x10, 0x00, 0x00,
    0x0f, 0x22, 0xd8, 0x66, 0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0x66, 0x0d, 0x00, 0x01, 0x00,
    0x00, 0x0f, 0x30, 0x0f, 0x20, 0xc0, 0x66, 0x0d, 0x01, 0x00, 0x00, 0x80, 0x0f, 0x22,
    0xc0, //
    // 0x6e ljmp $0x08, $0x7c73
    0xea, 0x73, 0x7c, 0x08, 0x00, //
    // 0x73 long mode: data segments
    0x66, 0xb8, 0x10, 0x00, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, //
    // 0x7d sum 1..1000000 and compare with 500000500000
    0xb9, 0x40, 0x42, 0x0f, 0x00, 0x31, 0xc0, 0x48, 0x01, 0xc8, 0xff, 0xc9, 0x75, 0xf9, 0x48, 0xbb,
    0x20, 0x29, 0x5a, 0x6a, 0x74, 0x00, 0x00, 0x00, 0x48, 0x39, 0xd8, 0x75, 0x1a, //
    // 0x9a print `ok` on port 0x402
    0x48, 0x8d, 0x35, 0x35, 0x00, 0x00, 0x00, 0x66, 0xba, 0x02, 0x04, 0xac, 0x84, 0xc0, 0x74, 0x03,
    0xee, 0xeb, 0xf8, //
    // 0xad exit through isa-debug-exit (port 0x501); 0xb4 halt forever
    0x66, 0xba, 0x01, 0x05, 0xb0, 0x10, 0xee, 0xf4, 0xeb, 0xfd, 0x90, //
    // 0xb8 GDT: null, 64-bit code (0x08), data (0x10)
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x9a, 0x20, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x92, 0x00, 0x00, //
    // 0xd0 gdtr: limit 23, base 0x7cb8
    0x17, 0x00, 0xb8, 0x7c, 0x00, 0x00, //
    // 0xd6 "SOLSTICE-PROBE-OK\n\0"
    b'S', b'O', b'L', b'S', b'T', b'I', b'C', b'E', b'-', b'P', b'R', b'O', b'B', b'E', b'-', b'O',
    b'K', b'\n', 0x00,
];

const fn boot_sector() -> [u8; 512] {
    let mut s = [0u8; 512];
    let mut i = 0;
    while i < BOOT_CODE.len() {
        s[i] = BOOT_CODE[i];
        i += 1;
    }
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

/// Why an explicitly requested accelerator cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    #[error(
        "KVM was requested but /dev/kvm cannot be opened ({0}): load the kvm module, grant access to /dev/kvm, or set `qemu.accel = \"auto\"` or `\"tcg\"`"
    )]
    KvmUnavailable(String),
}

/// The result of a KVM probe, with the reason for the log and for `doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub accel: Accel,
    pub reason: String,
}

/// A KVM failure remembered across restarts (the daemon's state database).
/// It applies only while QEMU and the host kernel are the ones it was seen
/// with: an upgrade of either earns KVM a new probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmFailure {
    /// What happened, in words.
    pub reason: String,
    /// [`host_fingerprint`] when it happened.
    pub fingerprint: String,
    /// Seconds since the Unix epoch.
    pub at_unix: i64,
}

/// The QEMU version and the host kernel release, e.g.
/// `QEMU emulator version 10.0.2 (…); Linux 6.1.0-28-amd64`.
pub fn host_fingerprint(system_binary: &Path) -> String {
    let qemu = Command::new(system_binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| format!("{} (no version)", system_binary.display()));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| format!("Linux {}", r.trim()))
        .unwrap_or_else(|_| "unknown kernel".into());
    format!("{qemu}; {kernel}")
}

/// Called once when KVM is given up at run time (the daemon records it and
/// counts it in its metrics).
pub type FallbackListener = Box<dyn Fn(&KvmFailure) + Send + Sync>;

/// The accelerator of one process (`solstice exec`) or daemon: the decision
/// taken at start, and KVM's fallback to TCG when a job's guest shows KVM is
/// broken after all. Shared by every job of the process.
pub struct Accelerator {
    choice: AccelChoice,
    initial: Probe,
    fingerprint: Option<String>,
    given_up: Mutex<Option<String>>,
    listener: Option<FallbackListener>,
}

impl std::fmt::Debug for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accelerator")
            .field("choice", &self.choice)
            .field("initial", &self.initial)
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

impl Accelerator {
    /// A fixed accelerator that never changes (tests, benchmarks of one accelerator).
    pub fn fixed(accel: Accel) -> Accelerator {
        let choice = match accel {
            Accel::Kvm => AccelChoice::Kvm,
            Accel::Tcg => AccelChoice::Tcg,
        };
        let name = accel.as_str();
        Accelerator {
            choice,
            initial: Probe {
                accel,
                reason: format!("configured: accel = \"{name}\""),
            },
            fingerprint: None,
            given_up: Mutex::new(None),
            listener: None,
        }
    }

    /// Resolves the configured accelerator. `auto` probes KVM (blocking for
    /// at most about [`PROBE_DEADLINE`]; call it from `spawn_blocking` in
    /// async code) unless `remembered` says KVM failed on this very host
    /// (same QEMU, same kernel) before.
    pub fn resolve(
        qemu: &QemuConfig,
        remembered: Option<&KvmFailure>,
    ) -> Result<Accelerator, AccelError> {
        let initial = match qemu.accel {
            AccelChoice::Tcg => Probe {
                accel: Accel::Tcg,
                reason: "configured: accel = \"tcg\"".into(),
            },
            AccelChoice::Kvm => {
                open_kvm().map_err(AccelError::KvmUnavailable)?;
                Probe {
                    accel: Accel::Kvm,
                    reason: "configured: accel = \"kvm\"".into(),
                }
            }
            AccelChoice::Auto => {
                let p = decide_auto(qemu, remembered);
                Probe {
                    accel: p.accel,
                    reason: format!("auto: {}", p.reason),
                }
            }
        };
        let fingerprint =
            (qemu.accel == AccelChoice::Auto).then(|| host_fingerprint(&qemu.system_binary));
        Ok(Accelerator {
            choice: qemu.accel,
            initial,
            fingerprint,
            given_up: Mutex::new(None),
            listener: None,
        })
    }

    /// Calls `listener` once when KVM is given up at run time.
    pub fn with_listener(mut self, listener: FallbackListener) -> Accelerator {
        self.listener = Some(listener);
        self
    }

    /// The configured choice.
    pub fn choice(&self) -> AccelChoice {
        self.choice
    }

    /// The decision taken at start.
    pub fn initial(&self) -> &Probe {
        &self.initial
    }

    /// The accelerator the next VM should use.
    pub fn current(&self) -> Accel {
        if self.initial.accel == Accel::Kvm && self.kvm_given_up().is_some() {
            Accel::Tcg
        } else {
            self.initial.accel
        }
    }

    /// Why KVM was given up at run time, if it was.
    pub fn kvm_given_up(&self) -> Option<String> {
        match self.given_up.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether a VM started now under `accel` may fall back to TCG (only
    /// `auto`'s KVM does).
    pub fn may_fall_back(&self, accel: Accel) -> bool {
        self.choice == AccelChoice::Auto && accel == Accel::Kvm
    }

    /// One line for users: `tcg (auto: …)`.
    pub fn describe(&self) -> String {
        match self.kvm_given_up() {
            Some(why) if self.initial.accel == Accel::Kvm => {
                format!("tcg (auto: KVM was given up: {why})")
            }
            _ => format!("{} ({})", self.initial.accel.as_str(), self.initial.reason),
        }
    }

    /// Gives up KVM for the rest of the process because a job's guest showed
    /// it is broken. Returns true for the call that did it (later calls, from
    /// jobs that were booting at the same time, return false).
    pub fn kvm_failed(&self, reason: &str) -> bool {
        let mut g = match self.given_up.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.is_some() {
            return false;
        }
        *g = Some(reason.to_string());
        drop(g);
        if let Some(listener) = &self.listener {
            listener(&KvmFailure {
                reason: reason.to_string(),
                fingerprint: self.fingerprint.clone().unwrap_or_default(),
                at_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
            });
        }
        true
    }
}

/// `auto`'s decision: the test switch, a remembered failure, then the probe.
fn decide_auto(qemu: &QemuConfig, remembered: Option<&KvmFailure>) -> Probe {
    if std::env::var(FORCE_KVM_ENV).is_ok_and(|v| v == "1") {
        return Probe {
            accel: Accel::Kvm,
            reason: format!(
                "KVM forced by {FORCE_KVM_ENV}=1 (for tests only; the probe was skipped)"
            ),
        };
    }
    if let Some(f) = remembered {
        let now = host_fingerprint(&qemu.system_binary);
        if f.fingerprint == now {
            return Probe {
                accel: Accel::Tcg,
                reason: format!(
                    "a job's KVM guest failed on this host before ({}); `solstice doctor --retry-kvm` tries KVM again",
                    f.reason
                ),
            };
        }
    }
    probe(&qemu.system_binary)
}

fn open_kvm() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Probes KVM (uncached): `/dev/kvm` must open, and the probe guest must run
/// to its end under KVM within [`PROBE_DEADLINE`].
pub fn probe(system_binary: &Path) -> Probe {
    if let Err(e) = open_kvm() {
        return Probe {
            accel: Accel::Tcg,
            reason: format!("/dev/kvm cannot be opened: {e}"),
        };
    }
    let mut result = guest_runs(system_binary, Accel::Kvm, PROBE_DEADLINE);
    if result
        .as_ref()
        .is_err_and(|why| why.0.contains(MISSED_DEADLINE))
    {
        // Missing the deadline once may be a cold start (page cache, a busy
        // disk at boot): a healthy KVM passes the second time. A guest that
        // failed outright is not tried again.
        result = guest_runs(system_binary, Accel::Kvm, PROBE_DEADLINE);
    }
    match result {
        Ok(took) => Probe {
            accel: Accel::Kvm,
            reason: format!(
                "a KVM probe guest booted, took timer interrupts, entered long mode and finished in {} ms",
                took.as_millis()
            ),
        },
        Err(why) => Probe {
            accel: Accel::Tcg,
            reason: format!("KVM is unusable: {why}"),
        },
    }
}

/// Boots the probe guest ([`BOOT_SECTOR`]) under `accel` with the job VMs'
/// machine and CPU flags, and waits for it to finish. Returns how long it
/// took, or why it did not finish within `deadline`. QEMU is killed on every
/// path and the probe's files removed.
pub fn guest_runs(
    system_binary: &Path,
    accel: Accel,
    deadline: Duration,
) -> Result<Duration, ProbeFailed> {
    let dir =
        probe_dir().map_err(|e| ProbeFailed(format!("cannot create a probe directory: {e}")))?;
    let result = write_disk(&dir.join("probe.img"))
        .map_err(|e| format!("cannot write the probe disk: {e}"))
        .and_then(|()| run_probe(system_binary, accel, &dir, deadline));
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(ProbeFailed)
}

/// Why the probe guest did not run to its end: one sentence for users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProbeFailed(pub String);

fn probe_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "solstice-kvm-probe-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

/// A 1 MiB raw disk whose first sector is the boot sector (tiny disks are an
/// edge case for some firmware and disk drivers).
fn write_disk(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(&BOOT_SECTOR)?;
    f.set_len(1 << 20)
}

fn run_probe(
    system_binary: &Path,
    accel: Accel,
    dir: &Path,
    deadline: Duration,
) -> Result<Duration, String> {
    let log = dir.join("debugcon.log");
    let disk = dir.join("probe.img");
    let esc = |p: &Path| p.to_string_lossy().replace(',', ",,");
    let start = Instant::now();
    let mut cmd = Command::new(system_binary);
    cmd.args(["-machine", "pc"])
        // The CPU model every job VM gets by default under `accel`: a model
        // that makes QEMU abort on this host is caught here.
        .args(accel_args(accel, default_cpu(GuestOs::Linux, accel)))
        .args(["-m", "16", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-chardev")
        .arg(format!("file,id=dbg,path={}", esc(&log)))
        .args(["-device", "isa-debugcon,iobase=0x402,chardev=dbg"])
        .args(["-device", "isa-debug-exit,iobase=0x501,iosize=1"])
        .args(virtio_disk_args(
            Slot::RootDisk,
            &disk,
            "format=raw,readonly=on",
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child =
        spawn_now(&mut cmd).map_err(|e| format!("cannot run {}: {e}", system_binary.display()))?;
    let outcome = loop {
        if let Ok(Some(status)) = child.try_wait() {
            let printed =
                std::fs::read(&log).is_ok_and(|b| b.windows(PROBE_OK.len()).any(|w| w == PROBE_OK));
            break if status.code() == Some(PROBE_EXIT_STATUS) && printed {
                Ok(start.elapsed())
            } else {
                Err(ProbeEnd::Exited(status.to_string()))
            };
        }
        if start.elapsed() >= deadline {
            break Err(ProbeEnd::Deadline(std::fs::read(&log).unwrap_or_default()));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Once reaped, its pid (and process group id) may belong to another
    // process: only a child still running is killed.
    if matches!(child.try_wait(), Ok(None)) {
        kill_group(child.id());
        let _ = child.kill();
    }
    let stderr = child.stderr.take();
    let _ = child.wait();
    outcome.map_err(|end| match end {
        ProbeEnd::Exited(status) => {
            let mut msg = String::new();
            if let Some(mut s) = stderr {
                use std::io::Read;
                let _ = s.read_to_string(&mut msg);
            }
            let msg = last_lines(&msg, 3);
            if msg.is_empty() {
                format!("the probe guest's QEMU exited early ({status})")
            } else {
                format!("the probe guest's QEMU exited early ({status}): {msg}")
            }
        }
        ProbeEnd::Deadline(firmware) => {
            let stage = if firmware.windows(PROBE_OK.len()).any(|w| w == PROBE_OK) {
                "it printed its result but QEMU did not exit"
            } else if firmware.windows(12).any(|w| w == b"Booting from") {
                "the firmware started it, but it did not finish"
            } else {
                "the firmware did not even reach its boot stage"
            };
            format!(
                "the probe guest {MISSED_DEADLINE} {} ms ({stage})",
                deadline.as_millis()
            )
        }
    })
}

enum ProbeEnd {
    Exited(String),
    /// What the debug console holds by then.
    Deadline(Vec<u8>),
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// What guest kernels print when their CPUs cannot make progress (Linux RCU
/// stall and lockup detectors, Linux and illumos panics). Seen on a KVM
/// guest's console, they are taken as KVM's failure (to be confirmed by the
/// same VM booting under TCG).
pub const CONSOLE_ALARMS: [&str; 6] = [
    "detected stall",
    "soft lockup",
    "hard LOCKUP",
    "Kernel panic",
    "panic[cpu",
    "deadman timer",
];

/// The first console line (of `text`) that carries one of [`CONSOLE_ALARMS`].
pub fn console_alarm(text: &str) -> Option<String> {
    text.lines()
        .find(|l| CONSOLE_ALARMS.iter().any(|a| l.contains(a)))
        .map(|l| l.trim().chars().take(160).collect())
}

/// What a watcher saw of a booting job VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootObservation {
    /// Since QEMU was spawned.
    pub elapsed: Duration,
    /// Bytes on the serial console so far.
    pub console_bytes: u64,
    /// Since QEMU was spawned, when the console last grew (`None`: never).
    pub console_grew_at: Option<Duration>,
    /// The guest's SSH server has sent its banner.
    pub banner_seen: bool,
    /// QEMU exited, with its status and last words.
    pub qemu_exited: Option<String>,
    /// QEMU's run state (`query-status`), e.g. `running`, `internal-error`.
    pub run_state: Option<String>,
    /// A console line in which the guest's kernel reports stalled CPUs or a
    /// panic (see [`console_alarm`]).
    pub console_alarm: Option<String>,
}

/// The watcher's verdict on a KVM guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootVerdict {
    /// Nothing decided yet: look again later.
    Wait,
    /// SSH answers: KVM works; stop watching.
    Healthy,
    /// KVM does not run this guest (or so it seems): boot it under TCG.
    Broken(KvmTrouble),
}

/// Why a job's KVM guest was given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmTrouble {
    /// What happened, for the job log.
    pub reason: String,
    /// What the TCG boot that follows must show to prove KVM broken.
    pub proof: Proof,
}

/// How a TCG boot of the same VM proves that KVM was at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// QEMU exited or the guest stopped with an emulation error under KVM:
    /// the TCG boot only has to reach SSH.
    Outright,
    /// The guest's kernel reported stalled CPUs or a panic under KVM. A
    /// loaded host stalls guests too, and TCG even more: the TCG boot must
    /// reach SSH with no such report on its own console.
    Alarm,
    /// The guest was only silent or slow under KVM, which an image or a
    /// loaded host can cause as well: the TCG boot (always slower than a
    /// working KVM) must reach SSH in less time than the KVM guest had.
    Slow,
}

impl KvmTrouble {
    pub fn outright(reason: impl Into<String>) -> KvmTrouble {
        KvmTrouble {
            reason: reason.into(),
            proof: Proof::Outright,
        }
    }

    pub fn alarm(reason: impl Into<String>) -> KvmTrouble {
        KvmTrouble {
            reason: reason.into(),
            proof: Proof::Alarm,
        }
    }

    pub fn slow(reason: impl Into<String>) -> KvmTrouble {
        KvmTrouble {
            reason: reason.into(),
            proof: Proof::Slow,
        }
    }

    /// Whether the TCG boot that followed proves KVM broken: `kvm_ran` is
    /// how long the KVM guest ran before it was given up, `tcg_to_ssh` how
    /// long the same VM took to reach SSH under TCG, `tcg_alarm` whether its
    /// console showed one of [`CONSOLE_ALARMS`] on the way.
    pub fn confirmed_by(&self, kvm_ran: Duration, tcg_to_ssh: Duration, tcg_alarm: bool) -> bool {
        match self.proof {
            Proof::Outright => true,
            Proof::Alarm => !tcg_alarm,
            Proof::Slow => tcg_to_ssh < kvm_ran,
        }
    }
}

/// Run states in which a guest can never make progress again.
const DEAD_STATES: [&str; 4] = ["internal-error", "guest-panicked", "shutdown", "io-error"];

/// Decides from one observation whether a KVM guest is booting, done, or
/// stuck. Pure: the windows are parameters, so tests inject observations.
pub fn judge_kvm_boot(
    obs: &BootObservation,
    first_output: Duration,
    stall: Duration,
) -> BootVerdict {
    if let Some(how) = &obs.qemu_exited {
        return BootVerdict::Broken(KvmTrouble::outright(format!(
            "QEMU exited while the guest booted under KVM ({how})"
        )));
    }
    if let Some(state) = &obs.run_state {
        let s = state.to_ascii_lowercase().replace('_', "-");
        if DEAD_STATES.contains(&s.as_str()) {
            return BootVerdict::Broken(KvmTrouble::outright(format!(
                "the guest stopped under KVM (QEMU state {s})"
            )));
        }
    }
    if obs.banner_seen {
        return BootVerdict::Healthy;
    }
    if let Some(line) = &obs.console_alarm {
        return BootVerdict::Broken(KvmTrouble::alarm(format!(
            "the guest's kernel reported stalled CPUs or a panic under KVM (\"{line}\")"
        )));
    }
    match obs.console_grew_at {
        None if obs.console_bytes == 0 && obs.elapsed >= first_output => {
            BootVerdict::Broken(KvmTrouble::slow(format!(
                "the guest printed nothing on its serial console and its SSH server did not answer within {} s under KVM",
                first_output.as_secs()
            )))
        }
        Some(at) if obs.elapsed.saturating_sub(at) >= stall => {
            BootVerdict::Broken(KvmTrouble::slow(format!(
                "the guest's console stopped for {} s before its SSH server answered under KVM",
                stall.as_secs()
            )))
        }
        _ => BootVerdict::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_layout() {
        assert_eq!(BOOT_CODE.len(), 0xe9);
        assert_eq!(&BOOT_SECTOR[510..], &[0x55, 0xaa]);
        // The gdtr points at the GDT, the message sits where `lea` finds it.
        assert_eq!(&BOOT_SECTOR[0xd0..0xd6], &[0x17, 0x00, 0xb8, 0x7c, 0, 0]);
        assert_eq!(&BOOT_SECTOR[0xd6..0xd6 + PROBE_OK.len()], PROBE_OK);
        // lea ok(%rip): rip after the instruction (0xa1) + 0x35 = 0xd6.
        assert_eq!(BOOT_SECTOR[0x9d], 0x35);
        assert!(BOOT_SECTOR[0xe9..510].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_probe_guest_runs_to_its_end_under_tcg() {
        let took = guest_runs(
            Path::new("qemu-system-x86_64"),
            Accel::Tcg,
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(took > Duration::ZERO);
    }

    #[test]
    fn a_missing_binary_is_reported_not_hung() {
        let err = guest_runs(
            Path::new("/nonexistent/qemu"),
            Accel::Tcg,
            Duration::from_secs(2),
        )
        .unwrap_err()
        .0;
        assert!(err.contains("cannot run"), "{err}");
    }

    #[test]
    fn a_guest_that_cannot_finish_in_time_is_rejected_and_killed() {
        // TCG cannot finish in 1 ms: the deadline path, which kills QEMU.
        let err = guest_runs(
            Path::new("qemu-system-x86_64"),
            Accel::Tcg,
            Duration::from_millis(1),
        )
        .unwrap_err()
        .0;
        assert!(err.contains("did not finish within 1 ms"), "{err}");
    }

    fn obs(secs: u64) -> BootObservation {
        BootObservation {
            elapsed: Duration::from_secs(secs),
            ..Default::default()
        }
    }

    const W: Duration = FIRST_OUTPUT_WINDOW;
    const S: Duration = STALL_WINDOW;

    #[test]
    fn silence_within_the_window_waits_and_after_it_is_broken() {
        assert_eq!(judge_kvm_boot(&obs(1), W, S), BootVerdict::Wait);
        assert_eq!(judge_kvm_boot(&obs(14), W, S), BootVerdict::Wait);
        match judge_kvm_boot(&obs(15), W, S) {
            BootVerdict::Broken(t) => {
                assert!(
                    t.reason.contains("printed nothing") && t.proof == Proof::Slow,
                    "{t:?}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn console_output_or_a_banner_is_progress() {
        let talking = BootObservation {
            console_bytes: 300,
            console_grew_at: Some(Duration::from_secs(20)),
            ..obs(30)
        };
        assert_eq!(judge_kvm_boot(&talking, W, S), BootVerdict::Wait);
        let banner = BootObservation {
            banner_seen: true,
            ..obs(40)
        };
        assert_eq!(judge_kvm_boot(&banner, W, S), BootVerdict::Healthy);
    }

    #[test]
    fn a_console_that_stops_before_ssh_is_a_stall() {
        let stalled = BootObservation {
            console_bytes: 80,
            console_grew_at: Some(Duration::from_secs(1)),
            ..obs(46)
        };
        match judge_kvm_boot(&stalled, W, S) {
            BootVerdict::Broken(t) => assert!(t.reason.contains("stopped for 45 s"), "{t:?}"),
            other => panic!("{other:?}"),
        }
        let slow = BootObservation {
            console_grew_at: Some(Duration::from_secs(2)),
            console_bytes: 80,
            ..obs(46)
        };
        assert_eq!(judge_kvm_boot(&slow, W, S), BootVerdict::Wait);
    }

    #[test]
    fn a_dead_qemu_or_run_state_is_broken_at_once_even_after_output() {
        let exited = BootObservation {
            qemu_exited: Some("signal 6 (SIGABRT): failed to set MSR 0x10a".into()),
            console_bytes: 10,
            console_grew_at: Some(Duration::ZERO),
            ..obs(0)
        };
        assert!(
            matches!(judge_kvm_boot(&exited, W, S), BootVerdict::Broken(t) if t.reason.contains("MSR") && t.proof == Proof::Outright)
        );
        for state in [
            "internal-error",
            "internal_error",
            "guest-panicked",
            "shutdown",
        ] {
            let o = BootObservation {
                run_state: Some(state.into()),
                ..obs(1)
            };
            assert!(
                matches!(judge_kvm_boot(&o, W, S), BootVerdict::Broken(t) if t.proof == Proof::Outright),
                "{state}"
            );
        }
        let running = BootObservation {
            run_state: Some("running".into()),
            ..obs(1)
        };
        assert_eq!(judge_kvm_boot(&running, W, S), BootVerdict::Wait);
    }

    #[test]
    fn kernel_stall_reports_are_broken_but_ordinary_lines_are_not() {
        let text =
            "[    0.1] Booting\n[ 332.3] rcu: INFO: rcu_preempt self-detected stall on CPU\n";
        let line = console_alarm(text).unwrap();
        assert!(line.contains("self-detected stall"), "{line}");
        assert_eq!(
            console_alarm("[ 1.0] rcu: Hierarchical RCU implementation.\n"),
            None
        );
        assert!(console_alarm("watchdog: BUG: soft lockup - CPU#0 stuck for 22s!").is_some());
        assert!(console_alarm("panic[cpu0]/thread=fffffffffbc2b2e0: deadman: timed out").is_some());
        let o = BootObservation {
            console_bytes: 100,
            console_grew_at: Some(Duration::from_secs(9)),
            console_alarm: Some(line),
            ..obs(9)
        };
        assert!(
            matches!(judge_kvm_boot(&o, W, S), BootVerdict::Broken(t) if t.reason.contains("stalled CPUs") && t.proof == Proof::Alarm)
        );
    }

    #[test]
    fn what_a_tcg_boot_must_show_to_prove_kvm_broken() {
        let s = |n| Duration::from_secs(n);
        let exited = KvmTrouble::outright("QEMU exited");
        assert!(exited.confirmed_by(Duration::ZERO, s(60), true));
        let silent = KvmTrouble::slow("nothing printed in 15 s");
        // TCG booted in 6 s where KVM had shown nothing after 15 s: broken.
        assert!(silent.confirmed_by(s(15), s(6), false));
        // A silent image that needs 40 s under TCG proves nothing about KVM.
        assert!(!silent.confirmed_by(s(15), s(40), false));
        let stalled = KvmTrouble::alarm("rcu: INFO: rcu_preempt self-detected stall on CPU");
        // Stalls under KVM only: KVM. Under TCG as well: the host's load.
        assert!(stalled.confirmed_by(s(4), s(30), false));
        assert!(!stalled.confirmed_by(s(4), s(30), true));
    }

    fn auto() -> Accelerator {
        Accelerator {
            choice: AccelChoice::Auto,
            initial: Probe {
                accel: Accel::Kvm,
                reason: "auto: test".into(),
            },
            fingerprint: Some("QEMU 10; Linux 6".into()),
            given_up: Mutex::new(None),
            listener: None,
        }
    }

    #[test]
    fn kvm_is_given_up_once_and_then_every_vm_uses_tcg() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let heard = Arc::new(AtomicUsize::new(0));
        let h = heard.clone();
        let a = auto().with_listener(Box::new(move |f: &KvmFailure| {
            assert_eq!(f.fingerprint, "QEMU 10; Linux 6");
            assert_eq!(f.reason, "hung");
            h.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(a.current(), Accel::Kvm);
        assert!(a.may_fall_back(Accel::Kvm));
        assert!(!a.may_fall_back(Accel::Tcg));
        assert!(a.kvm_failed("hung"));
        assert!(!a.kvm_failed("hung again"));
        assert_eq!(a.current(), Accel::Tcg);
        assert_eq!(heard.load(Ordering::SeqCst), 1);
        assert!(
            a.describe()
                .starts_with("tcg (auto: KVM was given up: hung"),
            "{}",
            a.describe()
        );
    }

    #[test]
    fn explicit_choices_never_fall_back() {
        assert!(!Accelerator::fixed(Accel::Kvm).may_fall_back(Accel::Kvm));
        assert!(!Accelerator::fixed(Accel::Tcg).may_fall_back(Accel::Tcg));
        assert_eq!(Accelerator::fixed(Accel::Tcg).current(), Accel::Tcg);
    }

    #[test]
    fn a_remembered_failure_applies_only_to_the_same_qemu_and_kernel() {
        let qemu = QemuConfig {
            system_binary: "qemu-system-x86_64".into(),
            img_binary: "qemu-img".into(),
            accel: AccelChoice::Auto,
            uefi_code: None,
            uefi_vars: None,
        };
        let same = KvmFailure {
            reason: "no output".into(),
            fingerprint: host_fingerprint(&qemu.system_binary),
            at_unix: 0,
        };
        assert!(same.fingerprint.contains("QEMU"), "{}", same.fingerprint);
        let p = decide_auto(&qemu, Some(&same));
        assert_eq!(p.accel, Accel::Tcg);
        assert!(
            p.reason.contains("failed on this host before (no output)"),
            "{}",
            p.reason
        );
    }
}

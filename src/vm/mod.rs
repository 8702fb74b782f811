//! QEMU VMs: overlay, seed, process, QMP, accelerator probe, forwarded SSH port.
//!
//! [`Vm::start`] provisions everything inside `<jobs_dir>/<job_id>/` and
//! returns a handle that owns it; [`Vm::destroy`] (or dropping the handle, or
//! any failure during start) kills QEMU and removes the directory, so nothing
//! (process, file, socket, listening port) outlives the job.

pub mod accel;
pub mod argv;
pub mod cpio;
pub mod disk;
pub mod iso9660;
pub mod netns;
pub mod process;
pub mod qmp;
pub mod seed;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::config::{
    Firmware, GuestOs, ImageConfig, ImageFormat, NetworkMode, QemuConfig, SeedKind,
};
use crate::secret::Secret;

/// Which accelerator a VM runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How long QEMU may take to open its QMP socket and answer.
pub const QMP_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`Vm::destroy`] waits for QEMU to exit after QMP `quit` before SIGKILL.
pub const QUIT_GRACE: Duration = Duration::from_millis(500);
/// Lines of console output quoted in errors.
const CONSOLE_TAIL_LINES: usize = 30;
/// Longest unix socket path the kernel accepts (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What a job VM is made of.
#[derive(Debug, Clone, Copy)]
pub struct VmSpec<'a> {
    /// Names the job directory: `[A-Za-z0-9._-]`, not `.` or `..`.
    pub job_id: &'a str,
    pub image: &'a ImageConfig,
    pub qemu: &'a QemuConfig,
    /// Resolved with [`accel::resolve`].
    pub accel: Accel,
    pub jobs_dir: &'a Path,
    /// The job's SSH public key (one OpenSSH line).
    pub authorized_key: &'a str,
    /// Guest SSH host key to pin: (private key in OpenSSH format, public key line).
    pub host_key: Option<(&'a Secret, &'a str)>,
    pub hostname: &'a str,
    /// Ports of services on the host's loopback that the guest may reach,
    /// deliberately, at the gateway address (`10.0.2.2:<port>`): the
    /// built-in cache service. Nothing else on the host is reachable.
    pub host_ports: &'a [u16],
}

/// How a running guest's state is written to a file and read back (QEMU
/// migration capabilities; the saving and the restoring QEMU must use the
/// same).
///
/// Measured on this project's 2-core host under TCG (QEMU 10.0.2, the tiny
/// guest with 256 MiB, about 105 MiB of it in use, state file in the page
/// cache), three restores each, QEMU spawned → state read in: the plain
/// stream took 0.10–0.19 s, `mapped-ram` + `multifd` 0.13–0.21 s; saving
/// took 0.86 s and 0.77 s. The Debian guest (512 MiB, 333 MiB of state):
/// 0.18–0.22 s against 0.14–0.22 s, saving 2.6 s against 2.5 s. No
/// difference that matters: the file is in the page cache, and a few
/// hundred MiB are copied about as fast as QEMU starts. So templates use
/// the plain stream: one thread, no extra capability to keep in step
/// between the two sides, and a dense file (mapped-ram's is sparse, as large as guest RAM: 276 MB
/// apparent for 109 MB of data, 544 MB for 348 MB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migration {
    /// The classic migration stream: pages in the order they are sent,
    /// zero pages as a flag only. One thread reads it back.
    Stream,
    /// `multifd` + `mapped-ram`: every page at a fixed offset of the file
    /// (a sparse file as large as guest RAM), written and read by several
    /// threads.
    MappedRam,
}

impl Migration {
    /// What templates use (see above why).
    pub const DEFAULT: Migration = Migration::Stream;

    /// The capabilities to set on both sides.
    pub fn capabilities(self) -> Vec<(qapi::qmp::MigrationCapability, bool)> {
        use qapi::qmp::MigrationCapability as C;
        let mapped = self == Migration::MappedRam;
        vec![(C::multifd, mapped), (C::mapped_ram, mapped)]
    }
}

/// A guest saved running ([`Vm::save_state`]) with everything a restore
/// must present exactly as the saved QEMU did: the frozen overlay that
/// every clone's overlay is backed by, the seed device and its file, the
/// SMBIOS UUID (fw_cfg and the device list must match), and the migration
/// capabilities.
#[derive(Debug, Clone)]
pub struct SavedGuest {
    /// The migration stream (`file:`).
    pub state: PathBuf,
    /// The template's overlay, never written again (mode 0400).
    pub overlay: PathBuf,
    /// The seed device and the file it showed (a copy kept with the state).
    pub seed: Option<(SeedKind, PathBuf)>,
    pub uuid: String,
    pub migration: Migration,
}

/// What a restored VM is made of: as [`VmSpec`], without what only a boot
/// reads (keys, host name: the restored guest has the saved guest's).
#[derive(Debug, Clone, Copy)]
pub struct RestoreSpec<'a> {
    /// Names the VM's directory (see [`VmSpec::job_id`]).
    pub job_id: &'a str,
    /// Must describe the saved guest's machine (CPU model, vCPUs, memory):
    /// QEMU refuses a state whose machine differs.
    pub image: &'a ImageConfig,
    pub qemu: &'a QemuConfig,
    pub accel: Accel,
    pub jobs_dir: &'a Path,
    pub host_ports: &'a [u16],
    pub saved: &'a SavedGuest,
}

/// How long QEMU may take to read a saved state back, or to write one.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a VM could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("Job id {0:?} cannot name a directory: use [A-Za-z0-9._-]")]
    BadJobId(String),
    #[error("Job directory {0} already exists: another VM owns it, or a crash left it (remove it)")]
    JobDirExists(PathBuf),
    #[error("Could not {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP socket path {0} is too long for a unix socket: use a shorter state directory")]
    SocketPathTooLong(PathBuf),
    #[error("Image uses UEFI but `qemu.uefi_code`/`qemu.uefi_vars` are not set: set both")]
    UefiFirmwareMissing,
    #[error("Could not write the seed")]
    Seed(#[from] seed::SeedError),
    #[error("Could not create the overlay")]
    Disk(#[from] disk::DiskError),
    #[error("Could not start {binary}: check `qemu.system_binary`")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU exited during start ({status}).\nQEMU said: {stderr}\nConsole tail:\n{console}")]
    QemuExited {
        status: String,
        stderr: String,
        console: String,
    },
    #[error("QEMU did not answer on QMP within {0:?}: {1}")]
    QmpTimeout(Duration, String),
    #[error("QMP failed: {0}")]
    Qmp(String),
    #[error("The guest is not running once QEMU started (QEMU state {0})")]
    GuestNotRunning(String),
    #[error(
        "QEMU could not restore the saved guest: {0}. The image's machine (memory, vCPUs, CPU model, devices) or QEMU itself must be what it was when the guest was saved"
    )]
    Restore(String),
    #[error("QEMU could not save the running guest: {0}")]
    Save(String),
    #[error("A {0} guest cannot be restored from a saved state")]
    RestoreUnsupported(&'static str),
    #[error("Could not isolate the guest's network (image network = \"{mode}\")")]
    Network {
        mode: &'static str,
        #[source]
        source: netns::IsolationError,
    },
}

/// Owns the job directory and the QEMU process; its `Drop` tears both down.
struct Owned {
    dir: PathBuf,
    child: Option<Child>,
    /// pasta, the uplink of QEMU's network namespace (isolated networks only).
    pasta: Option<Child>,
}

impl Owned {
    /// Kills the QEMU process group, reaps it, removes the job directory.
    fn teardown(&mut self) -> Result<(), std::io::Error> {
        if let Some(mut child) = self.child.take() {
            // Once reaped, the pid (and group id) may belong to another process:
            // only signal a child that has not been reaped yet.
            if !matches!(child.try_wait(), Ok(Some(_))) {
                process::kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(mut pasta) = self.pasta.take() {
            if !matches!(pasta.try_wait(), Ok(Some(_))) {
                process::kill_group(pasta.id());
                let _ = pasta.kill();
                let _ = pasta.wait();
            }
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the job directory");
        }
    }
}

/// A running job VM. Dropping it kills QEMU and removes everything it used.
pub struct Vm {
    owned: Owned,
    qmp: Option<qmp::Qmp>,
    /// A QMP command was sent and its answer not read yet: set when a
    /// caller's future was dropped mid-command (a `select!`). The connection
    /// is not used again then (see [`Vm::run_state`]).
    qmp_in_flight: bool,
    pid: u32,
    ssh_addr: SocketAddr,
    accel: Accel,
    spawned_at: Instant,
    /// The SMBIOS system UUID QEMU was given.
    uuid: String,
    /// The seed device, and its file (in the VM's directory after a boot,
    /// the saved guest's copy after a restore).
    seed: Option<(SeedKind, PathBuf)>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("dir", &self.owned.dir)
            .field("pid", &self.pid)
            .field("ssh_addr", &self.ssh_addr)
            .field("accel", &self.accel)
            .finish()
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Io { what, source }
}

impl Vm {
    /// Provisions and boots a VM: job directory, seed, overlay, QEMU, QMP, SSH port.
    /// Returns once QEMU runs and the forwarded port is known (the guest is still booting).
    /// On any error everything created so far is removed again.
    pub async fn start(spec: VmSpec<'_>) -> Result<Vm, VmError> {
        Self::launch(spec, None).await
    }

    /// Starts a VM by restoring `spec.saved` (see [`SavedGuest`]) instead
    /// of booting: its directory, an overlay backed by the saved guest's
    /// frozen overlay, QEMU with the saved guest's command line and
    /// `-incoming defer`, the saved state read in over QMP, then the guest
    /// resumed. Returns once the guest runs again. On any error everything
    /// created is removed again; a state QEMU refuses (another machine,
    /// another device list) is [`VmError::Restore`].
    pub async fn restore(spec: RestoreSpec<'_>) -> Result<Vm, VmError> {
        let vm = VmSpec {
            job_id: spec.job_id,
            image: spec.image,
            qemu: spec.qemu,
            accel: spec.accel,
            jobs_dir: spec.jobs_dir,
            authorized_key: "",
            host_key: None,
            hostname: "",
            host_ports: spec.host_ports,
        };
        Self::launch(vm, Some(spec.saved)).await
    }

    async fn launch(spec: VmSpec<'_>, restore: Option<&SavedGuest>) -> Result<Vm, VmError> {
        let t0 = Instant::now();
        if !crate::job::id::is_valid(spec.job_id) {
            return Err(VmError::BadJobId(spec.job_id.to_string()));
        }
        std::fs::create_dir_all(spec.jobs_dir).map_err(io(format!(
            "create the jobs directory {}",
            spec.jobs_dir.display()
        )))?;
        let jobs_dir = std::fs::canonicalize(spec.jobs_dir).map_err(io(format!(
            "resolve the jobs directory {}",
            spec.jobs_dir.display()
        )))?;
        let dir = jobs_dir.join(spec.job_id);
        let qmp_socket = dir.join("qmp.sock");
        if qmp_socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(VmError::SocketPathTooLong(qmp_socket));
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(VmError::JobDirExists(dir));
            }
            Err(e) => return Err(io(format!("create {}", dir.display()))(e)),
        }
        // From here on, `owned` removes the directory (and QEMU) on every exit path.
        let mut owned = Owned {
            dir: dir.clone(),
            child: None,
            pasta: None,
        };
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(format!("restrict {}", dir.display())))?;
        }

        let mode = spec.image.network;
        let net_err = |source| VmError::Network {
            mode: mode.as_str(),
            source,
        };
        // Isolated networks: pasta's path, and whether DNS needs forwarding.
        let isolated = match mode {
            NetworkMode::Unrestricted => None,
            NetworkMode::Outbound | NetworkMode::None => {
                let pasta = netns::find_pasta()
                    .ok_or_else(|| net_err(netns::IsolationError::NoPasta(mode.as_str())))?;
                Some(pasta)
            }
        };
        let seed = match restore {
            // The same device with the same file the saved guest read at
            // its boot (a restored guest never reads it again).
            Some(saved) => saved.seed.clone(),
            None => Some((
                spec.image.seed,
                seed::write_seed(
                    spec.image.seed,
                    &dir,
                    &seed::SeedData {
                        instance_id: &format!(
                            "solstice-{}-{:08x}",
                            spec.job_id,
                            rand::random::<u32>()
                        ),
                        hostname: spec.hostname,
                        user: &spec.image.ssh_user,
                        authorized_key: spec.authorized_key,
                        host_key: spec.host_key,
                        registry_mirror: spec.image.registry_mirror.as_deref(),
                    },
                )?,
            )),
        };
        let overlay = dir.join("overlay.qcow2");
        match restore {
            // The clone's writes go to its own overlay; the saved guest's
            // disk stays as it was at the save, under every clone.
            Some(saved) => {
                disk::create_overlay(
                    &spec.qemu.img_binary,
                    &saved.overlay,
                    ImageFormat::Qcow2,
                    &overlay,
                    None,
                )
                .await?
            }
            None => {
                disk::create_overlay(
                    &spec.qemu.img_binary,
                    &spec.image.path,
                    spec.image.format,
                    &overlay,
                    spec.image.disk_size_gib,
                )
                .await?
            }
        }
        let uefi = match spec.image.firmware {
            Firmware::Bios => None,
            // The variable store is per VM and not kept with a saved guest.
            Firmware::Uefi if restore.is_some() => return Err(VmError::RestoreUnsupported("UEFI")),
            Firmware::Uefi => {
                let (Some(code), Some(vars)) = (&spec.qemu.uefi_code, &spec.qemu.uefi_vars) else {
                    return Err(VmError::UefiFirmwareMissing);
                };
                let copy = dir.join("uefi-vars.fd");
                std::fs::copy(vars, &copy).map_err(io(format!(
                    "copy the UEFI variable store {}",
                    vars.display()
                )))?;
                Some((code.clone(), copy))
            }
        };
        let uuid = match restore {
            Some(saved) => saved.uuid.clone(),
            None => random_uuid(),
        };
        let plan = argv::VmPlan {
            name: format!("solstice-{}", spec.job_id),
            uuid: uuid.clone(),
            accel: spec.accel,
            cpu: argv::cpu_model(spec.image, spec.accel).to_owned(),
            vcpus: spec.image.vcpus,
            memory_mib: spec.image.memory_mib,
            overlay,
            seed: seed.clone(),
            uefi,
            console: dir.join("console.log"),
            qmp_socket: qmp_socket.clone(),
            paused: isolated.is_some(),
            vmgenid: spec.image.os == GuestOs::Linux,
            incoming: restore.is_some(),
        };
        let stderr_path = dir.join("qemu.stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(io(format!("create {}", stderr_path.display())))?;
        let mut cmd = std::process::Command::new(&spec.qemu.system_binary);
        cmd.args(argv::qemu_args(&plan))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut dns_forward = false;
        let mut policy_for_ns = None;
        if isolated.is_some() {
            let host_addrs = netns::host_addresses().map_err(|e| {
                net_err(netns::IsolationError::Io(
                    "list the host's interface addresses".into(),
                    e,
                ))
            })?;
            let policy = netns::Policy::new(
                mode,
                &spec.image.network_deny,
                &spec.image.network_allow,
                &host_addrs,
            );
            // slirp sends the guest's queries to the host's first IPv4
            // resolver from inside QEMU's namespace: when the policy closes
            // it (loopback, link-local, a host address, a denied range) or
            // there is none, give QEMU a resolv.conf naming pasta's DNS
            // forward instead.
            let resolver = std::fs::read_to_string("/etc/resolv.conf")
                .ok()
                .and_then(|t| netns::first_ipv4_nameserver(&t));
            let resolv = if netns::needs_dns_forward(resolver, &policy) {
                let path = dir.join("resolv.conf");
                std::fs::write(&path, format!("nameserver {}\n", netns::DNS_FORWARD_ADDR))
                    .map_err(io(format!("write {}", path.display())))?;
                dns_forward = true;
                Some(path)
            } else {
                None
            };
            netns::isolate(&mut cmd, resolv.as_deref());
            policy_for_ns = Some(policy);
        }
        let t_spawn = Instant::now();
        let child = process::spawn_guarded(cmd).await.map_err(|source| {
            // A failure in the namespace set-up surfaces as the spawn's error;
            // the binary's absence is told apart by its own check.
            if isolated.is_some() && source.kind() != std::io::ErrorKind::NotFound {
                net_err(netns::IsolationError::Namespace(source))
            } else {
                VmError::Spawn {
                    binary: spec.qemu.system_binary.clone(),
                    source,
                }
            }
        })?;
        let pid = child.id();
        owned.child = Some(child);

        let mut conn = wait_for_qmp(&mut owned, &qmp_socket, &stderr_path).await?;
        let mut port = qmp::forwarded_ssh_port(&mut conn)
            .await
            .map_err(VmError::Qmp)?;
        if let Some(pasta) = &isolated {
            port = attach_pasta(&mut owned, pasta, pid, port, spec.host_ports, dns_forward)
                .await
                .map_err(net_err)?;
            if let Some(policy) = policy_for_ns {
                tokio::task::spawn_blocking(move || netns::apply_policy(pid, &policy))
                    .await
                    .map_err(|e| VmError::Qmp(format!("rule helper task: {e}")))?
                    .map_err(net_err)?;
            }
        }
        // The network is in place (pasta attached, rules applied) before
        // the guest runs: only then is the saved state read in.
        if let Some(saved) = restore {
            qmp::set_migration_capabilities(&mut conn, &saved.migration.capabilities())
                .await
                .map_err(VmError::Restore)?;
            let uri = format!("file:{}", saved.state.display());
            qmp::migrate_incoming(&mut conn, &uri)
                .await
                .map_err(VmError::Restore)?;
            wait_for_migration(&mut owned, &mut conn, &stderr_path)
                .await
                .map_err(VmError::Restore)?;
        }
        let (mut running, mut state) = qmp::status(&mut conn).await.map_err(VmError::Qmp)?;
        // Paused: started with `-S` (isolated networks), or restored from a
        // guest that was stopped for its save.
        if !running && (isolated.is_some() || restore.is_some()) {
            qmp::cont(&mut conn).await.map_err(VmError::Qmp)?;
            (running, state) = qmp::status(&mut conn).await.map_err(VmError::Qmp)?;
        }
        if !running {
            return Err(VmError::GuestNotRunning(state));
        }
        tracing::info!(
            job = spec.job_id,
            pid,
            port,
            accel = ?spec.accel,
            restored = restore.is_some(),
            provision_ms = t0.elapsed().as_millis() as u64,
            qemu_ready_ms = t_spawn.elapsed().as_millis() as u64,
            "VM started"
        );
        Ok(Vm {
            owned,
            qmp: Some(conn),
            qmp_in_flight: false,
            pid,
            ssh_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            accel: spec.accel,
            spawned_at: t_spawn,
            uuid,
            seed,
        })
    }

    /// Connects to QMP again when the earlier connection was given up (a
    /// command that did not complete in time, see [`Vm::run_state`]):
    /// QEMU's monitor takes a new client once the old one is gone. A busy
    /// host can make `query-status` miss its second while the guest boots,
    /// and a template must still be saved.
    async fn reconnect_qmp(&mut self) -> Result<(), VmError> {
        if self.qmp_in_flight {
            self.qmp = None;
            self.qmp_in_flight = false;
        }
        if self.qmp.is_none() {
            let socket = self.owned.dir.join("qmp.sock");
            // The answer to the abandoned command may still be queued for
            // the monitor's client: the first new connection can read it
            // where the greeting belongs. Connecting again then gets a
            // clean greeting.
            let mut last = String::new();
            for _ in 0..3 {
                match tokio::time::timeout(Duration::from_secs(5), qmp::connect(&socket)).await {
                    Ok(Ok(conn)) => {
                        tracing::debug!(dir = %self.owned.dir.display(), "connected to QMP again");
                        self.qmp = Some(conn);
                        return Ok(());
                    }
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "no greeting within 5 s".into(),
                }
            }
            return Err(VmError::Qmp(format!(
                "the QMP connection was given up, and connecting again failed: {last}"
            )));
        }
        Ok(())
    }

    /// Saves the running guest into `path` (which must not exist): QMP
    /// `stop`, the capabilities of `migration`, `migrate` to `file:`, and
    /// waits until QEMU reports the migration completed. The guest stays
    /// stopped and its disk images are released by QEMU: the VM is only
    /// good for [`Vm::destroy`] afterwards. Returns the state file's size.
    pub async fn save_state(&mut self, path: &Path, migration: Migration) -> Result<u64, VmError> {
        if path.exists() {
            return Err(VmError::Save(format!("{} exists already", path.display())));
        }
        self.reconnect_qmp().await?;
        let mut conn = self
            .qmp
            .take()
            .ok_or_else(|| VmError::Qmp("the QMP connection was given up".into()))?;
        let stderr_path = self.owned.dir.join("qemu.stderr");
        let t0 = Instant::now();
        let saved = async {
            // Stopped first: one pass over guest RAM, no dirty pages
            // chased, and a state that is consistent as of one instant.
            qmp::stop(&mut conn).await?;
            qmp::set_migration_capabilities(&mut conn, &migration.capabilities()).await?;
            qmp::migrate(&mut conn, &format!("file:{}", path.display())).await?;
            wait_for_migration(&mut self.owned, &mut conn, &stderr_path).await
        }
        .await;
        // Only a connection whose commands all completed is kept (see
        // `run_state`): an error may have left one pending.
        if saved.is_ok() {
            self.qmp = Some(conn);
        }
        saved.map_err(VmError::Save)?;
        let size = std::fs::metadata(path)
            .map_err(io(format!("read the size of {}", path.display())))?
            .len();
        tracing::info!(
            dir = %self.owned.dir.display(),
            save_ms = t0.elapsed().as_millis() as u64,
            bytes = size,
            "guest state saved"
        );
        Ok(size)
    }

    /// The SMBIOS system UUID the VM was started with.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The seed device and its file.
    pub fn seed(&self) -> Option<&(SeedKind, PathBuf)> {
        self.seed.as_ref()
    }

    /// The VM's own qcow2 overlay (its only writable disk).
    pub fn overlay_path(&self) -> PathBuf {
        self.owned.dir.join("overlay.qcow2")
    }

    /// The GUID of the VM's `vmgenid` device (`query-vm-generation-id`);
    /// an error for a VM without one.
    pub async fn generation_id(&mut self) -> Result<String, VmError> {
        self.reconnect_qmp().await?;
        let conn = self
            .qmp
            .as_mut()
            .ok_or_else(|| VmError::Qmp("the QMP connection was given up".into()))?;
        self.qmp_in_flight = true;
        let answer =
            tokio::time::timeout(Duration::from_secs(5), qmp::vm_generation_id(conn)).await;
        self.qmp_in_flight = false;
        match answer {
            Ok(r) => r.map_err(VmError::Qmp),
            Err(_) => {
                self.qmp = None;
                Err(VmError::Qmp(
                    "QEMU did not answer query-vm-generation-id within 5 s".into(),
                ))
            }
        }
    }

    /// The host side of the guest's SSH port (always on 127.0.0.1).
    pub fn ssh_addr(&self) -> SocketAddr {
        self.ssh_addr
    }

    /// Moves the VM's directory to `dest` (on the same file system; `dest`
    /// must not exist): a warm guest becomes a job's. QEMU keeps its open
    /// files and sockets; its command line still names the old path (which
    /// is how start-up clean-up finds it after a crash).
    pub fn move_to(&mut self, dest: &Path) -> Result<(), VmError> {
        if dest.exists() {
            return Err(VmError::JobDirExists(dest.to_path_buf()));
        }
        std::fs::rename(&self.owned.dir, dest).map_err(io(format!(
            "move {} to {}",
            self.owned.dir.display(),
            dest.display()
        )))?;
        self.owned.dir = dest.to_path_buf();
        Ok(())
    }

    /// The job directory.
    pub fn dir(&self) -> &Path {
        &self.owned.dir
    }

    /// QEMU's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// When the QEMU process was spawned (the start of the guest's own boot).
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// The serial console log.
    pub fn console_path(&self) -> PathBuf {
        self.owned.dir.join("console.log")
    }

    /// The last `lines` lines of the serial console (lossy UTF-8).
    pub fn console_tail(&self, lines: usize) -> String {
        tail_file(&self.console_path(), lines)
    }

    /// Bytes the guest has written to its serial console so far.
    pub fn console_len(&self) -> u64 {
        std::fs::metadata(self.console_path()).map_or(0, |m| m.len())
    }

    /// The last line of the serial console with printable text, cleaned of
    /// escape sequences and control characters, at most 160 characters.
    pub fn last_console_line(&self) -> Option<String> {
        last_printable_line(&read_tail(&self.console_path(), 4096))
    }

    /// The console's whole lines from byte `from` on (at most 64 KiB of
    /// them, cleaned of escape sequences), and the offset after them.
    pub fn console_lines_since(&self, from: u64) -> (String, u64) {
        use std::io::{Read, Seek, SeekFrom};
        let mut buf = Vec::new();
        if let Ok(mut f) = std::fs::File::open(self.console_path())
            && f.seek(SeekFrom::Start(from)).is_ok()
        {
            let _ = f.take(64 << 10).read_to_end(&mut buf);
        }
        let whole = match buf.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            // One line longer than the window: judge it as it is.
            None if buf.len() == 64 << 10 => buf.len(),
            None => 0,
        };
        (clean_console_text(&buf[..whole]), from + whole as u64)
    }

    /// The first console line in which the guest's kernel reports stalled
    /// CPUs or a panic (see [`accel::console_alarm`]), reading the whole log.
    pub fn console_alarm(&self) -> Option<String> {
        let mut from = 0;
        loop {
            let (text, upto) = self.console_lines_since(from);
            if let Some(line) = accel::console_alarm(&text) {
                return Some(line);
            }
            if upto == from {
                return None;
            }
            from = upto;
        }
    }

    /// Copies the serial console log to `dest` (kept after the VM is gone).
    pub fn keep_console(&self, dest: &Path) -> std::io::Result<()> {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(self.console_path(), dest).map(|_| ())
    }

    /// When QEMU has exited (it is reaped then): its exit status and the last
    /// lines it wrote on stderr.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.owned.child.as_mut()?.try_wait().ok()??;
        let stderr =
            std::fs::read_to_string(self.owned.dir.join("qemu.stderr")).unwrap_or_default();
        let said: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let said = said[said.len().saturating_sub(3)..].join(" / ");
        Some(if said.is_empty() {
            status.to_string()
        } else {
            format!("{status}: {said}")
        })
    }

    /// QEMU's run state (`running`, `internal-error`, `guest-panicked`, …),
    /// or `None` when QMP does not answer within a second.
    ///
    /// The QMP connection is dropped when a command does not complete: QEMU
    /// without out-of-band support answers every command under the same id,
    /// and the `qapi` crate panics on the next command while an abandoned
    /// one is still pending. [`Vm::destroy`] then kills QEMU instead.
    ///
    /// Cancellation-safe: a caller that drops this future mid-command (a
    /// `select!`) leaves the connection marked, and it is not used again.
    pub async fn run_state(&mut self) -> Option<String> {
        if self.qmp_in_flight {
            self.qmp = None;
        }
        let conn = self.qmp.as_mut()?;
        self.qmp_in_flight = true;
        let answer = tokio::time::timeout(Duration::from_secs(1), qmp::status(conn)).await;
        self.qmp_in_flight = false;
        match answer {
            Ok(Ok((_, state))) => Some(state),
            Ok(Err(_)) | Err(_) => {
                self.qmp = None;
                None
            }
        }
    }

    /// The PCI functions QEMU placed (`query-pci`), to check the slot
    /// layout of [`argv::Slot`] on a running VM.
    pub async fn pci_functions(&mut self) -> Result<Vec<qmp::PciFunction>, VmError> {
        if self.qmp_in_flight {
            self.qmp = None;
        }
        let conn = self
            .qmp
            .as_mut()
            .ok_or_else(|| VmError::Qmp("the QMP connection was given up".into()))?;
        self.qmp_in_flight = true;
        let answer = tokio::time::timeout(Duration::from_secs(5), qmp::pci_functions(conn)).await;
        self.qmp_in_flight = false;
        match answer {
            Ok(r) => r.map_err(VmError::Qmp),
            Err(_) => {
                self.qmp = None;
                Err(VmError::Qmp(
                    "QEMU did not answer query-pci within 5 s".into(),
                ))
            }
        }
    }

    /// Whether QEMU has exited (reaps it if so).
    pub async fn has_exited(&mut self) -> bool {
        match self.owned.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Stops the VM (QMP `quit`, then SIGKILL after [`QUIT_GRACE`]) and removes
    /// the job directory.
    pub async fn destroy(mut self) -> Result<(), VmError> {
        let t0 = Instant::now();
        // A connection with a command still in flight cannot take another
        // (see `run_state`): QEMU is killed instead.
        if let Some(mut conn) = self.qmp.take().filter(|_| !self.qmp_in_flight) {
            let quit = tokio::time::timeout(QUIT_GRACE, qmp::quit(&mut conn)).await;
            drop(conn);
            if matches!(quit, Ok(Ok(()))) {
                let deadline = Instant::now() + QUIT_GRACE;
                while Instant::now() < deadline && !self.has_exited().await {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        let dir = self.owned.dir.clone();
        let result = self
            .owned
            .teardown()
            .map_err(io(format!("remove {}", dir.display())));
        tracing::info!(dir = %dir.display(), destroy_ms = t0.elapsed().as_millis() as u64, "VM destroyed");
        result
    }
}

/// How long pasta may take to set up QEMU's namespace.
const PASTA_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts pasta as the uplink of QEMU's (process `pid`'s) network namespace,
/// forwarding a free port of the host's 127.0.0.1 to slirp's SSH forward at
/// `ns_port` inside; returns that host port once pasta is ready. A lost race
/// for the port is retried with another.
async fn attach_pasta(
    owned: &mut Owned,
    pasta: &Path,
    pid: u32,
    ns_port: u16,
    host_ports: &[u16],
    dns_forward: bool,
) -> Result<u16, netns::IsolationError> {
    let pidfile = owned.dir.join("pasta.pid");
    let stderr_path = owned.dir.join("pasta.stderr");
    let mut last = String::new();
    for _ in 0..3 {
        let host_port = netns::free_loopback_port()
            .map_err(|e| netns::IsolationError::Io("find a free port on 127.0.0.1".into(), e))?;
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| {
            netns::IsolationError::Io(format!("create {}", stderr_path.display()), e)
        })?;
        let _ = std::fs::remove_file(&pidfile);
        let mut cmd = std::process::Command::new(pasta);
        cmd.args(netns::pasta_args(
            pid,
            host_port,
            ns_port,
            host_ports,
            &pidfile,
            dns_forward,
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
        let child = process::spawn_guarded(cmd)
            .await
            .map_err(|e| netns::IsolationError::Io(format!("start {}", pasta.display()), e))?;
        owned.pasta = Some(child);
        let deadline = Instant::now() + PASTA_READY_TIMEOUT;
        loop {
            let exited = owned
                .pasta
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                owned.pasta = None;
                let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                let said: Vec<&str> = said.lines().filter(|l| !l.contains("syslog")).collect();
                last = format!("pasta exited ({status}): {}", said.join(" / "));
                if last.contains("tun") {
                    return Err(netns::IsolationError::Tun(std::io::Error::other(last)));
                }
                break;
            }
            // pasta writes its pid file once its set-up is done.
            if std::fs::metadata(&pidfile).is_ok_and(|m| m.len() > 0) {
                return Ok(host_port);
            }
            if Instant::now() >= deadline {
                return Err(netns::IsolationError::Pasta(format!(
                    "not ready within {PASTA_READY_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !last.contains("ddress in use") {
            break;
        }
    }
    Err(netns::IsolationError::Pasta(last))
}

/// Polls `query-migrate` until the migration (either direction) completed;
/// an error says why it failed, with what QEMU wrote on stderr.
async fn wait_for_migration(
    owned: &mut Owned,
    conn: &mut qmp::Qmp,
    stderr_path: &Path,
) -> Result<(), String> {
    use qapi::qmp::MigrationStatus as S;
    let said = || {
        let text = std::fs::read_to_string(stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines[lines.len().saturating_sub(3)..].join(" / ")
    };
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    loop {
        if let Some(child) = owned.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(format!("QEMU exited ({status}): {}", said()));
        }
        let (status, error) =
            match tokio::time::timeout(Duration::from_secs(5), qmp::migration(conn)).await {
                Ok(r) => r?,
                Err(_) => return Err("QEMU did not answer query-migrate within 5 s".into()),
            };
        match status {
            Some(S::completed) => return Ok(()),
            Some(S::failed | S::cancelled | S::cancelling) => {
                // QEMU's summary ("load of migration failed: Invalid
                // argument") and, on stderr, the cause ("Length mismatch:
                // pc.ram: 0x10000000 in != 0x14000000").
                let why: Vec<String> = [error.unwrap_or_default(), said()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect();
                return Err(if why.is_empty() {
                    "the migration failed".into()
                } else {
                    why.join("; QEMU said: ")
                });
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not done within {} s (status {status:?})",
                MIGRATION_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for_qmp(
    owned: &mut Owned,
    socket: &Path,
    stderr_path: &Path,
) -> Result<qmp::Qmp, VmError> {
    let deadline = Instant::now() + QMP_READY_TIMEOUT;
    let mut last_err = String::from("socket not created yet");
    loop {
        if let Some(child) = owned.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(VmError::QemuExited {
                    status: status.to_string(),
                    stderr: std::fs::read_to_string(stderr_path)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                    console: tail_file(&owned.dir.join("console.log"), CONSOLE_TAIL_LINES),
                });
            }
        }
        if socket.exists() {
            match tokio::time::timeout(Duration::from_secs(5), qmp::connect(socket)).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => last_err = e.to_string(),
                Err(_) => last_err = "QMP greeting timed out".into(),
            }
        }
        if Instant::now() >= deadline {
            return Err(VmError::QmpTimeout(QMP_READY_TIMEOUT, last_err));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The last `max` bytes of a file (empty when it cannot be read).
fn read_tail(path: &Path, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    buf
}

/// Removes ANSI escape sequences and control characters from console text.
pub fn clean_console_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ params final-byte; other escapes: ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for n in chars.by_ref() {
                        if ('@'..='~').contains(&n) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\n' => out.push('\n'),
            '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn last_printable_line(bytes: &[u8]) -> Option<String> {
    let text = clean_console_text(bytes);
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let mut line: String = line.chars().take(160).collect();
    if line.chars().count() == 160 {
        line.push('…');
    }
    Some(line)
}

fn tail_file(path: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_cleaned() {
        let raw =
            b"[  OK  ] Started \x1b[0;1;39mssh.service\x1b[0m.\r\n\x1b[?25lrun\x07ning\r\n\r\n";
        assert_eq!(last_printable_line(raw).as_deref(), Some("running"));
        assert_eq!(
            clean_console_text(raw).lines().next(),
            Some("[  OK  ] Started ssh.service.")
        );
        assert_eq!(last_printable_line(b"\r\n  \n"), None);
        let long = vec![b'x'; 500];
        assert_eq!(
            last_printable_line(&long).map(|l| l.chars().count()),
            Some(161)
        );
    }

    #[test]
    fn uuids_are_version_4() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}

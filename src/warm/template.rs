//! Snapshot templates: a guest booted once and saved running; clones start
//! by restoring it (see the module docs of [`crate::warm`]).
//!
//! A template lives in `<dir_root>/t-<image>-<8 hex>/`:
//! - `state`: the guest's running state (QEMU migration to `file:`);
//! - `overlay.qcow2`: the guest's disk as of the save, the backing file of
//!   every clone's own overlay, never written again;
//! - `seed.iso`: the seed the guest booted with (clones present the same
//!   device with the same file: QEMU checks the device list, and the guest
//!   may look at the medium again).
//!
//! All three are mode 0400. The guest is saved before any job secret
//! exists: it holds only the template's client *public* key (the private
//! half is in this process's memory only) and the template's host key,
//! which every clone replaces in its re-key step ([`super::rekey`]) before
//! anything else logs in. A job in a clone can read the template's host
//! key from its disk; that key is never trusted again after the re-key.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rekey::{self, RekeyPlan, RekeyReport};
use crate::config::{Config, Firmware, GuestOs, ImageConfig, QemuConfig, SeedKind};
use crate::events::EventSink;
use crate::guest::{GuestSession, OutputChunk};
use crate::job::run::{BootRequest, ReadyGuest, RunError, boot_ready};
use crate::ssh::{self, ClientKey, HostKey, HostKeyCheck, ReadyOptions, SshError, SshTarget};
use crate::vm::{Accel, Migration, RestoreSpec, SavedGuest, Vm, VmError};

/// The VM directory of the guest being saved, inside the template's.
const BOOT_VM_ID: &str = "template";
/// How long a restored clone's SSH server may take to answer the template key.
const CLONE_SSH_DEADLINE: Duration = Duration::from_secs(30);
/// How long the clone's SSH server may take to come back with its new host key.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// Why a template could not be made or restored.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("Image {image} cannot be saved and restored: {why}")]
    Unsupported { image: String, why: &'static str },
    #[error("Could not boot the template guest of image {image}")]
    Boot {
        image: String,
        #[source]
        source: Box<RunError>,
    },
    #[error("Could not bring the template guest of image {image} to its saved point: {why}")]
    Settle { image: String, why: String },
    #[error("Could not save the template guest of image {image}")]
    Save {
        image: String,
        #[source]
        source: VmError,
    },
    #[error("Could not {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// QEMU refused the saved state (another memory size, device list or
    /// QEMU): the caller boots cold instead and rebuilds the template.
    #[error("The saved guest of image {image} cannot be restored")]
    Rejected {
        image: String,
        #[source]
        source: VmError,
    },
    #[error("Could not start a clone of the saved guest of image {image}")]
    Start {
        image: String,
        #[source]
        source: VmError,
    },
    #[error("The restored clone of image {image} did not accept SSH")]
    Ssh {
        image: String,
        #[source]
        source: SshError,
    },
    #[error("Could not re-key the restored clone of image {image}: {why}")]
    Rekey { image: String, why: String },
    #[error("Cancelled")]
    Cancelled,
}

/// A restored, re-keyed clone ([`Template::restore_as`]).
#[derive(Debug)]
pub struct Restored {
    pub guest: ReadyGuest,
    /// What the re-key script reported.
    pub report: RekeyReport,
    /// Call → QEMU runs the restored guest.
    pub qemu: Duration,
    /// → logged in with the template key.
    pub login: Duration,
    /// → re-key script done.
    pub rekey: Duration,
    /// → logged in with the new key (the guest is ready).
    pub relogin: Duration,
}

/// A saved running guest of one image (see the module docs). Its files are
/// removed when it is dropped (clones that run keep their open files).
#[derive(Debug)]
pub struct Template {
    dir: PathBuf,
    key: String,
    image: ImageConfig,
    qemu: QemuConfig,
    accel: Accel,
    host_ports: Vec<u16>,
    saved: SavedGuest,
    /// Logs in to a fresh clone (memory only; the guest has its public half).
    template_key: ClientKey,
    /// The saved guest's host key (public line), pinned until the re-key.
    host_public: String,
    state_bytes: u64,
    build_time: Duration,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TemplateError {
    let what = what.into();
    move |source| TemplateError::Io { what, source }
}

/// Removes a directory on drop unless disarmed.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `[A-Za-z0-9._-]` of `name`, at most `max` characters.
fn dir_safe(name: &str, max: usize) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect()
}

/// The host name of a clone in `vm_id`'s directory: `solstice-` and at most
/// 12 letters and digits of the id, its last 8 always among them (ids end
/// in random hex, so clones of one image get different names).
pub fn clone_hostname(vm_id: &str) -> String {
    let alnum: Vec<char> = vm_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let short: String = if alnum.len() <= 12 {
        alnum.iter().collect()
    } else {
        alnum[..4].iter().chain(&alnum[alnum.len() - 8..]).collect()
    };
    format!("solstice-{short}")
}

/// Why `image` cannot be a template, if it cannot.
fn unsupported(image: &ImageConfig) -> Option<&'static str> {
    if image.os != GuestOs::Linux {
        Some("only Linux guests reseed their random numbers on restore (vmgenid)")
    } else if image.seed != SeedKind::NoCloud {
        Some("only NoCloud images get a pinned host key at boot")
    } else if image.firmware != Firmware::Bios {
        Some("a UEFI guest's variable store is not saved with it")
    } else {
        None
    }
}

/// The command that brings a booted guest to the point it is saved at,
/// before any job secret exists: cloud-init done (where it exists), no
/// systemd random seed on disk (every clone would credit the same one at
/// its next boot), file systems synced.
pub fn settle_command(user: &str) -> String {
    let script = "if command -v cloud-init >/dev/null 2>&1; then \
         cloud-init status --wait >/dev/null 2>&1; echo \"solstice-settle cloud-init $?\"; fi; \
         rm -f /var/lib/systemd/random-seed || exit 1; sync";
    let sudo = if user == "root" { "" } else { "sudo -n " };
    format!("{sudo}sh -c {}", crate::guest::shell_quote(script))
}

impl Template {
    /// Boots a guest of `image` under `accel`, brings it to the saved point
    /// and saves it into `<dir_root>/t-<image>-<8 hex>/`. `host_ports` as
    /// for job VMs (the clones reach the same ports). `key` names what the
    /// template was made from ([`Template::key`]). Boot progress goes to
    /// `sink`.
    #[allow(clippy::too_many_arguments)]
    pub async fn build(
        config: &Config,
        image: &ImageConfig,
        accel: Accel,
        dir_root: &Path,
        host_ports: &[u16],
        key: String,
        sink: &dyn EventSink,
        cancel: &CancellationToken,
    ) -> Result<Template, TemplateError> {
        let t0 = Instant::now();
        let name_of = || image.name.clone();
        if let Some(why) = unsupported(image) {
            return Err(TemplateError::Unsupported {
                image: name_of(),
                why,
            });
        }
        std::fs::create_dir_all(dir_root).map_err(io(format!("create {}", dir_root.display())))?;
        let dir_root = std::fs::canonicalize(dir_root)
            .map_err(io(format!("resolve {}", dir_root.display())))?;
        let dir = dir_root.join(format!(
            "t-{}-{:08x}",
            dir_safe(&image.name, 40),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&dir).map_err(io(format!("create {}", dir.display())))?;
        let mut guard = DirGuard(Some(dir.clone()));
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(format!("restrict {}", dir.display())))?;
        }
        let template_key = ClientKey::generate();
        let guest = boot_ready(
            BootRequest {
                config,
                image,
                accel,
                dir_root: &dir,
                vm_id: BOOT_VM_ID,
                client_key: template_key.clone(),
                host_ports,
            },
            sink,
            cancel,
        )
        .await
        .map_err(|source| match source {
            RunError::Cancelled => TemplateError::Cancelled,
            source => TemplateError::Boot {
                image: name_of(),
                source: Box::new(source),
            },
        })?;
        let ReadyGuest {
            mut vm,
            target,
            session,
            ..
        } = guest;
        let host_public = target.host_key().ok_or_else(|| TemplateError::Settle {
            image: name_of(),
            why: "no host key was pinned at boot".into(),
        })?;

        let settled = tokio::select! {
            r = settle(&session, &image.ssh_user, image.boot_timeout) => r,
            _ = cancel.cancelled() => Err(String::new()),
        };
        // Nothing stays logged in across the save: a clone's first
        // connection is a new one, with the template key.
        let _ = tokio::time::timeout(Duration::from_secs(2), session.close()).await;
        if let Err(why) = settled {
            let _ = vm.destroy().await;
            return Err(if cancel.is_cancelled() {
                TemplateError::Cancelled
            } else {
                TemplateError::Settle {
                    image: name_of(),
                    why,
                }
            });
        }

        let state = dir.join("state");
        let migration = Migration::DEFAULT;
        let saved = tokio::select! {
            r = vm.save_state(&state, migration) => Some(r),
            _ = cancel.cancelled() => None,
        };
        let state_bytes = match saved {
            Some(Ok(n)) => n,
            Some(Err(source)) => {
                let _ = vm.destroy().await;
                return Err(TemplateError::Save {
                    image: name_of(),
                    source,
                });
            }
            None => {
                let _ = vm.destroy().await;
                return Err(TemplateError::Cancelled);
            }
        };
        // QEMU flushed and released its images when the migration
        // completed: the files move out of the VM's directory (which goes
        // with the VM) into the template's.
        let overlay = dir.join("overlay.qcow2");
        let moved = (|| {
            std::fs::rename(vm.overlay_path(), &overlay)
                .map_err(io(format!("move the overlay into {}", dir.display())))?;
            let seed = match vm.seed() {
                Some((kind, path)) => {
                    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("img");
                    let dest = dir.join(format!("seed.{ext}"));
                    std::fs::rename(path, &dest)
                        .map_err(io(format!("move the seed into {}", dir.display())))?;
                    Some((*kind, dest))
                }
                None => None,
            };
            Ok::<_, TemplateError>(seed)
        })();
        let uuid = vm.uuid().to_string();
        let _ = vm.destroy().await;
        let seed = moved?;
        {
            use std::os::unix::fs::PermissionsExt;
            let ro = || std::fs::Permissions::from_mode(0o400);
            for f in [Some(&state), Some(&overlay), seed.as_ref().map(|(_, p)| p)]
                .into_iter()
                .flatten()
            {
                std::fs::set_permissions(f, ro())
                    .map_err(io(format!("make {} read-only", f.display())))?;
            }
        }
        guard.0 = None;
        let build_time = t0.elapsed();
        tracing::info!(
            image = %image.name,
            dir = %dir.display(),
            state_bytes,
            build_ms = build_time.as_millis() as u64,
            "snapshot template saved"
        );
        Ok(Template {
            dir,
            key,
            image: image.clone(),
            qemu: config.qemu.clone(),
            accel,
            host_ports: host_ports.to_vec(),
            saved: SavedGuest {
                state,
                overlay,
                seed,
                uuid,
                migration,
            },
            template_key,
            host_public,
            state_bytes,
            build_time,
        })
    }

    /// Starts a new clone in `<dir_root>/<vm_id>/` by restoring the saved
    /// state, re-keys it (its own fresh client key, host key, randomness,
    /// machine id, host name and clock) and returns it SSH-ready, logged in
    /// with the new key and pinning the new host key.
    pub async fn restore(
        &self,
        dir_root: &Path,
        vm_id: &str,
        cancel: &CancellationToken,
    ) -> Result<ReadyGuest, TemplateError> {
        self.restore_as(&self.image, dir_root, vm_id, cancel)
            .await
            .map(|r| r.guest)
    }

    /// [`Template::restore`] with the machine `image` describes (the
    /// image's configuration now; QEMU refuses a state saved with another
    /// memory size or device list: [`TemplateError::Rejected`]), and what
    /// the re-key step reported.
    pub async fn restore_as(
        &self,
        image: &ImageConfig,
        dir_root: &Path,
        vm_id: &str,
        cancel: &CancellationToken,
    ) -> Result<Restored, TemplateError> {
        let t0 = Instant::now();
        let name_of = || image.name.clone();
        let started = tokio::select! {
            r = Vm::restore(RestoreSpec {
                job_id: vm_id,
                image,
                qemu: &self.qemu,
                accel: self.accel,
                jobs_dir: dir_root,
                host_ports: &self.host_ports,
                saved: &self.saved,
            }) => r,
            _ = cancel.cancelled() => return Err(TemplateError::Cancelled),
        };
        let vm = started.map_err(|source| match source {
            VmError::Restore(_) => TemplateError::Rejected {
                image: name_of(),
                source,
            },
            source => TemplateError::Start {
                image: name_of(),
                source,
            },
        })?;
        let addr = vm.ssh_addr();
        let t_qemu = t0.elapsed();
        let ssh_err = |source| match source {
            SshError::Cancelled { .. } => TemplateError::Cancelled,
            source => TemplateError::Ssh {
                image: name_of(),
                source,
            },
        };
        let old = SshTarget::new(
            addr,
            image.ssh_user.clone(),
            self.template_key.clone(),
            HostKeyCheck::Pinned(self.host_public.clone()),
        )
        .map_err(ssh_err)?;
        let quick = |deadline| ReadyOptions {
            deadline,
            probes: 1,
            poll_interval: Duration::from_millis(50),
            ..ReadyOptions::default()
        };
        let session = ssh::wait_ready(&old, &quick(CLONE_SSH_DEADLINE), cancel, &|_| {})
            .await
            .map_err(ssh_err)?;
        let t_login = t0.elapsed();

        let client = ClientKey::generate();
        let host = HostKey::generate();
        let plan = RekeyPlan::new(
            &image.ssh_user,
            &client.public_openssh(),
            &self.template_key.public_openssh(),
            &host.public_openssh(),
            &clone_hostname(vm_id),
        );
        let host_private = host.private_openssh();
        let report = tokio::select! {
            r = rekey::run(&session, &plan, &host_private) => r,
            _ = cancel.cancelled() => return Err(TemplateError::Cancelled),
        }
        .map_err(|why| TemplateError::Rekey {
            image: name_of(),
            why,
        })?;
        // A clone whose kernel RNG was not reseeded would hand out the same
        // random numbers as its template and every other clone until the
        // kernel's next scheduled reseed: it is never used.
        if !report.reseed_ioctl && report.vmgenid_reseeds.unwrap_or(0) == 0 {
            return Err(TemplateError::Rekey {
                image: name_of(),
                why: "its kernel's random generator could not be reseeded (no vmgenid driver reseeded it, and it has neither perl nor python3 to issue the RNDRESEEDCRNG ioctl); a clone must not share its template's random state".into(),
            });
        }
        let t_rekey = t0.elapsed();
        let target = SshTarget::new(
            addr,
            image.ssh_user.clone(),
            client,
            HostKeyCheck::Pinned(host.public_openssh()),
        )
        .map_err(ssh_err)?;
        // The SSH server restarts with its new key: retry briefly.
        let new_session = ssh::wait_ready(&target, &quick(RECONNECT_DEADLINE), cancel, &|_| {})
            .await
            .map_err(ssh_err)?;
        let t_relogin = t0.elapsed();
        let _ = tokio::time::timeout(Duration::from_secs(2), session.close()).await;
        let boot_to_ssh = vm.spawned_at().elapsed();
        tracing::info!(
            image = %image.name,
            vm = vm_id,
            ready_ms = boot_to_ssh.as_millis() as u64,
            qemu_ms = t_qemu.as_millis() as u64,
            login_ms = t_login.as_millis() as u64,
            rekey_ms = t_rekey.as_millis() as u64,
            relogin_ms = t_relogin.as_millis() as u64,
            vmgenid_driver = report.vmgenid_driver,
            vmgenid_reseeds = ?report.vmgenid_reseeds,
            reseed_ioctl = report.reseed_ioctl,
            ssh_server = %report.ssh_server,
            "clone restored and re-keyed"
        );
        Ok(Restored {
            guest: ReadyGuest {
                vm,
                target,
                session: new_session,
                boot_to_ssh,
            },
            report,
            qemu: t_qemu,
            login: t_login,
            rekey: t_rekey,
            relogin: t_relogin,
        })
    }

    /// What the template was made from (image file, its configuration,
    /// QEMU): a template whose key differs from the image's current one is
    /// stale.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The template's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The saved state file.
    pub fn state_path(&self) -> &Path {
        &self.saved.state
    }

    /// The saved state file's size in bytes.
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes
    }

    /// Boot, settle and save: how long [`Template::build`] took.
    pub fn build_time(&self) -> Duration {
        self.build_time
    }

    /// The image configuration the template was saved with.
    pub fn image(&self) -> &ImageConfig {
        &self.image
    }

    /// How a clone at `addr` would be logged in to with the template's
    /// key, pinning `host_key`: for checks that a re-keyed clone refuses
    /// that key.
    pub fn template_login(
        &self,
        addr: std::net::SocketAddr,
        host_key: HostKeyCheck,
    ) -> Result<SshTarget, SshError> {
        SshTarget::new(
            addr,
            self.image.ssh_user.clone(),
            self.template_key.clone(),
            host_key,
        )
    }

    /// The public half of the template's client key (in the saved guest's
    /// `authorized_keys`; clones remove it).
    pub fn template_public_key(&self) -> String {
        self.template_key.public_openssh()
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a snapshot template");
        }
    }
}

/// Runs [`settle_command`] on the template guest.
async fn settle(session: &dyn GuestSession, user: &str, limit: Duration) -> Result<(), String> {
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
    let collect = async {
        let mut all = Vec::new();
        while let Some(c) = rx.recv().await {
            all.extend_from_slice(&c.data);
        }
        all
    };
    let command = settle_command(user);
    let work = async { tokio::join!(session.exec(&command, b"", tx), collect) };
    let (status, out) = tokio::time::timeout(limit, work)
        .await
        .map_err(|_| format!("cloud-init did not finish within {} s", limit.as_secs()))?;
    let status = status.map_err(|e| e.to_string())?;
    let out = String::from_utf8_lossy(&out);
    if status != 0 {
        return Err(format!(
            "the preparation exited with {status}: {}",
            out.trim().lines().last().unwrap_or("no message")
        ));
    }
    // `cloud-init status --wait` exits non-zero for a finished run with
    // errors (a stock cloud-init fails its locale module on a minimal
    // system): the guest is idle all the same.
    if let Some(line) = out
        .lines()
        .find(|l| l.starts_with("solstice-settle cloud-init "))
    {
        tracing::debug!(result = line, "cloud-init finished on the template guest");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_host_names_keep_the_random_tail() {
        assert_eq!(clone_hostname("w-tiny-0123abcd"), "solstice-wtin0123abcd");
        assert_eq!(clone_hostname("abc"), "solstice-abc");
        assert_ne!(
            clone_hostname("w-ubuntu-latest-0123abcd"),
            clone_hostname("w-ubuntu-latest-89abcdef")
        );
        assert!(clone_hostname(&"x".repeat(64)).len() <= 21);
    }

    #[test]
    fn settle_needs_root_only_through_sudo() {
        assert!(settle_command("root").starts_with("sh -c '"));
        let c = settle_command("debian");
        assert!(c.starts_with("sudo -n sh -c '"), "{c}");
        assert!(c.contains("cloud-init status --wait"));
        assert!(c.contains("rm -f /var/lib/systemd/random-seed"));
        assert!(c.ends_with("sync'"));
    }

    #[test]
    fn directory_names_are_safe() {
        assert_eq!(dir_safe("a b/c", 40), "a_b_c");
        assert_eq!(dir_safe(&"x".repeat(50), 40).len(), 40);
    }
}

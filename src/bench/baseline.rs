//! The plain baseline VM: the same QEMU command line Solstice would use
//! (a fixed forwarded port instead of QMP port discovery), started directly,
//! and the OpenSSH client polled until `ssh … true` succeeds.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::{BenchError, TempDir};
use crate::config::{Config, ImageConfig};
use crate::ssh::HostKey;
use crate::vm::{self, Accel};

/// A booted baseline VM, reachable with the OpenSSH client. QEMU is killed
/// and its files removed on drop.
pub struct BaselineVm {
    child: tokio::process::Child,
    key: PathBuf,
    port: u16,
    user: String,
    /// QEMU spawned → first successful `ssh … true`.
    pub boot_to_ssh: Duration,
    _dir: TempDir,
}

impl BaselineVm {
    /// Boots `image` and waits for SSH.
    pub async fn boot(
        config: &Config,
        image: &ImageConfig,
        accel: Accel,
    ) -> Result<BaselineVm, BenchError> {
        let dir = TempDir::new(&config.daemon.state_dir, "bench")?;
        let key = dir.0.join("id_ed25519");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .output()
            .map_err(|e| BenchError::Infra(format!("ssh-keygen: {e}")))?;
        if !out.status.success() {
            return Err(BenchError::Infra(format!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let public = std::fs::read_to_string(key.with_extension("pub"))
            .map_err(|e| BenchError::Infra(format!("read public key: {e}")))?;
        let host = HostKey::generate();
        let host_private = host.private_openssh();
        let host_public = host.public_openssh();
        let seed = vm::seed::write_seed(
            image.seed,
            &dir.0,
            &vm::seed::SeedData {
                instance_id: &format!("bench-{:08x}", rand::random::<u32>()),
                hostname: "bench",
                user: &image.ssh_user,
                authorized_key: public.trim(),
                host_key: Some((&host_private, &host_public)),
                registry_mirror: image.registry_mirror.as_deref(),
            },
        )
        .map_err(|e| BenchError::Infra(format!("seed: {e}")))?;
        let overlay = dir.0.join("overlay.qcow2");
        vm::disk::create_overlay(
            &config.qemu.img_binary,
            &image.path,
            image.format,
            &overlay,
            image.disk_size_gib,
        )
        .await
        .map_err(|e| BenchError::Infra(format!("overlay: {e}")))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| BenchError::Infra(format!("pick a port: {e}")))?
            .port();
        let plan = vm::argv::VmPlan {
            name: "solstice-bench-baseline".into(),
            uuid: format!(
                "00000000-0000-4000-8000-{:012x}",
                rand::random::<u64>() >> 16
            ),
            accel,
            cpu: vm::argv::cpu_model(image, accel).to_owned(),
            vcpus: image.vcpus,
            memory_mib: image.memory_mib,
            overlay,
            seed: Some((image.seed, seed)),
            uefi: None,
            console: dir.0.join("console.log"),
            qmp_socket: dir.0.join("qmp.sock"),
            paused: false,
            vmgenid: false,
            incoming: false,
        };
        let args: Vec<String> = vm::argv::qemu_args(&plan)
            .into_iter()
            .map(|a| {
                a.to_string_lossy()
                    .replace("127.0.0.1:0-:22", &format!("127.0.0.1:{port}-:22"))
            })
            .collect();
        let start = Instant::now();
        let child = tokio::process::Command::new(&config.qemu.system_binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Infra(format!("start QEMU: {e}")))?;
        let mut vm = BaselineVm {
            child,
            key,
            port,
            user: image.ssh_user.clone(),
            boot_to_ssh: Duration::ZERO,
            _dir: dir,
        };
        let deadline = start + image.boot_timeout;
        loop {
            let ok = vm
                .ssh("true")
                .stdout(Stdio::null())
                .status()
                .await
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                vm.boot_to_ssh = start.elapsed();
                return Ok(vm);
            }
            if Instant::now() > deadline {
                return Err(BenchError::Infra(format!(
                    "no SSH within {}s",
                    image.boot_timeout.as_secs()
                )));
            }
            if let Ok(Some(status)) = vm.child.try_wait() {
                return Err(BenchError::Infra(format!("QEMU exited early: {status}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `ssh … command` to the guest (stdin and stderr closed).
    pub fn ssh(&self, command: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ssh");
        c.args([
            "-q",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=2",
            "-i",
        ])
        .arg(&self.key)
        .args(["-p", &self.port.to_string()])
        .arg(format!("{}@127.0.0.1", self.user))
        .arg(command)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        c
    }

    /// Runs `command` in the guest; an error unless it exits 0.
    pub async fn run(&self, command: &str) -> Result<(), BenchError> {
        let status = self
            .ssh(command)
            .stdout(Stdio::null())
            .status()
            .await
            .map_err(|e| BenchError::Infra(format!("ssh: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(BenchError::Infra(format!(
                "`{command}` in the baseline guest: {status}"
            )))
        }
    }

    /// Runs `command` in the guest and reads its stdout to the end over the
    /// OpenSSH client. Returns the bytes read and the time from the first
    /// byte to the end (the transfer, without the SSH handshake).
    pub async fn stream(&self, command: &str) -> Result<(u64, Duration), BenchError> {
        let mut child = self
            .ssh(command)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| BenchError::Infra(format!("ssh: {e}")))?;
        let mut out = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Infra("ssh: no stdout pipe".into()))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut bytes = 0u64;
        let mut first: Option<Instant> = None;
        loop {
            let n = out
                .read(&mut buf)
                .await
                .map_err(|e| BenchError::Infra(format!("read ssh output: {e}")))?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            bytes += n as u64;
        }
        let took = first.map(|f| f.elapsed()).unwrap_or_default();
        let status = child
            .wait()
            .await
            .map_err(|e| BenchError::Infra(format!("ssh: {e}")))?;
        if !status.success() {
            return Err(BenchError::Infra(format!(
                "streaming over ssh failed: {status}"
            )));
        }
        Ok((bytes, took))
    }
}

impl BaselineVm {
    /// Kills QEMU and waits for it; the files go with `self`.
    pub async fn shutdown(mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for BaselineVm {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Boots the image once and returns its boot to SSH (QEMU is killed).
pub async fn baseline_boot(
    config: &Config,
    image: &ImageConfig,
    accel: Accel,
) -> Result<Duration, BenchError> {
    let vm = BaselineVm::boot(config, image, accel).await?;
    let d = vm.boot_to_ssh;
    vm.shutdown().await;
    Ok(d)
}

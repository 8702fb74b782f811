//! `solstice bench network`: what the guest's network isolation costs
//! (docs/how-to/guest-network.md), `unrestricted` (QEMU's user-mode network
//! in the host's namespace) against `outbound` (QEMU in its own namespace
//! behind pasta), in the same run on the same image.
//!
//! For each mode and run: a fresh VM from [`Vm::start`] to the first SSH
//! login that runs `true` (boot to SSH-ready, pasta's set-up included), then
//! one download of `--mb` megabytes inside the guest (busybox or GNU `wget`,
//! else `curl`) from an HTTP server in a network namespace the benchmark
//! creates at a documentation address (198.51.100.200), so that both modes
//! fetch from "elsewhere on the network" without leaving the host. Needs
//! root (the namespace and its veth pair; `ip` from iproute2).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::runner::progress;
use super::{BenchError, NetworkBenchArgs, TempDir, bench_image, fmt_ms, median};
use crate::config::{ImageConfig, NetworkMode};
use crate::guest::{GuestSession, OutputChunk};
use crate::ssh::{ClientKey, HostKeyCheck, ReadyOptions, SshTarget};
use crate::startup::resolve_accel;
use crate::vm::{Vm, VmSpec};

/// The server's address inside its namespace.
const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
const SERVER_PORT: u16 = 8080;

/// A network namespace with one veth pair and `SERVER_ADDR`; removed on drop.
struct ServerNs {
    name: String,
    host_if: String,
}

fn ip(args: &[&str]) -> Result<(), BenchError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| BenchError::Infra(format!("run ip (iproute2): {e}")))?;
    if !out.status.success() {
        return Err(BenchError::Infra(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl ServerNs {
    fn create() -> Result<ServerNs, BenchError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(BenchError::Usage(
                "bench network creates a network namespace for its download server: run it as root"
                    .into(),
            ));
        }
        let pid = std::process::id();
        let ns = ServerNs {
            name: format!("solstice-bench-{pid}"),
            host_if: format!("sb{pid:x}h"),
        };
        let ns_if = format!("sb{pid:x}n");
        let cidr = format!("{SERVER_ADDR}/32");
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
            "netns",
            &ns.name,
        ])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &cidr, "dev", &ns_if])?;
        ip(&["-n", &ns.name, "link", "set", &ns_if, "up"])?;
        ip(&["-n", &ns.name, "route", "add", "default", "dev", &ns_if])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ip(&["route", "add", &cidr, "dev", &ns.host_if])?;
        Ok(ns)
    }

    /// Serves `bytes` zero bytes to every HTTP request, from a thread whose
    /// listening socket lives in the namespace.
    fn serve(&self, bytes: u64) -> Result<SocketAddr, BenchError> {
        let path = format!("/run/netns/{}", self.name);
        let addr = SocketAddr::from((SERVER_ADDR, SERVER_PORT));
        let listener = std::thread::spawn(move || -> std::io::Result<TcpListener> {
            let f = std::fs::File::open(&path)?;
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            TcpListener::bind(addr)
        })
        .join()
        .map_err(|_| BenchError::Infra("the server thread panicked".into()))?
        .map_err(|e| BenchError::Infra(format!("listen at {addr} in the namespace: {e}")))?;
        std::thread::spawn(move || {
            let chunk = vec![0u8; 1 << 16];
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { continue };
                std::thread::spawn({
                    let chunk = chunk.clone();
                    move || {
                        let mut req = [0u8; 4096];
                        let _ = s.read(&mut req);
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {bytes}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                        );
                        if s.write_all(head.as_bytes()).is_err() {
                            return;
                        }
                        let mut left = bytes;
                        while left > 0 {
                            let n = left.min(chunk.len() as u64) as usize;
                            if s.write_all(&chunk[..n]).is_err() {
                                return;
                            }
                            left -= n as u64;
                        }
                    }
                });
            }
        });
        Ok(addr)
    }
}

impl Drop for ServerNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// One run's figures.
struct Sample {
    boot: Duration,
    download: Duration,
}

/// `solstice bench network`.
pub async fn network_main(args: NetworkBenchArgs) -> Result<(), BenchError> {
    let (_, config) = crate::startup::load_config(args.common.config.as_deref())?;
    let image = bench_image(&config, &args.common)?;
    let accel = resolve_accel(&config).await?.current();
    let bytes = u64::from(args.mb) * 1_000_000;
    let ns = ServerNs::create()?;
    let server = ns.serve(bytes)?;
    progress(format!(
        "download server at http://{server}/ in a test namespace ({} MB per download)",
        args.mb
    ));
    let work = TempDir::new(&config.daemon.state_dir.join("jobs"), "bn")?;
    let modes = [NetworkMode::Unrestricted, NetworkMode::Outbound];
    let mut results: Vec<(NetworkMode, Vec<Sample>)> = Vec::new();
    for mode in modes {
        let mut img = image.clone();
        img.network = mode;
        let mut samples = Vec::new();
        for run in 1..=args.runs {
            let s = one_run(&config, &img, accel, &work.0, server, run).await?;
            progress(format!(
                "{}: run {run}: boot to SSH {}, download {} ({:.1} MB/s)",
                mode.as_str(),
                fmt_ms(s.boot),
                fmt_ms(s.download),
                bytes as f64 / 1e6 / s.download.as_secs_f64()
            ));
            samples.push(s);
        }
        results.push((mode, samples));
    }
    let med =
        |s: &[Sample], f: fn(&Sample) -> Duration| median(&s.iter().map(f).collect::<Vec<_>>());
    println!(
        "guest network: image {}, accelerator {}, {} run(s) each, {} MB download (medians)",
        image.name,
        accel.as_str(),
        args.runs,
        args.mb
    );
    println!(
        "{:<14} {:>14} {:>14} {:>12}",
        "network", "boot to SSH", "download", "MB/s"
    );
    let mut rows = Vec::new();
    for (mode, samples) in &results {
        let boot = med(samples, |s| s.boot);
        let dl = med(samples, |s| s.download);
        println!(
            "{:<14} {:>14} {:>14} {:>12.1}",
            mode.as_str(),
            fmt_ms(boot),
            fmt_ms(dl),
            bytes as f64 / 1e6 / dl.as_secs_f64()
        );
        rows.push((boot, dl));
    }
    if let [(b0, d0), (b1, d1)] = rows[..] {
        println!(
            "outbound / unrestricted: boot {:.2}x, download time {:.2}x",
            b1.as_secs_f64() / b0.as_secs_f64(),
            d1.as_secs_f64() / d0.as_secs_f64()
        );
    }
    Ok(())
}

async fn one_run(
    config: &crate::config::Config,
    image: &ImageConfig,
    accel: crate::vm::Accel,
    jobs: &std::path::Path,
    server: SocketAddr,
    run: u32,
) -> Result<Sample, BenchError> {
    let key = ClientKey::generate();
    let public = key.public_openssh();
    let job_id = format!("bench-net-{}-{run}", image.network.as_str());
    let t0 = Instant::now();
    let vm = Vm::start(VmSpec {
        job_id: &job_id,
        image,
        qemu: &config.qemu,
        accel,
        jobs_dir: jobs,
        authorized_key: &public,
        host_key: None,
        hostname: "bench-net",
        host_ports: &[],
    })
    .await
    .map_err(|e| BenchError::Infra(format!("start the VM: {e}")))?;
    let target = SshTarget::new(
        vm.ssh_addr(),
        image.ssh_user.clone(),
        key,
        HostKeyCheck::TrustFirstUse,
    )
    .map_err(|e| BenchError::Infra(e.to_string()))?;
    let opts = ReadyOptions {
        deadline: image.boot_timeout,
        ..Default::default()
    };
    let session = crate::ssh::wait_ready(&target, &opts, &CancellationToken::new(), &|_| {})
        .await
        .map_err(|e| BenchError::Infra(format!("the guest's SSH: {e}")))?;
    let boot = t0.elapsed();
    let url = format!("http://{server}/blob");
    let command = format!(
        "if command -v wget >/dev/null; then wget -q -O /dev/null {url}; else curl -sfo /dev/null {url}; fi"
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel::<OutputChunk>(16);
    let drain = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(c) = rx.recv().await {
            out.extend(c.data);
        }
        out
    });
    let t1 = Instant::now();
    let status = session
        .exec(&command, b"", tx)
        .await
        .map_err(|e| BenchError::Infra(format!("the download: {e}")))?;
    let download = t1.elapsed();
    let said = drain.await.unwrap_or_default();
    let _ = session.close().await;
    vm.destroy()
        .await
        .map_err(|e| BenchError::Infra(format!("destroy the VM: {e}")))?;
    if status != 0 {
        return Err(BenchError::Infra(format!(
            "the download in the guest failed (exit {status}): {}",
            String::from_utf8_lossy(&said).trim()
        )));
    }
    Ok(Sample { boot, download })
}

//! The guest's network policy (docs/how-to/guest-network.md): what a job in
//! a VM can and cannot reach. Root only (test network namespaces); the tests
//! that boot guests must be serialised with the VM lock.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::support::netns;

/// The test helper itself: the host reaches a listener inside a namespace.
#[test]
fn netns_helper_listener_is_reachable_from_the_host() {
    let ns = netns::create("helper", "198.51.100.7".parse().unwrap());
    let listener = ns.listen(0);
    let addr = listener.local_addr().unwrap();
    assert_eq!(addr.ip().to_string(), "198.51.100.7");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"hello from the namespace").unwrap();
    });
    let mut c = TcpStream::connect(addr).unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello from the namespace");
    server.join().unwrap();
    let shown = ns
        .command("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&shown.stdout).contains("198.51.100.7/32"));
    let name = ns.name.clone();
    drop(ns);
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&name),
        "namespace left behind"
    );
}

/// The namespace QEMU starts in: its own loopback, up, and the policy's
/// rules ahead of the main table once applied (seen by `ip rule` inside).
#[test]
fn the_namespace_has_the_policy_rules_before_anything_runs() {
    use solstice::config::{Cidr, NetworkMode};
    use solstice::vm::netns;
    let policy = netns::Policy::new(
        NetworkMode::Outbound,
        &[Cidr::parse("10.0.0.0/8").unwrap()],
        &[Cidr::parse("10.1.0.0/16").unwrap()],
        &["192.0.2.99".parse().unwrap()],
    );
    let mut cmd = std::process::Command::new("sh");
    // Waits for the rules, as QEMU (paused) does.
    cmd.args(["-c", "read x; ip rule; ip -6 rule; ip -br link show lo"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    netns::isolate(&mut cmd, None);
    let mut child = cmd.spawn().unwrap();
    netns::apply_policy(child.id(), &policy).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "100:\tfrom all to 169.254.0.0/16 prohibit",
        "100:\tfrom all to 192.0.2.99 prohibit",
        "200:\tfrom all to 10.1.0.0/16 lookup main",
        "300:\tfrom all to 10.0.0.0/8 prohibit",
        "100:\tfrom all to fe80::/10 prohibit",
    ] {
        assert!(text.contains(want), "no `{want}` in:\n{text}");
    }
    assert!(text.contains("lo ") && text.contains("UP"), "{text}");
}

// ---- Real guests (tiny image; run under the VM lock) ----

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use solstice::config::{Cidr, ImageConfig, NetworkMode};
use solstice::guest::GuestSession;
use solstice::ssh::{ClientKey, HostKeyCheck, ReadyOptions, SshSession, SshTarget};
use solstice::vm::{Accel, Vm, VmSpec};
use tokio_util::sync::CancellationToken;

use crate::support::{TestEnv, image, image_config};

/// Answers every connection on `listener` with `token`, forever (a thread).
fn serve(listener: TcpListener, token: &'static str) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(token.as_bytes());
        }
    });
    addr
}

/// A booted tiny guest reached over SSH.
struct Guest {
    vm: Vm,
    session: SshSession,
    _env: TestEnv,
}

async fn boot(img: ImageConfig, host_ports: &[u16]) -> Guest {
    let env = TestEnv::with_image(img);
    let key = ClientKey::generate();
    let public = key.public_openssh();
    let vm = Vm::start(VmSpec {
        job_id: &solstice::job::id::new_job_id("net"),
        image: env.image(),
        qemu: &env.config.qemu,
        accel: Accel::Tcg,
        jobs_dir: &env.jobs_dir(),
        authorized_key: &public,
        host_key: None,
        hostname: "net-test",
        host_ports,
    })
    .await
    .unwrap();
    let target = SshTarget::new(vm.ssh_addr(), "root", key, HostKeyCheck::TrustFirstUse).unwrap();
    let opts = ReadyOptions {
        deadline: Duration::from_secs(180),
        ..Default::default()
    };
    let session = solstice::ssh::wait_ready(&target, &opts, &CancellationToken::new(), &|_| {})
        .await
        .unwrap_or_else(|e| panic!("guest not ready: {e}\n{}", vm.console_tail(30)));
    Guest {
        vm,
        session,
        _env: env,
    }
}

impl Guest {
    /// Runs `command` in the guest; its stdout and stderr together.
    async fn sh(&self, command: &str) -> String {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<solstice::guest::OutputChunk>(64);
        let collect = tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(c) = rx.recv().await {
                out.extend(c.data);
            }
            String::from_utf8_lossy(&out).into_owned()
        });
        // A hung probe fails the test with what it ran instead of stalling
        // the whole run.
        tokio::time::timeout(
            Duration::from_secs(120),
            self.session.exec(command, b"", tx),
        )
        .await
        .unwrap_or_else(|_| panic!("`{command}` did not end within 120 s"))
        .unwrap();
        collect.await.unwrap()
    }

    /// What the guest reads from a TCP connection to `addr` (empty when it
    /// cannot connect), with busybox `nc`.
    async fn fetch(&self, addr: SocketAddr) -> String {
        let out = self
            .sh(&format!(
                "timeout 20 nc -w 3 {} {} </dev/null 2>&1; true",
                addr.ip(),
                addr.port()
            ))
            .await;
        out.trim().to_string()
    }

    /// Destroys the VM and checks that neither QEMU nor pasta is left.
    async fn destroy(self) {
        let pasta: u32 = std::fs::read_to_string(self.vm.dir().join("pasta.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let qemu = self.vm.pid();
        let dir = self.vm.dir().to_path_buf();
        self.session.close().await.ok();
        self.vm.destroy().await.unwrap();
        for pid in [pasta, qemu] {
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists()
                    || solstice::vm::process::process(pid).is_none_or(|p| p.is_zombie()),
                "process {pid} outlived the VM"
            );
        }
        assert!(!dir.exists());
        self._env.assert_no_leaks();
    }
}

fn tiny(network: NetworkMode, deny: &[&str], allow: &[&str]) -> ImageConfig {
    let mut img = image_config("tiny", image("tiny"), "root", 256);
    img.network = network;
    img.network_deny = deny.iter().map(|c| Cidr::parse(c).unwrap()).collect();
    img.network_allow = allow.iter().map(|c| Cidr::parse(c).unwrap()).collect();
    img
}

/// An extra address of the host, and a listener on it answering `token`.
/// pasta copies the address of the host's default-route interface into the
/// namespace (there a connection to it ends at the namespace's own address,
/// whatever the rules), so the probe uses an address pasta leaves alone:
/// one on the host side of a test namespace's veth pair. The namespace
/// handle keeps the address; drop it after the VM.
fn host_extra_address(
    name: &str,
    ns_addr: &str,
    host_addr: &str,
    token: &'static str,
) -> (netns::Netns, SocketAddr) {
    let ns = netns::create(name, ns_addr.parse().unwrap());
    let ip: std::net::Ipv4Addr = host_addr.parse().unwrap();
    ns.add_host_address(ip);
    let addr = serve(TcpListener::bind((ip, 0)).unwrap(), token);
    (ns, addr)
}

/// The default policy: the host's loopback (through the gateway and the
/// host's own address), a metadata service at 169.254.169.254 and a
/// `network_deny` range are closed; the internet (a documentation address
/// in a test namespace) and the deliberate `host_ports` are open; the SSH
/// forward listens on 127.0.0.1 only; nothing is left after destroy.
#[tokio::test]
async fn outbound_reaches_out_but_not_the_host_or_link_local() {
    // Host services the guest must not reach: one on loopback (standing in
    // for the daemon's metrics endpoint, a database, an admin API), one on
    // the host's own address.
    let loopback = serve(TcpListener::bind("127.0.0.1:0").unwrap(), "LOOPBACK");
    let (_host_ns, on_host_addr) =
        host_extra_address("hostaddr", "198.18.0.1", "198.18.0.2", "HOSTADDR");
    // The deliberate one (the cache service's place).
    let allowed = serve(TcpListener::bind("127.0.0.1:0").unwrap(), "HOSTPORT");
    // Elsewhere on the network.
    let meta_ns = netns::create("meta", "169.254.169.254".parse().unwrap());
    let meta = serve(meta_ns.listen(80), "METADATA");
    let out_ns = netns::create("out", "198.51.100.1".parse().unwrap());
    let out = serve(out_ns.listen(8080), "OUTBOUND");
    let deny_ns = netns::create("deny", "203.0.113.5".parse().unwrap());
    let denied = serve(deny_ns.listen(8080), "DENIED");
    // Control: the host itself reaches the metadata stand-in.
    let mut got = String::new();
    TcpStream::connect(meta)
        .unwrap()
        .read_to_string(&mut got)
        .unwrap();
    assert_eq!(got, "METADATA");

    let g = boot(
        tiny(NetworkMode::Outbound, &["203.0.113.0/24"], &[]),
        &[allowed.port()],
    )
    .await;
    let gw = |p: u16| SocketAddr::from(([10, 0, 2, 2], p));
    assert_eq!(g.fetch(out).await, "OUTBOUND", "outbound access works");
    assert_eq!(
        g.fetch(gw(allowed.port())).await,
        "HOSTPORT",
        "host_ports reachable"
    );
    for (what, addr) in [
        ("host loopback via 10.0.2.2", gw(loopback.port())),
        ("listener on one of the host's addresses", on_host_addr),
        ("metadata at 169.254.169.254", meta),
        ("network_deny range", denied),
    ] {
        let got = g.fetch(addr).await;
        for token in ["LOOPBACK", "HOSTADDR", "METADATA", "DENIED", "HOSTPORT"] {
            assert!(!got.contains(token), "{what} ({addr}) reached: {got}");
        }
    }
    // SSH: the host side listens on 127.0.0.1 only.
    let port = g.vm.ssh_addr().port();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap()
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap();
    let listening: Vec<&str> = tcp
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "0A" && f[1].ends_with(&format!(":{port:04X}"))
        })
        .collect();
    assert_eq!(listening.len(), 1, "{listening:?}");
    assert!(
        listening[0]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .starts_with("0100007F:")
    );
    g.destroy().await;
}

/// `network = "none"`: only `network_allow` is reachable.
#[tokio::test]
async fn none_reaches_only_network_allow() {
    let allowed_ns = netns::create("allowed", "198.51.100.1".parse().unwrap());
    let allowed = serve(allowed_ns.listen(8080), "ALLOWED");
    let other_ns = netns::create("other", "203.0.113.7".parse().unwrap());
    let other = serve(other_ns.listen(8080), "OTHER");
    let loopback = serve(TcpListener::bind("127.0.0.1:0").unwrap(), "LOOPBACK");
    let g = boot(tiny(NetworkMode::None, &[], &["198.51.100.1/32"]), &[]).await;
    assert_eq!(g.fetch(allowed).await, "ALLOWED");
    let got = g.fetch(other).await;
    assert!(!got.contains("OTHER"), "{got}");
    let got = g
        .fetch(SocketAddr::from(([10, 0, 2, 2], loopback.port())))
        .await;
    assert!(!got.contains("LOOPBACK"), "{got}");
    g.destroy().await;
}

/// With a resolver on the host's loopback, QEMU's namespace sees its own
/// resolv.conf (naming pasta's DNS forward); the host's file is untouched.
#[test]
fn a_private_resolv_conf_is_seen_only_inside_the_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("resolv.conf");
    let text = format!("nameserver {}\n", solstice::vm::netns::DNS_FORWARD_ADDR);
    std::fs::write(&ours, &text).unwrap();
    let before = std::fs::read("/etc/resolv.conf").unwrap();
    let mut cmd = std::process::Command::new("cat");
    cmd.arg("/etc/resolv.conf");
    solstice::vm::netns::isolate(&mut cmd, Some(&ours));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);
    assert_eq!(std::fs::read("/etc/resolv.conf").unwrap(), before);
}

/// Without pasta, a job of an isolated image fails before its VM boots,
/// saying what is missing and what to do; it never falls back to the open
/// network.
#[test]
fn without_pasta_the_job_fails_before_boot_and_says_what_to_do() {
    let env = TestEnv::tiny();
    // A PATH with QEMU but without pasta.
    let bin = env.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in ["qemu-system-x86_64", "qemu-img"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        let path = String::from_utf8(found.stdout).unwrap();
        std::os::unix::fs::symlink(path.trim(), bin.join(tool)).unwrap();
    }
    let config = env.write_config_file();
    let wf = env.dir.path().join("wf.yml");
    std::fs::write(
        &wf,
        "on: push\njobs:\n  j:\n    runs-on: tiny\n    steps:\n      - run: echo should-not-run\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_solstice"))
        .args(["exec", "--config"])
        .arg(&config)
        .arg(&wf)
        .env("PATH", &bin)
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("pasta"), "{text}");
    assert!(text.contains("apt install passt"), "{text}");
    assert!(text.contains("unrestricted"), "{text}");
    assert!(!text.contains("should-not-run\n"), "{text}");
    env.assert_no_leaks();
}

/// A resolver on the host's loopback (as systemd-resolved's 127.0.0.53):
/// the guest's DNS (10.0.2.3) still reaches it, through pasta's DNS
/// forward, while the rest of the host's loopback stays closed. The host's
/// resolv.conf is replaced only in a private mount namespace around
/// `solstice exec`; the resolver is a small fake that answers every A query
/// with 192.0.2.123.
#[test]
fn a_resolver_on_the_host_loopback_still_answers_the_guest() {
    resolver_answers_the_guest("127.0.0.153");
}

/// A resolver on one of the host's addresses (dnsmasq on a bridge; a
/// cloud's link-local resolver is closed the same way): the policy closes
/// it, so the guest's DNS goes through pasta's forward as well.
#[test]
fn a_resolver_on_a_host_address_still_answers_the_guest() {
    let (_ns, _) = host_extra_address("dnshost", "198.18.0.3", "198.18.0.4", "unused");
    resolver_answers_the_guest("198.18.0.4");
}

/// Runs a job that resolves a name with the host's only resolver at
/// `resolver` (a fake answering every A query with 192.0.2.123).
fn resolver_answers_the_guest(resolver: &str) {
    let env = TestEnv::tiny();
    let dir = env.dir.path();
    let server = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(512)
    qd_end = 12
    while q[qd_end] != 0:
        qd_end += q[qd_end] + 1
    qtype = q[qd_end + 1:qd_end + 3]
    question = q[12:qd_end + 5]
    is_a = qtype == b"\x00\x01"
    head = q[:2] + b"\x81\x80" + b"\x00\x01" + (b"\x00\x01" if is_a else b"\x00\x00") + b"\x00\x00\x00\x00"
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([192, 0, 2, 123]) if is_a else b""
    s.sendto(head + question + answer, peer)
"#;
    let mut dns = std::process::Command::new("python3")
        .args(["-c", server, resolver])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    dns.stdout.take().unwrap().read_exact(&mut ready).unwrap();
    let resolv = dir.join("host-resolv.conf");
    std::fs::write(&resolv, format!("nameserver {resolver}\n")).unwrap();
    let config = env.write_config_file();
    let wf = dir.join("wf.yml");
    std::fs::write(
        &wf,
        "on: push\njobs:\n  j:\n    runs-on: tiny\n    steps:\n      - run: nslookup solstice-dns-test.example 2>&1; true\n",
    )
    .unwrap();
    let out = std::process::Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$1\" /etc/resolv.conf && exec \"$2\" exec --config \"$3\" \"$4\"",
            "sh",
        ])
        .arg(&resolv)
        .arg(env!("CARGO_BIN_EXE_solstice"))
        .arg(&config)
        .arg(&wf)
        .current_dir(dir)
        .output()
        .unwrap();
    let _ = dns.kill();
    let _ = dns.wait();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    println!("{text}");
    assert!(
        text.contains("192.0.2.123"),
        "the guest got no answer from the host's resolver:\n{text}"
    );
    env.assert_no_leaks();
}

/// Control for the tests above: with `network = "unrestricted"` (the old
/// behaviour) the same probes do reach a listener on the host's loopback and
/// one on a host address, so a probe that fails under `outbound` fails
/// because of the isolation.
#[tokio::test]
async fn unrestricted_still_reaches_the_host_loopback() {
    let loopback = serve(TcpListener::bind("127.0.0.1:0").unwrap(), "LOOPBACK");
    let (_host_ns, on_host_addr) =
        host_extra_address("hostaddr", "198.18.0.1", "198.18.0.2", "HOSTADDR");
    let g = boot(tiny(NetworkMode::Unrestricted, &[], &[]), &[]).await;
    let got = g
        .fetch(SocketAddr::from(([10, 0, 2, 2], loopback.port())))
        .await;
    assert_eq!(got, "LOOPBACK");
    assert_eq!(
        g.fetch(on_host_addr).await,
        "HOSTADDR",
        "the host-address probe of the outbound test can fail"
    );
    let dir = g.vm.dir().to_path_buf();
    assert!(!dir.join("pasta.pid").exists(), "no pasta for unrestricted");
    g.session.close().await.ok();
    g.vm.destroy().await.unwrap();
    g._env.assert_no_leaks();
}

/// `solstice doctor`'s check: a pasta that runs but fails (here a stand-in
/// that exits 1) is an error that shows what it printed, not "ok".
#[test]
fn a_pasta_that_exits_with_an_error_fails_the_check() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("pasta");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'pasta: cannot run here' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = solstice::vm::netns::check_pasta(&fake)
        .unwrap_err()
        .to_string();
    assert!(err.contains("pasta: cannot run here"), "{err}");
    assert!(err.contains("exit status: 1"), "{err}");
    let real = solstice::vm::netns::find_pasta().expect("pasta installed");
    solstice::vm::netns::check_pasta(&real).unwrap();
}

//! The guest's network policy (docs/how-to/guest-network.md).
//!
//! QEMU's user-mode network (slirp) opens the guest's connections from
//! QEMU's own sockets: run in the host's network namespace, its gateway
//! `10.0.2.2` is the host's loopback and every host address is reachable.
//! For `network = "outbound"` and `"none"` QEMU therefore starts in a new
//! user + network namespace of its own (created in the forked child before
//! `exec`, so QEMU stays our direct child), whose only uplink is `pasta`
//! (package passt) attached from outside:
//!
//! - Before the guest runs, the namespace gets policy-routing rules that come
//!   before every routing table but the local one: `prohibit` for link-local
//!   ranges and every address of the host's interfaces (built in, first, so
//!   nothing re-opens them), then `network_allow` (look up the main table),
//!   then `network_deny` and, for `none`, everything. Connections to denied
//!   addresses fail with "permission denied" inside the namespace and never
//!   reach pasta.
//! - The namespace's loopback is its own: slirp's `10.0.2.2` leads there,
//!   where only pasta's `-T` forwards of [`super::VmSpec::host_ports`] listen.
//! - QEMU starts paused (`-S`); pasta forwards one port of the host's
//!   `127.0.0.1` to slirp's SSH forward inside the namespace, and once pasta
//!   is ready QMP `cont` lets the guest run.
//! - DNS: slirp sends the guest's queries to the first IPv4 `nameserver` of
//!   `/etc/resolv.conf`, from inside the namespace. When the policy closes
//!   that address (systemd-resolved's 127.0.0.53, a cloud's link-local
//!   resolver, dnsmasq on one of the host's addresses, a denied range) or
//!   there is none, QEMU also gets a private mount namespace whose
//!   `/etc/resolv.conf` names [`DNS_FORWARD_ADDR`], which pasta
//!   (`--dns-forward`) sends to the host's resolver.

use std::ffi::CString;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::libc;

use crate::config::{Cidr, NetworkMode};

/// Where slirp inside the namespace sends DNS queries when the host's
/// resolver is on its loopback; pasta maps it to the host's resolver.
pub const DNS_FORWARD_ADDR: &str = "192.0.0.53";

/// The device pasta opens to make the namespace's network interface.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Rule priorities (the local table is 0, the main table 32766).
const PRIO_BUILTIN: u32 = 100;
const PRIO_ALLOW: u32 = 200;
const PRIO_DENY: u32 = 300;

/// The built-in ranges a guest can never reach (besides the host's addresses):
/// link-local (cloud metadata services at 169.254.169.254, AWS's resolver at
/// 169.254.169.253), loopback, AWS's metadata service over IPv6
/// (`fd00:ec2::254`) and Alibaba Cloud's (`100.100.100.200`).
pub fn builtin_denied() -> Vec<Cidr> {
    [
        "169.254.0.0/16",
        "fe80::/10",
        "127.0.0.0/8",
        "::1/128",
        "fd00:ec2::254/128",
        "100.100.100.200/32",
    ]
    .iter()
    .filter_map(|c| Cidr::parse(c).ok())
    .collect()
}

/// What the namespace's rules say, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Closed first: link-local, loopback, the host's own addresses.
    pub builtin: Vec<Cidr>,
    /// Re-opened in `deny` (and the only destinations with `none`).
    pub allow: Vec<Cidr>,
    /// Closed after `allow`; `0.0.0.0/0` and `::/0` for `none`.
    pub deny: Vec<Cidr>,
}

impl Policy {
    /// The policy of an image, given the host's interface addresses.
    pub fn new(mode: NetworkMode, deny: &[Cidr], allow: &[Cidr], host_addrs: &[IpAddr]) -> Policy {
        let mut builtin = builtin_denied();
        for a in host_addrs {
            let c = Cidr::host(*a);
            if !builtin.iter().any(|b| b.covers(&c)) {
                builtin.push(c);
            }
        }
        let mut deny = deny.to_vec();
        if mode == NetworkMode::None {
            deny.extend(
                ["0.0.0.0/0", "::/0"]
                    .iter()
                    .filter_map(|c| Cidr::parse(c).ok()),
            );
        }
        Policy {
            builtin,
            allow: allow.to_vec(),
            deny,
        }
    }

    /// True if a connection from the namespace to `ip` is let through to pasta.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.builtin.iter().any(|c| c.contains(ip)) {
            return false;
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return true;
        }
        !self.deny.iter().any(|c| c.contains(ip))
    }
}

/// Every address of the host's interfaces (this network namespace's), but
/// loopback ones.
pub fn host_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let Some(sa) = ifa.address else { continue };
        let ip = if let Some(v4) = sa.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if !ip.is_loopback() && !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// The first IPv4 `nameserver` of a resolv.conf text: the one slirp sends
/// the guest's queries (to `10.0.2.3`) to.
pub fn first_ipv4_nameserver(resolv_conf: &str) -> Option<IpAddr> {
    resolv_conf.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next()?.parse::<std::net::Ipv4Addr>().ok())
            .flatten()
            .map(IpAddr::V4)
    })
}

/// True if the guest's DNS must go through pasta's DNS forward
/// ([`DNS_FORWARD_ADDR`]): when the host has no IPv4 resolver (slirp would
/// then use the namespace's own loopback) or `policy` closes the resolver's
/// address (loopback, link-local such as a cloud's 169.254.169.253, one of
/// the host's addresses, or a `network_deny` range), since slirp's queries
/// leave from inside the namespace.
pub fn needs_dns_forward(resolver: Option<IpAddr>, policy: &Policy) -> bool {
    resolver.is_none_or(|ip| !policy.permits(ip))
}

/// `pasta` on `PATH`, if installed.
pub fn find_pasta() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("pasta"))
        .find(|p| p.is_file())
}

/// Checks that this host can isolate a guest's network: pasta is installed
/// and a user + network namespace can be made (by running `pasta --version`
/// in one). Returns pasta's path.
pub fn probe() -> Result<PathBuf, IsolationError> {
    let pasta = find_pasta().ok_or(IsolationError::NoPasta("outbound"))?;
    // pasta makes the namespace's interface with the tun device.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map_err(IsolationError::Tun)?;
    check_pasta(&pasta)?;
    Ok(pasta)
}

/// Runs `pasta --version` in a new user + network namespace, as QEMU's
/// would be made; fails unless it exits successfully.
pub fn check_pasta(pasta: &Path) -> Result<(), IsolationError> {
    let mut cmd = Command::new(pasta);
    cmd.arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    isolate(&mut cmd, None);
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(IsolationError::PastaFailed {
            pasta: pasta.to_path_buf(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(IsolationError::NoPasta("outbound")),
        Err(e) => Err(IsolationError::Namespace(e)),
    }
}

/// Why the host cannot isolate a guest's network.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error(
        "`pasta` (package passt) is not installed or not on PATH, and the image's network = \"{0}\" needs it to isolate the guest from the host: install passt (Debian/Ubuntu: apt install passt; NixOS: the Solstice module adds it), or set network = \"unrestricted\" for this image (unsafe: jobs then reach the host's loopback)"
    )]
    NoPasta(&'static str),
    #[error(
        "Could not create a user and network namespace for QEMU ({0}): the host restricts user namespaces (check `sysctl user.max_user_namespaces` (must be > 0), `kernel.unprivileged_userns_clone` (Debian, must be 1), `kernel.apparmor_restrict_unprivileged_userns` (Ubuntu, must be 0) and the service's RestrictNamespaces=), or set network = \"unrestricted\" for this image (unsafe: jobs then reach the host's loopback)"
    )]
    Namespace(std::io::Error),
    #[error(
        "Could not open {TUN_DEVICE} ({0}), which pasta needs for the guest's network: it must be readable and writable by this user (mode 0666, as most distributions ship it; under systemd's DevicePolicy= also DeviceAllow=/dev/net/tun rw), or set network = \"unrestricted\" for this image (unsafe: jobs then reach the host's loopback)"
    )]
    Tun(std::io::Error),
    #[error("pasta could not attach to QEMU's network namespace: {0}")]
    Pasta(String),
    #[error(
        "`{} --version` failed in a user and network namespace ({status}): {stderr}; reinstall passt or check what stops it there (a seccomp filter or AppArmor profile on the service), or set network = \"unrestricted\" for this image (unsafe: jobs then reach the host's loopback)",
        pasta.display()
    )]
    PastaFailed {
        /// The pasta binary run.
        pasta: PathBuf,
        /// How it exited.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    #[error("Could not {0}")]
    Io(String, #[source] std::io::Error),
}

/// Everything the forked child needs, prepared before `fork` (no allocation after).
struct ChildSetup {
    setgroups: CString,
    uid_map_path: CString,
    uid_map: Vec<u8>,
    gid_map_path: CString,
    gid_map: Vec<u8>,
    /// Netlink requests (each a complete message), sent in order.
    netlink: Vec<Vec<u8>>,
    /// Bind-mount this file over `/etc/resolv.conf` (in a new mount namespace).
    resolv: Option<(CString, CString)>,
}

/// Makes `cmd` start in a new user + network namespace (and a mount
/// namespace with its own resolv.conf when `resolv_conf` is given) whose
/// loopback is up, before it execs. The namespace has no uplink and no rules
/// yet: see [`apply_policy`].
pub fn isolate(cmd: &mut Command, resolv_conf: Option<&Path>) {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let cstr = |s: &str| CString::new(s).unwrap_or_default();
    let setup = ChildSetup {
        setgroups: cstr("/proc/self/setgroups"),
        uid_map_path: cstr("/proc/self/uid_map"),
        uid_map: format!("{uid} {uid} 1\n").into_bytes(),
        gid_map_path: cstr("/proc/self/gid_map"),
        gid_map: format!("{gid} {gid} 1\n").into_bytes(),
        netlink: vec![link_up_lo(1)],
        resolv: resolv_conf.and_then(|p| {
            use std::os::unix::ffi::OsStrExt;
            Some((
                CString::new(p.as_os_str().as_bytes()).ok()?,
                cstr("/etc/resolv.conf"),
            ))
        }),
    };
    // SAFETY: runs in the forked child before exec; only async-signal-safe
    // system calls (unshare, open, write, close, mount, socket, send, recv)
    // on buffers prepared above; no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || setup.run());
    }
}

/// The netlink requests that install `policy`'s rules.
fn policy_messages(policy: &Policy) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut seq = 1;
    let mut rule = |c: &Cidr, prio: u32, prohibit: bool| {
        let m = rule_msg(seq, c, prio, prohibit);
        seq += 1;
        m
    };
    for c in &policy.builtin {
        out.push(rule(c, PRIO_BUILTIN, true));
    }
    for c in &policy.allow {
        out.push(rule(c, PRIO_ALLOW, false));
    }
    for c in &policy.deny {
        out.push(rule(c, PRIO_DENY, true));
    }
    out
}

/// Installs `policy`'s rules in the network namespace of process `pid`
/// (made by [`isolate`], owned by this user). Done once pasta has set up
/// the namespace's routes: the kernel checks a new route's gateway through
/// the rules, so a `none` policy in place earlier would make pasta's default
/// route fail. QEMU must not run guest code before this returns.
///
/// A forked helper joins the namespaces (a multi-threaded process cannot
/// join a user namespace), sends the requests and exits without exec.
pub fn apply_policy(pid: u32, policy: &Policy) -> Result<(), IsolationError> {
    let open = |kind: &str| {
        let path = format!("/proc/{pid}/ns/{kind}");
        std::fs::File::open(&path).map_err(|e| IsolationError::Io(format!("open {path}"), e))
    };
    let (user, net) = (open("user")?, open("net")?);
    let messages = policy_messages(policy);
    let (user_fd, net_fd) = {
        use std::os::fd::AsRawFd;
        (user.as_raw_fd(), net.as_raw_fd())
    };
    // Never exec'd: the helper exits from `pre_exec`.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: runs in the forked child; only async-signal-safe system calls
    // (setns, socket, send, recv, close, _exit) on buffers prepared above.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(user_fd, libc::CLONE_NEWUSER) != 0
                || libc::setns(net_fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            send_all(&messages)?;
            libc::_exit(0);
        });
    }
    let status = cmd
        .spawn()
        .and_then(|mut c| c.wait())
        .map_err(|e| IsolationError::Io("install the guest's network rules".into(), e))?;
    drop((user, net));
    if !status.success() {
        return Err(IsolationError::Pasta(format!(
            "the rule helper failed ({status})"
        )));
    }
    Ok(())
}

/// Sends netlink requests on a fresh socket, stopping at the first refusal
/// (async-signal-safe).
fn send_all(messages: &[Vec<u8>]) -> std::io::Result<()> {
    // SAFETY: plain system calls on valid buffers.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for msg in messages {
            if let Err(e) = netlink_call(fd, msg) {
                libc::close(fd);
                return Err(e);
            }
        }
        libc::close(fd);
    }
    Ok(())
}

impl ChildSetup {
    fn run(&self) -> std::io::Result<()> {
        let mut flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNET;
        if self.resolv.is_some() {
            flags |= libc::CLONE_NEWNS;
        }
        // SAFETY: plain system calls on valid, NUL-terminated buffers.
        unsafe {
            if libc::unshare(flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            write_file(&self.setgroups, b"deny")?;
            write_file(&self.uid_map_path, &self.uid_map)?;
            write_file(&self.gid_map_path, &self.gid_map)?;
            if let Some((src, dst)) = &self.resolv {
                // Keep the bind mount in this namespace only.
                if libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) != 0
                    || libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        send_all(&self.netlink)
    }
}

/// Writes `data` to `path` (async-signal-safe).
unsafe fn write_file(path: &CString, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: valid NUL-terminated path and buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

/// Sends one netlink request and reads its acknowledgement (async-signal-safe).
unsafe fn netlink_call(fd: libc::c_int, msg: &[u8]) -> std::io::Result<()> {
    let mut buf = [0u8; 1024];
    // SAFETY: valid buffers of the given lengths.
    unsafe {
        if libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) != msg.len() as isize {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // nlmsghdr (16 bytes), type NLMSG_ERROR = 2, then the error code.
        if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == 2 {
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            if code != 0 {
                return Err(std::io::Error::from_raw_os_error(-code));
            }
            return Ok(());
        }
    }
    // An unexpected answer; no allocation here (this runs after fork).
    Err(std::io::Error::from_raw_os_error(libc::EPROTO))
}

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWRULE: u16 = 32;
const FRA_DST: u16 = 1;
const FRA_PRIORITY: u16 = 6;
const FR_ACT_TO_TBL: u8 = 1;
const FR_ACT_PROHIBIT: u8 = 8;
const RT_TABLE_MAIN: u8 = 254;

fn nl_message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = 16 + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// RTM_NEWLINK: set `IFF_UP` on interface `index` (the loopback is 1 in a new namespace).
fn link_up_lo(seq: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.push(libc::AF_UNSPEC as u8);
    body.push(0);
    body.extend_from_slice(&0u16.to_ne_bytes());
    body.extend_from_slice(&1i32.to_ne_bytes());
    body.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    body.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    nl_message(RTM_NEWLINK, 0, seq, &body)
}

/// RTM_NEWRULE: `to CIDR prohibit` or `to CIDR lookup main`, at `prio`.
fn rule_msg(seq: u32, c: &Cidr, prio: u32, prohibit: bool) -> Vec<u8> {
    let (family, addr): (u8, Vec<u8>) = match c.addr() {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let mut body = vec![
        family,
        c.prefix(),
        0,
        0,
        if prohibit { 0 } else { RT_TABLE_MAIN },
        0,
        0,
        if prohibit {
            FR_ACT_PROHIBIT
        } else {
            FR_ACT_TO_TBL
        },
    ];
    // fib_rule_hdr's `flags` (u32).
    body.extend_from_slice(&0u32.to_ne_bytes());
    if c.prefix() > 0 {
        attr(&mut body, FRA_DST, &addr);
    }
    attr(&mut body, FRA_PRIORITY, &prio.to_ne_bytes());
    nl_message(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, seq, &body)
}

/// pasta's arguments to attach to process `pid`'s namespaces: forward host
/// `127.0.0.1:host_port` to `127.0.0.1:ns_port` inside, the namespace's
/// `127.0.0.1:<p>` to the host's for each of `host_ports`, nothing else.
pub fn pasta_args(
    pid: u32,
    host_port: u16,
    ns_port: u16,
    host_ports: &[u16],
    pidfile: &Path,
    dns_forward: bool,
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--foreground".into(),
        "--quiet".into(),
        "--config-net".into(),
        "--no-map-gw".into(),
    ];
    if nix::unistd::geteuid().is_root() {
        // As root pasta drops to `nobody`, which cannot open the namespaces
        // of a root-owned QEMU: stay root (unprivileged users need nothing).
        a.extend(["--runas".into(), "0".into()]);
    }
    if dns_forward {
        a.extend(["--dns-forward".into(), DNS_FORWARD_ADDR.into()]);
    }
    // pasta's defaults forward every port (`auto`): always explicit.
    a.extend([
        "--tcp-ports".into(),
        format!("127.0.0.1/{host_port}:{ns_port}"),
        "--udp-ports".into(),
        "none".into(),
        "--tcp-ns".into(),
        if host_ports.is_empty() {
            "none".into()
        } else {
            host_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        },
        "--udp-ns".into(),
        "none".into(),
        "--pid".into(),
        pidfile.to_string_lossy().into_owned(),
        pid.to_string(),
    ]);
    a
}

/// A free port on the host's 127.0.0.1 (free when asked; pasta may still
/// lose a race for it, and the caller then asks again).
pub fn free_loopback_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn outbound_closes_the_builtins_and_the_host() {
        let p = Policy::new(
            NetworkMode::Outbound,
            &[c("10.0.0.0/8")],
            &[c("10.1.0.0/16"), c("169.254.169.254/32")],
            &[ip("192.0.2.2"), ip("fd00::2")],
        );
        assert!(p.permits(ip("198.51.100.1")));
        assert!(
            !p.permits(ip("169.254.169.254")),
            "allow never re-opens link-local"
        );
        assert!(!p.permits(ip("192.0.2.2")));
        assert!(p.permits(ip("192.0.2.3")));
        assert!(!p.permits(ip("fd00::2")));
        assert!(!p.permits(ip("fe80::1")));
        assert!(!p.permits(ip("10.2.3.4")));
        assert!(p.permits(ip("10.1.3.4")));
    }

    #[test]
    fn none_opens_only_the_allowed() {
        let p = Policy::new(NetworkMode::None, &[], &[c("198.51.100.0/24")], &[]);
        assert!(p.permits(ip("198.51.100.1")));
        assert!(!p.permits(ip("203.0.113.1")));
        assert!(!p.permits(ip("2001:db8::1")));
    }

    #[test]
    fn nameservers() {
        assert_eq!(
            first_ipv4_nameserver("# x\nsearch a\nnameserver 127.0.0.53\nnameserver 1.1.1.1\n"),
            Some(ip("127.0.0.53"))
        );
        // slirp skips IPv6 resolvers.
        assert_eq!(
            first_ipv4_nameserver("nameserver fe80::1%eth0\nnameserver 192.0.2.53\n"),
            Some(ip("192.0.2.53"))
        );
        assert_eq!(first_ipv4_nameserver("nameserver 2001:db8::53"), None);
        assert_eq!(first_ipv4_nameserver(""), None);
    }

    #[test]
    fn dns_goes_through_pasta_whenever_the_policy_closes_the_resolver() {
        let outbound = Policy::new(
            NetworkMode::Outbound,
            &[c("10.0.0.0/8")],
            &[],
            &[ip("192.0.2.2"), ip("192.168.122.1")],
        );
        for closed in [
            "127.0.0.53",      // systemd-resolved
            "169.254.169.253", // AWS
            "169.254.169.254", // GCE
            "192.168.122.1",   // dnsmasq on a host bridge
            "10.255.255.53",   // in network_deny
        ] {
            assert!(
                needs_dns_forward(Some(ip(closed)), &outbound),
                "{closed} is closed to the guest: forward"
            );
        }
        assert!(!needs_dns_forward(Some(ip("198.51.100.53")), &outbound));
        assert!(needs_dns_forward(None, &outbound), "no IPv4 resolver");
        let none = Policy::new(NetworkMode::None, &[], &[c("198.51.100.53/32")], &[]);
        assert!(!needs_dns_forward(Some(ip("198.51.100.53")), &none));
        assert!(needs_dns_forward(Some(ip("203.0.113.53")), &none));
    }

    #[test]
    fn cloud_metadata_services_are_built_in_denials() {
        let p = Policy::new(
            NetworkMode::Outbound,
            &[],
            &[c("100.64.0.0/10"), c("fd00::/8")],
            &[],
        );
        for meta in ["169.254.169.254", "fd00:ec2::254", "100.100.100.200"] {
            assert!(!p.permits(ip(meta)), "{meta} open");
        }
        assert!(p.permits(ip("100.100.100.201")));
        assert!(p.permits(ip("fd00:ec2::253")));
    }

    #[test]
    fn rule_messages_are_well_formed() {
        let m = rule_msg(7, &c("169.254.0.0/16"), 100, true);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(m.len() % 4, 0);
        assert_eq!(m[16..24], [libc::AF_INET as u8, 16, 0, 0, 0, 0, 0, 8]);
        let all = rule_msg(8, &c("::/0"), 300, true);
        assert_eq!(all.len(), 16 + 12 + 8, "no destination attribute for /0");
    }

    #[test]
    fn pasta_never_gets_its_forward_everything_defaults() {
        let a = pasta_args(42, 40000, 2222, &[], Path::new("/j/pasta.pid"), false);
        let after = |k: &str| a[a.iter().position(|x| x == k).unwrap() + 1].clone();
        assert_eq!(after("--tcp-ports"), "127.0.0.1/40000:2222");
        assert_eq!(after("--udp-ports"), "none");
        assert_eq!(after("--tcp-ns"), "none");
        assert_eq!(after("--udp-ns"), "none");
        assert!(a.contains(&"--no-map-gw".to_string()));
        assert_eq!(a.last().unwrap(), "42");
        let b = pasta_args(42, 40000, 2222, &[8080, 9], Path::new("/p"), true);
        assert!(b.contains(&"8080,9".to_string()));
        assert!(b.contains(&DNS_FORWARD_ADDR.to_string()));
    }
}

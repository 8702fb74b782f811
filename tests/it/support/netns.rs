//! Network namespaces that a test creates for itself (root only), standing
//! in for "somewhere else on the network": a remote server at a
//! documentation address, a cloud metadata service at 169.254.169.254, a
//! fake forge. Tests must never send traffic anywhere but loopback and
//! namespaces made here.
//!
//! ```ignore
//! let ns = netns::create("forge", "198.51.100.1".parse().unwrap());
//! let listener = ns.listen(80); // std TcpListener bound at 198.51.100.1:80 inside `ns`
//! ```
//!
//! Each namespace gets a veth pair: the namespace side carries `addr/32` and a
//! default route out of the pair; the host side has no address and a `/32`
//! route to `addr`, so the host (and whatever the host forwards, such as a
//! guest's outbound connections) reaches `addr`. Everything is removed when
//! the handle is dropped. Two handles with the same address cannot coexist
//! (the host route would be ambiguous): within one test process `create`
//! waits until the other handle is dropped.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};

/// Addresses held by live handles in this process, and a signal when one is released.
static HELD: Mutex<Option<HashSet<Ipv4Addr>>> = Mutex::new(None);
static RELEASED: Condvar = Condvar::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);
/// The cross-process locks of the addresses held in this process.
static ADDRESS_LOCKS: Mutex<Vec<(Ipv4Addr, nix::fcntl::Flock<std::fs::File>)>> =
    Mutex::new(Vec::new());

/// A network namespace with one address, reachable from the host. Removed on drop.
pub struct Netns {
    /// The namespace's name (`ip netns` name; unique per process and call).
    pub name: String,
    /// Its address (also the host's `/32` route into it).
    pub addr: Ipv4Addr,
    host_if: String,
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates a namespace named after `name` with the single address `addr`,
/// reachable from the host. Requires root. Waits while another handle in this
/// process holds `addr`.
pub fn create(name: &str, addr: Ipv4Addr) -> Netns {
    {
        let mut held = HELD.lock().unwrap();
        loop {
            let set = held.get_or_insert_with(HashSet::new);
            if !set.contains(&addr) {
                set.insert(addr);
                break;
            }
            held = RELEASED.wait(held).unwrap();
        }
    }
    // Other test processes on this machine (a second checkout's tests, a
    // benchmark) share the host's routing table: hold `addr` across
    // processes too, for as long as the handle lives.
    let lock = std::fs::File::create(format!("/tmp/solstice-test-netns-{addr}.lock"))
        .expect("create the address's lock file");
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map(|l| ADDRESS_LOCKS.lock().unwrap().push((addr, l)))
        .map_err(|(_, e)| e)
        .expect("lock the address");
    remove_stale();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    // Interface names are limited to 15 bytes: "sn" + pid (hex, <= 6) + n + side.
    let host_if = format!("sn{pid:x}x{n}h");
    let ns_if = format!("sn{pid:x}x{n}n");
    let ns_name = format!("solstice-test-{name}-{pid}-{n}");
    // Built before the first command, so a failure below still cleans up.
    let ns = Netns {
        name: ns_name.clone(),
        addr,
        host_if: host_if.clone(),
    };
    let cidr = format!("{addr}/32");
    ip(&["netns", "add", &ns_name]);
    ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns_name,
    ]);
    ip(&["-n", &ns_name, "link", "set", "lo", "up"]);
    ip(&["-n", &ns_name, "addr", "add", &cidr, "dev", &ns_if]);
    ip(&["-n", &ns_name, "link", "set", &ns_if, "up"]);
    ip(&["-n", &ns_name, "route", "add", "default", "dev", &ns_if]);
    ip(&["link", "set", &host_if, "up"]);
    ip(&["route", "add", &cidr, "dev", &host_if]);
    ns
}

/// Removes the namespaces of test processes that died without cleaning up
/// (killed): their host routes would make `ip route add` fail for the same
/// address. Names are `solstice-test-<name>-<pid>-<n>`.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("solstice-test-") else {
            continue;
        };
        let mut parts = rest.rsplit('-');
        let (Some(_n), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

impl Netns {
    /// A TCP listener bound at `addr:port` inside the namespace (port 0: any
    /// free port; see `local_addr`). The socket stays in the namespace; accept
    /// on it from any thread.
    pub fn listen(&self, port: u16) -> TcpListener {
        let path = format!("/run/netns/{}", self.name);
        let addr = SocketAddr::new(IpAddr::V4(self.addr), port);
        // setns changes only the calling thread's namespace: do it in a
        // throw-away thread so the test's threads stay where they are.
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open the namespace");
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("setns into the test namespace");
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in the namespace: {e}"))
        })
        .join()
        .expect("listener thread")
    }

    /// Gives the host an extra address, `addr/32` on the host side of this
    /// namespace's veth pair (removed with the handle). Unlike the address
    /// of the host's default-route interface, pasta does not copy it into
    /// the namespaces it sets up: a guest's connection to it would really
    /// end on the host.
    pub fn add_host_address(&self, addr: Ipv4Addr) {
        ip(&["addr", "add", &format!("{addr}/32"), "dev", &self.host_if]);
    }

    /// `program` to be run inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end, which takes the peer
        // and the host route with it; delete the peer explicitly anyway in
        // case a process still holds the namespace open.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if let Ok(mut locks) = ADDRESS_LOCKS.lock() {
            locks.retain(|(a, _)| *a != self.addr);
        }
        if let Ok(mut held) = HELD.lock() {
            if let Some(set) = held.as_mut() {
                set.remove(&self.addr);
            }
            RELEASED.notify_all();
        }
    }
}

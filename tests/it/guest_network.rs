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
/// rules ahead of the main table (seen by `ip rule` run inside it).
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
    cmd.args(["-c", "ip rule; ip -6 rule; ip -br link show lo"]);
    netns::isolate(&mut cmd, &policy, None);
    let out = cmd.output().unwrap();
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

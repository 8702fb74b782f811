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

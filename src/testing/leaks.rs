//! Leak detection for tests: what a VM left behind under a jobs directory.

use std::path::Path;

use crate::vm::process::processes;

/// Describes every leak attributable to `jobs_dir`: QEMU and pasta (the
/// uplink of an isolated guest network) processes whose command line
/// mentions it (found through `/proc`), and any entry left inside it.
/// An empty result means nothing leaked. Zombies count: an unreaped child is a leak.
pub fn check(jobs_dir: &Path) -> Vec<String> {
    let mut leaks = Vec::new();
    let needle = jobs_dir.to_string_lossy().into_owned();
    let me = std::process::id();
    for p in processes() {
        let args = p.args_lossy();
        let is_qemu = args.first().is_some_and(|a| a.contains("qemu"));
        if is_qemu && args.iter().any(|a| a.contains(&needle)) {
            leaks.push(format!(
                "QEMU process {} still runs: {}",
                p.pid,
                args.join(" ")
            ));
        }
        let is_pasta = args
            .first()
            .is_some_and(|a| a.contains("pasta") || a.contains("passt"));
        if is_pasta && args.iter().any(|a| a.contains(&needle)) {
            leaks.push(format!(
                "pasta process {} still runs: {}",
                p.pid,
                args.join(" ")
            ));
        }
        // Zombies have an empty cmdline: report our own unreaped QEMU children.
        if args.is_empty()
            && p.is_zombie()
            && p.parent == Some(me)
            && p.comm
                .as_deref()
                .is_some_and(|c| c.starts_with("qemu-system-"))
        {
            leaks.push(format!("QEMU process {} is an unreaped zombie", p.pid));
        }
        if args.is_empty()
            && p.is_zombie()
            && p.parent == Some(me)
            && p.comm
                .as_deref()
                .is_some_and(|c| c.starts_with("pasta") || c.starts_with("passt"))
        {
            leaks.push(format!("pasta process {} is an unreaped zombie", p.pid));
        }
    }
    match std::fs::read_dir(jobs_dir) {
        Ok(rd) => {
            for e in rd.flatten() {
                leaks.push(format!("{} was left behind", e.path().display()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => leaks.push(format!("Could not read {}: {e}", jobs_dir.display())),
    }
    leaks
}

//! Leak detection for tests: what a VM left behind under a jobs directory.

use std::path::Path;

/// Describes every leak attributable to `jobs_dir`: QEMU processes whose
/// command line mentions it (found through `/proc`), and any entry left inside it.
/// An empty result means nothing leaked. Zombies count: an unreaped child is a leak.
pub fn check(jobs_dir: &Path) -> Vec<String> {
    let mut leaks = Vec::new();
    let needle = jobs_dir.to_string_lossy().into_owned();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = raw
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_qemu = args.first().is_some_and(|a| a.contains("qemu"));
            if is_qemu && args.iter().any(|a| a.contains(&needle)) {
                leaks.push(format!("QEMU process {pid} still runs: {}", args.join(" ")));
            }
            // Zombies have an empty cmdline: report our own unreaped QEMU children.
            if args.is_empty() {
                if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
                    let ours = format!(") Z {} ", std::process::id());
                    if stat.contains("(qemu-system-") && stat.contains(&ours) {
                        leaks.push(format!("QEMU process {pid} is an unreaped zombie"));
                    }
                }
            }
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

//! `solstice doctor --image NAME --boot`: boots one configured image the way
//! a job boots it (the same seed, QEMU command line, SSH readiness and step
//! executor, through [`crate::job::run_in_vm`]) and reports what a job
//! finds inside: the login, `uname -a`, the network and the tools.

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use super::Check;
use crate::cli::error::Report;
use crate::config::{Config, ImageConfig, SeedKind};
use crate::events::{Conclusion, EventSink, JobEvent, LineKind};
use crate::job::{self, JobSpec, RunError, VmRun};

/// Tools whose presence the report shows, with what their absence means.
const TOOLS: &[(&str, &str)] = &[
    (
        "git",
        "jobs that run git fail; install it in a derived image (docs/images.md)",
    ),
    (
        "gtar",
        "GNU tar is missing; the system `tar` is all steps get",
    ),
    (
        "bash",
        "steps without `shell:` run with sh, and `shell: bash` steps fail",
    ),
    (
        "node",
        "JavaScript actions cannot run; install Node.js in a derived image (docs/images.md)",
    ),
    ("python3", "`shell: python` steps fail"),
];

/// Prefix of every line the probe script prints.
const MARK: &str = "solstice-probe";

/// The probe: portable POSIX shell for busybox ash, dash, bash and ksh93
/// (illumos `/bin/sh`). Only `command -v`, `read` and parameter expansion,
/// no awk, no GNU flags; every command may be missing. Prints
/// `solstice-probe KEY VALUE` lines.
const PROBE_SH: &str = r#"p() { printf 'solstice-probe %s %s\n' "$1" "$2"; }
# tool NAME: where NAME is on PATH, else in the usual sbin directories, else nothing.
tool() {
  command -v "$1" 2>/dev/null && return 0
  for d in /usr/sbin /sbin /usr/bin /bin; do
    if [ -x "$d/$1" ]; then echo "$d/$1"; return 0; fi
  done
  return 0
}
p user "$(id 2>&1)"
p uname "$(uname -a 2>&1)"
p path "$PATH"
ip=$(tool ip)
ifc=$(tool ifconfig)
if [ -n "$ip" ]; then
  "$ip" -o -4 addr show 2>/dev/null | while read -r _ dev _ addr _; do
    case "$dev" in lo | lo:*) ;; *) p addr "$dev ${addr%/*}" ;; esac
  done
elif [ -n "$ifc" ]; then
  # illumos (`vioif0: flags=...` then `inet 10.0.2.15 netmask ...`), net-tools
  # and busybox (`eth0  Link encap...` then `inet addr:10.0.2.15 ...`).
  "$ifc" -a 2>/dev/null | while read -r a b _; do
    case "$a" in
      inet) case "$dev" in lo*) ;; *) [ -z "$dev" ] || p addr "$dev ${b#addr:}" ;; esac ;;
      *:) dev=${a%:} ;;
      *) if [ "$b" = Link ]; then dev=$a; fi ;;
    esac
  done
else
  p note "neither ip nor ifconfig found"
fi
ns=$(tool netstat)
rt=$(tool route)
if [ -n "$ip" ]; then
  "$ip" route show 2>/dev/null | while read -r a b c _; do
    if [ "$a" = default ] && [ "$b" = via ]; then p route "$c"; fi
  done
elif [ -n "$ns" ] || [ -n "$rt" ]; then
  # `netstat -rn` (illumos: `default  10.0.2.2  UG ...`; Linux: `0.0.0.0  10.0.2.2 ...`), else `route -n`.
  if [ -n "$ns" ]; then "$ns" -rn 2>/dev/null; else "$rt" -n 2>/dev/null; fi | while read -r a b _; do
    case "$a" in default | 0.0.0.0) p route "$b" ;; esac
  done
fi
for t in git gtar bash node python3; do
  w=$(command -v "$t" 2>/dev/null || true)
  case "$w" in
    /*) p tool "$t $w" ;;
    *)
      w=""
      for d in /usr/gnu/bin /opt/ooce/bin /opt/local/bin /usr/local/bin /usr/bin /bin; do
        if [ -z "$w" ] && [ -x "$d/$t" ]; then w="$d/$t"; fi
      done
      if [ -n "$w" ]; then p offpath "$t $w"; else p missing "$t"; fi
      ;;
  esac
done
p done ok
"#;

/// The built-in one-step workflow that runs the probe.
fn probe_workflow() -> String {
    let mut y = String::from(
        "jobs:\n  doctor:\n    steps:\n      - name: probe the guest\n        shell: sh\n        run: |\n",
    );
    for line in PROBE_SH.lines() {
        if !line.is_empty() {
            y.push_str("          ");
            y.push_str(line);
        }
        y.push('\n');
    }
    y
}

/// What the probe reported.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Probe {
    pub user: Option<String>,
    pub uname: Option<String>,
    pub path: Option<String>,
    /// (interface, IPv4 address) on non-loopback interfaces.
    pub addrs: Vec<(String, String)>,
    pub routes: Vec<String>,
    /// (tool, where) found on `PATH`.
    pub tools: Vec<(String, String)>,
    /// (tool, where) found outside `PATH`.
    pub off_path: Vec<(String, String)>,
    pub missing: Vec<String>,
    pub notes: Vec<String>,
    /// The script ran to its end.
    pub complete: bool,
}

impl Probe {
    /// Reads the probe's `solstice-probe KEY VALUE` lines; ignores others.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Probe {
        let mut p = Probe::default();
        for line in lines {
            let Some(rest) = line.strip_prefix(MARK).and_then(|r| r.strip_prefix(' ')) else {
                continue;
            };
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            let value = value.trim();
            let pair = || {
                let (a, b) = value.split_once(' ').unwrap_or((value, ""));
                (a.to_string(), b.trim().to_string())
            };
            match key {
                "user" => p.user = Some(value.to_string()),
                "uname" => p.uname = Some(value.to_string()),
                "path" => p.path = Some(value.to_string()),
                "addr" => p.addrs.push(pair()),
                "route" => p.routes.push(value.to_string()),
                "tool" => p.tools.push(pair()),
                "offpath" => p.off_path.push(pair()),
                "missing" => p.missing.push(value.to_string()),
                "note" => p.notes.push(value.to_string()),
                "done" => p.complete = true,
                _ => {}
            }
        }
        p
    }

    /// One report line per finding.
    pub fn checks(&self) -> Vec<Check> {
        let mut out = Vec::new();
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not reported)".into());
        out.push(Check::ok("guest user", or_unknown(&self.user)));
        out.push(Check::ok("guest uname -a", or_unknown(&self.uname)));
        out.push(Check::ok("guest PATH", or_unknown(&self.path)));
        let addrs: Vec<String> = self
            .addrs
            .iter()
            .map(|(dev, a)| format!("{a} on {dev}"))
            .collect();
        let net = match (addrs.is_empty(), self.routes.first()) {
            (false, Some(gw)) => Check::ok(
                "guest network",
                format!("{}; default route via {gw}", addrs.join(", ")),
            ),
            (false, None) => Check::warn(
                "guest network",
                format!(
                    "{}, but no default route: the guest cannot reach the forge or download anything",
                    addrs.join(", ")
                ),
            ),
            (true, _) => Check::warn(
                "guest network",
                format!(
                    "no IPv4 address on a non-loopback interface{}: DHCP did not configure the NIC (illumos: check `/etc/path_to_inst` and the NIC model), so steps cannot reach the network",
                    if self.notes.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", self.notes.join("; "))
                    }
                ),
            ),
        };
        out.push(net);
        for (tool, consequence) in TOOLS {
            let what = format!("guest {tool}");
            if let Some((_, at)) = self.tools.iter().find(|(t, _)| t == tool) {
                out.push(Check::ok(what, at.clone()));
            } else if let Some((_, at)) = self.off_path.iter().find(|(t, _)| t == tool) {
                let dir = at.rsplit_once('/').map(|(d, _)| d).unwrap_or(at);
                out.push(Check::warn(
                    what,
                    format!("{at} exists but {dir} is not on PATH for SSH sessions: {consequence}, unless steps add {dir} to PATH"),
                ));
            } else {
                out.push(Check::warn(what, format!("not found: {consequence}")));
            }
        }
        out
    }
}

/// Collects the probe's output and prints boot progress as it happens.
struct DoctorSink {
    stdout: Mutex<Vec<String>>,
    stderr: Mutex<Vec<String>>,
}

impl EventSink for DoctorSink {
    fn emit(&self, event: JobEvent) {
        match event {
            JobEvent::Phase { phase, detail } => {
                let what = phase.name();
                println!("[solstice] {what}: {detail}");
            }
            JobEvent::Line {
                step: None, text, ..
            } => println!("[solstice] {text}"),
            JobEvent::Line {
                step: Some(_),
                kind,
                text,
            } => {
                let into = if kind == LineKind::Stdout {
                    &self.stdout
                } else {
                    &self.stderr
                };
                if let Ok(mut v) = into.lock() {
                    v.push(text);
                }
            }
            _ => {}
        }
    }
}

/// Boots `image` and returns the report's lines. Every failure to boot or
/// to log in is a [`Level::Fail`] line, with the console tail printed.
pub async fn boot_checks(config: &Config, image: &ImageConfig) -> Vec<Check> {
    let what = format!("boot {}", image.name);
    println!(
        "[solstice] booting image {} with its {} seed, as a job would (timeout {} s; under TCG an illumos guest takes minutes)",
        image.name,
        match image.seed {
            SeedKind::NoCloud => "NoCloud",
            SeedKind::MetadataCpio => "metadata cpio",
        },
        image.boot_timeout.as_secs()
    );
    let accel = match crate::startup::resolve_accel(config).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{}", Report(&e));
            return vec![Check::fail(
                what,
                "no accelerator can run a guest (see above)",
            )];
        }
    };
    let wf = match crate::workflow::parse_workflow(&probe_workflow()) {
        Ok(w) => w,
        Err(e) => return vec![Check::fail(what, format!("built-in probe workflow: {e}"))],
    };
    let spec = JobSpec::own(wf, "doctor");
    let job_id = job::id::new_job_id("doctor");
    let run = VmRun {
        config,
        image,
        accel: &accel,
        job_id: &job_id,
        spec: &spec,
        runner_name: "solstice-doctor",
        observer: None,
        debug: None,
        warm: None,
    };
    let sink = DoctorSink {
        stdout: Mutex::new(Vec::new()),
        stderr: Mutex::new(Vec::new()),
    };
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let signals = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\n[solstice] interrupted: destroying the VM");
            on_signal.cancel();
        }
    });
    let result = job::run_in_vm(&run, &sink, &cancel).await;
    signals.abort();
    let report = match result {
        Ok(r) => r,
        Err(RunError::Cancelled) => return vec![Check::fail(what, "interrupted")],
        Err(e) => {
            // The error carries the console tail and where the whole log is kept.
            eprintln!("{}", Report(&e));
            return vec![Check::fail(
                what,
                "the guest did not come up over SSH (see above): fix the image or `images.*` settings before running jobs on it",
            )];
        }
    };
    let host_key = match image.seed {
        SeedKind::NoCloud => "its host key matched the one in the seed (pinned)",
        SeedKind::MetadataCpio => {
            "its host key was trusted on first use (the metadata cpio seed cannot carry one)"
        }
    };
    let mut checks = vec![Check::ok(
        what,
        format!(
            "SSH up after {:.1} s under {} as {} with the job's key; {host_key}",
            report.timings.boot_to_ssh.as_secs_f64(),
            report.accel.as_str(),
            image.ssh_user
        ),
    )];
    let stdout = sink.stdout.lock().map(|v| v.clone()).unwrap_or_default();
    let probe = Probe::parse(stdout.iter().map(String::as_str));
    if report.outcome.conclusion != Conclusion::Success || !probe.complete {
        let stderr = sink.stderr.lock().map(|v| v.clone()).unwrap_or_default();
        for l in stdout.iter().chain(stderr.iter()) {
            eprintln!("  | {l}");
        }
        checks.push(Check::fail(
            "guest probe",
            format!(
                "the probe script did not run to its end ({}; its output is above): steps would fail the same way",
                report.outcome.conclusion.as_str()
            ),
        ));
    }
    checks.extend(probe.checks());
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::doctor::Level;

    #[test]
    fn the_probe_workflow_parses_and_keeps_the_script() {
        let wf = crate::workflow::parse_workflow(&probe_workflow()).unwrap();
        let text = format!("{wf:?}");
        assert!(text.contains("solstice-probe"), "{text}");
        assert!(!PROBE_SH.contains("${{"));
    }

    #[test]
    fn probe_lines_become_checks() {
        let out = "noise\nsolstice-probe user uid=0(root) gid=0(root)\nsolstice-probe uname SunOS oi 5.11 illumos-1 i86pc i386 i86pc\nsolstice-probe path /usr/bin:/bin\nsolstice-probe addr vioif0 10.0.2.15\nsolstice-probe route 10.0.2.2\nsolstice-probe tool bash /usr/bin/bash\nsolstice-probe offpath node /opt/ooce/bin/node\nsolstice-probe missing git\nsolstice-probe done ok\n";
        let p = Probe::parse(out.lines());
        assert!(p.complete);
        assert_eq!(p.user.as_deref(), Some("uid=0(root) gid=0(root)"));
        assert_eq!(p.addrs, vec![("vioif0".into(), "10.0.2.15".into())]);
        let lines: Vec<String> = p.checks().iter().map(Check::render).collect();
        let find = |what: &str| {
            lines
                .iter()
                .find(|l| l[6..].starts_with(what))
                .unwrap_or_else(|| panic!("{what} in {lines:#?}"))
                .clone()
        };
        assert!(find("guest network:").starts_with("ok"));
        assert!(find("guest network:").contains("10.0.2.15 on vioif0; default route via 10.0.2.2"));
        assert!(find("guest bash:").ends_with(": /usr/bin/bash"));
        assert!(find("guest node:").starts_with("warn"));
        assert!(find("guest node:").contains("/opt/ooce/bin is not on PATH"));
        assert!(find("guest git:").starts_with("warn  guest git: not found"));
        assert!(find("guest python3:").contains("not found"));
        let none = Probe::parse(["solstice-probe done ok"]);
        let net = none
            .checks()
            .into_iter()
            .find(|c| c.what == "guest network")
            .unwrap();
        assert_eq!(net.level, Level::Warn);
    }

    /// The probe runs under every shell a guest may have (ksh93 is illumos's
    /// `/bin/sh`), on this Linux host, and finds its network and shell.
    #[test]
    fn the_probe_runs_under_posix_shells() {
        for shell in ["dash", "ksh93", "bash"] {
            let out = std::process::Command::new(shell)
                .args(["-e", "-c", PROBE_SH])
                .output()
                .unwrap_or_else(|e| panic!("{shell} must be installed (.ci/setup-host.sh): {e}"));
            assert!(out.status.success(), "{shell}: {out:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            let p = Probe::parse(text.lines());
            assert!(p.complete, "{shell}: {text}");
            assert!(
                p.user.as_deref().is_some_and(|u| u.contains("uid=")),
                "{text}"
            );
            assert!(p.tools.iter().any(|(t, _)| t == "bash"), "{shell}: {text}");
        }
    }

    /// Without `ip` (illumos), the probe reads `ifconfig -a` and
    /// `netstat -rn`: illumos's output under ksh93, busybox's under dash.
    #[test]
    fn without_ip_the_probe_reads_ifconfig_and_netstat() {
        const ILLUMOS_IFCONFIG: &str = "lo0: flags=2001000849<UP,LOOPBACK,RUNNING,MULTICAST,IPv4,VIRTUAL> mtu 8232 index 1\n\tinet 127.0.0.1 netmask ff000000 \nvioif0: flags=1004843<UP,BROADCAST,RUNNING,MULTICAST,DHCP,IPv4> mtu 1500 index 2\n\tinet 10.0.2.15 netmask ffffff00 broadcast 10.0.2.255\n\tether 52:54:0:12:34:56 \nlo0: flags=2002000849<UP,LOOPBACK,RUNNING,MULTICAST,IPv6,VIRTUAL> mtu 8252 index 1\n\tinet6 ::1/128 \n";
        const ILLUMOS_NETSTAT: &str = "\nRouting Table: IPv4\n  Destination           Gateway           Flags  Ref     Use     Interface\n-------------------- -------------------- ----- ----- ---------- ---------\ndefault              10.0.2.2             UG        2          0 vioif0\n10.0.2.0             10.0.2.15            U         3          0 vioif0\n127.0.0.1            127.0.0.1            UH        2          0 lo0\n";
        const BUSYBOX_IFCONFIG: &str = "eth0      Link encap:Ethernet  HWaddr 52:54:00:12:34:56\n          inet addr:10.0.2.15  Bcast:10.0.2.255  Mask:255.255.255.0\n          UP BROADCAST RUNNING MULTICAST  MTU:1500  Metric:1\n\nlo        Link encap:Local Loopback\n          inet addr:127.0.0.1  Mask:255.0.0.0\n";
        const LINUX_NETSTAT: &str = "Kernel IP routing table\nDestination     Gateway         Genmask         Flags   MSS Window  irtt Iface\n0.0.0.0         10.0.2.2        0.0.0.0         UG        0 0          0 eth0\n10.0.2.0        0.0.0.0         255.255.255.0   U         0 0          0 eth0\n";
        use std::os::unix::fs::PermissionsExt;
        let script = PROBE_SH.replace("ip=$(tool ip)", "ip=");
        assert_ne!(script, PROBE_SH);
        for (shell, ifconfig, netstat, dev) in [
            ("ksh93", ILLUMOS_IFCONFIG, ILLUMOS_NETSTAT, "vioif0"),
            ("dash", BUSYBOX_IFCONFIG, LINUX_NETSTAT, "eth0"),
        ] {
            let bin = tempfile::tempdir().unwrap();
            for (name, text) in [("ifconfig", ifconfig), ("netstat", netstat)] {
                let f = bin.path().join(name);
                std::fs::write(&f, format!("#!/bin/sh\ncat <<'EOF'\n{text}EOF\n")).unwrap();
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            let path = format!("{}:/usr/bin:/bin", bin.path().display());
            let out = std::process::Command::new(shell)
                .args(["-e", "-c", &script])
                .env("PATH", path)
                .output()
                .unwrap_or_else(|e| panic!("{shell} must be installed: {e}"));
            assert!(out.status.success(), "{shell}: {out:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            let p = Probe::parse(text.lines());
            assert_eq!(
                p.addrs,
                vec![(dev.to_string(), "10.0.2.15".to_string())],
                "{shell}: {text}"
            );
            assert_eq!(p.routes, vec!["10.0.2.2".to_string()], "{shell}: {text}");
            assert!(p.complete, "{text}");
        }
    }
}

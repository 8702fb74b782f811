//! `vmactions/<os>-vm` and `cross-platform-actions/action` steps, built in.
//! Pure: this plans the step; the caller runs the script.
//!
//! These actions boot a VM of another OS inside a Linux job and run the
//! step's `prepare:` and `run:` there over SSH. A Solstice job already runs
//! in a VM of the image's OS, so when the image is of the OS the action
//! wants, the step runs its scripts in place: `prepare`, then `run`, each in
//! its own shell from the workspace (as vmactions runs them, each in a fresh
//! `sh` that first changes to `$GITHUB_WORKSPACE`), with the job's
//! environment. The inputs that steer the VM (`mem`, `sync`, `release`, ...)
//! have nothing to steer and are ignored, with a notice. Users migrate by
//! changing only `runs-on:`.

use indexmap::IndexMap;

use crate::config::GuestOs;

/// Whether `uses` (as written, with or without `@ref`) names a VM action:
/// `vmactions/<os>-vm` for any `<os>`, or `cross-platform-actions/action`.
/// Case-insensitive; a `https://host/` prefix is allowed.
pub fn is_vm_action(uses: &str) -> bool {
    action_of(uses).is_some()
}

/// What the step runs, and what the log should say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmActionsPlan {
    /// A POSIX shell script: `prepare` then `run`, each in a subshell that
    /// first enters `$GITHUB_WORKSPACE`. Meant to run with `-e` (vmactions
    /// runs both with `set -e`), so a failure in `prepare` stops the step
    /// before `run`.
    pub script: String,
    /// Run the script with `sh` (`usesh: true`, `shell: sh`); otherwise with
    /// the image's default shell.
    pub use_sh: bool,
    /// Lines for the step's log (inputs ignored, root, nothing to run).
    pub notices: Vec<String>,
}

/// The VM action `uses` names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum VmAction {
    /// `vmactions/<os>-vm`: the `<os>`, lower-cased.
    VmActions(String),
    /// `cross-platform-actions/action`.
    CrossPlatform,
}

fn action_of(uses: &str) -> Option<VmAction> {
    let u = uses.trim().to_ascii_lowercase();
    let u = ["https://", "http://"]
        .iter()
        .find_map(|s| u.strip_prefix(s))
        .map_or(u.as_str(), |rest| {
            rest.split_once('/').map_or("", |(_, r)| r)
        });
    let name = u
        .split_once('@')
        .map_or(u, |(n, _)| n)
        .trim_end_matches('/');
    if name == "cross-platform-actions/action" {
        return Some(VmAction::CrossPlatform);
    }
    let os = name.strip_prefix("vmactions/")?.strip_suffix("-vm")?;
    (!os.is_empty() && os.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| VmAction::VmActions(os.to_string()))
}

/// The OS a VM action asks for: its name for people, and the guest it
/// needs (`None`: Solstice has no guest of that OS).
fn target(os: &str) -> (String, Option<GuestOs>) {
    let illumos = |name: &str| (name.to_string(), Some(GuestOs::Illumos));
    match os {
        "omnios" => illumos("OmniOS"),
        "openindiana" => illumos("OpenIndiana"),
        "smartos" => illumos("SmartOS"),
        "tribblix" => illumos("Tribblix"),
        "illumos" => illumos("illumos"),
        // Solaris itself is not illumos, but its jobs build for the same
        // family; an illumos image is the closest Solstice offers.
        "solaris" => illumos("Solaris"),
        "freebsd" => ("FreeBSD".into(), None),
        "openbsd" => ("OpenBSD".into(), None),
        "netbsd" => ("NetBSD".into(), None),
        "dragonflybsd" | "dragonfly" => ("DragonFly BSD".into(), None),
        "midnightbsd" => ("MidnightBSD".into(), None),
        "ghostbsd" => ("GhostBSD".into(), None),
        "haiku" => ("Haiku".into(), None),
        other => (other.to_string(), None),
    }
}

/// vmactions inputs that steer the VM or the copy in and out of it; they
/// have nothing to do here.
pub const VMACTIONS_IGNORED: [&str; 17] = [
    "release",
    "arch",
    "mem",
    "cpu",
    "nat",
    "sync",
    "copyback",
    "debug",
    "data-dir",
    "cache-dir",
    "sync-time",
    "disable-cache",
    "cache-after-prepare",
    "debug-on-error",
    "vnc-password",
    "custom-shell-name",
    "disk",
];

/// vmactions inputs read here or ignored without a word (`osname` repeats
/// the action's name; `token` only locates VM images).
pub const VMACTIONS_USED: [&str; 6] = ["prepare", "run", "usesh", "envs", "osname", "token"];

/// cross-platform-actions inputs that steer the VM.
pub const CPA_IGNORED: [&str; 8] = [
    "architecture",
    "version",
    "memory",
    "cpu_count",
    "hypervisor",
    "image_url",
    "sync_files",
    "shutdown_vm",
];

pub const CPA_USED: [&str; 4] = ["operating_system", "run", "shell", "environment_variables"];

/// Plans a VM action step on this image. `with` = the step's evaluated
/// `with:` (keys lower-cased), `os` = the image's guest OS, `root` = whether
/// the image's SSH user is root, `image_labels` = the image's labels (for
/// the mismatch message). `Err` = the step's failure message.
pub fn plan(
    uses: &str,
    with: &IndexMap<String, String>,
    os: GuestOs,
    root: bool,
    image_labels: &[String],
) -> Result<VmActionsPlan, String> {
    let action = action_of(uses).ok_or_else(|| {
        format!(
            "`uses: {}` is not a vmactions or cross-platform-actions step",
            uses.trim()
        )
    })?;
    let name = uses.trim().split_once('@').map_or(uses.trim(), |(n, _)| n);
    let get = |k: &str| with.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    // Scripts as written (a here-document may need its exact text).
    let script_of = |k: &str| {
        with.get(k)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    };
    let (wanted, prepare, run, use_sh, used, ignored): (_, _, _, _, &[&str], &[&str]) =
        match &action {
            VmAction::VmActions(os) => (
                os.clone(),
                script_of("prepare"),
                script_of("run"),
                get("usesh").is_some_and(|v| v.eq_ignore_ascii_case("true")),
                &VMACTIONS_USED,
                &VMACTIONS_IGNORED,
            ),
            VmAction::CrossPlatform => {
                let Some(os) = get("operating_system") else {
                    return Err(format!(
                        "`{name}` needs `with: operating_system:` (for example `omnios`) to know which OS the step wants"
                    ));
                };
                (
                    os.to_ascii_lowercase(),
                    None,
                    script_of("run"),
                    get("shell").is_some_and(|v| v.eq_ignore_ascii_case("sh")),
                    &CPA_USED,
                    &CPA_IGNORED,
                )
            }
        };
    let (os_name, needs) = target(&wanted);
    if needs != Some(os) {
        return Err(mismatch(name, &wanted, &os_name, needs, os, image_labels));
    }

    let mut notices = Vec::new();
    let given_ignored: Vec<String> = with
        .keys()
        .filter(|k| ignored.contains(&k.as_str()))
        .map(|k| format!("`{k}`"))
        .collect();
    if !given_ignored.is_empty() {
        notices.push(format!(
            "{name} runs natively on this {} image, not in a VM of its own; ignored: {}",
            os.runner_os(),
            given_ignored.join(", ")
        ));
    }
    let env_input = match action {
        VmAction::VmActions(_) => "envs",
        VmAction::CrossPlatform => "environment_variables",
    };
    if get(env_input).is_some() {
        notices.push(format!(
            "`{env_input}` is not needed: the step sees the job's and the step's environment as it is"
        ));
    }
    if action == VmAction::CrossPlatform
        && get("shell").is_some_and(|v| v.eq_ignore_ascii_case("bash"))
    {
        notices.push("`shell: bash`: the step runs with the image's default shell".into());
    }
    let unexpected: Vec<String> = with
        .keys()
        .filter(|k| !used.contains(&k.as_str()) && !ignored.contains(&k.as_str()))
        .map(|k| format!("'{k}'"))
        .collect();
    if !unexpected.is_empty() {
        let valid: Vec<String> = used
            .iter()
            .chain(ignored)
            .map(|k| format!("'{k}'"))
            .collect();
        notices.push(format!(
            "Unexpected input(s) {}, valid inputs are [{}]",
            unexpected.join(", "),
            valid.join(", ")
        ));
    }
    if !root {
        let how = match os {
            GuestOs::Illumos => "`pfexec` or `sudo`",
            GuestOs::Linux => "`sudo`",
        };
        notices.push(format!(
            "{name} runs `prepare` and `run` as root; here they run as this image's SSH user, \
             which is not root: prefix the commands that need root with {how}"
        ));
    }
    if prepare.is_none() && run.is_none() {
        notices.push(format!(
            "Nothing to run: the step gives {name} neither `prepare:` nor `run:`"
        ));
    }

    let mut script = format!(
        "# {name}, built in: `prepare`, then `run`, each in its own shell from the workspace.\n"
    );
    for part in [prepare, run].into_iter().flatten() {
        script.push_str("(\ncd \"$GITHUB_WORKSPACE\"\n");
        script.push_str(part);
        if !part.ends_with('\n') {
            script.push('\n');
        }
        script.push_str(")\n");
    }
    if prepare.is_none() && run.is_none() {
        script.push_str(":\n");
    }
    Ok(VmActionsPlan {
        script,
        use_sh,
        notices,
    })
}

/// The step's failure when the image is not of the OS the action wants.
fn mismatch(
    name: &str,
    wanted: &str,
    os_name: &str,
    needs: Option<GuestOs>,
    os: GuestOs,
    image_labels: &[String],
) -> String {
    let this = if image_labels.is_empty() {
        format!("this job's image is a {} guest", os.runner_os())
    } else {
        let labels: Vec<String> = image_labels.iter().map(|l| format!("`{l}`")).collect();
        format!(
            "this job's image ({}) is a {} guest",
            labels.join(", "),
            os.runner_os()
        )
    };
    match needs {
        Some(family) => format!(
            "{name} is for {os_name} jobs; Solstice runs such a step directly on an {} image, \
             but {this}. Run this job on an {} image: set `runs-on:` to one of its labels, \
             for example `runs-on: {wanted}`",
            family.runner_os(),
            family.runner_os()
        ),
        None => format!(
            "{name} is for {os_name} jobs, and Solstice has no {os_name} guests \
             (it runs Linux and illumos images); {this}. Run this job on a runner \
             that can start {os_name} VMs"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> IndexMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn labels(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn which_uses_are_vm_actions() {
        for u in [
            "vmactions/omnios-vm@v1",
            "vmactions/freebsd-vm@v1.2.3",
            "VMActions/OpenIndiana-VM@main",
            "vmactions/solaris-vm",
            "  vmactions/netbsd-vm@v1 ",
            "cross-platform-actions/action@v0.29.0",
            "https://github.com/vmactions/omnios-vm@v1",
        ] {
            assert!(is_vm_action(u), "{u}");
        }
        for u in [
            "vmactions/omnios-vm/sub@v1",
            "vmactions/-vm@v1",
            "vmactions/omnios@v1",
            "someone/omnios-vm@v1",
            "cross-platform-actions/other@v1",
            "actions/checkout@v4",
            "./vmactions/omnios-vm",
        ] {
            assert!(!is_vm_action(u), "{u}");
        }
    }

    #[test]
    fn omnios_vm_on_an_illumos_image() {
        let w = with(&[
            ("usesh", "true"),
            ("prepare", "pkg install -v gcc14\n"),
            ("run", "./configure\ngmake check"),
        ]);
        let p = plan("vmactions/omnios-vm@v1", &w, GuestOs::Illumos, true, &[]).unwrap();
        assert!(p.use_sh);
        assert!(p.notices.is_empty(), "{:?}", p.notices);
        assert_eq!(
            p.script,
            "# vmactions/omnios-vm, built in: `prepare`, then `run`, each in its own shell from the workspace.\n\
             (\ncd \"$GITHUB_WORKSPACE\"\npkg install -v gcc14\n)\n\
             (\ncd \"$GITHUB_WORKSPACE\"\n./configure\ngmake check\n)\n"
        );
        // Without `usesh`, the image's default shell.
        let p = plan(
            "vmactions/openindiana-vm@v1",
            &with(&[("run", "make"), ("usesh", "false")]),
            GuestOs::Illumos,
            true,
            &[],
        )
        .unwrap();
        assert!(!p.use_sh);
        assert!(p.script.ends_with("(\ncd \"$GITHUB_WORKSPACE\"\nmake\n)\n"));
        assert_eq!(p.script.matches("(\n").count(), 1, "no empty prepare part");
    }

    /// The script, run with `sh -e`, stops in `prepare` before `run`, runs
    /// both from the workspace, and a `cd` or `exit 0` in `prepare` does not
    /// leak into `run`.
    #[test]
    fn the_script_runs_prepare_then_run_and_stops_on_failure() {
        let ws = tempfile::tempdir().unwrap();
        let run = |prepare: &str, run: &str| {
            let w = with(&[("prepare", prepare), ("run", run)]);
            let p = plan("vmactions/omnios-vm@v1", &w, GuestOs::Illumos, true, &[]).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-e")
                .arg("-c")
                .arg(&p.script)
                .env("GITHUB_WORKSPACE", ws.path())
                .current_dir("/")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        let (code, out) = run("echo prepared; cd /tmp", "pwd; echo ran");
        assert_eq!(code, Some(0));
        assert_eq!(out, format!("prepared\n{}\nran\n", ws.path().display()));
        let (code, out) = run("echo one\nfalse\necho two", "echo ran");
        assert_eq!((code, out.as_str()), (Some(1), "one\n"));
        let (code, out) = run("exit 0\necho unreached", "echo ran");
        assert_eq!((code, out.as_str()), (Some(0), "ran\n"));
        let (code, _) = run("true", "exit 3");
        assert_eq!(code, Some(3));
    }

    #[test]
    fn vm_inputs_are_ignored_with_one_notice_and_envs_with_another() {
        let w = with(&[
            ("release", "r151052"),
            ("envs", "CC CFLAGS"),
            ("usesh", "true"),
            ("sync", "rsync"),
            ("copyback", "false"),
            ("mem", "8192"),
            ("osname", "omnios"),
            ("run", "make"),
            ("colour", "blue"),
        ]);
        let p = plan("vmactions/omnios-vm@v1", &w, GuestOs::Illumos, true, &[]).unwrap();
        assert_eq!(
            p.notices,
            vec![
                "vmactions/omnios-vm runs natively on this illumos image, not in a VM of its own; ignored: `release`, `sync`, `copyback`, `mem`".to_string(),
                "`envs` is not needed: the step sees the job's and the step's environment as it is".to_string(),
                format!("Unexpected input(s) 'colour', valid inputs are [{}]", VMACTIONS_USED.iter().chain(&VMACTIONS_IGNORED).map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ")),
            ]
        );
    }

    #[test]
    fn a_user_that_is_not_root_is_told_about_pfexec() {
        let p = plan(
            "vmactions/omnios-vm@v1",
            &with(&[("run", "make")]),
            GuestOs::Illumos,
            false,
            &[],
        )
        .unwrap();
        assert_eq!(
            p.notices,
            vec![
                "vmactions/omnios-vm runs `prepare` and `run` as root; here they run as this image's SSH user, which is not root: prefix the commands that need root with `pfexec` or `sudo`"
            ]
        );
    }

    #[test]
    fn nothing_to_run_is_a_notice_and_a_no_op_script() {
        let p = plan(
            "vmactions/smartos-vm@v1",
            &with(&[("run", "  ")]),
            GuestOs::Illumos,
            true,
            &[],
        )
        .unwrap();
        assert_eq!(
            p.notices,
            vec![
                "Nothing to run: the step gives vmactions/smartos-vm neither `prepare:` nor `run:`"
            ]
        );
        assert!(p.script.ends_with("\n:\n"), "{}", p.script);
    }

    #[test]
    fn cross_platform_actions() {
        let w = with(&[
            ("operating_system", "OmniOS"),
            ("version", "r151052"),
            ("shell", "sh"),
            ("environment_variables", "A B"),
            ("run", "uname -a"),
            ("memory", "5G"),
        ]);
        let p = plan(
            "cross-platform-actions/action@v0.29.0",
            &w,
            GuestOs::Illumos,
            true,
            &[],
        )
        .unwrap();
        assert!(p.use_sh);
        assert!(
            p.script
                .ends_with("(\ncd \"$GITHUB_WORKSPACE\"\nuname -a\n)\n")
        );
        assert_eq!(
            p.notices,
            vec![
                "cross-platform-actions/action runs natively on this illumos image, not in a VM of its own; ignored: `version`, `memory`".to_string(),
                "`environment_variables` is not needed: the step sees the job's and the step's environment as it is".to_string(),
            ]
        );
        let p = plan(
            "cross-platform-actions/action@v0.29.0",
            &with(&[
                ("operating_system", "omnios"),
                ("shell", "bash"),
                ("run", "x"),
            ]),
            GuestOs::Illumos,
            true,
            &[],
        )
        .unwrap();
        assert!(!p.use_sh);
        assert_eq!(
            p.notices,
            vec!["`shell: bash`: the step runs with the image's default shell"]
        );
        let e = plan(
            "cross-platform-actions/action@v0.29.0",
            &with(&[("run", "x")]),
            GuestOs::Illumos,
            true,
            &[],
        )
        .unwrap_err();
        assert!(e.contains("needs `with: operating_system:`"), "{e}");
    }

    #[test]
    fn an_illumos_action_on_a_linux_image_names_the_label_to_use() {
        let e = plan(
            "vmactions/omnios-vm@v1",
            &with(&[("run", "make")]),
            GuestOs::Linux,
            true,
            &labels(&["ubuntu-latest", "debian"]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "vmactions/omnios-vm is for OmniOS jobs; Solstice runs such a step directly on an illumos image, \
             but this job's image (`ubuntu-latest`, `debian`) is a Linux guest. \
             Run this job on an illumos image: set `runs-on:` to one of its labels, for example `runs-on: omnios`"
        );
        let e = plan(
            "cross-platform-actions/action@v0.29.0",
            &with(&[("operating_system", "openindiana"), ("run", "x")]),
            GuestOs::Linux,
            true,
            &[],
        )
        .unwrap_err();
        assert!(
            e.contains("this job's image is a Linux guest")
                && e.contains("for example `runs-on: openindiana`"),
            "{e}"
        );
    }

    #[test]
    fn a_bsd_action_has_no_guest_to_run_on() {
        for (uses, os) in [
            ("vmactions/freebsd-vm@v1", GuestOs::Illumos),
            ("vmactions/netbsd-vm@v1", GuestOs::Linux),
        ] {
            let e = plan(uses, &with(&[("run", "make")]), os, true, &[]).unwrap_err();
            assert!(
                e.contains("Solstice has no") && e.contains("BSD guests"),
                "{e}"
            );
        }
        let e = plan(
            "cross-platform-actions/action@v1",
            &with(&[("operating_system", "haiku")]),
            GuestOs::Illumos,
            true,
            &[],
        )
        .unwrap_err();
        assert!(e.contains("no Haiku guests"), "{e}");
    }

    #[test]
    fn other_uses_are_refused() {
        let e = plan(
            "actions/checkout@v4",
            &IndexMap::new(),
            GuestOs::Linux,
            true,
            &[],
        )
        .unwrap_err();
        assert!(e.contains("not a vmactions"), "{e}");
    }
}

//! Shell selection for `run:` steps and the generated POSIX wrapper that sets
//! the environment, enters the working directory, runs the step script and
//! reports the file commands back. Pure functions.

use crate::guest::shell_quote;

/// A `shell:` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    #[error(
        "`shell: bash` was requested but bash is not installed in the guest; use `shell: sh` or install bash in the image"
    )]
    NoBash,
    #[error(
        "`shell: {0}` is not supported: use bash, sh, python or a command template containing {{0}}"
    )]
    Unsupported(String),
}

/// How a step script is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedShell {
    /// Argument template; each `{0}` is replaced by the script path.
    Template(Vec<String>),
    /// `python {0}`, or `python3 {0}` where `python` is missing.
    Python,
}

/// The default for `run:` steps (no `shell:`, no `defaults.run.shell`) when bash
/// is present, as on GitHub and Forgejo: **no** `pipefail`, so `make | tee log`
/// passes when `make` fails, exactly as it does there.
pub const DEFAULT_BASH_TEMPLATE: &str = "bash -e {0}";
/// An explicit `shell: bash` (GitHub's table of `steps[*].shell`).
pub const BASH_TEMPLATE: &str = "bash --noprofile --norc -e -o pipefail {0}";
/// The default when bash is missing, and `shell: sh`.
pub const SH_TEMPLATE: &str = "sh -e {0}";

fn template(s: &str) -> ResolvedShell {
    ResolvedShell::Template(s.split_whitespace().map(str::to_string).collect())
}

/// Chooses the shell for a step. `shell` is the step's value or the defaults' value.
pub fn resolve_shell(shell: Option<&str>, has_bash: bool) -> Result<ResolvedShell, ShellError> {
    match shell.map(str::trim) {
        None | Some("") => Ok(template(if has_bash {
            DEFAULT_BASH_TEMPLATE
        } else {
            SH_TEMPLATE
        })),
        Some("bash") => {
            if has_bash {
                Ok(template(BASH_TEMPLATE))
            } else {
                Err(ShellError::NoBash)
            }
        }
        Some("sh") => Ok(template(SH_TEMPLATE)),
        Some("python") => Ok(ResolvedShell::Python),
        Some(custom) if custom.contains("{0}") => {
            if custom.split_whitespace().next() == Some("bash") && !has_bash {
                return Err(ShellError::NoBash);
            }
            Ok(template(custom))
        }
        Some(other) => Err(ShellError::Unsupported(other.to_string())),
    }
}

/// Chooses the shell of a step that runs in the job container: `sh -e {0}`
/// by default (as GitHub does there, whatever the VM has); `bash` and the
/// other names as [`resolve_shell`] with bash assumed (the container has it
/// or the step fails there).
pub fn resolve_container_shell(shell: Option<&str>) -> Result<ResolvedShell, ShellError> {
    match shell.map(str::trim) {
        None | Some("") => Ok(template(SH_TEMPLATE)),
        other => resolve_shell(other, true),
    }
}

impl ResolvedShell {
    /// The arguments that run `script` (a path inside a container).
    pub fn container_argv(&self, script: &str) -> Vec<String> {
        match self {
            ResolvedShell::Template(parts) => {
                parts.iter().map(|p| p.replace("{0}", script)).collect()
            }
            ResolvedShell::Python => vec!["sh".into(), "-c".into(), self.command(script)],
        }
    }

    /// File extension of the step script.
    pub fn extension(&self) -> &'static str {
        match self {
            ResolvedShell::Python => "py",
            ResolvedShell::Template(t) if t.first().is_some_and(|p| p.starts_with("python")) => {
                "py"
            }
            ResolvedShell::Template(_) => "sh",
        }
    }

    /// Shell code (for the wrapper) that runs `script`.
    pub fn command(&self, script: &str) -> String {
        let q = shell_quote(script);
        match self {
            ResolvedShell::Python => format!(
                "if command -v python >/dev/null 2>&1; then python {q}; else python3 {q}; fi"
            ),
            ResolvedShell::Template(parts) => parts
                .iter()
                .map(|p| shell_quote(&p.replace("{0}", script)))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// Whether `name` can be exported by a POSIX shell.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Names of the per-step file-command files inside the step directory.
pub const FILE_COMMANDS: [&str; 5] = ["env", "output", "path", "summary", "state"];

/// Everything the wrapper needs.
#[derive(Debug, Clone)]
pub struct WrapperSpec<'a> {
    /// Absolute step directory (holds the script, the pid file and the file-command files).
    pub step_dir: &'a str,
    /// Variables to export, already merged in precedence order. Names must be valid.
    pub env: &'a [(String, String)],
    /// The image's `path_prepend` directories (first is searched first): the
    /// guest's own `PATH`, as the runner machine's `PATH` is on GitHub.
    pub image_path: &'a [String],
    /// `GITHUB_PATH` entries, first is searched first; they come before
    /// [`WrapperSpec::image_path`], as on GitHub.
    pub path_prefix: &'a [String],
    /// Absolute working directory; `None`: the wrapper does not change
    /// directory (the step's command sets its own, as `docker exec --workdir`).
    pub working_dir: Option<&'a str>,
    /// Shell code that runs the step (from [`ResolvedShell::command`]).
    pub run: &'a str,
    /// Random line printed before the file-command dump.
    pub marker: &'a str,
}

/// Bytes of each file-command file (`GITHUB_ENV`, `GITHUB_OUTPUT`, `GITHUB_PATH`,
/// `GITHUB_STEP_SUMMARY`) read back after a step; GitHub caps a step summary at
/// 1 MiB too.
pub const FILE_COMMAND_LIMIT: usize = 1 << 20;

/// Renders the step wrapper. It must be started as `exec sh wrapper` so that it
/// is the process-group leader created by sshd; when it is not (a local test
/// session), it re-executes itself through `setsid` if available. It writes
/// `-PGID` (or its bare PID when it cannot lead a group) to `pid`, so that
/// `kill -TERM $(cat pid)` stops the whole step.
pub fn render_wrapper(w: &WrapperSpec<'_>) -> String {
    let d = w.step_dir;
    let q = |s: &str| shell_quote(s);
    let mut s = String::new();
    s.push_str("# Generated by Solstice for one step (POSIX sh).\n");
    s.push_str("if ! kill -0 -$$ 2>/dev/null; then\n");
    s.push_str("  if [ -z \"${SOLSTICE_SETSID-}\" ] && command -v setsid >/dev/null 2>&1; then\n");
    s.push_str("    SOLSTICE_SETSID=1; export SOLSTICE_SETSID; exec setsid sh \"$0\"\n");
    s.push_str("  fi\nfi\nunset SOLSTICE_SETSID\n");
    s.push_str(&format!(
        "if kill -0 -$$ 2>/dev/null; then echo \"-$$\" > {p}; else echo \"$$\" > {p}; fi 2>/dev/null\n",
        p = q(&format!("{d}/pid"))
    ));
    // The wrapper holds the step's env (secrets included) and the script may hold
    // interpolated secrets: neither is left on the guest's disk for later steps.
    // The shell keeps reading this file through its open descriptor.
    s.push_str("rm -f \"$0\" 2>/dev/null\n");
    // The image's directories first, so that a `PATH` in the step's `env:`
    // replaces them (as it replaces the runner's own PATH on GitHub); the
    // job's `GITHUB_PATH` entries go in front of whatever PATH is then.
    if !w.image_path.is_empty() {
        s.push_str(&format!(
            "PATH={}:\"$PATH\"; export PATH\n",
            q(&w.image_path.join(":"))
        ));
    }
    for (k, v) in w.env {
        s.push_str(&format!("{k}={}; export {k}\n", q(v)));
    }
    if !w.path_prefix.is_empty() {
        s.push_str(&format!(
            "PATH={}:\"$PATH\"; export PATH\n",
            q(&w.path_prefix.join(":"))
        ));
    }
    if let Some(dir) = w.working_dir {
        let wd = q(dir);
        let msg = q(&format!(
            "Solstice: the working directory {dir} does not exist; create it in an earlier step or fix `working-directory`"
        ));
        s.push_str(&format!(
            "cd {wd} 2>/dev/null || {{ echo {msg} >&2; exit 1; }}\n"
        ));
    }
    s.push_str(&format!("{} </dev/null\n", w.run));
    s.push_str("solstice_status=$?\n");
    s.push_str(&format!("rm -f {}/script.* 2>/dev/null\n", q(d)));
    let m = q(w.marker);
    s.push_str(&format!("printf '\\n%s\\n' {m}\n"));
    s.push_str(&format!(
        "for solstice_f in {}; do\n",
        FILE_COMMANDS.join(" ")
    ));
    s.push_str(&format!(
        "  if [ -s {dq}/\"$solstice_f\" ]; then printf '%s %s\\n' {m} \"$solstice_f\"; dd if={dq}/\"$solstice_f\" bs={FILE_COMMAND_LIMIT} count=1 2>/dev/null; printf '\\n'; fi\n",
        dq = q(d)
    ));
    s.push_str("done\n");
    s.push_str(&format!("printf '%s end %s\\n' {m} \"$solstice_status\"\n"));
    s.push_str("exit \"$solstice_status\"\n");
    s
}

/// File-command contents reported by the wrapper after the marker line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileDump {
    pub env: String,
    pub output: String,
    pub path: String,
    pub summary: String,
    /// `GITHUB_STATE`: values for the later stages of the same action.
    pub state: String,
    /// The step's exit status as the wrapper saw it (`None` if the dump was cut short).
    pub status: Option<i32>,
}

/// Parses what follows the marker line: `MARKER name\n<content>\n` sections and
/// a final `MARKER end <status>`.
pub fn parse_dump(dump: &[u8], marker: &str) -> FileDump {
    let text = String::from_utf8_lossy(dump);
    let mut out = FileDump::default();
    let header = format!("{marker} ");
    let sep = format!("\n{marker} ");
    let mut rest: &str = &text;
    while let Some(h) = rest.strip_prefix(&header) {
        let (line, body) = h.split_once('\n').unwrap_or((h, ""));
        if let Some(status) = line.strip_prefix("end ") {
            out.status = status.trim().parse().ok();
            break;
        }
        let (content, next) = match body.find(&sep) {
            Some(i) => (&body[..i], &body[i + 1..]),
            None => (body.strip_suffix('\n').unwrap_or(body), ""),
        };
        let slot = match line {
            "env" => &mut out.env,
            "output" => &mut out.output,
            "path" => &mut out.path,
            "summary" => &mut out.summary,
            "state" => &mut out.state,
            _ => {
                rest = next;
                continue;
            }
        };
        *slot = content.to_string();
        rest = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_shell_depends_on_bash() {
        // No `shell:`: GitHub's `bash -e {0}` (no pipefail), else `sh -e {0}`.
        assert_eq!(
            resolve_shell(None, true).unwrap(),
            template(DEFAULT_BASH_TEMPLATE)
        );
        assert_eq!(
            resolve_shell(Some(" "), true).unwrap(),
            template("bash -e {0}")
        );
        assert_eq!(resolve_shell(None, false).unwrap(), template(SH_TEMPLATE));
        // Only an explicit `shell: bash` adds pipefail.
        assert_eq!(
            resolve_shell(Some("bash"), true).unwrap(),
            template("bash --noprofile --norc -e -o pipefail {0}")
        );
        assert_eq!(resolve_shell(Some("bash"), false), Err(ShellError::NoBash));
        assert_eq!(
            resolve_shell(Some("sh"), true).unwrap(),
            template(SH_TEMPLATE)
        );
        assert!(matches!(
            resolve_shell(Some("pwsh"), true),
            Err(ShellError::Unsupported(_))
        ));
        assert_eq!(
            resolve_shell(Some("perl -w {0}"), true)
                .unwrap()
                .command("/t/s.sh"),
            "perl -w /t/s.sh"
        );
    }

    #[test]
    fn extensions_and_python() {
        let py = resolve_shell(Some("python"), false).unwrap();
        assert_eq!(py.extension(), "py");
        assert!(py.command("/x.py").contains("python3 /x.py"));
        assert_eq!(resolve_shell(None, true).unwrap().extension(), "sh");
        assert_eq!(
            resolve_shell(None, true).unwrap().command("/a b/s.sh"),
            "bash -e '/a b/s.sh'"
        );
        assert_eq!(
            resolve_shell(Some("bash"), true)
                .unwrap()
                .command("/a b/s.sh"),
            "bash --noprofile --norc -e -o pipefail '/a b/s.sh'"
        );
    }

    #[test]
    fn env_names() {
        assert!(valid_env_name("A_1"));
        assert!(valid_env_name("_x"));
        assert!(!valid_env_name("1A"));
        assert!(!valid_env_name("A-B"));
        assert!(!valid_env_name(""));
    }

    #[test]
    fn wrapper_quotes_values() {
        let env = vec![("V".to_string(), "it's $HOME `x`".to_string())];
        let w = render_wrapper(&WrapperSpec {
            step_dir: "/t/s1",
            env: &env,
            image_path: &["/usr/gnu/bin".to_string(), "/opt/ooce/bin".to_string()],
            path_prefix: &["/opt/bin".to_string()],
            working_dir: Some("/w"),
            run: "sh -e /t/s1/script.sh",
            marker: "MARK",
        });
        assert!(w.contains(r"V='it'\''s $HOME `x`'; export V"), "{w}");
        assert!(w.contains("PATH=/opt/bin:\"$PATH\"; export PATH"));
        // The image's directories are the base; GITHUB_PATH goes in front.
        let image = w
            .find("PATH=/usr/gnu/bin:/opt/ooce/bin:\"$PATH\"; export PATH\n")
            .unwrap();
        let env = w.find("export V\n").unwrap();
        let github = w.find("PATH=/opt/bin:").unwrap();
        assert!(image < env && env < github, "{w}");
        assert!(w.contains("sh -e /t/s1/script.sh </dev/null"));
    }

    #[test]
    fn dump_round_trip() {
        let d = b"MARK env\nA=1\nB<<E\nx\nE\n\nMARK summary\n# hi\n\nMARK end 3\n";
        let f = parse_dump(d, "MARK");
        assert_eq!(f.env, "A=1\nB<<E\nx\nE\n");
        assert_eq!(f.summary, "# hi\n");
        assert_eq!(f.output, "");
        assert_eq!(f.status, Some(3));
        assert_eq!(parse_dump(b"MARK end 0\n", "MARK").status, Some(0));
        assert_eq!(parse_dump(b"", "MARK"), FileDump::default());
    }
}

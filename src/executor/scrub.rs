//! Before a failed job's VM is kept for debug SSH: remove from the guest
//! what the job received that could outlive it (see `docs/debug-ssh.md`).
//!
//! One POSIX `sh` script ([`script`]) runs over the job's still-open
//! session, as the job's user, and prints one `solstice-scrub` line per
//! thing it removed. It works with dash, busybox ash and illumos ksh93 with
//! their own userland (no `sed -i`, `find -delete`, `readlink -f`, `grep -P`).
//!
//! # What is removed, and why
//!
//! 1. **Processes the job's steps left running.** Every step process has
//!    the job's variables in its environment (`ACTIONS_RUNTIME_TOKEN`,
//!    which on Forgejo is the job token, `ACTIONS_CACHE_URL` with the cache
//!    lease's token, the values of `GITHUB_ENV`, `env:` with secrets), and
//!    `/proc/<pid>/environ` is a copy of them anyone with the user's rights
//!    can read. They are killed with `SIGKILL`, as GitHub's runner ends a
//!    job's orphan processes when the job ends: the job is over, its
//!    processes belong to it. Found by their environment (a `GITHUB_ENV`
//!    inside Solstice's step directories, so daemons that left the step's
//!    process group are found too) where `/proc/<pid>/environ` exists
//!    (Linux); elsewhere (illumos) by the process groups the steps recorded
//!    in their `pid` files. Processes the steps started in the job container
//!    are killed through a step's `kill` script (`docker exec <id> kill
//!    -KILL -1`: all but the container's PID 1). Processes of other users
//!    (a step's `sudo` daemon) are neither found nor killed: the user cannot
//!    read their environment, and `sudo` resets it.
//! 2. **Solstice's per-step directories, `$RUNNER_TEMP/_solstice`.** They
//!    hold the `GITHUB_ENV`, `GITHUB_OUTPUT`, `GITHUB_STATE`, `GITHUB_PATH`
//!    and `GITHUB_STEP_SUMMARY` files (values the job set, secrets
//!    included), the `script.*` and `wrapper.sh` files and `script.env` env
//!    files of steps stopped before they could remove them (the step's
//!    environment in clear), the checkout's `auth.gitconfig` (the job token)
//!    when the checkout was killed before its trap ran, the containers'
//!    `start.sh` (registry passwords) when it was killed before removing
//!    itself, the `kill` and `pid` files and the actions' unpack scratch.
//!    Nothing there helps debugging.
//! 3. **The rest of `$RUNNER_TEMP`** but `_actions` (the actions' code, to
//!    debug a failing action), `_github_workflow` (`event.json`, the event
//!    payload, to reproduce the run) and `_github_home` (the job
//!    container's `$HOME`, like the user's home). GitHub's runner empties
//!    `RUNNER_TEMP` after every job, so actions keep short-lived credentials
//!    there (registry configs, `.npmrc` files, real `actions/checkout`'s
//!    credential config).
//! 4. **Credentials in git configs.** Every `http.<url>.extraheader` (the
//!    job token as actions/checkout persists it; Solstice's own checkout
//!    never leaves it, but an `actions/checkout` run as a JavaScript action,
//!    or a step, may) and every `include.path`/`includeIf.*.path` that
//!    points to a checkout's `_solstice/<step>/auth.gitconfig`, in the
//!    repositories under `$HOME/work` (`.git/config`, submodules'
//!    `.git/modules/*/config`, worktrees' `config.worktree`) and in the
//!    global configs (`~/.gitconfig`, `$XDG_CONFIG_HOME/git/config`, the
//!    job container's `_github_home/.gitconfig`, `/etc/gitconfig` when the
//!    user may write it). With `git config --unset-all` where the guest has
//!    git, and `sed` into a copy written back with `cat` (mode and owner
//!    kept) where it has not, or where git left a line behind.
//! 5. **Registry logins of interrupted image pulls**: the containers' start
//!    script logs in with `docker --config $(mktemp -d)` and removes that
//!    directory after the pull; a script killed in between leaves a
//!    `tmp.*/config.json` with `"auths"` in `${TMPDIR:-/tmp}`.
//!
//! # What is left
//!
//! - The workspace and the checkout (debugging needs them), without the
//!   credentials above.
//! - `_actions`, `_github_workflow`, `_github_home` and the tool cache
//!   `$HOME/_tool`.
//! - The job container and the service containers, running (the state of a
//!   container job is in them); only the step processes inside are killed.
//!   Their environment is what the workflow put in `container.env` and
//!   `services.<id>.env` (visible to `docker inspect`).
//! - Files the job wrote itself outside these places (`~/.docker/config.json`
//!   after its own `docker login`, `~/.git-credentials`, `~/.npmrc`, …):
//!   Solstice writes none of them and cannot tell them from the job's
//!   other files. Jobs that received secrets other than the job token are
//!   not kept unless the operator allows it (`with_secrets`).
//! - The job's SSH key in `authorized_keys` (the debug gateway logs in
//!   with it).
//!
//! A process of the job still running after three rounds of `SIGKILL`, or
//! a file of 2, 3 or 4 that cannot be removed or cleaned (even with `sudo
//! -n` where the user has it), fails the clean-up (the VM is then destroyed
//! rather than kept). The script is idempotent: a second run removes nothing.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::guest::{GuestSession, OutputChunk, Stream, shell_quote};
use crate::job::RunnerInfo;

/// Longest wait for the clean-up script (it walks the work directory).
const SCRUB_LIMIT: Duration = Duration::from_secs(180);

/// What [`scrub_for_debug`] did, for the job log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scrubbed {
    /// What was removed, in words ("the job token in the checkout's git config", …).
    pub removed: Vec<String>,
}

/// Why the clean-up failed (the VM is then not kept).
#[derive(Debug, thiserror::Error)]
#[error("could not clean the guest before keeping it: {0}")]
pub struct ScrubError(pub String);

/// Removes the job's secrets that Solstice wrote into the guest (see the
/// module documentation for the list), in one exec over `session`.
pub async fn scrub_for_debug(
    session: &dyn GuestSession,
    runner: &RunnerInfo,
) -> Result<Scrubbed, ScrubError> {
    let cmd = format!("exec sh -c {}", shell_quote(&script(runner)));
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
    let collect = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        while let Some(c) = rx.recv().await {
            match c.stream {
                Stream::Stdout => out.extend_from_slice(&c.data),
                Stream::Stderr => err.extend_from_slice(&c.data),
            }
        }
        (out, err)
    };
    let work = async { tokio::join!(session.exec(&cmd, b"", tx), collect) };
    let (status, (out, err)) = tokio::time::timeout(SCRUB_LIMIT, work).await.map_err(|_| {
        ScrubError(format!(
            "the clean-up script did not finish within {} s",
            SCRUB_LIMIT.as_secs()
        ))
    })?;
    let status = status.map_err(|e| ScrubError(e.to_string()))?;
    let out = String::from_utf8_lossy(&out);
    let removed = parse(&out);
    if status != 0 {
        let err = String::from_utf8_lossy(&err);
        let why = err
            .lines()
            .filter_map(|l| l.strip_prefix("solstice-scrub-failed "))
            .collect::<Vec<_>>()
            .join("; ");
        let why = if why.is_empty() {
            format!(
                "the clean-up script exited with {status}: {}",
                err.trim().lines().last().unwrap_or("no message")
            )
        } else {
            why
        };
        return Err(ScrubError(why));
    }
    Ok(Scrubbed { removed })
}

/// The words for the job log of what the script reports (`solstice-scrub
/// KIND [DETAIL]` lines), in the script's order.
fn parse(out: &str) -> Vec<String> {
    let mut removed = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("solstice-scrub ") else {
            continue;
        };
        let (kind, detail) = rest.split_once(' ').unwrap_or((rest, ""));
        let words = match kind {
            "processes" => format!(
                "{detail} process(es) the job's steps left running (their environment held the job's variables and tokens)"
            ),
            "container-processes" => {
                "the processes the job's steps left running in the job container".to_string()
            }
            "step-files" => "Solstice's per-step files in $RUNNER_TEMP/_solstice (the GITHUB_ENV, GITHUB_OUTPUT, GITHUB_STATE, GITHUB_PATH and GITHUB_STEP_SUMMARY files, step scripts and environment files, the checkout's token file)".to_string(),
            "temp" => format!("{detail} other file(s) in $RUNNER_TEMP"),
            "git-header" => format!("a credential header (http.extraheader) in the git config {detail}"),
            "git-include" => format!("the include of the checkout's token file in the git config {detail}"),
            "registry-login" => format!("a container registry login left by an interrupted pull ({detail})"),
            _ => continue,
        };
        removed.push(words);
    }
    removed
}

/// The clean-up script (POSIX `sh`), for the guest user's base directory of
/// `runner` (as the job's probe: `runner.home`, else `$HOME`).
pub fn script(runner: &RunnerInfo) -> String {
    let home = match &runner.home {
        Some(h) => shell_quote(h),
        None => "\"$HOME\"".to_string(),
    };
    let path = if runner.path_prepend.is_empty() {
        String::new()
    } else {
        format!(
            "PATH={}:\"$PATH\"; export PATH\n",
            shell_quote(&runner.path_prepend.join(":"))
        )
    };
    format!(
        "# Generated by Solstice: clean-up of a failed job's guest before debug SSH.\numask 077\n{path}H={home}\n{}",
        BODY.replace("EXTRAHEADER", EXTRAHEADER_BRE)
    )
}

/// `extraheader` in any case, as a basic regular expression.
const EXTRAHEADER_BRE: &str = "[eE][xX][tT][rR][aA][hH][eE][aA][dD][eE][rR]";

/// The script after `H=<home>` (see [`script`]).
const BODY: &str = r#"T="$H/_temp"; S="$T/_solstice"; W="$H/work"
fail=
say() { printf 'solstice-scrub %s\n' "$*"; }
failed() { printf 'solstice-scrub-failed %s\n' "$*" >&2; fail=1; }
rmrf() {
  rm -rf "$1" 2>/dev/null
  if [ -e "$1" ] || [ -h "$1" ]; then sudo -n rm -rf "$1" >/dev/null 2>&1; fi
  ! [ -e "$1" ] && ! [ -h "$1" ]
}
# 1. The steps' leftover processes.
# (`tr`: busybox grep stops reading a line at its first NUL.)
marked() { tr '\000' '\n' 2>/dev/null < "$1" | grep -q -F -e "GITHUB_ENV=$S/" -e "GITHUB_ENV=/__w/_temp/_solstice/"; }
killed=0
if [ -r /proc/self/environ ]; then
  for round in 1 2 3; do
    for e in /proc/[0-9]*/environ; do
      p=${e#/proc/}; p=${p%/environ}
      [ "$p" = "$$" ] && continue
      if marked "$e"; then kill -KILL "$p" 2>/dev/null && killed=$((killed+1)); fi
    done
    sleep 1
  done
  for e in /proc/[0-9]*/environ; do
    p=${e#/proc/}; p=${p%/environ}
    [ "$p" = "$$" ] && continue
    if marked "$e"; then failed "process $p of the job is still running after SIGKILL"; fi
  done
elif [ -d "$S" ]; then
  for d in "$S"/*; do
    [ -f "$d/pid" ] || continue
    p=$(cat "$d/pid" 2>/dev/null) || continue
    case "$p" in ''|-|*[!0-9-]*|?*-*) continue;; esac
    [ "$p" = "$$" ] || [ "$p" = "-$$" ] && continue
    kill -KILL $p 2>/dev/null && killed=$((killed+1))
  done
fi
[ "$killed" -gt 0 ] && say processes "$killed"
if [ -d "$S" ]; then
  for d in "$S"/*; do
    if [ -f "$d/kill" ]; then
      sh "$d/kill" KILL >/dev/null 2>&1 && say container-processes
      break
    fi
  done
fi
# 2. Solstice's per-step directories.
if [ -e "$S" ]; then
  if rmrf "$S"; then say step-files; else failed "could not remove $S"; fi
fi
# 3. The rest of RUNNER_TEMP.
n=0
for f in "$T"/* "$T"/.[!.]* "$T"/..?*; do
  [ -e "$f" ] || [ -h "$f" ] || continue
  case "${f##*/}" in _actions|_github_workflow|_github_home) continue;; esac
  if rmrf "$f"; then n=$((n+1)); else failed "could not remove $f"; fi
done
[ "$n" -gt 0 ] && say temp "$n"
# 4. Credentials in git configs.
if command -v git >/dev/null 2>&1; then G=1; else G=; fi
hdr() { grep -i -q -e 'EXTRAHEADER[ 	]*=' "$1" 2>/dev/null; }
inc() { grep -q -e '_solstice/[^/]*/auth\.gitconfig' "$1" 2>/dev/null; }
scrub_git() {
  f=$1; h=; i=
  [ -f "$f" ] || return 0
  hdr "$f" && h=1
  inc "$f" && i=1
  [ -n "$h$i" ] || return 0
  if [ -n "$G" ]; then
    git config -f "$f" --name-only --get-regexp '^http\..*extraheader$' 2>/dev/null | while IFS= read -r k; do
      git config -f "$f" --unset-all "$k" >/dev/null 2>&1
    done
    git config -f "$f" --name-only --get-regexp '^include(if\..*)?\.path$' 2>/dev/null | while IFS= read -r k; do
      git config -f "$f" --unset-all "$k" '_solstice/[^/]*/auth\.gitconfig' >/dev/null 2>&1
    done
  fi
  if hdr "$f" || inc "$f"; then
    sed -e '/^[ 	]*EXTRAHEADER/d' \
      -e '/^[ 	]*[pP][aA][tT][hH][ 	]*=.*_solstice\/[^\/]*\/auth\.gitconfig/d' "$f" > "$f.solstice-scrub" \
      && cat "$f.solstice-scrub" > "$f"
    rm -f "$f.solstice-scrub"
  fi
  if hdr "$f" || inc "$f"; then failed "could not remove the credentials from the git config $f"; return 0; fi
  [ -n "$h" ] && say git-header "$f"
  [ -n "$i" ] && say git-include "$f"
  return 0
}
if [ -d "$W" ]; then
  find "$W" -type f -name 'config*' 2>/dev/null > "$H/.solstice-scrub-list" || :
  while IFS= read -r f; do
    case "$f" in
      */.git/config|*/.git/config.worktree|*/.git/modules/*/config|*/.git/worktrees/*/config.worktree) scrub_git "$f";;
    esac
  done < "$H/.solstice-scrub-list"
  rm -f "$H/.solstice-scrub-list"
fi
for f in "$H/.gitconfig" "$HOME/.gitconfig" "${XDG_CONFIG_HOME:-$HOME/.config}/git/config" "$T/_github_home/.gitconfig"; do
  scrub_git "$f"
done
[ -w /etc/gitconfig ] && scrub_git /etc/gitconfig
# 5. Registry logins of interrupted pulls.
for d in "${TMPDIR:-/tmp}"/tmp.*; do
  [ -f "$d/config.json" ] || continue
  grep -q '"auths"' "$d/config.json" 2>/dev/null || continue
  rmrf "$d" && say registry-login "$d"
done
if [ -n "$fail" ]; then exit 3; fi
exit 0
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GuestOs;
    use crate::guest::LocalSession;
    use crate::job::spec::RunnerArch;
    use std::path::Path;

    fn runner(home: Option<&str>) -> RunnerInfo {
        RunnerInfo {
            image: "tiny".into(),
            labels: vec![],
            os: GuestOs::Linux,
            name: "r".into(),
            arch: RunnerArch::X64,
            home: home.map(str::to_string),
            path_prepend: vec![],
            node: None,
        }
    }

    #[test]
    fn the_base_directory_and_path_are_quoted() {
        let s = script(&runner(None));
        assert!(s.contains("\nH=\"$HOME\"\n"), "{s}");
        let mut r = runner(Some("/home/o'b c"));
        r.path_prepend = vec!["/opt/my tools/bin".into(), "/x".into()];
        let s = script(&r);
        assert!(s.contains("\nH='/home/o'\\''b c'\n"), "{s}");
        assert!(
            s.contains("\nPATH='/opt/my tools/bin:/x':\"$PATH\"; export PATH\n"),
            "{s}"
        );
        // Every use of a path variable is quoted.
        for var in ["$H", "$T", "$S", "$W", "$f", "$d", "$e"] {
            for (i, _) in s.match_indices(var) {
                let before = &s[..i];
                let quoted = before.matches('"').count() % 2 == 1
                    || before.ends_with("${f##*/}".trim_end_matches(var));
                let next = s[i + var.len()..].chars().next().unwrap_or(' ');
                if next.is_ascii_alphanumeric() || next == '_' {
                    continue; // a longer name
                }
                assert!(
                    quoted,
                    "{var} unquoted at {i}: {}",
                    &s[i.saturating_sub(40)..i + 5]
                );
            }
        }
        // The command for the session runs it under sh, quoted as one word.
        let cmd = format!("exec sh -c {}", shell_quote(&s));
        assert!(cmd.starts_with("exec sh -c '# Generated"));
    }

    #[test]
    fn only_portable_tools_and_flags() {
        let s = script(&runner(None));
        for bad in [
            "sed -i",
            "-delete",
            "readlink -f",
            "grep -P",
            "[[",
            "local ",
            "function ",
            " $'",
            "echo -e",
            "mapfile",
            "<(",
            "pipefail",
            "xargs -r",
            "stat -c",
        ] {
            assert!(!s.contains(bad), "{bad} in the script");
        }
        assert!(s.contains(EXTRAHEADER_BRE));
        assert!(!s.contains("EXTRAHEADER"));
        for sh in ["dash", "busybox sh", "ksh93", "bash --posix"] {
            let mut argv = sh.split(' ').collect::<Vec<_>>();
            argv.extend(["-n", "-c", &s]);
            let Ok(out) = std::process::Command::new(argv[0])
                .args(&argv[1..])
                .output()
            else {
                continue; // not on this host
            };
            assert!(
                out.status.success(),
                "{sh} -n: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn reported_lines_become_words() {
        let out = "noise\nsolstice-scrub processes 2\nsolstice-scrub step-files\nsolstice-scrub git-header /h/work/r/r/.git/config\nsolstice-scrub unknown\nsolstice-scrub temp 3\n";
        let r = parse(out);
        assert_eq!(r.len(), 4, "{r:?}");
        assert!(r[0].starts_with("2 process(es) the job's steps left running"));
        assert!(r[1].starts_with("Solstice's per-step files"));
        assert_eq!(
            r[2],
            "a credential header (http.extraheader) in the git config /h/work/r/r/.git/config"
        );
        assert_eq!(r[3], "3 other file(s) in $RUNNER_TEMP");
    }

    const TOKEN: &str = "scrub-unit-token-9d2c";

    /// A guest home as a failed job leaves it: step files holding the token
    /// and a value the job set, a checkout whose config persisted the
    /// token, an auth include, a registry login of a killed pull, a step
    /// process still running.
    fn failed_job_home(h: &Path) -> std::process::Child {
        let w = |p: &str, c: &str| {
            let p = h.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        };
        let s = h.join("_temp/_solstice");
        w("_temp/_solstice/step-1/env", &format!("SECRET={TOKEN}\n"));
        w("_temp/_solstice/step-1/output", &format!("o={TOKEN}\n"));
        w("_temp/_solstice/step-1/pid", "-999999\n");
        w(
            "_temp/_solstice/step-2/auth.gitconfig",
            &crate::executor::checkout::auth_config("http://forge/", TOKEN),
        );
        w("_temp/_solstice/step-2/script.env", &format!("T={TOKEN}\n"));
        w(
            "_temp/other/.npmrc",
            &format!("//forge/:_authToken={TOKEN}\n"),
        );
        w("_temp/.hidden", TOKEN);
        w("_temp/_actions/o/a/sha/action.yml", "name: a\n");
        w("_temp/_github_workflow/event.json", "{}\n");
        w(
            "work/r/r/.git/config",
            &format!(
                "[core]\n\tbare = false\n[remote \"origin\"]\n\turl = http://forge/o/r.git\n[include]\n\tpath = {}/step-2/auth.gitconfig\n[http \"http://forge/\"]\n\tExtraHeader = AUTHORIZATION: basic {TOKEN}\n",
                s.display()
            ),
        );
        w(
            "work/r/r/.git/modules/lib/config",
            &format!("[http]\n\textraheader = AUTHORIZATION: basic {TOKEN}\n"),
        );
        w(
            "work/r/r/src/config",
            "not a git config: extraheader = kept\n",
        );
        w(
            "tmp/tmp.abc123/config.json",
            &format!("{{\"auths\":{{\"r\":{{\"auth\":\"{TOKEN}\"}}}}}}"),
        );
        w("tmp/tmp.keep/config.json", "{}");
        std::process::Command::new("sleep")
            .arg("300")
            .env("GITHUB_ENV", s.join("step-1/env"))
            .env("ACTIONS_RUNTIME_TOKEN", TOKEN)
            .spawn()
            .unwrap()
    }

    async fn run(script: &str, shell: &str, h: &Path) -> (u32, String, String) {
        let cmd = format!(
            "HOME={h}; TMPDIR={h}/tmp; export HOME TMPDIR; exec {shell} -c {}",
            shell_quote(script),
            h = shell_quote(h.to_str().unwrap())
        );
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
        let collect = async {
            let (mut out, mut err) = (String::new(), String::new());
            while let Some(c) = rx.recv().await {
                let t = String::from_utf8_lossy(&c.data).into_owned();
                match c.stream {
                    Stream::Stdout => out.push_str(&t),
                    Stream::Stderr => err.push_str(&t),
                }
            }
            (out, err)
        };
        let (status, (out, err)) = tokio::join!(LocalSession.exec(&cmd, b"", tx), collect);
        (status.unwrap(), out, err)
    }

    fn files_with(dir: &Path, needle: &str) -> Vec<String> {
        let out = std::process::Command::new("grep")
            .args(["-r", "-l", "-F", "-e", needle])
            .arg(dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    async fn removes_everything(shell: &str, git: bool) {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let mut child = failed_job_home(h);
        let mut s = script(&runner(Some(h.to_str().unwrap())));
        if !git {
            s = s.replace("command -v git", "command -v solstice-no-such-git");
        }
        let (status, out, err) = run(&s, shell, h).await;
        assert_eq!(status, 0, "{shell}: {out}\n{err}");
        let reaped = child.try_wait().unwrap();
        assert!(
            reaped.is_some(),
            "{shell}: the step's process still runs\n{out}\n{err}"
        );
        assert_eq!(files_with(h, TOKEN), Vec::<String>::new(), "{shell}: {out}");
        assert!(!h.join("_temp/_solstice").exists());
        assert!(h.join("_temp/_actions/o/a/sha/action.yml").is_file());
        assert!(h.join("_temp/_github_workflow/event.json").is_file());
        assert!(h.join("tmp/tmp.keep/config.json").is_file());
        assert!(
            std::fs::read_to_string(h.join("work/r/r/src/config"))
                .unwrap()
                .contains("extraheader = kept")
        );
        let cfg = std::fs::read_to_string(h.join("work/r/r/.git/config")).unwrap();
        assert!(cfg.contains("url = http://forge/o/r.git"), "{cfg}");
        assert!(!cfg.contains("auth.gitconfig"), "{cfg}");
        let removed = parse(&out);
        let text = removed.join("\n");
        for want in [
            "1 process(es)",
            "Solstice's per-step files",
            "2 other file(s) in $RUNNER_TEMP",
            "a credential header (http.extraheader) in the git config ",
            "/work/r/r/.git/modules/lib/config",
            "the include of the checkout's token file in the git config ",
            "a container registry login left by an interrupted pull",
        ] {
            assert!(text.contains(want), "{shell}: {want} missing from\n{text}");
        }
        if git {
            let got = std::process::Command::new("git")
                .args(["config", "-f"])
                .arg(h.join("work/r/r/.git/config"))
                .args(["--get", "remote.origin.url"])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got.stdout).trim(),
                "http://forge/o/r.git"
            );
        }
        // A second run finds nothing left to do.
        let (status, out, _) = run(&s, shell, h).await;
        assert_eq!(status, 0);
        assert_eq!(parse(&out), Vec::<String>::new(), "{out}");
    }

    #[tokio::test]
    async fn removes_the_token_with_git_under_dash() {
        removes_everything("dash", true).await;
    }

    #[tokio::test]
    async fn removes_the_token_without_git_under_busybox() {
        if std::process::Command::new("busybox")
            .arg("true")
            .output()
            .is_err()
        {
            return;
        }
        removes_everything("busybox sh", false).await;
    }

    #[tokio::test]
    async fn removes_the_token_without_git_under_ksh93() {
        if std::process::Command::new("ksh93")
            .arg("-c")
            .arg(":")
            .output()
            .is_err()
        {
            return;
        }
        removes_everything("ksh93", false).await;
    }

    #[tokio::test]
    async fn a_file_it_cannot_clean_fails_the_clean_up() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let cfg = h.join("work/r/r/.git/config");
        std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
        std::fs::write(&cfg, format!("[http]\n\textraheader = {TOKEN}\n")).unwrap();
        // A directory where the copy would go: sed cannot write it.
        std::fs::create_dir_all(h.join("work/r/r/.git/config.solstice-scrub/x")).unwrap();
        let s = script(&runner(Some(h.to_str().unwrap())))
            .replace("command -v git", "command -v solstice-no-such-git");
        let (status, _, err) = run(&s, "dash", h).await;
        assert_eq!(status, 3, "{err}");
        assert!(
            err.contains(
                "solstice-scrub-failed could not remove the credentials from the git config "
            ),
            "{err}"
        );
    }
}

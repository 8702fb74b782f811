//! The state directory (`daemon.state_dir`) must be writable by the user
//! that runs Solstice: checked before anything starts, with a message that
//! names the key, the directory's owner and mode, and the user.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("daemon.state_dir = {}: {problem}; {fix}", .path.display())]
pub struct StateDirError {
    /// The configured state directory.
    pub path: PathBuf,
    /// What is wrong, e.g. `cannot create files in /var/lib/solstice (owned
    /// by root, uid 0, mode 0755; Solstice runs as alice, uid 1000)`.
    pub problem: String,
    /// What to do.
    pub fix: String,
    #[source]
    pub source: io::Error,
}

/// Creates `dir` (mode 0700) if needed and checks that this process can
/// create files in it and in its `jobs/` directory, if that exists.
pub fn check_state_dir(dir: &Path) -> Result<(), StateDirError> {
    if let Err(source) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        // Name the directory that refused: the nearest one that exists.
        let blocker = dir
            .ancestors()
            .skip(1)
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"));
        let problem = if source.kind() == io::ErrorKind::AlreadyExists || dir.is_file() {
            "it exists and is not a directory".to_owned()
        } else if blocker.is_dir() {
            format!(
                "cannot create it in {} ({})",
                blocker.display(),
                owner_and_user(blocker)
            )
        } else {
            format!("cannot create it: {} is not a directory", blocker.display())
        };
        return Err(StateDirError {
            path: dir.to_path_buf(),
            problem,
            fix: fix_text(dir, blocker),
            source,
        });
    }
    for d in [dir.to_path_buf(), dir.join("jobs")] {
        if d != dir && !d.exists() {
            continue;
        }
        let probe = d.join(format!(".solstice-write-check-{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe);
        match written {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
            }
            Err(source) => {
                return Err(StateDirError {
                    path: dir.to_path_buf(),
                    problem: format!(
                        "cannot create files in {} ({})",
                        d.display(),
                        owner_and_user(&d)
                    ),
                    fix: fix_text(dir, &d),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The fix: run as the owner, give the directory to this user, or use
/// another directory.
fn fix_text(state_dir: &Path, blocker: &Path) -> String {
    let me = user_name(current_uid());
    format!(
        "run Solstice as the directory's owner, give it to user {me} (`sudo chown -R {me} {}`), or set daemon.state_dir to a directory writable by user {me}, e.g. ~/.local/state/solstice",
        if blocker.starts_with(state_dir) {
            state_dir
        } else {
            blocker
        }
        .display()
    )
}

/// `owned by root (uid 0), mode 0755; Solstice runs as alice (uid 1000)`.
fn owner_and_user(path: &Path) -> String {
    let me = current_uid();
    let runs_as = format!("Solstice runs as {} (uid {me})", user_name(me));
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "owned by {} (uid {}), mode {:04o}; {runs_as}",
            user_name(m.uid()),
            m.uid(),
            m.mode() & 0o7777
        ),
        Err(_) => runs_as,
    }
}

/// The effective uid of this process (the owner of `/proc/self`).
pub fn current_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// The user name of `uid` from `/etc/passwd`, else `uid N`.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let id: u32 = f.nth(1)?.parse().ok()?;
                (id == uid).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b/state");
        check_state_dir(&state).unwrap();
        let mode = std::fs::metadata(&state).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // The write check leaves nothing behind.
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
        check_state_dir(&state).unwrap();
    }

    #[test]
    fn a_file_in_the_way_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let e = check_state_dir(&file).unwrap_err();
        assert_eq!(
            e.to_string().split(';').next().unwrap(),
            format!(
                "daemon.state_dir = {}: it exists and is not a directory",
                file.display()
            )
        );
        let below = file.join("state");
        let e = check_state_dir(&below).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "daemon.state_dir = {}: cannot create it: {} is not a directory; ",
                below.display(),
                file.display()
            )),
            "{text}"
        );
        assert!(
            text.contains("set daemon.state_dir to a directory"),
            "{text}"
        );
    }

    #[test]
    fn user_names_come_from_passwd() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "uid 4000000000");
    }
}

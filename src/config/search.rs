//! Which configuration file a command uses: `--config`, else
//! `$SOLSTICE_CONFIG` (which must exist), else the first file that exists of
//! `./solstice.toml`, `$XDG_CONFIG_HOME/solstice/solstice.toml` (or
//! `~/.config/solstice/solstice.toml`) and `/etc/solstice/solstice.toml`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::default_config_path;

/// How the file was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config FILE`.
    Flag,
    /// `$SOLSTICE_CONFIG`.
    Env,
    /// One of the places searched (see [`search_order`]).
    Searched,
}

/// The file a command loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundConfig {
    pub path: PathBuf,
    pub source: ConfigSource,
}

/// Why no configuration file could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// `SOLSTICE_CONFIG` names a file that is not there.
    #[error(
        "SOLSTICE_CONFIG names {}, which {problem}: fix the variable, or unset it to use the first that exists of {}",
        .path.display(),
        list(.searched)
    )]
    EnvMissing {
        path: PathBuf,
        problem: &'static str,
        searched: Vec<PathBuf>,
    },
    /// None of the places searched holds a file.
    #[error(
        "No configuration file found (looked for {}): pass --config FILE or set SOLSTICE_CONFIG; scripts/quickstart writes one, and examples/solstice.toml shows every key",
        list(.searched)
    )]
    NotFound { searched: Vec<PathBuf> },
}

fn list(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// The places searched without `--config` and `$SOLSTICE_CONFIG`, in
/// order. `env` reads an environment variable. `XDG_CONFIG_HOME` counts
/// only when it is an absolute path (as the XDG spec says); otherwise
/// `$HOME/.config` is used.
pub fn search_order(env: &dyn Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    let mut places = vec![PathBuf::from("solstice.toml")];
    let xdg = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    match (xdg, env("HOME").filter(|h| !h.is_empty())) {
        (Some(dir), _) => places.push(dir.join("solstice/solstice.toml")),
        (None, Some(home)) => {
            places.push(PathBuf::from(home).join(".config/solstice/solstice.toml"))
        }
        (None, None) => {}
    }
    places.push(default_config_path());
    places
}

/// Chooses the configuration file: `explicit` (`--config`), else
/// `$SOLSTICE_CONFIG` (an error if it names no file), else the first of
/// [`search_order`] that `is_file` says exists. An empty `SOLSTICE_CONFIG`
/// counts as unset.
pub fn find_config_with(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<OsString>,
    is_file: &dyn Fn(&Path) -> bool,
) -> Result<FoundConfig, SearchError> {
    if let Some(p) = explicit {
        // A missing file is reported when it is read, with the same words
        // as `check-config`.
        return Ok(FoundConfig {
            path: p.to_path_buf(),
            source: ConfigSource::Flag,
        });
    }
    let searched = search_order(env);
    if let Some(p) = env("SOLSTICE_CONFIG").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        if is_file(&path) {
            return Ok(FoundConfig {
                path,
                source: ConfigSource::Env,
            });
        }
        let problem = if path.exists() {
            "is not a file"
        } else {
            "does not exist"
        };
        return Err(SearchError::EnvMissing {
            path,
            problem,
            searched,
        });
    }
    match searched.iter().find(|p| is_file(p)) {
        Some(p) => Ok(FoundConfig {
            path: p.clone(),
            source: ConfigSource::Searched,
        }),
        None => Err(SearchError::NotFound { searched }),
    }
}

/// [`find_config_with`] with the process's environment and file system.
pub fn find_config(explicit: Option<&Path>) -> Result<FoundConfig, SearchError> {
    find_config_with(explicit, &|k| std::env::var_os(k), &|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn files<'a>(existing: &'a [&'a str]) -> impl Fn(&Path) -> bool + 'a {
        move |p| existing.iter().any(|e| Path::new(e) == p)
    }

    const HOME: &[(&str, &str)] = &[("HOME", "/home/u")];

    #[test]
    fn the_order_is_cwd_then_user_then_system() {
        assert_eq!(
            search_order(&env(HOME)),
            [
                PathBuf::from("solstice.toml"),
                PathBuf::from("/home/u/.config/solstice/solstice.toml"),
                PathBuf::from("/etc/solstice/solstice.toml"),
            ]
        );
        let xdg = [("HOME", "/home/u"), ("XDG_CONFIG_HOME", "/cfg")];
        assert_eq!(
            search_order(&env(&xdg))[1],
            PathBuf::from("/cfg/solstice/solstice.toml")
        );
        // A relative or empty XDG_CONFIG_HOME is ignored, as the spec says.
        for bad in ["", "rel/dir"] {
            let vars = [("HOME", "/home/u"), ("XDG_CONFIG_HOME", bad)];
            assert_eq!(
                search_order(&env(&vars))[1],
                PathBuf::from("/home/u/.config/solstice/solstice.toml")
            );
        }
        assert_eq!(search_order(&env(&[])).len(), 2);
    }

    #[test]
    fn the_first_existing_file_wins() {
        let found = |existing: &[&str]| {
            find_config_with(None, &env(HOME), &files(existing)).map(|f| f.path)
        };
        let all = [
            "solstice.toml",
            "/home/u/.config/solstice/solstice.toml",
            "/etc/solstice/solstice.toml",
        ];
        assert_eq!(found(&all), Ok(PathBuf::from("solstice.toml")));
        assert_eq!(found(&all[1..]), Ok(PathBuf::from(all[1])));
        assert_eq!(found(&all[2..]), Ok(PathBuf::from(all[2])));
        let e = found(&[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "No configuration file found (looked for solstice.toml, /home/u/.config/solstice/solstice.toml, /etc/solstice/solstice.toml): pass --config FILE or set SOLSTICE_CONFIG; scripts/quickstart writes one, and examples/solstice.toml shows every key"
        );
    }

    #[test]
    fn the_flag_wins_and_is_not_checked_here() {
        let f = find_config_with(Some(Path::new("/x.toml")), &env(HOME), &files(&[])).unwrap();
        assert_eq!(
            f,
            FoundConfig {
                path: "/x.toml".into(),
                source: ConfigSource::Flag
            }
        );
    }

    #[test]
    fn solstice_config_must_name_a_file() {
        let vars = [("HOME", "/home/u"), ("SOLSTICE_CONFIG", "/srv/ci.toml")];
        let f = find_config_with(
            None,
            &env(&vars),
            &files(&["/srv/ci.toml", "solstice.toml"]),
        )
        .unwrap();
        assert_eq!(
            (f.path.to_str(), f.source),
            (Some("/srv/ci.toml"), ConfigSource::Env)
        );
        // Missing: an error, not a silent fall-back to ./solstice.toml.
        let e = find_config_with(None, &env(&vars), &files(&["solstice.toml"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SOLSTICE_CONFIG names /srv/ci.toml, which does not exist: fix the variable, or unset it to use the first that exists of solstice.toml, /home/u/.config/solstice/solstice.toml, /etc/solstice/solstice.toml"
        );
        // Empty counts as unset.
        let vars = [("HOME", "/home/u"), ("SOLSTICE_CONFIG", "")];
        let f = find_config_with(None, &env(&vars), &files(&["solstice.toml"])).unwrap();
        assert_eq!(f.source, ConfigSource::Searched);
    }
}

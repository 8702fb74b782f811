//! Parsers for the file commands a step writes: `GITHUB_ENV`, `GITHUB_OUTPUT`
//! and `GITHUB_PATH`. Pure functions.

/// A malformed `GITHUB_ENV` / `GITHUB_OUTPUT` file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileCommandError {
    #[error("Invalid format '{0}': expected NAME=value or NAME<<DELIMITER")]
    InvalidFormat(String),
    #[error("Invalid format '{0}': the name must not be empty")]
    EmptyName(String),
    #[error("Invalid format '{0}': the delimiter must not be empty")]
    EmptyDelimiter(String),
    #[error("Matching delimiter not found '{0}'")]
    MissingDelimiter(String),
}

/// Parses the `NAME=value` and heredoc (`NAME<<DELIM` … `DELIM`) forms used by
/// `GITHUB_ENV` and `GITHUB_OUTPUT`. Empty lines are skipped; `\r\n` line
/// endings are accepted. Whichever of `=` and `<<` comes first decides the
/// form, as in GitHub's runner.
pub fn parse_key_values(content: &str) -> Result<Vec<(String, String)>, FileCommandError> {
    let lines: Vec<&str> = content
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if line.is_empty() {
            continue;
        }
        let eq = line.find('=');
        let heredoc = line.find("<<");
        match (eq, heredoc) {
            (Some(e), h) if h.is_none_or(|h| e < h) => {
                let name = &line[..e];
                if name.is_empty() {
                    return Err(FileCommandError::EmptyName(line.to_string()));
                }
                out.push((name.to_string(), line[e + 1..].to_string()));
            }
            (_, Some(h)) => {
                let name = &line[..h];
                let delim = &line[h + 2..];
                if name.is_empty() {
                    return Err(FileCommandError::EmptyName(line.to_string()));
                }
                if delim.is_empty() {
                    return Err(FileCommandError::EmptyDelimiter(line.to_string()));
                }
                let mut value: Vec<&str> = Vec::new();
                let mut found = false;
                while i < lines.len() {
                    let l = lines[i];
                    i += 1;
                    if l == delim {
                        found = true;
                        break;
                    }
                    value.push(l);
                }
                if !found {
                    return Err(FileCommandError::MissingDelimiter(delim.to_string()));
                }
                out.push((name.to_string(), value.join("\n")));
            }
            _ => return Err(FileCommandError::InvalidFormat(line.to_string())),
        }
    }
    Ok(out)
}

/// Parses `GITHUB_PATH`: one directory per non-empty line, in file order.
pub fn parse_path(content: &str) -> Vec<String> {
    content
        .split('\n')
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Prepends `new` (in file order) to `paths`, so that the last line of the most
/// recent step comes first, as each line is prepended in turn.
pub fn prepend_paths(paths: &mut Vec<String>, new: Vec<String>) {
    for p in new {
        paths.retain(|x| x != &p);
        paths.insert(0, p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(s: &str) -> Vec<(String, String)> {
        parse_key_values(s).unwrap()
    }

    #[test]
    fn simple_pairs() {
        assert_eq!(
            kv("A=1\n\nB=x=y\r\nC=\n"),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("C".into(), "".into())
            ]
        );
    }

    #[test]
    fn heredoc() {
        assert_eq!(
            kv("M<<EOF\nline 1\nline=2\n\nEOF\nN=2\n"),
            vec![
                ("M".into(), "line 1\nline=2\n".into()),
                ("N".into(), "2".into())
            ]
        );
        assert_eq!(kv("E<<X\nX\n"), vec![("E".into(), "".into())]);
    }

    #[test]
    fn equals_before_heredoc_is_a_pair() {
        assert_eq!(kv("A=b<<c\n"), vec![("A".into(), "b<<c".into())]);
        assert_eq!(kv("A<<=\nv\n=\n"), vec![("A".into(), "v".into())]);
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_key_values("justtext\n"),
            Err(FileCommandError::InvalidFormat("justtext".into()))
        );
        assert_eq!(
            parse_key_values("=v\n"),
            Err(FileCommandError::EmptyName("=v".into()))
        );
        assert_eq!(
            parse_key_values("A<<EOF\nvalue\n"),
            Err(FileCommandError::MissingDelimiter("EOF".into()))
        );
        assert_eq!(
            parse_key_values("A<<\n"),
            Err(FileCommandError::EmptyDelimiter("A<<".into()))
        );
    }

    #[test]
    fn paths() {
        let mut p = vec!["/old".to_string()];
        prepend_paths(&mut p, parse_path("/a\n\n /b \n"));
        assert_eq!(p, vec!["/b", "/a", "/old"]);
        prepend_paths(&mut p, parse_path("/old\n"));
        assert_eq!(p, vec!["/old", "/b", "/a"]);
    }
}

//! Configuration errors: each names the file, line and column, the key and the fix.

use std::fmt;
use std::path::PathBuf;

/// What kind of problem a [`ConfigError`] reports; lets callers and tests
/// tell the classes apart without matching on text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// The file is not valid TOML.
    Syntax,
    /// A key that no section knows.
    UnknownKey,
    /// A value of the wrong TOML type, or a string outside an enum's values.
    InvalidValue,
    /// A number outside its allowed range.
    OutOfRange,
    /// A required key is missing.
    MissingKey,
    /// A configured file does not exist or is not a regular file.
    MissingFile,
    /// No `[images.<name>]` section at all.
    NoImages,
    /// An image file is not what its section says (format, size, backing
    /// file), or not a disk image at all.
    Image,
}

/// A 1-based line and column (in characters) in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` in `text` (clamped to the text).
    pub fn of_offset(text: &str, offset: usize) -> Position {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Position { line, column }
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file, as given by the caller.
    pub file: PathBuf,
    /// Where in the file, when the problem has a place.
    pub position: Option<Position>,
    /// Dotted key path, e.g. `images.tiny.memory_mib`.
    pub key: Option<String>,
    /// The class of problem.
    pub kind: ErrorKind,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: Option<String>,
}

impl fmt::Display for ConfigError {
    /// `FILE:LINE:COL: KEY: message; fix`, leaving out the parts that are unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = Located {
            file: &self.file,
            position: self.position,
            key: self.key.as_deref(),
            message: &self.message,
            fix: self.fix.as_deref(),
        };
        parts.write(f, "")
    }
}

impl std::error::Error for ConfigError {}

/// The parts of a located message, written as
/// `FILE[:LINE:COL]: {tag}[KEY: ]message[; fix]`.
struct Located<'a> {
    file: &'a std::path::Path,
    position: Option<Position>,
    key: Option<&'a str>,
    message: &'a str,
    fix: Option<&'a str>,
}

impl Located<'_> {
    fn write(&self, f: &mut fmt::Formatter<'_>, tag: &str) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = self.position {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        write!(f, ": {tag}")?;
        if let Some(key) = self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(self.message)?;
        if let Some(fix) = self.fix {
            write!(f, "; {fix}")?;
        }
        Ok(())
    }
}

/// Something in a valid config file that works, but probably not as the
/// operator expects (a poll interval the forge's UI calls offline, a job
/// timeout the forge cuts short, labels no single image has together).
/// Printed by `check-config`, `doctor` and at daemon start-up; never an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The config file, as given by the caller.
    pub file: PathBuf,
    /// Where in the file, when the warning has a place.
    pub position: Option<Position>,
    /// Dotted key path, e.g. `forges.codeberg.fetch_interval_secs`.
    pub key: Option<String>,
    /// What to expect.
    pub message: String,
    /// What to change, if the operator wants to.
    pub fix: Option<String>,
}

impl fmt::Display for ConfigWarning {
    /// `FILE:LINE:COL: warning: KEY: message; fix`, leaving out the parts
    /// that are unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = Located {
            file: &self.file,
            position: self.position,
            key: self.key.as_deref(),
            message: &self.message,
            fix: self.fix.as_deref(),
        };
        parts.write(f, "warning: ")
    }
}

/// All problems found in one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The problems; never empty when returned as an error.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// The number of problems.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// True if there are no problems.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Iterate over the problems.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }
}

impl fmt::Display for ConfigErrors {
    /// One problem per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

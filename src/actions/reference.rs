//! What a step's `uses:` names. Pure.

use std::fmt;

/// The forms of `uses:` (spec §1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsesRef {
    /// `./path` (relative to the workspace).
    Local(String),
    /// `docker://image[:tag]`.
    Docker(String),
    /// `owner/repo[/path]@ref` or `https://host[/prefix]/owner/repo[/path]@ref`.
    Remote(RemoteRef),
}

/// A remote action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// `https://host[:port][/prefix]` when the `uses:` gave a URL; `None`:
    /// the default actions URL.
    pub base: Option<String>,
    pub owner: String,
    pub repo: String,
    /// Subdirectory holding the action, without leading or trailing `/`.
    pub path: Option<String>,
    /// Tag, branch or full commit SHA.
    pub git_ref: String,
}

impl fmt::Display for RemoteRef {
    /// The reference as written (`owner/repo/path@ref`, with the base URL
    /// when one was given).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(b) = &self.base {
            write!(f, "{b}/")?;
        }
        write!(f, "{}/{}", self.owner, self.repo)?;
        if let Some(p) = &self.path {
            write!(f, "/{p}")?;
        }
        write!(f, "@{}", self.git_ref)
    }
}

/// Why a `uses:` value is not a valid reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsesError(pub String);

/// Parses a step's `uses:`.
pub fn parse_uses(uses: &str) -> Result<UsesRef, UsesError> {
    // Provisional (lead's branch): replaced by the full parser.
    let u = uses.trim();
    if u.starts_with("./") {
        return Ok(UsesRef::Local(u.to_string()));
    }
    if let Some(i) = u.strip_prefix("docker://") {
        return Ok(UsesRef::Docker(i.to_string()));
    }
    let (path, git_ref) = u.split_once('@').ok_or_else(|| {
        UsesError(format!(
            "`{u}`: Expected format {{owner}}/{{repo}}[/path]@ref"
        ))
    })?;
    let mut parts = path.splitn(3, '/');
    let owner = parts.next().unwrap_or_default().to_string();
    let repo = parts.next().unwrap_or_default().to_string();
    let path = parts.next().map(str::to_string);
    Ok(UsesRef::Remote(RemoteRef {
        base: None,
        owner,
        repo,
        path,
        git_ref: git_ref.to_string(),
    }))
}

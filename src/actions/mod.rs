//! Actions on the host: what a `uses:` names ([`reference`]), which hosts
//! may be fetched from ([`policy`]), and the cache of fetched action trees
//! shared by every job of the process ([`ActionCache`]).
//!
//! The host fetches, never the guest: an action reaches the guest as an
//! archive. Facts: `../shared/spec/actions-runtime.md` §1.

pub mod reference;

use std::path::PathBuf;

pub use reference::{RemoteRef, UsesError, UsesRef, parse_uses};

use crate::secret::Secret;

/// The `[actions]` settings the cache needs.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// The cache directory (`<state_dir>/actions`).
    pub dir: PathBuf,
    /// Bound on the cache's size; least recently used entries go first.
    pub max_bytes: u64,
    /// `[actions] allowed_hosts`: more hosts actions may come from, and
    /// hosts allowed even on loopback, link-local or private addresses.
    pub allowed_hosts: Vec<String>,
}

/// What one fetch needs to know besides the reference.
#[derive(Debug, Clone, Copy)]
pub struct FetchRequest<'a> {
    pub action: &'a RemoteRef,
    /// Where `owner/repo@ref` comes from (the forge's default-actions URL,
    /// or `[actions] default_url` / `--actions-url` for `exec`).
    pub default_url: &'a str,
    /// The forge the job came from, and its job token: the token is sent
    /// only to this forge (same scheme, host, port and path prefix).
    pub forge_url: Option<&'a str>,
    pub token: Option<&'a Secret>,
}

/// A fetched action: the whole repository tree at `sha`.
#[derive(Debug, Clone)]
pub struct FetchedAction {
    /// The URL cloned from (no credentials).
    pub url: String,
    /// The resolved commit (40 hex digits).
    pub sha: String,
    /// A tar archive of the repository's tree at `sha` (`git archive`).
    pub archive: Vec<u8>,
    /// Served from the cache without contacting the server.
    pub cached: bool,
    /// What happened that the step's log should say (a server that could
    /// not be reached, a damaged cache entry fetched again).
    pub notes: Vec<String>,
}

/// Why an action could not be fetched. The text is for the step's log.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

/// The host's cache of fetched actions, keyed by URL and resolved commit.
#[derive(Debug)]
pub struct ActionCache {
    settings: CacheSettings,
}

impl ActionCache {
    pub fn new(settings: CacheSettings) -> ActionCache {
        ActionCache { settings }
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// Resolves `req.action`'s ref and returns its tree, fetching it when
    /// the cache does not hold it.
    pub async fn fetch(&self, req: &FetchRequest<'_>) -> Result<FetchedAction, FetchError> {
        Err(FetchError::Failed(format!(
            "fetching {} is not implemented yet",
            req.action
        )))
    }
}

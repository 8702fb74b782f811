//! Warm starts: guests that are up before their job arrives.
//!
//! - [`pool`]: per image, `warm = N` guests booted (or restored) ahead and
//!   SSH-ready, each with its own in-memory key; a job of that image takes
//!   one ([`crate::job::WarmSource`]), the pool refills in the background
//!   within the host's capacity, and a job of any image takes a warm
//!   guest's place when the host is full.
//! - [`template`]: `snapshot = true` images: one guest booted to a known
//!   point before any job secret exists, its running state saved to a file;
//!   clones start by restoring it and are re-keyed ([`rekey`]) before use:
//!   fresh randomness (vmgenid, host bytes), their own SSH host key, client
//!   key, machine id, host name and clock.
//!
//! A guest that held a job never returns to a pool, and a saved state is
//! restored only into a new QEMU process. Everything here is discarded when
//! the daemon stops; start-up clean-up kills what a crash left.
//!
//! Direction of use: the daemon and `bench` use `warm`; `warm` uses `job`
//! (booting a guest to SSH-ready), `vm`, `ssh`, `store`, `config` and
//! `metrics`, never forges, the daemon or the executor.

pub mod pool;
pub mod rekey;
pub mod template;

pub use pool::{HostLoad, PoolOptions, PoolStatus, WarmPools};
pub use template::{Restored, Template, TemplateError};

/// The directory warm guests and templates live in: `<state_dir>/warm`.
/// Start-up clean-up kills every process that names it and empties it.
pub fn warm_dir(config: &crate::config::Config) -> std::path::PathBuf {
    config.daemon.state_dir.join("warm")
}

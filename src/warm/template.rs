//! Snapshot templates: a guest booted once and saved running; clones start
//! by restoring it (see the module docs of [`crate::warm`]).

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ImageConfig};
use crate::events::EventSink;
use crate::job::run::ReadyGuest;
use crate::vm::Accel;

/// Why a template could not be made or restored.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    Todo(String),
}

/// A saved running guest of one image (see the module docs). Its files are
/// removed when it is dropped.
#[derive(Debug)]
pub struct Template {
    _private: (),
}

impl Template {
    /// Boots a guest of `image` under `accel`, brings it to the saved point
    /// and saves it into `<dir_root>/<name>/`. `host_ports` as for job VMs
    /// (the clones reach the same ports). Progress goes to `sink`.
    pub async fn build(
        _config: &Config,
        _image: &ImageConfig,
        _accel: Accel,
        _dir_root: &Path,
        _host_ports: &[u16],
        _sink: &dyn EventSink,
        _cancel: &CancellationToken,
    ) -> Result<Template, TemplateError> {
        Err(TemplateError::Todo("not built yet".into()))
    }

    /// Starts a new clone in `<dir_root>/<vm_id>/` by restoring the saved
    /// state, re-keys it (its own fresh client key, host key, randomness,
    /// machine id, host name and clock) and returns it SSH-ready.
    pub async fn restore(
        &self,
        _dir_root: &Path,
        _vm_id: &str,
        _cancel: &CancellationToken,
    ) -> Result<ReadyGuest, TemplateError> {
        Err(TemplateError::Todo("not built yet".into()))
    }

    /// What the template was made from (image file, its configuration,
    /// QEMU): a template whose key differs from the image's current one is
    /// stale.
    pub fn key(&self) -> &str {
        ""
    }
}

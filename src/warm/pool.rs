//! Warm pools: per image, guests kept up and SSH-ready for the next jobs.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ImageConfig};
use crate::events::EventSink;
use crate::job::run::{ReadyGuest, StartKind, WarmSource};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::vm::Accel;

/// The host's load as the pools see it: warm guests fit beside the jobs.
pub trait HostLoad: Send + Sync {
    /// The host-wide maximum of VMs (`daemon.max_concurrent_jobs`).
    fn capacity(&self) -> u32;
    /// Host slots jobs use now (reserved for a fetch, running, held).
    fn jobs(&self) -> u32;
}

/// One image's pool, for `solstice status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub image: String,
    /// `images.<name>.warm`.
    pub target: u32,
    pub ready: u32,
    pub starting: u32,
}

/// What the pools need from their owner (the daemon, or `bench`).
pub struct PoolOptions {
    pub config: Arc<Config>,
    pub load: Arc<dyn HostLoad>,
    /// The accelerator new guests start under now (`auto`'s KVM may have
    /// fallen back to TCG since the start).
    pub accel: Arc<dyn Fn() -> Accel + Send + Sync>,
    /// Host ports guests may reach at 10.0.2.2 (the cache service's).
    pub host_ports: Vec<u16>,
    /// Where warm guests are recorded (`None`: nowhere; `bench`).
    pub store: Option<Arc<Store>>,
    pub metrics: Option<Metrics>,
}

/// Every image's pool (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct WarmPools {
    _config: Arc<Config>,
}

impl WarmPools {
    /// Pools for every image of `config` with `warm > 0` or `snapshot`.
    pub fn new(opts: PoolOptions) -> WarmPools {
        WarmPools {
            _config: opts.config,
        }
    }

    /// Runs the refill loop until `stop`, then destroys every idle guest.
    pub async fn run(&self, _stop: CancellationToken) {}

    /// Every pool's figures.
    pub fn status(&self) -> Vec<PoolStatus> {
        Vec::new()
    }
}

#[async_trait::async_trait]
impl WarmSource for WarmPools {
    async fn take(
        &self,
        _image: &ImageConfig,
        _dest: &Path,
        _sink: &dyn EventSink,
        _cancel: &CancellationToken,
    ) -> Option<(ReadyGuest, StartKind)> {
        None
    }
}

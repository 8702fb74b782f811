//! Containers inside the job's VM: the job container (`container:`), service
//! containers (`services:`) and Docker actions, all run by the guest's own
//! container engine (docker). The VM is the isolation boundary: the engine,
//! its containers and its socket die with the VM, and nothing here reaches the
//! host's engine or processes.
//!
//! Facts: `../shared/spec/job-containers.md`.
//!
//! Every container command is run from the VM by a step's wrapper
//! ([`ContainerCommand`], rendered by `Runtime::run_wrapped`): the step's
//! variables are exported in the VM shell and handed to `docker exec`/`docker
//! run` as `-e NAME` only, so no value (secrets included) is ever on a command
//! line.

pub(super) mod action;
pub(super) mod init;
pub(super) mod job;
pub(super) mod paths;

use indexmap::IndexMap;

/// The containers of one job, once "Initialize containers" has run.
#[derive(Debug, Clone, Default)]
pub(super) struct JobContainers {
    /// The per-job bridge network every container joins.
    pub(super) network: String,
    /// The job container, when the job has `container:`.
    pub(super) job: Option<JobContainer>,
    /// The started services, by service id (`job.services.<id>`).
    pub(super) services: IndexMap<String, ServiceInfo>,
}

/// The running job container.
#[derive(Debug, Clone)]
pub(super) struct JobContainer {
    /// The engine's container id.
    pub(super) id: String,
    /// The image as started (`job.container.image` is not a context field on GitHub; for messages).
    pub(super) image: String,
    /// `PATH` from the image's config: the base of a step's `PATH` once
    /// `GITHUB_PATH` has entries.
    pub(super) image_path: String,
    /// Guest path prefix → path inside the container, longest first.
    pub(super) mounts: Vec<(String, String)>,
    /// The guest's node, as seen inside the container (`/__e/node/bin/node`);
    /// `None` when the guest has no node.
    pub(super) node: Option<String>,
}

/// A started service container.
#[derive(Debug, Clone)]
pub(super) struct ServiceInfo {
    /// The engine's container id.
    pub(super) id: String,
    /// Container port (`"5432"`) → port published on the VM (`"49153"`).
    pub(super) ports: IndexMap<String, String>,
}

/// A command run by the guest's engine for one step: `docker <before> -e NAME…
/// [-e PATH=…] <after>`, run from the VM by the step's wrapper after `setup`.
#[derive(Debug, Clone, Default)]
pub(super) struct ContainerCommand {
    /// Shell code run in the VM first (build or pull an image). `$solstice_docker`
    /// holds the path of the engine's CLI. A failure (non-zero status) fails
    /// the step without running the container command.
    pub(super) setup: String,
    /// Arguments before the `-e` flags (`exec -i --workdir /__w/r/r`, `run --rm …`).
    pub(super) before: Vec<String>,
    /// Arguments after them (container id and command, or image and args).
    pub(super) after: Vec<String>,
    /// Guest path prefix → container path, applied to every variable's value
    /// (longest prefix first; see [`paths::translate`]).
    pub(super) translate: Vec<(String, String)>,
    /// The container's base `PATH`: when set, the step gets `-e PATH=<its
    /// GITHUB_PATH entries, translated>:<this>` once it has entries (or the
    /// step's own `PATH` if it sets one). `None`: `PATH` is the container's.
    pub(super) base_path: Option<String>,
    /// Shell code run in the VM by the step's kill, with the signal name
    /// (`TERM`, `KILL`) in `$1`: stops what runs inside the container, which
    /// a signal to the `docker` client does not.
    pub(super) kill: Option<String>,
}

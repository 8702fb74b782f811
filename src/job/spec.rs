//! What a job is, as the executor runs it: the [`JobSpec`] (workflow, job,
//! contexts, checkout source), and the machine it runs on ([`RunnerInfo`],
//! built from the chosen image).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;

use crate::actions::ActionCache;
use crate::cache_service::{CacheScope, CacheService};

use crate::config::{GuestOs, ImageConfig};
use crate::secret::Secret;
use crate::workflow::Workflow;
use crate::workflow::expr::Value;

/// Everything needed to run one job but the machine ([`RunnerInfo`]). Its
/// `Debug` leaves out the contexts and environment, which can hold tokens
/// (`github.token`, runtime tokens).
#[derive(Clone)]
pub struct JobSpec {
    pub workflow: Workflow,
    /// Key of the job in `workflow.jobs`.
    pub job_id: String,
    /// This job's matrix combination (empty without a matrix).
    pub matrix: IndexMap<String, Value>,
    /// The `github` context object (`repository`, `sha`, `ref`, `event`, ...).
    pub github: Value,
    pub secrets: BTreeMap<String, Secret>,
    pub vars: BTreeMap<String, String>,
    pub inputs: Value,
    pub needs: Value,
    /// `--env K=V`, applied at the runner-variables level.
    pub extra_env: IndexMap<String, String>,
    pub checkout: CheckoutSource,
    /// Cap for the job's `timeout-minutes`.
    pub max_job_timeout: Option<Duration>,
    /// More values to mask in every line (runtime tokens that are not secrets
    /// of the job).
    pub extra_masks: Vec<Secret>,
    /// Where `uses: owner/repo@ref` would be fetched from (the forge's
    /// default-actions URL); named in the error for unsupported actions.
    pub default_actions_url: Option<String>,
    /// The host's action cache; `None`: remote actions cannot be fetched
    /// (their steps fail and say so).
    pub actions: Option<Arc<ActionCache>>,
    /// The built-in cache service (`[cache]`); `None`: the job gets no
    /// `ACTIONS_CACHE_URL` (actions/cache warns and goes on).
    pub cache: Option<Arc<CacheService>>,
    /// Contexts the forge sent that the executor otherwise fills with
    /// defaults: `strategy` replaces the executor's one-job value, and the
    /// entries of `job` are added to the `job` context (whose `status` is
    /// always the executor's). Other names are ignored. Empty for Forgejo
    /// and `solstice exec`; GitHub sends both.
    pub extra_contexts: BTreeMap<String, Value>,
}

impl JobSpec {
    /// Solstice's own job `job_id` of `workflow` (the doctor's probe, the
    /// benchmarks): repository `local/<job_id>`, no event, secrets,
    /// checkout or actions.
    pub fn own(workflow: Workflow, job_id: &str) -> JobSpec {
        JobSpec {
            workflow,
            job_id: job_id.to_string(),
            matrix: IndexMap::new(),
            github: serde_json::json!({
                "repository": format!("local/{job_id}"),
                "workflow": job_id,
            }),
            secrets: BTreeMap::new(),
            vars: BTreeMap::new(),
            inputs: serde_json::json!({}),
            needs: serde_json::json!({}),
            extra_env: IndexMap::new(),
            checkout: CheckoutSource::None,
            max_job_timeout: None,
            extra_masks: Vec::new(),
            default_actions_url: None,
            actions: None,
            cache: None,
            extra_contexts: Default::default(),
        }
    }

    /// The job's part of the cache service: its forge (`github.server_url`,
    /// `local` without one) and repository; pull-request jobs (events
    /// `pull_request*`, except a merged pull request's `closed`) write into
    /// a part of their own, keyed by the pull request, so that they never
    /// write where the base branch reads.
    pub fn cache_scope(&self) -> CacheScope {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        let g = &self.github;
        let forge = match text(g.get("server_url")) {
            s if s.is_empty() => "local".to_owned(),
            s => s,
        };
        let repository = text(g.get("repository"));
        let event_name = text(g.get("event_name"));
        let event = g.get("event");
        let merged_close = event_name.starts_with("pull_request")
            && event.and_then(|e| e.get("action")).and_then(Value::as_str) == Some("closed")
            && event
                .and_then(|e| e.get("pull_request"))
                .and_then(|p| p.get("merged"))
                .and_then(Value::as_bool)
                == Some(true);
        let isolation = (event_name.starts_with("pull_request") && !merged_close).then(|| {
            let number = event
                .and_then(|e| {
                    e.get("number")
                        .or_else(|| e.pointer("/pull_request/number"))
                })
                .and_then(Value::as_u64);
            match number {
                Some(n) => format!("refs/pull/{n}"),
                None => match text(g.get("ref")) {
                    r if r.is_empty() => "pull_request".to_owned(),
                    r => r,
                },
            }
        });
        CacheScope::new(&forge, &repository, isolation)
    }
}

impl std::fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSpec")
            .field("job_id", &self.job_id)
            .field("matrix", &self.matrix)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("extra_env", &self.extra_env.keys().collect::<Vec<_>>())
            .field("max_job_timeout", &self.max_job_timeout)
            .field("default_actions_url", &self.default_actions_url)
            .finish_non_exhaustive()
    }
}

/// The runner's CPU architecture, as `RUNNER_ARCH` and `runner.arch` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerArch {
    /// x86-64.
    X64,
}

impl RunnerArch {
    /// The architecture of `image`'s guests. Every image runs under
    /// `qemu-system-x86_64` (`qemu.system_binary`), so this is x86-64; the
    /// image is the one place to ask once other architectures exist.
    pub fn of_image(_image: &ImageConfig) -> RunnerArch {
        RunnerArch::X64
    }

    /// `X64`, as on GitHub.
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerArch::X64 => "X64",
        }
    }
}

/// The machine the job runs on.
#[derive(Debug, Clone)]
pub struct RunnerInfo {
    /// The image's name (for messages).
    pub image: String,
    /// The image's labels (for messages that say which `runs-on:` to use).
    pub labels: Vec<String>,
    pub os: GuestOs,
    pub name: String,
    /// `RUNNER_ARCH`.
    pub arch: RunnerArch,
    /// Guest base directory; `None` = `$HOME` in the guest.
    pub home: Option<String>,
    /// The image's `path_prepend`: put in front of the guest's `PATH` in
    /// every step, behind the job's `GITHUB_PATH` entries.
    pub path_prepend: Vec<String>,
    /// The image's `node`: where JavaScript actions find Node.js; `None` =
    /// `node` on `PATH`.
    pub node: Option<String>,
}

impl RunnerInfo {
    /// The runner `name` on `image`: its guest OS, architecture, `PATH`
    /// additions and `node`, with `$HOME` as base directory.
    pub fn for_image(image: &ImageConfig, name: impl Into<String>) -> RunnerInfo {
        RunnerInfo {
            image: image.name.clone(),
            labels: image.labels.clone(),
            os: image.os,
            name: name.into(),
            arch: RunnerArch::of_image(image),
            home: None,
            path_prepend: image.path_prepend.clone(),
            node: image.node.clone(),
        }
    }
}

/// Where `actions/checkout` gets the code from.
#[derive(Debug, Clone)]
pub enum CheckoutSource {
    /// Nothing to check out: the step logs a warning and succeeds.
    None,
    /// Copy this host directory (git-aware) into the guest, leaving out the
    /// directories in `exclude` (Solstice's own state directory, when it lies
    /// inside the tree).
    LocalTree {
        root: PathBuf,
        exclude: Vec<PathBuf>,
    },
    /// Clone inside the guest.
    Remote {
        server_url: String,
        /// `owner/name`
        repository: String,
        git_ref: String,
        sha: String,
        token: Option<Secret>,
        /// Where a guest without git gets its checkout fetched on the host
        /// (the job's directory); `None`: the system's temporary directory.
        host_dir: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_requests_write_apart_from_the_branches() {
        let wf = crate::workflow::parse_workflow(
            "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: true\n",
        )
        .unwrap();
        let mut spec = JobSpec::own(wf, "a");
        let scope = |spec: &JobSpec| format!("{:?}", spec.cache_scope());
        spec.github = serde_json::json!({"repository": "O/R", "event_name": "push", "server_url": "https://f.example"});
        assert!(
            scope(&spec).contains("\"https://f.example|o/r\""),
            "{}",
            scope(&spec)
        );
        assert!(scope(&spec).contains("isolation: None"));
        spec.github = serde_json::json!({"repository": "o/r", "event_name": "pull_request",
            "event": {"action": "opened", "number": 5, "pull_request": {"merged": false}}});
        assert!(scope(&spec).contains("\"local|o/r\""));
        assert!(scope(&spec).contains("Some(\"refs/pull/5\")"));
        spec.github = serde_json::json!({"repository": "o/r", "event_name": "pull_request_target",
            "event": {"action": "closed", "number": 5, "pull_request": {"merged": true}}});
        assert!(scope(&spec).contains("isolation: None"));
        spec.github = serde_json::json!({"repository": "o/r", "event_name": "pull_request",
            "event": {"action": "closed", "number": 6, "pull_request": {"merged": false}}});
        assert!(scope(&spec).contains("Some(\"refs/pull/6\")"));
    }

    #[test]
    fn the_runner_comes_from_the_image() {
        let mut image = crate::job::placement::tests::image("omni", &["illumos"]);
        image.path_prepend = vec!["/usr/gnu/bin".into(), "/opt/ooce/bin".into()];
        image.node = Some("/opt/ooce/bin/node".into());
        let r = RunnerInfo::for_image(&image, "solstice-host");
        assert_eq!(r.os, GuestOs::Illumos);
        assert_eq!(r.name, "solstice-host");
        assert_eq!(r.arch.as_str(), "X64");
        assert_eq!(r.home, None);
        assert_eq!(r.path_prepend, ["/usr/gnu/bin", "/opt/ooce/bin"]);
        assert_eq!(r.node.as_deref(), Some("/opt/ooce/bin/node"));
    }
}

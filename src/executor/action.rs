//! `uses:` steps that run actions: loading an action (fetched on the host
//! through the job's [`ActionCache`](crate::actions::ActionCache), or read
//! from the workspace), its inputs, and its delivery to the guest. The kinds
//! run in `composite` and `node`.
//!
//! Facts: `../shared/spec/actions-runtime.md` §1–§5.

use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::{Map, json};

use super::archive::{ArchiveWriter, Kind};
use super::checkout_step::local_unpack_command;
use super::containers::action::DockerStage;
use super::env::ActionInfo;
use super::error::StepError;
use super::runtime::Runtime;
use super::state::JobState;
use super::step::{StepEnd, StepRun};
use crate::actions::{FetchRequest, RemoteRef, UsesRef, parse_uses};
use crate::events::LineKind;
use crate::guest::shell_quote;
use crate::job::spec::CheckoutSource;
use crate::workflow::Step;
use crate::workflow::action::{
    ActionManifest, MANIFEST_NAMES, Runs, dockerfile_action, parse_action,
};
use crate::workflow::expr::{Value, interpolate};

/// Depth of nested composite actions refused, as on GitHub (the job's steps
/// are depth 0; `CompositeActionsMaxDepth = 9`).
pub(super) const MAX_COMPOSITE_DEPTH: usize = 9;

/// An action ready to run: its metadata and where it is in the guest.
#[derive(Debug)]
pub(super) struct LoadedAction {
    /// The `uses:` as written (interpolated), for messages.
    pub(super) uses: String,
    pub(super) manifest: ActionManifest,
    /// The action's directory in the guest, repository and ref.
    pub(super) info: ActionInfo,
}

/// A composite action being run: what its steps see.
#[derive(Clone)]
pub(super) struct ActionScope {
    /// The `inputs` context.
    pub(super) inputs: Map<String, Value>,
    pub(super) info: ActionInfo,
    /// The calling step's `env` (and the action's `runs.env`), under the
    /// composite's own steps' `env`.
    pub(super) env: IndexMap<String, String>,
    /// 1 for a composite called by a job step.
    pub(super) depth: usize,
    /// One of its steps failed (what `success()` inside says when the job
    /// was already cancelled).
    pub(super) failed: bool,
    /// The calling step's `timeout-minutes` stopped one of its steps.
    pub(super) caller_timed_out: bool,
}

impl std::fmt::Debug for ActionScope {
    /// The values (inputs, env) may hold secrets passed as inputs: only
    /// their names.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionScope")
            .field("inputs", &self.inputs.keys().collect::<Vec<_>>())
            .field("info", &self.info)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

/// The `pre` and `post` entry points of a JavaScript or Docker action
/// (`pre`/`post`, `pre-entrypoint`/`post-entrypoint`), with their conditions.
pub(super) struct StageEntries {
    pub(super) pre: Option<(String, String)>,
    pub(super) post: Option<(String, String)>,
}

impl StageEntries {
    /// `None` for a composite action (its steps have their own).
    pub(super) fn of(runs: &Runs) -> Option<StageEntries> {
        let pair = |e: &Option<String>, c: &String| e.clone().map(|e| (e, c.clone()));
        match runs {
            Runs::Node(n) => Some(StageEntries {
                pre: pair(&n.pre, &n.pre_if),
                post: pair(&n.post, &n.post_if),
            }),
            Runs::Docker(d) => Some(StageEntries {
                pre: pair(&d.pre_entrypoint, &d.pre_if),
                post: pair(&d.post_entrypoint, &d.post_if),
            }),
            Runs::Composite(_) => None,
        }
    }
}

/// A post stage waiting for the end of the job.
#[derive(Clone)]
pub(super) struct PostStage {
    /// The step instance ([`super::step::Site::key`]).
    pub(super) key: String,
    /// The job step it belongs to.
    pub(super) index: usize,
    pub(super) step: Step,
    pub(super) action: Arc<LoadedAction>,
    /// The entry point, relative to the action's directory.
    pub(super) entry: String,
    pub(super) condition: String,
    /// The inputs of the main stage; `None` (registered by a pre stage
    /// whose main stage did not run): evaluated when the post runs.
    pub(super) inputs: Option<IndexMap<String, String>>,
    /// The step's evaluated `env`, likewise.
    pub(super) step_env: Option<IndexMap<String, String>>,
    /// `Post <name>`.
    pub(super) name: String,
    /// The composite action the step belongs to, if any (its inputs and
    /// env, and no `secrets` context, hold for the stage too).
    pub(super) scope: Option<ActionScope>,
}

impl std::fmt::Debug for PostStage {
    /// Inputs and env may hold secrets: only their names.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostStage")
            .field("key", &self.key)
            .field("entry", &self.entry)
            .field("condition", &self.condition)
            .field(
                "inputs",
                &self.inputs.as_ref().map(|i| i.keys().collect::<Vec<_>>()),
            )
            .field(
                "step_env",
                &self.step_env.as_ref().map(|e| e.keys().collect::<Vec<_>>()),
            )
            .finish_non_exhaustive()
    }
}

impl Runtime<'_> {
    /// Runs a `uses:` step other than the built-in checkout.
    pub(super) async fn run_action_step(
        &self,
        plan: &StepRun<'_>,
        state: &mut JobState,
        uses: &str,
    ) -> Result<(StepEnd, IndexMap<String, String>), StepError> {
        // forgejo-runner interpolates `uses:` (a URL may come from a
        // variable); GitHub does not allow expressions there at all.
        let uses = interpolate(uses, plan.ctx).map_err(|error| StepError::Expression {
            what: "`uses:`".into(),
            error,
        })?;
        let uses = uses.trim().to_string();
        if let Some(end) = self.builtin_vm_action(plan, state, &uses).await {
            return end;
        }
        let action = self.load_action(&uses, plan.log).await?;
        let inputs = self.action_inputs(plan, &action)?;
        if let Runs::Composite(_) = &action.manifest.runs {
            return self.run_composite(plan, state, &action, &inputs).await;
        }
        let Some(stages) = StageEntries::of(&action.manifest.runs) else {
            return Ok((StepEnd::Failure, IndexMap::new()));
        };
        if stages.pre.is_some() && action.info.repository.is_empty() {
            // GitHub's words: a local action is read when its step runs,
            // after the job's pre stages.
            self.em.runner(
                plan.log,
                "`pre` execution is not supported for local action",
            );
        }
        let end = match &action.manifest.runs {
            Runs::Node(node) => {
                self.run_node_stage(plan, state, &action, &node.main, &inputs)
                    .await
            }
            _ => {
                self.run_docker_stage(plan, state, &action, DockerStage::Main, &inputs)
                    .await
            }
        };
        // The main stage ran: its post runs at the end of the job with the
        // main stage's inputs (registered already when its pre stage ran).
        if state.pre_ran.contains(&plan.key) {
            if let Some(p) = state.posts.iter_mut().find(|p| p.key == plan.key) {
                p.inputs = Some(inputs);
                p.step_env = Some(plan.step_env.clone());
            }
        } else if let Some((entry, condition)) = stages.post {
            state.posts.push(PostStage {
                key: plan.key.clone(),
                index: plan.index,
                step: plan.step.clone(),
                action: action.clone(),
                entry,
                condition,
                inputs: Some(inputs),
                step_env: Some(plan.step_env.clone()),
                name: format!("Post {}", self.display_name(plan.step, plan.ctx)),
                scope: state.scopes.last().cloned(),
            });
        }
        end
    }

    /// Loads the action `uses` names (already interpolated). Remote actions
    /// are fetched once per job; local ones are read from the workspace
    /// each time (an earlier step may have changed them).
    pub(super) async fn load_action(
        &self,
        uses: &str,
        log: Option<usize>,
    ) -> Result<Arc<LoadedAction>, StepError> {
        match parse_uses(uses) {
            Err(e) => Err(StepError::BadUses(e.to_string())),
            // A container image run as a Docker action with no metadata:
            // its arguments and entry point come from `with:`.
            Ok(UsesRef::Docker(image)) => {
                let mut manifest = dockerfile_action();
                if let Runs::Docker(d) = &mut manifest.runs {
                    d.image = format!("docker://{image}");
                }
                Ok(Arc::new(LoadedAction {
                    uses: uses.to_string(),
                    manifest,
                    info: ActionInfo::default(),
                }))
            }
            Ok(UsesRef::Local(path)) => self.load_local(uses, &path).await.map(Arc::new),
            Ok(UsesRef::Remote(r)) => {
                // Loaded once per job: a failure is not retried either (the
                // step that uses the action reports it).
                let known = self
                    .loaded_actions
                    .lock()
                    .ok()
                    .and_then(|m| m.get(uses).cloned());
                if let Some(known) = known {
                    return known.map_err(StepError::Loading);
                }
                let loaded = self
                    .load_remote(uses, &r, log)
                    .await
                    .map(Arc::new)
                    .map_err(|e| e.to_string());
                if let Ok(mut m) = self.loaded_actions.lock() {
                    m.insert(uses.to_string(), loaded.clone());
                }
                loaded.map_err(StepError::Loading)
            }
        }
    }

    async fn load_remote(
        &self,
        uses: &str,
        r: &RemoteRef,
        log: Option<usize>,
    ) -> Result<LoadedAction, StepError> {
        let Some(cache) = &self.spec.actions else {
            return Err(StepError::NoActionCache {
                uses: uses.to_string(),
            });
        };
        let default_url = self
            .spec
            .default_actions_url
            .as_deref()
            .unwrap_or("https://github.com");
        let (forge_url, token) = match &self.spec.checkout {
            CheckoutSource::Remote {
                server_url, token, ..
            } => (Some(server_url.as_str()), token.as_ref()),
            _ => (None, None),
        };
        let req = FetchRequest {
            action: r,
            default_url,
            forge_url,
            token,
        };
        // A fetch ends with the job: cancelled, or past its deadline (after
        // a cancellation, within the time `always()` steps get).
        let watch_cancel = !self.cancel.is_cancelled();
        let until = if watch_cancel {
            self.job_deadline
        } else {
            std::time::Instant::now() + super::AFTER_CANCEL_STEP_LIMIT
        };
        let stopped = |why: &str| StepError::Fetch {
            uses: uses.to_string(),
            error: why.to_string(),
        };
        let fetched = tokio::select! {
            r = cache.fetch(&req) => r.map_err(|e| StepError::Fetch {
                uses: uses.to_string(),
                error: e.to_string(),
            })?,
            _ = self.cancel.cancelled(), if watch_cancel => {
                return Err(stopped("the job was cancelled"));
            }
            _ = tokio::time::sleep_until(until.into()) => {
                return Err(stopped("the job ran out of time"));
            }
        };
        for note in &fetched.notes {
            self.em.runner(log, note.clone());
        }
        self.em.runner(
            log,
            format!(
                "Download action repository '{uses}' (SHA:{}){}",
                fetched.sha,
                if fetched.cached {
                    " from the cache"
                } else {
                    ""
                }
            ),
        );
        let tree = ActionTree::read(&fetched.archive).map_err(|e| StepError::Fetch {
            uses: uses.to_string(),
            error: format!("the archive from {} is unreadable: {e}", fetched.url),
        })?;
        let sub = r.path.as_deref().unwrap_or("");
        let manifest = tree.manifest(sub, &format!("{}/{}", r.owner, r.repo), &r.git_ref)?;
        let root = format!(
            "{}/_actions/{}/{}/{}",
            self.layout.temp, r.owner, r.repo, fetched.sha
        );
        self.deliver(&root, tree.repack()).await?;
        let path = if sub.is_empty() {
            root
        } else {
            format!("{root}/{sub}")
        };
        Ok(LoadedAction {
            uses: uses.to_string(),
            manifest,
            info: ActionInfo {
                path,
                repository: format!("{}/{}", r.owner, r.repo),
                git_ref: r.git_ref.clone(),
            },
        })
    }

    /// Unpacks an action's tree at `dest` in the guest (once per job).
    async fn deliver(&self, dest: &str, tar: Vec<u8>) -> Result<(), StepError> {
        let fresh = self
            .delivered
            .lock()
            .map(|mut d| d.insert(dest.to_string()))
            .unwrap_or(true);
        if !fresh {
            return Ok(());
        }
        let scratch = format!("{}/actions-unpack", self.layout.steps_root);
        let cmd = local_unpack_command(&scratch, dest, true);
        match self.quiet_exec_stdin(&cmd, &tar).await {
            Some((0, _)) => Ok(()),
            Some((_, err)) => {
                if let Ok(mut d) = self.delivered.lock() {
                    d.remove(dest);
                }
                Err(StepError::ActionCopy {
                    dest: dest.to_string(),
                    error: err.trim().to_string(),
                })
            }
            None => {
                if let Ok(mut d) = self.delivered.lock() {
                    d.remove(dest);
                }
                Err(StepError::ActionCopy {
                    dest: dest.to_string(),
                    error: "the guest did not answer".into(),
                })
            }
        }
    }

    /// Reads a local action's metadata from the workspace.
    async fn load_local(&self, uses: &str, path: &str) -> Result<LoadedAction, StepError> {
        let rel = path.trim_start_matches("./").trim_end_matches('/');
        let dir = if rel.is_empty() || rel == "." {
            self.layout.workspace.clone()
        } else {
            format!("{}/{rel}", self.layout.workspace)
        };
        let d = shell_quote(&dir);
        let cmd = format!(
            "cd {d} 2>/dev/null || exit 3; for f in {names}; do if [ -f \"$f\" ]; then echo \"$f\"; cat \"$f\"; exit 0; fi; done; \
             if [ -f Dockerfile ]; then echo Dockerfile; exit 0; fi; exit 4",
            names = MANIFEST_NAMES.join(" ")
        );
        let missing = || StepError::LocalActionMissing {
            uses: uses.to_string(),
            dir: dir.clone(),
        };
        let (status, out) = self.quiet_exec(&cmd).await.ok_or_else(missing)?;
        if status != 0 {
            return Err(missing());
        }
        let (file, text) = out.split_once('\n').unwrap_or((out.as_str(), ""));
        let manifest = if file == "Dockerfile" {
            dockerfile_action()
        } else {
            parse_action(text, &format!("{path}/{file}"))
                .map_err(|e| StepError::Manifest(e.to_string()))?
        };
        Ok(LoadedAction {
            uses: uses.to_string(),
            manifest,
            info: ActionInfo {
                path: dir,
                repository: String::new(),
                git_ref: String::new(),
            },
        })
    }

    /// The action's inputs: the step's `with:` values, then the evaluated
    /// defaults of the declared inputs it did not give. Names are matched
    /// case-insensitively; the declared spelling wins.
    pub(super) fn action_inputs(
        &self,
        plan: &StepRun<'_>,
        action: &LoadedAction,
    ) -> Result<IndexMap<String, String>, StepError> {
        self.evaluate_inputs(plan, action, true)
    }

    fn evaluate_inputs(
        &self,
        plan: &StepRun<'_>,
        action: &LoadedAction,
        warn: bool,
    ) -> Result<IndexMap<String, String>, StepError> {
        let declared = &action.manifest.inputs;
        let mut inputs = IndexMap::new();
        let mut unexpected = Vec::new();
        for (k, v) in &plan.step.with {
            let val = interpolate(&v.0, plan.ctx).map_err(|error| StepError::Expression {
                what: format!("`with.{k}`"),
                error,
            })?;
            match declared.keys().find(|d| d.eq_ignore_ascii_case(k)) {
                Some(d) => {
                    if let Some(msg) = declared[d].deprecation_message.as_ref().filter(|_| warn) {
                        self.warn_at(
                            plan,
                            format!("Input '{d}' has been deprecated with message: {msg}"),
                        );
                    }
                    inputs.insert(d.clone(), val);
                }
                None => {
                    unexpected.push(k.clone());
                    inputs.insert(k.clone(), val);
                }
            }
        }
        // Docker actions always accept these two.
        unexpected.retain(|k| {
            !(matches!(action.manifest.runs, Runs::Docker(_))
                && (k.eq_ignore_ascii_case("args") || k.eq_ignore_ascii_case("entrypoint")))
        });
        if warn && !unexpected.is_empty() {
            let valid: Vec<String> = declared.keys().map(|k| format!("'{k}'")).collect();
            self.warn_at(
                plan,
                format!(
                    "Unexpected input(s) {}, valid inputs are [{}]",
                    unexpected
                        .iter()
                        .map(|k| format!("'{k}'"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    valid.join(", ")
                ),
            );
        }
        for (name, input) in declared {
            if inputs.contains_key(name) {
                continue;
            }
            let value = match &input.default {
                Some(d) => interpolate(d, plan.ctx).map_err(|error| StepError::Expression {
                    what: format!("default of input `{name}` of {}", action.uses),
                    error,
                })?,
                None => String::new(),
            };
            inputs.insert(name.clone(), value);
        }
        Ok(inputs)
    }

    /// [`Self::action_inputs`] without its warnings (they are given when
    /// the step itself runs).
    pub(super) fn action_inputs_quiet(
        &self,
        plan: &StepRun<'_>,
        action: &LoadedAction,
    ) -> Result<IndexMap<String, String>, StepError> {
        self.evaluate_inputs(plan, action, false)
    }

    fn warn_at(&self, plan: &StepRun<'_>, text: String) {
        self.em
            .line(plan.log, LineKind::Annotation("warning".into()), text);
    }

    /// Runs a composite action's steps in their own scope, then evaluates
    /// its outputs there.
    async fn run_composite(
        &self,
        plan: &StepRun<'_>,
        state: &mut JobState,
        action: &LoadedAction,
        inputs: &IndexMap<String, String>,
    ) -> Result<(StepEnd, IndexMap<String, String>), StepError> {
        let Runs::Composite(composite) = &action.manifest.runs else {
            return Ok((StepEnd::Failure, IndexMap::new()));
        };
        let depth = state.scopes.last().map_or(0, |s| s.depth) + 1;
        if depth > MAX_COMPOSITE_DEPTH {
            return Err(StepError::CompositeDepth {
                uses: action.uses.clone(),
                max: MAX_COMPOSITE_DEPTH,
            });
        }
        let mut env = state
            .scopes
            .last()
            .map(|s| s.env.clone())
            .unwrap_or_default();
        for (k, v) in plan.step_env {
            env.insert(k.clone(), v.clone());
        }
        for (k, v) in &composite.env {
            let val = interpolate(&v.0, plan.ctx).map_err(|error| StepError::Expression {
                what: format!("`runs.env.{k}` of {}", action.uses),
                error,
            })?;
            env.insert(k.clone(), val);
        }
        let scope = ActionScope {
            inputs: inputs.iter().map(|(k, v)| (k.clone(), json!(v))).collect(),
            info: action.info.clone(),
            env,
            depth,
            failed: false,
            caller_timed_out: false,
        };
        // The composite's own `steps` context and running status: it starts
        // as a success, unless the job was cancelled already (then only its
        // `always()` and `cancelled()` steps run).
        use crate::workflow::expr::JobStatus;
        let outer_steps = std::mem::take(&mut state.steps_ctx);
        let was_cancelled = state.status == JobStatus::Cancelled;
        let outer_status = std::mem::replace(
            &mut state.status,
            if was_cancelled {
                JobStatus::Cancelled
            } else {
                JobStatus::Success
            },
        );
        state.scopes.push(scope);
        let limit = plan.deadline.map(|d| (d, plan.stop_kind));
        for (i, child) in composite.steps.iter().enumerate() {
            if state.scopes.last().is_some_and(|s| s.caller_timed_out) {
                break;
            }
            self.check_job_state(state);
            let site = super::step::Site {
                index: plan.index,
                key: format!("{}.{}", plan.key, i + 1),
                child: true,
                limit,
            };
            Box::pin(self.run_step_at(&site, child, state, plan.runner_debug)).await;
        }
        self.check_job_state(state);
        // Outputs, evaluated in the composite's scope even when a step failed.
        let mut ctx = self.contexts(&self.env_context(state, None), state);
        let texts: Vec<&str> = action
            .manifest
            .outputs
            .values()
            .filter_map(|o| o.value.as_deref())
            .collect();
        let mut bad_output = self.prepare_hash_files(&mut ctx, &texts, false).await.err();
        let mut outputs = IndexMap::new();
        for (name, out) in &action.manifest.outputs {
            let Some(template) = &out.value else { continue };
            match interpolate(template, &ctx) {
                Ok(v) => {
                    outputs.insert(name.clone(), v);
                }
                Err(e) => {
                    bad_output
                        .get_or_insert(format!("Invalid output `{name}` of {}: {e}", action.uses));
                }
            }
        }
        let inner = state.status;
        let scope = state.scopes.pop();
        state.steps_ctx = outer_steps;
        // A cancellation or timeout during the composite holds for the job.
        state.status = if inner == JobStatus::Cancelled {
            JobStatus::Cancelled
        } else {
            outer_status
        };
        let failed = scope.as_ref().is_some_and(|s| s.failed);
        let end = match inner {
            _ if scope.as_ref().is_some_and(|s| s.caller_timed_out) => {
                StepEnd::Stopped(super::exec::Stop::StepTimeout)
            }
            JobStatus::Cancelled if !was_cancelled && state.timed_out => {
                StepEnd::Stopped(super::exec::Stop::JobTimeout)
            }
            JobStatus::Cancelled if !was_cancelled => {
                StepEnd::Stopped(super::exec::Stop::Cancelled)
            }
            _ if failed => StepEnd::Failure,
            JobStatus::Failure => StepEnd::Failure,
            JobStatus::Success | JobStatus::Cancelled => match bad_output {
                Some(msg) => {
                    self.em.error(plan.log, msg);
                    StepEnd::Failure
                }
                None => StepEnd::Success,
            },
        };
        Ok((end, outputs))
    }
}

/// An action repository's tree, read from its archive.
pub(super) struct ActionTree {
    entries: Vec<TreeEntry>,
}

struct TreeEntry {
    path: String,
    kind: Kind,
    mode: u32,
    link: Option<Vec<u8>>,
    data: Vec<u8>,
}

impl ActionTree {
    /// Reads a tar (as `git archive` writes it).
    pub(super) fn read(archive: &[u8]) -> std::io::Result<ActionTree> {
        use std::io::Read;
        let mut entries = Vec::new();
        let mut ar = tar::Archive::new(archive);
        for e in ar.entries()? {
            let mut e = e?;
            let kind = match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Symlink => Kind::Symlink,
                // pax headers are applied by the reader; nothing else is
                // part of a repository tree.
                _ => continue,
            };
            let path = String::from_utf8_lossy(&e.path_bytes())
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            if path.is_empty() || path.split('/').any(|c| c == "..") {
                continue;
            }
            let mode = e.header().mode().unwrap_or(0o644) & 0o777;
            let link = e.link_name_bytes().map(|l| l.into_owned());
            let mut data = Vec::new();
            if kind == Kind::File {
                e.read_to_end(&mut data)?;
            }
            entries.push(TreeEntry {
                path,
                kind,
                mode,
                link,
                data,
            });
        }
        Ok(ActionTree { entries })
    }

    fn file(&self, path: &str) -> Option<&TreeEntry> {
        self.entries
            .iter()
            .find(|e| e.path == path && e.kind == Kind::File)
    }

    /// The metadata of the action in directory `sub` (`""`: the root).
    pub(super) fn manifest(
        &self,
        sub: &str,
        repository: &str,
        git_ref: &str,
    ) -> Result<ActionManifest, StepError> {
        let join = |name: &str| {
            if sub.is_empty() {
                name.to_string()
            } else {
                format!("{sub}/{name}")
            }
        };
        for name in MANIFEST_NAMES {
            if let Some(f) = self.file(&join(name)) {
                let text = String::from_utf8_lossy(&f.data);
                let shown = format!("{repository}@{git_ref}/{}", join(name));
                return parse_action(&text, &shown).map_err(|e| StepError::Manifest(e.to_string()));
            }
        }
        if self.file(&join("Dockerfile")).is_some() {
            return Ok(dockerfile_action());
        }
        Err(StepError::NoManifest {
            at: format!(
                "{repository}@{git_ref}{}",
                if sub.is_empty() {
                    String::new()
                } else {
                    format!(" (directory {sub})")
                }
            ),
        })
    }

    /// The tree as a portable archive for the guest (ustar with pax
    /// headers: busybox and illumos tar read it).
    pub(super) fn repack(&self) -> Vec<u8> {
        let mut w = ArchiveWriter::new();
        for e in &self.entries {
            w.add(
                e.path.as_bytes(),
                e.kind,
                if e.kind == Kind::Dir { 0o755 } else { e.mode },
                0,
                e.link.as_deref(),
                &e.data,
            );
        }
        w.finish()
    }
}

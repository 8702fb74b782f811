//! JavaScript actions: `node <action>/<entry>` in the guest, with the
//! inputs as `INPUT_<NAME>` and the action's saved state as `STATE_<name>`;
//! the `pre` stages at the start of the job and the `post` stages at its end.
//!
//! Facts: `../shared/spec/actions-runtime.md` §4.

use std::sync::Arc;
use std::time::Instant;

use indexmap::IndexMap;

use super::AFTER_CANCEL_STEP_LIMIT;
use super::action::{ActionScope, LoadedAction, PostStage, StageEntries};
use super::containers::action::DockerStage;
use super::error::StepError;
use super::exec::Stop;
use super::runtime::Runtime;
use super::state::JobState;
use super::step::{Body, RunCommand, StepEnd, StepRun, container_exec};
use crate::actions::{UsesRef, parse_uses};
use crate::events::LineKind;
use crate::guest::shell_quote;
use crate::workflow::Step;
use crate::workflow::action::{Runs, input_env_name};
use crate::workflow::expr::{JobStatus, evaluate_condition, interpolate};

impl Runtime<'_> {
    /// Runs one stage (`main`, `pre` or `post`) of a JavaScript action.
    /// What the stage writes to `GITHUB_STATE` is kept for the later stages
    /// of the same step instance (`plan.key`).
    pub(super) async fn run_node_stage(
        &self,
        plan: &StepRun<'_>,
        state: &mut JobState,
        action: &LoadedAction,
        entry: &str,
        inputs: &IndexMap<String, String>,
    ) -> Result<(StepEnd, IndexMap<String, String>), StepError> {
        let Runs::Node(node) = &action.manifest.runs else {
            return Ok((StepEnd::Failure, IndexMap::new()));
        };
        let mut vars = Vec::new();
        for (k, v) in &node.env {
            let val = interpolate(&v.0, plan.ctx).map_err(|error| StepError::Expression {
                what: format!("`runs.env.{k}` of {}", action.uses),
                error,
            })?;
            vars.push((k.clone(), val));
        }
        for (name, value) in inputs {
            vars.push((input_env_name(name), value.clone()));
        }
        if let Some(saved) = state.action_states.get(&plan.key) {
            for (name, value) in saved {
                vars.push((format!("STATE_{name}"), value.clone()));
            }
        }
        let node_bin = self.runner.node.clone().unwrap_or_else(|| "node".into());
        let script = format!("{}/{}", action.info.path, entry.trim_start_matches("./"));
        let missing = format!(
            "::error::This step runs a JavaScript action ({}, `runs.using: {}`), which needs Node.js 20 or later in the guest, but image `{}` has no `{}`. \
             Install node in the image (docs/images.md: \"Node.js for JavaScript actions\") or set the image's `node` key to its path.",
            action.uses, node.using, self.runner.image, node_bin
        );
        // `NODE_ICU_DATA` breaks node (the GitHub runner removes it too).
        let setup = format!(
            "if ! command -v {n} >/dev/null 2>&1; then printf '%s\\n' {m}; exit 1; fi; unset NODE_ICU_DATA",
            n = shell_quote(&node_bin),
            m = shell_quote(&missing),
        );
        let run = match self.job_container() {
            // Inside the job container: the guest's node, mounted (GitHub's
            // `/__e/node20/bin/node`), so that images without node work. No
            // shell in between: the `INPUT_MY-INPUT` names reach node intact.
            Some(jc) => {
                let inner_script = super::containers::paths::translate(&script, &jc.mounts);
                let Some(inner_node) = &jc.node else {
                    self.em.error(
                        plan.log,
                        format!(
                            "This step runs a JavaScript action ({}) in the job container ({}), with the guest's node \
                             mounted, but image `{}` has no `{}`. Install node in the image (docs/images.md) \
                             or set the image's `node` key",
                            action.uses, jc.image, self.runner.image, node_bin
                        ),
                    );
                    return Ok((StepEnd::Failure, IndexMap::new()));
                };
                RunCommand::Container(container_exec(
                    jc,
                    &self.layout.workspace,
                    vec![inner_node.clone(), inner_script],
                ))
            }
            None => RunCommand::Command {
                setup,
                program: format!("{} {}", shell_quote(&node_bin), shell_quote(&script)),
            },
        };
        let body = Body {
            run,
            extra_files: Vec::new(),
            vars,
            action: Some(action.info.clone()),
            working_dir: self.layout.workspace.clone(),
            vm_only: false,
        };
        self.run_stage_body(plan, state, body).await
    }

    /// Runs one stage of an action (JavaScript or Docker) and keeps what it
    /// wrote to `GITHUB_STATE` for the later stages of the same step
    /// instance (`plan.key`).
    pub(super) async fn run_stage_body(
        &self,
        plan: &StepRun<'_>,
        state: &mut JobState,
        body: Body,
    ) -> Result<(StepEnd, IndexMap<String, String>), StepError> {
        state.saved_state.clear();
        let res = self.run_wrapped(plan, state, body).await?;
        let end = self.finish_exec(plan, res, state);
        let saved = std::mem::take(&mut state.saved_state);
        if !saved.is_empty() {
            state
                .action_states
                .entry(plan.key.clone())
                .or_default()
                .extend(saved);
        }
        end
    }

    /// Runs the `pre` stages of the job's JavaScript and Docker actions, in step order,
    /// before any step (their lines go outside the steps, into the job's
    /// set-up part). The actions are fetched here, as on GitHub; a fetch
    /// that fails is reported by its step.
    pub(super) async fn run_pre_stages(&self, state: &mut JobState, runner_debug: bool) {
        for (index, step) in self.job.steps.iter().enumerate() {
            self.check_job_state(state);
            if state.status == JobStatus::Cancelled {
                return;
            }
            let key = format!("step-{}", index + 1);
            self.pre_stages_of(state, index, &key, step, runner_debug)
                .await;
        }
    }

    /// The pre stage of the action `step` uses (instance `key`), or, for a
    /// composite action, those of the actions its steps use (as GitHub
    /// gathers them into the composite's own pre stage), with the
    /// composite's inputs.
    async fn pre_stages_of(
        &self,
        state: &mut JobState,
        index: usize,
        key: &str,
        step: &Step,
        runner_debug: bool,
    ) {
        let Some(uses) = &step.uses else { return };
        if super::checkout::is_checkout(uses) {
            return;
        }
        let ctx = self.contexts(&self.env_context(state, None), state);
        let Ok(uses) = interpolate(uses, &ctx) else {
            return;
        };
        let uses = uses.trim().to_string();
        // Local actions get no pre stage (GitHub: "`pre` execution is not
        // supported for local action"); they are read when they run.
        if !matches!(parse_uses(&uses), Ok(UsesRef::Remote(_))) || self.is_vm_action(&uses) {
            return;
        }
        let Ok(action) = self.load_action(&uses, None).await else {
            return;
        };
        match &action.manifest.runs {
            Runs::Node(_) | Runs::Docker(_) => {
                let Some(StageEntries {
                    pre: Some((pre, pre_if)),
                    post,
                }) = StageEntries::of(&action.manifest.runs)
                else {
                    return;
                };
                let ran = self
                    .run_stage(
                        state,
                        Stage {
                            index,
                            key: key.to_string(),
                            dir: format!("pre-{key}"),
                            step: step.clone(),
                            action: action.clone(),
                            entry: pre,
                            condition: pre_if,
                            inputs: None,
                            step_env: None,
                            name: format!("Pre {}", self.display_name(step, &ctx)),
                        },
                        runner_debug,
                    )
                    .await;
                if !ran {
                    return;
                }
                // Its post is due now, whether or not the main stage runs.
                state.pre_ran.insert(key.to_string());
                if let Some((entry, condition)) = post {
                    state.posts.push(PostStage {
                        key: key.to_string(),
                        index,
                        step: step.clone(),
                        action,
                        entry,
                        condition,
                        inputs: None,
                        step_env: None,
                        name: format!("Post {}", self.display_name(step, &ctx)),
                        scope: state.scopes.last().cloned(),
                    });
                }
            }
            Runs::Composite(composite) => {
                let depth = state.scopes.last().map_or(0, |s| s.depth) + 1;
                if depth > super::action::MAX_COMPOSITE_DEPTH {
                    // The step reports it when it runs.
                    return;
                }
                let mut step_env = IndexMap::new();
                for (k, v) in &step.env {
                    if let Ok(val) = interpolate(&v.0, &ctx) {
                        step_env.insert(k.clone(), val);
                    }
                }
                let ctx = self.contexts(&self.env_context(state, Some(&step_env)), state);
                let plan = StepRun {
                    index,
                    log: None,
                    dir: String::new(),
                    key: key.to_string(),
                    step,
                    ctx: &ctx,
                    step_env: &step_env,
                    deadline: None,
                    stop_kind: Stop::JobTimeout,
                    watch_cancel: true,
                    runner_debug,
                };
                let Ok(inputs) = self.action_inputs_quiet(&plan, &action) else {
                    return;
                };
                let mut env = state
                    .scopes
                    .last()
                    .map(|s| s.env.clone())
                    .unwrap_or_default();
                env.extend(step_env);
                state.scopes.push(ActionScope {
                    inputs: inputs
                        .iter()
                        .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                        .collect(),
                    info: action.info.clone(),
                    env,
                    depth,
                    failed: false,
                    caller_timed_out: false,
                });
                for (i, child) in composite.steps.iter().enumerate() {
                    let child_key = format!("{key}.{}", i + 1);
                    Box::pin(self.pre_stages_of(state, index, &child_key, child, runner_debug))
                        .await;
                }
                state.scopes.pop();
            }
        }
    }

    /// Runs the registered post stages, last registered first, each when its
    /// `post-if` holds (default `always()`).
    pub(super) async fn run_post_stages(&self, state: &mut JobState, runner_debug: bool) {
        while let Some(post) = state.posts.pop() {
            let n = state.posts.len() + 1;
            // A nested action's post sees its composite's inputs and env
            // (and no secrets), as its main stage did.
            let scoped = post.scope.is_some();
            if let Some(scope) = post.scope {
                state.scopes.push(scope);
            }
            self.run_stage(
                state,
                Stage {
                    index: post.index,
                    key: post.key.clone(),
                    dir: format!("post-{n}-{}", post.key),
                    step: post.step,
                    action: post.action,
                    entry: post.entry,
                    condition: post.condition,
                    inputs: post.inputs,
                    step_env: post.step_env,
                    name: post.name,
                },
                runner_debug,
            )
            .await;
            if scoped {
                state.scopes.pop();
            }
        }
    }

    /// Runs a pre or post stage outside the steps; `false` when its
    /// condition kept it from running.
    async fn run_stage(&self, state: &mut JobState, stage: Stage, runner_debug: bool) -> bool {
        let started = Instant::now();
        let after_cancel = state.status == JobStatus::Cancelled;
        let mut base_ctx = self.contexts(&self.env_context(state, None), state);
        let step_env = match stage.step_env {
            Some(e) => e,
            None => {
                let texts: Vec<&str> = stage.step.env.values().map(|v| v.0.as_str()).collect();
                if let Err(e) = self.prepare_hash_files(&mut base_ctx, &texts, false).await {
                    self.em.error(None, format!("{}: {e}", stage.name));
                }
                let mut e = IndexMap::new();
                for (k, v) in &stage.step.env {
                    if let Ok(val) = interpolate(&v.0, &base_ctx) {
                        e.insert(k.clone(), val);
                    }
                }
                e
            }
        };
        let mut ctx = self.contexts(&self.env_context(state, Some(&step_env)), state);
        if let Err(e) = self
            .prepare_hash_files(&mut ctx, &[stage.condition.as_str()], true)
            .await
        {
            self.em.error(None, format!("{}: {e}", stage.name));
        }
        if stage.inputs.is_none() {
            let texts: Vec<&str> = stage.step.with.values().map(|v| v.0.as_str()).collect();
            if let Err(e) = self.prepare_hash_files(&mut ctx, &texts, false).await {
                self.em.error(None, format!("{}: {e}", stage.name));
            }
        }
        match evaluate_condition(&stage.condition, &ctx) {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                self.em.error(
                    None,
                    format!(
                        "{}: invalid condition `{}`: {e}",
                        stage.name, stage.condition
                    ),
                );
                self.fail_job(state);
                return false;
            }
        }
        self.em.line(None, LineKind::GroupStart, stage.name.clone());
        let now = Instant::now();
        let (deadline, stop_kind) = if after_cancel {
            (now + AFTER_CANCEL_STEP_LIMIT, Stop::JobTimeout)
        } else {
            (self.job_deadline.max(now), Stop::JobTimeout)
        };
        let plan = StepRun {
            index: stage.index,
            log: None,
            dir: format!("{}/{}", self.layout.steps_root, stage.dir),
            key: stage.key.clone(),
            step: &stage.step,
            ctx: &ctx,
            step_env: &step_env,
            deadline: Some(deadline),
            stop_kind,
            watch_cancel: !after_cancel,
            runner_debug,
        };
        // As on GitHub, a stage shares its step's `continue-on-error`.
        let continue_on_error = stage
            .step
            .continue_on_error
            .as_ref()
            .is_some_and(|c| interpolate(&c.0, &ctx).is_ok_and(|v| super::state::is_true(&v)));
        let inputs = match stage.inputs {
            Some(i) => Ok(i),
            None => self.action_inputs(&plan, &stage.action),
        };
        let end = match inputs {
            Ok(inputs) if matches!(stage.action.manifest.runs, Runs::Docker(_)) => {
                self.run_docker_stage(
                    &plan,
                    state,
                    &stage.action,
                    DockerStage::Hook(&stage.entry),
                    &inputs,
                )
                .await
            }
            Ok(inputs) => {
                self.run_node_stage(&plan, state, &stage.action, &stage.entry, &inputs)
                    .await
            }
            Err(e) => Err(e),
        };
        match end {
            Ok((StepEnd::Success, _)) => {}
            Ok((StepEnd::Failure, _)) if continue_on_error => self.em.runner(
                None,
                format!(
                    "{} failed; the job goes on (`continue-on-error`)",
                    stage.name
                ),
            ),
            Ok((StepEnd::Failure, _)) => self.fail_job(state),
            Ok((StepEnd::Stopped(Stop::Cancelled), _)) => {
                state.status = JobStatus::Cancelled;
                self.em
                    .runner(None, format!("{} was cancelled", stage.name));
            }
            Ok((StepEnd::Stopped(_), _)) => {
                if after_cancel {
                    self.em.error(
                        None,
                        format!(
                            "{} was stopped: stages that run after the job was cancelled or timed out get at most {} minutes",
                            stage.name,
                            AFTER_CANCEL_STEP_LIMIT.as_secs() / 60
                        ),
                    );
                    self.fail_job(state);
                } else {
                    self.mark_timed_out(state);
                }
            }
            Err(e) => {
                self.em.error(None, format!("{}: {e}", stage.name));
                if !continue_on_error {
                    self.fail_job(state);
                }
            }
        }
        self.em.line(None, LineKind::GroupEnd, "");
        tracing::debug!(
            target: "solstice::executor",
            stage = %stage.dir,
            ms = started.elapsed().as_millis() as u64,
            "action stage finished"
        );
        true
    }

    fn fail_job(&self, state: &mut JobState) {
        if state.status == JobStatus::Success {
            state.status = JobStatus::Failure;
        }
    }
}

/// A pre or post stage to run.
struct Stage {
    index: usize,
    key: String,
    /// Its directory's name under `steps_root`.
    dir: String,
    step: Step,
    action: Arc<LoadedAction>,
    entry: String,
    condition: String,
    /// Evaluated inputs; `None`: evaluate them now.
    inputs: Option<IndexMap<String, String>>,
    step_env: Option<IndexMap<String, String>>,
    name: String,
}

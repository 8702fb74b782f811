//! Step execution: evaluate a step (`env`, `if:`, timeouts), run its `run:`
//! (or the checkout) in one wrapped exec, and apply its file commands.

use std::time::Instant;

use indexmap::IndexMap;

use super::AFTER_CANCEL_STEP_LIMIT;
use super::archive::{TarFile, build_tar};
use super::checkout;
use super::checkout_step::CheckoutPlan;
use super::context::run_default;
use super::env::{self, RunnerVarsInput};
use super::error::StepError;
use super::exec::{ExecResult, Stop};
use super::filecmd;
use super::runtime::Runtime;
use super::shell::{self, ResolvedShell, WrapperSpec};
use super::state::{JobState, is_true, minutes, skip_reason};
use crate::events::{Conclusion, JobEvent, LineKind};
use crate::guest::shell_quote;
use crate::workflow::Step;
use crate::workflow::expr::{Contexts, JobStatus, evaluate_condition, interpolate};

impl Runtime<'_> {
    pub(super) async fn run_step(
        &self,
        index: usize,
        step: &Step,
        state: &mut JobState,
        runner_debug: bool,
    ) {
        let started = Instant::now();
        let after_cancel = state.status == JobStatus::Cancelled;
        let mut base_ctx = self.contexts(&self.env_context(state, None), state);

        // Step env (may refer to the env context without the step's own values).
        let mut step_env = IndexMap::new();
        let mut setup_error: Option<String> = None;
        // hashFiles() results are computed in the guest before evaluating.
        let env_texts: Vec<&str> = step.env.values().map(|v| v.0.as_str()).collect();
        if let Err(e) = self
            .prepare_hash_files(&mut base_ctx, &env_texts, false)
            .await
        {
            setup_error.get_or_insert(e);
        }
        for (k, v) in &step.env {
            match interpolate(&v.0, &base_ctx) {
                Ok(val) => {
                    step_env.insert(k.clone(), val);
                }
                Err(e) => {
                    setup_error.get_or_insert(format!("Invalid step env `{k}`: {e}"));
                }
            }
        }
        let env_ctx = self.env_context(state, Some(&step_env));
        let mut ctx = self.contexts(&env_ctx, state);
        ctx.hash_files = std::mem::take(&mut base_ctx.hash_files);
        let name = self.display_name(step, &ctx);

        let explicit_if = step
            .if_
            .as_ref()
            .map(|s| s.0.trim())
            .filter(|s| !s.is_empty());
        let condition = explicit_if.unwrap_or("success()");
        if let Err(e) = self.prepare_hash_files(&mut ctx, &[condition], true).await {
            setup_error.get_or_insert(e);
        }
        let run_it = match evaluate_condition(condition, &ctx) {
            Ok(b) => b,
            Err(e) => {
                setup_error.get_or_insert(format!("Invalid `if:` condition: {e}"));
                true
            }
        };
        self.em.emit(JobEvent::StepStarted {
            index,
            name: name.clone(),
        });
        if !run_it {
            self.em
                .runner(Some(index), skip_reason(explicit_if, &ctx, state));
            self.record(
                state,
                index,
                step,
                name,
                Conclusion::Skipped,
                Conclusion::Skipped,
                IndexMap::new(),
                started,
            );
            return;
        }

        // hashFiles() in the fields evaluated from here on.
        let wd_default = run_default(self.job, &self.spec.workflow, |d| {
            d.working_directory.clone()
        });
        let mut texts: Vec<&str> = step.with.values().map(|v| v.0.as_str()).collect();
        texts.extend(step.run.as_deref());
        texts.extend(step.working_directory.as_deref().or(wd_default.as_deref()));
        texts.extend(step.continue_on_error.as_ref().map(|c| c.0.as_str()));
        texts.extend(step.timeout_minutes.as_ref().map(|t| t.0.as_str()));
        if let Err(e) = self.prepare_hash_files(&mut ctx, &texts, false).await {
            setup_error.get_or_insert(e);
        }
        let continue_on_error = step
            .continue_on_error
            .as_ref()
            .map(|c| {
                interpolate(&c.0, &ctx)
                    .map(|v| is_true(&v))
                    .unwrap_or(false)
            })
            .unwrap_or(false);
        let step_timeout = match &step.timeout_minutes {
            None => None,
            Some(t) => match interpolate(&t.0, &ctx).ok().as_deref().and_then(minutes) {
                Some(d) => Some(d),
                None => {
                    setup_error.get_or_insert(format!(
                        "Invalid timeout-minutes `{}`: expected a positive number",
                        t.0
                    ));
                    None
                }
            },
        };

        let mut outputs = IndexMap::new();
        let outcome = if let Some(err) = setup_error {
            self.em.error(Some(index), err);
            Conclusion::Failure
        } else {
            let now = Instant::now();
            let mut deadline = step_timeout.map(|d| now + d);
            let mut stop_kind = Stop::StepTimeout;
            if after_cancel {
                let limit = now + AFTER_CANCEL_STEP_LIMIT;
                if deadline.is_none_or(|d| d > limit) {
                    deadline = Some(limit);
                    // Reported by the `after_cancel` branch below, not as a step timeout.
                    stop_kind = Stop::JobTimeout;
                }
            } else if deadline.is_none_or(|d| d >= self.job_deadline) {
                deadline = Some(self.job_deadline);
                stop_kind = Stop::JobTimeout;
            }
            let plan = StepRun {
                index,
                step,
                ctx: &ctx,
                step_env: &step_env,
                deadline,
                stop_kind,
                watch_cancel: !after_cancel,
                runner_debug,
            };
            match self.execute(&plan, state).await {
                Ok((res, step_outputs)) => {
                    outputs = step_outputs;
                    match res {
                        StepEnd::Success => Conclusion::Success,
                        StepEnd::Failure => Conclusion::Failure,
                        StepEnd::Stopped(Stop::StepTimeout) => {
                            self.em.error(
                                Some(index),
                                format!(
                                    "The step was stopped after its timeout-minutes ({})",
                                    step.timeout_minutes
                                        .as_ref()
                                        .map(|t| t.0.as_str())
                                        .unwrap_or("")
                                ),
                            );
                            Conclusion::Failure
                        }
                        StepEnd::Stopped(Stop::JobTimeout) => {
                            if after_cancel {
                                self.em.error(
                                    Some(index),
                                    format!(
                                        "The step was stopped: steps that run after the job was cancelled or timed out get at most {} minutes",
                                        AFTER_CANCEL_STEP_LIMIT.as_secs() / 60
                                    ),
                                );
                                Conclusion::Failure
                            } else {
                                self.mark_timed_out(state);
                                Conclusion::Cancelled
                            }
                        }
                        StepEnd::Stopped(Stop::Cancelled) => {
                            state.status = JobStatus::Cancelled;
                            self.em.runner(Some(index), "The step was cancelled");
                            Conclusion::Cancelled
                        }
                    }
                }
                Err(e) => {
                    self.em.error(Some(index), e.to_string());
                    Conclusion::Failure
                }
            }
        };
        let conclusion = if outcome == Conclusion::Failure && continue_on_error {
            Conclusion::Success
        } else {
            outcome
        };
        if conclusion == Conclusion::Failure && state.status == JobStatus::Success {
            state.status = JobStatus::Failure;
        }
        self.record(
            state, index, step, name, outcome, conclusion, outputs, started,
        );
    }

    /// Runs a step's `run:` or `uses:`; returns how it ended and its outputs, or
    /// an error message (the step fails).
    pub(super) async fn execute(
        &self,
        plan: &StepRun<'_>,
        state: &mut JobState,
    ) -> Result<(StepEnd, IndexMap<String, String>), StepError> {
        let step = plan.step;
        let ctx = plan.ctx;
        let dir = self.step_dir(plan.index);
        let (script, ext, shell_cmd, extra) = match (&step.run, &step.uses) {
            (Some(_), Some(_)) => {
                return Err(StepError::RunAndUses);
            }
            (None, None) => return Err(StepError::NoRunOrUses),
            (Some(run), None) => {
                let script = interpolate(run, ctx).map_err(|error| StepError::Expression {
                    what: "`run:`".into(),
                    error,
                })?;
                let shell_name = step
                    .shell
                    .clone()
                    .or_else(|| run_default(self.job, &self.spec.workflow, |d| d.shell.clone()));
                let shell = shell::resolve_shell(shell_name.as_deref(), self.has_bash)
                    .map_err(StepError::Shell)?;
                (script, shell.extension(), shell, Vec::new())
            }
            (None, Some(uses)) if checkout::is_checkout(uses) => {
                let mut with = IndexMap::new();
                for (k, v) in &step.with {
                    let val = interpolate(&v.0, ctx).map_err(|error| StepError::Expression {
                        what: format!("`with.{k}`"),
                        error,
                    })?;
                    // Input names are case-insensitive, as on GitHub.
                    with.insert(k.to_ascii_lowercase(), val);
                }
                match self.checkout_plan(plan.index, &with, &dir)? {
                    CheckoutPlan::Skip(msg) => {
                        self.em.line(
                            Some(plan.index),
                            LineKind::Annotation("warning".into()),
                            msg,
                        );
                        return Ok((StepEnd::Success, IndexMap::new()));
                    }
                    CheckoutPlan::Local { tar, dest, clean } => {
                        return self
                            .local_checkout(plan, tar, &dest, clean, "the local tree")
                            .await;
                    }
                    CheckoutPlan::Remote {
                        script,
                        extra,
                        host,
                    } => {
                        if !self.guest_has_git().await {
                            return self.host_checkout(plan, &host).await;
                        }
                        self.em.runner(
                            Some(plan.index),
                            format!(
                                "git is installed in the guest; fetching {}@{} there",
                                host.repository,
                                host.at()
                            ),
                        );
                        (
                            script,
                            "sh",
                            ResolvedShell::Template(vec!["sh".into(), "-e".into(), "{0}".into()]),
                            extra,
                        )
                    }
                }
            }
            (None, Some(uses)) => {
                return Err(StepError::Unsupported {
                    uses: uses.clone(),
                    from: self.spec.default_actions_url.clone(),
                });
            }
        };

        // Environment, in precedence order.
        let action = step
            .id
            .clone()
            .unwrap_or_else(|| format!("__run_{}", plan.index + 1));
        let runner_vars = env::runner_variables(&RunnerVarsInput {
            github: &self.spec.github,
            layout: &self.layout,
            job_id: &self.spec.job_id,
            workflow_name: self.spec.workflow.name.as_deref().unwrap_or_default(),
            runner_os: self.runner.os.runner_os(),
            runner_arch: self.runner.arch,
            runner_name: &self.runner.name,
            action: &action,
            step_dir: &dir,
            debug: plan.runner_debug,
        });
        let mut merged: IndexMap<String, String> = self.base_env.clone();
        for (k, v) in runner_vars
            .clone()
            .into_iter()
            .chain(self.spec.extra_env.clone())
        {
            merged.insert(k, v);
        }
        for (k, v) in state.env_files.iter().chain(plan.step_env) {
            merged.insert(k.clone(), v.clone());
        }
        // As on GitHub, the default GITHUB_* and RUNNER_* variables cannot be
        // overridden (a redirected GITHUB_OUTPUT would silently lose outputs).
        for (k, v) in runner_vars {
            if k.starts_with("GITHUB_") || k.starts_with("RUNNER_") {
                merged.insert(k, v);
            }
        }
        let mut env_list = Vec::new();
        for (k, v) in merged {
            if shell::valid_env_name(&k) {
                env_list.push((k, v));
            } else {
                self.em.line(
                    Some(plan.index),
                    LineKind::Annotation("warning".into()),
                    format!("Skipped environment variable `{k}`: not a valid shell variable name"),
                );
            }
        }

        let wd_raw = step.working_directory.clone().or_else(|| {
            run_default(self.job, &self.spec.workflow, |d| {
                d.working_directory.clone()
            })
        });
        let wd = match wd_raw {
            Some(w) => Some(interpolate(&w, ctx).map_err(|error| StepError::Expression {
                what: "`working-directory`".into(),
                error,
            })?),
            None => None,
        };
        let working_dir = self.layout.resolve(wd.as_deref());
        let script_path = format!("{dir}/script.{ext}");
        let marker = format!("__solstice_files_{:032x}__", rand::random::<u128>());
        let run_cmd = shell_cmd.command(&script_path);
        let wrapper = shell::render_wrapper(&WrapperSpec {
            step_dir: &dir,
            env: &env_list,
            image_path: &self.runner.path_prepend,
            path_prefix: &state.path_prefix,
            working_dir: &working_dir,
            run: &run_cmd,
            marker: &marker,
        });
        let name = format!("step-{}", plan.index + 1);
        let mut script_bytes = script.into_bytes();
        if !script_bytes.ends_with(b"\n") {
            script_bytes.push(b'\n');
        }
        let mut files = vec![
            TarFile::dir(&name),
            TarFile::file(&format!("{name}/script.{ext}"), script_bytes, 0o700),
            TarFile::file(&format!("{name}/wrapper.sh"), wrapper.into_bytes(), 0o700),
        ];
        for f in shell::FILE_COMMANDS {
            files.push(TarFile::file(&format!("{name}/{f}"), Vec::new(), 0o600));
        }
        for (fname, bytes) in extra {
            files.push(TarFile::file(&format!("{name}/{fname}"), bytes, 0o600));
        }
        let tar = build_tar(&files).map_err(StepError::Archive)?;
        let cmd = step_command(&self.layout.steps_root, &format!("{dir}/wrapper.sh"));
        let res = self.exec_step(plan, &cmd, &tar, Some(marker), &dir).await;
        self.finish_exec(plan, res, state)
    }

    /// Applies the file commands and maps an exec result to a step end.
    pub(super) fn finish_exec(
        &self,
        plan: &StepRun<'_>,
        res: ExecResult,
        state: &mut JobState,
    ) -> Result<(StepEnd, IndexMap<String, String>), StepError> {
        let status = match res.status {
            Ok(s) => s,
            Err(e) => {
                if let Some(stop) = res.stop {
                    return Ok((StepEnd::Stopped(stop), IndexMap::new()));
                }
                return Err(StepError::Guest(e));
            }
        };
        if let Some(stop) = res.stop {
            return Ok((StepEnd::Stopped(stop), IndexMap::new()));
        }
        let mut outputs = IndexMap::new();
        let mut failed = status != 0;
        if let Some(dump) = res.dump {
            match filecmd::parse_key_values(&dump.env) {
                Ok(pairs) => {
                    for (k, v) in pairs {
                        state.env_files.insert(k, v);
                    }
                }
                Err(e) => {
                    self.em.error(Some(plan.index), format!("GITHUB_ENV: {e}"));
                    failed = true;
                }
            }
            match filecmd::parse_key_values(&dump.output) {
                Ok(pairs) => outputs.extend(pairs),
                Err(e) => {
                    self.em
                        .error(Some(plan.index), format!("GITHUB_OUTPUT: {e}"));
                    failed = true;
                }
            }
            filecmd::prepend_paths(&mut state.path_prefix, filecmd::parse_path(&dump.path));
            if !dump.summary.trim().is_empty() {
                self.em.emit(JobEvent::StepSummary {
                    index: plan.index,
                    markdown: dump.summary,
                });
            }
        }
        if status != 0 {
            self.em.runner(
                Some(plan.index),
                format!("Process completed with exit code {status}."),
            );
        }
        Ok((
            if failed {
                StepEnd::Failure
            } else {
                StepEnd::Success
            },
            outputs,
        ))
    }
}

/// The guest command of a `run:` step: unpack the step's files (on stdin)
/// into `steps_root` and run the wrapper. `tar -m`: times are not restored
/// (the archive carries the host's clock; a guest behind it would warn about
/// files from the future). Nothing of this plumbing reaches the step's log but
/// one `Solstice:` line when it fails. `steps_root` is created again if a step
/// removed it.
pub(super) fn step_command(steps_root: &str, wrapper: &str) -> String {
    let r = shell_quote(steps_root);
    format!(
        "cd {r} 2>/dev/null || {{ e=$(mkdir -p {r} 2>&1) && cd {r}; }} || \
         {{ printf 'Solstice: could not create %s: %s\\n' {r} \"$(printf '%s' \"$e\" | tr '\\n' ' ')\" >&2; exit 1; }}; \
         e=$(tar xmf - 2>&1 >/dev/null) || \
         {{ printf 'Solstice: could not unpack the step into %s: %s\\n' {r} \"$(printf '%s' \"$e\" | tr '\\n' ' ')\" >&2; exit 1; }}; \
         exec sh {w}",
        w = shell_quote(wrapper)
    )
}

/// How a step's process ended.
pub(super) enum StepEnd {
    Success,
    Failure,
    Stopped(Stop),
}

pub(super) struct StepRun<'p> {
    pub(super) index: usize,
    pub(super) step: &'p Step,
    pub(super) ctx: &'p Contexts,
    /// The step's own `env`, evaluated.
    pub(super) step_env: &'p IndexMap<String, String>,
    pub(super) deadline: Option<Instant>,
    /// What hitting `deadline` means.
    pub(super) stop_kind: Stop,
    pub(super) watch_cancel: bool,
    pub(super) runner_debug: bool,
}

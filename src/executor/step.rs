//! Step execution: evaluate a step (`env`, `if:`, timeouts), run its `run:`
//! (or the checkout) in one wrapped exec, and apply its file commands.

use std::time::Instant;

use indexmap::IndexMap;

use super::AFTER_CANCEL_STEP_LIMIT;
use super::archive::{TarFile, build_tar};
use super::checkout;
use super::checkout_step::CheckoutPlan;
use super::containers::{ContainerCommand, JobContainer, paths};
use super::context::run_default;
use super::env::{self, ActionInfo, RunnerVarsInput};
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
    /// Runs step `index` of the job: its events, its record and the job's
    /// status.
    pub(super) async fn run_step(
        &self,
        index: usize,
        step: &Step,
        state: &mut JobState,
        runner_debug: bool,
    ) {
        let site = Site {
            index,
            key: format!("step-{}", index + 1),
            child: false,
            limit: None,
        };
        self.run_step_at(&site, step, state, runner_debug).await;
    }

    /// Runs one step where `site` says: a job step, or a step of a
    /// composite action (then its lines go to the calling step, and its
    /// result only to the composite's `steps` context).
    pub(super) async fn run_step_at(
        &self,
        site: &Site,
        step: &Step,
        state: &mut JobState,
        runner_debug: bool,
    ) {
        let index = site.index;
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
        if site.child {
            if !run_it {
                // As on GitHub, a skipped step of a composite action leaves
                // no trace but its `steps` context.
                self.record_child(
                    state,
                    step,
                    Conclusion::Skipped,
                    Conclusion::Skipped,
                    IndexMap::new(),
                );
                return;
            }
            self.em
                .line(Some(index), LineKind::GroupStart, name.clone());
        } else {
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
            // A composite's steps also end with the calling step.
            if let Some((limit, kind)) = site.limit
                && deadline.is_none_or(|d| d > limit)
            {
                deadline = Some(limit);
                stop_kind = kind;
            }
            let plan = StepRun {
                index,
                log: Some(index),
                dir: format!("{}/{}", self.layout.steps_root, site.key),
                key: site.key.clone(),
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
                        StepEnd::Stopped(Stop::StepTimeout) if site.child => {
                            // Composite steps have no `timeout-minutes`: the
                            // calling step's stopped it, and says so.
                            if let Some(s) = state.scopes.last_mut() {
                                s.caller_timed_out = true;
                            }
                            Conclusion::Failure
                        }
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
                            if !site.child {
                                self.em.runner(Some(index), "The step was cancelled");
                            }
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
        if site.child {
            if conclusion == Conclusion::Failure
                && let Some(s) = state.scopes.last_mut()
            {
                s.failed = true;
            }
            self.em.line(Some(index), LineKind::GroupEnd, "");
            self.record_child(state, step, outcome, conclusion, outputs);
        } else {
            self.record(
                state, index, step, name, outcome, conclusion, outputs, started,
            );
        }
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
        match (&step.run, &step.uses) {
            (Some(_), Some(_)) => Err(StepError::RunAndUses),
            (None, None) => Err(StepError::NoRunOrUses),
            (Some(run), None) => {
                let script = interpolate(run, ctx).map_err(|error| StepError::Expression {
                    what: "`run:`".into(),
                    error,
                })?;
                let shell_name = step.shell.clone().or_else(|| {
                    if state.scopes.is_empty() {
                        run_default(self.job, &self.spec.workflow, |d| d.shell.clone())
                    } else {
                        // A composite's steps name their shell themselves.
                        None
                    }
                });
                let shell = if self.job_container().is_some() {
                    // The container's shells, not the VM's (`sh -e {0}` by default).
                    shell::resolve_container_shell(shell_name.as_deref())
                } else {
                    shell::resolve_shell(shell_name.as_deref(), self.has_bash)
                }
                .map_err(StepError::Shell)?;
                let working_dir = self.working_dir(plan, state)?;
                let body = Body {
                    run: RunCommand::Script { script, shell },
                    extra_files: Vec::new(),
                    vars: Vec::new(),
                    action: None,
                    working_dir,
                    vm_only: false,
                };
                let res = self.run_wrapped(plan, state, body).await?;
                self.finish_exec(plan, res, state)
            }
            (None, Some(uses)) if checkout::is_checkout(uses) => {
                let with = self.evaluate_with(plan)?;
                match self.checkout_plan(plan.index, &with, &plan.dir)? {
                    CheckoutPlan::Skip(msg) => {
                        self.em
                            .line(plan.log, LineKind::Annotation("warning".into()), msg);
                        Ok((StepEnd::Success, IndexMap::new()))
                    }
                    CheckoutPlan::Local { tar, dest, clean } => {
                        self.local_checkout(plan, tar, &dest, clean, "the local tree")
                            .await
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
                            plan.log,
                            format!(
                                "git is installed in the guest; fetching {}@{} there",
                                host.repository,
                                host.at()
                            ),
                        );
                        let body = Body {
                            run: RunCommand::Script {
                                script,
                                shell: ResolvedShell::Template(vec![
                                    "sh".into(),
                                    "-e".into(),
                                    "{0}".into(),
                                ]),
                            },
                            extra_files: extra,
                            vars: Vec::new(),
                            action: None,
                            working_dir: self.working_dir(plan, state)?,
                            vm_only: true,
                        };
                        let res = self.run_wrapped(plan, state, body).await?;
                        self.finish_exec(plan, res, state)
                    }
                }
            }
            (None, Some(uses)) => self.run_action_step(plan, state, uses).await,
        }
    }

    /// A step's `with:`, evaluated, names lower-cased (input names are
    /// case-insensitive, as on GitHub).
    pub(super) fn evaluate_with(
        &self,
        plan: &StepRun<'_>,
    ) -> Result<IndexMap<String, String>, StepError> {
        let mut with = IndexMap::new();
        for (k, v) in &plan.step.with {
            let val = interpolate(&v.0, plan.ctx).map_err(|error| StepError::Expression {
                what: format!("`with.{k}`"),
                error,
            })?;
            with.insert(k.to_ascii_lowercase(), val);
        }
        Ok(with)
    }

    /// The step's working directory: its `working-directory`, else the
    /// defaults' (not inside a composite action), else the workspace.
    fn working_dir(&self, plan: &StepRun<'_>, state: &JobState) -> Result<String, StepError> {
        let wd_raw = plan.step.working_directory.clone().or_else(|| {
            if state.scopes.is_empty() {
                run_default(self.job, &self.spec.workflow, |d| {
                    d.working_directory.clone()
                })
            } else {
                None
            }
        });
        let wd = match wd_raw {
            Some(w) => Some(
                interpolate(&w, plan.ctx).map_err(|error| StepError::Expression {
                    what: "`working-directory`".into(),
                    error,
                })?,
            ),
            None => None,
        };
        Ok(self.layout.resolve(wd.as_deref()))
    }

    /// Runs `body` in one wrapped exec with the step's environment, in
    /// precedence order: workflow and job `env`, the runner's variables,
    /// `GITHUB_ENV`, the calling step's `env` (inside a composite action),
    /// the step's `env`, then `body.vars` (`INPUT_*`, `STATE_*`). The
    /// default `GITHUB_*` and `RUNNER_*` variables cannot be overridden.
    pub(super) async fn run_wrapped(
        &self,
        plan: &StepRun<'_>,
        state: &mut JobState,
        body: Body,
    ) -> Result<ExecResult, StepError> {
        let dir = plan.dir.as_str();
        let action = plan
            .step
            .id
            .clone()
            .unwrap_or_else(|| format!("__run_{}", plan.index + 1));
        let action_info = body
            .action
            .as_ref()
            .or_else(|| state.scopes.last().map(|s| &s.info));
        let runner_vars = env::runner_variables(&RunnerVarsInput {
            github: &self.spec.github,
            layout: &self.layout,
            job_id: &self.spec.job_id,
            workflow_name: self.spec.workflow.name.as_deref().unwrap_or_default(),
            runner_os: self.runner.os.runner_os(),
            runner_arch: self.runner.arch,
            runner_name: &self.runner.name,
            action: &action,
            step_dir: dir,
            debug: plan.runner_debug,
            action_info,
        });
        let mut merged: IndexMap<String, String> = self.base_env.clone();
        for (k, v) in runner_vars
            .clone()
            .into_iter()
            .chain(self.spec.extra_env.clone())
        {
            merged.insert(k, v);
        }
        let scope_env = state.scopes.last().map(|s| &s.env);
        for (k, v) in state
            .env_files
            .iter()
            .chain(scope_env.into_iter().flatten())
            .chain(plan.step_env)
        {
            merged.insert(k.clone(), v.clone());
        }
        for (k, v) in &body.vars {
            merged.insert(k.clone(), v.clone());
        }
        // As on GitHub, the default GITHUB_* and RUNNER_* variables cannot be
        // overridden (a redirected GITHUB_OUTPUT would silently lose outputs).
        for (k, v) in runner_vars {
            if k.starts_with("GITHUB_") || k.starts_with("RUNNER_") {
                merged.insert(k, v);
            }
        }
        let command_like = matches!(
            body.run,
            RunCommand::Command { .. } | RunCommand::Container(_)
        );
        let mut env_list = Vec::new();
        let mut odd_names = Vec::new();
        for (k, v) in merged {
            if shell::valid_env_name(&k) {
                env_list.push((k, v));
            } else if command_like && !k.is_empty() && !k.contains('=') && !k.contains('\0') {
                // `INPUT_MY-INPUT`: no shell can export it, env(1) can.
                odd_names.push((k, v));
            } else {
                self.em.line(
                    plan.log,
                    LineKind::Annotation("warning".into()),
                    format!("Skipped environment variable `{k}`: not a valid shell variable name"),
                );
            }
        }

        let name = dir.rsplit('/').next().unwrap_or("step").to_string();
        let mut files = vec![TarFile::dir(&name)];
        let mut cd = Some(body.working_dir.as_str());
        let mut path_prefix: &[String] = &state.path_prefix;
        // A step of a job with a job container runs inside it.
        let run = match (body.run, self.job_container(), body.vm_only) {
            (RunCommand::Script { script, shell }, Some(jc), false) => {
                let ext = shell.extension();
                files.push(script_file(&name, ext, script));
                let inner = paths::translate(&format!("{dir}/script.{ext}"), &jc.mounts);
                RunCommand::Container(container_exec(
                    jc,
                    &body.working_dir,
                    shell.container_argv(&inner),
                ))
            }
            (RunCommand::Command { setup, program }, Some(jc), false) => {
                RunCommand::Container(container_exec(
                    jc,
                    &body.working_dir,
                    vec!["sh".into(), "-c".into(), format!("{setup}\n{program}")],
                ))
            }
            (run, _, _) => run,
        };
        let run_cmd = match run {
            RunCommand::Container(c) => {
                let r = render_container(
                    c,
                    &mut env_list,
                    &odd_names,
                    &state.path_prefix,
                    &format!("{dir}/script.env"),
                );
                if let Some(kill) = r.kill {
                    files.push(TarFile::file(
                        &format!("{name}/kill"),
                        kill.into_bytes(),
                        0o700,
                    ));
                }
                if let Some(content) = r.env_file {
                    // `script.*`: the wrapper removes it after the step.
                    files.push(TarFile::file(
                        &format!("{name}/script.env"),
                        content.into_bytes(),
                        0o600,
                    ));
                }
                let run = r.run;
                // The VM shell only starts the engine's client: the step's
                // directory and PATH are the container's.
                cd = None;
                path_prefix = &[];
                run
            }
            RunCommand::Script { script, shell } => {
                let ext = shell.extension();
                files.push(script_file(&name, ext, script));
                shell.command(&format!("{dir}/script.{ext}"))
            }
            RunCommand::Command { setup, program } => {
                if odd_names.is_empty() {
                    format!("{setup}\n{program}")
                } else {
                    let pairs: Vec<String> = odd_names
                        .iter()
                        .map(|(k, v)| shell_quote(&format!("{k}={v}")))
                        .collect();
                    format!("{setup}\nenv {} {program}", pairs.join(" "))
                }
            }
        };
        let marker = format!("__solstice_files_{:032x}__", rand::random::<u128>());
        let wrapper = shell::render_wrapper(&WrapperSpec {
            step_dir: dir,
            env: &env_list,
            image_path: &self.runner.path_prepend,
            path_prefix,
            working_dir: cd,
            run: &run_cmd,
            marker: &marker,
        });
        files.push(TarFile::file(
            &format!("{name}/wrapper.sh"),
            wrapper.into_bytes(),
            0o700,
        ));
        for f in shell::FILE_COMMANDS {
            files.push(TarFile::file(&format!("{name}/{f}"), Vec::new(), 0o600));
        }
        for (fname, bytes) in body.extra_files {
            files.push(TarFile::file(&format!("{name}/{fname}"), bytes, 0o600));
        }
        let tar = build_tar(&files).map_err(StepError::Archive)?;
        let cmd = step_command(&self.layout.steps_root, &format!("{dir}/wrapper.sh"));
        Ok(self.exec_step(plan, &cmd, &tar, Some(marker), dir).await)
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
                    self.em.error(plan.log, format!("GITHUB_ENV: {e}"));
                    failed = true;
                }
            }
            match filecmd::parse_key_values(&dump.output) {
                Ok(pairs) => outputs.extend(pairs),
                Err(e) => {
                    self.em.error(plan.log, format!("GITHUB_OUTPUT: {e}"));
                    failed = true;
                }
            }
            filecmd::prepend_paths(&mut state.path_prefix, filecmd::parse_path(&dump.path));
            match filecmd::parse_key_values(&dump.state) {
                Ok(pairs) => state.saved_state = pairs.into_iter().collect(),
                Err(e) => {
                    self.em.error(plan.log, format!("GITHUB_STATE: {e}"));
                    failed = true;
                }
            }
            if !dump.summary.trim().is_empty() {
                match plan.log {
                    Some(index) => self.em.emit(JobEvent::StepSummary {
                        index,
                        markdown: dump.summary,
                    }),
                    // A pre or post stage is outside the steps: its summary
                    // goes where its lines go.
                    None => {
                        self.em.line(None, LineKind::GroupStart, "Summary");
                        self.em.line(
                            None,
                            LineKind::Stdout,
                            dump.summary.trim_end_matches(['\n', '\r']),
                        );
                        self.em.line(None, LineKind::GroupEnd, "");
                    }
                }
            }
        }
        if status != 0 {
            self.em.runner(
                plan.log,
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

/// The step's script, `<step>/script.<ext>`, ending with a newline.
fn script_file(step: &str, ext: &str, script: String) -> TarFile {
    let mut bytes = script.into_bytes();
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    TarFile::file(&format!("{step}/script.{ext}"), bytes, 0o700)
}

/// Shell code that runs `c` from the VM, and the step's kill script. The
/// step's variables stay exported in the VM shell, with their values
/// translated to container paths, and reach the container as `-e NAME` only;
/// `PATH` is not exported in the VM (the engine's client needs the VM's) but
/// passed as `-e PATH=…` when the step changes it. `odd` holds the
/// variables no shell can export: they go through env(1).
fn render_container(
    c: ContainerCommand,
    env: &mut Vec<(String, String)>,
    odd: &[(String, String)],
    path_prefix: &[String],
    env_file: &str,
) -> ContainerRender {
    let mut step_path: Option<String> = None;
    // The engine's client reads these itself: a job's `DOCKER_HOST` (for a
    // `docker:dind` service, say) must reach the container, not redirect
    // Solstice's own client. They hold no secrets, so they go as
    // `-e NAME=VALUE`.
    let mut client_vars: Vec<(String, String)> = Vec::new();
    env.retain(|(k, v)| {
        if k == "PATH" {
            step_path = Some(v.clone());
            false
        } else if DOCKER_CLIENT_VARS.contains(&k.as_str()) {
            client_vars.push((k.clone(), v.clone()));
            false
        } else {
            true
        }
    });
    for (_, v) in env.iter_mut() {
        *v = paths::translate(v, &c.translate);
    }
    let mut args: Vec<String> = c.before.clone();
    for (k, _) in env.iter() {
        args.push("-e".into());
        args.push(k.clone());
    }
    for (k, v) in &client_vars {
        args.push("-e".into());
        args.push(format!("{k}={}", paths::translate(v, &c.translate)));
    }
    // Names no shell can export (`INPUT_MY-INPUT`): through an env file (0600,
    // removed with the script after the step) when the value fits on one
    // line, else through env(1).
    let mut file = String::new();
    let mut via_env = Vec::new();
    for (k, v) in odd {
        let v = paths::translate(v, &c.translate);
        if v.contains('\n') || v.contains('\r') {
            via_env.push(shell_quote(&format!("{k}={v}")));
            args.push("-e".into());
            args.push(k.clone());
        } else {
            file.push_str(&format!("{k}={v}\n"));
        }
    }
    if !file.is_empty() {
        args.push("--env-file".into());
        args.push(env_file.to_string());
    }
    let prefix: Vec<String> = path_prefix
        .iter()
        .map(|p| paths::translate(p, &c.translate))
        .collect();
    let path = match (step_path, &c.base_path) {
        (Some(p), _) if prefix.is_empty() => Some(p),
        (Some(p), _) => Some(format!("{}:{p}", prefix.join(":"))),
        (None, Some(base)) if !prefix.is_empty() => Some(format!("{}:{base}", prefix.join(":"))),
        _ => None,
    };
    if let Some(p) = path {
        args.push("-e".into());
        args.push(format!("PATH={p}"));
    }
    args.extend(c.after.iter().cloned());
    let argv = args
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let env_prefix = if via_env.is_empty() {
        String::new()
    } else {
        format!("env {} ", via_env.join(" "))
    };
    let setup = if c.setup.trim().is_empty() {
        String::new()
    } else {
        format!("( {}\n) && ", c.setup.trim_end())
    };
    let missing = shell_quote(
        "Solstice: this step needs the guest's container engine, but `docker` is not on the guest's PATH",
    );
    let run = format!(
        "if solstice_docker=$(command -v docker); then {setup}{env_prefix}\"$solstice_docker\" {argv}; \
         else printf '%s\\n' {missing} >&2; false; fi"
    );
    ContainerRender {
        run,
        kill: c.kill,
        env_file: (!file.is_empty()).then_some(file),
    }
}

/// The variables the `docker` client itself reads: never exported to it from
/// a step's environment (see [`render_container`]).
pub(super) const DOCKER_CLIENT_VARS: &[&str] = &[
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_TLS",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_CONFIG",
    "DOCKER_API_VERSION",
];

/// What [`render_container`] makes of a container command.
struct ContainerRender {
    /// Shell code for the wrapper.
    run: String,
    /// The step's kill script.
    kill: Option<String>,
    /// Content of the step's env file, if any.
    env_file: Option<String>,
}

/// `docker exec` of `argv` in the job container `jc`, in `working_dir` (a
/// guest path, translated), with the container's `PATH` as base and a kill
/// that signals every process of the container but its PID 1 (`tail`).
pub(super) fn container_exec(
    jc: &JobContainer,
    working_dir: &str,
    argv: Vec<String>,
) -> ContainerCommand {
    let id = shell_quote(&jc.id);
    let mut after = vec![jc.id.clone()];
    after.extend(argv);
    ContainerCommand {
        setup: String::new(),
        before: vec![
            "exec".into(),
            "-i".into(),
            "--workdir".into(),
            paths::translate(working_dir, &jc.mounts),
        ],
        after,
        translate: jc.mounts.clone(),
        base_path: Some(jc.image_path.clone()),
        kill: Some(format!(
            "d=$(command -v docker) && \"$d\" exec {id} sh -c 'kill -'\"$1\"' -1'\n"
        )),
    }
}

/// How a step's process ended.
pub(super) enum StepEnd {
    Success,
    Failure,
    Stopped(Stop),
}

/// Where a step runs: a job step, or a step of a composite action.
pub(super) struct Site {
    /// The job step (for a composite's steps: the calling step).
    pub(super) index: usize,
    /// Unique name of this step instance in the job (`step-3`, `step-3.2`):
    /// its directory under `steps_root`, and the key of its action's state.
    pub(super) key: String,
    /// A step of a composite action.
    pub(super) child: bool,
    /// The calling step's deadline, for a composite's steps.
    pub(super) limit: Option<(Instant, Stop)>,
}

/// What one wrapped exec runs.
pub(super) enum RunCommand {
    /// A script file run by a shell.
    Script {
        script: String,
        shell: ResolvedShell,
    },
    /// `setup` (shell code), then `program` (a command line) run with the
    /// variables no shell can export (`INPUT_MY-INPUT`) through env(1).
    Command { setup: String, program: String },
    /// A command of the guest's container engine (`docker exec` into the
    /// job container, `docker run` of a Docker action).
    Container(ContainerCommand),
}

/// One wrapped exec of a step ([`Runtime::run_wrapped`]).
pub(super) struct Body {
    pub(super) run: RunCommand,
    /// More files in the step directory (name, content).
    pub(super) extra_files: Vec<(String, Vec<u8>)>,
    /// Variables set last, whatever their names (`INPUT_MY-INPUT`).
    pub(super) vars: Vec<(String, String)>,
    /// The action run (`GITHUB_ACTION_PATH`, ...); `None`: the composite
    /// action the step belongs to, if any.
    pub(super) action: Option<ActionInfo>,
    pub(super) working_dir: String,
    /// Runs in the VM even in a job with a job container (the checkout's
    /// git, VM actions); otherwise a `Script` or `Command` of such a job runs
    /// inside the job container.
    pub(super) vm_only: bool,
}

pub(super) struct StepRun<'p> {
    /// The job step (for a composite's steps and an action's pre and post
    /// stages: the calling step).
    pub(super) index: usize,
    /// The step lines are reported under (`None`: outside any step, for pre
    /// and post stages).
    pub(super) log: Option<usize>,
    /// The step's directory in the guest.
    pub(super) dir: String,
    /// The step instance's key ([`Site::key`]).
    pub(super) key: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> ContainerCommand {
        ContainerCommand {
            before: vec!["exec".into(), "-i".into()],
            after: vec!["c1".into(), "sh".into(), "-e".into(), "/__w/s.sh".into()],
            translate: vec![("/home/d/work".into(), "/__w".into())],
            ..ContainerCommand::default()
        }
    }

    #[test]
    fn docker_client_variables_go_by_value_and_are_not_exported() {
        let mut env = vec![
            ("DOCKER_HOST".to_string(), "tcp://docker:2375".to_string()),
            ("TOKEN".to_string(), "s3cret".to_string()),
            ("W".to_string(), "/home/d/work/r".to_string()),
        ];
        let r = render_container(command(), &mut env, &[], &[], "/t/script.env");
        // The client's environment keeps TOKEN (as -e TOKEN) but not DOCKER_HOST.
        assert_eq!(
            env,
            [
                ("TOKEN".to_string(), "s3cret".to_string()),
                ("W".to_string(), "/__w/r".to_string())
            ]
        );
        assert!(r.run.contains(" -e TOKEN "), "{}", r.run);
        assert!(
            r.run.contains(" -e DOCKER_HOST=tcp://docker:2375 "),
            "{}",
            r.run
        );
        assert!(!r.run.contains("s3cret"), "{}", r.run);
        assert!(r.env_file.is_none());
    }

    #[test]
    fn unexportable_names_go_through_an_env_file_not_argv() {
        let mut env = Vec::new();
        let odd = vec![
            ("INPUT_GITHUB-TOKEN".to_string(), "ghp_secret".to_string()),
            ("INPUT_MULTI-LINE".to_string(), "a\nb".to_string()),
        ];
        let r = render_container(command(), &mut env, &odd, &[], "/t/script.env");
        assert_eq!(
            r.env_file.as_deref(),
            Some("INPUT_GITHUB-TOKEN=ghp_secret\n")
        );
        assert!(!r.run.contains("ghp_secret"), "{}", r.run);
        assert!(r.run.contains(" --env-file /t/script.env "), "{}", r.run);
        // A value on several lines cannot be in an env file: env(1) carries it.
        assert!(r.run.contains("env 'INPUT_MULTI-LINE=a\nb'"), "{}", r.run);
    }
}

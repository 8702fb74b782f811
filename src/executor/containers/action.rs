//! Docker actions (`runs.using: docker`, `uses: docker://image`): the image
//! is built from the action's Dockerfile or pulled by the guest's engine,
//! then the stage runs as `docker run --rm` from the VM, with the workspace
//! at `/github/workspace` and the step's file-command files at
//! `/github/file_commands`, as actions/runner does. Always started from the
//! VM, also in a job with a job container; it joins the job's network when
//! the job has one.
//!
//! Facts: `../shared/spec/job-containers.md` §5.

use indexmap::IndexMap;
use serde_json::{Map, json};

use super::super::action::LoadedAction;
use super::super::env::GuestLayout;
use super::super::error::StepError;
use super::super::runtime::Runtime;
use super::super::state::JobState;
use super::super::step::{Body, RunCommand, StepEnd, StepRun};
use super::{ContainerCommand, paths};
use crate::config::GuestOs;
use crate::guest::shell_quote;
use crate::workflow::action::{DockerRuns, Runs, input_env_name};
use crate::workflow::expr::{Contexts, interpolate};

/// Where the container's paths come from in the guest (mounted, and used
/// to translate the step's variables).
pub(crate) const WORKSPACE: &str = "/github/workspace";
const FILE_COMMANDS: &str = "/github/file_commands";
const RUNNER_TEMP: &str = "/github/runner_temp";
const HOME: &str = "/github/home";
const WORKFLOW: &str = "/github/workflow";
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Times a missing image is pulled before the step fails (as actions/runner).
const PULL_TRIES: u32 = 3;

/// Which stage of a Docker action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::executor) enum DockerStage<'e> {
    Main,
    /// `pre-entrypoint` or `post-entrypoint`: the entry point given.
    Hook(&'e str),
}

/// How the action's image comes to the guest's engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ImageSource {
    /// `docker://image`: pulled when the engine does not have it.
    Pull(String),
    /// A Dockerfile in the action's directory: built, with the Dockerfile's
    /// directory as context.
    Build {
        /// The Dockerfile's path in the guest.
        dockerfile: String,
        /// Its directory.
        context: String,
        /// The tag given to the image.
        tag: String,
    },
}

/// Whether `image` (a manifest's `runs.image`) names a Dockerfile: its last
/// path element ends with `Dockerfile`/`dockerfile` or starts with
/// `Dockerfile.` (actions/runner's rule).
pub(crate) fn is_dockerfile(image: &str) -> bool {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.ends_with("Dockerfile") || last.ends_with("dockerfile") || last.starts_with("Dockerfile.")
}

/// The image source of `runs.image` for an action in guest directory
/// `action_dir`.
pub(crate) fn image_source(image: &str, action_dir: &str) -> Result<ImageSource, String> {
    let image = image.trim();
    if let Some(name) = image
        .get(..9)
        .filter(|p| p.eq_ignore_ascii_case("docker://"))
        .map(|_| &image[9..])
    {
        if name.is_empty() {
            return Err("`image: docker://` names no image".into());
        }
        return Ok(ImageSource::Pull(name.to_string()));
    }
    if !is_dockerfile(image) {
        return Err(format!(
            "`image: {image}` is neither `docker://<image>` nor a Dockerfile of the action"
        ));
    }
    let rel = image.trim_start_matches("./");
    if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
        return Err(format!(
            "`image: {image}` must be a path inside the action's directory"
        ));
    }
    let dir = action_dir.trim_end_matches('/');
    let dockerfile = format!("{dir}/{rel}");
    let context = match dockerfile.rsplit_once('/') {
        Some((d, _)) if !d.is_empty() => d.to_string(),
        _ => "/".to_string(),
    };
    Ok(ImageSource::Build {
        tag: build_tag(&dockerfile),
        dockerfile,
        context,
    })
}

/// `solstice-action-<12 hex digits of the Dockerfile's path>:latest`: the
/// same action gets the same tag for the whole job (its pre, main and post
/// stages use one build).
fn build_tag(dockerfile: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(dockerfile.as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("solstice-action-{hex}:latest")
}

/// The container's arguments, as on GitHub: the manifest's `runs.args`
/// (already evaluated with `inputs`) when it has any, else the step's
/// `with.args` split with shell quoting. `None` in `Err`: unbalanced quotes.
pub(crate) fn container_args(
    manifest_args: &[String],
    with_args: Option<&str>,
) -> Result<Vec<String>, String> {
    if !manifest_args.is_empty() {
        return Ok(manifest_args.to_vec());
    }
    match with_args.map(str::trim).filter(|a| !a.is_empty()) {
        None => Ok(Vec::new()),
        Some(a) => shlex::split(a).ok_or_else(|| {
            format!("`with.args` cannot be split into arguments (unbalanced quotes?): {a}")
        }),
    }
}

/// The container's entry point for `stage`, as on GitHub: `runs.entrypoint`
/// for the main stage, else the step's `with.entrypoint`; the
/// `pre-entrypoint`/`post-entrypoint` for those stages. `None`: the
/// image's own.
pub(crate) fn entrypoint(
    stage: DockerStage<'_>,
    runs_entrypoint: Option<&str>,
    with_entrypoint: Option<&str>,
) -> Option<String> {
    let nonempty = |s: Option<&str>| s.map(str::trim).filter(|s| !s.is_empty()).map(String::from);
    match stage {
        DockerStage::Main => nonempty(runs_entrypoint).or_else(|| nonempty(with_entrypoint)),
        DockerStage::Hook(e) => nonempty(Some(e)),
    }
}

/// The guest directory → container directory table of a Docker action
/// step whose step directory is `step_dir`, longest guest path first.
pub(crate) fn mounts(layout: &GuestLayout, step_dir: &str) -> Vec<(String, String)> {
    let mut t = vec![
        (layout.workspace.clone(), WORKSPACE.to_string()),
        (step_dir.to_string(), FILE_COMMANDS.to_string()),
        (layout.temp.clone(), RUNNER_TEMP.to_string()),
        (github_home(layout), HOME.to_string()),
        (
            format!("{}/_github_workflow", layout.temp),
            WORKFLOW.to_string(),
        ),
    ];
    paths::longest_first(&mut t);
    t
}

/// `$HOME/_temp/_github_home`: the action's `HOME` (`/github/home`).
fn github_home(layout: &GuestLayout) -> String {
    format!("{}/_github_home", layout.temp)
}

/// What one `docker run` of a Docker action needs.
#[derive(Debug, Clone)]
pub(crate) struct DockerRun {
    pub(crate) source: ImageSource,
    /// Rebuild even when the engine has the tag (a local action: its
    /// files may have changed since the last build).
    pub(crate) rebuild: bool,
    /// The container's name (unique in the job).
    pub(crate) name: String,
    pub(crate) mounts: Vec<(String, String)>,
    /// Guest directories created before the run (mount sources docker
    /// would otherwise create as root).
    pub(crate) make_dirs: Vec<String>,
    pub(crate) network: Option<String>,
    pub(crate) entrypoint: Option<String>,
    pub(crate) args: Vec<String>,
    /// The guest user's real home (the step's `HOME` is `/github/home`):
    /// where the engine's client finds its configuration when it pulls.
    pub(crate) client_home: String,
    /// The image's `path_prepend` (for the kill script).
    pub(crate) path_prepend: Vec<String>,
}

/// The container command of a Docker action stage.
pub(crate) fn docker_command(r: &DockerRun) -> ContainerCommand {
    let q = |s: &str| shell_quote(s);
    let mut setup = String::new();
    if !r.make_dirs.is_empty() {
        setup.push_str(&format!(
            "mkdir -p {} || exit 1\n",
            r.make_dirs
                .iter()
                .map(|d| q(d))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    let client = format!("HOME={} \"$solstice_docker\"", q(&r.client_home));
    let image = match &r.source {
        ImageSource::Pull(image) => {
            let i = q(image);
            let failed = q(&format!(
                "Solstice: could not pull image `{image}` after {PULL_TRIES} tries"
            ));
            setup.push_str(&format!(
                "if ! {client} image inspect {i} >/dev/null 2>&1; then\n\
                 solstice_try=1\n\
                 until {client} pull {i}; do\n\
                 if [ \"$solstice_try\" -ge {PULL_TRIES} ]; then printf '%s\\n' {failed} >&2; exit 1; fi\n\
                 sleep $((solstice_try * 2)); solstice_try=$((solstice_try + 1))\n\
                 done\n\
                 fi\n"
            ));
            image.clone()
        }
        ImageSource::Build {
            dockerfile,
            context,
            tag,
        } => {
            let failed = q(&format!(
                "Solstice: building the action's image from {dockerfile} failed"
            ));
            let build = format!(
                "printf '%s\\n' '::group::Building docker image' {shown}\n\
                 if {client} build -t {t} -f {f} {c}; then printf '%s\\n' '::endgroup::'; \
                 else solstice_s=$?; printf '%s\\n' '::endgroup::'; printf '%s\\n' {failed} >&2; exit \"$solstice_s\"; fi\n",
                shown = q(&format!("Dockerfile for action: '{dockerfile}'.")),
                t = q(tag),
                f = q(dockerfile),
                c = q(context),
            );
            if r.rebuild {
                setup.push_str(&build);
            } else {
                setup.push_str(&format!(
                    "if ! {client} image inspect {t} >/dev/null 2>&1; then\n{build}fi\n",
                    t = q(tag)
                ));
            }
            tag.clone()
        }
    };
    let mut before: Vec<String> = vec![
        "run".into(),
        "--rm".into(),
        "--name".into(),
        r.name.clone(),
        "--label".into(),
        "solstice-action".into(),
        "--workdir".into(),
        WORKSPACE.into(),
    ];
    for (from, to) in &r.mounts {
        before.push("-v".into());
        before.push(format!("{from}:{to}"));
    }
    before.push("-v".into());
    before.push(format!("{DOCKER_SOCKET}:{DOCKER_SOCKET}"));
    if let Some(n) = r.network.as_deref().filter(|n| !n.is_empty()) {
        before.push("--network".into());
        before.push(n.to_string());
    }
    if let Some(e) = &r.entrypoint {
        before.push("--entrypoint".into());
        before.push(e.clone());
    }
    let mut after = vec![image];
    after.extend(r.args.iter().cloned());
    let path = if r.path_prepend.is_empty() {
        String::new()
    } else {
        format!("PATH={}:\"$PATH\"; ", q(&r.path_prepend.join(":")))
    };
    let kill = format!(
        "{path}solstice_docker=$(command -v docker) || exit 0\n\
         \"$solstice_docker\" kill --signal \"$1\" {n} >/dev/null 2>&1\n\
         exit 0\n",
        n = q(&r.name)
    );
    ContainerCommand {
        setup,
        before,
        after,
        translate: r.mounts.clone(),
        base_path: None,
        kill: Some(kill),
    }
}

/// A container name: `solstice_<step>_<random>` (docker's name alphabet).
fn container_name(key: &str) -> String {
    let clean: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "solstice_{clean}_{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    )
}

/// Looks up a step input case-insensitively (`entryPoint`, `args`).
fn input<'i>(inputs: &'i IndexMap<String, String>, name: &str) -> Option<&'i str> {
    inputs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `ctx` with `inputs` bound to the action's inputs (for `runs.args` and
/// `runs.env`).
fn with_inputs(ctx: &Contexts, inputs: &IndexMap<String, String>) -> Contexts {
    let mut c = ctx.clone();
    let obj: Map<String, serde_json::Value> =
        inputs.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    c.values
        .insert("inputs".into(), serde_json::Value::Object(obj));
    c
}

impl Runtime<'_> {
    /// Runs one stage of a Docker action from the VM. What the stage writes
    /// to `GITHUB_STATE` is kept for the later stages of the same step
    /// instance, as for JavaScript actions.
    pub(in crate::executor) async fn run_docker_stage(
        &self,
        plan: &StepRun<'_>,
        state: &mut JobState,
        action: &LoadedAction,
        stage: DockerStage<'_>,
        inputs: &IndexMap<String, String>,
    ) -> Result<(StepEnd, IndexMap<String, String>), StepError> {
        let Runs::Docker(runs) = &action.manifest.runs else {
            return Ok((StepEnd::Failure, IndexMap::new()));
        };
        self.docker_available(&action.uses).await?;
        let source = image_source(&runs.image, &action.info.path)
            .map_err(|e| StepError::Manifest(format!("{}: {e}", action.uses)))?;
        let ctx = with_inputs(plan.ctx, inputs);
        let manifest_args = evaluate_args(runs, &ctx, &action.uses)?;
        let args =
            container_args(&manifest_args, input(inputs, "args")).map_err(StepError::Loading)?;
        let entrypoint = entrypoint(
            stage,
            runs.entrypoint.as_deref(),
            input(inputs, "entrypoint"),
        );
        let vars = self.docker_vars(plan, state, action, runs, &ctx, inputs)?;
        let run = DockerRun {
            rebuild: action.info.repository.is_empty(),
            source,
            name: container_name(&plan.key),
            mounts: mounts(&self.layout, &plan.dir),
            make_dirs: vec![
                github_home(&self.layout),
                format!("{}/_github_workflow", self.layout.temp),
            ],
            network: self.containers.as_ref().map(|c| c.network.clone()),
            entrypoint,
            args,
            client_home: self.layout.home.clone(),
            path_prepend: self.runner.path_prepend.clone(),
        };
        let body = Body {
            run: RunCommand::Container(docker_command(&run)),
            extra_files: Vec::new(),
            vars,
            action: Some(action.info.clone()),
            working_dir: self.layout.workspace.clone(),
            vm_only: true,
        };
        self.run_stage_body(plan, state, body).await
    }

    /// Fails the step at once when the guest cannot run containers: an
    /// illumos image, or a Linux image without `docker`.
    async fn docker_available(&self, uses: &str) -> Result<(), StepError> {
        let fail = |why: &str| StepError::DockerAction {
            uses: uses.to_string(),
            image: self.runner.image.clone(),
            why: why.to_string(),
        };
        if self.runner.os == GuestOs::Illumos {
            return Err(fail("is an illumos image"));
        }
        let path = if self.runner.path_prepend.is_empty() {
            String::new()
        } else {
            format!(
                "PATH={}:\"$PATH\"; ",
                shell_quote(&self.runner.path_prepend.join(":"))
            )
        };
        match self
            .quiet_exec(&format!("{path}command -v docker >/dev/null 2>&1"))
            .await
        {
            Some((0, _)) => Ok(()),
            Some(_) => Err(fail("has no `docker` on its PATH")),
            // The guest did not answer: the step's own exec reports it.
            None => Ok(()),
        }
    }

    /// The stage's own variables, set over the step's environment:
    /// `INPUT_*`, the saved state as `STATE_*`, the manifest's `runs.env`
    /// where the step's environment does not set the name already, and
    /// `HOME` (`/github/home` in the container).
    fn docker_vars(
        &self,
        plan: &StepRun<'_>,
        state: &JobState,
        action: &LoadedAction,
        runs: &DockerRuns,
        ctx: &Contexts,
        inputs: &IndexMap<String, String>,
    ) -> Result<Vec<(String, String)>, StepError> {
        let mut vars: IndexMap<String, String> = IndexMap::new();
        for (name, value) in inputs {
            vars.insert(input_env_name(name), value.clone());
        }
        if let Some(saved) = state.action_states.get(&plan.key) {
            for (name, value) in saved {
                vars.insert(format!("STATE_{name}"), value.clone());
            }
        }
        let scope_env = state.scopes.last().map(|s| &s.env);
        let taken = |k: &str| {
            vars.contains_key(k)
                || self.base_env.contains_key(k)
                || self.spec.extra_env.contains_key(k)
                || state.env_files.contains_key(k)
                || scope_env.is_some_and(|e| e.contains_key(k))
                || plan.step_env.contains_key(k)
                || k.starts_with("GITHUB_")
                || k.starts_with("RUNNER_")
                || k == "CI"
                || k == "HOME"
        };
        let mut from_manifest = Vec::new();
        for (k, v) in &runs.env {
            if taken(k) {
                continue;
            }
            let val = interpolate(&v.0, ctx).map_err(|error| StepError::Expression {
                what: format!("`runs.env.{k}` of {}", action.uses),
                error,
            })?;
            from_manifest.push((k.clone(), val));
        }
        vars.extend(from_manifest);
        vars.insert("HOME".into(), github_home(&self.layout));
        Ok(vars.into_iter().collect())
    }
}

/// The manifest's `runs.args`, each evaluated with `inputs`.
fn evaluate_args(runs: &DockerRuns, ctx: &Contexts, uses: &str) -> Result<Vec<String>, StepError> {
    runs.args
        .iter()
        .enumerate()
        .map(|(i, a)| {
            interpolate(a, ctx).map_err(|error| StepError::Expression {
                what: format!("`runs.args[{i}]` of {uses}"),
                error,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> GuestLayout {
        GuestLayout::new("/home/d", "hello")
    }

    #[test]
    fn dockerfile_names_as_actions_runner() {
        for yes in [
            "Dockerfile",
            "./Dockerfile",
            "build/Dockerfile",
            "Dockerfile.ci",
            "x/app.dockerfile",
            "my.Dockerfile",
        ] {
            assert!(is_dockerfile(yes), "{yes}");
        }
        for no in [
            "docker://alpine",
            "Containerfile",
            "Dockerfile/x",
            "image.tar",
        ] {
            assert!(!is_dockerfile(no), "{no}");
        }
    }

    #[test]
    fn image_sources() {
        let dir = "/home/d/_temp/_actions/o/r/v1";
        assert_eq!(
            image_source("docker://solstice-test/bash:1", dir).unwrap(),
            ImageSource::Pull("solstice-test/bash:1".into())
        );
        assert_eq!(
            image_source("DOCKER://alpine", dir).unwrap(),
            ImageSource::Pull("alpine".into())
        );
        let ImageSource::Build {
            dockerfile,
            context,
            tag,
        } = image_source("./build/Dockerfile.ci", dir).unwrap()
        else {
            panic!()
        };
        assert_eq!(dockerfile, format!("{dir}/build/Dockerfile.ci"));
        assert_eq!(context, format!("{dir}/build"));
        assert!(
            tag.starts_with("solstice-action-") && tag.ends_with(":latest"),
            "{tag}"
        );
        // The same Dockerfile, the same tag; another one, another.
        assert_eq!(
            image_source("build/Dockerfile.ci", dir).unwrap(),
            image_source("./build/Dockerfile.ci", dir).unwrap()
        );
        assert_ne!(
            image_source("Dockerfile", dir).unwrap(),
            image_source("Dockerfile", "/home/d/work/hello/hello/x").unwrap()
        );
        assert!(
            image_source("docker://", dir)
                .unwrap_err()
                .contains("names no image")
        );
        assert!(
            image_source("alpine:3", dir)
                .unwrap_err()
                .contains("neither")
        );
        assert!(
            image_source("../Dockerfile", dir)
                .unwrap_err()
                .contains("inside")
        );
    }

    #[test]
    fn manifest_args_win_over_with_args() {
        let m = vec!["--level".to_string(), "".to_string(), "a b".to_string()];
        assert_eq!(
            container_args(&m, Some("ignored args")).unwrap(),
            vec!["--level", "", "a b"]
        );
        assert_eq!(
            container_args(
                &[],
                Some(r#"-c 'echo "$GITHUB_WORKSPACE" x' "two words" plain"#)
            )
            .unwrap(),
            vec!["-c", r#"echo "$GITHUB_WORKSPACE" x"#, "two words", "plain"]
        );
        assert_eq!(
            container_args(&[], Some("  ")).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(container_args(&[], None).unwrap(), Vec::<String>::new());
        assert!(
            container_args(&[], Some("'open"))
                .unwrap_err()
                .contains("unbalanced")
        );
    }

    #[test]
    fn entrypoint_precedence() {
        use DockerStage::*;
        assert_eq!(
            entrypoint(Main, Some("/a.sh"), Some("/b.sh")).as_deref(),
            Some("/a.sh")
        );
        assert_eq!(
            entrypoint(Main, None, Some("/b.sh")).as_deref(),
            Some("/b.sh")
        );
        assert_eq!(
            entrypoint(Main, Some(" "), Some("/b.sh")).as_deref(),
            Some("/b.sh")
        );
        assert_eq!(entrypoint(Main, None, None), None);
        assert_eq!(
            entrypoint(Hook("/pre.sh"), Some("/a.sh"), Some("/b.sh")).as_deref(),
            Some("/pre.sh")
        );
    }

    #[test]
    fn mounts_translate_the_runner_variables() {
        let l = layout();
        let step = format!("{}/step-2", l.steps_root);
        let t = mounts(&l, &step);
        let tr = |v: &str| paths::translate(v, &t);
        assert_eq!(tr("/home/d/work/hello/hello"), "/github/workspace");
        assert_eq!(tr("/home/d/work/hello/hello/src"), "/github/workspace/src");
        assert_eq!(tr(&format!("{step}/env")), "/github/file_commands/env");
        assert_eq!(
            tr(&format!("{step}/output")),
            "/github/file_commands/output"
        );
        assert_eq!(tr("/home/d/_temp"), "/github/runner_temp");
        assert_eq!(tr("/home/d/_temp/_github_home"), "/github/home");
        assert_eq!(tr(&l.event_path), "/github/workflow/event.json");
        // Not mounted: unchanged.
        assert_eq!(tr("/home/d/_tool"), "/home/d/_tool");
        assert_eq!(tr("/home/d/work"), "/home/d/work");
    }

    fn run(source: ImageSource) -> DockerRun {
        let l = layout();
        DockerRun {
            source,
            rebuild: false,
            name: "solstice_step-1_abc".into(),
            mounts: mounts(&l, &format!("{}/step-1", l.steps_root)),
            make_dirs: vec!["/home/d/_temp/_github_home".into()],
            network: None,
            entrypoint: None,
            args: vec!["a b".into(), "".into()],
            client_home: "/home/d".into(),
            path_prepend: Vec::new(),
        }
    }

    #[test]
    fn docker_run_arguments() {
        let mut r = run(ImageSource::Pull("solstice-test/bash:1".into()));
        let c = docker_command(&r);
        assert_eq!(
            &c.before[..8],
            [
                "run",
                "--rm",
                "--name",
                "solstice_step-1_abc",
                "--label",
                "solstice-action",
                "--workdir",
                "/github/workspace"
            ]
        );
        let vols: Vec<&str> = c
            .before
            .windows(2)
            .filter(|w| w[0] == "-v")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(
            vols,
            [
                "/home/d/_temp/_github_workflow:/github/workflow",
                "/home/d/_temp/_solstice/step-1:/github/file_commands",
                "/home/d/_temp/_github_home:/github/home",
                "/home/d/work/hello/hello:/github/workspace",
                "/home/d/_temp:/github/runner_temp",
                "/var/run/docker.sock:/var/run/docker.sock",
            ]
        );
        assert!(!c.before.contains(&"--network".to_string()));
        assert!(!c.before.contains(&"--entrypoint".to_string()));
        assert_eq!(c.after, ["solstice-test/bash:1", "a b", ""]);
        assert!(
            c.setup.contains(&format!(
                "image inspect {}",
                shell_quote("solstice-test/bash:1")
            )),
            "{}",
            c.setup
        );
        assert!(
            c.setup
                .contains(&format!("pull {}", shell_quote("solstice-test/bash:1"))),
            "{}",
            c.setup
        );
        assert!(c.setup.contains("-ge 3"), "{}", c.setup);
        assert!(
            c.setup.contains(&format!(
                "mkdir -p {}",
                shell_quote("/home/d/_temp/_github_home")
            )),
            "{}",
            c.setup
        );
        assert!(
            c.setup.contains(&format!(
                "HOME={} \"$solstice_docker\"",
                shell_quote("/home/d")
            )),
            "{}",
            c.setup
        );
        assert_eq!(c.translate, r.mounts);
        assert!(c.base_path.is_none());
        let kill = c.kill.unwrap();
        assert!(
            kill.contains(&format!(
                "kill --signal \"$1\" {}",
                shell_quote("solstice_step-1_abc")
            )),
            "{kill}"
        );

        r.network = Some("solstice-net".into());
        r.entrypoint = Some("/bin/bash".into());
        let c = docker_command(&r);
        let n = c.before.iter().position(|a| a == "--network").unwrap();
        assert_eq!(c.before[n + 1], "solstice-net");
        let e = c.before.iter().position(|a| a == "--entrypoint").unwrap();
        assert_eq!(c.before[e + 1], "/bin/bash");
        // An empty network (no job network yet) adds nothing.
        r.network = Some(String::new());
        assert!(!docker_command(&r).before.contains(&"--network".to_string()));
    }

    #[test]
    fn dockerfile_build_once_or_always() {
        let src = image_source("Dockerfile", "/home/d/work/hello/hello/.github/actions/x").unwrap();
        let ImageSource::Build { tag, .. } = src.clone() else {
            panic!()
        };
        let mut r = run(src);
        let c = docker_command(&r);
        assert_eq!(c.after[0], tag);
        assert!(
            c.setup
                .contains(&format!("image inspect {}", shell_quote(&tag))),
            "{}",
            c.setup
        );
        assert!(
            c.setup.contains(&format!(
                "build -t {} -f {} {}",
                shell_quote(&tag),
                shell_quote("/home/d/work/hello/hello/.github/actions/x/Dockerfile"),
                shell_quote("/home/d/work/hello/hello/.github/actions/x")
            )),
            "{}",
            c.setup
        );
        assert!(c.setup.contains("::group::Building docker image"));
        r.rebuild = true;
        let c = docker_command(&r);
        assert!(!c.setup.contains("image inspect"), "{}", c.setup);
        assert!(c.setup.contains("build -t"), "{}", c.setup);
    }

    #[test]
    fn names_are_unique_and_valid() {
        let a = container_name("post-1-step-2.3");
        let b = container_name("post-1-step-2.3");
        assert_ne!(a, b);
        assert!(a.starts_with("solstice_post-1-step-2.3_"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        );
        assert!(container_name("a/b c").starts_with("solstice_a_b_c_"));
    }
}

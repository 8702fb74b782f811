//! Turns a GitHub job message ([`super::message`]) into what the rest of
//! Solstice uses (spec §7–8): the [`JobEnvelope`] the report needs, and the
//! [`JobSpec`] the executor runs, the same as for Forgejo and `solstice exec`.
//! Pure: no I/O.
//!
//! The message is a pre-compiled job. Rather than evaluating its tokens
//! directly, each token is re-rendered into the YAML-with-`${{ }}` form the
//! workflow parser reads (an expression token becomes `${{ expr }}`; a
//! literal stays a plain string, except that a literal holding `${{` becomes
//! an expression string literal so that it is not evaluated again), into a
//! single-job workflow that [`crate::workflow::parse_workflow`] checks. The
//! executor then evaluates everything at the times GitHub's runner does.
//!
//! `jobContainer` and `jobServiceContainers` become the job's `container:`
//! and `services:` (run by the guest's container engine), and
//! `containerRegistry` steps become `uses: docker://image` steps, with their
//! expressions kept as expressions. What Solstice cannot run (background
//! steps, unknown step kinds) fails the translation with a message for the
//! job's log: never run on the bare VM instead.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use indexmap::IndexMap;
use serde_json::{Map, Value, json};

use super::job::{JobEnvelope, StepRef};
use super::message::{
    ActionStep, JobMessage, MaskKind, StepReference, StepType, TemplateToken, Token,
};
use crate::job::{CheckoutSource, JobSpec};
use crate::secret::Secret;
use crate::workflow::{self, WorkflowError};

/// The endpoint that holds the run service URL and the job token.
pub const SYSTEM_CONNECTION: &str = "SystemVssConnection";

/// The job's `timeout-minutes` in the translated workflow: GitHub's limit
/// for a job on a self-hosted runner (5 days). GitHub enforces the job's
/// own timeout by cancelling it, and the message does not carry it; the
/// executor's ceiling is then the daemon's `max_job_timeout` rather than
/// the executor's 3-hour default.
pub const GITHUB_JOB_LIMIT_MINUTES: u32 = 5 * 24 * 60;

/// Why a job message cannot be used. The text is meant for the job's log on
/// GitHub: it says what is wrong or missing.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// A field every job message has is missing or empty.
    #[error("The job message has no {field}; GitHub sent an incomplete job")]
    Missing {
        /// What is missing, with its place in the message.
        field: &'static str,
    },
    /// The job uses something Solstice cannot run yet.
    #[error("{0}")]
    Unsupported(String),
    /// One step cannot be translated.
    #[error("Step {number} ({name}): {message}")]
    Step {
        /// 1-based.
        number: usize,
        name: String,
        message: String,
    },
    /// The translated workflow does not parse (a bug in the translation or
    /// a shape of message not seen before).
    #[error("The job cannot be run")]
    Workflow(#[source] WorkflowError),
    /// The translated workflow cannot be written as YAML.
    #[error("The job cannot be written as a workflow: {0}")]
    Yaml(String),
}

/// What [`translate`] needs besides the message.
#[derive(Debug, Clone, Default)]
pub struct TranslateOptions {
    /// Host-wide cap on the job's run time (the daemon's `max_job_timeout`);
    /// GitHub enforces the job's own `timeout-minutes` by cancelling it.
    pub max_job_timeout: Option<Duration>,
}

/// A job ready to run.
#[derive(Debug, Clone)]
pub struct TranslatedJob {
    /// The job for the executor (`actions` and `cache` are left to the
    /// daemon).
    pub spec: JobSpec,
    /// Remarks for the job log.
    pub notes: Vec<String>,
    /// `ACTIONS_STEP_DEBUG` or `ACTIONS_RUNNER_DEBUG` is true (a variable
    /// or secret): keep `::debug::` lines.
    pub step_debug: bool,
}

/// The envelope of the job: ids, job token, service URLs, step records and
/// mask patterns. Lenient: it needs only the plan id, the job id and the
/// `SystemVssConnection` endpoint (URL and `AccessToken`), so that a job
/// that [`translate`] refuses can still be reported.
pub fn envelope(msg: &JobMessage) -> Result<JobEnvelope, TranslateError> {
    let plan_id = non_empty(&msg.plan.plan_id).ok_or(TranslateError::Missing {
        field: "plan id (plan.planId)",
    })?;
    let job_id = non_empty(&msg.job_id).ok_or(TranslateError::Missing {
        field: "job id (jobId)",
    })?;
    let conn = msg
        .endpoint(SYSTEM_CONNECTION)
        .ok_or(TranslateError::Missing {
            field: "SystemVssConnection endpoint (resources.endpoints)",
        })?;
    let run_service_url = non_empty(&conn.url).ok_or(TranslateError::Missing {
        field: "run service URL (SystemVssConnection url)",
    })?;
    let token =
        conn.parameter("AccessToken")
            .and_then(non_empty)
            .ok_or(TranslateError::Missing {
                field: "job token (SystemVssConnection AccessToken)",
            })?;
    let display_name = non_empty(&msg.job_display_name)
        .or_else(|| non_empty(&msg.job_name))
        .unwrap_or_default()
        .to_string();
    let repository = msg
        .context("github")
        .and_then(|g| context_str(g, "repository"))
        .unwrap_or_default();
    Ok(JobEnvelope {
        plan_id: plan_id.to_string(),
        job_id: job_id.to_string(),
        display_name,
        repository,
        run_service_url: with_slash(run_service_url),
        results_url: results_url(msg).as_deref().map(with_slash),
        feed_url: conn.data("FeedStreamUrl").map(str::to_string),
        job_token: Secret::new(token),
        billing_owner_id: msg.billing_owner_id.clone(),
        steps: msg.steps.iter().map(step_ref).collect(),
        mask_patterns: msg
            .mask
            .iter()
            .filter(|m| m.kind == MaskKind::Regex && !m.value.is_empty())
            .map(|m| m.value.clone())
            .collect(),
        step_debug: false,
    })
}

/// Translates the job message into the job the executor runs.
pub fn translate(
    msg: &JobMessage,
    opts: &TranslateOptions,
) -> Result<TranslatedJob, TranslateError> {
    let mut notes = Vec::new();

    let github_token = msg
        .variable_value("system.github.token")
        .map(str::to_string);
    let job_key = msg
        .variable_value("system.github.job")
        .or_else(|| non_empty(&msg.job_name))
        .unwrap_or("job")
        .to_string();

    // The github context.
    let mut github = match msg.context("github") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    let server_url = github
        .get("server_url")
        .and_then(Value::as_str)
        .map(|s| s.trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty());
    match &server_url {
        Some(s) => {
            github.insert("server_url".into(), json!(s));
        }
        None => notes.push(
            "The job message has no github.server_url: actions/checkout and `uses:` steps \
             have no server to fetch from"
                .into(),
        ),
    }
    github.insert("job".into(), json!(job_key));
    if let Some(t) = &github_token {
        github.insert("token".into(), json!(t));
    }
    let gstr = |key: &str| {
        github
            .get(key)
            .map(crate::workflow::expr::to_actions_string)
            .unwrap_or_default()
    };
    let repository = gstr("repository");
    let workflow_name = gstr("workflow");
    let git_ref = gstr("ref");
    let sha = gstr("sha");

    // Secrets: every secret variable but the two runner tokens, plus
    // GITHUB_TOKEN from `github_token`.
    let mut secrets: BTreeMap<String, Secret> = BTreeMap::new();
    for (name, var) in &msg.variables {
        let lower = name.to_ascii_lowercase();
        if !var.is_secret
            || lower == "system.github.token"
            || lower == "system.accesstoken"
            || lower == "github_token"
        {
            continue;
        }
        secrets.insert(name.clone(), Secret::new(var.value.clone()));
    }
    if let Some(t) = msg.variable_value("github_token") {
        secrets.insert("GITHUB_TOKEN".into(), Secret::new(t));
    }

    // Masks: secret variables, the job's tokens and their credential form,
    // `mask` entries naming variables. Regexes go to the envelope.
    let mut extra_masks: Vec<Secret> = Vec::new();
    let mut mask = |v: &str| {
        if !v.is_empty() && !extra_masks.iter().any(|m| m.expose() == v) {
            extra_masks.push(Secret::new(v));
        }
    };
    for var in msg.variables.values().filter(|v| v.is_secret) {
        mask(&var.value);
    }
    if let Some(t) = &github_token {
        mask(t);
        mask(&base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{t}")));
    }
    for m in msg.mask.iter().filter(|m| m.kind == MaskKind::Variable) {
        if let Some(v) = msg.variable(&m.value) {
            mask(&v.value);
        }
    }

    // Runner-level variables.
    let conn = msg.endpoint(SYSTEM_CONNECTION);
    let job_token = conn
        .and_then(|c| c.parameter("AccessToken"))
        .and_then(non_empty);
    if let Some(t) = job_token {
        mask(t);
    }
    let mut extra_env: IndexMap<String, String> = IndexMap::new();
    extra_env.insert("GITHUB_ACTIONS".into(), "true".into());
    extra_env.insert("CI".into(), "true".into());
    if let Some(c) = conn {
        let runtime_url = c.data("PipelinesServiceUrl").or_else(|| non_empty(&c.url));
        if let Some(u) = runtime_url {
            extra_env.insert("ACTIONS_RUNTIME_URL".into(), u.to_string());
        }
    }
    if let Some(t) = job_token {
        extra_env.insert("ACTIONS_RUNTIME_TOKEN".into(), t.to_string());
    }
    if let Some(u) = conn
        .and_then(|c| c.data("ResultsServiceUrl"))
        .map(str::to_string)
        .or_else(|| results_url(msg))
    {
        extra_env.insert("ACTIONS_RESULTS_URL".into(), u);
    }
    if let Some(u) = conn.and_then(|c| c.data("GenerateIdTokenUrl")) {
        extra_env.insert("ACTIONS_ID_TOKEN_REQUEST_URL".into(), u.to_string());
        if let Some(t) = job_token {
            extra_env.insert("ACTIONS_ID_TOKEN_REQUEST_TOKEN".into(), t.to_string());
        }
    }

    // vars, and the debug switches (variables on a debug re-run).
    let mut vars: BTreeMap<String, String> = match msg.context("vars") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), crate::workflow::expr::to_actions_string(v)))
            .collect(),
        _ => BTreeMap::new(),
    };
    let mut step_debug = false;
    for name in ["ACTIONS_STEP_DEBUG", "ACTIONS_RUNNER_DEBUG"] {
        let on = msg
            .variable(name)
            .is_some_and(|v| v.value.trim().eq_ignore_ascii_case("true"))
            || vars.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case("true")
            });
        if on {
            step_debug = true;
            // The executor reads the switches from `vars` and `secrets`.
            if !secrets.contains_key(name) && !vars.keys().any(|k| k.eq_ignore_ascii_case(name)) {
                vars.insert(name.to_string(), "true".into());
            }
        }
    }

    let object_or_empty = |name: &str| match msg.context(name) {
        Some(v @ Value::Object(_)) => v.clone(),
        _ => json!({}),
    };
    let matrix: IndexMap<String, Value> = match msg.context("matrix") {
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => IndexMap::new(),
    };
    let mut extra_contexts = BTreeMap::new();
    for name in ["strategy", "job"] {
        if let Some(v @ Value::Object(_)) = msg.context(name) {
            extra_contexts.insert(name.to_string(), v.clone());
        }
    }

    let wf = build_workflow(msg, &job_key, &workflow_name)?;
    let yaml = serde_norway::to_string(&wf).map_err(|e| TranslateError::Yaml(e.to_string()))?;
    let workflow = workflow::parse_workflow(&yaml).map_err(TranslateError::Workflow)?;

    let checkout = CheckoutSource::Remote {
        server_url: server_url.clone().unwrap_or_default(),
        repository,
        git_ref,
        sha,
        token: github_token.clone().map(Secret::new),
        host_dir: None,
    };
    let spec = JobSpec {
        workflow,
        job_id: job_key,
        matrix,
        github: Value::Object(github),
        secrets,
        vars,
        inputs: object_or_empty("inputs"),
        needs: object_or_empty("needs"),
        extra_env,
        checkout,
        max_job_timeout: opts.max_job_timeout,
        extra_masks,
        default_actions_url: server_url,
        actions: None,
        cache: None,
        extra_contexts,
    };
    Ok(TranslatedJob {
        spec,
        notes,
        step_debug,
    })
}

/// The single-job workflow, as a YAML-ready value.
fn build_workflow(
    msg: &JobMessage,
    job_key: &str,
    workflow_name: &str,
) -> Result<Value, TranslateError> {
    let job_err =
        |what: &str, e: String| TranslateError::Unsupported(format!("The job's `{what}:` {e}"));
    // Workflow env, then job env (later mappings override earlier ones).
    let mut envs = msg.environment_variables.iter();
    let workflow_env = match envs.next() {
        Some(t) => scalar_mapping(t).map_err(|e| job_err("env", e))?,
        None => Map::new(),
    };
    let mut job_env = Map::new();
    for t in envs {
        job_env.extend(scalar_mapping(t).map_err(|e| job_err("env", e))?);
    }
    // defaults.run, workflow then job (the job's keys win).
    let mut run_defaults = Map::new();
    for d in &msg.defaults {
        if let Some(run) = d.get("run") {
            for key in ["shell", "working-directory"] {
                if let Some(v) = run.get(key) {
                    run_defaults.insert(
                        key.into(),
                        json!(scalar(v).map_err(|e| job_err("defaults", e))?),
                    );
                }
            }
        }
    }
    let outputs = match &msg.job_outputs {
        Some(t) => scalar_mapping(t).map_err(|e| job_err("outputs", e))?,
        None => Map::new(),
    };
    let steps = msg
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            step_value(s).map_err(|message| TranslateError::Step {
                number: i + 1,
                name: step_name(s),
                message,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut job = Map::new();
    if let Some(n) = non_empty(&msg.job_display_name).or_else(|| non_empty(&msg.job_name)) {
        job.insert("name".into(), json!(n));
    }
    if !job_env.is_empty() {
        job.insert("env".into(), Value::Object(job_env));
    }
    if !run_defaults.is_empty() {
        job.insert("defaults".into(), json!({ "run": run_defaults }));
    }
    if !outputs.is_empty() {
        job.insert("outputs".into(), Value::Object(outputs));
    }
    if let Some(t) = msg.job_container.as_ref().filter(|t| present(t)) {
        job.insert(
            "container".into(),
            container_value(t).map_err(|e| job_err("container", e))?,
        );
    }
    if let Some(t) = msg.job_service_containers.as_ref().filter(|t| present(t)) {
        job.insert(
            "services".into(),
            services_value(t).map_err(|e| job_err("services", e))?,
        );
    }
    job.insert(
        "timeout-minutes".into(),
        json!(GITHUB_JOB_LIMIT_MINUTES.to_string()),
    );
    job.insert("steps".into(), Value::Array(steps));
    let mut wf = Map::new();
    if !workflow_name.is_empty() {
        wf.insert("name".into(), json!(workflow_name));
    }
    if !workflow_env.is_empty() {
        wf.insert("env".into(), Value::Object(workflow_env));
    }
    let mut jobs = Map::new();
    jobs.insert(job_key.to_string(), Value::Object(job));
    wf.insert("jobs".into(), Value::Object(jobs));
    Ok(Value::Object(wf))
}

/// One step as a workflow step.
fn step_value(s: &ActionStep) -> Result<Value, String> {
    match &s.step_type {
        StepType::Action => {}
        StepType::BackgroundStepControl => {
            return Err(
                "background steps (backgroundStepControl) are not supported yet by Solstice".into(),
            );
        }
        StepType::Other(t) => {
            return Err(format!("steps of type `{t}` are not supported by Solstice"));
        }
    }
    let mut m = Map::new();
    if !s.context_name.is_empty() {
        m.insert("id".into(), json!(s.context_name));
    }
    let mut name = match &s.display_name_token {
        Some(t) => scalar(t).map_err(|e| format!("its name: {e}"))?,
        None => String::new(),
    };
    if name.trim().is_empty() && s.reference == StepReference::Script {
        name = s
            .inputs
            .as_ref()
            .and_then(|i| i.get("script"))
            .and_then(script_step_name)
            .unwrap_or_default();
    }
    if !name.trim().is_empty() {
        m.insert("name".into(), json!(name));
    }
    let condition = s.condition.trim();
    if !condition.is_empty() {
        m.insert("if".into(), json!(condition));
    }
    let inputs = s.inputs.as_ref();
    match &s.reference {
        StepReference::Script => {
            let script = inputs
                .and_then(|i| i.get("script"))
                .ok_or("the `run:` step has no script (inputs.script)")?;
            m.insert(
                "run".into(),
                json!(scalar(script).map_err(|e| format!("its script: {e}"))?),
            );
            for (input, key) in [
                ("shell", "shell"),
                ("workingDirectory", "working-directory"),
            ] {
                if let Some(v) = inputs.and_then(|i| i.get(input)) {
                    let v = scalar(v).map_err(|e| format!("its {key}: {e}"))?;
                    if !v.is_empty() {
                        m.insert(key.into(), json!(v));
                    }
                }
            }
        }
        StepReference::Repository {
            name,
            git_ref,
            path,
            repository_type,
        } => {
            let uses = if repository_type.eq_ignore_ascii_case("self") {
                let p = path
                    .trim()
                    .trim_start_matches("./")
                    .trim_start_matches(".\\")
                    .trim_end_matches('/');
                if p.is_empty() || p == "." {
                    "./".to_string()
                } else {
                    format!("./{p}")
                }
            } else {
                if name.is_empty() {
                    return Err("the `uses:` step names no repository".into());
                }
                let p = path.trim().trim_matches('/');
                match (p.is_empty(), git_ref.is_empty()) {
                    (true, true) => name.clone(),
                    (true, false) => format!("{name}@{git_ref}"),
                    (false, true) => format!("{name}/{p}"),
                    (false, false) => format!("{name}/{p}@{git_ref}"),
                }
            };
            m.insert("uses".into(), json!(uses));
            if let Some(i) = inputs {
                let with = scalar_mapping(i).map_err(|e| format!("its `with:` {e}"))?;
                if !with.is_empty() {
                    m.insert("with".into(), Value::Object(with));
                }
            }
        }
        StepReference::ContainerRegistry { image } => {
            let image = image.trim();
            if image.is_empty() {
                return Err("the `uses: docker://` step names no image".into());
            }
            m.insert("uses".into(), json!(format!("docker://{image}")));
            if let Some(i) = inputs {
                let with = scalar_mapping(i).map_err(|e| format!("its `with:` {e}"))?;
                if !with.is_empty() {
                    m.insert("with".into(), Value::Object(with));
                }
            }
        }
        StepReference::Other(t) => {
            return Err(format!(
                "step references of type `{t}` are not supported by Solstice"
            ));
        }
    }
    if let Some(e) = &s.environment {
        let env = scalar_mapping(e).map_err(|e| format!("its `env:` {e}"))?;
        if !env.is_empty() {
            m.insert("env".into(), Value::Object(env));
        }
    }
    if let Some(t) = &s.continue_on_error {
        let v = scalar(t).map_err(|e| format!("its continue-on-error: {e}"))?;
        if !v.is_empty() {
            m.insert("continue-on-error".into(), json!(v));
        }
    }
    if let Some(t) = &s.timeout_in_minutes {
        let v = scalar(t).map_err(|e| format!("its timeout-minutes: {e}"))?;
        if !v.is_empty() {
            m.insert("timeout-minutes".into(), json!(v));
        }
    }
    Ok(Value::Object(m))
}

/// Whether a `jobContainer`/`jobServiceContainers` token says anything:
/// null, an empty string and an empty mapping or list mean "none".
fn present(t: &TemplateToken) -> bool {
    match &t.kind {
        Token::Null => false,
        Token::Mapping(m) => !m.is_empty(),
        Token::Sequence(s) => !s.is_empty(),
        Token::Literal(s) => !s.trim().is_empty(),
        _ => true,
    }
}

/// `jobContainer` as the job's `container:`: an image (a string, or one
/// expression that gives it), or a mapping (`image`, `credentials`, `env`,
/// `ports`, `volumes`, `options`) written as in the workflow.
fn container_value(t: &TemplateToken) -> Result<Value, String> {
    match &t.kind {
        Token::Mapping(_) => {
            let v = token_value(t)?;
            if t.get("image").is_none() {
                return Err("has no `image:`; a job container needs one".into());
            }
            Ok(v)
        }
        Token::Sequence(_) => {
            Err("is a list; it must be an image or a mapping with `image:`".into())
        }
        _ => Ok(Value::String(scalar(t)?)),
    }
}

/// `jobServiceContainers` as the job's `services:`: service id → container
/// (as [`container_value`]).
fn services_value(t: &TemplateToken) -> Result<Value, String> {
    match &t.kind {
        Token::Mapping(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                let id = match (&k.kind, k.literal_text()) {
                    (Token::Literal(_), Some(id)) if !id.trim().is_empty() => id,
                    _ => return Err("has a service id that is not plain text".into()),
                };
                let value = container_value(v).map_err(|e| format!("`{id}` {e}"))?;
                m.insert(id, value);
            }
            Ok(Value::Object(m))
        }
        Token::Expression(e) => Err(format!(
            "is one expression (`${{{{ {e} }}}}`) rather than a mapping of services, which Solstice does not support yet"
        )),
        _ => Err("is not a mapping of service ids to containers".into()),
    }
}

/// Any token as the workflow value it was compiled from: mappings (plain
/// keys only) and lists keep their shape, every scalar becomes a string as
/// [`scalar`] writes it (so expressions stay `${{ }}` expressions, evaluated
/// by the executor).
fn token_value(t: &TemplateToken) -> Result<Value, String> {
    match &t.kind {
        Token::Null => Ok(Value::Null),
        Token::Sequence(items) => items
            .iter()
            .map(token_value)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Token::Mapping(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                let key = match (&k.kind, k.literal_text()) {
                    (Token::Literal(_), Some(key)) => key,
                    _ => {
                        return Err(format!(
                            "has a key that is not plain text ({}), which Solstice does not support",
                            key_description(k)
                        ));
                    }
                };
                let value = token_value(v).map_err(|e| format!("`{key}`: {e}"))?;
                m.insert(key, value);
            }
            Ok(Value::Object(m))
        }
        _ => scalar(t).map(Value::String),
    }
}

/// A scalar token as a workflow string: literal text (a literal holding
/// `${{` as an expression string literal), an expression as `${{ expr }}`.
pub fn scalar(t: &TemplateToken) -> Result<String, String> {
    match &t.kind {
        Token::Literal(s) if s.contains("${{") => {
            Ok(format!("${{{{ '{}' }}}}", s.replace('\'', "''")))
        }
        Token::Expression(e) => Ok(format!("${{{{ {} }}}}", e.trim())),
        Token::Sequence(_) | Token::Mapping(_) => {
            Err("a list or mapping where Solstice expects a single value is not supported".into())
        }
        Token::Insert(d) => Err(format!(
            "the `${{{{ {d} }}}}` directive is not supported here"
        )),
        _ => Ok(t.literal_text().unwrap_or_default()),
    }
}

/// A mapping token whose values are scalars (env, `with:`, outputs), as
/// a name → string map in order.
fn scalar_mapping(t: &TemplateToken) -> Result<Map<String, Value>, String> {
    match &t.kind {
        Token::Null => Ok(Map::new()),
        Token::Mapping(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                let key = match (&k.kind, k.literal_text()) {
                    (Token::Literal(_), Some(key)) => key,
                    _ => {
                        return Err(format!(
                            "has a key that is not plain text ({}), which Solstice does not support",
                            key_description(k)
                        ));
                    }
                };
                let value = scalar(v).map_err(|e| format!("`{key}`: {e}"))?;
                m.insert(key, Value::String(value));
            }
            Ok(m)
        }
        Token::Expression(e) => Err(format!(
            "is one expression (`${{{{ {e} }}}}`) rather than a mapping, which Solstice does not support yet"
        )),
        _ => Err("is not a mapping".into()),
    }
}

/// A mapping key that is not plain text, as the job's author wrote it.
fn key_description(k: &TemplateToken) -> String {
    match &k.kind {
        Token::Insert(d) => format!("${{{{ {d} }}}}"),
        Token::Sequence(_) | Token::Mapping(_) => "a list or mapping".into(),
        _ => scalar(k).unwrap_or_default(),
    }
}

/// The step's record: GUID, best-effort name, context name and action.
fn step_ref(s: &ActionStep) -> StepRef {
    let action = match &s.reference {
        StepReference::Repository {
            name,
            repository_type,
            ..
        } if !repository_type.eq_ignore_ascii_case("self") && !name.is_empty() => {
            Some(name.clone())
        }
        _ => None,
    };
    StepRef {
        external_id: s.id.clone(),
        name: step_name(s),
        context_name: s.context_name.clone(),
        action,
    }
}

/// The name GitHub shows before the step runs: a literal display name, else
/// `Run <first line of the script>` or `Run owner/repo@ref`.
fn step_name(s: &ActionStep) -> String {
    if let Some(Token::Literal(n)) = s.display_name_token.as_ref().map(|t| &t.kind)
        && !n.trim().is_empty()
    {
        return n.clone();
    }
    if let Some(n) = non_empty(&s.display_name) {
        return n.to_string();
    }
    match &s.reference {
        StepReference::Script => {
            let script = s.inputs.as_ref().and_then(|i| i.get("script"));
            let text = match script.map(|t| &t.kind) {
                Some(Token::Expression(e)) => {
                    format_text(e).unwrap_or_else(|| format!("${{{{ {e} }}}}"))
                }
                Some(_) => script
                    .and_then(TemplateToken::literal_text)
                    .unwrap_or_default(),
                None => String::new(),
            };
            format!("Run {}", first_line(&text))
        }
        StepReference::Repository {
            name,
            git_ref,
            path,
            repository_type,
        } => {
            if repository_type.eq_ignore_ascii_case("self") {
                format!("Run {path}")
            } else {
                let p = path.trim_matches('/');
                let base = if p.is_empty() {
                    name.clone()
                } else {
                    format!("{name}/{p}")
                };
                if git_ref.is_empty() {
                    format!("Run {base}")
                } else {
                    format!("Run {base}@{git_ref}")
                }
            }
        }
        StepReference::ContainerRegistry { image } => format!("Run docker://{image}"),
        StepReference::Other(_) => non_empty(&s.name).unwrap_or("Step").to_string(),
    }
}

/// Splits `format('text {0}', args)` into its format string (unescaped)
/// and the rest of the expression after the string (`, args)`).
fn split_format(expr: &str) -> Option<(String, &str)> {
    let expr = expr.trim();
    let head = expr
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("format("))?;
    let rest = expr[head.len()..].trim_start().strip_prefix('\'')?;
    let mut out = String::new();
    let mut chars = rest.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if chars.peek().map(|(_, c)| *c) == Some('\'') {
                chars.next();
                out.push('\'');
            } else {
                return Some((out, &rest[i + 1..]));
            }
        } else {
            out.push(c);
        }
    }
    None
}

/// The format string of `format('text {0}', ...)`, for names only.
fn format_text(expr: &str) -> Option<String> {
    split_format(expr).map(|(text, _)| text)
}

/// The first non-empty line of `text`, trimmed.
fn first_line(text: &str) -> &str {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// The `name:` of a `run:` step that has no display name, as GitHub's
/// runner makes it: `Run ` and the first line of the evaluated script. For
/// a `format()` script, the same `format()` cut to its first line; `None`
/// (the executor's own default) for other expressions.
fn script_step_name(script: &TemplateToken) -> Option<String> {
    match &script.kind {
        Token::Expression(e) => {
            let (text, rest) = split_format(e)?;
            let line = format!("Run {}", first_line(&text));
            Some(format!(
                "${{{{ format('{}'{} }}}}",
                line.replace('\'', "''"),
                rest.trim_end()
            ))
        }
        _ => {
            let text = script.literal_text()?;
            let line = format!("Run {}", first_line(&text));
            scalar(&TemplateToken::new(Token::Literal(line))).ok()
        }
    }
}

/// `system.github.results_endpoint`, else `SystemVssConnection.data.ResultsServiceUrl`.
fn results_url(msg: &JobMessage) -> Option<String> {
    msg.variable_value("system.github.results_endpoint")
        .map(str::to_string)
        .or_else(|| {
            msg.endpoint(SYSTEM_CONNECTION)
                .and_then(|c| c.data("ResultsServiceUrl"))
                .map(str::to_string)
        })
}

fn context_str(v: &Value, key: &str) -> Option<String> {
    v.as_object()
        .and_then(|m| super::message::get(m, key))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn non_empty(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.trim().is_empty())
}

fn with_slash(u: &str) -> String {
    if u.ends_with('/') {
        u.to_string()
    } else {
        format!("{u}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::github::message::parse_message;
    use crate::workflow::expr::{Contexts, interpolate};

    /// Shaped like the captures of spec §7: positions on tokens, `format()`
    /// expressions, `Key`/`Value` in capitals and small, `"matrix": null`,
    /// `t/d/v` forms, enums as integers and strings, keys in varied case,
    /// `"True"`, unknown fields.
    const MESSAGE: &str = include_str!("testdata/job_message.json");

    fn message() -> JobMessage {
        parse_message(MESSAGE.as_bytes()).unwrap()
    }

    fn with_json(edit: impl FnOnce(&mut Value)) -> JobMessage {
        let mut v: Value = serde_json::from_str(MESSAGE).unwrap();
        edit(&mut v);
        parse_message(&serde_json::to_vec(&v).unwrap()).unwrap()
    }

    fn translated() -> TranslatedJob {
        translate(&message(), &TranslateOptions::default()).unwrap()
    }

    #[test]
    fn envelope_of_a_job() {
        let e = envelope(&message()).unwrap();
        assert_eq!(e.plan_id, "0e4b5f5e-3c1c-4d1b-9c55-1a2b3c4d5e6f");
        assert_eq!(e.job_id, "c0ffee00-1111-4222-8333-444455556666");
        assert_eq!(e.display_name, "build (linux, 3.12)");
        assert_eq!(e.repository, "acme/widget");
        assert_eq!(e.run_service_url, "http://127.0.0.1:9/run/");
        // The variable wins over ResultsServiceUrl; a slash is added.
        assert_eq!(
            e.results_url.as_deref(),
            Some("http://127.0.0.1:9/results/")
        );
        assert_eq!(
            e.feed_url.as_deref(),
            Some("ws://127.0.0.1:9/_ws/ingest.sock")
        );
        assert_eq!(e.job_token.expose(), "job-token-xyz");
        assert!(!format!("{e:?}").contains("job-token-xyz"));
        assert_eq!(e.billing_owner_id.as_deref(), Some("U_kgDOAbCdEf"));
        assert_eq!(e.mask_patterns, ["gh[pousr]_[A-Za-z0-9]{8,}"]);
        let names: Vec<_> = e.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Run actions/checkout@v4",
                "Say hello",
                "Run echo '${{ not evaluated }}'",
                "Run ./.github/actions/x",
                "Run octo/tool/sub/dir@main",
            ]
        );
        let s = &e.steps[0];
        assert_eq!(s.external_id, "5f0c2d1e-0000-4000-8000-000000000001");
        assert_eq!(s.context_name, "__actions_checkout");
        assert_eq!(s.action.as_deref(), Some("actions/checkout"));
        assert_eq!(e.steps[3].action, None);
        assert_eq!(e.steps[4].action.as_deref(), Some("octo/tool"));
        assert_eq!(e.steps[2].context_name, "__run");
    }

    #[test]
    fn envelope_needs_ids_and_the_job_token() {
        let m = with_json(|v| v["jobId"] = json!(""));
        assert_eq!(
            envelope(&m).unwrap_err().to_string(),
            "The job message has no job id (jobId); GitHub sent an incomplete job"
        );
        let m = with_json(|v| {
            v["resources"]["endpoints"][0]["authorization"]["parameters"] = json!({})
        });
        assert!(
            envelope(&m)
                .unwrap_err()
                .to_string()
                .contains("AccessToken")
        );
        let m = with_json(|v| v["resources"] = json!({}));
        assert!(
            envelope(&m)
                .unwrap_err()
                .to_string()
                .contains("SystemVssConnection")
        );
        // Without a results variable, ResultsServiceUrl.
        let m = with_json(|v| {
            v["variables"]
                .as_object_mut()
                .unwrap()
                .remove("system.github.results_endpoint");
        });
        assert_eq!(
            envelope(&m).unwrap().results_url.as_deref(),
            Some("http://127.0.0.1:9/results/")
        );
        // A script name from a format() expression.
        let m = with_json(|v| v["steps"][1]["displayNameToken"] = Value::Null);
        assert_eq!(envelope(&m).unwrap().steps[1].name, "Run echo \"{0} {1}\"");
    }

    #[test]
    fn contexts_secrets_and_runner_env() {
        let t = translated();
        assert!(t.notes.is_empty(), "{:?}", t.notes);
        assert!(!t.step_debug);
        let s = &t.spec;
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("ghs_TOKEN123") && !debug.contains("hunter2"),
            "{debug}"
        );
        assert_eq!(s.job_id, "build");
        assert_eq!(s.workflow.name.as_deref(), Some("CI"));
        let g = &s.github;
        assert_eq!(g["repository"], "acme/widget");
        assert_eq!(g["server_url"], "https://github.com");
        assert_eq!(g["token"], "ghs_TOKEN123");
        assert_eq!(g["job"], "build");
        assert_eq!(g["run_number"], json!(3));
        assert_eq!(g["ref_protected"], json!(false));
        assert_eq!(g["event"]["commits"][0]["message"], "hi");
        assert_eq!(g["event"]["labels"], json!([]));
        assert!(s.matrix.is_empty());
        assert_eq!(s.inputs, json!({}));
        assert_eq!(
            s.needs,
            json!({"setup": {"result": "success", "outputs": {"v": "1.2"}}})
        );
        assert_eq!(s.vars["REGION"], "eu");
        assert_eq!(s.extra_contexts["strategy"]["job-index"], json!(2));
        assert_eq!(s.extra_contexts["job"]["check_run_id"], json!(123));
        // Secrets: not the runner's tokens; GITHUB_TOKEN from github_token.
        let names: Vec<_> = s.secrets.keys().map(String::as_str).collect();
        assert_eq!(names, ["API_KEY", "GITHUB_TOKEN"]);
        assert_eq!(s.secrets["GITHUB_TOKEN"].expose(), "ghs_TOKEN123");
        let e = &s.extra_env;
        assert_eq!(e["GITHUB_ACTIONS"], "true");
        assert_eq!(e["CI"], "true");
        assert_eq!(e["ACTIONS_RUNTIME_URL"], "http://127.0.0.1:9/run");
        assert_eq!(e["ACTIONS_RUNTIME_TOKEN"], "job-token-xyz");
        assert_eq!(e["ACTIONS_RESULTS_URL"], "http://127.0.0.1:9/results/");
        assert_eq!(
            e["ACTIONS_ID_TOKEN_REQUEST_URL"],
            "http://127.0.0.1:9/idtoken?audience=x"
        );
        assert_eq!(e["ACTIONS_ID_TOKEN_REQUEST_TOKEN"], "job-token-xyz");
        assert!(!e.contains_key("ACTIONS_CACHE_URL"));
        assert_eq!(s.default_actions_url.as_deref(), Some("https://github.com"));
        assert_eq!(s.max_job_timeout, None);
        match &s.checkout {
            CheckoutSource::Remote {
                server_url,
                repository,
                git_ref,
                sha,
                token,
                ..
            } => {
                assert_eq!(server_url, "https://github.com");
                assert_eq!(repository, "acme/widget");
                assert_eq!(git_ref, "refs/heads/main");
                assert_eq!(sha, "0123456789abcdef0123456789abcdef01234567");
                assert_eq!(token.as_ref().map(Secret::expose), Some("ghs_TOKEN123"));
            }
            other => panic!("unexpected checkout {other:?}"),
        }
    }

    #[test]
    fn masks() {
        let t = translated();
        let masks: Vec<&str> = t.spec.extra_masks.iter().map(Secret::expose).collect();
        for m in [
            "ghs_TOKEN123",
            "hunter2",
            "oauth-xyz",
            "job-token-xyz",
            // base64("x-access-token:ghs_TOKEN123")
            "eC1hY2Nlc3MtdG9rZW46Z2hzX1RPS0VOMTIz",
            // the variable named by a `mask` entry
            "visible",
        ] {
            assert!(masks.contains(&m), "{m} not in {masks:?}");
        }
        assert_eq!(
            masks.len(),
            masks.iter().collect::<std::collections::HashSet<_>>().len()
        );
    }

    #[test]
    fn env_defaults_outputs() {
        let t = translated();
        let wf = &t.spec.workflow;
        let env: Vec<_> = wf
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.0.as_str()))
            .collect();
        assert_eq!(env, [("GREETING", "hello"), ("LEVEL", "2")]);
        let job = &wf.jobs["build"];
        assert_eq!(job.name.as_deref(), Some("build (linux, 3.12)"));
        let env: Vec<_> = job
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.0.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("GREETING", "${{ format('{0} world', env.GREETING) }}"),
                ("JOBV", "j")
            ]
        );
        let run = job.defaults.as_ref().unwrap().run.as_ref().unwrap();
        assert_eq!(run.shell.as_deref(), Some("sh"));
        assert_eq!(run.working_directory.as_deref(), Some("src"));
        assert_eq!(
            job.outputs["greeting"],
            "${{ steps.hello.outputs.greeting }}"
        );
        assert!(job.strategy.is_none() && job.container.is_none() && job.services.is_empty());
        assert_eq!(job.timeout_minutes.as_ref().unwrap().0, "7200");
    }

    #[test]
    fn steps() {
        let t = translated();
        let steps = &t.spec.workflow.jobs["build"].steps;
        assert_eq!(steps.len(), 5);
        let s = &steps[0];
        assert_eq!(s.uses.as_deref(), Some("actions/checkout@v4"));
        assert_eq!(s.id.as_deref(), Some("__actions_checkout"));
        assert_eq!(s.with["fetch-depth"].0, "0");
        assert_eq!(s.if_.as_ref().unwrap().0, "success()");
        assert_eq!(s.name, None);
        let s = &steps[1];
        assert_eq!(s.name.as_deref(), Some("Say hello"));
        assert_eq!(s.id.as_deref(), Some("hello"));
        assert_eq!(
            s.run.as_deref(),
            Some(
                "${{ format('echo \"{0} {1}\"\necho greeting=hi >> \"$GITHUB_OUTPUT\"', matrix.os, vars.REGION) }}"
            )
        );
        assert_eq!(s.env["STEPV"].0, "${{ secrets.API_KEY }}");
        // Without it, the name is the script's format() cut to its first line.
        let m = with_json(|v| v["steps"][1]["displayNameToken"] = json!({"type": 0, "lit": ""}));
        let t2 = translate(&m, &TranslateOptions::default()).unwrap();
        assert_eq!(
            t2.spec.workflow.jobs["build"].steps[1].name.as_deref(),
            Some("${{ format('Run echo \"{0} {1}\"', matrix.os, vars.REGION) }}")
        );
        assert_eq!(s.continue_on_error.as_ref().unwrap().0, "true");
        assert_eq!(
            s.timeout_minutes.as_ref().unwrap().0,
            "${{ fromJSON('5') }}"
        );
        let s = &steps[2];
        assert_eq!(s.working_directory.as_deref(), Some("sub"));
        // No display name: `Run ` and the first line, as GitHub names it.
        let name = s.name.as_deref().unwrap();
        assert_eq!(name, "${{ 'Run echo ''${{ not evaluated }}''' }}");
        assert_eq!(
            interpolate(name, &Contexts::default()).unwrap(),
            "Run echo '${{ not evaluated }}'"
        );
        assert_eq!(s.if_.as_ref().unwrap().0, "always()");
        // A literal holding `${{` is not evaluated again.
        let run = s.run.as_deref().unwrap();
        assert_eq!(run, "${{ 'echo ''${{ not evaluated }}''\necho second' }}");
        assert_eq!(
            interpolate(run, &Contexts::default()).unwrap(),
            "echo '${{ not evaluated }}'\necho second"
        );
        assert_eq!(steps[3].uses.as_deref(), Some("./.github/actions/x"));
        let s = &steps[4];
        assert_eq!(s.uses.as_deref(), Some("octo/tool/sub/dir@main"));
        assert_eq!(s.with["who"].0, "me");
        assert_eq!(s.with["n"].0, "2");
        assert_eq!(
            s.if_.as_ref().unwrap().0,
            "success() && github.event_name == 'push'"
        );
    }

    /// The job's YAML as the workflow parser gets it, read back.
    fn job_yaml(m: &JobMessage) -> serde_norway::Value {
        let wf = build_workflow(m, "build", "CI").unwrap();
        let yaml = serde_norway::to_string(&wf).unwrap();
        let v: serde_norway::Value = serde_norway::from_str(&yaml).unwrap();
        v["jobs"]["build"].clone()
    }

    #[test]
    fn job_and_service_containers_become_container_and_services() {
        // An image name: `container: <image>`.
        let job = job_yaml(&with_json(|v| v["jobContainer"] = json!("node:20")));
        assert_eq!(job["container"].as_str(), Some("node:20"));
        assert!(job.get("services").is_none());
        // The long form, expressions kept as expressions; numbers and
        // booleans as the strings the workflow had.
        let m = with_json(|v| {
            v["jobContainer"] = json!({"type": 2, "map": [
                {"Key": "image", "Value": {"type": 3, "expr": "format('ghcr.io/acme/{0}:1', matrix.os)"}},
                {"Key": "credentials", "Value": {"type": 2, "map": [
                    {"Key": "username", "Value": {"type": 3, "expr": "github.actor"}},
                    {"Key": "password", "Value": {"type": 3, "expr": "secrets.GHCR_TOKEN"}}
                ]}},
                {"Key": "env", "Value": {"type": 2, "map": [
                    {"Key": "NODE_ENV", "Value": "development"},
                    {"Key": "LIT", "Value": "keep ${{ this }}"}
                ]}},
                {"Key": "ports", "Value": {"type": 1, "seq": [{"type": 6, "num": 80}, "8080:80"]}},
                {"Key": "volumes", "Value": {"type": 1, "seq": ["my_docker_volume:/volume_mount"]}},
                {"Key": "options", "Value": "--cpus 1 --tmpfs /scratch"}
            ]});
            v["jobServiceContainers"] = json!({"type": 2, "map": [
                {"Key": "db", "Value": {"type": 2, "map": [
                    {"Key": "image", "Value": "postgres:15"},
                    {"Key": "env", "Value": {"type": 2, "map": [
                        {"Key": "POSTGRES_PASSWORD", "Value": {"type": 3, "expr": "secrets.DB_PASSWORD"}}
                    ]}},
                    {"Key": "ports", "Value": {"type": 1, "seq": ["5432:5432"]}},
                    {"Key": "options", "Value": "--health-cmd pg_isready --health-interval 2s"}
                ]}},
                {"Key": "redis", "Value": "redis:7"}
            ]});
        });
        let job = job_yaml(&m);
        let c = &job["container"];
        assert_eq!(
            c["image"].as_str(),
            Some("${{ format('ghcr.io/acme/{0}:1', matrix.os) }}")
        );
        assert_eq!(
            c["credentials"]["username"].as_str(),
            Some("${{ github.actor }}")
        );
        assert_eq!(
            c["credentials"]["password"].as_str(),
            Some("${{ secrets.GHCR_TOKEN }}")
        );
        assert_eq!(c["env"]["NODE_ENV"].as_str(), Some("development"));
        assert_eq!(c["env"]["LIT"].as_str(), Some("${{ 'keep ${{ this }}' }}"));
        let ports: Vec<_> = c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(ports, ["80", "8080:80"]);
        assert_eq!(
            c["volumes"][0].as_str(),
            Some("my_docker_volume:/volume_mount")
        );
        assert_eq!(c["options"].as_str(), Some("--cpus 1 --tmpfs /scratch"));
        let s = &job["services"];
        assert_eq!(s["db"]["image"].as_str(), Some("postgres:15"));
        assert_eq!(
            s["db"]["env"]["POSTGRES_PASSWORD"].as_str(),
            Some("${{ secrets.DB_PASSWORD }}")
        );
        assert_eq!(s["db"]["ports"][0].as_str(), Some("5432:5432"));
        assert_eq!(
            s["db"]["options"].as_str(),
            Some("--health-cmd pg_isready --health-interval 2s")
        );
        assert_eq!(s["redis"].as_str(), Some("redis:7"));
        // The whole container as one expression stays one.
        let job = job_yaml(&with_json(|v| {
            v["jobContainer"] = json!({"type": 3, "expr": "matrix.image"})
        }));
        assert_eq!(job["container"].as_str(), Some("${{ matrix.image }}"));
        // None: null, an empty string, an empty mapping.
        for none in [json!(null), json!(""), json!({"type": 2})] {
            let job = job_yaml(&with_json(|v| {
                v["jobContainer"] = none.clone();
                v["jobServiceContainers"] = none.clone();
            }));
            assert!(job.get("container").is_none() && job.get("services").is_none());
        }
        // The envelope of such a job reads as any other.
        assert!(envelope(&m).is_ok());
    }

    #[test]
    fn container_jobs_parse_into_the_workflow_model() {
        let m = with_json(|v| {
            v["jobContainer"] = json!({"type": 2, "map": [
                {"Key": "image", "Value": {"type": 3, "expr": "matrix.image"}},
                {"Key": "credentials", "Value": {"type": 2, "map": [
                    {"Key": "username", "Value": "u"},
                    {"Key": "password", "Value": {"type": 3, "expr": "secrets.P"}}
                ]}},
                {"Key": "env", "Value": {"type": 2, "map": [{"Key": "N", "Value": {"type": 6, "num": 1}}]}},
                {"Key": "ports", "Value": {"type": 1, "seq": [{"type": 6, "num": 80}, "8080:80"]}},
                {"Key": "volumes", "Value": {"type": 1, "seq": ["v:/v"]}},
                {"Key": "options", "Value": "--cpus 1"}
            ]});
            v["jobServiceContainers"] = json!({"type": 2, "map": [
                {"Key": "db", "Value": {"type": 2, "map": [
                    {"Key": "image", "Value": "postgres:15"},
                    {"Key": "command", "Value": "postgres -c fsync=off"}
                ]}},
                {"Key": "redis", "Value": "redis:7"}
            ]});
        });
        let t = translate(&m, &TranslateOptions::default()).unwrap();
        let job = &t.spec.workflow.jobs["build"];
        let c = job.container.as_ref().unwrap();
        assert_eq!(c.image, "${{ matrix.image }}");
        let cred = c.credentials.as_ref().unwrap();
        assert_eq!(cred.username.0, "u");
        assert_eq!(cred.password.0, "${{ secrets.P }}");
        assert_eq!(c.env["N"].0, "1");
        let ports: Vec<_> = c.ports.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(ports, ["80", "8080:80"]);
        assert_eq!(c.volumes, ["v:/v"]);
        assert_eq!(c.options.as_deref(), Some("--cpus 1"));
        assert_eq!(job.services["db"].image, "postgres:15");
        assert_eq!(
            job.services["db"].command.as_deref(),
            Some("postgres -c fsync=off")
        );
        assert_eq!(job.services["redis"].image, "redis:7");
        // The string form.
        let m = with_json(|v| v["jobContainer"] = json!("node:20"));
        let t = translate(&m, &TranslateOptions::default()).unwrap();
        let c = t.spec.workflow.jobs["build"].container.clone().unwrap();
        assert_eq!(c.image, "node:20");
    }

    #[test]
    fn docker_steps_become_uses_docker() {
        let m = with_json(|v| {
            v["steps"][2]["reference"] = json!({"type": 2, "image": "alpine:3"});
            v["steps"][2]["Inputs"] = json!({"type": 2, "map": [
                {"Key": "args", "Value": {"type": 3, "expr": "format('echo {0}', matrix.os)"}},
                {"Key": "entrypoint", "Value": "sh"}
            ]});
        });
        let t = translate(&m, &TranslateOptions::default()).unwrap();
        let s = &t.spec.workflow.jobs["build"].steps[2];
        assert_eq!(s.uses.as_deref(), Some("docker://alpine:3"));
        assert_eq!(s.run, None);
        assert_eq!(s.with["args"].0, "${{ format('echo {0}', matrix.os) }}");
        assert_eq!(s.with["entrypoint"].0, "sh");
        assert_eq!(s.if_.as_ref().unwrap().0, "always()");
        assert_eq!(envelope(&m).unwrap().steps[2].name, "Run docker://alpine:3");
    }

    #[test]
    fn what_cannot_run_is_refused_clearly() {
        let err = |m: &JobMessage| {
            translate(m, &TranslateOptions::default())
                .unwrap_err()
                .to_string()
        };
        // Containers the workflow could not have written.
        let m = with_json(|v| {
            v["jobContainer"] = json!({"type": 2, "map": [{"Key": "env", "Value": {"type": 2}}]})
        });
        assert_eq!(
            err(&m),
            "The job's `container:` has no `image:`; a job container needs one"
        );
        let m = with_json(|v| {
            v["jobServiceContainers"] = json!({"type": 3, "expr": "fromJSON(vars.SERVICES)"})
        });
        assert!(
            err(&m).starts_with(
                "The job's `services:` is one expression (`${{ fromJSON(vars.SERVICES) }}`)"
            ),
            "{}",
            err(&m)
        );
        let m = with_json(|v| {
            v["jobContainer"] = json!({"type": 2, "map": [
                {"Key": "image", "Value": "x"},
                {"Key": "env", "Value": {"type": 2, "map": [{"Key": {"type": 4, "directive": "insert"}, "Value": "y"}]}}
            ]})
        });
        assert_eq!(
            err(&m),
            "The job's `container:` `env`: has a key that is not plain text (${{ insert }}), which Solstice does not support"
        );
        let m = with_json(|v| v["steps"][2]["reference"] = json!({"type": 2, "image": " "}));
        assert!(
            err(&m).ends_with("the `uses: docker://` step names no image"),
            "{}",
            err(&m)
        );
        // Background steps and unknown kinds.
        let m = with_json(|v| v["steps"][0]["type"] = json!(5));
        assert!(err(&m).contains("background steps"), "{}", err(&m));
        let m = with_json(|v| v["steps"][0]["type"] = json!("teleport"));
        assert!(err(&m).contains("`teleport`"), "{}", err(&m));
        let m = with_json(|v| v["steps"][0]["reference"] = json!({"type": "magic"}));
        assert!(err(&m).contains("`magic`"), "{}", err(&m));
        // An env given as one expression.
        let m = with_json(|v| {
            v["steps"][1]["environment"] = json!({"type": 3, "expr": "fromJSON(vars.ENV)"})
        });
        assert!(err(&m).contains("fromJSON(vars.ENV)"), "{}", err(&m));
        // An `${{ insert }}` key.
        let m = with_json(|v| {
            v["environmentVariables"][1]["map"][0]["Key"] =
                json!({"type": 4, "directive": "insert"})
        });
        assert_eq!(
            err(&m),
            "The job's `env:` has a key that is not plain text (${{ insert }}), which Solstice does not support"
        );
    }

    #[test]
    fn matrix_and_debug() {
        let m = with_json(|v| {
            v["contextData"] = v["ContextData"].take();
            v["contextData"]["matrix"] = json!({"t": 2, "d": [{"k": "os", "v": "linux"}, {"k": "py", "v": {"t": 4, "n": 3.12}}]});
            v["variables"]["ACTIONS_STEP_DEBUG"] = json!({"value": "true"});
        });
        let t = translate(
            &m,
            &TranslateOptions {
                max_job_timeout: Some(Duration::from_secs(60)),
            },
        )
        .unwrap();
        assert_eq!(t.spec.matrix["os"], "linux");
        assert_eq!(t.spec.matrix["py"], json!(3.12));
        assert!(t.step_debug);
        assert_eq!(t.spec.vars["ACTIONS_STEP_DEBUG"], "true");
        assert_eq!(t.spec.max_job_timeout, Some(Duration::from_secs(60)));
        // A secret switch also counts, and is not copied into vars.
        let m = with_json(|v| {
            v["variables"]["ACTIONS_RUNNER_DEBUG"] = json!({"value": "True", "isSecret": true})
        });
        let t = translate(&m, &TranslateOptions::default()).unwrap();
        assert!(t.step_debug);
        assert!(t.spec.secrets.contains_key("ACTIONS_RUNNER_DEBUG"));
        assert!(!t.spec.vars.contains_key("ACTIONS_RUNNER_DEBUG"));
    }

    #[test]
    fn awkward_strings_survive_the_yaml() {
        let values = [
            "null",
            "~",
            "true",
            "False",
            "yes",
            "no",
            "on",
            "1.0",
            "0x10",
            "1e3",
            ".inf",
            "",
            " lead",
            "trail ",
            "a: b",
            "- x",
            "#x",
            "x #y",
            "multi\nline\n",
            "\ttab",
            "'",
            "\"",
            ">",
            "|",
            "@x",
            "`x`",
            "%x",
            "!tag",
            "*alias",
            "&anchor",
            "{a: 1}",
            "[1]",
            "ünï ✓",
            "back\\slash",
            "\u{1b}[31mred",
            "---",
            "...",
            "\r\n",
            "? x",
            "=",
            "<<",
        ];
        let map: Vec<Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"Key": format!("K{i}"), "Value": v}))
            .collect();
        let m = with_json(|v| {
            v["environmentVariables"] = json!([{"type": 2, "map": map}]);
            v["steps"][2]["Inputs"]["map"][0]["Value"] = json!(values.join("\n"));
        });
        let t = translate(&m, &TranslateOptions::default()).unwrap();
        let env = &t.spec.workflow.env;
        for (i, v) in values.iter().enumerate() {
            assert_eq!(env[&format!("K{i}")].0, *v, "value {i}");
        }
        assert_eq!(
            t.spec.workflow.jobs["build"].steps[2].run.as_deref(),
            Some(values.join("\n").as_str())
        );
    }

    #[test]
    fn missing_server_url_is_noted() {
        let m = with_json(|v| {
            let d = v["ContextData"]["github"]["d"].as_array_mut().unwrap();
            d.retain(|e| e["k"] != "server_url");
        });
        let t = translate(&m, &TranslateOptions::default()).unwrap();
        assert_eq!(t.notes.len(), 1);
        assert!(t.notes[0].contains("server_url"));
        assert_eq!(t.spec.default_actions_url, None);
    }
}

//! The parts of an Actions workflow file that a runner needs.
//!
//! Unknown top-level keys (`permissions`, `concurrency`, ...) are accepted
//! and ignored, as a runner receives whole workflow files written for forges.
//! Of `on:` only the declared inputs of `workflow_call` and
//! `workflow_dispatch` are kept (see [`Triggers`]); any other shape is
//! accepted and ignored.

use indexmap::IndexMap;
use serde::Deserialize;

/// A scalar written in YAML (string, number or boolean), kept as the string
/// Actions would see. `env: { N: 1 }` yields `"1"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_norway::Value::deserialize(d)?;
        match v {
            serde_norway::Value::String(s) => Ok(Scalar(s)),
            serde_norway::Value::Bool(b) => Ok(Scalar(b.to_string())),
            serde_norway::Value::Number(n) => Ok(Scalar(n.to_string())),
            serde_norway::Value::Null => Ok(Scalar(String::new())),
            _ => Err(D::Error::custom("expected a string, number or boolean")),
        }
    }
}

/// A whole workflow file. Unknown top-level keys are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Workflow {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub env: IndexMap<String, Scalar>,
    #[serde(default)]
    pub defaults: Option<Defaults>,
    /// `on:`, read leniently: only the inputs the runner needs.
    #[serde(default)]
    pub on: Triggers,
    pub jobs: IndexMap<String, Job>,
}

/// What the runner takes from `on:`: the declared inputs of `workflow_call`
/// (where Forgejo puts a caller's `with:` values, as defaults) and of
/// `workflow_dispatch` (their defaults). `on:` may be a string, a list or a
/// mapping, and holds keys the runner does not use (`push`, `__metadata`,
/// ...): any shape is accepted, and what is not understood is ignored, so
/// that `on:` never stops a job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Triggers {
    /// `on.workflow_call.inputs`, in file order.
    pub workflow_call_inputs: IndexMap<String, InputSpec>,
    /// `on.workflow_dispatch.inputs`, in file order.
    pub workflow_dispatch_inputs: IndexMap<String, InputSpec>,
}

/// One declared input: its `type` and its `default`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputSpec {
    /// `type:` as written (`boolean`, `number`, `string`, `choice`, ...),
    /// lower-cased; empty when absent.
    pub kind: String,
    /// `default:`, when present and not null.
    pub default: Option<serde_norway::Value>,
}

impl<'de> Deserialize<'de> for Triggers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Any YAML value is accepted; only mappings carry inputs.
        let v = serde_norway::Value::deserialize(d)?;
        let inputs_of = |event: &str| -> IndexMap<String, InputSpec> {
            let Some(serde_norway::Value::Mapping(inputs)) =
                v.get(event).and_then(|e| e.get("inputs"))
            else {
                return IndexMap::new();
            };
            inputs
                .iter()
                .filter_map(|(name, spec)| {
                    let name = name.as_str()?.to_string();
                    let kind = spec
                        .get("type")
                        .and_then(serde_norway::Value::as_str)
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase();
                    let default = spec.get("default").filter(|d| !d.is_null()).cloned();
                    Some((name, InputSpec { kind, default }))
                })
                .collect()
        };
        Ok(Triggers {
            workflow_call_inputs: inputs_of("workflow_call"),
            workflow_dispatch_inputs: inputs_of("workflow_dispatch"),
        })
    }
}

/// `defaults:` at workflow or job level.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub run: Option<RunDefaults>,
}

/// `defaults.run:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RunDefaults {
    #[serde(default)]
    pub shell: Option<String>,
    #[serde(default)]
    pub working_directory: Option<String>,
}

/// One job. Unknown keys are rejected so a typo (`step:`) is reported
/// instead of silently ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Job {
    #[serde(default)]
    pub name: Option<String>,
    /// Labels (string or list) or an expression; matched against image labels.
    #[serde(default)]
    pub runs_on: Option<serde_norway::Value>,
    #[serde(default)]
    pub env: IndexMap<String, Scalar>,
    #[serde(default)]
    pub defaults: Option<Defaults>,
    /// Job-level `if:`; evaluated by the forge, honoured locally too.
    #[serde(default, rename = "if")]
    pub if_: Option<Scalar>,
    #[serde(default)]
    pub steps: Vec<Step>,
    /// `outputs: { name: "${{ steps.x.outputs.y }}" }`, evaluated at job end.
    #[serde(default)]
    pub outputs: IndexMap<String, String>,
    /// Number or expression.
    #[serde(default)]
    pub timeout_minutes: Option<Scalar>,
    #[serde(default)]
    pub continue_on_error: Option<Scalar>,
    #[serde(default)]
    pub strategy: Option<Strategy>,
    /// Names of jobs this one needs (string or list).
    #[serde(default)]
    pub needs: Option<serde_norway::Value>,
    /// `container:`: the job's steps run inside this container, in the
    /// job's VM. Its values may hold expressions, evaluated at job start.
    #[serde(default)]
    pub container: Option<ContainerSpec>,
    /// `services:`: service containers by id, started before the first step.
    #[serde(default)]
    pub services: IndexMap<String, ContainerSpec>,
    /// A reusable workflow call. Not supported: present only so a clear
    /// error can be given.
    #[serde(default)]
    pub uses: Option<serde_norway::Value>,
    /// Inputs of a reusable workflow call (ignored).
    #[serde(default)]
    pub with: Option<serde_norway::Value>,
    /// Secrets of a reusable workflow call (ignored).
    #[serde(default)]
    pub secrets: Option<serde_norway::Value>,
    /// Token permissions: a forge matter, ignored by the runner.
    #[serde(default)]
    pub permissions: Option<serde_norway::Value>,
    /// Deployment environment: a forge matter, ignored by the runner.
    #[serde(default)]
    pub environment: Option<serde_norway::Value>,
    /// Concurrency group: a forge matter, ignored by the runner.
    #[serde(default)]
    pub concurrency: Option<serde_norway::Value>,
    /// Forgejo's OIDC switch: the forge then sends the ID-token request
    /// token and URL with the task (exported to the steps); nothing else
    /// for the runner to do.
    #[serde(default)]
    pub enable_openid_connect: Option<serde_norway::Value>,
}

/// `container:` or one entry of `services:`, as written: every value is kept
/// as a string (it may hold `${{ }}` expressions, evaluated at job start).
/// Written either as the image name alone or as a mapping; unknown keys are
/// rejected. `entrypoint`, `command` and Forgejo's `cmd` are for services
/// only (checked by [`parse_workflow`]).
#[derive(Clone, Default, PartialEq)]
pub struct ContainerSpec {
    /// The image (`postgres:15`, `registry.example:5000/team/img:1`).
    pub image: String,
    /// Registry credentials for this image.
    pub credentials: Option<Credentials>,
    /// Variables set in the container.
    pub env: IndexMap<String, Scalar>,
    /// `-p` values, passed to docker as written (`5432`, `8080:80`).
    pub ports: Vec<Scalar>,
    /// `-v` values (`src:dst[:ro]`, or a named volume).
    pub volumes: Vec<String>,
    /// More `docker create` options, split like a shell command line
    /// (quotes, no expansion).
    pub options: Option<String>,
    /// A service's entrypoint, replacing the image's.
    pub entrypoint: Option<String>,
    /// A service's command, split like `options` (GitHub's `command`).
    pub command: Option<String>,
    /// A service's command as a list (Forgejo's `cmd`).
    pub cmd: Vec<Scalar>,
}

/// `credentials:` of a container: `Debug` shows the password as `***`.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default)]
    pub username: Scalar,
    #[serde(default)]
    pub password: Scalar,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username.0)
            .field("password", &"***")
            .finish()
    }
}

impl std::fmt::Debug for ContainerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Environment values may hold secrets (written literally).
        f.debug_struct("ContainerSpec")
            .field("image", &self.image)
            .field("credentials", &self.credentials)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("ports", &self.ports)
            .field("volumes", &self.volumes)
            .field("options", &self.options)
            .field("entrypoint", &self.entrypoint)
            .field("command", &self.command)
            .field("cmd", &self.cmd)
            .finish()
    }
}

/// The mapping form of [`ContainerSpec`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerMap {
    #[serde(default)]
    image: Scalar,
    #[serde(default)]
    credentials: Option<Credentials>,
    #[serde(default)]
    env: IndexMap<String, Scalar>,
    #[serde(default)]
    ports: Vec<Scalar>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    options: Option<Scalar>,
    #[serde(default)]
    entrypoint: Option<Scalar>,
    #[serde(default)]
    command: Option<Scalar>,
    #[serde(default)]
    cmd: Vec<Scalar>,
}

impl<'de> Deserialize<'de> for ContainerSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_norway::Value::deserialize(d)?;
        match v {
            serde_norway::Value::String(image) => Ok(ContainerSpec {
                image,
                ..ContainerSpec::default()
            }),
            serde_norway::Value::Mapping(_) => {
                let m: ContainerMap = serde_norway::from_value(v).map_err(D::Error::custom)?;
                Ok(ContainerSpec {
                    image: m.image.0,
                    credentials: m.credentials,
                    env: m.env,
                    ports: m.ports,
                    volumes: m.volumes,
                    options: m.options.map(|o| o.0),
                    entrypoint: m.entrypoint.map(|o| o.0),
                    command: m.command.map(|o| o.0),
                    cmd: m.cmd,
                })
            }
            _ => Err(D::Error::custom(
                "expected an image name or a mapping with `image:`",
            )),
        }
    }
}

/// `strategy:`; see [`crate::workflow::matrix`] for the matrix.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Strategy {
    /// A mapping of axes plus optional `include` / `exclude`, or an expression.
    #[serde(default)]
    pub matrix: Option<serde_norway::Value>,
    #[serde(default)]
    pub fail_fast: Option<Scalar>,
    #[serde(default)]
    pub max_parallel: Option<Scalar>,
}

/// One step: exactly one of `run` and `uses`. Unknown keys are rejected.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "if")]
    pub if_: Option<Scalar>,
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default)]
    pub uses: Option<String>,
    #[serde(default)]
    pub with: IndexMap<String, Scalar>,
    #[serde(default)]
    pub env: IndexMap<String, Scalar>,
    #[serde(default)]
    pub shell: Option<String>,
    #[serde(default)]
    pub working_directory: Option<String>,
    #[serde(default)]
    pub continue_on_error: Option<Scalar>,
    #[serde(default)]
    pub timeout_minutes: Option<Scalar>,
}

/// Why a workflow cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    /// The YAML is malformed or does not fit the workflow schema.
    #[error("Invalid workflow{}: {message}", location_suffix(*.line, *.column))]
    Yaml {
        message: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
    },
    /// The workflow has no jobs.
    #[error("The workflow has no jobs; add one under `jobs:`")]
    NoJobs,
    /// A job has no steps.
    #[error("Job `{job}` has no steps; add some under `steps:`")]
    NoSteps { job: String },
    /// A job uses a feature the runner does not implement.
    #[error("Job `{job}` uses `{key}:`, which is not supported: {hint}")]
    Unsupported {
        job: String,
        key: String,
        hint: String,
    },
    /// `container:` or a service is malformed.
    #[error("Job `{job}`, {what}: {message}")]
    InvalidContainer {
        job: String,
        /// `` `container:` `` or `` service `db` ``.
        what: String,
        message: String,
    },
    /// A step is malformed.
    #[error("Job `{job}`, {step}: {message}")]
    InvalidStep {
        job: String,
        /// `step 2 ("Build")`.
        step: String,
        message: String,
    },
    /// Several jobs and none chosen.
    #[error("The workflow has several jobs ({}); choose one with --job", .available.join(", "))]
    JobRequired { available: Vec<String> },
    /// The chosen job does not exist.
    #[error("No job `{name}` in the workflow{}; jobs are: {}", suggestion_suffix(.suggestion), .available.join(", "))]
    UnknownJob {
        name: String,
        available: Vec<String>,
        suggestion: Option<String>,
    },
    /// The `strategy.matrix` of a job cannot be expanded.
    #[error("Invalid `strategy.matrix`: {message}")]
    Matrix { message: String },
}

/// A YAML error's message without its trailing " at line L column C", and
/// that line and column (1-based), reported separately.
pub(crate) fn yaml_location(e: &serde_norway::Error) -> (String, Option<usize>, Option<usize>) {
    let mut message = e.to_string();
    match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_string();
            }
            (message, Some(loc.line()), Some(loc.column()))
        }
        None => (message, None, None),
    }
}

fn location_suffix(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

fn suggestion_suffix(s: &Option<String>) -> String {
    s.as_ref()
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

impl WorkflowError {
    fn from_yaml(e: &serde_norway::Error) -> Self {
        let (message, line, column) = yaml_location(e);
        WorkflowError::Yaml {
            message,
            line,
            column,
        }
    }
}

/// Parses and validates a workflow file.
///
/// Besides YAML and schema errors (with line and column; unknown keys of
/// `container:` and of services included), this rejects jobs without steps,
/// job-level `uses:` (reusable workflows), a job container with a
/// service-only key (`entrypoint`, `command`, `cmd`), and steps without
/// exactly one of `run` and `uses`. `container:` and `services:` values are
/// kept as written, expressions included, and evaluated at job start.
pub fn parse_workflow(yaml: &str) -> Result<Workflow, WorkflowError> {
    let wf: Workflow = serde_norway::from_str(yaml).map_err(|e| WorkflowError::from_yaml(&e))?;
    if wf.jobs.is_empty() {
        return Err(WorkflowError::NoJobs);
    }
    for (id, job) in &wf.jobs {
        validate_job(id, job)?;
    }
    Ok(wf)
}

fn validate_job(id: &str, job: &Job) -> Result<(), WorkflowError> {
    let unsupported = |key: &str, hint: &str| WorkflowError::Unsupported {
        job: id.to_string(),
        key: key.to_string(),
        hint: hint.to_string(),
    };
    if job.uses.is_some() {
        return Err(unsupported(
            "uses",
            "reusable workflows cannot be run; copy the called workflow's jobs into this file",
        ));
    }
    if let Some(c) = &job.container {
        let service_only = [
            ("entrypoint", c.entrypoint.is_some()),
            ("command", c.command.is_some()),
            ("cmd", !c.cmd.is_empty()),
        ];
        if let Some((key, _)) = service_only.iter().find(|(_, set)| *set) {
            return Err(WorkflowError::InvalidContainer {
                job: id.to_string(),
                what: "`container:`".into(),
                message: format!(
                    "`{key}:` is only for services: the job container runs `tail -f /dev/null` and the steps run in it"
                ),
            });
        }
    }
    for (sid, s) in &job.services {
        // The id is the service's host name on the job's network.
        let valid_id = !sid.is_empty()
            && sid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && sid
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_id {
            return Err(WorkflowError::InvalidContainer {
                job: id.to_string(),
                what: format!("service `{}`", sid.escape_debug()),
                message: "a service id is its host name on the job's network: use letters, digits, `_`, `-` and `.`, starting with a letter, digit or `_`".into(),
            });
        }
        if s.command.is_some() && !s.cmd.is_empty() {
            return Err(WorkflowError::InvalidContainer {
                job: id.to_string(),
                what: format!("service `{sid}`"),
                message: "`command:` and `cmd:` both set the command; keep one".into(),
            });
        }
    }
    if job.steps.is_empty() {
        return Err(WorkflowError::NoSteps {
            job: id.to_string(),
        });
    }
    for (i, step) in job.steps.iter().enumerate() {
        let message = match (&step.run, &step.uses) {
            (Some(_), Some(_)) => "has both `run` and `uses`; a step does one or the other",
            (None, None) => "has neither `run` nor `uses`; add one of them",
            _ => continue,
        };
        return Err(WorkflowError::InvalidStep {
            job: id.to_string(),
            step: step_label(i, step),
            message: format!("the step {message}"),
        });
    }
    Ok(())
}

/// `step 2 ("Build")` or `step 2 (id compile)` or `step 2`, for messages.
pub fn step_label(index: usize, step: &Step) -> String {
    match (&step.name, &step.id) {
        (Some(n), _) => format!("step {} (\"{n}\")", index + 1),
        (None, Some(id)) => format!("step {} (id `{id}`)", index + 1),
        _ => format!("step {}", index + 1),
    }
}

/// Chooses the job to run: the named one, or the only one when `job` is
/// `None`. The errors list the job ids.
pub fn select_job<'a>(
    wf: &'a Workflow,
    job: Option<&str>,
) -> Result<(&'a str, &'a Job), WorkflowError> {
    let available = || wf.jobs.keys().cloned().collect::<Vec<_>>();
    match job {
        Some(name) => wf
            .jobs
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| WorkflowError::UnknownJob {
                name: name.to_string(),
                available: available(),
                suggestion: wf
                    .jobs
                    .keys()
                    .map(|k| (strsim::levenshtein(k, name), k))
                    .filter(|(d, k)| *d <= 2.max(k.len() / 3))
                    .min_by_key(|(d, _)| *d)
                    .map(|(_, k)| k.clone()),
            }),
        None => match wf.jobs.len() {
            0 => Err(WorkflowError::NoJobs),
            1 => Ok(wf
                .jobs
                .first()
                .map(|(k, v)| (k.as_str(), v))
                .ok_or(WorkflowError::NoJobs)?),
            _ => Err(WorkflowError::JobRequired {
                available: available(),
            }),
        },
    }
}

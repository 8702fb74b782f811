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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Not supported: present only so a clear error can be given.
    #[serde(default)]
    pub container: Option<serde_norway::Value>,
    /// Not supported: present only so a clear error can be given.
    #[serde(default)]
    pub services: Option<serde_norway::Value>,
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
/// Besides YAML and schema errors (with line and column), this rejects jobs
/// without steps, `container:`, `services:` and job-level `uses:` (reusable
/// workflows), and steps without exactly one of `run` and `uses`.
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
    if job.container.is_some() {
        return Err(unsupported(
            "container",
            "jobs run directly in a VM; pick an image with the tools you need or install them in a step",
        ));
    }
    if job.services.is_some() {
        return Err(unsupported(
            "services",
            "service containers are not available; start the service in a step instead",
        ));
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

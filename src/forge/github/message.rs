//! The job message GitHub answers `acquirejob` with (spec §7): a
//! pre-compiled job whose contexts are `PipelineContextData` (§7.1) and
//! whose step fields are `TemplateToken`s (§7.2).
//!
//! Read leniently, as the reference runner does: keys match in any case,
//! enums come as strings (any case) or integers, booleans and numbers may be
//! strings (`"True"`, `"5"`), unknown fields are ignored. Only a body that
//! is not a JSON object is an error here; what a job needs is checked by
//! [`super::translate`].

use indexmap::IndexMap;
use serde_json::{Map, Value};

/// Why a job message cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The body is not JSON.
    #[error("The job message from GitHub is not valid JSON")]
    Json(#[source] serde_json::Error),
    /// The body is JSON but not an object.
    #[error("The job message from GitHub is not a JSON object (it is {found})")]
    NotAnObject { found: &'static str },
}

/// Where a token was written: 1-based index into [`JobMessage::file_table`],
/// line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// 1-based index into the file table.
    pub file: Option<i64>,
    /// 1-based line.
    pub line: Option<i64>,
    /// 1-based column.
    pub col: Option<i64>,
}

/// One `TemplateToken` (§7.2), with its position when the message gave one.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateToken {
    /// The value.
    pub kind: Token,
    /// `file`/`line`/`col`, when sent.
    pub position: Option<Position>,
}

/// The value of a [`TemplateToken`].
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    /// Type 0: literal text.
    Literal(String),
    /// Type 1.
    Sequence(Vec<TemplateToken>),
    /// Type 2: key and value tokens, in order.
    Mapping(Vec<(TemplateToken, TemplateToken)>),
    /// Type 3: an expression without `${{ }}` (`format('x {0}', vars.Y)`).
    Expression(String),
    /// Type 4: `${{ insert }}` (the directive's name).
    Insert(String),
    /// Type 5.
    Bool(bool),
    /// Type 6.
    Number(f64),
    /// Type 7.
    Null,
}

impl TemplateToken {
    /// A token without position.
    pub fn new(kind: Token) -> TemplateToken {
        TemplateToken {
            kind,
            position: None,
        }
    }

    /// The text of a literal token (strings, booleans and numbers as
    /// Actions prints them); `None` for expressions and structures.
    pub fn literal_text(&self) -> Option<String> {
        match &self.kind {
            Token::Literal(s) => Some(s.clone()),
            Token::Bool(b) => Some(b.to_string()),
            Token::Number(n) => Some(crate::workflow::expr::format_number(*n)),
            Token::Null => Some(String::new()),
            _ => None,
        }
    }

    /// The entries of a mapping token (empty for anything else).
    pub fn entries(&self) -> &[(TemplateToken, TemplateToken)] {
        match &self.kind {
            Token::Mapping(m) => m,
            _ => &[],
        }
    }

    /// The value under the literal key `key` (case-insensitive) of a mapping.
    pub fn get(&self, key: &str) -> Option<&TemplateToken> {
        self.entries().iter().find_map(|(k, v)| {
            matches!(&k.kind, Token::Literal(s) if s.eq_ignore_ascii_case(key)).then_some(v)
        })
    }

    /// Reads a token from its JSON form (bare scalar, or object with `type`).
    pub fn from_json(v: &Value) -> TemplateToken {
        match v {
            Value::Null => TemplateToken::new(Token::Null),
            Value::Bool(b) => TemplateToken::new(Token::Bool(*b)),
            Value::Number(n) => TemplateToken::new(Token::Number(n.as_f64().unwrap_or(0.0))),
            Value::String(s) => TemplateToken::new(Token::Literal(s.clone())),
            Value::Array(a) => {
                TemplateToken::new(Token::Sequence(a.iter().map(Self::from_json).collect()))
            }
            Value::Object(o) => {
                let position = ["file", "line", "col"]
                    .iter()
                    .any(|k| get(o, k).is_some())
                    .then(|| Position {
                        file: get(o, "file").and_then(as_i64),
                        line: get(o, "line").and_then(as_i64),
                        col: get(o, "col").and_then(as_i64),
                    });
                let kind = match get(o, "type").and_then(|t| enum_value(t, TOKEN_TYPES)) {
                    // No type: a string (AR's default).
                    None | Some(0) => Token::Literal(get(o, "lit").map(text).unwrap_or_default()),
                    Some(1) => Token::Sequence(
                        get(o, "seq")
                            .and_then(Value::as_array)
                            .map(|a| a.iter().map(Self::from_json).collect())
                            .unwrap_or_default(),
                    ),
                    Some(2) => Token::Mapping(
                        get(o, "map")
                            .and_then(Value::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter_map(Value::as_object)
                                    .map(|pair| {
                                        let part = |name| {
                                            get(pair, name)
                                                .map(Self::from_json)
                                                .unwrap_or_else(|| TemplateToken::new(Token::Null))
                                        };
                                        (part("key"), part("value"))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    ),
                    Some(3) => Token::Expression(get(o, "expr").map(text).unwrap_or_default()),
                    Some(4) => Token::Insert(get(o, "directive").map(text).unwrap_or_default()),
                    Some(5) => Token::Bool(get(o, "bool").and_then(as_bool).unwrap_or(false)),
                    Some(6) => Token::Number(get(o, "num").and_then(as_f64).unwrap_or(0.0)),
                    _ => Token::Null,
                };
                TemplateToken { kind, position }
            }
        }
    }
}

const TOKEN_TYPES: &[(&str, i64)] = &[
    ("string", 0),
    ("literal", 0),
    ("sequence", 1),
    ("mapping", 2),
    ("basicexpression", 3),
    ("expression", 3),
    ("insertexpression", 4),
    ("directive", 4),
    ("boolean", 5),
    ("bool", 5),
    ("number", 6),
    ("null", 7),
];

/// Reads `PipelineContextData` (§7.1) into a plain JSON value: bare
/// scalars, `{"t": 1, "a": [...]}` arrays, `{"t": 2 | 5, "d": [{"k", "v"}]}`
/// dictionaries (order kept), `{"t": 0, "s"}`, `{"t": 3, "b"}`,
/// `{"t": 4, "n"}`; an object without `t` is a string. Whole numbers
/// become integers (`run_number` prints as `3`, not `3.0`).
pub fn context_data(v: &Value) -> Value {
    match v {
        Value::Number(n) => number(n.as_f64().unwrap_or(0.0)),
        Value::Array(a) => Value::Array(a.iter().map(context_data).collect()),
        Value::Object(o) => match get(o, "t").and_then(as_i64) {
            Some(1) => Value::Array(
                get(o, "a")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(context_data).collect())
                    .unwrap_or_default(),
            ),
            Some(2) | Some(5) => {
                let mut m = Map::new();
                for pair in get(o, "d")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_object)
                {
                    let key = get(pair, "k").map(text).unwrap_or_default();
                    let value = get(pair, "v").map(context_data).unwrap_or(Value::Null);
                    m.insert(key, value);
                }
                Value::Object(m)
            }
            Some(3) => Value::Bool(get(o, "b").and_then(as_bool).unwrap_or(false)),
            Some(4) => number(get(o, "n").and_then(as_f64).unwrap_or(0.0)),
            _ => Value::String(get(o, "s").map(text).unwrap_or_default()),
        },
        other => other.clone(),
    }
}

fn number(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::from(f as i64)
    } else {
        serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

/// `plan` (ids of the workflow run).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// `planId`: the workflow run's backend id.
    pub plan_id: String,
    /// `planType` (`actions`).
    pub plan_type: String,
    /// `scopeIdentifier` (absent from run-service messages).
    pub scope_identifier: String,
    /// `version` (0 from the run service).
    pub version: i64,
}

/// One variable (`{"value", "isSecret"}`).
#[derive(Clone, Default, PartialEq)]
pub struct Variable {
    /// The value (empty when null).
    pub value: String,
    /// `isSecret`: a user secret or a token.
    pub is_secret: bool,
}

impl std::fmt::Debug for Variable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if self.is_secret { "***" } else { &self.value };
        f.debug_struct("Variable")
            .field("value", &value)
            .field("is_secret", &self.is_secret)
            .finish()
    }
}

/// A service endpoint of `resources.endpoints` (§7.5).
#[derive(Clone, Default, PartialEq)]
pub struct Endpoint {
    /// `SystemVssConnection`, ...
    pub name: String,
    /// The service URL, as sent.
    pub url: String,
    /// `authorization.scheme` (`OAuth`).
    pub scheme: String,
    /// `authorization.parameters` (`AccessToken`), read case-insensitively
    /// through [`Endpoint::parameter`].
    pub parameters: IndexMap<String, String>,
    /// `data` (`ResultsServiceUrl`, `FeedStreamUrl`, ...).
    pub data: IndexMap<String, String>,
}

impl Endpoint {
    /// An authorization parameter, by name in any case.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        lookup(&self.parameters, name).map(String::as_str)
    }

    /// A `data` entry, by name in any case; empty values count as absent.
    pub fn data(&self, name: &str) -> Option<&str> {
        lookup(&self.data, name)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("scheme", &self.scheme)
            .field("parameters", &self.parameters.keys().collect::<Vec<_>>())
            .field("data", &self.data)
            .finish()
    }
}

/// `mask` entry types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskKind {
    /// `value` is the name of a variable whose value is masked.
    Variable,
    /// `value` is a regular expression.
    Regex,
    /// Anything else, as sent.
    Other(String),
}

/// One `mask` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskHint {
    /// `type`.
    pub kind: MaskKind,
    /// A variable name or a regular expression.
    pub value: String,
}

/// `type` of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepType {
    /// `action` (4): every workflow step.
    Action,
    /// `backgroundStepControl` (5): not supported yet.
    BackgroundStepControl,
    /// Anything else, as sent.
    Other(String),
}

/// `reference` of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepReference {
    /// `script` (3): a `run:` step.
    Script,
    /// `repository` (1): `uses: name@ref`, or `uses: ./path` when
    /// `repository_type` is `self`.
    Repository {
        /// `owner/repo` (empty for `self`).
        name: String,
        /// `ref`: the part after `@`.
        git_ref: String,
        /// A directory inside the repository; for `self`, the `uses:`
        /// value (`./dir`).
        path: String,
        /// `GitHub` or `self`.
        repository_type: String,
    },
    /// `containerRegistry` (2): `uses: docker://image`.
    ContainerRegistry {
        /// The image, without `docker://`.
        image: String,
    },
    /// Anything else, as sent.
    Other(String),
}

/// One `ActionStep` (§7.3).
#[derive(Debug, Clone, PartialEq)]
pub struct ActionStep {
    /// `type`.
    pub step_type: StepType,
    /// GUID; the step record id.
    pub id: String,
    /// `name` (often the same as `contextName`).
    pub name: String,
    /// `displayName`, a plain string some messages carry.
    pub display_name: String,
    /// The step's `name:` (literal or expression).
    pub display_name_token: Option<TemplateToken>,
    /// `steps.<contextName>`.
    pub context_name: String,
    /// What the step runs.
    pub reference: StepReference,
    /// `script`/`shell`/`workingDirectory` of a `run:` step, or the `with:`
    /// of a `uses:` step (a mapping).
    pub inputs: Option<TemplateToken>,
    /// A bare expression (`success()`), empty when absent.
    pub condition: String,
    /// `continue-on-error` (boolean or expression).
    pub continue_on_error: Option<TemplateToken>,
    /// `timeout-minutes` (number or expression).
    pub timeout_in_minutes: Option<TemplateToken>,
    /// The step's `env:` (a mapping).
    pub environment: Option<TemplateToken>,
}

/// The job message (§7). Field names follow the wire's camelCase names.
#[derive(Debug, Clone, Default)]
pub struct JobMessage {
    /// `RunnerJobRequest` (generation B) or `PipelineAgentJobRequest`.
    pub message_type: String,
    /// The run's ids.
    pub plan: Plan,
    /// `jobId` (GUID): the job's backend id.
    pub job_id: String,
    /// `jobDisplayName` (`build (linux, 3.12)`).
    pub job_display_name: String,
    /// `jobName` (often `__default`).
    pub job_name: String,
    /// `requestId` (0 in generation B).
    pub request_id: i64,
    /// `resources.endpoints`.
    pub endpoints: Vec<Endpoint>,
    /// `contextData`, each decoded with [`context_data`]; names in any case
    /// through [`JobMessage::context`].
    pub context_data: IndexMap<String, Value>,
    /// `variables`; names in any case through [`JobMessage::variable`].
    pub variables: IndexMap<String, Variable>,
    /// The steps, in order.
    pub steps: Vec<ActionStep>,
    /// `mask`: what to hide in logs besides the secrets.
    pub mask: Vec<MaskHint>,
    /// `fileTable`: the workflow files a token's `file` points into.
    pub file_table: Vec<String>,
    /// Workflow `env`, then job `env` (mapping tokens).
    pub environment_variables: Vec<TemplateToken>,
    /// Workflow, then job `defaults` (mapping tokens).
    pub defaults: Vec<TemplateToken>,
    /// Not null: the job has `container:`.
    pub job_container: Option<TemplateToken>,
    /// Not null: the job has `services:`.
    pub job_service_containers: Option<TemplateToken>,
    /// Job `outputs:` (name → value token).
    pub job_outputs: Option<TemplateToken>,
    /// `workspace`, as sent.
    pub workspace: Value,
    /// `billingOwnerId`, echoed in `completejob`.
    pub billing_owner_id: Option<String>,
}

impl JobMessage {
    /// A variable by name in any case.
    pub fn variable(&self, name: &str) -> Option<&Variable> {
        lookup(&self.variables, name)
    }

    /// A variable's value, when present and not empty.
    pub fn variable_value(&self, name: &str) -> Option<&str> {
        self.variable(name)
            .map(|v| v.value.as_str())
            .filter(|v| !v.is_empty())
    }

    /// A context of `contextData` by name in any case (`null` counts as
    /// absent).
    pub fn context(&self, name: &str) -> Option<&Value> {
        lookup(&self.context_data, name).filter(|v| !v.is_null())
    }

    /// The endpoint `name` (`SystemVssConnection`), in any case.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.name.eq_ignore_ascii_case(name))
    }
}

/// Reads a job message. Fails only when the body is not a JSON object;
/// missing or odd fields take empty values.
pub fn parse_message(body: &[u8]) -> Result<JobMessage, MessageError> {
    // A UTF-8 byte-order mark may lead the body.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let v: Value = serde_json::from_slice(body).map_err(MessageError::Json)?;
    let Value::Object(o) = v else {
        return Err(MessageError::NotAnObject {
            found: kind_name(&v),
        });
    };
    let s = |name: &str| get(&o, name).map(text).unwrap_or_default();
    let plan = get(&o, "plan")
        .and_then(Value::as_object)
        .map(|p| Plan {
            plan_id: get(p, "planId").map(text).unwrap_or_default(),
            plan_type: get(p, "planType").map(text).unwrap_or_default(),
            scope_identifier: get(p, "scopeIdentifier").map(text).unwrap_or_default(),
            version: get(p, "version").and_then(as_i64).unwrap_or(0),
        })
        .unwrap_or_default();
    let endpoints = get(&o, "resources")
        .and_then(Value::as_object)
        .and_then(|r| get(r, "endpoints"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_object)
                .map(endpoint)
                .collect()
        })
        .unwrap_or_default();
    let context_data = get(&o, "contextData")
        .and_then(Value::as_object)
        .map(|c| {
            c.iter()
                .map(|(k, v)| (k.clone(), context_data(v)))
                .collect()
        })
        .unwrap_or_default();
    let variables = get(&o, "variables")
        .and_then(Value::as_object)
        .map(|vars| {
            vars.iter()
                .map(|(k, v)| {
                    let var = match v {
                        Value::Object(vo) => Variable {
                            value: get(vo, "value").map(text).unwrap_or_default(),
                            is_secret: get(vo, "isSecret").and_then(as_bool).unwrap_or(false),
                        },
                        other => Variable {
                            value: text(other),
                            is_secret: false,
                        },
                    };
                    (k.clone(), var)
                })
                .collect()
        })
        .unwrap_or_default();
    let steps = get(&o, "steps")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_object).map(step).collect())
        .unwrap_or_default();
    let mask = get(&o, "mask")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_object)
                .map(|m| {
                    let t = get(m, "type");
                    let kind = match t.and_then(|t| enum_value(t, &[("variable", 1), ("regex", 2)]))
                    {
                        Some(1) => MaskKind::Variable,
                        Some(2) => MaskKind::Regex,
                        _ => MaskKind::Other(t.map(text).unwrap_or_default()),
                    };
                    MaskHint {
                        kind,
                        value: get(m, "value").map(text).unwrap_or_default(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let file_table = get(&o, "fileTable")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    let tokens = |name: &str| -> Vec<TemplateToken> {
        match get(&o, name) {
            Some(Value::Array(a)) => a.iter().map(TemplateToken::from_json).collect(),
            Some(Value::Null) | None => Vec::new(),
            Some(one) => vec![TemplateToken::from_json(one)],
        }
    };
    let token = |name: &str| {
        get(&o, name)
            .map(TemplateToken::from_json)
            .filter(|t| t.kind != Token::Null)
    };
    Ok(JobMessage {
        message_type: s("messageType"),
        plan,
        job_id: s("jobId"),
        job_display_name: s("jobDisplayName"),
        job_name: s("jobName"),
        request_id: get(&o, "requestId").and_then(as_i64).unwrap_or(0),
        endpoints,
        context_data,
        variables,
        steps,
        mask,
        file_table,
        environment_variables: tokens("environmentVariables"),
        defaults: tokens("defaults"),
        job_container: token("jobContainer"),
        job_service_containers: token("jobServiceContainers"),
        job_outputs: token("jobOutputs"),
        workspace: get(&o, "workspace").cloned().unwrap_or(Value::Null),
        billing_owner_id: get(&o, "billingOwnerId")
            .map(text)
            .filter(|s| !s.is_empty()),
    })
}

fn endpoint(e: &Map<String, Value>) -> Endpoint {
    let strings = |v: Option<&Value>| -> IndexMap<String, String> {
        v.and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), text(v))).collect())
            .unwrap_or_default()
    };
    let auth = get(e, "authorization").and_then(Value::as_object);
    Endpoint {
        name: get(e, "name").map(text).unwrap_or_default(),
        url: get(e, "url").map(text).unwrap_or_default(),
        scheme: auth
            .and_then(|a| get(a, "scheme"))
            .map(text)
            .unwrap_or_default(),
        parameters: strings(auth.and_then(|a| get(a, "parameters"))),
        data: strings(get(e, "data")),
    }
}

fn step(s: &Map<String, Value>) -> ActionStep {
    let str_of = |name: &str| get(s, name).map(text).unwrap_or_default();
    let token = |name: &str| {
        get(s, name)
            .map(TemplateToken::from_json)
            .filter(|t| t.kind != Token::Null)
    };
    let step_type = match get(s, "type") {
        None => StepType::Action,
        Some(t) => match enum_value(t, &[("action", 4), ("backgroundstepcontrol", 5)]) {
            Some(4) => StepType::Action,
            Some(5) => StepType::BackgroundStepControl,
            _ => StepType::Other(text(t)),
        },
    };
    let reference = match get(s, "reference").and_then(Value::as_object) {
        None => StepReference::Other(String::new()),
        Some(r) => {
            let rs = |name: &str| get(r, name).map(text).unwrap_or_default();
            let t = get(r, "type");
            match t.and_then(|t| {
                enum_value(
                    t,
                    &[("repository", 1), ("containerregistry", 2), ("script", 3)],
                )
            }) {
                Some(1) => StepReference::Repository {
                    name: rs("name"),
                    git_ref: rs("ref"),
                    path: rs("path"),
                    repository_type: rs("repositoryType"),
                },
                Some(2) => StepReference::ContainerRegistry { image: rs("image") },
                Some(3) => StepReference::Script,
                _ => StepReference::Other(t.map(text).unwrap_or_default()),
            }
        }
    };
    ActionStep {
        step_type,
        id: str_of("id"),
        name: str_of("name"),
        display_name: str_of("displayName"),
        display_name_token: token("displayNameToken"),
        context_name: str_of("contextName"),
        reference,
        inputs: token("inputs"),
        condition: str_of("condition"),
        continue_on_error: token("continueOnError"),
        timeout_in_minutes: token("timeoutInMinutes"),
        environment: token("environment"),
    }
}

/// `obj[name]`, the exact key first, else any case.
pub(crate) fn get<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// `map[name]`, the exact key first, else any case.
fn lookup<'a, V>(map: &'a IndexMap<String, V>, name: &str) -> Option<&'a V> {
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// A scalar as text (`null` is empty, numbers and booleans printed).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => crate::workflow::expr::to_actions_string(v),
        },
        other => crate::workflow::expr::to_actions_string(other),
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Some(false),
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        _ => None,
    }
}

/// An enum given as an integer, a numeric string, or a name in any case.
fn enum_value(v: &Value, names: &[(&str, i64)]) -> Option<i64> {
    match v {
        Value::Number(_) => as_i64(v),
        Value::String(s) => {
            let s = s.trim();
            s.parse().ok().or_else(|| {
                names
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(s))
                    .map(|(_, i)| *i)
            })
        }
        _ => None,
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn context_data_forms() {
        let v = json!({"t": 2, "d": [
            {"k": "s", "v": "text"},
            {"k": "n", "v": 3.0},
            {"k": "f", "v": {"t": 4, "n": "1.5"}},
            {"k": "b", "v": {"t": 3, "b": "True"}},
            {"k": "s0", "v": {"t": 0, "s": "x"}},
            {"k": "bare", "v": {"s": "y"}},
            {"k": "a", "v": {"t": 1, "a": [1, {"t": 1}]}},
            {"k": "empty", "v": {"t": 2}},
            {"k": "cs", "v": {"t": 5, "d": [{"k": "Path", "v": "/bin"}]}},
            {"k": "nul", "v": null}
        ]});
        assert_eq!(
            context_data(&v),
            json!({"s": "text", "n": 3, "f": 1.5, "b": true, "s0": "x", "bare": "y",
                   "a": [1, []], "empty": {}, "cs": {"Path": "/bin"}, "nul": null})
        );
        // Order is kept.
        let keys: Vec<_> = context_data(&v)
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys[0], "s");
        assert_eq!(keys[9], "nul");
    }

    #[test]
    fn tokens_with_and_without_positions() {
        let t = TemplateToken::from_json(
            &json!({"type": 2, "file": 1, "line": 3, "col": 5, "map": [
                {"Key": {"type": 0, "file": 1, "line": 4, "col": 7, "lit": "A"}, "Value": {"type": 3, "expr": "github.sha"}},
                {"key": "B", "value": {"type": "Boolean", "bool": "True"}},
                {"KEY": "C", "VALUE": {"type": 6, "num": "5"}},
                {"Key": "D", "Value": {"type": 1, "seq": ["x", {"type": 7}]}},
                {"Key": "E", "Value": {"lit": "no type"}},
                {"Key": "F", "Value": {"type": "insertExpression", "directive": "insert"}},
                {"Key": "G", "Value": null}
            ]}),
        );
        assert_eq!(
            t.position,
            Some(Position {
                file: Some(1),
                line: Some(3),
                col: Some(5)
            })
        );
        let e = t.entries();
        assert_eq!(e.len(), 7);
        assert_eq!(e[0].0.kind, Token::Literal("A".into()));
        assert_eq!(e[0].0.position.unwrap().col, Some(7));
        assert_eq!(e[0].1.kind, Token::Expression("github.sha".into()));
        assert_eq!(t.get("b").unwrap().kind, Token::Bool(true));
        assert_eq!(t.get("C").unwrap().kind, Token::Number(5.0));
        assert_eq!(t.get("C").unwrap().literal_text().as_deref(), Some("5"));
        assert_eq!(
            t.get("D").unwrap().kind,
            Token::Sequence(vec![
                TemplateToken::new(Token::Literal("x".into())),
                TemplateToken::new(Token::Null)
            ])
        );
        assert_eq!(t.get("E").unwrap().kind, Token::Literal("no type".into()));
        assert_eq!(t.get("F").unwrap().kind, Token::Insert("insert".into()));
        assert_eq!(t.get("G").unwrap().kind, Token::Null);
        assert_eq!(t.get("G").unwrap().position, None);
    }

    #[test]
    fn message_fields_and_errors() {
        let m = parse_message(include_bytes!("testdata/job_message.json")).unwrap();
        assert_eq!(m.message_type, "RunnerJobRequest");
        assert_eq!(m.plan.plan_type, "actions");
        assert_eq!(m.request_id, 0);
        assert_eq!(m.file_table, [".github/workflows/ci.yml"]);
        assert_eq!(m.steps.len(), 5);
        assert_eq!(m.steps[1].step_type, StepType::Action);
        assert_eq!(m.steps[2].step_type, StepType::Action);
        assert_eq!(m.steps[2].reference, StepReference::Script);
        assert_eq!(m.steps[2].condition, "always()");
        assert!(m.variable("API_KEY").unwrap().is_secret);
        assert!(m.variable("SYSTEM.GITHUB.JOB").is_some());
        assert!(m.context("matrix").is_none());
        assert!(m.context("GITHUB").is_some());
        assert_eq!(m.environment_variables.len(), 2);
        assert_eq!(m.defaults.len(), 2);
        assert!(m.job_container.is_none());
        assert_eq!(
            m.mask[1],
            MaskHint {
                kind: MaskKind::Variable,
                value: "plain_note".into()
            }
        );
        let debug = format!("{m:?}");
        assert!(!debug.contains("ghs_TOKEN123"), "{debug}");
        assert!(!debug.contains("job-token-xyz"), "{debug}");
        // A byte-order mark is skipped.
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(b"{\"jobId\": \"x\"}");
        assert_eq!(parse_message(&bom).unwrap().job_id, "x");
        assert_eq!(
            parse_message(b"[1]").unwrap_err().to_string(),
            "The job message from GitHub is not a JSON object (it is an array)"
        );
        assert!(matches!(
            parse_message(b"{nope"),
            Err(MessageError::Json(_))
        ));
    }
}

//! Action metadata (`action.yml` / `action.yaml`): the inputs, outputs and
//! `runs:` a runner needs. Pure: the caller reads the file.
//!
//! Facts: `../shared/spec/actions-runtime.md` §1.4 and §2.

use indexmap::IndexMap;

use super::model::{Scalar, Step};

/// A parsed action manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionManifest {
    pub name: Option<String>,
    pub description: Option<String>,
    /// Declared inputs, in file order, keyed by name as written.
    pub inputs: IndexMap<String, ActionInput>,
    /// Declared outputs, in file order.
    pub outputs: IndexMap<String, ActionOutput>,
    pub runs: Runs,
}

/// One declared input.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActionInput {
    pub description: Option<String>,
    /// Informational: the runner does not enforce it (as on GitHub).
    pub required: bool,
    /// An expression template (`${{ github.token }}`) or a plain value.
    pub default: Option<String>,
    pub deprecation_message: Option<String>,
}

/// One declared output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActionOutput {
    pub description: Option<String>,
    /// Composite actions: the expression that gives the output's value.
    pub value: Option<String>,
}

/// How the action runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Runs {
    /// `using: node12|node16|node20|node24`.
    Node(NodeRuns),
    /// `using: composite`.
    Composite(CompositeRuns),
    /// `using: docker` (also synthesized from a bare `Dockerfile`).
    Docker(DockerRuns),
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRuns {
    /// `node20`, ... as written, lower-cased.
    pub using: String,
    /// Entry point, relative to the action's directory.
    pub main: String,
    pub pre: Option<String>,
    /// Defaults to `always()`.
    pub pre_if: String,
    pub post: Option<String>,
    /// Defaults to `always()`.
    pub post_if: String,
    /// `runs.env` (act reads it for every kind of action).
    pub env: IndexMap<String, Scalar>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompositeRuns {
    /// The steps; every `run:` step has a `shell:` (checked when parsing).
    pub steps: Vec<Step>,
    pub env: IndexMap<String, Scalar>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DockerRuns {
    /// `Dockerfile` (relative to the action's directory) or `docker://image`.
    pub image: String,
    pub entrypoint: Option<String>,
    pub args: Vec<String>,
    pub env: IndexMap<String, Scalar>,
}

/// Why an action's metadata cannot be used. Its text names the file and,
/// when known, the line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", location(*.line, *.column))]
pub struct ActionError {
    /// The file as the user knows it (`owner/repo@ref/action.yml`, `./x/action.yml`).
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// The manifest file names, in the order they are looked for. A directory
/// with none of them but a `Dockerfile` holds a Docker action
/// ([`dockerfile_action`]).
pub const MANIFEST_NAMES: [&str; 2] = ["action.yml", "action.yaml"];

/// Parses an `action.yml`. `file` names it in errors.
pub fn parse_action(text: &str, file: &str) -> Result<ActionManifest, ActionError> {
    let _ = text;
    Err(ActionError {
        file: file.to_string(),
        line: None,
        column: None,
        message: "not implemented yet".into(),
    })
}

/// The action a directory with only a `Dockerfile` holds (`using: docker`,
/// `image: Dockerfile`), as on GitHub.
pub fn dockerfile_action() -> ActionManifest {
    ActionManifest {
        name: None,
        description: None,
        inputs: IndexMap::new(),
        outputs: IndexMap::new(),
        runs: Runs::Docker(DockerRuns {
            image: "Dockerfile".into(),
            entrypoint: None,
            args: Vec::new(),
            env: IndexMap::new(),
        }),
    }
}

/// The environment variable a JavaScript action reads input `name` from:
/// `INPUT_` + the name with spaces replaced by `_`, upper-cased; hyphens
/// and dots are kept (GitHub's rule, which `@actions/core` follows).
pub fn input_env_name(name: &str) -> String {
    format!("INPUT_{}", name.replace(' ', "_").to_uppercase())
}

//! The parts of an Actions workflow file that a runner needs.
//!
//! Unknown top-level keys (`on`, `permissions`, `concurrency`, ...) are accepted
//! and ignored, as a runner receives whole workflow files written for forges.

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

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Workflow {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub env: IndexMap<String, Scalar>,
    #[serde(default)]
    pub defaults: Option<Defaults>,
    pub jobs: IndexMap<String, Job>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Defaults {
    #[serde(default)]
    pub run: Option<RunDefaults>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunDefaults {
    #[serde(default)]
    pub shell: Option<String>,
    #[serde(default)]
    pub working_directory: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
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
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Strategy {
    /// A mapping of axes plus optional `include` / `exclude`, or an expression.
    #[serde(default)]
    pub matrix: Option<serde_norway::Value>,
    #[serde(default)]
    pub fail_fast: Option<Scalar>,
    #[serde(default)]
    pub max_parallel: Option<Scalar>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
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

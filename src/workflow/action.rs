//! Action metadata (`action.yml` / `action.yaml`): the inputs, outputs and
//! `runs:` a runner needs. Pure: the caller reads the file.
//!
//! Facts: `../shared/spec/actions-runtime.md` §1.4 and §2.

use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};

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
    /// `pre-entrypoint`: run before all main steps.
    pub pre_entrypoint: Option<String>,
    /// Defaults to `always()`.
    pub pre_if: String,
    /// `post-entrypoint`: run after all main steps.
    pub post_entrypoint: Option<String>,
    /// Defaults to `always()`.
    pub post_if: String,
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
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

/// The manifest file names, in the order they are looked for. A directory
/// with none of them but a `Dockerfile` holds a Docker action
/// ([`dockerfile_action`]).
pub const MANIFEST_NAMES: [&str; 2] = ["action.yml", "action.yaml"];

/// The default of `pre-if` and `post-if`.
pub const ALWAYS: &str = "always()";

/// The `runs.using` values Solstice understands, for messages.
pub const USING_VALUES: [&str; 6] = [
    "node12",
    "node16",
    "node20",
    "node24",
    "composite",
    "docker",
];

/// Parses an `action.yml`. `file` names it in errors.
///
/// Unknown keys are tolerated (at the top level, in `inputs`, `outputs` and
/// `runs`), as GitHub and act do; what a runner needs is checked: `runs.using`
/// is known, a JavaScript action has `main`, a Docker action has `image`, and
/// a composite action has `steps` of GitHub's two shapes (spec §3.1). Errors
/// carry the line and column the YAML gives (a composite step's own position
/// for a step that is wrong).
pub fn parse_action(text: &str, file: &str) -> Result<ActionManifest, ActionError> {
    let at = |message: String, line, column| ActionError {
        file: file.to_string(),
        line,
        column,
        message,
    };
    if text.trim().is_empty() {
        return Err(at(
            "the file is empty; an action needs at least `runs:`".into(),
            None,
            None,
        ));
    }
    let raw: RawManifest = serde_norway::from_str(text).map_err(|e| {
        let (message, line, column) = yaml_error(&e);
        at(message, line, column)
    })?;
    let inputs = raw
        .inputs
        .unwrap_or_default()
        .into_iter()
        .map(|(name, i)| {
            let i = i.unwrap_or_default();
            let input = ActionInput {
                description: i.description.map(|d| d.0),
                required: i.required.0,
                default: i.default.map(|d| d.0),
                deprecation_message: i.deprecation_message.map(|d| d.0),
            };
            (name, input)
        })
        .collect();
    let outputs = raw
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|(name, o)| {
            let o = o.unwrap_or_default();
            let output = ActionOutput {
                description: o.description.map(|d| d.0),
                value: o.value.map(|v| v.0),
            };
            (name, output)
        })
        .collect();
    Ok(ActionManifest {
        name: raw.name.map(|n| n.0),
        description: raw.description.map(|d| d.0),
        inputs,
        outputs,
        runs: raw.runs,
    })
}

/// A YAML or schema error as (message, line, column). The location is taken
/// out of the message; the YAML path (`runs.steps[1]: `) is kept, except in
/// front of a composite step's own message, which names the step already.
fn yaml_error(e: &serde_norway::Error) -> (String, Option<usize>, Option<usize>) {
    let (mut message, line, column) = super::model::yaml_location(e);
    if let Some(i) = message.find(STEP_PREFIX)
        && i > 0
        && message[..i].ends_with(": ")
        && !message[..i - 2].contains(' ')
    {
        message = message[i..].to_string();
    }
    (message, line, column)
}

/// How a composite step's messages start (`composite step 2: ...`).
const STEP_PREFIX: &str = "composite step ";

/// The file as serde reads it; unknown keys are ignored.
#[derive(Deserialize)]
struct RawManifest {
    #[serde(default)]
    name: Option<Scalar>,
    #[serde(default)]
    description: Option<Scalar>,
    #[serde(default)]
    inputs: Option<IndexMap<String, Option<RawInput>>>,
    #[serde(default)]
    outputs: Option<IndexMap<String, Option<RawOutput>>>,
    runs: Runs,
}

#[derive(Default, Deserialize)]
struct RawInput {
    #[serde(default)]
    description: Option<Scalar>,
    #[serde(default)]
    required: Required,
    #[serde(default)]
    default: Option<Scalar>,
    #[serde(default, rename = "deprecationMessage")]
    deprecation_message: Option<Scalar>,
}

/// `required:` as a boolean or the strings `"true"`/`"false"` (any case).
#[derive(Default)]
struct Required(bool);

impl<'de> Deserialize<'de> for Required {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_norway::Value::deserialize(d)? {
            serde_norway::Value::Bool(b) => Ok(Required(b)),
            serde_norway::Value::Null => Ok(Required(false)),
            serde_norway::Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(Required(true)),
                "false" | "" => Ok(Required(false)),
                _ => Err(D::Error::custom(format!(
                    "`required: {s}` is not a boolean; write `true` or `false`"
                ))),
            },
            _ => Err(D::Error::custom(
                "`required:` is not a boolean; write `true` or `false`",
            )),
        }
    }
}

#[derive(Default, Deserialize)]
struct RawOutput {
    #[serde(default)]
    description: Option<Scalar>,
    #[serde(default)]
    value: Option<Scalar>,
}

/// `runs:` as serde reads it, before the kind is known.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawRuns {
    #[serde(default)]
    using: Option<Scalar>,
    #[serde(default)]
    main: Option<Scalar>,
    #[serde(default)]
    pre: Option<Scalar>,
    #[serde(default)]
    pre_if: Option<Scalar>,
    #[serde(default)]
    post: Option<Scalar>,
    #[serde(default)]
    post_if: Option<Scalar>,
    #[serde(default)]
    steps: Option<CompositeSteps>,
    #[serde(default)]
    image: Option<Scalar>,
    #[serde(default)]
    entrypoint: Option<Scalar>,
    #[serde(default)]
    args: Option<Vec<Scalar>>,
    #[serde(default)]
    pre_entrypoint: Option<Scalar>,
    #[serde(default)]
    post_entrypoint: Option<Scalar>,
    #[serde(default)]
    env: Option<IndexMap<String, Scalar>>,
}

impl RawRuns {
    /// The runs of its kind, or why not (prefixed with `runs: ` by serde's
    /// path).
    fn resolve(self) -> Result<Runs, String> {
        let Some(using) = self.using.map(|u| u.0.trim().to_ascii_lowercase()) else {
            return Err(format!(
                "`using:` is missing; expected one of {}",
                USING_VALUES.join(", ")
            ));
        };
        let env = self.env.unwrap_or_default();
        let text = |s: Option<Scalar>| s.map(|s| s.0).filter(|s| !s.trim().is_empty());
        let cond = |s: Option<Scalar>| {
            s.map(|s| s.0)
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| ALWAYS.to_string())
        };
        match using.as_str() {
            "node12" | "node16" | "node20" | "node24" => {
                let Some(main) = text(self.main) else {
                    return Err(format!(
                        "`main:` is missing; a `using: {using}` action names its entry point \
                         (for example `main: dist/index.js`)"
                    ));
                };
                Ok(Runs::Node(NodeRuns {
                    using,
                    main,
                    pre: text(self.pre),
                    pre_if: cond(self.pre_if),
                    post: text(self.post),
                    post_if: cond(self.post_if),
                    env,
                }))
            }
            "composite" => {
                let Some(steps) = self.steps else {
                    return Err(
                        "`steps:` is missing; a `using: composite` action lists its steps".into(),
                    );
                };
                Ok(Runs::Composite(CompositeRuns {
                    steps: steps.0,
                    env,
                }))
            }
            "docker" => {
                let Some(image) = text(self.image) else {
                    return Err("`image:` is missing; a `using: docker` action names \
                                `Dockerfile` or `docker://image`"
                        .into());
                };
                Ok(Runs::Docker(DockerRuns {
                    image,
                    entrypoint: text(self.entrypoint),
                    args: self
                        .args
                        .unwrap_or_default()
                        .into_iter()
                        .map(|a| a.0)
                        .collect(),
                    env,
                    pre_entrypoint: text(self.pre_entrypoint),
                    pre_if: cond(self.pre_if),
                    post_entrypoint: text(self.post_entrypoint),
                    post_if: cond(self.post_if),
                }))
            }
            other => Err(format!(
                "`using: {other}` is not an action kind Solstice runs; expected one of {}",
                USING_VALUES.join(", ")
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Runs {
    /// Checked while the mapping is read, so that an error carries the
    /// position of `runs:`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Runs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping with `using:`")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Runs, A::Error> {
                let raw = RawRuns::deserialize(MapAccessDeserializer::new(map))?;
                raw.resolve().map_err(A::Error::custom)
            }
        }
        d.deserialize_map(V)
    }
}

/// `runs.steps` of a composite action, each step checked against GitHub's
/// two shapes as it is read (so that its error has its position).
struct CompositeSteps(Vec<Step>);

impl<'de> Deserialize<'de> for CompositeSteps {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CompositeSteps;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of steps")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CompositeSteps, A::Error> {
                let mut steps = Vec::new();
                while let Some(step) = seq.next_element_seed(StepSeed(steps.len() + 1))? {
                    steps.push(step);
                }
                Ok(CompositeSteps(steps))
            }
        }
        d.deserialize_seq(V)
    }
}

/// One composite step; the number (from 1) is for messages.
struct StepSeed(usize);

impl<'de> DeserializeSeed<'de> for StepSeed {
    type Value = Step;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Step, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for StepSeed {
    type Value = Step;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a step (a mapping with `run:` or `uses:`)")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Step, A::Error> {
        let n = self.0;
        let step = Step::deserialize(MapAccessDeserializer::new(map))?;
        check_composite_step(&step)
            .map_err(|why| A::Error::custom(format!("{STEP_PREFIX}{n}: {why}")))?;
        Ok(step)
    }
}

/// GitHub's `run-step` and `uses-step` shapes (spec §3.1).
fn check_composite_step(step: &Step) -> Result<(), String> {
    if step.timeout_minutes.is_some() {
        return Err(
            "`timeout-minutes:` is not allowed in a composite action's step; \
                    put it on the step that uses the action"
                .into(),
        );
    }
    match (&step.run, &step.uses) {
        (Some(_), Some(_)) => {
            Err("the step has both `run:` and `uses:`; it does one or the other".into())
        }
        (None, None) => Err("the step has neither `run:` nor `uses:`; add one of them".into()),
        (Some(_), None) => {
            if step.shell.as_deref().is_none_or(|s| s.trim().is_empty()) {
                return Err(
                    "`run:` steps need `shell:` (a composite action has no default shell); \
                     add for example `shell: bash` or `shell: sh`"
                        .into(),
                );
            }
            if !step.with.is_empty() {
                return Err("`with:` belongs to `uses:` steps, not to `run:` steps".into());
            }
            Ok(())
        }
        (None, Some(_)) => {
            if step.working_directory.is_some() {
                return Err("`working-directory:` is not allowed on a `uses:` step".into());
            }
            if step.shell.is_some() {
                return Err("`shell:` is not allowed on a `uses:` step".into());
            }
            Ok(())
        }
    }
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
            pre_entrypoint: None,
            pre_if: ALWAYS.into(),
            post_entrypoint: None,
            post_if: ALWAYS.into(),
        }),
    }
}

/// The environment variable a JavaScript action reads input `name` from:
/// `INPUT_` + the name with spaces replaced by `_`, upper-cased; hyphens
/// and dots are kept (GitHub's rule, which `@actions/core` follows).
pub fn input_env_name(name: &str) -> String {
    format!("INPUT_{}", name.replace(' ', "_").to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "o/r@v1/action.yml";

    fn parse(text: &str) -> ActionManifest {
        parse_action(text, FILE).unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(text: &str) -> ActionError {
        match parse_action(text, FILE) {
            Err(e) => e,
            Ok(m) => panic!("parsed: {m:?}"),
        }
    }

    /// Shaped like dtolnay/rust-toolchain: a composite action of bash steps
    /// with ids, `env:`, `if:`, and outputs taken from its steps.
    const RUST_TOOLCHAIN: &str = r#"name: rustup toolchain install
author: Someone
description: Install a Rust toolchain with rustup
branding:
  icon: activity
  color: purple
inputs:
  toolchain:
    description: Toolchain to install (stable, nightly, 1.80.0, ...)
    required: true
  targets:
    description: Comma-separated target triples
    required: false
  components:
    description: Comma-separated components
outputs:
  cachekey:
    description: A hash of the rustc version, for cache keys
    value: ${{steps.version.outputs.cachekey}}
  name:
    description: The toolchain's name
    value: ${{steps.parse.outputs.toolchain}}
runs:
  using: composite
  steps:
    - id: parse
      run: |
        : read the toolchain
        echo "toolchain=$toolchain" >> $GITHUB_OUTPUT
      env:
        toolchain: ${{inputs.toolchain}}
      shell: bash
    - run: rustup toolchain install ${{steps.parse.outputs.toolchain}} --profile minimal --no-self-update
      shell: bash
    - id: version
      name: Compute the cache key
      run: echo "cachekey=$(rustc --version | cksum)" >> $GITHUB_OUTPUT
      shell: bash
    - run: echo CARGO_TERM_COLOR=always >> $GITHUB_ENV
      if: runner.os != 'Windows'
      shell: bash
      continue-on-error: true
"#;

    #[test]
    fn a_composite_action_like_rust_toolchain() {
        let m = parse(RUST_TOOLCHAIN);
        assert_eq!(m.name.as_deref(), Some("rustup toolchain install"));
        assert_eq!(
            m.inputs.keys().collect::<Vec<_>>(),
            ["toolchain", "targets", "components"]
        );
        assert!(m.inputs["toolchain"].required);
        assert!(!m.inputs["targets"].required);
        assert!(!m.inputs["components"].required);
        assert_eq!(m.inputs["components"].default, None);
        assert_eq!(
            m.outputs["cachekey"].value.as_deref(),
            Some("${{steps.version.outputs.cachekey}}")
        );
        let Runs::Composite(c) = &m.runs else {
            panic!("{:?}", m.runs)
        };
        assert_eq!(c.steps.len(), 4);
        assert_eq!(c.steps[0].id.as_deref(), Some("parse"));
        assert_eq!(c.steps[0].shell.as_deref(), Some("bash"));
        assert_eq!(
            c.steps[0].env["toolchain"],
            Scalar("${{inputs.toolchain}}".into())
        );
        assert_eq!(c.steps[2].name.as_deref(), Some("Compute the cache key"));
        assert_eq!(
            c.steps[3].if_,
            Some(Scalar("runner.os != 'Windows'".into()))
        );
        assert_eq!(c.steps[3].continue_on_error, Some(Scalar("true".into())));
        assert!(c.env.is_empty());
    }

    /// Shaped like actions/cache: node24 with a post step that runs only on
    /// success, defaults of every scalar type, a deprecated input.
    const CACHE: &str = r#"name: 'Cache'
description: 'Cache artifacts like dependencies and build outputs'
author: 'GitHub'
inputs:
  path:
    description: 'A list of files, directories, and wildcard patterns'
    required: true
  key:
    description: 'An explicit key'
    required: "true"
  restore-keys:
    description: 'Ordered keys to restore from'
    required: 'False'
  upload-chunk-size:
    description: 'Chunk size'
    default: 33554432
  enableCrossOsArchive:
    default: false
  fail-on-cache-miss:
    default: ''
  lookup-only:
    default:
  save-always:
    description: 'Run the post step even when the job failed'
    default: 'false'
    deprecationMessage: |
      save-always does not work as intended and will be removed.
outputs:
  cache-hit:
    description: 'Whether the primary key matched exactly'
runs:
  using: 'Node24'
  main: 'dist/restore/index.js'
  post: 'dist/save/index.js'
  post-if: success()
branding:
  icon: 'archive'
  color: 'gray-dark'
"#;

    #[test]
    fn a_node_action_like_actions_cache() {
        let m = parse(CACHE);
        let i = &m.inputs;
        assert!(i["path"].required && i["key"].required);
        assert!(!i["restore-keys"].required);
        assert_eq!(i["upload-chunk-size"].default.as_deref(), Some("33554432"));
        assert_eq!(i["enableCrossOsArchive"].default.as_deref(), Some("false"));
        assert_eq!(i["fail-on-cache-miss"].default.as_deref(), Some(""));
        assert_eq!(i["lookup-only"].default, None);
        assert_eq!(
            i["save-always"].deprecation_message.as_deref(),
            Some("save-always does not work as intended and will be removed.\n")
        );
        assert_eq!(m.outputs["cache-hit"].value, None);
        assert_eq!(
            m.runs,
            Runs::Node(NodeRuns {
                using: "node24".into(),
                main: "dist/restore/index.js".into(),
                pre: None,
                pre_if: "always()".into(),
                post: Some("dist/save/index.js".into()),
                post_if: "success()".into(),
                env: IndexMap::new(),
            })
        );
    }

    #[test]
    fn input_defaults_may_be_expressions() {
        let m = parse(
            "name: x\ninputs:\n  token:\n    description: The token\n    default: ${{ github.token }}\n  server:\n    default: '${{ github.server_url }}/api'\nruns:\n  using: node20\n  main: index.js\n  pre: setup.js\n  pre-if: runner.os == 'Linux'\n  env:\n    MODE: fast\n    LEVEL: 3\n",
        );
        assert_eq!(
            m.inputs["token"].default.as_deref(),
            Some("${{ github.token }}")
        );
        assert_eq!(
            m.inputs["server"].default.as_deref(),
            Some("${{ github.server_url }}/api")
        );
        let Runs::Node(n) = &m.runs else {
            panic!("{:?}", m.runs)
        };
        assert_eq!(n.pre.as_deref(), Some("setup.js"));
        assert_eq!(n.pre_if, "runner.os == 'Linux'");
        assert_eq!(n.post, None);
        assert_eq!(n.post_if, "always()");
        assert_eq!(n.env["LEVEL"], Scalar("3".into()));
    }

    #[test]
    fn every_node_version_and_case() {
        for using in ["node12", "node16", "node20", "node24", "NODE20", "Node16"] {
            let m = parse(&format!("runs:\n  using: {using}\n  main: a.js\n"));
            let Runs::Node(n) = m.runs else { panic!() };
            assert_eq!(n.using, using.to_ascii_lowercase());
        }
    }

    #[test]
    fn docker_actions() {
        let m = parse(
            "name: lint\ninputs:\n  level:\n    default: warn\nruns:\n  using: docker\n  image: Dockerfile\n  entrypoint: /entry.sh\n  args:\n    - --level\n    - ${{ inputs.level }}\n    - 3\n  env:\n    A: b\n  pre-entrypoint: /pre.sh\n  post-entrypoint: /post.sh\n  post-if: failure()\n",
        );
        assert_eq!(
            m.runs,
            Runs::Docker(DockerRuns {
                image: "Dockerfile".into(),
                entrypoint: Some("/entry.sh".into()),
                args: vec!["--level".into(), "${{ inputs.level }}".into(), "3".into()],
                env: [("A".to_string(), Scalar("b".into()))]
                    .into_iter()
                    .collect(),
                pre_entrypoint: Some("/pre.sh".into()),
                pre_if: "always()".into(),
                post_entrypoint: Some("/post.sh".into()),
                post_if: "failure()".into(),
            })
        );
        let m = parse("runs:\n  using: 'docker'\n  image: 'docker://alpine:3'\n");
        let Runs::Docker(d) = m.runs else { panic!() };
        assert_eq!(d.image, "docker://alpine:3");
        assert!(d.args.is_empty() && d.entrypoint.is_none());
        assert_eq!(dockerfile_action().runs, {
            let Runs::Docker(mut d) = parse("runs: {using: docker, image: Dockerfile}").runs else {
                panic!()
            };
            d.env.clear();
            Runs::Docker(d)
        });
    }

    #[test]
    fn unknown_keys_are_tolerated_and_empty_sections_are_empty() {
        let m = parse(
            "name: x\nauthor: me\nbranding: {icon: a}\nx-custom: [1, 2]\ninputs:\noutputs:\n  o:\nruns:\n  using: composite\n  steps: []\n  extra: 1\n",
        );
        assert!(m.inputs.is_empty());
        assert_eq!(m.outputs["o"], ActionOutput::default());
        assert_eq!(
            m.runs,
            Runs::Composite(CompositeRuns {
                steps: Vec::new(),
                env: IndexMap::new()
            })
        );
        let m = parse(
            "runs:\n  using: composite\n  steps:\n    - uses: ./inner\n      with:\n        a: 1\n      id: i\n      env: {E: f}\n      if: always()\n      continue-on-error: ${{ inputs.soft }}\n  env:\n    X: y\n",
        );
        let Runs::Composite(c) = m.runs else { panic!() };
        assert_eq!(c.steps[0].uses.as_deref(), Some("./inner"));
        assert_eq!(c.steps[0].with["a"], Scalar("1".into()));
        assert_eq!(c.env["X"], Scalar("y".into()));
    }

    #[test]
    fn a_run_step_without_shell_is_named_with_its_position() {
        let e = error(
            "name: x\nruns:\n  using: composite\n  steps:\n    - run: echo one\n      shell: sh\n    - name: Two\n      run: echo two\n",
        );
        assert_eq!(e.file, FILE);
        assert_eq!((e.line, e.column), (Some(7), Some(7)), "{e}");
        assert!(
            e.message
                .starts_with("composite step 2: `run:` steps need `shell:`"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            format!("{FILE} at line 7, column 7: {}", e.message),
            "the text names file, line and column"
        );
    }

    #[test]
    fn composite_step_shapes_are_checked() {
        let steps = |s: &str| format!("runs:\n  using: composite\n  steps:\n{s}");
        for (yaml, want) in [
            (
                "    - run: a\n      shell: sh\n      timeout-minutes: 5\n",
                "composite step 1: `timeout-minutes:` is not allowed",
            ),
            (
                "    - run: a\n      shell: sh\n    - uses: ./x\n      working-directory: sub\n",
                "composite step 2: `working-directory:` is not allowed on a `uses:` step",
            ),
            (
                "    - uses: ./x\n      shell: bash\n",
                "composite step 1: `shell:` is not allowed on a `uses:` step",
            ),
            (
                "    - run: a\n      shell: sh\n      with: {x: 1}\n",
                "composite step 1: `with:` belongs to `uses:` steps",
            ),
            (
                "    - name: nothing\n",
                "composite step 1: the step has neither `run:` nor `uses:`",
            ),
            (
                "    - run: a\n      uses: ./x\n",
                "composite step 1: the step has both",
            ),
            (
                "    - run: a\n      shell: ''\n",
                "composite step 1: `run:` steps need `shell:`",
            ),
        ] {
            let e = error(&steps(yaml));
            assert!(e.message.starts_with(want), "{yaml}: {e}");
            assert!(e.line.is_some() && e.column.is_some(), "{e}");
        }
        // An unknown key in a step is a YAML error at the step.
        let e = error(&steps("    - run: a\n      shell: sh\n      retries: 2\n"));
        assert!(e.message.contains("unknown field `retries`"), "{e}");
        assert_eq!((e.line, e.column), (Some(6), Some(7)), "{e}");
    }

    #[test]
    fn runs_errors() {
        for (yaml, want, line) in [
            (
                "runs:\n  using: node8\n  main: a.js\n",
                "runs: `using: node8` is not an action kind Solstice runs; expected one of node12, node16, node20, node24, composite, docker",
                2,
            ),
            (
                "name: x\nruns:\n  main: a.js\n",
                "runs: `using:` is missing",
                3,
            ),
            ("runs:\n  using: node20\n", "runs: `main:` is missing", 2),
            (
                "runs:\n  using: composite\n",
                "runs: `steps:` is missing",
                2,
            ),
            ("runs:\n  using: docker\n", "runs: `image:` is missing", 2),
        ] {
            let e = error(yaml);
            assert!(e.message.starts_with(want), "{yaml}: {e}");
            assert_eq!(e.line, Some(line), "{yaml}: {e}");
        }
        let e = error("name: x\n");
        assert!(e.message.contains("missing field `runs`"), "{e}");
        let e = error("  \n");
        assert!(e.message.contains("empty"), "{e}");
        assert_eq!(e.to_string(), format!("{FILE}: {}", e.message));
        let e = error("runs: [1]\n");
        assert!(e.message.contains("using"), "{e}");
    }

    #[test]
    fn input_errors_have_positions() {
        let e = error("inputs:\n  a:\n    required: maybe\nruns: {using: node20, main: a.js}\n");
        assert!(
            e.message.contains("`required: maybe` is not a boolean"),
            "{e}"
        );
        assert_eq!(e.line, Some(3), "{e}");
        let e = error("inputs:\n  a:\n    default: [1]\nruns: {using: node20, main: a.js}\n");
        assert!(
            e.message
                .starts_with("inputs.a: expected a string, number or boolean"),
            "{e}"
        );
        assert_eq!(e.line, Some(3), "{e}");
        let e = error("name: [unclosed\n");
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn input_env_names_keep_hyphens_and_dots() {
        assert_eq!(input_env_name("my-input"), "INPUT_MY-INPUT");
        assert_eq!(input_env_name("a.b c"), "INPUT_A.B_C");
    }
}

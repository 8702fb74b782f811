//! `strategy.matrix` expansion, following GitHub Actions' documented rules.
//!
//! 1. The axes (every key except `include` and `exclude`) form a cartesian
//!    product, in the order written; the first axis varies slowest.
//! 2. `exclude` removes every combination that matches an entry. An entry
//!    only has to match partially: the keys it names must be equal (object
//!    values match when the entry's object is a subset).
//! 3. Each `include` entry is merged into every remaining original
//!    combination whose axis values it does not contradict: its axis keys
//!    must be equal, its other keys are added (overwriting values added by an
//!    earlier `include`, never an axis value). An entry that fits no original
//!    combination is appended as a combination of its own; later entries are
//!    not merged into appended ones.
//!
//! A matrix with only `include` entries therefore gives one combination per
//! entry. A job without a matrix gives one empty combination.

use super::expr::{Contexts, Value, interpolate, to_actions_string};
use super::model::{Job, WorkflowError};
use indexmap::IndexMap;

/// GitHub's limit on the number of jobs one matrix may produce.
pub const MAX_COMBINATIONS: usize = 256;

/// One matrix combination: axis (and included) keys to values, in order.
pub type Combination = IndexMap<String, Value>;

fn matrix_error(message: impl Into<String>) -> WorkflowError {
    WorkflowError::Matrix {
        message: message.into(),
    }
}

fn is_expression(v: &serde_norway::Value) -> Option<&str> {
    match v {
        serde_norway::Value::String(s) if s.contains("${{") => Some(s),
        _ => None,
    }
}

/// Converts YAML to JSON. Mapping keys that are not strings (numbers,
/// booleans) become their text; tags are dropped.
fn yaml_to_json(v: &serde_norway::Value) -> Result<Value, String> {
    use serde_norway::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(seq) => Value::Array(seq.iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Y::Mapping(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                out.insert(yaml_key(k)?, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(&t.value)?,
    })
}

fn yaml_key(k: &serde_norway::Value) -> Result<String, String> {
    use serde_norway::Value as Y;
    match k {
        Y::String(s) => Ok(s.clone()),
        Y::Bool(b) => Ok(b.to_string()),
        Y::Number(n) => Ok(n.to_string()),
        _ => Err("mapping keys must be strings".into()),
    }
}

/// Reads `include:` or `exclude:`: a list of mappings.
fn entries(name: &str, v: &serde_norway::Value) -> Result<Vec<Combination>, WorkflowError> {
    if let Some(expr) = is_expression(v) {
        return Err(matrix_error(format!(
            "`{name}` written as an expression (`{expr}`) is not supported; list the entries in YAML"
        )));
    }
    let serde_norway::Value::Sequence(seq) = v else {
        return Err(matrix_error(format!("`{name}` must be a list of mappings")));
    };
    seq.iter()
        .enumerate()
        .map(
            |(i, entry)| match yaml_to_json(entry).map_err(matrix_error)? {
                Value::Object(m) => Ok(m.into_iter().collect()),
                _ => Err(matrix_error(format!(
                    "`{name}` entry {} must be a mapping of keys to values",
                    i + 1
                ))),
            },
        )
        .collect()
}

/// Whether `value` matches an `exclude` pattern: equal, or for objects, every
/// key of the pattern matches.
fn partial_match(pattern: &Value, value: &Value) -> bool {
    match (pattern, value) {
        (Value::Object(p), Value::Object(v)) => p
            .iter()
            .all(|(k, pv)| v.get(k).is_some_and(|vv| partial_match(pv, vv))),
        _ => pattern == value,
    }
}

/// Expands the job's `strategy.matrix` into its combinations, in the order
/// GitHub lists them. A job without a matrix gives one empty combination.
pub fn expand_matrix(job: &Job) -> Result<Vec<Combination>, WorkflowError> {
    let Some(matrix) = job.strategy.as_ref().and_then(|s| s.matrix.as_ref()) else {
        return Ok(vec![Combination::new()]);
    };
    let mapping = match matrix {
        serde_norway::Value::Null => return Ok(vec![Combination::new()]),
        serde_norway::Value::Mapping(m) => m,
        other => {
            return Err(matrix_error(match is_expression(other) {
                Some(expr) => format!(
                    "a matrix written as an expression (`{expr}`) is not supported; \
                     write the axes out in YAML"
                ),
                None => "the matrix must be a mapping of axes to lists of values".into(),
            }));
        }
    };

    let mut axes: Vec<(String, Vec<Value>)> = Vec::new();
    let mut include = Vec::new();
    let mut exclude = Vec::new();
    for (k, v) in mapping {
        let key = yaml_key(k).map_err(matrix_error)?;
        match key.as_str() {
            "include" => include = entries("include", v)?,
            "exclude" => exclude = entries("exclude", v)?,
            _ => {
                if let Some(expr) = is_expression(v) {
                    return Err(matrix_error(format!(
                        "axis `{key}` is an expression (`{expr}`), which is not supported; \
                         list its values in YAML"
                    )));
                }
                let Value::Array(values) = yaml_to_json(v).map_err(matrix_error)? else {
                    return Err(matrix_error(format!(
                        "axis `{key}` must be a list of values"
                    )));
                };
                if values.is_empty() {
                    return Err(matrix_error(format!("axis `{key}` has no values")));
                }
                axes.push((key, values));
            }
        }
    }

    let mut combos: Vec<Combination> = Vec::new();
    if !axes.is_empty() {
        combos.push(Combination::new());
        for (key, values) in &axes {
            let count = combos.len().saturating_mul(values.len());
            if count > MAX_COMBINATIONS * 16 {
                return Err(too_many(count));
            }
            combos = combos
                .iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.insert(key.clone(), v.clone());
                        c
                    })
                })
                .collect();
        }
    }

    combos.retain(|c| {
        !exclude.iter().any(|ex| {
            ex.iter()
                .all(|(k, pv)| c.get(k).is_some_and(|v| partial_match(pv, v)))
        })
    });

    let originals = combos.len();
    let is_axis = |k: &str| axes.iter().any(|(a, _)| a == k);
    for inc in include {
        let mut merged = false;
        for combo in &mut combos[..originals] {
            let fits = inc
                .iter()
                .all(|(k, v)| !is_axis(k) || combo.get(k) == Some(v));
            if fits {
                for (k, v) in &inc {
                    if !is_axis(k) {
                        combo.insert(k.clone(), v.clone());
                    }
                }
                merged = true;
            }
        }
        if !merged {
            combos.push(inc);
        }
    }

    if combos.is_empty() {
        return Err(matrix_error(
            "the matrix produces no combinations (all are excluded, or it has no axes or include entries)",
        ));
    }
    if combos.len() > MAX_COMBINATIONS {
        return Err(too_many(combos.len()));
    }
    Ok(combos)
}

fn too_many(n: usize) -> WorkflowError {
    matrix_error(format!(
        "the matrix produces {n} combinations; at most {MAX_COMBINATIONS} are allowed"
    ))
}

/// How a matrix value is shown in names and matched by `--matrix`:
/// primitives as Actions prints them, arrays and objects as compact JSON.
pub fn matrix_value_string(v: &Value) -> String {
    match v {
        Value::Array(_) | Value::Object(_) => v.to_string(),
        other => to_actions_string(other),
    }
}

/// Keeps the combinations that match every `key=value` selector (`--matrix
/// os=linux`). A value matches when its string form equals the selector
/// text: primitives as Actions prints them, arrays and objects as compact or
/// indented JSON. A key the combination lacks never matches.
pub fn filter_matrix(combos: Vec<Combination>, selectors: &[(String, String)]) -> Vec<Combination> {
    combos
        .into_iter()
        .filter(|c| {
            selectors.iter().all(|(k, want)| {
                c.get(k).is_some_and(|v| {
                    matrix_value_string(v) == *want || to_actions_string(v) == *want
                })
            })
        })
        .collect()
}

/// Why `--matrix` selectors match no combination of `combos` (the job's
/// whole expanded matrix), one line per finding, ending with the axes and
/// their values: an axis the matrix does not have (with the closest one), a
/// value an axis never takes, or values that never occur together.
pub fn explain_no_match(combos: &[Combination], selectors: &[(String, String)]) -> Vec<String> {
    // Every axis with its values, in order of first appearance.
    let mut axes: IndexMap<String, Vec<String>> = IndexMap::new();
    for c in combos {
        for (k, v) in c {
            let values = axes.entry(k.clone()).or_default();
            let v = matrix_value_string(v);
            if !values.contains(&v) {
                values.push(v);
            }
        }
    }
    let mut lines = Vec::new();
    for (key, want) in selectors {
        let one = [(key.clone(), want.clone())];
        if !filter_matrix(combos.to_vec(), &one).is_empty() {
            continue;
        }
        match axes.get(key) {
            None => {
                let names: Vec<&str> = axes.keys().map(String::as_str).collect();
                let lower = key.to_ascii_lowercase();
                let close = names
                    .iter()
                    .map(|n| (strsim::jaro_winkler(&lower, &n.to_ascii_lowercase()), *n))
                    .filter(|(score, n)| *score >= 0.8 || strsim::levenshtein(&lower, n) <= 2)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, n)| n);
                lines.push(match close {
                    Some(n) => format!("`{key}` is not an axis of the matrix; did you mean `{n}`?"),
                    None => format!("`{key}` is not an axis of the matrix"),
                });
            }
            Some(values) => lines.push(format!(
                "`{key}` is never `{want}`; its values are {}",
                values.join(", ")
            )),
        }
    }
    if lines.is_empty() {
        let all: Vec<String> = selectors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.push(format!(
            "no combination has {} together (include/exclude decide which combinations exist)",
            all.join(" and ")
        ));
    }
    if axes.is_empty() {
        lines.push("the job has no matrix: leave out --matrix".to_owned());
    } else {
        let shown: Vec<String> = axes
            .iter()
            .map(|(k, v)| format!("{k} = {}", v.join(", ")))
            .collect();
        lines.push(format!("the matrix: {}", shown.join("; ")));
    }
    lines
}

/// A `--matrix` argument that is not `key=value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid matrix selector `{0}`; write it as key=value, e.g. os=linux")]
pub struct MatrixSelectorError(pub String);

/// Parses one `--matrix key=value` argument (split at the first `=`).
pub fn parse_matrix_selector(arg: &str) -> Result<(String, String), MatrixSelectorError> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(MatrixSelectorError(arg.to_string())),
    }
}

/// The name a forge shows for one run of a job: the job's `name:` (or its
/// id), followed by the matrix values in parentheses, e.g. `build (linux,
/// 1.2)`. A `name:` with `${{ }}` is evaluated against the matrix (other
/// contexts read as empty) and gets no suffix, as it usually names the
/// values itself.
pub fn job_display_name(job_id: &str, job: &Job, combo: &Combination) -> String {
    let base = job.name.as_deref().unwrap_or(job_id);
    if base.contains("${{") {
        let mut ctx = Contexts::default();
        ctx.values.insert(
            "matrix".into(),
            Value::Object(combo.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        );
        return interpolate(base, &ctx).unwrap_or_else(|_| base.to_string());
    }
    if combo.is_empty() {
        return base.to_string();
    }
    let values: Vec<String> = combo.values().map(matrix_value_string).collect();
    format!("{base} ({})", values.join(", "))
}

//! `${{ }}` expressions: lexer, parser and evaluator (to be implemented).

pub use serde_json::Value;
use std::collections::BTreeMap;

/// The job status that `success()`, `failure()` and `cancelled()` look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobStatus {
    #[default]
    Success,
    Failure,
    Cancelled,
}

/// Everything an expression can see.
#[derive(Debug, Clone, Default)]
pub struct Contexts {
    /// Context name (`github`, `env`, `steps`, ...) to its value.
    pub values: BTreeMap<String, Value>,
    pub status: JobStatus,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} in expression `{source_text}` at offset {offset}")]
pub struct ExprError {
    pub message: String,
    pub source_text: String,
    pub offset: usize,
}

/// Parses and evaluates one expression (the text inside `${{ }}`, or a bare
/// `if:` condition).
pub fn evaluate(source: &str, ctx: &Contexts) -> Result<Value, ExprError> {
    let _ = ctx;
    Err(ExprError {
        message: "expressions are not implemented yet".into(),
        source_text: source.into(),
        offset: 0,
    })
}

/// Replaces every `${{ expr }}` in `template` with the string form of its value.
pub fn interpolate(template: &str, ctx: &Contexts) -> Result<String, ExprError> {
    if !template.contains("${{") {
        return Ok(template.to_string());
    }
    evaluate(template, ctx).map(|v| to_actions_string(&v))
}

/// Evaluates an `if:` condition: the expression may or may not be wrapped in
/// `${{ }}`; without a status function, `success() && (...)` is implied.
pub fn evaluate_condition(source: &str, ctx: &Contexts) -> Result<bool, ExprError> {
    evaluate(source, ctx).map(|v| truthy(&v))
}

/// Actions' truthiness: false, 0, -0, NaN, "" and null are falsy.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// Actions' string coercion, used for interpolation.
pub fn to_actions_string(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

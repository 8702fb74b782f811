//! `${{ }}` expressions, following GitHub Actions' documented semantics.
//!
//! - Literals: `null`, `true`/`false`, numbers (JSON forms plus `0xff`, `0o17`,
//!   `1e3`, `NaN`, `Infinity`), strings in single quotes with `''` for a quote.
//! - Operators, tightest first: `( )`, `[ ]`, `.`, `!`, `<` `<=` `>` `>=`,
//!   `==` `!=`, `&&`, `||`. `&&` and `||` return one of their operands.
//! - Property names, context names and function names are case-insensitive;
//!   a missing property is `null`; `*` filters (`steps.*.outcome`) give arrays.
//! - Loose comparisons: values of different kinds are compared as numbers
//!   (null → 0, booleans → 1/0, strings parsed or NaN); strings compare
//!   case-insensitively; NaN equals nothing; arrays and objects are equal only
//!   when they are the same instance taken from the contexts (so
//!   `github.event == github.event` is true, `fromJSON('[]') == fromJSON('[]')`
//!   is false), and never equal a value of another kind.
//!
//! The lexer, parser, evaluator and functions live in submodules; this module
//! is the public surface.

mod eval;
mod functions;
mod lexer;
mod parser;
mod value;

pub use parser::KNOWN_CONTEXTS;
pub use serde_json::Value;
pub use value::format_number;

use eval::Evaluator;
use parser::Node;
use std::cell::RefCell;
use std::collections::BTreeMap;
use value::Val;

/// Where the evaluator records the arguments of a `hashFiles` call that has
/// no result in [`Contexts::hash_files`].
pub(crate) type PendingHashFiles = RefCell<Option<Vec<String>>>;

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
    /// Context name (`github`, `env`, `steps`, ...) to its value. A known
    /// context that is absent here reads as an empty object. Extra names
    /// present here are accepted as contexts too.
    pub values: BTreeMap<String, Value>,
    pub status: JobStatus,
    /// Results of `hashFiles(...)`, keyed by the call's evaluated arguments.
    /// The files live in the guest, so the caller computes them first (see
    /// [`pending_hash_files`]); a call without a result here is an error.
    pub hash_files: BTreeMap<Vec<String>, String>,
}

/// A parse or evaluation error in one expression.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} at position {} in expression `{source_text}`", .offset + 1)]
pub struct ExprError {
    /// What is wrong, e.g. "Unexpected token ')'".
    pub message: String,
    /// The expression text (without `${{ }}`).
    pub source_text: String,
    /// 0-based character offset into `source_text`; shown 1-based.
    pub offset: usize,
}

/// A piece of a template: literal text or the text of one `${{ }}`.
#[derive(Debug, Clone, PartialEq)]
enum Segment<'t> {
    Text(&'t str),
    Expr(&'t str),
}

/// Splits a template into text and `${{ }}` expressions. A `}}` inside a
/// single-quoted string literal does not end the expression.
fn segments(template: &str) -> Result<Vec<Segment<'_>>, ExprError> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${{") {
        if start > 0 {
            out.push(Segment::Text(&rest[..start]));
        }
        let body = &rest[start + 3..];
        let mut in_string = false;
        let mut end = None;
        let bytes = body.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\'' => in_string = !in_string,
                b'}' if !in_string && bytes.get(i + 1) == Some(&b'}') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let Some(end) = end else {
            return Err(ExprError {
                message: "Missing closing '}}' for '${{'".into(),
                source_text: body.trim().to_string(),
                offset: body.trim().chars().count(),
            });
        };
        out.push(Segment::Expr(body[..end].trim()));
        rest = &body[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Segment::Text(rest));
    }
    Ok(out)
}

/// If `source` is exactly one `${{ expr }}` (whitespace around allowed),
/// returns `expr`.
fn single_expression(source: &str) -> Result<Option<&str>, ExprError> {
    let trimmed = source.trim();
    if !trimmed.starts_with("${{") {
        return Ok(None);
    }
    Ok(match segments(trimmed)?.as_slice() {
        [Segment::Expr(e)] => Some(e),
        _ => None,
    })
}

fn parse(source: &str, ctx: &Contexts) -> Result<Node, ExprError> {
    parser::parse(source, ctx.values.keys().map(String::as_str))
}

fn eval_node<'a>(
    node: &Node,
    source: &'a str,
    ctx: &'a Contexts,
    pending: Option<&'a PendingHashFiles>,
) -> Result<Val<'a>, ExprError> {
    Evaluator {
        ctx,
        source,
        pending,
    }
    .eval(node)
}

/// Parses `source` without evaluating it, to report syntax errors, unknown
/// functions and unknown contexts early. Accepts a bare expression or a
/// template with `${{ }}` parts.
pub fn check(source: &str) -> Result<(), ExprError> {
    let ctx = Contexts::default();
    if source.contains("${{") {
        for seg in segments(source)? {
            if let Segment::Expr(e) = seg {
                parse(e, &ctx)?;
            }
        }
        Ok(())
    } else {
        parse(source, &ctx).map(drop)
    }
}

/// Parses and evaluates one expression (the text inside `${{ }}`, or a bare
/// `if:` condition). A source that is exactly one `${{ expr }}` is unwrapped.
///
/// NaN and infinities have no JSON form and come back as `null`;
/// [`interpolate`] and [`evaluate_condition`] handle them exactly.
pub fn evaluate(source: &str, ctx: &Contexts) -> Result<Value, ExprError> {
    let source = single_expression(source)?.unwrap_or(source);
    let node = parse(source, ctx)?;
    Ok(eval_node(&node, source, ctx, None)?.to_json())
}

/// Replaces every `${{ expr }}` in `template` with the string form of its
/// value ([`to_actions_string`]: null is empty, arrays and objects are JSON).
pub fn interpolate(template: &str, ctx: &Contexts) -> Result<String, ExprError> {
    interpolate_with(template, ctx, None)
}

fn interpolate_with(
    template: &str,
    ctx: &Contexts,
    pending: Option<&PendingHashFiles>,
) -> Result<String, ExprError> {
    if !template.contains("${{") {
        return Ok(template.to_string());
    }
    let mut out = String::new();
    for seg in segments(template)? {
        match seg {
            Segment::Text(t) => out.push_str(t),
            Segment::Expr(e) => {
                let node = parse(e, ctx)?;
                out.push_str(&eval_node(&node, e, ctx, pending)?.to_display_string());
            }
        }
    }
    Ok(out)
}

/// Evaluates a workflow value that may hold expressions, keeping the type
/// when the whole value is one `${{ expr }}` (`continue-on-error:
/// ${{ matrix.experimental }}` gives a boolean); otherwise interpolates and
/// returns a string.
pub fn evaluate_template(template: &str, ctx: &Contexts) -> Result<Value, ExprError> {
    match single_expression(template)? {
        Some(e) => evaluate(e, ctx),
        None => interpolate(template, ctx).map(Value::String),
    }
}

/// Evaluates an `if:` condition.
///
/// The condition may be bare or wrapped in `${{ }}`. When it mixes text and
/// `${{ }}` parts it is interpolated and the resulting string is tested (so
/// any non-empty text is true, as on GitHub). An empty condition means
/// `success()`. Without a status function (`success()`, `failure()`,
/// `always()`, `cancelled()`) the condition is `success() && (condition)`.
pub fn evaluate_condition(source: &str, ctx: &Contexts) -> Result<bool, ExprError> {
    condition_with(source, ctx, None)
}

fn condition_with(
    source: &str,
    ctx: &Contexts,
    pending: Option<&PendingHashFiles>,
) -> Result<bool, ExprError> {
    let trimmed = source.trim();
    let succeeded = ctx.status == JobStatus::Success;
    if trimmed.is_empty() {
        return Ok(succeeded);
    }
    let expr = match single_expression(trimmed)? {
        Some(e) => e,
        None if trimmed.contains("${{") => {
            let mut has_status = false;
            for seg in segments(trimmed)? {
                if let Segment::Expr(e) = seg {
                    has_status |= parse(e, ctx)?.has_status_function();
                }
            }
            if !has_status && !succeeded {
                return Ok(false);
            }
            return Ok(!interpolate_with(trimmed, ctx, pending)?.is_empty());
        }
        None => trimmed,
    };
    let node = parse(expr, ctx)?;
    if !node.has_status_function() && !succeeded {
        return Ok(false);
    }
    Ok(eval_node(&node, expr, ctx, pending)?.truthy())
}

/// The next `hashFiles(...)` call that evaluating `source` reaches and that
/// has no result in `ctx.hash_files`: its evaluated arguments. `source` is a
/// template (`${{ }}` parts, as for [`interpolate`] and
/// [`evaluate_template`]) or, when `condition` is true, an `if:` condition
/// (as for [`evaluate_condition`]). Calls that evaluation does not reach
/// (`false && hashFiles(...)`, a skipped condition) are not reported.
///
/// A caller computes the result, inserts it into `ctx.hash_files` and asks
/// again until this returns `None`; then evaluating `source` needs no more
/// files. Syntax and other evaluation errors give `None` here and are
/// reported by the evaluation itself.
pub fn pending_hash_files(source: &str, condition: bool, ctx: &Contexts) -> Option<Vec<String>> {
    if !source.to_ascii_lowercase().contains("hashfiles") {
        return None;
    }
    let pending = PendingHashFiles::default();
    let _ = if condition {
        condition_with(source, ctx, Some(&pending)).map(drop)
    } else {
        interpolate_with(source, ctx, Some(&pending)).map(drop)
    };
    pending.into_inner()
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

/// Actions' string coercion, used for interpolation: null is empty, numbers
/// print like Actions (`1`, `1.5`, `1E+20`), arrays and objects are indented
/// JSON.
pub fn to_actions_string(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Number(n) => format_number(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;

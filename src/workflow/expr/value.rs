//! The evaluator's value type and Actions' coercion rules.
//!
//! Arrays and objects taken from the contexts are borrowed, so equality of two
//! arrays or objects can follow Actions: equal only when they are the same
//! instance (`github.event == github.event` is true, `fromJSON('[]') ==
//! fromJSON('[]')` is false). Arrays and objects built during evaluation
//! (`fromJSON`, `*` filters) are fresh instances, equal to nothing.

use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::rc::Rc;

/// A value during evaluation.
#[derive(Debug, Clone)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    /// Numbers are doubles; NaN and infinities are allowed here.
    Num(f64),
    Str(String),
    /// An array or object borrowed from the contexts.
    Ref(&'a Value),
    /// An array or object built during evaluation (`fromJSON`).
    Owned(Rc<Value>),
    /// The result of a `*` filter: an array whose further property accesses
    /// apply to every element.
    Filtered(Vec<Val<'a>>),
}

/// Which of Actions' value kinds a value has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValKind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl<'a> Val<'a> {
    /// Wraps a borrowed JSON value; primitives are copied.
    pub(crate) fn from_ref(v: &'a Value) -> Val<'a> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => Val::Num(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Val::Str(s.clone()),
            Value::Array(_) | Value::Object(_) => Val::Ref(v),
        }
    }

    /// Wraps an owned JSON value.
    pub(crate) fn from_owned(v: Value) -> Val<'a> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(b),
            Value::Number(n) => Val::Num(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Val::Str(s),
            other => Val::Owned(Rc::new(other)),
        }
    }

    pub(crate) fn kind(&self) -> ValKind {
        match self {
            Val::Null => ValKind::Null,
            Val::Bool(_) => ValKind::Bool,
            Val::Num(_) => ValKind::Number,
            Val::Str(_) => ValKind::String,
            Val::Filtered(_) => ValKind::Array,
            Val::Ref(v) => json_kind(v),
            Val::Owned(v) => json_kind(v),
        }
    }

    pub(crate) fn is_primitive(&self) -> bool {
        !matches!(self.kind(), ValKind::Array | ValKind::Object)
    }

    /// Actions' truthiness: false, 0, -0, NaN, '' and null are falsy;
    /// arrays and objects are truthy.
    pub(crate) fn truthy(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Bool(b) => *b,
            Val::Num(n) => *n != 0.0 && !n.is_nan(),
            Val::Str(s) => !s.is_empty(),
            _ => true,
        }
    }

    /// Number coercion: null → 0, booleans → 1/0, strings parsed as a number
    /// (empty or blank → 0, otherwise NaN when not a number), arrays and
    /// objects → NaN.
    pub(crate) fn to_number(&self) -> f64 {
        match self {
            Val::Null => 0.0,
            Val::Bool(b) => f64::from(u8::from(*b)),
            Val::Num(n) => *n,
            Val::Str(s) => string_to_number(s),
            _ => f64::NAN,
        }
    }

    /// String coercion (interpolation, `format`, `join`): arrays and objects
    /// become indented JSON.
    pub(crate) fn to_display_string(&self) -> String {
        match self {
            Val::Null => String::new(),
            Val::Bool(b) => b.to_string(),
            Val::Num(n) => format_number(*n),
            Val::Str(s) => s.clone(),
            other => serde_json::to_string_pretty(&other.to_json()).unwrap_or_default(),
        }
    }

    /// Converts to JSON. NaN and infinities have no JSON form and become null.
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(n) => number_to_json(*n),
            Val::Str(s) => Value::String(s.clone()),
            Val::Ref(v) => (*v).clone(),
            Val::Owned(v) => (**v).clone(),
            Val::Filtered(items) => Value::Array(items.iter().map(Val::to_json).collect()),
        }
    }

    /// Elements of an array (including filter results), else `None`.
    pub(crate) fn array_items(&self) -> Option<Vec<Val<'a>>> {
        match self {
            Val::Filtered(items) => Some(items.clone()),
            Val::Ref(Value::Array(a)) => Some(a.iter().map(Val::from_ref).collect()),
            Val::Owned(v) => match &**v {
                Value::Array(a) => Some(a.iter().cloned().map(Val::from_owned).collect()),
                _ => None,
            },
            _ => None,
        }
    }
}

fn json_kind(v: &Value) -> ValKind {
    match v {
        Value::Null => ValKind::Null,
        Value::Bool(_) => ValKind::Bool,
        Value::Number(_) => ValKind::Number,
        Value::String(_) => ValKind::String,
        Value::Array(_) => ValKind::Array,
        Value::Object(_) => ValKind::Object,
    }
}

/// Converts a double to JSON, as an integer when it is one.
pub(crate) fn number_to_json(n: f64) -> Value {
    // 2^53: beyond it, integral doubles are not exact integers any more.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() <= EXACT {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// Parses a string as Actions does for comparisons.
pub(crate) fn string_to_number(s: &str) -> f64 {
    let t = s.trim();
    if t.is_empty() {
        return 0.0;
    }
    if t == "NaN" {
        return f64::NAN;
    }
    super::lexer::parse_number_literal(t).unwrap_or(f64::NAN)
}

/// Formats a number the way Actions prints it: integers without a fraction,
/// otherwise up to 15 significant digits, exponent form outside 1e-5..1e15.
pub fn format_number(n: f64) -> String {
    if n.is_nan() {
        return "NaN".into();
    }
    if n.is_infinite() {
        return if n > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if n == 0.0 {
        return "0".into();
    }
    if n.fract() == 0.0 && n.abs() < 1e15 {
        return format!("{}", n as i64);
    }
    let sci = format!("{n:.14e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return n.to_string();
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-5..15).contains(&exp) {
        let rounded: f64 = sci.parse().unwrap_or(n);
        return rounded.to_string();
    }
    let mantissa = if mantissa.contains('.') {
        mantissa.trim_end_matches('0').trim_end_matches('.')
    } else {
        mantissa
    };
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}E{sign}{:02}", exp.abs())
}

/// Case-insensitive string comparison (ordinal on upper-cased text).
pub(crate) fn compare_ignore_case(a: &str, b: &str) -> Ordering {
    a.chars()
        .flat_map(char::to_uppercase)
        .cmp(b.chars().flat_map(char::to_uppercase))
}

/// Whether two values are the same array/object instance.
fn same_instance(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Ref(x), Val::Ref(y)) => std::ptr::eq(*x, *y),
        (Val::Owned(x), Val::Owned(y)) => Rc::ptr_eq(x, y),
        _ => false,
    }
}

/// Actions' loose equality (`==`).
///
/// Same kinds: null equals null, numbers compare numerically (NaN equals
/// nothing), strings compare case-insensitively, arrays and objects are
/// equal only when they are the same instance. Different kinds: an array or
/// object equals nothing; otherwise both sides are converted to numbers.
pub(crate) fn loose_equal(a: &Val, b: &Val) -> bool {
    match (a.kind(), b.kind()) {
        (ValKind::Null, ValKind::Null) => true,
        (ValKind::String, ValKind::String) => {
            compare_ignore_case(&a.to_display_string(), &b.to_display_string()) == Ordering::Equal
        }
        (ValKind::Array, ValKind::Array) | (ValKind::Object, ValKind::Object) => {
            same_instance(a, b)
        }
        (ka, kb) if ka == kb => a.to_number() == b.to_number(),
        _ if !a.is_primitive() || !b.is_primitive() => false,
        _ => a.to_number() == b.to_number(),
    }
}

/// Actions' ordering for `<`, `<=`, `>`, `>=`: strings compare
/// case-insensitively, everything else numerically; `None` when the values
/// cannot be ordered (NaN, arrays, objects), making every comparison false.
pub(crate) fn loose_compare(a: &Val, b: &Val) -> Option<Ordering> {
    if !a.is_primitive() || !b.is_primitive() {
        return None;
    }
    if let (Val::Str(x), Val::Str(y)) = (a, b) {
        return Some(compare_ignore_case(x, y));
    }
    a.to_number().partial_cmp(&b.to_number())
}

/// An empty object, for a known context that the caller did not supply.
pub(crate) fn empty_object<'a>() -> Val<'a> {
    Val::Owned(Rc::new(Value::Object(Map::new())))
}

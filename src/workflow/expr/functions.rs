//! Built-in functions. Names are matched case-insensitively.

use super::value::{Val, loose_equal};
use serde_json::Value;

/// A built-in function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Contains,
    StartsWith,
    EndsWith,
    Format,
    Join,
    ToJson,
    FromJson,
    Success,
    Failure,
    Always,
    Cancelled,
    HashFiles,
}

impl Func {
    /// Finds a function by name; the error message says what is wrong.
    pub(crate) fn lookup(name: &str) -> Result<Func, String> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "contains" => Func::Contains,
            "startswith" => Func::StartsWith,
            "endswith" => Func::EndsWith,
            "format" => Func::Format,
            "join" => Func::Join,
            "tojson" => Func::ToJson,
            "fromjson" => Func::FromJson,
            "success" => Func::Success,
            "failure" => Func::Failure,
            "always" => Func::Always,
            "cancelled" => Func::Cancelled,
            "hashfiles" => Func::HashFiles,
            _ => {
                return Err(format!(
                    "Unrecognized function '{name}'; available are contains, startsWith, \
                     endsWith, format, join, toJSON, fromJSON, hashFiles, success, failure, always, \
                     cancelled"
                ));
            }
        })
    }

    /// The documented spelling.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Func::Contains => "contains",
            Func::StartsWith => "startsWith",
            Func::EndsWith => "endsWith",
            Func::Format => "format",
            Func::Join => "join",
            Func::ToJson => "toJSON",
            Func::FromJson => "fromJSON",
            Func::Success => "success",
            Func::Failure => "failure",
            Func::Always => "always",
            Func::Cancelled => "cancelled",
            Func::HashFiles => "hashFiles",
        }
    }

    /// Whether this is one of the job status functions.
    pub(crate) fn is_status(self) -> bool {
        matches!(
            self,
            Func::Success | Func::Failure | Func::Always | Func::Cancelled
        )
    }

    fn arity(self) -> (usize, usize) {
        match self {
            Func::Contains | Func::StartsWith | Func::EndsWith => (2, 2),
            Func::Format => (1, usize::MAX),
            Func::Join => (1, 2),
            Func::ToJson | Func::FromJson => (1, 1),
            Func::Success | Func::Failure | Func::Always | Func::Cancelled => (0, 0),
            Func::HashFiles => (1, crate::workflow::hashfiles::MAX_ARGS),
        }
    }

    /// Checks the number of arguments.
    pub(crate) fn check_arity(self, n: usize) -> Result<(), String> {
        let (min, max) = self.arity();
        if n >= min && n <= max {
            return Ok(());
        }
        let expected = match (min, max) {
            (a, b) if a == b => format!("exactly {a}"),
            (a, usize::MAX) => format!("at least {a}"),
            (a, b) => format!("{a} to {b}"),
        };
        let plural = if min == 1 && max == 1 { "" } else { "s" };
        Err(format!(
            "Function '{}' takes {expected} argument{plural}, got {n}",
            self.name()
        ))
    }
}

/// `contains(search, item)`: substring test (case-insensitive) when `search`
/// is a string or other primitive, membership (loose equality) when it is an
/// array; false for objects.
pub(crate) fn contains(search: &Val, item: &Val) -> bool {
    if let Some(items) = search.array_items() {
        return items.iter().any(|x| loose_equal(x, item));
    }
    if !search.is_primitive() || !item.is_primitive() {
        return false;
    }
    upper(&search.to_display_string()).contains(&upper(&item.to_display_string()))
}

/// `startsWith` / `endsWith`: case-insensitive; false unless both are primitives.
pub(crate) fn affix(s: &Val, affix: &Val, starts: bool) -> bool {
    if !s.is_primitive() || !affix.is_primitive() {
        return false;
    }
    let (s, a) = (
        upper(&s.to_display_string()),
        upper(&affix.to_display_string()),
    );
    if starts {
        s.starts_with(&a)
    } else {
        s.ends_with(&a)
    }
}

fn upper(s: &str) -> String {
    s.to_uppercase()
}

/// `format(fmt, args...)`: `{N}` is replaced by argument N, `{{` and `}}`
/// are literal braces.
pub(crate) fn format(fmt: &str, args: &[Val]) -> Result<String, String> {
    let chars: Vec<char> = fmt.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '{' if chars.get(i + 1) == Some(&'{') => {
                out.push('{');
                i += 2;
            }
            '}' if chars.get(i + 1) == Some(&'}') => {
                out.push('}');
                i += 2;
            }
            '{' => {
                let start = i;
                let mut j = i + 1;
                while j < chars.len() && chars[j].is_ascii_digit() {
                    j += 1;
                }
                if j == i + 1 || chars.get(j) != Some(&'}') {
                    return Err(format!(
                        "format: invalid placeholder at index {start} of '{fmt}'; use {{N}} \
                         for argument N and {{{{ }}}} for literal braces"
                    ));
                }
                let digits: String = chars[i + 1..j].iter().collect();
                let n: usize = digits.parse().unwrap_or(usize::MAX);
                let arg = args.get(n).ok_or_else(|| {
                    format!(
                        "format: '{{{digits}}}' refers to argument {digits}, but only {} \
                         argument{} follow the format string",
                        args.len(),
                        if args.len() == 1 { "" } else { "s" }
                    )
                })?;
                out.push_str(&arg.to_display_string());
                i = j + 1;
            }
            '}' => {
                return Err(format!(
                    "format: unmatched '}}' at index {i} of '{fmt}'; write '}}}}' for a literal brace"
                ));
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// `join(array, sep)`: elements' string forms separated by `sep` (default
/// `,`). A primitive is returned as its string; an object gives ''.
/// Array or object elements contribute ''.
pub(crate) fn join(v: &Val, sep: Option<&Val>) -> String {
    let sep = sep.map_or_else(|| ",".to_string(), Val::to_display_string);
    if let Some(items) = v.array_items() {
        return items
            .iter()
            .map(|x| {
                if x.is_primitive() {
                    x.to_display_string()
                } else {
                    String::new()
                }
            })
            .collect::<Vec<_>>()
            .join(&sep);
    }
    if v.is_primitive() {
        v.to_display_string()
    } else {
        String::new()
    }
}

/// `toJSON(value)`: indented with two spaces.
pub(crate) fn to_json(v: &Val) -> String {
    serde_json::to_string_pretty(&v.to_json()).unwrap_or_default()
}

/// `fromJSON(text)`.
pub(crate) fn from_json<'a>(v: &Val) -> Result<Val<'a>, String> {
    let text = v.to_display_string();
    serde_json::from_str::<Value>(text.trim())
        .map(Val::from_owned)
        .map_err(|e| format!("fromJSON: the argument is not valid JSON ({e})"))
}

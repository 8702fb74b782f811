//! Text → [`RawConfig`]: TOML syntax, unknown keys, value types.
//!
//! serde stops at the first error, so the document is deserialized in a loop:
//! each error is recorded with its key path and the offending key is removed
//! (its default then applies), until the rest deserializes. Unknown keys are
//! found first by walking the spanned TOML tree against the field names of
//! the raw structs.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{ErrorKind, Position};
use super::raw::{
    RawActions, RawCache, RawConfig, RawDaemon, RawDebugSsh, RawForge, RawForgeDebugSsh, RawImage,
    RawQemu, names_of,
};
use super::validate::Ctx;

/// The sections of the file, as (how a section is named in messages, its keys).
pub(crate) fn sections() -> [(&'static str, &'static [&'static str]); 9] {
    [
        ("the top level", names_of::<RawConfig>()),
        ("[daemon]", names_of::<RawDaemon>()),
        ("[qemu]", names_of::<RawQemu>()),
        ("[images.<name>]", names_of::<RawImage>()),
        ("[forges.<name>]", names_of::<RawForge>()),
        ("[actions]", names_of::<RawActions>()),
        ("[cache]", names_of::<RawCache>()),
        ("[debug_ssh]", names_of::<RawDebugSsh>()),
        ("[forges.<name>.debug_ssh]", names_of::<RawForgeDebugSsh>()),
    ]
}

/// Parse `ctx.text` into the raw structs, recording every problem in `ctx`.
/// Returns `None` when the text is not TOML or a problem has no key to blame.
pub(crate) fn parse_raw(ctx: &mut Ctx<'_>) -> Option<RawConfig> {
    let text = ctx.text;
    let (mut root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // Recovery can report one mistake several times: keep one per line.
        let mut lines = std::collections::BTreeSet::new();
        for e in syntax {
            let line = e.span().map(|s| Position::of_offset(text, s.start).line);
            if !lines.insert(line) {
                continue;
            }
            let message = first_line(e.message());
            ctx.push(
                e.span(),
                None,
                ErrorKind::Syntax,
                format!("invalid TOML: {message}"),
                Some("fix the syntax (see https://toml.io)".to_owned()),
            );
        }
        return None;
    }
    remove_unknown_keys(root.get_mut(), ctx);

    // Each round removes one key, so this ends.
    loop {
        let de = toml::de::Deserializer::from(root.clone());
        let err = match RawConfig::deserialize(de) {
            Ok(raw) => return Some(raw),
            Err(e) => e,
        };
        let Some(span) = err.span() else {
            ctx.push(
                None,
                None,
                ErrorKind::InvalidValue,
                first_line(err.message()),
                None,
            );
            return None;
        };
        let Some(path) = locate(root.get_ref(), &span) else {
            ctx.push(
                Some(span),
                None,
                ErrorKind::InvalidValue,
                first_line(err.message()),
                None,
            );
            return None;
        };
        let found = value_at(root.get_ref(), &path).map_or("value", |v| match v.get_ref() {
            // The error may be about one element of an array.
            DeValue::Array(_) if v.span() == span => "array",
            DeValue::Array(items) => items
                .iter()
                .find(|i| i.span().start <= span.start && span.end <= i.span().end)
                .map_or("array", |i| i.get_ref().type_str()),
            other => other.type_str(),
        });
        let last = path.last().map_or("", String::as_str);
        let (message, fix) = humanize(err.message(), found, enum_values(last), &span, text);
        ctx.push(
            Some(span),
            Some(path.join(".")),
            ErrorKind::InvalidValue,
            message,
            fix,
        );
        if !remove_at(root.get_mut(), &path) {
            return None;
        }
    }
}

fn first_line(s: &str) -> String {
    s.trim().lines().next().unwrap_or("").trim().to_owned()
}

/// Report and drop every key that its section does not know.
fn remove_unknown_keys(root: &mut DeTable<'_>, ctx: &mut Ctx<'_>) {
    let [
        top,
        daemon,
        qemu,
        image,
        forge,
        actions,
        cache,
        debug,
        forge_debug,
    ] = sections();
    check_table(root, "", top.1, 0, ctx);
    if let Some(DeValue::Table(t)) = root.get_mut("daemon").map(|v| v.get_mut()) {
        check_table(t, "daemon.", daemon.1, 1, ctx);
    }
    if let Some(DeValue::Table(t)) = root.get_mut("qemu").map(|v| v.get_mut()) {
        check_table(t, "qemu.", qemu.1, 2, ctx);
    }
    if let Some(DeValue::Table(t)) = root.get_mut("actions").map(|v| v.get_mut()) {
        check_table(t, "actions.", actions.1, 5, ctx);
    }
    if let Some(DeValue::Table(t)) = root.get_mut("cache").map(|v| v.get_mut()) {
        check_table(t, "cache.", cache.1, 6, ctx);
    }
    if let Some(DeValue::Table(t)) = root.get_mut("debug_ssh").map(|v| v.get_mut()) {
        check_table(t, "debug_ssh.", debug.1, 7, ctx);
    }
    if let Some(DeValue::Table(images)) = root.get_mut("images").map(|v| v.get_mut()) {
        for (name, value) in images.iter_mut() {
            if let DeValue::Table(t) = value.get_mut() {
                let prefix = format!("images.{}.", name.get_ref());
                check_table(t, &prefix, image.1, 3, ctx);
            }
        }
    }
    if let Some(DeValue::Table(forges)) = root.get_mut("forges").map(|v| v.get_mut()) {
        for (name, value) in forges.iter_mut() {
            if let DeValue::Table(t) = value.get_mut() {
                let prefix = format!("forges.{}.", name.get_ref());
                check_table(t, &prefix, forge.1, 4, ctx);
                if let Some(DeValue::Table(d)) = t.get_mut("debug_ssh").map(|v| v.get_mut()) {
                    check_table(d, &format!("{prefix}debug_ssh."), forge_debug.1, 8, ctx);
                }
            }
        }
    }
}

fn check_table(
    table: &mut DeTable<'_>,
    prefix: &str,
    known: &[&str],
    section: usize,
    ctx: &mut Ctx<'_>,
) {
    let unknown: Vec<(String, Range<usize>)> = table
        .keys()
        .filter(|k| !known.contains(&k.get_ref().as_ref()))
        .map(|k| (k.get_ref().to_string(), k.span()))
        .collect();
    for (key, span) in unknown {
        table.remove(key.as_str());
        let fix = unknown_key_fix(&key, known, section);
        ctx.push(
            Some(span),
            Some(format!("{prefix}{key}")),
            ErrorKind::UnknownKey,
            "unknown key".to_owned(),
            Some(fix),
        );
    }
}

/// The fix for an unknown key: the closest known key of its section, or the
/// section the key belongs to, or the list of known keys.
pub(crate) fn unknown_key_fix(key: &str, known: &[&str], section: usize) -> String {
    let all = sections();
    let here = all.get(section).map_or("", |s| s.0);
    // Where else the key is known; of several (`enabled` is in [cache] and
    // [forges.<name>.debug_ssh]), the section related to this one.
    let homes: Vec<&str> = all
        .iter()
        .enumerate()
        .filter(|(i, (_, keys))| *i != section && keys.contains(&key))
        .map(|(_, (name, _))| *name)
        .collect();
    // `[forges.<name>.debug_ssh]` → ["forges", "debug_ssh"].
    let parts = |s: &'static str| -> Vec<&'static str> {
        s.trim_matches(['[', ']'])
            .split('.')
            .filter(|p| *p != "<name>")
            .collect()
    };
    let related = |name: &'static str| parts(here).iter().any(|p| parts(name).contains(p));
    if let Some(name) = homes
        .iter()
        .copied()
        .find(|n| related(n))
        .or(homes.first().copied())
    {
        return format!("\"{key}\" belongs in {name}; move it there");
    }
    if let Some(best) = closest(key, known) {
        return format!("did you mean \"{best}\"?");
    }
    let list: Vec<String> = known.iter().map(|k| format!("\"{k}\"")).collect();
    format!("known keys here are {}", list.join(", "))
}

/// The most similar candidate, if any is close enough to be a likely typo.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(&word, c), *c))
        .filter(|(score, c)| *score >= 0.8 || strsim::levenshtein(&word, c) <= 2)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The key path of the deepest value whose span holds `span`.
fn locate(table: &DeTable<'_>, span: &Range<usize>) -> Option<Vec<String>> {
    let mut best: Option<Vec<String>> = None;
    for (k, v) in table.iter() {
        let vs = v.span();
        let holds = vs.start <= span.start && span.end <= vs.end;
        let deeper = match v.get_ref() {
            DeValue::Table(t) => locate(t, span),
            _ => None,
        };
        let found = match deeper {
            Some(mut rest) => {
                rest.insert(0, k.get_ref().to_string());
                Some(rest)
            }
            None if holds => Some(vec![k.get_ref().to_string()]),
            None => None,
        };
        if let Some(f) = found
            && best.as_ref().is_none_or(|b| f.len() > b.len())
        {
            best = Some(f);
        }
    }
    best
}

fn value_at<'t, 'i>(table: &'t DeTable<'i>, path: &[String]) -> Option<&'t Spanned<DeValue<'i>>> {
    let (first, rest) = path.split_first()?;
    let v = table.get(first.as_str())?;
    if rest.is_empty() {
        return Some(v);
    }
    match v.get_ref() {
        DeValue::Table(t) => value_at(t, rest),
        _ => None,
    }
}

fn remove_at(table: &mut DeTable<'_>, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last.as_str()).is_some(),
        [first, rest @ ..] => match table.get_mut(first.as_str()).map(|v| v.get_mut()) {
            Some(DeValue::Table(t)) => remove_at(t, rest),
            _ => false,
        },
    }
}

/// Turn a serde message into `(message, fix)` in the house style.
fn humanize(
    message: &str,
    found: &str,
    allowed: Option<&[&str]>,
    span: &Range<usize>,
    text: &str,
) -> (String, Option<String>) {
    let message = first_line(message);
    let snippet = text.get(span.clone()).unwrap_or("").trim();
    let article = if found.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    let shown = if snippet.is_empty() || snippet.len() > 40 || snippet.contains('\n') {
        format!("{article} {found}")
    } else {
        format!("{snippet} ({article} {found})")
    };
    if let Some(allowed) = allowed
        && !message.starts_with("unknown variant")
    {
        let quoted: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        return (
            format!("expected a string, found {shown}"),
            Some(format!("use one of {}", quoted.join(", "))),
        );
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (value, expected) = rest.split_once("`, expected ").unwrap_or((rest, ""));
        let allowed: Vec<&str> = expected
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s)
            .collect();
        let quoted: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        let mut fix = format!("use one of {}", quoted.join(", "));
        if let Some(best) = closest(value, &allowed) {
            fix = format!("did you mean \"{best}\"? {fix}");
        }
        return (format!("\"{value}\" is not allowed"), Some(fix));
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let expected = rest.split_once(", expected ").map_or("", |(_, e)| e);
        let (want, example) = describe_expected(expected);
        if want == "an integer" && found == "integer" {
            return (
                format!("{snippet} is too large"),
                Some("use a much smaller number".to_owned()),
            );
        }
        return (
            format!("expected {want}, found {shown}"),
            Some(format!("write {want}{example}")),
        );
    }
    if message.starts_with("invalid value: integer") {
        return (message, Some("use a smaller number".to_owned()));
    }
    (message, None)
}

/// The allowed values of an enum-valued key, by the key's name.
fn enum_values(key: &str) -> Option<&'static [&'static str]> {
    use super::{AccelChoice, Firmware, ForgeKind, GuestOs, ImageFormat, SeedKind};
    Some(match key {
        "kind" => names_of::<ForgeKind>(),
        "accel" => names_of::<AccelChoice>(),
        "format" => names_of::<ImageFormat>(),
        "os" => names_of::<GuestOs>(),
        "firmware" => names_of::<Firmware>(),
        "seed" => names_of::<SeedKind>(),
        _ => return None,
    })
}

/// serde's name of an expected type, in words a config author knows, and
/// an example to append to the fix.
fn describe_expected(expected: &str) -> (String, &'static str) {
    let name = match expected {
        "i64" | "u32" | "u64" | "i32" => "an integer",
        "a string" | "path string" => "a string",
        "a sequence" => return ("an array of strings".to_owned(), ", e.g. [\"a\", \"b\"]"),
        e if e.starts_with("struct ") || e == "a map" => "a table",
        e if e.starts_with("enum ") || e.starts_with("string or") => "a string",
        e => e,
    };
    (name.to_owned(), "")
}

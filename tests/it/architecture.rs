//! The module map of `docs/explanation/architecture.md`, enforced: which
//! top-level modules of `src/` may name which. A `crate::` path in code (not
//! in comments, not in a `#[cfg(test)]` module at the end of a file) that
//! breaks a rule fails this test with the file and line, so an upward import
//! is caught when it is written rather than when the next forge or step kind
//! needs the seam.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules that each module must not name. A name with `::` forbids
/// that path and everything below it (`forge::forgejo` allows the port in
/// `forge` but not the Forgejo adapter).
const RULES: &[(&str, &[&str])] = &[
    // The lower floors: each wraps one boundary and knows nothing above it.
    ("civil", UPPER),
    ("human", UPPER),
    ("secret", UPPER),
    ("errors", UPPER),
    ("events", UPPER),
    ("metrics", UPPER),
    ("config", UPPER),
    ("workflow", UPPER),
    ("vm", UPPER),
    ("ssh", UPPER),
    ("guest", UPPER),
    ("store", UPPER),
    // Actions on the host: references, the fetch policy, the cache.
    ("actions", UPPER),
    // The cache service jobs reach from their guests (knows scopes, not jobs).
    ("cache_service", UPPER),
    // Start-up shared by the commands: the configuration and the accelerator
    // (with the KVM failure a previous job remembered).
    ("startup", UPPER),
    // The job's semantics: steps over any guest session.
    (
        "executor",
        &["job::run", "forge", "daemon", "cli", "bench", "testing"],
    ),
    // Debug SSH into failed jobs' VMs: the held VMs and the gateway; it
    // knows guests and keys, not jobs, forges or how jobs run.
    (
        "debug",
        &[
            "executor", "job", "forge", "daemon", "cli", "bench", "testing",
        ],
    ),
    // The neutral middle shared by `exec`, `run` and `bench`.
    (
        "job",
        &["warm", "forge", "daemon", "cli", "bench", "testing"],
    ),
    // Warm starts: pools of ready guests and snapshot templates; they boot
    // guests through `job`, and know no forge, daemon or executor.
    (
        "warm",
        &[
            "executor", "forge", "daemon", "debug", "cli", "bench", "testing",
        ],
    ),
    // Forges: the port and its adapters know jobs, not how they run or are kept.
    (
        "forge",
        &["executor", "store", "daemon", "cli", "bench", "testing"],
    ),
    // The daemon sees forges only through the port.
    ("daemon", &["forge::forgejo", "cli", "bench", "testing"]),
    // Benchmarks and test support sit beside the product, below the terminal.
    ("bench", &["cli"]),
    ("testing", &["cli", "bench"]),
    // The terminal: every command, at the top; it never needs test support.
    ("cli", &["testing"]),
];

/// Leaves every module may name: they name nothing else in the crate.
const LEAVES: &[&str] = &["job::id"];

/// What the lower floors never name.
const UPPER: &[&str] = &[
    "executor", "job", "warm", "forge", "daemon", "debug", "cli", "bench", "testing", "runner",
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/forge/forgejo/client.rs` →
/// `forge`, `src/events.rs` → `events`).
fn top_module(file: &Path) -> String {
    let rel = file.strip_prefix(src_dir()).expect("under src");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// The file's code: comments blanked out (line numbers kept), and a trailing
/// `#[cfg(test)] mod …` (unit tests) cut off.
fn code(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        if *line == "#[cfg(test)]"
            && lines[i + 1..]
                .iter()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.starts_with("mod "))
        {
            break;
        }
        out.push_str(match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        });
        out.push('\n');
    }
    out
}

fn is_path_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == ':'
}

/// Expands a `use` tree body (what follows `crate::`) into full paths:
/// `a::b`, `a::{b, c::{d}}`, `{a, b}`, across lines.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let head: String = tree.chars().take_while(|c| is_path_char(*c)).collect();
    let rest = tree[head.len()..].trim_start();
    let head = head.trim_end_matches(':');
    let joined = match (prefix.is_empty(), head.is_empty() || head == "self") {
        (_, true) => prefix.to_string(),
        (true, false) => head.to_string(),
        (false, false) => format!("{prefix}::{head}"),
    };
    if let Some(body) = rest.strip_prefix('{') {
        // Split the group's top level on commas.
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(&body[start..i], &joined, out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&body[start..i], &joined, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
    } else if !joined.is_empty() {
        out.push(joined);
    }
}

/// Every `crate::…` path the code names, with its line number.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let line = code[..at].matches('\n').count() + 1;
        let mut paths = Vec::new();
        expand(&code[at + "crate::".len()..], "", &mut paths);
        found.extend(paths.into_iter().map(|p| (line, p)));
    }
    found
}

fn forbidden(path: &str, rule: &str) -> bool {
    path == rule || path.starts_with(&format!("{rule}::"))
}

#[test]
fn no_module_names_a_module_above_it() {
    let known: BTreeSet<&str> = RULES.iter().map(|(m, _)| *m).collect();
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut broken = Vec::new();
    for file in &files {
        let module = top_module(file);
        let Some((_, rules)) = RULES.iter().find(|(m, _)| *m == module) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        for (n, path) in crate_paths(&code(&text)) {
            if LEAVES.iter().any(|leaf| forbidden(&path, leaf)) {
                continue;
            }
            if let Some(rule) = rules.iter().find(|r| forbidden(&path, r)) {
                broken.push(format!(
                    "src/{}:{n}: `{module}` must not name `{rule}` (found crate::{path})",
                    file.strip_prefix(src_dir()).unwrap_or(file).display()
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against the module map (docs/explanation/architecture.md):\n{}",
        broken.join("\n")
    );
    // Every module the rules name exists, so a rename cannot switch a rule off.
    for module in known {
        let dir = src_dir().join(module);
        let file = src_dir().join(format!("{module}.rs"));
        assert!(
            dir.is_dir() || file.is_file(),
            "the rules name `{module}`, which src/ no longer has: update RULES"
        );
    }
    // And every top-level module has rules, so a new one is placed on purpose.
    for file in &files {
        let module = top_module(file);
        if !matches!(module.as_str(), "lib" | "main") {
            assert!(
                RULES.iter().any(|(m, _)| *m == module),
                "src/{module} is not in RULES: say what it may not import"
            );
        }
    }
}

/// The leaves the lower floors may name import nothing from the crate, so
/// allowing them cannot smuggle an upward import in.
#[test]
fn leaves_name_nothing_else_in_the_crate() {
    for leaf in LEAVES {
        let file = src_dir().join(format!("{}.rs", leaf.replace("::", "/")));
        let text = std::fs::read_to_string(&file).expect("read leaf");
        let named = crate_paths(&code(&text));
        assert!(
            named.is_empty(),
            "{} is a leaf but names {named:?}",
            file.display()
        );
        assert!(
            !code(&text).contains("super::"),
            "{} names super::",
            file.display()
        );
    }
}

/// Done-when of the forge port: the daemon never names the Forgejo adapter,
/// not even in a comment.
#[test]
fn the_daemon_does_not_mention_the_forgejo_adapter() {
    let mut files = Vec::new();
    rust_files(&src_dir().join("daemon"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for (i, line) in text.lines().enumerate() {
            assert!(
                !line.contains("forge::forgejo") && !line.contains("forgejo::"),
                "{}:{}: the daemon names the Forgejo adapter: {line}",
                file.display(),
                i + 1
            );
        }
    }
}

/// Test support and benchmarks are compiled only with their features, so the
/// product binary (built without features) carries no fake forge.
#[test]
fn test_support_is_behind_its_features() {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("read lib.rs");
    assert!(
        lib.contains("#[cfg(feature = \"testkit\")]\npub mod testing;"),
        "src/lib.rs must gate `testing` behind the testkit feature"
    );
    assert!(
        lib.contains("#[cfg(feature = \"bench\")]\npub mod bench;"),
        "src/lib.rs must gate `bench` behind the bench feature"
    );
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("read Cargo.toml");
    let features = manifest
        .split("[features]")
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .expect("Cargo.toml has [features]");
    assert!(
        !features.contains("default"),
        "no default features: the product build must not include test support"
    );
}

#[test]
fn crate_paths_reads_groups_and_nested_paths() {
    let paths =
        |code: &str| -> Vec<String> { crate_paths(code).into_iter().map(|(_, p)| p).collect() };
    assert_eq!(paths("use crate::cli::exec::load;"), ["cli::exec::load"]);
    assert_eq!(
        paths("use crate::{forge::forgejo, job};"),
        ["forge::forgejo", "job"]
    );
    assert_eq!(
        paths("use crate::forge::{self, Port};"),
        ["forge", "forge::Port"]
    );
    assert_eq!(
        paths("use crate::{\n    daemon::{a, b::{c}},\n    vm,\n};"),
        ["daemon::a", "daemon::b::c", "vm"]
    );
    assert_eq!(
        crate_paths("let x = crate::vm::Accel::Tcg;\ncrate::job::run(x)"),
        [
            (1, "vm::Accel::Tcg".to_string()),
            (2, "job::run".to_string())
        ]
    );
    assert_eq!(code("use a; // crate::cli\n"), "use a; \n");
    assert!(forbidden("forge::forgejo::client", "forge::forgejo"));
    assert!(!forbidden("forge::Port", "forge::forgejo"));
    assert!(!forbidden("jobs", "job"));
}

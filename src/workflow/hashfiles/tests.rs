use super::*;

const WS: &str = "/home/u/work/r/r";
const HOME: &str = "/home/u";

/// The fixture of spec §10.4: dotfiles, nested directories, `a.txt` beside
/// `a/x`, symlinks, a file named `{a,b}`, and a file outside the workspace.
fn fixture() -> Vec<Entry> {
    let mut v: Vec<Entry> = [
        ".hidden",
        ".github/workflows/ci.yml",
        "a.txt",
        "a/x",
        "a/y.lock",
        "Cargo.lock",
        "src/main.rs",
        "src/skip/z.rs",
        "skip/q.lock",
        "sub/dir/deep.lock",
        "{a,b}",
        "a-b",
        "link-to-file",
    ]
    .iter()
    .map(|p| Entry {
        path: format!("{WS}/{p}").into_bytes(),
        kind: EntryKind::File,
    })
    .collect();
    v.push(Entry {
        path: format!("{WS}/link-to-dir").into_bytes(),
        kind: EntryKind::SymlinkToDir,
    });
    v.push(Entry {
        path: format!("{HOME}/outside.lock").into_bytes(),
        kind: EntryKind::File,
    });
    v.push(Entry {
        path: format!("{HOME}/work/r/sibling.lock").into_bytes(),
        kind: EntryKind::File,
    });
    v
}

/// What the guest would list: the fixture's entries under each search root.
fn selected(args: &[&str], entries: &[Entry]) -> Result<Vec<String>, String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let q = parse_query(&args, WS, HOME)?;
    let per_root = q
        .search_roots()
        .iter()
        .map(|r| {
            entries
                .iter()
                .filter(|e| {
                    let p = String::from_utf8_lossy(&e.path);
                    p == *r || p.starts_with(&format!("{r}/"))
                })
                .cloned()
                .collect()
        })
        .collect();
    Ok(q.select(per_root)?
        .into_iter()
        .map(|p| String::from_utf8(p).unwrap()[WS.len() + 1..].to_string())
        .collect())
}

fn sel(args: &[&str]) -> Vec<String> {
    selected(args, &fixture()).unwrap()
}

#[test]
fn everything_in_depth_first_byte_order() {
    // `.github/...` before `.hidden` (`.github` < `.hidden`), `a/x` before
    // `a.txt` (the directory's entries come first in a depth-first walk by
    // components), `Cargo.lock` before lower case; the symlink to a
    // directory is skipped; nothing outside the workspace.
    assert_eq!(
        sel(&["**"]),
        [
            ".github/workflows/ci.yml",
            ".hidden",
            "Cargo.lock",
            "a/x",
            "a/y.lock",
            "a-b",
            "a.txt",
            "link-to-file",
            "skip/q.lock",
            "src/main.rs",
            "src/skip/z.rs",
            "sub/dir/deep.lock",
            "{a,b}",
        ]
    );
}

#[test]
fn component_order_is_not_string_order() {
    let mut v = vec!["/w/a.txt", "/w/a/x", "/w/a-b", "/w/a"];
    v.sort_by(|a, b| component_order(a.as_bytes(), b.as_bytes()));
    assert_eq!(v, ["/w/a", "/w/a/x", "/w/a-b", "/w/a.txt"]);
}

#[test]
fn lock_files_and_negation() {
    assert_eq!(
        sel(&["**/*.lock"]),
        ["Cargo.lock", "a/y.lock", "skip/q.lock", "sub/dir/deep.lock"]
    );
    assert_eq!(
        sel(&["**/*.lock\n!**/skip/**"]),
        ["Cargo.lock", "a/y.lock", "sub/dir/deep.lock"]
    );
    // Negation then re-inclusion: the last matching pattern wins.
    assert_eq!(
        sel(&["**/*.lock", "!**/skip/**", "skip/q.lock"]),
        ["Cargo.lock", "a/y.lock", "skip/q.lock", "sub/dir/deep.lock"]
    );
    // `!!` is positive again; spaces after `!` are trimmed.
    assert_eq!(sel(&["!!Cargo.lock"]), ["Cargo.lock"]);
    assert_eq!(sel(&["**/*.lock", "! **/*.lock"]), Vec::<String>::new());
    // Negations alone select nothing.
    assert_eq!(sel(&["!**/*.lock"]), Vec::<String>::new());
}

#[test]
fn trailing_slash_and_implicit_descendants() {
    assert_eq!(sel(&["src/"]), ["src/main.rs", "src/skip/z.rs"]);
    assert_eq!(sel(&["src"]), ["src/main.rs", "src/skip/z.rs"]);
    assert_eq!(sel(&["./src"]), ["src/main.rs", "src/skip/z.rs"]);
    assert_eq!(sel(&["src/*"]), ["src/main.rs", "src/skip/z.rs"]);
    // A trailing `/` never matches a file itself.
    assert_eq!(sel(&["a.txt/"]), Vec::<String>::new());
    // `x/**` matches `x` itself (a quirk of @actions/glob), here a file.
    assert_eq!(sel(&["a.txt/**"]), ["a.txt"]);
    // `!dir/` removes only the directory's own match; its implicit form
    // removes what is below.
    assert_eq!(sel(&["src/**", "!src/skip/"]), ["src/main.rs"]);
}

#[test]
fn comments_blank_lines_and_literal_braces() {
    assert_eq!(sel(&["# comment\n\n   a.txt   \n"]), ["a.txt"]);
    assert_eq!(sel(&["  # a.txt"]), Vec::<String>::new());
    assert_eq!(sel(&["{a,b}"]), ["{a,b}"]);
    assert_eq!(sel(&["{a.txt,Cargo.lock}"]), Vec::<String>::new());
    // No extglob either: `+(x)` is literal.
    assert_eq!(sel(&["a/+(x)"]), Vec::<String>::new());
}

#[test]
fn character_classes_and_question_marks() {
    assert_eq!(sel(&["a/[xy]*"]), ["a/x", "a/y.lock"]);
    assert_eq!(sel(&["a/[!x]*"]), ["a/y.lock"]);
    assert_eq!(sel(&["a/[^x]*"]), ["a/y.lock"]);
    assert_eq!(sel(&["a/[w-x]"]), ["a/x"]);
    assert_eq!(sel(&["a?txt"]), ["a.txt"]);
    assert_eq!(sel(&["a[.]txt"]), ["a.txt"]);
    assert_eq!(sel(&["a\\.txt"]), ["a.txt"]);
    // `*` never crosses a `/`, and needs a non-empty name.
    assert_eq!(sel(&["*/x"]), ["a/x"]);
    assert_eq!(sel(&["a*"]), ["a/x", "a/y.lock", "a-b", "a.txt"]);
    // Dotfiles are matched by `*`.
    assert_eq!(sel(&["*hidden"]), [".hidden"]);
}

#[test]
fn no_match_is_the_empty_string() {
    assert_eq!(sel(&["nothing/**"]), Vec::<String>::new());
    assert_eq!(combine(&[]), "");
}

#[test]
fn multiple_arguments_keep_their_roots_in_order() {
    // Two roots: `sub` first, then `a`, each in depth-first order.
    assert_eq!(
        sel(&["sub/**", "a/*"]),
        ["sub/dir/deep.lock", "a/x", "a/y.lock"]
    );
    // A root below another is dropped: one walk, one order.
    assert_eq!(
        sel(&["sub/dir/deep.lock", "**/*.rs"]),
        ["src/main.rs", "src/skip/z.rs", "sub/dir/deep.lock"]
    );
    let q = parse_query(&["sub/**".into(), "a/*".into()], WS, HOME).unwrap();
    assert_eq!(q.search_roots(), [format!("{WS}/sub"), format!("{WS}/a")]);
}

#[test]
fn only_files_inside_the_workspace() {
    // Absolute patterns and `~` work, but files outside the workspace are
    // ignored; roots above the workspace are narrowed to it.
    assert_eq!(sel(&["~/**/*.lock"]), sel(&["**/*.lock"]));
    assert_eq!(
        sel(&[&format!("{HOME}/outside.lock")]),
        Vec::<String>::new()
    );
    let q = parse_query(&["/**".into()], WS, HOME).unwrap();
    assert_eq!(q.search_roots(), [WS.to_string()]);
    let q = parse_query(&["/etc/*".into()], WS, HOME).unwrap();
    assert!(q.search_roots().is_empty());
    assert_eq!(sel(&[&format!("{WS}/a.txt")]), ["a.txt"]);
}

#[test]
fn options_and_invalid_patterns() {
    let q = parse_query(&["--follow-symbolic-links".into(), "x".into()], WS, HOME).unwrap();
    assert!(q.follow_symlinks);
    let q = parse_query(&["--FOLLOW-symbolic-links".into(), "x".into()], WS, HOME).unwrap();
    assert!(q.follow_symlinks);
    // Only as the first argument.
    let q = parse_query(&["x".into(), "--follow-symbolic-links".into()], WS, HOME).unwrap();
    assert!(!q.follow_symlinks);
    let e = selected(&["--x", "a.txt"], &fixture()).unwrap_err();
    assert_eq!(
        e,
        "hashFiles(): invalid option `--x`; the only option is `--follow-symbolic-links`, as the first argument"
    );
    for bad in ["../x", "a/../b", "a/./b", "!"] {
        assert!(selected(&[bad], &fixture()).is_err(), "{bad}");
    }
    assert!(parse_query(&[], WS, HOME).is_err());
    assert!(parse_query(&vec!["x".to_string(); 256], WS, HOME).is_err());
    assert!(parse_query(&vec!["x".to_string(); 255], WS, HOME).is_ok());
}

#[test]
fn broken_links_and_special_files_fail_when_selected() {
    let mut entries = fixture();
    entries.push(Entry {
        path: format!("{WS}/broken").into_bytes(),
        kind: EntryKind::Broken,
    });
    entries.push(Entry {
        path: format!("{WS}/fifo").into_bytes(),
        kind: EntryKind::Special,
    });
    let e = selected(&["**"], &entries).unwrap_err();
    assert!(e.contains("`broken` is a broken symbolic link"), "{e}");
    let e = selected(&["f*"], &entries).unwrap_err();
    assert!(e.contains("`fifo` is not a regular file"), "{e}");
    // Not selected: no error.
    assert_eq!(selected(&["a.txt"], &entries).unwrap(), ["a.txt"]);
    assert_eq!(
        selected(&["**", "!broken", "!fifo"], &entries)
            .unwrap()
            .len(),
        13
    );
}

#[test]
fn js_trim_differs_from_rust_trim() {
    assert_eq!(js_trim("\u{feff} a \u{3000}"), "a");
    assert_eq!(js_trim("\u{85}a"), "\u{85}a");
}

#[test]
fn combine_is_sha256_over_raw_digests() {
    // sha256("") and sha256("a"), combined: sha256 of their 64 raw bytes.
    let e = parse_hex_digest("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        .unwrap();
    let a = parse_hex_digest("ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb")
        .unwrap();
    let mut raw = e.to_vec();
    raw.extend_from_slice(&a);
    let expected: String = Sha256::digest(&raw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(combine(&[e, a]), expected);
    assert_eq!(combine(&[e]).len(), 64);
    assert_ne!(combine(&[e, a]), combine(&[a, e]));
    assert!(parse_hex_digest("zz").is_none());
    assert!(parse_hex_digest(&"g".repeat(64)).is_none());
}

#[test]
fn globstar_segments() {
    let m = |pat: &str, path: &str| {
        parse_query(&[pat.to_string()], WS, HOME)
            .unwrap()
            .matches_file(&format!("{WS}/{path}"))
    };
    assert!(m("**/x", "x"));
    assert!(m("**/x", "a/b/x"));
    assert!(m("a/**/x", "a/x"));
    assert!(m("a/**/b/**/x", "a/b/x"));
    assert!(!m("a/**/b/**/x", "a/x"));
    // `**` inside a segment is a plain `*`.
    assert!(m("a**", "ab"));
    assert!(!m("x*/y", "x/z/y"));
}

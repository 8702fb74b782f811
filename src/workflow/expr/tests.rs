use super::*;
use serde_json::json;

fn ctx() -> Contexts {
    let mut values = BTreeMap::new();
    values.insert(
        "github".into(),
        json!({
            "event_name": "push",
            "ref": "refs/heads/main",
            "sha": "abc123",
            "event": {
                "commits": [
                    {"message": "first", "author": {"name": "Mona"}},
                    {"message": "second"},
                    {"author": {"name": "Hubot"}}
                ],
                "labels": [{"name": "bug"}, {"name": "ci"}],
                "number": 42
            }
        }),
    );
    values.insert(
        "env".into(),
        json!({"NAME": "World", "EMPTY": "", "NUM": "3", "Mixed_Case": "yes"}),
    );
    values.insert(
        "steps".into(),
        json!({
            "build": {"outcome": "success", "conclusion": "success", "outputs": {"v": "1.2"}},
            "test-it": {"outcome": "failure", "conclusion": "success", "outputs": {}}
        }),
    );
    values.insert(
        "matrix".into(),
        json!({"os": "linux", "version": 1.2, "list": [1, 2, 3], "obj": {"a": 1}}),
    );
    Contexts {
        values,
        status: JobStatus::Success,
        hash_files: BTreeMap::new(),
    }
}

fn eval(src: &str) -> Value {
    evaluate(src, &ctx()).unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn err(src: &str) -> ExprError {
    match evaluate(src, &ctx()) {
        Ok(v) => panic!("{src}: expected an error, got {v}"),
        Err(e) => e,
    }
}

#[test]
fn literals() {
    let cases: &[(&str, Value)] = &[
        ("null", Value::Null),
        ("true", json!(true)),
        ("false", json!(false)),
        ("711", json!(711)),
        ("-9.2", json!(-9.2)),
        ("0xff", json!(255)),
        ("0o17", json!(15)),
        ("-2.99e-2", json!(-0.0299)),
        ("1e3", json!(1000)),
        (".5", json!(0.5)),
        ("'It''s open source!'", json!("It's open source!")),
        ("''", json!("")),
        ("'}}'", json!("}}")),
        ("  'spaced'  ", json!("spaced")),
    ];
    for (src, want) in cases {
        assert_eq!(&eval(src), want, "{src}");
    }
}

#[test]
fn documented_literal_examples_interpolate() {
    let cases = [
        ("${{ null }}", ""),
        ("${{ false }}", "false"),
        ("${{ 711 }}", "711"),
        ("${{ -9.2 }}", "-9.2"),
        ("${{ 0xff }}", "255"),
        ("${{ -2.99e-2 }}", "-0.0299"),
        ("Mona the Octocat", "Mona the Octocat"),
        ("${{ 'It''s open source!' }}", "It's open source!"),
        ("${{ 1e20 }}", "1E+20"),
        ("${{ 1e-7 }}", "1E-07"),
        ("${{ 0.1 }}", "0.1"),
        ("${{ NaN }}", "NaN"),
        ("${{ Infinity }}", "Infinity"),
    ];
    for (src, want) in cases {
        assert_eq!(interpolate(src, &ctx()).unwrap(), want, "{src}");
    }
}

#[test]
fn operators_and_precedence() {
    let cases: &[(&str, Value)] = &[
        ("1 < 2", json!(true)),
        ("2 <= 2", json!(true)),
        ("3 > 4", json!(false)),
        ("4 >= 4", json!(true)),
        ("1 == 1", json!(true)),
        ("1 != 1", json!(false)),
        ("!true", json!(false)),
        ("!!'x'", json!(true)),
        ("!0", json!(true)),
        // `!` binds tighter than `<`: (!2) < 3 → false < 3 → 0 < 3.
        ("!2 < 3", json!(true)),
        ("!(2 < 3)", json!(false)),
        // Relational binds tighter than equality.
        ("1 < 2 == true", json!(true)),
        ("true == 1 < 2", json!(true)),
        // && binds tighter than ||.
        ("true || false && false", json!(true)),
        ("(true || false) && false", json!(false)),
        ("false && true || true", json!(true)),
        // && and || return an operand, not a bool.
        ("'a' && 'b'", json!("b")),
        ("'' && 'b'", json!("")),
        ("null || 'default'", json!("default")),
        ("'first' || 'second'", json!("first")),
        ("0 || null", Value::Null),
        ("env.EMPTY || 'fallback'", json!("fallback")),
        ("github.event_name == 'push' && 'yes' || 'no'", json!("yes")),
        (
            "github.event_name == 'pull_request' && 'yes' || 'no'",
            json!("no"),
        ),
        // Left associativity.
        ("1 == 1 == 1", json!(true)),
        ("2 == 2 == 2", json!(false)),
        ("(1)", json!(1)),
        ("((('x')))", json!("x")),
    ];
    for (src, want) in cases {
        assert_eq!(&eval(src), want, "{src}");
    }
}

#[test]
fn property_access_index_and_case() {
    let cases: &[(&str, Value)] = &[
        ("github.sha", json!("abc123")),
        // Forgejo's and Gitea's names for the github context.
        ("forgejo.sha", json!("abc123")),
        ("gitea['sha']", json!("abc123")),
        ("forge.event.number", json!(42)),
        ("Forgejo.event_name == github.event_name", json!(true)),
        ("GITHUB.SHA", json!("abc123")),
        ("github['sha']", json!("abc123")),
        ("github['SHA']", json!("abc123")),
        ("env.mixed_case", json!("yes")),
        ("env.MIXED_CASE", json!("yes")),
        ("github.event.number", json!(42)),
        ("github.event.commits[0].message", json!("first")),
        ("github.event.commits[1]['message']", json!("second")),
        ("github.event.commits[3]", Value::Null),
        ("github.event.commits[-1]", Value::Null),
        ("github.event.commits[0.5]", Value::Null),
        ("github.event.commits['0'].message", json!("first")),
        ("github.missing", Value::Null),
        ("github.missing.deeper.still", Value::Null),
        ("github.sha.length", Value::Null),
        ("steps.test-it.outcome", json!("failure")),
        ("steps['test-it'].outcome", json!("failure")),
        ("steps.build.outputs.v", json!("1.2")),
        ("steps.nope.outputs.v", Value::Null),
        ("matrix.list[1]", json!(2)),
        ("matrix['obj'].a", json!(1)),
        ("fromJSON('{\"a\":{\"b\":[10,20]}}').a.b[1]", json!(20)),
        ("(github).sha", json!("abc123")),
        // Known contexts the caller did not supply are empty objects.
        ("secrets.TOKEN", Value::Null),
        ("toJSON(needs)", json!("{}")),
        ("vars.X || 'unset'", json!("unset")),
    ];
    for (src, want) in cases {
        assert_eq!(&eval(src), want, "{src}");
    }
}

#[test]
fn object_filters() {
    let cases: &[(&str, Value)] = &[
        ("github.event.commits.*.message", json!(["first", "second"])),
        (
            "github.event.commits.*.author.name",
            json!(["Mona", "Hubot"]),
        ),
        ("github.event.labels.*.name", json!(["bug", "ci"])),
        ("github.event.labels[*].name", json!(["bug", "ci"])),
        ("steps.*.outcome", json!(["success", "failure"])),
        ("matrix.list.*", json!([1, 2, 3])),
        ("fromJSON('[[1,2],[3]]').*.*", json!([1, 2, 3])),
        ("fromJSON('[[1,2],[3]]').*[0]", json!([1, 3])),
        ("github.sha.*", Value::Null),
        ("contains(github.event.labels.*.name, 'CI')", json!(true)),
        ("contains(steps.*.outcome, 'failure')", json!(true)),
        ("contains(steps.*.outcome, 'cancelled')", json!(false)),
        (
            "join(github.event.commits.*.message, ' | ')",
            json!("first | second"),
        ),
    ];
    for (src, want) in cases {
        assert_eq!(&eval(src), want, "{src}");
    }
}

#[test]
fn loose_equality_and_comparison() {
    let cases: &[(&str, bool)] = &[
        // Strings ignore case.
        ("'abc' == 'ABC'", true),
        ("'abc' != 'abd'", true),
        ("'a' < 'B'", true),
        ("'B' > 'a'", true),
        ("'abc' < 'abd'", true),
        // Different types convert to numbers.
        ("null == 0", true),
        ("null == false", true),
        ("true == 1", true),
        ("false == 0", true),
        ("'1' == 1", true),
        ("'0x10' == 16", true),
        ("' 2 ' == 2", true),
        ("'' == 0", true),
        ("'' == false", true),
        ("'abc' == 0", false),
        ("'true' == true", false),
        ("env.NUM == 3", true),
        ("env.NUM > 2", true),
        ("'10' > 9", true),
        // Same types compare directly.
        ("null == null", true),
        ("true == true", true),
        ("1.0 == 1", true),
        // NaN is not equal to anything, itself included, and never orders.
        ("NaN == NaN", false),
        ("NaN != NaN", true),
        ("'abc' < 1", false),
        ("'abc' >= 1", false),
        ("NaN < 1", false),
        // Arrays and objects: identity only.
        ("github.event == github.event", true),
        ("github.event.commits == github.event.commits", true),
        ("github.event == github", false),
        ("fromJSON('[]') == fromJSON('[]')", false),
        ("fromJSON('{}') == 0", false),
        ("fromJSON('[]') != 0", true),
        ("matrix.list < matrix.list", false),
        ("matrix.version == 1.2", true),
        ("matrix.version == '1.2'", true),
        ("steps.build.outputs.v == 1.2", true),
    ];
    for (src, want) in cases {
        assert_eq!(eval(src), json!(want), "{src}");
    }
}

#[test]
fn functions() {
    let cases: &[(&str, Value)] = &[
        ("contains('Hello world', 'WORLD')", json!(true)),
        ("contains('Hello world', 'xyz')", json!(false)),
        (
            "contains(fromJSON('[\"push\", \"pull_request\"]'), github.event_name)",
            json!(true),
        ),
        ("contains(matrix.list, 2)", json!(true)),
        ("contains(matrix.list, '2')", json!(true)),
        ("contains(matrix.list, 4)", json!(false)),
        ("contains(matrix.obj, 'a')", json!(false)),
        ("contains(123, 2)", json!(true)),
        ("CONTAINS('abc', 'B')", json!(true)),
        ("startsWith('Hello world', 'he')", json!(true)),
        ("startswith(github.ref, 'refs/heads/')", json!(true)),
        ("startsWith('Hello', 'world')", json!(false)),
        ("endsWith('Hello world', 'WORLD')", json!(true)),
        ("endsWith('Hello world', 'hello')", json!(false)),
        ("endsWith(matrix.list, '3')", json!(false)),
        (
            "format('Hello {0} {1} {2}', 'Mona', 'the', 'Octocat')",
            json!("Hello Mona the Octocat"),
        ),
        (
            "format('{{Hello {0} {1} {2}!}}', 'Mona', 'the', 'Octocat')",
            json!("{Hello Mona the Octocat!}"),
        ),
        ("format('{0}{0}', 'ab')", json!("abab")),
        ("format('{1}-{0}', 1, true)", json!("true-1")),
        ("format('{0}', null)", json!("")),
        ("format('no placeholders')", json!("no placeholders")),
        ("format('{{{0}}}', 'x')", json!("{x}")),
        ("join(matrix.list)", json!("1,2,3")),
        ("join(matrix.list, ', ')", json!("1, 2, 3")),
        ("join('single')", json!("single")),
        ("join(fromJSON('[]'))", json!("")),
        ("toJSON(matrix.obj)", json!("{\n  \"a\": 1\n}")),
        ("toJSON(matrix.list)", json!("[\n  1,\n  2,\n  3\n]")),
        ("toJSON('s')", json!("\"s\"")),
        ("toJSON(1.5)", json!("1.5")),
        ("toJSON(null)", json!("null")),
        ("fromJSON('true')", json!(true)),
        ("fromJSON('42') == 42", json!(true)),
        ("fromJSON(' \"x\" ')", json!("x")),
        ("fromJSON(toJSON(matrix.obj)).a", json!(1)),
        ("fromJson(env.NUM) > 2", json!(true)),
        // Nested calls.
        (
            "format('{0}/{1}', join(matrix.list, '-'), toJSON(startsWith('ab', 'A')))",
            json!("1-2-3/true"),
        ),
        (
            "contains(format('{0}-{1}', matrix.os, 'x'), 'LINUX-X')",
            json!(true),
        ),
        ("success()", json!(true)),
        ("failure()", json!(false)),
        ("cancelled()", json!(false)),
        ("always()", json!(true)),
    ];
    for (src, want) in cases {
        assert_eq!(&eval(src), want, "{src}");
    }
}

#[test]
fn status_functions_follow_the_job_status() {
    for (status, s, f, c) in [
        (JobStatus::Success, true, false, false),
        (JobStatus::Failure, false, true, false),
        (JobStatus::Cancelled, false, false, true),
    ] {
        let ctx = Contexts { status, ..ctx() };
        assert_eq!(evaluate("success()", &ctx).unwrap(), json!(s));
        assert_eq!(evaluate("failure()", &ctx).unwrap(), json!(f));
        assert_eq!(evaluate("cancelled()", &ctx).unwrap(), json!(c));
        assert_eq!(evaluate("always()", &ctx).unwrap(), json!(true));
    }
}

#[test]
fn conditions() {
    let ok = ctx();
    let failed = Contexts {
        status: JobStatus::Failure,
        ..ctx()
    };
    let cancelled = Contexts {
        status: JobStatus::Cancelled,
        ..ctx()
    };
    // (condition, when successful, after a failure, when cancelled)
    let cases = [
        ("", true, false, false),
        ("   ", true, false, false),
        ("true", true, false, false),
        ("false", false, false, false),
        ("${{ true }}", true, false, false),
        ("  ${{ github.event_name == 'push' }}  ", true, false, false),
        ("github.event_name == 'push'", true, false, false),
        ("github.event_name == 'PUSH'", true, false, false),
        ("github.event_name != 'push'", false, false, false),
        ("success()", true, false, false),
        ("failure()", false, true, false),
        ("always()", true, true, true),
        ("cancelled()", false, false, true),
        ("${{ always() }}", true, true, true),
        (
            "failure() && github.event_name == 'push'",
            false,
            true,
            false,
        ),
        ("!cancelled()", true, true, false),
        ("success() || failure()", true, true, false),
        ("Always()", true, true, true),
        ("steps.test-it.outcome == 'failure'", true, false, false),
        ("env.EMPTY", false, false, false),
        ("env.NAME", true, false, false),
        ("0", false, false, false),
        ("NaN", false, false, false),
        ("fromJSON('{}')", true, false, false),
        // Text mixed with `${{ }}` is a non-empty string, which is true.
        ("${{ false }} text", true, false, false),
        ("${{ false }} == true", true, false, false),
        ("${{ always() }} x", true, true, true),
        ("${{ '' }}${{ null }}", false, false, false),
    ];
    for (src, s, f, c) in cases {
        assert_eq!(evaluate_condition(src, &ok).unwrap(), s, "{src:?} success");
        assert_eq!(
            evaluate_condition(src, &failed).unwrap(),
            f,
            "{src:?} failure"
        );
        assert_eq!(
            evaluate_condition(src, &cancelled).unwrap(),
            c,
            "{src:?} cancelled"
        );
    }
}

#[test]
fn implicit_success_short_circuits() {
    // After a failure the condition is not evaluated at all, so a runtime
    // error inside it does not surface (as `success() && (...)` would).
    let failed = Contexts {
        status: JobStatus::Failure,
        ..ctx()
    };
    assert!(!evaluate_condition("fromJSON('not json')", &failed).unwrap());
    assert!(evaluate_condition("fromJSON('not json')", &ctx()).is_err());
    // Syntax errors are reported regardless.
    assert!(evaluate_condition("1 ==", &failed).is_err());
}

#[test]
fn interpolation() {
    let cases = [
        ("Hello ${{ env.NAME }}!", "Hello World!"),
        ("${{env.NAME}}", "World"),
        ("a ${{ 1 }} b ${{ 'two' }} c", "a 1 b two c"),
        ("${{ env.NAME }}${{ env.NAME }}", "WorldWorld"),
        ("no expressions at all", "no expressions at all"),
        ("${{ 'has }} inside' }}", "has }} inside"),
        ("${{ '}}' }}-${{ '{{' }}", "}}-{{"),
        ("${{ 'It''s }}' }}", "It's }}"),
        ("${{ github.missing }}", ""),
        ("v=${{ matrix.version }}", "v=1.2"),
        ("${{ matrix.list }}", "[\n  1,\n  2,\n  3\n]"),
        ("${{ matrix.obj }}", "{\n  \"a\": 1\n}"),
        ("${{ true }} ${{ 3 == 3 }}", "true true"),
        ("${{ github.event.number }}", "42"),
        ("$ {{ not an expression }}", "$ {{ not an expression }}"),
        ("{{ also not }}", "{{ also not }}"),
    ];
    for (src, want) in cases {
        assert_eq!(interpolate(src, &ctx()).unwrap(), want, "{src}");
    }
}

#[test]
fn evaluate_template_keeps_types_for_a_single_expression() {
    let c = ctx();
    assert_eq!(
        evaluate_template("${{ matrix.version }}", &c).unwrap(),
        json!(1.2)
    );
    assert_eq!(
        evaluate_template(" ${{ 1 == 1 }} ", &c).unwrap(),
        json!(true)
    );
    assert_eq!(
        evaluate_template("${{ matrix.obj }}", &c).unwrap(),
        json!({"a": 1})
    );
    assert_eq!(evaluate_template("v${{ 1 }}", &c).unwrap(), json!("v1"));
    assert_eq!(evaluate_template("plain", &c).unwrap(), json!("plain"));
    assert_eq!(
        evaluate_template("${{ 1 }}${{ 2 }}", &c).unwrap(),
        json!("12")
    );
    // `evaluate` also unwraps a single `${{ }}`.
    assert_eq!(evaluate("${{ env.NAME }}", &c).unwrap(), json!("World"));
}

#[test]
fn parse_errors_name_the_token_and_position() {
    let cases = [
        ("1 == (2))", "Unexpected token ')'", 8),
        ("(1 == 2", "Unexpected end of expression, expected ')'", 7),
        ("1 ==", "Unexpected end of expression", 4),
        ("", "Expected an expression", 0),
        (
            "github.",
            "Unexpected end of expression, expected a property name or '*'",
            7,
        ),
        (
            "github.[0]",
            "Unexpected token '[', expected a property name or '*'",
            7,
        ),
        ("'abc", "Unterminated string literal", 0),
        (
            "\"abc\"",
            "Unexpected symbol '\"': strings use single quotes",
            0,
        ),
        ("a = b", "Unexpected symbol '=' (use '==' to compare)", 2),
        ("true & false", "Unexpected symbol '&' (use '&&')", 5),
        ("1 | 2", "Unexpected symbol '|' (use '||')", 2),
        ("1 2", "Unexpected token '2'", 2),
        ("12abc", "Invalid number '12abc'", 0),
        ("0xZZ", "Invalid number '0xZZ'", 0),
        ("github.sha #", "Unexpected symbol '#'", 11),
        ("format('x',)", "Unexpected token ')'", 11),
        ("contains(,)", "Unexpected token ','", 9),
        ("[1]", "Unexpected token '['", 0),
    ];
    for (src, msg, offset) in cases {
        let e = err(src);
        assert_eq!((e.message.as_str(), e.offset), (msg, offset), "{src}");
        assert_eq!(e.source_text, src);
    }
}

#[test]
fn error_display_is_one_based() {
    let e = err("1 == (2))");
    assert_eq!(
        e.to_string(),
        "Unexpected token ')' at position 9 in expression `1 == (2))`"
    );
}

#[test]
fn semantic_errors() {
    let cases = [
        (
            "foo.bar",
            "Unrecognized named-value 'foo'; known contexts are github, env, vars, secrets, matrix, needs, steps, job, runner, inputs, strategy",
            0,
        ),
        (
            "1 == bogus",
            "Unrecognized named-value 'bogus'; known contexts are github, env, vars, secrets, matrix, needs, steps, job, runner, inputs, strategy",
            5,
        ),
        (
            "nope()",
            "Unrecognized function 'nope'; available are contains, startsWith, endsWith, format, join, toJSON, fromJSON, hashFiles, success, failure, always, cancelled",
            0,
        ),
        (
            "contains('a')",
            "Function 'contains' takes exactly 2 arguments, got 1",
            0,
        ),
        (
            "toJSON()",
            "Function 'toJSON' takes exactly 1 argument, got 0",
            0,
        ),
        (
            "join(1, 2, 3)",
            "Function 'join' takes 1 to 2 arguments, got 3",
            0,
        ),
        (
            "format()",
            "Function 'format' takes at least 1 arguments, got 0",
            0,
        ),
        (
            "success(1)",
            "Function 'success' takes exactly 0 arguments, got 1",
            0,
        ),
        (
            "true && hashFiles('**/x')",
            "hashFiles() cannot be computed here: it hashes files in the job's workspace, so it works in a step's `if`, `env`, `run`, `with` and `working-directory` and in job outputs",
            8,
        ),
        (
            "format('{1}', 'a')",
            "format: '{1}' refers to argument 1, but only 1 argument follow the format string",
            0,
        ),
        (
            "format('{0', 'a')",
            "format: invalid placeholder at index 0 of '{0'; use {N} for argument N and {{ }} for literal braces",
            0,
        ),
        (
            "format('{x}', 'a')",
            "format: invalid placeholder at index 0 of '{x}'; use {N} for argument N and {{ }} for literal braces",
            0,
        ),
        (
            "format('a}b')",
            "format: unmatched '}' at index 1 of 'a}b'; write '}}' for a literal brace",
            0,
        ),
        (
            "'x' && fromJSON('{')",
            "fromJSON: the argument is not valid JSON (EOF while parsing an object at line 1 column 1)",
            7,
        ),
        (
            "fromJSON('')",
            "fromJSON: the argument is not valid JSON (EOF while parsing a value at line 1 column 0)",
            0,
        ),
    ];
    for (src, msg, offset) in cases {
        let e = err(src);
        assert_eq!((e.message.as_str(), e.offset), (msg, offset), "{src}");
    }
}

#[test]
fn contexts_supplied_by_the_caller_are_accepted() {
    let mut c = ctx();
    c.values.insert("custom".into(), json!({"x": 1}));
    assert_eq!(evaluate("custom.x", &c).unwrap(), json!(1));
    assert!(evaluate("custom.x", &Contexts::default()).is_err());
}

#[test]
fn interpolation_errors() {
    let e = interpolate("a ${{ env.NAME", &ctx()).unwrap_err();
    assert_eq!(e.message, "Missing closing '}}' for '${{'");
    let e = interpolate("ok ${{ 1 == }} more", &ctx()).unwrap_err();
    assert_eq!(e.source_text, "1 ==");
    assert_eq!(e.message, "Unexpected end of expression");
    let e = interpolate("${{ }}", &ctx()).unwrap_err();
    assert_eq!(e.message, "Expected an expression");
}

#[test]
fn check_reports_errors_without_contexts() {
    assert!(check("github.sha == 'x'").is_ok());
    assert!(check("echo ${{ matrix.os }} and ${{ env.X }}").is_ok());
    assert!(check("echo ${{ matrix.os ) }}").is_err());
    assert!(check("hashFiles('x')").is_ok());
    assert!(check("hashFiles('a', 'b', '--x')").is_ok());
    assert!(check("hashFiles()").is_err());
}

#[test]
fn deep_nesting_is_rejected_not_overflowed() {
    let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
    assert!(err(&deep).message.contains("nests deeper than 50"));
    let nots = format!("{}true", "!".repeat(200));
    assert!(err(&nots).message.contains("nests deeper than 50"));
    let ok = format!("{}1{}", "(".repeat(20), ")".repeat(20));
    assert_eq!(eval(&ok), json!(1));
}

#[test]
fn truthiness_and_string_forms() {
    for (v, t) in [
        (json!(null), false),
        (json!(false), false),
        (json!(0), false),
        (json!(-0.0), false),
        (json!(""), false),
        (json!("0"), true),
        (json!("false"), true),
        (json!([]), true),
        (json!({}), true),
        (json!(0.5), true),
    ] {
        assert_eq!(truthy(&v), t, "{v}");
    }
    for (v, s) in [
        (json!(null), ""),
        (json!(1), "1"),
        (json!(1.5), "1.5"),
        (json!(1e20), "1E+20"),
        (json!(-3), "-3"),
        (json!(true), "true"),
        (json!("s"), "s"),
        (json!([1]), "[\n  1\n]"),
    ] {
        assert_eq!(to_actions_string(&v), s, "{v}");
    }
}

#[test]
fn number_formatting() {
    for (n, s) in [
        (0.0, "0"),
        (-0.0, "0"),
        (123.0, "123"),
        (-1.25, "-1.25"),
        (0.1 + 0.2, "0.3"),
        (1e15, "1E+15"),
        (123456789012345.0, "123456789012345"),
        (0.00001, "0.00001"),
        (0.000001, "1E-06"),
        (1.5e300, "1.5E+300"),
        (f64::NEG_INFINITY, "-Infinity"),
    ] {
        assert_eq!(format_number(n), s, "{n}");
    }
}

#[test]
fn hash_files_reads_precomputed_results() {
    let mut c = ctx();
    let key = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    c.hash_files.insert(key(&["**/*.lock"]), "abc".into());
    c.hash_files.insert(key(&["a", "1"]), "".into());
    assert_eq!(
        evaluate("HASHFILES('**/*.lock')", &c).unwrap(),
        json!("abc")
    );
    assert_eq!(
        interpolate("k-${{ hashFiles('**/*.lock') }}", &c).unwrap(),
        "k-abc"
    );
    // Arguments are keyed by their string forms.
    assert_eq!(evaluate("hashFiles('a', 1)", &c).unwrap(), json!(""));
    let e = evaluate("hashFiles('other')", &c).unwrap_err();
    assert!(
        e.message.starts_with("hashFiles() cannot be computed here"),
        "{e}"
    );
    assert!(check("hashFiles('a', 'b')").is_ok());
}

#[test]
fn pending_hash_files_follows_evaluation() {
    let mut c = ctx();
    let key = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Arguments are evaluated in the contexts.
    assert_eq!(
        pending_hash_files(
            "x ${{ hashFiles(format('{0}/*.lock', env.NAME), 'b') }}",
            false,
            &c
        ),
        Some(key(&["World/*.lock", "b"]))
    );
    // One at a time, in evaluation order; short-circuits are respected.
    let t = "${{ hashFiles('a') }}-${{ false && hashFiles('never') || hashFiles('b') }}";
    assert_eq!(pending_hash_files(t, false, &c), Some(key(&["a"])));
    c.hash_files.insert(key(&["a"]), "1".into());
    assert_eq!(pending_hash_files(t, false, &c), Some(key(&["b"])));
    c.hash_files.insert(key(&["b"]), "2".into());
    assert_eq!(pending_hash_files(t, false, &c), None);
    assert_eq!(interpolate(t, &c).unwrap(), "1-2");
    // Conditions: bare or wrapped; not evaluated after a failure without a
    // status function.
    assert_eq!(
        pending_hash_files("hashFiles('c') != ''", true, &c),
        Some(key(&["c"]))
    );
    assert_eq!(
        pending_hash_files("${{ hashFiles('c') }}", true, &c),
        Some(key(&["c"]))
    );
    let failed = Contexts {
        status: JobStatus::Failure,
        ..c.clone()
    };
    assert_eq!(
        pending_hash_files("hashFiles('c') != ''", true, &failed),
        None
    );
    assert_eq!(
        pending_hash_files("always() && hashFiles('c') != ''", true, &failed),
        Some(key(&["c"]))
    );
    // Text without calls, and syntax errors, give nothing.
    assert_eq!(pending_hash_files("echo hi", false, &c), None);
    assert_eq!(pending_hash_files("${{ hashFiles( }}", false, &c), None);
}

//! Expressions through the public API, as the executor uses them, with
//! examples from GitHub's "Evaluate expressions" and "Contexts" documentation.

use serde_json::json;
use solstice::workflow::expr::{
    Contexts, JobStatus, evaluate, evaluate_condition, evaluate_template, interpolate,
};

fn contexts(status: JobStatus) -> Contexts {
    let mut c = Contexts {
        status,
        ..Contexts::default()
    };
    c.values.insert(
        "github".into(),
        json!({
            "event_name": "pull_request",
            "event": {"action": "unassigned", "pull_request": {"labels": [{"name": "Bug"}]}},
            "ref": "refs/heads/main",
            "repository": "octo-org/octo-repo"
        }),
    );
    c.values.insert(
        "env".into(),
        json!({"DAY_OF_WEEK": "Monday", "JSON": "{\"a\": [1, 2]}"}),
    );
    c.values.insert(
        "steps".into(),
        json!({"check": {"outputs": {"ok": "true", "count": "3"}, "outcome": "success", "conclusion": "success"}}),
    );
    c.values
        .insert("matrix".into(), json!({"node": 16, "experimental": true}));
    c.values
        .insert("runner".into(), json!({"os": "Linux", "arch": "X64"}));
    c
}

#[test]
fn documented_conditions() {
    let ok = contexts(JobStatus::Success);
    let failed = contexts(JobStatus::Failure);
    let cases = [
        (
            "${{ github.event_name == 'pull_request' && github.event.action == 'unassigned' }}",
            true,
            false,
        ),
        ("github.ref == 'refs/heads/main'", true, false),
        ("env.DAY_OF_WEEK == 'Monday'", true, false),
        (
            "contains(github.event.pull_request.labels.*.name, 'bug')",
            true,
            false,
        ),
        (
            "${{ failure() && steps.check.outcome == 'success' }}",
            false,
            true,
        ),
        ("${{ !cancelled() }}", true, true),
        ("steps.check.outputs.ok == 'true'", true, false),
        ("fromJSON(steps.check.outputs.count) >= 3", true, false),
        ("runner.os == 'linux'", true, false),
        ("github.repository != 'octo-org/octo-repo'", false, false),
    ];
    for (src, s, f) in cases {
        assert_eq!(evaluate_condition(src, &ok).unwrap(), s, "{src}");
        assert_eq!(evaluate_condition(src, &failed).unwrap(), f, "{src}");
    }
}

#[test]
fn documented_values() {
    let c = contexts(JobStatus::Success);
    assert_eq!(
        interpolate(
            "node-${{ matrix.node }} on ${{ runner.os }}-${{ runner.arch }}",
            &c
        )
        .unwrap(),
        "node-16 on Linux-X64"
    );
    assert_eq!(
        evaluate_template("${{ matrix.experimental }}", &c).unwrap(),
        json!(true)
    );
    assert_eq!(evaluate("fromJSON(env.JSON).a[1]", &c).unwrap(), json!(2));
    assert_eq!(
        interpolate("${{ format('{{ {0} }}', github.repository) }}", &c).unwrap(),
        "{ octo-org/octo-repo }"
    );
    assert_eq!(
        interpolate("${{ toJSON(steps.check.outputs) }}", &c).unwrap(),
        "{\n  \"ok\": \"true\",\n  \"count\": \"3\"\n}"
    );
    let e = interpolate("${{ github.ref == }}", &c).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Unexpected end of expression at position 14 in expression `github.ref ==`"
    );
}

//! Checks a job before any VM exists: what would otherwise only fail after
//! the guest has booted (minutes on illumos). Pure.
//!
//! GitHub does the same: a workflow with an expression that does not parse
//! is rejected as a whole, and an action that cannot be resolved fails the
//! job in "Set up job", before any step runs.

use crate::workflow::expr;
use crate::workflow::model::step_label;
use crate::workflow::{Job, Workflow};

use super::checkout;

/// Every problem that would stop `job` (the key `job_id` of `wf`) from
/// running, one message each (empty when it can run). `default_actions_url`
/// is where a forge would fetch `uses: owner/repo@ref` from, for the message.
pub fn preflight(
    wf: &Workflow,
    job_id: &str,
    job: &Job,
    default_actions_url: Option<&str>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |what: &str, text: &str| check_expr(&mut problems, what, text);
    let templated = |text: &str| text.contains("${{");
    for (k, v) in &wf.env {
        if templated(&v.0) {
            check(&format!("workflow env `{k}`"), &v.0);
        }
    }
    let job_what = format!("job `{job_id}`");
    for (k, v) in &job.env {
        if templated(&v.0) {
            check(&format!("{job_what}, env `{k}`"), &v.0);
        }
    }
    if let Some(c) = job.if_.as_ref().filter(|c| !c.0.trim().is_empty()) {
        check(&format!("{job_what}, `if:`"), &c.0);
    }
    for (k, v) in &job.outputs {
        check(&format!("{job_what}, output `{k}`"), v);
    }
    for field in [&job.timeout_minutes, &job.continue_on_error]
        .into_iter()
        .flatten()
    {
        if templated(&field.0) {
            check(&job_what, &field.0);
        }
    }
    let mut unsupported = Vec::new();
    for (i, step) in job.steps.iter().enumerate() {
        let what = format!("{job_what}, {}", step_label(i, step));
        if let Some(c) = step.if_.as_ref().filter(|c| !c.0.trim().is_empty()) {
            check(&format!("{what}, `if:`"), &c.0);
        }
        for (label, text) in [
            ("`name:`", step.name.as_deref()),
            ("`run:`", step.run.as_deref()),
            ("`working-directory:`", step.working_directory.as_deref()),
            ("`shell:`", step.shell.as_deref()),
        ] {
            if let Some(t) = text.filter(|t| templated(t)) {
                check(&format!("{what}, {label}"), t);
            }
        }
        for (label, map) in [("env", &step.env), ("with", &step.with)] {
            for (k, v) in map {
                if templated(&v.0) {
                    check(&format!("{what}, {label} `{k}`"), &v.0);
                }
            }
        }
        for field in [&step.timeout_minutes, &step.continue_on_error]
            .into_iter()
            .flatten()
        {
            if templated(&field.0) {
                check(&what, &field.0);
            }
        }
        if let Some(uses) = &step.uses
            && !checkout::is_checkout(uses)
        {
            let from = default_actions_url
                .map(|u| format!("; it would come from {u}"))
                .unwrap_or_default();
            unsupported.push(format!(
                "{what}: `uses: {uses}` is not supported yet (Solstice runs `run:` steps and the built-in actions/checkout){from}"
            ));
        }
    }
    unsupported.extend(problems);
    unsupported
}

fn check_expr(out: &mut Vec<String>, what: &str, text: &str) {
    if let Err(e) = expr::check(text) {
        out.push(format!("{what}: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{parse_workflow, select_job};

    fn problems(yaml: &str) -> Vec<String> {
        let wf = parse_workflow(yaml).unwrap();
        let (id, job) = select_job(&wf, None).unwrap();
        preflight(&wf, id, job, Some("https://data.forgejo.org"))
    }

    #[test]
    fn a_runnable_job_has_no_problems() {
        let p = problems(
            "env:\n  A: ${{ github.sha }}\njobs:\n  b:\n    if: github.event_name == 'push'\n    outputs:\n      o: ${{ steps.x.outputs.y }}\n    steps:\n      - uses: actions/checkout@v4\n        with:\n          ref: ${{ github.ref }}\n      - id: x\n        if: ${{ success() && matrix.os != 'x' }}\n        run: echo ${{ env.A }}\n        timeout-minutes: ${{ matrix.t || 5 }}\n",
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn unsupported_actions_and_bad_expressions_are_all_reported() {
        let p = problems(
            "jobs:\n  b:\n    steps:\n      - uses: actions/setup-node@v4\n      - name: Build\n        if: github.ref ==\n        run: echo ${{ githb.sha }}\n      - run: echo ${{ fromJSON( }}\n        env:\n          X: ${{ nope() }}\n",
        );
        // Unsupported actions first, then expressions in file order.
        assert_eq!(p.len(), 5, "{p:#?}");
        assert!(
            p[0].starts_with("job `b`, step 1: `uses: actions/setup-node@v4` is not supported yet")
                && p[0].ends_with("it would come from https://data.forgejo.org"),
            "{p:#?}"
        );
        assert!(
            p[1].starts_with("job `b`, step 2 (\"Build\"), `if:`: "),
            "{p:#?}"
        );
        assert!(
            p[2].starts_with("job `b`, step 2 (\"Build\"), `run:`: ") && p[2].contains("githb"),
            "{p:#?}"
        );
        assert!(p[3].starts_with("job `b`, step 3, `run:`: "), "{p:#?}");
        assert!(p[4].starts_with("job `b`, step 3, env `X`: "), "{p:#?}");
    }
}

//! Checks a job before any VM exists: what would otherwise only fail after
//! the guest has booted (minutes on illumos). Pure.
//!
//! GitHub does the same: a workflow with an expression that does not parse
//! is rejected as a whole, and an action that cannot be resolved fails the
//! job in "Set up job", before any step runs.

use crate::actions::parse_uses;
use crate::workflow::expr;
use crate::workflow::model::step_label;
use crate::workflow::{Job, Workflow};

use super::checkout;

/// Every problem that would stop `job` (the key `job_id` of `wf`) from
/// running, one message each (empty when it can run): malformed `uses:`
/// references first, then expressions that do not parse, in file order.
///
/// A `uses:` holding `${{ }}` is checked as an expression only: Forgejo
/// evaluates `uses:` before resolving it. Every well-formed reference passes,
/// `docker://` included (its step fails when it runs, with the reason).
pub fn preflight(wf: &Workflow, job_id: &str, job: &Job) -> Vec<String> {
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
    let mut malformed = Vec::new();
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
        if let Some(uses) = &step.uses {
            if templated(uses) {
                check(&format!("{what}, `uses:`"), uses);
            } else if !checkout::is_checkout(uses)
                && let Err(e) = parse_uses(uses)
            {
                malformed.push(format!("{what}: {e}"));
            }
        }
    }
    malformed.extend(problems);
    malformed
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
        preflight(&wf, id, job)
    }

    #[test]
    fn a_runnable_job_has_no_problems() {
        let p = problems(
            "env:\n  A: ${{ github.sha }}\njobs:\n  b:\n    if: github.event_name == 'push'\n    outputs:\n      o: ${{ steps.x.outputs.y }}\n    steps:\n      - uses: actions/checkout@v4\n        with:\n          ref: ${{ github.ref }}\n      - id: x\n        if: ${{ success() && matrix.os != 'x' }}\n        run: echo ${{ env.A }}\n        timeout-minutes: ${{ matrix.t || 5 }}\n",
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn every_well_formed_uses_passes() {
        let p = problems(
            "jobs:\n  b:\n    steps:\n      - uses: actions/checkout\n      - uses: actions/setup-node@v4\n      - uses: github/codeql-action/init@v3\n      - uses: https://code.forgejo.org/forgejo/upload-artifact@v4\n      - uses: ./.github/actions/setup\n      - uses: docker://alpine:3.20\n      - uses: vmactions/omnios-vm@v1\n        with:\n          run: make\n      - uses: ${{ secrets.ACTIONS_HOST }}/o/r@v1\n",
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn malformed_uses_and_bad_expressions_are_all_reported() {
        let p = problems(
            "jobs:\n  b:\n    steps:\n      - uses: actions/setup-node\n      - name: Build\n        if: github.ref ==\n        run: echo ${{ githb.sha }}\n      - run: echo ${{ fromJSON( }}\n        env:\n          X: ${{ nope() }}\n      - uses: ./.github/workflows/ci.yml\n      - uses: ${{ matrix.action ==  }}\n      - uses: ./../outside\n",
        );
        // Malformed references first, then expressions in file order.
        assert_eq!(p.len(), 8, "{p:#?}");
        assert!(
            p[0].starts_with("job `b`, step 1: Invalid `uses: actions/setup-node`: ")
                && p[0].contains("{owner}/{repo}[/path]@{ref}"),
            "{p:#?}"
        );
        assert!(
            p[1].starts_with("job `b`, step 4: Invalid `uses: ./.github/workflows/ci.yml`: ")
                && p[1].contains("reusable workflow"),
            "{p:#?}"
        );
        assert!(
            p[2].starts_with("job `b`, step 6: Invalid `uses: ./../outside`: ")
                && p[2].contains("leaves the workspace"),
            "{p:#?}"
        );
        assert!(
            p[3].starts_with("job `b`, step 2 (\"Build\"), `if:`: "),
            "{p:#?}"
        );
        assert!(
            p[4].starts_with("job `b`, step 2 (\"Build\"), `run:`: ") && p[4].contains("githb"),
            "{p:#?}"
        );
        assert!(p[5].starts_with("job `b`, step 3, `run:`: "), "{p:#?}");
        assert!(p[6].starts_with("job `b`, step 3, env `X`: "), "{p:#?}");
        assert!(p[7].starts_with("job `b`, step 5, `uses:`: "), "{p:#?}");
    }
}

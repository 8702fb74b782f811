//! Parsing and validating workflow files through the public API.

use solstice::workflow::{WorkflowError, parse_workflow, select_job};

const FULL: &str = r#"
name: CI
run-name: Build by ${{ github.actor }}
on:
  push:
    branches: [main]
  pull_request:
permissions:
  contents: read
concurrency:
  group: ci-${{ github.ref }}
  cancel-in-progress: true
env:
  GLOBAL: 1
  FLAG: true
defaults:
  run:
    shell: bash
    working-directory: src
jobs:
  build:
    name: Build
    runs-on: [self-hosted, omnios]
    permissions: read-all
    environment: staging
    concurrency: build
    needs: [lint]
    if: github.event_name == 'push'
    timeout-minutes: 30
    continue-on-error: ${{ matrix.experimental }}
    strategy:
      fail-fast: false
      max-parallel: 2
      matrix:
        os: [linux, illumos]
    env:
      N: 1.5
    defaults:
      run:
        shell: sh
    outputs:
      version: ${{ steps.v.outputs.version }}
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0
      - id: v
        name: Version
        if: always()
        run: echo "version=1" >> "$GITHUB_OUTPUT"
        shell: sh
        working-directory: .
        env:
          EMPTY:
        continue-on-error: true
        timeout-minutes: 5
  lint:
    runs-on: linux
    steps:
      - run: make lint
"#;

#[test]
fn parses_a_full_workflow_and_ignores_forge_keys() {
    let wf = parse_workflow(FULL).unwrap();
    assert_eq!(wf.name.as_deref(), Some("CI"));
    assert_eq!(wf.env["GLOBAL"].0, "1");
    assert_eq!(wf.env["FLAG"].0, "true");
    let run = wf.defaults.as_ref().unwrap().run.as_ref().unwrap();
    assert_eq!(run.shell.as_deref(), Some("bash"));
    assert_eq!(run.working_directory.as_deref(), Some("src"));
    assert_eq!(wf.jobs.keys().collect::<Vec<_>>(), ["build", "lint"]);
    let build = &wf.jobs["build"];
    assert_eq!(build.name.as_deref(), Some("Build"));
    assert_eq!(build.if_.as_ref().unwrap().0, "github.event_name == 'push'");
    assert_eq!(build.timeout_minutes.as_ref().unwrap().0, "30");
    assert_eq!(build.env["N"].0, "1.5");
    assert_eq!(build.outputs["version"], "${{ steps.v.outputs.version }}");
    assert_eq!(build.steps.len(), 2);
    assert_eq!(build.steps[0].uses.as_deref(), Some("actions/checkout@v4"));
    assert_eq!(build.steps[0].with["fetch-depth"].0, "0");
    let v = &build.steps[1];
    assert_eq!(v.id.as_deref(), Some("v"));
    assert_eq!(v.env["EMPTY"].0, "");
    assert_eq!(v.continue_on_error.as_ref().unwrap().0, "true");
    assert_eq!(v.working_directory.as_deref(), Some("."));
}

#[test]
fn on_as_yaml_1_1_boolean_key_and_quoted_keys_are_tolerated() {
    for head in [
        "on: push",
        "true: push",
        "'on': [push]",
        "\"on\":\n  workflow_dispatch:",
    ] {
        let yaml =
            format!("{head}\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: 'true'\n");
        let wf = parse_workflow(&yaml).unwrap_or_else(|e| panic!("{head}: {e}"));
        assert_eq!(wf.jobs.len(), 1);
    }
}

fn err(yaml: &str) -> WorkflowError {
    parse_workflow(yaml).expect_err("expected an error")
}

#[test]
fn yaml_errors_carry_line_and_column() {
    let e = err("jobs:\n  a:\n    runs-on: x\n    stpes:\n      - run: x\n");
    let WorkflowError::Yaml {
        message,
        line,
        column,
    } = &e
    else {
        panic!("{e:?}")
    };
    assert!(message.contains("unknown field `stpes`"), "{message}");
    assert_eq!((*line, *column), (Some(4), Some(5)));
    assert!(
        e.to_string()
            .starts_with("Invalid workflow at line 4, column 5: "),
        "{e}"
    );

    let e = err("jobs:\n  a:\n    steps:\n      - run: x\n        shel: sh\n");
    assert!(e.to_string().contains("unknown field `shel`"), "{e}");
    assert!(e.to_string().contains("line 5"), "{e}");

    let e = err("jobs: [unclosed\n");
    assert!(
        matches!(e, WorkflowError::Yaml { line: Some(_), .. }),
        "{e:?}"
    );

    let e = err("name: x\n");
    assert!(e.to_string().contains("missing field `jobs`"), "{e}");
}

#[test]
fn unsupported_job_keys_are_named() {
    let e = err(
        "jobs:\n  call:\n    uses: org/repo/.github/workflows/w.yml@main\n    with:\n      x: 1\n    secrets: inherit\n",
    );
    assert_eq!(
        e.to_string(),
        "Job `call` uses `uses:`, which is not supported: reusable workflows cannot be run; \
         copy the called workflow's jobs into this file"
    );
}

#[test]
fn steps_need_exactly_one_of_run_and_uses() {
    let e = err(
        "jobs:\n  a:\n    steps:\n      - run: x\n      - name: Both\n        run: x\n        uses: a/b@v1\n",
    );
    assert_eq!(
        e.to_string(),
        "Job `a`, step 2 (\"Both\"): the step has both `run` and `uses`; a step does one or the other"
    );
    let e = err("jobs:\n  a:\n    steps:\n      - id: nothing\n");
    assert_eq!(
        e.to_string(),
        "Job `a`, step 1 (id `nothing`): the step has neither `run` nor `uses`; add one of them"
    );
    let e = err("jobs:\n  a:\n    runs-on: x\n");
    assert_eq!(e, WorkflowError::NoSteps { job: "a".into() });
    assert_eq!(err("jobs: {}\n"), WorkflowError::NoJobs);
}

#[test]
fn select_job_picks_the_only_job_or_requires_a_name() {
    let one = parse_workflow("jobs:\n  only:\n    steps:\n      - run: x\n").unwrap();
    let (id, job) = select_job(&one, None).unwrap();
    assert_eq!(id, "only");
    assert_eq!(job.steps.len(), 1);
    assert_eq!(select_job(&one, Some("only")).unwrap().0, "only");

    let wf = parse_workflow(FULL).unwrap();
    let e = select_job(&wf, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "The workflow has several jobs (build, lint); choose one with --job"
    );
    assert_eq!(select_job(&wf, Some("lint")).unwrap().0, "lint");
    let e = select_job(&wf, Some("biuld")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "No job `biuld` in the workflow (did you mean `build`?); jobs are: build, lint"
    );
    let e = select_job(&wf, Some("deploy")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "No job `deploy` in the workflow; jobs are: build, lint"
    );
}

#[test]
fn container_and_services_are_parsed_with_their_expressions() {
    let wf = parse_workflow(
        "jobs:\n  a:\n    container: solstice-test/bash:1\n    steps:\n      - run: x\n",
    )
    .unwrap();
    assert_eq!(
        wf.jobs["a"].container.as_ref().unwrap().image,
        "solstice-test/bash:1"
    );
    assert!(wf.jobs["a"].services.is_empty());

    let wf = parse_workflow(concat!(
        "jobs:\n  a:\n    container:\n      image: img:${{ matrix.v }}\n",
        "      credentials: { username: u, password: '${{ secrets.P }}' }\n",
        "      env: { A: 1, B: \"x y\" }\n      ports: [8080, '9090:90']\n",
        "      volumes: [/data:/data]\n      options: --user 0\n",
        "    services:\n      db:\n        image: solstice-test/postgres:15\n",
        "        ports: ['5432']\n        options: --health-cmd pg_isready\n",
        "      cache:\n        image: r\n        entrypoint: /bin/sh\n        cmd: [-c, 'sleep 1']\n",
        "    steps:\n      - run: x\n",
    ))
    .unwrap();
    let job = &wf.jobs["a"];
    let c = job.container.as_ref().unwrap();
    assert_eq!(c.image, "img:${{ matrix.v }}");
    let creds = c.credentials.as_ref().unwrap();
    assert_eq!(creds.password.0, "${{ secrets.P }}");
    assert!(!format!("{c:?}").contains("secrets.P"), "{c:?}");
    assert_eq!(c.env["A"].0, "1");
    assert_eq!(
        c.ports.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
        ["8080", "9090:90"]
    );
    assert_eq!(c.volumes, ["/data:/data"]);
    assert_eq!(c.options.as_deref(), Some("--user 0"));
    assert_eq!(job.services.keys().collect::<Vec<_>>(), ["db", "cache"]);
    assert_eq!(job.services["db"].ports[0].0, "5432");
    assert_eq!(job.services["cache"].entrypoint.as_deref(), Some("/bin/sh"));
    assert_eq!(job.services["cache"].cmd.len(), 2);
}

#[test]
fn container_mistakes_are_named() {
    let job = |extra: &str| format!("jobs:\n  a:\n    {extra}\n    steps:\n      - run: x\n");
    let e = err(&job("container:\n      image: x\n      imag: y"));
    assert!(e.to_string().contains("unknown field `imag`"), "{e}");
    let e = err(&job(
        "services:\n      db:\n        image: x\n        option: y",
    ));
    assert!(e.to_string().contains("unknown field `option`"), "{e}");
    let e = err(&job("container: [a]"));
    assert!(
        e.to_string()
            .contains("expected an image name or a mapping"),
        "{e}"
    );
    let e = err(&job(
        "container:\n      image: x\n      entrypoint: /bin/sh",
    ));
    assert_eq!(
        e.to_string(),
        "Job `a`, `container:`: `entrypoint:` is only for services: the job container runs \
         `tail -f /dev/null` and the steps run in it"
    );
    let e = err(&job(
        "services:\n      db:\n        image: x\n        command: a\n        cmd: [b]",
    ));
    assert_eq!(
        e.to_string(),
        "Job `a`, service `db`: `command:` and `cmd:` both set the command; keep one"
    );
}

#[test]
fn a_service_id_must_be_a_host_name() {
    let yaml = "jobs:\n  j:\n    runs-on: x\n    services:\n      \"my db\":\n        image: postgres\n    steps:\n      - run: true\n";
    let e = solstice::workflow::parse_workflow(yaml)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("service `my db`") && e.contains("host name"),
        "{e}"
    );
    let ok = "jobs:\n  j:\n    runs-on: x\n    services:\n      my_db-1.x:\n        image: postgres\n    steps:\n      - run: true\n";
    assert!(solstice::workflow::parse_workflow(ok).is_ok());
}

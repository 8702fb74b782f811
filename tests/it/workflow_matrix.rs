//! Matrix expansion, selection and job display names, with the examples from
//! GitHub's "Running variations of jobs in a workflow" documentation.

use serde_json::{Value, json};
use solstice::workflow::{
    Combination, Job, WorkflowError, expand_matrix, filter_matrix, job_display_name,
    parse_matrix_selector, parse_workflow,
};

fn job(strategy: &str) -> Job {
    let indented: String = strategy.lines().map(|l| format!("    {l}\n")).collect();
    let yaml = format!("jobs:\n  build:\n{indented}    steps:\n      - run: x\n");
    let wf = parse_workflow(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    wf.jobs["build"].clone()
}

fn expand(strategy: &str) -> Vec<Value> {
    expand_matrix(&job(strategy))
        .unwrap()
        .into_iter()
        .map(|c| Value::Object(c.into_iter().collect()))
        .collect()
}

fn expand_err(strategy: &str) -> String {
    expand_matrix(&job(strategy)).unwrap_err().to_string()
}

#[test]
fn no_matrix_is_one_empty_combination() {
    assert_eq!(expand("runs-on: x"), vec![json!({})]);
    assert_eq!(expand("strategy:\n  fail-fast: false"), vec![json!({})]);
}

#[test]
fn single_axis_and_cartesian_product_in_order() {
    assert_eq!(
        expand("strategy:\n  matrix:\n    version: [10, 12, 14]"),
        vec![
            json!({"version": 10}),
            json!({"version": 12}),
            json!({"version": 14})
        ]
    );
    assert_eq!(
        expand(
            "strategy:\n  matrix:\n    os: [ubuntu-22.04, ubuntu-20.04]\n    version: [10, 12, 14]"
        ),
        vec![
            json!({"os": "ubuntu-22.04", "version": 10}),
            json!({"os": "ubuntu-22.04", "version": 12}),
            json!({"os": "ubuntu-22.04", "version": 14}),
            json!({"os": "ubuntu-20.04", "version": 10}),
            json!({"os": "ubuntu-20.04", "version": 12}),
            json!({"os": "ubuntu-20.04", "version": 14}),
        ]
    );
}

#[test]
fn object_values_in_an_axis() {
    let got = expand(
        "strategy:\n  matrix:\n    os: [ubuntu-latest, macos-latest]\n    node:\n      - version: 14\n      - version: 20\n        env: NODE_OPTIONS=--openssl-legacy-provider",
    );
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[1],
        json!({"os": "ubuntu-latest", "node": {"version": 20, "env": "NODE_OPTIONS=--openssl-legacy-provider"}})
    );
}

#[test]
fn documented_include_example() {
    let got = expand(
        "strategy:
  matrix:
    fruit: [apple, pear]
    animal: [cat, dog]
    include:
      - color: green
      - color: pink
        animal: cat
      - fruit: apple
        shape: circle
      - fruit: banana
      - fruit: banana
        animal: cat",
    );
    assert_eq!(
        got,
        vec![
            json!({"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"}),
            json!({"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"}),
            json!({"fruit": "pear", "animal": "cat", "color": "pink"}),
            json!({"fruit": "pear", "animal": "dog", "color": "green"}),
            json!({"fruit": "banana"}),
            json!({"fruit": "banana", "animal": "cat"}),
        ]
    );
}

#[test]
fn documented_expanding_and_adding_examples() {
    // "Example: Expanding configurations": npm 6 only for windows + node 16.
    let got = expand(
        "strategy:
  matrix:
    os: [windows-latest, ubuntu-latest]
    node: [14, 16]
    include:
      - os: windows-latest
        node: 16
        npm: 6",
    );
    assert_eq!(
        got,
        vec![
            json!({"os": "windows-latest", "node": 14}),
            json!({"os": "windows-latest", "node": 16, "npm": 6}),
            json!({"os": "ubuntu-latest", "node": 14}),
            json!({"os": "ubuntu-latest", "node": 16}),
        ]
    );
    // "Example: Adding configurations": node 17 fits nothing, so it is added.
    let got = expand(
        "strategy:
  matrix:
    os: [windows-latest, ubuntu-latest]
    node: [14, 16]
    include:
      - os: windows-latest
        node: 17",
    );
    assert_eq!(got.len(), 5);
    assert_eq!(got[4], json!({"os": "windows-latest", "node": 17}));
}

#[test]
fn include_only_gives_one_combination_per_entry() {
    let got = expand(
        "strategy:
  matrix:
    include:
      - site: production
        datacenter: site-a
      - site: staging
        datacenter: site-b",
    );
    assert_eq!(
        got,
        vec![
            json!({"site": "production", "datacenter": "site-a"}),
            json!({"site": "staging", "datacenter": "site-b"}),
        ]
    );
}

#[test]
fn include_never_overwrites_axis_values_but_may_overwrite_added_ones() {
    let got = expand(
        "strategy:
  matrix:
    os: [linux]
    include:
      - extra: one
      - extra: two
      - os: linux
        extra: three",
    );
    assert_eq!(got, vec![json!({"os": "linux", "extra": "three"})]);
}

#[test]
fn documented_exclude_example() {
    let got = expand(
        "strategy:
  matrix:
    os: [macos-latest, windows-latest]
    version: [12, 14, 16]
    environment: [staging, production]
    exclude:
      - os: macos-latest
        version: 12
        environment: production
      - os: windows-latest
        version: 16",
    );
    assert_eq!(got.len(), 9);
    assert!(
        !got.contains(&json!({"os": "macos-latest", "version": 12, "environment": "production"}))
    );
    assert!(got.contains(&json!({"os": "macos-latest", "version": 12, "environment": "staging"})));
    assert!(
        !got.iter()
            .any(|c| c["os"] == "windows-latest" && c["version"] == 16)
    );
    assert_eq!(
        got.iter().filter(|c| c["os"] == "windows-latest").count(),
        4
    );
}

#[test]
fn exclude_runs_before_include_and_matches_objects_partially() {
    let got = expand(
        "strategy:
  matrix:
    os: [a, b]
    exclude:
      - os: b
    include:
      - os: b
        extra: back",
    );
    assert_eq!(
        got,
        vec![json!({"os": "a"}), json!({"os": "b", "extra": "back"})]
    );

    let got = expand(
        "strategy:
  matrix:
    cfg:
      - {cc: gcc, opt: 2}
      - {cc: clang, opt: 2}
    exclude:
      - cfg: {cc: clang}",
    );
    assert_eq!(got, vec![json!({"cfg": {"cc": "gcc", "opt": 2}})]);
}

#[test]
fn matrix_errors() {
    assert_eq!(
        expand_err("strategy:\n  matrix: ${{ fromJSON(needs.setup.outputs.matrix) }}"),
        "Invalid `strategy.matrix`: a matrix written as an expression \
         (`${{ fromJSON(needs.setup.outputs.matrix) }}`) is not supported; write the axes out in YAML"
    );
    assert_eq!(
        expand_err("strategy:\n  matrix:\n    os: ${{ fromJSON(inputs.oses) }}"),
        "Invalid `strategy.matrix`: axis `os` is an expression (`${{ fromJSON(inputs.oses) }}`), \
         which is not supported; list its values in YAML"
    );
    assert_eq!(
        expand_err("strategy:\n  matrix:\n    os: linux"),
        "Invalid `strategy.matrix`: axis `os` must be a list of values"
    );
    assert_eq!(
        expand_err("strategy:\n  matrix:\n    os: []"),
        "Invalid `strategy.matrix`: axis `os` has no values"
    );
    assert_eq!(
        expand_err("strategy:\n  matrix:\n    os: [a]\n    include: {os: a}"),
        "Invalid `strategy.matrix`: `include` must be a list of mappings"
    );
    assert_eq!(
        expand_err("strategy:\n  matrix:\n    os: [a]\n    exclude: [a]"),
        "Invalid `strategy.matrix`: `exclude` entry 1 must be a mapping of keys to values"
    );
    assert_eq!(
        expand_err("strategy:\n  matrix:\n    os: [a]\n    exclude:\n      - os: a"),
        "Invalid `strategy.matrix`: the matrix produces no combinations \
         (all are excluded, or it has no axes or include entries)"
    );
    let big = "strategy:\n  matrix:\n    a: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]\n    b: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]";
    assert_eq!(
        expand_err(big),
        "Invalid `strategy.matrix`: the matrix produces 272 combinations; at most 256 are allowed"
    );
    let e = expand_matrix(&job("strategy:\n  matrix: [1, 2]")).unwrap_err();
    assert!(matches!(e, WorkflowError::Matrix { .. }));
}

fn combos() -> Vec<Combination> {
    expand_matrix(&job(
        "strategy:\n  matrix:\n    os: [linux, illumos]\n    version: [1.2, 2]\n    debug: [true]",
    ))
    .unwrap()
}

fn sel(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn filter_matrix_by_string_form() {
    assert_eq!(filter_matrix(combos(), &[]).len(), 4);
    let got = filter_matrix(combos(), &sel(&[("os", "illumos")]));
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|c| c["os"] == "illumos"));
    let got = filter_matrix(combos(), &sel(&[("os", "linux"), ("version", "1.2")]));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["version"], json!(1.2));
    assert_eq!(
        filter_matrix(combos(), &sel(&[("version", "2"), ("debug", "true")])).len(),
        2
    );
    assert!(filter_matrix(combos(), &sel(&[("os", "Linux")])).is_empty());
    assert!(filter_matrix(combos(), &sel(&[("arch", "x86")])).is_empty());

    let objs = expand_matrix(&job(
        "strategy:\n  matrix:\n    cfg: [{cc: gcc}, {cc: clang}]",
    ))
    .unwrap();
    let got = filter_matrix(objs, &sel(&[("cfg", r#"{"cc":"clang"}"#)]));
    assert_eq!(got.len(), 1);
}

#[test]
fn matrix_selector_parsing() {
    assert_eq!(
        parse_matrix_selector("os=linux").unwrap(),
        ("os".into(), "linux".into())
    );
    assert_eq!(
        parse_matrix_selector("k=a=b").unwrap(),
        ("k".into(), "a=b".into())
    );
    assert_eq!(
        parse_matrix_selector("k=").unwrap(),
        ("k".into(), String::new())
    );
    assert_eq!(
        parse_matrix_selector("os").unwrap_err().to_string(),
        "Invalid matrix selector `os`; write it as key=value, e.g. os=linux"
    );
    assert!(parse_matrix_selector("=x").is_err());
}

#[test]
fn display_names() {
    let c = combos();
    let plain = job("strategy:\n  matrix:\n    os: [linux]");
    assert_eq!(
        job_display_name("build", &plain, &c[0]),
        "build (linux, 1.2, true)"
    );
    assert_eq!(
        job_display_name("build", &plain, &Combination::new()),
        "build"
    );
    let named = job("name: Compile\nruns-on: x");
    assert_eq!(
        job_display_name("build", &named, &c[3]),
        "Compile (illumos, 2, true)"
    );
    let templated = job("name: Build on ${{ matrix.os }} v${{ matrix.version }}");
    assert_eq!(
        job_display_name("build", &templated, &c[1]),
        "Build on linux v2"
    );
    let objs = expand_matrix(&job("strategy:\n  matrix:\n    cfg: [{cc: gcc}]")).unwrap();
    assert_eq!(
        job_display_name("b", &plain, &objs[0]),
        r#"b ({"cc":"gcc"})"#
    );
}

#[test]
fn selectors_that_match_nothing_are_explained_with_the_axes() {
    use solstice::workflow::matrix::explain_no_match;
    let combos = expand_matrix(&job(
        "strategy:\n  matrix:\n    os: [tiny, debian]\n    node: [18, 20]\n    exclude:\n      - os: tiny\n        node: 20",
    ))
    .unwrap();
    let sel = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let axes = "the matrix: os = tiny, debian; node = 18, 20";
    assert_eq!(
        explain_no_match(&combos, &sel(&[("oss", "tiny")])),
        [
            "`oss` is not an axis of the matrix; did you mean `os`?",
            axes
        ]
    );
    assert_eq!(
        explain_no_match(&combos, &sel(&[("arch", "x64")])),
        ["`arch` is not an axis of the matrix", axes]
    );
    assert_eq!(
        explain_no_match(&combos, &sel(&[("os", "ubuntu"), ("node", "18")])),
        ["`os` is never `ubuntu`; its values are tiny, debian", axes]
    );
    assert_eq!(
        explain_no_match(&combos, &sel(&[("os", "tiny"), ("node", "20")])),
        [
            "no combination has os=tiny and node=20 together (include/exclude decide which combinations exist)",
            axes
        ]
    );
    let none = expand_matrix(&job("runs-on: x")).unwrap();
    assert_eq!(
        explain_no_match(&none, &sel(&[("os", "tiny")])),
        [
            "`os` is not an axis of the matrix",
            "the job has no matrix: leave out --matrix"
        ]
    );
}

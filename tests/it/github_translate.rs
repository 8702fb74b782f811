//! A GitHub job message, translated, run through the executor with
//! `LocalSession` (real `sh` processes on the host, no VM): the contexts,
//! env order, `format()` scripts, literals holding `${{`, masks,
//! `continue-on-error` and job outputs behave as on GitHub.

use serde_json::json;
use solstice::config::GuestOs;
use solstice::events::{Conclusion, JobEvent};
use solstice::executor::run_job;
use solstice::forge::github::message::parse_message;
use solstice::forge::github::translate::{TranslateOptions, envelope, translate};
use solstice::guest::LocalSession;
use solstice::testing::VecSink;
use tokio_util::sync::CancellationToken;

fn script(name: &str, id: &str, script: serde_json::Value) -> serde_json::Value {
    json!({
        "type": "action", "id": id, "name": name, "contextName": name,
        "reference": {"type": "script"},
        "inputs": {"type": 2, "map": [{"Key": "script", "Value": script}]},
        "condition": "success()"
    })
}

fn message() -> serde_json::Value {
    let mut hello = script(
        "hello",
        "00000000-0000-4000-8000-000000000001",
        json!({"type": 3, "file": 1, "line": 9, "col": 14,
               "expr": "format('echo \"os={0} idx={1} greet={2}\"\necho greeting=hi-{0} >> \"$GITHUB_OUTPUT\"', matrix.os, strategy.job-index, env.GREETING)"}),
    );
    hello["displayNameToken"] = json!({"type": 0, "lit": "Say hello"});
    let mut literal = script(
        "__run",
        "00000000-0000-4000-8000-000000000002",
        json!("echo 'lit ${{ not evaluated }}'"),
    );
    literal["condition"] = json!("always()");
    let mut secret = script(
        "__run_2",
        "00000000-0000-4000-8000-000000000003",
        json!({"type": 3, "expr": "format('echo check={0} runtime=$ACTIONS_RUNTIME_TOKEN key=$STEPV jobv=$JOBV', job.check_run_id)"}),
    );
    secret["environment"] = json!({"type": 2, "map": [
        {"Key": "STEPV", "Value": {"type": 3, "expr": "secrets.API_KEY"}}
    ]});
    let mut failing = script(
        "__run_3",
        "00000000-0000-4000-8000-000000000004",
        json!("exit 3"),
    );
    failing["continueOnError"] = json!({"type": 5, "bool": "True"});
    failing["timeoutInMinutes"] = json!({"type": 3, "expr": "fromJSON('2')"});
    let after = script(
        "__run_4",
        "00000000-0000-4000-8000-000000000005",
        json!("echo \"after status=$CI/$GITHUB_ACTIONS\""),
    );
    json!({
        "messageType": "RunnerJobRequest",
        "plan": {"planId": "10000000-0000-4000-8000-000000000000", "planType": "actions", "version": 0},
        "jobId": "20000000-0000-4000-8000-000000000000",
        "jobDisplayName": "build (linux)",
        "jobName": "__default",
        "resources": {"endpoints": [{
            "name": "SystemVssConnection", "url": "http://127.0.0.1:9/run/",
            "authorization": {"scheme": "OAuth", "parameters": {"AccessToken": "job-token-xyz"}},
            "data": {"ResultsServiceUrl": "http://127.0.0.1:9/results/"}
        }]},
        "contextData": {
            "github": {"t": 2, "d": [
                {"k": "repository", "v": "acme/widget"},
                {"k": "server_url", "v": "https://github.com"},
                {"k": "ref", "v": "refs/heads/main"},
                {"k": "sha", "v": "0123456789abcdef"},
                {"k": "workflow", "v": "CI"}
            ]},
            "matrix": {"t": 2, "d": [{"k": "os", "v": "linux"}]},
            "strategy": {"t": 2, "d": [{"k": "job-index", "v": 2}, {"k": "job-total", "v": 3}]},
            "job": {"t": 2, "d": [{"k": "check_run_id", "v": 123}]},
            "vars": null
        },
        "variables": {
            "system.github.token": {"value": "ghs_TOKEN123", "isSecret": true},
            "system.github.job": {"value": "build"},
            "API_KEY": {"value": "hunter2", "isSecret": true}
        },
        "environmentVariables": [
            {"type": 2, "map": [{"Key": "GREETING", "Value": "hello"}]},
            {"type": 2, "map": [
                {"Key": "GREETING", "Value": {"type": 3, "expr": "format('{0} world', env.GREETING)"}},
                {"Key": "JOBV", "Value": "j"}
            ]}
        ],
        "defaults": [{"type": 2, "map": [{"Key": "run", "Value": {"type": 2, "map": [{"Key": "shell", "Value": "sh"}]}}]}],
        "jobContainer": null,
        "jobServiceContainers": null,
        "jobOutputs": {"type": 2, "map": [{"Key": "greeting", "Value": {"type": 3, "expr": "steps.hello.outputs.greeting"}}]},
        "steps": [hello, literal, secret, failing, after]
    })
}

#[tokio::test]
async fn translated_job_runs_like_on_github() {
    let body = serde_json::to_vec(&message()).unwrap();
    let msg = parse_message(&body).unwrap();
    let env = envelope(&msg).unwrap();
    assert_eq!(env.steps.len(), 5);
    assert_eq!(env.steps[0].name, "Say hello");
    let t = translate(&msg, &TranslateOptions::default()).unwrap();
    let home = tempfile::tempdir().unwrap();
    let runner = crate::support::local_runner(GuestOs::Linux, "gh-runner", home.path());
    let sink = VecSink::default();
    let outcome = run_job(
        &t.spec,
        &runner,
        &LocalSession,
        &sink,
        CancellationToken::new(),
    )
    .await;
    let text = sink.all_text();
    assert_eq!(outcome.conclusion, Conclusion::Success, "{text}");
    let names: Vec<String> = sink
        .events()
        .into_iter()
        .filter_map(|e| match e {
            JobEvent::StepStarted { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        [
            "Say hello",
            "Run echo 'lit ${{ not evaluated }}'",
            "Run echo check=123 runtime=$ACTIONS_RUNTIME_TOKEN key=$STEPV jobv=$JOBV",
            "Run exit 3",
            "Run echo \"after status=$CI/$GITHUB_ACTIONS\"",
        ]
    );
    assert_eq!(sink.step_lines(0), ["os=linux idx=2 greet=hello world"]);
    assert_eq!(sink.step_lines(1), ["lit ${{ not evaluated }}"]);
    assert_eq!(sink.step_lines(2), ["check=123 runtime=*** key=*** jobv=j"]);
    assert!(
        sink.step_lines(4)
            .contains(&"after status=true/true".to_string()),
        "{text}"
    );
    let conclusions: Vec<_> = outcome
        .steps
        .iter()
        .map(|s| (s.outcome, s.conclusion))
        .collect();
    assert_eq!(conclusions[3], (Conclusion::Failure, Conclusion::Success));
    assert_eq!(conclusions[4], (Conclusion::Success, Conclusion::Success));
    assert_eq!(outcome.outputs["greeting"], "hi-linux");
    assert!(
        !text.contains("hunter2") && !text.contains("job-token-xyz"),
        "{text}"
    );
}

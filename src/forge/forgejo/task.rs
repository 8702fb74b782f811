//! Turns a forge [`proto::Task`] into the [`JobSpec`] the executor runs
//! (`shared/spec/forgejo-runner-protocol.md` §2.4–2.6 and §6). Pure: no I/O.
//!
//! The `workflow_payload` is a single-job workflow whose matrix is already
//! reduced to one combination. The `context` becomes the `github` context
//! (minus the `forgejo_*`/`gitea_*` extras, which configure the runner), the
//! task's secrets, vars and needs become their contexts, and the runner-level
//! variables (`ACTIONS_RUNTIME_*`, `GITEA_ACTIONS`, `FORGEJO_ACTIONS`, ...) go
//! into [`JobSpec::extra_env`].

use std::collections::BTreeMap;
use std::time::Duration;

use indexmap::IndexMap;
use serde_json::{Map, Value, json};

use super::proto::{self, TaskResult};
use crate::job::placement::{RunsOnSource, runs_on_labels};
use crate::job::{CheckoutSource, JobSpec};
use crate::secret::Secret;
use crate::workflow::{self, WorkflowError};

/// Reported in `*_ACTIONS_RUNNER_VERSION` and in the first log row.
pub use crate::forge::RUNNER_VERSION;

/// Context keys that configure the runner and are not part of `github`.
const EXTRA_PREFIXES: [&str; 2] = ["forgejo_", "gitea_"];

/// Why a task cannot be run. The message is written into the task's log on
/// the forge, so it says what is wrong with the payload.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The task carries no workflow.
    #[error("The task has no workflow payload; the forge sent an empty task")]
    NoPayload,
    /// The payload is not UTF-8 text.
    #[error("The workflow payload is not valid UTF-8 text")]
    NotUtf8,
    /// The payload does not parse or validate as a workflow.
    #[error("The workflow payload cannot be run")]
    Workflow(#[source] WorkflowError),
    /// The payload does not hold exactly one job.
    #[error(
        "The workflow payload must hold exactly one job, it holds {count}{}",
        if .ids.is_empty() { String::new() } else { format!(" ({})", .ids.join(", ")) }
    )]
    JobCount { count: usize, ids: Vec<String> },
    /// The (already reduced) matrix does not give exactly one combination.
    #[error(
        "The job's strategy.matrix gives {count} combinations; the forge should send exactly one"
    )]
    MatrixCount { count: usize },
}

/// What [`translate`] needs besides the task.
#[derive(Debug, Clone)]
pub struct TranslateOptions {
    /// The forge's address as configured (`https://forge.example`), used for
    /// `ACTIONS_RUNTIME_URL`/`ACTIONS_RESULTS_URL` and as the fallback server
    /// URL. A trailing `/` is ignored.
    pub instance_url: String,
    /// Host-wide cap on the job's run time (the daemon's `max_job_timeout`).
    pub max_job_timeout: Option<Duration>,
}

/// A task ready to run.
#[derive(Debug, Clone)]
pub struct TranslatedTask {
    pub spec: JobSpec,
    /// The job's evaluated `runs-on` labels.
    pub runs_on: Vec<String>,
    /// The job's display name (`name:`, else its id; the forge already added
    /// any matrix suffix).
    pub job_name: String,
    /// `owner/name`, from the context.
    pub repository: String,
    /// Number of entries in the job's `steps:` (the forge's step records).
    pub step_count: usize,
    /// `push`, `pull_request`, ... from the context.
    pub event_name: String,
    /// `ACTIONS_STEP_DEBUG` is `"true"` (secret or variable): keep `::debug::` lines.
    pub step_debug: bool,
    /// Remarks for the task log (for example a missing default-actions URL).
    pub notes: Vec<String>,
}

fn get_str<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The first non-empty string among `forgejo_<name>` and `gitea_<name>`.
fn extra<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    EXTRA_PREFIXES
        .iter()
        .find_map(|p| get_str(m, &format!("{p}{name}")))
}

/// Translates a task. Fails only when the payload cannot be run; missing
/// context keys fall back to sensible values (see [`TranslatedTask::notes`]).
pub fn translate(task: &proto::Task, opts: &TranslateOptions) -> Result<TranslatedTask, TaskError> {
    let payload = task
        .workflow_payload
        .as_deref()
        .ok_or(TaskError::NoPayload)?;
    if payload.is_empty() {
        return Err(TaskError::NoPayload);
    }
    let text = std::str::from_utf8(payload).map_err(|_| TaskError::NotUtf8)?;
    let wf = workflow::parse_workflow(text).map_err(TaskError::Workflow)?;
    if wf.jobs.len() != 1 {
        return Err(TaskError::JobCount {
            count: wf.jobs.len(),
            ids: wf.jobs.keys().cloned().collect(),
        });
    }
    let (job_id, job) = workflow::select_job(&wf, None).map_err(TaskError::Workflow)?;
    let mut combos = workflow::expand_matrix(job).map_err(TaskError::Workflow)?;
    if combos.len() != 1 {
        return Err(TaskError::MatrixCount {
            count: combos.len(),
        });
    }
    let matrix = combos.remove(0);
    // Never an error: a forge's labels are taken as they are.
    let runs_on = runs_on_labels(job.runs_on.as_ref(), RunsOnSource::Evaluated).unwrap_or_default();
    let job_name = job.name.clone().unwrap_or_else(|| job_id.to_string());
    let step_count = job.steps.len();

    let mut notes = Vec::new();
    let instance = opts.instance_url.trim_end_matches('/').to_string();
    let context = match task.context.as_ref().map(proto::struct_to_json) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };

    // Secrets and the job token (FORGEJO_TOKEN, GITEA_TOKEN, GITHUB_TOKEN, context.token).
    let secrets: BTreeMap<String, Secret> = task
        .secrets
        .iter()
        .map(|(k, v)| (k.clone(), Secret::new(v.clone())))
        .collect();
    let job_token = ["FORGEJO_TOKEN", "GITEA_TOKEN", "GITHUB_TOKEN"]
        .iter()
        .find_map(|k| task.secrets.get(*k).filter(|v| !v.is_empty()).cloned())
        .or_else(|| get_str(&context, "token").map(str::to_string))
        .filter(|t| !t.is_empty());
    let runtime_token = extra(&context, "runtime_token")
        .map(str::to_string)
        .or_else(|| job_token.clone());
    let default_actions_url = match extra(&context, "default_actions_url") {
        Some(u) => u.to_string(),
        None => {
            notes.push(format!(
                "The forge sent no default-actions URL (forgejo_default_actions_url or gitea_default_actions_url); using {instance}"
            ));
            instance.clone()
        }
    };
    let mut extra_masks: Vec<Secret> = Vec::new();
    let mut mask = |v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty())
            && !extra_masks.iter().any(|m| m.expose() == v)
            && !task.secrets.values().any(|s| s == v)
        {
            extra_masks.push(Secret::new(v));
        }
    };
    mask(runtime_token.as_deref());
    mask(get_str(&context, "token"));
    mask(job_token.as_deref());
    mask(extra(&context, "actions_id_token_request_token"));

    // The github context: the task context minus the runner's extras.
    let server_url = get_str(&context, "server_url")
        .map(|s| s.trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| instance.clone());
    let mut github: Map<String, Value> = context
        .iter()
        .filter(|(k, _)| !EXTRA_PREFIXES.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    github.insert("server_url".into(), json!(server_url));
    github.insert("job".into(), json!(job_id));
    if let Some(t) = &job_token {
        github.insert("token".into(), json!(t));
    }
    let repository = get_str(&github, "repository")
        .unwrap_or_default()
        .to_string();
    let event_name = get_str(&github, "event_name")
        .unwrap_or_default()
        .to_string();
    let no_event = Value::Null;
    let inputs = workflow::inputs_context(
        &wf,
        workflow::InputSource::Event {
            name: &event_name,
            event: github.get("event").unwrap_or(&no_event),
        },
    );

    // needs: { id: { outputs, result } }, ids sorted.
    let mut need_ids: Vec<&String> = task.needs.keys().collect();
    need_ids.sort();
    let needs = Value::Object(
        need_ids
            .into_iter()
            .map(|id| {
                let n = &task.needs[id];
                let outputs: BTreeMap<&String, &String> = n.outputs.iter().collect();
                (
                    id.clone(),
                    json!({
                        "outputs": outputs,
                        "result": TaskResult::from_wire(n.result).context_name(),
                    }),
                )
            })
            .collect(),
    );

    // Runner-level variables. GITHUB_SERVER_URL is not here: the executor
    // sets it (protected) from `github.server_url`.
    let mut extra_env: IndexMap<String, String> = IndexMap::new();
    extra_env.insert(
        "ACTIONS_RUNTIME_URL".into(),
        format!("{instance}/api/actions_pipeline/"),
    );
    extra_env.insert("ACTIONS_RESULTS_URL".into(), instance.clone());
    if let Some(t) = &runtime_token {
        extra_env.insert("ACTIONS_RUNTIME_TOKEN".into(), t.clone());
    }
    // OIDC (`enable-openid-connect`): what actions use to ask the forge for an
    // ID token. The token is masked above.
    if let (Some(token), Some(url)) = (
        extra(&context, "actions_id_token_request_token"),
        extra(&context, "actions_id_token_request_url"),
    ) {
        extra_env.insert("ACTIONS_ID_TOKEN_REQUEST_TOKEN".into(), token.to_string());
        extra_env.insert("ACTIONS_ID_TOKEN_REQUEST_URL".into(), url.to_string());
    }
    extra_env.insert("GITEA_ACTIONS".into(), "true".into());
    extra_env.insert("GITEA_ACTIONS_RUNNER_VERSION".into(), RUNNER_VERSION.into());
    extra_env.insert("FORGEJO_ACTIONS".into(), "true".into());
    extra_env.insert(
        "FORGEJO_ACTIONS_RUNNER_VERSION".into(),
        RUNNER_VERSION.into(),
    );

    let step_debug = task
        .secrets
        .get("ACTIONS_STEP_DEBUG")
        .or_else(|| task.vars.get("ACTIONS_STEP_DEBUG"))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));

    let checkout = CheckoutSource::Remote {
        server_url: server_url.clone(),
        repository: repository.clone(),
        git_ref: get_str(&github, "ref").unwrap_or_default().to_string(),
        sha: get_str(&github, "sha").unwrap_or_default().to_string(),
        token: job_token.clone().map(Secret::new),
        host_dir: None,
    };
    let job_id = job_id.to_string();
    let spec = JobSpec {
        workflow: wf.clone(),
        job_id: job_id.clone(),
        matrix,
        github: Value::Object(github),
        secrets,
        vars: task
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        inputs,
        needs,
        extra_env,
        checkout,
        max_job_timeout: opts.max_job_timeout,
        extra_masks,
        default_actions_url: Some(default_actions_url),
        actions: None,
        cache: None,
        extra_contexts: Default::default(),
    };
    Ok(TranslatedTask {
        spec,
        runs_on,
        job_name,
        repository,
        step_count,
        event_name,
        step_debug,
        notes,
    })
}

/// The payload with line numbers, as rows for the task log when it cannot be
/// parsed (forgejo-runner prints it the same way).
pub fn numbered_payload(task: &proto::Task) -> Vec<String> {
    let text = String::from_utf8_lossy(task.workflow_payload.as_deref().unwrap_or_default());
    text.lines()
        .enumerate()
        .map(|(i, l)| format!("{:>4}: {l}", i + 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::TaskNeed;
    use std::collections::HashMap;

    const PAYLOAD: &str = "\
name: test
on:
  push:
jobs:
  job1:
    name: job1 (linux, 1.2)
    runs-on:
      - linux
      - big
    strategy:
      fail-fast: \"true\"
      matrix:
        os:
          - linux
        version:
          - \"1.2\"
    timeout-minutes: \"5\"
    enable-openid-connect: true
    steps:
      - uses: actions/checkout@v4
      - name: Build
        run: make ${{ matrix.version }}
      - run: echo ${{ secrets.API_KEY }}
";

    fn opts() -> TranslateOptions {
        TranslateOptions {
            instance_url: "https://forge.example/".into(),
            max_job_timeout: Some(Duration::from_secs(3600)),
        }
    }

    fn forgejo_context() -> serde_json::Value {
        json!({
            "actor": "alice",
            "api_url": "https://forge.example/api/v1",
            "event": {"ref": "refs/heads/main", "after": "abc123"},
            "event_name": "push",
            "job": "job1",
            "ref": "refs/heads/main",
            "ref_name": "main",
            "ref_type": "branch",
            "ref_protected": false,
            "repository": "acme/widget",
            "repository_owner": "acme",
            "run_id": "17",
            "run_number": "3",
            "run_attempt": "1",
            "server_url": "https://forge.example/",
            "sha": "abc123",
            "token": "task-token-1",
            "workflow": "ci.yml",
            "forgejo_default_actions_url": "https://code.forgejo.org",
            "gitea_default_actions_url": "https://code.forgejo.org",
            "forgejo_runtime_token": "jwt-runtime",
            "gitea_runtime_token": "jwt-runtime",
            "forgejo_server_version": "15.0.0",
            "forgejo_actions_id_token_request_token": "oidc-token",
            "forgejo_actions_id_token_request_url": "https://forge.example/api/actions/_apis/pipelines/workflows/17/idtoken?placeholder=true",
        })
    }

    fn task(payload: &str, context: serde_json::Value) -> proto::Task {
        proto::Task {
            id: 42,
            workflow_payload: Some(payload.as_bytes().to_vec()),
            context: Some(proto::json_to_struct(&context)),
            secrets: HashMap::from([
                ("GITHUB_TOKEN".into(), "task-token-1".into()),
                ("GITEA_TOKEN".into(), "task-token-1".into()),
                ("FORGEJO_TOKEN".into(), "task-token-1".into()),
                ("API_KEY".into(), "hunter2".into()),
            ]),
            vars: HashMap::from([("REGION".into(), "eu".into())]),
            ..proto::Task::default()
        }
    }

    #[test]
    fn forgejo_task_becomes_a_job_spec() {
        let t = translate(&task(PAYLOAD, forgejo_context()), &opts()).unwrap();
        // Debug output never shows the task token or the runtime token.
        let debug = format!("{t:?}");
        assert!(!debug.contains("task-token-1"), "{debug}");
        assert!(!debug.contains("jwt-runtime"), "{debug}");
        assert!(!debug.contains("oidc-token"), "{debug}");
        assert_eq!(t.runs_on, ["linux", "big"]);
        assert_eq!(t.job_name, "job1 (linux, 1.2)");
        assert_eq!(t.repository, "acme/widget");
        assert_eq!(t.step_count, 3);
        assert_eq!(t.event_name, "push");
        assert!(t.notes.is_empty(), "{:?}", t.notes);
        assert!(!t.step_debug);
        let s = &t.spec;
        assert_eq!(s.job_id, "job1");
        assert_eq!(s.matrix["version"], json!("1.2"));
        assert_eq!(s.matrix["os"], json!("linux"));
        assert_eq!(s.max_job_timeout, Some(Duration::from_secs(3600)));
        // github context: extras stripped, server_url without the slash.
        let g = s.github.as_object().unwrap();
        assert!(
            g.keys()
                .all(|k| !k.starts_with("forgejo_") && !k.starts_with("gitea_"))
        );
        assert_eq!(g["server_url"], "https://forge.example");
        assert_eq!(g["repository"], "acme/widget");
        assert_eq!(g["token"], "task-token-1");
        assert_eq!(g["run_id"], "17");
        assert_eq!(s.secrets["API_KEY"].expose(), "hunter2");
        assert_eq!(s.vars["REGION"], "eu");
        assert_eq!(s.inputs, json!({}));
        assert_eq!(s.needs, json!({}));
        assert_eq!(
            s.default_actions_url.as_deref(),
            Some("https://code.forgejo.org")
        );
        // Runner-level env.
        let e = &s.extra_env;
        assert_eq!(
            e["ACTIONS_RUNTIME_URL"],
            "https://forge.example/api/actions_pipeline/"
        );
        assert_eq!(e["ACTIONS_RESULTS_URL"], "https://forge.example");
        assert_eq!(e["ACTIONS_RUNTIME_TOKEN"], "jwt-runtime");
        assert_eq!(e["GITEA_ACTIONS"], "true");
        assert_eq!(e["FORGEJO_ACTIONS"], "true");
        assert!(e["FORGEJO_ACTIONS_RUNNER_VERSION"].starts_with("solstice-"));
        assert!(!e.contains_key("GITHUB_SERVER_URL"));
        // OIDC: the request token and URL reach the steps.
        assert_eq!(e["ACTIONS_ID_TOKEN_REQUEST_TOKEN"], "oidc-token");
        assert_eq!(
            e["ACTIONS_ID_TOKEN_REQUEST_URL"],
            "https://forge.example/api/actions/_apis/pipelines/workflows/17/idtoken?placeholder=true"
        );
        // Tokens that are not secrets of the job are masked.
        let masks: Vec<&str> = s.extra_masks.iter().map(Secret::expose).collect();
        assert!(masks.contains(&"jwt-runtime"), "{masks:?}");
        assert!(masks.contains(&"oidc-token"), "{masks:?}");
        match &s.checkout {
            CheckoutSource::Remote {
                server_url,
                repository,
                git_ref,
                sha,
                token,
                ..
            } => {
                assert_eq!(server_url, "https://forge.example");
                assert_eq!(repository, "acme/widget");
                assert_eq!(git_ref, "refs/heads/main");
                assert_eq!(sha, "abc123");
                assert_eq!(token.as_ref().unwrap().expose(), "task-token-1");
            }
            other => panic!("unexpected checkout {other:?}"),
        }
    }

    #[test]
    fn gitea_context_with_gitea_keys_only() {
        let mut ctx = forgejo_context();
        let m = ctx.as_object_mut().unwrap();
        m.retain(|k, _| !k.starts_with("forgejo_"));
        m.insert(
            "gitea_default_actions_url".into(),
            json!("https://github.com"),
        );
        m.insert("gitea_runtime_token".into(), json!("gitea-jwt"));
        m.insert(
            "gitea_actions_id_token_request_token".into(),
            json!("gitea-oidc"),
        );
        m.insert(
            "gitea_actions_id_token_request_url".into(),
            json!("https://gitea.example/sub/idtoken"),
        );
        m.insert("server_url".into(), json!("https://gitea.example/sub/"));
        let mut tk = task(PAYLOAD, ctx);
        tk.secrets.remove("FORGEJO_TOKEN");
        tk.secrets
            .insert("GITEA_TOKEN".into(), "gitea-task-token".into());
        let t = translate(&tk, &opts()).unwrap();
        let s = &t.spec;
        assert_eq!(s.default_actions_url.as_deref(), Some("https://github.com"));
        assert_eq!(s.extra_env["ACTIONS_RUNTIME_TOKEN"], "gitea-jwt");
        assert_eq!(s.extra_env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"], "gitea-oidc");
        assert_eq!(
            s.extra_env["ACTIONS_ID_TOKEN_REQUEST_URL"],
            "https://gitea.example/sub/idtoken"
        );
        let masks: Vec<&str> = s.extra_masks.iter().map(Secret::expose).collect();
        assert!(masks.contains(&"gitea-oidc"), "{masks:?}");
        assert_eq!(s.github["server_url"], "https://gitea.example/sub");
        // GITEA_TOKEN wins over GITHUB_TOKEN.
        assert_eq!(s.github["token"], "gitea-task-token");
        match &s.checkout {
            CheckoutSource::Remote {
                token, server_url, ..
            } => {
                assert_eq!(token.as_ref().unwrap().expose(), "gitea-task-token");
                assert_eq!(server_url, "https://gitea.example/sub");
            }
            other => panic!("unexpected checkout {other:?}"),
        }
    }

    #[test]
    fn missing_extras_fall_back_and_are_noted() {
        let mut ctx = forgejo_context();
        let m = ctx.as_object_mut().unwrap();
        m.retain(|k, _| !k.starts_with("forgejo_") && !k.starts_with("gitea_"));
        m.remove("server_url");
        let mut tk = task(PAYLOAD, ctx);
        tk.secrets.clear();
        let t = translate(&tk, &opts()).unwrap();
        assert_eq!(t.notes.len(), 1, "{:?}", t.notes);
        assert!(t.notes[0].contains("default-actions URL"));
        let s = &t.spec;
        assert_eq!(
            s.default_actions_url.as_deref(),
            Some("https://forge.example")
        );
        assert_eq!(s.github["server_url"], "https://forge.example");
        // No secrets: the context token is the job token and the runtime token.
        assert_eq!(s.extra_env["ACTIONS_RUNTIME_TOKEN"], "task-token-1");
        // No OIDC for this job: nothing exported.
        assert!(!s.extra_env.contains_key("ACTIONS_ID_TOKEN_REQUEST_TOKEN"));
        assert!(!s.extra_env.contains_key("ACTIONS_ID_TOKEN_REQUEST_URL"));
        let masks: Vec<&str> = s.extra_masks.iter().map(Secret::expose).collect();
        assert_eq!(masks, ["task-token-1"]);
    }

    #[test]
    fn needs_dispatch_inputs_and_debug() {
        let payload = "\
name: test
jobs:
  job2:
    name: job2
    needs: [job1, build]
    runs-on: linux
    steps:
      - run: uname -a
";
        let mut ctx = forgejo_context();
        ctx["event_name"] = json!("workflow_dispatch");
        ctx["event"] = json!({"inputs": {"level": "3", "dry": "true"}});
        let mut tk = task(payload, ctx);
        tk.needs = HashMap::from([
            (
                "job1".into(),
                TaskNeed {
                    outputs: HashMap::from([("artifact".into(), "a.tgz".into())]),
                    result: TaskResult::Success as i32,
                },
            ),
            (
                "build".into(),
                TaskNeed {
                    outputs: HashMap::new(),
                    result: TaskResult::Skipped as i32,
                },
            ),
        ]);
        tk.secrets
            .insert("ACTIONS_STEP_DEBUG".into(), "true".into());
        let t = translate(&tk, &opts()).unwrap();
        assert_eq!(t.runs_on, ["linux"]);
        assert_eq!(t.step_count, 1);
        assert!(t.step_debug);
        assert_eq!(
            t.spec.needs,
            json!({
                "build": {"outputs": {}, "result": "skipped"},
                "job1": {"outputs": {"artifact": "a.tgz"}, "result": "success"},
            })
        );
        assert_eq!(t.spec.inputs, json!({"level": "3", "dry": "true"}));
        assert!(t.spec.matrix.is_empty());
    }

    /// An inner job of a reusable workflow that Forgejo expanded: the
    /// caller's `with:` values are the defaults of `on.workflow_call.inputs`.
    const WORKFLOW_CALL_PAYLOAD: &str = "\
name: reusable
on:
  workflow_call:
    inputs:
      flag:
        type: boolean
        default: true
      n:
        type: number
        default: \"3\"
      greeting:
        type: string
        default: hello
  __metadata:
    workflow_call_id: 0123abcd
    workflow_call_parent: caller
    inputs:
      flag: true
jobs:
  reusable-1.job1:
    name: caller / job1
    runs-on: linux
    steps:
      - run: echo ${{ inputs.greeting }} ${{ inputs.n }} ${{ inputs.flag }}
";

    #[test]
    fn workflow_call_inputs_come_from_the_payload() {
        let mut ctx = forgejo_context();
        ctx["event_name"] = json!("workflow_call");
        let t = translate(&task(WORKFLOW_CALL_PAYLOAD, ctx), &opts()).unwrap();
        assert_eq!(t.spec.job_id, "reusable-1.job1");
        assert_eq!(t.event_name, "workflow_call");
        assert_eq!(
            t.spec.inputs,
            json!({"flag": true, "n": 3, "greeting": "hello"})
        );
        // The same payload under another event has no inputs.
        let t = translate(&task(WORKFLOW_CALL_PAYLOAD, forgejo_context()), &opts()).unwrap();
        assert_eq!(t.spec.inputs, json!({}));
    }

    #[test]
    fn dispatch_defaults_fill_in_missing_event_inputs() {
        let payload = "\
on:
  workflow_dispatch:
    inputs:
      level: {type: number, default: 1}
      dry: {type: boolean, default: false}
jobs:
  j:
    runs-on: linux
    steps: [{run: 'true'}]
";
        let mut ctx = forgejo_context();
        ctx["event_name"] = json!("workflow_dispatch");
        ctx["event"] = json!({"inputs": {"level": "5"}});
        let t = translate(&task(payload, ctx), &opts()).unwrap();
        assert_eq!(t.spec.inputs, json!({"level": "5", "dry": false}));
    }

    #[test]
    fn two_jobs_are_rejected() {
        let payload = "\
jobs:
  a:
    runs-on: linux
    steps: [{run: 'true'}]
  b:
    runs-on: linux
    steps: [{run: 'true'}]
";
        let err = translate(&task(payload, forgejo_context()), &opts()).unwrap_err();
        assert!(matches!(err, TaskError::JobCount { count: 2, .. }));
        assert_eq!(
            err.to_string(),
            "The workflow payload must hold exactly one job, it holds 2 (a, b)"
        );
    }

    #[test]
    fn invalid_yaml_reports_its_position() {
        let payload = "jobs:\n  a:\n    runs-on: linux\n    steps:\n      - run: [unclosed\n";
        let tk = task(payload, forgejo_context());
        let err = translate(&tk, &opts()).unwrap_err();
        let msg = crate::errors::Chain(&err).to_string();
        assert!(
            msg.starts_with("The workflow payload cannot be run: "),
            "{msg}"
        );
        assert!(msg.contains("line "), "{msg}");
        let listing = numbered_payload(&tk);
        assert_eq!(listing[0], "   1: jobs:");
        assert_eq!(listing.len(), 5);
        // A schema error also names its place.
        let bad = "jobs:\n  a:\n    runs-on: linux\n    stepz: []\n";
        let err = translate(&task(bad, forgejo_context()), &opts()).unwrap_err();
        let msg = crate::errors::Chain(&err).to_string();
        assert!(msg.contains("stepz") && msg.contains("line 4"), "{msg}");
    }

    #[test]
    fn matrix_with_two_combinations_is_rejected() {
        let payload = "\
jobs:
  a:
    runs-on: linux
    strategy:
      matrix:
        v: [1, 2]
    steps: [{run: 'true'}]
";
        let err = translate(&task(payload, forgejo_context()), &opts()).unwrap_err();
        assert!(matches!(err, TaskError::MatrixCount { count: 2 }), "{err}");
        assert!(matches!(
            translate(
                &proto::Task {
                    id: 1,
                    ..proto::Task::default()
                },
                &opts()
            ),
            Err(TaskError::NoPayload)
        ));
    }
}

//! Context building: the `env` context and the expression contexts
//! (`github`, `runner`, `matrix`, ...) a step's expressions see.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde_json::{Map, json};

use super::runtime::Runtime;
use super::state::JobState;
use crate::workflow::expr::{Contexts, JobStatus, Value, interpolate};
use crate::workflow::{Job, Step, Workflow};

impl Runtime<'_> {
    /// The `env` context: workflow+job env, `GITHUB_ENV` additions, then step env.
    pub(super) fn env_context(
        &self,
        state: &JobState,
        step_env: Option<&IndexMap<String, String>>,
    ) -> IndexMap<String, String> {
        let mut env = self.base_env.clone();
        for (k, v) in &state.env_files {
            env.insert(k.clone(), v.clone());
        }
        // Inside a composite action, the calling step's env.
        if let Some(scope) = state.scopes.last() {
            for (k, v) in &scope.env {
                env.insert(k.clone(), v.clone());
            }
        }
        if let Some(s) = step_env {
            for (k, v) in s {
                env.insert(k.clone(), v.clone());
            }
        }
        env
    }

    pub(super) fn contexts(&self, env: &IndexMap<String, String>, state: &JobState) -> Contexts {
        let spec = self.spec;
        let mut values = BTreeMap::new();
        let mut github = match &spec.github {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        github.insert("job".into(), json!(spec.job_id));
        github.insert("workspace".into(), json!(self.layout.workspace));
        github
            .entry("workflow")
            .or_insert_with(|| json!(spec.workflow.name.clone().unwrap_or_default()));
        if let Some(t) = spec.secrets.get("GITHUB_TOKEN") {
            github.entry("token").or_insert_with(|| json!(t.expose()));
        }
        let scope = state.scopes.last();
        if let Some(scope) = scope {
            github.insert("action_path".into(), json!(scope.info.path));
            github.insert("action_repository".into(), json!(scope.info.repository));
            github.insert("action_ref".into(), json!(scope.info.git_ref));
        }
        values.insert("github".into(), Value::Object(github));
        values.insert(
            "env".into(),
            Value::Object(env.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
        );
        values.insert(
            "vars".into(),
            Value::Object(
                spec.vars
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect(),
            ),
        );
        // A composite action has no `secrets` context (GitHub): secrets
        // reach it as inputs.
        let secrets = match scope {
            Some(_) => Map::new(),
            None => spec
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), json!(v.expose())))
                .collect(),
        };
        values.insert("secrets".into(), Value::Object(secrets));
        values.insert(
            "matrix".into(),
            Value::Object(
                spec.matrix
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
        );
        values.insert("needs".into(), spec.needs.clone());
        values.insert(
            "inputs".into(),
            match scope {
                Some(scope) => Value::Object(scope.inputs.clone()),
                None => spec.inputs.clone(),
            },
        );
        values.insert("steps".into(), Value::Object(state.steps_ctx.clone()));
        let status = match state.status {
            JobStatus::Success => "success",
            JobStatus::Failure => "failure",
            JobStatus::Cancelled => "cancelled",
        };
        let mut job = match spec.extra_contexts.get("job") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        job.insert("status".into(), json!(status));
        if let Some(c) = &self.containers {
            if let Some(j) = &c.job {
                job.insert(
                    "container".into(),
                    json!({ "id": j.id, "network": c.network }),
                );
            }
            if !c.services.is_empty() {
                let services: Map<String, Value> = c
                    .services
                    .iter()
                    .map(|(id, s)| {
                        (
                            id.clone(),
                            json!({ "id": s.id, "network": c.network, "ports": s.ports }),
                        )
                    })
                    .collect();
                job.insert("services".into(), Value::Object(services));
            }
        }
        values.insert("job".into(), Value::Object(job));
        values.insert(
            "runner".into(),
            json!({
                "os": self.runner.os.runner_os(),
                "arch": self.runner.arch.as_str(),
                "name": self.runner.name,
                "temp": self.layout.temp,
                "tool_cache": self.layout.tool_cache,
                "debug": if self.debug { "1" } else { "" },
            }),
        );
        let strategy = match spec.extra_contexts.get("strategy") {
            Some(s @ Value::Object(_)) => s.clone(),
            _ => json!({ "fail-fast": true, "job-index": 0, "job-total": 1, "max-parallel": 1 }),
        };
        values.insert("strategy".into(), strategy);
        Contexts {
            values,
            status: state.status,
            hash_files: BTreeMap::new(),
        }
    }

    pub(super) fn display_name(&self, step: &Step, ctx: &Contexts) -> String {
        if let Some(n) = &step.name {
            return interpolate(n, ctx).unwrap_or_else(|_| n.clone());
        }
        if let Some(run) = &step.run {
            let first = run.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let first = interpolate(first, ctx).unwrap_or_else(|_| first.to_string());
            return format!("Run {}", first.trim());
        }
        if let Some(u) = &step.uses {
            return format!("Run {u}");
        }
        "Step".into()
    }
}

/// A step's `run` default from the job, else the workflow.
pub(super) fn run_default(
    job: &Job,
    wf: &Workflow,
    pick: impl Fn(&crate::workflow::RunDefaults) -> Option<String>,
) -> Option<String> {
    let from = |d: &Option<crate::workflow::Defaults>| {
        d.as_ref().and_then(|d| d.run.as_ref()).and_then(&pick)
    };
    from(&job.defaults).or_else(|| from(&wf.defaults))
}

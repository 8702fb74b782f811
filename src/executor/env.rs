//! Runner variables (`GITHUB_*`, `RUNNER_*`) and the guest layout. Pure functions.

use crate::workflow::expr::{Value, to_actions_string};
use indexmap::IndexMap;

use crate::job::spec::RunnerArch;

/// Paths of one job in the guest, all absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLayout {
    pub home: String,
    /// `$HOME/work`
    pub work_root: String,
    /// `$HOME/work/<repo>/<repo>`
    pub workspace: String,
    /// `$HOME/_temp`
    pub temp: String,
    /// `$HOME/_tool`
    pub tool_cache: String,
    /// `$HOME/_temp/_solstice`: per-step directories.
    pub steps_root: String,
    /// `$HOME/_temp/_github_workflow/event.json`
    pub event_path: String,
}

/// The repository name part of `owner/name`, or `workspace`.
pub fn repo_name(github: &Value) -> String {
    github
        .get("repository")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .unwrap_or("workspace")
        .to_string()
}

impl GuestLayout {
    pub fn new(home: &str, repo: &str) -> Self {
        let home = home.trim_end_matches('/');
        let home = if home.is_empty() { "/" } else { home }.to_string();
        let j = |p: &str| {
            if home == "/" {
                format!("/{p}")
            } else {
                format!("{home}/{p}")
            }
        };
        GuestLayout {
            work_root: j("work"),
            workspace: j(&format!("work/{repo}/{repo}")),
            temp: j("_temp"),
            tool_cache: j("_tool"),
            steps_root: j("_temp/_solstice"),
            event_path: j("_temp/_github_workflow/event.json"),
            home,
        }
    }

    /// Resolves a `working-directory` or `path:` against the workspace.
    pub fn resolve(&self, dir: Option<&str>) -> String {
        match dir.map(str::trim) {
            None | Some("") | Some(".") => self.workspace.clone(),
            Some(d) if d.starts_with('/') => d.to_string(),
            Some(d) => format!("{}/{}", self.workspace, d.trim_start_matches("./")),
        }
    }
}

fn gs(github: &Value, key: &str) -> String {
    github.get(key).map(to_actions_string).unwrap_or_default()
}

/// Inputs to [`runner_variables`] that do not come from the github context.
#[derive(Debug, Clone)]
pub struct RunnerVarsInput<'a> {
    pub github: &'a Value,
    pub layout: &'a GuestLayout,
    pub job_id: &'a str,
    pub workflow_name: &'a str,
    pub runner_os: &'a str,
    pub runner_arch: RunnerArch,
    pub runner_name: &'a str,
    /// `GITHUB_ACTION`: the step id, or `__run`/`__run_N`.
    pub action: &'a str,
    pub step_dir: &'a str,
    pub debug: bool,
    /// The action the step runs (or whose composite steps it is part of).
    pub action_info: Option<&'a ActionInfo>,
}

/// `GITHUB_ACTION_PATH`, `GITHUB_ACTION_REPOSITORY` and `GITHUB_ACTION_REF`
/// (and `github.action_path`, ...) of a step that runs an action.
#[derive(Debug, Clone, Default)]
pub struct ActionInfo {
    /// The action's directory in the guest.
    pub path: String,
    /// `owner/repo`; empty for a local action.
    pub repository: String,
    /// The ref as written; empty for a local action.
    pub git_ref: String,
}

/// The variables the runner sets for every step.
pub fn runner_variables(i: &RunnerVarsInput<'_>) -> IndexMap<String, String> {
    let g = i.github;
    let mut v = IndexMap::new();
    let mut set = |k: &str, val: String| {
        v.insert(k.to_string(), val);
    };
    set("CI", "true".into());
    set("GITHUB_ACTIONS", "true".into());
    set("GITHUB_WORKSPACE", i.layout.workspace.clone());
    set("GITHUB_ENV", format!("{}/env", i.step_dir));
    set("GITHUB_OUTPUT", format!("{}/output", i.step_dir));
    set("GITHUB_PATH", format!("{}/path", i.step_dir));
    set("GITHUB_STEP_SUMMARY", format!("{}/summary", i.step_dir));
    set("GITHUB_STATE", format!("{}/state", i.step_dir));
    set("GITHUB_EVENT_PATH", i.layout.event_path.clone());
    for (var, key) in [
        ("GITHUB_RUN_ID", "run_id"),
        ("GITHUB_RUN_NUMBER", "run_number"),
        ("GITHUB_RUN_ATTEMPT", "run_attempt"),
        ("GITHUB_REPOSITORY", "repository"),
        ("GITHUB_SHA", "sha"),
        ("GITHUB_REF", "ref"),
        ("GITHUB_HEAD_REF", "head_ref"),
        ("GITHUB_BASE_REF", "base_ref"),
        ("GITHUB_SERVER_URL", "server_url"),
        ("GITHUB_EVENT_NAME", "event_name"),
        ("GITHUB_ACTOR", "actor"),
    ] {
        set(var, gs(g, key));
    }
    let repo = gs(g, "repository");
    let owner = match gs(g, "repository_owner") {
        o if o.is_empty() => repo.split('/').next().unwrap_or_default().to_string(),
        o => o,
    };
    set("GITHUB_REPOSITORY_OWNER", owner);
    let git_ref = gs(g, "ref");
    let ref_name = match gs(g, "ref_name") {
        n if n.is_empty() => git_ref
            .strip_prefix("refs/heads/")
            .or_else(|| git_ref.strip_prefix("refs/tags/"))
            .unwrap_or(&git_ref)
            .to_string(),
        n => n,
    };
    set("GITHUB_REF_NAME", ref_name);
    let ref_type = match gs(g, "ref_type") {
        t if t.is_empty() && git_ref.starts_with("refs/tags/") => "tag".to_string(),
        t if t.is_empty() && !git_ref.is_empty() => "branch".to_string(),
        t => t,
    };
    set("GITHUB_REF_TYPE", ref_type);
    let server = gs(g, "server_url");
    let api = match gs(g, "api_url") {
        a if a.is_empty() && !server.is_empty() => {
            format!("{}/api/v1", server.trim_end_matches('/'))
        }
        a => a,
    };
    set("GITHUB_API_URL", api);
    set("GITHUB_JOB", i.job_id.to_string());
    let workflow = match gs(g, "workflow") {
        w if w.is_empty() => i.workflow_name.to_string(),
        w => w,
    };
    set("GITHUB_WORKFLOW", workflow);
    set("GITHUB_ACTION", i.action.to_string());
    if let Some(a) = i.action_info {
        set("GITHUB_ACTION_PATH", a.path.clone());
        set("GITHUB_ACTION_REPOSITORY", a.repository.clone());
        set("GITHUB_ACTION_REF", a.git_ref.clone());
    }
    set("RUNNER_OS", i.runner_os.to_string());
    set("RUNNER_ARCH", i.runner_arch.as_str().to_string());
    set("RUNNER_NAME", i.runner_name.to_string());
    set("RUNNER_TEMP", i.layout.temp.clone());
    set("RUNNER_TOOL_CACHE", i.layout.tool_cache.clone());
    if i.debug {
        set("RUNNER_DEBUG", "1".into());
    }
    forgejo_copies(&mut v);
    v
}

/// The `GITHUB_*` variables that forgejo-runner also sets as `FORGEJO_*`
/// (its `withGithubEnv`), so that workflows written for Forgejo find them.
const FORGEJO_COPIES: &[&str] = &[
    "WORKFLOW",
    "RUN_ATTEMPT",
    "RUN_ID",
    "RUN_NUMBER",
    "ACTION",
    "ACTION_PATH",
    "ACTION_REPOSITORY",
    "ACTION_REF",
    "ACTOR",
    "REPOSITORY",
    "EVENT_NAME",
    "EVENT_PATH",
    "WORKSPACE",
    "SHA",
    "REF",
    "REF_NAME",
    "REF_TYPE",
    "TOKEN",
    "JOB",
    "REPOSITORY_OWNER",
    "RETENTION_DAYS",
    "BASE_REF",
    "HEAD_REF",
    "SERVER_URL",
    "API_URL",
    "WORKFLOW_REF",
    "OUTPUT",
    "STATE",
    "PATH",
    "ENV",
    "STEP_SUMMARY",
];

/// Adds `FORGEJO_<X>` beside every `GITHUB_<X>` of [`FORGEJO_COPIES`] that is set.
fn forgejo_copies(v: &mut IndexMap<String, String>) {
    for name in FORGEJO_COPIES {
        if let Some(value) = v.get(&format!("GITHUB_{name}")).cloned() {
            v.insert(format!("FORGEJO_{name}"), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn layout_and_repo_name() {
        let g = json!({"repository": "acme/widget"});
        assert_eq!(repo_name(&g), "widget");
        assert_eq!(repo_name(&json!({})), "workspace");
        let l = GuestLayout::new("/home/ci/", "widget");
        assert_eq!(l.workspace, "/home/ci/work/widget/widget");
        assert_eq!(l.temp, "/home/ci/_temp");
        assert_eq!(
            l.resolve(Some("sub/dir")),
            "/home/ci/work/widget/widget/sub/dir"
        );
        assert_eq!(l.resolve(Some("/abs")), "/abs");
        assert_eq!(l.resolve(None), l.workspace);
        assert_eq!(GuestLayout::new("/", "r").temp, "/_temp");
    }

    #[test]
    fn runner_vars_from_github_context() {
        let g = json!({
            "repository": "acme/widget", "ref": "refs/tags/v1", "sha": "abc",
            "server_url": "https://forge.example", "run_id": 42, "event_name": "push"
        });
        let l = GuestLayout::new("/h", "widget");
        let v = runner_variables(&RunnerVarsInput {
            github: &g,
            layout: &l,
            job_id: "build",
            workflow_name: "CI",
            runner_os: "illumos",
            runner_arch: RunnerArch::X64,
            runner_name: "r1",
            action: "__run",
            step_dir: "/h/_temp/_solstice/step-1",
            debug: false,
        });
        assert_eq!(v["GITHUB_REF_NAME"], "v1");
        assert_eq!(v["GITHUB_REF_TYPE"], "tag");
        assert_eq!(v["GITHUB_REPOSITORY_OWNER"], "acme");
        assert_eq!(v["GITHUB_API_URL"], "https://forge.example/api/v1");
        assert_eq!(v["GITHUB_RUN_ID"], "42");
        assert_eq!(v["GITHUB_OUTPUT"], "/h/_temp/_solstice/step-1/output");
        assert_eq!(v["RUNNER_OS"], "illumos");
        assert_eq!(v["GITHUB_WORKFLOW"], "CI");
        assert!(!v.contains_key("RUNNER_DEBUG"));
        // forgejo-runner's FORGEJO_* copies, for each GITHUB_* that is set.
        for (name, value) in [
            ("REPOSITORY", "acme/widget"),
            ("SHA", "abc"),
            ("REF_NAME", "v1"),
            ("SERVER_URL", "https://forge.example"),
            ("API_URL", "https://forge.example/api/v1"),
            ("OUTPUT", "/h/_temp/_solstice/step-1/output"),
            ("WORKSPACE", "/h/work/widget/widget"),
            ("JOB", "build"),
        ] {
            assert_eq!(v[&format!("GITHUB_{name}")], value, "{name}");
            assert_eq!(v[&format!("FORGEJO_{name}")], value, "{name}");
        }
        assert!(!v.contains_key("FORGEJO_STATE") && !v.contains_key("GITHUB_STATE"));
        assert!(
            !v.keys().any(|k| k.starts_with("GITEA_")),
            "no GITEA_ copies"
        );
    }
}

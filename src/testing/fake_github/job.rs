//! Jobs as tests write them ([`FakeGithubJob`], [`FakeStep`]) and the job
//! message GitHub's run service answers `acquirejob` with (spec §7): steps
//! as positioned TemplateTokens, `${{ }}` strings compiled into `format()`
//! expressions, contexts in the `t/d/v` PipelineContextData form.

use indexmap::IndexMap;
use serde_json::{Map, Value, json};

/// A job queued on the fake, written like a small workflow job.
#[derive(Clone)]
pub struct FakeGithubJob {
    /// `runs-on` labels: the job goes to a runner whose labels include all
    /// of them (case-insensitively, as GitHub matches).
    pub runs_on: Vec<String>,
    /// The job key (`jobs.<key>`; `system.github.job`).
    pub key: String,
    /// `jobDisplayName` (defaults to the key).
    pub display_name: Option<String>,
    /// The steps in order.
    pub steps: Vec<FakeStep>,
    /// Workflow-level `env` (first `environmentVariables` entry).
    pub workflow_env: IndexMap<String, String>,
    /// Job-level `env` (second `environmentVariables` entry).
    pub env: IndexMap<String, String>,
    /// `defaults.run.shell`.
    pub default_shell: Option<String>,
    /// `defaults.run.working-directory`.
    pub default_working_directory: Option<String>,
    /// Job `outputs` (values may hold `${{ }}`).
    pub outputs: IndexMap<String, String>,
    /// Secrets (sent as variables with `isSecret: true`).
    pub secrets: IndexMap<String, String>,
    /// `vars` context.
    pub vars: IndexMap<String, String>,
    /// Overrides and additions for the `github` context (`repository`,
    /// `sha`, `ref`, `event_name`, `event`, `server_url`, …).
    pub github: IndexMap<String, Value>,
    /// `needs` context: job → `{"result", "outputs"}` as plain JSON.
    pub needs: IndexMap<String, Value>,
    /// `matrix` context (`None` sends `"matrix": null`, as GitHub does for
    /// jobs without a matrix).
    pub matrix: Option<IndexMap<String, Value>>,
    /// `inputs` context (`None` sends `null`).
    pub inputs: Option<IndexMap<String, Value>>,
    /// The `GITHUB_TOKEN` (`ghs_…`) the job gets; random when `None`.
    pub github_token: Option<String>,
    /// `billingOwnerId`.
    pub billing_owner_id: String,
    /// `container:` as written in the workflow (an image name or a
    /// mapping), sent as the `jobContainer` token.
    pub container: Option<serde_norway::Value>,
    /// `services:` as written in the workflow (service id → container), sent
    /// as the `jobServiceContainers` token.
    pub services: Option<serde_norway::Value>,
}

impl std::fmt::Debug for FakeGithubJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets and the GITHUB_TOKEN stay out of Debug output.
        f.debug_struct("FakeGithubJob")
            .field("runs_on", &self.runs_on)
            .field("key", &self.key)
            .field("steps", &self.steps)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("github_token", &self.github_token.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl FakeGithubJob {
    /// A job for runners carrying all of `runs_on`, with no steps yet.
    pub fn new(runs_on: &[&str]) -> FakeGithubJob {
        FakeGithubJob {
            runs_on: runs_on.iter().map(|s| s.to_string()).collect(),
            key: "build".into(),
            display_name: None,
            steps: Vec::new(),
            workflow_env: IndexMap::new(),
            env: IndexMap::new(),
            default_shell: None,
            default_working_directory: None,
            outputs: IndexMap::new(),
            secrets: IndexMap::new(),
            vars: IndexMap::new(),
            github: IndexMap::new(),
            needs: IndexMap::new(),
            matrix: None,
            inputs: None,
            github_token: None,
            billing_owner_id: "U_kgDOAAAAAQ".into(),
            container: None,
            services: None,
        }
    }

    /// The user behind the run: `github.actor`, `github.actor_id` (a
    /// string, as GitHub sends it) and `github.triggering_actor` (the
    /// default is `octocat`, 583231).
    pub fn actor(self, login: &str, id: u64) -> Self {
        self.github("actor", login)
            .github("actor_id", id.to_string())
            .github("triggering_actor", login)
    }

    /// `github.triggering_actor` alone (a re-run by someone else).
    pub fn triggering_actor(self, login: &str) -> Self {
        self.github("triggering_actor", login)
    }

    /// A `pull_request` event whose head branch `feature` lives in
    /// `head_repo` (`owner/name`): from a fork when that is not the job's
    /// repository (`github.repository`, `octo-org/hello` by default), and
    /// then `event.pull_request.head.repo.fork` is true. Sets `event_name`,
    /// `event`, `ref` (`refs/pull/1/merge`), `ref_name`, `head_ref`,
    /// `base_ref`.
    pub fn pull_request(self, head_repo: &str) -> Self {
        let base_repo = self
            .github
            .get("repository")
            .and_then(Value::as_str)
            .unwrap_or("octo-org/hello")
            .to_string();
        let fork = head_repo != base_repo;
        let repo = |full: &str, fork: bool| {
            let (owner, name) = full.split_once('/').unwrap_or((full, full));
            json!({"full_name": full, "name": name, "owner": {"login": owner}, "fork": fork, "private": false})
        };
        let event = json!({
            "action": "opened",
            "number": 1,
            "pull_request": {
                "number": 1,
                "state": "open",
                "head": {"ref": "feature", "sha": "89abcdef0123456789abcdef0123456789abcdef",
                         "label": "feature", "repo": repo(head_repo, fork)},
                "base": {"ref": "main", "sha": "0123456789abcdef0123456789abcdef01234567",
                         "label": "main", "repo": repo(&base_repo, false)},
            },
            "repository": repo(&base_repo, false),
        });
        self.github("event_name", "pull_request")
            .github("event", event)
            .github("ref", "refs/pull/1/merge")
            .github("ref_name", "1/merge")
            .github("head_ref", "feature")
            .github("base_ref", "main")
    }

    /// A pull request from the fork `fork-owner/hello` ([`FakeGithubJob::pull_request`]).
    pub fn fork_pull_request(self) -> Self {
        self.pull_request("fork-owner/hello")
    }

    /// A `schedule` event (`event.schedule` the cron line).
    pub fn schedule(self) -> Self {
        self.github("event_name", "schedule")
            .github("event", json!({"schedule": "0 3 * * *"}))
    }

    /// Sets the job key (and display name unless set).
    pub fn key(mut self, key: &str) -> Self {
        self.key = key.into();
        self
    }

    /// Sets `jobDisplayName`.
    pub fn display_name(mut self, name: &str) -> Self {
        self.display_name = Some(name.into());
        self
    }

    /// Adds a `run:` step.
    pub fn run(self, script: &str) -> Self {
        self.step(FakeStep::run(script))
    }

    /// Adds a `uses:` step (`owner/repo@ref`, `owner/repo/path@ref` or `./dir`).
    pub fn uses(self, spec: &str) -> Self {
        self.step(FakeStep::uses(spec))
    }

    /// Adds a step.
    pub fn step(mut self, step: FakeStep) -> Self {
        self.steps.push(step);
        self
    }

    /// Adds a job-level `env` entry.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }

    /// Adds a workflow-level `env` entry.
    pub fn workflow_env(mut self, k: &str, v: &str) -> Self {
        self.workflow_env.insert(k.into(), v.into());
        self
    }

    /// Adds a job output (`value` may hold `${{ }}`).
    pub fn output(mut self, k: &str, value: &str) -> Self {
        self.outputs.insert(k.into(), value.into());
        self
    }

    /// Adds a secret.
    pub fn secret(mut self, k: &str, v: &str) -> Self {
        self.secrets.insert(k.into(), v.into());
        self
    }

    /// Adds a `vars` entry.
    pub fn var(mut self, k: &str, v: &str) -> Self {
        self.vars.insert(k.into(), v.into());
        self
    }

    /// Sets a `github` context field (plain JSON; objects become dictionaries).
    pub fn github(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.github.insert(k.into(), v.into());
        self
    }

    /// Adds a `needs` entry: `result` and `outputs` of an earlier job.
    pub fn need(mut self, job: &str, result: &str, outputs: &[(&str, &str)]) -> Self {
        let outs: serde_json::Map<String, Value> = outputs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        self.needs
            .insert(job.into(), json!({"result": result, "outputs": outs}));
        self
    }

    /// Sets the `matrix` context (one combination, as GitHub sends it).
    pub fn matrix(mut self, entries: &[(&str, Value)]) -> Self {
        self.matrix = Some(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        );
        self
    }

    /// Sets the `inputs` context.
    pub fn inputs(mut self, entries: &[(&str, Value)]) -> Self {
        self.inputs = Some(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        );
        self
    }

    /// Sets `defaults.run.working-directory`.
    pub fn default_working_directory(mut self, dir: &str) -> Self {
        self.default_working_directory = Some(dir.into());
        self
    }

    /// Sets the `GITHUB_TOKEN` the job gets.
    pub fn github_token(mut self, token: &str) -> Self {
        self.github_token = Some(token.into());
        self
    }

    /// Sets `defaults.run.shell`.
    /// `container: <image>`.
    pub fn container(mut self, image: &str) -> Self {
        self.container = Some(serde_norway::Value::String(image.to_string()));
        self
    }

    /// `container:` given as the YAML under the key (`image: x\nenv: …`).
    /// Panics on YAML that does not parse: this is for tests.
    pub fn container_yaml(mut self, yaml: &str) -> Self {
        self.container = Some(parse_yaml(yaml));
        self
    }

    /// `services:` given as the YAML under the key (`db:\n  image: x`).
    /// Panics on YAML that does not parse: this is for tests.
    pub fn services_yaml(mut self, yaml: &str) -> Self {
        self.services = Some(parse_yaml(yaml));
        self
    }

    pub fn default_shell(mut self, shell: &str) -> Self {
        self.default_shell = Some(shell.into());
        self
    }
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum FakeStepKind {
    /// `run:` (reference type `script`).
    Run {
        /// The script (may hold `${{ }}`).
        script: String,
        /// `shell:`.
        shell: Option<String>,
        /// `working-directory:`.
        working_directory: Option<String>,
    },
    /// `uses: owner/repo[/path]@ref` (reference type `repository`).
    Uses {
        /// `owner/repo`.
        name: String,
        /// The part after `@`.
        git_ref: String,
        /// A path inside the repository (`owner/repo/path@ref`).
        path: Option<String>,
    },
    /// `uses: ./dir` (reference type `repository`, `repositoryType: self`).
    Local {
        /// The path as written (`./dir`).
        path: String,
    },
    /// `uses: docker://image` (reference type `containerRegistry`).
    Docker {
        /// The image, without `docker://`.
        image: String,
    },
}

/// One step of a [`FakeGithubJob`].
#[derive(Debug, Clone)]
pub struct FakeStep {
    /// What it does.
    pub kind: FakeStepKind,
    /// `id:` (the `contextName`).
    pub id: Option<String>,
    /// `name:` (may hold `${{ }}`).
    pub name: Option<String>,
    /// `if:` (with or without `${{ }}`).
    pub condition: Option<String>,
    /// `continue-on-error:` (`true`/`false` or an expression).
    pub continue_on_error: Option<String>,
    /// `timeout-minutes:` (a number or an expression).
    pub timeout_minutes: Option<String>,
    /// Step `env`.
    pub env: IndexMap<String, String>,
    /// `with:` inputs of a `uses:` step.
    pub with: IndexMap<String, String>,
}

impl FakeStep {
    /// A `run:` step.
    pub fn run(script: &str) -> FakeStep {
        FakeStep::of(FakeStepKind::Run {
            script: script.into(),
            shell: None,
            working_directory: None,
        })
    }

    /// A `uses:` step: `owner/repo@ref`, `owner/repo/path@ref`, `./dir`
    /// or `docker://image`.
    pub fn uses(spec: &str) -> FakeStep {
        if let Some(image) = spec.strip_prefix("docker://") {
            return FakeStep::of(FakeStepKind::Docker {
                image: image.into(),
            });
        }
        if spec.starts_with("./") {
            return FakeStep::of(FakeStepKind::Local { path: spec.into() });
        }
        let (target, git_ref) = spec.split_once('@').unwrap_or((spec, ""));
        let mut segs = target.splitn(3, '/');
        let owner = segs.next().unwrap_or_default();
        let repo = segs.next().unwrap_or_default();
        let path = segs.next().map(str::to_string);
        FakeStep::of(FakeStepKind::Uses {
            name: format!("{owner}/{repo}"),
            git_ref: git_ref.into(),
            path,
        })
    }

    fn of(kind: FakeStepKind) -> FakeStep {
        FakeStep {
            kind,
            id: None,
            name: None,
            condition: None,
            continue_on_error: None,
            timeout_minutes: None,
            env: IndexMap::new(),
            with: IndexMap::new(),
        }
    }

    /// Sets `id:`.
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets `name:`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets `if:`.
    pub fn if_(mut self, cond: &str) -> Self {
        self.condition = Some(cond.into());
        self
    }

    /// Sets `continue-on-error:` (`"true"`, `"false"` or `${{ }}`).
    pub fn continue_on_error(mut self, v: &str) -> Self {
        self.continue_on_error = Some(v.into());
        self
    }

    /// Sets `timeout-minutes:` (a number or `${{ }}`).
    pub fn timeout_minutes(mut self, v: &str) -> Self {
        self.timeout_minutes = Some(v.into());
        self
    }

    /// Adds a step `env` entry.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }

    /// Adds a `with:` input.
    pub fn with(mut self, k: &str, v: &str) -> Self {
        self.with.insert(k.into(), v.into());
        self
    }

    /// Sets `shell:` of a `run:` step.
    pub fn shell(mut self, s: &str) -> Self {
        if let FakeStepKind::Run { shell, .. } = &mut self.kind {
            *shell = Some(s.into());
        }
        self
    }

    /// Sets `working-directory:` of a `run:` step.
    pub fn working_directory(mut self, d: &str) -> Self {
        if let FakeStepKind::Run {
            working_directory, ..
        } = &mut self.kind
        {
            *working_directory = Some(d.into());
        }
        self
    }
}

/// Everything the server decides about one job message.
pub(crate) struct MessageIds<'a> {
    pub plan_id: &'a str,
    pub job_id: &'a str,
    pub timeline_id: &'a str,
    pub step_ids: &'a [String],
    pub job_token: &'a str,
    pub github_token: &'a str,
    pub base_url: &'a str,
    pub run_service_url: &'a str,
    pub results_url: &'a str,
    pub feed_url: &'a str,
    pub run_id: u64,
}

/// The context names GitHub gives steps without `id:`: `__run`, `__run_2`,
/// `__actions_checkout`, …
pub(crate) fn context_names(steps: &[FakeStep]) -> Vec<String> {
    let mut seen: IndexMap<String, usize> = IndexMap::new();
    steps
        .iter()
        .map(|s| {
            if let Some(id) = &s.id {
                return id.clone();
            }
            let base = match &s.kind {
                FakeStepKind::Run { .. } => "__run".to_string(),
                FakeStepKind::Uses { name, .. } => format!(
                    "__{}",
                    name.chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect::<String>()
                ),
                FakeStepKind::Local { .. } => "__self".to_string(),
                FakeStepKind::Docker { image } => format!(
                    "__{}",
                    image
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect::<String>()
                ),
            };
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            if *n == 1 { base } else { format!("{base}_{n}") }
        })
        .collect()
}

/// Parses a test's YAML.
fn parse_yaml(yaml: &str) -> serde_norway::Value {
    match serde_norway::from_str(yaml) {
        Ok(v) => v,
        Err(e) => panic!("the test's YAML does not parse: {e}\n{yaml}"),
    }
}

/// Positioned tokens, one line per token (file 1).
struct Tok {
    line: u64,
}

impl Tok {
    fn pos(&mut self, ty: u8) -> Map<String, Value> {
        self.line += 1;
        let mut m = Map::new();
        m.insert("type".into(), json!(ty));
        m.insert("file".into(), json!(1));
        m.insert("line".into(), json!(self.line));
        m.insert("col".into(), json!(7));
        m
    }

    fn lit(&mut self, s: &str) -> Value {
        let mut m = self.pos(0);
        m.insert("lit".into(), json!(s));
        Value::Object(m)
    }

    /// A string as written in YAML: literal, whole expression, or format().
    fn text(&mut self, s: &str) -> Value {
        match compile(s) {
            Compiled::Literal(l) => self.lit(&l),
            Compiled::Expr(e) => {
                let mut m = self.pos(3);
                m.insert("expr".into(), json!(e));
                Value::Object(m)
            }
        }
    }

    fn map(&mut self, pairs: Vec<(Value, Value)>) -> Value {
        let mut m = self.pos(2);
        m.insert(
            "map".into(),
            Value::Array(
                pairs
                    .into_iter()
                    .map(|(k, v)| json!({"Key": k, "Value": v}))
                    .collect(),
            ),
        );
        Value::Object(m)
    }

    fn text_map(&mut self, entries: &IndexMap<String, String>) -> Value {
        let pairs = entries
            .iter()
            .map(|(k, v)| (self.lit(k), self.text(v)))
            .collect();
        self.map(pairs)
    }

    /// A YAML value as GitHub's server compiles it: strings as literals or
    /// expressions, numbers and booleans typed, lists and mappings kept.
    fn yaml(&mut self, v: &serde_norway::Value) -> Value {
        use serde_norway::Value as Y;
        match v {
            Y::Null => Value::Null,
            Y::Bool(b) => self.scalar(&b.to_string()),
            Y::Number(n) => self.scalar(&n.to_string()),
            Y::String(s) => self.text(s),
            Y::Sequence(items) => {
                let items: Vec<Value> = items.iter().map(|i| self.yaml(i)).collect();
                let mut m = self.pos(1);
                m.insert("seq".into(), Value::Array(items));
                Value::Object(m)
            }
            Y::Mapping(entries) => {
                let pairs = entries
                    .iter()
                    .map(|(k, v)| {
                        let key = match k {
                            Y::String(s) => s.clone(),
                            other => serde_norway::to_string(other)
                                .unwrap_or_default()
                                .trim()
                                .to_string(),
                        };
                        (self.lit(&key), self.yaml(v))
                    })
                    .collect();
                self.map(pairs)
            }
            Y::Tagged(t) => self.yaml(&t.value),
        }
    }

    /// `true`/`false`, a number, or an expression.
    fn scalar(&mut self, s: &str) -> Value {
        let t = s.trim();
        if t == "true" || t == "false" {
            let mut m = self.pos(5);
            m.insert("bool".into(), json!(t == "true"));
            return Value::Object(m);
        }
        if let Ok(n) = t.parse::<f64>() {
            let mut m = self.pos(6);
            m.insert("num".into(), json!(n));
            return Value::Object(m);
        }
        self.text(s)
    }
}

pub(crate) enum Compiled {
    Literal(String),
    Expr(String),
}

/// Compiles a YAML string with `${{ }}` parts as GitHub's server does: no
/// expression → literal; exactly one expression and nothing else → that
/// expression; a mix → `format('…{0}…', e0, …)` with `'` doubled and
/// braces escaped.
pub(crate) fn compile(s: &str) -> Compiled {
    let mut lits: Vec<String> = vec![String::new()];
    let mut exprs: Vec<String> = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${{") {
        let after = &rest[start + 3..];
        let Some(end) = find_close(after) else { break };
        if let Some(l) = lits.last_mut() {
            l.push_str(&rest[..start]);
        }
        exprs.push(after[..end].trim().to_string());
        lits.push(String::new());
        rest = &after[end + 2..];
    }
    if let Some(l) = lits.last_mut() {
        l.push_str(rest);
    }
    if exprs.is_empty() {
        return Compiled::Literal(lits.concat());
    }
    if exprs.len() == 1 && lits.iter().all(String::is_empty) {
        return Compiled::Expr(exprs.remove(0));
    }
    let mut fmt = String::new();
    for (i, l) in lits.iter().enumerate() {
        fmt.push_str(&l.replace('\'', "''").replace('{', "{{").replace('}', "}}"));
        if i < exprs.len() {
            fmt.push_str(&format!("{{{i}}}"));
        }
    }
    Compiled::Expr(format!("format('{fmt}', {})", exprs.join(", ")))
}

/// Index of the `}}` closing an expression, skipping quoted strings.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut quoted = false;
    while i < b.len() {
        if b[i] == b'\'' {
            quoted = !quoted;
        } else if !quoted && b[i] == b'}' && b.get(i + 1) == Some(&b'}') {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Plain JSON → PipelineContextData (`t/d/v` form).
pub(crate) fn context_data(v: &Value) -> Value {
    match v {
        Value::Array(a) if a.is_empty() => json!({"t": 1}),
        Value::Array(a) => json!({"t": 1, "a": a.iter().map(context_data).collect::<Vec<_>>()}),
        Value::Object(o) if o.is_empty() => json!({"t": 2}),
        Value::Object(o) => {
            json!({"t": 2, "d": o.iter().map(|(k, v)| json!({"k": k, "v": context_data(v)})).collect::<Vec<_>>()})
        }
        other => other.clone(),
    }
}

fn dict(entries: impl IntoIterator<Item = (String, Value)>) -> Value {
    let o: Map<String, Value> = entries.into_iter().collect();
    context_data(&Value::Object(o))
}

/// The default `github` context fields.
pub(crate) fn github_context(job: &FakeGithubJob, ids: &MessageIds<'_>) -> Map<String, Value> {
    let repo = job
        .github
        .get("repository")
        .and_then(Value::as_str)
        .unwrap_or("octo-org/hello")
        .to_string();
    let owner = repo.split('/').next().unwrap_or_default().to_string();
    let base = ids.base_url.trim_end_matches('/');
    let mut g = Map::new();
    let mut put = |k: &str, v: Value| {
        g.insert(k.to_string(), v);
    };
    put("ref", json!("refs/heads/main"));
    put("sha", json!("0123456789abcdef0123456789abcdef01234567"));
    put("repository", json!(repo));
    put("repository_owner", json!(owner));
    put("repository_owner_id", json!("1001"));
    put(
        "repositoryUrl",
        json!(format!(
            "git://{}/{repo}.git",
            base.trim_start_matches("http://")
        )),
    );
    put("run_id", json!(ids.run_id.to_string()));
    put("run_number", json!("1"));
    put("run_attempt", json!("1"));
    put("retention_days", json!("90"));
    put("artifact_cache_size_limit", json!("10"));
    put("repository_visibility", json!("private"));
    put("actor", json!("octocat"));
    put("actor_id", json!("583231"));
    put("triggering_actor", json!("octocat"));
    put("workflow", json!("CI"));
    put(
        "workflow_ref",
        json!(format!("{repo}/.github/workflows/ci.yml@refs/heads/main")),
    );
    put(
        "workflow_sha",
        json!("0123456789abcdef0123456789abcdef01234567"),
    );
    put("head_ref", json!(""));
    put("base_ref", json!(""));
    put("event_name", json!("push"));
    put("event", json!({"ref": "refs/heads/main"}));
    put("server_url", json!(base));
    put("api_url", json!(format!("{base}/api/v3")));
    put("graphql_url", json!(format!("{base}/api/graphql")));
    put("ref_name", json!("main"));
    put("ref_protected", json!(false));
    put("ref_type", json!("branch"));
    put("secret_source", json!("Actions"));
    put("repository_id", json!("2002"));
    for (k, v) in &job.github {
        g.insert(k.clone(), v.clone());
    }
    g
}

/// The step condition GitHub sends: `success()` without `if:`; a user
/// condition without a status function wrapped in `success() && (…)`.
fn condition(c: Option<&str>) -> String {
    let Some(c) = c else {
        return "success()".into();
    };
    let t = c.trim();
    let inner = t
        .strip_prefix("${{")
        .and_then(|r| r.strip_suffix("}}"))
        .unwrap_or(t)
        .trim();
    let has_status = ["success(", "failure(", "always(", "cancelled("]
        .iter()
        .any(|f| inner.contains(f));
    if has_status {
        inner.to_string()
    } else {
        format!("success() && ({inner})")
    }
}

/// The full job message of §7, as `acquirejob` returns it.
pub(crate) fn job_message(job: &FakeGithubJob, ids: &MessageIds<'_>) -> Value {
    let mut tok = Tok { line: 0 };
    let names = context_names(&job.steps);
    let mut steps = Vec::new();
    for (i, s) in job.steps.iter().enumerate() {
        let step_id = ids.step_ids.get(i).cloned().unwrap_or_default();
        let mut o = Map::new();
        o.insert("type".into(), json!("action"));
        o.insert("id".into(), json!(step_id));
        o.insert("name".into(), json!(names[i]));
        o.insert("contextName".into(), json!(names[i]));
        if let Some(n) = &s.name {
            o.insert("displayNameToken".into(), tok.text(n));
        }
        let (reference, inputs) = match &s.kind {
            FakeStepKind::Run {
                script,
                shell,
                working_directory,
            } => {
                let mut pairs = vec![(tok.lit("script"), tok.text(script))];
                if let Some(sh) = shell {
                    pairs.push((tok.lit("shell"), tok.text(sh)));
                }
                if let Some(wd) = working_directory {
                    pairs.push((tok.lit("workingDirectory"), tok.text(wd)));
                }
                (json!({"type": "script"}), tok.map(pairs))
            }
            FakeStepKind::Uses {
                name,
                git_ref,
                path,
            } => {
                let mut r = json!({"type": "repository", "name": name, "ref": git_ref, "repositoryType": "GitHub"});
                if let Some(p) = path {
                    r["path"] = json!(p);
                }
                (r, tok.text_map(&s.with))
            }
            FakeStepKind::Local { path } => (
                json!({"type": "repository", "path": path, "repositoryType": "self"}),
                tok.text_map(&s.with),
            ),
            FakeStepKind::Docker { image } => (
                json!({"type": "containerRegistry", "image": image}),
                tok.text_map(&s.with),
            ),
        };
        o.insert("reference".into(), reference);
        o.insert("inputs".into(), inputs);
        o.insert("condition".into(), json!(condition(s.condition.as_deref())));
        o.insert(
            "continueOnError".into(),
            s.continue_on_error
                .as_deref()
                .map(|v| tok.scalar(v))
                .unwrap_or(Value::Null),
        );
        o.insert(
            "timeoutInMinutes".into(),
            s.timeout_minutes
                .as_deref()
                .map(|v| tok.scalar(v))
                .unwrap_or(Value::Null),
        );
        if !s.env.is_empty() {
            o.insert("environment".into(), tok.text_map(&s.env));
        }
        steps.push(Value::Object(o));
    }

    let mut env_list = Vec::new();
    if !job.workflow_env.is_empty() {
        env_list.push(tok.text_map(&job.workflow_env));
    }
    if !job.env.is_empty() {
        env_list.push(tok.text_map(&job.env));
    }
    let mut defaults = Vec::new();
    if job.default_shell.is_some() || job.default_working_directory.is_some() {
        let mut run = Vec::new();
        if let Some(sh) = &job.default_shell {
            run.push((tok.lit("shell"), tok.lit(sh)));
        }
        if let Some(wd) = &job.default_working_directory {
            run.push((tok.lit("working-directory"), tok.lit(wd)));
        }
        let run = tok.map(run);
        let k = tok.lit("run");
        defaults.push(tok.map(vec![(k, run)]));
    }
    let job_outputs = if job.outputs.is_empty() {
        Value::Null
    } else {
        tok.text_map(&job.outputs)
    };

    let github = github_context(job, ids);
    let mut variables = Map::new();
    let mut var = |k: &str, v: &str, secret: bool| {
        variables.insert(k.into(), json!({"value": v, "isSecret": secret}));
    };
    var("system.github.token", ids.github_token, true);
    var("github_token", ids.github_token, true);
    var(
        "system.github.token.permissions",
        "{\"contents\":\"read\",\"metadata\":\"read\"}",
        false,
    );
    var("system.github.job", &job.key, false);
    var("system.phaseDisplayName", &job.key, false);
    var("system.runnerGroupName", "Default", false);
    var("system.runnerEnvironment", "self-hosted", false);
    var(
        "system.orchestrationId",
        &format!("{}.{}.__default", ids.plan_id, job.key),
        false,
    );
    var("system.culture", "en-US", false);
    var("system.jobRequestType", "RunnerJobRequest", false);
    var("system.from_run_service", "true", false);
    var("system.github.results_endpoint", ids.results_url, false);
    var("system.github.results_upload_with_sdk", "false", false);
    var(
        "system.github.launch_endpoint",
        &format!("{}/_launch", ids.base_url.trim_end_matches('/')),
        false,
    );
    var("system.workflowFilePath", ".github/workflows/ci.yml", false);
    var("DistributedTask.NewActionMetadata", "true", false);
    var("actions_uses_cache_service_v2", "true", false);
    for (k, v) in &job.secrets {
        var(k, v, true);
    }

    let vars = dict(job.vars.iter().map(|(k, v)| (k.clone(), json!(v))));
    let needs = dict(job.needs.iter().map(|(k, v)| (k.clone(), v.clone())));
    let matrix = match &job.matrix {
        None => Value::Null,
        Some(m) => dict(m.iter().map(|(k, v)| (k.clone(), v.clone()))),
    };
    let inputs = match &job.inputs {
        None => Value::Null,
        Some(m) => dict(m.iter().map(|(k, v)| (k.clone(), v.clone()))),
    };
    let display = job.display_name.clone().unwrap_or_else(|| job.key.clone());
    json!({
        "messageType": "RunnerJobRequest",
        "plan": {"planType": "actions", "planId": ids.plan_id, "version": 0, "planGroup": null, "artifactUri": null, "artifactLocation": null, "scopeIdentifier": "00000000-0000-0000-0000-000000000000", "definition": {"id": 0}, "owner": {"id": 0}},
        "timeline": {"id": ids.timeline_id, "changeId": 1, "location": null},
        "jobId": ids.job_id,
        "jobDisplayName": display,
        "jobName": "__default",
        "jobContainer": job.container.as_ref().map_or(Value::Null, |c| tok.yaml(c)),
        "jobServiceContainers": job.services.as_ref().map_or(Value::Null, |c| tok.yaml(c)),
        "jobOutputs": job_outputs,
        "requestId": 0,
        "lockedUntil": "0001-01-01T00:00:00",
        "resources": {
            "endpoints": [{
                "data": {
                    "ServerId": ids.plan_id,
                    "ServerName": "github",
                    "CacheServerUrl": format!("{}/_cache/", ids.base_url.trim_end_matches('/')),
                    "FeedStreamUrl": ids.feed_url,
                    "ResultsServiceUrl": ids.results_url,
                    "PipelinesServiceUrl": format!("{}/_pipelines/", ids.base_url.trim_end_matches('/')),
                    "ConnectivityChecks": "[]",
                },
                "name": "SystemVssConnection",
                "url": ids.run_service_url,
                "authorization": {"parameters": {"AccessToken": ids.job_token}, "scheme": "OAuth"},
                "isShared": false,
                "isReady": true,
            }],
            "repositories": [],
            "containers": [],
        },
        "contextData": {
            "github": context_data(&Value::Object(github)),
            "inputs": inputs,
            "job": {"t": 2, "d": [{"k": "check_run_id", "v": 4242.0}]},
            "matrix": matrix,
            "needs": needs,
            "strategy": {"t": 2, "d": [{"k": "fail-fast", "v": true}, {"k": "job-index", "v": 0.0}, {"k": "job-total", "v": 1.0}, {"k": "max-parallel", "v": 1.0}]},
            "vars": vars,
        },
        "variables": variables,
        "mask": [
            {"type": "regex", "value": "(?i)bearer\\s+[a-z0-9._~+/-]+=*"},
            {"type": "regex", "value": "gh[pousr]_[A-Za-z0-9_]{36,251}"},
            {"type": "regex", "value": "eyJ[A-Za-z0-9_-]+\\.eyJ[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+"},
        ],
        "steps": steps,
        "environmentVariables": env_list,
        "defaults": defaults,
        "actionsEnvironment": null,
        "fileTable": [".github/workflows/ci.yml"],
        "workspace": {},
        "billingOwnerId": job.billing_owner_id,
        "snapshot": null,
        "enableDebugger": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(s: &str) -> String {
        match compile(s) {
            Compiled::Expr(e) => e,
            Compiled::Literal(l) => format!("LIT:{l}"),
        }
    }

    #[test]
    fn compiles_like_github() {
        assert_eq!(expr("make"), "LIT:make");
        assert_eq!(expr("${{ github.sha }}"), "github.sha");
        assert_eq!(
            expr("cd \"${{ vars.X }}\" && make"),
            "format('cd \"{0}\" && make', vars.X)"
        );
        assert_eq!(
            expr("it's {x} ${{ a }}${{ b('}}') }}"),
            "format('it''s {{x}} {0}{1}', a, b('}}'))"
        );
    }

    #[test]
    fn conditions_are_wrapped_like_github() {
        assert_eq!(condition(None), "success()");
        assert_eq!(condition(Some("${{ always() }}")), "always()");
        assert_eq!(
            condition(Some("github.ref == 'refs/heads/main'")),
            "success() && (github.ref == 'refs/heads/main')"
        );
    }

    #[test]
    fn message_carries_step_options_as_tokens() {
        let job = FakeGithubJob::new(&["self-hosted"])
            .step(
                FakeStep::run("make")
                    .if_("${{ github.event_name == 'push' }}")
                    .continue_on_error("true")
                    .timeout_minutes("${{ vars.T }}")
                    .env("A", "x-${{ env.B }}")
                    .shell("bash"),
            )
            .step(FakeStep::uses("./.github/actions/local").with("who", "me"))
            .step(FakeStep::uses("octo/tools/sub@v2"))
            .output("o", "${{ steps.a.outputs.x }}")
            .default_shell("sh")
            .matrix(&[("os", json!("debian"))]);
        let steps = vec!["s1".to_string(), "s2".into(), "s3".into()];
        let ids = MessageIds {
            plan_id: "p",
            job_id: "j",
            timeline_id: "t",
            step_ids: &steps,
            job_token: "jt",
            github_token: "ghs_x",
            base_url: "http://127.0.0.1:1",
            run_service_url: "http://127.0.0.1:1/_run/9/",
            results_url: "http://127.0.0.1:1/_results/",
            feed_url: "ws://127.0.0.1:1/_ws/ingest.sock",
            run_id: 5,
        };
        let m = job_message(&job, &ids);
        let s0 = &m["steps"][0];
        assert_eq!(
            s0["condition"],
            "success() && (github.event_name == 'push')"
        );
        assert_eq!(s0["continueOnError"]["type"], 5);
        assert_eq!(s0["continueOnError"]["bool"], true);
        assert_eq!(s0["timeoutInMinutes"]["expr"], "vars.T");
        assert_eq!(
            s0["environment"]["map"][0]["Value"]["expr"],
            "format('x-{0}', env.B)"
        );
        assert_eq!(s0["inputs"]["map"][1]["Key"]["lit"], "shell");
        assert!(s0.get("displayNameToken").is_none());
        let s1 = &m["steps"][1];
        assert_eq!(s1["reference"]["repositoryType"], "self");
        assert_eq!(s1["reference"]["path"], "./.github/actions/local");
        assert_eq!(s1["inputs"]["map"][0]["Value"]["lit"], "me");
        let s2 = &m["steps"][2];
        assert_eq!(s2["reference"]["name"], "octo/tools");
        assert_eq!(s2["reference"]["path"], "sub");
        assert_eq!(s2["reference"]["ref"], "v2");
        assert_eq!(
            m["jobOutputs"]["map"][0]["Value"]["expr"],
            "steps.a.outputs.x"
        );
        assert_eq!(m["defaults"][0]["map"][0]["Key"]["lit"], "run");
        assert_eq!(m["contextData"]["matrix"]["d"][0]["v"], "debian");
        assert_eq!(m["contextData"]["inputs"], Value::Null);
        assert_eq!(m["variables"]["github_token"]["value"], "ghs_x");
        assert_eq!(
            m["resources"]["endpoints"][0]["authorization"]["parameters"]["AccessToken"],
            "jt"
        );
        // Every positioned token names file 1 of the file table.
        assert_eq!(s0["inputs"]["file"], 1);
        assert_eq!(m["fileTable"][0], ".github/workflows/ci.yml");
    }

    #[test]
    fn message_carries_containers_services_and_docker_steps_as_tokens() {
        let job = FakeGithubJob::new(&["self-hosted"])
            .container_yaml(
                "image: ${{ matrix.image }}\ncredentials:\n  username: u\n  password: ${{ secrets.P }}\nports: [80, '8080:80']\noptions: --cpus 1\n",
            )
            .services_yaml("db:\n  image: postgres:15\n  env:\n    ON: true\n")
            .step(FakeStep::uses("docker://alpine:3").with("args", "echo hi"));
        let steps = vec!["s1".to_string()];
        let ids = MessageIds {
            plan_id: "p",
            job_id: "j",
            timeline_id: "t",
            step_ids: &steps,
            job_token: "jt",
            github_token: "ghs_x",
            base_url: "http://127.0.0.1:1",
            run_service_url: "http://127.0.0.1:1/_run/9/",
            results_url: "http://127.0.0.1:1/_results/",
            feed_url: "ws://127.0.0.1:1/_ws/ingest.sock",
            run_id: 5,
        };
        let m = job_message(&job, &ids);
        let c = &m["jobContainer"];
        assert_eq!(c["type"], 2);
        assert_eq!(c["map"][0]["Key"]["lit"], "image");
        assert_eq!(c["map"][0]["Value"]["expr"], "matrix.image");
        assert_eq!(c["map"][1]["Value"]["map"][1]["Value"]["expr"], "secrets.P");
        assert_eq!(c["map"][2]["Value"]["type"], 1);
        assert_eq!(c["map"][2]["Value"]["seq"][0]["num"], 80.0);
        assert_eq!(c["map"][2]["Value"]["seq"][1]["lit"], "8080:80");
        let s = &m["jobServiceContainers"];
        assert_eq!(s["map"][0]["Key"]["lit"], "db");
        assert_eq!(
            s["map"][0]["Value"]["map"][1]["Value"]["map"][0]["Value"]["bool"],
            true
        );
        let s0 = &m["steps"][0];
        assert_eq!(s0["reference"]["type"], "containerRegistry");
        assert_eq!(s0["reference"]["image"], "alpine:3");
        assert_eq!(s0["contextName"], "__alpine_3");
        // The message reads back as the translator sees it.
        let msg =
            crate::forge::github::message::parse_message(&serde_json::to_vec(&m).unwrap()).unwrap();
        let c = msg.job_container.unwrap();
        assert!(c.get("image").is_some() && c.get("options").is_some());
        assert!(msg.job_service_containers.unwrap().get("db").is_some());
        assert_eq!(
            msg.steps[0].reference,
            crate::forge::github::message::StepReference::ContainerRegistry {
                image: "alpine:3".into()
            }
        );
    }

    #[test]
    fn actor_and_event_reach_the_jobs_github_context() {
        use crate::forge::github::message::parse_message;
        use crate::forge::github::translate::{TranslateOptions, translate};
        let job = FakeGithubJob::new(&["x"])
            .run("true")
            .actor("mona", 42)
            .triggering_actor("hubot")
            .fork_pull_request();
        let steps = vec!["s1".to_string()];
        let ids = MessageIds {
            plan_id: "p",
            job_id: "j",
            timeline_id: "t",
            step_ids: &steps,
            job_token: "jt",
            github_token: "ghs_x",
            base_url: "http://127.0.0.1:1",
            run_service_url: "http://127.0.0.1:1/_run/9/",
            results_url: "http://127.0.0.1:1/_results/",
            feed_url: "ws://127.0.0.1:1/_ws/ingest.sock",
            run_id: 5,
        };
        let m = job_message(&job, &ids);
        let msg = parse_message(m.to_string().as_bytes()).unwrap();
        let t = translate(
            &msg,
            &TranslateOptions {
                max_job_timeout: None,
            },
        )
        .unwrap();
        let g = &t.spec.github;
        assert_eq!(g["actor"], "mona");
        assert_eq!(g["actor_id"], "42");
        assert_eq!(g["triggering_actor"], "hubot");
        assert_eq!(g["event_name"], "pull_request");
        assert_eq!(
            g["event"]["pull_request"]["head"]["repo"]["full_name"],
            "fork-owner/hello"
        );
        assert_eq!(g["event"]["pull_request"]["head"]["repo"]["fork"], true);
        assert_eq!(g["repository"], "octo-org/hello");
        let same = FakeGithubJob::new(&["x"]).pull_request("octo-org/hello");
        assert_eq!(
            same.github["event"]["pull_request"]["head"]["repo"]["fork"],
            false
        );
        let sched = FakeGithubJob::new(&["x"]).schedule();
        assert_eq!(sched.github["event_name"], "schedule");
    }

    #[test]
    fn context_names_count_up() {
        let steps = vec![
            FakeStep::run("a"),
            FakeStep::run("b"),
            FakeStep::uses("actions/checkout@v4"),
            FakeStep::run("c").id("mine"),
        ];
        assert_eq!(
            context_names(&steps),
            ["__run", "__run_2", "__actions_checkout", "mine"]
        );
    }
}

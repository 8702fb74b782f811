//! Whether a failed job may keep its VM for debugging: the job asked, and
//! the operator allows it for the job's forge, repository and event. Pure.
//!
//! The job asks with `SOLSTICE_DEBUG_SSH: true` in the workflow's or the
//! job's `env:`. That alone never keeps a VM: the code under test (a fork's
//! pull request edits the workflow) can ask, only the runner's
//! configuration allows.

use std::time::Duration;

use indexmap::IndexMap;
use serde_json::Value;

use crate::config::{DEFAULT_DEBUG_SSH_EVENTS, DebugSshConfig, ForgeDebugSsh};
use crate::workflow::Scalar;

/// The variable a workflow or job sets to ask for debug SSH.
pub const ASK_VARIABLE: &str = "SOLSTICE_DEBUG_SSH";

/// True when `env` (a workflow's or job's `env:`) asks for debug SSH:
/// `SOLSTICE_DEBUG_SSH` is `true` or `1` (an expression is not evaluated).
pub fn asks(env: &IndexMap<String, Scalar>) -> bool {
    env.get(ASK_VARIABLE)
        .is_some_and(|v| matches!(v.0.trim().to_ascii_lowercase().as_str(), "true" | "1"))
}

/// What the policy needs to know about a failed job.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `owner/name`.
    pub repository: &'a str,
    /// The job's `github` context (`actor`, `actor_id`,
    /// `triggering_actor`, `event_name`, `event`).
    pub github: &'a Value,
    /// The job received secrets other than the job token.
    pub has_secrets: bool,
}

/// Who may log in, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The forge user whose keys are accepted.
    pub actor: String,
    /// The forge's number for that user, when the task gave it.
    pub actor_id: Option<String>,
    pub ttl: Duration,
}

/// The policy's answer for a job that asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed(Allowed),
    /// Not kept, with the reason for the job log.
    Refused(String),
}

/// Decides for a job that asked. `host` is the `[debug_ssh]` section,
/// `forge` the job's forge's `debug_ssh`.
pub fn decide(host: Option<&DebugSshConfig>, forge: &ForgeDebugSsh, req: &Request<'_>) -> Decision {
    let refuse = |why: &str| Decision::Refused(why.to_owned());
    let Some(host) = host.filter(|_| forge.enabled) else {
        return refuse("this runner does not offer debug SSH for this forge");
    };
    if !forge.repositories.is_empty()
        && !forge
            .repositories
            .iter()
            .any(|p| repository_matches(p, req.repository))
    {
        return refuse("this runner does not offer debug SSH for this repository");
    }
    let event = text(req.github, &["event_name"]).unwrap_or_default();
    if event == "schedule" {
        return refuse("scheduled runs are never kept for debugging");
    }
    let listed = if forge.events.is_empty() {
        DEFAULT_DEBUG_SSH_EVENTS.contains(&event)
    } else {
        forge.events.iter().any(|e| e == event)
    };
    if !listed {
        return refuse(&format!(
            "this runner does not offer debug SSH for `{event}` events"
        ));
    }
    if from_fork(req.github, req.repository) && !forge.fork_pull_requests {
        return refuse("pull requests from forks are not kept for debugging on this runner");
    }
    if req.has_secrets && !forge.with_secrets {
        return refuse(
            "the job received secrets, and this runner does not keep such jobs for debugging",
        );
    }
    let actor = match text(req.github, &["triggering_actor"]).filter(|a| !a.is_empty()) {
        Some(a) => a,
        None => text(req.github, &["actor"]).unwrap_or_default(),
    };
    if actor.is_empty() {
        return refuse("the forge did not say who started the job");
    }
    if actor.ends_with("[bot]") {
        return refuse(&format!("{actor} is a bot account"));
    }
    // The id belongs to `actor`; a re-run by someone else has no id of theirs.
    let first_actor = text(req.github, &["actor"]).unwrap_or_default();
    let actor_id = if actor != first_actor {
        None
    } else {
        match req.github.get("actor_id") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    };
    let ttl = forge.ttl.map_or(host.ttl, |t| t.min(host.ttl));
    Decision::Allowed(Allowed {
        actor: actor.to_owned(),
        actor_id,
        ttl,
    })
}

/// `owner/name` (exactly, ignoring ASCII case) or `owner/*`.
pub fn repository_matches(pattern: &str, repository: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some(owner) => repository
            .split_once('/')
            .is_some_and(|(o, _)| o.eq_ignore_ascii_case(owner)),
        None => pattern.eq_ignore_ascii_case(repository),
    }
}

/// True for a pull request event whose head is another repository, and
/// for a `workflow_run` whose triggering run's head is (when it cannot be
/// told, it counts as a fork).
fn from_fork(github: &Value, repository: &str) -> bool {
    let event = text(github, &["event_name"]).unwrap_or_default();
    let head = if event.starts_with("pull_request") {
        text(
            github,
            &["event", "pull_request", "head", "repo", "full_name"],
        )
    } else if event == "workflow_run" {
        text(
            github,
            &["event", "workflow_run", "head_repository", "full_name"],
        )
    } else {
        return false;
    };
    match head {
        Some(head) => !head.eq_ignore_ascii_case(repository),
        None => true,
    }
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host() -> DebugSshConfig {
        DebugSshConfig {
            listen: "127.0.0.1:2222".parse().unwrap(),
            public_host: "runner.example".into(),
            public_port: 2222,
            ttl: Duration::from_secs(1800),
            max_held: 1,
            idle_timeout: Duration::from_secs(600),
        }
    }

    fn on() -> ForgeDebugSsh {
        ForgeDebugSsh {
            enabled: true,
            ..ForgeDebugSsh::default()
        }
    }

    fn push(actor: &str) -> Value {
        json!({"event_name": "push", "actor": actor, "actor_id": "7", "repository": "alice/app"})
    }

    fn ask(forge: &ForgeDebugSsh, github: &Value, secrets: bool) -> Decision {
        decide(
            Some(&host()),
            forge,
            &Request {
                repository: "alice/app",
                github,
                has_secrets: secrets,
            },
        )
    }

    #[test]
    fn env_asks_only_with_true_or_one() {
        let mut env = IndexMap::new();
        assert!(!asks(&env));
        env.insert(ASK_VARIABLE.into(), Scalar("true".into()));
        assert!(asks(&env));
        env.insert(ASK_VARIABLE.into(), Scalar("1".into()));
        assert!(asks(&env));
        env.insert(ASK_VARIABLE.into(), Scalar("false".into()));
        assert!(!asks(&env));
        env.insert(ASK_VARIABLE.into(), Scalar("${{ true }}".into()));
        assert!(!asks(&env));
    }

    #[test]
    fn allowed_push_names_the_actor_and_id() {
        assert_eq!(
            ask(&on(), &push("alice"), false),
            Decision::Allowed(Allowed {
                actor: "alice".into(),
                actor_id: Some("7".into()),
                ttl: Duration::from_secs(1800)
            })
        );
    }

    #[test]
    fn operator_switches_decide() {
        let off = ForgeDebugSsh::default();
        assert!(matches!(
            ask(&off, &push("alice"), false),
            Decision::Refused(_)
        ));
        let no_host = decide(
            None,
            &on(),
            &Request {
                repository: "alice/app",
                github: &push("alice"),
                has_secrets: false,
            },
        );
        assert!(matches!(no_host, Decision::Refused(_)));
        let other_repo = ForgeDebugSsh {
            repositories: vec!["bob/*".into()],
            ..on()
        };
        assert!(
            matches!(ask(&other_repo, &push("alice"), false), Decision::Refused(r) if r.contains("repository"))
        );
        let owner = ForgeDebugSsh {
            repositories: vec!["ALICE/*".into()],
            ..on()
        };
        assert!(matches!(
            ask(&owner, &push("alice"), false),
            Decision::Allowed(_)
        ));
        let events = ForgeDebugSsh {
            events: vec!["workflow_dispatch".into()],
            ..on()
        };
        assert!(
            matches!(ask(&events, &push("alice"), false), Decision::Refused(r) if r.contains("`push`"))
        );
        assert!(
            matches!(ask(&on(), &push("alice"), true), Decision::Refused(r) if r.contains("secrets"))
        );
        let secrets_ok = ForgeDebugSsh {
            with_secrets: true,
            ..on()
        };
        assert!(matches!(
            ask(&secrets_ok, &push("alice"), true),
            Decision::Allowed(_)
        ));
    }

    #[test]
    fn forks_schedules_and_bots_are_refused() {
        let fork = json!({"event_name": "pull_request", "actor": "mallory",
            "event": {"pull_request": {"head": {"repo": {"full_name": "mallory/app"}}}}});
        assert!(matches!(ask(&on(), &fork, false), Decision::Refused(r) if r.contains("forks")));
        let allow_forks = ForgeDebugSsh {
            fork_pull_requests: true,
            ..on()
        };
        assert!(matches!(
            ask(&allow_forks, &fork, false),
            Decision::Allowed(_)
        ));
        let same = json!({"event_name": "pull_request", "actor": "alice",
            "event": {"pull_request": {"head": {"repo": {"full_name": "alice/app"}}}}});
        assert!(matches!(ask(&on(), &same, false), Decision::Allowed(_)));
        let unknown_head = json!({"event_name": "pull_request_target", "actor": "alice"});
        assert!(matches!(
            ask(&on(), &unknown_head, false),
            Decision::Refused(_)
        ));
        let all_events = ForgeDebugSsh {
            events: vec!["workflow_run".into(), "issue_comment".into()],
            ..on()
        };
        let run_of_fork = json!({"event_name": "workflow_run", "actor": "mallory",
            "event": {"workflow_run": {"head_repository": {"full_name": "mallory/app"}}}});
        assert!(
            matches!(ask(&all_events, &run_of_fork, false), Decision::Refused(r) if r.contains("forks"))
        );
        let run_here = json!({"event_name": "workflow_run", "actor": "alice",
            "event": {"workflow_run": {"head_repository": {"full_name": "alice/app"}}}});
        assert!(matches!(
            ask(&all_events, &run_here, false),
            Decision::Allowed(_)
        ));
        let comment = json!({"event_name": "issue_comment", "actor": "anyone"});
        assert!(
            matches!(ask(&on(), &comment, false), Decision::Refused(r) if r.contains("issue_comment"))
        );
        assert!(matches!(
            ask(&all_events, &comment, false),
            Decision::Allowed(_)
        ));
        let schedule = json!({"event_name": "schedule", "actor": "alice"});
        assert!(
            matches!(ask(&on(), &schedule, false), Decision::Refused(r) if r.contains("scheduled"))
        );
        assert!(
            matches!(ask(&on(), &push("renovate[bot]"), false), Decision::Refused(r) if r.contains("bot"))
        );
        assert!(matches!(
            ask(&on(), &json!({"event_name": "push"}), false),
            Decision::Refused(_)
        ));
    }

    #[test]
    fn triggering_actor_wins_and_drops_the_first_actors_id() {
        let rerun = json!({"event_name": "push", "actor": "alice", "actor_id": "7", "triggering_actor": "bob"});
        assert_eq!(
            ask(&on(), &rerun, false),
            Decision::Allowed(Allowed {
                actor: "bob".into(),
                actor_id: None,
                ttl: Duration::from_secs(1800)
            })
        );
    }

    #[test]
    fn forge_ttl_only_shortens() {
        let short = ForgeDebugSsh {
            ttl: Some(Duration::from_secs(60)),
            ..on()
        };
        assert!(
            matches!(ask(&short, &push("a"), false), Decision::Allowed(a) if a.ttl == Duration::from_secs(60))
        );
        let long = ForgeDebugSsh {
            ttl: Some(Duration::from_secs(7200)),
            ..on()
        };
        assert!(
            matches!(ask(&long, &push("a"), false), Decision::Allowed(a) if a.ttl == Duration::from_secs(1800))
        );
    }
}

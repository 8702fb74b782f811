//! The broker (spec §4): one session per runner, the long poll for
//! messages (`status=Busy` while the runner's job runs, so that
//! cancellations arrive), acknowledge, and the session's end.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::auth::{RunnerTokens, get};
use super::error::{CALL_TIMEOUT, GithubError, decode, join, send};

/// Client deadline of one long poll (the broker holds it about 50 s).
pub const POLL_TIMEOUT: Duration = Duration::from_secs(75);
/// Deadline of an acknowledge (best effort, spec §4).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The runner's status as the poll announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerStatus {
    Online,
    Busy,
}

impl RunnerStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunnerStatus::Online => "Online",
            RunnerStatus::Busy => "Busy",
        }
    }
}

/// A job reference (`RunnerJobRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequestRef {
    pub runner_request_id: String,
    pub run_service_url: String,
    pub billing_owner_id: Option<String>,
    pub should_acknowledge: bool,
}

/// A message of the long poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerMessage {
    JobRequest(JobRequestRef),
    /// `JobCancellation` for the job with this id.
    Cancellation {
        job_id: String,
    },
    /// Exchange a new runner token now.
    ForceTokenRefresh,
    /// Hosted-runner shutdown: stop without deleting the session.
    RunnerShutdown,
    /// Any other type (logged and ignored).
    Other(String),
}

/// Who the runner is, as the broker is told.
#[derive(Debug, Clone)]
pub struct Agent {
    pub id: u64,
    pub name: String,
    /// The advertised runner version (the broker refuses old ones).
    pub version: String,
    /// `Linux` (illumos guests are announced as Linux: the broker knows
    /// only Linux, macOS and Windows).
    pub os: &'static str,
    /// `X64` or `ARM64`.
    pub arch: &'static str,
}

/// One runner's broker client.
pub struct Broker {
    http: reqwest::Client,
    base: String,
    tokens: Arc<RunnerTokens>,
    agent: Agent,
}

fn string_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads a `TaskAgentMessage` (its body is a JSON string).
pub fn parse_message(body: &[u8]) -> Result<BrokerMessage, GithubError> {
    let outer: Map<String, Value> = decode("poll", body)?;
    let kind = string_of(get(&outer, "messageType")).unwrap_or_default();
    let inner: Map<String, Value> = match get(&outer, "body") {
        Some(Value::String(s)) if !s.trim().is_empty() => decode("poll", s.as_bytes())?,
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    Ok(match kind.to_ascii_lowercase().as_str() {
        "runnerjobrequest" => {
            let id = string_of(get(&inner, "runner_request_id"))
                .or_else(|| string_of(get(&inner, "id")))
                .ok_or_else(|| GithubError::Decode {
                    call: "poll",
                    detail: "a RunnerJobRequest without runner_request_id".into(),
                })?;
            let run_service_url = string_of(get(&inner, "run_service_url")).ok_or_else(|| {
                GithubError::Decode {
                    call: "poll",
                    detail: "a RunnerJobRequest without run_service_url (the legacy fallback is not supported)".into(),
                }
            })?;
            BrokerMessage::JobRequest(JobRequestRef {
                runner_request_id: id,
                run_service_url,
                billing_owner_id: string_of(get(&inner, "billing_owner_id"))
                    .filter(|s| !s.is_empty()),
                should_acknowledge: match get(&inner, "should_acknowledge") {
                    Some(Value::Bool(b)) => *b,
                    Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
                    _ => false,
                },
            })
        }
        "jobcancellation" => BrokerMessage::Cancellation {
            job_id: string_of(get(&inner, "jobId")).unwrap_or_default(),
        },
        "forcetokenrefresh" => BrokerMessage::ForceTokenRefresh,
        "runnershutdown" => BrokerMessage::RunnerShutdown,
        _ => BrokerMessage::Other(kind),
    })
}

impl Broker {
    pub fn new(
        http: reqwest::Client,
        base: &str,
        tokens: Arc<RunnerTokens>,
        agent: Agent,
    ) -> Broker {
        Broker {
            http,
            base: base.to_string(),
            tokens,
            agent,
        }
    }

    /// The runner's tokens (also used for `acquirejob`).
    pub fn tokens(&self) -> &Arc<RunnerTokens> {
        &self.tokens
    }

    /// A call with the runner token; after a 401 the token is exchanged
    /// again and the call repeated once.
    async fn call(
        &self,
        name: &'static str,
        url: &str,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, bytes::Bytes), GithubError> {
        let token = self.tokens.get().await?;
        match send(name, url, build(token.expose())).await {
            Err(e) if e.is_unauthorized() => {
                self.tokens.invalidate().await;
                let token = self.tokens.get().await?;
                send(name, url, build(token.expose())).await
            }
            other => other,
        }
    }

    /// `POST session`: a new session; returns its id.
    pub async fn create_session(&self, owner: &str) -> Result<String, GithubError> {
        let url = join(&self.base, "session");
        let body = json!({
            "sessionId": "00000000-0000-0000-0000-000000000000",
            "ownerName": owner,
            "agent": {
                "id": self.agent.id,
                "name": self.agent.name,
                "version": self.agent.version,
                "osDescription": self.agent.os,
                "ephemeral": true,
                "disableUpdate": true,
            },
            "useFipsEncryption": false,
        });
        let (_, answer) = self
            .call("create session", &url, |t| {
                self.http
                    .post(&url)
                    .bearer_auth(t)
                    .timeout(CALL_TIMEOUT)
                    .json(&body)
            })
            .await?;
        let map: Map<String, Value> = decode("create session", &answer)?;
        string_of(get(&map, "sessionId"))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| GithubError::Decode {
                call: "create session",
                detail: "no sessionId".into(),
            })
    }

    fn query(&self, session_id: &str, status: RunnerStatus) -> Vec<(&'static str, String)> {
        vec![
            ("sessionId", session_id.to_string()),
            ("status", status.as_str().to_string()),
            ("runnerVersion", self.agent.version.clone()),
            ("os", self.agent.os.to_string()),
            ("architecture", self.agent.arch.to_string()),
            ("disableUpdate", "true".to_string()),
        ]
    }

    /// One long poll: a message, or `None` when the broker had nothing.
    pub async fn get_message(
        &self,
        session_id: &str,
        status: RunnerStatus,
    ) -> Result<Option<BrokerMessage>, GithubError> {
        let url = join(&self.base, "message");
        let query = self.query(session_id, status);
        let (_, body) = self
            .call("poll", &url, |t| {
                self.http
                    .get(&url)
                    .query(&query)
                    .bearer_auth(t)
                    .timeout(POLL_TIMEOUT)
            })
            .await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse_message(&body).map(Some)
    }

    /// `POST acknowledge` for a job reference that asks for it.
    pub async fn acknowledge(
        &self,
        session_id: &str,
        status: RunnerStatus,
        runner_request_id: &str,
    ) -> Result<(), GithubError> {
        let url = join(&self.base, "acknowledge");
        let query = self.query(session_id, status);
        let body = json!({ "runnerRequestId": runner_request_id });
        self.call("acknowledge", &url, |t| {
            self.http
                .post(&url)
                .query(&query[..5])
                .bearer_auth(t)
                .timeout(ACK_TIMEOUT)
                .json(&body)
        })
        .await
        .map(|_| ())
    }

    /// `DELETE session`: ends the runner's session.
    pub async fn delete_session(&self) -> Result<(), GithubError> {
        let url = join(&self.base, "session");
        self.call("delete session", &url, |t| {
            self.http.delete(&url).bearer_auth(t).timeout(CALL_TIMEOUT)
        })
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_from_their_json_string_bodies() {
        let m = parse_message(
            br#"{"messageId": 4611686018427387904, "messageType": "RunnerJobRequest", "body": "{\"runner_request_id\":\"abc\",\"run_service_url\":\"https://run/9/\",\"billing_owner_id\":\"b\",\"should_acknowledge\":true}"}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            BrokerMessage::JobRequest(JobRequestRef {
                runner_request_id: "abc".into(),
                run_service_url: "https://run/9/".into(),
                billing_owner_id: Some("b".into()),
                should_acknowledge: true,
            })
        );
        let c = parse_message(
            br#"{"messageId":1,"MESSAGETYPE":"JobCancellation","body":"{\"jobId\":\"j\",\"timeout\":\"00:05:00\"}"}"#,
        )
        .unwrap();
        assert_eq!(c, BrokerMessage::Cancellation { job_id: "j".into() });
        assert_eq!(
            parse_message(br#"{"messageId":2,"messageType":"RunnerRefresh","body":"{}"}"#).unwrap(),
            BrokerMessage::Other("RunnerRefresh".into())
        );
    }
}

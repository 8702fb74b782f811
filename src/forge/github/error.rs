//! Errors of GitHub calls, and the one HTTP client they share.
//!
//! Every service answers errors in its own JSON shape: the broker
//! `{"errorKind", "errorMessage"}`, the run service `{"errorMessage"}`, the
//! token service `{"error", "error_description"}`, REST `{"message"}`.
//! [`GithubError::Status`] keeps the kind and the message of any of them.

use std::time::Duration;

use reqwest::StatusCode;

/// How long one ordinary call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest error text kept from an answer.
const MAX_ERROR_TEXT: usize = 300;

/// A failed GitHub call. Never holds a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GithubError {
    /// No answer: connection refused, reset, timed out.
    #[error("{call}: no answer from {host}: {detail}")]
    Transport {
        call: &'static str,
        host: String,
        detail: String,
    },
    /// An answer with an error status.
    #[error("{call}: GitHub answered HTTP {status}{}{}", kind_suffix(.kind), message_suffix(.message))]
    Status {
        call: &'static str,
        status: u16,
        /// `errorKind` (broker) or `error` (token service), when given.
        kind: Option<String>,
        message: String,
    },
    /// An answer that cannot be read.
    #[error("{call}: the answer cannot be read: {detail}")]
    Decode { call: &'static str, detail: String },
    /// Something GitHub sent (a JIT config, a key, a URL) is not usable.
    #[error("{0}")]
    Invalid(String),
    /// A local credential (key file, token file) cannot be used.
    #[error("{0}")]
    Credentials(String),
}

fn kind_suffix(kind: &Option<String>) -> String {
    kind.as_deref()
        .map(|k| format!(" ({k})"))
        .unwrap_or_default()
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl GithubError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            GithubError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error kind GitHub named (`RunnerSessionInvalid`, `invalid_client`, ...).
    pub fn kind(&self) -> Option<&str> {
        match self {
            GithubError::Status { kind, .. } => kind.as_deref(),
            _ => None,
        }
    }

    /// 401: the token is not (or no longer) accepted.
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(401)
    }

    /// The runner's registration is gone: the token service says
    /// `invalid_client`, or the broker `RunnerNotFound`.
    pub fn is_registration_gone(&self) -> bool {
        matches!(self.kind(), Some("invalid_client" | "RunnerNotFound"))
    }

    /// Worth trying again: no answer, 408, 429 or a 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            GithubError::Transport { .. } => true,
            GithubError::Status { status, .. } => {
                *status == 408 || *status == 429 || *status >= 500
            }
            _ => false,
        }
    }
}

/// The HTTP client every GitHub call uses (connection reuse, rustls).
pub fn http_client(user_agent: &str) -> Result<reqwest::Client, GithubError> {
    reqwest::Client::builder()
        .user_agent(user_agent)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| GithubError::Invalid(format!("Cannot build the HTTP client: {e}")))
}

/// The host of a URL, for error messages.
fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| u.port().map_or(h.to_string(), |p| format!("{h}:{p}")))
        })
        .unwrap_or_else(|| "GitHub".to_string())
}

/// The error of a request that got no answer.
pub fn transport(call: &'static str, url: &str, e: &reqwest::Error) -> GithubError {
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_timeout() {
        detail = format!("timed out ({detail})");
    }
    GithubError::Transport {
        call,
        host: host_of(url),
        detail,
    }
}

/// Sends a request; an answer with an error status becomes
/// [`GithubError::Status`]. Returns the status and body of a success.
pub async fn send(
    call: &'static str,
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<(StatusCode, bytes::Bytes), GithubError> {
    let response = request.send().await.map_err(|e| transport(call, url, &e))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| transport(call, url, &e))?;
    if status.is_success() {
        return Ok((status, body));
    }
    Err(status_error(call, status, &body))
}

/// The error of an answer with an error status, read from any of GitHub's
/// error shapes.
pub fn status_error(call: &'static str, status: StatusCode, body: &[u8]) -> GithubError {
    let mut kind = None;
    let mut message;
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) {
        let field = |names: &[&str]| {
            map.iter()
                .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
                .and_then(|(_, v)| v.as_str())
                .map(str::to_string)
        };
        kind = field(&["errorKind", "error", "typeKey"]);
        message = field(&["errorMessage", "error_description", "message"]).unwrap_or_default();
    } else {
        message = String::from_utf8_lossy(body).trim().to_string();
    }
    if message.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    GithubError::Status {
        call,
        status: status.as_u16(),
        kind,
        message,
    }
}

/// Reads a JSON answer.
pub fn decode<T: serde::de::DeserializeOwned>(
    call: &'static str,
    body: &[u8],
) -> Result<T, GithubError> {
    serde_json::from_slice(body).map_err(|e| GithubError::Decode {
        call,
        detail: e.to_string(),
    })
}

/// `base` (ending with `/` or not) joined with a relative `path`, keeping
/// any path prefix of the base (`https://run.example/9/` + `acquirejob`).
pub fn join(base: &str, path: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{path}")
    } else {
        format!("{base}/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shapes_of_every_service_are_read() {
        let broker = status_error(
            "poll",
            StatusCode::FORBIDDEN,
            br#"{"source":"actions-broker-listener","errorKind":"RunnerVersionTooOld","statusCode":403,"errorMessage":"Runner version v1 is deprecated"}"#,
        );
        assert_eq!(broker.kind(), Some("RunnerVersionTooOld"));
        assert!(broker.to_string().contains("deprecated"), "{broker}");
        let oauth = status_error(
            "token",
            StatusCode::BAD_REQUEST,
            br#"{"error":"invalid_client","error_description":"gone"}"#,
        );
        assert!(oauth.is_registration_gone());
        let rest = status_error("rest", StatusCode::NOT_FOUND, br#"{"message":"Not Found"}"#);
        assert_eq!(
            rest.to_string(),
            "rest: GitHub answered HTTP 404: Not Found"
        );
        let text = status_error("x", StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert!(text.is_retryable());
    }

    #[test]
    fn join_keeps_path_prefixes() {
        assert_eq!(
            join("https://r.example/9/", "acquirejob"),
            "https://r.example/9/acquirejob"
        );
        assert_eq!(
            join("https://r.example/9", "acquirejob"),
            "https://r.example/9/acquirejob"
        );
    }
}

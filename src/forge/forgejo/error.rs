//! Errors of the Connect protocol, in both styles the servers use: Forgejo's
//! real Connect codes, and Gitea's `500 unknown "rpc error: code = …"`.

use std::fmt;

/// A Connect error code (`shared/spec/forgejo-runner-protocol.md` §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    /// All codes, for tables and tests.
    pub const ALL: [Code; 16] = [
        Code::Canceled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The snake_case name used in error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// Parses a snake_case code name.
    pub fn from_name(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The HTTP status connect-go sends for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Canceled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        }
    }

    /// The code a client assumes when the error body is not Connect JSON
    /// (for example a proxy's HTML page).
    pub fn from_http_status(status: u16) -> Code {
        match status {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed call to the forge.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForgeError {
    /// The server answered with an error status.
    #[error("{procedure}: HTTP {http_status} {code}: {message}")]
    Status {
        procedure: &'static str,
        http_status: u16,
        code: Code,
        message: String,
    },
    /// No answer: connection refused, reset, TLS failure or timeout.
    #[error("{procedure}: {message}")]
    Transport {
        procedure: &'static str,
        message: String,
        timed_out: bool,
    },
    /// A 200 answer whose body is not the expected message.
    #[error("{procedure}: the server's answer could not be decoded: {message}")]
    Decode {
        procedure: &'static str,
        message: String,
    },
    /// The answer to `Ping` (which every Forgejo and Gitea with Actions
    /// answers, without credentials) proves that no runner API is at this
    /// URL: a web page, a bare 404/405/501, a 200 that is not protobuf.
    #[error("{procedure}: {answer}")]
    NotAForge {
        procedure: &'static str,
        /// What came back, e.g. `HTTP 501 (text/html): Unsupported method`.
        answer: String,
    },
}

/// Whether an answer to `Ping` proves that the URL is not a Forgejo/Gitea
/// runner API; `Some(what came back)` if so.
///
/// Real servers are connect-go handlers: success is a 200 in
/// `application/proto`, and every error is Connect JSON with a `code`.
/// Anything else came from something other than a forge's runner API,
/// except what proxies and overloaded servers send during an outage
/// (408, 429, 500, 502, 503, 504), which is worth retrying.
pub fn ping_proves_not_a_forge(
    http_status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Option<String> {
    let ct = content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_ascii_lowercase());
    if http_status == 200 {
        return match ct.as_deref() {
            Some(c) if !c.starts_with("application/proto") => Some(format!(
                "HTTP 200 with {c} instead of application/proto{}",
                snippet(c, body)
            )),
            _ => None,
        };
    }
    if is_connect_error(body) || matches!(http_status, 408 | 429 | 500 | 502 | 503 | 504) {
        return None;
    }
    let shown = ct.as_deref().unwrap_or("no content type");
    Some(format!(
        "HTTP {http_status} ({shown}){}",
        snippet(shown, body)
    ))
}

/// A Connect error body: JSON with a known `code`.
fn is_connect_error(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("code")?.as_str().map(str::to_owned))
        .is_some_and(|c| Code::from_name(&c).is_some())
}

/// `: "<first words of the body>"`, tags of a web page left out; empty for
/// an empty body.
fn snippet(content_type: &str, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = if content_type.contains("html") {
        // The page's body only: its title usually repeats the heading.
        let lower = text.to_ascii_lowercase();
        let text = match lower.find("</head>") {
            Some(i) => &text[i..],
            None => &text[..],
        };
        let mut plain = String::new();
        let mut in_tag = false;
        for c in text.chars() {
            match c {
                '<' => in_tag = true,
                '>' if in_tag => {
                    in_tag = false;
                    plain.push(' ');
                }
                c if !in_tag => plain.push(c),
                _ => {}
            }
        }
        plain
    } else {
        text.into_owned()
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut short = String::new();
    for w in words {
        if short.chars().count() + w.chars().count() > 100 {
            short.push_str(" …");
            break;
        }
        if !short.is_empty() {
            short.push(' ');
        }
        short.push_str(w);
    }
    if short.is_empty() {
        String::new()
    } else {
        format!(": \"{short}\"")
    }
}

impl ForgeError {
    /// Builds a status error from an HTTP status and the response body.
    pub fn from_response(procedure: &'static str, http_status: u16, body: &[u8]) -> ForgeError {
        #[derive(serde::Deserialize)]
        struct Body {
            code: Option<String>,
            message: Option<String>,
        }
        let parsed: Option<Body> = serde_json::from_slice(body).ok();
        let (code, message) = match parsed {
            Some(Body {
                code: Some(c),
                message,
            }) if Code::from_name(&c).is_some() => (
                Code::from_name(&c).unwrap_or(Code::Unknown),
                message.unwrap_or_default(),
            ),
            _ => {
                let text = String::from_utf8_lossy(body);
                let mut snippet: String = text.trim().chars().take(200).collect();
                if snippet.is_empty() {
                    snippet = "(empty body)".into();
                }
                (Code::from_http_status(http_status), snippet)
            }
        };
        ForgeError::Status {
            procedure,
            http_status,
            code,
            message,
        }
    }

    /// The Connect code, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            ForgeError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The runner's credentials are not (or no longer) valid: Forgejo's 401
    /// `unauthenticated`, or Gitea's 500 `unknown` with "unregistered runner"
    /// or "runner has been removed".
    pub fn is_unauthenticated(&self) -> bool {
        match self {
            ForgeError::Status { code, message, .. } => {
                *code == Code::Unauthenticated
                    || (*code == Code::Unknown
                        && (message.contains("Unauthenticated")
                            || message.contains("unregistered runner")
                            || message.contains("runner has been removed")))
            }
            _ => false,
        }
    }

    /// The server does not know this method (a bare 404 or `unimplemented`).
    pub fn is_unimplemented(&self) -> bool {
        self.code() == Some(Code::Unimplemented)
    }

    /// The log was archived (`no_more` was already accepted): Forgejo answers
    /// new rows with `already_exists`.
    pub fn is_already_exists(&self) -> bool {
        self.code() == Some(Code::AlreadyExists)
            || matches!(self, ForgeError::Status { message, .. } if message.contains("AlreadyExists") || message.contains("has been archived"))
    }

    /// The forge will never accept reports for this task (spec §1.4, "Task
    /// gone"): on `UpdateLog`/`UpdateTask`, an `internal`/`unknown` error
    /// saying the task "does not exist" (Forgejo: "get task: task with id N:
    /// resource does not exist", "update task: resource does not exist";
    /// Gitea: the same behind "rpc error: code = Internal desc = "), the
    /// task is another runner's ("invalid runner for task"), or `not_found`.
    pub fn is_task_gone(&self) -> bool {
        let ForgeError::Status {
            procedure,
            code,
            message,
            ..
        } = self
        else {
            return false;
        };
        if !matches!(*procedure, "UpdateLog" | "UpdateTask") {
            return false;
        }
        match code {
            Code::NotFound => true,
            Code::Internal | Code::Unknown => {
                message.contains("invalid runner for task")
                    || message.contains("resource does not exist")
                    || (message.contains("task") && message.contains("does not exist"))
            }
            _ => false,
        }
    }

    /// HTTP 413: the request body is larger than something in front of the
    /// forge (usually a reverse proxy) accepts. Sending the same body again
    /// never works; a smaller one may.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            ForgeError::Status {
                http_status: 413,
                ..
            }
        )
    }

    /// Worth retrying later: everything except bad credentials, bad
    /// requests, tasks the forge no longer takes reports for and a URL that
    /// is not a forge. (A 413 counts as retryable here: the log uploader
    /// retries it with a smaller body, see [`ForgeError::is_too_large`].)
    pub fn is_retryable(&self) -> bool {
        if self.is_unauthenticated() || self.is_task_gone() {
            return false;
        }
        match self {
            ForgeError::Status { code, .. } => !matches!(
                code,
                Code::InvalidArgument | Code::PermissionDenied | Code::Unimplemented
            ),
            ForgeError::Transport { .. } | ForgeError::Decode { .. } => true,
            ForgeError::NotAForge { .. } => false,
        }
    }

    /// The server answered (as opposed to no answer at all).
    pub fn is_answer(&self) -> bool {
        !matches!(self, ForgeError::Transport { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_map_to_http() {
        for c in Code::ALL {
            assert_eq!(Code::from_name(c.as_str()), Some(c));
        }
        assert_eq!(Code::Unauthenticated.http_status(), 401);
        assert_eq!(Code::Canceled.http_status(), 499);
        assert_eq!(Code::from_http_status(404), Code::Unimplemented);
        assert_eq!(Code::from_http_status(502), Code::Unavailable);
        assert_eq!(Code::from_http_status(418), Code::Unknown);
    }

    #[test]
    fn forgejo_and_gitea_styles_of_bad_credentials() {
        let forgejo = ForgeError::from_response(
            "FetchTask",
            401,
            br#"{"code":"unauthenticated","message":"unregistered runner"}"#,
        );
        assert!(forgejo.is_unauthenticated() && !forgejo.is_retryable());
        let gitea = ForgeError::from_response(
            "FetchTask",
            500,
            br#"{"code":"unknown","message":"rpc error: code = Unauthenticated desc = unregistered runner"}"#,
        );
        assert!(gitea.is_unauthenticated() && !gitea.is_retryable());
        let other = ForgeError::from_response(
            "FetchTask",
            500,
            br#"{"code":"internal","message":"request key is currently locked; retry soon"}"#,
        );
        assert!(!other.is_unauthenticated() && other.is_retryable());
    }

    #[test]
    fn non_json_bodies_map_from_the_status() {
        let e = ForgeError::from_response("Declare", 404, b"404 page not found");
        assert!(e.is_unimplemented());
        let e = ForgeError::from_response("FetchTask", 502, b"<html>Bad Gateway</html>");
        assert_eq!(e.code(), Some(Code::Unavailable));
        assert!(e.is_retryable());
        let e = ForgeError::from_response(
            "UpdateLog",
            409,
            br#"{"code":"already_exists","message":"log file has been archived"}"#,
        );
        assert!(e.is_already_exists());
    }

    #[test]
    fn tasks_the_forge_deleted_or_never_gave_us_are_gone() {
        let gone = [
            (
                "UpdateLog",
                500,
                r#"{"code":"internal","message":"get task: task with id 7: resource does not exist"}"#,
            ),
            (
                "UpdateTask",
                500,
                r#"{"code":"internal","message":"update task: resource does not exist"}"#,
            ),
            (
                "UpdateLog",
                500,
                r#"{"code":"unknown","message":"rpc error: code = Internal desc = get task: task with id 7: resource does not exist"}"#,
            ),
            (
                "UpdateTask",
                500,
                r#"{"code":"internal","message":"invalid runner for task"}"#,
            ),
            (
                "UpdateTask",
                500,
                r#"{"code":"unknown","message":"rpc error: code = Internal desc = invalid runner for task"}"#,
            ),
            (
                "UpdateLog",
                404,
                r#"{"code":"not_found","message":"no such task"}"#,
            ),
        ];
        for (procedure, status, body) in gone {
            let e = ForgeError::from_response(procedure, status, body.as_bytes());
            assert!(e.is_task_gone(), "{e}");
            assert!(!e.is_retryable(), "{e}");
        }
        let not_gone = [
            (
                "UpdateLog",
                500,
                r#"{"code":"internal","message":"database is locked"}"#,
            ),
            (
                "UpdateLog",
                409,
                r#"{"code":"already_exists","message":"log file has been archived"}"#,
            ),
            ("UpdateLog", 404, "404 page not found"),
            (
                "FetchTask",
                500,
                r#"{"code":"internal","message":"task with id 7: resource does not exist"}"#,
            ),
        ];
        for (procedure, status, body) in not_gone {
            let e = ForgeError::from_response(procedure, status, body.as_bytes());
            assert!(!e.is_task_gone(), "{e}");
        }
    }

    #[test]
    fn a_proxy_413_keeps_its_status() {
        let page = b"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
        let e = ForgeError::from_response("UpdateLog", 413, page);
        assert!(e.is_too_large(), "{e}");
        assert_eq!(e.code(), Some(Code::Unknown));
        assert!(!e.is_task_gone());
        let other = ForgeError::from_response("UpdateLog", 502, b"bad gateway");
        assert!(!other.is_too_large());
    }

    #[test]
    fn ping_answers_that_prove_the_url_is_not_a_forge() {
        let proto = Some("application/proto");
        // What forges send: a protobuf 200, or Connect JSON errors.
        assert_eq!(ping_proves_not_a_forge(200, proto, b"\x0a\x02hi"), None);
        assert_eq!(ping_proves_not_a_forge(200, None, b""), None);
        let connect = br#"{"code":"unavailable","message":"maintenance"}"#;
        for status in [503, 404, 401, 501] {
            assert_eq!(
                ping_proves_not_a_forge(status, Some("application/json"), connect),
                None,
                "{status}"
            );
        }
        // Outages: proxies' pages while the forge is down, rate limits.
        for status in [408, 429, 500, 502, 503, 504] {
            assert_eq!(
                ping_proves_not_a_forge(status, Some("text/html"), b"<h1>Bad Gateway</h1>"),
                None,
                "{status}"
            );
        }
        // A plain web server (python3 -m http.server answers POST with 501).
        let page = b"<!DOCTYPE HTML>\n<html><head><title>Error response</title></head>\n<body><h1>Error response</h1><p>Error code: 501</p><p>Message: Unsupported method ('POST').</p></body></html>";
        let answer = ping_proves_not_a_forge(501, Some("text/html;charset=utf-8"), page).unwrap();
        assert_eq!(
            answer,
            "HTTP 501 (text/html): \"Error response Error code: 501 Message: Unsupported method ('POST').\""
        );
        let answer =
            ping_proves_not_a_forge(404, Some("text/plain"), b"404 page not found\n").unwrap();
        assert_eq!(answer, "HTTP 404 (text/plain): \"404 page not found\"");
        let answer = ping_proves_not_a_forge(405, None, b"").unwrap();
        assert_eq!(answer, "HTTP 405 (no content type)");
        // A 200 that is not protobuf: a login page, a single-page app, JSON.
        let answer =
            ping_proves_not_a_forge(200, Some("text/html"), b"<html>Sign in</html>").unwrap();
        assert_eq!(
            answer,
            "HTTP 200 with text/html instead of application/proto: \"Sign in\""
        );
        assert!(ping_proves_not_a_forge(200, Some("application/json"), b"{}").is_some());
        // Long bodies are cut.
        let long = "word ".repeat(100);
        let answer = ping_proves_not_a_forge(403, Some("text/plain"), long.as_bytes()).unwrap();
        assert!(answer.ends_with(" …\""), "{answer}");
        assert!(answer.len() < 140, "{answer}");
    }
}

//! The Connect RPC client of the Forgejo/Gitea runner protocol
//! (`shared/spec/forgejo-runner-protocol.md` §1): unary POSTs of binary
//! protobuf below `<instance>/api/actions/`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};

use super::ForgeError;
use super::proto::{
    DeclareRequest, DeclareResponse, FetchTaskRequest, FetchTaskResponse, PingRequest,
    PingResponse, RegisterRequest, RegisterResponse, UpdateLogRequest, UpdateLogResponse,
    UpdateTaskRequest, UpdateTaskResponse,
};
use crate::secret::Secret;

/// Default overall timeout of one call (forgejo-runner's `FORGEJO_CLIENT_TIMEOUT`).
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a FetchTask request may outlive its Connect deadline, so that a
/// server answering right at the deadline is still heard.
pub const FETCH_DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// Time allowed to open the TCP (and TLS) connection, at most the overall timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

const HEADER_UUID: &str = "x-runner-uuid";
const HEADER_TOKEN: &str = "x-runner-token";
const HEADER_REQUEST_KEY: &str = "x-runner-request-key";
const HEADER_PROTOCOL_VERSION: &str = "connect-protocol-version";
const HEADER_TIMEOUT_MS: &str = "connect-timeout-ms";
const CONTENT_TYPE_PROTO: &str = "application/proto";
const PING_PATH: &str = "ping.v1.PingService/Ping";

/// A runner's identity at a forge: the UUID and the secret token that
/// authenticate every RunnerService call except `Register`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uuid: String,
    pub token: Secret,
}

/// Settings of the HTTP client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Overall timeout of one call (connect, send, receive). FetchTask uses
    /// its own deadline instead.
    pub http_timeout: Duration,
    /// `User-Agent` header.
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            http_timeout: DEFAULT_HTTP_TIMEOUT,
            user_agent: format!("solstice/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Prepared authentication headers; the token's value is marked sensitive so
/// that the HTTP stack never prints it.
struct Auth {
    credentials: Credentials,
    uuid: Result<HeaderValue, ()>,
    token: Result<HeaderValue, ()>,
}

/// A client of one forge instance. Cheap to clone: the connection pool and the
/// URLs are shared.
#[derive(Clone)]
pub struct ForgejoClient {
    http: reqwest::Client,
    /// The instance URL without a trailing `/`.
    instance_url: Arc<str>,
    /// `instance_url` + `/api/actions`.
    base: Arc<str>,
    auth: Option<Arc<Auth>>,
}

impl fmt::Debug for ForgejoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForgejoClient")
            .field("instance_url", &self.instance_url)
            .field(
                "runner_uuid",
                &self.auth.as_ref().map(|a| a.credentials.uuid.as_str()),
            )
            .finish_non_exhaustive()
    }
}

/// Whether a call sends the runner's credentials.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Authn {
    None,
    Runner,
}

/// Why a forge URL is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("The forge URL {url:?} is not a valid URL ({problem})")]
    Invalid { url: String, problem: String },
    #[error("The forge URL {0:?} must start with https:// (or http://)")]
    Scheme(String),
    #[error("The forge URL {0:?} has no host name")]
    NoHost(String),
    #[error("The forge URL must not hold a user name or password: remove them from the URL")]
    UserInfo,
    #[error("The forge URL {0:?} must not have a query (?…) or fragment (#…)")]
    QueryOrFragment(String),
}

/// Checks an instance URL and returns it without trailing `/`, plus the base
/// URL of the runner API. Pure.
pub fn api_base(instance_url: &str) -> Result<(String, String), UrlError> {
    let trimmed = instance_url.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(trimmed).map_err(|e| UrlError::Invalid {
        url: trimmed.to_string(),
        problem: e.to_string(),
    })?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(UrlError::Scheme(trimmed.to_string()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost(trimmed.to_string()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(UrlError::UserInfo);
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(UrlError::QueryOrFragment(trimmed.to_string()));
    }
    Ok((trimmed.to_string(), format!("{trimmed}/api/actions")))
}

/// A header value for a credential; `Err` when it holds characters HTTP
/// headers cannot carry.
fn header_value(value: &str, sensitive: bool) -> Result<HeaderValue, ()> {
    let mut v = HeaderValue::from_str(value).map_err(|_| ())?;
    v.set_sensitive(sensitive);
    Ok(v)
}

/// The message of a reqwest error with its causes, without the URL's
/// repetition of each layer.
pub(super) fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

fn transport(procedure: &'static str, e: &reqwest::Error) -> ForgeError {
    ForgeError::Transport {
        procedure,
        message: describe(e),
        timed_out: e.is_timeout(),
    }
}

impl ForgejoClient {
    /// A client of the instance at `instance_url` (`https://host` or
    /// `https://host/sub/path/`). Fails on a URL that is not http(s).
    pub fn new(instance_url: &str, opts: &ClientOptions) -> Result<Self, ForgeError> {
        let (instance_url, base) = api_base(instance_url).map_err(|e| ForgeError::Transport {
            procedure: "client",
            message: e.to_string(),
            timed_out: false,
        })?;
        let http = reqwest::Client::builder()
            .user_agent(opts.user_agent.clone())
            .timeout(opts.http_timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(opts.http_timeout))
            .gzip(true)
            .build()
            .map_err(|e| transport("client", &e))?;
        Ok(Self {
            http,
            instance_url: instance_url.into(),
            base: base.into(),
            auth: None,
        })
    }

    /// The same client, authenticating as the given runner.
    pub fn with_credentials(&self, creds: Credentials) -> Self {
        let auth = Auth {
            uuid: header_value(&creds.uuid, false),
            token: header_value(creds.token.expose(), true),
            credentials: creds,
        };
        Self {
            auth: Some(Arc::new(auth)),
            ..self.clone()
        }
    }

    /// The instance URL, without a trailing `/`.
    pub fn instance_url(&self) -> &str {
        &self.instance_url
    }

    /// The credentials this client authenticates with, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.auth.as_ref().map(|a| &a.credentials)
    }

    /// `ping.v1.PingService/Ping` (no authentication).
    pub async fn ping(&self, data: &str) -> Result<PingResponse, ForgeError> {
        let req = PingRequest { data: data.into() };
        self.call("Ping", PING_PATH, &req, Authn::None, HeaderMap::new(), None)
            .await
    }

    /// `Register`: exchanges a registration token for runner credentials (no
    /// runner authentication).
    pub async fn register(&self, req: RegisterRequest) -> Result<RegisterResponse, ForgeError> {
        self.runner_call("Register", &req, Authn::None, HeaderMap::new(), None)
            .await
    }

    /// `Declare`: tells the server this runner's version and labels.
    pub async fn declare(&self, req: DeclareRequest) -> Result<DeclareResponse, ForgeError> {
        self.runner_call("Declare", &req, Authn::Runner, HeaderMap::new(), None)
            .await
    }

    /// `FetchTask` with the idempotency key `request_key` and the Connect
    /// deadline `deadline`; the request gives up shortly after the deadline.
    pub async fn fetch_task(
        &self,
        req: FetchTaskRequest,
        request_key: &str,
        deadline: Duration,
    ) -> Result<FetchTaskResponse, ForgeError> {
        let mut extra = HeaderMap::new();
        let key = header_value(request_key, false).map_err(|()| ForgeError::Transport {
            procedure: "FetchTask",
            message: "The request key holds characters not allowed in an HTTP header".into(),
            timed_out: false,
        })?;
        extra.insert(HEADER_REQUEST_KEY, key);
        extra.insert(
            HEADER_TIMEOUT_MS,
            HeaderValue::from(connect_timeout_ms(deadline)),
        );
        self.runner_call(
            "FetchTask",
            &req,
            Authn::Runner,
            extra,
            Some(deadline + FETCH_DEADLINE_MARGIN),
        )
        .await
    }

    /// `UpdateTask`: reports the task state; the answer carries the server's
    /// result (the cancellation signal) and the stored output keys.
    pub async fn update_task(
        &self,
        req: UpdateTaskRequest,
    ) -> Result<UpdateTaskResponse, ForgeError> {
        self.runner_call("UpdateTask", &req, Authn::Runner, HeaderMap::new(), None)
            .await
    }

    /// `UpdateLog`: appends log rows; the answer says how many the server holds.
    pub async fn update_log(&self, req: UpdateLogRequest) -> Result<UpdateLogResponse, ForgeError> {
        self.runner_call("UpdateLog", &req, Authn::Runner, HeaderMap::new(), None)
            .await
    }

    async fn runner_call<Req, Resp>(
        &self,
        method: &'static str,
        req: &Req,
        authn: Authn,
        extra: HeaderMap,
        timeout: Option<Duration>,
    ) -> Result<Resp, ForgeError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let path = format!("runner.v1.RunnerService/{method}");
        self.call(method, &path, req, authn, extra, timeout).await
    }

    /// One Connect unary call.
    async fn call<Req, Resp>(
        &self,
        procedure: &'static str,
        path: &str,
        req: &Req,
        authn: Authn,
        extra: HeaderMap,
        timeout: Option<Duration>,
    ) -> Result<Resp, ForgeError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let mut headers = extra;
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE_PROTO),
        );
        headers.insert(HEADER_PROTOCOL_VERSION, HeaderValue::from_static("1"));
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        if authn == Authn::Runner {
            let Some(auth) = &self.auth else {
                return Err(ForgeError::Transport {
                    procedure,
                    message: "No runner credentials: register the runner first".into(),
                    timed_out: false,
                });
            };
            let (Ok(uuid), Ok(token)) = (&auth.uuid, &auth.token) else {
                return Err(ForgeError::Transport {
                    procedure,
                    message:
                        "The runner UUID or token holds characters not allowed in an HTTP header"
                            .into(),
                    timed_out: false,
                });
            };
            headers.insert(HEADER_UUID, uuid.clone());
            headers.insert(HEADER_TOKEN, token.clone());
        }

        let url = format!("{}/{}", self.base, path);
        let mut request = self
            .http
            .post(url)
            .headers(headers)
            .body(req.encode_to_vec());
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        tracing::trace!(procedure, "forge call");
        let response = request.send().await.map_err(|e| transport(procedure, &e))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        let body = response
            .bytes()
            .await
            .map_err(|e| transport(procedure, &e))?;
        // Ping is the call every forge answers: an answer that no forge
        // would give proves that the URL is wrong, which retrying cannot fix.
        if path == PING_PATH
            && let Some(answer) =
                super::error::ping_proves_not_a_forge(status, content_type.as_deref(), &body)
        {
            return Err(ForgeError::NotAForge { procedure, answer });
        }
        if status != 200 {
            return Err(ForgeError::from_response(procedure, status, &body));
        }
        check_success_content_type(procedure, content_type.as_deref())?;
        Resp::decode(body.as_ref()).map_err(|e| ForgeError::Decode {
            procedure,
            message: e.to_string(),
        })
    }
}

/// The `Connect-Timeout-Ms` value of a deadline (at least 1 ms).
fn connect_timeout_ms(deadline: Duration) -> u64 {
    u64::try_from(deadline.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, 9_999_999_999)
}

/// A 200 answer in a web page or JSON is not a protobuf message: most likely
/// the URL points at something other than the forge (a login page, a proxy).
fn check_success_content_type(
    procedure: &'static str,
    content_type: Option<&str>,
) -> Result<(), ForgeError> {
    match content_type {
        Some(ct) if ct.starts_with("text/") || ct.starts_with("application/json") => {
            Err(ForgeError::Decode {
                procedure,
                message: format!(
                    "the server answered with {ct} instead of application/proto; check that the forge URL points at Forgejo or Gitea"
                ),
            })
        }
        _ => Ok(()),
    }
}

#[async_trait::async_trait]
impl super::ReportApi for ForgejoClient {
    async fn update_log(&self, req: UpdateLogRequest) -> Result<UpdateLogResponse, ForgeError> {
        ForgejoClient::update_log(self, req).await
    }

    async fn update_task(&self, req: UpdateTaskRequest) -> Result<UpdateTaskResponse, ForgeError> {
        ForgejoClient::update_task(self, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_keeps_sub_paths_and_drops_trailing_slashes() {
        assert_eq!(
            api_base("https://host/forgejo/").unwrap(),
            (
                "https://host/forgejo".to_string(),
                "https://host/forgejo/api/actions".to_string()
            )
        );
        assert_eq!(
            api_base("http://127.0.0.1:3000").unwrap().1,
            "http://127.0.0.1:3000/api/actions"
        );
        assert_eq!(
            api_base("https://codeberg.org//").unwrap().1,
            "https://codeberg.org/api/actions"
        );
    }

    #[test]
    fn non_http_urls_are_rejected_with_a_clear_message() {
        let e = api_base("ftp://host").unwrap_err().to_string();
        assert!(e.contains("https://"), "{e}");
        let e = api_base("codeberg.org").unwrap_err().to_string();
        assert!(e.contains("not a valid URL"), "{e}");
        let e = api_base("https://user:pw@host").unwrap_err().to_string();
        assert!(
            e.contains("user name or password") && !e.contains("pw"),
            "{e}"
        );
        assert!(api_base("https://host/?x=1").is_err());
        let e = ForgejoClient::new("file:///etc", &ClientOptions::default()).unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
    }

    #[test]
    fn timeout_header_is_the_deadline_in_ms() {
        assert_eq!(connect_timeout_ms(Duration::from_secs(30)), 30_000);
        assert_eq!(connect_timeout_ms(Duration::from_micros(10)), 1);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = ForgejoClient::new("https://host", &ClientOptions::default())
            .unwrap()
            .with_credentials(Credentials {
                uuid: "u-1".into(),
                token: Secret::new("s3cr3t-token"),
            });
        let text = format!("{c:?} {:?}", c.credentials());
        assert!(text.contains("u-1") && !text.contains("s3cr3t"), "{text}");
        assert!(
            c.auth
                .as_ref()
                .unwrap()
                .token
                .as_ref()
                .unwrap()
                .is_sensitive()
        );
    }

    #[test]
    fn html_success_answers_are_decode_errors() {
        assert!(check_success_content_type("Ping", Some("text/html; charset=utf-8")).is_err());
        assert!(check_success_content_type("Ping", Some("application/proto")).is_ok());
        assert!(check_success_content_type("Ping", None).is_ok());
    }
}

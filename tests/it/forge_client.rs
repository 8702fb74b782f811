//! The Connect client and the credential flows, checked on the wire against a
//! tiny local HTTP server that records every request and answers from a
//! per-test function.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use prost::Message;
use solstice::config::{CredentialSource, ForgeConfig};
use solstice::forge::forgejo::client::{ClientOptions, Credentials, ForgejoClient};
use solstice::forge::forgejo::credentials::{CredentialError, StoredCredentials, obtain};
use solstice::forge::forgejo::proto::{
    DeclareRequest, DeclareResponse, FetchTaskRequest, FetchTaskResponse, LogRow, RegisterRequest,
    RegisterResponse, Runner, Task, UpdateLogRequest, UpdateLogResponse, UpdateTaskRequest,
    UpdateTaskResponse,
};
use solstice::forge::forgejo::{Code, ForgeError, ReportApi};
use solstice::secret::Secret;

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The RPC method: the last path segment.
    fn method_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap()
    }
}

type Responder = dyn Fn(&Recorded) -> Response + Send + Sync;

struct ServerState {
    log: Mutex<Vec<Recorded>>,
    respond: Box<Responder>,
}

struct TestServer {
    url: String,
    state: Arc<ServerState>,
}

impl TestServer {
    async fn start(respond: impl Fn(&Recorded) -> Response + Send + Sync + 'static) -> Self {
        let state = Arc::new(ServerState {
            log: Mutex::new(Vec::new()),
            respond: Box::new(respond),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestServer {
            url: format!("http://{addr}"),
            state,
        }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state.log.lock().unwrap().clone()
    }

    fn calls_to(&self, method: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method_name() == method)
            .collect()
    }

    fn only_request(&self) -> Recorded {
        let all = self.requests();
        assert_eq!(all.len(), 1, "{all:?}");
        all.into_iter().next().unwrap()
    }
}

async fn handle(State(state): State<Arc<ServerState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20).await.unwrap().to_vec();
    let rec = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
    };
    let resp = (state.respond)(&rec);
    state.log.lock().unwrap().push(rec);
    resp
}

fn proto(msg: &impl Message) -> Response {
    Response::builder()
        .status(200)
        .header("content-type", "application/proto")
        .body(Body::from(msg.encode_to_vec()))
        .unwrap()
}

fn raw(status: u16, content_type: &str, body: &[u8]) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Body::from(body.to_vec()))
        .unwrap()
}

fn connect_error(status: u16, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    raw(status, "application/json", body.as_bytes())
}

fn client(url: &str) -> ForgejoClient {
    ForgejoClient::new(url, &ClientOptions::default()).unwrap()
}

fn authed(url: &str) -> ForgejoClient {
    client(url).with_credentials(Credentials {
        uuid: "11111111-2222-3333-4444-555555555555".into(),
        token: Secret::new("0123456789abcdef0123456789abcdef01234567"),
    })
}

/// Checks the headers every Connect call carries.
fn assert_connect_request(r: &Recorded, path: &str) {
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, path);
    assert_eq!(r.header("content-type"), Some("application/proto"));
    assert_eq!(r.header("connect-protocol-version"), Some("1"));
    assert_eq!(r.header("accept-encoding"), Some("gzip"));
    let ua = r.header("user-agent").unwrap();
    assert!(ua.starts_with("solstice/"), "{ua}");
}

fn has_auth(r: &Recorded) -> bool {
    let uuid = r.header("x-runner-uuid").is_some();
    let token = r.header("x-runner-token").is_some();
    assert_eq!(uuid, token, "uuid and token headers come together");
    uuid
}

#[tokio::test]
async fn ping_posts_proto_without_credentials() {
    let server = TestServer::start(|r| {
        let req = solstice::forge::forgejo::proto::PingRequest::decode(r.body.as_slice()).unwrap();
        proto(&solstice::forge::forgejo::proto::PingResponse {
            data: format!("Hello, {}!", req.data),
        })
    })
    .await;
    let resp = authed(&server.url).ping("runner-1").await.unwrap();
    assert_eq!(resp.data, "Hello, runner-1!");
    let r = server.only_request();
    assert_connect_request(&r, "/api/actions/ping.v1.PingService/Ping");
    assert_eq!(
        r.body,
        [0x0a, 0x08, b'r', b'u', b'n', b'n', b'e', b'r', b'-', b'1']
    );
    assert!(!has_auth(&r), "Ping must not carry runner credentials");
    assert!(r.header("connect-timeout-ms").is_none());
}

#[tokio::test]
async fn sub_path_instances_keep_their_prefix() {
    let server = TestServer::start(|_| proto(&UpdateLogResponse { ack_index: 0 })).await;
    let c = authed(&format!("{}/forgejo/", server.url));
    assert_eq!(c.instance_url(), format!("{}/forgejo", server.url));
    c.update_log(UpdateLogRequest::default()).await.unwrap();
    assert_eq!(
        server.only_request().path,
        "/forgejo/api/actions/runner.v1.RunnerService/UpdateLog"
    );
}

#[tokio::test]
async fn fetch_task_sends_key_deadline_credentials_and_capacity() {
    let server = TestServer::start(|_| {
        raw(200, "application/proto", &[0x10, 0x07]) // tasks_version 7, no task
    })
    .await;
    let req = FetchTaskRequest {
        tasks_version: 0,
        task_capacity: Some(2),
    };
    let resp = authed(&server.url)
        .fetch_task(req, "req-key-1", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(resp.tasks_version, 7);
    assert!(resp.task.is_none());
    let r = server.only_request();
    assert_connect_request(&r, "/api/actions/runner.v1.RunnerService/FetchTask");
    assert_eq!(r.body, [0x10, 0x02]);
    assert_eq!(r.header("connect-timeout-ms"), Some("5000"));
    assert_eq!(r.header("x-runner-request-key"), Some("req-key-1"));
    assert_eq!(
        r.header("x-runner-uuid"),
        Some("11111111-2222-3333-4444-555555555555")
    );
    assert_eq!(
        r.header("x-runner-token"),
        Some("0123456789abcdef0123456789abcdef01234567")
    );
}

#[tokio::test]
async fn register_goes_without_credentials_and_the_others_with_them() {
    let server = TestServer::start(|r| match r.method_name() {
        "Register" => proto(&RegisterResponse {
            runner: Some(Runner {
                id: 3,
                uuid: "u".into(),
                token: "t".into(),
                ..Default::default()
            }),
        }),
        _ => raw(200, "application/proto", b""),
    })
    .await;
    let c = authed(&server.url);
    let reg = c
        .register(RegisterRequest {
            name: "r".into(),
            token: "regtoken".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reg.runner.unwrap().id, 3);
    c.declare(DeclareRequest::default()).await.unwrap();
    c.update_task(UpdateTaskRequest::default()).await.unwrap();
    c.update_log(UpdateLogRequest::default()).await.unwrap();
    let reqs = server.requests();
    let seen: Vec<(&str, bool)> = reqs
        .iter()
        .map(|r| (r.method_name(), has_auth(r)))
        .collect();
    assert_eq!(
        seen,
        [
            ("Register", false),
            ("Declare", true),
            ("UpdateTask", true),
            ("UpdateLog", true)
        ]
    );
    for r in &reqs {
        assert_connect_request(
            r,
            &format!("/api/actions/runner.v1.RunnerService/{}", r.method_name()),
        );
        assert!(r.header("x-runner-request-key").is_none());
        assert!(r.header("connect-timeout-ms").is_none());
    }
}

#[tokio::test]
async fn runner_calls_without_credentials_fail_before_sending() {
    let server = TestServer::start(|_| raw(200, "application/proto", b"")).await;
    let e = client(&server.url)
        .declare(DeclareRequest::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("No runner credentials"), "{e}");
    assert!(server.requests().is_empty());
}

fn big_task() -> FetchTaskResponse {
    let mut task = Task {
        id: 42,
        workflow_payload: Some("jobs:\n  j:\n    runs-on: linux\n".repeat(200).into_bytes()),
        ..Default::default()
    };
    task.vars.insert("V".into(), "x".repeat(3000));
    FetchTaskResponse {
        task: Some(task),
        tasks_version: 9,
        additional_tasks: vec![],
    }
}

#[tokio::test]
async fn gzip_answers_are_decoded() {
    let server = TestServer::start(|_| {
        let plain = big_task().encode_to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let body = gz.finish().unwrap();
        assert_ne!(body, plain);
        Response::builder()
            .status(200)
            .header("content-type", "application/proto")
            .header("content-encoding", "gzip")
            .body(Body::from(body))
            .unwrap()
    })
    .await;
    let resp = authed(&server.url)
        .fetch_task(FetchTaskRequest::default(), "k", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(resp, big_task());
}

#[tokio::test]
async fn an_empty_200_body_is_the_default_message() {
    let server = TestServer::start(|_| raw(200, "application/proto", b"")).await;
    let resp = authed(&server.url)
        .update_log(UpdateLogRequest {
            task_id: 1,
            index: 0,
            rows: vec![LogRow {
                time: None,
                content: "hello".into(),
            }],
            no_more: false,
        })
        .await
        .unwrap();
    assert_eq!(resp, UpdateLogResponse { ack_index: 0 });
    let r = server.only_request();
    let sent = UpdateLogRequest::decode(r.body.as_slice()).unwrap();
    assert_eq!(sent.rows[0].content, "hello");
}

#[tokio::test]
async fn an_undecodable_200_body_is_a_decode_error() {
    let server = TestServer::start(|r| match r.method_name() {
        "UpdateTask" => raw(200, "application/proto", &[0xff, 0xff, 0xff]),
        _ => raw(200, "text/html", b"<html>Sign in</html>"),
    })
    .await;
    let c = authed(&server.url);
    let e = c
        .update_task(UpdateTaskRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ForgeError::Decode {
                procedure: "UpdateTask",
                ..
            }
        ),
        "{e:?}"
    );
    let e = c.update_log(UpdateLogRequest::default()).await.unwrap_err();
    assert!(matches!(e, ForgeError::Decode { .. }), "{e:?}");
    assert!(e.to_string().contains("text/html"), "{e}");
}

#[tokio::test]
async fn errors_in_forgejo_and_gitea_styles() {
    let server = TestServer::start(|r| match r.method_name() {
        "UpdateTask" => connect_error(401, "unauthenticated", "unregistered runner"),
        "UpdateLog" => connect_error(
            500,
            "unknown",
            "rpc error: code = Unauthenticated desc = unregistered runner",
        ),
        "Declare" => raw(
            404,
            "text/html",
            b"<html><body>404 page not found</body></html>",
        ),
        _ => connect_error(409, "already_exists", "log file has been archived"),
    })
    .await;
    let c = authed(&server.url);

    let e = c
        .update_task(UpdateTaskRequest::default())
        .await
        .unwrap_err();
    match &e {
        ForgeError::Status {
            procedure,
            http_status,
            code,
            message,
        } => {
            assert_eq!(
                (*procedure, *http_status, *code, message.as_str()),
                (
                    "UpdateTask",
                    401,
                    Code::Unauthenticated,
                    "unregistered runner"
                )
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_unauthenticated() && !e.is_retryable());

    let e = c.update_log(UpdateLogRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unknown));
    assert!(e.is_unauthenticated(), "{e:?}");

    let e = c.declare(DeclareRequest::default()).await.unwrap_err();
    assert!(e.is_unimplemented(), "{e:?}");

    let e = c
        .fetch_task(FetchTaskRequest::default(), "k", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(e.is_already_exists(), "{e:?}");
}

#[tokio::test]
async fn a_silent_server_times_out_at_the_deadline() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            held.push(sock);
        }
    });
    let c = authed(&format!("http://{addr}"));
    let deadline = Duration::from_millis(300);
    let start = Instant::now();
    let e = c
        .fetch_task(FetchTaskRequest::default(), "k", deadline)
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(
            e,
            ForgeError::Transport {
                timed_out: true,
                procedure: "FetchTask",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert!(took >= deadline, "{took:?}");
    assert!(took < deadline + Duration::from_secs(3), "{took:?}");

    // The overall timeout applies to the other calls.
    let opts = ClientOptions {
        http_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    };
    let c = ForgejoClient::new(&format!("http://{addr}"), &opts).unwrap();
    let start = Instant::now();
    let e = c.ping("x").await.unwrap_err();
    assert!(
        matches!(
            e,
            ForgeError::Transport {
                timed_out: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let e = authed(&format!("http://{addr}"))
        .update_task(UpdateTaskRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ForgeError::Transport {
                timed_out: false,
                procedure: "UpdateTask",
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn the_client_serves_as_report_api() {
    let server = TestServer::start(|r| match r.method_name() {
        "UpdateLog" => proto(&UpdateLogResponse { ack_index: 5 }),
        _ => proto(&UpdateTaskResponse {
            state: None,
            sent_outputs: vec!["out".into()],
        }),
    })
    .await;
    let api: Arc<dyn ReportApi> = Arc::new(authed(&server.url));
    assert_eq!(
        api.update_log(UpdateLogRequest::default())
            .await
            .unwrap()
            .ack_index,
        5
    );
    assert_eq!(
        api.update_task(UpdateTaskRequest::default())
            .await
            .unwrap()
            .sent_outputs,
        ["out"]
    );
}

#[tokio::test]
async fn tokens_never_show_in_debug_output() {
    let c = authed("https://forge.example");
    let text = format!("{c:?}");
    assert!(!text.contains("0123456789abcdef"), "{text}");
}

// ---------------------------------------------------------------- obtain

const SECRET: &str = "0123456789abcdef0123456789abcdef01234567";
const SECRET_UUID: &str = "30313233-3435-3637-3839-616263646566";

fn forge(url: &str, credentials: CredentialSource, labels: &[&str]) -> ForgeConfig {
    ForgeConfig {
        name: "main".into(),
        url: url.into(),
        github: None,
        credentials,
        runner_name: "vm-runner".into(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        fetch_interval: Duration::from_secs(2),
        fetch_timeout: Duration::from_secs(5),
        debug_ssh: Default::default(),
    }
}

fn write_file(dir: &tempfile::TempDir, name: &str, content: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// A server that knows the runners in `known` (uuid → token): Ping,
/// Register (hands out uuid "reg-uuid-<n>"), Declare answering 401 for
/// unknown runners.
async fn registry_server(declare_unimplemented: bool) -> TestServer {
    let registered = Mutex::new(0u32);
    TestServer::start(move |r| match r.method_name() {
        "Ping" => proto(&solstice::forge::forgejo::proto::PingResponse {
            data: "Hello!".into(),
        }),
        "Register" => {
            let req = RegisterRequest::decode(r.body.as_slice()).unwrap();
            if req.token != "good-registration-token" {
                return connect_error(
                    400,
                    "invalid_argument",
                    "runner registration token not found",
                );
            }
            let mut n = registered.lock().unwrap();
            *n += 1;
            proto(&RegisterResponse {
                runner: Some(Runner {
                    id: 100 + i64::from(*n),
                    uuid: format!("reg-uuid-{n}"),
                    token: format!("reg-token-{n}"),
                    name: req.name,
                    labels: req.labels,
                    ..Default::default()
                }),
            })
        }
        "Declare" if declare_unimplemented => raw(404, "text/plain", b"404 page not found"),
        "Declare" => {
            let uuid = r.header("x-runner-uuid").unwrap_or_default();
            let token = r.header("x-runner-token").unwrap_or_default();
            let known = (uuid.starts_with("reg-uuid-")
                && token == uuid.replace("reg-uuid-", "reg-token-"))
                || (uuid == SECRET_UUID && token == SECRET)
                || (uuid == "file-uuid" && token == "file-token");
            if !known {
                return connect_error(401, "unauthenticated", "unregistered runner");
            }
            let req = DeclareRequest::decode(r.body.as_slice()).unwrap();
            proto(&DeclareResponse {
                runner: Some(Runner {
                    id: 77,
                    uuid: uuid.into(),
                    labels: req.labels,
                    version: req.version,
                    ..Default::default()
                }),
            })
        }
        other => panic!("unexpected call {other}"),
    })
    .await
}

#[tokio::test]
async fn registration_token_registers_once_then_reuses_what_is_stored() {
    let server = registry_server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_file(&dir, "token", "  good-registration-token\n");
    let f = forge(
        &server.url,
        CredentialSource::RegistrationTokenFile(token_file),
        &["debian-12", "linux"],
    );
    let c = client(&server.url);

    let first = obtain(&f, &c, None, "1.2.3").await.unwrap();
    assert!(first.changed);
    assert_eq!(
        first.credentials,
        StoredCredentials {
            url: server.url.clone(),
            uuid: "reg-uuid-1".into(),
            token: Secret::new("reg-token-1"),
            runner_id: 77,
            declared_labels: vec!["debian-12".into(), "linux".into()],
        }
    );
    assert_eq!(
        first.client.credentials().unwrap().uuid,
        "reg-uuid-1".to_string()
    );
    let names: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.method_name().to_string())
        .collect();
    assert_eq!(names, ["Ping", "Register", "Declare"]);
    let ping = &server.calls_to("Ping")[0];
    assert!(!has_auth(ping));
    let reg = &server.calls_to("Register")[0];
    assert!(!has_auth(reg));
    let reg = RegisterRequest::decode(reg.body.as_slice()).unwrap();
    assert_eq!(reg.name, "vm-runner");
    assert_eq!(reg.token, "good-registration-token");
    assert_eq!(reg.version, "1.2.3");
    assert_eq!(reg.labels, ["debian-12", "linux"]);
    assert_eq!(reg.agent_labels, ["debian-12", "linux"]);
    let declare = &server.calls_to("Declare")[0];
    assert_eq!(declare.header("x-runner-uuid"), Some("reg-uuid-1"));
    assert_eq!(declare.header("x-runner-token"), Some("reg-token-1"));
    let d = DeclareRequest::decode(declare.body.as_slice()).unwrap();
    assert_eq!(
        (d.version.as_str(), d.labels.clone()),
        ("1.2.3", vec!["debian-12".to_string(), "linux".to_string()])
    );

    // Next start: the stored credentials are reused; Declare only.
    let second = obtain(&f, &c, Some(first.credentials.clone()), "1.2.3")
        .await
        .unwrap();
    assert!(!second.changed);
    assert_eq!(second.credentials, first.credentials);
    assert_eq!(server.calls_to("Register").len(), 1);
    assert_eq!(server.calls_to("Declare").len(), 2);

    // A changed label set is re-declared and must be saved.
    let f2 = forge(&server.url, f.credentials.clone(), &["linux"]);
    let third = obtain(&f2, &c, Some(first.credentials.clone()), "1.2.3")
        .await
        .unwrap();
    assert!(third.changed);
    assert_eq!(third.credentials.declared_labels, ["linux"]);
    assert_eq!(third.credentials.uuid, "reg-uuid-1");
    assert_eq!(server.calls_to("Register").len(), 1);
    let last = server.calls_to("Declare").pop().unwrap();
    assert_eq!(
        DeclareRequest::decode(last.body.as_slice()).unwrap().labels,
        ["linux"]
    );
}

#[tokio::test]
async fn stale_stored_credentials_are_replaced_by_one_new_registration() {
    let server = registry_server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_file(&dir, "token", "good-registration-token");
    let f = forge(
        &server.url,
        CredentialSource::RegistrationTokenFile(token_file),
        &["linux"],
    );
    let stale = StoredCredentials {
        url: server.url.clone(),
        uuid: "deleted-runner".into(),
        token: Secret::new("old-token"),
        runner_id: 5,
        declared_labels: vec!["linux".into()],
    };
    let got = obtain(&f, &client(&server.url), Some(stale), "v")
        .await
        .unwrap();
    assert!(got.changed);
    assert_eq!(got.credentials.uuid, "reg-uuid-1");
    assert_eq!(server.calls_to("Register").len(), 1);
    let names: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.method_name().to_string())
        .collect();
    assert_eq!(names, ["Declare", "Ping", "Register", "Declare"]);
}

#[tokio::test]
async fn credentials_of_another_url_are_not_reused() {
    let server = registry_server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_file(&dir, "token", "good-registration-token");
    let f = forge(
        &server.url,
        CredentialSource::RegistrationTokenFile(token_file),
        &["linux"],
    );
    let elsewhere = StoredCredentials {
        url: "https://old-forge.example".into(),
        uuid: "reg-uuid-9".into(),
        token: Secret::new("reg-token-9"),
        runner_id: 9,
        declared_labels: vec!["linux".into()],
    };
    let got = obtain(&f, &client(&server.url), Some(elsewhere), "v")
        .await
        .unwrap();
    assert!(got.changed);
    assert_eq!(got.credentials.uuid, "reg-uuid-1");
    assert_eq!(got.credentials.url, server.url);
    let names: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.method_name().to_string())
        .collect();
    assert_eq!(names, ["Ping", "Register", "Declare"]);
}

#[tokio::test]
async fn a_refused_registration_token_says_to_get_a_fresh_one() {
    let server = registry_server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_file(&dir, "token", "expired-registration-token\n");
    let f = forge(
        &server.url,
        CredentialSource::RegistrationTokenFile(token_file.clone()),
        &["linux"],
    );
    let e = obtain(&f, &client(&server.url), None, "v")
        .await
        .unwrap_err();
    assert!(
        matches!(e, CredentialError::RegistrationRefused { .. }),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    let text = e.to_string();
    assert!(
        text.contains("runner registration token not found"),
        "{text}"
    );
    assert!(text.contains("fresh registration token"), "{text}");
    assert!(text.contains("Actions → Runners"), "{text}");
    assert!(text.contains(&token_file.display().to_string()), "{text}");
    assert!(!text.contains("expired-registration-token"), "{text}");
    assert!(!format!("{e:?}").contains("expired-registration-token"));
}

#[tokio::test]
async fn an_empty_or_missing_token_file_is_named() {
    let server = registry_server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let empty = write_file(&dir, "token", " \n");
    let f = forge(
        &server.url,
        CredentialSource::RegistrationTokenFile(empty.clone()),
        &["linux"],
    );
    let e = obtain(&f, &client(&server.url), None, "v")
        .await
        .unwrap_err();
    assert!(matches!(e, CredentialError::EmptyToken { .. }), "{e:?}");
    assert!(e.to_string().contains(&empty.display().to_string()));

    let missing = dir.path().join("nope");
    let f = forge(
        &server.url,
        CredentialSource::RegistrationTokenFile(missing.clone()),
        &["linux"],
    );
    let e = obtain(&f, &client(&server.url), None, "v")
        .await
        .unwrap_err();
    assert!(matches!(e, CredentialError::Read { .. }), "{e:?}");
    assert!(e.to_string().contains(&missing.display().to_string()));
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn shared_secret_derives_the_uuid_and_tolerates_an_old_server() {
    let server = registry_server(true).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = write_file(&dir, "secret", &format!("{SECRET}\n"));
    let f = forge(
        &server.url,
        CredentialSource::SecretFile(secret_file),
        &["linux"],
    );
    let got = obtain(&f, &client(&server.url), None, "v").await.unwrap();
    assert!(got.changed);
    assert_eq!(got.credentials.uuid, SECRET_UUID);
    assert_eq!(got.credentials.token.expose(), SECRET);
    // Declare was not understood: nothing counts as declared.
    assert!(got.credentials.declared_labels.is_empty());
    // A Ping tells an old forge from a web server that 404s everything.
    let names: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.method_name().to_string())
        .collect();
    assert_eq!(names, ["Declare", "Ping"]);
    let r = &server.calls_to("Declare")[0];
    assert_eq!(r.header("x-runner-uuid"), Some(SECRET_UUID));
    assert_eq!(r.header("x-runner-token"), Some(SECRET));

    // Same again with that stored: nothing to save.
    let again = obtain(&f, &client(&server.url), Some(got.credentials.clone()), "v")
        .await
        .unwrap();
    assert!(!again.changed);
}

#[tokio::test]
async fn shared_secret_declares_and_a_new_secret_replaces_the_stored_one() {
    let server = registry_server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = write_file(&dir, "secret", SECRET);
    let f = forge(
        &server.url,
        CredentialSource::SecretFile(secret_file),
        &["linux"],
    );
    let old = StoredCredentials {
        url: server.url.clone(),
        uuid: "61616161-6161-6161-6161-616161616161".into(),
        token: Secret::new("a".repeat(40)),
        runner_id: 3,
        declared_labels: vec!["linux".into()],
    };
    let got = obtain(&f, &client(&server.url), Some(old), "v")
        .await
        .unwrap();
    assert!(got.changed);
    assert_eq!(
        got.credentials,
        StoredCredentials {
            url: server.url.clone(),
            uuid: SECRET_UUID.into(),
            token: Secret::new(SECRET),
            runner_id: 77,
            declared_labels: vec!["linux".into()],
        }
    );
    assert!(server.calls_to("Register").is_empty());
}

#[tokio::test]
async fn a_bad_secret_is_refused_before_any_call() {
    let server = registry_server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = write_file(&dir, "secret", "not-a-secret");
    let f = forge(
        &server.url,
        CredentialSource::SecretFile(secret_file),
        &["linux"],
    );
    let e = obtain(&f, &client(&server.url), None, "v")
        .await
        .unwrap_err();
    assert!(matches!(e, CredentialError::BadSecret { .. }), "{e:?}");
    assert!(e.to_string().contains("40 hex characters"), "{e}");
    assert!(!e.to_string().contains("not-a-secret"), "{e}");
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn runner_file_credentials_are_used_as_they_are() {
    let server = registry_server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let runner_file = write_file(
        &dir,
        ".runner",
        r#"{"WARNING":"generated","id":12,"uuid":"file-uuid","name":"x","token":"file-token","address":"https://a","labels":["linux:host"]}"#,
    );
    let f = forge(
        &server.url,
        CredentialSource::RunnerFile(runner_file),
        &["linux"],
    );
    let got = obtain(&f, &client(&server.url), None, "v").await.unwrap();
    assert_eq!(got.credentials.uuid, "file-uuid");
    assert_eq!(got.credentials.token.expose(), "file-token");
    assert_eq!(got.credentials.runner_id, 77);
    assert_eq!(got.client.credentials().unwrap().uuid, "file-uuid");
    let r = server.only_request();
    assert_eq!(r.header("x-runner-uuid"), Some("file-uuid"));
    assert_eq!(r.header("x-runner-token"), Some("file-token"));
}

#[tokio::test]
async fn a_runner_the_forge_does_not_know_is_a_clear_fatal_error() {
    let server = registry_server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let runner_file = write_file(
        &dir,
        ".runner",
        r#"{"uuid":"someone-else","token":"wrong-token"}"#,
    );
    let f = forge(
        &server.url,
        CredentialSource::RunnerFile(runner_file.clone()),
        &["linux"],
    );
    let e = obtain(&f, &client(&server.url), None, "v")
        .await
        .unwrap_err();
    assert!(matches!(e, CredentialError::UnknownRunner { .. }), "{e:?}");
    assert!(!e.is_retryable());
    let text = e.to_string();
    assert!(
        text.contains("the forge does not know this runner"),
        "{text}"
    );
    assert!(text.contains(&runner_file.display().to_string()), "{text}");
    assert!(!text.contains("wrong-token"), "{text}");
    // No re-registration attempt for a runner file.
    assert!(server.calls_to("Register").is_empty());
    assert_eq!(server.calls_to("Declare").len(), 1);

    let bad = write_file(&dir, "bad.runner", r#"{"uuid":"x"}"#);
    let f = forge(&server.url, CredentialSource::RunnerFile(bad), &["linux"]);
    let e = obtain(&f, &client(&server.url), None, "v")
        .await
        .unwrap_err();
    assert!(matches!(e, CredentialError::BadRunnerFile { .. }), "{e:?}");
    assert!(e.to_string().contains("\"token\" is missing"), "{e}");
}

#[tokio::test]
async fn an_unreachable_forge_is_a_retryable_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let secret_file = write_file(&dir, "secret", SECRET);
    let f = forge(&url, CredentialSource::SecretFile(secret_file), &["linux"]);
    let e = obtain(&f, &client(&url), None, "v").await.unwrap_err();
    assert!(
        matches!(
            e,
            CredentialError::Forge {
                step: "Declare",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_retryable());
}

// ------------------------------------------- URLs that are not a forge

/// What `python3 -m http.server` answers to a POST.
fn python_http_server_501() -> Response {
    raw(
        501,
        "text/html;charset=utf-8",
        b"<!DOCTYPE HTML>\n<html lang=\"en\">\n<head><title>Error response</title></head>\n<body>\n<h1>Error response</h1>\n<p>Error code: 501</p>\n<p>Message: Unsupported method ('POST').</p>\n</body>\n</html>\n",
    )
}

/// `obtain` against a server answering every request with `respond`.
async fn obtain_from(
    respond: impl Fn(&Recorded) -> Response + Send + Sync + 'static,
    source: impl Fn(&tempfile::TempDir) -> CredentialSource,
) -> (CredentialError, TestServer, ForgeConfig) {
    let server = TestServer::start(respond).await;
    let dir = tempfile::tempdir().unwrap();
    let f = forge(&server.url, source(&dir), &["linux"]);
    let e = obtain(&f, &client(&server.url), None, "v")
        .await
        .unwrap_err();
    (e, server, f)
}

fn token_file(dir: &tempfile::TempDir) -> CredentialSource {
    CredentialSource::RegistrationTokenFile(write_file(dir, "token", "good-registration-token"))
}

fn secret_file(dir: &tempfile::TempDir) -> CredentialSource {
    CredentialSource::SecretFile(write_file(dir, "secret", SECRET))
}

fn runner_file(dir: &tempfile::TempDir) -> CredentialSource {
    CredentialSource::RunnerFile(write_file(
        dir,
        ".runner",
        r#"{"uuid":"file-uuid","token":"file-token"}"#,
    ))
}

fn assert_not_a_forge(e: &CredentialError, f: &ForgeConfig, answer: &str) {
    assert!(matches!(e, CredentialError::NotAForge { .. }), "{e:?}");
    assert!(!e.is_retryable());
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "Forge main: {} is not a Forgejo/Gitea instance",
            f.url
        )),
        "{text}"
    );
    assert!(text.contains(answer), "{text}");
    assert!(text.contains("check forges.main.url"), "{text}");
}

#[tokio::test]
async fn a_plain_web_server_is_not_a_forge_whatever_the_credentials() {
    // Registration: the Ping that starts it gets a web page.
    let (e, server, f) = obtain_from(|_| python_http_server_501(), token_file).await;
    assert_not_a_forge(
        &e,
        &f,
        "Ping got HTTP 501 (text/html): \"Error response Error code: 501 Message: Unsupported method ('POST').\"",
    );
    assert_eq!(server.requests().len(), 1, "no retry, no Register");

    // A secret or runner file: Declare gets the page, a Ping confirms.
    for source in [secret_file, runner_file] {
        let (e, server, f) = obtain_from(|_| python_http_server_501(), source).await;
        assert_not_a_forge(&e, &f, "HTTP 501 (text/html)");
        let names: Vec<String> = server
            .requests()
            .iter()
            .map(|r| r.method_name().to_string())
            .collect();
        assert_eq!(names, ["Declare", "Ping"]);
    }
}

#[tokio::test]
async fn a_server_that_404s_everything_is_not_an_old_forge() {
    // A bare 404 on Declare is what an old forge sends too; Ping decides.
    let (e, _server, f) = obtain_from(
        |_| raw(404, "text/plain", b"404 page not found\n"),
        secret_file,
    )
    .await;
    assert_not_a_forge(&e, &f, "HTTP 404 (text/plain): \"404 page not found\"");
}

#[tokio::test]
async fn a_login_page_answering_200_is_not_a_forge() {
    let (e, _server, f) = obtain_from(
        |_| raw(200, "text/html", b"<html><body>Sign in</body></html>"),
        runner_file,
    )
    .await;
    assert_not_a_forge(
        &e,
        &f,
        "HTTP 200 with text/html instead of application/proto: \"Sign in\"",
    );
    let (e, _server, f) = obtain_from(
        |_| raw(200, "text/html", b"<html><body>Sign in</body></html>"),
        token_file,
    )
    .await;
    assert_not_a_forge(&e, &f, "instead of application/proto");
}

#[tokio::test]
async fn outages_behind_a_proxy_stay_retryable() {
    for respond in [
        |_: &Recorded| raw(502, "text/html", b"<html><h1>502 Bad Gateway</h1></html>"),
        |_: &Recorded| raw(503, "text/html", b"<html>Service Unavailable</html>"),
        |_: &Recorded| raw(504, "text/plain", b"gateway timeout"),
        |_: &Recorded| connect_error(503, "unavailable", "maintenance"),
    ] {
        for source in [token_file, secret_file] {
            let (e, _server, _f) = obtain_from(respond, source).await;
            assert!(matches!(e, CredentialError::Forge { .. }), "{e:?}");
            assert!(e.is_retryable(), "{e:?}");
        }
    }
}

#[tokio::test]
async fn a_refused_connection_keeps_its_cause() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let f = forge(&url, token_file(&dir), &["linux"]);
    let e = obtain(&f, &client(&url), None, "v").await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    // The top message alone says nothing about why.
    assert_eq!(e.to_string(), "Forge main: Ping failed");
    let chain = solstice::errors::Chain(&e).to_string();
    assert!(
        chain.starts_with("Forge main: Ping failed: Ping: error sending request"),
        "{chain}"
    );
    assert!(chain.contains("Connection refused"), "{chain}");
}

//! The fake Forgejo server, driven over HTTP with hand-made Connect calls
//! (reqwest + prost), so that it does not depend on Solstice's own client.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message;
use serde_json::json;
use solstice::forge::forgejo::ForgeError;
use solstice::forge::forgejo::client::{ClientOptions, Credentials, ForgejoClient};
use solstice::forge::forgejo::error::Code;
use solstice::forge::forgejo::proto::{self, TaskResult};
use solstice::secret::Secret;
use solstice::testing::fake_forge::{FakeForge, FakeJob, FakeOptions, TaskStatus};

const REG_TOKEN: &str = "0000000000111111111122222222223333333333";

fn payload(steps: usize) -> String {
    let mut y =
        String::from("name: test\non: push\njobs:\n  build:\n    runs-on: linux\n    steps:\n");
    for i in 0..steps {
        y.push_str(&format!("      - run: echo step {i}\n"));
    }
    y
}

#[derive(Clone, Debug)]
struct Creds {
    uuid: String,
    token: String,
}

#[derive(Debug)]
struct CallError {
    status: u16,
    code: String,
    message: String,
}

struct Client {
    http: reqwest::Client,
    base: String,
}

fn path_of(method: &str) -> String {
    if method == "Ping" {
        "ping.v1.PingService/Ping".into()
    } else {
        format!("runner.v1.RunnerService/{method}")
    }
}

impl Client {
    fn new(forge: &FakeForge) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: format!("{}/api/actions", forge.url()),
        }
    }

    async fn raw(
        &self,
        http_method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Vec<u8>), reqwest::Error> {
        let mut rb = self
            .http
            .request(http_method, format!("{}/{path}", self.base))
            .body(body);
        if let Some(ct) = content_type {
            rb = rb.header("content-type", ct);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?.to_vec()))
    }

    async fn call_with<Q: Message, R: Message + Default>(
        &self,
        method: &str,
        req: &Q,
        creds: Option<&Creds>,
        extra: &[(&str, &str)],
    ) -> Result<R, CallError> {
        let mut headers: Vec<(&str, &str)> = vec![("connect-protocol-version", "1")];
        if let Some(c) = creds {
            headers.push(("x-runner-uuid", &c.uuid));
            headers.push(("x-runner-token", &c.token));
        }
        headers.extend_from_slice(extra);
        let (status, body) = self
            .raw(
                reqwest::Method::POST,
                &path_of(method),
                Some("application/proto"),
                req.encode_to_vec(),
                &headers,
            )
            .await
            .expect("transport");
        if status == 200 {
            return Ok(R::decode(&body[..]).expect("decodable answer"));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON error body");
        Err(CallError {
            status,
            code: v["code"].as_str().unwrap_or_default().to_string(),
            message: v["message"].as_str().unwrap_or_default().to_string(),
        })
    }

    async fn call<Q: Message, R: Message + Default>(
        &self,
        method: &str,
        req: &Q,
        creds: Option<&Creds>,
    ) -> Result<R, CallError> {
        self.call_with(method, req, creds, &[]).await
    }

    async fn register(&self, labels: &[&str], ephemeral: bool) -> Creds {
        let resp: proto::RegisterResponse = self
            .call(
                "Register",
                &proto::RegisterRequest {
                    name: "runner-1".into(),
                    token: REG_TOKEN.into(),
                    version: "v1".into(),
                    labels: labels.iter().map(|s| s.to_string()).collect(),
                    ephemeral,
                    ..Default::default()
                },
                None,
            )
            .await
            .expect("register");
        let r = resp.runner.expect("runner");
        Creds {
            uuid: r.uuid,
            token: r.token,
        }
    }

    async fn fetch(
        &self,
        creds: &Creds,
        version: i64,
        capacity: Option<i64>,
        key: Option<&str>,
    ) -> Result<proto::FetchTaskResponse, CallError> {
        let extra: Vec<(&str, &str)> = key
            .map(|k| vec![("x-runner-request-key", k)])
            .unwrap_or_default();
        self.call_with(
            "FetchTask",
            &proto::FetchTaskRequest {
                tasks_version: version,
                task_capacity: capacity,
            },
            Some(creds),
            &extra,
        )
        .await
    }

    async fn log(
        &self,
        creds: &Creds,
        task_id: i64,
        index: i64,
        rows: &[&str],
        no_more: bool,
    ) -> Result<i64, CallError> {
        let r: proto::UpdateLogResponse = self
            .call(
                "UpdateLog",
                &proto::UpdateLogRequest {
                    task_id,
                    index,
                    rows: rows
                        .iter()
                        .map(|c| proto::LogRow {
                            time: Some(proto::now()),
                            content: c.to_string(),
                        })
                        .collect(),
                    no_more,
                },
                Some(creds),
            )
            .await?;
        Ok(r.ack_index)
    }

    async fn update(
        &self,
        creds: &Creds,
        state: proto::TaskState,
        outputs: &[(&str, &str)],
    ) -> Result<proto::UpdateTaskResponse, CallError> {
        self.call(
            "UpdateTask",
            &proto::UpdateTaskRequest {
                state: Some(state),
                outputs: outputs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            Some(creds),
        )
        .await
    }
}

async fn forge() -> (FakeForge, Client) {
    let forge = FakeForge::start(FakeOptions {
        registration_tokens: vec![REG_TOKEN.into()],
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let client = Client::new(&forge);
    (forge, client)
}

fn step(id: i64, result: TaskResult, log_index: i64, log_length: i64) -> proto::StepState {
    proto::StepState {
        id,
        result: result as i32,
        started_at: Some(proto::now()),
        stopped_at: (result != TaskResult::Unspecified).then(proto::now),
        log_index,
        log_length,
    }
}

fn state(id: i64, result: TaskResult, steps: Vec<proto::StepState>) -> proto::TaskState {
    proto::TaskState {
        id,
        result: result as i32,
        started_at: Some(proto::now()),
        stopped_at: (result != TaskResult::Unspecified).then(proto::now),
        steps,
    }
}

fn ctx(task: &proto::Task) -> serde_json::Value {
    proto::struct_to_json(task.context.as_ref().expect("context"))
}

#[tokio::test]
async fn transport_rules_ping_content_types_methods_and_bad_bodies() {
    let (forge, c) = forge().await;
    assert!(forge.url().starts_with("http://127.0.0.1:"));
    assert!(!forge.url().ends_with('/'));

    // Ping: no auth, with or without Connect-Protocol-Version; exact wire bytes.
    let req = proto::PingRequest {
        data: "runner-1".into(),
    };
    let (status, body) = c
        .raw(
            reqwest::Method::POST,
            "ping.v1.PingService/Ping",
            Some("application/proto"),
            req.encode_to_vec(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let pong = proto::PingResponse::decode(&body[..]).unwrap();
    assert_eq!(pong.data, "Hello, runner-1!");
    let pong: proto::PingResponse = c.call("Ping", &req, None).await.unwrap();
    assert_eq!(pong.data, "Hello, runner-1!");

    // Content types other than application/proto: 415 (JSON is not implemented).
    for ct in [
        Some("application/json"),
        Some("text/plain"),
        Some("application/grpc"),
        None,
    ] {
        let (status, _) = c
            .raw(
                reqwest::Method::POST,
                "ping.v1.PingService/Ping",
                ct,
                req.encode_to_vec(),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(status, 415, "content type {ct:?}");
    }
    // Parameters after the media type are fine.
    let (status, _) = c
        .raw(
            reqwest::Method::POST,
            "ping.v1.PingService/Ping",
            Some("application/proto; charset=utf-8"),
            req.encode_to_vec(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(status, 200);

    // Only POST.
    let (status, _) = c
        .raw(
            reqwest::Method::GET,
            "ping.v1.PingService/Ping",
            Some("application/proto"),
            vec![],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(status, 405);

    // Unknown methods and paths: bare 404 (clients map it to unimplemented).
    for path in [
        "runner.v1.RunnerService/UpdateJobSummary",
        "runner.v1.RunnerService/",
        "other.v1.Service/Call",
    ] {
        let (status, _) = c
            .raw(
                reqwest::Method::POST,
                path,
                Some("application/proto"),
                vec![],
                &[],
            )
            .await
            .unwrap();
        assert_eq!(status, 404, "{path}");
    }

    // An undecodable body: 400 invalid_argument.
    let (status, body) = c
        .raw(
            reqwest::Method::POST,
            "runner.v1.RunnerService/Register",
            Some("application/proto"),
            vec![0xff, 0xff, 0xff],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "invalid_argument");

    // Every call was recorded.
    let reqs = forge.requests();
    assert_eq!(forge.request_count("Ping"), 8);
    assert!(reqs.iter().any(|r| r.http_status == 404));
    assert!(forge.violations().is_empty());
}

#[tokio::test]
async fn register_validates_tokens_and_mints_credentials() {
    let (forge, c) = forge().await;
    let reg = |name: &str, token: &str| proto::RegisterRequest {
        name: name.into(),
        token: token.into(),
        version: "v9".into(),
        labels: vec!["linux".into(), "x64".into()],
        ..Default::default()
    };
    for (name, token) in [("", REG_TOKEN), ("r", ""), ("", "")] {
        let e = c
            .call::<_, proto::RegisterResponse>("Register", &reg(name, token), None)
            .await
            .unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (400, "invalid_argument"));
        assert_eq!(e.message, "missing runner token, name");
    }
    let e = c
        .call::<_, proto::RegisterResponse>("Register", &reg("r", "nope"), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_argument");
    assert_eq!(e.message, "runner registration token not found");

    // Reusable: two registrations with the same token, distinct credentials.
    let a: proto::RegisterResponse = c
        .call("Register", &reg("a", REG_TOKEN), None)
        .await
        .unwrap();
    let b: proto::RegisterResponse = c
        .call("Register", &reg("b", REG_TOKEN), None)
        .await
        .unwrap();
    let (a, b) = (a.runner.unwrap(), b.runner.unwrap());
    assert_ne!(a.uuid, b.uuid);
    assert_ne!(a.id, b.id);
    assert_eq!(a.token.len(), 40);
    assert!(a.token.bytes().all(|c| c.is_ascii_hexdigit()));
    assert!(uuid::Uuid::parse_str(&a.uuid).is_ok());
    assert_eq!(a.name, "a");
    assert_eq!(a.version, "v9");
    assert_eq!(a.labels, ["linux", "x64"]);
    assert!(!a.ephemeral);

    // Regenerated: the old token is refused with Forgejo's message.
    forge.invalidate_registration_token(REG_TOKEN);
    let e = c
        .call::<_, proto::RegisterResponse>("Register", &reg("c", REG_TOKEN), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_argument");
    assert_eq!(
        e.message,
        "runner registration token has been invalidated, please use the latest one"
    );
    forge.add_registration_token("fresh");
    let c2: proto::RegisterResponse = c
        .call(
            "Register",
            &proto::RegisterRequest {
                ephemeral: true,
                ..reg("c", "fresh")
            },
            None,
        )
        .await
        .unwrap();
    assert!(c2.runner.unwrap().ephemeral);
    let runners = forge.runners();
    assert_eq!(runners.len(), 3);
    assert!(runners.iter().any(|r| r.name == "c" && r.ephemeral));
}

#[tokio::test]
async fn auth_is_required_everywhere_but_register_and_ping() {
    let (forge, c) = forge().await;
    let good = c.register(&["linux"], false).await;
    let wrong_token = Creds {
        token: "f".repeat(40),
        ..good.clone()
    };
    let unknown = Creds {
        uuid: uuid::Uuid::new_v4().to_string(),
        token: good.token.clone(),
    };
    for creds in [None, Some(&wrong_token), Some(&unknown)] {
        macro_rules! denied {
            ($method:literal, $req:expr, $resp:ty) => {
                let e = c.call::<_, $resp>($method, &$req, creds).await.unwrap_err();
                assert_eq!(e.status, 401, "{}", $method);
                assert_eq!(e.code, "unauthenticated");
                assert_eq!(e.message, "unregistered runner");
            };
        }
        denied!(
            "Declare",
            proto::DeclareRequest::default(),
            proto::DeclareResponse
        );
        denied!(
            "FetchTask",
            proto::FetchTaskRequest::default(),
            proto::FetchTaskResponse
        );
        denied!(
            "FetchSingleTask",
            proto::FetchSingleTaskRequest::default(),
            proto::FetchSingleTaskResponse
        );
        denied!(
            "UpdateTask",
            proto::UpdateTaskRequest::default(),
            proto::UpdateTaskResponse
        );
        denied!(
            "UpdateLog",
            proto::UpdateLogRequest::default(),
            proto::UpdateLogResponse
        );
    }
    // Good credentials pass; the runner is seen online.
    let d: proto::DeclareResponse = c
        .call(
            "Declare",
            &proto::DeclareRequest {
                version: "v2".into(),
                labels: vec!["a".into(), "b".into()],
                ..Default::default()
            },
            Some(&good),
        )
        .await
        .unwrap();
    let r = d.runner.unwrap();
    assert_eq!(r.uuid, good.uuid);
    assert_eq!(r.version, "v2");
    assert_eq!(r.labels, ["a", "b"]);
    let snap = forge.runners();
    assert_eq!(snap[0].labels, ["a", "b"]);
    assert_eq!(snap[0].version, "v2");
    assert!(snap[0].last_online.is_some());
}

#[tokio::test]
async fn offline_registration_derives_the_uuid_from_the_secret() {
    let (forge, c) = forge().await;
    let secret = "0123456789abcdef0123456789abcdef01234567";
    let uuid = forge.register_offline(secret, "offline", &["linux"]);
    assert_eq!(uuid, "30313233-3435-3637-3839-616263646566");
    let creds = Creds {
        uuid: uuid.clone(),
        token: secret.into(),
    };
    let d: proto::DeclareResponse = c
        .call(
            "Declare",
            &proto::DeclareRequest {
                version: "v3".into(),
                labels: vec!["linux".into()],
                ..Default::default()
            },
            Some(&creds),
        )
        .await
        .unwrap();
    assert_eq!(d.runner.unwrap().name, "offline");
    // Idempotent: the same secret again updates the same runner.
    assert_eq!(forge.register_offline(secret, "renamed", &["x"]), uuid);
    assert_eq!(forge.runners().len(), 1);
    assert_eq!(forge.runners()[0].name, "renamed");
}

#[tokio::test]
async fn tasks_version_is_never_zero_and_equal_means_no_task() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;
    let resp = c.fetch(&r, 0, None, None).await.unwrap();
    assert!(resp.task.is_none());
    let v = resp.tasks_version;
    assert!(v >= 1, "never 0");
    // Equal version: no task and no query, even though a job now waits once
    // the version is the latest.
    let resp = c.fetch(&r, v, None, None).await.unwrap();
    assert!(resp.task.is_none());
    assert_eq!(resp.tasks_version, v);

    let job = forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    let latest = forge.tasks_version();
    assert!(latest > v);
    let resp = c.fetch(&r, latest, None, None).await.unwrap();
    assert!(resp.task.is_none(), "equal version must not look for jobs");
    assert_eq!(resp.tasks_version, latest);
    // Older version: the job is handed out, the latest version returned.
    let resp = c.fetch(&r, v, None, None).await.unwrap();
    assert_eq!(resp.tasks_version, latest);
    let task = resp.task.unwrap();
    assert_eq!(forge.task_for_job(job).unwrap().id, task.id);
    // Nothing left.
    let resp = c.fetch(&r, 0, None, None).await.unwrap();
    assert!(resp.task.is_none());
}

#[tokio::test]
async fn task_contents_follow_the_spec() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux", "big"], false).await;
    let mut job = FakeJob::new(payload(3), &["linux"]);
    job.secrets = HashMap::from([("API_KEY".into(), "hunter2".into())]);
    job.vars = HashMap::from([("COLOR".into(), "blue".into())]);
    job.needs = HashMap::from([(
        "prep".into(),
        proto::TaskNeed {
            outputs: HashMap::from([("x".into(), "1".into())]),
            result: TaskResult::Success as i32,
        },
    )]);
    job.context_overrides = json!({"event_name": "workflow_dispatch", "gitea_runtime_token": null});
    let job_id = forge.enqueue(job);
    let task = c.fetch(&r, 0, None, None).await.unwrap().task.unwrap();

    assert_eq!(
        String::from_utf8(task.workflow_payload.clone().unwrap()).unwrap(),
        payload(3)
    );
    let ctx = ctx(&task);
    let token = task.secrets["GITHUB_TOKEN"].clone();
    assert_eq!(token.len(), 40);
    for name in ["GITEA_TOKEN", "FORGEJO_TOKEN"] {
        assert_eq!(task.secrets[name], token);
    }
    assert_eq!(task.secrets["API_KEY"], "hunter2");
    assert_eq!(ctx["token"], token.as_str());
    assert_eq!(ctx["server_url"], format!("{}/", forge.url()));
    assert_eq!(ctx["gitea_default_actions_url"], "https://data.forgejo.org");
    assert!(
        ctx.get("gitea_runtime_token").is_none(),
        "null override removes"
    );
    assert_eq!(ctx["event_name"], "workflow_dispatch");
    assert_eq!(ctx["job"], "build");
    assert_eq!(ctx["repository"], "fake-owner/fake-repo");
    assert_eq!(ctx["ref"], "refs/heads/main");
    assert_eq!(ctx["sha"].as_str().unwrap().len(), 40);
    assert!(ctx["event"].is_object());
    assert_eq!(task.vars["COLOR"], "blue");
    assert_eq!(task.needs["prep"].outputs["x"], "1");

    let snap = forge.task(task.id).unwrap();
    assert_eq!(snap.job_id, job_id);
    assert_eq!(snap.runner_uuid, r.uuid);
    assert_eq!(snap.status, TaskStatus::Running);
    assert_eq!(snap.steps.len(), 3);
    assert_eq!(snap.steps[1].name, "echo step 1");
    assert_eq!(snap.token.expose(), token);
    // Task ids are never reused.
    forge.enqueue(FakeJob::new(payload(0), &["linux"]));
    let t2 = c.fetch(&r, 0, None, None).await.unwrap().task.unwrap();
    assert!(t2.id > task.id);
    assert_eq!(forge.task(t2.id).unwrap().steps.len(), 0);
}

#[tokio::test]
async fn request_key_recovery_returns_the_same_tasks_with_fresh_tokens() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;
    forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    let first = c.fetch(&r, 0, Some(2), Some("key-1")).await.unwrap();
    assert!(first.tasks_version > 0);
    let t1 = first.task.clone().unwrap();
    assert_eq!(first.additional_tasks.len(), 1);
    let old_token = t1.secrets["GITHUB_TOKEN"].clone();

    // The answer was "lost": the runner retries with the same key.
    let again = c.fetch(&r, 0, Some(2), Some("key-1")).await.unwrap();
    assert_eq!(
        again.tasks_version, 0,
        "recovered tasks come with version 0"
    );
    let t1b = again.task.unwrap();
    assert_eq!(t1b.id, t1.id);
    assert_eq!(again.additional_tasks.len(), 1);
    assert_eq!(again.additional_tasks[0].id, first.additional_tasks[0].id);
    let new_token = t1b.secrets["GITHUB_TOKEN"].clone();
    assert_ne!(new_token, old_token, "fresh token");
    assert_eq!(ctx(&t1b)["token"], new_token.as_str());
    // The runtime JWT is minted again (Forgejo signs it when it builds the
    // task; within the same second the two are identical, as on Forgejo).
    assert_eq!(
        ctx(&t1b)["gitea_runtime_token"],
        forge.runtime_token(t1.id).unwrap().expose()
    );
    // The old token is gone: the server only knows the new one.
    let snap = forge.task(t1.id).unwrap();
    assert_eq!(snap.token.expose(), new_token);
    assert_ne!(snap.token.expose(), old_token);
    assert_eq!(snap.request_key.as_deref(), Some("key-1"));

    // A new key picks new work (none left), not the old tasks.
    let other = c.fetch(&r, 0, Some(2), Some("key-2")).await.unwrap();
    assert!(other.task.is_none());
    assert_eq!(forge.tasks().len(), 2);

    // Whatever their status, recorded tasks keep coming back (Forgejo does
    // not look at the status): one finished, one cancelled.
    c.update(
        &r,
        state(
            t1.id,
            TaskResult::Success,
            vec![step(0, TaskResult::Success, 0, 0)],
        ),
        &[],
    )
    .await
    .unwrap();
    let t2 = first.additional_tasks[0].id;
    assert!(forge.cancel_task(t2));
    let again = c.fetch(&r, 0, Some(2), Some("key-1")).await.unwrap();
    assert_eq!(again.tasks_version, 0);
    let t1c = again.task.unwrap();
    assert_eq!(t1c.id, t1.id);
    assert_eq!(again.additional_tasks.len(), 1);
    assert_eq!(again.additional_tasks[0].id, t2);
    assert_ne!(t1c.secrets["GITHUB_TOKEN"], new_token, "fresh token again");
    assert_eq!(
        forge.task(t1.id).unwrap().token.expose(),
        t1c.secrets["GITHUB_TOKEN"]
    );
    assert_eq!(forge.task(t1.id).unwrap().status, TaskStatus::Success);
    assert_eq!(forge.task(t2).unwrap().status, TaskStatus::Cancelled);
}

#[tokio::test]
async fn request_key_lock_rejects_concurrent_fetches_with_the_same_key() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;
    forge.set_delay("FetchTask", Duration::from_secs(3));
    let slow = c.fetch(&r, 0, None, Some("k"));
    let second = async {
        // The first call has taken effect; its answer (and the lock) is held.
        assert!(
            forge
                .wait_for(
                    |f| f.request_count("FetchTask") == 1,
                    Duration::from_secs(30)
                )
                .await
        );
        let same = c.fetch(&r, 0, None, Some("k")).await;
        let other = c.fetch(&r, 0, None, Some("other")).await;
        (same, other)
    };
    let (slow, (same, other)) = tokio::join!(slow, second);
    assert!(slow.is_ok());
    let e = same.unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (500, "internal"));
    assert_eq!(e.message, "request key is currently locked; retry soon");
    assert!(other.is_ok(), "other keys are not locked");
    // Released after the call.
    forge.set_delay("FetchTask", Duration::ZERO);
    assert!(c.fetch(&r, 0, None, Some("k")).await.is_ok());
}

#[tokio::test]
async fn task_capacity_hands_out_additional_tasks() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;
    let jobs: Vec<i64> = (0..3)
        .map(|_| forge.enqueue(FakeJob::new(payload(1), &["linux"])))
        .collect();
    // Without task_capacity: one task.
    let one = c.fetch(&r, 0, None, None).await.unwrap();
    assert_eq!(
        one.task.as_ref().unwrap().id,
        forge.task_for_job(jobs[0]).unwrap().id
    );
    assert!(one.additional_tasks.is_empty());
    // Capacity 5 with two jobs left: task + 1 additional, oldest first.
    let two = c.fetch(&r, 0, Some(5), None).await.unwrap();
    assert_eq!(
        two.task.unwrap().id,
        forge.task_for_job(jobs[1]).unwrap().id
    );
    assert_eq!(two.additional_tasks.len(), 1);
    assert_eq!(
        two.additional_tasks[0].id,
        forge.task_for_job(jobs[2]).unwrap().id
    );
    assert_eq!(forge.max_running_tasks(), 3);
    assert_eq!(forge.running_tasks(), 3);
}

#[tokio::test]
async fn jobs_need_all_their_runs_on_labels() {
    let (forge, c) = forge().await;
    let small = c.register(&["linux"], false).await;
    let big = c.register(&["linux", "kvm", "x64"], false).await;
    let needs_kvm = forge.enqueue(FakeJob::new(payload(1), &["linux", "kvm"]));
    let plain = forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    // The small runner skips the older job it cannot run.
    let t = c.fetch(&small, 0, Some(2), None).await.unwrap();
    assert_eq!(t.task.unwrap().id, forge.task_for_job(plain).unwrap().id);
    assert!(t.additional_tasks.is_empty());
    assert!(c.fetch(&small, 0, None, None).await.unwrap().task.is_none());
    let t = c.fetch(&big, 0, None, None).await.unwrap();
    assert_eq!(
        t.task.unwrap().id,
        forge.task_for_job(needs_kvm).unwrap().id
    );
    assert_eq!(forge.task_for_job(needs_kvm).unwrap().runner_uuid, big.uuid);
}

#[tokio::test]
async fn fetch_single_task_with_handle_and_reversed_fields() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;
    let a = forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    let b = forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    let handle_b = forge.job_handle(b).unwrap();
    let req = proto::FetchSingleTaskRequest {
        tasks_version: 0,
        handle: Some(handle_b.clone()),
    };
    let headers = [
        ("x-runner-uuid", r.uuid.as_str()),
        ("x-runner-token", r.token.as_str()),
    ];
    let (status, body) = c
        .raw(
            reqwest::Method::POST,
            "runner.v1.RunnerService/FetchSingleTask",
            Some("application/proto"),
            req.encode_to_vec(),
            &headers,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body[0], 0x08, "tasks_version is field 1");
    let resp = proto::FetchSingleTaskResponse::decode(&body[..]).unwrap();
    assert_eq!(resp.task.unwrap().id, forge.task_for_job(b).unwrap().id);
    // The same handle again: that job is no longer waiting.
    let resp: proto::FetchSingleTaskResponse =
        c.call("FetchSingleTask", &req, Some(&r)).await.unwrap();
    assert!(resp.task.is_none());
    // No handle: any job.
    let resp: proto::FetchSingleTaskResponse = c
        .call_with(
            "FetchSingleTask",
            &proto::FetchSingleTaskRequest {
                tasks_version: 0,
                handle: Some(String::new()),
            },
            Some(&r),
            &[("x-runner-request-key", "single")],
        )
        .await
        .unwrap();
    let ta = resp.task.unwrap();
    assert_eq!(ta.id, forge.task_for_job(a).unwrap().id);
    // Recovery through FetchSingleTask too.
    let resp: proto::FetchSingleTaskResponse = c
        .call_with(
            "FetchSingleTask",
            &proto::FetchSingleTaskRequest::default(),
            Some(&r),
            &[("x-runner-request-key", "single")],
        )
        .await
        .unwrap();
    assert_eq!(resp.tasks_version, 0);
    assert_eq!(resp.task.unwrap().id, ta.id);
}

#[tokio::test]
async fn update_log_appends_acks_and_archives() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;
    forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    let id = c.fetch(&r, 0, None, None).await.unwrap().task.unwrap().id;

    assert_eq!(c.log(&r, id, 0, &[], false).await.unwrap(), 0, "empty");
    assert_eq!(c.log(&r, id, 0, &["a", "b", "c"], false).await.unwrap(), 3);
    // Overlap: only the new tail is appended.
    assert_eq!(
        c.log(&r, id, 1, &["b", "c", "d", "e"], false)
            .await
            .unwrap(),
        5
    );
    // Duplicates only: ack unchanged.
    assert_eq!(c.log(&r, id, 0, &["a", "b"], false).await.unwrap(), 5);
    assert!(forge.violations().is_empty());
    // A gap: nothing written, current L returned, a violation recorded.
    assert_eq!(c.log(&r, id, 7, &["x"], false).await.unwrap(), 5);
    assert_eq!(forge.violations().len(), 1, "{:?}", forge.violations());
    assert_eq!(forge.task(id).unwrap().log, ["a", "b", "c", "d", "e"]);

    // Final upload archives.
    assert_eq!(c.log(&r, id, 5, &["f"], true).await.unwrap(), 6);
    let snap = forge.task(id).unwrap();
    assert!(snap.archived && snap.no_more);
    // New rows after archiving: already_exists.
    let e = c.log(&r, id, 6, &["g"], false).await.unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (409, "already_exists"));
    assert_eq!(e.message, "log file has been archived");
    // Duplicates and empty calls are still just acknowledged.
    assert_eq!(c.log(&r, id, 4, &["e", "f"], true).await.unwrap(), 6);
    assert_eq!(c.log(&r, id, 6, &[], true).await.unwrap(), 6);
    assert_eq!(forge.task(id).unwrap().log.len(), 6);
    assert_eq!(forge.task(id).unwrap().update_log_calls, 9);

    // Someone else's task: internal.
    let other = c.register(&["linux"], false).await;
    let e = c.log(&other, id, 6, &["z"], false).await.unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.message.as_str()),
        ("internal", "invalid runner for task")
    );
}

#[tokio::test]
async fn update_task_ownership_steps_outputs_and_finality() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;
    let other = c.register(&["linux"], false).await;
    forge.enqueue(FakeJob::new(payload(2), &["linux"]));
    let id = c.fetch(&r, 0, None, None).await.unwrap().task.unwrap().id;

    // Another runner's task: internal "invalid runner for task"; no such
    // task: internal "update task: resource does not exist".
    for (creds, task_id, message) in [
        (&other, id, "invalid runner for task"),
        (&r, 999, "update task: resource does not exist"),
    ] {
        let e = c
            .update(creds, state(task_id, TaskResult::Unspecified, vec![]), &[])
            .await
            .unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (500, "internal"));
        assert_eq!(e.message, message);
    }
    // Step ids outside [0, n): invalid_argument (stricter than Forgejo).
    for bad in [2, -1] {
        let e = c
            .update(
                &r,
                state(
                    id,
                    TaskResult::Unspecified,
                    vec![step(bad, TaskResult::Unspecified, 0, 0)],
                ),
                &[],
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, "invalid_argument", "step {bad}");
    }
    // A result number outside the enum.
    let mut weird = step(0, TaskResult::Success, 0, 0);
    weird.result = 9;
    let e = c
        .update(&r, state(id, TaskResult::Unspecified, vec![weird]), &[])
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_argument");

    // Outputs: first write wins, sent_outputs complete, oversized ignored.
    let long_key = "k".repeat(256);
    let resp = c
        .update(
            &r,
            state(
                id,
                TaskResult::Unspecified,
                vec![step(0, TaskResult::Unspecified, 0, 0)],
            ),
            &[("a", "1"), ("b", "2"), (long_key.as_str(), "x")],
        )
        .await
        .unwrap();
    assert_eq!(resp.state.as_ref().unwrap().id, id);
    assert_eq!(resp.state.unwrap().result, TaskResult::Unspecified as i32);
    assert_eq!(resp.sent_outputs, ["a", "b"]);
    assert_eq!(forge.violations().len(), 1, "oversized key is a client bug");
    let resp = c
        .update(
            &r,
            state(id, TaskResult::Unspecified, vec![]),
            &[("a", "changed"), ("c", "3")],
        )
        .await
        .unwrap();
    assert_eq!(resp.sent_outputs, ["a", "b", "c"]);
    assert_eq!(forge.task(id).unwrap().outputs["a"], "1");

    // Logs then the final state: steps by index, the task finalizes.
    assert_eq!(
        c.log(&r, id, 0, &["setup", "s0", "s1a", "s1b", "post"], true)
            .await
            .unwrap(),
        5
    );
    let final_state = state(
        id,
        TaskResult::Failure,
        vec![
            step(0, TaskResult::Success, 1, 1),
            step(1, TaskResult::Failure, 2, 2),
        ],
    );
    let resp = c.update(&r, final_state, &[]).await.unwrap();
    assert_eq!(resp.state.unwrap().result, TaskResult::Failure as i32);
    let snap = forge.task(id).unwrap();
    assert_eq!(snap.status, TaskStatus::Failure);
    assert_eq!(snap.client_result, TaskResult::Failure);
    assert_eq!(snap.steps[1].result, TaskResult::Failure);
    assert_eq!(snap.step_log(1), ["s1a", "s1b"]);
    assert_eq!(forge.running_tasks(), 0);
    assert_eq!(forge.violations().len(), 1, "{:?}", forge.violations());

    // Final: later updates change nothing but still store new outputs.
    let resp = c
        .update(
            &r,
            state(
                id,
                TaskResult::Success,
                vec![step(0, TaskResult::Skipped, 1, 1)],
            ),
            &[("late", "v")],
        )
        .await
        .unwrap();
    assert_eq!(resp.state.unwrap().result, TaskResult::Failure as i32);
    assert_eq!(resp.sent_outputs, ["a", "b", "c", "late"]);
    let snap = forge.task(id).unwrap();
    assert_eq!(snap.status, TaskStatus::Failure);
    assert_eq!(snap.steps[0].result, TaskResult::Success);
    assert_eq!(snap.update_task_calls, 7);
}

#[tokio::test]
async fn final_state_validation_records_violations() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;
    forge.enqueue(FakeJob::new(payload(2), &["linux"]));
    let id = c.fetch(&r, 0, None, None).await.unwrap().task.unwrap().id;
    c.log(&r, id, 0, &["x", "y"], true).await.unwrap();
    let mut s = state(
        id,
        TaskResult::Success,
        vec![
            step(0, TaskResult::Success, 0, 2),
            // Overlaps step 0 and claims rows that never came.
            step(1, TaskResult::Success, 1, 5),
        ],
    );
    s.stopped_at = None;
    c.update(&r, s, &[]).await.unwrap();
    let v = forge.violations();
    assert!(v.iter().any(|v| v.contains("without stopped_at")), "{v:?}");
    assert!(
        v.iter().any(|v| v.contains("only 2 rows were received")),
        "{v:?}"
    );
    assert!(
        v.iter().any(|v| v.contains("inside the previous step")),
        "{v:?}"
    );
    assert_eq!(v.len(), 3, "{v:?}");
    // A step with stopped_at but no result is rejected outright.
    forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    let id2 = c.fetch(&r, 0, None, None).await.unwrap().task.unwrap().id;
    let mut st = step(0, TaskResult::Unspecified, 0, 0);
    st.stopped_at = Some(proto::now());
    let e = c
        .update(&r, state(id2, TaskResult::Unspecified, vec![st]), &[])
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_argument");
}

#[tokio::test]
async fn cancel_hook_turns_the_next_reply_into_cancelled() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;
    let job = forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    let id = c.fetch(&r, 0, None, None).await.unwrap().task.unwrap().id;
    let resp = c
        .update(&r, state(id, TaskResult::Unspecified, vec![]), &[])
        .await
        .unwrap();
    assert_eq!(resp.state.unwrap().result, TaskResult::Unspecified as i32);
    assert!(forge.cancel_task(id));
    assert!(!forge.cancel_task(id), "already final");
    let resp = c
        .update(&r, state(id, TaskResult::Unspecified, vec![]), &[])
        .await
        .unwrap();
    assert_eq!(resp.state.unwrap().result, TaskResult::Cancelled as i32);
    assert_eq!(forge.running_tasks(), 0);
    // A user's cancel does not archive the log (only the reapers do): rows
    // still go up after it; the runner then reports.
    assert!(!forge.task(id).unwrap().archived);
    assert_eq!(c.log(&r, id, 0, &["post step"], false).await.unwrap(), 1);
    assert_eq!(c.log(&r, id, 1, &["cancelled"], true).await.unwrap(), 2);
    let waiter = forge.wait_job_final(job, Duration::from_secs(30));
    let report = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.update(
            &r,
            state(
                id,
                TaskResult::Cancelled,
                vec![step(0, TaskResult::Cancelled, 0, 2)],
            ),
            &[],
        )
        .await
        .unwrap()
    };
    let (snap, resp) = tokio::join!(waiter, report);
    assert_eq!(resp.state.unwrap().result, TaskResult::Cancelled as i32);
    let snap = snap.expect("final");
    assert_eq!(snap.status, TaskStatus::Cancelled);
    assert_eq!(snap.client_result, TaskResult::Cancelled);
    // Server-side cancel marked the step cancelled; the runner's late step
    // states were not applied.
    assert_eq!(snap.steps[0].result, TaskResult::Cancelled);
    assert_eq!(snap.steps[0].log_length, 0);
    assert!(forge.violations().is_empty(), "{:?}", forge.violations());
}

#[tokio::test]
async fn ephemeral_runner_gets_one_task_and_is_deleted_after_it() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], true).await;
    forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    let first = c.fetch(&r, 0, Some(4), None).await.unwrap();
    let id = first.task.unwrap().id;
    assert!(first.additional_tasks.is_empty(), "one task only");
    assert!(c.fetch(&r, 0, Some(4), None).await.unwrap().task.is_none());
    c.log(&r, id, 0, &["done"], true).await.unwrap();
    c.update(
        &r,
        state(
            id,
            TaskResult::Success,
            vec![step(0, TaskResult::Success, 0, 1)],
        ),
        &[],
    )
    .await
    .unwrap();
    assert!(forge.runners().is_empty(), "deleted");
    let e = c.fetch(&r, 0, None, None).await.unwrap_err();
    assert_eq!((e.status, e.message.as_str()), (401, "unregistered runner"));
    assert!(forge.violations().is_empty(), "{:?}", forge.violations());
}

#[tokio::test]
async fn gitea_error_style() {
    let (forge, c) = forge().await;
    forge.set_gitea_errors(true);
    let e = c
        .call::<_, proto::FetchTaskResponse>("FetchTask", &proto::FetchTaskRequest::default(), None)
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (500, "unknown"));
    assert_eq!(
        e.message,
        "rpc error: code = Unauthenticated desc = unregistered runner"
    );
    // Register returns plain Go errors in Gitea: the bare message, no
    // "rpc error:" prefix.
    let reg = |name: &str, token: &str| proto::RegisterRequest {
        name: name.into(),
        token: token.into(),
        labels: vec!["linux".into()],
        ..Default::default()
    };
    forge.add_registration_token("old");
    forge.invalidate_registration_token("old");
    for (req, message) in [
        (reg("", ""), "missing runner token, name"),
        (reg("r", "nope"), "runner registration token not found"),
        (
            reg("r", "old"),
            "runner registration token has been invalidated, please use the latest one",
        ),
    ] {
        let e = c
            .call::<_, proto::RegisterResponse>("Register", &req, None)
            .await
            .unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (500, "unknown"));
        assert_eq!(e.message, message);
    }
    // Other RPCs keep the gRPC status text, for example a deleted task.
    let r = c.register(&["linux"], false).await;
    forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    let id = c.fetch(&r, 0, None, None).await.unwrap().task.unwrap().id;
    assert!(forge.delete_task(id));
    let e = c.log(&r, id, 0, &["x"], false).await.unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (500, "unknown"));
    assert_eq!(
        e.message,
        format!(
            "rpc error: code = Internal desc = get task: task with id {id}: resource does not exist"
        )
    );
    let e = c
        .update(&r, state(id, TaskResult::Unspecified, vec![]), &[])
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (500, "unknown"));
    assert_eq!(
        e.message,
        "rpc error: code = Internal desc = update task: resource does not exist"
    );
    // connect-go's own errors (an undecodable body) keep their code.
    let (status, body) = c
        .raw(
            reqwest::Method::POST,
            "runner.v1.RunnerService/Register",
            Some("application/proto"),
            vec![0xff, 0xff, 0xff],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "invalid_argument");
    forge.set_gitea_errors(false);
    let e = c
        .call::<_, proto::FetchTaskResponse>("FetchTask", &proto::FetchTaskRequest::default(), None)
        .await
        .unwrap_err();
    assert_eq!(e.status, 401);
    assert!(
        forge
            .requests()
            .iter()
            .any(|r| r.code == Some(Code::Unknown))
    );
}

#[tokio::test]
async fn fault_injection_and_delays() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;
    forge.fail_next("FetchTask", 2, Code::Unavailable);
    for _ in 0..2 {
        let e = c.fetch(&r, 0, None, None).await.unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (503, "unavailable"));
    }
    assert!(c.fetch(&r, 0, None, None).await.is_ok());
    forge.fail_next("*", 1, Code::Internal);
    let e = c
        .call::<_, proto::PingResponse>("Ping", &proto::PingRequest::default(), None)
        .await
        .unwrap_err();
    assert_eq!(e.status, 500);
    assert!(c.fetch(&r, 0, None, None).await.is_ok());
    assert_eq!(
        forge
            .requests()
            .iter()
            .filter(|q| q.method == "FetchTask" && q.http_status == 503)
            .count(),
        2
    );
    assert!(
        forge
            .requests()
            .iter()
            .filter(|q| q.method == "FetchTask")
            .all(|q| q.runner_uuid.as_deref() == Some(r.uuid.as_str()))
    );

    // A held answer beyond the client's Connect-Timeout-Ms: deadline_exceeded
    // once the client's deadline passed, long before the delay ends.
    forge.set_delay("FetchTask", Duration::from_secs(60));
    let started = std::time::Instant::now();
    let e = c
        .call_with::<_, proto::FetchTaskResponse>(
            "FetchTask",
            &proto::FetchTaskRequest::default(),
            Some(&r),
            &[("connect-timeout-ms", "100")],
        )
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (504, "deadline_exceeded"));
    assert!(started.elapsed() < Duration::from_secs(50));
    forge.set_delay("FetchTask", Duration::from_millis(300));
    // Within the deadline: answered late but fine.
    let started = std::time::Instant::now();
    assert!(c.fetch(&r, 0, None, None).await.is_ok());
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn stop_and_restart_keep_all_state() {
    let (forge, c) = forge().await;
    let url = forge.url();
    let r = c.register(&["linux"], false).await;
    let job = forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    let id = c.fetch(&r, 0, None, None).await.unwrap().task.unwrap().id;
    assert_eq!(c.log(&r, id, 0, &["one", "two"], false).await.unwrap(), 2);

    forge.stop().await;
    assert!(!forge.is_serving().await);
    let err = c
        .raw(
            reqwest::Method::POST,
            "ping.v1.PingService/Ping",
            Some("application/proto"),
            vec![],
            &[],
        )
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err}");
    // A fresh connection is refused outright.
    assert!(tokio::net::TcpStream::connect(forge.addr()).await.is_err());

    forge.restart().await.unwrap();
    assert_eq!(forge.url(), url);
    // Same credentials, same task, same log.
    assert_eq!(c.log(&r, id, 1, &["two", "three"], true).await.unwrap(), 3);
    c.update(
        &r,
        state(
            id,
            TaskResult::Success,
            vec![step(0, TaskResult::Success, 0, 3)],
        ),
        &[],
    )
    .await
    .unwrap();
    let snap = forge
        .wait_job_final(job, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(snap.log, ["one", "two", "three"]);
    assert!(forge.violations().is_empty(), "{:?}", forge.violations());
    // Restarting while serving is a no-op.
    forge.restart().await.unwrap();
}

#[tokio::test]
async fn stop_drops_held_answers() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;
    forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    forge.set_delay("FetchTask", Duration::from_secs(30));
    let headers = [
        ("x-runner-uuid", r.uuid.as_str()),
        ("x-runner-token", r.token.as_str()),
        ("x-runner-request-key", "lost"),
    ];
    let call = c.raw(
        reqwest::Method::POST,
        "runner.v1.RunnerService/FetchTask",
        Some("application/proto"),
        proto::FetchTaskRequest::default().encode_to_vec(),
        &headers,
    );
    let outage = async {
        assert!(
            forge
                .wait_for(|f| !f.tasks().is_empty(), Duration::from_secs(5))
                .await
        );
        forge.stop().await;
    };
    let (result, ()) = tokio::join!(call, outage);
    assert!(result.is_err(), "the held answer never arrives");
    // The task was assigned anyway; the runner recovers it with the same key.
    forge.set_delay("FetchTask", Duration::ZERO);
    forge.restart().await.unwrap();
    let resp = c.fetch(&r, 0, None, Some("lost")).await.unwrap();
    assert_eq!(resp.tasks_version, 0);
    assert_eq!(resp.task.unwrap().id, forge.tasks()[0].id);
}

#[tokio::test]
async fn context_keys_are_those_of_released_forgejo_with_opt_in_twins_and_oidc() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;
    forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    let task = c.fetch(&r, 0, None, None).await.unwrap().task.unwrap();
    let x = ctx(&task);
    // Every released Forgejo: only the gitea_* names, and Forgejo's default URL.
    assert_eq!(x["gitea_default_actions_url"], "https://data.forgejo.org");
    let runtime = x["gitea_runtime_token"].as_str().unwrap();
    assert!(runtime.len() > 10);
    assert_ne!(runtime, task.secrets["GITHUB_TOKEN"]);
    assert_eq!(x["forgejo_server_version"], "fake-forge");
    for absent in [
        "forgejo_default_actions_url",
        "forgejo_runtime_token",
        "forgejo_actions_id_token_request_token",
        "forgejo_actions_id_token_request_url",
    ] {
        assert!(x.get(absent).is_none(), "{absent} sent by default");
    }
    // The other §2.5 keys are still there.
    for key in [
        "server_url",
        "api_url",
        "workflow_ref",
        "actor_id",
        "repository_id",
        "repository_owner_id",
        "secret_source",
        "run_id",
        "run_attempt",
    ] {
        assert!(x.get(key).is_some(), "{key} missing");
    }

    // Opt-in twins (post-Jul-2026 development code) carry the same values.
    let twins = FakeForge::start(FakeOptions {
        registration_tokens: vec![REG_TOKEN.into()],
        forgejo_key_twins: true,
        default_actions_url: "https://mirror.example".into(),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let c2 = Client::new(&twins);
    let r2 = c2.register(&["linux"], false).await;
    twins.enqueue(FakeJob::new(payload(1), &["linux"]));
    let t = c2.fetch(&r2, 0, None, None).await.unwrap().task.unwrap();
    let x = ctx(&t);
    assert_eq!(x["forgejo_default_actions_url"], "https://mirror.example");
    assert_eq!(x["gitea_default_actions_url"], "https://mirror.example");
    assert_eq!(x["forgejo_runtime_token"], x["gitea_runtime_token"]);
    assert!(x.get("forgejo_actions_id_token_request_url").is_none());

    // OIDC per job: the request token and Forgejo's placeholder URL.
    let mut job = FakeJob::new(payload(1), &["linux"]);
    job.oidc = true;
    let job_id = forge.enqueue(job);
    let t = c.fetch(&r, 0, None, None).await.unwrap().task.unwrap();
    let x = ctx(&t);
    let run_id = x["run_id"].as_str().unwrap().to_string();
    assert_eq!(run_id, job_id.to_string());
    assert_eq!(
        x["forgejo_actions_id_token_request_url"],
        format!(
            "{}/api/actions/_apis/pipelines/workflows/{run_id}/idtoken?placeholder=true",
            forge.url()
        )
    );
    let oidc = x["forgejo_actions_id_token_request_token"]
        .as_str()
        .unwrap();
    // Forgejo hands out the runtime JWT itself as the request token
    // (services/actions/task.go `generateTaskContext`); its scope then
    // includes `generate_id_token:<run>:<job>`.
    assert_eq!(oidc, x["gitea_runtime_token"].as_str().unwrap());
    assert_eq!(oidc.split('.').count(), 3, "a JWT");
    assert_ne!(oidc, t.secrets["GITHUB_TOKEN"]);
}

/// A FetchTask call with `Accept-Encoding: gzip` through a client that does
/// not decompress: (status, Content-Encoding, raw body).
async fn raw_fetch(
    forge: &FakeForge,
    creds: &Creds,
    accept_gzip: bool,
) -> (u16, Option<String>, Vec<u8>) {
    let http = reqwest::Client::builder().no_gzip().build().unwrap();
    let mut rb = http
        .post(format!(
            "{}/api/actions/runner.v1.RunnerService/FetchTask",
            forge.url()
        ))
        .header("content-type", "application/proto")
        .header("x-runner-uuid", &creds.uuid)
        .header("x-runner-token", &creds.token)
        .body(proto::FetchTaskRequest::default().encode_to_vec());
    if accept_gzip {
        rb = rb.header("accept-encoding", "gzip");
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    let enc = resp
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    (status, enc, resp.bytes().await.unwrap().to_vec())
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test]
async fn answers_of_1_kib_or_more_are_gzipped_when_the_client_accepts_it() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;

    // A task answer crosses 1 KiB and arrives gzipped.
    forge.enqueue(FakeJob::new(payload(3), &["linux"]));
    let (status, enc, body) = raw_fetch(&forge, &r, true).await;
    assert_eq!(status, 200);
    assert_eq!(enc.as_deref(), Some("gzip"));
    let plain = gunzip(&body);
    assert!(plain.len() >= 1024, "{} bytes", plain.len());
    let resp = proto::FetchTaskResponse::decode(&plain[..]).unwrap();
    let task = resp.task.unwrap();
    assert_eq!(task.workflow_payload.unwrap(), payload(3).into_bytes());

    // Small answers (no task) are not compressed.
    let (status, enc, body) = raw_fetch(&forge, &r, true).await;
    assert_eq!((status, enc), (200, None));
    assert!(proto::FetchTaskResponse::decode(&body[..]).is_ok());

    // Without Accept-Encoding: plain, however large.
    forge.enqueue(FakeJob::new(payload(3), &["linux"]));
    let (status, enc, body) = raw_fetch(&forge, &r, false).await;
    assert_eq!((status, enc), (200, None));
    assert!(body.len() >= 1024);
    assert!(
        proto::FetchTaskResponse::decode(&body[..])
            .unwrap()
            .task
            .is_some()
    );

    // Error bodies are never compressed.
    let bad = Creds {
        uuid: r.uuid.clone(),
        token: "0".repeat(40),
    };
    let (status, enc, body) = raw_fetch(&forge, &bad, true).await;
    assert_eq!((status, enc), (401, None));
    assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());

    // Solstice's own client (which sends Accept-Encoding: gzip) decodes the
    // gzipped task end to end.
    let job = forge.enqueue(FakeJob::new(payload(2), &["linux"]));
    let client = ForgejoClient::new(&forge.url(), &ClientOptions::default())
        .unwrap()
        .with_credentials(Credentials {
            uuid: r.uuid.clone(),
            token: Secret::new(r.token.clone()),
        });
    let resp = client
        .fetch_task(
            proto::FetchTaskRequest::default(),
            "gzip-key",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let task = resp.task.unwrap();
    assert_eq!(task.id, forge.task_for_job(job).unwrap().id);
    assert_eq!(
        ctx(&task)["gitea_default_actions_url"],
        "https://data.forgejo.org"
    );
    assert_eq!(task.workflow_payload.unwrap(), payload(2).into_bytes());
    let last = forge.requests().pop().unwrap();
    assert_eq!(last.method, "FetchTask");
    assert!(last.gzipped, "the client's answer was gzipped on the wire");

    // The option turns compression off.
    let plain_forge = FakeForge::start(FakeOptions {
        registration_tokens: vec![REG_TOKEN.into()],
        compress_responses: false,
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let c2 = Client::new(&plain_forge);
    let r2 = c2.register(&["linux"], false).await;
    plain_forge.enqueue(FakeJob::new(payload(3), &["linux"]));
    let (status, enc, body) = raw_fetch(&plain_forge, &r2, true).await;
    assert_eq!((status, enc), (200, None));
    assert!(body.len() >= 1024);
}

#[tokio::test]
async fn gzipped_request_bodies_are_accepted_other_encodings_refused() {
    let (_forge, c) = forge().await;
    let req = proto::PingRequest {
        data: "zipped".into(),
    };
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, &req.encode_to_vec()).unwrap();
    let (status, body) = c
        .raw(
            reqwest::Method::POST,
            "ping.v1.PingService/Ping",
            Some("application/proto"),
            enc.finish().unwrap(),
            &[("content-encoding", "gzip")],
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        proto::PingResponse::decode(&body[..]).unwrap().data,
        "Hello, zipped!"
    );
    let (status, body) = c
        .raw(
            reqwest::Method::POST,
            "ping.v1.PingService/Ping",
            Some("application/proto"),
            req.encode_to_vec(),
            &[("content-encoding", "br")],
        )
        .await
        .unwrap();
    assert_eq!(status, 501);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "unimplemented");
}

#[tokio::test]
async fn empty_runs_on_or_a_runner_without_labels_never_matches() {
    let (forge, c) = forge().await;
    let bare = c.register(&[], false).await;
    let labelled = c.register(&["linux"], false).await;
    let anywhere = forge.enqueue(FakeJob::new(payload(1), &[]));
    let linux = forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    // The label-less runner gets nothing, not even the job without runs-on.
    let resp = c.fetch(&bare, 0, Some(5), None).await.unwrap();
    assert!(resp.task.is_none());
    assert!(resp.additional_tasks.is_empty());
    // The labelled runner gets the linux job only, although the other is older.
    let resp = c.fetch(&labelled, 0, Some(5), None).await.unwrap();
    assert_eq!(resp.task.unwrap().id, forge.task_for_job(linux).unwrap().id);
    assert!(resp.additional_tasks.is_empty());
    assert!(forge.task_for_job(anywhere).is_none());
    // A runner that declares no labels any more stops getting work.
    forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    let _: proto::DeclareResponse = c
        .call(
            "Declare",
            &proto::DeclareRequest {
                version: "v2".into(),
                labels: vec![],
                ..Default::default()
            },
            Some(&labelled),
        )
        .await
        .unwrap();
    assert!(
        c.fetch(&labelled, 0, None, None)
            .await
            .unwrap()
            .task
            .is_none()
    );
}

#[tokio::test]
async fn reaper_fails_the_task_and_archives_its_log() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;
    let job = forge.enqueue(FakeJob::new(payload(2), &["linux"]));
    let id = c.fetch(&r, 0, None, None).await.unwrap().task.unwrap().id;
    assert_eq!(c.log(&r, id, 0, &["a", "b"], false).await.unwrap(), 2);
    c.update(
        &r,
        state(
            id,
            TaskResult::Unspecified,
            vec![step(0, TaskResult::Success, 0, 2)],
        ),
        &[],
    )
    .await
    .unwrap();

    assert!(forge.reap_task(id));
    assert!(!forge.reap_task(id), "already final");
    assert!(!forge.cancel_task(id), "already final");
    assert!(!forge.reap_task(999));
    let snap = forge.task(id).unwrap();
    assert_eq!(snap.status, TaskStatus::Failure);
    assert!(snap.archived, "the reaper moves the log to storage");
    assert_eq!(snap.steps[0].result, TaskResult::Success, "done steps stay");
    assert_eq!(snap.steps[1].result, TaskResult::Failure);
    assert_eq!(forge.running_tasks(), 0);

    // The next UpdateTask answer carries FAILURE.
    let resp = c
        .update(&r, state(id, TaskResult::Unspecified, vec![]), &[])
        .await
        .unwrap();
    assert_eq!(resp.state.unwrap().result, TaskResult::Failure as i32);
    // New rows: already_exists; duplicates and empty calls are acknowledged.
    let e = c.log(&r, id, 2, &["c"], false).await.unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (409, "already_exists"));
    assert_eq!(e.message, "log file has been archived");
    assert_eq!(c.log(&r, id, 0, &["a", "b"], true).await.unwrap(), 2);
    assert_eq!(c.log(&r, id, 2, &[], true).await.unwrap(), 2);
    // The runner's final report changes nothing on the server.
    let resp = c
        .update(
            &r,
            state(
                id,
                TaskResult::Cancelled,
                vec![
                    step(0, TaskResult::Success, 0, 2),
                    step(1, TaskResult::Cancelled, 2, 0),
                ],
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(resp.state.unwrap().result, TaskResult::Failure as i32);
    let snap = forge
        .wait_job_final(job, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(snap.status, TaskStatus::Failure);
    assert_eq!(snap.client_result, TaskResult::Cancelled);
    assert_eq!(snap.log, ["a", "b"]);
}

#[tokio::test]
async fn deleted_task_reports_fail_with_resource_does_not_exist() {
    let (forge, c) = forge().await;
    let r = c.register(&["linux"], false).await;
    let job = forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    let id = c
        .fetch(&r, 0, None, Some("del-key"))
        .await
        .unwrap()
        .task
        .unwrap()
        .id;
    assert_eq!(c.log(&r, id, 0, &["a"], false).await.unwrap(), 1);

    assert!(forge.delete_task(id));
    assert!(!forge.delete_task(id), "already gone");
    assert!(forge.task(id).is_none());
    assert!(forge.task_for_job(job).is_none());
    assert!(forge.jobs().iter().all(|j| j.id != job));

    let e = c.log(&r, id, 1, &["b"], false).await.unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (500, "internal"));
    assert_eq!(
        e.message,
        format!("get task: task with id {id}: resource does not exist")
    );
    let e = c
        .update(&r, state(id, TaskResult::Success, vec![]), &[])
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (500, "internal"));
    assert_eq!(e.message, "update task: resource does not exist");
    // Nor does request-key recovery bring it back.
    let resp = c.fetch(&r, 0, None, Some("del-key")).await.unwrap();
    assert!(resp.task.is_none());
    assert!(resp.tasks_version > 0);
}

#[tokio::test]
async fn a_proxy_body_limit_answers_413_with_an_html_page() {
    let forge = FakeForge::start(FakeOptions {
        registration_tokens: vec![REG_TOKEN.into()],
        max_request_body: Some(2000),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let c = Client::new(&forge);
    let r = c.register(&["linux"], false).await;
    forge.enqueue(FakeJob::new(payload(1), &["linux"]));
    let id = c.fetch(&r, 0, None, None).await.unwrap().task.unwrap().id;

    // Under the limit: accepted.
    let small = "s".repeat(100);
    assert_eq!(c.log(&r, id, 0, &[small.as_str()], false).await.unwrap(), 1);
    // Over it: 413 with nginx's HTML, never reaching the forge.
    let big = "b".repeat(3000);
    let req = proto::UpdateLogRequest {
        task_id: id,
        index: 1,
        rows: vec![proto::LogRow {
            time: Some(proto::now()),
            content: big,
        }],
        no_more: false,
    };
    let headers = [
        ("x-runner-uuid", r.uuid.as_str()),
        ("x-runner-token", r.token.as_str()),
    ];
    for _ in 0..2 {
        let (status, body) = c
            .raw(
                reqwest::Method::POST,
                "runner.v1.RunnerService/UpdateLog",
                Some("application/proto"),
                req.encode_to_vec(),
                &headers,
            )
            .await
            .unwrap();
        assert_eq!(status, 413);
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with("<html>"), "{text}");
        assert!(text.contains("413 Request Entity Too Large"));
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
    }
    let snap = forge.task(id).unwrap();
    assert_eq!(snap.log_rows, 1);
    assert_eq!(
        snap.update_log_calls, 1,
        "the forge never saw the big calls"
    );
    let rejected: Vec<_> = forge
        .requests()
        .into_iter()
        .filter(|q| q.http_status == 413)
        .collect();
    assert_eq!(rejected.len(), 2);
    assert!(rejected.iter().all(|q| q.method == "UpdateLog"));

    // Solstice's client sees a non-JSON 413 as `unknown` with the status.
    let client = ForgejoClient::new(&forge.url(), &ClientOptions::default())
        .unwrap()
        .with_credentials(Credentials {
            uuid: r.uuid.clone(),
            token: Secret::new(r.token.clone()),
        });
    let e = client.update_log(req.clone()).await.unwrap_err();
    assert!(
        matches!(
            e,
            ForgeError::Status {
                http_status: 413,
                code: Code::Unknown,
                ..
            }
        ),
        "{e:?}"
    );

    // The limit can be lifted at run time.
    forge.set_max_request_body(None);
    assert_eq!(client.update_log(req).await.unwrap().ack_index, 2);
}

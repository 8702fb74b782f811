//! The fake GitHub, driven by a minimal client written here (reqwest +
//! ring), independent of Solstice's own GitHub client: the happy path of a
//! JIT runner through token exchange, broker, run service and results, and
//! the rejections a strict fake must make.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::rsa::{KeyPairComponents, PublicKeyComponents};
use ring::signature::{self, RsaKeyPair};
use serde_json::{Value, json};
use solstice::testing::fake_github::{
    Endpoint, FakeGithub, FakeGithubJob, FakeGithubOptions, FakeJobState, FakeStep,
};

const PAT: &str = "github_pat_test_0123456789";
const UA: &str = "solstice-test/0.1";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(UA)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn jwt(key: &RsaKeyPair, alg: &str, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"typ": "JWT", "alg": alg}).to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let msg = format!("{header}.{body}");
    let mut sig = vec![0u8; key.public().modulus_len()];
    let enc: &dyn signature::RsaEncoding = if alg == "PS256" {
        &signature::RSA_PSS_SHA256
    } else {
        &signature::RSA_PKCS1_SHA256
    };
    key.sign(enc, &SystemRandom::new(), msg.as_bytes(), &mut sig)
        .unwrap();
    format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig))
}

async fn start(hold: Duration) -> FakeGithub {
    let fake = FakeGithub::start(FakeGithubOptions {
        poll_hold: hold,
        ..Default::default()
    })
    .await
    .unwrap();
    fake.add_token(PAT);
    fake
}

/// A JIT runner as a minimal client holds it.
struct TestRunner {
    http: reqwest::Client,
    key: RsaKeyPair,
    fips: bool,
    client_id: String,
    token_url: String,
    broker: String,
    agent_id: u64,
    name: String,
    token: String,
    session: String,
}

async fn jit(fake: &FakeGithub, name: &str, labels: &[&str]) -> reqwest::Response {
    http()
        .post(format!(
            "{}/repos/octo-org/hello/actions/runners/generate-jitconfig",
            fake.api_url()
        ))
        .header("Authorization", format!("Bearer {PAT}"))
        .header("Accept", "application/vnd.github+json")
        .header("content-type", "application/json")
        .body(
            (json!({"name": name, "runner_group_id": 1, "labels": labels, "work_folder": "_work"}))
                .to_string(),
        )
        .send()
        .await
        .unwrap()
}

fn b64json(v: &Value) -> Value {
    serde_json::from_slice(&STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap()
}

fn field(v: &Value, k: &str) -> Vec<u8> {
    STANDARD.decode(v[k].as_str().unwrap()).unwrap()
}

impl TestRunner {
    async fn mint(fake: &FakeGithub, name: &str, labels: &[&str]) -> TestRunner {
        let r = jit(fake, name, labels).await;
        assert_eq!(r.status(), 201);
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        let files = b64json(&v["encoded_jit_config"]);
        let runner = b64json(&files[".runner"]);
        let creds = b64json(&files[".credentials"]);
        let rsa = b64json(&files[".credentials_rsaparams"]);
        assert_eq!(runner["useV2Flow"], true);
        assert_eq!(runner["ephemeral"], true);
        assert_eq!(creds["scheme"], "OAuth");
        let (n, e) = (field(&rsa, "modulus"), field(&rsa, "exponent"));
        let (d, p, q) = (field(&rsa, "d"), field(&rsa, "p"), field(&rsa, "q"));
        let (dp, dq, qi) = (
            field(&rsa, "dp"),
            field(&rsa, "dq"),
            field(&rsa, "inverseQ"),
        );
        assert_eq!(d.len(), n.len());
        assert_eq!(p.len(), n.len() / 2);
        let key = RsaKeyPair::from_components(&KeyPairComponents {
            public_key: PublicKeyComponents {
                n: n.as_slice(),
                e: e.as_slice(),
            },
            d: d.as_slice(),
            p: p.as_slice(),
            q: q.as_slice(),
            dP: dp.as_slice(),
            dQ: dq.as_slice(),
            qInv: qi.as_slice(),
        })
        .unwrap();
        TestRunner {
            http: http(),
            key,
            fips: creds["data"]["requireFipsCryptography"] == "True",
            client_id: creds["data"]["clientId"].as_str().unwrap().into(),
            token_url: creds["data"]["authorizationUrl"].as_str().unwrap().into(),
            broker: runner["serverUrlV2"].as_str().unwrap().into(),
            agent_id: runner["agentId"].as_u64().unwrap(),
            name: runner["agentName"].as_str().unwrap().into(),
            token: String::new(),
            session: String::new(),
        }
    }

    fn assertion(&self, alg: &str, aud: &str, t: i64) -> String {
        jwt(
            &self.key,
            alg,
            &json!({"iss": self.client_id, "sub": self.client_id, "aud": aud, "jti": uuid::Uuid::new_v4().to_string(), "nbf": t - 30, "iat": t - 30, "exp": t + 300}),
        )
    }

    async fn exchange_with(&self, assertion: &str) -> (u16, Value) {
        let r = self
            .http
            .post(&self.token_url)
            .header("Accept", "application/json")
            .form(&[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion),
            ])
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (
            s,
            serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    async fn exchange(&mut self) {
        let alg = if self.fips { "PS256" } else { "RS256" };
        let (s, v) = self
            .exchange_with(&self.assertion(alg, &self.token_url, now()))
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["token_type"], "JWT");
        self.token = v["access_token"].as_str().unwrap().into();
    }

    async fn create_session(&self, token: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}session", self.broker))
            .bearer_auth(token)
            .header("content-type", "application/json").body((json!({"sessionId": "00000000-0000-0000-0000-000000000000", "ownerName": "test (PID: 1)", "agent": {"id": self.agent_id, "name": self.name, "version": "2.336.0", "osDescription": "Linux"}, "useFipsEncryption": false})).to_string())            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (
            s,
            serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    async fn session(&mut self) {
        let (s, v) = self.create_session(&self.token.clone()).await;
        assert_eq!(s, 200, "{v}");
        self.session = v["sessionId"].as_str().unwrap().into();
    }

    fn query(&self, status: &str, version: &str) -> String {
        format!(
            "sessionId={}&status={status}&runnerVersion={version}&os=Linux&architecture=X64&disableUpdate=true",
            self.session
        )
    }

    async fn poll_q(&self, token: &str, query: &str) -> (u16, Option<u64>, Value) {
        let r = self
            .http
            .get(format!("{}message?{query}", self.broker))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let len = r.content_length();
        let text = r.text().await.unwrap();
        (s, len, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn poll(&self) -> (u16, Option<u64>, Value) {
        self.poll_q(&self.token, &self.query("Online", "2.336.0"))
            .await
    }

    async fn post(&self, url: &str, token: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body((body).to_string())
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (
            s,
            serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null),
        )
    }
}

/// Polls until a `RunnerJobRequest` arrives; returns its body.
async fn wait_job(r: &TestRunner) -> Value {
    for _ in 0..20 {
        let (s, _, v) = r.poll().await;
        assert_eq!(s, 200, "{v}");
        if v["messageType"] == "RunnerJobRequest" {
            assert!(v["messageId"].as_i64().unwrap() > 1 << 62);
            return serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
        }
    }
    panic!("no job delivered");
}

fn endpoint(msg: &Value) -> (String, String, String) {
    let ep = &msg["resources"]["endpoints"][0];
    assert_eq!(ep["name"], "SystemVssConnection");
    (
        ep["url"].as_str().unwrap().into(),
        ep["authorization"]["parameters"]["AccessToken"]
            .as_str()
            .unwrap()
            .into(),
        msg["variables"]["system.github.results_endpoint"]["value"]
            .as_str()
            .unwrap()
            .into(),
    )
}

struct Acquired {
    run: String,
    job_token: String,
    results: String,
    plan: String,
    job: String,
    steps: Vec<String>,
    msg: Value,
}

async fn acquire(r: &TestRunner, reference: &Value) -> Acquired {
    let run = reference["run_service_url"].as_str().unwrap();
    let (s, msg) = r
        .post(
            &format!("{run}acquirejob"),
            &r.token,
            json!({"jobMessageId": reference["runner_request_id"], "runnerOS": "Linux", "billingOwnerId": reference["billing_owner_id"]}),
        )
        .await;
    assert_eq!(s, 200, "{msg}");
    let (url, job_token, results) = endpoint(&msg);
    Acquired {
        run: url,
        job_token,
        results,
        plan: msg["plan"]["planId"].as_str().unwrap().into(),
        job: msg["jobId"].as_str().unwrap().into(),
        steps: msg["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect(),
        msg,
    }
}

impl Acquired {
    fn ids(&self) -> Value {
        json!({"workflow_run_backend_id": self.plan, "workflow_job_run_backend_id": self.job})
    }

    async fn results(&self, r: &TestRunner, method: &str, extra: Value) -> (u16, Value) {
        let mut body = self.ids();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let svc = if method == "WorkflowStepsUpdate" {
            "github.actions.results.api.v1.WorkflowStepUpdateService"
        } else {
            "results.services.receiver.Receiver"
        };
        r.post(
            &format!("{}twirp/{svc}/{method}", self.results),
            &self.job_token,
            body,
        )
        .await
    }

    async fn renew(&self, r: &TestRunner, token: &str) -> (u16, Value) {
        r.post(
            &format!("{}renewjob", self.run),
            token,
            json!({"planId": self.plan, "jobId": self.job}),
        )
        .await
    }
}

async fn put(url: &str, query_extra: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    let mut req = http().put(format!("{url}{query_extra}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn happy_path_jit_runner_runs_one_job() {
    let fake = start(Duration::from_millis(300)).await;
    let mut r = TestRunner::mint(
        &fake,
        "solstice-debian-0a1b2c3d",
        &["self-hosted", "Linux", "X64", "debian"],
    )
    .await;
    assert!(r.fips);
    r.exchange().await;
    r.session().await;

    // Nothing queued: the long poll ends empty (200, Content-Length 0).
    let (s, len, _) = r.poll().await;
    assert_eq!((s, len), (200, Some(0)));

    let idx = fake.enqueue(
        FakeGithubJob::new(&["self-hosted", "debian"])
            .workflow_env("W", "1")
            .env("GREETING", "hi ${{ vars.WHO }}")
            .var("WHO", "world")
            .secret("API_KEY", "s3cret")
            .run("echo one")
            .step(
                FakeStep::run("echo \"${{ github.sha }}\" > out")
                    .id("two")
                    .name("Step ${{ matrix.x }}"),
            )
            .step(FakeStep::uses("actions/checkout@v4").with("fetch-depth", "0"))
            .output("result", "${{ steps.two.outputs.v }}"),
    );
    let reference = wait_job(&r).await;
    assert_eq!(reference["should_acknowledge"], true);
    let (s, _) = r
        .post(
            &format!("{}acknowledge?{}", r.broker, r.query("Online", "2.336.0")),
            &r.token,
            json!({"runnerRequestId": reference["runner_request_id"]}),
        )
        .await;
    assert_eq!(s, 200);
    let a = acquire(&r, &reference).await;

    // The message in GitHub's wire shape.
    let m = &a.msg;
    assert_eq!(m["messageType"], "RunnerJobRequest");
    assert_eq!(m["requestId"], 0);
    assert_eq!(m["contextData"]["matrix"], Value::Null);
    assert_eq!(m["steps"][0]["reference"]["type"], "script");
    assert_eq!(m["steps"][0]["contextName"], "__run");
    assert_eq!(m["steps"][0]["inputs"]["map"][0]["Key"]["lit"], "script");
    assert_eq!(
        m["steps"][1]["inputs"]["map"][0]["Value"]["expr"],
        "format('echo \"{0}\" > out', github.sha)"
    );
    assert_eq!(
        m["steps"][1]["displayNameToken"]["expr"],
        "format('Step {0}', matrix.x)"
    );
    assert_eq!(m["steps"][2]["reference"]["name"], "actions/checkout");
    assert_eq!(m["steps"][2]["contextName"], "__actions_checkout");
    assert_eq!(m["variables"]["API_KEY"]["isSecret"], true);
    assert_eq!(m["variables"]["system.github.token"]["isSecret"], true);
    assert_eq!(m["contextData"]["vars"]["d"][0]["k"], "WHO");
    assert_eq!(m["environmentVariables"].as_array().unwrap().len(), 2);
    assert!(a.run.ends_with('/') && a.results.ends_with('/'));

    // Renew before anything else.
    let (s, v) = a.renew(&r, &a.job_token).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["lockedUntil"].as_str().unwrap().ends_with('Z'));

    let pending: Vec<Value> = a
        .steps
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"external_id": id, "number": i + 1, "name": "s", "status": 5}))
        .collect();
    let (s, v) = a
        .results(
            &r,
            "WorkflowStepsUpdate",
            json!({"steps": pending, "change_order": 1}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Step 1: append blob, two blocks, sealed.
    let (s, v) = a
        .results(
            &r,
            "GetStepLogsSignedBlobURL",
            json!({"step_backend_id": a.steps[0]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["soft_size_limit"], "1048576");
    let url = v["logs_url"].as_str().unwrap().to_string();
    assert_eq!(
        put(&url, "", &[("x-ms-blob-type", "AppendBlob")], "").await,
        201
    );
    assert_eq!(
        put(&url, "&comp=appendblock", &[], "line 1\nline 2\n").await,
        201
    );
    assert_eq!(
        put(
            &url,
            "&comp=appendblock&seal=true",
            &[("x-ms-blob-sealed", "true")],
            "line 3\n"
        )
        .await,
        201
    );
    let (s, v) = a.results(&r, "CreateStepLogsMetadata", json!({"step_backend_id": a.steps[0], "uploaded_at": "2026-12-05T14:00:00.000Z", "line_count": 3})).await;
    assert_eq!(s, 200, "{v}");
    let done = json!([{"external_id": a.steps[0], "number": 1, "name": "s", "status": 6, "conclusion": 2, "started_at": "2026-12-05T14:00:00.000Z", "completed_at": "2026-12-05T14:00:01.000Z"}]);
    let (s, _) = a
        .results(
            &r,
            "WorkflowStepsUpdate",
            json!({"steps": done, "change_order": 2}),
        )
        .await;
    assert_eq!(s, 200);
    // Job log: one block blob.
    let (s, v) = a.results(&r, "GetJobLogsSignedBlobURL", json!({})).await;
    assert_eq!(s, 200);
    let url = v["logs_url"].as_str().unwrap().to_string();
    assert_eq!(
        put(
            &url,
            "",
            &[
                ("x-ms-blob-type", "BlockBlob"),
                ("Content-Type", "text/plain")
            ],
            "a\nb"
        )
        .await,
        201
    );
    let (s, v) = a
        .results(
            &r,
            "CreateJobLogsMetadata",
            json!({"uploaded_at": "2026-12-05T14:00:02.000Z", "line_count": 2}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    let (s, v) = r
        .post(
            &format!("{}completejob", a.run),
            &a.job_token,
            json!({"planId": a.plan, "jobId": a.job, "conclusion": "succeeded", "outputs": {"result": {"value": "42", "isSecret": false}}, "stepResults": [{"external_id": a.steps[0], "number": 1, "name": "s", "status": "completed", "conclusion": "succeeded"}], "billingOwnerId": reference["billing_owner_id"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    let job = fake.job(idx).unwrap();
    assert_eq!(job.state, FakeJobState::Completed);
    assert_eq!(job.conclusion.as_deref(), Some("succeeded"));
    assert_eq!(job.outputs["result"], "42");
    assert_eq!(job.step_logs[&a.steps[0]], "line 1\nline 2\nline 3\n");
    assert_eq!(job.job_log.as_deref(), Some("a\nb"));
    assert_eq!(job.step_updates.len(), 2);
    assert_eq!(job.latest_steps()[&a.steps[0]]["status"], 6);
    assert!(job.acknowledged);
    assert_eq!(job.renewals, 1);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());

    // The job is closed and the ephemeral runner is gone.
    let (s, _) = a.renew(&r, &a.job_token).await;
    assert_eq!(s, 404);
    let (s, v) = a.results(&r, "GetJobLogsSignedBlobURL", json!({})).await;
    assert_eq!(s, 401, "{v}");
    assert!(fake.runners().is_empty());
    let alg = if r.fips { "PS256" } else { "RS256" };
    let (s, v) = r
        .exchange_with(&r.assertion(alg, &r.token_url, now()))
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_client")));
    let (s, _, v) = r.poll().await;
    assert_eq!((s, v["errorKind"].as_str()), (404, Some("RunnerNotFound")));
}

#[tokio::test]
async fn token_exchange_rejects_bad_assertions() {
    let fake = start(Duration::from_millis(200)).await;
    let r = TestRunner::mint(&fake, "r1", &["self-hosted"]).await;
    let other = TestRunner::mint(&fake, "r2", &["self-hosted"]).await;
    let t = now();
    // Signed with another runner's key.
    let forged = jwt(
        &other.key,
        "PS256",
        &json!({"iss": r.client_id, "sub": r.client_id, "aud": r.token_url, "nbf": t, "exp": t + 300}),
    );
    let (s, v) = r.exchange_with(&forged).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("invalid_grant")),
        "{v}"
    );
    // RS256 while the registration asks for PS256.
    let (s, v) = r
        .exchange_with(&r.assertion("RS256", &r.token_url, t))
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("invalid_grant")),
        "{v}"
    );
    // Wrong audience.
    let (s, v) = r
        .exchange_with(&r.assertion("PS256", &format!("{}x", r.token_url), t))
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("invalid_grant")),
        "{v}"
    );
    // Clock skew: ten minutes ahead.
    let (s, v) = r
        .exchange_with(&r.assertion("PS256", &r.token_url, t + 900))
        .await;
    assert_eq!(s, 401);
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("Current server time is"),
        "{v}"
    );
    // sub != iss.
    let bad_sub = jwt(
        &r.key,
        "PS256",
        &json!({"iss": r.client_id, "sub": "x", "aud": r.token_url, "nbf": t, "exp": t + 300}),
    );
    assert_eq!(r.exchange_with(&bad_sub).await.0, 401);
    // Unknown client.
    let unknown = jwt(
        &r.key,
        "PS256",
        &json!({"iss": "nobody", "sub": "nobody", "aud": r.token_url, "nbf": t, "exp": t + 300}),
    );
    let (s, v) = r.exchange_with(&unknown).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_client")));
    // JSON instead of a form.
    let resp = http()
        .post(&r.token_url)
        .header("content-type", "application/json")
        .body((json!({"grant_type": "client_credentials"})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["error"], "invalid_request");
    // Wrong grant type.
    let resp = http()
        .post(&r.token_url)
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Short-lived tokens expire: 401 on the broker.
    fake.set_runner_token_ttl(Duration::from_secs(1));
    let mut r = r;
    r.exchange().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(r.create_session(&r.token.clone()).await.0, 401);
    // RS256 registrations.
    fake.set_require_fips(false);
    let mut rs = TestRunner::mint(&fake, "r3", &["self-hosted"]).await;
    assert!(!rs.fips);
    rs.exchange().await;
}

#[tokio::test]
async fn broker_rejects_what_github_rejects() {
    let fake = start(Duration::from_millis(200)).await;
    let mut r = TestRunner::mint(&fake, "r1", &["self-hosted", "linux"]).await;
    r.exchange().await;
    r.session().await;
    // One live session per runner.
    assert_eq!(r.create_session(&r.token.clone()).await.0, 409);
    // Old runner version.
    let (s, _, v) = r.poll_q(&r.token, &r.query("Online", "2.300.0")).await;
    assert_eq!(
        (s, v["errorKind"].as_str()),
        (403, Some("RunnerVersionTooOld"))
    );
    assert_eq!(v["source"], "actions-broker-listener");
    // Bad status, missing os.
    assert_eq!(
        r.poll_q(&r.token, &r.query("online", "2.336.0")).await.0,
        400
    );
    let q = format!(
        "sessionId={}&status=Online&runnerVersion=2.336.0&architecture=X64",
        r.session
    );
    assert_eq!(r.poll_q(&r.token, &q).await.0, 400);
    // Unknown session.
    let q = "sessionId=00000000-0000-0000-0000-000000000001&status=Online&runnerVersion=2.336.0&os=Linux&architecture=X64";
    let (_, _, v) = r.poll_q(&r.token, q).await;
    assert_eq!(v["errorKind"], "RunnerSessionInvalid");
    // 204 switch.
    fake.set_empty_poll_204(true);
    assert_eq!(r.poll().await.0, 204);
    // A poll that never answers: the client's own timeout fires.
    fake.set_poll_hang(true);
    let quick = reqwest::Client::builder()
        .user_agent(UA)
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let err = quick
        .get(format!(
            "{}message?{}",
            r.broker,
            r.query("Online", "2.336.0")
        ))
        .bearer_auth(&r.token)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    fake.set_poll_hang(false);
    // Injected 5xx.
    fake.fail_next(Endpoint::Poll, 2, 503);
    assert_eq!(r.poll().await.0, 503);
    assert_eq!(r.poll().await.0, 503);

    // A job token is refused by the broker.
    fake.enqueue(FakeGithubJob::new(&["linux"]).run("true"));
    let reference = wait_job(&r).await;
    let a = acquire(&r, &reference).await;
    assert_eq!(
        r.poll_q(&a.job_token, &r.query("Busy", "2.336.0")).await.0,
        401
    );
    // Cancellation and ForceTokenRefresh on the same poll.
    assert!(fake.cancel_job(1, "00:05:00"));
    let (s, _, v) = r.poll_q(&r.token, &r.query("Busy", "2.336.0")).await;
    assert_eq!(
        (s, v["messageType"].as_str()),
        (200, Some("JobCancellation"))
    );
    let body: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"jobId": a.job, "timeout": "00:05:00"}));
    assert!(fake.force_token_refresh(r.agent_id));
    let (_, _, v) = r.poll().await;
    assert_eq!(v["messageType"], "ForceTokenRefresh");

    // Deleting the session ends it.
    let resp = http()
        .delete(format!("{}session", r.broker))
        .bearer_auth(&r.token)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let (_, _, v) = r.poll().await;
    assert_eq!(v["errorKind"], "RunnerSessionInvalid");
    // Deleting a runner that runs a job: 422.
    let resp = http()
        .delete(format!(
            "{}/repos/octo-org/hello/actions/runners/{}",
            fake.api_url(),
            r.agent_id
        ))
        .bearer_auth(PAT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("is still running a job")
    );
}

#[tokio::test]
async fn run_service_and_results_reject_protocol_mistakes() {
    let fake = start(Duration::from_millis(200)).await;
    let mut r = TestRunner::mint(&fake, "r1", &["self-hosted", "linux"]).await;
    r.exchange().await;
    r.session().await;
    let idx = fake.enqueue(FakeGithubJob::new(&["linux"]).run("echo a").run("echo b"));
    let reference = wait_job(&r).await;
    let run = reference["run_service_url"].as_str().unwrap().to_string();
    // Malformed and unknown acquisitions.
    let (s, v) = r
        .post(
            &format!("{run}acquirejob"),
            &r.token,
            json!({"runnerOS": "Linux"}),
        )
        .await;
    assert_eq!(
        (s, v["source"].as_str()),
        (422, Some("actions-run-service"))
    );
    let (s, _) = r
        .post(
            &format!("{run}acquirejob"),
            &r.token,
            json!({"jobMessageId": "nope", "runnerOS": "Linux"}),
        )
        .await;
    assert_eq!(s, 404);
    let a = acquire(&r, &reference).await;
    let (s, _) = r.post(&format!("{run}acquirejob"), &r.token, json!({"jobMessageId": reference["runner_request_id"], "runnerOS": "Linux", "billingOwnerId": reference["billing_owner_id"]})).await;
    assert_eq!(s, 409);
    // Runner token on renew.
    assert_eq!(a.renew(&r, &r.token).await.0, 401);
    // A results call before the first renew is a violation.
    let pending = json!([{"external_id": a.steps[0], "number": 1, "name": "a", "status": 5}]);
    assert_eq!(
        a.results(
            &r,
            "WorkflowStepsUpdate",
            json!({"steps": pending, "change_order": 5})
        )
        .await
        .0,
        200
    );
    assert_eq!(fake.violations().len(), 1);
    assert_eq!(a.renew(&r, &a.job_token).await.0, 200);
    // change_order must increase; status and conclusion values are checked.
    assert_eq!(
        a.results(
            &r,
            "WorkflowStepsUpdate",
            json!({"steps": pending, "change_order": 5})
        )
        .await
        .0,
        400
    );
    let bad = json!([{"external_id": a.steps[0], "number": 1, "name": "a", "status": 1}]);
    assert_eq!(
        a.results(
            &r,
            "WorkflowStepsUpdate",
            json!({"steps": bad, "change_order": 6})
        )
        .await
        .0,
        400
    );
    let bad = json!([{"external_id": "x", "number": 1, "name": "a", "status": 3}]);
    assert_eq!(
        a.results(
            &r,
            "WorkflowStepsUpdate",
            json!({"steps": bad, "change_order": 7})
        )
        .await
        .0,
        400
    );
    // int64 as a decimal string is fine (protobuf JSON); no Content-Type is not.
    let ok = json!([{"external_id": a.steps[0], "number": 1, "name": "a", "status": "3"}]);
    assert_eq!(
        a.results(
            &r,
            "WorkflowStepsUpdate",
            json!({"steps": ok, "change_order": "8"})
        )
        .await
        .0,
        200
    );
    let resp = http()
        .post(format!(
            "{}twirp/results.services.receiver.Receiver/GetJobLogsSignedBlobURL",
            a.results
        ))
        .bearer_auth(&a.job_token)
        .body(a.ids().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // Wrong ids.
    let (s, _) = r
        .post(
            &format!(
                "{}twirp/results.services.receiver.Receiver/GetJobLogsSignedBlobURL",
                a.results
            ),
            &a.job_token,
            json!({"workflow_run_backend_id": a.plan, "workflow_job_run_backend_id": a.plan}),
        )
        .await;
    assert_eq!(s, 400);
    // Blobs: append after seal, bad signature, wrong line count.
    let (_, v) = a
        .results(
            &r,
            "GetStepLogsSignedBlobURL",
            json!({"step_backend_id": a.steps[1]}),
        )
        .await;
    let url = v["logs_url"].as_str().unwrap().to_string();
    let (_, v0) = a
        .results(
            &r,
            "GetStepLogsSignedBlobURL",
            json!({"step_backend_id": a.steps[0]}),
        )
        .await;
    assert_ne!(v0["logs_url"], v["logs_url"]);
    assert_eq!(put(&url, "&comp=appendblock", &[], "early\n").await, 404);
    assert_eq!(
        put(&url, "", &[("x-ms-blob-type", "AppendBlob")], "").await,
        201
    );
    assert_eq!(
        put(&url, "&comp=appendblock&seal=true", &[], "x\ny\n").await,
        201
    );
    assert_eq!(put(&url, "&comp=appendblock", &[], "late\n").await, 409);
    assert_eq!(
        put(
            &url.replace("sig=", "sig=0"),
            "&comp=appendblock",
            &[],
            "z\n"
        )
        .await,
        403
    );
    assert_eq!(put(&url, "", &[], "no type").await, 400);
    let (s, _) = a.results(&r, "CreateStepLogsMetadata", json!({"step_backend_id": a.steps[1], "uploaded_at": "2026-12-05T14:00:00.000Z", "line_count": 3})).await;
    assert_eq!(s, 400);
    // completejob: conclusion values, outputs shape, snake_case step results.
    let complete = |body: Value| {
        let a_run = a.run.clone();
        let tok = a.job_token.clone();
        let r = &r;
        async move { r.post(&format!("{a_run}completejob"), &tok, body).await.0 }
    };
    assert_eq!(
        complete(json!({"planId": a.plan, "jobId": a.job, "conclusion": "success"})).await,
        400
    );
    assert_eq!(
        complete(
            json!({"planId": a.plan, "jobId": a.job, "conclusion": "failed", "outputs": {"o": "v"}})
        )
        .await,
        400
    );
    assert_eq!(complete(json!({"planId": a.plan, "jobId": a.job, "conclusion": "failed", "stepResults": [{"externalId": a.steps[0]}]})).await, 400);
    assert_eq!(
        complete(json!({"planId": a.plan, "jobId": a.job, "conclusion": "failed"})).await,
        200
    );
    assert_eq!(
        complete(json!({"planId": a.plan, "jobId": a.job, "conclusion": "failed"})).await,
        404
    );
    assert_eq!(fake.job(idx).unwrap().conclusion.as_deref(), Some("failed"));
}

#[tokio::test]
async fn rest_api_rules() {
    let fake = start(Duration::from_millis(200)).await;
    let api = fake.api_url();
    let runners = format!("{api}/repos/octo-org/hello/actions/runners");
    // No User-Agent: 403, as GitHub.
    let bare = reqwest::Client::new();
    let resp = bare.get(&runners).bearer_auth(PAT).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    // No or bad credentials.
    assert_eq!(http().get(&runners).send().await.unwrap().status(), 401);
    assert_eq!(
        http()
            .get(&runners)
            .bearer_auth("nope")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // JIT validation.
    let jit_url = format!("{runners}/generate-jitconfig");
    let post = |body: Value| {
        let url = jit_url.clone();
        async move {
            http()
                .post(&url)
                .header("Authorization", format!("token {PAT}"))
                .header("content-type", "application/json")
                .body((body).to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post(json!({"name": "a", "labels": ["x"]})).await, 422);
    assert_eq!(
        post(json!({"name": "a", "runner_group_id": 7, "labels": ["x"]})).await,
        422
    );
    assert_eq!(
        post(json!({"name": "a", "runner_group_id": 1, "labels": []})).await,
        422
    );
    let many: Vec<String> = (0..101).map(|i| format!("l{i}")).collect();
    assert_eq!(
        post(json!({"name": "a", "runner_group_id": 1, "labels": many})).await,
        422
    );
    assert_eq!(
        post(json!({"name": "a", "runner_group_id": 1, "labels": ["x"]})).await,
        201
    );
    assert_eq!(
        post(json!({"name": "a", "runner_group_id": 1, "labels": ["x"]})).await,
        409
    );
    for i in 0..3 {
        assert_eq!(post(json!({"name": format!("b{i}"), "runner_group_id": 1, "labels": ["self-hosted", "x"]})).await, 201);
    }
    // Pagination.
    let resp = http()
        .get(format!("{runners}?per_page=2&page=1"))
        .bearer_auth(PAT)
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("link").is_some());
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["total_count"], 4);
    assert_eq!(v["runners"].as_array().unwrap().len(), 2);
    assert_eq!(v["runners"][0]["status"], "offline");
    let v: Value = http()
        .get(format!("{runners}?per_page=2&page=2"))
        .bearer_auth(PAT)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse::<Value>()
        .unwrap();
    let id = v["runners"][1]["id"].as_u64().unwrap();
    assert_eq!(v["runners"][1]["labels"][0]["type"], "read-only");
    // Delete.
    assert_eq!(
        http()
            .delete(format!("{runners}/{id}"))
            .bearer_auth(PAT)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        http()
            .delete(format!("{runners}/{id}"))
            .bearer_auth(PAT)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // Org scope is separate.
    let v: Value = http()
        .get(format!("{api}/orgs/octo-org/actions/runners"))
        .bearer_auth(PAT)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse::<Value>()
        .unwrap();
    assert_eq!(v["total_count"], 0);

    // GitHub App: RS256 JWT for an installation token.
    let key = fake.add_app(123, 456);
    let kp = RsaKeyPair::from_pkcs8(&key.pkcs8_der()).unwrap();
    assert!(
        key.pkcs1_pem()
            .expose()
            .starts_with(concat!("-----BEGIN RSA ", "PRIVATE KEY-----"))
    );
    let t = now();
    let access = |inst: u64, token: String| {
        let api = api.clone();
        async move {
            let resp = http()
                .post(format!("{api}/app/installations/{inst}/access_tokens"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let s = resp.status().as_u16();
            (
                s,
                serde_json::from_str::<Value>(&resp.text().await.unwrap()).unwrap_or(Value::Null),
            )
        }
    };
    let good = jwt(
        &kp,
        "RS256",
        &json!({"iss": 123, "iat": t - 60, "exp": t + 540}),
    );
    let (s, v) = access(456, good.clone()).await;
    assert_eq!(s, 201, "{v}");
    let ghs = v["token"].as_str().unwrap().to_string();
    assert!(ghs.starts_with("ghs_") && v["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(access(999, good).await.0, 404);
    assert_eq!(
        access(
            456,
            jwt(
                &kp,
                "RS256",
                &json!({"iss": 123, "iat": t - 700, "exp": t - 100})
            )
        )
        .await
        .0,
        401
    );
    assert_eq!(
        access(
            456,
            jwt(
                &kp,
                "RS256",
                &json!({"iss": 123, "iat": t, "exp": t + 3600})
            )
        )
        .await
        .0,
        401
    );
    assert_eq!(
        access(
            456,
            jwt(&kp, "RS256", &json!({"iss": 124, "iat": t, "exp": t + 500}))
        )
        .await
        .0,
        401
    );
    let other = fake.add_app(777, 1);
    let okp = RsaKeyPair::from_pkcs8(&other.pkcs8_der()).unwrap();
    assert_eq!(
        access(
            456,
            jwt(
                &okp,
                "RS256",
                &json!({"iss": 123, "iat": t, "exp": t + 500})
            )
        )
        .await
        .0,
        401
    );
    // The installation token works for REST.
    assert_eq!(
        http()
            .get(&runners)
            .bearer_auth(&ghs)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn jobs_go_to_matching_runners_and_are_redelivered() {
    let fake = start(Duration::from_millis(200)).await;
    let mut plain = TestRunner::mint(&fake, "plain", &["self-hosted", "Linux"]).await;
    let mut gpu = TestRunner::mint(&fake, "gpu", &["self-hosted", "Linux", "gpu"]).await;
    let mut gpu2 = TestRunner::mint(&fake, "gpu2", &["self-hosted", "Linux", "GPU"]).await;
    for r in [&mut plain, &mut gpu, &mut gpu2] {
        r.exchange().await;
        r.session().await;
    }
    fake.set_redelivery_timeout(Duration::from_millis(300));
    let idx = fake.enqueue(FakeGithubJob::new(&["self-hosted", "gpu"]).run("nvidia-smi"));
    // The plain runner never gets it.
    assert_eq!(plain.poll().await.1, Some(0));
    let first = wait_job(&gpu).await;
    // gpu ignores it (as a busy ephemeral runner would); it goes to gpu2.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = wait_job(&gpu2).await;
    assert_eq!(first["runner_request_id"], second["runner_request_id"]);
    // Too late for gpu now.
    let (s, _) = gpu.post(&format!("{}acquirejob", first["run_service_url"].as_str().unwrap()), &gpu.token, json!({"jobMessageId": first["runner_request_id"], "runnerOS": "Linux", "billingOwnerId": first["billing_owner_id"]})).await;
    assert_eq!(s, 404);
    let a = acquire(&gpu2, &second).await;
    let job = fake.job(idx).unwrap();
    assert_eq!(job.delivered_to, vec![gpu.agent_id, gpu2.agent_id]);
    assert_eq!(
        job.state,
        FakeJobState::Acquired {
            runner: gpu2.agent_id
        }
    );
    // A lock that is never renewed abandons the job.
    fake.set_lock_duration(Duration::from_millis(200));
    assert_eq!(a.renew(&gpu2, &a.job_token).await.0, 200);
    let j = fake
        .wait_job_final(idx, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(j.state, FakeJobState::Abandoned);
    assert_eq!(a.renew(&gpu2, &a.job_token).await.0, 404);
}

/// A minimal WebSocket client: handshake with a bearer token, then masked
/// text frames and a close. Returns the handshake's status code.
async fn ws_send(url: &str, token: &str, frames: &[String]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("ws://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!(
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    let status: u16 = String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    if status != 101 {
        return status;
    }
    let mask = [1u8, 2, 3, 4];
    let frame = |op: u8, payload: &[u8]| {
        let mut f = vec![0x80 | op];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, c)| c ^ mask[i % 4]));
        f
    };
    for t in frames {
        s.write_all(&frame(1, t.as_bytes())).await.unwrap();
    }
    s.write_all(&frame(8, &[0x03, 0xe8])).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
    status
}

#[tokio::test]
async fn feed_busy_runners_and_injected_faults() {
    let fake = start(Duration::from_millis(200)).await;
    let mut r = TestRunner::mint(&fake, "r1", &["self-hosted", "linux"]).await;
    r.exchange().await;
    r.session().await;
    let idx = fake.enqueue(FakeGithubJob::new(&["linux"]).run("echo a"));
    let reference = wait_job(&r).await;
    // An injected 401 on acquirejob, then the retry works.
    fake.fail_next(Endpoint::AcquireJob, 1, 401);
    let run = reference["run_service_url"].as_str().unwrap();
    let (s, _) = r.post(&format!("{run}acquirejob"), &r.token, json!({"jobMessageId": reference["runner_request_id"], "runnerOS": "Linux", "billingOwnerId": reference["billing_owner_id"]})).await;
    assert_eq!(s, 401);
    let a = acquire(&r, &reference).await;
    assert_eq!(a.renew(&r, &a.job_token).await.0, 200);

    // The live feed: bearer job token, frames recorded.
    let feed = a.msg["resources"]["endpoints"][0]["data"]["FeedStreamUrl"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ws_send(&feed, &r.token, &[]).await, 401);
    let frame =
        json!({"count": 2, "value": ["a", "b"], "stepId": a.steps[0], "startLine": 1}).to_string();
    assert_eq!(ws_send(&feed, &a.job_token, &[frame]).await, 101);
    assert!(
        fake.wait_for(
            |f| f.job(idx).unwrap().feed_frames.len() == 1,
            Duration::from_secs(5)
        )
        .await
    );
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());

    // A second job to the busy ephemeral runner: acknowledging it is a
    // violation; polling with status=Busy gets nothing by default.
    let idx2 = fake.enqueue(FakeGithubJob::new(&["linux"]).run("echo b"));
    assert_eq!(
        r.poll_q(&r.token, &r.query("Busy", "2.336.0")).await.1,
        Some(0)
    );
    fake.set_deliver_while_busy(true);
    let second = wait_job(&r).await;
    let (s, _) = r
        .post(
            &format!("{}acknowledge?{}", r.broker, r.query("Busy", "2.336.0")),
            &r.token,
            json!({"runnerRequestId": second["runner_request_id"]}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(fake.violations().len(), 1, "{:?}", fake.violations());
    assert_eq!(fake.job(idx2).unwrap().delivered_to, vec![r.agent_id]);
    // Acknowledging something never delivered.
    let (s, v) = r
        .post(
            &format!("{}acknowledge?{}", r.broker, r.query("Busy", "2.336.0")),
            &r.token,
            json!({"runnerRequestId": "nope"}),
        )
        .await;
    assert_eq!(
        (s, v["errorKind"].as_str()),
        (404, Some("AcknowledgeJobNotFound"))
    );
    // Session conflict window.
    fake.invalidate_session(r.agent_id);
    fake.set_session_conflict_for(Duration::from_millis(300));
    assert_eq!(r.create_session(&r.token.clone()).await.0, 409);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(r.create_session(&r.token.clone()).await.0, 200);
    // A lost answer: the renewal happens, the client sees a cut connection.
    let before = fake.job(idx).unwrap().renewals;
    fake.lose_next_answer(Endpoint::RenewJob, 1);
    let err = r
        .http
        .post(format!("{}renewjob", a.run))
        .bearer_auth(&a.job_token)
        .header("content-type", "application/json")
        .body(json!({"planId": a.plan, "jobId": a.job}).to_string())
        .send()
        .await;
    assert!(err.is_err(), "{err:?}");
    assert_eq!(fake.job(idx).unwrap().renewals, before + 1);
    assert_eq!(a.renew(&r, &a.job_token).await.0, 200);
    // Renew 404 switch.
    fake.set_renew_404(idx);
    assert_eq!(a.renew(&r, &a.job_token).await.0, 404);
    // Every request was recorded.
    assert!(
        fake.requests()
            .iter()
            .any(|q| q.endpoint == Endpoint::Feed && q.status == 101)
    );
}

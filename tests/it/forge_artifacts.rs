//! Artifacts and OIDC ID tokens through the forge (issue 13 §3, §4).
//!
//! The fake forge serves Forgejo's artifact API v4 and ID-token endpoint
//! (`src/testing/fake_forge/artifacts.rs`). These tests drive it with the
//! real clients: the fixture action `tests/fixtures/actions/forge-artifacts`
//! runs `@actions/artifact` 2.x and `@actions/core` from npm (a pinned lock),
//! first with the host's node against a fake on 127.0.0.1 (no VM), then in
//! Debian guests run by the daemon against a fake inside a network namespace
//! at a documentation address. Needs root (namespaces), node and npm.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use solstice::forge::forgejo::client::{ClientOptions, Credentials, ForgejoClient};
use solstice::forge::forgejo::proto;
use solstice::forge::forgejo::task::{TranslateOptions, translate};
use solstice::secret::Secret;
use solstice::testing::fake_forge::{
    ARTIFACT_V4_ROUTE_BASE, ArtifactStatus, FakeForge, FakeJob, FakeOptions,
};

use crate::support::{self, npm};

const RUNNER_SECRET: &str = "0123456789abcdef0123456789abcdef01234567";

const PAYLOAD: &str =
    "name: ci\non: push\njobs:\n  build:\n    runs-on: linux\n    steps:\n      - run: true\n";

/// `tests/fixtures/actions/forge-artifacts`.
fn fixture() -> PathBuf {
    support::actions::fixtures_dir().join("forge-artifacts")
}

/// The decoded claims of a JWT.
fn claims(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// A runner of `forge` that fetches tasks with Solstice's own client.
async fn runner(forge: &FakeForge) -> ForgejoClient {
    let uuid = forge.register_offline(RUNNER_SECRET, "host", &["linux"]);
    ForgejoClient::new(&forge.url(), &ClientOptions::default())
        .unwrap()
        .with_credentials(Credentials {
            uuid,
            token: Secret::new(RUNNER_SECRET),
        })
}

async fn fetch(client: &ForgejoClient) -> proto::Task {
    client
        .fetch_task(
            proto::FetchTaskRequest::default(),
            "",
            Duration::from_secs(5),
        )
        .await
        .unwrap()
        .task
        .expect("a task")
}

/// What Solstice gives a task's steps, through the real translation:
/// (runner-level env, masked values).
fn runtime_env(task: &proto::Task, forge: &FakeForge) -> (HashMap<String, String>, Vec<String>) {
    let t = translate(
        task,
        &TranslateOptions {
            instance_url: forge.url(),
            max_job_timeout: None,
        },
    )
    .unwrap();
    let env = t.spec.extra_env.into_iter().collect();
    let masks = t
        .spec
        .extra_masks
        .iter()
        .map(|s| s.expose().to_string())
        .chain(t.spec.secrets.values().map(|s| s.expose().to_string()))
        .collect();
    (env, masks)
}

/// The fixture action run by the host's node, as a runner runs a node
/// action: `INPUT_*`, the runtime env, a workspace and `GITHUB_OUTPUT`.
/// Returns the step's outputs; panics with its output when it fails.
struct HostAction {
    dir: tempfile::TempDir,
    trace: PathBuf,
}

impl HostAction {
    /// The action's files next to a link to the locked `node_modules`.
    fn new() -> HostAction {
        let modules = npm::install_locked(&fixture());
        let dir = tempfile::tempdir().unwrap();
        for f in ["action.yml", "main.js", "package.json"] {
            std::fs::copy(fixture().join(f), dir.path().join(f)).unwrap();
        }
        std::os::unix::fs::symlink(&modules, dir.path().join("node_modules")).unwrap();
        npm::trace_preload(dir.path());
        let trace = dir.path().join("trace.txt");
        HostAction { dir, trace }
    }

    fn run(
        &self,
        env: &HashMap<String, String>,
        workspace: &Path,
        inputs: &[(&str, &str)],
    ) -> Result<HashMap<String, String>, String> {
        let outputs = self.dir.path().join("outputs");
        std::fs::write(&outputs, "").unwrap();
        let mut c = Command::new("node");
        c.arg("-r")
            .arg(self.dir.path().join("solstice-trace-requires.js"))
            .arg(self.dir.path().join("main.js"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("SOLSTICE_NODE_TRACE", &self.trace)
            .env("GITHUB_WORKSPACE", workspace)
            .env("GITHUB_OUTPUT", &outputs)
            .env("RUNNER_TEMP", self.dir.path())
            .env("GITHUB_SERVER_URL", "http://127.0.0.1:9")
            .envs(env)
            .current_dir(workspace);
        for (k, v) in inputs {
            c.env(format!("INPUT_{}", k.to_uppercase()), v);
        }
        let out = c.output().expect("run node");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || text.contains("::error::") {
            return Err(text);
        }
        Ok(parse_outputs(&std::fs::read_to_string(&outputs).unwrap()))
    }
}

/// `GITHUB_OUTPUT` as @actions/core writes it (`name<<delimiter`).
fn parse_outputs(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if let Some((name, delim)) = l.split_once("<<") {
            let mut v = Vec::new();
            for l in lines.by_ref() {
                if l == delim {
                    break;
                }
                v.push(l);
            }
            out.insert(name.to_string(), v.join("\n"));
        }
    }
    out
}

/// A Twirp call: (status, body).
async fn twirp(forge: &FakeForge, method: &str, auth: Option<&str>, body: &Value) -> (u16, String) {
    let mut rb = reqwest::Client::new()
        .post(format!("{}{ARTIFACT_V4_ROUTE_BASE}/{method}", forge.url()))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn get(url: &str, auth: Option<&str>) -> (u16, String) {
    let mut rb = reqwest::Client::new().get(url);
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Deterministic bytes that do not compress to nothing.
fn sample(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// The host-side scenario: the real client against the strict fake. Also
/// records which module files node loaded (`trace`), for the guest copy.
/// Returns the trace file's path (inside `keep`).
async fn host_scenario(keep: &Path) -> PathBuf {
    let forge = FakeForge::start(FakeOptions::default()).await.unwrap();
    let client = runner(&forge).await;
    let mut a = FakeJob::new(PAYLOAD, &["linux"]);
    a.oidc = true;
    let job_a = forge.enqueue(a);
    let task_a = fetch(&client).await;
    let mut b = FakeJob::new(PAYLOAD, &["linux"]);
    b.run_id = Some(job_a);
    forge.enqueue(b);
    let task_b = fetch(&client).await;
    let other_run = forge.enqueue(FakeJob::new(PAYLOAD, &["linux"]));
    let task_c = fetch(&client).await;
    assert_eq!(forge.task_for_job(other_run).unwrap().id, task_c.id);

    // The variables forgejo-runner sets, from the task; tokens masked.
    let (env_a, masks_a) = runtime_env(&task_a, &forge);
    let (env_b, _) = runtime_env(&task_b, &forge);
    let (env_c, _) = runtime_env(&task_c, &forge);
    let jwt_a = forge.runtime_token(task_a.id).unwrap();
    let jwt_a = jwt_a.expose();
    assert_eq!(
        env_a["ACTIONS_RUNTIME_URL"],
        format!("{}/api/actions_pipeline/", forge.url())
    );
    assert_eq!(env_a["ACTIONS_RESULTS_URL"], forge.url());
    assert_eq!(env_a["ACTIONS_RUNTIME_TOKEN"], jwt_a);
    assert_eq!(env_a["ACTIONS_ID_TOKEN_REQUEST_TOKEN"], jwt_a);
    assert_eq!(
        env_a["ACTIONS_ID_TOKEN_REQUEST_URL"],
        format!(
            "{}/api/actions/_apis/pipelines/workflows/{job_a}/idtoken?placeholder=true",
            forge.url()
        )
    );
    assert!(!env_b.contains_key("ACTIONS_ID_TOKEN_REQUEST_URL"));
    assert!(masks_a.iter().any(|m| m == jwt_a), "runtime token masked");
    let c = claims(jwt_a);
    assert_eq!(
        c["scp"],
        format!("Actions.Results:{job_a}:{job_a} generate_id_token:{job_a}:{job_a}")
    );
    assert_eq!(c["TaskID"], task_a.id);
    assert_eq!(c["RunID"], job_a);

    // Upload in A with the real client, download in B (same run).
    let action = HostAction::new();
    let ws_a = tempfile::tempdir().unwrap();
    let data = sample(300_000);
    std::fs::create_dir_all(ws_a.path().join("out/sub")).unwrap();
    std::fs::write(ws_a.path().join("out/data.bin"), &data).unwrap();
    std::fs::write(ws_a.path().join("out/sub/note.txt"), "hello artifact\n").unwrap();
    let up = action
        .run(
            &env_a,
            ws_a.path(),
            &[
                ("mode", "upload"),
                ("name", "bundle"),
                ("files", "data.bin\nsub/note.txt"),
                ("root", "out"),
            ],
        )
        .unwrap_or_else(|e| panic!("upload failed:\n{e}"));
    let arts = forge.artifacts();
    assert_eq!(arts.len(), 1, "{arts:?}");
    assert_eq!(arts[0].run_id, job_a);
    assert_eq!(arts[0].name, "bundle");
    assert_eq!(arts[0].status, ArtifactStatus::UploadConfirmed);
    assert_eq!(up["id"], arts[0].id.to_string());
    let zip = arts[0].content.clone().unwrap();
    assert!(zip.starts_with(b"PK\x03\x04"), "a zip");
    assert_eq!(up["size"], zip.len().to_string());

    let ws_b = tempfile::tempdir().unwrap();
    let listed = action
        .run(&env_b, ws_b.path(), &[("mode", "list")])
        .unwrap_or_else(|e| panic!("list failed:\n{e}"));
    assert_eq!(listed["names"], "bundle");
    let dest = ws_b.path().join("got");
    action
        .run(
            &env_b,
            ws_b.path(),
            &[
                ("mode", "download"),
                ("name", "bundle"),
                ("path", dest.to_str().unwrap()),
            ],
        )
        .unwrap_or_else(|e| panic!("download failed:\n{e}"));
    assert_eq!(std::fs::read(dest.join("data.bin")).unwrap(), data);
    assert_eq!(
        std::fs::read_to_string(dest.join("sub/note.txt")).unwrap(),
        "hello artifact\n"
    );

    // Another run does not see it: the client finds no artifact.
    let ws_c = tempfile::tempdir().unwrap();
    let err = action
        .run(
            &env_c,
            ws_c.path(),
            &[("mode", "download"), ("name", "bundle"), ("path", "x")],
        )
        .unwrap_err();
    assert!(err.contains("404") || err.contains("not found"), "{err}");

    // OIDC: core.getIDToken gets an ES256 JWT with Forgejo's claims.
    let tok = action
        .run(
            &env_a,
            ws_a.path(),
            &[("mode", "id-token"), ("audience", "sts.example")],
        )
        .unwrap_or_else(|e| panic!("id-token failed:\n{e}"));
    let header: Value = serde_json::from_str(&tok["header"]).unwrap();
    let id: Value = serde_json::from_str(&tok["claims"]).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(id["aud"], "sts.example");
    assert_eq!(id["iss"], format!("{}/api/actions", forge.url()));
    assert_eq!(
        id["sub"],
        "repo:fake-owner-1/fake-repo-1:ref:refs/heads/main"
    );
    assert_eq!(id["repository"], "fake-owner/fake-repo");
    assert_eq!(id["run_id"], job_a.to_string());
    assert_eq!(id["ref"], "refs/heads/main");
    let (s, keys) = get(
        &format!("{}/api/actions/.well-known/keys", forge.url()),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let keys: Value = serde_json::from_str(&keys).unwrap();
    assert_eq!(keys["keys"][0]["kid"], header["kid"]);
    // A job without OIDC cannot get one.
    let env_c_oidc_url = format!(
        "{}/api/actions/_apis/pipelines/workflows/{other_run}/idtoken?placeholder=true",
        forge.url()
    );
    let bearer_c = format!("Bearer {}", env_c["ACTIONS_RUNTIME_TOKEN"]);
    assert_eq!(
        get(&env_c_oidc_url, Some(&bearer_c)).await,
        (500, "Error runner api parsing custom claims\n".into())
    );
    assert_eq!(
        get(&env_a["ACTIONS_ID_TOKEN_REQUEST_URL"], None).await,
        (401, "Bad authorization header\n".into())
    );

    // Refusals, as Forgejo answers them.
    let bearer_a = format!("Bearer {jwt_a}");
    let run_a = json!({"workflow_run_backend_id": job_a.to_string(), "workflow_job_run_backend_id": job_a.to_string(), "name": "x", "version": 4});
    assert_eq!(
        twirp(&forge, "CreateArtifact", None, &run_a).await,
        (401, "Bad authorization header\n".into())
    );
    // Another run's (valid) token for this run.
    assert_eq!(
        twirp(&forge, "CreateArtifact", Some(&bearer_c), &run_a).await,
        (400, "run-id does not match\n".into())
    );
    // A token signed by someone else.
    let mut forged: Vec<&str> = jwt_a.split('.').collect();
    let evil = URL_SAFE_NO_PAD.encode(
        json!({"scp": format!("Actions.Results:{job_a}:{job_a}"), "TaskID": task_a.id, "RunID": job_a, "JobID": job_a})
            .to_string(),
    );
    forged[1] = &evil;
    assert_eq!(
        twirp(
            &forge,
            "CreateArtifact",
            Some(&format!("Bearer {}", forged.join("."))),
            &run_a
        )
        .await,
        (500, "Error runner api getting task\n".into())
    );
    // Bodies are protojson: unknown fields are refused.
    let mut extra = run_a.clone();
    extra["mime_type"] = json!("application/zip");
    assert_eq!(
        twirp(&forge, "CreateArtifact", Some(&bearer_a), &extra).await,
        (500, "Error decode request body\n".into())
    );
    // The old runners' task token still works (Forgejo's fallback).
    let list_b =
        json!({"workflow_run_backend_id": job_a.to_string(), "workflow_job_run_backend_id": "0"});
    let (s, body) = twirp(
        &forge,
        "ListArtifacts",
        Some(&format!("Bearer {}", task_b.secrets["GITHUB_TOKEN"])),
        &list_b,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"databaseId\""), "{body}");
    // Signed URLs: the signature covers the query, and they expire.
    let (s, body) = twirp(&forge, "GetSignedArtifactURL", Some(&bearer_a), &json!({"workflow_run_backend_id": job_a.to_string(), "workflow_job_run_backend_id": job_a.to_string(), "name": "bundle"})).await;
    assert_eq!(s, 200, "{body}");
    let url = serde_json::from_str::<Value>(&body).unwrap()["signedUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), zip);
    // What @azure/storage-blob >= 12.24 sends: the padding of `sig` cut off.
    assert!(url.contains("=&expires="), "{url}");
    let unpadded = url.replace("=&expires=", "&expires=");
    assert_eq!(
        get(&unpadded, None).await,
        (401, "Error unauthorized\n".into())
    );
    let tampered = url.replace("taskID=", "taskID=9");
    assert_eq!(
        get(&tampered, None).await,
        (401, "Error unauthorized\n".into())
    );
    forge.set_signed_url_ttl(Duration::ZERO);
    let (_, body) = twirp(
        &forge,
        "GetSignedArtifactURL",
        Some(&bearer_a),
        &json!({"workflow_run_backend_id": job_a.to_string(), "name": "bundle"}),
    )
    .await;
    let expired = serde_json::from_str::<Value>(&body).unwrap()["signedUrl"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        get(&expired, None).await,
        (401, "Error link expired\n".into())
    );
    // DeleteArtifact only marks it (Forgejo's cleanup job deletes later).
    let (s, body) = twirp(
        &forge,
        "DeleteArtifact",
        Some(&bearer_a),
        &json!({"workflow_run_backend_id": job_a.to_string(), "name": "bundle"}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["artifactId"], forge.artifacts()[0].id.to_string());
    assert_eq!(forge.artifacts()[0].status, ArtifactStatus::PendingDeletion);
    // A task that is over: its token and its URLs stop working.
    assert!(forge.cancel_task(task_a.id));
    assert_eq!(
        twirp(&forge, "CreateArtifact", Some(&bearer_a), &run_a).await,
        (
            500,
            "Error runner api getting task: task is not running\n".into()
        )
    );
    assert_eq!(
        get(&url, None).await,
        (
            500,
            "Error runner api getting task: task is not running\n".into()
        )
    );
    assert!(forge.violations().is_empty(), "{:?}", forge.violations());

    let trace = keep.join("trace.txt");
    std::fs::copy(&action.trace, &trace).unwrap();
    trace
}

/// The host's node and the real `@actions/artifact`/`@actions/core`
/// against the fake on 127.0.0.1: upload in one job, list and download in
/// another job of the same run, nothing for another run, an ID token, and
/// every refusal as Forgejo answers it.
#[tokio::test(flavor = "multi_thread")]
async fn real_clients_upload_download_and_get_id_tokens_from_the_fake_on_the_host() {
    let keep = tempfile::tempdir().unwrap();
    let trace = host_scenario(keep.path()).await;
    assert!(std::fs::metadata(trace).unwrap().len() > 0);
}

const PRODUCE: &str = r#"
name: ci
on: push
jobs:
  produce:
    runs-on: debian
    steps:
      - run: mkdir -p out/sub && seq 1 20000 > out/numbers.txt && echo "hello artifact" > out/sub/note.txt
      - id: up
        uses: fixtures/forge-artifacts@v1
        with:
          mode: upload
          name: bundle
          root: out
          files: |
            numbers.txt
            sub/note.txt
      - id: oidc
        uses: fixtures/forge-artifacts@v1
        with:
          mode: id-token
          audience: solstice-e2e
      - env:
          CLAIMS: ${{ steps.oidc.outputs.claims }}
        run: printf 'claims=%s\n' "$CLAIMS"
      - run: echo "runtime=[$ACTIONS_RUNTIME_TOKEN] idreq=[$ACTIONS_ID_TOKEN_REQUEST_TOKEN] results=[$ACTIONS_RESULTS_URL]"
      - id: c
        uses: fixtures/cache-action@v1
        with:
          path: cached
          key: e2e-${{ github.run_id }}
      - run: mkdir -p cached && echo cached-bytes > cached/blob && echo "hit=${{ steps.c.outputs.cache-hit }}"
      - run: |
          node -e '
            fetch("http://10.0.2.2:METRICS_PORT/metrics", { signal: AbortSignal.timeout(5000) })
              .then((r) => console.log("metrics-REACHED " + r.status), (e) => console.log("metrics-unreachable " + (e.cause && e.cause.code)));
          '
"#;

const CONSUME: &str = r#"
name: ci
on: push
jobs:
  consume:
    runs-on: debian
    needs: produce
    steps:
      - uses: fixtures/forge-artifacts@v1
        with:
          mode: download
          name: bundle
          path: got
      - run: seq 1 20000 | cmp - got/numbers.txt && grep -qx "hello artifact" got/sub/note.txt && echo bytes-match
      - env:
          STALE: ${{ secrets.STALE }}
          RUN: ${{ github.run_id }}
        run: |
          node -e '
            const body = JSON.stringify({ workflow_run_backend_id: process.env.RUN,
              workflow_job_run_backend_id: process.env.RUN, name: "evil", version: 4 });
            fetch(process.env.ACTIONS_RESULTS_URL + "/twirp/github.actions.results.api.v1.ArtifactService/CreateArtifact", {
              method: "POST", body,
              headers: { authorization: "Bearer " + process.env.STALE, "content-type": "application/json" },
            }).then(async (r) => console.log(`stale-token: status=${r.status} body=${(await r.text()).trim()}`));
          '
      - id: c
        uses: fixtures/cache-action@v1
        with:
          path: cached
          key: e2e-${{ github.run_id }}
      - run: test "${{ steps.c.outputs.cache-hit }}" = true && grep -qx cached-bytes cached/blob && echo cache-restored
"#;

/// End to end in Debian guests run by the daemon: the fake forge listens in
/// a network namespace at 198.51.100.10 (reachable from the host and from
/// the guest, like a forge elsewhere on the network). Job `produce` uploads
/// an artifact with the real `@actions/artifact` and gets an ID token with
/// the real `core.getIDToken`; job `consume` (same run, `needs: produce`)
/// downloads it and compares the bytes, and a CreateArtifact with the
/// finished job's runtime token is refused as Forgejo refuses it. No token
/// appears in the job logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_in_guests_share_an_artifact_and_get_an_id_token_through_the_forge() {
    use crate::support::daemon::Daemon;
    use crate::support::netns;
    use crate::support::world::{World, final_task, log_of};
    use solstice::testing::fake_forge::TaskStatus;
    use solstice::testing::git_server::GitServer;

    // The module files the real clients load, from a host-side run.
    let keep = tempfile::tempdir().unwrap();
    let trace = host_scenario(keep.path()).await;

    // The fixture action with only those files of its locked closure.
    let server = GitServer::start().await;
    let tree = tempfile::tempdir().unwrap();
    for f in ["action.yml", "main.js", "package.json", "package-lock.json"] {
        std::fs::copy(fixture().join(f), tree.path().join(f)).unwrap();
    }
    let modules = npm::install_locked(&fixture());
    npm::copy_traced(&modules.canonicalize().unwrap(), &trace, tree.path());
    server.publish(
        support::actions::OWNER,
        "forge-artifacts",
        tree.path(),
        &["v1"],
    );
    // The actions/cache stand-in (real `@actions/cache`), for the daemon's
    // cache service.
    let cache_fixture = support::repo_root().join("tests/fixtures/cache-action");
    let cache_tree = tempfile::tempdir().unwrap();
    for f in ["action.yml", "main.js", "post.js"] {
        std::fs::copy(cache_fixture.join(f), cache_tree.path().join(f)).unwrap();
    }
    support::actions::copy_tree(
        &npm::install_locked(&cache_fixture),
        &cache_tree.path().join("node_modules"),
    );
    server.publish(
        support::actions::OWNER,
        "cache-action",
        cache_tree.path(),
        &["v1"],
    );
    // The daemon's metrics endpoint, on the host's loopback: out of the
    // guest's reach.
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let ns = netns::create("forge", "198.51.100.10".parse().unwrap());
    let forge = FakeForge::start_on(
        ns.listen(0),
        FakeOptions {
            default_actions_url: server.url().to_string(),
            ..FakeOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(
        forge.url().starts_with("http://198.51.100.10:"),
        "{}",
        forge.url()
    );

    let world = World::new();
    forge.register_offline(RUNNER_SECRET, "e2e", &["debian"]);
    let cred = world.secret_file("fake.secret", RUNNER_SECRET);
    let config = format!(
        "[daemon]\nstate_dir = {:?}\nmax_concurrent_jobs = 1\ndrain_timeout_secs = 30\n\
         metrics_listen = \"127.0.0.1:{metrics_port}\"\n\
         [qemu]\naccel = \"tcg\"\n\
         [images.debian]\npath = {:?}\nvcpus = 1\nmemory_mib = 1024\nboot_timeout_secs = 300\n\
         ssh_user = \"debian\"\nlabels = [\"debian\"]\n\
         [forges.fake]\nurl = {:?}\n{cred}\nfetch_interval_secs = 1\nfetch_timeout_secs = 5\n\
         [actions]\nallowed_hosts = [\"127.0.0.1\"]\n",
        world.state_dir(),
        support::image("debian"),
        forge.url(),
    );
    std::fs::write(&world.config, config).unwrap();

    let produce_yaml = PRODUCE.replace("METRICS_PORT", &metrics_port.to_string());
    let mut produce = FakeJob::new(&produce_yaml, &["debian"]);
    produce.oidc = true;
    let job_a = forge.enqueue(produce);
    let logs = world.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut d = Daemon::spawn(&world.config, &logs);
    d.wait_ready(Duration::from_secs(60));

    let a = final_task(&forge, job_a, &d).await;
    let log_a = log_of(&a);
    assert_eq!(a.status, TaskStatus::Success, "{log_a}");
    let jwt_a = forge.runtime_token(a.id).unwrap().expose().to_string();
    assert!(!jwt_a.is_empty());
    let arts = forge.artifacts();
    assert_eq!(arts.len(), 1, "{arts:?}\n{log_a}");
    assert_eq!((arts[0].run_id, arts[0].name.as_str()), (job_a, "bundle"));
    assert_eq!(arts[0].status, ArtifactStatus::UploadConfirmed);
    // The ID token's claims, as the step printed them.
    let line = a
        .step_log(3)
        .iter()
        .find_map(|l| l.split_once("claims=").map(|(_, c)| c.to_string()))
        .unwrap_or_else(|| panic!("no claims line:\n{log_a}"));
    let id: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(id["aud"], "solstice-e2e");
    assert_eq!(id["iss"], format!("{}/api/actions", forge.url()));
    assert_eq!(
        id["sub"],
        "repo:fake-owner-1/fake-repo-1:ref:refs/heads/main"
    );
    assert_eq!(id["run_id"], job_a.to_string());
    // The tokens are masked where a step prints them.
    let env_line = a.step_log(4).join("\n");
    assert!(env_line.contains("runtime=[***] idreq=[***]"), "{env_line}");
    assert!(
        env_line.contains(&format!("results=[{}]", forge.url())),
        "{env_line}"
    );

    // The cache step missed and its post step saved through the daemon's
    // cache service; the metrics endpoint stayed out of the guest's reach
    // (while the host reaches it).
    assert!(a.step_log(6).join("\n").contains("hit=false"), "{log_a}");
    let probe = a.step_log(7).join("\n");
    assert!(probe.contains("metrics-unreachable"), "{probe}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("solstice_"), "{metrics}");

    // The dependent job of the same run, with A's (now stale) token as a secret.
    let mut consume = FakeJob::new(CONSUME, &["debian"]);
    consume.run_id = Some(job_a);
    consume.needs = HashMap::from([(
        "produce".into(),
        proto::TaskNeed {
            outputs: HashMap::new(),
            result: proto::TaskResult::Success as i32,
        },
    )]);
    consume.secrets.insert("STALE".into(), jwt_a.clone());
    let job_b = forge.enqueue(consume);
    let b = final_task(&forge, job_b, &d).await;
    let log_b = log_of(&b);
    assert_eq!(b.status, TaskStatus::Success, "{log_b}");
    assert!(b.step_log(1).join("\n").contains("bytes-match"), "{log_b}");
    assert!(
        b.step_log(4).join("\n").contains("cache-restored"),
        "{log_b}"
    );
    let refused = b.step_log(2).join("\n");
    assert!(
        refused.contains(
            "stale-token: status=500 body=Error runner api getting task: task is not running"
        ),
        "{refused}"
    );
    assert_eq!(
        forge.artifacts().len(),
        1,
        "nothing created with the stale token"
    );
    let jwt_b = forge.runtime_token(b.id).unwrap().expose().to_string();
    for (name, t) in [("A", &a), ("B", &b)] {
        let all = log_of(t);
        for tok in [&jwt_a, &jwt_b, &t.token.expose().to_string()] {
            assert!(!all.contains(tok.as_str()), "a token in job {name}'s log");
        }
    }
    assert!(!d.log_text().contains(&jwt_a), "a token in the daemon log");
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(60)).success());
    world.assert_clean();
    drop(ns);
}

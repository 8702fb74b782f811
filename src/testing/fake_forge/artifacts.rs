//! The job-facing services of the fake forge: the artifact API v4 (Twirp
//! JSON under `/twirp/github.actions.results.api.v1.ArtifactService/`, with
//! its signed upload and download URLs) and the OpenID Connect ID-token
//! endpoint (`/api/actions/_apis/pipelines/workflows/{run_id}/idtoken`, plus
//! `/api/actions/.well-known/keys` and `openid-configuration`).
//!
//! It follows Forgejo's code (`routers/api/actions/artifactsv4.go`,
//! `artifacts.go` `ArtifactContexter`, `artifacts_chunks.go`, `id_token.go`,
//! `services/actions/auth.go`), statuses and bodies included:
//!
//! - The runtime token is an HS256 JWT signed with the instance's secret,
//!   claims `exp`, `nbf`, `scp="Actions.Results:<run>:<job>"` (plus
//!   ` generate_id_token:<run>:<job>` with OIDC), `TaskID`, `RunID`,
//!   `JobID`, `ac`, and with OIDC `oidc_extra`/`oidc_sub`. With OIDC the same
//!   JWT is also the ID-token request token, as Forgejo sends it.
//! - Twirp calls need `Authorization: Bearer <jwt>` (401 "Bad authorization
//!   header" otherwise). A JWT that does not verify falls back to the old
//!   runners' task-token lookup; when that fails too: 500 "Error runner api
//!   getting task". A verified JWT of a task that is not running: 500 "Error
//!   runner api getting task: task is not running". A body whose
//!   `workflow_run_backend_id` is not the token's run: 400 "run-id does not
//!   match". Bodies are protojson: unknown fields or wrong types get 500
//!   "Error decode request body".
//! - Signed URLs carry an HMAC over (endpoint, expiry, name, task, artifact)
//!   and expire after [`DEFAULT_SIGNED_URL_TTL`]: a bad signature gets 401
//!   "Error unauthorized", an expired link 401 "Error link expired".
//! - Artifacts belong to a run; `CreateArtifact` of an existing name reuses
//!   the artifact. Blocks (`comp=block&blockid=…`) are kept per run until a
//!   `comp=blocklist` XML names them; `FinalizeArtifact` joins them in that
//!   order, checks a `sha256:` hash and confirms the artifact. Without a
//!   block list, `comp=appendBlock` data (no block id) is used.
//! - As in Forgejo, `ListArtifacts` lists every artifact of the run whatever
//!   its state (404 "Not Found" when the run has none), and `DeleteArtifact`
//!   only marks a confirmed artifact for deletion (Forgejo's cleanup job
//!   removes it later; this fake has no cleanup job).
//!
//! Where the fake differs: one signing key for everything (Forgejo has a
//! general secret for the runtime token and URLs and an asymmetric key for
//! ID tokens; here ID tokens are ES256, one of the algorithms Forgejo's
//! `[actions] ID_TOKEN_SIGNING_ALGORITHM` accepts, its default being RS256);
//! expiry stamps are written in UTC; no quota, no storage limits; the
//! download answer's type is `application/zip` for zip data, else
//! `application/octet-stream`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, Method, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::civil::Civil;

/// Where Forgejo mounts the v4 artifact service.
pub const ARTIFACT_V4_ROUTE_BASE: &str = "/twirp/github.actions.results.api.v1.ArtifactService";

/// How long a signed upload or download URL is valid (Forgejo: 60 minutes).
pub const DEFAULT_SIGNED_URL_TTL: Duration = Duration::from_secs(60 * 60);

/// Runtime tokens are valid this long (Forgejo: 24 hours).
const RUNTIME_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// ID tokens are valid this long (Forgejo's `ID_TOKEN_EXPIRATION_TIME` default).
const ID_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// What Forgejo stores as the content encoding of a v4 artifact.
const V4_CONTENT_ENCODING: &str = "application/zip";

/// The state of an artifact (Forgejo's `ArtifactStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactStatus {
    /// Created, not (successfully) finalized.
    UploadPending,
    /// Finalized: the content is stored.
    UploadConfirmed,
    /// `DeleteArtifact` was called; Forgejo's cleanup job has not run.
    PendingDeletion,
}

/// One artifact as the fake stores it.
#[derive(Clone)]
pub struct ArtifactSnapshot {
    pub id: i64,
    pub run_id: i64,
    pub name: String,
    pub status: ArtifactStatus,
    /// The finalized bytes (the zip the client uploaded), if any.
    pub content: Option<Vec<u8>>,
}

impl fmt::Debug for ArtifactSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArtifactSnapshot")
            .field("id", &self.id)
            .field("run_id", &self.run_id)
            .field("name", &self.name)
            .field("status", &self.status)
            .field("bytes", &self.content.as_ref().map(Vec::len))
            .finish()
    }
}

/// What the services need to know about a task.
#[derive(Debug, Clone, Copy)]
pub(super) struct TaskAuth {
    pub task_id: i64,
    pub run_id: i64,
    pub job_id: i64,
    pub running: bool,
}

/// Looks tasks up for the services (implemented by the forge's state).
pub(super) trait Tasks {
    /// The task with this id.
    fn task_auth(&self, task_id: i64) -> Option<TaskAuth>;
    /// The running task whose (40-hex) task token this is.
    fn running_task_by_token(&self, token: &str) -> Option<TaskAuth>;
}

/// An HTTP answer of the services.
#[derive(Debug)]
pub(super) struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(header::HeaderName, String)>,
}

impl Answer {
    /// Go's `http.Error`: plain text, the message and a newline.
    fn error(status: StatusCode, msg: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{msg}\n").into_bytes(),
            headers: vec![(header::X_CONTENT_TYPE_OPTIONS, "nosniff".into())],
        }
    }

    /// Forgejo's `ctx.JSON`: the value and a newline (Go's `json.Encoder`).
    fn json(status: StatusCode, v: &Value) -> Answer {
        let mut body = v.to_string().into_bytes();
        body.push(b'\n');
        Answer {
            status,
            content_type: "application/json;charset=utf-8",
            body,
            headers: Vec::new(),
        }
    }

    /// A protojson message (`sendProtbufBody`: no newline).
    fn proto(v: &Value) -> Answer {
        Answer {
            status: StatusCode::OK,
            content_type: "application/json;charset=utf-8",
            body: v.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    fn empty(status: StatusCode) -> Answer {
        Answer {
            status,
            content_type: "",
            body: Vec::new(),
            headers: Vec::new(),
        }
    }
}

struct Artifact {
    id: i64,
    run_id: i64,
    name: String,
    path: String,
    content_encoding: String,
    file_size: i64,
    compressed_size: i64,
    status: ArtifactStatus,
    content: Option<Vec<u8>>,
    /// `comp=appendBlock` data without a block id, in order.
    appended: Vec<Vec<u8>>,
    created: i64,
}

/// The services' state: keys, artifacts and uploaded blocks.
pub(super) struct Services {
    /// Forgejo's general token signing secret (runtime JWTs, signed URLs).
    secret: ring::hmac::Key,
    id_key: EcdsaKeyPair,
    id_kid: String,
    rng: SystemRandom,
    next_artifact_id: i64,
    artifacts: BTreeMap<i64, Artifact>,
    /// `(run, block id)` → data (Forgejo's `tmpv4<run>/block-…` files).
    blocks: HashMap<(i64, String), Vec<u8>>,
    /// `(run, artifact)` → the block-list XML.
    block_lists: HashMap<(i64, i64), Vec<u8>>,
    /// Lifetime of signed URLs minted from now on.
    pub(super) signed_url_ttl: Duration,
}

/// Seconds since the epoch.
fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

impl Services {
    pub(super) fn new() -> Services {
        let rng = SystemRandom::new();
        let secret_bytes: [u8; 32] = rand::random();
        let secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret_bytes);
        // Key generation only fails if the system has no randomness at all.
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap_or_else(|_| panic!("fake forge: cannot generate a P-256 key"));
        let id_key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap_or_else(|_| panic!("fake forge: cannot load the generated P-256 key"));
        let id_kid = b64(&Sha256::digest(id_key.public_key().as_ref()));
        Services {
            secret,
            id_key,
            id_kid,
            rng,
            next_artifact_id: 1,
            artifacts: BTreeMap::new(),
            blocks: HashMap::new(),
            block_lists: HashMap::new(),
            signed_url_ttl: DEFAULT_SIGNED_URL_TTL,
        }
    }

    /// Every artifact, by id.
    pub(super) fn snapshots(&self) -> Vec<ArtifactSnapshot> {
        self.artifacts
            .values()
            .map(|a| ArtifactSnapshot {
                id: a.id,
                run_id: a.run_id,
                name: a.name.clone(),
                status: a.status,
                content: a.content.clone(),
            })
            .collect()
    }

    /// The ID-token signing key as a JWK set (`/.well-known/keys`).
    pub(super) fn jwks(&self) -> Value {
        let point = self.id_key.public_key().as_ref();
        // An uncompressed P-256 point: 0x04, x (32 bytes), y (32 bytes).
        let (x, y) = if point.len() == 65 {
            (&point[1..33], &point[33..65])
        } else {
            (&point[..0], &point[..0])
        };
        json!({"keys": [{
            "alg": "ES256",
            "crv": "P-256",
            "kid": self.id_kid,
            "kty": "EC",
            "use": "sig",
            "x": b64(x),
            "y": b64(y),
        }]})
    }

    fn hs256(&self, claims: &Value) -> String {
        let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = b64(claims.to_string().as_bytes());
        let signing_input = format!("{head}.{body}");
        let sig = ring::hmac::sign(&self.secret, signing_input.as_bytes());
        format!("{signing_input}.{}", b64(sig.as_ref()))
    }

    /// Forgejo's `CreateAuthorizationToken`: the task's runtime JWT. `oidc`
    /// is the GitHub context the OIDC claims come from, when the job has
    /// OpenID Connect enabled.
    pub(super) fn mint_runtime_token(
        &self,
        task_id: i64,
        run_id: i64,
        job_id: i64,
        oidc: Option<&Map<String, Value>>,
    ) -> String {
        let now = now_unix();
        let run_job = format!("{run_id}:{job_id}");
        let mut claims = Map::new();
        claims.insert(
            "exp".into(),
            json!(now + RUNTIME_TOKEN_TTL.as_secs() as i64),
        );
        claims.insert("nbf".into(), json!(now));
        let mut scp = format!("Actions.Results:{run_job}");
        if oidc.is_some() {
            scp.push_str(&format!(" generate_id_token:{run_job}"));
        }
        claims.insert("scp".into(), json!(scp));
        claims.insert("TaskID".into(), json!(task_id));
        claims.insert("RunID".into(), json!(run_id));
        claims.insert("JobID".into(), json!(job_id));
        claims.insert("ac".into(), json!(r#"[{"Scope":"","Permission":2}]"#));
        if let Some(ctx) = oidc {
            let val = |k: &str| match ctx.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            };
            let mut extra = Map::new();
            for k in OIDC_CUSTOM_CLAIMS {
                extra.insert(k.to_string(), json!(val(k)));
            }
            claims.insert("oidc_extra".into(), json!(Value::Object(extra).to_string()));
            // Forgejo's default subject format.
            let repo = val("repository");
            let repo_name = repo.split_once('/').map_or("", |(_, n)| n).to_string();
            let sub = if val("event_name") == "pull_request" {
                format!(
                    "repo:{}-{}/{}-{}:pull_request",
                    val("repository_owner"),
                    val("repository_owner_id"),
                    repo_name,
                    val("repository_id")
                )
            } else {
                format!(
                    "repo:{}-{}/{}-{}:ref:{}",
                    val("repository_owner"),
                    val("repository_owner_id"),
                    repo_name,
                    val("repository_id"),
                    val("ref")
                )
            };
            claims.insert("oidc_sub".into(), json!(sub));
        }
        self.hs256(&Value::Object(claims))
    }

    /// Verifies a runtime JWT as golang-jwt does with Forgejo's key
    /// function: an HMAC algorithm, the signature, `exp` and `nbf`.
    fn verify_jwt(&self, token: &str) -> Result<RuntimeClaims, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("token is malformed".into());
        };
        let header: Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("token is malformed: header")?;
        if header.get("alg").and_then(Value::as_str) != Some("HS256") {
            return Err("unexpected signing method".into());
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "token is malformed: signature")?;
        ring::hmac::verify(&self.secret, format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| "token signature is invalid")?;
        let claims: RuntimeClaims = URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("token is malformed: claims")?;
        let now = now_unix();
        if claims.exp.is_some_and(|exp| now >= exp) {
            return Err("token is expired".into());
        }
        if claims.nbf.is_some_and(|nbf| now < nbf) {
            return Err("token is not valid yet".into());
        }
        Ok(claims)
    }

    /// What Forgejo's `buildSignature` feeds the HMAC: each string with its
    /// length in front, then the two ids, all big-endian.
    fn signed_message(
        endpoint: &str,
        expires: &str,
        name: &str,
        task_id: i64,
        artifact_id: i64,
    ) -> Vec<u8> {
        let mut msg = Vec::new();
        for s in [endpoint, expires, name] {
            msg.extend_from_slice(&(s.len() as i64).to_be_bytes());
            msg.extend_from_slice(s.as_bytes());
        }
        msg.extend_from_slice(&task_id.to_be_bytes());
        msg.extend_from_slice(&artifact_id.to_be_bytes());
        msg
    }

    fn signed_url(
        &self,
        server_url: &str,
        endpoint: &str,
        name: &str,
        task_id: i64,
        artifact_id: i64,
    ) -> String {
        let expires = go_time(SystemTime::now() + self.signed_url_ttl);
        let msg = Services::signed_message(endpoint, &expires, name, task_id, artifact_id);
        let sig = URL_SAFE.encode(ring::hmac::sign(&self.secret, &msg).as_ref());
        let q = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        format!(
            "{}{ARTIFACT_V4_ROUTE_BASE}/{endpoint}?sig={sig}&expires={}&artifactName={}&taskID={task_id}&artifactID={artifact_id}",
            server_url.trim_end_matches('/'),
            q(&expires),
            q(name),
        )
    }

    fn by_name(&self, run_id: i64, name: &str) -> Option<i64> {
        self.artifacts
            .values()
            .find(|a| {
                a.run_id == run_id
                    && a.name == name
                    && a.path == format!("{name}.zip")
                    && a.content_encoding == V4_CONTENT_ENCODING
            })
            .map(|a| a.id)
    }
}

/// The string claims Forgejo copies from the GitHub context into ID tokens.
const OIDC_CUSTOM_CLAIMS: [&str; 18] = [
    "actor",
    "actor_id",
    "base_ref",
    "event_name",
    "head_ref",
    "ref",
    "ref_protected",
    "ref_type",
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "run_attempt",
    "run_id",
    "run_number",
    "sha",
    "workflow",
    "workflow_ref",
];

#[derive(Debug, serde::Deserialize)]
struct RuntimeClaims {
    exp: Option<i64>,
    nbf: Option<i64>,
    #[serde(default)]
    scp: String,
    #[serde(rename = "TaskID", default)]
    task_id: i64,
    #[serde(default)]
    oidc_extra: String,
    #[serde(default)]
    oidc_sub: String,
}

/// Go's `time.Time.Format("2006-01-02 15:04:05.999999999 -0700 MST")`, in UTC.
fn go_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let c = Civil::from_unix(d.as_secs() as i64);
    let mut frac = String::new();
    if d.subsec_nanos() != 0 {
        frac = format!(".{:09}", d.subsec_nanos());
        while frac.ends_with('0') {
            frac.pop();
        }
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{frac} +0000 UTC",
        c.year, c.month, c.day, c.hour, c.min, c.sec
    )
}

/// Parses what [`go_time`] writes (any numeric offset); `None` if malformed.
fn parse_go_time(s: &str) -> Option<SystemTime> {
    let mut it = s.split(' ');
    let (date, time, offset, _zone) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let num = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let d: Vec<&str> = date.split('-').collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let t: Vec<&str> = hms.split(':').collect();
    if d.len() != 3 || t.len() != 3 || offset.len() != 5 {
        return None;
    }
    let civil = Civil {
        year: num(d[0])?,
        month: u8::try_from(num(d[1])?)
            .ok()
            .filter(|m| (1..=12).contains(m))?,
        day: u8::try_from(num(d[2])?)
            .ok()
            .filter(|d| (1..=31).contains(d))?,
        hour: u8::try_from(num(t[0])?).ok().filter(|h| *h < 24)?,
        min: u8::try_from(num(t[1])?).ok().filter(|m| *m < 60)?,
        sec: u8::try_from(num(t[2])?).ok().filter(|s| *s < 60)?,
    };
    let nanos = if frac.is_empty() {
        0
    } else if frac.len() <= 9 {
        num(frac)? * 10_i64.pow(9 - frac.len() as u32)
    } else {
        return None;
    };
    let sign = match &offset[..1] {
        "+" => 1,
        "-" => -1,
        _ => return None,
    };
    let off = num(&offset[1..3])? * 3600 + num(&offset[3..5])? * 60;
    let secs = civil.to_unix() - sign * off;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos as u64))
}

/// A protojson field kind.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    I64,
    I32,
    Timestamp,
    StringValue,
    Int64Value,
}

/// `(proto name, JSON name, kind)`.
type Field = (&'static str, &'static str, Kind);

const RUN_JOB: [Field; 2] = [
    ("workflow_run_backend_id", "workflowRunBackendId", Kind::Str),
    (
        "workflow_job_run_backend_id",
        "workflowJobRunBackendId",
        Kind::Str,
    ),
];

fn int_of(v: &Value, bits32: bool) -> Option<i64> {
    let n = match v {
        Value::Number(n) => n.as_i64()?,
        Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    (!bits32 || i32::try_from(n).is_ok()).then_some(n)
}

/// protojson's `Unmarshal` for a flat message: both field-name spellings,
/// unknown fields and wrong types refused. Returns the fields by proto name.
fn parse_message(body: &[u8], fields: &[Field]) -> Result<HashMap<&'static str, Value>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let Value::Object(m) = v else {
        return Err("not a JSON object".into());
    };
    let mut out = HashMap::new();
    for (k, v) in m {
        let Some(&(proto, _, kind)) = fields.iter().find(|(p, j, _)| *p == k || *j == k) else {
            return Err(format!("unknown field {k:?}"));
        };
        if out.contains_key(proto) {
            return Err(format!("duplicate field {k:?}"));
        }
        if v.is_null() {
            continue;
        }
        let ok = match kind {
            Kind::Str | Kind::StringValue | Kind::Timestamp => v.is_string(),
            Kind::I64 | Kind::Int64Value => int_of(&v, false).is_some(),
            Kind::I32 => int_of(&v, true).is_some(),
        };
        if !ok {
            return Err(format!("invalid value for field {k:?}"));
        }
        out.insert(proto, v);
    }
    Ok(out)
}

fn field_str(m: &HashMap<&'static str, Value>, k: &str) -> String {
    m.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The `<Latest>` entries of an Azure block list, in order.
fn parse_block_list(xml: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(xml).ok()?;
    let start = text.find("<BlockList>")?;
    let end = text.rfind("</BlockList>")?;
    let mut inner = text.get(start + "<BlockList>".len()..end)?;
    let mut out = Vec::new();
    while let Some(i) = inner.find("<Latest>") {
        let rest = &inner[i + "<Latest>".len()..];
        let j = rest.find("</Latest>")?;
        out.push(rest[..j].trim().to_string());
        inner = &rest[j + "</Latest>".len()..];
    }
    Some(out)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The request a service answers.
pub(super) struct Request<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The instance URL with a trailing slash.
    pub server_url: &'a str,
}

impl Request<'_> {
    fn query(&self, key: &str) -> String {
        url::form_urlencoded::parse(self.query.unwrap_or_default().as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    }
}

/// Answers `req` if it is one of the services' paths: `(method name for
/// the request log, answer)`; `None` for any other path.
pub(super) fn handle(
    svc: &mut Services,
    tasks: &dyn Tasks,
    req: &Request<'_>,
) -> Option<(String, Answer)> {
    if let Some(m) = req
        .path
        .strip_prefix(ARTIFACT_V4_ROUTE_BASE)
        .and_then(|p| p.strip_prefix('/'))
    {
        let (allowed, answer) = match m {
            "CreateArtifact"
            | "FinalizeArtifact"
            | "ListArtifacts"
            | "GetSignedArtifactURL"
            | "DeleteArtifact" => (Method::POST, None),
            "UploadArtifact" => (Method::PUT, None),
            "DownloadArtifact" => (Method::GET, None),
            _ => (
                Method::POST,
                Some(Answer::error(StatusCode::NOT_FOUND, "404 page not found")),
            ),
        };
        let answer = answer.unwrap_or_else(|| {
            if *req.method != allowed {
                Answer::empty(StatusCode::METHOD_NOT_ALLOWED)
            } else {
                twirp(svc, tasks, req, m)
            }
        });
        return Some((m.to_string(), answer));
    }
    let rest = req.path.strip_prefix("/api/actions/")?;
    if rest == ".well-known/keys" || rest == ".well-known/openid-configuration" {
        if *req.method != Method::GET {
            return Some(("OIDC".into(), Answer::empty(StatusCode::METHOD_NOT_ALLOWED)));
        }
        let base = req.server_url.trim_end_matches('/');
        let body = if rest.ends_with("keys") {
            svc.jwks()
        } else {
            let mut claims: Vec<&str> = vec!["sub", "aud", "exp", "iat", "iss", "nbf"];
            claims.extend(OIDC_CUSTOM_CLAIMS);
            json!({
                "issuer": format!("{base}/api/actions"),
                "jwks_uri": format!("{base}/api/actions/.well-known/keys"),
                "subject_types_supported": ["public"],
                "response_types_supported": ["id_token"],
                "claims_supported": claims,
                "id_token_signing_alg_values_supported": ["ES256"],
                "scopes_supported": ["openid"],
            })
        };
        return Some(("OIDC".into(), Answer::json(StatusCode::OK, &body)));
    }
    let run = rest
        .strip_prefix("_apis/pipelines/workflows/")?
        .strip_suffix("/idtoken")?;
    if run.contains('/') {
        return None;
    }
    if *req.method != Method::GET {
        return Some((
            "IDToken".into(),
            Answer::empty(StatusCode::METHOD_NOT_ALLOWED),
        ));
    }
    Some(("IDToken".into(), id_token(svc, tasks, req, run)))
}

/// `IDTokenContexter` + `generateIDToken`.
fn id_token(svc: &Services, tasks: &dyn Tasks, req: &Request<'_>, run: &str) -> Answer {
    let err = Answer::error;
    let auth = bearer(req.headers).unwrap_or_default();
    if !auth.to_ascii_lowercase().starts_with("bearer ") {
        return err(StatusCode::UNAUTHORIZED, "Bad authorization header");
    }
    let token = auth.split_once(' ').map_or("", |(_, t)| t);
    let Ok(claims) = svc.verify_jwt(token) else {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error runner api parsing authorization token",
        );
    };
    let Ok(Value::Object(custom)) = serde_json::from_str::<Value>(&claims.oidc_extra) else {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error runner api parsing custom claims",
        );
    };
    let Some(task) = tasks.task_auth(claims.task_id) else {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error runner api getting task by ID",
        );
    };
    if !task.running {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error runner api getting task: task is not running",
        );
    }
    if run.parse::<i64>().unwrap_or(0) != task.run_id {
        return err(StatusCode::BAD_REQUEST, "run-id does not match");
    }
    let want = format!("generate_id_token:{}:{}", task.run_id, task.job_id);
    if !claims.scp.split(' ').any(|s| s == want) {
        return err(StatusCode::FORBIDDEN, "missing scp generate_id_token");
    }
    let mut audience = req.query("audience");
    if audience.is_empty() {
        let owner = custom
            .get("repository_owner")
            .and_then(Value::as_str)
            .unwrap_or_default();
        audience = format!("{}{owner}", req.server_url);
    }
    let now = now_unix();
    let mut out = custom;
    out.insert("sub".into(), json!(claims.oidc_sub));
    out.insert("aud".into(), json!(audience));
    out.insert("exp".into(), json!(now + ID_TOKEN_TTL.as_secs() as i64));
    out.insert("iat".into(), json!(now));
    out.insert("nbf".into(), json!(now));
    out.insert(
        "iss".into(),
        json!(format!(
            "{}/api/actions",
            req.server_url.trim_end_matches('/')
        )),
    );
    let head = json!({"alg": "ES256", "kid": svc.id_kid, "typ": "JWT"});
    let signing_input = format!(
        "{}.{}",
        b64(head.to_string().as_bytes()),
        b64(Value::Object(out).to_string().as_bytes())
    );
    match svc.id_key.sign(&svc.rng, signing_input.as_bytes()) {
        Ok(sig) => Answer::json(
            StatusCode::OK,
            &json!({"value": format!("{signing_input}.{}", b64(sig.as_ref()))}),
        ),
        Err(_) => err(StatusCode::INTERNAL_SERVER_ERROR, "Error signing token"),
    }
}

/// The Twirp methods and the signed endpoints.
fn twirp(svc: &mut Services, tasks: &dyn Tasks, req: &Request<'_>, method: &str) -> Answer {
    match method {
        "UploadArtifact" => upload(svc, tasks, req),
        "DownloadArtifact" => download(svc, tasks, req),
        _ => match authenticate(svc, tasks, req.headers) {
            Ok(task) => rpc(svc, req, method, task),
            Err(a) => a,
        },
    }
}

/// `ArtifactContexter`: the Bearer runtime JWT, else a running task's token.
fn authenticate(
    svc: &Services,
    tasks: &dyn Tasks,
    headers: &HeaderMap,
) -> Result<TaskAuth, Answer> {
    let err = |s, m| Err(Answer::error(s, m));
    let auth = bearer(headers).unwrap_or_default();
    let Some(token) = auth.strip_prefix("Bearer ") else {
        return err(StatusCode::UNAUTHORIZED, "Bad authorization header");
    };
    let task = match svc.verify_jwt(token) {
        Ok(claims) => {
            let Some(task) = tasks.task_auth(claims.task_id) else {
                return err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Error runner api getting task by ID",
                );
            };
            if !task.running {
                return err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Error runner api getting task: task is not running",
                );
            }
            task
        }
        // An empty token parses as "no token" (task 0, which does not exist).
        Err(_) if token.is_empty() => {
            return err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error runner api getting task by ID",
            );
        }
        Err(_) => match tasks.running_task_by_token(token) {
            Some(t) => t,
            None => {
                return err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Error runner api getting task",
                );
            }
        },
    };
    Ok(task)
}

fn rpc(svc: &mut Services, req: &Request<'_>, method: &str, task: TaskAuth) -> Answer {
    use Kind::*;
    let err = Answer::error;
    let fields: Vec<Field> = match method {
        "CreateArtifact" => vec![
            ("name", "name", Str),
            ("expires_at", "expiresAt", Timestamp),
            ("version", "version", I32),
        ],
        "FinalizeArtifact" => vec![
            ("name", "name", Str),
            ("size", "size", I64),
            ("hash", "hash", StringValue),
        ],
        "ListArtifacts" => vec![
            ("name_filter", "nameFilter", StringValue),
            ("id_filter", "idFilter", Int64Value),
        ],
        _ => vec![("name", "name", Str)],
    };
    let fields: Vec<Field> = RUN_JOB.iter().copied().chain(fields).collect();
    let Ok(m) = parse_message(req.body, &fields) else {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error decode request body",
        );
    };
    let run_id = field_str(&m, "workflow_run_backend_id");
    if run_id.parse::<i64>().ok() != Some(task.run_id) {
        return err(StatusCode::BAD_REQUEST, "run-id does not match");
    }
    let run_id = task.run_id;
    let name = field_str(&m, "name");
    let not_found = || err(StatusCode::NOT_FOUND, "Error artifact not found");
    match method {
        "CreateArtifact" => {
            let id = match svc.by_name(run_id, &name).or_else(|| {
                // Forgejo's CreateArtifact looks the artifact up by run,
                // name and path (whatever its encoding).
                svc.artifacts
                    .values()
                    .find(|a| {
                        a.run_id == run_id && a.name == name && a.path == format!("{name}.zip")
                    })
                    .map(|a| a.id)
            }) {
                Some(id) => id,
                None => {
                    let id = svc.next_artifact_id;
                    svc.next_artifact_id += 1;
                    svc.artifacts.insert(
                        id,
                        Artifact {
                            id,
                            run_id,
                            name: name.clone(),
                            path: format!("{name}.zip"),
                            content_encoding: String::new(),
                            file_size: 0,
                            compressed_size: 0,
                            status: ArtifactStatus::UploadPending,
                            content: None,
                            appended: Vec::new(),
                            created: now_unix(),
                        },
                    );
                    id
                }
            };
            if let Some(a) = svc.artifacts.get_mut(&id) {
                a.content_encoding = V4_CONTENT_ENCODING.into();
                a.file_size = 0;
                a.compressed_size = 0;
            }
            let url = svc.signed_url(req.server_url, "UploadArtifact", &name, task.task_id, id);
            Answer::proto(&json!({"ok": true, "signedUploadUrl": url}))
        }
        "FinalizeArtifact" => {
            let Some(id) = svc.by_name(run_id, &name) else {
                return not_found();
            };
            let list = svc
                .block_lists
                .remove(&(run_id, id))
                .and_then(|x| parse_block_list(&x));
            let merge_err = || err(StatusCode::INTERNAL_SERVER_ERROR, "Error merge chunks");
            let (data, used): (Vec<u8>, Vec<String>) = match list {
                Some(ids) => {
                    let mut data = Vec::new();
                    for b in &ids {
                        match svc.blocks.get(&(run_id, b.clone())) {
                            Some(d) => data.extend_from_slice(d),
                            None => return merge_err(),
                        }
                    }
                    (data, ids)
                }
                None => {
                    let Some(a) = svc.artifacts.get(&id) else {
                        return not_found();
                    };
                    if a.appended.is_empty() {
                        return merge_err();
                    }
                    (a.appended.concat(), Vec::new())
                }
            };
            let hash = field_str(&m, "hash");
            let Some(a) = svc.artifacts.get_mut(&id) else {
                return not_found();
            };
            if !used.is_empty() {
                a.file_size = data.len() as i64;
                a.compressed_size = data.len() as i64;
            }
            // Forgejo: data that does not add up to the recorded size is
            // left unmerged, and the call still succeeds.
            if data.len() as i64 == a.compressed_size {
                if hash.starts_with("sha256:") {
                    let actual: String = Sha256::digest(&data)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    if !hash.ends_with(&actual) {
                        for b in &used {
                            svc.blocks.remove(&(run_id, b.clone()));
                        }
                        return merge_err();
                    }
                }
                a.content = Some(data);
                a.appended.clear();
                a.status = ArtifactStatus::UploadConfirmed;
                for b in &used {
                    svc.blocks.remove(&(run_id, b.clone()));
                }
            }
            Answer::proto(&json!({"ok": true, "artifactId": id.to_string()}))
        }
        "ListArtifacts" => {
            let all: Vec<&Artifact> = svc
                .artifacts
                .values()
                .filter(|a| a.run_id == run_id)
                .collect();
            if all.is_empty() {
                return err(StatusCode::NOT_FOUND, "Not Found");
            }
            let name_filter = m.get("name_filter").and_then(Value::as_str);
            let id_filter = m.get("id_filter").and_then(|v| int_of(v, false));
            let mut table: BTreeMap<&str, Option<&Artifact>> = BTreeMap::new();
            for a in all {
                let skip = table.contains_key(a.name.as_str())
                    || id_filter.is_some_and(|f| f != a.id)
                    || name_filter.is_some_and(|f| f != a.name)
                    || a.path != format!("{}.zip", a.name)
                    || a.content_encoding != V4_CONTENT_ENCODING;
                table.insert(a.name.as_str(), (!skip).then_some(a));
            }
            let rid = field_str(&m, "workflow_run_backend_id");
            let jid = field_str(&m, "workflow_job_run_backend_id");
            let list: Vec<Value> = table
                .values()
                .flatten()
                .map(|a| {
                    let mut o = Map::new();
                    if !rid.is_empty() {
                        o.insert("workflowRunBackendId".into(), json!(rid));
                    }
                    if !jid.is_empty() {
                        o.insert("workflowJobRunBackendId".into(), json!(jid));
                    }
                    o.insert("databaseId".into(), json!(a.id.to_string()));
                    o.insert("name".into(), json!(a.name));
                    if a.file_size != 0 {
                        o.insert("size".into(), json!(a.file_size.to_string()));
                    }
                    let c = Civil::from_unix(a.created);
                    o.insert(
                        "createdAt".into(),
                        json!(format!(
                            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                            c.year, c.month, c.day, c.hour, c.min, c.sec
                        )),
                    );
                    Value::Object(o)
                })
                .collect();
            if list.is_empty() {
                Answer::proto(&json!({}))
            } else {
                Answer::proto(&json!({"artifacts": list}))
            }
        }
        "GetSignedArtifactURL" => {
            let Some(id) = svc.by_name(run_id, &name) else {
                return not_found();
            };
            let url = svc.signed_url(req.server_url, "DownloadArtifact", &name, task.task_id, id);
            Answer::proto(&json!({"signedUrl": url}))
        }
        _ => {
            // DeleteArtifact
            let Some(id) = svc.by_name(run_id, &name) else {
                return not_found();
            };
            for a in svc.artifacts.values_mut() {
                if a.run_id == run_id
                    && a.name == name
                    && a.status == ArtifactStatus::UploadConfirmed
                {
                    a.status = ArtifactStatus::PendingDeletion;
                }
            }
            Answer::proto(&json!({"ok": true, "artifactId": id.to_string()}))
        }
    }
}

/// `verifySignature`: the task the URL was signed for, and the artifact name.
fn verify_signed(
    svc: &Services,
    tasks: &dyn Tasks,
    req: &Request<'_>,
    endpoint: &str,
) -> Result<(TaskAuth, String), Answer> {
    let err = |s, m| Err(Answer::error(s, m));
    let sig = URL_SAFE.decode(req.query("sig")).unwrap_or_default();
    let expires = req.query("expires");
    let name = req.query("artifactName");
    let task_id: i64 = req.query("taskID").parse().unwrap_or(0);
    let artifact_id: i64 = req.query("artifactID").parse().unwrap_or(0);
    let msg = Services::signed_message(endpoint, &expires, &name, task_id, artifact_id);
    // A constant-time check, as Go's hmac.Equal.
    if ring::hmac::verify(&svc.secret, &msg, &sig).is_err() {
        return err(StatusCode::UNAUTHORIZED, "Error unauthorized");
    }
    match parse_go_time(&expires) {
        Some(t) if t >= SystemTime::now() => {}
        _ => return err(StatusCode::UNAUTHORIZED, "Error link expired"),
    }
    let Some(task) = tasks.task_auth(task_id) else {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error runner api getting task by ID",
        );
    };
    if !task.running {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error runner api getting task: task is not running",
        );
    }
    Ok((task, name))
}

fn upload(svc: &mut Services, tasks: &dyn Tasks, req: &Request<'_>) -> Answer {
    let (task, name) = match verify_signed(svc, tasks, req, "UploadArtifact") {
        Ok(v) => v,
        Err(a) => return a,
    };
    match req.query("comp").as_str() {
        "block" | "appendBlock" => {
            let block_id = req.query("blockid");
            if block_id.is_empty() {
                let Some(id) = svc.by_name(task.run_id, &name) else {
                    return Answer::error(StatusCode::NOT_FOUND, "Error artifact not found");
                };
                if let Some(a) = svc.artifacts.get_mut(&id) {
                    a.appended.push(req.body.to_vec());
                    a.file_size += req.body.len() as i64;
                    a.compressed_size += req.body.len() as i64;
                }
            } else {
                svc.blocks
                    .insert((task.run_id, block_id), req.body.to_vec());
            }
            Answer::json(StatusCode::CREATED, &json!("appended"))
        }
        "blocklist" => {
            let artifact_id: i64 = req.query("artifactID").parse().unwrap_or(0);
            svc.block_lists
                .insert((task.run_id, artifact_id), req.body.to_vec());
            Answer::json(StatusCode::CREATED, &json!("created"))
        }
        // Forgejo writes nothing for any other `comp`: an empty 200.
        _ => Answer::empty(StatusCode::OK),
    }
}

fn download(svc: &Services, tasks: &dyn Tasks, req: &Request<'_>) -> Answer {
    let (task, name) = match verify_signed(svc, tasks, req, "DownloadArtifact") {
        Ok(v) => v,
        Err(a) => return a,
    };
    let Some(a) = svc
        .by_name(task.run_id, &name)
        .and_then(|id| svc.artifacts.get(&id))
    else {
        return Answer::error(StatusCode::NOT_FOUND, "Error artifact not found");
    };
    let Some(content) = &a.content else {
        return Answer::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "open : no such file or directory",
        );
    };
    let content_type = if content.starts_with(b"PK\x03\x04") {
        "application/zip"
    } else {
        "application/octet-stream"
    };
    Answer {
        status: StatusCode::OK,
        content_type,
        body: content.clone(),
        headers: vec![(header::ACCEPT_RANGES, "bytes".into())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_round_trips_and_rejects_garbage() {
        let t = UNIX_EPOCH + Duration::new(1_796_000_123, 120_000_000);
        let s = go_time(t);
        assert_eq!(s, "2026-11-30 00:55:23.12 +0000 UTC");
        assert_eq!(parse_go_time(&s), Some(t));
        assert_eq!(
            parse_go_time("2026-11-30 01:55:23 +0100 CET"),
            Some(UNIX_EPOCH + Duration::from_secs(1_796_000_123))
        );
        for bad in ["", "2026-11-29", "2026-13-01 00:00:00 +0000 UTC", "x y z w"] {
            assert_eq!(parse_go_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn block_lists_keep_their_order() {
        let xml = br#"<?xml version="1.0" encoding="utf-8"?><BlockList><Latest>b2</Latest><Latest>b1</Latest></BlockList>"#;
        assert_eq!(parse_block_list(xml), Some(vec!["b2".into(), "b1".into()]));
        assert_eq!(parse_block_list(b"<nope/>"), None);
    }

    #[test]
    fn protojson_takes_both_spellings_and_refuses_unknown_fields() {
        let f = [
            ("workflow_run_backend_id", "workflowRunBackendId", Kind::Str),
            ("size", "size", Kind::I64),
        ];
        let m = parse_message(br#"{"workflowRunBackendId":"3","size":"12"}"#, &f).unwrap();
        assert_eq!(field_str(&m, "workflow_run_backend_id"), "3");
        assert!(parse_message(br#"{"size":12,"extra":1}"#, &f).is_err());
        assert!(parse_message(br#"{"size":"twelve"}"#, &f).is_err());
        assert!(parse_message(b"", &f).is_err());
    }

    #[test]
    fn runtime_tokens_verify_and_carry_the_scope() {
        let svc = Services::new();
        let t = svc.mint_runtime_token(7, 3, 5, None);
        let c = svc.verify_jwt(&t).unwrap();
        assert_eq!(c.task_id, 7);
        assert_eq!(c.scp, "Actions.Results:3:5");
        assert!(c.oidc_extra.is_empty());
        // Another instance's secret does not verify it.
        assert!(Services::new().verify_jwt(&t).is_err());
        let ctx: Map<String, Value> = serde_json::from_value(json!({
            "repository": "o/r", "repository_owner": "o", "repository_owner_id": "1",
            "repository_id": "2", "ref": "refs/heads/main", "event_name": "push"
        }))
        .unwrap();
        let c = svc
            .verify_jwt(&svc.mint_runtime_token(7, 3, 5, Some(&ctx)))
            .unwrap();
        assert_eq!(c.scp, "Actions.Results:3:5 generate_id_token:3:5");
        assert_eq!(c.oidc_sub, "repo:o-1/r-2:ref:refs/heads/main");
    }
}

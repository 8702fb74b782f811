//! The run service (spec §5): `acquirejob` with the runner token, then
//! `renewjob` and `completejob` with the job token.

use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;

use super::error::{CALL_TIMEOUT, GithubError, decode, join, send};
use crate::secret::Secret;

/// `acquirejob`: the full job message (raw JSON) for a job reference.
/// 404, 409 and 422 mean the job is not (or no longer) this runner's.
pub async fn acquire_job(
    http: &reqwest::Client,
    run_service_url: &str,
    runner_token: &Secret,
    runner_request_id: &str,
    billing_owner_id: Option<&str>,
) -> Result<Vec<u8>, GithubError> {
    let url = join(run_service_url, "acquirejob");
    let mut body = serde_json::json!({
        "jobMessageId": runner_request_id,
        "runnerOS": "Linux",
    });
    if let Some(b) = billing_owner_id {
        body["billingOwnerId"] = b.into();
    }
    let request = http
        .post(&url)
        .bearer_auth(runner_token.expose())
        .timeout(CALL_TIMEOUT)
        .json(&body);
    let (_, body) = send("acquirejob", &url, request).await?;
    Ok(body.to_vec())
}

/// True for `acquirejob` errors after which the job is dropped (another
/// runner has it, it is gone, or it cannot be given to this one).
pub fn acquire_drops_job(e: &GithubError) -> bool {
    matches!(e.status(), Some(404 | 409 | 422))
}

/// `renewjob`: extends the job's lock; returns `lockedUntil` as sent.
pub async fn renew_job(
    http: &reqwest::Client,
    run_service_url: &str,
    job_token: &Secret,
    plan_id: &str,
    job_id: &str,
) -> Result<String, GithubError> {
    #[derive(serde::Deserialize)]
    struct Renewed {
        #[serde(default, alias = "LockedUntil", alias = "locked_until")]
        #[serde(rename = "lockedUntil")]
        locked_until: Option<String>,
    }
    let url = join(run_service_url, "renewjob");
    let request = http
        .post(&url)
        .bearer_auth(job_token.expose())
        .timeout(CALL_TIMEOUT)
        .json(&serde_json::json!({ "planId": plan_id, "jobId": job_id }));
    let (_, body) = send("renewjob", &url, request).await?;
    if body.is_empty() {
        return Ok(String::new());
    }
    let renewed: Renewed = decode("renewjob", &body)?;
    Ok(renewed.locked_until.unwrap_or_default())
}

/// One step's result in `completejob` (snake_case, as GitHub reads it).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StepResult {
    pub external_id: String,
    pub number: i64,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub action_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub r#ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub r#type: Option<String>,
    /// `completed` (or `in_progress` for a step cut short).
    pub status: String,
    /// `succeeded`, `failed`, `canceled`, `skipped`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub conclusion: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub completed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub completed_log_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub completed_log_lines: Option<i64>,
}

/// One annotation of `completejob` (camelCase).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Annotation {
    /// `FAILURE`, `WARNING`, `NOTICE`.
    pub level: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub step_number: Option<i64>,
    pub is_infrastructure_issue: bool,
}

/// The body of `completejob`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteJob {
    pub plan_id: String,
    pub job_id: String,
    /// `succeeded`, `failed`, `canceled` or `skipped`.
    pub conclusion: String,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub outputs: IndexMap<String, OutputValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub step_results: Vec<StepResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billing_owner_id: Option<String>,
}

/// A job output in `completejob`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputValue {
    pub value: String,
    pub is_secret: bool,
}

/// `completejob` once. The caller retries ([`complete_is_final`]).
pub async fn complete_job(
    http: &reqwest::Client,
    run_service_url: &str,
    job_token: &Secret,
    body: &CompleteJob,
) -> Result<(), GithubError> {
    let url = join(run_service_url, "completejob");
    let request = http
        .post(&url)
        .bearer_auth(job_token.expose())
        .timeout(CALL_TIMEOUT)
        .json(body);
    send("completejob", &url, request).await.map(|_| ())
}

/// `completejob` errors after which retrying is pointless: 401 (the job
/// token is over) and 404 (the job is gone).
pub fn complete_is_final(e: &GithubError) -> bool {
    matches!(e.status(), Some(401 | 404))
}

/// Tries per `completejob` (spec §5.4: 5 retries, 5 s apart).
pub const COMPLETE_TRIES: u32 = 5;
/// Pause between `completejob` tries.
pub const COMPLETE_PAUSE: Duration = Duration::from_secs(5);
/// Period of `renewjob` while the job runs.
pub const RENEW_PERIOD: Duration = Duration::from_secs(60);

//! The results service (spec §6): step status (`WorkflowStepsUpdate`), the
//! signed blob URLs for step logs, step summaries and the job log, their
//! metadata, and the blob uploads themselves. Twirp JSON, snake_case, with
//! the job token; blob PUTs go to the signed URL as given (no token).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::{CALL_TIMEOUT, GithubError, decode, join, send, status_error, transport};
use crate::civil::Civil;
use crate::events::Conclusion;
use crate::secret::Secret;

/// Step `status`: in progress (spec §6, [AR] `Status`).
pub const STATUS_IN_PROGRESS: i32 = 3;
/// Step `status`: pending.
pub const STATUS_PENDING: i32 = 5;
/// Step `status`: completed.
pub const STATUS_COMPLETED: i32 = 6;

/// How long one blob upload may take (a big log on a slow link).
const BLOB_TIMEOUT: Duration = Duration::from_secs(300);

const STEP_UPDATE: &str =
    "twirp/github.actions.results.api.v1.WorkflowStepUpdateService/WorkflowStepsUpdate";
const RECEIVER: &str = "twirp/results.services.receiver.Receiver/";

/// A step's `conclusion` int in results (spec §6.1): success 2, failure 3,
/// cancelled 4, skipped 7.
pub fn conclusion_int(c: Conclusion) -> i32 {
    match c {
        Conclusion::Success => 2,
        Conclusion::Failure => 3,
        Conclusion::Cancelled => 4,
        Conclusion::Skipped => 7,
    }
}

/// A conclusion as `completejob` names it: `succeeded`, `failed`,
/// `canceled` (one `l`), `skipped`.
pub fn conclusion_word(c: Conclusion) -> &'static str {
    match c {
        Conclusion::Success => "succeeded",
        Conclusion::Failure => "failed",
        Conclusion::Cancelled => "canceled",
        Conclusion::Skipped => "skipped",
    }
}

/// `t` as results writes times: `yyyy-MM-ddTHH:mm:ss.fffZ` (UTC).
pub fn time_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let c = Civil::from_unix(i64::try_from(d.as_secs()).unwrap_or(0));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.min,
        c.sec,
        d.subsec_millis()
    )
}

/// `t` as the runner's log files prefix lines: seven fraction digits, `Z`.
pub fn time_log_prefix(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let c = Civil::from_unix(i64::try_from(d.as_secs()).unwrap_or(0));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.min,
        c.sec,
        d.subsec_nanos() / 100
    )
}

/// One step in `WorkflowStepsUpdate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepUpdate {
    /// The step's GUID.
    pub external_id: String,
    /// 1-based position in the job.
    pub number: i64,
    pub name: String,
    /// [`STATUS_PENDING`], [`STATUS_IN_PROGRESS`] or [`STATUS_COMPLETED`].
    pub status: i32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub completed_at: Option<String>,
    /// [`conclusion_int`], 0 while not completed.
    pub conclusion: i32,
}

/// A signed blob URL and the size the service takes at most there.
#[derive(Debug, Clone)]
pub struct SignedUrl {
    /// The URL as given (it carries its own signature: never log it).
    pub url: Secret,
    /// `soft_size_limit`, when the service named one.
    pub soft_size_limit: Option<u64>,
}

/// A client of one job's results service.
#[derive(Clone)]
pub struct ResultsClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
    plan_id: String,
    job_id: String,
}

impl std::fmt::Debug for ResultsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultsClient")
            .field("base", &self.base)
            .field("plan_id", &self.plan_id)
            .field("job_id", &self.job_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct UrlAnswer {
    #[serde(default, alias = "logsUrl")]
    logs_url: Option<String>,
    #[serde(default, alias = "summaryUrl")]
    summary_url: Option<String>,
    #[serde(default, alias = "softSizeLimit")]
    soft_size_limit: Option<serde_json::Value>,
}

impl ResultsClient {
    /// The client for the job `plan_id`/`job_id` at `base` (ends with `/`
    /// or not), calling with the job token.
    pub fn new(
        http: reqwest::Client,
        base: &str,
        token: Secret,
        plan_id: &str,
        job_id: &str,
    ) -> Self {
        ResultsClient {
            http,
            base: base.to_string(),
            token,
            plan_id: plan_id.to_string(),
            job_id: job_id.to_string(),
        }
    }

    fn ids(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert(
            "workflow_run_backend_id".into(),
            self.plan_id.clone().into(),
        );
        m.insert(
            "workflow_job_run_backend_id".into(),
            self.job_id.clone().into(),
        );
        m
    }

    async fn call(
        &self,
        call: &'static str,
        path: &str,
        body: serde_json::Map<String, serde_json::Value>,
    ) -> Result<bytes::Bytes, GithubError> {
        let url = join(&self.base, path);
        let request = self
            .http
            .post(&url)
            .bearer_auth(self.token.expose())
            .timeout(CALL_TIMEOUT)
            .json(&serde_json::Value::Object(body));
        send(call, &url, request).await.map(|(_, b)| b)
    }

    /// `WorkflowStepsUpdate`: the state of `steps`; `change_order` must
    /// grow with every call of the job.
    pub async fn steps_update(
        &self,
        steps: &[StepUpdate],
        change_order: u64,
    ) -> Result<(), GithubError> {
        let mut body = self.ids();
        body.insert(
            "steps".into(),
            serde_json::to_value(steps).unwrap_or_default(),
        );
        body.insert("change_order".into(), change_order.into());
        self.call("WorkflowStepsUpdate", STEP_UPDATE, body)
            .await
            .map(|_| ())
    }

    async fn signed_url(
        &self,
        call: &'static str,
        step: Option<&str>,
    ) -> Result<SignedUrl, GithubError> {
        let mut body = self.ids();
        if let Some(s) = step {
            body.insert("step_backend_id".into(), s.into());
        }
        let answer = self.call(call, &format!("{RECEIVER}{call}"), body).await?;
        let a: UrlAnswer = decode(call, &answer)?;
        let url = a
            .logs_url
            .or(a.summary_url)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| GithubError::Decode {
                call,
                detail: "the answer has no URL".into(),
            })?;
        let soft_size_limit = match a.soft_size_limit {
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            _ => None,
        };
        Ok(SignedUrl {
            url: Secret::new(url),
            soft_size_limit,
        })
    }

    /// `GetStepLogsSignedBlobURL`.
    pub async fn step_logs_url(&self, step_id: &str) -> Result<SignedUrl, GithubError> {
        self.signed_url("GetStepLogsSignedBlobURL", Some(step_id))
            .await
    }

    /// `GetJobLogsSignedBlobURL`.
    pub async fn job_logs_url(&self) -> Result<SignedUrl, GithubError> {
        self.signed_url("GetJobLogsSignedBlobURL", None).await
    }

    /// `GetStepSummarySignedBlobURL`.
    pub async fn step_summary_url(&self, step_id: &str) -> Result<SignedUrl, GithubError> {
        self.signed_url("GetStepSummarySignedBlobURL", Some(step_id))
            .await
    }

    /// `CreateStepLogsMetadata`: the step's log blob holds `line_count` lines.
    pub async fn step_logs_metadata(
        &self,
        step_id: &str,
        line_count: u64,
    ) -> Result<(), GithubError> {
        let mut body = self.ids();
        body.insert("step_backend_id".into(), step_id.into());
        body.insert("uploaded_at".into(), time_millis(SystemTime::now()).into());
        body.insert("line_count".into(), line_count.into());
        let call = "CreateStepLogsMetadata";
        self.call(call, &format!("{RECEIVER}{call}"), body)
            .await
            .map(|_| ())
    }

    /// `CreateJobLogsMetadata`: the job log blob holds `line_count` lines.
    pub async fn job_logs_metadata(&self, line_count: u64) -> Result<(), GithubError> {
        let mut body = self.ids();
        body.insert("uploaded_at".into(), time_millis(SystemTime::now()).into());
        body.insert("line_count".into(), line_count.into());
        let call = "CreateJobLogsMetadata";
        self.call(call, &format!("{RECEIVER}{call}"), body)
            .await
            .map(|_| ())
    }

    /// `CreateStepSummaryMetadata`: the summary blob holds `size` bytes.
    pub async fn step_summary_metadata(&self, step_id: &str, size: u64) -> Result<(), GithubError> {
        let mut body = self.ids();
        body.insert("step_backend_id".into(), step_id.into());
        body.insert("size".into(), size.into());
        body.insert("uploaded_at".into(), time_millis(SystemTime::now()).into());
        let call = "CreateStepSummaryMetadata";
        self.call(call, &format!("{RECEIVER}{call}"), body)
            .await
            .map(|_| ())
    }

    /// Uploads `body` as one block blob to the signed `url` (replacing
    /// whatever an earlier try left there). Errors never show the URL (its
    /// query is the signature).
    pub async fn put_blob(&self, url: &Secret, body: Vec<u8>) -> Result<(), GithubError> {
        let len = body.len() as u64;
        self.put_blob_body(url, len, reqwest::Body::from(body))
            .await
    }

    /// [`ResultsClient::put_blob`] with a body of `len` bytes that may be
    /// a stream (a big log is never whole in memory).
    pub async fn put_blob_body(
        &self,
        url: &Secret,
        len: u64,
        body: reqwest::Body,
    ) -> Result<(), GithubError> {
        let call = "blob upload";
        let response = self
            .http
            .put(url.expose())
            .header("x-ms-blob-type", "BlockBlob")
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .timeout(BLOB_TIMEOUT)
            .body(body)
            .send()
            .await
            .map_err(|e| transport(call, url.expose(), &e.without_url()))?;
        let status = response.status();
        let answer = response
            .bytes()
            .await
            .map_err(|e| transport(call, url.expose(), &e.without_url()))?;
        if status.is_success() {
            Ok(())
        } else {
            Err(status_error(call, status, &answer))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_have_the_shapes_results_and_log_files_use() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(time_millis(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(time_log_prefix(t), "2023-11-14T22:13:20.1234567Z");
    }

    #[tokio::test]
    async fn blob_errors_do_not_show_the_signed_url() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let c = ResultsClient::new(
            reqwest::Client::new(),
            "http://127.0.0.1:1/",
            Secret::new("t"),
            "p",
            "j",
        );
        let url = Secret::new(format!("http://127.0.0.1:{port}/blob?sig=SIGNATURE"));
        let e = c.put_blob(&url, b"x".to_vec()).await.unwrap_err();
        assert!(e.is_retryable());
        assert!(!format!("{e} {e:?}").contains("SIGNATURE"), "{e}");
    }

    #[test]
    fn result_values_follow_the_spec() {
        assert_eq!(conclusion_int(Conclusion::Success), 2);
        assert_eq!(conclusion_int(Conclusion::Failure), 3);
        assert_eq!(conclusion_int(Conclusion::Cancelled), 4);
        assert_eq!(conclusion_int(Conclusion::Skipped), 7);
        assert_eq!(conclusion_word(Conclusion::Cancelled), "canceled");
    }
}

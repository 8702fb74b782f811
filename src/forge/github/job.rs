//! What the runner needs from an acquired job besides the steps it runs:
//! the ids, the job token, the service URLs and the step records GitHub
//! expects reports for. Read leniently from the job message
//! ([`super::message`]), so that a job Solstice cannot run can still be
//! reported as failed.

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// One step of the job message, in order: the record GitHub shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRef {
    /// The step's GUID (`id`): `external_id` in results and `stepResults`.
    pub external_id: String,
    /// Its display name as far as it is known before the step runs (a
    /// literal `displayNameToken`, else a name derived from the step).
    pub name: String,
    /// `steps.<context_name>` (`__run`, `__run_2`, or the user's `id`).
    pub context_name: String,
    /// `owner/repo` for `uses:` steps (`action_name` in `stepResults`).
    pub action: Option<String>,
}

/// The envelope of an acquired job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobEnvelope {
    /// `plan.planId`: `planId` in the run service, `workflow_run_backend_id`.
    pub plan_id: String,
    /// `jobId`: `workflow_job_run_backend_id`.
    pub job_id: String,
    /// `jobDisplayName` (else `jobName`).
    pub display_name: String,
    /// `github.repository` (`owner/name`, empty when unknown).
    pub repository: String,
    /// `SystemVssConnection.url`: where `renewjob`/`completejob` go (ends with `/`).
    pub run_service_url: String,
    /// `system.github.results_endpoint` (or `ResultsServiceUrl`), ends with `/`.
    pub results_url: Option<String>,
    /// `SystemVssConnection.data.FeedStreamUrl` (live console WebSocket).
    pub feed_url: Option<String>,
    /// The job token (`SystemVssConnection` `AccessToken`).
    #[serde(with = "secret_string")]
    pub job_token: Secret,
    /// `billingOwnerId`, echoed in `completejob`.
    pub billing_owner_id: Option<String>,
    /// The steps, in the message's order (the executor's step indexes).
    pub steps: Vec<StepRef>,
    /// The message's `mask` entries of type `regex` (patterns as sent).
    pub mask_patterns: Vec<String>,
    /// `ACTIONS_STEP_DEBUG` is on: `::debug::` lines are kept.
    #[serde(default)]
    pub step_debug: bool,
}

/// Serialises a [`Secret`] as its plain string (for the report's saved
/// state in the state database, never for logs).
mod secret_string {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::secret::Secret;

    pub fn serialize<S: Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Secret, D::Error> {
        String::deserialize(de).map(Secret::new)
    }
}

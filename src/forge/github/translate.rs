//! (to be written: temporary stand-in until the translation lands)
use super::job::JobEnvelope;
use super::message::JobMessage;
use std::time::Duration;
#[derive(Debug, thiserror::Error)]
#[error("not yet")]
pub struct TranslateError;
pub struct TranslateOptions {
    pub max_job_timeout: Option<Duration>,
}
pub struct TranslatedJob {
    pub spec: crate::job::JobSpec,
    pub notes: Vec<String>,
    pub step_debug: bool,
}
pub fn envelope(_m: &JobMessage) -> Result<JobEnvelope, TranslateError> {
    Err(TranslateError)
}
pub fn translate(_m: &JobMessage, _o: &TranslateOptions) -> Result<TranslatedJob, TranslateError> {
    Err(TranslateError)
}

//! Forgejo behind the forge port: [`Forgejo`] connects (credentials and
//! `Declare`), its session hands out the poller and resumes reports, and
//! each task's report is the Forgejo reporter over the Connect client.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::ReportApi;
use super::client::{ClientOptions, ForgejoClient};
use super::credentials::{self, CredentialError};
use super::error::ForgeError;
use super::proto::{self, Task, TaskResult, TaskState};
use super::reporter::{self, ReportError, ReporterConfig, ReporterShared, TaskStateBuilder};
use super::task::{TranslateOptions, numbered_payload, translate};
use super::user_keys::ForgejoUserKeys;
use crate::config::ForgeConfig;
use crate::events::{Conclusion, EventSink, JobEvent};
use crate::forge::{
    AssignedJob, Assignment, Connected, Failure, FailureKind, Forge, Poller, RUNNER_VERSION,
    ReportStarter, ResumedTask, RunnerCredentials, Session, TaskReport, Unrunnable, UserKeys,
};

/// A configured Forgejo or Gitea instance.
#[derive(Debug, Clone)]
pub struct Forgejo {
    forge: ForgeConfig,
    /// The client without credentials.
    base: ForgejoClient,
    max_job_timeout: Duration,
    /// The instance's published user keys (anonymous lookups).
    user_keys: Arc<ForgejoUserKeys>,
}

impl Forgejo {
    /// Fails on a URL that is not http(s).
    pub fn new(forge: &ForgeConfig, max_job_timeout: Duration) -> Result<Self, ForgeError> {
        let options = ClientOptions::default();
        let base = ForgejoClient::new(&forge.url, &options)?;
        let user_keys =
            ForgejoUserKeys::new(&forge.url, &options.user_agent).map_err(|message| {
                ForgeError::Transport {
                    procedure: "client",
                    message,
                    timed_out: false,
                }
            })?;
        Ok(Forgejo {
            forge: forge.clone(),
            base,
            max_job_timeout,
            user_keys: Arc::new(user_keys),
        })
    }

    fn session(&self, client: ForgejoClient) -> Arc<dyn Session> {
        Arc::new(ForgejoSession(Arc::new(SessionInner {
            forge: self.forge.clone(),
            client,
            max_job_timeout: self.max_job_timeout,
            user_keys: self.user_keys.clone(),
        })))
    }
}

fn credential_failure(e: CredentialError) -> Failure {
    let kind = if e.is_retryable() {
        FailureKind::Transient
    } else {
        FailureKind::Fatal
    };
    Failure::new(kind, e)
}

/// The port's kind of a failed call.
pub(super) fn call_failure(e: ForgeError) -> Failure {
    let kind = if e.is_unauthenticated() {
        FailureKind::Unauthenticated
    } else if e.is_task_gone() {
        FailureKind::TaskGone
    } else if e.is_retryable() {
        FailureKind::Transient
    } else {
        FailureKind::Fatal
    };
    Failure::new(kind, e)
}

fn report_failure(e: ReportError) -> Failure {
    let kind = match e {
        ReportError::Unauthenticated { .. } => FailureKind::Unauthenticated,
        ReportError::TaskGone { .. } => FailureKind::TaskGone,
        ReportError::GaveUp { .. } => FailureKind::Transient,
    };
    Failure::new(kind, e)
}

#[async_trait::async_trait]
impl Forge for Forgejo {
    async fn connect(&self, saved: Option<RunnerCredentials>) -> Result<Connected, Failure> {
        let got = credentials::obtain(&self.forge, &self.base, saved, RUNNER_VERSION)
            .await
            .map_err(credential_failure)?;
        Ok(Connected {
            session: self.session(got.client),
            credentials: got.credentials,
            changed: got.changed,
        })
    }

    fn connect_offline(&self, saved: Option<&RunnerCredentials>) -> Option<Arc<dyn Session>> {
        credentials::known_locally(&self.forge, saved)
            .map(|creds| self.session(self.base.with_credentials(creds)))
    }
}

/// What a session and its poller share.
pub(super) struct SessionInner {
    pub forge: ForgeConfig,
    /// The client with the runner's credentials.
    pub client: ForgejoClient,
    pub max_job_timeout: Duration,
    /// Handed to every assigned job (debug SSH).
    pub user_keys: Arc<ForgejoUserKeys>,
}

struct ForgejoSession(Arc<SessionInner>);

impl Session for ForgejoSession {
    fn poller(&self) -> Box<dyn Poller> {
        Box::new(super::poll::ForgejoPoller::new(self.0.clone()))
    }

    fn resume(&self, task: ResumedTask) -> Arc<dyn TaskReport> {
        let saved = task
            .saved
            .and_then(|b| TaskState::decode(b.as_slice()).ok());
        let state = saved
            .unwrap_or_else(|| TaskStateBuilder::new(task.task_id, task.step_count, false).state());
        let builder = TaskStateBuilder::resume(&state, task.spooled, false);
        let shared =
            ReporterShared::resume(builder, task.spool, ReporterConfig::default(), task.acked);
        Arc::new(ForgejoReport {
            api: Arc::new(self.0.client.clone()),
            shared: Arc::new(shared),
        })
    }
}

impl SessionInner {
    /// A fetched task as the port hands it out: translated into a job (or
    /// why it cannot run), with the means to start its report.
    pub(super) fn assignment(&self, task: Task) -> Assignment {
        let received = std::time::Instant::now();
        let opts = TranslateOptions {
            instance_url: self.forge.url.clone(),
            max_job_timeout: Some(self.max_job_timeout),
        };
        let task_id = task.id;
        let (job, job_name, repository, step_count, event, debug) = match translate(&task, &opts) {
            Ok(t) => (
                Ok(AssignedJob {
                    spec: t.spec,
                    runs_on: t.runs_on,
                    image: None,
                    notes: t.notes,
                    user_keys: Some(self.user_keys.clone() as Arc<dyn UserKeys>),
                }),
                t.job_name,
                t.repository,
                t.step_count,
                t.event_name,
                t.step_debug,
            ),
            Err(e) => (
                Err(Unrunnable {
                    error: Box::new(e),
                    payload: numbered_payload(&task),
                }),
                String::from("(unreadable)"),
                String::new(),
                0,
                String::new(),
                false,
            ),
        };
        let api: Arc<dyn ReportApi> = Arc::new(self.client.clone());
        let runner_name = self.forge.runner_name.clone();
        let name = job_name.clone();
        let report = ReportStarter::new(move |spool| {
            let mut builder = TaskStateBuilder::new(task_id, step_count, debug);
            builder.received(&runner_name, RUNNER_VERSION, &name, &event, proto::now());
            let shared = ReporterShared::new(builder, spool, ReporterConfig::default());
            Arc::new(ForgejoReport {
                api,
                shared: Arc::new(shared),
            }) as Arc<dyn TaskReport>
        });
        Assignment {
            received,
            task_id,
            job_name,
            repository,
            step_count,
            job,
            report,
        }
    }
}

/// One task's report: the reporter's state and the client it uploads with.
struct ForgejoReport {
    api: Arc<dyn ReportApi>,
    shared: Arc<ReporterShared>,
}

impl EventSink for ForgejoReport {
    fn emit(&self, event: JobEvent) {
        self.shared.emit(event);
    }
}

#[async_trait::async_trait]
impl TaskReport for ForgejoReport {
    async fn run(&self, cancel_job: CancellationToken) -> Result<(), Failure> {
        reporter::run_reporter(self.api.clone(), self.shared.clone(), cancel_job)
            .await
            .map_err(report_failure)
    }

    async fn finish(&self, cancel_job: &CancellationToken) -> Result<(), Failure> {
        reporter::finish(self.api.as_ref(), &self.shared, cancel_job)
            .await
            .map_err(report_failure)
    }

    fn close(
        &self,
        conclusion: Conclusion,
        outputs: &IndexMap<String, String>,
        error: Option<&str>,
    ) {
        self.shared.close(conclusion, outputs, error);
    }

    fn is_gone(&self) -> bool {
        self.shared.is_gone()
    }

    fn result(&self) -> Option<Conclusion> {
        match TaskResult::from_wire(self.shared.state().result) {
            TaskResult::Success => Some(Conclusion::Success),
            TaskResult::Failure => Some(Conclusion::Failure),
            TaskResult::Cancelled => Some(Conclusion::Cancelled),
            TaskResult::Skipped => Some(Conclusion::Skipped),
            TaskResult::Unspecified => None,
        }
    }

    fn save(&self) -> Vec<u8> {
        self.shared.state().encode_to_vec()
    }
}

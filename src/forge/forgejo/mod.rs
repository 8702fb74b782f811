//! Forgejo and Gitea behind the forge port: the runner protocol (Connect
//! RPC, `shared/spec/forgejo-runner-protocol.md`): its messages ([`proto`]),
//! client and errors, the runner's credentials, the translation of a task
//! into a job, the poll state and the reporter.

pub mod client;
pub mod credentials;
pub mod error;
pub mod proto;
pub mod reporter;
pub mod task;
pub mod user_keys;

mod poll;
mod session;

pub use error::{Code, ForgeError, ping_proves_not_a_forge};
pub use session::Forgejo;
pub use user_keys::ForgejoUserKeys;

/// The two calls a running task's reporter makes. The Connect client
/// implements it; keeping it a trait lets the reporter's retry logic be
/// exercised against scripted failures.
#[async_trait::async_trait]
pub trait ReportApi: Send + Sync {
    async fn update_log(
        &self,
        req: proto::UpdateLogRequest,
    ) -> Result<proto::UpdateLogResponse, ForgeError>;
    async fn update_task(
        &self,
        req: proto::UpdateTaskRequest,
    ) -> Result<proto::UpdateTaskResponse, ForgeError>;
}

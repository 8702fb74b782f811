//! Forges: where tasks come from and where their logs and results go.
//! `forgejo` speaks the Forgejo/Gitea runner protocol (Connect RPC).

pub mod client;
pub mod credentials;
pub mod error;
pub mod proto;
pub mod reporter;
pub mod task;

pub use error::{Code, ForgeError, ping_proves_not_a_forge};

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

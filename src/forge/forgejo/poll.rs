//! Forgejo's fetch protocol: `FetchTask` with `task_capacity`, the
//! `tasks_version` that lets the forge answer "nothing new" without a
//! database query, the request key that makes a retried fetch return the
//! same tasks, and the quirks of some forge versions.

use std::sync::Arc;

use super::proto::{FetchTaskRequest, Task};
use super::session::{SessionInner, call_failure};
use crate::forge::{Assignment, Failure, Poller};

/// A fresh request key (`x-runner-request-key`).
fn new_request_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The poll state of one forge.
pub(super) struct ForgejoPoller {
    session: Arc<SessionInner>,
    tasks_version: i64,
    /// Kept across failures, renewed after each successful fetch, so that a
    /// fetch whose answer was lost returns the same tasks again.
    request_key: String,
}

impl ForgejoPoller {
    pub(super) fn new(session: Arc<SessionInner>) -> Self {
        ForgejoPoller {
            session,
            tasks_version: 0,
            request_key: new_request_key(),
        }
    }
}

#[async_trait::async_trait]
impl Poller for ForgejoPoller {
    async fn fetch(&mut self, capacity: u32) -> Result<Vec<Assignment>, Failure> {
        let req = FetchTaskRequest {
            tasks_version: self.tasks_version,
            task_capacity: Some(i64::from(capacity)),
        };
        let s = &self.session;
        let resp = s
            .client
            .fetch_task(req, &self.request_key, s.forge.fetch_timeout)
            .await
            .map_err(call_failure)?;
        self.request_key = new_request_key();
        // Forgejo 14.0.0/14.0.1 could send additional tasks with an empty `task`.
        let tasks: Vec<Task> = resp
            .task
            .into_iter()
            .chain(resp.additional_tasks)
            .filter(|t| t.id != 0)
            .collect();
        if tasks.is_empty() {
            if resp.tasks_version > self.tasks_version {
                self.tasks_version = resp.tasks_version;
            }
        } else {
            // Ask the database again next time: more jobs may be queued.
            self.tasks_version = 0;
        }
        Ok(tasks.into_iter().map(|t| s.assignment(t)).collect())
    }
}

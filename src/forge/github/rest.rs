//! The REST calls (spec §2.1, §2.4): JIT configs for new ephemeral
//! runners, and listing and removing runners, at repository, organisation
//! or enterprise level. Authenticated as a GitHub App installation (its
//! token minted and cached here) or with a token.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use super::auth::RestCredentials;
use super::error::{CALL_TIMEOUT, GithubError, decode, send};
use crate::secret::Secret;

/// Installation tokens live an hour; one is used for this long.
const INSTALLATION_TOKEN_USE: Duration = Duration::from_secs(50 * 60);
/// Runners per page when listing.
const PER_PAGE: usize = 100;

/// A runner as the REST API lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct RemoteRunner {
    pub id: u64,
    pub name: String,
    /// `online` or `offline`.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub busy: bool,
}

/// A new ephemeral runner: its id and name, and its JIT config.
pub struct NewRunner {
    pub id: u64,
    pub name: String,
    pub jit_config: Secret,
}

/// The REST client of one forge.
pub struct Rest {
    http: reqwest::Client,
    /// The API base without a trailing `/`.
    api_url: String,
    /// `repos/<owner>/<repo>`, `orgs/<org>` or `enterprises/<e>`.
    scope_path: String,
    credentials: RestCredentials,
    installation: tokio::sync::Mutex<Option<(Secret, Instant)>>,
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rest")
            .field("api_url", &self.api_url)
            .field("scope_path", &self.scope_path)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Rest {
    pub fn new(
        http: reqwest::Client,
        api_url: &str,
        scope_path: &str,
        credentials: RestCredentials,
    ) -> Rest {
        Rest {
            http,
            api_url: api_url.trim_end_matches('/').to_string(),
            scope_path: scope_path.trim_matches('/').to_string(),
            credentials,
            installation: tokio::sync::Mutex::new(None),
        }
    }

    /// Where runners of the scope live (for messages).
    pub fn scope_path(&self) -> &str {
        &self.scope_path
    }

    /// The bearer token of the next call.
    async fn token(&self) -> Result<Secret, GithubError> {
        let (app_id, installation_id, key) = match &self.credentials {
            RestCredentials::Token(t) => return Ok(t.clone()),
            RestCredentials::App {
                app_id,
                installation_id,
                key,
            } => (*app_id, *installation_id, key),
        };
        let mut cached = self.installation.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        #[derive(Deserialize)]
        struct Answer {
            token: String,
        }
        let jwt = RestCredentials::app_jwt(app_id, key)?;
        let url = format!(
            "{}/app/installations/{installation_id}/access_tokens",
            self.api_url
        );
        let started = Instant::now();
        let request = self.request(reqwest::Method::POST, &url, &jwt);
        let (_, body) = send("installation token", &url, request).await?;
        let answer: Answer = decode("installation token", &body)?;
        let token = Secret::new(answer.token);
        *cached = Some((token.clone(), started + INSTALLATION_TOKEN_USE));
        Ok(token)
    }

    fn request(&self, method: reqwest::Method, url: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .timeout(CALL_TIMEOUT)
    }

    /// A call with the REST credentials; an installation token refused
    /// with 401 is minted again once.
    async fn call(
        &self,
        name: &'static str,
        method: reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<bytes::Bytes, GithubError> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let mut request = self.request(method.clone(), url, token.expose());
            if let Some(b) = body {
                request = request.json(b);
            }
            match send(name, url, request).await {
                Ok((_, body)) => return Ok(body),
                Err(e)
                    if attempt == 0
                        && e.is_unauthorized()
                        && matches!(self.credentials, RestCredentials::App { .. }) =>
                {
                    *self.installation.lock().await = None;
                }
                Err(e) => return Err(e),
            }
        }
        Err(GithubError::Invalid(format!(
            "{name}: GitHub refused a fresh token"
        )))
    }

    /// Checks that the credentials work and may manage the scope's runners
    /// (one page of the runner list).
    pub async fn check(&self) -> Result<(), GithubError> {
        self.list_page(1, 1).await.map(|_| ())
    }

    /// `generate-jitconfig`: a new ephemeral runner with these labels.
    pub async fn generate_jitconfig(
        &self,
        name: &str,
        runner_group_id: u64,
        labels: &[String],
    ) -> Result<NewRunner, GithubError> {
        #[derive(Deserialize)]
        struct Answer {
            runner: RemoteRunner,
            encoded_jit_config: String,
        }
        let url = format!(
            "{}/{}/actions/runners/generate-jitconfig",
            self.api_url, self.scope_path
        );
        let body = json!({
            "name": name,
            "runner_group_id": runner_group_id,
            "labels": labels,
            "work_folder": "_work",
        });
        let answer = self
            .call(
                "generate-jitconfig",
                reqwest::Method::POST,
                &url,
                Some(&body),
            )
            .await?;
        let answer: Answer = decode("generate-jitconfig", &answer)?;
        Ok(NewRunner {
            id: answer.runner.id,
            name: answer.runner.name,
            jit_config: Secret::new(answer.encoded_jit_config),
        })
    }

    async fn list_page(
        &self,
        page: usize,
        per_page: usize,
    ) -> Result<Vec<RemoteRunner>, GithubError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            runners: Vec<RemoteRunner>,
        }
        let url = format!(
            "{}/{}/actions/runners?per_page={per_page}&page={page}",
            self.api_url, self.scope_path
        );
        let body = self
            .call("list runners", reqwest::Method::GET, &url, None)
            .await?;
        Ok(decode::<Answer>("list runners", &body)?.runners)
    }

    /// Every runner of the scope.
    pub async fn list_runners(&self) -> Result<Vec<RemoteRunner>, GithubError> {
        let mut all = Vec::new();
        for page in 1.. {
            let runners = self.list_page(page, PER_PAGE).await?;
            let last = runners.len() < PER_PAGE;
            all.extend(runners);
            if last || page >= 100 {
                break;
            }
        }
        Ok(all)
    }

    /// Removes a runner; one that is already gone counts as removed.
    pub async fn delete_runner(&self, id: u64) -> Result<(), GithubError> {
        let url = format!("{}/{}/actions/runners/{id}", self.api_url, self.scope_path);
        match self
            .call("remove runner", reqwest::Method::DELETE, &url, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

//! GitHub behind the forge port: [`Github`] loads the REST credentials,
//! checks them and removes runners an earlier run left; its session hands
//! out the pool's poller, resumes a report after a restart, and removes
//! every runner it created when the daemon stops.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::auth::{RestCredentials, SigningKey};
use super::error::{GithubError, http_client};
use super::pool::{ImageRunners, Pool, PoolConfig, PoolTimings, failure};
use super::report;
use super::rest::Rest;
use super::user_keys::GithubUserKeys;
use crate::config::{CredentialSource, ForgeConfig, GithubForge, GuestOs, ImageConfig};
use crate::forge::{
    Connected, Failure, FailureKind, Forge, Poller, RUNNER_VERSION, ResumedTask, RunnerCredentials,
    Session, TaskReport, UserKeys,
};
use crate::secret::Secret;

/// A configured GitHub forge.
pub struct Github {
    forge: ForgeConfig,
    github: GithubForge,
    images: Vec<ImageRunners>,
    max_job_timeout: Duration,
    http: reqwest::Client,
    timings: PoolTimings,
    /// GitHub's published user keys (anonymous lookups).
    user_keys: Arc<GithubUserKeys>,
}

/// The broker's architecture name of this host.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "ARM64",
        "arm" => "ARM",
        "x86" => "X86",
        _ => "X64",
    }
}

/// The labels of each image's JIT runners: `self-hosted`, the OS
/// (`Linux`, or `illumos`), the architecture, then the image's own labels
/// that the forge's section declares (`labels`, by default all), without
/// duplicates (GitHub ignores the case of labels).
pub fn image_runners(
    images: &BTreeMap<String, ImageConfig>,
    declared: &[String],
) -> Vec<ImageRunners> {
    images
        .values()
        // An image none of whose labels the section declares gets no
        // runners (they would take every `[self-hosted, Linux]` job).
        .filter(|image| {
            declared.is_empty()
                || image.labels.is_empty()
                || image.labels.iter().any(|l| declared.contains(l))
        })
        .map(|image| {
            let os = match image.os {
                GuestOs::Linux => "Linux",
                GuestOs::Illumos => "illumos",
            };
            let mut labels = vec![
                "self-hosted".to_string(),
                os.to_string(),
                host_arch().to_string(),
            ];
            for l in &image.labels {
                let declared = declared.is_empty() || declared.iter().any(|d| d == l);
                if declared && !labels.iter().any(|x| x.eq_ignore_ascii_case(l)) {
                    labels.push(l.clone());
                }
            }
            ImageRunners {
                image: image.name.clone(),
                labels,
                runs_on: image.labels.clone(),
            }
        })
        .collect()
}

fn read_file(path: &Path, what: &str) -> Result<String, GithubError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        GithubError::Credentials(format!("Cannot read the {what} {}: {e}", path.display()))
    })?;
    if text.trim().is_empty() {
        return Err(GithubError::Credentials(format!(
            "The {what} {} is empty",
            path.display()
        )));
    }
    Ok(text)
}

/// The REST credentials a forge's section names.
pub fn load_credentials(source: &CredentialSource) -> Result<RestCredentials, GithubError> {
    match source {
        CredentialSource::GithubApp {
            app_id,
            installation_id,
            private_key_file,
        } => {
            let pem = read_file(private_key_file, "GitHub App private key file")?;
            let key = SigningKey::from_pem(
                &pem,
                &format!("The GitHub App private key file {}", private_key_file.display()),
            )?;
            Ok(RestCredentials::App {
                app_id: *app_id,
                installation_id: *installation_id,
                key: Box::new(key),
            })
        }
        CredentialSource::GithubToken(path) => {
            let text = read_file(path, "GitHub token file")?;
            Ok(RestCredentials::Token(Secret::new(text.trim())))
        }
        _ => Err(GithubError::Credentials(
            "A GitHub forge needs `app_id`, `installation_id` and `private_key_file`, or `token_file`".into(),
        )),
    }
}

impl Github {
    /// Fails on a section that is not `kind = "github"`.
    pub fn new(
        forge: &ForgeConfig,
        images: &BTreeMap<String, ImageConfig>,
        max_job_timeout: Duration,
    ) -> Result<Github, GithubError> {
        let github = forge.github.clone().ok_or_else(|| {
            GithubError::Invalid(format!("Forge {} is not a GitHub forge", forge.name))
        })?;
        let user_agent = format!("{RUNNER_VERSION} (GitHub Actions runner protocol)");
        // Messages name the host (`https://github.com`), not the scope.
        let host = url::Url::parse(&forge.url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| forge.url.clone());
        let user_keys = GithubUserKeys::new(&github.api_url, &host, &user_agent)?;
        Ok(Github {
            user_keys: Arc::new(user_keys),
            forge: forge.clone(),
            github,
            images: image_runners(images, &forge.labels),
            max_job_timeout,
            http: http_client(&user_agent)?,
            timings: PoolTimings::default(),
        })
    }

    /// Other timings (tests).
    pub fn with_timings(mut self, timings: PoolTimings) -> Github {
        self.timings = timings;
        self
    }
}

#[async_trait::async_trait]
impl Forge for Github {
    async fn connect(&self, _saved: Option<RunnerCredentials>) -> Result<Connected, Failure> {
        let credentials = load_credentials(&self.forge.credentials)
            .map_err(|e| Failure::new(FailureKind::Fatal, e))?;
        let rest = Arc::new(Rest::new(
            self.http.clone(),
            &self.github.api_url,
            &self.github.scope.rest_path(),
            credentials,
        ));
        rest.check().await.map_err(|e| {
            let hint = if matches!(e.status(), Some(401 | 403 | 404)) {
                GithubError::Credentials(format!(
                    "GitHub refuses to list the runners of {} with these credentials ({e}); the App or token needs the \"Administration: read and write\" permission on the repository (\"Self-hosted runners\" for an organisation); see docs/github.md",
                    self.forge.url
                ))
            } else {
                e
            };
            failure(hint)
        })?;
        let pool = Pool::new(
            PoolConfig {
                forge: self.forge.name.clone(),
                runner_name: self.forge.runner_name.clone(),
                runner_group_id: self.github.runner_group_id,
                runner_version: self.github.runner_version.clone(),
                images: self.images.clone(),
                max_job_timeout: Some(self.max_job_timeout),
                arch: host_arch(),
                timings: self.timings.clone(),
                user_keys: Some(self.user_keys.clone() as Arc<dyn UserKeys>),
            },
            rest,
            self.http.clone(),
        );
        match pool.remove_leftovers().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(forge = %self.forge.name, removed = n, "runners left from an earlier run removed")
            }
            Err(e) => {
                tracing::warn!(forge = %self.forge.name, error = %e, "could not look for runners left from an earlier run")
            }
        }
        let labels = self
            .images
            .iter()
            .flat_map(|i| i.labels.iter().cloned())
            .collect();
        Ok(Connected {
            session: Arc::new(GithubSession {
                pool,
                http: self.http.clone(),
            }),
            credentials: RunnerCredentials {
                url: self.forge.url.clone(),
                // GitHub has no runner identity to keep: its runners are
                // JIT ones, registered as slots free up.
                uuid: "jit-runners".to_string(),
                token: Secret::default(),
                runner_id: 0,
                declared_labels: labels,
            },
            changed: false,
        })
    }

    /// GitHub runners exist only while GitHub answers.
    fn connect_offline(&self, _saved: Option<&RunnerCredentials>) -> Option<Arc<dyn Session>> {
        None
    }
}

/// A connected GitHub forge.
struct GithubSession {
    pool: Pool,
    http: reqwest::Client,
}

#[async_trait::async_trait]
impl Session for GithubSession {
    fn poller(&self) -> Box<dyn Poller> {
        self.pool.poller()
    }

    fn resume(&self, task: ResumedTask) -> Arc<dyn TaskReport> {
        report::resume(task, self.http.clone())
    }

    async fn disconnect(&self) {
        self.pool.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_labels_are_system_labels_then_declared_image_labels_without_case_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y) = (dir.path().join("x.qcow2"), dir.path().join("y.qcow2"));
        std::fs::write(&x, b"").unwrap();
        std::fs::write(&y, b"").unwrap();
        let text = format!(
            "[images.tiny]\npath = {x:?}\nformat = \"raw\"\nlabels = [\"tiny\", \"linux\"]\n[images.omnios]\npath = {y:?}\nformat = \"raw\"\nos = \"illumos\"\nlabels = [\"omnios\"]\n"
        );
        let config = crate::config::parse_str(&text, &dir.path().join("solstice.toml"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let runners = image_runners(&config.images, &[]);
        let tiny = runners.iter().find(|r| r.image == "tiny").unwrap();
        assert_eq!(tiny.labels, ["self-hosted", "Linux", host_arch(), "tiny"]);
        assert_eq!(tiny.runs_on, ["tiny", "linux"]);
        let omni = runners.iter().find(|r| r.image == "omnios").unwrap();
        assert_eq!(
            omni.labels,
            ["self-hosted", "illumos", host_arch(), "omnios"]
        );
        let only = image_runners(&config.images, &["linux".to_string()]);
        let tiny = only.iter().find(|r| r.image == "tiny").unwrap();
        assert_eq!(tiny.labels, ["self-hosted", "Linux", host_arch()]);
        assert!(only.iter().all(|r| r.image != "omnios"), "{only:?}");
    }
}

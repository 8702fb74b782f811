//! The public SSH keys GitHub publishes for its users (REST "List public
//! keys for a user", `GET {api_url}/users/{username}/keys`, "accessible by
//! anyone"), and the account number behind a name
//! (`GET {api_url}/users/{username}` → `id`), for debug SSH into a failed
//! job's VM.
//!
//! Both calls are anonymous (no App or runner token is sent: 60 requests
//! an hour per address on github.com), with GitHub's usual headers. An
//! unknown name is 404 `{"message":"Not Found",…}`; the key list is paged
//! (`per_page` up to 100, `page` from 1).

use std::time::Duration;

use serde::Deserialize;

use super::error::{GithubError, decode, send};
use crate::forge::{UserKeys, UserKeysError};

/// Keys asked for per page (GitHub's maximum).
const PER_PAGE: usize = 100;
/// Pages read at most.
const MAX_PAGES: usize = 10;
/// Time allowed for one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Time allowed to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest name accepted (GitHub's 39, plus an Enterprise Managed User's
/// `_shortcode` suffix).
const MAX_NAME_LEN: usize = 64;

/// GitHub's published user keys.
#[derive(Clone)]
pub struct GithubUserKeys {
    http: reqwest::Client,
    /// The REST API base without a trailing `/`.
    api_url: String,
    /// The forge's web address, for messages.
    forge_url: String,
}

impl std::fmt::Debug for GithubUserKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubUserKeys")
            .field("api_url", &self.api_url)
            .field("forge_url", &self.forge_url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ApiKey {
    #[serde(default)]
    key: String,
}

#[derive(Deserialize)]
struct ApiUser {
    id: u64,
}

impl GithubUserKeys {
    /// The key lookups of the REST API at `api_url` (`https://api.github.com`,
    /// or `https://host/api/v3`); `forge_url` names the forge in messages.
    /// Redirects are not followed.
    pub fn new(api_url: &str, forge_url: &str, user_agent: &str) -> Result<Self, GithubError> {
        let api_url = api_url.trim().trim_end_matches('/').to_string();
        let parsed = url::Url::parse(&api_url).map_err(|e| {
            GithubError::Invalid(format!("The API URL {api_url:?} is not valid: {e}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
            return Err(GithubError::Invalid(format!(
                "The API URL {api_url:?} must start with https://"
            )));
        }
        let http = reqwest::Client::builder()
            .user_agent(user_agent)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GithubError::Invalid(format!("Cannot build the HTTP client: {e}")))?;
        Ok(GithubUserKeys {
            http,
            api_url,
            forge_url: forge_url.trim().trim_end_matches('/').to_string(),
        })
    }

    /// `{api_url}/users/{user}` plus `tail` segments, the name path-escaped.
    fn endpoint(&self, user: &str, tail: &[&str]) -> Result<url::Url, UserKeysError> {
        let mut url = url::Url::parse(&self.api_url)
            .map_err(|e| UserKeysError::Forge(format!("bad API URL {}: {e}", self.api_url)))?;
        url.path_segments_mut()
            .map_err(|()| UserKeysError::Forge(format!("bad API URL {}", self.api_url)))?
            .pop_if_empty()
            .extend(["users", user])
            .extend(tail);
        Ok(url)
    }

    async fn get(
        &self,
        call: &'static str,
        user: &str,
        url: url::Url,
    ) -> Result<bytes::Bytes, UserKeysError> {
        let shown = url.to_string();
        let request = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        match send(call, &shown, request).await {
            Ok((status, body)) if status == reqwest::StatusCode::OK => Ok(body),
            Ok((status, _)) => Err(UserKeysError::Forge(format!(
                "{call}: GitHub answered HTTP {} instead of 200",
                status.as_u16()
            ))),
            Err(e) if e.status() == Some(404) => Err(UserKeysError::NoSuchUser {
                user: user.to_string(),
            }),
            Err(e) if matches!(e.status(), Some(403 | 429)) => Err(UserKeysError::Forge(format!(
                "{e} (GitHub limits anonymous API calls to 60 an hour per address; try again later)"
            ))),
            Err(e) => Err(UserKeysError::Forge(e.to_string())),
        }
    }
}

#[async_trait::async_trait]
impl UserKeys for GithubUserKeys {
    async fn public_keys(
        &self,
        user: &str,
        user_id: Option<&str>,
    ) -> Result<Vec<String>, UserKeysError> {
        check_user_name(user)?;
        // An empty id (a task without one) means no id to check.
        if let Some(expected) = user_id.map(str::trim).filter(|s| !s.is_empty()) {
            let body = self
                .get("user lookup", user, self.endpoint(user, &[])?)
                .await?;
            let found: ApiUser =
                decode("user lookup", &body).map_err(|e| UserKeysError::Forge(e.to_string()))?;
            if found.id.to_string() != expected {
                return Err(UserKeysError::Renamed {
                    user: user.to_string(),
                    expected: expected.to_string(),
                    found: found.id.to_string(),
                });
            }
        }
        let mut keys = Vec::new();
        for page in 1..=MAX_PAGES {
            let mut url = self.endpoint(user, &["keys"])?;
            url.query_pairs_mut()
                .append_pair("per_page", &PER_PAGE.to_string())
                .append_pair("page", &page.to_string());
            let body = self.get("user keys", user, url).await?;
            let batch: Vec<ApiKey> =
                decode("user keys", &body).map_err(|e| UserKeysError::Forge(e.to_string()))?;
            let got = batch.len();
            keys.extend(
                batch
                    .into_iter()
                    .map(|k| k.key.trim().to_string())
                    .filter(|k| !k.is_empty()),
            );
            if got < PER_PAGE {
                break;
            }
        }
        Ok(keys)
    }

    fn forge_url(&self) -> &str {
        &self.forge_url
    }
}

/// Refuses what cannot be a GitHub login (letters, digits, `-`, and `_`
/// for Enterprise Managed Users, starting with a letter or digit), so that
/// no name reaches a URL path it could change.
pub fn check_user_name(user: &str) -> Result<(), UserKeysError> {
    let valid = !user.is_empty()
        && user.len() <= MAX_NAME_LEN
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        && user
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(UserKeysError::Forge(format!(
            "{user:?} is not a GitHub user name; no keys were asked for"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_that_could_change_the_path_are_refused() {
        for ok in ["octocat", "a", "Mona-Lisa", "jdoe_acme", "x1"] {
            assert!(check_user_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "..",
            "a.b",
            "a b",
            "-a",
            "github-actions[bot]",
            "a%2f",
            "ö",
            &"x".repeat(65),
        ] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn endpoints_keep_the_api_prefix() {
        let k =
            GithubUserKeys::new("https://ghe.example/api/v3/", "https://ghe.example", "t").unwrap();
        assert_eq!(
            k.endpoint("octocat", &["keys"]).unwrap().as_str(),
            "https://ghe.example/api/v3/users/octocat/keys"
        );
        let k = GithubUserKeys::new("https://api.github.com", "https://github.com/", "t").unwrap();
        assert_eq!(
            k.endpoint("octocat", &[]).unwrap().as_str(),
            "https://api.github.com/users/octocat"
        );
        assert_eq!(k.forge_url(), "https://github.com");
        assert!(GithubUserKeys::new("ftp://x", "x", "t").is_err());
    }
}

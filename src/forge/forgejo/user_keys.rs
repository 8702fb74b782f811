//! The public SSH keys a Forgejo or Gitea instance publishes for its users
//! (`GET /api/v1/users/{username}/keys`, anonymous), and the account
//! number behind a name (`GET /api/v1/users/{username}` → `id`), for debug
//! SSH into a failed job's VM.
//!
//! What the servers do (`routers/api/v1/user/key.go`, the API context's
//! user assignment): an unknown name is 404 with the API's JSON error
//! (`{"message":"user redirect does not exist [name: …]","url":…}`); a
//! name the user renamed away from is a 307 redirect to the new name's
//! path; a private or limited user is 404 to anonymous callers; the key
//! list is paged (`page` from 1, `limit` capped by the instance's
//! `MAX_RESPONSE_ITEMS`, 50 by default) and says the total in
//! `X-Total-Count`. No runner credentials are sent: the lookups are
//! anonymous.

use std::time::Duration;

use serde::Deserialize;

use super::client::describe;
use crate::forge::{UserKeys, UserKeysError};

/// Keys asked for per page: Forgejo's and Gitea's default
/// `MAX_RESPONSE_ITEMS` (a smaller instance cap only means more pages).
const PAGE_LIMIT: usize = 50;
/// Pages read at most (a user with more keys than this is cut off).
const MAX_PAGES: usize = 20;
/// Time allowed for one request, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Time allowed to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest user name Forgejo and Gitea accept.
const MAX_NAME_LEN: usize = 40;

/// A Forgejo or Gitea instance's published user keys.
#[derive(Clone)]
pub struct ForgejoUserKeys {
    http: reqwest::Client,
    /// The instance URL without a trailing `/`.
    url: String,
}

impl std::fmt::Debug for ForgejoUserKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForgejoUserKeys")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A key as the API lists it (other fields are not needed).
#[derive(Deserialize)]
struct ApiKey {
    #[serde(default)]
    key: String,
}

/// A user as the API shows it.
#[derive(Deserialize)]
struct ApiUser {
    id: i64,
}

impl ForgejoUserKeys {
    /// The key lookups of the instance at `instance_url` (checked as the
    /// runner client checks it). Redirects are not followed: on these
    /// endpoints they mean the name was renamed away.
    pub fn new(instance_url: &str, user_agent: &str) -> Result<Self, String> {
        let (url, _) = super::client::api_base(instance_url).map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .user_agent(user_agent)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("Cannot build the HTTP client: {e}"))?;
        Ok(ForgejoUserKeys { http, url })
    }

    /// `{instance}/api/v1/users/{user}` plus `tail` segments, the name
    /// path-escaped.
    fn endpoint(&self, user: &str, tail: &[&str]) -> Result<reqwest::Url, UserKeysError> {
        let mut url = reqwest::Url::parse(&self.url)
            .map_err(|e| UserKeysError::Forge(format!("bad forge URL {}: {e}", self.url)))?;
        {
            let mut segments = url.path_segments_mut().map_err(|()| {
                UserKeysError::Forge(format!("bad forge URL {}: it has no path", self.url))
            })?;
            segments
                .pop_if_empty()
                .extend(["api", "v1", "users", user])
                .extend(tail);
        }
        Ok(url)
    }

    /// One GET: the body of a 200, the headers kept for paging.
    async fn get(
        &self,
        user: &str,
        url: reqwest::Url,
    ) -> Result<(reqwest::header::HeaderMap, bytes::Bytes), UserKeysError> {
        let shown = url.to_string();
        let response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                UserKeysError::Forge(format!("GET {shown}: no answer: {}", describe(&e)))
            })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_limited(response)
            .await
            .map_err(|e| UserKeysError::Forge(format!("GET {shown}: {e}")))?;
        if status == reqwest::StatusCode::OK {
            return Ok((headers, body));
        }
        if status == reqwest::StatusCode::NOT_FOUND || status.is_redirection() {
            // 404: no such name (or not visible anonymously); 3xx: the
            // name was renamed away, so no account has it now.
            return Err(UserKeysError::NoSuchUser {
                user: user.to_string(),
            });
        }
        let message = api_message(&body);
        let hint = if matches!(status.as_u16(), 401 | 403) {
            " (the instance does not show users to anonymous callers)"
        } else {
            ""
        };
        Err(UserKeysError::Forge(format!(
            "GET {shown}: HTTP {}{}{hint}",
            status.as_u16(),
            message.map(|m| format!(": {m}")).unwrap_or_default()
        )))
    }
}

#[async_trait::async_trait]
impl UserKeys for ForgejoUserKeys {
    async fn public_keys(
        &self,
        user: &str,
        user_id: Option<&str>,
    ) -> Result<Vec<String>, UserKeysError> {
        check_user_name(user)?;
        // An empty id (a task without one) means no id to check.
        if let Some(expected) = user_id.map(str::trim).filter(|s| !s.is_empty()) {
            let url = self.endpoint(user, &[])?;
            let (_, body) = self.get(user, url).await?;
            let found: ApiUser = serde_json::from_slice(&body).map_err(|e| {
                UserKeysError::Forge(format!("the user {user} cannot be read: {e}"))
            })?;
            if found.id.to_string() != expected {
                return Err(UserKeysError::Renamed {
                    user: user.to_string(),
                    expected: expected.to_string(),
                    found: found.id.to_string(),
                });
            }
        }
        let mut keys = Vec::new();
        let mut listed = 0usize;
        for page in 1..=MAX_PAGES {
            let mut url = self.endpoint(user, &["keys"])?;
            url.query_pairs_mut()
                .append_pair("page", &page.to_string())
                .append_pair("limit", &PAGE_LIMIT.to_string());
            let (headers, body) = self.get(user, url).await?;
            let batch: Vec<ApiKey> = serde_json::from_slice(&body).map_err(|e| {
                UserKeysError::Forge(format!("the keys of {user} cannot be read: {e}"))
            })?;
            let total = headers
                .get("x-total-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<usize>().ok());
            let got = batch.len();
            listed += got;
            keys.extend(
                batch
                    .into_iter()
                    .map(|k| k.key.trim().to_string())
                    .filter(|k| !k.is_empty()),
            );
            // The instance may cap `limit` below ours: with the total
            // known, read until it is reached; without, until a page is empty.
            let done = match total {
                Some(t) => listed >= t || got == 0,
                None => got == 0,
            };
            if done {
                break;
            }
        }
        Ok(keys)
    }

    fn forge_url(&self) -> &str {
        &self.url
    }
}

/// Refuses what cannot be a Forgejo or Gitea user name (letters, digits,
/// `-`, `_`, `.`, starting with a letter or digit, no `..`), so that no
/// name reaches a URL path it could change.
pub fn check_user_name(user: &str) -> Result<(), UserKeysError> {
    let valid = !user.is_empty()
        && user.len() <= MAX_NAME_LEN
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && user
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && !user.contains("..");
    if valid {
        Ok(())
    } else {
        Err(UserKeysError::Forge(format!(
            "{user:?} is not a user name Forgejo or Gitea accepts; no keys were asked for"
        )))
    }
}

/// The `message` of the API's JSON error, when there is one.
fn api_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let m = v.get("message")?.as_str()?.trim();
    let mut m = m.to_string();
    if m.len() > 300 {
        let mut end = 300;
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        m.truncate(end);
        m.push('…');
    }
    (!m.is_empty()).then_some(m)
}

/// The body, at most [`MAX_BODY_BYTES`].
async fn read_limited(mut response: reqwest::Response) -> Result<bytes::Bytes, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("the answer broke off: {}", describe(&e)))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!("the answer is larger than {MAX_BODY_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_that_could_change_the_path_are_refused() {
        for ok in ["alice", "a", "Bob-1", "x_y.z", "a.b-c_d"] {
            assert!(check_user_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "..",
            ".",
            "a..b",
            "a b",
            "-a",
            ".a",
            "a?b",
            "a#b",
            "a%2fb",
            "dependabot[bot]",
            "ünï",
            &"x".repeat(41),
        ] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn endpoints_keep_sub_paths_and_escape_nothing_unexpected() {
        let k = ForgejoUserKeys::new("https://host/forgejo/", "t").unwrap();
        assert_eq!(k.forge_url(), "https://host/forgejo");
        assert_eq!(
            k.endpoint("alice", &["keys"]).unwrap().as_str(),
            "https://host/forgejo/api/v1/users/alice/keys"
        );
        let k = ForgejoUserKeys::new("http://127.0.0.1:3000", "t").unwrap();
        assert_eq!(
            k.endpoint("a.b", &[]).unwrap().as_str(),
            "http://127.0.0.1:3000/api/v1/users/a.b"
        );
    }

    #[test]
    fn api_errors_show_their_message() {
        assert_eq!(
            api_message(br#"{"message":"user redirect does not exist [name: x]","url":"u"}"#)
                .as_deref(),
            Some("user redirect does not exist [name: x]")
        );
        assert_eq!(api_message(b"<html>"), None);
    }
}

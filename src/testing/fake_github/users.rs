//! The fake GitHub's users and their public SSH keys (REST "Get a user"
//! and "List public keys for a user", both public):
//!
//! - `GET /api/v3/users/{username}`: `{"login", "id", "type": "User", …}`.
//! - `GET /api/v3/users/{username}/keys`: `[{"id", "key"}]`, the key as
//!   `type base64` (GitHub drops the comment), paged by `per_page`
//!   (default 30, at most 100) and `page`, with a `Link` header while more
//!   pages follow.
//!
//! Logins match case-insensitively. Unknown ones are 404
//! `{"message":"Not Found","documentation_url":…,"status":"404"}`.
//! Anonymous calls count against GitHub's 60 an hour: the 61st gets 403
//! "API rate limit exceeded" with `x-ratelimit-remaining: 0`
//! ([`Users::anonymous_limit`]). A call with an `Authorization` header is
//! answered but recorded as a violation: Solstice's lookups are anonymous.

use std::collections::BTreeMap;

use axum::http::Method;
use serde_json::{Value, json};

use super::state::Reply;

/// GitHub's default page size.
const DEFAULT_PER_PAGE: usize = 30;
/// GitHub's largest page.
const MAX_PER_PAGE: usize = 100;

#[derive(Debug, Clone)]
struct User {
    login: String,
    id: u64,
    keys: Vec<String>,
}

/// Every user by lower-case login, and the anonymous rate limit.
#[derive(Debug)]
pub(crate) struct Users {
    users: BTreeMap<String, User>,
    /// Anonymous calls allowed (GitHub: 60 an hour per address).
    pub anonymous_limit: u32,
    anonymous_used: u32,
}

impl Default for Users {
    fn default() -> Self {
        Users {
            users: BTreeMap::new(),
            anonymous_limit: 60,
            anonymous_used: 0,
        }
    }
}

impl Users {
    /// Registers (or replaces) a user with these OpenSSH key lines.
    pub(crate) fn add(&mut self, login: &str, id: u64, keys: &[&str]) {
        self.users.insert(
            login.to_ascii_lowercase(),
            User {
                login: login.to_string(),
                id,
                keys: keys
                    .iter()
                    .map(|k| k.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                    .collect(),
            },
        );
    }

    /// Removes a user (its login becomes unknown).
    pub(crate) fn remove(&mut self, login: &str) -> bool {
        self.users.remove(&login.to_ascii_lowercase()).is_some()
    }

    /// Answers `users/{login}` and `users/{login}/keys` (`segs` are the
    /// path segments after `/api/v3/`); `None` for other paths. The second
    /// value is a violation to record.
    pub(crate) fn handle(
        &mut self,
        method: &Method,
        segs: &[&str],
        query: &str,
        auth: Option<&str>,
        base: &str,
    ) -> Option<(Reply, Option<String>)> {
        let (login, keys) = match segs {
            ["users", login] => (*login, false),
            ["users", login, "keys"] => (*login, true),
            _ => return None,
        };
        let violation = auth.map(|_| {
            format!("users/{login} was asked with an Authorization header; the lookup is anonymous")
        });
        if method != Method::GET {
            return Some((not_found(keys), violation));
        }
        if auth.is_none() {
            if self.anonymous_used >= self.anonymous_limit {
                let mut r = Reply::json(
                    403,
                    json!({
                        "message": "API rate limit exceeded for 127.0.0.1. (But here's the good news: Authenticated requests get a higher rate limit. Check out the documentation for more details.)",
                        "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting",
                    }),
                );
                r.headers.extend(rate_headers(self.anonymous_limit, 0));
                return Some((r, violation));
            }
            self.anonymous_used += 1;
        }
        let remaining = self.anonymous_limit.saturating_sub(self.anonymous_used);
        let Some(user) = self.users.get(&login.to_ascii_lowercase()).cloned() else {
            let mut r = not_found(keys);
            r.headers
                .extend(rate_headers(self.anonymous_limit, remaining));
            return Some((r, violation));
        };
        let mut reply = if keys {
            let (page, per_page) = paging(query);
            let items: Vec<Value> = user
                .keys
                .iter()
                .enumerate()
                .skip((page - 1).saturating_mul(per_page))
                .take(per_page)
                .map(|(i, k)| json!({"id": user.id * 1000 + i as u64 + 1, "key": k}))
                .collect();
            let mut r = Reply::json(200, Value::Array(items));
            if page.saturating_mul(per_page) < user.keys.len() {
                r.headers.push((
                    "link".into(),
                    format!(
                        "<{base}/api/v3/users/{}/keys?per_page={per_page}&page={}>; rel=\"next\"",
                        user.login,
                        page + 1
                    ),
                ));
            }
            r
        } else {
            Reply::json(200, user_json(&user, base))
        };
        reply
            .headers
            .extend(rate_headers(self.anonymous_limit, remaining));
        Some((reply, violation))
    }
}

fn not_found(keys: bool) -> Reply {
    let doc = if keys {
        "https://docs.github.com/rest/users/keys#list-public-keys-for-a-user"
    } else {
        "https://docs.github.com/rest/users/users#get-a-user"
    };
    Reply::json(
        404,
        json!({"message": "Not Found", "documentation_url": doc, "status": "404"}),
    )
}

fn rate_headers(limit: u32, remaining: u32) -> Vec<(String, String)> {
    vec![
        ("x-ratelimit-limit".into(), limit.to_string()),
        ("x-ratelimit-remaining".into(), remaining.to_string()),
        ("x-ratelimit-resource".into(), "core".into()),
    ]
}

/// `page` and `per_page` as GitHub reads them.
fn paging(query: &str) -> (usize, usize) {
    let mut page = 1usize;
    let mut per_page = DEFAULT_PER_PAGE;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let n = v.parse::<usize>().unwrap_or(0);
        match k.as_ref() {
            "page" if n > 0 => page = n,
            "per_page" if n > 0 => per_page = n.min(MAX_PER_PAGE),
            _ => {}
        }
    }
    (page, per_page)
}

fn user_json(user: &User, base: &str) -> Value {
    let login = &user.login;
    json!({
        "login": login,
        "id": user.id,
        "node_id": format!("U_fake{}", user.id),
        "avatar_url": format!("{base}/avatars/u/{}", user.id),
        "gravatar_id": "",
        "url": format!("{base}/api/v3/users/{login}"),
        "html_url": format!("{base}/{login}"),
        "type": "User",
        "user_view_type": "public",
        "site_admin": false,
        "name": null,
        "company": null,
        "blog": "",
        "location": null,
        "email": null,
        "hireable": null,
        "bio": null,
        "twitter_username": null,
        "public_repos": 0,
        "public_gists": 0,
        "followers": 0,
        "following": 0,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_follows_githubs_defaults_and_caps() {
        assert_eq!(paging(""), (1, 30));
        assert_eq!(paging("per_page=500&page=3"), (3, 100));
    }

    #[test]
    fn comments_are_dropped_and_the_rate_limit_applies() {
        let mut u = Users {
            anonymous_limit: 2,
            ..Users::default()
        };
        u.add("Octo", 7, &["ssh-ed25519 AAAA me@laptop"]);
        let (r, v) = u
            .handle(
                &Method::GET,
                &["users", "octo", "keys"],
                "",
                None,
                "http://x",
            )
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(v.is_none());
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body, json!([{"id": 7001, "key": "ssh-ed25519 AAAA"}]));
        let (r, _) = u
            .handle(&Method::GET, &["users", "nobody"], "", None, "http://x")
            .unwrap();
        assert_eq!(r.status, 404);
        let (r, _) = u
            .handle(&Method::GET, &["users", "octo"], "", None, "http://x")
            .unwrap();
        assert_eq!(r.status, 403);
    }
}

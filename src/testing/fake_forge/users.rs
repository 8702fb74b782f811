//! The fake forge's users and their public SSH keys: the two anonymous API
//! routes debug SSH reads, as Forgejo answers them.
//!
//! - `GET /api/v1/users/{username}`: the user (`id`, `login`, …).
//! - `GET /api/v1/users/{username}/keys`: a JSON array of `PublicKey`
//!   objects (`id`, `key`, `url`, `title`, `fingerprint`, `created_at`),
//!   paged by `page` (from 1) and `limit` (default 30, at most 50, as
//!   Forgejo's `DEFAULT_PAGING_NUM` and `MAX_RESPONSE_ITEMS`), with
//!   `X-Total-Count`.
//!
//! Names match case-insensitively. An unknown name is 404
//! `{"message":"user redirect does not exist [name: <lower name>]","url":"<instance>/api/swagger"}`;
//! a name renamed away ([`Users::rename`]) is 307 to the new name's path
//! (query kept), as Forgejo's user assignment answers. Other methods get
//! 405. A request carrying the runner's credentials (`x-runner-token`) or an
//! `Authorization` header is answered normally but recorded as a
//! violation: these lookups are anonymous, and the runner's token must
//! never go to them.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

/// Forgejo's `DEFAULT_PAGING_NUM`.
const DEFAULT_LIMIT: usize = 30;
/// Forgejo's `MAX_RESPONSE_ITEMS`.
const MAX_LIMIT: usize = 50;

/// A user registered with the fake.
#[derive(Debug, Clone)]
struct User {
    name: String,
    id: i64,
    keys: Vec<String>,
}

/// Every user, by lower-case name, and names renamed away.
#[derive(Debug, Default)]
pub(crate) struct Users {
    users: BTreeMap<String, User>,
    /// Old lower-case name → the user id it now redirects to.
    redirects: BTreeMap<String, i64>,
}

/// An answer of the user routes.
pub(crate) struct Answer {
    /// The name recorded for the call (`GetUser`, `ListUserKeys`).
    pub name: &'static str,
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// A mistake of the client, for the violations list.
    pub violation: Option<String>,
}

impl Users {
    /// Registers (or replaces) a user with these OpenSSH key lines.
    pub(crate) fn add(&mut self, name: &str, id: i64, keys: &[&str]) {
        let lower = name.to_ascii_lowercase();
        self.redirects.remove(&lower);
        self.users.insert(
            lower,
            User {
                name: name.to_string(),
                id,
                keys: keys.iter().map(|k| k.to_string()).collect(),
            },
        );
    }

    /// Removes a user; the name becomes unknown (404).
    pub(crate) fn remove(&mut self, name: &str) -> bool {
        self.users.remove(&name.to_ascii_lowercase()).is_some()
    }

    /// The user renames `old` to `new`: `old` then redirects (307) to the
    /// new name, as Forgejo keeps a redirect for a renamed user. False if
    /// there is no user `old`.
    pub(crate) fn rename(&mut self, old: &str, new: &str) -> bool {
        let Some(mut user) = self.users.remove(&old.to_ascii_lowercase()) else {
            return false;
        };
        user.name = new.to_string();
        self.redirects.insert(old.to_ascii_lowercase(), user.id);
        self.users.insert(new.to_ascii_lowercase(), user);
        true
    }

    /// Answers `/api/v1/users/…` routes; `None` for any other path.
    pub(crate) fn handle(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        server_url: &str,
    ) -> Option<Answer> {
        let rest = path.strip_prefix("/api/v1/users/")?;
        let (raw_name, keys) = match rest.split_once('/') {
            None => (rest, false),
            Some((n, "keys")) => (n, true),
            Some(_) => return None,
        };
        let name = percent_decode(raw_name)?;
        let call = if keys { "ListUserKeys" } else { "GetUser" };
        let violation = (headers.contains_key("x-runner-token")
            || headers.contains_key("authorization"))
        .then(|| format!("{call} for {name} carried credentials; the lookup is anonymous"));
        let answer = |status, headers, body: String| Answer {
            name: call,
            status,
            headers,
            body,
            violation: violation.clone(),
        };
        if method != Method::GET && method != Method::HEAD {
            return Some(answer(
                StatusCode::METHOD_NOT_ALLOWED,
                vec![],
                String::new(),
            ));
        }
        let lower = name.to_ascii_lowercase();
        let Some(user) = self.users.get(&lower).cloned() else {
            if let Some(id) = self.redirects.get(&lower)
                && let Some(to) = self.users.values().find(|u| u.id == *id)
            {
                let mut location = path.replacen(raw_name, &to.name, 1);
                if let Some(q) = query {
                    location.push('?');
                    location.push_str(q);
                }
                return Some(answer(
                    StatusCode::TEMPORARY_REDIRECT,
                    vec![("location", location)],
                    String::new(),
                ));
            }
            let body = json!({
                "message": format!("user redirect does not exist [name: {lower}]"),
                "url": format!("{server_url}api/swagger"),
            });
            return Some(answer(
                StatusCode::NOT_FOUND,
                json_headers(),
                body.to_string(),
            ));
        };
        if !keys {
            let body = user_json(&user, server_url);
            return Some(answer(StatusCode::OK, json_headers(), body.to_string()));
        }
        let (page, limit) = paging(query);
        let total = user.keys.len();
        // Each user's keys get a block of ids of their own.
        let base_id = user.id * 1000 + 1;
        let items: Vec<Value> = user
            .keys
            .iter()
            .enumerate()
            .skip((page - 1).saturating_mul(limit))
            .take(limit)
            .map(|(i, k)| key_json(base_id + i as i64, k, server_url))
            .collect();
        let mut headers = json_headers();
        headers.push(("x-total-count", total.to_string()));
        headers.push((
            "access-control-expose-headers",
            "X-Total-Count, Link".to_string(),
        ));
        Some(answer(
            StatusCode::OK,
            headers,
            Value::Array(items).to_string(),
        ))
    }
}

fn json_headers() -> Vec<(&'static str, String)> {
    vec![("content-type", "application/json;charset=utf-8".to_string())]
}

/// `page` and `limit` as Forgejo's `GetListOptions` reads them.
fn paging(query: Option<&str>) -> (usize, usize) {
    let mut page = 1usize;
    let mut limit = DEFAULT_LIMIT;
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n = v.parse::<i64>().unwrap_or(0);
        match k {
            "page" if n > 0 => page = n as usize,
            "limit" if n > 0 => limit = (n as usize).min(MAX_LIMIT),
            _ => {}
        }
    }
    (page, limit)
}

/// `%XX` decoding of a path segment; `None` when it is not valid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A `PublicKey` as an anonymous caller sees it.
fn key_json(id: i64, key: &str, server_url: &str) -> Value {
    json!({
        "id": id,
        "key": key,
        "url": format!("{server_url}api/v1/user/keys/{id}"),
        "title": format!("key-{id}"),
        "fingerprint": fingerprint(key),
        "created_at": "2026-01-01T00:00:00Z",
    })
}

/// The `SHA256:` fingerprint of a key line (empty when it cannot be read).
fn fingerprint(key: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let Some(blob) = key.split_whitespace().nth(1) else {
        return String::new();
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(blob) else {
        return String::new();
    };
    let digest = sha2::Sha256::digest(&raw);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// A user as an anonymous caller sees it (the e-mail hidden).
fn user_json(user: &User, server_url: &str) -> Value {
    json!({
        "id": user.id,
        "login": user.name,
        "login_name": "",
        "source_id": 0,
        "full_name": "",
        "email": "",
        "avatar_url": format!("{server_url}avatars/{}", user.id),
        "html_url": format!("{server_url}{}", user.name),
        "language": "",
        "is_admin": false,
        "last_login": "0001-01-01T00:00:00Z",
        "created": "2026-01-01T00:00:00Z",
        "restricted": false,
        "active": false,
        "prohibit_login": false,
        "location": "",
        "pronouns": "",
        "website": "",
        "description": "",
        "visibility": "public",
        "followers_count": 0,
        "following_count": 0,
        "starred_repos_count": 0,
        "username": user.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_follows_forgejos_defaults_and_caps() {
        assert_eq!(paging(None), (1, 30));
        assert_eq!(paging(Some("page=2&limit=500")), (2, 50));
        assert_eq!(paging(Some("page=0&limit=-1")), (1, 30));
    }

    #[test]
    fn names_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("alice").as_deref(), Some("alice"));
    }
}

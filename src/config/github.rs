//! The GitHub side of `[forges.<name>]` (`kind = "github"`): the URL and
//! the scope it names, the credentials, the API base, the runner group and
//! the advertised version; and the keys that belong to the other kind.

use std::path::PathBuf;

use toml::Spanned;

use super::error::ErrorKind;
use super::raw::{self, Limit, RawForge};
use super::validate::Ctx;
use super::{CredentialSource, ForgeKind, GithubForge, GithubScope};

/// Keys only Forgejo forges take, with why GitHub does not and what to use.
const FORGEJO_ONLY: [&str; 4] = [
    "registration_token_file",
    "secret_file",
    "runner_file",
    "fetch_timeout_secs",
];

/// Keys only GitHub forges take.
const GITHUB_ONLY: [&str; 7] = [
    "app_id",
    "installation_id",
    "private_key_file",
    "token_file",
    "runner_group_id",
    "api_url",
    "runner_version",
];

/// The spans of the keys of a section that are set, by key name.
fn set_keys(f: &RawForge) -> Vec<(&'static str, std::ops::Range<usize>)> {
    let path = |v: &Option<Spanned<PathBuf>>| v.as_ref().map(Spanned::span);
    let int = |v: &Option<Spanned<i64>>| v.as_ref().map(Spanned::span);
    let text = |v: &Option<Spanned<String>>| v.as_ref().map(Spanned::span);
    [
        ("registration_token_file", path(&f.registration_token_file)),
        ("secret_file", path(&f.secret_file)),
        ("runner_file", path(&f.runner_file)),
        ("fetch_timeout_secs", int(&f.fetch_timeout_secs)),
        ("app_id", int(&f.app_id)),
        ("installation_id", int(&f.installation_id)),
        ("private_key_file", path(&f.private_key_file)),
        ("token_file", path(&f.token_file)),
        ("runner_group_id", int(&f.runner_group_id)),
        ("api_url", text(&f.api_url)),
        ("runner_version", text(&f.runner_version)),
    ]
    .into_iter()
    .filter_map(|(k, s)| s.map(|s| (k, s)))
    .collect()
}

/// Records an error for each key of `f` that belongs to the other kind.
pub(crate) fn other_kind_keys(
    n: &str,
    f: &RawForge,
    kind: ForgeKind,
    kind_written: bool,
    ctx: &mut Ctx<'_>,
) {
    for (k, span) in set_keys(f) {
        let (message, fix) = match kind {
            ForgeKind::Github if FORGEJO_ONLY.contains(&k) => {
                if k == "fetch_timeout_secs" {
                    (
                        "`fetch_timeout_secs` is for Forgejo and Gitea; a GitHub runner long-polls GitHub's broker, which sets its own deadline".to_owned(),
                        "remove it (`fetch_interval_secs` sets the pause between checks for free slots)".to_owned(),
                    )
                } else {
                    (
                        format!(
                            "`{k}` is for Forgejo and Gitea; Solstice registers GitHub runners itself, one just-in-time runner per free slot, with a GitHub App or a token"
                        ),
                        "remove it and set `app_id`, `installation_id` and `private_key_file` (a GitHub App) or `token_file` (docs/github.md)".to_owned(),
                    )
                }
            }
            ForgeKind::Forgejo if GITHUB_ONLY.contains(&k) => {
                let fix = if kind_written {
                    format!(
                        "remove it, or write `kind = \"github\"` if this forge is GitHub{}",
                        credentials_hint(k)
                    )
                } else {
                    format!(
                        "add `kind = \"github\"` if this forge is GitHub (the default kind is \"forgejo\"), or remove it{}",
                        credentials_hint(k)
                    )
                };
                (format!("`{k}` is for GitHub forges only"), fix)
            }
            _ => continue,
        };
        ctx.push(
            Some(span),
            Some(format!("forges.{n}.{k}")),
            ErrorKind::InvalidValue,
            message,
            Some(fix),
        );
    }
}

/// For a credential key under Forgejo: what Forgejo takes instead.
fn credentials_hint(k: &str) -> &'static str {
    if matches!(
        k,
        "app_id" | "installation_id" | "private_key_file" | "token_file"
    ) {
        "; Forgejo and Gitea take `registration_token_file`, `secret_file` or `runner_file`"
    } else {
        ""
    }
}

/// A URL split into its parts, as far as a forge URL needs them.
pub(crate) struct UrlParts<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `host` or `host:port` (IPv6 in brackets).
    pub authority: &'a str,
    /// The host alone, lower-case, without brackets.
    pub host: String,
    /// The path's non-empty segments.
    pub segments: Vec<&'a str>,
}

/// Splits `http(s)://authority/path`; `Err` says what is wrong.
pub(crate) fn split_url(text: &str) -> Result<UrlParts<'_>, String> {
    let (scheme, rest) = text
        .split_once("://")
        .filter(|(s, _)| s.eq_ignore_ascii_case("https") || s.eq_ignore_ascii_case("http"))
        .ok_or_else(|| format!("\"{text}\" is not an http:// or https:// URL"))?;
    if text.contains(char::is_whitespace) {
        return Err(format!("\"{text}\" has spaces in it"));
    }
    if rest.contains(['?', '#']) {
        return Err(format!("\"{text}\" has a query or fragment"));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() {
        return Err(format!("\"{text}\" has no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "\"{text}\" has a user name in it; credentials go in files, never in the URL"
        ));
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']').map_or(v6, |(h, _)| h)
    } else {
        authority.split_once(':').map_or(authority, |(h, _)| h)
    };
    if host.is_empty() {
        return Err(format!("\"{text}\" has no host"));
    }
    Ok(UrlParts {
        scheme,
        authority,
        host: host.to_ascii_lowercase(),
        segments: path.split('/').filter(|s| !s.is_empty()).collect(),
    })
}

/// Whether plain `http` is acceptable for this host: only on loopback,
/// where tests and lab servers run.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// Whether `host` is GitHub's own service (github.com or a GHE.com data
/// residency tenant), where Forgejo cannot be.
pub(crate) fn is_github_host(host: &str) -> bool {
    host == "github.com" || host == "www.github.com" || host.ends_with(".ghe.com")
}

/// `[A-Za-z0-9._-]+`: a GitHub account, repository or enterprise name.
fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The GitHub URL of a section: the URL without a trailing `/`, and the
/// scope it names. `None` after recording an error.
pub(crate) fn github_url(
    u: &Spanned<String>,
    key: &str,
    ctx: &mut Ctx<'_>,
) -> Option<(String, GithubScope)> {
    let text = u.get_ref().trim();
    const FORMS: &str = "write the repository, organisation or enterprise the runners serve: \"https://github.com/<owner>/<repo>\", \"https://github.com/<org>\" or \"https://github.com/enterprises/<enterprise>\"";
    let mut fail = |message: String, fix: String| {
        ctx.push(
            Some(u.span()),
            Some(key.to_owned()),
            ErrorKind::InvalidValue,
            message,
            Some(fix),
        );
        None
    };
    let parts = match split_url(text) {
        Ok(p) => p,
        Err(message) => return fail(message, FORMS.to_owned()),
    };
    if parts.scheme.eq_ignore_ascii_case("http") && !is_loopback_host(&parts.host) {
        return fail(
            format!(
                "\"{text}\" is plain http on a host that is not loopback, so tokens would cross the network in clear"
            ),
            "use https:// (http:// is accepted only for localhost, 127.0.0.1 and [::1])".to_owned(),
        );
    }
    if let Some(bad) = parts.segments.iter().find(|s| !valid_segment(s)) {
        return fail(
            format!(
                "\"{bad}\" in \"{text}\" is not a GitHub account, repository or enterprise name"
            ),
            FORMS.to_owned(),
        );
    }
    let scope = match parts.segments.as_slice() {
        ["enterprises", e] => GithubScope::Enterprise((*e).to_owned()),
        ["orgs", org] | ["organizations", org] => {
            return fail(
                format!(
                    "\"{text}\" is the address of an organisation's page, not of the organisation"
                ),
                format!(
                    "write \"{}://{}/{org}\" for the organisation's runners",
                    parts.scheme, parts.authority
                ),
            );
        }
        [owner, repo] if repo.ends_with(".git") => {
            return fail(
                format!("\"{text}\" is a clone URL"),
                format!(
                    "write the repository's page: \"{}://{}/{owner}/{}\"",
                    parts.scheme,
                    parts.authority,
                    repo.trim_end_matches(".git")
                ),
            );
        }
        [owner, repo] => GithubScope::Repository {
            owner: (*owner).to_owned(),
            repo: (*repo).to_owned(),
        },
        [org] if *org != "enterprises" => GithubScope::Organization((*org).to_owned()),
        [] => {
            return fail(
                format!("\"{text}\" names no repository, organisation or enterprise"),
                FORMS.to_owned(),
            );
        }
        [owner, repo, ..] => {
            return fail(
                format!("\"{text}\" is a page inside a repository"),
                format!(
                    "write the repository alone: \"{}://{}/{owner}/{repo}\"",
                    parts.scheme, parts.authority
                ),
            );
        }
        [_] => {
            return fail(format!("\"{text}\" names no enterprise"), FORMS.to_owned());
        }
    };
    Some((text.trim_end_matches('/').to_owned(), scope))
}

/// The REST API base for a GitHub URL when `api_url` is not given.
pub(crate) fn default_api_url(url: &str) -> String {
    let Ok(parts) = split_url(url) else {
        return String::new();
    };
    let scheme = parts.scheme.to_ascii_lowercase();
    if parts.host == "github.com" || parts.host == "www.github.com" {
        "https://api.github.com".to_owned()
    } else if parts.host.ends_with(".ghe.com") || parts.host == "github.localhost" {
        format!("{scheme}://api.{}", parts.authority.to_ascii_lowercase())
    } else {
        format!("{scheme}://{}/api/v3", parts.authority)
    }
}

/// `api_url` as given: an `https://` URL (http on loopback) without a
/// trailing `/`, query or user name.
fn api_url(u: &Spanned<String>, key: &str, ctx: &mut Ctx<'_>) -> String {
    let text = u.get_ref().trim();
    let problem = match split_url(text) {
        Err(m) => Some(m),
        Ok(p) if p.scheme.eq_ignore_ascii_case("http") && !is_loopback_host(&p.host) => {
            Some(format!(
                "\"{text}\" is plain http on a host that is not loopback, so tokens would cross the network in clear"
            ))
        }
        Ok(_) => None,
    };
    match problem {
        None => text.trim_end_matches('/').to_owned(),
        Some(message) => {
            ctx.push(
                Some(u.span()),
                Some(key.to_owned()),
                ErrorKind::InvalidValue,
                message,
                Some("write the REST API base, e.g. \"https://api.github.com\" or \"https://ghes.example.org/api/v3\" (http:// only for localhost, 127.0.0.1 and [::1]), or remove the key to derive it from `url`".to_owned()),
            );
            String::new()
        }
    }
}

/// A positive id within `limit`, or `default`. Out of range is recorded.
fn id(
    value: Option<&Spanned<i64>>,
    default: i64,
    limit: Limit,
    key: &str,
    ctx: &mut Ctx<'_>,
) -> u64 {
    let Some(v) = value else {
        return default.unsigned_abs();
    };
    let n = *v.get_ref();
    if (limit.min..=limit.max).contains(&n) {
        return n.unsigned_abs();
    }
    ctx.push(
        Some(v.span()),
        Some(key.to_owned()),
        ErrorKind::OutOfRange,
        format!("{n} is too small"),
        Some(format!(
            "use a positive whole number ({}), as GitHub shows it",
            limit.unit
        )),
    );
    0
}

/// `N.N.N`, each part digits.
pub(crate) fn valid_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.chars().all(|c| c.is_ascii_digit()))
}

fn runner_version(v: Option<&Spanned<String>>, key: &str, ctx: &mut Ctx<'_>) -> String {
    let Some(v) = v else {
        return raw::DEFAULT_RUNNER_VERSION.to_owned();
    };
    let text = v.get_ref().trim();
    if !valid_version(text) {
        ctx.push(
            Some(v.span()),
            Some(key.to_owned()),
            ErrorKind::InvalidValue,
            format!("\"{}\" is not a runner version", v.get_ref()),
            Some(format!(
                "write three numbers, e.g. \"{}\" (the current release of actions/runner or later), or remove the key for the default",
                raw::DEFAULT_RUNNER_VERSION
            )),
        );
    }
    text.to_owned()
}

/// The GitHub credentials: an App (all three keys) or a token file.
pub(crate) fn credentials(
    n: &str,
    section: &Spanned<RawForge>,
    ctx: &mut Ctx<'_>,
) -> CredentialSource {
    let f = section.get_ref();
    let key = |k: &str| format!("forges.{n}.{k}");
    let app_keys = [
        ("app_id", f.app_id.as_ref().map(Spanned::span)),
        (
            "installation_id",
            f.installation_id.as_ref().map(Spanned::span),
        ),
        (
            "private_key_file",
            f.private_key_file.as_ref().map(Spanned::span),
        ),
    ];
    let any_app = app_keys.iter().any(|(_, s)| s.is_some());
    let placeholder = CredentialSource::GithubToken(PathBuf::new());
    match (&f.token_file, any_app) {
        (Some(t), true) => {
            let first_app = app_keys
                .iter()
                .find_map(|(k, s)| s.as_ref().map(|_| *k))
                .unwrap_or("app_id");
            ctx.push(
                Some(t.span()),
                Some(key("token_file")),
                ErrorKind::InvalidValue,
                format!(
                    "only one credential source is allowed, found `token_file` and a GitHub App (`{first_app}`)"
                ),
                Some("keep the App keys (`app_id`, `installation_id`, `private_key_file`) or `token_file`, and remove the other".to_owned()),
            );
            placeholder
        }
        (Some(t), false) => {
            non_empty(t, &key("token_file"), ctx);
            CredentialSource::GithubToken(ctx.resolve(t.get_ref()))
        }
        (None, true) => {
            let missing: Vec<String> = app_keys
                .iter()
                .filter(|(_, s)| s.is_none())
                .map(|(k, _)| format!("`{k}`"))
                .collect();
            // A key written with the wrong type was reported and dropped.
            let dropped = app_keys.iter().any(|(k, s)| {
                s.is_none()
                    && ctx
                        .errors
                        .iter()
                        .any(|e| e.key.as_deref() == Some(key(k).as_str()))
            });
            if dropped {
                return placeholder;
            }
            if !missing.is_empty() {
                ctx.push(
                    Some(section.span()),
                    Some(format!("forges.{n}")),
                    ErrorKind::MissingKey,
                    format!(
                        "a GitHub App needs `app_id`, `installation_id` and `private_key_file`; {} {} missing",
                        missing.join(" and "),
                        if missing.len() == 1 { "is" } else { "are" }
                    ),
                    Some("add them (App settings → General shows the App ID and makes private keys; the installation id ends the installation's settings URL), or use `token_file` instead".to_owned()),
                );
                return placeholder;
            }
            let app_id = id(f.app_id.as_ref(), 0, raw::GITHUB_ID, &key("app_id"), ctx);
            let installation_id = id(
                f.installation_id.as_ref(),
                0,
                raw::GITHUB_ID,
                &key("installation_id"),
                ctx,
            );
            let private_key_file = match &f.private_key_file {
                Some(p) => {
                    non_empty(p, &key("private_key_file"), ctx);
                    ctx.resolve(p.get_ref())
                }
                None => PathBuf::new(),
            };
            CredentialSource::GithubApp {
                app_id,
                installation_id,
                private_key_file,
            }
        }
        (None, false) => {
            if ctx
                .errors
                .iter()
                .any(|e| e.key.as_deref() == Some(key("token_file").as_str()))
            {
                return placeholder;
            }
            ctx.push(
                Some(section.span()),
                Some(format!("forges.{n}")),
                ErrorKind::MissingKey,
                "the GitHub forge has no credentials".to_owned(),
                Some("set `app_id`, `installation_id` and `private_key_file` (a GitHub App, recommended) or `token_file` (a fine-grained token); see docs/github.md".to_owned()),
            );
            placeholder
        }
    }
}

fn non_empty(p: &Spanned<PathBuf>, key: &str, ctx: &mut Ctx<'_>) {
    if p.get_ref().as_os_str().is_empty() {
        ctx.push(
            Some(p.span()),
            Some(key.to_owned()),
            ErrorKind::InvalidValue,
            "the path is empty".to_owned(),
            Some("write the path of the file".to_owned()),
        );
    }
}

/// The rest of a GitHub section, once `url` gave the scope.
pub(crate) fn github_forge(
    n: &str,
    f: &RawForge,
    url: &str,
    scope: GithubScope,
    ctx: &mut Ctx<'_>,
) -> GithubForge {
    let key = |k: &str| format!("forges.{n}.{k}");
    GithubForge {
        scope,
        api_url: match &f.api_url {
            Some(u) => api_url(u, &key("api_url"), ctx),
            None => default_api_url(url),
        },
        runner_group_id: id(
            f.runner_group_id.as_ref(),
            raw::DEFAULT_RUNNER_GROUP_ID,
            raw::RUNNER_GROUP_ID,
            &key("runner_group_id"),
            ctx,
        ),
        runner_version: runner_version(f.runner_version.as_ref(), &key("runner_version"), ctx),
    }
}

/// Records an error when two GitHub sections register runners at the same
/// place (API and scope) with runner names where one is the start of the
/// other: each would take the other's runners for its own leftovers
/// (`<runner_name>-…`) and remove them.
pub(crate) fn runner_name_clashes(
    raw: &std::collections::BTreeMap<Spanned<String>, Spanned<RawForge>>,
    forges: &std::collections::BTreeMap<String, super::ForgeConfig>,
    ctx: &mut Ctx<'_>,
) {
    let github: Vec<(
        &Spanned<String>,
        &Spanned<RawForge>,
        &super::ForgeConfig,
        &GithubForge,
    )> = raw
        .iter()
        .filter_map(|(name, section)| {
            let f = forges.get(name.get_ref())?;
            Some((name, section, f, f.github.as_ref()?))
        })
        .collect();
    for (i, (_, _, a, ga)) in github.iter().enumerate() {
        for (name_b, section_b, b, gb) in &github[i + 1..] {
            if a.url.is_empty() || ga.api_url != gb.api_url || ga.scope != gb.scope {
                continue;
            }
            let (pa, pb) = (format!("{}-", a.runner_name), format!("{}-", b.runner_name));
            if !pa.starts_with(&pb) && !pb.starts_with(&pa) {
                continue;
            }
            let (span, key) = match &section_b.get_ref().runner_name {
                Some(r) => (r.span(), format!("forges.{}.runner_name", name_b.get_ref())),
                None => (name_b.span(), format!("forges.{}", name_b.get_ref())),
            };
            ctx.push(
                Some(span),
                Some(key),
                ErrorKind::InvalidValue,
                format!(
                    "forges.{} and forges.{} register runners at {} with the runner names \"{}\" and \"{}\"; each removes runners named `<runner_name>-…` as its own leftovers, so they would remove each other's runners",
                    a.name, b.name, a.url, a.runner_name, b.runner_name
                ),
                Some("give each section a `runner_name` that does not start another's followed by \"-\" (e.g. \"solstice-ci1-a\" and \"solstice-ci1-b\"), or merge the sections".to_owned()),
            );
        }
    }
}

/// GitHub refuses runner names longer than this.
pub(crate) const MAX_RUNNER_NAME: usize = 64;

/// Records an error when a GitHub section's runner names
/// (`<runner_name>-<image>-<8 hex digits>`) would be too long for GitHub
/// for one of its images: every registration would fail.
pub(crate) fn runner_name_lengths(
    raw: &std::collections::BTreeMap<Spanned<String>, Spanned<RawForge>>,
    forges: &std::collections::BTreeMap<String, super::ForgeConfig>,
    images: &std::collections::BTreeMap<String, super::ImageConfig>,
    ctx: &mut Ctx<'_>,
) {
    let Some(longest) = images.keys().max_by_key(|n| n.chars().count()) else {
        return;
    };
    for (name, section) in raw {
        let Some(f) = forges.get(name.get_ref()).filter(|f| f.github.is_some()) else {
            continue;
        };
        let length = f.runner_name.chars().count() + longest.chars().count() + 10;
        if length <= MAX_RUNNER_NAME {
            continue;
        }
        let (span, key) = match &section.get_ref().runner_name {
            Some(r) => (r.span(), format!("forges.{}.runner_name", name.get_ref())),
            None => (name.span(), format!("forges.{}", name.get_ref())),
        };
        ctx.push(
            Some(span),
            Some(key),
            ErrorKind::InvalidValue,
            format!(
                "the runner names of forges.{} would be {length} characters long (\"{}-{longest}-\" and 8 hex digits), and GitHub refuses names longer than {MAX_RUNNER_NAME}",
                name.get_ref(),
                f.runner_name
            ),
            Some(format!(
                "give forges.{} a shorter `runner_name` (at most {} characters with these images), or shorten the image name",
                name.get_ref(),
                MAX_RUNNER_NAME.saturating_sub(longest.chars().count() + 10)
            )),
        );
    }
}

//! `[debug_ssh]` (the host's gateway) and `[forges.<name>.debug_ssh]`
//! (which of a forge's failed jobs may keep their VM): defaults, ranges,
//! the address, host name, repository patterns and event names, and the
//! warnings about settings that work but probably not as meant.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use toml::Spanned;

use super::error::ErrorKind;
use super::raw::{self, RawDebugSsh, RawForgeDebugSsh};
use super::validate::{Ctx, number};
use super::{DebugSshConfig, ForgeDebugSsh};

/// Events the forges put in `github.event_name` (GitHub's names; Forgejo
/// and Gitea use the same). Others are a warning, not an error: a forge
/// may add events, and an entry that never matches only keeps fewer VMs.
pub(crate) const KNOWN_EVENTS: [&str; 34] = [
    "branch_protection_rule",
    "check_run",
    "check_suite",
    "create",
    "delete",
    "deployment",
    "deployment_status",
    "discussion",
    "discussion_comment",
    "fork",
    "gollum",
    "issue_comment",
    "issues",
    "label",
    "merge_group",
    "milestone",
    "page_build",
    "project",
    "project_card",
    "project_column",
    "public",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "pull_request_target",
    "push",
    "registry_package",
    "release",
    "repository_dispatch",
    "schedule",
    "status",
    "watch",
    "workflow_dispatch",
    "workflow_run",
];

/// What an example `listen` looks like, for fixes.
const LISTEN_EXAMPLE: &str = "\"0.0.0.0:2222\" (every IPv4 address) or \"[::]:2222\"";

/// `[debug_ssh]`, or `None` when the section is absent or `listen` is
/// missing or bad (reported).
pub(crate) fn host(
    raw: Option<&Spanned<RawDebugSsh>>,
    ctx: &mut Ctx<'_>,
) -> Option<DebugSshConfig> {
    let section = raw?;
    let d = section.get_ref();
    let listen = match &d.listen {
        Some(v) => listen(v, ctx),
        None => {
            ctx.push(
                Some(section.span()),
                Some("debug_ssh.listen".to_owned()),
                ErrorKind::MissingKey,
                "the debug SSH gateway has no `listen` address".to_owned(),
                Some("add `listen = \"0.0.0.0:2222\"` (or \"[::]:2222\" for IPv6 as well) to [debug_ssh], or remove the section to turn debug SSH off".to_owned()),
            );
            None
        }
    };
    let public_host = match &d.public_host {
        Some(h) => public_host(h, ctx),
        None => match super::validate::host_name() {
            Some(h) => h,
            None => {
                ctx.push(
                    Some(section.span()),
                    Some("debug_ssh.public_host".to_owned()),
                    ErrorKind::MissingKey,
                    "this host's name cannot be read, so the job log could not say where to connect".to_owned(),
                    Some("set `public_host` to the name users reach this host by, e.g. \"ci.example.org\"".to_owned()),
                );
                String::new()
            }
        },
    };
    let public_port = d.public_port.as_ref().map(|p| {
        u16::try_from(number(
            Some(p),
            0,
            raw::DEBUG_PUBLIC_PORT,
            "debug_ssh.public_port",
            ctx,
        ))
        .unwrap_or(0)
    });
    let ttl = ttl(
        d.ttl_secs.as_ref(),
        raw::DEBUG_TTL_SECS.max,
        "debug_ssh.ttl_secs",
        ctx,
    );
    let max_held = number(
        d.max_held.as_ref(),
        raw::DEFAULT_DEBUG_MAX_HELD,
        raw::DEBUG_MAX_HELD,
        "debug_ssh.max_held",
        ctx,
    );
    let idle = number(
        d.idle_timeout_secs.as_ref(),
        raw::DEFAULT_DEBUG_IDLE_TIMEOUT_SECS,
        raw::DEBUG_IDLE_TIMEOUT_SECS,
        "debug_ssh.idle_timeout_secs",
        ctx,
    );
    let listen = listen?;
    Some(DebugSshConfig {
        listen,
        public_host,
        public_port: public_port.unwrap_or(listen.port()),
        ttl,
        max_held,
        idle_timeout: Duration::from_secs(u64::from(idle)),
    })
}

/// `host:port` with a port other than 0. Unlike `metrics_listen`, a bare
/// port is refused: users connect from elsewhere, so the address is
/// written out.
fn listen(v: &Spanned<String>, ctx: &mut Ctx<'_>) -> Option<SocketAddr> {
    let text = v.get_ref().trim();
    let (message, fix) = match text.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => return Some(a),
        Ok(_) => (
            format!(
                "\"{text}\" has port 0, which picks a different port at each start, so the job log could not name it"
            ),
            format!("write a fixed port, e.g. {LISTEN_EXAMPLE}"),
        ),
        Err(_) if text.parse::<u16>().is_ok() => (
            format!("\"{text}\" is a port without an address"),
            format!(
                "write the address to listen on as well, e.g. \"0.0.0.0:{text}\" (every IPv4 address) or \"[::]:{text}\""
            ),
        ),
        Err(_) => (
            format!("\"{text}\" is not an IP address with a port"),
            format!("write e.g. {LISTEN_EXAMPLE}; host names are not resolved here"),
        ),
    };
    ctx.push(
        Some(v.span()),
        Some("debug_ssh.listen".to_owned()),
        ErrorKind::InvalidValue,
        message,
        Some(fix),
    );
    None
}

/// A DNS name or an IP address, as it goes after `debug@` in the printed
/// command.
fn public_host(v: &Spanned<String>, ctx: &mut Ctx<'_>) -> String {
    let raw = v.get_ref();
    let text = raw.trim();
    let bracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .filter(|t| t.parse::<IpAddr>().is_ok());
    let problem = if text.is_empty() {
        Some((
            "the public host is empty, so the job log could not say where to connect".to_owned(),
            "write the name users reach this host by, e.g. \"ci.example.org\", or remove the key to use this host's name".to_owned(),
        ))
    } else if let Some(inner) = bracketed {
        Some((
            format!("\"{text}\" has brackets, which ssh does not take after `debug@`"),
            format!("write \"{inner}\""),
        ))
    } else if text != raw {
        Some((
            format!("\"{raw}\" has spaces around it"),
            format!("write \"{text}\""),
        ))
    } else if text.parse::<IpAddr>().is_err() && !dns_name(text) {
        Some((
            format!("\"{text}\" is not a host name or an IP address"),
            "write a name such as \"ci.example.org\" or an address, with no user, port or scheme (the port is `public_port`)".to_owned(),
        ))
    } else {
        None
    };
    if let Some((message, fix)) = problem {
        ctx.push(
            Some(v.span()),
            Some("debug_ssh.public_host".to_owned()),
            ErrorKind::InvalidValue,
            message,
            Some(fix),
        );
    }
    text.to_owned()
}

/// Labels of letters, digits, `-` and `_`, separated by dots, at most 253
/// bytes (a trailing dot is allowed).
fn dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// A window length in seconds, from 1 to `max`; above 1800 the message says
/// why there is no more.
fn ttl(value: Option<&Spanned<i64>>, max: i64, key: &str, ctx: &mut Ctx<'_>) -> Duration {
    let secs = match value {
        Some(v) if *v.get_ref() > raw::DEBUG_TTL_SECS.max => {
            ctx.push(
                Some(v.span()),
                Some(key.to_owned()),
                ErrorKind::OutOfRange,
                format!(
                    "{} is too large: a failed job's VM is kept at most {} seconds (30 minutes), counted from when the window opens and never renewed",
                    v.get_ref(),
                    raw::DEBUG_TTL_SECS.max
                ),
                Some(format!(
                    "use a value from 1 to {} (seconds), or remove the key for the maximum",
                    raw::DEBUG_TTL_SECS.max
                )),
            );
            0
        }
        Some(v) if *v.get_ref() > max => {
            ctx.push(
                Some(v.span()),
                Some(key.to_owned()),
                ErrorKind::OutOfRange,
                format!(
                    "{} is longer than the host's window (`debug_ssh.ttl_secs` = {max}), which bounds every forge's",
                    v.get_ref()
                ),
                Some(format!(
                    "use a value from 1 to {max} (seconds), or raise `debug_ssh.ttl_secs`"
                )),
            );
            0
        }
        v => number(v, max, raw::DEBUG_TTL_SECS, key, ctx),
    };
    Duration::from_secs(u64::from(secs))
}

/// `[forges.<name>.debug_ssh]`. `host` is the host's `[debug_ssh]` section
/// as written, `host_ttl` its window (the default when absent or bad).
pub(crate) fn forge(
    forge: &str,
    raw: Option<&Spanned<RawForgeDebugSsh>>,
    host: Option<&Spanned<RawDebugSsh>>,
    host_ttl: Duration,
    ctx: &mut Ctx<'_>,
) -> ForgeDebugSsh {
    let Some(section) = raw else {
        return ForgeDebugSsh::default();
    };
    let key = |k: &str| format!("forges.{forge}.debug_ssh.{k}");
    let d = section.get_ref();
    let enabled = d.enabled.as_ref().is_some_and(|e| *e.get_ref());
    if enabled && host.is_none() {
        let span = d.enabled.as_ref().map(|e| e.span());
        ctx.push(
            span,
            Some(key("enabled")),
            ErrorKind::MissingKey,
            "debug SSH is enabled for this forge, but the host has no [debug_ssh] section, so no gateway would let anyone in".to_owned(),
            Some("add a [debug_ssh] section with at least `listen = \"0.0.0.0:2222\"` (docs/debug-ssh.md), or set `enabled = false`".to_owned()),
        );
    }
    let repositories = d
        .repositories
        .as_ref()
        .map(|list| {
            non_empty_list(list, &key("repositories"), "repository", ctx);
            for r in list.get_ref() {
                repository_pattern(r, &key("repositories"), ctx);
            }
            list.get_ref()
                .iter()
                .map(|r| r.get_ref().trim().to_owned())
                .collect()
        })
        .unwrap_or_default();
    let events = d
        .events
        .as_ref()
        .map(|list| {
            non_empty_list(list, &key("events"), "event", ctx);
            for e in list.get_ref() {
                event_name(e, &key("events"), ctx);
            }
            list.get_ref().iter().map(|e| e.get_ref().clone()).collect()
        })
        .unwrap_or_else(|| {
            crate::config::DEFAULT_DEBUG_SSH_EVENTS
                .iter()
                .map(|e| (*e).to_owned())
                .collect()
        });
    // A bad host window was reported (and reads as 0): check against the
    // maximum rather than report every forge's window too.
    let host_max = match i64::try_from(host_ttl.as_secs()) {
        Ok(0) | Err(_) => raw::DEBUG_TTL_SECS.max,
        Ok(n) => n,
    };
    ForgeDebugSsh {
        enabled,
        repositories,
        events,
        fork_pull_requests: d.fork_pull_requests.as_ref().is_some_and(|v| *v.get_ref()),
        with_secrets: d.with_secrets.as_ref().is_some_and(|v| *v.get_ref()),
        ttl: d
            .ttl_secs
            .as_ref()
            .map(|v| ttl(Some(v), host_max, &key("ttl_secs"), ctx)),
    }
}

/// An explicit empty list reads as "none", but the code reads "no limit":
/// refused, so that the file says what it means.
fn non_empty_list(list: &Spanned<Vec<Spanned<String>>>, key: &str, what: &str, ctx: &mut Ctx<'_>) {
    if list.get_ref().is_empty() {
        ctx.push(
            Some(list.span()),
            Some(key.to_owned()),
            ErrorKind::InvalidValue,
            format!("the {what} list is empty; an absent key means every {what}, so an empty list is ambiguous"),
            Some(format!(
                "list at least one {what}, remove the key to allow every {what}, or set `enabled = false` to keep no VM"
            )),
        );
    }
}

/// `owner/name` or `owner/*`.
fn repository_pattern(r: &Spanned<String>, key: &str, ctx: &mut Ctx<'_>) {
    let text = r.get_ref();
    let part_ok = |p: &str| {
        !p.is_empty() && !p.contains('*') && !p.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    let ok = match text.split_once('/') {
        Some((owner, name)) => {
            part_ok(owner) && (name == "*" || part_ok(name)) && !name.contains('/')
        }
        None => false,
    };
    if !ok {
        let fix = match text.trim().split_once('/') {
            None if part_ok(text.trim()) => format!(
                "write \"{}/*\" for every repository of {0}, or \"{0}/<name>\" for one",
                text.trim()
            ),
            _ => "write \"owner/name\" for one repository or \"owner/*\" for every repository of an owner (a user or an organisation)".to_owned(),
        };
        ctx.push(
            Some(r.span()),
            Some(key.to_owned()),
            ErrorKind::InvalidValue,
            format!("\"{text}\" is not a repository pattern"),
            Some(fix),
        );
    }
}

/// `schedule` is an error (never kept); unknown names are a warning.
fn event_name(e: &Spanned<String>, key: &str, ctx: &mut Ctx<'_>) {
    let name = e.get_ref();
    if name == "schedule" {
        ctx.push(
            Some(e.span()),
            Some(key.to_owned()),
            ErrorKind::InvalidValue,
            "jobs of `schedule` events are never kept: their actor is whoever last edited the workflow, not someone who is there to debug".to_owned(),
            Some("remove \"schedule\"; run the workflow by hand (workflow_dispatch) to debug it".to_owned()),
        );
    } else if !KNOWN_EVENTS.contains(&name.as_str()) {
        let fix = match super::parse::closest(name, &KNOWN_EVENTS) {
            Some(best) => format!("did you mean \"{best}\"?"),
            None => "write event names as `on:` does, e.g. \"push\", \"pull_request\", \"workflow_dispatch\"".to_owned(),
        };
        ctx.warn(
            Some(e.span()),
            Some(key.to_owned()),
            format!("\"{name}\" is not an event GitHub, Forgejo or Gitea send, so no job matches this entry"),
            Some(fix),
        );
    }
}

/// What works but probably not as meant: a gateway on loopback that the
/// job log sends users to from elsewhere; a gateway no forge uses; held
/// VMs that can take every job slot.
pub(crate) fn warnings(
    raw: Option<&Spanned<RawDebugSsh>>,
    host: Option<&DebugSshConfig>,
    any_forge_enabled: bool,
    max_concurrent_jobs: u32,
    ctx: &mut Ctx<'_>,
) {
    let (Some(section), Some(host)) = (raw, host) else {
        return;
    };
    let d = section.get_ref();
    let public_is_loopback = host.public_host == "localhost"
        || host
            .public_host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if host.listen.ip().is_loopback() && !public_is_loopback {
        ctx.warn(
            d.listen.as_ref().map(|l| l.span()),
            Some("debug_ssh.listen".to_owned()),
            format!(
                "the gateway listens on a loopback address, but the job log tells users to connect to {}: only this machine can reach it, unless something forwards the port",
                host.public_host
            ),
            Some(format!(
                "listen on an address users reach, e.g. \"0.0.0.0:{}\", or set `public_host = \"127.0.0.1\"` if only users of this machine debug",
                host.listen.port()
            )),
        );
    }
    if !any_forge_enabled {
        ctx.warn(
            Some(section.span()),
            Some("debug_ssh".to_owned()),
            "no forge has `debug_ssh.enabled = true`, so no failed job's VM is ever kept".to_owned(),
            Some("add `[forges.<name>.debug_ssh]` with `enabled = true` for the forges whose failed jobs may be debugged".to_owned()),
        );
    }
    if host.max_held >= max_concurrent_jobs {
        ctx.warn(
            d.max_held.as_ref().map_or(Some(section.span()), |m| Some(m.span())),
            Some("debug_ssh.max_held".to_owned()),
            format!(
                "a VM kept for debugging still takes a job slot, and up to {} can be kept while `daemon.max_concurrent_jobs` is {max_concurrent_jobs}: failed jobs can then take every slot for up to {} seconds, and no other job runs meanwhile",
                host.max_held,
                host.ttl.as_secs()
            ),
            Some(format!(
                "use a `max_held` below {max_concurrent_jobs}, or raise `daemon.max_concurrent_jobs`"
            )),
        );
    }
}

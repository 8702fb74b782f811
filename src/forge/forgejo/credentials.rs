//! Runner credentials for one forge (`shared/spec/forgejo-runner-protocol.md`
//! §3.1, §3.3): from a registration token (`Ping` + `Register`), from
//! Forgejo's offline shared secret, or from a ready `.runner`-style file;
//! then `Declare` of the version and labels.
//!
//! Persistence belongs to the caller: [`obtain`] takes what was stored and
//! returns what to store.

use std::path::{Path, PathBuf};

use super::ForgeError;
use super::client::{Credentials, ForgejoClient};
use super::proto::{DeclareRequest, RegisterRequest, Runner};
use crate::config::{CredentialSource, ForgeConfig};
use crate::secret::Secret;

/// Length of a Forgejo offline shared secret (hex characters).
pub const SHARED_SECRET_LEN: usize = 40;

/// Where the forge UI hands out registration tokens; part of error messages.
const WHERE_TOKENS_ARE: &str =
    "Site Administration, or the organisation's or repository's Settings → Actions → Runners";

/// A runner's credentials as the daemon keeps them, per forge.
pub use crate::forge::RunnerCredentials as StoredCredentials;

/// The result of [`obtain`].
#[derive(Debug, Clone)]
pub struct Obtained {
    pub credentials: StoredCredentials,
    /// True when `credentials` differ from what was stored and must be saved.
    pub changed: bool,
    /// The forge client, authenticating with `credentials`.
    pub client: ForgejoClient,
}

/// Why a forge's runner credentials could not be obtained. No variant holds a
/// secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The forge is a GitHub forge, which this Forgejo client cannot serve.
    #[error(
        "Forge {forge} is kind = github: its runners come from GitHub's runner protocol, not the Forgejo runner API; this is a bug if you see it"
    )]
    GithubForge { forge: String },
    /// A credentials file could not be read.
    #[error("Cannot read the {what} file {path}: check that it exists and is readable")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The registration token file is empty.
    #[error(
        "The registration token file {path} is empty: put a registration token from the forge ({WHERE_TOKENS_ARE}) in it"
    )]
    EmptyToken { path: PathBuf },
    /// The shared-secret file does not hold 40 hex characters.
    #[error(
        "The secret file {path} must hold exactly 40 hex characters (the secret given to `forgejo forgejo-cli actions register --secret`), but {problem}"
    )]
    BadSecret {
        path: PathBuf,
        problem: SecretProblem,
    },
    /// The runner file is not JSON with `uuid` and `token` strings.
    #[error(
        "The runner file {path} is not usable: {problem}; it must be JSON with \"uuid\" and \"token\" strings, like forgejo-runner's .runner file"
    )]
    BadRunnerFile {
        path: PathBuf,
        problem: RunnerFileProblem,
    },
    /// The forge refused the registration token.
    #[error(
        "Forge {forge} refused the registration token in {path} ({message}): get a fresh registration token from the forge ({WHERE_TOKENS_ARE}) and put it in that file"
    )]
    RegistrationRefused {
        forge: String,
        path: PathBuf,
        message: String,
    },
    /// `Register` answered without a usable runner.
    #[error(
        "Forge {forge} answered Register without a runner UUID and token; is it Forgejo or Gitea?"
    )]
    BadRegisterAnswer { forge: String },
    /// The forge rejects the configured runner's credentials.
    #[error(
        "Forge {forge}: the forge does not know this runner: runner {uuid} from {path} is not registered there (or was deleted); register it on the forge again or fix the file"
    )]
    UnknownRunner {
        forge: String,
        uuid: String,
        path: PathBuf,
        #[source]
        source: ForgeError,
    },
    /// The forge's URL answers, but not as a Forgejo/Gitea runner API.
    #[error(
        "Forge {forge}: {url} is not a Forgejo/Gitea instance with Actions enabled (Ping got {answer}): check forges.{forge}.url (the address you open in a browser) and that Actions are enabled on the forge"
    )]
    NotAForge {
        forge: String,
        url: String,
        answer: String,
    },
    /// A call to the forge failed.
    #[error("Forge {forge}: {step} failed")]
    Forge {
        forge: String,
        step: &'static str,
        #[source]
        source: ForgeError,
    },
}

impl CredentialError {
    /// Worth trying again later (the forge was unreachable or answered with a
    /// transient error); everything else needs the operator.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CredentialError::Forge { source, .. } if source.is_retryable())
    }
}

/// Whether a value can travel in an HTTP header and is plausible as a UUID
/// or token: visible ASCII, no spaces.
fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Reads a registration token: the file's content without surrounding whitespace.
pub fn read_registration_token(path: &Path) -> Result<Secret, CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
        what: "registration token",
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CredentialError::EmptyToken {
            path: path.to_path_buf(),
        });
    }
    Ok(Secret::new(token))
}

/// What is wrong with a shared secret (never quoting it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretProblem {
    #[error("it holds {0} characters")]
    Length(usize),
    #[error("it holds characters other than 0-9 and a-f")]
    NotHex,
    #[error("it is too short")]
    TooShort,
}

/// Checks a Forgejo offline shared secret (surrounding whitespace ignored).
/// The error describes the problem without quoting the secret.
pub fn validate_shared_secret(text: &str) -> Result<Secret, SecretProblem> {
    let secret = text.trim();
    let len = secret.chars().count();
    if len != SHARED_SECRET_LEN {
        return Err(SecretProblem::Length(len));
    }
    if !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SecretProblem::NotHex);
    }
    Ok(Secret::new(secret))
}

/// The runner UUID Forgejo derives from a shared secret: the first 16 ASCII
/// characters' bytes are the UUID's 16 bytes.
pub fn uuid_from_shared_secret(secret: &Secret) -> Option<String> {
    let bytes: [u8; 16] = secret.expose().as_bytes().get(..16)?.try_into().ok()?;
    Some(uuid::Uuid::from_bytes(bytes).hyphenated().to_string())
}

/// What a runner file provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerFile {
    pub uuid: String,
    pub token: Secret,
    /// `id`, when present.
    pub runner_id: Option<i64>,
}

/// What is wrong with a runner file (never quoting its content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerFileProblem {
    #[error("not valid JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error("not a JSON object")]
    NotObject,
    #[error("the key \"{0}\" is missing")]
    Missing(&'static str),
    #[error("\"{0}\" is empty or holds spaces or non-ASCII characters")]
    NotHeaderSafe(&'static str),
    #[error("\"{0}\" is not a string")]
    NotString(&'static str),
}

/// Parses a runner file: JSON with `uuid` and `token` strings; other keys
/// are ignored. The error never quotes the file's content.
pub fn parse_runner_file(text: &str) -> Result<RunnerFile, RunnerFileProblem> {
    // Parse to a generic value first: serde's typed errors can quote values.
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| RunnerFileProblem::NotJson {
            line: e.line(),
            column: e.column(),
        })?;
    let object = value.as_object().ok_or(RunnerFileProblem::NotObject)?;
    let field = |key: &'static str| -> Result<String, RunnerFileProblem> {
        match object.get(key) {
            None => Err(RunnerFileProblem::Missing(key)),
            Some(serde_json::Value::String(s)) if header_safe(s.trim()) => Ok(s.trim().to_string()),
            Some(serde_json::Value::String(_)) => Err(RunnerFileProblem::NotHeaderSafe(key)),
            Some(_) => Err(RunnerFileProblem::NotString(key)),
        }
    };
    let uuid = field("uuid")?;
    let token = Secret::new(field("token")?);
    let runner_id = object.get("id").and_then(serde_json::Value::as_i64);
    Ok(RunnerFile {
        uuid,
        token,
        runner_id,
    })
}

/// The credentials that can be known without asking the forge: from a
/// secret file or a runner file, or stored ones registered at this URL.
/// `None` when a registration is still needed (or a file cannot be read;
/// [`obtain`] reports that).
pub fn known_locally(
    forge: &ForgeConfig,
    stored: Option<&StoredCredentials>,
) -> Option<Credentials> {
    match &forge.credentials {
        CredentialSource::SecretFile(path) => {
            let secret = read_shared_secret(path).ok()?;
            Some(Credentials {
                uuid: uuid_from_shared_secret(&secret)?,
                token: secret,
            })
        }
        CredentialSource::RunnerFile(path) => {
            let f = read_runner_file(path).ok()?;
            Some(Credentials {
                uuid: f.uuid,
                token: f.token,
            })
        }
        CredentialSource::RegistrationTokenFile(_) => stored
            .filter(|s| same_url(&s.url, &forge.url))
            .map(|s| Credentials {
                uuid: s.uuid.clone(),
                token: s.token.clone(),
            }),
        // This forge is kind = github: nothing of Forgejo's applies.
        CredentialSource::GithubApp { .. } | CredentialSource::GithubToken(_) => None,
    }
}

fn read_shared_secret(path: &Path) -> Result<Secret, CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
        what: "secret",
        path: path.to_path_buf(),
        source,
    })?;
    validate_shared_secret(&text).map_err(|problem| CredentialError::BadSecret {
        path: path.to_path_buf(),
        problem,
    })
}

fn read_runner_file(path: &Path) -> Result<RunnerFile, CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
        what: "runner",
        path: path.to_path_buf(),
        source,
    })?;
    parse_runner_file(&text).map_err(|problem| CredentialError::BadRunnerFile {
        path: path.to_path_buf(),
        problem,
    })
}

/// Whether a Register error means the registration token itself is bad:
/// Forgejo's `invalid_argument`, or Gitea's plain-string `unknown` errors.
fn is_registration_refusal(e: &ForgeError) -> bool {
    match e {
        ForgeError::Status { code, message, .. } => {
            *code == super::Code::InvalidArgument
                || message.contains("registration token")
                || message.contains("runner token")
        }
        _ => false,
    }
}

/// `true` when two URLs name the same forge (trailing `/` ignored).
fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Obtains the runner credentials for `forge` and declares its labels.
///
/// `client` is the forge's client without credentials; `stored` is what the
/// state store holds for this forge; `version` is the runner version sent in
/// Register and Declare. Stored credentials are reused only for the same URL.
/// With a registration token, stored credentials the forge no longer accepts
/// are replaced by a new registration (once).
pub async fn obtain(
    forge: &ForgeConfig,
    client: &ForgejoClient,
    stored: Option<StoredCredentials>,
    version: &str,
) -> Result<Obtained, CredentialError> {
    let stored_here = stored
        .clone()
        .filter(|s| same_url(&s.url, &forge.url) && header_safe(&s.uuid));
    let got = match &forge.credentials {
        CredentialSource::RegistrationTokenFile(path) => {
            obtain_registered(forge, client, stored_here, path, version).await
        }
        CredentialSource::SecretFile(path) => {
            let secret = read_shared_secret(path)?;
            let uuid =
                uuid_from_shared_secret(&secret).ok_or_else(|| CredentialError::BadSecret {
                    path: path.clone(),
                    problem: SecretProblem::TooShort,
                })?;
            let creds = from_file(forge, stored_here, uuid, secret, None);
            declare_fixed(forge, client, creds, path, version).await
        }
        CredentialSource::RunnerFile(path) => {
            let file = read_runner_file(path)?;
            let creds = from_file(forge, stored_here, file.uuid, file.token, file.runner_id);
            declare_fixed(forge, client, creds, path, version).await
        }
        CredentialSource::GithubApp { .. } | CredentialSource::GithubToken(_) => {
            return Err(CredentialError::GithubForge {
                forge: forge.name.clone(),
            });
        }
    };
    let (mut creds, runner) = match got {
        Ok(got) => got,
        Err(e) => return Err(check_is_forge(forge, client, e).await),
    };
    if let Some(runner) = &runner {
        if runner.id != 0 {
            creds.runner_id = runner.id;
        }
        if runner.ephemeral {
            tracing::warn!(
                forge = %forge.name,
                "the forge marks this runner as ephemeral: it will delete the runner after its first task"
            );
        }
    }
    let changed = stored.as_ref() != Some(&creds);
    let client = client.with_credentials(Credentials {
        uuid: creds.uuid.clone(),
        token: creds.token.clone(),
    });
    Ok(Obtained {
        credentials: creds,
        changed,
        client,
    })
}

/// Turns a failure that may come from a URL that is not a forge at all into
/// [`CredentialError::NotAForge`] when `Ping` proves it: a Ping that already
/// said so, or an odd answer to another call (a web page, a bare error
/// status) followed by a Ping that says so. Other errors pass unchanged.
async fn check_is_forge(
    forge: &ForgeConfig,
    client: &ForgejoClient,
    e: CredentialError,
) -> CredentialError {
    let not_a_forge = |answer: String| CredentialError::NotAForge {
        forge: forge.name.clone(),
        url: forge.url.clone(),
        answer,
    };
    match e {
        CredentialError::Forge {
            source: ForgeError::NotAForge { answer, .. },
            ..
        } => not_a_forge(answer),
        CredentialError::Forge { ref source, .. }
            if source.is_answer() && source.is_retryable() =>
        {
            match client.ping(&forge.runner_name).await {
                Err(ForgeError::NotAForge { answer, .. }) => not_a_forge(answer),
                _ => e,
            }
        }
        e => e,
    }
}

/// Credentials read from a file; what is stored for the same runner (id,
/// declared labels) carries over.
fn from_file(
    forge: &ForgeConfig,
    stored: Option<StoredCredentials>,
    uuid: String,
    token: Secret,
    runner_id: Option<i64>,
) -> StoredCredentials {
    let same_runner = stored.filter(|s| s.uuid == uuid);
    StoredCredentials {
        url: forge.url.clone(),
        runner_id: runner_id
            .or(same_runner.as_ref().map(|s| s.runner_id))
            .unwrap_or(0),
        declared_labels: same_runner.map(|s| s.declared_labels).unwrap_or_default(),
        uuid,
        token,
    }
}

/// The registration-token path: reuse what is stored, else Ping + Register;
/// then Declare, registering again once if the stored runner is unknown.
async fn obtain_registered(
    forge: &ForgeConfig,
    client: &ForgejoClient,
    stored: Option<StoredCredentials>,
    path: &Path,
    version: &str,
) -> Result<(StoredCredentials, Option<Runner>), CredentialError> {
    let (creds, fresh) = match stored {
        Some(s) => (s, false),
        None => (register(forge, client, path, version).await?, true),
    };
    match declare(forge, client, &creds, version).await {
        Ok(outcome) => Ok(outcome),
        Err(e) if e.is_unauthenticated() && !fresh => {
            tracing::info!(
                forge = %forge.name,
                uuid = %creds.uuid,
                "the forge no longer knows the stored runner; registering again"
            );
            let creds = register(forge, client, path, version).await?;
            match declare(forge, client, &creds, version).await {
                Ok(outcome) => Ok(outcome),
                Err(e) => registered_anyway(forge, creds, path, e),
            }
        }
        Err(e) if fresh => registered_anyway(forge, creds, path, e),
        Err(e) => Err(declare_error(forge, &creds, path, e)),
    }
}

/// A Declare that failed right after a successful Register: the new
/// credentials are good (Register carried the labels), so they are kept and
/// saved; registering again on every retry would leave stale runners behind
/// on the forge. Credential errors still count.
fn registered_anyway(
    forge: &ForgeConfig,
    creds: StoredCredentials,
    path: &Path,
    e: ForgeError,
) -> Result<(StoredCredentials, Option<Runner>), CredentialError> {
    if e.is_unauthenticated() {
        return Err(declare_error(forge, &creds, path, e));
    }
    tracing::warn!(
        forge = %forge.name,
        error = %e,
        "registered, but the Declare that follows failed; the labels sent with Register stand"
    );
    Ok((creds, None))
}

/// SecretFile / RunnerFile: the file is the truth; Declare only.
async fn declare_fixed(
    forge: &ForgeConfig,
    client: &ForgejoClient,
    creds: StoredCredentials,
    path: &Path,
    version: &str,
) -> Result<(StoredCredentials, Option<Runner>), CredentialError> {
    declare(forge, client, &creds, version)
        .await
        .map_err(|e| declare_error(forge, &creds, path, e))
}

fn declare_error(
    forge: &ForgeConfig,
    creds: &StoredCredentials,
    path: &Path,
    e: ForgeError,
) -> CredentialError {
    if e.is_unauthenticated() {
        CredentialError::UnknownRunner {
            forge: forge.name.clone(),
            uuid: creds.uuid.clone(),
            path: path.to_path_buf(),
            source: e,
        }
    } else {
        CredentialError::Forge {
            forge: forge.name.clone(),
            step: "Declare",
            source: e,
        }
    }
}

/// Ping, then Register with the registration token read from `path`.
async fn register(
    forge: &ForgeConfig,
    client: &ForgejoClient,
    path: &Path,
    version: &str,
) -> Result<StoredCredentials, CredentialError> {
    let token = read_registration_token(path)?;
    let forge_error = |step, source| CredentialError::Forge {
        forge: forge.name.clone(),
        step,
        source,
    };
    let pong = client
        .ping(&forge.runner_name)
        .await
        .map_err(|e| forge_error("Ping", e))?;
    tracing::debug!(forge = %forge.name, answer = %pong.data, "ping");
    let req = RegisterRequest {
        name: forge.runner_name.clone(),
        token: token.expose().to_string(),
        agent_labels: forge.labels.clone(),
        version: version.to_string(),
        labels: forge.labels.clone(),
        ..Default::default()
    };
    let resp = client.register(req).await.map_err(|e| {
        if is_registration_refusal(&e) {
            let message = match &e {
                ForgeError::Status { message, .. } => message.replace(token.expose(), "***"),
                other => other.to_string(),
            };
            CredentialError::RegistrationRefused {
                forge: forge.name.clone(),
                path: path.to_path_buf(),
                message,
            }
        } else {
            forge_error("Register", e)
        }
    })?;
    let runner = resp
        .runner
        .filter(|r| header_safe(&r.uuid) && header_safe(&r.token))
        .ok_or_else(|| CredentialError::BadRegisterAnswer {
            forge: forge.name.clone(),
        })?;
    tracing::info!(
        forge = %forge.name,
        uuid = %runner.uuid,
        id = runner.id,
        name = %forge.runner_name,
        "registered the runner"
    );
    Ok(StoredCredentials {
        url: forge.url.clone(),
        uuid: runner.uuid,
        token: Secret::new(runner.token),
        runner_id: runner.id,
        // Register carried the labels: an old server without Declare keeps them.
        declared_labels: forge.labels.clone(),
    })
}

/// Declare `{version, labels}`. On success the labels are recorded as
/// declared; an old server without Declare (`unimplemented`) is tolerated.
async fn declare(
    forge: &ForgeConfig,
    client: &ForgejoClient,
    creds: &StoredCredentials,
    version: &str,
) -> Result<(StoredCredentials, Option<Runner>), ForgeError> {
    let authed = client.with_credentials(Credentials {
        uuid: creds.uuid.clone(),
        token: creds.token.clone(),
    });
    let req = DeclareRequest {
        version: version.to_string(),
        labels: forge.labels.clone(),
        ..Default::default()
    };
    match authed.declare(req).await {
        Ok(resp) => {
            let mut creds = creds.clone();
            if creds.declared_labels != forge.labels {
                if !creds.declared_labels.is_empty() {
                    tracing::info!(
                        forge = %forge.name,
                        "declared labels changed: [{}] → [{}]",
                        creds.declared_labels.join(", "),
                        forge.labels.join(", ")
                    );
                }
                creds.declared_labels = forge.labels.clone();
            }
            tracing::info!(
                forge = %forge.name,
                uuid = %creds.uuid,
                version,
                labels = %forge.labels.join(","),
                "declared the runner"
            );
            Ok((creds, resp.runner))
        }
        Err(e) if e.is_unimplemented() => {
            // A bare 404 is also what any web server answers: only a Ping
            // tells an old forge from a URL that is no forge at all.
            if let Err(e @ ForgeError::NotAForge { .. }) = client.ping(&forge.runner_name).await {
                return Err(e);
            }
            tracing::info!(
                forge = %forge.name,
                "the forge does not know Declare (older than 1.20): the labels given at registration stay"
            );
            Ok((creds.clone(), None))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_from_the_spec_example() {
        let secret = validate_shared_secret("0123456789abcdef0123456789abcdef01234567\n").unwrap();
        assert_eq!(
            uuid_from_shared_secret(&secret).unwrap(),
            "30313233-3435-3637-3839-616263646566"
        );
    }

    #[test]
    fn shared_secret_must_be_40_hex_characters() {
        let ok = "0123456789ABCDEF0123456789abcdef01234567";
        assert_eq!(validate_shared_secret(ok).unwrap().expose(), ok);
        let short = validate_shared_secret("0123456789abcdef")
            .unwrap_err()
            .to_string();
        assert_eq!(short, "it holds 16 characters");
        let not_hex = validate_shared_secret("0123456789abcdefg123456789abcdef01234567")
            .unwrap_err()
            .to_string();
        assert!(not_hex.contains("other than"), "{not_hex}");
        assert!(!not_hex.contains("0123"), "{not_hex}");
        assert!(validate_shared_secret("").is_err());
    }

    #[test]
    fn runner_file_like_forgejo_runner_writes_it() {
        let text = r#"{
          "WARNING": "This file is automatically generated by act-runner. Do not edit it manually unless you know what you are doing.",
          "id": 42,
          "uuid": "7a8b9c0d-1111-2222-3333-444455556666",
          "name": "runner-1",
          "token": "0123456789abcdef0123456789abcdef01234567",
          "address": "https://codeberg.org",
          "labels": ["docker:docker://node:20-bookworm"],
          "ephemeral": false
        }"#;
        let f = parse_runner_file(text).unwrap();
        assert_eq!(f.uuid, "7a8b9c0d-1111-2222-3333-444455556666");
        assert_eq!(f.token.expose(), "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(f.runner_id, Some(42));
        let minimal = parse_runner_file(r#"{"uuid":"u","token":"t"}"#).unwrap();
        assert_eq!(minimal.runner_id, None);
    }

    #[test]
    fn runner_file_errors_name_the_problem_but_not_the_content() {
        let e = parse_runner_file("{\"uuid\": \"u\", \"token\": \"hunter2\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("not valid JSON"), "{e}");
        assert!(!e.contains("hunter2"));
        let e = parse_runner_file(r#"{"uuid":"u"}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "the key \"token\" is missing");
        let e = parse_runner_file(r#"{"uuid":"u","token":12345}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "\"token\" is not a string");
        let e = parse_runner_file(r#"{"uuid":"u","token":"a b"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spaces"), "{e}");
        assert_eq!(
            parse_runner_file("[]").unwrap_err().to_string(),
            "not a JSON object"
        );
    }

    #[test]
    fn registration_refusals_in_both_styles() {
        let forgejo = ForgeError::from_response(
            "Register",
            400,
            br#"{"code":"invalid_argument","message":"runner registration token not found"}"#,
        );
        assert!(is_registration_refusal(&forgejo));
        let gitea = ForgeError::from_response(
            "Register",
            500,
            br#"{"code":"unknown","message":"runner registration token has been invalidated, please use the latest one"}"#,
        );
        assert!(is_registration_refusal(&gitea));
        let down = ForgeError::from_response("Register", 503, b"");
        assert!(!is_registration_refusal(&down));
    }

    #[test]
    fn urls_compare_without_trailing_slash() {
        assert!(same_url("https://h/x/", "https://h/x"));
        assert!(!same_url("https://h/x", "https://h/y"));
    }
}

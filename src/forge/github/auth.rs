//! Credentials (spec §2, §3): the JIT config of an ephemeral runner (read
//! in memory, never written anywhere), the runner's RSA key, the OAuth
//! token exchange with a signed client assertion, and the credentials of
//! the REST API (a GitHub App's installation token, or a token file).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::DecodePrivateKey;
use serde_json::{Map, Value, json};

use super::error::{CALL_TIMEOUT, GithubError, decode, send};
use crate::secret::Secret;

/// Refresh a token once this share of its lifetime has passed.
const REFRESH_AT: f64 = 0.8;
/// An assertion is valid this long.
const ASSERTION_LIFETIME: u64 = 5 * 60;
/// Back-dating of `nbf`/`iat`, for clocks a little ahead of GitHub's.
const CLOCK_SLACK: u64 = 30;

/// An RSA private key that signs JWTs. `Debug` shows nothing of it.
pub struct SigningKey {
    pair: ring::signature::RsaKeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// The JWS algorithm of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Ps256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Ps256 => "PS256",
        }
    }
}

impl SigningKey {
    fn from_rsa(key: &rsa::RsaPrivateKey, what: &str) -> Result<SigningKey, GithubError> {
        let der = key
            .to_pkcs1_der()
            .map_err(|e| GithubError::Invalid(format!("{what}: cannot encode the key: {e}")))?;
        let pair = ring::signature::RsaKeyPair::from_der(der.as_bytes())
            .map_err(|e| GithubError::Invalid(format!("{what}: the key is not usable: {e}")))?;
        Ok(SigningKey { pair })
    }

    /// A key from .NET `RSAParameters` (`.credentials_rsaparams`): base64
    /// big-endian `modulus`, `exponent`, `d`, `p`, `q` (the rest is derived).
    pub fn from_rsa_parameters(params: &Map<String, Value>) -> Result<SigningKey, GithubError> {
        let part = |name: &str| -> Result<rsa::BigUint, GithubError> {
            let text = get(params, name).and_then(Value::as_str).ok_or_else(|| {
                GithubError::Invalid(format!(
                    "The JIT config's RSA key has no `{name}`; generate a new JIT config"
                ))
            })?;
            let bytes = STANDARD.decode(text.trim()).map_err(|_| {
                GithubError::Invalid(format!("The JIT config's RSA key `{name}` is not base64"))
            })?;
            Ok(rsa::BigUint::from_bytes_be(&bytes))
        };
        let key = rsa::RsaPrivateKey::from_components(
            part("modulus")?,
            part("exponent")?,
            part("d")?,
            vec![part("p")?, part("q")?],
        )
        .map_err(|e| GithubError::Invalid(format!("The JIT config's RSA key is invalid: {e}")))?;
        SigningKey::from_rsa(&key, "The JIT config's RSA key")
    }

    /// A key from PEM text: PKCS#1 (`BEGIN RSA PRIVATE KEY`, what GitHub
    /// hands out for Apps) or PKCS#8 (`BEGIN PRIVATE KEY`).
    pub fn from_pem(pem: &str, what: &str) -> Result<SigningKey, GithubError> {
        let key = rsa::RsaPrivateKey::from_pkcs1_pem(pem.trim())
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(pem.trim()))
            .map_err(|_| {
                GithubError::Credentials(format!(
                    "{what} is not an RSA private key in PEM form (PKCS#1 PEM, first line `BEGIN RSA PRIVATE KEY` between dashes, as GitHub's App settings download it)"
                ))
            })?;
        SigningKey::from_rsa(&key, what)
    }

    /// A compact JWS of `claims` (base64url without padding).
    pub fn sign_jwt(&self, alg: Alg, claims: &Value) -> Result<String, GithubError> {
        let header = json!({"typ": "JWT", "alg": alg.name()});
        let mut input = URL_SAFE_NO_PAD.encode(header.to_string());
        input.push('.');
        input.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let encoding: &dyn ring::signature::RsaEncoding = match alg {
            Alg::Rs256 => &ring::signature::RSA_PKCS1_SHA256,
            Alg::Ps256 => &ring::signature::RSA_PSS_SHA256,
        };
        let mut signature = vec![0u8; self.pair.public().modulus_len()];
        self.pair
            .sign(
                encoding,
                &ring::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| GithubError::Invalid("Cannot sign with the runner's key".into()))?;
        input.push('.');
        input.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(input)
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A key of `map`, matched case-insensitively (GitHub's files and
/// messages are read that way).
pub fn get<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// A string value, also from a number.
fn get_string(map: &Map<String, Value>, name: &str) -> Option<String> {
    match get(map, name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A boolean, also from `"True"`/`"false"`.
fn get_bool(map: &Map<String, Value>, name: &str) -> Option<bool> {
    match get(map, name)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => s.trim().to_ascii_lowercase().parse().ok(),
        _ => None,
    }
}

/// An unsigned number, also from a string.
fn get_u64(map: &Map<String, Value>, name: &str) -> Option<u64> {
    match get(map, name)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The runner part of a JIT config (`.runner`).
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub agent_id: u64,
    pub agent_name: String,
    /// The broker's base URL (`serverUrlV2`), ending with `/`.
    pub broker_url: String,
}

/// The OAuth part of a JIT config (`.credentials`).
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    pub client_id: String,
    /// The token URL, exactly as stored (it is the assertion's `aud`).
    pub authorization_url: String,
    /// PS256 rather than RS256.
    pub pss: bool,
}

/// An ephemeral runner's JIT config, read in memory.
#[derive(Debug)]
pub struct JitConfig {
    pub runner: RunnerSettings,
    pub oauth: OAuthSettings,
    pub key: SigningKey,
}

fn jit_invalid(what: &str) -> GithubError {
    GithubError::Invalid(format!(
        "GitHub's JIT config cannot be read: {what} (this runner cannot speak GitHub's broker protocol with it)"
    ))
}

/// One file of the JIT blob, decoded as a JSON object.
fn jit_file(files: &Map<String, Value>, name: &str) -> Result<Map<String, Value>, GithubError> {
    let text = get(files, name)
        .and_then(Value::as_str)
        .ok_or_else(|| jit_invalid(&format!("it has no `{name}`")))?;
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| jit_invalid(&format!("`{name}` is not base64")))?;
    // The files may start with a UTF-8 byte order mark.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(jit_invalid(&format!("`{name}` is not a JSON object"))),
    }
}

/// Reads `encoded_jit_config` (spec §2.1): base64 of a JSON object that
/// maps `.runner`, `.credentials` and `.credentials_rsaparams` to base64
/// file contents. Only the generation-B flow is supported.
pub fn parse_jit_config(encoded: &Secret) -> Result<JitConfig, GithubError> {
    let outer = STANDARD
        .decode(encoded.expose().trim())
        .map_err(|_| jit_invalid("it is not base64"))?;
    let files: Map<String, Value> = match serde_json::from_slice(&outer) {
        Ok(Value::Object(m)) => m,
        _ => return Err(jit_invalid("it is not a JSON object")),
    };
    let runner = jit_file(&files, ".runner")?;
    let credentials = jit_file(&files, ".credentials")?;
    let rsa = jit_file(&files, ".credentials_rsaparams")?;

    let broker = get_string(&runner, "serverUrlV2").filter(|s| !s.is_empty());
    let v2 = get_bool(&runner, "useV2Flow").unwrap_or(false);
    let Some(mut broker_url) = broker.filter(|_| v2) else {
        return Err(jit_invalid(
            "the runner is not on the broker flow (`useV2Flow`/`serverUrlV2`); the legacy protocol (GHES's pipelines service) is not supported",
        ));
    };
    if !broker_url.ends_with('/') {
        broker_url.push('/');
    }
    let settings = RunnerSettings {
        agent_id: get_u64(&runner, "agentId")
            .ok_or_else(|| jit_invalid("`.runner` has no `agentId`"))?,
        agent_name: get_string(&runner, "agentName").unwrap_or_default(),
        broker_url,
    };
    let scheme = get_string(&credentials, "scheme").unwrap_or_default();
    if !scheme.eq_ignore_ascii_case("OAuth") {
        return Err(jit_invalid(&format!(
            "`.credentials` has scheme {scheme:?}, not OAuth"
        )));
    }
    let data = match get(&credentials, "data") {
        Some(Value::Object(m)) => m,
        _ => return Err(jit_invalid("`.credentials` has no `data`")),
    };
    let oauth = OAuthSettings {
        client_id: get_string(data, "clientId")
            .ok_or_else(|| jit_invalid("`.credentials` has no `clientId`"))?,
        authorization_url: get_string(data, "authorizationUrl")
            .ok_or_else(|| jit_invalid("`.credentials` has no `authorizationUrl`"))?,
        // [AR] writes `requireFipsCryptography`, true for new registrations;
        // [GAR] signs with PS256 whenever the broker flow is used.
        pss: get_bool(data, "requireFipsCryptography").unwrap_or(true),
    };
    Ok(JitConfig {
        runner: settings,
        oauth,
        key: SigningKey::from_rsa_parameters(&rsa)?,
    })
}

struct CachedToken {
    token: Secret,
    refresh_at: Instant,
}

/// A runner's OAuth tokens (spec §3): exchanged with a signed client
/// assertion, kept until 80 % of their lifetime, refreshed on demand.
pub struct RunnerTokens {
    http: reqwest::Client,
    oauth: OAuthSettings,
    key: Arc<SigningKey>,
    cached: tokio::sync::Mutex<Option<CachedToken>>,
}

impl RunnerTokens {
    pub fn new(http: reqwest::Client, oauth: OAuthSettings, key: Arc<SigningKey>) -> Self {
        RunnerTokens {
            http,
            oauth,
            key,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A valid runner token (exchanging one when needed).
    pub async fn get(&self) -> Result<Secret, GithubError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let fresh = self.exchange().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets the token: the next [`RunnerTokens::get`] exchanges a new one
    /// (after a 401, or a `ForceTokenRefresh` message).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    /// The client assertion (spec §3.1).
    fn assertion(&self) -> Result<String, GithubError> {
        let now = unix_now();
        let claims = json!({
            "iss": self.oauth.client_id,
            "sub": self.oauth.client_id,
            "aud": self.oauth.authorization_url,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now.saturating_sub(CLOCK_SLACK),
            "iat": now.saturating_sub(CLOCK_SLACK),
            "exp": now + ASSERTION_LIFETIME,
        });
        let alg = if self.oauth.pss {
            Alg::Ps256
        } else {
            Alg::Rs256
        };
        self.key.sign_jwt(alg, &claims)
    }

    async fn exchange(&self) -> Result<CachedToken, GithubError> {
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            access_token: String,
            #[serde(default)]
            expires_in: Option<Value>,
        }
        let assertion = self.assertion()?;
        let url = &self.oauth.authorization_url;
        let request = self
            .http
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(CALL_TIMEOUT)
            .form(&[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.as_str()),
            ]);
        let started = Instant::now();
        let (_, body) = send("token exchange", url, request).await?;
        let answer: TokenAnswer = decode("token exchange", &body)?;
        let lifetime = match answer.expires_in {
            Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(0.0),
            _ => 0.0,
        };
        // Unknown lifetimes are taken as GitHub's usual 50 minutes; odd
        // ones are kept within a second and a week.
        let lifetime = if lifetime.is_finite() && lifetime > 0.0 {
            lifetime.clamp(1.0, 7.0 * 24.0 * 3600.0)
        } else {
            2999.0
        };
        Ok(CachedToken {
            token: Secret::new(answer.access_token),
            refresh_at: started + Duration::from_secs_f64(lifetime * REFRESH_AT),
        })
    }
}

/// How Solstice authenticates to GitHub's REST API.
pub enum RestCredentials {
    /// A GitHub App installation: tokens are minted with the App's key.
    App {
        app_id: u64,
        installation_id: u64,
        key: Box<SigningKey>,
    },
    /// A fine-grained or classic token.
    Token(Secret),
}

impl std::fmt::Debug for RestCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestCredentials::App {
                app_id,
                installation_id,
                ..
            } => f
                .debug_struct("App")
                .field("app_id", app_id)
                .field("installation_id", installation_id)
                .finish_non_exhaustive(),
            RestCredentials::Token(_) => f.write_str("Token(***)"),
        }
    }
}

impl RestCredentials {
    /// The JWT that authenticates as the App (RS256, 9 minutes).
    pub fn app_jwt(app_id: u64, key: &SigningKey) -> Result<String, GithubError> {
        let now = unix_now();
        key.sign_jwt(
            Alg::Rs256,
            &json!({
                "iat": now.saturating_sub(60),
                "exp": now + 9 * 60,
                "iss": app_id.to_string(),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jit_config_without_the_broker_flow_is_refused_with_a_reason() {
        let file = |v: Value| STANDARD.encode(v.to_string());
        let blob = json!({
            ".runner": file(json!({"agentId": "7", "agentName": "r"})),
            ".credentials": file(json!({"scheme": "OAuth", "data": {"clientId": "c", "authorizationUrl": "https://t/x"}})),
            ".credentials_rsaparams": file(json!({})),
        });
        let e = parse_jit_config(&Secret::new(STANDARD.encode(blob.to_string()))).unwrap_err();
        assert!(e.to_string().contains("legacy protocol"), "{e}");
        let e = parse_jit_config(&Secret::new("not base64 !")).unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
    }

    #[test]
    fn keys_are_matched_case_insensitively_and_values_loosely() {
        let m: Map<String, Value> =
            serde_json::from_value(json!({"AgentId": "12", "useV2FLOW": "True"})).unwrap();
        assert_eq!(get_u64(&m, "agentId"), Some(12));
        assert_eq!(get_bool(&m, "useV2Flow"), Some(true));
    }

    #[test]
    fn a_pem_that_is_not_a_key_is_refused_without_showing_it() {
        let e = SigningKey::from_pem(
            // Not a key: the PEM frame around the word "secret".
            &format!(
                "-----BEGIN RSA {0}-----\nc2VjcmV0\n-----END RSA {0}-----",
                "PRIVATE KEY"
            ),
            "The App key file /k.pem",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("/k.pem") && !text.contains("c2VjcmV0"),
            "{text}"
        );
    }
}

//! RSA keys and JWTs for the fake GitHub: the keys of the JIT runners it
//! mints, the GitHub App keys it trusts, and checking compact JWS (RS256,
//! PS256) with `ring`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{self, RsaPublicKeyComponents};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::EncodePrivateKey;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use serde_json::{Value, json};

use crate::secret::Secret;

/// A 2048-bit RSA key made by the fake.
#[derive(Clone)]
pub struct FakeRsaKey {
    key: rsa::RsaPrivateKey,
}

impl std::fmt::Debug for FakeRsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeRsaKey(***)")
    }
}

impl FakeRsaKey {
    /// Generates a fresh 2048-bit key (exponent 65537).
    pub fn generate() -> FakeRsaKey {
        let mut rng = rsa::rand_core::OsRng;
        // Key generation only fails for absurd sizes; 2048 is fine.
        let key = match rsa::RsaPrivateKey::new(&mut rng, 2048) {
            Ok(k) => k,
            Err(e) => panic!("fake GitHub: RSA key generation failed: {e}"),
        };
        FakeRsaKey { key }
    }

    /// The public modulus, big-endian.
    pub fn modulus(&self) -> Vec<u8> {
        self.key.n().to_bytes_be()
    }

    /// The public exponent, big-endian.
    pub fn exponent(&self) -> Vec<u8> {
        self.key.e().to_bytes_be()
    }

    /// The private key as PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`), the form
    /// GitHub hands out for App keys.
    pub fn pkcs1_pem(&self) -> Secret {
        match self.key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF) {
            Ok(p) => Secret::new(p.to_string()),
            Err(e) => panic!("fake GitHub: PEM encoding failed: {e}"),
        }
    }

    /// The private key as PKCS#8 DER (what `ring` loads).
    pub fn pkcs8_der(&self) -> Vec<u8> {
        match self.key.to_pkcs8_der() {
            Ok(d) => d.as_bytes().to_vec(),
            Err(e) => panic!("fake GitHub: PKCS#8 encoding failed: {e}"),
        }
    }

    /// .NET `RSAParameters` as the runner's `.credentials_rsaparams` holds
    /// them: standard base64 of big-endian bytes, `d` padded to the modulus
    /// length and the CRT parts to half of it.
    pub fn rsa_parameters(&self) -> Value {
        let n = self.modulus();
        let len = n.len();
        let half = len / 2;
        let primes = self.key.primes();
        let p = primes.first().map(|p| p.to_bytes_be()).unwrap_or_default();
        let q = primes.get(1).map(|q| q.to_bytes_be()).unwrap_or_default();
        let dp = self.key.dp().map(|v| v.to_bytes_be()).unwrap_or_default();
        let dq = self.key.dq().map(|v| v.to_bytes_be()).unwrap_or_default();
        let qinv = self
            .key
            .crt_coefficient()
            .map(|v| v.to_bytes_be())
            .unwrap_or_default();
        let b = |v: &[u8], want: usize| STANDARD.encode(left_pad(v, want));
        json!({
            "d": b(&self.key.d().to_bytes_be(), len),
            "dp": b(&dp, half),
            "dq": b(&dq, half),
            "exponent": STANDARD.encode(self.exponent()),
            "inverseQ": b(&qinv, half),
            "modulus": STANDARD.encode(&n),
            "p": b(&p, half),
            "q": b(&q, half),
        })
    }
}

fn left_pad(v: &[u8], want: usize) -> Vec<u8> {
    if v.len() >= want {
        return v.to_vec();
    }
    let mut out = vec![0u8; want - v.len()];
    out.extend_from_slice(v);
    out
}

/// A public key the fake checks signatures with.
#[derive(Debug, Clone)]
pub(crate) struct PublicKey {
    pub n: Vec<u8>,
    pub e: Vec<u8>,
}

impl From<&FakeRsaKey> for PublicKey {
    fn from(k: &FakeRsaKey) -> Self {
        PublicKey {
            n: k.modulus(),
            e: k.exponent(),
        }
    }
}

/// A compact JWS whose signature checked out.
#[derive(Debug)]
pub(crate) struct VerifiedJwt {
    pub claims: Value,
}

/// Checks a compact JWS against `key`. `allowed` lists the accepted `alg`
/// values (`RS256`, `PS256`). The error says what is wrong, in words fit
/// for an `error_description`.
pub(crate) fn verify_jwt(
    token: &str,
    key: &PublicKey,
    allowed: &[&str],
) -> Result<VerifiedJwt, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the assertion is not a compact JWS (three dot-separated parts)".into());
    };
    let header: Value = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("the JWT header is not base64url JSON")?;
    let claims: Value = URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("the JWT claims are not base64url JSON")?;
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "the JWT signature is not base64url without padding")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !allowed.contains(&alg.as_str()) {
        return Err(format!(
            "JWT algorithm '{alg}' is not accepted here (expected {})",
            allowed.join(" or ")
        ));
    }
    let signed = format!("{h}.{c}");
    let comps = RsaPublicKeyComponents {
        n: &key.n,
        e: &key.e,
    };
    let ok = match alg.as_str() {
        "RS256" => comps.verify(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &sig,
        ),
        "PS256" => comps.verify(
            &signature::RSA_PSS_2048_8192_SHA256,
            signed.as_bytes(),
            &sig,
        ),
        _ => return Err(format!("unsupported JWT algorithm '{alg}'")),
    };
    ok.map_err(|_| "JWT signature verification failed".to_string())?;
    Ok(VerifiedJwt { claims })
}

//! OIDC/OAuth2 bearer tokens: checks a JWT against its issuer's published keys (JWKS) and says
//! who it names.
//!
//! The signing algorithm is taken from the key, never from the token: a JWKS entry is usable
//! only as RS256 (RSA of at least 2048 bits), ES256 (P-256) or EdDSA (Ed25519), and a token whose
//! header names any other algorithm than its key's is refused before any cryptography runs. That
//! closes `alg: none` and the HS256-with-the-public-key confusion by construction.
//!
//! Keys are fetched on first use and cached. A token naming an unknown `kid` triggers a refetch
//! (the issuer rotated its keys), at most once per [`MIN_REFRESH_INTERVAL`] and one fetch at a
//! time, so a stream of made-up `kid`s cannot turn us into a load generator against the issuer.
//! Every fetch is bounded in time and size, and a failed fetch keeps the keys we had.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

/// Largest clock-skew allowance a configuration may ask for.
pub const MAX_LEEWAY: Duration = Duration::from_secs(5 * 60);
/// Least time between two JWKS fetches.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Largest bearer value looked at; anything longer is refused before it is parsed.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// How long one fetch (discovery document or JWKS) may take, from connecting to the last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest discovery document or JWKS read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Cached keys older than this are refetched on next use (and kept if that fails), so a key the
/// issuer withdrew stops being trusted even if no token ever names an unknown `kid`.
const MAX_KEY_AGE: Duration = Duration::from_secs(60 * 60);
/// RSA moduli accepted, in bytes: 2048 to 4096 bits (the rsa crate verifies with no larger).
const RSA_MODULUS_BYTES: std::ops::RangeInclusive<usize> = 256..=512;

/// How bearer JWTs from one issuer are checked.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Must equal the `iss` claim exactly (no trailing-slash normalisation).
    pub issuer: String,
    /// Must be the `aud` claim or one of its entries.
    pub audience: String,
    /// Where the keys are; `None` discovers them through
    /// `{issuer}/.well-known/openid-configuration` → `jwks_uri`.
    pub jwks_url: Option<String>,
    /// The claim holding the caller's groups: an array of strings, or a single string.
    pub groups_claim: String,
    /// Clock-skew allowance for `exp`, `nbf` and `iat`, whole seconds, at most [`MAX_LEEWAY`].
    pub leeway: Duration,
}

impl OidcConfig {
    /// A configuration with discovery, the `groups` claim and one minute of leeway.
    #[cfg(test)]
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_url: None,
            groups_claim: "groups".to_owned(),
            leeway: Duration::from_secs(60),
        }
    }
}

/// Who a valid token names.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub issuer: String,
    /// The `sub` claim: required, non-empty, stable for one user at one issuer.
    pub subject: String,
    /// `preferred_username`, else `email`, else `None`: for display and audit, not for lookups.
    pub name: Option<String>,
    /// From the configured groups claim; empty when the claim is absent.
    pub groups: Vec<String>,
    /// The space-separated `scope` claim, if the token has one.
    pub scopes: Option<Vec<String>>,
    /// The `exp` claim, seconds since the Unix epoch.
    pub expires_at: i64,
}

/// Why a token was refused or a verifier could not be built. For logs only: callers answer
/// every refusal with the same 401, so a client learns nothing from which check failed.
///
/// The message carries the whole reason, causes included, so `%error` in a log is enough.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("invalid OIDC configuration: {0}")]
    InvalidConfig(String),
    #[error("could not build the HTTP client for JWKS fetches: {}", error_chain(.0))]
    HttpClient(reqwest::Error),
    #[error("bearer token is not a well-formed JWT: {0}")]
    MalformedToken(String),
    #[error("token algorithm {0:?} is not allowed (only RS256, ES256, EdDSA)")]
    DisallowedAlgorithm(String),
    #[error("no usable signing key in the JWKS for key id {key_id:?}")]
    UnknownKey { key_id: Option<String> },
    #[error("token says {token:?} but its key is {key:?}")]
    AlgorithmMismatch { token: Algorithm, key: Algorithm },
    #[error("token rejected: {0}")]
    Rejected(jsonwebtoken::errors::Error),
    #[error("claim {claim:?} {reason}")]
    InvalidClaim { claim: String, reason: &'static str },
    #[error("fetching {url} failed: {failure}")]
    Fetch { url: String, failure: FetchError },
}

/// Why fetching the discovery document or the JWKS failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{}", error_chain(.0))]
    Request(reqwest::Error),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("document is not the expected JSON: {0}")]
    Json(serde_json::Error),
    #[error("discovery document names issuer {found:?}, not the configured one")]
    IssuerMismatch { found: String },
    #[error("jwks_uri {0:?} is not allowed: {1}")]
    JwksUriNotAllowed(String, String),
    #[error("JWKS holds no usable signing key")]
    NoUsableKeys,
}

/// Checks bearer JWTs from one issuer. `Send + Sync`: share one behind an `Arc`.
pub struct Verifier {
    config: OidcConfig,
    http_client: reqwest::Client,
    fetch_timeout: Duration,
    /// The keys in use; replaced whole by a successful fetch.
    keys: RwLock<Arc<KeySet>>,
    /// Held for the whole of a refresh, so concurrent callers wait for one fetch.
    refresh: Mutex<RefreshState>,
}

struct RefreshState {
    last_attempt: Option<Instant>,
    /// Configured, or found by discovery on the first fetch.
    jwks_url: Option<Url>,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<VerificationKey>>,
    fetched_at: Option<Instant>,
}

struct VerificationKey {
    key_id: Option<String>,
    algorithm: Algorithm,
    decoding_key: DecodingKey,
}

/// The JWT header fields we read; everything else in it is ignored.
#[derive(Deserialize)]
struct TokenHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

/// One JWKS entry, as published (RFC 7517).
#[derive(Deserialize)]
struct JsonWebKey {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    public_key_use: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

impl Verifier {
    /// Checks the configuration; touches no network.
    pub fn new(config: OidcConfig) -> Result<Self, OidcError> {
        parse_allowed_url(&config.issuer)
            .map_err(|reason| OidcError::InvalidConfig(format!("issuer: {reason}")))?;
        let jwks_url = match &config.jwks_url {
            Some(text) => Some(
                parse_allowed_url(text)
                    .map_err(|reason| OidcError::InvalidConfig(format!("jwks_url: {reason}")))?,
            ),
            None => None,
        };
        if config.audience.is_empty() {
            return Err(OidcError::InvalidConfig("audience is empty".to_owned()));
        }
        if config.groups_claim.is_empty() {
            return Err(OidcError::InvalidConfig("groups_claim is empty".to_owned()));
        }
        if config.leeway > MAX_LEEWAY {
            return Err(OidcError::InvalidConfig(format!(
                "leeway {:?} is more than {MAX_LEEWAY:?}",
                config.leeway
            )));
        }
        // Redirects are not followed: one could lead from https to plain http elsewhere.
        let http_client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(OidcError::HttpClient)?;
        Ok(Self {
            config,
            http_client,
            fetch_timeout: FETCH_TIMEOUT,
            keys: RwLock::new(Arc::default()),
            refresh: Mutex::new(RefreshState {
                last_attempt: None,
                jwks_url,
            }),
        })
    }

    /// Whether a presented bearer value is shaped like a JWT (three non-empty base64url parts),
    /// so the caller can tell it from airlock's own `alk_` API tokens without verifying.
    pub fn looks_like_jwt(token: &str) -> bool {
        let parts: Vec<&str> = token.split('.').collect();
        parts.len() == 3
            && parts.iter().all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
            })
    }

    /// Checks `token` (the bearer value, without `Bearer `) and returns who it names.
    pub async fn verify(&self, token: &str) -> Result<Identity, OidcError> {
        let (token_algorithm, key_id) = read_header(token)?;
        let key = self.key_for(key_id.as_deref()).await?;
        if token_algorithm != key.algorithm {
            return Err(OidcError::AlgorithmMismatch {
                token: token_algorithm,
                key: key.algorithm,
            });
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let claims =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding_key, &validation)
                .map_err(OidcError::Rejected)?
                .claims;
        self.identity_from_claims(&claims)
    }

    /// What the signature and jsonwebtoken's checks leave to us: exact `iss`, non-empty `sub`,
    /// `iat` not in the future, and the shapes of the claims we hand on.
    fn identity_from_claims(&self, claims: &Map<String, Value>) -> Result<Identity, OidcError> {
        let invalid = |claim: &str, reason| OidcError::InvalidClaim {
            claim: claim.to_owned(),
            reason,
        };
        // jsonwebtoken also accepts an `iss` array that contains the issuer.
        if claims.get("iss").and_then(Value::as_str) != Some(self.config.issuer.as_str()) {
            return Err(invalid("iss", "is not the configured issuer as a string"));
        }
        let subject = match claims.get("sub").and_then(Value::as_str) {
            Some(subject) if !subject.is_empty() => subject.to_owned(),
            _ => return Err(invalid("sub", "is not a non-empty string")),
        };
        let expires_at = claims
            .get("exp")
            .and_then(seconds_since_epoch)
            .ok_or_else(|| invalid("exp", "is not a number"))?;
        if let Some(issued_at) = claims.get("iat") {
            let issued_at =
                seconds_since_epoch(issued_at).ok_or_else(|| invalid("iat", "is not a number"))?;
            let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX);
            let leeway = i64::try_from(self.config.leeway.as_secs()).unwrap_or(i64::MAX);
            if issued_at > now.saturating_add(leeway) {
                return Err(invalid("iat", "is in the future"));
            }
        }
        let non_empty_string = |claim: &str| {
            claims
                .get(claim)
                .and_then(Value::as_str)
                .filter(|text| !text.is_empty())
                .map(str::to_owned)
        };
        let name = non_empty_string("preferred_username").or_else(|| non_empty_string("email"));
        let groups_claim = self.config.groups_claim.as_str();
        let groups = match claims.get(groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(group)) => vec![group.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid(groups_claim, "holds something other than strings"))?,
            Some(_) => return Err(invalid(groups_claim, "is not a string or string array")),
        };
        let scopes = match claims.get("scope") {
            None => None,
            Some(Value::String(scope)) => {
                Some(scope.split_ascii_whitespace().map(str::to_owned).collect())
            }
            Some(_) => return Err(invalid("scope", "is not a space-separated string")),
        };
        Ok(Identity {
            issuer: self.config.issuer.clone(),
            subject,
            name,
            groups,
            scopes,
            expires_at,
        })
    }

    /// The key a token names, fetching the JWKS if we have none, do not know that `kid`, or
    /// hold keys older than [`MAX_KEY_AGE`].
    async fn key_for(&self, key_id: Option<&str>) -> Result<Arc<VerificationKey>, OidcError> {
        let cached = Arc::clone(&*self.keys.read().await);
        let cached_key = cached.find(key_id);
        let stale = cached
            .fetched_at
            .is_none_or(|fetched_at| fetched_at.elapsed() > MAX_KEY_AGE);
        if let Some(key) = &cached_key
            && !stale
        {
            return Ok(Arc::clone(key));
        }
        match self.refresh_keys().await {
            Ok(fresh) => fresh.find(key_id).ok_or_else(|| OidcError::UnknownKey {
                key_id: key_id.map(str::to_owned),
            }),
            Err(error) => match cached_key {
                Some(key) => {
                    tracing::warn!(%error, "keeping stale JWKS keys");
                    Ok(key)
                }
                None => Err(error),
            },
        }
    }

    /// Fetches the JWKS unless the last attempt was less than [`MIN_REFRESH_INTERVAL`] ago,
    /// and returns the newest keys. Callers that queued on the lock behind a fetch find it
    /// just made and use its keys. On failure the cached keys stay in place.
    async fn refresh_keys(&self) -> Result<Arc<KeySet>, OidcError> {
        let mut refresh = self.refresh.lock().await;
        let current = Arc::clone(&*self.keys.read().await);
        if let Some(last_attempt) = refresh.last_attempt
            && last_attempt.elapsed() < MIN_REFRESH_INTERVAL
        {
            tracing::debug!(issuer = %self.config.issuer, "JWKS refresh skipped: fetched recently");
            return Ok(current);
        }
        refresh.last_attempt = Some(Instant::now());
        let jwks_url = match &refresh.jwks_url {
            Some(url) => url.clone(),
            None => {
                let url = self.discover_jwks_url().await?;
                refresh.jwks_url = Some(url.clone());
                url
            }
        };
        let document: JwksDocument = self.fetch_json(&jwks_url).await?;
        let keys: Vec<Arc<VerificationKey>> = document
            .keys
            .iter()
            .filter_map(|entry| match verification_key(entry) {
                Ok(key) => Some(Arc::new(key)),
                Err(reason) => {
                    tracing::debug!(kid = ?entry.get("kid"), reason, "JWKS entry ignored");
                    None
                }
            })
            .collect();
        if keys.is_empty() {
            return Err(OidcError::Fetch {
                url: jwks_url.to_string(),
                failure: FetchError::NoUsableKeys,
            });
        }
        tracing::info!(url = %jwks_url, keys = keys.len(), "fetched JWKS");
        let fresh = Arc::new(KeySet {
            keys,
            fetched_at: Some(Instant::now()),
        });
        *self.keys.write().await = Arc::clone(&fresh);
        Ok(fresh)
    }

    async fn discover_jwks_url(&self) -> Result<Url, OidcError> {
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let discovery_url = parse_allowed_url(&discovery_url)
            .map_err(|reason| OidcError::InvalidConfig(format!("issuer: {reason}")))?;
        let document: DiscoveryDocument = self.fetch_json(&discovery_url).await?;
        let fail = |failure| OidcError::Fetch {
            url: discovery_url.to_string(),
            failure,
        };
        if document.issuer != self.config.issuer {
            return Err(fail(FetchError::IssuerMismatch {
                found: document.issuer,
            }));
        }
        parse_allowed_url(&document.jwks_uri)
            .map_err(|reason| fail(FetchError::JwksUriNotAllowed(document.jwks_uri, reason)))
    }

    /// GETs a JSON document within [`FETCH_TIMEOUT`] and [`MAX_DOCUMENT_BYTES`].
    async fn fetch_json<T: DeserializeOwned>(&self, url: &Url) -> Result<T, OidcError> {
        let fail = |failure| OidcError::Fetch {
            url: url.to_string(),
            failure,
        };
        let mut response = self
            .http_client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.fetch_timeout)
            .send()
            .await
            .map_err(|error| fail(FetchError::Request(error)))?;
        if !response.status().is_success() {
            return Err(fail(FetchError::Status(response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| fail(FetchError::Request(error)))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(fail(FetchError::TooLarge));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|error| fail(FetchError::Json(error)))
    }
}

impl KeySet {
    /// The key named by `key_id`; a token without one may use the only key there is.
    fn find(&self, key_id: Option<&str>) -> Option<Arc<VerificationKey>> {
        match key_id {
            Some(key_id) => self
                .keys
                .iter()
                .find(|key| key.key_id.as_deref() == Some(key_id))
                .cloned(),
            None => match self.keys.as_slice() {
                [only] => Some(Arc::clone(only)),
                _ => None,
            },
        }
    }
}

/// Reads the header without trusting it: size, shape, an allowed `alg`, no `crit`.
fn read_header(token: &str) -> Result<(Algorithm, Option<String>), OidcError> {
    let malformed = |reason: &str| OidcError::MalformedToken(reason.to_owned());
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed("longer than 16 KiB"));
    }
    if !Verifier::looks_like_jwt(token) {
        return Err(malformed("not three base64url parts"));
    }
    let encoded_header = token.split('.').next().unwrap_or_default();
    let header_bytes = URL_SAFE_NO_PAD
        .decode(encoded_header)
        .map_err(|_| malformed("header is not base64url"))?;
    let header: TokenHeader = serde_json::from_slice(&header_bytes)
        .map_err(|_| malformed("header is not a JSON object with a string alg"))?;
    if header.crit.is_some() {
        return Err(malformed("critical header extensions are not supported"));
    }
    let algorithm = match header.alg.as_str() {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        _ => return Err(OidcError::DisallowedAlgorithm(header.alg)),
    };
    Ok((algorithm, header.kid))
}

/// Turns one JWKS entry into a key we verify with, or says why it is not one.
fn verification_key(entry: &Value) -> Result<VerificationKey, &'static str> {
    let jwk = JsonWebKey::deserialize(entry).map_err(|_| "not a JWK")?;
    if jwk
        .public_key_use
        .as_deref()
        .is_some_and(|usage| usage != "sig")
    {
        return Err("not for signatures");
    }
    if let Some(operations) = &jwk.key_ops
        && !operations.iter().any(|operation| operation == "verify")
    {
        return Err("key_ops do not include verify");
    }
    let algorithm = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => Algorithm::RS256,
        ("EC", Some("P-256")) => Algorithm::ES256,
        ("OKP", Some("Ed25519")) => Algorithm::EdDSA,
        _ => return Err("unsupported key type or curve"),
    };
    if let Some(declared) = &jwk.alg
        && declared.parse::<Algorithm>().ok() != Some(algorithm)
    {
        return Err("alg disagrees with the key type");
    }
    let missing = "a key parameter is missing or not base64url";
    let decoding_key = match algorithm {
        Algorithm::RS256 => {
            let (Some(n), Some(e)) = (&jwk.n, &jwk.e) else {
                return Err(missing);
            };
            DecodingKey::from_rsa_components(n, e).map_err(|_| missing)?
        }
        Algorithm::ES256 => {
            let (Some(x), Some(y)) = (&jwk.x, &jwk.y) else {
                return Err(missing);
            };
            DecodingKey::from_ec_components(x, y).map_err(|_| missing)?
        }
        _ => {
            let Some(x) = &jwk.x else {
                return Err(missing);
            };
            DecodingKey::from_ed_components(x).map_err(|_| missing)?
        }
    };
    // Sizes are checked here, not left to verification: jsonwebtoken's Ed25519 verifier
    // slices the first 32 bytes of the key and would panic on a shorter one.
    let right_size = match decoding_key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, .. } => {
            let significant = n.iter().skip_while(|byte| **byte == 0).count();
            RSA_MODULUS_BYTES.contains(&significant)
        }
        DecodingKeyKind::SecretOrDer(bytes) => match algorithm {
            // An uncompressed SEC1 point: 0x04, x, y.
            Algorithm::ES256 => bytes.len() == 65,
            _ => bytes.len() == 32,
        },
    };
    if !right_size {
        return Err("key is the wrong size (RSA must be 2048 to 4096 bits)");
    }
    Ok(VerificationKey {
        key_id: jwk.kid,
        algorithm,
        decoding_key,
    })
}

/// An `https://` URL, or `http://` to a loopback address (for tests and local development).
fn parse_allowed_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|error| format!("{text:?} is not a URL: {error}"))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback());
    match url.scheme() {
        "https" if !host.is_empty() => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(format!(
            "{text:?} must be https:// (or http:// to a loopback address)"
        )),
    }
}

/// A NumericDate claim as whole seconds; fractions are rounded as jsonwebtoken does.
fn seconds_since_epoch(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|seconds| seconds.is_finite())
            .map(|seconds| seconds.round() as i64)
    })
}

/// An error and its causes on one line, for logs.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex as StdMutex, OnceLock};

    use axum::Json;
    use axum::extract::State;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    use jsonwebtoken::{EncodingKey, Header};
    use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::rand_core::{OsRng, RngCore};
    use rsa::traits::PublicKeyParts;
    use serde_json::json;

    use super::*;

    const AUDIENCE: &str = "airlock";
    const SUBJECT: &str = "user-1234";
    const ACCEPTED: &str = "accepted";

    fn base64url(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).expect("clock fits i64")
    }

    /// A key the tests sign with, and the JWK the test issuer publishes for it.
    struct TestKey {
        kid: String,
        algorithm: Algorithm,
        encoding_key: EncodingKey,
        jwk: Value,
    }

    /// RSA generation is slow: one key per test binary.
    fn rsa_private_key() -> &'static rsa::RsaPrivateKey {
        static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut OsRng, 2048).expect("generate RSA key"))
    }

    fn rsa_key(kid: &str) -> TestKey {
        let private_key = rsa_private_key();
        let der = private_key.to_pkcs1_der().expect("PKCS#1 DER");
        TestKey {
            kid: kid.to_owned(),
            algorithm: Algorithm::RS256,
            encoding_key: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                "n": base64url(private_key.n().to_bytes_be()),
                "e": base64url(private_key.e().to_bytes_be()),
            }),
        }
    }

    fn ec_key(kid: &str) -> TestKey {
        let signing_key = p256::ecdsa::SigningKey::random(&mut OsRng);
        let der = p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&signing_key).expect("PKCS#8 DER");
        let point = signing_key.verifying_key().to_encoded_point(false);
        TestKey {
            kid: kid.to_owned(),
            algorithm: Algorithm::ES256,
            encoding_key: EncodingKey::from_ec_der(der.as_bytes()),
            jwk: json!({
                "kty": "EC", "kid": kid, "crv": "P-256",
                "x": base64url(point.x().expect("x")),
                "y": base64url(point.y().expect("y")),
            }),
        }
    }

    fn ed25519_key(kid: &str) -> TestKey {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let signing_key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let der = signing_key.to_pkcs8_der().expect("PKCS#8 DER");
        TestKey {
            kid: kid.to_owned(),
            algorithm: Algorithm::EdDSA,
            encoding_key: EncodingKey::from_ed_der(der.as_bytes()),
            jwk: json!({
                "kty": "OKP", "kid": kid, "crv": "Ed25519", "alg": "EdDSA",
                "x": base64url(signing_key.verifying_key().as_bytes()),
            }),
        }
    }

    fn jwks(keys: &[&TestKey]) -> Value {
        json!({ "keys": keys.iter().map(|key| key.jwk.clone()).collect::<Vec<_>>() })
    }

    fn sign(key: &TestKey, claims: &Value) -> String {
        sign_with_kid(key, Some(&key.kid), claims)
    }

    fn sign_with_kid(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(key.algorithm);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key.encoding_key).expect("sign token")
    }

    /// A token with any header, its signature made by `signer` over `header.payload`.
    fn forge(header: &Value, claims: &Value, signer: &dyn Fn(&[u8]) -> String) -> String {
        let message = format!(
            "{}.{}",
            base64url(header.to_string()),
            base64url(claims.to_string())
        );
        format!("{message}.{}", signer(message.as_bytes()))
    }

    fn signer(key: &EncodingKey, algorithm: Algorithm) -> impl Fn(&[u8]) -> String {
        move |message| jsonwebtoken::crypto::sign(message, key, algorithm).expect("sign")
    }

    #[derive(Default)]
    struct IssuerState {
        base_url: String,
        jwks: StdMutex<Value>,
        /// Served instead of the right discovery document when set.
        discovery: StdMutex<Option<Value>>,
        /// Answers JWKS requests with this status and no body when set.
        jwks_failure: StdMutex<Option<StatusCode>>,
        jwks_requests: AtomicUsize,
        discovery_requests: AtomicUsize,
    }

    /// An issuer on 127.0.0.1 serving a discovery document and a JWKS, counting requests.
    struct TestIssuer {
        state: Arc<IssuerState>,
    }

    impl TestIssuer {
        async fn start(keys: &[&TestKey]) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let address = listener.local_addr().expect("local address");
            let state = Arc::new(IssuerState {
                base_url: format!("http://{address}"),
                jwks: StdMutex::new(jwks(keys)),
                ..IssuerState::default()
            });
            let app = axum::Router::new()
                .route("/.well-known/openid-configuration", get(serve_discovery))
                .route("/jwks", get(serve_jwks))
                .with_state(Arc::clone(&state));
            tokio::spawn(async move { axum::serve(listener, app).await });
            Self { state }
        }

        fn issuer(&self) -> String {
            self.state.base_url.clone()
        }

        fn config(&self) -> OidcConfig {
            OidcConfig {
                jwks_url: Some(format!("{}/jwks", self.state.base_url)),
                ..OidcConfig::new(self.issuer(), AUDIENCE)
            }
        }

        fn verifier(&self) -> Verifier {
            Verifier::new(self.config()).expect("valid config")
        }

        fn publish(&self, document: Value) {
            *self.state.jwks.lock().expect("lock") = document;
        }

        fn fail_jwks_with(&self, status: Option<StatusCode>) {
            *self.state.jwks_failure.lock().expect("lock") = status;
        }

        fn jwks_requests(&self) -> usize {
            self.state.jwks_requests.load(Ordering::SeqCst)
        }

        fn discovery_requests(&self) -> usize {
            self.state.discovery_requests.load(Ordering::SeqCst)
        }

        /// Claims every check accepts, valid for ten minutes.
        fn claims(&self) -> Value {
            json!({
                "iss": self.issuer(), "aud": AUDIENCE, "sub": SUBJECT,
                "iat": now(), "exp": now() + 600,
            })
        }

        /// `claims()` with `patch` applied: a `null` removes the claim.
        fn claims_with(&self, patch: &Value) -> Value {
            let mut claims = self.claims();
            for (name, value) in patch.as_object().expect("patch is an object") {
                let object = claims.as_object_mut().expect("claims are an object");
                match value {
                    Value::Null => object.remove(name),
                    _ => object.insert(name.clone(), value.clone()),
                };
            }
            claims
        }
    }

    async fn serve_discovery(State(state): State<Arc<IssuerState>>) -> Json<Value> {
        state.discovery_requests.fetch_add(1, Ordering::SeqCst);
        let jwks_uri = format!("{}/jwks", state.base_url);
        let right = json!({"issuer": state.base_url, "jwks_uri": jwks_uri});
        let replacement = state.discovery.lock().expect("lock").clone();
        Json(replacement.unwrap_or(right))
    }

    async fn serve_jwks(State(state): State<Arc<IssuerState>>) -> Response {
        state.jwks_requests.fetch_add(1, Ordering::SeqCst);
        if let Some(status) = *state.jwks_failure.lock().expect("lock") {
            return status.into_response();
        }
        Json(state.jwks.lock().expect("lock").clone()).into_response()
    }

    /// Moves tokio's clock (which the refresh throttle and key age read) without sleeping.
    async fn advance_clock(by: Duration) {
        tokio::time::pause();
        tokio::time::advance(by).await;
        tokio::time::resume();
    }

    /// What became of a token: `ACCEPTED`, or a short name for why it was refused, such as
    /// `UnknownKey`, `ExpiredSignature` (jsonwebtoken's reason) or `Fetch(Status)`.
    fn outcome(result: &Result<Identity, OidcError>) -> String {
        let variant = |debug: String| debug.split(['(', ' ']).next().unwrap_or("").to_owned();
        match result {
            Ok(_) => ACCEPTED.to_owned(),
            Err(OidcError::Rejected(error)) => format!("{:?}", error.kind()).replace('"', ""),
            Err(OidcError::InvalidClaim { claim, .. }) => format!("InvalidClaim({claim})"),
            Err(OidcError::Fetch { failure, .. }) => {
                format!("Fetch({})", variant(format!("{failure:?}")))
            }
            Err(error) => variant(format!("{error:?}")),
        }
    }

    /// The header and payload of a token as text, for assertion messages.
    fn readable(token: &str) -> String {
        let decode = |part: &str| match URL_SAFE_NO_PAD.decode(part) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => part.chars().take(40).collect(),
        };
        token
            .split('.')
            .take(2)
            .map(decode)
            .collect::<Vec<_>>()
            .join(" . ")
    }

    /// Verifies `token` and asserts what became of it.
    async fn check(verifier: &Verifier, token: &str, expected: &str) {
        let result = verifier.verify(token).await;
        assert_eq!(
            outcome(&result),
            expected,
            "{}: {result:?}",
            readable(token)
        );
    }

    #[test]
    fn verifier_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Verifier>();
    }

    #[tokio::test]
    async fn accepts_a_token_from_each_key_type() {
        let keys = [rsa_key("rsa"), ec_key("ec"), ed25519_key("ed")];
        let issuer = TestIssuer::start(&keys.iter().collect::<Vec<_>>()).await;
        let verifier = issuer.verifier();
        for key in &keys {
            let claims = issuer.claims();
            let identity = verifier.verify(&sign(key, &claims)).await;
            let expected = Identity {
                issuer: issuer.issuer(),
                subject: SUBJECT.to_owned(),
                name: None,
                groups: Vec::new(),
                scopes: None,
                expires_at: claims["exp"].as_i64().expect("exp"),
            };
            assert_eq!(identity.expect(&key.kid), expected, "{}", key.kid);
        }
        assert_eq!(issuer.jwks_requests(), 1, "keys are cached");
    }

    #[tokio::test]
    async fn maps_claims_to_an_identity() {
        let key = ec_key("ec");
        let issuer = TestIssuer::start(&[&key]).await;
        let verifier = issuer.verifier();
        let identity = async |verifier: &Verifier, patch: Value| {
            let token = sign(&key, &issuer.claims_with(&patch));
            verifier.verify(&token).await.expect("accepted")
        };

        for (preferred_username, email, name) in [
            (json!(null), json!(null), None),
            (json!("ada"), json!("ada@x"), Some("ada")),
            (json!(null), json!("ada@x"), Some("ada@x")),
            (json!(""), json!("ada@x"), Some("ada@x")),
            (json!(7), json!(null), None),
        ] {
            let patch = json!({"preferred_username": preferred_username, "email": email});
            let found = identity(&verifier, patch).await.name;
            assert_eq!(found.as_deref(), name, "{preferred_username} {email}");
        }

        for (groups, expected) in [
            (json!(null), vec![]),
            (json!([]), vec![]),
            (json!(["ops", "dev"]), vec!["ops", "dev"]),
            (json!("ops"), vec!["ops"]),
        ] {
            let found = identity(&verifier, json!({ "groups": groups })).await;
            assert_eq!(found.groups, expected, "{groups}");
        }
        let roles_config = OidcConfig {
            groups_claim: "roles".to_owned(),
            ..issuer.config()
        };
        let roles_verifier = Verifier::new(roles_config).expect("valid config");
        let patch = json!({"roles": ["admin"], "groups": ["ops"]});
        assert_eq!(identity(&verifier, patch.clone()).await.groups, ["ops"]);
        assert_eq!(identity(&roles_verifier, patch).await.groups, ["admin"]);

        for (scope, expected) in [
            (json!(null), None),
            (json!("read  write"), Some(vec!["read", "write"])),
            (json!(""), Some(vec![])),
        ] {
            let found = identity(&verifier, json!({ "scope": scope })).await;
            assert_eq!(
                found.scopes,
                expected.map(|s| s.iter().map(|s| s.to_string()).collect())
            );
        }
    }

    #[tokio::test]
    async fn refuses_tokens_with_wrong_claims() {
        let key = ed25519_key("ed");
        let issuer = TestIssuer::start(&[&key]).await;
        let verifier = issuer.verifier();
        let issuer_with_slash = format!("{}/", issuer.issuer());
        for (patch, expected) in [
            (json!({}), ACCEPTED),
            (json!({"iss": issuer_with_slash}), "InvalidIssuer"),
            (json!({"iss": "https://evil.example"}), "InvalidIssuer"),
            (json!({"iss": [issuer.issuer()]}), "InvalidClaim(iss)"),
            (json!({"iss": null}), "MissingRequiredClaim(iss)"),
            (json!({"aud": null}), "MissingRequiredClaim(aud)"),
            (json!({"aud": "someone-else"}), "InvalidAudience"),
            (json!({"aud": ["someone-else", AUDIENCE]}), ACCEPTED),
            (json!({"aud": ["someone-else"]}), "InvalidAudience"),
            (json!({"aud": []}), "InvalidAudience"),
            (json!({"exp": null}), "MissingRequiredClaim(exp)"),
            (json!({"exp": "tomorrow"}), "MissingRequiredClaim(exp)"),
            (json!({"sub": null}), "MissingRequiredClaim(sub)"),
            (json!({"sub": ""}), "InvalidClaim(sub)"),
            (json!({"groups": 42}), "InvalidClaim(groups)"),
            (json!({"groups": ["ops", 1]}), "InvalidClaim(groups)"),
            (json!({"scope": ["read"]}), "InvalidClaim(scope)"),
        ] {
            let token = sign(&key, &issuer.claims_with(&patch));
            check(&verifier, &token, expected).await;
        }
    }

    #[tokio::test]
    async fn time_claims_are_checked_with_the_leeway() {
        let key = ec_key("ec");
        let issuer = TestIssuer::start(&[&key]).await;
        let config = OidcConfig {
            leeway: Duration::from_secs(60),
            ..issuer.config()
        };
        let verifier = Verifier::new(config).expect("valid config");
        for (patch, expected) in [
            (json!({"exp": now() - 120}), "ExpiredSignature"),
            (json!({"exp": now() - 30}), ACCEPTED),
            (json!({"nbf": now() + 120}), "ImmatureSignature"),
            (json!({"nbf": now() + 30}), ACCEPTED),
            (json!({"iat": now() + 120}), "InvalidClaim(iat)"),
            (json!({"iat": now() + 30}), ACCEPTED),
            (json!({"iat": "now"}), "InvalidClaim(iat)"),
        ] {
            let token = sign(&key, &issuer.claims_with(&patch));
            check(&verifier, &token, expected).await;
        }
    }

    #[tokio::test]
    async fn refuses_algorithm_tricks() {
        let rsa = rsa_key("rsa");
        let ec = ec_key("ec");
        let issuer = TestIssuer::start(&[&rsa, &ec]).await;
        let verifier = issuer.verifier();
        let claims = issuer.claims();
        let by_rsa = signer(&rsa.encoding_key, Algorithm::RS256);
        let by_ec = signer(&ec.encoding_key, Algorithm::ES256);
        let forged = |alg: &str, kid: &str, signer: &dyn Fn(&[u8]) -> String| {
            let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
            forge(&header, &claims, signer)
        };
        let hs256 = |secret: &[u8]| {
            let secret = EncodingKey::from_secret(secret);
            forged("HS256", "rsa", &signer(&secret, Algorithm::HS256))
        };
        let public_key = rsa_private_key().to_public_key();
        let pkcs1_der = public_key.to_pkcs1_der().expect("DER");
        let spki_der = public_key.to_public_key_der().expect("DER");
        let pkcs1_pem = public_key.to_pkcs1_pem(LineEnding::LF).expect("PEM");
        let spki_pem = public_key.to_public_key_pem(LineEnding::LF).expect("PEM");
        let jwk_n = rsa.jwk["n"].as_str().expect("n");
        let crit = json!({"alg": "RS256", "kid": "rsa", "crit": ["exp"], "exp": 1});

        check(&verifier, &sign(&rsa, &claims), ACCEPTED).await;
        for token in [
            forged("none", "rsa", &by_rsa),
            forged("None", "rsa", &by_rsa),
            forged("RS384", "rsa", &by_rsa),
            forged("PS256", "rsa", &by_rsa),
            // Algorithm confusion: HS256 keyed with the RSA public key, however encoded.
            hs256(pkcs1_der.as_bytes()),
            hs256(spki_der.as_bytes()),
            hs256(pkcs1_pem.as_bytes()),
            hs256(spki_pem.as_bytes()),
            hs256(jwk_n.as_bytes()),
        ] {
            check(&verifier, &token, "DisallowedAlgorithm").await;
        }
        for token in [
            forged("RS256", "ec", &by_rsa),
            forged("ES256", "rsa", &by_ec),
        ] {
            check(&verifier, &token, "AlgorithmMismatch").await;
        }
        for token in [
            forged("none", "rsa", &|_| String::new()),
            forge(&json!({"alg": 256, "kid": "rsa"}), &claims, &by_rsa),
            forge(&crit, &claims, &by_rsa),
        ] {
            check(&verifier, &token, "MalformedToken").await;
        }
    }

    #[tokio::test]
    async fn refuses_tampered_tokens() {
        let keys = [rsa_key("rsa"), ec_key("ec"), ed25519_key("ed")];
        let issuer = TestIssuer::start(&keys.iter().collect::<Vec<_>>()).await;
        let verifier = issuer.verifier();
        let admin = base64url(issuer.claims_with(&json!({"sub": "admin"})).to_string());
        for key in &keys {
            let token = sign(key, &issuer.claims());
            check(&verifier, &token, ACCEPTED).await;
            let (message, signature) = token.rsplit_once('.').expect("signature");
            let (header, _) = message.split_once('.').expect("payload");
            let mut flipped = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
            flipped[10] ^= 0x01;
            let impostor = match key.algorithm {
                Algorithm::RS256 => sign(&ec_key(&key.kid), &issuer.claims()),
                _ => sign(&ed25519_key(&key.kid), &issuer.claims()),
            };
            let (_, impostor_signature) = impostor.rsplit_once('.').expect("signature");
            for tampered in [
                format!("{header}.{admin}.{signature}"),
                format!("{message}.{}", base64url(&flipped)),
                format!("{message}.{impostor_signature}"),
            ] {
                check(&verifier, &tampered, "InvalidSignature").await;
            }
        }
    }

    #[tokio::test]
    async fn refuses_malformed_tokens_without_fetching() {
        let key = rsa_key("rsa");
        let issuer = TestIssuer::start(&[&key]).await;
        let verifier = issuer.verifier();
        let good = sign(&key, &issuer.claims());
        let (_, payload_and_signature) = good.split_once('.').expect("dot");
        let padding = json!({"padding": "x".repeat(MAX_TOKEN_BYTES)});
        for token in [
            String::new(),
            format!("alk_{}", "0a".repeat(32)),
            "one.two".to_owned(),
            format!("{good}.extra"),
            good.replacen('.', "..", 1),
            format!("{good}="),
            format!("!{good}"),
            format!("a{good}"),
            format!("{}.{payload_and_signature}", base64url("not json")),
            format!("{}.{payload_and_signature}", base64url("[1,2]")),
            sign(&key, &issuer.claims_with(&padding)),
        ] {
            check(&verifier, &token, "MalformedToken").await;
        }
        assert_eq!(issuer.jwks_requests() + issuer.discovery_requests(), 0);
    }

    #[test]
    fn looks_like_jwt_tells_jwts_from_api_tokens() {
        let api_token = format!("alk_{}", "0a".repeat(32));
        for (token, expected) in [
            ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", true),
            ("a.b.c", true),
            ("a-_0.b.c", true),
            (api_token.as_str(), false),
            ("", false),
            ("a.b", false),
            ("a.b.", false),
            ("a..c", false),
            ("a.b.c.d", false),
            ("a.b.c=", false),
            ("a.b+.c", false),
            ("Bearer a.b.c", false),
        ] {
            assert_eq!(Verifier::looks_like_jwt(token), expected, "{token:?}");
        }
    }

    #[tokio::test]
    async fn only_signature_keys_of_allowed_types_are_used() {
        let rsa = rsa_key("rsa");
        let ed = ed25519_key("ed");
        let variant = |key: &TestKey, kid: &str, changes: Value| {
            let mut jwk = key.jwk.clone();
            jwk["kid"] = json!(kid);
            for (name, value) in changes.as_object().expect("object") {
                jwk[name] = value.clone();
            }
            jwk
        };
        let issuer = TestIssuer::start(&[]).await;
        issuer.publish(json!({ "keys": [
            rsa.jwk,
            variant(&rsa, "use-enc", json!({"use": "enc"})),
            variant(&rsa, "ops-encrypt", json!({"key_ops": ["encrypt"]})),
            variant(&rsa, "alg-rs384", json!({"alg": "RS384"})),
            variant(&rsa, "alg-es256", json!({"alg": "ES256"})),
            variant(&rsa, "rsa-1024", json!({"n": base64url([0xffu8; 128])})),
            variant(&rsa, "rsa-8192", json!({"n": base64url([0xffu8; 1024])})),
            variant(&ed, "ed25519-short", json!({"x": base64url([7u8; 16])})),
            variant(&ed, "ed448", json!({"crv": "Ed448"})),
            {"kty": "oct", "kid": "hmac", "k": base64url(b"secret")},
            {"kty": 5, "kid": "garbage"},
            "not even an object",
        ]}));
        let verifier = issuer.verifier();
        let claims = issuer.claims();
        let named = |key: &TestKey, kid: &str| sign_with_kid(key, Some(kid), &claims);

        check(&verifier, &sign(&rsa, &claims), ACCEPTED).await;
        for kid in [
            "use-enc",
            "ops-encrypt",
            "alg-rs384",
            "alg-es256",
            "rsa-1024",
            "rsa-8192",
        ] {
            check(&verifier, &named(&rsa, kid), "UnknownKey").await;
        }
        for kid in ["ed25519-short", "ed448"] {
            check(&verifier, &named(&ed, kid), "UnknownKey").await;
        }
        // A token without a kid may use the only usable key...
        check(&verifier, &sign_with_kid(&rsa, None, &claims), ACCEPTED).await;
        // ...but names neither of two.
        issuer.publish(jwks(&[&rsa, &ed]));
        advance_clock(MIN_REFRESH_INTERVAL * 2).await;
        check(&verifier, &sign(&ed, &claims), ACCEPTED).await;
        check(&verifier, &sign_with_kid(&rsa, None, &claims), "UnknownKey").await;
    }

    #[tokio::test]
    async fn rotation_refetches_once_and_throttles_unknown_kids() {
        let key_a = rsa_key("key-a");
        let key_b = ec_key("key-b");
        let issuer = TestIssuer::start(&[&key_a]).await;
        let verifier = issuer.verifier();
        let claims = issuer.claims();
        let random_kid = |n: u32| sign_with_kid(&key_b, Some(&format!("random-{n}")), &claims);

        check(&verifier, &sign(&key_a, &claims), ACCEPTED).await;
        assert_eq!(issuer.jwks_requests(), 1);

        issuer.publish(jwks(&[&key_b]));
        advance_clock(MIN_REFRESH_INTERVAL + Duration::from_secs(1)).await;
        check(&verifier, &sign(&key_b, &claims), ACCEPTED).await;
        assert_eq!(issuer.jwks_requests(), 2, "one refetch for the new kid");

        for n in 0..5 {
            check(&verifier, &random_kid(n), "UnknownKey").await;
        }
        check(&verifier, &sign(&key_a, &claims), "UnknownKey").await;
        assert_eq!(issuer.jwks_requests(), 2, "no refetch within the interval");

        advance_clock(MIN_REFRESH_INTERVAL + Duration::from_secs(1)).await;
        check(&verifier, &random_kid(99), "UnknownKey").await;
        assert_eq!(issuer.jwks_requests(), 3, "the interval has passed");
    }

    #[tokio::test]
    async fn concurrent_first_verifications_fetch_once() {
        let key = ed25519_key("ed");
        let issuer = TestIssuer::start(&[&key]).await;
        let verifier = Arc::new(issuer.verifier());
        let token = sign(&key, &issuer.claims());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let verifier = Arc::clone(&verifier);
            let token = token.clone();
            tasks.spawn(async move { verifier.verify(&token).await });
        }
        while let Some(result) = tasks.join_next().await {
            result.expect("task").expect("accepted");
        }
        assert_eq!(issuer.jwks_requests(), 1);
    }

    #[tokio::test]
    async fn discovery_finds_the_jwks() {
        let key = ec_key("ec");
        let issuer = TestIssuer::start(&[&key]).await;
        let discovering = || Verifier::new(OidcConfig::new(issuer.issuer(), AUDIENCE));
        let verifier = discovering().expect("valid config");
        let token = sign(&key, &issuer.claims());
        check(&verifier, &token, ACCEPTED).await;
        check(&verifier, &token, ACCEPTED).await;
        assert_eq!(issuer.discovery_requests(), 1);
        assert_eq!(issuer.jwks_requests(), 1);

        // A discovery document must name our issuer and an allowed jwks_uri.
        let jwks_uri = format!("{}/jwks", issuer.issuer());
        let wrong_issuer = json!({"issuer": "https://evil.example", "jwks_uri": jwks_uri});
        let plain_http = json!({"issuer": issuer.issuer(), "jwks_uri": "http://192.0.2.1/"});
        let no_jwks_uri = json!({"issuer": issuer.issuer()});
        for (document, expected) in [
            (wrong_issuer, "Fetch(IssuerMismatch)"),
            (plain_http, "Fetch(JwksUriNotAllowed)"),
            (no_jwks_uri, "Fetch(Json)"),
        ] {
            *issuer.state.discovery.lock().expect("lock") = Some(document);
            check(&discovering().expect("valid config"), &token, expected).await;
        }
        assert_eq!(
            issuer.jwks_requests(),
            1,
            "bad discovery documents lead nowhere"
        );
    }

    #[tokio::test]
    async fn failed_fetches_are_errors_and_keep_cached_keys() {
        let key = ec_key("ec");
        let rotated = ec_key("rotated");
        let issuer = TestIssuer::start(&[&key]).await;
        let verifier = issuer.verifier();
        let token = sign(&key, &issuer.claims());
        let rotated_token = sign(&rotated, &issuer.claims());
        check(&verifier, &token, ACCEPTED).await;
        let refetch_fails_keeping_keys = async |expected: &str| {
            advance_clock(MIN_REFRESH_INTERVAL * 2).await;
            check(&verifier, &rotated_token, expected).await;
            check(&verifier, &token, ACCEPTED).await;
        };

        issuer.fail_jwks_with(Some(StatusCode::INTERNAL_SERVER_ERROR));
        refetch_fails_keeping_keys("Fetch(Status)").await;
        issuer.fail_jwks_with(None);
        let oversized = json!({"keys": [], "padding": "x".repeat(MAX_DOCUMENT_BYTES)});
        for (document, expected) in [
            (oversized, "Fetch(TooLarge)"),
            (json!({"keys": "none"}), "Fetch(Json)"),
            (json!({"keys": []}), "Fetch(NoUsableKeys)"),
        ] {
            issuer.publish(document);
            refetch_fails_keeping_keys(expected).await;
        }
        assert_eq!(issuer.jwks_requests(), 5);

        // Keys past their age are refetched on use, and kept if that fails...
        advance_clock(MAX_KEY_AGE * 2).await;
        check(&verifier, &token, ACCEPTED).await;
        assert_eq!(issuer.jwks_requests(), 6);
        // ...until the issuer answers again: then a withdrawn key stops working.
        issuer.publish(jwks(&[&rotated]));
        advance_clock(MAX_KEY_AGE * 2).await;
        check(&verifier, &token, "UnknownKey").await;
        check(&verifier, &rotated_token, ACCEPTED).await;
    }

    #[tokio::test]
    async fn unreachable_or_silent_jwks_is_an_error_not_a_hang() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let closed_url = format!("http://{}/jwks", closed.local_addr().expect("address"));
        drop(closed);
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let silent_url = format!("http://{}/jwks", silent.local_addr().expect("address"));
        tokio::spawn(async move {
            // Accepts connections and never answers.
            let mut held = Vec::new();
            while let Ok((connection, _)) = silent.accept().await {
                held.push(connection);
            }
        });
        let key = ec_key("ec");
        let issuer = "https://issuer.example";
        let claims = json!({"iss": issuer, "aud": AUDIENCE, "sub": SUBJECT, "exp": now() + 600});
        for jwks_url in [closed_url, silent_url] {
            let config = OidcConfig {
                jwks_url: Some(jwks_url),
                ..OidcConfig::new(issuer, AUDIENCE)
            };
            let mut verifier = Verifier::new(config).expect("valid config");
            verifier.fetch_timeout = Duration::from_millis(300);
            check(&verifier, &sign(&key, &claims), "Fetch(Request)").await;
        }
    }

    #[test]
    fn configuration_is_checked_up_front() {
        let issuer_allowed =
            |issuer: &str| Verifier::new(OidcConfig::new(issuer, AUDIENCE)).is_ok();
        for (issuer, allowed) in [
            ("https://issuer.example", true),
            ("https://issuer.example/realms/x/", true),
            ("http://127.0.0.1:8080", true),
            ("http://localhost:8080", true),
            ("http://[::1]:8080", true),
            ("http://issuer.example", false),
            ("http://10.0.0.1", false),
            ("ftp://issuer.example", false),
            ("issuer.example", false),
        ] {
            assert_eq!(issuer_allowed(issuer), allowed, "{issuer}");
        }

        let base = || OidcConfig::new("https://issuer.example", AUDIENCE);
        let jwks_allowed = |url: &str| {
            let jwks_url = Some(url.to_owned());
            Verifier::new(OidcConfig { jwks_url, ..base() }).is_ok()
        };
        for (jwks_url, allowed) in [
            ("https://keys.example/jwks", true),
            ("http://127.0.0.1:8080/jwks", true),
            ("http://keys.example/jwks", false),
            ("file:///etc/jwks.json", false),
        ] {
            assert_eq!(jwks_allowed(jwks_url), allowed, "{jwks_url}");
        }

        let leeway = |seconds| OidcConfig {
            leeway: Duration::from_secs(seconds),
            ..base()
        };
        assert!(Verifier::new(leeway(300)).is_ok());
        for config in [
            leeway(301),
            OidcConfig {
                audience: String::new(),
                ..base()
            },
            OidcConfig {
                groups_claim: String::new(),
                ..base()
            },
        ] {
            let result = Verifier::new(config.clone());
            assert!(
                matches!(result, Err(OidcError::InvalidConfig(_))),
                "{config:?}"
            );
        }
    }
}

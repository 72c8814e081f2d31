//! Bearer JWT verification (RFC 8725, OWASP ASVS 9.1) and HS256 minting for the `token` command.
//!
//! Keys come from configuration only, each with its algorithm pinned there: an HS secret
//! (`auth.jwt_hs_algorithm`), a PEM public key (`auth.jwt_public_key_algorithm`), a JWKS file and
//! a JWKS URL (each JWK's algorithm is its `alg` member, or inferred from its key type, and must
//! be listed in `auth.jwks_algorithms`). A token's header picks a key by `kid`, and its `alg`
//! must equal that key's pinned algorithm, so `none`, algorithm confusion (HS256 signed with an
//! RSA public key) and key injection are refused. Headers that point at keys (`jku`, `x5u`,
//! `jwk`, `x5c`) are refused outright, never followed; so is any `crit` extension.
//!
//! The JWKS URL is fetched at start and kept; an unknown `kid` triggers at most one refetch per
//! `auth.jwks_refresh_min_secs`, and keys older than `auth.jwks_max_age_secs` are refreshed in
//! the background. Fetches have a timeout and a body cap.
//!
//! Claims: `exp` and `sub` are required and typed (a string `exp`, `nbf` or `iat` is refused),
//! `nbf` is honoured, `iss`/`aud` are checked when configured, all with `auth.leeway_secs`;
//! `auth.jwt_typ` optionally requires a `typ` (e.g. `at+jwt`, RFC 9068). Token contents are
//! never logged.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::AuthError;
use super::config::{AuthConfig, HmacAlgorithm};
use super::{Principal, Role};

const MAX_TOKEN_LEN: usize = 8 * 1024;
const MAX_SUB_LEN: usize = 255;
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One verification key with its pinned algorithm.
pub(crate) struct VerifyKey {
    /// `None` matches any `kid` (a single configured secret or PEM key).
    kid: Option<String>,
    pub(crate) alg: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens.
pub struct JwtVerifier {
    static_keys: Vec<VerifyKey>,
    remote: Option<RemoteJwks>,
    validation: Validation,
    role_claim: String,
    plan_claim: String,
    typ: Option<String>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("static_keys", &self.static_keys.len())
            .field("remote", &self.remote.is_some())
            .finish_non_exhaustive()
    }
}

/// The claims pixgate reads; date claims are typed so a wrong JSON type fails decoding.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[allow(dead_code)] // checked by jsonwebtoken; typed here so a string `exp` is refused
    exp: u64,
    #[allow(dead_code)] // checked by jsonwebtoken; typed here so a string `nbf` is refused
    nbf: Option<u64>,
    iat: Option<u64>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// Parses a JWS algorithm name (a JWK's `alg`).
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A PEM public key for a pinned asymmetric algorithm (start-up code).
fn pem_key(pem: &[u8], alg: Algorithm) -> Result<DecodingKey, String> {
    let key = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        _ => return Err("an HMAC algorithm takes a secret, not a PEM key".into()),
    };
    key.map_err(|e| format!("not a usable public key for {alg:?}: {e}"))
}

/// The keys of a JWKS document, each pinned to one algorithm. Keys that are not signature
/// keys, carry no `kid`, or whose algorithm is not allowed are skipped (and counted).
pub(crate) fn jwks_keys(
    doc: &[u8],
    allowed: &[Algorithm],
) -> Result<(Vec<VerifyKey>, usize), String> {
    let set: JwkSet = serde_json::from_slice(doc).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = 0;
    for jwk in &set.keys {
        match jwk_key(jwk, allowed) {
            Some(k) => keys.push(k),
            None => skipped += 1,
        }
    }
    Ok((keys, skipped))
}

fn jwk_key(jwk: &Jwk, allowed: &[Algorithm]) -> Option<VerifyKey> {
    use jsonwebtoken::jwk::PublicKeyUse;
    let kid = jwk.common.key_id.clone()?;
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        Some(a) => key_algorithm(a)?,
        // No `alg` member: the first allowed algorithm of the key's family.
        None => *allowed
            .iter()
            .find(|a| family_matches(&jwk.algorithm, **a))?,
    };
    if !allowed.contains(&alg) || !family_matches(&jwk.algorithm, alg) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey {
        kid: Some(kid),
        alg,
        key,
    })
}

fn key_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    parse_algorithm(&format!("{a:?}"))
}

fn family_matches(params: &AlgorithmParameters, alg: Algorithm) -> bool {
    match params {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(p) => matches!(
            (&p.curve, alg),
            (EllipticCurve::P256, Algorithm::ES256) | (EllipticCurve::P384, Algorithm::ES384)
        ),
        AlgorithmParameters::OctetKeyPair(p) => {
            p.curve == EllipticCurve::Ed25519 && alg == Algorithm::EdDSA
        }
        // Symmetric keys never come from a key set.
        AlgorithmParameters::OctetKey(_) => false,
    }
}

impl JwtVerifier {
    /// Builds the verifier from configuration; fetches the JWKS URL once. Start-up code.
    pub async fn from_config(cfg: &AuthConfig) -> Result<JwtVerifier, String> {
        let mut static_keys = Vec::new();
        if !cfg.jwt_hs256_secret.is_empty() {
            let alg = cfg.jwt_hs_algorithm.algorithm();
            static_keys.push(VerifyKey {
                kid: None,
                alg,
                key: DecodingKey::from_secret(cfg.jwt_hs256_secret.as_bytes()),
            });
        }
        if !cfg.jwt_public_key_file.is_empty() {
            let alg = cfg.jwt_public_key_algorithm.algorithm();
            let pem = std::fs::read(&cfg.jwt_public_key_file)
                .map_err(|e| format!("auth.jwt_public_key_file: {e}"))?;
            let key = pem_key(&pem, alg).map_err(|e| format!("auth.jwt_public_key_file: {e}"))?;
            static_keys.push(VerifyKey {
                kid: (!cfg.jwt_public_key_kid.is_empty()).then(|| cfg.jwt_public_key_kid.clone()),
                alg,
                key,
            });
        }
        let allowed: Vec<Algorithm> = cfg.jwks_algorithms.iter().map(|a| a.algorithm()).collect();
        if !cfg.jwks_file.is_empty() {
            let doc = std::fs::read(&cfg.jwks_file).map_err(|e| format!("auth.jwks_file: {e}"))?;
            let (keys, skipped) =
                jwks_keys(&doc, &allowed).map_err(|e| format!("auth.jwks_file: {e}"))?;
            if keys.is_empty() {
                return Err("auth.jwks_file: no usable signature key (each needs a kid and an allowed algorithm)".into());
            }
            if skipped > 0 {
                tracing::warn!(skipped, "auth.jwks_file: some keys were skipped");
            }
            static_keys.extend(keys);
        }
        let remote = if cfg.jwks_url.is_empty() {
            None
        } else {
            let remote = RemoteJwks::new(cfg, allowed)?;
            remote
                .refresh()
                .await
                .map_err(|e| format!("auth.jwks_url: initial fetch failed: {e}"))?;
            Some(remote)
        };
        if static_keys.is_empty() && remote.is_none() {
            return Err("auth: no token verification key is configured".into());
        }
        Ok(JwtVerifier {
            static_keys,
            remote,
            validation: validation(cfg),
            role_claim: cfg.role_claim.clone(),
            plan_claim: cfg.plan_claim.clone(),
            typ: (!cfg.jwt_typ.is_empty()).then(|| cfg.jwt_typ.to_ascii_lowercase()),
        })
    }

    /// Verifies `token`; returns its principal (with its `iat`, if any).
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = |m: &str| AuthError::InvalidToken(m.to_owned());
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid("token too long"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        check_header(&header, self.typ.as_deref())?;
        let mut result = self.verify_with_known_keys(token, &header);
        if matches!(result, Err(KeyMiss))
            && let (Some(remote), Some(kid)) = (&self.remote, &header.kid)
        {
            // Unknown kid: the IdP may have rotated. At most one refetch per interval.
            remote.refresh_for_unknown_kid(kid).await;
            result = self.verify_with_known_keys(token, &header);
        }
        if let Some(remote) = &self.remote {
            remote.refresh_in_background_if_stale();
        }
        let claims = result.map_err(|_| invalid("no key for this kid and algorithm"))??;
        self.principal(claims)
    }

    /// Tries the keys that match the header's `kid` and `alg`. `Err(KeyMiss)` when none does.
    fn verify_with_known_keys(
        &self,
        token: &str,
        header: &Header,
    ) -> Result<Result<Claims, AuthError>, KeyMiss> {
        let remote = self.remote.as_ref().map(RemoteJwks::keys);
        let all = self
            .static_keys
            .iter()
            .chain(remote.iter().flat_map(|k| k.iter()));
        let mut last = Err(KeyMiss);
        for k in all {
            let kid_ok = match (&k.kid, &header.kid) {
                (None, _) => true,
                (Some(mine), Some(theirs)) => mine == theirs,
                (Some(_), None) => false,
            };
            if !kid_ok || k.alg != header.alg {
                continue;
            }
            let mut validation = self.validation.clone();
            validation.algorithms = vec![k.alg];
            let r = jsonwebtoken::decode::<Claims>(token, &k.key, &validation)
                .map(|d| d.claims)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                    other => AuthError::InvalidToken(format!("{other:?}")),
                });
            if r.is_ok() {
                return Ok(r);
            }
            last = Ok(r);
        }
        last
    }

    fn principal(&self, claims: Claims) -> Result<Principal, AuthError> {
        if claims.sub.is_empty()
            || claims.sub.len() > MAX_SUB_LEN
            || claims.sub.chars().any(char::is_control)
        {
            return Err(AuthError::InvalidToken("unusable sub claim".into()));
        }
        let role = match claims.rest.get(&self.role_claim) {
            None | Some(Value::Null) => Role::Viewer,
            Some(Value::String(s)) => {
                Role::parse(s).ok_or_else(|| AuthError::InvalidToken("unknown role".into()))?
            }
            // Identity providers often send a list of roles: the highest known one wins.
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().and_then(Role::parse))
                .max()
                .unwrap_or(Role::Viewer),
            Some(_) => {
                return Err(AuthError::InvalidToken(
                    "role claim has the wrong type".into(),
                ));
            }
        };
        let plan = match claims.rest.get(&self.plan_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(s))
                if !s.is_empty()
                    && s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
            {
                Some(s.clone())
            }
            Some(_) => return Err(AuthError::InvalidToken("unusable plan claim".into())),
        };
        Ok(Principal {
            issued_at: claims.iat,
            ..Principal::jwt(claims.sub, role, plan)
        })
    }
}

/// No configured key matches the token's `kid` and `alg`.
#[derive(Debug)]
struct KeyMiss;

fn check_header(header: &Header, typ: Option<&str>) -> Result<(), AuthError> {
    let invalid = |m: &str| Err(AuthError::InvalidToken(m.to_owned()));
    // Keys are configuration, never token input (RFC 8725 §3.10).
    if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() || header.x5c.is_some()
    {
        return invalid("key-reference header");
    }
    // No critical extension is understood (RFC 7515 §4.1.11).
    if header.crit.is_some() {
        return invalid("unsupported crit header");
    }
    if let Some(want) = typ {
        let got = header.typ.as_deref().unwrap_or("").to_ascii_lowercase();
        if got != want && got.strip_prefix("application/") != Some(want) {
            return invalid("wrong typ");
        }
    }
    Ok(())
}

fn validation(cfg: &AuthConfig) -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = cfg.leeway_secs;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    if cfg.jwt_issuer.is_empty() {
        validation.iss = None;
    } else {
        validation.set_issuer(&[cfg.jwt_issuer.as_str()]);
        validation.required_spec_claims.insert("iss".into());
    }
    if cfg.jwt_audience.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&[cfg.jwt_audience.as_str()]);
        validation.required_spec_claims.insert("aud".into());
    }
    validation
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// Keys fetched from `auth.jwks_url`. The state is shared with background refreshes.
struct RemoteJwks {
    inner: Arc<RemoteInner>,
}

struct RemoteInner {
    url: http::Uri,
    client: HttpsClient,
    allowed: Vec<Algorithm>,
    timeout: Duration,
    min_interval: Duration,
    max_age: Duration,
    /// The current key set; swapped whole on refresh. Held only to clone or replace the Arc.
    keys: Mutex<Arc<Vec<VerifyKey>>>,
    /// When the keys were last fetched successfully. Held only to read or write an Instant.
    fetched: Mutex<Instant>,
    /// Serialises fetches and remembers the last attempt, for the refetch rate limit.
    attempt: tokio::sync::Mutex<Option<Instant>>,
}

impl RemoteJwks {
    fn new(cfg: &AuthConfig, allowed: Vec<Algorithm>) -> Result<RemoteJwks, String> {
        let url: http::Uri = cfg
            .jwks_url
            .parse()
            .map_err(|e| format!("auth.jwks_url: {e}"))?;
        let client = crate::outbound::https_client("auth.jwks_url")?;
        Ok(RemoteJwks {
            inner: Arc::new(RemoteInner {
                url,
                client,
                allowed,
                timeout: Duration::from_millis(cfg.jwks_timeout_ms),
                min_interval: Duration::from_secs(cfg.jwks_refresh_min_secs),
                max_age: Duration::from_secs(cfg.jwks_max_age_secs),
                keys: Mutex::new(Arc::new(Vec::new())),
                fetched: Mutex::new(Instant::now()),
                attempt: tokio::sync::Mutex::new(None),
            }),
        })
    }

    fn keys(&self) -> Arc<Vec<VerifyKey>> {
        self.inner.keys()
    }

    /// Fetches now (start-up), replacing the keys on success. Not counted against the
    /// unknown-`kid` rate limit: a key rotated in right after start must still be found.
    async fn refresh(&self) -> Result<(), String> {
        let _serial = self.inner.attempt.lock().await;
        self.inner.install(self.inner.fetch().await)
    }

    /// Refetches for an unknown `kid`, unless a fetch happened within the minimum interval.
    /// Concurrent callers wait for one fetch instead of each starting their own.
    async fn refresh_for_unknown_kid(&self, kid: &str) {
        if self.keys().iter().any(|k| k.kid.as_deref() == Some(kid)) {
            return; // another request's refresh already brought it
        }
        let mut last = self.inner.attempt.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.inner.min_interval) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.inner.install(self.inner.fetch().await) {
            tracing::warn!(error = %e, "JWKS refresh for an unknown kid failed");
        }
    }

    /// Starts a background refresh when the keys are older than `jwks_max_age_secs`; requests
    /// keep using the current keys meanwhile.
    fn refresh_in_background_if_stale(&self) {
        let inner = &self.inner;
        let age = inner
            .fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        if age < inner.max_age {
            return;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            let Ok(mut last) = inner.attempt.try_lock() else {
                return; // a fetch is running
            };
            if last.is_some_and(|t| t.elapsed() < inner.min_interval) {
                return;
            }
            *last = Some(Instant::now());
            if let Err(e) = inner.install(inner.fetch().await) {
                tracing::warn!(error = %e, "JWKS background refresh failed");
            }
        });
    }
}

impl RemoteInner {
    fn keys(&self) -> Arc<Vec<VerifyKey>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn fetch(&self) -> Result<Vec<VerifyKey>, String> {
        let req = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let work = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            if resp.status() != http::StatusCode::OK {
                return Err(format!("status {}", resp.status()));
            }
            let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            let (keys, skipped) = jwks_keys(&body, &self.allowed)?;
            if skipped > 0 {
                tracing::warn!(skipped, "JWKS: some keys were skipped");
            }
            Ok(keys)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    fn install(&self, fetched: Result<Vec<VerifyKey>, String>) -> Result<(), String> {
        let keys = fetched?;
        if keys.is_empty() {
            return Err("no usable signature key".into());
        }
        *self.keys.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        *self.fetched.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Ok(())
    }
}

/// What to put in a minted token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub sub: String,
    pub role: Role,
    pub plan: Option<String>,
    pub ttl_secs: u64,
}

/// Mints an HS256 token with the configured secret, issuer and audience (the `token` command).
pub fn mint_hs256(cfg: &AuthConfig, req: &TokenRequest) -> Result<String, String> {
    if cfg.jwt_hs256_secret.is_empty() || cfg.jwt_hs_algorithm != HmacAlgorithm::Hs256 {
        return Err("no HS256 secret is configured (auth.jwt_hs256_secret)".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::String(req.sub.clone()));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + req.ttl_secs));
    claims.insert(
        cfg.role_claim.clone(),
        Value::String(req.role.as_str().into()),
    );
    if let Some(plan) = &req.plan {
        claims.insert(cfg.plan_claim.clone(), Value::String(plan.clone()));
    }
    if !cfg.jwt_issuer.is_empty() {
        claims.insert("iss".into(), Value::String(cfg.jwt_issuer.clone()));
    }
    if !cfg.jwt_audience.is_empty() {
        claims.insert("aud".into(), Value::String(cfg.jwt_audience.clone()));
    }
    let mut header = Header::new(Algorithm::HS256);
    if !cfg.jwt_typ.is_empty() {
        header.typ = Some(cfg.jwt_typ.clone());
    }
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(cfg.jwt_hs256_secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    use super::*;
    use crate::http::error::CodeOf;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn cfg() -> AuthConfig {
        AuthConfig {
            jwt_hs256_secret: SECRET.into(),
            jwt_issuer: "https://idp.test".into(),
            jwt_audience: "pixgate".into(),
            ..AuthConfig::default()
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign_with(header: Header, claims: &Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn sign(alg: Algorithm, claims: &Value, secret: &str) -> String {
        sign_with(Header::new(alg), claims, secret)
    }

    fn good_claims() -> Value {
        json!({"sub": "u1", "exp": now() + 600, "iat": now(), "iss": "https://idp.test", "aud": "pixgate", "role": "editor", "plan": "pro"})
    }

    #[tokio::test]
    async fn minted_tokens_verify() {
        let v = JwtVerifier::from_config(&cfg()).await.unwrap();
        let t = mint_hs256(
            &cfg(),
            &TokenRequest {
                sub: "alice".into(),
                role: Role::Admin,
                plan: Some("pro".into()),
                ttl_secs: 60,
            },
        )
        .unwrap();
        let p = v.verify(&t).await.unwrap();
        assert_eq!(p.user_id, "alice");
        assert_eq!(p.role, Role::Admin);
        assert_eq!(p.plan.as_deref(), Some("pro"));
        assert!(p.issued_at.is_some());
    }

    #[tokio::test]
    async fn hostile_tokens_are_refused() {
        let v = JwtVerifier::from_config(&cfg()).await.unwrap();
        let with = |f: &dyn Fn(&mut Map<String, Value>)| {
            let mut c = good_claims().as_object().unwrap().clone();
            f(&mut c);
            sign(Algorithm::HS256, &Value::Object(c), SECRET)
        };
        let none_token = {
            let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
            let b = URL_SAFE_NO_PAD.encode(good_claims().to_string());
            format!("{h}.{b}.")
        };
        let mut jku = Header::new(Algorithm::HS256);
        jku.jku = Some("https://evil.example/jwks.json".into());
        let mut crit = Header::new(Algorithm::HS256);
        crit.crit = Some(vec!["exp".into()]);
        let cases: Vec<(&str, String, &str)> = vec![
            ("alg none", none_token, "invalid_token"),
            (
                "HS512",
                sign(Algorithm::HS512, &good_claims(), SECRET),
                "invalid_token",
            ),
            (
                "wrong secret",
                sign(
                    Algorithm::HS256,
                    &good_claims(),
                    "another-secret-another-secret-xx",
                ),
                "invalid_token",
            ),
            (
                "jku",
                sign_with(jku, &good_claims(), SECRET),
                "invalid_token",
            ),
            (
                "crit",
                sign_with(crit, &good_claims(), SECRET),
                "invalid_token",
            ),
            ("no sub", with(&|c| drop(c.remove("sub"))), "invalid_token"),
            (
                "empty sub",
                with(&|c| drop(c.insert("sub".into(), json!("")))),
                "invalid_token",
            ),
            ("no exp", with(&|c| drop(c.remove("exp"))), "invalid_token"),
            (
                "string exp",
                with(&|c| drop(c.insert("exp".into(), json!((now() + 600).to_string())))),
                "invalid_token",
            ),
            (
                "string nbf",
                with(&|c| drop(c.insert("nbf".into(), json!(now().to_string())))),
                "invalid_token",
            ),
            (
                "string iat",
                with(&|c| drop(c.insert("iat".into(), json!(now().to_string())))),
                "invalid_token",
            ),
            (
                "expired",
                with(&|c| drop(c.insert("exp".into(), json!(now() - 120)))),
                "token_expired",
            ),
            (
                "nbf future",
                with(&|c| drop(c.insert("nbf".into(), json!(now() + 600)))),
                "invalid_token",
            ),
            (
                "wrong iss",
                with(&|c| drop(c.insert("iss".into(), json!("https://evil")))),
                "invalid_token",
            ),
            ("no iss", with(&|c| drop(c.remove("iss"))), "invalid_token"),
            (
                "wrong aud",
                with(&|c| drop(c.insert("aud".into(), json!("other")))),
                "invalid_token",
            ),
            ("no aud", with(&|c| drop(c.remove("aud"))), "invalid_token"),
            (
                "unknown role",
                with(&|c| drop(c.insert("role".into(), json!("root")))),
                "invalid_token",
            ),
            (
                "odd plan",
                with(&|c| drop(c.insert("plan".into(), json!("a b")))),
                "invalid_token",
            ),
            ("garbage", "not.a.jwt".into(), "invalid_token"),
            ("huge", "a".repeat(10_000), "invalid_token"),
        ];
        for (name, token, code) in cases {
            match v.verify(&token).await {
                Ok(p) => panic!("{name}: accepted as {p:?}"),
                Err(e) => assert_eq!(e.code(), code, "{name}: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn leeway_typ_and_role_defaults() {
        let v = JwtVerifier::from_config(&cfg()).await.unwrap();
        let mut c = good_claims();
        c["exp"] = json!(now() - 10); // within the 30 s leeway
        c.as_object_mut().unwrap().remove("role");
        let p = v.verify(&sign(Algorithm::HS256, &c, SECRET)).await.unwrap();
        assert_eq!(p.role, Role::Viewer);
        c["role"] = json!(["viewer", "admin", "unknown"]);
        let p = v.verify(&sign(Algorithm::HS256, &c, SECRET)).await.unwrap();
        assert_eq!(p.role, Role::Admin);

        let typed = JwtVerifier::from_config(&AuthConfig {
            jwt_typ: "at+jwt".into(),
            ..cfg()
        })
        .await
        .unwrap();
        let plain = sign(Algorithm::HS256, &good_claims(), SECRET);
        assert_eq!(
            typed.verify(&plain).await.unwrap_err().code(),
            "invalid_token"
        );
        for typ in ["at+jwt", "application/at+JWT"] {
            let mut h = Header::new(Algorithm::HS256);
            h.typ = Some(typ.into());
            typed
                .verify(&sign_with(h, &good_claims(), SECRET))
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn configuration_pins_the_hmac_algorithm() {
        let v = JwtVerifier::from_config(&AuthConfig {
            jwt_hs_algorithm: HmacAlgorithm::Hs512,
            ..cfg()
        })
        .await
        .unwrap();
        v.verify(&sign(Algorithm::HS512, &good_claims(), SECRET))
            .await
            .unwrap();
        assert!(
            v.verify(&sign(Algorithm::HS256, &good_claims(), SECRET))
                .await
                .is_err()
        );
        let none = JwtVerifier::from_config(&AuthConfig {
            jwt_hs256_secret: String::new(),
            ..cfg()
        })
        .await;
        assert!(none.unwrap_err().contains("no token verification key"));
    }
}

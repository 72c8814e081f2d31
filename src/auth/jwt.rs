//! Bearer JWT verification (strict, RFC 8725 style) and HS256 minting for the `token` command.
//!
//! The algorithm is pinned by configuration, never taken from the token: a header saying
//! `none` or any other algorithm is refused. `exp` and `sub` are required and typed (a string
//! `exp` is refused), `nbf` is honoured, `iss`/`aud` are checked when configured, with a
//! configured leeway. Token contents are never logged.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Principal, Role};
use crate::config::AuthConfig;
use crate::error::Error;

const MAX_TOKEN_LEN: usize = 8 * 1024;
const MAX_SUB_LEN: usize = 255;

/// Verifies bearer tokens.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    role_claim: String,
    plan_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// The claims pixgate reads; `exp` and `sub` are typed so a wrong JSON type fails decoding.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[allow(dead_code)] // checked by jsonwebtoken; typed here so a string `exp` is refused
    exp: u64,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

impl JwtVerifier {
    /// An HS256 verifier from the auth configuration.
    pub fn hs256(cfg: &AuthConfig) -> JwtVerifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
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
        JwtVerifier {
            key: DecodingKey::from_secret(cfg.jwt_hs256_secret.as_bytes()),
            validation,
            role_claim: cfg.role_claim.clone(),
            plan_claim: cfg.plan_claim.clone(),
        }
    }

    /// Verifies `token` and returns its principal.
    pub fn verify(&self, token: &str) -> Result<Principal, Error> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Error::InvalidToken("token too long".into()));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => Error::TokenExpired,
                other => Error::InvalidToken(format!("{other:?}")),
            },
        )?;
        let claims = data.claims;
        if claims.sub.is_empty()
            || claims.sub.len() > MAX_SUB_LEN
            || claims.sub.chars().any(char::is_control)
        {
            return Err(Error::InvalidToken("unusable sub claim".into()));
        }
        let role = match claims.rest.get(&self.role_claim) {
            None | Some(Value::Null) => Role::Viewer,
            Some(Value::String(s)) => {
                Role::parse(s).ok_or_else(|| Error::InvalidToken("unknown role".into()))?
            }
            // Identity providers often send a list of roles: the highest known one wins.
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().and_then(Role::parse))
                .max()
                .unwrap_or(Role::Viewer),
            Some(_) => return Err(Error::InvalidToken("role claim has the wrong type".into())),
        };
        let plan = match claims.rest.get(&self.plan_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => Some(s.clone()),
            Some(_) => return Err(Error::InvalidToken("unusable plan claim".into())),
        };
        Ok(Principal {
            user_id: claims.sub,
            role,
            plan,
        })
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

/// Mints an HS256 token with the configured secret, issuer and audience.
pub fn mint_hs256(cfg: &AuthConfig, req: &TokenRequest) -> Result<String, String> {
    if cfg.jwt_hs256_secret.is_empty() {
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
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
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

    fn sign(alg: Algorithm, claims: &Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn good_claims() -> Value {
        json!({"sub": "u1", "exp": now() + 600, "iss": "https://idp.test", "aud": "pixgate", "role": "editor", "plan": "pro"})
    }

    #[test]
    fn minted_tokens_verify() {
        let v = JwtVerifier::hs256(&cfg());
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
        let p = v.verify(&t).unwrap();
        assert_eq!(p.user_id, "alice");
        assert_eq!(p.role, Role::Admin);
        assert_eq!(p.plan.as_deref(), Some("pro"));
    }

    #[test]
    fn hostile_tokens_are_refused() {
        let v = JwtVerifier::hs256(&cfg());
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
            ("garbage", "not.a.jwt".into(), "invalid_token"),
            ("huge", "a".repeat(10_000), "invalid_token"),
        ];
        for (name, token, code) in cases {
            match v.verify(&token) {
                Ok(p) => panic!("{name}: accepted as {p:?}"),
                Err(e) => assert_eq!(e.code(), code, "{name}: {e}"),
            }
        }
    }

    #[test]
    fn leeway_and_role_defaults() {
        let v = JwtVerifier::hs256(&cfg());
        let mut c = good_claims();
        c["exp"] = json!(now() - 10); // within the 30 s leeway
        c.as_object_mut().unwrap().remove("role");
        let p = v.verify(&sign(Algorithm::HS256, &c, SECRET)).unwrap();
        assert_eq!(p.role, Role::Viewer);
        c["role"] = json!(["viewer", "admin", "unknown"]);
        let p = v.verify(&sign(Algorithm::HS256, &c, SECRET)).unwrap();
        assert_eq!(p.role, Role::Admin);
    }
}

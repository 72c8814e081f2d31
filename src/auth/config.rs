//! `[auth]`: how bearer credentials are verified (JWT keys, claims, revocation caching).

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

use crate::config::types::{ConfigError, outbound_url_allowed, positive, require, seconds};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secret (at least 32 bytes); its algorithm is `jwt_hs_algorithm`.
    pub jwt_hs256_secret: String,
    pub jwt_hs_algorithm: HmacAlgorithm,
    /// PEM public key, its pinned algorithm, and optionally the `kid` it answers to.
    pub jwt_public_key_file: String,
    pub jwt_public_key_algorithm: AsymmetricAlgorithm,
    pub jwt_public_key_kid: String,
    /// JWKS document on disk and/or at a URL (https, or http to a loopback address).
    pub jwks_file: String,
    pub jwks_url: String,
    /// Algorithms a JWKS key may be used with.
    pub jwks_algorithms: Vec<AsymmetricAlgorithm>,
    pub jwks_timeout_ms: u64,
    /// An unknown `kid` refetches the JWKS at most this often.
    pub jwks_refresh_min_secs: u64,
    /// Keys older than this are refreshed in the background.
    pub jwks_max_age_secs: u64,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// Required `typ` header (e.g. `at+jwt`); empty: not checked.
    pub jwt_typ: String,
    pub role_claim: String,
    pub plan_claim: String,
    pub leeway_secs: u64,
    /// How long an instance may keep using a cached API key lookup or token revocation record:
    /// the bound on how late a revocation made on another instance takes effect.
    pub revocation_cache_secs: u64,
    pub max_api_keys_per_user: u64,
}

/// The algorithm of `auth.jwt_hs256_secret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HmacAlgorithm {
    #[serde(rename = "HS256")]
    Hs256,
    #[serde(rename = "HS384")]
    Hs384,
    #[serde(rename = "HS512")]
    Hs512,
}

impl HmacAlgorithm {
    pub fn algorithm(self) -> Algorithm {
        match self {
            HmacAlgorithm::Hs256 => Algorithm::HS256,
            HmacAlgorithm::Hs384 => Algorithm::HS384,
            HmacAlgorithm::Hs512 => Algorithm::HS512,
        }
    }
}

/// An asymmetric JWS algorithm a public key may be pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AsymmetricAlgorithm {
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "RS384")]
    Rs384,
    #[serde(rename = "RS512")]
    Rs512,
    #[serde(rename = "PS256")]
    Ps256,
    #[serde(rename = "PS384")]
    Ps384,
    #[serde(rename = "PS512")]
    Ps512,
    #[serde(rename = "ES256")]
    Es256,
    #[serde(rename = "ES384")]
    Es384,
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl AsymmetricAlgorithm {
    pub fn algorithm(self) -> Algorithm {
        match self {
            AsymmetricAlgorithm::Rs256 => Algorithm::RS256,
            AsymmetricAlgorithm::Rs384 => Algorithm::RS384,
            AsymmetricAlgorithm::Rs512 => Algorithm::RS512,
            AsymmetricAlgorithm::Ps256 => Algorithm::PS256,
            AsymmetricAlgorithm::Ps384 => Algorithm::PS384,
            AsymmetricAlgorithm::Ps512 => Algorithm::PS512,
            AsymmetricAlgorithm::Es256 => Algorithm::ES256,
            AsymmetricAlgorithm::Es384 => Algorithm::ES384,
            AsymmetricAlgorithm::EdDsa => Algorithm::EdDSA,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        use AsymmetricAlgorithm::*;
        AuthConfig {
            jwt_hs256_secret: String::new(),
            jwt_hs_algorithm: HmacAlgorithm::Hs256,
            jwt_public_key_file: String::new(),
            jwt_public_key_algorithm: Rs256,
            jwt_public_key_kid: String::new(),
            jwks_file: String::new(),
            jwks_url: String::new(),
            jwks_algorithms: vec![Rs256, Ps256, Es256, Es384, EdDsa],
            jwks_timeout_ms: 3_000,
            jwks_refresh_min_secs: 60,
            jwks_max_age_secs: 3_600,
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            jwt_typ: String::new(),
            role_claim: "role".into(),
            plan_claim: "plan".into(),
            leeway_secs: 30,
            revocation_cache_secs: 30,
            max_api_keys_per_user: 25,
        }
    }
}

impl AuthConfig {
    /// `embedded`: the embedded default, where issuer and audience may be left out.
    pub fn validate(&self, embedded: bool) -> Result<(), ConfigError> {
        require(
            self.jwt_hs256_secret.is_empty()
                && self.jwt_public_key_file.is_empty()
                && self.jwks_file.is_empty()
                && self.jwks_url.is_empty(),
            "auth.jwt_hs256_secret",
            "no token verification key: set auth.jwt_hs256_secret, auth.jwt_public_key_file, auth.jwks_file or auth.jwks_url",
        )?;
        require(
            !self.jwt_hs256_secret.is_empty() && self.jwt_hs256_secret.len() < 32,
            "auth.jwt_hs256_secret",
            "at least 32 bytes are required for HMAC (RFC 7518 §3.2)",
        )?;
        require(
            !self.jwks_url.is_empty() && !outbound_url_allowed(&self.jwks_url),
            "auth.jwks_url",
            "must be https:// (http:// only to a loopback address)",
        )?;
        seconds("auth.jwks_timeout_ms", self.jwks_timeout_ms.div_ceil(1000))?;
        seconds("auth.jwks_refresh_min_secs", self.jwks_refresh_min_secs)?;
        seconds("auth.jwks_max_age_secs", self.jwks_max_age_secs)?;
        seconds("auth.revocation_cache_secs", self.revocation_cache_secs)?;
        positive("auth.max_api_keys_per_user", self.max_api_keys_per_user)?;
        require(
            self.leeway_secs > 300,
            "auth.leeway_secs",
            "must be at most 300 seconds",
        )?;
        if !embedded {
            let needed = "required outside the embedded default";
            require(self.jwt_issuer.is_empty(), "auth.jwt_issuer", needed)?;
            require(self.jwt_audience.is_empty(), "auth.jwt_audience", needed)?;
        }
        require(
            self.role_claim.is_empty(),
            "auth.role_claim",
            "must not be empty",
        )?;
        require(
            self.plan_claim.is_empty(),
            "auth.plan_claim",
            "must not be empty",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> AuthConfig {
        AuthConfig {
            jwt_hs256_secret: "0123456789abcdef0123456789abcdef".into(),
            jwt_issuer: "i".into(),
            jwt_audience: "a".into(),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn validate_needs_a_key_and_outside_embedded_an_issuer_and_audience() {
        assert!(valid().validate(false).is_ok());
        let no_key = AuthConfig::default();
        assert_eq!(
            no_key.validate(true).unwrap_err().key,
            "auth.jwt_hs256_secret"
        );
        let no_issuer = AuthConfig {
            jwt_issuer: String::new(),
            ..valid()
        };
        assert!(no_issuer.validate(true).is_ok());
        assert_eq!(
            no_issuer.validate(false).unwrap_err().key,
            "auth.jwt_issuer"
        );
        let plain_http = AuthConfig {
            jwks_url: "http://idp.example/jwks".into(),
            ..valid()
        };
        assert_eq!(plain_http.validate(false).unwrap_err().key, "auth.jwks_url");
        let leeway = AuthConfig {
            leeway_secs: 301,
            ..valid()
        };
        assert_eq!(leeway.validate(false).unwrap_err().key, "auth.leeway_secs");
    }

    #[test]
    fn algorithms_parse_while_loading_and_symmetric_ones_cannot_be_pinned_to_keys() {
        let c: AuthConfig =
            toml::from_str("jwt_hs_algorithm = \"HS512\"\njwks_algorithms = [\"EdDSA\"]").unwrap();
        assert_eq!(c.jwt_hs_algorithm.algorithm(), Algorithm::HS512);
        assert_eq!(c.jwks_algorithms[0].algorithm(), Algorithm::EdDSA);
        assert!(toml::from_str::<AuthConfig>("jwt_hs_algorithm = \"RS256\"").is_err());
        assert!(toml::from_str::<AuthConfig>("jwks_algorithms = [\"HS256\"]").is_err());
        assert!(toml::from_str::<AuthConfig>("jwt_public_key_algorithm = \"none\"").is_err());
    }
}

//! Who is calling, and what may they do: principals, roles, API-key scopes, and the one
//! authorization decision every route makes.
//!
//! A request's principal comes from a bearer credential: a JWT from the application's identity
//! provider (`jwt`), or one of pixgate's own API keys (`api_keys`, recognised by their
//! `pxg_live_` prefix). JWTs of a user whose tokens an admin revoked are refused (`revocation`).
//! For signed transform URLs the principal is the owner of the image the URL names (decided in
//! the transform handler, once the image is known).
//!
//! Authorization is two checks, in this order, and nothing else:
//! 1. [`Principal::allow`] — may this principal perform this *kind* of action at all? The role
//!    gives a set of actions (viewer < editor < admin); an API key additionally carries scopes,
//!    and the action needs both. Failure is `403`.
//! 2. [`Principal::owns`] — may it touch *this* image? Owners and admins only. Failure is
//!    `404 not_found`, never `403`, so another user's image ids cannot be probed.

pub mod api_keys;
pub mod blocks;
pub mod config;
pub mod jwt;
pub mod revocation;

use http::HeaderMap;
use http::header::AUTHORIZATION;

pub use api_keys::{API_KEY_PREFIX, ApiKeyRecord, ApiKeys};
pub use config::{AsymmetricAlgorithm, AuthConfig, HmacAlgorithm};
pub use jwt::{JwtVerifier, TokenRequest, mint_hs256};
pub use revocation::Revocations;

/// Why a credential was refused or could not be checked. Mapped to `401`/`403`/`409` (and,
/// for its storage, `503`/`500`) in `http::error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token expired")]
    TokenExpired,
    /// The role does not allow the action.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The API key's scopes do not include the action.
    #[error("insufficient scope: {0}")]
    InsufficientScope(&'static str),
    #[error("at most {limit} API keys per user")]
    TooManyApiKeys { limit: u64 },
    #[error("invalid field: {0}")]
    InvalidField(String),
    /// A credential record could not be read or written.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A stored credential record is damaged.
    #[error("stored credential damaged: {0}")]
    Corrupt(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Roles, least to most privileged.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    /// The scopes this role can hold: an API key never has more than its owner's role.
    pub fn scopes(self) -> Scopes {
        match self {
            Role::Viewer => Scopes::READ | Scopes::TRANSFORM | Scopes::MANAGE,
            Role::Editor | Role::Admin => Scopes::ALL,
        }
    }
}

/// API-key scopes, a small bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub const READ: Scopes = Scopes(1);
    pub const TRANSFORM: Scopes = Scopes(2);
    pub const UPLOAD: Scopes = Scopes(4);
    pub const DELETE: Scopes = Scopes(8);
    pub const MANAGE: Scopes = Scopes(16);
    pub const ALL: Scopes = Scopes(31);
    const NAMES: [(Scopes, &'static str); 5] = [
        (Scopes::READ, "read"),
        (Scopes::TRANSFORM, "transform"),
        (Scopes::UPLOAD, "upload"),
        (Scopes::DELETE, "delete"),
        (Scopes::MANAGE, "manage"),
    ];

    /// Parses scope names; an unknown name is an error naming it.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Scopes, String> {
        let mut s = Scopes::default();
        for name in names {
            let (bit, _) = Scopes::NAMES
                .iter()
                .find(|(_, n)| *n == name)
                .ok_or_else(|| {
                    format!(
                        "unknown scope `{}`",
                        name.chars().take(32).collect::<String>()
                    )
                })?;
            s = s | *bit;
        }
        Ok(s)
    }

    pub fn names(self) -> Vec<&'static str> {
        Scopes::NAMES
            .iter()
            .filter(|(bit, _)| self.contains(*bit))
            .map(|(_, n)| *n)
            .collect()
    }

    pub fn contains(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersect(self, other: Scopes) -> Scopes {
        Scopes(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Scopes {
    type Output = Scopes;
    fn bitor(self, rhs: Scopes) -> Scopes {
        Scopes(self.0 | rhs.0)
    }
}

/// What a request wants to do. Each action needs a minimum role and, for API keys, a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// List and read image metadata, usage, exports.
    Read,
    /// Bearer transforms (`_` signature) and minting signed URLs.
    Transform,
    Upload,
    /// Change image metadata (`PATCH`).
    Update,
    Delete,
    /// Create, list and revoke one's own API keys.
    ManageKeys,
    /// Audit, revocation, acting on behalf of other users.
    Admin,
    /// Create and manage teams, share one's images and collections.
    Collaborate,
}

impl Action {
    fn min_role(self) -> Role {
        match self {
            Action::Read | Action::Transform | Action::ManageKeys | Action::Collaborate => {
                Role::Viewer
            }
            Action::Upload | Action::Update | Action::Delete => Role::Editor,
            Action::Admin => Role::Admin,
        }
    }

    fn scope(self) -> Scopes {
        match self {
            Action::Read => Scopes::READ,
            Action::Transform => Scopes::TRANSFORM,
            Action::Upload | Action::Update => Scopes::UPLOAD,
            Action::Delete => Scopes::DELETE,
            Action::ManageKeys | Action::Admin | Action::Collaborate => Scopes::MANAGE,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Action::Read => "reading requires the read scope",
            Action::Transform => "transforming requires the transform scope",
            Action::Upload => "uploading requires the editor or admin role",
            Action::Update => "changing metadata requires the editor or admin role",
            Action::Delete => "deleting requires the editor or admin role",
            Action::ManageKeys => "managing API keys requires the manage scope",
            Action::Admin => "this action requires the admin role",
            Action::Collaborate => "managing teams and shares requires the manage scope",
        }
    }
}

/// How the principal proved who it is (also the audit trail's `auth method`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    Jwt,
    ApiKey {
        key_id: String,
        scopes: Scopes,
        /// The key's `allowed_cidrs` (empty: any address); checked by `http::guard`.
        networks: Vec<ipnet::IpNet>,
    },
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub role: Role,
    pub plan: Option<String>,
    pub method: AuthMethod,
    /// When the credential was issued, as far as revocation is concerned: a JWT's `iat`; for
    /// an API key, the issue time of the credential that created it (so revoking a user's
    /// tokens also voids keys minted with them, on every instance). `None`: unknown.
    pub issued_at: Option<u64>,
}

impl Principal {
    /// A principal authenticated by JWT.
    pub fn jwt(user_id: impl Into<String>, role: Role, plan: Option<String>) -> Principal {
        Principal {
            user_id: user_id.into(),
            role,
            plan,
            method: AuthMethod::Jwt,
            issued_at: None,
        }
    }

    /// Whether this principal may touch an image owned by `owner`: its owner, or an admin
    /// whose credential carries the admin action (an admin's narrow API key does not reach
    /// other users' images).
    pub fn owns(&self, owner: &str) -> bool {
        self.user_id == owner || self.allow(Action::Admin).is_ok()
    }

    /// The scopes in force: every scope of the role for a JWT, the key's scopes (already
    /// intersected with its owner's role at creation, and again here) for an API key.
    pub fn scopes(&self) -> Scopes {
        match &self.method {
            AuthMethod::Jwt => self.role.scopes(),
            AuthMethod::ApiKey { scopes, .. } => scopes.intersect(self.role.scopes()),
        }
    }

    /// Fails with `403` unless the role allows `action` and, for an API key, the key carries
    /// its scope.
    pub fn allow(&self, action: Action) -> Result<(), AuthError> {
        if self.role < action.min_role() {
            return Err(AuthError::Forbidden(action.describe()));
        }
        if !self.scopes().contains(action.scope()) {
            return Err(AuthError::InsufficientScope(action.describe()));
        }
        Ok(())
    }

    pub fn method_name(&self) -> &'static str {
        match self.method {
            AuthMethod::Jwt => "jwt",
            AuthMethod::ApiKey { .. } => "api_key",
        }
    }
}

/// The bearer token of a request: `Ok(None)` when there is no `Authorization` header, an error
/// when there is one that is not a well-formed bearer credential.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::InvalidToken("authorization header is not ASCII".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| AuthError::InvalidToken("malformed authorization header".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::InvalidToken(
            "unsupported authorization scheme".into(),
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    Ok(Some(token))
}

/// Turns bearer credentials into principals: JWTs (with the revocation list) and API keys.
pub struct Authenticator {
    /// Swapped on `SIGHUP` (new secrets, key files, JWKS).
    pub jwt: crate::reload::Swap<JwtVerifier>,
    pub api_keys: ApiKeys,
    pub revocations: Revocations,
    /// The IP blocklist (`POST /v1/admin/blocks`), checked before any other work.
    pub blocks: std::sync::Arc<blocks::Blocklist>,
    /// `auth.leeway_secs`, also applied to revocation cut-offs.
    pub leeway_secs: u64,
}

impl Authenticator {
    /// The principal behind `headers`' bearer credential, or `MissingToken`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let token = bearer_token(headers)?.ok_or(AuthError::MissingToken)?;
        let principal = if token.starts_with(API_KEY_PREFIX) {
            self.api_keys.authenticate(token).await?
        } else {
            self.jwt.load().verify(token).await?
        };
        if let Some(not_before) = self.revocations.not_before(&principal.user_id).await? {
            // Refused: credentials issued up to the revocation plus the clock leeway (an IdP
            // whose clock runs ahead stamps old tokens with later times), and credentials that
            // cannot prove when they were issued (a JWT without `iat`).
            let cutoff = not_before.saturating_add(self.leeway_secs);
            if principal.issued_at.is_none_or(|iat| iat <= cutoff) {
                return Err(AuthError::InvalidToken("credential revoked".into()));
            }
        }
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::error::CodeOf;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&HeaderMap::new()).unwrap(), None);
        assert_eq!(bearer_token(&headers("Bearer abc")).unwrap(), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer abc")).unwrap(), Some("abc"));
        assert_eq!(
            bearer_token(&headers("Basic dXNlcjpwYXNz"))
                .unwrap_err()
                .code(),
            "invalid_token"
        );
        assert_eq!(
            bearer_token(&headers("Bearer ")).unwrap_err().code(),
            "missing_token"
        );
        assert_eq!(
            bearer_token(&headers("Bearer")).unwrap_err().code(),
            "invalid_token"
        );
    }

    #[test]
    fn roles_order_and_ownership() {
        assert!(Role::Viewer < Role::Editor && Role::Editor < Role::Admin);
        let p = Principal::jwt("u1", Role::Viewer, None);
        assert!(p.owns("u1"));
        assert!(!p.owns("u2"));
        assert_eq!(p.allow(Action::Upload).unwrap_err().code(), "forbidden");
        assert!(p.allow(Action::Read).is_ok() && p.allow(Action::Transform).is_ok());
        assert_eq!(p.allow(Action::Admin).unwrap_err().code(), "forbidden");
        let admin = Principal {
            role: Role::Admin,
            ..p
        };
        assert!(admin.owns("u2"));
        assert!(admin.allow(Action::Admin).is_ok());
    }

    #[test]
    fn api_key_scopes_are_capped_by_the_role() {
        let key = |role, scopes| Principal {
            user_id: "u".into(),
            role,
            plan: None,
            method: AuthMethod::ApiKey {
                key_id: "k".into(),
                scopes,
                networks: Vec::new(),
            },
            issued_at: None,
        };
        let reader = key(Role::Editor, Scopes::READ);
        assert!(reader.allow(Action::Read).is_ok());
        assert_eq!(
            reader.allow(Action::Upload).unwrap_err().code(),
            "insufficient_scope"
        );
        // A viewer's key that somehow claims `upload` still cannot upload: the role decides.
        let viewer = key(Role::Viewer, Scopes::ALL);
        assert_eq!(
            viewer.allow(Action::Upload).unwrap_err().code(),
            "forbidden"
        );
        assert_eq!(viewer.scopes(), Role::Viewer.scopes());
        let admin_key = key(Role::Admin, Scopes::READ | Scopes::DELETE);
        assert_eq!(
            admin_key.allow(Action::Admin).unwrap_err().code(),
            "insufficient_scope"
        );
        // Without the admin action, an admin's key reaches only its owner's images.
        assert!(admin_key.owns("u") && !admin_key.owns("someone-else"));
        assert!(key(Role::Admin, Scopes::ALL).owns("someone-else"));
    }

    #[test]
    fn scope_names_round_trip() {
        let s = Scopes::parse(["read", "upload"]).unwrap();
        assert_eq!(s.names(), vec!["read", "upload"]);
        assert!(Scopes::parse(["root"]).unwrap_err().contains("root"));
        assert_eq!(Scopes::ALL.names().len(), 5);
    }

    #[tokio::test]
    async fn revoking_a_user_voids_api_keys_minted_with_older_credentials() {
        use std::sync::Arc;
        use std::time::Duration;

        use crate::config::AuthConfig;
        use crate::storage::{FsStore, ObjectStore};
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(FsStore::new(dir.path(), Duration::from_secs(5)).unwrap());
        let ttl = Duration::from_secs(30);
        let auth = Authenticator {
            jwt: crate::reload::Swap::new(
                JwtVerifier::from_config(&AuthConfig {
                    jwt_hs256_secret: "0123456789abcdef0123456789abcdef".into(),
                    ..AuthConfig::default()
                })
                .await
                .unwrap(),
            ),
            api_keys: ApiKeys::new(store.clone(), ttl, 10),
            revocations: Revocations::new(store.clone(), ttl),
            blocks: Arc::new(blocks::Blocklist::new(store.clone(), ttl)),
            leeway_secs: 30,
        };
        let header = |key: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
            h
        };
        let creator = |iat| Principal {
            issued_at: iat,
            ..Principal::jwt("u1", Role::Editor, None)
        };
        let (old, _) = auth
            .api_keys
            .create(&creator(Some(1_000)), "", Scopes::ALL, &[])
            .await
            .unwrap();
        let (newer, _) = auth
            .api_keys
            .create(&creator(Some(5_000)), "", Scopes::ALL, &[])
            .await
            .unwrap();
        assert!(auth.authenticate(&header(&old)).await.is_ok());
        // The revocation record alone (as another instance would see it before revoke_all
        // ran, or for a key created through an instance that had not seen the record yet).
        auth.revocations.revoke("u1", 2_000).await.unwrap();
        assert_eq!(
            auth.authenticate(&header(&old)).await.unwrap_err().code(),
            "invalid_token"
        );
        assert!(auth.authenticate(&header(&newer)).await.is_ok());
        // Within the leeway after the revocation: refused too (an IdP clock running ahead).
        let (edge, _) = auth
            .api_keys
            .create(&creator(Some(2_020)), "", Scopes::ALL, &[])
            .await
            .unwrap();
        assert!(auth.authenticate(&header(&edge)).await.is_err());
    }
}

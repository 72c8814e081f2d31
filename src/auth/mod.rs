//! Who is calling: principals, roles, and bearer-token extraction.
//!
//! A request's principal comes from a bearer JWT (`jwt`), or — for signed transform URLs — is
//! the owner of the image the URL names (decided in the transform handler, since only a signed
//! URL's holder is known there). Roles order as viewer < editor < admin.

pub mod jwt;

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::error::Error;

pub use jwt::{JwtVerifier, TokenRequest, mint_hs256};

/// Roles, least to most privileged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
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
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub role: Role,
    pub plan: Option<String>,
}

impl Principal {
    /// Whether this principal may read an image owned by `owner`.
    pub fn can_read(&self, owner: &str) -> bool {
        self.role == Role::Admin || self.user_id == owner
    }

    /// Fails with 403 unless the role is at least `min`.
    pub fn require(&self, min: Role, what: &'static str) -> Result<(), Error> {
        if self.role >= min {
            Ok(())
        } else {
            Err(Error::Forbidden(what))
        }
    }
}

/// The bearer token of a request: `Ok(None)` when there is no `Authorization` header, an error
/// when there is one that is not a well-formed bearer credential.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, Error> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Error::InvalidToken("authorization header is not ASCII".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| Error::InvalidToken("malformed authorization header".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Error::InvalidToken(
            "unsupported authorization scheme".into(),
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::MissingToken);
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let p = Principal {
            user_id: "u1".into(),
            role: Role::Viewer,
            plan: None,
        };
        assert!(p.can_read("u1"));
        assert!(!p.can_read("u2"));
        assert_eq!(
            p.require(Role::Editor, "upload").unwrap_err().code(),
            "forbidden"
        );
        let admin = Principal {
            role: Role::Admin,
            ..p
        };
        assert!(admin.can_read("u2"));
    }
}

//! CORS for browser callers of the API, from the `server.cors_origins` allowlist.
//!
//! Only allowed origins get `Access-Control-Allow-Origin` (their own origin echoed, with
//! `Vary: Origin`); `*` is answered as `*` and never together with credentials (config refuses
//! that combination). A preflight from an origin that is not allowed, or for a method or header
//! the API does not take, is `403 cors_origin_not_allowed`: the browser then blocks the call.
//! Transform URLs need no CORS for `<img>`; they get the same headers so `fetch()` and canvas
//! use work for allowed origins.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, HeaderValue, ORIGIN, VARY,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};

use super::Body;
use super::error::Error;
use crate::server::config::ServerConfig;

const ALLOWED_METHODS: &str = "GET, HEAD, POST, PATCH, DELETE";
const ALLOWED_HEADERS: [&str; 5] = [
    "authorization",
    "content-type",
    "if-none-match",
    "x-request-id",
    "accept",
];
const EXPOSED_HEADERS: &str =
    "ETag, Location, Retry-After, RateLimit, RateLimit-Policy, X-Request-Id";
const PREFLIGHT_MAX_AGE: &str = "600";

/// The request's `Origin`, if readable.
pub fn origin(headers: &HeaderMap) -> Option<String> {
    headers
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(ORIGIN)
        && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

fn allowed(cfg: &ServerConfig, origin: &str) -> bool {
    cfg.cors_origins.iter().any(|o| o == "*" || o == origin)
}

/// Answers a preflight: `204` with the allowed methods and headers, or `403`.
pub fn preflight(
    cfg: &ServerConfig,
    headers: &HeaderMap,
    api: bool,
) -> Result<Response<Body>, Error> {
    let origin = origin(headers).ok_or(Error::CorsForbidden)?;
    if !allowed(cfg, &origin) {
        return Err(Error::CorsForbidden);
    }
    let method = headers
        .get(ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let method_ok = if api {
        ALLOWED_METHODS.split(", ").any(|m| m == method)
    } else {
        matches!(method, "GET" | "HEAD")
    };
    let headers_ok = headers
        .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .all(|h| h.is_empty() || ALLOWED_HEADERS.contains(&h.as_str()));
    if !method_ok || !headers_ok {
        return Err(Error::CorsForbidden);
    }
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOWED_METHODS),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "Authorization, Content-Type, If-None-Match, X-Request-Id, Accept",
        ),
    );
    h.insert(
        ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE),
    );
    Ok(resp)
}

/// Adds the CORS response headers for an allowed origin (to every response, errors included,
/// so browsers can read error bodies).
pub fn decorate(cfg: &ServerConfig, origin: Option<&str>, h: &mut HeaderMap) {
    if cfg.cors_origins.is_empty() {
        return;
    }
    // The answer depends on Origin whenever an allowlist is configured.
    h.append(VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin.filter(|o| allowed(cfg, o)) else {
        return;
    };
    let wildcard = cfg.cors_origins.iter().any(|o| o == "*");
    let value = if wildcard && !cfg.cors_origins.iter().any(|o| o == origin) {
        HeaderValue::from_static("*")
    } else {
        match HeaderValue::from_str(origin) {
            Ok(v) => v,
            Err(_) => return,
        }
    };
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, value);
    if cfg.cors_allow_credentials && !wildcard {
        h.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    h.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED_HEADERS),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(origins: &[&str], creds: bool) -> ServerConfig {
        ServerConfig {
            cors_origins: origins.iter().map(|s| s.to_string()).collect(),
            cors_allow_credentials: creds,
            ..ServerConfig::default()
        }
    }

    fn pre(origin: &str, method: &str, headers: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, origin.parse().unwrap());
        h.insert(ACCESS_CONTROL_REQUEST_METHOD, method.parse().unwrap());
        if !headers.is_empty() {
            h.insert(ACCESS_CONTROL_REQUEST_HEADERS, headers.parse().unwrap());
        }
        h
    }

    #[test]
    fn preflights_follow_the_allowlist() {
        let c = cfg(&["https://app.example"], true);
        let ok = preflight(
            &c,
            &pre(
                "https://app.example",
                "DELETE",
                "Authorization, content-type",
            ),
            true,
        )
        .unwrap();
        assert_eq!(ok.status(), 204);
        for (o, m, h) in [
            ("https://evil.example", "GET", ""),
            ("https://app.example", "PUT", ""),
            ("https://app.example", "GET", "x-secret"),
        ] {
            assert_eq!(
                preflight(&c, &pre(o, m, h), true).unwrap_err().code(),
                "cors_origin_not_allowed",
                "{o} {m} {h}"
            );
        }
        // Transform URLs are read-only.
        assert!(preflight(&c, &pre("https://app.example", "POST", ""), false).is_err());
    }

    #[test]
    fn responses_echo_allowed_origins_and_never_wildcard_credentials() {
        let c = cfg(&["https://app.example"], true);
        let mut h = HeaderMap::new();
        decorate(&c, Some("https://app.example"), &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[VARY], "Origin");
        let mut h = HeaderMap::new();
        decorate(&c, Some("https://evil.example"), &mut h);
        assert!(h.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        let star = cfg(&["*"], false);
        let mut h = HeaderMap::new();
        decorate(&star, Some("https://any.example"), &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(h.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
        let mut h = HeaderMap::new();
        decorate(&cfg(&[], false), Some("https://any.example"), &mut h);
        assert!(h.is_empty());
    }
}

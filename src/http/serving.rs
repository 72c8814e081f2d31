//! What every image-serving route (transforms, originals, `/info`) shares: who is asking (a
//! signed URL's holder or an authenticated principal), the owner check, and the caching
//! headers and conditional requests of a cacheable image response.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{
    CACHE_CONTROL, ETAG, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
    VARY,
};
use http::{HeaderMap, Response, StatusCode};

use super::error::Error;
use super::{Body, Ctx, authenticate};
use crate::app::App;
use crate::auth::{Action, Principal};

pub(super) const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
pub(super) const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// Who is asking: a signed URL's holder (no credential), or an authenticated principal.
pub(super) enum Caller {
    Signed,
    Bearer(Principal),
}

/// Phase 1: the signature (constant time, every key pair) or, for signature `_`, the bearer
/// credential and the `transform` action. Pure CPU except a credential's cached lookups; one
/// limiter decision (`ip` for signed URLs, `requests` for bearers, inside `authenticate`).
pub(super) async fn verify(
    app: &App,
    signature: &str,
    tail: &str,
    headers: &HeaderMap,
    ctx: &Ctx,
) -> Result<Caller, Error> {
    if signature == "_" {
        let p = authenticate(app, headers, ctx).await?;
        p.allow(Action::Transform)?;
        return Ok(Caller::Bearer(p));
    }
    if !app.signer.load().verify(signature, tail) {
        return Err(Error::InvalidSignature);
    }
    ctx.set_signed_url();
    // Signed URLs carry no credential: their request rate is per client IP.
    ctx.limit(app.limiter.ip_request(ctx.client_ip).await)?;
    // A valid signature's `404` may be cached briefly by the CDN (404 floods stay there).
    ctx.cache_not_found_for(app.config.cache.error_max_age_secs);
    Ok(Caller::Signed)
}

/// Splits `/{signature}/{rest}` into the signature and `/{rest}`.
pub(super) fn split_signature(path: &str) -> Result<(&str, &str), Error> {
    let rest = path.strip_prefix('/').ok_or(Error::NotFound)?;
    let slash = rest.find('/').ok_or(Error::NotFound)?;
    let (signature, tail) = rest.split_at(slash);
    if signature.is_empty() || tail.len() < 2 {
        return Err(Error::NotFound);
    }
    Ok((signature, tail))
}

/// Bearer callers must reach the image: own it (or be admin, both decided without I/O), or
/// read it through a share or a collection (`access`, cached). Anything else is "not found",
/// so existence does not leak. Signed-URL holders were authorised by the signature; the
/// image's owner is then the principal the request counts for (quotas, audit).
pub(super) async fn allow_viewer(
    app: &App,
    caller: &Caller,
    image: &str,
    owner: &str,
    ctx: &Ctx,
) -> Result<(), Error> {
    if let Caller::Bearer(p) = caller
        && !p.owns(owner)
        && app.access.image_level(p, image, owner).await? < crate::access::Level::Read
    {
        // Audited as `access.denied`; answered like a missing image.
        ctx.set_denied();
        return Err(Error::NotFound);
    }
    ctx.set_image_owner(owner);
    Ok(())
}

/// Weak comparison, as RFC 9110 §13.1.2 prescribes for `If-None-Match`.
pub(super) fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(IF_NONE_MATCH).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
            })
        })
    })
}

/// Whether the client's copy is current: `If-None-Match` when present (RFC 9110 §13.2.2: it
/// takes precedence), else `If-Modified-Since` against the upload time (originals never
/// change, so no result of an image is newer than its upload).
pub(super) fn not_modified(headers: &HeaderMap, etag: &str, last_modified: SystemTime) -> bool {
    if headers.contains_key(IF_NONE_MATCH) {
        return if_none_match(headers, etag);
    }
    headers
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| http_time(last_modified) <= since)
}

/// `Last-Modified` as sent: whole seconds, never before 1970-01-01T00:00:01.
pub(super) fn http_time(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs().max(1));
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// `public, max-age=N, immutable` for signed URLs, `private, max-age=N` for bearer requests,
/// with N never beyond the URL's expiry.
pub(super) fn cache_control(bearer: bool, expires: Option<u64>, now: u64, max_age: u64) -> String {
    let age = match expires {
        Some(exp) => max_age.min(exp.saturating_sub(now)),
        None => max_age,
    };
    if bearer {
        format!("private, max-age={age}")
    } else {
        format!("public, max-age={age}, immutable")
    }
}

#[derive(Clone)]
pub(super) struct ResponseHeaders {
    pub(super) cache_control: String,
    /// `fn` / `att`: the name (without extension) and whether to download.
    pub(super) disposition: Option<(String, bool)>,
    pub(super) vary: bool,
    /// The image id, for `Surrogate-Key` / `Cache-Tag` (purge by image at the CDN).
    pub(super) surrogate_key: Option<String>,
}

pub(super) fn common_headers(
    resp: &mut Response<Body>,
    etag: &str,
    last_modified: SystemTime,
    h: &ResponseHeaders,
) {
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        headers.insert(ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&h.cache_control) {
        headers.insert(CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(http_time(last_modified))) {
        headers.insert(LAST_MODIFIED, v);
    }
    if h.vary {
        headers.insert(VARY, HeaderValue::from_static("Accept"));
    }
    if let Some(v) = h
        .surrogate_key
        .as_deref()
        .and_then(|k| HeaderValue::from_str(k).ok())
    {
        headers.insert(SURROGATE_KEY, v.clone());
        headers.insert(CACHE_TAG, v);
    }
}

pub(super) fn not_modified_response(
    etag: &str,
    last_modified: SystemTime,
    h: &ResponseHeaders,
) -> Response<Body> {
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    common_headers(&mut resp, etag, last_modified, h);
    resp
}

/// `inline|attachment; filename="…"; filename*=UTF-8''…` (RFC 6266): the output format's
/// extension is added unless the name already has it; the quoted form is an ASCII fallback
/// (anything else, quotes and backslashes become `_`), the extended form percent-encodes the
/// UTF-8 name (RFC 8187 attr-chars kept).
pub(super) fn content_disposition(name: &str, ext: &str, attachment: bool) -> String {
    let dotted = format!(".{ext}");
    let full = if name.to_ascii_lowercase().ends_with(&dotted) {
        name.to_owned()
    } else {
        format!("{name}{dotted}")
    };
    let ascii: String = full
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut extended = String::new();
    for b in full.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            extended.push(char::from(b));
        } else {
            extended.push_str(&format!("%{b:02X}"));
        }
    }
    let kind = if attachment { "attachment" } else { "inline" };
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{extended}")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A header map with one header.
    pub(in crate::http) fn h(name: http::header::HeaderName, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, v.parse().unwrap());
        m
    }

    #[test]
    fn content_disposition_is_rfc_6266_with_a_safe_fallback() {
        assert_eq!(
            content_disposition("cat", "webp", false),
            "inline; filename=\"cat.webp\"; filename*=UTF-8''cat.webp"
        );
        assert_eq!(
            content_disposition("Photo.JPG", "jpg", true),
            "attachment; filename=\"Photo.JPG\"; filename*=UTF-8''Photo.JPG"
        );
        assert_eq!(
            content_disposition("été \"x\";", "png", true),
            "attachment; filename=\"_t_ _x_;.png\"; filename*=UTF-8''%C3%A9t%C3%A9%20%22x%22%3B.png"
        );
    }

    #[test]
    fn signature_split() {
        assert_eq!(
            split_signature("/sig/rs:fit:1:1/plain/x").unwrap(),
            ("sig", "/rs:fit:1:1/plain/x")
        );
        for bad in ["/", "/sig", "/sig/", "//x"] {
            assert!(split_signature(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cache_control_never_outlives_exp() {
        assert_eq!(
            cache_control(false, Some(1_000 + 60), 1_000, 3_600),
            "public, max-age=60, immutable"
        );
        assert_eq!(
            cache_control(false, None, 1_000, 3_600),
            "public, max-age=3600, immutable"
        );
        assert_eq!(cache_control(true, None, 0, 10), "private, max-age=10");
        assert_eq!(
            cache_control(false, Some(5), 10, 3_600),
            "public, max-age=0, immutable"
        );
    }

    #[test]
    fn if_modified_since_only_without_if_none_match() {
        let uploaded = UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(400);
        let at = |secs: u64| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
        // The sent Last-Modified (whole seconds) is "not modified since" itself.
        assert!(not_modified(
            &h(IF_MODIFIED_SINCE, &at(1_700_000_000)),
            "\"e\"",
            uploaded
        ));
        assert!(not_modified(
            &h(IF_MODIFIED_SINCE, &at(1_800_000_000)),
            "\"e\"",
            uploaded
        ));
        assert!(!not_modified(
            &h(IF_MODIFIED_SINCE, &at(1_600_000_000)),
            "\"e\"",
            uploaded
        ));
        assert!(!not_modified(
            &h(IF_MODIFIED_SINCE, "yesterday"),
            "\"e\"",
            uploaded
        ));
        // If-None-Match wins, even when it does not match.
        let mut both = h(IF_NONE_MATCH, "\"other\"");
        both.insert(IF_MODIFIED_SINCE, at(1_800_000_000).parse().unwrap());
        assert!(!not_modified(&both, "\"e\"", uploaded));
    }
}

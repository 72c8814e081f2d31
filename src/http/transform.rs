//! `GET /{signature}/{options…}/{source}` — the transform route.
//!
//! Phases: verify (HMAC or bearer, no I/O) → parse → expiry → negotiate format → memory cache
//! → metadata (existence, owner) → conditional request → fetch original → compute on the CPU
//! pool → cache → respond. Nothing touches storage before the signature or token is verified.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderName, HeaderValue, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, LAST_MODIFIED, VARY,
};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{Body, Ctx, authenticate, charge_caller};
use crate::app::App;
use crate::auth::{Action, Principal};
use crate::cache::{self, CachedResult};
use crate::error::Error;
use crate::limits::Kind;
use crate::options::{OutputFormat, parse_path};
use crate::render::{self, Target, cache_key, fallback_format};
use crate::signature::unix_now;

const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

pub async fn handle(
    app: &Arc<App>,
    req: Request<Incoming>,
    ctx: &Ctx,
) -> Result<Response<Body>, Error> {
    let (parts, _body) = req.into_parts();
    let path = parts.uri.path();
    let (signature, tail) = split_signature(path)?;

    // Verify first: pure CPU, before any I/O.
    let principal = if signature == "_" {
        let p = authenticate(app, &parts.headers, ctx).await?;
        p.allow(Action::Transform)?;
        Some(p)
    } else if app.signer.verify(signature, tail) {
        ctx.set_signed_url();
        // Signed URLs carry no credential: their request rate is per client IP.
        ctx.limit(app.limiter.ip_request(ctx.client_ip).await)?;
        // A valid signature's `404` may be cached briefly by the CDN (404 floods stay there).
        ctx.cache_not_found_for(app.config.cache.error_max_age_secs);
        None
    } else {
        return Err(Error::InvalidSignature);
    };

    let request = parse_path(tail, &app.parse_limits)?;
    ctx.set_image(request.image.as_str(), None);
    let spec = request.spec;
    let now = unix_now();
    if spec.expires.is_some_and(|exp| now >= exp) {
        return Err(Error::UrlExpired);
    }
    let quality = spec.quality.unwrap_or(app.config.transform.quality());
    let negotiated = spec.format.is_none();
    let key_for = |token: &str| cache_key(app, &request.image, &spec, quality, token);
    // Configured formats the client accepts (`transform.auto_formats`, in order).
    let accepted: Vec<OutputFormat> = if negotiated {
        app.auto_formats
            .iter()
            .copied()
            .filter(|f| accepts(&parts.headers, f.mime()))
            .collect()
    } else {
        Vec::new()
    };
    let mut auto = accepted.first().copied();
    // AVIF encoders are few (`transform.avif_workers`): when none is free and the AVIF result
    // is not cached, a negotiated request gets the next format it accepts instead of waiting.
    if auto == Some(OutputFormat::Avif)
        && app.avif_permits.available_permits() == 0
        && app.cache.get(&key_for("auto-avif")).is_none()
    {
        auto = accepted.get(1).copied();
    }
    let format_token = match (spec.format, auto) {
        (Some(f), _) => f.extension().to_owned(),
        (None, Some(f)) => format!("auto-{}", f.extension()),
        (None, None) => "auto-source".to_owned(),
    };
    let key = key_for(&format_token);
    let headers = ResponseHeaders {
        cache_control: cache_control(
            principal.is_some(),
            spec.expires,
            now,
            app.config.cache.max_age_secs,
        ),
        // The response depends on `Accept` only if a format was negotiated from it.
        vary: negotiated && !app.auto_formats.is_empty(),
        surrogate_key: app
            .config
            .cache
            .surrogate_keys
            .then(|| request.image.to_string()),
    };
    let metrics = &app.metrics;

    if let Some(hit) = app.cache.get(&key) {
        metrics
            .cache_requests
            .with_label_values(&["memory", "hit"])
            .inc();
        authorize(principal.as_ref(), &hit.owner, ctx)?;
        // The image may have been deleted through another instance: re-check its existence
        // at most every `auth.revocation_cache_secs`. A storage failure keeps serving the hit
        // (cached reads survive an outage); only a definite "gone" purges it.
        let bound = Duration::from_secs(app.config.auth.revocation_cache_secs);
        if app.cache.stale(&hit.image, bound) {
            match app.catalog.meta(&request.image).await {
                Ok(_) => app.cache.confirm(&hit.image),
                Err(Error::NotFound) => {
                    app.cache.purge_image(&hit.image);
                    return Err(Error::NotFound);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not re-check a cached image; serving the hit")
                }
            }
        }
        return Ok(respond(&parts.headers, &hit, &headers));
    }
    metrics
        .cache_requests
        .with_label_values(&["memory", "miss"])
        .inc();

    let meta = app.catalog.meta(&request.image).await?;
    authorize(principal.as_ref(), &meta.owner, ctx)?;
    let format = spec
        .format
        .or(auto)
        .unwrap_or_else(|| fallback_format(meta.format));
    let checked = std::time::Instant::now();
    let digest = cache::digest(&key);
    let etag = cache::etag(&digest);
    let last_modified = render::last_modified(app, &meta);
    if not_modified(&parts.headers, &etag, last_modified) {
        return Ok(not_modified_response(&etag, last_modified, &headers));
    }

    // A computation is charged to the caller (bearer) or to the image's owner (signed URL,
    // at the plan the owner last authenticated with). The unit is given back if the work never
    // starts (queue full, original unavailable); once admitted, the computation runs in a task
    // of its own and finishes (filling the caches) even if this request is dropped, so its
    // unit is spent when the CPU work begins, whatever the result. Derived-store hits and
    // requests that wait for an identical computation in flight are not charged.
    let owner = meta.owner.clone();
    let charge = || async {
        match &principal {
            Some(p) => charge_caller(app, ctx, Kind::Transforms, p).await.map(Some),
            None => {
                // The owner's quota state is not put on a public, CDN-cacheable response; only
                // a refusal says why (the error carries it).
                let plan = app.limiter.plan_of(&owner).await;
                app.limiter
                    .charge(Kind::Transforms, &owner, plan.as_deref(), false)
                    .await
                    .map(Some)
            }
        }
    };
    let target = Target {
        image: request.image.clone(),
        owner: meta.owner,
        key,
        digest,
        spec,
        format,
        quality,
        last_modified,
        checked,
        original: None,
    };
    let result = render::resolve(app, target, charge).await?;
    Ok(respond(&parts.headers, &result, &headers))
}

/// Splits `/{signature}/{rest}` into the signature and `/{rest}`.
fn split_signature(path: &str) -> Result<(&str, &str), Error> {
    let rest = path.strip_prefix('/').ok_or(Error::NotFound)?;
    let slash = rest.find('/').ok_or(Error::NotFound)?;
    let (signature, tail) = rest.split_at(slash);
    if signature.is_empty() || tail.len() < 2 {
        return Err(Error::NotFound);
    }
    Ok((signature, tail))
}

/// Bearer callers must own the image (or be admin). Another user's image is "not found", so
/// existence does not leak. Signed-URL holders (no principal) were authorised by the signature;
/// the image's owner is then the principal the request counts for (quotas, audit).
fn authorize(principal: Option<&Principal>, owner: &str, ctx: &Ctx) -> Result<(), Error> {
    match principal {
        Some(p) if !p.owns(owner) => {
            // Audited as `access.denied`; answered like a missing image.
            ctx.set_denied();
            Err(Error::NotFound)
        }
        _ => {
            ctx.set_image_owner(owner);
            Ok(())
        }
    }
}

fn accepts(headers: &HeaderMap, mime: &str) -> bool {
    headers.get_all(ACCEPT).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|item| {
                let mut parts = item.split(';');
                let ty = parts.next().unwrap_or("").trim();
                let refused = parts.any(|p| {
                    let p = p.trim().replace(' ', "");
                    p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
                });
                ty.eq_ignore_ascii_case(mime) && !refused
            })
        })
    })
}

/// Weak comparison, as RFC 9110 §13.1.2 prescribes for `If-None-Match`.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
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
fn not_modified(headers: &HeaderMap, etag: &str, last_modified: SystemTime) -> bool {
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
fn http_time(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs().max(1));
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// `public, max-age=N, immutable` for signed URLs, `private, max-age=N` for bearer requests,
/// with N never beyond the URL's expiry.
fn cache_control(bearer: bool, expires: Option<u64>, now: u64, max_age: u64) -> String {
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

struct ResponseHeaders {
    cache_control: String,
    vary: bool,
    /// The image id, for `Surrogate-Key` / `Cache-Tag` (purge by image at the CDN).
    surrogate_key: Option<String>,
}

fn common_headers(
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

fn not_modified_response(
    etag: &str,
    last_modified: SystemTime,
    h: &ResponseHeaders,
) -> Response<Body> {
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    common_headers(&mut resp, etag, last_modified, h);
    resp
}

fn respond(req_headers: &HeaderMap, item: &CachedResult, h: &ResponseHeaders) -> Response<Body> {
    if not_modified(req_headers, &item.etag, item.last_modified) {
        return not_modified_response(&item.etag, item.last_modified, h);
    }
    let mut resp = Response::new(Body::from(item.bytes.clone()));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(item.format.mime()));
    common_headers(&mut resp, &item.etag, item.last_modified, h);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: http::header::HeaderName, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, v.parse().unwrap());
        m
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
    fn conditional_and_accept_parsing() {
        let etag = "\"abc\"";
        assert!(if_none_match(&h(IF_NONE_MATCH, "\"abc\""), etag));
        assert!(if_none_match(&h(IF_NONE_MATCH, "\"x\", W/\"abc\""), etag));
        assert!(if_none_match(&h(IF_NONE_MATCH, "*"), etag));
        assert!(!if_none_match(&h(IF_NONE_MATCH, "\"abd\""), etag));
        assert!(!if_none_match(&HeaderMap::new(), etag));
        assert!(accepts(
            &h(ACCEPT, "image/avif,image/webp,*/*;q=0.8"),
            "image/webp"
        ));
        assert!(!accepts(&h(ACCEPT, "image/webp;q=0, */*"), "image/webp"));
        assert!(!accepts(&h(ACCEPT, "image/png,*/*"), "image/webp"));
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

//! `GET /{signature}/{options…}/{source}` — the transform route, as named phases over one
//! request:
//!
//! ```text
//! verify ──► parse ──► negotiate ──► serve a hit ──► preconditions ──► compute ──► respond
//! (HMAC or   (options,  (quality,     (memory;         (metadata,       (derived or
//!  bearer;    expiry)    format, key)  owner check)     owner, 304)      CPU, charged)
//!  no I/O)
//! ```
//!
//! Nothing touches storage before the signature or token is verified. Which result a request
//! names and how it is produced are the [`Renderer`](crate::render::Renderer)'s; this file
//! decides whether the caller may have it and writes the response.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE, ETAG, HeaderName, HeaderValue,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, VARY,
};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::error::Error;
use super::{Body, Ctx, authenticate};
use crate::app::App;
use crate::auth::{Action, Principal};
use crate::cache::CachedResult;
use crate::catalog::CatalogError;
use crate::limits::{ChargeObserver, Payer};
use crate::options::{TransformRequest, parse_path};
use crate::render::{Bill, Target, Variant};
use crate::signature::unix_now;

const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// Who is asking: a signed URL's holder (no credential), or an authenticated principal.
enum Caller {
    Signed,
    Bearer(Principal),
}

pub async fn handle(
    app: &Arc<App>,
    req: Request<Incoming>,
    ctx: &Ctx,
) -> Result<Response<Body>, Error> {
    let (parts, _body) = req.into_parts();
    let (signature, tail) = split_signature(parts.uri.path())?;
    let caller = verify(app, signature, tail, &parts.headers, ctx).await?;
    let (request, now) = parse(app, tail, ctx)?;
    let variant = app.render.negotiate(&request.image, &request.spec, |f| {
        accepts(&parts.headers, f.mime())
    });
    let headers = response_headers(app, &caller, &request, &variant, now);
    if let Some(hit) = serve_hit(app, &caller, &variant, ctx).await? {
        return Ok(respond(&parts.headers, &hit, &headers));
    }
    let target = match preconditions(app, &caller, variant, &parts.headers, ctx).await? {
        Ok(target) => target,
        Err(not_modified) => return Ok(not_modified.response(&headers)),
    };
    let result = compute(app, &caller, target, ctx).await?;
    Ok(respond(&parts.headers, &result, &headers))
}

/// Phase 1: the signature (constant time, every key pair) or, for signature `_`, the bearer
/// credential and the `transform` action. Pure CPU except a credential's cached lookups; one
/// limiter decision (`ip` for signed URLs, `requests` for bearers, inside `authenticate`).
async fn verify(
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

/// Phase 2: the typed, bounded transform, refused once its `exp` has passed. Returns the
/// clock reading the expiry was checked against.
fn parse(app: &App, tail: &str, ctx: &Ctx) -> Result<(TransformRequest, u64), Error> {
    let request = parse_path(tail, &app.parse_limits)?;
    ctx.set_image(request.image.as_str(), None);
    let now = unix_now();
    if request.spec.expires.is_some_and(|exp| now >= exp) {
        return Err(Error::UrlExpired);
    }
    Ok((request, now))
}

fn response_headers(
    app: &App,
    caller: &Caller,
    request: &TransformRequest,
    variant: &Variant,
    now: u64,
) -> ResponseHeaders {
    ResponseHeaders {
        cache_control: cache_control(
            matches!(caller, Caller::Bearer(_)),
            request.spec.expires,
            now,
            app.config.cache.max_age_secs,
        ),
        disposition: (request.spec.filename.is_some() || request.spec.attachment).then(|| {
            let name = request
                .spec
                .filename
                .clone()
                .unwrap_or_else(|| request.image.to_string());
            (name, request.spec.attachment)
        }),
        // The response depends on `Accept` only if a format was negotiated from it.
        vary: app.render.varies(variant),
        surrogate_key: app
            .config
            .cache
            .surrogate_keys
            .then(|| request.image.to_string()),
    }
}

/// Phase 4: a memory hit, authorised against the owner stored with it. The image may have
/// been deleted through another instance: its existence is re-checked at most every
/// `auth.revocation_cache_secs`. A storage failure keeps serving the hit (cached reads
/// survive an outage); only a definite "gone" purges it.
async fn serve_hit(
    app: &App,
    caller: &Caller,
    variant: &Variant,
    ctx: &Ctx,
) -> Result<Option<Arc<CachedResult>>, Error> {
    let cache = &app.render.cache;
    let Some(hit) = cache.get(&variant.key) else {
        count_memory(app, "miss");
        return Ok(None);
    };
    count_memory(app, "hit");
    allow_owner(caller, &hit.owner, ctx)?;
    let bound = Duration::from_secs(app.config.auth.revocation_cache_secs);
    if cache.stale(&hit.image, bound) {
        match app.catalog.meta(&variant.image).await {
            Ok(_) => cache.confirm(&hit.image),
            Err(CatalogError::NotFound) => {
                cache.purge_image(&hit.image);
                return Err(Error::NotFound);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not re-check a cached image; serving the hit")
            }
        }
    }
    Ok(Some(hit))
}

fn count_memory(app: &App, result: &str) {
    app.metrics
        .cache_requests
        .with_label_values(&["memory", result])
        .inc();
}

/// A `304` decided before any computation.
struct NotModified {
    etag: String,
    last_modified: SystemTime,
}

impl NotModified {
    fn response(&self, headers: &ResponseHeaders) -> Response<Body> {
        not_modified_response(&self.etag, self.last_modified, headers)
    }
}

/// Phase 5: the image exists and the caller may see it (metadata read: `404` if absent, and
/// for another user's image); a matching `If-None-Match` (or, without one,
/// `If-Modified-Since`) answers `304` without computing.
async fn preconditions(
    app: &App,
    caller: &Caller,
    variant: Variant,
    req_headers: &HeaderMap,
    ctx: &Ctx,
) -> Result<Result<Target, NotModified>, Error> {
    let meta = app.catalog.meta(&variant.image).await?;
    allow_owner(caller, &meta.owner, ctx)?;
    let target = app.render.target(variant, &meta, Instant::now());
    let etag = crate::cache::etag(&target.digest);
    if not_modified(req_headers, &etag, target.last_modified) {
        return Ok(Err(NotModified {
            etag,
            last_modified: target.last_modified,
        }));
    }
    Ok(Ok(target))
}

/// Phase 6: the result from the derived store or computed. A computation is charged to the
/// caller (bearer) or to the image's owner (signed URL). The owner's quota state is not put on
/// a public, CDN-cacheable response; only a refusal says why (the error carries it).
async fn compute(
    app: &App,
    caller: &Caller,
    target: Target,
    ctx: &Ctx,
) -> Result<Arc<CachedResult>, Error> {
    let payer = match caller {
        Caller::Bearer(p) => Payer::Caller {
            user: p.user_id.clone(),
            plan: p.plan.clone(),
            admin: p.role == crate::auth::Role::Admin,
        },
        Caller::Signed => Payer::Owner(target.owner.clone()),
    };
    // The caller's quota state goes on its (private) response, recorded as the charge is made.
    let observer: Option<&dyn ChargeObserver> = match caller {
        Caller::Bearer(_) => Some(ctx),
        Caller::Signed => None,
    };
    let bill = Bill::To(&app.limiter, payer, observer);
    Ok(app.render.resolve(target, bill).await?)
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
/// existence does not leak. Signed-URL holders were authorised by the signature; the image's
/// owner is then the principal the request counts for (quotas, audit).
fn allow_owner(caller: &Caller, owner: &str, ctx: &Ctx) -> Result<(), Error> {
    match caller {
        Caller::Bearer(p) if !p.owns(owner) => {
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
    /// `fn` / `att`: the name (without extension) and whether to download.
    disposition: Option<(String, bool)>,
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
    if let Some((name, attachment)) = &h.disposition
        && let Ok(v) = HeaderValue::from_str(&content_disposition(
            name,
            item.format.extension(),
            *attachment,
        ))
    {
        resp.headers_mut().insert(CONTENT_DISPOSITION, v);
    }
    common_headers(&mut resp, &item.etag, item.last_modified, h);
    resp
}

/// `inline|attachment; filename="…"; filename*=UTF-8''…` (RFC 6266): the output format's
/// extension is added unless the name already has it; the quoted form is an ASCII fallback
/// (anything else, quotes and backslashes become `_`), the extended form percent-encodes the
/// UTF-8 name (RFC 8187 attr-chars kept).
fn content_disposition(name: &str, ext: &str, attachment: bool) -> String {
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
mod tests {
    use super::*;

    fn h(name: http::header::HeaderName, v: &str) -> HeaderMap {
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

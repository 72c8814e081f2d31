//! `GET /{signature}/{options…}/{source}` — the transform route.
//!
//! Phases: verify (HMAC or bearer, no I/O) → parse → expiry → negotiate format → memory cache
//! → metadata (existence, owner) → conditional request → fetch original → compute on the CPU
//! pool → cache → respond. Nothing touches storage before the signature or token is verified.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderValue, IF_NONE_MATCH, LAST_MODIFIED, VARY,
};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use super::{Body, Ctx, authenticate};
use crate::app::App;
use crate::auth::{Action, Principal, Role};
use crate::cache::CachedResult;
use crate::error::Error;
use crate::image::ImageFormat;
use crate::limits::Kind;
use crate::options::{OutputFormat, parse_path};
use crate::signature::unix_now;

/// Version of the rendering pipeline; part of every cache key and ETag, so a change in how
/// results are produced never serves stale bytes under an old validator.
const PIPELINE_VERSION: &str = "v2";

pub async fn handle(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>, Error> {
    let (parts, _body) = req.into_parts();
    let path = parts.uri.path();
    let (signature, tail) = split_signature(path)?;

    // Verify first: pure CPU, before any I/O.
    let principal = if signature == "_" {
        let p = authenticate(app, &parts.headers, ctx).await?;
        p.allow(Action::Transform)?;
        Some(p)
    } else if app.signer.verify(signature, tail) {
        // Signed URLs carry no credential: their request rate is per client IP.
        ctx.limit(app.limiter.ip_request(ctx.client_ip).await)?;
        None
    } else {
        return Err(Error::InvalidSignature);
    };

    let request = parse_path(tail, &app.parse_limits)?;
    let spec = request.spec;
    let now = unix_now();
    if spec.expires.is_some_and(|exp| now >= exp) {
        return Err(Error::UrlExpired);
    }
    let quality = spec
        .quality
        .unwrap_or(app.config.transform.default_quality as u8);
    let negotiated = spec.format.is_none();
    let key_for = |token: &str| {
        format!(
            "{PIPELINE_VERSION}-{}|{}|{}|q{quality}|{token}",
            app.render_fingerprint,
            request.image,
            spec.canonical()
        )
    };
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
        vary: negotiated,
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
    let etag = etag_for(&key);
    let last_modified = humantime::parse_rfc3339(&meta.created_at).unwrap_or(UNIX_EPOCH);
    if if_none_match(&parts.headers, &etag) {
        return Ok(not_modified(&etag, last_modified, &headers));
    }

    // A computation is charged to the caller (bearer) or to the image's owner (signed URL,
    // at the plan the owner last authenticated with). The unit is given back if the work never
    // starts (queue full, original unavailable, request dropped while queued); once the CPU
    // work has begun it stays spent, whatever the result.
    let charge = match &principal {
        Some(p) => {
            let charge = app
                .limiter
                .charge(
                    Kind::Transforms,
                    &p.user_id,
                    p.plan.as_deref(),
                    p.role == Role::Admin,
                )
                .await;
            ctx.limit(charge)?
        }
        None => {
            // The owner's quota state is not put on a public, CDN-cacheable response; only a
            // refusal says why (the error carries it).
            let plan = app.limiter.plan_of(&meta.owner).await;
            app.limiter
                .charge(Kind::Transforms, &meta.owner, plan.as_deref(), false)
                .await?
        }
    };

    // Reserve the CPU-queue place before fetching: at most workers + queue_len originals are
    // held in memory at once, and an overloaded server refuses before doing any I/O.
    let admission = app.workers.admit()?;
    // AVIF encodes are slow: at most `transform.avif_workers` at once, so they cannot take
    // every CPU worker. No waiting: a busy limiter is `503 overloaded` with Retry-After
    // (negotiated requests were already steered to another format above).
    let avif_permit = if format == OutputFormat::Avif {
        Some(
            app.avif_permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::Overloaded)?,
        )
    } else {
        None
    };
    let original = app.catalog.original(&request.image).await?;
    let engine = app.engine.clone();
    let job_spec = spec.clone();
    let timer = metrics.transform_duration.clone();
    let encoded = app
        .workers
        .run_admitted(admission, move || {
            // The work starts: the quota unit is spent from here on.
            charge.commit();
            // Timed on the worker: queueing for a worker is not computation.
            let _timer = timer.start_timer();
            let _avif = avif_permit;
            engine.transform(&original, &job_spec, format, quality)
        })
        .await??;

    let result = Arc::new(CachedResult {
        bytes: Bytes::from(encoded.bytes),
        format,
        etag,
        image: meta.id,
        owner: meta.owner,
        last_modified,
    });
    app.cache.insert(key, result.clone());
    metrics.cache_memory_bytes.set(app.cache.bytes() as i64);
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
        Some(p) if !p.owns(owner) => Err(Error::NotFound),
        Some(_) => Ok(()),
        None => {
            ctx.set_actor(owner, "signed_url");
            Ok(())
        }
    }
}

/// Output format when the client did not ask for one and accepts none of `auto_formats`.
fn fallback_format(source: ImageFormat) -> OutputFormat {
    match source {
        ImageFormat::Jpeg => OutputFormat::Jpeg,
        // PNG keeps alpha and palette-style sharpness for PNG, GIF and (possibly alpha) WebP.
        ImageFormat::Png | ImageFormat::Gif | ImageFormat::Webp => OutputFormat::Png,
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

fn etag_for(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("\"{}\"", &hex::encode(digest)[..32])
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
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(
        last_modified.max(UNIX_EPOCH + Duration::from_secs(1)),
    )) {
        headers.insert(LAST_MODIFIED, v);
    }
    if h.vary {
        headers.insert(VARY, HeaderValue::from_static("Accept"));
    }
}

fn not_modified(etag: &str, last_modified: SystemTime, h: &ResponseHeaders) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    common_headers(&mut resp, etag, last_modified, h);
    resp
}

fn respond(req_headers: &HeaderMap, item: &CachedResult, h: &ResponseHeaders) -> Response<Body> {
    if if_none_match(req_headers, &item.etag) {
        return not_modified(&item.etag, item.last_modified, h);
    }
    let mut resp = Response::new(Full::new(item.bytes.clone()));
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
    fn etags_are_strong_and_key_dependent() {
        let a = etag_for("v1|x|rt:fit|q80|webp");
        let b = etag_for("v1|x|rt:fit|q81|webp");
        assert_ne!(a, b);
        assert!(a.starts_with('"') && !a.starts_with("W/"));
    }
}

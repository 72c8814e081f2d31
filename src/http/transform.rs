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
use std::time::{Duration, Instant, SystemTime};

use http::header::{ACCEPT, CONTENT_DISPOSITION, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;

use super::error::Error;
use super::serving::{
    Caller, ResponseHeaders, allow_viewer, cache_control, common_headers, content_disposition,
    not_modified, not_modified_response, split_signature, verify,
};
use super::{Body, Ctx};
use crate::app::App;
use crate::cache::CachedResult;
use crate::catalog::CatalogError;
use crate::limits::{ChargeObserver, Payer};
use crate::options::{OutputFormat, SourceRef, TransformRequest, parse_path_with_source};
use crate::render::{Bill, RenderError, Target, Variant};
use crate::signature::unix_now;

pub async fn handle(
    app: &Arc<App>,
    req: Request<Incoming>,
    ctx: &Ctx,
) -> Result<Response<Body>, Error> {
    let (parts, _body) = req.into_parts();
    let (signature, tail) = split_signature(parts.uri.path())?;
    let caller = verify(app, signature, tail, &parts.headers, ctx).await?;
    let (request, now) = parse(app, &caller, tail, ctx).await?;
    // AVIF leaves the negotiation once a negotiated AVIF found every encoder busy.
    let mut without_avif = false;
    let negotiate = |without_avif: bool| {
        app.render.negotiate(&request.image, &request.spec, |f| {
            !(without_avif && f == OutputFormat::Avif) && accepts(&parts.headers, f.mime())
        })
    };
    let mut variant = negotiate(without_avif);
    let headers = response_headers(app, &caller, &request, &variant, now);
    if (request.spec.raw || !request.spec.skip_processing.is_empty())
        && let Some(original) =
            super::original::serve(app, &caller, &request, &parts.headers, &headers, ctx).await?
    {
        return Ok(original);
    }
    loop {
        if let Some(hit) = serve_hit(app, &caller, &variant, ctx).await? {
            return Ok(respond(&parts.headers, &hit, &headers));
        }
        let target = match preconditions(app, &caller, variant, &parts.headers, ctx).await? {
            Ok(target) => target,
            Err(not_modified) => return Ok(not_modified.response(&headers)),
        };
        match compute(app, &caller, target, ctx).await {
            Ok(result) => return Ok(respond(&parts.headers, &result, &headers)),
            // Its quota unit was given back; the next negotiation cannot pick AVIF again.
            Err(RenderError::AvifBusy) if !without_avif => {
                without_avif = true;
                variant = negotiate(without_avif);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Phase 2: the typed, bounded transform, refused once its `exp` has passed. Returns the
/// clock reading the expiry was checked against. A legacy `s3://` source is resolved to the
/// image imported from it (after the expiry check: the first storage read of the request).
async fn parse(
    app: &App,
    caller: &Caller,
    tail: &str,
    ctx: &Ctx,
) -> Result<(TransformRequest, u64), Error> {
    let (spec, source) = parse_path_with_source(tail, &app.parse_limits)?;
    let now = unix_now();
    if spec.expires.is_some_and(|exp| now >= exp) {
        return Err(Error::UrlExpired);
    }
    let image = match source {
        SourceRef::Image(id) => id,
        SourceRef::S3 { bucket, key } => {
            let bearer = match caller {
                Caller::Bearer(p) => Some(p),
                Caller::Signed => None,
            };
            super::legacy::resolve(app, &bucket, &key, bearer, ctx).await?
        }
    };
    ctx.set_image(image.as_str(), None);
    Ok((TransformRequest { spec, image }, now))
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
    allow_viewer(app, caller, &hit.image, &hit.owner, ctx).await?;
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
    allow_viewer(app, caller, &meta.id, &meta.owner, ctx).await?;
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
) -> Result<Arc<CachedResult>, RenderError> {
    let payer = match caller {
        // A share holder's computations are charged to the image's owner, like a signed URL's
        // (ownership stays single: quotas are the owner's).
        Caller::Bearer(p) if !p.owns(&target.owner) => Payer::Owner(target.owner.clone()),
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
    app.render.resolve(target, bill).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::serving::if_none_match;
    use crate::http::serving::tests::h;
    use http::header::IF_NONE_MATCH;

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
}

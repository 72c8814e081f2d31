//! `GET /info/{signature}/{options}/{source}` — an image's facts and placeholders as JSON,
//! imgproxy's info URL shape (its client libraries' `generateImageInfoUrl` works; the
//! signature covers the path after `/info`, as imgproxy's).
//!
//! Signed like a transform (or `_` with a bearer credential that may transform the image);
//! same expiry, owner check and caching (`ETag` from the original's digest, `Cache-Control`
//! bounded by `exp`). No quota unit: the answer is stored data; for an image uploaded before
//! info existed it is computed once ([`crate::render::Renderer::with_info`]).

use std::sync::Arc;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::error::Error;
use super::serving::{
    Caller, ResponseHeaders, allow_viewer, cache_control, common_headers, not_modified,
    not_modified_response, split_signature, verify,
};
use super::{Body, Ctx};
use crate::app::App;
use crate::catalog::ImageMeta;
use crate::options::parse_info_path;
use crate::signature::unix_now;

/// Version of the info computation; part of the ETag.
const INFO_VERSION: &str = "i1";

pub async fn handle(
    app: &Arc<App>,
    req: Request<Incoming>,
    ctx: &Ctx,
) -> Result<Response<Body>, Error> {
    let (parts, _body) = req.into_parts();
    let rest = parts
        .uri
        .path()
        .strip_prefix("/info")
        .ok_or(Error::NotFound)?;
    let (signature, tail) = split_signature(rest)?;
    let caller = verify(app, signature, tail, &parts.headers, ctx).await?;
    let request = parse_info_path(tail)?;
    ctx.set_image(request.image.as_str(), None);
    let now = unix_now();
    if request.expires.is_some_and(|exp| now >= exp) {
        return Err(Error::UrlExpired);
    }
    let meta = app.catalog.meta(&request.image).await?;
    allow_viewer(app, &caller, &meta.id, &meta.owner, ctx).await?;
    let headers = ResponseHeaders {
        cache_control: cache_control(
            matches!(caller, Caller::Bearer(_)),
            request.expires,
            now,
            app.config.cache.max_age_secs,
        ),
        disposition: None,
        vary: false,
        surrogate_key: app
            .config
            .cache
            .surrogate_keys
            .then(|| request.image.to_string()),
    };
    let etag = format!("\"{INFO_VERSION}-{}\"", meta.sha256);
    let last_modified = app.render.last_modified(&meta);
    if not_modified(&parts.headers, &etag, last_modified) {
        return Ok(not_modified_response(&etag, last_modified, &headers));
    }
    let meta = app.render.with_info(meta).await?;
    let body = serde_json::to_vec(&info_json(&meta)).unwrap_or_default();
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    common_headers(&mut resp, &etag, last_modified, &headers);
    Ok(resp)
}

/// The answer: the image's size, format and bytes, then its [`crate::image::ImageInfo`].
fn info_json(meta: &ImageMeta) -> Value {
    let mut v = json!({
        "width": meta.width,
        "height": meta.height,
        "format": meta.format.as_str(),
        "mime_type": meta.format.mime(),
        "bytes": meta.bytes,
    });
    if let (Some(o), Ok(Value::Object(info))) =
        (v.as_object_mut(), serde_json::to_value(&meta.info))
    {
        o.extend(info);
    }
    v
}

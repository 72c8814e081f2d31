//! `raw:1` and `sp:<formats>` on the transform route: the stored original, with its metadata
//! removed losslessly ([`crate::image::strip_metadata`]: no re-encode, ICC profile and
//! orientation kept), instead of a processed result.
//!
//! Same checks as a transform (signature or bearer, expiry, owner, `transform.allow_raw`); no
//! computation unit is charged (nothing is computed: the strip is a linear copy on the CPU
//! pool). Not kept in the memory cache: the CDN keeps it, under an ETag made of the original's
//! digest and the strip's version, so it survives restarts and deploys.

use std::sync::Arc;

use http::header::{CONTENT_DISPOSITION, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response};

use super::error::Error;
use super::serving::{
    Caller, ResponseHeaders, allow_viewer, common_headers, content_disposition,
    not_modified_response,
};
use super::{Body, Ctx};
use crate::app::App;
use crate::id::ImageId;
use crate::image::ImageFormat;
use crate::options::TransformRequest;

/// Version of the stripping rules; part of the ETag, so a change never validates old bytes.
const STRIP_VERSION: &str = "s1";

/// The original for `request`, or `None` when the image is processed as usual (`sp` naming
/// other formats than the source's). Reads the metadata once; the caller reads it again on
/// `None` (the rare case of an `sp` that does not apply).
pub(super) async fn serve(
    app: &Arc<App>,
    caller: &Caller,
    request: &TransformRequest,
    req_headers: &HeaderMap,
    headers: &ResponseHeaders,
    ctx: &Ctx,
) -> Result<Option<Response<Body>>, Error> {
    if !app.config.transform.allow_raw {
        return Err(Error::InvalidOption(
            "raw and skip_processing are disabled on this server".into(),
        ));
    }
    // An original does not depend on `Accept`.
    let headers = &ResponseHeaders {
        vary: false,
        ..headers.clone()
    };
    let meta = app.catalog.meta(&request.image).await?;
    allow_viewer(app, caller, &meta.id, &meta.owner, ctx).await?;
    if !request.spec.serves_original(meta.format.extension()) {
        return Ok(None);
    }
    let etag = format!("\"o-{STRIP_VERSION}-{}\"", meta.sha256);
    let last_modified = app.render.last_modified(&meta);
    if super::serving::not_modified(req_headers, &etag, last_modified) {
        return Ok(Some(not_modified_response(&etag, last_modified, headers)));
    }
    let bytes = stripped(app, &request.image, meta.format).await?;
    let mut resp = Response::new(Body::from(bytes));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(meta.format.mime()));
    if let Some((name, attachment)) = &headers.disposition
        && let Ok(v) = HeaderValue::from_str(&content_disposition(
            name,
            meta.format.extension(),
            *attachment,
        ))
    {
        h.insert(CONTENT_DISPOSITION, v);
    }
    common_headers(&mut resp, &etag, last_modified, headers);
    Ok(Some(resp))
}

/// The original without metadata, stripped on the CPU pool (a large original is a few ms of
/// copying; its memory is reserved like a decode's).
async fn stripped(app: &App, id: &ImageId, format: ImageFormat) -> Result<Vec<u8>, Error> {
    let original = app.catalog.original(id).await?;
    let memory = 2 * original.len() as u64;
    let out = app
        .render
        .workers
        .run(memory, move || {
            crate::image::strip_metadata(&original, format)
        })
        .await
        .map_err(crate::render::RenderError::from)??;
    Ok(out)
}

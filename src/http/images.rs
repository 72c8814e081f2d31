//! `POST /v1/images` (upload) and `GET /v1/images/{id}` (metadata).
//!
//! Upload order of checks: token → role → declared type → declared length → body (capped) →
//! magic bytes match the declared type → header pixel count → full decode on the CPU pool →
//! durable write → `201`. Nothing is stored unless every check passed, and `201` is sent only
//! after the write succeeded.

use std::time::SystemTime;

use http::header::{CONTENT_TYPE, HeaderValue, LOCATION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use super::{Body, Ctx, authenticate, json_response, read_body, reject_large_body};
use crate::app::App;
use crate::auth::Role;
use crate::catalog::ImageMeta;
use crate::error::Error;
use crate::id::ImageId;
use crate::image::{self, ImageFormat};

pub async fn create(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>, Error> {
    if req.method() != http::Method::POST {
        return Err(Error::MethodNotAllowed("POST"));
    }
    let (parts, body) = req.into_parts();
    let principal = authenticate(app, &parts.headers)?;
    principal.require(Role::Editor, "uploading requires the editor or admin role")?;

    let declared = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(ImageFormat::from_mime)
        .ok_or_else(|| {
            Error::UnsupportedMediaType(
                "Content-Type must be image/jpeg, image/png, image/webp or image/gif".into(),
            )
        })?;
    let cap = app.config.limits.max_source_bytes;
    reject_large_body(&parts.headers, cap)?;
    let bytes = read_body(body, cap).await?;
    if bytes.is_empty() {
        return Err(Error::InvalidImage("empty body".into()));
    }
    let sniffed = image::sniff(&bytes).ok_or_else(|| {
        Error::UnsupportedMediaType("the body is not a JPEG, PNG, WebP or GIF image".into())
    })?;
    if sniffed != declared {
        return Err(Error::UnsupportedMediaType(format!(
            "declared {} but the body is {}",
            declared.mime(),
            sniffed.mime()
        )));
    }
    // Header-only check on the async side: cheap, and refuses pixel floods before any work
    // is queued.
    let probe = image::probe(&bytes)?;
    app.image_limits.check_source(probe.width, probe.height)?;

    let limits = app.image_limits;
    let job = bytes.clone();
    let (probe, sha256) = app
        .workers
        .run(move || {
            let probe = image::validate_upload(&job, &limits)?;
            Ok::<_, image::ImageError>((probe, hex::encode(Sha256::digest(&job))))
        })
        .await??;

    let id = ImageId::generate().map_err(|e| Error::Internal(format!("id generation: {e}")))?;
    // Dimensions as displayed (EXIF orientation applied), the space transforms work in.
    let (width, height) = probe.oriented_dimensions();
    let meta = ImageMeta {
        id: id.to_string(),
        owner: principal.user_id.clone(),
        format: probe.format,
        width,
        height,
        bytes: bytes.len() as u64,
        sha256,
        created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    // The durable write runs in its own task: if this request is cancelled (deadline, client
    // reset), the write and its cleanup still finish instead of stopping half-way.
    let catalog = app.catalog.clone();
    let record = meta.clone();
    tokio::spawn(async move { catalog.create(&record, bytes).await })
        .await
        .map_err(|e| Error::Internal(format!("storage task failed: {e}")))??;
    tracing::info!(request_id = %ctx.request_id, image = %id, format = probe.format.as_str(), bytes = meta.bytes, "image stored");

    let mut resp = json_response(
        StatusCode::CREATED,
        &serde_json::to_value(&meta).unwrap_or_default(),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/images/{id}")) {
        resp.headers_mut().insert(LOCATION, v);
    }
    Ok(resp)
}

pub async fn get(app: &App, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    let principal = authenticate(app, req.headers())?;
    let raw = req
        .uri()
        .path()
        .strip_prefix("/v1/images/")
        .unwrap_or_default();
    let id = ImageId::parse(raw).ok_or(Error::NotFound)?;
    let meta = app.catalog.meta(&id).await?;
    if !principal.can_read(&meta.owner) {
        return Err(Error::NotFound);
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::to_value(&meta).unwrap_or_default(),
    ))
}

//! The image API: upload (`POST /v1/images`, raw or multipart), list, get, `PATCH` metadata,
//! `DELETE`, and signed-URL minting (`POST /v1/images/{id}/url`).
//!
//! Every handler authenticates, checks the action against the role and API-key scopes (`403`),
//! then — for one image — ownership (`404`, so ids cannot be probed). Admins act on any image,
//! and on behalf of a user with `?owner=` where a route creates or lists.
//!
//! Upload order of checks: credential → role/scope → declared type (allowed by
//! `limits.upload_formats`) → declared length → body (capped; multipart parsed with per-field
//! limits) → magic bytes match the declared type → header pixel count → full decode on the CPU
//! pool → durable write → `201`. Nothing is stored unless every check passed.
//!
//! `DELETE` answers `204` only after the original, every derived object and every memory-cache
//! entry of the image are gone, so a signed URL minted earlier then gets `404` from the origin;
//! the CDN purge hook follows in the background. An upload's `201` starts the eager preset
//! renders (`presets.eager`) in the background.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, LOCATION};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::error::Error;
use super::{
    Body, Ctx, acting_for, authenticate_for, charge_caller, json_response, no_content, query_param,
    read_body, read_json, reject_large_body, with_fields,
};
use crate::access::Level;
use crate::app::App;
use crate::auth::{Action, Principal};
use crate::catalog::CatalogError;
use crate::catalog::{ImageMeta, MetaPatch, normalise_tags};
use crate::id::ImageId;
use crate::image::{self, ImageFormat};
use crate::limits::{Charge, Kind};
use crate::options::parse_path;

/// Room for multipart framing and the metadata fields on top of the image itself.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;
const MAX_TEXT_FIELD: u64 = 4 * 1024;
const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;
const MAX_OPTIONS_LEN: usize = 2048;
/// Tags a multipart upload may list before de-duplication.
const MAX_RAW_TAGS: usize = 100;

/// The image `raw_id` if `principal` reaches it at `need` (`access::Level`): `404` for
/// malformed ids, missing images and images the caller cannot see alike; `403` for an image it
/// sees (through a share or a collection) but may not act on this way.
pub(crate) async fn image_for(
    app: &App,
    principal: &Principal,
    raw_id: &str,
    ctx: &Ctx,
    need: Level,
) -> Result<ImageMeta, Error> {
    reach(app, principal, raw_id, ctx, need, false).await
}

/// [`image_for`] at `Manage`, also when an interrupted delete marked it `deleting`.
async fn image_for_delete(
    app: &App,
    principal: &Principal,
    raw_id: &str,
    ctx: &Ctx,
) -> Result<ImageMeta, Error> {
    reach(app, principal, raw_id, ctx, Level::Manage, true).await
}

async fn reach(
    app: &App,
    principal: &Principal,
    raw_id: &str,
    ctx: &Ctx,
    need: Level,
    deleting_too: bool,
) -> Result<ImageMeta, Error> {
    ctx.set_image(raw_id, None);
    let id = ImageId::parse(raw_id).ok_or(Error::NotFound)?;
    let meta = if deleting_too {
        app.catalog.meta_for_delete(&id).await?
    } else {
        app.catalog.meta(&id).await?
    };
    let level = app
        .access
        .image_level(principal, &meta.id, &meta.owner)
        .await?;
    if level == Level::None {
        // Audited as `access.denied`; answered like a missing image.
        ctx.set_denied();
        return Err(Error::NotFound);
    }
    ctx.set_image(raw_id, Some(&meta.owner));
    if level < need {
        ctx.set_denied();
        return Err(Error::Forbidden(match need {
            Level::Edit => "changing this image needs an edit share",
            _ => "only the image's owner (or an admin) may do this",
        }));
    }
    Ok(meta)
}

/// An image as the API shows it: the record, with its info's fields (`orientation`,
/// `blurhash`, `lqip`, …) at the top level, as `/info` answers them.
pub(crate) fn meta_json(meta: &ImageMeta) -> Value {
    let mut v = serde_json::to_value(meta).unwrap_or_default();
    // Where an in-place original lives is the operator's business: only that it is one shows.
    if let Some(o) = v.as_object_mut()
        && o.remove("reference").is_some()
    {
        o.insert("in_place".into(), Value::Bool(true));
    }
    if let Some(Value::Object(info)) = v.as_object_mut().and_then(|o| o.remove("info"))
        && let Some(o) = v.as_object_mut()
    {
        o.extend(info);
    }
    v
}

pub async fn create(
    app: &Arc<App>,
    req: Request<Incoming>,
    ctx: &Ctx,
) -> Result<Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    let principal = authenticate_for(app, &parts.headers, ctx, Action::Upload).await?;
    let owner = acting_for(&principal, parts.uri.query())?;
    ctx.set_subject(&owner);
    // Charged before the body is read, so a caller over quota costs no bandwidth or decode.
    // An upload refused before its full decode starts (type, size, header checks, a full CPU
    // queue, a dropped connection) gives the unit back; once the decode has started the unit
    // is spent, whatever follows, so undecodable bodies cannot buy free CPU time.
    let charge = charge_caller(app, ctx, Kind::Uploads, &principal).await?;
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let cap = app.config.limits.max_source_bytes;
    let (bytes, declared, patch) = if content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        reject_large_body(&parts.headers, cap + MULTIPART_OVERHEAD)?;
        read_multipart(&app.config.limits.upload_formats, body, content_type, cap).await?
    } else {
        let declared = declared_format(&app.config.limits.upload_formats, content_type)?;
        reject_large_body(&parts.headers, cap)?;
        (read_body(body, cap).await?, declared, MetaPatch::default())
    };
    let (probe, info, sha256) = validate(app, &bytes, declared, charge).await?;

    let id = ImageId::generate().map_err(|e| Error::Internal(format!("id generation: {e}")))?;
    // Dimensions as displayed (EXIF orientation applied), the space transforms work in.
    let (width, height) = probe.oriented_dimensions();
    let meta = ImageMeta {
        id: id.to_string(),
        owner,
        format: probe.format,
        width,
        height,
        bytes: bytes.len() as u64,
        sha256,
        created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        title: patch.title.flatten(),
        alt_text: patch.alt_text.flatten(),
        tags: patch.tags.unwrap_or_default(),
        deleting: false,
        info: Some(info),
        source: None,
        reference: None,
    };
    // The durable write runs in its own task: if this request is cancelled (deadline, client
    // reset), the write and its cleanup still finish instead of stopping half-way.
    let catalog = app.catalog.clone();
    let record = meta.clone();
    tokio::spawn(async move { catalog.create(&record, bytes).await })
        .await
        .map_err(|e| Error::Internal(format!("storage task failed: {e}")))??;
    tracing::info!(request_id = %ctx.request_id, image = %id, format = probe.format.as_str(), bytes = meta.bytes, "image stored");
    ctx.set_image(&meta.id, Some(&meta.owner));
    ctx.set_bytes_in(meta.bytes);
    // `presets.eager`: rendered in the background, never delaying the `201`, so the first
    // views are cache hits.
    app.render.spawn_eager(&meta);

    // As `GET` shows it to its owner: in no collection yet.
    let created = with_fields(meta_json(&meta), [("collections", json!([]))]);
    let mut resp = json_response(StatusCode::CREATED, &created);
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/images/{id}")) {
        resp.headers_mut().insert(LOCATION, v);
    }
    Ok(resp)
}

/// The declared image type, which must be one `limits.upload_formats` (`allowed`) names.
fn declared_format(allowed: &[ImageFormat], content_type: &str) -> Result<ImageFormat, Error> {
    ImageFormat::from_mime(content_type)
        .filter(|f| allowed.contains(f))
        .ok_or_else(|| {
            Error::UnsupportedMediaType(format!(
                "Content-Type must be one of: {}",
                allowed
                    .iter()
                    .map(|f| f.mime())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Magic bytes, header pixel count, then a full decode and the SHA-256 on the CPU pool; the
/// upload's quota unit is committed when that decode starts.
async fn validate(
    app: &App,
    bytes: &Bytes,
    declared: ImageFormat,
    charge: Charge,
) -> Result<(image::Probe, image::ImageInfo, String), Error> {
    validate_original(app, bytes, Some(declared), move || charge.commit()).await
}

/// The checks every original passes before it is stored, uploads and imports alike: not
/// empty, a known signature, the declared type if any (otherwise the sniffed type must be one
/// `limits.upload_formats` allows), header pixel count, then a full decode (which also gives
/// the placeholders) and the SHA-256 on the CPU pool. `started` runs when the decode starts.
pub(crate) async fn validate_original(
    app: &App,
    bytes: &Bytes,
    declared: Option<ImageFormat>,
    started: impl FnOnce() + Send + 'static,
) -> Result<(image::Probe, image::ImageInfo, String), Error> {
    if bytes.is_empty() {
        return Err(Error::InvalidImage("empty body".into()));
    }
    let sniffed = image::sniff(bytes).ok_or_else(|| {
        Error::UnsupportedMediaType(
            "the body is not a JPEG, PNG, WebP, GIF, BMP, ICO or TIFF image".into(),
        )
    })?;
    match declared {
        Some(declared) if sniffed != declared => {
            return Err(Error::UnsupportedMediaType(format!(
                "declared {} but the body is {}",
                declared.mime(),
                sniffed.mime()
            )));
        }
        Some(_) => {}
        None => {
            declared_format(&app.config.limits.upload_formats, sniffed.mime())?;
        }
    }
    // Header-only check on the async side: cheap, and refuses pixel floods before any work
    // is queued.
    let probe = image::probe(bytes)?;
    app.image_limits.check_source(probe.width, probe.height)?;
    let limits = app.image_limits;
    let job = bytes.clone();
    Ok(app
        .render
        .workers
        .run(image::memory_cost(&probe), move || {
            started();
            // The full decode that validates the upload also gives the placeholders.
            let (probe, info) = image::analyze_upload(&job, &limits)?;
            Ok::<_, image::ImageError>((probe, info, hex::encode(Sha256::digest(&job))))
        })
        .await??)
}

/// Parses a `multipart/form-data` upload: `file` (required, once, with a Content-Type that
/// `allowed` names), optional `title`, `alt_text` and `tags` (repeated, or comma-separated).
/// Generic over the body so the fuzz target ([`crate::fuzzing`]) drives the same code.
pub(crate) async fn read_multipart<B>(
    allowed: &[ImageFormat],
    body: B,
    content_type: &str,
    cap: u64,
) -> Result<(Bytes, ImageFormat, MetaPatch), Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use multer::{Constraints, Multipart, SizeLimit};
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| Error::BadRequest("multipart Content-Type without a boundary".into()))?;
    let constraints = Constraints::new()
        .allowed_fields(vec!["file", "title", "alt_text", "tags"])
        .size_limit(
            SizeLimit::new()
                .whole_stream(cap + MULTIPART_OVERHEAD)
                .per_field(MAX_TEXT_FIELD)
                .for_field("file", cap),
        );
    let mut form = Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
    let mut file: Option<(Bytes, ImageFormat)> = None;
    let mut patch = MetaPatch::default();
    let mut tags: Vec<String> = Vec::new();
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| multipart_error(e, cap))?
    {
        let name = field.name().unwrap_or("").to_owned();
        match name.as_str() {
            "file" => {
                if file.is_some() {
                    return Err(Error::InvalidField("file: given more than once".into()));
                }
                let declared = declared_format(
                    allowed,
                    field.content_type().map_or("", |m| m.essence_str()),
                )?;
                let bytes = field.bytes().await.map_err(|e| multipart_error(e, cap))?;
                file = Some((bytes, declared));
            }
            _ => {
                // Strict UTF-8, like the JSON path: multer's `text()` replaces invalid bytes.
                let raw = field.bytes().await.map_err(|e| multipart_error(e, cap))?;
                let text = String::from_utf8(raw.to_vec())
                    .map_err(|_| Error::InvalidField(format!("{name}: not valid UTF-8")))?;
                match name.as_str() {
                    "tags" => {
                        tags.extend(text.split(',').map(str::to_owned));
                        // Duplicates are allowed, but not without bound.
                        if tags.len() > MAX_RAW_TAGS {
                            return Err(Error::InvalidField(format!(
                                "tags: at most {MAX_RAW_TAGS} given"
                            )));
                        }
                    }
                    field_name => {
                        let v = MetaPatch::from_json(&json!({ field_name: text }))?;
                        patch.title = v.title.or(patch.title);
                        patch.alt_text = v.alt_text.or(patch.alt_text);
                    }
                }
            }
        }
    }
    if !tags.is_empty() {
        patch.tags = Some(normalise_tags(tags)?);
    }
    let (bytes, declared) =
        file.ok_or_else(|| Error::InvalidField("file: the multipart body has no file".into()))?;
    Ok((bytes, declared, patch))
}

fn multipart_error(e: multer::Error, cap: u64) -> Error {
    match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            Error::PayloadTooLarge { limit: cap }
        }
        multer::Error::UnknownField { field_name } => Error::InvalidField(format!(
            "`{}` is not an upload field (file, title, alt_text, tags)",
            field_name
                .unwrap_or_default()
                .chars()
                .take(40)
                .collect::<String>()
        )),
        _ => Error::BadRequest("malformed multipart body".into()),
    }
}

/// `?limit=` (1..=100, default 20).
pub(crate) fn page_limit(query: Option<&str>) -> Result<usize, Error> {
    match query_param(query, "limit")? {
        None => Ok(DEFAULT_PAGE),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| Error::InvalidField(format!("limit: 1..={MAX_PAGE}"))),
    }
}

pub async fn list(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>, Error> {
    let principal = authenticate_for(app, req.headers(), ctx, Action::Read).await?;
    let query = req.uri().query();
    let limit = page_limit(query)?;
    let cursor = query_param(query, "cursor")?;
    if super::shared::wanted(query)? {
        return list_shared(app, &principal, cursor.as_deref(), limit).await;
    }
    let owner = acting_for(&principal, query)?;
    ctx.set_subject(&owner);
    let page = app
        .catalog
        .list(&owner, cursor.as_deref().filter(|c| !c.is_empty()), limit)
        .await?;
    let items: Vec<Value> = page.items.iter().map(meta_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"items": items, "next_cursor": page.next_cursor}),
    ))
}

pub async fn get(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
) -> Result<Response<Body>, Error> {
    let principal = authenticate_for(app, req.headers(), ctx, Action::Read).await?;
    let meta = image_for(app, &principal, id, ctx, Level::Read).await?;
    // Its owner sees which collections hold it (and can take it out of any of them).
    let holders = match principal.owns(&meta.owner) {
        true => {
            Some(crate::access::collections::holders(app.access.store.as_ref(), &meta.id).await?)
        }
        false => None,
    };
    // Images uploaded before placeholders existed get them now (once; see `render::info`).
    // The record is answered without them if that fails: its metadata is still good.
    let meta = match app.render.with_info(meta.clone()).await {
        Ok(with) => with,
        Err(e) => {
            tracing::warn!(request_id = %ctx.request_id, image = %meta.id, error = %e, "could not compute image info");
            meta
        }
    };
    let v = match holders {
        Some(h) => with_fields(meta_json(&meta), [("collections", json!(h))]),
        None => meta_json(&meta),
    };
    Ok(json_response(StatusCode::OK, &v))
}

pub async fn update(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
) -> Result<Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    let principal = authenticate_for(app, &parts.headers, ctx, Action::Update).await?;
    let meta = image_for(app, &principal, id, ctx, Level::Edit).await?;
    let patch = MetaPatch::from_json(&read_json(body, app.config.server.max_body_bytes).await?)?;
    if patch.is_empty() {
        // An empty body or `{}` changes nothing: most likely a client bug, and a 200 would hide it.
        return Err(Error::InvalidField(
            "body: name at least one of title, alt_text, tags".into(),
        ));
    }
    let id = ImageId::parse(&meta.id).ok_or(Error::NotFound)?;
    let updated = app.catalog.update(&id, &patch).await?;
    Ok(json_response(StatusCode::OK, &meta_json(&updated)))
}

pub async fn delete(
    app: &Arc<App>,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
) -> Result<Response<Body>, Error> {
    let principal = authenticate_for(app, req.headers(), ctx, Action::Delete).await?;
    // An image whose delete was interrupted is gone for every reader, but its owner's
    // `DELETE` finishes the job (and answers 204 once everything is gone).
    let meta = image_for_delete(app, &principal, id, ctx).await?;
    // Memory, original, derived objects, metadata; then the CDN purge hook in the background.
    app.render.delete_image(&meta).await?;
    tracing::info!(request_id = %ctx.request_id, image = %meta.id, "image deleted");
    let event = crate::fleet::Event::ImageDeleted { image: meta.id };
    Ok(super::propagate::propagate(app, event, ctx, no_content()).await)
}

/// `{options, expires_in}` → `{url, expires_at}`: a signed transform URL for the image, with an
/// `exp:` no later than `signing.max_url_ttl_secs` from now.
pub async fn sign_url(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
) -> Result<Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    let principal = authenticate_for(app, &parts.headers, ctx, Action::Transform).await?;
    let meta = image_for(app, &principal, id, ctx, Level::Read).await?;
    let req_body = read_json(body, app.config.server.max_body_bytes).await?;
    let s = &app.config.signing;
    let options = match req_body.get("options") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(o)) if o.len() <= MAX_OPTIONS_LEN => o.trim_matches('/').to_owned(),
        Some(_) => {
            return Err(Error::InvalidField(format!(
                "options: a string of at most {MAX_OPTIONS_LEN} bytes"
            )));
        }
    };
    let ttl = match req_body.get("expires_in") {
        None | Some(Value::Null) => s.default_url_ttl_secs,
        Some(v) => v
            .as_u64()
            .filter(|t| (1..=s.max_url_ttl_secs).contains(t))
            .ok_or_else(|| {
                Error::InvalidField(format!(
                    "expires_in: whole seconds, 1..={}",
                    s.max_url_ttl_secs
                ))
            })?,
    };
    let exp = crate::signature::unix_now() + ttl;
    let path = if options.is_empty() {
        format!("/exp:{exp}/plain/{}", meta.id)
    } else {
        format!("/exp:{exp}/{options}/plain/{}", meta.id)
    };
    // Only what the transform route would accept is signed, and only for this image.
    let parsed = parse_path(&path, &app.parse_limits)?;
    if parsed.image.as_str() != meta.id {
        return Err(Error::InvalidField(
            "options: must not name a source".into(),
        ));
    }
    // A preset may carry its own `exp`: the minted lifetime must be the one in force.
    if parsed.spec.expires != Some(exp) {
        return Err(Error::InvalidField(
            "options: must not set the expiry (use expires_in)".into(),
        ));
    }
    let url = format!("/{}{}", app.signer.load().sign(&path), path);
    Ok(json_response(
        StatusCode::OK,
        &json!({"url": url, "expires_at": exp, "expires_in": ttl}),
    ))
}

/// Images shared with the caller, newest share last, each with how far the caller reaches it.
pub(super) async fn list_shared(
    app: &App,
    p: &Principal,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Response<Body>, Error> {
    let (shared, next) = super::shared::resources(app, p, cursor, limit, true).await?;
    let mut items = Vec::new();
    for (id, s) in &shared {
        let Some(image) = ImageId::parse(id) else {
            continue;
        };
        let meta = match app.catalog.meta(&image).await {
            Ok(m) => m,
            Err(CatalogError::NotFound) => continue,
            Err(e) => return Err(e.into()),
        };
        // The caller's own images (shared with a team they are in) are their own listing's.
        if meta.owner == p.user_id {
            continue;
        }
        let level = app.access.image_level(p, &meta.id, &meta.owner).await?;
        if level < Level::Read {
            continue;
        }
        items.push(with_fields(
            meta_json(&meta),
            [("access", json!(level)), ("shared", super::shared::via(s))],
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"items": items, "next_cursor": next}),
    ))
}

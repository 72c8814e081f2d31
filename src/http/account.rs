//! Data-subject rights: `GET /v1/me/export` (GDPR Art. 15 and 20) and `DELETE /v1/me`
//! (Art. 17). Admins act for a user with `?owner=`.
//!
//! **Export** streams a ZIP (`zipstream`, stored entries) through a bounded body channel:
//! `manifest.json` (schema, account, every image's metadata, API keys without secrets,
//! usage), `images/{id}.{ext}` (the originals, byte-identical) and `audit.ndjson` (the events
//! the user performed, within retention — never other people's events about their images,
//! which hold those people's addresses). Memory is one original plus a few chunks, whatever
//! the account's size: metadata is listed page by page twice (manifest, then originals)
//! rather than held. Anything that fails before the first byte gets a normal error; a failure
//! mid-stream aborts the response, so a truncated archive never looks complete.
//!
//! **Erasure** is synchronous: `204` only when everything is gone. It runs in a task of its
//! own, so a client that hangs up or a request deadline does not stop it half-way, and a
//! repeated `DELETE` joins the erasure in progress (`AccountJobs::erasures`). Order: every image
//! through `render::delete_image` (memory purge and tombstone, original, derived prefix, owner
//! index, metadata, CDN purge), repeated until the owner index is empty; API keys; their
//! collections, team memberships and the shares they granted or received (`access::account`);
//! the
//! anything left under the user's `users/` prefix; the user's limiter state in Redis and in
//! this process. The user's tokens keep working afterwards, as an empty account — except
//! tokens an admin revoked before: the revocation record (a hash and a time) is kept. Audit
//! records are kept for `audit.retention_days` (`docs/privacy.md`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::error::Error;
use super::{Body, BodySender, Ctx, acting_for, authenticate, no_content};
use crate::app::App;
use crate::audit::query::{self, Cursor, Filter};
use crate::auth::{Action, AuthMethod};
use crate::cache::Joined;
use crate::catalog::ImageMeta;
use crate::id::ImageId;
use crate::limits::DEFAULT_PLAN;
use crate::storage::Bucket;
use crate::zipstream::ZipStream;

/// The export's manifest schema.
pub const EXPORT_SCHEMA: &str = "pixgate.export/1";
/// Images listed per page while exporting or erasing.
const PAGE: usize = 100;
/// Chunks buffered between the producer and the connection.
const CHANNEL_CHUNKS: usize = 4;
/// Originals are sent in chunks of this size (slices of one buffer, no copies).
const CHUNK: usize = 256 * 1024;
/// A client that takes no chunk for this long is abandoned.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Images deleted at once during an erasure.
const ERASE_CONCURRENCY: usize = 8;

pub async fn export(
    app: &Arc<App>,
    req: Request<Incoming>,
    ctx: &Ctx,
) -> Result<Response<Body>, Error> {
    let (parts, _body) = req.into_parts();
    let principal = authenticate(app, &parts.headers, ctx).await?;
    principal.allow(Action::Read)?;
    let user = acting_for(&principal, parts.uri.query())?;
    ctx.set_subject(&user);
    let head = export_head(app, &principal, &user).await?;
    let (tx, body) = Body::channel(CHANNEL_CHUNKS);
    if parts.method != Method::HEAD {
        // One export per account at a time: each reads every original and the archive.
        let Joined::Leader(running) = app.jobs.exports.join(&user) else {
            return Err(Error::ExportInProgress);
        };
        let app = app.clone();
        let request_id = ctx.request_id.clone();
        tokio::spawn(async move {
            let _running = running;
            if let Err(e) = produce(&app, &user, head, &tx).await {
                match e {
                    Stop::Gone => {
                        tracing::info!(request_id = %request_id, "export abandoned by the client")
                    }
                    Stop::Failed(e) => {
                        tracing::error!(request_id = %request_id, error = %e, "export failed mid-stream");
                        let _ = tx.send(Err(std::io::Error::other("export failed"))).await;
                    }
                }
            }
        });
    }
    Ok(zip_response(body))
}

/// The export's `200`: a ZIP attachment, never cached.
fn zip_response(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    h.insert(
        CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"pixgate-export.zip\""),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The manifest's head: account, API keys and usage. Everything that can fail cheaply fails
/// here, with a status, before the stream starts.
async fn export_head(
    app: &App,
    principal: &crate::auth::Principal,
    user: &str,
) -> Result<Value, Error> {
    let own = user == principal.user_id;
    let plan = if own {
        principal.plan.clone()
    } else {
        app.limiter.plan_of(user).await
    };
    let keys: Vec<Value> = app
        .auth
        .api_keys
        .list(user)
        .await?
        .iter()
        .map(|(r, used)| r.public_json(used.as_deref()))
        .collect();
    app.catalog.list(user, None, 1).await?;
    let usage: serde_json::Map<String, Value> = app
        .limiter
        .usage(user, plan.as_deref())
        .await
        .iter()
        .map(|s| {
            (
                s.policy.kind.name().to_owned(),
                json!({"limit": s.policy.limit, "used": s.used, "window_secs": s.policy.window_ms / 1000}),
            )
        })
        .collect();
    let account = json!({
        "user_id": user,
        // The role and plan are the identity provider's; known for the caller's own account.
        "role": own.then(|| principal.role.as_str()),
        "plan": plan.as_deref().unwrap_or(DEFAULT_PLAN),
    });
    let mut head = json!({
        "schema": EXPORT_SCHEMA,
        "audit_schema": crate::audit::SCHEMA,
        "exported_at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        "account": account,
        "api_keys": keys,
        "usage": usage,
    });
    // Teams (with the user's role), their collections with items, shares given and received.
    let access = crate::access::account::export_user(&app.access.store, user).await?;
    if let (Some(h), Value::Object(a)) = (head.as_object_mut(), access) {
        h.extend(a);
    }
    Ok(head)
}

/// Why a producer stopped early.
enum Stop {
    /// The client went away (or stopped reading).
    Gone,
    Failed(String),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Failed(e.to_string())
    }
}

impl From<crate::catalog::CatalogError> for Stop {
    fn from(e: crate::catalog::CatalogError) -> Stop {
        Stop::Failed(e.to_string())
    }
}

impl From<crate::audit::AuditError> for Stop {
    fn from(e: crate::audit::AuditError) -> Stop {
        Stop::Failed(e.to_string())
    }
}

impl From<crate::zipstream::ZipError> for Stop {
    fn from(e: crate::zipstream::ZipError) -> Stop {
        Stop::Failed(e.to_string())
    }
}

async fn send(tx: &BodySender, b: Bytes) -> Result<(), Stop> {
    if b.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(b))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Stop::Gone),
    }
}

/// Sends `b` as data of the open entry.
async fn data(zip: &mut ZipStream, tx: &BodySender, b: Bytes) -> Result<(), Stop> {
    zip.data(&b)?;
    send(tx, b).await
}

fn created(meta: &ImageMeta) -> SystemTime {
    humantime::parse_rfc3339(&meta.created_at).unwrap_or(UNIX_EPOCH)
}

/// The export's ZIP: `manifest.json` (the head, then every image's metadata), `images/`
/// (the originals, in the same order), `audit.ndjson` (what the user did, within retention).
async fn produce(app: &App, user: &str, head: Value, tx: &BodySender) -> Result<(), Stop> {
    let mut zip = ZipStream::new();
    let now = SystemTime::now();
    write_manifest(app, user, head, &mut zip, tx, now).await?;
    write_originals(app, user, &mut zip, tx).await?;
    write_audit(app, user, &mut zip, tx, now).await?;
    send(tx, zip.finish()?).await
}

/// `manifest.json`: the head's fields, then `"images": [...]` page by page.
async fn write_manifest(
    app: &App,
    user: &str,
    head: Value,
    zip: &mut ZipStream,
    tx: &BodySender,
    now: SystemTime,
) -> Result<(), Stop> {
    send(tx, zip.begin("manifest.json", now)?).await?;
    let mut text = serde_json::to_string_pretty(&head).map_err(|e| Stop::Failed(e.to_string()))?;
    text.truncate(text.trim_end().trim_end_matches('}').trim_end().len());
    text.push_str(",\n  \"images\": [");
    data(zip, tx, Bytes::from(text)).await?;
    let mut first = true;
    let mut cursor: Option<String> = None;
    loop {
        // Images whose delete was interrupted too: the erasure finishes them.
        let page = app
            .catalog
            .list_for_erasure(user, cursor.as_deref(), PAGE)
            .await?;
        let mut chunk = String::new();
        for meta in &page.items {
            chunk.push_str(if first { "\n    " } else { ",\n    " });
            first = false;
            chunk.push_str(&serde_json::to_string(meta).map_err(|e| Stop::Failed(e.to_string()))?);
        }
        data(zip, tx, Bytes::from(chunk)).await?;
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    data(zip, tx, Bytes::from_static(b"\n  ]\n}\n")).await?;
    send(tx, zip.end()?).await
}

/// `images/`: the originals, in the manifest's order.
async fn write_originals(
    app: &App,
    user: &str,
    zip: &mut ZipStream,
    tx: &BodySender,
) -> Result<(), Stop> {
    let mut cursor: Option<String> = None;
    loop {
        // Images whose delete was interrupted too: the erasure finishes them.
        let page = app
            .catalog
            .list_for_erasure(user, cursor.as_deref(), PAGE)
            .await?;
        for meta in &page.items {
            let Some(id) = ImageId::parse(&meta.id) else {
                continue;
            };
            let original = match app.catalog.original(&id).await {
                Ok(b) => b,
                // Deleted since it was listed: not part of the export.
                Err(crate::catalog::CatalogError::NotFound) => continue,
                // An in-place original gone from (or replaced in) its bucket: the manifest
                // lists the image, `images/` cannot hold what pixgate no longer has.
                Err(
                    crate::catalog::CatalogError::SourceGone
                    | crate::catalog::CatalogError::SourceChanged,
                ) => {
                    tracing::warn!(image = %id, "export: the in-place original is gone or changed");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let name = format!("images/{}.{}", meta.id, meta.format.as_str());
            // The original is in memory: its CRC and size go in the header (no descriptor).
            send(tx, zip.begin_known(&name, created(meta), &original)?).await?;
            let mut at = 0;
            while at < original.len() {
                let end = (at + CHUNK).min(original.len());
                data(zip, tx, original.slice(at..end)).await?;
                at = end;
            }
            send(tx, zip.end()?).await?;
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(())
}

/// `audit.ndjson`: the user's own audit events, within retention.
async fn write_audit(
    app: &App,
    user: &str,
    zip: &mut ZipStream,
    tx: &BodySender,
    now: SystemTime,
) -> Result<(), Stop> {
    send(tx, zip.begin("audit.ndjson", now)?).await?;
    let until = query::now_secs() + 1;
    let filter = Filter {
        actor: Some(user.to_owned()),
        since: until.saturating_sub(app.config.audit.retention_days.saturating_mul(86_400)),
        until,
        ..Filter::default()
    };
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = query::page(app.store.as_ref(), &filter, cursor.as_ref(), 1000).await?;
        let mut chunk = Vec::new();
        for e in &page.items {
            serde_json::to_writer(&mut chunk, e).map_err(|e| Stop::Failed(e.to_string()))?;
            chunk.push(b'\n');
        }
        data(zip, tx, Bytes::from(chunk)).await?;
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    send(tx, zip.end()?).await
}

pub async fn erase(
    app: &Arc<App>,
    req: Request<Incoming>,
    ctx: &Ctx,
) -> Result<Response<Body>, Error> {
    let principal = authenticate(app, req.headers(), ctx).await?;
    // An API key (scoped, long-lived, stored by scripts) never erases an account; a token from
    // the identity provider does, or an admin's credential.
    if matches!(principal.method, AuthMethod::ApiKey { .. }) {
        principal.allow(Action::Admin).map_err(|_| {
            Error::Forbidden("account erasure requires a token from the identity provider")
        })?;
    }
    let user = acting_for(&principal, req.uri().query())?;
    ctx.set_subject(&user);
    // A lead abandoned without a result (it cannot be: the task always finishes) is retried.
    for _ in 0..3 {
        let wait = match app.jobs.erasures.join(&user) {
            Joined::Leader(lead) => {
                let wait = lead.subscribe();
                let app = app.clone();
                let user = user.clone();
                let request_id = ctx.request_id.clone();
                tokio::spawn(async move {
                    let r = erase_account(&app, &user).await;
                    match &r {
                        Ok(n) => {
                            tracing::warn!(request_id = %request_id, images = n, "account erased")
                        }
                        Err(e) => {
                            tracing::error!(request_id = %request_id, error = %e, "account erasure failed")
                        }
                    }
                    let erased = r.is_ok();
                    let r = match r {
                        Ok(_) => {
                            let event = crate::fleet::Event::AccountErased { user: user.clone() };
                            Ok(super::propagate::broadcast(&app, &event).await)
                        }
                        Err(e) => Err(e),
                    };
                    lead.finish(r);
                    if erased {
                        // Another instance may still trust a cached key for up to
                        // `auth.revocation_cache_secs` and record its use: clear such markers
                        // once every cache has expired.
                        let bound = Duration::from_secs(app.config.auth.revocation_cache_secs + 5);
                        tokio::time::sleep(bound).await;
                        if let Err(e) = app.auth.api_keys.remove_orphan_markers(&user).await {
                            tracing::warn!(error = %e, "could not clear API key markers after an erasure");
                        }
                    }
                });
                wait
            }
            Joined::Follower(wait) => wait,
        };
        if let Some(r) = wait.wait().await {
            return r.map(|p| super::propagate::report(app, p.as_ref(), ctx, no_content()));
        }
    }
    Err(Error::Overloaded)
}

/// Erases everything held about `user`; returns how many images were deleted.
async fn erase_account(app: &Arc<App>, user: &str) -> Result<usize, Error> {
    let mut deleted = 0;
    // Each round lists from the start: deleted images leave the index. Rounds end when a
    // listing is empty (an upload that lands during the erasure is erased too).
    let mut cursor: Option<String> = None;
    loop {
        // Images whose delete was interrupted too: the erasure finishes them.
        let page = app
            .catalog
            .list_for_erasure(user, cursor.as_deref(), PAGE)
            .await?;
        if page.items.is_empty() {
            // Stale index entries (metadata already gone) only: page past them; they are
            // removed with the rest of the user's prefix below.
            match page.next_cursor {
                Some(c) => {
                    cursor = Some(c);
                    continue;
                }
                None => break,
            }
        }
        cursor = None;
        for chunk in page.items.chunks(ERASE_CONCURRENCY) {
            let mut set = tokio::task::JoinSet::new();
            for meta in chunk {
                let app = app.clone();
                let meta = meta.clone();
                set.spawn(async move { app.render.delete_image(&meta).await });
            }
            while let Some(r) = set.join_next().await {
                r.map_err(|e| Error::Internal(format!("erase task: {e}")))??;
                deleted += 1;
            }
        }
    }
    app.auth.api_keys.revoke_all(user).await?;
    // Their collections, memberships, the shares they granted and received; other users'
    // images, collections and teams stay. The `AccountErased` event makes every instance
    // forget its cached access state.
    for c in crate::access::account::erase_user(&app.access.store, user).await? {
        app.access.apply(&c);
    }
    // A token revocation an admin made stays (a hash of the user id and a time): deleting it
    // would let tokens revoked because they leaked open the account again. It is a security
    // record, like the audit trail (`docs/privacy.md`).
    // Whatever is left under the user's prefix: index entries of images whose metadata is
    // already gone (a half-failed delete), API key markers.
    let prefix = format!("users/{}/", crate::id::user_segment(user));
    for k in app.store.list(Bucket::Originals, &prefix).await? {
        app.store.delete(Bucket::Originals, &k).await?;
    }
    app.limiter.forget(user).await?;
    // A final look: nothing of the user may remain in the originals bucket's user prefix.
    if !app.store.list(Bucket::Originals, &prefix).await?.is_empty() {
        return Err(Error::Internal(
            "objects reappeared under the erased user's prefix".into(),
        ));
    }
    Ok(deleted)
}

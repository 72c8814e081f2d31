//! Legacy source URLs during a migration: `plain/s3://BUCKET/KEY` (or its base64url form)
//! under a `sources.legacy` bucket and prefix is served as the image imported from that
//! object; anything else stays `400 invalid_source`, and no other scheme is ever fetched.
//!
//! With `sources.legacy_lazy`, an object not imported yet is imported on its first request,
//! through the same code as `pixgate import` (the upload's checks, source index, `image.import`
//! event with operator `legacy_lazy` and the request's id); not charged to a quota (the
//! transform is, to the mapped owner). Concurrent first requests on one instance import once
//! (a lock per address stripe, waited for at most [`LOCK_WAIT`], then a re-check). Across
//! instances the source entry is claimed create-only (`Catalog::claim_source`): the request
//! that loses the claim waits for the winner's image (at most [`LOCK_WAIT`], then `503`). On a
//! service that ignores create-only writes (Garage), the importer whose claim was overwritten
//! removes its image again once it sees the entry name another (`import::import_object`).
//!
//! The address → image id mapping is the source index `pixgate import` writes
//! ([`crate::catalog::SourceEntry`]), remembered in `import::legacy::Legacy`'s LRU.

use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::Ctx;
use super::error::Error;
use crate::app::App;
use crate::auth::Principal;
use crate::catalog::CatalogError;
use crate::id::ImageId;
use crate::import::source::{Listed, S3Source};
use crate::import::{Checked, Checks, Fail, Job, Outcome};
use crate::options::SourceRef;

/// How long a lazy import waits for its stripe.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a request waiting for another instance's import of its object looks again.
const POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The upload's checks for an import, keeping the last refusal as the HTTP error it is (the
/// lazy path answers with it; `pixgate import` reports its code).
pub struct UploadChecks<A> {
    app: A,
    last: Mutex<Option<Error>>,
}

impl<A> UploadChecks<A> {
    /// Over `app` (`&App`, or `Arc<App>` for a whole import run).
    pub fn new(app: A) -> UploadChecks<A> {
        UploadChecks {
            app,
            last: Mutex::new(None),
        }
    }

    fn take(&self) -> Option<Error> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[async_trait]
impl<A: std::ops::Deref<Target = App> + Send + Sync> Checks for UploadChecks<A> {
    async fn check(&self, bytes: &Bytes) -> Result<Checked, (&'static str, String)> {
        match super::images::validate_original(&self.app, bytes, None, || {}).await {
            Ok((probe, info, sha256)) => Ok(Checked {
                probe,
                info,
                sha256,
            }),
            Err(e) => {
                let refusal = (e.code(), e.to_string());
                *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Err(refusal)
            }
        }
    }
}

/// The image an `s3://` source names: `400 invalid_source` outside `sources.legacy`, `404`
/// when nothing was imported from it (or its image was deleted), unless `sources.legacy_lazy`
/// imports it now. A bearer caller (`bearer`) must own the object by the entry's owner
/// mapping before anything is read (`404` otherwise, and nothing is imported on its behalf);
/// a signed URL is its own authorisation (the operator's key signed it).
pub async fn resolve(
    app: &App,
    bucket: &str,
    key: &str,
    bearer: Option<&Principal>,
    ctx: &Ctx,
) -> Result<ImageId, Error> {
    let legacy = &app.legacy;
    let Some(entry) = legacy.covering(bucket, key) else {
        return Err(Error::InvalidSource(
            "this s3:// source is not under sources.legacy".into(),
        ));
    };
    if let Some(p) = bearer
        && !entry.owners.assign(key).is_ok_and(|a| p.owns(&a.owner))
    {
        ctx.set_denied();
        return Err(Error::NotFound);
    }
    let uri = SourceRef::uri(bucket, key);
    if let Some(id) = legacy.remembered(&uri) {
        return Ok(id);
    }
    if let Some(id) = lookup(app, &uri).await? {
        return Ok(id);
    }
    let Some(lazy) = legacy.lazy() else {
        return Err(Error::NotFound);
    };
    refused_recently(app, &uri)?;
    // Bounded: a stripe held by a slow import answers the others `503` after a while.
    let one_at_a_time = tokio::time::timeout(LOCK_WAIT, legacy.stripe(&uri).lock())
        .await
        .map_err(|_| Error::Overloaded)?;
    // Another request may have imported it (or been refused) while this one waited.
    if let Some(id) = lookup(app, &uri).await? {
        return Ok(id);
    }
    refused_recently(app, &uri)?;
    let source = S3Source::new(
        lazy.client.clone(),
        bucket.to_owned(),
        String::new(),
        lazy.timeout,
    );
    let checks = UploadChecks::new(app);
    let job = Job {
        source: &source,
        owners: &entry.owners,
        checks: &checks,
        dry_run: false,
        // The legacy buckets are the storage's own service: copied there, server-side.
        mode: crate::import::Mode::ServerCopy,
        operator: "legacy_lazy",
        resumed: false,
        run_id: &ctx.request_id,
    };
    let item = Listed {
        key: key.to_owned(),
        size: 0,
        modified: None,
    };
    let outcome = crate::import::import_object(app, &job, item).await;
    // Waiting for another instance's import (`imported_elsewhere`) must not hold the stripe.
    drop(one_at_a_time);
    lazy_outcome(app, &uri, outcome, &checks, ctx).await
}

/// A lazy import's result as the request's image, or its error.
async fn lazy_outcome(
    app: &App,
    uri: &str,
    outcome: Result<Outcome, Fail>,
    checks: &UploadChecks<&App>,
    ctx: &Ctx,
) -> Result<ImageId, Error> {
    let refused = match outcome {
        Ok(Outcome::Imported { id, .. }) => {
            tracing::info!(request_id = %ctx.request_id, image = %id, "imported a legacy source on its first request");
            let id = ImageId::parse(&id).ok_or_else(|| Error::Internal("bad image id".into()))?;
            app.legacy.remember(uri, &id);
            return Ok(id);
        }
        // Claimed first by another instance, whose import may still be running: its image.
        Ok(Outcome::Skipped { reason }) if reason == crate::import::CLAIMED_ELSEWHERE => {
            return imported_elsewhere(app, uri).await;
        }
        // Deleted since (a tombstone), or imported meanwhile by another instance.
        Ok(_) => return lookup(app, uri).await?.ok_or(Error::NotFound),
        Err(Fail::Check(..)) => checks
            .take()
            .unwrap_or_else(|| Error::Internal("a check failed without its error".into())),
        Err(Fail::Code(code, message)) => {
            lazy_error(code, message, app.config.limits.max_source_bytes)
        }
    };
    // What the object is (or is not) stays so until it changes: remembered for a while, so a
    // crawler repeating the URL does not cost a read and a decode each time. Failures of the
    // store, the source or the pool are not: the next request tries again.
    if !matches!(
        refused.category(),
        super::error::Category::Upstream
            | super::error::Category::Overload
            | super::error::Category::Internal
    ) {
        app.legacy
            .remember_failure(uri, std::sync::Arc::new(refused.clone()));
    }
    Err(refused)
}

/// The refusal a lazy import of `uri` met recently, if any (`sources.legacy_failure_ttl_secs`).
fn refused_recently(app: &App, uri: &str) -> Result<(), Error> {
    match app.legacy.recent_failure(uri) {
        Some(r) => Err(r
            .downcast_ref::<Error>()
            .cloned()
            .unwrap_or_else(|| Error::Internal("a remembered refusal of another type".into()))),
        None => Ok(()),
    }
}

/// The image another instance is importing from `uri`, once it exists: looked up every
/// [`POLL`] for at most [`LOCK_WAIT`], then `503` (the client retries; its import goes on).
async fn imported_elsewhere(app: &App, uri: &str) -> Result<ImageId, Error> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        if let Some(id) = lookup(app, uri).await? {
            return Ok(id);
        }
        if tokio::time::Instant::now() + POLL > deadline {
            return Err(Error::Overloaded);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The image imported from `uri`, remembered; `None` if there is none.
async fn lookup(app: &App, uri: &str) -> Result<Option<ImageId>, Error> {
    match app.catalog.imported(uri).await {
        Ok(meta) => {
            let id = ImageId::parse(&meta.id)
                .ok_or_else(|| Error::Internal("bad image id in a record".into()))?;
            app.legacy.remember(uri, &id);
            Ok(Some(id))
        }
        Err(CatalogError::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A lazy import's own failures as the request's answer: no such object (or no owner for it)
/// is `404`, too large is `413`, an unreachable source or store is a storage error.
fn lazy_error(code: &str, message: String, limit: u64) -> Error {
    match code {
        "payload_too_large" => Error::PayloadTooLarge { limit },
        "source_error" | "storage_error" => {
            Error::from(crate::storage::StorageError::Backend(message))
        }
        "internal_error" => Error::Internal(message),
        "invalid_field" => Error::InvalidField(message),
        // Replaced while it was copied: the next request tries again (never remembered).
        "source_changed" => Error::SourceChanged,
        // source_gone, owner_pattern_mismatch, invalid_owner, not_in_manifest
        _ => Error::NotFound,
    }
}

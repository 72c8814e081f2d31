//! Legacy source URLs during a migration: `plain/s3://BUCKET/KEY` (or its base64url form)
//! under a `sources.legacy` bucket and prefix is served as the image imported from that
//! object; anything else stays `400 invalid_source`, and no other scheme is ever fetched.
//!
//! With `sources.legacy_lazy`, an object not imported yet is imported on its first request,
//! through the same code as `pixgate import` (the upload's checks, source index, `image.import`
//! event with operator `legacy_lazy` and the request's id); not charged to a quota (the
//! transform is, to the mapped owner). Concurrent first requests on one instance import once
//! (a lock per address stripe, then a re-check). Across instances two first requests at the
//! same moment may both import: the source index keeps the later one, and the earlier image
//! stays in its owner's listing as a duplicate (see the closing notes of issue 21).
//!
//! The address → image id mapping is the source index `pixgate import` writes
//! ([`crate::catalog::SourceEntry`]); resolved mappings are kept in a bounded LRU, which is safe
//! because ids are never reused: a deleted image's id answers `404` through the normal checks.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

use super::config::{LegacySource, covering};
use super::source::{Listed, S3Source};
use super::{Fail, Job, Outcome};
use crate::app::App;
use crate::catalog::CatalogError;
use crate::http::Ctx;
use crate::http::error::Error;
use crate::id::ImageId;
use crate::options::SourceRef;

/// Addresses whose image id is remembered.
const REMEMBERED: usize = 16_384;

/// Lock stripes for lazy imports (one address imports once per instance).
const STRIPES: usize = 64;
/// How long a lazy import waits for its stripe.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How lazy imports read the legacy buckets: the storage's own S3 service.
pub struct Lazy {
    pub client: aws_sdk_s3::Client,
    pub timeout: std::time::Duration,
}

pub struct Legacy {
    sources: Vec<LegacySource>,
    ids: Mutex<LruCache<String, ImageId>>,
    lazy: Option<Lazy>,
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl Legacy {
    pub fn new(sources: Vec<LegacySource>, lazy: Option<Lazy>) -> Legacy {
        Legacy {
            sources,
            ids: Mutex::new(LruCache::new(
                NonZeroUsize::new(REMEMBERED).unwrap_or(NonZeroUsize::MIN),
            )),
            lazy,
            locks: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// The image an `s3://` source names: `400 invalid_source` outside `sources.legacy`,
    /// `404` when nothing was imported from it (or its image was deleted), unless
    /// `sources.legacy_lazy` imports it now.
    /// A bearer caller (`bearer`) must own the object by the entry's owner mapping before
    /// anything is read: otherwise `404`, as for another user's image, and nothing is
    /// imported on its behalf. A signed URL is its own authorisation (the operator signed it).
    pub async fn resolve(
        &self,
        app: &App,
        bucket: &str,
        key: &str,
        bearer: Option<&crate::auth::Principal>,
        ctx: &Ctx,
    ) -> Result<ImageId, Error> {
        let Some(entry) = covering(&self.sources, bucket, key) else {
            return Err(Error::InvalidSource(
                "this s3:// source is not under sources.legacy".into(),
            ));
        };
        if let Some(p) = bearer {
            let mine = entry.owners.assign(key).is_ok_and(|a| p.owns(&a.owner));
            if !mine {
                ctx.set_denied();
                return Err(Error::NotFound);
            }
        }
        let uri = SourceRef::uri(bucket, key);
        if let Some(id) = self.lock().get(&uri).cloned() {
            return Ok(id);
        }
        if let Some(id) = self.lookup(app, &uri).await? {
            return Ok(id);
        }
        let Some(lazy) = &self.lazy else {
            return Err(Error::NotFound);
        };
        // Bounded: a stripe held by a slow import answers the others `503` after a while.
        let _one_at_a_time = tokio::time::timeout(LOCK_WAIT, self.locks[stripe_of(&uri)].lock())
            .await
            .map_err(|_| Error::Overloaded)?;
        // Another request may have imported it while this one waited.
        if let Some(id) = self.lookup(app, &uri).await? {
            return Ok(id);
        }
        let source = S3Source::new(
            lazy.client.clone(),
            bucket.to_owned(),
            String::new(),
            lazy.timeout,
        );
        let job = Job {
            source: &source,
            owners: &entry.owners,
            dry_run: false,
            operator: "legacy_lazy",
            resumed: false,
            run_id: &ctx.request_id,
        };
        let item = Listed {
            key: key.to_owned(),
            size: 0,
        };
        match super::import_object(app, &job, item).await {
            Ok(Outcome::Imported { id, .. }) => {
                tracing::info!(request_id = %ctx.request_id, image = %id, "imported a legacy source on its first request");
                let id =
                    ImageId::parse(&id).ok_or_else(|| Error::Internal("bad image id".into()))?;
                self.lock().put(uri, id.clone());
                Ok(id)
            }
            // Deleted since (a tombstone), or imported meanwhile by another instance.
            Ok(_) => self.lookup(app, &uri).await?.ok_or(Error::NotFound),
            Err(Fail::Check(e)) => Err(e),
            Err(Fail::Code(code, message)) => Err(lazy_error(
                code,
                message,
                app.config.limits.max_source_bytes,
            )),
        }
    }

    /// The image imported from `uri`, remembered; `None` if there is none.
    async fn lookup(&self, app: &App, uri: &str) -> Result<Option<ImageId>, Error> {
        match app.catalog.imported(uri).await {
            Ok(meta) => {
                let id = ImageId::parse(&meta.id)
                    .ok_or_else(|| Error::Internal("bad image id in a record".into()))?;
                self.lock().put(uri.to_owned(), id.clone());
                Ok(Some(id))
            }
            Err(CatalogError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, ImageId>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn stripe_of(uri: &str) -> usize {
    uri.bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % STRIPES
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
        // source_gone, owner_pattern_mismatch, invalid_owner, not_in_manifest
        _ => Error::NotFound,
    }
}

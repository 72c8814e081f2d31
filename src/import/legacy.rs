//! Legacy source URLs during a migration: `plain/s3://BUCKET/KEY` (or its base64url form)
//! under a `sources.legacy` bucket and prefix is served as the image imported from that
//! object; anything else stays `400 invalid_source`, and no other scheme is ever fetched.
//!
//! The address → image id mapping is the source index `pixgate import` writes
//! ([`crate::catalog::SourceEntry`]); resolved mappings are kept in a bounded LRU, which is safe
//! because ids are never reused: a deleted image's id answers `404` through the normal checks.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

use super::config::{LegacySource, covering};
use crate::app::App;
use crate::catalog::CatalogError;
use crate::http::Ctx;
use crate::http::error::Error;
use crate::id::ImageId;
use crate::options::SourceRef;

/// Addresses whose image id is remembered.
const REMEMBERED: usize = 16_384;

pub struct Legacy {
    sources: Vec<LegacySource>,
    ids: Mutex<LruCache<String, ImageId>>,
}

impl Legacy {
    pub fn new(sources: Vec<LegacySource>) -> Legacy {
        Legacy {
            sources,
            ids: Mutex::new(LruCache::new(
                NonZeroUsize::new(REMEMBERED).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// The image an `s3://` source names: `400 invalid_source` outside `sources.legacy`,
    /// `404` when nothing was imported from it (or its image was deleted).
    pub async fn resolve(
        &self,
        app: &App,
        bucket: &str,
        key: &str,
        _ctx: &Ctx,
    ) -> Result<ImageId, Error> {
        if covering(&self.sources, bucket, key).is_none() {
            return Err(Error::InvalidSource(
                "this s3:// source is not under sources.legacy".into(),
            ));
        }
        let uri = SourceRef::uri(bucket, key);
        if let Some(id) = self.lock().get(&uri).cloned() {
            return Ok(id);
        }
        match app.catalog.imported(&uri).await {
            Ok(meta) => {
                let id = ImageId::parse(&meta.id)
                    .ok_or_else(|| Error::Internal("bad image id in a record".into()))?;
                self.lock().put(uri, id.clone());
                Ok(id)
            }
            Err(CatalogError::NotFound) => Err(Error::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, ImageId>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }
}

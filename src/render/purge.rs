//! Deleting an image everywhere results of it live: memory (this instance), the catalog's
//! records and derived objects, and the CDN.

use std::sync::Arc;

use super::Renderer;
use crate::catalog::CatalogError;
use crate::catalog::ImageMeta;
use crate::id::ImageId;

impl Renderer {
    /// Deletes an image everywhere: memory (tombstoned first, so a computation finishing
    /// meanwhile cannot re-insert or be served), the original, the derived prefix, the index
    /// and the metadata, memory again, then the CDN purge hook — all in a task of its own, so
    /// a cancelled request stops none of it half-way. The hook runs twice: at once, and again
    /// once every request that could have read the image before the delete has ended and
    /// every other instance has re-checked its memory (`server.request_timeout_secs` +
    /// `auth.revocation_cache_secs`), so an edge refetch served from such a straggler does
    /// not keep the image at the CDN.
    pub async fn delete_image(self: &Arc<Self>, meta: &ImageMeta) -> Result<(), CatalogError> {
        let this = self.clone();
        let record = meta.clone();
        tokio::spawn(async move { this.delete_now(&record).await })
            .await
            .map_err(|e| CatalogError::Internal(format!("delete task failed: {e}")))?
    }

    async fn delete_now(&self, record: &ImageMeta) -> Result<(), CatalogError> {
        self.cache.purge_image(&record.id);
        if let Err(e) = self.catalog.delete(record).await {
            // Unless the image is known to be gone (or marked `deleting`), lift the tombstone:
            // a tombstone refuses every result of the image on this instance, so keeping it
            // after a delete that failed before its commit point — or when the store cannot
            // even say (an outage) — would answer 404 for a live image indefinitely. Worst case
            // of lifting it for a marked image: a result computed meanwhile is served from
            // memory until the hit's next existence check (`auth.revocation_cache_secs`).
            if let Some(id) = ImageId::parse(&record.id)
                && !matches!(self.catalog.meta(&id).await, Err(CatalogError::NotFound))
            {
                self.cache.untombstone(&record.id);
            }
            return Err(e);
        }
        self.cache.purge_image(&record.id);
        self.metrics
            .cache_memory_bytes
            .set(self.cache.bytes() as i64);
        self.cdn.purge(&record.id);
        self.cdn.purge_after(&record.id, self.settings.straggle);
        Ok(())
    }
}

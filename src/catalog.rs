//! Image records over the object store: originals and their metadata.
//!
//! Layout in the originals bucket: `images/{id}/original` (the uploaded bytes, unchanged) and
//! `images/{id}/meta.json`. The original is written first and the metadata last, so an image
//! exists (is readable through the API) only once both are durable; a failed metadata write
//! removes the original again.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::id::ImageId;
use crate::image::ImageFormat;
use crate::storage::{Bucket, ObjectKey, ObjectStore};

/// Metadata cap: a record is a few hundred bytes.
const MAX_META_BYTES: u64 = 64 * 1024;

/// What pixgate knows about an original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    pub id: String,
    pub owner: String,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    pub sha256: String,
    /// RFC 3339, UTC, seconds.
    pub created_at: String,
}

/// Reads and writes image records.
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn ObjectStore>,
    max_source_bytes: u64,
}

fn key(id: &ImageId, leaf: &str) -> Result<ObjectKey, Error> {
    ObjectKey::new(format!("images/{id}/{leaf}")).map_err(Error::from)
}

impl Catalog {
    pub fn new(store: Arc<dyn ObjectStore>, max_source_bytes: u64) -> Catalog {
        Catalog {
            store,
            max_source_bytes,
        }
    }

    /// Stores an original and then its metadata; returns only when both are durable.
    pub async fn create(&self, meta: &ImageMeta, original: Bytes) -> Result<(), Error> {
        let id = ImageId::parse(&meta.id).ok_or_else(|| Error::Internal("bad image id".into()))?;
        let original_key = key(&id, "original")?;
        self.store
            .put(
                Bucket::Originals,
                &original_key,
                original,
                meta.format.mime(),
            )
            .await?;
        let json = serde_json::to_vec(meta).map_err(|e| Error::Internal(e.to_string()))?;
        if let Err(e) = self
            .store
            .put(
                Bucket::Originals,
                &key(&id, "meta.json")?,
                Bytes::from(json),
                "application/json",
            )
            .await
        {
            // Do not leave an original nobody can see or delete through the API.
            if let Err(cleanup) = self.store.delete(Bucket::Originals, &original_key).await {
                tracing::warn!(image = %id, error = %cleanup, "orphaned original after failed metadata write");
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// The metadata of an image; `NotFound` if it does not exist.
    pub async fn meta(&self, id: &ImageId) -> Result<ImageMeta, Error> {
        let bytes = self
            .store
            .get(Bucket::Originals, &key(id, "meta.json")?, MAX_META_BYTES)
            .await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Internal(format!("corrupt metadata for {id}: {e}")))
    }

    /// The original bytes of an image.
    pub async fn original(&self, id: &ImageId) -> Result<Bytes, Error> {
        Ok(self
            .store
            .get(
                Bucket::Originals,
                &key(id, "original")?,
                self.max_source_bytes,
            )
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::FsStore;

    #[tokio::test]
    async fn create_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsStore::new(dir.path(), Duration::from_secs(5)).unwrap());
        let catalog = Catalog::new(store, 1024);
        let id = ImageId::generate().unwrap();
        let meta = ImageMeta {
            id: id.to_string(),
            owner: "u1".into(),
            format: ImageFormat::Png,
            width: 1,
            height: 1,
            bytes: 3,
            sha256: "x".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
        };
        assert_eq!(catalog.meta(&id).await.unwrap_err().code(), "not_found");
        catalog
            .create(&meta, Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert_eq!(catalog.meta(&id).await.unwrap(), meta);
        assert_eq!(catalog.original(&id).await.unwrap(), &b"abc"[..]);
    }
}

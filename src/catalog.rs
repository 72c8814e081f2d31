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
    /// Displayed size: EXIF orientation applied.
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
        let meta_key = key(&id, "meta.json")?;
        if let Err(e) = self
            .store
            .put(
                Bucket::Originals,
                &meta_key,
                Bytes::from(json),
                "application/json",
            )
            .await
        {
            // The client is told the upload failed, so neither object may stay behind. A timed
            // out S3 PUT may still have landed: remove the metadata first (the image stops
            // existing), then the original.
            for k in [&meta_key, &original_key] {
                if let Err(cleanup) = self.store.delete(Bucket::Originals, k).await {
                    tracing::warn!(image = %id, key = %k, error = %cleanup, "could not clean up after a failed metadata write");
                }
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

    use async_trait::async_trait;

    use super::*;
    use crate::storage::{FsStore, StorageError};

    fn sample_meta(id: &ImageId) -> ImageMeta {
        ImageMeta {
            id: id.to_string(),
            owner: "u1".into(),
            format: ImageFormat::Png,
            width: 1,
            height: 1,
            bytes: 3,
            sha256: "x".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    /// An fs store whose metadata writes land but then report failure (a timed-out PUT).
    struct LateFailingMeta(FsStore);

    #[async_trait]
    impl ObjectStore for LateFailingMeta {
        async fn put(
            &self,
            bucket: Bucket,
            key: &ObjectKey,
            body: Bytes,
            content_type: &str,
        ) -> Result<(), StorageError> {
            self.0.put(bucket, key, body, content_type).await?;
            if key.as_str().ends_with("meta.json") {
                return Err(StorageError::Timeout);
            }
            Ok(())
        }
        async fn get(&self, b: Bucket, k: &ObjectKey, max: u64) -> Result<Bytes, StorageError> {
            self.0.get(b, k, max).await
        }
        async fn delete(&self, b: Bucket, k: &ObjectKey) -> Result<(), StorageError> {
            self.0.delete(b, k).await
        }
        async fn list(&self, b: Bucket, prefix: &str) -> Result<Vec<ObjectKey>, StorageError> {
            self.0.list(b, prefix).await
        }
        async fn check(&self) -> Result<(), StorageError> {
            self.0.check().await
        }
        fn backend(&self) -> &'static str {
            "late-failing"
        }
    }

    #[tokio::test]
    async fn a_failed_metadata_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsStore::new(dir.path(), Duration::from_secs(5)).unwrap();
        let store = Arc::new(LateFailingMeta(fs));
        let catalog = Catalog::new(store.clone(), 1024);
        let id = ImageId::generate().unwrap();
        let meta = sample_meta(&id);
        let err = catalog
            .create(&meta, Bytes::from_static(b"abc"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "storage_unavailable");
        assert!(
            store
                .list(Bucket::Originals, "images/")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(catalog.meta(&id).await.unwrap_err().code(), "not_found");
    }

    #[tokio::test]
    async fn create_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsStore::new(dir.path(), Duration::from_secs(5)).unwrap());
        let catalog = Catalog::new(store, 1024);
        let id = ImageId::generate().unwrap();
        let meta = sample_meta(&id);
        assert_eq!(catalog.meta(&id).await.unwrap_err().code(), "not_found");
        catalog
            .create(&meta, Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert_eq!(catalog.meta(&id).await.unwrap(), meta);
        assert_eq!(catalog.original(&id).await.unwrap(), &b"abc"[..]);
    }
}

//! The derived-object cache: results kept in the derived bucket (S3) or `fs` directory,
//! under `derived/{image id}/{digest}.{ext}` — one prefix per image, so deleting an image's
//! derivatives is one listing, and a restart or another instance finds results without
//! decoding. `digest` is the first 128 bits of SHA-256 over the full cache key (pipeline
//! version, render fingerprint, image, canonical spec, quality, format token); the ETag is
//! the same digest, so object and validator name the same bytes.
//!
//! Reads happen on a memory miss, before computing; a read that fails for any reason is a miss
//! (the result is recomputed), never an error. An object whose bytes are not the expected
//! format (a truncated or foreign object) is a miss too, and is overwritten by the next write.
//!
//! Writes happen in the background after the response: at most
//! `cache.derived_write_concurrency` at once and `cache.derived_write_queue` waiting; beyond
//! that a write is dropped (counted; the result is still in memory and recomputable). A failed
//! write is logged and counted and never fails a request.
//!
//! Deleted images: a write that lands after the image's delete would leave an orphan (and a
//! copy of a deleted user's picture). Deletes remove the original *before* listing the derived
//! prefix, so each write checks the original still exists *after* its own put and deletes its
//! object if not: either the delete's listing sees the object, or the write sees the delete.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::catalog::CatalogError;
use crate::catalog::{Catalog, derived_prefix};
use crate::id::ImageId;
use crate::metrics::Metrics;
use crate::options::OutputFormat;
use crate::storage::{Bucket, ObjectKey, ObjectStore, StorageError};
use crate::workers::Backlog;

/// The background-write settings.
#[derive(Debug, Clone, Copy)]
pub struct DerivedLimits {
    /// Largest result stored or read back (bytes).
    pub max_bytes: u64,
    /// Reads in flight at once (each may hold up to `max_bytes`; more wait their turn).
    pub reads: usize,
    /// Writes in flight at once.
    pub concurrency: usize,
    /// Writes waiting beyond those.
    pub queue: usize,
    /// `cache.derived_ttl_days`: objects unused this long expire (`None`: never).
    pub ttl: Option<std::time::Duration>,
}

/// What a background write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// Written, then removed: the image was deleted meanwhile.
    Discarded,
}

impl WriteOutcome {
    fn label(self) -> &'static str {
        match self {
            WriteOutcome::Written => "ok",
            WriteOutcome::Discarded => "discarded",
        }
    }
}

/// Results in the derived bucket.
pub struct DerivedStore {
    store: Arc<dyn ObjectStore>,
    catalog: Catalog,
    limits: DerivedLimits,
    permits: Arc<Semaphore>,
    read_permits: Semaphore,
    backlog: Backlog,
    metrics: Metrics,
    /// Keys this instance wrote or refreshed, and when (`cache.derived_ttl_days`).
    touched: std::sync::Mutex<lru::LruCache<ObjectKey, std::time::Instant>>,
}

/// Keys remembered as recently written or refreshed.
const TOUCHED_KEYS: usize = 100_000;

/// The object key of a result: `derived/{image}/{digest}.{ext}`.
pub fn object_key(
    image: &ImageId,
    digest: &str,
    format: OutputFormat,
) -> Result<ObjectKey, StorageError> {
    ObjectKey::new(format!(
        "{}{digest}.{}",
        derived_prefix(image),
        format.extension()
    ))
}

/// Deletes derived objects last modified before `cutoff` (`pixgate sweep`, with
/// `cache.derived_ttl_days`); returns how many. Reads one listing page at a time.
pub async fn sweep(
    store: &dyn ObjectStore,
    cutoff: std::time::SystemTime,
) -> Result<u64, StorageError> {
    let mut after: Option<String> = None;
    let mut removed = 0;
    loop {
        let page = store
            .list_page_dated(Bucket::Derived, "derived/", after.as_deref(), 1000)
            .await?;
        let Some((last, _)) = page.last() else {
            return Ok(removed);
        };
        after = Some(last.as_str().to_owned());
        for (key, modified) in &page {
            if *modified < cutoff {
                store.delete(Bucket::Derived, key).await?;
                removed += 1;
            }
        }
    }
}

/// Whether `bytes` start like an encoded `format` image.
fn looks_like(format: OutputFormat, bytes: &[u8]) -> bool {
    match format {
        OutputFormat::Avif => bytes.get(4..12) == Some(b"ftypavif".as_slice()),
        f => crate::image::sniff(bytes).is_some_and(|s| s.mime() == f.mime()),
    }
}

impl DerivedStore {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        catalog: Catalog,
        limits: DerivedLimits,
        metrics: Metrics,
    ) -> DerivedStore {
        DerivedStore {
            store,
            catalog,
            permits: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            read_permits: Semaphore::new(limits.reads.max(1)),
            backlog: Backlog::new(limits.concurrency.max(1) + limits.queue),
            limits,
            metrics,
            touched: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(TOUCHED_KEYS).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        }
    }

    /// The stored result, if there is a usable one. Failures are misses (logged).
    pub async fn get(&self, key: &ObjectKey, format: OutputFormat) -> Option<Bytes> {
        // Bounds the bytes held by reads at reads × max_bytes. Waiting, not refusing: a hit
        // must still be served when the CPU queue is full.
        let _permit = self.read_permits.acquire().await.ok()?;
        let found = match self
            .store
            .get(Bucket::Derived, key, self.limits.max_bytes)
            .await
        {
            Ok(bytes) if looks_like(format, &bytes) => Some(bytes),
            Ok(_) => {
                tracing::warn!(key = %key, "derived object is not a {} image; recomputing", format.extension());
                None
            }
            Err(StorageError::NotFound) => None,
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "derived object unreadable; recomputing");
                None
            }
        };
        let result = if found.is_some() { "hit" } else { "miss" };
        self.metrics
            .cache_requests
            .with_label_values(&["derived", result])
            .inc();
        found
    }

    /// With `cache.derived_ttl_days`, keeps a used object from expiring: a derived hit
    /// rewrites the object (same bytes, new modification time) unless this instance wrote or
    /// refreshed it within half the TTL. Objects nobody reads are left to age out
    /// (`pixgate sweep`, or the bucket's lifecycle rule).
    pub fn touch(self: &Arc<Self>, image: ImageId, key: ObjectKey, bytes: Bytes, mime: &str) {
        let Some(ttl) = self.limits.ttl else {
            return;
        };
        let fresh = self
            .touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .is_some_and(|at| at.elapsed() < ttl / 2);
        if !fresh {
            self.schedule(image, key, bytes, mime);
        }
    }

    /// Stores a result in the background (bounded; see the module docs). Never fails.
    pub fn schedule(self: &Arc<Self>, image: ImageId, key: ObjectKey, bytes: Bytes, mime: &str) {
        if bytes.len() as u64 > self.limits.max_bytes {
            self.count("dropped");
            return;
        }
        let Some(slot) = self.backlog.try_enter() else {
            self.count("dropped");
            tracing::warn!(image = %image, "derived-store write queue full; result kept in memory only");
            return;
        };
        let this = self.clone();
        let mime = mime.to_owned();
        tokio::spawn(async move {
            let result = match this.permits.clone().acquire_owned().await {
                Ok(_permit) => this.write(&image, &key, bytes, &mime).await,
                Err(_) => Err(CatalogError::Internal("derived writer closed".into())),
            };
            drop(slot);
            match result {
                Ok(outcome) => {
                    if this.limits.ttl.is_some() && outcome == WriteOutcome::Written {
                        this.touched
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .put(key, std::time::Instant::now());
                    }
                    this.count(outcome.label())
                }
                Err(e) => {
                    this.count("error");
                    tracing::warn!(image = %image, key = %key, error = %e, "could not store a derived result");
                }
            }
        });
    }

    /// Writes now, then checks the image still exists (removing the object if not).
    pub async fn write(
        &self,
        image: &ImageId,
        key: &ObjectKey,
        bytes: Bytes,
        mime: &str,
    ) -> Result<WriteOutcome, CatalogError> {
        self.store.put(Bucket::Derived, key, bytes, mime).await?;
        let exists = self.catalog.original_exists(image).await;
        if let Ok(true) = exists {
            return Ok(WriteOutcome::Written);
        }
        // Deleted meanwhile — or unknown (the check failed): a derived object is only a cache,
        // so when in doubt it goes (one retry), rather than risk outliving its image.
        let removed = match self.store.delete(Bucket::Derived, key).await {
            Ok(()) => Ok(()),
            Err(_) => self.store.delete(Bucket::Derived, key).await,
        };
        removed?;
        match exists {
            Ok(_) => Ok(WriteOutcome::Discarded),
            Err(e) => Err(e),
        }
    }

    /// Writes waiting or running.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.backlog.len()
    }

    fn count(&self, result: &str) {
        self.metrics
            .derived_writes
            .with_label_values(&[result])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::catalog::ImageMeta;
    use crate::image::ImageFormat;
    use crate::storage::FsStore;

    const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0];

    fn setup() -> (
        tempfile::TempDir,
        Arc<dyn ObjectStore>,
        Catalog,
        DerivedStore,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(FsStore::new(dir.path().to_str().unwrap(), Duration::from_secs(5)).unwrap());
        let catalog = Catalog::new(store.clone(), 1 << 20);
        let limits = DerivedLimits {
            max_bytes: 1 << 20,
            reads: 4,
            concurrency: 2,
            queue: 2,
            ttl: None,
        };
        let derived = DerivedStore::new(
            store.clone(),
            catalog.clone(),
            limits,
            Metrics::new().unwrap(),
        );
        (dir, store, catalog, derived)
    }

    fn meta(id: &ImageId) -> ImageMeta {
        ImageMeta {
            id: id.to_string(),
            owner: "alice".into(),
            format: ImageFormat::Jpeg,
            width: 1,
            height: 1,
            bytes: 3,
            sha256: String::new(),
            created_at: "2026-01-01T00:00:00Z".into(),
            title: None,
            alt_text: None,
            tags: Vec::new(),
            deleting: false,
            info: None,
            source: None,
            reference: None,
        }
    }

    #[tokio::test]
    async fn round_trip_and_format_check() {
        let (_d, _s, catalog, derived) = setup();
        let id = ImageId::generate().unwrap();
        catalog
            .create(&meta(&id), Bytes::from_static(JPEG))
            .await
            .unwrap();
        let key = object_key(&id, "00ff", OutputFormat::Jpeg).unwrap();
        assert!(key.as_str().starts_with(&format!("derived/{id}/")));
        assert!(derived.get(&key, OutputFormat::Jpeg).await.is_none());
        let outcome = derived
            .write(&id, &key, Bytes::from_static(JPEG), "image/jpeg")
            .await
            .unwrap();
        assert_eq!(outcome, WriteOutcome::Written);
        assert_eq!(
            derived.get(&key, OutputFormat::Jpeg).await.unwrap(),
            Bytes::from_static(JPEG)
        );
        // The same bytes asked for as another format are not trusted.
        assert!(derived.get(&key, OutputFormat::Png).await.is_none());
        assert!(looks_like(
            OutputFormat::Avif,
            b"\0\0\0\x1cftypavif\0\0\0\0"
        ));
        assert!(!looks_like(OutputFormat::Avif, b"\0\0"));
    }

    #[tokio::test]
    async fn a_write_after_the_delete_removes_itself() {
        let (_d, store, catalog, derived) = setup();
        let id = ImageId::generate().unwrap();
        let m = meta(&id);
        catalog.create(&m, Bytes::from_static(JPEG)).await.unwrap();
        catalog.delete(&m).await.unwrap();
        let key = object_key(&id, "abcd", OutputFormat::Jpeg).unwrap();
        let outcome = derived
            .write(&id, &key, Bytes::from_static(JPEG), "image/jpeg")
            .await
            .unwrap();
        assert_eq!(outcome, WriteOutcome::Discarded);
        assert!(
            store
                .list(Bucket::Derived, &derived_prefix(&id))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn background_writes_are_bounded_and_counted() {
        let (_d, store, catalog, derived) = setup();
        let derived = Arc::new(derived);
        let id = ImageId::generate().unwrap();
        catalog
            .create(&meta(&id), Bytes::from_static(JPEG))
            .await
            .unwrap();
        // Hold every permit: writes queue up to the bound, the rest are dropped.
        let held = derived.permits.clone().acquire_many_owned(2).await.unwrap();
        for i in 0..6 {
            let key = object_key(&id, &format!("{i:04}"), OutputFormat::Jpeg).unwrap();
            derived.schedule(id.clone(), key, Bytes::from_static(JPEG), "image/jpeg");
        }
        assert_eq!(derived.pending(), 4);
        let dropped = derived
            .metrics
            .derived_writes
            .with_label_values(&["dropped"]);
        assert_eq!(dropped.get(), 2);
        drop(held);
        for _ in 0..200 {
            if derived.pending() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(derived.pending(), 0);
        let stored = store
            .list(Bucket::Derived, &derived_prefix(&id))
            .await
            .unwrap();
        assert_eq!(stored.len(), 4);
        let ok = derived.metrics.derived_writes.with_label_values(&["ok"]);
        assert_eq!(ok.get(), 4);
        // A result over `max_bytes` is never queued, let alone stored.
        let big = object_key(&id, "ffff", OutputFormat::Jpeg).unwrap();
        derived.schedule(
            id.clone(),
            big,
            Bytes::from(vec![0u8; (1 << 20) + 1]),
            "image/jpeg",
        );
        assert_eq!(derived.pending(), 0);
        assert_eq!(dropped.get(), 3);
    }
}

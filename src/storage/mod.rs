//! Durable storage: the [`ObjectStore`] trait and its backends, `fs` (embedded default) and `s3`.
//!
//! Every durable byte pixgate owns lives behind this trait. Keys are [`ObjectKey`]s, validated
//! on construction (`[A-Za-z0-9_-]` first, then `[A-Za-z0-9._-]`, per `/`-separated segment), so
//! no key can name a parent directory or an absolute path on any backend. Reads take a byte cap
//! and every operation has a deadline; "not found" is its own error, distinct from failures.

mod fs;
mod s3;

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use fs::FsStore;
pub use s3::S3Store;

/// Which logical bucket an object lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Originals and their metadata.
    Originals,
    /// Derived (transformed) results: disposable, recomputable.
    Derived,
    /// The audit archive (`storage.s3_audit_bucket`, default the originals bucket; keys
    /// under `audit/`).
    Audit,
}

impl Bucket {
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Originals => "originals",
            Bucket::Derived => "derived",
            Bucket::Audit => "audit",
        }
    }
}

/// Storage failures. `NotFound` is an answer, not a failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object not found")]
    NotFound,
    #[error("object larger than the read cap of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("storage operation timed out")]
    Timeout,
    #[error("storage backend error: {0}")]
    Backend(String),
    #[error("invalid object key: {0}")]
    InvalidKey(String),
}

/// A validated object key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

const MAX_KEY_LEN: usize = 512;
const MAX_SEGMENT_LEN: usize = 128;

impl ObjectKey {
    pub fn new(key: impl Into<String>) -> Result<ObjectKey, StorageError> {
        let key = key.into();
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(StorageError::InvalidKey("length".into()));
        }
        for seg in key.split('/') {
            let mut bytes = seg.bytes();
            let first_ok = bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            let rest_ok =
                bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !first_ok || !rest_ok || seg.len() > MAX_SEGMENT_LEN {
                return Err(StorageError::InvalidKey(format!(
                    "bad segment in `{}`",
                    key.chars().take(64).collect::<String>()
                )));
            }
        }
        Ok(ObjectKey(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A durable object store.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Writes the whole object atomically: readers see the old object or the new one, never a
    /// part. Returns only after the write is durable.
    async fn put(
        &self,
        bucket: Bucket,
        key: &ObjectKey,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError>;

    /// Reads an object of at most `max_bytes` bytes.
    async fn get(
        &self,
        bucket: Bucket,
        key: &ObjectKey,
        max_bytes: u64,
    ) -> Result<Bytes, StorageError>;

    /// Deletes an object; deleting a missing object succeeds.
    async fn delete(&self, bucket: Bucket, key: &ObjectKey) -> Result<(), StorageError>;

    /// Keys under `prefix` (a plain string prefix, e.g. `images/abc/`), sorted.
    async fn list(&self, bucket: Bucket, prefix: &str) -> Result<Vec<ObjectKey>, StorageError>;

    /// At most `max` keys under `prefix` that sort after `start_after`, sorted (one page).
    async fn list_page(
        &self,
        bucket: Bucket,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<ObjectKey>, StorageError> {
        let all = self.list(bucket, prefix).await?;
        Ok(all
            .into_iter()
            .filter(|k| start_after.is_none_or(|s| k.as_str() > s))
            .take(max)
            .collect())
    }

    /// Like [`ObjectStore::list_page`], with each object's last modification time (for
    /// retention sweeps).
    async fn list_page_dated(
        &self,
        bucket: Bucket,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(ObjectKey, std::time::SystemTime)>, StorageError>;

    /// Whether the store is reachable and its buckets exist (for `/readyz`).
    async fn check(&self) -> Result<(), StorageError>;

    /// Backend name for logs (`fs`, `s3`).
    fn backend(&self) -> &'static str;
}

/// A filesystem store in a fresh temporary directory (unit tests).
#[cfg(test)]
pub(crate) fn temp_store() -> (tempfile::TempDir, std::sync::Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStore::new(dir.path(), Duration::from_secs(5)).expect("fs store");
    (dir, std::sync::Arc::new(store))
}

/// Runs `fut` with a deadline, mapping expiry to [`StorageError::Timeout`].
pub(crate) async fn with_deadline<T>(
    deadline: Duration,
    fut: impl Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    tokio::time::timeout(deadline, fut)
        .await
        .unwrap_or(Err(StorageError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape() {
        for good in [
            "images/0123/original",
            "images/0123/meta.json",
            "derived/abc/x_1-2.webp",
        ] {
            ObjectKey::new(good).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            ".hidden",
            "a\\b",
            "a/b c",
            "a/\u{0}",
            "ü",
            &"a".repeat(129),
        ] {
            assert!(ObjectKey::new(bad).is_err(), "{bad:?}");
        }
    }
}

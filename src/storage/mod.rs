//! Durable storage: the [`ObjectStore`] trait and its backends, `fs` (embedded default) and `s3`.
//!
//! Every durable byte pixgate owns lives behind this trait. Keys are [`ObjectKey`]s, validated
//! on construction (`[A-Za-z0-9_-]` first, then `[A-Za-z0-9._-]`, per `/`-separated segment), so
//! no key can name a parent directory or an absolute path on any backend. Reads take a byte cap
//! and every operation has a deadline; "not found" is its own error, distinct from failures.

pub mod config;
pub mod foreign;
mod fs;
mod s3;
use s3::{precondition, sdk_err};

use std::future::Future;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

pub use config::{Backend, Sse, StorageConfig};
pub use fs::FsStore;
pub use s3::{S3Store, client_config, read_capped};

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
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The object exists but is not a regular file (fs: a FIFO, socket or device a tampered
    /// or corrupted store holds). Refused before it is opened for reading, so it cannot block.
    #[error("object is not a regular file")]
    NotAFile,
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

/// How the fs backend names a write's temporary file: this, then hex. A dot-prefixed name can
/// never be an [`ObjectKey`], so temporaries are invisible to `get` and `list`.
const TEMPORARY_PREFIX: &str = ".tmp-";

/// A temporary file an interrupted write left behind (fs backend), as found by
/// [`ObjectStore::temporaries`].
///
/// Only a store makes one, from a name it checked: a `.tmp-{hex}` file name in a directory that
/// is a valid key prefix of a bucket. So [`ObjectStore::remove_temporary`] can never be pointed
/// at anything else, whoever holds a `Temporary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Temporary {
    bucket: Bucket,
    /// Relative to the bucket, `/`-separated: `{key prefix}/.tmp-{hex}` or `.tmp-{hex}`.
    path: String,
    modified: SystemTime,
}

impl Temporary {
    fn new(bucket: Bucket, path: String, modified: SystemTime) -> Option<Temporary> {
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (Some(dir), name),
            None => (None, path.as_str()),
        };
        let name_ok = name.strip_prefix(TEMPORARY_PREFIX).is_some_and(|hex| {
            !hex.is_empty()
                && hex.len() <= 64
                && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        let dir_ok = dir.is_none_or(|d| ObjectKey::new(d).is_ok());
        (name_ok && dir_ok).then_some(Temporary {
            bucket,
            path,
            modified,
        })
    }

    pub fn bucket(&self) -> Bucket {
        self.bucket
    }

    /// The path relative to the bucket.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Last modification time when it was found.
    pub fn modified(&self) -> SystemTime {
        self.modified
    }
}

impl std::fmt::Display for Temporary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.bucket.as_str(), self.path)
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

    /// As [`ObjectStore::put`], only if no object exists under `key`: `Ok(false)` (nothing
    /// written) if one does. `fs` decides it exactly (a hard link, which fails on an existing
    /// name); `s3` sends `If-None-Match: *`, which AWS S3, MinIO, R2 and others honour and some
    /// services (Garage 2.x) ignore, overwriting: callers that depend on it check afterwards
    /// (`import::import_object`). The default (in-memory test stores) writes unconditionally.
    async fn put_if_absent(
        &self,
        bucket: Bucket,
        key: &ObjectKey,
        body: Bytes,
        content_type: &str,
    ) -> Result<bool, StorageError> {
        self.put(bucket, key, body, content_type)
            .await
            .map(|()| true)
    }

    /// Copies `from` (an object of the same S3 service) to `key` server-side, the bytes never
    /// passing through pixgate, only while `from` is still the version its ETag names:
    /// `Ok(false)` (nothing written) if it is not. `s3` only; other backends answer `Backend`.
    async fn copy_in(
        &self,
        _bucket: Bucket,
        _key: &ObjectKey,
        _from: &foreign::Reference,
        _content_type: &str,
    ) -> Result<bool, StorageError> {
        Err(StorageError::Backend(
            "a server-side copy needs storage.backend = \"s3\"".into(),
        ))
    }

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

    /// Every temporary file that interrupted writes left behind, with its modification time
    /// (`pixgate fsck`; writes in progress have temporaries too, so callers judge by age). Only
    /// the fs backend has any: its writes go through a temporary renamed into place, which a
    /// process killed mid-write leaves; an S3 PUT is atomic and leaves nothing.
    async fn temporaries(&self) -> Result<Vec<Temporary>, StorageError> {
        Ok(Vec::new())
    }

    /// Removes a temporary found by [`ObjectStore::temporaries`]; `Ok(false)` if it is gone or
    /// was modified since it was found (then it is left alone).
    async fn remove_temporary(&self, _temporary: &Temporary) -> Result<bool, StorageError> {
        Ok(false)
    }

    /// Backend name for logs (`fs`, `s3`).
    fn backend(&self) -> &'static str;
}

/// The readiness check of a store, answered within a deadline of its own.
///
/// A stalled backend makes [`ObjectStore::check`] last the whole storage timeout (10 s), longer
/// than the ~1 s a Kubernetes probe or load balancer waits, so the instance was never taken out
/// cleanly. Here at most one check runs at a time (probes arriving meanwhile wait for the same
/// one, so a stall never piles up checks or blocking threads), and a caller waits at most its
/// own deadline for the next check to complete: a stall reads as `Timeout` within the deadline,
/// and recovery shows as soon as one check succeeds.
pub struct HealthProbe {
    store: std::sync::Arc<dyn ObjectStore>,
    in_flight: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// (checks completed, result of the last one).
    results: tokio::sync::watch::Sender<(u64, Result<(), String>)>,
}

impl HealthProbe {
    pub fn new(store: std::sync::Arc<dyn ObjectStore>) -> HealthProbe {
        HealthProbe {
            store,
            in_flight: Default::default(),
            results: tokio::sync::watch::Sender::new((0, Err("not checked yet".into()))),
        }
    }

    /// The result of the next check to complete, or `Timeout` if none does within `deadline`.
    pub async fn check_within(&self, deadline: Duration) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        let mut rx = self.results.subscribe();
        let seen = rx.borrow_and_update().0;
        if !self.in_flight.swap(true, Ordering::AcqRel) {
            let (store, in_flight, results) = (
                self.store.clone(),
                self.in_flight.clone(),
                self.results.clone(),
            );
            // Runs to its end (bounded by the store's own deadline) even when no caller waits.
            tokio::spawn(async move {
                let r = store.check().await.map_err(|e| e.to_string());
                in_flight.store(false, Ordering::Release);
                results.send_modify(|(n, last)| {
                    *n += 1;
                    *last = r;
                });
            });
        }
        let next = tokio::time::timeout(deadline, rx.wait_for(|(n, _)| *n > seen)).await;
        match next {
            Ok(Ok(done)) => done.1.clone().map_err(StorageError::Backend),
            Ok(Err(_)) => Err(StorageError::Backend("health probe closed".into())),
            Err(_) => Err(StorageError::Timeout),
        }
    }
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

    /// A store whose `check` stalls until released (a SIGSTOPped backend), counting calls.
    struct Stalling {
        stalled: std::sync::atomic::AtomicBool,
        checks: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl ObjectStore for Stalling {
        async fn put(
            &self,
            _: Bucket,
            _: &ObjectKey,
            _: Bytes,
            _: &str,
        ) -> Result<(), StorageError> {
            Ok(())
        }
        async fn get(&self, _: Bucket, _: &ObjectKey, _: u64) -> Result<Bytes, StorageError> {
            Err(StorageError::NotFound)
        }
        async fn delete(&self, _: Bucket, _: &ObjectKey) -> Result<(), StorageError> {
            Ok(())
        }
        async fn list(&self, _: Bucket, _: &str) -> Result<Vec<ObjectKey>, StorageError> {
            Ok(Vec::new())
        }
        async fn list_page_dated(
            &self,
            _: Bucket,
            _: &str,
            _: Option<&str>,
            _: usize,
        ) -> Result<Vec<(ObjectKey, std::time::SystemTime)>, StorageError> {
            Ok(Vec::new())
        }
        async fn check(&self) -> Result<(), StorageError> {
            use std::sync::atomic::Ordering;
            self.checks.fetch_add(1, Ordering::AcqRel);
            while self.stalled.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(())
        }
        fn backend(&self) -> &'static str {
            "stalling"
        }
    }

    #[tokio::test]
    async fn readiness_answers_within_its_deadline_and_never_piles_up_checks() {
        use std::sync::atomic::Ordering;
        let store = std::sync::Arc::new(Stalling {
            stalled: true.into(),
            checks: 0.into(),
        });
        let probe = std::sync::Arc::new(HealthProbe::new(store.clone()));
        let deadline = Duration::from_millis(100);
        // Twenty probes against a stalled backend: each answers Timeout within its deadline,
        // and they share one check instead of starting twenty.
        let started = std::time::Instant::now();
        let mut waits = Vec::new();
        for _ in 0..20 {
            let p = probe.clone();
            waits.push(tokio::spawn(async move { p.check_within(deadline).await }));
        }
        for w in waits {
            assert!(matches!(w.await.unwrap(), Err(StorageError::Timeout)));
        }
        assert!(started.elapsed() < Duration::from_millis(1000));
        assert_eq!(store.checks.load(Ordering::Acquire), 1);
        // The backend recovers: the next probe sees it at once.
        store.stalled.store(false, Ordering::Release);
        probe.check_within(Duration::from_secs(2)).await.unwrap();
        probe.check_within(Duration::from_secs(2)).await.unwrap();
        assert!(store.checks.load(Ordering::Acquire) >= 2);
    }

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

    #[test]
    fn a_temporary_names_only_a_temporary_inside_its_bucket() {
        let t = SystemTime::now();
        for good in [
            "images/0123/.tmp-0123456789abcdef",
            ".tmp-00",
            "a/b-c/.tmp-f",
        ] {
            let tmp = Temporary::new(Bucket::Originals, good.into(), t).unwrap();
            assert_eq!(tmp.to_string(), format!("originals/{good}"));
        }
        for bad in [
            "images/0123/original",
            "images/0123/.hidden",
            ".tmp-",
            ".tmp-0G",
            ".tmp-../x",
            ".tmp-00/x",
            "../.tmp-00",
            "a/../.tmp-00",
            "./.tmp-00",
            "/etc/.tmp-00",
            "a//.tmp-00",
            "a/.tmp-00/.tmp-00",
        ] {
            assert!(
                Temporary::new(Bucket::Originals, bad.into(), t).is_none(),
                "{bad:?}"
            );
        }
    }
}

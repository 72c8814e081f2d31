//! The state behind legacy source URLs (`sources.legacy`): the configured entries, the
//! address → image id LRU, the lazy-import client and its lock stripes. The resolution itself
//! (owner check, lookup, lazy import, HTTP errors) is `http::legacy`'s; this file holds data
//! only, so `App` can own it without depending on the HTTP layer.
//!
//! Resolved mappings are kept in a bounded LRU, which is safe because ids are never reused: a
//! deleted image's id answers `404` through the normal checks.

use std::any::Any;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::config::{LegacySource, covering};
use crate::id::ImageId;

/// Addresses whose image id is remembered.
const REMEMBERED: usize = 16_384;
/// Addresses whose lazy-import refusal is remembered.
const FAILURES_REMEMBERED: usize = 16_384;
/// Lock stripes for lazy imports (one address imports once per instance).
const STRIPES: usize = 64;

/// How lazy imports read the legacy buckets: the storage's own S3 service.
pub struct Lazy {
    pub client: aws_sdk_s3::Client,
    pub timeout: std::time::Duration,
}

/// A remembered refusal: the HTTP layer's error, kept opaque so this module stays below it.
pub type Refusal = Arc<dyn Any + Send + Sync>;

pub struct Legacy {
    sources: Vec<LegacySource>,
    ids: Mutex<LruCache<String, ImageId>>,
    failures: Mutex<LruCache<String, (Instant, Refusal)>>,
    failure_ttl: Duration,
    lazy: Option<Lazy>,
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl Legacy {
    pub fn new(sources: Vec<LegacySource>, lazy: Option<Lazy>, failure_ttl: Duration) -> Legacy {
        Legacy {
            sources,
            ids: Mutex::new(LruCache::new(
                NonZeroUsize::new(REMEMBERED).unwrap_or(NonZeroUsize::MIN),
            )),
            failures: Mutex::new(LruCache::new(
                NonZeroUsize::new(FAILURES_REMEMBERED).unwrap_or(NonZeroUsize::MIN),
            )),
            failure_ttl,
            lazy,
            locks: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// The entry covering `bucket`/`key`, if any.
    pub fn covering(&self, bucket: &str, key: &str) -> Option<&LegacySource> {
        covering(&self.sources, bucket, key)
    }

    /// The lazy-import client (`sources.legacy_lazy`).
    pub fn lazy(&self) -> Option<&Lazy> {
        self.lazy.as_ref()
    }

    /// The lock that serialises lazy imports of `uri` on this instance.
    pub fn stripe(&self, uri: &str) -> &tokio::sync::Mutex<()> {
        let h = uri
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        &self.locks[h % STRIPES]
    }

    pub fn remembered(&self, uri: &str) -> Option<ImageId> {
        self.lock().get(uri).cloned()
    }

    pub fn remember(&self, uri: &str, id: &ImageId) {
        self.lock().put(uri.to_owned(), id.clone());
    }

    /// The refusal a lazy import of `uri` met within `sources.legacy_failure_ttl_secs`.
    pub fn recent_failure(&self, uri: &str) -> Option<Refusal> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(uri) {
            Some((at, refusal)) if at.elapsed() < self.failure_ttl => Some(refusal.clone()),
            Some(_) => {
                failures.pop(uri);
                None
            }
            None => None,
        }
    }

    /// Remembers a lasting refusal of `uri` (bounded: the least recent go first).
    pub fn remember_failure(&self, uri: &str, refusal: Refusal) {
        if self.failure_ttl.is_zero() {
            return;
        }
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.put(uri.to_owned(), (Instant::now(), refusal));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, ImageId>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }
}

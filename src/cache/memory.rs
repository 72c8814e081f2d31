//! The in-memory result cache: an LRU bounded in bytes.
//!
//! Keys are the transform cache keys (see [`super`]): image ids are never
//! reused and originals never change, so a key names exactly one result. Entries carry the
//! image's owner so bearer requests can be authorised on a hit without touching storage.
//!
//! Deleting an image purges its entries and leaves a tombstone for its id (a bounded LRU of
//! recently deleted ids): a transform that fetched the original before the delete and finishes
//! after it cannot re-insert its result, so a deleted image is never served from memory again.
//! A delete made through *another* instance is noticed here because hits re-check that their
//! image still exists once it was last checked more than a bound ago ([`MemoryCache::stale`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lru::LruCache;

use crate::options::OutputFormat;

/// A cached transform result.
#[derive(Debug, Clone)]
pub struct CachedResult {
    pub bytes: Bytes,
    pub format: OutputFormat,
    pub etag: String,
    /// The image id (for purges).
    pub image: String,
    pub owner: String,
    pub last_modified: SystemTime,
}

/// A byte-bounded LRU.
pub struct MemoryCache {
    // A std Mutex: held only for map operations, never across an `.await`.
    inner: Mutex<Inner>,
    capacity: u64,
    max_item: u64,
}

struct Inner {
    lru: LruCache<String, Arc<CachedResult>>,
    bytes: u64,
    /// The keys held for each image, so a purge touches only that image's entries.
    by_image: HashMap<String, HashSet<String>>,
    /// Recently deleted image ids: never admitted again.
    deleted: LruCache<String, ()>,
    /// When each cached image's existence was last confirmed.
    confirmed: LruCache<String, Instant>,
    /// Recently erased accounts (owner → when): their results are not admitted for
    /// [`OWNER_TOMBSTONE`] (a computation that started before the erasure may finish after it).
    erased_owners: LruCache<String, Instant>,
}

/// How long an erased owner's results are refused: longer than any computation.
const OWNER_TOMBSTONE: Duration = Duration::from_secs(600);

/// Tombstones kept; a transform outliving this many later deletes is not a realistic race.
const TOMBSTONES: usize = 65_536;

/// Bookkeeping cost of an entry beyond its body.
const ENTRY_OVERHEAD: u64 = 256;

fn cost(key: &str, item: &CachedResult) -> u64 {
    item.bytes.len() as u64 + key.len() as u64 + item.owner.len() as u64 + ENTRY_OVERHEAD
}

/// What [`MemoryCache::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insertion {
    /// Stored; `evicted` older entries made room.
    Admitted { evicted: usize },
    /// Over the per-item cap (or the whole budget): not stored.
    TooLarge,
    /// The image was deleted: its results are never stored again.
    Deleted,
}

impl Inner {
    /// Forgets `key` (already removed from the LRU) in the accounting and the image index.
    fn forget(&mut self, key: &str, item: &CachedResult) {
        self.bytes -= cost(key, item);
        if let Some(keys) = self.by_image.get_mut(&item.image) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_image.remove(&item.image);
            }
        }
    }
}

impl MemoryCache {
    pub fn new(capacity: u64, max_item: u64) -> MemoryCache {
        MemoryCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                by_image: HashMap::new(),
                deleted: LruCache::new(
                    std::num::NonZeroUsize::new(TOMBSTONES).unwrap_or(std::num::NonZeroUsize::MIN),
                ),
                confirmed: LruCache::new(
                    std::num::NonZeroUsize::new(TOMBSTONES).unwrap_or(std::num::NonZeroUsize::MIN),
                ),
                erased_owners: LruCache::new(
                    std::num::NonZeroUsize::new(TOMBSTONES).unwrap_or(std::num::NonZeroUsize::MIN),
                ),
            }),
            capacity,
            max_item,
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<CachedResult>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.lru.get(key).cloned()
    }

    /// Inserts unless the item is over the per-item cap or its image was deleted; evicts
    /// least-recently-used entries until the total fits. `checked` is when the caller last saw
    /// the image exist (its metadata read), which starts the freshness bound of
    /// [`MemoryCache::stale`] — not the insert, which may come much later.
    pub fn insert(&self, key: String, item: Arc<CachedResult>, checked: Instant) -> Insertion {
        let size = cost(&key, &item);
        if item.bytes.len() as u64 > self.max_item || size > self.capacity {
            return Insertion::TooLarge;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.deleted.contains(&item.image)
            || inner
                .erased_owners
                .peek(&item.owner)
                .is_some_and(|at| at.elapsed() < OWNER_TOMBSTONE)
        {
            return Insertion::Deleted;
        }
        if let Some(old) = inner.lru.pop(&key) {
            inner.forget(&key, &old);
        }
        let mut evicted = 0;
        while inner.bytes + size > self.capacity {
            match inner.lru.pop_lru() {
                Some((k, v)) => {
                    inner.forget(&k, &v);
                    evicted += 1;
                }
                None => break,
            }
        }
        inner.bytes += size;
        let newest = match inner.confirmed.get(&item.image) {
            Some(at) => (*at).max(checked),
            None => checked,
        };
        inner.confirmed.put(item.image.clone(), newest);
        inner
            .by_image
            .entry(item.image.clone())
            .or_default()
            .insert(key.clone());
        inner.lru.put(key, item);
        Insertion::Admitted { evicted }
    }

    /// Lifts the tombstone of an image whose delete failed before removing it.
    pub fn untombstone(&self, image: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.deleted.pop(image);
    }

    /// Whether `image` was deleted through this instance (its results are refused).
    #[cfg(test)]
    pub fn is_deleted(&self, image: &str) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.deleted.contains(image)
    }

    /// Removes every entry of `image` and refuses its results from now on. Touches only that
    /// image's entries (an index by image is kept beside the LRU).
    pub fn purge_image(&self, image: &str) -> usize {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.deleted.put(image.to_owned(), ());
        inner.confirmed.pop(image);
        let doomed = inner.by_image.remove(image).unwrap_or_default();
        for k in &doomed {
            if let Some(v) = inner.lru.pop(k) {
                inner.bytes -= cost(k, &v);
            }
        }
        doomed.len()
    }

    /// Removes every entry owned by `owner` (an erased account) and refuses that owner's
    /// results for a while; returns how many entries went.
    pub fn purge_owner(&self, owner: &str) -> usize {
        let images: Vec<String> = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.erased_owners.put(owner.to_owned(), Instant::now());
            let set: HashSet<String> = inner
                .lru
                .iter()
                .filter(|(_, v)| v.owner == owner)
                .map(|(_, v)| v.image.clone())
                .collect();
            set.into_iter().collect()
        };
        images.iter().map(|i| self.purge_image(i)).sum()
    }

    /// Forgets when every image was last confirmed: each one's next hit re-checks storage
    /// (after events may have been missed).
    pub fn forget_confirmations(&self) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .confirmed
            .clear();
    }

    /// Entries held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lru
            .len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `image`'s existence was last confirmed more than `bound` ago (or never): the
    /// caller re-checks storage and calls [`MemoryCache::confirm`] or [`MemoryCache::purge_image`].
    pub fn stale(&self, image: &str, bound: Duration) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .confirmed
            .get(image)
            .is_none_or(|at| at.elapsed() >= bound)
    }

    pub fn confirm(&self, image: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.confirmed.put(image.to_owned(), Instant::now());
    }

    /// Bytes currently accounted.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize) -> Arc<CachedResult> {
        Arc::new(CachedResult {
            bytes: Bytes::from(vec![0u8; n]),
            format: OutputFormat::Png,
            etag: "\"x\"".into(),
            image: "img".into(),
            owner: "o".into(),
            last_modified: SystemTime::UNIX_EPOCH,
        })
    }

    fn owned(image: &str, owner: &str) -> Arc<CachedResult> {
        Arc::new(CachedResult {
            image: image.into(),
            owner: owner.into(),
            ..(*item(10)).clone()
        })
    }

    #[test]
    fn an_erased_owner_loses_every_entry_and_is_not_cached_again() {
        let c = MemoryCache::new(1 << 20, 1 << 20);
        let now = Instant::now();
        c.insert("a1".into(), owned("a", "alice"), now);
        c.insert("a2".into(), owned("a", "alice"), now);
        c.insert("b1".into(), owned("b", "alice"), now);
        c.insert("c1".into(), owned("c", "bob"), now);
        assert_eq!(c.purge_owner("alice"), 3);
        assert!(c.get("a1").is_none() && c.get("b1").is_none());
        assert!(c.get("c1").is_some());
        // A computation of alice's finishing after the erasure is refused; bob's are not.
        assert_eq!(
            c.insert("d1".into(), owned("d", "alice"), now),
            Insertion::Deleted
        );
        assert!(matches!(
            c.insert("e1".into(), owned("e", "bob"), now),
            Insertion::Admitted { .. }
        ));
        assert!(!c.stale("c", Duration::from_secs(30)));
        c.forget_confirmations();
        assert!(c.stale("c", Duration::from_secs(30)));
    }

    #[test]
    fn bounded_in_bytes_with_lru_eviction() {
        let c = MemoryCache::new(3_000, 1_000);
        let ok = Insertion::Admitted { evicted: 0 };
        assert_eq!(c.insert("a".into(), item(900), Instant::now()), ok);
        assert_eq!(c.insert("b".into(), item(900), Instant::now()), ok);
        assert!(c.get("a").is_some()); // a is now most recent
        assert_eq!(
            c.insert("c".into(), item(900), Instant::now()),
            Insertion::Admitted { evicted: 1 }
        );
        assert!(c.get("b").is_none(), "b was least recently used");
        assert!(c.get("a").is_some() && c.get("c").is_some());
        assert!(c.bytes() <= 3_000);
        assert_eq!(
            c.insert("big".into(), item(1_001), Instant::now()),
            Insertion::TooLarge
        );
        assert!(c.get("big").is_none());
    }

    #[test]
    fn purged_images_stay_out() {
        let c = MemoryCache::new(10_000, 5_000);
        let other = Arc::new(CachedResult {
            image: "other".into(),
            ..(*item(10)).clone()
        });
        c.insert("a".into(), item(100), Instant::now());
        c.insert("b".into(), item(100), Instant::now());
        c.insert("c".into(), other.clone(), Instant::now());
        assert_eq!(c.purge_image("img"), 2);
        assert!(c.get("a").is_none() && c.get("b").is_none());
        assert!(c.get("c").is_some());
        assert_eq!(c.bytes(), cost("c", &other));
        // A late result of the deleted image is refused.
        assert_eq!(
            c.insert("a".into(), item(100), Instant::now()),
            Insertion::Deleted
        );
        assert!(c.get("a").is_none());
        assert!(c.is_deleted("img") && !c.is_deleted("other"));
        assert_eq!(c.len(), 1);
        // Freshness: confirmed on insert, stale after the bound.
        assert!(!c.stale("other", Duration::from_secs(60)));
        assert!(c.stale("other", Duration::ZERO));
        assert!(c.stale("never-seen", Duration::from_secs(60)));
        c.confirm("never-seen");
        assert!(!c.stale("never-seen", Duration::from_secs(60)));
    }

    #[test]
    fn freshness_starts_at_the_check_and_tombstones_can_be_lifted() {
        let c = MemoryCache::new(10_000, 5_000);
        // Computed from metadata read two minutes ago: due for a re-check under a 60 s bound,
        // however recent the insert.
        let long_ago = Instant::now() - Duration::from_secs(120);
        c.insert("a".into(), item(10), long_ago);
        assert!(c.stale("img", Duration::from_secs(60)));
        // A newer confirmation is never pushed back by an older check.
        c.confirm("img");
        c.insert("b".into(), item(10), long_ago);
        assert!(!c.stale("img", Duration::from_secs(60)));
        // A delete that failed before removing the image lifts its tombstone.
        c.purge_image("img");
        assert!(c.is_deleted("img"));
        c.untombstone("img");
        assert!(!c.is_deleted("img"));
        assert_eq!(
            c.insert("a".into(), item(10), Instant::now()),
            Insertion::Admitted { evicted: 0 }
        );
    }

    #[test]
    fn replacing_a_key_does_not_leak_accounting() {
        let c = MemoryCache::new(10_000, 5_000);
        for _ in 0..10 {
            c.insert("k".into(), item(1_000), Instant::now());
        }
        assert_eq!(c.bytes(), 1_000 + 1 + 1 + ENTRY_OVERHEAD);
    }

    #[test]
    fn the_image_index_follows_evictions_and_purges() {
        let c = MemoryCache::new(3_000, 1_000); // room for three of these
        let of = |image: &str, n| {
            Arc::new(CachedResult {
                image: image.into(),
                ..(*item(n)).clone()
            })
        };
        c.insert("x1".into(), of("x", 500), Instant::now());
        c.insert("y1".into(), of("y", 500), Instant::now());
        c.insert("x2".into(), of("x", 500), Instant::now());
        // Evicts x1 (least recently used): x's index must forget it.
        c.insert("y2".into(), of("y", 500), Instant::now());
        assert!(c.get("x1").is_none());
        assert_eq!(c.purge_image("x"), 1, "only x2 was still held");
        assert_eq!(c.purge_image("y"), 2);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        let inner = c.inner.lock().unwrap();
        assert!(inner.by_image.is_empty());
    }
}

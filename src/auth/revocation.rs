//! Incident response: "every token of this user issued before now is void".
//!
//! An admin's revocation is a durable record in the object store, `revocations/{user}.json`
//! holding `not_before` (Unix seconds); JWTs of that user with `iat <= not_before` (or no
//! `iat`) are refused. Records are cached per instance for `auth.revocation_cache_secs` (absent
//! ones too, so the check costs no storage round trip on most requests): a revocation made
//! through another instance takes effect here within that bound, through this one at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lru::LruCache;
use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::id::user_segment;
use crate::storage::{Bucket, ObjectKey, ObjectStore, StorageError};

const CACHE_ENTRIES: usize = 100_000;

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    not_before: u64,
}

/// Token revocations over the object store.
pub struct Revocations {
    store: Arc<dyn ObjectStore>,
    ttl: Duration,
    // A std Mutex: held only for map operations, never across an `.await`.
    cache: Mutex<LruCache<String, (Instant, Option<u64>)>>,
}

fn key(user_id: &str) -> Result<ObjectKey, AuthError> {
    Ok(ObjectKey::new(format!(
        "revocations/{}.json",
        user_segment(user_id)
    ))?)
}

impl Revocations {
    pub fn new(store: Arc<dyn ObjectStore>, ttl: Duration) -> Revocations {
        let cap = std::num::NonZeroUsize::new(CACHE_ENTRIES).unwrap_or(std::num::NonZeroUsize::MIN);
        Revocations {
            store,
            ttl,
            cache: Mutex::new(LruCache::new(cap)),
        }
    }

    /// The user's revocation time, if an admin revoked their tokens.
    pub async fn not_before(&self, user_id: &str) -> Result<Option<u64>, AuthError> {
        if let Some((at, v)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user_id)
            && at.elapsed() < self.ttl
        {
            return Ok(*v);
        }
        let v = match self
            .store
            .get(Bucket::Originals, &key(user_id)?, 1024)
            .await
        {
            Ok(b) => Some(
                serde_json::from_slice::<Record>(&b)
                    .map_err(|e| AuthError::Internal(format!("corrupt revocation record: {e}")))?
                    .not_before,
            ),
            Err(StorageError::NotFound) => None,
            Err(e) => return Err(e.into()),
        };
        self.remember(user_id, v);
        Ok(v)
    }

    /// Voids every token of `user_id` issued at or before `now` (durable before it returns).
    pub async fn revoke(&self, user_id: &str, now: u64) -> Result<(), AuthError> {
        let body = serde_json::to_vec(&Record { not_before: now })
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        self.store
            .put(
                Bucket::Originals,
                &key(user_id)?,
                Bytes::from(body),
                "application/json",
            )
            .await?;
        self.remember(user_id, Some(now));
        Ok(())
    }

    /// Drops this instance's cached state of `user_id` (revoked through another instance):
    /// the next check reads the store.
    pub fn forget(&self, user_id: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop(user_id);
    }

    /// Drops every cached state (events may have been missed).
    pub fn forget_all(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn remember(&self, user_id: &str, v: Option<u64>) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(user_id.to_owned(), (Instant::now(), v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FsStore;

    #[tokio::test]
    async fn revocations_are_durable_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(FsStore::new(dir.path(), Duration::from_secs(5)).unwrap());
        let a = Revocations::new(store.clone(), Duration::from_secs(30));
        let b = Revocations::new(store.clone(), Duration::from_millis(1));
        assert_eq!(a.not_before("u1").await.unwrap(), None);
        assert_eq!(b.not_before("u1").await.unwrap(), None);
        b.revoke("u1", 1_000).await.unwrap();
        // `a` cached the absence and may keep it for its TTL; `b` (and a fresh instance) see it.
        assert_eq!(a.not_before("u1").await.unwrap(), None);
        assert_eq!(b.not_before("u1").await.unwrap(), Some(1_000));
        // Told by the fleet bus, `a` forgets what it cached and reads the record.
        a.forget("u1");
        assert_eq!(a.not_before("u1").await.unwrap(), Some(1_000));
        assert_eq!(a.not_before("u2").await.unwrap(), None);
        b.revoke("u2", 2_000).await.unwrap();
        assert_eq!(a.not_before("u2").await.unwrap(), None);
        a.forget_all();
        assert_eq!(a.not_before("u2").await.unwrap(), Some(2_000));
        let fresh = Revocations::new(store, Duration::from_secs(30));
        assert_eq!(fresh.not_before("u1").await.unwrap(), Some(1_000));
        assert_eq!(fresh.not_before("u3").await.unwrap(), None);
    }
}
